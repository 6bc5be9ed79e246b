// SPDX-License-Identifier: Apache-2.0
//
// One error type per layer (FC `VsockError`, `VsockCsmError`, `VsockUnixBackendError`):
//   VhostUserError  the frontend's control messages (ends the vhost-user session, never the process)
//   QueueError      a virtqueue or descriptor chain the guest built (drops that chain)
//   PacketError     one vsock packet (RST to that connection)
//   BackendError    host sockets and setup

/// A malformed or unsupported vhost-user message.
public struct VhostUserError: Error, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable { case truncated, tooLarge, badVersion, badPayload, badQueue, missingFd, badFd, badMemory, busy, io, unsupported }
    public let code: Code
    public let reason: String
    public init(_ code: Code, _ reason: String) { self.code = code; self.reason = reason }
    public var description: String { "vhost-user \(code.rawValue): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
}

/// A descriptor chain or ring that does not fit the rules. The chain is returned unused; the guest
/// memory it names is never touched.
public enum QueueError: Error, Equatable, CustomStringConvertible {
    case notReady
    case ringOutsideMemory(String)
    case availIndexJump(Int)
    case headOutOfRange(UInt16)
    case descriptorIndexOutOfRange(UInt16)
    case chainTooLong
    case tooManyDescriptors(Int)
    case descriptorOutsideMemory(gpa: UInt64, length: UInt32)
    case indirectUnsupported
    case writableBeforeReadable
    case chainTooShort(needed: Int, have: Int)

    public var description: String {
        switch self {
        case .notReady: return "queue not ready"
        case .ringOutsideMemory(let w): return "ring outside guest memory: \(w)"
        case .availIndexJump(let n): return "avail index moved by \(n) (more than the queue size)"
        case .headOutOfRange(let h): return "chain head \(h) out of range"
        case .descriptorIndexOutOfRange(let i): return "descriptor next \(i) out of range"
        case .chainTooLong: return "descriptor chain longer than the queue (loop?)"
        case .tooManyDescriptors(let n): return "descriptor chain of more than \(n) descriptors"
        case .descriptorOutsideMemory(let g, let l): return "descriptor [0x\(String(g, radix: 16)), +\(l)) outside guest memory"
        case .indirectUnsupported: return "indirect descriptors were not negotiated"
        case .writableBeforeReadable: return "readable descriptor after a writable one"
        case .chainTooShort(let n, let h): return "chain holds \(h) bytes, needs \(n)"
        }
    }
}

/// One vsock packet that cannot be accepted.
public enum PacketError: Error, Equatable, CustomStringConvertible {
    case headerTruncated(Int)
    case payloadTooLarge(UInt32)
    case payloadTruncated(claimed: UInt32, available: Int)
    case wrongSourceCID(UInt64)
    case wrongDestinationCID(UInt64)
    case unsupportedType(UInt16)

    public var description: String {
        switch self {
        case .headerTruncated(let n): return "header needs 44 bytes, chain has \(n)"
        case .payloadTooLarge(let l): return "len \(l) exceeds \(VsockLimits.maxPacketPayload)"
        case .payloadTruncated(let c, let a): return "len \(c) but the chain holds \(a) payload bytes"
        case .wrongSourceCID(let c): return "src_cid \(c) is not the guest's"
        case .wrongDestinationCID(let c): return "dst_cid \(c) is not the host (2)"
        case .unsupportedType(let t): return "type \(t) is not stream (1)"
        }
    }
}

/// Setup and host-socket failures.
public struct BackendError: Error, CustomStringConvertible {
    public let reason: String
    public let errno: Int32
    public init(_ reason: String, errno: Int32 = 0) { self.reason = reason; self.errno = errno }
    public var description: String { errno == 0 ? reason : "\(reason): \(String(cString: strerrorOf(errno)))" }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

func strerrorOf(_ e: Int32) -> UnsafeMutablePointer<CChar> { strerror(e) }
