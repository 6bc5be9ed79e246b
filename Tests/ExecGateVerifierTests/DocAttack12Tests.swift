// SPDX-License-Identifier: Apache-2.0
//
// Round 12's review of hostile claims on the served path (6.1, the fixture boot's real signed
// Debian modules): the allocations a module holds while live (with the symbols layout_symtab()
// appends) obey the kernel's placement rules, as the sections' own ranges do.

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import XCTest

final class DocAttack12Tests: XCTestCase {
    /// A fixture module whose core allocation with its symbols is longer than its sections: its
    /// name and the two sizes.
    func moduleWithSymbolPages(_ g: FixtureGuest) throws -> (name: String, sections: Int, held: Int) {
        for name in g.boot.availableModules {
            let m = try g.boot.module(name)
            let plan = try m.ko.withUnsafeBytes { try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: $0))) }
            if plan.coreSizeWithSymbols > plan.coreSize { return (name, plan.coreSize, plan.coreSizeWithSymbols) }
        }
        throw XCTSkip("no fixture module has core symbol pages past its sections")
    }

    /// HOLE (round 12): the explainer checks the core allocation's place with the sections'
    /// size; the verifier then holds it with the symbols appended. A core whose sections end at
    /// MODULES_END (its symbols past it) was allowed: a placement module_alloc() never returns.
    func testAHeldCoreAllocationLiesInsideTheModuleArea() throws {
        let g = try FixtureGuest()
        let (name, sections, held) = try moduleWithSymbolPages(g)
        let area = g.session.facts.moduleArea
        let pages = (sections + 4095) / 4096
        let text = try g.boot.module(name).claim.text.count
        let frames = (0..<UInt64((text + 4095) / 4096)).map { 0x9_0000 + $0 }
        // The sections end at MODULES_END: the explainer's own check passes.
        let edge = try DocAttack4Tests.rebased(g, name, to: area.upperBound - UInt64(pages * 4096), frames: frames)
        let v = g.verifier.authorize(edge, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "\(name) held +\(held) past MODULES_END: \(v.message)")
        XCTAssertEqual(v.reason, .claimInvalid, v.message)
        XCTAssertTrue(v.message.contains("is not inside the module area"), v.message)
        // Its held allocation inside the area: allowed (the rule is the place, not the module).
        let inside = try DocAttack4Tests.rebased(g, name, to: area.upperBound - UInt64(held), frames: frames)
        let ok = g.verifier.authorize(inside, requestDigest: [])
        XCTAssertEqual(ok.decision, .allow, ok.message)
    }
}
