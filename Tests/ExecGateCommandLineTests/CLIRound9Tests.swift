// SPDX-License-Identifier: Apache-2.0
//
// CLI round 9: hostile input against the real binary. First the leftovers of round 8: text a
// server sends (every word of a reply is the peer's) printed as it came, `image build`'s outputs
// replaced one by one, `policy test` under a policy that pins kernel builds; then every
// subcommand with bad, missing, huge, duplicated or odd input. README's rules: exit 0
// success/allow, 1 deny or refusal, 2 usage error, unreadable input or no verdict, the reason on
// stderr; `--json` output is JSON. No QEMU is booted here.

import _ExecGateInternals
import ExecGateCapture
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound9Tests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
    }

    func run(_ args: [String], environment: [String] = [], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args.map { Array($0.utf8) }, extraEnvironment: environment.map { Array($0.utf8) },
                             in: dir, seconds: seconds)
    }

    /// One TLV field: tag (u16), length (u32), value (docs/protocol.md, "Bodies").
    static func tlv(_ tag: UInt16, _ value: [UInt8]) -> [UInt8] {
        [UInt8(tag >> 8), UInt8(tag & 0xff), UInt8(value.count >> 24 & 0xff), UInt8(value.count >> 16 & 0xff),
         UInt8(value.count >> 8 & 0xff), UInt8(value.count & 0xff)] + value
    }
    static func tlv(_ tag: UInt16, _ s: String) -> [UInt8] { tlv(tag, Array(s.utf8)) }
    static func tlv(_ tag: UInt16, u64 v: UInt64) -> [UInt8] { tlv(tag, (0..<8).map { UInt8(v >> (56 - 8 * $0) & 0xff) }) }
    static func tlv(_ tag: UInt16, u32 v: UInt32) -> [UInt8] { tlv(tag, (0..<4).map { UInt8(v >> (24 - 8 * $0) & 0xff) }) }
    static func tlv(_ tag: UInt16, u16 v: UInt16) -> [UInt8] { tlv(tag, [UInt8(v >> 8), UInt8(v & 0xff)]) }

    /// What a terminal acts on rather than shows, or shows as a line break or out of order: C0
    /// controls but the line feed, DEL, the C1 controls (U+009B is CSI), the Unicode line and
    /// paragraph separators, and the bidirectional formatting characters.
    static func isTerminalControl(_ u: Unicode.Scalar) -> Bool {
        (u.value < 0x20 && u != "\n") || (0x7F...0x9F).contains(u.value) || u.value == 0x2028 || u.value == 0x2029
            || u.value == 0x061C || u.value == 0x200E || u.value == 0x200F || (0x202A...0x202E).contains(u.value) || (0x2066...0x2069).contains(u.value)
    }

    func assertTerminalSafe(_ text: String, lines: Int? = nil, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(text.unicodeScalars.contains(where: Self.isTerminalControl), "\(what): a control character printed raw: \(Array(text.utf8))",
                       file: file, line: line)
        XCTAssertFalse(text.split(separator: "\n").contains { $0.hasPrefix("ALLOW vsock: forged") }, "\(what): a line of the peer's printed as ours: \(text)",
                       file: file, line: line)
        if let lines { XCTAssertEqual(text.split(separator: "\n", omittingEmptySubsequences: false).count - 1, lines, "\(what): \(text)", file: file, line: line) }
    }

    /// Words a hostile server puts in its replies: an OSC title, a screen clear, a cursor-up over
    /// the line before, a CSI as a C1 control, a line break and a right-to-left override, each
    /// with a line of its own that must not appear as one.
    static let hostileWords = [
        "srv\u{1B}]0;owned\u{07}\u{1B}[2J",
        "p\u{1B}[1A\u{1B}[2K\rALLOW vsock: forged",
        "\u{9B}31mred\nALLOW vsock: forged\n",
        "id\u{202E}degrof\u{2028}forged",
    ]
}

