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
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The fixture boot's guest "g" (Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a): its
/// registration, the same with `reset = 1`, irqbypass's load request, and a verifier under the
/// built-in policy with the Debian anchors.
struct ResetFixture {
    let registration: RegisterGuest
    let reset: RegisterGuest
    let name = "irqbypass"
    let request: AuthorizeModule
    let verifier: Verifier

    init() throws {
        let boot = try CaptureBoot.load(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a")
        registration = try boot.registration(guestID: "g")
        var r = registration
        r.reset = true
        reset = r
        request = try boot.module(name).request(guestID: "g")
        verifier = Verifier(policy: Policy.builtIn(trust: try Fixtures.debianTrust()))
    }

    /// A Unix-socket server (2 pool threads) answering through `responder`; returns it and its path.
    static func serve(_ responder: any RequestResponder, configuration: PortLimits = PortLimits(maximumBodySize: 8 << 20)) async throws -> (VerifierServer, String) {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = VerifierServer(responder: responder, logger: logger, threads: 2, configuration: configuration)
        let path = Fixtures.temporaryDirectory() + "/execgate.sock"
        try await server.bind(.unix(path: path))
        return (server, path)
    }
}

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
        func respond(to message: Message, body: ByteBuffer) -> Message { respond(to: message, body: body, arrival: nil) }
        /// The verifier's stamp, taken by the server when the request started (not held).
        func arrival() -> UInt64? { inner.arrival() }
        func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message {
            let held = takeHold(message)
            if held { _ = resetAnswered.wait(timeout: .now() + 10) }
            let reply = inner.respond(to: message, body: body, arrival: arrival)
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
        let f = try ResetFixture()
        let (registration, reset, request, verifier) = (f.registration, f.reset, f.request, f.verifier)
        let responder = HoldingResponder(verifier)
        let (server, path) = try await ResetFixture.serve(responder)

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

    /// The same rule for the other requests of a session, through the verifier core: stamped
    /// before the reset registered the new session, a run-time patch is denied
    /// `policy.end-state-unavailable` (no key state moves), a retire-module or module-init-freed
    /// is `unknown-module` and leaves the new session's module live with its init text; stamped
    /// after, each is judged in the new session.
    func testPatchRetireAndInitFreedSentBeforeAResetLeaveTheNewSessionAlone() throws {
        let f = try ResetFixture()
        let (registration, reset, name, request, verifier) = (f.registration, f.reset, f.name, f.request, f.verifier)
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(registration), requestDigest: []) else { return XCTFail("registration") }
        let before = verifier.arrival()
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset") }
        guard case .verdict(let loaded) = verifier.respond(to: .authorizeModule(request), requestDigest: nil, arrival: verifier.arrival()) else { return XCTFail("load") }
        XCTAssertEqual(loaded.decision, .allow, loaded.message)
        let session = try XCTUnwrap(verifier.guests.session("g"))
        let live = try XCTUnwrap(session.liveModule(name))

        // A patch stamped before the reset: any batch (here a NOP5 at a live site) is denied
        // before its sites are judged.
        let site = try XCTUnwrap(session.runtimeSites.first { $0.module == name }?.addresses.first)
        let patch = AuthorizePatch(guestID: "g", patches: [PatchEntry(address: site, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])])
        guard case .verdict(let stale) = verifier.respond(to: .authorizePatch(patch), requestDigest: [], arrival: before) else { return XCTFail("patch") }
        XCTAssertEqual(stale.decision, .deny, stale.message)
        XCTAssertEqual(stale.reason, .endStateUnavailable, stale.message)
        XCTAssertTrue(stale.message.contains("after this request arrived"), stale.message)

        let retire = Message.retireModule(RetireModule(guestID: "g", moduleName: name, textBase: live.textRange.lowerBound))
        guard case .error(let e) = verifier.respond(to: retire, requestDigest: [], arrival: before) else { return XCTFail("a retire sent before the reset was carried out") }
        XCTAssertEqual(e.code, .unknownModule, e.message)
        XCTAssertTrue(e.message.contains("after this request arrived"), e.message)
        guard case .error(let f) = verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: name, initBase: 0xffff_ffff_c200_0000)), requestDigest: [], arrival: before) else {
            return XCTFail("an init-freed sent before the reset was carried out")
        }
        XCTAssertEqual(f.code, .unknownModule, f.message)
        XCTAssertEqual(session.allowedModules, [name], "a request of the replaced session changed the new one")

        // Stamped after the reset: judged in the new session.
        guard case .retireModuleReply = verifier.respond(to: retire, requestDigest: [], arrival: verifier.arrival()) else { return XCTFail("retire after the reset") }
        XCTAssertEqual(session.allowedModules, [])
    }
}

