// SPDX-License-Identifier: Apache-2.0
//
// `explain --bench` reports, beside the whole pass against SHA-256, each module's best pass of
// both sides, the least-squares line through them (seconds fixed per module, seconds per byte)
// and the modules furthest over the target ratio: where a ratio comes from (issue 13), and the
// host it was taken on (the ratio moves with the host). These
// check that the figures are computed and reported, never their speed (figures are a
// benchmark's, not a test's).

import _ExecGateInternals
import ExecGateCapture
import ExecGateTestSupport
import XCTest

final class ExplainBenchModulesTests: XCTestCase {
    typealias Figures = ExplainRun.BenchFigures

    static func module(_ name: String, _ bytes: Int, _ engine: Double, _ sha: Double) -> Figures.ModuleFigure {
        .init(name: name, executableBytes: bytes, engineBest: engine, sha256Best: sha)
    }

    /// The fit recovers a line the modules lie on exactly, and is nil where no line is defined.
    func testFitRecoversAnExactLineAndNeedsTwoSizes() throws {
        var f = Figures()
        f.modules = [4096, 8192, 65536, 1 << 20].enumerated().map { i, n in
            Self.module("m\(i)", n, 20e-6 + 2e-9 * Double(n), 1e-9 * Double(n))
        }
        let fit = try XCTUnwrap(f.fit)
        XCTAssertEqual(fit.perModule, 20e-6, accuracy: 1e-12)
        XCTAssertEqual(fit.perByte, 2e-9, accuracy: 1e-15)
        f.modules = [Self.module("one", 4096, 1e-5, 1e-6)]
        XCTAssertNil(f.fit, "one module")
        f.modules = [Self.module("a", 4096, 1e-5, 1e-6), Self.module("b", 4096, 2e-5, 1e-6)]
        XCTAssertNil(f.fit, "two modules of one size")
        f.modules = []
        XCTAssertNil(f.fit)
    }

    /// The modules over the target, the most excess time first; none at or under it.
    func testAboveTargetOrdersByExcessTime() {
        var f = Figures()
        f.modules = [
            Self.module("under", 8192, 2.9e-3, 1e-3),      // 2.9×: not over
            Self.module("at", 8192, 3e-3, 1e-3),           // 3×: not over
            Self.module("small-ratio", 8192, 4e-3, 1e-3),  // excess 1 ms
            Self.module("tiny-but-slow", 4096, 1.2e-4, 1e-5),  // 12×, excess 0.09 ms
            Self.module("large", 1 << 20, 1.5e-2, 4e-3),   // excess 3 ms
        ]
        XCTAssertEqual(f.aboveTarget(3, limit: 5).map { $0.name }, ["large", "small-ratio", "tiny-but-slow"])
        XCTAssertEqual(f.aboveTarget(3, limit: 1).map { $0.name }, ["large"])
        XCTAssertTrue(f.moduleLine.contains("3 of 5 modules above 3.0× their SHA-256 time"), f.moduleLine)
        XCTAssertTrue(f.moduleLine.hasPrefix("per module (best pass of each, 5 modules): "), f.moduleLine)
        f.modules = [Self.module("a", 4096, 1e-6, 1e-6), Self.module("b", 8192, 2e-6, 1e-6)]
        XCTAssertTrue(f.moduleLine.contains("no module above 3.0× its SHA-256 time"), f.moduleLine)
    }

