// SPDX-License-Identifier: Apache-2.0
//
// Attacks on the optimised verdict path (data relocations checked in place, the region built in
// one write per byte, records checked once by the walk, byte-keyed name tables, the address
// tables, key symbols found by name bytes, the radix-sorted function entries). The guest chooses
// the claim, its addresses and the request order; the crafted ELF files stand for "a signed module
// the loader would see" (the signature is a separate layer: unsigned copies are fine here).
//
// Each test names the attack. A test that passes documents an attack that fails, and says why.
// A test marked HOLE asserts the kernel's behaviour and fails while the hole is open.
// Inputs: the committed fixture capture (9 modules of a Debian 6.1.0-56 boot with their facts).

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

/// In-place edits of a module's ELF bytes (offsets found through the real parser).
struct KoEditor {
    var ko: [UInt8]

    func elf<T>(_ body: (ELFFile) throws -> T) throws -> T {
        try ko.withUnsafeBytes { try body(try ELFFile(bytes: $0)) }
    }

    mutating func put<T: FixedWidthInteger>(_ v: T, at o: Int) {
        for k in 0..<MemoryLayout<T>.size { ko[o + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
    }
    func get<T: FixedWidthInteger>(_: T.Type, at o: Int) -> T {
        var v: T = 0
        for k in 0..<MemoryLayout<T>.size { v |= T(ko[o + k]) << (8 * k) }
        return v
    }

    /// File offset of section `i`'s header.
    func sectionHeader(_ i: Int) -> Int { Int(get(UInt64.self, at: 40)) + 64 * i }
    func sectionIndex(_ name: String) throws -> Int { try XCTUnwrap(try elf { $0.section(named: name)?.index }, name) }

    /// File offset of symbol `i`'s `Elf64_Sym`.
    func symbolEntry(_ i: Int) throws -> Int {
        try elf { e in try e.symbolTableSection().fileRange.lowerBound + 24 * i }
    }
    func symbolNames() throws -> [String] { try elf { e in let t = try e.symbolTable(); return t.indices.map { t.name($0) } } }
    func symbolIndex(_ name: String) throws -> Int { try XCTUnwrap(try symbolNames().firstIndex(of: name), name) }

    /// Overwrites the name of symbol `i` in the string table (no longer than the old name), and
    /// checks that no other symbol's name changed (the linker may share string tails).
    mutating func rename(_ i: Int, to new: String) throws {
        let before = try symbolNames()
        let old = before[i]
        XCTAssertLessThanOrEqual(new.utf8.count, old.utf8.count, "rename \(old) in place")
        let strtab: Range<Int> = try elf { e in e.sections[Int(try e.symbolTableSection().link)].fileRange }
        let at = strtab.lowerBound + Int(get(UInt32.self, at: try symbolEntry(i)))
        for (k, b) in new.utf8.enumerated() { ko[at + k] = b }
        ko[at + new.utf8.count] = 0
        let after = try symbolNames()
        for j in after.indices where j != i { XCTAssertEqual(after[j], before[j], "renaming \(old) changed symbol \(j)") }
        XCTAssertEqual(after[i], new)
    }
    mutating func setSymbol(_ i: Int, shndx: UInt16? = nil, value: UInt64? = nil, info: UInt8? = nil) throws {
        let o = try symbolEntry(i)
        if let s = shndx { put(s, at: o + 6) }
        if let v = value { put(v, at: o + 8) }
        if let x = info { ko[o + 4] = x }
    }

    /// The RELA section applying to section `target`: its index, its records' file offset and count.
    func rela(for target: String) throws -> (index: Int, at: Int, count: Int) {
        try elf { e in
            let rs = try XCTUnwrap(try e.relocationSections().first { e.sections[$0.targetSectionIndex].name == target }, "RELA for \(target)")
            return (rs.section.index, rs.section.fileRange.lowerBound, rs.relocations.count)
        }
    }
    /// The first of `recs` (all but the last when `dropLast`) for which `match` holds, given its
    /// index and the name of its symbol's section ("" for none).
    func firstRecord(_ recs: [ELFRelocation], dropLast: Bool = false, _ match: (Int, String) -> Bool) throws -> Int? {
        try elf { e in
            let t = try e.symbolTable()
            return recs.indices.dropLast(dropLast ? 1 : 0).first { i in
                let si = Int(t.sectionIndex(recs[i].symbolIndex))
                return match(i, si > 0 && si < e.sections.count ? e.sections[si].name : "")
            }
        }
    }
    func relocations(for target: String) throws -> [ELFRelocation] {
        try elf { e in
            let rs = try XCTUnwrap(try e.relocationSections().first { e.sections[$0.targetSectionIndex].name == target }, "RELA for \(target)")
            return Array(rs.relocations)
        }
    }
}

/// The module's end state as the loader leaves it for `claim`'s addresses (every stage before the
/// comparison), for a crafted ELF: the claim an honest guest would send for it.
/// (The session's ELF reads `ko`'s bytes in place: a caller that asks it about the module's
/// bytes afterwards needs `withLoaderSession`.)
func loaderImage(_ ko: [UInt8], _ claim: ModuleClaim, _ facts: GuestFacts, _ resolver: SymbolResolver) throws -> (image: [UInt8], session: Session) {
    try withLoaderSession(ko, claim, facts, resolver) { ($0.image, $0) }
}

/// `body` given the session of `loaderImage`, while `ko`'s bytes (which its ELF reads in
/// place) are alive.
func withLoaderSession<T>(_ ko: [UInt8], _ claim: ModuleClaim, _ facts: GuestFacts, _ resolver: SymbolResolver, _ body: (Session) throws -> T) throws -> T {
    try ko.withUnsafeBytes { raw in
        let s = try Session(elf: try ELFFile(bytes: raw), claim: claim, facts: facts, resolver: resolver)
        s.recordRelocationFields = true
        try s.checkModinfo()
        try s.relocate()
        try s.verifyExportedSymbols()
        try s.applyBootTimePatching()
        try s.addRuntimeSites()
        return try body(s)
    }
}

/// Explains fixture module `name` from the crafted `ko` (its captured claim and resolver unless given).
struct CraftedExplainer {
    func explain(_ f: FixtureReplay, _ name: String, ko: [UInt8], claim: ModuleClaim? = nil, resolver: SymbolResolver? = nil) throws -> ExplainResult {
        let e = try XCTUnwrap(f.modules[name])
        return try ko.withUnsafeBytes { raw in
            Explainer(facts: f.boot.facts).explain(elf: try ELFFile(bytes: raw), claim: claim ?? e.module.claim, resolver: resolver ?? e.before)
        }
    }

    /// The verdict for crafted `ko` of fixture module `name`, claimed with the replay's own end
    /// state when the replay accepts the module (the claim an honest guest would send if the
    /// replay were the kernel), else with the real module's claim (the denial comes first).
    func explainHonest(_ f: FixtureReplay, _ name: String, _ ko: [UInt8]) throws -> ExplainResult {
        let e = try XCTUnwrap(f.modules[name])
        var claim = e.module.claim
        if let r = try? loaderImage(ko, claim, f.boot.facts, e.before) { claim.text = r.image }
        return try explain(f, name, ko: ko, claim: claim)
    }
}


// MARK: - Data relocations checked in place / on a copy (Relocations.swift check, pristineCopy, pendingRela)

final class AdversarialRelocationTests: XCTestCase {
    /// A `relocation` denial at `section` + `offset` whose reason holds one of `words`.
    func assertRelocationDenial(_ res: ExplainResult, _ words: [String], _ section: String, _ offset: Int,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let d = try XCTUnwrap(denial(res), file: file, line: line)
        XCTAssertEqual(d.rule, DenialRule.relocation, d.reason, file: file, line: line)
        XCTAssertTrue(words.contains { d.reason.contains($0) }, d.reason, file: file, line: line)
        XCTAssertEqual(d.section, section, d.reason, file: file, line: line)
        XCTAssertEqual(d.offset, offset, d.reason, file: file, line: line)
    }

    let explainer = CraftedExplainer()

    /// Attack: two records for one field of a table the stages read (`.return_sites`), so that the
    /// in-place check (which compares each field with the *signed* bytes) would see zeros where the
    /// kernel sees the first record's write. Fails: the second record starts before the end of the
    /// first, so `check` hands the section to the copy, where `apply` meets the written field:
    /// "existing value is nonzero", as `apply_relocate_add()` says.
    func testOverlappingRecordsInADataTableAreDenied() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try ed.rela(for: ".return_sites")
        for k in 0..<24 { ed.ko[r.at + 24 + k] = ed.ko[r.at + k] }  // record 1 := record 0
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko)))
        XCTAssertEqual(d.rule, DenialRule.relocation, d.reason)
        XCTAssertTrue(d.reason.contains("nonzero"), d.reason)
        XCTAssertEqual(d.section, ".return_sites")
        XCTAssertEqual(d.offset, 0)
    }

    /// Attack: an 8-byte field over the upper half of the previous one (`__mcount_loc`'s record
    /// k + 1 moved to record k's offset + 4: R_X86_64_64 both, record k's function in core text),
    /// so that a check reading the fields as 4 bytes wide would see two fields side by side on
    /// zero signed bytes. Fails: the in-place check takes R_X86_64_64 as 8 bytes (the run of that
    /// type ends at the overlap), the copy holds record k's write, whose upper half (a core text
    /// address's, 0xffffffff) record k + 1 meets: "existing value is nonzero", at its offset, as
    /// `apply_relocate_add()` refuses it. (Record k's function in init text would be written at
    /// the core session's low placeholder address, upper half zero: the entry is then denied by
    /// the ftrace stage instead, still a denial.)
    func testAnEightByteFieldOverThePreviousOnesUpperHalfIsDenied() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try ed.rela(for: "__mcount_loc")
        let recs = try ed.relocations(for: "__mcount_loc")
        let k = try XCTUnwrap(try ed.firstRecord(recs, dropLast: true) { i, section in
            !section.hasPrefix(".init") && recs[i].type.rawValue == 1 && recs[i + 1].type.rawValue == 1
        }, "two R_X86_64_64 records, the first for core text")
        let at = r.at + 24 * k
        ed.put(ed.get(UInt64.self, at: at) + 4, at: at + 24)  // record k + 1's r_offset := record k's + 4
        try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed.ko), ["nonzero"], "__mcount_loc", Int(ed.get(UInt64.self, at: at)) + 4)
    }

    /// Attack: a data field of 32 bits against a function in the module's init text (`__mcount_loc`'s
    /// first record for one, retyped). A core session computes it at the placeholder init address,
    /// low, where an R_X86_64_32 value fits; the kernel's init address is in the module area,
    /// where it overflows and `apply_relocate_add()` refuses the module. Fails: the field is
    /// explained only when it fits wherever init may lie in the module area — R_X86_64_32 with
    /// its honest addend never does, nor R_X86_64_32S with an addend of −0x7ff00000 (it fits at
    /// the placeholder, overflows near the area's start); R_X86_64_32S with the honest addend
    /// fits everywhere and passes this check (its 4 bytes leave the entry an init-text address
    /// the core session skips: allowed, as before).
    func testThirtyTwoBitDataFieldsAgainstInitMemoryFitEverywhereOrAreDenied() throws {
        let f = try FixtureReplay()
        let base = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try base.rela(for: "__mcount_loc")
        let recs = try base.relocations(for: "__mcount_loc")
        let k = try XCTUnwrap(try base.firstRecord(recs) { i, section in section.hasPrefix(".init") && recs[i].type.rawValue == 1 },
                              "an R_X86_64_64 record for init text")
        let at = r.at + 24 * k
        let initRule = "in the module's init memory"
        for (type, addend, denied) in [(UInt32(10), nil as Int64?, true), (11, nil, false), (11, -0x7ff0_0000, true)] {
            var ed = base
            ed.put(type, at: at + 8)
            if let addend { ed.put(UInt64(bitPattern: addend), at: at + 16) }
            let res = try explainer.explain(f, "llc", ko: ed.ko)
            if denied {
                try assertRelocationDenial(res, [initRule], "__mcount_loc", Int(recs[k].offset))
            } else if case .denied(let d) = res.verdict {
                XCTAssertFalse(d.reason.contains(initRule), d.reason)
            }
        }
    }

    /// Attack: a data field written over the upper half of an 8-byte field against init memory
    /// (`struct module`'s `init` pointer, R_X86_64_64 against `init_module` in `.init.text`: the
    /// second record of `.rela.gnu.linkonce.this_module`, `exit`'s, moved 4 bytes into it, as an
    /// R_X86_64_64 and as a PC32). The kernel's `init` there holds the init address, in the module
    /// area (upper half 0xffffffff): `apply_relocate_add()` finds the later field's bytes nonzero and
    /// refuses the module. A core session computes the `init` field at the placeholder (upper half
    /// zero), where the later field would find zeros. Fails: a data field that overlaps one computed
    /// against the module's init memory is denied (`relocation`, at the later record's field), as
    /// no other byte test can answer for bytes the kernel's init address decides.
    func testADataFieldOverOneAgainstInitMemoryIsDenied() throws {
        let f = try FixtureReplay()
        let base = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let section = ".gnu.linkonce.this_module"
        let r = try base.rela(for: section)
        let recs = try base.relocations(for: section)
        let k = try XCTUnwrap(try base.firstRecord(recs, dropLast: true) { i, sec in sec.hasPrefix(".init") && recs[i].type.rawValue == 1 },
                              "an R_X86_64_64 record against init text followed by another")
        let at = r.at + 24 * k
        for type in [UInt32(1), 2] {
            var ed = base
            ed.put(ed.get(UInt64.self, at: at) + 4, at: at + 24)  // record k + 1's r_offset := record k's + 4
            ed.put(type, at: at + 24 + 8)
            try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed.ko), ["init memory"], section, Int(ed.get(UInt64.self, at: at)) + 4)
        }
        // The same record moved to just before the field (out of order, so on the copy path, but
        // adjacent: no overlap): allowed.
        var ed = base
        ed.put(ed.get(UInt64.self, at: at) - 8, at: at + 24)
        let res = try explainer.explain(f, "llc", ko: ed.ko)
        XCTAssertTrue(res.verdict.isAllowed, "\(res.verdict)")
    }

    /// Attack: init text's relocation records out of order, then one the kernel refuses
    /// (`llc`'s `.rela.init.text`; its init text is freed in the capture, so only the core session
    /// sees these records). The kernel relocates init sections like any other and refuses the module
    /// at an unknown type or a nonzero target (`apply_relocate_add()`); the core session checked
    /// them in place and stopped at the first record out of order. Fails: from that record on they
    /// are applied to a scratch copy at the placeholder. Two cases: the last two records' offsets
    /// swapped (out of order, apart) and the last retyped to 99 (unknown: refused); the second
    /// record moved onto the first one's field (its bytes the first one's write: refused at it).
    func testInitTextRecordsAfterOneOutOfOrderAreStillChecked() throws {
        let f = try FixtureReplay()
        let base = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try base.rela(for: ".init.text")
        let recs = try base.relocations(for: ".init.text")
        XCTAssertGreaterThanOrEqual(recs.count, 4)
        XCTAssertTrue(recs.indices.dropFirst().allSatisfy { recs[$0].offset >= recs[$0 - 1].offset + 4 }, "in order and apart")
        // The honest module: allowed.
        XCTAssertTrue(try explainer.explain(f, "llc", ko: base.ko).verdict.isAllowed)
        var ed = base
        let a = r.at + 24 * (recs.count - 2), b = r.at + 24 * (recs.count - 1)
        let (oa, ob) = (ed.get(UInt64.self, at: a), ed.get(UInt64.self, at: b))
        ed.put(ob, at: a)
        ed.put(oa, at: b)
        ed.put(UInt32(99), at: b + 8)
        try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed.ko), ["unknown relocation type"], ".init.text", Int(oa))
        ed = base
        ed.put(ed.get(UInt64.self, at: r.at), at: r.at + 24)  // record 1's r_offset := record 0's (signed bytes there: zero)
        try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed.ko), ["nonzero", "not known here"], ".init.text", Int(recs[0].offset))
    }

    /// Attack: a second relocation section for one of the module's init sections (`llc`'s
    /// `.rela.orc_unwind_ip`, whose data no stage reads, cut to its first record and aimed at `.init.text`, that record's field put
    /// on the field of `.rela.init.text`'s first call after its first record, `dev_add_pack`'s;
    /// the first, `__fentry__`'s, the ftrace stage reads). Init text is freed in the capture: only the core session
    /// replays these records. The kernel applies both sections and refuses the module at the
    /// second one's record (the target is nonzero: the first section wrote it). Fails: the first
    /// section's records are written to a scratch copy at the placeholder before the second runs
    /// (as a data target's are); checked apart, each against the signed bytes, the pair passed
    /// and the module was allowed (checked on the earlier code).
    func testASecondSectionForAnInitSectionSeesTheFirstOnesWrites() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let first = try ed.relocations(for: ".init.text")
        let k = try XCTUnwrap(try ed.firstRecord(first) { i, _ in i > 0 && first[i].type.rawValue == 4 }, "a call after the first")
        let donor = try ed.rela(for: ".orc_unwind_ip")
        let target = try ed.sectionIndex(".init.text")
        ed.put(UInt32(target), at: ed.sectionHeader(donor.index) + 44)  // sh_info
        ed.put(UInt64(24), at: ed.sectionHeader(donor.index) + 32)      // sh_size: one record
        ed.put(first[k].offset, at: donor.at)                            // its r_offset
        try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed.ko), ["nonzero"], ".init.text", Int(first[k].offset))
    }

    /// Attack: an executable field against a symbol of a section the kernel does not allocate
    /// (`llc`'s first plain call in `.text` retargeted to `_note_10`, moved into `.rela.text`, which is
    /// not SHF_ALLOC), claimed with the replay's own end state. The kernel's value there is the
    /// address of its temporary copy of the file, freed after load; the replay made one up
    /// (0xdead… | index), and a claim holding those bytes was explained. Fails: denied
    /// (`relocation`, at the field) before any byte is compared; and a data R_X86_64_32S field
    /// against the same symbol, its addend making the made-up value 0 (it fitted; the kernel's
    /// overflows), is denied too.
    func testAnExecutableFieldAgainstASectionNotAllocatedIsDenied() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try ed.rela(for: ".text")
        let recs = try ed.relocations(for: ".text")
        let names = try ed.symbolNames()
        // (A plain call: not `__fentry__`'s, which the ftrace stage reads, nor a thunk's.)
        let k = try XCTUnwrap(recs.indices.first { recs[$0].type.rawValue == 4 && !names[recs[$0].symbolIndex].hasPrefix("__") }, "a call")
        let note = try ed.symbolIndex("_note_10")
        try ed.setSymbol(note, shndx: UInt16(try ed.sectionIndex(".rela.text")))
        ed.put(UInt32(note), at: r.at + 24 * k + 12)  // r_info's symbol
        try assertRelocationDenial(try explainer.explainHonest(f, "llc", ed.ko), ["does not allocate"], ".text", Int(recs[k].offset))
        // A data field of 32 bits against it (`.data`'s first record retyped R_X86_64_32S): whether
        // the kernel's value, an address of its temporary copy, fits is unknown here: denied.
        var ed2 = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        try ed2.setSymbol(note, shndx: UInt16(try ed2.sectionIndex(".rela.text")))
        let rd = try ed2.rela(for: ".data")
        ed2.put(UInt32(11), at: rd.at + 8)     // r_info's type: R_X86_64_32S
        ed2.put(UInt32(note), at: rd.at + 12)  // r_info's symbol
        // The addend that makes the made-up value 0: it fitted (the kernel's overflows).
        ed2.put(0 &- (Session.madeUpValueTag | UInt64(note) << 24), at: rd.at + 16)
        try assertRelocationDenial(try explainer.explain(f, "llc", ko: ed2.ko), ["does not allocate"], ".data", Int(try ed2.relocations(for: ".data")[0].offset))
    }

    /// Attack: a second relocation section for the same data target (`sh_info` of `.rela.smp_locks`
    /// pointed at `.return_sites`, and of `.rela.retpoline_sites` likewise: one before the table's
    /// own section, one after). The first section's records pass the in-place check and are left
    /// pending; the second must see them written. Fails both ways: the pending records are written
    /// into the copy before the second section runs (`pendingRela`), and the overlapping field is
    /// refused as nonzero, at the record the kernel refuses.
    func testSecondRelocationSectionForOneTargetSeesTheFirstOnesWrites() throws {
        let f = try FixtureReplay()
        for donor in [".smp_locks", ".retpoline_sites"] {
            var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
            let r = try ed.rela(for: donor)
            let target = try ed.sectionIndex(".return_sites")
            ed.put(UInt32(target), at: ed.sectionHeader(r.index) + 44)  // sh_info
            let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko)), donor)
            XCTAssertEqual(d.rule, DenialRule.relocation, "\(donor): \(d.reason)")
            XCTAssertTrue(d.reason.contains("nonzero"), "\(donor): \(d.reason)")
            XCTAssertEqual(d.section, ".return_sites", donor)
            XCTAssertEqual(d.offset, 0, donor)
        }
    }

    /// Attack: records of a data table in reverse order (non-overlapping), so that the in-place
    /// check gives up after the first and the rest go through the copy. Fails to change anything:
    /// the copy holds the records already checked, the rest are applied on it, and the tables the
    /// stages read are the same: the honest claim is allowed with the same statistics and sites,
    /// a changed byte at a return site is still denied.
    func testReorderedRecordsGiveTheSameTables() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        guard case .allowed(let honest) = e.result.verdict else { return XCTFail("llc not allowed") }
        var ed = KoEditor(ko: e.module.ko)
        for table in [".return_sites", ".smp_locks", "__mcount_loc", ".retpoline_sites"] {
            let r = try ed.rela(for: table)
            let recs = (0..<r.count).map { Array(ed.ko[r.at + 24 * $0 ..< r.at + 24 * $0 + 24]) }
            for (k, rec) in recs.reversed().enumerated() { ed.ko.replaceSubrange(r.at + 24 * k ..< r.at + 24 * k + 24, with: rec) }
        }
        let res = try explainer.explain(f, "llc", ko: ed.ko)
        guard case .allowed(let st) = res.verdict else { return XCTFail("\(res.verdict)") }
        XCTAssertEqual(st.bytesByClass, honest.bytesByClass)
        XCTAssertEqual(st.relocationsApplied, honest.relocationsApplied)
        XCTAssertEqual(st.sites, honest.sites)
        XCTAssertEqual(res.runtimeSites?.addresses, e.result.runtimeSites?.addresses)
        let s = try f.session("llc")
        let ret = try XCTUnwrap(s.returnSites.first)
        var c = e.module.claim
        c.text[ret.off] ^= 0x01
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, claim: c)))
        XCTAssertEqual(d.address, ret.addr)
    }

    /// Attack: an `R_X86_64_NONE` record over an earlier field (a record the in-place check must
    /// not count as a write, nor as the end of the previous field). Fails to hide anything: the
    /// kernel skips it (`case R_X86_64_NONE: continue`), so does the walk; the lost record leaves
    /// its return-site entry unrelocated, so the kernel leaves that site unpatched: the loader's
    /// image for the crafted module is allowed, the claim of the real module (site patched) is not.
    func testNoneRecordIsNoWrite() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let r = try ed.rela(for: ".return_sites")
        for k in 0..<24 { ed.ko[r.at + 24 + k] = ed.ko[r.at + k] }
        ed.put(UInt32(0), at: r.at + 24 + 8)  // record 1 := record 0's field, type R_X86_64_NONE
        let (image, s) = try loaderImage(ed.ko, e.module.claim, f.boot.facts, e.before)
        let honest = Set(try f.session("llc").returnSites.map { $0.addr })
        let lost = honest.subtracting(s.returnSites.map { $0.addr })
        XCTAssertEqual(lost.count, 1, "the entry the NONE record left unrelocated names no site")
        var c = e.module.claim
        c.text = image
        XCTAssertTrue(try explainer.explain(f, "llc", ko: ed.ko, claim: c).verdict.isAllowed)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko)))
        XCTAssertEqual(d.rule, .stage(.elf), d.reason)
        XCTAssertEqual(d.address, lost.first)
    }

    /// Attack: a data field that crosses the end of its section, in a section the walk checks in
    /// place (no copy made). Fails: the walk tests each record with the parser's own check before
    /// use; the denial is the parser's error, as if it had checked every record first.
    func testFieldCrossingADataSectionEndIsTheParsersError() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let r = try ed.rela(for: ".return_sites")
        ed.put(UInt64(46), at: r.at + 24 * 3)  // a 4-byte field at 46 of 48
        let expected: String = try ed.elf { e in
            do { _ = try e.relocationSections(); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(expected.contains("outside .return_sites"), expected)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko)))
        XCTAssertEqual(d.rule, .malformedELF)
        XCTAssertEqual(d.reason, expected)
    }
}

