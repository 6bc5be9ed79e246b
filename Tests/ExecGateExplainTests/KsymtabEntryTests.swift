// SPDX-License-Identifier: Apache-2.0
//
// Attacks on the reading of a module's exports from its ksymtab entries (Comparison.swift
// `exportedNames()`): entries the kernel reads differently from the way they are modelled, or
// that no `__KSYMTAB()` + `SORT(___ksymtab+*)` produces, are denied with a precise reason.

import XCTest
import ExecGateELF
@testable import ExecGateExplain

extension AdversarialExportTests {
    /// llc with the record of its `__ksymtab` relocation section at field offset `field` edited.
    func craftedEntry(_ f: FixtureReplay, field: UInt64, edit: (inout KoEditor, _ recordAt: Int, _ records: [ELFRelocation]) throws -> Void) throws -> [UInt8] {
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let recs = try ed.relocations(for: "__ksymtab"), r = try ed.rela(for: "__ksymtab")
        let k = try XCTUnwrap(recs.firstIndex { $0.offset == field }, "the record at \(field)")
        try edit(&ed, r.at + 24 * k, recs)
        return ed.ko
    }

    func assertDenied(_ f: FixtureReplay, _ ko: [UInt8], _ rule: DenialRule, _ words: String, _ what: String, line: UInt = #line) throws {
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko)), what, line: line)
        XCTAssertEqual(d.rule, rule, d.reason, line: line)
        XCTAssertTrue(d.reason.contains(words), d.reason, line: line)
    }

    /// Control: the real llc's exports are its nine entries, each at its function (the values
    /// the `__ksymtab_<name>` reading gave too).
    func testRealEntriesGiveTheExports() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        let res = try explainer.explain(f, "llc", ko: e.module.ko)
        let x = try XCTUnwrap(res.exports, "\(res.verdict)")
        XCTAssertEqual(x.symbolCount, 9)
        XCTAssertEqual(x.symbols, e.result.exports?.symbols)
        XCTAssertNotNil(x.symbols["llc_sap_open"])
    }

    /// A field no PC32 record writes: the entry is not what `__KSYMTAB()` assembles; denied
    /// (value field: R_X86_64_NONE; name field: R_X86_64_32S, a 4-byte field of another kind).
    func testEntryFieldNotWrittenByPC32IsDenied() throws {
        let f = try FixtureReplay()
        let none = try craftedEntry(f, field: 0) { ed, at, _ in ed.put(UInt32(0), at: at + 8) }
        try assertDenied(f, none, .relocation, "value_offset field is not written by exactly one R_X86_64_PC32", "value_offset left unrelocated")
        let abs = try craftedEntry(f, field: 16) { ed, at, _ in ed.put(UInt32(11), at: at + 8) }
        // R_X86_64_32S of a module address overflows first (`apply_relocate_add()`), or the entry is refused.
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: abs)), "name_offset written by R_X86_64_32S")
        XCTAssertEqual(d.rule, .relocation, d.reason)
    }

    /// An entry whose value is the module's init function (freed after init; known only at the
    /// placeholder in a core session).
    func testValueInInitMemoryIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try craftedEntry(f, field: 0) { ed, at, _ in ed.put(UInt32(try ed.symbolIndex("llc_init")), at: at + 12) }
        try assertDenied(f, ko, .initSymbol, "init memory freed after init", "export of llc_init")
    }

    /// A name outside the module's own core data (far past `__ksymtab_strings`).
    func testNameOutsideTheModuleIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try craftedEntry(f, field: 4) { ed, at, recs in ed.put(recs[1].addend + 0x40_0000, at: at + 16) }
        try assertDenied(f, ko, .malformedELF, "is not inside the module's own core data", "name 4 MiB past the strings")
    }

    /// A name in writable data (`.bss`: "" at load, anything after the module's init wrote it):
    /// the kernel reads the name at each later lookup, so it is not the name verified at load.
    func testNameInWritableDataIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try craftedEntry(f, field: 4) { ed, at, _ in
            let bss = try XCTUnwrap(try ed.elf { e -> Int? in
                let t = try e.symbolTable()
                let b = e.section(named: ".bss")!.index
                return t.indices.first { t.info($0) & 0xf == 3 && Int(t.sectionIndex($0)) == b }
            })
            ed.put(UInt32(bss), at: at + 12)
            ed.put(Int64(0), at: at + 16)
        }
        try assertDenied(f, ko, .malformedELF, "writable", "name in .bss")
    }

    /// Names in a section flagged SHF_RO_AFTER_INIT (laid out with `.data..ro_after_init`: writable
    /// while the module's init runs). The claim keeps only its init section addresses (the
    /// strings moved to the ro_after_init part of the core layout).
    func testNamesInRoAfterInitDataAreDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let h = ed.sectionHeader(try ed.sectionIndex("__ksymtab_strings"))
        ed.put(ed.get(UInt64.self, at: h + 8) | SectionFlags.roAfterInit.rawValue, at: h + 8)
        var claim = e.module.claim
        claim.sectionAddresses = claim.sectionAddresses.filter { $0.key.hasPrefix(".init") }
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, claim: claim)), "names in ro_after_init data")
        XCTAssertEqual(d.rule, .malformedELF, d.reason)
        XCTAssertTrue(d.reason.contains("writable"), d.reason)
    }

    /// Entries out of `strcmp()` order, and two equal names in one table: the kernel's `bsearch()`
    /// could miss an export or pick either entry.
    func testUnsortedOrRepeatedEntriesAreDenied() throws {
        let f = try FixtureReplay()
        // Entry 1 takes entry 0's name record (same name twice).
        let twice = try craftedEntry(f, field: 16) { ed, at, recs in
            ed.put(UInt32(recs[1].symbolIndex), at: at + 12)
            ed.put(recs[1].addend, at: at + 16)
        }
        try assertDenied(f, twice, .duplicateExport, "strcmp() order", "one name in two entries")
        // Entries 0 and 1 swap names (llc_add_pack / llc_build_and_send_ui_pkt).
        let swapped = try craftedEntry(f, field: 4) { ed, at, recs in
            ed.put(UInt32(recs[4].symbolIndex), at: at + 12)
            ed.put(recs[4].addend, at: at + 16)
            ed.put(UInt32(recs[1].symbolIndex), at: at + 24 * 3 + 12)
            ed.put(recs[1].addend, at: at + 24 * 3 + 16)
        }
        try assertDenied(f, swapped, .duplicateExport, "strcmp() order", "names swapped")
    }

    /// A table that is not whole entries (`sh_size` 4 bytes shorter, the last entry's namespace
    /// record made R_X86_64_NONE at 0: the kernel would read 8 entries and ignore the tail). The
    /// claim keeps only its init section addresses (the later core sections moved by 4).
    func testTableOfPartialEntriesIsDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let h = ed.sectionHeader(try ed.sectionIndex("__ksymtab"))
        let recs = try ed.relocations(for: "__ksymtab"), r = try ed.rela(for: "__ksymtab")
        ed.put(ed.get(UInt64.self, at: h + 32) - 4, at: h + 32)
        let last = try XCTUnwrap(recs.indices.last)
        XCTAssertEqual(recs[last].offset, 0x68)
        ed.put(UInt64(0), at: r.at + 24 * last)      // r_offset
        ed.put(UInt64(0), at: r.at + 24 * last + 8)  // r_info: R_X86_64_NONE, symbol 0
        var claim = e.module.claim
        claim.sectionAddresses = claim.sectionAddresses.filter { $0.key.hasPrefix(".init") }
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, claim: claim)), "__ksymtab of 8 2/3 entries")
        XCTAssertEqual(d.rule, .malformedELF, d.reason)
        XCTAssertTrue(d.reason.contains("not a whole number of 12-byte"), d.reason)
    }

    /// A `__ksymtab` stating far more entries than its relocation records can write: SHT_NOBITS
    /// (its size a header word, no file byte behind it) of four million entries, llc's 27
    /// records writing the fields of its nine. Refused at the first entry no record writes
    /// (entry 9), before anything sized by the section is made. Fails: the section's relocated
    /// copy (12 bytes an entry: 48 MB here, up to the 128 MiB core) and its field counts (3 an
    /// entry) made first, as they were (the copy is looked for in the session's data copies).
    func testAStatedKsymtabLargerThanItsRecordsIsRefusedBeforeItsCopy() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let idx = try ed.sectionIndex("__ksymtab")
        let h = ed.sectionHeader(idx)
        XCTAssertEqual(try ed.relocations(for: "__ksymtab").count, 27)  // value, name, namespace: 9 entries
        ed.put(UInt32(8), at: h + 4)                 // sh_type: SHT_NOBITS
        ed.put(UInt64(12 * 4_000_000), at: h + 32)  // sh_size: four million entries
        var claim = e.module.claim
        claim.sectionAddresses = claim.sectionAddresses.filter { $0.key.hasPrefix(".init") }
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, claim: claim)), "a NOBITS __ksymtab of 4M entries")
        XCTAssertEqual(d.rule, .relocation, d.reason)
        XCTAssertTrue(d.reason.contains("__ksymtab entry 9: its value_offset field is not written by exactly one R_X86_64_PC32 record"), d.reason)
        let s = try ed.ko.withUnsafeBytes { try Session(elf: try ELFFile(bytes: $0), claim: claim, facts: f.boot.facts, resolver: e.before) }
        XCTAssertThrowsError(try s.run())
        XCTAssertTrue(s.isData[idx], "the section would have a copy")
        XCTAssertNil(s.data[idx].map(\.count), "no copy of the stated section was made (its size in bytes)")
        XCTAssertEqual(s.ksymtabEntriesCounted, 27 / 2 + 1, "field counts made for the entries 27 records can cover, not the 4M stated")
        // Control: the real table's copy is made (the entries are read from it).
        let real = try e.module.ko.withUnsafeBytes { try Session(elf: try ELFFile(bytes: $0), claim: claim, facts: f.boot.facts, resolver: e.before) }
        try? real.run()
        XCTAssertEqual(real.data[idx].map(\.count), 9 * 12, "the real __ksymtab is read from its copy")
        XCTAssertEqual(real.ksymtabEntriesCounted, 9, "every real entry counted")
    }
}