    /// The size groups: each module in the first group whose bound it does not exceed (16 KiB and
    /// 64 KiB inclusive), sums of both sides in both orders, every group listed; a group with a
    /// module that has no service-order pass has no service-order sums; the text names only the
    /// non-empty groups, with their ratios.
    func testBySizeGroupsAtTheBoundsAndSums() {
        var f = Figures()
        func m(_ name: String, _ bytes: Int, _ e: Double, _ h: Double, _ es: Double, _ hs: Double) -> Figures.ModuleFigure {
            .init(name: name, executableBytes: bytes, engineBest: e, sha256Best: h, engineServiceOrderBest: es, sha256ServiceOrderBest: hs)
        }
        f.modules = [
            m("a", 4096, 4e-5, 5e-6, 3e-5, 5e-6),
            m("b", 16384, 8e-5, 1e-5, 7e-5, 1e-5),      // at the first bound: small
            m("c", 16385, 1e-4, 2e-5, 9e-5, 2e-5),      // one byte over: medium
            m("d", 65536, 3e-4, 1e-4, 2e-4, 1e-4),      // at the second bound: medium
            m("e", 65537, 1e-3, 4e-4, 9e-4, 4e-4),      // larger
        ]
        let g = f.bySize
        XCTAssertEqual(g.map(\.maxBytes), [16384, 65536, nil])
        XCTAssertEqual(g.map(\.modules), [2, 2, 1])
        XCTAssertEqual(g.map(\.executableBytes), [20480, 81921, 65537])
        XCTAssertEqual(g[0].engine, 1.2e-4, accuracy: 1e-12)
        XCTAssertEqual(g[0].sha256, 1.5e-5, accuracy: 1e-12)
        XCTAssertEqual(g[1].engineServiceOrder ?? -1, 2.9e-4, accuracy: 1e-12)
        XCTAssertEqual(g[2].sha256ServiceOrder ?? -1, 4e-4, accuracy: 1e-12)
        XCTAssertEqual(g.reduce(0) { $0 + $1.modules }, f.modules.count)
        let line = f.sizeLine
        XCTAssertTrue(line.hasPrefix("by executable size (sums of the modules' best passes): ≤ 16 KiB: 2 modules, 20480 B, 0.12 ms, 8.0× their SHA-256 (service order 6.667×); "), line)
        XCTAssertTrue(line.contains("; 16–64 KiB: 2 modules, 81921 B, 0.4 ms, 3.333× their SHA-256 (service order 2.417×); "), line)
        XCTAssertTrue(line.hasSuffix("; > 64 KiB: 1 module, 65537 B, 1.0 ms, 2.5× their SHA-256 (service order 2.25×)"), line)

        // Only a medium module: its group is named by both bounds.
        f.modules = [m("c", 16385, 1e-4, 2e-5, 9e-5, 2e-5)]
        XCTAssertEqual(f.sizeLine, "by executable size (sums of the modules' best passes): 16–64 KiB: 1 module, 16385 B, 0.1 ms, 5.0× their SHA-256 (service order 4.5×)")

        // Only large modules, one without a service-order pass: the empty groups are listed (0)
        // but not named; the group's service-order sums are unknown.
        f.modules = [m("x", 1 << 20, 2e-3, 1e-3, 1.5e-3, 1e-3), .init(name: "y", executableBytes: 1 << 21, engineBest: 4e-3, sha256Best: 2e-3)]
        XCTAssertEqual(f.bySize.map(\.modules), [0, 0, 2])
        XCTAssertNil(f.bySize[2].engineServiceOrder)
        XCTAssertEqual(f.sizeLine, "by executable size (sums of the modules' best passes): > 64 KiB: 2 modules, 3145728 B, 6.0 ms, 2.0× their SHA-256 (service order -×)")
        f.modules = []
        XCTAssertEqual(f.sizeLine, "by executable size (sums of the modules' best passes): no module")
    }

