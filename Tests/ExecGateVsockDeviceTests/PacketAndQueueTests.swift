// SPDX-License-Identifier: Apache-2.0
//
// The packet and virtqueue layers against fake guest memory: honest chains, and hostile ones
// (out-of-memory buffers, overflowing addresses, loops, lying lengths, avail index jumps).

import XCTest
@testable import ExecGateVsockDevice

final class PacketAndQueueTests: XCTestCase {
    func testHeaderRoundTrips() {
        let h = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1234, dstPort: 5000, op: .rw, len: 7, flags: 3, bufAlloc: 99, fwdCnt: 42)
        let b = h.bytes
        XCTAssertEqual(b.count, 44)
        XCTAssertEqual(b[30], 5)  // op at offset 30, little-endian.
        XCTAssertEqual(b.withUnsafeBytes { VsockHeader(bytes: $0) }, h)
        XCTAssertNil([UInt8](repeating: 0, count: 43).withUnsafeBytes { VsockHeader(bytes: $0) })
    }

    func testParsesHeaderAndPayloadSplitAcrossDescriptors() throws {
        let g = FakeGuest()
        let payload = (0..<100).map { UInt8($0) }
        let bytes = VsockHeader.fromGuest(.rw, src: 9, dst: 5000, len: 100).bytes + payload
        let head = g.publishReadable(bytes, split: 10)  // 15 descriptors of ≤ 10 bytes.
        XCTAssertEqual(try g.queue.nextAvailable(), head)
        let chain = try g.queue.chain(head: head, memory: g.memory)
        let p = try TxPacket.parse(chain)
        XCTAssertEqual(p.header.srcPort, 9)
        XCTAssertEqual(p.payload, payload)
        XCTAssertNil(try g.queue.nextAvailable())
    }

    func testForbidsLyingLength() throws {
        let g = FakeGuest()
        let head = g.publishReadable(VsockHeader.fromGuest(.rw, src: 9, dst: 5000, len: 1000).bytes + [1, 2, 3])
        _ = try g.queue.nextAvailable()
        XCTAssertThrowsError(try TxPacket.parse(try g.queue.chain(head: head, memory: g.memory))) {
            XCTAssertEqual($0 as? PacketError, .payloadTruncated(claimed: 1000, available: 3))
        }
    }

    func testForbidsOversizePayloadLength() throws {
        let g = FakeGuest()
        let head = g.publishReadable(VsockHeader.fromGuest(.rw, src: 9, dst: 5000, len: 64 * 1024 + 1).bytes)
        _ = try g.queue.nextAvailable()
        XCTAssertThrowsError(try TxPacket.parse(try g.queue.chain(head: head, memory: g.memory))) {
            XCTAssertEqual($0 as? PacketError, .payloadTooLarge(64 * 1024 + 1))
        }
    }

    func testMaximumPayloadLengthIsAccepted() throws {
        let g = FakeGuest()
        let n = 64 * 1024
        let head = g.publishReadable(VsockHeader.fromGuest(.rw, src: 9, dst: 5000, len: UInt32(n)).bytes + [UInt8](repeating: 7, count: n))
        _ = try g.queue.nextAvailable()
        XCTAssertEqual(try TxPacket.parse(try g.queue.chain(head: head, memory: g.memory)).payload.count, n)
    }

    func testForbidsShortHeader() throws {
        let g = FakeGuest()
        let head = g.publishReadable([UInt8](repeating: 1, count: 20))
        _ = try g.queue.nextAvailable()
        XCTAssertThrowsError(try TxPacket.parse(try g.queue.chain(head: head, memory: g.memory))) {
            XCTAssertEqual($0 as? PacketError, .headerTruncated(20))
        }
    }

    func testForbidsDescriptorsOutsideGuestMemory() throws {
        let g = FakeGuest()
        let cases: [(UInt64, UInt32)] = [
            (0, 44),                                          // Below the region.
            (FakeGuest.gpaBase + UInt64(g.size) - 10, 44),    // Runs past its end.
            (UInt64.max - 10, 44),                            // addr + len overflows.
            (FakeGuest.gpaBase + UInt64(g.size), 1),          // Just past the end.
        ]
        for (addr, len) in cases {
            g.writeDesc(0, addr: addr, len: len, flags: 0, next: 0)
            g.publish(head: 0)
            let head = try XCTUnwrap(try g.queue.nextAvailable())
            XCTAssertThrowsError(try g.queue.chain(head: head, memory: g.memory)) {
                XCTAssertEqual($0 as? QueueError, .descriptorOutsideMemory(gpa: addr, length: len))
            }
        }
        // The boundary: the last byte of the region is fine.
        g.writeDesc(0, addr: FakeGuest.gpaBase + UInt64(g.size) - 1, len: 1, flags: 0, next: 0)
        g.publish(head: 0)
        XCTAssertNoThrow(try g.queue.chain(head: try XCTUnwrap(try g.queue.nextAvailable()), memory: g.memory))
    }

    func testForbidsDescriptorLoops() throws {
        let g = FakeGuest()
        g.writeDesc(0, addr: g.dataGPA, len: 8, flags: 1, next: 1)
        g.writeDesc(1, addr: g.dataGPA, len: 8, flags: 1, next: 0)
        g.publish(head: 0)
        let head = try XCTUnwrap(try g.queue.nextAvailable())
        XCTAssertThrowsError(try g.queue.chain(head: head, memory: g.memory)) { XCTAssertEqual($0 as? QueueError, .chainTooLong) }
    }

    func testForbidsNextIndexOutOfRange() throws {
        let g = FakeGuest()
        g.writeDesc(0, addr: g.dataGPA, len: 8, flags: 1, next: 500)
        g.publish(head: 0)
        let head = try XCTUnwrap(try g.queue.nextAvailable())
        XCTAssertThrowsError(try g.queue.chain(head: head, memory: g.memory)) { XCTAssertEqual($0 as? QueueError, .descriptorIndexOutOfRange(500)) }
    }

    func testForbidsIndirectAndMisorderedDescriptors() throws {
        let g = FakeGuest()
        g.writeDesc(0, addr: g.dataGPA, len: 16, flags: 4, next: 0)
        g.publish(head: 0)
        XCTAssertThrowsError(try g.queue.chain(head: try XCTUnwrap(try g.queue.nextAvailable()), memory: g.memory)) {
            XCTAssertEqual($0 as? QueueError, .indirectUnsupported)
        }
        g.writeDesc(1, addr: g.dataGPA, len: 16, flags: 2 | 1, next: 2)
        g.writeDesc(2, addr: g.dataGPA, len: 16, flags: 0, next: 0)
        g.publish(head: 1)
        XCTAssertThrowsError(try g.queue.chain(head: try XCTUnwrap(try g.queue.nextAvailable()), memory: g.memory)) {
            XCTAssertEqual($0 as? QueueError, .writableBeforeReadable)
        }
    }

    func testForbidsAvailIndexJumpAndBadHead() throws {
        let g = FakeGuest()
        g.setAvailIndex(1000)
        XCTAssertThrowsError(try g.queue.nextAvailable()) { XCTAssertEqual($0 as? QueueError, .availIndexJump(1000)) }
        XCTAssertFalse(g.queue.isReady, "a queue whose avail index jumped stays stopped")

        let h = FakeGuest()
        h.publish(head: 16)  // ≥ queue size.
        XCTAssertThrowsError(try h.queue.nextAvailable()) { XCTAssertEqual($0 as? QueueError, .headOutOfRange(16)) }
    }

    func testForbidsRingsOutsideMemory() {
        let g = FakeGuest()
        let q = Virtqueue()
        XCTAssertThrowsError(try q.configure(size: 256, desc: FakeGuest.gpaBase + UInt64(g.size) - 100, avail: g.availGPA, used: g.usedGPA) {
            g.memory.translate(gpa: $0, length: $1)
        })
        XCTAssertThrowsError(try q.configure(size: 3, desc: g.descGPA, avail: g.availGPA, used: g.usedGPA) { g.memory.translate(gpa: $0, length: $1) })
        XCTAssertFalse(q.isReady)
    }

    func testUsedRingAndUndo() throws {
        let g = FakeGuest()
        let h1 = g.publishWritable(payload: 100, at: 0)
        let h2 = g.publishWritable(payload: 100, at: 4096)
        XCTAssertEqual(try g.queue.nextAvailable(), h1)
        g.queue.undoTake()
        XCTAssertEqual(try g.queue.nextAvailable(), h1)
        let chain = try g.queue.chain(head: h1, memory: g.memory)
        XCTAssertEqual(chain.writableLength, 144)
        XCTAssertEqual([UInt8](repeating: 9, count: 200).withUnsafeBytes { chain.write($0, at: 0) }, 144)
        g.queue.addUsed(head: h1, length: 144)
        XCTAssertEqual(g.usedIdx, 1)
        XCTAssertEqual(g.usedEntry(0).id, UInt32(h1))
        XCTAssertEqual(g.usedEntry(0).len, 144)
        XCTAssertEqual(try g.queue.nextAvailable(), h2)
    }

    func testMemoryTranslationChecksBothAddressSpaces() {
        let g = FakeGuest()
        XCTAssertNotNil(g.memory.translate(userAddr: FakeGuest.uvaBase, length: UInt64(g.size)))
        XCTAssertNil(g.memory.translate(userAddr: FakeGuest.uvaBase, length: UInt64(g.size) + 1))
        XCTAssertNil(g.memory.translate(gpa: FakeGuest.gpaBase + 1, length: UInt64.max))
        XCTAssertNil(g.memory.translate(gpa: FakeGuest.gpaBase - 1, length: 2))
    }
}

