// SPDX-License-Identifier: Apache-2.0
//
// The core kernel's static-call trampolines, as the capture's guest read them at the trusted point
// (`static_call_trampolines.txt`: `<name> <address hex> <8 bytes hex>`, one core `__SCT__<name>`
// record a line, read through /proc/kcore before the first module is loaded), and the
// `static_call_key` facts the capture's registration sends from them (docs/trust.md "Static
// calls", rule 1; docs/capture.md).
//
// Decoding mirrors arch/x86/kernel/static_call.c (6.1 and 6.12): arch_static_call_transform()
// rewrites a trampoline with __static_call_transform(tramp, __sc_insn(!func, true), func), i.e.
//   - JMP: `e9 rel32` to `func` (text_gen_insn(JMP32_INSN_OPCODE, insn, func));
//   - RET (func == NULL): `c3 cc cc cc cc` (retinsn), or with X86_FEATURE_RETHUNK `e9 rel32` to
//     x86_return_thunk; the build's NULL trampoline (ARCH_DEFINE_STATIC_CALL_NULL_TRAMP) is
//     `jmp __x86_return_thunk` (CONFIG_RETHUNK) or `ret; int3; …`;
// and every trampoline carries the ud1 signature `0f b9 cc` after its 5 bytes
// (__ARCH_DEFINE_STATIC_CALL_TRAMP), which __static_call_validate() checks before any rewrite.
//
// What is sent: a fact for a key whose current target is not what the build's own table already
// trusts for it (StaticCallTrust: a tracepoint key's iterator `__traceiter_X`, a PREEMPT_DYNAMIC
// key's two forms), and only a target that is a function entry in core text outside init text and
// init memory (FactsPlausibility would refuse the whole registration for anything else). A
// tracepoint key with one probe (`trace_event=` at boot: tracepoint_update_call() points it at the
// probe) is the case this exists for. Anything else is reported and not sent: a trampoline that
// does not decode, a target outside core text (a module-area page, user space, init text), a
// key the build's table does not cover (its default is not known without the vmlinux; such a key
// stays what trust.md calls "not covered": its sites may hold only NULL forms), NULL (the NULL
// forms are the engine's rules per key: a tracepoint key never holds one), `__static_call_return0`
// (trusted for every key that may hold it, never for the others: docs/trust.md rule 4).

import ExecGateExplain
import ExecGateWire
import _ExecGateInternals

/// One core trampoline as the guest read it.
public struct CoreTrampoline: Sendable, Equatable {
    public var name: String
    public var address: UInt64
    /// The bytes at `address` (nil when the guest could not read them).
    public var bytes: [UInt8]?

    public init(name: String, address: UInt64, bytes: [UInt8]?) {
        self.name = name
        self.address = address
        self.bytes = bytes
    }
}

public enum CoreTrampolines {
    /// The capture file (written by the guest before any module is loaded).
    public static let fileName = "static_call_trampolines.txt"

    /// What a trampoline's bytes say about its key's current target.
    public enum State: Sendable, Equatable {
        /// The RET form: `c3`, or `jmp` to a return thunk (the key is NULL).
        case null
        /// `jmp target`.
        case jump(UInt64)
        /// No form arch_static_call_transform() writes.
        case undecodable(String)
    }

    /// The trampoline's state. `returnThunks`: the addresses a RET-form `jmp` may name (the build's
    /// return thunks and the registered `x86_return_thunk`).
    public static func decode(address: UInt64, bytes: [UInt8], returnThunks: Set<UInt64>) -> State {
        guard bytes.count >= 8 else { return .undecodable("\(bytes.count) bytes, not the 5-byte instruction and the ud1 signature") }
        guard bytes[5] == 0x0f, bytes[6] == 0xb9, bytes[7] == 0xcc else {
            return .undecodable("no ud1 signature 0f b9 cc at +5 (__static_call_validate(): not a trampoline)")
        }
        switch bytes[0] {
        case 0xc3:
            return .null
        case 0xe9:
            let rel = Int32(bitPattern: UInt32(bytes[1]) | UInt32(bytes[2]) << 8 | UInt32(bytes[3]) << 16 | UInt32(bytes[4]) << 24)
            let target = address &+ 5 &+ UInt64(bitPattern: Int64(rel))
            return returnThunks.contains(target) ? .null : .jump(target)
        default:
            return .undecodable("first byte 0x\(Hex.number(UInt64(bytes[0]), width: 2)): neither jmp (e9) nor ret (c3)")
        }
    }

