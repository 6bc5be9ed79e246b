// SPDX-License-Identifier: Apache-2.0
//
// ExecGateClient, the one client (the CLI, the admin client and the in-guest self-test use it):
// every address form it speaks against a real verifier — unix: directly, hybrid: through a
// stand-in hybrid vsock backend — and its failure contract: a refused or broken hybrid handshake
// says why, a server that never answers times out, a server that hangs up fails every pending
// request at once, and no reply is ever matched to the wrong request.

import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest

final class ClientTests: XCTestCase {
    var server: VerifierServer!
    var hybrid: HybridBackendStandIn!
    var unixEndpoint: Endpoint!
    var hybridEndpoint: Endpoint!
    var dir = ""

    override func setUp() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        // Transport tests with modules sent without bytes: the policy opts into signature-only
        // explicitly (the built-in default, end-state required, would deny them all alike).
        var policy = Policy.builtIn(trust: try Fixtures.debianTrust())
        policy.endState = .signatureOnly
        server = VerifierServer(responder: Verifier(policy: policy), logger: logger, threads: 2)
        dir = Fixtures.temporaryDirectory()
        unixEndpoint = .unix(path: dir + "/vmm.sock")
        try await server.bind(unixEndpoint)
        hybrid = try await HybridBackendStandIn(path: dir + "/vsock.sock", routes: [5000: dir + "/vmm.sock"])
        hybridEndpoint = try Endpoint(parsing: "hybrid:\(dir)/vsock.sock:5000", listening: false)
    }

    override func tearDown() async throws {
        await hybrid.shutdown()
        await server.shutdown()
    }

    func testEveryRequestOverUnixAndHybridGetsTheSameAnswer() async throws {
        let module = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
        var tampered = module
        tampered[tampered.count / 3] ^= 0x01
        var verdicts: [[Verdict]] = []
        for endpoint in [unixEndpoint!, hybridEndpoint!] {
            let client = try await ExecGateClient.connect(to: endpoint, timeout: 30)
            let hello = try await client.hello(clientName: "client-tests")
            XCTAssertFalse("\(hello)".isEmpty)
            let status = try await client.status()
            XCTAssertEqual(status.state, "serving", "\(endpoint)")
            let allow = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
            let deny = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: tampered)))
            XCTAssertEqual(allow.decision, .allow, "\(endpoint): \(allow.message)")
            XCTAssertEqual(deny.decision, .deny, "\(endpoint)")
            verdicts.append([allow, deny])
            await client.close()
            await client.close()  // idempotent
        }
        XCTAssertEqual(verdicts[0].map(\.requestDigest), verdicts[1].map(\.requestDigest), "the hybrid path must carry the same bytes")
        XCTAssertEqual(verdicts[0].map(\.reason), verdicts[1].map(\.reason))
    }

    /// Many requests in flight on one hybrid connection: each reply goes to its own request.
    func testPipelinedOverHybridEachReplyMatchesItsRequest() async throws {
        let modules = try Fixtures.sampleModules(12).map { try Fixtures.readFile($0) }.filter { $0.count < 4 << 20 }
        let client = try await ExecGateClient.connect(to: hybridEndpoint, timeout: 60)
        var policy = Policy.builtIn(trust: try Fixtures.debianTrust())
        policy.endState = .signatureOnly  // the server's policy (setUp)
        let local = Verifier(policy: policy)
        let results = try await withThrowingTaskGroup(of: (Int, Verdict).self) { g in
            for (i, m) in modules.enumerated() { g.addTask { (i, try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: m)))) } }
            var out: [(Int, Verdict)] = []
            for try await r in g { out.append(r) }
            return out
        }
        XCTAssertEqual(results.count, modules.count)
        for (i, v) in results {
            let req = AuthorizeModule(module: ByteBuffer(bytes: modules[i]))
            // The request digest of the body the client sent (module replaced by its digest).
            let digest = try XCTUnwrap(Verifier.requestDigest(authorizeModuleBody: Message.authorizeModule(req).encodeBody()))
            XCTAssertEqual(v.requestDigest, digest, "reply \(i) belongs to another request")
            XCTAssertEqual(v.decision, local.authorize(req, requestDigest: digest).decision)
        }
        await client.close()
    }

    /// `exchange` returns the reply frame of any type (the admin client relies on it); an unknown
    /// type gets a typed error reply and the connection stays usable.
    func testExchangeReturnsRawReplyFrames() async throws {
        let client = try await ExecGateClient.connect(to: hybridEndpoint)
        let id = client.allocateID()
        let reply = try await client.exchange(Frame(type: MessageType(rawValue: 0x0077), requestID: id, body: ByteBuffer()))
        XCTAssertEqual(reply.requestID, id)
        XCTAssertEqual(reply.type, .error)
        XCTAssertEqual(try ErrorReply(decoding: reply.body).code, .unknownMessageType)
        let state = try await client.status().state
        XCTAssertEqual(state, "serving")
        await client.close()
    }

    // MARK: - Hybrid handshake failures

    func handshakeFailure(_ behaviour: HybridBackendStandIn.Behaviour, socket: String = "bad") async throws -> String {
        let bad = try await HybridBackendStandIn(path: dir + "/\(socket).sock", routes: [5000: dir + "/vmm.sock"], behaviour: behaviour)
        defer { Task { await bad.shutdown() } }
        do {
            let c = try await ExecGateClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/\(socket).sock:5000", listening: false), timeout: 5)
            await c.close()
            XCTFail("connected through a backend that \(behaviour)")
            return ""
        } catch ClientError.hybridHandshakeFailed(let why) {
            return why
        }
    }

    func testForbidsRefusedHybridConnect() async throws {
        let why = try await handshakeFailure(.refuse)
        XCTAssertTrue(why.contains("ERR no such port"), why)
    }

    func testForbidsOverlongHybridReplyLine() async throws {
        let why = try await handshakeFailure(.overlongLine)
        XCTAssertTrue(why.contains("longer than 64 bytes"), why)
    }

    /// Attack (round 10): a hybrid peer (anything bound at the socket path: a hostile or broken
    /// backend) answers the CONNECT with a line that starts "OK " but is not the handshake's
    /// answer: no port, letters, a number past u32, a sign, two spaces, trailing text, a CR. The
    /// client accepted any line beginning "OK " and went on speaking the protocol to whatever was
    /// behind it. Rule: Firecracker's and Cloud Hypervisor's hybrid vsock muxers answer exactly
    /// `format!("OK {}\n", local_port)` with a u32 port (src/vmm/src/devices/virtio/vsock/unix/
    /// muxer.rs), as this project's backend does ("OK \(localPort)\n", Connection.swift); anything
    /// else is a failed handshake, the connection closed.
    func testForbidsMalformedHybridOKLines() async throws {
        let lines = ["OK \n", "OK abc\n", "OK 12x\n", "OK 4294967296\n", "OK -1\n", "OK +1\n", "OK  5\n", "OK 5 extra\n", "OK 5\r\n", "OK 00000000001\n"]
        for (i, line) in lines.enumerated() {
            let why = try await handshakeFailure(.answer(line), socket: "bad\(i)")
            XCTAssertTrue(why.contains("peer answered"), "\(line.debugDescription): \(why)")
        }
    }

    func testHybridBackendHangingUpDuringHandshakeFails() async throws {
        let why = try await handshakeFailure(.hangUp)
        XCTAssertTrue(why.contains("closed during handshake"), why)
    }

    /// Round 12: a backend at its cap of clients mid-handshake closes the oldest to take a
    /// newcomer, and under a flood of silent clients an honest one was closed before its line was
    /// read (13 of 100 `request status` lost to six flooding processes). A hybrid connection closed
    /// before any answer is tried again, at most three times: nothing was sent but the line.
    func testAHybridConnectionClosedBeforeItsAnswerIsTriedAgain() async throws {
        let twice = try await HybridBackendStandIn(path: dir + "/evicting.sock", routes: [5000: dir + "/vmm.sock"], behaviour: .hangUpFirst(2))
        let c = try await ExecGateClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/evicting.sock:5000", listening: false), timeout: 5)
        _ = try await c.status()  // a request answered through the third connection
        await c.close()
        XCTAssertEqual(twice.accepted.withLockedValue { $0 }, 3, "closed twice, through at the third")
        await twice.shutdown()
        // Three closes in a row: the failure stands (as when the backend has no route, below).
        let thrice = try await HybridBackendStandIn(path: dir + "/evicting3.sock", routes: [5000: dir + "/vmm.sock"], behaviour: .hangUpFirst(3))
        defer { Task { await thrice.shutdown() } }
        do {
            let c = try await ExecGateClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/evicting3.sock:5000", listening: false), timeout: 5)
            await c.close()
            XCTFail("connected through three closes")
        } catch {
            guard case ClientError.hybridHandshakeFailed(let why) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("closed during handshake"), why)
        }
        XCTAssertEqual(thrice.accepted.withLockedValue { $0 }, 3, "three attempts")
    }

    func testForbidsHybridPortWithNoListener() async throws {
        // The stand-in has no route for 5999 and hangs up, as a backend does when the guest refuses.
        do {
            let c = try await ExecGateClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/vsock.sock:5999", listening: false), timeout: 5)
            await c.close()
            XCTFail("connected to a port nobody listens on")
        } catch ClientError.hybridHandshakeFailed(let why) {
            XCTAssertTrue(why.contains("closed"), why)
        }
    }

    /// Attack: a hybrid peer (a hung or hostile backend, or anything bound at that path) that
    /// accepts and reads the CONNECT line but never answers. Rule: the client's failure contract,
    /// "the caller never hangs" (Client.swift): the handshake is bounded by the same `timeout` as a
    /// request (Firecracker's hybrid vsock answers "OK <port>\n" or closes; a peer that does neither
    /// within the timeout is given up on, the connection closed). Before the fix the connect waited
    /// until the peer hung up (here: the 10 s watchdog).
    func testSilentHybridPeerTimesOutDuringTheHandshake() async throws {
        final class Sink: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
        }
        let accepted = NIOLockedValueBox<[Channel]>([])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                accepted.withLockedValue { $0.append(ch) }
                return ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Sink()) }
            }
            .bind(unixDomainSocketPath: dir + "/silent-hybrid.sock", cleanupExistingSocketFile: true).get()
        // Watchdog: a handshake that never ends is ended by hanging up on it after 10 s.
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 10_000_000_000)
            for ch in accepted.withLockedValue({ $0 }) { try? await ch.close() }
        }
        let t0 = NIODeadline.now()
        var why = ""
        do {
            let c = try await ExecGateClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/silent-hybrid.sock:5000", listening: false), timeout: 0.5)
            await c.close()
            XCTFail("connected through a peer that never answered")
        } catch ClientError.hybridHandshakeFailed(let w) {
            why = w
        }
        let seconds = Double((NIODeadline.now() - t0).nanoseconds) / 1e9
        XCTAssertLessThan(seconds, 8, "the handshake waited \(seconds) s with a 0.5 s timeout")
        XCTAssertTrue(why.contains("no reply line within 0.5 s"), why)
        watchdog.cancel()
        try? await channel.close()
        try await group.shutdownGracefully()
    }

    // MARK: - Timeouts and hang-ups

    /// A server that accepts and reads but never answers.
    func silentServer(path: String, closeAfterFirstRead: Bool) async throws -> (MultiThreadedEventLoopGroup, Channel) {
        final class Sink: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            let close: Bool
            init(close: Bool) { self.close = close }
            func channelRead(context: ChannelHandlerContext, data: NIOAny) { if close { context.close(promise: nil) } }
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Sink(close: closeAfterFirstRead)) } }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        return (group, channel)
    }

    func testSilentServerTimesOutInsteadOfHanging() async throws {
        let (group, channel) = try await silentServer(path: dir + "/silent.sock", closeAfterFirstRead: false)
        let client = try await ExecGateClient.connect(to: .unix(path: dir + "/silent.sock"), timeout: 0.5)
        let t0 = NIODeadline.now()
        do {
            _ = try await client.status()
            XCTFail("a server that never answers produced a reply")
        } catch ClientError.timedOut(let s) {
            XCTAssertEqual(s, 0.5)
        }
        XCTAssertLessThan((NIODeadline.now() - t0).nanoseconds, 5_000_000_000)
        await client.close()
        try await channel.close()
        try await group.shutdownGracefully()
    }

    func testHangUpFailsEveryPendingRequestAtOnce() async throws {
        let (group, channel) = try await silentServer(path: dir + "/hangup.sock", closeAfterFirstRead: true)
        let client = try await ExecGateClient.connect(to: .unix(path: dir + "/hangup.sock"), timeout: 30)
        let t0 = NIODeadline.now()
        let failures = await withTaskGroup(of: Bool.self) { g in
            for _ in 0..<4 {
                g.addTask {
                    do { _ = try await client.status(); return false } catch ClientError.connectionClosed { return true } catch { return false }
                }
            }
            var n = 0
            for await ok in g where ok { n += 1 }
            return n
        }
        XCTAssertEqual(failures, 4, "every pending request fails with connectionClosed")
        XCTAssertLessThan((NIODeadline.now() - t0).nanoseconds, 5_000_000_000, "well before the 30 s timeout")
        await client.close()
        try await channel.close()
        try await group.shutdownGracefully()
    }
}
