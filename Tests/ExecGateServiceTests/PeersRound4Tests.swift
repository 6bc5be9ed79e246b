// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 4. First the decode gate's liveness (BoundedConnection.swift: `DecodeGate`,
// `boundedReads()`, added in round 3 against pipelining past the in-flight cap): the gate must
// never stall a connection that reads its replies, nor cost an honest bulk sender its throughput.
// Then the attacks earlier rounds left alone.

import _ExecGateInternals
import ExecGateClient
import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The production pipeline (`boundedReads()` + `addBoundedFrameHandlers`) on a Unix socket, in
/// process, answering every request with its reply type and the request's id.
final class GateHarness {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let pool = NIOThreadPool(numberOfThreads: 2)
    let path: String
    let budget: BufferBudget
    let limits: PortLimits
    var server: Channel?

    /// - Parameter onLoop: answer on the event loop at once (replies leave in request order);
    ///   otherwise on the pool after a delay that varies with the id (any order).
    init(inFlight: Int, onLoop: Bool) throws {
        limits = PortLimits(maximumInFlightPerConnection: inFlight)
        budget = BufferBudget(total: limits.bufferBudget, smallFrameSize: limits.smallFrameSize)
        pool.start()
        path = Fixtures.temporaryDirectory() + "/gate.sock"
        let (limits, budget, pool) = (limits, budget, pool)
        server = try ServerBootstrap(group: group)
            .boundedReads()
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(configuration: limits, budget: budget, logger: Logger(label: "gate")) { frame, loop in
                        let reply = Frame(type: MessageType(rawValue: frame.type.rawValue | 0x8000), requestID: frame.requestID, body: ByteBuffer())
                        if onLoop { return loop.makeSucceededFuture(reply) }
                        let delay = UInt32(frame.requestID % 5) * 200
                        return pool.runIfActive(eventLoop: loop) { usleep(delay); return reply }
                    }
                }
            }
            .bind(unixDomainSocketPath: path).wait()
    }

    deinit {
        try? server?.close().wait()
        try? group.syncShutdownGracefully()
        try? pool.syncShutdownGracefully()
    }
}

final class PeersRound4Tests: XCTestCase {
    /// `n` frames of `type` with `bodySize`-byte bodies, ids `first...`.
    static func frames(_ n: Int, type: UInt16 = 0x0004, bodySize: Int = 0, first: UInt64 = 1) -> [UInt8] {
        var b = ByteBuffer()
        let body = ByteBuffer(repeating: 0x5a, count: bodySize)
        for i in 0..<n { b.writeFrame(Frame(type: MessageType(rawValue: type), requestID: first + UInt64(i), body: body)) }
        return Array(buffer: b)
    }

    /// Writes `bytes` from another thread while the caller reads: a client that pipelines and
    /// reads at once, as a VMM with one request per vCPU does.
    static func writeInBackground(_ peer: SocketPeer, _ bytes: [UInt8]) -> DispatchGroup {
        let done = DispatchGroup()
        done.enter()
        DispatchQueue.global().async {
            _ = peer.writeAll(bytes)
            done.leave()
        }
        return done
    }

    /// Liveness (kept as the gate's regression test): at in-flight caps 1, 2 and 64, a client
    /// that pipelines 20,000 requests (5,000 answered off the loop) in one stream (far past the cap and the decode gate; the
    /// server stops reading and resumes as the queue drains) while reading gets every reply, in
    /// request order when the server answers in order (on the loop), and every id exactly once
    /// when it answers in any order (on a pool, varying delays). A stall (a frame left behind the
    /// gate with no read to wake the decoder) shows as a reply missing after 10 s.
    func testTheGateNeverStallsAPipeliningClientAtAnyCap() throws {
        for cap in [1, 2, 64] {
            for onLoop in [true, false] {
                let n = onLoop ? 20_000 : 5_000
                let h = try GateHarness(inFlight: cap, onLoop: onLoop)
                let p = try XCTUnwrap(SocketPeer(path: h.path))
                let t0 = now()
                let writing = Self.writeInBackground(p, Self.frames(n))
                var ids: [UInt64] = []
                ids.reserveCapacity(n)
                while ids.count < n, let f = p.readFrame(timeout: 10) {
                    XCTAssertEqual(f.type.rawValue, 0x8004)
                    ids.append(f.requestID)
                }
                writing.wait()
                let took = now() - t0
                XCTAssertEqual(ids.count, n, "cap \(cap), onLoop \(onLoop): \(n - ids.count) of \(n) pipelined requests never answered (stalled)")
                if onLoop {
                    XCTAssertEqual(ids, (1...UInt64(n)).map { $0 }, "cap \(cap): replies out of request order")
                } else {
                    XCTAssertEqual(Set(ids), Set(1...UInt64(n)), "cap \(cap): some id answered twice or never")
                }
                XCTAssertEqual(h.budget.usage.small + h.budget.usage.large, 0)
                print("gate liveness: cap \(cap), \(onLoop ? "in order" : "any order"): \(n) pipelined status answered in \(String(format: "%.2f", took)) s (\(Int(Double(n) / took)) req/s)")
            }
        }
    }

