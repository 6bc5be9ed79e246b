// SPDX-License-Identifier: Apache-2.0
//
// Budgets, not just limits: what every connection of one port may hold together.
//
//     header ──▶ check(length) ──ok──▶ each chunk ──▶ reserve(chunk, ofBody: length) ──ok──▶ body complete ──▶ judged ──▶ release(length)
//                      │                                      │
//                      │                                      └─refused──▶ release(what the frame held), error/unavailable,
//                      │                                                   rest of the body discarded unbuffered
//                      └─refused──▶ error/unavailable, body discarded unbuffered (nothing was held)
//
// A per-frame limit alone lets N connections each hold one maximum-size body (16 × 48 MiB was
// measured at 855 MB of RSS). The budget counts the body bytes actually received and kept,
// partial bodies included: a chunk is reserved before it is kept, never a byte the peer has not
// sent. (Reserving a frame's whole declared length at its header let 40 connections sending only
// headers of 1 MiB bodies hold the whole 36 MiB budget for free until their frame deadline, and
// every honest body was refused meanwhile: AdversarialPeerTests.testHeaderOnlyFramesCannotReserveTheBudget.)
// So what a peer holds it has sent, and the frame deadline (from a frame's first byte) bounds how
// long it holds it. At the header the budget is only asked whether the body would fit next to
// the bytes held now (`check`), so a busy server refuses before the body is sent; a body that
// started but meets a full budget mid-way is refused then, and what it held is given back at once.
// Across all connections of a port, at most one maximum-size body is buffered at a time, plus a
// small reserve that only small frames (≤ `smallFrameSize`: status, patches, hello) may use, so
// one large upload never starves the health probe or run-time patch requests. A frame's class
// (small or large) is its declared length, for every chunk of it.

import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore

/// The limits of one listening port (the VMM port and the admin port each have their own).
public struct PortLimits: Sendable {
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
    /// Bytes of registered guests' facts (as the guest registry charges them) the service may hold;
    /// nil = the registry's fixed default. Set by `MemoryBudget.limits` (the service VM).
    public var factsBudget: Int? = nil

    public init(maximumBodySize: Int = WireLimits.defaultMaximumBodySize,
                bufferBudget: Int? = nil,
                smallFrameSize: Int = TransportLimits.smallFrameSize,
                maximumConnections: Int = TransportLimits.maximumConnections,
                maximumInFlightPerConnection: Int = TransportLimits.maximumInFlightPerConnection,
                headerDeadline: TimeAmount = TransportLimits.headerDeadline,
                frameDeadline: TimeAmount = TransportLimits.frameDeadline,
                idleTimeout: TimeAmount = TransportLimits.idleTimeout,
                writeStallTimeout: TimeAmount = TransportLimits.writeStallTimeout) {
        self.maximumBodySize = min(maximumBodySize, WireLimits.absoluteMaximumBodySize)
        self.bufferBudget = bufferBudget ?? (self.maximumBodySize + TransportLimits.smallFrameReserve)
        self.smallFrameSize = smallFrameSize
        self.maximumConnections = maximumConnections
        self.maximumInFlightPerConnection = maximumInFlightPerConnection
        self.headerDeadline = headerDeadline
        self.frameDeadline = frameDeadline
        self.idleTimeout = idleTimeout
        self.writeStallTimeout = writeStallTimeout
    }
}

/// Who asks the budget: one per connection (its decoder and its handler, through `DecodeGate`).
/// A body refused for lack of room keeps its holder's place in the port's queue for a turn
/// (`BufferBudget`, "Turns"); the bytes the holder holds are bounded by the port's
/// `BufferBudget.connectionShare` ("Shares").
public final class BudgetHolder: @unchecked Sendable {
    // @unchecked: `held` is read and written only under the lock of the one budget it is used with.
    /// Bytes of this connection's bodies held now (received and not yet judged or given back).
    fileprivate var held = 0
    public init() {}
}

