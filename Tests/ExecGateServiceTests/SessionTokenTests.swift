// SPDX-License-Identifier: Apache-2.0
//
// Session tokens (docs/protocol.md, register-guest "Session tokens"): the server orders a guest's
// requests against its reset only by what one connection carries (arrival stamps). A request of
// the old boot that the server had not read when the reset landed, on another connection, is
// indistinguishable by its arrival from one of the new boot. A session request that echoes the
// token of the session it belongs to is judged by the token, whatever connection carried it and
// whenever it was read.
//
// Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a
// (ResetFixture: the fixture boot's guest "g", its reset, irqbypass's load request).

import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class SessionTokenTests: XCTestCase {
    /// The value of a top-level u64 field `tag` of a body, read by hand (nil: absent or not 8 bytes).
    static func u64Field(_ body: ByteBuffer, tag: UInt16) -> UInt64? {
        var b = body
        while let t = b.readInteger(as: UInt16.self), let len = b.readInteger(as: UInt32.self), var v = b.readSlice(length: Int(len)) {
            if t == tag { return len == 8 ? v.readInteger(as: UInt64.self) : nil }
        }
        return nil
    }

    /// `body` with a `session` field appended by hand: tag 0x8020 (critical), length `length`,
    /// the token big-endian in its last `length` bytes (the ascending tag order puts it last).
    static func withToken(_ body: ByteBuffer, _ token: UInt64, length: UInt32 = 8) -> ByteBuffer {
        var b = body
        b.writeInteger(UInt16(0x8020))
        b.writeInteger(length)
        var full = ByteBuffer()
        full.writeInteger(token)
        b.writeBytes(Array(buffer: full).suffix(Int(length)))
        return b
    }

    /// Ask one frame on `peer` and decode its reply (the raw frame too).
    static func ask(_ peer: SocketPeer, _ frame: Frame) -> (Frame, Message)? {
        var wire = ByteBuffer()
        wire.writeFrame(frame)
        guard peer.writeAll(Array(buffer: wire)), let f = peer.readFrame(timeout: 60), let m = try? Message(type: f.type, body: f.body) else { return nil }
        return (f, m)
    }

    /// HOLE: protocol.md register-guest: the server orders a guest's requests against its reset
    /// only by what one connection carries, so "an old-boot request not yet read on another
    /// connection when the reset lands is judged in the new session" and changes it. The old
    /// boot's authorize-module of irqbypass, sent on connection B but not read by the server
    /// until the reset on connection A was answered (written here after that reply: to the server
    /// the same as bytes still in B's socket), was allowed and committed in the new boot's session,
    /// with a grant of the old boot's frames; the VMM had no way to say which session it belongs
    /// to. It now echoes the session token of the registration it belongs to (register-guest-reply
    /// tag 5, request tag 0x8020): a replaced session's token is judged as a request of a replaced
    /// session is, denied `policy.end-state-unavailable`, and the new session is untouched.
    func testAnOldBootLoadReadAfterTheResetOnAnotherConnectionIsDeniedByItsToken() async throws {
        let f = try ResetFixture()
        let (server, path) = try await ResetFixture.serve(f.verifier)
        let a = try XCTUnwrap(SocketPeer(path: path))
        let b = try XCTUnwrap(SocketPeer(path: path))

        guard let (regFrame, reg) = Self.ask(a, Message.registerGuest(f.registration).frame(requestID: 1)), case .registerGuestReply = reg else {
            await server.shutdown()
            return XCTFail("registration")
        }
        let oldToken = Self.u64Field(regFrame.body, tag: 5)
        XCTAssertNotNil(oldToken, "register-guest-reply carries no session token (tag 5)")
        // The old boot's load, carrying its session's token; held unread while the guest reboots.
        let oldLoad = Frame(type: .authorizeModule, requestID: 2,
                            body: Self.withToken(Message.authorizeModule(f.request).encodeBody(), oldToken ?? 1))

        // The guest rebooted: the VMM revoked the old session's grants and sends the reset on A.
        guard let (resetFrame, rst) = Self.ask(a, Message.registerGuest(f.reset).frame(requestID: 3)), case .registerGuestReply = rst else {
            await server.shutdown()
            return XCTFail("reset")
        }
        let newToken = Self.u64Field(resetFrame.body, tag: 5)
        XCTAssertNotNil(newToken, "the reset's register-guest-reply carries no session token")
        XCTAssertNotEqual(oldToken, newToken, "the reset's session has the replaced session's token")

        // Only now does the server read B.
        guard let (_, reply) = Self.ask(b, oldLoad) else {
            await server.shutdown()
            return XCTFail("no reply on B")
        }
        guard case .verdict(let v) = reply else {
            await server.shutdown()
            return XCTFail("the old boot's load with its token got no verdict: \(reply)")
        }
        XCTAssertEqual(v.decision, .deny, "the old boot's load, carrying the replaced session's token, was judged in the new session (grant of frames \(v.grantFrames)): \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertEqual(v.grantFrames, [])
        XCTAssertEqual(f.verifier.guests.session("g")?.allowedModules, [], "the old boot's module is live in the new session")

        // The new boot's load on B, carrying the new token: judged in the new session, allowed.
        let newLoad = Frame(type: .authorizeModule, requestID: 4,
                            body: Self.withToken(Message.authorizeModule(f.request).encodeBody(), newToken ?? 2))
        guard let (_, again) = Self.ask(b, newLoad), case .verdict(let allowed) = again else {
            await server.shutdown()
            return XCTFail("no verdict for the new boot's load")
        }
        XCTAssertEqual(allowed.decision, .allow, allowed.message)
        await server.shutdown()
    }

    /// The wire layout: each session request carries the token last (tag 0x8020, length 8, u64
    /// big-endian: ascending tag order), decodes to what was encoded, and encodes as before
    /// without one (the golden vectors stay byte-identical); register-guest-reply tag 5.
    func testTokensRoundTripLastInTheBody() throws {
        let t: UInt64 = 0x0000_0100_0000_0002
        let messages: [Message] = [
            .authorizeModule(AuthorizeModule(guestID: "g", module: ByteBuffer(bytes: [1, 2, 3]), moduleName: "m", session: t)),
            .authorizePatch(AuthorizePatch(guestID: "g", address: 0xffff_ffff_c000_0000, bytes: [0x90], session: t)),
            .authorizePatch(AuthorizePatch(guestID: "g", patches: [PatchEntry(address: 1, bytes: [0x90]), PatchEntry(address: 2, bytes: [0x90])], session: t)),
            .retireModule(RetireModule(guestID: "g", moduleName: "m", textBase: 0x1000, session: t)),
            .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "m", initBase: 0xffff_ffff_c200_0000, session: t)),
        ]
        for m in messages {
            let body = m.encodeBody()
            XCTAssertEqual(Array(Array(buffer: body).suffix(14)), [0x80, 0x20, 0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 2], "\(m.type)")
            XCTAssertEqual(try Message(type: m.type, body: body), m)
            XCTAssertEqual(Self.u64Field(body, tag: 0x8020), t)
        }
        let plain = Message.retireModule(RetireModule(guestID: "g", moduleName: "m", textBase: 0x1000)).encodeBody()
        XCTAssertNil(Self.u64Field(plain, tag: 0x8020))
        let reply = Message.registerGuestReply(RegisterGuestReply(guestID: "g", symbolCount: 1, session: t))
        XCTAssertEqual(Self.u64Field(reply.encodeBody(), tag: 5), t)
        XCTAssertEqual(try Message(type: .registerGuestReply, body: reply.encodeBody()), reply)
    }

    /// The same old-boot load without a token keeps the documented arrival rule (protocol.md
    /// register-guest: a token-less request the server had not read when the reset landed, on
    /// another connection, is judged in the new session): the residual a token-less VMM avoids
    /// only by sending the reset on the connection that carried the guest's requests.
    func testWithoutATokenAnOldBootLoadReadAfterTheResetIsJudgedByArrivalAsDocumented() async throws {
        let f = try ResetFixture()
        let (server, path) = try await ResetFixture.serve(f.verifier)
        let a = try XCTUnwrap(SocketPeer(path: path))
        let b = try XCTUnwrap(SocketPeer(path: path))
        guard case .registerGuestReply? = Self.ask(a, Message.registerGuest(f.registration).frame(requestID: 1))?.1,
              case .registerGuestReply? = Self.ask(a, Message.registerGuest(f.reset).frame(requestID: 2))?.1,
              case .verdict(let v)? = Self.ask(b, Message.authorizeModule(f.request).frame(requestID: 3))?.1 else {
            await server.shutdown()
            return XCTFail("registration, reset, load")
        }
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(f.verifier.guests.session("g")?.allowedModules, [f.name])
        await server.shutdown()
    }

    /// Malformed `session` fields are refused at decode with `malformed-body` naming the field:
    /// not 8 bytes, 0, twice, in an authorize-module without a guest; `require_session` other than
    /// 0 or 1. Nothing is judged and the session is untouched.
    func testMalformedTokensAreRefusedNamingTheField() async throws {
        let f = try ResetFixture()
        let (server, path) = try await ResetFixture.serve(f.verifier)
        let a = try XCTUnwrap(SocketPeer(path: path))
        guard let (regFrame, reg) = Self.ask(a, Message.registerGuest(f.registration).frame(requestID: 1)), case .registerGuestReply(let r) = reg,
              let token = r.session else {
            await server.shutdown()
            return XCTFail("registration with a token")
        }
        XCTAssertEqual(Self.u64Field(regFrame.body, tag: 5), token)
        let load = Message.authorizeModule(f.request).encodeBody()
        let retire = Message.retireModule(RetireModule(guestID: "g", moduleName: f.name, textBase: 0xffff_ffff_c000_0000)).encodeBody()
        var noGuest = f.request
        noGuest.guestID = ""
        let cases: [(String, MessageType, ByteBuffer, String, String)] = [
            ("4-byte token", .authorizeModule, Self.withToken(load, token, length: 4), "authorize-module.session", "bad-integer-width"),
            ("9-byte token", .retireModule, { var b = retire; b.writeInteger(UInt16(0x8020)); b.writeInteger(UInt32(9)); b.writeInteger(token); b.writeInteger(UInt8(0)); return b }(),
             "retire-module.session", "bad-integer-width"),
            ("token 0", .authorizeModule, Self.withToken(load, 0), "authorize-module.session", "invalid-value"),
            ("two tokens", .retireModule, Self.withToken(Self.withToken(retire, token), token), "retire-module", "duplicate-field"),
            ("a token without a guest", .authorizeModule, Self.withToken(Message.authorizeModule(noGuest).encodeBody(), token), "authorize-module.session", "invalid-value"),
            ("empty token", .moduleInitFreed, Self.withToken(Message.moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: f.name, initBase: 0xffff_ffff_c200_0000)).encodeBody(), token, length: 0),
             "module-init-freed.session", "bad-integer-width"),
        ]
        for (n, (what, type, body, field, code)) in cases.enumerated() {
            guard let (_, m) = Self.ask(a, Frame(type: type, requestID: UInt64(10 + n), body: body)), case .error(let e) = m else {
                XCTFail("\(what): not refused"); continue
            }
            XCTAssertEqual(e.code, .malformedBody, "\(what): \(e.message)")
            XCTAssertTrue(e.message.contains(field) && e.message.contains(code), "\(what): \(e.message)")
        }
        // require_session = 2 (tag 0x8011, u8).
        var reg2 = Message.registerGuest(f.reset).encodeBody()
        reg2.writeInteger(UInt16(0x8011)); reg2.writeInteger(UInt32(1)); reg2.writeInteger(UInt8(2))
        if case .error(let e)? = Self.ask(a, Frame(type: .registerGuest, requestID: 30, body: reg2))?.1 {
            XCTAssertEqual(e.code, .malformedBody, e.message)
            XCTAssertTrue(e.message.contains("register-guest.require_session"), e.message)
        } else { XCTFail("require_session = 2 was not refused") }
        XCTAssertEqual(f.verifier.guests.session("g")?.token, token, "a refused request changed the session")
        XCTAssertEqual(f.verifier.guests.session("g")?.allowedModules, [])
        await server.shutdown()
    }

    /// A token not issued to the guest — another guest's current token, or one of the guest's line
    /// not issued yet — is refused `bad-request` naming it; nothing is judged, no session moves.
    /// A guest that is not registered is `unknown-guest` with a token as without.
    func testATokenOfAnotherGuestIsRefused() throws {
        let f = try ResetFixture()
        let v = f.verifier
        var h = f.registration
        h.guestID = "h"
        guard case .registerGuestReply(let rg) = v.respond(to: .registerGuest(f.registration), requestDigest: []),
              case .registerGuestReply(let rh) = v.respond(to: .registerGuest(h), requestDigest: []),
              let tg = rg.session, let th = rh.session else { return XCTFail("registrations with tokens") }
        XCTAssertNotEqual(tg, th)
        var load = f.request
        load.session = th
        for arrival in [nil, v.arrival()] {
            guard case .error(let e) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: arrival) else { return XCTFail("h's token for g was not refused") }
            XCTAssertEqual(e.code, .badRequest, e.message)
            XCTAssertTrue(e.message.contains(String(th, radix: 16)) && e.message.contains("not issued to guest 'g'"), e.message)
        }
        // Direct (in-process) judging refuses it too, never judging without the session.
        let direct = v.authorize(load)
        XCTAssertEqual(direct.decision, .deny, direct.message)
        XCTAssertTrue(direct.message.contains("not issued to guest 'g'"), direct.message)
        // A token of g's line not issued yet (the next reset's).
        load.session = tg + 1
        guard case .error(let next) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("a token not issued yet") }
        XCTAssertEqual(next.code, .badRequest, next.message)
        let retire = RetireModule(guestID: "g", moduleName: f.name, textBase: 0xffff_ffff_c000_0000, session: th)
        guard case .error(let re) = v.respond(to: .retireModule(retire), requestDigest: [], arrival: v.arrival()) else { return XCTFail("retire with h's token") }
        XCTAssertEqual(re.code, .badRequest, re.message)
        XCTAssertEqual(v.guests.session("g")?.allowedModules, [])
        XCTAssertEqual(v.guests.session("h")?.allowedModules, [])
        // Unregistered guest: unknown-guest, token or not.
        var other = f.request
        other.guestID = "nobody"
        other.session = th
        guard case .error(let u) = v.respond(to: .authorizeModule(other), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("unregistered") }
        XCTAssertEqual(u.code, .unknownGuest, u.message)
        // g's own token: judged in its session.
        load.session = tg
        guard case .verdict(let ok) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("g's token") }
        XCTAssertEqual(ok.decision, .allow, ok.message)
    }

    /// A replaced session's token decides whatever the arrival says: stamped after the reset (read
    /// late, on any connection), a patch is denied `policy.end-state-unavailable` (checks:
    /// `policy-kind` only), a retire-module and module-init-freed are `unknown-module`, and the new
    /// session keeps its module and init text; with the new token each is judged in the new session.
    func testAStaleTokenIsJudgedAsAReplacedSessionWhateverTheArrival() throws {
        let f = try ResetFixture()
        let v = f.verifier
        guard case .registerGuestReply(let r1) = v.respond(to: .registerGuest(f.registration), requestDigest: []),
              case .registerGuestReply(let r2) = v.respond(to: .registerGuest(f.reset), requestDigest: []),
              let old = r1.session, let new = r2.session else { return XCTFail("registration and reset with tokens") }
        XCTAssertEqual(new >> 40, old >> 40, "a reset keeps the guest's line")
        XCTAssertGreaterThan(new, old)
        var load = f.request
        load.session = new
        guard case .verdict(let loaded) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("load") }
        XCTAssertEqual(loaded.decision, .allow, loaded.message)
        let session = try XCTUnwrap(v.guests.session("g"))
        let live = try XCTUnwrap(session.liveModule(f.name))
        let site = try XCTUnwrap(session.runtimeSites.first { $0.module == f.name }?.addresses.first)

        let late = v.arrival()  // after the reset: the arrival rule alone would judge these in the new session
        load.session = old
        guard case .verdict(let staleLoad) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: late) else { return XCTFail("stale load") }
        XCTAssertEqual(staleLoad.decision, .deny, staleLoad.message)
        XCTAssertEqual(staleLoad.reason, .endStateUnavailable, staleLoad.message)
        XCTAssertTrue(staleLoad.message.contains("carries the session token"), staleLoad.message)
        XCTAssertEqual(staleLoad.checks, ["policy-kind"], "a replaced session's request is judged in no session")
        let patch = AuthorizePatch(guestID: "g", patches: [PatchEntry(address: site, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])], session: old)
        guard case .verdict(let stalePatch) = v.respond(to: .authorizePatch(patch), requestDigest: [], arrival: late) else { return XCTFail("stale patch") }
        XCTAssertEqual(stalePatch.decision, .deny, stalePatch.message)
        XCTAssertEqual(stalePatch.reason, .endStateUnavailable, stalePatch.message)
        XCTAssertEqual(stalePatch.checks, ["policy-kind"])
        let retire = RetireModule(guestID: "g", moduleName: f.name, textBase: live.textRange.lowerBound, session: old)
        guard case .error(let e) = v.respond(to: .retireModule(retire), requestDigest: [], arrival: late) else { return XCTFail("a stale retire was carried out") }
        XCTAssertEqual(e.code, .unknownModule, e.message)
        XCTAssertTrue(e.message.contains("carries the session token"), e.message)
        guard case .error(let i) = v.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: f.name, initBase: 0xffff_ffff_c200_0000, session: old)), requestDigest: [], arrival: late) else {
            return XCTFail("a stale init-freed was carried out")
        }
        XCTAssertEqual(i.code, .unknownModule, i.message)
        XCTAssertEqual(session.allowedModules, [f.name], "a request with a replaced session's token changed the new one")

        // The current token decides too, even for a stamp from before the reset.
        var current = retire
        current.session = new
        guard case .retireModuleReply = v.respond(to: .retireModule(current), requestDigest: [], arrival: 1) else { return XCTFail("retire with the current token") }
        XCTAssertEqual(session.allowedModules, [])
    }

    /// FOUND (a hostile-peer review, 2026-12-04): under a signature-only policy an authorize-module
    /// carrying a replaced session's token was *allowed* (`signature_only`, with the new session's
    /// facts digest): the replaced session's stand-in is ended, and only a commit asked that, which
    /// a signature-only allow never makes. protocol.md: a replaced session's authorize-module is
    /// denied `policy.end-state-unavailable` whatever the policy. Now it is, before anything is
    /// judged; so is a tokenless one that arrived before the reset, and the current token's
    /// request is still allowed.
    func testAReplacedSessionsRequestIsDeniedUnderASignatureOnlyPolicyToo() throws {
        let f = try ResetFixture()
        let verifier = Verifier(policy: Policy(id: "sig", version: 1, trust: try Fixtures.debianTrust(), endState: .signatureOnly))
        guard case .registerGuestReply(let r1) = verifier.respond(to: .registerGuest(f.registration), requestDigest: []) else { return XCTFail("registration") }
        let before = verifier.arrival()  // a request of the first session, judged after the reset
        guard case .registerGuestReply(let r2) = verifier.respond(to: .registerGuest(f.reset), requestDigest: []),
              let old = r1.session, let new = r2.session else { return XCTFail("registration and reset with tokens") }
        // No byte claimed: the signature-only judgement.
        let bare = f.request.withoutClaimedBytes
        func verdict(_ token: UInt64?, arrival: UInt64?) throws -> ExecGateWire.Verdict {
            var r = bare
            r.session = token
            guard case .verdict(let verdict) = verifier.respond(to: .authorizeModule(r), requestDigest: nil, arrival: arrival) else {
                struct NoVerdict: Error {}
                throw NoVerdict()  // fails the test (not a skip)
            }
            return verdict
        }
        let current = try verdict(new, arrival: verifier.arrival())
        XCTAssertEqual(current.decision, .allow, current.message)
        XCTAssertTrue(current.signatureOnly, current.message)
        for (what, token, arrival) in [("the replaced session's token", Optional(old), verifier.arrival()), ("no token, arrived before the reset", nil, before)] {
            let stale = try verdict(token, arrival: arrival)
            XCTAssertEqual(stale.decision, .deny, "\(what): \(stale.message)")
            XCTAssertEqual(stale.reason, .endStateUnavailable, "\(what): \(stale.message)")
            XCTAssertFalse(stale.signatureOnly, what)
            XCTAssertEqual(stale.checks, ["policy-kind"], what)
            XCTAssertTrue(stale.message.contains(token == nil ? "after this request arrived" : "carries the session token"), "\(what): \(stale.message)")
        }
    }

    /// `require_session = 1`: while that session is current, a session request without a token is
    /// refused `bad-request` (nothing judged); with it, judged. A reset without the flag lifts it.
    func testRequireSessionRefusesATokenlessRequest() throws {
        let f = try ResetFixture()
        let v = f.verifier
        var strict = f.registration
        strict.requireSession = true
        // Round trip of the flag (tag 0x8011).
        XCTAssertEqual(try RegisterGuest(decoding: Message.registerGuest(strict).encodeBody()).requireSession, true)
        guard case .registerGuestReply(let r) = v.respond(to: .registerGuest(strict), requestDigest: []), let token = r.session else { return XCTFail("registration") }
        guard case .error(let e) = v.respond(to: .authorizeModule(f.request), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("a token-less load was judged") }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertTrue(e.message.contains("require_session"), e.message)
        guard case .error(let p) = v.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: f.name, initBase: 0xffff_ffff_c200_0000)), requestDigest: [], arrival: v.arrival()) else { return XCTFail("init-freed") }
        XCTAssertEqual(p.code, .badRequest, p.message)
        XCTAssertEqual(v.guests.session("g")?.allowedModules, [])
        var load = f.request
        load.session = token
        guard case .verdict(let ok) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("load with the token") }
        XCTAssertEqual(ok.decision, .allow, ok.message)
        // Its reset names it too (a token-less one is refused, ResetTokenTests). A reset without
        // the flag: token-less requests are judged by arrival again.
        var reset = f.reset
        reset.session = token
        guard case .registerGuestReply = v.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset") }
        guard case .verdict(let again) = v.respond(to: .authorizeModule(f.request), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("token-less load after the reset") }
        XCTAssertEqual(again.decision, .allow, again.message)
    }

    /// Our own VMM-side client echoes the token of its last registration of the guest: after a
    /// reset sent through another client (another connection), the first client's load of the old
    /// boot carries the old token and is denied, whenever the server reads it; a client told the
    /// new token (`setSessionToken`) is judged in the new session.
    func testTheClientEchoesItsGuestsToken() async throws {
        let f = try ResetFixture()
        let (server, path) = try await ResetFixture.serve(f.verifier)
        let a = try await ExecGateClient.connect(to: .unix(path: path))
        let b = try await ExecGateClient.connect(to: .unix(path: path))
        let r1 = try await a.register(f.registration)
        XCTAssertNotNil(r1.session)
        XCTAssertEqual(a.sessionToken(for: "g"), r1.session)
        let r2 = try await b.register(f.reset)
        XCTAssertEqual(b.sessionToken(for: "g"), r2.session)
        let stale = try await a.authorize(f.request)
        XCTAssertEqual(stale.decision, .deny, stale.message)
        XCTAssertEqual(stale.reason, .endStateUnavailable, stale.message)
        XCTAssertEqual(f.verifier.guests.session("g")?.allowedModules, [])
        a.setSessionToken(r2.session, for: "g")
        let ok = try await a.authorize(f.request)
        XCTAssertEqual(ok.decision, .allow, ok.message)
        // A reset names the session the client holds: a's replaces r2's session. b still holds
        // r2 (a's reset went on another client): its reset names what a's named and arrived after
        // a's registration, which the server cannot tell from two resets in flight (ordered by
        // arrival, protocol.md "A reset names the session it replaces"), so it replaces a's; b's
        // next names its own. a's then names a session two back: refused, and b's session and
        // its module are left alone.
        let r3 = try await a.register(f.reset)
        XCTAssertEqual(r3.session, (r2.session ?? 0) + 1)
        let r4 = try await b.register(f.reset)
        XCTAssertEqual(r4.session, (r3.session ?? 0) + 1)
        let r5 = try await b.register(f.reset)
        XCTAssertEqual(b.sessionToken(for: "g"), r5.session)
        let loaded = try await b.authorize(f.request)
        XCTAssertEqual(loaded.decision, .allow, loaded.message)
        do {
            _ = try await a.register(f.reset)
            XCTFail("a reset naming a session two back was accepted")
        } catch ClientError.server(let e) {
            XCTAssertEqual(e.code, .badRequest, e.message)
        }
        XCTAssertEqual(f.verifier.guests.session("g")?.token, r5.session)
        XCTAssertNil(f.verifier.guests.session("g")?.endedMessage)
        XCTAssertEqual(f.verifier.guests.session("g")?.allowedModules, [f.name])
        await a.close()
        await b.close()
        await server.shutdown()
    }

    /// `execgate request retire-module --session`: the operator's VMM-side tool echoes a token;
    /// a replaced session's is refused (exit 1, unknown-module), the current one retires, and a
    /// token that is no token is a usage error (exit 2).
    func testTheRequestCommandSendsTheToken() async throws {
        let f = try ResetFixture()
        let v = f.verifier
        guard case .registerGuestReply(let r1) = v.respond(to: .registerGuest(f.registration), requestDigest: []),
              case .registerGuestReply(let r2) = v.respond(to: .registerGuest(f.reset), requestDigest: []),
              let old = r1.session, let new = r2.session,
              case .verdict(let loaded) = v.respond(to: .authorizeModule(f.request), requestDigest: nil, arrival: v.arrival()), loaded.decision == .allow,
              let base = v.guests.session("g")?.liveModule(f.name)?.textRange.lowerBound else { return XCTFail("setup") }
        let (server, path) = try await ResetFixture.serve(v)
        func retire(_ session: String) -> ProcessResult {
            Fixtures.runExecgate(["request", "retire-module", f.name, "--connect", "unix:" + path, "--guest", "g",
                                  "--text-base", "0x" + String(base, radix: 16), "--session", session])
        }
        let stale = retire("0x" + String(old, radix: 16))
        XCTAssertEqual(stale.status, 1, stale.stderr)
        XCTAssertTrue(stale.stderr.contains("unknown-module") && stale.stderr.contains("session token"), stale.stderr)
        XCTAssertEqual(v.guests.session("g")?.allowedModules, [f.name])
        let zero = retire("0")
        XCTAssertEqual(zero.status, 2, zero.stderr)
        XCTAssertTrue(zero.stderr.contains("--session"), zero.stderr)
        let ok = retire(String(new))
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(v.guests.session("g")?.allowedModules, [])
        // `request register-guest --reset --session`: a reset naming the replaced session is an
        // error reply to a bad request (exit 2) and registers nothing; --session without --reset
        // is a usage error; naming the current session resets (exit 0, the next token printed).
        func reset(_ extra: [String]) -> ProcessResult {
            Fixtures.runExecgate(["request", "register-guest", "--connect", "unix:" + path, "--guest", "g",
                                  "--capture", Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"] + extra)
        }
        // (A third session first, by a reset naming `new`, so that `old` is below the current
        // session's floor: a reset naming a token from what the current session's reset named
        // up, arriving after it, is of it, ResetTokenTests.)
        var third = f.reset
        third.session = new
        guard case .registerGuestReply = v.respond(to: .registerGuest(third), requestDigest: [], arrival: v.arrival()) else { return XCTFail("reset") }
        let staleReset = reset(["--reset", "--session", "0x" + String(old, radix: 16)])
        XCTAssertEqual(staleReset.status, 2, staleReset.stderr)
        XCTAssertTrue(staleReset.stderr.contains("bad-request") && staleReset.stderr.contains("already replaced"), staleReset.stderr)
        XCTAssertEqual(v.guests.session("g")?.token, new + 1)
        let noReset = reset(["--session", String(new + 1)])
        XCTAssertEqual(noReset.status, 2, noReset.stderr)
        XCTAssertTrue(noReset.stderr.contains("--reset"), noReset.stderr)
        let current = reset(["--reset", "--session", String(new + 1), "--json"])
        XCTAssertEqual(current.status, 0, current.stderr)
        XCTAssertTrue(current.stdout.contains("\"session\":\"0x" + String(new + 2, radix: 16) + "\""), current.stdout)
        XCTAssertEqual(v.guests.session("g")?.token, new + 2)
        await server.shutdown()
    }

    /// Failed attack kept: a guest id removed and registered again starts a new line; a token of
    /// its earlier line (same id, the same place in a line) is not the new line's: refused
    /// `bad-request`, never judged in the new session; tokens of two lines never collide.
    func testATokenOfAnEarlierLineOfTheSameGuestIdIsRefused() throws {
        let f = try ResetFixture()
        let v = f.verifier
        guard case .registerGuestReply(let r1) = v.respond(to: .registerGuest(f.registration), requestDigest: []), let first = r1.session else { return XCTFail("registration") }
        XCTAssertTrue(v.guests.remove("g"))
        guard case .registerGuestReply(let r2) = v.respond(to: .registerGuest(f.registration), requestDigest: []), let second = r2.session else { return XCTFail("registration again") }
        XCTAssertNotEqual(first, second)
        XCTAssertEqual(first & ((1 << 40) - 1), second & ((1 << 40) - 1), "both are the first session of their line")
        var load = f.request
        load.session = first
        guard case .error(let e) = v.respond(to: .authorizeModule(load), requestDigest: nil, arrival: v.arrival()) else { return XCTFail("the earlier line's token was judged") }
        XCTAssertEqual(e.code, .badRequest, e.message)
        XCTAssertEqual(v.guests.session("g")?.allowedModules, [])
    }

    /// HOLE (protocol.md register-guest, until 2026-12-07): a register-guest carried no session
    /// token, so a reset was ordered by its arrival alone. VM-1's reset sent on connection B but
    /// not read until VM-1's removal and a new VM-2's registration of the id on A were answered
    /// arrives, by its stamp, after VM-2's registration: it replaced VM-2's session (VM-2's module
    /// forgotten while its grant stood, VM-2 judged against VM-1's facts). A reset now names the
    /// session it replaces (`session`, tag 0x8020): VM-1's names VM-1's session, not issued to the
    /// id's current line, and is refused `bad-request`; VM-2's session is not touched, its module
    /// stays live, its next load is allowed. Without a token the arrival rule stands as documented
    /// (the VMM's connection rule), shown on a fresh server.
    func testAResetReadLateOnAnotherConnectionReplacesOnlyTheSessionItNames() async throws {
        for named in [true, false] {
            let f = try ResetFixture()
            let (server, path) = try await ResetFixture.serve(f.verifier)
            let a = try XCTUnwrap(SocketPeer(path: path))
            let b = try XCTUnwrap(SocketPeer(path: path))
            guard case .registerGuestReply(let vm1)? = Self.ask(a, Message.registerGuest(f.registration).frame(requestID: 1))?.1,
                  let t1 = vm1.session else {
                await server.shutdown()
                return XCTFail("VM-1's registration")
            }
            var reset = f.reset
            reset.commandLine = "vm-1 boot 2"
            if named { reset.session = t1 }
            // VM-1 rebooted (its reset waits unread on B), then was destroyed; VM-2 takes the id.
            guard case .removeGuestReply? = Self.ask(a, Message.removeGuest(RemoveGuest(guestID: "g", session: t1)).frame(requestID: 2))?.1,
                  case .registerGuestReply(let vm2)? = Self.ask(a, Message.registerGuest(f.registration).frame(requestID: 3))?.1,
                  let t2 = vm2.session,
                  case .verdict(let first)? = Self.ask(a, Frame(type: .authorizeModule, requestID: 4,
                                                                body: Self.withToken(Message.authorizeModule(f.request).encodeBody(), t2)))?.1 else {
                await server.shutdown()
                return XCTFail("removal, VM-2's registration and load")
            }
            XCTAssertEqual(first.decision, .allow, first.message)
            let session2 = try XCTUnwrap(f.verifier.guests.session("g"))
            // Only now does the server read B.
            guard let (_, reply) = Self.ask(b, Message.registerGuest(reset).frame(requestID: 5)) else {
                await server.shutdown()
                return XCTFail("no reply on B")
            }
            if named {
                guard case .error(let e) = reply else {
                    await server.shutdown()
                    return XCTFail("VM-1's reset naming VM-1's session replaced VM-2's: \(reply)")
                }
                XCTAssertEqual(e.code, .badRequest, e.message)
                XCTAssertTrue(e.message.contains(String(t1, radix: 16)) && e.message.contains("not issued to the guest's current line"), e.message)
                XCTAssertTrue(f.verifier.guests.session("g") === session2, "VM-2's session was replaced")
                XCTAssertNil(session2.endedMessage, "VM-2's session was ended by VM-1's reset")
                XCTAssertEqual(session2.allowedModules, [f.name])
                XCTAssertEqual(session2.registration.commandLine, f.registration.commandLine)
            } else {
                guard case .registerGuestReply = reply else {
                    await server.shutdown()
                    return XCTFail("the token-less reset's documented arrival rule changed: \(reply)")
                }
                XCTAssertEqual(f.verifier.guests.session("g")?.registration.commandLine, "vm-1 boot 2")
                XCTAssertNotNil(session2.endedMessage)
            }
            await server.shutdown()
        }
    }

    /// A register-guest `session` is the token of the session a reset replaces: refused
    /// `malformed-body` naming `register-guest.session` without `reset = 1`, as 0, or not 8
    /// bytes; encoded last (tag order) and decoded back. Nothing is registered.
    func testAResetsSessionFieldIsCheckedAtDecode() async throws {
        let f = try ResetFixture()
        var named = f.reset
        named.session = 0x0000_0100_0000_0001
        let body = Message.registerGuest(named).encodeBody()
        XCTAssertEqual(Array(Array(buffer: body).suffix(14)), [0x80, 0x20, 0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 1])
        XCTAssertEqual(try Message(type: .registerGuest, body: body), .registerGuest(named))
        XCTAssertNil(Self.u64Field(Message.registerGuest(f.reset).encodeBody(), tag: 0x8020))
        let (server, path) = try await ResetFixture.serve(f.verifier)
        let a = try XCTUnwrap(SocketPeer(path: path))
        let plain = Message.registerGuest(f.registration).encodeBody()
        let cases: [(String, ByteBuffer, String)] = [
            ("a token without reset", Self.withToken(plain, 0x0000_0100_0000_0001), "invalid-value"),
            ("token 0", Self.withToken(Message.registerGuest(f.reset).encodeBody(), 0), "invalid-value"),
            ("4-byte token", Self.withToken(Message.registerGuest(f.reset).encodeBody(), 1, length: 4), "bad-integer-width"),
        ]
        for (n, (what, body, code)) in cases.enumerated() {
            guard case .error(let e)? = Self.ask(a, Frame(type: .registerGuest, requestID: UInt64(1 + n), body: body))?.1 else {
                XCTFail("\(what): not refused"); continue
            }
            XCTAssertEqual(e.code, .malformedBody, "\(what): \(e.message)")
            XCTAssertTrue(e.message.contains("register-guest.session") && e.message.contains(code), "\(what): \(e.message)")
        }
        XCTAssertNil(f.verifier.guests.session("g"), "a refused registration registered the guest")
        await server.shutdown()
    }

    /// The verifier behind a responder that holds the reply to the first register-guest it judges
    /// until a second register-guest has been judged: replies of one connection leave in any
    /// order (two pool threads), so the client reads the newer reset's reply first.
    final class ReplyHoldingResponder: RequestResponder, @unchecked Sendable {
        let inner: Verifier
        private let lock = NSLock()
        private var registrations = 0
        private let secondJudged = DispatchSemaphore(value: 0)
        init(_ inner: Verifier) { self.inner = inner }
        func arrival() -> UInt64? { inner.arrival() }
        func respond(to message: Message, body: ByteBuffer) -> Message { respond(to: message, body: body, arrival: nil) }
        func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message {
            let reply = inner.respond(to: message, body: body, arrival: arrival)
            guard case .registerGuest = message else { return reply }
            lock.lock()
            registrations += 1
            let n = registrations
            lock.unlock()
            if n == 2 { _ = secondJudged.wait(timeout: .now() + 10) } else if n == 3 { secondJudged.signal() }
            return reply
        }
        func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply {
            inner.status(uptimeMilliseconds: uptimeMilliseconds, requestsServed: requestsServed)
        }
    }

    /// Our client keeps the highest token its guest's register-guest-replies named: two resets
    /// pipelined on one connection, the first's reply held until the second is judged, arrive
    /// newest first; keeping the last reply read moved the client back to the replaced session's
    /// token, so its next load was denied as the replaced session's and its next reset named a
    /// session further back. Now both go to the newest session.
    func testTheClientKeepsItsNewestTokenWhateverOrderRepliesArriveIn() async throws {
        let f = try ResetFixture()
        let responder = ReplyHoldingResponder(f.verifier)
        let (server, path) = try await ResetFixture.serve(responder)
        let client = try await ExecGateClient.connect(to: .unix(path: path))
        let r0 = try await client.register(f.registration)
        async let first = client.register(f.reset)
        try await Task.sleep(nanoseconds: 100_000_000)  // the first reset is read (and judged) first
        async let second = client.register(f.reset)
        let (a, b) = try await (first, second)
        let newest = max(a.session ?? 0, b.session ?? 0)
        XCTAssertEqual(newest, (r0.session ?? 0) + 2)
        XCTAssertEqual(f.verifier.guests.session("g")?.token, newest)
        XCTAssertEqual(client.sessionToken(for: "g"), newest, "the client went back to the replaced session's token")
        let v = try await client.authorize(f.request)
        XCTAssertEqual(v.decision, .allow, v.message)
        await client.close()
        await server.shutdown()
    }
}
