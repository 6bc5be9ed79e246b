// SPDX-License-Identifier: Apache-2.0
//
// `execgate explain CAPTURE_DIR`: replay one captured boot's modules in load order, print one verdict
// per module and a summary; optionally try mutations (each must be denied) and measure the engine
// against SHA-256 over the same executable bytes.

import ExecGateELF
import ExecGateExplain
import ExecGateSignature
import _ExecGateInternals
#if canImport(Glibc)
import Glibc
#endif

public struct ExplainRunOptions: Sendable {
    public var json = false
    /// Mutations per class per allowed module (nil: none).
    public var mutate: Int?
    public var seed: UInt64 = 1
    /// Only these modules are judged and reported (all are replayed: later ones need earlier exports).
    public var only: Set<String>?
    /// Also measure throughput against SHA-256 over the same bytes.
    public var bench = false
    /// Timing passes for `bench` (the best is reported, and the median).
    public var benchRepetitions = 5

    public init() {}

    /// The options' ranges, checked before any work: `mutate` 0…`Explainer.maximumMutationsPerClass`
    /// (a negative count trapped the run, a huge one overflowed), `benchRepetitions` 1…1000.
    public func check() throws(ExplainOptionError) {
        if let n = mutate, !(0...Explainer.maximumMutationsPerClass).contains(n) {
            throw ExplainOptionError(description: "--mutate must be 0…\(Explainer.maximumMutationsPerClass) mutations per class, got \(n)")
        }
        guard (1...1000).contains(benchRepetitions) else {
            throw ExplainOptionError(description: "--passes must be 1…1000, got \(benchRepetitions)")
        }
    }
}

extension ExplainRunOptions {
    /// `only` against the boot: every name must be one of its load order (a typo judged nothing
    /// and passed as "explained 0 of 0 modules"), and an empty list names no module.
    public func check(against boot: CaptureBoot) throws(ExplainOptionError) {
        if let why = boot.registrationRefusal() {
            throw ExplainOptionError(description: "\(boot.dir): the service refuses this boot's registration (\(why)); nothing is explained on facts the service would not accept")
        }
        guard let only else { return }
        guard !only.isEmpty else { throw ExplainOptionError(description: "--only names no module") }
        let unknown = only.subtracting(boot.loadOrder).sorted()
        guard unknown.isEmpty else {
            throw ExplainOptionError(description: "--only: \(unknown.joined(separator: ", ")) not in the capture's load order (names as load-order.txt spells them, '-' as '_')")
        }
    }
}

/// An `ExplainRunOptions` value out of range (a usage error: exit 2 with this reason).
public struct ExplainOptionError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

public struct ExplainRunSummary: Sendable {
    public var modules = 0
    public var explained = 0
    public var unexplainedBytes = 0
    /// Modules of the load order whose files could not be read (absent, not regular, too large,
    /// malformed): each has its deny line, and the run is invalid input (`explain` exits 2).
    public var unreadable = 0
    public var falseAccepts: [String] = []
    /// Every judged module allowed and no mutation accepted.
    public var passed: Bool { explained == modules && falseAccepts.isEmpty }
}

