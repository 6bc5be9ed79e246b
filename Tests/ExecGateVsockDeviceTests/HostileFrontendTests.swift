// SPDX-License-Identifier: Apache-2.0
//
// A hostile vhost-user frontend on the backend's control socket (adversarial review, round 9).
// Each test is one attack; the comment names the rule the backend follows and where it comes from:
// QEMU docs/interop/vhost-user.rst, virtio 1.2 § 2.7 (split virtqueue), and the kernel's own vhost
// backend (drivers/vhost/vhost.c, vhost_vring_ioctl() / vhost_vring_set_addr(), 6.1–6.12), which
// QEMU's vhost-user protocol mirrors message for message.

import CExecGateVsockSys
import Foundation
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

final class HostileFrontendTests: XCTestCase {
    func msg(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = []) -> VhostUserMessage {
        VhostUserMessage(header: VhostUserHeader(request: r, flags: 1 | 8, size: UInt32(payload.count)), payload: payload, fds: fds)
    }


    /// The REPLY_ACK status of `m` (0 = done, non-zero = refused).
    func ack(_ s: VhostUserSession, _ m: VhostUserMessage, file: StaticString = #filePath, line: UInt = #line) -> UInt64? {
        guard let r = s.handle(m), r.count == 20 else { XCTFail("no REPLY_ACK for \(m.header.request)", file: file, line: line); return nil }
        return Array(r.dropFirst(12)).u64(0)
    }

    static let uva: UInt64 = 0x7000_0000_0000

