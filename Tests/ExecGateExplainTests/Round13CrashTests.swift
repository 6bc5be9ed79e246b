// SPDX-License-Identifier: Apache-2.0
//
// Round 13's crash-safety review: guest-written module files that trapped the engine (and with
// it `serve`, every guest's service) instead of being denied. Each mutant is a real signed Debian
// module edited through the parser's own offsets; without the fix each test dies on the trap.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import Foundation
import XCTest

final class Round13CrashTests: XCTestCase {
    /// Renames section `name` in place (its second byte in `.shstrtab` becomes 'Z'), so the stage
    /// that looks the section up by name no longer finds it.
    private func hide(_ ed: inout KoEditor, _ name: String) throws {
        let i = try ed.sectionIndex(name)
        let shstrndx = Int(ed.get(UInt16.self, at: 62))
        let strtab = Int(ed.get(UInt64.self, at: ed.sectionHeader(shstrndx) + 24))
        let at = strtab + Int(ed.get(UInt32.self, at: ed.sectionHeader(i)))
        ed.ko[at + 1] = UInt8(ascii: "Z")
        XCTAssertNil(try ed.elf { $0.section(named: name) }, name)
    }

    /// `module_finalize()` hands `alternatives_smp_module_add()` the section *named* `.text`,
    /// whatever its flags. A `.text` without SHF_EXECINSTR is laid out with the core's data, past
    /// the executable image, and `applySMPLocks()` indexed the image with its offset: a trap on a
    /// uniprocessor-patched guest (the fixture boot is one: `cpus.txt` present 0). Now a lock
    /// byte there is denied by name (the kernel's write would be a data write nothing models).
    func testSMPLocksIntoANonExecutableTextAreDeniedNotTrapped() throws {
        let f = try FixtureReplay()
        XCTAssertTrue(f.boot.facts.uniprocessorPatched, "the fixture boot is uniprocessor-patched")
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let text = try ed.sectionIndex(".text")
        let flags = ed.get(UInt64.self, at: ed.sectionHeader(text) + 8)
        ed.put(flags & ~UInt64(0x4), at: ed.sectionHeader(text) + 8)  // SHF_EXECINSTR off
        // The tables whose stages would deny first (sites outside executable memory).
        for s in [".return_sites", ".retpoline_sites", "__mcount_loc"] { try hide(&ed, s) }
        // The claim an honest loader would leave: the layout's text size, no section addresses.
        let textSize = try ed.elf { try XCTUnwrap(ModuleLayout.compute($0)).textSize }
        var claim = try XCTUnwrap(f.modules["llc"]).module.claim
        claim.text = [UInt8](repeating: 0xcc, count: textSize)
        claim.sectionAddresses = [:]
        let d = try XCTUnwrap(denial(try CraftedExplainer().explain(f, "llc", ko: ed.ko, claim: claim)))
        XCTAssertEqual(d.rule, .stage(.smpLock), d.description)
        XCTAssertEqual(d.section, ".smp_locks", d.description)
        XCTAssertTrue(d.reason.contains("alternatives_smp_unlock()"), d.reason)
    }

    /// An `.altinstructions` entry whose instruction lies in init text makes its replacement a
    /// template init references may point into (`initTextAlternativeTemplates`). The replacement
    /// address comes from a relocated field, the addend the file's: one at 2^64 − 1 made the
    /// template's Range wrap and trap. Now such a template is none, and the init reference from
    /// `.altinstr_replacement` lies in no template: denied. Debian's kvm.ko (fetched test data),
    /// every import at a distinct kernel address, the claim the layout's size.
    func testAWrappingInitAlternativeTemplateIsDeniedNotTrapped() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try Fixtures.readFile(try Fixtures.module(named: "kvm.ko")))
        let initText = try ed.sectionIndex(".init.text")
        // The section symbol of .init.text (what the mutant's records name).
        let initSym: Int = try ed.elf { e in
            let t = try e.symbolTable()
            return try XCTUnwrap(t.indices.first { t.isSection($0) && Int(t.sectionIndex($0)) == initText })
        }
        func retarget(_ section: String, record k: Int, addend: UInt64? = nil) throws {
            let r = try ed.rela(for: section)
            XCTAssertLessThan(k, r.count)
            let at = r.at + 24 * k
            let info = ed.get(UInt64.self, at: at + 8)
            ed.put(UInt64(initSym) << 32 | (info & 0xffff_ffff), at: at + 8)
            if let a = addend { ed.put(a, at: at + 16) }
        }
        let alt = try ed.relocations(for: ".altinstructions")
        XCTAssertEqual(alt[0].offset, 0, "record 0 is entry 0's instruction field")
        XCTAssertEqual(alt[1].offset, 4, "record 1 is entry 0's replacement field")
        // Entry 0's instruction at .init.text + 0; its replacement at S + A = 2^64 − 1.
        try retarget(".altinstructions", record: 0, addend: 0)
        try retarget(".altinstructions", record: 1, addend: UInt64.max &- Session.initPlaceholderBase)
        // One replacement record refers to init text: the template check runs.
        try retarget(".altinstr_replacement", record: 0)

        var exports: [String: UInt64] = [:]
        let textSize: Int = try ed.elf { e in
            for (k, s) in try e.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            return try XCTUnwrap(ModuleLayout.compute(e)).textSize
        }
        var claim = ModuleClaim(name: "kvm", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: textSize), sectionAddresses: [:])
        claim.percpuBase = try XCTUnwrap(f.boot.facts.modulePercpuRange).lowerBound
        claim.sectionAddresses = [".init.text": 0xffff_ffff_c080_0000]  // where the guest says init text went
        let r = try ed.ko.withUnsafeBytes {
            Explainer(facts: f.boot.facts).explain(elf: try ELFFile(bytes: $0), claim: claim, resolver: SymbolResolver(coreExports: exports))
        }
        let d = try XCTUnwrap(denial(r))
        XCTAssertEqual(d.rule, .initSymbol, d.description)
        XCTAssertTrue(d.reason.contains("outside the template of an init-text alternative"), d.reason)
        XCTAssertEqual(Session.span(UInt64.max, 1), nil)
        XCTAssertEqual(Session.span(UInt64.max - 1, 1), (UInt64.max - 1)..<UInt64.max)
    }
}

