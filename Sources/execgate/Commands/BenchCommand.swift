// SPDX-License-Identifier: Apache-2.0
//
// Figures, not tests: prints what this machine measured. Nothing here fails on a slow machine.

import _ExecGateInternals
import ArgumentParser
import ExecGateClient
import ExecGateHost
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
#endif

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure signature verification and request round trips on this machine.",
        discussion: """
        --kernel DIR is an unpacked linux-image .deb (make test-data puts one in .cache/kernel/current). \
        Verifies every module of the package with ExecGate's verifier and, in the same run, with \
        OpenSSL alone (CMS_verify), and times small requests over a Unix socket.
        """
    )

    @Option(help: "Unpacked Debian kernel package (boot/vmlinuz-*, lib/modules/*).") var kernel: String
    @Option(help: "Round trips to time over the Unix socket.") var roundTrips: Int = 2000
    @Option(help: "Only the first N modules (0 = all).") var limit: Int = 0
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let vmlinuz: String
        let modules: [String]
        do {
            guard let v = try LocalFile.list(kernel + "/boot").first(where: { $0.hasPrefix("vmlinuz-") }) else {
                throw LocalFileError(path: kernel + "/boot", why: "no vmlinuz-*")
            }
            vmlinuz = kernel + "/boot/" + v
            let lib = kernel + "/lib/modules"
            guard let release = try LocalFile.list(lib).first else { throw LocalFileError(path: lib, why: "empty") }
            var found: [String] = []
            Self.walk(lib + "/" + release + "/kernel") { if $0.hasSuffix(".ko") { found.append($0) } }
            modules = limit > 0 ? Array(found.sorted().prefix(limit)) : found.sorted()
        } catch {
            Console.error("execgate bench: \(error)")
            throw ExecGateExit.usage
        }
        let certs = try KernelImage.load(try LocalFile.read(vmlinuz)).builtinCertificates()
        let trust = TrustStore(certs)
        Console.error("bench: loading \(modules.count) modules")
        let blobs = try modules.map { try LocalFile.read($0) }
        let totalBytes = blobs.reduce(0) { $0 + $1.count }

        // Warm up both paths once.
        _ = blobs.first.map { b in b.withUnsafeBytes { ModuleSignatureVerifier.verify(module: $0, trust: trust) } }
        Console.error("bench: verifying with ExecGate")
        var ok = 0
        let t0 = Self.now()
        for b in blobs { if b.withUnsafeBytes({ ModuleSignatureVerifier.verify(module: $0, trust: trust) }).isValid { ok += 1 } }
        let ours = Self.now() - t0
        Console.error("bench: verifying with OpenSSL alone")
        var baseOK = 0
        let t1 = Self.now()
        for b in blobs { if b.withUnsafeBytes({ OpenSSLBaseline.verify(module: $0, certificate: certs[0]) }) { baseOK += 1 } }
        let base = Self.now() - t1

        Console.error("bench: \(roundTrips) round trips over a Unix socket")
        let (p50, p99, mean) = try await roundTrip(trust: trust)

        let mb = Double(totalBytes) / 1e6
        if json {
            print(JSON.object([
                ("modules", .int(Int64(blobs.count))), ("bytes", .int(Int64(totalBytes))),
                ("verified_ok", .int(Int64(ok))), ("baseline_ok", .int(Int64(baseOK))),
                ("execgate_seconds", .double(ours)), ("openssl_seconds", .double(base)),
                ("execgate_modules_per_s", .double(Double(blobs.count) / ours)), ("execgate_mb_per_s", .double(mb / ours)),
                ("openssl_modules_per_s", .double(Double(blobs.count) / base)), ("openssl_mb_per_s", .double(mb / base)),
                ("ratio", .double(ours / base)),
                ("unix_roundtrip_p50_us", .double(p50)), ("unix_roundtrip_p99_us", .double(p99)), ("unix_roundtrip_mean_us", .double(mean)),
            ]).serialized())
        } else {
            print("signature verification: \(blobs.count) modules, \(String(format2: mb)) MB")
            print("  execgate      \(ok) ok   \(String(format2: ours)) s   \(String(format2: Double(blobs.count) / ours)) modules/s   \(String(format2: mb / ours)) MB/s")
            print("  openssl alone \(baseOK) ok   \(String(format2: base)) s   \(String(format2: Double(blobs.count) / base)) modules/s   \(String(format2: mb / base)) MB/s")
            print("  ratio execgate/openssl: \(String(format2: ours / base))x (target <= 1.2x)")
            print("unix socket round trip (status request): p50 \(String(format2: p50)) us, p99 \(String(format2: p99)) us, mean \(String(format2: mean)) us")
        }
    }

    private func roundTrip(trust: TrustStore) async throws -> (Double, Double, Double) {
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
        samples.reserveCapacity(roundTrips)
        for _ in 0..<max(1, roundTrips) {
            let t = Self.now()
            _ = try await client.status()
            samples.append((Self.now() - t) * 1e6)
        }
        await client.close()
        await server.shutdown()
        samples.sort()
        let p = { (q: Double) in samples[min(samples.count - 1, Int(Double(samples.count) * q))] }
        return (p(0.5), p(0.99), samples.reduce(0, +) / Double(samples.count))
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func walk(_ path: String, _ visit: (String) -> Void) {
        guard let names = try? LocalFile.list(path) else { return }
        for n in names {
            let p = path + "/" + n
            if LocalFile.isDirectory(p) { walk(p, visit) } else { visit(p) }
        }
    }
}

extension String {
    /// Two decimals, without Foundation.
    init(format2 v: Double) {
        let scaled = (v * 100).rounded()
        guard scaled.isFinite, abs(scaled) < 1e15 else { self = "\(v)"; return }
        let i = Int64(scaled)
        let sign = i < 0 ? "-" : ""
        let a = abs(i)
        let frac = a % 100
        self = "\(sign)\(a / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}
