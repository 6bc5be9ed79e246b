// SPDX-License-Identifier: Apache-2.0
//
// The guest registry's facts budget against the memory the service VM has (docs/protocol.md,
// "Limits"): a service set up as the service VM's PID 1 sets itself up for its MemAvailable
// (GuestService.configuration: `MemoryBudget.limits()` into `ServiceConfiguration.portLimits`)
// must refuse registrations before the facts it holds, at their real RSS, no longer fit beside the
// request bodies it admits at theirs.

import ExecGateCapture
import ExecGateHost
import ExecGateTestSupport
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class FactsBudgetTests: XCTestCase {
    static func rss() -> Int { procStatusBytes("VmRSS") }

    /// One distinct "build": `_stext`/`_etext` and `count` exported text symbols with short distinct
    /// names (4 characters base 36, made distinct per build by `g`): few counted bytes each, and the
    /// most held memory per counted byte of the compositions measured (each export is held in the
    /// build's export tables).
    static func build(_ g: Int, count: Int = 20_000) -> RegisterGuest {
        var syms = [KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, type: UInt8(ascii: "T"), exported: false),
                    KernelSymbol(name: "_etext", address: 0xffff_ffff_8200_0000, type: UInt8(ascii: "T"), exported: false)] + Fixtures.syntheticImageBounds
        for i in 0..<count {
            syms.append(KernelSymbol(name: String(g * count + i + 50_000, radix: 36), address: 0xffff_ffff_8100_1000 + UInt64(i) * 16,
                                     type: UInt8(ascii: "T"), exported: true))
        }
        return RegisterGuest(guestID: "hostile-\(g)", symbols: syms)
    }

    /// A 128 MiB service VM (the default until 2026-12-07: `MemAvailable` 89 MiB at start,
    /// ServiceVM/README.md). A hostile VMM registers distinct builds one after another. The registry must refuse
    /// (`unavailable`, nothing kept) before its RSS growth exceeds what the VM has beside the
    /// admitted request bodies at their cost (available − 2 × body budget); the attack stops by
    /// itself once the growth passed everything the VM has (the OOM killer's point).
    func testHostileBuildsStayWithinTheMemoryBesideTheBodies() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let memory = MemoryBudget(availableBytes: 89 << 20)
        var c = ServiceConfiguration(listen: [], serverName: "facts-budget", logger: logger)
        c.portLimits = memory.limits()
        c.threads = 1
        let service = try await VerifierService.start(c)
        let room = memory.availableBytes - MemoryBudget.bytesPerBodyByte * memory.limits().bufferBudget
        let before = Self.rss()
        var kept = 0
        var refusal: (WireErrorCode, String)? = nil
        var growth = 0
        for g in 0..<200 {
            let r = Self.build(g)
            if case .refused(let code, let why) = service.verifier.guests.register(r) {
                refusal = (code, why)
                XCTAssertNil(service.verifier.guests.session(r.guestID), "a refused registration left a guest behind")
                break
            }
            kept += 1
            growth = Self.rss() - before
            if growth > memory.availableBytes { break }
        }
        print("facts budget: \(kept) hostile builds kept, RSS +\(growth >> 20) MiB (room beside the bodies \(room >> 20) MiB, charged \(service.verifier.guests.chargedBytes >> 20) MiB of \(service.verifier.guests.maximumSymbolBytes >> 20) MiB)")
        XCTAssertLessThan(growth, room, "the registry held more facts than the VM has beside the request bodies it admits")
        if let (code, why) = refusal {
            XCTAssertEqual(code, .unavailable)
            XCTAssertTrue(why.contains("budget"), why)
        } else {
            XCTFail("no registration was refused: \(kept) builds kept")
        }
        XCTAssertEqual(service.verifier.guests.count, kept)
        await service.shutdown()
    }

    static var corpus: String { ProcessInfo.processInfo.environment["EXECGATE_CORPUS"] ?? "/work/shared/corpus" }

    /// Honest use in a 128 MiB VM (the default until 2026-12-07, the tightest a real build fits
    /// in; the default is now 160 MiB, ≈ 27 MiB of facts): the shared corpus's build (Debian 6.1,
    /// both boots: one build, one with KASLR) and 200 more guests of it register in a service set
    /// up for the 128 MiB VM, all on one shared copy; a second, distinct build of the same size is
    /// refused `unavailable` with the figures and leaves nothing behind.
    func testOneRealBuildAndItsGuestsFitTheDefaultVM() async throws {
        for boot in ["nokaslr-a", "kaslr"] where access(Self.corpus + "/" + boot + "/kallsyms.txt", R_OK) != 0 {
            throw XCTSkip("shared corpus boot \(boot) not present")
        }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let memory = MemoryBudget(availableBytes: 89 << 20)
        var c = ServiceConfiguration(listen: [], serverName: "facts-budget", logger: logger)
        c.portLimits = memory.limits()
        c.threads = 1
        let service = try await VerifierService.start(c)
        let guests = service.verifier.guests
        let a = try CaptureBoot.load(Self.corpus + "/nokaslr-a").registration(guestID: "a")
        let b = try CaptureBoot.load(Self.corpus + "/kaslr").registration(guestID: "b")
        let before = Self.rss()
        guard case .registered = guests.register(a) else { await service.shutdown(); return XCTFail("the corpus build was refused") }
        let one = Self.rss() - before
        guard case .registered = guests.register(b) else { await service.shutdown(); return XCTFail("the KASLR boot of the build was refused") }
        for i in 0..<200 {
            var r = a
            r.guestID = "guest-\(i)"
            guard case .registered = guests.register(r) else { await service.shutdown(); return XCTFail("guest \(i) of the build was refused") }
        }
        XCTAssertEqual(guests.count, 202)
        XCTAssertEqual(guests.sharedBuilds.count, 1, "guests of one build share one copy")
        print("facts budget: one Debian 6.1 build charged \(guests.chargedBytes) bytes with 202 guests (budget \(guests.maximumSymbolBytes)), RSS +\(one >> 20) MiB for the first")
        // Another build (every address moved by 64 bytes: another symbols digest) does not fit.
        var other = a
        other.guestID = "other"
        other.symbols = a.symbols.map { KernelSymbol(name: $0.name, address: $0.address &+ 64, type: $0.type, exported: $0.exported) }
        guard case .refused(let code, let why) = guests.register(other) else { await service.shutdown(); return XCTFail("a second build was kept") }
        XCTAssertEqual(code, .unavailable)
        XCTAssertTrue(why.contains("-byte budget"), why)
        XCTAssertNil(guests.session("other"))
        XCTAssertEqual(guests.sharedBuilds.count, 1)
        await service.shutdown()
    }

    /// The charge against what each composition holds: distinct builds of one composition
    /// registered until a 24 MiB budget refuses one; the RSS growth stays within the cost factor
    /// MemoryBudget assumes (3/2 of the charge), with 8 MiB of slack for the allocator.
    func testChargeCoversWhatEachCompositionHolds() {
        func text(_ n: String, _ a: UInt64, exported: Bool = false) -> KernelSymbol { KernelSymbol(name: n, address: a, type: UInt8(ascii: "T"), exported: exported) }
        let compositions: [(String, (Int) -> [KernelSymbol])] = [
            ("short exported names", { g in (0..<20_000).map { text(String(g * 20_000 + $0 + 50_000, radix: 36), 0xffff_ffff_8100_1000 + UInt64($0) * 16, exported: true) } }),
            ("long exported names", { g in (0..<20_000).map { text("abcdefghijklmn_\(g)_\($0)", 0xffff_ffff_8100_1000 + UInt64($0) * 16, exported: true) } }),
            ("tracepoint key, trampoline, iterator", { g in (0..<8_000).flatMap { i -> [KernelSymbol] in
                let x = String(g * 8_000 + i + 50_000, radix: 36), a = 0xffff_ffff_8100_1000 + UInt64(i) * 32
                return [KernelSymbol(name: "__SCK__tp_func_" + x, address: a, type: UInt8(ascii: "d"), exported: true),
                        text("__SCT__tp_func_" + x, a + 8, exported: true), text("__traceiter_" + x, a + 16)] } }),
            ("short text names", { g in (0..<50_000).map { KernelSymbol(name: String(g * 50_000 + $0 + 50_000, radix: 36), address: 0xffff_ffff_8100_1000 + UInt64($0) * 16, type: UInt8(ascii: "t"), exported: false) } }),
            ("empty names", { g in (0..<50_000).map { KernelSymbol(name: "", address: 0xffff_ffff_8100_1000 + UInt64($0) * 16 + UInt64(g), type: UInt8(ascii: "t"), exported: false) } }),
        ]
        for (label, make) in compositions {
            let registry = GuestRegistry(maximumGuests: 512, maximumSymbolBytes: 24 << 20)
            let before = Self.rss()
            var kept = 0
            for g in 0..<400 {
                let syms = [text("_stext", 0xffff_ffff_8100_0000), text("_etext", 0xffff_ffff_8200_0000)] + Fixtures.syntheticImageBounds + make(g)
                if case .refused(let code, let why) = registry.register(RegisterGuest(guestID: "g\(g)", symbols: syms)) {
                    XCTAssertEqual(code, .unavailable, why)
                    break
                }
                kept += 1
            }
            let growth = Self.rss() - before
            print("facts charge: \(label): \(kept) builds, charged \(registry.chargedBytes >> 10) KiB, RSS +\(growth >> 10) KiB (\(String(format: "%.2f", Double(growth) / Double(max(1, registry.chargedBytes)))) per charged byte)")
            XCTAssertGreaterThan(kept, 1, label)
            XCTAssertLessThan(growth, MemoryBudget.factsCost(registry.chargedBytes) + (8 << 20), label)
        }
    }
}