public enum ExplainRun {
    /// Runs the replay; `out` receives each result line, `progress` the per-module progress text.
    public static func run(_ boot: CaptureBoot, options o: ExplainRunOptions, out: (String) -> Void, progress: (String) -> Void) -> ExplainRunSummary {
        let rssAfterFacts = ProcessUsage.peakResidentKiB()
        var largest = (name: "", bytes: 0, rssBefore: 0, rssAfter: 0)
        var replay = CaptureReplay(boot: boot)
        var s = ExplainRunSummary()
        var mutTotals: [String: (tried: Int, denied: Int, legal: Int)] = [:]
        // Every module the load order names, present or not: one the capture lacks is unreadable
        // like any other (its deny line below), never skipped (a capture holding none of its
        // modules passed as "explained 0 of 0").
        for (i, name) in boot.loadOrder.enumerated() {
            let m: CapturedModule
            do { m = try boot.module(name) } catch {
                // One unreadable module never aborts the run: it gets its deny line (the reason
                // names the file) and counts as denied; the summary still follows (`explain` exits 2).
                // (No bytes were judged: none is counted as unexplained.)
                if let set = o.only, !set.contains(name) { continue }
                s.modules += 1
                s.unreadable += 1
                if o.json {
                    out(JSON.object([("module", .string(name)), ("verdict", .string("deny")), ("rule", .string("capture")),
                                     ("unexplained_bytes", .uint(0)), ("reason", .string(quoteless("\(error)")))]).serialized())
                } else {
                    out("deny  \(name): (capture): capture: \(error)")
                }
                continue
            }
            progress("[\(i + 1)/\(boot.loadOrder.count)] \(name)\r")
            // Copy the resolver only for --mutate (a copy makes the next add() duplicate the table).
            let resolverBefore = o.mutate != nil ? replay.resolver : SymbolResolver(coreExports: [:])
            let rssBefore = ProcessUsage.peakResidentKiB()
            let step = replay.step(m)
            if m.claim.textBytes.count > largest.bytes { largest = (name, m.claim.textBytes.count, rssBefore, ProcessUsage.peakResidentKiB()) }
            if let set = o.only, !set.contains(name) { continue }
            s.modules += 1
            switch step.result.verdict {
            case .allowed(let st):
                s.explained += 1
                if o.json {
                    let cls = st.bytesByClass.sorted { $0.key.rawValue < $1.key.rawValue }.map { ("\($0.key)", JSON.uint(UInt64($0.value))) }
                    out(JSON.object([("module", .string(name)), ("verdict", .string("allow")), ("bytes", .uint(UInt64(st.executableBytes))),
                                     ("classes", .object(cls))]).serialized())
                } else if st.executableBytes == 0 {
                    out("allow \(name) 0 bytes (data-only: nothing executable; signature, ELF and claim structure judged)")
                } else {
                    let cls = st.bytesByClass.filter { $0.key != .elf }.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                    out("allow \(name) \(st.executableBytes) bytes (\(cls))")
                }
            case .denied(let d):
                s.unexplainedBytes += d.unexplainedBytes
                if o.json {
                    out(JSON.object([("module", .string(name)), ("verdict", .string("deny")), ("section", .string(d.section)),
                                     ("offset", .int(Int64(d.offset))), ("address", .string("0x\(String(d.address, radix: 16))")),
                                     ("expected", .string(hexPairs(d.expected))), ("found", .string(hexPairs(d.found))),
                                     ("unexplained_bytes", .int(Int64(d.unexplainedBytes))), ("rule", .string("\(d.rule)")),
                                     ("reason", .string(quoteless(d.reason)))]).serialized())
                } else {
                    out("deny  \(d)")
                }
            }
            if let n = o.mutate, step.result.verdict.isAllowed {
                let rep: MutationReport = m.ko.withUnsafeBytes { raw in
                    guard let elf = try? ELFFile(bytes: raw) else { return MutationReport() }
                    return replay.explainer.mutate(elf: elf, claim: m.claim, resolver: resolverBefore, perClass: n, seed: o.seed &+ UInt64(i),
                                                             probeTargets: boot.probeTargets)
                }
                for c in rep.classes {
                    var t = mutTotals[c.name] ?? (0, 0, 0)
                    t.tried += c.tried; t.denied += c.denied; t.legal += c.legalAlternative
                    mutTotals[c.name] = t
                    s.falseAccepts += c.falseAccepts.map { "\(name): \($0)" }
                }
            }
        }
        progress("\n")
        if o.json {
            let unreadable = s.unreadable > 0 ? ",\"unreadable\":\(s.unreadable)" : ""
            out("{\"summary\":{\"explained\":\(s.explained),\"modules\":\(s.modules),\"unexplained_bytes\":\(s.unexplainedBytes)\(unreadable)}}")
        } else {
            out("explained \(s.explained) of \(s.modules) modules, \(s.unexplainedBytes) unexplained bytes" + (s.unreadable > 0 ? ", \(s.unreadable) unreadable" : ""))
        }
        // With --json every line is one JSON object (the bench figures and mutation totals too).
        if o.bench {
            let b = benchmark(boot, options: o)
            if o.json {
                let e = b.engine.min() ?? 0, h = b.sha256.min() ?? 0
                out(JSON.object([("bench", .object([
                    ("passes", .uint(UInt64(b.engine.count))), ("allowed", .uint(UInt64(b.allowed))), ("executable_bytes", .uint(UInt64(b.executableBytes))),
                    ("explain_best_s", .double(e)), ("explain_median_s", .double(Percentiles.of(b.engine, 50))),
                    ("sha256_best_s", .double(h)), ("sha256_median_s", .double(Percentiles.of(b.sha256, 50))),
                    ("service_order", .object([
                        ("explain_best_s", .double(b.engineServiceOrder.min() ?? 0)), ("explain_median_s", .double(Percentiles.of(b.engineServiceOrder, 50))),
                        ("sha256_best_s", .double(b.sha256ServiceOrder.min() ?? 0)), ("sha256_median_s", .double(Percentiles.of(b.sha256ServiceOrder, 50))),
                        ("claim_making_best_s", .double(b.claimMaking.min() ?? 0)),
                        ("passes", .uint(UInt64(b.engineServiceOrder.count))), ("allowed", .uint(UInt64(b.allowedServiceOrder))),
                    ])),
                    ("max_rss_kib", .uint(UInt64(max(0, ProcessUsage.peakResidentKiB())))),
                    ("rss_after_facts_kib", .uint(UInt64(max(0, rssAfterFacts)))),
                    ("largest_module", .string(largest.name)), ("largest_module_bytes", .uint(UInt64(largest.bytes))),
                    ("host", BenchHost.current().json),
                    ("fit", b.fit.map { .object([("per_module_s", .double($0.perModule)), ("per_byte_s", .double($0.perByte))]) } ?? .null),
                    ("by_size", .array(b.bySize.map { g in
                        .object([("max_executable_bytes", g.maxBytes.map { .uint(UInt64($0)) } ?? .null), ("modules", .uint(UInt64(g.modules))),
                                 ("executable_bytes", .uint(UInt64(g.executableBytes))),
                                 ("explain_s", .double(g.engine)), ("sha256_s", .double(g.sha256)),
                                 ("explain_service_order_s", g.engineServiceOrder.map { .double($0) } ?? .null),
                                 ("sha256_service_order_s", g.sha256ServiceOrder.map { .double($0) } ?? .null)])
                    })),
                    ("modules", .array(b.modules.map { m in
                        .object([("name", .string(m.name)), ("executable_bytes", .uint(UInt64(m.executableBytes))),
                                 ("explain_best_s", .double(m.engineBest)), ("sha256_best_s", .double(m.sha256Best)),
                                 ("explain_service_order_best_s", .double(m.engineServiceOrderBest)),
                                 ("sha256_service_order_best_s", .double(m.sha256ServiceOrderBest))])
                    })),
                ]))]).serialized())
            } else {
                out(b.line)
                out(b.serviceOrderLine)
                out(b.moduleLine)
                out(b.sizeLine)
                out(BenchHost.current().line)
                out("max RSS: \(ProcessUsage.peakResidentKiB()) KiB (after loading facts: \(rssAfterFacts) KiB; largest module \(largest.name), \(largest.bytes) executable bytes: high-water \(largest.rssBefore) → \(largest.rssAfter) KiB)")
            }
        }
        if o.mutate != nil {
            for (k, v) in mutTotals.sorted(by: { $0.key < $1.key }) {
                if o.json {
                    out(JSON.object([("mutation", .object([
                        ("class", .string(k)), ("tried", .uint(UInt64(v.tried))), ("denied", .uint(UInt64(v.denied))),
                        ("legal_alternative", .uint(UInt64(v.legal))), ("false_accept", .uint(UInt64(v.tried - v.denied - v.legal))),
                    ]))]).serialized())
                } else {
                    out("mutation \(k): tried \(v.tried) denied \(v.denied) legal-alternative \(v.legal) false-accept \(v.tried - v.denied - v.legal)")
                }
            }
            for f in s.falseAccepts { out(o.json ? JSON.object([("false_accept", .string(f))]).serialized() : "FALSE ACCEPT \(f)") }
        }
        return s
    }

