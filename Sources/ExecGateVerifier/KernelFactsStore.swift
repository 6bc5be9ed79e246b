// SPDX-License-Identifier: Apache-2.0
//
// One immutable copy of a kernel build's facts for every guest that registers that build.
//
// A registration's facts fall in two parts (GuestFactsBuilder.swift):
//   - the build's: everything that follows from the symbol records (exports, function entries,
//     named helpers, the per-cpu reserve, the build-derived static-call table, init ranges) —
//     ~100,000 records, tens of MB once turned into tables — kept at link-time addresses
//     (the KASLR slide removed, as the symbols digest removes it: ExecGateExplain KernelSlide);
//   - the guest's: its KASLR slide, CPU capability words, CPU counts and command line, `pv_ops`,
//     the return thunk, its static-call keys, the kernel release — a few KiB.
// The first part is built and checked once per build and shared by guests at every slide (each
// reads it at its own: lookups map a run-time address back and accept it only if it maps forward
// to itself, so they answer exactly what a table of the guest's own addresses would); the second
// is per guest.
//
// Soundness. The copy is found by **content**, never by a name the peer chooses: the key is the
// symbols digest (SHA-256 over the records as the protocol packs them, slide removed: what
// `register-guest-reply` returns and a policy pin names) and the kernel_digest the registration
// claims. The digest plus a guest's slide determine every run-time record of that guest exactly
// (see `KernelFactsKey.of` for the case where removing the slide is not one-to-one and in order;
// such a registration gets a private copy at its run-time addresses). So:
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
// A registration **by digest** (no records, the symbols digest of a build) finds a held copy by
// that key or is refused `unknown-build`: the copy was built from records whose digest the service
// computed itself, so attaching gives what resending those records would (docs/trust.md,
// "Registration by digest"); `admits` refuses the one slide no full registration could have.

import ExecGateExplain
import ExecGateSignature
import ExecGateWire

/// What identifies one shareable copy of a build's facts. The KASLR slide is not part of it: a
/// copy holds link-time addresses, and each guest reads it at its own slide (KernelSlide).
public struct KernelFactsKey: Hashable, Sendable {
    /// `kernel_digest` as the registration claims it (bytes; may be empty).
    public let kernelDigest: [UInt8]
    /// SHA-256 over the symbol records with the slide removed (`register-guest-reply` symbols_digest).
    public let symbolsDigest: [UInt8]

    public init(kernelDigest: [UInt8], symbolsDigest: [UInt8]) {
        self.kernelDigest = kernelDigest
        self.symbolsDigest = symbolsDigest
    }

    /// The key of `r`, or nil when removing its slide is not one-to-one and order-keeping on its
    /// records (then its facts are private, at its run-time addresses):
    ///   - the digest removes the slide only from addresses ≥ 0xffffffff80000000
    ///     (`RegisterGuestReply.linkTimeSymbolRecords`), so a run-time address in
    ///     `[0xffffffff80000000, 0xffffffff80000000 + slide)` packs below that line (or, when the
    ///     subtraction wraps, far above it): two different run-time tables could have one digest,
    ///     and the link-time order of the records would not be their run-time order. With every
    ///     moved address at least 0xffffffff80000000 + slide, removing the slide maps the records
    ///     one-to-one, in order, onto the link-time records and applying it maps them back
    ///     (KernelSlide), so the digest and the slide determine every run-time record and every
    ///     comparison between them (the plausibility rules);
    ///   - the digest covers at most 65,535 bytes of a name (the wire's u16 length): longer names
    ///     (only possible for a registration built in-process) could differ unseen.
    /// `symbolsDigest` must be the digest of `r` (the verifier computes it for the reply and the pin).
    public static func of(_ r: RegisterGuest, symbolsDigest: [UInt8]) -> KernelFactsKey? {
        guard symbolsDigest.count == 32 else { return nil }
        let line = KernelSlide.imageBase
        let slide = r.kaslrSlide
        let oneToOne = r.symbolRecords.visitRecords { s in
            !(s.address >= line && s.address - line < slide) && s.nameBytes.count <= Int(UInt16.max)
        }
        return oneToOne ? KernelFactsKey(kernelDigest: r.kernelDigest, symbolsDigest: symbolsDigest) : nil
    }

