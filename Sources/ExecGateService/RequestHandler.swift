// SPDX-License-Identifier: Apache-2.0
//
// One per connection. Turns inbound frames into replies:
//   - refused frames (bad magic, too large) → `error` at once; bad magic also closes the stream,
//     because after a wrong header nothing tells us where the next frame starts;
//   - replies sent as requests, wrong versions → `error`, connection stays usable;
//   - requests → decoded and judged on the thread pool, so a slow module check never blocks the
//     event loop and pipelined requests on one connection are judged concurrently. Replies carry
//     the request id and may be written in any order.
// A connection with too many requests in flight stops being read until some finish (backpressure),
// so one client cannot queue unbounded work.

import ExecGateWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    typealias OutboundOut = Frame

    private let responder: RequestResponder
    private let pool: NIOThreadPool
    private var logger: Logger
    private let stats: ServerStats
    private var inFlight = 0
    private var readPaused = false

    init(responder: RequestResponder, pool: NIOThreadPool, logger: Logger, stats: ServerStats) {
        self.responder = responder
        self.pool = pool
        self.logger = logger
        self.stats = stats
    }

    func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "conn"] = "\(ObjectIdentifier(context.channel).hashValue & 0xffff)"
        logger.debug("connection opened")
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .refused(let id, let type, let code, let message):
            logger.warning("frame refused", metadata: ["id": "\(id)", "type": "\(type)", "code": "\(code)", "why": "\(message)"])
            let reply = Message.error(ErrorReply(code: code, message: message)).frame(requestID: id)
            if code == .badMagic {
                context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
            } else {
                context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            }
        case .frame(let frame):
            handle(frame, context: context)
        }
    }

    private func handle(_ frame: Frame, context: ChannelHandlerContext) {
        guard frame.version == WireLimits.protocolVersion else {
            replyError(context, frame.requestID, .unsupportedVersion,
                       "frame version \(frame.version); this server speaks version \(WireLimits.protocolVersion)")
            return
        }
        guard frame.type.isRequest else {
            replyError(context, frame.requestID, .badRequest, "\(frame.type) is a reply type, not a request")
            return
        }
        inFlight += 1
        stats.begin()
        if inFlight >= ServiceLimits.maximumInFlightPerConnection && !readPaused {
            readPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
        let responder = self.responder
        let stats = self.stats
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let handlerBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        pool.runIfActive(eventLoop: context.eventLoop) { () -> Message in
            let message: Message
            do {
                message = try Message(type: frame.type, body: frame.body)
            } catch let e as UnknownMessageType {
                return .error(ErrorReply(code: .unknownMessageType, message: "unknown message type 0x\(String(e.type.rawValue, radix: 16))"))
            } catch {
                return .error(ErrorReply(code: .malformedBody, message: "\(frame.type): \(error)"))
            }
            if case .status = message {
                return .statusReply(responder.status(uptimeMilliseconds: stats.uptimeMilliseconds, requestsServed: stats.served))
            }
            return responder.respond(to: message, requestDigest: responder.digest(of: frame.body))
        }.whenComplete { result in
            let context = loopBound.value
            let handler = handlerBound.value
            let reply: Message
            switch result {
            case .success(let m): reply = m
            case .failure(let e): reply = .error(ErrorReply(code: .unavailable, message: "not processed: \(e)"))
            }
            handler.finished(context: context, reply: reply, requestID: frame.requestID, type: frame.type)
        }
    }

    private func finished(context: ChannelHandlerContext, reply: Message, requestID: UInt64, type: MessageType) {
        inFlight -= 1
        stats.end()
        if case .verdict(let v) = reply {
            logger.info("verdict", metadata: [
                "id": "\(requestID)", "module": "\(v.moduleName)", "decision": "\(v.decision)",
                "reason": "\(v.reason.name)", "policy": "\(v.policyID)@\(v.policyVersion)",
            ])
        } else if case .error(let e) = reply {
            logger.warning("request failed", metadata: ["id": "\(requestID)", "type": "\(type)", "code": "\(e.code)", "why": "\(e.message)"])
        }
        guard context.channel.isActive else { return }
        context.writeAndFlush(wrapOutboundOut(reply.frame(requestID: requestID)), promise: nil)
        if readPaused && inFlight < ServiceLimits.maximumInFlightPerConnection / 2 {
            readPaused = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            context.read()
        }
    }

    private func replyError(_ context: ChannelHandlerContext, _ id: UInt64, _ code: WireErrorCode, _ message: String) {
        logger.warning("request refused", metadata: ["id": "\(id)", "code": "\(code)", "why": "\(message)"])
        context.writeAndFlush(wrapOutboundOut(Message.error(ErrorReply(code: code, message: message)).frame(requestID: id)), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Decoder errors cannot happen (the decoder never throws on input); I/O errors end this
        // connection only.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        logger.debug("connection closed")
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension RequestHandler: Sendable {}
