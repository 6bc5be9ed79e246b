// SPDX-License-Identifier: Apache-2.0
//
// Review round 7: the per-frame deadline (`FrameDecoder.framesEnded`) restarts the clock where a
// frame ends. Failed attacks kept: a hostile peer cannot use that restart to hold a partial
// frame (a body reservation, a connection slot) past the deadlines of docs/protocol.md, counted
// from the partial frame's own first byte.

import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class Review7PeerTests: XCTestCase {
    static let limits = PortLimits(maximumBodySize: 1 << 20, headerDeadline: .milliseconds(500), frameDeadline: .seconds(1),
                                   idleTimeout: .seconds(60), writeStallTimeout: .seconds(60))

    /// A complete frame and, in the same write, the header and 1,000 body bytes of a 200 KiB
    /// one; then nothing. The partial body (reserved) is cut at the frame deadline from its own
    /// first byte (the write), never later, and its reservation is given back.
    func testAPartialBodyRightBehindACompleteFrameEndsAtItsFrameDeadline() throws {
        let h = try PortHarness(limits: Self.limits)
        let peer = try XCTUnwrap(SocketPeer(path: h.path))
        let bytes = PeersRound7Tests.frame(.status, id: 1, bodyLength: 100)
            + PeersRound7Tests.header(.authorizeModule, id: 2, length: 200 << 10) + [UInt8](repeating: 0x5a, count: 1000)
        let t0 = now()
        XCTAssertTrue(peer.writeAll(bytes))
        XCTAssertEqual(peer.readFrame(timeout: 0.5)?.requestID, 1, "the complete frame is answered")
        XCTAssertTrue(peer.closedByPeer(timeout: 3), "a partial body held for 3 s against a 1 s frame deadline")
        let took = now() - t0
        print("partial body behind a complete frame: closed after \(String(format: "%.2f", took)) s (frame deadline 1 s, checked every 0.25 s)")
        XCTAssertLessThan(took, 1.6, "the partial body's clock did not start at its first byte")
        var waited = 0.0
        while h.budget.inUse != 0 && waited < 2 { usleep(50_000); waited += 0.05 }
        XCTAssertEqual(h.budget.inUse, 0, "the partial body's reservation outlived its connection")
    }

    /// An oversized frame refused at its header (`frame-too-large`) and discarded to its end, the
    /// next frame's first header byte in the same write as the discard's last bytes, then the
    /// rest of that header one byte every 100 ms (1.9 s). The header deadline runs from that
    /// first byte: the connection is closed before the header completes.
    func testAHeaderTricklingRightAfterADiscardedFrameEndsAtTheHeaderDeadline() throws {
        let h = try PortHarness(limits: Self.limits)
        let peer = try XCTUnwrap(SocketPeer(path: h.path))
        let tooLarge = 2 << 20
        let next = PeersRound7Tests.header(.status, id: 2, length: 0)
        XCTAssertTrue(peer.writeAll(PeersRound7Tests.header(.authorizeModule, id: 1, length: tooLarge)))
        XCTAssertTrue(peer.writeAll([UInt8](repeating: 0x5a, count: tooLarge - 4096)))
        let t0 = now()
        XCTAssertTrue(peer.writeAll([UInt8](repeating: 0x5a, count: 4096) + next.prefix(1)))
        var sent = 1
        while sent < next.count && !peer.closedByPeer() {
            usleep(100_000)
            guard peer.writeAll([next[sent]]) else { break }
            sent += 1
        }
        XCTAssertTrue(peer.closedByPeer(timeout: 1), "a header trickled over 1.9 s against a 0.5 s header deadline was not cut")
        let took = now() - t0
        print("header trickling behind a discarded frame: closed after \(String(format: "%.2f", took)) s, \(sent) of \(next.count) header bytes sent")
        XCTAssertLessThan(sent, next.count, "the whole header was taken after its deadline")
        XCTAssertLessThan(took, 1.2, "the header's clock did not start at its first byte")
        XCTAssertEqual(h.budget.inUse, 0)
    }
}
