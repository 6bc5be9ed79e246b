// SPDX-License-Identifier: Apache-2.0
//
// Figures, not tests: what this machine measures (`execgate bench`, `execgate vsock-bench`). Nothing
// here fails on a slow machine. Clocks and percentiles are the toolkit's (_ExecGateInternals).

import _ExecGateInternals
import ExecGateClient
import ExecGateKernelImage
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Signature verification of every module of a kernel package, by ExecGate and by OpenSSL alone
/// (CMS_verify) in the same run, and status round trips over a Unix socket.
public enum SignatureBenchmark {
    public struct Figures: Sendable {
        public var modules: Int, bytes: Int, verifiedOK: Int, baselineOK: Int
        public var execgateSeconds: Double, opensslSeconds: Double
        public var roundTripP50us: Double, roundTripP99us: Double, roundTripMeanus: Double
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
        walk(lib + "/" + release + "/kernel") { if $0.hasSuffix(".ko") { found.append($0) } }
        found.sort()
        return (kernelPackage + "/boot/" + v, limit > 0 ? Array(found.prefix(limit)) : found)
    }

    public static func run(vmlinuz: String, modules: [String], roundTrips: Int, progress: (String) -> Void) async throws -> Figures {
        let certs = try KernelImage.load(try LocalFile.read(vmlinuz)).builtinCertificates()
        let trust = TrustStore(certs)
        progress("loading \(modules.count) modules")
        let blobs = try modules.map { try LocalFile.read($0) }
        // Warm up both paths once.
        _ = blobs.first.map { b in b.withUnsafeBytes { ModuleSignatureVerifier.verify(module: $0, trust: trust) } }
        progress("verifying with ExecGate")
        var ok = 0
        let t0 = MonotonicClock.seconds()
        for b in blobs where b.withUnsafeBytes({ ModuleSignatureVerifier.verify(module: $0, trust: trust) }).isValid { ok += 1 }
        let ours = MonotonicClock.seconds() - t0
        progress("verifying with OpenSSL alone")
        var baseOK = 0
        let t1 = MonotonicClock.seconds()
        for b in blobs where b.withUnsafeBytes({ OpenSSLBaseline.verify(module: $0, certificate: certs[0]) }) { baseOK += 1 }
        let base = MonotonicClock.seconds() - t1
        progress("\(roundTrips) round trips over a Unix socket")
        let rt = try await unixRoundTrips(trust: trust, count: roundTrips)
        return Figures(modules: blobs.count, bytes: blobs.reduce(0) { $0 + $1.count }, verifiedOK: ok, baselineOK: baseOK,
                       execgateSeconds: ours, opensslSeconds: base, roundTripP50us: rt.p50, roundTripP99us: rt.p99, roundTripMeanus: rt.mean)
    }

    /// Sequential status round trips to an in-process verifier over a Unix socket (µs).
    static func unixRoundTrips(trust: TrustStore, count: Int) async throws -> (p50: Double, p99: Double, mean: Double) {
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let server = VerifierServer(responder: Verifier(policy: Policy.builtIn(trust: trust)), logger: logger, threads: 1)
        var template = Array("/tmp/execgate-bench-XXXXXX".utf8CString)
        guard let dir = mkdtemp(&template) else { throw LocalFileError(path: "/tmp", why: "mkdtemp failed") }
        let endpoint = Endpoint.unix(path: String(cString: dir) + "/bench.sock")
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

    static func walk(_ path: String, _ visit: (String) -> Void) {
        guard let names = try? LocalFile.list(path) else { return }
        for n in names {
            let p = path + "/" + n
            if LocalFile.isDirectory(p) { walk(p, visit) } else { visit(p) }
        }
    }
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

    public static func run(endpoint: Endpoint, roundTrips: Int, bulkBytes: Int, bulkFrames: Int) async throws -> Result {
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
