// SPDX-License-Identifier: Apache-2.0
//
// A capture as the protocol messages a VMM would send: one register-guest for the boot, one
// authorize-module per loaded module. `execgate explain` and the tests replay captures through
// these messages and the same `Verifier` the service runs, so offline results and served verdicts
// come from one code path.
//
// Only what a VMM could know goes into the messages (see CaptureReader.swift): core kallsyms lines
// (never `[module]` lines — per-cpu bases aside, which are a layout claim checked by the engine),
// boot_cpu_data, cpus, cmdline, pv_ops, slide, vulnerabilities; per module the signed .ko, the
// section addresses, the per-cpu base and the executable region.

import ExecGateExplain
import ExecGateVerifier
import ExecGateWire
import NIOCore

extension CaptureBoot {
    /// The register-guest message for this boot.
    public func registration(guestID: String) throws -> RegisterGuest { try Self.registration(dir: dir, guestID: guestID) }

    /// The register-guest message for the boot in `dir`.
    static func registration(dir: String, guestID: String) throws -> RegisterGuest {
        var exported = Set<Substring>()
        var records: [(address: UInt64, type: UInt8, name: Substring)] = []
        let ks = try readFile(dir + "/kallsyms.txt", limit: CaptureLimits.kallsyms)
        for line in String(decoding: ks, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count == 3, let a = UInt64(f[0], radix: 16), let t = f[1].utf8.first else { continue }  // 4 fields = [module]
            if f[2].hasPrefix("__ksymtab_") { exported.insert(f[2].dropFirst(10)) }
            records.append((a, t, f[2]))
        }
        // Which definition an exported name resolves to: its global (upper-case) one, else the first.
        var exportIndex: [Substring: Int] = [:]
        for (i, r) in records.enumerated() where exported.contains(r.name) {
            let upper = r.type >= 65 && r.type <= 90
            if let j = exportIndex[r.name] {
                if upper && !(records[j].type >= 65 && records[j].type <= 90) { exportIndex[r.name] = i }
            } else {
                exportIndex[r.name] = i
            }
        }
        // Keep what the engine can use: every text symbol (legal static-call targets, duplicates by
        // name included), the chosen definition of each export, and the named helpers.
        // Static-call keys (`__SCK__*`: StaticCallTrust maps them to trusted targets), the core's
        // init bounds (freed init memory), the rodata/data gap's bounds (freed by
        // mark_rodata_ro()) and `.data..ro_after_init`'s (sealed static keys) are facts of the
        // build's symbol map too (protocol.md "Symbols the VMM must send").
        // The names are the verifier's own list (ExecGateWire RegistrationSymbols), never a copy.
        let helpers = Set(RegistrationSymbols.all.map { Substring($0) })
        let text: Set<UInt8> = [UInt8(ascii: "t"), UInt8(ascii: "T"), UInt8(ascii: "w"), UInt8(ascii: "W")]
        var symbols: [KernelSymbol] = []
        var helperSeen = Set<Substring>()
        for (i, r) in records.enumerated() {
            let isExport = exportIndex[r.name] == i
            let isHelper = (helpers.contains(r.name) || r.name.hasPrefix("__SCK__")) && helperSeen.insert(r.name).inserted
            guard isExport || isHelper || text.contains(r.type) else { continue }
            symbols.append(KernelSymbol(name: String(r.name), address: r.address, type: r.type, exported: isExport))
        }
        // The kernel release (`uname.txt`: osrelease first, or `uname -a` in older captures) picks
        // the loader row, and with it where `x86_capability[]` sits in `struct cpuinfo_x86`
        // (0x28 on 6.1, 0x30 on 6.12: BTF, docs/kernels/6.12-loader.md §2.3). An unknown release
        // is still sent: the engine then denies its modules naming it.
        let release = try Self.kernelRelease(dir: dir)
        var capOffset = ModuleLoader.linux6_1.capabilityOffset
        if let r = release, case .success(let l) = ModuleLoader.forRelease(r) { capOffset = l.capabilityOffset }
        let capEnd = capOffset + 96
        let cpu = try readFile(dir + "/boot_cpu_data.bin", limit: CaptureLimits.smallFile)
        guard cpu.count >= capEnd else { throw CaptureError(path: dir + "/boot_cpu_data.bin", reason: "shorter than \(capEnd) bytes") }
        let (present, possible) = try Self.cpuCounts(dir + "/cpus.txt")
        var slide: UInt64 = 0
        if let s = try readOptionalText(dir + "/slide.txt") {
            for l in s.split(whereSeparator: \.isNewline) where l.hasPrefix("slide ") { slide = parseHex(l.dropFirst(6)) ?? 0 }
        }
        // `x86_return_thunk` is __ro_after_init: a VMM may read it from locked guest memory; the
        // capture records it in kvars.txt (`name kallsyms_address u64_value`) when it did.
        var returnThunk: UInt64? = nil
        if let kv = try readOptionalText(dir + "/kvars.txt") {
            for l in kv.split(whereSeparator: \.isNewline) {
                let f = l.split(separator: " ")
                if f.count >= 3, f[0] == "x86_return_thunk" { returnThunk = parseHex(f[2]) }
            }
        }
        // `pv_ops.bin` holds the first 4096 bytes from `pv_ops`; the table ends at the next symbol
        // (corpus README). The VMM sends exactly the table: the bytes after it are other data.
        var pvOps = try readOptionalFile(dir + "/pv_ops.bin") ?? []
        if let start = records.first(where: { $0.name == "pv_ops" })?.address,
           let next = records.lazy.map(\.address).filter({ $0 > start }).min(), next - start < UInt64(pvOps.count) {
            pvOps = Array(pvOps[..<Int(next - start)])
        }
        // The core's static-call trampolines the guest read at the trusted point (before its first
        // module): a key moved from the build's default (a `trace_event=` probe) is sent as the
        // VMM sends it, `static_call_key` with its current target (CoreTrampolines.swift). A
        // capture without the file (older captures, the shared corpus) sends none.
        let keys = try Self.staticCallTrampolines(dir: dir, symbols: symbols, returnThunk: returnThunk)?.facts ?? []
        return RegisterGuest(
            guestID: guestID, kernelRelease: release ?? "", kaslrSlide: slide, cpuCapabilities: Array(cpu[capOffset..<capEnd]), symbols: symbols,
            symbolSource: "capture", commandLine: try readOptionalText(dir + "/cmdline.txt") ?? "", presentCPUs: present,
            possibleCPUs: possible, vulnerabilities: try readOptionalText(dir + "/vulnerabilities.txt") ?? "",
            pvOps: pvOps, returnThunk: returnThunk, staticCallKeys: keys)
    }