/// Round 13's complexity review: work a module file chooses the size of stays linear in it.
final class Round13ComplexityTests: XCTestCase {
    /// A site listed many times over (the kernel accepts repeated `__jump_table` or
    /// `.static_call_sites` entries for one instruction) is one site to the overlap check: the
    /// check scanned every earlier site at each repeat, N²/2 steps (300,000 repeats in a signed
    /// 27 MB module held a judging thread 124 s). The bound is generous (a linear check takes well
    /// under a second here in a debug build; the quadratic one took hours).
    func testRepeatedSitesAreCheckedInLinearTime() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["test_static_keys"])
        let s = try loaderImage(e.module.ko, e.module.claim, f.boot.facts, e.before).session
        let site = try XCTUnwrap(s.variable.first { $0.cls == .jumpLabel })
        let honest = s.variable
        s.variable = honest + [VariableSite](repeating: site, count: 200_000)
        let t0 = Date()
        XCTAssertNoThrow(try s.refuseOverlappingSites(), "identical repeats of one site are one site")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "the overlap check is linear in the sites")
        // A site overlapping the repeated one without being it is still denied, naming it.
        s.variable.append(VariableSite(offset: site.offset + 1, length: site.length, cls: site.cls, group: site.group, label: site.label, rule: site.rule))
        XCTAssertThrowsError(try s.refuseOverlappingSites()) { error in
            let d = (error as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .stage(.jumpLabel), "\(error)")
            XCTAssertTrue(d?.reason.contains("shares bytes with the") ?? false, "\(error)")
            XCTAssertTrue(d?.reason.contains(String(s.base &+ UInt64(site.offset), radix: 16)) ?? false, "\(error)")
        }
    }

    /// `Spans` answers as the scan it replaced (the first span in `lo` order holding [x, x + n)),
    /// disjoint or overlapping, on seeded random spans.
    func testSpansAnswerAsAScan() {
        var rng = SeededRNG(seed: 0x5a5a)
        for round in 0..<300 {
            let n = Int(rng.next() % 10)
            var spans: [(lo: UInt64, hi: UInt64, value: Int)] = []
            var at: UInt64 = rng.next() % 16
            for v in 0..<n {
                // Half the rounds disjoint (as a module's sections are), half overlapping.
                let lo = round % 2 == 0 ? at : rng.next() % 200
                let hi = lo + rng.next() % 30
                spans.append((lo, hi, v))
                at = hi + rng.next() % 8
            }
            let s = Spans(spans)
            let ordered = spans.filter { $0.lo < $0.hi }.sorted { ($0.lo, $0.value) < ($1.lo, $1.value) }
            for _ in 0..<100 {
                let x = rng.next() % 260, len = 1 + rng.next() % 8
                let want = ordered.first { x >= $0.lo && x + len <= $0.hi }
                XCTAssertEqual(s.find(x, len)?.value, want?.value, "\(spans) [\(x), +\(len))")
            }
            XCTAssertNil(s.find(UInt64.max, 2), "a wrapping question holds nothing")
        }
    }

    /// `RangeCover` answers as the scans it replaced, on seeded random ranges (empty and wrapping
    /// ends included; `overlaps` also for empty questions).
    func testRangeCoverAnswersAsAScan() {
        var rng = SeededRNG(seed: 0x1313)
        for _ in 0..<200 {
            let n = Int(rng.next() % 12)
            let ranges: [Range<UInt64>] = (0..<n).map { _ in
                let lo = rng.next() % 4 == 0 ? UInt64.max - rng.next() % 64 : rng.next() % 256
                let len = rng.next() % 40
                return lo..<(lo.addingReportingOverflow(len).overflow ? UInt64.max : lo + len)
            }
            let cover = RangeCover(ranges)
            for _ in 0..<100 {
                let x = rng.next() % 3 == 0 ? UInt64.max - rng.next() % 80 : rng.next() % 300
                let size = rng.next() % 10
                XCTAssertEqual(cover.contains(x), ranges.contains { $0.contains(x) }, "\(ranges) contains \(x)")
                let hi = x.addingReportingOverflow(size).overflow ? UInt64.max : x + size
                XCTAssertEqual(cover.overlaps(x, hi), ranges.contains { !$0.isEmpty && $0.lowerBound < hi && $0.upperBound > x },
                               "\(ranges) overlaps [\(x), \(hi))")
                let end = x.addingReportingOverflow(size)
                XCTAssertEqual(cover.covers(x, size), !end.overflow && ranges.contains { x >= $0.lowerBound && end.partialValue <= $0.upperBound && !$0.isEmpty },
                               "\(ranges) covers \(x)+\(size)")
            }
        }
    }
}
