// SPDX-License-Identifier: Apache-2.0
//
// The mutation tester: derive hostile claims from a genuine, allowed one and check that every one
// is denied. One false accept is a release blocker.
//
// Classes:
//   byte-flip        any byte of the executable region XOR a random non-zero value
//   reloc-redirect   a relocation to an exported symbol re-pointed at another export
//   jump-label       a jump-label site's jump sent to another target
//   alternative      an alternative applied whose CPU feature the guest lacks
//   return-thunk     a patched return site turned into a jump to another thunk
//   static-call      a static-call site (inline or trampoline) sent to a non-function address
//   static-call-retarget  ... sent to another function entry not trusted for the site's key
//   static-call-init      ... sent to a function in the core kernel's freed init text
//   static-call-named     ... sent to a named core symbol an attacker wants (entry-code labels
//                    such as native_irq_return_iret, commit_creds, native_write_cr4, srso_safe_ret,
//                    start_kernel, _etext; given by the caller as `probeTargets`)
//   padding          a zero padding byte made non-zero
// Every allowed static-call mutation is a false accept: a retarget is legal only when the trusted
// facts make the target legal for that key, and the retarget classes never pick such a target.
// A byte flip or a redirected relocation inside a run-time site (jump label, static call, ftrace)
// can land on another state that the trusted facts make legal (a whole single-site key flipped);
// only then it is counted as `legalAlternative` (the site's own check accepted the bytes), never
// because "some function" was hit. (Cross-module overlap is a session property — which module owns
// an address — and is tested where live ranges are kept, not by this per-module engine.)

import ExecGateELF

public struct MutationClassReport: Sendable {
    public var name: String
    public var tried = 0
    public var denied = 0
    public var legalAlternative = 0
    public var falseAccepts: [String] = []
    /// FNV-1a 64 over the denial texts of this class's denied mutations, in order (each text
    /// followed by its unexplained-byte count): a regression check that denials stay
    /// byte-identical across engine changes (ExplainCorpusDigestTests).
    public var denialDigest: UInt64 = 0xcbf2_9ce4_8422_2325
}

public struct MutationReport: Sendable {
    public var classes: [MutationClassReport] = []
    public init() {}
    public var falseAcceptCount: Int { classes.reduce(0) { $0 + $1.falseAccepts.count } }
}

/// SplitMix64: deterministic, seedable.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}

extension Explainer {
    /// The most mutations of one class tried on one module (`explain --mutate` accepts 0…this).
    public static let maximumMutationsPerClass = 100_000

