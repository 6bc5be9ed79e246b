// SPDX-License-Identifier: Apache-2.0
//
// What the admin port does, without the network: verify a pushed bundle fully, then activate it
// atomically; describe the policy in force; hand out audit records.
//
// Activation contract (every refusal leaves the running policy unchanged):
//   1. no admin certificate configured          → refused (push disabled)
//   2. bundle framing / admin signature / parse → refused with the exact reason (file:line:col)
//   3. version not strictly greater              → refused by Verifier.replacePolicy (no rollback)
//   4. otherwise the verifier's policy is swapped in one locked assignment; requests already
//      judging keep the snapshot they took, new requests see the new policy.
// Pushes are serialised so that "previous" in the reply and in the audit record is exact.

import ExecGatePolicy
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import _ExecGateInternals

public struct AdminError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case io = "admin.io"
        case pushDisabled = "admin.push-disabled"
        case refused = "admin.refused"
        case rollback = "admin.rollback"
    }
    public let code: Code
    public let reason: String
    public init(_ code: Code, _ reason: String) { self.code = code; self.reason = reason }
    public var description: String { "\(code.rawValue): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}

public final class PolicyAdministrator: @unchecked Sendable {
    // @unchecked: `pushLock` serialises pushes; `activatedBy` is only touched under it.
    public let verifier: Verifier
    public let adminCertificate: Certificate?
    public let builtinAnchors: [Certificate]
    public let audit: AuditLog?
    private let pushLock = NIOLock()
    private var activatedBy = "boot"

    public init(verifier: Verifier, adminCertificate: Certificate?, builtinAnchors: [Certificate], audit: AuditLog?) {
        self.verifier = verifier
        self.adminCertificate = adminCertificate
        self.builtinAnchors = builtinAnchors
        self.audit = audit
    }

    /// Verify and activate a bundle. See the activation contract above.
    public func push(bundle: [UInt8]) -> Result<PolicyPushReply, AdminError> {
        pushLock.withLock {
            let current = verifier.policy
            // The refused push's record names what was refused, not only why: a replay of an
            // old bundle and a different bundle of the same version (two policies signed under
            // one version: the admin key's misuse) are then told apart in the trail.
            let what = "bundle sha256:\(Hex.encode(PolicySummary.sha256(bundle))), \(bundle.count) bytes"
            guard let admin = adminCertificate else {
                return refuse(AdminError(.pushDisabled, "no admin certificate configured (serve --admin-cert): policy push is disabled"), current, what)
            }
            let policy: Policy
            do {
                policy = try PolicyBundle.open(bundle, admin: admin, file: "pushed-bundle", builtinAnchors: builtinAnchors)
            } catch {
                return refuse(AdminError(.refused, "\(error)"), current, what)
            }
            do {
                try verifier.replacePolicy(policy)
            } catch {
                return refuse(AdminError(.rollback, "\(error)"), current, "\(what), policy \(policy.id) v\(policy.version)")
            }
            activatedBy = "push"
            audit?.recordPolicyEvent("policy-activated", policy: policy, previous: current, detail: "pushed on the admin port")
            return .success(PolicyPushReply(policyID: policy.id, policyVersion: policy.version,
                                            previousID: current.id, previousVersion: current.version))
        }
    }

    private func refuse(_ e: AdminError, _ current: Policy, _ what: String) -> Result<PolicyPushReply, AdminError> {
        audit?.recordPolicyEvent("policy-push-refused", policy: current, previous: nil, detail: "\(e.description) [\(what)]")
        return .failure(e)
    }

    /// Record the boot policy (called once at start).
    public func recordBoot() {
        audit?.recordPolicyEvent("policy-activated", policy: verifier.policy, previous: nil, detail: "boot")
    }

    public func show() -> PolicyShowReply {
        let p = verifier.policy
        var r = PolicyShowReply()
        r.policyID = p.id
        r.policyVersion = p.version
        r.mode = p.mode.rawValue
        r.source = p.source.map { String(decoding: $0, as: UTF8.self) } ?? ""
        r.sourceSHA256 = p.source.map(PolicySummary.sha256) ?? []
        r.anchors = p.trust.anchors.map { "\($0.subject) sha256:\($0.fingerprint.hex)" }
        let c = audit?.counters
        r.auditAccepted = c?.accepted ?? 0
        r.auditDropped = c?.dropped ?? 0
        r.auditWriteErrors = c?.writeErrors ?? 0
        r.auditQueued = UInt64(c?.queued ?? 0)
        r.auditSinkError = c?.lastWriteError ?? ""
        r.refusedPushes = c?.refusedPushes ?? 0
        r.auditOverflow = p.auditOverflow.rawValue
        r.activatedBy = pushLock.withLock { activatedBy }
        r.minimumDigest = p.minimumDigest.name
        r.endState = p.endState.rawValue
        r.rules = Self.shownRules(PolicySummary.rules(p), hasSource: p.source != nil)
        return r
    }

    /// Bytes of rule lines policy-show-reply carries at most. With the source (≤ 1 MiB) and the
    /// anchors the reply stays well inside the admin port's 2 MiB of unwritten replies: a valid
    /// policy of 35,000 `for guest` rules made a 2.27 MB reply the port refused to hold, and the
    /// operator could not see the policy in force (a policy/admin review, 2026-12-05).
    static let shownRuleBytes = 512 << 10
    /// Rule lines at most, the last saying how many more there are: the reply's decoder takes
    /// 4,096 copies of tag 13 (a policy of more rules made a reply no client read).
    static let shownRuleLines = 4096

    /// `rules` up to `shownRuleBytes` and `shownRuleLines` − 1 lines, then one line saying how
    /// many more the source holds.
    static func shownRules(_ rules: [String], hasSource: Bool = true) -> [String] {
        var out: [String] = [], used = 0
        for (i, r) in rules.enumerated() {
            guard used + r.utf8.count <= shownRuleBytes, out.count < shownRuleLines - 1 || rules.count <= shownRuleLines else {
                out.append("… and \(rules.count - i) more rule(s), not listed here" + (hasSource ? ": the source (tag 4) holds them all"
                                                                                         : " (the built-in policy has no source: its deny lists are serve's --deny-* options)"))
                break
            }
            out.append(r)
            used += r.utf8.count
        }
        return out
    }

    public func auditRead(_ q: AuditRead) -> AuditReadReply { auditRead(q, maximumBytes: AuditLimits.maximumBytesPerRead) }

    /// A page of at most `maximumBytes` of records (at most `AuditLimits.maximumBytesPerRead`;
    /// at least one record, whatever its size): the admin port passes what its page pool grants.
    public func auditRead(_ q: AuditRead, maximumBytes: Int) -> AuditReadReply {
        // No log: nothing was ever issued, so the next record would be the first (`after_seq` is
        // any u64 from the wire; `after_seq + 1` trapped at 2⁶⁴−1).
        guard let audit else { return AuditReadReply(records: [], nextSeq: 1, dropped: 0, oldestSeq: 0) }
        // One reply is at most 1 MiB of records, whatever the request asks: what a peer on the
        // admin port (no key needed) can make the service hold per request.
        let page = audit.read(after: q.afterSeq, limit: Int(q.maxRecords),
                              maximumBytes: min(Int(q.maxBytes), AuditLimits.maximumBytesPerRead, maximumBytes))
        return AuditReadReply(records: page.records, nextSeq: page.nextSeq, dropped: page.dropped, oldestSeq: page.oldestSeq, more: page.more,
                              firstSeq: page.firstSeq)
    }

    /// One admin frame in, one reply frame out (same request id). Never throws: bad input is an
    /// `error` frame, as on the VMM port.
    public func respond(to frame: Frame) -> Frame { respond(to: frame, auditBytes: AuditLimits.maximumBytesPerRead) }

    /// `respond(to:)`, an audit-read's page at most `auditBytes` of records.
    public func respond(to frame: Frame, auditBytes: Int) -> Frame {
        func errorFrame(_ code: WireErrorCode, _ message: String) -> Frame {
            Message.error(ErrorReply(code: code, message: message)).frame(requestID: frame.requestID)
        }
        func reply(_ type: MessageType, _ body: ByteBuffer) -> Frame { Frame(type: type, requestID: frame.requestID, body: body) }
        guard frame.version == WireLimits.protocolVersion else {
            return errorFrame(.unsupportedVersion, "frame version \(frame.version); the admin port speaks version \(WireLimits.protocolVersion)")
        }
        do {
            switch frame.type {
            case AdminMessageType.policyPush:
                switch push(bundle: try PolicyPush(decoding: frame.body).bundle) {
                case .success(let r): return reply(AdminMessageType.policyPushReply, r.encode())
                case .failure(let e): return errorFrame(.badRequest, e.description)
                }
            case AdminMessageType.policyShow:
                _ = try TLVReader(frame.body, message: "policy-show", known: [])
                return reply(AdminMessageType.policyShowReply, show().encode())
            case AdminMessageType.auditRead:
                return reply(AdminMessageType.auditReadReply, auditRead(try AuditRead(decoding: frame.body), maximumBytes: auditBytes).encode())
            default:
                if !frame.type.isRequest { return errorFrame(.badRequest, "\(frame.type) is a reply type, not a request") }
                // VMM requests are not served here: verdicts come only from the VMM port.
                return errorFrame(.unknownMessageType, "unknown message type 0x\(String(frame.type.rawValue, radix: 16)) on the admin port")
            }
        } catch {
            return errorFrame(.malformedBody, "\(AdminMessageType.name(frame.type)): \(error)")
        }
    }
}

public enum PolicySummary {
    public static func sha256(_ bytes: [UInt8]) -> [UInt8] { Digest.compute(.sha256, over: bytes).bytes }

    /// Human lines for the kind rules, in file order ("modules hash-pinned for class db"), then
    /// what the policy refuses or admits by name or digest, each list sorted, in the policy
    /// language's words (`deny module-name vsock`, `deny module sha256:…`, `deny certificate
    /// sha256:…`, `pin sha256:…`, `kernel sha256:… symbols sha256:…`). The built-in policy has no
    /// source: its deny lists (`serve --deny-*`) are seen only here, so two sidecars started with
    /// different lists show different rules under the same id and version.
    public static func rules(_ p: Policy) -> [String] {
        var lines: [String]
        if p.kindRules.isEmpty {
            lines = ["modules \(describe(p.modules)) for all guests", "text-patches \(describe(p.textPatches)) for all guests"]
        } else {
            lines = p.kindRules.map { "\($0.kind.rawValue) \($0.setting.rawValue) for \($0.selector)" }
        }
        lines += p.deniedModuleNames.sorted().map { "deny module-name \($0)" }
        lines += p.denyList.moduleContentHashes.map(\.hex).sorted().map { "deny module sha256:\($0)" }
        lines += p.denyList.certificateTBSHashes.map(\.hex).sorted().map { "deny certificate sha256:\($0)" }
        lines += p.pinnedModules.map(\.hex).sorted().map { "pin sha256:\($0)" }
        lines += p.trustedKernels.map { "kernel sha256:\($0.kernel.hex) symbols sha256:\($0.symbols.hex)" }.sorted()
        return lines
    }

    static func describe(_ r: Policy.KindRule) -> String {
        switch r {
        case .deny: return "deny"
        case .allow: return "allow"
        case .hashPinned(let s): return "hash-pinned (\(s.count) pin(s))"
        }
    }

    public static func json(_ r: PolicyShowReply) -> JSON {
        .object([
            ("policy_id", .string(r.policyID)), ("policy_version", .uint(r.policyVersion)), ("mode", .string(r.mode)),
            ("activated_by", .string(r.activatedBy)), ("minimum_digest", .string(r.minimumDigest)), ("end_state", .string(r.endState)),
            ("audit_overflow", .string(r.auditOverflow)), ("audit_accepted", .uint(r.auditAccepted)), ("audit_dropped", .uint(r.auditDropped)),
            ("audit_write_errors", .uint(r.auditWriteErrors)), ("audit_queued", .uint(r.auditQueued)),
            ("audit_sink_error", r.auditSinkError.isEmpty ? .null : .string(r.auditSinkError)),
            ("refused_pushes", .uint(r.refusedPushes)),
            ("anchors", .array(r.anchors.map { .string($0) })), ("rules", .array(r.rules.map { .string($0) })),
            ("source_sha256", .string(Hex.encode(r.sourceSHA256))), ("source", .string(r.source)),
        ])
    }
}
