// SPDX-License-Identifier: Apache-2.0
//
// A split virtqueue (virtio 1.2 § 2.7) in shared guest memory, device side.
//
//     struct virtq_desc  { le64 addr; le32 len; le16 flags; le16 next; };          16 bytes
//     struct virtq_avail { le16 flags; le16 idx; le16 ring[num]; le16 used_event; }
//     struct virtq_used  { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[num]; le16 avail_event; }
//
// The guest may write any of it at any time. Rules kept here:
//   - ring addresses are translated once per (re)configuration and must lie wholly in one region;
//   - `avail.idx` is read with acquire ordering before the entries it publishes (§ 2.7.13.3);
//   - a chain is walked at most min(`size`, `VsockLimits.maxChainDescriptors`) steps; every index and every buffer is range-checked before
//     use; a bad chain is returned to the guest with length 0 and never dereferenced;
//   - used entries are written, then `used.idx` is stored with release ordering (§ 2.7.8).

import CExecGateVsockSys

/// One buffer of a chain, already translated and bounds-checked.
public struct DescriptorSegment {
    public let host: UnsafeMutableRawPointer
    public let length: Int
    public let writable: Bool
}

/// A validated chain: readable segments first, then writable ones (§ 2.7.4.2).
public struct DescriptorChain {
    public let head: UInt16
    public let segments: [DescriptorSegment]

    public var readableLength: Int { segments.reduce(0) { $0 + ($1.writable ? 0 : $1.length) } }
    public var writableLength: Int { segments.reduce(0) { $0 + ($1.writable ? $1.length : 0) } }

    /// Copies readable bytes starting at `offset` into `out`; returns how many were copied.
    public func read(into out: UnsafeMutableRawBufferPointer, from offset: Int) -> Int {
        var skip = offset, done = 0
        for s in segments where !s.writable {
            if done == out.count { break }
            if skip >= s.length { skip -= s.length; continue }
            let n = min(s.length - skip, out.count - done)
            (out.baseAddress! + done).copyMemory(from: s.host + skip, byteCount: n)  // Safe: n ≤ both remaining lengths.
            done += n; skip = 0
        }
        return done
    }

    /// Copies `bytes` into the writable segments starting at `offset`; returns how many fitted.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int {
        var skip = offset, done = 0
        for s in segments where s.writable {
            if done == bytes.count { break }
            if skip >= s.length { skip -= s.length; continue }
            let n = min(s.length - skip, bytes.count - done)
            (s.host + skip).copyMemory(from: bytes.baseAddress! + done, byteCount: n)  // Safe: n ≤ both remaining lengths.
            done += n; skip = 0
        }
        return done
    }
}

public final class Virtqueue {
    public enum Flag { static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4 }

    public private(set) var size: UInt16 = 0
    private var desc: UnsafeMutableRawPointer?
    private var avail: UnsafeMutableRawPointer?
    private var used: UnsafeMutableRawPointer?
    var usedPointer: UnsafeMutableRawPointer? { used }
    /// Next avail entry to take (vhost-user SET_VRING_BASE / GET_VRING_BASE).
    public var lastAvailIndex: UInt16 = 0
    /// Next used entry to publish.
    public var usedIndex: UInt16 = 0
    /// Set after a ring-level violation: the queue stays stopped until reconfigured.
    public private(set) var broken: QueueError?

    public init() {}

    public var isReady: Bool { desc != nil && broken == nil }

    /// Whether rings of `size` entries at these addresses would lie inside the memory `translate`
    /// maps: what `configure` requires (the kernel's vq_access_ok()).
    public static func ringsFit(size: Int, desc: UInt64, avail: UInt64, used: UInt64,
                                translate: (UInt64, UInt64) -> UnsafeMutableRawPointer?) -> Bool {
        (try? rings(size: size, desc: desc, avail: avail, used: used, translate: translate)) != nil
    }

    /// The host pointers of the three rings, each checked to lie wholly inside guest memory.
    private static func rings(size: Int, desc: UInt64, avail: UInt64, used: UInt64, translate: (UInt64, UInt64) -> UnsafeMutableRawPointer?)
        throws(QueueError) -> (desc: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer) {
        guard size > 0, size <= VsockLimits.maxQueueSize, size & (size - 1) == 0 else { throw .ringOutsideMemory("queue size \(size) is not a power of 2 ≤ \(VsockLimits.maxQueueSize)") }
        let n = UInt64(size)
        guard let d = translate(desc, 16 * n) else { throw .ringOutsideMemory("descriptor table") }
        guard let a = translate(avail, 6 + 2 * n) else { throw .ringOutsideMemory("avail ring") }
        guard let u = translate(used, 6 + 8 * n) else { throw .ringOutsideMemory("used ring") }
        return (d, a, u)
    }

