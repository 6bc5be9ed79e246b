// SPDX-License-Identifier: Apache-2.0
//
// Registration facts a tester sends from docs/protocol.md ("register-guest", symbols) alone.

import ExecGateVerifier
import ExecGateWire
import XCTest

final class DocAttackFactsTests: XCTestCase {
    /// HOLE (round docattack): a symbol record with an empty name, flagged exported and function,
    /// was registered (symbol_count counted it). No kernel exports an empty name: EXPORT_SYMBOL(sym)
    /// emits `__ksymtab_<sym>` for a C identifier, and resolve_symbol() → find_symbol() compares
    /// the module's undefined name with strcmp, so an exported "" would "resolve" a module's
    /// nameless undefined symbol that the kernel's simplify_symbols() refuses (-ENOENT). Refused
    /// `implausible-facts`, naming the record.
    func testExportedSymbolWithAnEmptyNameIsImplausible() throws {
        let g = try FixtureGuest()
        let commitCreds = try XCTUnwrap(g.registration.symbols.first { $0.name == "commit_creds" }?.address)
        var r = g.registration
        r.guestID = "empty-name"
        r.symbols.append(KernelSymbol(name: "", address: commitCreds, exported: true, isFunction: true))
        let reply = g.verifier.respond(to: .registerGuest(r), requestDigest: [])
        guard case .error(let e) = reply else { return XCTFail("an exported empty name was registered: \(reply)") }
        XCTAssertEqual(e.code, .implausibleFacts, e.message)
        XCTAssertTrue(e.message.contains("empty name"), e.message)
    }
}
