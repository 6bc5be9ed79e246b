// SPDX-License-Identifier: Apache-2.0
//
// The guest half of `execgate capture`: PID 1 in `execgate.mode=capture` (GuestInit has mounted
// /proc, /sys and /dev). Order of duties:
//   1. kptr_restrict=0 (real addresses in /proc/kallsyms and sysfs), request_module() pointed at
//      nothing (an empty kernel.modprobe makes __request_module return -ENOENT), so no module
//      outside the plan is ever loaded;
//   2. finit_module each planned .ko in load order; after each one wait until its `.init`
//      allocation has really been freed (the kernel frees it from a workqueue after init returns;
//      without the wait the next module's placement depends on timing);
//   3. read everything the capture layout needs (kallsyms, /sys/module/*/sections, the executable
//      core region of each module and a few kernel variables through /proc/kcore, ...) into one
//      ustar archive in memory;
//   4. only then load the virtio transport (so it cannot move or patch a captured module), write the
//      archive to the raw disk /dev/vda, sync, report on the console; GuestInit powers off.
//
// Console lines (the host relays them): `execgate-init: [ms] capture: …` progress,
// `EXECGATE-CAPTURE-DONE bytes=N modules=M failed=F` at the end, EXECGATE-FATAL on errors.

import _ExecGateInternals
import ExecGateELF
import ExecGateServiceVM
import CExecGateSys
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum CaptureGuest {
    /// Where the image builder puts things inside the capture initramfs.
    public enum Paths {
        public static let plan = "/etc/execgate/capture/plan.txt"
        public static let modules = "/lib/modules/capture"
        public static let transport = "/lib/modules/capture-transport"
        public static let disk = "/dev/vda"
    }
    public static let doneLine = "EXECGATE-CAPTURE-DONE"

    public enum Limits {
        /// Polls (2 ms apart) to wait for one module's `.init` area to be freed.
        public static let initFreePolls = 5000
        /// Bytes of `boot_cpu_data` and `pv_ops` captured (README: 512 and 4096).
        public static let bootCPUDataBytes = 512
        public static let pvOpsBytes = 4096
        /// Largest executable region read for one module (kvm's is ~1.2 MB).
        public static let maxTextBytes = 64 << 20
    }

    static func log(_ s: String) { GuestInit.log("capture: " + s) }

    /// Runs the capture; returns when the archive is on the disk (the caller powers off).
    public static func run() async throws {
        let plan = ImageInfo.parse(try FS.readString(Paths.plan))
        let order = (plan["order"] ?? "").split(separator: ",").map(String.init)
        let transport = (plan["transport"] ?? "").split(separator: ",").map(String.init)
        let timeout = Int(plan["timeout"] ?? "") ?? 600
        startDetachedThread {
            sleep(UInt32(timeout))
            GuestInit.fatal("capture timed out after \(timeout) s in the guest")
        }
        try writeProc("/proc/sys/kernel/kptr_restrict", "0\n")
        try writeProc("/proc/sys/kernel/modprobe", "\n")

        var tar = Tar.Writer()
        // The core's static-call trampolines at the trusted point: the kernel has sealed itself
        // (mark_rodata_ro() ran before /init) and no module has been loaded yet, so their bytes are
        // what the kernel's own boot made of them (a `trace_event=` probe included), the read a
        // VMM makes before the guest runs untrusted code (docs/trust.md "Static calls", rule 1).
        let tramps = try readCoreTrampolines()
        tar.add(staticCallTrampolinesFile, tramps.text)
        log("read \(tramps.count) core static-call trampolines")
        var insmodLog = "", waitLog = ""
        var loaded = 0, failed = 0
        // Module-loader vmalloc areas that stay once every loaded module's init memory is freed.
        var coreAllocations = 0
        let perType = perTypeModuleMemory(release: trimmed(readText("/proc/sys/kernel/osrelease")))
        let t0 = MonotonicClock.nanoseconds()
        for (i, name) in order.enumerated() {
            let path = Paths.modules + "/" + name + ".ko"
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw CaptureToolError.guest("cannot open \(path)") }
            let s = MonotonicClock.sinceBootMilliseconds()
            let rc = execgate_finit_module(fd, "", 0)
            let err = errno
            let e = MonotonicClock.sinceBootMilliseconds()
            close(fd)
            var msg = ""
            if rc == 0 {
                loaded += 1
                coreAllocations += perType ? ((try? coreTypeCount(FS.read(path, limit: 256 << 20))) ?? 1) : 1
            } else { failed += 1; msg = String(cString: strerror(err)) }
            insmodLog += "\(name) rc=\(rc == 0 ? 0 : -err) t0=\(secs(s)) t1=\(secs(e)) \(msg)\n"
            let polls = waitForInitFree(loadedModules: coreAllocations)
            waitLog += "\(name) polls=\(polls)\n"
            log("[\(i + 1)/\(order.count)] \(name) \(rc == 0 ? "loaded" : "FAILED: \(msg)") in \(Int(e - s)) ms, init freed after \(polls) polls")
        }
        log("\(loaded) loaded, \(failed) failed in \((MonotonicClock.nanoseconds() - t0) / 1_000_000) ms; reading state")
        tar.add("insmod.log", insmodLog)
        tar.add("waitfree.log", waitLog)
        try collect(into: &tar, order: order)
        let archive = tar.finish()
        log("archive \(archive.count) bytes; loading the transport")
        try loadTransport(transport)
        try writeDisk(archive)
        GuestInit.emit("\(doneLine) bytes=\(archive.count) modules=\(loaded) failed=\(failed)")
    }

    static func secs(_ ms: Double) -> String {
        let c = Int((ms / 10).rounded())
        let frac = c % 100
        return "\(c / 100).\(frac < 10 ? "0" : "")\(frac)"
    }

    static func writeProc(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CaptureToolError.guest("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let b = Array(value.utf8)
        let n = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == b.count else { throw CaptureToolError.guest("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    /// Since 6.4 (`struct module_memory`) every non-empty memory type is its own vmalloc area.
    static func perTypeModuleMemory(release: String) -> Bool {
        let v = release.split(whereSeparator: { $0 == "." || $0 == "-" || $0 == "+" }).prefix(2).compactMap { Int($0) }
        guard v.count == 2 else { return false }
        return v[0] > 6 || (v[0] == 6 && v[1] >= 4)
    }

    /// How many core vmalloc areas a module keeps on a per-type kernel: the core types
    /// (MOD_TEXT, MOD_RODATA, MOD_RO_AFTER_INIT, MOD_DATA) holding a non-empty section, by the
    /// flag rules of `__layout_sections()` after `layout_and_allocate()`'s edits (6.12
    /// kernel/module/main.c). Only paces the capture; nothing is judged from it.
    static func coreTypeCount(_ ko: [UInt8]) throws -> Int {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            var types = Set<Int>()
            for s in elf.sections where s.isAlloc && s.size > 0 && !s.name.hasPrefix(".init") {
                if [".modinfo", "__versions", ".data..percpu"].contains(s.name) { continue }
                let roAfterInit = s.flags.contains(.roAfterInit) || s.name == ".data..ro_after_init" || s.name == "__jump_table"
                if s.isExec { types.insert(0) } else if !s.isWrite { types.insert(2) } else if roAfterInit { types.insert(3) } else { types.insert(1) }
            }
            return max(types.count, 1)
        }
    }

    /// Polls /proc/vmallocinfo until it shows no more module-loader allocations than loaded
    /// modules (each loaded module keeps its core allocation; a pending `.init` is one more).
    /// Returns the number of polls needed (-1: gave up, logged).
    static func waitForInitFree(loadedModules: Int) -> Int {
        for poll in 0..<Limits.initFreePolls {
            guard let info = try? FS.read("/proc/vmallocinfo", limit: 256 << 20) else { return -1 }
            if countLoaderAllocations(info) <= loadedModules { return poll }
            usleep(2000)
        }
        log("warning: an .init area was still allocated after \(Limits.initFreePolls) polls")
        return -1
    }

    /// The module loader's allocations in /proc/vmallocinfo: lines whose caller is the loader
    /// (`load_module+…`, or `move_module+…` where it is not inlined), less one for each such line
    /// marked `vpages`. mm/vmalloc.c `__vmalloc_area_node()` gives a region of more than a page of
    /// page pointers (over 512 pages, 2 MiB) an array that is itself vmalloc'ed with the region's
    /// caller, and marks the region `vpages`: that array is a second loader line of the same
    /// allocation (amdgpu's 6.99, 4.38 and 2.92 MB regions; counted as allocations, they kept the
    /// count above the loaded modules for good, and every later module waited out all its polls:
    /// ~23 s to 5 minutes each, round 14).
    public static func countLoaderAllocations(_ info: [UInt8]) -> Int {
        // Decoded once; each line a slice of it (this runs at every poll, up to 5,000 per module).
        let text = String(decoding: info, as: UTF8.self)
        var count = 0
        for line in text.utf8.split(separator: 0x0A) {
            let l = Substring(line)
            guard l.containsUTF8(" load_module+") || l.containsUTF8(" move_module+") else { continue }
            if !l.containsUTF8(" vpages") { count += 1 }
        }
        return count
    }

    // MARK: - Reading the end state

    static func readText(_ path: String) -> String { (try? FS.readString(path, limit: 256 << 20)) ?? "" }

    static func trimmed(_ s: String) -> String {
        var t = Substring(s)
        while let l = t.last, l == "\n" || l == " " || l == "\r" { t = t.dropLast() }
        return String(t)
    }

    /// The capture file of the core's `__SCT__<name>` trampolines (`CaptureBoot` decodes it).
    public static let staticCallTrampolinesFile = "static_call_trampolines.txt"
    /// Bytes read per trampoline: the 5-byte `jmp`/RET form and the `0f b9 cc` ud1 signature
    /// after it (arch/x86/include/asm/static_call.h __ARCH_DEFINE_STATIC_CALL_TRAMP).
    public static let trampolineBytes = 8

    /// One line per core (non-`[module]`) `__SCT__<name>` record of /proc/kallsyms:
    /// `<name> <address hex> <8 bytes hex>` (`?` when /proc/kcore could not read them).
    static func readCoreTrampolines() throws -> (text: String, count: Int) {
        let k = try FS.read("/proc/kallsyms", limit: 512 << 20)
        let kcore = try Kcore()
        var out = "", count = 0
        for line in String(decoding: k, as: UTF8.self).split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count == 3, f[2].hasPrefix("__SCT__"), let a = UInt64(f[0], radix: 16) else { continue }
            let bytes = (try? kcore.read(a, trampolineBytes)).map { b in b.map { Hex.number(UInt64($0), width: 2) }.joined() } ?? "?"
            out += "\(f[2]) \(Hex.number(a, width: 16)) \(bytes)\n"
            count += 1
        }
        return (out, count)
    }

    /// Everything the host needs from the running guest: the core's symbols and facts, then each
    /// loaded module's sections and executable bytes (read through /proc/kcore).
    static func collect(into tar: inout Tar.Writer, order: [String]) throws {
        let kallsyms = try FS.read("/proc/kallsyms", limit: 512 << 20)
        tar.add("kallsyms.txt", kallsyms)
        let wanted: Set<String> = ["_text", "_stext", "_etext", "boot_cpu_data", "pv_ops", "page_offset_base", "vmalloc_base",
                                   "vmemmap_base", "phys_base", "x86_return_thunk"]
        let syms = coreSymbols(kallsyms, wanted: wanted)
        let procModules = try collectSystemFacts(into: &tar)
        let kcore = try Kcore()
        try collectCoreFacts(into: &tar, kcore: kcore, syms: syms)
        var bases: [String: UInt64] = [:]
        for line in procModules.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count >= 6, let a = UInt64(f[5].dropFirst(2), radix: 16) { bases[String(f[0])] = a }
        }
        var sizes = ""
        for name in order {
            let sys = "/sys/module/" + name
            guard FS.isDirectory(sys + "/sections") else { continue }  // not loaded (the insmod log says why)
            var secs: [(String, String)] = []
            var addrs: [String: UInt64] = [:]
            for s in (try? FS.list(sys + "/sections")) ?? [] {
                let v = trimmed(readText(sys + "/sections/" + s))
                secs.append((s, ConsoleJSON.string(v)))
                if v.hasPrefix("0x"), let a = UInt64(v.dropFirst(2), radix: 16) { addrs[s] = a }
            }
            tar.add(name + "/sections.json", "{\n" + secs.map { " \(ConsoleJSON.string($0.0)): \($0.1)" }.joined(separator: ",\n") + "\n}\n")
            let coresize = trimmed(readText(sys + "/coresize")), initsize = trimmed(readText(sys + "/initsize"))
            let taint = trimmed(readText(sys + "/taint"))
            sizes += "\(name) \(coresize) \(initsize) \(taint)\n"

            try collectModuleText(into: &tar, kcore: kcore, name: name, addrs: addrs, base: bases[name],
                                  sizes: (coresize: coresize, initsize: initsize, taint: taint))
        }
        tar.add("sys_module_sizes.txt", sizes)
    }

    /// CPU model, flags and bugs, command line, CPUs, mitigations, loaded modules, taint, release,
    /// the kernel log. Returns /proc/modules.
    static func collectSystemFacts(into tar: inout Tar.Writer) throws -> String {
        let cpuinfo = readText("/proc/cpuinfo")
        tar.add("cpuinfo.txt", cpuinfo)
        for line in cpuinfo.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1)
            guard kv.count == 2 else { continue }
            let key = kv[0].split(separator: "\t").first.map { $0.trimmingBlanks(newlines: true) } ?? ""
            if key == "flags" { tar.add("cpuflags.txt", kv[1].trimmingBlanks(newlines: true) + "\n") }
            if key == "bugs" { tar.add("cpubugs.txt", kv[1].trimmingBlanks(newlines: true) + "\n") }
        }
        tar.add("cmdline.txt", readText("/proc/cmdline"))
        var cpus = ""
        for k in ["present", "possible", "online"] { cpus += "\(k) \(trimmed(readText("/sys/devices/system/cpu/\(k)")))\n" }
        tar.add("cpus.txt", cpus)
        var vul = ""
        let vdir = "/sys/devices/system/cpu/vulnerabilities"
        for f in (try? FS.list(vdir)) ?? [] { vul += "\(f): \(trimmed(readText(vdir + "/" + f)))\n" }
        tar.add("vulnerabilities.txt", vul)
        let procModules = readText("/proc/modules")
        tar.add("proc_modules.txt", procModules)
        tar.add("vmallocinfo.txt", readText("/proc/vmallocinfo"))
        tar.add("tainted.txt", readText("/proc/sys/kernel/tainted"))
        tar.add("uname.txt", trimmed(readText("/proc/sys/kernel/osrelease")) + " " + readText("/proc/sys/kernel/version"))
        tar.add("dmesg.txt", readKmsg())
        return procModules
    }

    /// The core's facts read from its memory: boot_cpu_data, pv_ops, and the kernel variables that
    /// place the core.
    static func collectCoreFacts(into tar: inout Tar.Writer, kcore: Kcore, syms: [String: UInt64]) throws {
        tar.add("kcore_phdrs.txt", kcore.loads.map { "vaddr=0x\(Hex.number($0.vaddr)) offset=0x\(Hex.number($0.offset)) size=0x\(Hex.number($0.size))" }.joined(separator: "\n") + "\n")
        guard let bcd = syms["boot_cpu_data"], let pv = syms["pv_ops"] else {
            throw CaptureToolError.guest("boot_cpu_data / pv_ops not in /proc/kallsyms (kptr_restrict?)")
        }
        tar.add("boot_cpu_data.bin", try kcore.read(bcd, Limits.bootCPUDataBytes))
        tar.add("pv_ops.bin", try kcore.read(pv, Limits.pvOpsBytes))
        var kvars = ""
        for n in ["_text", "_stext", "_etext", "boot_cpu_data", "pv_ops", "page_offset_base", "vmalloc_base", "vmemmap_base", "phys_base",
                  "x86_return_thunk"] {
            guard let a = syms[n] else { continue }
            let v = (try? kcore.read(a, 8)).map { b in b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) } }
            kvars += "\(n) 0x\(Hex.number(a)) \(v.map { "0x" + Hex.number($0, width: 16) } ?? "?")\n"
        }
        tar.add("kvars.txt", kvars)
    }

    /// One module's executable core region: [lowest exec core section, PAGE_ALIGN(end of the last)).
    static func collectModuleText(into tar: inout Tar.Writer, kcore: Kcore, name: String, addrs: [String: UInt64], base procBase: UInt64?,
                                  sizes: (coresize: String, initsize: String, taint: String)) throws {
        let ko = try FS.read(Paths.modules + "/" + name + ".ko", limit: 256 << 20)
        var lo = UInt64.max, hi: UInt64 = 0
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            for s in elf.sections where s.isAlloc && s.isExec && !s.name.hasPrefix(".init") && s.size > 0 {
                guard let a = addrs[s.name] else { continue }
                lo = min(lo, a)
                hi = max(hi, a + UInt64(s.size))
            }
        }
        guard lo != UInt64.max else {
            // A data-only module (e.g. cast_common: S-boxes only): no executable core section, so
            // nothing becomes executable. 6.12 leaves mem[MOD_TEXT].base NULL (/proc/modules shows
            // 0), 6.1 still has its core allocation. Recorded with an empty region so that
            // `execgate explain` judges it (signature, ELF, claim structure) instead of losing it.
            tar.add(name + "/core_text.bin", [UInt8]())
            tar.add(name + "/module.txt", ImageInfo.render([
                ("core_base", "0x" + Hex.number(procBase ?? 0)), ("text_base", "0x" + Hex.number(procBase ?? 0)), ("text_size", "0"),
                ("text_end_used", "0x" + Hex.number(procBase ?? 0)), ("coresize", sizes.coresize), ("initsize", sizes.initsize),
                ("taint", sizes.taint), ("data_only", "1"),
            ]))
            return
        }
        let base = procBase ?? lo
        if base != lo { log("warning: \(name): /proc/modules base 0x\(Hex.number(base)) != lowest exec section 0x\(Hex.number(lo))") }
        let size = (hi - lo + 4095) & ~UInt64(4095)
        guard size <= UInt64(Limits.maxTextBytes) else { throw CaptureToolError.guest("\(name): executable region of \(size) bytes") }
        tar.add(name + "/core_text.bin", try kcore.read(lo, Int(size)))
        tar.add(name + "/module.txt", ImageInfo.render([
            ("core_base", "0x" + Hex.number(base)), ("text_base", "0x" + Hex.number(lo)), ("text_size", "\(size)"),
            ("text_end_used", "0x" + Hex.number(hi)), ("coresize", sizes.coresize), ("initsize", sizes.initsize), ("taint", sizes.taint),
        ]))
    }

    /// Addresses of the wanted core (non-`[module]`) symbols; the first definition wins.
    static func coreSymbols(_ k: [UInt8], wanted: Set<String>) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        var lineStart = 0
        let n = k.count
        while lineStart < n {
            var e = lineStart
            while e < n && k[e] != 0x0A { e += 1 }
            // "<16 hex> <type> <name>[\t[module]]"
            let nameStart = lineStart + 19
            if nameStart < e, k[lineStart + 16] == 0x20, k[lineStart + 18] == 0x20 {
                var ne = nameStart
                while ne < e && k[ne] != 0x09 && k[ne] != 0x20 { ne += 1 }
                if ne == e {  // no [module] suffix
                    let name = String(decoding: k[nameStart..<ne], as: UTF8.self)
                    if wanted.contains(name), out[name] == nil,
                       let a = UInt64(String(decoding: k[lineStart..<lineStart + 16], as: UTF8.self), radix: 16) {
                        out[name] = a
                    }
                }
            }
            lineStart = e + 1
        }
        return out
    }

    /// The kernel log so far (/dev/kmsg records, non-blocking).
    static func readKmsg() -> String {
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while out.count < 8 << 20 {
            let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if r < 0 { if errno == EPIPE || errno == EINTR { continue }; break }
            if r == 0 { break }
            out += buf[0..<r]
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: - Transport

    static func loadTransport(_ names: [String]) throws {
        for name in names {
            let path = Paths.transport + "/" + name + ".ko"
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw CaptureToolError.guest("cannot open \(path)") }
            let rc = execgate_finit_module(fd, "", 0)
            let err = errno
            close(fd)
            if rc != 0 && err != EEXIST {
                throw CaptureToolError.guest("transport module \(name): \(String(cString: strerror(err)))")
            }
        }
        for _ in 0..<1500 where !FS.exists(Paths.disk) { usleep(10_000) }
        guard FS.exists(Paths.disk) else { throw CaptureToolError.guest("no \(Paths.disk) after loading the virtio transport") }
    }

    static func writeDisk(_ bytes: [UInt8]) throws {
        let fd = open(Paths.disk, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CaptureToolError.guest("cannot open \(Paths.disk): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0, Int(size) >= bytes.count else {
            throw CaptureToolError.guest("\(Paths.disk) holds \(size) bytes, the capture needs \(bytes.count)")
        }
        _ = lseek(fd, 0, SEEK_SET)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, min($0.count - off, 1 << 20)) }
            if n < 0 { if errno == EINTR { continue }; throw CaptureToolError.guest("write \(Paths.disk): \(String(cString: strerror(errno)))") }
            off += n
        }
        guard fsync(fd) == 0 else { throw CaptureToolError.guest("fsync \(Paths.disk): \(String(cString: strerror(errno)))") }
    }
}

