// SPDX-License-Identifier: Apache-2.0
//
// Attack: stop `serve` as soon as its socket appears (a supervisor's stop right after its start).
// Its SIGTERM handling used to be set up only after it had bound and printed where it listens, so
// a SIGTERM in between met the default action: the process died with its socket and `.lock` file
// left behind (11 of 20 tries with the release build). Rule: SIGTERM and SIGINT are caught before
// anything binds (`TerminationSignals`), so every stop from the first socket on is graceful: exit
// 0, socket and lock file removed.

import _ExecGateInternals
import ExecGateTestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ServeSignalTests: XCTestCase {
    func testSIGTERMAsSoonAsTheSocketAppearsIsAGracefulStop() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        var outcomes: [String] = []
        for i in 0..<20 {
            let sock = dir + "/s\(i).sock"
            let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + sock, "--trust", cert, "--signature-only"],
                                             stdoutPath: dir + "/out\(i)", stderrPath: dir + "/err\(i)")
            XCTAssertGreaterThan(pid, 0)
            let deadline = MonotonicClock.seconds() + 30
            var st: Int32 = 0
            var exited = false
            while access(sock, F_OK) != 0 && MonotonicClock.seconds() < deadline {
                if waitpid(pid, &st, WNOHANG) == pid { exited = true; break }
            }
            XCTAssertFalse(exited, "serve exited before binding: \(String(decoding: (try? Fixtures.readFile(dir + "/err\(i)")) ?? [], as: UTF8.self))")
            if exited { continue }
            kill(pid, SIGTERM)
            while waitpid(pid, &st, WNOHANG) != pid {
                if MonotonicClock.seconds() > deadline { kill(pid, SIGKILL); _ = Fixtures.wait(pid); XCTFail("serve still running 30 s after SIGTERM"); break }
                usleep(1000)
            }
            let status = st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
            let lock: String = sock + ".lock"
            let left: [String] = [sock, lock].filter { access($0, F_OK) == 0 }
            outcomes.append("\(status)\(left.isEmpty ? "" : " left \(left)")")
        }
        print("serve-signal: SIGTERM as the socket appeared, 20 tries: \(outcomes)")
        XCTAssertEqual(outcomes.filter { $0 != "0" }, [], "not every early SIGTERM was a graceful stop")
    }
}
