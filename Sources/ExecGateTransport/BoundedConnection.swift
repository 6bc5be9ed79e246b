// SPDX-License-Identifier: Apache-2.0
//
// Backpressure and deadlines for one connection, shared by the VMM port and the admin port:
//
//     socket ─▶ ByteToMessageHandler(BudgetedFrameDecoder) ─▶ BoundedFrameHandler ─▶ FrameWriter (header + body, no copy) ─▶ socket
//                     │ check at header, reserve each           │ pending ─▶ in flight ─▶ reply written
//                     │ body chunk as it arrives                │
//                     └ FrameProgress events ──────────────────▶│ deadlines, autoRead on/off
//
// What holds, per connection (issue 10, "Backpressure end to end"):
//   - a request's in-flight slot is held until its reply has been written to the socket, not
//     merely queued: a peer that never reads its replies stops being read after
//     `maximumInFlightPerConnection` requests;
//   - nothing new is started while the socket is not writable (NIO's high watermark, 64 KiB of
//     unwritten replies), and reading pauses (autoRead off) while anything is pending, the
//     in-flight cap is reached, or the socket is not writable. Frames already read when the pause
//     takes effect wait in `pending`; their bodies are reserved in the port's `BufferBudget`;
//   - a connection holds at most `maximumInFlightPerConnection` requests decoded but not started
//     (`pending`): the decoder stops cutting frames at that many (`DecodeGate`) and resumes when
//     `pump` starts one, so frames pipelined beyond it wait as bytes, at most one read (64 KiB:
//     `boundedReads()`), or in the kernel's socket buffer. NIO reads up to `maxMessagesPerRead`
//     buffers per readable event whatever autoRead says, and every complete frame in them became
//     a queued request: 127 peers pipelining empty `status` frames (20 wire bytes, no body budget)
//     made the server hold +31–84 MiB (PeersRound3Tests);
//   - a peer's half-close (EOF on its sending side) ends its requests, not its replies: every
//     request read is answered and the connection closes after the last reply (`PeerEOFRelay`,
//     `allowRemoteHalfClosure`). NIO closed at EOF and dropped the replies not yet written
//     (PeersRound4Tests). At EOF NIO reads the socket dry whatever autoRead says, so of the
//     frames behind the gate one read buffer (64 KiB) is kept and the rest dropped unanswered
//     (with NIO's pooled receive buffer, the queue and the replies in flight, ≈ 220 KiB a
//     connection however much its peer queued: 27.8 MB of live heap for 127 peers, 2026-12-04);
//   - a closed connection starts nothing more: its queued requests are dropped (a reply's write
//     failing at close freed an in-flight slot, and `pump` started the next queued request on
//     the dead channel, whose write failed at once, and so on: one peer's hang-up kept its event
//     loop answering tens of thousands of requests for nobody for 30 s);
//   - a body is reserved in the budget chunk by chunk as its bytes arrive, never ahead of them
//     (Budget.swift): a header alone holds nothing, so what a partial frame holds its peer has
//     sent, and the frame deadline bounds how long; a chunk that does not fit refuses the frame
//     (`unavailable`), gives back what it held and discards the rest of its body;
//   - a body's budget reservation is released as soon as its request has been judged (the body
//     is dropped then), so a peer that stops reading replies cannot pin the shared budget;
//   - deadlines: a frame's header must be complete `headerDeadline` after its own first byte and
//     the whole frame `frameDeadline` after it (a frame that follows another in one read starts
//     its clock where that one ended: `FrameDecoder.framesEnded`), whether or not the server is reading meanwhile (a
//     pause neither stops nor restarts the clock: the partial body's reservation is held); a connection
//     with nothing in flight and no partial frame is closed after `idleTimeout`; one with a reply
//     whose write makes no progress for `writeStallTimeout` (the peer reads nothing) is closed.

import ExecGateWire
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where the decoder is within the byte stream; sent as a user inbound event on change.
public enum FrameProgress: Sendable, Equatable {
    case betweenFrames
    case inHeader
    case inBody
}