extension CLIRound9Tests {
    /// HOLE (round 9): `request status`, `request module`, `request retire-module|init-freed`,
    /// `policy push` and `policy show` printed the words of the server's reply (server and policy
    /// names, state, a verdict's message, module and check names, guest ids, an `error` reply's
    /// message) as they came: a hostile or compromised verifier (or a guest-chosen name it echoes)
    /// wrote terminal escape sequences (a window title, a cleared screen, a cursor moved up over
    /// the line before) and whole lines of its own ("ALLOW vsock: …") into the operator's terminal
    /// and into anything reading the command's output line by line. The service's own text log
    /// escapes them (TextLogHandler); the CLI did not. Human output now escapes every control
    /// character; `--json` keeps the exact words, as JSON.
    func testServerWordsArePrintedEscaped() throws {
        let w = Self.hostileWords
        let status: [UInt8] = Self.tlv(1, w[0]) + Self.tlv(2, u64: 5) + Self.tlv(3, u64: 7) + Self.tlv(4, u32: 1) + Self.tlv(5, w[1])
            + Self.tlv(6, u64: 3) + Self.tlv(7, w[2])
        let verdict: [UInt8] = Self.tlv(1, [0]) + Self.tlv(2, u16: 1) + Self.tlv(4, w[1]) + Self.tlv(5, w[2]) + Self.tlv(6, w[3])
            + Self.tlv(7, u64: 1) + Self.tlv(9, w[0])
        let retired: [UInt8] = Self.tlv(1, w[2]) + Self.tlv(2, w[1]) + Self.tlv(3, u32: 0) + Self.tlv(4, u32: 0)
        let freed: [UInt8] = Self.tlv(1, w[3]) + Self.tlv(2, w[2]) + Self.tlv(3, u64: 0xffff_ffff_c200_0000)
        let pushed: [UInt8] = Self.tlv(1, w[0]) + Self.tlv(2, u64: 9) + Self.tlv(3, w[2]) + Self.tlv(4, u64: 8)
        let shown: [UInt8] = Self.tlv(1, w[0]) + Self.tlv(2, u64: 9) + Self.tlv(3, w[1]) + Self.tlv(4, w[0]) + Self.tlv(6, w[3])
            + Self.tlv(9, w[1]) + Self.tlv(10, w[2]) + Self.tlv(11, w[3]) + Self.tlv(12, w[0]) + Self.tlv(13, w[2])
        let refused: [UInt8] = Self.tlv(1, u16: 1) + Self.tlv(2, w[2] + w[0])
        let sock = dir + "/s.sock", errorSock = dir + "/e.sock"
        serveFrames(sock, connections: 100, everyFrame: true) { type in
            switch type {
            case 0x0003: return (0x8003, verdict)
            case 0x0004: return (0x8004, status)
            case 0x0006: return (0x8006, retired)
            case 0x0007: return (0x8007, freed)
            case 0x0010: return (0x8010, pushed)
            case 0x0011: return (0x8011, shown)
            default: return (0xFFFF, refused)
            }
        }
        serveFrames(errorSock, connections: 100, everyFrame: true) { _ in (0xFFFF, refused) }
        let module = try Fixtures.module(named: "vsock.ko")
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/adm", "--type", "ec-p256"]).status, 0)
        let bundle = dir + "/p.bundle"
        XCTAssertEqual(run(["policy", "sign", "--key", dir + "/adm/key.pem", "--cert", dir + "/adm/cert.pem",
                            Fixtures.packageRoot + "/ServiceVM/policies/default.policy", "-o", bundle]).status, 0)
        let session = ["--guest", "g", "--session", "7"]
        let commands: [(args: [String], status: Int32, lines: Int)] = [
            (["request", "status"], 0, 1),
            (["request", "module", module, "--claim", "none", "--guest", "g"], 1, 1),
            (["request", "retire-module", "m", "--text-base", "0xffffffffc0000000"] + session, 0, 1),
            (["request", "init-freed", "m", "--init-base", "0xffffffffc2000000"] + session, 0, 1),
            (["policy", "push", bundle], 0, 1),
            (["policy", "show"], 0, 4),
            (["policy", "show", "--source"], 0, 5),
        ]
        for c in commands {
            let r = run(c.args + ["--connect", "unix:" + sock], seconds: 30)
            XCTAssertEqual(r.status, c.status, "\(c.args[0...1]): \(r.stderr)")
            assertTerminalSafe(r.stdout, lines: c.lines, "\(c.args[0...1]) stdout")
            assertTerminalSafe(r.stderr, "\(c.args[0...1]) stderr")
            // An `error` reply's message, on stderr.
            let e = run(c.args + ["--connect", "unix:" + errorSock], seconds: 30)
            XCTAssertEqual(e.stdout, "", "\(c.args[0...1])")
            XCTAssertNotEqual(e.status, 0, "\(c.args[0...1])")
            assertTerminalSafe(e.stderr, lines: 1, "\(c.args[0...1]) error reply")
        }
        // --json: the server's words exactly, as JSON strings.
        let json = run(["request", "status", "--connect", "unix:" + sock, "--json"], seconds: 30)
        XCTAssertEqual(json.status, 0, json.stderr)
        XCTAssertEqual(json.stdout.split(separator: "\n").count, 1, json.stdout)
        let o = try? JSONReader.parse(Array(json.stdout.utf8))
        XCTAssertEqual(o?["server"], .string(w[0]), json.stdout)
        XCTAssertEqual(o?["policy_id"], .string(w[1]), json.stdout)
        XCTAssertEqual(o?["state"], .string(w[2]), json.stdout)
        let v = run(["request", "module", module, "--claim", "none", "--guest", "g", "--connect", "unix:" + sock, "--json"], seconds: 30)
        XCTAssertEqual(v.status, 1, v.stderr)
        let vo = try? JSONReader.parse(Array(v.stdout.utf8))
        XCTAssertEqual(vo?["message"], .string(w[1]), v.stdout)
        XCTAssertEqual(vo?["module"], .string(w[0]), v.stdout)
    }
}

