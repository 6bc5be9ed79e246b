// SPDX-License-Identifier: Apache-2.0
//
// `LoopAnswer` (BoundedConnection.swift): a request the port answers on the event loop (the VMM
// port's `status` and refusals) skips the processor's future, not the connection's rules. Its
// reply holds an in-flight slot until written, goes out in request order with the rest, and its
// body's budget comes back. The production pipeline (`addBoundedFrameHandlers`) in process on a
// Unix socket, a raw peer, and a processor the test holds.

import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import Foundation
import Logging
import NIOCore
import NIOPosix
import XCTest

/// The processor: every frame waits until the test releases it; counts what it was given.
private final class HeldProcessor: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var waiting: [(EventLoopPromise<Frame>, UInt64)] = []
    private var seen: [UInt64] = []

    func take(_ frame: Frame, _ loop: EventLoop) -> EventLoopFuture<Frame> {
        let p = loop.makePromise(of: Frame.self)
        lock.withLock { waiting.append((p, frame.requestID)); seen.append(frame.requestID) }
        return p.futureResult
    }

    func releaseAll() {
        let w = lock.withLock { () -> [(EventLoopPromise<Frame>, UInt64)] in defer { waiting = [] }; return waiting }
        for (p, id) in w { p.succeed(Frame(type: .verdict, requestID: id, body: ByteBuffer())) }
    }

    var given: [UInt64] { lock.withLock { seen } }
}

final class LoopAnswerTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup?
    private var server: Channel?
    private let held = HeldProcessor()

    override func tearDown() {
        held.releaseAll()
        try? server?.close().wait()
        try? group?.syncShutdownGracefully()
    }

    private func startPort(inFlight: Int, budget: BufferBudget) throws -> String {
        let limits = PortLimits(maximumBodySize: 64 << 10, bufferBudget: 1 << 20, smallFrameSize: 64 << 10, maximumInFlightPerConnection: inFlight,
                                headerDeadline: .seconds(30), frameDeadline: .seconds(30), idleTimeout: .seconds(60), writeStallTimeout: .seconds(60))
        let g = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        group = g
        let path = Fixtures.temporaryDirectory() + "/port.sock"
        let held = self.held
        server = try ServerBootstrap(group: g)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addBoundedFrameHandlers(
                        configuration: limits, budget: budget, logger: Logger(label: "test"), arrival: nil,
                        // Answered on the loop: status, with the size of its body in the reply.
                        answerOnLoop: { frame, _ in
                            guard frame.type == .status else { return nil }
                            var b = ByteBuffer()
                            b.writeInteger(UInt32(frame.body.readableBytes))
                            return Frame(type: .statusReply, requestID: frame.requestID, body: b)
                        },
                        process: { frame, _, loop in held.take(frame, loop) })
                }
            }
            .bind(unixDomainSocketPath: path).wait()
        return path
    }

    private func frame(_ type: MessageType, _ id: UInt64, bodyLength: Int) -> [UInt8] {
        var b = ByteBuffer()
        b.writeInteger(WireLimits.magic); b.writeInteger(WireLimits.protocolVersion); b.writeInteger(type.rawValue)
        b.writeInteger(id); b.writeInteger(UInt32(bodyLength))
        b.writeRepeatingByte(7, count: bodyLength)
        return Array(buffer: b)
    }

    /// Requests the loop answers are answered while the processor holds every other one, never
    /// reach the processor, and give their bodies' budget back.
    func testLoopAnswersComeWhileTheProcessorHoldsTheRest() throws {
        let budget = BufferBudget(total: 1 << 20, smallFrameSize: 64 << 10, smallReserve: 256 << 10)
        let path = try startPort(inFlight: 8, budget: budget)
        let peer = try XCTUnwrap(SocketPeer(path: path))
        XCTAssertTrue(peer.writeAll(frame(.authorizeModule, 1, bodyLength: 3_000) + frame(.status, 2, bodyLength: 100)
                                    + frame(.authorizeModule, 3, bodyLength: 10) + frame(.status, 4, bodyLength: 0)))
        let first = try XCTUnwrap(peer.readFrame(timeout: 5), "a status behind a held request was not answered")
        let second = try XCTUnwrap(peer.readFrame(timeout: 5), "the second status was not answered")
        XCTAssertEqual([first.requestID, second.requestID], [2, 4])
        XCTAssertEqual(first.type, .statusReply)
        XCTAssertEqual(first.body.getInteger(at: first.body.readerIndex, as: UInt32.self), 100, "the answer saw the request's body")
        XCTAssertNil(peer.readFrame(timeout: 0.3), "a held request was answered")
        XCTAssertEqual(held.given, [1, 3], "the processor was given a request the loop answered")
        // The held ones keep their bodies' budget; the answered ones gave theirs back.
        XCTAssertEqual(budget.usage.small, 3_010)
        held.releaseAll()
        let rest = [peer.readFrame(timeout: 5), peer.readFrame(timeout: 5)].compactMap { $0?.requestID }.sorted()
        XCTAssertEqual(rest, [1, 3])
        XCTAssertEqual(budget.usage.small, 0)
    }

    /// A loop answer holds an in-flight slot until its reply is written, as any reply does: with
    /// the cap at 1 and a request held, a status sent after it waits (it is not answered past the
    /// cap) and comes once the held one is answered.
    func testALoopAnswerTakesItsInFlightSlot() throws {
        let budget = BufferBudget(total: 1 << 20, smallFrameSize: 64 << 10, smallReserve: 256 << 10)
        let path = try startPort(inFlight: 1, budget: budget)
        let peer = try XCTUnwrap(SocketPeer(path: path))
        XCTAssertTrue(peer.writeAll(frame(.authorizeModule, 1, bodyLength: 10) + frame(.status, 2, bodyLength: 0)))
        XCTAssertNil(peer.readFrame(timeout: 0.5), "a status was answered past the in-flight cap")
        held.releaseAll()
        let ids = [peer.readFrame(timeout: 5), peer.readFrame(timeout: 5)].map { $0?.requestID }
        XCTAssertEqual(ids, [1, 2])
        XCTAssertEqual(held.given, [1])
    }
}
