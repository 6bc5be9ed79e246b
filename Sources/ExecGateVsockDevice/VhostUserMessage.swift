// SPDX-License-Identifier: Apache-2.0
//
// vhost-user messages (QEMU `docs/interop/vhost-user.rst`, "Message Specification"):
//
//     ------------------------------------
//     | request | flags | size | payload |
//     ------------------------------------
//       u32       u32     u32    `size` bytes, little-endian (the host's endianness)
//
// flags: bits 0–1 version (0x1), bit 2 reply, bit 3 need_reply (REPLY_ACK). File descriptors ride
// along as SCM_RIGHTS ancillary data. Parsing is two-pass: the 12-byte header is checked (version,
// `size` against `VsockLimits.maxVhostUserPayload`), then each request's payload is decoded by a typed
// accessor that checks its exact size first.

/// A request code. Unknown codes stay representable (answered per REPLY_ACK, otherwise ignored).
public struct VhostUserRequest: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let getFeatures = Self(rawValue: 1)
    public static let setFeatures = Self(rawValue: 2)
    public static let setOwner = Self(rawValue: 3)
    public static let resetOwner = Self(rawValue: 4)
    public static let setMemTable = Self(rawValue: 5)
    public static let setLogBase = Self(rawValue: 6)
    public static let setLogFd = Self(rawValue: 7)
    public static let setVringNum = Self(rawValue: 8)
    public static let setVringAddr = Self(rawValue: 9)
    public static let setVringBase = Self(rawValue: 10)
    public static let getVringBase = Self(rawValue: 11)
    public static let setVringKick = Self(rawValue: 12)
    public static let setVringCall = Self(rawValue: 13)
    public static let setVringErr = Self(rawValue: 14)
    public static let getProtocolFeatures = Self(rawValue: 15)
    public static let setProtocolFeatures = Self(rawValue: 16)
    public static let getQueueNum = Self(rawValue: 17)
    public static let setVringEnable = Self(rawValue: 18)
    public static let getConfig = Self(rawValue: 24)
    public static let setConfig = Self(rawValue: 25)
    public static let getMaxMemSlots = Self(rawValue: 36)
    public static let setStatus = Self(rawValue: 39)
    public static let getStatus = Self(rawValue: 40)

    public var description: String {
        let names: [UInt32: String] = [1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE",
                                       6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR", 10: "SET_VRING_BASE",
                                       11: "GET_VRING_BASE", 12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
                                       15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM",
                                       18: "SET_VRING_ENABLE", 24: "GET_CONFIG", 25: "SET_CONFIG", 36: "GET_MAX_MEM_SLOTS",
                                       39: "SET_STATUS", 40: "GET_STATUS"]
        return names[rawValue] ?? "request(\(rawValue))"
    }
}

public enum VhostUserFeatures {
    /// VIRTIO_F_VERSION_1 (bit 32).
    public static let virtioVersion1: UInt64 = 1 << 32
    /// VHOST_USER_F_PROTOCOL_FEATURES (bit 30): GET/SET_PROTOCOL_FEATURES exist.
    public static let protocolFeatures: UInt64 = 1 << 30
    /// What the device offers. No EVENT_IDX, no INDIRECT_DESC: simpler rings, nothing lost.
    public static let offered: UInt64 = virtioVersion1 | protocolFeatures

    /// VHOST_USER_PROTOCOL_F_MQ (0).
    public static let protocolMQ: UInt64 = 1 << 0
    /// VHOST_USER_PROTOCOL_F_REPLY_ACK (3).
    public static let protocolReplyAck: UInt64 = 1 << 3
    /// VHOST_USER_PROTOCOL_F_CONFIG (9): GET_CONFIG (QEMU's vhost-user-vsock needs it for guest_cid).
    public static let protocolConfig: UInt64 = 1 << 9
    public static let offeredProtocol: UInt64 = protocolReplyAck | protocolConfig  // One queue pair: no MQ.
}

public struct VhostUserHeader: Equatable {
    public static let size = 12
    public static let version: UInt32 = 0x1
    public static let flagReply: UInt32 = 1 << 2
    public static let flagNeedReply: UInt32 = 1 << 3

    public var request: VhostUserRequest
    public var flags: UInt32
    public var size: UInt32

    public init(request: VhostUserRequest, flags: UInt32, size: UInt32) { self.request = request; self.flags = flags; self.size = size }

    /// Decodes and checks the header.
    /// - Throws: `.truncated` (fewer than 12 bytes), `.badVersion`, `.tooLarge` (size above the cap).
    public init(bytes: [UInt8]) throws(VhostUserError) {
        guard bytes.count >= VhostUserHeader.size else { throw VhostUserError(.truncated, "header of \(bytes.count) bytes") }
        request = VhostUserRequest(rawValue: bytes.u32(0))
        flags = bytes.u32(4)
        size = bytes.u32(8)
        guard flags & 0x3 == VhostUserHeader.version else { throw VhostUserError(.badVersion, "flags 0x\(String(flags, radix: 16))") }
        guard size <= UInt32(VsockLimits.maxVhostUserPayload) else { throw VhostUserError(.tooLarge, "\(request) payload of \(size) bytes") }
    }

