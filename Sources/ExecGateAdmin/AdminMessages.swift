// SPDX-License-Identifier: Apache-2.0
//
// The admin protocol (docs/protocol.md, "Admin protocol"): the same frames and TLV bodies as the
// VMM protocol, with message types in the reserved range 0x0010–0x001F, served only on the admin
// port. The VMM port answers these types `unknown-message-type`; the admin port answers every
// VMM type the same way, so neither port can be used for the other's job.
//
//     0x0010 policy-push  → 0x8010 policy-push-reply     (or error/bad-request with the refusal)
//     0x0011 policy-show  → 0x8011 policy-show-reply
//     0x0012 audit-read   → 0x8012 audit-read-reply

import ExecGateWire
import NIOCore

public enum AdminMessageType {
    public static let policyPush = MessageType(rawValue: 0x0010)
    public static let policyShow = MessageType(rawValue: 0x0011)
    public static let auditRead = MessageType(rawValue: 0x0012)
    public static let policyPushReply = MessageType(rawValue: 0x8010)
    public static let policyShowReply = MessageType(rawValue: 0x8011)
    public static let auditReadReply = MessageType(rawValue: 0x8012)

    public static func name(_ t: MessageType) -> String {
        switch t.rawValue {
        case 0x0010: return "policy-push"
        case 0x0011: return "policy-show"
        case 0x0012: return "audit-read"
        case 0x8010: return "policy-push-reply"
        case 0x8011: return "policy-show-reply"
        case 0x8012: return "audit-read-reply"
        default: return t.description
        }
    }
}

/// 0x0010: tag 1 `bundle` (bytes, required): a signed policy bundle (docs/policy.md).
public struct PolicyPush: Sendable, Equatable {
    public var bundle: [UInt8]
    public init(bundle: [UInt8]) { self.bundle = bundle }
    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "policy-push", known: [1])
        let b = try r.required(1, "bundle")
        bundle = Array(b.readableBytesView)
    }
    public func encode() -> ByteBuffer { var w = TLVWriter(); w.bytes(1, bundle); return w.buffer }
}

/// 0x8010: the policy now in force and the one it replaced.
public struct PolicyPushReply: Sendable, Equatable {
    public var policyID: String
    public var policyVersion: UInt64
    public var previousID: String
    public var previousVersion: UInt64
    public init(policyID: String, policyVersion: UInt64, previousID: String, previousVersion: UInt64) {
        self.policyID = policyID; self.policyVersion = policyVersion; self.previousID = previousID; self.previousVersion = previousVersion
    }
    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "policy-push-reply", known: [1, 2, 3, 4])
        policyID = try r.requiredString(1, "policy_id")
        policyVersion = try r.requiredInteger(2, "policy_version")
        previousID = try r.string(3, "previous_id") ?? ""
        previousVersion = try r.integer(4, "previous_version") ?? 0
    }
    public func encode() -> ByteBuffer {
        var w = TLVWriter()
        w.string(1, policyID); w.u64(2, policyVersion); w.string(3, previousID); w.u64(4, previousVersion)
        return w.buffer
    }
}

/// 0x8011: what is in force. Tags: 1 policy_id, 2 policy_version, 3 mode, 4 source (bytes: the exact
/// policy text; empty for the built-in policy), 5 source_sha256, 6 anchor (repeated: "subject
/// sha256:fingerprint"), 7 audit_accepted, 8 audit_dropped, 9 audit_overflow, 10 activated_by
/// ("boot" or "push"), 11 minimum_digest, 12 end_state, 13 rule (repeated, e.g. "modules deny
/// for class db"), 14 audit_write_errors (failed writes to the audit sink, each retried), 15
/// audit_queued (records accepted, not yet written whole), 16 audit_sink_error (why the sink
/// refuses the last write, while it does), 17 refused_pushes (policy pushes refused since the
/// service started, recorded or not); 14–17 are sent only when not zero or empty.
public struct PolicyShowReply: Sendable, Equatable {
    public var policyID = ""
    public var policyVersion: UInt64 = 0
    public var mode = ""
    public var source = ""
    public var sourceSHA256: [UInt8] = []
    public var anchors: [String] = []
    public var auditAccepted: UInt64 = 0
    public var auditDropped: UInt64 = 0
    public var auditOverflow = ""
    public var activatedBy = ""
    public var minimumDigest = ""
    public var endState = ""
    public var rules: [String] = []
    public var auditWriteErrors: UInt64 = 0
    public var auditQueued: UInt64 = 0
    public var auditSinkError = ""
    public var refusedPushes: UInt64 = 0

