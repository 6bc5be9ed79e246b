// SPDX-License-Identifier: Apache-2.0
//
// The audit sink: every verdict and every policy change becomes one JSON line.
//
//     verifier worker ──record()──▶ [bounded queue, capacity C] ──writer──▶ audit file (serve --audit)
//                             └────▶ retained ring (R records) ◀── audit-read (admin port)
//
// When the queue is full, the *policy* of the request decides (`audit-overflow`):
//   - block: the worker waits (bounded by `blockTimeout`) for room; if none comes, record()
//     returns false and the verifier turns the verdict into a deny. No code runs unrecorded.
//   - drop: the record is dropped and counted; the count is in `policy show` and every later
//     audit-read reply, so a gap is never silent.
// Policy changes are always recorded (they bypass the capacity bound: they are rare and come
// only from admin-signed bundles).
//
// A record leaves the queue only once the writer has written all of it: a write that fails (a full
// disk, a FIFO whose reader went) keeps it queued, counted against the queue's bounds, and the
// writer retries with a growing pause, resuming at the first byte not written (a record cut by a
// full disk is completed, never glued to the next). While the sink refuses, the queue fills and
// the policy's overflow applies as above: `block` denies, `drop` counts. `writeErrors` and
// `queued` say so (policy show).
//
// The retained ring is what `audit-read` serves to the host; it keeps the newest R records
// (older ones are still in the audit file). A record enters it, with its sequence number, when it
// is accepted (before record() returns, so before the verdict's reply goes out): a reader sees
// every verdict whose reply it has, without waiting for the writer. A reader that fell behind the
// ring sees exactly how many it missed (`oldest_seq`).

import _ExecGateInternals
import Dispatch
import ExecGatePolicy
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum AuditLimits {
    /// Records waiting for the writer.
    public static let defaultQueueCapacity = 4096
    /// UTF-8 bytes of a verdict record's guest id and module name, and of its message, kept
    /// whole; beyond, the first ones and a marker (`AuditLog.bounded`). At 6 bytes of JSON a
    /// control character, a record stays under 64 KiB: one `record` string of audit-read-reply.
    public static let recordWordBytes = 1024
    public static let recordMessageBytes = 6144
    /// Records kept in memory for audit-read.
    public static let defaultRetained = 16384
    /// Bytes of record text kept in memory for audit-read, whatever the records' count: the oldest
    /// go first, the newest record is always kept. A record's size is the peer's to choose (its
    /// guest id and module name are wire strings of up to 64 KiB, a control character in them
    /// 6 bytes of JSON: one record reached ~720 KiB before `recordWordBytes`, and is still up to
    /// ~50 KiB), so a count alone bounded nothing; the
    /// service VM's memory budget keeps 8 MiB for everything besides bodies and facts
    /// (MemoryBudget.reserve). ~10,000 honest records (≈ 400 bytes each).
    public static let retainedBytes = 4 << 20
    /// Bytes of record text waiting for the writer: beyond them, as beyond `defaultQueueCapacity`
    /// records, the policy's `audit-overflow` applies (drop, or block then deny).
    public static let queueBytes = 8 << 20
    /// The writer's pause after a failed write (doubling from the first to the second while the
    /// sink keeps refusing; its records stay queued).
    public static let retryPauseSeconds = 0.05...2.0
    /// Longest a verdict waits for queue room under `audit-overflow block`.
    public static let defaultBlockTimeoutSeconds = 5.0
    /// Most records in one audit-read reply.
    public static let maximumRecordsPerRead = 10_000
    /// Most record bytes in one audit-read reply (the reply's TLV headers add 6 bytes a record).
    /// One reply is what a peer on the admin port can make the service buffer per request; the
    /// admin port serves one request at a time per connection, so this bounds a connection's
    /// pending reply bytes too. A page holds at least one record (an honest one is < 1 KiB; the
    /// request's words can make one several hundred KiB).
    public static let maximumBytesPerRead = 1 << 20
    /// Bytes of audit-read replies the admin port holds at once, across its connections, until
    /// each has left the server (written to its socket, or its connection gone): a page is
    /// granted what is left of it, at most `maximumBytesPerRead`, and a read that finds less than
    /// `minimumPageBytes` left is refused `unavailable`. Sixteen keyless connections each asking
    /// a 1 MiB page and reading none of them held 16 MiB (PeersRound7AdminTests), twice the
    /// service VM's reserve for everything besides bodies and facts (MemoryBudget.reserve); now
    /// 2 MiB, plus at most one record a page beyond its grant (a page holds at least one).
    public static let pagePoolBytes = 2 << 20
    /// The least a page is granted; below it the read is refused `unavailable` (retry).
    public static let minimumPageBytes = 64 << 10
    /// Refused policy pushes recorded per second, after a burst (the rest are counted only).
    /// A refusal costs the pusher nothing (no key is needed to be refused), so unbounded they
    /// would flood the writer queue and evict verdicts from the retained ring.
    public static let refusedPushRecordsPerSecond = 1.0
    public static let refusedPushBurst = 10.0
    /// Refused-push records kept for audit-read, apart from the verdict ring: a flood of them can
    /// never push a verdict out of the ring.
    public static let retainedRefusedPushes = 256
}

