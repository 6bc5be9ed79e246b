// SPDX-License-Identifier: Apache-2.0
//
// Round 4 on the vsock backend's edges, on the real backend loop (VsockBackend.run) without QEMU:
// the test plays the vhost-user frontend, the guest's driver on the rings (FakeGuest over a
// shared sealed memfd) and the host clients on the hybrid socket (BackendLoopTests' set-up).

import _ExecGateInternals
import CExecGateVsockSys
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

/// A running backend with a negotiated frontend, rx/tx rings live, and helpers for the guest side.
final class LoopHarness {
    let dir: String
    let backend: VsockBackend
    let done = DispatchSemaphore(value: 0)
    let memFd: Int32
    let raw: UnsafeMutableRawPointer
    let rx: FakeGuest
    let tx: FakeGuest
    var fe: Int32 = -1
    var kick: [Int32] = []
    var call: [Int32] = []
    var rxOffsets: [UInt16: UInt64] = [:]
    var rxSeen = 0
    var rxPosted = 0
    var txOffset = 0

    init(_ name: String) throws {
        dir = "/tmp/egv-\(name)-\(getpid())"
        mkdir(dir, 0o700)
        backend = try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu", hybridSocket: dir + "/h", guestCID: 3))
        let (backend, done) = (backend, done)
        Thread { backend.run(); done.signal() }.start()
        memFd = egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        raw = mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memFd, 0)!
        rx = FakeGuest(shared: raw, ringOffset: 0, dataOffset: 0x10000)
        tx = FakeGuest(shared: raw, ringOffset: 0x8000, dataOffset: 0x80000)
        fe = try connectUnix(dir + "/vu")
        _ = try vhost(.getFeatures, reply: true)
        try vhost(.setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))
        try vhost(.setProtocolFeatures, le(VhostUserFeatures.protocolReplyAck | VhostUserFeatures.protocolConfig))
        try vhost(.setOwner, ack: true)
        var table = le32(1, 0)
        table += le(FakeGuest.gpaBase); table += le(1 << 20); table += le(FakeGuest.uvaBase); table += le(0)
        try vhost(.setMemTable, table, fds: [dup(memFd)], ack: true)
        for (q, g) in [(0, rx), (1, tx)] {
            try vhost(.setVringNum, le32(UInt32(q), 16), ack: true)
            var addr = le32(UInt32(q), 0)
            addr += le(g.uva(g.descGPA)); addr += le(g.uva(g.usedGPA)); addr += le(g.uva(g.availGPA)); addr += le(0)
            try vhost(.setVringAddr, addr, ack: true)
            try vhost(.setVringBase, le32(UInt32(q), 0), ack: true)
            let k = egv_eventfd(), c = egv_eventfd()
            kick.append(k); call.append(c)
            try vhost(.setVringCall, le(UInt64(q)), fds: [c], ack: true)
            try vhost(.setVringKick, le(UInt64(q)), fds: [k], ack: true)
            try vhost(.setVringEnable, le32(UInt32(q), 1), ack: true)
        }
        postRx(8)
    }

    func stop() {
        backend.stop()
        _ = done.wait(timeout: .now() + 5)
        if fe >= 0 { close(fe) }
        for fd in kick + call { close(fd) }
        munmap(raw, 1 << 20); close(memFd)
        for f in ["vu", "h", "vu.lock", "h.lock"] { unlink(dir + "/" + f) }
        rmdir(dir)
    }


    /// Sends one message; reads the reply when `reply` (or REPLY_ACK) is expected. Returns the
    /// reply's payload (for an ack: the u64 status).
    @discardableResult
    func vhost(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], reply: Bool = false, ack: Bool = false, expectOK: Bool = true) throws -> [UInt8] {
        let bytes = VhostUserHeader(request: r, flags: 1 | (ack ? 8 : 0), size: UInt32(payload.count)).bytes + payload
        let n = bytes.withUnsafeBytes { egv_send_with_fds(fe, $0.baseAddress, bytes.count, fds, Int32(fds.count)) }
        guard n == bytes.count else { throw BackendError("send \(r)", errno: errno) }
        guard reply || ack else { return [] }
        let h = try VhostUserHeader(bytes: try Self.readExactly(fe, 12))
        let p = try Self.readExactly(fe, Int(h.size))
        if ack && expectOK && p != le(0) { throw BackendError("\(r) refused", errno: 0) }
        return p
    }

    static func readExactly(_ fd: Int32, _ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n), off = 0
        while off < n {
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + off, n - off, 0) }
            guard r > 0 else { throw BackendError("short read (\(off)/\(n))", errno: errno) }
            off += r
        }
        return out
    }

    static func waitReadable(_ fd: Int32, seconds: Double = 5) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(seconds * 1000)) == 1
    }

    func signal(_ fd: Int32) { var one: UInt64 = 1; _ = write(fd, &one, 8) }
    func drain(_ fd: Int32) { var v: UInt64 = 0; _ = read(fd, &v, 8) }

    /// Posts `n` more rx buffers (4 KiB payload each) and kicks.
    func postRx(_ n: Int) {
        for _ in 0..<n {
            let slot = rxPosted % 8
            rxOffsets[rx.publishWritable(payload: 4096, at: slot * 8192)] = UInt64(slot * 8192)
            rxPosted += 1
        }
        signal(kick[0])
    }

    /// The next packet the backend put on the rx ring, or nil within `seconds`. Reposts a buffer.
    func nextRx(seconds: Double = 5) -> (VsockHeader, [UInt8])? {
        let deadline = MonotonicClock.seconds() + seconds
        while rx.usedIdx == UInt16(truncatingIfNeeded: rxSeen) {
            let left = deadline - MonotonicClock.seconds()
            guard left > 0, Self.waitReadable(call[0], seconds: left) else { return nil }
            drain(call[0])
        }
        let e = rx.usedEntry(rxSeen)
        rxSeen += 1
        let base = rx.host(rx.dataGPA + rxOffsets[UInt16(e.id)]!)
        let h = VsockHeader(bytes: UnsafeRawBufferPointer(start: base, count: 44))!
        let payload = Array(UnsafeRawBufferPointer(start: base + 44, count: Int(h.len)))
        postRx(1)
        return (h, payload)
    }

    /// Control packets read while waiting for another (`hostClient`), returned first by `nextControl`.
    var backlog: [VsockHeader] = []

    /// The next rx packet that is not a credit update.
    func nextControl(seconds: Double = 5) -> VsockHeader? {
        if !backlog.isEmpty { return backlog.removeFirst() }
        let deadline = MonotonicClock.seconds() + seconds
        while let (h, _) = nextRx(seconds: max(0.01, deadline - MonotonicClock.seconds())) {
            if h.op != .creditUpdate { return h }
        }
        return nil
    }

    func guestSends(_ h: VsockHeader, _ payload: [UInt8] = []) {
        var h = h; h.len = UInt32(payload.count)
        tx.publishReadable(h.bytes + payload, split: 44, at: txOffset % (8 * 4096))
        txOffset += 4096
        signal(kick[1])
    }

    /// A host client connected to guest port 5000, accepted by the guest with `bufAlloc`.
    func hostClient(bufAlloc: UInt32 = 256 * 1024) throws -> (fd: Int32, port: UInt32) {
        let client = try connectUnix(dir + "/h")
        _ = "CONNECT 5000\n".withCString { send(client, $0, 13, 0) }
        // Other connections' packets (credit requests, resets) may come first: kept for later.
        var request: VsockHeader?
        var stray: [VsockHeader] = []
        defer { backlog += stray }
        while request == nil, let p = nextControl() {
            if p.op == .request && p.dstPort == 5000 { request = p } else { stray.append(p) }
        }
        guard let req = request else { throw BackendError("no REQUEST", errno: 0) }
        guestSends(.fromGuest(.response, src: 5000, dst: req.srcPort, bufAlloc: bufAlloc))
        let ok = try Self.readExactly(client, "OK \(req.srcPort)\n".utf8.count)
        guard String(decoding: ok, as: UTF8.self) == "OK \(req.srcPort)\n" else { throw BackendError("no OK line", errno: 0) }
        return (client, req.srcPort)
    }

    /// Descriptors open in this process (the backend runs in it).
    static func openDescriptors() -> Int {
        guard let d = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 3  // ".", ".." and the directory's own descriptor.
    }
}

