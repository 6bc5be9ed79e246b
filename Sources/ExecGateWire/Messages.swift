// SPDX-License-Identifier: Apache-2.0
//
// The typed messages of wire protocol v1, each with its TLV tags (docs/protocol.md, "Messages").
// Parser and serializer of a message sit side by side so they cannot drift apart.

import NIOCore

// MARK: - hello (0x0001) / hello-reply (0x8001)

public struct Hello: Sendable, Equatable {
    public var minimumVersion: UInt16
    public var maximumVersion: UInt16
    public var clientName: String

    public init(minimumVersion: UInt16 = 1, maximumVersion: UInt16 = 1, clientName: String) {
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.clientName = clientName
    }

    enum Tag { static let minimumVersion: UInt16 = 1, maximumVersion: UInt16 = 2, clientName: UInt16 = 3 }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "hello", known: [1, 2, 3])
        minimumVersion = try r.requiredInteger(Tag.minimumVersion, "min_version")
        maximumVersion = try r.requiredInteger(Tag.maximumVersion, "max_version")
        clientName = try r.string(Tag.clientName, "client_name") ?? ""
        guard minimumVersion <= maximumVersion else {
            throw WireDecodeError(.invalidValue, field: "hello.min_version", "min \(minimumVersion) > max \(maximumVersion)")
        }
    }

    public func encode(into w: inout TLVWriter) {
        w.u16(Tag.minimumVersion, minimumVersion)
        w.u16(Tag.maximumVersion, maximumVersion)
        w.string(Tag.clientName, clientName)
    }
}

public struct HelloReply: Sendable, Equatable {
    public var version: UInt16
    public var serverName: String
    public var maximumBodySize: UInt32
    /// Tag 4: 16 random bytes chosen when the server process started. A different value on a
    /// later hello means the server restarted and lost every guest: the VMM must restore them
    /// (docs/protocol.md, "Restart and restore"). Empty from a server that does not send it.
    public var instanceID: [UInt8]

    public init(version: UInt16, serverName: String, maximumBodySize: UInt32, instanceID: [UInt8] = []) {
        self.version = version
        self.serverName = serverName
        self.maximumBodySize = maximumBodySize
        self.instanceID = instanceID
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "hello-reply", known: [1, 2, 3, 4])
        version = try r.requiredInteger(1, "version")
        serverName = try r.string(2, "server_name") ?? ""
        maximumBodySize = try r.requiredInteger(3, "max_body")
        instanceID = try r.optional(4, "instance_id").map { Array(buffer: $0) } ?? []
        guard instanceID.count <= 64 else {
            throw WireDecodeError(.invalidValue, field: "hello-reply.instance_id", "\(instanceID.count) bytes; at most 64")
        }
    }

    public func encode(into w: inout TLVWriter) {
        w.u16(1, version)
        w.string(2, serverName)
        w.u32(3, maximumBodySize)
        if !instanceID.isEmpty { w.bytes(4, instanceID) }
    }
}

// MARK: - register-guest (0x0002) / register-guest-reply (0x8002)

/// One trusted kernel symbol at its run-time address, as in the kernel build's symbol map:
/// its `nm` type letter (`T` global text, `t` local text, `D` data, …) and whether the kernel
/// exports it (has a `__ksymtab_<name>` entry). Only exported symbols resolve module
/// relocations; text symbols (exported or not) are legal static-call targets and name the
/// kernel's patching helpers (`__x86_return_thunk`, `_paravirt_nop`, …).
public struct KernelSymbol: Sendable, Equatable {
    public var name: String
    public var address: UInt64
    /// The `nm` type letter as ASCII (`T`, `t`, `D`, `W`, …).
    public var type: UInt8
    public var exported: Bool
    /// The build's symbol table says STT_FUNC (flags bit 1): a function entry, not a label inside
    /// code. When any symbol of a registration carries this bit, only such symbols are function
    /// entries (legal call targets).
    public var isFunction: Bool

    public init(name: String, address: UInt64, type: UInt8 = UInt8(ascii: "T"), exported: Bool = true, isFunction: Bool = false) {
        self.name = name
        self.address = address
        self.type = type
        self.exported = exported
        self.isFunction = isFunction
    }

    /// Text (code) symbol: `t`, `T`, `w`, `W`.
    public var isText: Bool { Self.isText(type) }
    /// The one test of the `nm` letter, for `KernelSymbol`, `SymbolRecord` and `SymbolRecordView`.
    @inlinable static func isText(_ type: UInt8) -> Bool {
        switch type {
        case UInt8(ascii: "t"), UInt8(ascii: "T"), UInt8(ascii: "w"), UInt8(ascii: "W"): return true
        default: return false
        }
    }
}

/// A registration's symbol records, held compactly. Decoded from the wire they stay the packed
/// records of the body's `symbols` field (a slice of the body: no copy), validated in one pass
/// that allocates nothing; each record is read in place when a consumer walks them. Built in
/// process (`RegisterGuest(symbols:)`, tests, the capture) they are the caller's `[KernelSymbol]`.
/// One way walks them, whatever the storage: `visitRecords` / `forEachRecord` (a
/// `SymbolRecordView` a record); `firstRecord(where:)` and `symbols` are made from it.
///
/// Why (round 14's left hole): decoding made one `KernelSymbol` (32 bytes) and one heap `String`
/// (~64 bytes for a name past 15 bytes) a record, before any budget was asked: a 28 MB body of
/// 800,000 tiny records became ~2.8× its size in objects, and the service, which budgets a body
/// byte at 2× (ServiceVM/README.md "Memory budget"), peaked at ~6× its body before refusing it.
/// Now the decode keeps nothing per record; what a record costs once it becomes facts is the
/// registry's to charge (`KernelFacts.symbolBytes`), after its budget check.
public struct SymbolRecords: Sendable, Equatable {
    @usableFromInline
    enum Storage: Sendable {
        /// Validated packed records (`RegisterGuest.Tag.symbols`) and how many there are.
        case packed(ByteBuffer, count: Int)
        case symbols([KernelSymbol])
    }
    @usableFromInline
    var storage: Storage

    public init(_ symbols: [KernelSymbol] = []) { storage = .symbols(symbols) }

