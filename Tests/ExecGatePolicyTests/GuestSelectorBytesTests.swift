// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review, round 8: which rule applies to a guest id. Guest ids are the VMM's names
// for its guests, any UTF-8 on the wire; a VMM may derive them from names its tenants choose.

import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class GuestSelectorBytesTests: XCTestCase {
    /// Attack: a guest id that starts, byte for byte, with a class pattern's prefix but escapes
    /// the class. The class test was `String.hasPrefix`, which compares grapheme clusters: in
    /// `appl` + U+0301 COMBINING ACUTE ACCENT + `iance-7` the `l` and the accent are one
    /// character, so `appl*` did not match and the guest got the default rule (`modules allow`)
    /// instead of its class's (`modules deny`). The other way, `String ==` takes a canonically
    /// equivalent spelling for a `for guest` id (U+212A KELVIN SIGN for `K`). Policy patterns are
    /// ASCII (`[A-Za-z0-9._-]`), and what the operator wrote is bytes: a guest id now matches a
    /// pattern when its UTF-8 bytes equal it or start with its part before `*`.
    func testGuestIDsMatchSelectorsByTheirBytes() throws {
        let p = try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: """
            class tenants appl*
            modules allow
            modules deny for class tenants
            modules deny for guest vmK
            """))
        XCTAssertEqual(p.setting(for: .modules, guestID: "appliance-7"), .deny)
        XCTAssertEqual(p.setting(for: .modules, guestID: "appl\u{0301}iance-7"), .deny, "starts with the bytes 'appl'")
        XCTAssertEqual(p.setting(for: .modules, guestID: "vmK"), .deny)
        XCTAssertEqual(p.setting(for: .modules, guestID: "vm\u{212A}"), .allow, "another guest id than 'vmK' (other bytes)")
        XCTAssertEqual(p.setting(for: .modules, guestID: "other"), .allow)
    }
}