/// How many requests one connection's `BoundedFrameHandler` has decoded but not started, shared
/// with its decoder, which cuts no new frame while `isFull` (both run on the channel's event loop).
public final class DecodeGate {
    /// Requests decoded but not started that the handler holds at most.
    public let capacity: Int
    /// Requests decoded but not started now (the handler's `pending`).
    public internal(set) var queued = 0
    /// The decoder stopped at the gate: complete frames may be waiting in its buffer, and nothing
    /// but a read (real or synthetic) makes it decode again.
    public internal(set) var held = false

    /// The peer half-closed (EOF, `ChannelEvent.inputClosed`): no more bytes will come. What
    /// the decoder holds behind the gate is then kept up to one read buffer, the rest dropped.
    public internal(set) var inputClosed = false
    /// Bytes of frames behind the gate dropped at the peer's EOF (beyond one read buffer).
    public internal(set) var droppedAtEOF = 0

    /// The connection, to the port's `BufferBudget`: its decoder reserves and its handler gives
    /// back with it, so what the connection holds is known (`BufferBudget`, "Shares").
    public let holder = BudgetHolder()

    public init(capacity: Int) { self.capacity = max(1, capacity) }

    public var isFull: Bool { queued >= capacity }
    /// The queue has drained to half (or, at capacity 1, is empty): decoding resumes then, so a
    /// connection at its cap is resumed once per half a queue, not once per started request.
    public var hasRoom: Bool { queued <= capacity / 2 }
}

@available(*, unavailable)
extension DecodeGate: Sendable {}