    /// Validate the packed records of a `symbols` field and keep them as they are. One pass, no
    /// allocation: the record count is bounded (`maximum`) before a record is read, and every
    /// record is checked as the old decoder checked it, in the same order, with the same errors
    /// (count, truncation, flags, the name's UTF-8).
    init(validating field: ByteBuffer, maximum: Int) throws {
        // Read over the field's bytes in place (no slice a record: a slice retains the body).
        let count = try field.withUnsafeReadableBytes { raw -> Int in
            let end = raw.count
            var i = 0
            var count = 0
            while i < end {
                guard count < maximum else {
                    throw WireDecodeError(.tooManyItems, field: "register-guest.symbols", "more than \(maximum)")
                }
                guard end - i >= 12, end - i - 12 >= Int(raw[i + 10]) << 8 | Int(raw[i + 11]) else {
                    throw WireDecodeError(.truncatedField, field: "register-guest.symbols", "record \(count) truncated")
                }
                let flags = raw[i + 9]
                let len = Int(raw[i + 10]) << 8 | Int(raw[i + 11])
                guard flags & ~3 == 0 else {
                    throw WireDecodeError(.invalidValue, field: "register-guest.symbols", "record \(count): unknown flags 0x\(String(flags, radix: 16))")
                }
                // A name is at most 65,535 bytes (u16), below the string limit: only UTF-8 to check.
                guard TLVReader.isValidUTF8(UnsafeRawBufferPointer(rebasing: raw[(i + 12)..<(i + 12 + len)])) else {
                    throw WireDecodeError(.invalidUTF8, field: "register-guest.symbols")
                }
                count += 1
                i += 12 + len
            }
            return count
        }
        storage = .packed(field, count: count)
    }

    public var count: Int {
        switch storage {
        case .packed(_, let n): return n
        case .symbols(let s): return s.count
        }
    }
    public var isEmpty: Bool { count == 0 }

    /// Every record as a `KernelSymbol` (one `String` a name): for in-process callers, never the
    /// service's registration path.
    public var symbols: [KernelSymbol] {
        switch storage {
        case .symbols(let s): return s
        case .packed:
            var out: [KernelSymbol] = []
            out.reserveCapacity(count)
            forEachRecord { r in out.append(KernelSymbol(name: r.makeName(), address: r.address, type: r.type, exported: r.exported, isFunction: r.isFunction)) }
            return out
        }
    }

    /// Bytes of the packed records (`symbols` field), without packing them.
    public var packedByteCount: Int {
        switch storage {
        case .packed(let b, _): return b.readableBytes
        case .symbols(let s): return s.reduce(0) { $0 + 12 + Swift.min($1.name.utf8.count, Int(UInt16.max)) }
        }
    }

    /// The packed records as the wire carries them (names cut at 65,535 bytes, the u16 length):
    /// decoded records are the body's own bytes, not a copy.
    func packed() -> ByteBuffer {
        switch storage {
        case .packed(let b, _): return b
        case .symbols(let s):
            var out = ByteBuffer()
            out.reserveCapacity(packedByteCount)
            for sym in s {
                out.writeInteger(sym.address)
                out.writeInteger(sym.type)
                out.writeInteger(UInt8(sym.exported ? 1 : 0) | UInt8(sym.isFunction ? 2 : 0))
                let n = sym.name.utf8.prefix(Int(UInt16.max))
                out.writeInteger(UInt16(n.count))
                out.writeBytes(n)
            }
            return out
        }
    }

    /// The same records in the same order: address, type, flags and name. Two arrays compare as
    /// arrays (`KernelSymbol ==`: names as `String`s). Two decoded (validated) packings compare as
    /// bytes: a packing is its records concatenated, so equal bytes are exactly equal records. A
    /// packing against an array is walked in place (`visitRecords`) against the array's records,
    /// names compared as UTF-8 bytes in full. Not `packed()` bytes for that case: packing cuts an
    /// in-process name past 65,535 bytes to the u16 length, so an array holding one would equal
    /// the decoded records of its own encoding; compared in full it does not (a decoded name is
    /// never that long), as before the fold.
    public static func == (a: SymbolRecords, b: SymbolRecords) -> Bool {
        switch (a.storage, b.storage) {
        case (.symbols(let x), .symbols(let y)):
            return x == y
        case (.packed(let x, let n), .packed(let y, let m)):
            return n == m && x == y
        case (.packed(_, let n), .symbols(let y)):
            return n == y.count && Self.packed(a, equals: y)
        case (.symbols(let x), .packed(_, let m)):
            return m == x.count && Self.packed(b, equals: x)
        }
    }

    /// Whether the records of `records` (as many as `array` holds) are `array`'s, one by one.
    private static func packed(_ records: SymbolRecords, equals array: [KernelSymbol]) -> Bool {
        var i = 0
        return records.visitRecords { r in
            let s = array[i]
            i += 1
            return r.address == s.address && r.type == s.type && r.flags == (UInt8(s.exported ? 1 : 0) | UInt8(s.isFunction ? 2 : 0))
                && r.nameBytes.elementsEqual(s.name.utf8)
        }
    }

    /// Calls `body` with every record in order, read in place (`SymbolRecordView`: the name is
    /// the record's own bytes, valid only during the call): no slice, no `String`, nothing
    /// retained a record. The one walk over the records (there is no iterator: one that took a
    /// `ByteBuffer` slice a record, retained and released, made the first registration of a
    /// build ~1.8x slower than it was with `String`s decoded once).
    @inlinable
    public func forEachRecord(_ body: (SymbolRecordView) throws -> Void) rethrows {
        _ = try visitRecords { try body($0); return true }
    }

    /// Calls `body` with every record in order until it returns false; whether it never did.
    @discardableResult
    @inlinable
    public func visitRecords(_ body: (SymbolRecordView) throws -> Bool) rethrows -> Bool {
        switch storage {
        case .packed(let b, _):
            return try b.withUnsafeReadableBytes { raw in
                // Validated when decoded (`init(validating:maximum:)`): every record is whole.
                let end = raw.count
                var i = 0
                while end - i >= 12 {
                    let len = Int(raw[i + 10]) << 8 | Int(raw[i + 11])
                    guard end - i - 12 >= len else { break }
                    let record = SymbolRecordView(address: UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)),
                                                  type: raw[i + 8], flags: raw[i + 9],
                                                  nameBytes: UnsafeRawBufferPointer(rebasing: raw[(i + 12)..<(i + 12 + len)]))
                    guard try body(record) else { return false }
                    i += 12 + len
                }
                return true
            }
        case .symbols(let s):
            for sym in s {
                var name = sym.name  // withUTF8 needs a var; a native string is not copied
                let more = try name.withUTF8 { u in
                    try body(SymbolRecordView(address: sym.address, type: sym.type, flags: UInt8(sym.exported ? 1 : 0) | UInt8(sym.isFunction ? 2 : 0),
                                              nameBytes: UnsafeRawBufferPointer(u)))
                }
                guard more else { return false }
            }
            return true
        }
    }

    /// The first record `predicate` holds for (its name made a `String`), read in place.
    public func firstRecord(where predicate: (SymbolRecordView) throws -> Bool) rethrows -> SymbolRecord? {
        var found: SymbolRecord? = nil
        try visitRecords { r in
            guard try predicate(r) else { return true }
            found = SymbolRecord(address: r.address, type: r.type, flags: r.flags, name: r.makeName())
            return false
        }
        return found
    }
}

/// One record of `SymbolRecords` as a plain value, its name a `String` (`firstRecord(where:)`).
public struct SymbolRecord: Sendable, Equatable {
    public let address: UInt64
    /// The `nm` type letter as ASCII.
    public let type: UInt8
    /// Bit 0 exported, bit 1 function (as on the wire).
    public let flags: UInt8
    public let name: String

