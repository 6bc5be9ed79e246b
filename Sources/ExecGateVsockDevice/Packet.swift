// SPDX-License-Identifier: Apache-2.0
//
// The virtio-vsock packet header. Defined in `include/uapi/linux/virtio_vsock.h`:
//
//     struct virtio_vsock_hdr {
//         __le64 src_cid;
//         __le64 dst_cid;
//         __le32 src_port;
//         __le32 dst_port;
//         __le32 len;
//         __le16 type;      /* enum virtio_vsock_type */
//         __le16 op;        /* enum virtio_vsock_op */
//         __le32 flags;
//         __le32 buf_alloc;
//         __le32 fwd_cnt;
//     } __attribute__((packed));
//
// A tx packet (guest → host) is one descriptor chain: the header, then `len` payload bytes, all
// readable. An rx packet (host → guest) is written into one chain of writable buffers.

/// `enum virtio_vsock_op`. Unknown values stay representable (they are answered with RST).
public struct VsockOp: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// VIRTIO_VSOCK_OP_INVALID (0).
    public static let invalid = VsockOp(rawValue: 0)
    /// VIRTIO_VSOCK_OP_REQUEST (1): open a connection.
    public static let request = VsockOp(rawValue: 1)
    /// VIRTIO_VSOCK_OP_RESPONSE (2): accept it.
    public static let response = VsockOp(rawValue: 2)
    /// VIRTIO_VSOCK_OP_RST (3): the connection is gone.
    public static let rst = VsockOp(rawValue: 3)
    /// VIRTIO_VSOCK_OP_SHUTDOWN (4): flags say which directions end.
    public static let shutdown = VsockOp(rawValue: 4)
    /// VIRTIO_VSOCK_OP_RW (5): data.
    public static let rw = VsockOp(rawValue: 5)
    /// VIRTIO_VSOCK_OP_CREDIT_UPDATE (6): here is my buf_alloc / fwd_cnt.
    public static let creditUpdate = VsockOp(rawValue: 6)
    /// VIRTIO_VSOCK_OP_CREDIT_REQUEST (7): please send a credit update.
    public static let creditRequest = VsockOp(rawValue: 7)

    public var description: String {
        switch self {
        case .request: return "REQUEST"
        case .response: return "RESPONSE"
        case .rst: return "RST"
        case .shutdown: return "SHUTDOWN"
        case .rw: return "RW"
        case .creditUpdate: return "CREDIT_UPDATE"
        case .creditRequest: return "CREDIT_REQUEST"
        default: return "op(\(rawValue))"
        }
    }
}

public enum VsockConstants {
    /// VIRTIO_VSOCK_TYPE_STREAM.
    public static let typeStream: UInt16 = 1
    /// VIRTIO_VSOCK_SHUTDOWN_RCV: the sender will receive no more data.
    public static let shutdownReceive: UInt32 = 1
    /// VIRTIO_VSOCK_SHUTDOWN_SEND: the sender will send no more data.
    public static let shutdownSend: UInt32 = 2
    /// VMADDR_CID_HOST: the address the guest uses for us.
    public static let hostCID: UInt64 = 2
}

