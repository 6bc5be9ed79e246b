// SPDX-License-Identifier: Apache-2.0
//
// The host half of `execgate capture`: resolve the modules' dependency closure, build a capture
// initramfs (static execgate as /init, the .ko files, a plan), boot the kernel under QEMU with a
// raw virtio-blk disk, read the guest's ustar archive back from that disk and lay it out as a
// capture directory (the interchange format `CaptureBoot.load` reads; see docs and the corpus
// README):
//
//   <out>/load-order.txt  modules.list  modules.dep  corpus.json
//   <out>/<boot>/         kallsyms.txt boot_cpu_data.bin pv_ops.bin cpus.txt cmdline.txt slide.txt
//                         vulnerabilities.txt cpuflags.txt … and per module
//   <out>/<boot>/<m>/     <m>.ko sections.json layout.json core_text.bin
//
// <boot> is `nokaslr` or `kaslr`. Both boot the bzImage as a boot loader would (its decompressor
// applies KASLR and enables 5-level paging); `pvh` boots the extracted vmlinux instead (faster, but
// a different end state: no LA57, no KASLR).

import _ExecGateInternals
import ExecGateELF
import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct CaptureOptions: Sendable {
    /// A linux-image .deb or an unpacked package directory.
    public var kernel: String
    public var modules: [String]
    public var outDir: String
    /// The static execgate binary that becomes the guest's /init.
    public var initBinary: String
    public var cpu = "max"
    /// Extra kernel command-line words (mitigation choices such as `retbleed=stuff`); the guest's
    /// own `execgate.*` words are reserved.
    public var kernelArgs: [String] = []
    public var kaslr = false
    /// Scratch space (unpacked .deb, vmlinux, initramfs, disk image, console log).
    public var workDir: String
    public var timeoutSeconds = 600
    public var memoryMiB = 1024
    public var qemu = "qemu-system-x86_64"
    /// auto | kvm | tcg (auto: KVM only where it really boots Linux; see Accelerator).
    public var accel = "auto"
    /// Boot the uncompressed vmlinux through its PVH entry instead of the bzImage (nokaslr only;
    /// ~3 s faster under TCG). Not the default: a PVH entry skips the decompressor, which is where
    /// x86 switches to 5-level paging (LA57), so `boot_cpu_data`, `pv_ops` and LA57 alternatives
    /// differ from a normal boot of the same kernel.
    public var pvh = false
    /// Disk for the results (sparse file).
    public var diskBytes = 512 << 20
    /// Guest CPUs present at boot (QEMU `-smp N`) and, when set, the CPUs it may ever have
    /// (`maxcpus=M`, the rest hot-pluggable). They decide the kernel's SMP alternatives:
    /// alternative_instructions() rewrites `lock` prefixes to `ds` when one CPU is present, and
    /// keeps modules on smp_alt_modules (to switch back) when more are possible. The guest's
    /// /sys/devices/system/cpu/{present,possible} are captured in cpus.txt.
    public var smp = 1
    public var maxCPUs: Int? = nil

    public init(kernel: String, modules: [String], outDir: String, initBinary: String, workDir: String) {
        self.kernel = kernel; self.modules = modules; self.outDir = outDir; self.initBinary = initBinary; self.workDir = workDir
    }

    public var bootName: String { kaslr ? "kaslr" : "nokaslr" }

    /// Range of `smp` and `maxCPUs` (QEMU's `pc` machine takes up to 255; a capture needs no more
    /// than a handful, and every CPU costs boot time under TCG).
    public static let cpuCountRange = 1...64

    /// Guest memory in MiB: `vm start`'s range (BootOptions: below 32 nothing boots; QEMU's `-m`
    /// takes nothing below 1 and a negative size is no size at all).
    public static let memoryRange = 32...65536
    /// Seconds to wait for the capture VM: at least one, at most a day (the deadline is kept in
    /// nanoseconds of a UInt64: a negative or huge value trapped after QEMU was started).
    public static let timeoutRange = 1...86_400

    /// Every option checked before any work: the package is not unpacked, no initramfs written
    /// and QEMU not started for a run one of them would stop later. Each is a usage error (exit 2).
    public func checkOptions() throws(CaptureToolError) {
        if pvh && kaslr { throw .usage("--pvh and --kaslr: a PVH boot has no KASLR (the bzImage's decompressor applies it)") }
        _ = try smpArgument()
        guard Self.memoryRange.contains(memoryMiB) else {
            throw .usage("--memory \(memoryMiB): the guest's memory must be \(Self.memoryRange.lowerBound)…\(Self.memoryRange.upperBound) MiB")
        }
        guard Self.timeoutRange.contains(timeoutSeconds) else {
            throw .usage("--timeout \(timeoutSeconds): wait \(Self.timeoutRange.lowerBound)…\(Self.timeoutRange.upperBound) seconds for the capture VM")
        }
        do { _ = try Accelerator.choose(accel) } catch { throw .usage(error.description) }
        for a in kernelArgs where !a.isEmpty {
            // The guest half's own words (execgate.mode=capture) and the one quoting the kernel's
            // command-line parser gives meaning to (next_arg()) are not the operator's.
            guard !a.hasPrefix("execgate."), !a.contains("\"") else {
                throw .usage("--kernel-args: '\(a)' is reserved for the capture guest (execgate.* words and '\"' are not passed)")
            }
        }
    }

    /// QEMU's `-smp` value: `N` or `N,maxcpus=M`; a precise usage error for counts out of range
    /// or `maxcpus` below the CPUs present.
    public func smpArgument() throws(CaptureToolError) -> String {
        let r = Self.cpuCountRange
        guard r.contains(smp) else { throw .usage("--smp \(smp): the guest's CPU count must be \(r.lowerBound)…\(r.upperBound)") }
        guard let m = maxCPUs else { return "\(smp)" }
        guard r.contains(m) else { throw .usage("--maxcpus \(m): the guest's possible CPU count must be \(r.lowerBound)…\(r.upperBound)") }
        guard m >= smp else { throw .usage("--maxcpus \(m) is below --smp \(smp): the CPUs present are possible CPUs too") }
        return "\(smp),maxcpus=\(m)"
    }
}

