// SPDX-License-Identifier: Apache-2.0
import ExecGateWire
import NIOCore

/// What the service asks of the verifier core: one decoded request in, one reply out.
/// Implementations are pure with respect to the network (they never see a socket) and must be
/// safe to call from several threads at once: the service runs requests on a thread pool so
/// that pipelined requests from several vCPUs are judged concurrently.
public protocol RequestResponder: Sendable {
    /// - Parameters:
    ///   - message: the decoded request (never a reply type).
    ///   - body: the request frame's body it was decoded from: the responder derives the request
    ///     digest the reply echoes from it (docs/protocol.md, verdict `request_digest`). Called
    ///     off the event loop.
    func respond(to message: Message, body: ByteBuffer) -> Message
    /// A health snapshot for `status`.
    func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply
    /// Called on the connection's event loop when a request's frame is decoded (in the order its
    /// connection sent the requests), before it waits behind the in-flight cap or for a pool
    /// thread: the stamp `respond(to:body:arrival:)`
    /// gets with it, so the responder can judge a request in the state it arrived in (a reset
    /// that a pool thread ran first must not take in a request sent before it). nil: none.
    func arrival() -> UInt64?
    /// `respond(to:body:)` for a request stamped `arrival()` when its frame was decoded.
    func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message
}

extension RequestResponder {
    /// A responder with no state a request could arrive before: no stamp.
    public func arrival() -> UInt64? { nil }
    public func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message { respond(to: message, body: body) }
}
