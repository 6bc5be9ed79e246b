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
}
