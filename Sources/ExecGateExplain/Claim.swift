// SPDX-License-Identifier: Apache-2.0
//
// The guest's claim about one loaded module: where it is and what its executable memory holds.
// Untrusted: every byte and address is checked against the signed ELF and the trusted facts.

/// The claim for one module.
///
/// - `textBase` / `text`: the module's whole executable core region
///   `[core_layout.base, + core_layout.text_size)` — every byte that becomes executable, section
///   contents and the zero padding between and after them.
/// - `sections`: the guest's addresses of the module's allocated sections, by name, as the
///   request lists them (the `/sys/module/<m>/sections/` view; `sectionAddresses` is the same as
///   a table). Core-section addresses must agree with the kernel's `layout_sections()` applied to
///   the signed ELF; `.init*` addresses are ignored unless the init region is claimed (then they
///   must agree with the init layout; see `Session.init`). A name listed twice: the last counts.
/// - `percpuBase`: the module's per-cpu area (`mod->percpu`), needed when it has `.data..percpu`.
/// - `initTextBase` / `initText` (optional): the module's executable init region
///   `[init_layout.base, + init_layout.text_size)` while its init function runs. When given, it is
///   explained like the core region (same loader stages, relocations into init at these
///   addresses) and the verdict covers both; the init region is valid only until the VMM reports
///   init freed. Core bytes never depend on init addresses either way. On 6.12 it is the
///   MOD_INIT_TEXT allocation `[mem[MOD_INIT_TEXT].base, + PAGE_ALIGN(size))`, and the init data
///   types' bases come from `memoryBases` or the claimed `.init*` section addresses
///   (Loader612Layout.swift `memoryBases612(initRegion:)`).
public struct ModuleClaim: Sendable {
    public var name: String
    public var textBase: UInt64
    /// The executable region's bytes as the engine reads them: the claim's own array, or the
    /// request's bytes borrowed (``ClaimBytes``; the end-state judge hands the engine the
    /// request's buffer, no copy of up to a request's 28 MiB).
    public var textBytes: ClaimBytes
    /// `textBytes` as an array (a copy when they are borrowed: tools and tests); setting it
    /// replaces them.
    public var text: [UInt8] {
        get { textBytes.array }
        set { textBytes = ClaimBytes(newValue) }
    }
    /// The claimed sections in the request's order. A section's claimed address is that of the
    /// last entry whose name equals the section's name as Strings (as `sectionAddresses` has it).
    /// Kept as a list: the engine finds each section's entry by the names' bytes where that is the
    /// same thing (`Session.claimedAddresses`: ASCII names), where a String-keyed table cost a
    /// SipHash of every name to build and another per allocated section to read (≈ 6% of the
    /// end-state judge's time on the shared corpus, docs/performance.md twelfth session).
    public var sections: [ClaimedSection]
    /// `sections` as a table by name (a name's value is its last entry's address; names
    /// canonically equivalent as Strings are one key, spelt as first listed). Made at each read:
    /// read it once, never per look-up. Setting it replaces `sections` (by name order).
    public var sectionAddresses: [String: UInt64] {
        get {
            var d = [String: UInt64](minimumCapacity: sections.count)
            for s in sections { d[s.name] = s.address }
            return d
        }
        set { sections = newValue.sorted { $0.key < $1.key }.map { ClaimedSection(name: $0.key, address: $0.value) } }
    }
    public var percpuBase: UInt64?
    /// 6.12 (separate allocation per `enum mod_mem_type`): the claimed base of each type
    /// (`mod->mem[t].base`). Optional: when a type is absent here its base is derived from the
    /// claimed section addresses (all sections of one type must agree). `textBase` is `MOD_TEXT`'s
    /// base (0 with an empty `text` for a data-only module, whose `MOD_TEXT` is not allocated).
    public var memoryBases: [ModuleMemoryType: UInt64] = [:]
    public var initTextBase: UInt64?
    /// The init region's bytes (as `textBytes`), when claimed.
    public var initTextBytes: ClaimBytes?
    /// `initTextBytes` as an array (as `text`).
    public var initText: [UInt8]? {
        get { initTextBytes?.array }
        set { initTextBytes = newValue.map { ClaimBytes($0) } }
    }

