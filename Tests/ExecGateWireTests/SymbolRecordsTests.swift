// SPDX-License-Identifier: Apache-2.0
//
// SymbolRecords read in place (`forEachRecord`, `visitRecords`, `firstRecord`): the registration
// path's passes over a decoded registration's records read its packed bytes where they lie, so
// they must see exactly what the in-process records and the records as values (`firstRecord`,
// `symbols`) see, and the decode's one validating pass must refuse exactly what it refused before
// (the name's UTF-8 included).

import ExecGateWire
import NIOCore
import XCTest

final class SymbolRecordsTests: XCTestCase {
    static let symbols: [KernelSymbol] = [
        KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, type: UInt8(ascii: "T"), exported: false),
        KernelSymbol(name: "", address: 0x10, type: UInt8(ascii: "A"), exported: false),
        KernelSymbol(name: "__SCK__might_resched", address: 0xffff_ffff_8220_0000, type: UInt8(ascii: "D"), exported: true),
        KernelSymbol(name: "fifteen_bytes__", address: 0xffff_ffff_8100_1000, type: UInt8(ascii: "t"), exported: false, isFunction: true),
        KernelSymbol(name: "sixteen_bytes___", address: 0xffff_ffff_8100_2000, type: UInt8(ascii: "W"), exported: true, isFunction: true),
        KernelSymbol(name: String(repeating: "long_name_", count: 30), address: 0xffff_ffff_8100_3000, type: UInt8(ascii: "w")),
        KernelSymbol(name: "caf\u{e9}_\u{fc}ber_\u{1F600}", address: 0xffff_ffff_8300_0000, type: UInt8(ascii: "d"), exported: true),
        KernelSymbol(name: "__SCT__", address: 0xffff_ffff_8100_4000, type: UInt8(ascii: "T"), exported: false),
    ]

    static func registration(_ symbols: [KernelSymbol] = symbols, slide: UInt64 = 0x0c00_0000) -> RegisterGuest {
        RegisterGuest(guestID: "g", kaslrSlide: slide, symbols: symbols)
    }

    static func decoded(_ r: RegisterGuest) throws -> RegisterGuest {
        guard case .registerGuest(let d) = try Message(type: .registerGuest, body: Message.registerGuest(r).encodeBody()) else {
            throw XCTSkip("not a register-guest")
        }
        return d
    }

    struct Seen: Equatable {
        var address: UInt64, type: UInt8, flags: UInt8, name: [UInt8], exported: Bool, isFunction: Bool, isText: Bool
    }

    static func inPlace(_ s: SymbolRecords) -> [Seen] {
        var out: [Seen] = []
        s.forEachRecord { r in
            out.append(Seen(address: r.address, type: r.type, flags: r.flags, name: Array(r.nameBytes), exported: r.exported,
                            isFunction: r.isFunction, isText: r.isText))
            XCTAssertEqual(r.makeName().utf8.count, r.nameBytes.count)
        }
        return out
    }

    /// Every record as a value (`SymbolRecord`, its name a `String`), the k-th found by `firstRecord`.
    static func asValues(_ s: SymbolRecords) -> [Seen] {
        (0..<s.count).compactMap { k in
            var i = 0
            guard let r = s.firstRecord(where: { _ in defer { i += 1 }; return i == k }) else { return nil }
            XCTAssertEqual(r.nameByteCount, r.name.utf8.count)
            return Seen(address: r.address, type: r.type, flags: r.flags, name: Array(r.name.utf8), exported: r.exported, isFunction: r.isFunction,
                        isText: r.isText)
        }
    }

    func testRecordsReadInPlaceAreTheValuesAndTheInProcessOnes() throws {
        let r = Self.registration()
        let d = try Self.decoded(r)
        let expected = Self.symbols.map { s in
            Seen(address: s.address, type: s.type, flags: UInt8(s.exported ? 1 : 0) | UInt8(s.isFunction ? 2 : 0), name: Array(s.name.utf8),
                 exported: s.exported, isFunction: s.isFunction, isText: s.isText)
        }
        XCTAssertEqual(Self.inPlace(d.symbolRecords), expected)
        XCTAssertEqual(Self.inPlace(r.symbolRecords), expected)
        XCTAssertEqual(Self.asValues(d.symbolRecords), expected)
        XCTAssertEqual(Self.asValues(r.symbolRecords), expected)
        XCTAssertEqual(d.symbols, Self.symbols)
        var names: [String] = []
        d.symbolRecords.forEachRecord { names.append($0.makeName()) }
        XCTAssertEqual(names, Self.symbols.map(\.name))
    }

    func testVisitingStopsWhereAsked() throws {
        for records in [Self.registration().symbolRecords, try Self.decoded(Self.registration()).symbolRecords] {
            var visited = 0
            XCTAssertFalse(records.visitRecords { r in visited += 1; return !r.exported })
            XCTAssertEqual(visited, 3)
            visited = 0
            XCTAssertTrue(records.visitRecords { _ in visited += 1; return true })
            XCTAssertEqual(visited, Self.symbols.count)
            let first = records.firstRecord { $0.address >= 0xffff_ffff_8300_0000 }
            XCTAssertEqual(first?.name, "caf\u{e9}_\u{fc}ber_\u{1F600}")
            XCTAssertEqual(first?.address, 0xffff_ffff_8300_0000)
            XCTAssertEqual(first?.exported, true)
            XCTAssertNil(records.firstRecord { $0.address == 1 })
            XCTAssertTrue(SymbolRecords().visitRecords { _ in XCTFail("no record"); return false })
        }
    }

    /// `==` compares records whatever holds them (an array, a decoded packing, one of each).
    func testEqualityComparesRecordsWhateverTheStorage() throws {
        let r = Self.registration()
        let d = try Self.decoded(r)
        XCTAssertEqual(d.symbolRecords, r.symbolRecords)
        XCTAssertEqual(r.symbolRecords, d.symbolRecords)
        XCTAssertEqual(d.symbolRecords, try Self.decoded(d).symbolRecords)
        var other = Self.symbols
        other[3].isFunction = false
        let o = Self.registration(other)
        for (a, b) in [(o.symbolRecords, d.symbolRecords), (try Self.decoded(o).symbolRecords, d.symbolRecords),
                       (try Self.decoded(o).symbolRecords, r.symbolRecords), (SymbolRecords(), d.symbolRecords)] {
            XCTAssertNotEqual(a, b)
            XCTAssertNotEqual(b, a)
        }
        // A name past the u16 length (in process only) is compared in full: not the cut one decoded.
        let long = Self.registration([KernelSymbol(name: String(repeating: "x", count: 70_000), address: 1, type: UInt8(ascii: "T"))])
        let cut = try Self.decoded(long)
        XCTAssertEqual(cut.symbols.first?.name.utf8.count, 65_535)
        XCTAssertNotEqual(cut.symbolRecords, long.symbolRecords)
        XCTAssertNotEqual(long.symbolRecords, cut.symbolRecords)
        XCTAssertEqual(cut.symbolRecords, SymbolRecords(cut.symbols))
    }

    func testNamePrefixesAreComparedAsBytes() throws {
        var starts: [Bool] = []
        try Self.decoded(Self.registration()).symbolRecords.forEachRecord { r in
            starts.append(r.nameStarts(with: "__SCK__") || r.nameStarts(with: "__SCT__"))
            XCTAssertTrue(r.nameStarts(with: ""))
        }
        XCTAssertEqual(starts, [false, false, true, false, false, false, false, true])
    }

    /// The link-time records in windows of any size are the same bytes (the digest's input).
    func testLinkTimeRecordsInAnyWindowAreTheSameBytes() throws {
        for r in [Self.registration(), try Self.decoded(Self.registration())] {
            var expected: [UInt8] = []
            for s in Self.symbols {
                let a = s.address >= 0xffff_ffff_8000_0000 ? s.address - r.kaslrSlide : s.address
                withUnsafeBytes(of: a.bigEndian) { expected += $0 }
                expected += [s.type, UInt8(s.exported ? 1 : 0) | UInt8(s.isFunction ? 2 : 0), UInt8(s.name.utf8.count >> 8), UInt8(s.name.utf8.count & 0xff)]
                expected += Array(s.name.utf8)
            }
            XCTAssertEqual(RegisterGuestReply.linkTimeSymbolRecords(r), expected)
            for piece in [0, 1, 12, 13, 40, 1 << 16] {
                var pieces: [[UInt8]] = []
                RegisterGuestReply.linkTimeSymbolRecords(r, piece: piece) { pieces.append(Array($0)) }
                XCTAssertEqual(pieces.flatMap { $0 }, expected, "piece \(piece)")
                XCTAssertFalse(pieces.contains { $0.isEmpty })
            }
        }
        // A name past the u16 length (in process only) is cut as the wire cuts it.
        let long = KernelSymbol(name: String(repeating: "x", count: 70_000), address: 1, type: UInt8(ascii: "T"))
        let packed = RegisterGuestReply.linkTimeSymbolRecords(Self.registration([long]))
        XCTAssertEqual(packed.count, 12 + 65_535)
        XCTAssertEqual(Array(packed[10..<12]), [0xff, 0xff])
    }

    // MARK: - The decode's validating pass

    static func body(_ name: [UInt8], flags: UInt8 = 1, extra: [UInt8] = []) -> ByteBuffer {
        var packed = ByteBuffer()
        packed.writeInteger(UInt64(0xffff_ffff_8100_0000)); packed.writeInteger(UInt8(ascii: "T")); packed.writeInteger(flags)
        packed.writeInteger(UInt16(name.count)); packed.writeBytes(name)
        packed.writeBytes(extra)
        var w = TLVWriter()
        w.string(1, "g"); w.bytes(6, packed)
        return w.buffer
    }

    static func refusal(_ body: ByteBuffer) -> WireDecodeError? {
        do {
            _ = try Message(type: .registerGuest, body: body)
            return nil
        } catch {
            return error as? WireDecodeError
        }
    }

    func testNamesAreStrictUTF8PastAnyASCIIRun() {
        let ascii = Array("abcdefghijklmnopq".utf8)  // past one 8-byte word
        for bad: [UInt8] in [[0xc3], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xff], [0xe2, 0x82]] {
            for prefix in [[], Array(ascii.prefix(3)), Array(ascii.prefix(8)), ascii] {
                XCTAssertEqual(Self.refusal(Self.body(prefix + bad))?.code, .invalidUTF8, "\(prefix + bad)")
                XCTAssertEqual(Self.refusal(Self.body(prefix + bad + ascii))?.code, .invalidUTF8, "\(prefix + bad)")
            }
        }
        for good in ["", "a", "abcdefgh", "abcdefghijklmnop\u{e9}", "\u{e9}abcdefghijklmnop", "x\u{1F600}y\u{0}z", "\u{10FFFF}"] {
            XCTAssertNil(Self.refusal(Self.body(Array(good.utf8))), good)
        }
    }

    func testRefusalsKeepTheirOrderAndTexts() {
        // Truncated header, truncated name, unknown flags, bad UTF-8: as the decoder always said.
        let truncatedHeader = Self.refusal(Self.body(Array("ok".utf8), extra: [0, 0, 0]))
        XCTAssertEqual(truncatedHeader?.code, .truncatedField)
        XCTAssertEqual(truncatedHeader?.field, "register-guest.symbols")
        XCTAssertEqual(truncatedHeader?.detail, "record 1 truncated")
        // A second record whose name is cut short (its flags 9 unknown too: truncation is told first).
        let truncatedName = Self.refusal(Self.body(Array("ok".utf8), extra: [0, 0, 0, 0, 0, 0, 0, 0, 0x54, 9, 0, 5, 0x61]))
        XCTAssertEqual(truncatedName?.code, .truncatedField)
        XCTAssertEqual(truncatedName?.detail, "record 1 truncated")
        let flags = Self.refusal(Self.body([0xff], flags: 4))
        XCTAssertEqual(flags?.code, .invalidValue)
        XCTAssertEqual(flags?.detail, "record 0: unknown flags 0x4")
    }
}
