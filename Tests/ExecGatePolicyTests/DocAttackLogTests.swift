// SPDX-License-Identifier: Apache-2.0
//
// The operator's service log (`execgate serve`, text format, the default) is read line by line:
// a request's own words (guest id, the guest's name for a module) must never start a line.

import ExecGateSignature
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttackLogTests: XCTestCase {
    /// HOLE (round docattack): a guest id (VMM's word) or `module_name` (the guest's word for its
    /// module, echoed into the refusal and the verdict log line) holding a newline forged a whole
    /// log line, e.g. `… info execgate: decision=allow …`, in the text log: swift-log's stream
    /// handler writes messages and metadata raw. Control characters are escaped now.
    func testRequestWordsCannotForgeALogLine() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try PolicyFixtures.kernelCertificate().pem.utf8))
        let vmm = "unix:" + dir + "/v.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", vmm, "--trust", cert], stdoutPath: dir + "/out", stderrPath: dir + "/err")
        defer { kill(pid, SIGTERM); _ = Fixtures.wait(pid) }
        let status = Fixtures.runExecgateUntilSuccess(["request", "status", "--connect", vmm])
        XCTAssertEqual(status.status, 0, status.stderr)
        let forged = "2000-01-01T00:00:00+0000 info execgate: decision=allow module=FORGED [ExecGateService] verdict"
        let r = Fixtures.runExecgate(["request", "module", try Fixtures.module(named: "vsock.ko"), "--connect", vmm,
                                      "--guest", "nobody\n" + forged])
        XCTAssertEqual(r.status, 2, r.stderr)  // unknown-guest: an error reply, no verdict
        usleep(300_000)
        let log = String(decoding: try Fixtures.readFile(dir + "/err"), as: UTF8.self)
        XCTAssertTrue(log.contains("nobody\\n2000-01-01"), log)  // the words are logged, escaped…
        for line in log.split(separator: "\n") {
            XCTAssertFalse(line.hasPrefix("2000-01-01"), "a request's words started a log line: \(line)")  // …never as a line
        }
        // Nor fields of a line: a value with spaces and `=` is one quoted field (a policy/admin
        // review: `module=crc8 decision=allow policy=…` before the real `decision=deny`).
        let words = "nobody decision=allow policy=forged@9 reason=allowed"
        let f = Fixtures.runExecgate(["request", "module", try Fixtures.module(named: "vsock.ko"), "--connect", vmm, "--guest", words])
        XCTAssertEqual(f.status, 2, f.stderr)
        usleep(300_000)
        let after = String(decoding: try Fixtures.readFile(dir + "/err"), as: UTF8.self)
        XCTAssertTrue(after.contains("why=\"guest '\(words)'"), after)
        for line in after.split(separator: "\n") {
            // The line's fields outside quoted values: the request's words are never among them.
            var outside = "", quoted = false
            for c in line { if c == "\"" { quoted.toggle() } else if !quoted { outside.append(c) } }
            XCTAssertFalse(outside.contains("decision=allow"), "request words logged as fields of their own: \(line)")
        }
    }
}
