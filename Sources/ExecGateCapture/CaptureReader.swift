// SPDX-License-Identifier: Apache-2.0
//
// Reads one boot of a capture (`<corpus>/<boot>/`, see corpus/README.md) into the explanation
// engine's inputs. Only what a real VMM could know is used:
//   trusted facts  — core kernel symbols (kallsyms lines WITHOUT `[module]`: exports via their
//                    `__ksymtab_<name>` lines, function entries for static-call targets),
//                    `boot_cpu_data.bin` (x86_capability), `cpus.txt`, `cmdline.txt`, `pv_ops.bin`,
//                    `slide.txt`;
//   the claim      — each module's `core_text.bin`, `layout.json` base, `sections.json` addresses
//                    and (for per-cpu modules) the per-cpu base;
//   the evidence   — the signed `.ko`.
// Never used: `data/` snapshots, `jump_table.txt`/`static_calls.txt` (run-time state), and the
// `[module]` kallsyms lines except to recover the guest's per-cpu base claim, which the engine
// then checks for consistency against every per-cpu relocation like any other claimed address.

import ExecGateELF
import ExecGateExplain
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct CaptureError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

func readFile(_ path: String) throws -> [UInt8] {
    guard let f = fopen(path, "rb") else { throw CaptureError(path: path, reason: "cannot open") }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, 1 << 16, f) }
        if n > 0 { out.append(contentsOf: buf[0..<n]) }
        if n < 1 << 16 { break }
    }
    if ferror(f) != 0 { throw CaptureError(path: path, reason: "read error") }
    return out
}

func readText(_ path: String) throws -> String { String(decoding: try readFile(path), as: UTF8.self) }


func fileExists(_ path: String) -> Bool { access(path, R_OK) == 0 }

func parseHex(_ s: Substring) -> UInt64? {
    var t = s
    if t.hasPrefix("0x") { t = t.dropFirst(2) }
    return UInt64(t, radix: 16)
}

/// A CPU list in the kernel's format ("0", "0-3,5") → count.
func countCPUs(_ list: Substring) -> Int {
    var n = 0
    for part in list.split(separator: ",") {
        let r = part.split(separator: "-")
        if r.count == 2, let a = Int(r[0]), let b = Int(r[1]), b >= a { n += b - a + 1 } else if Int(part) != nil { n += 1 }
    }
    return n
}

/// One boot of a capture.
public struct CaptureBoot {
    public let dir: String
    public let facts: GuestFacts
    public let coreExports: [String: UInt64]
    public let loadOrder: [String]
    /// `[module]` kallsyms lines with small (per-cpu offset) addresses: module → name → address.
    let percpuSymbols: [String: [String: UInt64]]

