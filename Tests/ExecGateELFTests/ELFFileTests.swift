// SPDX-License-Identifier: Apache-2.0
//
// ExecGateELF against real, signed Debian 6.1 modules (from `make test-data`), and against the same
// modules truncated and corrupted: every malformed input must give a precise ELFError, never a crash.

import ExecGateELF
import ExecGateTestSupport
import XCTest

final class ELFFileTests: XCTestCase {
    func load(_ name: String) throws -> [UInt8] { try Fixtures.readFile(try Fixtures.module(named: name + ".ko")) }

    func parse(_ bytes: [UInt8]) throws -> (ELFFile, [ELFSymbol], [ELFRelocationSection]) {
        try bytes.withUnsafeBytes { raw in
            let f = try ELFFile(bytes: raw)
            return (f, try f.symbols(), try f.relocationSections())
        }
    }

    func expect(_ code: ELFError.Code, _ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(bytes), file: file, line: line) { e in
            guard let err = e as? ELFError else { return XCTFail("not an ELFError: \(e)", file: file, line: line) }
            XCTAssertEqual(err.code, code, "\(err)", file: file, line: line)
        }
    }

    func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) { b[o] = UInt8(v & 0xff); b[o + 1] = UInt8(v >> 8) }
    func put64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) { for k in 0..<8 { b[o + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) } }
    func shoff(_ b: [UInt8]) -> Int { var v = 0; for k in 0..<8 { v |= Int(b[40 + k]) << (8 * k) }; return v }

    func testParsesSampleOfShippedModules() throws {
        for path in try Fixtures.sampleModules(120) {
            let bytes = try Fixtures.readFile(path)
            let (f, syms, relas) = try parse(bytes)
            XCTAssertFalse(f.sections.isEmpty, path)
            XCTAssertEqual(syms.first?.name, "", path)
            for rs in relas {
                for r in rs.relocations { XCTAssertTrue(r.type.isKnownToLoader, "\(path): \(rs.section.name) \(r.type)") }
            }
        }
    }

    func testSectionViewOf8021q() throws {
        let (f, syms, relas) = try parse(try load("8021q"))
        let text = try XCTUnwrap(f.section(named: ".text"))
        XCTAssertTrue(text.isAlloc && text.isExec && !text.isWrite)
        XCTAssertEqual(text.size, 13910)  // sysfs/core_text of the captured 8021q
        XCTAssertEqual(text.addralign, 16)
        XCTAssertEqual(text.fileRange.count, text.size)
        XCTAssertNotNil(f.section(named: "__mcount_loc"))
        XCTAssertTrue(syms.contains { $0.name == "vlan_ioctl_set" && $0.isUndefined })
        XCTAssertTrue(relas.contains { f.sections[$0.targetSectionIndex].name == ".text" })
    }

    /// `f`'s section header `i` (file offset), and its `sh_offset`/`sh_size` set to `range`.
    func retarget(_ b: inout [UInt8], section i: Int, to range: Range<Int>) {
        let h = shoff(b) + i * 64
        put64(&b, h + 24, UInt64(range.lowerBound))
        put64(&b, h + 32, UInt64(range.count))
    }

    /// HOLE (round 11): every section name was made a `String` running to its NUL, so section
    /// headers naming one long NUL-free run of `.shstrtab` asked for headers × run bytes (8,000 ×
    /// 1 MB from a 1.5 MB signed module: the service aborted on its allocation). A name past
    /// `maxSectionNameBytes` is refused, and the search for its NUL stops there.
    func testALongSectionNameIsRefusedBeforeItIsRead() throws {
        var b = try load("irqbypass")
        let (f, _, _) = try parse(b)
        // .shstrtab moved to a new table at the end of the file: 2,000 'A's, then a NUL. Every
        // section's sh_name (offsets of the old table, below 2,000) now names a run of 'A's.
        let start = b.count
        b += [UInt8](repeating: 0x41, count: 2000) + [0]
        retarget(&b, section: f.shstrndx, to: start..<b.count)
        XCTAssertThrowsError(try parse(b)) { e in
            XCTAssertEqual((e as? ELFError)?.code, .nameTooLong, "\(e)")
            XCTAssertTrue("\(e)".contains("longer than \(ELFLimits.maxSectionNameBytes) bytes"), "\(e)")
        }
        // Within the bound the same names read (1,000 'A's at most).
        var ok = try load("irqbypass")
        let s2 = ok.count
        ok += [UInt8](repeating: 0x41, count: 1000) + [UInt8](repeating: 0, count: 1000) + [0]
        retarget(&ok, section: f.shstrndx, to: s2..<ok.count)
        XCTAssertNoThrow(try ok.withUnsafeBytes { _ = try ELFFile(bytes: $0) })
    }

    /// HOLE (round 11): with a `.strtab` whose last byte is not NUL, each symbol's NUL was looked
    /// for from the name's start: names sharing one long NUL-free run cost that run once per
    /// symbol (40,000 × 10 MB never finished); and any table let every reader of names (resolution
    /// hashes each undefined symbol's name whole) pay a long shared name once per symbol. A table
    /// with `maxSymbolNameRun` bytes and no NUL is refused, both kinds; an unterminated table's
    /// name ends are found in one sweep in the names' order, each at the first NUL after its
    /// start, and a name with none is refused.
    func testLongNamesAreRefusedAndAnUnterminatedTableIsReadInOneSweep() throws {
        let original = try load("irqbypass")
        let (f, syms, _) = try parse(original)
        let symtab = try XCTUnwrap(f.sections.first { $0.type == SectionType.symtab })
        /// The module with `.strtab` moved to `table` at the end of the file and every symbol named at its start.
        func with(_ table: [UInt8]) -> [UInt8] {
            var b = original
            let start = b.count
            b += table
            retarget(&b, section: Int(symtab.link), to: start..<b.count)
            for k in 0..<syms.count { for j in 0..<4 { b[symtab.fileRange.lowerBound + k * 24 + j] = 0 } }
            return b
        }
        for terminated in [true, false] {
            let long = with([UInt8](repeating: 0x41, count: 4 << 20) + (terminated ? [0] : [0, 0x41]))
            XCTAssertThrowsError(try long.withUnsafeBytes { _ = try ELFFile(bytes: $0).symbolTable() }) { e in
                XCTAssertEqual((e as? ELFError)?.code, .nameTooLong, "\(e)")
            }
        }
        // 600-byte names, unterminated table: every name ends at the run's NUL.
        var b = with([UInt8](repeating: 0x41, count: 600) + [0, 0x41])
        try b.withUnsafeBytes { raw in
            let t = try ELFFile(bytes: raw).symbolTable()
            XCTAssertEqual(t.count, syms.count)
            for k in t.indices { XCTAssertEqual(t.nameBytes(k).count, 600) }
        }
        // A name that starts after the last NUL has no end: refused, naming the symbol.
        let last = symtab.fileRange.lowerBound + (syms.count - 1) * 24
        for j in 0..<4 { b[last + j] = UInt8(truncatingIfNeeded: UInt32(601) >> (8 * UInt32(j))) }
        XCTAssertThrowsError(try b.withUnsafeBytes { _ = try ELFFile(bytes: $0).symbolTable() }) { e in
            XCTAssertEqual((e as? ELFError)?.code, .unterminatedString, "\(e)")
            XCTAssertTrue("\(e)".contains("symbol \(syms.count - 1)"), "\(e)")
        }
    }

    func testForbidsTruncatedHeader() throws {
        expect(.truncated, Array(try load("8021q").prefix(63)))
        expect(.truncated, [])
    }

    func testForbidsBadMagic() throws {
        var b = try load("8021q"); b[1] = 0x46
        expect(.badMagic, b)
    }

    func testForbidsELF32AndBigEndian() throws {
        var b = try load("8021q"); b[4] = 1
        expect(.unsupportedClass, b)
        b = try load("8021q"); b[5] = 2
        expect(.unsupportedEncoding, b)
    }

    func testForbidsWrongTypeAndMachine() throws {
        var b = try load("8021q"); put16(&b, 16, 2)
        expect(.unsupportedType, b)
        b = try load("8021q"); put16(&b, 18, 183)  // EM_AARCH64
        expect(.unsupportedMachine, b)
    }

    func testForbidsSectionTableOutsideFile() throws {
        var b = try load("8021q"); put64(&b, 40, UInt64(b.count - 10))
        expect(.sectionTableOutOfBounds, b)
        b = try load("8021q"); put64(&b, 40, UInt64.max - 8)
        expect(.sectionTableOutOfBounds, b)
    }

    func testForbidsSectionContentsOutsideFile() throws {
        var b = try load("8021q")
        let text = try parse(b).0.section(named: ".text")!
        let h = shoff(b) + text.index * 64
        put64(&b, h + 32, UInt64(b.count))  // sh_size past the end
        expect(.sectionOutOfBounds, b)
        put64(&b, h + 24, UInt64.max)       // sh_offset not representable
        expect(.sectionOutOfBounds, b)
    }

    func testForbidsBadStringTableIndexAndNameOffset() throws {
        var b = try load("8021q"); put16(&b, 62, 0xfff0)
        expect(.badStringTableIndex, b)
        b = try load("8021q")
        let h = shoff(b) + 1 * 64
        b[h] = 0xff; b[h + 1] = 0xff; b[h + 2] = 0xff; b[h + 3] = 0x7f  // sh_name far outside shstrtab
        expect(.badStringOffset, b)
    }

    /// Section names compare as bytes, as find_sec()'s strcmp(): a section whose name is
    /// canonically equivalent to the one asked for (U+212A KELVIN SIGN for "K") is not it.
    func testSectionNamesCompareAsBytes() throws {
        var b = try load("8021q")
        let f = try parse(b).0
        let data = try XCTUnwrap(f.section(named: ".data"))
        func u(_ o: Int, _ n: Int) -> Int { var v = 0; for k in 0..<n { v |= Int(b[o + k]) << (8 * k) }; return v }
        let shstrndx = u(62, 2)
        let strtabOffset = u(shoff(b) + shstrndx * 64 + 24, 8)
        let nameAt = strtabOffset + u(shoff(b) + data.index * 64, 4)
        XCTAssertEqual(Array(b[nameAt..<nameAt + 6]), Array(".data\0".utf8))
        b.replaceSubrange(nameAt..<nameAt + 5, with: Array("\u{212A}da".utf8))  // 5 bytes too
        let g = try parse(b).0
        XCTAssertNil(g.section(named: ".data"))
        XCTAssertNil(g.section(named: "Kda"), "canonically equivalent, different bytes")
        XCTAssertEqual(g.section(named: "\u{212A}da")?.index, data.index)
    }

    func testForbidsOverlappingSections() throws {
        var b = try load("8021q")
        let f = try parse(b).0
        let text = f.section(named: ".text")!, data = f.section(named: ".data")!
        put64(&b, shoff(b) + data.index * 64 + 24, UInt64(text.fileRange.lowerBound + 8))  // .data aliases .text
        expect(.overlappingSections, b)
        b = try load("8021q")
        put64(&b, shoff(b) + text.index * 64 + 24, 0)  // .text over the ELF header
        expect(.overlappingSections, b)
    }

    func testForbidsNonPowerOfTwoAlignment() throws {
        var b = try load("8021q")
        put64(&b, shoff(b) + 1 * 64 + 48, 3)
        expect(.badAlignment, b)
    }

    func testForbidsBadRelaEntrySizeAndOffset() throws {
        var b = try load("8021q")
        let (f, _, relas) = try parse(b)
        let rs = relas[0]
        put64(&b, shoff(b) + rs.section.index * 64 + 56, 16)
        expect(.badEntrySize, b)
        b = try load("8021q")
        let tsize = UInt64(f.sections[rs.targetSectionIndex].size)
        put64(&b, rs.section.fileRange.lowerBound, tsize - 1)  // r_offset: 4/8-byte field past the end
        expect(.badRelocationTarget, b)
    }

    func testTruncationSweepNeverCrashes() throws {
        let b = try load("garp")
        let end = shoff(b) + 64 * Int(UInt16(b[60]) | UInt16(b[61]) << 8)
        var n = 0
        while n < end {
            XCTAssertThrowsError(try parse(Array(b.prefix(n))), "prefix \(n)")
            n += 97
        }
    }

    func testCorruptionSweepNeverCrashes() throws {
        let b = try load("garp")
        var rng: UInt64 = 0x1234
        for _ in 0..<3000 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            var c = b
            let o = Int((rng >> 33) % UInt64(b.count))
            c[o] ^= UInt8(truncatingIfNeeded: rng >> 7) | 1
            _ = try? parse(c)  // must return or throw, never trap
        }
    }

    func testRelocationTypeNames() {
        XCTAssertEqual(RelocationType.pc32.description, "R_X86_64_PC32")
        XCTAssertFalse(RelocationType(rawValue: 9).isKnownToLoader)  // R_X86_64_GOTPCREL: the kernel refuses
        XCTAssertEqual(RelocationType.r64.fieldSize, 8)
        XCTAssertNil(RelocationType(rawValue: 42).fieldSize)
    }
}
