// SPDX-License-Identifier: Apache-2.0
//
// The service VM's init hands over to the real verifier here (ExecGateServiceVM stays independent
// of the service; the executable connects the two):
//
//   serve  the verifier (VerifierServer + Verifier, the built-in policy over the kernel's own
//          certificates from /etc/execgate/trust/) on AF_VSOCK, until SIGTERM/SIGINT;
//   test   additionally acts as the VMM against vsock CID 1 (loopback): hello, status, real signed
//          Debian modules (allow), a tampered copy (deny), malformed frames (error replies, the
//          connection stays usable), bad magic (error + close, others unaffected), concurrent
//          pipelined clients, and a latency series. Each result is one EXECGATE-RESULT line.

import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateServiceVM
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum GuestServiceWiring {
    static var hooks: GuestServiceHooks {
        GuestServiceHooks(
            runService: { port, ready in try await GuestVerifier.serve(port: port, ready: ready) },
            runSelfTest: { port, report in try await GuestSelfTest.run(port: port, report: report) }
        )
    }
}

enum GuestVerifier {
    /// The trust anchors the image builder put into the initramfs.
    static func anchors() -> [Certificate] {
        let dir = ImageBuilder.GuestPaths.trust
        var out: [Certificate] = []
        for name in (try? FS.list(dir)) ?? [] where name.hasSuffix(".der") || name.hasSuffix(".pem") {
            do { out += try Certificate.load(try FS.read(dir + "/" + name, limit: 1 << 20)) } catch {
                GuestInit.log("ignoring trust anchor \(name): \(error)")
            }
        }
        return out
    }

    static func serve(port: UInt32, ready: @escaping @Sendable () -> Void) async throws {
        let anchors = anchors()
        if anchors.isEmpty { GuestInit.log("no trust anchors in \(ImageBuilder.GuestPaths.trust): every module will be denied") }
        // The same options `execgate serve` takes, from what the image holds: the kernel's
        // certificates, /etc/execgate/policy (text or bundle) if present, and — only when the image
        // carries an admin certificate — the admin port on VMM port + 1 with an in-memory audit log.
        var trustArgs: [String] = []
        for name in (try? FS.list(ImageBuilder.GuestPaths.trust)) ?? [] where name.hasSuffix(".der") || name.hasSuffix(".pem") {
            trustArgs += ["--trust", ImageBuilder.GuestPaths.trust + "/" + name]
        }
        var policyArgs: [String] = []
        if FS.exists(ImageBuilder.GuestPaths.policy) { policyArgs += ["--policy", ImageBuilder.GuestPaths.policy] }
        let adminPort = port &+ 1
        if FS.exists(ImageBuilder.GuestPaths.adminCertificate) {
            policyArgs += ["--admin-cert", ImageBuilder.GuestPaths.adminCertificate, "--admin-listen", "vsock:\(adminPort)"]
        }
        let trust = try TrustOptions.parse(trustArgs)
        let options = try ServePolicyOptions.parse(policyArgs)
        let policy = try options.bootPolicy(trust: trust)
        var logger = Logger(label: "execgate")
        // Every console byte costs under emulation; per-request logs stay off unless asked.
        logger.logLevel = .notice
        let verifier = Verifier(policy: policy, serverName: ExecGateVersion.string)
        let admin = try await options.start(verifier: verifier, trust: trust)
        let server = VerifierServer(responder: verifier, logger: logger, threads: System.coreCount)
        do {
            _ = try await server.bind(.vsock(cid: UInt32.max, port: port))
        } catch {
            await server.shutdown()
            await admin.shutdown()
            throw error
        }
        GuestInit.log("verifier listening on vsock port \(port) (policy \(policy.id) v\(policy.version), \(anchors.count) trust anchor(s))"
                      + (admin.server != nil ? "; admin port vsock \(adminPort)" : "; no admin certificate: policy is fixed"))
        ready()
        await ServiceLogging.waitForTermination()
        GuestInit.log("signal received: shutting down the verifier")
        await server.shutdown()
        await admin.shutdown()
    }
}

enum GuestSelfTest {
    struct Fixture { var name: String; var bytes: [UInt8]; var expectAllow: Bool }

    static func fixtures() -> [Fixture] {
        let dir = ImageBuilder.GuestPaths.testModules
        return ((try? FS.list(dir)) ?? []).filter { $0.hasSuffix(".ko") }.compactMap { name in
            guard let b = try? FS.read(dir + "/" + name, limit: 64 << 20) else { return nil }
            return Fixture(name: name, bytes: b, expectAllow: !name.hasPrefix("tampered-"))
        }
    }

    static func micros(since t: UInt64) -> Int { Int((Clock.nanos() - t) / 1000) }

