// SPDX-License-Identifier: Apache-2.0
//
// One virtio-vsock stream connection between a guest port and a host stream (FC `csm/connection.rs`).
//
// Protocol primer (virtio 1.2 § 5.10.6):
//   - Opening: the side that connects sends REQUEST; the other answers RESPONSE (accept) or RST.
//   - Data: RW packets. Each side advertises, in every header, `buf_alloc` (its receive buffer)
//     and `fwd_cnt` (bytes it has consumed so far, wrapping u32). A sender may have at most
//     `peer_buf_alloc − (tx_cnt − peer_fwd_cnt)` bytes in flight; CREDIT_REQUEST asks for a fresh
//     CREDIT_UPDATE. A peer that sends beyond the credit we gave it is killed (RST).
//   - Closing: SHUTDOWN with flags RCV (1) / SEND (2); RST ends the connection at once. After
//     SHUTDOWN with both flags the other side answers RST.
//
//     host-initiated:  [LocalInit] --REQUEST→ guest --RESPONSE→ [Established] ("OK <port>\n" to host)
//     guest-initiated: guest --REQUEST→ connect(<uds>_<port>) → [Established] --RESPONSE→ guest
//     [Established] --host EOF+hangup→ SHUTDOWN(RCV|SEND) → [Closing] --RST or timeout→ removed
//     any state --bad packet / credit overrun→ [Killed] --RST→ removed
//
// The connection never touches guest memory: the muxer hands it copied packets and takes packets
// it builds. Every counter is a wrapping u32.

#if canImport(Glibc)
import _ExecGateInternals
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// FC `ConnMapKey`.
public struct ConnectionKey: Hashable, Sendable, CustomStringConvertible {
    public var localPort: UInt32
    public var peerPort: UInt32
    public init(localPort: UInt32, peerPort: UInt32) { self.localPort = localPort; self.peerPort = peerPort }
    public var description: String { "\(localPort)<->\(peerPort)" }
}

public final class VsockConnection {
    public enum State: Equatable {
        /// We sent REQUEST (host-initiated) and wait for RESPONSE until the deadline.
        case localInit(deadline: UInt64)
        case established
        /// We sent SHUTDOWN(RCV|SEND) and wait for the guest's RST until the deadline.
        case closing(deadline: UInt64)
        /// RST is (or was) queued; the muxer removes the connection once it is sent.
        case killed
    }

    /// Control packets owed to the guest (FC `PendingRxSet`), sent RST first.
    public struct Pending: OptionSet {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let rst = Pending(rawValue: 1)
        public static let request = Pending(rawValue: 2)
        public static let response = Pending(rawValue: 4)
        public static let shutdown = Pending(rawValue: 8)
        public static let creditUpdate = Pending(rawValue: 16)
        public static let creditRequest = Pending(rawValue: 32)
    }

    public let key: ConnectionKey
    public let guestCID: UInt64
    public let stream: VsockStream
    public private(set) var state: State
    public private(set) var pending: Pending
    public let hostInitiated: Bool
    /// Why it was killed (diagnostics, tests).
    public private(set) var killReason: String?

    // Guest → host.
    private var toHost = ByteQueue()
    private var rxCnt: UInt32 = 0
    private var fwdCnt: UInt32 = 0
    private var lastFwdCntSent: UInt32 = 0
    private var peerShutdown: UInt32 = 0
    private var hostWriteShut = false
    // Host → guest.
    private var txCnt: UInt32 = 0
    private var peerBufAlloc: UInt32 = 0
    private var peerFwdCnt: UInt32 = 0
    private var creditRequested = false
    private var shutdownFlagsToSend: UInt32 = 0
    /// Bytes the host sent right after its CONNECT line: delivered before anything read later.
    private var hostPrefix: [UInt8]
    /// poll said the host stream has data (or hung up); cleared when a read would block.
    public var hostReadable = false
    /// The host closed both directions (POLLHUP): stop polling it, read what is left.
    public private(set) var hostHungUp = false
    /// When a hung-up connection ends, whatever the guest's credit: `shutdownTimeoutMillis` after
    /// the hang-up. What is left of the host's bytes (and its EOF, then SHUTDOWN) goes to the
    /// guest only as its credit allows; a guest that never grants credit kept the connection (a
    /// table slot and a host descriptor) forever (MuxerRound3Tests). The kernel's
    /// virtio_transport_close() resets a closed socket after VSOCK_CLOSE_TIMEOUT whether or not
    /// the peer took its data (close_work → virtio_transport_close_timeout() → virtio_transport_reset()).
    private var hangupDeadline: UInt64?
    public private(set) var hostEOF = false

