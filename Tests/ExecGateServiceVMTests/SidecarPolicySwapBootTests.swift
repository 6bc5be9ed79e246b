// SPDX-License-Identifier: Apache-2.0
//
// The sidecar's policy swap, end to end, the way README ("Swap the policy") tells an operator to do
// it — with the real CLI, the real service VM under QEMU, and the vhost-user-vsock backend between
// them (the deployment `make run` starts on a host without /dev/vhost-vsock):
//
//   1. an admin key is generated on the host; only its certificate goes into a fresh image
//      (`image build --admin-cert`), so the guest opens its admin port on VMM port + 1;
//   2. `request module vsock.ko --claim none --connect hybrid:…:5000` → deny under the built-in
//      policy (v1), which fails closed: no guest, no bytes, nothing judged;
//   3. `policy sign` (v2: signature-only opt-in, denies vsock by name) → `policy push --connect
//      hybrid:…:5001` → activated;
//   4. the same request → deny by name, and the verdict names policy v2; crc7 → allow, signature only;
//   5. `policy show --connect hybrid:…:5001` reports v2;
//   6. attacks on the admin port: a bundle signed by another key, and a replay of v2, are refused
//      and the policy in force stays v2.
//
// Needs the static execgate (`make image`), QEMU and the debug execgate (`swift build`); the class
// name ends in BootTests, so scripts/run-tests.sh runs it in the guest-booting phase, where a
// missing input is a failure (requireVM()), never a skip.

import ExecGateTestSupport
import XCTest
@testable import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#endif

final class SidecarPolicySwapBootTests: XCTestCase {
    /// Runs the debug execgate; fails the test with its stderr when the exit status is not `expect`.
    @discardableResult
    func execgate(_ args: [String], expect: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) -> ProcessResult {
        let r = Fixtures.runExecgate(args)
        XCTAssertEqual(r.status, expect, "execgate \(args.joined(separator: " ")):\n\(r.stdout)\n\(r.stderr)", file: file, line: line)
        return r
    }

