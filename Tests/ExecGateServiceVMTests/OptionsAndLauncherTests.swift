// SPDX-License-Identifier: Apache-2.0
import XCTest
import ExecGateTestSupport
@testable import ExecGateServiceVM

final class GuestOptionsTests: XCTestCase {
    /// A state directory is spelled one way (round 12: `/run/x/` and `/run/x` named one VM two
    /// ways, and `vm stop` with the other spelling lost it).
    func testCanonicalPaths() {
        XCTAssertEqual(FS.canonical("/tmp/r/st/"), "/tmp/r/st")
        XCTAssertEqual(FS.canonical("/tmp//r/./st/../x/"), "/tmp/r/x")
        XCTAssertEqual(FS.canonical("/../.."), "/")
        XCTAssertEqual(FS.canonical("rel/./a"), FS.canonical(FS.absolute("rel") + "/a"))
        XCTAssertTrue(FS.canonical("rel").hasPrefix("/") && !FS.canonical("rel").hasSuffix("/"))
    }

    func testDefaults() throws {
        let o = try GuestOptions(commandLine: "console=ttyS0 quiet panic=-1\n")
        XCTAssertEqual(o.mode, .serve)
        XCTAssertEqual(o.port, 5000)
    }

    func testParsesExecgateKeys() throws {
        let o = try GuestOptions(commandLine: "quiet execgate.mode=test execgate.port=6000 execgate.timeout=30 execgate.debug=1 execgate.colour=blue")
        XCTAssertEqual(o.mode, .test)
        XCTAssertEqual(o.port, 6000)
        XCTAssertEqual(o.testTimeoutSeconds, 30)
        XCTAssertTrue(o.debug)
        XCTAssertEqual(o.unknownKeys, ["colour"])
    }

    func testRejectsBadValues() {
        for bad in ["execgate.mode=shell", "execgate.port=0", "execgate.port=-1", "execgate.port=99999999999",
                    "execgate.port=4294967295", "execgate.timeout=0", "execgate.timeout=x"] {
            XCTAssertThrowsError(try GuestOptions(commandLine: "quiet \(bad)"), bad)
        }
    }