    /// Points the queue at its rings, checking that each lies inside guest memory.
    /// - Parameter translate: maps (address, length) to a host pointer or nil.
    public func configure(size: Int, desc descAddr: UInt64, avail availAddr: UInt64, used usedAddr: UInt64,
                          translate: (UInt64, UInt64) -> UnsafeMutableRawPointer?) throws(QueueError) {
        reset()
        let (d, a, u) = try Self.rings(size: size, desc: descAddr, avail: availAddr, used: usedAddr, translate: translate)
        self.size = UInt16(size)  // Safe: `rings` checked size ≤ 32768.
        desc = d; avail = a; used = u
    }

    /// Forgets the rings (memory table changed, GET_VRING_BASE, disconnect).
    public func reset() {
        desc = nil; avail = nil; used = nil; broken = nil
    }

    private var count: Int { Int(size) }

    /// The head of the next available chain, or nil when the guest has published nothing new.
    /// - Throws: `.availIndexJump` / `.headOutOfRange`: the ring is inconsistent; the queue stops.
    public func nextAvailable() throws(QueueError) -> UInt16? {
        guard let avail, broken == nil else { throw broken ?? .notReady }
        let idx = egv_load_u16(avail + 2)  // Acquire: entries published before idx are visible.
        let pending = Int(idx &- lastAvailIndex)
        if pending == 0 { return nil }
        guard pending <= count else { broken = .availIndexJump(pending); throw .availIndexJump(pending) }
        let slot = Int(lastAvailIndex) & (count - 1)
        let head = UInt16(littleEndian: (avail + 4 + 2 * slot).loadUnaligned(as: UInt16.self))
        guard Int(head) < count else { broken = .headOutOfRange(head); throw .headOutOfRange(head) }
        lastAvailIndex &+= 1
        return head
    }

    /// Gives back the last chain taken by `nextAvailable` (nothing was published for it).
    public func undoTake() { lastAvailIndex &-= 1 }

    /// Whether the guest has published chains we have not taken.
    public var hasAvailable: Bool {
        guard let avail, broken == nil else { return false }
        return egv_load_u16(avail + 2) != lastAvailIndex
    }

    /// Walks and validates the chain starting at `head`.
    /// - Throws: `QueueError` for a chain that must be returned unused (length 0).
    public func chain(head: UInt16, memory: GuestMemory) throws(QueueError) -> DescriptorChain {
        guard let desc else { throw .notReady }
        var segments: [DescriptorSegment] = []
        var index = head
        var sawWritable = false
        // A chain longer than the table must contain a loop; one longer than
        // `VsockLimits.maxChainDescriptors` is refused as vhost-vsock refuses it (-ENOBUFS).
        for _ in 0..<min(count, VsockLimits.maxChainDescriptors) {
            guard Int(index) < count else { throw .descriptorIndexOutOfRange(index) }
            // Copy the descriptor out of shared memory once; use only the copy.
            let p = desc + 16 * Int(index)
            let addr = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            let len = UInt32(littleEndian: (p + 8).loadUnaligned(as: UInt32.self))
            let flags = UInt16(littleEndian: (p + 12).loadUnaligned(as: UInt16.self))
            let next = UInt16(littleEndian: (p + 14).loadUnaligned(as: UInt16.self))
            guard flags & Flag.indirect == 0 else { throw .indirectUnsupported }
            let writable = flags & Flag.write != 0
            if writable { sawWritable = true } else if sawWritable { throw .writableBeforeReadable }
            if len > 0 {
                guard let host = memory.translate(gpa: addr, length: UInt64(len)) else { throw .descriptorOutsideMemory(gpa: addr, length: len) }
                segments.append(DescriptorSegment(host: host, length: Int(len), writable: writable))
            }
            if flags & Flag.next == 0 { return DescriptorChain(head: head, segments: segments) }
            index = next
        }
        throw count > VsockLimits.maxChainDescriptors ? .tooManyDescriptors(VsockLimits.maxChainDescriptors) : .chainTooLong
    }

    /// Publishes one used entry: the entry first, then `used.idx` with release ordering.
    public func addUsed(head: UInt16, length: UInt32) {
        guard let used else { return }
        let slot = Int(usedIndex) & (count - 1)
        let e = used + 4 + 8 * slot
        e.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        (e + 4).storeBytes(of: length.littleEndian, as: UInt32.self)
        usedIndex &+= 1
        egv_store_u16(used + 2, usedIndex)  // Release: the entry is visible before the index.
    }

    /// VRING_AVAIL_F_NO_INTERRUPT (§ 2.7.7): the driver asks not to be notified.
    public var driverSuppressesInterrupts: Bool {
        guard let avail else { return true }
        egv_fence_full()
        return egv_load_u16(avail) & 1 != 0
    }
}

extension Virtqueue {
    /// `used.idx` as it is in memory (a ring resumed after GET_VRING_BASE continues from there).
    public var currentUsedIndex: UInt16 {
        guard let used = usedPointer else { return 0 }
        return egv_load_u16(used + 2)
    }
}
