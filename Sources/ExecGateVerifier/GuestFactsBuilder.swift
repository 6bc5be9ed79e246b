// SPDX-License-Identifier: Apache-2.0
//
// From a register-guest message to the explanation engine's `GuestFacts`. The rules mirror the
// kernel's own decisions so the engine sees what the guest kernel saw:
//   - exports: symbols flagged exported (a `__ksymtab_<name>` exists) — the only names module
//     relocations may resolve to, exactly like resolve_symbol();
//   - function entries: text symbols of the build inside the core kernel text `[_stext, _etext)`
//     and outside init text `[_sinittext, _einittext)` (freed after boot: free_initmem()); when the
//     registration marks functions (symbol flags bit 1 = STT_FUNC), only those — labels inside
//     code (`srso_safe_ret`, `native_irq_return_iret`, `_etext`) are never call targets;
//   - `x86_capability[]`: the raw words from boot_cpu_data (little-endian in guest memory);
//   - named helpers: `_paravirt_nop`, `paravirt_BUG`, `__static_call_return0`, `__static_call_return`,
//     `its_return_thunk`, `__per_cpu_end` (the module per-cpu chunk follows it);
//   - static-call keys: the trusted targets per key (register-guest `static_call_key`, plus the
//     engine's build-derived table: GuestFacts.deriveFromCoreSymbols);
//   - the kernel release (vermagic) and the core's init ranges;
//   - uniprocessor patching: alternative_instructions() rewrites `lock` prefixes when
//     `!noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)`, the two flags read
//     from the command line as the kernel's parser reads it (SMPCommandLine.swift).
// The facts are checked for plausibility first (FactsPlausibility.swift): a registration that
// fails is refused, never turned into facts.

import ExecGateExplain
import ExecGateWire
import _ExecGateInternals

public enum GuestFactsBuilder {
    /// The whole registration as engine facts, at its own run-time addresses (no sharing): the
    /// build's part (`kernelFacts`) completed with this guest's own facts (`guestFacts`). The
    /// registry shares the first between guests of one build at link-time addresses
    /// (KernelFactsStore.swift); this is the same two steps with nothing to slide.
    public static func facts(from r: RegisterGuest) -> GuestFacts {
        guestFacts(kernel: kernelFacts(symbols: r.symbolRecords, removing: .none), slide: .none, from: r)
    }

    /// A build's facts: its tables (exports, function entries, the build-derived static-call
    /// table) with `slide` removed from every address (`.none`: at run-time addresses), and the
    /// addresses of the few named symbols the per-guest facts take (`helperNames`), likewise.
    struct BuildTables: Sendable {
        /// Per-guest fields at their defaults; the named helpers and ranges unset (`guestFacts`).
        let facts: GuestFacts
        let helpers: [String: UInt64]
    }

    /// The symbols whose addresses become scalar facts or ranges, per guest (at its slide).
    /// (ExecGateWire RegistrationSymbols: the one list the capture's registration sends too.)
    static let helperNames = [RegistrationSymbols.paravirtNop, RegistrationSymbols.paravirtBUG, RegistrationSymbols.staticCallReturn0,
                              RegistrationSymbols.staticCallReturn, RegistrationSymbols.itsReturnThunk, RegistrationSymbols.perCPUEnd,
                              RegistrationSymbols.sinittext, RegistrationSymbols.einittext, RegistrationSymbols.initBegin, RegistrationSymbols.initEnd,
                              RegistrationSymbols.startROAfterInit, RegistrationSymbols.endROAfterInit]

    /// The facts that follow from the build's symbols alone (exports, function entries, the
    /// build-derived static-call table, and the named helpers), every address with `slide`
    /// removed (KernelSlide: the digest's rule). Every per-guest field keeps its default until
    /// `guestFacts` fills it.
    static func kernelFacts(symbols: SymbolRecords, removing slide: KernelSlide) -> BuildTables {
        var names = SymbolNames(symbols)
        names.removeSlide(slide)
        return kernelFacts(symbols: symbols, linkTimeNames: names, removing: slide)
    }

    /// The same from the name tables of `symbols` already built, `slide` removed
    /// (`SymbolNames.removeSlide`: the plausibility checks build them, KernelFacts.make passes
    /// them on), so each name becomes a `String` and is hashed once a registration, not once a pass.
    static func kernelFacts(symbols: SymbolRecords, linkTimeNames names: SymbolNames, removing slide: KernelSlide) -> BuildTables {
        let exports = names.exports
        let named = names.named
        // Every text symbol (or, when the build marks STT_FUNC, every marked one). Static calls no
        // longer take "any function entry": the engine admits only targets trusted for the key
        // (StaticCallTrust, `static_call_key`), never init text (coreInitRanges); this set stays
        // the engine's broad notion of "code address" (its mutation classes draw from it).
        var texts = 0, markedTexts = 0, marked = false
        symbols.forEachRecord { s in
            if s.isFunction { marked = true }
            if s.isText {
                texts += 1
                if s.isFunction { markedTexts += 1 }
            }
        }
        var functions = Set<UInt64>(minimumCapacity: Swift.min(marked ? markedTexts : texts, SymbolNames.reservedNames))
        symbols.forEachRecord { s in
            if s.isText && (!marked || s.isFunction) { functions.insert(slide.linkTime(s.address)) }
        }
        var facts = GuestFacts(exports: exports, capabilities: [], uniprocessorPatched: false, possibleCPUs: 1,
                               functionEntries: functions)
        // The table the engine derives from the build's symbols (StaticCallTrust): by name only,
        // so deriving it at link-time addresses and reading it at a slide gives the table derived
        // at that slide. Only unions into `staticCallTrustedTargets`: the guest's own keys added
        // later (`guestFacts`) give the same set as adding them first. Folded once, here.
        facts.deriveFromCoreSymbols(named)
        facts.staticCallTrustedTargets = facts.staticCallTrustedTargets.folded()
        facts.coreInitRanges = []
        var helpers: [String: UInt64] = [:]
        for n in helperNames { helpers[n] = named[n] }
        return BuildTables(facts: facts, helpers: helpers)
    }