/// docs/vsock.md, "Closing": a host client that half-closes after the guest's SHUTDOWN(SEND).
final class HostHalfCloseTests: XCTestCase {
    /// The guest answers and half-closes (SHUTDOWN(SEND): the host reads the answer, then EOF);
    /// the host client then half-closes too (shutdown(SHUT_WR)). Neither direction can carry
    /// anything more: the Unix socket is shut both ways, which poll reports as POLLHUP
    /// (unix_poll(): sk_shutdown == SHUTDOWN_MASK), exactly as if the client had closed it. The
    /// backend does what the kernel's virtio_transport_close() does for a socket released with
    /// its peer's SHUTDOWN(SEND) only: SHUTDOWN(RCV|SEND) to the guest, whose
    /// virtio_transport_recv_connected() then has peer_shutdown == SHUTDOWN_MASK and answers RST
    /// (virtio_transport_reset()); the connection is gone then, or after 2 s at the latest (our
    /// RST, as close_work's virtio_transport_close_timeout()).
    func testHostHalfCloseAfterTheGuestsShutdownSendIsAFullShutdown() throws {
        let h = try LoopHarness("halfclose")
        defer { h.stop() }
        for guestAnswersRST in [true, false] {
            let (client, port) = try h.hostClient()
            defer { close(client) }
            h.guestSends(.fromGuest(.rw, src: 5000, dst: port), Array("answer".utf8))
            h.guestSends(.fromGuest(.shutdown, src: 5000, dst: port, flags: 2))
            XCTAssertEqual(try LoopHarness.readExactly(client, 6), Array("answer".utf8))
            var byte: UInt8 = 0
            XCTAssertEqual(recv(client, &byte, 1, 0), 0, "the guest's SHUTDOWN(SEND) is EOF to the host client")
            shutdown(client, Int32(SHUT_WR))
            let t0 = MonotonicClock.seconds()
            let sd = h.nextControl(seconds: 4)
            XCTAssertEqual(sd?.op, .shutdown, "no SHUTDOWN after the host's half-close")
            XCTAssertEqual(sd?.flags, 3, "the host's half-close after the guest's is a full shutdown: SHUTDOWN(RCV|SEND)")
            XCTAssertEqual(sd?.srcPort, port)
            if guestAnswersRST {
                h.guestSends(.fromGuest(.rst, src: 5000, dst: port))
            } else {
                let rst = h.nextControl(seconds: 4)
                XCTAssertEqual(rst?.op, .rst, "the backend resets a shut-down connection the guest never resets")
                let after = MonotonicClock.seconds() - t0
                XCTAssertLessThan(after, 3.5, "RST \(after) s after the full shutdown (2 s promised)")
                XCTAssertGreaterThan(after, 1.5, "RST before the guest had its 2 s")
            }
            // The connection is gone: a packet on it is answered with RST (unknown connection).
            h.guestSends(.fromGuest(.rw, src: 5000, dst: port), [1])
            XCTAssertEqual(h.nextControl(seconds: 4)?.op, .rst, "the connection outlived its full shutdown")
        }
    }