extension CLIRound9Tests {
    /// The names in directory `path` (none for a missing one), sorted.
    func names(_ path: String) -> [String] {
        var names: [String] = []
        if let d = opendir(path) {
            while let e = readdir(d) {
                let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
                if n != "." && n != ".." { names.append(n) }
            }
            closedir(d)
        }
        return names.sorted()
    }

    /// Every regular file of directory `path`: name → bytes.
    func snapshot(_ path: String) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for n in names(path) { out[n] = try? Fixtures.readFile(path + "/" + n) }
        return out
    }

    /// A 64-bit ELF executable of 128 bytes without a program interpreter (what `image build
    /// --service-kernel` takes), told apart by `mark`.
    func tinyELF(_ name: String, mark: UInt8) throws -> String {
        var b = [UInt8](repeating: 0, count: 128)
        b[0...5] = [0x7f, 0x45, 0x4c, 0x46, 2, 1]
        b[6] = 1
        b[16] = 2  // ET_EXEC
        b[18] = 0x3e  // EM_X86_64
        b[32] = 64  // e_phoff
        b[52] = 64  // e_ehsize
        b[54] = 56  // e_phentsize, e_phnum 0
        b[127] = mark
        let path = dir + "/" + name
        try Fixtures.writeFile(path, b)
        return path
    }

    /// An unpacked kernel package with a boot/vmlinuz-* that is no kernel (no trust anchors).
    func imagePackage() throws -> String {
        let pkg = dir + "/ipkg"
        XCTAssertEqual(mkdir(pkg, 0o755), 0)
        XCTAssertEqual(mkdir(pkg + "/boot", 0o755), 0)
        try Fixtures.writeFile(pkg + "/boot/vmlinuz-6.1.0-test", Array("no kernel".utf8))
        return pkg
    }

    /// HOLE (round 9): `image build` wrote its outputs one after another into the output
    /// directory (vmlinux, then the initramfs, the test initramfs, image.txt), each replaced on
    /// its own: a build that failed or was stopped part-way (the file-size limit, a full disk,
    /// an output name taken by a directory) left the new kernel beside the old initramfs, an image
    /// whose halves come from two builds (`vm start` boots it: another /init, policy or admin
    /// certificate than the kernel's build was made with, or a kernel the initramfs's modules do
    /// not fit). The image is now built in a directory beside the output one and swapped for it
    /// whole: after a failure the output directory is the old image, and nothing is left beside it.
    func testImageBuildReplacesItsOutputsTogetherOrNotAtAll() throws {
        let pkg = try imagePackage()
        let a = try tinyELF("kernel-a", mark: 0xA), b = try tinyELF("kernel-b", mark: 0xB)
        let out = dir + "/img/out"
        XCTAssertEqual(mkdir(dir + "/img", 0o755), 0)
        let base = ["image", "build", "--kernel-package", pkg, "--init", CLIRound8Tests.staticExecutable, "--out", out, "--no-test-image"]
        let first = run(base + ["--service-kernel", a], seconds: 120)
        XCTAssertEqual(first.status, 0, first.stderr)
        let old = snapshot(out)
        XCTAssertEqual(old["vmlinux"]?.last, 0xA)
        XCTAssertNotNil(old["initramfs.cpio.zst"])
        // A write cut short: the 128-byte kernel fits under a 64 KiB file-size limit, the
        // initramfs (/init alone is ~1 MB) does not.
        let quoted = ([Fixtures.execgateBinary] + base + ["--service-kernel", b]).map { "'" + $0 + "'" }.joined(separator: " ")
        let cut = Fixtures.run("/bin/sh", ["-c", "ulimit -f 64; exec " + quoted])
        XCTAssertNotEqual(cut.status, 0, cut.stderr)
        XCTAssertEqual(snapshot(out), old, "a failed build replaced part of the image")
        XCTAssertEqual(names(dir + "/img"), ["out"], "left beside the image")
        // An output name taken by a directory: refused, named, nothing replaced.
        XCTAssertEqual(unlink(out + "/image.txt"), 0)
        XCTAssertEqual(mkdir(out + "/image.txt", 0o755), 0)
        let taken = snapshot(out)
        let r = run(base + ["--service-kernel", b], seconds: 120)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains(out + "/image.txt"), r.stderr)
        XCTAssertEqual(snapshot(out), taken, "a failed build replaced part of the image")
        XCTAssertEqual(names(dir + "/img"), ["out"], "left beside the image")
        // The same build, the directory out of the way: the whole new image.
        XCTAssertEqual(rmdir(out + "/image.txt"), 0)
        let ok = run(base + ["--service-kernel", b], seconds: 120)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(snapshot(out)["vmlinux"]?.last, 0xB)
        XCTAssertNotEqual(snapshot(out)["initramfs.cpio.zst"], old["initramfs.cpio.zst"])
        XCTAssertEqual(names(dir + "/img"), ["out"])
    }
}

