// SPDX-License-Identifier: Apache-2.0
//
// Frame codec for SwiftNIO pipelines. Framing is kept separate from message decoding
// (docs/protocol.md): this decoder only cuts the byte stream into frames; `Message(type:body:)`
// interprets them. Decoder states:
//
//     waitingForHeader ──(20 bytes, magic ok, length ≤ limit)──▶ waitingForBody ──▶ emit .frame
//            │  │                                             each chunk │ admitBody(chunk) refused
//            │  │                                                        ▼
//            │  └──(length > limit)──▶ emit .refused(frameTooLarge) ─▶ discarding(n) ──▶ waitingForHeader
//            └──(bad magic)──▶ emit .refused(badMagic) ─▶ broken (all further input dropped)
//
// An oversized body is never buffered: its bytes are dropped as they arrive, so a peer cannot
// make the receiver allocate more than `maximumBodySize` for one frame, and the connection stays
// usable afterwards.
//
// A server also bounds what all its connections buffer together: `admitBody` is asked for every
// chunk of body bytes as it arrives, before the chunk is kept, never for bytes not yet received
// (a peer declaring a large body but sending nothing holds nothing; reserving the declared length
// at the header let header-only frames take a whole shared budget: AdversarialPeerTests). It is
// also asked once at the header with 0 bytes ("may this body start?"; nothing is held). When it
// refuses, the decoder gives back what this frame was admitted (`releaseBody`), drops the bytes
// received, emits `.refused(unavailable)` and discards the rest of the body exactly as for an
// oversized one (the `discarding` state above), so the refused peer costs no memory and its
// connection stays usable.

import NIOCore

/// What the decoder hands to the next handler.
public enum InboundFrame: Sendable, Equatable {
    /// A complete frame whose length was within the limit.
    case frame(Frame)
    /// A frame refused at the header; the handler answers with an `error` frame.
    case refused(requestID: UInt64, type: MessageType, code: WireErrorCode, message: String)
}

