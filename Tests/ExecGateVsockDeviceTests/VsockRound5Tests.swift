// SPDX-License-Identifier: Apache-2.0
//
// Peers round 5 on the vsock muxer (no QEMU, no host vsock): credit counters near 2^32, an RST
// then a REQUEST on the same port pair, and REQUEST storms to ports nobody listens on. Each is a
// failed attack kept as a test: the rules below are the kernel's.

import XCTest
@testable import ExecGateVsockDevice

final class VsockRound5Tests: XCTestCase {
    var streams: [UInt32: FakeStream] = [:]
    var connects = 0
    lazy var muxer = VsockMuxer(guestCID: 3) { [unowned self] port in
        self.connects += 1
        guard port != 9999 else { return nil }  // Nobody listens on host port 9999.
        let s = FakeStream(); self.streams[port] = s; return s
    }

    func send(_ h: VsockHeader, _ payload: [UInt8] = []) {
        var h = h
        h.len = UInt32(payload.count)
        muxer.receive(TxPacket(header: h, payload: payload), now: 0)
    }

    /// The counters are wrapping u32s on both sides (virtio 1.2 § 5.10.6.3; the kernel's
    /// virtio_transport_space_update() takes buf_alloc and fwd_cnt from every header, and
    /// virtio_transport_get_credit() computes `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` in u32).
    /// A guest whose RESPONSE starts fwd_cnt 16 below 2^32 and advertises buf_alloc 2^32 − 1:
    /// data flows in chunks of at most 64 KiB (never the advertised 4 GiB at once), a fwd_cnt
    /// that wraps past 0 to exactly what was sent is accepted, one byte more is a lie (RST), and
    /// nothing the guest advertises makes the host buffer anything.
    func testCreditCountersWrapAtTwoToThe32() throws {
        let s = FakeStream()
        let local = try XCTUnwrap(muxer.connectFromHost(stream: s, guestPort: 5000, prefix: [], now: 0))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.request])
        let start: UInt32 = 0xFFFF_FFF0
        send(.fromGuest(.response, src: 5000, dst: local, bufAlloc: .max, fwdCnt: start))
        XCTAssertEqual(String(decoding: s.written, as: UTF8.self), "OK \(local)\n")
        let key = ConnectionKey(localPort: local, peerPort: 5000)
        // The 16 bytes the guest's own start put "in flight" are taken off its credit, no more.
        XCTAssertEqual(muxer.connections[key]?.peerCredit, UInt32.max - 16)
        s.incoming = [UInt8](repeating: 7, count: 200_000)
        muxer.hostReadable(key, hangup: false)
        let out = muxer.drain(room: 1 << 20)
        XCTAssertEqual(out.map(\.0.op), [.rw, .rw, .rw, .rw])
        XCTAssertEqual(out.map(\.1.count), [65536, 65536, 65536, 200_000 - 3 * 65536])
        XCTAssertEqual(muxer.connections[key]?.bufferedToHost, 0)
        // The guest consumed all of it: fwd_cnt wraps past 0.
        let consumed = start &+ 16 &+ 200_000
        send(.fromGuest(.creditUpdate, src: 5000, dst: local, bufAlloc: .max, fwdCnt: consumed))
        XCTAssertEqual(muxer.connections[key]?.state, .established)
        XCTAssertEqual(muxer.connections[key]?.peerCredit, UInt32.max)
        // One byte more than was ever sent: a lie, the connection is reset.
        send(.fromGuest(.creditUpdate, src: 5000, dst: local, bufAlloc: .max, fwdCnt: consumed &+ 1))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(s.closed)
    }

    /// An RST frees the port pair at once (virtio_transport_recv_pkt(): the RST resets the
    /// connected socket, and a later REQUEST to a listener creates a new child socket): a REQUEST
    /// right after it on the same pair is a new connection with a new host stream, and the old
    /// stream stays closed; nothing of the old connection's bytes or credit carries over.
    func testAPortPairIsReusedRightAfterItsRST() throws {
        send(.fromGuest(.request, src: 1000, dst: 6000))
        let first = try XCTUnwrap(streams[6000])
        XCTAssertEqual(muxer.drain().map(\.0.op), [.response])
        send(.fromGuest(.rw, src: 1000, dst: 6000), Array("old".utf8))
        send(.fromGuest(.rst, src: 1000, dst: 6000))
        XCTAssertTrue(first.closed)
        XCTAssertTrue(muxer.connections.isEmpty)
        send(.fromGuest(.request, src: 1000, dst: 6000, fwdCnt: 12345))
        let second = try XCTUnwrap(streams[6000])
        XCTAssertFalse(second === first)
        XCTAssertEqual(muxer.drain().map(\.0.op), [.response])
        send(.fromGuest(.rw, src: 1000, dst: 6000, fwdCnt: 12345), Array("new".utf8))
        XCTAssertEqual(String(decoding: second.written, as: UTF8.self), "new")
        XCTAssertEqual(String(decoding: first.written, as: UTF8.self), "old")
        XCTAssertEqual(muxer.connections.count, 1)
        // A second REQUEST on the live pair is no new connection: the live one is reset (its
        // stream closed), and the pair is free again.
        send(.fromGuest(.request, src: 1000, dst: 6000))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(second.closed)
        XCTAssertTrue(muxer.connections.isEmpty)
    }

    /// REQUESTs to a host port nobody listens on (the kernel answers each with RST:
    /// virtio_transport_recv_pkt() → no listener → virtio_transport_reset_no_sock()): 20,000 of
    /// them, from as many source ports, open nothing, queue at most 256 RSTs (the rest counted and
    /// dropped: the guest's own retries see them as refused or time out), and a REQUEST to a
    /// listening port right after is still accepted.
    func testRequestStormsToClosedPortsHoldNothing() {
        for i in 0..<20_000 { send(.fromGuest(.request, src: UInt32(10_000 + i), dst: 9999)) }
        XCTAssertTrue(muxer.connections.isEmpty)
        XCTAssertEqual(connects, 20_000)
        let out = muxer.drain()
        XCTAssertEqual(out.count, VsockLimits.maxPendingOrphanRST)
        XCTAssertTrue(out.allSatisfy { $0.0.op == .rst && $0.0.srcPort == 9999 && $0.0.dstCID == 3 })
        XCTAssertEqual(muxer.stats.droppedOrphanRST, 20_000 - VsockLimits.maxPendingOrphanRST)
        send(.fromGuest(.request, src: 1, dst: 6000))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.response])
        XCTAssertEqual(muxer.connections.count, 1)
    }
}