public struct CaptureSummary: Sendable {
    public var boot: String
    public var bootDir: String
    public var kernelVersion: String
    public var requested: [String]
    public var loadOrder: [String]
    public var captured: [String]
    /// name → insmod message of modules whose finit_module failed.
    public var failed: [(String, String)]
    public var slide: UInt64
    public var accel: String
    public var qemuMillis: Int
    public var totalMillis: Int

    public var json: String {
        ConsoleJSON.object([
            ("boot", ConsoleJSON.string(boot)), ("dir", ConsoleJSON.string(bootDir)), ("kernel", ConsoleJSON.string(kernelVersion)),
            ("requested", "[" + requested.map(ConsoleJSON.string).joined(separator: ",") + "]"),
            ("load_order", "[" + loadOrder.map(ConsoleJSON.string).joined(separator: ",") + "]"),
            ("captured", "\(captured.count)"),
            ("failed", ConsoleJSON.object(failed.map { ($0.0, ConsoleJSON.string($0.1)) })),
            ("slide", ConsoleJSON.string("0x" + Hex.number(slide))), ("accel", ConsoleJSON.string(accel)),
            ("qemu_ms", "\(qemuMillis)"), ("total_ms", "\(totalMillis)"),
        ])
    }
}

public enum CaptureTool {
    /// Modules that carry the results out (loaded by the guest only after the capture is read),
    /// those of them the kernel does not build in.
    public static let transportModules = ["virtio_pci", "virtio_blk"]