/// Bytes of frame bodies buffered by all connections of one port. Thread-safe.
///
/// Two classes share `total`: large bodies (> `smallFrameSize`) together may use at most
/// `largeLimit` (= total − reserve: one maximum-size body); small bodies may use whatever is
/// free, so the reserve is always theirs while large bodies can never take it.
///
/// Turns. Room freed by a judgment went to whichever header asked next, so a body that needs
/// more room than the bodies around it was overtaken at every retry for as long as they kept
/// coming (a 4.9 MB module refused 27–28 times in a row in the boot storm: PeersRound8Tests).
/// Now a body refused at its header for lack of room (one that fits its class when the budget is
/// empty) puts its connection in a queue, one place a connection, in the order refused. The
/// first waiter has the turn: its body's length is kept free from every other connection's new
/// bodies (headers only: a body already admitted completes against the bytes actually held;
/// small bodies keep their reserve whatever a large body's turn keeps), so the room drains to
/// it as the bodies ahead are judged, and its retry is admitted. The turn ends when that body is
/// complete, when its connection closes, or `TransportLimits.largeBodyTurn` (the frame deadline,
/// 10 s) after it began, whatever the body has done by then; a waiter not refused within
/// `TransportLimits.turnRetryWindow` (2 s) when its turn comes loses its place. So one
/// connection keeps others' new bodies out for at most 10 s per turn, as long as a partial body
/// may hold its bytes; turns go in order, and a connection that wants another turn queues again
/// behind every waiter: docs/trust.md, "Ports".
///
/// Shares. The turns order who gets room that frees; they do not stop one connection from taking
/// all of it. A connection keeping 36 bodies of 1 MiB in flight (small bodies may use the whole
/// budget) left no room for anyone, and a third of another guest's small requests were refused
/// busy (round 13). So the bytes one connection holds (its bodies received and not yet judged,
/// `BudgetHolder`) stay within `connectionShare`: the whole budget but half the small-frame
/// reserve (32 of 36 MiB by default, never less than one largest body), and a body that would
/// take its connection past it is refused at its header, without a place in the queue (the room
/// it waits for is its own to free). Whatever one connection does, half the reserve stays for
/// the others' small frames (a guest's VMM keeps one connection: docs/trust.md, "Ports").
public final class BufferBudget: @unchecked Sendable {
    // @unchecked: the counters and the queue are guarded by `lock`.
    private let lock = NIOLock()
    /// The port's replies not yet taken by their peers (`ReplyPool`): bodies are charged here
    /// until judged, their replies there until written.
    public let replies: ReplyPool
    private var smallUsed = 0
    private var largeUsed = 0
    private var _refusals: UInt64 = 0
    private var _shareRefusals: UInt64 = 0
    public let total: Int
    public let smallFrameSize: Int
    /// What large frames may use together: `total` minus the reserve kept for small frames.
    public let largeLimit: Int
    /// What one connection's bodies may hold together ("Shares"): `total` minus half the reserve,
    /// at least `largeLimit` (one largest body) and one small frame.
    public let connectionShare: Int

    /// A body refused for lack of room: its connection, its length, when it was last refused.
    private struct Waiter {
        let holder: ObjectIdentifier
        var length: Int
        var lastRefused: UInt64
    }
    /// In the order refused; `waiters[0]` has the turn.
    private var waiters: [Waiter] = []
    /// When the turn of `waiters[0]` began.
    private var turnBegan: UInt64 = 0
    /// Bytes of the turn's body admitted so far, once its header was admitted (nil before).
    private var turnAdmitted: Int?
    /// How long a turn lasts at most, and how recent a waiter's last refusal must be when its turn comes.
    public let turnNanoseconds: UInt64
    /// How recently a waiter must have been refused when its turn comes.
    public let retryWindowNanoseconds: UInt64
    private let clock: @Sendable () -> UInt64
    private var _turnsServed: UInt64 = 0
    private var _turnsLapsed: UInt64 = 0
    /// The port's refusal log lines (frames refused busy or malformed, requests refused or
    /// failed): shared by its connections and its request processor (a flood of refused frames
    /// wrote one warning each: 200 lines a second, 9,000 a minute, round 13).
    public let refusalLog: LogThrottle

