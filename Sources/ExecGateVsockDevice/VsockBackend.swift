// SPDX-License-Identifier: Apache-2.0
//
// The vhost-user-vsock backend process: one thread, one poll loop over
//   - the vhost-user listening socket and the frontend connection (QEMU);
//   - the rx/tx kick eventfds (the guest published buffers);
//   - the hybrid listening socket, host clients mid-handshake, and connected host streams.
// Nothing spins when idle: poll sleeps until an fd is ready or the earliest deadline.
//
//        host client ──unix──▶ hybrid socket ──CONNECT P──▶ muxer ──REQUEST──▶ rx queue ──▶ guest
//        host app ◀──unix── <hybrid>_P ◀──connect── muxer ◀──REQUEST── tx queue ◀── guest
//
// The frontend going away (QEMU exit, guest powered off) closes every host stream at once, so host
// clients fail promptly; the backend keeps listening for the next frontend.

import _ExecGateInternals
import CExecGateVsockSys
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct VsockBackendConfig: Sendable {
    public var vhostUserSocket: String
    public var hybridSocket: String
    public var guestCID: UInt64
    public var verbose = false
    public init(vhostUserSocket: String, hybridSocket: String, guestCID: UInt64) {
        self.vhostUserSocket = vhostUserSocket; self.hybridSocket = hybridSocket; self.guestCID = guestCID
    }
}

public final class VsockBackend: @unchecked Sendable {
    // @unchecked: everything but `wakeFd` is used only by the thread inside `run()`; `stop()`
    // only writes to the eventfd.
    public static let rxQueue = 0, txQueue = 1, eventQueue = 2

    public let config: VsockBackendConfig
    private let vhostListener: Int32
    private let hybridListener: Int32
    private let wakeFd: Int32
    private var frontend: Int32 = -1
    private var session: VhostUserSession
    public let muxer: VsockMuxer
    private var handshakes: [Int32: Handshake] = [:]
    private var scratch = [UInt8](repeating: 0, count: VsockLimits.rxPacketChunk)
    private var stopping = false
    public private(set) var frontendSessions = 0
    /// Until when (monotonic ns) each listener is left unpolled after accept4() ran out of resources.
    private var vhostAcceptPausedUntil: UInt64 = 0
    private var hybridAcceptPausedUntil: UInt64 = 0
    /// accept4() failures for lack of resources (read after `run` returned: tests).
    public private(set) var acceptResourceFailures = 0

    struct Handshake {
        let stream: UnixStream
        var line: [UInt8]
        let deadline: UInt64
        /// When it was accepted (the poll pass's clock): only a handshake from an earlier pass,
        /// whose line had a pass to arrive, is evicted for a newcomer.
        var accepted: UInt64 = 0
    }

    /// Binds both sockets (stale socket files are replaced; live sockets and other files are refused).
    public init(config: VsockBackendConfig) throws(BackendError) {
        self.config = config
        guard config.guestCID >= 3, config.guestCID < UInt64(UInt32.max) else { throw BackendError("guest CID \(config.guestCID): must be 3…2^32-2") }
        let connections = try VsockBackend.provideDescriptors()
        vhostListener = try VsockBackend.listen(config.vhostUserSocket)
        do { hybridListener = try VsockBackend.listen(config.hybridSocket) } catch {
            // A refused start leaves nothing of its own: the vhost-user socket bound above goes
            // (as run() removes both when it ends), and its lock file.
            close(vhostListener)
            unlink(config.vhostUserSocket)
            SocketPath.release(config.vhostUserSocket)
            throw error
        }
        wakeFd = egv_eventfd()
        session = VhostUserSession(guestCID: config.guestCID)
        let hybrid = config.hybridSocket
        muxer = VsockMuxer(guestCID: config.guestCID, maxConnections: connections) { port in UnixStream.connect(path: "\(hybrid)_\(port)") }
        session.log = { [weak self] in self?.log($0) }
    }

    deinit {
        close(vhostListener); close(hybridListener); close(wakeFd)
        if frontend >= 0 { close(frontend) }
    }

