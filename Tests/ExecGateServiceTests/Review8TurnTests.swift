// SPDX-License-Identifier: Apache-2.0
//
// Review 8 (white-box, the turns of 998bb4c/ff80967): failed attacks kept.

import ExecGateTransport
import NIOConcurrencyHelpers
import NIOCore
import XCTest

final class Review8TurnTests: XCTestCase {
    /// Failed attack: a peer whose large body has the turn tries to keep it past 10 s (trust.md
    /// "Ports": "until its body is complete, its connection closes, or 10 s after the turn began,
    /// whatever the holder does meanwhile") by having its retry admitted, sending part of the body,
    /// having it refused mid-way (the partial bytes released: "a turn's body refused mid-way
    /// keeps the turn") and retrying, over and over, while an honest body waits behind it. The
    /// turn still ends no later than 10 s after it began (here sooner: the peer's admitted retries
    /// are no refusals, so 2 s after its last refusal its turn is skipped as stale), the honest
    /// body is admitted then, and the peer's next header is refused for the room kept for the
    /// honest body, its place behind it.
    func testATurnCannotBeRenewedPastItsTenSecondsByRetriesRefusedMidWay() throws {
        let now = NIOLockedValueBox<UInt64>(0)
        let s: UInt64 = 1_000_000_000
        let b = BufferBudget(total: 20, smallFrameSize: 2, smallReserve: 8, turn: .seconds(10), retryWindow: .seconds(2),
                             clock: { now.withLockedValue { $0 } })
        XCTAssertEqual(b.largeLimit, 12)
        let other = BudgetHolder(), peer = BudgetHolder(), honest = BudgetHolder()
        XCTAssertNil(b.check(10, holder: other))
        XCTAssertNil(b.reserve(10, ofBody: 10, holder: other))
        XCTAssertNotNil(b.check(10, holder: peer), "refused: 10 of 12 held")  // the peer queues first: its turn begins at 0
        now.withLockedValue { $0 = 1 * s }
        XCTAssertNotNil(b.check(10, holder: honest), "refused: behind the peer")
        b.release(10, ofBody: 10, holder: other)  // the body ahead judged
        var t: UInt64 = 1 * s
        var admittedAt: UInt64?
        while t <= 10 * s + s / 10 {
            now.withLockedValue { $0 = t }
            // The peer's retry (admitted while it has the turn), part of the body, dropped.
            if b.check(10, holder: peer) == nil {
                XCTAssertNil(b.reserve(5, ofBody: 10, holder: peer))
                b.release(5, ofBody: 10, holder: peer)
            }
            // The honest body keeps its place by retrying.
            if b.check(10, holder: honest) == nil { admittedAt = t; break }
            t += s / 10
        }
        let at = try XCTUnwrap(admittedAt, "the honest body was never admitted")
        XCTAssertLessThanOrEqual(at, 10 * s + s / 10, "admitted at most 10 s after the peer's turn began")
        XCTAssertNotNil(b.check(10, holder: peer), "the peer's header is refused: room kept for the honest body")
        XCTAssertNil(b.reserve(10, ofBody: 10, holder: honest))
        XCTAssertEqual(b.turns.waiting, 1, "the peer queued behind")
        b.release(10, ofBody: 10, holder: honest)
        XCTAssertEqual(b.usage.small + b.usage.large, 0, "every byte given back")
    }
}