    /// One capture: plan the load order, build the initramfs, boot the kernel under QEMU, read the
    /// archive the guest wrote, lay it out as a capture directory.
    public static func run(_ o: CaptureOptions, log: (String) -> Void) throws(CaptureToolError) -> CaptureSummary {
        let t0 = MonotonicClock.nanoseconds()
        try o.checkOptions()  // a bad option is a usage error before any work
        guard FS.exists(o.initBinary) else {
            throw .missing("init binary \(o.initBinary) not found: build the static execgate first (`make image`, or pass --init)")
        }
        try checkOutputDirectory(o.outDir)
        // Nothing is written before the inputs are known good: the work directory (a fixed path
        // per user by default) is made once the kernel and the module names are (a .deb is
        // unpacked into it first: KernelTree.open makes that directory itself).
        let tree = try KernelTree.open(FS.absolute(o.kernel), unpackDir: o.workDir + "/kernel", log: log)
        let index = try ModuleIndex(modulesDir: tree.modulesDir)
        let unknown = o.modules.compactMap { m -> String? in
            do throws(CaptureToolError) { _ = try index.path(of: m); return nil } catch { return error.description }
        }
        if !unknown.isEmpty { throw .badModule(unknown.joined(separator: "\n")) }  // every bad name, before any work
        try wrap { () throws(ServiceVMError) in try FS.mkdirs(o.workDir) }
        let (order, deps) = try index.closure(o.modules)
        // Built-in transport drivers (6.12 builds virtio_pci in) need no module.
        let transport = try index.closure(index.loadable(transportModules)).order
        let qemu = try wrap { () throws(ServiceVMError) in try Launcher.findQEMU(o.qemu) }
        let decision = try wrap { () throws(ServiceVMError) in try Accelerator.choose(o.accel) }
        log("capture: \(tree.version): \(o.modules.count) requested, \(order.count) to load: \(order.joined(separator: " "))")

        let initrd = try writeInitramfs(o, index: index, order: order, transport: transport)
        let kernelPath = try guestKernel(o, tree: tree)
        let boot = try bootGuest(o, qemu: qemu, decision: decision, kernelPath: kernelPath, initrd: initrd,
                                 isBzImage: kernelPath == tree.vmlinuz, log: log)

        var s = try CaptureLayout.write(members: boot.members, options: o, tree: tree, index: index, order: order, depends: deps)
        s.accel = decision.accel.rawValue
        s.qemuMillis = boot.qemuMillis
        s.totalMillis = Int((MonotonicClock.nanoseconds() - t0) / 1_000_000)
        try wrap { () throws(ServiceVMError) in try FS.write(s.bootDir + "/console.log", boot.console) }
        return s
    }

    /// `--out` is a directory this user can write into, or one that can be made below the nearest
    /// existing ancestor: checked before any work (an unwritable --out failed only after the
    /// capture VM had booted, exit 1, round 13).
    static func checkOutputDirectory(_ out: String) throws(CaptureToolError) {
        var p = out
        while !FS.exists(p) {
            let up = Files.directory(of: p)
            if up == p { break }
            p = up
        }
        guard FS.isDirectory(p) else {
            throw .usage(p == out ? "--out \(out) is not a directory" : "--out \(out) cannot be made: \(p) is not a directory")
        }
        guard access(p, W_OK | X_OK) == 0 else {
            throw .usage("--out \(out): \(p) is not writable (\(String(cString: strerror(errno))))")
        }
    }

    /// The capture initramfs: execgate as /init, the modules to load in order, the transport
    /// modules, and the plan the guest half follows.
    static func writeInitramfs(_ o: CaptureOptions, index: ModuleIndex, order: [String], transport: [String]) throws(CaptureToolError) -> String {
        let initBytes = try wrap { () throws(ServiceVMError) in try FS.read(o.initBinary, limit: 512 << 20) }
        guard GuestKernel.elfHasInterpreter(initBytes) == false else {
            throw .badModule("\(o.initBinary) is not a static ELF executable; build it with `make image` (static release build)")
        }
        var cpio = CpioArchive(mtime: 0)
        cpio.addFile("init", initBytes, mode: 0o755)
        for d in ["dev", "proc", "sys", "tmp", "run"] { cpio.addDirectory(d) }
        cpio.add("dev/console", mode: 0o600, .charDevice(major: 5, minor: 1))
        cpio.add("dev/null", mode: 0o666, .charDevice(major: 1, minor: 3))
        for n in order { cpio.addFile(CaptureGuest.Paths.modules + "/" + n + ".ko", try index.bytes(of: n)) }
        for n in transport { cpio.addFile(CaptureGuest.Paths.transport + "/" + n + ".ko", try index.bytes(of: n)) }
        cpio.addFile(CaptureGuest.Paths.plan, Array(ImageInfo.render([
            ("boot", o.bootName), ("order", order.joined(separator: ",")), ("transport", transport.joined(separator: ",")),
            ("timeout", "\(max(60, o.timeoutSeconds - 10))"),
        ]).utf8))
        let initrd = o.workDir + "/capture-\(o.bootName).cpio.gz"
        try wrap { () throws(ServiceVMError) in try FS.write(initrd, try Compression.gzip(cpio.encode(), level: 1)) }
        return initrd
    }