    public var exported: Bool { flags & 1 != 0 }
    public var isFunction: Bool { flags & 2 != 0 }
    /// Text (code) symbol: `t`, `T`, `w`, `W` (as `KernelSymbol.isText`).
    public var isText: Bool { KernelSymbol.isText(type) }
    /// Bytes in the name (UTF-8).
    public var nameByteCount: Int { name.utf8.count }
    /// Whether the name starts with `prefix`, compared as UTF-8 bytes.
    public func nameStarts(with prefix: String) -> Bool { name.utf8.starts(with: prefix.utf8) }
}

/// One record as `SymbolRecords.forEachRecord` reads it in place: its name is the record's own
/// UTF-8 bytes, valid only during the call that passed the view (copy nothing out of it but
/// values and `makeName()`).
public struct SymbolRecordView {
    public let address: UInt64
    /// The `nm` type letter as ASCII.
    public let type: UInt8
    /// Bit 0 exported, bit 1 function (as on the wire).
    public let flags: UInt8
    /// The name's UTF-8 bytes (validated), in place.
    public let nameBytes: UnsafeRawBufferPointer

    @inlinable
    init(address: UInt64, type: UInt8, flags: UInt8, nameBytes: UnsafeRawBufferPointer) {
        self.address = address
        self.type = type
        self.flags = flags
        self.nameBytes = nameBytes
    }

    @inlinable public var exported: Bool { flags & 1 != 0 }
    @inlinable public var isFunction: Bool { flags & 2 != 0 }
    /// Text (code) symbol: `t`, `T`, `w`, `W` (as `KernelSymbol.isText`).
    @inlinable public var isText: Bool { KernelSymbol.isText(type) }
    /// The name as a `String` (allocated for a name past 15 bytes).
    @inlinable public func makeName() -> String { String(decoding: nameBytes, as: UTF8.self) }

    /// Whether the name starts with the ASCII `prefix`, compared as bytes.
    @inlinable public func nameStarts(with prefix: StaticString) -> Bool {
        let n = prefix.utf8CodeUnitCount
        guard nameBytes.count >= n else { return false }
        let p = prefix.utf8Start
        for k in 0..<n where nameBytes[k] != p[k] { return false }
        return true
    }
}

/// The facts about a protected guest that later checks rely on. Where each fact must come from
/// (and why the guest's own word is not enough) is documented in docs/protocol.md and
/// docs/trust.md: the VMM reads them from the guest kernel's locked read-only data, or an operator
/// supplies them from the kernel build.
public struct RegisterGuest: Sendable, Equatable {
    public var guestID: String
    public var kernelRelease: String
    /// SHA-256 of the guest kernel image the facts belong to (optional).
    public var kernelDigest: [UInt8]
    public var kaslrSlide: UInt64
    /// `boot_cpu_data.x86_capability[]` as the kernel decided it: u32 words, little-endian.
    public var cpuCapabilities: [UInt8]
    /// The kernel build's symbol records (`Tag.symbols`): as decoded, the body's packed records
    /// read in place (`SymbolRecords`); the service's registration path reads only these.
    public var symbolRecords: SymbolRecords
    /// The same records as `KernelSymbol`s, for in-process callers (tests, the capture): reading
    /// it from a decoded registration makes one `String` a record, so the service never does;
    /// setting or mutating it keeps the array as given.
    public var symbols: [KernelSymbol] {
        get { symbolRecords.symbols }
        set { symbolRecords = SymbolRecords(newValue) }
        _modify {
            var s = symbolRecords.symbols
            symbolRecords = SymbolRecords()  // the array's one reference is `s`: mutated in place
            defer { symbolRecords = SymbolRecords(s) }
            yield &s
        }
    }
    /// Where the symbols came from: "locked-rodata" or "operator-build".
    public var symbolSource: String
    public var commandLine: String
    public var presentCPUs: UInt32
    /// CPUs possible (`/sys/devices/system/cpu/possible`): more than one means the kernel may
    /// un-patch uniprocessor `lock` rewrites later.
    public var possibleCPUs: UInt32
    /// `/sys/devices/system/cpu/vulnerabilities/*` as "name: value" lines (mitigation choices).
    public var vulnerabilities: String
    /// The first bytes of the kernel's `pv_ops` table (u64 little-endian each), if known.
    public var pvOps: [UInt8]
    /// The value of the kernel's `x86_return_thunk` (__ro_after_init), when the VMM read it:
    /// the thunk return sites jump to under RETHUNK. Nil = the build's default.
    public var returnThunk: UInt64?
    /// Explicit reset of a live guest id (a rebooted guest): every verified range, site and export
    /// of the old session is dropped. The VMM must have revoked every EXEC grant of the old session
    /// first. Without it a second registration of a live guest id is refused (`guest-exists`).
    public var reset: Bool
    /// Trusted targets per static-call key (see `StaticCallKeyFact`).
    public var staticCallKeys: [StaticCallKeyFact]
    /// Registration **by digest** (tag 0x8010, critical): the symbols digest of a kernel build the
    /// server already holds (`register-guest-reply.symbols_digest` of an earlier full
    /// registration), sent instead of `symbols`, which must then be empty. The server attaches the
    /// guest to its copy of that build, or answers `unknown-build` (send the full registration).
    /// Empty: a full registration (`symbols` are the build's records).
    public var symbolsDigest: [UInt8]
    /// `require_session` (tag 0x8011, critical): every session request for the guest must carry
    /// its session token while the session this registration establishes is current (a request
    /// without one is refused `bad-request`). docs/protocol.md, register-guest "Session tokens".
    public var requireSession: Bool
    /// A reset's `session` (tag 0x8020, `SessionToken`, critical): the token of the session the
    /// reset replaces, the guest's latest register-guest-reply's. With it the reset replaces (or,
    /// refused, ends) only a session it is of: that one, or, resets of the guest in flight, the
    /// session the one before it installed; never another guest line's, whatever connection
    /// carried it and however late the server read it. Only with `reset`. docs/protocol.md,
    /// register-guest "A reset names the session it replaces". nil: judged by its arrival.
    public var session: UInt64?

    /// True for a registration by digest (`symbolsDigest` set, no symbol records).
    public var isByDigest: Bool { !symbolsDigest.isEmpty }

