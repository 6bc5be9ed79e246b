// SPDX-License-Identifier: Apache-2.0
//
// Fake guest memory and a fake driver for unit tests: one region of ordinary memory at a made-up
// guest-physical address, split rings laid out the way a driver would, and helpers to publish
// chains (honest or hostile) and read back used entries. Plus a fake host stream.

@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

/// Little-endian bytes of vhost-user payload fields (the vsock device tests' one encoder).
func le(_ v: UInt64) -> [UInt8] { var b: [UInt8] = []; b.appendLE(v); return b }
func le32(_ vs: UInt32...) -> [UInt8] { var b: [UInt8] = []; for v in vs { b.appendLE(v) }; return b }

/// A Unix stream connection to `path` (close-on-exec, 5 s receive timeout): the tests' frontends
/// and host clients of the backend loop.
func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_un.make(path)
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard rc == 0 else { close(fd); throw BackendError("connect \(path)", errno: errno) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

final class FakeGuest {
    static let gpaBase: UInt64 = 0x4000_0000
    static let uvaBase: UInt64 = 0x7f00_0000_0000
    let size = 1 << 20
    let raw: UnsafeMutableRawPointer
    let memory: GuestMemory
    let queueSize = 16
    let ringOffset: UInt64
    let dataOffset: UInt64
    let owned: Bool
    // Ring layout (guest-physical).
    var descGPA: UInt64 { FakeGuest.gpaBase + ringOffset }
    var availGPA: UInt64 { FakeGuest.gpaBase + ringOffset + 0x1000 }
    var usedGPA: UInt64 { FakeGuest.gpaBase + ringOffset + 0x2000 }
    /// Data buffers start here.
    var dataGPA: UInt64 { FakeGuest.gpaBase + dataOffset }
    func uva(_ gpa: UInt64) -> UInt64 { gpa - FakeGuest.gpaBase + FakeGuest.uvaBase }
    var nextDesc: UInt16 = 0
    var availIdx: UInt16 = 0
    let queue = Virtqueue()

    /// - Parameter shared: memory to use (1 MiB, e.g. a shared mapping the backend also maps);
    ///   nil allocates private memory.
    init(shared: UnsafeMutableRawPointer? = nil, ringOffset: UInt64 = 0, dataOffset: UInt64 = 0x10000) {
        self.ringOffset = ringOffset; self.dataOffset = dataOffset
        owned = shared == nil
        raw = shared ?? UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        if owned { raw.initializeMemory(as: UInt8.self, repeating: 0, count: size) }
        memory = GuestMemory(regions: [MemoryRegion(guestPhysAddr: FakeGuest.gpaBase, size: UInt64(size), userAddr: FakeGuest.uvaBase, host: raw)])
        try! queue.configure(size: queueSize, desc: descGPA, avail: availGPA, used: usedGPA) { memory.translate(gpa: $0, length: $1) }
    }

    deinit { if owned { raw.deallocate() } }

    func host(_ gpa: UInt64) -> UnsafeMutableRawPointer { raw + Int(gpa - FakeGuest.gpaBase) }

    func writeDesc(_ i: UInt16, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let p = host(descGPA) + 16 * Int(i)
        p.storeBytes(of: addr.littleEndian, as: UInt64.self)
        (p + 8).storeBytes(of: len.littleEndian, as: UInt32.self)
        (p + 12).storeBytes(of: flags.littleEndian, as: UInt16.self)
        (p + 14).storeBytes(of: next.littleEndian, as: UInt16.self)
    }

    func publish(head: UInt16) {
        let a = host(availGPA)
        (a + 4 + 2 * (Int(availIdx) % queueSize)).storeBytes(of: head.littleEndian, as: UInt16.self)
        availIdx &+= 1
        (a + 2).storeBytes(of: availIdx.littleEndian, as: UInt16.self)
    }

    func setAvailIndex(_ v: UInt16) { (host(availGPA) + 2).storeBytes(of: v.littleEndian, as: UInt16.self) }

    /// Publishes one readable chain holding `bytes` split into pieces of `split` bytes.
    @discardableResult
    func publishReadable(_ bytes: [UInt8], split: Int = 1 << 20, at offset: Int = 0) -> UInt16 {
        let base = dataGPA + UInt64(offset)
        host(base).copyMemory(from: bytes, byteCount: bytes.count)
        var pieces: [(UInt64, Int)] = []
        var o = 0
        repeat { let n = min(split, bytes.count - o); pieces.append((base + UInt64(o), n)); o += n } while o < bytes.count
        let head = nextDesc
        for (i, p) in pieces.enumerated() {
            let idx = nextDesc; nextDesc = (nextDesc + 1) % UInt16(queueSize)
            writeDesc(idx, addr: p.0, len: UInt32(p.1), flags: i < pieces.count - 1 ? 1 : 0, next: nextDesc)
        }
        publish(head: head)
        return head
    }

    /// Publishes one writable chain: header buffer of 44 bytes + payload buffer (Linux 6.1 rx layout).
    @discardableResult
    func publishWritable(payload: Int, at offset: Int) -> UInt16 {
        let base = dataGPA + UInt64(offset)
        let head = nextDesc
        let second = (head + 1) % UInt16(queueSize)
        writeDesc(head, addr: base, len: 44, flags: 1 | 2, next: second)
        writeDesc(second, addr: base + 44, len: UInt32(payload), flags: 2, next: 0)
        nextDesc = (second + 1) % UInt16(queueSize)
        publish(head: head)
        return head
    }

    var usedIdx: UInt16 { UInt16(littleEndian: (host(usedGPA) + 2).load(as: UInt16.self)) }

    func usedEntry(_ i: Int) -> (id: UInt32, len: UInt32) {
        let e = host(usedGPA) + 4 + 8 * (i % queueSize)
        return (UInt32(littleEndian: e.load(as: UInt32.self)), UInt32(littleEndian: (e + 4).load(as: UInt32.self)))
    }
}

/// A host stream in memory. `incoming` is what the host "sends" (we read it); `written` is what we wrote.
final class FakeStream: VsockStream {
    var fd: Int32 { -1 }
    var incoming: [UInt8] = []
    var eof = false
    var written: [UInt8] = []
    /// At most this many bytes are accepted per write (nil: all); 0 = would block.
    var writeLimit: Int?
    var closed = false
    var writeShut = false

    func read(into buffer: UnsafeMutableRawBufferPointer) -> StreamResult {
        if closed { return .failed(EBADF) }
        if incoming.isEmpty { return eof ? .eof : .wouldBlock }
        let n = min(buffer.count, incoming.count)
        incoming.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        incoming.removeFirst(n)
        return .bytes(n)
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> StreamResult {
        if closed { return .failed(EPIPE) }
        let n = min(bytes.count, writeLimit ?? bytes.count)
        if n == 0 { return .wouldBlock }
        written += bytes[0..<n]
        return .bytes(n)
    }

    func shutdownWrite() { writeShut = true }
    func close() { closed = true }
}

extension VsockHeader {
    static func fromGuest(_ op: VsockOp, src: UInt32, dst: UInt32, len: UInt32 = 0, flags: UInt32 = 0,
                          bufAlloc: UInt32 = 256 * 1024, fwdCnt: UInt32 = 0, cid: UInt64 = 3) -> VsockHeader {
        VsockHeader(srcCID: cid, dstCID: 2, srcPort: src, dstPort: dst, op: op, len: len, flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }
}

extension VsockMuxer {
    /// Drains every packet the muxer has for the guest (payload capacity `room`).
    func drain(room: Int = 65536, now: UInt64 = 0) -> [(VsockHeader, [UInt8])] {
        var out: [(VsockHeader, [UInt8])] = []
        var buf = [UInt8](repeating: 0, count: room)
        while let (h, n) = buf.withUnsafeMutableBytes({ nextPacket(payload: $0, now: now) }) {
            out.append((h, Array(buf[0..<n])))
            if out.count > 100_000 { break }
        }
        return out
    }
}