    /// The soft RLIMIT_NOFILE and connection bound for a process with `open` descriptors: every
    /// connection (one host socket), every client mid-handshake and `VsockLimits.reservedDescriptors`
    /// must fit, or a client reaching EMFILE first would also starve the frontend's messages of
    /// their descriptors (recvmsg drops them: MSG_CTRUNC) and end its session. The soft limit is
    /// raised as far as needed, up to the hard limit (systemd.exec(5), LimitNOFILE=: programs that
    /// need more raise the soft limit themselves; the default soft limit is 1024); below that the
    /// connection bound shrinks to fit. nil: not even one connection fits.
    public static func descriptorPlan(soft: UInt64, hard: UInt64, open: Int) -> (soft: UInt64, connections: Int)? {
        let fixed = open + VsockLimits.maxPendingHandshakes + VsockLimits.reservedDescriptors
        let want = UInt64(fixed + VsockLimits.maxConnections)
        let limit = soft >= want ? soft : min(hard, want)
        let room = limit > UInt64(Int.max) ? Int.max : Int(limit) - fixed
        guard room >= 1 else { return nil }
        return (limit, min(VsockLimits.maxConnections, room))
    }

    /// Applies `descriptorPlan` to this process. Returns the connection bound.
    static func provideDescriptors() throws(BackendError) -> Int {
        let resource = Int32(RLIMIT_NOFILE.rawValue)
        var r = rlimit()
        guard getrlimit(resource, &r) == 0 else { throw BackendError("getrlimit(RLIMIT_NOFILE)", errno: errno) }
        let open = openDescriptors()
        guard let plan = descriptorPlan(soft: UInt64(r.rlim_cur), hard: UInt64(r.rlim_max), open: open) else {
            throw BackendError("RLIMIT_NOFILE \(r.rlim_cur) (hard \(r.rlim_max)) leaves no descriptor for a connection (\(open) open, \(VsockLimits.maxPendingHandshakes + VsockLimits.reservedDescriptors) reserved)")
        }
        if plan.soft > UInt64(r.rlim_cur) {
            r.rlim_cur = rlim_t(plan.soft)
            guard setrlimit(resource, &r) == 0 else { throw BackendError("setrlimit(RLIMIT_NOFILE, \(plan.soft))", errno: errno) }
        }
        return plan.connections
    }

    /// Descriptors open now (/proc/self/fd; without /proc, F_GETFD probed below the soft limit,
    /// at most 65536 of them).
    static func openDescriptors() -> Int {
        guard let dir = opendir("/proc/self/fd") else {
            return (0..<min(Int32(clamping: getdtablesize()), 1 << 16)).reduce(0) { $0 + (fcntl($1, F_GETFD) >= 0 ? 1 : 0) }
        }
        defer { closedir(dir) }
        var n = 0
        while let e = readdir(dir) {
            let first = withUnsafeBytes(of: e.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") { n += 1 }
        }
        return max(0, n - 1)  // Less the directory's own descriptor.
    }

    static func listen(_ path: String) throws(BackendError) -> Int32 {
        guard path.utf8.count < VsockLimits.maxUnixPath else { throw BackendError("socket path longer than \(VsockLimits.maxUnixPath - 1) bytes: \(path)") }
        // Never unlink a live socket or a file of another kind; created 0600 (SocketPath.swift).
        let claim: SocketPath.Claim
        do { claim = try SocketPath.claim(path) } catch { throw BackendError("\(error)") }
        defer { claim.finish() }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { let e = errno; SocketPath.release(path); throw BackendError("socket", errno: e) }
        var addr = sockaddr_un.make(path)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { let e = errno; close(fd); SocketPath.release(path); throw BackendError("bind \(path)", errno: e) }
        guard Glibc.listen(fd, 128) == 0 else { let e = errno; close(fd); unlink(path); SocketPath.release(path); throw BackendError("listen \(path)", errno: e) }
        return fd
    }

    func log(_ s: String) {
        guard config.verbose else { return }
        notice(s)
    }

    /// A line whatever `verbose` says: what an operator must see without having asked (a flood
    /// at the handshake cap). Callers bound how often.
    func notice(_ s: String) {
        var line = "vsock-backend: \(s)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Makes `run` return (any thread).
    public func stop() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(wakeFd, $0.baseAddress, 8) }
    }

    // MARK: - The loop

    private enum Source { case vhostListener, frontend, kick(Int), hybridListener, handshake(Int32), connection(ConnectionKey), wake }