    /// - Parameters:
    ///   - turn: how long a large body's turn lasts at most (`TransportLimits.largeBodyTurn`).
    ///   - clock: monotonic nanoseconds (tests give their own).
    public init(total: Int, smallFrameSize: Int, smallReserve: Int = TransportLimits.smallFrameReserve,
                turn: TimeAmount = TransportLimits.largeBodyTurn, retryWindow: TimeAmount = TransportLimits.turnRetryWindow,
                replies: ReplyPool = ReplyPool(),
                clock: @escaping @Sendable () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }) {
        self.replies = replies
        self.total = total
        self.smallFrameSize = smallFrameSize
        self.largeLimit = max(0, total - smallReserve)
        self.connectionShare = max(total - min(smallReserve, total) / 2, largeLimit, min(total, smallFrameSize))
        self.turnNanoseconds = UInt64(max(0, turn.nanoseconds))
        self.retryWindowNanoseconds = UInt64(max(0, retryWindow.nanoseconds))
        self.clock = clock
        self.refusalLog = LogThrottle(clock: clock)
    }

    /// Reserve a whole body of `n` bytes (`reserve(n, ofBody: n)`). Returns nil when reserved, or the refusal message.
    public func reserve(_ n: Int) -> String? { reserve(n, ofBody: n) }

    /// Reserve `n` bytes of a body of `length` bytes (its class: small or large), received on
    /// `holder`'s connection. Returns nil when reserved, or the refusal message. Counts the bytes
    /// held only (a body admitted at its header is not refused for another's turn).
    public func reserve(_ n: Int, ofBody length: Int, holder: BudgetHolder? = nil) -> String? {
        guard n > 0 else { return nil }
        return lock.withLock {
            let used = smallUsed + largeUsed
            if let holder, holder.held + n > connectionShare { return shareRefusal(n: n, length: length, holder: holder) }
            if length <= smallFrameSize {
                guard used + n <= total else { return refusal(n: n, length: length, used: used) }
                smallUsed += n
            } else {
                guard largeUsed + n <= largeLimit && used + n <= total else { return refusal(n: n, length: length, used: used) }
                largeUsed += n
            }
            holder?.held += n
            if let holder, let admitted = turnAdmitted, waiters.first?.holder == ObjectIdentifier(holder) {
                turnAdmitted = admitted + n
                if admitted + n >= waiters[0].length {
                    // The turn's body is complete: the next waiter's turn begins.
                    _turnsServed &+= 1
                    endTurn(clock())
                }
            }
            return nil
        }
    }

    /// Whether a body of `length` bytes would fit next to the bytes held now and the room kept
    /// for another connection's turn. Reserves nothing: the header's question, so a busy server
    /// refuses before the body is sent. Nil when it fits. A body that does not fit, from a
    /// `holder`, queues for a turn (or, when it has the turn, is admitted as soon as it fits).
    public func check(_ length: Int, holder: BudgetHolder? = nil) -> String? {
        guard length > 0 else { return nil }
        return lock.withLock {
            let now = clock()
            expireTurns(now)
            // Past its share, a connection waits for its own bodies to be judged: no place, no turn.
            if let holder, holder.held + length > connectionShare { return shareRefusal(n: length, length: length, holder: holder) }
            let id = holder.map(ObjectIdentifier.init)
            let kept = keptRoom(notFor: id)
            let used = smallUsed + largeUsed
            let fits: Bool
            if length <= smallFrameSize {
                // Small bodies keep their reserve whatever a large body's turn keeps; a small
                // body's turn is kept in the reserve too.
                let keptInReserve = (waiters.first.map { $0.length <= smallFrameSize } ?? false) ? kept : 0
                fits = used + length <= total && (used + length + kept <= total || smallUsed + length + keptInReserve <= total - largeLimit)
            } else {
                fits = largeUsed + length + kept <= largeLimit && used + length + kept <= total
            }
            if fits {
                // A body that stands for the one waiting (its retry: the same class, and for a
                // small one at least as long) takes the turn or ends the place; anything else the
                // connection sends meanwhile (a patch, a retire) leaves both alone.
                if let id, let i = waiters.firstIndex(where: { $0.holder == id }), Self.standsFor(length, waiting: waiters[i].length, smallFrameSize: smallFrameSize) {
                    if i == 0 {
                        waiters[0].length = length
                        turnAdmitted = 0
                    } else {
                        waiters.remove(at: i)  // admitted before its turn: it needs none
                    }
                }
                return nil
            }
            if let id, length <= (length <= smallFrameSize ? total : largeLimit) { queue(id, length: length, now: now) }
            return refusal(n: length, length: length, used: used, holder: id, kept: kept)
        }
    }

    /// Whether an admitted body of `length` is the retry of a waiting body of `waiting` bytes.
    private static func standsFor(_ length: Int, waiting: Int, smallFrameSize: Int) -> Bool {
        (length > smallFrameSize) == (waiting > smallFrameSize) && (length > smallFrameSize || length >= waiting)
    }

    /// The holder's connection is gone (its decoder removed): its place, or its turn, ends.
    public func leave(_ holder: BudgetHolder) {
        lock.withLock {
            let id = ObjectIdentifier(holder)
            guard let i = waiters.firstIndex(where: { $0.holder == id }) else { return }
            if i == 0 { endTurn(clock()) } else { waiters.remove(at: i) }
        }
    }

    /// Called with `lock` held: `id` joins the queue, or refreshes its place (its length, its last refusal).
    private func queue(_ id: ObjectIdentifier, length: Int, now: UInt64) {
        if let i = waiters.firstIndex(where: { $0.holder == id }) {
            waiters[i].lastRefused = now
            // One place a connection: a refused body of the other class (a patch refused while
            // the connection's module waits) keeps the place as it is.
            if (i > 0 || turnAdmitted == nil) && (length > smallFrameSize) == (waiters[i].length > smallFrameSize) { waiters[i].length = length }
            return
        }
        if waiters.isEmpty { turnBegan = now; turnAdmitted = nil }
        waiters.append(Waiter(holder: id, length: length, lastRefused: now))
    }

    /// Called with `lock` held: the room the turn keeps from `id`'s new bodies (none from its own).
    private func keptRoom(notFor id: ObjectIdentifier?) -> Int {
        guard let head = waiters.first, head.holder != id else { return 0 }
        return max(0, head.length - (turnAdmitted ?? 0))
    }

    /// Called with `lock` held: end turns that ran out (2 s from their beginning), and skip
    /// waiters that stopped retrying (no refusal within the turn's length when their turn comes).
    private func expireTurns(_ now: UInt64) {
        while let head = waiters.first {
            let over = now &- turnBegan > turnNanoseconds
            let stale = turnAdmitted == nil && now &- head.lastRefused > retryWindowNanoseconds
            guard over || stale else { return }
            _turnsLapsed &+= 1
            endTurn(now)
        }
    }

    /// Called with `lock` held: the first waiter's turn ends; the next one's begins at `now`.
    private func endTurn(_ now: UInt64) {
        waiters.removeFirst()
        turnAdmitted = nil
        turnBegan = now
    }

    /// What a refusal refuses: a whole body at its header, or a chunk of one mid-way.
    private static func describe(_ n: Int, ofBody length: Int) -> String {
        n == length ? "a body of \(n) bytes" : "\(n) more bytes of a body of \(length) bytes (the frame is discarded)"
    }

    /// Called with `lock` held: a body that would take its connection past its share.
    private func shareRefusal(n: Int, length: Int, holder: BudgetHolder) -> String {
        _refusals &+= 1
        _shareRefusals &+= 1
        let what = Self.describe(n, ofBody: length)
        return "server busy: this connection holds \(holder.held) bytes of request bodies not yet answered; "
            + "\(what) would exceed a connection's share of \(connectionShare) — retry when its earlier requests are answered"
    }

    /// Called with `lock` held.
    private func refusal(n: Int, length: Int, used: Int, holder: ObjectIdentifier? = nil, kept: Int = 0) -> String {
        _refusals &+= 1
        let limit = length <= smallFrameSize ? total : largeLimit
        let what = Self.describe(n, ofBody: length)
        var place = ""
        if let holder, let i = waiters.firstIndex(where: { $0.holder == holder }) {
            place = i == 0 ? " (this connection's body has the turn: room is kept for it; retry soon)"
                : " (this connection's body is number \(i + 1) in the queue for a turn; retry within 2 s to keep the place)"
        } else if kept > 0 {
            place = " (\(kept) bytes are kept for a body refused earlier)"
        }
        return "server busy: \(used) bytes of request bodies are buffered across all connections; "
            + "\(what) would exceed the budget of \(limit)\(place) — retry when earlier requests are answered"
    }

    /// Give back a reservation of a whole body of `n` bytes (`release(n, ofBody: n)`).
    public func release(_ n: Int) { release(n, ofBody: n) }

    /// Give back `n` bytes reserved for a body of `length` bytes on `holder`'s connection (judged,
    /// dropped with its connection, or answered without judging). Every reservation made with a
    /// holder is given back with the same holder.
    public func release(_ n: Int, ofBody length: Int, holder: BudgetHolder? = nil) {
        lock.withLock { give(n, ofBody: length, holder: holder) }
    }

    /// Give back the `n` bytes a partial body held when it was refused mid-way: a turn's body
    /// refused so keeps the turn (its connection retries), its admission counted anew.
    public func abandon(_ n: Int, ofBody length: Int, holder: BudgetHolder) {
        lock.withLock {
            give(n, ofBody: length, holder: holder)
            if turnAdmitted != nil, waiters.first?.holder == ObjectIdentifier(holder) { turnAdmitted = nil }
        }
    }

    /// Called with `lock` held.
    private func give(_ n: Int, ofBody length: Int, holder: BudgetHolder?) {
        guard n > 0 else { return }
        if length <= smallFrameSize { smallUsed -= n } else { largeUsed -= n }
        holder?.held -= n
        assert(smallUsed >= 0 && largeUsed >= 0 && (holder?.held ?? 0) >= 0, "budget released more than reserved")
    }

    public var inUse: Int { lock.withLock { smallUsed + largeUsed } }
    /// Bytes held by each class (tests and diagnostics: after every connection is gone and every
    /// request answered, both are 0).
    public var usage: (small: Int, large: Int) { lock.withLock { (smallUsed, largeUsed) } }
    public var refusals: UInt64 { lock.withLock { _refusals } }
    /// Of `refusals`, bodies refused for taking their connection past its share.
    public var shareRefusals: UInt64 { lock.withLock { _shareRefusals } }
    /// Bytes `holder`'s connection holds now (tests and diagnostics).
    public func held(by holder: BudgetHolder) -> Int { lock.withLock { holder.held } }
    /// Large bodies waiting for a turn (the one with the turn included), turns that ended with
    /// their body complete, and turns that ran out or were skipped.
    public var turns: (waiting: Int, served: UInt64, lapsed: UInt64) { lock.withLock { (waiters.count, _turnsServed, _turnsLapsed) } }
}

