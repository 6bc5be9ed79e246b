// SPDX-License-Identifier: Apache-2.0
//
// The claim's section addresses, found per section from the claim's list
// (`Session.claimedAddresses`: by the names' bytes through the ELF's name index where that is the
// same as String equality, else through the String-keyed table): the same answer as the table the
// claim used to be (each section's name looked up; the last entry of a name counting), on the
// fixture capture's real modules and claims, on crafted ELFs that must take the table (a repeated
// section name, a name a non-ASCII claim spells canonically), and end to end through the explainer.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import XCTest

final class ClaimedSectionTests: XCTestCase {
    /// What the claim was before it kept a list: a table by name, each entry replacing an earlier
    /// one of an equal (as Strings) name; a section's claimed address is its name's value.
    static func tableAnswer(_ elf: ELFFile, _ sections: [ClaimedSection]) -> [UInt64?] {
        var table: [String: UInt64] = [:]
        for s in sections { table[s.name] = s.address }
        return elf.sections.map { table[$0.name] }
    }

    /// Claims drawn from `real`: entries dropped, repeated with another address (before or after
    /// the right one), moved, names the module does not have, and (with `nonASCII`) names that
    /// are not ASCII; shuffled.
    static func draw(_ real: [ClaimedSection], _ rng: inout SplitMix64, nonASCII: Bool) -> [ClaimedSection] {
        var list: [ClaimedSection] = []
        for s in real {
            switch rng.next() % 8 {
            case 0: continue  // not claimed
            case 1: list.append(.init(name: s.name, address: s.address &+ 0x1000))  // moved
            case 2: list.append(.init(name: s.name, address: s.address &+ 0x1000)); list.append(s)  // wrong, then right
            case 3: list.append(s); list.append(.init(name: s.name, address: s.address &+ 0x2000))  // right, then wrong
            case 4: list.append(.init(name: s.name + "x", address: 1))  // no such section
            case 5 where nonASCII: list.append(.init(name: s.name + "\u{212A}", address: 2))  // not ASCII
            default: list.append(s)
            }
        }
        for k in stride(from: list.count - 1, to: 0, by: -1) { list.swapAt(k, rng.below(k + 1)) }  // shuffled
        return list
    }

