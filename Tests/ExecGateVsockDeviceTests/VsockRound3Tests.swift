// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers of the vhost-user-vsock backend, round 3: what HostileFrontendTests,
// HostileGuestTests and HostileHostClientTests did not try. Each test names the attack and the
// rule the backend follows, from QEMU docs/interop/vhost-user.rst, virtio 1.2 § 2.7 and 5.10,
// and the kernel's own vhost (drivers/vhost/vhost.c, vsock.c).

import CExecGateVsockSys
import ExecGateTestSupport
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

final class VhostUserRound3Tests: XCTestCase {
    static let uva: UInt64 = 0x7000_0000_0000

    func msg(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = []) -> VhostUserMessage {
        VhostUserMessage(header: VhostUserHeader(request: r, flags: 1 | 8, size: UInt32(payload.count)), payload: payload, fds: fds)
    }


    /// The REPLY_ACK status of `m` (0 = done, non-zero = refused).
    func ack(_ s: VhostUserSession, _ m: VhostUserMessage, file: StaticString = #filePath, line: UInt = #line) -> UInt64? {
        guard let r = s.handle(m), r.count == 20 else { XCTFail("no REPLY_ACK for \(m.header.request)", file: file, line: line); return nil }
        return Array(r.dropFirst(12)).u64(0)
    }

    /// 1 MiB of guest RAM as QEMU's memory-backend-memfd shares it (sealed), or unsealed.
    func ram(sealed: Bool = true, size: Int = 1 << 20) -> Int32 {
        egv_memfd("guest-ram", size, sealed ? EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL : 0)
    }

    func table(_ regions: [(gpa: UInt64, size: UInt64, uva: UInt64)]) -> [UInt8] {
        var t = le32(UInt32(regions.count), 0)
        for r in regions { t += le(r.gpa); t += le(r.size); t += le(r.uva); t += le(0) }
        return t
    }

    /// REPLY_ACK negotiated, one 1 MiB region at gpa 0 / `uva`, VERSION_1 acked (rings enabled at
    /// once), and ring 1 running (size 16, rings at 0 / 0x1000 / 0x2000).
    func runningSession() throws -> VhostUserSession {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        XCTAssertEqual(ack(s, msg(.setMemTable, table([(0, 1 << 20, Self.uva)]), fds: [ram()])), 0)
        XCTAssertEqual(ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        var a = le32(1, 0)
        a += le(Self.uva); a += le(Self.uva + 0x2000); a += le(Self.uva + 0x1000); a += le(0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, a)), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertTrue(s.isLive(1))
        return s
    }

    /// Attack: a SET_MEM_TABLE whose first region is good and whose second cannot be mapped (not
    /// sealed against shrinking, size 0, past its file's end, or an end that wraps: the overlap
    /// check skipped a region whose end overflowed, and this one overlaps the first). Only the
    /// overlap check ran before the memory in use was unmapped; the regions were then mapped one
    /// by one, so the refusal came after the old table was gone and the new one half mapped: the
    /// running ring stopped and the guest's memory was no longer the frontend's. Rule: a refused
    /// table changes nothing. The kernel's vhost_set_memory() (drivers/vhost/vhost.c) builds the
    /// whole new table (vhost_iotlb_add_range() per region, -EFAULT on a wrapping one), checks
    /// that every running ring is still reachable in it (memory_access_ok()), and only then
    /// swaps it in; on any failure it frees the new table and the old one stays. rust-vmm
    /// backends build the new GuestMemoryMmap from all regions before replacing the old one.
    func testARefusedMemoryTableChangesNothing() throws {
        let s = try runningSession()
        // A mark in the guest's memory: a replaced table (fresh memfds) reads zero there.
        try XCTUnwrap(s.memory.translate(userAddr: Self.uva + 0x3000, length: 1)).storeBytes(of: 0xa5, as: UInt8.self)
        let hostile: [(String, [UInt8], [Int32])] = [
            ("second region not sealed", table([(0, 1 << 20, Self.uva), (1 << 20, 1 << 20, Self.uva + (1 << 20))]), [ram(), ram(sealed: false)]),
            ("second region of size 0", table([(0, 1 << 20, Self.uva), (1 << 20, 0, Self.uva + (1 << 20))]), [ram(), ram()]),
            ("second region past its file's end", table([(0, 1 << 20, Self.uva), (1 << 20, 2 << 20, Self.uva + (1 << 20))]), [ram(), ram()]),
            ("second region wraps over the first", table([(0, 1 << 20, Self.uva), (0x8_0000, UInt64.max - 0x7_0000, Self.uva + (1 << 20))]), [ram(), ram()]),
            ("the running ring outside the new table", table([(0, 1 << 20, Self.uva + (1 << 30))]), [ram()]),
        ]
        for (what, t, fds) in hostile {
            XCTAssertNotEqual(ack(s, msg(.setMemTable, t, fds: fds)), 0, what)
            XCTAssertEqual(s.memory.regions.count, 1, what)
            XCTAssertEqual(s.memory.translate(userAddr: Self.uva + 0x3000, length: 1)?.load(as: UInt8.self), 0xa5, "\(what): the memory in use was replaced")
            XCTAssertTrue(s.isLive(1), "\(what): the running ring stopped")
            XCTAssertNoThrow(try s.queues[1].nextAvailable(), what)
        }
        // An acceptable table is still taken, and the ring follows it.
        XCTAssertEqual(ack(s, msg(.setMemTable, table([(0, 1 << 20, Self.uva), (1 << 20, 1 << 20, Self.uva + (1 << 20))]), fds: [ram(), ram()])), 0)
        XCTAssertEqual(s.memory.regions.count, 2)
        XCTAssertTrue(s.isLive(1))
        s.closeAll()
    }