// MARK: - Loader refusals the walk did not reach (fixed holes)

final class AdversarialLoaderRefusalTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Was a HOLE (fixed: Relocations.swift `relocateFields` runs the in-place check on an init
    /// section's records in a core session): `apply_relocations()` relocates every SHF_ALLOC
    /// target, init sections included, and refuses the module on an unknown type or a nonzero
    /// target there like anywhere else (arch/x86/kernel/module.c `__write_relocate_add()`). The
    /// core session skipped those sections (no address: init is never explained from the core),
    /// checking only the records' shape, so a module the kernel refuses was allowed: the claim
    /// described a load that cannot have happened (docs/trust.md "Loader refusals").
    func testInitTextRelocationRefusalsAreDenied() throws {
        let f = try FixtureReplay()
        let ko = try XCTUnwrap(f.modules["llc"]).module.ko
        // An unknown type (R_X86_64_GOTPCREL, 9) in .rela.init.text.
        var ed = KoEditor(ko: ko)
        let r = try ed.rela(for: ".init.text")
        ed.ko[r.at + 8] = 9
        if let d = denial(try explainer.explain(f, "llc", ko: ed.ko)) {  // unknown relocation type in .init.text
            XCTAssertEqual(d.rule, DenialRule.relocation, d.reason)
            XCTAssertTrue(d.reason.contains("unknown relocation type"), d.reason)
        }
        // A nonzero relocation target in .init.text.
        var ed2 = KoEditor(ko: ko)
        let rec = try XCTUnwrap(try ed2.relocations(for: ".init.text").first)
        let field = try ed2.elf { $0.section(named: ".init.text")!.fileRange.lowerBound } + Int(rec.offset)
        ed2.ko[field] ^= 0x01
        if let d2 = denial(try explainer.explain(f, "llc", ko: ed2.ko)) {  // nonzero relocation target in .init.text
            XCTAssertEqual(d2.rule, DenialRule.relocation, d2.reason)
            XCTAssertTrue(d2.reason.contains("nonzero"), d2.reason)
        }
    }

    /// Was a HOLE (fixed: Relocations.swift `resolveAllSymbols` returns the first symbol
    /// `simplify_symbols()` refuses, refused before the walk): the kernel resolves every symbol of
    /// the table before any relocation and refuses the module for an unknown undefined symbol
    /// (`Unknown symbol`, -ENOENT) or an SHN_COMMON symbol (-ENOEXEC), used or not. The explainer
    /// resolved symbols only when the walk needed them, so a refused symbol that only init text
    /// (skipped in a core session), or no relocation, used was never refused: the module was
    /// allowed.
    func testEverySymbolIsResolvedAsSimplifySymbolsDoes() throws {
        let f = try FixtureReplay()
        let ko = try XCTUnwrap(f.modules["llc"]).module.ko
        // dev_add_pack is used by llc_init only (.init.text): renamed to a name nothing exports.
        var ed = KoEditor(ko: ko)
        try ed.rename(try ed.symbolIndex("dev_add_pack"), to: "Dev_add_pack")
        if let d = denial(try explainer.explain(f, "llc", ko: ed.ko)) {  // unknown symbol used only by init text
            XCTAssertEqual(d.rule, DenialRule.relocation, d.reason)
            XCTAssertTrue(d.reason.contains("unknown symbol Dev_add_pack"), d.reason)
        }
        // An SHN_COMMON symbol no relocation uses.
        var ed2 = KoEditor(ko: ko)
        try ed2.setSymbol(try ed2.symbolIndex("__crc_llc_sap_list"), shndx: SectionIndex.common)
        if let d2 = denial(try explainer.explain(f, "llc", ko: ed2.ko)) {  // unused SHN_COMMON symbol
            XCTAssertEqual(d2.rule, DenialRule.relocation, d2.reason)
            XCTAssertTrue(d2.reason.contains("SHN_COMMON"), d2.reason)
        }
    }
}

