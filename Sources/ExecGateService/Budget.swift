// SPDX-License-Identifier: Apache-2.0
//
// Budgets, not just limits: what every connection of one port may hold together.
//
//     header ──▶ BufferBudget.reserve(length) ──ok──▶ body buffered ──▶ judged ──▶ release(length)
//                          │
//                          └─refused──▶ error/unavailable, body discarded unbuffered
//
// A per-frame limit alone lets N connections each hold one maximum-size body (16 × 48 MiB was
// measured at 855 MB of RSS). The budget is asked at every frame header, before one byte of the
// body is kept, and counts partial bodies too: across all connections of a port, at most one
// maximum-size body is buffered at a time, plus a small reserve that only small frames
// (≤ `smallFrameSize`: status, patches, hello) may use, so one large upload never starves the
// health probe or run-time patch requests.

import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore

/// The limits of one listening port (the VMM port and the admin port each have their own).
public struct ServiceConfiguration: Sendable {
    /// Largest frame body accepted (`frame-too-large` above it).
    public var maximumBodySize: Int
    /// Bytes of request bodies all connections may buffer together (partial bodies included).
    public var bufferBudget: Int
    /// Bodies up to this size may use the reserve that large bodies may not.
    public var smallFrameSize: Int
    /// Connections open at once; one more is closed at accept.
    public var maximumConnections: Int
    /// Requests one connection may have in flight (judged or waiting for their reply to be
    /// written) before the server stops reading from it.
    public var maximumInFlightPerConnection: Int
    /// From the first byte of a frame to its complete 20-byte header.
    public var headerDeadline: TimeAmount
    /// From the first byte of a frame to its last body byte.
    public var frameDeadline: TimeAmount
    /// A connection with nothing in flight and no partial frame is closed after this long.
    public var idleTimeout: TimeAmount
    /// A connection whose peer stops reading replies (socket not writable) is closed after this long.
    public var writeStallTimeout: TimeAmount

    public init(maximumBodySize: Int = WireLimits.defaultMaximumBodySize,
                bufferBudget: Int? = nil,
                smallFrameSize: Int = ServiceLimits.smallFrameSize,
                maximumConnections: Int = ServiceLimits.maximumConnections,
                maximumInFlightPerConnection: Int = ServiceLimits.maximumInFlightPerConnection,
                headerDeadline: TimeAmount = ServiceLimits.headerDeadline,
                frameDeadline: TimeAmount = ServiceLimits.frameDeadline,
                idleTimeout: TimeAmount = ServiceLimits.idleTimeout,
                writeStallTimeout: TimeAmount = ServiceLimits.writeStallTimeout) {
        self.maximumBodySize = min(maximumBodySize, WireLimits.absoluteMaximumBodySize)
        self.bufferBudget = bufferBudget ?? (self.maximumBodySize + ServiceLimits.smallFrameReserve)
        self.smallFrameSize = smallFrameSize
        self.maximumConnections = maximumConnections
        self.maximumInFlightPerConnection = maximumInFlightPerConnection
        self.headerDeadline = headerDeadline
        self.frameDeadline = frameDeadline
        self.idleTimeout = idleTimeout
        self.writeStallTimeout = writeStallTimeout
    }
}

/// Bytes of frame bodies buffered by all connections of one port. Thread-safe.
///
/// Two classes share `total`: large bodies (> `smallFrameSize`) together may use at most
/// `largeLimit` (= total − reserve: one maximum-size body); small bodies may use whatever is
/// free, so the reserve is always theirs while large bodies can never take it.
public final class BufferBudget: @unchecked Sendable {
    // @unchecked: the counters are guarded by `lock`.
    private let lock = NIOLock()
    private var smallUsed = 0
    private var largeUsed = 0
    private var _refusals: UInt64 = 0
    public let total: Int
    public let smallFrameSize: Int
    /// What large frames may use together: `total` minus the reserve kept for small frames.
    public let largeLimit: Int

    public init(total: Int, smallFrameSize: Int, smallReserve: Int = ServiceLimits.smallFrameReserve) {
        self.total = total
        self.smallFrameSize = smallFrameSize
        self.largeLimit = max(0, total - smallReserve)
    }

    /// Reserve `n` bytes. Returns nil when reserved, or the refusal message.
    public func reserve(_ n: Int) -> String? {
        guard n > 0 else { return nil }
        return lock.withLock {
            let used = smallUsed + largeUsed
            if n <= smallFrameSize {
                if used + n <= total { smallUsed += n; return nil }
            } else if largeUsed + n <= largeLimit && used + n <= total {
                largeUsed += n
                return nil
            }
            _refusals &+= 1
            let limit = n <= smallFrameSize ? total : largeLimit
            return "server busy: \(used) bytes of request bodies are buffered across all connections; "
                + "a body of \(n) bytes would exceed the budget of \(limit) — retry when earlier requests are answered"
        }
    }

    /// Give back a reservation of `n` bytes (the same `n` that was reserved).
    public func release(_ n: Int) {
        guard n > 0 else { return }
        lock.withLock {
            if n <= smallFrameSize { smallUsed -= n } else { largeUsed -= n }
            assert(smallUsed >= 0 && largeUsed >= 0, "budget released more than reserved")
        }
    }

    public var inUse: Int { lock.withLock { smallUsed + largeUsed } }
    public var refusals: UInt64 { lock.withLock { _refusals } }
}

/// Open connections of one port, bounded. Thread-safe.
public final class ConnectionCounter: @unchecked Sendable {
    // @unchecked: `open` is guarded by `lock`.
    private let lock = NIOLock()
    private var open = 0
    private var _refused: UInt64 = 0
    public let limit: Int

    public init(limit: Int) { self.limit = limit }

    /// Take a slot; false when `limit` connections are open.
    public func acquire() -> Bool {
        lock.withLock {
            guard open < limit else { _refused &+= 1; return false }
            open += 1
            return true
        }
    }

    public func release() { lock.withLock { open -= 1 } }
    public var current: Int { lock.withLock { open } }
    public var refused: UInt64 { lock.withLock { _refused } }
}
