// SPDX-License-Identifier: Apache-2.0
//
// vhost-user message parsing and the session: negotiation, GET_CONFIG, REPLY_ACK, hostile sizes,
// SET_MEM_TABLE over a real file descriptor.

import CExecGateVsockSys
import XCTest
@testable import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#endif

final class VhostUserTests: XCTestCase {
    func msg(_ r: VhostUserRequest, _ payload: [UInt8] = [], needReply: Bool = false, fds: [Int32] = []) -> VhostUserMessage {
        VhostUserMessage(header: VhostUserHeader(request: r, flags: 1 | (needReply ? 8 : 0), size: UInt32(payload.count)), payload: payload, fds: fds)
    }


    func replyPayload(_ r: [UInt8]?) throws -> [UInt8] {
        let r = try XCTUnwrap(r)
        let h = try VhostUserHeader(bytes: Array(r.prefix(12)))
        XCTAssertEqual(h.flags & 4, 4, "reply flag")
        XCTAssertEqual(Int(h.size), r.count - 12)
        return Array(r.dropFirst(12))
    }

    func testHeaderForbidsBadVersionAndOversize() {
        XCTAssertThrowsError(try VhostUserHeader(bytes: le32(1, 2, 0))) { XCTAssertEqual(($0 as? VhostUserError)?.code, .badVersion) }
        XCTAssertThrowsError(try VhostUserHeader(bytes: le32(1, 1, UInt32(VsockLimits.maxVhostUserPayload + 1)))) {
            XCTAssertEqual(($0 as? VhostUserError)?.code, .tooLarge)
        }
        XCTAssertThrowsError(try VhostUserHeader(bytes: [1, 0, 0])) { XCTAssertEqual(($0 as? VhostUserError)?.code, .truncated) }
        XCTAssertNoThrow(try VhostUserHeader(bytes: le32(1, 1, UInt32(VsockLimits.maxVhostUserPayload))))
    }

    func testNegotiationConfigAndReplyAck() throws {
        let s = VhostUserSession(guestCID: 42)
        let features = try replyPayload(s.handle(msg(.getFeatures))).u64(0)
        XCTAssertEqual(features & VhostUserFeatures.virtioVersion1, VhostUserFeatures.virtioVersion1)
        XCTAssertNotEqual(features & VhostUserFeatures.protocolFeatures, 0)
        let proto = try replyPayload(s.handle(msg(.getProtocolFeatures))).u64(0)
        XCTAssertNotEqual(proto & VhostUserFeatures.protocolConfig, 0)
        XCTAssertNil(s.handle(msg(.setProtocolFeatures, le(proto))))
        XCTAssertNil(s.handle(msg(.setOwner)))
        // GET_CONFIG: guest_cid at offset 0.
        let cfg = try replyPayload(s.handle(msg(.getConfig, le32(0, 8, 0) + [UInt8](repeating: 0, count: 8))))
        XCTAssertEqual(cfg.count, 20)
        XCTAssertEqual(cfg.u64(12), 42)
        // REPLY_ACK: success 0, refusal non-zero (dirty logging, unknown requests, features not offered).
        XCTAssertEqual(try replyPayload(s.handle(msg(.setFeatures, le(VhostUserFeatures.virtioVersion1), needReply: true))).u64(0), 0)
        XCTAssertNotEqual(try replyPayload(s.handle(msg(.setFeatures, le(1 << 28), needReply: true))).u64(0), 0)
        XCTAssertNotEqual(try replyPayload(s.handle(msg(.setLogBase, le(0), needReply: true))).u64(0), 0)
        XCTAssertNotEqual(try replyPayload(s.handle(msg(VhostUserRequest(rawValue: 9999), [], needReply: true))).u64(0), 0)
        XCTAssertNil(s.handle(msg(VhostUserRequest(rawValue: 9999))), "unknown without NEED_REPLY: ignored")
    }