    /// A host-initiated connection: REQUEST is queued.
    public init(hostInitiated key: ConnectionKey, guestCID: UInt64, stream: VsockStream, prefix: [UInt8], now: UInt64) {
        self.key = key; self.guestCID = guestCID; self.stream = stream; self.hostInitiated = true
        self.state = .localInit(deadline: now + UInt64(VsockLimits.connectTimeoutMillis) * 1_000_000)
        self.pending = [.request]
        self.hostPrefix = prefix
    }

    /// A guest-initiated connection accepted by the host: RESPONSE is queued.
    public init(guestInitiated request: VsockHeader, stream: VsockStream) {
        self.key = ConnectionKey(localPort: request.dstPort, peerPort: request.srcPort)
        self.guestCID = request.srcCID; self.stream = stream; self.hostInitiated = false
        self.state = .established
        self.pending = [.response]
        self.peerBufAlloc = request.bufAlloc
        self.peerFwdCnt = request.fwdCnt
        self.hostPrefix = []
    }

    public var isRemovable: Bool { state == .killed && !pending.contains(.rst) }

    /// Bytes we may still send the guest.
    public var peerCredit: UInt32 {
        let inFlight = txCnt &- peerFwdCnt
        return inFlight >= peerBufAlloc ? 0 : peerBufAlloc &- inFlight
    }

    public var deadline: UInt64? {
        let own: UInt64?
        switch state {
        case .localInit(let d), .closing(let d): own = d
        case .established: own = nil
        case .killed: return nil
        }
        guard let h = hangupDeadline else { return own }
        return min(own ?? h, h)
    }

    // MARK: - Guest → host (send_pkt in FC's naming is the guest's direction; here: `receive`)

    /// Applies one packet from the guest. Afterwards check `state`/`pending`; the muxer removes
    /// killed connections once their RST is out and closed ones at once (`.rst` from the guest).
    /// - Returns: false when the connection is finished and must be removed now (guest sent RST).
    @discardableResult
    public func receive(_ packet: TxPacket, now: UInt64) -> Bool {
        let h = packet.header
        if h.op == .rst {
            stream.close()
            state = .killed
            pending = []
            return false
        }
        if state == .killed { return true }  // Our RST is on its way; ignore the rest.
        // Credit info rides on every packet. fwd_cnt may only advance, and never past what we sent.
        if case .localInit = state {} else {
            guard (txCnt &- h.fwdCnt) <= (txCnt &- peerFwdCnt) else {
                kill("fwd_cnt \(h.fwdCnt) claims more than was sent (tx_cnt \(txCnt), previous \(peerFwdCnt))"); return true
            }
        }
        peerBufAlloc = h.bufAlloc
        peerFwdCnt = h.fwdCnt
        if peerCredit > 0 { creditRequested = false }

        switch state {
        case .localInit:
            if h.op == .response {
                state = .established
                let ok = Array("OK \(key.localPort)\n".utf8)
                // A fresh socket's send buffer is empty: 14 bytes never block. If they do, give up.
                guard case .bytes(ok.count) = ok.withUnsafeBytes({ stream.write($0) }) else {
                    kill("host client gone before OK"); return true
                }
                if !hostPrefix.isEmpty { hostReadable = true }
            } else {
                kill("\(h.op) while waiting for RESPONSE")
            }
        case .established, .closing:
            switch h.op {
            case .rw:
                receiveData(packet)
            case .creditUpdate:
                break  // Applied above.
            case .creditRequest:
                pending.insert(.creditUpdate)
            case .shutdown:
                peerShutdown |= h.flags & (VsockConstants.shutdownReceive | VsockConstants.shutdownSend)
                afterPeerShutdown()
            default:
                kill("\(h.op) on an established connection")
            }
        case .killed:
            break
        }
        return true
    }

    private func receiveData(_ packet: TxPacket) {
        let len = UInt32(packet.payload.count)  // ≤ 64 KiB (checked by the parser).
        guard peerShutdown & VsockConstants.shutdownSend == 0 else { kill("data after SHUTDOWN(SEND)"); return }
        // The guest may have `buf_alloc − (rx_cnt − fwd_cnt as last advertised)` bytes outstanding.
        let outstanding = rxCnt &- lastFwdCntSent
        guard outstanding <= VsockLimits.connBufferSize, len <= VsockLimits.connBufferSize - outstanding else {
            kill("credit overrun: \(len) bytes with \(outstanding) of \(VsockLimits.connBufferSize) outstanding"); return
        }
        rxCnt &+= len
        if len == 0 { return }
        toHost.append(packet.payload)
        flushToHost()
    }

