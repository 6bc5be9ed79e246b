// SPDX-License-Identifier: Apache-2.0
//
// The shared toolkit: bounds-checked reads at every boundary, hex round trips, percentiles by
// nearest rank, atomic durable writes, coded errors that compare by code.

import ExecGateTestSupport
import XCTest
import _ExecGateInternals
#if canImport(Glibc)
import Glibc
#endif

final class ByteReadingTests: XCTestCase {
    let bytes: [UInt8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xff]

    func testReadsBothByteOrders() {
        XCTAssertEqual(bytes.getInteger(at: 0, as: UInt32.self), 0x0403_0201)
        XCTAssertEqual(bytes.getInteger(at: 0, order: .big, as: UInt32.self), 0x0102_0304)
        XCTAssertEqual(bytes.getInteger(at: 1, as: UInt64.self), 0xff08_0706_0504_0302)
        XCTAssertEqual(bytes.getInteger(at: 8, as: Int8.self), -1)
    }

    func testForbidsEveryOutOfBoundsOffset() {
        // The last offset that fits, and every one past it, including negative and overflowing ones.
        XCTAssertNotNil(bytes.getInteger(at: 5, as: UInt32.self))
        for off in [6, 7, 8, 9, 100, -1, Int.min, Int.max, Int.max - 2] {
            XCTAssertNil(bytes.getInteger(at: off, as: UInt32.self), "offset \(off)")
        }
        XCTAssertNil([UInt8]().getInteger(at: 0, as: UInt8.self))
        XCTAssertNil([UInt8](repeating: 0, count: 3).getInteger(at: 0, as: UInt32.self))
    }

    func testSliceOffsetsAreRelativeToTheSlice() {
        let s = bytes[4...]
        XCTAssertEqual(s.getInteger(at: 0, as: UInt16.self), 0x0605)
        XCTAssertNil(s.getInteger(at: 4, as: UInt16.self))
    }

    func testRel32IsSigned() {
        let b: [UInt8] = [0xfb, 0xff, 0xff, 0xff]
        b.withUnsafeBytes { XCTAssertEqual($0.getRel32(at: 0), -5) }
    }

    func testCursorMovesOnlyOnSuccess() {
        bytes.withUnsafeBytes { raw in
            var c = ByteCursor(raw)
            XCTAssertEqual(c.readInteger(as: UInt16.self), 0x0201)
            XCTAssertEqual(c.offset, 2)
            XCTAssertNil(c.readBytes(8))
            XCTAssertEqual(c.offset, 2, "a failed read does not move the cursor")
            XCTAssertEqual(c.readBytes(3).map { Array($0) }, [3, 4, 5])
            XCTAssertFalse(c.skip(5))
            XCTAssertTrue(c.skip(4))
            XCTAssertEqual(c.remaining, 0)
            XCTAssertNil(c.readInteger(as: UInt8.self))
        }
    }

    /// Seeded: every offset and width over random buffers either reads the same value as a plain
    /// byte-by-byte decode or returns nil exactly when the range is out of bounds.
    func testAgreesWithByteByByteDecodeOnRandomBuffers() {
        var rng = SeededRNG(seed: 0xE6E6_0001)
        for _ in 0..<500 {
            let n = Int(rng.next() % 24)
            let buf = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let off = Int(rng.next() % 30) - 3
            let want: UInt32? = (off >= 0 && off + 4 <= n)
                ? (0..<4).reduce(UInt32(0)) { $0 | UInt32(buf[off + $1]) << (8 * $1) } : nil
            XCTAssertEqual(buf.getInteger(at: off, as: UInt32.self), want, "n=\(n) off=\(off)")
        }
    }
}

final class HexAndPercentileTests: XCTestCase {
    func testHexRoundTrips() {
        XCTAssertEqual(Hex.encode([0x00, 0x0a, 0xff]), "000aff")
        XCTAssertEqual(Hex.decode("0aFf"), [0x0a, 0xff])
        XCTAssertNil(Hex.decode("abc"))
        XCTAssertNil(Hex.decode("zz"))
        XCTAssertEqual(Hex.address(UInt64(0xffff_ffff_c000_0000)), "0xffffffffc0000000")
        XCTAssertEqual(Hex.address(UInt64(0)), "0x0")
        XCTAssertEqual(Hex.number(UInt8(5), width: 2), "05")
        XCTAssertEqual(Hex.parseUInt64("0xffffffff81000000"), 0xffff_ffff_8100_0000)
        XCTAssertNil(Hex.parseUInt64("0x"))
        XCTAssertNil(Hex.parseUInt64("0x1ffffffffffffffff"), "17 digits overflow")
    }

    func testNearestRankPercentiles() {
        let s = (1...100).map(Double.init)
        XCTAssertEqual(Percentiles.of(s, 50), 50)
        XCTAssertEqual(Percentiles.of(s, 99), 99)
        XCTAssertEqual(Percentiles.of(s, 100), 100)
        XCTAssertEqual(Percentiles.of(s.reversed(), 1), 1)
        XCTAssertEqual(Percentiles.of([], 50), 0)
        XCTAssertEqual(Percentiles.of([7], 99), 7)
        let sum = Percentiles.summary([1, 2, 3, 10])
        XCTAssertEqual(sum.p50, 2)
        XCTAssertEqual(sum.p99, 10)
        XCTAssertEqual(sum.mean, 4)
    }
}

