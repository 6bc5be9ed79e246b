// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 3: attacks on the VMM and admin ports the earlier rounds
// (HostilePeerTests, AdversarialPeerTests, BudgetAccountingTests, SlowReaderTests) did not try,
// against a real `execgate serve` on local Unix sockets (SocketPeer from HostilePeerTests).

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

final class PeersRound3Tests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1
    var vmm = ""
    var admin = ""

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    func startServe(extra: [String] = []) throws {
        dir = Fixtures.temporaryDirectory()
        let certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let serve = ServeFixture.start(in: dir, ["--trust", certPath, "--signature-only"] + extra)
        (pid, vmm, admin) = (serve.pid, serve.vmm, serve.admin)
        if serve.up { return }
        XCTFail("serve did not listen: " + String(decoding: (try? Fixtures.readFile(dir + "/err")) ?? [], as: UTF8.self))
    }

    func statusField(_ name: String) -> Int { procStatusBytes(name, pid: "\(pid)") }

    /// A fresh connection's `status` answers.
    func probe(_ what: String, timeout: Double = 20) async throws {
        XCTAssertEqual(kill(pid, 0), 0, "serve died: \(what)")
        let c = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: timeout)
        let s = try await c.status()
        XCTAssertEqual(s.state, "serving", what)
        await c.close()
    }

    func cpu() -> Double {
        let line = procText("/proc/\(pid)/stat")
        guard let close = line.lastIndex(of: ")") else { return 0 }
        let fields = line[line.index(after: close)...].split(separator: " ")
        return ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// `n` empty-body `status` frames (20 bytes each), ids from `first`.
    func statusFrames(_ n: Int, first: UInt64 = 0) -> [UInt8] {
        var b = ByteBuffer()
        for i in 0..<n { b.writeFrame(Frame(type: .status, requestID: first + UInt64(i), body: ByteBuffer())) }
        return Array(buffer: b)
    }

    /// Attack: pipeline frames far beyond the in-flight cap on every connection the port allows,
    /// never reading a reply. The cap stops the server *reading* (autoRead off), but only after
    /// the read burst that carried them: NIO reads up to `maxMessagesPerRead` (16) buffers of up
    /// to 64 KiB per readable event whatever autoRead says, and the decoder turns every complete
    /// frame of them into a queued request (`pending`). An empty `status` frame is 20 bytes on the
    /// wire and holds no body budget, but each queued one costs the server a frame, a body
    /// buffer and a queue slot: the port's budget counts body bytes only. 127 connections each
    /// sending ~1 MiB of them make the server queue millions of requests nobody will read.
    /// Measured: 127 peers, 26–32 MiB of frames: serve RSS +62–84 MiB (peak 117 MiB: the service
    /// VM has 128 MiB), and the loops then spent tens of seconds answering them for nobody once the
    /// write-stall deadline closed the peers (`testHangingUpOnThousandsOfQueuedRequestsCostsNothing`),
    /// so a fresh `status` went unanswered for 20 s.
    /// Rule: what a peer makes the server hold is bounded by its port's budgets (docs/protocol.md,
    /// "Connections and limits"): a connection's requests decoded but not started are at most its
    /// in-flight cap, one read event takes at most one receive buffer (64 KiB), and beyond that
    /// the bytes stay in the kernel's socket buffer (the peer's cost), as any reader that stops
    /// reading leaves them.
    func testPipelinedFramesBeyondTheInFlightCapAreNotQueuedWithoutBound() async throws {
        try startServe()
        try await probe("before")
        let before = statusField("VmRSS")
        let frames = statusFrames(16_384)  // 320 KiB
        var peers: [SocketPeer] = []
        for _ in 0..<(TransportLimits.maximumConnections - 1) {
            guard let p = SocketPeer(path: vmm) else { break }
            peers.append(p)
        }
        let t0 = now()
        var sent = 0
        // Each peer writes until its socket takes nothing more (the server paused) or 20 ms.
        for p in peers { sent += p.flood(frames, seconds: 0.02) }
        usleep(500_000)
        let after = statusField("VmRSS")
        // Then they all hang up: what they queued must cost nothing (before the fix the loops
        // then answered every queued request for nobody, and a fresh `status` waited > 20 s).
        peers.removeAll()
        let t1 = now()
        do { try await probe("after the pipelining flood", timeout: 20) } catch { XCTFail("a fresh status is not answered within 20 s of the flood: \(error)") }
        print("round3: 127 connections pipelined \(sent >> 20) MiB of status frames (\(sent / 20) frames) in \(String(format: "%.1f", t1 - t0)) s, "
              + "reading no reply: serve RSS \(before >> 20) -> \(after >> 20) MiB (peak \(statusField("VmHWM") >> 20) MiB); "
              + "after they hung up a fresh status took \(String(format: "%.2f", now() - t1)) s")
        XCTAssertLessThan(after - before, 16 << 20, "serve holds \((after - before) >> 20) MiB of queued requests for 127 peers that read nothing")
    }

    /// Attack: queue tens of thousands of requests on one connection (pipelined past the in-flight
    /// cap; a 4 MiB SO_SNDBUF so the server's first read burst finds them), read no reply, then
    /// hang up. Closing the channel fails its outstanding reply writes; each failure freed an
    /// in-flight slot and `pump` started the next queued request on the dead connection, whose
    /// reply write failed at once, and so on: the event loop answered every queued request for
    /// nobody (a nested call each), and every connection on that loop waited meanwhile (30 s in
    /// the debug build for one peer's 2 MiB). Rule: a closed connection's queued requests are
    /// dropped, never started (its in-flight ones finish and their replies are discarded), and a
    /// connection queues at most its in-flight cap of decoded requests.
    func testHangingUpOnThousandsOfQueuedRequestsCostsNothing() async throws {
        try startServe()
        try await probe("before")
        let p = try XCTUnwrap(SocketPeer(path: vmm))
        var size: Int32 = 4 << 20
        XCTAssertEqual(setsockopt(p.fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4)), 0)
        let sent = p.flood(statusFrames(100_000), seconds: 2)  // 2 MiB a round
        usleep(500_000)
        let t0 = now()
        shutdown(p.fd, Int32(SHUT_RDWR))
        var busy = 0.0
        repeat {
            let c1 = cpu(), t1 = now()
            usleep(250_000)
            busy = (cpu() - c1) / (now() - t1)
        } while busy > 0.3 && now() - t0 < 12
        let busyFor = now() - t0
        try await probe("after the hang-up", timeout: 5)
        print("round3: \(sent / 20) status frames pipelined on one connection, then hung up: serve busy for \(String(format: "%.2f", busyFor)) s")
        XCTAssertLessThan(busyFor, 3, "one peer's hang-up kept an event loop busy for \(Int(busyFor)) s")
    }

    /// Attack (fails; kept as the gate's regression test): pipeline far past both ports' caps and
    /// then read every reply: 5,000 `status` on the VMM port (cap 64) and 40 `policy-show` on the
    /// admin port (one at a time), each in one write. The frames left as bytes behind the decode
    /// gate must all be decoded as the queue drains (nothing lost, nothing stuck: no new bytes
    /// arrive to wake the decoder), and the admin port answers in order.
    func testEveryPipelinedRequestIsAnsweredOnceTheQueueDrains() async throws {
        try startServe()
        let v = try XCTUnwrap(SocketPeer(path: vmm))
        XCTAssertTrue(v.writeAll(statusFrames(5_000, first: 1)))
        var ids = Set<UInt64>()
        while ids.count < 5_000, let f = v.readFrame(timeout: 10) {
            XCTAssertEqual(f.type, .statusReply)
            ids.insert(f.requestID)
        }
        XCTAssertEqual(ids, Set(1...5_000), "\(5_000 - ids.count) pipelined status requests never answered")
        let a = try XCTUnwrap(SocketPeer(path: admin))
        var shows = ByteBuffer()
        for i in 0..<40 { shows.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: UInt64(100 + i), body: ByteBuffer())) }
        XCTAssertTrue(a.writeAll(Array(buffer: shows)))
        var order: [UInt64] = []
        while order.count < 40, let f = a.readFrame(timeout: 10) {
            XCTAssertEqual(f.type.rawValue, 0x8011)
            order.append(f.requestID)
        }
        XCTAssertEqual(order, (0..<40).map { UInt64(100 + $0) }, "admin replies missing or out of order")
    }
}