    /// Attack: SET_VRING_ADDR on a running ring. It was acknowledged and only stored: the ring
    /// kept reading descriptors and avail entries at its old addresses (memory the driver may
    /// since have given to anything else) until some later SET_MEM_TABLE or kick re-read them, and
    /// addresses outside guest memory were acknowledged too (then every later SET_MEM_TABLE was
    /// refused for them). Rule: the kernel's vhost_vring_set_addr() (drivers/vhost/vhost.c), on a
    /// ring with a backend (vq->private_data): the new rings must be accessible (vq_access_ok(),
    /// -EINVAL otherwise, nothing changed) and take effect at once; QEMU re-sends SET_VRING_ADDR
    /// on running rings (vhost_virtqueue_set_addr() from vhost_dev_set_log()).
    func testMovingARunningRingTakesEffectAtOnceOrIsRefused() throws {
        let s = try runningSession()
        func addr(_ desc: UInt64, _ avail: UInt64, _ used: UInt64) -> [UInt8] {
            var a = le32(1, 0)
            a += le(desc); a += le(used); a += le(avail); a += le(0)
            return a
        }
        // Outside guest memory: refused, the ring runs on where it was.
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(Self.uva + (2 << 20), Self.uva + 0x1000, Self.uva + 0x2000))), 0, "rings outside guest memory acknowledged")
        XCTAssertTrue(s.isLive(1))
        // Moved inside guest memory: the avail ring at the new place is the one read.
        let mem = try XCTUnwrap(s.memory.translate(userAddr: Self.uva, length: 1 << 20))
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(Self.uva + 0x10000, Self.uva + 0x11000, Self.uva + 0x12000))), 0)
        (mem + 0x11000 + 4).storeBytes(of: UInt16(3).littleEndian, as: UInt16.self)  // ring[0] = head 3
        (mem + 0x11000 + 2).storeBytes(of: UInt16(1).littleEndian, as: UInt16.self)  // avail.idx = 1
        XCTAssertEqual(try s.queues[1].nextAvailable(), 3, "the running ring still reads its old avail ring")
        s.closeAll()
    }

    /// Attack (fails; kept): a seeded storm of vhost-user messages from a hostile frontend, every
    /// request code the backend knows plus unknown ones, payloads of random and of nearly right
    /// sizes with plausible values (queue indexes around 3, ring sizes around powers of two,
    /// features, memory tables with random regions), and 0–3 descriptors of every kind (eventfd,
    /// semaphore eventfd, sealed and unsealed memfd, pipe, socket). Rule: each message is applied
    /// or refused whole; nothing traps; every descriptor the backend does not keep is closed
    /// (none leak: the descriptor count is back where it started after `closeAll`); a ring is
    /// live only with a size, addresses inside the memory table and a kick eventfd; afterwards an
    /// honest set-up on the same session works.
    func testSeededMessageStormLeavesTheSessionSane() throws {
        let openBefore = openDescriptors()
        var rng = SeededRNG(seed: 0x7653_0c3d)
        let s = VhostUserSession(guestCID: 3)
        let codes: [UInt32] = Array(0...41) + [0xffff_ffff, 0x8000_0005]
        func anyFd() -> Int32 {
            switch rng.next() % 7 {
            case 0: return egv_eventfd()
            case 1: return egv_eventfd_semaphore()
            case 2: return ram(size: 4096 << (rng.next() % 9))
            case 3: return ram(sealed: false)
            case 4: var p: [Int32] = [0, 0]; _ = pipe(&p); close(p[1]); return p[0]
            case 5: var sv: [Int32] = [0, 0]; _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv); close(sv[1]); return sv[0]
            default: return egv_eventfd()
            }
        }
        func plausible(_ bits: Int) -> UInt64 {
            switch rng.next() % 5 {
            case 0: return rng.next() % 4
            case 1: return 1 << (rng.next() % UInt64(bits))
            case 2: return (1 << (rng.next() % UInt64(bits))) &- 1
            case 3: return rng.next() % 0x3000
            default: return rng.next()
            }
        }
        var refused = 0, taken = 0
        for i in 0..<20_000 {
            let code = codes[Int(rng.next() % UInt64(codes.count))]
            var payload: [UInt8] = []
            switch rng.next() % 6 {
            case 0:
                payload = (0..<Int(rng.next() % 300)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            case 1:
                payload = le(plausible(64))
            case 2:
                payload = le32(UInt32(truncatingIfNeeded: plausible(3)), UInt32(truncatingIfNeeded: plausible(17)))
            case 3:
                payload = le32(UInt32(truncatingIfNeeded: plausible(3)), UInt32(truncatingIfNeeded: rng.next() % 2))
                for _ in 0..<4 { payload += le(Self.uva &+ (plausible(14) & ~0xf)) }
            case 4:
                let n = rng.next() % 10
                payload = le32(UInt32(n), 0)
                for _ in 0..<n {
                    payload += le(plausible(40)); payload += le(plausible(24)); payload += le(Self.uva &+ plausible(40)); payload += le(plausible(16))
                }
            default:
                payload = le32(UInt32(truncatingIfNeeded: plausible(10)), UInt32(truncatingIfNeeded: plausible(10)), 0) + [UInt8](repeating: 0, count: Int(rng.next() % 20))
            }
            let fds = (0..<Int(rng.next() % 4)).map { _ in anyFd() }
            let m = VhostUserMessage(header: VhostUserHeader(request: VhostUserRequest(rawValue: code), flags: 1 | (rng.next() % 2 == 0 ? 8 : 0),
                                                             size: UInt32(payload.count)), payload: payload, fds: fds)
            if let r = s.handle(m), r.count == 20, Array(r.dropFirst(12)).u64(0) != 0 { refused += 1 } else { taken += 1 }
            for q in 0..<VsockLimits.queueCount where s.isLive(q) {
                XCTAssertGreaterThan(s.vrings[q].num, 0, "message \(i): live ring \(q) without a size")
                XCTAssertGreaterThanOrEqual(s.kickFd(q), 0, "message \(i): live ring \(q) without a kick eventfd")
                XCTAssertNoThrow(try s.queues[q].nextAvailable(), "message \(i)")
            }
            XCTAssertLessThanOrEqual(s.memory.regions.count, VsockLimits.maxMemoryRegions)
            XCTAssertLessThan(openDescriptors(), openBefore + 64, "message \(i): descriptors pile up")
        }
        print("vhost-user storm: \(taken) messages taken, \(refused) refused; \(s.memory.regions.count) regions mapped at the end")
        XCTAssertGreaterThan(refused, 1000)
        s.closeAll()
        XCTAssertEqual(openDescriptors(), openBefore, "descriptors leaked by the storm")
        // An honest set-up on the same session.
        let t = try runningSession()
        t.closeAll()
    }

    func openDescriptors() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while readdir(dir) != nil { n += 1 }
        return n
    }
}

