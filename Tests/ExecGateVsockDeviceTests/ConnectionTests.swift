// SPDX-License-Identifier: Apache-2.0
//
// The connection state machine and the muxer: handshakes both ways, data both ways under credit,
// and misbehaving guests (credit overrun, lying fwd_cnt, garbage headers, RST floods) — each kills
// only its own connection.

import XCTest
@testable import ExecGateVsockDevice

final class ConnectionTests: XCTestCase {
    var streams: [UInt32: FakeStream] = [:]
    lazy var muxer = VsockMuxer(guestCID: 3) { [unowned self] port in
        guard port != 9999 else { return nil }  // Nobody listens on host port 9999.
        let s = FakeStream(); self.streams[port] = s; return s
    }

    func send(_ h: VsockHeader, _ payload: [UInt8] = []) {
        var h = h
        h.len = UInt32(payload.count)
        muxer.receive(TxPacket(header: h, payload: payload), now: 0)
    }

    /// A host-initiated connection, established. Returns (stream, local port).
    func establishFromHost(guestPort: UInt32 = 5000, guestBufAlloc: UInt32 = 256 * 1024) throws -> (FakeStream, UInt32) {
        let s = FakeStream()
        let local = try XCTUnwrap(muxer.connectFromHost(stream: s, guestPort: guestPort, prefix: [], now: 0))
        let out = muxer.drain()
        XCTAssertEqual(out.map(\.0.op), [.request])
        XCTAssertEqual(out[0].0.srcPort, local)
        XCTAssertEqual(out[0].0.dstCID, 3)
        send(.fromGuest(.response, src: guestPort, dst: local, bufAlloc: guestBufAlloc))
        XCTAssertEqual(String(decoding: s.written, as: UTF8.self), "OK \(local)\n")
        return (s, local)
    }

    func testHostInitiatedHandshake() throws {
        let (_, local) = try establishFromHost()
        XCTAssertEqual(local, VsockLimits.firstHostPort)
        XCTAssertEqual(muxer.connections.count, 1)
    }

    func testHostInitiatedRefusedByGuestClosesTheHostStream() throws {
        let s = FakeStream()
        let local = try XCTUnwrap(muxer.connectFromHost(stream: s, guestPort: 7, prefix: [], now: 0))
        _ = muxer.drain()
        send(.fromGuest(.rst, src: 7, dst: local))
        XCTAssertTrue(s.closed)
        XCTAssertTrue(muxer.connections.isEmpty)
        XCTAssertTrue(muxer.drain().isEmpty, "an RST is never answered")
    }

    func testHostInitiatedTimesOut() throws {
        let s = FakeStream()
        _ = muxer.connectFromHost(stream: s, guestPort: 7, prefix: [], now: 0)
        _ = muxer.drain()
        _ = muxer.expire(now: UInt64(VsockLimits.connectTimeoutMillis + 1) * 1_000_000)
        XCTAssertTrue(s.closed)
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(muxer.connections.isEmpty)
    }

    func testGuestInitiatedConnectAndRefusal() {
        send(.fromGuest(.request, src: 1000, dst: 6000))
        XCTAssertNotNil(streams[6000])
        XCTAssertEqual(muxer.drain().map(\.0.op), [.response])
        send(.fromGuest(.request, src: 1001, dst: 9999))
        let out = muxer.drain()
        XCTAssertEqual(out.map(\.0.op), [.rst])
        XCTAssertEqual(out[0].0.dstPort, 1001)
        XCTAssertEqual(muxer.connections.count, 1)
    }

