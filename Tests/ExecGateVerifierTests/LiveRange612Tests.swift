// SPDX-License-Identifier: Apache-2.0
//
// The live-range check of authorize-module on a 6.12 guest: every `enum mod_mem_type` is its own
// allocation (6.12 move_module()), so the core range held against live modules is the MOD_TEXT
// allocation (the claimed text), not 6.1's one core block of text, rodata and data.

import ExecGateELF
import ExecGateExplain
import ExecGateTestSupport
@testable import ExecGateVerifier
import XCTest

final class LiveRange612Tests: XCTestCase {
    func testCoreRangeIsMODTextOn612AndTheCoreBlockOn61() throws {
        let ko = try Fixtures.readFile(try Fixtures.module(named: "8021q.ko"))
        let plan = try ko.withUnsafeBytes { raw in try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: raw))) }
        XCTAssertGreaterThan(plan.coreSize, plan.textSize)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: 0x3000, kernelRelease: "6.12.117+deb12-amd64"), 0x3000)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: 0, kernelRelease: "6.12.117+deb12-amd64"), 0, "data-only: no MOD_TEXT")
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: "6.1.0-56-amd64"), plan.coreSize)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: nil), plan.coreSize)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: "6.13.1"), plan.coreSize, "no loader: the larger range")
    }
}