    /// A session with REPLY_ACK, VIRTIO_F_VERSION_1 acked, and 1 MiB of sealed guest RAM at `uva` (as QEMU's memory-backend-memfd).
    func session() throws -> VhostUserSession {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        let fd = egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var table = le32(1, 0)
        table += le(0); table += le(1 << 20); table += le(HostileFrontendTests.uva); table += le(0)
        XCTAssertEqual(ack(s, msg(.setMemTable, table, fds: [fd])), 0)
        // Without F_PROTOCOL_FEATURES: every ring enabled, so a kicked ring runs (vhost-user.rst
        // "Ring states"; tests that need SET_VRING_ENABLE ack the feature again).
        XCTAssertEqual(ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        return s
    }

    func addr(_ q: UInt32, desc: UInt64, avail: UInt64, used: UInt64, flags: UInt32 = 0) -> [UInt8] {
        var a = le32(q, flags)
        a += le(HostileFrontendTests.uva + desc); a += le(HostileFrontendTests.uva + used); a += le(HostileFrontendTests.uva + avail); a += le(0)
        return a
    }

    /// Whether `fd` (a pipe's write end) has lost its read end (the backend closed its copy).
    func readerClosed(_ writeEnd: Int32) -> Bool {
        var p = pollfd(fd: writeEnd, events: Int16(POLLOUT), revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLERR) != 0
    }

    /// Attack: SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR with a descriptor that is not an
    /// eventfd. A pipe whose writer is gone (or a regular file) polls readable forever: as a kick fd
    /// it would spin the backend's only thread at 100% CPU on one message, for nothing the frontend
    /// pays. Rule: the ring's notifiers are eventfds (vhost-user.rst, SET_VRING_KICK/CALL/ERR: "the
    /// file descriptor ... is an eventfd"); the kernel's vhost takes them with eventfd_fget() /
    /// eventfd_ctx_fdget() and fails the ioctl with -EINVAL otherwise (vhost_vring_ioctl(),
    /// drivers/vhost/vhost.c). Any other kind is refused and closed; the ring does not start.
    func testRingNotifiersMustBeEventfds() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000))), 0)

        var p: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&p), 0)
        defer { close(p[1]) }
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(1), fds: [p[0]])), 0, "a pipe is no eventfd")
        XCTAssertFalse(s.isLive(1), "the ring did not start on a refused kick")
        XCTAssertEqual(s.kickFd(1), -1)
        XCTAssertTrue(readerClosed(p[1]), "the refused descriptor was closed")

        let file = egv_memfd("not-an-eventfd", 4096, 0)
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(1), fds: [file])), 0, "a file is no eventfd")
        XCTAssertFalse(s.isLive(1))

        var sv: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv), 0)
        close(sv[1])
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(1), fds: [sv[0]])), 0, "a socket is no eventfd")
        XCTAssertFalse(s.isLive(1))

        var q: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&q), 0)
        defer { close(q[1]) }
        XCTAssertNotEqual(ack(s, msg(.setVringCall, le(1), fds: [q[0]])), 0, "call: a pipe is no eventfd")
        XCTAssertTrue(readerClosed(q[1]))
        var r: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&r), 0)
        defer { close(r[1]) }
        XCTAssertNotEqual(ack(s, msg(.setVringErr, le(1), fds: [r[0]])), 0, "err: a pipe is no eventfd")
        XCTAssertTrue(readerClosed(r[1]))

        // Control: eventfds are taken and the ring starts.
        XCTAssertEqual(ack(s, msg(.setVringCall, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertEqual(ack(s, msg(.setVringErr, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertTrue(s.isLive(1))
        XCTAssertGreaterThanOrEqual(s.kickFd(1), 0)
        s.closeAll()
    }

    /// Attack: vring addresses that break the split virtqueue's alignment (descriptor table 16,
    /// available ring 2, used ring 4: virtio 1.2 § 2.7, "Alignment" table) and SET_VRING_ADDR flags
    /// asking for used-ring logging, which this backend never offered (no VHOST_F_LOG_ALL). Misaligned
    /// rings make every `used.idx` store and `avail.idx` load an unaligned atomic (undefined in C,
    /// torn across a cache line). Rule: vhost_vring_set_addr() (drivers/vhost/vhost.c) fails with
    /// -EINVAL on avail & 1 or used & 3 and with -EOPNOTSUPP on flags other than VHOST_VRING_F_LOG;
    /// rust-vmm virtio-queue's Queue::is_valid() refuses desc & 0xf, avail & 1, used & 3. Refused
    /// here at SET_VRING_ADDR, before any ring is configured.
    func testVringAddressesMustBeAlignedAndUnlogged() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(1, desc: 8, avail: 0x1000, used: 0x2000))), 0, "descriptor table not 16-aligned")
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1001, used: 0x2000))), 0, "avail ring not 2-aligned")
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2002))), 0, "used ring not 4-aligned")
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000, flags: 1))), 0, "used-ring logging")
        XCTAssertNotEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000, flags: 0x8000_0000))), 0, "unknown flag")
        // None of them was stored: starting the ring finds no addresses.
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(1 | 0x100))), 0)
        XCTAssertFalse(s.isLive(1))
        // Control: the aligned form starts the ring.
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1002 - 2, used: 0x2004 - 4))), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1 | 0x100))), 0)
        XCTAssertTrue(s.isLive(1))
        s.closeAll()
    }

    /// Attack: SET_VRING_NUM / SET_VRING_BASE on a running ring (resize or rewind it under the
    /// guest). Rule: rings are started by SET_VRING_KICK and stopped by GET_VRING_BASE
    /// (vhost-user.rst, "Starting and stopping rings"); the kernel refuses both on an active ring
    /// with -EBUSY ("Resizing ring with an active backend? You don't want to do that.",
    /// vhost_vring_set_num() and VHOST_SET_VRING_BASE in vhost_vring_ioctl()). Refused; after
    /// GET_VRING_BASE they are taken again.
    func testRingSizeAndBaseAreFixedWhileTheRingRuns() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000))), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1 | 0x100))), 0)
        XCTAssertTrue(s.isLive(1))
        XCTAssertNotEqual(ack(s, msg(.setVringNum, le32(1, 256))), 0, "resize while running")
        XCTAssertNotEqual(ack(s, msg(.setVringBase, le32(1, 7))), 0, "rewind while running")
        XCTAssertTrue(s.isLive(1), "the running ring is untouched")
        XCTAssertEqual(s.queues[1].size, 16)
        XCTAssertEqual(s.queues[1].lastAvailIndex, 0)
        // A new memory table re-translates the running ring at its own size.
        let fd = egv_memfd("guest-ram-2", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        var table = le32(1, 0)
        table += le(0); table += le(1 << 20); table += le(HostileFrontendTests.uva); table += le(0)
        XCTAssertEqual(ack(s, msg(.setMemTable, table, fds: [fd])), 0)
        XCTAssertEqual(s.queues[1].size, 16)
        // Stopped: both are taken, and the next start uses them.
        _ = s.handle(msg(.getVringBase, le32(1, 0)))
        XCTAssertFalse(s.isLive(1))
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 256))), 0)
        XCTAssertEqual(ack(s, msg(.setVringBase, le32(1, 7))), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1 | 0x100))), 0)
        XCTAssertEqual(s.queues[1].size, 256)
        XCTAssertEqual(s.queues[1].lastAvailIndex, 7)
        s.closeAll()
    }

    /// Attack: a kick eventfd in semaphore mode (EFD_SEMAPHORE). The backend drains a kick with one
    /// read(2); in semaphore mode that read takes 1 off the counter, so one write of 2^64 − 2 by the
    /// frontend keeps the fd readable for 2^64 − 2 turns of the loop: a spin bought with one
    /// syscall. Rule: ring notifiers are counter-mode eventfds: QEMU's event notifiers are
    /// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) (util/event_notifier-posix.c), and the kernel's vhost
    /// never read(2)s a kick (vhost_poll_wakeup() on the wait queue), so only a backend that reads
    /// must refuse the mode (eventfd(2): "EFD_SEMAPHORE ... read(2) returns 8 bytes containing the
    /// value 1, and the counter's value is decremented by 1"). Linux shows the mode in
    /// /proc/self/fdinfo ("eventfd-semaphore:", since 6.6); a kernel that does not cannot be asked.
    func testKickEventfdInSemaphoreModeIsRefused() throws {
        let sem = egv_eventfd_semaphore()
        XCTAssertGreaterThanOrEqual(sem, 0)
        let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(sem)", encoding: .utf8)) ?? ""
        guard info.contains("eventfd-semaphore:") else {
            close(sem)
            throw XCTSkip("this kernel's fdinfo does not show the eventfd mode (Linux < 6.6)")
        }
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000))), 0)
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(1), fds: [sem])), 0, "a semaphore-mode kick")
        XCTAssertFalse(s.isLive(1))
        let semCall = egv_eventfd_semaphore()
        XCTAssertNotEqual(ack(s, msg(.setVringCall, le(1), fds: [semCall])), 0, "a semaphore-mode call")
        // Control: counter mode is taken.
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertTrue(s.isLive(1))
        s.closeAll()
    }

    /// Attack (fails; regression test): SET_MEM_TABLE regions whose arithmetic wraps or runs past
    /// what can be mapped, and descriptors of the wrong kind. Rule: vhost-user.rst "Memory region
    /// description" gives guest_phys_addr, memory_size, userspace_addr and mmap_offset as u64s; the
    /// kernel refuses a region whose last address wraps (vhost_set_memory() adds
    /// [gpa, gpa + size − 1]; vhost_iotlb_add_range_ctx(), drivers/vhost/iotlb.c: last < start →
    /// -EFAULT). Here each of [gpa, gpa+size), [uva, uva+size) and size+offset must not overflow,
    /// the size must be non-zero and fit the sealed file (SIGBUS otherwise), and only a sealed
    /// memfd is mapped. Each is refused; the table maps nothing; the session lives on.
    func testMemoryTableArithmeticAndDescriptorKindsAreChecked() throws {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        func table(gpa: UInt64, size: UInt64, uva: UInt64, offset: UInt64) -> [UInt8] {
            var t = le32(1, 0)
            t += le(gpa); t += le(size); t += le(uva); t += le(offset)
            return t
        }
        func ram() -> Int32 { egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL) }
        let hostile: [(String, [UInt8])] = [
            ("gpa + size wraps", table(gpa: UInt64.max - 0xfff, size: 0x2000, uva: 0x7000_0000_0000, offset: 0)),
            ("uva + size wraps", table(gpa: 0, size: 0x2000, uva: UInt64.max - 0xfff, offset: 0)),
            ("size 0", table(gpa: 0, size: 0, uva: 0x7000_0000_0000, offset: 0)),
            ("size beyond Int", table(gpa: 0, size: 1 << 63, uva: 0x1000, offset: 0)),
            ("offset beyond Int", table(gpa: 0, size: 0x1000, uva: 0x7000_0000_0000, offset: UInt64.max)),
            ("size + offset overflow", table(gpa: 0, size: UInt64(Int.max), uva: 0, offset: 1)),
            ("past the file's end", table(gpa: 0, size: 1 << 20, uva: 0x7000_0000_0000, offset: 4096)),
        ]
        for (what, t) in hostile {
            XCTAssertNotEqual(ack(s, msg(.setMemTable, t, fds: [ram()])), 0, what)
            XCTAssertTrue(s.memory.regions.isEmpty, what)
        }
        // Descriptors of the wrong kind: a pipe, an eventfd, a socket (F_GET_SEALS fails: not shmem).
        var p: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&p), 0)
        close(p[1])
        var sv: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv), 0)
        close(sv[1])
        for (what, fd) in [("pipe", p[0]), ("eventfd", egv_eventfd()), ("socket", sv[0])] {
            XCTAssertNotEqual(ack(s, msg(.setMemTable, table(gpa: 0, size: 4096, uva: 0x7000_0000_0000, offset: 0), fds: [fd])), 0, what)
            XCTAssertTrue(s.memory.regions.isEmpty, what)
        }
        // Two regions where one is named: the extra descriptor is closed, the message refused.
        XCTAssertNotEqual(ack(s, msg(.setMemTable, table(gpa: 0, size: 4096, uva: 0x7000_0000_0000, offset: 0), fds: [ram(), ram()])), 0)
        // The session lives on: a good table maps.
        XCTAssertEqual(ack(s, msg(.setMemTable, table(gpa: 0, size: 1 << 20, uva: 0x7000_0000_0000, offset: 0), fds: [ram()])), 0)
        XCTAssertEqual(s.memory.regions.count, 1)
        s.closeAll()
    }

    /// Attack (fails; regression test): SET_MEM_TABLE while the rings run, with a table that no
    /// longer holds them, then GET_VRING_BASE and kicks. Rule: a table that would leave a running
    /// ring outside guest memory is refused whole, as the kernel's vhost_set_memory() refuses it
    /// (memory_access_ok() on every running ring before the swap, -EFAULT, the old table stays):
    /// the ring keeps running on the memory in use, never on a stale pointer (round 3 refuses
    /// every bad table before touching anything: VhostUserRound3Tests); GET_VRING_BASE answers
    /// the index it reached and closes the kick fd, so later kicks reach nothing.
    func testMemoryTableSwappedUnderRunningRings() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000))), 0)
        let kick = egv_eventfd()
        let ours = dup(kick)
        defer { close(ours) }
        XCTAssertEqual(ack(s, msg(.setVringKick, le(1), fds: [kick])), 0)
        XCTAssertTrue(s.isLive(1))
        // The new table is elsewhere: the running ring's addresses are no longer guest memory.
        let fd = egv_memfd("guest-ram-2", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        var table = le32(1, 0)
        table += le(0); table += le(1 << 20); table += le(0x6000_0000_0000); table += le(0)
        XCTAssertNotEqual(ack(s, msg(.setMemTable, table, fds: [fd])), 0, "the running ring lies outside the new table")
        XCTAssertTrue(s.isLive(1), "refused whole: the ring runs on in the memory still in use")
        XCTAssertNotNil(s.memory.translate(userAddr: HostileFrontendTests.uva, length: 0x3000), "the memory in use stays mapped")
        XCTAssertNoThrow(try s.queues[1].nextAvailable())
        // GET_VRING_BASE answers and stops; the kick fd is closed, so kicks reach nothing.
        let base = try XCTUnwrap(s.handle(msg(.getVringBase, le32(1, 0))))
        XCTAssertEqual(Array(base.dropFirst(12)), le32(1, 0))
        XCTAssertEqual(s.kickFd(1), -1)
        var one: UInt64 = 1
        XCTAssertEqual(write(ours, &one, 8), 8, "the frontend's kick goes nowhere")
        XCTAssertFalse(s.isLive(1))
        s.closeAll()
    }

    /// Attack (fails; regression test): messages out of order and repeated. Rule (vhost-user.rst,
    /// "Starting and stopping rings"; the kernel's vhost_vring_set_num(): 0 < num ≤ 0xffff, a power
    /// of two; virtio 1.2 § 2.7: Queue Size ≤ 32768): a ring starts only with size and addresses
    /// inside the current memory table; SET_OWNER / RESET_OWNER may repeat (RESET_OWNER stops the
    /// rings and forgets the features); sizes 0, 65536 and 3 are refused; GET_VRING_BASE of a ring
    /// never started answers the base it was given.
    func testOutOfOrderAndRepeatedMessagesAreRefusedOrHarmless() throws {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        // Ring set-up before any memory table: taken, but the ring cannot start.
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(0, 16))), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(0, desc: 0, avail: 0x1000, used: 0x2000))), 0)
        XCTAssertNotEqual(ack(s, msg(.setVringKick, le(0), fds: [egv_eventfd()])), 0, "kick before SET_MEM_TABLE")
        XCTAssertFalse(s.isLive(0))
        for num: UInt32 in [0, 3, 65536, 1 << 31] {
            XCTAssertNotEqual(ack(s, msg(.setVringNum, le32(0, num))), 0, "size \(num)")
        }
        XCTAssertEqual(ack(s, msg(.setVringBase, le32(0, 9))), 0)
        XCTAssertEqual(Array(try XCTUnwrap(s.handle(msg(.getVringBase, le32(0, 0)))).dropFirst(12)), le32(0, 9), "a never-started ring's base")
        // Owners repeat; RESET_OWNER stops a running ring and forgets the features.
        let t = try session()
        for _ in 0..<3 { XCTAssertEqual(ack(t, msg(.setOwner)), 0) }
        XCTAssertEqual(ack(t, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        XCTAssertEqual(ack(t, msg(.setVringNum, le32(1, 16))), 0)
        XCTAssertEqual(ack(t, msg(.setVringAddr, addr(1, desc: 0, avail: 0x1000, used: 0x2000))), 0)
        XCTAssertEqual(ack(t, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertTrue(t.isLive(1))
        for _ in 0..<3 { XCTAssertEqual(ack(t, msg(.resetOwner)), 0) }
        XCTAssertFalse(t.isLive(1))
        XCTAssertEqual(t.ackedFeatures, 0)
        XCTAssertEqual(t.kickFd(1), -1)
        // And it starts again from the top (features again: RESET_OWNER left the rings disabled).
        XCTAssertEqual(ack(t, msg(.setOwner)), 0)
        XCTAssertEqual(ack(t, msg(.setVringKick, le(1), fds: [egv_eventfd()])), 0)
        XCTAssertFalse(t.isLive(1), "RESET_OWNER forgot the features but left the ring enabled")
        XCTAssertEqual(ack(t, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        XCTAssertTrue(t.isLive(1))
        s.closeAll(); t.closeAll()
    }

    /// Attack: a memory table whose regions overlap, in guest-physical or in the frontend's virtual
    /// addresses, backed by different files. The same guest address then has two meanings: a
    /// descriptor is read from whichever region is found first, while the guest (and QEMU) write
    /// the other. Rule: guest memory is one address space of disjoint regions (rust-vmm vm-memory
    /// GuestRegionCollection::from_regions: Error::MemoryRegionOverlap; QEMU sends one region per
    /// RAM block, never overlapping). Refused; nothing mapped; the session lives on.
    func testOverlappingMemoryRegionsAreRefused() throws {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        func ram() -> Int32 { egv_memfd("guest-ram", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL) }
        func table(_ regions: [(gpa: UInt64, uva: UInt64)]) -> [UInt8] {
            var t = le32(UInt32(regions.count), 0)
            for r in regions { t += le(r.gpa); t += le(1 << 20); t += le(r.uva); t += le(0) }
            return t
        }
        let gpaOverlap = table([(0, 0x7000_0000_0000), (0x8_0000, 0x7100_0000_0000)])
        XCTAssertNotEqual(ack(s, msg(.setMemTable, gpaOverlap, fds: [ram(), ram()])), 0, "guest-physical ranges overlap")
        XCTAssertTrue(s.memory.regions.isEmpty)
        let uvaOverlap = table([(0, 0x7000_0000_0000), (0x100_0000, 0x7000_000F_F000)])
        XCTAssertNotEqual(ack(s, msg(.setMemTable, uvaOverlap, fds: [ram(), ram()])), 0, "frontend virtual ranges overlap")
        XCTAssertTrue(s.memory.regions.isEmpty)
        // Control: adjacent regions are disjoint and taken.
        let adjacent = table([(0, 0x7000_0000_0000), (1 << 20, 0x7000_0010_0000)])
        XCTAssertEqual(ack(s, msg(.setMemTable, adjacent, fds: [ram(), ram()])), 0)
        XCTAssertEqual(s.memory.regions.count, 2)
        // A refused table changes nothing: the memory in use stays mapped.
        XCTAssertNotEqual(ack(s, msg(.setMemTable, gpaOverlap, fds: [ram(), ram()])), 0)
        XCTAssertEqual(s.memory.regions.count, 2)
        XCTAssertNotNil(s.memory.translate(gpa: (1 << 20) + 16, length: 16))
        s.closeAll()
    }

    /// Starts ring `q` (size 16, rings at 0/0x1000/0x2000, a fresh kick eventfd) and says whether each step was acknowledged.
    func startRing(_ s: VhostUserSession, _ q: UInt32, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(ack(s, msg(.setVringNum, le32(q, 16)), file: file, line: line), 0)
        XCTAssertEqual(ack(s, msg(.setVringAddr, addr(q, desc: 0, avail: 0x1000, used: 0x2000)), file: file, line: line), 0)
        XCTAssertEqual(ack(s, msg(.setVringKick, le(UInt64(q)), fds: [egv_eventfd()]), file: file, line: line), 0)
    }

    /// Attack (round 10): with VHOST_USER_F_PROTOCOL_FEATURES negotiated, have the backend process
    /// a ring the frontend has not enabled yet (or has disabled: a frontend pausing a queue while
    /// it rewrites its rings, e.g. before a migration or a device reset). Rule: vhost-user.rst,
    /// "Ring states": each ring is initialized stopped and disabled; SET_FEATURES without
    /// F_PROTOCOL_FEATURES enables all rings at once, with it a ring is enabled only by
    /// SET_VRING_ENABLE 1 (rust-vmm vhost-user-backend VhostUserHandler::set_features sets every
    /// vring's `enabled` to !PROTOCOL_FEATURES). The backend started a ring as enabled whatever
    /// the features, so a kicked ring was processed before SET_VRING_ENABLE.
    func testRingsStartDisabledUntilSetVringEnableWithProtocolFeatures() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))), 0)
        startRing(s, 1)
        XCTAssertFalse(s.isLive(1), "a ring was processed before SET_VRING_ENABLE 1 (protocol features negotiated)")
        XCTAssertEqual(ack(s, msg(.setVringEnable, le32(1, 1))), 0)
        XCTAssertTrue(s.isLive(1))
        XCTAssertEqual(ack(s, msg(.setVringEnable, le32(1, 0))), 0)
        XCTAssertFalse(s.isLive(1), "a disabled ring is processed")
        // Without protocol features, SET_FEATURES enables every ring at once.
        let t = try session()
        XCTAssertEqual(ack(t, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        startRing(t, 0)
        XCTAssertTrue(t.isLive(0), "without protocol features a started ring is enabled")
        s.closeAll(); t.closeAll()
    }

    /// Attack (round 10): SET_VRING_ENABLE with a value other than 0 or 1 (2, 0xffffffff), or
    /// before F_PROTOCOL_FEATURES was negotiated. Rule: vhost-user.rst, SET_VRING_ENABLE: "num
    /// field: 0 disable, 1 enable", sent only when F_PROTOCOL_FEATURES has been negotiated; the
    /// rust-vmm vhost crate's backend request handler answers any other num InvalidParam and the
    /// message without the feature InvalidOperation. The backend took any non-zero value as
    /// "enable" and took the message without the feature. Refused (REPLY_ACK non-zero), the ring's
    /// state unchanged.
    func testSetVringEnableRefusesValuesOtherThanZeroAndOne() throws {
        let s = try session()
        XCTAssertEqual(ack(s, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1 | VhostUserFeatures.protocolFeatures))), 0)
        startRing(s, 0)
        for num: UInt32 in [2, 0xffff_ffff] {
            XCTAssertNotEqual(ack(s, msg(.setVringEnable, le32(0, num))), 0, "SET_VRING_ENABLE \(num)")
            XCTAssertFalse(s.isLive(0), "SET_VRING_ENABLE \(num) enabled the ring")
        }
        XCTAssertEqual(ack(s, msg(.setVringEnable, le32(0, 1))), 0)
        XCTAssertNotEqual(ack(s, msg(.setVringEnable, le32(0, 2))), 0)
        XCTAssertTrue(s.isLive(0), "a refused SET_VRING_ENABLE changed the ring")
        // Without protocol features the message itself is refused.
        let t = try session()
        XCTAssertEqual(ack(t, msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))), 0)
        startRing(t, 0)
        XCTAssertNotEqual(ack(t, msg(.setVringEnable, le32(0, 0))), 0, "SET_VRING_ENABLE without F_PROTOCOL_FEATURES")
        XCTAssertTrue(t.isLive(0))
        s.closeAll(); t.closeAll()
    }
}
