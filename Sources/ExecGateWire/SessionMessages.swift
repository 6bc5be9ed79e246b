// SPDX-License-Identifier: Apache-2.0
//
// The guest-session messages of wire protocol v1 (docs/protocol.md): the life cycle of a verified
// module after its verdict (retire-module, module-init-freed), and the pieces other messages carry
// for it (static-call keys in register-guest, guest-physical frames in authorize-module, patch
// batches in authorize-patch). Parser and serializer side by side, as in Messages.swift.

import NIOCore

// MARK: - Limits

extension WireLimits {
    /// Most `static_call_key` entries in one register-guest (a 6.1 x86-64 build defines ~600
    /// static-call keys; the cap leaves room for other configurations).
    public static let maximumStaticCallKeys = 1 << 16
    /// Most operator-supplied targets per static-call key (a key has a handful of update sites).
    public static let maximumStaticCallTargetsPerKey = 64
    /// Most entries in one authorize-patch batch. A jump-label key used by many modules has at most
    /// a few thousand sites in a 6.1 build; 16,384 bounds the work of one request.
    public static let maximumPatchBatch = 1 << 14
    /// Most 4 KiB frames one claimed region may name (a 128 MiB region: the engine's own cap).
    public static let maximumFrames = (128 << 20) >> 12
    /// The page size frames are counted in (x86-64 base pages).
    public static let framePageSize: UInt64 = 4096
    /// Frame numbers name guest-physical pages: every frame is below this bound. x86-64 physical
    /// addresses have at most 52 bits (`__PHYSICAL_MASK_SHIFT`, arch/x86/include/asm/page_64_types.h;
    /// a PTE's PFN is bits 12–51, `PTE_PFN_MASK`), so a page's frame number `gpa >> 12` is below
    /// 2^40. A larger number is the same page to a VMM that computes `frame << 12` or fills a
    /// 40-bit PFN field (2^52 + f, 2^40 + f ≡ f), so it is refused, never compared as another frame.
    public static let frameNumberLimit: UInt64 = 1 << 40
}

// MARK: - Packed guest-physical frames

/// Guest-physical frame numbers (`gpa >> 12`), one per 4 KiB page of a claimed region in order,
/// packed as big-endian u64s. The EXEC grant covers exactly these frames.
public enum PackedFrames {
    /// - Throws: `WireDecodeError.invalidValue` when the length is not a multiple of 8,
    ///   `.tooManyItems` above `WireLimits.maximumFrames`.
    public static func decode(_ b: ByteBuffer, field: String) throws -> [UInt64] {
        guard b.readableBytes % 8 == 0 else {
            throw WireDecodeError(.invalidValue, field: field, "length \(b.readableBytes) is not a multiple of 8")
        }
        guard b.readableBytes / 8 <= WireLimits.maximumFrames else {
            throw WireDecodeError(.tooManyItems, field: field, "\(b.readableBytes / 8) frames > \(WireLimits.maximumFrames)")
        }
        var b = b
        var out: [UInt64] = []
        out.reserveCapacity(b.readableBytes / 8)
        while let f = b.readInteger(as: UInt64.self) { out.append(f) }
        return out
    }

    public static func encode(_ frames: [UInt64]) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(frames.count * 8)
        for f in frames { b.writeInteger(f) }
        return b
    }
}

// MARK: - register-guest: static-call keys (tag 15)

/// One static-call key's trusted targets: the key's current target, which the VMM decodes from the
/// core kernel's own trampoline `__SCT__<name>` (`jmp func`, or the RET form for NULL) in locked,
/// read-only core text at the trusted point, plus targets the operator's build lists for that key
/// (the functions its `static_call_update()` callers may install). 0 stands for NULL.
public struct StaticCallKeyFact: Sendable, Equatable {
    /// Run-time address of `__SCK__<name>` (the `struct static_call_key`).
    public var key: UInt64
    /// The target decoded from the trampoline at registration (0 = NULL / RET form).
    public var current: UInt64
    /// Further targets the operator's build allows for this key.
    public var allowed: [UInt64]

    public init(key: UInt64, current: UInt64, allowed: [UInt64] = []) {
        self.key = key
        self.current = current
        self.allowed = allowed
    }

    enum Tag { static let key: UInt16 = 1, current: UInt16 = 2, allowed: UInt16 = 3 }

    init(decoding v: ByteBuffer) throws {
        let r = try TLVReader(v, message: "register-guest.static_call_key", known: [1, 2, 3], repeated: [Tag.allowed: WireLimits.maximumStaticCallTargetsPerKey])
        key = try r.requiredInteger(Tag.key, "key")
        current = try r.requiredInteger(Tag.current, "current")
        let raw = r.all(Tag.allowed)
        guard raw.count <= WireLimits.maximumStaticCallTargetsPerKey else {
            throw WireDecodeError(.tooManyItems, field: "register-guest.static_call_key.allowed",
                                  "\(raw.count) > \(WireLimits.maximumStaticCallTargetsPerKey)")
        }
        allowed = try raw.map { v in
            var v = v
            guard v.readableBytes == 8, let x = v.readInteger(as: UInt64.self) else {
                throw WireDecodeError(.badIntegerWidth, field: "register-guest.static_call_key.allowed", "expected 8 bytes")
            }
            return x
        }
    }