// MARK: - Names (NameTable, SlidExports, KeySymbols)

final class AdversarialNameTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Was a HOLE (fixed: names compare as bytes — SlidExports, ModuleExports, KeySymbols,
    /// ELFFile.section(named:)). `resolve_symbol()` finds an export by `strcmp()` (byte
    /// equality); SlidExports kept `String` equality for non-ASCII names, which is canonical equivalence:
    /// "K" (U+004B) equals U+212A KELVIN SIGN. A verified module exporting "\u{212A}free_skb_reason"
    /// (bytes e2 84 aa …) then resolves a later module's undefined "Kfree_skb_reason", which the
    /// kernel reports as an unknown symbol. Fix: compare names as bytes everywhere (the kernel's
    /// rule), which also removes the String paths.
    func testCanonicallyEquivalentNameDoesNotResolve() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        try ed.rename(try ed.symbolIndex("kfree_skb_reason"), to: "Kfree_skb_reason")
        let addr = try XCTUnwrap(e.before.lookup("kfree_skb_reason"))
        var r = e.before
        r.add(ModuleExports(module: "kelvin", symbols: ["\u{212A}free_skb_reason": addr], functionEntries: []))
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, resolver: r)), "a canonically equivalent export resolved the symbol")
        XCTAssertTrue(d.reason.contains("unknown symbol Kfree_skb_reason"), d.reason)
    }

    /// Attack on the byte-keyed table, in both slot layouts (compact: 16 bytes of the name in the
    /// slot; wide: 40, the shared core index): names that share the 16 bytes of the digest's head
    /// or the 40 kept in a wide slot, names that differ only past them or in their last byte
    /// before them, in length only, by an embedded NUL, empty and very long names, many names
    /// (growth), a copy written after it was taken (the slots are shared until then). Fails: a
    /// seeded history against a `[String: UInt64]` gives the same answer for every lookup,
    /// through the tags and without them (`lookupLikelyPresent`), and the copy keeps the old
    /// answers.
    func testNameTableAgreesWithADictionary() {
        for layout in [NameTable.Layout.compact, .wide] {
            var rng = SeededRNG(seed: 0x5eed_0017)
            var names: [String] = ["", "a", "\0", "a\0", "abcdefgh", "abcdefghi", "abcdefghijklmno", "abcdefghijklmnop", "abcdefghijklmnopq",
                                   "abcdefghijklmnopr", "abcdefghijklmnop\0", String(repeating: "x", count: 4096), String(repeating: "x", count: 4095)]
            let prefix = "__ksymtab_gpl_ab"  // 16 bytes shared by every name below
            for _ in 0..<3000 {
                let n = Int(rng.next() % 40)
                names.append(prefix + String((0..<n).map { _ in Character(Unicode.Scalar(UInt8(0x20 + rng.next() % 0x5f))) }))
            }
            let long = String(repeating: "y", count: 38)  // with two more bytes: the 40 kept in a wide slot
            for n in 0..<6 {
                for last in ["a", "b"] { names.append(long + String(repeating: "z", count: n) + last) }
            }
            var table = NameTable(layout: layout)
            var dict: [String: UInt64] = [:]
            for (k, name) in names.enumerated() where k % 2 == 0 || rng.next() % 3 == 0 {
                let v = rng.next()
                var n = name
                n.withUTF8 { table.insert(UnsafeRawBufferPointer($0), v) }
                dict[name] = v
            }
            XCTAssertEqual(table.count, dict.count)
            for name in names + ["abcdefghijklmnoq", prefix, prefix + "\u{7f}"] {
                var n = name
                n.withUTF8 { u in
                    let b = UnsafeRawBufferPointer(u)
                    XCTAssertEqual(table.lookup(b), dict[name], name)
                    XCTAssertEqual(table.lookupLikelyPresent(b, digest: NameTable.digest(b)), dict[name], name)
                }
            }
            let before = table
            let changed = names.filter { dict[$0] != nil }.prefix(50)
            for name in changed { var n = name; n.withUTF8 { table.insert(UnsafeRawBufferPointer($0), 0) } }
            for name in ["fresh-after-copy"] { var n = name; n.withUTF8 { table.insert(UnsafeRawBufferPointer($0), 7) } }
            for name in changed + ["fresh-after-copy"] {
                var n = name
                n.withUTF8 { u in
                    XCTAssertEqual(before.lookup(UnsafeRawBufferPointer(u)), dict[name], "the copy taken before: \(name)")
                    XCTAssertEqual(table.lookup(UnsafeRawBufferPointer(u)), name == "fresh-after-copy" ? 7 : 0, name)
                }
            }
        }
    }

    /// What a module's stated ksymtab size reserves before any entry is read (``ExportedNames``,
    /// `exportedNames()`): room for at most 4,096 entries in the table and every list, room for all
    /// of a smaller count. Fails: a hostile `__ksymtab` (SHT_NOBITS: no file bytes behind its size,
    /// up to the 128 MiB core) stating 11 million entries reserved 2^25 slots and three lists of 11
    /// million before its first entry was refused (≈ 1.9 GB).
    func testAStatedCountSizesAtMost4096Entries() {
        let hostile = ExportedNames(expecting: 11_000_000)
        XCTAssertEqual(hostile.table.capacity, 8192)
        XCTAssertLessThan(hostile.ranges.capacity, 8192)
        XCTAssertLessThan(hostile.digests.capacity, 8192)
        XCTAssertLessThan(hostile.bytes.capacity, 8192 * 32)
        let real = ExportedNames(expecting: 300)
        XCTAssertGreaterThanOrEqual(real.table.capacity, 600)
        XCTAssertGreaterThanOrEqual(real.ranges.capacity, 300)
        XCTAssertGreaterThanOrEqual(real.digests.capacity, 300)
        XCTAssertEqual(NameTable().capacity, 0)
    }

    /// The byte comparisons behind the hash: a name looked up with a digest of the same hash and
    /// length (as a 64-bit hash collision would give) is found only when its bytes are the stored
    /// name's, whichever byte differs — in the digest's 16-byte head (the slot's head words,
    /// read little-endian as the digest reads a name), inside a wide slot's 40 (bytes 16, 23, 24,
    /// 31, 32, 38, 39) or past them (40, 41, 63), in the compact layout's tail from byte 16 — and
    /// the table keeps answering for the stored name itself. Fails: a comparison that stops at the
    /// hash, skips the head words, stops at the slot's head, or reads the wrong bytes.
    func testNameTableComparesEveryByteBehindTheDigest() {
        for layout in [NameTable.Layout.compact, .wide] {
            for n in [17, 24, 25, 32, 33, 39, 40, 41, 42, 48, 64] {
                let stored = (0..<n).map { UInt8(0x41 + $0 % 26) }
                var table = NameTable(layout: layout)
                stored.withUnsafeBytes { table.insert($0, 99) }
                let d = stored.withUnsafeBytes { NameTable.digest($0) }
                stored.withUnsafeBytes { XCTAssertEqual(table.lookup($0, digest: d), 99) }
                for at in [0, 1, 7, 8, 9, 15, 16, 23, 24, 31, 32, 38, 39, 40, 41, 63] where at < n {
                    var other = stored
                    other[at] ^= 0x20
                    // The stored name's hash, the other name's own head words (a collision).
                    let head = other.withUnsafeBytes { NameTable.digest($0) }
                    let forged = (hash: d.hash, head0: head.head0, head1: head.head1)
                    other.withUnsafeBytes { b in
                        XCTAssertNil(table.lookup(b, digest: forged), "\(layout) length \(n), byte \(at) differs")
                        XCTAssertNil(table.lookupLikelyPresent(b, digest: forged), "\(layout) length \(n), byte \(at) differs")
                    }
                }
            }
        }
    }
}