/// Random hostile rings and packets through the queue, packet and muxer layers: nothing traps,
/// nothing outside guest memory is touched (the fake memory is the only mapping we translate to),
/// and an honest connection set up before the storm still works after it.
final class HostileGuestFuzzTests: XCTestCase {
    func testRandomDescriptorsAndHeadersNeverTrap() throws {
        var rng = SystemRandomNumberGenerator()
        let g = FakeGuest()
        let streams = NSMutableArray()
        let muxer = VsockMuxer(guestCID: 3) { _ in let s = FakeStream(); streams.add(s); return s }
        let honest = FakeStream()
        let local = try XCTUnwrap(muxer.connectFromHost(stream: honest, guestPort: 5000, prefix: [], now: 0))
        _ = muxer.drain()
        muxer.receive(TxPacket(header: .fromGuest(.response, src: 5000, dst: local), payload: []), now: 0)
        var accepted = 0, rejected = 0
        for round in 0..<20_000 {
            // Random descriptor table entries: addresses near and far, lengths, flags, next.
            for i in 0..<UInt16(g.queueSize) {
                let addr: UInt64
                switch rng.next() % 4 {
                case 0: addr = g.dataGPA + rng.next() % 4096
                case 1: addr = FakeGuest.gpaBase + UInt64(g.size) - rng.next() % 64
                case 2: addr = rng.next()
                default: addr = UInt64.max - rng.next() % 64
                }
                g.writeDesc(i, addr: addr, len: UInt32(truncatingIfNeeded: rng.next() % 3 == 0 ? rng.next() : rng.next() % 200),
                            flags: UInt16(truncatingIfNeeded: rng.next() % 8), next: UInt16(truncatingIfNeeded: rng.next() % 20))
            }
            // Random bytes where headers would be, sometimes a plausible header.
            var hdr = VsockHeader.fromGuest(VsockOp(rawValue: UInt16(rng.next() % 9)), src: UInt32(rng.next() % 4), dst: UInt32(truncatingIfNeeded: rng.next() % 3 == 0 ? UInt64(local) : rng.next() % 4),
                                            bufAlloc: UInt32(truncatingIfNeeded: rng.next()), fwdCnt: UInt32(truncatingIfNeeded: rng.next()))
            hdr.len = UInt32(truncatingIfNeeded: rng.next() % 300)
            if rng.next() % 5 == 0 { hdr.srcCID = rng.next() }
            hdr.bytes.withUnsafeBytes { g.host(g.dataGPA + UInt64(round % 8) * 64).copyMemory(from: $0.baseAddress!, byteCount: 44) }
            g.publish(head: UInt16(rng.next() % UInt64(g.queueSize)))
            guard let head = try? g.queue.nextAvailable() else { XCTFail("honest avail index refused"); return }
            do {
                let chain = try g.queue.chain(head: head, memory: g.memory)
                for s in chain.segments {
                    let lo = UInt(bitPattern: g.raw), p = UInt(bitPattern: s.host)
                    XCTAssertTrue(p >= lo && p + UInt(s.length) <= lo + UInt(g.size), "segment outside guest memory")
                }
                do { muxer.receive(try TxPacket.parse(chain), now: 0); accepted += 1 } catch { muxer.rejectMalformed(chain: chain); rejected += 1 }
            } catch { rejected += 1 }
            g.queue.addUsed(head: head, length: 0)
            if round % 100 == 0 { _ = muxer.drain() }
        }
        print("fuzz: \(accepted) packets parsed, \(rejected) chains/packets rejected, \(muxer.connections.count) connections, \(muxer.stats)")
        XCTAssertGreaterThan(rejected, 0)
        XCTAssertLessThanOrEqual(muxer.connections.count, VsockLimits.maxConnections)
        // The honest connection (guest port 5000, never a random source port) is untouched.
        honest.written = []
        muxer.receive(TxPacket(header: .fromGuest(.rw, src: 5000, dst: local, len: 2), payload: [7, 8]), now: 0)
        XCTAssertEqual(honest.written, [7, 8])
        XCTAssertFalse(honest.closed)
    }
}
