// SPDX-License-Identifier: Apache-2.0
//
// The protocol through a real Unix-socket server: pipelined and concurrent requests, every kind
// of bad frame answered with an error while the connection stays usable, and graceful shutdown.

import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import XCTest

final class ServiceTests: XCTestCase {
    var server: VerifierServer!
    var verifier: Verifier!
    var endpoint: Endpoint!
    var modules: [(name: String, bytes: [UInt8])] = []

    override func setUp() async throws {
        // These tests exercise the transport with modules sent without bytes: the policy opts into
        // signature-only explicitly (the built-in default, end-state required, would deny them).
        var policy = Policy.builtIn(trust: try Fixtures.debianTrust())
        policy.endState = .signatureOnly
        verifier = Verifier(policy: policy)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        server = VerifierServer(responder: verifier, logger: logger, threads: 2, maximumBodySize: 8 << 20)
        endpoint = .unix(path: Fixtures.temporaryDirectory() + "/execgate.sock")
        try await server.bind(endpoint)
        modules = try Fixtures.sampleModules(16).map { path in
            (String(path.split(separator: "/").last!.dropLast(3)), try Fixtures.readFile(path))
        }.filter { $0.bytes.count < 8 << 20 }
    }

    override func tearDown() async throws {
        await server.shutdown()
    }

