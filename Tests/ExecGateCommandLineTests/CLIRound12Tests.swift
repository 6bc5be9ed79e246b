// SPDX-License-Identifier: Apache-2.0
//
// CLI round 12: the messages a review from the docs found unhelpful (NIO's call names and bare
// errno numbers for a missing socket, a directory as the audit file, a port that cannot be
// bound), the admin port announced as taking pushes it refuses, and a module's capture directory
// copied out of its boot. No QEMU is booted here.

import _ExecGateInternals
import ExecGateTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound12Tests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
    }

    func run(_ args: [String], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args.map { Array($0.utf8) }, extraEnvironment: [], in: dir, seconds: seconds)
    }

    /// `policy show` and `policy audit` on a socket that is not there said
    /// `connect(descriptor:addr:size:): No such file or directory) (errno: 2)`.
    func testAdminCommandsSayWhyTheyCannotConnect() {
        for command in [["policy", "show"], ["policy", "audit"]] {
            let r = run(command + ["--connect", "unix:" + dir + "/none.sock"])
            XCTAssertEqual(r.status, 2, "\(command)")
            XCTAssertTrue(r.stderr.contains("cannot connect: No such file or directory (errno 2)"), r.stderr)
            XCTAssertFalse(r.stderr.contains("descriptor"), r.stderr)
        }
    }

    /// `serve --audit DIR` said `errno 21`; the words now come with the number.
    func testAnAuditFileThatIsADirectoryIsNamed() throws {
        try FileManager.default.createDirectory(atPath: dir + "/audit.d", withIntermediateDirectories: true)
        let r = run(["serve", "--listen", "unix:" + dir + "/vmm.sock", "--admin-listen", "unix:" + dir + "/admin.sock",
                     "--audit", dir + "/audit.d", "--log-level", "critical"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("Is a directory (errno 21)"), r.stderr)
    }

    /// An admin port without `--admin-cert` refuses every push (`admin.push-disabled`); `serve`
    /// announced it as "(policy push/show, audit-read)".
    func testAnAdminPortWithoutACertificateSaysPushIsDisabled() throws {
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + dir + "/vmm.sock", "--admin-listen", "unix:" + dir + "/admin.sock",
                                          "--log-level", "critical"], stdoutPath: dir + "/out", stderrPath: dir + "/err")
        defer { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
        var out = ""
        for _ in 0..<100 {
            out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
            if out.contains("admin port") { break }
            usleep(100_000)
        }
        XCTAssertTrue(out.contains("(policy show, audit-read; push disabled: no --admin-cert)"), out)
    }

    /// A module's capture directory copied out of its boot (`--claim mut/bridge`) said only
    /// `./load-order.txt: No such file or directory`.
    func testAModuleDirectoryOutsideItsBootIsNamed() throws {
        let copy = dir + "/mut/crc7"
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        try Fixtures.writeFile(copy + "/layout.json", Array("{}".utf8))  // a module directory is known by its layout.json
        let r = run(["request", "module", try Fixtures.module(named: "crc7.ko"), "--claim", copy, "--connect", "unix:" + dir + "/none.sock"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no capture's boot directory (no kallsyms.txt)") && r.stderr.contains("BOOT/MODULE"), r.stderr)
    }
}
