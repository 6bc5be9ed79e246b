// SPDX-License-Identifier: Apache-2.0
//
// The admin port: its own listener, its own limits and buffer budget, never the VMM's socket.
//
//     socket ─▶ ByteToMessageHandler(BudgetedFrameDecoder, 4 MiB) ─▶ BoundedFrameHandler(administrator) ─▶ FrameWriter (header + body, no copy)
//
// The same backpressure, budget and deadlines as the VMM port (ExecGateTransport,
// BoundedConnection.swift), with one request in flight per connection: at most one more is
// decoded (`DecodeGate`) and none started until the previous reply has been written to the
// socket, so a peer that asks for audit pages and never reads holds at most one page (≤ 1 MiB),
// one queued request, one read buffer (64 KiB) and the socket buffer.
//
// At its 16 connections a new one takes the slot of the longest-open keyless one that has been
// open for 1 s and has no request in progress and no activated push (`AdminConnections.evict`),
// which is closed: connections a peer without the key keeps open, however busy it keeps them
// between requests, cannot lock out a signed push.
//
// Who can reach it (docs/policy.md, "Who can reach which port"): in the service VM it is vsock
// port 5001, reachable only from the host; as a Unix socket it is created mode 0600. Reaching the
// port is not enough to change policy: a push must carry a bundle signed by the admin key, and a
// lower or equal version is refused. What a peer on this port can do without the key is read the
// policy in force and the audit records — which are not secret from the host that runs the guests.
//
// Event loops (SwiftNIO's model: the caller owns the group). The server runs on the event-loop
// group it is given and never shuts it down; in the service VM and in `execgate serve` that is the
// verifier server's group (VerifierService), so the admin port costs no threads of its own at boot
// (it cost 31-36 ms of a TCG boot: ServiceVM/README.md, "Where the time goes"). What isolates the
// admin port from the VMM port does not depend on a thread: its own listening socket, its own
// `ConnectionCounter` (16) and `BufferBudget` (4 MiB + reserve), one request in flight per
// connection, the same deadlines. Sharing the loops means reading admin bytes takes turns with
// VMM connections on the loop the admin connection landed on, as VMM connections take turns with
// each other: a VMM peer holds at most its port's budget and its 128 connections, and a loop
// serves every ready channel in each pass, so a flood on the VMM port delays an admin request by
// passes of the loop, never refuses it.
//
// An admin request's work (one CMS verification, one parse of up to 1 MiB of policy) never runs
// on a loop: it would stall every VMM connection on that loop for its duration. It runs on
// NIO's blocking pool (`NIOThreadPool.singleton`, started at the first use, i.e. at the first
// admin request, not at boot), one request at a time per connection, in order; pushes are
// serialised by `PolicyAdministrator`.

import _ExecGateInternals
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
    /// A connection open this long, with no request in progress and no authenticated bundle
    /// pushed on it, may give its slot: a connection that finds the port full takes the slot of
    /// the longest-open such one, which is closed (`AdminConnections.evict`). Not idleness: a
    /// keyless peer asking policy-show every few hundred milliseconds is never idle, and held
    /// every slot that way; the operator's push is safe while it is younger than this (its
    /// frame arriving), while it is judged (in progress) and after it was activated.
    public static let evictableAgeNanoseconds: UInt64 = 1_000_000_000

    /// The admin port's limits: one request in flight per connection, bodies ≤ 4 MiB, one
    /// maximum-size bundle buffered across all admin connections (plus the small-frame reserve).
    public static var configuration: PortLimits {
        PortLimits(maximumBodySize: maximumBodySize, bufferBudget: maximumBodySize + TransportLimits.smallFrameReserve,
                             maximumConnections: maximumConnections, maximumInFlightPerConnection: 1)
    }
}

