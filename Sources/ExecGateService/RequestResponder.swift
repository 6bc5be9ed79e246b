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
    ///   - requestDigest: SHA-256 of the request frame's body, to be echoed in verdicts.
    func respond(to message: Message, requestDigest: [UInt8]) -> Message
    /// SHA-256 over the body, computed off the event loop.
    func digest(of body: ByteBuffer) -> [UInt8]
    /// A health snapshot for `status`.
    func status(uptimeMilliseconds: UInt64, requestsServed: UInt64) -> StatusReply
}
