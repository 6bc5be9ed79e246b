// SPDX-License-Identifier: Apache-2.0
//
// Log lines for events a peer can repeat at will, counted rather than written past a rate.

import Logging
import NIOConcurrencyHelpers
import NIOCore

/// At most `linesPerSecond` log lines a second for one kind of event a peer can repeat at will
/// (refused frames, refused or failed requests); the first line after a quiet spell says how many
/// were left out. Every event is still answered; only its log line is counted instead of written.
public final class LogThrottle: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NIOLock()
    private let clock: @Sendable () -> UInt64
    private let linesPerSecond: Int
    private var second: UInt64 = 0
    private var logged = 0
    private var unlogged: UInt64 = 0
    public static let defaultLinesPerSecond = 10

    public init(linesPerSecond: Int = LogThrottle.defaultLinesPerSecond,
                clock: @escaping @Sendable () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }) {
        self.linesPerSecond = linesPerSecond
        self.clock = clock
    }

    /// Whether to log this event, and how many were left out before it (reported once).
    public func admit() -> (log: Bool, unloggedBefore: UInt64) {
        lock.withLock {
            // The clock is read under the lock: two threads never move the second back.
            let now = clock() / 1_000_000_000
            if now > second { second = now; logged = 0 }
            guard logged < linesPerSecond else {
                unlogged &+= 1
                return (false, 0)
            }
            logged += 1
            defer { unlogged = 0 }
            return (true, unlogged)
        }
    }

    /// `logger.warning(message)` if this event is admitted, with `unlogged_before` when lines
    /// were left out before it (the one way the port's refusal lines are written).
    public func warning(_ logger: Logger, _ message: Logger.Message, _ metadata: Logger.Metadata) {
        let (log, unlogged) = admit()
        guard log else { return }
        var metadata = metadata
        if unlogged > 0 { metadata["unlogged_before"] = "\(unlogged)" }
        logger.warning(message, metadata: metadata)
    }

    /// Events left out since the last logged line (a stop writes them: nothing goes unsaid).
    public func takeUnlogged() -> UInt64 {
        lock.withLock {
            defer { unlogged = 0 }
            return unlogged
        }
    }
}
