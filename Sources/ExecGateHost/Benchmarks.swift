// SPDX-License-Identifier: Apache-2.0
//
// Figures, not tests: what this machine measures (`execgate bench`, `execgate vsock-bench`). Nothing
// here fails on a slow machine. Clocks and percentiles are the toolkit's (_ExecGateInternals).

import _ExecGateInternals
import CExecGateSys
import Dispatch
import ExecGateCapture
import ExecGateClient
import ExecGateKernelImage
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateVerifier
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

/// Round-trip percentiles (µs) of the service's status and the C echo, with the placement used.
public struct PlacedRoundTrips: Sendable {
    public var placement: RoundTripPlacement
    public var statusP50us: Double, statusP99us: Double, echoP50us: Double, echoP99us: Double
}

/// The CPUs a round trip's two ends are pinned to: the client thread on `client`; the server's
/// event-loop threads (NIO's, found by name) and the echo's thread on `server`.
public struct RoundTripPlacement: Sendable, Equatable {
    public var client: Int32, server: Int32
}

/// Signature verification of every module of a kernel package, by ExecGate and by OpenSSL alone
/// (CMS_verify) in the same run, and status round trips over a Unix socket.
public enum SignatureBenchmark {
    public struct Figures: Sendable {
        public var modules: Int, bytes: Int, verifiedOK: Int, baselineOK: Int
        public var execgateSeconds: Double, opensslSeconds: Double
        public var roundTripP50us: Double, roundTripP99us: Double, roundTripMeanus: Double
        /// The same modules on a pool of `poolThreads` (System.coreCount) in process, and through
        /// the service (`serviceClients` pipelined connections), wall seconds.
        public var poolThreads = 0, poolSeconds = 0.0, poolOK = 0
        public var serviceClients = 0, serviceSeconds = 0.0, serviceAllowed = 0
        /// Status round trips from a blocking client, and a minimal C echo over the same socket type, µs.
        public var statusP50us = 0.0, statusP99us = 0.0, echoP50us = 0.0, echoP99us = 0.0
        /// The same, pinned (`RoundTripPlacement`): client and server threads on one core, then on
        /// two (nil on a one-CPU machine). Left to the scheduler, the two sides of each comparison
        /// land on one core or two as it happens (a wakeup across cores costs ~20 µs more here),
        /// and the echo's fresh thread and the service's event loop do not land alike.
        public var oneCore: PlacedRoundTrips?, twoCores: PlacedRoundTrips?
        /// Process CPU seconds (user + system) of each phase: on a machine whose other load takes
        /// cores away, CPU / wall says how much parallelism the phase got. (Of the round whose
        /// wall time is the phase's figure.)
        public var execgateCPU = 0.0, opensslCPU = 0.0, poolCPU = 0.0, serviceCPU = 0.0
        /// Wall seconds of every round of each timed phase, in the order run. The four phases run
        /// in turn, round after round, so a burst of another tenant's load lands on one round of
        /// each rather than on every round of one; the scalar `…Seconds` figures are each phase's
        /// best round (as `explain --bench` takes the best pass of both sides), the medians
        /// below say how far the rest spread.
        public var execgateRounds: [Double] = [], opensslRounds: [Double] = [], poolRounds: [Double] = [], serviceRounds: [Double] = []

        /// Each phase's median round (nearest rank: the middle round of an odd count).
        public var execgateMedian: Double { Percentiles.of(execgateRounds, 50) }
        public var opensslMedian: Double { Percentiles.of(opensslRounds, 50) }
        public var poolMedian: Double { Percentiles.of(poolRounds, 50) }
        public var serviceMedian: Double { Percentiles.of(serviceRounds, 50) }
    }

    /// `bench --rounds`: how many times each timed verification phase runs (best and median reported).
    public static let roundsRange = 1...20
    /// `bench --clients`: the service phase's pipelined connections, each on a thread of its own.
    public static let clientsRange = 1...64

    /// `bench`'s counts: --round-trips as vsock-bench's (1…10,000,000: each round trip keeps a
    /// sample; 2^63-1 reserved that many and glibc aborted), --limit 0 (all) or more (a negative
    /// limit meant "every module").
    public static func checkCounts(roundTrips: Int, limit: Int, rounds: Int = 1, clients: Int = 1) throws(BenchmarkSizeError) {
        guard clientsRange.contains(clients) else {
            throw BenchmarkSizeError(description: "--clients must be \(clientsRange.lowerBound)…\(clientsRange.upperBound), got \(clients)")
        }
        guard roundsRange.contains(rounds) else {
            throw BenchmarkSizeError(description: "--rounds must be \(roundsRange.lowerBound)…\(roundsRange.upperBound), got \(rounds)")
        }
        let range = RoundTripBenchmark.roundTripRange
        guard range.contains(roundTrips) else {
            throw BenchmarkSizeError(description: "--round-trips must be \(range.lowerBound)…\(range.upperBound), got \(roundTrips)")
        }
        guard limit >= 0 else { throw BenchmarkSizeError(description: "--limit must be 0 (every module) or more, got \(limit)") }
    }

    /// The module files of an unpacked Debian kernel package (`boot/vmlinuz-*`, `lib/modules/*`),
    /// sorted; the first `limit` when `limit > 0`.
    public static func inputs(kernelPackage: String, limit: Int) throws -> (vmlinuz: String, modules: [String]) {
        guard let v = try LocalFile.list(kernelPackage + "/boot").first(where: { $0.hasPrefix("vmlinuz-") }) else {
            throw LocalFileError(path: kernelPackage + "/boot", why: "no vmlinuz-*")
        }
        let lib = kernelPackage + "/lib/modules"
        guard let release = try LocalFile.list(lib).first else { throw LocalFileError(path: lib, why: "empty") }
        var found: [String] = []
        // Plain or compressed (Debian's 6.12 packages ship `.ko.xz`): read through `readModule`,
        // so what is measured is the ELF the kernel verifies, as `verify module` reads it.
        let suffixes = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        walk(lib + "/" + release + "/kernel") { p in if suffixes.contains(where: { p.hasSuffix($0) }) { found.append(p) } }
        found.sort()
        // Nothing to measure is unreadable input, not figures of nothing.
        guard !found.isEmpty else { throw LocalFileError(path: lib + "/" + release + "/kernel", why: "no module (.ko, .ko.xz, .ko.zst, .ko.gz) under it") }
        return (kernelPackage + "/boot/" + v, limit > 0 ? Array(found.prefix(limit)) : found)
    }

