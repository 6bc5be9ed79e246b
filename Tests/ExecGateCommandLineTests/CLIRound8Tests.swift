// SPDX-License-Identifier: Apache-2.0
//
// CLI round 8: hostile input against the real binary, on the commands and options rounds 4–7
// (ExecGateServiceTests' CLIRound4/5/6Tests, CLIRound7Tests) covered least: `capture`'s argument
// handling before any boot, `image build`, `vm status`, `policy test`, `serve --policy`.
// README's rules: exit 0 success/allow, 1 deny or refusal, 2 usage error, unreadable input or no
// verdict, the reason on stderr; `--json` output is JSON. No QEMU is booted here: where the code
// under test would start one, `qemu-system-x86_64` on PATH is a script that exits at once.

import _ExecGateInternals
import ExecGateTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound8Tests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
    }

    func run(_ args: [String], environment: [String] = [], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args.map { Array($0.utf8) }, extraEnvironment: environment.map { Array($0.utf8) },
                             in: dir, seconds: seconds)
    }

    /// A static ELF executable of this system (what `capture --init` and `image build --init` take).
    static let staticExecutable = "/sbin/ldconfig"

    /// A PATH whose `qemu-system-x86_64` is a script that records its start and exits 0 at once.
    func fakeQEMUPath() throws -> String {
        let bin = dir + "/bin"
        XCTAssertEqual(mkdir(bin, 0o755), 0)
        try Fixtures.writeFile(bin + "/qemu-system-x86_64", Array("#!/bin/sh\necho started >> '\(dir)/qemu-started'\nexit 0\n".utf8))
        XCTAssertEqual(chmod(bin + "/qemu-system-x86_64", 0o755), 0)
        return "PATH=" + bin + ":" + (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin")
    }

    /// An unpacked kernel package as `capture --kernel DIR` takes it: boot/vmlinuz-<v> (the test
    /// kernel's, linked) and lib/modules/<v>/kernel/ with vsock.ko.
    func fakeKernelPackage() throws -> (root: String, kernel: String) {
        let pkg = dir + "/pkg"
        let kernel = pkg + "/lib/modules/6.1.0-test/kernel"
        for d in [pkg, pkg + "/boot", pkg + "/lib", pkg + "/lib/modules", pkg + "/lib/modules/6.1.0-test", kernel] {
            XCTAssertEqual(mkdir(d, 0o755), 0, d)
        }
        XCTAssertEqual(symlink(try Fixtures.vmlinuz(), pkg + "/boot/vmlinuz-6.1.0-test"), 0)
        try Fixtures.writeFile(kernel + "/vsock.ko", try Fixtures.readFile(try Fixtures.module(named: "vsock.ko")))
        return (pkg, kernel)
    }

    /// HOLE (round 8): `capture` indexes the package's modules by walking lib/modules/<v>/kernel,
    /// and followed every link to a directory (FS.isDirectory stats through links): two links to
    /// "." in the tree (a hostile .deb unpacks them as given) made the walk branch at every level
    /// until ELOOP, 2^40 paths, before any module name was even looked up. `bench` had the same walk
    /// fixed in round 4 (CLIRound4Tests.testBenchWalkDoesNotFollowDirectoryLinkLoops).
    func testCaptureModuleIndexDoesNotFollowDirectoryLinkLoops() throws {
        let (pkg, kernel) = try fakeKernelPackage()
        XCTAssertEqual(symlink(".", kernel + "/a"), 0)
        XCTAssertEqual(symlink(".", kernel + "/b"), 0)
        let r = run(["capture", "--kernel", pkg, "--modules", "no_such_module", "--out", dir + "/out", "--init", Self.staticExecutable,
                     "--work-dir", dir + "/work"], environment: [try fakeQEMUPath()], seconds: 60)
        XCTAssertEqual(r.status, 2, "hung (nil) or failed: \(r.stderr.suffix(400))")
        XCTAssertTrue(r.stderr.contains("no module named no_such_module"), r.stderr.suffix(400).description)
        XCTAssertEqual(access(dir + "/qemu-started", F_OK), -1, "QEMU started")
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8)    /// HOLE (round 8): `capture`'s options were checked where each is used, after the package was
    /// unpacked, its modules indexed and the initramfs written: `--accel warp` exited 1 (README:
    /// "1 when some failed to load or the VM failed") after that work, `--kernel-args
    /// execgate.mode=serve` likewise; `--memory 0` and `--timeout 0` started QEMU; `--timeout -1`
    /// started QEMU and then trapped converting the deadline (the process died, QEMU left
    /// running). Each is a usage error (exit 2, the option named) before any work, as `vm start`'s
    /// (BootOptions.validate).
    func testCaptureOptionsAreUsageErrorsBeforeAnyWork() throws {
        let (pkg, _) = try fakeKernelPackage()
        // The transport drivers built in, so nothing else stops the run before its boot.
        try Fixtures.writeFile(pkg + "/lib/modules/6.1.0-test/modules.builtin",
                               Array("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n".utf8))
        let path = try fakeQEMUPath()
        for (extra, named) in [(["--accel", "warp"], "--accel"), (["--timeout", "-1"], "--timeout"), (["--timeout", "0"], "--timeout"),
                               (["--timeout", "9223372036854775807"], "--timeout"), (["--memory", "0"], "--memory"),
                               (["--memory", "-5"], "--memory"), (["--kernel-args", "quiet execgate.mode=serve"], "execgate.mode=serve"),
                               (["--kernel-args", "a=\"b\""], "a=\"b\"")] {
            let work = dir + "/work"
            let r = run(["capture", "--kernel", pkg, "--modules", "vsock", "--out", dir + "/out", "--init", Self.staticExecutable,
                         "--work-dir", work] + extra, environment: [path], seconds: 60)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr.suffix(400))")
            XCTAssertTrue(r.stderr.contains(named), "\(extra): \(r.stderr.suffix(400))")
            XCTAssertEqual(r.stdout, "", "\(extra)")
            XCTAssertEqual(access(work, F_OK), -1, "\(extra): work done before the refusal")
            XCTAssertEqual(access(dir + "/qemu-started", F_OK), -1, "\(extra): QEMU started")
            _ = system("rm -rf '\(work)' '\(dir)/qemu-started'")
        }
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): docs/policy.md, "Dry run": `policy test` "replays a captured boot as the VMM
    /// would: register-guest, then authorize-module per module". The register-guest reply was
    /// dropped: under a policy that pins other kernel builds (`kernel … symbols …`) the service
    /// refuses the registration (`untrusted-kernel`) and answers every request of the guest
    /// `unknown-guest`, but the dry run judged each module as if sent with no registered guest and
    /// printed "DENY …: the request names no registered guest" for a request that named one. And
    /// `--guest ""` (register-guest refuses an empty guest_id, docs/protocol.md) was replayed as a
    /// guest too.
    func testPolicyTestReportsARefusedRegistration() throws {
        let capture = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        let k = run(["keys", "extract", "--kernel", try Fixtures.vmlinuz(), "--out", dir + "/kx"])
        XCTAssertEqual(k.status, 0, k.stderr)
        let cert = dir + "/kx/cert-0.pem"
        let pinned = dir + "/pinned.policy"
        try Fixtures.writeFile(pinned, Array(PolicyTexts.kernelPinned(kernel: String(repeating: "1", count: 64), symbols: String(repeating: "2", count: 64)).utf8))
        // (--kernel: a capture holds no kernel digest; without it the pin cannot be judged, exit 2:
        // CLIRound9Tests.testPolicyTestChecksKernelPinsAgainstTheGivenImage.)
        let text = run(["policy", "test", "--policy", pinned, "--trust", cert, "--kernel", try Fixtures.vmlinuz(), capture])
        XCTAssertEqual(text.status, 1, text.stderr)
        XCTAssertTrue(text.stdout.contains("untrusted-kernel"), text.stdout)
        XCTAssertFalse(text.stdout.contains("DENY") || text.stdout.contains("ALLOW"), "modules judged without their guest: \(text.stdout)")
        let json = run(["policy", "test", "--policy", pinned, "--trust", cert, "--kernel", try Fixtures.vmlinuz(), capture, "--json"])
        XCTAssertEqual(json.status, 1, json.stderr)
        let lines = json.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, json.stdout)
        let object = try? JSONReader.parse(Array(json.stdout.utf8))
        XCTAssertEqual(object?["registered"], .bool(false), json.stdout)
        XCTAssertEqual(object?["error"], .string("untrusted-kernel"), json.stdout)

        let empty = run(["policy", "test", "--policy", Fixtures.packageRoot + "/ServiceVM/policies/default.policy", "--trust", cert, "--guest", "", capture])
        XCTAssertEqual(empty.status, 2, empty.stderr)
        XCTAssertTrue(empty.stderr.contains("--guest"), empty.stderr)
        XCTAssertEqual(empty.stdout, "")
        // The honest replay is unchanged: every module of the fixture capture allowed.
        let ok = run(["policy", "test", "--policy", Fixtures.packageRoot + "/ServiceVM/policies/default.policy", "--trust", cert, capture])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("9 allowed"), ok.stdout)
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `vm status --json` put `memory_mib` and `boot_ms` from the state directory's
    /// vm.txt into its JSON unquoted and unchecked: an empty value gave `"memory_mib":,` and a
    /// value with a comma added members of its own. The output of `--json` is JSON on every path.
    func testVMStatusJSONIsJSONWhateverVMTxtHolds() throws {
        let state = dir + "/state"
        XCTAssertEqual(mkdir(state, 0o755), 0)
        XCTAssertEqual(mkdir(state + "/x", 0o755), 0)
        try Fixtures.writeFile(state + "/x/vm.txt", Array("name=x\nmemory_mib=\nboot_ms=12,\"forged\":true\n".utf8))
        let r = run(["vm", "status", "--name", "x", "--state-dir", state, "--json"], seconds: 30)
        XCTAssertEqual(r.status, 3, r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, r.stdout)
        let object = try? JSONReader.parse(Array(r.stdout.utf8))
        XCTAssertNotNil(object?.objectMembers, "not one JSON object: \(r.stdout)")
        XCTAssertEqual(object?["memory_mib"], .null, r.stdout)
        XCTAssertEqual(object?["boot_ms"], .null, r.stdout)
        XCTAssertFalse(object?.objectMembers?.contains { $0.0 == "forged" } ?? true, r.stdout)
        // Numbers the launcher wrote stay numbers.
        try Fixtures.writeFile(state + "/x/vm.txt", Array("name=x\nmemory_mib=160\nboot_ms=954\n".utf8))
        let good = run(["vm", "status", "--name", "x", "--state-dir", state, "--json"], seconds: 30)
        let g = try? JSONReader.parse(Array(good.stdout.utf8))
        XCTAssertEqual(g?["memory_mib"], .int(160), good.stdout)
        XCTAssertEqual(g?["boot_ms"], .int(954), good.stdout)
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `vm status` and `vm stop` read the VM's state files (qemu.pid, vm.txt,
    /// console.log) with a plain open(2): a FIFO in their place (no writer) blocked both commands
    /// forever. A state file a command reads that is not a regular file is now refused (exit 2,
    /// named) before it is opened.
    func testVMStateFilesThatAreNoRegularFilesAreRefusedNotWaitedOn() throws {
        let state = dir + "/state"
        XCTAssertEqual(mkdir(state, 0o755), 0)
        for file in ["qemu.pid", "vm.txt", "console.log"] {
            let name = "vm-" + file.replacingOccurrences(of: ".", with: "-")
            XCTAssertEqual(mkdir(state + "/" + name, 0o755), 0)
            XCTAssertEqual(mkfifo(state + "/" + name + "/" + file, 0o644), 0)
            for command in ["status", "stop"] {
                let r = run(["vm", command, "--name", name, "--state-dir", state], seconds: 15)
                // `vm stop` reads only qemu.pid of a VM that is not running.
                if command == "stop" && file != "qemu.pid" {
                    XCTAssertEqual(r.status, 0, "vm stop, \(file) a FIFO: hung (nil) or \(r.stderr)")
                    continue
                }
                XCTAssertEqual(r.status, 2, "vm \(command), \(file) a FIFO: hung (nil) or \(r.stderr)")
                XCTAssertTrue(r.stderr.contains(file), "vm \(command): \(r.stderr)")
            }
        }
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `serve --policy FILE --signature-only` served FILE's end state and dropped
    /// `--signature-only` without a word (the built-in policy is the only one it applies to, like
    /// the `--deny-*` options, which `serve` already refuses beside `--policy`).
    func testServeRefusesSignatureOnlyBesideAPolicyFile() throws {
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/trust", "--type", "ec-p256"]).status, 0)
        let r = run(["serve", "--listen", "unix:" + dir + "/s.sock", "--policy", Fixtures.packageRoot + "/ServiceVM/policies/default.policy",
                     "--trust", dir + "/trust/cert.pem", "--signature-only"], seconds: 10)
        XCTAssertEqual(r.status, 2, "served (nil) or: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("--signature-only"), r.stderr)
        XCTAssertEqual(access(dir + "/s.sock", F_OK), -1)
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `image build --policy FILE` copied FILE into the image unread, and
    /// `--admin-cert CERT` too: a policy with a typo, a bundle without `--admin-cert`, a bundle
    /// signed by another key or an admin "certificate" that is none made an image whose service
    /// refuses to start at every boot (VerifierService.start → loadBootPolicy; the sidecar
    /// powers off and systemd restarts it, docs/deployment.md "Restart"), found only by
    /// `vm start`. Each is now refused at build time as the guest would refuse it (exit 2, the file
    /// named), before anything is written.
    func testImageBuildRefusesAPolicyTheGuestWouldRefuse() throws {
        let pkg = dir + "/ipkg"
        XCTAssertEqual(mkdir(pkg, 0o755), 0)
        XCTAssertEqual(mkdir(pkg + "/boot", 0o755), 0)
        try Fixtures.writeFile(pkg + "/boot/vmlinuz-6.1.0-test", Array("no kernel".utf8))
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/admin", "--type", "ec-p256"]).status, 0)
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/other", "--type", "ec-p256"]).status, 0)
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/default.policy"
        let bundle = dir + "/p.bundle"
        XCTAssertEqual(run(["policy", "sign", "--key", dir + "/other/key.pem", "--cert", dir + "/other/cert.pem", policy, "-o", bundle]).status, 0)
        try Fixtures.writeFile(dir + "/typo.policy", Array("execgate-policy 1\nid x\nversion 2\nmodules alow\n".utf8))
        let out = dir + "/out"
        // The test kernel (its builtin certificate: what `trust kernel-builtin` stands for in the guest).
        let base = ["image", "build", "--kernel-package", pkg, "--kernel", try Fixtures.vmlinuz(), "--service-kernel", Self.staticExecutable,
                    "--init", Self.staticExecutable, "--out", out, "--no-test-image"]
        for (extra, named) in [(["--policy", dir + "/typo.policy"], dir + "/typo.policy:4"),
                               (["--policy", bundle], bundle),
                               (["--policy", bundle, "--admin-cert", dir + "/admin/cert.pem"], bundle),
                               (["--admin-cert", dir + "/typo.policy"], dir + "/typo.policy"),
                               (["--policy", dir + "/missing.policy"], dir + "/missing.policy")] {
            let r = run(base + extra, seconds: 120)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(named), "\(extra): \(r.stderr)")
            XCTAssertEqual(access(out, F_OK), -1, "\(extra): an image was written")
        }
        // An image without trust anchors (a kernel without certificates): `trust kernel-builtin`
        // stands for none there, which the guest's policy parser refuses.
        let noAnchors = run(["image", "build", "--kernel-package", pkg, "--service-kernel", Self.staticExecutable, "--init", Self.staticExecutable,
                             "--out", out, "--no-test-image", "--policy", policy], seconds: 120)
        XCTAssertEqual(noAnchors.status, 2, noAnchors.stderr)
        XCTAssertTrue(noAnchors.stderr.contains("kernel-builtin"), noAnchors.stderr)
        XCTAssertEqual(access(out, F_OK), -1, "an image was written")
        // What the guest accepts still builds: a policy text, and a bundle with its admin certificate.
        let text = run(base + ["--policy", policy, "--admin-cert", dir + "/admin/cert.pem"], seconds: 120)
        XCTAssertEqual(text.status, 0, text.stderr)
        let signed = run(base + ["--policy", bundle, "--admin-cert", dir + "/other/cert.pem"], seconds: 120)
        XCTAssertEqual(signed.status, 0, signed.stderr)
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `keys extract --out DIR` wrote cert-0…cert-N-1 of this kernel over a
    /// directory that held more: cert-N… of another image (a kernel with more certificates
    /// extracted there before) stayed beside them, and `serve --trust DIR/*.pem` then trusted a
    /// certificate this kernel does not. An output directory holding cert-K files this extraction
    /// does not write is refused (exit 2, the file named), nothing written.
    func testKeysExtractRefusesCertificatesOfAnotherImageLeftInItsDirectory() throws {
        let out = dir + "/kx"
        XCTAssertEqual(mkdir(out, 0o755), 0)
        let cert = try testCertificatePEM()
        try Fixtures.writeFile(out + "/cert-3.pem", cert)
        for json in [false, true] {
            let r = run(["keys", "extract", "--kernel", try Fixtures.vmlinuz(), "--out", out] + (json ? ["--json"] : []))
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains(out + "/cert-3.pem"), r.stderr)
            XCTAssertEqual(r.stdout, "")
            XCTAssertEqual(access(out + "/cert-0.pem", F_OK), -1, "written beside the other image's certificate")
        }
        XCTAssertEqual(try Fixtures.readFile(out + "/cert-3.pem"), cert, "the other file is left as it was")
        // The same kernel again into its own directory: its files, replaced.
        XCTAssertEqual(unlink(out + "/cert-3.pem"), 0)
        for _ in 0..<2 {
            let again = run(["keys", "extract", "--kernel", try Fixtures.vmlinuz(), "--out", out])
            XCTAssertEqual(again.status, 0, again.stderr)
        }
        XCTAssertEqual(access(out + "/cert-0.pem", F_OK), 0)
    }

    /// A certificate's PEM (keys generate).
    func testCertificatePEM() throws -> [UInt8] {
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/other", "--type", "ec-p256"]).status, 0)
        return try Fixtures.readFile(dir + "/other/cert.pem")
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): on a host without /dev/vhost-vsock `vm start` runs the vsock backend with
    /// sockets in the state directory; a --state-dir (with --name) too long for them was found
    /// only by the backend it started: exit 1 (README/ServiceVM: "the operation itself failed")
    /// with "--socket: a path of 1…95 bytes", an option the operator never gave, after vm.txt
    /// was written "state=starting". It is a usage error before anything is written (exit 2,
    /// naming --state-dir), as `vsock-backend`'s own check (VsockBackendCommand.validate).
    func testVMStartRefusesAStateDirectoryTooLongForTheBackendSockets() throws {
        guard access("/dev/vhost-vsock", R_OK | W_OK) != 0 else { throw XCTSkip("this host has vhost-vsock: no backend sockets") }
        let image = dir + "/img"
        XCTAssertEqual(mkdir(image, 0o755), 0)
        try Fixtures.writeFile(image + "/vmlinux", [])
        try Fixtures.writeFile(image + "/initramfs.cpio.zst", [])
        let state = dir + "/" + String(repeating: "s", count: 85)
        let r = run(["vm", "start", "--name", "x", "--state-dir", state, "--image-dir", image, "--accel", "tcg"],
                    environment: [try fakeQEMUPath()], seconds: 60)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("--state-dir"), r.stderr)
        XCTAssertEqual(access(state + "/x/vm.txt", F_OK), -1, "vm.txt written before the refusal")
        XCTAssertEqual(access(dir + "/qemu-started", F_OK), -1, "QEMU started")
    }
}

extension CLIRound8Tests {
    /// HOLE (round 8): `vsock-backend` with one path for both its sockets (--socket and --uds):
    /// the second claim of the path finds the first's lock (SocketPath.claim) and the backend
    /// refuses to start, exit 2, naming the path, as it should; but the vhost-user socket it had
    /// already bound stayed behind as a file (a refused start left half of its sockets; likewise
    /// when the --uds path is another listener's). A refused start now leaves no socket of its own.
    func testVsockBackendRefusesOnePathForBothSockets() throws {
        let path = dir + "/same.sock"
        let r = run(["vsock-backend", "--socket", path, "--uds", path, "--guest-cid", "3"], seconds: 15)
        XCTAssertEqual(r.status, 2, "ran (nil) or: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains(path), r.stderr)
        var st = stat()
        XCTAssertNotEqual(lstat(path, &st), 0, "a socket file was left behind")
    }
}

extension CLIRound8Tests {
    /// Failed attack (round 8): `image build` with an /init that cannot be one (a dynamically
    /// linked executable), a service kernel that is no ELF, or a FIFO as --service-kernel: each
    /// refused, exit 2, the file named, before the output directory is created.
    func testImageBuildRefusesBadInitAndKernelBeforeWriting() throws {
        let pkg = dir + "/ipkg"
        XCTAssertEqual(mkdir(pkg, 0o755), 0)
        XCTAssertEqual(mkdir(pkg + "/boot", 0o755), 0)
        try Fixtures.writeFile(pkg + "/boot/vmlinuz-6.1.0-test", Array("no kernel".utf8))
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let out = dir + "/out"
        for (initBinary, serviceKernel, named) in [("/bin/ls", Self.staticExecutable, "/bin/ls"),
                                                   (Self.staticExecutable, "/etc/passwd", "/etc/passwd"),
                                                   (Self.staticExecutable, fifo, fifo)] {
            let r = run(["image", "build", "--kernel-package", pkg, "--init", initBinary, "--service-kernel", serviceKernel,
                         "--out", out, "--no-test-image"], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(named): hung (nil) or \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(named), r.stderr)
            XCTAssertEqual(access(out, F_OK), -1, "\(named): output written")
        }
    }
}
