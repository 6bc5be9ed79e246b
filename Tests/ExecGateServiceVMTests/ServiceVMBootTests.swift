// SPDX-License-Identifier: Apache-2.0
//
// Boots the real service VM image under QEMU (TCG here; KVM where it works). Needs `make image`;
// `make test` builds it and sets EXECGATE_VM_TEST=1, which turns a missing image into a failure.

import ExecGateTestSupport
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
