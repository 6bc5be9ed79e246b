// SPDX-License-Identifier: Apache-2.0
//
// A review of the engine's per-entry work (2026-12-07) after the init-text indexes
// (InitTextComplexityTests): three more paths a signed module could make cost the product of two
// counts it chooses, or many times its own size in memory. Each test fails on the old code
// (checked): the name search ran to the section's end and the names had no bound in all; a
// denial's note was a sentence made for every illegal site, its key named by a scan of the symbol
// table; a zero-length read scanned every data section and copied the one that held it.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import Foundation
import XCTest

final class EngineBoundsReviewTests: XCTestCase {
    /// Debian's kvm.ko (fetched test data: 5,800 symbols, 728 of them static-call keys and
    /// trampolines, a 9 KiB `__ksymtab_strings`), every import at a distinct kernel address, the
    /// claim the layout's size (zeros), the fixture boot's facts.
    func kvm() throws -> (ko: [UInt8], claim: ModuleClaim, facts: GuestFacts, resolver: SymbolResolver) {
        let f = try FixtureReplay()
        let ko = try Fixtures.readFile(try Fixtures.module(named: "kvm.ko"))
        var exports: [String: UInt64] = [:]
        let textSize: Int = try KoEditor(ko: ko).elf { e in
            for (k, s) in try e.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            return try XCTUnwrap(ModuleLayout.compute(e)).textSize
        }
        var claim = ModuleClaim(name: "kvm", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: textSize), sectionAddresses: [:])
        claim.percpuBase = try XCTUnwrap(f.boot.facts.modulePercpuRange).lowerBound
        return (ko, claim, f.boot.facts, SymbolResolver(coreExports: exports))
    }

    // MARK: Exported names

    /// The file offset in kvm.ko of `__ksymtab` entry 0's name (its name_offset record's symbol
    /// and addend inside `__ksymtab_strings`: the field holds `name - .`, no bias) and the bytes
    /// from there to the section's end.
    func firstExportName(_ ed: KoEditor) throws -> (at: Int, room: Int) {
        let rec = try XCTUnwrap(try ed.relocations(for: "__ksymtab").first { $0.offset == 4 })
        return try ed.elf { e in
            let t = try e.symbolTable()
            let strings = try XCTUnwrap(e.section(named: "__ksymtab_strings"))
            XCTAssertEqual(Int(t.sectionIndex(rec.symbolIndex)), strings.index, "entry 0's name is in __ksymtab_strings")
            let off = Int(t.value(rec.symbolIndex)) + Int(rec.addend)
            return (strings.fileRange.lowerBound + off, strings.size - off)
        }
    }

    /// An exported name of 512 bytes or more (kvm's first `__ksymtab` name made 600 'A's with
    /// no NUL): denied naming the entry at the bound — the search for the NUL ran to the
    /// section's end, and the name was copied into the module's exports. One byte shorter (511
    /// 'A's and a NUL) passes that check (a later entry is denied for its order instead).
    func testAnExportNameLongerThanKsymNameLenIsDenied() throws {
        let k = try kvm()
        var ed = KoEditor(ko: k.ko)
        let (at, room) = try firstExportName(ed)
        XCTAssertGreaterThan(room, 600)
        for i in 0..<600 { ed.ko[at + i] = UInt8(ascii: "A") }
        XCTAssertThrowsError(try withLoaderSession(ed.ko, k.claim, k.facts, k.resolver) { _ in }) { error in
            let d = (error as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .malformedELF, "\(error)")
            XCTAssertTrue(d?.reason.contains("__ksymtab entry 0: its name is longer than 511 bytes") ?? false, "\(error)")
        }
        // 511 'A's and a NUL: entry 0's name is read whole; the overwrite also made a later
        // entry's name a run of the same 'A's (names follow each other in the section), which
        // then sorts before its predecessor: that is the denial now.
        ed.ko[at + 511] = 0
        XCTAssertThrowsError(try withLoaderSession(ed.ko, k.claim, k.facts, k.resolver) { _ in }) { error in
            let d = (error as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .duplicateExport, "\(error)")
            XCTAssertFalse(d?.reason.contains("entry 0") ?? true, "\(error)")
        }
    }

    /// The module's exported names in all are bounded (`exportNameBudget`, 1 MiB by default:
    /// names may share the file's bytes, so entries of 12 bytes could each bring 511). kvm's own
    /// names pass at their exact total and are denied one byte under it, at the last entry.
    func testExportedNamesAreBoundedInAll() throws {
        let k = try kvm()
        let total = try withLoaderSession(k.ko, k.claim, k.facts, k.resolver) { s in try XCTUnwrap(s.exportedNameCache).bytes.count }
        XCTAssertGreaterThan(total, 1000)
        XCTAssertLessThan(total, ExplainLimits.maxExportNameBytes / 100, "the real module far under the bound")
        func run(budget: Int) throws {
            try k.ko.withUnsafeBytes { raw in
                let s = try Session(elf: try ELFFile(bytes: raw), claim: k.claim, facts: k.facts, resolver: k.resolver)
                s.exportNameBudget = budget
                try s.checkModinfo()
                try s.relocate()
                try s.verifyExportedSymbols()
            }
        }
        XCTAssertNoThrow(try run(budget: total))
        XCTAssertThrowsError(try run(budget: total - 1)) { error in
            let d = (error as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .malformedELF, "\(error)")
            XCTAssertTrue(d?.reason.contains("exported names pass \(total - 1) bytes in all") ?? false, "\(error)")
        }
    }

    // MARK: Notes of illegal sites

    /// 400,000 repeats of one static-call site whose claimed bytes call an untrusted target (the
    /// kernel accepts repeated `.static_call_sites` entries; the overlap check takes identical
    /// sites as one): each repeat made its note's sentence, naming its key by a scan of kvm's
    /// 5,800 symbols (≈ 2·10⁹ steps: 50 s for half as many in this debug build, where the test
    /// now takes 2–5 s). Now a note is a site index and a reason, put into words for the
    /// reported one only: the denial still names the key's symbol.
    func testIllegalSitesNameTheirKeyOnlyInTheDenial() throws {
        let k = try kvm()
        // The honest end state, and a plain static call whose key the module names.
        let (image, site, keyName) = try withLoaderSession(k.ko, k.claim, k.facts, k.resolver) { s -> ([UInt8], VariableSite, String) in
            let site = try XCTUnwrap(s.variable.first { $0.cls == .staticCall && $0.label == .staticCall && $0.group.flatMap { s.keySymbolName($0) } != nil })
            return (s.image, site, try XCTUnwrap(s.keySymbolName(site.group!)))
        }
        var claim = k.claim
        claim.text = image
        claim.text[site.offset] = 0xe8
        for (i, b) in [0x78, 0x56, 0x34, 0x12].enumerated() { claim.text[site.offset + 1 + i] = UInt8(b) }  // call +0x12345678
        try withLoaderSession(k.ko, claim, k.facts, k.resolver) { s in
            let same = try XCTUnwrap(s.variable.first { $0.offset == site.offset && $0.cls == .staticCall })
            s.variable += [VariableSite](repeating: same, count: 400_000)
            let t0 = Date()
            XCTAssertThrowsError(try s.compare()) { error in
                let d = (error as? DenyError)?.denial
                XCTAssertEqual(d?.rule, .stage(.staticCall), "\(error)")
                XCTAssertTrue(d?.reason.contains(keyName) ?? false, "the key named by its symbol: \(error)")
                XCTAssertEqual(d?.address, claim.textBase + UInt64(site.offset), "the first byte of the site (NOP5 in the end state): \(error)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the sites")
            XCTAssertGreaterThanOrEqual(s.notes.count, 400_001, "a note per illegal site")
        }
    }

    // MARK: Zero-length reads

    /// `read(a, 0)` (a taken alternative with an empty replacement) answers as the scan it
    /// replaced — inside a data section or at its end, empty sections included — on llc crowded
    /// with 20,000 empty data sections, and makes no copy of the section it finds (the scan
    /// copied it); asked 100,000 times about an address outside them all (the scan: 2·10⁹ steps).
    func testZeroLengthReadsAreAnsweredWithoutAScanOrACopy() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        let text = try KoEditor(ko: e.module.ko).sectionIndex(".text")
        let ko = try InitTextComplexityTests.crowded(e.module.ko, target: text, relas: 0, texts: 0, datas: 20_000)
        try withLoaderSession(ko, e.module.claim, f.boot.facts, e.before) { s in
            let spans = s.dataSections.compactMap { i in s.addr[i].map { (lo: $0, hi: $0 + UInt64(s.elf.sections[i].size), i: i) } }
            XCTAssertGreaterThan(spans.count, 20_000)
            // The answer of the old scan, for addresses in, at the ends of and around every section.
            let lo = spans.map(\.lo).min()!, hi = spans.map(\.hi).max()!
            var rng = SeededRNG(seed: 0x2e70)
            var asked: [UInt64] = [lo &- 1, lo, hi, hi + 1, 0, UInt64.max]
            for sp in spans.prefix(64) { asked += [sp.lo &- 1, sp.lo, sp.hi, sp.hi + 1] }
            for _ in 0..<2_000 { asked.append(lo &- 64 &+ rng.next() % (hi - lo + 128)) }
            let copies = s.data.filter { $0 != nil }.count
            for a in asked {
                let want = spans.contains { a >= $0.lo && a <= $0.hi }
                XCTAssertEqual(try s.read(a, 0) != nil, want, "0x\(String(a, radix: 16))")
            }
            XCTAssertEqual(s.data.filter { $0 != nil }.count, copies, "no copy made for zero bytes")
            // Outside every section: the scan went through all of them each time.
            let t0 = Date()
            for _ in 0..<100_000 { XCTAssertNil(try s.read(hi + 2, 0)) }
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "linear in the reads and sections")
        }
    }

    // MARK: Function entries

    /// A function symbol whose value lies past its section (the file's word: llc's first `.text`
    /// function moved 2^40 bytes on) is no function entry: its module's span of entries would
    /// cover other modules' text, and the guest's entry set (`FunctionEntrySet`, disjoint spans
    /// searched by binary search) would then scan every live module at each later look-up.
    /// The module's other entries stay; its span stays inside its core text.
    func testAFunctionSymbolOutsideItsSectionIsNoEntry() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ed = KoEditor(ko: e.module.ko)
        let text = try ed.sectionIndex(".text")
        let (moved, kept, textSize): (Int, [UInt64], Int) = try ed.elf { elf in
            let t = try elf.symbolTable()
            let fns = t.indices.filter { t.isFunction($0) && !t.isUndefined($0) && Int(t.sectionIndex($0)) == text }
            XCTAssertGreaterThan(fns.count, 2)
            return (fns[0], fns.dropFirst().map { t.value($0) }, elf.sections[text].size)
        }
        try ed.setSymbol(moved, value: 1 << 40)
        try ed.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: e.module.claim, facts: f.boot.facts, resolver: e.before)
            let base = try XCTUnwrap(s.addr[text])
            XCTAssertFalse(s.functionEntries.contains(base &+ (1 << 40)), "a function past its section is no entry")
            for v in kept { XCTAssertTrue(s.functionEntries.contains(base &+ v), "the other entries stay: +0x\(String(v, radix: 16))") }
            XCTAssertLessThan(try XCTUnwrap(s.functionEntries.sorted.last), s.base + UInt64(s.layout.textSize), "the span inside the module's core text")
            XCTAssertGreaterThan(textSize, 0)
        }
    }
}
