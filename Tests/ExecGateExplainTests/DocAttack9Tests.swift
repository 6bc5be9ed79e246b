// SPDX-License-Identifier: Apache-2.0
//
// Doc-attack round 9 (docs/trust.md "Static calls", read as the guest kernel): real Debian modules
// of the fixture corpus, claims crafted by the guest.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class DocAttack9Tests: XCTestCase {
    /// HOLE: trust.md promises a static-call site holds, "at load or by a run-time patch", only
    /// its key's states: for `might_resched` (irqbypass, 4 sites through `__SCT__might_resched`)
    /// `__cond_resched` or `might_resched_dynamic_disabled` = `__static_call_return0`, never NULL
    /// (kernel/sched/core.c sched_dynamic_update()). The run-time rule held (DocAttack8Tests), but
    /// a load claiming all four sites NOP5 was allowed: the comparison writes, for a site whose
    /// bytes are no legal encoding, the encoding of the key's state so far, or with none the NULL
    /// form, as "expected", and that was the NOP5 claimed: no difference, explained.
    func testMightReschedSitesAllNullAtLoadAreDenied() throws {
        let f = try FixtureReplay()
        let tramp = try XCTUnwrap(f.boot.facts.exports["__SCT__might_resched"])
        let honest = try XCTUnwrap(f.modules["irqbypass"]).result
        XCTAssertTrue(honest.verdict.isAllowed)
        let table = try XCTUnwrap(honest.runtimeSites)
        let sites = table.siteList.filter { $0.kind == .staticCall && $0.key == tramp }
        XCTAssertEqual(sites.count, 4)
        var text = try XCTUnwrap(f.modules["irqbypass"]).module.claim.text
        let base = try XCTUnwrap(f.modules["irqbypass"]).module.claim.textBase
        for s in sites {
            let o = Int(s.address - base)
            text.replaceSubrange(o..<o + 5, with: x86Nops[5])
        }
        let d = try XCTUnwrap(denial(try f.explain("irqbypass", text: text)))
        XCTAssertEqual(d.address, sites.map(\.address).min())
        XCTAssertTrue(d.reason.contains("not a legal encoding"), d.reason)
    }
}