/// A copy of the 44-byte header (never a view into guest memory).
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44

    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VsockConstants.typeStream
    public var op: VsockOp = .invalid
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public init() {}

    public init(srcCID: UInt64, dstCID: UInt64, srcPort: UInt32, dstPort: UInt32, op: VsockOp,
                len: UInt32 = 0, flags: UInt32 = 0, bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0) {
        self.srcCID = srcCID; self.dstCID = dstCID; self.srcPort = srcPort; self.dstPort = dstPort
        self.op = op; self.len = len; self.flags = flags; self.bufAlloc = bufAlloc; self.fwdCnt = fwdCnt
    }

    /// Decodes exactly 44 bytes, in spec field order. nil when `bytes` is shorter.
    public init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= VsockHeader.size else { return nil }
        func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
        func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        srcCID = u64(0); dstCID = u64(8); srcPort = u32(16); dstPort = u32(20); len = u32(24)
        type = u16(28); op = VsockOp(rawValue: u16(30)); flags = u32(32); bufAlloc = u32(36); fwdCnt = u32(40)
    }

    public func serialize(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= VsockHeader.size, "VsockHeader.serialize: buffer of \(out.count) bytes")  // Caller bug, not input.
        out.storeBytes(of: srcCID.littleEndian, toByteOffset: 0, as: UInt64.self)
        out.storeBytes(of: dstCID.littleEndian, toByteOffset: 8, as: UInt64.self)
        out.storeBytes(of: srcPort.littleEndian, toByteOffset: 16, as: UInt32.self)
        out.storeBytes(of: dstPort.littleEndian, toByteOffset: 20, as: UInt32.self)
        out.storeBytes(of: len.littleEndian, toByteOffset: 24, as: UInt32.self)
        out.storeBytes(of: type.littleEndian, toByteOffset: 28, as: UInt16.self)
        out.storeBytes(of: op.rawValue.littleEndian, toByteOffset: 30, as: UInt16.self)
        out.storeBytes(of: flags.littleEndian, toByteOffset: 32, as: UInt32.self)
        out.storeBytes(of: bufAlloc.littleEndian, toByteOffset: 36, as: UInt32.self)
        out.storeBytes(of: fwdCnt.littleEndian, toByteOffset: 40, as: UInt32.self)
    }

    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: VsockHeader.size)
        b.withUnsafeMutableBytes { serialize(into: $0) }
        return b
    }
}

/// A guest → host packet, copied out of the chain and checked.
public struct TxPacket: Equatable {
    public var header: VsockHeader
    public var payload: [UInt8]

    public init(header: VsockHeader, payload: [UInt8]) { self.header = header; self.payload = payload }

    /// Parses a tx chain in two passes: the 44-byte header is copied out and decoded; `len` is
    /// checked against `VsockLimits.maxPacketPayload`, then against the bytes the chain really holds.
    ///
    /// ## Errors
    /// - `headerTruncated`: fewer than 44 readable bytes.
    /// - `payloadTooLarge`: `len` above `VsockLimits.maxPacketPayload`.
    /// - `payloadTruncated`: the chain holds fewer than `len` bytes after the header.
    ///
    /// CIDs and type are checked by `validateAddressing` (the muxer answers those with RST).
    public static func parse(_ chain: DescriptorChain) throws(PacketError) -> TxPacket {
        var hdrBytes = [UInt8](repeating: 0, count: VsockHeader.size)
        let got = hdrBytes.withUnsafeMutableBytes { chain.read(into: $0, from: 0) }
        guard got == VsockHeader.size else { throw .headerTruncated(got) }
        let header = hdrBytes.withUnsafeBytes { VsockHeader(bytes: $0)! }  // Safe: 44 bytes were read.
        guard header.len <= UInt32(VsockLimits.maxPacketPayload) else { throw .payloadTooLarge(header.len) }
        let len = Int(header.len)
        let available = chain.readableLength - VsockHeader.size
        guard available >= len else { throw .payloadTruncated(claimed: header.len, available: available) }
        var payload = [UInt8](repeating: 0, count: len)
        if len > 0 { _ = payload.withUnsafeMutableBytes { chain.read(into: $0, from: VsockHeader.size) } }
        return TxPacket(header: header, payload: payload)
    }

    /// The guest may only speak as itself, to us, on streams.
    public func validateAddressing(guestCID: UInt64) throws(PacketError) {
        guard header.srcCID == guestCID else { throw .wrongSourceCID(header.srcCID) }
        guard header.dstCID == VsockConstants.hostCID else { throw .wrongDestinationCID(header.dstCID) }
        guard header.type == VsockConstants.typeStream else { throw .unsupportedType(header.type) }
    }
}
