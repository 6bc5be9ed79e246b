// SPDX-License-Identifier: Apache-2.0
//
// The VMM port's request processing, one frame in, one reply frame out (the connection's
// backpressure, budget and deadlines are `BoundedFrameHandler`'s):
//   - wrong versions, replies sent as requests → `error`, connection stays usable;
//   - requests → decoded and judged on the thread pool, so a slow module check never blocks the
//     event loop and pipelined requests on one connection are judged concurrently; connections
//     take the pool in turn (FairScheduler). Replies carry the request id and may be written in
//     any order.

import ExecGateTransport
import ExecGateWire
import Logging
import NIOCore
import NIOPosix

struct RequestProcessor: Sendable {
    /// Largest `status` body answered on the event loop (a real one is empty).
    static let inlineStatusBodyLimit = 256
    let responder: RequestResponder
    /// The judging pool, taken in turn by connections (`connection` is this one's queue).
    let fair: FairScheduler
    let connection: UInt64
    /// The port's throttle for refusal lines (shared with its connections: BufferBudget.refusalLog).
    let refusalLog: LogThrottle
    let logger: Logger
    let stats: ServerStats
    let instanceID: [UInt8]
    /// The port's largest body (its `PortLimits`, narrowed to memory in the service VM): what
    /// `hello-reply.max_body` tells the VMM, so it never sends a body the port would refuse unread.
    let maximumBodySize: Int

    /// What is answered on the event loop (the connection's `LoopAnswer`): a wrong version, a
    /// reply type sent as a request, and `status`: it judges nothing (counters and the policy's
    /// name), so a hop to the pool and back would be most of its round trip, and a future and its
    /// callback ≈ 1 µs of the ~18 µs left (one core, docs/performance.md). Only a small body is
    /// decoded here; a large one (unknown fields up to the cap) goes to the pool like any
    /// request, so the loop never does body-sized work. Nil: judged on the pool (`judgeOnPool`).
    func answerOnLoop(_ frame: Frame) -> Frame? {
        let id = frame.requestID
        let type = frame.type
        guard frame.version == WireLimits.protocolVersion else {
            return refuse(id, type, .unsupportedVersion, "frame version \(frame.version); this server speaks version \(WireLimits.protocolVersion)")
        }
        guard frame.type.isRequest else { return refuse(id, type, .badRequest, "\(frame.type) is a reply type, not a request") }
        if frame.type == .status && frame.body.readableBytes <= Self.inlineStatusBodyLimit,
           case .status? = try? Message(type: frame.type, body: frame.body) {
            stats.begin()
            let reply = Message.statusReply(responder.status(uptimeMilliseconds: stats.uptimeMilliseconds, requestsServed: stats.served))
            stats.end()
            return reply.frame(requestID: id)
        }
        return nil
    }

    /// A request `answerOnLoop` left (nil), judged on the pool: the connection asks
    /// `answerOnLoop` first for every frame (`BoundedFrameHandler`), so what comes here is a
    /// request of this version. `arrival`: the request's stamp (`RequestResponder.arrival()`),
    /// taken by the connection when it decoded the frame, in the order the connection sent them.
    func judgeOnPool(_ frame: Frame, arrival: UInt64?, on eventLoop: EventLoop) -> EventLoopFuture<Frame> {
        let id = frame.requestID
        let type = frame.type
        stats.begin()
        let responder = self.responder
        // Stamped when the connection decoded it (`arrival`), on the connection's loop in the order
        // the connection sent its requests: not when it starts (it may have waited behind the
        // in-flight cap) nor on the pool thread that judges it (which may run a later reset first).
        let stats = self.stats
        let instanceID = self.instanceID
        let maximumBodySize = UInt32(clamping: self.maximumBodySize)
        return fair.run(connection, on: eventLoop) { () -> Message in
            let message: Message
            do {
                message = try Message(type: frame.type, body: frame.body)
            } catch let e as UnknownMessageType {
                return .error(ErrorReply(code: .unknownMessageType, message: "unknown message type 0x\(String(e.type.rawValue, radix: 16))"))
            } catch {
                return .error(ErrorReply(code: .malformedBody, message: "\(frame.type): \(error)"))
            }
            switch message {
            case .status:
                return .statusReply(responder.status(uptimeMilliseconds: stats.uptimeMilliseconds, requestsServed: stats.served))
            default:
                var reply = responder.respond(to: message, body: frame.body, arrival: arrival)
                switch reply {
                case .helloReply(var h):
                    h.instanceID = instanceID
                    h.maximumBodySize = maximumBodySize
                    reply = .helloReply(h)
                case .error(var e) where e.code == .unknownGuest && message.type != .removeGuest:
                    // An error, never a deny: nothing was judged. Say what the VMM must do.
                    e.message += " (register the guest first; if it was registered before this server restarted, restore needed: send "
                        + "register-guest again, then re-present every live module's evidence and current claim; docs/protocol.md, \"Restart and restore\")"
                    reply = .error(e)
                default: break
                }
                return reply
            }
        }.map { reply in
            stats.end()
            log(reply, id: id, type: type)
            return reply.frame(requestID: id)
        }.flatMapErrorThrowing { error in
            stats.end()
            return Message.error(ErrorReply(code: .unavailable, message: "not processed: \(error)")).frame(requestID: id)
        }
    }

    private func refuse(_ id: UInt64, _ type: MessageType, _ code: WireErrorCode, _ message: String) -> Frame {
        refusalLog.warning(logger, "request refused", ["id": "\(id)", "code": "\(code)", "why": "\(message)"])
        return Message.error(ErrorReply(code: code, message: message)).frame(requestID: id)
    }

    private func log(_ reply: Message, id: UInt64, type: MessageType) {
        if case .verdict(let v) = reply {
            logger.info("verdict", metadata: [
                "id": "\(id)", "module": "\(v.moduleName)", "decision": "\(v.decision)",
                "reason": "\(v.reason.name)", "policy": "\(v.policyID)@\(v.policyVersion)",
            ])
        } else if case .error(let e) = reply {
            // A peer repeats these at will (cheap malformed frames): throttled for the port.
            refusalLog.warning(logger, "request failed", ["id": "\(id)", "type": "\(type)", "code": "\(e.code)", "why": "\(e.message)"])
        }
    }

}
