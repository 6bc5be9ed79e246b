// SPDX-License-Identifier: Apache-2.0
//
// Trusted facts about the guest: everything the explanation may rely on that is NOT in the signed
// module. Each field says where a real deployment gets it and why it may be trusted.

/// Bit numbers of the synthetic features the loader's patching consults. They are build-specific
/// (Debian's 6.1 carries backports that moved some), so they are facts of the kernel build, quoted
/// from `arch/x86/include/asm/cpufeatures.h` of that exact source.
public struct FeatureBits: Sendable, Hashable {
    /// `NCAPINTS + NBUGINTS` words of `x86_capability[]` (22 + 2 in Debian 6.1.0-56).
    public var capabilityWords: Int
    public var retpoline: Int         // X86_FEATURE_RETPOLINE        (11*32+12)
    public var retpolineLfence: Int   // X86_FEATURE_RETPOLINE_LFENCE (11*32+13)
    public var rethunk: Int           // X86_FEATURE_RETHUNK          (11*32+14)
    public var indirectThunkITS: Int  // X86_FEATURE_INDIRECT_THUNK_ITS (21*32+5)

    public init(capabilityWords: Int, retpoline: Int, retpolineLfence: Int, rethunk: Int, indirectThunkITS: Int) {
        self.capabilityWords = capabilityWords
        self.retpoline = retpoline
        self.retpolineLfence = retpolineLfence
        self.rethunk = rethunk
        self.indirectThunkITS = indirectThunkITS
    }

    /// Debian `linux-image-6.1.0-56-amd64` (6.1.192-2): cpufeatures.h of linux-source-6.1.
    public static let debian6_1 = FeatureBits(capabilityWords: 24, retpoline: 11 * 32 + 12, retpolineLfence: 11 * 32 + 13,
                                              rethunk: 11 * 32 + 14, indirectThunkITS: 21 * 32 + 5)
}

/// KASLR's move of the kernel image, removed and applied exactly as the symbols digest defines it
/// (`RegisterGuestReply.linkTimeSymbolRecords`): an address at or above `__START_KERNEL_map`
/// (0xffffffff80000000) moves with the image; one below it (the zero-based per-cpu offsets of `A`
/// symbols such as `__per_cpu_end`) does not.
///
/// A build's tables are stored once at link-time addresses and shared by every guest of the build
/// (ExecGateVerifier KernelFactsStore.swift); each guest's lookups go through its own slide. A
/// run-time query `a` is mapped to the one link-time address `l` it can come from, and `a` matches
/// only if `l` is in the table AND mapping `l` forward gives back `a` (`exactLinkTime`). For a
/// registration whose records the slide maps one-to-one (KernelFactsKey.of), mapping its records
/// back gives the shared table and mapping the table forward gives its records, so this lookup
/// answers exactly what a table of the guest's own run-time addresses would: no address outside
/// the guest's real table can match, whatever another guest's slide is.
public struct KernelSlide: Sendable, Hashable {
    /// `__START_KERNEL_map` (arch/x86/include/asm/page_64_types.h).
    public static let imageBase: UInt64 = 0xffff_ffff_8000_0000
    public let value: UInt64
    public init(_ value: UInt64) { self.value = value }
    /// No slide: tables at run-time addresses (a private copy, or facts built in-process).
    public static let none = KernelSlide(0)

    /// Link-time → run-time.
    @inline(__always) public func runTime(_ l: UInt64) -> UInt64 { l >= Self.imageBase ? l &+ value : l }
    /// Run-time → link-time, the digest's rule.
    @inline(__always) public func linkTime(_ a: UInt64) -> UInt64 { a >= Self.imageBase ? a &- value : a }
    /// The link-time address `a` can only come from, or nil when mapping it forward again does not
    /// give `a` (then no table entry can be `a` at this slide).
    @inline(__always) public func exactLinkTime(_ a: UInt64) -> UInt64? {
        let l = linkTime(a)
        return runTime(l) == a ? l : nil
    }
}

/// A name → address table stored at link-time addresses (shared), read at one guest's slide, plus
/// run-time entries added for this guest (exports of modules it verified; never slid).
///
/// Names are equal when their bytes are, as the kernel compares them (`strcmp()` in
/// `find_symbol()`, `verify_exported_symbols()`): ASCII names through ``NameTable``s (byte-keyed,
/// built once with the shared table and carried by `slid(by:)`); a non-ASCII name (never seen in a
/// real kernel) only against a key with the same bytes (``exactValue``). `String` equality is
/// canonical equivalence and would resolve "Kfoo" to an export "\u{212A}foo" (KELVIN SIGN), which
/// the kernel calls an unknown symbol.
public struct SlidExports: Sendable {
    /// The shared table, at link-time addresses (run-time when `slide` is `.none`).
    public let linkTime: [String: UInt64]
    public let slide: KernelSlide
    /// Every ASCII name of `linkTime`; `linkTimeAllASCII` when there is no other.
    let linkTimeIndex: NameTable
    let linkTimeAllASCII: Bool
    /// Entries added at run-time addresses; they take precedence (the kernel refuses duplicate
    /// exports before one could shadow another: ModuleChecks). ASCII names in `addedIndex`, the
    /// others (never seen in a real kernel) in `addedOther`, each under its own bytes (`add`).
    var addedIndex = NameTable()
    var addedOther: [String: UInt64] = [:]

