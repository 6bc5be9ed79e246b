// SPDX-License-Identifier: Apache-2.0
//
// Working memory a request does not bring: an SHT_NOBITS section has a size and no file byte, so
// a copy of it read as data (a table by name, a site's bytes, an export's name) would be made
// from a header word alone (up to the 128 MiB core from a module of a few KiB, where the service
// admits a request at twice its body). Such copies are bounded in all per session
// (`ExplainLimits.maxNoBitsCopy`); past it the module is denied where the read would make one.

import XCTest
import ExecGateELF
@testable import ExecGateExplain

final class NoBitsCopyTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// llc with its `.return_sites` table turned SHT_NOBITS of `size` bytes (its 12 records,
    /// all inside the first 48 bytes, still write their fields), claimed without the section
    /// addresses that the larger table would move.
    func returnSitesAsNoBits(_ f: FixtureReplay, size: UInt64) throws -> (ko: [UInt8], claim: ModuleClaim, index: Int) {
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let idx = try ed.sectionIndex(".return_sites")
        let h = ed.sectionHeader(idx)
        ed.put(UInt32(8), at: h + 4)  // sh_type: SHT_NOBITS
        ed.put(size, at: h + 32)      // sh_size
        var claim = e.module.claim
        claim.sectionAddresses = claim.sectionAddresses.filter { $0.key.hasPrefix(".init") }
        return (ed.ko, claim, idx)
    }

    /// A 2 MiB `.return_sites` without contents: denied naming the section, and no copy made.
    /// Fails: the table copied (2 MiB of zeros and its fields) and walked as before.
    func testALargeTableWithoutContentsIsDeniedBeforeItsCopy() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        let (ko, claim, idx) = try returnSitesAsNoBits(f, size: 2 << 20)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko, claim: claim)), "a 2 MiB NOBITS .return_sites")
        XCTAssertEqual(d.rule, .malformedELF, d.reason)
        XCTAssertEqual(d.section, ".return_sites", d.reason)
        XCTAssertTrue(d.reason.contains("SHT_NOBITS (2097152 bytes, none in the file)"), d.reason)
        let s = try ko.withUnsafeBytes { try Session(elf: try ELFFile(bytes: $0), claim: claim, facts: f.boot.facts, resolver: e.before) }
        XCTAssertThrowsError(try s.run())
        XCTAssertNil(s.data[idx].map(\.count), "no copy of the stated section (its size in bytes)")
    }

    /// Control: the same table at its real size without contents is read (zeros, its records'
    /// fields written in: the signed table's bytes are its fields alone), so the module is
    /// allowed as the real one is.
    func testASmallTableWithoutContentsIsStillRead() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        let (ko, claim, idx) = try returnSitesAsNoBits(f, size: 0x30)
        let r = try explainer.explain(f, "llc", ko: ko, claim: claim)
        XCTAssertTrue(r.verdict.isAllowed, "\(r.verdict)")
        let s = try ko.withUnsafeBytes { try Session(elf: try ELFFile(bytes: $0), claim: claim, facts: f.boot.facts, resolver: e.before) }
        try? s.run()
        XCTAssertEqual(s.data[idx].map(\.count), 0x30, "the table was copied and read")
        XCTAssertEqual(s.noBitsCopied, 0x30)
    }
}
