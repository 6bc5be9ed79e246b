// SPDX-License-Identifier: Apache-2.0
//
// The host side: starts the service VM under QEMU, waits until the verifier is ready, stops it,
// reports its status. One VM per name; its state directory holds
//   qemu.pid      written (and locked) by QEMU itself
//   vm.txt        what was started (key=value)
//   console.log   the guest's serial console
//   qemu.log      QEMU's own stderr
//
// Reachability: with the host's /dev/vhost-vsock the guest gets `vhost-vsock-*,guest-cid=N` and the
// VMM reaches the verifier at vsock:N:PORT. Without it (this build host) and with
// `vsockBackendCommand` set, the launcher starts `execgate vsock-backend` and gives the guest a
// vhost-user-vsock device: the address is hybrid:<state>/vsock.sock:PORT (VhostUserVsock.swift,
// docs/vsock.md). With neither, the VM boots anyway and we say plainly that the host cannot reach it.

#if canImport(Glibc)
import _ExecGateInternals
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct VMConfig: Sendable {
    public enum Machine: String, Sendable { case microvm, pc }

    public var name = "execgate"
    public var cid: UInt32 = 3
    /// ServiceVM/README.md "Memory budget": the floor (52 MiB measured with the own kernel and the
    /// 24 MB /init) + one request in flight; 72 MiB serves amdgpu.ko (19.5 MB) with its claim, and
    /// 128 leaves room for the largest frame the service accepts (28 MiB body) beside one kernel
    /// build's facts; 160 also holds the live modules of a few guests that load a hundred each
    /// (~4.3 MiB a guest charged to the same budget: a full guest did not fit at 128).
    public var memoryMiB = VMConfig.defaultMemoryMiB
    public static let defaultMemoryMiB = 160
    public var port: UInt32 = GuestOptions.defaultPort
    public var mode: GuestOptions.Mode = .serve
    public var machine: Machine = .microvm
    public var accel: Accelerator.Decision = .init(accel: .tcg, reason: "default")
    public var stateDir: String
    public var kernel: String
    public var initrd: String
    public var qemu = "qemu-system-x86_64"
    public var extraCmdline: [String] = []
    public var readyTimeoutSeconds = 90
    public var vhostVsockDevice = "/dev/vhost-vsock"
    /// argv prefix of the vhost-user-vsock backend (`[execgate, "vsock-backend"]`); used when the
    /// host has no vhost-vsock. nil: the VM boots unreachable from the host (VhostUserVsock.swift).
    public var vsockBackendCommand: [String]? = nil

    public init(stateDir: String, kernel: String, initrd: String) {
        self.stateDir = stateDir; self.kernel = kernel; self.initrd = initrd
        self.tscKHz = VMConfig.hostTSCKHz()
    }

    public var consoleLog: String { stateDir + "/console.log" }
    public var qemuLog: String { stateDir + "/qemu.log" }
    public var pidFile: String { stateDir + "/qemu.pid" }
    /// The refusal of a start while QEMU `pid` runs this VM; its stop hint names the state root.
    func alreadyRunning(_ pid: Int32) -> ServiceVMError {
        .alreadyRunning(name: name, pid: pid, stateRoot: Files.directory(of: stateDir))
    }
    public var infoFile: String { stateDir + "/vm.txt" }
    /// The image's build record (`image.txt`, written by `image build` next to the initramfs).
    public var imageInfoPath: String {
        let dir = initrd.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return (dir.isEmpty ? "." : dir) + "/image.txt"
    }
    /// Marker in QEMU's command line (`-name`): identifies our process, guards against pid reuse.
    public var processMarker: String { "execgate-vm-\(name)" }
    /// QEMU's `-name` argument: the exact argument a live VM of this name runs with (the pid
    /// file is trusted only for a process with it: `Subprocess.isAlive`).
    public var processArgument: String { "\(processMarker),process=\(processMarker)" }

    /// Picks the kernel and initrd from an image directory (`Images/out`).
    public static func imagePaths(imageDir: String, test: Bool) throws(ServiceVMError) -> (kernel: String, initrd: String) {
        let kernel = [imageDir + "/vmlinux", imageDir + "/vmlinuz"].first(where: FS.exists)
        let initrd = imageDir + "/" + (test ? ImageBuilder.testInitramfsName : ImageBuilder.initramfsName)
        guard let kernel, FS.exists(initrd) else {
            throw .missing("no service VM image in \(imageDir) (need vmlinux or vmlinuz and \(initrd.split(separator: "/").last!)): run `make image`")
        }
        return (kernel, initrd)
    }

    public var hostHasVhostVsock: Bool { access(vhostVsockDevice, R_OK | W_OK) == 0 }

    /// Under TCG the guest's TSC runs at the host's TSC rate. Measured here: on a loaded host the
    /// guest's PIT-based TSC calibration fails, the kernel marks the TSC unstable and hangs before
    /// init (no console output at all). Telling it the frequency (`tsc_early_khz`) and the delay
    /// loop (`lpj`, HZ=250) skips both calibrations. nil → let the kernel calibrate (KVM: kvmclock).
    public var tscKHz: Int? = nil

    /// The kernel command line. `quiet` matters: every console byte is slow under TCG.
    public var kernelCmdline: String {
        var words = ["console=ttyS0", "quiet", "panic=-1", "random.trust_cpu=on"]
        if machine == .microvm { words.append("pci=off") }  // microvm has no PCI bus: skip probing it.
        if accel.accel == .tcg, let khz = tscKHz, khz > 0 {
            // tsc=reliable: the clocksource watchdog compares the TSC with jiffies, and on a busy
            // host the emulated jiffies lag, so it marked the TSC unstable (seen here) and the
            // guest fell back to the slow refined-jiffies clocksource.
            words += ["tsc_early_khz=\(khz)", "lpj=\(khz * 1000 / 250)", "tsc=reliable"]
        }
        words += ["execgate.mode=\(mode.rawValue)", "execgate.port=\(port)"]
        return (words + extraCmdline).joined(separator: " ")
    }

    /// The host's TSC frequency in kHz from /proc/cpuinfo ("cpu MHz"), or nil.
    public static func hostTSCKHz(cpuinfo: String? = try? FS.readString("/proc/cpuinfo", limit: 4 << 20)) -> Int? {
        guard let cpuinfo else { return nil }
        for line in cpuinfo.consoleLines() where line.hasPrefix("cpu MHz") {
            guard let v = line.split(separator: ":").last.flatMap({ Double($0.trimmingCharacters()) }), v > 100, v < 20_000 else { return nil }
            return Int(v * 1000)
        }
        return nil
    }

    /// The CPU model under TCG: everything QEMU emulates, minus ERMS. TCG runs `rep movsb`/`rep stosb`
    /// one byte per emulated iteration, and with ERMS the guest kernel copies and clears pages with
    /// exactly those (`memcpy_erms`, `clear_page_erms`: ALTERNATIVE on X86_FEATURE_ERMS in
    /// arch/x86/lib/memcpy_64.S, asm/page_64.h). Without it the kernel takes its REP_GOOD variants,
    /// 8 bytes per iteration (`rep movsq`/`rep stosq`). Measured in the guest (ServiceVM/README.md,
    /// "Where the time goes"): copying 16 MiB 43-70 ms with movsb, 6-10 ms with movsq; faulting in
    /// 4,096 anonymous pages 150 ms with ERMS, 26 ms without; writing 16 MiB into ramfs 110 vs 31 ms.
    /// The same model for every guest the launcher boots (vm-bench's floor too).
    public static let tcgCPU = "max,-erms"

    /// QEMU's argv (without daemonize/pidfile, which `start` adds).
    public func qemuArguments(qemuPath: String, vhost: Bool, vhostUser: Bool = false) -> [String] {
        var a = [qemuPath, "-name", processArgument,
                 "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot"]
        switch machine {
        case .microvm: a += ["-M", "microvm"]
        case .pc: a += ["-M", "pc"]
        }
        switch accel.accel {
        case .kvm: a += ["-accel", "kvm", "-cpu", "host"]
        case .tcg: a += ["-accel", "tcg", "-cpu", VMConfig.tcgCPU]
        }
        a += ["-smp", "1", "-m", "\(memoryMiB)M",
              "-kernel", kernel, "-initrd", initrd, "-append", kernelCmdline,
              "-serial", "file:\(consoleLog)"]
        if vhost {
            a += ["-device", machine == .microvm ? "vhost-vsock-device,guest-cid=\(cid)" : "vhost-vsock-pci,guest-cid=\(cid)"]
        } else if vhostUser {
            addVhostUserVsock(to: &a)
        }
        return a
    }
}