/// Seeded byte storms against the production pipeline (`addBoundedFrameHandlers`) in process,
/// with the port's budget in view (BudgetAccountingTests' set-up, round 3).
final class WireStormRound3Tests: XCTestCase {
    /// Attack (fails; kept): 24 seeded peers at once, each a random stream cut at random points:
    /// good frames of random types and body sizes (some past the small class, some past the
    /// maximum: discarded unread), pipelines past the in-flight cap and the decode gate, versions
    /// other than 1, reply types as requests, a bad magic now and then (the connection ends),
    /// partial headers and bodies left behind at close, peers that read every reply and peers that
    /// read none. Requests are judged on a pool after a random delay. Rules: nothing traps; every
    /// reply is a well-formed frame answering an id its peer sent (or id 0 for bad magic); when
    /// every peer is gone and every judgement done, the budget holds 0 bytes in both classes (the
    /// decode gate, queued frames dropped at close and frames decoded at EOF give back what they
    /// held); a fresh peer's `status` is answered.
    func testSeededStreamsLeaveNothingHeld() throws {
        let limits = PortLimits(maximumBodySize: 256 << 10, bufferBudget: 1 << 20, smallFrameSize: 16 << 10, maximumInFlightPerConnection: 3,
                                headerDeadline: .seconds(30), frameDeadline: .seconds(30), idleTimeout: .seconds(60), writeStallTimeout: .seconds(60))
        let budget = BufferBudget(total: limits.bufferBudget, smallFrameSize: limits.smallFrameSize, smallReserve: 256 << 10)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        defer { try? pool.syncShutdownGracefully() }
        let path = Fixtures.temporaryDirectory() + "/storm.sock"
        let judging = NIOLockedValueBox(0)
        let server = try ServerBootstrap(group: group)
            .boundedReads()
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(configuration: limits, budget: budget, logger: Logger(label: "storm")) { frame, loop in
                        judging.withLockedValue { $0 += 1 }
                        let delay = UInt32(frame.requestID % 7) * 300
                        return pool.runIfActive(eventLoop: loop) { () -> Frame in
                            usleep(delay)
                            judging.withLockedValue { $0 -= 1 }
                            return Frame(type: MessageType(rawValue: frame.type.rawValue | 0x8000), requestID: frame.requestID, body: ByteBuffer())
                        }
                    }
                }
            }
            .bind(unixDomainSocketPath: path).wait()
        defer { try? server.close().wait() }

        let failures = NIOLockedValueBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 24) { peerIndex in
            var rng = SeededRNG(seed: 0x5eed_0000 + UInt64(peerIndex))
            guard let p = SocketPeer(path: path) else { failures.withLockedValue { $0.append("peer \(peerIndex): no connection") }; return }
            let reads = rng.next() % 3 != 0
            var sent = Set<UInt64>([0])
            var stream: [UInt8] = []
            for _ in 0..<Int(40 + rng.next() % 200) {
                let id = UInt64(peerIndex) << 32 | (rng.next() & 0xffff_ffff)
                var b = ByteBuffer()
                let kind = rng.next() % 20
                let length: Int
                switch rng.next() % 6 {
                case 0: length = 0
                case 1: length = Int(rng.next() % 64)
                case 2: length = Int(rng.next() % (16 << 10))
                case 3: length = (16 << 10) + Int(rng.next() % (100 << 10))
                case 4: length = Int(rng.next() % 2048)
                default: length = kind == 0 ? (256 << 10) + 1 + Int(rng.next() % 1000) : Int(rng.next() % 300)
                }
                b.writeInteger(kind == 1 ? UInt32(0x4558_4755) : WireLimits.magic)
                b.writeInteger(kind == 2 ? UInt16(2) : WireLimits.protocolVersion)
                b.writeInteger(kind == 3 ? UInt16(0x8004) : UInt16(truncatingIfNeeded: [1, 3, 4, 4, 4, 5, 6, 0x77][Int(rng.next() % 8)]))
                b.writeInteger(id)
                b.writeInteger(UInt32(length))
                b.writeBytes((0..<length).map { _ in UInt8(truncatingIfNeeded: id) })
                sent.insert(id)
                stream += Array(buffer: b)
                if kind == 1 { break }  // Nothing after a bad magic is read.
            }
            // Cut it anywhere (a partial frame left at close) and send it in random chunks.
            if rng.next() % 2 == 0 { stream.removeLast(Int(rng.next() % UInt64(min(stream.count, 300)))) }
            var off = 0
            var inbound = ByteBuffer()
            var decoder = FrameDecoder(maximumBodySize: 1 << 20)
            while off < stream.count {
                let n = min(stream.count - off, 1 + Int(rng.next() % 70_000))
                let w = stream.withUnsafeBytes { send(p.fd, $0.baseAddress! + off, n, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                if w > 0 { off += w } else if errno == EAGAIN { usleep(2_000) } else { break }
                if reads {
                    var chunk = [UInt8](repeating: 0, count: 65_536)
                    let r = chunk.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if r > 0 { inbound.writeBytes(chunk[0..<r]) }
                    while case .frame(let f)? = try? decoder.decodeOne(&inbound) {
                        if !sent.contains(f.requestID) { failures.withLockedValue { $0.append("peer \(peerIndex): reply to id \(f.requestID) it never sent") } }
                    }
                }
                if w <= 0 && errno != EAGAIN { break }
            }
            usleep(UInt32(rng.next() % 50_000))
        }
        XCTAssertEqual(failures.withLockedValue { $0 }, [])
        var drained = false
        for _ in 0..<500 {
            if budget.usage == (small: 0, large: 0) && judging.withLockedValue({ $0 }) == 0 { drained = true; break }
            usleep(10_000)
        }
        XCTAssertTrue(drained, "with every peer gone the budget still holds \(budget.usage) (\(judging.withLockedValue { $0 }) judging)")
        // The port still answers.
        let probe = try XCTUnwrap(SocketPeer(path: path))
        var status = ByteBuffer()
        status.writeFrame(Frame(type: .status, requestID: 7, body: ByteBuffer()))
        XCTAssertTrue(probe.writeAll(Array(buffer: status)))
        XCTAssertEqual(probe.readFrame(timeout: 5)?.requestID, 7)
        print("wire storm: 24 peers, budget back to \(budget.usage), refusals \(budget.refusals)")
    }
}