    /// Throughput (kept; figures printed, never asserted): a client sending 1 MiB bodies (the
    /// small class's largest: they may use the reserve) back to back, 48 of them pipelined, is
    /// served at every cap and the budget returns to 0.
    func testOneMiBBodiesPipelinedAreServedAtEveryCap() throws {
        let n = 48, size = 1 << 20
        for cap in [1, 2, 64] {
            let h = try GateHarness(inFlight: cap, onLoop: false)
            let p = try XCTUnwrap(SocketPeer(path: h.path))
            let t0 = now()
            let writing = Self.writeInBackground(p, Self.frames(n, type: 0x0003, bodySize: size))
            var ids = Set<UInt64>()
            var refused = 0
            while ids.count < n, let f = p.readFrame(timeout: 20) {
                if f.type.rawValue == 0x8003 { ids.insert(f.requestID) } else { refused += 1; ids.insert(f.requestID) }
            }
            writing.wait()
            let took = now() - t0
            XCTAssertEqual(ids, Set(1...UInt64(n)), "cap \(cap): \(n - ids.count) bodies never answered")
            XCTAssertEqual(refused, 0, "cap \(cap): \(refused) bodies refused (budget)")
            for _ in 0..<200 where h.budget.usage.small + h.budget.usage.large != 0 { usleep(10_000) }
            XCTAssertEqual(h.budget.usage.small + h.budget.usage.large, 0)
            print("gate throughput: cap \(cap): \(n) x 1 MiB bodies pipelined in \(String(format: "%.2f", took)) s = \(String(format: "%.1f", Double(n * size) / took / 1e6)) MB/s")
        }
    }

    /// Attack (a lost-reply hole): send requests, then half-close (shutdown(SHUT_WR): "no more
    /// requests"), then read the replies, as `printf … | nc -N`, a VMM closing its sending side
    /// at shutdown, or a host client behind the vsock backend (docs/vsock.md, "Closing": a
    /// half-close sends SHUTDOWN(SEND) only, "so the guest sees EOF and can still answer") do.
    /// NIO closes a channel at EOF unless `allowRemoteHalfClosure` is set, so every reply not yet
    /// written was dropped and the client saw EOF instead: requests it sent on a healthy
    /// connection were lost. Rule: a reliable ordered byte stream (docs/protocol.md, "Transport")
    /// answers every request it read; EOF from the client ends its requests, not its replies (a
    /// half-close is the peer's SEND shutdown only: tcp_shutdown(), unix_shutdown(),
    /// vsock_shutdown() leave the other direction open). The server closes the connection once
    /// the last reply is written.
    func testAClientThatHalfClosesAfterSendingGetsEveryReply() throws {
        for cap in [1, 64] {
            let h = try GateHarness(inFlight: cap, onLoop: false)
            for n in [1, 200] {
                let p = try XCTUnwrap(SocketPeer(path: h.path))
                XCTAssertTrue(p.writeAll(Self.frames(n)))
                XCTAssertEqual(shutdown(p.fd, Int32(SHUT_WR)), 0)
                var ids = Set<UInt64>()
                while let f = p.readFrame(timeout: 10) { ids.insert(f.requestID) }
                XCTAssertEqual(ids.count, n, "cap \(cap): \(n - ids.count) of \(n) requests sent before the half-close never answered")
                XCTAssertTrue(p.closedByPeer(timeout: 5), "cap \(cap): the server did not close after the last reply")
            }
        }
    }
}

