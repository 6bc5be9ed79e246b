// SPDX-License-Identifier: Apache-2.0
//
// End-state explanation of a loaded module's executable memory.
//
// The x86-64 6.1 loader writes module text in this order (kernel/module/main.c `load_module()`):
//
//   copy sections (layout_sections) ─► apply_relocations ─► module_finalize:
//       apply_paravirt ─► apply_retpolines ─► apply_returns ─► apply_alternatives (+optimize_nops
//       on every site) ─► apply_ibt_endbr ─► alternatives_smp_module_add (lock → ds on UP)
//   ─► ftrace_module_init (mcount sites → NOP5) ─► module_enable_ro/x
//   ─► COMING notifiers: jump_label_add_module, static_call_add_module (and again at run time).
//
// Stages, one file each, in that order (Session.run()):
//   Session.swift       set-up: layout_sections(), section copy, per-cpu area, symbols (all `let`)
//   Relocations.swift   simplify_symbols() + apply_relocate_add()
//   BootPatching.swift  module_finalize() (paravirt, retpolines, returns, alternatives, ENDBR,
//                       smp locks) and ftrace_module_init()
//   RuntimeSites.swift  the COMING notifiers: jump labels, static calls (sites whose end state is
//                       guest run-time state: a legal set per site)
//   Comparison.swift    the claim against the replay: first unexplained byte; statistics, exports
//
// The explainer replays every deterministic step on a copy of the signed ELF at the claimed
// addresses, producing the exact expected bytes. Steps whose result depends on guest run-time state
// (jump-label key state, static-call target, ftrace enablement) produce a *set* of legal encodings
// per site, checked exactly (never by masking a field): the claimed bytes must be one member, and
// all sites of one key must agree. Every other byte must equal the replayed value; the first
// difference is the denial.

import ExecGateELF

/// The explanation engine. Pure: no I/O, no global state.
public struct Explainer: Sendable {
    /// The facts, held once in a box every session of this engine reads them through (a
    /// `GuestFacts` copy retains each of its ≈ 40 references, and a session made one a module).
    let box: FactsBox
    public var facts: GuestFacts { _read { yield box.facts } }

    public init(facts: GuestFacts) { self.box = FactsBox(facts) }

    /// Explain one module.
    /// - Parameters:
    ///   - elf: the signed module's ELF (signature already verified by the caller).
    ///   - claim: the guest's claim (executable region bytes + layout).
    ///   - resolver: exports of the core kernel and of modules already allowed in this guest.
    /// - Returns: the verdict, and on allow the exports to add to `resolver` and the module's
    ///   run-time patch sites. When the claim includes the init region (`initTextBase`/`initText`),
    ///   it is explained too and the verdict covers both (init statistics and sites apart: they
    ///   are valid only until init is freed).
    public func explain(elf: ELFFile, claim: ModuleClaim, resolver: SymbolResolver) -> ExplainResult {
        do {
            let s = try Session(elf: elf, claim: claim, factsBox: box, resolver: resolver)
            try s.run()
            let stats = s.statistics()
            var result = ExplainResult(verdict: .allowed(stats), exports: s.moduleExports(), runtimeSites: RuntimeSiteTable(session: s, claim: claim))
            result.dataAllocations = s.allocations([.data, .rodata, .roAfterInit])
            if claim.initTextBase != nil || claim.initTextBytes != nil {
                // The init region: the same stages at the claimed init addresses; its sites must
                // agree with the core's (same keys), and the module's own key defaults carry over.
                let i = try Session(elf: elf, claim: claim, factsBox: box, resolver: resolver, region: .initText,
                                    inherited: .init(ownKeyDefaults: s.ownKeyDefaults, groupState: s.finalGroupState))
                try i.run()
                result.initStatistics = i.statistics()
                result.initRuntimeSites = RuntimeSiteTable(session: i, claim: claim)
                result.initDataAllocations = i.allocations([.initData, .initRodata])
            }
            return result
        } catch let d as DenyError {
            return ExplainResult(verdict: .denied(d.denial), exports: nil)
        } catch {
            // Only DenyError and ELFError are thrown inside; map ELF errors to a structural denial.
            let d = Denial(module: claim.name, section: "(elf)", offset: 0, address: 0, expected: [], found: [],
                           rule: .malformedELF, reason: "\(error)")
            return ExplainResult(verdict: .denied(d), exports: nil)
        }
    }
}

/// A guest's facts, immutable, shared by reference between an ``Explainer`` and its sessions.
final class FactsBox: Sendable {
    let facts: GuestFacts
    init(_ facts: GuestFacts) { self.facts = facts }
}

/// Named limits of the engine (hostile input: a signed-but-odd module must not exhaust memory).
public enum ExplainLimits {
    /// The whole x86-64 module area is 1 GiB; the largest Debian 6.1 module core is a few MiB.
    public static let maxCoreSize = 128 << 20
    /// The bytes of SHT_NOBITS sections a session copies to read as data (a table by name, a
    /// site's or replacement's bytes, an export's name, out-of-order relocations), in all (a
    /// session: the core region, or the init region's own). Such a section has a size and no
    /// file byte, so its copy (zeros and the fields its records write) would be working memory
    /// the request never brought: up to `maxCoreSize` from a module of a few KiB, where the
    /// service admits a request at twice its body (ServiceVM/README.md). No module of the
    /// reference builds has any such copy (no toolchain emits a table or a patch site in
    /// `.bss`); past this a module is denied where its read would make one (`pristineCopy`).
    public static let maxNoBitsCopy = 1 << 20
    /// An exported name's bytes (`__ksymtab` entries' names): at most KSYM_NAME_LEN − 1 = 511
    /// (include/linux/kallsyms.h, 6.1 and 6.12; the ELF parser refuses longer symbol names,
    /// and an export's name is its symbol's, as `__EXPORT_SYMBOL()` emits it into
    /// `__ksymtab_strings`).
    public static let maxExportNameLength = 511
    /// All the module's exported names' bytes together. Each entry's name is copied into the
    /// module's exports (kept for later modules while it is live), and names may share bytes
    /// in the file (a name a suffix of another's, as the linker tail-merges strings): without
    /// this an entry of 12 bytes (and two records) could bring 511 bytes of names, and the
    /// table ~40 times the request. The reference builds' largest `__ksymtab_strings` is
    /// 13,440 bytes (6.12's drm.ko; 6.1's 12,472), their longest exported name 52 bytes.
    public static let maxExportNameBytes = 1 << 20
}
