// SPDX-License-Identifier: Apache-2.0
//
// The service VM's PID 1 hands over to the verifier here (ExecGateServiceVM's init stays
// independent of the service; this target connects the two through `GuestServiceHooks`):
//
//   serve  the verifier (`VerifierService.start`) on AF_VSOCK with the configuration the image
//          implies: the kernel's own certificates from /etc/execgate/trust/, /etc/execgate/policy
//          (text or bundle) if present, and — only when the image carries an admin certificate —
//          the admin port on VMM port + 1 with an in-memory audit log; until SIGTERM/SIGINT/SIGHUP/SIGQUIT;
//   test   additionally acts as the VMM against vsock CID 1 (loopback): hello, status, real signed
//          Debian modules (allow), a tampered copy (deny), malformed frames (error replies, the
//          connection stays usable), bad magic (error + close, others unaffected), concurrent
//          pipelined clients, and a latency/throughput series. Each result is one EXECGATE-RESULT line.

import _ExecGateInternals
import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateServiceVM
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import NIOPosix

public enum GuestService {
    /// The hooks PID 1 runs (`GuestInit.run(hooks:)`); the executable may add `runCapture`.
    public static var hooks: GuestServiceHooks {
        GuestServiceHooks(
            runService: { port, ready in try await serve(port: port, ready: ready) },
            runSelfTest: { port, report in try await GuestSelfTest.run(port: port, report: report) }
        )
    }

    /// What the image holds, as a service configuration (PID 1 has no command line to parse).
    public static func configuration(port: UInt32, serverName: String) -> ServiceConfiguration {
        // Every console byte costs under emulation; per-request logs stay off unless asked. The
        // console is the host's log too: request words are escaped (`TextLogHandler`).
        let logger = VerifierService.makeLogger(format: "text", level: .notice)
        var c = ServiceConfiguration(listen: [.vsock(cid: UInt32.max, port: port)], serverName: serverName, logger: logger)
        let dir = ImageBuilder.GuestPaths.trust
        c.trustAnchorFiles = ((try? FS.list(dir)) ?? []).filter { $0.hasSuffix(".der") || $0.hasSuffix(".pem") }.map { dir + "/" + $0 }
        if FS.exists(ImageBuilder.GuestPaths.policy) { c.policyFile = ImageBuilder.GuestPaths.policy }
        // Admission from the memory this guest has (ServiceVM/README.md, "Memory budget").
        if let text = try? FS.readString("/proc/meminfo", limit: 1 << 16), let memory = MemoryBudget(meminfo: text) {
            let limits = memory.limits()
            c.portLimits = limits
            GuestInit.log(memory.summary(limits))
        } else {
            GuestInit.log("no MemAvailable in /proc/meminfo: the default request budget applies")
        }
        if FS.exists(ImageBuilder.GuestPaths.adminCertificate) {
            c.adminCertificateFile = ImageBuilder.GuestPaths.adminCertificate
            c.adminListen = .vsock(cid: UInt32.max, port: port &+ 1)
        }
        return c
    }

    static func serve(port: UInt32, ready: @escaping @Sendable () -> Void) async throws {
        let t0 = MonotonicClock.nanoseconds()
        let c = configuration(port: port, serverName: ExecGateVersion.string)
        let t1 = MonotonicClock.nanoseconds()
        let stop = try TerminationSignals()  // before anything binds, as `serve`
        let service = try await VerifierService.start(c)
        let t2 = MonotonicClock.nanoseconds()
        let policy = service.bootPolicy
        // The set-up's two parts in guest milliseconds (vm-bench's CONSOLE_DIR keeps these lines;
        // ServiceVM/README.md, "Where the time goes").
        GuestInit.log("verifier listening on vsock port \(port) (policy \(policy.id) v\(policy.version), \(policy.trust.anchors.count) trust anchor(s))"
                      + (service.adminListening != nil ? "; admin port vsock \(port &+ 1)" : "; no admin certificate: policy is fixed")
                      + "; set-up: configuration \((t1 - t0) / 1_000_000) ms, VerifierService.start \((t2 - t1) / 1_000_000) ms (\(service.startSteps))")
        ready()
        await stop.wait()
        GuestInit.log("signal received: shutting down the verifier")
        let unwritten = await service.shutdown()
        if unwritten > 0 { GuestInit.log("\(unwritten) audit record(s) accepted but never written to the audit sink before shutdown") }
    }
}

enum GuestSelfTest {
    struct Fixture {
        var name: String; var bytes: [UInt8]; var expectAllow: Bool

        /// Whether `v` is the expected verdict. The self-test sends modules without a guest or
        /// bytes, so under the fail-closed default (`end-state required`) a genuine module passes
        /// every evidence check and is denied only for `policy.end-state-unavailable` (or allowed,
        /// signature only, under an explicit `signature-only` policy); a tampered one is denied
        /// for its evidence.
        func judged(_ v: Verdict) -> Bool {
            expectAllow ? (v.decision == .allow || v.reason == .endStateUnavailable)
                        : (v.decision == .deny && v.reason != .endStateUnavailable)
        }
    }

