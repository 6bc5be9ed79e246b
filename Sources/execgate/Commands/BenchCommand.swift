// SPDX-License-Identifier: Apache-2.0
//
// `execgate bench`: parsing and printing; the measurement is ExecGateHost's SignatureBenchmark.

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost

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
        let inputs: (vmlinuz: String, modules: [String])
        do { inputs = try SignatureBenchmark.inputs(kernelPackage: kernel, limit: limit) } catch {
            Console.error("execgate bench: \(error)")
            throw ExecGateExit.usage
        }
        let f = try await SignatureBenchmark.run(vmlinuz: inputs.vmlinuz, modules: inputs.modules, roundTrips: roundTrips,
                                                 progress: { Console.error("bench: \($0)") })
        let mb = Double(f.bytes) / 1e6
        let n = Double(f.modules)
        if json {
            print(JSON.object([
                ("modules", .int(Int64(f.modules))), ("bytes", .int(Int64(f.bytes))),
                ("verified_ok", .int(Int64(f.verifiedOK))), ("baseline_ok", .int(Int64(f.baselineOK))),
                ("execgate_seconds", .double(f.execgateSeconds)), ("openssl_seconds", .double(f.opensslSeconds)),
                ("execgate_modules_per_s", .double(n / f.execgateSeconds)), ("execgate_mb_per_s", .double(mb / f.execgateSeconds)),
                ("openssl_modules_per_s", .double(n / f.opensslSeconds)), ("openssl_mb_per_s", .double(mb / f.opensslSeconds)),
                ("ratio", .double(f.execgateSeconds / f.opensslSeconds)),
                ("unix_roundtrip_p50_us", .double(f.roundTripP50us)), ("unix_roundtrip_p99_us", .double(f.roundTripP99us)),
                ("unix_roundtrip_mean_us", .double(f.roundTripMeanus)),
            ]).serialized())
        } else {
            print("signature verification: \(f.modules) modules, \(String(format2: mb)) MB")
            print("  execgate      \(f.verifiedOK) ok   \(String(format2: f.execgateSeconds)) s   \(String(format2: n / f.execgateSeconds)) modules/s   \(String(format2: mb / f.execgateSeconds)) MB/s")
            print("  openssl alone \(f.baselineOK) ok   \(String(format2: f.opensslSeconds)) s   \(String(format2: n / f.opensslSeconds)) modules/s   \(String(format2: mb / f.opensslSeconds)) MB/s")
            print("  ratio execgate/openssl: \(String(format2: f.execgateSeconds / f.opensslSeconds))x (target <= 1.2x)")
            print("unix socket round trip (status request): p50 \(String(format2: f.roundTripP50us)) us, p99 \(String(format2: f.roundTripP99us)) us, mean \(String(format2: f.roundTripMeanus)) us")
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