    /// What the registration of the boot in `dir` sends from its core trampolines, and what it
    /// leaves out (nil: the capture has no trampoline file).
    public static func staticCallTrampolines(dir: String) throws -> CoreTrampolines.Outcome? {
        let r = try registration(dir: dir, guestID: "capture")
        return try staticCallTrampolines(dir: dir, symbols: r.symbols, returnThunk: r.returnThunk)
    }

    static func staticCallTrampolines(dir: String, symbols: [KernelSymbol], returnThunk: UInt64?) throws -> CoreTrampolines.Outcome? {
        let path = dir + "/" + CoreTrampolines.fileName
        guard let text = try readOptionalText(path) else { return nil }
        var named: [String: UInt64] = [:]
        var entries = Set<UInt64>()
        for s in symbols {
            if named[s.name] == nil { named[s.name] = s.address }
            if s.isText { entries.insert(s.address) }
        }
        return CoreTrampolines.outcome(try CoreTrampolines.parse(text, path: path), named: named, functionEntries: entries, returnThunk: returnThunk)
    }
}

extension CaptureBoot {
    /// The present and possible CPU counts of `cpus.txt`, which the capture's guest writes as
    /// one `KEY LIST` line each for `present`, `possible` and `online`, LIST as the kernel prints
    /// `/sys/devices/system/cpu/KEY` (cpumap_print_to_pagebuf()). docs/capture.md: anything else is
    /// invalid input. A line of another shape or key, a key given twice, a list that is no cpulist
    /// or no `present`/`possible` line is refused (they were skipped, and a missing count taken as
    /// one CPU: a uniprocessor guest the capture never described).
    static func cpuCounts(_ path: String) throws -> (present: UInt32, possible: UInt32) {
        var counts: [Substring: Int] = [:]
        for (i, l) in try readText(path).split(whereSeparator: \.isNewline).enumerated() {
            let f = l.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count == 2, ["present", "possible", "online"].contains(f[0]) else {
                throw CaptureError(path: path, reason: "line \(i + 1) is not 'present|possible|online CPULIST'")
            }
            guard counts[f[0]] == nil else { throw CaptureError(path: path, reason: "\(f[0]) given twice") }
            guard let n = countCPUs(f[1]) else {
                throw CaptureError(path: path, reason: "\(f[0]): not a CPU list the kernel prints (decimal CPUs and ranges below NR_CPUS = \(capturedKernelMaximumCPUs), lowest first, no CPU twice)")
            }
            counts[f[0]] = n
        }
        guard let present = counts["present"], let possible = counts["possible"] else {
            throw CaptureError(path: path, reason: "no \(counts["present"] == nil ? "present" : "possible") CPU list")
        }
        return (UInt32(present), UInt32(possible))
    }

