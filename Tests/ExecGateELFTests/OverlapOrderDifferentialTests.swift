// SPDX-License-Identifier: Apache-2.0
//
// Differential checks of two parser shortcuts against the code they replaced (77f2fbf), on seeded
// random hostile inputs:
// - `checkNoOverlap`'s in-order fast path (no sort) must report the same pair, at the same offset,
//   as the old stable sort of (sections in index order, the ELF header, the table) by start;
// - the per-name keys (`nameKeys`, made at parse from the file's bytes when the name is ASCII,
//   else from the decoded `String`: `String(decoding:)` repairs invalid UTF-8 to U+FFFD) must be
//   the keys of the names, `allNamesASCII` must say whether every name's bytes are ASCII, the look-ups by name must
//   answer what a plain byte scan answers, and `lastSection(named:)` must equal
//   `sections(named:)`'s last and count.

@testable import ExecGateELF
import ExecGateTestSupport
import XCTest

final class OverlapOrderDifferentialTests: XCTestCase {
    /// `checkNoOverlap` as it was at 77f2fbf.
    static func oldCheckNoOverlap(_ raws: [ELFFile.RawSectionHeader], _ table: ELFFile.SectionTable) throws {
        var spans: [(Range<Int>, Int)] = raws.enumerated().compactMap { $0.element.range.isEmpty ? nil : ($0.element.range, $0.offset) }
        spans.append((0..<ELFLimits.headerSize, -1))
        spans.append((table.offset..<table.end, -2))
        spans.sort { $0.0.lowerBound < $1.0.lowerBound }
        for k in spans.indices.dropFirst() where spans[k].0.lowerBound < spans[k - 1].0.upperBound {
            let a = spans[k - 1].1, b = spans[k].1
            func nm(_ i: Int) -> String { i == -1 ? "the ELF header" : i == -2 ? "the section header table" : "section \(i)" }
            throw ELFError(.overlappingSections, offset: spans[k].0.lowerBound, "\(nm(b)) overlaps \(nm(a))")
        }
    }

    /// The same with an explicitly stable order (start, then position in the list): what the old
    /// sort's stability gave, without relying on it.
    static func stableReference(_ raws: [ELFFile.RawSectionHeader], _ table: ELFFile.SectionTable) -> String? {
        var spans: [(Range<Int>, Int)] = raws.enumerated().compactMap { $0.element.range.isEmpty ? nil : ($0.element.range, $0.offset) }
        spans.append((0..<ELFLimits.headerSize, -1))
        spans.append((table.offset..<table.end, -2))
        let order = spans.indices.sorted { (spans[$0].0.lowerBound, $0) < (spans[$1].0.lowerBound, $1) }
        spans = order.map { spans[$0] }
        for k in spans.indices.dropFirst() where spans[k].0.lowerBound < spans[k - 1].0.upperBound {
            let a = spans[k - 1].1, b = spans[k].1
            func nm(_ i: Int) -> String { i == -1 ? "the ELF header" : i == -2 ? "the section header table" : "section \(i)" }
            return "\(ELFError(.overlappingSections, offset: spans[k].0.lowerBound, "\(nm(b)) overlaps \(nm(a))"))"
        }
        return nil
    }

    /// What a check reported, as text: code, offset and reason (`ELFError`'s `==` compares the
    /// code alone).
    static func outcome(_ f: () throws -> Void) -> String? {
        do { try f(); return nil } catch { return "\(error)" }
    }

    static func raw(_ range: Range<Int>, type: UInt32 = 1) -> ELFFile.RawSectionHeader {
        ELFFile.RawSectionHeader(name: 0, type: type, flags: 0, offset: range.lowerBound, size: range.count, link: 0, info: 0,
                                 align: 0, entsize: 0, range: range)
    }

