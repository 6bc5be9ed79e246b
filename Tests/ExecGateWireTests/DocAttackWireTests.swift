// SPDX-License-Identifier: Apache-2.0
//
// Attacks written from docs/protocol.md alone ("Body encoding: TLV fields": a body that does not
// decode is `malformed-body` with a message naming the field): the refusal must say precisely
// what is wrong with the bytes, since the VMM author debugs from it.

import ExecGateWire
import NIOCore
import XCTest

final class DocAttackWireTests: XCTestCase {
    /// HOLE (round docattack): a body ending in 2–5 bytes (a tag and part of a length) was refused
    /// `truncated-field` with "0 stray bytes" for 2 bytes: the count was taken after the tag had
    /// been consumed. The stray bytes counted are the ones after the last whole field.
    func testStrayBytesAreCountedBeforeTheTagIsConsumed() {
        for stray in 1...5 {
            let body = ByteBuffer(bytes: [0, 1, 0, 0, 0, 2, 0, 1] + Array(repeating: 0xAB, count: stray))
            XCTAssertThrowsError(try TLVReader(body, message: "status", known: [1])) { e in
                guard let e = e as? WireDecodeError else { return XCTFail("\(e)") }
                XCTAssertEqual(e.code, .truncatedField)
                XCTAssertEqual(e.detail, "\(stray) stray bytes at end of body", "\(e)")
            }
        }
    }

    /// Failed attacks kept: the decoding rules protocol.md states, as a tester reads them.
    func testDocumentedBodyRulesHold() {
        func refused(_ bytes: [UInt8], _ known: Set<UInt16>, _ code: WireDecodeError.Code, line: UInt = #line) {
            XCTAssertThrowsError(try TLVReader(ByteBuffer(bytes: bytes), message: "m", known: known)) { e in
                XCTAssertEqual((e as? WireDecodeError)?.code, code, "\(e)", line: line)
            }
        }
        func field(_ tag: UInt16, _ v: [UInt8]) -> [UInt8] {
            [UInt8(tag >> 8), UInt8(tag & 0xff)] + withUnsafeBytes(of: UInt32(v.count).bigEndian, Array.init) + v
        }
        refused(field(1, [1]) + field(1, [1]), [1], .duplicateField)             // singular twice
        refused(field(0x8005, []), [1], .unknownCriticalField)                   // critical unknown
        refused((0..<257).flatMap { field(0x100 + UInt16($0), []) }, [1], .tooManyItems)  // > 256 unknown
        XCTAssertNoThrow(try TLVReader(ByteBuffer(bytes: (0..<256).flatMap { field(0x100 + UInt16($0), []) }), message: "m", known: [1]))
        refused([0, 1, 0, 0, 0, 9, 1], [1], .fieldLengthExceedsBody)            // length past the body
        refused([0, 1, 0xff, 0xff, 0xff, 0xff], [1], .fieldLengthExceedsBody)   // 4 GiB length, no allocation
    }
}
