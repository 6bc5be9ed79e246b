// SPDX-License-Identifier: Apache-2.0
//
// Routes packets between the guest and host streams (FC `unix/muxer.rs`):
//   - guest → host: by `ConnectionKey(local_port: dst_port, peer_port: src_port)`; a REQUEST for
//     an unknown key opens a host stream through `connector` (`<uds>_<port>`), anything else for an
//     unknown key is answered with RST (an RST is never answered);
//   - host → guest: a round-robin FIFO of connections with something to send, plus a bounded queue
//     of orphan RSTs (beyond `VsockLimits.maxPendingOrphanRST` they are dropped: an RST flood costs
//     nothing and grows nothing).
// A bad packet kills at most its own connection.

import _ExecGateInternals

public final class VsockMuxer {
    public let guestCID: UInt64
    /// Opens the host end for a guest-initiated connection to host port P (nil: nobody listens → RST).
    let connector: (UInt32) -> VsockStream?
    public private(set) var connections: [ConnectionKey: VsockConnection] = [:]
    private var rxQueue: [ConnectionKey] = []
    private var rxHead = 0
    private var queued: Set<ConnectionKey> = []
    private var orphanRST: [VsockHeader] = []
    private var nextHostPort = VsockLimits.firstHostPort
    /// Counters (FC METRICS): tests and the bench read them.
    public private(set) var stats = Stats()

    public struct Stats: Equatable {
        public var packetsFromGuest = 0
        public var packetsToGuest = 0
        public var rejectedPackets = 0
        public var killedConnections = 0
        public var droppedOrphanRST = 0
    }

    /// Live connections at most (`VsockLimits.maxConnections`, less when the descriptor limit is
    /// lower: `VsockBackend.descriptorPlan`).
    public let maxConnections: Int

    public init(guestCID: UInt64, maxConnections: Int = VsockLimits.maxConnections, connector: @escaping (UInt32) -> VsockStream?) {
        self.guestCID = guestCID
        self.maxConnections = maxConnections
        self.connector = connector
    }

    // MARK: - Guest → host

    /// One packet from the guest's tx queue.
    public func receive(_ packet: TxPacket, now: UInt64) {
        stats.packetsFromGuest += 1
        let h = packet.header
        do {
            try packet.validateAddressing(guestCID: guestCID)
        } catch {
            stats.rejectedPackets += 1
            // Wrong CIDs or type: answer RST to that (claimed) port pair, to the real guest CID.
            if h.op != .rst { queueOrphanRST(for: h) }
            return
        }
        let key = ConnectionKey(localPort: h.dstPort, peerPort: h.srcPort)
        if let conn = connections[key] {
            let keep = conn.receive(packet, now: now)
            if !keep { remove(key) } else { afterChange(conn) }
            return
        }
        switch h.op {
        case .rst:
            return  // Nothing to reset; never answer an RST.
        case .request:
            guard connections.count < maxConnections, let stream = connector(h.dstPort) else {
                queueOrphanRST(for: h); return
            }
            let conn = VsockConnection(guestInitiated: h, stream: stream)
            connections[key] = conn
            schedule(key)
        default:
            queueOrphanRST(for: h)
        }
    }

    func noteRejected() { stats.rejectedPackets += 1 }
    func noteKilled(_ c: VsockConnection) { afterChange(c) }
    func queueOrphanRSTPublic(for h: VsockHeader) { queueOrphanRST(for: h) }

    private func queueOrphanRST(for h: VsockHeader) {
        guard orphanRST.count < VsockLimits.maxPendingOrphanRST else { stats.droppedOrphanRST += 1; return }
        orphanRST.append(VsockHeader(srcCID: VsockConstants.hostCID, dstCID: guestCID, srcPort: h.dstPort, dstPort: h.srcPort, op: .rst))
    }

    // MARK: - Host side

    /// A host client asked (`CONNECT <port>`) for guest port `port`. Returns the local port, or nil
    /// when the connection table is full (the caller closes the stream).
    public func connectFromHost(stream: VsockStream, guestPort: UInt32, prefix: [UInt8], now: UInt64) -> UInt32? {
        guard connections.count < maxConnections else { return nil }
        var key = ConnectionKey(localPort: nextHostPort, peerPort: guestPort)
        while connections[key] != nil { advancePort(); key.localPort = nextHostPort }
        advancePort()
        let conn = VsockConnection(hostInitiated: key, guestCID: guestCID, stream: stream, prefix: prefix, now: now)
        connections[key] = conn
        schedule(key)
        return key.localPort
    }

