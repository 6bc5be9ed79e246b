// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 8. First the boot storm's fairness finding (README figures: a guest's
// 4.9 MB module refused "server busy" dozens of times in a row while smaller large bodies kept the
// large-body budget full), then the attacks earlier rounds left alone.

import _ExecGateInternals
import ExecGateClient
import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Requests the harness holds "being judged" until the test lets them go: a body's budget is
/// given back when its judgment completes, so the test decides exactly when room frees.
final class HeldJudgments: @unchecked Sendable {
    private let lock = NIOLock()
    private var held: [(id: UInt64, length: Int, promise: EventLoopPromise<Frame>)] = []
    private var _seen: [UInt64] = []

    func answer(_ frame: Frame, _ loop: EventLoop) -> EventLoopFuture<Frame> {
        let p = loop.makePromise(of: Frame.self)
        lock.withLock {
            held.append((frame.requestID, frame.body.readableBytes, p))
            _seen.append(frame.requestID)
        }
        return p.futureResult
    }

    /// Request ids that reached judging, in order.
    var seen: [UInt64] { lock.withLock { _seen } }
    var count: Int { lock.withLock { held.count } }

    /// Complete the judgment of `id` (its reply: the type | 0x8000, its id).
    func finish(_ id: UInt64) {
        let p: EventLoopPromise<Frame>? = lock.withLock {
            guard let i = held.firstIndex(where: { $0.id == id }) else { return nil }
            return held.remove(at: i).promise
        }
        p?.succeed(Frame(type: MessageType(rawValue: MessageType.authorizeModule.rawValue | 0x8000), requestID: id, body: ByteBuffer()))
    }

    func finishAll() { for id in lock.withLock({ held.map(\.id) }) { finish(id) } }
}

final class PeersRound8Tests: XCTestCase {
    static func isBusy(_ f: Frame?) -> Bool {
        guard let f, f.type == .error, case .error(let e)? = try? Message(type: f.type, body: f.body) else { return false }
        return e.code == .unavailable
    }

    /// Polls `condition` every 2 ms for up to `timeout` seconds.
    @discardableResult
    static func wait(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
        let end = now() + timeout
        while !condition() {
            guard now() < end else { return false }
            usleep(2_000)
        }
        return true
    }