    public init(guestID: String, kernelRelease: String = "", kernelDigest: [UInt8] = [], kaslrSlide: UInt64 = 0,
                cpuCapabilities: [UInt8] = [], symbols: [KernelSymbol] = [], symbolSource: String = "",
                commandLine: String = "", presentCPUs: UInt32 = 1, possibleCPUs: UInt32 = 1, vulnerabilities: String = "",
                pvOps: [UInt8] = [], returnThunk: UInt64? = nil, reset: Bool = false, staticCallKeys: [StaticCallKeyFact] = [],
                symbolsDigest: [UInt8] = [], requireSession: Bool = false, session: UInt64? = nil) {
        self.requireSession = requireSession
        self.session = session
        self.symbolsDigest = symbolsDigest
        self.reset = reset
        self.staticCallKeys = staticCallKeys
        self.guestID = guestID
        self.kernelRelease = kernelRelease
        self.kernelDigest = kernelDigest
        self.kaslrSlide = kaslrSlide
        self.cpuCapabilities = cpuCapabilities
        self.symbolRecords = SymbolRecords(symbols)
        self.symbolSource = symbolSource
        self.commandLine = commandLine
        self.presentCPUs = presentCPUs
        self.possibleCPUs = possibleCPUs
        self.vulnerabilities = vulnerabilities
        self.pvOps = pvOps
        self.returnThunk = returnThunk
    }

    enum Tag {
        static let returnThunk: UInt16 = 13
        static let reset: UInt16 = 14, staticCallKey: UInt16 = 15
        static let guestID: UInt16 = 1, kernelRelease: UInt16 = 2, kernelDigest: UInt16 = 3, kaslrSlide: UInt16 = 4
        static let cpuCapabilities: UInt16 = 5
        /// Packed records `{u64 address; u8 type; u8 flags; u16 name_len; u8 name[name_len]}`,
        /// concatenated; flags bit 0 = exported, other bits must be zero.
        static let symbols: UInt16 = 6
        static let symbolSource: UInt16 = 7, commandLine: UInt16 = 8, presentCPUs: UInt16 = 9
        static let vulnerabilities: UInt16 = 10, pvOps: UInt16 = 11, possibleCPUs: UInt16 = 12
        /// Critical (high bit set): a server that does not know registration by digest refuses
        /// the body (`malformed-body`, unknown critical field) instead of registering a guest
        /// with no symbols.
        static let symbolsDigest: UInt16 = 0x8010
        /// Critical: a server that predates session tokens refuses the registration rather than
        /// accept a requirement it would not enforce.
        static let requireSession: UInt16 = 0x8011
    }

    /// The same registration by digest: every field but the symbol records, which `digest`
    /// (their symbols digest, `register-guest-reply.symbols_digest`) stands for.
    public func byDigest(_ digest: [UInt8]) -> RegisterGuest {
        var r = self
        r.symbolRecords = SymbolRecords()
        r.symbolsDigest = digest
        return r
    }

