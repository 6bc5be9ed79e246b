// SPDX-License-Identifier: Apache-2.0
//
// Attack round 7 written from the docs (README, docs/protocol.md, docs/trust.md, docs/kernels):
// the guest kernel chooses every registration fact (which symbol records it sends, in which
// order), every byte of a claim and the order of its requests. New angles: facts the checks need
// but the registration leaves out, and facts the engine derives *by name* from the symbol map
// (not the ones the plausibility checks read). Inputs: the committed fixture boot (signed Debian
// 6.1 modules and the bytes a real guest held), through the verifier core as the service runs it.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack7Tests: XCTestCase {
    /// An address in the module area `[MODULES_VADDR, MODULES_END)` where no fixture module lies.
    static let moduleAreaPage: UInt64 = 0xffff_ffff_c300_0000
    static let initBounds = ["_sinittext", "_einittext", "__init_begin", "__init_end"]

    private func verifier() throws -> Verifier { Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())) }

    /// Attack: protocol.md "Symbols the VMM must send" names `_sinittext`, `_einittext` (and
    /// trust.md `__init_begin`, `__init_end`: "nothing may point into the core's freed init
    /// memory"), and promises "A fact the checks need but the registration lacks makes those
    /// modules denied, never allowed". The registration leaves the four init bounds out and sends
    /// the exported `_printk` as data (`D`, so the core-text rule does not apply) at an address
    /// inside the build's init text. With the bounds, that export is refused ("lies in init
    /// text"); without them nothing held it, and 8021q's `call _printk` was explained as a
    /// verified call into the core's freed init memory (free_initmem() gives those pages back to
    /// the page allocator; what is there later is the guest's choice).
    func testAnExportInFreedInitMemoryNeedsTheInitBounds() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let sinit = try XCTUnwrap(honest.symbols.first { $0.name == "_sinittext" }?.address)
        let einit = try XCTUnwrap(honest.symbols.first { $0.name == "_einittext" }?.address)
        let inInit = sinit + 0x1000
        XCTAssertLessThan(inInit, einit)
        func moved(_ r: RegisterGuest) throws -> RegisterGuest {
            var r = r
            let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_printk" && $0.exported })
            r.symbols[i].type = UInt8(ascii: "D")
            r.symbols[i].address = inInit
            return r
        }
        // Control: with the init bounds, the export in init text is refused.
        guard case .error(let withBounds) = try verifier().respond(to: .registerGuest(try moved(honest)), requestDigest: []) else {
            return XCTFail("registered _printk in init text with the init bounds sent")
        }
        XCTAssertEqual(withBounds.code, .implausibleFacts, withBounds.message)

        // The attack: the same export, the init bounds left out.
        var r = try moved(honest)
        r.symbols.removeAll { Self.initBounds.contains($0.name) }
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("_sinittext") || e.message.contains("__init_begin"), e.message)
        } else {
            // What the registration allowed: 8021q calling "_printk" inside init text.
            let session = try XCTUnwrap(v.guests.session("g"))
            for name in ["llc", "stp", "mrp", "garp"] {
                XCTAssertEqual(v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
            }
            let caller = try boot.module("8021q").request(guestID: "g")
            let redirected = try DocAttack4Tests.rebased(boot, session, "8021q", to: caller.textBase!, frames: caller.frames)
            let verdict = v.authorize(redirected, requestDigest: [])
            XCTFail("registered without the init bounds, _printk (D) at 0x\(String(inInit, radix: 16)) in init text; 8021q's call _printk there: \(verdict.decision) \(verdict.message)")
        }
        XCTAssertNil(v.guests.session("g"))
        // Control: the real build registers.
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }
}