    /// The host a bench names: the first `model name` and `flags` lines of `/proc/cpuinfo` as the
    /// x86 kernel prints them (`show_cpuinfo()`: a tab-padded key, ": ", the value), `sha_ni` a
    /// whole flag (never a prefix of another), unknown when a line is missing.
    func testBenchHostReadsTheModelAndTheSHAFlag() {
        let cpu = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
            + "flags\t\t: fpu vme sse2 avx2 sha_ni vaes\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
        XCTAssertEqual(ExplainRun.BenchHost.parse(cpuinfo: cpu, onlineCPUs: 2),
                       .init(cpuModel: "AMD EPYC 9R14 96-Core Processor", shaInstructions: true, onlineCPUs: 2))
        let noSHA = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\nflags\t\t: fpu sha_nix avx2 xsha_ni\n"
        XCTAssertEqual(ExplainRun.BenchHost.parse(cpuinfo: noSHA, onlineCPUs: 1).shaInstructions, false, "only the whole flag")
        let bare = ExplainRun.BenchHost.parse(cpuinfo: "", onlineCPUs: 4)
        XCTAssertEqual(bare, .init(cpuModel: nil, shaInstructions: nil, onlineCPUs: 4))
        XCTAssertTrue(bare.line.hasPrefix("host: unknown CPU, 4 CPUs online, SHA instructions (sha_ni): unknown"), bare.line)
        XCTAssertEqual(bare.json, .object([("cpu_model", .null), ("online_cpus", .uint(4)), ("sha_ni", .null)]))
    }