    /// The symbols digest of `r` (the one place it is computed: the verifier's reply and pins, the
    /// registry's key): SHA-256 over its records at link-time addresses; for a registration by
    /// digest, the digest it names (the records it stands for are the held copy's).
    public static func symbolsDigest(_ r: RegisterGuest) -> [UInt8] {
        if r.isByDigest { return r.symbolsDigest }
        // Hashed as the records are rewritten, a window at a time: the link-time records of a
        // 28 MB registration were once packed whole first (one more body, before any budget).
        return Digest.compute(.sha256, streaming: { feed in RegisterGuestReply.linkTimeSymbolRecords(r, feed) }).bytes
    }
}

/// The immutable facts of one kernel build: shared by every guest registered with the same `key`
/// at link-time addresses (each guest reads them at its own slide), or private to one guest
/// (`key == nil`) at its run-time addresses.
public final class KernelFacts: Sendable {
    /// nil: a private copy (never found by another registration).
    public let key: KernelFactsKey?
    /// The engine's tables of the build and its named helpers (GuestFactsBuilder.kernelFacts),
    /// at link-time addresses when shared. A guest's facts read them at its slide, with its own
    /// fields set (`facts(for:)`).
    let base: GuestFactsBuilder.BuildTables
    /// What the per-guest plausibility checks need of the build (link-time when shared).
    let build: FactsPlausibility.BuildFacts
    public let symbolCount: Int
    /// What this copy is charged against the registry's symbol budget (once per copy).
    public let symbolBytes: Int
    /// The highest link-time address the slide moves (≥ `KernelSlide.imageBase`), nil when none
    /// does or the copy is private: what decides which slides a registration by digest may read
    /// this copy at (`admits`).
    let highestMovedAddress: UInt64?

    /// The engine's facts of the build without any guest's fields, at link-time addresses when
    /// shared (for inspection and tests).
    public var buildFacts: GuestFacts { base.facts }

    /// Build and check the facts of `r`'s symbols; a failure names the rule (implausible facts).
    static func make(_ r: RegisterGuest, key: KernelFactsKey?) -> Result<KernelFacts, FactsRefusal> {
        var checked = FactsPlausibility.checkSymbols(r.symbolRecords)
        if let why = checked.failure { return .failure(FactsRefusal(message: why)) }
        // A shared copy removes the slide of the registration that builds it; the checks of the
        // symbols alone hold at every slide the key admits (KernelFactsKey.of keeps the order).
        let removed = key == nil ? KernelSlide.none : KernelSlide(r.kaslrSlide)
        var highest: UInt64? = nil
        if key != nil {
            r.symbolRecords.forEachRecord { s in if s.address >= KernelSlide.imageBase && s.address >= (highest ?? 0) { highest = s.address } }
        }
        // The tables take the name tables the checks built (one `String` a record, made once),
        // the slide removed in place (`checked` holds the only reference).
        checked.names.removeSlide(removed)
        return .success(KernelFacts(key: key, base: GuestFactsBuilder.kernelFacts(symbols: r.symbolRecords, linkTimeNames: checked.names, removing: removed),
                                    build: checked.facts.mapped(removed.linkTime, keys: true), symbolCount: r.symbolRecords.count,
                                    symbolBytes: Self.symbolBytes(r), highestMovedAddress: highest.map(removed.linkTime)))
    }

    private init(key: KernelFactsKey?, base: GuestFactsBuilder.BuildTables, build: FactsPlausibility.BuildFacts, symbolCount: Int,
                 symbolBytes: Int, highestMovedAddress: UInt64?) {
        self.key = key
        self.base = base
        self.build = build
        self.symbolCount = symbolCount
        self.symbolBytes = symbolBytes
        self.highestMovedAddress = highestMovedAddress
    }