    /// Most symbols one registration may carry (a 6.1 kernel exports ~30,000).
    public static let maximumSymbols = 1 << 20

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "register-guest", known: Set(1...15).union([Tag.symbolsDigest, Tag.requireSession, SessionToken.tag]),
                              repeated: [Tag.staticCallKey: WireLimits.maximumStaticCallKeys])
        guestID = try r.requiredString(Tag.guestID, "guest_id")
        guard !guestID.isEmpty else { throw WireDecodeError(.invalidValue, field: "register-guest.guest_id", "empty") }
        kernelRelease = try r.string(Tag.kernelRelease, "kernel_release") ?? ""
        kernelDigest = try r.optional(Tag.kernelDigest, "kernel_digest").map { Array(buffer: $0) } ?? []
        guard kernelDigest.isEmpty || kernelDigest.count == 32 else {
            throw WireDecodeError(.invalidValue, field: "register-guest.kernel_digest", "\(kernelDigest.count) bytes; a SHA-256 digest is 32")
        }
        let resetFlag: UInt8 = try r.integer(Tag.reset, "reset") ?? 0
        guard resetFlag <= 1 else { throw WireDecodeError(.invalidValue, field: "register-guest.reset", "\(resetFlag) is neither 0 nor 1") }
        reset = resetFlag == 1
        let requireFlag: UInt8 = try r.integer(Tag.requireSession, "require_session") ?? 0
        guard requireFlag <= 1 else { throw WireDecodeError(.invalidValue, field: "register-guest.require_session", "\(requireFlag) is neither 0 nor 1") }
        requireSession = requireFlag == 1
        session = try SessionToken.decode(r, message: "register-guest")
        guard session == nil || reset else {
            throw WireDecodeError(.invalidValue, field: "register-guest.session", "sent without reset=1: only a reset names a session (the one it replaces)")
        }
        let rawKeys = r.all(Tag.staticCallKey)
        guard rawKeys.count <= WireLimits.maximumStaticCallKeys else {
            throw WireDecodeError(.tooManyItems, field: "register-guest.static_call_key", "\(rawKeys.count) > \(WireLimits.maximumStaticCallKeys)")
        }
        staticCallKeys = try rawKeys.map { try StaticCallKeyFact(decoding: $0) }
        kaslrSlide = try r.integer(Tag.kaslrSlide, "kaslr_slide") ?? 0
        cpuCapabilities = try r.optional(Tag.cpuCapabilities, "cpu_caps").map { Array(buffer: $0) } ?? []
        guard cpuCapabilities.count % 4 == 0 else {
            throw WireDecodeError(.invalidValue, field: "register-guest.cpu_caps", "length \(cpuCapabilities.count) is not a multiple of 4")
        }
        // Checked before any record is decoded: one source for the build's records, the records
        // themselves or the digest of a build the server holds, never both (which would the facts be?).
        symbolsDigest = []
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
        // The records are validated in one pass that allocates nothing (their count bounded
        // first) and kept as the body's bytes: no object per record (SymbolRecords).
        symbolRecords = try r.optional(Tag.symbols, "symbols").map { try SymbolRecords(validating: $0, maximum: Self.maximumSymbols) } ?? SymbolRecords()
        symbolSource = try r.string(Tag.symbolSource, "symbol_source") ?? ""
        commandLine = try r.string(Tag.commandLine, "cmdline") ?? ""
        presentCPUs = try r.integer(Tag.presentCPUs, "present_cpus") ?? 1
        possibleCPUs = try r.integer(Tag.possibleCPUs, "possible_cpus") ?? presentCPUs
        returnThunk = try r.integer(Tag.returnThunk, "return_thunk")
        vulnerabilities = try r.string(Tag.vulnerabilities, "vulnerabilities") ?? ""
        pvOps = try r.optional(Tag.pvOps, "pv_ops").map { Array(buffer: $0) } ?? []
    }

    public func encode(into w: inout TLVWriter) {
        w.string(Tag.guestID, guestID)
        if !kernelRelease.isEmpty { w.string(Tag.kernelRelease, kernelRelease) }
        if !kernelDigest.isEmpty { w.bytes(Tag.kernelDigest, kernelDigest) }
        w.u64(Tag.kaslrSlide, kaslrSlide)
        if !cpuCapabilities.isEmpty { w.bytes(Tag.cpuCapabilities, cpuCapabilities) }
        if !symbolRecords.isEmpty { w.bytes(Tag.symbols, symbolRecords.packed()) }
        if !symbolSource.isEmpty { w.string(Tag.symbolSource, symbolSource) }
        if !commandLine.isEmpty { w.string(Tag.commandLine, commandLine) }
        w.u32(Tag.presentCPUs, presentCPUs)
        if !vulnerabilities.isEmpty { w.string(Tag.vulnerabilities, vulnerabilities) }
        if !pvOps.isEmpty { w.bytes(Tag.pvOps, pvOps) }
        w.u32(Tag.possibleCPUs, possibleCPUs)
        if let t = returnThunk { w.u64(Tag.returnThunk, t) }
        if reset { w.u8(Tag.reset, 1) }
        for k in staticCallKeys { w.nested(Tag.staticCallKey) { k.encode(into: &$0) } }
        if !symbolsDigest.isEmpty { w.bytes(Tag.symbolsDigest, symbolsDigest) }
        if requireSession { w.u8(Tag.requireSession, 1) }
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

public struct RegisterGuestReply: Sendable, Equatable {
    public var guestID: String
    public var symbolCount: UInt32
    /// SHA-256 of the register-guest body that established the session; every verdict for the
    /// guest carries it (`verdict.facts_digest`), binding the verdict to exactly those facts
    /// (kernel digest included). Empty when not computed.
    public var factsDigest: [UInt8]
    /// SHA-256 of the symbol table at link-time addresses (what a policy `kernel … symbols` pin
    /// names): the same for every boot of one build. Empty when not computed.
    public var symbolsDigest: [UInt8]
    /// Tag 5: the session token of the session this registration established (`SessionToken`),
    /// which the session's requests echo. nil: not sent (a server that predates tokens).
    public var session: UInt64?
    public init(guestID: String, symbolCount: UInt32, factsDigest: [UInt8] = [], symbolsDigest: [UInt8] = [], session: UInt64? = nil) {
        self.guestID = guestID
        self.symbolCount = symbolCount
        self.factsDigest = factsDigest
        self.symbolsDigest = symbolsDigest
        self.session = session
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "register-guest-reply", known: [1, 2, 3, 4, SessionToken.replyTag])
        guestID = try r.requiredString(1, "guest_id")
        symbolCount = try r.requiredInteger(2, "symbol_count")
        factsDigest = try r.optional(3, "facts_digest").map { Array(buffer: $0) } ?? []
        symbolsDigest = try r.optional(4, "symbols_digest").map { Array(buffer: $0) } ?? []
        session = try r.integer(SessionToken.replyTag, "session")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        w.u32(2, symbolCount)
        if !factsDigest.isEmpty { w.bytes(3, factsDigest) }
        if !symbolsDigest.isEmpty { w.bytes(4, symbolsDigest) }
        if let t = session { w.u64(SessionToken.replyTag, t) }
    }

    /// The packed symbol records at link-time addresses (image addresses − `kaslrSlide`), the
    /// input of `symbolsDigest`.
    public static func linkTimeSymbolRecords(_ r: RegisterGuest) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(r.symbolRecords.packedByteCount)
        linkTimeSymbolRecords(r) { out.append(contentsOf: $0) }
        return out
    }

    /// The same bytes in consecutive pieces of about `piece` bytes (a record is never split), one
    /// window reused: what the symbols digest hashes without a copy of every record (the records
    /// of a 28 MB registration were once packed whole, one more body, before the budget was asked).
    public static func linkTimeSymbolRecords(_ r: RegisterGuest, piece: Int = 64 << 10, _ emit: (UnsafeRawBufferPointer) -> Void) {
        // A record is at most 12 + 65,535 bytes: one always fits past a window short of `piece`.
        let window = UnsafeMutableRawBufferPointer.allocate(byteCount: max(piece, 0) + 12 + Int(UInt16.max), alignment: 8)
        defer { window.deallocate() }
        var used = 0
        let slide = r.kaslrSlide
        r.symbolRecords.forEachRecord { s in
            // KASLR moves the kernel image (mapped from __START_KERNEL_map, 0xffffffff80000000);
            // zero-based per-cpu offsets (`A` symbols such as `__per_cpu_end`) do not move.
            let a = s.address >= 0xffff_ffff_8000_0000 ? s.address &- slide : s.address
            window.storeBytes(of: a.bigEndian, toByteOffset: used, as: UInt64.self)
            window[used + 8] = s.type
            window[used + 9] = s.flags
            // Names are packed from the record's bytes in place, without a String per record.
            let n = min(s.nameBytes.count, Int(UInt16.max))
            window[used + 10] = UInt8(n >> 8)
            window[used + 11] = UInt8(n & 0xff)
            if n > 0 { (window.baseAddress! + used + 12).copyMemory(from: s.nameBytes.baseAddress!, byteCount: n) }
            used += 12 + n
            if used >= piece {
                emit(UnsafeRawBufferPointer(rebasing: window[0..<used]))
                used = 0
            }
        }
        if used > 0 { emit(UnsafeRawBufferPointer(rebasing: window[0..<used])) }
    }
}

// MARK: - authorize-module (0x0003)

/// One section of the claim: where the section lives in the guest, and — for executable
/// sections — the exact bytes the VMM read from write-protected guest memory.
public struct SectionClaim: Sendable, Equatable {
    public var name: String
    public var address: UInt64
    /// The claimed executable bytes; nil for a layout-only entry (address of a data section).
    public var bytes: ByteBuffer?

    public init(name: String, address: UInt64, bytes: ByteBuffer? = nil) {
        self.name = name
        self.address = address
        self.bytes = bytes
    }

    enum Tag { static let name: UInt16 = 1, address: UInt16 = 2, bytes: UInt16 = 3 }
}

public struct AuthorizeModule: Sendable, Equatable {
    /// The guest the pages belong to; empty = no registered guest (signature and structure only).
    public var guestID: String
    /// Evidence: the signed `.ko` file, byte for byte.
    public var module: ByteBuffer
    /// Claim: every executable section (with bytes) and, optionally, the others' addresses.
    public var sections: [SectionClaim]
    /// The module's per-cpu area base, when it has `.data..percpu` (a layout claim).
    public var perCPUBase: UInt64?
    /// What the guest calls the module (informative; policy may deny by name).
    public var moduleName: String
    /// The whole executable region `[textBase, textBase + text.count)` as read from guest
    /// memory: every byte the EXEC grant covers, section contents and padding alike. End-state
    /// verification judges exactly this.
    public var textBase: UInt64?
    public var text: ByteBuffer?
    /// Guest-physical frame number of every 4 KiB page of `text`, in order (required with `text`):
    /// the EXEC grant covers exactly these frames, and the verdict echoes them.
    public var frames: [UInt64]
    /// The module's init text (`.init.text` and the rest of the init layout's executable part),
    /// its base and its frames; valid until module-init-freed.
    public var initBase: UInt64?
    public var initText: ByteBuffer?
    public var initFrames: [UInt64]
    /// The guest's session token (tag 0x8020, `SessionToken`): the session this load belongs to,
    /// judged by it whatever connection carried it. nil: judged by its arrival. Only with `guestID`.
    public var session: UInt64?

