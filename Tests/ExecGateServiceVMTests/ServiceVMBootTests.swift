// SPDX-License-Identifier: Apache-2.0
//
// Boots the real service VM image under QEMU (TCG here; KVM where it works). Needs `make image`;
// `make test` builds it and sets EXECGATE_VM_TEST=1, which turns a missing image into a failure.

import _ExecGateInternals
import ExecGateTestSupport
import Foundation
import XCTest
@testable import ExecGateServiceVM

final class ServiceVMBootTests: XCTestCase {
    var imageDir: String { Fixtures.packageRoot + "/Images/out" }

    func config(test: Bool, name: String) throws -> VMConfig {
        try requireVM(image: false)
        let paths: (kernel: String, initrd: String)
        do { paths = try VMConfig.imagePaths(imageDir: imageDir, test: test) } catch {
            try VMTestInputs.missing("\(error)")
        }
        let state = NSTemporaryDirectory() + "execgate-vmtest-\(getpid())/\(name)"
        var c = VMConfig(stateDir: state, kernel: paths.kernel, initrd: paths.initrd)
        c.name = "\(name)-\(getpid())"
        c.accel = Accelerator.detect()
        // The launcher's default RAM (VMConfig.memoryMiB): the boot tests check that it serves.
        c.readyTimeoutSeconds = 90
        return c
    }

    /// The in-guest self-test: PID 1 serves on AF_VSOCK and queries itself over vsock loopback (CID 1).
    func testSelfTestOverVsockLoopbackInGuest() throws {
        var c = try config(test: true, name: "selftest")
        c.mode = .test
        c.extraCmdline = ["execgate.timeout=100"]
        let run = try SelfTest.run(c, timeoutSeconds: 120)
        print(run.summaryText)
        for line in run.rawLines { print(line) }
        XCTAssertTrue(run.rawLines.contains { $0.hasPrefix(ConsoleProtocol.ready + " vsock:any:5000") }, run.console)
        XCTAssertFalse(run.results.isEmpty, "no EXECGATE-RESULT lines:\n\(run.console)")
        for r in run.results { XCTAssertTrue(r.passed, "\(r.name): \(r.detail)") }
        XCTAssertNotNil(run.summary, "no EXECGATE-DONE line")
        XCTAssertTrue(run.passed)
    }

    /// The launcher: start (ready), refuse a second start, status, stop, status of a dead VM.
    func testLauncherLifecycle() throws {
        let c = try config(test: false, name: "life")
        defer { _ = Launcher.stop(c) }
        let r = try Launcher.start(c, log: { print($0) })
        print("ready \(r.address) in \(r.bootMillis) ms: \(r.readyLine)")
        XCTAssertTrue(r.readyLine.hasPrefix(ConsoleProtocol.ready))
        XCTAssertEqual(r.address, "vsock:3:5000")
        XCTAssertThrowsError(try Launcher.start(c)) { e in
            guard case ServiceVMError.alreadyRunning = e else { return XCTFail("\(e)") }
        }
        var s = Launcher.status(c)
        XCTAssertTrue(s.running)
        XCTAssertTrue(s.ready)
        XCTAssertTrue(Launcher.stop(c))
        s = Launcher.status(c)
        XCTAssertFalse(s.running)
        XCTAssertTrue(s.consoleTail.contains(ConsoleProtocol.ready), s.consoleTail)
        XCTAssertFalse(Launcher.stop(c))
    }

    /// `execgate vm start` sent SIGHUP (its terminal closing) while the guest boots: it stops what
    /// it started (QEMU) and fails naming the signal. At SIGHUP's default action the command died
    /// and left QEMU booting, which `vm status` then called ready (round 15; SIGINT/SIGTERM were
    /// handled since round 12).
    func testSIGHUPWhileTheGuestBootsStopsTheVM() throws {
        var c = try config(test: false, name: "hup")
        defer { _ = Launcher.stop(c) }
        let root = NSTemporaryDirectory() + "execgate-vmtest-\(getpid())/hup-root"
        c.stateDir = root + "/" + c.name
        let out = root + ".out", err = root + ".err"
        try FS.mkdirs(root)
        let pid = Fixtures.spawnExecgate(["vm", "start", "--name", c.name, "--state-dir", root, "--image-dir", imageDir,
                                          "--accel", c.accel.accel.rawValue, "--timeout", "90"],
                                         stdoutPath: out, stderrPath: err)
        // QEMU is up (its pid file written by -daemonize) and the guest not yet ready.
        var qemu: Int32? = nil
        let deadline = MonotonicClock.seconds() + 60
        while qemu == nil && MonotonicClock.seconds() < deadline && Fixtures.exited(pid) == nil {
            if let t = try? FS.readString(c.pidFile, limit: 64), let p = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)) { qemu = p } else { usleep(5_000) }
        }
        guard let qemu else {
            kill(pid, SIGKILL); _ = Fixtures.wait(pid)
            return XCTFail("no QEMU pid file in 60 s: \(String(decoding: (try? Fixtures.readFile(err)) ?? [], as: UTF8.self))")
        }
        kill(pid, SIGHUP)
        guard let status = Fixtures.wait(pid, seconds: 60, pollMicroseconds: 10_000) else {
            kill(pid, SIGKILL); _ = Fixtures.wait(pid)
            return XCTFail("vm start still running 60 s after SIGHUP")
        }
        let stderr = String(decoding: (try? Fixtures.readFile(err)) ?? [], as: UTF8.self)
        let stdout = String(decoding: (try? Fixtures.readFile(out)) ?? [], as: UTF8.self)
        if stdout.contains("ready ") {
            // The guest was ready before the signal came (a fast host): nothing to stop then.
            print("vm start was ready before SIGHUP: \(stdout)")
            return
        }
        XCTAssertNotEqual(status, 128 + SIGHUP, "vm start died at SIGHUP's default action: \(stderr)")
        XCTAssertNotEqual(status, 0, stderr)
        XCTAssertTrue(stderr.contains("stopped by a signal"), stderr)
        var gone = false
        for _ in 0..<200 { if kill(qemu, 0) != 0 { gone = true; break }; usleep(50_000) }
        XCTAssertTrue(gone, "QEMU (pid \(qemu)) still running after vm start was stopped by SIGHUP")
        XCTAssertFalse(Launcher.status(c).running, "vm status says the VM runs")
    }

    /// A fatal error in init (here: a bad `execgate.port=0` on the command line) must print
    /// EXECGATE-FATAL and power the guest off; the launcher fails at once with the console tail.
    func testInitFatalErrorPowersOffAndIsReported() throws {
        var c = try config(test: false, name: "fatal")
        c.extraCmdline = ["execgate.port=0"]
        c.readyTimeoutSeconds = 60
        defer { _ = Launcher.stop(c) }
        XCTAssertThrowsError(try Launcher.start(c)) { e in
            switch e {
            case let ServiceVMError.guestDied(_, tail), let ServiceVMError.timeout(_, tail):
                XCTAssertTrue(tail.contains(ConsoleProtocol.fatal) && tail.contains("execgate.port=0"), tail)
            default: XCTFail("unexpected \(e)")
            }
        }
        XCTAssertFalse(Launcher.status(c).running)
    }
}
