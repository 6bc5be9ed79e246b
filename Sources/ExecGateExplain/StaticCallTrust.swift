// SPDX-License-Identifier: Apache-2.0
//
// Which functions a static call of a given key may call: facts derived from the kernel build's
// symbol map and the 6.1 source, never from guest memory a guest could write.
//
// How a static call gets its target (Linux 6.1):
//   - `DEFINE_STATIC_CALL(name, func)` (include/linux/static_call.h) sets the key's initial
//     function and emits the trampoline `__SCT__name` as `jmp func` (arch/x86/include/asm/
//     static_call.h, ARCH_DEFINE_STATIC_CALL_TRAMP); `_NULL` emits the RET form, `_RET0` a jump to
//     `__static_call_return0`. So a key's default is in the signed image: for a module's own keys
//     the engine reads it from the module's relocated trampoline (RuntimeSites.swift); for core
//     keys the operator's build supplies it (below) or the VMM decodes the core trampoline.
//   - `static_call_update(name, func)` → `__static_call_update()` (kernel/static_call_inline.c)
//     rewrites the trampoline and every site of the key, in the core and every module
//     (`__static_call_transform()`, arch/x86/kernel/static_call.c: CALL func | NOP5 (NULL) |
//     `xor %eax,%eax` (func == __static_call_return0) for calls; JMP func | RET form for tail
//     calls; `0f 8x` Jcc). Which `func` a key may get is decided by the callers of
//     static_call_update() in the source. The ones a Debian 6.1 module reaches are:
//       * PREEMPT_DYNAMIC (kernel/sched/core.c `sched_dynamic_update()` with the
//         `<key>_dynamic_enabled/_disabled` defines there and in arch/x86/include/asm/preempt.h):
//         cond_resched, might_resched → __cond_resched | __static_call_return0;
//         preempt_schedule → preempt_schedule_thunk | NULL;
//         preempt_schedule_notrace → preempt_schedule_notrace_thunk | NULL;
//         irqentry_exit_cond_resched → raw_irqentry_exit_cond_resched | NULL.
//       * tracepoints (include/linux/tracepoint.h `DEFINE_TRACE_FN`: `DEFINE_STATIC_CALL(
//         tp_func_X, __traceiter_X)`; kernel/tracepoint.c `tracepoint_update_call()`, the
//         key's only updater, 6.1 and 6.12): the iterator `__traceiter_X`, or with exactly one
//         probe registered that probe (called directly; probe functions are not derivable from
//         the symbol map, so such a state is denied unless the operator's build lists the probe
//         for that key). Never NULL nor `__static_call_return0`: after the last probe goes,
//         tracepoint_remove_func() (TP_FUNC_0) sets the iterator again (`DisabledForm.neither`).
//       * keys a module defines itself (kvm's `kvm_x86_*`, updated by kvm_amd/kvm_intel from their
//         `kvm_x86_ops`): the default from the module's trampoline; vendor-module targets must be
//         supplied by the operator's build per key.
//   - `__static_call_return0` (`xor %eax,%eax; ret`) is a legal target of every key but the
//     PREEMPT_DYNAMIC and tracepoint ones: `static_call_update(key, (void *)__static_call_return0)` and
//     DEFINE_STATIC_CALL_RET0 are generic kernel mechanisms, and it transfers control nowhere
//     else. A PREEMPT_DYNAMIC key takes exactly its two states (`preemptDynamicDisabled`): its
//     disabled form is NULL or `__static_call_return0`, never both. `preempt_schedule` is called
//     from asm with no clobber (`__preempt_schedule()`, arch/x86/include/asm/preempt.h: every
//     register live across the call, which preempt_schedule_thunk preserves): its sites in the
//     `xor %eax,%eax` form would zero %eax behind the compiler's back.