    public init(linkTime: [String: UInt64], slide: KernelSlide) {
        var index = NameTable(minimumCapacity: linkTime.count, layout: .wide)  // (the table every undefined symbol is looked up in)
        var allASCII = true
        for (k, v) in linkTime {
            var k = k
            k.withUTF8 { u in
                let b = UnsafeRawBufferPointer(u)
                if b.isASCII { index.insert(b, v) } else { allASCII = false }
            }
        }
        self.init(linkTime: linkTime, slide: slide, index: index, allASCII: allASCII)
    }

    init(linkTime: [String: UInt64], slide: KernelSlide, index: NameTable, allASCII: Bool) {
        self.linkTime = linkTime
        self.slide = slide
        self.linkTimeIndex = index
        self.linkTimeAllASCII = allASCII
    }

    /// A table of run-time addresses (no slide).
    public init(_ runTime: [String: UInt64]) { self.init(linkTime: runTime, slide: .none) }

    /// Entries added at run-time addresses (see ``add(_:_:)``).
    public var added: [String: UInt64] {
        var d = addedOther
        for (k, v) in addedIndex.pairs { d[k] = v }
        return d
    }

    public subscript(name: String) -> UInt64? {
        var n = name
        return n.withUTF8 { lookup(UnsafeRawBufferPointer($0), name: name) }
    }

    /// The address of the name whose UTF-8 bytes are `b` (a module's symbol name, borrowed);
    /// the same answer as `self[String(decoding: b, as: UTF8.self)]`.
    func lookup(utf8 b: UnsafeRawBufferPointer) -> UInt64? { lookup(utf8: b, likelyPresent: false) }

    /// `likelyPresent`: the name is usually a core export (a module's undefined symbol), so the
    /// shared table is probed for a hit (NameTable `lookupLikelyPresent`); otherwise (a module's
    /// own exports checked for duplicates: usually absent) through its tags. The same answer.
    func lookup(utf8 b: UnsafeRawBufferPointer, likelyPresent: Bool) -> UInt64? {
        if b.isASCII { return lookupASCII(b, likelyPresent: likelyPresent) }
        // Bytes that are not UTF-8 name no key: decoding would replace them by U+FFFD, a
        // different name.
        guard let name = b.withMemoryRebound(to: UInt8.self, { String(validating: $0, as: UTF8.self) }) else { return nil }
        return self[name]
    }

    /// `b` are the UTF-8 bytes of `name`.
    private func lookup(_ b: UnsafeRawBufferPointer, name: String) -> UInt64? {
        if b.isASCII { return lookupASCII(b) }
        // A non-ASCII name: never equal to an ASCII key (different bytes); among the others
        // only the key with its bytes.
        if let a = Self.exactValue(addedOther, name) { return a }
        return linkTimeAllASCII ? nil : Self.exactValue(linkTime, name).map(slide.runTime)
    }

    /// The value of the key whose bytes are `name`'s: a dictionary finds a `String`-equal key,
    /// which answers only if its bytes are the same (else no key has them: a dictionary holds
    /// no two `String`-equal keys).
    static func exactValue<V>(_ d: [String: V], _ name: String) -> V? {
        guard let i = d.index(forKey: name), d[i].key.utf8.elementsEqual(name.utf8) else { return nil }
        return d[i].value
    }

    /// Reads the lines a lookup of digest `d` starts with (NameTable `touch`); see
    /// `Session.verifyExportedSymbols`.
    @inline(__always) func touch(_ d: NameTable.Digest, likelyPresent: Bool) -> UInt64 {
        addedIndex.touch(d, viaTags: true) ^ linkTimeIndex.touch(d, viaTags: !likelyPresent)
    }

    /// After `touch(d, likelyPresent: true)`: reads the stored tail of the shared table's name
    /// a lookup of `d` meets first (NameTable `touchTail`).
    @inline(__always) func touchTail(_ d: NameTable.Digest) -> UInt64 { linkTimeIndex.touchTail(d) }
    /// The name bytes the shared table keeps in a slot: a longer name's tail is a second read
    /// (`touchTail`).
    var linkTimeHeadBytes: Int { linkTimeIndex.layout.headBytes }

