// SPDX-License-Identifier: Apache-2.0
//
// Round 5 attacks on the facts budget (docs/protocol.md "Limits": facts charged at what they
// hold, the service VM's budget from MemAvailable): compositions of a registration whose held
// memory the charge could undercount. Measured as FactsBudgetTests measures (RSS growth against
// the room beside the admitted bodies; generous margins, nothing timed).

import ExecGateHost
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging
import XCTest

final class FactsBudgetRound5Tests: XCTestCase {
    static let key: UInt64 = 0xffff_ffff_8100_0800
    static func target(_ i: Int) -> UInt64 { 0xffff_ffff_8100_1000 + UInt64(i) * 16 }

    /// One build whose one static-call trampoline address is named `__SCT__tp_func_<i>` by
    /// `count` symbols, each with its `__traceiter_<i>`: StaticCallTrust.coreTargets gives that one
    /// key `count` trusted targets (all charged with the build's symbols).
    static func build(guestID: String, count: Int, ownKey: Bool) -> RegisterGuest {
        func text(_ n: String, _ a: UInt64) -> KernelSymbol { KernelSymbol(name: n, address: a, type: UInt8(ascii: "T"), exported: false) }
        var syms = [text("_stext", 0xffff_ffff_8100_0000), text("_etext", 0xffff_ffff_8200_0000)]
        for i in 0..<count {
            let n = String(i, radix: 36)
            syms.append(text("__SCT__tp_func_" + n, key))
            syms.append(text("__traceiter_" + n, target(i)))
        }
        return RegisterGuest(guestID: guestID, symbols: syms,
                             staticCallKeys: ownKey ? [StaticCallKeyFact(key: key, current: 0)] : [])
    }

    /// HOLE: a guest's own `static_call_key` fact for a key the build already trusts targets for
    /// is held as a copy of the build's whole target set plus its own (SlidStaticCallTargets:
    /// "an own entry for a key replaces the shared one"), but GuestRegistry.guestBytes charged it
    /// 16 × (2 + allowed) bytes. One build (charged ~5.6 MiB) whose one trampoline has 16,000
    /// trusted targets, then guests of that one shared build each naming that key with no
    /// allowed target and NULL as its current one (charged ~50 bytes each, holding ~260 KiB each): in a service set up for the
    /// 128 MiB VM, the guests' copies grow RSS past the room beside the bodies while the registry
    /// charges a few KiB for them.
    func testOwnStaticCallKeysAreChargedAtTheTargetsTheyHold() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let memory = MemoryBudget(availableBytes: 89 << 20)
        var c = ServiceConfiguration(listen: [], serverName: "facts-budget-5", logger: logger)
        c.portLimits = memory.limits()
        c.threads = 1
        let service = try await VerifierService.start(c)
        let guests = service.verifier.guests
        let room = memory.availableBytes - MemoryBudget.bytesPerBodyByte * memory.limits().bufferBudget
        let first = Self.build(guestID: "hostile-0", count: 16_000, ownKey: false)
        guard case .registered = guests.register(first) else { await service.shutdown(); return XCTFail("the build was refused") }
        let before = FactsBudgetTests.rss()
        var kept = 0
        var growth = 0
        var refusal: (WireErrorCode, String)? = nil
        let template = Self.build(guestID: "", count: 16_000, ownKey: true)
        for g in 1..<GuestRegistry.defaultMaximumGuests {
            var r = template
            r.guestID = "hostile-\(g)"
            if case .refused(let code, let why) = guests.register(r) {
                refusal = (code, why)
                XCTAssertNil(guests.session(r.guestID), "a refused registration left a guest behind")
                break
            }
            kept += 1
            growth = FactsBudgetTests.rss() - before
            if growth > memory.availableBytes { break }
        }
        print("facts budget: \(kept) guests with an own key of 16,000 targets, RSS +\(growth >> 20) MiB (room beside the bodies \(room >> 20) MiB, charged \(guests.chargedBytes >> 20) MiB of \(guests.maximumSymbolBytes >> 20) MiB)")
        XCTAssertLessThan(growth, room, "the registry held more facts than the VM has beside the request bodies it admits")
        if let (code, why) = refusal {
            XCTAssertEqual(code, .unavailable)
            XCTAssertTrue(why.contains("budget"), why)
        } else {
            XCTFail("no registration was refused: \(kept) guests kept")
        }
        await service.shutdown()
    }

    /// HOLE: a guest's `pv_ops` (and CPU capability words) are charged once, at the bytes they
    /// arrive in (GuestRegistry.guestBytes), but held twice: the session keeps its registration
    /// (only the symbol records dropped) with the raw bytes, and its facts keep the u64 entries
    /// (GuestFactsBuilder.pvOpsEntries). Guests of one small build, each with 1 MiB of `pv_ops`
    /// (NULL entries, plausible), registered until a 24 MiB budget refuses one: RSS grew about
    /// 2 bytes a charged byte, past the 3/2 MemoryBudget sizes the facts budget by.
    func testPvOpsAreChargedAtWhatTheGuestHolds() {
        let registry = GuestRegistry(maximumSymbolBytes: 24 << 20)
        let small = Self.build(guestID: "small-0", count: 4, ownKey: false)
        guard case .registered = registry.register(small) else { return XCTFail("the build was refused") }
        let before = FactsBudgetTests.rss()
        var kept = 0
        for g in 1..<200 {
            var r = small
            r.guestID = "pvops-\(g)"
            r.pvOps = [UInt8](repeating: 0, count: 1 << 20)  // a fresh buffer, as a decoded body gives
            guard case .registered = registry.register(r) else { break }
            kept += 1
        }
        let growth = FactsBudgetTests.rss() - before
        print("facts charge: pv_ops: \(kept) guests, charged \(registry.chargedBytes >> 10) KiB, RSS +\(growth >> 10) KiB (\(String(format: "%.2f", Double(growth) / Double(max(1, registry.chargedBytes)))) per charged byte)")
        XCTAssertGreaterThan(kept, 0)
        XCTAssertLessThan(growth, MemoryBudget.factsCost(registry.chargedBytes) + (8 << 20), "pv_ops held beyond the cost the facts budget assumes")
    }
}