    static func fixtures() -> [Fixture] {
        let dir = ImageBuilder.GuestPaths.testModules
        return ((try? FS.list(dir)) ?? []).filter { $0.hasSuffix(".ko") }.compactMap { name in
            guard let b = try? FS.read(dir + "/" + name, limit: 64 << 20) else { return nil }
            return Fixture(name: name, bytes: b, expectAllow: !name.hasPrefix("tampered-"))
        }
    }

    static func micros(since t: UInt64) -> Int { Int(MonotonicClock.microseconds(since: t)) }

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

        func check(_ name: String, _ body: () async throws -> (Bool, String, [(String, _ExecGateInternals.JSON)])) async {
            let t = MonotonicClock.nanoseconds()
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
                let ok = m.judged(v)
                return (ok, "\(v.decision == .allow ? "allow" : "deny") (\(v.reason.name)); expected \(m.expectAllow ? "evidence accepted" : "deny for its evidence")",
                        [("decision", .string(v.decision == .allow ? "allow" : "deny")), ("reason", .string(v.reason.name))])
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
                                        return m.judged(v)
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
                    [("requests", .int(Int64(expected)))])
        }

        // Latency: sequential status round trips (no verification work), over vsock loopback and,
        // for comparison in the same guest, over a Unix socket to a second server.
        func percentiles(_ c: ExecGateClient, _ n: Int) async throws -> (p50: Int, p99: Int, mean: Int) {
            var samples: [Double] = []
            samples.reserveCapacity(n)
            for _ in 0..<n {
                let t = MonotonicClock.nanoseconds()
                _ = try await c.status()
                samples.append(MonotonicClock.microseconds(since: t))
            }
            let s = Percentiles.summary(samples)
            return (Int(s.p50), Int(s.p99), Int(s.mean))
        }
        await check("latency.vsock-status-200") {
            let r = try await percentiles(client, 200)
            return (true, "vsock loopback status round trip p50 \(r.p50) µs, p99 \(r.p99) µs, mean \(r.mean) µs (emulated CPU: compare ratios)",
                    [("p50_us", .int(Int64(r.p50))), ("p99_us", .int(Int64(r.p99))), ("mean_us", .int(Int64(r.mean)))])
        }
        await check("latency.unix-status-200") {
            var logger = Logger(label: "selftest-unix")
            logger.logLevel = .critical
            let server = VerifierServer(responder: Verifier(policy: Policy.builtIn(trust: TrustStore([]))), logger: logger, threads: 1)
            let path = "/selftest-unix.sock"
            do {
                try await server.bind(.unix(path: path))
                let c = try await ExecGateClient.connect(to: .unix(path: path), group: group, timeout: 30)
                let r = try await percentiles(c, 200)
                await c.close()
                await server.shutdown()
                return (true, "unix socket status round trip in the same guest p50 \(r.p50) µs, p99 \(r.p99) µs, mean \(r.mean) µs",
                        [("p50_us", .int(Int64(r.p50))), ("p99_us", .int(Int64(r.p99))), ("mean_us", .int(Int64(r.mean)))])
            } catch {
                await server.shutdown()
                throw error
            }
        }
        if let small = mods.filter({ $0.expectAllow }).min(by: { $0.bytes.count < $1.bytes.count }) {
            await check("throughput.authorize-8-clients") {
                let perClient = 10
                let t = MonotonicClock.nanoseconds()
                let ok = try await withThrowingTaskGroup(of: Int.self) { g in
                    for _ in 0..<8 {
                        g.addTask {
                            let c = try await ExecGateClient.connect(to: endpoint, group: group, timeout: 60)
                            var n = 0
                            for _ in 0..<perClient where small.judged(try await c.authorize(AuthorizeModule(module: ByteBuffer(bytes: small.bytes)))) { n += 1 }
                            await c.close()
                            return n
                        }
                    }
                    var total = 0
                    for try await n in g { total += n }
                    return total
                }
                let seconds = Double(MonotonicClock.nanoseconds() - t) / 1e9
                let rate = Int(Double(8 * perClient) / seconds)
                return (ok == 8 * perClient, "\(ok)/\(8 * perClient) judged as expected (evidence accepted); \(rate) authorize requests/s with 8 concurrent clients (\(small.name), \(small.bytes.count) bytes)",
                        [("requests_per_s", .int(Int64(rate)))])
            }
        }
        if let allowed = mods.first(where: { $0.expectAllow }) {
            await check("latency.authorize-20") {
                let t = MonotonicClock.nanoseconds()
                for _ in 0..<20 { _ = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: allowed.bytes))) }
                let mean = micros(since: t) / 20
                return (true, "mean \(mean) µs per authorize of \(allowed.name) (\(allowed.bytes.count) bytes)", [("mean_us", .int(Int64(mean)))])
            }
        }
        await client.close()
    }
}
