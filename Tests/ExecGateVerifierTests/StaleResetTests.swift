// SPDX-License-Identifier: Apache-2.0
//
// A reset judged after the guest's session changed under it (a doc-driven review, 2026-12-07).
// A reset is stamped when it arrives and judged when a pool thread takes it up; in between, the
// session it was sent to replace may be gone. docs/protocol.md: a refused reset ends "the guest's
// current session" because its VMM revoked that session's grants before sending it — the session
// current when the reset ARRIVED. The verifier took the one current when it was JUDGED, so a
// stale reset of one VM, refused as documented, ended the next VM's live session as a side effect:
// its live modules forgotten while its EXEC grants stood, its next requests denied, and no
// `unknown-guest` to tell its VMM to restore. A reset that arrived before the id's current line
// began, or before a later reset that was accepted first, is refused and ends nothing.
// Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a.

import ExecGateCapture
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import XCTest

final class StaleResetTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x65, count: 32)

    func boot() throws -> CaptureBoot { try CaptureBoot.load(EndStateVerifierTests.bootDir) }

    func resetRequest(_ boot: CaptureBoot, _ id: String) throws -> RegisterGuest {
        var r = try registration(boot, id)
        r.reset = true
        return r
    }

    /// An allow in `v` for `module` in guest `id`'s session, judged now.
    func allow(_ v: Verifier, _ boot: CaptureBoot, _ module: String, _ id: String = "g",
               file: StaticString = #filePath, line: UInt = #line) throws {
        let verdict = v.authorize(try boot.module(module).request(guestID: id), requestDigest: [], arrival: v.guests.arrivalStamp())
        XCTAssertEqual(verdict.decision, .allow, "\(module): \(verdict.message)", file: file, line: line)
    }

    /// The review's sequence: VM-1's reset arrives, its removal (sent later) is judged first, a
    /// new VM-2 registers the id (a new line) and gets a module allowed, then the stale reset is
    /// judged. It is refused `unknown-guest` (it was before the fix too); now VM-2's session is
    /// untouched: still the guest's, not ended, its module live and retirable, its next module
    /// allowed, its charge unchanged. Refused for another reason first (implausible facts: the
    /// checks before the registry's lock), the same stale reset ends nothing either.
    func testAStaleResetRefusedLeavesTheNextVMsSession() throws {
        let boot = try boot()
        let v = try verifier()
        _ = try register(v, try registration(boot, "g"))
        let reset = try resetRequest(boot, "g")
        var implausible = reset
        implausible.kaslrSlide = 0x1000  // not a multiple of 2 MiB: implausible-facts
        let resetArrived = v.guests.arrivalStamp(), implausibleArrived = v.guests.arrivalStamp()
        guard case .removeGuestReply = v.respond(to: .removeGuest(RemoveGuest(guestID: "g")), requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("remove-guest")
        }
        let vm2 = try register(v, try registration(boot, "g"))
        let first = boot.availableModules[0]
        try allow(v, boot, first)
        XCTAssertEqual(vm2.liveModuleCount, 1)
        let charged = v.guests.chargedBytes

        for (request, arrived, code) in [(implausible, implausibleArrived, WireErrorCode.implausibleFacts), (reset, resetArrived, .unknownGuest)] {
            guard case .error(let e) = v.respond(to: .registerGuest(request), requestDigest: [], arrival: arrived) else {
                return XCTFail("a reset that arrived before the removal was accepted")
            }
            XCTAssertEqual(e.code, code, e.message)
            XCTAssertTrue(v.guests.session("g") === vm2, "the stale reset replaced VM-2's session")
            XCTAssertNil(vm2.endedMessage, "VM-2's session was ended by VM-1's stale reset")
            XCTAssertEqual(vm2.liveModuleCount, 1)
            XCTAssertEqual(v.guests.chargedBytes, charged)
        }
        try allow(v, boot, boot.availableModules[1])
        let base = try XCTUnwrap(try boot.module(first).request(guestID: "g").textBase)
        guard case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: first, textBase: base)),
                                                  requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("VM-2's module is no longer live")
        }
    }

    /// Two resets of one guest in flight, the later judged first: it is accepted; the earlier,
    /// judged after it, belongs to the boot the later one replaced. It used to be accepted too,
    /// replacing the newer session with the older boot's registration (or, refused, ending it);
    /// now it is refused `bad-request` and the newer session stands.
    func testAResetOvertakenByALaterAcceptedResetEndsNothing() throws {
        let boot = try boot()
        let v = try verifier()
        _ = try register(v, try registration(boot, "g"))
        var older = try resetRequest(boot, "g"), newer = try resetRequest(boot, "g")
        older.commandLine = "boot-1"
        newer.commandLine = "boot-2"
        let olderArrived = v.guests.arrivalStamp(), newerArrived = v.guests.arrivalStamp()
        guard case .registerGuestReply = v.respond(to: .registerGuest(newer), requestDigest: [], arrival: newerArrived) else {
            return XCTFail("the later reset was refused")
        }
        let current = try XCTUnwrap(v.guests.session("g"))
        try allow(v, boot, boot.availableModules[0])
        guard case .error(let e) = v.respond(to: .registerGuest(older), requestDigest: [], arrival: olderArrived) else {
            return XCTFail("the older reset replaced the session the later reset installed")
        }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertTrue(v.guests.session("g") === current)
        XCTAssertEqual(current.registration.commandLine, "boot-2")
        XCTAssertNil(current.endedMessage)
        XCTAssertEqual(current.liveModuleCount, 1)
        // A reset that arrives now (after the accepted one) resets as always.
        guard case .registerGuestReply = v.respond(to: .registerGuest(older), requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("a reset arriving after the current session was refused")
        }
        XCTAssertNotNil(current.endedMessage)
    }

    /// The honest order (a review of the first fix, which compared a reset's arrival with the
    /// session's installation instead of its registration's arrival): two resets in flight,
    /// judged in the order they arrived, the first installed only after the second arrived. The
    /// second still replaces the first's session (it is the newer boot's); refused, it ends it.
    func testResetsJudgedInArrivalOrderReplaceEachOtherHoweverLateTheFirstIsInstalled() throws {
        let boot = try boot()
        for refusedSecond in [false, true] {
            let v = try verifier()
            _ = try register(v, try registration(boot, "g"))
            var first = try resetRequest(boot, "g"), second = try resetRequest(boot, "g")
            first.commandLine = "boot-1"
            second.commandLine = "boot-2"
            if refusedSecond { second.kaslrSlide = 0x1000 }  // implausible-facts
            let firstArrived = v.guests.arrivalStamp(), secondArrived = v.guests.arrivalStamp()
            guard case .registerGuestReply = v.respond(to: .registerGuest(first), requestDigest: [], arrival: firstArrived) else {
                return XCTFail("the first reset was refused")
            }
            let s1 = try XCTUnwrap(v.guests.session("g"))
            try allow(v, boot, boot.availableModules[0])
            let reply = v.respond(to: .registerGuest(second), requestDigest: [], arrival: secondArrived)
            if refusedSecond {
                guard case .error(let e) = reply else { return XCTFail("an implausible reset was accepted") }
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
                XCTAssertTrue(v.guests.session("g") === s1)
                XCTAssertNotNil(s1.endedMessage, "the older boot's session stayed live after the newer boot's reset was refused")
                XCTAssertEqual(s1.liveBytes, 0)
            } else {
                guard case .registerGuestReply = reply else { return XCTFail("the newer reset was refused: \(reply)") }
                XCTAssertEqual(v.guests.session("g")?.registration.commandLine, "boot-2")
                XCTAssertNotNil(s1.endedMessage)
            }
        }
    }

    /// The other order (a second review): two resets in flight, the later refused (here
    /// implausible facts; untrusted-kernel or the budget alike) before the earlier is installed
    /// (the earlier still building its facts on another pool thread). The refusal ends the
    /// guest's session; the earlier reset, judged after, is of an older boot than the one the
    /// refused reset announced and is refused `bad-request`, never installed live to judge the
    /// newer boot's requests. A reset that arrived after the refused one is accepted.
    func testAnEarlierResetJudgedAfterALaterRefusedOneIsNotInstalled() throws {
        let boot = try boot()
        let v = try verifier()
        let s0 = try register(v, try registration(boot, "g"))
        var earlier = try resetRequest(boot, "g"), later = try resetRequest(boot, "g")
        earlier.commandLine = "boot-1"
        later.kaslrSlide = 0x1000  // implausible-facts
        let earlierArrived = v.guests.arrivalStamp(), laterArrived = v.guests.arrivalStamp()
        guard case .error(let refused) = v.respond(to: .registerGuest(later), requestDigest: [], arrival: laterArrived) else {
            return XCTFail("an implausible reset was accepted")
        }
        XCTAssertEqual(refused.code, .implausibleFacts, refused.message)
        XCTAssertNotNil(s0.endedMessage)
        guard case .error(let e) = v.respond(to: .registerGuest(earlier), requestDigest: [], arrival: earlierArrived) else {
            return XCTFail("the earlier boot's reset was installed after the later boot's reset was refused")
        }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertTrue(v.guests.session("g") === s0, "a session was installed for the earlier boot")
        let verdict = v.authorize(try boot.module(boot.availableModules[0]).request(guestID: "g"), requestDigest: [], arrival: v.guests.arrivalStamp())
        XCTAssertEqual(verdict.decision, .deny, "a request after the refused reset was judged in a live session")
        guard case .registerGuestReply = v.respond(to: .registerGuest(earlier), requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("a reset arriving after the refused one was refused")
        }
        try allow(v, boot, boot.availableModules[0])
    }

    /// A reset that arrived while the id had no session (it would register it), overtaken by a
    /// plain registration of the id judged first (a new line, born after the reset arrived): the
    /// reset is refused `unknown-guest` and does not replace that registration. This is also the
    /// check that holds when the removal history (`removedAt`, the last 4,096 removals) no longer
    /// remembers a removal between a reset's arrival and a new line's registration.
    func testAResetDoesNotReplaceALineBornAfterItArrived() throws {
        let boot = try boot()
        let v = try verifier()
        let reset = try resetRequest(boot, "g")
        let resetArrived = v.guests.arrivalStamp()
        let line = try register(v, try registration(boot, "g"))
        try allow(v, boot, boot.availableModules[0])
        guard case .error(let e) = v.respond(to: .registerGuest(reset), requestDigest: [], arrival: resetArrived) else {
            return XCTFail("a reset older than the guest's line replaced it")
        }
        XCTAssertEqual(e.code, .unknownGuest, e.message)
        XCTAssertTrue(v.guests.session("g") === line)
        XCTAssertNil(line.endedMessage)
        XCTAssertEqual(line.liveModuleCount, 1)
        // The registry alone, asked as the verifier asks it (nothing taken up to replace).
        guard case .refused(let code, _) = v.guests.register(reset, replacing: nil, arrivedAt: resetArrived) else {
            return XCTFail("the registry let a reset older than the line replace it")
        }
        XCTAssertEqual(code, .unknownGuest)
    }

    /// Unchanged: a refused reset that arrived in the guest's current session ends that session
    /// (its VMM revoked its grants before sending it: docs/protocol.md, register-guest `reset`).
    func testARefusedResetOfTheCurrentSessionStillEndsIt() throws {
        let boot = try boot()
        let v = try verifier()
        let s = try register(v, try registration(boot, "g"))
        try allow(v, boot, boot.availableModules[0])
        var implausible = try resetRequest(boot, "g")
        implausible.kaslrSlide = 0x1000
        guard case .error(let e) = v.respond(to: .registerGuest(implausible), requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("an implausible reset was accepted")
        }
        XCTAssertEqual(e.code, .implausibleFacts, e.message)
        XCTAssertTrue(v.guests.session("g") === s)
        XCTAssertNotNil(s.endedMessage)
        XCTAssertEqual(s.liveBytes, 0)
    }
}