/// A request the server read before a reset, queued behind its connection's in-flight cap.
final class ResetOrderPendingTests: XCTestCase {
    /// The verifier behind a responder that holds a module-init-freed named "hold" until the test
    /// releases it: the connection's one in-flight slot stays taken, so what the connection sent
    /// after it waits, read and decoded, in the connection's queue. Changes no answer.
    final class GateResponder: RequestResponder, @unchecked Sendable {
        let inner: Verifier
        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        init(_ inner: Verifier) { self.inner = inner }
        func respond(to message: Message, body: ByteBuffer) -> Message { respond(to: message, body: body, arrival: nil) }
        func arrival() -> UInt64? { inner.arrival() }
        func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message {
            if case .moduleInitFreed(let m) = message, m.moduleName == "hold" {
                holding.signal()
                _ = release.wait(timeout: .now() + 30)
            }
            return inner.respond(to: message, body: body, arrival: arrival)
        }
        func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply {
            inner.status(uptimeMilliseconds: uptimeMilliseconds, requestsServed: requestsServed)
        }
    }

    /// HOLE: trust.md: a request "that arrived before the reset registered the new session is of
    /// the old session however late a pool thread takes it up (requests are stamped as they
    /// arrive, in their connection's order)". The stamp was taken when a request *started*, not
    /// when the server read it: a request read and decoded before the reset but queued behind its
    /// connection's in-flight cap (pipelined past it) was stamped after the reset landed and
    /// judged in the new session. Here the old boot's retire-module of irqbypass, sent (and read)
    /// before the reset on a second connection, retired the new boot's irqbypass (allowed after
    /// the reset's reply, its frames mapped EXEC by the VMM): the VMM discards that reply as the
    /// docs tell it, and the verifier no longer holds a module the VMM still maps (its range,
    /// frames and exports free for another claim).
    func testARequestQueuedBehindTheInFlightCapBeforeAResetIsOfTheOldSession() async throws {
        let f = try ResetFixture()
        let (registration, reset, name, request, verifier) = (f.registration, f.reset, f.name, f.request, f.verifier)
        let responder = GateResponder(verifier)
        let (server, path) = try await ResetFixture.serve(responder, configuration: PortLimits(maximumBodySize: 8 << 20, maximumInFlightPerConnection: 1))
        defer { responder.release.signal() }

        let vmm = try XCTUnwrap(SocketPeer(path: path))
        let other = try XCTUnwrap(SocketPeer(path: path))
        func send(_ peer: SocketPeer, _ frames: [Frame]) -> Bool {
            var wire = ByteBuffer()
            for f in frames { wire.writeFrame(f) }
            return peer.writeAll(Array(buffer: wire))
        }
        func ask(_ peer: SocketPeer, _ frame: Frame) -> Message? {
            guard send(peer, [frame]), let f = peer.readFrame(timeout: 60) else { return nil }
            return try? Message(type: f.type, body: f.body)
        }
        guard case .registerGuestReply? = ask(vmm, Message.registerGuest(registration).frame(requestID: 1)),
              case .verdict(let old)? = ask(vmm, Message.authorizeModule(request).frame(requestID: 2)), old.decision == .allow,
              let textBase = verifier.guests.session("g")?.liveModule(name)?.textRange.lowerBound else {
            await server.shutdown()
            return XCTFail("the old boot's registration and load")
        }
        // The old boot, on a second connection, in one write: a request that takes the
        // connection's one in-flight slot, then the retire of irqbypass (the guest unloaded it).
        XCTAssertTrue(send(other, [Message.moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "hold", initBase: 0xffff_ffff_c200_0000)).frame(requestID: 10),
                                   Message.retireModule(RetireModule(guestID: "g", moduleName: name, textBase: textBase)).frame(requestID: 11)]))
        XCTAssertEqual(responder.holding.wait(timeout: .now() + 30), .success)
        // The 2 frames (a few dozen bytes) came in one read; the loop cuts the second right after
        // starting the first. Give it that moment (this orders, it measures nothing).
        try await Task.sleep(nanoseconds: 300_000_000)
        // The guest rebooted: the VMM revoked the old session's grants, sends the reset, and after
        // its reply the new boot's load of irqbypass (allowed: its grant is mapped).
        guard case .registerGuestReply? = ask(vmm, Message.registerGuest(reset).frame(requestID: 3)),
              case .verdict(let new)? = ask(vmm, Message.authorizeModule(request).frame(requestID: 4)) else {
            await server.shutdown()
            return XCTFail("the reset and the new boot's load")
        }
        XCTAssertEqual(new.decision, .allow, new.message)
        responder.release.signal()
        var replies: [UInt64: Message] = [:]
        for _ in 0..<2 {
            guard let f = other.readFrame(timeout: 60), let m = try? Message(type: f.type, body: f.body) else { break }
            replies[f.requestID] = m
        }
        // The VMM discards both replies (sent before its reset); the new session must not have moved.
        if case .retireModuleReply? = replies[11] {
            XCTFail("the old boot's retire-module, read before the reset, retired the new boot's module")
        }
        XCTAssertEqual(verifier.guests.session("g")?.allowedModules, [name], "a request read before the reset changed the new session")
        await server.shutdown()
    }
}

