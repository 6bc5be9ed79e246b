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
        OpenSSL alone (CMS_verify), in process on one thread and on a pool of every core, and through \
        the service, the four in turn for --rounds rounds (each figure its best round, with the median); \
        times status round trips over a Unix socket against a minimal C echo. \
        --scale instead registers 1, 10 and 100 guests (--guests) of the kernel in the capture \
        --capture DIR (e.g. a shared-corpus boot) and runs a boot storm: every guest authorizes the \
        capture's modules with their end state at once; prints memory, requests/s and latency.
        """
    )

    @Option(help: "Unpacked Debian kernel package (boot/vmlinuz-*, lib/modules/*).") var kernel: String
    @Option(name: .customLong("round-trips"), help: "Round trips to time over the Unix socket (1…10000000; default 2000). Not with --scale.") var roundTripsGiven: Int?
    @Option(name: .customLong("limit"), help: "Only the first N modules (0 = all, the default). Not with --scale.") var limitGiven: Int?
    @Option(name: .customLong("clients"), help: "Pipelined clients of the service phase, each its own connection and thread on this machine (1…64; default: one per core). Not with --scale.") var clientsGiven: Int?
    @Option(name: .customLong("rounds"), help: "Times each verification phase runs, the phases in turn (1…20; default 3): each figure is its best round, the median follows. Not with --scale.") var roundsGiven: Int?
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Many guests of one kernel and a boot storm (needs --capture).") var scale = false
    @Option(help: "With --scale: a capture directory (kallsyms.txt, modules with their end state), or several boots of one kernel, comma-separated (guests cycle over them, each at its boot's slide).") var capture: String?
    @Option(name: .customLong("guests"), help: "With --scale: guest counts, comma-separated (default: 1,10,100).") var guestsGiven: String?

    var roundTrips: Int { roundTripsGiven ?? 2000 }
    var limit: Int { limitGiven ?? 0 }
    var rounds: Int { roundsGiven ?? 3 }
    var guests: String { guestsGiven ?? "1,10,100" }

    func validate() throws {
        // "" + "/boot" is the root directory's /boot: an empty path is refused, as --out '' is.
        try refuseEmptyPaths([("--kernel", kernel), ("--capture", capture)])
        // An option given is never dropped silently: the two benchmarks take different options
        // (a forgotten --scale ran minutes of the other measurement, --capture unused).
        if !scale {
            for (given, name) in [(capture != nil, "--capture"), (guestsGiven != nil, "--guests")] where given {
                throw ValidationError("\(name) is an option of --scale (the boot storm); without --scale bench measures signature verification and round trips")
            }
        } else {
            for (given, name) in [(roundTripsGiven != nil, "--round-trips"), (limitGiven != nil, "--limit"), (roundsGiven != nil, "--rounds"), (clientsGiven != nil, "--clients")] where given {
                throw ValidationError("\(name) is not an option of --scale (the boot storm authorizes every module of --capture; it times no status round trips)")
            }
        }
        do { try SignatureBenchmark.checkCounts(roundTrips: roundTrips, limit: limit, rounds: rounds, clients: clientsGiven ?? 1) } catch { throw ValidationError(error.description) }
    }

    func run() async throws {
        if scale { return try await runScale() }
        let inputs: (vmlinuz: String, modules: [String])
        do { inputs = try SignatureBenchmark.inputs(kernelPackage: kernel, limit: limit) } catch {
            Console.error("execgate bench: \(error)")
            throw ExecGateExit.usage
        }
        let f: SignatureBenchmark.Figures
        do {
            f = try await SignatureBenchmark.run(vmlinuz: inputs.vmlinuz, modules: inputs.modules, roundTrips: roundTrips, rounds: rounds,
                                                 serviceClients: clientsGiven, progress: { Console.error("bench: \($0)") })
        } catch {
            Console.error("execgate bench: \(error)")  // unreadable input or no figures: exit 2
            throw ExecGateExit.usage
        }
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
                ("rounds", .int(Int64(f.execgateRounds.count))),
                ("execgate_seconds_rounds", .array(f.execgateRounds.map { .double($0) })),
                ("openssl_seconds_rounds", .array(f.opensslRounds.map { .double($0) })),
                ("ratio_median", .double(f.execgateMedian / f.opensslMedian)),
                ("unix_roundtrip_p50_us", .double(f.roundTripP50us)), ("unix_roundtrip_p99_us", .double(f.roundTripP99us)),
                ("unix_roundtrip_mean_us", .double(f.roundTripMeanus)),
            ]).serialized())
        } else {
            let med = f.execgateRounds.count > 1
            func rounds(_ median: Double) -> String { med ? ", best of \(f.execgateRounds.count) rounds (median \(String(format2: median)) s)" : "" }
            func ratio(_ best: Double, _ median: Double) -> String {
                "\(String(format2: best / f.opensslSeconds))x" + (med ? " (medians: \(String(format2: median / f.opensslMedian))x)" : "")
            }
            print("signature verification: \(f.modules) modules, \(String(format2: mb)) MB")
            print("  execgate      \(f.verifiedOK) ok   \(String(format2: f.execgateSeconds)) s   \(String(format2: n / f.execgateSeconds)) modules/s   \(String(format2: mb / f.execgateSeconds)) MB/s\(rounds(f.execgateMedian))")
            print("  openssl alone \(f.baselineOK) ok   \(String(format2: f.opensslSeconds)) s   \(String(format2: n / f.opensslSeconds)) modules/s   \(String(format2: mb / f.opensslSeconds)) MB/s\(rounds(f.opensslMedian))")
            print("  ratio execgate/openssl: \(ratio(f.execgateSeconds, f.execgateMedian)) (target <= 1.2x)")
            print("unix socket round trip (status request): p50 \(String(format2: f.roundTripP50us)) us, p99 \(String(format2: f.roundTripP99us)) us, mean \(String(format2: f.roundTripMeanus)) us")
            print("  execgate pool \(f.poolOK) ok   \(String(format2: f.poolSeconds)) s on \(f.poolThreads) threads\(rounds(f.poolMedian))   ratio to openssl alone (1 thread): \(ratio(f.poolSeconds, f.poolMedian)) (target <= 0.55x)")
            print("  service       \(f.serviceAllowed) allowed   \(String(format2: f.serviceSeconds)) s, \(f.serviceClients) pipelined clients\(rounds(f.serviceMedian))   ratio: \(ratio(f.serviceSeconds, f.serviceMedian)) (target <= 1.0x)")
            print("  cpu seconds (user+sys, of each best round): execgate \(String(format2: f.execgateCPU)), openssl alone \(String(format2: f.opensslCPU)), pool \(String(format2: f.poolCPU)) (cpu/wall \(String(format2: f.poolCPU / f.poolSeconds))), service incl. its clients \(String(format2: f.serviceCPU)) (cpu/wall \(String(format2: f.serviceCPU / f.serviceSeconds)))")
            print("status round trip, blocking client: p50 \(String(format2: f.statusP50us)) us, p99 \(String(format2: f.statusP99us)) us; C echo p50 \(String(format2: f.echoP50us)) us, p99 \(String(format2: f.echoP99us)) us; ratio p50 \(String(format2: f.statusP50us / f.echoP50us))x (target <= 2x)")
            for (what, p) in [("one core", f.oneCore), ("two cores", f.twoCores)] {
                guard let p else { continue }
                print("  pinned, client and server on \(what) (cpu \(p.placement.client), \(p.placement.server)): status p50 \(String(format2: p.statusP50us)) us, p99 \(String(format2: p.statusP99us)) us; C echo p50 \(String(format2: p.echoP50us)) us, p99 \(String(format2: p.echoP99us)) us; ratio p50 \(String(format2: p.statusP50us / p.echoP50us))x")
            }
        }
        if json {
            // (the JSON object above carries the single-thread figures; these follow as a second line)
            print(JSON.object([
                ("pool_threads", .int(Int64(f.poolThreads))), ("pool_seconds", .double(f.poolSeconds)), ("pool_ok", .int(Int64(f.poolOK))),
                ("pool_ratio", .double(f.poolSeconds / f.opensslSeconds)),
                ("pool_seconds_rounds", .array(f.poolRounds.map { .double($0) })),
                ("pool_ratio_median", .double(f.poolMedian / f.opensslMedian)),
                ("service_clients", .int(Int64(f.serviceClients))), ("service_seconds", .double(f.serviceSeconds)),
                ("service_allowed", .int(Int64(f.serviceAllowed))), ("service_ratio", .double(f.serviceSeconds / f.opensslSeconds)),
                ("service_seconds_rounds", .array(f.serviceRounds.map { .double($0) })),
                ("service_ratio_median", .double(f.serviceMedian / f.opensslMedian)),
                ("status_p50_us", .double(f.statusP50us)), ("status_p99_us", .double(f.statusP99us)),
                ("echo_p50_us", .double(f.echoP50us)), ("echo_p99_us", .double(f.echoP99us)),
                ("pinned_round_trips", .array([f.oneCore, f.twoCores].compactMap { $0 }.map { p in
                    JSON.object([("client_cpu", .int(Int64(p.placement.client))), ("server_cpu", .int(Int64(p.placement.server))),
                                 ("status_p50_us", .double(p.statusP50us)), ("status_p99_us", .double(p.statusP99us)),
                                 ("echo_p50_us", .double(p.echoP50us)), ("echo_p99_us", .double(p.echoP99us))])
                })),
                ("execgate_cpu_seconds", .double(f.execgateCPU)), ("openssl_cpu_seconds", .double(f.opensslCPU)),
                ("pool_cpu_seconds", .double(f.poolCPU)), ("service_cpu_seconds", .double(f.serviceCPU)),
            ]).serialized())
        }
    }

    func runScale() async throws {
        guard let capture else {
            Console.error("execgate bench --scale: give --capture DIR (a capture of the kernel in --kernel)")
            throw ExecGateExit.usage
        }
        let words = guests.split(separator: ",", omittingEmptySubsequences: false)
        let counts = words.compactMap { Int($0) }
        guard !counts.isEmpty, counts.count == words.count, counts.allSatisfy({ $0 >= 1 && $0 <= 512 }) else {
            Console.error("execgate bench --scale: --guests takes counts 1...512, comma-separated (got '\(guests)')")
            throw ExecGateExit.usage
        }
        let vmlinuz: String
        do { vmlinuz = try SignatureBenchmark.inputs(kernelPackage: kernel, limit: 1).vmlinuz } catch {
            Console.error("execgate bench: \(error)")
            throw ExecGateExit.usage
        }
        let rows: [ScaleBenchmark.Row]
        do {
            rows = try await ScaleBenchmark.run(capture: capture, vmlinuz: vmlinuz, guestCounts: counts, progress: { Console.error("bench: \($0)") })
        } catch {
            Console.error("execgate bench: \(error)")  // unreadable input or no figures: exit 2
            throw ExecGateExit.usage
        }
        func mib(_ b: Int) -> String { String(format2: Double(b) / 1048576) }
        for r in rows {
            if json {
                print(JSON.object([
                    ("guests", .int(Int64(r.guests))), ("shared_copies", .int(Int64(r.sharedCopies))), ("slides", .int(Int64(r.slides))),
                    ("heap_after_first_guest", .int(Int64(r.heapAfterFirstGuest))), ("heap_after_register", .int(Int64(r.heapAfterRegister))),
                    ("heap_per_known_guest", .double(r.heapPerKnownGuest)), ("charged_per_known_guest", .double(r.chargedPerKnownGuest)), ("heap_after_storm", .int(Int64(r.heapAfterStorm))), ("live_charged_after_storm", .int(Int64(r.liveChargedAfterStorm))), ("registry_budget", .int(Int64(r.budgetBytes))),
                    ("rss_before", .int(Int64(r.rssBefore))), ("rss_after_register", .int(Int64(r.rssAfterRegister))),
                    ("rss_after_storm", .int(Int64(r.rssAfterStorm))),
                    ("register_first_ms", .double(r.registerFirstMs)),
                    ("register_known_full_p50_ms", .double(r.registerKnownFullP50Ms)), ("register_known_full_p99_ms", .double(r.registerKnownFullP99Ms)),
                    ("register_by_digest_p50_ms", .double(r.registerByDigestP50Ms)), ("register_by_digest_p99_ms", .double(r.registerByDigestP99Ms)),
                    ("register_full_bytes", .int(Int64(r.registerFullBytes))), ("register_by_digest_bytes", .int(Int64(r.registerByDigestBytes))),
                    ("register_by_digest_fallbacks", .int(Int64(r.byDigestFallbacks))),
                    ("requests", .int(Int64(r.requests))), ("allowed", .int(Int64(r.allowed))), ("denied", .int(Int64(r.denied))),
                    ("retries", .int(Int64(r.retries))), ("seconds", .double(r.seconds)), ("requests_per_s", .double(r.requestsPerSecond)),
                    ("p50_us", .double(r.p50us)), ("p99_us", .double(r.p99us)), ("max_us", .double(r.maxUs)),
                    ("most_retries", .int(Int64(r.mostRetries))), ("most_retries_us", .double(r.mostRetriesUs)), ("most_retries_body_bytes", .int(Int64(r.mostRetriesBytes))),
                    ("large_body_turns_served", .int(Int64(r.turnsServed))), ("large_body_turns_lapsed", .int(Int64(r.turnsLapsed))),
                ]).serialized())
            } else {
                print("\(r.guests) guest(s) of one kernel at \(r.slides) KASLR slide(s) (\(r.sharedCopies) shared cop\(r.sharedCopies == 1 ? "y" : "ies") of its facts)")
                print("  registration end to end over the socket: first \(String(format2: r.registerFirstMs)) ms; known build in full p50 \(String(format2: r.registerKnownFullP50Ms)) ms p99 \(String(format2: r.registerKnownFullP99Ms)) ms (\(r.registerFullBytes) bytes on the wire); by digest p50 \(String(format2: r.registerByDigestP50Ms)) ms p99 \(String(format2: r.registerByDigestP99Ms)) ms (\(r.registerByDigestBytes) bytes; \(r.byDigestFallbacks) sent in full after unknown-build)")
                print("  allocator: first guest \(mib(r.heapAfterFirstGuest)) MiB, all \(mib(r.heapAfterRegister)) MiB (\(String(format2: Double(r.heapAfterRegister) / Double(max(1, r.heapAfterFirstGuest))))x one guest), \(String(format2: r.heapPerKnownGuest / 1024)) KiB per known guest (from the second on); the registry charges \(String(format2: r.chargedPerKnownGuest / 1024)) KiB per known guest")
                print("  boot storm: \(r.requests) authorize-module (\(r.allowed) allowed, \(r.denied) denied, \(r.retries) retried when busy) in \(String(format2: r.seconds)) s = \(String(format2: r.requestsPerSecond)) requests/s; per request p50 \(String(format2: r.p50us / 1000)) ms, p99 \(String(format2: r.p99us / 1000)) ms, max \(String(format2: r.maxUs / 1000)) ms; most retries of one request \(r.mostRetries) (a body of \(r.mostRetriesBytes) bytes, \(String(format2: r.mostRetriesUs / 1000)) ms); large-body turns \(r.turnsServed) served, \(r.turnsLapsed) lapsed")
                print("  process RSS: before \(mib(r.rssBefore)) MiB, registered \(mib(r.rssAfterRegister)) MiB, after the storm \(mib(r.rssAfterStorm)) MiB (allocator \(mib(r.heapAfterStorm)) MiB above the start); the registry charges the live modules \(mib(r.liveChargedAfterStorm)) MiB of its \(mib(r.budgetBytes)) MiB budget")
            }
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
