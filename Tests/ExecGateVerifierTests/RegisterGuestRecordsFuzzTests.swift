// SPDX-License-Identifier: Apache-2.0
//
// A seeded fuzz of register-guest's symbol records (round 15, h15-regfuzz): 6f9dab8/cffe9bf keep a
// decoded registration's records as the body's packed bytes (SymbolRecords), validated in one pass,
// and 6e1f72a reads them in place with unsafe pointers (forEachRecord / visitRecords / firstRecord,
// SymbolNames, the streaming symbols digest). A hostile guest or VMM peer writes those bytes. Each
// iteration mutates a valid registration (its packed records mostly, sometimes the body's TLV
// framing) and asserts:
// - the decode never traps, and refuses exactly as the decoder before 6f9dab8 did (code, field and
//   text: `OldRegisterGuestDecode`, the 1dfeaf8 loop reimplemented here as the oracle);
// - a body it accepts decodes to the old decoder's records, and every consumer the verifier runs
//   (KernelFactsKey.symbolsDigest / .of, KernelFacts.symbolBytes, FactsPlausibility.checkSymbols,
//   KernelFacts.make and its tables, the verifier's reply) agrees with the old consumers run on that
//   array (the pre-6e1f72a loops, also reimplemented here) and with the same consumers over the
//   in-process array form;
// - decode(encode(d)) == d and the encoding is the array form's.
// The seed is fixed; the run is 3,000 iterations (about 4 s in a debug build; more with
// EXECGATE_REGFUZZ_ITERATIONS: 40,000 passed in 47 s).

import _ExecGateInternals
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
@testable import ExecGateVerifier
@testable import ExecGateWire
import NIOCore
import XCTest

