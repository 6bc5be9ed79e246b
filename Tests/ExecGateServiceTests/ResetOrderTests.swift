// SPDX-License-Identifier: Apache-2.0
//
// A reset and the requests around it on one connection, through a real Unix-socket server
// (docs/protocol.md, register-guest "Once."): the service judges requests on a thread pool, so a
// request the VMM sent before its reset may be judged after the reset landed. It belongs to the
// replaced session (the VMM revoked that session's grants before sending the reset) and must never
// be judged in the new one.
//
// Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a
// (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ResetOrderTests: XCTestCase {
    /// The verifier behind a responder that, once armed, holds the first authorize-module it is
    /// given until a register-guest has been answered: the pool's scheduling when the thread that
    /// took the earlier request is preempted (or busy) while another thread runs the reset. It
    /// changes no answer, only when the verifier is asked.
    final class HoldingResponder: RequestResponder, @unchecked Sendable {
        let inner: Verifier
        private let lock = NSLock()
        private var armed = false
        /// A register-guest answered while armed (or holding) releases the held request.
        private var waiting = false
        private let resetAnswered = DispatchSemaphore(value: 0)
        init(_ inner: Verifier) { self.inner = inner }
        func arm() { lock.lock(); armed = true; waiting = true; lock.unlock() }
        private func releaseHold() -> Bool {
            lock.lock(); defer { lock.unlock() }
            let w = waiting
            waiting = false
            return w
        }
        private func takeHold(_ message: Message) -> Bool {
            guard case .authorizeModule = message else { return false }
            lock.lock(); defer { lock.unlock() }
            let hold = armed
            armed = false
            return hold
        }
        func respond(to message: Message, body: ByteBuffer) -> Message {
            let held = takeHold(message)
            if held { _ = resetAnswered.wait(timeout: .now() + 10) }
            let reply = inner.respond(to: message, body: body)
            if case .registerGuest = message, releaseHold() { resetAnswered.signal() }
            return reply
        }
        func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply {
            inner.status(uptimeMilliseconds: uptimeMilliseconds, requestsServed: requestsServed)
        }
    }

    /// HOLE: protocol.md register-guest: "A request of the old session still being judged when
    /// the reset lands is not allowed into the new one, nor into the old". The session was looked
    /// up when a pool thread began judging the request, not when the request arrived: an
    /// authorize-module the VMM pipelined before its reset (a module of the old boot, at the old
    /// boot's frames), judged after the reset landed, was judged in the new session, allowed and
    /// committed there, its reply (with a grant of those frames) sent after the reset's. The guest
    /// chooses the timing (it reboots while a load is in flight); a VMM that revoked the old
    /// session's grants, then sent the reset, then granted the allow it received afterwards mapped
    /// EXEC over frames the new boot had filled since. Requests now carry the order they arrived
    /// in (stamped on the connection's event loop, in the connection's order): one that arrived
    /// before its guest's current session was registered is of a replaced session, and denied
    /// `policy.end-state-unavailable` (ask again).
    func testARequestSentBeforeAResetIsNeverJudgedInTheNewSession() async throws {
        let boot = try CaptureBoot.load(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a")
        let registration = try boot.registration(guestID: "g")
        var reset = registration
        reset.reset = true
        let name = "irqbypass"
        let request = try boot.module(name).request(guestID: "g")

        let verifier = Verifier(policy: Policy.builtIn(trust: try Fixtures.debianTrust()))
        let responder = HoldingResponder(verifier)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = VerifierServer(responder: responder, logger: logger, threads: 2, maximumBodySize: 8 << 20)
        let path = Fixtures.temporaryDirectory() + "/execgate.sock"
        try await server.bind(.unix(path: path))

        let peer = try XCTUnwrap(SocketPeer(path: path))
        func ask(_ frames: [Frame]) -> [UInt64: Message] {
            var wire = ByteBuffer()
            for f in frames { wire.writeFrame(f) }
            guard peer.writeAll(Array(buffer: wire)) else { return [:] }
            var replies: [UInt64: Message] = [:]
            for _ in frames {
                guard let f = peer.readFrame(timeout: 60), let m = try? Message(type: f.type, body: f.body) else { break }
                replies[f.requestID] = m
            }
            return replies
        }
        guard case .registerGuestReply? = ask([Message.registerGuest(registration).frame(requestID: 1)])[1] else {
            await server.shutdown()
            return XCTFail("registration")
        }
        // One write: the old boot's load, then the reset (the guest rebooted while it was in flight).
        responder.arm()
        let replies = ask([Message.authorizeModule(request).frame(requestID: 2), Message.registerGuest(reset).frame(requestID: 3)])
        guard case .registerGuestReply? = replies[3] else {
            await server.shutdown()
            return XCTFail("reset: \(String(describing: replies[3]))")
        }
        guard case .verdict(let v)? = replies[2] else {
            await server.shutdown()
            return XCTFail("the load got no verdict: \(String(describing: replies[2]))")
        }
        XCTAssertEqual(v.decision, .deny, "a load sent before the reset was allowed in the new session (grant of frames \(v.grantFrames)): \(v.message)")
        XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
        XCTAssertEqual(v.grantFrames, [])
        XCTAssertEqual(verifier.guests.session("g")?.allowedModules, [], "the old boot's module is live in the new session")
        // Asked again after the reset's reply: judged in the new session, allowed.
        guard case .verdict(let again)? = ask([Message.authorizeModule(request).frame(requestID: 4)])[4] else {
            await server.shutdown()
            return XCTFail("no verdict for the load asked again")
        }
        XCTAssertEqual(again.decision, .allow, again.message)
        await server.shutdown()
    }
}