    /// The storm's starvation, reduced and made deterministic. The large class holds 4 MiB; four
    /// peers each have a 1 MiB body being judged (the class full); a fifth peer's 1.5 MiB body is
    /// refused "server busy". Then, round after round, one judgment completes (1 MiB free) and
    /// a peer sends another 1 MiB body before the large body's retry arrives — what a storm of
    /// guests does to a VMM backing off between retries. The 1 MiB body always fits what one
    /// completion frees and the 1.5 MiB one never does, so every retry met a full class: the
    /// large body was overtaken forever. A body refused for lack of room must be admitted before
    /// later large bodies once the bodies ahead of it are judged: within a few rounds here (the
    /// room it needs drains as two judgments complete).
    func testALargeBodyRefusedBusyIsNotOvertakenForeverBySmallerOnes() throws {
        let small = 64 << 10, largeLimit = 4 << 20
        let limits = PortLimits(maximumBodySize: largeLimit, bufferBudget: largeLimit + (256 << 10), smallFrameSize: small,
                                headerDeadline: .seconds(30), frameDeadline: .seconds(30), idleTimeout: .seconds(60), writeStallTimeout: .seconds(60))
        let budget = BufferBudget(total: limits.bufferBudget, smallFrameSize: small, smallReserve: 256 << 10)
        let judged = HeldJudgments()
        let h = try PortHarness(limits: limits, budget: budget) { frame, loop in judged.answer(frame, loop) }
        defer { judged.finishAll() }
        let competitorLength = 1 << 20, victimLength = 3 << 19
        var idle: [SocketPeer] = []
        for _ in 0..<6 { idle.append(try XCTUnwrap(SocketPeer(path: h.path))) }
        var admitted: [(peer: SocketPeer, id: UInt64)] = []
        var nextID: UInt64 = 1
        var competitorsAdmitted = 0, competitorsRefused = 0
        /// One competitor body from an idle peer: admitted (judging) or refused busy.
        func competitor() throws {
            let peer = idle.removeFirst()
            let id = nextID; nextID += 1
            let before = judged.seen.count
            XCTAssertTrue(peer.writeAll(PeersRound7Tests.frame(.authorizeModule, id: id, bodyLength: competitorLength)))
            var reply: Frame?
            XCTAssertTrue(Self.wait { judged.seen.count > before || { reply = peer.readFrame(timeout: 0.002); return reply != nil }() })
            if judged.seen.last == id {
                admitted.append((peer, id)); competitorsAdmitted += 1
            } else {
                XCTAssertTrue(Self.isBusy(reply), "competitor \(id): neither judged nor refused busy")
                idle.append(peer); competitorsRefused += 1
            }
        }
        for _ in 0..<4 { try competitor() }
        XCTAssertEqual(budget.usage.large, largeLimit, "four 1 MiB bodies fill the large class")

        let victim = try XCTUnwrap(SocketPeer(path: h.path))
        var victimID: UInt64 = 1000, refusals = 0, admittedAt: Int?
        /// The large body's attempt: true when it reached judging.
        func attempt() -> Bool {
            victimID += 1
            XCTAssertTrue(victim.writeAll(PeersRound7Tests.frame(.authorizeModule, id: victimID, bodyLength: victimLength)))
            var reply: Frame?
            XCTAssertTrue(Self.wait { judged.seen.contains(victimID) || { reply = victim.readFrame(timeout: 0.002); return reply != nil }() })
            if judged.seen.contains(victimID) { return true }
            XCTAssertTrue(Self.isBusy(reply), "the large body's attempt \(victimID): neither judged nor refused busy")
            refusals += 1
            return false
        }
        XCTAssertFalse(attempt(), "the class is full: the large body is refused")
        let rounds = 20
        for round in 1...rounds {
            // One judgment completes: its 1 MiB is given back, its peer reads its reply and sends again.
            if !admitted.isEmpty {
                let (peer, id) = admitted.removeFirst()
                let held = budget.usage.large
                judged.finish(id)
                XCTAssertTrue(Self.wait { budget.usage.large == held - competitorLength })
                XCTAssertEqual(peer.readFrame(timeout: 5)?.requestID, id)
                idle.append(peer)
            }
            try competitor()
            if attempt() { admittedAt = round; break }
        }
        print("large body behind smaller ones: \(admittedAt.map { "admitted at round \($0)" } ?? "never admitted in \(rounds) rounds"); "
              + "\(refusals) refusals; competitors admitted \(competitorsAdmitted), refused \(competitorsRefused)")
        XCTAssertNotNil(admittedAt, "a 1.5 MiB body refused 'server busy' was overtaken by 1 MiB bodies \(refusals) times in a row: "
                        + "each completion's room went to a later, smaller body")
        if let admittedAt { XCTAssertLessThanOrEqual(admittedAt, 3, "the room it needed drained after two completions") }
        XCTAssertLessThanOrEqual(budget.usage.large, largeLimit)
        judged.finishAll()
        XCTAssertTrue(Self.wait { budget.inUse == 0 }, "bytes still held: \(budget.usage)")
    }