    /// The other order: the host half-closes first (the guest gets SHUTDOWN(SEND) and may still
    /// answer), then the guest answers and sends SHUTDOWN(SEND). Both directions are done then,
    /// as above: SHUTDOWN(RCV|SEND) and RST, not a connection (a table slot and a descriptor)
    /// left established until the guest closes its socket.
    func testGuestShutdownSendAfterTheHostsHalfCloseIsAFullShutdown() throws {
        let h = try LoopHarness("halfclose2")
        defer { h.stop() }
        let (client, port) = try h.hostClient()
        defer { close(client) }
        _ = "request".withCString { send(client, $0, 7, 0) }
        shutdown(client, Int32(SHUT_WR))
        var got: [UInt8] = []
        var shut: VsockHeader?
        while shut == nil, let (p, payload) = h.nextRx(seconds: 4) {
            if p.op == .rw { got += payload } else if p.op == .shutdown { shut = p }
        }
        XCTAssertEqual(got, Array("request".utf8))
        XCTAssertEqual(shut?.flags, 2, "the host's half-close is SHUTDOWN(SEND) only: the guest may still answer")
        h.guestSends(.fromGuest(.rw, src: 5000, dst: port, fwdCnt: 7), Array("answer".utf8))
        h.guestSends(.fromGuest(.shutdown, src: 5000, dst: port, flags: 2, fwdCnt: 7))
        XCTAssertEqual(try LoopHarness.readExactly(client, 6), Array("answer".utf8))
        var byte: UInt8 = 0
        XCTAssertEqual(recv(client, &byte, 1, 0), 0)
        let sd = h.nextControl(seconds: 4)
        XCTAssertEqual(sd?.op, .shutdown, "both directions done: the backend must end the connection")
        XCTAssertEqual(sd?.flags, 3)
        h.guestSends(.fromGuest(.rst, src: 5000, dst: port, fwdCnt: 7))
        h.guestSends(.fromGuest(.rw, src: 5000, dst: port, fwdCnt: 7), [1])
        XCTAssertEqual(h.nextControl(seconds: 4)?.op, .rst, "the connection outlived its full shutdown")
    }
}