    public init(guestID: String = "", module: ByteBuffer, sections: [SectionClaim] = [], perCPUBase: UInt64? = nil, moduleName: String = "",
                textBase: UInt64? = nil, text: ByteBuffer? = nil, frames: [UInt64] = [], initBase: UInt64? = nil,
                initText: ByteBuffer? = nil, initFrames: [UInt64] = [], session: UInt64? = nil) {
        self.session = session
        self.frames = frames
        self.initBase = initBase
        self.initText = initText
        self.initFrames = initFrames
        self.guestID = guestID
        self.module = module
        self.sections = sections
        self.perCPUBase = perCPUBase
        self.moduleName = moduleName
        self.textBase = textBase
        self.text = text
    }

    /// The tag of `module` (the request digest replaces that field's value by its digest).
    public static let moduleTag: UInt16 = Tag.module

    enum Tag {
        static let guestID: UInt16 = 1, module: UInt16 = 2, section: UInt16 = 3, perCPUBase: UInt16 = 4, moduleName: UInt16 = 5
        static let textBase: UInt16 = 6, text: UInt16 = 7
        static let frames: UInt16 = 8, initBase: UInt16 = 9, initText: UInt16 = 10, initFrames: UInt16 = 11
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "authorize-module", known: Set(1...11).union([SessionToken.tag]), repeated: [Tag.section: WireLimits.maximumSectionClaims])
        guestID = try r.string(Tag.guestID, "guest_id") ?? ""
        module = try r.required(Tag.module, "module")
        let raw = r.all(Tag.section)
        guard raw.count <= WireLimits.maximumSectionClaims else {
            throw WireDecodeError(.tooManyItems, field: "authorize-module.section", "\(raw.count) > \(WireLimits.maximumSectionClaims)")
        }
        sections = try raw.map { v in
            let s = try TLVReader(v, message: "authorize-module.section", known: [1, 2, 3])
            return SectionClaim(name: try s.requiredString(SectionClaim.Tag.name, "name"),
                                address: try s.requiredInteger(SectionClaim.Tag.address, "address"),
                                bytes: try s.optional(SectionClaim.Tag.bytes, "bytes"))
        }
        perCPUBase = try r.integer(Tag.perCPUBase, "percpu_base")
        moduleName = try r.string(Tag.moduleName, "module_name") ?? ""
        textBase = try r.integer(Tag.textBase, "text_base")
        text = try r.optional(Tag.text, "text")
        guard (textBase == nil) == (text == nil) else {
            throw WireDecodeError(.missingField, field: textBase == nil ? "authorize-module.text_base" : "authorize-module.text",
                                  "text_base and text come together")
        }
        frames = try r.optional(Tag.frames, "frames").map { try PackedFrames.decode($0, field: "authorize-module.frames") } ?? []
        initBase = try r.integer(Tag.initBase, "init_base")
        initText = try r.optional(Tag.initText, "init_text")
        initFrames = try r.optional(Tag.initFrames, "init_frames").map { try PackedFrames.decode($0, field: "authorize-module.init_frames") } ?? []
        guard (initBase == nil) == (initText == nil) else {
            throw WireDecodeError(.missingField, field: initBase == nil ? "authorize-module.init_base" : "authorize-module.init_text",
                                  "init_base and init_text come together")
        }
        session = try SessionToken.decode(r, message: "authorize-module")
        guard session == nil || !guestID.isEmpty else {
            throw WireDecodeError(.invalidValue, field: "authorize-module.session", "sent without guest_id: a session token names a session of a registered guest")
        }
    }

    public func encode(into w: inout TLVWriter) {
        if !guestID.isEmpty { w.string(Tag.guestID, guestID) }
        w.bytes(Tag.module, module)
        for s in sections {
            w.nested(Tag.section) { n in
                n.string(SectionClaim.Tag.name, s.name)
                n.u64(SectionClaim.Tag.address, s.address)
                if let b = s.bytes { n.bytes(SectionClaim.Tag.bytes, b) }
            }
        }
        if let p = perCPUBase { w.u64(Tag.perCPUBase, p) }
        if !moduleName.isEmpty { w.string(Tag.moduleName, moduleName) }
        if let b = textBase, let t = text {
            w.u64(Tag.textBase, b)
            w.bytes(Tag.text, t)
        }
        if !frames.isEmpty { w.bytes(Tag.frames, PackedFrames.encode(frames)) }
        if let b = initBase, let t = initText {
            w.u64(Tag.initBase, b)
            w.bytes(Tag.initText, t)
        }
        if !initFrames.isEmpty { w.bytes(Tag.initFrames, PackedFrames.encode(initFrames)) }
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

// MARK: - authorize-patch (0x0005)

/// A run-time text patch the guest wants to apply to already-executable text: a jump-label flip,
/// `static_call_update()`, or a `lock` prefix rewrite (text_poke); ftrace sites are never patchable. Allowed only at a known site of a
/// module ExecGate verified for this guest, with one of that site's legal encodings.
public struct AuthorizePatch: Sendable, Equatable {
    public var guestID: String
    /// The batch: every text_poke of one transition (tags 2+3 on the wire for a single entry,
    /// tag 4 repeated for a batch). A jump-label or static-call key changes state only as a whole:
    /// the batch covers every live site of each key it touches.
    public var patches: [PatchEntry]
    /// Guest virtual address of the first patched byte (the first entry).
    public var address: UInt64 { patches.first?.address ?? 0 }
    /// The bytes to be written there (the first entry).
    public var bytes: [UInt8] { patches.first?.bytes ?? [] }
    /// The guest's session token (tag 0x8020, `SessionToken`); nil: judged by its arrival.
    public var session: UInt64?

    /// Longest patch accepted (the longest x86 text_poke site is an 8-byte… nothing in 6.1 exceeds 16).
    public static let maximumLength = 16

    public init(guestID: String, address: UInt64, bytes: [UInt8], session: UInt64? = nil) {
        self.guestID = guestID
        self.patches = [PatchEntry(address: address, bytes: bytes)]
        self.session = session
    }

    /// A batch (encoded as tag 4 entries when it has more than one).
    public init(guestID: String, patches: [PatchEntry], session: UInt64? = nil) {
        self.guestID = guestID
        self.patches = patches
        self.session = session
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "authorize-patch", known: [1, 2, 3, 4, SessionToken.tag], repeated: [4: WireLimits.maximumPatchBatch])
        guestID = try r.requiredString(1, "guest_id")
        session = try SessionToken.decode(r, message: "authorize-patch")
        let single: UInt64? = try r.integer(2, "address")
        let singleBytes = try r.optional(3, "bytes")
        let batch = r.all(4)
        if let address = single {
            guard let b = singleBytes else { throw WireDecodeError(.missingField, field: "authorize-patch.bytes") }
            guard batch.isEmpty else {
                throw WireDecodeError(.invalidValue, field: "authorize-patch.patch", "address/bytes and patch entries are exclusive")
            }
            guard b.readableBytes >= 1 && b.readableBytes <= Self.maximumLength else {
                throw WireDecodeError(.invalidValue, field: "authorize-patch.bytes", "\(b.readableBytes) bytes; 1...\(Self.maximumLength) allowed")
            }
            patches = [PatchEntry(address: address, bytes: Array(buffer: b))]
        } else {
            guard singleBytes == nil else { throw WireDecodeError(.missingField, field: "authorize-patch.address") }
            guard !batch.isEmpty else { throw WireDecodeError(.missingField, field: "authorize-patch.address") }
            guard batch.count <= WireLimits.maximumPatchBatch else {
                throw WireDecodeError(.tooManyItems, field: "authorize-patch.patch", "\(batch.count) > \(WireLimits.maximumPatchBatch)")
            }
            patches = try batch.map { try PatchEntry(decoding: $0) }
        }
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        if patches.count == 1 {
            w.u64(2, patches[0].address)
            w.bytes(3, patches[0].bytes)
        } else {
            for p in patches { w.nested(4) { p.encode(into: &$0) } }
        }
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

// MARK: - verdict (0x8003)

public struct Verdict: Sendable, Equatable {
    public enum Decision: UInt8, Sendable { case deny = 0, allow = 1 }

    public var decision: Decision
    public var reason: VerdictReason
    /// One human sentence; for end-state denials it names the first unexplained byte.
    public var message: String
    /// The checks that ran, in order (e.g. "signature", "deny-list", "elf-structure", "end-state").
    public var checks: [String]
    public var policyID: String
    public var policyVersion: UInt64
    /// SHA-256 of the request frame's body: ties the verdict to exactly the bytes judged.
    public var requestDigest: [UInt8]
    public var moduleName: String
    /// SHA-256 of the module content before the signature (what deny lists match).
    public var moduleDigest: [UInt8]
    /// True when the policy is audit-only and enforce would have denied: allowed, but recorded.
    public var auditOnly: Bool
    /// The request digest of the register-guest that established the guest's session (its reply's
    /// `facts_digest`): the facts this verdict relied on. Empty without a guest.
    public var factsDigest: [UInt8] = []
    /// The grant an allow covers: the region's base and its guest-physical frames, echoed from the
    /// claim. The VMM grants EXEC on exactly these frames, and on nothing else.
    public var grantBase: UInt64? = nil
    public var grantFrames: [UInt64] = []
    /// True when the policy opted into signature-only judgement and no byte was judged.
    public var signatureOnly: Bool = false
    /// The init-text grant an allow covers (frames of the claimed init text), valid until module-init-freed.
    public var initFrames: [UInt64] = []

    public init(decision: Decision, reason: VerdictReason, message: String, checks: [String], policyID: String,
                policyVersion: UInt64, requestDigest: [UInt8], moduleName: String = "", moduleDigest: [UInt8] = [], auditOnly: Bool = false) {
        self.decision = decision
        self.reason = reason
        self.message = message
        self.checks = checks
        self.policyID = policyID
        self.policyVersion = policyVersion
        self.requestDigest = requestDigest
        self.moduleName = moduleName
        self.moduleDigest = moduleDigest
        self.auditOnly = auditOnly
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "verdict", known: Set(1...16), repeated: [5: WireLimits.maximumVerdictChecks])
        let d: UInt8 = try r.requiredInteger(1, "decision")
        guard let decision = Decision(rawValue: d) else {
            throw WireDecodeError(.invalidValue, field: "verdict.decision", "\(d) is neither 0 (deny) nor 1 (allow)")
        }
        self.decision = decision
        reason = VerdictReason(rawValue: try r.requiredInteger(2, "reason"))
        message = try r.string(4, "message") ?? ""
        checks = try r.strings(5, "check")
        policyID = try r.string(6, "policy_id") ?? ""
        policyVersion = try r.integer(7, "policy_version") ?? 0
        requestDigest = try r.optional(8, "request_digest").map { Array(buffer: $0) } ?? []
        moduleName = try r.string(9, "module_name") ?? ""
        moduleDigest = try r.optional(10, "module_digest").map { Array(buffer: $0) } ?? []
        auditOnly = (try r.integer(11, "audit_only", as: UInt8.self) ?? 0) != 0
        factsDigest = try r.optional(12, "facts_digest").map { Array(buffer: $0) } ?? []
        grantBase = try r.integer(13, "grant_base")
        grantFrames = try r.optional(14, "grant_frames").map { try PackedFrames.decode($0, field: "verdict.grant_frames") } ?? []
        signatureOnly = (try r.integer(15, "signature_only", as: UInt8.self) ?? 0) != 0
        initFrames = try r.optional(16, "init_frames").map { try PackedFrames.decode($0, field: "verdict.init_frames") } ?? []
    }

    public func encode(into w: inout TLVWriter) {
        w.u8(1, decision.rawValue)
        w.u16(2, reason.rawValue)
        w.string(3, reason.name)  // tag 3: the reason's name, for humans reading captures; decoders ignore it.
        w.string(4, message)
        for c in checks { w.string(5, c) }
        w.string(6, policyID)
        w.u64(7, policyVersion)
        w.bytes(8, requestDigest)
        if !moduleName.isEmpty { w.string(9, moduleName) }
        if !moduleDigest.isEmpty { w.bytes(10, moduleDigest) }
        if auditOnly { w.u8(11, 1) }
        if !factsDigest.isEmpty { w.bytes(12, factsDigest) }
        if let b = grantBase { w.u64(13, b) }
        if !grantFrames.isEmpty { w.bytes(14, PackedFrames.encode(grantFrames)) }
        if signatureOnly { w.u8(15, 1) }
        if !initFrames.isEmpty { w.bytes(16, PackedFrames.encode(initFrames)) }
    }
}

// MARK: - status (0x0004) / status-reply (0x8004)

public struct StatusReply: Sendable, Equatable {
    public var serverName: String
    public var uptimeMilliseconds: UInt64
    public var requestsServed: UInt64
    public var guests: UInt32
    public var policyID: String
    public var policyVersion: UInt64
    public var state: String

    public init(serverName: String, uptimeMilliseconds: UInt64, requestsServed: UInt64, guests: UInt32,
                policyID: String, policyVersion: UInt64, state: String) {
        self.serverName = serverName
        self.uptimeMilliseconds = uptimeMilliseconds
        self.requestsServed = requestsServed
        self.guests = guests
        self.policyID = policyID
        self.policyVersion = policyVersion
        self.state = state
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "status-reply", known: Set(1...7))
        serverName = try r.string(1, "server_name") ?? ""
        uptimeMilliseconds = try r.integer(2, "uptime_ms") ?? 0
        requestsServed = try r.integer(3, "requests") ?? 0
        guests = try r.integer(4, "guests") ?? 0
        policyID = try r.string(5, "policy_id") ?? ""
        policyVersion = try r.integer(6, "policy_version") ?? 0
        state = try r.requiredString(7, "state")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, serverName)
        w.u64(2, uptimeMilliseconds)
        w.u64(3, requestsServed)
        w.u32(4, guests)
        w.string(5, policyID)
        w.u64(6, policyVersion)
        w.string(7, state)
    }
}