    /// Serves until `stop()`. Socket files are removed on return, then their lock files.
    public func run() {
        defer {
            unlink(config.vhostUserSocket); unlink(config.hybridSocket)
            SocketPath.release(config.vhostUserSocket); SocketPath.release(config.hybridSocket)
            dropFrontend()
        }
        var moreTx = false
        while !stopping {
            var fds: [pollfd] = []
            var sources: [Source] = []
            func add(_ fd: Int32, _ events: Int32, _ s: Source, always: Bool = false) {
                guard fd >= 0, events != 0 || always else { return }
                fds.append(pollfd(fd: fd, events: Int16(events), revents: 0)); sources.append(s)
            }
            let now = MonotonicClock.nanoseconds()
            add(wakeFd, Int32(POLLIN), .wake)
            add(vhostListener, now >= vhostAcceptPausedUntil ? Int32(POLLIN) : 0, .vhostListener)
            add(frontend, Int32(POLLIN), .frontend)
            for i in 0..<VsockLimits.queueCount { add(session.kickFd(i), Int32(POLLIN), .kick(i)) }
            // Pending handshakes before the listener: a pass reads the lines that arrived before
            // it accepts newcomers, whose arrival at the cap evicts the oldest handshake. With the
            // listener first, a client accepted in one pass was evicted by the next pass's flood
            // before its line, already there, was read (13 of 100 honest clients lost to six
            // flooders, round 12).
            for (fd, _) in handshakes { add(fd, Int32(POLLIN), .handshake(fd)) }
            add(hybridListener, now >= hybridAcceptPausedUntil ? Int32(POLLIN) : 0, .hybridListener)
            let rxBuffers = session.isLive(VsockBackend.rxQueue) && session.queues[VsockBackend.rxQueue].hasAvailable
            for (key, c) in muxer.connections where !c.hostHungUp {
                var ev: Int32 = 0
                if c.wantsHostRead && rxBuffers && !c.hostReadable { ev |= Int32(POLLIN) }
                if c.wantsHostWrite { ev |= Int32(POLLOUT) }
                // Polled even when it wants no event (no credit to forward what it sends, nothing
                // to write): poll(2) reports POLLHUP/POLLERR whatever `events` asks, and that
                // hang-up arms the connection's 2 s deadline. Left out of poll(), a host client's
                // close to a guest granting no credit was never seen, and the connection kept its
                // table slot and descriptor as long as the guest liked (GuestTableRound4Tests);
                // the kernel's virtio_transport_close() acts on the release itself, credit or not.
                // A hung-up connection is left out: its POLLHUP would be reported again at once.
                add(c.stream.fd, ev, .connection(key), always: true)
            }
            var deadline = muxer.expire(now: now)
            for (_, h) in handshakes { deadline = min(deadline ?? h.deadline, h.deadline) }
            for p in [vhostAcceptPausedUntil, hybridAcceptPausedUntil] where p > now { deadline = min(deadline ?? p, p) }
            var timeout: Int32 = -1
            if moreTx || (muxer.hasPendingRx && rxBuffers) { timeout = 0 }
            else if let d = deadline { timeout = Int32(clamping: (d > now ? d - now : 0) / 1_000_000 + 1) }

            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { log("poll: errno \(errno)"); usleep(10_000); continue }
            let now2 = MonotonicClock.nanoseconds()
            for (i, p) in fds.enumerated() where p.revents != 0 {
                switch sources[i] {
                case .wake: stopping = true
                case .vhostListener: acceptFrontend(now: now2)
                case .frontend: readFrontend()
                case .kick(let q): drain(fds[i].fd); if q == VsockBackend.txQueue { moreTx = true }
                case .hybridListener: acceptHostClients(now: now2)
                case .handshake(let fd): readHandshake(fd, now: now2)
                case .connection(let key):
                    let r = Int32(p.revents)
                    if r & Int32(POLLOUT) != 0 { muxer.hostWritable(key) }
                    if r & (Int32(POLLHUP) | Int32(POLLERR)) != 0 { muxer.hostReadable(key, hangup: true, now: now2) }
                    else if r & Int32(POLLIN) != 0 { muxer.hostReadable(key, hangup: false) }
                }
            }
            expireHandshakes(now: now2)
            if moreTx || session.isLive(VsockBackend.txQueue) { moreTx = processTx(now: now2) }
            processRx(now: now2)
        }
    }