/// `FrameDecoder` plus the port's shared budget and progress events for the deadlines.
public struct BudgetedFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = InboundFrame
    private var inner: FrameDecoder
    private let budget: BufferBudget
    private let gate: DecodeGate
    /// This connection, to the budget (its gate's, shared with the handler): a body refused for
    /// lack of room keeps its place in the port's queue (`BufferBudget`, "Turns") until the
    /// connection goes; what it holds counts against its share ("Shares").
    private let holder: BudgetHolder
    private var progress = FrameProgress.betweenFrames

    /// - Parameter gate: shared with the connection's handler: no new frame is cut while
    ///   `gate.isFull` (frames queued by the handler); a body already started is still collected
    ///   (its bytes are in the budget). Its `holder` is the connection's, to the budget.
    public init(maximumBodySize: Int, budget: BufferBudget, gate: DecodeGate) {
        inner = FrameDecoder(maximumBodySize: maximumBodySize)
        self.budget = budget
        self.gate = gate
        let holder = gate.holder
        self.holder = holder
        inner.admitBody = { [budget] n, length in n == 0 ? budget.check(length, holder: holder) : budget.reserve(n, ofBody: length, holder: holder) }
        inner.releaseBody = { [budget] n, length in budget.abandon(n, ofBody: length, holder: holder) }
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if gate.isFull, inner.isBetweenFrames {
            // The handler holds its in-flight cap of requests not yet started: leave the next
            // frames as bytes (at most one read of them) until it starts one. The server, not the
            // peer, is waiting now, so no header deadline runs for these bytes.
            if gate.inputClosed && buffer.readableBytes > TransportLimits.readBufferSize {
                // At the peer's EOF NIO reads the socket dry whatever autoRead says
                // (BaseSocketChannel.readEOF0), so everything the peer had queued lands here at
                // once (up to its socket buffer). Keep one read buffer of it, as any paused
                // connection holds, in a buffer of its own (the big one is freed); the frames
                // beyond are never answered (the connection closes after the last reply).
                let keep = TransportLimits.readBufferSize
                gate.droppedAtEOF += buffer.readableBytes - keep
                var kept = context.channel.allocator.buffer(capacity: keep)
                kept.writeImmutableBuffer(buffer.getSlice(at: buffer.readerIndex, length: keep)!)
                buffer = kept
            }
            gate.held = buffer.readableBytes > 0
            report(context, buffered: 0)
            return .needMoreData
        }
        let wasAwaiting = inner.awaitingBodyLength
        let endedBefore = inner.framesEnded
        let out = try inner.decodeOne(&buffer)
        if wasAwaiting == nil, let length = inner.awaitingBodyLength, length < FrameDecoder.collectedBodyThreshold,
           buffer.writableBytes < length - buffer.readableBytes {
            // Grow the cumulation buffer once to the admitted size, instead of by doubling (which
            // would briefly hold 1.5× the body and leave up to 2× of capacity). Larger bodies go
            // to their own buffer of that size as they arrive (FrameDecoder.collectedBodyThreshold).
            // Capacity only, under 64 KiB per connection: its pages are touched as body bytes
            // arrive, and those are reserved in the budget chunk by chunk.
            buffer.reserveCapacity(minimumWritableBytes: length - buffer.readableBytes)
        }
        report(context, buffered: buffer.readableBytes, frameEnded: inner.framesEnded != endedBefore)
        if let out {
            context.fireChannelRead(Self.wrapInboundOut(out))
            return .continue
        }
        let skipping = !inner.isBetweenFrames && inner.awaitingBodyLength == nil  // discarding or broken
        return buffer.readableBytes > 0 && skipping ? .continue : .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // The peer is gone: frames left behind the gate are dropped with the rest, unread.
        while !gate.isFull, let out = try inner.decodeOne(&buffer) { context.fireChannelRead(Self.wrapInboundOut(out)) }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    public mutating func decoderRemoved(context: ChannelHandlerContext) {
        // A body admitted but never completed (peer closed mid-body): give back the bytes it held.
        if let length = inner.awaitingBodyLength {
            budget.release(inner.admittedBodyBytes, ofBody: length, holder: holder)
            inner.admitBody = nil
            inner.releaseBody = nil
        }
        // Its place in the queue of large bodies, or its turn, ends with it.
        budget.leave(holder)
    }

    /// - Parameter frameEnded: a frame ended in this decode. What follows it (bytes left, or a
    ///   header already parsed) is the next frame, begun now: the handler hears `betweenFrames`
    ///   first, so that frame's deadlines run from its own first byte. Without it, frames that
    ///   follow one another in one read never showed `betweenFrames` (that needs a read to end
    ///   exactly at a frame's end), and every later frame ran on the first one's clock: a client
    ///   retrying behind bodies refused "server busy" lost its connection in the boot storm
    ///   (PeersRound7Tests).
    private mutating func report(_ context: ChannelHandlerContext, buffered: Int, frameEnded: Bool = false) {
        if frameEnded && progress != .betweenFrames {
            progress = .betweenFrames
            context.fireUserInboundEventTriggered(FrameProgress.betweenFrames)
        }
        let now: FrameProgress
        if !inner.isBetweenFrames {
            now = .inBody
        } else {
            now = buffered > 0 ? .inHeader : .betweenFrames
        }
        if now != progress {
            progress = now
            context.fireUserInboundEventTriggered(now)
        }
    }
}

/// Turns a request frame into its reply frame. Called on the connection's event loop; may
/// complete on any thread. The handler releases the request body's budget when it completes.
public typealias FrameProcessor = @Sendable (Frame, EventLoop) -> EventLoopFuture<Frame>

/// A `FrameProcessor` that is also given the stamp its frame got when it was decoded
/// (`FrameArrival`), however long it then waited in the connection's queue.
public typealias StampedFrameProcessor = @Sendable (Frame, UInt64?, EventLoop) -> EventLoopFuture<Frame>

/// Answers a request on the connection's event loop, before `process` is asked, when the answer
/// needs no work (a `status`, a refusal of a frame that is no request): the reply, or nil to hand
/// the frame to `process`. Called with the frame's arrival stamp; it must not block and must do no
/// body-sized work (it runs between the loop's reads). Its reply is written as `process`'s are
/// (same in-flight slot, reply pool and flush), without a future and a callback per request.
public typealias LoopAnswer = (Frame, UInt64?) -> Frame?