// MARK: - error (0xFFFF)

public struct ErrorReply: Sendable, Equatable, Error {
    public var code: WireErrorCode
    public var message: String
    public init(code: WireErrorCode, message: String) { self.code = code; self.message = message }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "error", known: [1, 2])
        code = WireErrorCode(rawValue: try r.requiredInteger(1, "code"))
        message = try r.string(2, "message") ?? ""
    }

    public func encode(into w: inout TLVWriter) {
        w.u16(1, code.rawValue)
        w.string(2, message)
    }
}

// MARK: - The message sum type

public enum Message: Sendable, Equatable {
    case hello(Hello)
    case helloReply(HelloReply)
    case registerGuest(RegisterGuest)
    case registerGuestReply(RegisterGuestReply)
    case authorizeModule(AuthorizeModule)
    case authorizePatch(AuthorizePatch)
    case verdict(Verdict)
    case status
    case statusReply(StatusReply)
    case retireModule(RetireModule)
    case retireModuleReply(RetireModuleReply)
    case moduleInitFreed(ModuleInitFreed)
    case moduleInitFreedReply(ModuleInitFreedReply)
    case removeGuest(RemoveGuest)
    case removeGuestReply(RemoveGuestReply)
    case error(ErrorReply)

    public var type: MessageType {
        switch self {
        case .hello: return .hello
        case .helloReply: return .helloReply
        case .registerGuest: return .registerGuest
        case .registerGuestReply: return .registerGuestReply
        case .authorizeModule: return .authorizeModule
        case .authorizePatch: return .authorizePatch
        case .verdict: return .verdict
        case .status: return .status
        case .statusReply: return .statusReply
        case .retireModule: return .retireModule
        case .retireModuleReply: return .retireModuleReply
        case .moduleInitFreed: return .moduleInitFreed
        case .moduleInitFreedReply: return .moduleInitFreedReply
        case .removeGuest: return .removeGuest
        case .removeGuestReply: return .removeGuestReply
        case .error: return .error
        }
    }