/// The per-key trusted static-call targets of a kernel build.
public enum StaticCallTrust {
    /// `sched_dynamic_update()` targets per key (kernel/sched/core.c, arch/x86/include/asm/preempt.h,
    /// 6.1). Each key's disabled form (NULL or `__static_call_return0`) is `preemptDynamicDisabled`'s,
    /// not listed here.
    public static let preemptDynamic: [(key: String, targets: [String])] = [
        ("cond_resched", ["__cond_resched"]),
        ("might_resched", ["__cond_resched"]),
        ("preempt_schedule", ["preempt_schedule_thunk"]),
        ("preempt_schedule_notrace", ["preempt_schedule_notrace_thunk"]),
        ("irqentry_exit_cond_resched", ["raw_irqentry_exit_cond_resched"]),
    ]

    /// The disabled form of a PREEMPT_DYNAMIC key: what `preempt_dynamic_disable(f)` =
    /// `static_call_update(f, f##_dynamic_disabled)` writes (sched_dynamic_update(), the only
    /// updater of these keys; `DEFINE_STATIC_CALL[_RET0]` gives the default).
    public enum DisabledForm: Sendable, Equatable {
        /// `NULL`: NOP5 at a call site, the RET form at a tail site.
        case null
        /// `(void *)&__static_call_return0`: `2e 2e 2e 31 c0` at a call site.
        case return0
        /// Neither: a tracepoint key `tp_func_X`, which kernel/tracepoint.c
        /// tracepoint_update_call() (its only updater, 6.1 and 6.12) gives `tp->iterator`
        /// (`__traceiter_X`) or the one registered probe, also after the last probe goes
        /// (tracepoint_remove_func() TP_FUNC_0): never NULL, never `__static_call_return0`.
        case neither

        /// NULL (NOP5 at a call site, the RET form at a tail site or trampoline, the return thunk
        /// or `__static_call_return` at a Jcc tail site) is a state of the key: not for a key
        /// disabled to `__static_call_return0`, nor a tracepoint key. (A key with no form, nil:
        /// every key but these, takes both: `?? true`.)
        public var allowsNull: Bool { self == .null }
        /// `__static_call_return0` (`2e 2e 2e 31 c0` at a call site, a jump to it at a tail site)
        /// is a state of the key: not for a key disabled to NULL, nor a tracepoint key.
        public var allowsReturn0: Bool { self == .return0 }
    }

    /// True for a tracepoint's static-call key or trampoline name (`__SCK__tp_func_X`,
    /// `__SCT__tp_func_X`: include/linux/tracepoint.h DEFINE_TRACE_FN, EXPORT_TRACEPOINT_SYMBOL).
    @inline(__always) static func isTracepointKeyName(_ name: String) -> Bool {
        hasASCIIPrefix(name, "__SCK__tp_func_") || hasASCIIPrefix(name, "__SCT__tp_func_")
    }

    /// The addresses of every tracepoint key and trampoline `symbols` names (`isTracepointKeyName`).
    public static func tracepointKeys(symbols: [String: UInt64]) -> Set<UInt64> {
        var out = Set<UInt64>()
        for (name, a) in symbols where isTracepointKeyName(name) { out.insert(a) }
        return out
    }

    /// The disabled form of the key a module's static-call site names at `key` (its `__SCK__<name>`
    /// or, for keys exported with EXPORT_STATIC_CALL_TRAMP, its trampoline `__SCT__<name>`: the
    /// address of a core export, as every key a relocation can name): `.neither` for a core
    /// tracepoint key (`GuestFacts.tracepointStaticCallKeys`) and for a module's
    /// (`moduleTracepointKey`: the session knows its own and verified modules' tracepoint keys,
    /// Session.isModuleTracepointKey), a PREEMPT_DYNAMIC key's form from
    /// `preemptDynamicKeys` (`preemptDynamicKeys(coreExports:)`, which the facts compute once,
    /// `GuestFacts.preemptDynamicKeys`, and a session passes here: a String-keyed export lookup per
    /// site cost the engine 27%), nil for any other key.
    public static func disabledForm(ofKey key: UInt64, facts: GuestFacts, moduleTracepointKey: Bool = false,
                                    preemptDynamicKeys: [(key: UInt64, form: DisabledForm)]) -> DisabledForm? {
        disabledForm(ofKey: key, tracepointStaticCallKeys: facts.tracepointStaticCallKeys, moduleTracepointKey: moduleTracepointKey,
                     preemptDynamicKeys: preemptDynamicKeys)
    }