// MARK: - Static calls: a module's own key defaults (KeySymbols, collectModuleTrampolines)

final class AdversarialStaticCallTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Where the crafted `__SCK__z` points: the module's own `.data` (a real own key), the core
    /// key as an absolute symbol, or the core key reached from `.data` by a wrapping `st_value`.
    enum KeySymbol { case ownData, absolute, wrappedOutOfData }

    /// irqbypass crafted with a trampoline of its own (`__SCT__z`: `jmp <own function>; ud1`,
    /// written into 8 untouched bytes of .text) whose key symbol `__SCK__z` is an absolute symbol
    /// equal to the address of the core key its might_resched sites use. The explainer takes the
    /// trampoline's compiled target as the default of "the module's own key" (docs/trust.md,
    /// static calls rule 3) — looked up by name, with whatever value the key symbol has.
    func craftedForeignKeyDefault(_ f: FixtureReplay, key keySymbol: KeySymbol)
        throws -> (ko: [UInt8], claim: ModuleClaim, target: UInt64, sites: [(off: Int, addr: UInt64, tail: Bool, key: UInt64)], trampoline: UInt64) {
        let e = try XCTUnwrap(f.modules["irqbypass"])
        let s = try f.session("irqbypass")
        let coreKey = try f.callSite(s).key
        let sites = s.staticSites.filter { $0.key == coreKey }
        XCTAssertEqual(sites.count, 4)
        // 8 bytes of .text no stage touches (class elf), and an own function entry to jump to.
        let elfClass = UInt8(ExplanationClass.elf.rawValue)
        let p = try XCTUnwrap((0..<s.cls.count - 8).first { o in s.cls[o..<o + 8].allSatisfy { $0 == elfClass } })
        let target = try XCTUnwrap(s.functionEntries.sorted.first { $0 > e.module.claim.textBase &+ UInt64(p) &+ 8 })
        var ed = KoEditor(ko: e.module.ko)
        let text = try ed.sectionIndex(".text")
        let textFile = try ed.elf { $0.sections[text].fileRange.lowerBound }
        let rel = Int32(Int64(target &- e.module.claim.textBase) - Int64(p + 5))
        ed.ko[textFile + p] = 0xe9
        ed.put(rel, at: textFile + p + 1)
        ed.ko.replaceSubrange(textFile + p + 5 ..< textFile + p + 8, with: [0x0f, 0xb9, 0xcc])
        let tramp = try ed.symbolIndex("__UNIQUE_ID_depends198"), key = try ed.symbolIndex("__crc_irq_bypass_register_producer")
        try ed.rename(tramp, to: "__SCT__z")
        try ed.setSymbol(tramp, shndx: UInt16(text), value: UInt64(p))
        try ed.rename(key, to: "__SCK__z")
        let data = try ed.sectionIndex(".data"), dataAddr = try XCTUnwrap(e.module.claim.sectionAddresses[".data"])
        switch keySymbol {
        case .ownData: try ed.setSymbol(key, shndx: UInt16(data), value: 0)
        case .absolute: try ed.setSymbol(key, shndx: SectionIndex.abs, value: coreKey)
        case .wrappedOutOfData: try ed.setSymbol(key, shndx: UInt16(data), value: coreKey &- dataAddr)  // .data + value wraps onto the core key
        }
        // The claim: the loader's image of the crafted module, every site of the core key calling
        // the trampoline's target (the trampoline holds `jmp target`: one state for the key).
        let core = SymbolResolver(coreExports: f.boot.coreExports)  // irqbypass loaded first: no earlier state for the key
        var claim = e.module.claim
        claim.text = try loaderImage(ed.ko, claim, f.boot.facts, core).image
        XCTAssertEqual(Array(claim.text[p..<p + 8]), [0xe9] + withUnsafeBytes(of: rel.littleEndian, Array.init) + [0x0f, 0xb9, 0xcc])
        for site in sites { claim.text.replaceSubrange(site.off..<site.off + 5, with: try XCTUnwrap(genInsn(0xe8, at: site.addr, to: target))) }
        return (ed.ko, claim, target, sites, claim.textBase + UInt64(p))
    }

    /// Control: the same crafted trampoline with its key symbol in the module's own `.data` (a
    /// real own key). Its default is trusted for that key only: the core key's sites may not call
    /// the module's function (denied at the first site).
    func testOwnTrampolineDefaultIsTrustedForItsOwnKeyOnly() throws {
        let f = try FixtureReplay()
        let (ko, claim, _, sites, _) = try craftedForeignKeyDefault(f, key: .ownData)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "irqbypass", ko: ko, claim: claim, resolver: SymbolResolver(coreExports: f.boot.coreExports))))
        XCTAssertEqual(d.rule, .stage(.staticCall), d.reason)
        XCTAssertEqual(d.address, sites[0].addr)
    }

    /// Was a HOLE (fixed: `Session.ownKeyAddress`): a module's "own key" was whatever address its
    /// `__SCK__<name>` symbol had. With an absolute key symbol, or a `.data` symbol whose value
    /// wraps the section address onto the core key, the module's trampoline default became trusted
    /// for a *core* key: every site of that key could call the module's chosen function, here and
    /// (through `ModuleExports.staticCallTrustedTargets`) in every later module. The kernel never
    /// writes it: `static_call_add_module()` patches a site of a core key with that key's `func`,
    /// which the module's trampoline does not change. Now a key symbol counts only when the whole
    /// `struct static_call_key` lies in one of the module's own allocated core sections; otherwise
    /// the trampoline has no key (RET form only) and the attack is denied at the trampoline.
    func testForeignKeyCannotBorrowAModuleTrampolineDefault() throws {
        let f = try FixtureReplay()
        for key in [KeySymbol.absolute, .wrappedOutOfData] {
            let (ko, claim, target, sites, trampoline) = try craftedForeignKeyDefault(f, key: key)
            let res = try explainer.explain(f, "irqbypass", ko: ko, claim: claim, resolver: SymbolResolver(coreExports: f.boot.coreExports))
            guard let d = denial(res) else {
                XCTFail("\(key): sites of a core key call the module's function 0x\(String(target, radix: 16))")
                continue
            }
            // A key symbol that is not the module's own names no key: the trampoline may hold
            // only its RET form, and it comes first in address order.
            XCTAssertEqual(d.rule, .stage(.staticCall), "\(key): \(d.reason)")
            XCTAssertEqual(d.address, trampoline, "\(key)")
            XCTAssertLessThan(trampoline, sites[0].addr)
            XCTAssertTrue(d.reason.contains("static-call trampoline"), d.reason)
        }
    }
}