    /// The machine a bench ran on. The ratio to SHA-256 is a property of the host as much as of
    /// the binary (docs/performance.md: one binary read 2.9× on one 2-core AMD EPYC guest and
    /// 3.5× on another of the same family, SHA-256 running in hardware on both), so every bench
    /// figure names its host: the CPU model, the CPUs online, and whether the CPU has the SHA
    /// instructions OpenSSL's SHA-256 uses when present (`sha_ni`; without them SHA-256 runs
    /// several times slower and the ratio falls with it).
    public struct BenchHost: Sendable, Equatable {
        /// `/proc/cpuinfo`'s first `model name`, or nil when there is none.
        public var cpuModel: String?
        /// The `sha_ni` flag of the first `flags` line; nil when `/proc/cpuinfo` has no flags line.
        public var shaInstructions: Bool?
        public var onlineCPUs: Int

        public init(cpuModel: String?, shaInstructions: Bool?, onlineCPUs: Int) {
            self.cpuModel = cpuModel
            self.shaInstructions = shaInstructions
            self.onlineCPUs = onlineCPUs
        }

        /// From the text of `/proc/cpuinfo` (x86: `model name\t: …`, `flags\t\t: … sha_ni …`).
        public static func parse(cpuinfo: String, onlineCPUs: Int) -> BenchHost {
            var model: String?, sha: Bool?
            for line in cpuinfo.split(separator: "\n", omittingEmptySubsequences: true) {
                guard let colon = line.firstIndex(of: ":") else { continue }
                let key = line[..<colon].trimmingBlanks(), value = line[line.index(after: colon)...].trimmingBlanks()
                if model == nil, key == "model name", !value.isEmpty { model = value }
                if sha == nil, key == "flags" { sha = value.split(separator: " ").contains("sha_ni") }
                if model != nil && sha != nil { break }
            }
            return BenchHost(cpuModel: model, shaInstructions: sha, onlineCPUs: onlineCPUs)
        }