    static var fixtureCapture: String { Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a" }

    /// The real binary on the committed 9-module capture: `--json` carries every timed module, in
    /// load order, each with both best times; their sum is at most the best pass (each module's
    /// best is its own); the fit is there for 9 modules of several sizes and null for one module;
    /// the text output has the per-module line.
    func testExplainBenchReportsEveryModuleAndTheFit() throws {
        let dir = Fixtures.temporaryDirectory()
        let r = Fixtures.runExecgate(rawArguments: ["explain", Self.fixtureCapture, "--bench", "--passes", "3", "--json"].map { Array($0.utf8) },
                                     in: dir, seconds: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let bench = try XCTUnwrap(r.stdout.split(separator: "\n").compactMap { try? JSONReader.parse(Array($0.utf8)) }.compactMap { $0["bench"] }.first,
                                  r.stdout)
        guard case .array(let modules)? = bench["modules"] else { return XCTFail("no modules: \(r.stdout)") }
        let order = try String(contentsOfFile: Self.fixtureCapture + "/../load-order.txt", encoding: .utf8)
            .split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        XCTAssertEqual(modules.compactMap { m -> String? in if case .string(let s)? = m["name"] { return s } else { return nil } }, order)
        var sum = 0.0, serviceSum = 0.0, bytes = 0.0
        for m in modules {
            let e = try XCTUnwrap(BenchPlacementTests.number(m["explain_best_s"])), h = try XCTUnwrap(BenchPlacementTests.number(m["sha256_best_s"]))
            let s = try XCTUnwrap(BenchPlacementTests.number(m["explain_service_order_best_s"]), "\(m)")
            let hs = try XCTUnwrap(BenchPlacementTests.number(m["sha256_service_order_best_s"]), "\(m)")
            XCTAssertGreaterThan(e, 0, "\(m)")
            XCTAssertGreaterThan(h, 0, "\(m)")
            XCTAssertGreaterThan(s, 0, "\(m)")
            XCTAssertGreaterThan(hs, 0, "\(m)")
            sum += e
            serviceSum += s
            bytes += try XCTUnwrap(BenchPlacementTests.number(m["executable_bytes"]))
        }
        let best = try XCTUnwrap(BenchPlacementTests.number(bench["explain_best_s"]))
        XCTAssertLessThanOrEqual(sum, best * (1 + 1e-9), "per-module bests sum above the best pass")
        // The passes in the service's order: as many, every module allowed in both orders (a
        // claim made wrongly from the received request would be denied early and read fast),
        // their own best with the claims' making inside it, the modules' bests under it.
        let service = try XCTUnwrap(bench["service_order"], "\(bench)")
        XCTAssertEqual(BenchPlacementTests.number(service["passes"]), 3, "\(service)")
        XCTAssertEqual(BenchPlacementTests.number(bench["passes"]), 3, "\(bench)")
        XCTAssertEqual(BenchPlacementTests.number(bench["allowed"]), Double(order.count), "\(bench)")
        XCTAssertEqual(BenchPlacementTests.number(service["allowed"]), Double(order.count), "\(service)")
        let serviceBest = try XCTUnwrap(BenchPlacementTests.number(service["explain_best_s"]))
        let making = try XCTUnwrap(BenchPlacementTests.number(service["claim_making_best_s"]), "\(service)")
        XCTAssertGreaterThan(making, 0, "\(service)")
        XCTAssertLessThan(making, serviceBest, "\(service)")
        XCTAssertGreaterThan(try XCTUnwrap(BenchPlacementTests.number(service["sha256_best_s"])), 0, "\(service)")
        XCTAssertLessThanOrEqual(serviceSum, serviceBest * (1 + 1e-9), "per-module bests (service order) sum above the best pass")
        XCTAssertEqual(bytes, try XCTUnwrap(BenchPlacementTests.number(bench["executable_bytes"])))
        XCTAssertNotNil(BenchPlacementTests.number(bench["fit"]?["per_byte_s"]), "\(bench)")
        // The size groups: every module in one, their sums those of the modules' bests.
        guard case .array(let groups)? = bench["by_size"] else { return XCTFail("no by_size: \(bench)") }
        XCTAssertEqual(groups.count, 3, "\(bench)")
        XCTAssertEqual(groups.compactMap { BenchPlacementTests.number($0["modules"]) }.reduce(0, +), Double(order.count), "\(bench)")
        XCTAssertEqual(groups.compactMap { BenchPlacementTests.number($0["executable_bytes"]) }.reduce(0, +), bytes, "\(bench)")
        XCTAssertEqual(groups.compactMap { BenchPlacementTests.number($0["explain_s"]) }.reduce(0, +), sum, accuracy: sum * 1e-9, "\(bench)")
        XCTAssertEqual(groups.compactMap { BenchPlacementTests.number($0["explain_service_order_s"]) }.reduce(0, +), serviceSum, accuracy: serviceSum * 1e-9, "\(bench)")
        XCTAssertEqual(groups.map { BenchPlacementTests.number($0["max_executable_bytes"]) }, [16384, 65536, nil], "\(bench)")
        XCTAssertEqual(groups.last?["max_executable_bytes"], .null, "\(bench)")
        // The host named is this machine, as the library reads it (the binary runs here too).
        let host = ExplainRun.BenchHost.current()
        XCTAssertEqual(bench["host"], host.json, "\(bench)")
        XCTAssertNotNil(host.shaInstructions, "an x86 host's /proc/cpuinfo has a flags line")
        XCTAssertNotNil(host.cpuModel, "an x86 host's /proc/cpuinfo has a model name")

        let one = Fixtures.runExecgate(rawArguments: ["explain", Self.fixtureCapture, "--only", "llc", "--bench", "--passes", "1", "--json"].map { Array($0.utf8) },
                                       in: dir, seconds: 120)
        XCTAssertEqual(one.status, 0, one.stderr)
        let b1 = try XCTUnwrap(one.stdout.split(separator: "\n").compactMap { try? JSONReader.parse(Array($0.utf8)) }.compactMap { $0["bench"] }.first)
        guard case .array(let m1)? = b1["modules"] else { return XCTFail("no modules: \(one.stdout)") }
        XCTAssertEqual(m1.count, 1)
        XCTAssertEqual(b1["fit"], .null)

        let text = Fixtures.runExecgate(rawArguments: ["explain", Self.fixtureCapture, "--bench", "--passes", "1"].map { Array($0.utf8) },
                                        in: dir, seconds: 120)
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("per module (best pass of each, \(order.count) modules): "), text.stdout)
        XCTAssertTrue(text.stdout.contains("\nin the service's order (1 passes interleaved with those above: "), text.stdout)
        XCTAssertTrue(text.stdout.contains("\n" + host.line + "\n"), text.stdout)
        XCTAssertTrue(text.stdout.contains("\nby executable size (sums of the modules' best passes): "), text.stdout)
    }
}
