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
import ExecGateVerifier
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
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var reg = try boot.registration(guestID: "g")
        reg.symbols += [KernelSymbol(name: "__start_ro_after_init", address: key & ~0xfff, type: UInt8(ascii: "D"), exported: false),
                        KernelSymbol(name: "__end_ro_after_init", address: (key & ~0xfff) + 0x1000, type: UInt8(ascii: "D"), exported: false)]
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(reg), requestDigest: []) else { return XCTFail("registered") }
        for name in boot.availableModules {
            XCTAssertEqual(verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let session = try XCTUnwrap(verifier.guests.session("g"))
        XCTAssertEqual(session.state(ofKey: key), state)
        guard case .retireModuleReply = retire(verifier, session, "test_static_keys") else { return XCTFail("retire test_static_keys") }

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
}
