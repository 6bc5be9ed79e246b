// SPDX-License-Identifier: Apache-2.0
//
// From a register-guest message to the explanation engine's `GuestFacts`. The rules mirror the
// kernel's own decisions so the engine sees what the guest kernel saw:
//   - exports: symbols flagged exported (a `__ksymtab_<name>` exists) — the only names module
//     relocations may resolve to, exactly like resolve_symbol();
//   - function entries: every text symbol of the build (legal static-call targets);
//   - `x86_capability[]`: the raw words from boot_cpu_data (little-endian in guest memory);
//   - named helpers: `_paravirt_nop`, `paravirt_BUG`, `__static_call_return0`, `__static_call_return`,
//     `its_return_thunk`, `__per_cpu_end` (the module per-cpu chunk follows it);
//   - uniprocessor patching: alternative_instructions() rewrites `lock` prefixes when
//     `!noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)`.

import ExecGateExplain
import ExecGateWire

public enum GuestFactsBuilder {
    public static func facts(from r: RegisterGuest) -> GuestFacts {
        var exports: [String: UInt64] = [:]
        var named: [String: UInt64] = [:]
        var functions = Set<UInt64>()
        for s in r.symbols {
            if s.exported && exports[s.name] == nil { exports[s.name] = s.address }
            if named[s.name] == nil { named[s.name] = s.address }
            if s.isText { functions.insert(s.address) }
        }
        var caps: [UInt32] = []
        caps.reserveCapacity(r.cpuCapabilities.count / 4)
        var i = 0
        while i + 4 <= r.cpuCapabilities.count {
            let b = r.cpuCapabilities
            caps.append(UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
            i += 4
        }
        var pvOps: [UInt64] = []
        var o = 0
        while o + 8 <= r.pvOps.count {
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(r.pvOps[o + k]) << (8 * UInt64(k)) }
            pvOps.append(v)
            o += 8
        }
        let args = r.commandLine.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        var maxCPUs = Int.max
        for a in args {
            if a == "nosmp" { maxCPUs = 0 }
            if a.hasPrefix("maxcpus="), let v = Int(a.dropFirst(8)) { maxCPUs = v }
        }
        let uniprocessor = !args.contains("noreplace-smp") && (r.presentCPUs == 1 || maxCPUs <= 1)
        var facts = GuestFacts(
            exports: exports, capabilities: caps, uniprocessorPatched: uniprocessor, possibleCPUs: Int(r.possibleCPUs),
            pvOps: pvOps, paravirtNop: named["_paravirt_nop"], paravirtBUG: named["paravirt_BUG"], functionEntries: functions,
            staticCallReturn0: named["__static_call_return0"], staticCallReturn: named["__static_call_return"],
            returnThunk: r.returnThunk, itsReturnThunk: named["its_return_thunk"], kaslrSlide: r.kaslrSlide)
        // Module per-cpu data lives in the reserved chunk right after the core per-cpu area:
        // [__per_cpu_end, + PERCPU_MODULE_RESERVE (8 KiB)) — mm/percpu.c, include/linux/percpu.h.
        facts.modulePercpuRange = named["__per_cpu_end"].map { $0..<($0 + (8 << 10)) }
        // The release picks the loader replay (ExecGateExplain LoaderSelection.swift).
        facts.kernelRelease = r.kernelRelease.isEmpty ? nil : r.kernelRelease
        return facts
    }
}