    /// Decode a frame's body as the message its type names.
    /// - Throws: `UnknownMessageType` for a type v1 does not define; `WireDecodeError` for a bad body.
    public init(type: MessageType, body: ByteBuffer) throws {
        switch type {
        case .hello: self = .hello(try Hello(decoding: body))
        case .helloReply: self = .helloReply(try HelloReply(decoding: body))
        case .registerGuest: self = .registerGuest(try RegisterGuest(decoding: body))
        case .registerGuestReply: self = .registerGuestReply(try RegisterGuestReply(decoding: body))
        case .authorizeModule: self = .authorizeModule(try AuthorizeModule(decoding: body))
        case .authorizePatch: self = .authorizePatch(try AuthorizePatch(decoding: body))
        case .verdict: self = .verdict(try Verdict(decoding: body))
        case .status:
            _ = try TLVReader(body, message: "status", known: [])
            self = .status
        case .statusReply: self = .statusReply(try StatusReply(decoding: body))
        case .retireModule: self = .retireModule(try RetireModule(decoding: body))
        case .retireModuleReply: self = .retireModuleReply(try RetireModuleReply(decoding: body))
        case .moduleInitFreed: self = .moduleInitFreed(try ModuleInitFreed(decoding: body))
        case .moduleInitFreedReply: self = .moduleInitFreedReply(try ModuleInitFreedReply(decoding: body))
        case .removeGuest: self = .removeGuest(try RemoveGuest(decoding: body))
        case .removeGuestReply: self = .removeGuestReply(try RemoveGuestReply(decoding: body))
        case .error: self = .error(try ErrorReply(decoding: body))
        default: throw UnknownMessageType(type: type)
        }
    }

    public func encodeBody(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        // Sized up front: a module-sized body written into the default 256 bytes was reallocated
        // and copied at every doubling (≈ twice the body in copies per request on the client).
        var w = TLVWriter(allocator: allocator, capacity: capacityHint)
        encode(into: &w)
        return w.buffer
    }

    /// The body as parts whose concatenation is `encodeBody()`: every `bytes` value of at least
    /// `gatherAbove` bytes (a module, a claimed region) is its caller's buffer, not a copy
    /// (TLVWriter gathering). A client writes them with one gathered write (ExecGateClient).
    public func encodeBodyParts(gatherAbove: Int = 16 << 10, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [ByteBuffer] {
        var w = TLVWriter(allocator: allocator, capacity: 1024, gatherAbove: gatherAbove)
        encode(into: &w)
        return w.parts
    }

    private func encode(into w: inout TLVWriter) {
        switch self {
        case .hello(let m): m.encode(into: &w)
        case .helloReply(let m): m.encode(into: &w)
        case .registerGuest(let m): m.encode(into: &w)
        case .registerGuestReply(let m): m.encode(into: &w)
        case .authorizeModule(let m): m.encode(into: &w)
        case .authorizePatch(let m): m.encode(into: &w)
        case .verdict(let m): m.encode(into: &w)
        case .status: break
        case .statusReply(let m): m.encode(into: &w)
        case .retireModule(let m): m.encode(into: &w)
        case .retireModuleReply(let m): m.encode(into: &w)
        case .moduleInitFreed(let m): m.encode(into: &w)
        case .moduleInitFreedReply(let m): m.encode(into: &w)
        case .removeGuest(let m): m.encode(into: &w)
        case .removeGuestReply(let m): m.encode(into: &w)
        case .error(let m): m.encode(into: &w)
        }
    }

    /// Bytes the encoded body is expected to need (its large fields plus room for the rest).
    var capacityHint: Int {
        switch self {
        case .authorizeModule(let m):
            return 256 + m.module.readableBytes + (m.text?.readableBytes ?? 0) + (m.initText?.readableBytes ?? 0)
                + 8 * (m.frames.count + m.initFrames.count) + m.sections.reduce(0) { $0 + 64 + $1.name.utf8.count + ($1.bytes?.readableBytes ?? 0) }
        case .registerGuest(let r):
            return 1024 + r.symbolRecords.packedByteCount + r.cpuCapabilities.count + r.pvOps.count
                + r.commandLine.utf8.count + r.vulnerabilities.utf8.count + 64 * r.staticCallKeys.count
        default:
            return 256
        }
    }

    public func frame(requestID: UInt64) -> Frame {
        Frame(type: type, requestID: requestID, body: encodeBody())
    }
}

public struct UnknownMessageType: Error, Hashable, Sendable {
    public var type: MessageType
}
