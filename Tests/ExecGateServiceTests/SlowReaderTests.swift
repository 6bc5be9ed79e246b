// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the ports, round 8 (lead 1: slow readers). Peers that send complete
// request frames but read their replies slowly or never: what the server holds for them, and for
// how long, against the production pipeline (`addBoundedFrameHandlers`) with the production
// limits (`PortLimits()`: 36 MiB body budget, 64 in flight, 10 s write stall), in process so the
// shared budget can be read directly, with a well-behaved client on another connection.

import _ExecGateInternals
import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import Logging
import NIOCore
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class SlowReaderTests: XCTestCase {
    /// Attack (failed; kept as a regression test): complete frames parked in a connection's
    /// `pending` queue. The server stops reading a connection whose replies are unread (its 64
    /// requests in flight hold replies the socket does not take), but frames already decoded from
    /// the last read batch wait in `pending` with their bodies reserved in the port's shared
    /// budget; no deadline of their own covers them (the frame deadline ends at a frame's last
    /// byte; the write-stall clock restarts at every completed reply write). Each of 120 peers
    /// (below the 128-connection cap) writes, at once, 3000 `status` requests (their replies far
    /// exceed the socket buffer) followed by two frames of 32 KiB bodies, then reads 192 KiB of
    /// replies every 4 s (less often than the 10 s write stall, enough for writes to complete).
    /// Why it fails: what one connection can park is one read batch (the server resumes reading
    /// only when `pending` is empty), and a peer that reads at all lets the server start its
    /// pending frames (each reply written frees an in-flight slot), while a peer that reads nothing
    /// is closed by the write stall. Measured: at most ~7.5 MiB parked by all 120 together, for
    /// ~8–12 s; asserted with margins: the peak stays under 16 MiB of the 36 MiB budget, nothing is
    /// parked 25 s later, and a well-behaved client on its own connection gets a 16 MiB body
    /// admitted and answered meanwhile.
    func testSlowReadersCannotParkBodiesInTheBudget() async throws {
        let limits = PortLimits()
        let budget = BufferBudget(total: limits.bufferBudget, smallFrameSize: limits.smallFrameSize)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let dir = Fixtures.temporaryDirectory()
        let path = dir + "/port.sock"
        let reply = ByteBuffer(bytes: [UInt8](repeating: 0x5a, count: 100))
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(configuration: limits, budget: budget, logger: Logger(label: "test")) { frame, loop in
                        loop.makeSucceededFuture(Frame(type: .statusReply, requestID: frame.requestID, body: reply))
                    }
                }
            }
            .bind(unixDomainSocketPath: path).get()

        var blob = ByteBuffer()
        for i in 0..<3000 { blob.writeFrame(Frame(type: .status, requestID: UInt64(i), body: ByteBuffer())) }
        for i in 0..<2 { blob.writeFrame(Frame(type: .status, requestID: UInt64(1000 + i), body: ByteBuffer(bytes: [UInt8](repeating: 0, count: 32 << 10)))) }
        let bytes = Array(buffer: blob)
        var attackers: [SocketPeer] = []
        for _ in 0..<120 {
            let p = try XCTUnwrap(SocketPeer(path: path))
            // Warm the server's read size (adaptive allocator) as a long-lived VMM connection has it.
            var warm = ByteBuffer()
            for i in 0..<400 { warm.writeFrame(Frame(type: .status, requestID: UInt64(i), body: ByteBuffer())) }
            XCTAssertTrue(p.writeAll(Array(buffer: warm)))
            for _ in 0..<400 { XCTAssertNotNil(p.readFrame(timeout: 5)) }
            var flags = fcntl(p.fd, F_GETFL); flags |= O_NONBLOCK; _ = fcntl(p.fd, F_SETFL, flags)
            attackers.append(p)
        }
        // Every attacker writes its blob (non-blocking: what the socket takes).
        // (The blob fits the socket buffer: a partial frame would be closed by the frame deadline.)
        var sent = 0
        for p in attackers { sent += bytes.withUnsafeBytes { send(p.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count ? 1 : 0 }
        XCTAssertEqual(sent, attackers.count, "every blob was taken whole (\(bytes.count) bytes)")
        let t0 = now()
        var peak = 0
        var probed = false
        var small = [UInt8](repeating: 0, count: 64 << 10)
        while now() - t0 < 25 {
            try await Task.sleep(nanoseconds: 500_000_000)
            peak = max(peak, budget.inUse)
            if !probed && now() - t0 > 5 {
                // While the bodies are parked: a module-sized (1 MiB) request on a fresh connection.
                probed = true
                let probe = try XCTUnwrap(SocketPeer(path: path))
                var f = ByteBuffer()
                f.writeFrame(Frame(type: .status, requestID: 3, body: ByteBuffer(bytes: [UInt8](repeating: 0, count: 1 << 20))))
                XCTAssertTrue(probe.writeAll(Array(buffer: f)))
                let a = probe.readFrame(timeout: 5)
                XCTAssertEqual(a?.type, .statusReply, "a well-behaved 1 MiB request was not answered while \(budget.inUse >> 10) KiB were parked")
            }
            if Int((now() - t0) * 2) % 8 == 0 {
                for p in attackers { for _ in 0..<3 { _ = small.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } } }
            }
        }
        let held = budget.inUse
        let open = attackers.filter { !$0.closedByPeer() }.count
        print("slow readers: peak \(peak >> 10) KiB of bodies parked, \(held >> 10) KiB after 25 s, \(open) of 120 connections open")

        // The well-behaved client: a 16 MiB body on its own connection.
        let good = try XCTUnwrap(SocketPeer(path: path))
        var big = ByteBuffer()
        big.writeFrame(Frame(type: .status, requestID: 7, body: ByteBuffer(bytes: [UInt8](repeating: 0, count: 16 << 20))))
        XCTAssertTrue(good.writeAll(Array(buffer: big)))
        let answer = good.readFrame(timeout: 10)
        XCTAssertEqual(answer?.type, .statusReply, "the well-behaved client's 16 MiB body was refused: \(answer.map { (try? ErrorReply(decoding: $0.body).message) ?? "\($0.type)" } ?? "no answer")")
        XCTAssertLessThanOrEqual(peak, 16 << 20, "slow readers parked \(peak >> 20) MiB of request bodies")
        XCTAssertLessThanOrEqual(held, 4 << 20, "slow readers keep \(held >> 20) MiB of request bodies parked after 25 s (\(open) connections open)")
        attackers.removeAll()
        try? await server.close().get()
        try? await group.shutdownGracefully()
    }
}