/// Round 4 against a real `execgate serve` on local Unix sockets (PeersRound3Tests' set-up).
final class ServeRound4Tests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1
    var vmm = ""
    var admin = ""

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    func startServe() throws {
        dir = Fixtures.temporaryDirectory()
        let certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let serve = ServeFixture.start(in: dir, ["--trust", certPath, "--signature-only"])
        (pid, vmm, admin) = (serve.pid, serve.vmm, serve.admin)
        XCTAssertTrue(serve.up, "serve did not listen")
    }

    func rss() -> Int { procStatusBytes("VmRSS", pid: "\(pid)") }

    func statusAnswers(within seconds: Double) -> Bool {
        guard let p = SocketPeer(path: vmm) else { return false }
        _ = p.writeAll(PeersRound4Tests.frames(1, first: 77))
        return p.readFrame(timeout: seconds)?.requestID == 77
    }

    /// The half-close fix on both real ports: requests sent, then shutdown(SHUT_WR), every reply
    /// read, then EOF. On the VMM port: status, a malformed body and an unknown type (answered on
    /// the loop) beside a hello; on the admin port (one request in flight at a time) 5 policy-show.
    func testHalfClosingClientsOfBothPortsGetEveryReply() throws {
        try startServe()
        let v = try XCTUnwrap(SocketPeer(path: vmm))
        var b = ByteBuffer()
        b.writeFrame(Frame(type: .status, requestID: 1, body: ByteBuffer()))
        b.writeFrame(Frame(type: MessageType(rawValue: 0x0003), requestID: 2, body: ByteBuffer(bytes: [0, 1, 0, 0, 0, 9])))
        b.writeFrame(Frame(type: MessageType(rawValue: 0x0077), requestID: 3, body: ByteBuffer()))
        var hello = ByteBuffer()
        hello.writeBytes([0, 1, 0, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 2, 0, 1])
        b.writeFrame(Frame(type: MessageType(rawValue: 0x0001), requestID: 4, body: hello))
        XCTAssertTrue(v.writeAll(Array(buffer: b)))
        shutdown(v.fd, Int32(SHUT_WR))
        var ids = Set<UInt64>()
        while let f = v.readFrame(timeout: 10) { ids.insert(f.requestID) }
        XCTAssertEqual(ids, [1, 2, 3, 4], "VMM port: replies lost after the client's half-close")
        XCTAssertTrue(v.closedByPeer(timeout: 5))

        let a = try XCTUnwrap(SocketPeer(path: admin))
        var shows = ByteBuffer()
        for i in 0..<5 { shows.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: UInt64(100 + i), body: ByteBuffer())) }
        XCTAssertTrue(a.writeAll(Array(buffer: shows)))
        shutdown(a.fd, Int32(SHUT_WR))
        var order: [UInt64] = []
        while let f = a.readFrame(timeout: 10) { order.append(f.requestID) }
        XCTAssertEqual(order, [100, 101, 102, 103, 104], "admin port: replies lost after the client's half-close")
    }

    /// Attack on the fix (fails; kept): at EOF NIO reads the socket dry whatever autoRead says,
    /// so a half-close lands everything the peer queued (up to its socket buffer) in the
    /// connection's decoder at once; kept until answered, 127 peers that fill their socket
    /// buffers with status frames, half-close and never read would make the server hold all of
    /// it until the write-stall deadline. The decoder keeps one read buffer (64 KiB) of it (what
    /// a paused connection holds anyway), the rest is never answered. What a connection then holds
    /// is bounded whatever its peer queued: the kept read buffer, NIO's pooled receive buffer
    /// (another 64 KiB: the last read-dry buffer, which a paused connection shares with its
    /// cumulation), its queue's 64 decoded frames and its 64 replies in flight. Measured
    /// 2026-12-04 (glibc `mallinfo2()` live bytes, release build, 127 peers): 27.8 MB at EOF
    /// (17.4 MB for the same peers paused without the half-close) whether they queued 26, 127 or
    /// 251 MiB; serve RSS +12 MiB (debug build), +28–33 MiB (release and the static /init, which
    /// read faster). The peers queue up to 512 KiB each (SO_SNDBUF; 127 MiB in all here), far more
    /// than the bound, so a server that kept what it read dry at EOF fails it (the first test
    /// queued 26 MiB, less than the release build's bounded holdings).
    func testHalfClosingAfterAFullSocketBufferHoldsOneReadBufferAConnection() throws {
        try startServe()
        XCTAssertTrue(statusAnswers(within: 10))
        let before = rss()
        let frames = PeersRound4Tests.frames(16_384)
        var peers: [SocketPeer] = []
        for _ in 0..<(TransportLimits.maximumConnections - 1) {
            guard let p = SocketPeer(path: vmm) else { break }
            var size: Int32 = 512 << 10
            XCTAssertEqual(setsockopt(p.fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4)), 0)
            peers.append(p)
        }
        var sent = 0
        for p in peers {
            sent += p.flood(frames, seconds: 0.05)
            shutdown(p.fd, Int32(SHUT_WR))
        }
        usleep(1_000_000)
        let after = rss()
        // Then they hang up: what they left costs nothing more (a fresh status, liveness only).
        let count = peers.count
        peers.removeAll()
        let t0 = now()
        let answered = statusAnswers(within: 30)
        print("round4: \(count) peers queued \(sent >> 20) MiB of status frames and half-closed, reading nothing: serve RSS \(before >> 20) -> \(after >> 20) MiB; "
              + "after they hung up a fresh status \(answered ? "answered" : "unanswered") after \(String(format: "%.1f", now() - t0)) s")
        XCTAssertTrue(answered, "a fresh status is not answered after the half-close flood")
        // Per connection ≈ 220 KiB (two read buffers, 64 frames, 64 replies): 127 × 220 KiB ≈ 27 MiB of
        // live heap; 48 MiB leaves the allocator's slack. The peers must have queued more than the
        // bound, or a server that kept everything would pass.
        XCTAssertGreaterThan(sent, 64 << 20, "the peers queued only \(sent >> 20) MiB (SO_SNDBUF capped by net.core.wmem_max?): the test cannot tell")
        XCTAssertLessThan(after - before, 48 << 20, "serve holds \((after - before) >> 20) MiB for peers that half-closed")

        // A client that reads while it pipelines 100,000 frames (2 MiB, past the socket buffer)
        // and never half-closes: nothing dropped.
        let p = try XCTUnwrap(SocketPeer(path: vmm))
        let writing = PeersRound4Tests.writeInBackground(p, PeersRound4Tests.frames(100_000))
        var next: UInt64 = 1
        var inOrder = true
        while next <= 100_000, let f = p.readFrame(timeout: 10) {
            if f.requestID != next { inOrder = false }
            next += 1
        }
        writing.wait()
        XCTAssertTrue(inOrder, "replies answered on the loop left out of order")
        XCTAssertEqual(next - 1, 100_000, "a reading client pipelining 2 MiB: every request answered")
    }

    /// Fairness (measured; liveness asserted, never timing): one client floods the VMM port with
    /// pipelined `status` as fast as the server answers (writing on one thread, reading on
    /// another), then one floods without reading; meanwhile another client does status round
    /// trips on its own connection. A connection starts at most its in-flight cap of requests per
    /// event-loop turn (the decode gate resumes it by a task, after the other connections'
    /// events), so one client cannot hold a loop.
    func testOneFloodingClientDoesNotStarveAnotherClientsStatus() throws {
        try startServe()
        XCTAssertTrue(statusAnswers(within: 10))
        for reads in [true, false] {
            let flooder = try XCTUnwrap(SocketPeer(path: vmm))
            let stop = NIOLockedValueBox(false)
            let answered = NIOLockedValueBox(0)
            let done = DispatchGroup()
            let chunk = PeersRound4Tests.frames(4096)
            done.enter()
            DispatchQueue.global().async {
                while !stop.withLockedValue({ $0 }) { if !flooder.writeAll(chunk) { break } }
                done.leave()
            }
            if reads {
                done.enter()
                DispatchQueue.global().async {
                    while !stop.withLockedValue({ $0 }), flooder.readFrame(timeout: 1) != nil { answered.withLockedValue { $0 += 1 } }
                    done.leave()
                }
            }
            usleep(500_000)
            let probe = try XCTUnwrap(SocketPeer(path: vmm))
            var rtts: [Double] = []
            for i in 0..<40 {
                let t0 = now()
                XCTAssertTrue(probe.writeAll(PeersRound4Tests.frames(1, first: UInt64(1_000 + i))))
                guard let f = probe.readFrame(timeout: 10) else { XCTFail("status \(i) unanswered for 10 s beside a flooding client (reads: \(reads))"); break }
                XCTAssertEqual(f.requestID, UInt64(1_000 + i))
                rtts.append(now() - t0)
            }
            stop.withLockedValue { $0 = true }
            shutdown(flooder.fd, Int32(SHUT_RDWR))
            done.wait()
            rtts.sort()
            if !rtts.isEmpty {
                print(String(format: "round4 fairness: flooder %@: status RTT p50 %.1f ms, p90 %.1f ms, max %.1f ms over %d; flooder answered %d meanwhile",
                             reads ? "reading" : "not reading", rtts[rtts.count / 2] * 1e3, rtts[rtts.count * 9 / 10] * 1e3, rtts.last! * 1e3, rtts.count, answered.withLockedValue { $0 }))
            }
        }
    }
}
