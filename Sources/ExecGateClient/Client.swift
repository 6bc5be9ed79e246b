// SPDX-License-Identifier: Apache-2.0
//
// The VMM side of wire protocol v1: connect, send requests (pipelined: many in flight on one
// connection, each with its own id), receive replies in any order. Used by the CLI, the tests and
// the in-guest loopback test; a C or Rust VMM implements the same from docs/protocol.md.
//
// Failure contract: if the connection drops, every pending request fails at once with
// `ClientError.connectionClosed`; with a timeout, a request that gets no reply in time fails with
// `.timedOut`, and a hybrid handshake with no answer in time with `.hybridHandshakeFailed` — the
// caller never hangs.

import _ExecGateInternals
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public enum ClientError: Error, CustomStringConvertible, Equatable {
    case connectionClosed
    case timedOut(seconds: Double)
    case hybridHandshakeFailed(String)
    case unexpectedReply(String)
    case server(ErrorReply)

    public var description: String {
        switch self {
        case .connectionClosed: return "connection closed before the reply arrived"
        case .timedOut(let s): return "no reply within \(s) s"
        case .hybridHandshakeFailed(let why): return "hybrid vsock handshake failed: \(why)"
        case .unexpectedReply(let what): return "unexpected reply: \(what)"
        // The server's words, escaped (TerminalText): a description is read by a human.
        case .server(let e): return "server error \(e.code) (\(e.code.rawValue)): \(TerminalText.escaped(e.message))"
        }
    }
}

public final class ExecGateClient: @unchecked Sendable {
    // @unchecked: `nextID` is guarded by `lock`; the channel and its handler are event-loop bound.
    private let channel: Channel
    private let handler: EventLoopBoundHandler
    private let ownedGroup: MultiThreadedEventLoopGroup?
    private let lock = NIOLock()
    private var nextID: UInt64 = 1
    /// Each guest's session token from its last register-guest-reply on this client (guarded by
    /// `lock`): the convenience wrappers echo it (docs/protocol.md, register-guest "Session tokens").
    private var sessions: [String: UInt64] = [:]
    private var closed = false
    public let endpoint: Endpoint
    /// Per-request timeout in seconds (nil = wait forever).
    public var timeout: Double?

    private init(channel: Channel, handler: EventLoopBoundHandler, endpoint: Endpoint, ownedGroup: MultiThreadedEventLoopGroup?, timeout: Double?) {
        self.channel = channel
        self.handler = handler
        self.endpoint = endpoint
        self.ownedGroup = ownedGroup
        self.timeout = timeout
    }