    /// The file's records. Invalid input (a capture is written by the captured guest) is refused
    /// naming the line.
    public static func parse(_ text: String, path: String) throws -> [CoreTrampoline] {
        var out: [CoreTrampoline] = []
        for (i, line) in text.split(whereSeparator: \.isNewline).enumerated() {
            let f = line.split(separator: " ")
            guard f.count == 3, f[0].hasPrefix("__SCT__"), f[1].utf8.count == 16, let a = UInt64(f[1], radix: 16) else {
                throw CaptureError(path: path, reason: "line \(i + 1) is not '__SCT__<name> <16 hex digits> <bytes hex | ?>'")
            }
            var bytes: [UInt8]? = nil
            if f[2] != "?" {
                let h = Array(f[2].utf8)
                guard h.count == 16 else { throw CaptureError(path: path, reason: "line \(i + 1): \(h.count / 2) bytes, not 8") }
                var b: [UInt8] = []
                for j in stride(from: 0, to: 16, by: 2) {
                    guard let v = UInt8(String(decoding: h[j..<j + 2], as: UTF8.self), radix: 16) else {
                        throw CaptureError(path: path, reason: "line \(i + 1): not hex")
                    }
                    b.append(v)
                }
                bytes = b
            }
            out.append(CoreTrampoline(name: String(f[0]), address: a, bytes: bytes))
        }
        return out
    }

    /// What the registration sends from `trampolines` and what it leaves out (one line each).
    public struct Outcome: Sendable {
        public var facts: [StaticCallKeyFact] = []
        /// Keys whose current target moved from the build's default and is sent (key name → target).
        public var sent: [(trampoline: String, target: UInt64)] = []
        /// Trampolines not sent, and why (NULL and default states are not listed).
        public var notSent: [(trampoline: String, reason: String)] = []
        public var read = 0
    }

    /// The facts for `trampolines` against the build's symbols: `named` (name → the first record's
    /// address, as every by-name lookup takes it) and `functionEntries` (the text symbols the
    /// registration sends). `returnThunk`: the registered `x86_return_thunk`, if any.
    public static func outcome(_ trampolines: [CoreTrampoline], named: [String: UInt64], functionEntries: Set<UInt64>,
                               returnThunk: UInt64?) -> Outcome {
        var o = Outcome()
        o.read = trampolines.count
        var thunks = Set(RegistrationSymbols.returnThunks.compactMap { named[$0] })
        if let t = returnThunk { thunks.insert(t) }
        let build = StaticCallTrust.coreTargets(symbols: named)
        // Core text outside init (vmlinux.lds.S: [_stext, _etext), minus [_sinittext, _einittext)
        // and [__init_begin, __init_end), freed by free_initmem()).
        func isCoreText(_ a: UInt64) -> Bool {
            guard let s = named[RegistrationSymbols.stext], let e = named[RegistrationSymbols.etext], s <= a, a < e else { return false }
            for (lo, hi) in [(RegistrationSymbols.sinittext, RegistrationSymbols.einittext), (RegistrationSymbols.initBegin, RegistrationSymbols.initEnd)] {
                if let l = named[lo], let h = named[hi], l <= a, a < h { return false }
            }
            return true
        }
        for t in trampolines {
            let base = t.name.dropFirst(7)
            // The record the registration names the trampoline by (the first of its name): a
            // second record of the name is another symbol, not the key's trampoline.
            guard named[t.name] == t.address else { o.notSent.append((t.name, "not the first record of its name")); continue }
            guard let bytes = t.bytes else { o.notSent.append((t.name, "bytes not read")); continue }
            guard isCoreText(t.address) else { o.notSent.append((t.name, "the trampoline lies outside core text")); continue }
            let target: UInt64
            switch decode(address: t.address, bytes: bytes, returnThunks: thunks) {
            case .null: continue
            case .undecodable(let why): o.notSent.append((t.name, why)); continue
            case .jump(let a): target = a
            }
            let keyAddress = named["__SCK__" + base]
            let trusted = build[t.address, default: []].union(keyAddress.map { build[$0, default: []] } ?? [])
            if trusted.contains(target) { continue }  // the build's default (or the other form it trusts)
            // `__static_call_return0` (DEFINE_STATIC_CALL_RET0): rule 4 trusts it for every key but
            // a PREEMPT_DYNAMIC or tracepoint key, which never holds it (those are the keys the
            // build's table covers): nothing to send either way, reported only for such a key.
            if let r0 = named[RegistrationSymbols.staticCallReturn0], target == r0 {
                if !trusted.isEmpty { o.notSent.append((t.name, "__static_call_return0 is never a state of this key (its only updater writes other targets)")) }
                continue
            }
            guard isCoreText(target), functionEntries.contains(target) else {
                o.notSent.append((t.name, "target 0x\(Hex.number(target)) is no function entry in core text outside init"))
                continue
            }
            guard !trusted.isEmpty else {
                o.notSent.append((t.name, "target 0x\(Hex.number(target)): the build's table does not cover the key (its default is not known)"))
                continue
            }
            o.facts.append(StaticCallKeyFact(key: t.address, current: target))
            if let k = keyAddress { o.facts.append(StaticCallKeyFact(key: k, current: target)) }
            o.sent.append((t.name, target))
        }
        return o
    }
}
