// SPDX-License-Identifier: Apache-2.0
//
// Attack: stop `serve` as soon as its socket appears (a supervisor's stop right after its start).
// Its SIGTERM handling used to be set up only after it had bound and printed where it listens, so
// a SIGTERM in between met the default action: the process died with its socket and `.lock` file
// left behind (11 of 20 tries with the release build). Rule: SIGTERM and SIGINT are caught before
// anything binds (`TerminationSignals`), so every stop from the first socket on is graceful: exit
// 0, socket and lock file removed. The same for `vsock-backend`, whose handler came right after its
// sockets (20 of 20 tries killed it with its files left). A first fix that made a DispatchSource
// for each signal ahead of the bind lost signals instead: libdispatch installs its handler only
// when its manager registers the source, and until then the SIG_IGN set before it discarded the
// signal (the backend ran on after its SIGTERM in 7 of 20 tries): the handler is now installed
// by sigaction before anything binds (CExecGateSignals `execgate_termination_fd`). SIGHUP and
// SIGQUIT are graceful stops too (round 15: their default action killed both).

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
        try stopAsSoonAsItBinds(dir: dir) { i in
            let sock = dir + "/s\(i).sock"
            return (["serve", "--listen", "unix:" + sock, "--trust", cert, "--signature-only"], [sock, sock + ".lock"])
        }
    }

    /// The same for `vsock-backend` (what `make stop` stops): its handler was installed right after
    /// it created its sockets, so a SIGTERM in between left both sockets and both lock files.
    func testBackendSIGTERMAsSoonAsItsSocketAppearsIsAGracefulStop() throws {
        let dir = Fixtures.temporaryDirectory()
        try stopAsSoonAsItBinds(dir: dir) { i in
            let vu = dir + "/vu\(i).sock", uds = dir + "/h\(i).sock"
            return (["vsock-backend", "--socket", vu, "--uds", uds, "--guest-cid", "3"], [vu, uds, vu + ".lock", uds + ".lock"])
        }
    }

    /// SIGHUP (the terminal or ssh session that started it closing) and SIGQUIT end a process by
    /// default as SIGTERM does: `serve` and `vsock-backend` died at it with their sockets and
    /// `.lock` files left behind (round 15; `vm start` left QEMU booting, ServiceVMBootTests). Each
    /// is a graceful stop now: exit 0, every file removed.
    func testSIGHUPAndSIGQUITAreGracefulStops() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        var outcomes: [String] = []
        for (i, sig) in [SIGHUP, SIGQUIT].enumerated() {
            let sock = dir + "/s\(i).sock", vu = dir + "/vu\(i).sock", uds = dir + "/h\(i).sock"
            for (args, files) in [(["serve", "--listen", "unix:" + sock, "--trust", cert, "--signature-only"], [sock, sock + ".lock"]),
                                  (["vsock-backend", "--socket", vu, "--uds", uds, "--guest-cid", "3"], [vu, uds, vu + ".lock", uds + ".lock"])] {
                let out = dir + "/out-\(args[0])-\(sig)", err = dir + "/err-\(args[0])-\(sig)"
                let pid = Fixtures.spawnExecgate(args, stdoutPath: out, stderrPath: err)
                let deadline = MonotonicClock.seconds() + 30
                while !files.allSatisfy({ access($0, F_OK) == 0 }) && MonotonicClock.seconds() < deadline && Fixtures.exited(pid) == nil { usleep(10_000) }
                XCTAssertTrue(files.allSatisfy { access($0, F_OK) == 0 }, "\(args[0]) made not all of \(files): \(String(decoding: (try? Fixtures.readFile(err)) ?? [], as: UTF8.self))")
                kill(pid, sig)
                guard let status = Fixtures.wait(pid, seconds: 30, pollMicroseconds: 1000) else {
                    XCTFail("\(args[0]) still running 30 s after signal \(sig)")
                    kill(pid, SIGKILL); _ = Fixtures.wait(pid)
                    continue
                }
                let left = files.filter { access($0, F_OK) == 0 }
                outcomes.append("\(args[0]) \(sig): \(status)\(left.isEmpty ? "" : " left \(left)")")
                XCTAssertEqual(status, 0, "\(args[0]) ended by signal \(sig) with status \(status) (128 + signal: the default action)")
                XCTAssertEqual(left, [], "\(args[0]) left files after signal \(sig)")
            }
        }
        print("SIGHUP/SIGQUIT: \(outcomes)")
    }

    /// 20 times: start `execgate ARGS`, send SIGTERM the moment the first of `files` exists, and
    /// require exit 0 with none of `files` left.
    private func stopAsSoonAsItBinds(dir: String, _ command: (Int) -> (args: [String], files: [String])) throws {
        var outcomes: [String] = []
        for i in 0..<20 {
            let (args, files) = command(i)
            let sock = files[0]
            let pid = Fixtures.spawnExecgate(args, stdoutPath: dir + "/out\(i)", stderrPath: dir + "/err\(i)")
            XCTAssertGreaterThan(pid, 0)
            let deadline = MonotonicClock.seconds() + 30
            var early: Int32? = nil
            while access(sock, F_OK) != 0 && MonotonicClock.seconds() < deadline {
                early = Fixtures.exited(pid)
                if early != nil { break }
            }
            XCTAssertNil(early, "\(args[0]) exited before binding: \(String(decoding: (try? Fixtures.readFile(dir + "/err\(i)")) ?? [], as: UTF8.self))")
            if early != nil { continue }

            kill(pid, SIGTERM)
            guard let status = Fixtures.wait(pid, seconds: 30, pollMicroseconds: 1000) else {
                XCTFail("\(args[0]) still running 30 s after SIGTERM")
                outcomes.append("hung")
                continue
            }
            let left: [String] = files.filter { access($0, F_OK) == 0 }
            outcomes.append("\(status)\(left.isEmpty ? "" : " left \(left)")")
        }
        print("early-stop: \(command(0).args[0]): SIGTERM as the socket appeared, 20 tries: \(outcomes)")
        XCTAssertEqual(outcomes.filter { $0 != "0" }, [], "not every early SIGTERM was a graceful stop")
    }
}
