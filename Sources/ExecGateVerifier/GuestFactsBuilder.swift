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
//     `!noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)`.
// The facts are checked for plausibility first (FactsPlausibility.swift): a registration that
// fails is refused, never turned into facts.

import ExecGateExplain
import ExecGateWire
import _ExecGateInternals

public enum GuestFactsBuilder {
    /// The whole registration as engine facts: the build's part (`kernelFacts`) completed with
    /// this guest's own facts (`guestFacts`). The registry shares the first between guests of one
    /// build (KernelFactsStore.swift); this is the same two steps in one.
    public static func facts(from r: RegisterGuest) -> GuestFacts {
        guestFacts(kernel: kernelFacts(symbols: r.symbols, slide: r.kaslrSlide), from: r)
    }

    /// The facts that follow from the build's symbols at one slide alone (exports, function
    /// entries, named helpers, the per-cpu reserve, the build-derived static-call table and init
    /// ranges); every per-guest field keeps its default until `guestFacts` fills it.
    static func kernelFacts(symbols: [KernelSymbol], slide: UInt64) -> GuestFacts {
        var exports: [String: UInt64] = [:]
        var named: [String: UInt64] = [:]
        var functions = Set<UInt64>()
        for s in symbols {
            if s.exported && exports[s.name] == nil { exports[s.name] = s.address }
            if named[s.name] == nil { named[s.name] = s.address }
        }
        // Every text symbol (or, when the build marks STT_FUNC, every marked one). Static calls no
        // longer take "any function entry": the engine admits only targets trusted for the key
        // (StaticCallTrust, `static_call_key`), never init text (coreInitRanges); this set stays
        // the engine's broad notion of "code address" (its mutation classes draw from it).
        let marked = symbols.contains { $0.isFunction }
        for s in symbols where s.isText && (!marked || s.isFunction) { functions.insert(s.address) }
        var facts = GuestFacts(
            exports: exports, capabilities: [], uniprocessorPatched: false, possibleCPUs: 1,
            paravirtNop: named["_paravirt_nop"], paravirtBUG: named["paravirt_BUG"], functionEntries: functions,
            staticCallReturn0: named["__static_call_return0"], staticCallReturn: named["__static_call_return"],
            itsReturnThunk: named["its_return_thunk"], kaslrSlide: slide)
        // Module per-cpu data lives in the reserved chunk right after the core per-cpu area:
        // [__per_cpu_end, + PERCPU_MODULE_RESERVE (8 KiB)) — mm/percpu.c, include/linux/percpu.h.
        facts.modulePercpuRange = named["__per_cpu_end"].map { $0..<($0 + (8 << 10)) }
        // The table the engine derives from the build's symbols (StaticCallTrust) and the core's
        // init ranges. Only unions into `staticCallTrustedTargets`: the guest's own keys added
        // later (`guestFacts`) give the same set as adding them first.
        facts.deriveFromCoreSymbols(named)
        return facts
    }

    /// `kernel` (the build's facts, possibly shared with other guests) completed with this
    /// registration's own facts: CPU capability words, CPU counts and uniprocessor patching,
    /// `pv_ops`, the return thunk, its static-call keys and the kernel release. Copying `kernel`
    /// shares its tables (copy on write); only `staticCallTrustedTargets` is copied, and only
    /// when the registration names keys.
    static func guestFacts(kernel: GuestFacts, from r: RegisterGuest) -> GuestFacts {
        var facts = kernel
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
        let args = r.commandLine.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        var maxCPUs = Int.max
        for a in args {
            if a == "nosmp" { maxCPUs = 0 }
            if a.hasPrefix("maxcpus="), let v = Int(a.dropFirst(8)) { maxCPUs = v }
        }
        facts.uniprocessorPatched = !args.contains("noreplace-smp") && (r.presentCPUs == 1 || maxCPUs <= 1)
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

/// The core kernel's text bounds, from the build's own section symbols (vmlinux.lds.S):
/// `_stext`/`_etext` bound the core text (entry code, thunks included), `_sinittext`/`_einittext`
/// the init text that free_initmem() releases after boot.
struct KernelBounds {
    let coreText: Range<UInt64>
    let initText: Range<UInt64>?

    init?(_ named: [String: UInt64]) {
        guard let s = named["_stext"], let e = named["_etext"], s < e else { return nil }
        coreText = s..<e
        if let a = named["_sinittext"], let b = named["_einittext"], a < b { initText = a..<b } else { initText = nil }
    }

    func isCoreText(_ a: UInt64) -> Bool { coreText.contains(a) && !(initText?.contains(a) ?? false) }
}
