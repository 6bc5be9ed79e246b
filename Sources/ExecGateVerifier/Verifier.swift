// SPDX-License-Identifier: Apache-2.0
//
// The verifier core: request + policy + per-guest state → verdict. No I/O: the service feeds it
// decoded requests and sends back what it returns; `execgate verify` calls it directly offline.
// Both paths share this code, so an offline check and a served check cannot disagree.
//
// Order of checks for authorize-module (cheap and decisive first, crypto before parsing the ELF
// so that unsigned garbage never reaches the ELF parser):
//   1. policy kind rule (are modules allowed at all / hash pinning)
//   2. signature: trailer, PKCS#7, signer ∈ policy anchors, digest strength, deny lists
//   3. module name deny list (name from the *signed* .modinfo, not the guest's word)
//   4. ELF structure of the signed content
//   5. claim structure: each claimed section exists in the ELF, is executable, sizes match,
//      claimed ranges do not overlap or wrap
//   6. end-state: every claimed executable byte explained (when guest facts and bytes are there)
// The verdict lists exactly the checks that ran: it never claims more than was checked.

import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore

public final class Verifier: @unchecked Sendable {
    // @unchecked: `policy` is guarded by `lock`; everything else is immutable or itself thread-safe.
    private let lock = NIOLock()
    private var _policy: Policy
    public let guests = GuestRegistry()
    public let serverName: String
    /// The end-state judge (the explanation engine).
    public let endState: EndStateJudge
    /// Backing store of `auditSink` (see the audit hook below).
    let auditSinkBox = NIOLockedValueBox<(any VerdictAuditSink)?>(nil)

    public init(policy: Policy, serverName: String = "execgate", endState: EndStateJudge = ExplainerJudge()) {
        self._policy = policy
        self.serverName = serverName
        self.endState = endState
    }

    /// The policy in force. A request takes one snapshot at its start and is judged entirely
    /// under it, so a swap never applies half a policy to a request in flight.
    public var policy: Policy { lock.withLock { _policy } }

    /// Replace the policy atomically. Refuses a version that is not strictly greater (no rollback).
    public func replacePolicy(_ new: Policy) throws {
        try lock.withLock {
            guard new.version > _policy.version else {
                throw PolicyRollbackError(current: _policy.version, offered: new.version)
            }
            _policy = new
        }
    }

    // MARK: - Requests

    /// Answer one decoded request.
    public func respond(to message: Message, requestDigest: [UInt8]) -> Message {
        switch message {
        case .hello(let h):
            guard h.minimumVersion <= WireLimits.protocolVersion && WireLimits.protocolVersion <= h.maximumVersion else {
                return .error(ErrorReply(code: .unsupportedVersion,
                                         message: "client speaks \(h.minimumVersion)...\(h.maximumVersion); server speaks \(WireLimits.protocolVersion)"))
            }
            return .helloReply(HelloReply(version: WireLimits.protocolVersion, serverName: serverName,
                                          maximumBodySize: UInt32(WireLimits.defaultMaximumBodySize)))
        case .registerGuest(let r):
            guests.register(r)
            return .registerGuestReply(RegisterGuestReply(guestID: r.guestID, symbolCount: UInt32(clamping: r.symbols.count)))
        case .authorizeModule(let a):
            if !a.guestID.isEmpty && guests.session(a.guestID) == nil {
                return .error(ErrorReply(code: .unknownGuest, message: "guest '\(a.guestID)' is not registered"))
            }
            return .verdict(authorize(a, requestDigest: requestDigest))
        case .authorizePatch(let p):
            guard let session = guests.session(p.guestID) else {
                return .error(ErrorReply(code: .unknownGuest, message: "guest '\(p.guestID)' is not registered"))
            }
            return .verdict(authorizePatch(p, session: session, requestDigest: requestDigest))
        case .status:
            return .statusReply(status(uptimeMilliseconds: 0, requestsServed: 0))
        case .helloReply, .registerGuestReply, .verdict, .statusReply, .error:
            return .error(ErrorReply(code: .badRequest, message: "\(message.type) is a reply, not a request"))
        }
    }

