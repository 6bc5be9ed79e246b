// SPDX-License-Identifier: Apache-2.0
//
// Admission from memory (ExecGateTransport `MemoryBudget`): the figures derived from /proc/meminfo,
// and a real server narrowed to a small guest's memory refusing, at the header, a module it could
// not hold while still answering what it can.

import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateTestSupport
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import XCTest

final class MemoryBudgetTests: XCTestCase {
    func testMeminfoParsing() throws {
        let host = try XCTUnwrap(MemoryBudget(meminfo: String(decoding: try Fixtures.readFile("/proc/meminfo"), as: UTF8.self)),
                                 "this host's /proc/meminfo has no MemAvailable line")
        XCTAssertGreaterThan(host.availableBytes, 0)
        XCTAssertEqual(MemoryBudget(meminfo: "MemTotal:  131072 kB\nMemFree: 90000 kB\nMemAvailable:   98304 kB\n")?.availableBytes, 96 << 20)
        for bad in ["", "MemTotal: 1 kB\n", "MemAvailable: x kB\n", "MemAvailable: 12\n", "MemAvailable: -1 kB\n", "MemAvailable: 12 MB\n",
                    "MemAvailable: 99999999999999999999 kB\n", "MemAvailable: 9223372036854775807 kB\n"] {
            XCTAssertNil(MemoryBudget(meminfo: bad), bad)
        }
    }

    func testLimitsFollowTheMemory() {
        let defaults = PortLimits()
        // A guest with room for the largest frame keeps the defaults (28 MiB bodies, one at a time).
        let roomy = MemoryBudget(availableBytes: 96 << 20).limits()
        XCTAssertEqual(roomy.bufferBudget, defaults.bufferBudget)
        XCTAssertEqual(roomy.maximumBodySize, defaults.maximumBodySize)
        // 88 MiB of room: facts get what the 36 MiB of bodies (72 MiB at 2×) leave, 16 MiB at 3/2.
        XCTAssertEqual(roomy.factsBudget, (16 << 20) * 2 / 3)
        // (available − 8 MiB reserve − the facts floor at its cost, 15 MiB) / 2 = 16 MiB of
        // bodies: the largest is 16 − 8 (small reserve) = 8 MiB; the facts get the floor, 10 MiB.
        let small = MemoryBudget(availableBytes: 55 << 20).limits()
        XCTAssertEqual(small.bufferBudget, 16 << 20)
        XCTAssertEqual(small.maximumBodySize, 8 << 20)
        XCTAssertEqual(small.factsBudget, 10 << 20)
        // The default 128 MiB service VM (MemAvailable 89 MiB): 33 MiB of bodies, largest 25 MiB
        // (amdgpu.ko with its ELF claim needs ≤ 24.6 MiB), 10 MiB of facts.
        let vm = MemoryBudget(availableBytes: 89 << 20).limits()
        XCTAssertEqual(vm.bufferBudget, 33 << 20)
        XCTAssertEqual(vm.maximumBodySize, 25 << 20)
        XCTAssertEqual(vm.factsBudget, 10 << 20)
        // The default 160 MiB VM (MemAvailable ≈ 121 MiB: the 128 MiB one plus 32): the default
        // bodies (36 MiB, largest 28 MiB) and (113 − 72) × 2/3 ≈ 27 MiB of facts and live modules.
        let vm160 = MemoryBudget(availableBytes: 121 << 20).limits()
        XCTAssertEqual(vm160.bufferBudget, defaults.bufferBudget)
        XCTAssertEqual(vm160.maximumBodySize, defaults.maximumBodySize)
        XCTAssertEqual(vm160.factsBudget, (41 << 20) * 2 / 3)
        // A 256 MiB VM keeps the default bodies and gives the rest to facts; a host the ceiling.
        XCTAssertEqual(MemoryBudget(availableBytes: 217 << 20).limits().factsBudget, (137 << 20) * 2 / 3)
        XCTAssertEqual(MemoryBudget(availableBytes: 8 << 30).limits().factsBudget, 192 << 20)
        // Too little for a large body: small frames (≤ 1 MiB) stay admissible while 1 MiB fits.
        let tiny = MemoryBudget(availableBytes: 12 << 20).limits()
        XCTAssertEqual(tiny.bufferBudget, 2 << 20)
        XCTAssertEqual(tiny.maximumBodySize, 1 << 20)
        XCTAssertEqual(tiny.factsBudget, 0)
        let none = MemoryBudget(availableBytes: 4 << 20).limits()
        XCTAssertEqual(none.bufferBudget, 0)
        XCTAssertEqual(none.maximumBodySize, 0)
        // Monotonic: more memory never admits less.
        var last = PortLimits(maximumBodySize: 0, bufferBudget: 0)
        for mib in stride(from: 0, through: 256, by: 4) {
            let l = MemoryBudget(availableBytes: mib << 20).limits()
            XCTAssertGreaterThanOrEqual(l.bufferBudget, last.bufferBudget)
            XCTAssertGreaterThanOrEqual(l.maximumBodySize, last.maximumBodySize)
            XCTAssertLessThanOrEqual(l.maximumBodySize, l.bufferBudget)
            // Bodies and facts at their cost never exceed what is left beside the reserve.
            let memory = MemoryBudget(availableBytes: mib << 20)
            XCTAssertLessThanOrEqual(MemoryBudget.bytesPerBodyByte * l.bufferBudget + MemoryBudget.factsCost(l.factsBudget ?? 0), memory.room, "\(mib) MiB")
            last = l
        }
    }

    /// A server with a 55 MiB guest's limits advertises its largest body in hello, refuses a 9 MiB
    /// body at its header (before buffering it) with a precise frame-too-large, then still judges
    /// a real module and answers status.
    func testNarrowedServerRefusesWhatItCannotHold() async throws {
        var policy = Policy.builtIn(trust: try Fixtures.debianTrust())
        policy.endState = .signatureOnly
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let limits = MemoryBudget(availableBytes: 55 << 20).limits()
        let server = VerifierServer(responder: Verifier(policy: policy), logger: logger, threads: 2, configuration: limits)
        let endpoint = Endpoint.unix(path: Fixtures.temporaryDirectory() + "/execgate.sock")
        try await server.bind(endpoint)
        let c = try await ExecGateClient.connect(to: endpoint)
        // hello tells the VMM the port's real limit, not the protocol default.
        let hello = try await c.hello(clientName: "test")
        XCTAssertEqual(hello.maximumBodySize, UInt32(8 << 20))
        let big = try await c.sendFrame(Frame(type: .authorizeModule, requestID: 1, body: ByteBuffer(repeating: 0, count: 9 << 20)))
        guard case .error(let e) = big else { await c.close(); await server.shutdown(); return XCTFail("expected a refusal, got \(big)") }
        XCTAssertEqual(e.code, .frameTooLarge)
        XCTAssertTrue(e.message.contains("\(8 << 20)"), e.message)
        let module = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
        let v = try await c.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
        XCTAssertEqual(v.decision, .allow, v.message)
        let s = try await c.status()
        XCTAssertEqual(s.state, "serving")
        await c.close()
        await server.shutdown()
    }
}
