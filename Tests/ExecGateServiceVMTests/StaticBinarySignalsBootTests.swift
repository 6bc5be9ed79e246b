// SPDX-License-Identifier: Apache-2.0
//
// The static execgate (`make image`'s, the one `make run` starts as the vsock backend and the guest
// runs as /init) must take the signals the dynamic build takes. It parks its main thread instead of
// letting dispatch_main unwind it (CExecGateSys.c, execgate_park_main_thread); every other thread of
// the process (the global executor's, NIO's) blocks every signal, so that parked thread is the only
// one a process-directed signal can be delivered to. Parked with signals blocked (as it was until
// 2026-12-04), SIGTERM and SIGINT stayed pending for ever: `make stop` waited 5 s and SIGKILLed the
// backend, whose vhost-user socket, hybrid socket and both .lock files stayed behind, and Ctrl-C did
// not stop a host command. Guest phase (the class name ends in BootTests): it needs `make image`'s
// static binary; it boots nothing.

import ExecGateTestSupport
import Foundation
import XCTest
@testable import ExecGateServiceVM

final class StaticBinarySignalsBootTests: XCTestCase {
    /// Waits (bounded) for `pid` to exit; a process still running after `seconds` is SIGKILLed and
    /// the test fails naming `what`.
    private func exitStatus(_ pid: pid_t, _ what: String, seconds: Int = 15) -> Int32? {
        if let s = Subprocess.wait(pid, timeoutMillis: seconds * 1000) { return s }
        kill(pid, SIGKILL)
        _ = Subprocess.wait(pid, timeoutMillis: 5000)
        XCTFail("\(what): still running \(seconds) s after the signal (the signal was never delivered)")
        return nil
    }

    private func waitForFiles(_ paths: [String], pid: pid_t, log: String) throws {
        for _ in 0..<500 where !paths.allSatisfy({ FS.exists($0) }) {
            if let s = Subprocess.wait(pid, timeoutMillis: 0) {
                return XCTFail("exited with \(s) before creating \(paths): \(FS.tail(log))")
            }
            usleep(20_000)
        }
        for p in paths { XCTAssertTrue(FS.exists(p), "\(p) not created in 10 s: \(FS.tail(log))") }
    }

    /// `vsock-backend` stops on SIGTERM (what `make stop` sends), SIGINT (Ctrl-C), SIGHUP (its terminal
    /// closing) and SIGQUIT with status 0,
    /// and removes what it created: both sockets and both .lock files (docs/vsock.md).
    func testStaticVsockBackendStopsOnSIGTERMAndSIGINTAndRemovesItsSockets() throws {
        let binary = try requireVM(image: false).staticExecgate
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT] {
            let dir = Fixtures.temporaryDirectory()
            let vu = dir + "/vu.sock", uds = dir + "/h.sock", log = dir + "/backend.log"
            let pid = try Subprocess.spawn([binary, "vsock-backend", "--socket", vu, "--uds", uds, "--guest-cid", "3"], outputPath: log)
            try waitForFiles([vu, uds, vu + ".lock", uds + ".lock"], pid: pid, log: log)
            // Its stop handlers are installed before it says where it listens (the files come first).
            for _ in 0..<500 where !FS.tail(log).contains("vsock-backend: vhost-user on") { usleep(20_000) }
            XCTAssertTrue(FS.tail(log).contains("vsock-backend: vhost-user on"), FS.tail(log))
            kill(pid, sig)
            guard let status = exitStatus(pid, "vsock-backend after signal \(sig)") else { continue }
            XCTAssertEqual(status, 0, "vsock-backend ended by signal \(sig) with \(status): \(FS.tail(log))")
            for p in [vu, uds, vu + ".lock", uds + ".lock"] {
                XCTAssertFalse(FS.exists(p), "signal \(sig): \(p) left behind")
            }
        }
    }

    /// `serve` stops gracefully on SIGTERM (exit 0, "stopped" logged, its socket and .lock removed).
    func testStaticServeStopsGracefullyOnSIGTERM() throws {
        let binary = try requireVM(image: false).staticExecgate
        let dir = Fixtures.temporaryDirectory()
        let keys = Fixtures.run(binary, ["keys", "generate", "--out", dir + "/k", "--cn", "signal test"])
        XCTAssertEqual(keys.status, 0, keys.stderr)
        let sock = dir + "/s.sock", log = dir + "/serve.log"
        let pid = try Subprocess.spawn([binary, "serve", "--listen", "unix:" + sock, "--trust", dir + "/k/cert.pem",
                                        "--log-format", "json"], outputPath: log)
        try waitForFiles([sock, sock + ".lock"], pid: pid, log: log)
        let status = Fixtures.run(binary, ["request", "status", "--connect", "unix:" + sock, "--json"])
        XCTAssertEqual(status.status, 0, status.stderr)
        kill(pid, SIGTERM)
        guard let rc = exitStatus(pid, "serve after SIGTERM") else { return }
        XCTAssertEqual(rc, 0, FS.tail(log))
        XCTAssertTrue(FS.tail(log).contains("\"msg\":\"stopped\""), FS.tail(log))
        XCTAssertFalse(FS.exists(sock), "serve left its socket")
        XCTAssertFalse(FS.exists(sock + ".lock"), "serve left its .lock file")
    }

    /// A host command with no handler of its own is ended by Ctrl-C at SIGINT's default action
    /// (status 128 + 2), as any process: here `explain --mutate 100000` on the committed 9-module
    /// corpus (minutes of work: 2.6 min with the host build).
    func testStaticHostCommandEndsOnSIGINT() throws {
        let binary = try requireVM(image: false).staticExecgate
        let dir = Fixtures.temporaryDirectory()
        let log = dir + "/explain.log"
        let capture = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        let pid = try Subprocess.spawn([binary, "explain", capture, "--mutate", "100000"], outputPath: log)
        usleep(1_500_000)
        XCTAssertNil(Subprocess.wait(pid, timeoutMillis: 0), "explain --mutate 100000 ended within 1.5 s: \(FS.tail(log))")
        kill(pid, SIGINT)
        guard let rc = exitStatus(pid, "explain after SIGINT") else { return }
        XCTAssertEqual(rc, 128 + SIGINT, FS.tail(log))
    }
}
