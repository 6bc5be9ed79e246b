// SPDX-License-Identifier: Apache-2.0
//
// One immutable copy of a kernel build's facts for every guest that registers that build.
//
// A registration's facts fall in two parts (GuestFactsBuilder.swift):
//   - the build's: everything that follows from the symbol records at their run-time addresses
//     (exports, function entries, named helpers, the per-cpu reserve, the build-derived
//     static-call table, init ranges) — ~100,000 records, tens of MB once turned into tables;
//   - the guest's: CPU capability words, CPU counts and command line, `pv_ops`, the return
//     thunk, its static-call keys, the kernel release — a few KiB.
// The first part is built and checked once per build and shared; the second is per guest.
//
// Soundness. The copy is found by **content**, never by a name the peer chooses: the key is the
// symbols digest (SHA-256 over the records as the protocol packs them, slide removed: what
// `register-guest-reply` returns and a policy pin names), the KASLR slide, and the kernel_digest the
// registration claims. The digest plus the slide determine every run-time record exactly (see
// `KernelFactsKey.isShareable` for the one case where removing the slide is not one-to-one; such a
// registration gets a private copy). So:
//   - a registration that claims a known kernel_digest but carries other symbols has another key:
//     it gets its own copy (charged in full against the symbol budget) and is judged by its own
//     facts; the shared copy, and every guest on it, is untouched. It is not refused: without a
//     policy pin ExecGate does not know which symbols belong to a kernel_digest, and refusing the
//     second registrant would let the first one — possibly the bad one — decide for every later
//     guest. With a pin (`kernel … symbols …`), the verifier refuses it before it gets here;
//   - a shared copy is immutable after it is built (`let` only; its tables are value types that
//     each guest copies on write), so no guest's request can change what another is judged by;
//   - a copy is built and checked for plausibility (the symbol rules of FactsPlausibility.swift)
//     once; a build that fails is refused and never stored. Each guest's own facts are checked
//     against the copy on every registration.
// A copy lives while a guest uses it: the registry counts guests per key and drops its reference
// when the last one is reset onto another build or removed (requests in flight keep theirs).

import ExecGateExplain
import ExecGateSignature
import ExecGateWire

/// What identifies one shareable copy of a build's facts.
public struct KernelFactsKey: Hashable, Sendable {
    /// `kernel_digest` as the registration claims it (bytes; may be empty).
    public let kernelDigest: [UInt8]
    /// SHA-256 over the symbol records with the slide removed (`register-guest-reply` symbols_digest).
    public let symbolsDigest: [UInt8]
    public let slide: UInt64

    public init(kernelDigest: [UInt8], symbolsDigest: [UInt8], slide: UInt64) {
        self.kernelDigest = kernelDigest
        self.symbolsDigest = symbolsDigest
        self.slide = slide
    }

    /// The key of `r`, or nil when its records cannot be told apart from another registration's by
    /// the symbols digest and the slide alone (then its facts are private):
    ///   - the digest removes the slide only from addresses ≥ 0xffffffff80000000
    ///     (`RegisterGuestReply.linkTimeSymbolRecords`), so a run-time address in
    ///     `[0xffffffff80000000, 0xffffffff80000000 + slide)` (or one the subtraction wraps) packs
    ///     like an unmoved address below that line: two different run-time tables, one digest;
    ///   - the digest covers at most 65,535 bytes of a name (the wire's u16 length): longer names
    ///     (only possible for a registration built in-process) could differ unseen.
    /// `symbolsDigest` must be the digest of `r` (the verifier computes it for the reply and the pin).
    public static func of(_ r: RegisterGuest, symbolsDigest: [UInt8]) -> KernelFactsKey? {
        guard symbolsDigest.count == 32 else { return nil }
        let line: UInt64 = 0xffff_ffff_8000_0000
        for s in r.symbols {
            if s.address >= line && s.address &- r.kaslrSlide < line { return nil }
            if s.name.utf8.count > Int(UInt16.max) { return nil }
        }
        return KernelFactsKey(kernelDigest: r.kernelDigest, symbolsDigest: symbolsDigest, slide: r.kaslrSlide)
    }

    /// The symbols digest of `r`, as the verifier computes it.
    public static func symbolsDigest(_ r: RegisterGuest) -> [UInt8] {
        RegisterGuestReply.linkTimeSymbolRecords(r).withUnsafeBytes { Digest.sha256($0).bytes }
    }
}

/// The immutable facts of one kernel build at one slide: shared by every guest registered with
/// the same `key`, or private to one guest (`key == nil`).
public final class KernelFacts: Sendable {
    /// nil: a private copy (never found by another registration).
    public let key: KernelFactsKey?
    /// The engine's facts of the build; every per-guest field at its default
    /// (GuestFactsBuilder.kernelFacts). A guest's facts are a copy of it with its own fields set.
    public let base: GuestFacts
    /// What the per-guest plausibility checks need of the build.
    let build: FactsPlausibility.BuildFacts
    public let symbolCount: Int
    /// What this copy is charged against the registry's symbol budget (once per copy).
    public let symbolBytes: Int

    /// Build and check the facts of `r`'s symbols; a failure names the rule (implausible facts).
    static func make(_ r: RegisterGuest, key: KernelFactsKey?) -> Result<KernelFacts, FactsRefusal> {
        let checked = FactsPlausibility.checkSymbols(r.symbols)
        if let why = checked.failure { return .failure(FactsRefusal(message: why)) }
        return .success(KernelFacts(key: key, base: GuestFactsBuilder.kernelFacts(symbols: r.symbols, slide: r.kaslrSlide),
                                    build: checked.facts, symbolCount: r.symbols.count, symbolBytes: Self.symbolBytes(r)))
    }

    private init(key: KernelFactsKey?, base: GuestFacts, build: FactsPlausibility.BuildFacts, symbolCount: Int, symbolBytes: Int) {
        self.key = key
        self.base = base
        self.build = build
        self.symbolCount = symbolCount
        self.symbolBytes = symbolBytes
    }

    /// Symbol bytes of a registration: its names plus 16 bytes of record each (the size they
    /// arrive in).
    static func symbolBytes(_ r: RegisterGuest) -> Int { r.symbols.reduce(0) { $0 + $1.name.utf8.count + 16 } }

    /// The engine facts of guest `r` on this build, or why its own facts are implausible.
    func guestFacts(_ r: RegisterGuest) -> Result<GuestFacts, FactsRefusal> {
        let facts = GuestFactsBuilder.guestFacts(kernel: base, from: r)
        if let why = FactsPlausibility.checkGuest(r, facts: facts, build: build) { return .failure(FactsRefusal(message: why)) }
        return .success(facts)
    }
}

struct FactsRefusal: Error { var message: String }
