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
