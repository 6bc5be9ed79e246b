// SPDX-License-Identifier: Apache-2.0
//
// Peers round 5 on the admin port (`execgate serve --admin-listen`, the service VM's vsock 5001):
// a keyless peer fills every admin connection with a partial maximum-size policy bundle.

import _ExecGateInternals
import ExecGateAdmin
import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PeersRound5AdminTests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    func vmHWM() -> Int {
        let text = String(decoding: (try? Fixtures.readFile("/proc/\(pid)/status")) ?? [], as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return (Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0) << 10
        }
        return 0
    }

    /// 16 admin connections (the port's limit, AdminLimits.maximumConnections) each send a
    /// policy-push header declaring a 4 MiB bundle and 1 MiB of it, then stall: the admin budget
    /// (4 MiB + the 8 MiB small-frame reserve) refuses what does not fit, a 17th connection takes
    /// the slot of one stalled holder (idle for 1 s: closed), and the frame deadline (10 s from the first byte) closes the stalled ones, after
    /// which a policy-show is answered. The VMM port answers throughout (its own budget and
    /// connections), and the serve process's peak RSS stays bounded. A failed attack: the admin
    /// port is unavailable to the operator for up to one frame deadline per round of the
    /// attacker's connections (left alone: docs/protocol.md "Connections and limits").
    func testPartialMaximumBundlesOnEveryAdminConnectionEndAtTheFrameDeadline() throws {
        dir = Fixtures.temporaryDirectory()
        let serve = ServeFixture.start(in: dir, [])
        pid = serve.pid
        let vmm = serve.vmm, admin = serve.admin
        XCTAssertTrue(serve.up, "serve did not listen")
        let before = vmHWM()
        var holders: [SocketPeer] = []
        for i in 0..<AdminLimits.maximumConnections {
            let p = try XCTUnwrap(SocketPeer(path: admin))
            var header = ByteBuffer()
            header.writeInteger(WireLimits.magic); header.writeInteger(UInt16(1)); header.writeInteger(UInt16(0x0010))
            header.writeInteger(UInt64(i)); header.writeInteger(UInt32(AdminLimits.maximumBodySize))
            XCTAssertTrue(p.writeAll(Array(buffer: header) + [UInt8](repeating: 0x41, count: 1 << 20)))
            holders.append(p)
        }
        let t0 = MonotonicClock.seconds()
        usleep(300_000)
        // A 17th connection takes the slot of a stalled holder (no byte for 1 s, no request in
        // progress, no push activated: AdminConnections.evict, peers round 6), which is closed.
        usleep(1_000_000)
        let extra = try XCTUnwrap(SocketPeer(path: admin))
        usleep(500_000)
        XCTAssertFalse(extra.closedByPeer(), "a 17th admin connection was refused though every holder was idle")
        XCTAssertEqual(holders.filter { $0.closedByPeer() }.count, 1, "not exactly one stalled holder gave its slot")
        // The VMM port is not the admin port's: status answers at once.
        let vmmPeer = try XCTUnwrap(SocketPeer(path: vmm))
        var status = ByteBuffer()
        status.writeFrame(Frame(type: .status, requestID: 1, body: ByteBuffer()))
        XCTAssertTrue(vmmPeer.writeAll(Array(buffer: status)))
        XCTAssertNotNil(vmmPeer.readFrame(timeout: 5), "the VMM port stopped answering")
        // Every stalled holder is closed by its frame deadline; then the operator gets through.
        for h in holders { XCTAssertTrue(h.closedByPeer(timeout: 30), "a stalled partial bundle held its connection past the frame deadline") }
        let freed = MonotonicClock.seconds() - t0
        let show = try XCTUnwrap(SocketPeer(path: admin))
        var frame = ByteBuffer()
        frame.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: 1, body: ByteBuffer()))
        XCTAssertTrue(show.writeAll(Array(buffer: frame)))
        let reply = try XCTUnwrap(show.readFrame(timeout: 10), "policy-show not answered after the holders were closed")
        XCTAssertEqual(reply.type.rawValue, 0x8011)
        let peak = vmHWM()
        print("admin port: 16 partial 4 MiB bundles held it \(String(format: "%.1f", freed)) s; serve peak RSS \(before >> 20) -> \(peak >> 20) MiB")
        XCTAssertLessThan(peak - before, 64 << 20, "16 partial bundles grew serve by more than the admin budget allows")
    }
}