    /// `lookup(utf8: b, likelyPresent:)` for ASCII `b` with `d == NameTable.digest(b)` (the
    /// byte-keyed tables hold every ASCII key).
    @inline(__always) func lookup(ascii b: UnsafeRawBufferPointer, digest d: NameTable.Digest, likelyPresent: Bool) -> UInt64? {
        if let a = addedIndex.lookup(b, digest: d) { return a }
        // (Not `.map(slide.runTime)`: the partially applied method is a closure whose context was
        // allocated at every lookup, one malloc per undefined symbol.)
        guard let l = likelyPresent ? linkTimeIndex.lookupLikelyPresent(b, digest: d) : linkTimeIndex.lookup(b, digest: d) else { return nil }
        return slide.runTime(l)
    }

    /// An ASCII name: the byte-keyed tables hold every ASCII key (`init`, `add`).
    @inline(__always) private func lookupASCII(_ b: UnsafeRawBufferPointer, likelyPresent: Bool = false) -> UInt64? {
        lookup(ascii: b, digest: NameTable.digest(b), likelyPresent: likelyPresent)  // hashed once for both tables
    }

    /// Add (or replace) one entry at its run-time address.
    public mutating func add(_ name: String, _ address: UInt64) {
        var n = name
        let ascii = n.withUTF8 { UnsafeRawBufferPointer($0).isASCII }
        if ascii {
            n.withUTF8 { addedIndex.insert(UnsafeRawBufferPointer($0), address) }
        } else {
            // Under its own bytes: an assignment alone would keep a `String`-equal earlier key's
            // bytes with this value (that name is then forgotten: looked up, it is unknown).
            addedOther.removeValue(forKey: name)
            addedOther[name] = address
        }
    }

    /// Add (or replace) every entry of `t` (ASCII names, run-time addresses): the same as
    /// `add(name, address)` for each, without a `String`.
    mutating func add(contentsOf t: NameTable) { addedIndex.insertAll(t) }

    /// The same shared table read at `slide` (only from a table without a slide or added entries).
    public func slid(by slide: KernelSlide) -> SlidExports {
        precondition(self.slide == .none && addedIndex.isEmpty && addedOther.isEmpty, "slide a build's table once, before any entry is added")
        return SlidExports(linkTime: linkTime, slide: slide, index: linkTimeIndex, allASCII: linkTimeAllASCII)
    }

    /// Every run-time address (duplicates possible).
    public var values: [UInt64] { linkTime.values.map(slide.runTime) + Array(added.values) }
    public var isEmpty: Bool { linkTime.isEmpty && addedIndex.isEmpty && addedOther.isEmpty }

    /// The table at run-time addresses, as one dictionary (copies unless there is nothing to slide).
    public func dictionary() -> [String: UInt64] {
        if slide == .none && addedIndex.isEmpty && addedOther.isEmpty { return linkTime }
        var out = linkTime.mapValues(slide.runTime)
        for (k, v) in added { out[k] = v }
        return out
    }
}

/// A set of addresses stored at link-time addresses (shared), read at one guest's slide.
public struct SlidAddressSet: Sendable, Sequence {
    public let linkTime: Set<UInt64>
    public let slide: KernelSlide

    public init(linkTime: Set<UInt64>, slide: KernelSlide) {
        self.linkTime = linkTime
        self.slide = slide
    }

    /// A set of run-time addresses (no slide).
    public init(_ runTime: Set<UInt64>) { self.init(linkTime: runTime, slide: .none) }

    /// Exact membership of the run-time address `a` (see ``KernelSlide``).
    @inline(__always) public func contains(_ a: UInt64) -> Bool {
        guard let l = slide.exactLinkTime(a) else { return false }
        return linkTime.contains(l)
    }

    public func slid(by slide: KernelSlide) -> SlidAddressSet {
        precondition(self.slide == .none, "slide a build's table once")
        return SlidAddressSet(linkTime: linkTime, slide: slide)
    }

    public var count: Int { linkTime.count }
    public var isEmpty: Bool { linkTime.isEmpty }
    public var underestimatedCount: Int { linkTime.count }
    /// The run-time addresses, in the set's order.
    public func makeIterator() -> LazyMapSequence<Set<UInt64>, UInt64>.Iterator {
        let s = slide
        return linkTime.lazy.map { s.runTime($0) }.makeIterator()
    }
}