    /// `serviceClients`: the service phase's pipelined connections (nil: one per core,
    /// `System.coreCount`, the clients running on the same cores as the service).
    public static func run(vmlinuz: String, modules: [String], roundTrips: Int, rounds: Int = 1, serviceClients: Int? = nil,
                           progress: (String) -> Void) async throws -> Figures {
        try checkCounts(roundTrips: roundTrips, limit: 0, rounds: rounds, clients: serviceClients ?? 1)
        let certs: [Certificate]
        do { certs = try KernelImage.load(try LocalFile.read(vmlinuz)).builtinCertificates() } catch let e as LocalFileError { throw e } catch {
            throw LocalFileError(path: vmlinuz, why: "\(error)")
        }
        let trust = TrustStore(certs)
        progress("loading \(modules.count) modules")
        let blobs = try modules.map { try LocalFile.readModule($0) }
        // Warm up both paths once.
        _ = blobs.first.map { b in b.withUnsafeBytes { ModuleSignatureVerifier.verify(module: $0, trust: trust) } }
        var f = Figures(modules: blobs.count, bytes: blobs.reduce(0) { $0 + $1.count }, verifiedOK: 0, baselineOK: 0,
                        execgateSeconds: .infinity, opensslSeconds: .infinity, roundTripP50us: 0, roundTripP99us: 0, roundTripMeanus: 0)
        f.poolThreads = System.coreCount
        f.serviceClients = serviceClients ?? max(1, System.coreCount)
        f.poolSeconds = .infinity
        f.serviceSeconds = .infinity
        for round in 1...rounds {
            let of = rounds > 1 ? " (round \(round) of \(rounds))" : ""
            progress("verifying with ExecGate" + of)
            var ok = 0
            let c0 = ProcessUsage.cpuSeconds()
            let t0 = MonotonicClock.seconds()
            for b in blobs where b.withUnsafeBytes({ ModuleSignatureVerifier.verify(module: $0, trust: trust) }).isValid { ok += 1 }
            let ours = MonotonicClock.seconds() - t0
            let c1 = ProcessUsage.cpuSeconds()
            progress("verifying with OpenSSL alone" + of)
            var baseOK = 0
            let t1 = MonotonicClock.seconds()
            for b in blobs where b.withUnsafeBytes({ OpenSSLBaseline.verify(module: $0, certificate: certs[0]) }) { baseOK += 1 }
            let base = MonotonicClock.seconds() - t1
            let c2 = ProcessUsage.cpuSeconds()
            progress("verifying with ExecGate on a pool of \(f.poolThreads) threads" + of)
            let (pool, poolOK) = poolSeconds(blobs: blobs, trust: trust, threads: f.poolThreads)
            let c3 = ProcessUsage.cpuSeconds()
            progress("verifying through the service (\(f.serviceClients) pipelined clients over a Unix socket)" + of)
            let service = try await serviceSeconds(blobs: blobs, trust: trust, clients: f.serviceClients, depth: 16)
            // Counts from the first round; every round verifies the same bytes and must agree.
            if round == 1 { (f.verifiedOK, f.baselineOK, f.poolOK, f.serviceAllowed) = (ok, baseOK, poolOK, service.allowed) }
            guard (ok, baseOK, poolOK, service.allowed) == (f.verifiedOK, f.baselineOK, f.poolOK, f.serviceAllowed) else {
                throw BenchmarkMismatchError(description: "round \(round) verified \(ok)/\(baseOK)/\(poolOK)/\(service.allowed) modules (execgate/openssl/pool/service), round 1 \(f.verifiedOK)/\(f.baselineOK)/\(f.poolOK)/\(f.serviceAllowed): the same bytes gave other verdicts")
            }
            f.execgateRounds.append(ours); f.opensslRounds.append(base); f.poolRounds.append(pool); f.serviceRounds.append(service.seconds)
            if ours < f.execgateSeconds { (f.execgateSeconds, f.execgateCPU) = (ours, c1 - c0) }
            if base < f.opensslSeconds { (f.opensslSeconds, f.opensslCPU) = (base, c2 - c1) }
            if pool < f.poolSeconds { (f.poolSeconds, f.poolCPU) = (pool, c3 - c2) }
            if service.seconds < f.serviceSeconds { (f.serviceSeconds, f.serviceCPU) = (service.seconds, service.cpu) }
        }
        progress("\(roundTrips) round trips over a Unix socket")
        let rt = try await unixRoundTrips(trust: trust, count: roundTrips)
        (f.roundTripP50us, f.roundTripP99us, f.roundTripMeanus) = (rt.p50, rt.p99, rt.mean)
        progress("status round trips (blocking client) and a C echo over a Unix socket")
        let (status, echo) = try await statusVersusEcho(trust: trust, count: roundTrips)
        (f.statusP50us, f.statusP99us, f.echoP50us, f.echoP99us) = (status.p50, status.p99, echo.p50, echo.p99)
        func pinned(_ p: RoundTripPlacement, _ what: String) async throws -> PlacedRoundTrips {
            progress("the same, client and server pinned to \(what)")
            let (s, e) = try await statusVersusEcho(trust: trust, count: roundTrips, placement: p)
            return PlacedRoundTrips(placement: p, statusP50us: s.p50, statusP99us: s.p99, echoP50us: e.p50, echoP99us: e.p99)
        }
        var cpus = [Int32](repeating: 0, count: 2)
        let allowed = execgate_allowed_cpus(&cpus, 2)
        if allowed >= 1 { f.oneCore = try await pinned(RoundTripPlacement(client: cpus[0], server: cpus[0]), "one core (\(cpus[0]))") }
        if allowed >= 2 { f.twoCores = try await pinned(RoundTripPlacement(client: cpus[0], server: cpus[1]), "two cores (\(cpus[0]), \(cpus[1]))") }
        return f
    }