/// The guest's side of the vsock protocol as an adversary of the muxer, round 3.
final class MuxerRound3Tests: XCTestCase {
    /// Attack (fails; kept): a seeded guest that plays the protocol statefully against 16 table
    /// slots (`maxConnections` 16): REQUESTs to random host ports (some listened on, some not),
    /// RESPONSE/RW/CREDIT_UPDATE/CREDIT_REQUEST/SHUTDOWN/RST with credit fields that are honest,
    /// stale, wrapped or absurd, bogus ops and CIDs; host streams that block, drain, send data,
    /// half-close and hang up; rx buffers of random room. Rules checked after every step
    /// (virtio 1.2 § 5.10.6.3 "Flow Control": a sender never has more than the peer's
    /// `buf_alloc − (tx_cnt − fwd_cnt)` in flight; FC `csm/connection.rs`; docs/vsock.md):
    /// the table holds at most its bound; what one connection buffers for its host stream is at
    /// most the 256 KiB it advertises; no RW the backend sends exceeds the credit the guest's last
    /// header on that connection gave; every RW payload fits the room offered; no hung-up host
    /// stream outlives its 2 s (this storm found the one that did: the next test); an honest
    /// connection opened before the storm still carries data both ways after it.
    func testSeededGuestStormKeepsCreditAndBuffersBounded() throws {
        var rng = SeededRNG(seed: 0x3c0ffee5)
        var listening: Set<UInt32> = [7000, 7001]
        var streams: [FakeStream] = []
        let muxer = VsockMuxer(guestCID: 3, maxConnections: 16) { port in
            guard listening.contains(port) else { return nil }
            let s = FakeStream()
            streams.append(s)
            return s
        }
        // The honest connection: host → guest port 5000, answered.
        let honest = FakeStream()
        let honestPort = try XCTUnwrap(muxer.connectFromHost(stream: honest, guestPort: 5000, prefix: [], now: 0))
        _ = muxer.drain()
        muxer.receive(TxPacket(header: .fromGuest(.response, src: 5000, dst: honestPort), payload: []), now: 0)
        // Per connection (as the guest names it: local = host port, peer = guest port): the credit
        // its last accepted header gave, and what the backend has sent since the start.
        var credit: [ConnectionKey: (bufAlloc: UInt32, fwdCnt: UInt32)] = [:]
        var sent: [ConnectionKey: UInt32] = [:]
        var hostPorts: [UInt32] = [honestPort]
        let guestPorts: [UInt32] = [5000, 1234, 1235, 80]
        var rwSent = 0, rstSeen = 0
        for step in 0..<60_000 {
            let now = UInt64(step) * 1_000_000  // 1 ms a step: deadlines (2 s) expire during the storm.
            switch rng.next() % 10 {
            case 0...5:
                // A guest packet.
                let src = guestPorts[Int(rng.next() % UInt64(guestPorts.count))]
                let dst: UInt32 = rng.next() % 3 == 0 ? [7000, 7001, 7002][Int(rng.next() % 3)] : hostPorts[Int(rng.next() % UInt64(hostPorts.count))]
                let key = ConnectionKey(localPort: dst, peerPort: src)
                if dst == honestPort && src == 5000 { continue }  // The honest connection is not the storm's.
                let op = VsockOp(rawValue: UInt16([1, 2, 3, 4, 5, 5, 5, 6, 6, 7, 0, 9][Int(rng.next() % 12)]))
                let sentHere = sent[key] ?? 0
                let fwd: UInt32
                switch rng.next() % 5 {
                case 0: fwd = UInt32(truncatingIfNeeded: rng.next())
                case 1: fwd = sentHere &- UInt32(rng.next() % 100)
                default: fwd = sentHere
                }
                let buf: UInt32 = [0, 1, 4096, 256 << 10, UInt32.max][Int(rng.next() % 5)]
                let len = op == .rw ? Int(rng.next() % 3 == 0 ? rng.next() % 65_537 : rng.next() % 512) : 0
                var h = VsockHeader.fromGuest(op, src: src, dst: dst, len: UInt32(len), flags: UInt32(rng.next() % 4), bufAlloc: buf, fwdCnt: fwd)
                if rng.next() % 50 == 0 { h.srcCID = rng.next() % 5 }
                if rng.next() % 50 == 0 { h.type = UInt16(rng.next() % 3) }
                let before = muxer.connections[key]
                muxer.receive(TxPacket(header: h, payload: [UInt8](repeating: 0x5a, count: len)), now: now)
                if let c = muxer.connections[key], c === before || before == nil, c.state != .killed, h.srcCID == 3, h.type == 1 {
                    credit[key] = (buf, fwd)
                }
                if muxer.connections[key] == nil { credit[key] = nil; sent[key] = nil }
            case 6:
                // A host client connects (to any guest port) or a host listener appears/disappears.
                if rng.next() % 2 == 0, let p = muxer.connectFromHost(stream: FakeStream(), guestPort: guestPorts[Int(rng.next() % 4)], prefix: [1, 2, 3], now: now) {
                    hostPorts.append(p)
                    if hostPorts.count > 64 { hostPorts.removeFirst(hostPorts.count - 64) }
                } else if rng.next() % 2 == 0 {
                    listening.formSymmetricDifference([7002])
                }
            case 7:
                // Host streams: data, blocking, draining, half-close, hang-up.
                for c in muxer.connections.values where c !== muxer.connections[ConnectionKey(localPort: honestPort, peerPort: 5000)] {
                    guard let s = c.stream as? FakeStream else { continue }
                    switch rng.next() % 6 {
                    case 0: s.incoming += [UInt8](repeating: 0x33, count: Int(rng.next() % 100_000)); muxer.hostReadable(c.key, hangup: false)
                    case 1: s.writeLimit = 0
                    case 2: s.writeLimit = nil; s.written.removeAll(keepingCapacity: true); muxer.hostWritable(c.key)
                    case 3: s.eof = true; muxer.hostReadable(c.key, hangup: false)
                    case 4: s.eof = true; muxer.hostReadable(c.key, hangup: true, now: now)
                    default: break
                    }
                }
            default:
                // The guest posts rx buffers of random room; the backend fills them.
                var buf = [UInt8](repeating: 0, count: 65_536)
                for _ in 0..<Int(rng.next() % 40) {
                    let room = Int(rng.next() % 3 == 0 ? rng.next() % 65_537 : rng.next() % 4096)
                    guard let (h, n) = buf.withUnsafeMutableBytes({ muxer.nextPacket(payload: UnsafeMutableRawBufferPointer(rebasing: $0[0..<room]), now: now) }) else { break }
                    XCTAssertLessThanOrEqual(n, room, "step \(step): payload larger than the buffer")
                    XCTAssertEqual(h.srcCID, 2); XCTAssertEqual(h.dstCID, 3)
                    let key = ConnectionKey(localPort: h.srcPort, peerPort: h.dstPort)
                    if h.op == .rst { rstSeen += 1; credit[key] = nil; sent[key] = nil; continue }
                    guard h.op == .rw else { continue }
                    rwSent += 1
                    let total = (sent[key] ?? 0) &+ UInt32(n)
                    sent[key] = total
                    if let c = credit[key] {
                        XCTAssertLessThanOrEqual(total &- c.fwdCnt, c.bufAlloc,
                                                 "step \(step): \(key) sent \(total) with the guest's fwd_cnt \(c.fwdCnt), buf_alloc \(c.bufAlloc)")
                    }
                }
            }
            _ = muxer.expire(now: now)
            XCTAssertLessThanOrEqual(muxer.connections.count, 16, "step \(step)")
            for c in muxer.connections.values {
                XCTAssertLessThanOrEqual(c.bufferedToHost, Int(VsockLimits.connBufferSize), "step \(step): \(c.key) buffers \(c.bufferedToHost)")
            }
        }
        print("guest storm: \(rwSent) RW packets sent, \(rstSeen) RSTs, \(muxer.connections.count) connections left, \(muxer.stats)")
        XCTAssertGreaterThan(rwSent, 100)
        // Whatever the guest did, no hung-up host stream outlives its 2 s (testHungUpHostStreamsEndWithoutTheGuestsCredit).
        let end: UInt64 = 60_000 * 1_000_000 + 2_001_000_000
        _ = muxer.expire(now: end)
        _ = muxer.drain(now: end)
        XCTAssertEqual(muxer.connections.values.filter(\.hostHungUp).count, 0, "hung-up host streams outlive their deadline")
        // The honest connection still carries data both ways.
        let key = ConnectionKey(localPort: honestPort, peerPort: 5000)
        guard muxer.connections[key] != nil else { return XCTFail("the honest connection was closed by other connections' traffic") }
        honest.written = []
        muxer.receive(TxPacket(header: .fromGuest(.rw, src: 5000, dst: honestPort, len: 2, fwdCnt: sent[key] ?? 0), payload: [7, 8]), now: 0)
        XCTAssertEqual(honest.written, [7, 8])
        honest.incoming = [9]
        muxer.hostReadable(key, hangup: false)
        XCTAssertTrue(muxer.drain().contains { $0.0.op == .rw && $0.0.srcPort == honestPort && $0.1 == [9] })
    }