final class FilesAndErrorsTests: XCTestCase {
    func testAtomicWriteReplacesAndReadsBackBounded() throws {
        let dir = "/tmp/execgate-toolkit-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = unlink(dir + "/f"); rmdir(dir) }
        try Files.writeAtomically(dir + "/f", Array("one".utf8), mode: 0o600)
        try Files.writeAtomically(dir + "/f", Array("two!".utf8), mode: 0o600)
        XCTAssertEqual(try Files.readText(dir + "/f"), "two!")
        var st = stat()
        XCTAssertEqual(stat(dir + "/f", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertFalse(Files.exists(dir + "/f.tmp.\(getpid())"), "no temporary file left behind")
        XCTAssertThrowsError(try Files.read(dir + "/f", limit: 3)) { e in
            XCTAssertEqual((e as? FileError)?.errno, EFBIG)
        }
        // Pseudo-files report size 0: read to end of file all the same, bounded.
        let cmdline = try Files.readText("/proc/self/cmdline")
        XCTAssertFalse(cmdline.isEmpty, "/proc files have st_size 0 but content")
        XCTAssertThrowsError(try Files.read("/proc/self/maps", limit: 16)) { e in
            XCTAssertEqual((e as? FileError)?.errno, EFBIG)
        }
        XCTAssertEqual(try Files.read(dir + "/f", limit: 4).count, 4, "exactly the limit is allowed")
        XCTAssertThrowsError(try Files.read(dir + "/missing")) { e in
            XCTAssertTrue("\(e)".contains("missing: open:"), "\(e)")
        }
    }

    enum DemoCode: String, ErrorCode { case a = "demo.a", b = "demo.b" }

    func testCodedErrorsCompareByCodeAndPrintTheirCode() {
        typealias DemoError = CodedError<DemoCode>
        XCTAssertEqual(DemoError(.a, "one reason"), DemoError(.a, "another"))
        XCTAssertNotEqual(DemoError(.a, "x"), DemoError(.b, "x"))
        XCTAssertEqual("\(DemoError(.b, "why"))", "demo.b: why")
        XCTAssertEqual(DemoError.Code.a.description, "demo.a")
    }
}

final class TextSearchTests: XCTestCase {
    func testFindsFixedMarkers() {
        let line = "spectre_v2: Mitigation: Retpolines, IBPB: conditional"
        XCTAssertTrue(line.containsUTF8("Retpolines"))
        XCTAssertFalse(line.containsUTF8("LFENCE"))
        XCTAssertFalse(line.containsUTF8(""))
        XCTAssertFalse("Retpoline".containsUTF8("Retpolines"), "a needle longer than what is left never matches")
        let console = "[ 1.0] execgate-init: capture: 3 modules"
        let r = console.utf8Range(of: "capture: ")
        XCTAssertEqual(r.map { String(console[$0.upperBound...]) }, "3 modules")
        XCTAssertEqual("aaab".utf8Range(of: "aab").map { "aaab".distance(from: "aaab".startIndex, to: $0.lowerBound) }, 1,
                       "a partial match that fails restarts one byte later")
        // Multi-byte scalars: the match starts on a scalar boundary.
        let s = "µs → ms"
        XCTAssertEqual(s.utf8Range(of: "→ m").map { String(s[$0]) }, "→ m")
        XCTAssertTrue(s[s.index(after: s.startIndex)...].containsUTF8("s →"), "works on substrings")
    }

    /// Seeded: on ASCII strings the byte search agrees with the standard library's `firstRange(of:)`.
    func testAgreesWithTheStandardLibraryOnRandomASCII() {
        var rng = SeededRNG(seed: 0x7E57_5EA2)
        let alphabet = Array("ab c")
        func word(_ max: UInt64) -> String { String((0..<Int(rng.next() % max)).map { _ in alphabet[Int(rng.next() % 4)] }) }
        for _ in 0..<2_000 {
            let hay = word(20), needle = word(5)
            guard !needle.isEmpty else { continue }
            XCTAssertEqual(hay.utf8Range(of: needle), hay.firstRange(of: needle), "'\(hay)' / '\(needle)'")
            XCTAssertEqual(hay.containsUTF8(needle), hay.contains(needle))
        }
    }
}

final class SortedSearchTests: XCTestCase {
    /// Against a linear scan, on sorted arrays with repeats, empty arrays, misses below, between
    /// and above, and slices that do not start at 0 (the audit rings are slices).
    func testAgreesWithALinearScan() {
        var rng = SeededRNG(seed: 0x5eed_0b5)
        for round in 0..<400 {
            let n = round % 7 == 0 ? 0 : Int.random(in: 1...64, using: &rng)
            let a = (0..<n).map { _ in UInt64.random(in: 0...80, using: &rng) }.sorted()
            let drop = n > 0 ? Int.random(in: 0...min(3, n), using: &rng) : 0
            let slice = a.dropFirst(drop)
            for x in UInt64(0)...82 {
                XCTAssertEqual(a.sortedContains(x), a.contains(x), "\(a) \(x)")
                XCTAssertEqual(a.sortedIndex(of: x), a.firstIndex(of: x), "\(a) \(x)")
                XCTAssertEqual(slice.sortedIndex(of: x), slice.firstIndex(of: x), "\(slice) \(x)")
                XCTAssertEqual(slice.partitioningIndex { $0 <= x }, slice.firstIndex { $0 > x } ?? slice.endIndex, "\(slice) \(x)")
            }
        }
    }
}
