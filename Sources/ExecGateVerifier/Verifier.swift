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
//   3. module name (the signed struct module's, equal to .modinfo name=; not the guest's word):
//      deny list, vermagic
//   4. ELF structure of the signed content
//   5. claim structure: each claimed section exists in the ELF, is executable, sizes match,
//      claimed ranges do not overlap or wrap
//   6. fail closed: a claim carrying no byte is allowed only under the operator's explicit
//      `end-state signature-only` (and the verdict says so); otherwise a registered guest and the
//      whole executable region are required
//   7. frames: one guest-physical frame per claimed page, none twice
//   8. per-section bytes equal the matching slice of the region (the region is what is explained)
//   9. live ranges: no overlap with live verified code of the guest, no live module of that name
//  10. end-state: every byte of the region explained
//  11. key state: the module's run-time sites agree with the live state of their keys; the
//      module is committed to the guest's live set atomically (re-checking 9 and 11)
// The verdict lists exactly the checks that ran: it never claims more than was checked.

import _ExecGateInternals
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
    /// Registered guests; the service VM bounds their facts by its memory (VerifierService.start).
    public let guests: GuestRegistry
    public let serverName: String
    /// The end-state judge (the explanation engine).
    public let endState: EndStateJudge
    /// Backing store of `auditSink` (see the audit hook below).
    let auditSinkBox = NIOLockedValueBox<(any VerdictAuditSink)?>(nil)

    public init(policy: Policy, serverName: String = "execgate", endState: EndStateJudge = ExplainerJudge(),
                guests: GuestRegistry = GuestRegistry()) {
        self._policy = policy
        self.guests = guests
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

    /// Answer one decoded request. `requestDigest` is what the reply echoes (verdict
    /// `request_digest`, register-guest-reply `facts_digest`); nil for an authorize-module: the
    /// verifier computes it while judging, from `body` (the request as received) when given
    /// (`requestDigest(authorizeModuleBody:)`).
    /// `arrival`: the request's stamp from `guests.arrivalStamp()` taken when it arrived (the
    /// service stamps every request on its connection's event loop, in the connection's order);
    /// a request that arrived before its guest's current session was registered is judged in a
    /// stand-in for the session it belongs to, which a reset ended (`GuestRegistry
    /// .session(_:arrivedAt:)`). nil: the session current when it is judged.
    public func respond(to message: Message, requestDigest: [UInt8]?, body: ByteBuffer? = nil, arrival: UInt64? = nil) -> Message {
        switch message {
        case .hello(let h):
            guard h.minimumVersion <= WireLimits.protocolVersion && WireLimits.protocolVersion <= h.maximumVersion else {
                return .error(ErrorReply(code: .unsupportedVersion,
                                         message: "client speaks \(h.minimumVersion)...\(h.maximumVersion); server speaks \(WireLimits.protocolVersion)"))
            }
            return .helloReply(HelloReply(version: WireLimits.protocolVersion, serverName: serverName,
                                          maximumBodySize: UInt32(WireLimits.defaultMaximumBodySize)))
        case .registerGuest(let r):
            // The session the reset replaces: the guest's session, unless its registration
            // arrived after the reset (one a later reset installed, two resets in flight and the
            // later judged first; or another VM's, registered under the id after a removal that
            // arrived after this reset): the registry refuses the reset then. Taken as the current
            // session whatever its arrival, a stale reset of one VM, refused, ended the next VM's
            // live session (a doc-driven review, 2026-12-07: `StaleResetTests`).
            // A reset naming a session (its `session` token) replaces only a session it is of
            // (`GuestRegistry.reset(naming:isOf:arrivedAt:)`).
            let replaced = r.reset ? guests.session(r.guestID).flatMap {
                GuestRegistry.reset(naming: r.session, isOf: $0, arrivedAt: arrival) ? $0 : nil
            } : nil
            let reply = register(r, requestDigest: requestDigest, replacing: replaced, arrivedAt: arrival)
            // A reset the server refuses still says what the VMM did: it revoked every grant of
            // the guest's session and the guest booted again (protocol.md, register-guest
            // `reset`). That session is no longer its guest's: left live, a guest rebooted into a
            // kernel the policy does not pin (untrusted-kernel) kept being judged against the old
            // kernel's facts (a policy/admin review, 2026-12-05). It ends, holding nothing; the
            // guest stays registered until a reset is accepted. The registry finds that session
            // again now, under its lock: an earlier reset installed while this one was judged is
            // of an older boot too and ends; one not installed yet is refused when it is.
            if r.reset, case .error(let e) = reply {
                guests.endForRefusedReset(r.guestID, arrivedAt: arrival, token: r.session, "was reset (register-guest reset=1) and the reset was refused (\(e.code))")
            }
            return reply
        case .authorizeModule(let a):
            // The session it arrived in, or its token names (none: it arrived before the guest
            // was registered).
            if !a.guestID.isEmpty {
                if case .failure(let e) = session(of: a.guestID, arrival: arrival, token: a.session) { return .error(e) }
            }
            return .verdict(authorize(a, requestDigest: requestDigest, body: body, arrival: arrival))
        case .authorizePatch(let p):
            let session: GuestSession
            switch self.session(of: p.guestID, arrival: arrival, token: p.session) {
            case .success(let s): session = s
            case .failure(let e): return .error(e)
            }
            return .verdict(authorizePatch(p, session: session, requestDigest: requestDigest ?? []))
        case .retireModule(let m):
            let session: GuestSession
            switch self.session(of: m.guestID, arrival: arrival, token: m.session) {
            case .success(let s): session = s
            case .failure(let e): return .error(e)
            }
            if let why = Self.unnamable(m.moduleName) { return .error(ErrorReply(code: .unknownModule, message: why)) }
            // A session that is no longer the guest's (a stand-in for the one a reset replaced):
            // its modules are gone, nothing is removed from the new one.
            if let why = session.endedMessage { return .error(ErrorReply(code: .unknownModule, message: why)) }
            switch session.retire(name: m.moduleName, textBase: m.textBase) {
            case .retired(let sites, let exports):
                return .retireModuleReply(RetireModuleReply(guestID: m.guestID, moduleName: m.moduleName,
                                                            sitesRemoved: UInt32(clamping: sites), exportsRemoved: UInt32(clamping: exports)))
            case .failed(let code, let why):
                return .error(ErrorReply(code: code, message: why))
            }
        case .moduleInitFreed(let m):
            let session: GuestSession
            switch self.session(of: m.guestID, arrival: arrival, token: m.session) {
            case .success(let s): session = s
            case .failure(let e): return .error(e)
            }
            if let why = Self.unnamable(m.moduleName) { return .error(ErrorReply(code: .unknownModule, message: why)) }
            if let why = session.endedMessage { return .error(ErrorReply(code: .unknownModule, message: why)) }
            switch session.initFreed(name: m.moduleName, initBase: m.initBase) {
            case .freed: break
            case .owedByRetiredLoad:
                return .error(ErrorReply(code: .unknownModule, message: "module '\(m.moduleName)' at init base 0x\(Hex.number(m.initBase)) in guest '\(m.guestID)': taken as the notice an earlier load of that name owes (retired before its init memory was freed); a live load's init text there stays granted until its own notice"))
            case .noSuchInitText:
                return .error(ErrorReply(code: .unknownModule, message: "no live module '\(m.moduleName)' with granted init text at 0x\(Hex.number(m.initBase)) in guest '\(m.guestID)'"))
            }
            return .moduleInitFreedReply(ModuleInitFreedReply(guestID: m.guestID, moduleName: m.moduleName, initBase: m.initBase))
        case .removeGuest(let m):
            let session: GuestSession
            switch self.session(of: m.guestID, arrival: arrival, token: m.session) {
            case .success(let s): session = s
            case .failure(let e): return .error(e)
            }
            // Only the session the request belongs to is removed: one a reset already replaced
            // (a stand-in, its token or its arrival) is gone, and the guest's new session is not
            // this request's.
            // (The current session itself is removed even when a refused reset ended it: that
            // guest is still registered, holding its slot, until a reset is accepted or it goes.)
            guard let removal = guests.remove(m.guestID, ifCurrent: session, arrivedAt: arrival) else {
                return .error(ErrorReply(code: .unknownGuest, message: "guest '\(m.guestID)': the session this remove-guest belongs to was already replaced or removed; the guest's current session (if any) stays"))
            }
            return .removeGuestReply(RemoveGuestReply(guestID: m.guestID, modulesRemoved: UInt32(clamping: removal.liveModules),
                                                      buildReleased: removal.buildReleased ? 1 : 0))
        case .status:
            return .statusReply(status(uptimeMilliseconds: 0, requestsServed: 0))
        case .helloReply, .registerGuestReply, .verdict, .statusReply, .retireModuleReply, .moduleInitFreedReply, .removeGuestReply, .error:
            return .error(ErrorReply(code: .badRequest, message: "\(message.type) is a reply, not a request"))
        }
    }

    /// The session a request for `guestID` is judged in (`GuestRegistry.session(_:arrivedAt:token:)`),
    /// or the error it is answered: `unknown-guest`, or `bad-request` for a session token not
    /// issued to the guest (or none where its session requires one).
    func session(of guestID: String, arrival: UInt64?, token: UInt64?) -> Result<GuestSession, ErrorReply> {
        switch guests.session(guestID, arrivedAt: arrival, token: token) {
        case .session(let s): return .success(s)
        case .unknownGuest: return .failure(ErrorReply(code: .unknownGuest, message: "guest '\(guestID)' is not registered"))
        case .refused(let why): return .failure(ErrorReply(code: .badRequest, message: why))
        }
    }

    /// Why `name` can name no live module (empty, or a byte outside printable ASCII: every live
    /// module's signed name is printable ASCII, ModuleName.identity), or nil. The message shows
    /// the bytes in hex, never the guest's text.
    static func unnamable(_ name: String) -> String? {
        guard let why = ModuleName.invalid(name.utf8) else { return nil }
        if name.isEmpty { return "the module name \(why): no live module has it" }
        return "the module name (bytes \(Hex.encode(Array(name.utf8.prefix(64))))) \(why): no live module has it"
    }

    public func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply {
        let p = policy
        return StatusReply(serverName: serverName, uptimeMilliseconds: uptimeMilliseconds, requestsServed: requestsServed,
                           guests: UInt32(clamping: guests.count), policyID: p.id, policyVersion: p.version, state: "serving")
    }

    /// Judge an authorize-module request under the current policy. The verdict's request digest
    /// is `requestDigest` when given; otherwise the request's own (`requestDigest(authorizeModuleBody:)`
    /// over `body`, the request as received, or over its canonical encoding when no body is
    /// given), with the module file's digest taken from the signature check's single pass.
    /// `arrival`: as for `respond(to:requestDigest:body:arrival:)`.
    public func authorize(_ request: AuthorizeModule, requestDigest: [UInt8]? = nil, body: ByteBuffer? = nil, arrival: UInt64? = nil) -> ExecGateWire.Verdict {
        // One snapshot for the whole request, with the policy's per-guest/class rules applied.
        let policy = self.policy.resolved(forGuest: request.guestID)
        var session: GuestSession? = nil
        if !request.guestID.isEmpty {
            switch self.session(of: request.guestID, arrival: arrival, token: request.session) {
            case .success(let s): session = s
            case .failure(let e) where e.code == .badRequest:
                // A token not issued to the guest (or none where one is required): nothing is
                // judged, and nothing without the session either.
                var v = ExecGateWire.Verdict(decision: .deny, reason: .endStateUnavailable, message: e.message, checks: [], policyID: policy.id,
                                             policyVersion: policy.version, requestDigest: requestDigest ?? [], moduleName: request.moduleName)
                recordAudit(&v, guestID: request.guestID, policy: policy)
                return v
            case .failure: break
            }
        }
        // A served guest's request (stamped: `arrival`) is never judged without its session (that
        // is the no-guest check, which commits nothing and grants): one the registry no longer has
        // (removed since `respond` found it) is denied. A direct call without a stamp and without
        // a registration judges under the guest's policy rules with no session, as before (the
        // per-class rules of `policy test`, AuditTests).
        if !request.guestID.isEmpty && session == nil && arrival != nil {
            var v = ExecGateWire.Verdict(decision: .deny, reason: .endStateUnavailable,
                                         message: "guest '\(request.guestID)' has no session this request arrived in (not registered, or removed): nothing was judged; register the guest, then ask again",
                                         checks: [], policyID: policy.id, policyVersion: policy.version, requestDigest: requestDigest ?? [], moduleName: request.moduleName)
            recordAudit(&v, guestID: request.guestID, policy: policy)
            return v
        }
        var fileDigest: Digest? = nil
        var judgement = request.module.withUnsafeReadableBytes { module in
            judge(module: module, request: request, policy: policy, session: session, fileDigest: &fileDigest)
        }
        judgement.verdict.requestDigest = requestDigest
            ?? body.flatMap { Self.requestDigest(authorizeModuleBody: $0, moduleFileDigest: fileDigest?.bytes) }
            ?? Self.requestDigest(authorizeModuleBody: Message.authorizeModule(request).encodeBody(), moduleFileDigest: fileDigest?.bytes)
            ?? []
        if let s = session { judgement.verdict.factsDigest = s.factsDigest }
        // Commit the allowed module to the guest's live set: the commit re-checks ranges, name,
        // frames, exports and key states atomically, and its refusal is the verdict.
        var committed: CommitTicket? = nil
        if judgement.verdict.decision == .allow, let s = session, let m = judgement.live {
            switch s.commit(m) {
            case .failure(let refusal):
                judgement.verdict.decision = .deny
                judgement.verdict.reason = refusal.reason
                judgement.verdict.message = refusal.message
            case .success(let ticket):
                committed = ticket
            }
        }
        Self.applyAuditMode(&judgement.verdict, policy)
        recordAudit(&judgement.verdict, guestID: request.guestID, policy: policy)
        if let s = session {
            // Final: modules may now link against a committed module — unless a reset ended the
            // session while the record was written (the VMM revoked every grant of it first): then
            // the allow just recorded is no verdict of a live session, and the final one is a deny,
            // recorded too. An allow that commits nothing (signature-only) has no commit to refuse
            // it: the session's end, its record included, makes it the same deny.
            var ended: SessionRefusal? = nil
            if let ticket = committed {
                if judgement.verdict.decision == .allow { ended = s.finish(ticket) }
                if judgement.verdict.decision != .allow || ended != nil {
                    s.rollback(ticket)  // the audit sink refused the record, or the session ended: never live
                }
            } else if judgement.verdict.decision == .allow && !judgement.verdict.auditOnly {
                ended = s.endedRefusal
            }
            if let refusal = ended {
                judgement.verdict.decision = .deny
                judgement.verdict.reason = refusal.reason
                judgement.verdict.message = refusal.message
                judgement.verdict.signatureOnly = false
                Self.applyAuditMode(&judgement.verdict, policy)
                recordAudit(&judgement.verdict, guestID: request.guestID, policy: policy)
            }
        }
        // The grant, on the final allow only (an audit-only allow included: audit mode lets the
        // VMM map what enforce would deny, but the module is never committed, so the session
        // holds none of it and nothing resolves against it). Frames are echoed only with the
        // region they map (docs/protocol.md, verdict tags 13, 14, 16): never from a claim without
        // one (denied claim.frames-invalid, or audit-only allowed, with nothing to grant).
        if judgement.verdict.decision == .allow {
            if request.text != nil {
                judgement.verdict.grantBase = request.textBase
                judgement.verdict.grantFrames = request.frames
            }
            if request.initText != nil { judgement.verdict.initFrames = request.initFrames }
        }
        return judgement.verdict
    }

    /// register-guest: the policy's kernel pins, then the registry.
    private func register(_ r: RegisterGuest, requestDigest: [UInt8]?, replacing: GuestSession? = nil, arrivedAt: UInt64? = nil) -> Message {
        // Bind the symbols to the kernel build: with `kernel … symbols …` pins in the policy,
        // the registered kernel must be listed and its symbol table (at link-time addresses)
        // must be exactly the one pinned with it. A registration by digest names that digest
        // itself; it is pinned (or not) exactly as the records it stands for would be, before
        // the registry is asked whether it holds them.
        let digest = KernelFactsKey.symbolsDigest(r)
        guard let symbols = Digest(algorithm: .sha256, bytes: digest) else {
            return .error(ErrorReply(code: .badRequest, message: "register-guest '\(r.guestID)': symbols_digest of \(digest.count) bytes; a SHA-256 digest is 32"))
        }
        let kernels = policy.trustedKernels
        if !kernels.isEmpty {
            guard let kernel = Digest(algorithm: .sha256, bytes: r.kernelDigest), let pin = kernels.first(where: { $0.kernel == kernel }) else {
                return .error(ErrorReply(code: .untrustedKernel, message: "register-guest '\(r.guestID)': kernel_digest \(r.kernelDigest.isEmpty ? "missing" : "not listed") (policy \(policy.id) pins \(kernels.count) kernel build(s))"))
            }
            guard pin.symbols == symbols else {
                return .error(ErrorReply(code: .untrustedKernel, message: "register-guest '\(r.guestID)': the symbols are not the pinned symbol table of kernel \(kernel) (\(symbols) \(r.isByDigest ? "named" : "sent"))"))
            }
        }
        switch guests.register(r, factsDigest: requestDigest ?? [], symbolsDigest: digest, replacing: replacing, arrivedAt: arrivedAt) {
        case .registered(let session):
            return .registerGuestReply(RegisterGuestReply(guestID: r.guestID, symbolCount: UInt32(clamping: session.kernel.symbolCount),
                                                          factsDigest: requestDigest ?? [], symbolsDigest: digest, session: session.token))
        case .refused(let code, let why):
            return .error(ErrorReply(code: code, message: why))
        }
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
        /// On allow with a guest: the module to commit to the guest's live set.
        var live: LiveModule? = nil
    }

    /// Judge a run-time text patch (a batch of text_pokes): allowed only at known sites of live
    /// modules this verifier allowed for the guest, in legal encodings, as whole-key transitions
    /// (GuestSession.judgePatches, RuntimePatching.swift).
    public func authorizePatch(_ p: AuthorizePatch, session: GuestSession, requestDigest: [UInt8]) -> ExecGateWire.Verdict {
        let policy = self.policy.resolved(forGuest: p.guestID, kind: .textPatches)  // per-guest/class rules (ExecGatePolicy)
        var checks: [Check] = [.policyKind]
        func verdict(_ d: ExecGateWire.Verdict.Decision, _ r: VerdictReason, _ m: String, module: String = "") -> ExecGateWire.Verdict {
            var v = ExecGateWire.Verdict(decision: d, reason: r, message: m, checks: checks.map(\.rawValue), policyID: policy.id,
                                         policyVersion: policy.version, requestDigest: requestDigest, moduleName: module)
            v.factsDigest = session.factsDigest
            Self.applyAuditMode(&v, policy)
            recordAudit(&v, guestID: p.guestID, policy: policy)
            return v
        }
        if policy.textPatches == .deny { return verdict(.deny, .kindDenied, "policy \(policy.id) v\(policy.version) allows no run-time text patches") }
        // In audit mode an illegal patch is allowed with audit_only but never changes key state:
        // the session only records what enforce would allow.
        // The checks that ran, as far as the judgement got (docs/protocol.md, verdict tag 5: a
        // verdict never claims more than was checked).
        let outcome = session.judgePatches(p.patches)
        switch outcome {
        case .allowed: checks += [.patchSite, .keyState]
        case .denied(_, _, _, .session): break
        case .denied(_, _, _, .site): checks.append(.patchSite)
        case .denied(_, _, _, .key): checks += [.patchSite, .keyState]
        }
        switch outcome {
        case .allowed(let module, let message, let newStates, let staticKeys, let judgedAt):
            let v = verdict(.allow, .allowed, message, module: module)
            // Only a final allow moves the keys (the audit sink may still have refused it); the
            // keys stay in flight (no module with sites of them commits) until then. A reset that
            // ended the session while the record was written makes the verdict a deny (recorded
            // too): the VMM revoked every grant of that session before sending the reset.
            if let refusal = session.apply(newStates, staticKeys: staticKeys, judgedAt: judgedAt, record: v.decision == .allow && !v.auditOnly),
               v.decision == .allow && !v.auditOnly {
                return verdict(.deny, refusal.reason, refusal.message, module: module)
            }
            return v
        case .denied(let reason, let module, let message, _):
            return verdict(.deny, reason, message, module: module)
        }
    }

    /// The checks a verdict may list, in the order they run (docs/protocol.md, verdict tag 5).
    public enum Check: String, Sendable, CaseIterable {
        case policyKind = "policy-kind"
        case signature
        case denyList = "deny-list"
        case elfStructure = "elf-structure"
        case moduleName = "module-name"
        case vermagic
        case claimStructure = "claim-structure"
        case frames
        case liveRanges = "live-ranges"
        case endState = "end-state"
        case keyState = "key-state"
        case patchSite = "patch-site"
    }

    /// `fileDigest`: set to the SHA-256 of the module file when the signature step hashed it.
    private func judge(module: UnsafeRawBufferPointer, request: AuthorizeModule, policy: Policy, session: GuestSession?,
                       fileDigest: inout Digest?) -> Judgement {
        var checks: [Check] = []
        // The request's name until the signed one is read (step 3): a denial before it carries the
        // guest's word, and its checks say the name was not checked (docs/protocol.md, verdict tag 9).
        var moduleName = request.moduleName
        var moduleDigest: [UInt8] = []
        func deny(_ reason: VerdictReason, _ message: String) -> Judgement {
            Judgement(verdict: ExecGateWire.Verdict(decision: .deny, reason: reason, message: message, checks: checks.map(\.rawValue), policyID: policy.id,
                                       policyVersion: policy.version, requestDigest: [], moduleName: moduleName, moduleDigest: moduleDigest))
        }

        // 1. Kind rule.
        checks.append(.policyKind)
        if policy.modules == .deny { return deny(.kindDenied, "policy \(policy.id) v\(policy.version) allows no modules") }
        // A request of a session a reset replaced (it carries that session's token, or it arrived
        // before the reset: the registry hands the judge a stand-in already ended) belongs to no
        // live session: denied here, before anything is judged, as authorize-patch is, whatever
        // the policy (docs/protocol.md, "Once." and "Session tokens"). Judged on, it ran against
        // the new session's facts (a deny for another reason), and a signature-only policy,
        // which commits nothing, allowed it.
        if let s = session, let why = s.endedMessage { return deny(.endStateUnavailable, why) }

        // 2. Signature and deny lists (content hash, signer certificate).
        checks.append(.signature)
        checks.append(.denyList)
        let signature: VerifiedSignature
        // One pass over the module: its content digest (signature, deny list, module_digest) and
        // the file's (the request digest), ModuleSignatureVerifier.verifyWithDigests.
        let checked = ModuleSignatureVerifier.verifyWithDigests(module: module, trust: policy.trust, denyList: policy.denyList, minimumDigest: policy.minimumDigest)
        fileDigest = checked.fileDigest
        switch checked.verdict {
        case .success(let s):
            signature = s
        case .failure(let f):
            // The content judged, named even when refused (a deny-listed hash, an unknown signer):
            // `module_sha256` is the SHA-256 of the bytes before the signature, a fact of the file.
            moduleDigest = checked.contentDigest?.bytes ?? []
            return deny(Self.reason(for: f), f.message + " [\(f.detailedCode)]")
        }
        moduleDigest = signature.contentHash.bytes
        if case .hashPinned(let pins) = policy.modules, !pins.contains(signature.contentHash) {
            return deny(.kindDenied, "module content \(signature.contentHash) is not pinned by policy \(policy.id)")
        }

        // 3–4. The signed ELF (never the unsigned tail), its name and its vermagic.
        checks.append(.elfStructure)
        let content = UnsafeRawBufferPointer(rebasing: module[signature.trailer.contentRange])
        let elf: ELFFile
        do {
            elf = try ELFFile(bytes: content)
        } catch {
            return deny(.malformedELF, "signed content is not a valid x86-64 relocatable ELF: \(error)")
        }
        // The module's one name, the kernel's `struct module` name, which `.modinfo name=` (when
        // present) must equal byte for byte (ModuleName.identity: the rule and the kernel
        // functions). Never the guest's word: the request's name must agree with it.
        switch ModuleName.identity(in: elf) {
        case .failure(.malformed(let why)):
            return deny(.malformedELF, "module name: \(why)")
        case .failure(.mismatch(let info, let structName)):
            // The name was read: the verdict (and its audit record) names the module by the name
            // the kernel would know it by, never the guest's word (protocol.md, verdict tag 9).
            moduleName = structName
            return deny(.moduleNameMismatch, "the signed .modinfo names module '\(info)' but its struct module (.gnu.linkonce.this_module, the name the kernel loads it as) says '\(structName)'")
        case .success(let n):
            // The request's name (the guest's word) must be the signed name byte for byte, as
            // the kernel's find_module_all() compares mod->name (strlen + memcmp, 6.1 and 6.12):
            // no '-' ≡ '_' and no String equality, which takes a canonically equivalent Unicode
            // spelling (U+212A for 'K'). (The deny list keeps its documented '-' ≡ '_', which
            // only widens a rule; the live set's twin refusal below is stricter than the kernel.)
            if !request.moduleName.isEmpty && !request.moduleName.utf8.elementsEqual(n.utf8) {
                moduleName = n  // the signed name, read: the guest's word is only in the message
                return deny(.moduleNameMismatch, "the request names module '\(request.moduleName)' but the signed module is '\(n)'")
            }
            moduleName = n
        }
        checks.append(.moduleName)
        if policy.deniedModuleNames.contains(Policy.canonicalModuleName(moduleName)) {
            return deny(.moduleNameDenied, "module '\(moduleName)' is deny-listed by name")
        }
        if let release = session?.facts.kernelRelease, !release.isEmpty {
            // (The engine checks vermagic too, ModuleChecks.swift; this earlier check gives the
            // denial its own reason code and runs before any byte is judged.)
            // check_modinfo() → same_magic(): the module is built for this kernel. The release is
            // vermagic's first word (include/linux/vermagic.h: UTS_RELEASE " " …).
            checks.append(.vermagic)
            let vermagic = ModuleInfo.value("vermagic", in: elf) ?? ""
            let builtFor = vermagic.split(separator: " ").first.map(String.init) ?? ""
            guard builtFor == release else {
                return deny(.vermagicMismatch, "module '\(moduleName)' has vermagic '\(vermagic)', the registered kernel is '\(release)'")
            }
        }

        // 5. Claim structure.
        if !request.sections.isEmpty {
            checks.append(.claimStructure)
            if let failure = ClaimStructure.check(request.sections, against: elf) {
                return deny(failure.reason, failure.message)
            }
        }

        // 6. Which judgement applies. Fail closed: bytes are judged, or the request is denied,
        //    unless the policy opted into signature-only AND no byte is claimed.
        let sectionBytes = request.sections.filter { $0.bytes != nil }
        let claimsBytes = request.text != nil || request.initText != nil || !sectionBytes.isEmpty
        if !claimsBytes && policy.endState == .signatureOnly {
            // Frames belong to the region they map (protocol.md: `frames` with `text`,
            // `init_frames` with `init_text`), and the VMM grants EXEC on exactly the frames a
            // verdict echoes. Frames claimed without their region name pages no byte of which is
            // judged: refused, never echoed by the signature-only allow as a grant. (With end state
            // required the request is denied below for want of a region anyway.)
            if !request.frames.isEmpty || !request.initFrames.isEmpty || request.textBase != nil || request.initBase != nil {
                checks.append(.frames)
                return deny(.claimFramesInvalid, "guest-physical frames are claimed without the region they map (frames need text_base + text, init_frames need init_base + init_text): a signature-only verdict judges no byte and grants no frame")
            }
            // Structure, as the engine would refuse it before judging any byte (the kernel's own
            // refusals, and what it would copy unchecked): a signature-only allow is "judged on
            // signature and structure", and it was on the section headers alone (22 forms the
            // engine denies were allowed, an SHF_ALLOC SHT_NULL section among them: round 11).
            if let why = ModuleStructure.check(elf) {
                return deny(.malformedELF, "signed content: \(why)")
            }
            var j = Judgement(verdict: ExecGateWire.Verdict(
                decision: .allow, reason: .allowed,
                message: "SIGNATURE ONLY (policy \(policy.id) opts into 'end-state signature-only'): signed by '\(signature.signer.subject)' (\(signature.digestAlgorithm)); no executable byte was judged",
                checks: checks.map(\.rawValue), policyID: policy.id, policyVersion: policy.version, requestDigest: [], moduleName: moduleName,
                moduleDigest: moduleDigest))
            j.verdict.signatureOnly = true
            return j
        }
        guard let session else {
            if policy.endState == .signatureOnly {
                // Bytes claimed are judged, whatever the policy: only against a guest's facts.
                return deny(.endStateUnavailable, "the request claims executable bytes but names no registered guest: claimed bytes are explained only against a guest's facts (policy \(policy.id) gives a signature-only verdict to a request that claims no byte)")
            }
            return deny(.endStateUnavailable, "policy \(policy.id) requires every executable byte to be explained, but the request names no registered guest (no trusted facts)")
        }
        guard let base = request.textBase, let text = request.text else {
            if !sectionBytes.isEmpty || request.initText != nil {
                return deny(.claimSectionBytes, "bytes are claimed without the executable region (text_base + text): they cannot be explained byte for byte")
            }
            return deny(.endStateUnavailable, "policy \(policy.id) requires end-state verification, but the claim carries no executable region (text_base + text)")
        }

        // 7. Frames: one guest-physical frame per 4 KiB page of each claimed region, none twice.
        checks.append(.frames)
        let initRange: Range<UInt64>?
        switch Self.checkFrames(request, textBytes: text.readableBytes) {
        case .success(let r): initRange = r
        case .failure(let d): return deny(d.reason, d.message)
        }

        // 8. Per-section bytes, when sent, are exactly the matching slice of the region.
        if let d = Self.checkSectionBytes(sectionBytes, base: base, text: text) { return deny(d.reason, d.message) }

        // 9. Live ranges of the guest: no overlap, no second module of one name.
        checks.append(.liveRanges)
        guard let plan = ModuleLayoutPlan.compute(elf) else {
            return deny(.claimInvalid, "section sizes overflow the kernel's layout computation")
        }
        let coreSize = Self.liveCoreSize(plan: plan, textBytes: text.readableBytes, kernelRelease: session.facts.kernelRelease)
        let (coreEnd, coreOverflow) = base.addingReportingOverflow(UInt64(coreSize))
        guard !coreOverflow else { return deny(.claimInvalid, "core allocation at 0x\(Hex.number(base)) +\(coreSize) wraps the address space") }
        let coreRange = base..<coreEnd
        // What else the module holds while live, against every live module: on 6.1 its whole init
        // allocation (init text, rodata and data: one module_alloc() block, as the core's), and
        // its per-cpu area (percpu_modalloc()). Bounds past 2^64 are the explainer's denial.
        let initAllocation = initRange.map { Self.liveInitAllocation(plan: plan, initRange: $0, kernelRelease: session.facts.kernelRelease) }
        // The held ranges are the kernel's allocations, so they obey its placement rules as the
        // sections do (the explainer checks those with the sections' sizes): inside the module
        // area, and on 6.1 the init allocation apart from the core's. With the symbols
        // layout_symtab() appends, a core placed a page short of MODULES_END, or an init
        // allocation in the core's symbol pages, passed the explainer and was held as given:
        // a placement module_alloc() never returns, and two overlapping held ranges of one module
        // (round 12's review of hostile claims).
        let area = session.facts.moduleArea
        guard coreRange.isEmpty || (coreRange.lowerBound >= area.lowerBound && coreRange.upperBound <= area.upperBound) else {
            return deny(.claimInvalid, "core allocation 0x\(Hex.number(base)) +\(coreSize) (with the symbols layout_symtab() appends) is not inside the module area")
        }
        if let a = initAllocation {
            guard a.lowerBound >= area.lowerBound, a.upperBound <= area.upperBound, a.upperBound <= coreRange.lowerBound || a.lowerBound >= coreRange.upperBound else {
                return deny(.claimInvalid, "init allocation 0x\(Hex.number(a.lowerBound)) +\(a.upperBound &- a.lowerBound) (with the symbols layout_symtab() appends) is not inside the module area apart from the core allocation 0x\(Hex.number(base)) +\(coreSize)")
            }
        }
        var percpuRange: Range<UInt64>? = nil
        if let i = plan.percpuSectionIndex, i < elf.sections.count, elf.sections[i].size > 0, let b = request.perCPUBase {
            let (e, o) = b.addingReportingOverflow(UInt64(elf.sections[i].size))
            if !o { percpuRange = b..<e }
        }
        if let refusal = session.preflight(name: moduleName, coreRange: coreRange, initRange: initAllocation, percpuRange: percpuRange,
                                           frames: request.frames, initFrames: request.initFrames) {
            return deny(refusal.reason, refusal.message)
        }

        // 10. End state: the whole executable region, byte for byte.
        checks.append(.endState)
        // Before the judge takes its snapshot of the live exports: commit refuses if a live
        // module is removed after this point (GuestSession.removals).
        let explainedAt = session.removalGeneration
        let explained: ExplainedModule
        switch endState.judge(elf: elf, moduleName: moduleName, request: request, session: session) {
        case .explained(let e):
            explained = e
        case .unexplained(let why):
            return deny(.claimBytesUnexplained, why)
        case .invalidClaim(let why):
            return deny(.claimInvalid, why)
        }

        // 11. Key state of the module's run-time sites (checked against the live keys at commit).
        checks.append(.keyState)
        func states(_ table: RuntimeSiteTable?, base: UInt64, bytes region: ByteBuffer) -> [UInt64: UInt64] {
            guard let table else { return [:] }
            return region.withUnsafeReadableBytes { table.keyStates(base: base, region: $0) }
        }
        let keyStates = states(explained.runtimeSites, base: base, bytes: text)
        // Init sites too (jump_label_add_module() / static_call_add_module() patch them to the
        // key's current state): a key whose only sites here are in init text is held to its
        // live state as well.
        var initKeyStates: [UInt64: UInt64] = [:]
        if let ib = request.initBase, let it = request.initText { initKeyStates = states(explained.initRuntimeSites, base: ib, bytes: it) }
        var live = LiveModule(name: Policy.canonicalModuleName(moduleName), identity: moduleName, coreRange: coreRange,
                              textRange: base..<(base &+ UInt64(text.readableBytes)), frames: request.frames,
                              initRange: initRange, initAllocation: initAllocation, percpuRange: percpuRange,
                              initFrames: request.initFrames, exports: explained.exports,
                              sites: explained.runtimeSites, keyStates: keyStates,
                              imports: Self.imports(of: elf), explainedAt: explainedAt)
        live.initKeyStates = initKeyStates
        live.dataAllocations = explained.dataAllocations
        if live.initRange != nil { live.initDataAllocations = explained.initDataAllocations }

        let message = "signed by '\(signature.signer.subject)' (\(signature.digestAlgorithm)); all \(text.readableBytes) executable bytes explained"
        return Judgement(verdict: ExecGateWire.Verdict(decision: .allow, reason: .allowed, message: message, checks: checks.map(\.rawValue), policyID: policy.id,
                                          policyVersion: policy.version, requestDigest: [], moduleName: moduleName,
                                          moduleDigest: moduleDigest), live: live)
    }

    /// The request digest of an authorize-module (verdict `request_digest`, the audit record's
    /// `request_sha256`; docs/protocol.md): SHA-256 of the request body exactly as received, with
    /// the value of its `module` field (tag 2) replaced by the 32-byte SHA-256 of the module file
    /// and that field's length by 32. It binds every byte of the request, the module through its
    /// digest, but the module is hashed once: the signature check's pass over it yields both the
    /// content digest and the file digest (`moduleFileDigest`; computed here when nil). Hashing
    /// the whole body as well was a second pass over every module byte. nil when `body` has no
    /// well-formed module field (then it did not decode as an authorize-module either).
    public static func requestDigest(authorizeModuleBody body: ByteBuffer, moduleFileDigest: [UInt8]? = nil) -> [UInt8]? {
        body.withUnsafeReadableBytes { raw -> [UInt8]? in
            var at = 0
            while at < raw.count {
                guard let tag = raw.getInteger(at: at, order: .big, as: UInt16.self),
                      let length = raw.getInteger(at: at + 2, order: .big, as: UInt32.self) else { return nil }
                let start = at + 6
                guard Int(length) <= raw.count - start else { return nil }
                let end = start + Int(length)
                guard tag == AuthorizeModule.moduleTag else { at = end; continue }
                let file = moduleFileDigest ?? Digest.sha256(UnsafeRawBufferPointer(rebasing: raw[start..<end])).bytes
                let newLength: [UInt8] = [0, 0, 0, UInt8(file.count)]
                return newLength.withUnsafeBytes { len in
                    file.withUnsafeBytes { value in
                        Digest.compute(.sha256, overSegments: [UnsafeRawBufferPointer(rebasing: raw[0..<(at + 2)]), len, value,
                                                               UnsafeRawBufferPointer(rebasing: raw[end...])]).bytes
                    }
                }
            }
            return nil
        }
    }

    /// The length of the core range held against live modules from `text_base`: on 6.1 the one
    /// core allocation (`layout_sections()`: text, rodata, ro_after_init, data, page-aligned
    /// steps, then the core symbols `layout_symtab()` appends); on 6.12, where every `enum mod_mem_type` is its own allocation (`move_module()`),
    /// the MOD_TEXT allocation alone, i.e. the claimed text (the engine requires it to be
    /// PAGE_ALIGN(mem[MOD_TEXT].size)). The 6.1 size there would reach past a small MOD_TEXT over
    /// another module's text or init text placed after it and refuse an honest load. The init
    /// range (`init_base`, `init_text`) is the MOD_INIT_TEXT allocation on both.
    static func liveCoreSize(plan: ModuleLayoutPlan, textBytes: Int, kernelRelease: String?) -> Int {
        if let r = kernelRelease, case .success(.linux6_12) = ModuleLoader.forRelease(r) { return textBytes }
        return plan.coreSizeWithSymbols  // ≥ coreSize: the symbols come after the sections
    }

    /// The init allocation a live module holds while its init text is granted: on 6.1 the whole
    /// `init_layout` (layout_sections(): init text, then init rodata and data, then what
    /// layout_symtab() appends; one module_alloc() block that do_free_init() frees whole), from
    /// the claimed init base; on 6.12 the
    /// `MOD_INIT_TEXT` allocation (the other init types are held apart, `LiveModule.initDataAllocations`,
    /// once the claim is explained). Never less than the claimed init text.
    static func liveInitAllocation(plan: ModuleLayoutPlan, initRange: Range<UInt64>, kernelRelease: String?) -> Range<UInt64> {
        if let r = kernelRelease, case .success(.linux6_12) = ModuleLoader.forRelease(r) { return initRange }
        let (end, o) = initRange.lowerBound.addingReportingOverflow(UInt64(plan.initSizeWithSymbols))
        return o ? initRange.lowerBound..<UInt64.max : initRange.lowerBound..<max(end, initRange.upperBound)
    }

    /// A denial found by one stage of `judge`: its reason code and message.
    struct Denial: Error { let reason: VerdictReason; let message: String }

    /// Step 7: one guest-physical frame per 4 KiB page of the core region and of the init region
    /// (if claimed; page-aligned), each a frame number a page can have (below
    /// `WireLimits.frameNumberLimit`), and no frame claimed twice. Returns the init range.
    static func checkFrames(_ request: AuthorizeModule, textBytes: Int) -> Result<Range<UInt64>?, Denial> {
        let page = WireLimits.framePageSize
        let pages = (UInt64(textBytes) + page - 1) / page
        guard request.frames.count == Int(pages) else {
            return .failure(Denial(reason: .claimFramesInvalid, message: "the executable region spans \(pages) page(s) but \(request.frames.count) guest-physical frame(s) are claimed"))
        }
        var initRange: Range<UInt64>? = nil
        if let ib = request.initBase, let it = request.initText {
            let (end, o) = ib.addingReportingOverflow(UInt64(it.readableBytes))
            guard !o, ib % page == 0 else { return .failure(Denial(reason: .claimInvalid, message: "init text at 0x\(Hex.number(ib)) +\(it.readableBytes) is not a page-aligned range")) }
            initRange = ib..<end
            let initPages = (UInt64(it.readableBytes) + page - 1) / page
            guard request.initFrames.count == Int(initPages) else {
                return .failure(Denial(reason: .claimFramesInvalid, message: "the init text spans \(initPages) page(s) but \(request.initFrames.count) init frame(s) are claimed"))
            }
        } else if !request.initFrames.isEmpty {
            return .failure(Denial(reason: .claimFramesInvalid, message: "init frames are claimed without init text"))
        }
        let allFrames = request.frames + request.initFrames
        // A frame is a guest-physical page (`gpa >> 12`, x86-64: below 2^40): a larger number
        // names a page another frame number names too (f + 2^52 is f's page to `frame << 12`),
        // so uniqueness and "granted to live code" are decided on valid frame numbers only.
        if let f = allFrames.first(where: { $0 >= WireLimits.frameNumberLimit }) {
            return .failure(Denial(reason: .claimFramesInvalid, message: "frame 0x\(Hex.number(f)) is no guest-physical page: x86-64 physical addresses have at most 52 bits (__PHYSICAL_MASK_SHIFT), so frame numbers (gpa >> 12) are below 0x\(Hex.number(WireLimits.frameNumberLimit))"))
        }
        if Set(allFrames).count != allFrames.count {
            return .failure(Denial(reason: .claimFramesInvalid, message: "a guest-physical frame is claimed for two pages: one frame cannot hold two verified pages"))
        }
        return .success(initRange)
    }

    /// Step 8: section bytes, when sent, must be exactly the region's bytes at the same address
    /// (only the region's bytes are explained; different per-section bytes would be a second claim).
    static func checkSectionBytes(_ sections: [SectionClaim], base: UInt64, text: ByteBuffer) -> Denial? {
        for s in sections {
            guard let b = s.bytes else { continue }
            let (end, o) = s.address.addingReportingOverflow(UInt64(b.readableBytes))
            guard !o, s.address >= base, end <= base &+ UInt64(text.readableBytes) else {
                return Denial(reason: .claimSectionBytes, message: "section '\(s.name)' at 0x\(Hex.number(s.address)) +\(b.readableBytes) lies outside the executable region")
            }
            let off = Int(s.address - base)
            guard let slice = text.getSlice(at: text.readerIndex + off, length: b.readableBytes), slice == b else {
                return Denial(reason: .claimSectionBytes, message: "section '\(s.name)': its claimed bytes differ from the executable region at the same address (only the region's bytes are explained)")
            }
        }
        return nil
    }

    /// Names of the module's undefined symbols (what resolve_symbol() looks up).
    static func imports(of elf: ELFFile) -> Set<String> {
        // Read in place: only the undefined symbols' names are made (`symbols()` made a `String`
        // for every symbol of the module, 10% of a judgement in a boot storm).
        guard let t = try? elf.symbolTable() else { return [] }
        var out = Set<String>()
        for i in t.indices where t.isUndefined(i) && !t.nameBytes(i).isEmpty { out.insert(t.name(i)) }
        return out
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
        v.signatureOnly = false  // tag 15 says how an allow was judged; this is no allow
        v.reason = .auditUnrecorded
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
    /// The run-time sites of its init text, when claimed (their key states are held to the live
    /// ones at commit; init sites are never patched by authorize-patch).
    public var initRuntimeSites: RuntimeSiteTable?
    /// 6.12: the module's data allocations (`ExplainResult.dataAllocations`), held while it is
    /// live, and its init data allocations, held while its init text is.
    public var dataAllocations: [Range<UInt64>] = []
    public var initDataAllocations: [Range<UInt64>] = []
    public init(exports: ModuleExports?, statistics: ExplainStats, runtimeSites: RuntimeSiteTable? = nil, initRuntimeSites: RuntimeSiteTable? = nil) {
        self.exports = exports
        self.statistics = statistics
        self.runtimeSites = runtimeSites
        self.initRuntimeSites = initRuntimeSites
    }
}