extension CLIRound9Tests {
    /// HOLE (round 9): `policy test` under a policy whose `kernel … symbols …` lines pin kernel
    /// builds replayed the capture's registration without a `kernel_digest` (a capture holds
    /// none): the pin could never be checked, and the dry run printed `REFUSED register-guest …:
    /// untrusted-kernel: kernel_digest missing` and exit 1 — "the policy refuses the guest's
    /// kernel" — for the very build the policy pins, which the service registers. It now takes
    /// `--kernel VMLINUZ`, the image the guest boots, whose SHA-256 is the registration's
    /// kernel_digest (docs/protocol.md, register-guest tag 3); under kernel pins without it, the
    /// pin cannot be judged: a usage error (exit 2, naming --kernel), nothing printed as a result.
    func testPolicyTestChecksKernelPinsAgainstTheGivenImage() throws {
        let capture = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        let vmlinuz = try Fixtures.vmlinuz()
        let k = run(["keys", "extract", "--kernel", vmlinuz, "--out", dir + "/kx"])
        XCTAssertEqual(k.status, 0, k.stderr)
        let cert = dir + "/kx/cert-0.pem"
        let kernel = Hex.encode(try Fixtures.readFile(vmlinuz).withUnsafeBytes { Digest.sha256($0).bytes })
        let symbols = Hex.encode(KernelFactsKey.symbolsDigest(try CaptureBoot.load(capture).registration(guestID: "capture")))
        func pinned(_ k: String, _ s: String) throws -> String {
            let path = dir + "/pinned-\(k.prefix(4))-\(s.prefix(4)).policy"
            try Fixtures.writeFile(path, Array(PolicyTexts.kernelPinned(kernel: k, symbols: s).utf8))
            return path
        }
        let right = try pinned(kernel, symbols)
        // Without the image: the pin is not judged, and that is said (exit 2), not a refusal.
        for json in [false, true] {
            let r = run(["policy", "test", "--policy", right, "--trust", cert, capture] + (json ? ["--json"] : []))
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains("--kernel"), r.stderr)
            XCTAssertEqual(r.stdout, "")
        }
        // With it: the pinned build registers and its modules are judged.
        let ok = run(["policy", "test", "--policy", right, "--trust", cert, "--kernel", vmlinuz, capture])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("9 allowed"), ok.stdout)
        let okJSON = run(["policy", "test", "--policy", right, "--trust", cert, "--kernel", vmlinuz, capture, "--json"])
        XCTAssertEqual(okJSON.status, 0, okJSON.stderr)
        let summary = try? JSONReader.parse(Array((okJSON.stdout.split(separator: "\n").last ?? "").utf8))
        XCTAssertEqual(summary?["kernel_digest"], .string("sha256:" + kernel), okJSON.stdout)
        XCTAssertEqual(summary?["symbols_digest"], .string("sha256:" + symbols), okJSON.stdout)
        // Another image, or other symbols: the policy refuses the guest's kernel (exit 1).
        for (policy, image, why) in [(right, capture + "/kallsyms.txt", "not listed"),
                                     (try pinned(kernel, String(repeating: "2", count: 64)), vmlinuz, "not the pinned symbol table")] {
            let r = run(["policy", "test", "--policy", policy, "--trust", cert, "--kernel", image, capture])
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertTrue(r.stdout.contains("untrusted-kernel") && r.stdout.contains(why), r.stdout)
        }
    }
}

