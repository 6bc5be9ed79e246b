// SPDX-License-Identifier: Apache-2.0
//
// Attack round 4 written from the docs (README, docs/protocol.md, docs/trust.md, docs/policy.md):
// the guest chooses the order, timing and repetition of requests (the VMM relays them), mixing
// loads, retires, init-freed and run-time patches with a verdict still being finished. Inputs:
// the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held), through
// the verifier core as the service runs it (Verifier.respond / authorize / authorizePatch).

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack4Tests: XCTestCase {
    private func retire(_ g: FixtureGuest, _ name: String) -> Message {
        g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: g.session.liveModule(name)?.textRange.lowerBound ?? 0)),
                           requestDigest: [])
    }

    /// An audit sink (`audit-overflow block`) whose record of the first verdict of `module` is
    /// held while `whileHeld` runs (the writer queue is full: the verdict waits up to 5 s), then
    /// refused; every other record is accepted. Models the timing the guest chooses: requests it
    /// has the VMM relay while one verdict is being finished.
    final class HoldingSink: VerdictAuditSink, @unchecked Sendable {
        let lock = NSLock()
        let module: String
        /// Accept the held record after all (only the requests run while it was held matter).
        var accept = false
        var whileHeld: (() -> Void)?
        var inner: [ExecGateWire.Verdict] = []
        init(module: String, whileHeld: @escaping () -> Void) {
            self.module = module
            self.whileHeld = whileHeld
        }
        func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool {
            lock.lock()
            let action = verdict.moduleName == module ? whileHeld : nil
            if action != nil { whileHeld = nil } else { inner.append(verdict) }
            lock.unlock()
            guard let action else { return true }
            action()
            return accept
        }
    }

    /// HOLE (round docs4): protocol.md authorize-module: "On allow the module becomes live … It
    /// stays live until `retire-module`", and trust.md "The grant is on frames": "No frame may be
    /// granted to two live modules". A verdict whose audit record is refused (`audit-overflow
    /// block`) rolls its commit back — by the module's *name*. While irqbypass's first verdict waits
    /// for the audit sink, the guest has the VMM report irqbypass unloaded (retire-module at its base)
    /// and load irqbypass again: that second load is judged, committed and allowed (the VMM grants EXEC
    /// on its frames). Then the first verdict's record is refused and its rollback removed the
    /// live irqbypass by name — the *granted* second instance. The session then held none of its
    /// range, frames, sites or exports: another module claiming irqbypass's granted frames was allowed
    /// (one frame granted to two modules, at two virtual addresses), and irqbypass's sites were no
    /// longer run-time patch sites of anything.
    func testARolledBackVerdictNeverRemovesTheGrantedInstanceLoadedMeanwhile() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        guard case .retireModuleReply = retire(g, "irqbypass") else { return XCTFail("retire irqbypass") }
        let victim = try g.request("irqbypass")
        var second: ExecGateWire.Verdict?
        var retired: Message?
        let sink = HoldingSink(module: "irqbypass") {
            // The first irqbypass is committed, its verdict not final: the guest reports it
            // unloaded and loads it again in the same place.
            retired = self.retire(g, "irqbypass")
            second = g.verifier.authorize(victim, requestDigest: [])
        }
        g.verifier.auditSink = sink
        let first = g.verifier.authorize(victim, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertEqual(first.decision, .deny)
        XCTAssertEqual(first.reason, .auditUnrecorded, first.message)
        // Since the fix of testARetireOfAModuleWhoseVerdictIsBeingFinishedIsRefused the retire in
        // that window is refused (not live yet), so the reload is refused as a second live
        // module of the name; the rollback undoes its own commit only (by ticket, whatever runs
        // in the window).
        guard case .error(let e)? = retired else { return XCTFail("retired while its verdict was finished: \(String(describing: retired))") }
        XCTAssertEqual(e.code, .unknownModule, e.message)
        XCTAssertEqual(second?.reason, .moduleAlreadyLive, second?.message ?? "")
        XCTAssertNil(g.session.liveModule("irqbypass")?.name, "rolled back")
        let granted = try g.load("irqbypass")
        XCTAssertEqual(granted.decision, .allow, granted.message)
        XCTAssertEqual(granted.grantFrames, victim.frames, "the VMM grants EXEC on these frames")

        let live = g.session.liveModule("irqbypass")
        XCTAssertNotNil(live?.name, "the granted irqbypass is live")
        XCTAssertEqual(live?.frames, victim.frames)

        // Its frames are held: another module claiming them is refused.
        guard case .retireModuleReply = retire(g, "ip6_udp_tunnel") else { return XCTFail("retire ip6_udp_tunnel") }
        var thief = try g.request("ip6_udp_tunnel")
        thief.frames[0] = victim.frames[0]
        let stolen = g.verifier.authorize(thief, requestDigest: [])
        XCTAssertEqual(stolen.decision, .deny, "irqbypass's granted frame 0x\(String(victim.frames[0], radix: 16)) granted again: \(stolen.message)")
        XCTAssertEqual(stolen.reason, .claimFramesInvalid, stolen.message)
        // And the granted irqbypass retires as any live module.
        guard case .retireModuleReply = retire(g, "irqbypass") else { return XCTFail("the granted irqbypass retires") }
    }

    /// HOLE (round docs4): trust.md "Inputs of a verdict": exports of other modules come "only
    /// [from] modules that ExecGate allowed for the same guest … A denied module's symbols never
    /// become resolvable", and "Live code": the kernel refuses to unload a module in use, so a
    /// module's dependencies stay live while it is. A module is committed (its exports resolvable)
    /// before its verdict is final; while test_static_key_base's verdict waits for the audit sink,
    /// the guest loads test_static_keys, which links against it: explained against the committed
    /// exporter, committed with it as a dependency, allowed and granted. Then the exporter's record
    /// is refused and its commit rolled back — its final verdict is a deny, its pages never became
    /// executable, and its range is free for the next module — while the granted dependent stays
    /// live, relocated against code no allowed module holds.
    func testAModuleLinkingAgainstAnExporterWhoseVerdictIsNotFinalIsNotAllowed() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        guard case .retireModuleReply = retire(g, "test_static_keys") else { return XCTFail("retire test_static_keys") }
        guard case .retireModuleReply = retire(g, "test_static_key_base") else { return XCTFail("retire test_static_key_base") }
        let exporter = try g.request("test_static_key_base")
        var dependent: ExecGateWire.Verdict?
        g.verifier.auditSink = HoldingSink(module: "test_static_key_base") {
            dependent = try? g.load("test_static_keys")
        }
        let first = g.verifier.authorize(exporter, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertEqual(first.reason, .auditUnrecorded, first.message)
        XCTAssertNil(g.session.liveModule("test_static_key_base")?.name, "the exporter's final verdict is a deny: not live")
        let d = try XCTUnwrap(dependent, "the dependent was judged while the exporter's verdict waited")
        XCTAssertEqual(d.decision, .deny, "test_static_keys was allowed against the exports of a module whose final verdict is a deny: \(d.message)")
        XCTAssertNil(g.session.liveModule("test_static_keys")?.name, "a live module relocated against a module that is not live")
        for m in g.session.allowedModules {
            for dep in g.session.liveModule(m)?.dependsOn ?? [] { XCTAssertNotNil(g.session.liveModule(dep), "\(m) depends on \(dep), which is not live") }
        }
        // Asked again once the exporter is allowed, the dependent loads.
        XCTAssertEqual(g.verifier.authorize(exporter, requestDigest: []).decision, .allow)
        XCTAssertEqual(try g.load("test_static_keys").decision, .allow)
    }

    /// HOLE (round docs4): protocol.md register-guest: "A request of the old session still being
    /// judged when the reset lands is not allowed into the new one, nor into the old: the
    /// replaced session is ended, and its authorize-module or authorize-patch is denied
    /// `policy.end-state-unavailable`". The session is checked when the module is committed, but
    /// the verdict is final only once its audit record is written (`audit-overflow block`: up to
    /// 5 s). A reset landing in that window (the VMM revoked every grant of the old session, then
    /// sent it) left the verdict an allow — grant base and frames for a session that is gone,
    /// with a facts digest the new boot shares (same facts) — and the module live nowhere the new
    /// session checks: the new session let another module claim the same frames.
    func testAResetWhileTheVerdictIsRecordedIsNotAnAllow() throws {
        let g = try FixtureGuest()
        let name = "irqbypass"
        var reset = g.registration
        reset.reset = true
        let old = g.session
        g.verifier.auditSink = HoldingSink(module: name) {
            guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(reset), requestDigest: [0xfa, 0xc7]) else { return XCTFail("reset") }
        }
        // The sink accepts the record this time: only the reset lands meanwhile.
        (g.verifier.auditSink as! HoldingSink).accept = true
        let v = try g.load(name)
        g.verifier.auditSink = nil
        XCTAssertFalse(old === g.session, "the reset replaced the session")
        XCTAssertEqual(v.decision, .deny, "\(name) allowed after the reset landed (frames \(v.grantFrames)): \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertNil(v.grantBase)
        XCTAssertEqual(v.grantFrames, [])
        // Asked again in the new session: allowed, and its frames are held there.
        XCTAssertEqual(try g.load(name).decision, .allow)
        XCTAssertEqual(g.session.allowedModules, [name])
    }

    /// The same window under a signature-only policy (a hostile-peer review, 2026-12-04): an
    /// allow that claims no byte commits nothing, so no commit refused it when the reset landed
    /// while its record was written; it is the same deny, recorded after the allow. Asked again in
    /// the new session: allowed.
    func testAResetWhileASignatureOnlyAllowIsRecordedIsNotAnAllow() throws {
        let g = try FixtureGuest { $0.endState = .signatureOnly }
        let name = "irqbypass"
        let bare = try g.request(name).withoutClaimedBytes
        var reset = g.registration
        reset.reset = true
        let old = g.session
        let sink = HoldingSink(module: name) {
            guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(reset), requestDigest: [0xfa, 0xc7]) else { return XCTFail("reset") }
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.verifier.authorize(bare, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertFalse(old === g.session, "the reset replaced the session")
        XCTAssertEqual(v.decision, .deny, "a signature-only allow of the old session stood after the reset landed: \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertFalse(v.signatureOnly)
        XCTAssertEqual(sink.inner.map(\.decision), [.deny], "after the held allow's record, the deny's")
        let again = g.verifier.authorize(bare, requestDigest: [])
        XCTAssertEqual(again.decision, .allow, again.message)
        XCTAssertTrue(again.signatureOnly)
    }

    /// The same window for a run-time patch: a legal whole-key flip judged in the old session,
    /// its record written while the reset lands. The allow told the VMM to poke those bytes into
    /// text of a session that is gone (the new boot may hold other code at those addresses).
    func testAResetWhileAPatchVerdictIsRecordedIsNotAnAllow() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        var reset = g.registration
        reset.reset = true
        let old = g.session
        let sink = HoldingSink(module: sites[0].table.module) {
            guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(reset), requestDigest: [0xfa, 0xc7]) else { return XCTFail("reset") }
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.verifier.authorizePatch(AuthorizePatch(guestID: "g", patches: flip), session: old, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertFalse(old === g.session, "the reset replaced the session")
        XCTAssertEqual(v.decision, .deny, "a patch of the old session allowed after the reset landed: \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
    }

    /// `name`'s request laid out at `base` instead of where the fixture boot loaded it: the
    /// captured bytes with every byte the engine expects elsewhere rewritten (relocations, sites),
    /// one denial at a time, as the guest's loader would have written them there.
    /// With `initBase`, its init text too (`initPages` pages, laid out the same way).
    static func rebased(_ g: FixtureGuest, _ name: String, to base: UInt64, frames: [UInt64],
                        initBase: UInt64? = nil, initPages: Int = 1, initFrames: [UInt64] = []) throws -> AuthorizeModule {
        try rebased(g.boot, g.session, name, to: base, frames: frames, initBase: initBase, initPages: initPages, initFrames: initFrames)
    }

    static func rebased(_ boot: CaptureBoot, _ session: GuestSession, _ name: String, to base: UInt64, frames: [UInt64],
                        initBase: UInt64? = nil, initPages: Int = 1, initFrames: [UInt64] = []) throws -> AuthorizeModule {
        let m = try boot.module(name)
        var claim = m.claim
        let delta = base &- claim.textBase
        claim.textBase = base
        claim.sectionAddresses = claim.sectionAddresses.mapValues { $0 &+ delta }
        if let ib = initBase {
            claim.initTextBase = ib
            claim.initText = [UInt8](repeating: 0, count: initPages * 4096)
            for k in claim.sectionAddresses.keys where k.hasPrefix(".init") { claim.sectionAddresses[k] = nil }
        }
        for _ in 0..<20_000 {
            let verdict = try m.ko.withUnsafeBytes { raw -> ExecGateExplain.Verdict in
                let elf = try ELFFile(bytes: UnsafeRawBufferPointer(raw))
                return Explainer(facts: session.facts).explain(elf: elf, claim: claim, resolver: session.symbolResolver).verdict
            }
            guard case .denied(let d) = verdict else {
                var r = m.request(guestID: "g")
                r.textBase = base
                r.text = ByteBuffer(bytes: claim.text)
                r.sections = claim.sectionAddresses.sorted { $0.key < $1.key }.map { SectionClaim(name: $0.key, address: $0.value) }
                r.frames = frames
                if let ib = initBase, let it = claim.initText {
                    r.initBase = ib
                    r.initText = ByteBuffer(bytes: it)
                    r.initFrames = initFrames
                }
                return r
            }
            if let ib = claim.initTextBase, var it = claim.initText, d.address >= ib, d.address - ib < UInt64(it.count) {
                let o = Int(d.address - ib)
                guard !d.expected.isEmpty, o + d.expected.count <= it.count, Array(it[o..<o + d.expected.count]) != d.expected else {
                    throw XCTSkip("\(name)'s init text cannot be laid out at 0x\(String(ib, radix: 16)): \(d)")
                }
                it.replaceSubrange(o..<o + d.expected.count, with: d.expected)
                claim.initText = it
                continue
            }
            guard !d.expected.isEmpty, d.address >= base, d.address - base + UInt64(d.expected.count) <= UInt64(claim.text.count) else {
                throw XCTSkip("\(name) cannot be laid out at 0x\(String(base, radix: 16)): \(d)")
            }
            let o = Int(d.address - base)
            // A static call captured as a branch (`e8`/`e9` rel32: the key's state) keeps its
            // target from the new place: the engine's expected bytes for a site are its NULL
            // form, no state of a key whose state is a call (a PREEMPT_DYNAMIC key in voluntary
            // mode: might_resched → __cond_resched).
            if d.rule == .staticCall, o + 5 <= claim.text.count, claim.text[o] == 0xe8 || claim.text[o] == 0xe9,
               Array(claim.text[o..<o + 5]) == Array(m.claim.text[o..<o + 5]) {
                let rel = claim.text[o + 1..<o + 5].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                let moved = rel &- UInt32(truncatingIfNeeded: delta)
                claim.text.replaceSubrange(o + 1..<o + 5, with: (0..<4).map { UInt8(truncatingIfNeeded: moved >> (8 * UInt32($0))) })
                continue
            }
            guard Array(claim.text[o..<o + d.expected.count]) != d.expected else { throw XCTSkip("no progress rebasing \(name): \(d)") }
            claim.text.replaceSubrange(o..<o + d.expected.count, with: d.expected)
        }
        throw XCTSkip("rebasing \(name) did not converge")
    }

    /// HOLE (round docs4): protocol.md authorize-patch: "Allowed only when every entry is at the
    /// start of a run-time patch site of the **live** module that owns the address now (a retired
    /// module's sites are gone)", and "The verdict covers the whole request". A whole-key flip of
    /// a key only test_static_keys has sites of is judged and allowed; while its verdict is
    /// finished (audit record, `audit-overflow block`), the guest has test_static_keys retired
    /// and another module (irqbypass, no site of the key, so nothing holds it back) loaded at the
    /// same address. The patch's key states are then not recorded (a module went since it was
    /// judged), but its verdict stayed an allow: the VMM pokes the flip's bytes at those
    /// addresses, now in the middle of irqbypass's verified, executable text.
    func testAPatchWhoseSitesChangedOwnerWhileItWasFinishedIsNotAnAllow() throws {
        let g = try FixtureGuest()
        for name in ["test_static_key_base", "test_static_keys"] { XCTAssertEqual(try g.load(name).decision, .allow, name) }
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { _, s in s.allSatisfy { $0.site.kind == .jumpLabel && $0.table.module == "test_static_keys" } }
                                            .min { ($0.value.count, $0.key) < ($1.value.count, $1.key) }, "a key only test_static_keys has sites of")
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let victim = try XCTUnwrap(g.session.liveModule("test_static_keys"))
        let intruder = try Self.rebased(g, "irqbypass", to: victim.textRange.lowerBound, frames: [0x7_7000, 0x7_7001, 0x7_7002, 0x7_7003].prefix(victim.frames.count).map { $0 })
        XCTAssertTrue(flip.allSatisfy { victim.textRange.contains($0.address) && intruder.text!.readableBytes > Int($0.address - victim.textRange.lowerBound) })

        var loaded: ExecGateWire.Verdict?
        let sink = HoldingSink(module: "test_static_keys") {
            guard case .retireModuleReply = self.retire(g, "test_static_keys") else { return XCTFail("retire test_static_keys") }
            loaded = g.verifier.authorize(intruder, requestDigest: [])
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.patch(flip)
        g.verifier.auditSink = nil
        let l = try XCTUnwrap(loaded, "irqbypass was judged while the patch's verdict was finished")
        XCTAssertEqual(l.decision, .allow, "irqbypass laid out at test_static_keys' address: \(l.message)")
        XCTAssertEqual(g.session.liveModule("irqbypass")?.textRange.lowerBound, victim.textRange.lowerBound)
        XCTAssertEqual(v.decision, .deny, "the flip of a retired module's sites allowed into irqbypass's text at \(flip.map { String($0.address, radix: 16) }): \(v.message)")
        XCTAssertEqual(v.reason, .patchNotAllowed, v.message)
        // The same bytes asked now are judged against the owner: not its sites.
        XCTAssertEqual(g.patch(flip).decision, .deny)
    }

    /// HOLE (round docs4): protocol.md retire-module: "The guest unloaded a module … ExecGate
    /// forgets the module"; authorize-module: "On allow the module becomes live … It stays live
    /// until `retire-module`". The kernel refuses to unload a module that is still coming
    /// (delete_module(): `mod->state != MODULE_STATE_LIVE` → -EBUSY), but a retire-module for a
    /// module whose verdict was still being finished (audit record) was accepted: it removed the
    /// committed instance, and then the verdict became an allow — grant base and frames the VMM
    /// makes executable — for a module live nowhere, its frames free for the next module.
    func testARetireOfAModuleWhoseVerdictIsBeingFinishedIsRefused() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        guard case .retireModuleReply = retire(g, "irqbypass") else { return XCTFail("retire irqbypass") }
        let request = try g.request("irqbypass")
        var during: Message?
        let sink = HoldingSink(module: "irqbypass") {
            during = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "irqbypass", textBase: request.textBase!)), requestDigest: [])
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.verifier.authorize(request, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(v.grantFrames, request.frames)
        if case .error(let e)? = during { XCTAssertEqual(e.code, .unknownModule, e.message) } else { XCTFail("a module whose verdict is being finished retired: \(String(describing: during))") }
        XCTAssertNotNil(g.session.liveModule("irqbypass")?.name, "the allowed module is live")
        guard case .retireModuleReply = retire(g, "ip6_udp_tunnel") else { return XCTFail("retire ip6_udp_tunnel") }
        var thief = try g.request("ip6_udp_tunnel")
        thief.frames[0] = request.frames[0]
        XCTAssertEqual(g.verifier.authorize(thief, requestDigest: []).reason, .claimFramesInvalid, "the allowed module's frames are held")
    }

    /// HOLE (round docs4): protocol.md module-init-freed: "the VMM revoked EXEC on the init frames
    /// first. The init range stops being live … the range may be reused". The kernel frees a
    /// module's init memory only after its init returned (do_init_module() → do_free_init(), the
    /// module then LIVE), but a module-init-freed for a module whose verdict was still being
    /// finished was accepted: the VMM had no init frames granted to revoke, the session dropped
    /// them, and then the verdict became an allow echoing `init_frames`, which the VMM makes
    /// executable while the session holds none of them: another module claiming them was allowed.
    func testInitFreedOfAModuleWhoseVerdictIsBeingFinishedIsRefused() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("test_static_key_base").decision, .allow)
        let base = try g.request("test_static_keys").textBase!
        let withInit = try Self.rebased(g, "test_static_keys", to: base, frames: try g.request("test_static_keys").frames,
                                        initBase: 0xffff_ffff_c200_0000, initFrames: [0x5_5000])
        var during: Message?
        let sink = HoldingSink(module: "test_static_keys") {
            during = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keys", initBase: 0xffff_ffff_c200_0000)), requestDigest: [])
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.verifier.authorize(withInit, requestDigest: [])
        g.verifier.auditSink = nil
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(v.initFrames, [0x5_5000], "the VMM grants EXEC on the init frame")
        if case .error(let e)? = during { XCTAssertEqual(e.code, .unknownModule, e.message) } else { XCTFail("init freed before the module's verdict was final: \(String(describing: during))") }
        XCTAssertNotNil(g.session.liveModule("test_static_keys")?.initRange, "the granted init text is live")
        var thief = try g.request("irqbypass")
        thief.frames[0] = 0x5_5000
        XCTAssertEqual(g.verifier.authorize(thief, requestDigest: []).reason, .claimFramesInvalid, "the granted init frame is held")
        // Once the verdict is final, init-freed is accepted.
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keys", initBase: 0xffff_ffff_c200_0000)), requestDigest: []) else {
            return XCTFail("init freed after the verdict")
        }
    }

    /// Failed attack kept (and the other half of the fix of
    /// testAPatchWhoseSitesChangedOwnerWhileItWasFinishedIsNotAnAllow): while a whole-key flip's
    /// verdict is finished, retire a module that holds no site of the batch. The batch's sites are
    /// all still the same live instances: the flip is allowed and its state recorded (before, any
    /// removal meanwhile left the poked sites' new state unrecorded, so a later module could load
    /// in the old state beside them: one key in two states), and the key moves as a whole again.
    func testAnUnrelatedRetireWhileAPatchIsFinishedKeepsItsStateRecorded() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { _, s in s.allSatisfy { $0.site.kind == .jumpLabel && $0.table.module == "test_static_keys" } }
                                            .min { ($0.value.count, $0.key) < ($1.value.count, $1.key) }, "a key only test_static_keys has sites of")
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        func flip(_ to: UInt64) throws -> [PatchEntry] { try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: to))) } }
        let sink = HoldingSink(module: "test_static_keys") {
            guard case .retireModuleReply = self.retire(g, "irqbypass") else { return XCTFail("retire irqbypass") }
        }
        sink.accept = true
        g.verifier.auditSink = sink
        let v = g.patch(try flip(1 - state))
        g.verifier.auditSink = nil
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertNil(g.session.liveModule("irqbypass")?.name, "the race ran")
        XCTAssertEqual(g.session.state(ofKey: key), 1 - state, "the allowed flip is recorded")
        XCTAssertEqual(g.patch(try flip(state)).decision, .allow, "and the key moves back as a whole")
    }

    /// HOLE (round docs4): trust.md "Live code: one owner per address" and the registration's
    /// plausibility checks ("core text bounds", facts "individually plausible" must not combine
    /// into an allow for attacker-chosen control flow). x86-64 maps the kernel image in
    /// `[__START_KERNEL_map, __START_KERNEL_map + KERNEL_IMAGE_SIZE)` = `[0xffffffff80000000,
    /// 0xffffffffc0000000)` and modules from MODULES_VADDR = `__START_KERNEL_map +
    /// KERNEL_IMAGE_SIZE` on (arch/x86/include/asm/page_64_types.h, pgtable_64_types.h; KASLR
    /// keeps the image inside: arch/x86/boot/compressed/kaslr.c, KERNEL_IMAGE_SIZE). The fixture
    /// build registered at 1 GiB more slide — every image address, `pv_ops` entry and the return
    /// thunk moved consistently, so each fact passes its check — puts core text inside the
    /// module area: registered, and then a module laid out over a core function's page was
    /// allowed (the module area check passes and no live module is there), so every export,
    /// `pv_ops` target and static-call target at that page named the module's bytes.
    func testCoreTextInTheModuleAreaIsImplausible() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let r = SlidSharedKernelFactsTests.moved(try boot.registration(guestID: "g"), by: 0x4000_0000, id: "g")
        let stext = try XCTUnwrap(r.symbols.first { $0.name == "_stext" }?.address)
        XCTAssertGreaterThanOrEqual(stext, 0xffff_ffff_c000_0000, "core text now starts in the module area")
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let reply = verifier.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("_etext") || e.message.contains("_stext"), e.message)
        } else {
            XCTFail("registered with core text at 0x\(String(stext, radix: 16)), inside the module area")
        }
        // Control: the same build at its real slide registers.
        guard case .registerGuestReply = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
            .respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else { return XCTFail("the real registration") }

        // What the registration allowed: irqbypass laid out over the first page of core text.
        guard let session = verifier.guests.session("g") else { return }
        let printk = try XCTUnwrap(r.symbols.first { $0.name == "_printk" && $0.exported }?.address)
        let base = printk & ~0xfff
        let over = try Self.rebased(boot, session, "irqbypass", to: base, frames: [0x6_6000])
        let v = verifier.authorize(over, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "a module laid over the core's exported _printk at 0x\(String(printk, radix: 16)): \(v.message)")
    }
}