/// Static-call key → trusted targets: the build's table at link-time addresses (shared), read at
/// one guest's slide (key and targets), with this guest's own entries at run-time addresses. An
/// own entry for a key replaces the shared one (it is written as the shared set plus additions:
/// `self[key, default: []].insert(t)`).
public struct SlidStaticCallTargets: Sendable {
    public let linkTime: [UInt64: Set<UInt64>]
    public let slide: KernelSlide
    public private(set) var own: [UInt64: Set<UInt64>] = [:]
    /// The lowest and highest link-time key of `linkTime` (empty: an empty range), so a module's
    /// own keys, which lie in module memory far from the core's, are answered without hashing
    /// (`forEachTarget` runs once per key per module: hundreds for a module with trace events).
    private let linkTimeKeyRange: ClosedRange<UInt64>?

    public init(linkTime: [UInt64: Set<UInt64>], slide: KernelSlide) {
        self.linkTime = linkTime
        self.slide = slide
        var lo = UInt64.max, hi = UInt64.min
        for k in linkTime.keys { lo = Swift.min(lo, k); hi = Swift.max(hi, k) }
        self.linkTimeKeyRange = linkTime.isEmpty ? nil : lo...hi
    }

    /// A table of run-time addresses (no slide).
    public init(_ runTime: [UInt64: Set<UInt64>]) { self.init(linkTime: runTime, slide: .none) }

    /// The trusted targets of the run-time key `key`, at run-time addresses; nil when the key has
    /// no entry.
    public subscript(key: UInt64) -> Set<UInt64>? {
        if let o = own[key] { return o }
        guard let l = slide.exactLinkTime(key), let s = linkTime[l] else { return nil }
        if slide == .none { return s }
        return Set(s.map(slide.runTime))
    }

    /// `self[key]`'s members, one by one, without building a set (the explainer's per-key lists).
    @inline(__always) public func forEachTarget(of key: UInt64, _ body: (UInt64) -> Void) {
        if !own.isEmpty, let o = own[key] { o.forEach(body); return }
        guard let range = linkTimeKeyRange, let l = slide.exactLinkTime(key), range.contains(l), let s = linkTime[l] else { return }
        if slide == .none { s.forEach(body); return }
        for t in s { body(slide.runTime(t)) }
    }

    public subscript(key: UInt64, default d: @autoclosure () -> Set<UInt64>) -> Set<UInt64> {
        get { self[key] ?? d() }
        set { own[key] = newValue }
    }

    /// The same build table read at `slide`. Own entries of a table without a slide are folded into
    /// the shared part first (a build's table is folded once, when it is built).
    public func slid(by slide: KernelSlide) -> SlidStaticCallTargets {
        precondition(self.slide == .none, "slide a build's table once")
        return SlidStaticCallTargets(linkTime: folded().linkTime, slide: slide)
    }

    /// The table at run-time addresses, as one dictionary (for inspection; copies).
    public func dictionary() -> [UInt64: Set<UInt64>] {
        var out: [UInt64: Set<UInt64>] = [:]
        for (k, v) in linkTime { out[slide.runTime(k)] = slide == .none ? v : Set(v.map(slide.runTime)) }
        for (k, v) in own { out[k] = v }
        return out
    }

    /// Own entries merged into the shared part (no copy when there are none).
    public func folded() -> SlidStaticCallTargets {
        guard !own.isEmpty else { return self }
        precondition(slide == .none, "fold only a table without a slide")
        return SlidStaticCallTargets(linkTime: linkTime.merging(own) { $1 }, slide: .none)
    }
}