    public func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply {
        let p = policy
        return StatusReply(serverName: serverName, uptimeMilliseconds: uptimeMilliseconds, requestsServed: requestsServed,
                           guests: UInt32(clamping: guests.count), policyID: p.id, policyVersion: p.version, state: "serving")
    }

    /// Judge an authorize-module request under the current policy.
    public func authorize(_ request: AuthorizeModule, requestDigest: [UInt8]) -> ExecGateWire.Verdict {
        // One snapshot for the whole request, with the policy's per-guest/class rules applied.
        let policy = self.policy.resolved(forGuest: request.guestID)
        let session = request.guestID.isEmpty ? nil : guests.session(request.guestID)
        var judgement = request.module.withUnsafeReadableBytes { module in
            judge(module: module, request: request, policy: policy, session: session)
        }
        judgement.verdict.requestDigest = requestDigest
        Self.applyAuditMode(&judgement.verdict, policy)
        recordAudit(&judgement.verdict, guestID: request.guestID, policy: policy)
        if judgement.verdict.decision == .allow && !judgement.verdict.auditOnly, let s = session {
            s.recordAllowed(module: judgement.verdict.moduleName, exports: judgement.exports, sites: judgement.sites)
        }
        return judgement.verdict
    }

    /// Audit mode: what enforce would deny is allowed, flagged `auditOnly`, and keeps its reason.
    static func applyAuditMode(_ v: inout ExecGateWire.Verdict, _ policy: Policy) {
        guard v.decision == .deny && policy.mode == .audit else { return }
        v.decision = .allow
        v.auditOnly = true
        v.message = "AUDIT (enforce would deny): " + v.message
    }

    struct Judgement {
        var verdict: ExecGateWire.Verdict
        var exports: ModuleExports? = nil
        var sites: RuntimeSiteTable? = nil
    }

    /// Judge a run-time text patch: allowed only at a known site of a module this verifier allowed
    /// for the guest, with one of the site's legal encodings (see RuntimePatching.swift).
    public func authorizePatch(_ p: AuthorizePatch, session: GuestSession, requestDigest: [UInt8]) -> ExecGateWire.Verdict {
        let policy = self.policy.resolved(forGuest: p.guestID, kind: .textPatches)  // per-guest/class rules (ExecGatePolicy)
        var checks = ["policy-kind"]
        func verdict(_ d: ExecGateWire.Verdict.Decision, _ r: VerdictReason, _ m: String, module: String = "") -> ExecGateWire.Verdict {
            var v = ExecGateWire.Verdict(decision: d, reason: r, message: m, checks: checks, policyID: policy.id, policyVersion: policy.version,
                                         requestDigest: requestDigest, moduleName: module)
            Self.applyAuditMode(&v, policy)
            recordAudit(&v, guestID: p.guestID, policy: policy)
            return v
        }
        if policy.textPatches == .deny { return verdict(.deny, .kindDenied, "policy \(policy.id) v\(policy.version) allows no run-time text patches") }
        checks.append("patch-site")
        let at = "0x" + String(p.address, radix: 16)
        for table in session.runtimeSites where Self.sortedContains(table.addresses, p.address) {
            switch table.check(address: p.address, bytes: p.bytes) {
            case .allowed(let kind, _):
                return verdict(.allow, .allowed, "\(kind) at \(at) in \(table.module): legal encoding", module: table.module)
            case .denied(let why):
                return verdict(.deny, .patchNotAllowed, why, module: table.module)
            }
        }
        return verdict(.deny, .patchNotAllowed, "\(at) is not a run-time patch site of any module verified for guest '\(session.registration.guestID)'")
    }