public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = InboundFrame

    enum State {
        case waitingForHeader
        case waitingForBody(version: UInt16, type: MessageType, requestID: UInt64, length: Int)
        /// A large body taken into its own buffer as it arrives (see `collectedBodyThreshold`);
        /// the buffer is allocated when the first body byte is admitted.
        case collectingBody(version: UInt16, type: MessageType, requestID: UInt64, length: Int, body: ByteBuffer?)
        case discarding(remaining: Int)
        case broken
    }

    private var state: State = .waitingForHeader
    public let maximumBodySize: Int
    /// Asked `(bytes, bodyLength)` before body bytes are kept: once at the header with `bytes` 0
    /// (after the size check; nothing is held yet), then for each chunk as it arrives with the
    /// chunk's size, so the bytes admitted for a frame never exceed the bytes received. Returns
    /// nil to keep them, or a message to refuse the frame with `unavailable`. nil = admit all.
    /// A server uses it to reserve body bytes in a budget shared by all connections.
    public var admitBody: ((_ bytes: Int, _ bodyLength: Int) -> String?)?
    /// Called `(bytes, bodyLength)` with what a frame refused mid-body had been admitted, when the
    /// decoder drops it. (A completed frame's bytes travel with its body; the owner gives them back
    /// when it is done with it. A partial frame's are `admittedBodyBytes`.)
    public var releaseBody: ((_ bytes: Int, _ bodyLength: Int) -> Void)?
    /// Body bytes of the partial frame admitted so far (0 between frames and while discarding).
    public private(set) var admittedBodyBytes = 0
    /// Frames whose last byte has been consumed (emitted whole, or refused and discarded to their
    /// end), wrapping. A change across a `decodeOne` with bytes left means the next frame began in
    /// what was read: the frame deadline runs from each frame's own first byte, and frames that
    /// follow one another in one read never pass through an empty buffer between them.
    public private(set) var framesEnded: UInt64 = 0

    /// The body length this decoder is buffering right now (admitted, not yet complete), or nil.
    public var awaitingBodyLength: Int? {
        switch state {
        case .waitingForBody(_, _, _, let length), .collectingBody(_, _, _, let length, _): return length
        default: return nil
        }
    }

    /// Bodies of at least this many bytes are copied into a buffer of their own as their bytes
    /// arrive (grown by doubling with the admitted bytes, up to the body's length), instead of
    /// waiting in the channel's cumulation buffer. Keeping a large body there made every later read
    /// into it copy the whole storage again (and its growth reallocated it): for module-sized
    /// bodies that copying cost the event loop more CPU than judging cost the pool. One copy per
    /// body (plus at most one more while its buffer doubles), and the cumulation stays small and
    /// reused. Smaller bodies wait in the cumulation until complete and are then copied once into
    /// a buffer of exactly their length: no body is ever a slice that keeps the cumulation's
    /// storage alive while its request is judged.
    public static let collectedBodyThreshold = 64 << 10

    /// True between frames: no header, body or discard in progress (buffered bytes aside).
    public var isBetweenFrames: Bool {
        if case .waitingForHeader = state { return true }
        return false
    }

    public init(maximumBodySize: Int = WireLimits.defaultMaximumBodySize) {
        self.maximumBodySize = min(maximumBodySize, WireLimits.absoluteMaximumBodySize)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch try decodeOne(&buffer) {
        case .some(let out):
            context.fireChannelRead(Self.wrapInboundOut(out))
            return .continue
        case .none:
            return buffer.readableBytes > 0 && isDiscardingOrBroken ? .continue : .needMoreData
        }
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // Leftover bytes of a partial frame at EOF are dropped: nobody is left to answer.
        while let out = try decodeOne(&buffer) { context.fireChannelRead(Self.wrapInboundOut(out)) }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    private var isDiscardingOrBroken: Bool {
        switch state {
        case .discarding, .broken: return true
        default: return false
        }
    }

    /// The codec's core, usable without a channel (tests, the in-guest raw-socket client).
    /// Returns nil when more bytes are needed. It never moves the reader index past a partial
    /// frame, except into the frame's own body buffer for a body of `collectedBodyThreshold` bytes
    /// or more (the decoder then holds those bytes itself).
    public mutating func decodeOne(_ buffer: inout ByteBuffer) throws -> InboundFrame? {
        while true {
            switch state {
            case .broken:
                buffer.moveReaderIndex(to: buffer.writerIndex)
                return nil
            case .discarding(let remaining):
                let n = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: n)
                if n < remaining {
                    state = .discarding(remaining: remaining - n)
                    return nil
                }
                state = .waitingForHeader
                framesEnded &+= 1
            case .waitingForHeader:
                guard buffer.readableBytes >= WireLimits.headerSize else { return nil }
                // Safe: 20 readable bytes were confirmed just above, so every read succeeds.
                let magic = buffer.readInteger(as: UInt32.self)!
                let version = buffer.readInteger(as: UInt16.self)!
                let type = MessageType(rawValue: buffer.readInteger(as: UInt16.self)!)
                let requestID = buffer.readInteger(as: UInt64.self)!
                let length32 = buffer.readInteger(as: UInt32.self)!
                guard magic == WireLimits.magic else {
                    state = .broken
                    return .refused(requestID: 0, type: type, code: .badMagic,
                                    message: "bad magic 0x\(String(magic, radix: 16)); expected 0x\(String(WireLimits.magic, radix: 16)) (\"EXGT\")")
                }
                guard let length = Int(exactly: length32), length <= maximumBodySize else {
                    state = .discarding(remaining: Int(length32))
                    return .refused(requestID: requestID, type: type, code: .frameTooLarge,
                                    message: "body of \(length32) bytes exceeds the limit of \(maximumBodySize)")
                }
                if let admit = admitBody, let refusal = admit(0, length) {
                    state = .discarding(remaining: length)
                    return .refused(requestID: requestID, type: type, code: .unavailable, message: refusal)
                }
                admittedBodyBytes = 0
                if length >= Self.collectedBodyThreshold {
                    state = .collectingBody(version: version, type: type, requestID: requestID, length: length, body: nil)
                } else {
                    state = .waitingForBody(version: version, type: type, requestID: requestID, length: length)
                }
            case .waitingForBody(let version, let type, let requestID, let length):
                // The body stays in `buffer` until complete; what arrived of it is admitted first.
                let have = min(buffer.readableBytes, length)
                if have > admittedBodyBytes, let admit = admitBody, let refusal = admit(have - admittedBodyBytes, length) {
                    return abortBody(&buffer, dropping: have, remaining: length - have, requestID: requestID, type: type, length: length, refusal: refusal)
                }
                admittedBodyBytes = have
                guard var slice = buffer.readSlice(length: length) else { return nil }
                // The body gets a buffer of its own, exactly its length: a slice would keep the
                // whole cumulation storage (the socket's read buffer, up to 64 KiB, or one grown
                // for a pending body, up to 128 KiB) alive while the request is judged, while the
                // budget is charged only the body's bytes; 1,024 held 100-byte bodies pinned
                // 97 MiB (BudgetAccountingTests.testTinyBodiesCannotPinWholeReadBuffers). One copy
                // of < 64 KiB per request, and the cumulation, no longer shared, is reused in place.
                var body = ByteBufferAllocator().buffer(capacity: length)
                body.writeBuffer(&slice)
                state = .waitingForHeader
                admittedBodyBytes = 0
                framesEnded &+= 1
                return .frame(Frame(version: version, type: type, requestID: requestID, body: body))
            case .collectingBody(let version, let type, let requestID, let length, var collected):
                let n = min(length - admittedBodyBytes, buffer.readableBytes)
                guard n > 0 else { return nil }
                if let admit = admitBody, let refusal = admit(n, length) {
                    return abortBody(&buffer, dropping: n, remaining: length - admittedBodyBytes - n, requestID: requestID, type: type, length: length, refusal: refusal)
                }
                admittedBodyBytes += n
                // Leave the state, and move the buffer out of `collected`, before writing so `body`
                // is the only reference (else every chunk copied the whole body: copy on write).
                state = .broken
                // The buffer follows the admitted bytes, not the declared length: allocated at the
                // first admitted byte and doubled as bytes come, up to `length` (NIO rounds a
                // growth to a power of two: capacity < 2 × length, the pages past the body never
                // touched), so a partial body's address space is a small multiple of its bytes.
                // Allocating the declared length at once let 120 peers each sending one byte of a
                // 28 MiB body map 3.75 GiB more address space (untouched, but strict overcommit
                // would refuse it: AdversarialPeerTests.testOneByteOfManyLargeBodiesMapsNoDeclaredLength). Doubling copies at most the body once more in all,
                // and a large buffer's realloc moves its pages (mremap) rather than copying them.
                var body = collected.take() ?? ByteBufferAllocator().buffer(capacity: min(length, max(n, Self.collectedBodyThreshold)))
                if body.writableBytes < n {
                    body.reserveCapacity(min(length, max(body.capacity * 2, body.writerIndex + n)))
                }
                // Safe: n ≤ readableBytes, so the slice exists.
                var chunk = buffer.readSlice(length: n)!
                body.writeBuffer(&chunk)
                guard body.readableBytes == length else {
                    state = .collectingBody(version: version, type: type, requestID: requestID, length: length, body: body)
                    return nil
                }
                state = .waitingForHeader
                admittedBodyBytes = 0
                framesEnded &+= 1
                return .frame(Frame(version: version, type: type, requestID: requestID, body: body))
            }
        }
    }
}