/// Bytes of replies the server has made and its peers have not taken yet, all connections of one
/// port together. Thread-safe.
///
/// A request's body is charged to the `BufferBudget` until it is judged; its reply then waits in
/// the connection's outbound buffer until the peer reads it. Backpressure stops a connection
/// *starting* requests once its socket is not writable (NIO's 64 KiB high watermark), but the
/// requests already in flight (64 a connection) each still add their reply, and a reply may echo
/// 64 KiB of its request (a guest id, a module name): 96 connections that read nothing made the
/// server hold +387 MiB (PeersRound9Tests). Now each connection's unsent replies up to
/// `allowance` are its own; beyond it they are charged here, and a connection whose peer is not
/// taking its replies (bytes left unwritten after a flush) and whose next reply does not fit what
/// is left is closed — its replies dropped, its in-flight requests lost, as at any close; the
/// peer reconnects and retries (docs/protocol.md, "Connections and limits"). Firecracker's vsock
/// device does the same with a connection whose host peer does not drain its tx buffer
/// (`VsockCsmError::TxBufFull` → the connection is reset). A connection that has taken every
/// earlier reply is never closed for lack of room: its reply is charged beyond the total, and
/// the next flush shows whether the peer takes it.
public final class ReplyPool: @unchecked Sendable {
    // @unchecked: the counters are guarded by `lock`.
    private let lock = NIOLock()
    private var used = 0
    private var _closed: UInt64 = 0
    private var _peak = 0
    /// Bytes beyond the connections' allowances all connections may hold together.
    public let total: Int
    /// Unsent reply bytes a connection holds uncharged.
    public let allowance: Int

