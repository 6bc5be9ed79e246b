// SPDX-License-Identifier: Apache-2.0
//
// Seeded structural fuzzing of the explainer past the ELF parser. The parser's own sweeps
// (ELFFileTests: truncation, corruption) stop at `ELFFile(bytes:)`; here every mutant the parser
// accepts goes through every stage (layout, relocations, module_finalize() tables, run-time sites,
// comparison, exports) with the claim an honest guest would send for it (the replay's own end
// state when the replay gets that far, else the real module's claim). What the stages read from a
// signed module is untrusted structure (a signing key the policy trusts can sign anything), so:
// - every mutant ends in a verdict — a trap here is a service crash in production;
// - every denial names its rule and a reason;
// - a verdict is a function of its inputs: explaining the same mutant twice gives the same one;
// - a mutant allowed with the honest claim is also allowed with that claim re-checked from
//   scratch, and denied once any byte of the claimed region outside the run-time sites is flipped
//   (an allow is never "whatever the claim says").
// Mutations are field-aware (section headers, symbols, relocation records, table contents) with
// edge values (0, ±1, powers of two, all-ones), so most survive the parser; the seed and
// iteration of a failing case are printed and replay exactly.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class StructuralFuzzTests: XCTestCase {
    /// A verdict as text with its dictionaries in a fixed order.
    static func canonical(_ v: Verdict) -> String {
        switch v {
        case .allowed(let s):
            let b = s.bytesByClass.map { "\($0.key)=\($0.value)" }.sorted(), n = s.sites.map { "\($0.key)=\($0.value)" }.sorted()
            return "allowed \(s.executableBytes) \(s.relocationsApplied) \(b) \(n)"
        case .denied(let d): return "denied \(d) (\(d.unexplainedBytes))"
        }
    }

    /// One mutation of the claim's structure (addresses and region sizes: what Session.init and
    /// the 6.12 base checks read); returns what it did.
    static func mutateClaim(_ c: inout ModuleClaim, _ rng: inout SeededRNG) -> String {
        switch rng.next() % 6 {
        case 0:
            let old = c.textBase
            c.textBase = ELFMutator.edgeValue(&rng, old: old, bytes: 8)
            return "textBase 0x\(String(old, radix: 16)) → 0x\(String(c.textBase, radix: 16))"
        case 1:
            c.percpuBase = ELFMutator.edgeValue(&rng, old: c.percpuBase ?? 0xffff_ffff_8300_0000, bytes: 8)
            return "percpuBase → 0x\(String(c.percpuBase!, radix: 16))"
        case 2:
            guard let k = c.sectionAddresses.keys.sorted().randomElement(using: &rng) else { return "none" }
            c.sectionAddresses[k] = ELFMutator.edgeValue(&rng, old: c.sectionAddresses[k]!, bytes: 8)
            return "section address \(k) → 0x\(String(c.sectionAddresses[k]!, radix: 16))"
        case 3:
            let t = ModuleMemoryType.allCases.randomElement(using: &rng)!
            c.memoryBases[t] = ELFMutator.edgeValue(&rng, old: c.memoryBases[t] ?? c.textBase, bytes: 8)
            return "memory base \(t) → 0x\(String(c.memoryBases[t]!, radix: 16))"
        case 4:
            c.initTextBase = ELFMutator.edgeValue(&rng, old: c.textBase &+ 0x10_0000, bytes: 8)
            c.initText = [UInt8](repeating: 0xcc, count: Int(rng.next() % 3) * 4096)
            return "init region 0x\(String(c.initTextBase!, radix: 16)) +\(c.initText!.count)"
        default:
            let n = c.text.count
            c.text = Array(c.text.prefix(Int(rng.next() % UInt64(n + 1))))
            return "text truncated \(n) → \(c.text.count)"
        }
    }

    func testMutantsEndInAConsistentVerdict() throws {
        let f = try FixtureReplay()
        let explainer = CraftedExplainer()
        let perModule = Int(ProcessInfo.processInfo.environment["EXECGATE_FUZZ_PER_MODULE"] ?? "") ?? 300
        let trace = ProcessInfo.processInfo.environment["EXECGATE_FUZZ_TRACE"] != nil  // each mutant named before it runs
        var allowed = 0, denied = 0, parserRefused = 0
        var rules: [String: Int] = [:]
        for (mi, name) in f.boot.availableModules.enumerated() {
            let e = try XCTUnwrap(f.modules[name])
            for it in 0..<perModule {
                let seed = 0x57f0_0000 &+ UInt64(mi) << 16 &+ UInt64(it)
                var rng = SeededRNG(seed: seed)
                var ed = KoEditor(ko: e.module.ko)
                var what = ELFMutator.mutate(&ed.ko, &rng)
                if rng.next() % 4 == 0 { what += "; " + (ELFMutator.mutate(&ed.ko, &rng)) }
                var tag = "\(name) seed 0x\(String(seed, radix: 16)): \(what)"
                guard (try? ed.elf { _ in () }) != nil else { parserRefused += 1; continue }
                if trace { FileHandle.standardError.write("fuzz: \(tag)\n".data(using: .utf8)!) }
                // The claim an honest guest would send for the mutant (or the real one).
                var claim = e.module.claim
                if let r = try? loaderImage(ed.ko, claim, f.boot.facts, e.before) { claim.text = r.image }
                if rng.next() % 5 == 0 { tag += "; claim " + Self.mutateClaim(&claim, &rng) }
                let first = try explainer.explain(f, name, ko: ed.ko, claim: claim)
                let again = try explainer.explain(f, name, ko: ed.ko, claim: claim)
                XCTAssertEqual(Self.canonical(first.verdict), Self.canonical(again.verdict), "not deterministic: \(tag)")
                switch first.verdict {
                case .denied(let d):
                    denied += 1
                    rules["\(d.rule)", default: 0] += 1
                    XCTAssertFalse(d.reason.isEmpty, "denial without a reason: \(tag)")
                case .allowed:
                    allowed += 1
                    if claim.text.isEmpty { continue }  // no executable byte to flip
                    // Flip one byte of the claim that no run-time site covers: denied.
                    let sites = first.runtimeSites
                    var k = Int(rng.next() % UInt64(claim.text.count))
                    var tries = 0
                    while tries < 64, let s = sites, s.covers(claim.textBase &+ UInt64(k)) { k = Int(rng.next() % UInt64(claim.text.count)); tries += 1 }
                    var bad = claim
                    bad.text[k] ^= 0x40
                    let r = try explainer.explain(f, name, ko: ed.ko, claim: bad)
                    XCTAssertFalse(r.verdict.isAllowed, "a byte of the claim flipped at +0x\(String(k, radix: 16)) is still allowed: \(tag)")
                }
            }
        }
        print("structural fuzz: \(allowed) allowed, \(denied) denied, \(parserRefused) refused by the parser; denial rules: \(rules.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(denied, 0)
        XCTAssertGreaterThan(allowed, 0)
    }
}