    /// `kernel` (the build's facts, possibly shared with other guests) read at `slide` (the
    /// slide `kernel` was built removing: this guest's own for a shared copy, `.none` for a
    /// private one) and completed with this registration's own facts: CPU capability words, CPU
    /// counts and uniprocessor patching, `pv_ops`, the return thunk, its static-call keys and the
    /// kernel release. The tables are shared, never copied; the registration's own static-call
    /// keys are kept beside them (`SlidStaticCallTargets.own`).
    /// `PERCPU_MODULE_RESERVE` (include/linux/percpu.h, 6.1 and 6.12: 8 KiB): the module part of
    /// the first per-cpu chunk, right after the core's static per-cpu area.
    static let percpuModuleReserve: UInt64 = 8 << 10

    static func guestFacts(kernel: BuildTables, slide: KernelSlide, from r: RegisterGuest) -> GuestFacts {
        var facts = kernel.facts
        // The build's tables read at this guest's slide (shared, not copied), and its named
        // helpers and ranges at their run-time addresses.
        facts.exports = facts.exports.slid(by: slide)
        facts.functionEntries = facts.functionEntries.slid(by: slide)
        facts.staticCallTrustedTargets = facts.staticCallTrustedTargets.slid(by: slide)
        facts.tracepointStaticCallKeys = facts.tracepointStaticCallKeys.slid(by: slide)
        let named = kernel.helpers.mapValues(slide.runTime)
        facts.paravirtNop = named[RegistrationSymbols.paravirtNop]
        facts.paravirtBUG = named[RegistrationSymbols.paravirtBUG]
        facts.staticCallReturn0 = named[RegistrationSymbols.staticCallReturn0]
        facts.staticCallReturn = named[RegistrationSymbols.staticCallReturn]
        facts.itsReturnThunk = named[RegistrationSymbols.itsReturnThunk]
        // Module per-cpu data lives in the reserved chunk right after the core per-cpu area:
        // [__per_cpu_end, + PERCPU_MODULE_RESERVE (8 KiB)) — mm/percpu.c, include/linux/percpu.h.
        // The end is computed checked: `__per_cpu_end` is the registration's word. A reserve that
        // would wrap the address space (refused at registration by FactsPlausibility at the
        // registrant's slide; at another slide of a shared copy only an image-half value can
        // move that far) leaves no reserve, and a module with per-cpu data is denied (`percpu`).
        facts.modulePercpuRange = named[RegistrationSymbols.perCPUEnd].flatMap { e in
            let (hi, wraps) = e.addingReportingOverflow(Self.percpuModuleReserve)
            return wraps ? nil : e..<hi
        }
        facts.coreInitRanges = GuestFacts.coreInitRanges(named)
        // A key in the core's __ro_after_init data never moves after the trusted point
        // (GuestSession.judgePatches).
        if let a = named[RegistrationSymbols.startROAfterInit], let b = named[RegistrationSymbols.endROAfterInit], a < b { facts.coreROAfterInit = a..<b }
        facts.kaslrSlide = r.kaslrSlide
        var caps: [UInt32] = []
        caps.reserveCapacity(r.cpuCapabilities.count / 4)
        var i = 0
        while i + 4 <= r.cpuCapabilities.count {
            let b = r.cpuCapabilities
            caps.append(UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
            i += 4
        }
        facts.capabilities = caps
        facts.pvOps = Self.pvOpsEntries(r.pvOps)
        // The command line read as start_kernel() reads it (SMPCommandLine.swift).
        facts.uniprocessorPatched = SMPCommandLine(r.commandLine).uniprocessorPatched(presentCPUs: r.presentCPUs)
        facts.possibleCPUs = Int(r.possibleCPUs)
        facts.returnThunk = r.returnThunk
        // Static-call keys: the targets the VMM decoded from the core's trampolines and the
        // operator's per-key targets (register-guest `static_call_key`), merged with the table the
        // engine derived from the build's symbols (StaticCallTrust, in `kernel`).
        for k in r.staticCallKeys {
            facts.staticCallTrustedTargets[k.key, default: []].insert(k.current)
            facts.staticCallTrustedTargets[k.key, default: []].formUnion(k.allowed)
        }
        // The release picks the loader replay (ExecGateExplain LoaderSelection.swift).
        facts.kernelRelease = r.kernelRelease.isEmpty ? nil : r.kernelRelease
        return facts
    }

    /// `pv_ops` as u64 little-endian entries (as in guest memory); a trailing partial entry is ignored.
    static func pvOpsEntries(_ raw: [UInt8]) -> [UInt64] {
        stride(from: 0, to: raw.count - raw.count % 8, by: 8).compactMap { raw.getInteger(at: $0, as: UInt64.self) }
    }
}

/// A build's names as the checks and the tables take them (run-time addresses): the first record
/// of each name (`named`: the named helpers, the bounds, the derived static-call table) and the
/// first exported record of each exported name (`exports`: the export table). Built in one pass
/// that makes each record's name a `String` once (FactsPlausibility.checkSymbols builds it and
/// checks each record as it goes; GuestFactsBuilder.kernelFacts maps it to link time).
struct SymbolNames {
    var named: [String: UInt64] = [:]
    var exports: [String: UInt64] = [:]

