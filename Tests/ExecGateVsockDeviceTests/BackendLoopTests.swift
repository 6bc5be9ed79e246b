// SPDX-License-Identifier: Apache-2.0
//
// The real backend loop (VsockBackend.run) without QEMU: the test plays the vhost-user frontend
// over the Unix socket (fds by SCM_RIGHTS, guest RAM in a shared file mapping) and the guest's
// driver on the rings, while a host client uses the hybrid socket.

import _ExecGateInternals
import CExecGateVsockSys
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

final class BackendLoopTests: XCTestCase {

    /// Sends one message; reads the reply when `reply` (or REPLY_ACK) is expected.
    @discardableResult
    func vhost(_ fe: Int32, _ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], reply: Bool = false, ack: Bool = false) throws -> [UInt8] {
        let bytes = VhostUserHeader(request: r, flags: 1 | (ack ? 8 : 0), size: UInt32(payload.count)).bytes + payload
        let n = bytes.withUnsafeBytes { egv_send_with_fds(fe, $0.baseAddress, bytes.count, fds, Int32(fds.count)) }
        XCTAssertEqual(n, bytes.count)
        guard reply || ack else { return [] }
        let hdr = try readExactly(fe, 12)
        let h = try VhostUserHeader(bytes: hdr)
        XCTAssertEqual(h.request, r)
        let p = try readExactly(fe, Int(h.size))
        if ack { XCTAssertEqual(p, le(0), "\(r) refused") }
        return p
    }

    func readExactly(_ fd: Int32, _ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n), off = 0
        while off < n {
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + off, n - off, 0) }
            guard r > 0 else { throw BackendError("short read (\(off)/\(n))", errno: errno) }
            off += r
        }
        return out
    }

    func waitReadable(_ fd: Int32, seconds: Int32 = 5) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, seconds * 1000) == 1
    }

    func signal(_ fd: Int32) { var one: UInt64 = 1; _ = write(fd, &one, 8) }
    func drain(_ fd: Int32) { var v: UInt64 = 0; _ = read(fd, &v, 8) }

    func testBackendLoopWithFakeFrontendAndGuest() throws {
        let dir = "/tmp/egv-loop-\(getpid())"
        mkdir(dir, 0o700)
        let backend = try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu", hybridSocket: dir + "/h", guestCID: 3))
        let done = DispatchSemaphore(value: 0)
        Thread { backend.run(); done.signal() }.start()
        defer { backend.stop(); _ = done.wait(timeout: .now() + 5); rmdir(dir) }

        // Guest RAM: 1 MiB sealed memfd (as QEMU's memory-backend-memfd), seen by the test (the
        // "guest") and the backend.
        let memFd = egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        XCTAssertGreaterThanOrEqual(memFd, 0)
        let raw = try XCTUnwrap(mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memFd, 0))
        defer { munmap(raw, 1 << 20); close(memFd) }
        let rx = FakeGuest(shared: raw, ringOffset: 0, dataOffset: 0x10000)
        let tx = FakeGuest(shared: raw, ringOffset: 0x8000, dataOffset: 0x80000)

        // Frontend negotiation.
        var fe = try connectUnix(dir + "/vu")
        let features = try vhost(fe, .getFeatures, reply: true).u64(0)
        XCTAssertNotEqual(features & VhostUserFeatures.virtioVersion1, 0)
        try vhost(fe, .setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))
        try vhost(fe, .setProtocolFeatures, le(VhostUserFeatures.protocolReplyAck | VhostUserFeatures.protocolConfig))
        try vhost(fe, .setOwner, ack: true)
        XCTAssertEqual(try vhost(fe, .getConfig, le32(0, 8, 0) + [UInt8](repeating: 0, count: 8), reply: true).u64(12), 3)
        var table = le32(1, 0)
        table += le(FakeGuest.gpaBase); table += le(1 << 20); table += le(FakeGuest.uvaBase); table += le(0)
        try vhost(fe, .setMemTable, table, fds: [dup(memFd)], ack: true)
        var kick: [Int32] = [], call: [Int32] = []
        for (q, g) in [(0, rx), (1, tx)] {
            try vhost(fe, .setVringNum, le32(UInt32(q), 16), ack: true)
            var addr = le32(UInt32(q), 0)
            addr += le(g.uva(g.descGPA)); addr += le(g.uva(g.usedGPA)); addr += le(g.uva(g.availGPA)); addr += le(0)
            try vhost(fe, .setVringAddr, addr, ack: true)
            try vhost(fe, .setVringBase, le32(UInt32(q), 0), ack: true)
            let k = egv_eventfd(), c = egv_eventfd()
            kick.append(k); call.append(c)
            try vhost(fe, .setVringCall, le(UInt64(q)), fds: [c], ack: true)
            try vhost(fe, .setVringKick, le(UInt64(q)), fds: [k], ack: true)
            // F_PROTOCOL_FEATURES is acked: the ring stays disabled until this (vhost-user.rst
            // "Ring states"; QEMU ≥ 7.2 sends it from vhost_dev_start()).
            try vhost(fe, .setVringEnable, le32(UInt32(q), 1), ack: true)
        }
        var rxOffsets: [UInt16: UInt64] = [:]
        for i in 0..<6 { rxOffsets[rx.publishWritable(payload: 4096, at: i * 8192)] = UInt64(i * 8192) }
        signal(kick[0])

        var rxSeen = 0
        func nextRx() throws -> (VsockHeader, [UInt8]) {
            while rx.usedIdx == UInt16(rxSeen) {
                XCTAssertTrue(waitReadable(call[0]), "no rx interrupt")
                drain(call[0])
            }
            let e = rx.usedEntry(rxSeen)
            rxSeen += 1
            let base = rx.host(rx.dataGPA + rxOffsets[UInt16(e.id)]!)
            let h = VsockHeader(bytes: UnsafeRawBufferPointer(start: base, count: 44))!
            XCTAssertEqual(Int(e.len), 44 + Int(h.len))
            return (h, Array(UnsafeRawBufferPointer(start: base + 44, count: Int(h.len))))
        }
        var txOffset = 0
        func guestSends(_ h: VsockHeader, _ payload: [UInt8] = []) {
            var h = h; h.len = UInt32(payload.count)
            tx.publishReadable(h.bytes + payload, split: 44, at: txOffset)
            txOffset += 4096
            signal(kick[1])
        }

        // Host → guest connect.
        let client = try connectUnix(dir + "/h")
        defer { close(client) }
        _ = "CONNECT 5000\n".withCString { send(client, $0, 13, 0) }
        let (req, _) = try nextRx()
        XCTAssertEqual(req.op, .request)
        XCTAssertEqual(req.dstPort, 5000)
        XCTAssertEqual(req.srcCID, 2)
        XCTAssertEqual(req.dstCID, 3)
        let local = req.srcPort
        guestSends(.fromGuest(.response, src: 5000, dst: local))
        XCTAssertEqual(String(decoding: try readExactly(client, 14), as: UTF8.self), "OK \(local)\n")

        // Data both ways.
        _ = "ping".withCString { send(client, $0, 4, 0) }
        let (d, payload) = try nextRx()
        XCTAssertEqual(d.op, .rw)
        XCTAssertEqual(payload, Array("ping".utf8))
        guestSends(.fromGuest(.rw, src: 5000, dst: local), Array("pong".utf8))
        XCTAssertEqual(try readExactly(client, 4), Array("pong".utf8))

        // Hostile chains: a descriptor outside guest memory, and a lying length on this connection's
        // neighbour port. The device carries on.
        let head = tx.nextDesc
        tx.writeDesc(head, addr: 0xdead_0000_0000, len: 44, flags: 0, next: 0)
        tx.nextDesc = (head + 1) % 16
        tx.publish(head: head)
        signal(kick[1])
        guestSends(.fromGuest(.rw, src: 5000, dst: local), Array("again".utf8))
        XCTAssertEqual(try readExactly(client, 5), Array("again".utf8))
        guestSends(.fromGuest(.rw, src: 1, dst: 2), [1])  // Unknown connection → RST.
        let (rst, _) = try nextRx()
        XCTAssertEqual(rst.op, .rst)
        XCTAssertEqual(rst.dstPort, 1)

        // Guest → host: a connection to host port 6000 reaches the Unix socket <hybrid>_6000.
        let listener = try VsockBackend.listen(dir + "/h_6000")
        defer { close(listener); unlink(dir + "/h_6000") }
        guestSends(.fromGuest(.request, src: 1234, dst: 6000))
        let (resp, _) = try nextRx()
        XCTAssertEqual(resp.op, .response)
        XCTAssertEqual(resp.dstPort, 1234)
        XCTAssertTrue(waitReadable(listener))
        let accepted = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(accepted, 0)
        defer { close(accepted) }
        guestSends(.fromGuest(.rw, src: 1234, dst: 6000), Array("from the guest".utf8))
        XCTAssertTrue(waitReadable(accepted))
        var got = [UInt8](repeating: 0, count: 14)
        XCTAssertEqual(recv(accepted, &got, 14, Int32(MSG_WAITALL)), 14)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), "from the guest")
        guestSends(.fromGuest(.request, src: 1235, dst: 6001))  // Nobody listens on _6001 → RST.
        let (refused, _) = try nextRx()
        XCTAssertEqual(refused.op, .rst)
        XCTAssertEqual(refused.dstPort, 1235)

        // The frontend goes away: the host client sees EOF at once; the backend takes a new frontend.
        close(fe)
        XCTAssertTrue(waitReadable(client, seconds: 3))
        var byte: UInt8 = 0
        XCTAssertEqual(recv(client, &byte, 1, 0), 0, "host stream closed when the frontend left")
        fe = try connectUnix(dir + "/vu")
        XCTAssertEqual(try vhost(fe, .getFeatures, reply: true).count, 8)
        close(fe)
        for fd in kick + call { close(fd) }
    }

    /// A frontend that trickles one message is dropped after one message deadline (not one per
    /// recv()), and only its own session ends: the backend accepts the next frontend.
    func testTricklingFrontendIsDroppedAfterOneMessageDeadline() throws {
        let dir = "/tmp/egv-trickle-\(getpid())"
        mkdir(dir, 0o700)
        let backend = try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu", hybridSocket: dir + "/h", guestCID: 3))
        let done = DispatchSemaphore(value: 0)
        Thread { backend.run(); done.signal() }.start()
        defer { backend.stop(); _ = done.wait(timeout: .now() + 5); unlink(dir + "/vu.lock"); unlink(dir + "/h.lock"); rmdir(dir) }

        let fe = try connectUnix(dir + "/vu")
        let message = VhostUserHeader(request: .getFeatures, flags: 1, size: 0).bytes
        let start = MonotonicClock.nanoseconds()
        var closedAfter: UInt64?
        // One byte every 300 ms: each recv() would succeed well within a per-recv timeout.
        for b in message {
            var byte = b
            guard send(fe, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { closedAfter = MonotonicClock.nanoseconds() - start; break }
            var p = pollfd(fd: fe, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 300) > 0 {
                var x: UInt8 = 0
                if recv(fe, &x, 1, Int32(MSG_DONTWAIT)) == 0 { closedAfter = MonotonicClock.nanoseconds() - start; break }
            }
        }
        if closedAfter == nil {
            XCTAssertTrue(waitReadable(fe, seconds: 3))
            var x: UInt8 = 0
            XCTAssertEqual(recv(fe, &x, 1, 0), 0, "the session was closed")
            closedAfter = MonotonicClock.nanoseconds() - start
        }
        close(fe)
        let ms = Int(closedAfter! / 1_000_000)
        XCTAssertGreaterThanOrEqual(ms, VsockLimits.vhostUserMessageDeadlineMillis - 100, "\(ms) ms")
        XCTAssertLessThan(ms, VsockLimits.vhostUserMessageDeadlineMillis + 1000, "dropped at the message deadline, not 12 × 2 s")

        // The backend lives on: a well-behaved frontend is served.
        let good = try connectUnix(dir + "/vu")
        defer { close(good) }
        let features = try vhost(good, .getFeatures, reply: true).u64(0)
        XCTAssertNotEqual(features, 0)
    }

    /// vsock-backend never removes a live socket or another kind of file.
    func testBackendRefusesRegularFileAndLiveSocket() throws {
        let dir = "/tmp/egv-paths-\(getpid())"
        mkdir(dir, 0o700)
        defer { for f in ["vu", "h", "vu.lock", "h.lock", "vu2", "vu2.lock"] { unlink(dir + "/" + f) }; rmdir(dir) }
        let file = open(dir + "/vu", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        XCTAssertEqual(write(file, "keep", 4), 4)
        close(file)
        XCTAssertThrowsError(try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu", hybridSocket: dir + "/h", guestCID: 3))) { e in
            XCTAssertTrue("\(e)".contains("regular file"), "\(e)")
        }
        var st = stat()
        XCTAssertEqual(stat(dir + "/vu", &st), 0)
        XCTAssertEqual(st.st_size, 4, "the file is untouched")

        let first = try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu2", hybridSocket: dir + "/h", guestCID: 3))
        XCTAssertEqual(lstat(dir + "/vu2", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "created 0600, no window")
        XCTAssertThrowsError(try VsockBackend(config: VsockBackendConfig(vhostUserSocket: dir + "/vu2", hybridSocket: dir + "/h", guestCID: 3))) { e in
            XCTAssertTrue("\(e)".contains("in use"), "\(e)")
        }
        XCTAssertEqual(SocketPath.probe(dir + "/vu2"), .liveSocket, "the first backend's socket is still there")
        _ = first
    }
}
