// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 11): run-time patches of a key the kernel can no longer change.
// A core static key (or static-call key) in `.data..ro_after_init` ([__start_ro_after_init,
// __end_ro_after_init), vmlinux.lds.h RO_AFTER_INIT_DATA) is read-only once mark_rodata_ro() ran,
// which is before the trusted point (the guest sealed its kernel): static_key_enable() /
// static_call_update() would write the key and fault. 6.12 says so outright: mark_readonly() →
// jump_label_init_ro() (kernel/jump_label.c) seals every such key, and jump_label_add_module()
// patches a module's sites of a sealed key once, at load (`goto do_poke`), and never links them.
// So no kernel ever patches such a key's module sites after load: an authorize-patch that moves
// one is a state no kernel reaches (docs/kernels/6.12-loader.md §7.2).

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class AdversarialROKeyTests: XCTestCase {
    /// HOLE: a whole-key flip of a core jump-label key lying in the kernel's __ro_after_init data
    /// was allowed (the patch rule asked only for legal encodings and the whole key).
    func testKeyInROAfterInitDataNeverMoves() throws {
        // The key: a jump-label key of the fixture's modules (every site of it moves). The
        // fixture's modules use no core key, so the registration below puts the bounds around a
        // module's key: the rule is the patch rule's, whatever the key's owner.
        let probe = try FixtureGuest()
        try probe.loadAll()
        let (key, sites) = try XCTUnwrap(probe.sitesByKey().filter { $0.value.allSatisfy { $0.site.kind == .jumpLabel } }
                                            .min { ($0.value.count, $0.key) < ($1.value.count, $1.key) }, "a jump-label key")
        let state = try XCTUnwrap(probe.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }

        // The same guest, registered with the build's __ro_after_init bounds around that key.
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        // (A module's key: set on the session's facts, DocAttack3SessionTests.registerSealed.)
        let r = try boot.registration(guestID: "g")
        guard DocAttack3SessionTests.registerSealed(verifier, r, key: key) else { return XCTFail("registered") }
        for name in boot.availableModules {
            XCTAssertEqual(verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let session = try XCTUnwrap(verifier.guests.session("g"))
        XCTAssertEqual(session.state(ofKey: key), state)
        let v = verifier.authorizePatch(AuthorizePatch(guestID: "g", patches: flip), session: session, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .patchNotAllowed)
        XCTAssertTrue(v.message.contains("ro_after_init"), v.message)
        XCTAssertEqual(session.state(ofKey: key), state)
        // Without the bounds (the probe's registration) the flip is the legal whole-key move.
        XCTAssertEqual(probe.patch(flip).decision, .allow)
    }
}