/// A guest filling the backend's connection table (1023 slots, each a host descriptor).
final class GuestTableRound4Tests: XCTestCase {
    /// Attack: accept every host connection with buf_alloc 0 (no credit, ever) and never answer.
    /// The host clients give up and close. Round 3 gave a hung-up stream a 2 s deadline
    /// (MuxerRound3Tests, against the muxer), but the loop polled a connection's host descriptor
    /// only for the events it wanted: no credit, nothing to read (POLLIN); nothing to write, no
    /// POLLOUT; and a descriptor with no events was left out of poll() altogether, so its POLLHUP
    /// was never seen and the deadline never armed. Every such connection kept a table slot and a
    /// descriptor for as long as the guest liked: 1023 of them and no host client (the VMM
    /// included) reaches the verifier. Rule (docs/vsock.md, "Closing"): a host client that closes
    /// gets SHUTDOWN(RCV|SEND) and RST 2 s after the hang-up at the latest, whatever the guest's
    /// credit (virtio_transport_close(): SHUTDOWN at release, close_work resets after
    /// VSOCK_CLOSE_TIMEOUT); poll(2) reports POLLHUP/POLLERR whatever `events` asks, so a
    /// descriptor polled with no events costs nothing until its peer goes away.
    func testHostClientsOfANoCreditGuestAreResetAfterTheirHangUp() throws {
        let h = try LoopHarness("nocredit")
        defer { h.stop() }
        let before = LoopHarness.openDescriptors()
        var ports = Set<UInt32>()
        for _ in 0..<12 {
            let (client, port) = try h.hostClient(bufAlloc: 0)
            _ = "a request the guest never takes".withCString { send(client, $0, 31, 0) }
            ports.insert(port)
            close(client)
        }
        let t0 = MonotonicClock.seconds()
        var reset = Set<UInt32>()
        while reset.count < ports.count, MonotonicClock.seconds() - t0 < 5, let p = h.nextControl(seconds: 5 - (MonotonicClock.seconds() - t0)) {
            if p.op == .rst { reset.insert(p.srcPort) }
        }
        XCTAssertEqual(reset, ports, "\(ports.count - reset.count) of \(ports.count) hung-up host connections never reset (their hang-up was not seen)")
        usleep(200_000)
        let after = LoopHarness.openDescriptors()
        XCTAssertLessThanOrEqual(after, before, "\(after - before) host descriptors still held by hung-up connections")
        print("no-credit guest: \(reset.count)/\(ports.count) hung-up host connections reset within \(String(format: "%.1f", MonotonicClock.seconds() - t0)) s; descriptors \(before) -> \(after)")
    }
}

/// A hostile vhost-user frontend, round 4: ring geometry on running and never-started rings,
/// protocol-feature bits never offered, and descriptors attached where none are expected.
final class VhostUserRound4Tests: XCTestCase {
    static let uva: UInt64 = 0x7000_0000_0000