    /// Run up to `perClass` mutations of each class on an allowed claim.
    public func mutate(elf: ELFFile, claim: ModuleClaim, resolver: SymbolResolver, perClass: Int, seed: UInt64,
                       probeTargets: [String: UInt64] = [:]) -> MutationReport {
        var report = MutationReport()
        // A data-only module has no executable byte to mutate. A count below 1 tries nothing, and
        // above `maximumMutationsPerClass` is cut there (`0..<-1` trapped; `perClass * 3` overflowed).
        if claim.text.isEmpty || perClass < 1 { return report }
        let perClass = min(perClass, Self.maximumMutationsPerClass)
        guard let s = try? Session(elf: elf, claim: claim, factsBox: box, resolver: resolver) else { return report }
        s.recordRelocationFields = true  // reloc-redirect picks from them
        guard (try? s.run()) != nil else { return report }
        var rng = SplitMix64(state: seed)
        let variable = s.variable

        func attempt(_ r: inout MutationClassReport, _ text: [UInt8], _ what: String, legalIfIn range: Range<Int>? = nil) {
            guard text != claim.text else { return }
            r.tried += 1
            var c = claim
            c.text = text
            let v = explain(elf: elf, claim: c, resolver: resolver).verdict
            if case .denied(let d) = v {
                r.denied += 1
                for b in "\(d) #\(d.unexplainedBytes)\n".utf8 { r.denialDigest = (r.denialDigest ^ UInt64(b)) &* 0x100_0000_01b3 }
                return
            }
            // Legal only if the run-time site the mutation hit accepts the new bytes by its rule
            // (its legal set under the trusted facts) — the engine allowed them, so check why.
            if let rg = range, let v = variable.first(where: { ($0.offset..<($0.offset + $0.length)).overlaps(rg) }),
               v.check(Array(text[v.offset..<v.offset + v.length])) != nil {
                r.legalAlternative += 1
                return
            }
            r.falseAccepts.append("\(r.name): \(what)")
        }
        func put(_ text: inout [UInt8], _ off: Int, _ b: [UInt8]) { for (k, x) in b.enumerated() { text[off + k] = x } }

        // byte-flip: anywhere in the executable region.
        var flip = MutationClassReport(name: "byte-flip")
        for _ in 0..<perClass {
            var t = claim.text
            let o = rng.below(t.count)
            let x = UInt8(1 + rng.below(255))
            t[o] ^= x
            attempt(&flip, t, "offset 0x\(String(o, radix: 16)) ^= 0x\(String(x, radix: 16))", legalIfIn: o..<o + 1)
        }
        report.classes.append(flip)

        // reloc-redirect: PC32/PLT32/32S/64 fields to an undefined (exported) symbol.
        var rel = MutationClassReport(name: "reloc-redirect")
        let exportAddrs = Array(Set(resolver.exports.values)).sorted()
        let relocs = s.relocFields.filter { s.symtab.isUndefined($0.symbol) }
        if !relocs.isEmpty && exportAddrs.count > 1 {
            for _ in 0..<perClass {
                let f = relocs[rng.below(relocs.count)]
                let cur = (try? s.symbolValue(f.symbol)) ?? 0
                var other = exportAddrs[rng.below(exportAddrs.count)]
                if other == cur { other = exportAddrs[(exportAddrs.firstIndex(of: other)! + 1) % exportAddrs.count] }  // count > 1
                var v = other &+ UInt64(bitPattern: f.addend)
                if f.type == .pc32 || f.type == .plt32 || f.type == .pc64 { v = v &- f.place }
                var t = claim.text
                for k in 0..<f.size { t[f.off + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
                attempt(&rel, t, "\(f.type) of \(s.symtab.name(f.symbol)) → 0x\(String(other, radix: 16))", legalIfIn: f.off..<f.off + f.size)
            }
        }
        report.classes.append(rel)

        // jump-label: jump to another target (another site's target, or target ± 1).
        var jl = MutationClassReport(name: "jump-label")
        if !s.jumpSites.isEmpty {
            for _ in 0..<perClass {
                let j = s.jumpSites[rng.below(s.jumpSites.count)]
                let alt = s.jumpSites[rng.below(s.jumpSites.count)].target
                let tgt = alt != j.target ? alt : j.target &+ UInt64(1 + rng.below(16))
                guard let b = genInsn(j.size == 2 ? 0xeb : 0xe9, at: j.code, to: tgt), b.count == j.size else { continue }
                var t = claim.text
                put(&t, j.off, b)
                attempt(&jl, t, "site 0x\(String(j.code, radix: 16)) → 0x\(String(tgt, radix: 16))")
            }
        }
        report.classes.append(jl)

        // alternative: apply a replacement whose feature the guest lacks.
        var al = MutationClassReport(name: "alternative")
        let notApplied = s.altSites.filter { !$0.applied && $0.len > 0 }
        if !notApplied.isEmpty {
            var tries = 0
            while tries < perClass * 3 && al.tried < perClass {
                tries += 1
                let a = notApplied[rng.below(notApplied.count)]
                var f2 = facts
                let w = a.feature >> 5
                guard w < f2.capabilities.count else { continue }
                f2.capabilities[w] ^= 1 << UInt32(a.feature & 31)
                guard let s2 = try? Session(elf: elf, claim: claim, facts: f2, resolver: resolver), (try? s2.relocate()) != nil,
                      (try? s2.applyStagesThroughAlternatives()) != nil else { continue }
                var t = claim.text
                for k in a.off..<a.off + a.len { t[k] = s2.image[k] }
                attempt(&al, t, "feature \(a.feature / 32)*32+\(a.feature % 32) at offset 0x\(String(a.off, radix: 16))")
            }
        }
        report.classes.append(al)

        // return-thunk: a patched return site jumping to another thunk.
        var rt = MutationClassReport(name: "return-thunk")
        let thunks = ["__x86_indirect_thunk_rax", "__x86_indirect_thunk_r11", "__x86_return_thunk", "__fentry__"].compactMap { resolver.lookup($0) }
        if !s.returnSites.isEmpty && !thunks.isEmpty {
            for _ in 0..<perClass {
                let r = s.returnSites[rng.below(s.returnSites.count)]
                guard r.len >= 5, let b = genInsn(0xe9, at: r.addr, to: thunks[rng.below(thunks.count)]) else { continue }
                var t = claim.text
                put(&t, r.off, b)
                attempt(&rt, t, "return site 0x\(String(r.addr, radix: 16))")
            }
        }
        report.classes.append(rt)

        // static-call*: inline sites and the module's own trampolines (jmp sites).
        let scSites: [(off: Int, addr: UInt64, tail: Bool, key: UInt64?)] =
            s.staticSites.map { ($0.off, $0.addr, $0.tail, Optional($0.key)) } + s.trampolineSites.map { ($0.off, $0.addr, true, s.trampolineKey($0.addr)) }
        func retarget(_ r: inout MutationClassReport, _ pick: () -> UInt64?) {
            guard !scSites.isEmpty else { return }
            for _ in 0..<perClass {
                let st = scSites[rng.below(scSites.count)]
                guard let tgt = pick() else { return }
                if let k = st.key, s.trustedStaticCallTargets(k).contains(tgt) { continue }  // legal by the facts: not a mutation
                guard let b = genInsn(st.tail ? 0xe9 : 0xe8, at: st.addr, to: tgt) else { continue }
                var t = claim.text
                put(&t, st.off, b)
                attempt(&r, t, "site 0x\(String(st.addr, radix: 16)) → 0x\(String(tgt, radix: 16))")
            }
        }

        // static-call: call/jmp to a non-function address (a function entry + small offset).
        var sc = MutationClassReport(name: "static-call")
        // (Samples of the core's entries spread evenly over their sorted order: the set's own
        // order is its hash seed's, another in every process, and `--seed` replays a run.)
        let coreSorted = facts.functionEntries.sorted()
        let coreSample = Explainer.evenSample(coreSorted, 4096)
        let funcs = Array(Set(s.functionEntries).union(coreSample)).sorted()
        if !funcs.isEmpty {
            let isEntry = s.isFunctionEntry
            retarget(&sc) {
                var tgt = funcs[rng.below(funcs.count)] &+ UInt64(1 + rng.below(7))
                while isEntry(tgt) { tgt &+= 1 }
                return tgt
            }
        }
        report.classes.append(sc)

        // static-call-retarget: another real function entry (this module's, a verified module's,
        // the core's) that the facts do not trust for the key.
        var scr = MutationClassReport(name: "static-call-retarget")
        let others = Array(Set(s.functionEntries).union(resolver.moduleFunctionEntries.prefix(2048)).union(coreSample).filter { !facts.isCoreInit($0) }).sorted()
        if !others.isEmpty { retarget(&scr) { others[rng.below(others.count)] } }
        report.classes.append(scr)

        // static-call-init: a function in the core kernel's init text (freed after boot).
        var sci = MutationClassReport(name: "static-call-init")
        let initFuncs = Explainer.evenSample(coreSorted.filter { facts.isCoreInit($0) }, 4096)
        if !initFuncs.isEmpty { retarget(&sci) { initFuncs[rng.below(initFuncs.count)] } }
        report.classes.append(sci)

        // static-call-named: the symbols an attacker would pick (entry-code labels, credential and
        // CR4 writers, labels inside instructions, freed init text).
        var scn = MutationClassReport(name: "static-call-named")
        let named = probeTargets.sorted { $0.key < $1.key }.map { $0.value }
        if !named.isEmpty { retarget(&scn) { named[rng.below(named.count)] } }
        report.classes.append(scn)

        // padding: a zero gap byte made non-zero.
        var pd = MutationClassReport(name: "padding")
        let pads = s.cls.indices.filter { s.cls[$0] == UInt8(ExplanationClass.padding.rawValue) }
        if !pads.isEmpty {
            for _ in 0..<perClass {
                let o = pads[rng.below(pads.count)]
                var t = claim.text
                t[o] = UInt8(1 + rng.below(255))
                attempt(&pd, t, "padding offset 0x\(String(o, radix: 16))")
            }
        }
        report.classes.append(pd)
        return report
    }

    /// `n` of `sorted`, spread evenly over it, in order; all of it when it has no more than `n`
    /// (or `n` is below 1).
    static func evenSample(_ sorted: [UInt64], _ n: Int) -> [UInt64] {
        guard sorted.count > n, n > 0 else { return sorted }
        return (0..<n).map { sorted[$0 * sorted.count / n] }
    }
}
