// SPDX-License-Identifier: Apache-2.0
//
// The admin port: its own listener, its own event loop, never the VMM's socket.
//
//     socket ─▶ ByteToMessageHandler(BudgetedFrameDecoder, 4 MiB) ─▶ BoundedFrameHandler(administrator) ─▶ FrameWriter (header + body, no copy)
//
// The same backpressure, budget and deadlines as the VMM port (ExecGateTransport,
// BoundedConnection.swift), with one request in flight per connection: the next admin request
// is not even decoded until the previous reply has been written to the socket, so a peer that
// asks for audit pages and never reads holds at most one page (≤ 1 MiB) plus the socket buffer.
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
import Logging
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
    /// Admin connections open at once (an operator's CLI, a monitoring poller).
    public static let maximumConnections = 16

    /// The admin port's limits: one request in flight per connection, bodies ≤ 4 MiB, one
    /// maximum-size bundle buffered across all admin connections (plus the small-frame reserve).
    public static var configuration: PortLimits {
        PortLimits(maximumBodySize: maximumBodySize, bufferBudget: maximumBodySize + TransportLimits.smallFrameReserve,
                             maximumConnections: maximumConnections, maximumInFlightPerConnection: 1)
    }
}

public final class AdminServer: @unchecked Sendable {
    // @unchecked: `channels` is guarded by `lock`; NIO objects are thread-safe.
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let administrator: PolicyAdministrator
    private let lock = NIOLock()
    private var channels: [Channel] = []
    public let configuration: PortLimits
    public let budget: BufferBudget
    public let connections: ConnectionCounter
    private let logger: Logger

    public init(administrator: PolicyAdministrator, configuration: PortLimits = AdminLimits.configuration,
                logger: Logger = Logger(label: "execgate.admin")) {
        self.administrator = administrator
        self.configuration = configuration
        self.budget = BufferBudget(total: configuration.bufferBudget, smallFrameSize: configuration.smallFrameSize)
        self.connections = ConnectionCounter(limit: configuration.maximumConnections)
        self.logger = logger
    }

    @discardableResult
    public func bind(_ endpoint: Endpoint) async throws -> Channel {
        let bootstrap = ServerBootstrap(group: group)
            .acceptBackoff()
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [administrator, configuration, budget, connections, logger] channel in
                guard connections.acquire() else {
                    logger.warning("admin connection refused", metadata: ["why": "\(connections.limit) connections open (the port's limit)"])
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.release() }
                return channel.eventLoop.makeCompletedFuture {
                    // Admin requests are rare and cheap (one CMS verification, one parse): handled
                    // on the admin event loop itself, in order.
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(
                        configuration: configuration, budget: budget, logger: logger,
                        process: { frame, loop in loop.makeSucceededFuture(administrator.respond(to: frame)) })
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

