// SPDX-License-Identifier: Apache-2.0
//
// `NameTable.digest` and `UnsafeRawBufferPointer.isASCII` (_ExecGateInternals) read a name's
// last partial word in one load (the top bytes of its last 8) where they read it byte by byte:
// the same word, so the same digest (every table of the process is keyed by it) and the same
// answer, for every length and byte.

@testable import ExecGateExplain
import _ExecGateInternals
import XCTest

final class NameDigestTests: XCTestCase {
    /// The digest as it was, its tail read byte by byte (the reference).
    static func referenceDigest(_ b: UnsafeRawBufferPointer) -> NameTable.Digest {
        var h = NameTable.seed ^ (UInt64(b.count) &* 0x9e37_79b9_7f4a_7c15)
        var head0: UInt64 = 0, head1: UInt64 = 0
        var i = 0
        let n = b.count
        while i + 8 <= n {
            let w = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            if i == 0 { head0 = w } else if i == 8 { head1 = w }
            h = (h ^ w) &* 0xbf58_476d_1ce4_e5b9
            h ^= h >> 31
            i += 8
        }
        if i < n {
            var w: UInt64 = 0
            var k = 0
            while i + k < n { w |= UInt64(b[i + k]) << (8 * UInt64(k)); k += 1 }
            if i == 0 { head0 = w } else if i == 8 { head1 = w }
            h = (h ^ w) &* 0xbf58_476d_1ce4_e5b9
        }
        h ^= h >> 29
        h = h &* 0x94d0_49bb_1331_11eb
        return (h ^ (h >> 32), head0, head1)
    }

    func testDigestAndASCIIAreTheBytewiseOnes() {
        var rng = SplitMix64(state: 0xd16e_57a1)
        for round in 0..<4_000 {
            let n = round < 64 ? round : rng.below(80)
            // Mostly ASCII names, some with a high byte anywhere (the tail included).
            var bytes = (0..<n).map { _ in UInt8(0x20 + rng.below(0x5f)) }
            if n > 0 && rng.below(3) == 0 { bytes[rng.below(n)] |= 0x80 }
            // Inside a larger buffer: bytes around the name must not count.
            let pad = [UInt8](repeating: 0xff, count: 9)
            let buffer = pad + bytes + pad
            buffer.withUnsafeBytes { all in
                let b = UnsafeRawBufferPointer(rebasing: all[9..<(9 + n)])
                let d = NameTable.digest(b)
                let r = Self.referenceDigest(b)
                XCTAssertEqual(d.hash, r.hash, "length \(n)")
                XCTAssertEqual(d.head0, r.head0, "length \(n)")
                XCTAssertEqual(d.head1, r.head1, "length \(n)")
                XCTAssertEqual(b.isASCII, bytes.allSatisfy { $0 < 0x80 }, "length \(n)")
                // Bytes past the name never enter it: the same name alone in its own array.
                Array(bytes).withUnsafeBytes { XCTAssertEqual(NameTable.digest($0).hash, d.hash, "length \(n)") }
            }
        }
    }

    /// `hasASCIIPrefix(String, StaticString)` is the kernel's `strstarts()` on the name's bytes,
    /// for small strings (at most 15 bytes, stored inline) as for large ones: ".init" followed by
    /// a combining mark starts with ".init" (it is no *character* prefix: `String.hasPrefix` says
    /// false), and no canonically equivalent spelling matches a prefix its bytes do not start
    /// with. Fails: a character-wise comparison for either size, or a prefix test that reads past
    /// the name.
    func testASCIIPrefixIsBytewiseForSmallAndLargeStrings() {
        let cases: [(String, Bool)] = [
            (".init", true), (".init.text", true), (".init\u{301}", true), (".init\u{301}.text.unlikely.x", true),
            (".ini", false), ("", false), (".Init", false), ("\u{FF0E}init", false), (".in\u{0131}t", false),
            (".init" + String(repeating: "x", count: 40), true), (String(repeating: "x", count: 40) + ".init", false),
        ]
        for (name, expected) in cases {
            XCTAssertEqual(hasASCIIPrefix(name, ".init"), expected, name.debugDescription)
            XCTAssertEqual(hasASCIIPrefix(name, ".init"), Array(name.utf8).starts(with: Array(".init".utf8)), name.debugDescription)
        }
        var rng = SplitMix64(state: 0x9e1f_1e55)
        for _ in 0..<2_000 {
            let n = rng.below(40)
            let name = String(decoding: (0..<n).map { _ in [UInt8(ascii: "."), UInt8(ascii: "i"), UInt8(ascii: "n"), UInt8(ascii: "t"), 0xcc, 0x81][rng.below(6)] }, as: UTF8.self)
            XCTAssertEqual(hasASCIIPrefix(name, ".in"), Array(name.utf8).starts(with: Array(".in".utf8)), name.debugDescription)
        }
    }

    /// `isASCIIName` is `strcmp() == 0` against an ASCII literal: equal bytes only, for small and
    /// large strings; no canonically equivalent spelling, no prefix or extension, no NUL-padded
    /// copy. Fails: a comparison by characters, by prefix, or one that reads past the name.
    func testASCIINameIsByteEquality() {
        let cases: [(String, Bool)] = [
            (".modinfo", true), (".modinf", false), (".modinfo\0", false), (".modinfo\u{301}", false), (".MODINFO", false),
            ("", false), (".modinfox", false),
        ]
        for (name, expected) in cases { XCTAssertEqual(isASCIIName(name, ".modinfo"), expected, name.debugDescription) }
        XCTAssertTrue(isASCIIName(".data..ro_after_init", ".data..ro_after_init"))
        XCTAssertFalse(isASCIIName(".data..ro_after_inix", ".data..ro_after_init"))
        XCTAssertFalse(isASCIIName("\u{212A}", "K"))  // canonically equivalent, other bytes
        XCTAssertTrue("\u{212A}" == "K")
        var rng = SplitMix64(state: 0x5eed_a5c1)
        for _ in 0..<2_000 {
            let n = rng.below(24)
            let name = String(decoding: (0..<n).map { _ in Array("_.jump_table".utf8)[rng.below(12)] }, as: UTF8.self)
            XCTAssertEqual(isASCIIName(name, "__jump_table"), Array(name.utf8) == Array("__jump_table".utf8), name)
        }
    }
}