    private func advancePort() {
        nextHostPort = nextHostPort == UInt32.max ? VsockLimits.firstHostPort : nextHostPort + 1
    }

    /// The host stream of `key` is readable (or hung up, at `now`).
    public func hostReadable(_ key: ConnectionKey, hangup: Bool, now: UInt64 = MonotonicClock.nanoseconds()) {
        guard let c = connections[key] else { return }
        if hangup { c.noteHostHangup(now: now) } else { c.hostReadable = true }
        afterChange(c)
    }

    /// The host stream of `key` is writable.
    public func hostWritable(_ key: ConnectionKey) {
        guard let c = connections[key] else { return }
        c.flushToHost()
        afterChange(c)
    }

    /// Expires connections whose deadline passed; returns the earliest remaining deadline.
    public func expire(now: UInt64) -> UInt64? {
        var earliest: UInt64?
        for c in connections.values {
            guard let d = c.deadline else { continue }
            if d <= now { c.expire(); afterChange(c) } else { earliest = min(earliest ?? d, d) }
        }
        return earliest
    }

    private func afterChange(_ c: VsockConnection) {
        if c.state == .killed, c.killReason != nil, c.pending.contains(.rst) { stats.killedConnections += 1 }
        if c.isRemovable { remove(c.key); return }
        if c.hasPendingRx { schedule(c.key) }
    }

    private func schedule(_ key: ConnectionKey) {
        guard queued.insert(key).inserted else { return }
        rxQueue.append(key)
    }

    private func remove(_ key: ConnectionKey) {
        connections.removeValue(forKey: key)?.stream.close()
    }

    /// Closes every host stream (the frontend went away; clients see EOF at once).
    public func closeAll() {
        for c in connections.values { c.stream.close() }
        connections.removeAll(); rxQueue.removeAll(); rxHead = 0; queued.removeAll(); orphanRST.removeAll()
    }

    // MARK: - Host → guest

    public var hasPendingRx: Bool { !orphanRST.isEmpty || rxHead < rxQueue.count }

    /// The next packet for the guest's rx queue; its payload goes to `payload`. nil: nothing ready.
    public func nextPacket(payload: UnsafeMutableRawBufferPointer, now: UInt64) -> (VsockHeader, Int)? {
        if !orphanRST.isEmpty {
            stats.packetsToGuest += 1
            return (orphanRST.removeFirst(), 0)
        }
        while rxHead < rxQueue.count {
            let key = rxQueue[rxHead]
            rxHead += 1
            queued.remove(key)
            if rxHead > 64 && rxHead * 2 > rxQueue.count { rxQueue.removeFirst(rxHead); rxHead = 0 }
            guard let c = connections[key] else { continue }
            let wasKilled = c.state == .killed
            let out = c.nextPacket(payload: payload, now: now)
            if !wasKilled, c.state == .killed, c.killReason != nil { stats.killedConnections += 1 }
            if c.isRemovable { remove(key) } else if out != nil && c.hasPendingRx { schedule(key) }
            // Nothing from it now: it is scheduled again by its next event (packet, poll), never
            // re-queued here — that would spin.
            if let out { stats.packetsToGuest += 1; return out }
        }
        return nil
    }
}

extension VsockMuxer {
    /// A tx chain whose header could be read but whose length lies: kill that connection (or
    /// answer RST when there is none). Chains too short for a header are dropped silently.
    public func rejectMalformed(chain: DescriptorChain) {
        var hdr = [UInt8](repeating: 0, count: VsockHeader.size)
        let got = hdr.withUnsafeMutableBytes { chain.read(into: $0, from: 0) }
        guard got == VsockHeader.size, let h = hdr.withUnsafeBytes({ VsockHeader(bytes: $0) }) else { return }
        rejectMalformed(header: h)
    }

    public func rejectMalformed(header h: VsockHeader) {
        noteRejected()
        let key = ConnectionKey(localPort: h.dstPort, peerPort: h.srcPort)
        if h.srcCID == guestCID, let c = connections[key] {
            c.kill("malformed packet")
            noteKilled(c)
        } else if h.op != .rst {
            queueOrphanRSTPublic(for: h)
        }
    }
}