        /// This machine (`/proc/cpuinfo`, read up to 16 MiB: ≈ 1.4 KiB a CPU on x86, so any host
        /// up to ≈ 11,000 CPUs; larger or unreadable: nothing known of the CPU, said as such).
        public static func current() -> BenchHost {
            let text = (try? Files.read("/proc/cpuinfo", limit: 16 << 20)).map { String(decoding: $0, as: UTF8.self) } ?? ""
            return parse(cpuinfo: text, onlineCPUs: max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        }

        public var line: String {
            let sha = shaInstructions.map { $0 ? "yes" : "no" } ?? "unknown"
            return "host: \(cpuModel ?? "unknown CPU"), \(onlineCPUs) CPU\(onlineCPUs == 1 ? "" : "s") online, SHA instructions (sha_ni): \(sha) (the ratio moves with the host: docs/performance.md)"
        }

        public var json: JSON {
            .object([("cpu_model", cpuModel.map { .string($0) } ?? .null), ("online_cpus", .uint(UInt64(onlineCPUs))),
                     ("sha_ni", shaInstructions.map { .bool($0) } ?? .null)])
        }
    }

    public struct BenchFigures: Sendable {
        public var executableBytes = 0
        /// Thread CPU seconds per pass: the whole engine (ELF parse + explain) over every module,
        /// each module's inputs as the bench loaded them (cold: not read since).
        public var engine: [Double] = []
        /// Thread CPU seconds per pass: SHA-256 (the project's OpenSSL digest) over the same bytes.
        public var sha256: [Double] = []
        /// The same two, in passes run in the service's order (``BenchOrder/service``),
        /// interleaved with the others (one of each per pass number, same minutes). The engine's
        /// time there is the end-state judge's: the claim made from the received request, then
        /// the engine.
        public var engineServiceOrder: [Double] = []
        public var sha256ServiceOrder: [Double] = []
        /// Thread CPU seconds per service-order pass making the claims (part of `engineServiceOrder`).
        public var claimMaking: [Double] = []
        /// Modules allowed in the first pass of each order (the two must agree: a pass whose
        /// inputs were prepared wrongly would deny early and read fast).
        public var allowed = 0, allowedServiceOrder = 0
        /// Each timed module's best pass of each side, in load order (where a ratio comes from: the
        /// sum of these bests is at most the best pass's total, each module's best being its own).
        public var modules: [ModuleFigure] = []