    /// Seeded: on every fixture module, 400 drawn claims (a quarter with non-ASCII names, which
    /// take the table) answer as the table does, section by section. Draws of every kind move the
    /// answer away from the real claim's (the comparison has something to see).
    func testTheByteLookUpAnswersAsTheTableDoes() throws {
        continueAfterFailure = false  // (one draw's report is enough)
        let f = try FixtureReplay()
        var rng = SplitMix64(state: 0x5ec7_1075)
        var differentFromReal = 0, tried = 0
        for (name, e) in f.modules.sorted(by: { $0.key < $1.key }) {
            try e.module.ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                XCTAssertTrue(elf.allNamesASCII, "\(name): a real module takes the byte path")
                let real = e.module.claim.sections
                let honest = Session.claimedAddresses(elf, e.module.claim)
                XCTAssertEqual(honest, Self.tableAnswer(elf, real), name)
                XCTAssertGreaterThan(honest.compactMap { $0 }.count, 10, "\(name): the real claim names its sections")
                for k in 0..<400 {
                    var claim = e.module.claim
                    claim.sections = Self.draw(real, &rng, nonASCII: k % 4 == 0)
                    let got = Session.claimedAddresses(elf, claim)
                    XCTAssertEqual(got, Self.tableAnswer(elf, claim.sections), "\(name) \(claim.sections)")
                    tried += 1
                    if got != honest { differentFromReal += 1 }
                }
            }
        }
        XCTAssertGreaterThan(differentFromReal, tried * 9 / 10, "the draws change the claimed addresses")
    }

    /// Crafted ELFs that must take the table: a section name given to two sections (the byte
    /// path would give the claimed address to the first only), and a section renamed with a "K"
    /// that a claim spells with U+212A KELVIN SIGN (canonically equivalent: String equality, and
    /// the old table, match them; their bytes differ).
    func testARepeatedSectionNameAndACanonicallyEquivalentSpellingTakeTheTable() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        // `.data..read_mostly` named `.data` too: sh_name of one section set to the other's.
        var ed = KoEditor(ko: e.module.ko)
        let data = try ed.sectionIndex(".data"), other = try ed.sectionIndex(".data..read_mostly")
        ed.put(ed.get(UInt32.self, at: ed.sectionHeader(data)), at: ed.sectionHeader(other))
        try ed.elf { elf in
            XCTAssertEqual(elf.firstSectionIndex(named: ".data")?.repeated, true)
            var claim = e.module.claim
            claim.sections = [.init(name: ".data", address: 0x1234)]
            let got = Session.claimedAddresses(elf, claim)
            XCTAssertEqual(got, Self.tableAnswer(elf, claim.sections))
            XCTAssertEqual(got[data], 0x1234)
            XCTAssertEqual(got[other], 0x1234, "both sections named .data are claimed")
        }
        // `.data` renamed `.daKa` in the section-name table (every name ending in "data" with it).
        var ed2 = KoEditor(ko: e.module.ko)
        let shstrndx = Int(ed2.get(UInt16.self, at: 62))
        let names = Int(ed2.get(UInt64.self, at: ed2.sectionHeader(shstrndx) + 24))
        let at = names + Int(ed2.get(UInt32.self, at: ed2.sectionHeader(data)))
        ed2.put(UInt8(ascii: "K"), at: at + 3)
        try ed2.elf { elf in
            XCTAssertEqual(elf.sections[data].name, ".daKa")
            var claim = e.module.claim
            claim.sections = [.init(name: ".da\u{212A}a", address: 0x5678)]
            XCTAssertEqual(".da\u{212A}a", ".daKa", "canonically equivalent")
            let got = Session.claimedAddresses(elf, claim)
            XCTAssertEqual(got, Self.tableAnswer(elf, claim.sections))
            XCTAssertEqual(got[data], 0x5678, "the Kelvin spelling names .daKa, as the table had it")
        }
        // `.data..read_mostly` renamed `.data..read_mos` + U+212A (18 bytes either way) and claimed
        // by the ASCII spelling `.data..read_mosK`: equal as Strings, so the table names it.
        var ed3 = KoEditor(ko: e.module.ko)
        let at3 = names + Int(ed3.get(UInt32.self, at: ed3.sectionHeader(other)))
        for (k, b) in [UInt8(0xe2), 0x84, 0xaa].enumerated() { ed3.put(b, at: at3 + 15 + k) }
        try ed3.elf { elf in
            XCTAssertEqual(elf.sections[other].name, ".data..read_mos\u{212A}")
            XCTAssertFalse(elf.allNamesASCII)
            var claim = e.module.claim
            claim.sections = [.init(name: ".data..read_mosK", address: 0x9abc)]
            let got = Session.claimedAddresses(elf, claim)
            XCTAssertEqual(got, Self.tableAnswer(elf, claim.sections))
            XCTAssertEqual(got[other], 0x9abc, "the ASCII spelling names the Kelvin-sign section, as the table had it")
        }
    }

    /// End to end: a moved section is the denial, named as before; a name listed twice counts its
    /// last entry (wrong then right: explained; right then wrong: denied); a name the module does
    /// not have is ignored.
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
        // Two sections moved: the first in section order is the denial, whatever the claim's order.
        let bss = try XCTUnwrap(e.module.claim.sections.first { $0.name == ".bss" }, "llc claims .bss")
        let (di, bi) = try e.module.ko.withUnsafeBytes { raw -> (Int, Int) in
            let elf = try ELFFile(bytes: raw)
            return (try XCTUnwrap(elf.section(named: ".data")).index, try XCTUnwrap(elf.section(named: ".bss")).index)
        }
        let firstMoved = di < bi ? ".data" : ".bss"
        let rest = others.filter { $0.name != ".bss" }
        for order in [[moved, ClaimedSection(name: ".bss", address: bss.address &+ 0x80)], [ClaimedSection(name: ".bss", address: bss.address &+ 0x80), moved]] {
            guard case .denied(let d3) = try verdict(rest + order) else { return XCTFail("two moved sections were explained") }
            XCTAssertEqual(d3.section, firstMoved, "\(order)")
        }
    }

    /// The init session's check: with the init region claimed, a claimed `.init.text` address
    /// off the init layout is the denial, in the init layout's words.
    func testAMovedInitSectionIsDeniedAgainstTheInitLayout() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        try e.module.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute(elf))
            let it = try XCTUnwrap(elf.section(named: ".init.text"))
            let off = try XCTUnwrap(lay.initOffset[it.index])
            var claim = e.module.claim
            // The init allocation a page-aligned range of its own, after the core's.
            let ib = (claim.textBase &+ UInt64(lay.coreSize) &+ 0x10_0000) & ~0xfff
            claim.initTextBase = ib
            claim.initText = [UInt8](repeating: 0, count: lay.initTextSize)
            claim.sections = claim.sections.filter { $0.name != ".init.text" } + [.init(name: ".init.text", address: ib &+ UInt64(off) &+ 0x10)]
            let v = Explainer(facts: f.boot.facts).explain(elf: elf, claim: claim, resolver: e.before).verdict
            guard case .denied(let d) = v else { return XCTFail("a moved .init.text was explained") }
            XCTAssertEqual(d.rule, .layout)
            XCTAssertEqual(d.section, ".init.text")
            XCTAssertTrue(d.reason.contains("of .init.text differs from the init layout 0x\(String(ib &+ UInt64(off), radix: 16))"), d.reason)
        }
    }
}