    func testDataBothWaysWithCredit() throws {
        let (s, local) = try establishFromHost(guestBufAlloc: 1000)
        // Host → guest: 2500 bytes, but the guest advertised 1000 bytes of buffer.
        s.incoming = (0..<2500).map { UInt8($0 & 0xff) }
        muxer.hostReadable(ConnectionKey(localPort: local, peerPort: 5000), hangup: false)
        var out = muxer.drain(room: 4096)
        XCTAssertEqual(out.map(\.0.op), [.rw, .creditRequest])
        XCTAssertEqual(out[0].1.count, 1000)
        XCTAssertEqual(out[0].1, (0..<1000).map { UInt8($0 & 0xff) })
        XCTAssertTrue(muxer.drain().isEmpty, "no credit: silence until the guest speaks")
        // The guest consumed it all.
        send(.fromGuest(.creditUpdate, src: 5000, dst: local, bufAlloc: 1000, fwdCnt: 1000))
        out = muxer.drain(room: 4096)
        XCTAssertEqual(out.first?.0.op, .rw)
        XCTAssertEqual(out.first?.1.count, 1000)

        // Guest → host: data arrives in order, fwd_cnt is advertised back.
        s.written = []
        send(.fromGuest(.rw, src: 5000, dst: local, bufAlloc: 1000, fwdCnt: 2000), Array("hello ".utf8))
        send(.fromGuest(.rw, src: 5000, dst: local, bufAlloc: 1000, fwdCnt: 2000), Array("world".utf8))
        XCTAssertEqual(String(decoding: s.written, as: UTF8.self), "hello world")
    }

    func testSlowHostBuffersAtMostTheAdvertisedCredit() throws {
        let (s, local) = try establishFromHost()
        s.written = []
        s.writeLimit = 0  // The host application does not read.
        let chunk = [UInt8](repeating: 1, count: 64 * 1024)
        for _ in 0..<4 { send(.fromGuest(.rw, src: 5000, dst: local), chunk) }  // Exactly 256 KiB: allowed.
        XCTAssertEqual(muxer.connections.first?.value.bufferedToHost, 256 * 1024)
        XCTAssertEqual(muxer.connections.first?.value.state, .established)
        s.writeLimit = nil
        muxer.hostWritable(ConnectionKey(localPort: local, peerPort: 5000))
        XCTAssertEqual(s.written.count, 256 * 1024)
        let out = muxer.drain()
        XCTAssertEqual(out.map(\.0.op), [.creditUpdate])
        XCTAssertEqual(out[0].0.fwdCnt, 256 * 1024)
        XCTAssertEqual(out[0].0.bufAlloc, VsockLimits.connBufferSize)
    }

    func testForbidsCreditOverrun() throws {
        let (victim, local) = try establishFromHost()
        let (bystander, other) = try establishFromHost()
        victim.writeLimit = 0
        let chunk = [UInt8](repeating: 1, count: 64 * 1024)
        for _ in 0..<4 { send(.fromGuest(.rw, src: 5000, dst: local), chunk) }
        send(.fromGuest(.rw, src: 5000, dst: local), [1])  // One byte beyond the credit.
        let out = muxer.drain()
        XCTAssertEqual(out.map(\.0.op), [.rst])
        XCTAssertEqual(out[0].0.srcPort, local)
        XCTAssertTrue(victim.closed)
        XCTAssertNil(muxer.connections[ConnectionKey(localPort: local, peerPort: 5000)])
        // The other connection is untouched.
        send(.fromGuest(.rw, src: 5000, dst: other), Array("still here".utf8))
        XCTAssertTrue(String(decoding: bystander.written, as: UTF8.self).hasSuffix("still here"))
        XCTAssertFalse(bystander.closed)
    }