        public init() {}

        public struct ModuleFigure: Sendable, Equatable {
            public var name: String
            public var executableBytes: Int
            public var engineBest: Double
            public var sha256Best: Double
            /// The best pass of each side in the service's order (the engine's: the claim's making included).
            public var engineServiceOrderBest: Double
            public var sha256ServiceOrderBest: Double

            public init(name: String, executableBytes: Int, engineBest: Double, sha256Best: Double,
                        engineServiceOrderBest: Double = .infinity, sha256ServiceOrderBest: Double = .infinity) {
                self.name = name
                self.executableBytes = executableBytes
                self.engineBest = engineBest
                self.sha256Best = sha256Best
                self.engineServiceOrderBest = engineServiceOrderBest
                self.sha256ServiceOrderBest = sha256ServiceOrderBest
            }
        }

        /// The least-squares line through the modules' best engine times against their executable
        /// bytes: seconds fixed per module and per byte (nil for fewer than two modules of different
        /// sizes). What a module costs before its first byte is the share a small module pays.
        public var fit: (perModule: Double, perByte: Double)? {
            let n = Double(modules.count)
            guard modules.count >= 2 else { return nil }
            let mx = modules.reduce(0.0) { $0 + Double($1.executableBytes) } / n
            let my = modules.reduce(0.0) { $0 + $1.engineBest } / n
            var sxx = 0.0, sxy = 0.0
            for m in modules {
                let dx = Double(m.executableBytes) - mx
                sxx += dx * dx
                sxy += dx * (m.engineBest - my)
            }
            guard sxx > 0 else { return nil }
            let b = sxy / sxx
            return (my - b * mx, b)
        }

        /// The modules grouped by executable size (``sizeBounds``: up to 16 KiB, up to 64 KiB,
        /// larger), each group's best passes summed: what the one- to four-page modules, whose
        /// fixed cost per module (``fit``) is most of their time, add to the whole ratio. Every
        /// group is listed, empty ones included (`modules` 0).
        public struct SizeClass: Sendable, Equatable {
            /// The largest executable size in the group (nil: no bound, the last group).
            public var maxBytes: Int?
            public var modules = 0, executableBytes = 0
            public var engine = 0.0, sha256 = 0.0
            /// The service order's sums (nil when some module of the group has no such pass).
            public var engineServiceOrder: Double? = 0, sha256ServiceOrder: Double? = 0
        }

        /// ``SizeClass`` bounds: a small module (1–4 pages), a medium one (up to 16 pages).
        public static let sizeBounds = [16 << 10, 64 << 10]