    public static func load(_ dirIn: String) throws -> CaptureBoot {
        var dir = dirIn
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        let parent = dir.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let orderPath = fileExists(dir + "/load-order.txt") ? dir + "/load-order.txt" : parent + "/load-order.txt"
        let order: [String] = try readText(orderPath).split(whereSeparator: \.isNewline).compactMap { (l: Substring) -> String? in
            guard let w = l.split(separator: " ").first else { return nil }
            return String(w.map { $0 == "-" ? "_" : $0 })
        }

        // kallsyms: core lines are trusted facts (the measured build + slide).
        var exported: Set<String> = []
        var upper: [String: UInt64] = [:], any: [String: UInt64] = [:]
        var funcs: Set<UInt64> = []
        var percpu: [String: [String: UInt64]] = [:]
        let ks = try readFile(dir + "/kallsyms.txt")
        var lineStart = 0
        while lineStart < ks.count {
            var e = lineStart
            while e < ks.count && ks[e] != 0x0a { e += 1 }
            let line = String(decoding: ks[lineStart..<e], as: UTF8.self)
            lineStart = e + 1
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 3, let a = UInt64(f[0], radix: 16) else { continue }
            let type = f[1], name = String(f[2])
            if f.count >= 4 {
                if a < 1 << 32 {
                    let m = String(f[3].dropFirst().dropLast())
                    percpu[m, default: [:]][name] = a
                }
                continue
            }
            if name.hasPrefix("__ksymtab_") { exported.insert(String(name.dropFirst(10))) }
            if type.first!.isUppercase { if upper[name] == nil { upper[name] = a } }  // split() never yields empty fields
            if any[name] == nil { any[name] = a }
            if type == "t" || type == "T" || type == "w" || type == "W" { funcs.insert(a) }
        }
        var exports: [String: UInt64] = [:]
        for n in exported { if let a = upper[n] ?? any[n] { exports[n] = a } }

        let cpu = try readFile(dir + "/boot_cpu_data.bin")
        // struct cpuinfo_x86 of this build: x86_capability[NCAPINTS + NBUGINTS] at byte 40..136.
        guard cpu.count >= 136 else { throw CaptureError(path: dir + "/boot_cpu_data.bin", reason: "shorter than 136 bytes") }
        var caps: [UInt32] = []
        for w in 0..<24 {
            let o = 40 + 4 * w
            caps.append(UInt32(cpu[o]) | UInt32(cpu[o + 1]) << 8 | UInt32(cpu[o + 2]) << 16 | UInt32(cpu[o + 3]) << 24)
        }
        var present = 1, possible = 1
        for l in try readText(dir + "/cpus.txt").split(whereSeparator: \.isNewline) {
            let f = l.split(separator: " ")
            guard f.count == 2 else { continue }
            if f[0] == "present" { present = countCPUs(f[1]) }
            if f[0] == "possible" { possible = countCPUs(f[1]) }
        }
        let cmdline = (try? readText(dir + "/cmdline.txt")) ?? ""
        let args = cmdline.split(whereSeparator: { $0 == " " || $0 == "\n" })
        var maxcpus = Int.max
        for a in args {
            if a == "nosmp" { maxcpus = 0 }
            if a.hasPrefix("maxcpus="), let v = Int(a.dropFirst(8)) { maxcpus = v }
        }
        // alternative_instructions(): if (!noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1))
        let up = !args.contains("noreplace-smp") && (present == 1 || maxcpus <= 1)
        var pv: [UInt64] = []
        if let p = try? readFile(dir + "/pv_ops.bin") {
            var o = 0
            while o + 8 <= p.count {
                var v: UInt64 = 0
                for k in 0..<8 { v |= UInt64(p[o + k]) << (8 * UInt64(k)) }
                pv.append(v)
                o += 8
            }
        }
        var slide: UInt64 = 0
        if let s = try? readText(dir + "/slide.txt") {
            for l in s.split(whereSeparator: \.isNewline) where l.hasPrefix("slide ") { slide = parseHex(l.dropFirst(6)) ?? 0 }
        }
        // `x86_return_thunk` is __ro_after_init: a VMM may read it from locked guest memory. Use it
        // when the capture recorded it (kvars.txt: `name kallsyms_address u64_value`).
        var returnThunk: UInt64? = nil
        if let kv = try? readText(dir + "/kvars.txt") {
            for l in kv.split(whereSeparator: \.isNewline) {
                let f = l.split(separator: " ")
                if f.count >= 3, f[0] == "x86_return_thunk" { returnThunk = parseHex(f[2]) }
            }
        }
        // pcpu reserved chunk for modules: [__per_cpu_end, + PERCPU_MODULE_RESERVE (8 KiB)).
        let percpuRange: Range<UInt64>? = any["__per_cpu_end"].map { $0..<($0 + (8 << 10)) }
        var facts = GuestFacts(exports: exports, capabilities: caps, uniprocessorPatched: up, possibleCPUs: possible, pvOps: pv,
                               paravirtNop: any["_paravirt_nop"], paravirtBUG: any["paravirt_BUG"], functionEntries: funcs,
                               staticCallReturn0: any["__static_call_return0"], staticCallReturn: any["__static_call_return"],
                               returnThunk: returnThunk, itsReturnThunk: any["its_return_thunk"], kaslrSlide: slide)
        facts.modulePercpuRange = percpuRange
        return CaptureBoot(dir: dir, facts: facts, coreExports: exports, loadOrder: order, percpuSymbols: percpu)
    }

    /// The signed module bytes and the guest's claim for one module.
    public func module(_ name: String) throws -> CapturedModule {
        let mdir = dir + "/" + name
        struct CoreText: Decodable { let base: String }
        struct Layout: Decodable { let ko: String; let core_text: CoreText }
        let lj: Layout
        do { lj = try JSONDecoder().decode(Layout.self, from: Data(try readFile(mdir + "/layout.json"))) } catch {
            throw CaptureError(path: mdir + "/layout.json", reason: "missing ko / core_text.base: \(error)")
        }
        guard let base = parseHex(Substring(lj.core_text.base)) else { throw CaptureError(path: mdir + "/layout.json", reason: "bad core_text.base") }
        let koName = lj.ko
        let ko = try readFile(mdir + "/" + koName)
        let text = try readFile(mdir + "/core_text.bin")
        var secs: [String: UInt64] = [:]
        do {
            let sj = try JSONDecoder().decode([String: String].self, from: Data(try readFile(mdir + "/sections.json")))
            for (k, v) in sj { if let a = parseHex(Substring(v)) { secs[k] = a } }
        } catch { throw CaptureError(path: mdir + "/sections.json", reason: "\(error)") }
        // Per-cpu base claim: kallsyms address of one of the module's per-cpu symbols minus its
        // offset in `.data..percpu` (the engine checks it against every per-cpu relocation).
        var percpuBase: UInt64? = nil
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            guard let pc = elf.section(named: ".data..percpu"), let table = percpuSymbols[name] else { return }
            for s in try elf.symbols() where Int(s.sectionIndex) == pc.index && !s.name.isEmpty && s.type != 3 {
                if let a = table[s.name] { percpuBase = a &- s.value; break }
            }
        }
        return CapturedModule(name: name, ko: ko, claim: ModuleClaim(name: name, textBase: base, text: text, sectionAddresses: secs, percpuBase: percpuBase))
    }

    public var availableModules: [String] { loadOrder.filter { fileExists(dir + "/" + $0 + "/layout.json") } }
}

public struct CapturedModule {
    public let name: String
    public let ko: [UInt8]
    public let claim: ModuleClaim
}
