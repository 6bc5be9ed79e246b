// SPDX-License-Identifier: Apache-2.0
//
// The guest registry's facts budget against the memory the service VM has (docs/protocol.md,
// "Limits"): a service set up as the service VM's PID 1 sets itself up for its MemAvailable
// (GuestService.configuration: `MemoryBudget.limits()` into `ServiceConfiguration.portLimits`)
// must refuse registrations before the facts it holds, at their real RSS, no longer fit beside the
// request bodies it admits at theirs.

import ExecGateHost
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import XCTest

final class FactsBudgetTests: XCTestCase {
    static func rss() -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0) << 10
        }
        return 0
    }

    /// One distinct "build": `_stext`/`_etext` and `count` exported text symbols with short distinct
    /// names (4 characters base 36, made distinct per build by `g`): few counted bytes each, and the
    /// most held memory per counted byte of the compositions measured (each export is held in the
    /// build's export tables).
    static func build(_ g: Int, count: Int = 20_000) -> RegisterGuest {
        var syms = [KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, type: UInt8(ascii: "T"), exported: false),
                    KernelSymbol(name: "_etext", address: 0xffff_ffff_8200_0000, type: UInt8(ascii: "T"), exported: false)]
        for i in 0..<count {
            syms.append(KernelSymbol(name: String(g * count + i + 50_000, radix: 36), address: 0xffff_ffff_8100_1000 + UInt64(i) * 16,
                                     type: UInt8(ascii: "T"), exported: true))
        }
        return RegisterGuest(guestID: "hostile-\(g)", symbols: syms)
    }

    /// The default service VM (128 MiB: `MemAvailable` 89 MiB at start, ServiceVM/README.md). A
    /// hostile VMM registers distinct builds one after another. The registry must refuse
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
}