    /// What a hostile peer can do with a turn, on the budget alone (a test clock): a turn is only
    /// for a body that fits the large class when it is empty, one place a connection, in the
    /// order refused; it keeps room from other connections' new large bodies for at most the
    /// turn's length (2 s) however the holder behaves (here: it never sends its body), never the
    /// small frames' reserve, and never refuses bodies already admitted; it ends at once when its
    /// connection goes; a waiter that has not retried within 2 s when its turn comes loses it.
    func testATurnKeepsRoomForAtMostItsLengthAndNeverTheSmallReserve() {
        let t = NIOLockedValueBox<UInt64>(1_000_000_000)
        // Large class 800, small reserve 200.
        let budget = BufferBudget(total: 1000, smallFrameSize: 100, smallReserve: 200, turn: .seconds(2), clock: { t.withLockedValue { $0 } })
        func advance(_ ms: UInt64) { t.withLockedValue { $0 += ms * 1_000_000 } }
        let (a, b, c, d, e) = (BudgetHolder(), BudgetHolder(), BudgetHolder(), BudgetHolder(), BudgetHolder())
        // 500 of the large class are held; a's 400 does not fit: a is queued and has the turn.
        XCTAssertNil(budget.check(500, holder: d)); XCTAssertNil(budget.reserve(500, ofBody: 500, holder: d))
        XCTAssertNotNil(budget.check(400, holder: a))
        XCTAssertNotNil(budget.check(900, holder: c), "larger than the class")
        XCTAssertEqual(budget.turns.waiting, 1, "a body that can never fit got a place")
        // b's 250 would fit beside what is held, not beside a's kept 400: refused, queued second.
        let refusal = budget.check(250, holder: b)
        XCTAssertTrue(refusal?.contains("number 2 in the queue") ?? false, refusal ?? "admitted")
        XCTAssertEqual(budget.turns.waiting, 2)
        // Small frames: beside the turn while there is room, and their reserve whatever it keeps.
        XCTAssertNil(budget.check(100, holder: c))
        for _ in 0..<2 { XCTAssertNil(budget.reserve(100, ofBody: 100, holder: c)) }
        let small = budget.check(100, holder: c)
        XCTAssertTrue(small?.contains("number 3 in the queue") ?? false, small ?? "admitted beyond its reserve and the turn's room")
        budget.release(100, ofBody: 100)
        XCTAssertNil(budget.check(100, holder: c), "a small frame lost its reserve to a turn")
        // A body admitted before the turn completes against the bytes held (d's chunks are not refused).
        XCTAssertNil(budget.reserve(50, ofBody: 500, holder: d))
        budget.release(50, ofBody: 500)
        // a never sends its body: 1.9 s later it still has the turn and b is refused; past 2 s the
        // turn lapses and b (which retried meanwhile) has it: its body fits.
        advance(1900)
        XCTAssertNotNil(budget.check(250, holder: b))
        advance(150)
        XCTAssertNil(budget.check(250, holder: b), "b's turn: its body fits")
        XCTAssertEqual(budget.turns.lapsed, 1, "a's turn outlived 2 s")
        XCTAssertNotNil(budget.check(400, holder: a), "a queues again, behind b, kept out by b's 250")
        XCTAssertEqual(budget.turns.waiting, 2)
        XCTAssertNil(budget.reserve(250, ofBody: 250, holder: b))
        XCTAssertEqual(budget.turns.served, 1, "b's body is complete: its turn served")
        // a has the turn now; its connection goes: the turn ends at once.
        budget.leave(a)
        XCTAssertEqual(budget.turns.waiting, 0)
        budget.release(250, ofBody: 250)
        // A waiter that stopped retrying loses its place: e is refused (the turn), c (second) never
        // retries, b (third) retries every second. When e's turn has run 2 s, c's last refusal is
        // 2 s old: skipped; b has the turn.
        XCTAssertNotNil(budget.check(400, holder: e))
        XCTAssertNotNil(budget.check(400, holder: c))
        advance(100); XCTAssertNotNil(budget.check(350, holder: b))
        advance(900); XCTAssertNotNil(budget.check(350, holder: b))
        advance(950); XCTAssertNotNil(budget.check(350, holder: b))
        advance(100)
        XCTAssertNotNil(budget.check(350, holder: b), "d's 500 leave 300")
        XCTAssertEqual(budget.turns.lapsed, 3, "e's turn lapsed and c's stale place was skipped")
        XCTAssertEqual(budget.turns.waiting, 1)
        budget.release(500, ofBody: 500)
        XCTAssertNil(budget.check(400, holder: e), "beside b's kept 350")
        XCTAssertNotNil(budget.check(500, holder: e), "not beside b's kept 350")
        XCTAssertNil(budget.check(350, holder: b))
        budget.release(100, ofBody: 100)
        XCTAssertEqual(budget.inUse, 0)
    }

    /// The same inside the small class (bodies ≤ 1 MiB, the reserve): a small body refused for lack
    /// of room gets the turn, and a smaller one is not admitted into the room it waits for.
    func testASmallBodyRefusedBusyIsNotOvertakenBySmallerOnes() {
        let budget = BufferBudget(total: 1000, smallFrameSize: 100, smallReserve: 200)
        let (a, b, d) = (BudgetHolder(), BudgetHolder(), BudgetHolder())
        // 950 held: d's 800, then 150 by other connections (one connection may hold 900: its share).
        XCTAssertNil(budget.reserve(800, ofBody: 800, holder: d))
        XCTAssertNil(budget.reserve(100, ofBody: 100)); XCTAssertNil(budget.reserve(50, ofBody: 50))
        XCTAssertNotNil(budget.check(100, holder: a), "950 held")
        budget.release(50, ofBody: 50)
        XCTAssertNotNil(budget.check(60, holder: b), "a 60-byte body took the room a 100-byte one waits for")
        XCTAssertNil(budget.check(100, holder: a))
        XCTAssertNil(budget.reserve(100, ofBody: 100, holder: a))
        XCTAssertEqual(budget.turns.served, 1)
        XCTAssertEqual(budget.turns.waiting, 1, "b waits")
        budget.leave(b)
        budget.release(800, ofBody: 800); budget.release(200, ofBody: 100)
        XCTAssertEqual(budget.inUse, 0)
    }