    private func afterPeerShutdown() {
        if peerShutdown & VsockConstants.shutdownSend != 0, toHost.isEmpty, !hostWriteShut {
            hostWriteShut = true
            stream.shutdownWrite()
        }
        if peerShutdown == VsockConstants.shutdownReceive | VsockConstants.shutdownSend, toHost.isEmpty {
            // Both directions done: answer with RST (Linux waits for it).
            kill(nil)
        } else if peerShutdown == VsockConstants.shutdownReceive | VsockConstants.shutdownSend, state == .established {
            state = .closing(deadline: MonotonicClock.nanoseconds() + UInt64(VsockLimits.shutdownTimeoutMillis) * 1_000_000)
        }
    }

    /// Writes buffered guest data to the host stream; updates credit. Call when the stream is writable.
    public func flushToHost() {
        guard state != .killed else { return }
        while !toHost.isEmpty {
            let r = toHost.withReadable { stream.write($0) }
            switch r {
            case .bytes(let n):
                toHost.consume(n)
                fwdCnt &+= UInt32(n)
            case .wouldBlock:
                return noteCredit()
            case .eof, .failed:
                kill("host stream write failed"); return
            }
        }
        noteCredit()
        if peerShutdown != 0 { afterPeerShutdown() }
    }

    private func noteCredit() {
        let unadvertised = fwdCnt &- lastFwdCntSent
        guard unadvertised > 0 else { return }
        let guestViewFree = VsockLimits.connBufferSize &- (rxCnt &- lastFwdCntSent)
        if unadvertised >= VsockLimits.creditUpdateThreshold || guestViewFree < VsockLimits.creditUpdateThreshold {
            pending.insert(.creditUpdate)
        }
    }

    public var wantsHostWrite: Bool { !toHost.isEmpty && state != .killed }
    public var bufferedToHost: Int { toHost.count }

    /// Poll the host stream for input: only when there is credit to forward what arrives.
    public var wantsHostRead: Bool {
        state == .established && !hostEOF && !hostHungUp && peerShutdown & VsockConstants.shutdownReceive == 0 && peerCredit > 0
    }

    /// poll reported POLLHUP/POLLERR on the host stream at `now`.
    public func noteHostHangup(now: UInt64 = MonotonicClock.nanoseconds()) {
        hostHungUp = true
        hostReadable = true  // Read what is left, then EOF.
        if hangupDeadline == nil { hangupDeadline = now + UInt64(VsockLimits.shutdownTimeoutMillis) * 1_000_000 }
        if hostEOF, state == .established {
            // Its EOF was read before (a half-close: SHUTDOWN(SEND) went out) and now it is gone
            // both ways (or the guest's SHUTDOWN(SEND) made us shut the other half): what the
            // kernel's virtio_transport_close() sends for a socket released without its peer's
            // full SHUTDOWN, SHUTDOWN(RCV|SEND), and the guest's RST is awaited as after any
            // close (HostHalfCloseTests).
            shutdownFlagsToSend = VsockConstants.shutdownReceive | VsockConstants.shutdownSend
            pending.insert(.shutdown)
            state = .closing(deadline: now + UInt64(VsockLimits.shutdownTimeoutMillis) * 1_000_000)
        }
    }

    // MARK: - Host → guest

    /// Whether `nextPacket` may produce something.
    public var hasPendingRx: Bool {
        if !pending.isEmpty { return true }
        // Data waits for credit; once credit is gone, one CREDIT_REQUEST goes out, then silence
        // until the guest's next header brings credit.
        return canSendData && (hostReadable || !hostPrefix.isEmpty) && (peerCredit > 0 || !creditRequested)
    }

    private var canSendData: Bool {
        state == .established && !hostEOF && peerShutdown & VsockConstants.shutdownReceive == 0
    }