public struct VMStatus: Sendable {
    public var name: String
    public var running: Bool
    public var pid: Int32?
    public var ready: Bool
    public var address: String?
    public var reachableFromHost: Bool
    public var info: [String: String]
    public var consoleTail: String

    public var json: String {
        ConsoleJSON.object([
            ("name", ConsoleJSON.string(name)), ("running", running ? "true" : "false"),
            ("pid", pid.map { "\($0)" } ?? "null"), ("ready", ready ? "true" : "false"),
            ("address", address.map(ConsoleJSON.string) ?? "null"),
            ("reachable_from_host", reachableFromHost ? "true" : "false"),
            ("accel", ConsoleJSON.string(info["accel"] ?? "")), ("memory_mib", ConsoleJSON.count(info["memory_mib"])),
            ("console_log", ConsoleJSON.string(info["console_log"] ?? "")),
            ("boot_ms", ConsoleJSON.count(info["boot_ms"])),
            ("console_tail", ConsoleJSON.string(consoleTail)),
        ])
    }
}

public struct VMStartResult: Sendable {
    public var pid: Int32
    public var address: String
    public var reachableFromHost: Bool
    public var bootMillis: Int
    public var readyLine: String
    /// The admin port (policy push/show, audit-read) when the image carries an admin certificate
    /// (`image build --admin-cert`): the guest then listens on the verifier's port + 1.
    public var adminAddress: String?
}