public final class AdminServer: @unchecked Sendable {
    // @unchecked: `channels` is guarded by `lock`; NIO objects are thread-safe.
    /// Not owned: the caller shuts it down, after `shutdown()`.
    private let group: any EventLoopGroup
    private let administrator: PolicyAdministrator
    private let lock = NIOLock()
    private var channels: [Channel] = []
    /// Endpoints this server listens on: a Unix socket is removed with its lock file at `shutdown()`.
    private var endpoints: [Endpoint] = []
    /// Open admin connections: `shutdown()` closes them (the group, which would, is not ours);
    /// a new connection at the cap takes the slot of the longest-open evictable keyless one.
    private let open = AdminConnections()
    /// Audit pages asked and not yet written, across the port (`AuditPagePool`).
    private let pages = AuditPagePool()
    public let configuration: PortLimits
    public let budget: BufferBudget
    public let connections: ConnectionCounter
    private let logger: Logger

    /// - Parameter group: the event loops to serve on (`VerifierServer.eventLoopGroup` in the
    ///   service). The caller owns it and shuts it down after this server's `shutdown()`.
    public init(administrator: PolicyAdministrator, group: any EventLoopGroup, configuration: PortLimits = AdminLimits.configuration,
                logger: Logger = Logger(label: "execgate.admin")) {
        self.group = group
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
            .boundedReads()
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [administrator, configuration, budget, connections, logger, open, pages] channel in
                if !connections.acquire() {
                    // Full. Keyless connections kept open (no key is needed to connect, ask
                    // policy-show and wait, or ask again and again) must not lock out an
                    // operator's signed push: the longest-open connection that is 1 s old, has
                    // no request in progress and pushed no authenticated bundle gives this one
                    // its slot (its own close releases nothing).
                    guard let idle = open.evict(olderThan: AdminLimits.evictableAgeNanoseconds) else {
                        logger.warning("admin connection refused", metadata: ["why": "\(connections.limit) connections open (the port's limit), none evictable (each younger than 1 s, in a request, or an activated push's)"])
                        return channel.close()
                    }
                    logger.notice("keyless admin connection closed for a new one (the longest open, none of its requests in progress)", metadata: ["why": "\(connections.limit) connections open (the port's limit)"])
                    idle.close(promise: nil)
                }
                open.insert(channel)
                channel.closeFuture.whenComplete { _ in
                    if open.remove(channel) { connections.release() }
                }
                return channel.eventLoop.makeCompletedFuture {
                    // Off the loop (the loops are shared with the VMM port): see the header.
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(
                        configuration: configuration, budget: budget, logger: logger, arrival: nil,
                        // An audit page is held until it has left the server (`AuditPagePool`).
                        replyWritten: { reply in
                            if reply.type == AdminMessageType.auditReadReply { pages.give(reply.body.readableBytes) }
                        },
                        process: { frame, _, loop in
                            open.begin(channel)
                            return NIOThreadPool.singleton.runIfActive(eventLoop: loop) { () -> Frame in
                                guard frame.type == AdminMessageType.auditRead else { return administrator.respond(to: frame) }
                                guard let grant = pages.take() else {
                                    return Message.error(ErrorReply(code: .unavailable, message: "server busy: \(pages.held) bytes of audit pages are waiting for admin connections to read them (at most \(pages.capacity) at once) — retry when they are read")).frame(requestID: frame.requestID)
                                }
                                let reply = administrator.respond(to: frame, auditBytes: grant)
                                pages.settle(granted: grant, used: reply.type == AdminMessageType.auditReadReply ? reply.body.readableBytes : 0)
                                return reply
                            }
                            .always { open.end(channel, authenticated: (try? $0.get())?.type == AdminMessageType.policyPushReply) }
                        })
                }
            }
        let channel = try await bootstrap.bind(endpoint: endpoint)
        lock.withLock {
            channels.append(channel)
            endpoints.append(endpoint)
        }
        return channel
    }

    /// Closes this server's listeners and connections. The event-loop group is the caller's.
    public func shutdown() async {
        let (all, paths) = lock.withLock { (channels, endpoints) }
        for c in all { try? await c.close() }
        for e in paths { e.removeListeningSocket() }
        for c in open.all() { try? await c.close() }
    }
}

