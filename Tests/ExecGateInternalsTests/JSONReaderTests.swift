// SPDX-License-Identifier: Apache-2.0
//
// The bounded JSON reader: exact values, each refusal with its code, the limits, a seeded
// round-trip fuzz through the writer, and seeded mutations of real documents.

import _ExecGateInternals
import ExecGateTestSupport
import XCTest

final class JSONReaderTests: XCTestCase {
    func parse(_ s: String, limits: JSONReader.Limits = JSONReader.Limits()) throws(JSONReadError) -> JSON {
        try JSONReader.parse(Array(s.utf8), limits: limits)
    }

    func code(_ s: String, limits: JSONReader.Limits = JSONReader.Limits()) -> JSONReadErrorCode? {
        do { _ = try parse(s, limits: limits); return nil } catch { return error.code }
    }

    func testValues() throws {
        XCTAssertEqual(try parse(" {\"a\": [1, -2, 3.5, true, false, null, \"x\"], \"b\": {}} \n"),
                       .object([("a", .array([.uint(1), .int(-2), .double(3.5), .bool(true), .bool(false), .null, .string("x")])), ("b", .object([]))]))
        XCTAssertEqual(try parse("18446744073709551615"), .uint(UInt64.max))
        XCTAssertEqual(try parse("-9223372036854775808"), .int(Int64.min))
        XCTAssertEqual(try parse("18446744073709551616"), .double(18446744073709551616))
        XCTAssertEqual(try parse("1e3"), .double(1000))
        XCTAssertEqual(try parse("-0"), .int(0))
        XCTAssertEqual(try parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00é\""), .string("\"\\/\u{8}\u{c}\n\r\té😀é"))
        let layout = try parse("{\"ko\": \"8021q.ko\", \"core_text\": {\"base\": \"0xffffffffc0cf3000\", \"size\": 16384}}")
        XCTAssertEqual(layout["ko"]?.stringValue, "8021q.ko")
        XCTAssertEqual(layout["core_text"]?["base"]?.stringValue, "0xffffffffc0cf3000")
        XCTAssertNil(layout["core_text"]?["size"]?.stringValue)
        XCTAssertNil(layout["nope"])
    }

    func testRefusals() {
        let cases: [(String, JSONReadErrorCode)] = [
            ("", .unexpectedEnd), ("   ", .unexpectedEnd), ("{", .unexpectedEnd), ("[1,", .unexpectedEnd), ("\"abc", .unexpectedEnd),
            ("{\"a\" 1}", .unexpectedByte), ("{\"a\":1,}", .unexpectedByte), ("[1,]", .unexpectedByte), ("{1:2}", .unexpectedByte),
            ("[1 2]", .unexpectedByte), ("tru", .unexpectedByte), ("nul", .unexpectedByte), ("'a'", .unexpectedByte), ("+1", .unexpectedByte),
            ("NaN", .unexpectedByte), ("Infinity", .unexpectedByte),
            ("01", .badNumber), ("-", .badNumber), ("1.", .badNumber), ("1e", .badNumber), (".5", .unexpectedByte), ("1e400", .badNumber),
            ("\"\\x\"", .badString), ("\"\\u12\"", .badString), ("\"\\ud800\"", .badString), ("\"\\udc00\"", .badString),
            ("\"\\ud800\\u0041\"", .badString), ("\"a\u{1}b\"", .badString), ("\"a\nb\"", .badString),
            ("{\"a\":1,\"a\":2}", .duplicateKey), ("{} {}", .trailingData), ("1 2", .trailingData), ("[] x", .trailingData),
        ]
        for (text, expected) in cases { XCTAssertEqual(code(text), expected, "'\(text)'") }
        // Invalid UTF-8 inside a string, and a NUL outside one.
        XCTAssertEqual((try? JSONReader.parse([0x22, 0xC3, 0x28, 0x22])).map { _ in "accepted" }, nil)
        do { _ = try JSONReader.parse([0x22, 0xC3, 0x28, 0x22]) } catch { XCTAssertEqual(error.code, .badString) }
        do { _ = try JSONReader.parse([0x31, 0x00]) } catch { XCTAssertEqual(error.code, .trailingData) }
        // The reason says where.
        do { _ = try parse("{\"a\": tru}") } catch { XCTAssertEqual(error.description, "json.unexpected-byte: at byte 6: expected 'true'") }
    }

    func testLimits() {
        XCTAssertEqual(code(String(repeating: "[", count: 33) + String(repeating: "]", count: 33)), .tooDeep)
        XCTAssertNil(code(String(repeating: "[", count: 32) + String(repeating: "]", count: 32)))
        XCTAssertEqual(code(String(repeating: "[", count: 100_000)), .tooDeep)  // refused long before the stack matters
        XCTAssertEqual(code("[1,2,3]", limits: JSONReader.Limits(maxValues: 3)), .tooManyValues)
        XCTAssertNil(code("[1,2,3]", limits: JSONReader.Limits(maxValues: 4)))
        XCTAssertEqual(code("\"" + String(repeating: "a", count: 100) + "\"", limits: JSONReader.Limits(maxStringBytes: 64)), .tooLarge)
        XCTAssertEqual(code("[1]", limits: JSONReader.Limits(maxBytes: 2)), .tooLarge)
        XCTAssertEqual(code("1" + String(repeating: "0", count: 70)), .badNumber)
    }

    /// Random trees written by the writer read back as the same tree.
    func testSeededRoundTrip() throws {
        var rng = SeededRNG(seed: 0x15_0_11)
        func tree(_ depth: Int) -> JSON {
            switch rng.next() % (depth > 4 ? 6 : 8) {
            case 0: return .null
            case 1: return .bool(rng.next() & 1 == 1)
            case 2: return .uint(rng.next() >> (rng.next() % 64))
            case 3: return .int(-Int64(rng.next() >> 2) - 1)
            case 4: return .double(Double(Int64(bitPattern: rng.next()) >> 20) / 1024)
            case 5:
                let pool: [Unicode.Scalar] = ["a", "\"", "\\", "\n", "\u{1}", "é", "😀", "\u{7f}", "/", " "]
                return .string(String(String.UnicodeScalarView((0..<(rng.next() % 12)).map { _ in pool[Int(rng.next() % UInt64(pool.count))] })))
            case 6: return .array((0..<(rng.next() % 5)).map { _ in tree(depth + 1) })
            default:
                return .object((0..<(rng.next() % 5)).map { i in ("k\(i)", tree(depth + 1)) })
            }
        }
        for iteration in 0..<2000 {
            let t = tree(0)
            let text = t.serialized()
            XCTAssertEqual(try JSONReader.parse(Array(text.utf8)), t, "iteration \(iteration): \(text)")
        }
    }

    /// Flipped, inserted and deleted bytes in a real layout document: each result is a value or a
    /// coded refusal, never a crash or a hang.
    func testSeededMutations() {
        let doc = Array("""
            {"module": "8021q", "ko": "8021q.ko", "depends": ["mrp", "garp"], "core_text": {"base": "0xffffffffc0cf3000", "size": 16384},
             "insmod": {"rc": 0, "t0": 7.83, "msg": "\\u00e9\\n"}, "sections": [{"name": ".text", "addr": "0xffffffffc0cf3000"}]}
            """.utf8)
        XCTAssertNoThrow(try JSONReader.parse(doc))
        var rng = SeededRNG(seed: 0x15_0_12)
        let interesting: [UInt8] = Array("{}[]\",:\\-0123456789eE.tfn u".utf8) + [0x00, 0x1f, 0x80, 0xC3, 0xED, 0xFF]
        var accepted = 0, refused = 0
        for _ in 0..<20_000 {
            var m = doc
            for _ in 0..<(1 + rng.next() % 4) {
                let at = Int(rng.next() % UInt64(m.count))
                let b = rng.next() & 1 == 0 ? interesting[Int(rng.next() % UInt64(interesting.count))] : UInt8(truncatingIfNeeded: rng.next())
                switch rng.next() % 3 {
                case 0: m[at] = b
                case 1: m.insert(b, at: at)
                default: if m.count > 1 { m.remove(at: at) }
                }
            }
            do {
                let v = try JSONReader.parse(m)
                // Whatever is accepted is JSON the writer reproduces and the reader reads again identically.
                XCTAssertEqual(try JSONReader.parse(Array(v.serialized().utf8)), v)
                accepted += 1
            } catch {
                XCTAssertTrue(error.reason.hasPrefix("at byte "), error.description)
                refused += 1
            }
        }
        XCTAssertGreaterThan(accepted, 100)
        XCTAssertGreaterThan(refused, 10_000)
    }
}