/// /proc/kcore: an ELF core file whose PT_LOAD headers map kernel virtual addresses to (huge)
/// file offsets; read with a 64-bit pread at `p_offset + (addr - p_vaddr)`.
struct Kcore {
    struct Load { var vaddr: UInt64; var offset: UInt64; var size: UInt64 }
    let fd: Int32
    var loads: [Load] = []
    /// Program headers we accept (the kernel emits one per memory range; tens, not thousands).
    static let maxHeaders = 4096

    init(path: String = "/proc/kcore") throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CaptureToolError.guest("cannot open \(path): \(String(cString: strerror(errno)))") }
        let eh = try pread(0, 64)
        // Elf64_Ehdr: e_ident[16], e_type u16, e_machine u16, e_version u32, e_entry u64, e_phoff u64 (32),
        // e_shoff u64, e_flags u32, e_ehsize u16, e_phentsize u16 (54), e_phnum u16 (56).
        guard eh[0] == 0x7F, eh[1] == 0x45, eh[2] == 0x4C, eh[3] == 0x46, eh[4] == 2 else { throw CaptureToolError.guest("\(path) is not an ELF64 core") }
        let phoff = Kcore.le(eh, 32, 8), phentsize = Int(Kcore.le(eh, 54, 2)), phnum = Int(Kcore.le(eh, 56, 2))
        guard phentsize >= 56, phnum <= Kcore.maxHeaders else { throw CaptureToolError.guest("\(path): bad program header table") }
        let table = try pread(phoff, phentsize * phnum)
        for i in 0..<phnum {
            let p = i * phentsize
            // Elf64_Phdr: p_type u32, p_flags u32, p_offset u64 (8), p_vaddr u64 (16), p_paddr, p_filesz u64 (32).
            guard Kcore.le(table, p, 4) == 1 else { continue }
            loads.append(Load(vaddr: Kcore.le(table, p + 16, 8), offset: Kcore.le(table, p + 8, 8), size: Kcore.le(table, p + 32, 8)))
        }
    }

    func read(_ addr: UInt64, _ n: Int) throws -> [UInt8] {
        guard let l = loads.first(where: { addr >= $0.vaddr && addr - $0.vaddr < $0.size && addr - $0.vaddr + UInt64(n) <= $0.size }) else {
            throw CaptureToolError.guest("kcore: 0x\(Hex.number(addr))+\(n) is in no PT_LOAD segment")
        }
        return try pread(l.offset + (addr - l.vaddr), n)
    }

    private func pread(_ off: UInt64, _ n: Int) throws -> [UInt8] {
        guard off <= UInt64(Int64.max) else { throw CaptureToolError.guest("kcore offset 0x\(Hex.number(off)) too large") }
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + got, n - got, off_t(off) + off_t(got)) }
            if r < 0 { if errno == EINTR { continue }; throw CaptureToolError.guest("kcore read at 0x\(Hex.number(off)): \(String(cString: strerror(errno)))") }
            if r == 0 { throw CaptureToolError.guest("kcore: short read at 0x\(Hex.number(off))") }
            got += r
        }
        return out
    }

    static func le(_ b: [UInt8], _ at: Int, _ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<n where at + i < b.count { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }
}