public final class AuditLog: VerdictAuditSink, @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `monitor`.
    public typealias Writer = @Sendable ([UInt8]) throws -> Void

    private let monitor = Monitor()
    private var queue: [String] = []
    private var ring: [(UInt64, String)] = []
    /// Records before `ringHead` were evicted (their text released); `ringBytes` counts the rest.
    private var ringHead = 0
    private var ringBytes = 0
    private var queueBytes = 0
    /// Refused-push records, retained apart (see `AuditLimits.retainedRefusedPushes`).
    private var refusedRing: [(UInt64, String)] = []
    private var _refusedPushes: UInt64 = 0
    private var _refusedSuppressed: UInt64 = 0
    private var refusedTokens = AuditLimits.refusedPushBurst
    private var refusedRefill = NIODeadline.now()
    private var nextSeq: UInt64
    /// The first number this log issues (`firstSequenceNumber`).
    private let firstSeq: UInt64
    private var _dropped: UInt64 = 0
    private var _accepted: UInt64 = 0
    private var _writeErrors: UInt64 = 0
    /// Bytes of the queue's first record (its line and newline) already written by a write that
    /// then failed: the next attempt resumes after them.
    private var headWritten = 0
    /// The last write failure's message, while the sink is failing (nil once a write succeeds).
    private var _lastWriteError: String?
    private var stopping = false
    /// Set when the service begins to stop: a verdict waiting for queue room under `block` stops
    /// waiting (denied) instead of outliving the event loops that would answer it.
    private var waitsRefused = false
    private var writerRunning = false
    private let capacity: Int
    private let retained: Int
    private let blockTimeout: Double
    private let writer: Writer?
    private let clock: @Sendable () -> String
    private let writerDone = DispatchSemaphore(value: 0)

    /// - Parameters:
    ///   - capacity: queue bound (records not yet handed on).
    ///   - retained: records kept for audit-read.
    ///   - blockTimeout: seconds a verdict waits for room under `block`.
    ///   - writer: where lines go (one call per batch of complete lines); nil = memory only.
    ///   - firstSequenceNumber: the first record's number (≥ 1); `serve` passes
    ///     `startOfNumbering()`, so numbers keep increasing across restarts.
    public init(capacity: Int = AuditLimits.defaultQueueCapacity, retained: Int = AuditLimits.defaultRetained,
                blockTimeout: Double = AuditLimits.defaultBlockTimeoutSeconds, writer: Writer? = nil,
                clock: @escaping @Sendable () -> String = AuditTime.now, firstSequenceNumber: UInt64 = 1) {
        // At most 2⁵³: exact in any JSON reader, and 2⁶⁴ − 2⁵³ records from any wrap (a clock
        // read far in the future, or a caller's number, never brings `next_seq` near 2⁶⁴).
        self.firstSeq = min(max(1, firstSequenceNumber), AuditLog.highestFirstSequenceNumber)
        self.nextSeq = firstSeq
        self.capacity = max(1, capacity)
        self.retained = max(1, retained)
        self.blockTimeout = blockTimeout
        self.writer = writer
        self.clock = clock
        writerRunning = true
        DispatchQueue(label: "execgate.audit-writer").async { [self] in self.drain() }
    }

    /// An audit log appending to `path` (created 0600 if missing).
    /// A FIFO is taken only when a reader holds it open: opened O_NONBLOCK, a FIFO without one
    /// fails at once (ENXIO, fifo(7)) instead of blocking the service's start for ever; the
    /// descriptor then goes back to blocking writes.
    public static func appending(to path: String, capacity: Int = AuditLimits.defaultQueueCapacity,
                                 blockTimeout: Double = AuditLimits.defaultBlockTimeoutSeconds,
                                 firstSequenceNumber: UInt64 = 1) throws -> AuditLog {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0o600)
        guard fd >= 0 else {
            let e = errno
            if e == ENXIO { throw AdminError(.io, "cannot open audit file \(path): a FIFO with no reader (errno \(e))") }
            throw AdminError(.io, "cannot open audit file \(path): \(String(cString: strerror(e))) (errno \(e))")
        }
        let file = FileDescriptorBox(fd)  // closes it on the refusal below
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 else {
            let e = errno
            throw AdminError(.io, "cannot open audit file \(path): \(String(cString: strerror(e))) (errno \(e))")
        }
        // Every record is one line (docs/policy.md, "Audit"). A writer killed mid-record leaves a
        // last line without its newline; appending straight after it would glue this service's
        // first record onto the fragment. End the fragment's line first (it stays, as evidence).
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0 {
            // The append descriptor is write-only: read the last byte through a read-only one of
            // the same file (same device and inode).
            let r = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            if r >= 0 {
                let reader = FileDescriptorBox(r)  // closes it
                defer { withExtendedLifetime(reader) {} }
                var rs = stat(), last: UInt8 = 0x0A
                if fstat(r, &rs) == 0, rs.st_dev == st.st_dev, rs.st_ino == st.st_ino, pread(r, &last, 1, st.st_size - 1) == 1, last != 0x0A {
                    do { try file.writeAll([0x0A]) } catch { throw AdminError(.io, "cannot open audit file \(path): \(error)") }
                }
            }
        }
        return AuditLog(capacity: capacity, blockTimeout: blockTimeout, writer: { bytes in try file.writeAll(bytes) },
                        firstSequenceNumber: firstSequenceNumber)
    }

    /// The highest first number a log takes (2⁵³).
    public static let highestFirstSequenceNumber: UInt64 = 1 << 53

    /// Where a `serve` start numbers its records: the service's clock in microseconds since the
    /// epoch. The log lives in memory (the service VM keeps no state), so a restart forgets the
    /// last number; starting at the clock keeps numbers increasing across restarts, and a cursor
    /// a follower kept from the last instance is below every new record (it misses none of
    /// them). Below 2⁵³ until the year 2255 (exact in any JSON reader). A clock set back below
    /// the last instance's numbers is caught by `read`: a cursor past every record this log
    /// issued starts from its first.
    public static func startOfNumbering() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        // Saturating: a clock past 2⁵³ µs (the year 2255) numbers from 2⁵³.
        let seconds = UInt64(min(max(0, Int64(ts.tv_sec)), Int64(highestFirstSequenceNumber / 1_000_000)))
        let micros = seconds * 1_000_000 + UInt64(max(0, min(999_999, ts.tv_nsec / 1000)))
        return min(max(1, micros), highestFirstSequenceNumber)
    }

    // MARK: Producers

    public func record(_ v: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool {
        let line = JSON.object([
            ("time", .string(clock())),
            ("event", .string("verdict")),
            ("guest", .string(Self.bounded(guestID, AuditLimits.recordWordBytes))),
            ("request_sha256", .string(Hex.encode(v.requestDigest))),
            ("module", .string(Self.bounded(v.moduleName, AuditLimits.recordWordBytes))),
            ("module_sha256", .string(Hex.encode(v.moduleDigest))),
            ("decision", .string(v.decision == .allow ? "allow" : "deny")),
            ("audit_only", .bool(v.auditOnly)),
            ("reason", .string(v.reason.name)),
            ("message", .string(Self.bounded(v.message, AuditLimits.recordMessageBytes))),
            ("policy_id", .string(v.policyID)),
            ("policy_version", .uint(v.policyVersion)),
        ]).serialized()
        return enqueue(line, overflow: policy.auditOverflow, force: false)
    }

    /// `s`, or when longer than `limit` UTF-8 bytes its first scalars up to that and a marker
    /// with its whole length and SHA-256 (the evidence stays checkable against the request).
    /// A record's words are the peer's (wire strings of up to 64 KiB, each control character 6
    /// bytes of JSON): bounded so a record stays a string field of `audit-read-reply`
    /// (< 64 KiB), which `policy audit` can carry out; no real module or guest name comes near.
    static func bounded(_ s: String, _ limit: Int) -> String {
        let n = s.utf8.count
        guard n > limit else { return s }
        let digest = Array(s.utf8).withUnsafeBytes { Digest.sha256($0) }
        return s.prefix(utf8Bytes: limit) + "…[\(n) bytes, sha256:\(Hex.encode(digest.bytes))]"
    }

    /// A policy activation (boot, push): always recorded. A refused push: counted always,
    /// recorded at most `refusedPushRecordsPerSecond` (after a burst of `refusedPushBurst`), and
    /// retained apart from verdicts; each recorded refusal says how many were suppressed before it.
    public func recordPolicyEvent(_ event: String, policy: Policy, previous: Policy?, detail: String) {
        var detail = detail
        let refused = event == "policy-push-refused"
        if refused {
            monitor.lock()
            _refusedPushes &+= 1
            let now = NIODeadline.now()
            let elapsed = Double((now - refusedRefill).nanoseconds) / 1e9
            refusedRefill = now
            refusedTokens = min(AuditLimits.refusedPushBurst, refusedTokens + elapsed * AuditLimits.refusedPushRecordsPerSecond)
            guard refusedTokens >= 1 else {
                _refusedSuppressed &+= 1
                monitor.unlock()
                return
            }
            refusedTokens -= 1
            let suppressed = _refusedSuppressed
            _refusedSuppressed = 0
            monitor.unlock()
            if suppressed > 0 { detail += " (\(suppressed) earlier refusal(s) counted, not recorded: rate limit)" }
        } else {
            // An activation carries the refusals suppressed since the last recorded one: a burst's
            // tail is not left to the next refusal, which may never come (round 13).
            let suppressed = takeSuppressedRefusals()
            if suppressed > 0 { detail += " (\(suppressed) refused push(es) before it counted, not recorded: rate limit)" }
        }
        let line = JSON.object([
            ("time", .string(clock())),
            ("event", .string(event)),
            ("policy_id", .string(policy.id)),
            ("policy_version", .uint(policy.version)),
            ("previous_policy_id", previous.map { .string($0.id) } ?? .null),
            ("previous_policy_version", previous.map { .uint($0.version) } ?? .null),
            ("policy_sha256", policy.source.map { .string(Hex.encode(PolicySummary.sha256($0))) } ?? .null),
            ("detail", .string(Self.bounded(detail, AuditLimits.recordMessageBytes))),
        ]).serialized()
        _ = enqueue(line, overflow: .block, force: true, refusedPush: refused)
    }

    /// The refused pushes counted but not recorded since the last recorded one; the count restarts.
    private func takeSuppressedRefusals() -> UInt64 {
        monitor.lock()
        defer { monitor.unlock() }
        let n = _refusedSuppressed
        _refusedSuppressed = 0
        return n
    }

    /// At shutdown: the refused pushes a burst left unrecorded get one record
    /// (`policy-push-refusals-unrecorded`, detail the count), so none is lost silently with the
    /// process. Called by `close` before the writer stops.
    private func recordSuppressedRefusals() {
        let n = takeSuppressedRefusals()
        guard n > 0 else { return }
        let line = JSON.object([
            ("time", .string(clock())),
            ("event", .string("policy-push-refusals-unrecorded")),
            ("count", .uint(n)),
            ("detail", .string("\(n) refused policy push(es) after the last recorded refusal were counted, not recorded (rate limit)")),
        ]).serialized()
        _ = enqueue(line, overflow: .block, force: true, refusedPush: true)
    }

    private func enqueue(_ line: String, overflow: AuditOverflow, force: Bool, refusedPush: Bool = false) -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        let size = line.utf8.count
        // Full by count or by bytes (an empty queue always takes one record).
        func full() -> Bool { queue.count >= capacity || (!queue.isEmpty && queueBytes + size > AuditLimits.queueBytes) }
        if !force && full() {
            switch overflow {
            case .drop:
                _dropped &+= 1
                return true
            case .block:
                let deadline = Monitor.deadline(after: blockTimeout)
                while full() && !stopping && !waitsRefused {
                    if !monitor.wait(until: deadline) { break }
                }
                guard !full() else { return false }
            }
        }
        // The record carries its sequence number (last, so every record still begins
        // `{"time":`): the file and `audit-read` number it alike, so a reader of the file can
        // tell where an `audit-read` page starts and that no accepted record is missing.
        let numbered = String(line.dropLast()) + ",\"seq\":\(nextSeq)}"
        let numberedSize = numbered.utf8.count
        queue.append(numbered)
        queueBytes += numberedSize
        if refusedPush { refusedRing.append((nextSeq, numbered)) } else { retain(numbered, size: numberedSize) }
        nextSeq &+= 1
        if refusedRing.count > AuditLimits.retainedRefusedPushes * 2 {
            refusedRing.removeFirst(refusedRing.count - AuditLimits.retainedRefusedPushes)
        }
        _accepted &+= 1
        monitor.broadcast()
        return true
    }

    /// Appends a verdict record to the ring and evicts the oldest while more than `retained`
    /// records or `AuditLimits.retainedBytes` bytes are held (the newest stays). Evicted text is
    /// released at once; the array is compacted once half of it is evicted. Caller holds `monitor`.
    private func retain(_ line: String, size: Int) {
        ring.append((nextSeq, line))
        ringBytes += size
        while ring.count - ringHead > 1 && (ring.count - ringHead > retained || ringBytes > AuditLimits.retainedBytes) {
            ringBytes -= ring[ringHead].1.utf8.count
            ring[ringHead].1 = ""
            ringHead += 1
        }
        if ringHead >= 1024 && ringHead * 2 >= ring.count {
            ring.removeFirst(ringHead)
            ringHead = 0
        }
    }

    // MARK: Consumer

    private func drain() {
        var pause = AuditLimits.retryPauseSeconds.lowerBound
        while true {
            monitor.lock()
            while queue.isEmpty && !stopping { _ = monitor.wait(until: nil) }
            if queue.isEmpty && stopping {
                writerRunning = false
                monitor.unlock()
                writerDone.signal()
                return
            }
            // Every queued record, from `headWritten` bytes into the first. They stay queued
            // (held against the bounds) until written.
            let batch = queue
            let skip = headWritten
            monitor.unlock()

            var bytes: [UInt8] = []
            for l in batch { bytes += l.utf8; bytes.append(0x0A) }
            var written = bytes.count
            var failure: String? = nil
            if let writer, skip < bytes.count {
                do { try writer(skip == 0 ? bytes : Array(bytes[skip...])) } catch {
                    written = skip + ((error as? AuditWriteFailure)?.written ?? 0)
                    failure = "\(error)"
                }
            }
            monitor.lock()
            // The records written whole leave the queue; a partly written one stays at its head.
            var consumed = 0, n = 0
            for l in batch {
                let length = l.utf8.count + 1
                guard consumed + length <= written else { break }
                consumed += length
                n += 1
            }
            if n > 0 {
                queueBytes -= batch[..<n].reduce(0) { $0 + $1.utf8.count }
                queue.removeFirst(n)
            }
            headWritten = written - consumed
            if let failure {
                _writeErrors &+= 1
                _lastWriteError = failure
            } else {
                _lastWriteError = nil
            }
            monitor.broadcast()  // room in the queue: wake blocked producers
            if failure != nil {
                // A stopping service waits for no sink that refuses: what is queued is lost
                // at exit, counted (`close`).
                if stopping {
                    writerRunning = false
                    monitor.unlock()
                    writerDone.signal()
                    return
                }
                // The whole pause: a record queued meanwhile wakes the monitor, not the sink.
                let deadline = Monitor.deadline(after: pause)
                while !stopping { if !monitor.wait(until: deadline) { break } }
                pause = min(pause * 2, AuditLimits.retryPauseSeconds.upperBound)
            } else {
                pause = AuditLimits.retryPauseSeconds.lowerBound
            }
            monitor.unlock()
        }
    }

    /// The service is stopping: verdicts waiting for queue room are denied now (fail closed), and
    /// so is every later one that finds the queue full; the writer keeps writing.
    public func refuseWaits() {
        monitor.lock()
        waitsRefused = true
        monitor.broadcast()
        monitor.unlock()
    }

    /// Flush what is queued and stop the writer (shutdown). Waits at most `timeout` seconds for a
    /// stalled writer (a hung disk must not hang shutdown); blocked producers are released and
    /// their verdicts denied (fail closed). Returns the records that were accepted but never
    /// written whole (0 when the writer emptied the queue): a stalled or refusing sink loses them
    /// at exit, and the caller says so.
    @discardableResult
    public func close(timeout: Double = 10) -> Int {
        recordSuppressedRefusals()
        monitor.lock()
        stopping = true
        monitor.broadcast()
        let running = writerRunning
        monitor.unlock()
        if running { _ = writerDone.wait(timeout: .now() + timeout) }
        monitor.lock()
        defer { monitor.unlock() }
        return queue.count  // what the writer left: lost at exit
    }

    // MARK: Readers

    public struct Counters: Sendable, Equatable {
        public var accepted: UInt64
        public var dropped: UInt64
        /// Failed writes to the sink (each retried: its records stay queued).
        public var writeErrors: UInt64
        /// Records accepted and not yet written whole to the sink.
        public var queued: Int
        /// Policy pushes refused since start (all of them, recorded or not).
        public var refusedPushes: UInt64 = 0
        /// Why the sink refused the last write, while it still does (nil once a write succeeds).
        public var lastWriteError: String? = nil
    }

    public var counters: Counters {
        monitor.lock()
        defer { monitor.unlock() }
        return Counters(accepted: _accepted, dropped: _dropped, writeErrors: _writeErrors, queued: queue.count,
                        refusedPushes: _refusedPushes, lastWriteError: _lastWriteError)
    }

    public struct Page: Sendable {
        public var records: [String]
        /// The sequence number to ask for next (`after_seq` = next - 1).
        public var nextSeq: UInt64
        /// The oldest record still retained (a reader asking for older ones missed some).
        public var oldestSeq: UInt64
        public var dropped: UInt64
        /// True when retained records after this page remain (the page hit a count or byte cap).
        public var more: Bool
        /// The first number this log issued.
        public var firstSeq: UInt64
    }

    /// Records with sequence number > `afterSeq`, oldest first: at most `limit` records and at
    /// most `maximumBytes` bytes of record text (the admin port passes at most
    /// `AuditLimits.maximumBytesPerRead`; a page holds at least one record when one is due, so a
    /// reader always makes progress).
    /// Verdicts and refused pushes are retained apart and merged here by sequence number.
    public func read(after afterSeq: UInt64, limit: Int, maximumBytes: Int = .max) -> Page {
        monitor.lock()
        defer { monitor.unlock() }
        // A cursor past every record this log issued is no cursor of this log: a follower's from
        // before a restart (a clock set back), or a peer's guess. It reads from the first record,
        // never skipping the records this log issued before it asked.
        let afterSeq = afterSeq >= nextSeq ? firstSeq - 1 : afterSeq
        let keep = ring[ringHead...]
        let keepRefused = refusedRing.suffix(AuditLimits.retainedRefusedPushes)
        let oldest = keep.first?.0 ?? nextSeq
        let n = min(max(0, limit), AuditLimits.maximumRecordsPerRead)
        let byteCap = max(0, maximumBytes)
        // Both rings are in ascending sequence order: binary-search the start, then merge.
        var i = keep.partitioningIndex { $0.0 <= afterSeq }, j = keepRefused.partitioningIndex { $0.0 <= afterSeq }
        var records: [String] = []
        var bytes = 0
        var last: UInt64?
        while records.count < n {
            let pick: (UInt64, String)
            if i < keep.endIndex && (j == keepRefused.endIndex || keep[i].0 < keepRefused[j].0) {
                pick = keep[i]
            } else if j < keepRefused.endIndex {
                pick = keepRefused[j]
            } else { break }
            let size = pick.1.utf8.count
            if !records.isEmpty && bytes + size > byteCap { break }
            if pick.0 == keep[safe: i]?.0 { i += 1 } else { j += 1 }
            records.append(pick.1)
            bytes += size
            last = pick.0
        }
        let more = i < keep.endIndex || j < keepRefused.endIndex
        // `after_seq` is any u64 a keyless admin-port peer sends: `afterSeq + 1` trapped at 2⁶⁴−1
        // and killed the verifier. A cursor at the last record issued continues from the log's
        // own next sequence number (`nextSeq` ≥ 1, so `nextSeq - 1` cannot wrap); one past it
        // was moved to the first record above.
        let next = last.map { $0 + 1 } ?? max(min(afterSeq, nextSeq - 1) + 1, oldest)
        return Page(records: records, nextSeq: next, oldestSeq: oldest, dropped: _dropped, more: more, firstSeq: firstSeq)
    }

    /// Waits until every record accepted so far has been handed to the writer (tests, shutdown).
    public func flush(timeout: Double = 5) {
        monitor.lock()
        defer { monitor.unlock() }
        let deadline = Monitor.deadline(after: timeout)
        while !queue.isEmpty { if !monitor.wait(until: deadline) { break } }
    }
}