    func json(_ r: ProcessResult, file: StaticString = #filePath, line: UInt = #line) throws -> [String: FlatJSON.Value] {
        try XCTUnwrap(FlatJSON.parseObject(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "not one JSON object: \(r.stdout)",
                      file: file, line: line)
    }

    func testPolicySwapOverHybridAdminPort() throws {
        // This test builds its own image (with its own admin certificate): Images/out is not needed.
        let staticBinary = try requireVM(image: false).staticExecgate
        try VMTestInputs.requireFile(Fixtures.execgateBinary, "execgate binary", make: "swift build")
        let kernelPackage = try Fixtures.kernelDir()
        let vsockModule = try Fixtures.module(named: "vsock.ko")

        // Short paths: sockaddr_un holds 107 bytes.
        let root = "/tmp/egp-\(getpid())"
        defer { _ = Fixtures.run("/bin/rm", ["-rf", root]) }
        let admin = root + "/admin", other = root + "/other", image = root + "/image"

        // 1. The operator's admin key on the host; its certificate into a fresh image.
        execgate(["keys", "generate", "--out", admin, "--bits", "2048", "--cn", "test admin"])
        execgate(["keys", "generate", "--out", other, "--bits", "2048", "--cn", "not the admin"])
        var st = stat()
        XCTAssertEqual(stat(admin + "/key.pem", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "the admin key must be private to its owner")
        execgate(["image", "build", "--init", staticBinary, "--kernel-package", kernelPackage, "--out", image,
                  "--admin-cert", admin + "/cert.pem", "--no-test-image"])

        var c = VMConfig(stateDir: root + "/vm", kernel: "", initrd: image + "/" + ImageBuilder.initramfsName)
        c.kernel = try VMConfig.imagePaths(imageDir: image, test: false).kernel
        c.name = "policy-swap-\(getpid())"
        c.accel = Accelerator.detect()
        c.readyTimeoutSeconds = 90
        c.vsockBackendCommand = [Fixtures.execgateBinary, "vsock-backend"]
        c.vhostVsockDevice = "/nonexistent/vhost-vsock"  // Always the vhost-user path, even where vhost-vsock exists.
        defer { _ = Launcher.stop(c); VsockBackendProcess.stop(c) }
        let started = try Launcher.start(c, log: { print($0) })
        print("ready \(started.address) in \(started.bootMillis) ms; admin \(started.adminAddress ?? "none")")
        XCTAssertEqual(started.address, "hybrid:\(c.hybridSocket):5000")
        let adminAddress = try XCTUnwrap(started.adminAddress, "an image with an admin certificate must report its admin port")
        XCTAssertEqual(adminAddress, "hybrid:\(c.hybridSocket):5001")
        let console = FS.tail(c.consoleLog, lines: 200)
        XCTAssertTrue(console.contains("admin port vsock 5001"), console)

        // 2. Denied under the built-in policy: it requires the end state, and no guest sent any.
        let v1 = try json(execgate(["request", "module", vsockModule, "--claim", "none", "--connect", started.address, "--json"], expect: 1))
        XCTAssertEqual(v1["decision"], .string("deny"))
        XCTAssertEqual(v1["reason"], .string("policy.end-state-unavailable"))
        XCTAssertEqual(v1["policy_version"], .number(1))

        // 3. v2 denies the module by name; signed with the admin key, pushed over the hybrid admin port.
        let policy = root + "/v2.policy"
        try Fixtures.writeFile(policy, Array("""
            execgate-policy 1
            id sidecar-v2
            version 2
            mode enforce
            trust kernel-builtin
            minimum-digest sha256
            end-state signature-only
            audit-overflow block
            deny module-name vsock
            modules allow
            text-patches allow
            ebpf-jit deny

            """.utf8))
        execgate(["policy", "sign", policy, "--key", admin + "/key.pem", "--cert", admin + "/cert.pem", "-o", root + "/v2.bundle"])
        execgate(["policy", "sign", policy, "--key", other + "/key.pem", "--cert", other + "/cert.pem", "-o", root + "/forged.bundle"])
        let pushed = execgate(["policy", "push", root + "/v2.bundle", "--connect", adminAddress])
        XCTAssertTrue(pushed.stdout.contains("activated sidecar-v2 v2"), pushed.stdout)

        // 4. The same request is now denied, and the verdict says which policy decided.
        let v2 = try json(execgate(["request", "module", vsockModule, "--claim", "none", "--connect", started.address, "--json"], expect: 1))
        XCTAssertEqual(v2["decision"], .string("deny"))
        XCTAssertEqual(v2["reason"], .string("deny.module-name"))
        XCTAssertEqual(v2["policy_id"], .string("sidecar-v2"))
        XCTAssertEqual(v2["policy_version"], .number(2))
        // Another module is allowed, on its signature only, as v2 opts in: the swap changed exactly what v2 says.
        let crc = try json(execgate(["request", "module", try Fixtures.module(named: "crc7.ko"), "--claim", "none", "--connect", started.address, "--json"]))
        XCTAssertEqual(crc["decision"], .string("allow"))
        XCTAssertEqual(crc["signature_only"], .bool(true))
        XCTAssertEqual(crc["policy_version"], .number(2))

        // 5. policy show over the hybrid admin port.
        let shown = try json(execgate(["policy", "show", "--connect", adminAddress, "--json"]))
        XCTAssertEqual(shown["policy_id"], .string("sidecar-v2"))
        XCTAssertEqual(shown["policy_version"], .number(2))

        // 6. Reaching the admin port is not enough: a bundle signed by another key, and a replay of
        //    the version in force, are refused (exit 1), and v2 stays.
        let forged = execgate(["policy", "push", root + "/forged.bundle", "--connect", adminAddress], expect: 1)
        print("forged bundle: \(forged.stderr)")
        let replay = execgate(["policy", "push", root + "/v2.bundle", "--connect", adminAddress], expect: 1)
        print("replayed bundle: \(replay.stderr)")
        let after = try json(execgate(["policy", "show", "--connect", adminAddress, "--json"]))
        XCTAssertEqual(after["policy_version"], .number(2))
        XCTAssertEqual(after["policy_id"], .string("sidecar-v2"))
    }
}
