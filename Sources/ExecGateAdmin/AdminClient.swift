// SPDX-License-Identifier: Apache-2.0
//
// The operator side of the admin port: one request at a time, one reply each, bounded waits.

import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public enum AdminClientError: Error, CustomStringConvertible, Equatable {
    case connectionClosed
    case timedOut
    case server(code: WireErrorCode, message: String)
    case unexpectedReply(String)

    public var description: String {
        switch self {
        case .connectionClosed: return "connection closed before the reply arrived"
        case .timedOut: return "no reply in time"
        case .server(let code, let message): return "refused (\(code)): \(message)"
        case .unexpectedReply(let what): return "unexpected reply: \(what)"
        }
    }
}

public final class AdminClient: @unchecked Sendable {
    // @unchecked: `nextID` is guarded by `lock`; the channel is thread-safe; the handler is only
    // touched on its event loop.
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let handler: AdminReplyHandlerBox
    private let lock = NIOLock()
    private var nextID: UInt64 = 1
    public var timeoutSeconds: Int64 = 30

    private init(group: MultiThreadedEventLoopGroup, channel: Channel, handler: AdminReplyHandlerBox) {
        self.group = group
        self.channel = channel
        self.handler = handler
    }

    public static func connect(to endpoint: Endpoint) async throws -> AdminClient {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let handler = AdminReplyHandlerBox(value: AdminReplyHandler())
        do {
            let bootstrap = ClientBootstrap(group: group).connectTimeout(.seconds(10))
            let channel: Channel
            switch endpoint {
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            case .vsock(let cid, let port):
                channel = try await bootstrap.connect(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port))).get()
            case .hybrid:
                throw EndpointError(text: endpoint.description, why: "the admin client connects with unix: or vsock:")
            }
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maximumBodySize: WireLimits.defaultMaximumBodySize)))
                try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                try channel.pipeline.syncOperations.addHandler(handler.value)
            }.get()
            return AdminClient(group: group, channel: channel, handler: handler)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// Sends one frame and returns the reply frame. An `error` reply is thrown as `.server`.
    public func request(_ type: MessageType, _ body: ByteBuffer) async throws -> Frame {
        let id = lock.withLock { defer { nextID &+= 1 }; return nextID }
        let promise = channel.eventLoop.makePromise(of: Frame.self)
        let handler = self.handler
        let channel = self.channel
        channel.eventLoop.execute {
            handler.value.pending[id] = promise
            if !channel.isActive { handler.value.pending.removeValue(forKey: id)?.fail(AdminClientError.connectionClosed); return }
            channel.writeAndFlush(Frame(type: type, requestID: id, body: body), promise: nil)
        }
        let timer = channel.eventLoop.scheduleTask(in: .seconds(timeoutSeconds)) {
            handler.value.pending.removeValue(forKey: id)?.fail(AdminClientError.timedOut)
        }
        defer { timer.cancel() }
        let reply = try await promise.futureResult.get()
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

    private var closed = false

    /// Idempotent.
    public func close() async {
        let first = lock.withLock { () -> Bool in defer { closed = true }; return !closed }
        guard first else { return }
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

struct AdminReplyHandlerBox: @unchecked Sendable {
    // @unchecked: used only inside tasks on the channel's own event loop.
    let value: AdminReplyHandler
}

final class AdminReplyHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    var pending: [UInt64: EventLoopPromise<Frame>] = [:]

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .frame(let f): pending.removeValue(forKey: f.requestID)?.succeed(f)
        case .refused(let id, _, let code, let message):
            pending.removeValue(forKey: id)?.fail(AdminClientError.server(code: code, message: message))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let all = pending
        pending.removeAll()
        for (_, p) in all { p.fail(AdminClientError.connectionClosed) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

@available(*, unavailable)
extension AdminReplyHandler: Sendable {}
