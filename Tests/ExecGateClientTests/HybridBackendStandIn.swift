// SPDX-License-Identifier: Apache-2.0
//
// A stand-in for the host side of a hybrid vsock device (Firecracker, Cloud Hypervisor, ExecGate's
// own `execgate vsock-backend`), per docs/vsock.md: a Unix socket where a client writes
// `CONNECT <port>\n`, reads `OK <hostport>\n`, and then has a byte stream to guest port <port>.
// Here "guest port P" is a Unix-socket server in the same process (`routes[P]`), so the client's
// hybrid path runs against a real verifier or admin server without booting a guest. It can also
// misbehave the ways a broken backend does: refuse, answer an overlong line, or hang up.

import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

final class HybridBackendStandIn: @unchecked Sendable {
    // @unchecked: fields are set once in init and only read afterwards.
    /// `answer(line)`: answers the CONNECT with `line` and then nothing (the connection stays open).
    /// `hangUpFirst(n)`: closes the first `n` connections at accept (a backend at its handshake
    /// cap evicting them), then proxies.
    enum Behaviour: Sendable { case proxy, refuse, overlongLine, hangUp, answer(String), hangUpFirst(Int) }

    /// Connections accepted so far.
    let accepted = NIOLockedValueBox(0)

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path: String
    private var server: Channel?

    init(path: String, routes: [UInt32: String], behaviour: Behaviour = .proxy) async throws {
        self.path = path
        let group = self.group
        let accepted = self.accepted
        server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                let n = accepted.withLockedValue { $0 += 1; return $0 }
                if case .hangUpFirst(let first) = behaviour, n <= first { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Front(routes: routes, behaviour: behaviour, group: group))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
    }

    func shutdown() async {
        try? await server?.close()
        try? await group.shutdownGracefully()
    }

    /// The client-facing side: reads the CONNECT line, then glues the stream to the route's socket.
    final class Front: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let routes: [UInt32: String]
        let behaviour: Behaviour
        let group: EventLoopGroup
        var line = ByteBuffer()
        var peer: Channel?
        var pending: [ByteBuffer] = []
        var connected = false

        init(routes: [UInt32: String], behaviour: Behaviour, group: EventLoopGroup) {
            self.routes = routes; self.behaviour = behaviour; self.group = group
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            if connected {
                if let peer { peer.writeAndFlush(bytes, promise: nil) } else { pending.append(bytes) }
                return
            }
            line.writeBuffer(&bytes)
            guard let nl = line.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return }
            let text = String(decoding: line.readableBytesView[line.readerIndex..<nl], as: UTF8.self)
            line.moveReaderIndex(to: nl + 1)
            connected = true
            if line.readableBytes > 0 { pending.append(line) }
            let parts = text.split(separator: " ")
            switch behaviour {
            case .refuse:
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: "ERR no such port\n"))).whenComplete { _ in context.close(promise: nil) }
                return
            case .overlongLine:
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: String(repeating: "O", count: 200))), promise: nil)
                return
            case .hangUp:
                context.close(promise: nil)
                return
            case .answer(let reply):
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: reply)), promise: nil)
                return
            case .proxy, .hangUpFirst: break
            }
            guard parts.count == 2, parts[0] == "CONNECT", let port = UInt32(parts[1]), let target = routes[port] else {
                context.close(promise: nil)
                return
            }
            let front = context.channel
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            ClientBootstrap(group: context.eventLoop)
                .channelInitializer { back in
                    back.eventLoop.makeCompletedFuture { try back.pipeline.syncOperations.addHandler(Back(front: front)) }
                }
                .connect(unixDomainSocketPath: target)
                .whenComplete { result in
                    let me = loopBound.value
                    switch result {
                    case .failure: front.close(promise: nil)
                    case .success(let back):
                        me.peer = back
                        front.writeAndFlush(front.allocator.buffer(string: "OK 1073741824\n"), promise: nil)
                        for b in me.pending { back.writeAndFlush(b, promise: nil) }
                        me.pending = []
                    }
                }
        }

        func channelInactive(context: ChannelHandlerContext) {
            peer?.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }

    /// The guest-port side: copies its bytes back to the client.
    final class Back: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let front: Channel
        init(front: Channel) { self.front = front }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { front.writeAndFlush(unwrapInboundIn(data), promise: nil) }
        func channelInactive(context: ChannelHandlerContext) {
            front.close(promise: nil)
            context.fireChannelInactive()
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }
}
