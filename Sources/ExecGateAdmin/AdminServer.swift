// SPDX-License-Identifier: Apache-2.0
//
// The admin port: its own listener, its own event loop, never the VMM's socket.
//
//     socket ─▶ ByteToMessageHandler(FrameDecoder, 4 MiB) ─▶ AdminHandler ─▶ MessageToByteHandler(FrameEncoder)
//
// Who can reach it (docs/policy.md, "Who can reach which port"): in the service VM it is vsock
// port 5001, reachable only from the host; as a Unix socket it is created mode 0600. Reaching the
// port is not enough to change policy: a push must carry a bundle signed by the admin key, and a
// lower or equal version is refused. What a peer on this port can do without the key is read the
// policy in force and the audit records — which are not secret from the host that runs the guests.
//
// Admin requests are rare and cheap (one CMS verification, one parse), so they are handled on the
// admin event loop itself, one at a time per connection, in order.

import ExecGateTransport
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum AdminLimits {
    /// Largest admin frame body: a bundle is ≤ 1 MiB of policy + ≤ 64 KiB of signature.
    public static let maximumBodySize = 4 << 20
    /// Default vsock port of the admin listener in the service VM (the VMM port is 5000).
    public static let defaultVsockPort: UInt32 = 5001
}

public final class AdminServer: @unchecked Sendable {
    // @unchecked: `channels` is guarded by `lock`; NIO objects are thread-safe.
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let administrator: PolicyAdministrator
    private let lock = NIOLock()
    private var channels: [Channel] = []

    public init(administrator: PolicyAdministrator) {
        self.administrator = administrator
    }

    @discardableResult
    public func bind(_ endpoint: Endpoint) async throws -> Channel {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [administrator] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maximumBodySize: AdminLimits.maximumBodySize)))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(administrator: administrator))
                }
            }
        let channel = try await bootstrap.bind(endpoint: endpoint)
        lock.withLock { channels.append(channel) }
        return channel
    }

    public func shutdown() async {
        let all = lock.withLock { channels }
        for c in all { try? await c.close() }
        try? await group.shutdownGracefully()
    }
}

final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame
    typealias OutboundOut = Frame
    private let administrator: PolicyAdministrator

    init(administrator: PolicyAdministrator) { self.administrator = administrator }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .refused(let id, _, let code, let message):
            let reply = Message.error(ErrorReply(code: code, message: message)).frame(requestID: id)
            if code == .badMagic {
                context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
            } else {
                context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            }
        case .frame(let frame):
            context.writeAndFlush(wrapOutboundOut(administrator.respond(to: frame)), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}