        public var bySize: [SizeClass] {
            var groups = (Self.sizeBounds.map { Optional($0) } + [nil]).map { SizeClass(maxBytes: $0) }
            for m in modules {
                let g = Self.sizeBounds.firstIndex { m.executableBytes <= $0 } ?? Self.sizeBounds.count
                groups[g].modules += 1
                groups[g].executableBytes += m.executableBytes
                groups[g].engine += m.engineBest
                groups[g].sha256 += m.sha256Best
                let finite = m.engineServiceOrderBest.isFinite && m.sha256ServiceOrderBest.isFinite
                groups[g].engineServiceOrder = finite ? groups[g].engineServiceOrder.map { $0 + m.engineServiceOrderBest } : nil
                groups[g].sha256ServiceOrder = finite ? groups[g].sha256ServiceOrder.map { $0 + m.sha256ServiceOrderBest } : nil
            }
            return groups
        }

        /// ``bySize`` as the text output says it (the non-empty groups).
        public var sizeLine: String {
            func ratio(_ e: Double?, _ h: Double?) -> String {
                guard let e, let h, h > 0 else { return "-" }
                return fmt(e / h)
            }
            var parts: [String] = []
            for (k, g) in bySize.enumerated() where g.modules > 0 {
                // The group's bounds are ``sizeBounds``: the one below it (none for the first) and its own.
                let below = k > 0 ? Self.sizeBounds[k - 1] >> 10 : nil
                let range = g.maxBytes.map { max in below.map { "\($0)–\(max >> 10) KiB" } ?? "≤ \(max >> 10) KiB" } ?? "> \(below ?? 0) KiB"
                parts.append("\(range): \(g.modules) module\(g.modules == 1 ? "" : "s"), \(g.executableBytes) B, \(fmt(g.engine * 1e3)) ms, "
                             + "\(ratio(g.engine, g.sha256))× their SHA-256 (service order \(ratio(g.engineServiceOrder, g.sha256ServiceOrder))×)")
            }
            return "by executable size (sums of the modules' best passes): " + (parts.isEmpty ? "no module" : parts.joined(separator: "; "))
        }

        /// The modules whose best engine time exceeds `target` × their best SHA-256 time by the
        /// most seconds (the excess is what brings the whole ratio over the target), at most `limit`.
        public func aboveTarget(_ target: Double, limit: Int) -> [ModuleFigure] {
            let over = modules.filter { $0.engineBest > target * $0.sha256Best }
            return Array(over.sorted { ($0.engineBest - target * $0.sha256Best) > ($1.engineBest - target * $1.sha256Best) }.prefix(limit))
        }

        /// The ratio the issue sets for the explainer (issue 13: ≤ 3× SHA-256 over the same bytes).
        public static let targetRatio = 3.0

        public var line: String {
            "throughput (\(engine.count) passes, thread CPU time): \(fmt(Double(executableBytes) / 1e6)) MB executable bytes; " + rates(engine, sha256)
        }

        /// The same figures for the passes run in the service's order (``BenchOrder/service``),
        /// and the ratio of the modules' best passes.
        public var serviceOrderLine: String {
            let se = modules.reduce(0.0) { $0 + $1.engineServiceOrderBest }, sh = modules.reduce(0.0) { $0 + $1.sha256ServiceOrderBest }
            return "in the service's order (\(engineServiceOrder.count) passes interleaved with those above: the request received and the module file hashed by the signature check first; timed, the claim made from the request as the judge makes it, then the engine; \(allowedServiceOrder) allowed): "
                + rates(engineServiceOrder, sha256ServiceOrder)
                + "; the claims' making (inside the explain time) best \(fmt((claimMaking.min() ?? 0) * 1e3)) ms a pass; ratio of the modules' best passes \(sh > 0 && sh.isFinite ? fmt(se / sh) : "-")×"
        }

        /// Best and median pass of the engine and SHA-256 over the executable bytes, and their ratios.
        func rates(_ engine: [Double], _ sha256: [Double]) -> String {
            let mb = Double(executableBytes) / 1e6
            let e = engine.min() ?? 0, h = sha256.min() ?? 0
            let em = Percentiles.of(engine, 50), hm = Percentiles.of(sha256, 50)
            func rate(_ t: Double) -> String { t > 0 ? fmt(mb / t) : "-" }
            return "explain best \(rate(e)) MB/s (\(fmt(e)) s), median \(rate(em)) MB/s; "
                + "sha256 best \(rate(h)) MB/s (\(fmt(h)) s), median \(rate(hm)) MB/s; ratio best \(h > 0 ? fmt(e / h) : "-")×, median \(hm > 0 ? fmt(em / hm) : "-")×"
        }

