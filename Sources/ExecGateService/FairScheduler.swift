// SPDX-License-Identifier: Apache-2.0
//
// The judging pool's order across connections. A VMM speaks for its guest, one connection each
// (or a few): the pool must not serve them in arrival order, or one guest that pipelines its
// in-flight cap of expensive requests (64 signed modules of tens of MB, each about a second of a
// judging thread; re-asked as often as it likes) makes every other guest wait behind all of them
// (round 13: another guest's registration waited 23 s). Here each connection has its own FIFO and
// the pool takes the next request from the connections in turn (round robin): a request waits
// behind at most one request of each other busy connection, however many those queued. Within a
// connection the order is unchanged (replies may still come in any order: docs/protocol.md).

import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

final class FairScheduler: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`.
    private struct Job {
        let run: @Sendable () -> Void
        let cancel: @Sendable () -> Void
    }

    private let pool: NIOThreadPool
    /// Jobs handed to the pool at once: its thread count (more would only queue inside the pool,
    /// in arrival order again).
    private let slots: Int
    private let lock = NIOLock()
    private var running = 0
    private var queues: [UInt64: CircularBuffer<Job>] = [:]
    /// Connections with queued jobs, in turn order (each at most once).
    private var turns = CircularBuffer<UInt64>()
    private var nextConnection: UInt64 = 0
    private var dispatching = false
    private var again = false

    init(pool: NIOThreadPool, threads: Int) {
        self.pool = pool
        self.slots = max(1, threads)
    }

    /// A new key for a connection's queue.
    func connectionKey() -> UInt64 {
        lock.withLock {
            nextConnection &+= 1
            return nextConnection
        }
    }

    /// Runs `body` on the pool in `connection`'s turn; the future completes on `eventLoop`. Fails
    /// as `runIfActive` does when the pool is no longer active (shutdown).
    func run<T: Sendable>(_ connection: UInt64, on eventLoop: EventLoop, _ body: @escaping @Sendable () throws -> T) -> EventLoopFuture<T> {
        let promise = eventLoop.makePromise(of: T.self)
        let job = Job(run: {
            do { promise.succeed(try body()) } catch { promise.fail(error) }
        }, cancel: {
            promise.fail(NIOThreadPoolError.ThreadPoolInactive())
        })
        lock.withLock {
            if queues[connection] == nil {
                queues[connection] = CircularBuffer(initialCapacity: 4)
                turns.append(connection)
            }
            queues[connection]!.append(job)
        }
        dispatch()
        return promise.futureResult
    }

    /// Hands the pool the next job of the connection whose turn it is while a slot is free. One
    /// thread at a time does it (`dispatching`); a call meanwhile (a job finishing on a pool
    /// thread, or one a stopped pool cancels at once, inside `submit`) asks it to look again, so
    /// a stopped pool's queued jobs fail one after another, never one nested call per job.
    private func dispatch() {
        let mine = lock.withLock { () -> Bool in
            if dispatching { again = true; return false }
            dispatching = true
            return true
        }
        guard mine else { return }
        while true {
            while let job = takeNext() {
                pool.submit { [self] state in
                    if case .active = state { job.run() } else { job.cancel() }
                    lock.withLock { running -= 1 }
                    dispatch()
                }
            }
            let done = lock.withLock { () -> Bool in
                if again { again = false; return false }
                dispatching = false
                return true
            }
            if done { return }
        }
    }

    private func takeNext() -> Job? {
        lock.withLock {
            guard running < slots, let connection = turns.popFirst() else { return nil }
            var q = queues.removeValue(forKey: connection)!  // in `turns` only while it has jobs
            let job = q.removeFirst()
            if !q.isEmpty {
                queues[connection] = q
                turns.append(connection)  // its next job waits for every other connection's turn
            }
            running += 1
            return job
        }
    }

    /// `connection` closed: its jobs not yet handed to the pool are dropped (their futures fail,
    /// so their bodies' budget comes back); jobs already running finish. Without this a peer that
    /// pipelines and closes, again and again, left queue after queue judged for nobody, each
    /// with its own place in the rotation (the review of round 13's change).
    func drop(_ connection: UInt64) {
        let dropped: CircularBuffer<Job>? = lock.withLock {
            guard let q = queues.removeValue(forKey: connection) else { return nil }
            if let i = turns.firstIndex(of: connection) { turns.remove(at: i) }
            return q
        }
        dropped?.forEach { $0.cancel() }
    }

    /// Jobs queued and not yet handed to the pool (tests, diagnostics).
    var queued: Int { lock.withLock { queues.values.reduce(0) { $0 + $1.count } } }
}