    func encode(into n: inout TLVWriter) {
        n.u64(Tag.key, key)
        n.u64(Tag.current, current)
        for a in allowed { n.u64(Tag.allowed, a) }
    }
}

// MARK: - authorize-patch: one entry of a batch (tag 4)

/// One text_poke of a batch: `bytes` written at `address`.
public struct PatchEntry: Sendable, Equatable {
    public var address: UInt64
    public var bytes: [UInt8]
    public init(address: UInt64, bytes: [UInt8]) {
        self.address = address
        self.bytes = bytes
    }

    enum Tag { static let address: UInt16 = 1, bytes: UInt16 = 2 }

    init(decoding v: ByteBuffer) throws {
        let r = try TLVReader(v, message: "authorize-patch.patch", known: [1, 2])
        address = try r.requiredInteger(Tag.address, "address")
        let b = try r.required(Tag.bytes, "bytes")
        guard b.readableBytes >= 1 && b.readableBytes <= AuthorizePatch.maximumLength else {
            throw WireDecodeError(.invalidValue, field: "authorize-patch.patch.bytes",
                                  "\(b.readableBytes) bytes; 1...\(AuthorizePatch.maximumLength) allowed")
        }
        bytes = Array(buffer: b)
    }

    func encode(into n: inout TLVWriter) {
        n.u64(Tag.address, address)
        n.bytes(Tag.bytes, bytes)
    }
}

// MARK: - Session tokens (register-guest-reply tag 5; tag 0x8020 of every session request)

/// The session token (docs/protocol.md, register-guest "Session tokens"): register-guest-reply
/// names the session a registration established, and the VMM echoes it in every request of that
/// session, so a request of a session a reset replaced is told apart whatever connection carried
/// it and however late the server read it. Opaque to the VMM; never 0.
public enum SessionToken {
    /// The `session` field of authorize-module, authorize-patch, retire-module and
    /// module-init-freed: critical, so a server that predates tokens refuses a request carrying
    /// one (`malformed-body`) rather than judge it by its arrival alone.
    public static let tag: UInt16 = 0x8020
    /// register-guest-reply's `session` (non-critical: an older client skips it).
    public static let replyTag: UInt16 = 5

    /// The request's `session` field, or nil when absent. Exactly 8 bytes, never 0.
    /// - Throws: `WireDecodeError` `.badIntegerWidth` (not 8 bytes), `.invalidValue` (0),
    ///   `.duplicateField`, naming `<message>.session`.
    static func decode(_ r: TLVReader, message: String) throws -> UInt64? {
        guard let v = try r.optional(tag, "session") else { return nil }
        guard v.readableBytes == 8, let t = v.getInteger(at: v.readerIndex, as: UInt64.self) else {
            throw WireDecodeError(.badIntegerWidth, field: "\(message).session", "\(v.readableBytes) bytes; a session token is a u64 (8 bytes)")
        }
        guard t != 0 else {
            throw WireDecodeError(.invalidValue, field: "\(message).session", "0 is no session token (a server never issues 0)")
        }
        return t
    }
}

// MARK: - retire-module (0x0006) / retire-module-reply (0x8006)

/// The guest unloaded a module and the VMM has already revoked EXEC on all of its pages (core text
/// and, if still granted, init text). ExecGate forgets the module: its live range, its frames, its
/// run-time patch sites, its exports and function entries. Only then may another module be
/// verified at that address, and only then may the same module name be loaded again.
public struct RetireModule: Sendable, Equatable {
    public var guestID: String
    /// The module's name as in the verdict (`module_name`: the signed `struct module` name).
    public var moduleName: String
    /// The `text_base` of the live module (names the instance: guards against retiring another).
    public var textBase: UInt64
    /// The guest's session token (tag 0x8020, `SessionToken`): the session this retire belongs to.
    /// nil: judged by its arrival.
    public var session: UInt64?

    public init(guestID: String, moduleName: String, textBase: UInt64, session: UInt64? = nil) {
        self.guestID = guestID
        self.moduleName = moduleName
        self.textBase = textBase
        self.session = session
    }

    enum Tag { static let guestID: UInt16 = 1, moduleName: UInt16 = 2, textBase: UInt16 = 3 }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "retire-module", known: [1, 2, 3, SessionToken.tag])
        guestID = try r.requiredString(Tag.guestID, "guest_id")
        moduleName = try r.requiredString(Tag.moduleName, "module_name")
        textBase = try r.requiredInteger(Tag.textBase, "text_base")
        session = try SessionToken.decode(r, message: "retire-module")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(Tag.guestID, guestID)
        w.string(Tag.moduleName, moduleName)
        w.u64(Tag.textBase, textBase)
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