/// Called on the connection's event loop when a request frame is decoded (read), in the order the
/// connection sent its frames: the stamp its processor is given when it starts.
public typealias FrameArrival = @Sendable () -> UInt64?

/// Called on the connection's event loop when a reply has left the server: its write completed
/// (handed to the socket) or failed, or the connection closed before it was written. A port that
/// counts what its replies hold (the admin port's audit pages) gives it back here.
public typealias ReplyWritten = @Sendable (Frame) -> Void

public final class BoundedFrameHandler: ChannelInboundHandler {
    public typealias InboundIn = InboundFrame
    public typealias OutboundOut = Frame

    private let configuration: PortLimits
    private let budget: BufferBudget
    private let process: StampedFrameProcessor
    private let answerOnLoop: LoopAnswer?
    private let arrival: FrameArrival?
    private let replyWritten: ReplyWritten?
    private var logger: Logger
    /// Shared with this connection's decoder: `pending.count` is published there.
    private let gate: DecodeGate
    /// A synthetic read is queued to make the decoder cut the frames it left behind the gate.
    private var resumeScheduled = false

    /// Each with its arrival stamp, taken when it was decoded (`FrameArrival`).
    private var pending = CircularBuffer<(item: InboundFrame, arrival: UInt64?)>() { didSet { gate.queued = pending.count } }
    private var inFlight = 0
    private var readPaused = false
    private var progress = FrameProgress.betweenFrames
    private var frameStarted: NIODeadline?
    /// Replies handed to the socket whose write has not completed yet, and when the last write
    /// made progress (completed, or was issued while none was outstanding).
    private var writesOutstanding = 0
    /// Bytes of replies handed to the socket whose write has not completed; of them, the bytes
    /// beyond the pool's allowance charged to the port's `ReplyPool`.
    private var unsent = 0
    private var pooled = 0
    /// After the last flush the socket left bytes unwritten: the peer is not taking its replies.
    private var refusing = false
    /// A flush is queued on the loop for the replies written since the last one (`scheduleFlush`).
    private var flushScheduled = false
    /// Inside a read batch (channelRead ... channelReadComplete): replies written now wait for
    /// channelReadComplete's flush (`unflushed`), which comes in the same event-loop turn.
    private var inReadBatch = false
    private var unflushed = false
    /// The peer half-closed (`PeerSentEOF`): once everything read is answered, the connection closes.
    private var inputClosed = false
    private var writeProgress = NIODeadline.now()
    private var lastActivity = NIODeadline.now()
    private var timer: RepeatedTask?

    /// - Parameter gate: shared with the connection's `BudgetedFrameDecoder`; its capacity is
    ///   the most requests held decoded but not started (`addBoundedFrameHandlers` gives
    ///   `maximumInFlightPerConnection`).
    public convenience init(configuration: PortLimits, budget: BufferBudget, logger: Logger, gate: DecodeGate, process: @escaping FrameProcessor) {
        self.init(configuration: configuration, budget: budget, logger: logger, gate: gate, arrival: nil) { frame, _, loop in process(frame, loop) }
    }

    /// - Parameter arrival: stamps each request frame when it is decoded, before it may wait in
    ///   `pending` behind the in-flight cap; `process` is given that stamp when the frame starts.
    /// - Parameter replyWritten: told of each reply once it has left the server (`ReplyWritten`).
    /// - Parameter answerOnLoop: asked first for each request frame (`LoopAnswer`).
    public init(configuration: PortLimits, budget: BufferBudget, logger: Logger, gate: DecodeGate, arrival: FrameArrival?,
                replyWritten: ReplyWritten? = nil, answerOnLoop: LoopAnswer? = nil, process: @escaping StampedFrameProcessor) {
        self.configuration = configuration
        self.budget = budget
        self.logger = logger
        self.gate = gate
        self.arrival = arrival
        self.replyWritten = replyWritten
        self.process = process
        self.answerOnLoop = answerOnLoop
    }

    // MARK: Lifecycle