    /// Sequential status round trips to an in-process verifier over a Unix socket (µs).
    static func unixRoundTrips(trust: TrustStore, count: Int) async throws -> (p50: Double, p99: Double, mean: Double) {
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let server = VerifierServer(responder: Verifier(policy: Policy.builtIn(trust: trust)), logger: logger, threads: 1)
        let endpoint = try temporaryEndpoint("bench.sock")
        defer { removeTemporaryEndpoint(endpoint) }
        try await server.bind(endpoint)
        let client = try await ExecGateClient.connect(to: endpoint)
        for _ in 0..<100 { _ = try await client.status() }
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for _ in 0..<max(1, count) {
            let t = MonotonicClock.nanoseconds()
            _ = try await client.status()
            samples.append(MonotonicClock.microseconds(since: t))
        }
        await client.close()
        await server.shutdown()
        return Percentiles.summary(samples)
    }

    /// Every file under `path`, descending only into real directories: a symbolic link to a
    /// directory is not followed (two links to "." made the walk branch twice per level up to the
    /// kernel's 40-link lookup limit, 2^40 paths; a package's module tree holds no such link). A
    /// link to a file is visited like a file.
    static func walk(_ path: String, _ visit: (String) -> Void) {
        guard let names = try? LocalFile.list(path) else { return }
        for n in names {
            let p = path + "/" + n
            var st = stat()
            guard lstat(p, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR: walk(p, visit)
            case S_IFLNK: if !LocalFile.isDirectory(p) { visit(p) }
            default: visit(p)
            }
        }
    }
}

/// A benchmark size out of its range (a usage error: exit 2 with this reason).
public struct BenchmarkSizeError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// Two rounds of one benchmark gave other verdicts on the same bytes: no figure is printed.
public struct BenchmarkMismatchError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// Round trips (p50/p99) and bulk throughput to a verifier at any address, e.g. through the vsock
/// backend (`execgate vsock-bench`; the vhost-user boot test uses it too).
public enum RoundTripBenchmark {
    public struct Result: Sendable {
        public var p50us: Double, p99us: Double, meanus: Double, mbPerSecond: Double, bulkBytes: Int
        public var text: String {
            "round trip (status): p50 \(fmt(p50us)) µs, p99 \(fmt(p99us)) µs, mean \(fmt(meanus)) µs\n"
                + "bulk: \(bulkBytes >> 20) MiB in frames → \(fmt(mbPerSecond)) MB/s (host → guest, answered by the verifier)"
        }
        public var json: String {
            "{\"rtt_p50_us\":\(fmt(p50us)),\"rtt_p99_us\":\(fmt(p99us)),\"rtt_mean_us\":\(fmt(meanus)),\"bulk_mb_per_s\":\(fmt(mbPerSecond)),\"bulk_bytes\":\(bulkBytes)}"
        }
        func fmt(_ v: Double) -> String { String(Double(Int(v * 10)) / 10) }
    }

    /// The ranges `vsock-bench` accepts. A bulk frame is one wire body, so at most the wire's
    /// largest (WireLimits.defaultMaximumBodySize, 28 MiB): above it the verifier refuses the frame
    /// unread and the "throughput" measured nothing; 4 GiB did not fit the frame header (a trap).
    public static let roundTripRange = 1...10_000_000
    public static let bulkMiBRange = 1...(WireLimits.defaultMaximumBodySize >> 20)
    public static let bulkFramesRange = 1...65_536

    /// The sizes checked against those ranges (a refusal names the option and its range).
    public static func checkSizes(roundTrips: Int, bulkMiB: Int, bulkFrames: Int) throws(BenchmarkSizeError) {
        for (option, value, range) in [("--round-trips", roundTrips, roundTripRange), ("--bulk-mib", bulkMiB, bulkMiBRange),
                                       ("--bulk-frames", bulkFrames, bulkFramesRange)] where !range.contains(value) {
            throw BenchmarkSizeError(description: "\(option) must be \(range.lowerBound)…\(range.upperBound), got \(value)")
        }
    }

    /// `execgate vsock-bench`: the sizes checked first (`checkSizes`), nothing sent when one is out of range.
    public static func run(endpoint: Endpoint, roundTrips: Int, bulkMiB: Int, bulkFrames: Int) async throws -> Result {
        try checkSizes(roundTrips: roundTrips, bulkMiB: bulkMiB, bulkFrames: bulkFrames)
        return try await run(endpoint: endpoint, roundTrips: roundTrips, bulkBytes: bulkMiB << 20, bulkFrames: bulkFrames)
    }

    public static func run(endpoint: Endpoint, roundTrips: Int, bulkBytes: Int, bulkFrames: Int) async throws -> Result {
        precondition(roundTrips >= 1 && (1...WireLimits.defaultMaximumBodySize).contains(bulkBytes) && bulkFrames >= 1 && bulkFrames <= bulkFramesRange.upperBound,
                     "RoundTripBenchmark sizes out of range (checkSizes)")
        let client = try await ExecGateClient.connect(to: endpoint, timeout: 120)
        defer { Task { await client.close() } }
        _ = try await client.status()  // Warm up.
        var samples: [Double] = []
        for _ in 0..<roundTrips {
            let t = MonotonicClock.nanoseconds()
            _ = try await client.status()
            samples.append(MonotonicClock.microseconds(since: t))
        }
        let rt = Percentiles.summary(samples)
        // Bulk: frames of an unknown type; the server reads the whole body, then answers an error.
        let body = ByteBuffer(repeating: 0x5a, count: bulkBytes)
        let t0 = MonotonicClock.nanoseconds()
        for _ in 0..<bulkFrames {
            _ = try await client.sendFrame(Frame(type: MessageType(rawValue: 0x0077), requestID: client.allocateID(), body: body))
        }
        let secs = Double(MonotonicClock.nanoseconds() - t0) / 1e9
        await client.close()
        return Result(p50us: rt.p50, p99us: rt.p99, meanus: rt.mean,
                      mbPerSecond: Double(bulkBytes * bulkFrames) / 1e6 / secs, bulkBytes: bulkBytes * bulkFrames)
    }
}