// MARK: - The region built in one write per byte (Session.sectionImage) and its size

final class AdversarialRegionTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Attack: a claimed region longer or shorter than `layout_sections()`'s text_size (extra
    /// bytes to get EXEC on, or a region that leaves out the tail). Fails at set-up: the size must
    /// be exactly the layout's (`layout`), before any byte is built or compared.
    func testRegionSizeMustBeTheLayouts() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["8021q"])
        for text in [e.module.claim.text + [UInt8](repeating: 0, count: 4096), Array(e.module.claim.text.dropLast()), [], e.module.claim.text + [0xc3]] {
            var c = e.module.claim
            c.text = text
            let d = try XCTUnwrap(denial(try explainer.explain(f, "8021q", ko: e.module.ko, claim: c)), "\(text.count) bytes")
            XCTAssertEqual(d.rule, .layout, d.reason)
            XCTAssertTrue(d.reason.contains("claimed executable region is \(text.count) bytes"), d.reason)
        }
    }

    /// Attack: code in the alignment gaps between exec sections and after the last one (bytes the
    /// fast build zeroes without copying anything there), and a byte just past each section's end.
    /// Fails: every gap byte is padding and must be zero (`(padding)`, the padding rule), every
    /// section byte is compared as the loader leaves it.
    func testGapsBetweenSectionsMustBeZero() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["8021q"])
        let s = try f.session("8021q")
        XCTAssertGreaterThan(s.execRanges.count, 1, "8021q has several exec core sections")
        var gaps: [Range<Int>] = []
        for (k, r) in s.execRanges.enumerated() {
            let next = k + 1 < s.execRanges.count ? s.execRanges[k + 1].lo : s.image.count
            if r.hi < next { gaps.append(r.hi..<next) }
        }
        XCTAssertFalse(gaps.isEmpty)
        for g in gaps {
            for at in Set([g.lowerBound, g.upperBound - 1, (g.lowerBound + g.upperBound) / 2]) {
                var c = e.module.claim
                XCTAssertEqual(c.text[at], 0)
                c.text[at] = 0xc3
                let d = try XCTUnwrap(denial(try explainer.explain(f, "8021q", ko: e.module.ko, claim: c)), "gap byte \(at)")
                XCTAssertEqual(d.section, "(padding)", "\(at): \(d.reason)")
                XCTAssertEqual(d.rule, .stage(.padding), d.reason)
                XCTAssertEqual(d.address, c.textBase + UInt64(at))
            }
        }
        // Zero-size exec sections take no bytes; sections sit apart (the fast build's condition).
        for (a, b) in zip(s.execRanges, s.execRanges.dropFirst()) { XCTAssertLessThanOrEqual(a.hi, b.lo) }
    }
}

