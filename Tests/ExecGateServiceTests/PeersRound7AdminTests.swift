// SPDX-License-Identifier: Apache-2.0
//
// Peers round 7 on the admin port: replies its keyless peers never read.

import ExecGateAdmin
import ExecGateClient
import ExecGateTestSupport
import ExecGateWire
import Foundation
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PeersRound7AdminTests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    /// Attack: park audit pages in the service. audit-read needs no key; a reply is up to 1 MiB
    /// of records (`AuditLimits.maximumBytesPerRead`), and a record's size is the VMM peer's to
    /// choose (its module name, up to 64 KiB). A host process fills the audit ring with ~1.5 MiB
    /// of records over the VMM port, then opens the admin port's 16 connections, asks each for a
    /// page and reads nothing: each 1 MiB page waits unwritten until the write stall (10 s) closes
    /// the connection, and the peer reconnects. The service VM's memory budget keeps 8 MiB for
    /// everything besides bodies and facts (`MemoryBudget.reserve`: stacks, NIO's buffers,
    /// replies, the 4 MiB audit ring).
    func testUnreadAuditPagesAreBoundedAcrossTheAdminPort() async throws {
        dir = Fixtures.temporaryDirectory()
        let certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let serve = ServeFixture.start(in: dir, ["--trust", certPath, "--signature-only"])
        pid = serve.pid
        XCTAssertTrue(serve.up)
        let module = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
        let vmm = try await ExecGateClient.connect(to: .unix(path: serve.vmm), timeout: 20)
        // A record keeps 1 KiB of the name (AuditLimits.recordWordBytes), each control character
        // 6 bytes of JSON: ~6.5 KiB a record, 250 of them more than a page.
        let name = String(repeating: "\u{1}", count: 60 << 10)
        for _ in 0..<250 {
            var a = AuthorizeModule(module: ByteBuffer(bytes: module))
            a.moduleName = name
            _ = try await vmm.send(.authorizeModule(a))
        }
        await vmm.close()
        // One page read back in full: the ring holds more than a page, and the allocator is warm.
        let reader = try await ExecGateClient.connect(to: .unix(path: serve.admin), timeout: 20)
        let page = try await reader.exchange(Frame(type: AdminMessageType.auditRead, requestID: 1, body: AuditRead(maxRecords: 10_000).encode()))
        XCTAssertGreaterThan(page.body.readableBytes, 1 << 20 - (64 << 10), "the ring holds less than a page")
        await reader.close()
        usleep(300_000)
        let rss0 = procStatusBytes("VmRSS", pid: "\(pid)")
        var peers: [SocketPeer] = []
        var ask = ByteBuffer()
        ask.writeFrame(Frame(type: AdminMessageType.auditRead, requestID: 1, body: AuditRead(maxRecords: 10_000).encode()))
        for _ in 0..<16 {
            guard let p = SocketPeer(path: serve.admin) else { break }
            XCTAssertTrue(p.writeAll(Array(buffer: ask)))
            peers.append(p)
        }
        usleep(1_500_000)
        let held = procStatusBytes("VmRSS", pid: "\(pid)") - rss0
        print("unread audit pages: \(peers.count) admin connections, serve RSS +\(held >> 10) KiB (pages of \(page.body.readableBytes >> 10) KiB)")
        XCTAssertLessThan(held, 4 << 20, "keyless admin peers parked \(held >> 20) MiB of audit pages nobody reads")
        peers.removeAll()
        // Their connections gone, their pages are given back: an operator reading the log gets
        // full pages again (a read that finds the pool taken is refused `unavailable`, retried).
        var full = 0
        for attempt in 0..<20 where full == 0 {
            if attempt > 0 { usleep(200_000) }
            let again = try await ExecGateClient.connect(to: .unix(path: serve.admin), timeout: 20)
            let f = try await again.exchange(Frame(type: AdminMessageType.auditRead, requestID: 1, body: AuditRead(maxRecords: 10_000).encode()))
            if f.type == AdminMessageType.auditReadReply { full = f.body.readableBytes }
            await again.close()
        }
        XCTAssertEqual(full, page.body.readableBytes, "the pages of closed connections were not given back")
    }
}
