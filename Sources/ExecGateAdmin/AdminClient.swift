// SPDX-License-Identifier: Apache-2.0
//
// The operator side of the admin port: one request at a time, one reply each, bounded waits.
// Built on the one client (ExecGateClient): the same framing, pipelining and failure contract, and
// every address form it speaks — unix:PATH, vsock:CID:PORT, and hybrid:SOCKET:PORT (the admin port
// of a service VM behind the vhost-user-vsock backend, e.g. the sidecar `make run` starts).

import _ExecGateInternals
import ExecGateClient
import ExecGateWire
import NIOCore

public enum AdminClientError: Error, CustomStringConvertible, Equatable {
    case connectionClosed
    case timedOut
    case server(code: WireErrorCode, message: String)
    case unexpectedReply(String)

    public var description: String {
        switch self {
        case .connectionClosed: return "connection closed before the reply arrived"
        case .timedOut: return "no reply in time"
        // The admin port's words, escaped (TerminalText): a description is read by a human.
        case .server(let code, let message): return "refused (\(code)): \(TerminalText.escaped(message))"
        case .unexpectedReply(let what): return "unexpected reply: \(what)"
        }
    }

    /// The admin port judged the request and refused it (PolicyAdministrator answers a refused push
    /// with bad-request: another key, a version not newer, a bundle that does not parse). Any other
    /// error (a VMM port's unknown-message-type, overload, a fault) is no judgement: the CLI's exit 2.
    public var isRefusal: Bool {
        if case .server(let code, _) = self { return code == .badRequest }
        return false
    }

    /// The admin view of a client failure during a request.
    init(_ e: ClientError) {
        switch e {
        case .connectionClosed, .hybridHandshakeFailed: self = .connectionClosed
        case .timedOut: self = .timedOut
        case .server(let r): self = .server(code: r.code, message: r.message)
        case .unexpectedReply(let what): self = .unexpectedReply(what)
        }
    }
}

public final class AdminClient: Sendable {
    private let client: ExecGateClient

    private init(client: ExecGateClient) { self.client = client }

    /// Seconds each request may wait for its reply.
    public static let defaultTimeoutSeconds: Double = 30

    /// Connects to an admin port: `unix:PATH`, `vsock:CID:PORT` or `hybrid:SOCKET:PORT`.
    /// Connection failures (refused, no such socket, a hybrid handshake the backend refuses) are
    /// thrown as they come; failures of a request later are `AdminClientError`s.
    public static func connect(to endpoint: Endpoint, timeoutSeconds: Double = defaultTimeoutSeconds) async throws -> AdminClient {
        AdminClient(client: try await ExecGateClient.connect(to: endpoint, timeout: timeoutSeconds))
    }

    /// Sends one frame and returns the reply frame. An `error` reply is thrown as `.server`.
    public func request(_ type: MessageType, _ body: ByteBuffer) async throws -> Frame {
        let reply: Frame
        do { reply = try await client.exchange(Frame(type: type, requestID: client.allocateID(), body: body)) } catch let e as ClientError {
            throw AdminClientError(e)
        }
        if reply.type == .error {
            let e = try ErrorReply(decoding: reply.body)
            throw AdminClientError.server(code: e.code, message: e.message)
        }
        return reply
    }

    public func push(bundle: [UInt8]) async throws -> PolicyPushReply {
        let r = try await request(AdminMessageType.policyPush, PolicyPush(bundle: bundle).encode())
        guard r.type == AdminMessageType.policyPushReply else { throw AdminClientError.unexpectedReply("\(r.type)") }
        return try PolicyPushReply(decoding: r.body)
    }

    public func show() async throws -> PolicyShowReply {
        let r = try await request(AdminMessageType.policyShow, ByteBuffer())
        guard r.type == AdminMessageType.policyShowReply else { throw AdminClientError.unexpectedReply("\(r.type)") }
        return try PolicyShowReply(decoding: r.body)
    }

    public func auditRead(afterSeq: UInt64, maxRecords: UInt32 = 1000) async throws -> AuditReadReply {
        let r = try await request(AdminMessageType.auditRead, AuditRead(afterSeq: afterSeq, maxRecords: maxRecords).encode())
        guard r.type == AdminMessageType.auditReadReply else { throw AdminClientError.unexpectedReply("\(r.type)") }
        return try AuditReadReply(decoding: r.body)
    }

    /// Idempotent.
    public func close() async { await client.close() }
}