extension FrameDecoder {
    /// A chunk of a partial body was refused: give back what the frame was admitted, drop the
    /// `dropping` bytes of it in `buffer` and everything kept, and discard the `remaining` bytes
    /// still to come.
    private mutating func abortBody(_ buffer: inout ByteBuffer, dropping: Int, remaining: Int, requestID: UInt64, type: MessageType,
                                    length: Int, refusal: String) -> InboundFrame {
        if admittedBodyBytes > 0 { releaseBody?(admittedBodyBytes, length) }
        admittedBodyBytes = 0
        buffer.moveReaderIndex(forwardBy: dropping)
        state = remaining > 0 ? .discarding(remaining: remaining) : .waitingForHeader
        if remaining == 0 { framesEnded &+= 1 }
        return .refused(requestID: requestID, type: type, code: .unavailable, message: refusal)
    }
}

/// Writes frames without copying their bodies: the 20-byte header goes out as its own buffer and
/// the body as it is (NIO gathers both into one `writev`). `FrameEncoder` copied every body into a
/// fresh buffer first — for module-sized requests a new allocation (page faults included) and a
/// copy per request on the writer's event loop.
public final class FrameWriter: ChannelOutboundHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    /// Bodies up to this size are copied behind their header; larger ones are written from their
    /// own buffer (no copy of a module-sized body).
    static let copyLimit = 4096

    public init() {}

    /// The 20-byte header of a frame whose body is `bodyLength` bytes (written apart from it).
    public static func header(version: UInt16 = WireLimits.protocolVersion, type: MessageType, requestID: UInt64, bodyLength: Int,
                              allocator: ByteBufferAllocator) -> ByteBuffer {
        var header = allocator.buffer(capacity: WireLimits.headerSize)
        header.writeFrame(Frame(version: version, type: type, requestID: requestID, body: ByteBuffer()))
        // The header says the body's length; `writeFrame` wrote 0 for the empty stand-in.
        // The body of an outgoing frame is built by us and capped far below u32 (see writeFrame).
        precondition(bodyLength <= Int(UInt32.max), "frame body exceeds u32")
        header.setInteger(UInt32(bodyLength), at: header.readerIndex + 16)
        return header
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = Self.unwrapOutboundIn(data)
        if frame.body.readableBytes <= Self.copyLimit {
            // Small frames (every reply but the largest) go out as one buffer: copying a few KiB
            // costs less than a second pending write and a `writev` of two.
            var out = context.channel.allocator.buffer(capacity: WireLimits.headerSize + frame.body.readableBytes)
            out.writeFrame(frame)
            context.write(Self.wrapOutboundOut(out), promise: promise)
            return
        }
        let header = Self.header(version: frame.version, type: frame.type, requestID: frame.requestID, bodyLength: frame.body.readableBytes,
                                 allocator: context.channel.allocator)
        context.write(Self.wrapOutboundOut(header), promise: nil)
        context.write(Self.wrapOutboundOut(frame.body), promise: promise)
    }
}

@available(*, unavailable)
extension FrameWriter: Sendable {}

public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}
    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.reserveCapacity(WireLimits.headerSize + data.body.readableBytes)
        out.writeFrame(data)
    }
}