    public func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "conn"] = "\(ObjectIdentifier(context.channel).hashValue & 0xffff)"
        lastActivity = .now()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { _ in
            let (handler, context) = bound.value
            handler.checkDeadlines(context: context)
        }
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        // Frames never started: give their bodies back to the budget.
        while let (item, _) = pending.popFirst() {
            if case .frame(let f) = item { budget.release(f.body.readableBytes, ofBody: f.body.readableBytes, holder: gate.holder) }
        }
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        // Replies whose write never completed (none should remain): what they held goes back.
        if pooled > 0 { budget.replies.release(pooled); pooled = 0 }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = .now()
        inReadBatch = true
        let item = unwrapInboundIn(data)
        // Stamped as it is read, in the connection's order: a request decoded before another
        // connection's reset landed keeps a stamp from before it, however long the in-flight cap
        // keeps it queued (docs/protocol.md, register-guest "Once.").
        var stamp: UInt64? = nil
        if case .frame = item { stamp = arrival?() }
        pending.append((item, stamp))
        pump(context: context)
    }

    /// Replies answered on the loop while a read batch was delivered (`status`, refusals) are
    /// flushed together here, NIO's usual place, without a task of their own.
    public func channelReadComplete(context: ChannelHandlerContext) {
        inReadBatch = false
        if unflushed {
            unflushed = false
            context.flush()
            afterFlush(context: context)
        }
        context.fireChannelReadComplete()
        resumeDecoding(context: context)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is PeerSentEOF {
            // The peer half-closed: its requests are all here (or behind the gate); answer them,
            // then close (`closeWhenAnswered`).
            inputClosed = true
            closeWhenAnswered(context: context)
            return
        }
        if let p = event as? FrameProgress {
            if progress == .betweenFrames && p != .betweenFrames { frameStarted = .now() }
            if p == .betweenFrames { frameStarted = nil }
            progress = p
            lastActivity = .now()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            pump(context: context)
        } else {
            updateReading(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Decoder errors cannot happen (the decoder never throws on input); I/O errors end this
        // connection only.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Work

    /// Start pending requests while the in-flight cap and the socket allow, then decide whether
    /// to keep reading.
    private func pump(context: ChannelHandlerContext) {
        // A closed connection starts nothing: what it queued is dropped at channelInactive.
        while context.channel.isActive && inFlight < configuration.maximumInFlightPerConnection && context.channel.isWritable,
              let (item, stamp) = pending.popFirst() {
            start(item, arrival: stamp, context: context)
        }
        updateReading(context: context)
        resumeDecoding(context: context)
        closeWhenAnswered(context: context)
    }

    /// After the peer's EOF: close once every request read has been answered (its reply written),
    /// nothing is queued and the decoder holds no complete frame behind the gate. A partial frame
    /// left at EOF can never complete and is dropped with the connection.
    private func closeWhenAnswered(context: ChannelHandlerContext) {
        guard inputClosed, context.channel.isActive, inFlight == 0, pending.isEmpty, !gate.held, !resumeScheduled else { return }
        if gate.droppedAtEOF > 0 {
            logger.info("frames dropped at the peer's EOF", metadata: ["bytes": "\(gate.droppedAtEOF)"])
        }
        context.close(promise: nil)
    }

    /// The decoder stopped at the gate with bytes left and the queue has drained to half: make it
    /// decode them. Those bytes are already read, so no read event will come for them; a
    /// synthetic empty read from the pipeline's head runs the decoder over its buffer. Queued as
    /// a task (never nested in a read batch, a flush or a write completion); it cuts at most the
    /// gate's room of frames.
    private func resumeDecoding(context: ChannelHandlerContext) {
        guard gate.held, gate.hasRoom, !inReadBatch, !resumeScheduled, context.channel.isActive else { return }
        resumeScheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.resumeScheduled = false
            guard handler.gate.held, handler.gate.hasRoom, context.channel.isActive else { return }
            handler.gate.held = false
            context.pipeline.syncOperations.fireChannelRead(NIOAny(context.channel.allocator.buffer(capacity: 0)))
            context.pipeline.syncOperations.fireChannelReadComplete()
            handler.closeWhenAnswered(context: context)
        }
    }

    private func start(_ item: InboundFrame, arrival: UInt64?, context: ChannelHandlerContext) {
        inFlight += 1
        switch item {
        case .refused(let id, let type, let code, let message):
            // Throttled for the port (every refusal is answered either way).
            budget.refusalLog.warning(logger, "frame refused", ["id": "\(id)", "type": "\(type)", "code": "\(code)", "why": "\(message)"])
            let reply = Message.error(ErrorReply(code: code, message: message)).frame(requestID: id)
            write(reply, context: context, closeAfter: code == .badMagic)
        case .frame(let frame):
            let bodyBytes = frame.body.readableBytes
            let holder = gate.holder
            if let answer = answerOnLoop, let reply = answer(frame, arrival) {
                budget.release(bodyBytes, ofBody: bodyBytes, holder: holder)
                write(reply, context: context, closeAfter: false)
                return
            }
            let id = frame.requestID
            let budget = self.budget
            let future = process(frame, arrival, context.eventLoop)
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            future.hop(to: context.eventLoop).whenComplete { result in
                budget.release(bodyBytes, ofBody: bodyBytes, holder: holder)
                let (handler, context) = bound.value
                let reply: Frame
                switch result {
                case .success(let f): reply = f
                case .failure(let e):
                    reply = Message.error(ErrorReply(code: .unavailable, message: "not processed: \(e)")).frame(requestID: id)
                }
                handler.write(reply, context: context, closeAfter: false)
            }
        }
    }

    /// Write one reply; its in-flight slot is freed when the write has completed (or failed).
    private func write(_ reply: Frame, context: ChannelHandlerContext, closeAfter: Bool) {
        let n = WireLimits.headerSize + reply.body.readableBytes
        guard context.channel.isActive, admitReply(n, context: context) else {
            inFlight -= 1  // Nothing more is started on a closed connection (`pump`).
            replyWritten?(reply)
            return
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        if writesOutstanding == 0 { writeProgress = .now() }
        writesOutstanding += 1
        let replyWritten = self.replyWritten
        context.write(wrapOutboundOut(reply)).whenComplete { _ in
            replyWritten?(reply)
            let (handler, context) = bound.value
            handler.replyLeft(n)
            handler.writesOutstanding -= 1
            let now = NIODeadline.now()
            handler.writeProgress = now
            handler.inFlight -= 1
            handler.lastActivity = now
            if closeAfter {
                context.close(promise: nil)
            } else {
                handler.pump(context: context)
            }
        }
        scheduleFlush(context: context)
    }

    /// A reply of `n` bytes is about to be queued: its bytes beyond the connection's allowance are
    /// charged to the port's `ReplyPool`. When they do not fit and the peer left bytes of an
    /// earlier reply unwritten, the connection is closed (false): it does not read, and what it
    /// would hold is another connection's room. A peer that took every earlier reply gets this one
    /// whatever is left; the flush shows whether it takes it (`afterFlush`).
    private func admitReply(_ n: Int, context: ChannelHandlerContext) -> Bool {
        let pool = budget.replies
        let need = max(0, unsent + n - pool.allowance) - pooled
        if need > 0 {
            guard pool.charge(need, force: !refusing) else {
                closeForUnreadReplies(context: context, adding: n)
                return false
            }
            pooled += need
        }
        unsent += n
        return true
    }

    /// `n` bytes of replies left the server (written, or failed at close): give back what of
    /// them was charged.
    private func replyLeft(_ n: Int) {
        unsent -= n
        let keep = max(0, unsent - budget.replies.allowance)
        if pooled > keep {
            budget.replies.release(pooled - keep)
            pooled = keep
        }
        if unsent == 0 { refusing = false }
    }

    /// Called right after a flush: what is still unsent, the socket refused. A peer that leaves
    /// replies beyond its allowance unread while the port's pool is over its total is closed.
    private func afterFlush(context: ChannelHandlerContext) {
        refusing = unsent > 0
        if refusing && pooled > 0 && budget.replies.isOver && context.channel.isActive {
            closeForUnreadReplies(context: context, adding: 0)
        }
    }

    private func closeForUnreadReplies(context: ChannelHandlerContext, adding n: Int) {
        budget.replies.countClose()
        logger.info("closing connection", metadata: ["why": "peer does not read its replies: \(unsent) bytes unsent\(n > 0 ? " and a reply of \(n) more" : ""), the port's \(budget.replies.total) bytes of unsent replies beyond each connection's \(budget.replies.allowance) are held"])
        context.close(promise: nil)
    }

    /// One flush for the replies written in this event-loop turn: replies of pipelined requests
    /// judged together complete on the loop one after another, and a flush each was a `writev`
    /// each. The flush runs as a task after the completions already queued, never later than the
    /// loop's next turn, so a reply is not held back and the write-stall clock (which starts when
    /// the write is issued) only counts time the socket refused bytes.
    private func scheduleFlush(context: ChannelHandlerContext) {
        if inReadBatch {
            unflushed = true
            return
        }
        guard !flushScheduled else { return }
        flushScheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.flushScheduled = false
            context.flush()
            handler.afterFlush(context: context)
        }
    }

    private func updateReading(context: ChannelHandlerContext) {
        let pause = !pending.isEmpty || inFlight >= configuration.maximumInFlightPerConnection || !context.channel.isWritable
        if pause && !readPaused {
            readPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        } else if !pause && readPaused {
            readPaused = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            context.read()
        }
    }

    // MARK: Deadlines

    private func checkDeadlines(context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        let now = NIODeadline.now()
        var why: String?
        if writesOutstanding > 0 && now - writeProgress > configuration.writeStallTimeout {
            why = "peer read no reply for \(configuration.writeStallTimeout.nanoseconds / 1_000_000) ms"
        } else if let started = frameStarted {
            // From the frame's first byte, reading paused or not: a partial frame holds its body's
            // budget reservation (the body bytes received so far) and a connection slot, and a pause lasts as
            // long as the peer keeps the connection at its in-flight cap or its replies unread, so
            // neither a pause nor a resume may stretch or restart the deadline (a peer pacing its
            // requests held a reservation past it: AdversarialPeerTests).
            if progress == .inHeader && now - started > configuration.headerDeadline {
                why = "frame header incomplete after \(configuration.headerDeadline.nanoseconds / 1_000_000) ms"
            } else if now - started > configuration.frameDeadline {
                why = "frame incomplete after \(configuration.frameDeadline.nanoseconds / 1_000_000) ms"
            }
        } else if inFlight == 0 && pending.isEmpty && progress == .betweenFrames && now - lastActivity > configuration.idleTimeout {
            why = "idle for \(configuration.idleTimeout.nanoseconds / 1_000_000) ms"
        }
        if let why {
            logger.info("closing connection", metadata: ["why": "\(why)"])
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension BoundedFrameHandler: Sendable {}

extension ServerBootstrap {
    /// One read of at most `TransportLimits.readBufferSize` bytes per readable event on every
    /// accepted connection. NIO's read loop (BaseStreamSocketChannel.readFromSocket) performs up to
    /// `maxMessagesPerRead` reads per event and checks neither autoRead nor what the pipeline
    /// holds, so each read past the first can only add bytes a paused connection must keep (16 of
    /// 64 KiB: 1 MiB per connection, 128 MiB for the VMM port's 128). With one, a connection that
    /// stopped reading (in-flight cap, unread replies) holds at most one buffer beyond its queued
    /// requests; the rest waits in the kernel's socket buffer. Every port binds through this.
    ///
    /// Half-closure is allowed: a peer's EOF ends its requests, not its replies (NIO would close
    /// the channel at EOF and drop every reply not yet written; `PeerEOFRelay`).
    public func boundedReads() -> ServerBootstrap {
        childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: TransportLimits.readsPerEvent)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: TransportLimits.readBufferSize))
    }

    /// Accept backs off on EMFILE/ENFILE/ENOBUFS/ENOMEM instead of spinning (`AcceptPause`).
    public func acceptBackoff(_ delay: TimeAmount = TransportLimits.acceptBackoff) -> ServerBootstrap {
        serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(AcceptPause(delay: delay))
            }
        }
    }
}

