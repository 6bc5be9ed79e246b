// SPDX-License-Identifier: Apache-2.0
//
// The verifier service: SwiftNIO server on a Unix socket or AF_VSOCK, one small pipeline per
// connection:
//
//     socket ─▶ ByteToMessageHandler(BudgetedFrameDecoder) ─▶ BoundedFrameHandler(RequestProcessor) ─▶ FrameWriter (header + body, no copy) ─▶ socket
//
// Every connection of the port shares one `BufferBudget` and one `ConnectionCounter`
// (ExecGateTransport, Budget.swift); backpressure and deadlines are its BoundedConnection.swift.
//
// Who can reach which port is a deployment decision documented in docs/deployment.md: the VMM
// port is reachable only by the host (vsock) or by processes allowed to open the Unix socket
// (file mode 0600 by default). The service trusts nothing a client sends: every frame is
// bounded before buffering, every body is parsed by the typed decoders, and a bad request gets
// an `error` reply without affecting other requests or connections.

import ExecGateTransport
import ExecGateWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

/// Named limits of the service. The per-connection and per-port limits are `TransportLimits`
/// (ExecGateTransport, Budget.swift), shared with the admin port.
public enum ServiceLimits {
    /// Requests one connection may have in flight before the server stops reading from it.
    public static let maximumInFlightPerConnection = TransportLimits.maximumInFlightPerConnection
    /// How long graceful shutdown waits for in-flight requests.
    public static let shutdownGraceSeconds: Int64 = 10
}

public final class VerifierServer: @unchecked Sendable {
    // @unchecked: mutable state is confined to `lock`; NIO objects are themselves thread-safe.
    private let group: MultiThreadedEventLoopGroup
    private let pool: NIOThreadPool
    /// The pool's order across connections (round robin: FairScheduler.swift).
    private let fair: FairScheduler
    private let responder: RequestResponder
    private let logger: Logger
    private var channels: [Channel] = []
    /// Endpoints this server listens on: a Unix socket is removed with its lock file at `shutdown()`.
    private var endpoints: [Endpoint] = []
    private let lock = NIOLock()
    private let stats = ServerStats()
    public let configuration: PortLimits
    /// Shared by every connection of every endpoint this server binds.
    public let budget: BufferBudget
    public let connections: ConnectionCounter
    /// 16 random bytes, new on every start: `hello-reply` carries them so a VMM sees a restart
    /// (and must restore its guests: docs/protocol.md, "Restart and restore").
    public let instanceID: [UInt8]

    /// The server's event loops, for another listener of the same service to run on (the admin
    /// port: VerifierService). The server owns them: `shutdown()` shuts them down, so shut down
    /// whatever else runs on them first.
    public var eventLoopGroup: any EventLoopGroup { group }

    public init(responder: RequestResponder, logger: Logger, threads: Int = System.coreCount,
                maximumBodySize: Int = WireLimits.defaultMaximumBodySize, configuration: PortLimits? = nil) {
        // One event loop per core: in a boot storm the loops read every module's body (hundreds
        // of MB); one loop would be the one thread every connection waits on. Judging happens on
        // `pool`, never on a loop.
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, System.coreCount))
        self.pool = NIOThreadPool(numberOfThreads: max(1, threads))
        self.pool.start()
        self.fair = FairScheduler(pool: pool, threads: max(1, threads))
        self.responder = responder
        self.logger = logger
        let configuration = configuration ?? PortLimits(maximumBodySize: maximumBodySize)
        self.configuration = configuration
        self.budget = BufferBudget(total: configuration.bufferBudget, smallFrameSize: configuration.smallFrameSize)
        self.connections = ConnectionCounter(limit: configuration.maximumConnections)
        var rng = SystemRandomNumberGenerator()
        self.instanceID = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// Bind and start serving. Returns the bound channel (several endpoints may be bound).
    @discardableResult
    public func bind(_ endpoint: Endpoint) async throws -> Channel {
        let bootstrap = ServerBootstrap(group: group)
            .acceptBackoff()
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .boundedReads()
            .childChannelInitializer { [responder, fair, logger, stats, configuration, budget, connections, instanceID] channel in
                guard connections.acquire() else {
                    logger.warning("connection refused", metadata: ["why": "\(connections.limit) connections open (the port's limit)"])
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.release() }
                let key = fair.connectionKey()
                // A closed connection's queued requests are dropped, not judged for nobody (and
                // never keep a place in the pool's rotation).
                channel.closeFuture.whenComplete { _ in fair.drop(key) }
                let processor = RequestProcessor(responder: responder, fair: fair, connection: key, refusalLog: budget.refusalLog, logger: logger,
                                                 stats: stats, instanceID: instanceID, maximumBodySize: configuration.maximumBodySize)
                return channel.eventLoop.makeCompletedFuture {
                    // Requests are stamped when decoded (read), in the connection's order, not when
                    // they start: one queued behind the in-flight cap keeps its place before a reset.
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(
                        configuration: configuration, budget: budget, logger: logger,
                        arrival: { responder.arrival() },
                        answerOnLoop: { frame, _ in processor.answerOnLoop(frame) },
                        process: { frame, arrival, loop in processor.judgeOnPool(frame, arrival: arrival, on: loop) })
                }
            }
        let channel = try await bootstrap.bind(endpoint: endpoint)
        lock.withLock {
            channels.append(channel)
            endpoints.append(endpoint)
        }
        logger.info("listening", metadata: ["address": "\(endpoint)"])
        return channel
    }

    /// Stop accepting, let in-flight requests finish (bounded), then close everything.
    public func shutdown() async {
        let (toClose, paths) = lock.withLock { (channels, endpoints) }
        for c in toClose { try? await c.close() }
        // Its sockets and their lock files go with the listeners (a stale socket would be
        // replaced at the next start anyway; nothing of a stopped server stays behind).
        for e in paths { e.removeListeningSocket() }
        let deadline = NIODeadline.now() + .seconds(ServiceLimits.shutdownGraceSeconds)
        while stats.inFlight > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        try? await group.shutdownGracefully()
        try? await pool.shutdownGracefully()
        // The refusal lines the throttle left out since its last line: said at the stop.
        let unlogged = budget.refusalLog.takeUnlogged()
        if unlogged > 0 { logger.notice("refusal log lines left out (at most \(LogThrottle.defaultLinesPerSecond) a second)", metadata: ["count": "\(unlogged)"]) }
        logger.info("stopped", metadata: ["served": "\(stats.served)"])
    }

    public var requestsServed: UInt64 { stats.served }
}

/// Counters shared by all connections: atomics, so counting a request takes no lock that every
/// request of every connection would queue on.
final class ServerStats: Sendable {
    private let _inFlight = Atomic<Int>(0)
    private let _served = Atomic<UInt64>(0)
    let started = NIODeadline.now()

    var inFlight: Int { _inFlight.load(ordering: .relaxed) }
    var served: UInt64 { _served.load(ordering: .relaxed) }
    func begin() { _inFlight.add(1, ordering: .relaxed) }
    func end() {
        _inFlight.subtract(1, ordering: .relaxed)
        _served.wrappingAdd(1, ordering: .relaxed)
    }
    var uptimeMilliseconds: UInt64 { UInt64(max(0, (NIODeadline.now() - started).nanoseconds / 1_000_000)) }
}