    public init(total: Int = TransportLimits.replyPool, allowance: Int = TransportLimits.replyAllowance) {
        self.total = max(0, total)
        self.allowance = max(0, allowance)
    }

    /// Charge `n` bytes when they fit what is left; `force` charges them whatever is left.
    public func charge(_ n: Int, force: Bool = false) -> Bool {
        guard n > 0 else { return true }
        return lock.withLock {
            guard force || used + n <= total else { return false }
            used += n
            _peak = max(_peak, used)
            return true
        }
    }

    public func release(_ n: Int) {
        guard n > 0 else { return }
        lock.withLock {
            used -= n
            assert(used >= 0, "reply pool released more than charged")
        }
    }

    /// A connection was closed for not taking its replies.
    public func countClose() { lock.withLock { _closed &+= 1 } }

    /// More is charged than the total (replies charged to connections that had taken every
    /// earlier one).
    public var isOver: Bool { lock.withLock { used > total } }
    public var inUse: Int { lock.withLock { used } }
    /// The most ever charged at once (tests and diagnostics).
    public var peak: Int { lock.withLock { _peak } }
    /// Connections closed for not taking their replies.
    public var closed: UInt64 { lock.withLock { _closed } }
}

/// Named limits of a listening port (defaults of `PortLimits`): the VMM port uses them as they
/// are; the admin port (ExecGateAdmin `AdminLimits`) narrows some.
public enum TransportLimits {
    /// Requests one connection may have in flight before the server stops reading from it.
    public static let maximumInFlightPerConnection = 64
    /// Frames up to this size may use the budget's reserve, which larger bodies may not touch:
    /// status, hello, authorize-patch, register-guest, and most modules (of Debian 6.1's 4,023
    /// modules, all but 38 are under 1 MiB), so one peer uploading (or
    /// trickling) a maximum-size body never starves health probes, patches or common modules.
    public static let smallFrameSize = 1 << 20
    /// The reserve of the buffer budget kept for frames ≤ `smallFrameSize`.
    public static let smallFrameReserve = 8 << 20
    /// Longest turn of a body refused "server busy" (`BufferBudget`, "Turns"): from the turn's
    /// beginning, the room its body needs is kept from other connections' new bodies until the
    /// body is complete, at most this long: the frame deadline, what a partial body may hold its
    /// bytes for. Covers the bodies ahead of it being judged in a storm (the room draining: at
    /// 2 s, 5 of 37 turns of `bench --scale`'s 100 guests ran out first), a retry's backoff and a
    /// maximum body's upload. What one connection can keep others' new bodies out for, per turn.
    public static let largeBodyTurn = frameDeadline
    /// A waiter must have been refused (retried) this recently when its turn comes, or it loses
    /// its place: a VMM that gave up a body (or never meant to send it) holds no turn.
    public static let turnRetryWindow = TimeAmount.seconds(2)
    /// Connections open at once on the VMM port: one VMM process per guest keeps one or a few
    /// (one per vCPU at most); a service VM serves tens of guests.
    public static let maximumConnections = 128
    /// A frame's header must be complete this long after its first byte (a slowloris peer
    /// sending a few header bytes is closed within seconds).
    public static let headerDeadline = TimeAmount.seconds(5)
    /// A whole frame must arrive this long after its first byte: the largest body (28 MiB) at
    /// 10 MB/s, far below what a Unix socket or vsock carries.
    public static let frameDeadline = TimeAmount.seconds(10)
    /// A connection with nothing in flight is closed after this long; a VMM reconnects when it
    /// next needs a verdict (docs/protocol.md, "Connections and limits").
    public static let idleTimeout = TimeAmount.seconds(30)
    /// A connection whose peer reads no reply for this long is closed.
    public static let writeStallTimeout = TimeAmount.seconds(10)
    /// Bytes of replies a connection may hold unsent without charge (`ReplyPool`): an honest
    /// VMM's verdicts are hundreds of bytes (a large module's grant a few KiB), and the kernel's
    /// socket buffer (~200 KiB for a Unix socket, the vsock peer's buffer) takes them before the
    /// server holds any.
    public static let replyAllowance = 16 << 10
    /// Bytes of unsent replies beyond the connections' allowances a port holds together
    /// (`ReplyPool`): with the VMM port's 128 allowances, 4 MiB at most, in the service VM's
    /// 8 MiB reserve (`MemoryBudget.reserve`) beside the audit ring and pages.
    public static let replyPool = 2 << 20
    /// Reads per readable event on a connection (`ServerBootstrap.boundedReads()`): what a connection
    /// that stopped being read can still have taken in is one read buffer.
    public static let readsPerEvent: UInt = 1
    /// Largest read buffer (NIO's adaptive allocator grows up to it; its default maximum).
    public static let readBufferSize = 64 << 10
    /// How long accept pauses after it failed (fd limit reached): the server retries 5 times a
    /// second instead of spinning, and serves the connections it has meanwhile.
    public static let acceptBackoff = TimeAmount.milliseconds(200)
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

/// What the VMM port may admit, derived from the memory the service actually has (ServiceVM/README.md,
/// "Memory budget"). The service VM's PID 1 reads `MemAvailable` from /proc/meminfo once at start
/// (after the initramfs is unpacked, so /init's own pages are already taken) and admits request
/// bodies and registered guests' facts only while all of them together, at what they cost in RAM,
/// fit what is left:
///
///     available ── reserve (everything else the service grows by) = room
///     room = bytesPerBodyByte × buffer budget + bytesPerFactsByte × facts budget
///
/// Small frames come first (up to the small-frame reserve), then the facts floor (one build of a
/// real kernel and its guests), then large bodies up to the default buffer budget; the facts
/// budget is what is left, at most the registry's 192 MiB.
///
/// A body that could never fit is refused at its header as `frame-too-large` (the maximum body
/// shrinks with the budget); one that fits but not next to the bodies already held is refused as
/// `unavailable` ("server busy"), at its header or, when the budget fills while it arrives, at
/// the chunk that does not fit (what it held is given back). A registration whose facts do not fit
/// beside those held is refused `unavailable` with the figures, before its facts are built, and
/// nothing of it is kept (GuestRegistry). Either way nothing is held past the budget, so a large
/// request or a hostile VMM's many builds meet a precise refusal instead of the kernel's OOM
/// killer taking PID 1 (which would end the VM).
public struct MemoryBudget: Sendable, Equatable {
    /// RAM one buffered body byte costs while its request is judged: the frame's buffer, plus the
    /// verifier's copies of the module and claimed bytes (decoded message, parsed ELF, comparison
    /// buffers). Measured at ≈ 1.1–1.2 (amdgpu.ko, 19.5 MB, with its ELF claim: +20–24 MiB of
    /// guest RAM); 2 leaves room for a peak the measurement missed.
    public static let bytesPerBodyByte = 2
    /// RAM one byte of registered facts, as the registry charges them (names and records, plus
    /// what each export, text symbol and static-call key is held in: ExecGateVerifier
    /// `KernelFacts.symbolBytes`), costs: measured at ≈ 0.64–1.11 over the compositions of
    /// `FactsBudgetTests` (short and long exported names, tracepoint key triples, short text names,
    /// empty names; a real Debian 6.1 build 0.8; short exported names 1.11 since the core export
    /// index's 64-byte slots, 0.88 before), as a fraction: 3/2 leaves room over the measured.
    public static let bytesPerFactsByte = (numerator: 3, denominator: 2)
    /// The facts kept for before large bodies: one Debian 6.1 build (charged ≈ 6.3 MiB) and its
    /// guests' own facts.
    public static let factsFloor = 10 << 20
    /// The facts budget's ceiling (the guest registry's fixed default, ExecGateVerifier
    /// `GuestRegistry.defaultMaximumSymbolBytes`).
    public static let factsCeiling = 192 << 20
    /// Kept out of the budget for what the service grows by besides bodies and facts: thread
    /// stacks, NIO's buffers, replies, the audit ring.
    public static let reserve = 8 << 20