    private func judge(module: UnsafeRawBufferPointer, request: AuthorizeModule, policy: Policy, session: GuestSession?) -> Judgement {
        var checks: [String] = []
        var moduleName = request.moduleName
        var moduleDigest: [UInt8] = []
        func deny(_ reason: VerdictReason, _ message: String) -> Judgement {
            Judgement(verdict: ExecGateWire.Verdict(decision: .deny, reason: reason, message: message, checks: checks, policyID: policy.id,
                                       policyVersion: policy.version, requestDigest: [], moduleName: moduleName, moduleDigest: moduleDigest))
        }

        // 1. Kind rule.
        checks.append("policy-kind")
        if policy.modules == .deny { return deny(.kindDenied, "policy \(policy.id) v\(policy.version) allows no modules") }

        // 2. Signature and deny lists (content hash, signer certificate).
        checks.append("signature")
        checks.append("deny-list")
        let signature: VerifiedSignature
        switch ModuleSignatureVerifier.verify(module: module, trust: policy.trust, denyList: policy.denyList, minimumDigest: policy.minimumDigest) {
        case .success(let s):
            signature = s
        case .failure(let f):
            return deny(Self.reason(for: f), f.message + " [\(f.detailedCode)]")
        }
        moduleDigest = signature.contentHash.bytes
        if case .hashPinned(let pins) = policy.modules, !pins.contains(signature.contentHash) {
            return deny(.kindDenied, "module content \(signature.contentHash) is not pinned by policy \(policy.id)")
        }

        // 3–4. The signed ELF (never the unsigned tail) and its name.
        checks.append("elf-structure")
        let content = UnsafeRawBufferPointer(rebasing: module[signature.trailer.contentRange])
        let elf: ELFFile
        do {
            elf = try ELFFile(bytes: content)
        } catch {
            return deny(.malformedELF, "signed content is not a valid x86-64 relocatable ELF: \(error)")
        }
        let signedName = ModuleInfo.name(in: elf)
        if let n = signedName {
            if !request.moduleName.isEmpty && Policy.canonicalModuleName(request.moduleName) != Policy.canonicalModuleName(n) {
                return deny(.badSignature, "the request names module '\(request.moduleName)' but the signed .modinfo says '\(n)'")
            }
            moduleName = n
        }
        checks.append("module-name")
        if policy.deniedModuleNames.contains(Policy.canonicalModuleName(moduleName)) {
            return deny(.moduleNameDenied, "module '\(moduleName)' is deny-listed by name")
        }

        // 5. Claim structure.
        let claimed = request.sections.filter { $0.bytes != nil }
        if !request.sections.isEmpty {
            checks.append("claim-structure")
            if let failure = ClaimStructure.check(request.sections, against: elf) {
                return deny(failure.reason, failure.message)
            }
        }

        // 6. End state: the whole executable region, byte for byte.
        var exports: ModuleExports? = nil
        var sites: RuntimeSiteTable? = nil
        let canJudgeEndState = request.text != nil && session != nil
        if canJudgeEndState, let session {
            checks.append("end-state")
            switch endState.judge(elf: elf, moduleName: moduleName, request: request, session: session) {
            case .explained(let e):
                exports = e.exports
                sites = e.runtimeSites
            case .unexplained(let why):
                return deny(.claimBytesUnexplained, why)
            case .invalidClaim(let why):
                return deny(.claimSizeMismatch, why)
            }
        } else if policy.endState == .required {
            let missing = request.text == nil ? "the claim carries no executable region (text_base + text)" : "no registered guest facts"
            return deny(.endStateUnavailable, "policy \(policy.id) requires end-state verification, but \(missing)")
        }

        let what = canJudgeEndState ? "all \(request.text?.readableBytes ?? 0) executable bytes explained"
            : claimed.isEmpty ? "no executable bytes claimed: signature and ELF only"
            : "\(claimed.count) executable section(s) match the ELF in name and size (bytes not judged: no executable region or no guest facts)"
        let message = "signed by '\(signature.signer.subject)' (\(signature.digestAlgorithm)); \(what)"
        return Judgement(verdict: ExecGateWire.Verdict(decision: .allow, reason: .allowed, message: message, checks: checks, policyID: policy.id,
                                          policyVersion: policy.version, requestDigest: [], moduleName: moduleName,
                                          moduleDigest: moduleDigest), exports: exports, sites: sites)
    }