// MARK: - Both cores, and the round trip against a C echo

extension SignatureBenchmark {
    /// Signature verification of `blobs` in process on a pool of `threads` workers (worker w takes
    /// modules w, w + threads, …): wall seconds and how many verified.
    public static func poolSeconds(blobs: [[UInt8]], trust: TrustStore, threads: Int) -> (seconds: Double, ok: Int) {
        let ok = NIOLockedValueBox(0)
        let t0 = MonotonicClock.seconds()
        DispatchQueue.concurrentPerform(iterations: max(1, threads)) { w in
            var n = 0
            var i = w
            while i < blobs.count {
                if blobs[i].withUnsafeBytes({ ModuleSignatureVerifier.verify(module: $0, trust: trust) }).isValid { n += 1 }
                i += max(1, threads)
            }
            ok.withLockedValue { $0 += n }
        }
        return (MonotonicClock.seconds() - t0, ok.withLockedValue { $0 })
    }

    /// Every module through the service: an in-process `VerifierServer` (its pool sized to the
    /// machine) on a Unix socket, `clients` connections each keeping up to `depth` authorize-module
    /// requests in flight. The policy judges on the signature alone (`end-state signature-only`),
    /// so an allow is a verified signature. Wall seconds, allows, and the process's CPU seconds
    /// (service and clients) over the same window: from the first request sent to the last verdict
    /// read — setting up (the server, the connections, the clients' copies of the modules) is
    /// outside it, as it is outside the wall time.
    public static func serviceSeconds(blobs: [[UInt8]], trust: TrustStore, clients: Int, depth: Int) async throws -> (seconds: Double, allowed: Int, cpu: Double) {
        let server = VerifierServer(responder: Verifier(policy: Policy(id: "bench", version: 1, trust: trust, endState: .signatureOnly)),
                                    logger: quietLogger())
        let endpoint = try temporaryEndpoint("service.sock")
        defer { removeTemporaryEndpoint(endpoint) }
        try await server.bind(endpoint)
        do {
            // EXECGATE_BENCH_CLIENT=nio: the earlier clients (ExecGateClient), to compare in one build.
            let r = getenv("EXECGATE_BENCH_CLIENT").map({ String(cString: $0) }) == "nio"
                ? try await pipelinedNIO(blobs: blobs, endpoint: endpoint, clients: clients, depth: depth)
                : try await pipelined(blobs: blobs, endpoint: endpoint, clients: clients, depth: depth)
            await server.shutdown()
            return r
        } catch {
            await server.shutdown()
            throw error
        }
    }

    /// `clients` blocking clients on threads of their own, each over its own connection with up to
    /// `depth` requests in flight (`BlockingFrameClient.pipelined`): the clients share the
    /// machine's cores with the service, so they are kept as cheap as a VMM's would be — no event
    /// loop or task per request on the client side. Every request still carries its module's real
    /// bytes (gathered from the module's buffer by `writev`) and every verdict is read and decoded.
    static func pipelined(blobs: [[UInt8]], endpoint: Endpoint, clients: Int, depth: Int) async throws -> (seconds: Double, allowed: Int, cpu: Double) {
        guard case .unix(let path) = endpoint else { throw LocalFileError(path: "\(endpoint)", why: "not a Unix socket") }
        let buffers = blobs.map { ByteBuffer(bytes: $0) }
        let n = max(1, clients)
        let fds = try (0..<n).map { _ in try BlockingFrameClient.connectUnix(path: path) }
        defer { for fd in fds { close(fd) } }
        let threads = NIOThreadPool(numberOfThreads: n)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let shares = (0..<n).map { c in stride(from: c, to: buffers.count, by: n).map { buffers[$0] } }
        let (c0, t0) = (ProcessUsage.cpuSeconds(), MonotonicClock.seconds())
        let allowed = try await withThrowingTaskGroup(of: Int.self) { g in
            for (fd, mine) in zip(fds, shares) {
                g.addTask { try await threads.runIfActive { try BlockingFrameClient.pipelined(fd: fd, modules: mine, depth: depth) } }
            }
            return try await g.reduce(0, +)
        }
        return (MonotonicClock.seconds() - t0, allowed, ProcessUsage.cpuSeconds() - c0)
    }

    /// The previous bench client (ExecGateClient: a NIO event loop per connection, a task per request).
    static func pipelinedNIO(blobs: [[UInt8]], endpoint: Endpoint, clients: Int, depth: Int) async throws -> (seconds: Double, allowed: Int, cpu: Double) {
        let buffers = blobs.map { ByteBuffer(bytes: $0) }
        let connections = try await (0..<max(1, clients)).asyncMap { _ in try await ExecGateClient.connect(to: endpoint, timeout: 120) }
        let (c0, t0) = (ProcessUsage.cpuSeconds(), MonotonicClock.seconds())
        let allowed = try await withThrowingTaskGroup(of: Int.self) { g in
            for (c, client) in connections.enumerated() {
                g.addTask {
                    try await withThrowingTaskGroup(of: Bool.self) { inner in
                        var n = 0, inFlight = 0
                        for i in stride(from: c, to: buffers.count, by: connections.count) {
                            if inFlight >= depth, let r = try await inner.next() { inFlight -= 1; if r { n += 1 } }
                            inner.addTask { try await ScaleBenchmark.authorize(AuthorizeModule(module: buffers[i]), client: client).verdict?.decision == .allow }
                            inFlight += 1
                        }
                        for try await r in inner where r { n += 1 }
                        return n
                    }
                }
            }
            return try await g.reduce(0, +)
        }
        let (seconds, cpu) = (MonotonicClock.seconds() - t0, ProcessUsage.cpuSeconds() - c0)
        for c in connections { await c.close() }
        return (seconds, allowed, cpu)
    }

