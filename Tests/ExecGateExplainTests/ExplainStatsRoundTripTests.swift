// SPDX-License-Identifier: Apache-2.0
//
// `ExplainStats`' public dictionaries must read back what was set through them. Up to 77f2fbf they
// were stored dictionaries; e4bfb1a (issue 13) stores counts by class and listed only the nonzero
// ones, so a zero entry set through `bytesByClass` or `sites` was lost (no verdict changed: the
// engine sets no zero count; a caller of the public setters saw it).

@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class ExplainStatsRoundTripTests: XCTestCase {
    /// HOLE: the public dictionaries must read back what was set. At 77f2fbf they were stored
    /// dictionaries (a zero entry read back as a zero entry); e4bfb1a stores counts by class and
    /// lists only nonzero ones, so a zero entry set through `bytesByClass` or `sites` is lost.
    func testExplainStatsDictionariesRoundTrip() {
        var st = ExplainStats()
        st.bytesByClass = [.relocation: 0, .elf: 5]
        st.sites = [.ftrace: 0]
        XCTAssertEqual(st.bytesByClass, [.relocation: 0, .elf: 5], "a zero entry set is read back")
        XCTAssertEqual(st.sites, [.ftrace: 0], "a zero entry set is read back")
        st.sites[.jumpLabel] = 0
        XCTAssertEqual(st.sites, [.ftrace: 0, .jumpLabel: 0])
        st.bytesByClass[.relocation] = nil
        XCTAssertEqual(st.bytesByClass, [.elf: 5])
        XCTAssertEqual(ExplainStats().bytesByClass, [:])
        XCTAssertEqual(ExplainStats().sites, [:])

        var rng = SeededRNG(seed: 0x57a7)
        for round in 0..<500 {
            var bytes: [ExplanationClass: Int] = [:], sites: [ExplanationClass: Int] = [:]
            for c in ExplanationClass.allCases where rng.below(2) == 0 { bytes[c] = rng.below(4) == 0 ? 0 : rng.below(1 << 20) }
            for c in ExplanationClass.allCases where rng.below(2) == 0 { sites[c] = rng.below(4) == 0 ? 0 : rng.below(1 << 12) }
            var st = ExplainStats()
            st.bytesByClass = bytes
            st.sites = sites
            guard st.bytesByClass == bytes, st.sites == sites else {
                return XCTFail("round \(round): set \(bytes) / \(sites), read \(st.bytesByClass) / \(st.sites)")
            }
            for c in ExplanationClass.allCases { XCTAssertEqual(st.bytes(of: c), bytes[c] ?? 0) }
        }
    }
}
