// SPDX-License-Identifier: Apache-2.0
//
// A hostile guest driving the virtqueues (adversarial review, round 9): the rings are the guest's
// memory, written at will, and every ring write is a request for backend work.

import XCTest
@testable import ExecGateVsockDevice

final class HostileGuestTests: XCTestCase {
    /// Guest RAM of `size` bytes at guest-physical 0 with a `queueSize` split queue at its start.
    final class Ring {
        let size = 4 << 20
        let raw: UnsafeMutableRawPointer
        let memory: GuestMemory
        let queue = Virtqueue()
        static let desc: UInt64 = 0, avail: UInt64 = 0x80000, used: UInt64 = 0x100000, data: UInt64 = 0x200000

        init(queueSize: Int) throws {
            raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            memory = GuestMemory(regions: [MemoryRegion(guestPhysAddr: 0, size: UInt64(size), userAddr: 0, host: raw)])
            let m = memory
            try queue.configure(size: queueSize, desc: Ring.desc, avail: Ring.avail, used: Ring.used) { m.translate(gpa: $0, length: $1) }
        }

        deinit { raw.deallocate() }

        func writeDesc(_ i: Int, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
            let p = raw + Int(Ring.desc) + 16 * i
            p.storeBytes(of: addr.littleEndian, as: UInt64.self)
            (p + 8).storeBytes(of: len.littleEndian, as: UInt32.self)
            (p + 12).storeBytes(of: flags.littleEndian, as: UInt16.self)
            (p + 14).storeBytes(of: next.littleEndian, as: UInt16.self)
        }

        /// A readable chain of `length` one-byte descriptors starting at descriptor 0.
        func longChain(_ length: Int) {
            for i in 0..<length {
                writeDesc(i, addr: Ring.data + UInt64(i % 44), len: 1, flags: i == length - 1 ? 0 : 1, next: UInt16(i + 1))
            }
        }
    }

    /// Attack: one descriptor chain as long as the queue (32768 one-byte descriptors), published
    /// again and again (an avail entry is two bytes; the same head may be published every time).
    /// Each chain is walked and translated descriptor by descriptor: 256 of them (one tx pass)
    /// took 2.5 s of the backend's only thread (debug build), and one write of avail.idx buys 128
    /// such passes. Rule: the kernel's vhost-vsock takes at most UIO_MAXIOV (1024) buffers per chain
    /// (vhost_vsock_handle_tx_kick() → vhost_get_vq_desc(vq, vq->iov, ARRAY_SIZE(vq->iov), …);
    /// translate_desc() fails with -ENOBUFS past it, drivers/vhost/vhost.c); Firecracker's queues
    /// hold at most 256 descriptors (FIRECRACKER_MAX_QUEUE_SIZE). A Linux guest's vsock chains hold
    /// a header and its payload (a few descriptors). A chain of more than
    /// `VsockLimits.maxChainDescriptors` (1024) descriptors is refused after that many steps, so
    /// the work per chain is bounded whatever the queue size.
    func testChainLengthIsBoundedWhateverTheQueueSize() throws {
        let r = try Ring(queueSize: 32768)
        r.longChain(32768)
        XCTAssertThrowsError(try r.queue.chain(head: 0, memory: r.memory), "a 32768-descriptor chain") {
            XCTAssertEqual($0 as? QueueError, .tooManyDescriptors(VsockLimits.maxChainDescriptors))
        }
        r.longChain(1025)
        XCTAssertThrowsError(try r.queue.chain(head: 0, memory: r.memory), "one past the bound") {
            XCTAssertEqual($0 as? QueueError, .tooManyDescriptors(VsockLimits.maxChainDescriptors))
        }
        // A loop in a small queue is still a loop.
        let small = try Ring(queueSize: 16)
        for i in 0..<16 { small.writeDesc(i, addr: Ring.data, len: 1, flags: 1, next: UInt16((i + 1) % 16)) }
        XCTAssertThrowsError(try small.queue.chain(head: 0, memory: small.memory)) { XCTAssertEqual($0 as? QueueError, .chainTooLong) }
        r.longChain(1024)
        let chain = try r.queue.chain(head: 0, memory: r.memory)
        XCTAssertEqual(chain.segments.count, 1024, "the bound itself is taken")
        XCTAssertEqual(chain.readableLength, 1024)
    }
}