    static func sortedContains(_ a: [UInt64], _ x: UInt64) -> Bool {
        var lo = 0, hi = a.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if a[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo < a.count && a[lo] == x
    }

    /// Maps the signature layer's failures onto wire reasons.
    static func reason(for f: SignatureFailure) -> VerdictReason {
        switch f {
        case .unsigned: return .unsigned
        case .malformedTrailer: return .malformedTrailer
        case .malformedPKCS7, .contentNotDetached, .signerCount, .embeddedCRLs, .unsignedAttributesPresent: return .malformedPKCS7
        case .embeddedCertificates: return .embeddedCertificates
        case .signedAttributesPresent: return .signedAttributes
        case .unsupportedDigest, .signatureAlgorithmMismatch: return .unsupportedCryptography
        case .digestTooWeak: return .digestTooWeak
        case .unknownSigner: return .unknownSigner
        case .signerCertificateDenied: return .certificateDenied
        case .moduleHashDenied: return .moduleHashDenied
        case .digestMismatch: return .digestMismatch
        case .badSignature: return .badSignature
        }
    }
}

// MARK: - Audit hook (owned by ExecGateAdmin)

/// Receives every verdict after it is final, with the policy snapshot that decided it.
public protocol VerdictAuditSink: Sendable {
    /// - Returns: false when the record could not be accepted and the policy requires blocking
    ///   (fail closed); the verifier then denies. May block the calling worker thread (bounded).
    func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool
}

extension Verifier {
    /// Where verdicts are recorded (nil: nowhere). Set before serving; read once per request.
    public var auditSink: (any VerdictAuditSink)? {
        get { auditSinkBox.withLockedValue { $0 } }
        set { auditSinkBox.withLockedValue { $0 = newValue } }
    }

    /// Hands a final verdict to the sink. Under `audit-overflow block` a record the sink cannot
    /// accept turns the verdict into a deny: no code runs unrecorded (fail closed).
    func recordAudit(_ v: inout ExecGateWire.Verdict, guestID: String, policy: Policy) {
        guard let sink = auditSink, !sink.record(v, guestID: guestID, policy: policy) else { return }
        v.decision = .deny
        v.auditOnly = false
        v.reason = .kindDenied
        v.message = "the audit record could not be written and policy \(policy.id) v\(policy.version) says audit-overflow block: denied (fail closed)"
    }
}

public struct PolicyRollbackError: Error, CustomStringConvertible {
    public var current: UInt64
    public var offered: UInt64
    public var description: String { "policy version \(offered) is not newer than the running version \(current): rollback refused" }
}

// MARK: - End-state hook

/// What judges the end state. The product uses `ExplainerJudge`; the protocol keeps the verifier's
/// wiring testable on its own.
public protocol EndStateJudge: Sendable {
    func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult
}

public enum EndStateResult {
    /// Every claimed byte is explained; `exports` are the module's exported symbols at their
    /// run-time addresses (added to the guest's symbol set once the module is allowed).
    case explained(ExplainedModule)
    /// A byte is not explained: one sentence naming section, offset, address, expected, found, why.
    case unexplained(String)
    /// The claim cannot be laid over the module (missing addresses, sizes).
    case invalidClaim(String)
}

public struct ExplainedModule {
    public var exports: ModuleExports?
    public var statistics: ExplainStats
    /// The module's run-time patch sites, for later authorize-patch requests.
    public var runtimeSites: RuntimeSiteTable?
    public init(exports: ModuleExports?, statistics: ExplainStats, runtimeSites: RuntimeSiteTable? = nil) {
        self.exports = exports
        self.statistics = statistics
        self.runtimeSites = runtimeSites
    }
}