// MARK: - Tables: function entries (radix sort)

final class AdversarialTableTests: XCTestCase {
    /// Attack on the radix sort (offsets from the lowest entry, 4 x 8 bits, taken when the span
    /// fits in 32 bits): entries spanning exactly 2^32 - 1, duplicates, clusters on one byte
    /// value, reversed input, and a span one past (then the comparison sort). Fails: the table is
    /// the sorted distinct set every time, and membership answers as the set does.
    func testFunctionEntriesRadixSortAgreesWithASort() {
        var rng = SeededRNG(seed: 0xf00d_0011)
        let lo: UInt64 = 0xffff_ffff_c000_0000
        for round in 0..<40 {
            let span: UInt64 = round % 4 == 0 ? UInt64(UInt32.max) : (round % 4 == 1 ? UInt64(UInt32.max) + 1 : UInt64(1) << (8 + rng.next() % 24))
            let n = 64 + Int(rng.next() % 600)
            var a = (0..<n).map { _ in lo &+ rng.next() % (span + 1) }
            a.append(lo)
            a.append(lo &+ span)
            if round % 3 == 0 { a += a.prefix(50) }  // duplicates
            if round % 5 == 0 { a = a.map { $0 & ~0xff00 } }  // one byte value in a middle digit
            if round % 2 == 0 { a.sort(by: >) }
            let fe = FunctionEntries(a)
            XCTAssertEqual(fe.sorted, Array(Set(a)).sorted(), "round \(round)")
            for _ in 0..<50 {
                let q = rng.next() % 2 == 0 ? a[Int(rng.next() % UInt64(a.count))] : lo &+ rng.next() % (span + 2)
                XCTAssertEqual(fe.contains(q), a.contains(q), "round \(round) 0x\(String(q, radix: 16))")
            }
        }
    }
}


// MARK: - Jump labels: one state per key (Comparison.swift)

final class AdversarialJumpLabelTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// test_static_keys crafted so that the second 2-byte site of a key (the one with the other
    /// branch default) names a target 4 KiB away, which no `jmp rel8` reaches. Returns the
    /// module, the real module's end state with both sites NOP (the key "disabled" at one site and
    /// "enabled" at the other) and the two sites' addresses.
    func craftedUnencodableJump(_ f: FixtureReplay) throws -> (ko: [UInt8], claim: ModuleClaim, first: UInt64, second: UInt64) {
        let e = try XCTUnwrap(f.modules["test_static_keys"])
        let s = try f.session("test_static_keys")
        // A key with two 2-byte sites of opposite branch defaults.
        let groups = Dictionary(grouping: s.variable.filter { $0.cls == .jumpLabel && $0.length == 2 }, by: { $0.group! })
        let pair = try XCTUnwrap(groups.values.compactMap { v -> (VariableSite, VariableSite)? in
            guard v.count == 2, case .jumpLabel(_, _, let b0) = v[0].rule, case .jumpLabel(_, _, let b1) = v[1].rule, b0 != b1 else { return nil }
            return (v[0], v[1])
        }.min { $0.0.offset < $1.0.offset })
        let (a, b) = pair.0.offset < pair.1.offset ? pair : (pair.1, pair.0)
        let base = e.module.claim.textBase
        // The __jump_table entry of the second site (`s32 code` relative to the entry): its
        // target field's record (at entry + 4) gets +4096.
        let t = try XCTUnwrap(s.table("__jump_table"))
        let entry = try XCTUnwrap(stride(from: 0, to: t.bytes.count, by: 16).first { o in
            t.bytes.getInteger(at: o, as: Int32.self).map { t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64($0)) } == base &+ UInt64(b.offset)
        }, "jump entry of the second site")
        var ed = KoEditor(ko: e.module.ko)
        let recs = try ed.relocations(for: "__jump_table")
        let r = try ed.rela(for: "__jump_table")
        let k = try XCTUnwrap(recs.firstIndex { Int($0.offset) == entry + 4 })
        ed.put(recs[k].addend + 4096, at: r.at + 24 * k + 16)
        // The crafted module differs in data only: its text is the real module's; both sites NOP.
        var claim = e.module.claim
        claim.text.replaceSubrange(a.offset..<a.offset + 2, with: x86Nops[2])
        claim.text.replaceSubrange(b.offset..<b.offset + 2, with: x86Nops[2])
        return (ed.ko, claim, base + UInt64(a.offset), base + UInt64(b.offset))
    }

    /// Was a HOLE (fixed: `addJumpLabels` denies a site whose jump cannot be encoded): a key whose
    /// sites disagree is caught only through a byte difference: the comparison writes the site's
    /// encoding of the key's earlier state and notes it. When that encoding was the claimed bytes
    /// — a 2-byte site whose jump cannot be encoded (`jmp` nil, `encode` fell back to the NOP) —
    /// nothing differed and the claim was allowed with the key "off" at one site and "on" at the
    /// other, a state no kernel reaches: `__jump_label_patch()` builds the jump with
    /// `text_gen_insn()`, whose JMP8 displacement check is a BUG_ON, on every patch of the site.
    func testDisagreeingKeyStatesAreDeniedWithoutAByteDifference() throws {
        let f = try FixtureReplay()
        let (ko, claim, first, second) = try craftedUnencodableJump(f)
        // Control: the real module with both sites NOP is denied at the second (its jump differs).
        let e = try XCTUnwrap(f.modules["test_static_keys"])
        var honest = e.module.claim
        for a in [first, second] { honest.text.replaceSubrange(Int(a - honest.textBase)..<Int(a - honest.textBase) + 2, with: x86Nops[2]) }
        let d0 = try XCTUnwrap(denial(try explainer.explain(f, "test_static_keys", ko: e.module.ko, claim: honest)))
        XCTAssertEqual(d0.rule, .jumpLabel, d0.reason)
        XCTAssertEqual(d0.address, second)
        XCTAssertTrue(d0.reason.contains("state disagrees"), d0.reason)
        let res = try explainer.explain(f, "test_static_keys", ko: ko, claim: claim)
        let d = try XCTUnwrap(denial(res), "one key, NOP at both sites of opposite branch defaults")
        XCTAssertEqual(d.rule, .jumpLabel, d.reason)
        XCTAssertEqual(d.address, second)
        XCTAssertTrue(d.reason.contains("cannot be encoded"), d.reason)
    }
}