    func msg(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], ack: Bool = true) -> VhostUserMessage {
        VhostUserMessage(header: VhostUserHeader(request: r, flags: 1 | (ack ? 8 : 0), size: UInt32(payload.count)), payload: payload, fds: fds)
    }


    func ack(_ s: VhostUserSession, _ m: VhostUserMessage, file: StaticString = #filePath, line: UInt = #line) -> UInt64? {
        guard let r = s.handle(m), r.count == 20 else { XCTFail("no REPLY_ACK for \(m.header.request)", file: file, line: line); return nil }
        return Array(r.dropFirst(12)).u64(0)
    }

    func session(running: Bool) throws -> VhostUserSession {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        let ram = egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        var t = le32(1, 0); t += le(0); t += le(1 << 20); t += le(Self.uva); t += le(0)
        XCTAssertEqual(ack(s, msg(.setMemTable, t, fds: [ram])), 0)
        XCTAssertEqual(ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        var a = le32(1, 0)
        a += le(Self.uva); a += le(Self.uva + 0x2000); a += le(Self.uva + 0x1000); a += le(0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, a)), 0)
        if running { XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0); XCTAssertTrue(s.isLive(1)) }
        return s
    }

    /// Attack (fails; kept): SET_VRING_NUM of 0, 3, 2^15 + 1, 2^16 and 2^32 − 1 on a stopped ring
    /// and any size on a running one. The kernel's vhost_vring_set_num(): -EBUSY on a running vq,
    /// -EINVAL for 0, above the maximum or not a power of two (virtio 1.2 § 2.7: Queue Size is a
    /// power of 2). Each is refused, the running ring keeps its size and keeps running, and a
    /// stopped ring keeps the size it had.
    func testRingSizesThatAreNoPowerOfTwoOrZeroOrOnARunningRingAreRefused() throws {
        let s = try session(running: true)
        defer { s.closeAll() }
        for n: UInt32 in [0, 3, 16, 32, 1 << 15, (1 << 15) + 1, 1 << 16, .max] {
            XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, n))), 1, "running ring: size \(n) accepted")
            XCTAssertTrue(s.isLive(1), "size \(n) stopped the running ring")
            XCTAssertEqual(s.queues[1].size, 16)
        }
        for n: UInt32 in [0, 3, (1 << 15) + 1, 1 << 16, .max] {
            XCTAssertEqual(ack(s, msg(.setVringNum, le32(0, n))), 1, "stopped ring: size \(n) accepted")
        }
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(0, 1 << 15))), 0, "the largest size (32768) is refused")
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(7, 16))), 1, "a ring that does not exist")
    }

    /// Attack (fails; kept): GET_VRING_BASE on a ring never started (nor given a size or
    /// addresses), twice, and on a ring index that does not exist. The kernel's
    /// vhost_vring_ioctl(VHOST_GET_VRING_BASE) returns last_avail_idx whatever the ring's state;
    /// vhost-user.rst: the reply carries the ring's index and base. Answered with the base last
    /// set (0), the ring stays stopped, and it then starts normally; a bad index is refused and
    /// the session lives.
    func testGetVringBaseOnARingNeverStartedAnswersItsBase() throws {
        let s = try session(running: false)
        defer { s.closeAll() }
        for _ in 0..<2 {
            let r = try XCTUnwrap(s.handle(msg(.getVringBase, le32(0, 0), ack: false)))
            XCTAssertEqual(r.count, 12 + 8)
            XCTAssertEqual(Array(r[12..<20]), le32(0, 0))
            XCTAssertFalse(s.isLive(0))
        }
        XCTAssertEqual(ack(s, msg(.setVringBase, le32(1, 5))), 0)
        let r1 = try XCTUnwrap(s.handle(msg(.getVringBase, le32(1, 0), ack: false)))
        XCTAssertEqual(Array(r1[12..<20]), le32(1, 5), "the base set on a stopped ring")
        XCTAssertEqual(ack(s, msg(.getVringBase, le32(9, 0))), 1, "a ring that does not exist")
        XCTAssertEqual(ack(s, msg(.setVringBase, le32(1, 0))), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertTrue(s.isLive(1), "the ring does not start after GET_VRING_BASE on it stopped")
    }

    /// Attack (fails; kept): SET_PROTOCOL_FEATURES with every bit set, then without REPLY_ACK.
    /// vhost-user.rst: the frontend acks only protocol features the backend offered; a backend
    /// never acts on a bit it did not offer. Bits never offered (MQ, LOG_SHMFD, BACKEND_REQ,
    /// INFLIGHT_SHMFD, …) are dropped: GET_PROTOCOL_FEATURES still offers REPLY_ACK and CONFIG
    /// only, nothing sends on a backend channel, and acks follow the REPLY_ACK bit alone.
    func testProtocolFeatureBitsNeverOfferedAreIgnored() throws {
        let s = VhostUserSession(guestCID: 3)
        defer { s.closeAll() }
        XCTAssertNil(s.handle(msg(.setProtocolFeatures, le(.max), ack: false)))
        XCTAssertEqual(s.protocolFeatures, VhostUserFeatures.offeredProtocol)
        let offered = try XCTUnwrap(s.handle(msg(.getProtocolFeatures, ack: false)))
        XCTAssertEqual(Array(offered.dropFirst(12)), le(VhostUserFeatures.offeredProtocol))
        XCTAssertEqual(ack(s, msg(.setOwner)), 0)
        XCTAssertNil(s.handle(msg(.setProtocolFeatures, le(~VhostUserFeatures.protocolReplyAck), ack: false)))
        XCTAssertEqual(s.protocolFeatures & VhostUserFeatures.protocolReplyAck, 0)
        XCTAssertNil(s.handle(msg(.setOwner)), "an ack without REPLY_ACK negotiated")
    }

    /// Attack (fails; kept) on the real loop: descriptors attached to messages that take none
    /// (GET_FEATURES, SET_OWNER, SET_VRING_NUM, SET_VRING_BASE, an unknown request, SET_VRING_ENABLE),
    /// more descriptors than regions on SET_MEM_TABLE, two on SET_VRING_CALL, and a message with
    /// more than the 8 the backend receives (MSG_CTRUNC: that frontend is dropped). Each fd is an
    /// eventfd, a pipe end or a memfd the test closes after sending; the backend must close its
    /// copies: /proc/self/fd counts the same before and after (the backend runs in this process).
    func testDescriptorsAttachedWhereNoneAreExpectedAreClosed() throws {
        let h = try LoopHarness("fds")
        defer { h.stop() }
        usleep(100_000)
        let before = LoopHarness.openDescriptors()
        func junk(_ n: Int) -> [Int32] {
            (0..<n).map { i -> Int32 in
                switch i % 3 {
                case 0: return egv_eventfd()
                case 1: var p: [Int32] = [0, 0]; pipe(&p); close(p[1]); return p[0]
                default: return egv_memfd("junk", 4096, 0)
                }
            }
        }
        func send(_ r: VhostUserRequest, _ payload: [UInt8], fds n: Int, reply: Bool = false, ack: Bool = true) throws {
            let fds = junk(n)
            defer { fds.forEach { close($0) } }
            _ = try h.vhost(r, payload, fds: fds, reply: reply, ack: ack && !reply, expectOK: false)
        }
        for _ in 0..<20 {
            try send(.getFeatures, [], fds: 8, reply: true)
            try send(.setOwner, [], fds: 8)
            try send(.setVringNum, le32(2, 16), fds: 3)
            try send(.setVringBase, le32(2, 0), fds: 3)
            try send(VhostUserRequest(rawValue: 99), [], fds: 5)
            try send(.setVringEnable, le32(1, 1), fds: 2)
            try send(.setVringCall, le(2), fds: 2)
            var t = le32(1, 0); t += le(FakeGuest.gpaBase); t += le(1 << 20); t += le(FakeGuest.uvaBase); t += le(0)
            let ram = dup(h.memFd)
            try send(.setMemTable, t, fds: 0)  // No fd: refused.
            let extra = junk(4)
            _ = try h.vhost(.setMemTable, t, fds: [ram] + extra, ack: true, expectOK: false)
            close(ram); extra.forEach { close($0) }
        }
        // The rings still run: a host client reaches the guest.
        let (client, _) = try h.hostClient()
        close(client)
        usleep(300_000)
        let during = LoopHarness.openDescriptors()
        // More than 8 descriptors on one message: truncated, that frontend dropped, nothing kept.
        let many = junk(12)
        let hdr = VhostUserHeader(request: .getFeatures, flags: 1, size: 0).bytes
        _ = hdr.withUnsafeBytes { egv_send_with_fds(h.fe, $0.baseAddress, hdr.count, many, Int32(many.count)) }
        many.forEach { close($0) }
        var b: UInt8 = 0
        XCTAssertTrue(LoopHarness.waitReadable(h.fe, seconds: 5))
        XCTAssertLessThanOrEqual(recv(h.fe, &b, 1, 0), 0, "a message with 12 descriptors was served")
        close(h.fe); h.fe = -1
        usleep(500_000)
        let after = LoopHarness.openDescriptors()
        print("vhost-user fds: \(before) open before 180 messages with stray descriptors, \(during) after, \(after) after the truncated one and the frontend's end")
        XCTAssertLessThanOrEqual(during, before + 2, "stray descriptors kept: \(during - before)")
        XCTAssertLessThanOrEqual(after, before, "descriptors kept after the frontend left: \(after - before)")
    }
}