    /// Attack: accept host connections (RESPONSE) advertising no receive buffer (`buf_alloc` 0),
    /// never grant credit, and wait for the host clients to hang up. The backend forwards a hung
    /// up host stream's last bytes and its EOF only as credit allows, and sent SHUTDOWN only after
    /// that EOF; without credit it never read the EOF, so the connection stayed established with
    /// no deadline, forever: each one a table slot and a host descriptor. Four of them filled a
    /// four-slot table and every later host client was refused for good (the storm above left one
    /// such connection behind). Rule (docs/vsock.md, "Closing": SHUTDOWN(RCV|SEND), then RST after
    /// 2 s at the latest): the kernel's virtio_transport_close() sends SHUTDOWN at close and
    /// schedules close_work, which resets the connection after VSOCK_CLOSE_TIMEOUT whether or not
    /// the peer ever took the data (virtio_transport_close_timeout() → virtio_transport_reset());
    /// Firecracker arms CONN_SHUTDOWN_TIMEOUT_MS the same way. A hung-up host stream gets 2 s from
    /// its hang-up, credit or not; then RST, and the slot is free.
    func testHungUpHostStreamsEndWithoutTheGuestsCredit() throws {
        let muxer = VsockMuxer(guestCID: 3, maxConnections: 4) { _ in nil }
        var clients: [(FakeStream, UInt32)] = []
        for _ in 0..<4 {
            let s = FakeStream()
            s.incoming = Array("a request the guest never takes".utf8)
            let port = try XCTUnwrap(muxer.connectFromHost(stream: s, guestPort: 5000, prefix: [], now: 0))
            clients.append((s, port))
        }
        _ = muxer.drain()
        for (_, port) in clients {
            muxer.receive(TxPacket(header: .fromGuest(.response, src: 5000, dst: port, bufAlloc: 0), payload: []), now: 0)
        }
        for (s, port) in clients {
            s.eof = true
            muxer.hostReadable(ConnectionKey(localPort: port, peerPort: 5000), hangup: true, now: 1_000_000)
        }
        let out = muxer.drain(now: 1_000_000)
        XCTAssertFalse(out.contains { $0.0.op == .rw }, "no credit, no data")
        XCTAssertNil(muxer.connectFromHost(stream: FakeStream(), guestPort: 5000, prefix: [], now: 1_000_000), "the table is full")
        // Not before 2 s after the hang-up; then each connection is reset and its slot freed.
        _ = muxer.expire(now: 1_900_000_000)
        XCTAssertEqual(muxer.connections.count, 4, "reset before its 2 s")
        let later: UInt64 = 2_001_000_000
        _ = muxer.expire(now: later)
        let resets = muxer.drain(now: later).filter { $0.0.op == .rst }
        XCTAssertEqual(Set(resets.map(\.0.srcPort)), Set(clients.map(\.1)), "hung-up connections never reset")
        XCTAssertTrue(muxer.connections.isEmpty, "\(muxer.connections.count) hung-up connections still hold the table")
        XCTAssertTrue(clients.allSatisfy { $0.0.closed })
        XCTAssertNotNil(muxer.connectFromHost(stream: FakeStream(), guestPort: 5000, prefix: [], now: later), "a new host client is refused")
    }
}