        /// Where the time goes by module: the fit, and the modules furthest over the target.
        public var moduleLine: String {
            var parts: [String] = []
            if let f = fit {
                parts.append("per module (best pass of each, \(modules.count) modules): \(fmt(f.perModule * 1e6)) µs + \(fmt(f.perByte * 1e9)) ns per executable byte (least squares)")
            }
            let over = aboveTarget(Self.targetRatio, limit: modules.count)
            let top = over.prefix(5)
            if top.isEmpty {
                parts.append("no module above \(fmt(Self.targetRatio))× its SHA-256 time")
            } else {
                let list = top.map { m in
                    "\(m.name) \(fmt(m.engineBest * 1e3)) ms (\(m.sha256Best > 0 ? fmt(m.engineBest / m.sha256Best) : "-")×, \(m.executableBytes) B)"
                }.joined(separator: ", ")
                parts.append("\(over.count) of \(modules.count) modules above \(fmt(Self.targetRatio))× their SHA-256 time; the most time over it: \(list)")
            }
            return parts.joined(separator: "; ")
        }
    }

    /// Where a bench pass's inputs are when the engine starts on a module.
    public enum BenchOrder: Sendable, CaseIterable {
        /// As loaded: every module's file and claim read into memory before the first pass and
        /// not touched since (the corpus's 30 MB of module files evict each other from cache).
        case cold
        /// As the service has them when its end-state judge starts: the request received (the
        /// frame decoder reads the body, module file and claimed bytes, into a buffer of its own:
        /// FrameCodec) and the module file read once whole by the signature check
        /// (`ModuleSignatureVerifier.verifyWithDigests`: one SHA-256 pass), neither timed (the
        /// transport's and the signature check's: `execgate bench` measures those); then, timed
        /// with the engine as the judge's own work (`ExplainerJudge.judge`), the claim made from
        /// the received bytes: its executable bytes the received ones, not copied (the judge
        /// borrows the request buffer's: `ExplainerJudge.borrowed`; here the received array is
        /// shared), its section list made.
        case service
    }

    /// A module's request as the service holds it when its judge starts (``BenchOrder/service``):
    /// the module file and the claimed bytes each received into a buffer of their own, the
    /// claimed sections decoded (new strings: `AuthorizeModule.sections`), the file hashed whole
    /// by the signature check.
    struct ReceivedRequest {
        var module: [UInt8]
        var text: [UInt8]
        var initText: [UInt8]?
        var sections: [ClaimedSection]

        init(_ m: CapturedModule) {
            module = m.ko.withUnsafeBytes { [UInt8]($0) }
            text = m.claim.textBytes.withUnsafeBytes { [UInt8]($0) }
            initText = m.claim.initTextBytes.map { t in t.withUnsafeBytes { [UInt8]($0) } }
            sections = m.claim.sections.map { ClaimedSection(name: String(decoding: Array($0.name.utf8), as: UTF8.self), address: $0.address) }
            let digest = module.withUnsafeBytes { Digest.sha256($0) }
            precondition(digest.bytes.count == 32)
        }

        /// The module with its claim made from the received request as `ExplainerJudge.judge`
        /// makes it: the executable bytes those the request received (shared, not copied, as the
        /// judge borrows the request buffer's), the sections as listed.
        func judged(_ m: CapturedModule) -> CapturedModule {
            var claim = m.claim
            claim.textBytes = ClaimBytes(text)
            claim.initTextBytes = initText.map { ClaimBytes($0) }
            claim.sections = sections.map { ClaimedSection(name: $0.name, address: $0.address) }
            return CapturedModule(name: m.name, ko: module, claim: claim)
        }
    }

