// SPDX-License-Identifier: Apache-2.0
//
// The core session's init-text checks (the kernel's BUGs and ftrace_bug() hold for a module's
// init text, which the core claim does not hold: BootPatching.swift, RuntimeSites.swift,
// Loader612Patching.swift) and the trace-event field index asked a question per site of every
// section or every relocation section: the product of two counts a signed module chooses (a
// section header is 64 bytes, a table entry 8). Now each is answered from an index made once a
// session (`initTextSpans`, `relaByTarget`, `relocationCovers`). Each test here crowds a real
// module with tens of thousands of empty sections and asks each check a hundred thousand
// times: minutes to hours of CPU for the scans (checked by running them against the old code),
// well under a second for the indexes; the bounds are generous (a slow machine, a debug build).

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import Foundation
import XCTest

final class InitTextComplexityTests: XCTestCase {
    /// `ko` with section headers appended after its own (the header table moved to the file's
    /// end): `relas` empty SHT_RELA sections applying to section `target`, then `texts` empty
    /// executable sections named as `target` is (init sections to the layout: `.init.text`).
    /// `datas`: empty read-only allocated sections without a name (core data to the layout).
    static func crowded(_ ko: [UInt8], target: Int, relas: Int, texts: Int, datas: Int = 0) throws -> [UInt8] {
        let ed = KoEditor(ko: ko)
        let symtab = try ed.elf { try $0.symbolTableSection().index }
        let shoff = Int(ed.get(UInt64.self, at: 40)), shnum = Int(ed.get(UInt16.self, at: 60))
        var out = KoEditor(ko: ko)
        while out.ko.count % 8 != 0 { out.ko.append(0) }
        let newOff = out.ko.count
        out.ko += ko[shoff..<shoff + 64 * shnum]
        let targetName = ed.get(UInt32.self, at: ed.sectionHeader(target))
        func header(name: UInt32, type: UInt32, flags: UInt64, link: UInt32, info: UInt32, align: UInt64, entsize: UInt64) {
            let h = out.ko.count
            out.ko += [UInt8](repeating: 0, count: 64)
            out.put(name, at: h)
            out.put(type, at: h + 4)
            out.put(flags, at: h + 8)
            out.put(UInt64(newOff), at: h + 24)  // sh_offset inside the file; sh_size 0
            out.put(link, at: h + 40)
            out.put(info, at: h + 44)
            out.put(align, at: h + 48)
            out.put(entsize, at: h + 56)
        }
        for _ in 0..<relas { header(name: 0, type: 4, flags: 0x40, link: UInt32(symtab), info: UInt32(target), align: 8, entsize: 24) }
        for _ in 0..<texts { header(name: targetName, type: 1, flags: 0x6, link: 0, info: 0, align: 1, entsize: 0) }
        for _ in 0..<datas { header(name: 0, type: 1, flags: 0x2, link: 0, info: 0, align: 1, entsize: 0) }
        out.put(UInt64(newOff), at: 40)
        out.put(UInt16(shnum + relas + texts + datas), at: 60)
        return out.ko
    }