    /// Whether a registration by digest at `slide` reads exactly the records a full registration
    /// of this build at that slide would send: every moved link-time address `l` must move to
    /// `l + slide` without passing 2⁶⁴. A full registration whose records wrapped there would pack
    /// below `imageBase`, not as `l`, so its digest would be another one: no full registration with
    /// this digest exists at such a slide, and the by-digest one is refused (implausible) rather
    /// than read at wrapped addresses. Below that bound every moved run-time address is
    /// ≥ imageBase + slide, so `KernelFactsKey.of` would have admitted the full registration too.
    func admits(slide: UInt64) -> Bool {
        guard key != nil else { return false }
        return highestMovedAddress.map { slide <= UInt64.max - $0 } ?? true
    }

    /// What a registration's symbols are charged against the registry's facts budget: what the
    /// copy built from them holds, not only the size they arrive in. Every record its name plus 16
    /// bytes (the wire size); a text record 16 more (its entry in `functionEntries`); an exported
    /// record `exportCharge` more (its entry in the export table and its name index, SlidExports);
    /// a `__SCK__`/`__SCT__` record `staticCallCharge` more (a key of the static-call trust table,
    /// with its own set of targets). Measured (debug build, 20+ distinct builds of one composition
    /// per process, before 2026-12-07): RSS ≈ 0.64–0.92 × this charge for short or long exported names, tracepoint
    /// key/trampoline/iterator triples, short text names, empty names; the real Debian 6.1 build
    /// is charged 6.3 MiB and grows RSS by 5 MiB. Since the shared core export index keeps 64-byte
    /// slots (ExecGateExplain `NameTable.Layout.wide`: a cache line a look-up), short exported
    /// names measure 1.11 × and long ones 0.93 × (2026-12-07), under MemoryBudget's 3/2. The old
    /// charge (names + 16) was exceeded up to 11× by short exported names (FactsBudgetTests).
    static func symbolBytes(_ r: RegisterGuest) -> Int {
        var sum = 0
        r.symbolRecords.forEachRecord { s in
            var c = s.nameBytes.count + 16
            if s.isText { c += 16 }
            if s.exported { c += exportCharge }
            if s.nameStarts(with: "__SCK__") || s.nameStarts(with: "__SCT__") { c += staticCallCharge }
            sum += c
        }
        return sum
    }
    /// Held per exported record beyond its name and record (measured ≈ 240–320 bytes of RSS with
    /// 40-byte index slots; ≈ 390 for short names with the core index's 64-byte slots, 2026-12-07,
    /// more for a table just past a power of two: 4 slots an export at worst — under the budget's
    /// 3/2 either way).
    static let exportCharge = 320
    /// Held per static-call key or trampoline record beyond its name and record.
    static let staticCallCharge = 256

    /// The slide `r`'s guest reads this copy at: its own for a shared copy, none for a private one.
    func slide(of r: RegisterGuest) -> KernelSlide { key == nil ? .none : KernelSlide(r.kaslrSlide) }

    /// The engine facts of guest `r` on this build (not checked).
    func facts(for r: RegisterGuest) -> GuestFacts {
        GuestFactsBuilder.guestFacts(kernel: base, slide: slide(of: r), from: r)
    }

    /// The engine facts of guest `r` on this build, or why its own facts are implausible.
    func guestFacts(_ r: RegisterGuest) -> Result<GuestFacts, FactsRefusal> {
        let slide = slide(of: r)
        let facts = GuestFactsBuilder.guestFacts(kernel: base, slide: slide, from: r)
        let keys = build.staticCallKeys  // link time: the guest's key is looked up exactly at its slide
        if let why = FactsPlausibility.checkGuest(r, facts: facts, build: build.mapped(slide.runTime),
                                                  isStaticCallKey: { slide.exactLinkTime($0).map(keys.contains) ?? false }) {
            return .failure(FactsRefusal(message: why))
        }
        return .success(facts)
    }
}

struct FactsRefusal: Error { var message: String }