/// The trusted facts of one guest boot.
///
/// Trust model (why each may be relied on):
/// - `exports`: name → address of every symbol the core kernel exports (`__ksymtab_<name>`). They
///   come from the measured kernel build plus the KASLR slide (the VMM knows the image it booted,
///   or reads the read-only ksymtab); the module's own `[module]` kallsyms lines are never used.
/// - `capabilities`: `boot_cpu_data.x86_capability[]`, read-only after init, read by the VMM from
///   locked guest memory: the exact bits alternatives are applied from (not `/proc/cpuinfo`).
/// - `uniprocessorPatched`: the kernel decided at boot (one present CPU, no `noreplace-smp`)
///   to rewrite `lock` prefixes; `possibleCPUs > 1` means it may switch back later.
/// - `pvOps`: the `pv_ops` table (read-only after init): paravirt sites call `pv_ops[type]`.
/// - `functionEntries`: start addresses of core kernel functions (from the build's symbol map +
///   slide): a static-call target must be one of them (or of a verified module) AND trusted for
///   its key (`staticCallTrustedTargets`).
/// Run-time state (jump-label keys, which trusted static-call target is current, ftrace
/// enablement) is deliberately NOT a fact: the explainer accepts exactly the legal set of states
/// for each site.
public struct GuestFacts: Sendable {
    /// Core exports (link-time table + this guest's slide: ``SlidExports``).
    public var exports: SlidExports {
        didSet { preemptDynamicKeys = StaticCallTrust.preemptDynamicKeys(coreExports: exports) }
    }
    /// `StaticCallTrust.preemptDynamicKeys(coreExports: exports)`: the addresses of the
    /// PREEMPT_DYNAMIC keys and trampolines with each key's disabled form, looked up once for the
    /// facts (at `init` and whenever `exports` is set), not per explanation (ten String-keyed
    /// export lookups per module).
    public private(set) var preemptDynamicKeys: [(key: UInt64, form: StaticCallTrust.DisabledForm)] = []
    public var capabilities: [UInt32]
    public var featureBits: FeatureBits
    public var uniprocessorPatched: Bool
    public var possibleCPUs: Int
    public var pvOps: [UInt64]
    /// `_paravirt_nop` (pv_ops slots equal to it patch to NOPs) and `paravirt_BUG` (NULL slots).
    public var paravirtNop: UInt64?
    public var paravirtBUG: UInt64?
    /// Core function entries (link-time set + this guest's slide: ``SlidAddressSet``).
    public var functionEntries: SlidAddressSet
    /// `__static_call_return0` (a CALL to it is written as `2e 2e 2e 31 c0`).
    public var staticCallReturn0: UInt64?
    /// `__static_call_return` (Jcc tail sites with a NULL function jump there when !RETHUNK).
    public var staticCallReturn: UInt64?
    /// Value of `x86_return_thunk` when RETHUNK is on; nil means `__x86_return_thunk` (its default).
    public var returnThunk: UInt64?
    /// `its_return_thunk` (only compared against `returnThunk`).
    public var itsReturnThunk: UInt64?
    /// Legal call targets at an ftrace site while tracing is on (`ftrace_caller`,
    /// `ftrace_regs_caller`); empty = only the NOP is legal, and the site is no run-time patch
    /// site. No registration fills it (docs/trust.md: ftrace on module code is not supported;
    /// tracing may call an ops' own trampoline or a BPF direct call, memory never verified).
    public var ftraceCallTargets: Set<UInt64>
    /// CONFIG_X86_KERNEL_IBT: `.ibt_endbr_seal` sites become `66 0f 1f 00` (off in Debian 6.1).
    public var ibtSeal: Bool
    public var kaslrSlide: UInt64
    /// Static-call targets trusted per key: key address (`__SCK__<name>`) → the functions a site
    /// of that key may call or jump to. Filled by the VMM at registration from two sources (see
    /// docs/trust.md, "Static calls"): the key's current target, decoded from the core's read-only
    /// trampoline `__SCT__<name>` (`jmp func` / RET form), and per-key targets the operator's build
    /// supplies (``StaticCallTrust``: `DEFINE_STATIC_CALL` defaults and the `static_call_update()`
    /// users whose targets are fixed in the source). A site of a key without an entry may only
    /// hold its NULL forms (NOP5 / RET) or `__static_call_return0`. Entries in core init text or
    /// not a function entry are ignored by the engine.
    public var staticCallTrustedTargets: SlidStaticCallTargets
    /// The core's tracepoint static-call keys and trampolines (`__SCK__tp_func_X`,
    /// `__SCT__tp_func_X`), by name from the build (link-time set + this guest's slide): their
    /// only updater, kernel/tracepoint.c tracepoint_update_call(), never gives them NULL nor
    /// `__static_call_return0` (StaticCallTrust.DisabledForm.neither).
    public var tracepointStaticCallKeys = SlidAddressSet([])
    /// The core kernel's init memory, freed after boot (`[_sinittext, _einittext)`,
    /// `[__init_begin, __init_end)`): never a legal target or symbol value for module code.
    public var coreInitRanges: [Range<UInt64>] = []
    /// The core kernel's `.data..ro_after_init` (`[__start_ro_after_init, __end_ro_after_init)`,
    /// vmlinux.lds.h RO_AFTER_INIT_DATA), read-only from mark_rodata_ro() on, before the trusted
    /// point: a static key or static-call key there never changes state afterwards (6.12
    /// jump_label_init_ro() seals it), so its module sites keep their load state. nil when the
    /// build's symbols do not name it.
    public var coreROAfterInit: Range<UInt64>? = nil
    /// The registered kernel's release (`uname -r`, the first word of its `VERMAGIC_STRING`).
    /// When set, a module's `.modinfo` `vermagic=` must name the same release; it also selects
    /// the loader replay (LoaderSelection.swift).
    public var kernelRelease: String? = nil
    /// The per-cpu reserved chunk modules' `.data..percpu` is allocated from
    /// (`[__per_cpu_end, __per_cpu_end + PERCPU_MODULE_RESERVE)`, 8 KiB in 6.1). When set, a claimed
    /// per-cpu base must lie in it, aligned, with the whole section inside: otherwise a hostile
    /// claim could aim per-cpu accesses (`%gs:` offsets) anywhere.
    public var modulePercpuRange: Range<UInt64>? = nil
    /// The module mapping area (`[MODULES_VADDR, MODULES_END)` of x86-64 6.1:
    /// 0xffffffffc0000000..<0xffffffffff000000). A claimed core allocation must lie inside it and
    /// start on a page boundary (module_alloc() returns page-aligned vmalloc memory).
    public var moduleArea: Range<UInt64> = 0xffff_ffff_c000_0000..<0xffff_ffff_ff00_0000

