// SPDX-License-Identifier: Apache-2.0
//
// The trace-event probe walk (`Session.addOwnTraceEventProbes`, docs/trust.md rule 3: a module's
// own class probes trusted for its own tracepoint keys) against a naive reading of the same rule,
// on crafted relocation records. The walk finds a field through an index of each section it asks
// about (an array by 8-byte slot, or a table for an offset not 8-aligned and for a section with
// few records for its size); the naive reading scans every record of the section at every ask.
// A field is the one valid R_X86_64_64 record at exactly its offset: two such records make no
// field, another type is no field, a record the parser refuses is no field. The guest chooses
// nothing here (the records are the signed module's); a hostile *module* is what a crafted file
// stands for, as in AdversarialExplainTests (the signature is a separate layer).

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class TraceEventProbeWalkTests: XCTestCase {
    typealias Field = (sym: Int, addend: Int64)

    /// The one valid R_X86_64_64 record at exactly (`sec`, `off`), by a scan of every record.
    static func naiveField(_ s: Session, _ sec: Int, _ off: UInt64) -> Field? {
        guard sec >= 0, sec < s.elf.sections.count, sec < 1 << 24, off < 1 << 40 else { return nil }
        var hits: [Field] = []
        for rs in s.rela where rs.targetSectionIndex == sec {
            let rr = rs.relocations
            for i in rr.indices where rr.isValid(i) && rr[i].type == .r64 && rr[i].offset == off { hits.append((rr[i].symbolIndex, rr[i].addend)) }
        }
        return hits.count == 1 ? hits[0] : nil
    }

    /// The rule read naively (include/trace/trace_events.h's structures, kernel/trace/trace_events.c
    /// trace_event_reg()): each `_ftrace_events` slot → the call; its class (+16) and tracepoint
    /// (+24); a class whose `reg` (+24) is the core's `trace_event_reg` and a tracepoint whose key
    /// (+24) is one of the module's own tracepoint keys makes the class's probe (+8) and perf probe
    /// (+16) targets of that key, when they are function entries of the module. Also the fields
    /// asked, in order.
    static func naiveProbes(_ s: Session) -> (pairs: [[UInt64]], asked: [(sec: Int, off: UInt64)]) {
        var asked: [(sec: Int, off: UInt64)] = []
        func field(_ sec: Int, _ off: UInt64) -> Field? {
            asked.append((sec, off))
            return naiveField(s, sec, off)
        }
        func pointee(_ f: Field?) -> (sec: Int, off: UInt64)? {
            guard let f else { return nil }
            let shndx = s.symtab.sectionIndex(f.sym)
            guard shndx != SectionIndex.undef, shndx < SectionIndex.loReserve, Int(shndx) < s.elf.sections.count else { return nil }
            let (o, ov) = s.symtab.value(f.sym).addingReportingOverflow(UInt64(bitPattern: f.addend))
            return ov ? nil : (Int(shndx), o)
        }
        func value(_ f: Field?) -> UInt64? {
            guard let f, let v = try? s.symbolValue(f.sym) else { return nil }
            return v &+ UInt64(bitPattern: f.addend)
        }
        // find_sec(): the first section of the name with SHF_ALLOC (as the loader leaves the flags).
        guard let ev = s.elf.sections(named: "_ftrace_events").first(where: { s.layout.flags[$0.index].contains(.alloc) }),
              ev.size >= 8 else { return ([], []) }
        let own = Set(ModuleTracepointKeyTests.ownTracepointKeys(s))
        if own.isEmpty { return ([], []) }
        var pairs = Set<[UInt64]>()
        for slot in stride(from: UInt64(0), through: UInt64(ev.size) - 8, by: 8) {
            guard let c = pointee(field(ev.index, slot)), let cls = pointee(field(c.sec, c.off &+ 16)),
                  let tp = pointee(field(c.sec, c.off &+ 24)) else { continue }
            guard let reg = field(cls.sec, cls.off &+ 24), s.symtab.isUndefined(reg.sym), reg.addend == 0,
                  s.symtab.nameEquals(reg.sym, "trace_event_reg"),
                  let key = value(field(tp.sec, tp.off &+ 24)), own.contains(key) else { continue }
            for d: UInt64 in [8, 16] {
                if let p = value(field(cls.sec, cls.off &+ d)), s.functionEntries.contains(p) { pairs.insert([key, p]) }
            }
        }
        return (pairs.sorted { $0.lexicographicallyPrecedes($1) }, asked)
    }

    /// The (key, target) pairs the walk adds, on a session of its own (nothing else added).
    static func walkProbes(_ s: Session) -> [[UInt64]] {
        s.ownKeyDefaults = KeyTargets()
        s.addOwnTraceEventProbes()
        s.ownKeyDefaults.freeze()
        var out: [[UInt64]] = []
        s.ownKeyDefaults.forEachKey { k, ts in for t in ts { out.append([k, t]) } }
        return out
    }

    /// Both readings of `ko` (module `name`), on a session set up as the explainer's.
    static func probes(_ f: FixtureReplay, _ ko: [UInt8], _ name: String) throws -> (walk: [[UInt64]], naive: [[UInt64]], asked: [(sec: Int, off: UInt64)]) {
        let facts = try ModuleTracepointKeyTests.facts(f, for: [ko])
        let resolver = SymbolResolver(coreExports: facts.exports)
        return try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(elf))
            let claim = ModuleClaim(name: name, textBase: ModuleTracepointKeyTests.base, text: [UInt8](repeating: 0, count: plan.textSize), sectionAddresses: [:])
            let s = try Session(elf: elf, claim: claim, facts: facts, resolver: resolver)
            let (naive, asked) = naiveProbes(s)
            return (walkProbes(s), naive, asked)
        }
    }

    /// File offset and count of the records of every RELA section targeting section `sec`.
    static func recordRanges(_ ed: KoEditor, _ sec: Int) throws -> [(at: Int, count: Int)] {
        try ed.elf { e in
            try e.relocationSections(checkingRecords: false).filter { $0.targetSectionIndex == sec }.map { ($0.section.fileRange.lowerBound, $0.relocations.count) }
        }
    }

    /// The fixture replay, jbd2's signed bytes and both readings of them (jbd2: 21 own tracepoint
    /// keys, no dependencies).
    static func jbd2() throws -> (FixtureReplay, [UInt8], (walk: [[UInt64]], naive: [[UInt64]], asked: [(sec: Int, off: UInt64)])) {
        let f = try FixtureReplay()
        let pristine = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        return (f, pristine, try probes(f, pristine, "jbd2"))
    }

    /// The file offset of the first `_ftrace_events` slot's record, and the section and offset of
    /// the call (`event_X`) it points to.
    static func firstCall(_ ed: KoEditor) throws -> (slotRecord: Int, callSection: Int, callOffset: UInt64) {
        let slotRecord = try XCTUnwrap(try recordRanges(ed, try ed.sectionIndex("_ftrace_events")).first).at
        let sym = Int(ed.get(UInt64.self, at: slotRecord + 8) >> 32)
        return try ed.elf { e in
            let t = try e.symbolTable()
            return (slotRecord, Int(t.sectionIndex(sym)), t.value(sym) &+ UInt64(bitPattern: ed.get(Int64.self, at: slotRecord + 16)))
        }
    }

    /// The honest modules first: both readings agree and find probes (jbd2's 21 own tracepoint
    /// keys, qla2xxx's `ql_dbg_log`), so the crafted rounds below start from a walk that finds.
    func testHonestModulesAgreeWithTheNaiveReading() throws {
        let f = try FixtureReplay()
        for name in ["jbd2", "qla2xxx"] {
            let ko = try Fixtures.readFile(try Fixtures.module(named: name + ".ko"))
            let r = try Self.probes(f, ko, name)
            XCTAssertFalse(r.naive.isEmpty, name)
            XCTAssertEqual(r.walk, r.naive, name)
        }
    }

    /// Seeded rounds of crafted records at the fields the walk asks about: a second
    /// R_X86_64_64 record moved onto an asked field (two records: no field), a record moved 4
    /// bytes on (a field not 8-aligned), retyped (PC32, NONE), given another symbol (one past the
    /// table: a record the parser refuses), its addend moved by ±4 or ±8 (a pointee not 8-aligned,
    /// asked in the walk's table), or its offset set anywhere in the section. Every round: the walk
    /// gives the naive reading's pairs. Most rounds must lose pairs and keep others (every crafted
    /// field breaks its event; the events left keep theirs), or they test nothing.
    func testCraftedRecordsGiveTheNaiveReadingsProbes() throws {
        let (f, pristine, honest) = try Self.jbd2()
        // The asked fields that have a record, with that record's file offset.
        let base = KoEditor(ko: pristine)
        let symbolCount = try base.elf { try $0.symbolTable().count }
        var atField: [(sec: Int, off: UInt64, record: Int)] = []
        var seen = Set<[UInt64]>()
        for a in honest.asked where seen.insert([UInt64(a.sec), a.off]).inserted {
            for (at, count) in try Self.recordRanges(base, a.sec) {
                for k in 0..<count where base.get(UInt64.self, at: at + 24 * k) == a.off { atField.append((a.sec, a.off, at + 24 * k)) }
            }
        }
        XCTAssertGreaterThan(atField.count, 50)
        var rng = SeededRNG(seed: 0x7072_6f62_6577_616c)
        var lost = 0, kept = 0
        for round in 0..<60 {
            var ed = base
            for _ in 0...rng.below(3) {
                let t = atField[rng.below(atField.count)]
                let info = t.record + 8, addend = t.record + 16
                switch rng.below(7) {
                case 0:  // a second R_X86_64_64 record onto the field
                    let ranges = try Self.recordRanges(ed, t.sec)
                    let r = ranges[rng.below(ranges.count)]
                    let other = r.at + 24 * rng.below(r.count)
                    ed.put(t.off, at: other)
                    ed.put(ed.get(UInt64.self, at: other + 8) & ~0xffff_ffff | 1, at: other + 8)
                case 1: ed.put(t.off &+ 4, at: t.record)
                case 2: ed.put(ed.get(UInt64.self, at: info) & ~0xffff_ffff | 2, at: info)  // R_X86_64_PC32
                case 3: ed.put(ed.get(UInt64.self, at: info) & ~0xffff_ffff, at: info)  // R_X86_64_NONE
                case 4:  // another symbol, or one past the table (a record the parser refuses)
                    ed.put(UInt64(rng.below(2) == 0 ? symbolCount + rng.below(2) : rng.below(symbolCount)) << 32 | 1, at: info)
                case 5: ed.put(ed.get(Int64.self, at: addend) &+ [4, -4, 8, -8][rng.below(4)], at: addend)
                default:
                    let size = try ed.elf { UInt64($0.sections[t.sec].size) }
                    ed.put(UInt64(rng.below(Int(size))), at: t.record)
                }
            }
            let r = try Self.probes(f, ed.ko, "jbd2")
            XCTAssertEqual(r.walk, r.naive, "round \(round)")
            if r.naive != honest.naive { lost += 1 }
            if !r.naive.isEmpty { kept += 1 }
        }
        XCTAssertGreaterThan(lost, 30)
        XCTAssertGreaterThan(kept, 30)
    }

    /// A call whose pointer is moved 4 bytes on, with its class and tracepoint fields moved with it
    /// (records at offsets not 8-aligned, which the walk keeps in its table): the same probes, as
    /// the kernel would read them from the moved structure.
    func testFieldsNotEightAlignedAreFound() throws {
        let (f, pristine, honest) = try Self.jbd2()
        var ed = KoEditor(ko: pristine)
        // The first event slot's record, and the call's +16/+24 records.
        let (slotRecord, callSec, callOff) = try Self.firstCall(ed)
        var moved = 0
        for (at, count) in try Self.recordRanges(ed, callSec) {
            for k in 0..<count {
                let o = ed.get(UInt64.self, at: at + 24 * k)
                if o == callOff + 16 || o == callOff + 24 { ed.put(o + 4, at: at + 24 * k); moved += 1 }
            }
        }
        XCTAssertEqual(moved, 2)
        ed.put(ed.get(Int64.self, at: slotRecord + 16) + 4, at: slotRecord + 16)
        let r = try Self.probes(f, ed.ko, "jbd2")
        XCTAssertEqual(r.walk, r.naive)
        XCTAssertEqual(r.walk, honest.naive, "the moved event's probes are found at their new fields")
        XCTAssertTrue(r.asked.contains { $0.sec == callSec && $0.off == callOff + 20 })
    }

    /// A call pointer aimed past the end of its section (the first event slot's record re-aimed at
    /// a symbol at the start of `_ftrace_events`, its addend past that section's end by exactly
    /// the section's slots plus the real call's offset, so that the call's fields, read as slots,
    /// would land on the real call's fields in `.data`, indexed right after it): no record of
    /// `_ftrace_events` lies there, so no class, no tracepoint, no probe for that event, as in
    /// the naive reading (a field is looked up only inside its own section's slots).
    func testAPointerPastItsSectionFindsNoField() throws {
        let (f, pristine, honest) = try Self.jbd2()
        var ed = KoEditor(ko: pristine)
        let (slotRecord, callSec, callOff) = try Self.firstCall(ed)
        let ev = try ed.sectionIndex("_ftrace_events")
        XCTAssertNotEqual(callSec, ev)
        let (atStart, evSize) = try ed.elf { e -> (Int, UInt64) in
            let t = try e.symbolTable()
            return (try XCTUnwrap(t.indices.first { Int(t.sectionIndex($0)) == ev && t.value($0) == 0 }), UInt64(e.sections[ev].size))
        }
        ed.put(UInt64(atStart) << 32 | 1, at: slotRecord + 8)  // R_X86_64_64 against that symbol
        ed.put(callOff + 8 * (evSize / 8 + 1), at: slotRecord + 16)
        let r = try Self.probes(f, ed.ko, "jbd2")
        XCTAssertEqual(r.walk, r.naive)
        XCTAssertLessThan(r.naive.count, honest.naive.count, "the re-aimed event's probes are lost")
        XCTAssertTrue(r.asked.contains { $0.sec == ev && $0.off == callOff + 8 * (evSize / 8 + 1) + 16 })
    }

    /// The section holding the calls made far larger than its records (its bytes moved to the end
    /// of the file, zeros after them, 2 MiB in all): the walk keeps that section's fields in its
    /// table instead of an array by slot (memory bounded by the records, not the size), and finds
    /// the same probes.
    func testALargeSectionWithFewRecordsIsIndexedByItsRecords() throws {
        let (f, pristine, honest) = try Self.jbd2()
        var ed = KoEditor(ko: pristine)
        let callSec = try Self.firstCall(ed).callSection
        let records = try Self.recordRanges(ed, callSec).reduce(0) { $0 + $1.count }
        let (fileRange, size) = try ed.elf { ($0.sections[callSec].fileRange, $0.sections[callSec].size) }
        let newSize = 2 << 20
        XCTAssertGreaterThan(newSize / 8 + 1, 8 * records + 4096, "large enough for the table")
        let at = (ed.ko.count + 63) & ~63
        ed.ko += [UInt8](repeating: 0, count: at - ed.ko.count)
        ed.ko += Array(pristine[fileRange]) + [UInt8](repeating: 0, count: newSize - size)
        ed.put(UInt64(at), at: ed.sectionHeader(callSec) + 24)
        ed.put(UInt64(newSize), at: ed.sectionHeader(callSec) + 32)
        let r = try Self.probes(f, ed.ko, "jbd2")
        XCTAssertEqual(r.walk, r.naive)
        XCTAssertEqual(r.walk, honest.naive)
    }
}