extension StructuralFuzzTests {
    /// The same on the 6.12 loader (per-type memory, 14-byte alt_instr, paravirt as alternatives,
    /// IBT seal): two Debian 6.12.117 modules, every import at a distinct kernel address
    /// (Loader612Tests' set-up), the claim the replay's own end state for each mutant.
    func testMutantsEndInAConsistentVerdict612() throws {
        let perModule = (Int(ProcessInfo.processInfo.environment["EXECGATE_FUZZ_PER_MODULE"] ?? "") ?? 300) / 2
        let trace = ProcessInfo.processInfo.environment["EXECGATE_FUZZ_TRACE"] != nil
        let facts = Loader612Tests.facts(caps: [Loader612Tests.always], pvOps: [UInt64](repeating: 0xffff_ffff_8123_4560, count: 83))
        var allowed = 0, denied = 0
        for (mi, name) in ["8021q", "tun"].enumerated() {
            let ko = try Loader612Tests.module612(name)
            var exports: [String: UInt64] = ["pv_ops": 0xffff_ffff_8300_0000, "BUG_func": 0xffff_ffff_8200_0000, "nop_func": 0xffff_ffff_8200_0040]
            let textSize: Int = try ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty && exports[s.name] == nil {
                    exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
                }
                return try XCTUnwrap(ModuleLayout.compute612(elf)).textSize
            }
            let resolver = SymbolResolver(coreExports: exports)
            var base = ModuleClaim(name: name, textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: textSize), sectionAddresses: [:])
            base.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
            func explain(_ ko: [UInt8], _ claim: ModuleClaim) throws -> ExplainResult {
                try ko.withUnsafeBytes { Explainer(facts: facts).explain(elf: try ELFFile(bytes: $0), claim: claim, resolver: resolver) }
            }
            for it in 0..<perModule {
                let seed = 0x612f_0000 &+ UInt64(mi) << 16 &+ UInt64(it)
                var rng = SeededRNG(seed: seed)
                var ed = KoEditor(ko: ko)
                var what = ELFMutator.mutate(&ed.ko, &rng)
                if rng.next() % 4 == 0 { what += "; " + (ELFMutator.mutate(&ed.ko, &rng)) }
                var tag = "6.12 \(name) seed 0x\(String(seed, radix: 16)): \(what)"
                guard (try? ed.elf { _ in () }) != nil else { continue }
                if trace { FileHandle.standardError.write("fuzz: \(tag)\n".data(using: .utf8)!) }
                var claim = base
                if let r = try? loaderImage(ed.ko, claim, facts, resolver) { claim.text = r.image }
                if rng.next() % 5 == 0 { tag += "; claim " + Self.mutateClaim(&claim, &rng) }
                let first = try explain(ed.ko, claim), again = try explain(ed.ko, claim)
                XCTAssertEqual(Self.canonical(first.verdict), Self.canonical(again.verdict), "not deterministic: \(tag)")
                if case .denied(let d) = first.verdict { denied += 1; XCTAssertFalse(d.reason.isEmpty, tag); continue }
                allowed += 1
                if claim.text.isEmpty { continue }
                var k = Int(rng.next() % UInt64(claim.text.count)), tries = 0
                while tries < 64, let s = first.runtimeSites, s.covers(claim.textBase &+ UInt64(k)) { k = Int(rng.next() % UInt64(claim.text.count)); tries += 1 }
                var bad = claim
                bad.text[k] ^= 0x40
                XCTAssertFalse(try explain(ed.ko, bad).verdict.isAllowed, "a byte of the claim flipped at +0x\(String(k, radix: 16)) is still allowed: \(tag)")
            }
        }
        print("structural fuzz 6.12: \(allowed) allowed, \(denied) denied")
        XCTAssertGreaterThan(allowed, 0)
        XCTAssertGreaterThan(denied, 0)
    }
}