/// Bytes of audit-read replies the admin port holds until they leave it (`AuditLimits.pagePoolBytes`):
/// a keyless peer needs no key to ask for a page, so pages asked and never read are bounded across
/// the port, not per connection. Thread-safe.
final class AuditPagePool: @unchecked Sendable {
    // @unchecked: `_held` is guarded by `lock`.
    private let lock = NIOLock()
    private var _held = 0
    let capacity: Int
    let minimum: Int

    init(capacity: Int = AuditLimits.pagePoolBytes, minimum: Int = AuditLimits.minimumPageBytes) {
        self.capacity = capacity
        self.minimum = minimum
    }

    var held: Int { lock.withLock { _held } }

    /// Reserves what a page may take now (at most a page, `AuditLimits.maximumBytesPerRead`); nil
    /// when less than `minimum` is left.
    func take() -> Int? {
        lock.withLock {
            let grant = min(AuditLimits.maximumBytesPerRead, capacity - _held)
            guard grant >= minimum else { return nil }
            _held += grant
            return grant
        }
    }

    /// The page made is `used` bytes (its reply body; it may exceed the grant by its one record):
    /// held until `give(used)`.
    func settle(granted: Int, used: Int) { lock.withLock { _held += used - granted } }

    /// A page of `n` bytes left the server.
    func give(_ n: Int) { lock.withLock { _held -= n } }
}

/// The connections a server has open, so that it can close them without shutting down a group it
/// does not own, and what choosing one to evict needs of each: when it was accepted, whether a
/// request of it is in progress, whether it pushed an authenticated bundle (a push
/// answered policy-push-reply: signed by the admin key, activated).
final class AdminConnections: @unchecked Sendable {
    // @unchecked: `entries` is guarded by `lock`.
    private struct Entry {
        let channel: Channel
        /// When it was accepted (`evict` takes the longest-open first).
        let opened: UInt64
        var busy = 0
        var authenticated = false
    }
    private let lock = NIOLock()
    private var entries: [ObjectIdentifier: Entry] = [:]

    func insert(_ c: Channel) {
        let now = MonotonicClock.nanoseconds()
        lock.withLock { entries[ObjectIdentifier(c)] = Entry(channel: c, opened: now) }
    }
    /// Forgets `c`; true when it still held its slot (false: evicted, its slot passed on).
    func remove(_ c: Channel) -> Bool { lock.withLock { entries.removeValue(forKey: ObjectIdentifier(c)) != nil } }
    func all() -> [Channel] { lock.withLock { entries.values.map(\.channel) } }

    /// A request of `c` started.
    func begin(_ c: Channel) { lock.withLock { entries[ObjectIdentifier(c)]?.busy += 1 } }
    /// A request of `c` was answered; `authenticated`: it was an activated signed push.
    func end(_ c: Channel, authenticated: Bool) {
        lock.withLock {
            guard var e = entries[ObjectIdentifier(c)] else { return }
            e.busy -= 1
            if authenticated { e.authenticated = true }
            entries[ObjectIdentifier(c)] = e
        }
    }

    /// The longest-open connection that pushed no authenticated bundle, has no request in
    /// progress and has been open for `olderThan` ns, forgotten here (its slot passes to the
    /// caller's connection; the caller closes it); nil when there is none. A connection waiting
    /// for its reply, one younger than `olderThan` (an operator's push arriving) and one that
    /// activated a push are never taken. Activity does not protect a connection: a keyless peer
    /// that keeps its connections asking (never idle) would otherwise hold every slot.
    func evict(olderThan: UInt64) -> Channel? {
        let now = MonotonicClock.nanoseconds()
        return lock.withLock {
            let evictable = entries.filter { !$0.value.authenticated && $0.value.busy == 0 && now &- $0.value.opened >= olderThan }
            guard let victim = evictable.min(by: { $0.value.opened < $1.value.opened }) else { return nil }
            entries[victim.key] = nil
            return victim.value.channel
        }
    }
}