extension CLIRound9Tests {
    /// `execgate ARGS… > /dev/full` (standard output a device that refuses every write, as a full
    /// disk does): status, stderr.
    func runToFullDevice(_ args: [String], seconds: Int = 30) -> (status: Int32, stderr: String) {
        let quoted = ([Fixtures.execgateBinary] + args).map { "'" + $0 + "'" }.joined(separator: " ")
        let r = Fixtures.run("/usr/bin/timeout", ["\(seconds)", "/bin/sh", "-c", "exec " + quoted + " > /dev/full"])
        return (r.status, r.stderr)
    }

    /// HOLE (round 9): no command checked that its standard output was written: with stdout on a
    /// full disk (here /dev/full) `explain --json`, `policy check --json`, `keys generate --json`
    /// and `request status` lost every line they printed and exited 0, a success with no result
    /// for whatever reads it; `policy audit --follow` kept asking for records and moved its cursor
    /// past each page it could not write, so the records carried out of the guest were lost with
    /// no error, forever. A failed write to standard output is now a failure: the reason on
    /// stderr, exit 2 for a command that would have succeeded (README: "2 … no verdict"), and
    /// `policy audit` stops at the first record it could not write, naming the last one it did.
    func testOutputThatCannotBeWrittenIsAFailure() throws {
        let capture = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/default.policy"
        let sock = dir + "/s.sock"
        final class Counter: @unchecked Sendable { var n: UInt64 = 0 }
        let pages = Counter()
        serveFrames(sock, connections: 100, everyFrame: true) { type in
            switch type {
            case 0x0004:
                return (0x8004, Self.tlv(1, "srv") + Self.tlv(5, "p") + Self.tlv(7, "ok"))
            case 0x0012:
                // One new record a page, as a live audit log gives them.
                pages.n += 1
                return (0x8012, Self.tlv(1, "{\"seq\":\(pages.n)}") + Self.tlv(2, u64: pages.n + 1))
            default:
                return (0xFFFF, Self.tlv(1, u16: 1) + Self.tlv(2, "no"))
            }
        }
        for args in [["explain", capture, "--json"], ["explain", capture], ["policy", "check", policy, "--json"],
                     ["keys", "generate", "--out", dir + "/k", "--type", "ec-p256", "--json"],
                     ["request", "status", "--connect", "unix:" + sock], ["policy", "audit", "--connect", "unix:" + sock],
                     ["policy", "audit", "--connect", "unix:" + sock, "--follow"], ["version"]] {
            let r = runToFullDevice(args)
            XCTAssertEqual(r.status, 2, "\(args.prefix(2)): killed by timeout (124) or \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("standard output"), "\(args.prefix(2)): \(r.stderr)")
            // One reason (explain's progress aside), not one per attempt to write.
            if args[0] != "explain" { XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(args.prefix(2)): \(r.stderr)") }
        }
    }
}

extension CLIRound9Tests {
    /// HOLE (round 9): `image build --out ""` was taken as a directory: before the image was
    /// staged (round 9's fix) its files went to "" + "/vmlinux", the root directory's
    /// /vmlinux, /initramfs.cpio.zst and /image.txt; since, the build ran and failed at its last
    /// step with exit 1 ("cannot rename"). Every other output option refuses an empty path as a
    /// usage error naming the option (CLIRound7Tests.testAnEmptyOutputPathIsAUsageErrorNamingTheOption).
    /// And an --out that is a symbolic link loop was "the operation failed" (exit 1), not the bad
    /// input it is (exit 2, named).
    func testImageBuildRefusesAnEmptyOrLoopingOutputPath() throws {
        let pkg = try imagePackage()
        let kernel = try tinyELF("kernel", mark: 1)
        XCTAssertEqual(symlink("loop-b", dir + "/loop-a"), 0)
        XCTAssertEqual(symlink("loop-a", dir + "/loop-b"), 0)
        let before = names(dir)
        for (out, named) in [("", "--out"), (dir + "/loop-a", dir + "/loop-a")] {
            let r = run(["image", "build", "--kernel-package", pkg, "--init", CLIRound8Tests.staticExecutable, "--service-kernel", kernel,
                         "--out", out, "--no-test-image"], seconds: 120)
            XCTAssertEqual(r.status, 2, "'\(out)': \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(named), "'\(out)': \(r.stderr)")
            XCTAssertEqual(names(dir).filter { !$0.hasPrefix("run.") }, before.filter { !$0.hasPrefix("run.") }, "'\(out)': written")
        }
        XCTAssertEqual(access("/image.txt", F_OK), -1)
    }
}

extension CLIRound9Tests {
    /// HOLE (round 9): `vm start` and `vm selftest` created the VM's state directory
    /// (`<state-dir>/<name>/`, with its parents: by default ServiceVM/run/execgate under the
    /// current directory) before they looked for QEMU or the image: a start refused for a missing
    /// QEMU or image (exit 2, "run `make image`") left directories behind, and `--state-dir ''`
    /// a directory named after the VM in the current one. A refused start writes nothing
    /// (CLIRound8Tests.testVMStartRefusesAStateDirectoryTooLongForTheBackendSockets: vm.txt).
    func testVMStartRefusedForAMissingImageOrQEMUCreatesNothing() throws {
        let bin = dir + "/bin"
        XCTAssertEqual(mkdir(bin, 0o755), 0)
        try Fixtures.writeFile(bin + "/qemu-system-x86_64", Array("#!/bin/sh\nexit 0\n".utf8))
        XCTAssertEqual(chmod(bin + "/qemu-system-x86_64", 0o755), 0)
        let path = "PATH=" + bin + ":" + (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin")
        let state = dir + "/state"
        for (command, extra, named) in [("start", ["--image-dir", dir + "/noimage"], "make image"),
                                        ("selftest", ["--image-dir", dir + "/noimage"], "make image"),
                                        ("start", ["--qemu", dir + "/no-qemu"], "no-qemu")] {
            let r = run(["vm", command, "--state-dir", state, "--accel", "tcg"] + extra, environment: [path], seconds: 60)
            XCTAssertEqual(r.status, 2, "\(command) \(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(named), "\(command) \(extra): \(r.stderr)")
            XCTAssertEqual(access(state, F_OK), -1, "\(command) \(extra): state directory created by a refused start")
            XCTAssertEqual(access(state + "-selftest", F_OK), -1, "\(command) \(extra): state directory created by a refused start")
        }
    }
}

extension CLIRound9Tests {
    /// `executable ARGS…` with every signal at its default action and none blocked (as a shell
    /// starts a command), stdout and stderr to `dir`/spawn.out and spawn.err.
    func spawnWithDefaultSignals(_ executable: String, _ args: [String]) -> pid_t {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, dir + "/spawn.out", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&fa, 2, dir + "/spawn.err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv = [executable] + args
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        return posix_spawn(&pid, executable, &fa, &attr, &cargs, environ) == 0 ? pid : -1
    }

    /// Failed attack kept (round 9): `image build` stopped by SIGTERM or SIGINT while it writes
    /// its staging directory (seen beside the output directory before the signal is sent): the
    /// signal handler removes the staged files and then the directory (CExecGateSignals: armed
    /// directories after armed files), the old image stays whole, the process ends by the signal.
    func testImageBuildStoppedBySignalWhileStagingLeavesTheOldImage() throws {
        let pkg = try imagePackage()
        let out = dir + "/img/out"
        XCTAssertEqual(mkdir(dir + "/img", 0o755), 0)
        // With the test initramfs (the ~1 MB /init compressed twice): long enough to be caught.
        let base = ["image", "build", "--kernel-package", pkg, "--init", CLIRound8Tests.staticExecutable, "--out", out]
        // The old image's kernel is another than the interrupted builds': a mix would show.
        let first = run(base + ["--service-kernel", try tinyELF("kernel-old", mark: 7)], seconds: 120)
        XCTAssertEqual(first.status, 0, first.stderr)
        let old = snapshot(out)
        var caught = 0
        for sig in [SIGTERM, SIGINT, SIGTERM, SIGINT] {
            let pid = spawnWithDefaultSignals(Fixtures.execgateBinary, base + ["--service-kernel", CLIRound8Tests.staticExecutable])
            XCTAssertGreaterThan(pid, 0)
            let deadline = MonotonicClock.seconds() + 60
            var staged = false
            while MonotonicClock.seconds() < deadline {
                if names(dir + "/img").contains(where: { $0.hasPrefix(".out.tmp.") }) { staged = true; break }
                if Fixtures.exited(pid) != nil { break }
                usleep(2_000)
            }
            guard staged else { _ = Fixtures.wait(pid); continue }
            kill(pid, sig)
            let status = Fixtures.wait(pid)
            // Ended by the signal, or done (published) before it landed.
            XCTAssertTrue(status == 128 + sig || status == 0, "signal \(sig): status \(status)")
            if status == 128 + sig { caught += 1 } else { continue }
            XCTAssertEqual(names(dir + "/img"), ["out"], "signal \(sig): left beside the image")
            XCTAssertEqual(snapshot(out), old, "signal \(sig): the image changed")
        }
        XCTAssertGreaterThan(caught, 0, "no build was caught while staging")
    }
}