/// Sent to `BoundedFrameHandler` when the peer half-closed (its `ChannelEvent.inputClosed`).
public struct PeerSentEOF: Sendable {}

/// In front of the decoder: turns the peer's EOF (`ChannelEvent.inputClosed`, with
/// `allowRemoteHalfClosure`) into `PeerSentEOF`, after one empty read that lets the decoder cut
/// what it can and trim what waits behind the gate (`DecodeGate.inputClosed`).
/// `ByteToMessageHandler` must not see `inputClosed` itself: it would run `decodeLast` once and
/// then decode nothing more, so the frames behind the gate would never be answered.
final class PeerEOFRelay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let gate: DecodeGate

    init(gate: DecodeGate) { self.gate = gate }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .some(.inputClosed) = event as? ChannelEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        gate.inputClosed = true
        context.fireChannelRead(wrapInboundOut(context.channel.allocator.buffer(capacity: 0)))
        context.fireChannelReadComplete()
        context.fireUserInboundEventTriggered(PeerSentEOF())
    }
}

@available(*, unavailable)
extension PeerEOFRelay: Sendable {}

/// On the listening channel: when accept fails for lack of resources, stop accepting for `delay`.
///
/// NIO's classic `bind(…)` adds no `AcceptBackoffHandler`, and that handler would not help: after
/// a failed accept4 the server channel keeps its read pending and its epoll interest, so at the
/// fd limit the listening socket stays readable and accept4 failed ~10,000 times a second (31%
/// of a core measured with RLIMIT_NOFILE 64), starving the connections already open. Turning
/// autoRead off drops the pending read and the epoll interest (`pauseRead0`); turning it back on
/// after `delay` re-arms it.
final class AcceptPause: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    private let delay: TimeAmount
    private var paused = false

    init(delay: TimeAmount) { self.delay = delay }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let e = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(e.errnoCode) {
            guard !paused else { return }
            paused = true
            let channel = context.channel
            channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: delay) {
                bound.value.paused = false
                channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            }
            return
        }
        context.fireErrorCaught(error)
    }
}