/// A request that arrived before its guest had any session.
final class ResetOrderFirstRegistrationTests: XCTestCase {
    /// HOLE: protocol.md "Restart and restore": "While a guest is not registered, every request
    /// naming it … is answered `error`/`unknown-guest` (… restore needed …), never a deny: nothing
    /// was judged". A request stamped before the guest's first registration (the VMM restoring a
    /// guest after a server restart sends register-guest and the first module on one connection,
    /// in that order, and a pool thread ran the registration first) was judged in an "ended
    /// stand-in for the session a reset replaced", though no session existed and no reset was
    /// sent: an authorize-module or authorize-patch got a deny verdict (`policy.end-state-
    /// unavailable`, "was reset (register-guest reset=1) after this request arrived"), recorded
    /// in the audit trail as a deny, a retire-module `unknown-module`. It belongs to no session:
    /// `unknown-guest`, as when it is judged before the registration lands.
    func testARequestThatArrivedBeforeTheFirstRegistrationIsOfNoSession() throws {
        let f = try ResetFixture()
        let (registration, name, request, verifier) = (f.registration, f.name, f.request, f.verifier)
        let before = verifier.arrival()
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(registration), requestDigest: []) else { return XCTFail("registration") }
        switch verifier.respond(to: .authorizeModule(request), requestDigest: nil, arrival: before) {
        case .error(let e): XCTAssertEqual(e.code, .unknownGuest, e.message)
        case let other: XCTFail("a load that arrived before the guest was registered: \(other)")
        }
        let patch = AuthorizePatch(guestID: "g", patches: [PatchEntry(address: 0xffff_ffff_c000_0000, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])])
        switch verifier.respond(to: .authorizePatch(patch), requestDigest: [], arrival: before) {
        case .error(let e): XCTAssertEqual(e.code, .unknownGuest, e.message)
        case let other: XCTFail("a patch that arrived before the guest was registered: \(other)")
        }
        switch verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: 0xffff_ffff_c000_0000)), requestDigest: [], arrival: before) {
        case .error(let e): XCTAssertEqual(e.code, .unknownGuest, e.message)
        case let other: XCTFail("a retire that arrived before the guest was registered: \(other)")
        }
        // Stamped after the registration: judged in it.
        guard case .verdict(let v) = verifier.respond(to: .authorizeModule(request), requestDigest: nil, arrival: verifier.arrival()) else { return XCTFail("load") }
        XCTAssertEqual(v.decision, .allow, v.message)
        // And one stamped between it and a reset is still of the replaced session (a deny).
        let between = verifier.arrival()
        var reset = registration
        reset.reset = true
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset") }
        guard case .verdict(let stale) = verifier.respond(to: .authorizeModule(request), requestDigest: nil, arrival: between) else { return XCTFail("stale load") }
        XCTAssertEqual(stale.reason, .endStateUnavailable, stale.message)
        XCTAssertEqual(verifier.guests.session("g")?.allowedModules, [])
    }
}