    public var needsReply: Bool { flags & VhostUserHeader.flagNeedReply != 0 }

    public var bytes: [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(12)
        b.appendLE(request.rawValue); b.appendLE(flags); b.appendLE(size)
        return b
    }
}

/// One message: header, payload, and the descriptors that came with it (owned: close or keep).
public struct VhostUserMessage {
    public var header: VhostUserHeader
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(header: VhostUserHeader, payload: [UInt8], fds: [Int32] = []) { self.header = header; self.payload = payload; self.fds = fds }

    private func need(_ n: Int) throws(VhostUserError) {
        guard payload.count == n || (payload.count > n && header.request == .setMemTable) else {
            throw VhostUserError(.badPayload, "\(header.request) payload of \(payload.count) bytes, expected \(n)")
        }
    }

    /// A u64 payload (features, SET_LOG_BASE size...).
    public func u64() throws(VhostUserError) -> UInt64 { try need(8); return payload.u64(0) }

    /// `struct vhost_vring_state { unsigned int index; unsigned int num; }`.
    public func vringState() throws(VhostUserError) -> (index: Int, num: UInt32) {
        try need(8)
        return (try queueIndex(payload.u32(0)), payload.u32(4))
    }

    /// `struct vhost_vring_addr { unsigned int index, flags; u64 desc_user_addr, used_user_addr, avail_user_addr, log_guest_addr; }`.
    public func vringAddr() throws(VhostUserError) -> (index: Int, flags: UInt32, desc: UInt64, used: UInt64, avail: UInt64) {
        try need(40)
        return (try queueIndex(payload.u32(0)), payload.u32(4), payload.u64(8), payload.u64(16), payload.u64(24))
    }

    /// SET_VRING_KICK/CALL/ERR: u64 with the index in bits 0–7 and "no fd" in bit 8.
    public func vringFd() throws(VhostUserError) -> (index: Int, fd: Int32?) {
        let v = try u64()
        let index = try queueIndex(UInt32(v & 0xff))
        if v & 0x100 != 0 { return (index, nil) }
        guard fds.count == 1 else { throw VhostUserError(.missingFd, "\(header.request) for queue \(index) carries \(fds.count) fds") }
        return (index, fds[0])
    }

    /// `struct vhost_user_memory { u32 nregions; u32 padding; struct vhost_user_memory_region regions[8]; }`.
    public func memoryTable() throws(VhostUserError) -> [(gpa: UInt64, size: UInt64, uva: UInt64, offset: UInt64)] {
        guard payload.count >= 8 else { throw VhostUserError(.badPayload, "SET_MEM_TABLE of \(payload.count) bytes") }
        let n = Int(payload.u32(0))
        guard n >= 1, n <= VsockLimits.maxMemoryRegions else { throw VhostUserError(.badMemory, "\(n) regions (1…\(VsockLimits.maxMemoryRegions))") }
        guard payload.count >= 8 + 32 * n else { throw VhostUserError(.badPayload, "SET_MEM_TABLE: \(n) regions in \(payload.count) bytes") }
        guard fds.count == n else { throw VhostUserError(.missingFd, "SET_MEM_TABLE: \(n) regions but \(fds.count) fds") }
        return (0..<n).map { i in
            let o = 8 + 32 * i
            return (payload.u64(o), payload.u64(o + 8), payload.u64(o + 16), payload.u64(o + 24))
        }
    }

    /// `struct vhost_user_config { u32 offset; u32 size; u32 flags; u8 payload[size]; }`.
    public func configRequest() throws(VhostUserError) -> (offset: UInt32, size: UInt32, flags: UInt32) {
        guard payload.count >= 12 else { throw VhostUserError(.badPayload, "GET_CONFIG of \(payload.count) bytes") }
        let size = payload.u32(4)
        guard size <= 256, payload.count == 12 + Int(size) else { throw VhostUserError(.badPayload, "GET_CONFIG size \(size) in \(payload.count) bytes") }
        return (payload.u32(0), size, payload.u32(8))
    }

    private func queueIndex(_ i: UInt32) throws(VhostUserError) -> Int {
        guard i < UInt32(VsockLimits.queueCount) else { throw VhostUserError(.badQueue, "\(header.request) for queue \(i) (have \(VsockLimits.queueCount))") }
        return Int(i)
    }

    /// A reply to `request` with `payload`.
    public static func reply(to request: VhostUserRequest, payload: [UInt8]) -> [UInt8] {
        VhostUserHeader(request: request, flags: VhostUserHeader.version | VhostUserHeader.flagReply, size: UInt32(payload.count)).bytes + payload
    }
}

extension Array where Element == UInt8 {
    /// Little-endian reads; callers checked `o + width <= count`.
    func u32(_ o: Int) -> UInt32 { withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) } }
    func u64(_ o: Int) -> UInt64 { withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) } }
    mutating func appendLE(_ v: UInt32) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
    mutating func appendLE(_ v: UInt64) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
}