    /// The ties the fast path must order as the stable sort did: a section at offset 0 (before the
    /// ELF header, which comes after the sections), a section at the table's offset (before the
    /// table), sections tied with each other (index order), and empty/NOBITS sections (left out).
    func testOverlapPairAtTies() {
        let table = ELFFile.SectionTable(offset: 200, count: 1, end: 264, shstrndx: 0)
        let cases: [([Range<Int>], String?)] = [
            ([0..<0, 0..<10], "the ELF header overlaps section 1"),
            ([0..<0, 0..<10, 300..<310], "the ELF header overlaps section 1"),
            ([0..<0, 64..<80, 200..<210], "the section header table overlaps section 2"),
            ([0..<0, 64..<80, 70..<90, 200..<210], "section 2 overlaps section 1"),
            ([0..<0, 64..<80, 64..<70], "section 2 overlaps section 1"),
            ([0..<0, 64..<70, 64..<80], "section 2 overlaps section 1"),
            ([0..<0, 64..<64, 10..<10, 64..<80, 264..<300], nil),
            ([0..<0, 30..<40], "section 1 overlaps the ELF header"),
            ([0..<0, 64..<80, 150..<201], "the section header table overlaps section 2"),
        ]
        for (ranges, want) in cases {
            let raws = ranges.enumerated().map { $0.offset == 0 ? Self.raw($0.element, type: 0) : Self.raw($0.element) }
            let new = Self.outcome { try ELFFile.checkNoOverlap(raws, table) }
            let old = Self.outcome { try Self.oldCheckNoOverlap(raws, table) }
            XCTAssertEqual(new, old, "\(ranges)")
            XCTAssertEqual(new.map { String($0.split(separator: ": ", maxSplits: 1).last ?? "") }, want, "\(ranges)")
        }
    }

    func testOverlapPairMatchesOldStableSortOnSeededTables() {
        var rng = SeededRNG(seed: 0x5eed_0f_0e1a_9)
        var fastPathTables = 0, overlaps = 0, clean = 0
        for round in 0..<60_000 {
            let n = 1 + rng.below(14)
            // Starts drawn from a few interesting values (0, inside the header, 64, the table's
            // offset, near it) or laid out in order, so ties and overlaps are common.
            let tableOffset = [0, 64, 96, 128, 200, 256, 1000][rng.below(7)] + (rng.below(4) == 0 ? rng.below(40) : 0)
            let tableCount = 1 + rng.below(4)
            let table = ELFFile.SectionTable(offset: tableOffset, count: tableCount, end: tableOffset + 64 * tableCount, shstrndx: 0)
            var raws: [ELFFile.RawSectionHeader] = []
            let mode = rng.below(3)
            var cursor = [0, 1, 40, 64, 64, 100][rng.below(6)]
            for _ in 0..<n {
                let kind = rng.below(10)
                if kind == 0 { raws.append(Self.raw(0..<0, type: 0)); continue }            // SHT_NULL
                if kind == 1 { raws.append(Self.raw(0..<0, type: 8)); continue }            // SHT_NOBITS
                let size = kind == 2 ? 0 : 1 + rng.below(rng.below(2) == 0 ? 8 : 200)        // empty sometimes
                let lo: Int
                switch mode {
                case 0:  // in order, possibly touching, overlapping or tied
                    lo = cursor
                    cursor += [0, size, size, size + rng.below(16), max(0, size - 1 - rng.below(4))][rng.below(5)]
                case 1:
                    lo = [0, 1, 63, 64, tableOffset, tableOffset + 1, tableOffset + 64 * tableCount, max(0, tableOffset - 1), rng.below(1200)][rng.below(9)]
                default:
                    lo = rng.below(1400)
                }
                raws.append(Self.raw(lo..<lo + size))
            }
            let old = Self.outcome { try Self.oldCheckNoOverlap(raws, table) }
            let new = Self.outcome { try ELFFile.checkNoOverlap(raws, table) }
            let ref = Self.stableReference(raws, table)
            XCTAssertEqual(new, old, "round \(round): \(raws.map(\.range)) table \(table.offset)..<\(table.end)")
            XCTAssertEqual(old, ref, "round \(round): the old sort was not stable here")
            if new == nil { clean += 1 } else { overlaps += 1 }
            // (Whether the new code took its fast path: the non-empty starts ascend, the first is
            // not 0 and none is past the table.)
            let starts = raws.map(\.range).filter { !$0.isEmpty }.map(\.lowerBound)
            if starts.first.map({ $0 > 0 }) ?? true, zip(starts, starts.dropFirst()).allSatisfy({ $0 <= $1 }), (starts.last ?? 0) <= tableOffset {
                fastPathTables += 1
            }
        }
        XCTAssertGreaterThan(fastPathTables, 5_000)
        XCTAssertGreaterThan(overlaps, 5_000)
        XCTAssertGreaterThan(clean, 500)
    }

    // MARK: Section names