/// A hostile frontend on the real backend loop's control socket, round 3 (the loop of
/// HostileHostClientTests.Running).
final class FrontendLoopRound3Tests: XCTestCase {
    func frontend(_ r: HostileHostClientTests.Running) -> Int32 {
        let fe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un.make(r.dir + "/vu")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fe, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(rc, 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fe, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fe
    }

    func openDescriptors() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while readdir(dir) != nil { n += 1 }
        return n
    }

    /// Attack (fails; kept): frontends that hang up in the middle of a message, each with eight
    /// memfds riding on a SET_MEM_TABLE whose payload never completes, 40 of them one after the
    /// other (a crashing, restarting QEMU); then one that pipelines 20,000 GET_FEATURES and never
    /// reads a reply. Rule (vhost-user.rst: one frontend per socket, the session is the
    /// connection): a message cut short ends only that session, its descriptors are closed (none
    /// leak), the next frontend is served at once; a frontend that does not read its replies is
    /// dropped when a reply send blocks for `vhostUserReadTimeoutSeconds` (2 s), so the backend's
    /// only thread is held at most that long; then a new frontend's GET_FEATURES is answered.
    func testFrontendsHangingUpMidMessageOrNeverReadingCostNothing() throws {
        let r = try HostileHostClientTests.Running("r3fe")
        defer { r.stop() }
        let before = openDescriptors()
        var table: [UInt8] = []
        table.appendLE(UInt32(8)); table.appendLE(UInt32(0))
        for i in 0..<8 { table.appendLE(UInt64(i) << 20); table.appendLE(UInt64(1 << 20)); table.appendLE(0x7000_0000_0000 + (UInt64(i) << 20)); table.appendLE(UInt64(0)) }
        var cut = 0
        for _ in 0..<40 {
            let fe = frontend(r)
            let fds = (0..<8).map { _ in egv_memfd("ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL) }
            let msg = VhostUserHeader(request: .setMemTable, flags: 1 | 8, size: UInt32(table.count)).bytes + table.prefix(100)
            // A frontend that comes before the backend saw the last one leave is refused (one at a
            // time); its send may then fail. Either way its descriptors must not stay open.
            if msg.withUnsafeBytes({ egv_send_with_fds(fe, $0.baseAddress, msg.count, fds, Int32(fds.count)) }) == msg.count { cut += 1 }
            fds.forEach { close($0) }
            close(fe)
        }
        let features = VhostUserHeader(request: .getFeatures, flags: 1, size: 0).bytes
        /// Whether a new frontend's GET_FEATURES is answered (false: refused, another one is active).
        func served() -> Bool {
            let fe = frontend(r)
            defer { close(fe) }
            guard features.withUnsafeBytes({ send(fe, $0.baseAddress, features.count, Int32(MSG_NOSIGNAL)) }) == features.count else { return false }
            var reply = [UInt8](repeating: 0, count: 20)
            return recv(fe, &reply, 20, Int32(MSG_WAITALL)) == 20
        }
        // A frontend that never reads: its replies fill the socket, the backend's send times out.
        // It first makes sure it is the session (one frontend at a time: the backend may not have
        // seen the last cut-short one leave yet, and refuses a second).
        var flooder: Int32 = -1
        for _ in 0..<100 {
            let fe = frontend(r)
            var reply = [UInt8](repeating: 0, count: 20)
            if features.withUnsafeBytes({ send(fe, $0.baseAddress, features.count, Int32(MSG_NOSIGNAL)) }) == features.count,
               recv(fe, &reply, 20, Int32(MSG_WAITALL)) == 20 { flooder = fe; break }
            close(fe)
            usleep(20_000)
        }
        XCTAssertGreaterThanOrEqual(flooder, 0, "no frontend served after the cut-short ones")
        var size: Int32 = 4 << 20
        setsockopt(flooder, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
        let flood = [UInt8]((0..<20_000).flatMap { _ in features })
        let t0 = Date()
        var off = 0
        while off < flood.count, Date().timeIntervalSince(t0) < 8 {
            let n = flood.withUnsafeBytes { send(flooder, $0.baseAddress! + off, flood.count - off, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { off += n } else if errno == EAGAIN { usleep(10_000) } else { break }
        }
        XCTAssertGreaterThan(off, 200_000, "the flooder's requests were not taken (its replies would not fill its socket)")
        // The next frontend is served within the send timeout (plus margin).
        var ok = false
        while !ok && Date().timeIntervalSince(t0) < 6 {
            ok = served()
            if !ok { usleep(200_000) }
        }
        let waited = Date().timeIntervalSince(t0)
        XCTAssertGreaterThan(cut, 0)
        print("frontends: 40 hung up mid-message (\(cut) sent theirs); a non-reading flooder (\(off / 12) requests) held the backend; a new frontend served after \(String(format: "%.1f", waited)) s")
        XCTAssertTrue(ok, "no new frontend served \(Int(waited)) s after a flooder stopped reading")
        close(flooder)
        usleep(300_000)
        XCTAssertLessThanOrEqual(openDescriptors(), before, "descriptors of cut-short messages leaked")
    }
}