    func testForbidsHostilePayloads() throws {
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        func refused(_ m: VhostUserMessage) throws -> Bool { try replyPayload(s.handle(m)).u64(0) != 0 }
        XCTAssertTrue(try refused(msg(.setVringNum, le32(7, 256), needReply: true)), "queue index out of range")
        XCTAssertTrue(try refused(msg(.setVringNum, le32(0, 300), needReply: true)), "not a power of two")
        XCTAssertTrue(try refused(msg(.setVringNum, le32(0), needReply: true)), "short payload")
        XCTAssertTrue(try refused(msg(.setVringBase, le32(0, 70000), needReply: true)))
        XCTAssertTrue(try refused(msg(.setMemTable, le32(9, 0) + [UInt8](repeating: 0, count: 9 * 32), needReply: true)), "9 regions")
        XCTAssertTrue(try refused(msg(.setMemTable, le32(1, 0) + [UInt8](repeating: 0, count: 32), needReply: true)), "no fd")
        XCTAssertTrue(try refused(msg(.getConfig, le32(250, 16, 0) + [UInt8](repeating: 0, count: 16), needReply: true)))
        XCTAssertTrue(try refused(msg(.setVringKick, le(0), needReply: true)), "kick without fd or ring")
        XCTAssertFalse(s.isLive(0))
    }

    func testErrorDescriptions() {
        XCTAssertEqual("\(VhostUserError(.tooLarge, "SET_MEM_TABLE payload of 9000 bytes"))", "vhost-user tooLarge: SET_MEM_TABLE payload of 9000 bytes")
        XCTAssertEqual("\(QueueError.descriptorOutsideMemory(gpa: 0x1000, length: 44))", "descriptor [0x1000, +44) outside guest memory")
        XCTAssertEqual("\(PacketError.payloadTooLarge(70000))", "len 70000 exceeds 65536")
        XCTAssertEqual("\(BackendError("bind /x", errno: ENOENT))", "bind /x: No such file or directory")
        XCTAssertEqual(VhostUserError(.badQueue, "a"), VhostUserError(.badQueue, "b"), "equality compares codes only")
    }