    /// The same, given the one table of the facts it reads (a session passes that, not the whole
    /// `GuestFacts`, which an argument read through the session's box would copy).
    static func disabledForm(ofKey key: UInt64, tracepointStaticCallKeys: SlidAddressSet, moduleTracepointKey: Bool,
                             preemptDynamicKeys: [(key: UInt64, form: DisabledForm)]) -> DisabledForm? {
        if moduleTracepointKey { return .neither }
        if !tracepointStaticCallKeys.isEmpty && tracepointStaticCallKeys.contains(key) { return .neither }
        for e in preemptDynamicKeys where e.key == key { return e.form }
        return nil
    }

    /// `f##_dynamic_disabled` per PREEMPT_DYNAMIC key (kernel/sched/core.c:
    /// `cond_resched_dynamic_disabled`, `might_resched_dynamic_disabled` = `(void
    /// *)&__static_call_return0`; arch/x86/include/asm/preempt.h: `preempt_schedule[_notrace]
    /// _dynamic_disabled` = NULL; include/linux/entry-common.h:
    /// `irqentry_exit_cond_resched_dynamic_disabled` = NULL; 6.1.192 and 6.12.117). The other
    /// NULL form is no state of the key: the kernel never writes it at the key's sites.
    public static let preemptDynamicDisabled: [String: DisabledForm] = [
        "cond_resched": .return0,
        "might_resched": .return0,
        "preempt_schedule": .null,
        "preempt_schedule_notrace": .null,
        "irqentry_exit_cond_resched": .null,
    ]

    /// Every address a module's site may name a PREEMPT_DYNAMIC key by (its `__SCK__<name>` and
    /// `__SCT__<name>` exports) with the key's disabled form: ten export lookups made once, for a
    /// session to keep and hand to `disabledForm(ofKey:facts:preemptDynamicKeys:)` per site.
    public static func preemptDynamicKeys(coreExports: SlidExports) -> [(key: UInt64, form: DisabledForm)] {
        var keys: [(key: UInt64, form: DisabledForm)] = []
        for (name, form) in preemptDynamicDisabled {
            for prefix in ["__SCK__", "__SCT__"] { if let a = coreExports[prefix + name] { keys.append((a, form)) } }
        }
        return keys
    }

    /// Keys a module defines and updates itself, in its own code, to functions named in the
    /// source: module name (`.modinfo` `name=`) → key name → target function names, resolved
    /// against that signed module's own symbols, and the CPU feature (`X86_FEATURE_*` bit) the
    /// source tests before the update: without it on the boot CPU the update never runs and the
    /// targets are not trusted (nil: unconditional). Debian 6.1 modules found by the corpus:
    ///   aesni_intel: arch/x86/crypto/aesni-intel_glue.c `aesni_init()` (6.1.192 and 6.12.117):
    ///     `if (boot_cpu_has(X86_FEATURE_AVX)) static_call_update(aesni_ctr_enc_tfm,
    ///     aesni_ctr_enc_avx_tfm)` (the default, `DEFINE_STATIC_CALL(aesni_ctr_enc_tfm,
    ///     aesni_ctr_enc)`, comes from the module's trampoline).
    public static let moduleUpdates: [String: [(key: String, targets: [String], feature: Int?)]] = [
        "aesni_intel": [("aesni_ctr_enc_tfm", ["aesni_ctr_enc_avx_tfm"], x86FeatureAVX)],
    ]