    /// Section look-ups by name go through a key per name made at parse (`ELFFile.nameKey`): each
    /// stored key is the key of the decoded name, and `section(named:)`, `sections(named:)` and
    /// `lastSection(named:)` answer what a plain scan comparing the names' bytes answers (the
    /// kernel's `find_sec()` strcmp), for ASCII, multi-byte and invalid UTF-8 names, and for long
    /// names built to share a key's bytes (length, first and last 8) with another.
    func testNameKeysMatchAPlainByteScanOnSeededNames() throws {
        var rng = SeededRNG(seed: 0xa5c11)
        // Bytes that make ASCII, valid multi-byte UTF-8, and invalid UTF-8 (lone continuations,
        // truncated leads, overlongs, surrogates, 0xff) likely.
        let alphabet: [[UInt8]] = [[0x2e], [0x61], [0x5f], [0x7f], [0x01], [0x20], [0xc3, 0xa9], [0xe2, 0x82, 0xac], [0xf0, 0x9f, 0x98, 0x80],
                                   [0x80], [0xbf], [0xc3], [0xe2, 0x82], [0xc0, 0xae], [0xed, 0xa0, 0x80], [0xff], [0xfe], [0xf4, 0x90, 0x80, 0x80]]
        var nonASCII = 0, invalid = 0, checked = 0
        for round in 0..<800 {
            var names: [[UInt8]] = []
            for _ in 0..<(1 + rng.below(12)) {
                var n: [UInt8] = []
                for _ in 0..<rng.below(7) { n += alphabet[rng.below(rng.below(3) == 0 ? alphabet.count : 6)] }
                // Repeat an earlier name now and then (lastSection's count).
                if !names.isEmpty && rng.below(4) == 0 { n = names[rng.below(names.count)] }
                // A long name with the same length, first and last 8 bytes as another, its middle
                // byte different: the same key's inputs, different names.
                if rng.below(5) == 0 {
                    n = Array(".rela.orc_".utf8) + [UInt8(0x61 + rng.below(3))] + Array("_unwind_ip".utf8)
                }
                names.append(n)
            }
            let bytes = ExecGateELFFixture.elf(sectionNames: names)
            try bytes.withUnsafeBytes { raw in
                let f = try ELFFile(bytes: raw)
                // (Names 0 and 1 are the fixture's own: the null section's and the table's.)
                XCTAssertEqual(f.allNamesASCII, f.sections.allSatisfy { $0.name.utf8.allSatisfy { $0 < 0x80 } } && names.allSatisfy { $0.allSatisfy { $0 < 0x80 } },
                               "round \(round): allNamesASCII")
                for i in f.sections.indices {
                    XCTAssertEqual(f.nameKeys[i], ELFFile.nameKey(f.sections[i].name), "round \(round) section \(i)")
                    checked += 1
                    if f.sections[i].name.utf8.contains(where: { $0 >= 0x80 }) { nonASCII += 1 }
                    if i >= 2, Array(String(decoding: names[i - 2], as: UTF8.self).utf8) != names[i - 2] { invalid += 1 }  // repaired: invalid UTF-8
                }
                // Every section's name, and names no section has, against a plain byte scan.
                var queries = f.sections.map(\.name)
                queries += [".rela.orc_d_unwind_ip", "", ".", "x", "\u{fffd}", ".rela.orc_a_unwind_i"]
                for q in queries {
                    let plain = f.sections.indices.filter { Array(f.sections[$0].name.utf8) == Array(q.utf8) }
                    XCTAssertEqual(f.sections(named: q).map(\.index), plain, "round \(round) \(q)")
                    XCTAssertEqual(f.section(named: q)?.index, plain.first, "round \(round) \(q)")
                    XCTAssertEqual(f.lastSection(named: q)?.section.index, plain.last, "round \(round) \(q)")
                    XCTAssertEqual(f.lastSection(named: q)?.count ?? 0, plain.count, "round \(round) \(q)")
                }
                for i in f.sections.indices {
                    let name = f.sections[i].name
                    let all = f.sections(named: name)
                    let last = f.lastSection(named: name)
                    XCTAssertEqual(last?.section.index, all.last?.index, "round \(round) \(name)")
                    XCTAssertEqual(last?.count, all.count, "round \(round) \(name)")
                    XCTAssertEqual(f.section(named: name)?.index, all.first?.index)
                }
                XCTAssertNil(f.lastSection(named: "\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}x"))
            }
        }
        XCTAssertGreaterThan(checked, 3_000)
        XCTAssertGreaterThan(nonASCII, 500)
        XCTAssertGreaterThan(invalid, 300)
    }

