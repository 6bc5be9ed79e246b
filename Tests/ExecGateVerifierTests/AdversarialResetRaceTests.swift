// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review, round 8: a guest reset (register-guest with reset = 1: a reboot) racing a
// request of the old session. The guest chooses the timing of both (a module load on one vCPU, a
// reboot on another), so the VMM may send an authorize-module, then revoke every EXEC grant of the
// old session and send the reset, while the authorize is still being judged.
// Inputs: the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateELF
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import XCTest

/// The explainer, with `during` run after the explanation and before the verdict is committed:
/// the moment another request (here: a reset) lands while this one is judged.
private final class RacingJudge: EndStateJudge, @unchecked Sendable {
    // @unchecked: `during` is set once, before any request, and read under `lock`.
    private let lock = NIOLock()
    private var _during: (() -> Void)?
    var during: (() -> Void)? {
        get { lock.withLock { _during } }
        set { lock.withLock { _during = newValue } }
    }
    func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult {
        let r = ExplainerJudge().judge(elf: elf, moduleName: moduleName, request: request, session: session)
        during?()
        return r
    }
}

final class AdversarialResetRaceTests: XCTestCase {
    /// Attack: a module allowed into a session that a reset has already replaced. The verifier
    /// took the guest's session when the request arrived and committed the module to it at the
    /// end, with no test that the session was still the guest's: the reset landed in between
    /// (the VMM had revoked every grant of the old session and sent it), so the allow (grant base
    /// and frames, a facts digest the new boot may share: a nokaslr guest re-registers the same
    /// facts) reached the VMM after the revocation, for a session that no longer exists, and the
    /// module was live nowhere: the new session's overlap and frame checks never see the pages
    /// the VMM would grant. The kernel's side has no such window: a reboot ends every load.
    /// Now a session replaced by a reset (or removed) is ended under its lock, and a commit into
    /// an ended session is refused: the verdict is a deny (`policy.end-state-unavailable`: the
    /// facts it was judged against are gone), naming the reset. The same request in the new
    /// session is allowed.
    func testModuleJudgedAcrossAResetIsNotAllowed() throws {
        let judge = RacingJudge()
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()), endState: judge)
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var registration = try boot.registration(guestID: "g")
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(registration), requestDigest: [1]) else { return XCTFail("registered") }
        let old = try XCTUnwrap(verifier.guests.session("g"))
        registration.reset = true
        judge.during = {
            judge.during = nil
            guard case .registerGuestReply = verifier.respond(to: .registerGuest(registration), requestDigest: [1]) else { return XCTFail("reset") }
        }
        let name = try XCTUnwrap(boot.availableModules.first)
        let v = verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: [])
        let new = try XCTUnwrap(verifier.guests.session("g"))
        XCTAssertFalse(old === new, "the reset replaced the session")
        XCTAssertEqual(v.decision, .deny, "\(name) allowed into a session replaced by a reset: \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertTrue(v.message.contains("reset"), v.message)
        XCTAssertNil(v.grantBase, "no grant from an ended session")
        XCTAssertEqual(new.allowedModules, [])
        // Asked again, in the new session: allowed.
        let again = verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(again.decision, .allow, again.message)
        XCTAssertEqual(new.allowedModules, [name])
    }

    /// The same race for a run-time patch: an authorize-patch that took the guest's session before
    /// a reset and is judged after it. Before the fix a legal whole-key flip of a jump-label key
    /// was allowed against the old session (and its key state moved there). Now denied as above;
    /// the new session, which has no live module, knows no site there either.
    func testPatchJudgedAfterAResetIsNotAllowed() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let old = g.session
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(old.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        var reset = g.registration
        reset.reset = true
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset") }
        let v = g.verifier.authorizePatch(AuthorizePatch(guestID: "g", patches: flip), session: old, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "a patch judged in a session replaced by a reset: \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertEqual(old.state(ofKey: key), state, "the ended session's key state did not move")
        XCTAssertEqual(g.patch(flip).decision, .deny, "the new session has no such site")
    }

    /// Round 8. Attack: a guest id spelled with other bytes that Swift's `String` takes as equal
    /// (`g` + U+212A KELVIN SIGN for `gK`). The registry keyed guests by `String`, so an
    /// authorize-module for `g\u{212A}` was judged in `gK`'s session and its module committed to
    /// `gK`'s live set, and a reset naming `g\u{212A}` replaced `gK`'s session. A VMM that names
    /// guests after what its tenants chose would hand one tenant another's session. Guest ids
    /// are now held by their UTF-8 bytes: `g\u{212A}` is another guest (unknown until
    /// registered; registered, a session of its own).
    func testCanonicallyEquivalentGuestIDIsAnotherGuest() throws {
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(try boot.registration(guestID: "gK")), requestDigest: [1]) else { return XCTFail("registered") }
        let name = try XCTUnwrap(boot.availableModules.first)
        let twin = "g\u{212A}"
        guard case .error(let e) = verifier.respond(to: .authorizeModule(try boot.module(name).request(guestID: twin)), requestDigest: []) else {
            return XCTFail("a module for '\(twin)' was judged in gK's session (gK now holds \(verifier.guests.session("gK")?.allowedModules ?? []))")
        }
        XCTAssertEqual(e.code, .unknownGuest, e.message)
        XCTAssertEqual(verifier.guests.session("gK")?.allowedModules, [])
        XCTAssertNil(verifier.guests.session(twin))
        // Registered (no reset needed: it is not gK), it is a session of its own.
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(try boot.registration(guestID: twin)), requestDigest: [2]) else { return XCTFail("register \(twin)") }
        XCTAssertFalse(verifier.guests.session(twin) === verifier.guests.session("gK"))
        XCTAssertEqual(verifier.guests.count, 2)
    }
}