    /// `X86_FEATURE_AVX` (arch/x86/include/asm/cpufeatures.h, 6.1 and 6.12: `4*32+28`).
    public static let x86FeatureAVX = 4 * 32 + 28

    /// Key address → trusted targets, from the core kernel's symbol map (name → address, the
    /// build's map plus the slide): the PREEMPT_DYNAMIC table and, for every core tracepoint key
    /// `tp_func_X`, its iterator `__traceiter_X`. Each set is stored under the key `__SCK__<name>`
    /// AND the trampoline `__SCT__<name>`: a module site of a key that is not exported
    /// (EXPORT_STATIC_CALL_TRAMP, e.g. might_resched) names the trampoline in the signed
    /// `.static_call_sites`, and `static_call_add_module()` looks the key up from it
    /// (`tramp_key_lookup()`). Names the map lacks are skipped (their sites can then hold only
    /// the NULL forms).
    public static func coreTargets(symbols: [String: UInt64]) -> [UInt64: Set<UInt64>] {
        var out: [UInt64: Set<UInt64>] = [:]
        forEachCoreTarget(symbols: symbols) { key, _, _, target in out[key, default: []].insert(target) }
        return out
    }

    /// Every (key address, key name, target name, target address) `coreTargets` derives: the key
    /// (`__SCK__<name>` or `__SCT__<name>`) and the target are the records their names resolve to
    /// in `symbols` (the first of each name), the target trusted for the key. The registration's
    /// plausibility checks hold these records to the core (FactsPlausibility): the derivation
    /// takes each record by name, whatever it says.
    public static func forEachCoreTarget(symbols: [String: UInt64], _ body: (_ key: UInt64, _ keyName: String, _ targetName: String, _ target: UInt64) -> Void) {
        func add(_ name: Substring, _ targets: [String]) {
            let resolved = targets.compactMap { t in symbols[t].map { (t, $0) } }
            guard !resolved.isEmpty else { return }
            for prefix in ["__SCK__", "__SCT__"] {
                let keyName = prefix + name
                if let k = symbols[keyName] { for (n, a) in resolved { body(k, keyName, n, a) } }
            }
        }
        for (key, targets) in preemptDynamic { add(Substring(key), targets) }
        for name in symbols.keys where isTracepointKeyName(name) {
            add(name.dropFirst(7), ["__traceiter_" + name.dropFirst(15)])
        }
    }
}

extension GuestFacts {
    /// `[_sinittext, _einittext)` and `[__init_begin, __init_end)` from the symbol map.
    public static func coreInitRanges(_ symbols: [String: UInt64]) -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        for (lo, hi) in [("_sinittext", "_einittext"), ("__init_begin", "__init_end")] {
            if let a = symbols[lo], let b = symbols[hi], a < b { ranges.append(a..<b) }
        }
        return ranges
    }

    /// Fills the facts derived from the core kernel's symbol map (name → address; the same map the
    /// registration's symbols give): `coreInitRanges` from `_sinittext`/`_einittext` and
    /// `__init_begin`/`__init_end`, and `staticCallTrustedTargets` from ``StaticCallTrust``
    /// (merged with any targets already set, e.g. the current targets the VMM decoded from the
    /// core's trampolines).
    public mutating func deriveFromCoreSymbols(_ symbols: [String: UInt64]) {
        coreInitRanges = Self.coreInitRanges(symbols)
        for (k, v) in StaticCallTrust.coreTargets(symbols: symbols) { staticCallTrustedTargets[k, default: []].formUnion(v) }
        let tp = StaticCallTrust.tracepointKeys(symbols: symbols)
        if !tp.isSubset(of: tracepointStaticCallKeys.linkTime) {
            tracepointStaticCallKeys = SlidAddressSet(linkTime: tracepointStaticCallKeys.linkTime.union(tp), slide: tracepointStaticCallKeys.slide)
        }
    }
}
