// SPDX-License-Identifier: Apache-2.0
//
// The claim's section addresses, matched against the signed ELF's names by bytes
// (`Session.firstClaimedAddressMismatch`): the same answer as the String-keyed table it replaced
// (every allocated section looked up by name, the last of a repeated claimed name counting), on the
// fixture capture's real modules and claims, and end to end through the explainer.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import XCTest

final class ClaimedSectionTests: XCTestCase {
    /// What the engine did before the claim kept its sections as a list: a table by name (the
    /// last entry of a name wins), asked at every allocated section the loop laid out, in section
    /// order.
    static func tableAnswer(_ elf: ELFFile, _ claim: ModuleClaim, _ lay: ModuleLayout, _ addr: [UInt64?], initLaidOut: Bool) -> (Int, UInt64)? {
        var table: [String: UInt64] = [:]
        for s in claim.sections { table[s.name] = s.address }
        for i in elf.sections.indices where lay.flags[i].contains(.alloc) && ((initLaidOut && lay.initOffset[i] != nil) || lay.coreOffset[i] != nil) {
            if let c = table[elf.sections[i].name], let a = addr[i], c != a { return (i, c) }
        }
        return nil
    }

    /// Seeded: for every fixture module, claims drawn from its real one — entries dropped,
    /// repeated with another address (before or after the right one), moved by a page, names the
    /// module does not have, non-ASCII names (the table path), shuffled — answer as the table
    /// does, with and without the init layout. Each kind of draw is seen to change the answer
    /// (the test would notice a matcher that ignored it).
    func testTheByteMatchAnswersAsTheTableDoes() throws {
        continueAfterFailure = false  // (one draw's report is enough)
        let f = try FixtureReplay()
        var rng = SplitMix64(state: 0x5ec7_1075)
        var mismatches = 0, allowed = 0, tried = 0
        for (name, e) in f.modules.sorted(by: { $0.key < $1.key }) {
            try e.module.ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                let lay = try XCTUnwrap(ModuleLayout.compute(elf), name)
                let real = e.module.claim
                // Each laid-out section's address as the honest claim has it (the layout's).
                var addr = [UInt64?](repeating: nil, count: elf.sections.count)
                for s in real.sections { if let i = elf.firstSectionIndex(named: s.name)?.index { addr[i] = s.address } }
                XCTAssertNil(Session.firstClaimedAddressMismatch(elf, real, lay, addr, initLaidOut: false), "\(name): the real claim")
                for _ in 0..<200 {
                    var list: [ClaimedSection] = []
                    for s in real.sections {
                        switch rng.next() % 8 {
                        case 0: continue  // not claimed
                        case 1: list.append(.init(name: s.name, address: s.address &+ 0x1000))  // moved
                        case 2: list.append(.init(name: s.name, address: s.address &+ 0x1000)); list.append(s)  // wrong, then right
                        case 3: list.append(s); list.append(.init(name: s.name, address: s.address &+ 0x2000))  // right, then wrong
                        case 4: list.append(.init(name: s.name + "x", address: 1))  // no such section
                        case 5: list.append(.init(name: s.name + "\u{212A}", address: 2))  // not ASCII
                        default: list.append(s)
                        }
                    }
                    for k in stride(from: list.count - 1, to: 0, by: -1) { list.swapAt(k, rng.below(k + 1)) }  // shuffled
                    var claim = real
                    claim.sections = list
                    for initLaidOut in [false, true] {
                        let got = Session.firstClaimedAddressMismatch(elf, claim, lay, addr, initLaidOut: initLaidOut)
                        let want = Self.tableAnswer(elf, claim, lay, addr, initLaidOut: initLaidOut)
                        XCTAssertEqual(got?.section, want?.0, "\(name) \(list)")
                        XCTAssertEqual(got?.claimed, want?.1, "\(name) \(list)")
                        tried += 1
                        if want == nil { allowed += 1 } else { mismatches += 1 }
                    }
                }
            }
        }
        XCTAssertGreaterThan(mismatches, tried / 4, "the draws move sections")
        XCTAssertGreaterThan(allowed, 0, "some draws leave every section right")
    }

    /// End to end: a moved section is the denial, named as before; a name listed twice counts its
    /// last entry (wrong then right: explained; right then wrong: denied); a name the module does not
    /// have is ignored.
    func testAMovedSectionIsDeniedAndTheLastEntryOfANameCounts() throws {
        let f = try FixtureReplay()
        let name = "llc"
        let e = try XCTUnwrap(f.modules[name])
        let data = try XCTUnwrap(e.module.claim.sections.first { $0.name == ".data" }, "llc claims .data")
        func verdict(_ sections: [ClaimedSection]) throws -> Verdict {
            var claim = e.module.claim
            claim.sections = sections
            return try e.module.ko.withUnsafeBytes { raw in
                Explainer(facts: f.boot.facts).explain(elf: try ELFFile(bytes: raw), claim: claim, resolver: e.before).verdict
            }
        }
        let others = e.module.claim.sections.filter { $0.name != ".data" }
        let moved = ClaimedSection(name: ".data", address: data.address &+ 0x40)
        guard case .denied(let d) = try verdict(others + [moved]) else { return XCTFail("a moved .data was explained") }
        XCTAssertEqual(d.rule, .layout)
        XCTAssertEqual(d.section, ".data")
        XCTAssertTrue(d.reason.contains("claimed address 0x\(String(moved.address, radix: 16)) of .data differs from layout_sections() 0x\(String(data.address, radix: 16))"), d.reason)
        XCTAssertTrue(try verdict(others + [moved, data]).isAllowed, "the last entry of .data is right")
        guard case .denied(let d2) = try verdict(others + [data, moved]) else { return XCTFail("the last entry of .data is wrong") }
        XCTAssertEqual(d2.section, ".data")
        XCTAssertTrue(try verdict(others + [data, .init(name: ".data.nonesuch", address: 7)]).isAllowed, "an unknown name is ignored")
    }
}
