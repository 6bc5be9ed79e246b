// SPDX-License-Identifier: Apache-2.0
//
// PID 1 of the service VM. Duties, in order:
//   1. stdio on /dev/console (the serial port the VMM logs);
//   2. mount /proc (normally done already by CExecGateSys' constructor, before the Swift runtime
//      needed it), /sys, /dev (devtmpfs);
//   3. read the kernel command line (GuestOptions);
//   4. load the vsock/virtio modules with finit_module, in the image's order;
//   5. reap children (PID 1 inherits every orphan);
//   6. serve the verifier on AF_VSOCK (serve) or run the in-guest self-test (test);
//   7. power off when the service stops, when the self-test ends, or on any fatal error.
//
// Security/robustness reasoning: if PID 1 ever exits the kernel panics, and a guest that hangs is
// a verifier the VMM waits on forever. So every failure path ends in `powerOff`, which tries
// POWER_OFF, then RESTART (QEMU runs with -no-reboot, so both end the VM), then halts; the
// kernel command line also carries `panic=-1` so even a crash ends the VM instead of hanging it.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CExecGateSys
import _ExecGateInternals

/// The console protocol the host side reads (one line each, prefix first):
///   EXECGATE-READY <address> kernel_ms=… init_ms=…   the verifier listens
///   EXECGATE-RESULT {json}                            one self-test result (test mode)
///   EXECGATE-DONE {json}                              self-test summary (test mode)
///   EXECGATE-FATAL <message>                          PID 1 gives up and powers off
public enum ConsoleProtocol {
    public static let ready = "EXECGATE-READY"
    public static let result = "EXECGATE-RESULT"
    public static let done = "EXECGATE-DONE"
    public static let fatal = "EXECGATE-FATAL"
}

/// Where the service VM's init hands over to the verifier. ExecGateHost fills these in (it links the
/// real service), so this target stays independent of it.
public struct GuestServiceHooks: Sendable {
    /// Runs the verifier listening on AF_VSOCK `port` until it shuts down. Must call `ready` once
    /// the socket listens (init prints the READY line then).
    public var runService: @Sendable (_ port: UInt32, _ ready: @escaping @Sendable () -> Void) async throws -> Void
    /// Acts as the VMM against vsock CID 1 (loopback) `port`: runs the request set and reports each result.
    public var runSelfTest: @Sendable (_ port: UInt32, _ report: @escaping @Sendable (SelfTestResult) -> Void) async throws -> Void

    /// `execgate.mode=capture`: the capture tool's guest half (set by the executable; nil = unsupported).
    public var runCapture: (@Sendable () async throws -> Void)? = nil

    public init(runService: @escaping @Sendable (UInt32, @escaping @Sendable () -> Void) async throws -> Void,
                runSelfTest: @escaping @Sendable (UInt32, @escaping @Sendable (SelfTestResult) -> Void) async throws -> Void) {
        self.runService = runService
        self.runSelfTest = runSelfTest
    }
}

public struct SelfTestResult: Sendable {
    public var name: String
    public var passed: Bool
    /// What was expected / seen, short.
    public var detail: String
    public var micros: Int
    /// Extra machine-readable fields.
    public var extra: [(String, _ExecGateInternals.JSON)]

    public init(name: String, passed: Bool, detail: String, micros: Int, extra: [(String, _ExecGateInternals.JSON)] = []) {
        self.name = name; self.passed = passed; self.detail = detail; self.micros = micros; self.extra = extra
    }

    public var json: String {
        let fields: [(String, _ExecGateInternals.JSON)] = [("name", .string(name)), ("passed", .bool(passed)),
                                                           ("detail", .string(detail)), ("micros", .int(Int64(micros)))]
        return _ExecGateInternals.JSON.object(fields + extra).serialized()
    }
}

public enum GuestInit {
    /// True when this process is PID 1 (the kernel started us as /init).
    public static var isPID1: Bool { getpid() == 1 }