public enum Launcher {
    public static func findQEMU(_ name: String) throws(ServiceVMError) -> String {
        guard let p = Subprocess.which(name) else {
            throw .missing("\(name) not found: install QEMU (Debian: apt-get install qemu-system-x86; or `make deps`)")
        }
        return p
    }

    /// The state files a command reads, refused (named, unopened) when one is there and is not a
    /// regular file: the launcher and QEMU write only regular files there, and a FIFO in their
    /// place blocked `vm status` and `vm stop` forever. `vm status` reads qemu.pid, vm.txt and
    /// console.log; `vm stop` qemu.pid and vsock-backend.pid.
    /// A state file that cannot be read (its directory unreadable by this user, a path through a
    /// regular file) is refused too, with the system's reason: taken as absent, it made `vm stop`
    /// print "was not running" and exit 0, and `vm status` "never started here", for a VM that
    /// was running in a state directory only root could read.
    public static func checkStateFiles(_ paths: [String]) throws(ServiceVMError) {
        for p in paths {
            var st = stat()
            // Unreadable state (a path through a file, no permission) is bad input like a state
            // file that is no regular file: exit 2 for status and stop alike, never 1.
            guard stat(p, &st) == 0 else {
                if errno == ENOENT { continue }  // absent: nothing to read
                throw .badInput("cannot read VM state file \(p): \(String(cString: strerror(errno)))")
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw .badInput("\(p): \(Files.fileType(st.st_mode)), not a regular file: a VM state file is one the launcher or QEMU writes; remove it")
            }
            guard access(p, R_OK) == 0 else { throw .badInput("cannot read VM state file \(p): \(String(cString: strerror(errno)))") }
        }
    }