    func testQuotedWords() {
        XCTAssertEqual(GuestOptions.words(#"a "b c" d="e f""#), ["a", "b c", "d=e f"])
    }
}

final class LauncherTests: XCTestCase {
    func config() -> VMConfig {
        var c = VMConfig(stateDir: "/tmp/eg/vm", kernel: "/img/vmlinux", initrd: "/img/initramfs.cpio.gz")
        c.name = "unit"
        c.cid = 7
        c.memoryMiB = 128
        c.tscKHz = 2_445_408
        return c
    }

    func testQEMUArgumentsTCG() {
        var c = config()
        c.accel = .init(accel: .tcg, reason: "test")
        let a = c.qemuArguments(qemuPath: "/usr/bin/qemu-system-x86_64", vhost: false)
        XCTAssertEqual(a.first, "/usr/bin/qemu-system-x86_64")
        XCTAssertTrue(a.containsSequence(["-accel", "tcg", "-cpu", "max,-erms"]), "TCG emulates rep movsb byte by byte: the guest must not pick it")
        XCTAssertTrue(a.containsSequence(["-M", "microvm"]))
        XCTAssertTrue(a.containsSequence(["-m", "128M"]))
        XCTAssertTrue(a.containsSequence(["-kernel", "/img/vmlinux", "-initrd", "/img/initramfs.cpio.gz"]))
        XCTAssertTrue(a.contains("-no-reboot"), "a guest that panics or reboots must end the VM")
        XCTAssertTrue(a.containsSequence(["-serial", "file:/tmp/eg/vm/console.log"]))
        XCTAssertFalse(a.joined(separator: " ").contains("vhost"))
        let append = a[a.firstIndex(of: "-append")! + 1]
        XCTAssertTrue(append.contains("execgate.mode=serve"))
        XCTAssertTrue(append.contains("execgate.port=5000"))
        XCTAssertTrue(append.contains("panic=-1"))
        XCTAssertTrue(append.contains("random.trust_cpu=on"))
        XCTAssertTrue(append.contains("tsc_early_khz=2445408 lpj=9781632 tsc=reliable"), append)
        XCTAssertTrue(a.joined(separator: " ").contains("execgate-vm-unit"))
    }

    func testHostTSC() {
        XCTAssertEqual(VMConfig.hostTSCKHz(cpuinfo: "processor\t: 0\ncpu MHz\t\t: 2445.400\n"), 2_445_400)
        XCTAssertNil(VMConfig.hostTSCKHz(cpuinfo: "cpu MHz : lots\n"))
        XCTAssertNil(VMConfig.hostTSCKHz(cpuinfo: ""))
    }

    func testQEMUArgumentsKVMAndVhost() {
        var c = config()
        c.accel = .init(accel: .kvm, reason: "test")
        XCTAssertFalse(c.kernelCmdline.contains("tsc_early_khz"), "KVM guests use kvmclock")
        var a = c.qemuArguments(qemuPath: "q", vhost: true)
        XCTAssertTrue(a.containsSequence(["-accel", "kvm", "-cpu", "host"]))
        XCTAssertTrue(a.containsSequence(["-device", "vhost-vsock-device,guest-cid=7"]))
        c.machine = .pc
        a = c.qemuArguments(qemuPath: "q", vhost: true)
        XCTAssertTrue(a.containsSequence(["-device", "vhost-vsock-pci,guest-cid=7"]))
        XCTAssertTrue(a.containsSequence(["-M", "pc"]))
    }

    func testAcceleratorDetection() throws {
        var f = Accelerator.HostFacts()
        f.kvmDevice = "/nonexistent/kvm"
        XCTAssertEqual(Accelerator.detect(f).accel, .tcg)
        // A file that is not a KVM device: the API-version ioctl fails → TCG.
        let tmp = NSTemporaryDirectory() + "eg-notkvm-\(getpid())"
        _ = FileManager.default.createFile(atPath: tmp, contents: Data())
        defer { unlink(tmp) }
        f.kvmDevice = tmp
        XCTAssertEqual(Accelerator.detect(f).accel, .tcg)
        XCTAssertThrowsError(try Accelerator.choose("hvf"))
        XCTAssertEqual(try Accelerator.choose("tcg").accel, .tcg)
    }

    func testAcceleratorOnThisHost() {
        // Whatever the host: KVM only with a usable /dev/kvm that is not the paravirtual kvm_pvm
        // (which cannot boot a Linux guest), TCG otherwise, and the reason says which.
        let d = Accelerator.detect()
        let pvm = FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm")
        let kvmUsable = access("/dev/kvm", R_OK | W_OK) == 0
        if pvm || !kvmUsable {
            XCTAssertEqual(d.accel, .tcg, d.reason)
        } else {
            XCTAssertEqual(d.accel, .kvm, d.reason)
        }
        XCTAssertFalse(d.reason.isEmpty)
        print("accelerator on this host: \(d.accel.rawValue) (\(d.reason))")
    }

    func testStatusOfNeverStartedVM() {
        var c = config()
        c.stateDir = NSTemporaryDirectory() + "eg-status-\(getpid())"
        let s = Launcher.status(c)
        XCTAssertFalse(s.running)
        XCTAssertNotNil(FlatJSON.parseObject(s.json), "status JSON must parse")
        XCTAssertFalse(Launcher.stop(c))
    }

    /// A state file that cannot be read is refused with the system's reason, never taken as
    /// absent ("was not running", exit 0, for a VM running in a state directory this user could
    /// not read, round 11). Here the state directory is a regular file (ENOTDIR; as root, an
    /// unreadable directory is still read); an absent file is still nothing to read.
    func testAnUnreadableStateFileIsRefusedNotTakenAsAbsent() throws {
        let dir = Fixtures.temporaryDirectory()
        var c = config()
        c.stateDir = dir + "/state"
        XCTAssertNoThrow(try Launcher.checkStateFiles([c.pidFile, c.infoFile]), "absent")
        try Fixtures.writeFile(c.stateDir, [0x31])
        XCTAssertThrowsError(try Launcher.checkStateFiles([c.pidFile])) { e in
            XCTAssertTrue("\(e)".contains("cannot read VM state file"), "\(e)")
            XCTAssertTrue("\(e)".contains("qemu.pid"), "\(e)")
            // Bad input (vm status and vm stop exit 2), not a failure of the operation (exit 1).
            if case .badInput? = e as? ServiceVMError {} else { XCTFail("not bad input: \(e)") }
        }
    }

    func testMissingQEMUMessage() {
        XCTAssertThrowsError(try Launcher.findQEMU("qemu-system-none-such")) { e in
            XCTAssertTrue("\(e)".contains("apt-get install qemu-system-x86"), "\(e)")
        }
    }

    func testMissingImageMessage() {
        XCTAssertThrowsError(try VMConfig.imagePaths(imageDir: "/nonexistent", test: false)) { e in
            XCTAssertTrue("\(e)".contains("make image"), "\(e)")
        }
    }
}

final class FlatJSONTests: XCTestCase {
    func testParsesResultLine() {
        let r = SelfTestResult(name: "a \"b\"", passed: true, detail: "x\ny", micros: 12, extra: [("mean_us", .int(3))])
        let run = SelfTestRun.parse(console: "noise\r\n[    1.0] kernel\nEXECGATE-RESULT \(r.json)\r\nEXECGATE-DONE {\"passed\":1,\"failed\":0}\n")
        XCTAssertEqual(run.results.count, 1)
        XCTAssertEqual(run.results[0].name, "a \"b\"")
        XCTAssertEqual(run.results[0].detail, "x\ny")
        XCTAssertEqual(run.results[0].fields["mean_us"], FlatJSON.Value.number(3))
        XCTAssertTrue(run.passed)
    }

    func testMalformedLinesNeverCrash() {
        for bad in ["{", "{\"a\":", "{\"a\":tru}", "[[[[", String(repeating: "{\"a\":", count: 100), "{\"a\":\"\\u12\"}", "{} x"] {
            XCTAssertNil(FlatJSON.parseObject(bad), bad)
        }
        let run = SelfTestRun.parse(console: "EXECGATE-RESULT {garbage\n")
        XCTAssertEqual(run.results.count, 1)
        XCTAssertFalse(run.results[0].passed)
        XCTAssertFalse(run.passed)
    }
}

extension Array where Element: Equatable {
    func containsSequence(_ s: [Element]) -> Bool {
        guard s.count <= count else { return false }
        return (0...(count - s.count)).contains { Array(self[$0..<$0 + s.count]) == s }
    }
}

/// procfs files report st_size 0: PID 1 (/proc/cmdline) and the launcher (/proc/<pid>/cmdline,
/// /proc/cpuinfo) must still read them to the end. A reader that trusts st_size returns nothing,
/// and then init ignores its mode and the launcher thinks a running QEMU died.
final class FileSystemTests: XCTestCase {
    func testReadsProcFilesToTheEnd() throws {
        let cmdline = try FS.read("/proc/self/cmdline", limit: 1 << 20)
        XCTAssertFalse(cmdline.isEmpty)
        XCTAssertFalse(try FS.readString("/proc/cpuinfo", limit: 4 << 20).isEmpty)
        let me = String(decoding: cmdline.prefix { $0 != 0 }, as: UTF8.self)
        XCTAssertTrue(Subprocess.isAlive(getpid(), argument: me), "the launcher must recognise a live process by its command line")
        XCTAssertFalse(Subprocess.isAlive(getpid(), argument: "no-such-marker-\(getpid())"))
        // An argument matches whole, never as a part: VM 'a' is not VM 'ab' (a stale pid file of
        // 'a' naming 'ab''s QEMU made `vm stop --name a` kill it, round 11).
        XCTAssertFalse(Subprocess.isAlive(getpid(), argument: String(me.dropLast())))
        XCTAssertFalse(Subprocess.isAlive(getpid(), argument: String(me.dropFirst())))
    }

    func testReadRefusesMoreThanTheLimit() {
        XCTAssertThrowsError(try FS.read("/proc/self/maps", limit: 16)) { e in
            guard case ServiceVMError.badInput = e else { return XCTFail("\(e)") }
        }
    }
}