    /// Replays the whole boot `benchRepetitions` times in each ``BenchOrder`` (a pass of each per
    /// pass number, interleaved: the same minutes; which goes first alternates), timing the engine
    /// and SHA-256 over each module's executable bytes in the same pass, on this thread's CPU
    /// clock (a loaded machine then slows both alike instead of charging other processes' time to
    /// either).
    public static func benchmark(_ boot: CaptureBoot, options o: ExplainRunOptions) -> BenchFigures {
        var f = BenchFigures()
        var modules: [CapturedModule] = []
        for name in boot.availableModules { if let m = try? boot.module(name) { modules.append(m) } }
        // The timed modules, in load order (a module's executable bytes: its claimed region).
        for m in modules where o.only?.contains(m.name) ?? true {
            f.modules.append(.init(name: m.name, executableBytes: m.claim.textBytes.count, engineBest: .infinity, sha256Best: .infinity))
        }
        for pass in 0..<max(1, o.benchRepetitions) {
            let orders: [BenchOrder] = pass % 2 == 0 ? [.cold, .service] : [.service, .cold]
            for order in orders {
                var replay = CaptureReplay(boot: boot)
                var engine = 0.0, sha = 0.0, claims = 0.0, bytes = 0, timed = 0, allowed = 0
                for captured in modules {
                    var m = captured
                    var t0 = 0.0, made = 0.0
                    if order == .service {
                        let received = ReceivedRequest(captured)
                        t0 = MonotonicClock.threadCPUSeconds()
                        m = received.judged(captured)
                        made = MonotonicClock.threadCPUSeconds() - t0
                    } else {
                        t0 = MonotonicClock.threadCPUSeconds()
                    }
                    let step = replay.step(m)
                    let t1 = MonotonicClock.threadCPUSeconds()
                    let d = m.claim.textBytes.withUnsafeBytes { Digest.sha256($0) }
                    let t2 = MonotonicClock.threadCPUSeconds()
                    precondition(d.bytes.count == 32)
                    if let set = o.only, !set.contains(m.name) { continue }
                    engine += t1 - t0
                    sha += t2 - t1
                    claims += made
                    bytes += step.executableBytes
                    if step.result.verdict.isAllowed { allowed += 1 }
                    // The module's best of each side (the same modules, in the same order, every pass).
                    switch order {
                    case .cold:
                        f.modules[timed].engineBest = min(f.modules[timed].engineBest, t1 - t0)
                        f.modules[timed].sha256Best = min(f.modules[timed].sha256Best, t2 - t1)
                    case .service:
                        f.modules[timed].engineServiceOrderBest = min(f.modules[timed].engineServiceOrderBest, t1 - t0)
                        f.modules[timed].sha256ServiceOrderBest = min(f.modules[timed].sha256ServiceOrderBest, t2 - t1)
                    }
                    timed += 1
                }
                switch order {
                case .cold:
                    f.engine.append(engine)
                    f.sha256.append(sha)
                    if pass == 0 { f.executableBytes = bytes; f.allowed = allowed }
                case .service:
                    f.engineServiceOrder.append(engine)
                    f.sha256ServiceOrder.append(sha)
                    f.claimMaking.append(claims)
                    if pass == 0 { f.allowedServiceOrder = allowed }
                }
            }
        }
        return f
    }

    /// Bytes as space-separated lower-case hex pairs ("0f 1f 44").
    static func hexPairs(_ b: [UInt8]) -> String { b.map { Hex.number($0, width: 2) }.joined(separator: " ") }

    /// The line format predates the JSON writer: double quotes in reasons become single quotes (the
    /// JSON writer escapes everything else: names come from the capture's load-order.txt).
    static func quoteless(_ s: String) -> String { String(s.map { $0 == "\"" ? "'" : $0 }) }

    static func fmt(_ v: Double) -> String { "\((v * 1000).rounded() / 1000)" }
}