@available(*, unavailable)
extension AcceptPause: Sendable {}

extension ChannelPipeline.SynchronousOperations {
    /// The bounded pipeline of one server connection (see the diagram at the top of this file).
    public func addBoundedFrameHandlers(configuration: PortLimits, budget: BufferBudget, logger: Logger,
                                        process: @escaping FrameProcessor) throws {
        try addBoundedFrameHandlers(configuration: configuration, budget: budget, logger: logger, arrival: nil) { frame, _, loop in process(frame, loop) }
    }

    /// The same, with each request frame stamped by `arrival` when it is decoded.
    public func addBoundedFrameHandlers(configuration: PortLimits, budget: BufferBudget, logger: Logger, arrival: FrameArrival?,
                                        replyWritten: ReplyWritten? = nil, answerOnLoop: LoopAnswer? = nil,
                                        process: @escaping StampedFrameProcessor) throws {
        let gate = DecodeGate(capacity: configuration.maximumInFlightPerConnection)
        try addHandler(PeerEOFRelay(gate: gate))
        try addHandler(ByteToMessageHandler(BudgetedFrameDecoder(maximumBodySize: configuration.maximumBodySize, budget: budget, gate: gate)))
        try addHandler(FrameWriter())
        try addHandler(BoundedFrameHandler(configuration: configuration, budget: budget, logger: logger, gate: gate, arrival: arrival,
                                           replyWritten: replyWritten, answerOnLoop: answerOnLoop, process: process))
    }
}