    public init() {}
    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "policy-show-reply", known: Set(1...17), repeated: [6: 4096, 13: 4096])
        policyID = try r.requiredString(1, "policy_id")
        policyVersion = try r.requiredInteger(2, "policy_version")
        mode = try r.string(3, "mode") ?? ""
        source = try r.optional(4, "source").map { String(decoding: $0.readableBytesView, as: UTF8.self) } ?? ""
        sourceSHA256 = try r.optional(5, "source_sha256").map { Array($0.readableBytesView) } ?? []
        anchors = try r.strings(6, "anchor")
        auditAccepted = try r.integer(7, "audit_accepted") ?? 0
        auditDropped = try r.integer(8, "audit_dropped") ?? 0
        auditOverflow = try r.string(9, "audit_overflow") ?? ""
        activatedBy = try r.string(10, "activated_by") ?? ""
        minimumDigest = try r.string(11, "minimum_digest") ?? ""
        endState = try r.string(12, "end_state") ?? ""
        rules = try r.strings(13, "rule")
        auditWriteErrors = try r.integer(14, "audit_write_errors") ?? 0
        auditQueued = try r.integer(15, "audit_queued") ?? 0
        auditSinkError = try r.string(16, "audit_sink_error") ?? ""
        refusedPushes = try r.integer(17, "refused_pushes") ?? 0
    }
    public func encode() -> ByteBuffer {
        var w = TLVWriter()
        w.string(1, policyID); w.u64(2, policyVersion); w.string(3, mode)
        // Bytes, not string: a policy may be up to 1 MiB, a string field at most 64 KiB.
        w.bytes(4, Array(source.utf8))
        w.bytes(5, sourceSHA256)
        for a in anchors { w.string(6, a) }
        w.u64(7, auditAccepted); w.u64(8, auditDropped); w.string(9, auditOverflow); w.string(10, activatedBy)
        w.string(11, minimumDigest); w.string(12, endState)
        for r in rules { w.string(13, r) }
        if auditWriteErrors != 0 { w.u64(14, auditWriteErrors) }
        if auditQueued != 0 { w.u64(15, auditQueued) }
        if !auditSinkError.isEmpty { w.string(16, auditSinkError) }
        if refusedPushes != 0 { w.u64(17, refusedPushes) }
        return w.buffer
    }
}

/// 0x0012: tag 1 `after_seq` (u64, default 0), tag 2 `max_records` (u32, default 1000, at most
/// 10,000), tag 3 `max_bytes` (u32, default and at most 1 MiB of record text per reply).
public struct AuditRead: Sendable, Equatable {
    public var afterSeq: UInt64
    public var maxRecords: UInt32
    public var maxBytes: UInt32
    public init(afterSeq: UInt64 = 0, maxRecords: UInt32 = 1000, maxBytes: UInt32 = UInt32(AuditLimits.maximumBytesPerRead)) {
        self.afterSeq = afterSeq; self.maxRecords = maxRecords; self.maxBytes = maxBytes
    }
    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "audit-read", known: [1, 2, 3])
        afterSeq = try r.integer(1, "after_seq") ?? 0
        maxRecords = try r.integer(2, "max_records") ?? 1000
        maxBytes = try r.integer(3, "max_bytes") ?? UInt32(AuditLimits.maximumBytesPerRead)
    }
    public func encode() -> ByteBuffer {
        var w = TLVWriter(); w.u64(1, afterSeq); w.u32(2, maxRecords)
        if maxBytes != UInt32(AuditLimits.maximumBytesPerRead) { w.u32(3, maxBytes) }
        return w.buffer
    }
}

/// 0x8012: tag 1 `record` (string, repeated: one JSON line each, oldest first), 2 `next_seq`
/// (u64: pass `next_seq - 1` as `after_seq` to continue), 3 `dropped` (u64, records dropped under
/// `audit-overflow drop` since start), 4 `oldest_seq` (u64, the oldest record still retained),
/// 5 `more` (u8, 1 when retained records after this page remain: ask again at once).
public struct AuditReadReply: Sendable, Equatable {
    public var records: [String]
    public var nextSeq: UInt64
    public var dropped: UInt64
    public var oldestSeq: UInt64
    public var more: Bool
    /// The first number the log issued (tag 6; 1 from a server that does not send it): numbers
    /// below `oldestSeq` and at or above it were evicted, numbers below it were never this log's.
    public var firstSeq: UInt64
    public init(records: [String], nextSeq: UInt64, dropped: UInt64, oldestSeq: UInt64, more: Bool = false, firstSeq: UInt64 = 1) {
        self.records = records; self.nextSeq = nextSeq; self.dropped = dropped; self.oldestSeq = oldestSeq; self.more = more
        self.firstSeq = firstSeq
    }
    public init(decoding body: ByteBuffer) throws {
        let r = try TLVReader(body, message: "audit-read-reply", known: [1, 2, 3, 4, 5, 6], repeated: [1: AuditLimits.maximumRecordsPerRead])
        records = try r.strings(1, "record")
        nextSeq = try r.requiredInteger(2, "next_seq")
        dropped = try r.integer(3, "dropped") ?? 0
        oldestSeq = try r.integer(4, "oldest_seq") ?? 0
        more = (try r.integer(5, "more", as: UInt8.self) ?? 0) != 0
        firstSeq = try r.integer(6, "first_seq") ?? 1
    }
    public func encode() -> ByteBuffer {
        var w = TLVWriter(capacity: records.reduce(64) { $0 + $1.utf8.count + 6 })
        for r in records { w.string(1, r) }
        w.u64(2, nextSeq); w.u64(3, dropped); w.u64(4, oldestSeq)
        if more { w.u8(5, 1) }
        w.u64(6, firstSeq)
        return w.buffer
    }
}
