// SPDX-License-Identifier: Apache-2.0
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import NIOCore

extension Verifier: RequestResponder {
    /// authorize-module: the verifier computes the request digest while judging, from the body and
    /// the module file digest of its one pass over the module (Verifier.requestDigest(authorizeModuleBody:));
    /// the body is not hashed whole (that was a second pass over every module byte). Every other
    /// request: SHA-256 of the body (what register-guest-reply `facts_digest` and patch verdicts carry).
    public func respond(to message: Message, body: ByteBuffer) -> Message { respond(to: message, body: body, arrival: nil) }

    /// The guest registry's arrival clock: a request stamped before its guest's session was
    /// registered belongs to a session a reset replaced (`GuestRegistry.session(_:arrivedAt:)`).
    public func arrival() -> UInt64? { guests.arrivalStamp() }

    public func respond(to message: Message, body: ByteBuffer, arrival: UInt64?) -> Message {
        if case .authorizeModule = message { return respond(to: message, requestDigest: nil, body: body, arrival: arrival) }
        return respond(to: message, requestDigest: body.withUnsafeReadableBytes { Digest.sha256($0).bytes }, arrival: arrival)
    }
}
