// SPDX-License-Identifier: Apache-2.0
//
// A reset that names the session it replaces (register-guest `session`, tag 0x8020; protocol.md
// register-guest "Session tokens"). A reset's arrival orders it only against what its own
// connection carried, so a reset of one VM read late may land on the next VM's session
// (StaleResetTests covers what arrival can tell). Its token says which session's grants its VMM
// revoked: it replaces that session, or, refused, ends that session, and touches no other — a
// replaced one's token, another guest's, one of a removed line, or a guest no longer registered.
// Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a.

import ExecGateCapture
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import XCTest

final class ResetTokenTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x66, count: 32)

    func boot() throws -> CaptureBoot { try CaptureBoot.load(EndStateVerifierTests.bootDir) }

    /// Guest `id`'s reset naming session `token`.
    func reset(_ boot: CaptureBoot, _ id: String = "g", naming token: UInt64?) throws -> RegisterGuest {
        var r = try registration(boot, id)
        r.reset = true
        r.session = token
        return r
    }

    func respond(_ v: Verifier, _ r: RegisterGuest) -> Message {
        v.respond(to: .registerGuest(r), requestDigest: [], arrival: v.guests.arrivalStamp())
    }

    func allow(_ v: Verifier, _ boot: CaptureBoot, _ module: String, _ id: String = "g",
               file: StaticString = #filePath, line: UInt = #line) throws {
        let verdict = v.authorize(try boot.module(module).request(guestID: id), requestDigest: [], arrival: v.guests.arrivalStamp())
        XCTAssertEqual(verdict.decision, .allow, "\(module): \(verdict.message)", file: file, line: line)
    }

    /// The honest case: a reset naming the guest's current session replaces it (its modules go,
    /// the new session is the next of the line). Refused (implausible facts), it ends that session.
    func testAResetNamingTheCurrentSessionReplacesItOrRefusedEndsIt() throws {
        let boot = try boot()
        for refused in [false, true] {
            let v = try verifier()
            let s1 = try register(v, try registration(boot, "g"))
            try allow(v, boot, boot.availableModules[0])
            var r = try reset(boot, naming: s1.token)
            if refused { r.kaslrSlide = 0x1000 }  // not a multiple of 2 MiB: implausible-facts
            let reply = respond(v, r)
            if refused {
                guard case .error(let e) = reply else { return XCTFail("an implausible reset was accepted") }
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
                XCTAssertTrue(v.guests.session("g") === s1)
            } else {
                guard case .registerGuestReply(let rr) = reply else { return XCTFail("a reset naming the current session was refused: \(reply)") }
                XCTAssertEqual(rr.session, s1.token + 1)
                XCTAssertEqual(v.guests.session("g")?.token, s1.token + 1)
                try allow(v, boot, boot.availableModules[0])
            }
            XCTAssertNotNil(s1.endedMessage)
            XCTAssertEqual(s1.liveBytes, 0)
        }
    }

    /// A reset naming a session further back than the one the current session replaced (the
    /// VMM's reset of boot 1, naming session 1, read after its resets naming sessions 1 and 2 were
    /// both accepted, on another connection: it was sent before the VMM had session 2's token) is
    /// refused `bad-request` and ends nothing: the newest session stands with its module. Refused
    /// first for another reason (implausible facts), it ends nothing either.
    func testAResetNamingASessionFurtherBackIsRefusedAndEndsNothing() throws {
        let boot = try boot()
        let v = try verifier()
        let s1 = try register(v, try registration(boot, "g"))
        guard case .registerGuestReply(let r2) = respond(v, try reset(boot, naming: s1.token)), let t2 = r2.session,
              case .registerGuestReply = respond(v, try reset(boot, naming: t2)) else { return XCTFail("two resets") }
        let s3 = try XCTUnwrap(v.guests.session("g"))
        try allow(v, boot, boot.availableModules[0])
        let charged = v.guests.chargedBytes
        var stale = try reset(boot, naming: s1.token)
        stale.commandLine = "boot-1"
        var implausible = stale
        implausible.kaslrSlide = 0x1000
        for (r, code) in [(stale, WireErrorCode.badRequest), (implausible, .implausibleFacts)] {
            guard case .error(let e) = respond(v, r) else { return XCTFail("a reset naming a session two back was accepted") }
            XCTAssertEqual(e.code, code, e.message)
            XCTAssertTrue(v.guests.session("g") === s3)
            XCTAssertNil(s3.endedMessage, "a reset naming an older session ended the current one")
            XCTAssertEqual(s3.liveModuleCount, 1)
            XCTAssertEqual(v.guests.chargedBytes, charged)
        }
        guard case .error(let e) = respond(v, stale) else { return XCTFail("stale") }
        XCTAssertTrue(e.message.contains("already replaced") && e.message.contains("0x" + String(s3.token, radix: 16)), e.message)
        try allow(v, boot, boot.availableModules[1])
    }

    /// Two resets in flight naming one session (the guest rebooted again before the first
    /// reset's reply; or a reset retried after its reply was lost), judged in arrival order: the
    /// first installs a session; the second arrived after that session's registration and names
    /// the session it replaced, so it is the newer boot's and replaces it, or, refused, ends it —
    /// the arrival rule of two token-less resets (a review of the change: refused as stale, it
    /// left the older boot's session live). Judged before the first, the same reset of a session
    /// registered after it arrived is refused as of an older boot.
    func testTwoResetsNamingOneSessionJudgedInArrivalOrderReplaceEachOther() throws {
        let boot = try boot()
        for refusedSecond in [false, true] {
            let v = try verifier()
            let s0 = try register(v, try registration(boot, "g"))
            var first = try reset(boot, naming: s0.token), second = try reset(boot, naming: s0.token)
            first.commandLine = "boot-1"
            second.commandLine = "boot-2"
            if refusedSecond { second.kaslrSlide = 0x1000 }
            let firstArrived = v.guests.arrivalStamp(), secondArrived = v.guests.arrivalStamp()
            guard case .registerGuestReply = v.respond(to: .registerGuest(first), requestDigest: [], arrival: firstArrived) else {
                return XCTFail("the first reset")
            }
            let s1 = try XCTUnwrap(v.guests.session("g"))
            try allow(v, boot, boot.availableModules[0])
            let reply = v.respond(to: .registerGuest(second), requestDigest: [], arrival: secondArrived)
            if refusedSecond {
                guard case .error(let e) = reply else { return XCTFail("implausible accepted") }
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
                XCTAssertTrue(v.guests.session("g") === s1)
                XCTAssertNotNil(s1.endedMessage, "the older boot's session stayed live after the newer boot's reset was refused")
                XCTAssertEqual(s1.liveBytes, 0)
            } else {
                guard case .registerGuestReply(let rr) = reply else { return XCTFail("the newer boot's reset was refused: \(reply)") }
                XCTAssertEqual(rr.session, s1.token + 1)
                XCTAssertEqual(v.guests.session("g")?.registration.commandLine, "boot-2")
                XCTAssertNotNil(s1.endedMessage)
            }
        }
        // A session registered after the reset arrived is not one it is of.
        let v = try verifier()
        let s0 = try register(v, try registration(boot, "g"))
        let late = try reset(boot, naming: s0.token)
        let lateArrived = v.guests.arrivalStamp()
        guard case .registerGuestReply = respond(v, try reset(boot, naming: s0.token)) else { return XCTFail("reset") }
        let s1 = try XCTUnwrap(v.guests.session("g"))
        guard case .error(let e) = v.respond(to: .registerGuest(late), requestDigest: [], arrival: lateArrived) else {
            return XCTFail("a reset that arrived before the session it would replace was registered replaced it")
        }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertNil(s1.endedMessage)
    }

    /// Three resets in flight naming one session (the guest rebooted three times before any
    /// reply), judged in arrival order: each replaces the session the one before it installed,
    /// and the third, refused, ends the second's (a second review: a rule that took only the
    /// current session's predecessor as "in flight" refused the third as stale and left boot 2's
    /// session live while boot 3 ran). Judged newest first, the newest installs and the two older
    /// are refused `bad-request`, ending nothing.
    func testThreeResetsNamingOneSessionAreOrderedByArrival() throws {
        let boot = try boot()
        for refusedThird in [false, true] {
            let v = try verifier()
            let s0 = try register(v, try registration(boot, "g"))
            var resets = try (1...3).map { n -> RegisterGuest in
                var r = try reset(boot, naming: s0.token)
                r.commandLine = "boot-\(n)"
                return r
            }
            if refusedThird { resets[2].kaslrSlide = 0x1000 }
            let stamps = resets.map { _ in v.guests.arrivalStamp() }
            for i in 0..<2 {
                guard case .registerGuestReply = v.respond(to: .registerGuest(resets[i]), requestDigest: [], arrival: stamps[i]) else {
                    return XCTFail("reset \(i + 1) was refused")
                }
            }
            let s2 = try XCTUnwrap(v.guests.session("g"))
            XCTAssertEqual(s2.registration.commandLine, "boot-2")
            try allow(v, boot, boot.availableModules[0])
            let reply = v.respond(to: .registerGuest(resets[2]), requestDigest: [], arrival: stamps[2])
            if refusedThird {
                guard case .error(let e) = reply else { return XCTFail("implausible accepted") }
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
                XCTAssertNotNil(s2.endedMessage, "boot 2's session stayed live after boot 3's reset was refused")
                XCTAssertEqual(s2.liveBytes, 0)
            } else {
                guard case .registerGuestReply = reply else { return XCTFail("boot 3's reset was refused: \(reply)") }
                XCTAssertEqual(v.guests.session("g")?.registration.commandLine, "boot-3")
                XCTAssertNotNil(s2.endedMessage)
            }
        }
        let v = try verifier()
        let s0 = try register(v, try registration(boot, "g"))
        let resets = try (1...3).map { _ in try reset(boot, naming: s0.token) }
        let stamps = resets.map { _ in v.guests.arrivalStamp() }
        guard case .registerGuestReply = v.respond(to: .registerGuest(resets[2]), requestDigest: [], arrival: stamps[2]) else {
            return XCTFail("the newest reset")
        }
        let newest = try XCTUnwrap(v.guests.session("g"))
        for i in [1, 0] {
            guard case .error(let e) = v.respond(to: .registerGuest(resets[i]), requestDigest: [], arrival: stamps[i]) else {
                return XCTFail("an older boot's reset replaced the newest")
            }
            XCTAssertEqual(e.code, .badRequest, e.message)
            XCTAssertTrue(v.guests.session("g") === newest)
            XCTAssertNil(newest.endedMessage)
        }
    }

    /// Resets in flight naming different tokens (a third review of the rule): R1 and R2 name
    /// T0; R1's reply (T1) reaches the VMM, which names T1 in R3; or R2 names nothing. Judged in
    /// arrival order, R3 is of the newer boot and replaces, or refused ends, R2's session (the
    /// rule took only the name of the reset that installed the current session: R3 was refused
    /// as stale and boot 2's session stayed live). Judged before R2, R3 installs and R2 (an
    /// older boot's) is refused.
    func testResetsInFlightNamingTokensTheVMMReceivedMeanwhile() throws {
        let boot = try boot()
        for (middleNames, refusedLast, lastFirst) in [(true, false, false), (true, true, false), (false, false, false), (false, true, false), (true, false, true), (false, false, true)] {
            let what = "R2 \(middleNames ? "names T0" : "names none"), R3 \(refusedLast ? "refused" : "accepted"), \(lastFirst ? "R3 before R2" : "arrival order")"
            let v = try verifier()
            let s0 = try register(v, try registration(boot, "g"))
            var r1 = try reset(boot, naming: s0.token), r2 = try reset(boot, naming: middleNames ? s0.token : nil)
            r1.commandLine = "boot-1"
            r2.commandLine = "boot-2"
            let a1 = v.guests.arrivalStamp(), a2 = v.guests.arrivalStamp()
            guard case .registerGuestReply(let reply1) = v.respond(to: .registerGuest(r1), requestDigest: [], arrival: a1), let t1 = reply1.session else {
                return XCTFail("\(what): R1")
            }
            var r3 = try reset(boot, naming: middleNames ? t1 : s0.token)
            r3.commandLine = "boot-3"
            if refusedLast { r3.kaslrSlide = 0x1000 }
            let a3 = v.guests.arrivalStamp()
            if lastFirst {
                guard case .registerGuestReply = v.respond(to: .registerGuest(r3), requestDigest: [], arrival: a3) else { return XCTFail("\(what): R3") }
                guard case .error(let e) = v.respond(to: .registerGuest(r2), requestDigest: [], arrival: a2) else {
                    return XCTFail("\(what): boot 2's reset replaced boot 3's session")
                }
                XCTAssertEqual(e.code, .badRequest, "\(what): \(e.message)")
                XCTAssertEqual(v.guests.session("g")?.registration.commandLine, "boot-3", what)
                XCTAssertNil(v.guests.session("g")?.endedMessage, what)
                continue
            }
            guard case .registerGuestReply = v.respond(to: .registerGuest(r2), requestDigest: [], arrival: a2) else { return XCTFail("\(what): R2") }
            let s2 = try XCTUnwrap(v.guests.session("g"))
            let reply3 = v.respond(to: .registerGuest(r3), requestDigest: [], arrival: a3)
            if refusedLast {
                guard case .error(let e) = reply3 else { return XCTFail("\(what): implausible accepted") }
                XCTAssertEqual(e.code, .implausibleFacts, "\(what): \(e.message)")
                XCTAssertNotNil(s2.endedMessage, "\(what): boot 2's session stayed live after boot 3's reset was refused")
            } else {
                guard case .registerGuestReply = reply3 else { return XCTFail("\(what): boot 3's reset was refused: \(reply3)") }
                XCTAssertEqual(v.guests.session("g")?.registration.commandLine, "boot-3", what)
            }
        }
    }

    /// A seeded model of one VMM's resets of one guest on one connection, the server judging
    /// them in any order (a pool takes them up as it likes): the VMM sends a reset naming the
    /// latest token of the replies it has read (or, at random, none; some resets carry
    /// implausible facts), reads replies whenever, and the server judges queued resets in a
    /// random order. However it interleaves, once every reset is judged the guest's session is
    /// the last-sent reset's when that one was accepted, and is ended when it was refused: never
    /// an older boot's session live. 400 runs of up to 6 resets.
    func testResetsOfOneConnectionJudgedInAnyOrderLeaveTheNewestBootsSession() throws {
        let boot = try boot()
        let base = try registration(boot, "g")
        var rng = SeededRNG(seed: 0x5E55_1011)
        for run in 0..<400 {
            let v = try verifier()
            let s0 = try register(v, base)
            var latest = s0.token
            var unread: [UInt64] = []
            var queue: [(RegisterGuest, UInt64)] = []
            var sent = 0
            let count = 2 + rng.below(5)
            var last: RegisterGuest?
            var trace: [String] = []
            while sent < count || !queue.isEmpty {
                switch rng.below(3) {
                case 0 where sent < count:
                    var r = base
                    r.reset = true
                    r.session = rng.below(4) == 0 ? nil : latest
                    r.commandLine = "boot-\(sent + 1)"
                    if rng.below(4) == 0 { r.kaslrSlide = 0x1000 }
                    queue.append((r, v.guests.arrivalStamp()))
                    last = r
                    sent += 1
                    trace.append("send \(r.commandLine) naming \(r.session.map { String($0, radix: 16) } ?? "none")\(r.kaslrSlide == 0 ? "" : " implausible")")
                case 1 where !unread.isEmpty:
                    latest = max(latest, unread.remove(at: rng.below(unread.count)))
                    trace.append("read a reply: latest \(String(latest, radix: 16))")
                default:
                    guard !queue.isEmpty else { continue }
                    let (r, a) = queue.remove(at: rng.below(queue.count))
                    let reply = v.respond(to: .registerGuest(r), requestDigest: [], arrival: a)
                    if case .registerGuestReply(let rr) = reply, let t = rr.session { unread.append(t) }
                    trace.append("judge \(r.commandLine): \({ if case .error(let e) = reply { return "\(e.code)" }; return "registered" }())")
                }
            }
            let current = try XCTUnwrap(v.guests.session("g"))
            let newest = try XCTUnwrap(last)
            if newest.kaslrSlide == 0 {
                XCTAssertEqual(current.registration.commandLine, newest.commandLine, "run \(run): \(trace)")
                XCTAssertNil(current.endedMessage, "run \(run): \(trace)")
            } else {
                XCTAssertNotNil(current.endedMessage, "run \(run): an older boot's session is live after the newest boot's reset was refused: \(trace)")
            }
        }
    }

    /// A reset naming another guest's session, a token of the guest's line not issued yet, or a
    /// session of the id's earlier line (removed, registered again: another VM's): `bad-request`,
    /// nothing registered, no session ended. A reset naming a session of an id no longer
    /// registered: `unknown-guest`, and the id stays unregistered (without a token such a reset
    /// registers it).
    func testAResetNamingASessionNotTheGuestsIsRefused() throws {
        let boot = try boot()
        let v = try verifier()
        let g1 = try register(v, try registration(boot, "g"))
        let h = try register(v, try registration(boot, "h"))
        for t in [h.token, g1.token + 1] {
            guard case .error(let e) = respond(v, try reset(boot, naming: t)) else { return XCTFail("reset naming \(t) accepted") }
            XCTAssertEqual(e.code, .badRequest, e.message)
            XCTAssertTrue(e.message.contains("not issued to the guest's current line"), e.message)
            XCTAssertTrue(v.guests.session("g") === g1)
            XCTAssertNil(g1.endedMessage)
            XCTAssertNil(h.endedMessage)
        }
        guard case .removeGuestReply = v.respond(to: .removeGuest(RemoveGuest(guestID: "g")), requestDigest: [], arrival: v.guests.arrivalStamp()) else {
            return XCTFail("remove-guest")
        }
        guard case .error(let gone) = respond(v, try reset(boot, naming: g1.token)) else { return XCTFail("a reset of a removed guest registered it") }
        XCTAssertEqual(gone.code, .unknownGuest, gone.message)
        XCTAssertNil(v.guests.session("g"))
        let g2 = try register(v, try registration(boot, "g"))
        try allow(v, boot, boot.availableModules[0])
        guard case .error(let old) = respond(v, try reset(boot, naming: g1.token)) else { return XCTFail("the earlier line's reset replaced the new line") }
        XCTAssertEqual(old.code, .badRequest, old.message)
        XCTAssertTrue(v.guests.session("g") === g2)
        XCTAssertNil(g2.endedMessage)
        XCTAssertEqual(g2.liveModuleCount, 1)
        // The registry alone, asked as the verifier asks it, refuses it the same way.
        guard case .refused(let code, _) = v.guests.register(try reset(boot, naming: g1.token), replacing: nil, arrivedAt: v.guests.arrivalStamp()) else {
            return XCTFail("the registry installed a reset naming another line's session")
        }
        XCTAssertEqual(code, .badRequest)
    }

    /// A session registered with `require_session = 1` requires its reset to name it: a reset
    /// without a token is refused `bad-request` and ends nothing (its VMM names the session in
    /// its resets: a token-less one, say another VM's read late, is not of it); one naming it is
    /// accepted.
    func testASessionRequiringTokensRequiresItsResetToNameIt() throws {
        let boot = try boot()
        let v = try verifier()
        var r = try registration(boot, "g")
        r.requireSession = true
        let s = try register(v, r)
        guard case .error(let e) = respond(v, try reset(boot, naming: nil)) else { return XCTFail("a token-less reset of a session requiring tokens was accepted") }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertTrue(e.message.contains("require_session=1") && e.message.contains("0x" + String(s.token, radix: 16)), e.message)
        XCTAssertTrue(v.guests.session("g") === s)
        XCTAssertNil(s.endedMessage, "a token-less reset ended a session that requires tokens")
        guard case .registerGuestReply(let rr) = respond(v, try reset(boot, naming: s.token)) else { return XCTFail("the reset naming the session") }
        XCTAssertEqual(rr.session, s.token + 1)
        try allow(v, boot, boot.availableModules[0])
    }

    /// Two resets naming one session, both in flight, the later refused first (its refusal ends
    /// the session): the earlier, naming the same session, is still of an older boot by its
    /// arrival and is refused, never installed live (the arrival checks hold beside the token).
    func testTwoResetsNamingOneSessionKeepTheArrivalRule() throws {
        let boot = try boot()
        let v = try verifier()
        let s0 = try register(v, try registration(boot, "g"))
        let earlier = try reset(boot, naming: s0.token)
        var later = try reset(boot, naming: s0.token)
        later.kaslrSlide = 0x1000
        let earlierArrived = v.guests.arrivalStamp(), laterArrived = v.guests.arrivalStamp()
        guard case .error(let refused) = v.respond(to: .registerGuest(later), requestDigest: [], arrival: laterArrived) else { return XCTFail("implausible") }
        XCTAssertEqual(refused.code, .implausibleFacts)
        XCTAssertNotNil(s0.endedMessage)
        guard case .error(let e) = v.respond(to: .registerGuest(earlier), requestDigest: [], arrival: earlierArrived) else {
            return XCTFail("the earlier boot's reset was installed after the later boot's reset was refused")
        }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertTrue(v.guests.session("g") === s0)
    }
}