public struct RetireModuleReply: Sendable, Equatable {
    public var guestID: String
    public var moduleName: String
    /// Run-time patch sites forgotten with the module.
    public var sitesRemoved: UInt32
    /// Exported symbols no longer resolvable.
    public var exportsRemoved: UInt32

    public init(guestID: String, moduleName: String, sitesRemoved: UInt32, exportsRemoved: UInt32) {
        self.guestID = guestID
        self.moduleName = moduleName
        self.sitesRemoved = sitesRemoved
        self.exportsRemoved = exportsRemoved
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "retire-module-reply", known: [1, 2, 3, 4])
        guestID = try r.requiredString(1, "guest_id")
        moduleName = try r.requiredString(2, "module_name")
        sitesRemoved = try r.requiredInteger(3, "sites_removed")
        exportsRemoved = try r.requiredInteger(4, "exports_removed")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        w.string(2, moduleName)
        w.u32(3, sitesRemoved)
        w.u32(4, exportsRemoved)
    }
}

// MARK: - module-init-freed (0x0007) / module-init-freed-reply (0x8007)

/// The guest freed a module's init memory (`do_init_module()` → `do_free_init()`) and the VMM has
/// revoked EXEC on the init frames. The init range stops being live: nothing there may be patched
/// any more, and the range may be reused.
///
/// `initBase` names the instance, as `text_base` does for retire-module: 6.1 frees init memory
/// from a work queue (`do_init_module()` queues `do_free_init()` after the module went LIVE), so a
/// module may be unloaded and loaded again before the first load's init memory is freed; by name
/// alone that late notice freed the second load's init text while it was still granted (round 14).
public struct ModuleInitFreed: Sendable, Equatable {
    public var guestID: String
    public var moduleName: String
    /// The start of the init text whose EXEC was revoked: the `init_base` its authorize-module claimed.
    public var initBase: UInt64
    /// The guest's session token (tag 0x8020, `SessionToken`); nil: judged by its arrival. A
    /// reply never carries one.
    public var session: UInt64?

    public init(guestID: String, moduleName: String, initBase: UInt64, session: UInt64? = nil) {
        self.guestID = guestID
        self.moduleName = moduleName
        self.initBase = initBase
        self.session = session
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "module-init-freed", known: [1, 2, 3, SessionToken.tag])
        guestID = try r.requiredString(1, "guest_id")
        moduleName = try r.requiredString(2, "module_name")
        initBase = try r.requiredInteger(3, "init_base")
        session = try SessionToken.decode(r, message: "module-init-freed")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        w.string(2, moduleName)
        w.u64(3, initBase)
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

/// The reply acknowledges the guest, module and init base it names: the request's own body (same
/// tags, no session token).
public typealias ModuleInitFreedReply = ModuleInitFreed

// MARK: - remove-guest (0x0008) / remove-guest-reply (0x8008)

/// The guest is gone: the VMM destroyed it (or will never run it again) and has revoked every
/// EXEC grant of it. ExecGate forgets the guest: its session ends (a verdict still being judged
/// in it is denied, as at a reset), its live modules and facts go, its slot under the guest cap
/// and its charge against the facts budget come back, and its build's shared copy goes when it
/// was the last guest on it.
public struct RemoveGuest: Sendable, Equatable {
    public var guestID: String
    /// The guest's session token (tag 0x8020, `SessionToken`): only that session is removed (a
    /// removal of a session a reset already replaced removes nothing). nil: judged by its arrival.
    public var session: UInt64?

    public init(guestID: String, session: UInt64? = nil) {
        self.guestID = guestID
        self.session = session
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "remove-guest", known: [1, SessionToken.tag])
        guestID = try r.requiredString(1, "guest_id")
        session = try SessionToken.decode(r, message: "remove-guest")
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        if let t = session { w.u64(SessionToken.tag, t) }
    }
}

public struct RemoveGuestReply: Sendable, Equatable {
    public var guestID: String
    /// Live modules the guest held, forgotten with it.
    public var modulesRemoved: UInt32
    /// 1 when the kernel build's facts the guest used are no longer held (it was the last guest
    /// on its shared copy, or its copy was its own); 0 when other guests still use them.
    public var buildReleased: UInt8

    public init(guestID: String, modulesRemoved: UInt32, buildReleased: UInt8) {
        self.guestID = guestID
        self.modulesRemoved = modulesRemoved
        self.buildReleased = buildReleased
    }

    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "remove-guest-reply", known: [1, 2, 3])
        guestID = try r.requiredString(1, "guest_id")
        modulesRemoved = try r.requiredInteger(2, "modules_removed")
        buildReleased = try r.requiredInteger(3, "build_released")
        guard buildReleased <= 1 else {
            throw WireDecodeError(.invalidValue, field: "remove-guest-reply.build_released", "\(buildReleased); 0 or 1")
        }
    }

    public func encode(into w: inout TLVWriter) {
        w.string(1, guestID)
        w.u32(2, modulesRemoved)
        w.u8(3, buildReleased)
    }
}