    /// `MemAvailable` at start, bytes.
    public let availableBytes: Int

    public init(availableBytes: Int) { self.availableBytes = max(0, availableBytes) }

    /// From /proc/meminfo's text: `MemAvailable:  123456 kB`. Nil when the line is missing or malformed.
    public init?(meminfo text: String) {
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 3, fields[2] == "kB", let kib = Int(fields[1]), kib >= 0, kib < Int.max / 1024 else { return nil }
            self.init(availableBytes: kib * 1024)
            return
        }
        return nil
    }

    /// What is left for bodies and facts at their cost.
    public var room: Int { max(0, availableBytes - MemoryBudget.reserve) }

    /// RAM `facts` bytes of registered facts cost (rounded up).
    public static func factsCost(_ facts: Int) -> Int {
        (facts * bytesPerFactsByte.numerator + bytesPerFactsByte.denominator - 1) / bytesPerFactsByte.denominator
    }

    /// Bytes of request bodies all connections may buffer together, at most `base`: the small-frame
    /// reserve first, then large bodies only beside the facts floor.
    public func bufferBudget(base: Int = PortLimits().bufferBudget) -> Int {
        let all = room / MemoryBudget.bytesPerBodyByte
        let small = min(all, TransportLimits.smallFrameReserve)
        let besideFacts = max(0, room - MemoryBudget.factsCost(MemoryBudget.factsFloor)) / MemoryBudget.bytesPerBodyByte
        return min(base, max(small, besideFacts))
    }