extension RandomAccessCollection {
    fileprivate subscript(safe i: Index) -> Element? { i < endIndex ? self[i] : nil }
}

// MARK: - Time

public enum AuditTime {
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T13:02:56.123Z` (no Foundation).
    @Sendable public static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return format(seconds: Int64(ts.tv_sec), milliseconds: Int(ts.tv_nsec / 1_000_000))
    }

    public static func format(seconds: Int64, milliseconds: Int) -> String {
        // Civil-from-days (H. Hinnant), valid for the proleptic Gregorian calendar.
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secs = seconds - days * 86400
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func p(_ v: Int64, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return "\(p(y, 4))-\(p(m, 2))-\(p(d, 2))T\(p(secs / 3600, 2)):\(p(secs % 3600 / 60, 2)):\(p(secs % 60, 2)).\(p(Int64(milliseconds), 3))Z"
    }
}

// MARK: - Plumbing

/// A pthread mutex + condition variable (NIOLock has no condition with a deadline).
final class Monitor: @unchecked Sendable {
    // @unchecked: the pthread objects are the synchronisation.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    func broadcast() { pthread_cond_broadcast(cond) }

    static func deadline(after seconds: Double) -> timespec {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let ns = Int(ts.tv_nsec) + Int((seconds - seconds.rounded(.down)) * 1e9)
        ts.tv_sec += Int(seconds.rounded(.down)) + ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        return ts
    }

    /// Waits for a broadcast (with the lock held). Returns false when `deadline` passed.
    func wait(until deadline: timespec?) -> Bool {
        guard var d = deadline else { pthread_cond_wait(cond, mutex); return true }
        return pthread_cond_timedwait(cond, mutex, &d) != ETIMEDOUT
    }
}

/// An owned file descriptor with a write-all loop.
final class FileDescriptorBox: @unchecked Sendable {
    // @unchecked: only the audit writer (one thread) writes.
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    func writeAll(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }  // Safe: non-empty (off < count).
            if n < 0 {
                if errno == EINTR { continue }
                throw AuditWriteFailure(written: off, errno: errno)
            }
            off += n
        }
    }
}

/// A write to the audit sink that failed after `written` bytes of what it was given.
public struct AuditWriteFailure: Error, CustomStringConvertible {
    public let written: Int
    public let errno: Int32
    public init(written: Int, errno: Int32) { self.written = written; self.errno = errno }
    public var description: String { "audit write failed after \(written) bytes: \(String(cString: strerror(errno))) (errno \(errno))" }
}