    /// Status round trips to an in-process service over a Unix socket from a blocking client
    /// (plain read/write, like the echo baseline), and the same number of 64-byte round trips to
    /// the minimal C echo (CExecGateSys Bench.c) in the same run: (service, echo) summaries, µs.
    /// The two alternate in ten blocks, so load that comes and goes on a shared host falls on both
    /// alike (one after the other, a busy minute made either side look 2-3x slower).
    /// With `placement`, both ends are pinned for the measurement and unpinned after it.
    public static func statusVersusEcho(trust: TrustStore, count: Int, placement: RoundTripPlacement? = nil) async throws
        -> (service: (p50: Double, p99: Double, mean: Double), echo: (p50: Double, p99: Double, mean: Double)) {
        let server = VerifierServer(responder: Verifier(policy: Policy.builtIn(trust: trust)), logger: quietLogger())
        let endpoint = try temporaryEndpoint("status.sock")
        defer { removeTemporaryEndpoint(endpoint) }
        try await server.bind(endpoint)
        guard case .unix(let path) = endpoint else { throw LocalFileError(path: "\(endpoint)", why: "not a Unix socket") }
        let blocks = 10, perBlock = max(1, (max(1, count) + 9) / 10)
        var service: [Double] = [], echo: [Double] = []
        service.reserveCapacity(blocks * perBlock)
        echo.reserveCapacity(blocks * perBlock)
        let echoPath = path + ".echo"
        do {
            // Pinned and unpinned in this synchronous stretch, so on the thread that runs it.
            let pinned = placement.map { p -> [Int32] in
                _ = execgate_pin_thread(0, p.client)
                let loops = eventLoopThreadIDs()
                for tid in loops { _ = execgate_pin_thread(tid, p.server) }
                return loops
            }
            defer {
                if let pinned {
                    _ = execgate_pin_thread(0, -1)
                    for tid in pinned { _ = execgate_pin_thread(tid, -1) }
                }
            }
            let client = try BlockingFrameClient(path: path)
            defer { client.disconnect() }
            var warmUp: [Double] = []
            try client.statusRoundTrips(count: 100, into: &warmUp)  // unrecorded, as the echo's first 100
            var samples = [Double](repeating: 0, count: perBlock)
            for _ in 0..<blocks {
                try client.statusRoundTrips(count: perBlock, into: &service)
                guard execgate_unix_echo_rtt(echoPath, Int32(perBlock), 64, &samples, placement?.server ?? -1) == 0 else {
                    throw LocalFileError(path: echoPath, why: "echo baseline failed: errno \(errno)")
                }
                echo.append(contentsOf: samples)
            }
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
        return (Percentiles.summary(service), Percentiles.summary(echo))
    }

    /// The kernel thread ids of the process's NIO event-loop threads (NIO names them `NIO-ELT-…`).
    static func eventLoopThreadIDs() -> [Int32] {
        (Files.entries("/proc/self/task") ?? []).compactMap { t in
            guard let tid = Int32(t), let comm = try? Files.read("/proc/self/task/\(t)/comm", limit: 64),
                  comm.starts(with: Array("NIO-ELT".utf8)) else { return nil }
            return tid
        }
    }

    /// The in-process service's logger: silent unless EXECGATE_BENCH_LOG names a level.
    static func quietLogger() -> Logger {
        var logger = Logger(label: "bench")
        logger.logLevel = getenv("EXECGATE_BENCH_LOG").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .critical
        return logger
    }

    /// A fresh Unix-socket endpoint in a new private directory under /tmp.
    static func temporaryEndpoint(_ name: String) throws -> Endpoint {
        var template = Array("/tmp/execgate-bench-XXXXXX".utf8CString)
        guard let dir = mkdtemp(&template) else { throw LocalFileError(path: "/tmp", why: "mkdtemp failed") }
        return .unix(path: String(cString: dir) + "/" + name)
    }

    /// Removes what `temporaryEndpoint` made: its socket (the server unlinks it at shutdown; a
    /// run that failed may leave it) and the private directory, so runs leave nothing in /tmp.
    static func removeTemporaryEndpoint(_ endpoint: Endpoint) {
        guard case .unix(let path) = endpoint else { return }
        unlink(path)
        rmdir(Files.directory(of: path))
    }
}

/// A blocking client over a Unix stream socket: one frame out, one frame in, nothing else in the
/// way (the service's side of the round trip, compared with the C echo). A reply is read with one
/// `read` of up to 64 KiB (`readMore`), as the echo reads its 64 bytes; it reads on only if the
/// frame is not complete yet.
final class BlockingFrameClient {
    private let fd: Int32
    private let path: String
    private let request: [UInt8]
    private var input = ByteBuffer()

    init(path: String) throws {
        self.path = path
        fd = try Self.connectUnix(path: path)
        var frame = ByteBuffer()
        frame.writeFrame(Message.status.frame(requestID: 1))
        request = Array(frame.readableBytesView)
    }

    func disconnect() { close(fd) }

    /// `count` status round trips; each one's duration (µs) is appended to `samples`.
    func statusRoundTrips(count: Int, into samples: inout [Double]) throws {
        for _ in 0..<count {
            let t = MonotonicClock.nanoseconds()
            try roundTrip()
            samples.append(MonotonicClock.microseconds(since: t))
        }
    }

    private func roundTrip() throws {
        guard request.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == request.count else {
            throw LocalFileError(path: path, why: "write failed")
        }
        while try Self.takeFrame(&input) == nil { try Self.readMore(fd, &input) }
        guard input.readableBytes == 0 else { throw LocalFileError(path: path, why: "more bytes than one reply") }
    }