    /// `body` given 8021q crowded with 20,000 empty relocation sections for `.init.text` and
    /// 20,000 empty executable init sections, run through every stage before the comparison
    /// (allowed as the real module is: empty sections hold no byte), the addresses of its
    /// `__mcount_loc` entries in init text (`call __fentry__` each) and `__fentry__`.
    func withCrowded8021q(_ body: (Session, [UInt64], UInt64) throws -> Void) throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["8021q"])
        let initText = try KoEditor(ko: e.module.ko).sectionIndex(".init.text")
        let ko = try Self.crowded(e.module.ko, target: initText, relas: 20_000, texts: 20_000)
        let sections = try KoEditor(ko: e.module.ko).elf { $0.sections.count }
        try withLoaderSession(ko, e.module.claim, f.boot.facts, e.before) { s in
            XCTAssertEqual(s.elf.sections.count, sections + 40_000)
            let mcount = try XCTUnwrap(try s.table("__mcount_loc"))
            var initSites: [UInt64] = []
            for o in stride(from: 0, to: mcount.bytes.count, by: 8) {
                let a = try XCTUnwrap(mcount.bytes.getInteger(at: o, as: UInt64.self))
                if s.initTextSpans.find(a, 1)?.value == initText { initSites.append(a) }
            }
            XCTAssertEqual(initSites.count, 4, "8021q's init text has four __mcount_loc entries")
            try body(s, initSites, try XCTUnwrap(s.resolver.lookup("__fentry__")))
        }
    }

    /// `requireFentryCallsInInitText` (ftrace_process_locs() records an init-text entry; a site
    /// not `call __fentry__` stops ftrace guest-wide): 400,000 entries (the four real ones, each
    /// listed 100,000 times) against 20,000 init sections. The scan asked every site of every
    /// init section (8·10⁹ steps), and walked every repeat under each record; now each site is
    /// placed by binary search and repeats are one site. The real sites pass; one byte off is
    /// still denied, named.
    func testFentryCallsInInitTextAreCheckedInLinearTime() throws {
        try withCrowded8021q { s, initSites, fentry in
            let many = [[UInt64]](repeating: initSites, count: 100_000).flatMap { $0 }
            let t0 = Date()
            XCTAssertNoThrow(try s.requireFentryCallsInInitText(many, fentry: fentry))
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the sites and sections")
            XCTAssertThrowsError(try s.requireFentryCallsInInitText(many + [initSites[2] + 1], fentry: fentry)) { error in
                let d = (error as? DenyError)?.denial
                XCTAssertEqual(d?.rule, .stage(.ftrace), "\(error)")
                XCTAssertEqual(d?.address, initSites[2] + 1, "\(error)")
                XCTAssertTrue(d?.reason.contains("is not `call __fentry__`") ?? false, "\(error)")
            }
        }
    }

    /// `refuseInvalidStaticCallInInitText` (__static_call_validate() BUGs at load on an init-text
    /// site of the wrong kind) asked 100,000 times: each asked whether a relocation writes the
    /// site's opcode by a pass over every relocation section (20,000) and record. Now from the
    /// bytes the section's records write, gathered once. The verdicts stay: an `e8` site passes
    /// as a call and is denied as a tail; a site inside the rel32 is denied, naming the write.
    func testStaticCallSitesInInitTextAreCheckedInLinearTime() throws {
        try withCrowded8021q { s, initSites, _ in
            let t0 = Date()
            for _ in 0..<25_000 {
                for a in initSites { XCTAssertNoThrow(try s.refuseInvalidStaticCallInInitText(a, tail: false)) }
            }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the sites and sections")
            XCTAssertThrowsError(try s.refuseInvalidStaticCallInInitText(initSites[0], tail: true)) { error in
                XCTAssertTrue((error as? DenyError)?.denial.reason.contains("is not a jmp/ret/Jcc") ?? false, "\(error)")
            }
            XCTAssertThrowsError(try s.refuseInvalidStaticCallInInitText(initSites[0] + 1, tail: false)) { error in
                XCTAssertTrue((error as? DenyError)?.denial.reason.contains("a relocation writes it") ?? false, "\(error)")
            }
        }
    }

    /// `refuseRspRetpolineInInitText` (patch_retpoline()'s BUG_ON(reg == 4) for an init-text
    /// site) asked 100,000 times, half inside init text, half outside every section: each walked
    /// every relocation section (20,000) looking for one applying to a section that holds the
    /// site. Now the section by binary search and its first relocation section from the index.
    func testRetpolineSitesInInitTextAreFoundInLinearTime() throws {
        try withCrowded8021q { s, initSites, _ in
            let outside = try XCTUnwrap(s.initTextSpans.all.last).hi + 0x1000
            let t0 = Date()
            for k in 0..<100_000 {
                // A call whose target decodes far from the thunk array: not %rsp, no denial.
                XCTAssertNoThrow(try s.refuseRspRetpolineInInitText(k % 2 == 0 ? initSites[k % 4] : outside, thunks: 0x1000))
            }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the sites and sections")
            XCTAssertEqual(s.initTextCopies.count, 1, "one relocated copy of .init.text for all its sites")
            // The same site with the thunk array placed so that its call decodes to thunk 4 (%rsp).
            let site = initSites[0]
            let copy = try XCTUnwrap(try XCTUnwrap(s.initTextCopies.first).value)
            let off = Int(site - s.initTextSpans.find(site, 1)!.lo)
            let target = copy.withUnsafeBufferPointer { b in site &+ 5 &+ UInt64(bitPattern: Int64(Int32(bitPattern: UInt32(b[off + 1]) | UInt32(b[off + 2]) << 8 | UInt32(b[off + 3]) << 16 | UInt32(b[off + 4]) << 24))) }
            XCTAssertThrowsError(try s.refuseRspRetpolineInInitText(site, thunks: target &- 4 * 32)) { error in
                XCTAssertTrue((error as? DenyError)?.denial.reason.contains("CALL/JMP *%rsp in init text") ?? false, "\(error)")
            }
        }
    }

    /// `TraceEventFields.index` for every one of the crowded module's 40,000-odd sections: each
    /// passed twice over every relocation section (3·10⁹ steps); now over those applying to it.
    func testTraceEventFieldsIndexEachSectionFromItsOwnRelocations() throws {
        try withCrowded8021q { s, _, _ in
            var fields = TraceEventFields(sections: s.elf.sections.count)
            let t0 = Date()
            for sec in s.elf.sections.indices { fields.index(sec, s.rela, s.relaByTarget) }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the sections")
            // The fields found are the R_X86_64_64 records of the section (8021q's .data: its ops tables).
            let data = try XCTUnwrap(s.elf.section(named: ".data")).index
            let r64 = s.rela.filter { $0.targetSectionIndex == data }.flatMap { Array($0.relocations) }.filter { $0.type == .r64 }
            XCTAssertFalse(r64.isEmpty)
            for r in r64 { XCTAssertNotNil(fields.field(data, r.offset), "field at .data+\(r.offset)") }
        }
    }

    /// `RelaByTarget` lists, for every section, the relocation sections a filter of `rela`
    /// would, in the same order (8021q crowded, and as built).
    func testRelaByTargetListsAsAFilter() throws {
        try withCrowded8021q { s, _, _ in
            let index = s.relaByTarget
            // (The filter per section, grouped in one pass: 40,000 filters of 20,000 took minutes.)
            var want = [[Int]](repeating: [], count: s.elf.sections.count)
            for ri in s.rela.indices { want[s.rela[ri].targetSectionIndex].append(ri) }
            XCTAssertEqual(want[try XCTUnwrap(s.elf.section(named: ".init.text")).index].count, 20_001)
            for t in s.elf.sections.indices where Array(index[t]) != want[t] {
                XCTFail("section \(t): \(Array(index[t]).count) relocation sections listed, \(want[t].count) apply")
            }
            XCTAssertEqual(Array(index[-1]), [])
            XCTAssertEqual(Array(index[s.elf.sections.count]), [])
        }
    }
}
