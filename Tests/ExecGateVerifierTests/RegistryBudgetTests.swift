// SPDX-License-Identifier: Apache-2.0
//
// The guest registry is bounded: a peer registering guest after guest (or one huge symbol table
// after another) gets `unavailable` with the figures, and nothing is kept (issue: bounded service).

import ExecGateVerifier
import ExecGateWire
import Foundation
import XCTest

final class RegistryBudgetTests: XCTestCase {
    func registration(_ id: String, extraSymbols: Int, reset: Bool = false) -> RegisterGuest {
        var syms = [KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, type: UInt8(ascii: "T"), exported: false),
                    KernelSymbol(name: "_etext", address: 0xffff_ffff_8200_0000, type: UInt8(ascii: "T"), exported: false)]
        for i in 0..<extraSymbols {
            syms.append(KernelSymbol(name: "filler_\(i)", address: 0xffff_ffff_8100_1000 + UInt64(i) * 16, type: UInt8(ascii: "t"), exported: false))
        }
        var r = RegisterGuest(guestID: id, symbols: syms)
        r.reset = reset
        return r
    }

    func code(_ reg: GuestRegistry.Registration) -> WireErrorCode? {
        if case .refused(let c, _) = reg { return c }
        return nil
    }

    func testGuestCountAndSymbolBytesAreCapped() {
        let registry = GuestRegistry(maximumGuests: 2, maximumSymbolBytes: 4000)
        XCTAssertNil(code(registry.register(registration("g1", extraSymbols: 10))))
        XCTAssertNil(code(registry.register(registration("g2", extraSymbols: 10))))
        // A third guest is over the guest cap: refused, not kept.
        guard case .refused(let c3, let why3) = registry.register(registration("g3", extraSymbols: 0)) else { return XCTFail("third guest kept") }
        XCTAssertEqual(c3, .unavailable)
        XCTAssertTrue(why3.contains("limit is 2"), why3)
        XCTAssertNil(registry.session("g3"))
        XCTAssertEqual(registry.count, 2)
        // A reset of a live guest is not a new guest; but its new symbols must fit the budget.
        XCTAssertNil(code(registry.register(registration("g1", extraSymbols: 20, reset: true))))
        guard case .refused(let c4, let why4) = registry.register(registration("g1", extraSymbols: 200, reset: true)) else {
            return XCTFail("a reset over the symbol budget was kept")
        }
        XCTAssertEqual(c4, .unavailable)
        XCTAssertTrue(why4.contains("4000-byte budget"), why4)
        XCTAssertEqual(registry.count, 2)
    }

    func testOneHugeRegistrationIsRefusedBeforeItsFactsAreBuilt() {
        let registry = GuestRegistry(maximumGuests: 8, maximumSymbolBytes: 1 << 20)
        let t0 = Date()
        guard case .refused(let c, _) = registry.register(registration("huge", extraSymbols: 100_000)) else { return XCTFail("kept") }
        XCTAssertEqual(c, .unavailable)
        XCTAssertEqual(registry.count, 0)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5, "refused from its size, not after building 100,000 symbols of facts")
    }
}