    func testForbidsLyingFwdCnt() throws {
        let (s, local) = try establishFromHost()
        s.incoming = [1, 2, 3]
        muxer.hostReadable(ConnectionKey(localPort: local, peerPort: 5000), hangup: false)
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rw])
        // The guest claims to have consumed 1000 bytes; we sent 3.
        send(.fromGuest(.creditUpdate, src: 5000, dst: local, fwdCnt: 1000))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(s.closed)
    }

    func testGarbageHeadersKillOnlyTheirConnection() throws {
        let (s, local) = try establishFromHost()
        // Wrong type, wrong source CID, wrong destination CID: answered with RST, the connection lives.
        var h = VsockHeader.fromGuest(.rw, src: 5000, dst: local)
        h.type = 2
        send(h, [1])
        send(.fromGuest(.rw, src: 5000, dst: local, cid: 77), [1])
        var d = VsockHeader.fromGuest(.rw, src: 5000, dst: local); d.dstCID = 1
        send(d, [1])
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst, .rst, .rst])
        XCTAssertFalse(s.closed)
        XCTAssertEqual(muxer.stats.rejectedPackets, 3)
        // An unknown op on the established connection kills it.
        send(.fromGuest(VsockOp(rawValue: 99), src: 5000, dst: local))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(s.closed)
        // A malformed packet (lying len) reported by the queue layer kills that connection only.
        let (s2, local2) = try establishFromHost()
        muxer.rejectMalformed(header: .fromGuest(.rw, src: 5000, dst: local2, len: 5000))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(s2.closed)
    }

    func testRSTFloodIsBounded() {
        for i in 0..<10_000 { send(.fromGuest(.rw, src: UInt32(i), dst: 4242), [1]) }
        for i in 0..<10_000 { send(.fromGuest(.rst, src: UInt32(i), dst: 4242)) }
        let out = muxer.drain()
        XCTAssertEqual(out.count, VsockLimits.maxPendingOrphanRST)
        XCTAssertTrue(out.allSatisfy { $0.0.op == .rst })
        XCTAssertEqual(muxer.stats.droppedOrphanRST, 10_000 - VsockLimits.maxPendingOrphanRST)
        XCTAssertTrue(muxer.connections.isEmpty)
    }

    func testShutdownFromGuestIsAnsweredWithRST() throws {
        let (s, local) = try establishFromHost()
        send(.fromGuest(.shutdown, src: 5000, dst: local, flags: 2))
        XCTAssertTrue(s.writeShut, "SHUTDOWN(SEND) half-closes the host stream")
        XCTAssertFalse(s.closed)
        send(.fromGuest(.shutdown, src: 5000, dst: local, flags: 3))
        XCTAssertEqual(muxer.drain().map(\.0.op), [.rst])
        XCTAssertTrue(s.closed)
        XCTAssertTrue(muxer.connections.isEmpty)
    }

    func testHostEOFSendsShutdownAfterTheData() throws {
        let (s, local) = try establishFromHost()
        s.incoming = Array("bye".utf8)
        s.eof = true
        muxer.hostReadable(ConnectionKey(localPort: local, peerPort: 5000), hangup: true)
        let out = muxer.drain()
        XCTAssertEqual(out.map(\.0.op), [.rw, .shutdown])
        XCTAssertEqual(out[1].0.flags, 3)
        send(.fromGuest(.rst, src: 5000, dst: local))
        XCTAssertTrue(muxer.connections.isEmpty)
    }

    func testHandshakePrefixBytesAreDeliveredFirst() throws {
        let s = FakeStream()
        let local = try XCTUnwrap(muxer.connectFromHost(stream: s, guestPort: 5000, prefix: Array("early".utf8), now: 0))
        _ = muxer.drain()
        s.incoming = Array(" later".utf8)
        send(.fromGuest(.response, src: 5000, dst: local))
        muxer.hostReadable(ConnectionKey(localPort: local, peerPort: 5000), hangup: false)
        let data = muxer.drain().filter { $0.0.op == .rw }.flatMap(\.1)
        XCTAssertEqual(String(decoding: data, as: UTF8.self), "early later")
    }

    func testHybridHandshakeParser() {
        XCTAssertEqual(HybridHandshake.parse(Array("CONNECT 5000\n".utf8)), .connect(port: 5000, rest: []))
        XCTAssertEqual(HybridHandshake.parse(Array("CONNECT 5000\r\nxy".utf8)), .connect(port: 5000, rest: Array("xy".utf8)))
        XCTAssertEqual(HybridHandshake.parse(Array("CONNECT 50".utf8)), .needMore)
        XCTAssertEqual(HybridHandshake.parse(Array("CONNECT 4294967295\n".utf8)), .connect(port: UInt32.max, rest: []))
        for bad in ["CONNECT 4294967296\n", "CONNECT -1\n", "CONNECT \n", "connect 5\n", "GET / HTTP/1.1\n", "CONNECT 5 6\n"] {
            guard case .invalid = HybridHandshake.parse(Array(bad.utf8)) else { return XCTFail("accepted \(bad)") }
        }
        guard case .invalid = HybridHandshake.parse([UInt8](repeating: 0x41, count: VsockLimits.maxHandshakeLine)) else { return XCTFail("unbounded line") }
    }
}