    /// A connected Unix stream socket (blocking).
    static func connectUnix(path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalFileError(path: path, why: "socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(fd); throw LocalFileError(path: path, why: "path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { close(fd); throw LocalFileError(path: path, why: "connect: errno \(errno)") }
        return fd
    }

    /// Every module in `modules` as an authorize-module request over `fd`, up to `depth` in flight;
    /// each request's header, TLV prefix and module go out in one `writev` from their own buffers
    /// (the module is not copied). Replies are read in batches (one `read` may hold several) and
    /// decoded; a `unavailable` reply (the port's budget was full) sends that module again after a
    /// short pause, as a VMM would. Returns how many verdicts allowed.
    static func pipelined(fd: Int32, modules: [ByteBuffer], depth: Int) throws -> Int {
        var next = 0, done = 0, allowed = 0, nextID: UInt64 = 1
        var inFlight: [UInt64: Int] = [:]
        var retry: [Int] = []
        var input = ByteBuffer()
        input.reserveCapacity(64 << 10)
        func send(_ index: Int) throws {
            let id = nextID
            nextID &+= 1
            let parts = Message.authorizeModule(AuthorizeModule(module: modules[index])).encodeBodyParts()
            let header = FrameWriter.header(type: .authorizeModule, requestID: id, bodyLength: parts.reduce(0) { $0 + $1.readableBytes },
                                            allocator: ByteBufferAllocator())
            try writeAll(fd, [header] + parts)
            inFlight[id] = index
        }
        while done < modules.count {
            while inFlight.count < max(1, depth), let index = retry.popLast() ?? (next < modules.count ? next : nil) {
                if index == next { next += 1 }
                try send(index)
            }
            // At least one reply is owed: read until a whole frame is buffered, then take all whole frames.
            var progressed = false
            while !progressed {
                while let frame = try takeFrame(&input) {
                    progressed = true
                    guard let index = inFlight.removeValue(forKey: frame.requestID) else {
                        throw LocalFileError(path: "socket", why: "reply to unknown request \(frame.requestID)")
                    }
                    switch try Message(type: frame.type, body: frame.body) {
                    case .verdict(let v):
                        done += 1
                        if v.decision == .allow { allowed += 1 }
                    case .error(let e) where e.code == .unavailable:
                        retry.append(index)
                        usleep(1000)
                    case let other:
                        throw LocalFileError(path: "socket", why: "unexpected reply \(other.type)")
                    }
                }
                if progressed { break }
                try readMore(fd, &input)
            }
        }
        return allowed
    }

    /// One `read` of whatever `fd` has (up to 64 KiB) appended to `input`; retried on EINTR.
    static func readMore(_ fd: Int32, _ input: inout ByteBuffer) throws {
        input.discardReadBytes()
        input.reserveCapacity(minimumWritableBytes: 64 << 10)
        while true {
            let r = input.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { read(fd, $0.baseAddress, $0.count) }
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw LocalFileError(path: "socket", why: "read: \(r < 0 ? "errno \(errno)" : "end of stream")") }
            return
        }
    }

    /// One whole frame off the front of `input`, or nil (nothing consumed) when it is not all there.
    static func takeFrame(_ input: inout ByteBuffer) throws -> Frame? {
        guard input.readableBytes >= WireLimits.headerSize,
              let length = input.getInteger(at: input.readerIndex + 16, as: UInt32.self) else { return nil }
        guard Int(length) <= 1 << 20 else { throw LocalFileError(path: "socket", why: "reply of \(length) bytes") }
        guard input.readableBytes >= WireLimits.headerSize + Int(length) else { return nil }
        var decoder = FrameDecoder()
        guard case .frame(let frame)? = try decoder.decodeOne(&input) else { throw LocalFileError(path: "socket", why: "bad reply frame") }
        return frame
    }

    /// `writev` of every readable byte of `parts`, resumed after short writes.
    static func writeAll(_ fd: Int32, _ parts: [ByteBuffer]) throws {
        var parts = parts.filter { $0.readableBytes > 0 }
        while !parts.isEmpty {
            let written = withIOVecs(parts[...]) { iov in
                iov.withUnsafeBufferPointer { writev(fd, $0.baseAddress, Int32($0.count)) }
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw LocalFileError(path: "socket", why: "writev: errno \(errno)")
            }
            var left = written
            while left > 0, !parts.isEmpty {
                let k = min(left, parts[0].readableBytes)
                parts[0].moveReaderIndex(forwardBy: k)
                left -= k
                if parts[0].readableBytes == 0 { parts.removeFirst() }
            }
        }
    }

    /// The readable bytes of `parts` as iovecs, valid inside `body` only.
    static func withIOVecs<R>(_ parts: ArraySlice<ByteBuffer>, _ acc: [iovec] = [], _ body: ([iovec]) throws -> R) rethrows -> R {
        guard let first = parts.first else { return try body(acc) }
        return try first.withUnsafeReadableBytes { raw in
            try withIOVecs(parts.dropFirst(), acc + [iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)], body)
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ f: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await f(e)) }
        return out
    }
}

// MARK: - Scale: many guests of one kernel, then a boot storm