    /// `each` sees every record with its name and whether an earlier record exported that name.
    init(_ symbols: SymbolRecords, _ each: (SymbolRecordView, String, _ exportedBefore: Bool) -> Void = { _, _, _ in }) {
        var exported = 0
        symbols.forEachRecord { if $0.exported { exported += 1 } }
        // Reserved up to a real build's size only: a record count is no name count (a million
        // records of one name reserved a million slots, ~50 MB for one entry); past it the tables
        // grow with the distinct names, which `KernelFacts.symbolBytes` charges.
        named.reserveCapacity(Swift.min(symbols.count, Self.reservedNames))
        exports.reserveCapacity(Swift.min(exported, Self.reservedNames))
        symbols.forEachRecord { s in
            let name = s.makeName()
            // Inserted only when absent (the first record of a name wins), hashed once.
            Self.keep(&named[name, default: s.address])
            var before = false
            if s.exported {
                let n = exports.count
                Self.keep(&exports[name, default: s.address])
                before = exports.count == n
            }
            each(s, name, before)
        }
    }

    /// The most name slots reserved ahead (Debian 6.1's kallsyms has ~150,000 symbols).
    static let reservedNames = 1 << 18

    /// Every address with `slide` removed (KernelSlide.linkTime), in place: the same keys in the
    /// same slots, no name hashed or copied again (the first record of a name stays the first).
    mutating func removeSlide(_ slide: KernelSlide) {
        guard slide != .none else { return }
        for i in named.values.indices { named.values[i] = slide.linkTime(named.values[i]) }
        for i in exports.values.indices { exports.values[i] = slide.linkTime(exports.values[i]) }
    }

    /// Touches a dictionary slot (`d[k, default: v]`): inserts `v` when `k` is absent, else keeps.
    @inline(__always) private static func keep(_: inout UInt64) {}
}

/// The core kernel's text bounds, from the build's own section symbols (vmlinux.lds.S):
/// `_stext`/`_etext` bound the core text (entry code, thunks included), `_sinittext`/`_einittext`
/// the init text and `__init_begin`/`__init_end` the whole init memory (text and data) that
/// free_initmem() releases after boot.
struct KernelBounds {
    let coreText: Range<UInt64>
    let initText: Range<UInt64>?
    /// `[__init_begin, __init_end)`: init text and init data. Core text excludes it as well as
    /// the init text: `_etext` is the registration's word, and stretched past the init memory it
    /// put init *data* (freed too) inside "core text" (DocAttack7Tests).
    let initMemory: Range<UInt64>?

    private init(coreText: Range<UInt64>, initText: Range<UInt64>?, initMemory: Range<UInt64>?) {
        self.coreText = coreText
        self.initText = initText
        self.initMemory = initMemory
    }

    /// The bounds with every end moved by `f` (a slide removed or applied: KernelSlide, which
    /// keeps the order of the addresses of a registration it is one-to-one on).
    func mapped(_ f: (UInt64) -> UInt64) -> KernelBounds {
        KernelBounds(coreText: f(coreText.lowerBound)..<f(coreText.upperBound),
                     initText: initText.map { f($0.lowerBound)..<f($0.upperBound) },
                     initMemory: initMemory.map { f($0.lowerBound)..<f($0.upperBound) })
    }

    init?(_ named: [String: UInt64]) {
        guard let s = named[RegistrationSymbols.stext], let e = named[RegistrationSymbols.etext], s < e else { return nil }
        coreText = s..<e
        if let a = named[RegistrationSymbols.sinittext], let b = named[RegistrationSymbols.einittext], a < b { initText = a..<b } else { initText = nil }
        if let a = named[RegistrationSymbols.initBegin], let b = named[RegistrationSymbols.initEnd], a < b { initMemory = a..<b } else { initMemory = nil }
    }

    func isCoreText(_ a: UInt64) -> Bool {
        coreText.contains(a) && !(initText?.contains(a) ?? false) && !(initMemory?.contains(a) ?? false)
    }
}