    /// Attack (failed; kept): keep a turn past the connection. A peer's body is refused busy and
    /// gets the turn (room kept for it from every other connection's new bodies), then the peer
    /// half-closes (shutdown(SHUT_WR)) and keeps its socket open, reading: the server answers what
    /// it read and closes the connection after the last reply (PeerEOFRelay), and the decoder's
    /// removal ends the turn. Another peer's body, refused beside the kept room, must be admitted
    /// on its next retry once the half-closed connection is gone, not 10 s later.
    func testATurnEndsWhenItsHolderHalfCloses() throws {
        let small = 64 << 10, largeLimit = 4 << 20
        let limits = PortLimits(maximumBodySize: largeLimit, bufferBudget: largeLimit + (256 << 10), smallFrameSize: small,
                                headerDeadline: .seconds(30), frameDeadline: .seconds(30), idleTimeout: .seconds(60), writeStallTimeout: .seconds(60))
        let budget = BufferBudget(total: limits.bufferBudget, smallFrameSize: small, smallReserve: 256 << 10)
        let judged = HeldJudgments()
        let h = try PortHarness(limits: limits, budget: budget) { frame, loop in judged.answer(frame, loop) }
        defer { judged.finishAll() }
        let holder = try XCTUnwrap(SocketPeer(path: h.path))
        XCTAssertTrue(holder.writeAll(PeersRound7Tests.frame(.authorizeModule, id: 1, bodyLength: 3 << 20)))
        XCTAssertTrue(Self.wait { judged.count == 1 }, "3 MiB held")
        let a = try XCTUnwrap(SocketPeer(path: h.path)), b = try XCTUnwrap(SocketPeer(path: h.path))
        XCTAssertTrue(a.writeAll(PeersRound7Tests.frame(.authorizeModule, id: 2, bodyLength: 2 << 20)))
        XCTAssertTrue(Self.isBusy(a.readFrame(timeout: 5)), "a: refused, the turn")
        XCTAssertTrue(b.writeAll(PeersRound7Tests.frame(.authorizeModule, id: 4, bodyLength: 3 << 20)))
        XCTAssertTrue(Self.isBusy(b.readFrame(timeout: 5)), "b: 3 MiB beside the 3 held: refused")
        XCTAssertEqual(budget.turns.waiting, 2)
        // a half-closes without sending its body again: its turn must end with its connection.
        shutdown(a.fd, Int32(SHUT_WR))
        XCTAssertTrue(a.closedByPeer(timeout: 5), "the server did not close the half-closed connection")
        // The 3 MiB held is judged: 4 MiB free, b's 3 MiB fits unless a's 2 MiB is still kept.
        judged.finish(1)
        XCTAssertEqual(holder.readFrame(timeout: 5)?.requestID, 1)
        XCTAssertTrue(Self.wait { budget.inUse == 0 })
        let t0 = now()
        var admitted = false
        while !admitted && now() - t0 < 3 {
            XCTAssertTrue(b.writeAll(PeersRound7Tests.frame(.authorizeModule, id: 5, bodyLength: 3 << 20)))
            if Self.wait(0.2, { judged.seen.contains(5) }) { admitted = true; break }
            _ = b.readFrame(timeout: 0.1)
        }
        print("turn after its holder half-closed: b admitted \(admitted ? "after \(String(format: "%.2f", now() - t0)) s" : "not within 3 s"); waiting \(budget.turns.waiting)")
        XCTAssertTrue(admitted, "a half-closed connection's turn kept b out")
    }

    /// A connection that waits for a turn for its module may still send small requests (a patch,
    /// a retire) meanwhile, as a VMM multiplexing one connection does. Its small body admitted
    /// while it had the turn was taken for the turn's body: the turn was "served" when the small
    /// body completed, the module's room no longer kept, and a later body took it.
    func testASmallRequestOnTheWaitingConnectionDoesNotSpendItsTurn() {
        let budget = BufferBudget(total: 1000, smallFrameSize: 100, smallReserve: 200)
        let (a, b, d) = (BudgetHolder(), BudgetHolder(), BudgetHolder())
        XCTAssertNil(budget.reserve(500, ofBody: 500, holder: d))
        XCTAssertNotNil(budget.check(400, holder: a), "a's module: refused, the turn")
        // a's patch, 50 bytes: admitted (its own turn keeps nothing from it) and complete.
        XCTAssertNil(budget.check(50, holder: a))
        XCTAssertNil(budget.reserve(50, ofBody: 50, holder: a))
        budget.release(50, ofBody: 50)
        XCTAssertEqual(budget.turns.served, 0, "a's patch spent the turn its module waits for")
        XCTAssertNotNil(budget.check(250, holder: b), "b's 250 took the room kept for a's 400")
        budget.release(500, ofBody: 500)
        XCTAssertNil(budget.check(400, holder: a))
        XCTAssertNil(budget.reserve(400, ofBody: 400, holder: a))
        XCTAssertEqual(budget.turns.served, 1)
        budget.release(400, ofBody: 400)
        budget.leave(b)
        XCTAssertEqual(budget.inUse, 0)
    }
}