    /// Connect to a verifier. With no `group`, the client owns a one-thread event loop group.
    public static func connect(to endpoint: Endpoint, group: EventLoopGroup? = nil, timeout: Double? = 30,
                               maximumBodySize: Int = WireLimits.defaultMaximumBodySize) async throws -> ExecGateClient {
        let owned = group == nil ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        let g: EventLoopGroup = group ?? owned!  // Safe: `owned` is non-nil exactly when `group` is nil.
        do {
            let bootstrap = ClientBootstrap(group: g).connectTimeout(.seconds(10))
            let channel: Channel
            switch endpoint {
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            case .vsock(let cid, let port):
                channel = try await bootstrap.connect(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port))).get()
            case .hybrid(let path, let port):
                channel = try await HybridHandshake.connect(bootstrap, path: path, port: port, timeout: timeout)
            }
            // The reply handler is created on the channel's loop, where it lives.
            let handler = try await channel.eventLoop.submit {
                let handler = ReplyHandler()
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maximumBodySize: maximumBodySize)))
                try channel.pipeline.syncOperations.addHandler(FrameWriter(), name: "frame-encoder")
                try channel.pipeline.syncOperations.addHandler(handler)
                return EventLoopBoundHandler(value: handler)
            }.get()
            return ExecGateClient(channel: channel, handler: handler, endpoint: endpoint, ownedGroup: owned, timeout: timeout)
        } catch {
            try? await owned?.shutdownGracefully()
            throw error
        }
    }

    /// Send one request and wait for its reply (an `error` reply is returned, not thrown). The
    /// body goes out as parts (Message.encodeBodyParts): a module or claimed region is written
    /// from the caller's buffer in one gathered write, never copied into a body buffer first.
    public func send(_ message: Message) async throws -> Message {
        let reply = try await exchange(type: message.type, requestID: allocateID(), parts: message.encodeBodyParts(allocator: channel.allocator))
        do { return try Message(type: reply.type, body: reply.body) } catch {
            throw ClientError.unexpectedReply("undecodable \(reply.type): \(error)")
        }
    }

    /// Send a raw frame (tests use this to send malformed bodies) and wait for the reply to its id.
    public func sendFrame(_ frame: Frame) async throws -> Message {
        let reply = try await exchange(frame)
        do { return try Message(type: reply.type, body: reply.body) } catch {
            throw ClientError.unexpectedReply("undecodable \(reply.type): \(error)")
        }
    }

    /// Send one frame and return the reply frame with its id, whatever its type: the admin port's
    /// messages (ExecGateAdmin) are frames of this protocol but not `Message`s. An `error` reply
    /// is returned, not thrown; a reply the decoder refused fails with `.server`.
    public func exchange(_ frame: Frame) async throws -> Frame {
        try await exchange(type: frame.type, requestID: frame.requestID, parts: [frame.body], version: frame.version)
    }

    /// One frame whose body is the concatenation of `parts`: header and parts are written below
    /// the frame encoder in one event-loop turn (so no other frame interleaves) and flushed once
    /// (NIO gathers them into `writev`).
    func exchange(type: MessageType, requestID: UInt64, parts: [ByteBuffer], version: UInt16 = WireLimits.protocolVersion) async throws -> Frame {
        let promise = channel.eventLoop.makePromise(of: Frame.self)
        let handler = self.handler
        let channel = self.channel
        let header = FrameWriter.header(version: version, type: type, requestID: requestID,
                                        bodyLength: parts.reduce(0) { $0 + $1.readableBytes }, allocator: channel.allocator)
        channel.eventLoop.execute {
            handler.value.register(id: requestID, promise: promise, channel: channel)
            do {
                let ctx = try channel.pipeline.syncOperations.context(name: "frame-encoder")
                ctx.write(NIOAny(header), promise: nil)
                for p in parts where p.readableBytes > 0 { ctx.write(NIOAny(p), promise: nil) }
                ctx.flush()
            } catch {
                handler.value.fail(id: requestID, error)
            }
        }
        if let t = timeout {
            let scheduled = channel.eventLoop.scheduleTask(in: timeAmount(seconds: t)) {
                handler.value.fail(id: requestID, ClientError.timedOut(seconds: t))
            }
            promise.futureResult.whenComplete { _ in scheduled.cancel() }
        }
        return try await promise.futureResult.get()
    }

    /// Write raw bytes below the frame encoder (tests: garbage, partial frames).
    public func writeRaw(_ bytes: [UInt8]) async throws {
        let channel = self.channel
        let buffer = channel.allocator.buffer(bytes: bytes)
        try await channel.eventLoop.flatSubmit {
            do {
                let ctx = try channel.pipeline.syncOperations.context(name: "frame-encoder")
                return ctx.writeAndFlush(NIOAny(buffer))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    }

    public func allocateID() -> UInt64 { lock.withLock { defer { nextID &+= 1 }; return nextID } }

    // Convenience wrappers.

    /// The highest session token `guestID`'s registrations through this client (`register`) were
    /// given (`remember`: replies come in any order), which
    /// `authorize`, `authorizePatch`, `retireModule`, `moduleInitFreed` and `removeGuest` echo in a request that
    /// carries none, so the server judges it by its session whatever connection carries it. nil:
    /// none (not registered here, or the server sends no tokens).
    public func sessionToken(for guestID: String) -> UInt64? { lock.withLock { sessions[guestID] } }

    /// Sets (nil: forgets) the token this client echoes for `guestID`: a VMM that registered the
    /// guest over another connection passes on the token its register-guest-reply named.
    public func setSessionToken(_ token: UInt64?, for guestID: String) { lock.withLock { sessions[guestID] = token } }

    /// `token` unless the request names one already.
    private func echoed(_ request: UInt64?, _ guestID: String) -> UInt64? {
        guard request == nil, !guestID.isEmpty else { return request }
        return sessionToken(for: guestID)
    }

    /// `request`, a reset naming the session this client holds for its guest unless it names one.
    private func naming(_ request: RegisterGuest) -> RegisterGuest {
        guard request.reset else { return request }
        var r = request
        r.session = echoed(r.session, r.guestID)
        return r
    }

    /// Keeps the highest token a register-guest-reply named for the guest: replies come in any
    /// order, and tokens of one server grow with every registration (a later line, a later
    /// place in a line), so a reset's reply read after a later reset's never moves the token
    /// back (a reset names it: protocol.md "A reset names the session it replaces").
    private func remember(_ reply: RegisterGuestReply) {
        lock.withLock {
            guard let t = reply.session else { sessions[reply.guestID] = nil; return }
            if (sessions[reply.guestID] ?? 0) < t { sessions[reply.guestID] = t }
        }
    }

    public func authorize(_ request: AuthorizeModule) async throws -> Verdict {
        var request = request
        request.session = echoed(request.session, request.guestID)
        switch try await send(.authorizeModule(request)) {
        case .verdict(let v): return v
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    public func status() async throws -> StatusReply {
        switch try await send(.status) {
        case .statusReply(let s): return s
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// A reset that names no session names the one this client holds for the guest
    /// (`sessionToken(for:)`): the server then replaces, or refused ends, only a session it is of
    /// (docs/protocol.md, register-guest "A reset names the session it replaces"). The token is
    /// read when this is called and the frame written after: send a guest's resets one at a time
    /// (two calls racing reach the wire in either order, and resets are ordered by arrival).
    public func register(_ request: RegisterGuest) async throws -> RegisterGuestReply {
        switch try await send(.registerGuest(naming(request))) {
        case .registerGuestReply(let r):
            remember(r)
            return r
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// Register a guest of a build the server may already hold: by the build's symbols digest
    /// first (a few hundred bytes instead of the symbol records, and no hashing of them on either
    /// side), then in full when the server answers `unknown-build` (it does not hold that build
    /// now: never registered, its last guest left, or it restarted). `knownBuild` is the
    /// `symbols_digest` an earlier register-guest-reply returned for this build (a VMM keeps it per
    /// kernel build; a policy pin names the same value); nil registers in full at once.
    /// Every other refusal is thrown as it is: the full registration would get the same answer
    /// (pins, budgets and `guest-exists` apply to both alike). `byDigest` says which one registered.
    public func register(_ request: RegisterGuest, knownBuild: [UInt8]?) async throws -> (reply: RegisterGuestReply, byDigest: Bool) {
        if let digest = knownBuild {
            switch try await send(.registerGuest(naming(request).byDigest(digest))) {
            case .registerGuestReply(let r):
                remember(r)
                return (r, true)
            case .error(let e) where e.code == .unknownBuild: break
            case .error(let e): throw ClientError.server(e)
            case let other: throw ClientError.unexpectedReply("\(other.type)")
            }
        }
        return (try await register(request), false)
    }

    /// Run-time text patches as one transition (a whole-key batch; see docs/protocol.md).
    public func authorizePatch(_ request: AuthorizePatch) async throws -> Verdict {
        var request = request
        request.session = echoed(request.session, request.guestID)
        switch try await send(.authorizePatch(request)) {
        case .verdict(let v): return v
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// A module was unloaded and EXEC on its pages revoked: the verifier forgets it.
    public func retireModule(_ request: RetireModule) async throws -> RetireModuleReply {
        var request = request
        request.session = echoed(request.session, request.guestID)
        switch try await send(.retireModule(request)) {
        case .retireModuleReply(let r): return r
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// A module's init memory was freed and EXEC on it revoked.
    public func moduleInitFreed(_ request: ModuleInitFreed) async throws -> ModuleInitFreedReply {
        var request = request
        request.session = echoed(request.session, request.guestID)
        switch try await send(.moduleInitFreed(request)) {
        case .moduleInitFreedReply(let r): return r
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// The guest is gone (destroyed, every EXEC grant revoked): the verifier forgets it and
    /// gives back its slot and charge.
    public func removeGuest(_ request: RemoveGuest) async throws -> RemoveGuestReply {
        var request = request
        request.session = echoed(request.session, request.guestID)
        switch try await send(.removeGuest(request)) {
        case .removeGuestReply(let r):
            setSessionToken(nil, for: r.guestID)  // that session is gone: never echoed again
            return r
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    public func hello(clientName: String) async throws -> HelloReply {
        switch try await send(.hello(Hello(clientName: clientName))) {
        case .helloReply(let r): return r
        case .error(let e): throw ClientError.server(e)
        case let other: throw ClientError.unexpectedReply("\(other.type)")
        }
    }

    /// Close the connection (idempotent). Pending requests fail with `.connectionClosed`.
    public func close() async {
        let first = lock.withLock { () -> Bool in defer { closed = true }; return !closed }
        guard first else { return }
        try? await channel.close()
        try? await ownedGroup?.shutdownGracefully()
    }
}

/// Carries the reply handler across threads; it is only ever *used* inside `eventLoop.execute`
/// or scheduled tasks of the channel's own loop, which is what makes the unchecked conformance sound.
struct EventLoopBoundHandler: @unchecked Sendable {
    let value: ReplyHandler
}

/// Matches replies to pending requests by id. Event-loop bound.
final class ReplyHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    private var pending: [UInt64: EventLoopPromise<Frame>] = [:]
    private var closed = false

    func register(id: UInt64, promise: EventLoopPromise<Frame>, channel: Channel) {
        if closed || !channel.isActive { promise.fail(ClientError.connectionClosed); return }
        pending[id] = promise
    }

    func fail(id: UInt64, _ error: Error) { pending.removeValue(forKey: id)?.fail(error) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .frame(let f):
            pending.removeValue(forKey: f.requestID)?.succeed(f)  // nil: a late reply after a timeout.
        case .refused(let id, _, let code, let message):
            pending.removeValue(forKey: id)?.fail(ClientError.server(ErrorReply(code: code, message: "reply refused: \(message)")))
            if code == .badMagic { context.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        let all = pending
        pending.removeAll()
        for (_, p) in all { p.fail(ClientError.connectionClosed) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

@available(*, unavailable)
extension ReplyHandler: Sendable {}

/// A timeout in seconds as the event loop's `TimeAmount`. Any finite positive number of seconds is
/// a timeout (`request --timeout 1e300`); `Int64(t * 1e9)` trapped from 9.3e9 s up, so the wait is
/// capped at `maximumTimeoutSeconds` (about a century: "wait as long as it takes").
func timeAmount(seconds t: Double) -> TimeAmount {
    let capped = t > 0 ? min(t, maximumTimeoutSeconds) : 0  // NaN and negatives: no wait
    return .nanoseconds(Int64(capped * 1e9))
}

/// The longest a client waits for a reply or a hybrid handshake, whatever timeout it was given.
public let maximumTimeoutSeconds: Double = 100 * 365 * 86_400

/// The Firecracker / Cloud Hypervisor hybrid-vsock handshake: `CONNECT <port>\n` → `OK <n>\n`.
enum HybridHandshake {
    /// Longest reply line accepted before giving up (a real "OK 1073741824\n" is 14 bytes).
    static let maximumLine = 64

    /// Whether `line` (with its newline) is the handshake's answer: exactly `OK <port>\n`, the
    /// port 1–10 ASCII digits that fit a u32. Firecracker's and Cloud Hypervisor's hybrid vsock
    /// muxers write `format!("OK {}\n", local_port)` (src/vmm/src/devices/virtio/vsock/unix/
    /// muxer.rs), this project's backend "OK \(localPort)\n" (ExecGateVsockDevice Connection.swift).
    /// Any other line, "OK " followed by anything else included, is a failed handshake: the client
    /// accepted every line beginning "OK " and then spoke the protocol to whatever answered it
    /// (ClientTests.testForbidsMalformedHybridOKLines).
    static func isAcceptance(_ line: ByteBufferView) -> Bool {
        let b = Array(line)
        guard b.count >= 5, b.count <= 14, b[0] == UInt8(ascii: "O"), b[1] == UInt8(ascii: "K"), b[2] == UInt8(ascii: " "),
              b[b.count - 1] == UInt8(ascii: "\n") else { return false }
        return ASCIIDecimal.uint32(b[3..<(b.count - 1)]) != nil
    }

    /// Attempts at a hybrid connection closed before its answer (`connect`).
    static let attempts = 3

    /// A connection through the hybrid socket at `path` to guest port `port`. A backend at its
    /// cap of clients mid-handshake closes the oldest to take a newcomer (docs/vsock.md,
    /// "Limits"); under a flood of clients that never send their line, an honest client can be
    /// closed before its line is read (13 of 100 lost to six flooding processes, round 12), and
    /// a full listen backlog refuses the connect (EAGAIN). Such a failure before any answer is
    /// tried again, at most `attempts` times, 20 ms then 100 ms apart: nothing but the CONNECT
    /// line was sent, so a retry repeats no request. A refusal (a line other than `OK <port>`) or
    /// a timeout is final. A port no one listens on is not told apart: the backend closes without
    /// a line then too, so it is tried three times (about 120 ms) and the message says both.
    static func connect(_ bootstrap: ClientBootstrap, path: String, port: UInt32, timeout: Double?) async throws -> Channel {
        var attempt = 1
        while true {
            var opened: Channel?
            do {
                let channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
                opened = channel
                try await perform(on: channel, port: port, timeout: timeout)
                return channel
            } catch {
                try? await opened?.close()
                guard closedBeforeAnswer(error) else { throw error }
                guard attempt < attempts else {
                    // One reason whatever the socket said (EPIPE on the line, EAGAIN on connect),
                    // with what it can mean: a backend closes silently both when nothing listens
                    // on the guest port and when it is at its cap.
                    let detail: String
                    if case ClientError.hybridHandshakeFailed = error { detail = "" } else { detail = " (\(ConnectionFailure.describe(error)))" }
                    throw ClientError.hybridHandshakeFailed("\(closedDuringHandshake)\(detail), \(attempts) attempts: nothing listens on guest port \(port), or the backend is at its cap of clients mid-handshake")
                }
                try await Task.sleep(nanoseconds: attempt == 1 ? 20_000_000 : 100_000_000)
                attempt += 1
            }
        }
    }

    static let closedDuringHandshake = "connection closed during handshake"

    /// A hybrid connection that ended before any answer: closed by the backend (or its backlog
    /// full), never refused by it.
    static func closedBeforeAnswer(_ error: Error) -> Bool {
        if case ClientError.hybridHandshakeFailed(let why) = error { return why == closedDuringHandshake }
        if let e = error as? ChannelError { return e == .ioOnClosedChannel || e == .eof }
        if let e = error as? IOError { return [EAGAIN, EPIPE, ECONNRESET].contains(e.errnoCode) }
        return false
    }

    /// Sends the CONNECT line and waits for the answer. With a `timeout` (seconds, the client's
    /// per-request timeout), a peer that neither answers nor hangs up within it is given up on and
    /// the connection closed: the caller never hangs, during the handshake either.
    static func perform(on channel: Channel, port: UInt32, timeout: Double?) async throws {
        let done = channel.eventLoop.makePromise(of: Void.self)
        do {
            try await channel.eventLoop.submit {
                let handler = LineHandler(promise: done)
                try channel.pipeline.syncOperations.addHandler(handler, name: "hybrid-handshake")
                if let t = timeout {
                    let bound = NIOLoopBound(handler, eventLoop: channel.eventLoop)
                    let timer = channel.eventLoop.scheduleTask(in: timeAmount(seconds: t)) {
                        bound.value.expire(channel: channel, after: t)
                    }
                    done.futureResult.whenComplete { _ in timer.cancel() }
                }
            }.get()
            try await channel.writeAndFlush(channel.allocator.buffer(string: "CONNECT \(port)\n")).get()
        } catch {
            // A channel the backend closed at once (its handshake cap) fails here: the promise is
            // failed too, never dropped unfulfilled (a second completion is ignored).
            done.fail(error)
            throw error
        }
        try await done.futureResult.get()
    }

    final class LineHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        private var line = ByteBuffer()
        private let promise: EventLoopPromise<Void>
        private var finished = false
        init(promise: EventLoopPromise<Void>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            guard !finished else { context.fireChannelRead(data); return }
            if let nl = bytes.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let n = nl - bytes.readerIndex
                var head = bytes.readSlice(length: n + 1)!  // Safe: the newline is inside the readable bytes.
                line.writeBuffer(&head)
                finished = true
                let text = String(buffer: line).trimmingSuffix()
                if HybridHandshake.isAcceptance(line.readableBytesView) {
                    promise.succeed(())
                    // Leftover bytes after the line belong to the protocol stream.
                    context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                    if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
                } else {
                    promise.fail(ClientError.hybridHandshakeFailed("peer answered '\(text)'"))
                    context.close(promise: nil)
                }
            } else {
                line.writeBuffer(&bytes)
                if line.readableBytes > HybridHandshake.maximumLine {
                    finished = true
                    promise.fail(ClientError.hybridHandshakeFailed("reply line longer than \(HybridHandshake.maximumLine) bytes"))
                    context.close(promise: nil)
                }
            }
        }
        typealias InboundOut = ByteBuffer

        /// The handshake's time is up (on the channel's loop): fail it once and hang up.
        func expire(channel: Channel, after seconds: Double) {
            guard !finished else { return }
            finished = true
            promise.fail(ClientError.hybridHandshakeFailed("no reply line within \(seconds) s"))
            channel.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !finished { finished = true; promise.fail(ClientError.hybridHandshakeFailed(HybridHandshake.closedDuringHandshake)) }
            context.fireChannelInactive()
        }
    }
}

extension String {
    fileprivate func trimmingSuffix() -> String {
        var s = Substring(self)
        while let last = s.last, last == "\n" || last == "\r" { s.removeLast() }
        return String(s)
    }
}

/// A connection failure as one line a person reads: the system's reason for a socket error
/// (NIO's `IOError` prints the failing call's Swift signature and an unbalanced parenthesis),
/// and what is wrong with an address NIO refuses by name.
public enum ConnectionFailure {
    public static func describe(_ error: any Error) -> String {
        if let e = error as? IOError {
            return "\(String(cString: strerror(e.errnoCode))) (errno \(e.errnoCode))"
        }
        if let e = error as? SocketAddressError {
            switch e {
            case .unixDomainSocketPathTooLong:
                return "the socket path is too long for a Unix socket address (at most 107 bytes)"
            default:
                return "\(e)"
            }
        }
        return "\(error)"
    }
}