    /// The guest's kernel release from `uname.txt` (`<osrelease> <version>`, or `uname -a`:
    /// `Linux <host> <osrelease> ...`); nil when the capture has none (the committed fixture).
    /// Absent is nil; one that is there but refused (not a regular file, over `smallFile`) is
    /// invalid input, never taken as absent (docs/capture.md), as every optional capture file.
    static func kernelRelease(dir: String) throws -> String? {
        guard let u = try readOptionalText(dir + "/uname.txt") else { return nil }
        let w = u.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        guard let first = w.first else { return nil }
        if first == "Linux", w.count >= 3 { return String(w[2]) }
        return String(first)
    }
}

extension CapturedModule {
    /// The authorize-module message for this module in guest `guestID`.
    public func request(guestID: String) -> AuthorizeModule {
        AuthorizeModule(
            guestID: guestID, module: ByteBuffer(bytes: ko),
            sections: claim.sectionAddresses.sorted { $0.key < $1.key }.map { SectionClaim(name: $0.key, address: $0.value) },
            perCPUBase: claim.percpuBase, moduleName: name, textBase: claim.textBase, text: claim.textBytes.withUnsafeBytes { ByteBuffer(bytes: $0) },
            frames: replayFrames)
    }

    /// A capture records no guest-physical addresses (it reads /proc/kcore by virtual address), so
    /// an offline replay names each page of the region by the low 32 bits of its virtual page
    /// number (a frame number is below 2^40, `WireLimits.frameNumberLimit`; 32 bits leave room
    /// for tests that move frames): one-to-one over any 16 TiB of addresses, the module area
    /// included, which keeps the frame checks (one per page, none twice, none shared with live
    /// code) meaningful. A VMM sends the real frames it grants EXEC on.
    public var replayFrames: [UInt64] {
        let pages = (claim.text.count + 4095) / 4096
        return (0..<pages).map { ((claim.textBase >> 12) &+ UInt64($0)) & 0xffff_ffff }
    }
}

extension CaptureBoot {
    /// Why the service would refuse this boot's registration (`GuestRegistry.register`: CPU
    /// counts, the slide, the build's symbols, the guest's own facts — FactsPlausibility), nil
    /// when it registers. A capture is untrusted input (docs/capture.md), and `explain` judges
    /// with the facts a registration of it gives (CaptureReader): it refuses a capture the
    /// service refuses, so an offline allow never rests on facts the served path rejects (a
    /// capture whose kvars.txt made `x86_return_thunk` another core function was explained,
    /// allow, its returns rewritten into jumps there, while `policy test` refused it
    /// implausible-facts).
    public func registrationRefusal() -> String? {
        let r: RegisterGuest
        do { r = try registration(guestID: "capture") } catch { return "\(error)" }
        if case .refused(let code, let why) = GuestRegistry(maximumGuests: 1).register(r) { return "\(code): \(why)" }
        return nil
    }
}