    func testPipelinedRequestsOnOneConnectionGetTheirOwnVerdicts() async throws {
        let client = try await ExecGateClient.connect(to: endpoint)
        var tampered = modules[0].bytes
        tampered[64] ^= 0xff
        let requests: [(expected: Verdict.Decision, module: [UInt8])] = modules.map { (.allow, $0.bytes) } + [(.deny, tampered)]
        let verdicts = try await withThrowingTaskGroup(of: (Int, Verdict).self) { group in
            for (i, r) in requests.enumerated() {
                group.addTask { (i, try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: r.module)))) }
            }
            var out = [Verdict?](repeating: nil, count: requests.count)
            for try await (i, v) in group { out[i] = v }
            return out.map { $0! }
        }
        for (r, v) in zip(requests, verdicts) { XCTAssertEqual(v.decision, r.expected, v.message) }
        for (m, v) in zip(modules, verdicts) { XCTAssertEqual(Policy.canonicalModuleName(v.moduleName), Policy.canonicalModuleName(m.name)) }
        await client.close()
    }

    func testConcurrentConnections() async throws {
        let module = modules[1].bytes
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask { [endpoint] in
                    let c = try await ExecGateClient.connect(to: endpoint!)
                    for _ in 0..<5 {
                        let v = try await c.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
                        XCTAssertEqual(v.decision, .allow)
                    }
                    await c.close()
                }
            }
            try await group.waitForAll()
        }
        let status = try await ExecGateClient.connect(to: endpoint)
        let s = try await status.status()
        XCTAssertGreaterThanOrEqual(s.requestsServed, 40)
        await status.close()
    }

    func testBadRequestsGetErrorsAndConnectionStaysUsable() async throws {
        let c = try await ExecGateClient.connect(to: endpoint)
        // Malformed body.
        let bad = try await c.sendFrame(Frame(type: .authorizeModule, requestID: 100, body: ByteBuffer(bytes: [0, 1, 0])))
        guard case .error(let e1) = bad else { return XCTFail("expected error, got \(bad)") }
        XCTAssertEqual(e1.code, .malformedBody)
        // Unknown message type.
        let unknown = try await c.sendFrame(Frame(type: MessageType(rawValue: 0x0077), requestID: 101, body: ByteBuffer()))
        guard case .error(let e2) = unknown else { return XCTFail() }
        XCTAssertEqual(e2.code, .unknownMessageType)
        // A reply type sent as a request.
        let reply = try await c.sendFrame(Message.statusReply(StatusReply(serverName: "", uptimeMilliseconds: 0, requestsServed: 0, guests: 0, policyID: "", policyVersion: 0, state: "x")).frame(requestID: 102))
        guard case .error(let e3) = reply else { return XCTFail() }
        XCTAssertEqual(e3.code, .badRequest)
        // Wrong version.
        let v2 = try await c.sendFrame(Frame(version: 2, type: .status, requestID: 103, body: ByteBuffer()))
        guard case .error(let e4) = v2 else { return XCTFail() }
        XCTAssertEqual(e4.code, .unsupportedVersion)
        // Oversized (server limit 8 MiB): refused at the header; the body is discarded unbuffered.
        let big = try await c.sendFrame(Frame(type: .authorizeModule, requestID: 104, body: ByteBuffer(repeating: 0, count: (8 << 20) + 1)))
        guard case .error(let e5) = big else { return XCTFail() }
        XCTAssertEqual(e5.code, .frameTooLarge)
        // Still usable.
        let s = try await c.status()
        XCTAssertEqual(s.state, "serving")
        await c.close()
    }

    func testBadMagicGetsErrorThenClose() async throws {
        let c = try await ExecGateClient.connect(to: endpoint, timeout: 5)
        try await c.writeRaw(Array("GET / HTTP/1.1\r\n\r\nxx".utf8))
        // The server answers id 0 with bad-magic and closes; the next request fails promptly.
        do {
            _ = try await c.status()
            XCTFail("connection should be closed after bad magic")
        } catch let e as ClientError {
            XCTAssertTrue([ClientError.connectionClosed].contains(e) || "\(e)".contains("closed"), "\(e)")
        }
        await c.close()
        // Other connections are unaffected.
        let d = try await ExecGateClient.connect(to: endpoint)
        let state = try await d.status().state
        XCTAssertEqual(state, "serving")
        await d.close()
    }

    func testClientVanishingMidRequestDoesNotHurtServer() async throws {
        for _ in 0..<5 {
            let c = try await ExecGateClient.connect(to: endpoint)
            var partial = ByteBuffer()
            partial.writeFrame(Message.authorizeModule(AuthorizeModule(module: ByteBuffer(bytes: modules[2].bytes))).frame(requestID: 1))
            try await c.writeRaw(Array(Array(buffer: partial).prefix(partial.readableBytes / 2)))
            await c.close()
        }
        let d = try await ExecGateClient.connect(to: endpoint)
        let v = try await d.authorize(AuthorizeModule(module: ByteBuffer(bytes: modules[2].bytes)))
        XCTAssertEqual(v.decision, .allow)
        await d.close()
    }

    func testRegisterGuestThenAuthorizeForIt() async throws {
        let c = try await ExecGateClient.connect(to: endpoint)
        // The core text bounds come with any symbol: the facts are checked against them.
        let reply = try await c.register(RegisterGuest(guestID: "g-1", kernelRelease: "6.1.0-56-amd64", symbols: [
            KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, exported: false),
            KernelSymbol(name: "_etext", address: 0xffff_ffff_81e0_0000, exported: false)] + Fixtures.syntheticImageBounds + [
            KernelSymbol(name: "printk", address: 0xffff_ffff_8110_0000)]))
        XCTAssertEqual(reply.symbolCount, 11)
        XCTAssertEqual(reply.factsDigest.count, 32, "the SHA-256 of the registration body")
        let v = try await c.authorize(AuthorizeModule(guestID: "g-1", module: ByteBuffer(bytes: modules[0].bytes)))
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertTrue(v.signatureOnly)
        XCTAssertEqual(v.factsDigest, reply.factsDigest)
        do {
            _ = try await c.register(RegisterGuest(guestID: "g-1"))
            XCTFail("facts are taken once: a live guest is not re-registered without reset")
        } catch ClientError.server(let e) {
            XCTAssertEqual(e.code, .guestExists)
        }
        do {
            _ = try await c.authorize(AuthorizeModule(guestID: "g-unknown", module: ByteBuffer(bytes: modules[0].bytes)))
            XCTFail("unknown guest must be an error")
        } catch ClientError.server(let e) {
            XCTAssertEqual(e.code, .unknownGuest)
        }
        await c.close()
    }

    /// The session messages travel through the real server: retire-module and module-init-freed
    /// of a module that is not live are refused with their codes; a patch batch gets a verdict.
    func testSessionMessagesAreRoutedOverTheSocket() async throws {
        let c = try await ExecGateClient.connect(to: endpoint)
        _ = try await c.register(RegisterGuest(guestID: "g-2"))
        do {
            _ = try await c.retireModule(RetireModule(guestID: "g-2", moduleName: "vsock", textBase: 0xffff_ffff_c000_0000))
            XCTFail("nothing is live")
        } catch ClientError.server(let e) {
            XCTAssertEqual(e.code, .unknownModule)
        }
        do {
            _ = try await c.moduleInitFreed(ModuleInitFreed(guestID: "g-2", moduleName: "vsock", initBase: 0xffff_ffff_c200_0000))
            XCTFail("nothing is live")
        } catch ClientError.server(let e) {
            XCTAssertEqual(e.code, .unknownModule)
        }
        let v = try await c.authorizePatch(AuthorizePatch(guestID: "g-2", patches: [PatchEntry(address: 0xffff_ffff_c000_0010, bytes: [0x66, 0x90]),
                                                                                   PatchEntry(address: 0xffff_ffff_c000_0020, bytes: [0x66, 0x90])]))
        XCTAssertEqual(v.decision, .deny)
        XCTAssertEqual(v.reason, .patchNotAllowed)
        await c.close()
    }
}