    private func drain(_ fd: Int32) {
        var v: UInt64 = 0
        _ = read(fd, &v, 8)
    }

    // MARK: - Queues

    /// Takes up to `VsockLimits.txBatch` packets off the tx queue. Returns whether more are waiting.
    private func processTx(now: UInt64) -> Bool {
        let q = session.queues[VsockBackend.txQueue]
        guard session.isLive(VsockBackend.txQueue) else { return false }
        var returned = false
        defer { if returned { session.notify(VsockBackend.txQueue) } }
        for _ in 0..<VsockLimits.txBatch {
            let head: UInt16
            do {
                guard let h = try q.nextAvailable() else { return false }
                head = h
            } catch {
                log("tx queue stopped: \(error)"); return false
            }
            defer { q.addUsed(head: head, length: 0); returned = true }
            let chain: DescriptorChain
            do { chain = try q.chain(head: head, memory: session.memory) } catch {
                log("tx chain \(head) dropped: \(error)"); continue
            }
            do {
                muxer.receive(try TxPacket.parse(chain), now: now)
            } catch {
                log("tx packet dropped: \(error)")
                muxer.rejectMalformed(chain: chain)
            }
        }
        return q.hasAvailable
    }

    /// Fills rx buffers while the muxer has packets and the guest has buffers.
    private func processRx(now: UInt64) {
        let q = session.queues[VsockBackend.rxQueue]
        guard session.isLive(VsockBackend.rxQueue) else { return }
        var used = false
        defer { if used { session.notify(VsockBackend.rxQueue) } }
        while muxer.hasPendingRx {
            let head: UInt16
            do {
                guard let h = try q.nextAvailable() else { return }
                head = h
            } catch {
                log("rx queue stopped: \(error)"); return
            }
            let chain: DescriptorChain
            do { chain = try q.chain(head: head, memory: session.memory) } catch {
                log("rx chain \(head) dropped: \(error)"); q.addUsed(head: head, length: 0); used = true; continue
            }
            let capacity = min(chain.writableLength - VsockHeader.size, scratch.count)
            guard capacity >= 0 else { q.addUsed(head: head, length: 0); used = true; continue }
            let out = scratch.withUnsafeMutableBytes { muxer.nextPacket(payload: UnsafeMutableRawBufferPointer(rebasing: $0[0..<capacity]), now: now) }
            guard let (header, n) = out else { q.undoTake(); return }
            var h = header
            h.len = UInt32(n)
            let hb = h.bytes
            _ = hb.withUnsafeBytes { chain.write($0, at: 0) }
            if n > 0 { _ = scratch.withUnsafeBytes { chain.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: VsockHeader.size) } }
            q.addUsed(head: head, length: UInt32(VsockHeader.size + n))
            used = true
        }
    }

    // MARK: - vhost-user frontend

    /// accept4() failed: for lack of resources, leave that listener unpolled for
    /// `VsockLimits.acceptPauseMillis`. The client stays in the backlog and keeps the socket readable,
    /// so polling it again at once would spin the only thread (accept(2): EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM; the NIO listeners' `AcceptPause`, ExecGateTransport). Other errors (EAGAIN, a client
    /// gone before accept: ECONNABORTED) leave nothing waiting.
    private func acceptFailed(pausing until: inout UInt64, now: UInt64) {
        let e = errno
        guard e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM else { return }
        acceptResourceFailures += 1
        until = now + UInt64(VsockLimits.acceptPauseMillis) * 1_000_000
        log("accept: errno \(e); not accepting for \(VsockLimits.acceptPauseMillis) ms")
    }

    private func acceptFrontend(now: UInt64) {
        let fd = egv_accept(vhostListener, 0)
        guard fd >= 0 else { acceptFailed(pausing: &vhostAcceptPausedUntil, now: now); return }
        if frontend >= 0 { log("second frontend refused"); close(fd); return }
        var tv = timeval(tv_sec: VsockLimits.vhostUserReadTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        frontend = fd
        frontendSessions += 1
        session = VhostUserSession(guestCID: config.guestCID)
        session.log = { [weak self] in self?.log($0) }
        log("frontend connected")
    }

    private func dropFrontend() {
        guard frontend >= 0 else { return }
        close(frontend); frontend = -1
        session.closeAll()
        muxer.closeAll()
        log("frontend disconnected; all connections closed")
    }

    private func readFrontend() {
        do {
            guard let msg = try readMessage(frontend) else { dropFrontend(); return }
            log("<- \(msg.header.request) (\(msg.payload.count) bytes, \(msg.fds.count) fds)")
            let wasRunning = session.isLive(VsockBackend.rxQueue) || session.isLive(VsockBackend.txQueue)
            if let reply = session.handle(msg) {
                guard sendAll(frontend, reply) else { dropFrontend(); return }
            }
            // Both rings stopped (GET_VRING_BASE: device reset, guest reboot): the guest's transport
            // forgets its sockets, so every host stream ends too (a new guest starts clean).
            if wasRunning && !session.isLive(VsockBackend.rxQueue) && !session.isLive(VsockBackend.txQueue) {
                log("rings stopped; closing all connections")
                muxer.closeAll()
            }
        } catch {
            log("frontend session ended: \(error)")
            dropFrontend()
        }
    }

    /// Reads one message. nil: orderly disconnect. The whole message (header, payload, fds) must
    /// arrive within `VsockLimits.vhostUserMessageDeadlineMillis` of its first byte: one deadline per
    /// message, not per recv(), so a frontend trickling bytes cannot stall the only thread for
    /// more than that (the session then ends; only this frontend's).
    private func readMessage(_ fd: Int32) throws(VhostUserError) -> VhostUserMessage? {
        let deadline = MonotonicClock.nanoseconds() + UInt64(VsockLimits.vhostUserMessageDeadlineMillis) * 1_000_000
        var hdr = [UInt8](repeating: 0, count: VhostUserHeader.size)
        var fds = [Int32](repeating: -1, count: VsockLimits.maxMemoryRegions)
        var nfds: Int32 = 0, truncated: Int32 = 0
        try waitReadable(fd, until: deadline)
        let n = hdr.withUnsafeMutableBytes { egv_recv_with_fds(fd, $0.baseAddress, 12, &fds, Int32(VsockLimits.maxMemoryRegions), &nfds, &truncated) }
        var owned = Array(fds.prefix(Int(max(0, nfds))))
        var ok = false
        defer { if !ok { owned.forEach { close($0) } } }
        if n == 0 { return nil }
        guard n > 0 else { throw VhostUserError(.io, "recvmsg: errno \(errno)") }
        guard truncated == 0 else { throw VhostUserError(.badPayload, "too many fds") }
        if n < 12 { try readExactly(fd, &hdr, from: n, until: deadline) }
        let header = try VhostUserHeader(bytes: hdr)
        var payload = [UInt8](repeating: 0, count: Int(header.size))
        if header.size > 0 { try readExactly(fd, &payload, from: 0, until: deadline) }
        ok = true
        let result = VhostUserMessage(header: header, payload: payload, fds: owned)
        owned = []
        return result
    }

    /// poll(2) until `fd` is readable or the message deadline passes.
    private func waitReadable(_ fd: Int32, until deadline: UInt64) throws(VhostUserError) {
        while true {
            let now = MonotonicClock.nanoseconds()
            guard now < deadline else {
                throw VhostUserError(.truncated, "message not complete within \(VsockLimits.vhostUserMessageDeadlineMillis) ms")
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(clamping: (deadline - now) / 1_000_000 + 1))
            if r > 0 { return }
            if r < 0 && errno != EINTR { throw VhostUserError(.io, "poll: errno \(errno)") }
        }
    }

    private func readExactly(_ fd: Int32, _ buf: inout [UInt8], from start: Int, until deadline: UInt64) throws(VhostUserError) {
        var off = start
        let count = buf.count
        while off < count {
            try waitReadable(fd, until: deadline)
            let r = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + off, count - off, Int32(MSG_DONTWAIT)) }  // Safe: count > off ≥ 0, so non-empty.
            if r > 0 { off += r; continue }
            if r < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            throw VhostUserError(.truncated, r == 0 ? "frontend closed mid-message" : "recv: errno \(errno)")
        }
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let r = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }  // Safe: non-empty.
            if r > 0 { off += r; continue }
            if r < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    // MARK: - Hybrid host socket

    /// Handshakes evicted and newcomers closed at the cap since the last line saying so.
    private var capEvicted = 0, capRefused = 0
    private var capNoticedAt: UInt64 = 0

    private func acceptHostClients(now: UInt64) {
        var evicted = 0, refused = 0
        defer {
            // Said without --verbose (a flood is the operator's business), at most once a second
            // with the counts since the last line.
            capEvicted += evicted
            capRefused += refused
            if capEvicted + capRefused > 0 && now &- capNoticedAt >= 1_000_000_000 {
                notice("host client handshakes at the cap (\(VsockLimits.maxPendingHandshakes)): \(capEvicted) oldest evicted, \(capRefused) newcomers closed since the last such line")
                capEvicted = 0
                capRefused = 0
                capNoticedAt = now
            }
        }
        while true {
            let fd = egv_accept(hybridListener, 1)
            guard fd >= 0 else { acceptFailed(pausing: &hybridAcceptPausedUntil, now: now); return }
            // At the cap the oldest handshake makes room (as the admin port evicts its oldest idle
            // connection): refusing the newcomer let 64 clients that never finish their line,
            // reconnecting as each was closed, keep every other client out for good. A real
            // client sends its line on connect and is through within microseconds. Only one
            // accepted in an earlier pass is evicted (its line had a pass to be read): a burst of
            // connections in one pass closes its own newcomers, never a client queued before it.
            if handshakes.count >= VsockLimits.maxPendingHandshakes {
                guard let (oldest, h) = handshakes.min(by: { $0.value.accepted < $1.value.accepted }), h.accepted < now else {
                    close(fd)
                    refused += 1
                    continue
                }
                handshakes[oldest] = nil
                h.stream.close()
                evicted += 1
            }
            handshakes[fd] = Handshake(stream: UnixStream(fd: fd), line: [], deadline: now + UInt64(VsockLimits.handshakeTimeoutMillis) * 1_000_000, accepted: now)
        }
    }

    private func readHandshake(_ fd: Int32, now: UInt64) {
        guard var h = handshakes[fd] else { return }
        var buf = [UInt8](repeating: 0, count: VsockLimits.maxHandshakeLine)
        let r = buf.withUnsafeMutableBytes { h.stream.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(VsockLimits.maxHandshakeLine - h.line.count)])) }
        switch r {
        case .wouldBlock: return
        case .eof, .failed: handshakes[fd] = nil; h.stream.close(); return
        case .bytes(let n): h.line += buf[0..<n]
        }
        switch HybridHandshake.parse(h.line) {
        case .needMore:
            if h.line.count >= VsockLimits.maxHandshakeLine { handshakes[fd] = nil; h.stream.close() } else { handshakes[fd] = h }
        case .invalid(let why):
            log("host client handshake refused: \(why)")
            handshakes[fd] = nil
            h.stream.close()
        case .connect(let port, let rest):
            handshakes[fd] = nil
            if muxer.connectFromHost(stream: h.stream, guestPort: port, prefix: rest, now: now) == nil { h.stream.close() }
        }
    }

    private func expireHandshakes(now: UInt64) {
        for (fd, h) in handshakes where h.deadline <= now { handshakes[fd] = nil; h.stream.close() }
    }
}

/// The host side of the hybrid convention: `CONNECT <port>\n` (docs/vsock.md). A bounded line
/// decoder: at most `VsockLimits.maxHandshakeLine` bytes; bytes after the newline are stream data.
public enum HybridHandshake {
    public enum Parse: Equatable {
        case needMore
        case invalid(String)
        case connect(port: UInt32, rest: [UInt8])
    }

    public static func parse(_ bytes: [UInt8]) -> Parse {
        guard let nl = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            return bytes.count >= VsockLimits.maxHandshakeLine ? .invalid("no newline in \(VsockLimits.maxHandshakeLine) bytes") : .needMore
        }
        var line = bytes[..<nl]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        let prefix = Array("CONNECT ".utf8)
        guard line.starts(with: prefix) else { return .invalid("expected CONNECT <port>") }
        let digits = line.dropFirst(prefix.count)
        guard let port = ASCIIDecimal.uint32(digits) else { return .invalid("bad port") }
        return .connect(port: port, rest: Array(bytes[(nl + 1)...]))
    }
}