// MARK: - Exports: names and values from `__ksymtab_<name>` symbols, not the ksymtab entries

final class AdversarialExportTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Was a HOLE (fixed: Comparison.swift `exportedNames()` reads the relocated entries;
    /// KsymtabEntryTests). `verify_exported_symbols()` and `find_symbol()` read the module's `__ksymtab` /
    /// `__ksymtab_gpl` *entries* (`struct kernel_symbol`: `value_offset`, `name_offset` into
    /// `__ksymtab_strings`, relocated by `apply_relocate_add()`). The explainer derived a module's
    /// exported names from its `__ksymtab_<name>` symbol *names*. With that symbol renamed (same
    /// entry, same string), the duplicate-export check missed a name the kernel finds exported
    /// twice and refuses: the module was allowed.
    func testDuplicateExportIsFoundInTheKsymtabEntries() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var r = e.before
        r.add(ModuleExports(module: "other", symbols: ["llc_sap_find": 0xffff_ffff_c000_0000], functionEntries: []))
        let d0 = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: e.module.ko, resolver: r)), "control: the real llc")
        XCTAssertEqual(d0.rule, .duplicateExport, d0.reason)
        var ed = KoEditor(ko: e.module.ko)
        try ed.rename(try ed.symbolIndex("__ksymtab_llc_sap_find"), to: "__ksymtaX_llc_sap_find")
        if let d = denial(try explainer.explain(f, "llc", ko: ed.ko, resolver: r)) {  // llc's __ksymtab still names llc_sap_find
            XCTAssertEqual(d.rule, .duplicateExport, d.reason)
        }
    }

    /// Was a HOLE (fixed with the one above): the value of a module's export is, for the kernel, what its ksymtab entry's
    /// `value_offset` is relocated to (`kernel_symbol_value()`); the explainer takes the value of
    /// the symbol that has the exported name. llc crafted with the entry of `llc_sap_open`
    /// relocated against `llc_sap_close` (data only: llc itself is allowed, as the kernel loads
    /// it): the kernel resolves stp's calls to `llc_sap_open` to llc_sap_close's code, the
    /// explainer to llc_sap_open's, so stp's end state with calls to llc_sap_open — which no
    /// kernel writes after this llc — is allowed.
    func testExportValueIsTheKsymtabEntrysTarget() throws {
        let f = try FixtureReplay()
        let llc = try XCTUnwrap(f.modules["llc"]), stp = try XCTUnwrap(f.modules["stp"])
        var ed = KoEditor(ko: llc.module.ko)
        let open = try ed.symbolIndex("llc_sap_open"), close = try ed.symbolIndex("llc_sap_close")
        let recs = try ed.relocations(for: "__ksymtab"), r = try ed.rela(for: "__ksymtab")
        let k = try XCTUnwrap(recs.firstIndex { $0.symbolIndex == open }, "the entry's value field")
        ed.put(UInt32(close), at: r.at + 24 * k + 12)  // r_info's symbol half
        let res = try explainer.explain(f, "llc", ko: ed.ko)
        XCTAssertTrue(res.verdict.isAllowed, "\(res.verdict)")
        var resolver = llc.before
        resolver.add(try XCTUnwrap(res.exports))
        let closeAddr = try XCTUnwrap(llc.result.exports?.symbols["llc_sap_close"])
        XCTAssertEqual(resolver.lookup("llc_sap_open"), closeAddr, "the kernel's llc_sap_open is what its ksymtab entry names")
        if let d = denial(try explainer.explain(f, "stp", ko: stp.module.ko, resolver: resolver)) {
            XCTAssertEqual(d.rule, .relocation, d.reason)
        }
    }
}

// MARK: - Per-cpu section: find_sec() and a zero-size area

final class AdversarialPerCPUTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// llc with its empty `.note.GNU-stack` section renamed `.data..percpu` (and given `flags`),
    /// and the `.bss` section symbol — which `.text` uses through `R_X86_64_32S` / `PC32` fields —
    /// moved into it. Returns the module and its `.bss` symbol.
    func craftedPerCPU(_ f: FixtureReplay, flags: UInt64) throws -> (ko: [UInt8], bssSymbol: Int) {
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let decoy = try ed.sectionIndex(".note.GNU-stack")
        let names = try ed.elf { $0.sections.map(\.name) }
        let shstr = try ed.elf { $0.sections[$0.shstrndx].fileRange.lowerBound }
        let at = shstr + Int(ed.get(UInt32.self, at: ed.sectionHeader(decoy)))
        for (k, b) in ".data..percpu\0".utf8.enumerated() { ed.ko[at + k] = b }
        ed.put(flags, at: ed.sectionHeader(decoy) + 8)
        let after = try ed.elf { $0.sections.map(\.name) }
        for i in names.indices where i != decoy { XCTAssertEqual(after[i], names[i]) }
        XCTAssertEqual(after[decoy], ".data..percpu")
        let bssSym = try XCTUnwrap(try ed.elf { e -> Int? in
            let t = try e.symbolTable()
            let b = e.section(named: ".bss")!.index
            return t.indices.first { t.info($0) & 0xf == 3 && Int(t.sectionIndex($0)) == b }  // STT_SECTION of .bss
        })
        try ed.setSymbol(bssSym, shndx: UInt16(decoy))
        return (ed.ko, bssSym)
    }

    /// The claim with every field of `.text` against the `.bss` symbol holding `base + A`
    /// (`- P` for PC32): what the kernel writes with `mod_percpu(mod) == base`.
    func claim(_ f: FixtureReplay, _ ko: [UInt8], _ bssSym: Int, fieldsAt base: UInt64) throws -> ModuleClaim {
        var c = try XCTUnwrap(f.modules["llc"]).module.claim
        let ed = KoEditor(ko: ko)
        let textOff = try ko.withUnsafeBytes { raw in try XCTUnwrap(ModuleLayout.compute(try ELFFile(bytes: raw))?.coreOffset[try ed.sectionIndex(".text")]) }
        var n = 0
        for r in try ed.relocations(for: ".text") where r.symbolIndex == bssSym {
            // R_X86_64_32S: S + A; R_X86_64_PC32: S + A - P.
            XCTAssertTrue(r.type.rawValue == 11 || r.type.rawValue == 2, "\(r.type)")
            let place = c.textBase &+ UInt64(textOff) &+ r.offset
            let v = UInt32(truncatingIfNeeded: base &+ UInt64(bitPattern: r.addend) &- (r.type.rawValue == 2 ? place : 0))
            for k in 0..<4 { c.text[textOff + Int(r.offset) + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
            n += 1
        }
        XCTAssertGreaterThan(n, 0)
        c.percpuBase = base == 0 ? nil : base
        return c
    }

    /// Was a HOLE (fixed: Relocations.swift `resolveSymbol`): a zero-size per-cpu section gets no
    /// per-cpu area (`percpu_modalloc()` returns at once: `if (!pcpusec->sh_size) return 0`), so
    /// `mod_percpu(mod)` is NULL and `simplify_symbols()` gives its symbols `0 + st_value`. The
    /// explainer checked a claimed base only when the section has a size, yet used it for the
    /// symbols whatever the size: any claimed base was allowed, `%gs:` aimed anywhere (here
    /// 0x2ad00, beside the core's `current_task`). Now the symbols are `st_value`, the base unused.
    func testZeroSizePerCPUSectionUsesNoClaimedBase() throws {
        let f = try FixtureReplay()
        let (ko, bss) = try craftedPerCPU(f, flags: SectionFlags.alloc.rawValue | SectionFlags.write.rawValue)
        var aimed = try claim(f, ko, bss, fieldsAt: 0x2ad00)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko, claim: aimed)), "fields at a claimed base of an empty per-cpu section")
        XCTAssertEqual(d.rule, .relocation, d.reason)
        // The kernel's bytes (fields at 0 + A) are explained, with or without a claimed base.
        let kernel = try claim(f, ko, bss, fieldsAt: 0)
        XCTAssertTrue(try explainer.explain(f, "llc", ko: ko, claim: kernel).verdict.isAllowed)
        aimed.text = kernel.text
        XCTAssertTrue(try explainer.explain(f, "llc", ko: ko, claim: aimed).verdict.isAllowed, "the claimed base is not used")
    }

    /// Was a HOLE (fixed: Layout.swift `loaderFlags`): `find_sec()` (kernel/module/main.c)
    /// returns the first *SHF_ALLOC* section of a name ("Alloc bit cleared means ignore it");
    /// the explainer took the first section of the name, allocated or not, as the per-cpu
    /// section and resolved its symbols against the claimed per-cpu base. For the kernel a
    /// non-ALLOC `.data..percpu` is no per-cpu section: its symbols get the temporary copy's
    /// address (in vmalloc space: the `R_X86_64_32S` fields overflow and the kernel refuses the
    /// module). Now no per-cpu section is found, the symbols take the non-ALLOC placeholder, and
    /// the module is denied at the first field.
    func testNonAllocPerCPUSectionIsNotThePerCPUArea() throws {
        let f = try FixtureReplay()
        let (ko, bss) = try craftedPerCPU(f, flags: 0)
        let idx = try ko.withUnsafeBytes { raw in ModuleLayout.compute(try ELFFile(bytes: raw))?.percpuIndex }
        XCTAssertNil(idx, "find_sec() finds no SHF_ALLOC .data..percpu")
        let pb = try XCTUnwrap(f.boot.facts.modulePercpuRange?.lowerBound)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko, claim: try claim(f, ko, bss, fieldsAt: pb))),
                              "fields at the claimed base of a non-ALLOC .data..percpu")
        XCTAssertEqual(d.rule, .relocation, d.reason)
        XCTAssertTrue(d.reason.contains("overflow"), d.reason)
    }
}

