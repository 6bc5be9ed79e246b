// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 8, against a real `execgate serve` process: what its replies hold.

import _ExecGateInternals
import ExecGateTestSupport
import ExecGateWire
import Foundation
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Round 8 against a real `execgate serve` process: what its replies hold.
final class PeersRound8ServeTests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
        try Fixtures.writeFile(dir + "/kernel.pem", Array(try Fixtures.debianCertificates()[0].pem.utf8))
    }

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    /// Attack (failed; kept): replies the peer never reads, made as large as a request can make them. An
    /// authorize-module for a guest that is not registered is answered `unknown-guest` with
    /// "guest '<id>' is not registered", the whole id echoed, and a guest id may be 64 KiB. A peer
    /// that pipelines such requests and reads nothing makes every reply wait in the server's
    /// outbound buffer until the write stall (10 s) closes the connection. Bodies are charged to
    /// the port's budget only until judged; replies to nothing. Here 100 connections each send
    /// 64 of them (the in-flight cap) and read nothing; the serve process's RSS must stay within
    /// what one connection's replies cost a few times over, not grow with the connections.
    /// Why it fails: the server starts nothing while a connection's socket is not writable and
    /// stops reading it, so a connection holds the replies of the requests it had in flight when
    /// its socket filled — a few here, as an unknown-guest error is judged at once — plus NIO's
    /// 64 KiB watermark; the kernel's socket buffers hold the rest, outside the process. Measured
    /// (debug serve): +3 MiB for 100 connections × 64 requests of 61,653-byte replies.
    /// Requests whose judging is slow enough that all 64 are started before the first reply
    /// fills the socket held 64 replies each (≈ 4 MiB a connection): replies were charged to no
    /// budget; now to the port's `ReplyPool` (PeersRound9Tests).
    func testEchoedRepliesNeverReadDoNotGrowTheServerWithTheConnections() throws {
        let serve = ServeFixture.start(in: dir, ["--trust", dir + "/kernel.pem", "--signature-only"])
        pid = serve.pid
        XCTAssertTrue(serve.up)
        let id = String(repeating: "g", count: 60 << 10)
        var one = Message.authorizeModule(AuthorizeModule(guestID: id, module: ByteBuffer(bytes: [1, 2, 3]))).frame(requestID: 1)
        // The reply's size, read on a connection that reads.
        let probe = try XCTUnwrap(SocketPeer(path: serve.vmm))
        var wire = ByteBuffer(); wire.writeFrame(one)
        XCTAssertTrue(probe.writeAll(Array(buffer: wire)))
        let reply = try XCTUnwrap(probe.readFrame(timeout: 10))
        let replyBytes = reply.body.readableBytes
        XCTAssertGreaterThan(replyBytes, 60 << 10, "the id is echoed")
        var burst = ByteBuffer()
        for i in 0..<64 { one.requestID = UInt64(i); burst.writeFrame(one) }
        let bytes = Array(buffer: burst)
        usleep(300_000)
        let before = procStatusBytes("VmRSS", pid: "\(pid)")
        let peers = 100
        var attackers: [SocketPeer] = []
        let writers = DispatchGroup()
        let lock = NSLock()
        for _ in 0..<peers {
            guard let p = SocketPeer(path: serve.vmm) else { break }
            attackers.append(p)
            DispatchQueue.global().async(group: writers) { _ = p.writeAll(bytes); lock.lock(); lock.unlock() }
        }
        var peak = before
        let t0 = now()
        while now() - t0 < 6 {
            peak = max(peak, procStatusBytes("VmRSS", pid: "\(pid)"))
            usleep(100_000)
        }
        let grew = peak - before
        print("replies never read: \(attackers.count) connections × 64 requests, reply \(replyBytes) bytes each; serve RSS \(before >> 20) → peak \(peak >> 20) MiB (+\(grew >> 20) MiB in 6 s)")
        XCTAssertLessThan(grew, 64 << 20, "unread replies grew the server by \(grew >> 20) MiB: \(attackers.count) connections' in-flight replies (\(replyBytes) bytes each) are held, charged to nothing")
        attackers.forEach { shutdown($0.fd, Int32(SHUT_RDWR)) }
        _ = writers.wait(timeout: .now() + 15)
    }
}