    public init(exports: [String: UInt64], capabilities: [UInt32], featureBits: FeatureBits = .debian6_1,
                uniprocessorPatched: Bool, possibleCPUs: Int, pvOps: [UInt64] = [], paravirtNop: UInt64? = nil,
                paravirtBUG: UInt64? = nil, functionEntries: Set<UInt64> = [], staticCallReturn0: UInt64? = nil,
                staticCallReturn: UInt64? = nil, returnThunk: UInt64? = nil, itsReturnThunk: UInt64? = nil,
                ftraceCallTargets: Set<UInt64> = [], ibtSeal: Bool = false, kaslrSlide: UInt64 = 0) {
        self.exports = SlidExports(exports)
        self.preemptDynamicKeys = StaticCallTrust.preemptDynamicKeys(coreExports: self.exports)
        self.capabilities = capabilities
        self.featureBits = featureBits
        self.uniprocessorPatched = uniprocessorPatched
        self.possibleCPUs = possibleCPUs
        self.pvOps = pvOps
        self.paravirtNop = paravirtNop
        self.paravirtBUG = paravirtBUG
        self.functionEntries = SlidAddressSet(functionEntries)
        self.staticCallReturn0 = staticCallReturn0
        self.staticCallReturn = staticCallReturn
        self.returnThunk = returnThunk
        self.itsReturnThunk = itsReturnThunk
        self.ftraceCallTargets = ftraceCallTargets
        self.ibtSeal = ibtSeal
        self.kaslrSlide = kaslrSlide
        // A module reaches a core static-call key only through an export (`__SCK__x`, or the
        // trampoline `__SCT__x` for EXPORT_STATIC_CALL_TRAMP keys), so the build's per-key
        // targets of every key a module can name are derivable from the exports alone
        // (StaticCallTrust); `deriveFromCoreSymbols` adds the rest of the symbol map.
        self.staticCallTrustedTargets = SlidStaticCallTargets(StaticCallTrust.coreTargets(symbols: exports))
        self.tracepointStaticCallKeys = SlidAddressSet(StaticCallTrust.tracepointKeys(symbols: exports))
    }

    /// True if `a` lies in the core kernel's (freed) init memory.
    public func isCoreInit(_ a: UInt64) -> Bool { coreInitRanges.contains { $0.contains(a) } }

    /// `boot_cpu_has(bit)`; bits outside the table are "absent" (the caller refuses them first).
    public func has(_ bit: Int) -> Bool { Self.has(bit, in: capabilities) }

    /// `has(bit)` over a capability table (the explainer's session keeps the table apart).
    @inline(__always) static func has(_ bit: Int, in capabilities: [UInt32]) -> Bool {
        let w = bit >> 5
        guard bit >= 0, w < capabilities.count else { return false }
        return capabilities[w] & (1 << UInt32(bit & 31)) != 0
    }
}

/// Resolves a module's undefined symbols the way the kernel's `resolve_symbol()` does: through
/// exports only — the core kernel's and those of modules already verified in this guest session.
public struct SymbolResolver: Sendable {
    /// The core's exports (at this guest's slide) and those of verified modules.
    public private(set) var exports: SlidExports
    /// Function entries of verified modules (each module's own sorted table, not merged).
    public private(set) var moduleFunctionEntries = FunctionEntrySet()
    /// Static-call targets trusted for keys that verified modules define (each key's
    /// `DEFINE_STATIC_CALL` default, from the module's own signed trampoline).
    private(set) var moduleKeyTargets = ModuleKeyTargets()
    /// The current state of every static-call key seen at a verified module's sites (key address
    /// → target, 0 = NULL): a later module's sites of the same key must agree. Run-time patches
    /// that move a whole key must record the new state (``recordStaticCallState(key:state:)``).
    public private(set) var staticCallStates: [UInt64: UInt64] = [:]
    /// The keys of both tables above, sorted and unique: a new module's placement check asks
    /// for the lowest live key inside each of its allocations (`lowestStaticCallKey(from:below:)`), one
    /// binary search per allocation rather than a walk over every key per module.
    private var staticCallKeys: [UInt64] = []
    /// The tracepoint static-call keys and trampolines verified modules define
    /// (``ModuleExports/tracepointStaticCallKeys``): their sites in later modules take neither
    /// NULL nor `__static_call_return0` (StaticCallTrust.DisabledForm.neither).
    private var moduleTracepointKeys = AddressTable()