    /// Bytes of facts the registry may hold beside `bodies` bytes of buffered request bodies: what
    /// is left of the room at its cost, at most the ceiling.
    public func factsBudget(besideBodies bodies: Int) -> Int {
        let left = max(0, room - MemoryBudget.bytesPerBodyByte * bodies)
        return min(MemoryBudget.factsCeiling, left * MemoryBudget.bytesPerFactsByte.denominator / MemoryBudget.bytesPerFactsByte.numerator)
    }

    /// `base` narrowed to this budget: the buffer budget never exceeds what memory holds beside the
    /// facts floor; the largest body is what the budget holds beside the small-frame reserve
    /// (`BufferBudget`'s large limit), but small frames stay admissible while the budget holds one
    /// (never more than `base`'s); the facts budget is what the bodies leave.
    public func limits(narrowing base: PortLimits = PortLimits()) -> PortLimits {
        var l = base
        l.bufferBudget = bufferBudget(base: base.bufferBudget)
        let large = l.bufferBudget - TransportLimits.smallFrameReserve
        l.maximumBodySize = max(0, min(base.maximumBodySize, max(large, min(base.smallFrameSize, l.bufferBudget))))
        l.factsBudget = min(base.factsBudget ?? MemoryBudget.factsCeiling, factsBudget(besideBodies: l.bufferBudget))
        return l
    }

    /// One line for the console and logs.
    public func summary(_ l: PortLimits) -> String {
        "memory available \(availableBytes >> 20) MiB: request bodies up to \(l.bufferBudget >> 20) MiB in all, largest body \(l.maximumBodySize) bytes"
            + (l.factsBudget.map { ", registered facts up to \($0 >> 20) MiB" } ?? "")
    }
}