/// G guests of one kernel build registered with the service, then a boot storm: every guest
/// authorizes the capture's modules, in load order, with their end state, all guests at once, each
/// over its own connection to an in-process service on a Unix socket (`execgate bench --scale`).
/// Memory is read from the process (RSS) and from the allocator (bytes in use), so the figures
/// for G guests can be set against one guest's.
public enum ScaleBenchmark {
    public struct Row: Sendable {
        public var guests = 0
        /// Allocator bytes in use, above the figure before the first registration.
        public var heapAfterRegister = 0, heapAfterFirstGuest = 0, heapAfterSecondGuest = 0, heapAfterStorm = 0
        /// Bytes the registry charges (GuestRegistry.chargedBytes) after the first guest and after all.
        public var chargedAfterFirstGuest = 0, chargedAfterRegister = 0
        /// Of the registry's budget after the storm: the guests' live modules (GuestRegistry.liveModuleBytes).
        public var liveChargedAfterStorm = 0
        /// The registry's budget for the row (facts and live modules).
        public var budgetBytes = 0
        public var rssBefore = 0, rssAfterRegister = 0, rssAfterStorm = 0
        /// Registration end to end (client encode, socket, service decode and digest, verifier,
        /// reply), ms: the first of the build (builds and checks its facts); a known build sent in
        /// full (every symbol record, decoded and hashed again: `knownFullSamples` resets of one
        /// guest); a known build by its symbols digest (every later guest, plus as many resets).
        public var registerFirstMs = 0.0
        public var registerKnownFullP50Ms = 0.0, registerKnownFullP99Ms = 0.0
        public var registerByDigestP50Ms = 0.0, registerByDigestP99Ms = 0.0
        /// Frame bytes on the wire (header and body) of one full registration and one by digest.
        public var registerFullBytes = 0, registerByDigestBytes = 0
        /// Registrations by digest the server refused `unknown-build` (then sent in full): 0 here.
        public var byDigestFallbacks = 0
        public var sharedCopies = 0
        /// Distinct KASLR slides among the registered guests.
        public var slides = 0
        public var requests = 0, allowed = 0, denied = 0, retries = 0
        /// Most retries one request took, and its latency; the slowest request.
        public var mostRetries = 0, mostRetriesUs = 0.0, mostRetriesBytes = 0, maxUs = 0.0
        /// The port's queue of large bodies refused busy (BufferBudget, "Turns"): turns that
        /// ended with their body complete, and turns that ran out or were skipped.
        public var turnsServed: UInt64 = 0, turnsLapsed: UInt64 = 0
        public var seconds = 0.0, p50us = 0.0, p99us = 0.0
        public var requestsPerSecond: Double { seconds > 0 ? Double(requests) / seconds : 0 }
        /// Allocator bytes each guest after the first adds at registration.
        /// Counted from the second guest on: the first registration's transient buffers (its
        /// 1.6 MB body, the decode) are freed while the next ones run, which would hide the rest.
        public var heapPerKnownGuest: Double { guests > 2 ? Double(heapAfterRegister - heapAfterSecondGuest) / Double(guests - 2) : 0 }
        /// What the registry charges each guest after the first (its own facts; the build once).
        public var chargedPerKnownGuest: Double { guests > 1 ? Double(chargedAfterRegister - chargedAfterFirstGuest) / Double(guests - 1) : 0 }
    }

    /// `capture`: one capture directory, or several of the same kernel build, comma-separated
    /// (e.g. the shared corpus's KASLR and nokaslr boots): guest `i` is a guest of capture
    /// `i % n`, registered at that boot's KASLR slide and authorizing that boot's modules, so
    /// guests at distinct slides share (or fail to share) one copy of the build's facts.
    public static func run(capture: String, vmlinuz: String, guestCounts: [Int], progress: (String) -> Void) async throws -> [Row] {
        let trust = TrustStore(try KernelImage.load(try LocalFile.read(vmlinuz)).builtinCertificates())
        var boots: [(template: RegisterGuest, requests: [AuthorizeModule])] = []
        for dir in capture.split(separator: ",").map(String.init) {
            let boot = try CaptureBoot.load(dir)
            let template = try boot.registration(guestID: "g")
            let names = boot.availableModules
            let requests = try names.map { try boot.module($0).request(guestID: "g") }
            progress("capture \(dir): \(template.symbols.count) symbols, \(names.count) modules, slide 0x\(String(template.kaslrSlide, radix: 16))")
            boots.append((template, requests))
        }
        var rows: [Row] = []
        for g in guestCounts { rows.append(try await one(guests: g, boots: boots, trust: trust, progress: progress)) }
        return rows
    }

    /// Full registrations of a known build (and as many by digest) timed per row.
    static let knownFullSamples = 20