/// Cases the structural fuzz found, each its own test.
final class StructuralFuzzFindingsTests: XCTestCase {
    /// Found by `StructuralFuzzTests` (ip6_udp_tunnel seed 0x57f00aea): `__ksymtab_gpl` with
    /// sh_type SHT_NULL. The parser gives an SHT_NULL section no contents (nothing to bounds-check),
    /// but SHF_ALLOC still lays it out; the stages then copied "its contents" (none) for its
    /// sh_size and trapped on the length mismatch: a service crash. The kernel
    /// (`elf_validity_check()` in 6.1, `elf_validity_cache_sechdrs()` in 6.12) skips SHT_NULL
    /// sections when it checks section offsets, yet `move_module()` copies every SHF_ALLOC section
    /// that is not SHT_NOBITS, `sh_size` bytes from an `sh_offset` nobody checked: bytes no signed
    /// file accounts for. Denied, naming the section; no real module has one.
    func testAnAllocatedNullSectionIsDeniedNotTrapped() throws {
        let f = try FixtureReplay()
        for (name, section) in [("ip6_udp_tunnel", "__ksymtab_gpl"), ("llc", ".text"), ("8021q", ".data")] {
            var ed = KoEditor(ko: try XCTUnwrap(f.modules[name]).module.ko)
            let i = try ed.sectionIndex(section)
            ed.put(UInt32(0), at: ed.sectionHeader(i) + 4)  // sh_type = SHT_NULL
            let d = try XCTUnwrap(denial(try CraftedExplainer().explain(f, name, ko: ed.ko)), "\(name) \(section)")
            XCTAssertEqual(d.rule, .malformedELF, d.description)
            XCTAssertEqual(d.section, section, d.description)
            XCTAssertTrue(d.reason.contains("SHT_NULL"), d.reason)
        }
    }
}

extension RuntimeSiteTable {
    /// Whether a run-time site (whose bytes may legally take several values) covers `address`.
    func covers(_ address: UInt64) -> Bool {
        for (start, site) in sites where address >= start && address - start < UInt64(site.length) { return true }
        return false
    }
}