    /// Runs PID 1's duties. Never returns: the guest powers off at the end.
    public static func run(hooks: GuestServiceHooks) async -> Never {
        setupConsole()
        let t0 = MonotonicClock.sinceBootMilliseconds()
        let started = Double(execgate_process_start_boottime_ns()) / 1e6
        log("execgate init \(t0 >= 0 ? String(format1(t0)) + " ms after kernel start" : "")\(started > 0 ? " (process start \(format1(started)) ms)" : "")")
        do {
            try mountFilesystems()
            let cmdline = (try? FS.readString("/proc/cmdline")) ?? ""
            let opts = try GuestOptions(commandLine: cmdline)
            for k in opts.unknownKeys { log("ignoring unknown option execgate.\(k)") }
            _ = execgate_reboot(EXECGATE_REBOOT_CAD_OFF)  // Ctrl-Alt-Del → SIGINT to us, not an instant reboot.
            startReaper()
            try loadModules(debug: opts.debug)
            let tInit = MonotonicClock.sinceBootMilliseconds()
            switch opts.mode {
            case .serve: try await serve(opts, hooks: hooks, kernelMs: t0, initDoneMs: tInit)
            case .test: await selfTest(opts, hooks: hooks, kernelMs: t0, initDoneMs: tInit)
            case .capture:
                guard let capture = hooks.runCapture else { throw ServiceVMError.badOption("execgate.mode=capture: not built in") }
                try await capture()
            }
            powerOff(reason: "service stopped")
        } catch {
            fatal("\(error)")
        }
    }

    // MARK: - Console

    /// Makes fds 0-2 point at /dev/console when the kernel could not open it for us.
    static func setupConsole() {
        if fcntl(1, F_GETFD) == -1 || fcntl(2, F_GETFD) == -1 {
            let fd = open("/dev/console", O_RDWR | O_NOCTTY)
            if fd >= 0 {
                for target: Int32 in 0...2 where fcntl(target, F_GETFD) == -1 { dup2(fd, target) }
                if fd > 2 { close(fd) }
            }
        }
        setvbuf(stdout, nil, _IOLBF, 0)
    }

    /// One console line, written with a single write(2) so lines from threads do not interleave.
    public static func log(_ message: String) {
        emit("execgate-init: [\(format1(MonotonicClock.sinceBootMilliseconds()))] \(message)")
    }

    public static func emit(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.append(0x0A)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }

    static func format1(_ ms: Double) -> String {
        let tenths = Int((ms * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    // MARK: - Filesystems and modules

    static func mountFilesystems() throws(ServiceVMError) {
        let early = execgate_early_proc_status()
        if early < 0 { log("early /proc mount failed: errno \(-early); retrying") }
        let mounts: [(String, String, String, UInt)] = [
            ("proc", "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)),
            ("sysfs", "/sys", "sysfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)),
            ("devtmpfs", "/dev", "devtmpfs", UInt(MS_NOSUID)),
        ]
        for (src, target, type, flags) in mounts {
            _ = mkdir(target, 0o755)
            if execgate_mount(src, target, type, flags, nil) != 0 && errno != EBUSY {
                throw .sys("cannot mount \(type) on", target)
            }
        }
    }

    /// Loads every `*.ko` under the image's module directory in name order (the image builder
    /// numbers them dependencies-first). EEXIST (built in / already loaded) is fine; anything else
    /// is fatal because without vsock the verifier is unreachable.
    static func loadModules(debug: Bool) throws(ServiceVMError) {
        let dir = ImageBuilder.GuestPaths.modules
        guard FS.isDirectory(dir) else { log("no \(dir); assuming vsock is built in"); return }
        let t0 = MonotonicClock.nanoseconds()
        var loaded = 0
        for name in try FS.list(dir) where name.hasSuffix(".ko") {
            let path = dir + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .sys("cannot open module", path) }
            let s = MonotonicClock.nanoseconds()
            let rc = execgate_finit_module(fd, "", 0)
            let err = errno
            close(fd)
            if rc != 0 && err != EEXIST { throw .system("finit_module failed for", path: path, errno: err) }
            loaded += 1
            if debug { log("module \(name) \(rc == 0 ? "loaded" : "already present") in \((MonotonicClock.nanoseconds() - s) / 1000) µs") }
        }
        log("loaded \(loaded) modules in \((MonotonicClock.nanoseconds() - t0) / 1_000_000) ms")
    }

    /// PID 1 inherits orphans; reap them so they do not pile up as zombies.
    static func startReaper() {
        startDetachedThread {
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, 0)
                if pid < 0 {
                    if errno == ECHILD { sleep(1) }
                    continue
                }
            }
        }
    }

    // MARK: - Modes

    static func serve(_ o: GuestOptions, hooks: GuestServiceHooks, kernelMs: Double, initDoneMs: Double) async throws {
        let port = o.port
        try await hooks.runService(port) {
            let now = MonotonicClock.sinceBootMilliseconds()
            emit("\(ConsoleProtocol.ready) vsock:any:\(port) kernel_ms=\(format1(kernelMs)) init_ms=\(format1(initDoneMs - kernelMs)) listen_ms=\(format1(now - initDoneMs))")
        }
    }

    static func selfTest(_ o: GuestOptions, hooks: GuestServiceHooks, kernelMs: Double, initDoneMs: Double) async {
        // Watchdog: whatever happens, the test guest powers off.
        let timeout = o.testTimeoutSeconds
        startDetachedThread {
            sleep(UInt32(timeout))
            fatal("self-test timed out after \(timeout) s")
        }
        let readyGate = Gate()
        let port = o.port
        let serviceTask = Task {
            do {
                try await hooks.runService(port) { readyGate.open() }
                log("service returned")
            } catch {
                fatal("service failed: \(error)")
            }
        }
        await readyGate.wait()
        let readyMs = MonotonicClock.sinceBootMilliseconds()
        emit("\(ConsoleProtocol.ready) vsock:any:\(port) kernel_ms=\(format1(kernelMs)) init_ms=\(format1(initDoneMs - kernelMs)) listen_ms=\(format1(readyMs - initDoneMs))")
        let counter = ResultCounter()
        do {
            try await hooks.runSelfTest(port) { r in
                counter.add(r.passed)
                emit("\(ConsoleProtocol.result) \(r.json)")
            }
        } catch {
            counter.add(false)
            emit("\(ConsoleProtocol.result) \(SelfTestResult(name: "self-test", passed: false, detail: "\(error)", micros: 0).json)")
        }
        let (passed, failed) = counter.counts
        let endMs = MonotonicClock.sinceBootMilliseconds()
        emit("\(ConsoleProtocol.done) " + ConsoleJSON.object([
            ("passed", "\(passed)"), ("failed", "\(failed)"),
            ("kernel_ms", format1(kernelMs)), ("init_ms", format1(initDoneMs - kernelMs)),
            ("ready_ms", format1(readyMs)), ("tests_ms", format1(endMs - readyMs)),
            ("mem_total_kb", "\(memTotalKB())"),
        ]))
        serviceTask.cancel()
    }

    static func memTotalKB() -> Int {
        guard let m = try? FS.readString("/proc/meminfo", limit: 1 << 16) else { return 0 }
        for line in m.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        return 0
    }

    // MARK: - The end

    public static func fatal(_ message: String) -> Never {
        emit("\(ConsoleProtocol.fatal) \(message)")
        powerOff(reason: "fatal error")
    }

    public static func powerOff(reason: String) -> Never {
        log("powering off (\(reason))")
        execgate_sync()
        _ = execgate_reboot(EXECGATE_REBOOT_POWER_OFF)
        _ = execgate_reboot(EXECGATE_REBOOT_RESTART)  // QEMU runs with -no-reboot: this ends the VM too.
        _ = execgate_reboot(EXECGATE_REBOOT_HALT)
        while true { pause() }  // Not reached on a real kernel; never return from PID 1.
    }
}

/// A one-shot gate: `wait` suspends until `open` is called (from any thread).
final class Gate: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    init() { pthread_mutex_init(&mutex, nil) }
    func open() {
        pthread_mutex_lock(&mutex)
        isOpen = true
        let w = waiters
        waiters = []
        pthread_mutex_unlock(&mutex)
        for c in w { c.resume() }
    }
    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            pthread_mutex_lock(&mutex)
            if isOpen { pthread_mutex_unlock(&mutex); c.resume(); return }
            waiters.append(c)
            pthread_mutex_unlock(&mutex)
        }
    }
}

final class ResultCounter: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var passed = 0, failed = 0
    init() { pthread_mutex_init(&mutex, nil) }
    func add(_ ok: Bool) {
        pthread_mutex_lock(&mutex)
        if ok { passed += 1 } else { failed += 1 }
        pthread_mutex_unlock(&mutex)
    }
    var counts: (Int, Int) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return (passed, failed)
    }
}

/// Minimal JSON rendering for console lines (no Foundation in the guest binary); escaping is the
/// project's one JSON writer (_ExecGateInternals).
public enum ConsoleJSON {
    public static func string(_ s: String) -> String {
        var out = ""
        _ExecGateInternals.JSON.escape(s, into: &out)
        return out
    }
    /// A decimal count read back from a state file (`vm.txt`'s `memory_mib`, `boot_ms`): the
    /// number when the text is one (digits only), else `null`. The file's text is never copied into
    /// the JSON as a value: `memory_mib=` gave `"memory_mib":,` and `boot_ms=1,"x":2` a member of its own.
    public static func count(_ text: String?) -> String {
        guard let text, let n = UInt64(text) else { return "null" }
        return "\(n)"
    }

    public static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\(string($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }
}