    public init(coreExports: SlidExports) { self.exports = coreExports }

    /// True if `key` is a verified module's tracepoint static-call key or trampoline.
    public func isTracepointStaticCallKey(_ key: UInt64) -> Bool { moduleTracepointKeys.count != 0 && moduleTracepointKeys[key] != nil }
    public init(coreExports: [String: UInt64]) { self.exports = SlidExports(coreExports) }

    public func lookup(_ name: String) -> UInt64? { exports[name] }

    /// `lookup(String(decoding: b, as: UTF8.self))` on the borrowed bytes of a symbol name.
    public func lookup(utf8 b: UnsafeRawBufferPointer) -> UInt64? { exports.lookup(utf8: b) }

    /// The same, for a name that is usually exported (a module's undefined symbol): the same
    /// answer, probed for a hit (``SlidExports/lookup(utf8:likelyPresent:)``).
    func lookup(utf8 b: UnsafeRawBufferPointer, likelyPresent: Bool) -> UInt64? { exports.lookup(utf8: b, likelyPresent: likelyPresent) }

    /// Add an allowed module's exports (``ModuleExports`` from ``ExplainResult``). Call this only
    /// after the module was allowed: a denied module's symbols must never become resolvable.
    public mutating func add(_ m: ModuleExports) {
        addTables(of: m)
        moduleFunctionEntries.add(m.functionEntries)
        if !m.keyTargets.isEmpty || !m.staticCallStates.isEmpty {
            var added: [UInt64] = []
            added.reserveCapacity(m.keyTargets.keyCount + m.staticCallStates.count)
            m.keyTargets.forEachKey { k, _ in added.append(k) }
            added.append(contentsOf: m.staticCallStates.keys)
            AddressSort.sort(&added)
            if let last = staticCallKeys.last, let first = added.first, first > last {
                // (Every key above those held, as a module's own keys are when modules are
                // allocated upward: appended in place, not merged into a new array.)
                for k in added where k != staticCallKeys.last { staticCallKeys.append(k) }
            } else {
                staticCallKeys = Self.mergeUnique(staticCallKeys, added)
            }
        }
    }

    /// What `add` and `add(contentsOf:)` both do for module `m`: its names, its keys' targets and
    /// states, its tracepoint keys (not the sorted tables: function entries, static-call keys).
    private mutating func addTables(of m: ModuleExports) {
        exports.add(contentsOf: m.names)
        for (k, v) in m.otherNames { exports.add(k, v) }
        moduleKeyTargets.add(m.keyTargets)
        for (k, v) in m.staticCallStates { staticCallStates[k] = v }
        for k in m.tracepointStaticCallKeys { moduleTracepointKeys.set(k, 1) }
    }

    /// Every module of `ms` added, in that order: the answers `add` one at a time gives, with the
    /// guest-wide sorted tables (function-entry spans, static-call keys) sorted once instead of
    /// merged at each module (each merge copied every key held: quadratic in the live modules at
    /// every rebuild of a guest's resolver, which each retire makes).
    public mutating func add(contentsOf ms: [ModuleExports]) {
        var keys: [UInt64] = []
        var entries: [FunctionEntries] = []
        entries.reserveCapacity(ms.count)
        for m in ms {
            addTables(of: m)
            entries.append(m.functionEntries)
            m.keyTargets.forEachKey { k, _ in keys.append(k) }
            keys.append(contentsOf: m.staticCallStates.keys)
        }
        moduleFunctionEntries.add(contentsOf: entries)
        if !keys.isEmpty {
            keys.append(contentsOf: staticCallKeys)
            AddressSort.sortUnique(&keys)
            staticCallKeys = keys
        }
    }

    /// Record a static-call key's new state after an allowed run-time patch of the whole key
    /// (every site of the key in every live module, as `__static_call_update()` writes them).
    public mutating func recordStaticCallState(key: UInt64, state: UInt64) {
        staticCallStates[key] = state
        let i = Self.lowerBound(staticCallKeys, key)
        if i == staticCallKeys.count || staticCallKeys[i] != key { staticCallKeys.insert(key, at: i) }
    }

    /// The lowest static-call key of either table in `lo..<hi` (none when `hi <= lo`).
    func lowestStaticCallKey(from lo: UInt64, below hi: UInt64) -> UInt64? {
        guard hi > lo else { return nil }
        let i = Self.lowerBound(staticCallKeys, lo)
        return i < staticCallKeys.count && staticCallKeys[i] < hi ? staticCallKeys[i] : nil
    }