    static func one(guests: Int, boots: [(template: RegisterGuest, requests: [AuthorizeModule])], trust: TrustStore,
                    progress: (String) -> Void) async throws -> Row {
        var row = Row()
        row.guests = guests
        // The registry's budget holds the guests' live modules too (≈ 5 MiB a guest of the
        // reference corpus's 103): sized for G of them, so the storm measures judging, not
        // refusals (`execgate serve`'s fixed default, 192 MiB, holds ~35 such guests).
        row.budgetBytes = max(GuestRegistry.defaultMaximumSymbolBytes, (32 << 20) + guests * (8 << 20))
        let verifier = Verifier(policy: Policy(id: "scale", version: 1, trust: trust, endState: .required),
                                guests: GuestRegistry(maximumSymbolBytes: row.budgetBytes))
        let server = VerifierServer(responder: verifier, logger: SignatureBenchmark.quietLogger())
        let endpoint = try SignatureBenchmark.temporaryEndpoint("scale.sock")
        defer { SignatureBenchmark.removeTemporaryEndpoint(endpoint) }
        try await server.bind(endpoint)
        row.rssBefore = ProcessUsage.residentBytes()
        let heap0 = Memory.heapInUse()
        // Registration over the wire, as a VMM does it: the first guest in full (the build is
        // new), every later guest by the build's digest from that reply (RegisterGuest.byDigest).
        let registrar = try await ExecGateClient.connect(to: endpoint, timeout: 300)
        var slides = Set<UInt64>()
        // The symbols digest from the last reply: every boot of one build has the same (slide
        // removed), so a guest of another boot attaches by it at its own slide; a boot of another
        // build is refused `unknown-build` and sent in full (counted as a fallback).
        var knownBuild: [UInt8]? = nil
        var byDigest: [Double] = []
        for i in 0..<guests {
            var r = boots[i % boots.count].template
            r.guestID = "guest-\(i)"
            slides.insert(r.kaslrSlide)
            let t0 = MonotonicClock.nanoseconds()
            let (reply, attached) = try await registrar.register(r, knownBuild: knownBuild)
            let ms = Double(MonotonicClock.nanoseconds() - t0) / 1e6
            if attached { byDigest.append(ms) } else if knownBuild != nil { row.byDigestFallbacks += 1 }
            knownBuild = reply.symbolsDigest
            if i == 1 { row.heapAfterSecondGuest = Memory.heapInUse() - heap0 }
            if i == 0 {
                row.registerFirstMs = ms
                row.heapAfterFirstGuest = Memory.heapInUse() - heap0
                row.chargedAfterFirstGuest = verifier.guests.chargedBytes
                row.registerFullBytes = WireLimits.headerSize + Message.registerGuest(r).encodeBody().readableBytes
                row.registerByDigestBytes = WireLimits.headerSize + Message.registerGuest(r.byDigest(reply.symbolsDigest)).encodeBody().readableBytes
            }
        }
        row.heapAfterRegister = Memory.heapInUse() - heap0
        row.chargedAfterRegister = verifier.guests.chargedBytes
        row.rssAfterRegister = ProcessUsage.residentBytes()
        // A known build sent in full against by digest, alternating, as resets of guest 0 (no
        // module is live yet, so a reset drops nothing).
        var knownFull: [Double] = []
        var reset = boots[0].template
        reset.guestID = "guest-0"
        reset.reset = true
        for _ in 0..<Self.knownFullSamples {
            var t0 = MonotonicClock.nanoseconds()
            _ = try await registrar.register(reset)
            knownFull.append(Double(MonotonicClock.nanoseconds() - t0) / 1e6)
            t0 = MonotonicClock.nanoseconds()
            let (_, attached) = try await registrar.register(reset, knownBuild: knownBuild)
            if attached { byDigest.append(Double(MonotonicClock.nanoseconds() - t0) / 1e6) } else { row.byDigestFallbacks += 1 }
        }
        await registrar.close()
        (row.registerKnownFullP50Ms, row.registerKnownFullP99Ms) = (Percentiles.of(knownFull, 50), Percentiles.of(knownFull, 99))
        (row.registerByDigestP50Ms, row.registerByDigestP99Ms) = (Percentiles.of(byDigest, 50), Percentiles.of(byDigest, 99))
        row.sharedCopies = verifier.guests.sharedBuilds.count
        row.slides = slides.count
        let total = (0..<guests).reduce(0) { $0 + boots[$1 % boots.count].requests.count }
        progress("\(guests) guest(s) registered at \(slides.count) slide(s); boot storm: \(total) authorize-module")
        // The storm: each guest over its own connection, its modules in load order.
        let t0 = MonotonicClock.seconds()
        let turnsBefore = server.budget.turns
        let results = try await withThrowingTaskGroup(of: (latencies: [Double], allowed: Int, denied: Int, retries: Int, most: (retries: Int, us: Double, bytes: Int)).self) { group in
            for i in 0..<guests {
                group.addTask {
                    let client = try await ExecGateClient.connect(to: endpoint, timeout: 300)
                    var lat: [Double] = []
                    var allowed = 0, denied = 0, retries = 0, most = (retries: 0, us: 0.0, bytes: 0)
                    for var r in boots[i % boots.count].requests {
                        r.guestID = "guest-\(i)"
                        let t = MonotonicClock.nanoseconds()
                        let (verdict, tries) = try await authorize(r, client: client)
                        lat.append(MonotonicClock.microseconds(since: t))
                        retries += tries
                        if tries > most.retries { most = (tries, lat[lat.count - 1], Message.authorizeModule(r).encodeBody().readableBytes) }
                        if verdict?.decision == .allow { allowed += 1 } else { denied += 1 }
                    }
                    await client.close()
                    return (lat, allowed, denied, retries, most)
                }
            }
            var all: [(latencies: [Double], allowed: Int, denied: Int, retries: Int, most: (retries: Int, us: Double, bytes: Int))] = []
            for try await r in group { all.append(r) }
            return all
        }
        row.seconds = MonotonicClock.seconds() - t0
        let latencies = results.flatMap(\.latencies)
        row.requests = latencies.count
        row.allowed = results.reduce(0) { $0 + $1.allowed }
        row.denied = results.reduce(0) { $0 + $1.denied }
        row.retries = results.reduce(0) { $0 + $1.retries }
        if let m = results.map(\.most).max(by: { $0.retries < $1.retries }) { (row.mostRetries, row.mostRetriesUs, row.mostRetriesBytes) = m }
        row.maxUs = latencies.max() ?? 0
        let turns = server.budget.turns
        (row.turnsServed, row.turnsLapsed) = (turns.served - turnsBefore.served, turns.lapsed - turnsBefore.lapsed)
        let s = Percentiles.summary(latencies)
        (row.p50us, row.p99us) = (s.p50, s.p99)
        row.rssAfterStorm = ProcessUsage.residentBytes()
        row.heapAfterStorm = Memory.heapInUse() - heap0
        row.liveChargedAfterStorm = verifier.guests.liveModuleBytes
        await server.shutdown()
        return row
    }
}

extension ScaleBenchmark {
    /// One authorize-module as a VMM sends it: when the port's buffer budget is full
    /// (`unavailable`) it retries, backing off (2 ms doubling to 128 ms, jittered) so a storm does
    /// not resend bodies faster than they are judged. The verdict (nil: another error) and the retries.
    static func authorize(_ r: AuthorizeModule, client: ExecGateClient) async throws -> (verdict: Verdict?, retries: Int) {
        var backoff: UInt64 = 2_000_000
        var retries = 0
        while true {
            // `send` writes the module from `r`'s buffer (a gathered write), as a VMM should.
            let reply = try await client.send(.authorizeModule(r))
            if case .error(let e) = reply, e.code == .unavailable {
                retries += 1
                try await Task.sleep(nanoseconds: UInt64.random(in: backoff / 2...backoff))
                backoff = min(backoff * 2, 128_000_000)
                continue
            }
            if case .verdict(let v) = reply { return (v, retries) }
            return (nil, retries)
        }
    }
}

/// The allocator's view of memory (the process's own figures are `ProcessUsage`, in the toolkit).
public enum Memory {
    /// Bytes the allocator has handed out and not had back, over every arena (glibc malloc_info; 0 where unknown).
    public static func heapInUse() -> Int { max(0, Int(execgate_heap_in_use())) }
}