    static func run(port: UInt32, report: @escaping @Sendable (SelfTestResult) -> Void) async throws {
        let endpoint = Endpoint.vsock(cid: 1, port: port)  // VMADDR_CID_LOCAL: vsock_loopback, inside the guest only.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do { try await requests(endpoint, group, report) } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }

    static func requests(_ endpoint: Endpoint, _ group: EventLoopGroup, _ report: @escaping @Sendable (SelfTestResult) -> Void) async throws {

        func check(_ name: String, _ body: () async throws -> (Bool, String, [(String, String)])) async {
            let t = Clock.nanos()
            do {
                let (ok, detail, extra) = try await body()
                report(SelfTestResult(name: name, passed: ok, detail: detail, micros: micros(since: t), extra: extra))
            } catch {
                report(SelfTestResult(name: name, passed: false, detail: "\(error)", micros: micros(since: t)))
            }
        }

        // First answer: connect + hello.
        let client = try await ExecGateClient.connect(to: endpoint, group: group, timeout: 30)
        await check("hello") {
            let h = try await client.hello(clientName: "execgate-selftest")
            return (true, "server answered hello (\(h))", [])
        }
        await check("status") {
            let s = try await client.status()
            return (s.state == "serving", "state \(s.state), policy \(s.policyID) v\(s.policyVersion)", [])
        }

        let mods = fixtures()
        await check("fixtures") { (mods.contains { $0.expectAllow } && mods.contains { !$0.expectAllow }, "\(mods.count) module(s) in the test image", []) }
        for m in mods {
            await check("module.\(m.name)") {
                let v = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: m.bytes)))
                let ok = (v.decision == .allow) == m.expectAllow
                return (ok, "\(v.decision == .allow ? "allow" : "deny") (\(v.reason.name)); expected \(m.expectAllow ? "allow" : "deny")",
                        [("decision", JSON.string(v.decision == .allow ? "allow" : "deny")), ("reason", JSON.string(v.reason.name))])
            }
        }

        // Malformed frames: answered with typed errors; the connection stays usable.
        await check("malformed.body") {
            let r = try await client.sendFrame(Frame(type: .authorizeModule, requestID: client.allocateID(), body: ByteBuffer(bytes: [0, 1, 0])))
            guard case .error(let e) = r else { return (false, "expected an error reply, got \(r)", []) }
            return (e.code == .malformedBody, "error \(e.code)", [])
        }
        await check("malformed.unknown-type") {
            let r = try await client.sendFrame(Frame(type: MessageType(rawValue: 0x0077), requestID: client.allocateID(), body: ByteBuffer()))
            guard case .error(let e) = r else { return (false, "expected an error reply, got \(r)", []) }
            return (e.code == .unknownMessageType, "error \(e.code)", [])
        }
        await check("malformed.version") {
            let r = try await client.sendFrame(Frame(version: 2, type: .status, requestID: client.allocateID(), body: ByteBuffer()))
            guard case .error(let e) = r else { return (false, "expected an error reply, got \(r)", []) }
            return (e.code == .unsupportedVersion, "error \(e.code)", [])
        }
        await check("malformed.still-usable") {
            let s = try await client.status()
            return (s.state == "serving", "status after errors: \(s.state)", [])
        }
        await check("malformed.bad-magic") {
            let bad = try await ExecGateClient.connect(to: endpoint, group: group, timeout: 10)
            try await bad.writeRaw(Array("GET / HTTP/1.1\r\n\r\nxx".utf8))
            var closed = false
            do { _ = try await bad.status() } catch { closed = true }
            await bad.close()
            let s = try await client.status()
            return (closed && s.state == "serving", "bad magic closed that connection: \(closed); others unaffected", [])
        }

        // Concurrent pipelined clients: 4 connections × every fixture twice, all in flight at once.
        await check("concurrent.pipelined") {
            let clients = 4, rounds = 2
            let expected = mods.count * rounds * clients
            let wrong = try await withThrowingTaskGroup(of: Int.self) { g in
                for _ in 0..<clients {
                    g.addTask {
                        let c = try await ExecGateClient.connect(to: endpoint, group: group, timeout: 60)
                        let bad = try await withThrowingTaskGroup(of: Bool.self) { inner in
                            for _ in 0..<rounds {
                                for m in mods {
                                    inner.addTask {
                                        let v = try await c.authorize(AuthorizeModule(module: ByteBuffer(bytes: m.bytes)))
                                        return (v.decision == .allow) == m.expectAllow
                                    }
                                }
                            }
                            var n = 0
                            for try await ok in inner where !ok { n += 1 }
                            return n
                        }
                        await c.close()
                        return bad
                    }
                }
                var n = 0
                for try await b in g { n += b }
                return n
            }
            return (wrong == 0, "\(expected - wrong)/\(expected) verdicts right over \(clients) pipelined connections",
                    [("requests", "\(expected)")])
        }

        // Latency: sequential status round trips (no verification work).
        await check("latency.status-100") {
            let t = Clock.nanos()
            for _ in 0..<100 { _ = try await client.status() }
            let mean = micros(since: t) / 100
            return (true, "mean \(mean) µs per status round trip (emulated CPU: compare ratios)", [("mean_us", "\(mean)")])
        }
        if let allowed = mods.first(where: { $0.expectAllow }) {
            await check("latency.authorize-20") {
                let t = Clock.nanos()
                for _ in 0..<20 { _ = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: allowed.bytes))) }
                let mean = micros(since: t) / 20
                return (true, "mean \(mean) µs per authorize of \(allowed.name) (\(allowed.bytes.count) bytes)", [("mean_us", "\(mean)")])
            }
        }
        await client.close()
    }
}