    private func header(_ op: VsockOp, len: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader {
        lastFwdCntSent = fwdCnt
        return VsockHeader(srcCID: VsockConstants.hostCID, dstCID: guestCID, srcPort: key.localPort, dstPort: key.peerPort,
                           op: op, len: len, flags: flags, bufAlloc: VsockLimits.connBufferSize, fwdCnt: fwdCnt)
    }

    /// The next packet for the guest, its payload written to `payload` (capacity = max length).
    /// nil when nothing is ready (e.g. the host read would block).
    public func nextPacket(payload: UnsafeMutableRawBufferPointer, now: UInt64) -> (VsockHeader, Int)? {
        if pending.contains(.rst) { pending = []; return (header(.rst), 0) }
        if pending.contains(.request) { pending.remove(.request); return (header(.request), 0) }
        if pending.contains(.response) { pending.remove(.response); return (header(.response), 0) }
        if canSendData {
            let credit = Int(peerCredit)
            let room = min(payload.count, credit, VsockLimits.rxPacketChunk)
            if room > 0 && !hostPrefix.isEmpty {
                let n = min(room, hostPrefix.count)
                hostPrefix.withUnsafeBytes { payload.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }  // Safe: n ≤ both.
                hostPrefix.removeFirst(n)
                return dataPacket(n)
            }
            if room > 0 && hostReadable {
                switch stream.read(into: UnsafeMutableRawBufferPointer(rebasing: payload[0..<room])) {
                case .bytes(let n): return dataPacket(n)
                case .wouldBlock: hostReadable = false
                case .eof: hostReadable = false; hostSentEOF(now: now)
                case .failed: hostReadable = false; kill("host stream read failed"); pending = []; return (header(.rst), 0)
                }
            } else if room == 0 && (hostReadable || !hostPrefix.isEmpty) && !creditRequested {
                creditRequested = true
                pending.remove(.creditRequest)
                return (header(.creditRequest), 0)
            }
        }
        if pending.contains(.shutdown) {
            pending.remove(.shutdown)
            let flags = shutdownFlagsToSend
            return (header(.shutdown, flags: flags), 0)
        }
        if pending.contains(.creditUpdate) { pending.remove(.creditUpdate); return (header(.creditUpdate), 0) }
        if pending.contains(.creditRequest) { pending.remove(.creditRequest); return (header(.creditRequest), 0) }
        return nil
    }

    private func dataPacket(_ n: Int) -> (VsockHeader, Int) {
        txCnt &+= UInt32(n)
        pending.remove(.creditUpdate)  // This header carries fwd_cnt.
        return (header(.rw, len: UInt32(n)), n)
    }

    private func hostSentEOF(now: UInt64) {
        hostEOF = true
        if hostHungUp {
            // Gone both ways: FC sends SHUTDOWN(RCV|SEND) and waits for the guest's RST.
            shutdownFlagsToSend = VsockConstants.shutdownReceive | VsockConstants.shutdownSend
            state = .closing(deadline: now + UInt64(VsockLimits.shutdownTimeoutMillis) * 1_000_000)
        } else {
            // Half-closed: the guest sees EOF and may still answer.
            shutdownFlagsToSend = VsockConstants.shutdownSend
        }
        pending.insert(.shutdown)
    }

    /// Ends the connection with RST (nil reason: an orderly close after the guest's SHUTDOWN).
    public func kill(_ reason: String?) {
        if reason != nil { killReason = reason }
        state = .killed
        pending = [.rst]
        toHost.removeAll()
        stream.close()
    }

    /// Called when the connection's deadline passed.
    public func expire() {
        switch state {
        case .localInit: kill(hostHungUp ? "host hung up before the guest answered REQUEST" : "guest did not answer REQUEST within \(VsockLimits.connectTimeoutMillis) ms")
        case .closing: kill(nil)
        case .established:
            // Only a hang-up deadline expires an established connection.
            kill("host hung up \(VsockLimits.shutdownTimeoutMillis) ms ago and the guest has not taken the rest (no credit)")
        case .killed: break
        }
    }
}

/// A FIFO of bytes with a read offset (no per-byte work, amortised compaction).
struct ByteQueue {
    private var storage: [UInt8] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ bytes: [UInt8]) {
        if head > 0 && head >= storage.count / 2 { storage.removeFirst(head); head = 0 }
        storage.append(contentsOf: bytes)
    }

    func withReadable<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        storage.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[head...])) }
    }

    mutating func consume(_ n: Int) {
        head += n
        if head == storage.count { storage.removeAll(keepingCapacity: true); head = 0 }
    }

    mutating func removeAll() { storage = []; head = 0 }
}

