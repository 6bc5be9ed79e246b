// SPDX-License-Identifier: Apache-2.0
//
// Attack round 3 written from the docs (docs/trust.md "Live code", "Static calls"; docs/protocol.md
// authorize-module, authorize-patch, retire-module): the guest orders and repeats requests at will
// (load, patch, retire, load again). Inputs: the committed fixture boot (signed Debian 6.1 modules
// and the bytes a real guest held), through the verifier core as the service runs it.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack3SessionTests: XCTestCase {
    /// A jump-label key all of whose live sites are in `module` (fewest sites first), with its
    /// state and those sites.
    private func keyOnlyIn(_ module: String, _ g: FixtureGuest) throws -> (key: UInt64, state: UInt64, sites: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)]) {
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { _, s in s.allSatisfy { $0.site.kind == .jumpLabel && $0.table.module == module } }
                                            .min { ($0.value.count, $0.key) < ($1.value.count, $1.key) }, "a jump-label key only \(module) has sites of")
        return (key, try XCTUnwrap(g.session.state(ofKey: key)), sites)
    }

    /// `module`'s request with every site of `key` rewritten to `state` (the region only; the
    /// section entries give the layout).
    private func request(_ g: FixtureGuest, _ module: String, key: UInt64, sites: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)], state: UInt64) throws -> AuthorizeModule {
        var r = try g.request(module)
        var text = Array(buffer: try XCTUnwrap(r.text))
        let base = try XCTUnwrap(r.textBase)
        for s in sites {
            let e = try XCTUnwrap(s.table.encoding(at: s.site.address, state: state))
            let o = Int(s.site.address - base)
            text.replaceSubrange(o..<o + e.count, with: e)
        }
        r.text = ByteBuffer(bytes: text)
        r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.address) }
        return r
    }

    struct SetupRefused: Error, CustomStringConvertible { var description: String }

    /// A verifier whose guest "g" is registered with the build's `__ro_after_init` bounds around
    /// `key` (the fixture's modules use no core key: the rule is the session's, whoever owns the
    /// key), every fixture module loaded (the key in `state`), then test_static_keys retired.
    private func sealedGuest(key: UInt64, state: UInt64, sink: (any VerdictAuditSink)? = nil) throws -> (Verifier, GuestSession, CaptureBoot, RegisterGuest) {
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        verifier.auditSink = sink
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let reg = try boot.registration(guestID: "g")
        guard Self.registerSealed(verifier, reg, key: key) else { throw SetupRefused(description: "register-guest refused") }
        for name in boot.availableModules {
            XCTAssertEqual(verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let session = try XCTUnwrap(verifier.guests.session("g"))
        XCTAssertEqual(session.state(ofKey: key), state)
        guard case .retireModuleReply = retire(verifier, session, "test_static_keys") else { throw SetupRefused(description: "retire test_static_keys refused") }
        return (verifier, session, boot, reg)
    }

    /// Registers `r` (the capture's honest registration) with the session's `.data..ro_after_init`
    /// range put around `key`, a module's key: no plausible registration puts it there (it lies in
    /// rodata, FactsPlausibility; RegistrationBoundsTests), so the range is set on the facts after
    /// every check (GuestRegistry's test seam). The rule under test is the session's.
    static func registerSealed(_ v: Verifier, _ r: RegisterGuest, key: UInt64) -> Bool {
        let page = key & ~0xfff
        guard case .registered = v.guests.register(r, adjustingFacts: { $0.coreROAfterInit = page..<(page + 0x1000) }) else { return false }
        return true
    }

    private func retire(_ v: Verifier, _ s: GuestSession, _ name: String) -> Message {
        v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: s.liveModule(name)?.textRange.lowerBound ?? 0)), requestDigest: [])
    }

    /// HOLE (round docs3): trust.md / protocol.md: a key in the core's `.data..ro_after_init` never
    /// moves ("its sites keep their load state: no kernel moves them"; 6.12 seals it,
    /// jump_label_init_ro(), and jump_label_add_module() patches a later module's sites of a sealed
    /// key to the key's one state, `goto do_poke`; on 6.1 the key is read-only memory since
    /// mark_rodata_ro(), before the trusted point). The authorize-patch that flips it is denied
    /// (AdversarialROKeyTests), but the session forgot the key's state with its last live site:
    /// retire every module with sites of the key, then load one of them again with those sites in
    /// the other state, and it was allowed — the sealed key "moved" by a retire and a reload, a
    /// state no kernel writes (the key's value never changed). A sealed key's state is now kept
    /// for the guest's lifetime, like the one-way SMP state.
    func testSealedKeyStateSurvivesTheRetireOfItsLastSite() throws {
        let probe = try FixtureGuest()
        try probe.loadAll()
        let (key, state, sites) = try keyOnlyIn("test_static_keys", probe)

        // The same guest, registered with the build's __ro_after_init bounds around that key (the
        // fixture's modules use no core key: the rule is the session's, whoever owns the key).
        let (verifier, session, boot, _) = try sealedGuest(key: key, state: state)

        // Control, in the probe (no sealed key): the other state after the retire is a legal load
        // (the key's value may have changed meanwhile: static_key_enable()).
        guard case .retireModuleReply = retire(probe.verifier, probe.session, "test_static_keys") else { return XCTFail("retire (probe)") }
        let other = try request(probe, "test_static_keys", key: key, sites: sites, state: 1 - state)
        let c = probe.verifier.authorize(other, requestDigest: [])
        XCTAssertEqual(c.decision, .allow, "the flipped claim is explained and legal for an unsealed key: \(c.message)")

        // The sealed key: the other state is denied, its own state still loads.
        let v = verifier.authorize(other, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "a sealed key's sites loaded in the other state after its last site retired: \(v.message)")
        XCTAssertEqual(v.reason, .keyStateMismatch, v.message)
        XCTAssertTrue(v.message.contains("ro_after_init"), v.message)
        XCTAssertNil(session.liveModule("test_static_keys")?.name, "the denied module is not live")
        let same = verifier.authorize(try boot.module("test_static_keys").request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(same.decision, .allow, same.message)
        XCTAssertEqual(session.state(ofKey: key), state)
    }

    /// Refuses every module verdict while `refusing` (an audit sink whose disk is full, under
    /// `audit-overflow block`): the verifier denies and rolls the commit back.
    final class RefusingSink: VerdictAuditSink, @unchecked Sendable {
        let lock = NSLock()
        var refusing = false
        func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool {
            lock.lock(); defer { lock.unlock() }
            return !refusing
        }
    }

    /// HOLE (review of round docs3): the sealed key's state was kept "until rollback of its
    /// recorder", and the recorder was a module *name*. Load test_static_keys (granted: it records
    /// the sealed key's state), retire it, load it again in the same state and have that commit
    /// rolled back (the audit sink refused the record, `audit-overflow block`): the rollback
    /// matched the recorder's name and forgot the state the first, granted, load established —
    /// then test_static_keys loaded with the key in the other state was allowed (the sealed key
    /// "moved"). The state now counts the commits that hold it and still stand; a rollback undoes
    /// only its own.
    func testRollingBackAReloadKeepsTheSealedStateOfTheGrantedLoad() throws {
        let probe = try FixtureGuest()
        try probe.loadAll()
        let (key, state, sites) = try keyOnlyIn("test_static_keys", probe)
        let other = try request(probe, "test_static_keys", key: key, sites: sites, state: 1 - state)

        let sink = RefusingSink()
        let (verifier, session, boot, reg) = try sealedGuest(key: key, state: state, sink: sink)

        // The reload in the same state is explained and committed, then the audit sink refuses it.
        sink.refusing = true
        let refused = verifier.authorize(try boot.module("test_static_keys").request(guestID: "g"), requestDigest: [])
        sink.refusing = false
        XCTAssertEqual(refused.reason, .auditUnrecorded, refused.message)
        XCTAssertNil(session.liveModule("test_static_keys")?.name, "rolled back")

        // The first load's state still stands: the other state is denied, the same state loads.
        let v = verifier.authorize(other, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "the sealed key moved after a rolled-back reload: \(v.message)")
        XCTAssertEqual(v.reason, .keyStateMismatch, v.message)
        XCTAssertTrue(v.message.contains("ro_after_init"), v.message)

        // A rollback of the only commit that ever held the key forgets it (its sites never ran):
        // a fresh guest whose first load of the module is refused by the sink then loads the
        // other state.
        let fresh = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        fresh.auditSink = sink
        guard Self.registerSealed(fresh, reg, key: key) else { return XCTFail("registered (fresh)") }
        for name in boot.availableModules where name != "test_static_keys" {
            XCTAssertEqual(fresh.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        sink.refusing = true
        XCTAssertEqual(fresh.authorize(try boot.module("test_static_keys").request(guestID: "g"), requestDigest: []).reason, .auditUnrecorded)
        sink.refusing = false
        let after = fresh.authorize(other, requestDigest: [])
        XCTAssertEqual(after.decision, .allow, "no granted load ever held the key: \(after.message)")
        XCTAssertEqual(fresh.guests.session("g")?.state(ofKey: key), 1 - state)
        XCTAssertEqual(verifier.authorize(try boot.module("test_static_keys").request(guestID: "g"), requestDigest: []).decision, .allow)
        XCTAssertEqual(session.state(ofKey: key), state)
    }

    /// Failed attack kept: trust.md "One copy of a kernel build's facts, shared by its guests":
    /// each guest keeps "its own facts … and its live state". Two guests of one build in one
    /// verifier (one shared copy); the guest interleaves its requests with the other's: a key
    /// flipped in g1 is not flipped in g2 (g2 still loads and patches from its own state), a
    /// module retired in g1 stays live and patchable in g2 (and only there), frames are per guest
    /// (the same frame numbers granted in both), and a reset of g1 between g2's judgement and the
    /// final verdict of g2's patch leaves g2's transition recorded.
    func testTwoGuestsOfOneBuildKeepTheirOwnLiveState() throws {
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        for id in ["g1", "g2"] {
            guard case .registerGuestReply = verifier.respond(to: .registerGuest(try boot.registration(guestID: id)), requestDigest: []) else { return XCTFail("register \(id)") }
        }
        XCTAssertEqual(verifier.guests.sharedBuilds.count, 1, "one copy of the build")
        func load(_ id: String, _ name: String) throws -> ExecGateWire.Verdict { verifier.authorize(try boot.module(name).request(guestID: id), requestDigest: []) }
        for name in boot.availableModules { XCTAssertEqual(try load("g1", name).decision, .allow, name) }
        let g1 = try XCTUnwrap(verifier.guests.session("g1"))
        var sites: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)] = []
        var key: UInt64 = 0
        for t in g1.runtimeSites where t.module == "test_static_keys" { for s in t.siteList where s.kind == .jumpLabel { if sites.isEmpty { key = s.key! }; if s.key == key { sites.append((t, s)) } } }
        XCTAssertFalse(sites.isEmpty)
        let state = try XCTUnwrap(g1.state(ofKey: key))
        func flip(_ to: UInt64) throws -> [PatchEntry] { try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: to))) } }
        func patch(_ id: String, _ e: [PatchEntry]) -> ExecGateWire.Verdict {
            verifier.authorizePatch(AuthorizePatch(guestID: id, patches: e), session: verifier.guests.session(id)!, requestDigest: [])
        }
        XCTAssertEqual(patch("g1", try flip(1 - state)).decision, .allow)
        XCTAssertEqual(g1.state(ofKey: key), 1 - state)
        // g2: the same modules, same frames, in the key's load state: its own session.
        for name in boot.availableModules { XCTAssertEqual(try load("g2", name).decision, .allow, "g2 \(name)") }
        let g2 = try XCTUnwrap(verifier.guests.session("g2"))
        XCTAssertEqual(g2.state(ofKey: key), state, "g1's flip is not g2's")
        // Retire in g1: g2's copy stays live and patchable; g1's patch of it is no live code.
        guard case .retireModuleReply = verifier.respond(to: .retireModule(RetireModule(guestID: "g1", moduleName: "test_static_keys", textBase: try XCTUnwrap(g1.liveModule("test_static_keys")?.textRange.lowerBound))), requestDigest: []) else { return XCTFail("retire in g1") }
        let inG1 = patch("g1", try flip(state))
        XCTAssertEqual(inG1.decision, .deny, inG1.message)
        XCTAssertTrue(inG1.message.contains("not in live code"), inG1.message)
        // g2's flip is judged; g1 is reset before its verdict is final: g2 records its own.
        guard case .allowed(_, _, let newStates, let staticKeys, let judgedAt) = g2.judgePatches(try flip(1 - state)) else { return XCTFail("g2's flip") }
        var reset = try boot.registration(guestID: "g1")
        reset.reset = true
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset g1") }
        g2.apply(newStates, staticKeys: staticKeys, judgedAt: judgedAt)
        XCTAssertEqual(g2.state(ofKey: key), 1 - state)
        XCTAssertNotNil(g2.liveModule("test_static_keys")?.name)
        XCTAssertEqual(verifier.guests.session("g1")?.allowedModules, [], "the reset guest starts empty")
        XCTAssertEqual(verifier.guests.sharedBuilds.first?.guests, 2, "both guests still on the one copy")
    }
}