    /// The kernel QEMU boots: the bzImage; the PVH vmlinux (extracted once, cached) only when asked for.
    static func guestKernel(_ o: CaptureOptions, tree: KernelTree) throws(CaptureToolError) -> String {
        guard o.pvh else { return tree.vmlinuz }
        let vmlinux = o.workDir + "/vmlinux-" + tree.version
        if !FS.exists(vmlinux) {
            let z = try wrap { () throws(ServiceVMError) in try FS.read(tree.vmlinuz, limit: 256 << 20) }
            if let v = GuestKernel.extractVmlinux(fromBzImage: z) {
                try wrap { () throws(ServiceVMError) in try FS.write(vmlinux, v) }
            }
        }
        guard FS.exists(vmlinux) else { throw .failed("\(tree.vmlinuz) holds no xz-compressed vmlinux for a PVH boot") }
        return vmlinux
    }

    /// Boots the capture VM, relays its progress, and reads back the tar archive it wrote to the disk.
    static func bootGuest(_ o: CaptureOptions, qemu: String, decision: Accelerator.Decision, kernelPath: String, initrd: String,
                          isBzImage: Bool, log: (String) -> Void) throws(CaptureToolError) -> (members: [Tar.Member], console: String, qemuMillis: Int) {
        // Disk: sparse, zero (a stale archive must never be read back).
        let disk = o.workDir + "/capture-\(o.bootName).img"
        FS.remove(disk)
        let dfd = open(disk, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard dfd >= 0, ftruncate(dfd, off_t(o.diskBytes)) == 0 else { throw .failed("cannot create \(disk)") }
        close(dfd)

        let console = o.workDir + "/console-\(o.bootName).log", qlog = o.workDir + "/qemu-\(o.bootName).log"
        FS.remove(console); FS.remove(qlog)
        var append = ["console=ttyS0", "quiet", "panic=-1", "random.trust_cpu=on"]
        if decision.accel == .tcg, let khz = VMConfig.hostTSCKHz(), khz > 0 { append += ["tsc_early_khz=\(khz)", "lpj=\(khz * 1000 / 250)"] }
        if !o.kaslr { append.append("nokaslr") }
        append += o.kernelArgs.filter { !$0.isEmpty }  // checked by checkOptions() before any work
        append.append("execgate.mode=capture")
        let marker = "execgate-capture-\(getpid())-\(o.bootName)"
        let smp = try o.smpArgument()
        let argv = [qemu, "-name", "\(marker),process=\(marker)", "-nodefaults", "-no-user-config", "-display", "none",
                    "-monitor", "none", "-no-reboot", "-M", "pc", "-accel", decision.accel.rawValue, "-cpu", o.cpu,
                    "-smp", smp, "-m", "\(o.memoryMiB)M", "-kernel", kernelPath, "-initrd", initrd,
                    "-append", append.joined(separator: " "), "-serial", "file:\(console)",
                    "-drive", "file=\(disk),format=raw,if=none,id=capture", "-device", "virtio-blk-pci,drive=capture"]
        log("capture: booting \(o.bootName) (\(decision.accel.rawValue): \(decision.reason); -cpu \(o.cpu), -smp \(smp), \(isBzImage ? "bzImage" : "PVH vmlinux"))")
        let q0 = MonotonicClock.nanoseconds()
        let pid = try wrap { () throws(ServiceVMError) in try Subprocess.spawn(argv, outputPath: qlog) }
        var relayed = 0
        var rc: Int32? = nil
        let deadline = q0 + UInt64(o.timeoutSeconds) * 1_000_000_000
        while rc == nil {
            rc = Subprocess.wait(pid, timeoutMillis: 250)
            relayed = relay(console: console, from: relayed, log: log)
            if rc == nil && MonotonicClock.nanoseconds() >= deadline {
                kill(pid, SIGKILL)
                _ = Subprocess.wait(pid, timeoutMillis: 5000)
                throw .failed("the capture VM did not finish within \(o.timeoutSeconds) s\n--- console tail ---\n\(FS.tail(console))")
            }
        }
        let qemuMs = Int((MonotonicClock.nanoseconds() - q0) / 1_000_000)
        let text = (try? FS.readString(console, limit: 64 << 20)) ?? ""
        let lines = text.consoleLines()
        if let f = lines.first(where: { $0.hasPrefix(ConsoleProtocol.fatal) }) {
            throw .guest("the capture guest failed: \(f)\n--- console tail ---\n\(FS.tail(console))")
        }
        guard let done = lines.first(where: { $0.hasPrefix(CaptureGuest.doneLine) }) else {
            let hint = Self.diagnosis(console: text).map { "\n\($0)" } ?? ""
            throw .guest("the capture VM stopped (QEMU exit \(rc ?? -1)) without finishing: \(FS.tail(qlog, lines: 5))\(hint)\n--- console tail ---\n\(FS.tail(console))")
        }
        var archiveBytes = 0
        for w in done.split(separator: " ") where w.hasPrefix("bytes=") { archiveBytes = Int(w.dropFirst(6)) ?? 0 }
        guard archiveBytes > 0, archiveBytes <= o.diskBytes else { throw .guest("bad done line: \(done)") }
        let members: [Tar.Member]
        do { members = try Tar.read(try readPrefix(disk, archiveBytes)) } catch { throw .guest("\(error)") }
        log("capture: guest done in \(qemuMs) ms; \(members.count) files, \(archiveBytes) bytes")
        return (members, text, qemuMs)
    }

    /// Relays new `capture:` progress lines of the console log; returns the new offset.
    /// A cause the console shows for a capture guest that died before its done line, in words an
    /// operator can act on; nil when none is recognised. `/init` is ExecGate's own static binary
    /// (Swift): its runtime's atomics use `lock cmpxchg16b`, which some QEMU CPU models lack
    /// (`Conroe`: no CX16), and the kernel then kills PID 1 with SIGILL ("Attempted to kill init"
    /// after `asm_exc_invalid_op` / "trap invalid opcode"), which the console tail alone leaves
    /// to the reader to decode.
    static func diagnosis(console text: String) -> String? {
        guard text.containsUTF8("Attempted to kill init") else { return nil }
        if text.containsUTF8("asm_exc_invalid_op") || text.containsUTF8("trap invalid opcode") {
            return "hint: /init died on an invalid opcode: the --cpu model lacks an instruction ExecGate's static binary uses (most likely CMPXCHG16B, CPUID flag cx16, which the Swift runtime needs); capture with a model that has it (e.g. max, qemu64, Nehalem or later)"
        }
        return "hint: /init (ExecGate's capture guest) was killed: see the console tail below"
    }

    static func relay(console: String, from: Int, log: (String) -> Void) -> Int {
        guard let b = try? FS.read(console, limit: 64 << 20), b.count > from else { return from }
        guard let lastNL = b.lastIndex(of: 0x0A), lastNL >= from else { return from }
        for line in String(decoding: b[from...lastNL], as: UTF8.self).consoleLines() {
            if let r = line.utf8Range(of: "capture: ") { log("  guest: " + line[r.upperBound...]) }
            else if line.hasPrefix(ConsoleProtocol.fatal) { log("  guest: " + line) }
        }
        return lastNL + 1
    }

    static func readPrefix(_ path: String, _ n: Int) throws(CaptureToolError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .failed("cannot open \(path)") }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw .failed("\(path): short read") }
            got += r
        }
        return out
    }
}