    /// The name index (`ELFFile.nameIndex`) answers as the plain scan does when a file has
    /// hundreds of sections (the table past its first size), and gives up, leaving the scan,
    /// when a file's names are made to share one key: names of one length with the same first
    /// and last 8 bytes (the key's inputs) need a probe per name already placed. 16 such names
    /// still fit the probe bound (the last one 15 slots on: a look-up must reach it), the 17th
    /// does not: the index is empty, a table by the names' bytes stands in, and the look-ups stay
    /// right either way.
    func testNameIndexAnswersAsTheScanAndGivesUpOnCollidingKeys() throws {
        var rng = SeededRNG(seed: 0x1d_e7)
        for (count, colliding) in [(300, false), (16, true), (17, true), (40, true)] {
            var names: [[UInt8]] = []
            for k in 0..<count {
                if colliding {
                    let d = String(k)
                    names.append(Array(".rela.orc_".utf8) + Array((String(repeating: "0", count: 3 - d.count) + d).utf8) + Array("_unwind_ip".utf8))
                } else if !names.isEmpty && rng.below(5) == 0 {
                    names.append(names[rng.below(names.count)])  // repeated names: sections(named:), lastSection(named:)
                } else {
                    names.append(Array(".sec\(k)_\(rng.below(1000))".utf8))
                }
            }
            // Without the index, a repeated name too (the table's repeated flag: sections(named:),
            // lastSection(named:)).
            if colliding && count == 40 { names.append(names[3]) }
            try ExecGateELFFixture.elf(sectionNames: names).withUnsafeBytes { raw in
                let f = try ELFFile(bytes: raw)
                XCTAssertEqual(f.nameIndex.isEmpty, colliding && count > ELFFile.maxNameProbe, "\(count) names, colliding \(colliding)")
                XCTAssertEqual(f.nameTable.isEmpty, !f.nameIndex.isEmpty, "the table by bytes exactly when there is no index")
                if colliding { XCTAssertEqual(Set(f.nameKeys.dropFirst(2)).count, 1, "the names share one key") }
                for q in f.sections.map(\.name) + [".rela.orc_999_unwind_ip", ".sec", ""] {
                    let plain = f.sections.indices.filter { Array(f.sections[$0].name.utf8) == Array(q.utf8) }
                    XCTAssertEqual(f.sections(named: q).map(\.index), plain, q)
                    XCTAssertEqual(f.section(named: q)?.index, plain.first, q)
                    XCTAssertEqual(f.lastSection(named: q)?.section.index, plain.last, q)
                    XCTAssertEqual(f.lastSection(named: q)?.count ?? 0, plain.count, q)
                }
            }
        }
    }

    /// `nameKey(String)` and `sameBytes` read a name's UTF-8 bytes for small strings (at
    /// most 15 bytes, stored inline: every literal name the explainer asks for) as for large ones:
    /// the key is the bytes' key, and two names are the same exactly when their bytes are (not
    /// when they are equal Strings: "\u{212A}" and "K" are canonically equivalent, not the same
    /// bytes, as `strcmp()` has it). Fails: a key or comparison that differs by the strings'
    /// storage, or a character-wise comparison.
    func testNameKeyAndSameBytesAreBytewiseForSmallAndLargeStrings() {
        var rng = SeededRNG(seed: 0x5a3e_b17e)
        let alphabet: [String] = ["a", ".", "_", "K", "\u{212A}", "e", "\u{301}", "\u{e9}", "\0"]
        var names: [String] = ["", ".text", ".return_sites", "__mcount_loc", ".gnu.linkonce.this_module", "\u{212A}", "K", ".\u{212A}", ".K"]
        for _ in 0..<1_500 { names.append((0..<Int(rng.next() % 24)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined()) }
        for a in names {
            Array(a.utf8).withUnsafeBytes { XCTAssertEqual(ELFFile.nameKey(a), ELFFile.nameKey($0), a.debugDescription) }
            let b = names[Int(rng.next() % UInt64(names.count))]
            XCTAssertEqual(ELFFile.sameBytes(a, b), Array(a.utf8) == Array(b.utf8), "\(a.debugDescription) \(b.debugDescription)")
            XCTAssertTrue(ELFFile.sameBytes(a, String(decoding: Array(a.utf8), as: UTF8.self)), a.debugDescription)
        }
        XCTAssertFalse(ELFFile.sameBytes("\u{212A}", "K"))
        XCTAssertTrue("\u{212A}" == "K")  // (what a String comparison would have answered)
    }
}
