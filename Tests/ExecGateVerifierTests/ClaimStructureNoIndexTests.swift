// SPDX-License-Identifier: Apache-2.0
//
// ClaimStructure finds each claimed section by its name's bytes; on an ELF whose names share one
// key past the name index's probe bound (no index) the ELF's look-ups go through its table by the
// names' bytes (`ELFFile.nameTable`; a scan of every section per look-up before), with the same
// answers.

@testable import ExecGateELF
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class ClaimStructureNoIndexTests: XCTestCase {
    /// 40 names of one length with the same first and last 8 bytes (one key): no index. A claimed
    /// name the ELF has is found (and refused as not allocated: the builder's sections have no
    /// flags), one it lacks is unknown, a repeated claim is a duplicate — as with an index.
    func testWithoutANameIndexClaimsAreFoundByTheirBytes() throws {
        var names: [[UInt8]] = []
        for k in 0..<40 {
            let d = String(k)
            names.append(Array(".rela.orc_".utf8) + Array((String(repeating: "0", count: 3 - d.count) + d).utf8) + Array("_unwind_ip".utf8))
        }
        names.append(Array(".indexed".utf8))
        try ExecGateELFFixture.elf(sectionNames: names).withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            XCTAssertTrue(elf.nameIndex.isEmpty, "the colliding names leave no index")
            XCTAssertEqual(elf.nameTable.count, names.count + 2, "the table by bytes instead")
            for q in [".rela.orc_039_unwind_ip", ".rela.orc_000_unwind_ip", ".indexed"] {
                let f = ClaimStructure.check([SectionClaim(name: q, address: 0x1000)], against: elf)
                XCTAssertEqual(f?.reason, .claimUnknownSection, q)
                XCTAssertTrue(f?.message.contains("is not allocated by the loader") == true, "\(q) found: \(String(describing: f?.message))")
            }
            for q in [".rela.orc_040_unwind_ip", ".indexe", ".rela.orc_0\u{212A}0_unwind_ip"] {
                let f = ClaimStructure.check([SectionClaim(name: q, address: 0x1000)], against: elf)
                XCTAssertEqual(f?.reason, .claimUnknownSection, q)
                XCTAssertTrue(f?.message.contains("does not exist in the signed module") == true, "\(q): \(String(describing: f?.message))")
            }
            let dup = ClaimStructure.check([SectionClaim(name: ".nonesuch", address: 1), SectionClaim(name: ".nonesuch", address: 2)], against: elf)
            XCTAssertEqual(dup?.reason, .claimUnknownSection, "the first entry is already unknown")
        }
    }
}