extension AdversarialJumpLabelTests {
    /// Was a HOLE (fixed: `addJumpLabels` denies a site whose loaded bytes are neither its NOP
    /// nor its jump): a jump entry whose code points at an instruction that is neither — here a
    /// `call` (5 bytes, so `arch_jump_entry_size()` says 5) — let the claim hold NOP5 or `jmp
    /// target` there: the call NOPed out. No kernel writes that: `__jump_label_patch()` compares
    /// the site with the encoding it expects to replace and BUGs on anything else, so such a site
    /// is never patched; only its loaded bytes are reachable.
    func testJumpEntryAtANonSiteInstructionCannotNopIt() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["test_static_keys"])
        let s = try f.session("test_static_keys")
        let elfClass = UInt8(ExplanationClass.elf.rawValue), relocClass = UInt8(ExplanationClass.relocation.rawValue)
        // A call no stage rewrites (opcode of the ELF class, its rel32 a relocation field).
        let call = try XCTUnwrap(s.relocFields.first { r in
            r.off >= 1 && s.image[r.off - 1] == 0xe8 && s.cls[r.off - 1] == elfClass && s.cls[r.off..<r.off + 4].allSatisfy { $0 == relocClass }
        }).off - 1
        // The jump entry of the first site: its code field (S + A) moved by the distance to the call
        // (the core layout fixes the distance between any two core sections).
        let site = try XCTUnwrap(s.jumpSites.min { $0.off < $1.off })
        let t = try XCTUnwrap(s.table("__jump_table"))
        let entry = try XCTUnwrap(stride(from: 0, to: t.bytes.count, by: 16).first { o in
            t.bytes.getInteger(at: o, as: Int32.self).map { t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64($0)) } == site.code
        })
        var ed = KoEditor(ko: e.module.ko)
        let recs = try ed.relocations(for: "__jump_table"), r = try ed.rela(for: "__jump_table")
        let k = try XCTUnwrap(recs.firstIndex { Int($0.offset) == entry })
        ed.put(recs[k].addend + Int64(call - site.off), at: r.at + 24 * k + 16)
        // The crafted module's loaded text is the real one's (only data changed): the real end
        // state with the call NOPed out.
        var claim = e.module.claim
        XCTAssertEqual(claim.text[call], 0xe8)
        claim.text.replaceSubrange(call..<call + 5, with: x86Nops[5])
        let d = try XCTUnwrap(denial(try CraftedExplainer().explain(f, "test_static_keys", ko: ed.ko, claim: claim)), "a call NOPed out through a jump entry")
        XCTAssertEqual(d.rule, .jumpLabel, d.reason)
        XCTAssertEqual(d.address, claim.textBase + UInt64(call))
        XCTAssertTrue(d.reason.contains("neither its NOP nor its jump"), d.reason)
    }
}

extension AdversarialStaticCallTests {
    /// Was a HOLE (fixed: `addStaticCalls` validates the loaded site by its kind): a static-call
    /// site entry (non-tail) whose address names a `jmp` (a tail call) instead of a call was
    /// accepted, since any of call/jmp/Jcc/NOP5/ret passed as the loaded site for either kind;
    /// the claim could turn the tail jump into a call of the key's target (or NOP5: fall through).
    /// The kernel's `__static_call_validate()` accepts a call, NOP5 or `xor5rax` for a non-tail
    /// site and a jmp, ret or Jcc for a tail site, and BUGs on anything else, so no kernel
    /// patches such a site.
    func testNonTailSiteOverAJumpIsDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["irqbypass"])
        let s = try f.session("irqbypass")
        let elfClass = UInt8(ExplanationClass.elf.rawValue), relocClass = UInt8(ExplanationClass.relocation.rawValue)
        let jmp = try XCTUnwrap(s.relocFields.first { r in
            r.off >= 1 && s.image[r.off - 1] == 0xe9 && s.cls[r.off - 1] == elfClass && s.cls[r.off..<r.off + 4].allSatisfy { $0 == relocClass }
        }, "a tail jump no stage rewrites").off - 1
        let site = try f.callSite(s)
        let sites = s.staticSites.filter { $0.key == site.key }
        let moved = try XCTUnwrap(sites.last)
        // Its .static_call_sites entry: the `s32 addr` field (S + A - P) moved by the distance.
        let t = try XCTUnwrap(s.table(".static_call_sites"))
        let entry = try XCTUnwrap(stride(from: 0, to: t.bytes.count, by: 8).first { o in
            t.bytes.getInteger(at: o, as: Int32.self).map { t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64($0)) } == moved.addr
        })
        var ed = KoEditor(ko: e.module.ko)
        let recs = try ed.relocations(for: ".static_call_sites"), r = try ed.rela(for: ".static_call_sites")
        let k = try XCTUnwrap(recs.firstIndex { Int($0.offset) == entry })
        ed.put(recs[k].addend + Int64(jmp - moved.off), at: r.at + 24 * k + 16)
        // The real end state (the crafted module's text is the real one's), the moved site's
        // loaded call restored, the jump turned into the key's call (its state at the other sites).
        var claim = e.module.claim
        let loaded = try loaderImage(e.module.ko, e.module.claim, f.boot.facts, e.before).image
        XCTAssertEqual(loaded[moved.off], 0xe8)
        claim.text.replaceSubrange(moved.off..<moved.off + 5, with: loaded[moved.off..<moved.off + 5])
        let state = try XCTUnwrap(s.staticCallStates[site.key])
        claim.text.replaceSubrange(jmp..<jmp + 5, with: try XCTUnwrap(genInsn(0xe8, at: claim.textBase + UInt64(jmp), to: state)))
        let d = try XCTUnwrap(denial(try CraftedExplainer().explain(f, "irqbypass", ko: ed.ko, claim: claim)), "a tail jump turned into a call")
        XCTAssertEqual(d.rule, .stage(.staticCall), d.reason)
        XCTAssertEqual(d.address, claim.textBase + UInt64(jmp))
        XCTAssertTrue(d.reason.contains("__static_call_validate"), d.reason)
    }
}