    public init(name: String, textBase: UInt64, text: [UInt8], sectionAddresses: [String: UInt64], percpuBase: UInt64? = nil,
                initTextBase: UInt64? = nil, initText: [UInt8]? = nil) {
        self.init(name: name, textBase: textBase, text: text, sections: [], percpuBase: percpuBase, initTextBase: initTextBase, initText: initText)
        self.sectionAddresses = sectionAddresses
    }

    public init(name: String, textBase: UInt64, text: [UInt8], sections: [ClaimedSection], percpuBase: UInt64? = nil,
                initTextBase: UInt64? = nil, initText: [UInt8]? = nil) {
        self.init(name: name, textBase: textBase, textBytes: ClaimBytes(text), sections: sections, percpuBase: percpuBase,
                  initTextBase: initTextBase, initTextBytes: initText.map { ClaimBytes($0) })
    }

    public init(name: String, textBase: UInt64, textBytes: ClaimBytes, sections: [ClaimedSection], percpuBase: UInt64? = nil,
                initTextBase: UInt64? = nil, initTextBytes: ClaimBytes? = nil) {
        self.initTextBase = initTextBase
        self.initTextBytes = initTextBytes
        self.name = name
        self.textBase = textBase
        self.textBytes = textBytes
        self.sections = sections
        self.percpuBase = percpuBase
    }
}

/// A claim's bytes, read-only: an array of its own, or bytes borrowed from the request that
/// carried them, kept alive by a reference to their owner (the end-state judge's: the request
/// buffer's storage, `ByteBuffer.withUnsafeReadableBytesWithStorageManagement`). The engine reads
/// them in place (`withUnsafeBytes`); nothing keeps them past the explanation (the run-time site
/// table holds the sites, no bytes: RuntimePatching.swift).
///
/// Borrowed bytes must not change while the owner lives: the maker promises it. A `ByteBuffer`'s
/// storage keeps that promise by copy-on-write — a buffer sharing the storage copies it before
/// any write while this reference holds it, as while any other does.
public struct ClaimBytes: @unchecked Sendable, RandomAccessCollection {
    // (@unchecked: the borrowed case holds a pointer, never written through, to memory its owner
    // keeps unchanged while referenced — above; the owned case is an array.)
    private enum Storage {
        case owned([UInt8])
        case borrowed(owner: AnyObject, bytes: UnsafeRawBufferPointer)
    }
    private let storage: Storage

    public init(_ bytes: [UInt8]) { storage = .owned(bytes) }

    /// `bytes`, valid and unchanged while `owner` lives (the caller's promise), without a copy.
    /// Package-only: the promise is the end-state judge's (`ExplainerJudge.borrowed`, a
    /// `ByteBuffer`'s storage); no other module makes it.
    package init(borrowing bytes: UnsafeRawBufferPointer, owner: AnyObject) { storage = .borrowed(owner: owner, bytes: bytes) }

    @inline(__always) public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .owned(let a): return try a.withUnsafeBytes(body)
        case .borrowed(let owner, let b): return try withExtendedLifetime(owner) { try body(b) }
        }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int {
        switch storage {
        case .owned(let a): return a.count
        case .borrowed(_, let b): return b.count
        }
    }
    public subscript(i: Int) -> UInt8 {
        precondition(i >= 0 && i < endIndex, "claim byte index out of range")
        return withUnsafeBytes { $0[i] }
    }

    /// The bytes as an array of their own (the owned array itself: no copy).
    public var array: [UInt8] {
        switch storage {
        case .owned(let a): return a
        case .borrowed(let owner, let b): return withExtendedLifetime(owner) { [UInt8](b) }
        }
    }
}

/// One claimed section: its name and the address the guest gives for it.
public struct ClaimedSection: Sendable, Equatable {
    public var name: String
    public var address: UInt64

    public init(name: String, address: UInt64) {
        self.name = name
        self.address = address
    }
}