    /// The first index of sorted `a` whose element is not below `x`.
    private static func lowerBound(_ a: [UInt64], _ x: UInt64) -> Int {
        var lo = 0, hi = a.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if a[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Sorted `a` and sorted `b` (each may repeat) merged, sorted, each value once.
    private static func mergeUnique(_ a: [UInt64], _ b: [UInt64]) -> [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(a.count + b.count)
        var i = 0, j = 0
        while i < a.count || j < b.count {
            let x: UInt64
            if j == b.count || (i < a.count && a[i] <= b[j]) { x = a[i]; i += 1 } else { x = b[j]; j += 1 }
            if out.last != x { out.append(x) }
        }
        return out
    }
}

/// What an allowed module contributes to later modules.
public struct ModuleExports: Sendable {
    public var module: String
    /// The exported names and their addresses: ASCII names byte-keyed (`names`: made from the
    /// module's borrowed name bytes and merged into the resolver without a `String` or a re-hash),
    /// any other name (never seen in a real module) in `otherNames`.
    var names: NameTable
    var otherNames: [String: UInt64]
    public var functionEntries: FunctionEntries
    /// Keys this module defines → the targets trusted for them (its trampolines' compiled
    /// defaults, its own trace events' probes), frozen.
    var keyTargets = KeyTargets()
    /// The same as a dictionary of sets (made on each read).
    public var staticCallTrustedTargets: [UInt64: Set<UInt64>] {
        get { keyTargets.dictionary }
        set { keyTargets = KeyTargets(newValue) }
    }
    /// How many keys this module defines, and how many (key, target) pairs they trust.
    public var staticCallKeyCount: Int { keyTargets.keyCount }
    public var staticCallTargetCount: Int { keyTargets.pairCount }
    /// Static-call key states seen at this module's sites and trampolines (key → target, 0 = NULL).
    public var staticCallStates: [UInt64: UInt64] = [:]
    /// This module's own tracepoint static-call keys and trampolines (`__SCK__tp_func_X`,
    /// `__SCT__tp_func_X`: Session.ownTracepointKeys), sorted: later modules' sites of them
    /// (EXPORT_TRACEPOINT_SYMBOL[_GPL]) take neither NULL nor `__static_call_return0`.
    public var tracepointStaticCallKeys: [UInt64] = []

    public init(module: String, symbols: [String: UInt64], functionEntries: FunctionEntries,
                staticCallTrustedTargets: [UInt64: Set<UInt64>] = [:], staticCallStates: [UInt64: UInt64] = [:]) {
        (names, otherNames) = Self.split(symbols)
        self.module = module
        self.functionEntries = functionEntries
        self.keyTargets = KeyTargets(staticCallTrustedTargets)
        self.staticCallStates = staticCallStates
    }

    /// `names` holds the ASCII names, `otherNames` the others (``split``); `keyTargets` frozen.
    init(module: String, names: NameTable, otherNames: [String: UInt64], functionEntries: FunctionEntries,
         keyTargets: KeyTargets, staticCallStates: [UInt64: UInt64]) {
        self.module = module
        self.names = names
        self.otherNames = otherNames
        self.functionEntries = functionEntries
        self.keyTargets = keyTargets
        self.staticCallStates = staticCallStates
    }

    /// Name → address of every export, as one dictionary (made on each read).
    public var symbols: [String: UInt64] {
        get {
            var d = otherNames
            d.reserveCapacity(names.count + otherNames.count)
            for (k, v) in names.pairs { d[k] = v }
            return d
        }
        set { (names, otherNames) = Self.split(newValue) }
    }

    /// How many names the module exports.
    public var symbolCount: Int { names.count + otherNames.count }

    /// Every exported name, each once (its bytes as the module has them; no dictionary, which
    /// would merge two `String`-equal names).
    public var exportedNames: [String] { names.pairs.map(\.name) + otherNames.keys }

    /// The address of the export whose name has `name`'s bytes, if any (names compare as bytes,
    /// as the kernel's: SlidExports).
    public func address(of name: String) -> UInt64? {
        var n = name
        return n.withUTF8 { u in
            let b = UnsafeRawBufferPointer(u)
            return b.isASCII ? names.lookup(b) : SlidExports.exactValue(otherNames, name)
        }
    }

    /// A dictionary's entries, ASCII names byte-keyed and the others kept as `String`s (looked up
    /// by their bytes: ``address(of:)``).
    static func split(_ symbols: [String: UInt64]) -> (NameTable, [String: UInt64]) {
        var t = NameTable(minimumCapacity: symbols.count)
        var other: [String: UInt64] = [:]
        for (k, v) in symbols {
            var n = k
            let ascii = n.withUTF8 { u in
                let b = UnsafeRawBufferPointer(u)
                guard b.isASCII else { return false }
                t.insert(b, v)
                return true
            }
            if !ascii { other[k] = v }
        }
        return (t, other)
    }
}