    /// The pid a pid file names (QEMU's `qemu.pid`, the backend's `vsock-backend.pid`), nil when
    /// there is none or it is no number.
    static func readPid(_ path: String) -> Int32? {
        guard let s = try? FS.readString(path, limit: 64) else { return nil }
        return Int32(s.trimmingTrailingNewlines())
    }

    /// The VM's QEMU: the pid in this state directory's qemu.pid, a process whose arguments
    /// carry both the VM's name marker and this state directory's pid file (`-pidfile PATH`). By
    /// the name alone, a pid copied into another state directory's qemu.pid made `vm stop` there
    /// kill this VM (round 12's review).
    public static func runningPid(_ c: VMConfig) -> Int32? {
        guard let pid = readPid(c.pidFile), Subprocess.isAlive(pid, argument: c.processArgument),
              Subprocess.isAlive(pid, argument: c.pidFile) else { return nil }
        return pid
    }

    /// Starts the VM in the background and waits for the READY line on its console.
    /// `stopRequested`: polled while the guest boots (a SIGINT/SIGTERM/SIGHUP/SIGQUIT to `vm start`); when it
    /// says so, what was started is stopped, as on a timeout, and the start fails.
    public static func start(_ c: VMConfig, log: (String) -> Void = { print($0) },
                             stopRequested: () -> Bool = { false }) throws(ServiceVMError) -> VMStartResult {
        if let pid = runningPid(c) { throw c.alreadyRunning(pid) }
        let qemu = try findQEMU(c.qemu)
        guard FS.exists(c.kernel), FS.exists(c.initrd) else { throw .missing("service VM image missing (\(c.kernel), \(c.initrd)): run `make image`") }
        // Created once nothing refuses the start: a refused one writes nothing.
        try FS.mkdirs(c.stateDir)
        // One start of a state directory at a time: two at once each removed the other's files
        // and sockets (one VM "ready" at a socket that was gone, a backend outliving `vm stop`).
        // The lock goes with this process (a start killed mid-boot holds nothing).
        let lockFd = open(c.stateDir + "/start.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFd >= 0 else { throw .sys("cannot open", c.stateDir + "/start.lock") }
        defer { close(lockFd) }
        guard flock(lockFd, LOCK_EX | LOCK_NB) == 0 else {
            throw .badInput("another `vm start` of '\(c.name)' in \(c.stateDir) is in progress")
        }
        if let pid = runningPid(c) { throw c.alreadyRunning(pid) }  // started while we waited
        for f in [c.pidFile, c.consoleLog, c.qemuLog] { FS.remove(f) }
        let vhost = c.hostHasVhostVsock
        let vhostUser = c.usesVhostUserVsock
        let argv = c.qemuArguments(qemuPath: qemu, vhost: vhost, vhostUser: vhostUser) + ["-daemonize", "-pidfile", c.pidFile]
        try writeInfo(c, vhost: vhost, extra: [("state", "starting"), ("vhost_user_vsock", vhostUser ? "yes" : "no")])
        var backendPid: Int32?
        if vhostUser, let command = c.vsockBackendCommand { backendPid = try VsockBackendProcess.start(c, command: command) }
        log("vm: starting '\(c.name)' (\(c.accel.accel.rawValue): \(c.accel.reason); \(c.machine.rawValue), \(c.memoryMiB) MiB, guest CID \(c.cid))")
        let t0 = MonotonicClock.nanoseconds()
        let parent = try Subprocess.spawn(argv, outputPath: c.qemuLog)
        // With -daemonize the parent exits once QEMU is initialised (0) or failed (non-zero).
        let rc = Subprocess.wait(parent, timeoutMillis: 30_000)
        guard rc == 0, let pid = readPid(c.pidFile) else {
            if backendPid != nil { VsockBackendProcess.stop(c) }
            throw .guestDied("QEMU failed to start (exit \(rc.map(String.init) ?? "timeout")); \(c.qemuLog):", consoleTail: FS.tail(c.qemuLog))
        }
        do {
            let line = try waitForReady(c, pid: pid, timeoutSeconds: c.readyTimeoutSeconds, stopRequested: stopRequested)
            let bootMs = Int((MonotonicClock.nanoseconds() - t0) / 1_000_000)
            let address = c.hostAddress(vhostUser: vhostUser)
            let image = ImageInfo.parse((try? FS.readString(c.imageInfoPath)) ?? "")
            let admin = image["admin_certificate"] == "yes" ? c.hostAddress(vhostUser: vhostUser, port: c.port &+ 1) : nil
            try writeInfo(c, vhost: vhost, extra: [("state", "ready"), ("pid", "\(pid)"), ("boot_ms", "\(bootMs)"),
                                                   ("vhost_user_vsock", vhostUser ? "yes" : "no"), ("address", address),
                                                   ("admin_address", admin ?? "")])
            return VMStartResult(pid: pid, address: address, reachableFromHost: vhost || vhostUser, bootMillis: bootMs, readyLine: line,
                                 adminAddress: admin)
        } catch {
            // Do not leave a half-started guest behind.
            _ = stopProcess(pid, argument: c.processArgument)
            if backendPid != nil { VsockBackendProcess.stop(c) }
            throw error
        }
    }

    /// Polls the console log for READY (or FATAL / QEMU exit) every 10 ms: boot→ready is a few
    /// hundred ms under TCG, so a coarser poll would add a visible share of it (50 ms did: 25 ms on
    /// average, to every boot and to vm-bench's floor alike).
    static func waitForReady(_ c: VMConfig, pid: Int32, timeoutSeconds: Int, stopRequested: () -> Bool = { false }) throws(ServiceVMError) -> String {
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeoutSeconds) * 1_000_000_000
        while true {
            if let text = try? FS.readString(c.consoleLog, limit: 64 << 20) {
                for line in text.consoleLines(omittingEmpty: true) {
                    if line.hasPrefix(ConsoleProtocol.ready) { return String(line) }
                    if line.hasPrefix(ConsoleProtocol.fatal) {
                        throw .guestDied("the guest's init failed: \(line); \(c.consoleLog):", consoleTail: FS.tail(c.consoleLog))
                    }
                }
            }
            if !Subprocess.isAlive(pid, argument: c.processArgument) {
                throw .guestDied("the VM stopped before it was ready; \(c.consoleLog):", consoleTail: FS.tail(c.consoleLog))
            }
            if MonotonicClock.nanoseconds() >= deadline {
                throw .timeout("the verifier was not ready after \(timeoutSeconds) s; VM stopped; \(c.consoleLog):", consoleTail: FS.tail(c.consoleLog))
            }
            if stopRequested() {
                throw .guestDied("stopped by a signal (SIGINT/SIGTERM/SIGHUP/SIGQUIT) before the verifier was ready; VM stopped; \(c.consoleLog):", consoleTail: FS.tail(c.consoleLog))
            }
            usleep(10_000)
        }
    }

