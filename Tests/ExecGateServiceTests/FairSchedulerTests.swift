// SPDX-License-Identifier: Apache-2.0
//
// The judging pool's order across connections (FairScheduler.swift): a connection that queued
// many requests does not make another connection's request wait behind all of them (round 13:
// a guest pipelining expensive signed modules held another guest's registration 23 s).

@testable import ExecGateService
import Foundation
import NIOCore
import NIOPosix
import XCTest

final class FairSchedulerTests: XCTestCase {
    private var pool: NIOThreadPool?
    private var group: MultiThreadedEventLoopGroup?

    override func tearDown() {
        try? pool?.syncShutdownGracefully()
        try? group?.syncShutdownGracefully()
    }

    /// A scheduler over a started one-thread pool, and an event loop for its futures (both
    /// stopped at tearDown).
    private func started() -> (FairScheduler, EventLoop) {
        let p = NIOThreadPool(numberOfThreads: 1)
        p.start()
        let g = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        pool = p
        group = g
        return (FairScheduler(pool: p, threads: 1), g.next())
    }

    func testAConnectionsRequestWaitsBehindOneRequestOfABusyConnectionNotAllOfThem() throws {
        let (fair, loop) = started()
        let a = fair.connectionKey(), b = fair.connectionKey()
        XCTAssertNotEqual(a, b)
        let order = OrderBox()
        var futures: [EventLoopFuture<Void>] = []
        // Connection a: 20 requests of 20 ms each, queued at once (its pipelined in-flight cap).
        for k in 0..<20 {
            futures.append(fair.run(a, on: loop) { usleep(20_000); order.append("a\(k)") })
        }
        // Connection b's one request, sent while a's first runs.
        futures.append(fair.run(b, on: loop) { order.append("b") })
        try EventLoopFuture.andAllSucceed(futures, on: loop).wait()
        let done = order.all
        XCTAssertEqual(done.count, 21)
        let at = try XCTUnwrap(done.firstIndex(of: "b"))
        // In arrival order b would be last (index 20); in turn it follows at most a's running
        // request and the one whose turn came before b's.
        XCTAssertLessThanOrEqual(at, 2, "\(done)")
        XCTAssertEqual(done.filter { $0 != "b" }, (0..<20).map { "a\($0)" }, "a connection's own order is kept")
        XCTAssertEqual(fair.queued, 0)
    }

    /// A closed connection's queued requests are dropped (their futures fail), not judged for
    /// nobody with a place in the rotation; its running request finishes; others are untouched.
    func testAClosedConnectionsQueuedJobsAreDropped() throws {
        let (fair, loop) = started()
        let a = fair.connectionKey(), b = fair.connectionKey()
        let order = OrderBox()
        let first = fair.run(a, on: loop) { usleep(50_000); order.append("a0") }
        let queued = (1..<20).map { k in fair.run(a, on: loop) { order.append("a\(k)") } }
        let other = fair.run(b, on: loop) { order.append("b") }
        fair.drop(a)
        XCTAssertNoThrow(try first.wait(), "the running request finishes")
        for q in queued { XCTAssertThrowsError(try q.wait(), "a dropped request fails") }
        XCTAssertNoThrow(try other.wait())
        XCTAssertEqual(order.all, ["a0", "b"])
        XCTAssertEqual(fair.queued, 0)
    }

    /// A job queued when the pool stops fails as `runIfActive` would (the connection answers
    /// `unavailable`), never hangs.
    func testJobsOfAStoppedPoolFail() throws {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let fair = FairScheduler(pool: pool, threads: 1)
        try pool.syncShutdownGracefully()
        let f: EventLoopFuture<Int> = fair.run(fair.connectionKey(), on: group.next()) { 1 }
        XCTAssertThrowsError(try f.wait())
        // Many queued at once on many connections: each fails (the stopped pool cancels them
        // inside `submit`, one after another, not one nested dispatch per job).
        let many: [EventLoopFuture<Int>] = (0..<5000).map { k in fair.run(UInt64(k % 128), on: group.next()) { k } }
        for m in many { XCTAssertThrowsError(try m.wait()) }
        XCTAssertEqual(fair.queued, 0)
    }
}

/// What the jobs did, in the order they did it.
private final class OrderBox: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var items: [String] = []
    func append(_ s: String) { lock.withLock { items.append(s) } }
    var all: [String] { lock.withLock { items } }
}