/// The decode and consumers as they were before 6f9dab8 (1dfeaf8): records decoded to
/// `[KernelSymbol]` one at a time, each name through the strict decoder, consumers over the array.
enum OldRegisterGuestDecode {
    /// 1dfeaf8 TLV.swift decodeString (no ASCII fast path).
    static func decodeString(_ v: ByteBuffer, field: String) throws -> String {
        guard v.readableBytes <= WireLimits.maximumStringLength else {
            throw WireDecodeError(.stringTooLong, field: field, "\(v.readableBytes) bytes")
        }
        let ok = v.withUnsafeReadableBytes { raw -> Bool in
            var it = raw.makeIterator()
            var decoder = UTF8()
            while true {
                switch decoder.decode(&it) {
                case .scalarValue: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
        guard ok else { throw WireDecodeError(.invalidUTF8, field: field) }
        return String(buffer: v)
    }

    static func string(_ r: TLVReader, _ tag: UInt16, _ name: String) throws -> String? {
        guard let v = try r.optional(tag, name) else { return nil }
        return try decodeString(v, field: "register-guest.\(name)")
    }

    /// 1dfeaf8 Messages.swift RegisterGuest.init(decoding:), field for field; the result is built
    /// in process (its records the array).
    static func decode(_ body: ByteBuffer) throws -> RegisterGuest {
        typealias Tag = RegisterGuest.Tag
        let r = try TLVReader(body, message: "register-guest", known: Set(1...15).union([Tag.symbolsDigest, Tag.requireSession]),
                              repeated: [Tag.staticCallKey: WireLimits.maximumStaticCallKeys])
        guard let guestID = try string(r, Tag.guestID, "guest_id") else { throw WireDecodeError(.missingField, field: "register-guest.guest_id") }
        guard !guestID.isEmpty else { throw WireDecodeError(.invalidValue, field: "register-guest.guest_id", "empty") }
        let kernelRelease = try string(r, Tag.kernelRelease, "kernel_release") ?? ""
        let kernelDigest = try r.optional(Tag.kernelDigest, "kernel_digest").map { Array(buffer: $0) } ?? []
        guard kernelDigest.isEmpty || kernelDigest.count == 32 else {
            throw WireDecodeError(.invalidValue, field: "register-guest.kernel_digest", "\(kernelDigest.count) bytes; a SHA-256 digest is 32")
        }
        let resetFlag: UInt8 = try r.integer(Tag.reset, "reset") ?? 0
        guard resetFlag <= 1 else { throw WireDecodeError(.invalidValue, field: "register-guest.reset", "\(resetFlag) is neither 0 nor 1") }
        let requireFlag: UInt8 = try r.integer(Tag.requireSession, "require_session") ?? 0
        guard requireFlag <= 1 else { throw WireDecodeError(.invalidValue, field: "register-guest.require_session", "\(requireFlag) is neither 0 nor 1") }
        let rawKeys = r.all(Tag.staticCallKey)
        guard rawKeys.count <= WireLimits.maximumStaticCallKeys else {
            throw WireDecodeError(.tooManyItems, field: "register-guest.static_call_key", "\(rawKeys.count) > \(WireLimits.maximumStaticCallKeys)")
        }
        let staticCallKeys = try rawKeys.map { try StaticCallKeyFact(decoding: $0) }
        let kaslrSlide: UInt64 = try r.integer(Tag.kaslrSlide, "kaslr_slide") ?? 0
        let cpuCapabilities = try r.optional(Tag.cpuCapabilities, "cpu_caps").map { Array(buffer: $0) } ?? []
        guard cpuCapabilities.count % 4 == 0 else {
            throw WireDecodeError(.invalidValue, field: "register-guest.cpu_caps", "length \(cpuCapabilities.count) is not a multiple of 4")
        }
        var symbolsDigest: [UInt8] = []
        if let digestField = try r.optional(Tag.symbolsDigest, "symbols_digest") {
            guard digestField.readableBytes == 32 else {
                throw WireDecodeError(.invalidValue, field: "register-guest.symbols_digest", "\(digestField.readableBytes) bytes; a SHA-256 digest is 32")
            }
            guard try r.optional(Tag.symbols, "symbols") == nil else {
                throw WireDecodeError(.invalidValue, field: "register-guest.symbols_digest",
                                      "sent with symbols: a registration carries its symbol records or the digest of a known build, not both")
            }
            symbolsDigest = Array(buffer: digestField)
        }
        var symbols: [KernelSymbol] = []
        if var packed = try r.optional(Tag.symbols, "symbols") {
            while packed.readableBytes > 0 {
                guard symbols.count < RegisterGuest.maximumSymbols else {
                    throw WireDecodeError(.tooManyItems, field: "register-guest.symbols", "more than \(RegisterGuest.maximumSymbols)")
                }
                guard let address = packed.readInteger(as: UInt64.self), let type = packed.readInteger(as: UInt8.self),
                      let flags = packed.readInteger(as: UInt8.self), let len = packed.readInteger(as: UInt16.self),
                      let name = packed.readSlice(length: Int(len)) else {
                    throw WireDecodeError(.truncatedField, field: "register-guest.symbols", "record \(symbols.count) truncated")
                }
                guard flags & ~3 == 0 else {
                    throw WireDecodeError(.invalidValue, field: "register-guest.symbols", "record \(symbols.count): unknown flags 0x\(String(flags, radix: 16))")
                }
                symbols.append(KernelSymbol(name: try decodeString(name, field: "register-guest.symbols"), address: address,
                                            type: type, exported: flags & 1 != 0, isFunction: flags & 2 != 0))
            }
        }
        let symbolSource = try string(r, Tag.symbolSource, "symbol_source") ?? ""
        let commandLine = try string(r, Tag.commandLine, "cmdline") ?? ""
        let presentCPUs: UInt32 = try r.integer(Tag.presentCPUs, "present_cpus") ?? 1
        let possibleCPUs: UInt32 = try r.integer(Tag.possibleCPUs, "possible_cpus") ?? presentCPUs
        let returnThunk: UInt64? = try r.integer(Tag.returnThunk, "return_thunk")
        let vulnerabilities = try string(r, Tag.vulnerabilities, "vulnerabilities") ?? ""
        let pvOps = try r.optional(Tag.pvOps, "pv_ops").map { Array(buffer: $0) } ?? []
        return RegisterGuest(guestID: guestID, kernelRelease: kernelRelease, kernelDigest: kernelDigest, kaslrSlide: kaslrSlide,
                             cpuCapabilities: cpuCapabilities, symbols: symbols, symbolSource: symbolSource, commandLine: commandLine,
                             presentCPUs: presentCPUs, possibleCPUs: possibleCPUs, vulnerabilities: vulnerabilities, pvOps: pvOps,
                             returnThunk: returnThunk, reset: resetFlag == 1, staticCallKeys: staticCallKeys, symbolsDigest: symbolsDigest,
                             requireSession: requireFlag == 1)
    }

    /// 1dfeaf8 RegisterGuestReply.linkTimeSymbolRecords: the symbols digest's input, packed whole.
    static func linkTimeRecords(_ symbols: [KernelSymbol], slide: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        for s in symbols {
            let a = s.address >= 0xffff_ffff_8000_0000 ? s.address &- slide : s.address
            withUnsafeBytes(of: a.bigEndian) { out.append(contentsOf: $0) }
            out.append(s.type)
            out.append(UInt8(s.exported ? 1 : 0) | UInt8(s.isFunction ? 2 : 0))
            let n = min(s.name.utf8.count, Int(UInt16.max))
            out.append(UInt8(n >> 8))
            out.append(UInt8(n & 0xff))
            out.append(contentsOf: s.name.utf8.prefix(n))
        }
        return out
    }

    /// 1dfeaf8 KernelFactsKey.of's condition (the key is the digest's when it holds).
    static func oneToOne(_ symbols: [KernelSymbol], slide: UInt64) -> Bool {
        let line = KernelSlide.imageBase
        for s in symbols {
            if s.address >= line && s.address - line < slide { return false }
            if s.name.utf8.count > Int(UInt16.max) { return false }
        }
        return true
    }

    /// 1dfeaf8 KernelFacts.symbolBytes.
    static func symbolBytes(_ symbols: [KernelSymbol]) -> Int {
        symbols.reduce(0) { sum, s in
            var c = s.name.utf8.count + 16
            if s.isText { c += 16 }
            if s.exported { c += KernelFacts.exportCharge }
            if s.name.utf8.starts(with: "__SCK__".utf8) || s.name.utf8.starts(with: "__SCT__".utf8) { c += KernelFacts.staticCallCharge }
            return sum + c
        }
    }

    /// 1dfeaf8 GuestFactsBuilder.kernelFacts's tables: the first exported record of each name, the
    /// first record of each name, the function entries, every address with `slide` removed.
    static func tables(_ symbols: [KernelSymbol], removing slide: KernelSlide) -> (exports: [String: UInt64], named: [String: UInt64], functions: Set<UInt64>) {
        var exports: [String: UInt64] = [:]
        var named: [String: UInt64] = [:]
        var functions = Set<UInt64>()
        let marked = symbols.contains { $0.isFunction }
        for s in symbols {
            let a = slide.linkTime(s.address)
            if s.exported && exports[s.name] == nil { exports[s.name] = a }
            if named[s.name] == nil { named[s.name] = a }
            if s.isText && (!marked || s.isFunction) { functions.insert(a) }
        }
        return (exports, named, functions)
    }

    /// 1dfeaf8 FactsPlausibility.checkSymbols, over the array, verbatim but for its enum's names.
    static func checkSymbols(_ symbols: [KernelSymbol]) -> (failure: String?, facts: FactsPlausibility.BuildFacts) {
        var named: [String: UInt64] = [:]
        var exportedNames = Set<String>()
        var failure: String? = nil
        for s in symbols {
            if named[s.name] == nil { named[s.name] = s.address }
            if s.exported && s.name.isEmpty && failure == nil { failure = "an exported symbol record (address 0x\(String(s.address, radix: 16))) has an empty name" }
            if s.exported && !exportedNames.insert(s.name).inserted && failure == nil { failure = "symbol '\(s.name)' is exported twice" }
        }
        let bounds = KernelBounds(named)
        var keys = Set<UInt64>()
        for s in symbols {
            if s.name.utf8.starts(with: "__SCK__".utf8) { keys.insert(s.address) }
            if s.name.utf8.starts(with: "__SCT__".utf8), s.isText, bounds?.isCoreText(s.address) ?? false { keys.insert(s.address) }
        }
        func isKeyRecord(_ s: KernelSymbol) -> Bool { s.name.utf8.starts(with: "__SCK__".utf8) }
        var ceiling: (name: String, address: UInt64)? = nil
        for s in symbols where (s.exported || isKeyRecord(s)) && s.address >= KernelSlide.imageBase && s.address >= (ceiling?.address ?? 0) { ceiling = (s.name, s.address) }
        let facts = FactsPlausibility.BuildFacts(bounds: bounds, symbolsSent: !symbols.isEmpty,
                                                 returnThunkAddresses: FactsPlausibility.returnThunks.compactMap { named[$0] },
                                                 staticCallKeys: keys, exportCeiling: ceiling)
        if let failure { return (failure, facts) }
        if !symbols.isEmpty && bounds == nil {
            return ("symbols are sent without the core text bounds _stext < _etext: nothing can be checked against them", facts)
        }
        if let end = named[RegistrationSymbols.perCPUEnd] {
            if end > UInt64.max - GuestFactsBuilder.percpuModuleReserve {
                return ("__per_cpu_end 0x\(Hex.number(end)): the module per-cpu reserve after it (PERCPU_MODULE_RESERVE, \(GuestFactsBuilder.percpuModuleReserve) bytes) would wrap the address space", facts)
            }
            if let start = named[RegistrationSymbols.perCPUStart], start > end {
                return ("__per_cpu_start 0x\(Hex.number(start)) lies past __per_cpu_end 0x\(Hex.number(end))", facts)
            }
            if end < KernelSlide.imageBase, let s = symbols.first(where: { $0.address < KernelSlide.imageBase && $0.address > end }) {
                return ("per-cpu symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies past __per_cpu_end 0x\(Hex.number(end)): the module per-cpu reserve would cover core per-cpu data", facts)
            }
        }
        if let b = bounds {
            for s in symbols where s.exported {
                if let i = b.initText, i.contains(s.address) { return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in init text (freed after boot)", facts) }
                if let m = b.initMemory, m.contains(s.address) { return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in the core's init memory [__init_begin, __init_end) (freed after boot)", facts) }
                if s.isText && !b.isCoreText(s.address) { return ("exported text symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies outside core text", facts) }
            }
            if let s = symbols.first(where: { $0.exported }) {
                let freedInit = "no export can be told from the init memory free_initmem() releases after boot"
                let reasons = [freedInit, freedInit, "no export can be told from the rodata/data gap mark_rodata_ro() frees after boot",
                               "no static key can be told to lie in the core's __ro_after_init data, sealed after boot"]
                for ((lo, hi), why) in zip(RegistrationSymbols.requiredBoundPairs, reasons) {
                    guard let a = named[lo], let z = named[hi], a < z else {
                        let kind = why == freedInit ? "core init bounds" : "bounds"
                        return ("symbols are sent with exports ('\(s.name)', …) but without the \(kind) \(lo) < \(hi): \(why)", facts)
                    }
                }
            }
        }
        func alignUp(_ x: UInt64, _ align: UInt64) -> UInt64? { x <= UInt64.max - (align - 1) ? (x + align - 1) & ~(align - 1) : nil }
        if let b = bounds, let textEnd = alignUp(b.coreText.upperBound, 0x1000), let rodata = alignUp(textEnd, 0x20_0000) {
            var gaps = [("text/rodata", textEnd..<rodata)]
            if let er = named[RegistrationSymbols.endRodata], let sd = named[RegistrationSymbols.sdata], let gapStart = alignUp(er, 0x1000), gapStart < sd {
                gaps.append(("rodata/data", gapStart..<sd))
            }
            for (what, gap) in gaps where !gap.isEmpty {
                if let s = symbols.first(where: { $0.exported && gap.contains($0.address) }) {
                    return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in the kernel image's \(what) gap [0x\(Hex.number(gap.lowerBound)), 0x\(Hex.number(gap.upperBound))), which mark_rodata_ro() frees after boot", facts)
                }
            }
            if let lo = named[RegistrationSymbols.startROAfterInit], let hi = named[RegistrationSymbols.endROAfterInit], lo < hi {
                guard let er = named[RegistrationSymbols.endRodata], rodata <= lo, hi <= er else {
                    let end = named[RegistrationSymbols.endRodata].map { "0x" + Hex.number($0) } ?? "not sent"
                    return ("__start_ro_after_init 0x\(Hex.number(lo)) .. __end_ro_after_init 0x\(Hex.number(hi)) lies outside rodata [0x\(Hex.number(rodata)) (the 2 MiB boundary after _etext), __end_rodata \(end)], where vmlinux.lds.h RO_DATA places .data..ro_after_init", facts)
                }
            }
        }
        if let s = symbols.first(where: { isKeyRecord($0) && $0.address < KernelSlide.imageBase }) {
            return ("static-call key '\(s.name)' at 0x\(Hex.number(s.address)) lies outside the kernel image", facts)
        }
        if let b = bounds {
            for h in FactsPlausibility.codeHelpers {
                if let a = named[h], !b.isCoreText(a) {
                    return ("'\(h)' at 0x\(Hex.number(a)) lies outside core text [_stext, _etext) (or in init text): the loader's rewrites jump to it", facts)
                }
            }
        }
        if let b = bounds {
            var bad: String?
            StaticCallTrust.forEachCoreTarget(symbols: named) { k, kn, n, a in
                guard bad == nil else { return }
                if !b.isCoreText(a) {
                    bad = "'\(n)' at 0x\(Hex.number(a)), a static-call target the build trusts for key '\(kn)' (StaticCallTrust), lies outside core text [_stext, _etext) (or in init text)"
                } else if kn.utf8.starts(with: "__SCT__".utf8) && !b.isCoreText(k) {
                    bad = "static-call trampoline '\(kn)' at 0x\(Hex.number(k)), a key the build trusts '\(n)' for (StaticCallTrust), lies outside core text [_stext, _etext) (or in init text)"
                }
            }
            if let bad { return (bad, facts) }
        }
        for s in symbols where s.exported && s.address < KernelSlide.imageBase {
            guard let end = named[RegistrationSymbols.perCPUEnd], end < KernelSlide.imageBase, (named[RegistrationSymbols.perCPUStart] ?? 0) <= s.address, s.address < end else {
                return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies neither in the kernel image nor in the core per-cpu section [__per_cpu_start, __per_cpu_end)", facts)
            }
        }
        return (nil, facts)
    }
}

final class RegisterGuestRecordsFuzzTests: XCTestCase {
    static let slide: UInt64 = 0x0c00_0000
    nonisolated(unsafe) static var cachedPolicy: Policy?
    static func policy() throws -> Policy {
        if let p = cachedPolicy { return p }
        let p = Policy(id: "fuzz", version: 1, trust: try Fixtures.debianTrust())
        cachedPolicy = p
        return p
    }
    static let image = KernelSlide.imageBase  // 0xffffffff80000000

    /// A small plausible build at link time (6.1's layout in miniature): core text, rodata with
    /// `.data..ro_after_init`, the rodata/data gap, init memory, zero-based per-cpu data, exports
    /// of text, data and per-cpu, static-call keys and trampolines, the return thunk, non-ASCII,
    /// empty and long names.
    static let linkTimeSymbols: [KernelSymbol] = {
        func s(_ n: String, _ a: UInt64, _ t: Character, _ e: Bool = false, _ f: Bool = false) -> KernelSymbol {
            KernelSymbol(name: n, address: a, type: UInt8(ascii: t.unicodeScalars.first!), exported: e, isFunction: f)
        }
        var out = [
            s("__per_cpu_start", 0, "A"), s("fixed_percpu_data", 0x0, "D"), s("this_cpu_off", 0x100, "D", true), s("__per_cpu_end", 0x3_0000, "A"),
            s("_stext", 0xffff_ffff_8100_0000, "T"), s("_text", 0xffff_ffff_8100_0000, "T"),
            s("_printk", 0xffff_ffff_8100_1000, "T", true, true), s("memcpy", 0xffff_ffff_8100_1100, "T", true, true),
            s("__x86_return_thunk", 0xffff_ffff_8100_2000, "T", true, true), s("__static_call_return0", 0xffff_ffff_8100_2100, "T", true, true),
            s("_paravirt_nop", 0xffff_ffff_8100_2200, "t", false, true), s("__SCT__might_resched", 0xffff_ffff_8100_3000, "T", false, true),
            s("__cond_resched", 0xffff_ffff_8100_3100, "T", true, true), s("caf\u{e9}_\u{fc}ber_\u{1F600}", 0xffff_ffff_8100_4000, "t", false, true),
            s("local_label", 0xffff_ffff_8100_4100, "t"), s(String(repeating: "long_name_", count: 40), 0xffff_ffff_8100_5000, "T", true, true),
            s("_etext", 0xffff_ffff_81e0_0000, "T"),
            s("__start_rodata", 0xffff_ffff_8200_0000, "D"), s("__start_ro_after_init", 0xffff_ffff_8210_0000, "D"),
            s("__SCK__might_resched", 0xffff_ffff_8210_0100, "D", true), s("__end_ro_after_init", 0xffff_ffff_8211_0000, "D"),
            s("__end_rodata", 0xffff_ffff_8220_0000, "D"), s("_sdata", 0xffff_ffff_8240_0000, "D"),
            s("jiffies", 0xffff_ffff_8250_0000, "D", true), s("", 0xffff_ffff_8250_0100, "d"),
            s("__init_begin", 0xffff_ffff_8300_0000, "T"), s("_sinittext", 0xffff_ffff_8300_0000, "T"), s("start_kernel", 0xffff_ffff_8300_1000, "T", false, true),
            s("_einittext", 0xffff_ffff_8310_0000, "T"), s("__init_end", 0xffff_ffff_8320_0000, "D"),
        ]
        out.append(s("_end", 0xffff_ffff_8400_0000, "B"))
        return out
    }()

    static func registration(_ symbols: [KernelSymbol] = linkTimeSymbols, slide: UInt64 = slide, id: String = "fuzz") -> RegisterGuest {
        let moved = symbols.map { s -> KernelSymbol in var m = s; m.address = KernelSlide(slide).runTime(s.address); return m }
        return RegisterGuest(guestID: id, kernelRelease: "6.1.0-fuzz", kernelDigest: Array(repeating: 0x5a, count: 32), kaslrSlide: slide,
                             cpuCapabilities: [], symbols: moved, symbolSource: "locked-rodata", commandLine: "quiet",
                             presentCPUs: 2, possibleCPUs: 2)
    }

    static func encode(_ r: RegisterGuest) -> ByteBuffer {
        var w = TLVWriter()
        r.encode(into: &w)
        return w.buffer
    }

    /// The body with its symbols field's value replaced by `packed` (framing rewritten to fit).
    static func body(_ r: RegisterGuest, packed: [UInt8]) -> ByteBuffer {
        var w = TLVWriter()
        var stripped = r
        stripped.symbolRecords = SymbolRecords()
        // Fields in tag order: the records (tag 6) go between cpu_caps (5) and symbol_source (7);
        // the decoders accept any order, so the records are simply appended last.
        stripped.encode(into: &w)
        w.bytes(RegisterGuest.Tag.symbols, packed)
        return w.buffer
    }

    /// The packed records of `r` as the wire carries them.
    static func packed(_ r: RegisterGuest) -> [UInt8] {
        let b = encode(r)
        var rest = b
        while rest.readableBytes >= 6 {
            let tag: UInt16 = rest.readInteger()!
            let len: UInt32 = rest.readInteger()!
            let v = rest.readSlice(length: Int(len))!
            if tag == RegisterGuest.Tag.symbols { return Array(buffer: v) }
        }
        return []
    }

    // MARK: - Mutations

    /// Byte sequences a name's strict UTF-8 check must tell: overlong forms, surrogates, past
    /// U+10FFFF, cut sequences, and valid edge scalars (NUL, U+FFFF, U+10FFFF, U+FEFF).
    static let utf8Edges: [[UInt8]] = [
        [0xc0, 0x80], [0xc1, 0xbf], [0xe0, 0x80, 0x80], [0xf0, 0x80, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf],
        [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xff], [0xfe], [0x80], [0xc3], [0xe2, 0x82], [0xf0, 0x9f, 0x98],
        [0x00], [0xef, 0xbf, 0xbf], [0xf4, 0x8f, 0xbf, 0xbf], [0xef, 0xbb, 0xbf], [0xc3, 0xa9], [0xed, 0x9f, 0xbf], [0xee, 0x80, 0x80],
        [0x7f], [0xc2, 0x80],
    ]

    /// Offsets of each record's header in `p` (as far as the records are whole).
    static func recordStarts(_ p: [UInt8]) -> [Int] {
        var out: [Int] = []
        var i = 0
        while p.count - i >= 12 {
            out.append(i)
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            i += 12 + len
        }
        return out
    }

    static func mutate(_ p: inout [UInt8], _ rng: inout SeededRNG) -> String {
        let starts = recordStarts(p)
        func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }
        func randomRecordStart() -> Int? { starts.isEmpty ? nil : pick(starts) }
        switch rng.next() % 16 {
        case 0:
            guard !p.isEmpty else { return "none" }
            let i = Int(rng.next() % UInt64(p.count))
            p[i] ^= UInt8(truncatingIfNeeded: 1 << (rng.next() % 8))
            return "bit flip at \(i)"
        case 1:
            guard !p.isEmpty else { return "none" }
            let i = Int(rng.next() % UInt64(p.count))
            p[i] = pick([0x00, 0xff, 0x80, 0x7f, 0xc0, 0xed, 0xf4, 0x01, 0x02, 0x03, 0x04, 0xfe])
            return "byte \(i) = \(p[i])"
        case 2:
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            let rest = p.count - i - 12
            let new = pick([0, len + 1, max(len - 1, 0), rest, rest + 1, rest - 1, 0xffff, 0xff00, Int(rng.next() % 0x1_0000)])
            let v = UInt16(truncatingIfNeeded: max(new, 0))
            p[i + 10] = UInt8(v >> 8)
            p[i + 11] = UInt8(v & 0xff)
            return "record at \(i): length \(len) -> \(v)"
        case 3:
            guard !p.isEmpty else { return "none" }
            let n = pick([1, 2, 11, 12, 13, Int(rng.next() % UInt64(p.count)) + 1])
            let cut = min(n, p.count)
            p.removeLast(cut)
            return "cut \(cut) bytes at the end"
        case 4:
            guard let i = randomRecordStart() else { return "none" }
            p[i + 9] = UInt8(truncatingIfNeeded: rng.next() % 8 == 0 ? rng.next() : rng.next() % 4)
            return "record at \(i): flags \(p[i + 9])"
        case 5:
            guard let i = randomRecordStart() else { return "none" }
            p[i + 8] = pick([UInt8(ascii: "T"), UInt8(ascii: "t"), UInt8(ascii: "W"), UInt8(ascii: "w"), UInt8(ascii: "D"), UInt8(ascii: "A"), 0, 0xff, 0x80])
            return "record at \(i): type \(p[i + 8])"
        case 6, 7:
            // A UTF-8 edge sequence placed in a name (its length grown to hold it).
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            guard i + 12 + len <= p.count else { return "none" }
            let seq = pick(utf8Edges)
            let at = i + 12 + Int(rng.next() % UInt64(len + 1))
            let ascii: [UInt8] = rng.next() % 2 == 0 ? Array("abcdefghij".utf8.prefix(Int(rng.next() % 11))) : []
            let insert = ascii + seq
            guard len + insert.count <= 0xffff else { return "none" }
            p.insert(contentsOf: insert, at: at)
            let nl = len + insert.count
            p[i + 10] = UInt8(nl >> 8)
            p[i + 11] = UInt8(nl & 0xff)
            return "record at \(i): name gets \(insert) at \(at - i - 12)"
        case 8:
            // A whole record appended or inserted: a copy of another (exported twice, one name twice).
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            guard i + 12 + len <= p.count else { return "none" }
            let rec = Array(p[i..<(i + 12 + len)])
            let at = pick(starts + [p.count])
            p.insert(contentsOf: rec, at: at)
            return "record at \(i) copied to \(at)"
        case 9:
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            guard i + 12 + len <= p.count else { return "none" }
            p.removeSubrange(i..<(i + 12 + len))
            return "record at \(i) removed"
        case 10:
            // An address at an edge: the image line, the slide's reach, 0, the top, the per-cpu end.
            guard let i = randomRecordStart() else { return "none" }
            let a: UInt64 = pick([image, image &+ slide &- 1, image &+ slide, 0, .max, .max - 0x1fff, 0x3_0000, 0x2_ffff, 0xffff_ffff_8100_0000 &+ slide,
                                  0xffff_ffff_8300_0800 &+ slide, 0xffff_ffff_8230_0000 &+ slide, 0xffff_ffff_81f0_0000 &+ slide,
                                  0xffff_ffff_c000_0000 &+ slide, rng.next()])
            withUnsafeBytes(of: a.bigEndian) { for k in 0..<8 { p[i + k] = $0[k] } }
            return "record at \(i): address 0x\(String(a, radix: 16))"
        case 11:
            // Zero-length name: the record becomes a bare header.
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            guard i + 12 + len <= p.count else { return "none" }
            p.removeSubrange((i + 12)..<(i + 12 + len))
            p[i + 10] = 0
            p[i + 11] = 0
            return "record at \(i): empty name"
        case 12:
            // Junk appended: 1..24 random bytes (a partial header, a header claiming more).
            let n = Int(rng.next() % 24) + 1
            for _ in 0..<n { p.append(UInt8(truncatingIfNeeded: rng.next())) }
            return "\(n) random bytes appended"
        case 13:
            // Two records swapped (order decides which record of a name is first).
            guard starts.count >= 2 else { return "none" }
            let a = pick(starts), b = pick(starts)
            guard a < b else { return "none" }
            let la = Int(p[a + 10]) << 8 | Int(p[a + 11]), lb = Int(p[b + 10]) << 8 | Int(p[b + 11])
            guard b + 12 + lb <= p.count, a + 12 + la <= b else { return "none" }
            let ra = Array(p[a..<(a + 12 + la)]), rb = Array(p[b..<(b + 12 + lb)])
            p.replaceSubrange(b..<(b + 12 + lb), with: ra)
            p.replaceSubrange(a..<(a + 12 + la), with: rb)
            return "records at \(a) and \(b) swapped"
        case 14:
            // A name renamed to a prefix the consumers test by bytes (__SCK__, __SCT__) or a helper's.
            guard let i = randomRecordStart() else { return "none" }
            let len = Int(p[i + 10]) << 8 | Int(p[i + 11])
            guard i + 12 + len <= p.count else { return "none" }
            let name = Array(pick(["__SCK__", "__SCT__", "__SCK_", "__SC", "_stext", "_etext", "__per_cpu_end", "__x86_return_thunk",
                                   "__cond_resched", "__SCK__x\u{e9}", "_printk", "jiffies", "__init_end", "_sdata", "e\u{301}", "\u{e9}"]).utf8)
            p.replaceSubrange((i + 12)..<(i + 12 + len), with: name)
            p[i + 10] = UInt8(name.count >> 8)
            p[i + 11] = UInt8(name.count & 0xff)
            return "record at \(i): name \(String(decoding: name, as: UTF8.self))"
        default:
            // Several of the above.
            var what: [String] = []
            for _ in 0..<(2 + Int(rng.next() % 3)) {
                what.append(mutate(&p, &rng))
            }
            return what.joined(separator: "; ")
        }
    }

    // MARK: - Checks

    struct Seen: Equatable {
        var address: UInt64, type: UInt8, flags: UInt8, name: [UInt8]
    }

    static func seen(_ symbols: [KernelSymbol]) -> [Seen] {
        symbols.map { Seen(address: $0.address, type: $0.type, flags: UInt8($0.exported ? 1 : 0) | UInt8($0.isFunction ? 2 : 0), name: Array($0.name.utf8)) }
    }

    static func outcome(_ body: ByteBuffer) -> Result<RegisterGuest, WireDecodeError> {
        do { return .success(try RegisterGuest(decoding: body)) } catch let e as WireDecodeError { return .failure(e) } catch {
            return .failure(WireDecodeError(.invalidValue, field: "not-a-wire-error", "\(error)"))
        }
    }

    static func oldOutcome(_ body: ByteBuffer) -> Result<RegisterGuest, WireDecodeError> {
        do { return .success(try OldRegisterGuestDecode.decode(body)) } catch let e as WireDecodeError { return .failure(e) } catch {
            return .failure(WireDecodeError(.invalidValue, field: "not-a-wire-error", "\(error)"))
        }
    }

    static func describe(_ b: FactsPlausibility.BuildFacts) -> String {
        let bounds = b.bounds.map { "\($0.coreText) \(String(describing: $0.initText)) \(String(describing: $0.initMemory))" } ?? "nil"
        return "bounds \(bounds) sent \(b.symbolsSent) thunks \(b.returnThunkAddresses) keys \(b.staticCallKeys.sorted()) ceiling \(String(describing: b.exportCeiling))"
    }

    /// Everything the verifier derives from an accepted registration, new (in place over the
    /// body's bytes) against old (the 1dfeaf8 loops over the old decoder's array) and against the
    /// new consumers over the array form.
    @discardableResult
    func checkConsumers(_ d: RegisterGuest, old: RegisterGuest, tag: String, verifierToo: Bool) throws -> Bool {
        let array = old.symbols
        var inProcess = d
        inProcess.symbols = d.symbols  // the array form of the same records
        // Records in place, as values and as an array: what the old decoder read.
        var inPlace: [Seen] = []
        d.symbolRecords.forEachRecord { r in
            inPlace.append(Seen(address: r.address, type: r.type, flags: r.flags, name: Array(r.nameBytes)))
            XCTAssertEqual(r.makeName(), String(decoding: r.nameBytes, as: UTF8.self))
        }
        let expected = Self.seen(array)
        XCTAssertEqual(inPlace, expected, tag)
        // A record as a value (`firstRecord`, its name made a `String`): the one at an index the tag picks.
        if !expected.isEmpty {
            let k = tag.utf8.count % expected.count
            var i = 0
            let r = d.symbolRecords.firstRecord { _ in defer { i += 1 }; return i == k }
            XCTAssertEqual(r.map { Seen(address: $0.address, type: $0.type, flags: $0.flags, name: Array($0.name.utf8)) }, expected[k], tag)
        }
        XCTAssertEqual(Self.seen(d.symbols), expected, tag)
        XCTAssertEqual(d.symbolRecords.count, array.count, tag)
        XCTAssertEqual(d, old, tag)
        XCTAssertEqual(d.symbolRecords.packedByteCount, array.reduce(0) { $0 + 12 + $1.name.utf8.count }, tag)

        // The symbols digest: the old bytes, whole and in windows of any size.
        let oldLinkTime = OldRegisterGuestDecode.linkTimeRecords(array, slide: d.kaslrSlide)
        let digest = KernelFactsKey.symbolsDigest(d)
        XCTAssertEqual(digest, oldLinkTime.withUnsafeBytes { Digest.sha256($0).bytes }, tag)
        XCTAssertEqual(KernelFactsKey.symbolsDigest(inProcess), digest, tag)
        XCTAssertEqual(RegisterGuestReply.linkTimeSymbolRecords(d), oldLinkTime, tag)
        var pieces: [UInt8] = []
        let piece = [1, 12, 13, 47, 100, 4096][tag.utf8.count % 6]
        RegisterGuestReply.linkTimeSymbolRecords(d, piece: piece) { pieces.append(contentsOf: $0) }
        XCTAssertEqual(pieces, oldLinkTime, "\(tag) piece \(piece)")

        // The key, the charge.
        let key = KernelFactsKey.of(d, symbolsDigest: digest)
        XCTAssertEqual(key != nil, OldRegisterGuestDecode.oneToOne(array, slide: d.kaslrSlide), tag)
        XCTAssertEqual(KernelFacts.symbolBytes(d), OldRegisterGuestDecode.symbolBytes(array), tag)
        XCTAssertEqual(KernelFacts.symbolBytes(inProcess), OldRegisterGuestDecode.symbolBytes(array), tag)

        // The plausibility of the build: the same refusal text and the same build facts.
        let new = FactsPlausibility.checkSymbols(d.symbolRecords)
        let oldCheck = OldRegisterGuestDecode.checkSymbols(array)
        XCTAssertEqual(new.failure, oldCheck.failure, tag)
        XCTAssertEqual(Self.describe(new.facts), Self.describe(oldCheck.facts), tag)
        XCTAssertEqual(FactsPlausibility.checkSymbols(inProcess.symbolRecords).failure, oldCheck.failure, tag)
        let oldNamed = OldRegisterGuestDecode.tables(array, removing: .none)
        XCTAssertEqual(new.names.named, oldNamed.named, tag)
        XCTAssertEqual(new.names.exports, oldNamed.exports, tag)

        // The build's facts and tables (shared at link time when keyed, private otherwise).
        for k in [key, nil] {
            switch KernelFacts.make(d, key: k) {
            case .failure(let f):
                XCTAssertEqual(f.message, oldCheck.failure, tag)
            case .success(let facts):
                XCTAssertNil(oldCheck.failure, tag)
                let removed = k == nil ? KernelSlide.none : KernelSlide(d.kaslrSlide)
                let t = OldRegisterGuestDecode.tables(array, removing: removed)
                XCTAssertEqual(facts.base.facts.exports.dictionary(), t.exports, tag)
                XCTAssertEqual(Set(facts.base.facts.functionEntries), t.functions, tag)
                var helpers: [String: UInt64] = [:]
                for n in GuestFactsBuilder.helperNames { helpers[n] = t.named[n] }
                XCTAssertEqual(facts.base.helpers, helpers, tag)
                XCTAssertEqual(Self.describe(facts.build), Self.describe(oldCheck.facts.mapped(removed.linkTime, keys: true)), tag)
                XCTAssertEqual(facts.symbolCount, array.count, tag)
                XCTAssertEqual(facts.symbolBytes, OldRegisterGuestDecode.symbolBytes(array), tag)
                let highest = k == nil ? nil : array.map(\.address).filter { $0 >= KernelSlide.imageBase }.max().map(removed.linkTime)
                XCTAssertEqual(facts.highestMovedAddress, highest, tag)
                // The whole-registration facts (no sharing) from the same records.
                let alone = GuestFactsBuilder.facts(from: d)
                let aloneRef = GuestFactsBuilder.facts(from: inProcess)
                XCTAssertEqual(alone.exports.dictionary(), aloneRef.exports.dictionary(), tag)
                XCTAssertEqual(Set(alone.functionEntries), Set(aloneRef.functionEntries), tag)
                XCTAssertEqual(alone.staticCallTrustedTargets.dictionary(), aloneRef.staticCallTrustedTargets.dictionary(), tag)
            }
        }

        // The verifier's answer to the decoded body and to the array form.
        if verifierToo {
            let policy = try Self.policy()
            let a = Verifier(policy: policy).respond(to: .registerGuest(d), requestDigest: [])
            let b = Verifier(policy: policy).respond(to: .registerGuest(inProcess), requestDigest: [])
            XCTAssertEqual("\(a)", "\(b)", tag)
        }

        // Round trip: the encoding is the array form's, and decodes to the same registration.
        let enc = Self.encode(d)
        XCTAssertEqual(enc, Self.encode(old), tag)
        let again = try RegisterGuest(decoding: enc)
        XCTAssertEqual(again, d, tag)
        XCTAssertEqual(Self.encode(again), enc, tag)
        return oldCheck.failure == nil
    }

    func testTheBaseRegistrationIsPlausibleAndSharedAtItsSlide() throws {
        let r = Self.registration()
        let d = try RegisterGuest(decoding: Self.encode(r))
        XCTAssertNil(FactsPlausibility.checkSymbols(d.symbolRecords).failure)
        XCTAssertNotNil(KernelFactsKey.of(d, symbolsDigest: KernelFactsKey.symbolsDigest(d)))
        let policy = try Self.policy()
        guard case .registerGuestReply = Verifier(policy: policy).respond(to: .registerGuest(d), requestDigest: []) else {
            return XCTFail("the base registration: \(Verifier(policy: policy).respond(to: .registerGuest(d), requestDigest: []))")
        }
        try checkConsumers(d, old: try OldRegisterGuestDecode.decode(Self.encode(r)), tag: "base", verifierToo: true)
    }

    func testMutatedRecordsDecodeAsBeforeAndEveryConsumerAgrees() throws {
        let iterations = Int(ProcessInfo.processInfo.environment["EXECGATE_REGFUZZ_ITERATIONS"] ?? "") ?? 3000
        let base = Self.registration()
        let basePacked = Self.packed(base)
        let baseBody = Self.encode(base)
        var accepted = 0, plausible = 0, refused: [String: Int] = [:]
        let started = Date()
        for it in 0..<iterations {
            let seed = 0x4e67_0000 &+ UInt64(it)
            var rng = SeededRNG(seed: seed)
            let body: ByteBuffer
            var what: String
            if rng.next() % 8 == 0 {
                // The body's own bytes (TLV framing, other fields, the records' field length).
                var b = Array(buffer: baseBody)
                what = Self.mutate(&b, &rng)
                body = ByteBuffer(bytes: b)
                what = "body: " + what
            } else {
                var p = basePacked
                what = Self.mutate(&p, &rng)
                if rng.next() % 3 == 0 { what += "; " + Self.mutate(&p, &rng) }
                body = Self.body(base, packed: p)
            }
            let tag = "seed 0x\(String(seed, radix: 16)): \(what)"
            let new = Self.outcome(body)
            let old = Self.oldOutcome(body)
            switch (new, old) {
            case (.failure(let e), .failure(let o)):
                XCTAssertEqual(e.code, o.code, tag)
                XCTAssertEqual(e.field, o.field, tag)
                XCTAssertEqual(e.detail, o.detail, tag)
                refused["\(e.code.rawValue) \(e.field)", default: 0] += 1
            case (.success(let d), .success(let o)):
                accepted += 1
                if try checkConsumers(d, old: o, tag: tag, verifierToo: it % 16 == 0) { plausible += 1 }
            case (.success, .failure(let o)):
                XCTFail("accepted what the old decoder refused (\(o.description)): \(tag)")
            case (.failure(let e), .success):
                XCTFail("refused what the old decoder accepted (\(e.description)): \(tag)")
            }
        }
        print("register-guest records fuzz: \(iterations) iterations in \(String(format: "%.1f", Date().timeIntervalSince(started))) s, \(accepted) accepted (\(plausible) plausible builds); refused \(refused.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(accepted, iterations / 10)
        XCTAssertGreaterThan(plausible, iterations / 20, "the mutants reach the fact tables")
        XCTAssertGreaterThan(refused.values.reduce(0, +), iterations / 10)
    }

    // MARK: - Edges the random walk rarely reaches

    /// Names of exactly 65,535 bytes (ASCII and not), a zero-length name last, and a record cut at
    /// its last byte: decoded as before, read in place to the last byte, and hashed as before
    /// across the digest's 64 KiB windows (each long record crosses one).
    func testLongestNamesAndWindowBoundaries() throws {
        var symbols = Self.registration().symbols
        let asciiMax = String(repeating: "a", count: 65_535)
        let mixedMax = String(repeating: "b", count: 65_535 - 4 * 3) + String(repeating: "\u{e9}", count: 6)  // 65,523 + 12 bytes
        XCTAssertEqual(mixedMax.utf8.count, 65_535)
        for (i, n) in [asciiMax, mixedMax, asciiMax + "", String(repeating: "c", count: 65_534 - 12)].enumerated() {
            symbols.append(KernelSymbol(name: n, address: 0xffff_ffff_8260_0000 &+ Self.slide &+ UInt64(i) << 12, type: UInt8(ascii: "d"), exported: false))
        }
        symbols.append(KernelSymbol(name: "", address: 0xffff_ffff_8270_0000 &+ Self.slide, type: UInt8(ascii: "d"), exported: false))
        var r = Self.registration()
        r.symbols = symbols
        let body = Self.encode(r)
        let d = try RegisterGuest(decoding: body)
        let o = try OldRegisterGuestDecode.decode(body)
        try checkConsumers(d, old: o, tag: "longest names", verifierToo: true)
        // The same records cut at every byte of the last 13 and of the longest name's end.
        let p = Self.packed(r)
        for cut in Array(1...13) + [12 + 1, 65_535, 65_536, 65_547] where cut <= p.count {
            let b = Self.body(r, packed: Array(p.dropLast(cut)))
            let e = Self.outcome(b), oe = Self.oldOutcome(b)
            switch (e, oe) {
            case (.failure(let x), .failure(let y)):
                XCTAssertEqual([x.code.rawValue, x.field, x.detail], [y.code.rawValue, y.field, y.detail], "cut \(cut)")
            case (.success(let x), .success(let y)):
                try checkConsumers(x, old: y, tag: "cut \(cut)", verifierToo: false)
            default:
                XCTFail("cut \(cut): new \(e), old \(oe)")
            }
        }
        // A length field one past the end, from a 65,535-byte name that is the last record.
        var q = p
        let last = Self.recordStarts(q).last!
        q[last + 10] = 0xff; q[last + 11] = 0xff
        q.append(contentsOf: Array(repeating: UInt8(ascii: "z"), count: 65_534))
        let b = Self.body(r, packed: q)
        if case .failure(let x) = Self.outcome(b), case .failure(let y) = Self.oldOutcome(b) {
            XCTAssertEqual([x.code.rawValue, x.field, x.detail], [y.code.rawValue, y.field, y.detail])
        } else { XCTFail("a name one byte short of its length decoded") }
    }

    /// Record counts at and past the 1,048,576 limit (bare 12-byte records, ~12 MiB): the last
    /// allowed record decodes; one more record, even a truncated byte, is `too-many-items` (the
    /// count is told before the record is read), as before.
    func testRecordCountsAtAndPastTheLimit() throws {
        let limit = RegisterGuest.maximumSymbols
        XCTAssertEqual(limit, 1 << 20)
        var packed = [UInt8](repeating: 0, count: 12 * limit)
        for i in 0..<limit { packed[12 * i + 8] = UInt8(ascii: "d") }
        let base = RegisterGuest(guestID: "many")
        let atLimit = try RegisterGuest(decoding: Self.body(base, packed: packed))
        XCTAssertEqual(atLimit.symbolRecords.count, limit)
        var visited = 0
        atLimit.symbolRecords.forEachRecord { r in visited += 1; XCTAssertEqual(r.nameBytes.count, 0) }
        XCTAssertEqual(visited, limit)
        for extra: [UInt8] in [[0], Array(repeating: 0, count: 12), [0, 0, 0, 0, 0, 0, 0, 0, 0x54, 9, 0xff, 0xff]] {
            let b = Self.body(base, packed: packed + extra)
            guard case .failure(let e) = Self.outcome(b) else { XCTFail("\(extra.count) bytes past the limit decoded"); continue }
            XCTAssertEqual(e.code, .tooManyItems)
            XCTAssertEqual(e.field, "register-guest.symbols")
            XCTAssertEqual(e.detail, "more than 1048576")
        }
    }
}
