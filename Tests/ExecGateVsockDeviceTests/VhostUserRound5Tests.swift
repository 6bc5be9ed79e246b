// SPDX-License-Identifier: Apache-2.0
//
// Peers round 5 on the vhost-user session: messages out of the order QEMU sends them (before
// SET_FEATURES, before SET_MEM_TABLE, after RESET_OWNER). A failed attack kept as a test: every
// one is refused (REPLY_ACK non-zero) or harmless, and no ring runs that the frontend did not set
// up and enable (vhost-user.rst "Ring states", "Starting and stopping rings").

import CExecGateVsockSys
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

final class VhostUserRound5Tests: XCTestCase {
    func msg(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = []) -> VhostUserMessage {
        VhostUserMessage(header: VhostUserHeader(request: r, flags: 1 | 8, size: UInt32(payload.count)), payload: payload, fds: fds)
    }

    /// REPLY_ACK status of one message (0 = applied).
    func ack(_ s: VhostUserSession, _ m: VhostUserMessage) throws -> UInt64 {
        let r = try XCTUnwrap(s.handle(m), "no REPLY_ACK for \(m.header.request)")
        return Array(r.dropFirst(12)).u64(0)
    }

    func testMessagesOutOfOrderNeverStartARing() throws {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.protocolReplyAck)))
        let memFd = egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        defer { close(memFd) }
        let raw = try XCTUnwrap(mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memFd, 0))
        defer { munmap(raw, 1 << 20) }
        let tx = FakeGuest(shared: raw, ringOffset: 0x8000, dataOffset: 0x80000)
        var addr = le32(1, 0)
        addr += le(tx.uva(tx.descGPA)); addr += le(tx.uva(tx.usedGPA)); addr += le(tx.uva(tx.availGPA)); addr += le(0)

        // Before SET_FEATURES: SET_VRING_ENABLE is refused (F_PROTOCOL_FEATURES not negotiated).
        XCTAssertNotEqual(try ack(s, msg(.setVringEnable, le32(1, 1))), 0)
        // Before SET_MEM_TABLE: addresses are only stored; a kick cannot start the ring (nothing
        // translates), and the kick fd it carried is kept for the next start, never polled as live.
        XCTAssertEqual(try ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(try ack(s, msg(.setVringAddr, addr)), 0)
        XCTAssertNotEqual(try ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertFalse(s.isLive(1))
        XCTAssertFalse(s.vrings[1].started)

        // The whole set-up, then RESET_OWNER: every ring stops and is disabled until SET_FEATURES.
        XCTAssertEqual(try ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))), 0)
        var table = le32(1, 0)
        table += le(FakeGuest.gpaBase); table += le(1 << 20); table += le(FakeGuest.uvaBase); table += le(0)
        XCTAssertEqual(try ack(s, msg(.setMemTable, table, fds: [dup(memFd)])), 0)
        XCTAssertEqual(try ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertFalse(s.isLive(1), "started but not enabled: F_PROTOCOL_FEATURES rings start disabled")
        XCTAssertEqual(try ack(s, msg(.setVringEnable, le32(1, 1))), 0)
        XCTAssertTrue(s.isLive(1))
        XCTAssertEqual(try ack(s, msg(.resetOwner)), 0)
        XCTAssertFalse(s.isLive(1))
        XCTAssertEqual(s.kickFd(1), -1, "the stopped ring's kick fd is closed")
        // After RESET_OWNER, before SET_FEATURES again: no enable, and a kick starts nothing live.
        XCTAssertNotEqual(try ack(s, msg(.setVringEnable, le32(1, 1))), 0)
        XCTAssertEqual(try ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertFalse(s.isLive(1))
        // Once negotiated again, the ring runs only when enabled.
        XCTAssertEqual(try ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))), 0)
        XCTAssertFalse(s.isLive(1))
        XCTAssertEqual(try ack(s, msg(.setVringEnable, le32(1, 1))), 0)
        XCTAssertTrue(s.isLive(1))
        // Ring sizes and bases cannot change under a running ring, in any order.
        XCTAssertNotEqual(try ack(s, msg(.setVringNum, le32(1, 32))), 0)
        XCTAssertNotEqual(try ack(s, msg(.setVringBase, le32(1, 5))), 0)
        s.closeAll()
    }
}