    func testMemTableMapsAndTranslates() throws {
        let fd = egv_memfd("guest-ram", 2 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let s = VhostUserSession(guestCID: 3)
        _ = s.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        var table = le32(1, 0)
        table += le(0x1000_0000); table += le(1 << 20); table += le(0x7000_0000_0000); table += le(1 << 20)  // 1 MiB at offset 1 MiB.
        XCTAssertEqual(try replyPayload(s.handle(msg(.setMemTable, table, needReply: true, fds: [fd]))).u64(0), 0)
        XCTAssertEqual(s.memory.regions.count, 1)
        // A region running past the end of its file is refused (it would SIGBUS when touched).
        let other = VhostUserSession(guestCID: 3)
        _ = other.handle(msg(.setProtocolFeatures, le(VhostUserFeatures.offeredProtocol)))
        var tooBig = le32(1, 0)
        tooBig += le(0); tooBig += le(4 << 20); tooBig += le(0x1000); tooBig += le(0)
        XCTAssertNotEqual(try replyPayload(other.handle(msg(.setMemTable, tooBig, needReply: true, fds: [dup(fd)]))).u64(0), 0)
        XCTAssertTrue(other.memory.regions.isEmpty)
        XCTAssertNotNil(s.memory.translate(gpa: 0x1000_0000 + (1 << 20) - 4, length: 4))
        XCTAssertNil(s.memory.translate(gpa: 0x1000_0000 + (1 << 20) - 4, length: 5))
        XCTAssertNotNil(s.memory.translate(userAddr: 0x7000_0000_0000, length: 16))
        // A ring placed by the frontend's addresses starts on SET_VRING_KICK (no-fd form); without
        // F_PROTOCOL_FEATURES, SET_FEATURES enabled it.
        XCTAssertNil(s.handle(msg(.setFeatures, le(VhostUserFeatures.virtioVersion1))))
        XCTAssertNil(s.handle(msg(.setVringNum, le32(1, 16))))
        var addr = le32(1, 0)
        addr += le(0x7000_0000_0000); addr += le(0x7000_0000_2000); addr += le(0x7000_0000_1000); addr += le(0)
        XCTAssertNil(s.handle(msg(.setVringAddr, addr)))
        XCTAssertEqual(try replyPayload(s.handle(msg(.setVringKick, le(1 | 0x100), needReply: true))).u64(0), 0)
        XCTAssertTrue(s.isLive(1))
        let base = try replyPayload(s.handle(msg(.getVringBase, le32(1, 0))))
        XCTAssertEqual(base, le32(1, 0))
        XCTAssertFalse(s.isLive(1))
        s.closeAll()
        XCTAssertTrue(s.memory.regions.isEmpty)
    }
}

import ExecGateServiceVM

/// The launcher's QEMU arguments for the vhost-user path (no QEMU needed).
/// Guest memory that the frontend could shrink under us (SIGBUS) is refused: only regions sealed
/// with F_SEAL_SHRINK are mapped.
final class SealedMemoryTests: XCTestCase {
    func testForbidsRegionsNotSealedAgainstShrinking() throws {
        func map(_ fd: Int32) -> Bool {
            let m = GuestMemory()
            do { try m.map(guestPhysAddr: 0, size: 1 << 20, userAddr: 0x7000_0000_0000, mmapOffset: 0, fd: fd); return m.regions.count == 1 } catch {
                XCTAssertEqual(error.code, .badMemory)
                return false
            }
        }
        // Unsealed memfd: could be shrunk later → refused.
        XCTAssertFalse(map(egv_memfd("unsealed", 1 << 20, 0)))
        // A regular file cannot be sealed at all → refused.
        let path = "/tmp/egv-unsealable-\(getpid())"
        let file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        unlink(path)
        XCTAssertEqual(ftruncate(file, 1 << 20), 0)
        XCTAssertFalse(map(file))
        // Sealed as QEMU's memory-backend-memfd does: mapped, and the frontend can no longer shrink it.
        let sealed = egv_memfd("sealed", 1 << 20, EGV_F_SEAL_SHRINK | EGV_F_SEAL_GROW | EGV_F_SEAL_SEAL)
        let keep = dup(sealed)
        defer { close(keep) }
        XCTAssertTrue(map(sealed))
        XCTAssertEqual(ftruncate(keep, 4096), -1)
        XCTAssertEqual(errno, EPERM, "F_SEAL_SHRINK: the shrink that used to SIGBUS the backend fails")
    }
}

final class LauncherVhostUserArgumentsTests: XCTestCase {
    func testMicrovmAndPCArguments() {
        var c = VMConfig(stateDir: "/run/x", kernel: "/k", initrd: "/i")
        c.memoryMiB = 256
        var a = c.qemuArguments(qemuPath: "qemu", vhost: false, vhostUser: true)
        XCTAssertEqual(a[a.firstIndex(of: "-M")! + 1], "microvm,memory-backend=mem")
        XCTAssertTrue(a.contains("memory-backend-memfd,id=mem,size=256M,share=on"))
        XCTAssertTrue(a.contains("socket,id=vu,path=/run/x/vhost-user-vsock.sock"))
        XCTAssertTrue(a.contains("vhost-user-vsock-device,chardev=vu"))
        XCTAssertEqual(c.hostAddress(vhostUser: true), "hybrid:/run/x/vsock.sock:5000")
        XCTAssertEqual(c.hostAddress(vhostUser: false), "vsock:3:5000")
        c.machine = .pc
        a = c.qemuArguments(qemuPath: "qemu", vhost: false, vhostUser: true)
        XCTAssertEqual(a[a.firstIndex(of: "-M")! + 1], "pc,memory-backend=mem")
        XCTAssertTrue(a.contains("vhost-user-vsock-pci,chardev=vu"))
        // vhost-vsock wins when present; neither: no vsock device at all.
        a = c.qemuArguments(qemuPath: "qemu", vhost: true, vhostUser: true)
        XCTAssertFalse(a.contains { $0.contains("vhost-user") })
        a = c.qemuArguments(qemuPath: "qemu", vhost: false)
        XCTAssertFalse(a.contains { $0.contains("vsock") })
    }

    func testUsesVhostUserOnlyWithABackendAndNoVhostVsock() {
        var c = VMConfig(stateDir: "/run/x", kernel: "/k", initrd: "/i")
        c.vhostVsockDevice = "/nonexistent"
        XCTAssertFalse(c.usesVhostUserVsock)
        c.vsockBackendCommand = ["/bin/execgate", "vsock-backend"]
        XCTAssertTrue(c.usesVhostUserVsock)
    }
}