    static func writeInfo(_ c: VMConfig, vhost: Bool, extra: [(String, String)]) throws(ServiceVMError) {
        try FS.write(c.infoFile, ImageInfo.render([
            ("name", c.name), ("cid", "\(c.cid)"), ("port", "\(c.port)"), ("memory_mib", "\(c.memoryMiB)"),
            ("accel", c.accel.accel.rawValue), ("accel_reason", c.accel.reason), ("machine", c.machine.rawValue),
            ("kernel", c.kernel), ("initrd", c.initrd), ("console_log", c.consoleLog),
            ("vhost_vsock", vhost ? "yes" : "no"), ("mode", c.mode.rawValue),
        ] + extra))
    }

    /// SIGTERM, then SIGKILL after 5 s. The guest keeps no state worth flushing: everything it has
    /// came from the initramfs, so ending QEMU is a clean stop.
    static func stopProcess(_ pid: Int32, argument: String) -> Bool {
        guard Subprocess.isAlive(pid, argument: argument) else { return false }
        kill(pid, SIGTERM)
        for _ in 0..<100 {
            if !Subprocess.isAlive(pid, argument: argument) { return true }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        for _ in 0..<40 where Subprocess.isAlive(pid, argument: argument) { usleep(50_000) }
        return true
    }

    /// Stops the VM. Returns false when it was not running.
    public static func stop(_ c: VMConfig) -> Bool {
        guard let pid = runningPid(c) else { FS.remove(c.pidFile); VsockBackendProcess.stop(c); return false }
        let stopped = stopProcess(pid, argument: c.processArgument)
        VsockBackendProcess.stop(c)
        FS.remove(c.pidFile)
        if var info = try? FS.readString(c.infoFile) {
            info = info.split(separator: "\n").filter { !$0.hasPrefix("state=") }.joined(separator: "\n") + "\nstate=stopped\n"
            try? FS.write(c.infoFile, info)
        }
        return stopped
    }

    public static func status(_ c: VMConfig) -> VMStatus {
        let info = ImageInfo.parse((try? FS.readString(c.infoFile)) ?? "")
        let pid = runningPid(c)
        let console = (try? FS.readString(c.consoleLog, limit: 64 << 20)) ?? ""
        let ready = console.consoleLines(omittingEmpty: true).contains { $0.hasPrefix(ConsoleProtocol.ready) }
        let cid = info["cid"] ?? "\(c.cid)", port = info["port"] ?? "\(c.port)"
        // Through the vhost-user backend the VM is reachable only while its backend lives: QEMU
        // alone (the backend killed, or a start interrupted) is running, not ready, and its
        // address is the hybrid socket's, never `vsock:` (no /dev/vhost-vsock here).
        let vhostUser = info["vhost_user_vsock"] == "yes"
        let backendAlive = !vhostUser || VsockBackendProcess.runningPid(c) != nil
        let address = info["address"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (vhostUser ? "hybrid:\(c.hybridSocket):\(port)" : "vsock:\(cid):\(port)")
        return VMStatus(name: c.name, running: pid != nil, pid: pid, ready: pid != nil && ready && backendAlive,
                        address: pid != nil ? address : nil,
                        reachableFromHost: pid != nil && backendAlive && (info["vhost_vsock"] == "yes" || vhostUser), info: info,
                        consoleTail: pid == nil || !ready ? FS.tail(c.consoleLog) : "")
    }

    /// Boots the VM in the foreground until it powers off (test mode) and returns its console.
    public static func runToCompletion(_ c: VMConfig, timeoutSeconds: Int) throws(ServiceVMError) -> (console: String, millis: Int) {
        if let pid = runningPid(c) { throw c.alreadyRunning(pid) }
        let qemu = try findQEMU(c.qemu)
        guard FS.exists(c.kernel), FS.exists(c.initrd) else { throw .missing("service VM image missing (\(c.kernel), \(c.initrd)): run `make image`") }
        // Created once nothing refuses the start: a refused one writes nothing.
        try FS.mkdirs(c.stateDir)
        for f in [c.consoleLog, c.qemuLog] { FS.remove(f) }
        let t0 = MonotonicClock.nanoseconds()
        let pid = try Subprocess.spawn(c.qemuArguments(qemuPath: qemu, vhost: false), outputPath: c.qemuLog)
        guard let rc = Subprocess.wait(pid, timeoutMillis: timeoutSeconds * 1000) else {
            kill(pid, SIGKILL)
            _ = Subprocess.wait(pid, timeoutMillis: 5000)
            throw .timeout("the test VM did not power off within \(timeoutSeconds) s", consoleTail: FS.tail(c.consoleLog))
        }
        let ms = Int((MonotonicClock.nanoseconds() - t0) / 1_000_000)
        let console = (try? FS.readString(c.consoleLog, limit: 64 << 20)) ?? ""
        guard rc == 0 else {
            throw .guestDied("QEMU exited with status \(rc): \(FS.tail(c.qemuLog, lines: 5))", consoleTail: FS.tail(c.consoleLog))
        }
        return (console, ms)
    }
}
