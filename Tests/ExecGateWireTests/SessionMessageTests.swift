// SPDX-License-Identifier: Apache-2.0
//
// The guest-session additions to the wire (docs/protocol.md): each hostile encoding is refused
// with the precise error and field, next to its accepted boundary.

import ExecGateTestSupport
import ExecGateWire
import NIOCore
import XCTest

final class SessionMessageTests: XCTestCase {
    private func body(_ build: (inout TLVWriter) -> Void) -> ByteBuffer {
        var w = TLVWriter()
        build(&w)
        return w.buffer
    }

    private func assertRefused(_ type: MessageType, _ b: ByteBuffer, _ code: WireDecodeError.Code, _ field: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Message(type: type, body: b), file: file, line: line) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(code, field: field), "\(e)", file: file, line: line)
        }
    }

    func testPatchBatchBoundaries() throws {
        let entry: (inout TLVWriter, Int) -> Void = { w, n in
            w.nested(4) { $0.u64(1, 0xffff_ffff_c000_0000); $0.bytes(2, [UInt8](repeating: 0x90, count: n)) }
        }
        let ok = try Message(type: .authorizePatch, body: body { w in w.string(1, "g"); entry(&w, 16); entry(&w, 1) })
        guard case .authorizePatch(let p) = ok else { return XCTFail() }
        XCTAssertEqual(p.patches.map(\.bytes.count), [16, 1])
        assertRefused(.authorizePatch, body { w in w.string(1, "g"); entry(&w, 17); entry(&w, 1) }, .invalidValue, "authorize-patch.patch.bytes")
        assertRefused(.authorizePatch, body { w in w.string(1, "g"); entry(&w, 0); entry(&w, 1) }, .invalidValue, "authorize-patch.patch.bytes")
        // Single form and batch form together: refused, not merged.
        assertRefused(.authorizePatch, body { w in w.string(1, "g"); w.u64(2, 1); w.bytes(3, [0x90]); entry(&w, 1) }, .invalidValue, "authorize-patch.patch")
        assertRefused(.authorizePatch, body { w in w.string(1, "g") }, .missingField, "authorize-patch.address")
        // The batch cap, at and one past.
        let atCap = body { w in w.string(1, "g"); for _ in 0..<WireLimits.maximumPatchBatch { entry(&w, 2) } }
        XCTAssertNoThrow(try Message(type: .authorizePatch, body: atCap))
        assertRefused(.authorizePatch, body { w in w.string(1, "g"); for _ in 0...WireLimits.maximumPatchBatch { entry(&w, 2) } },
                      .tooManyItems, "authorize-patch.4")  // the first pass counts tag 4 against its cap
    }

    func testFramesAndInitText() {
        let base: (inout TLVWriter) -> Void = { w in w.bytes(2, [0x7f]); w.u64(6, 0xffff_ffff_c000_0000); w.bytes(7, [UInt8](repeating: 0, count: 4096)) }
        assertRefused(.authorizeModule, body { w in base(&w); w.bytes(8, [UInt8](repeating: 1, count: 12)) }, .invalidValue, "authorize-module.frames")
        assertRefused(.authorizeModule, body { w in base(&w); w.u64(9, 0xffff_ffff_c100_0000) }, .missingField, "authorize-module.init_text")
        assertRefused(.authorizeModule, body { w in base(&w); w.bytes(10, [0xc3]) }, .missingField, "authorize-module.init_base")
        XCTAssertNoThrow(try Message(type: .authorizeModule, body: body { w in base(&w); w.bytes(8, [0, 0, 0, 0, 0, 0, 0x12, 0x34]) }))
    }

    func testRegisterGuestAdditions() throws {
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(3, [UInt8](repeating: 0, count: 31)) }, .invalidValue, "register-guest.kernel_digest")
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.u8(14, 2) }, .invalidValue, "register-guest.reset")
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.nested(15) { $0.u64(1, 0x10) } }, .missingField, "register-guest.static_call_key.current")
        assertRefused(.registerGuest, body { w in
            w.string(1, "g")
            w.nested(15) { n in n.u64(1, 0x10); n.u64(2, 0); for t in 0...UInt64(WireLimits.maximumStaticCallTargetsPerKey) { n.u64(3, t) } }
        }, .tooManyItems, "register-guest.static_call_key.3")
        // Symbol flags: bit 1 is STT_FUNC, bit 2 is unknown.
        func record(_ flags: UInt8) -> [UInt8] { [0xff, 0xff, 0xff, 0xff, 0x81, 0, 0, 0, UInt8(ascii: "T"), flags, 0, 1, UInt8(ascii: "f")] }
        guard case .registerGuest(let r) = try Message(type: .registerGuest, body: body { w in w.string(1, "g"); w.bytes(6, record(3)) }) else { return XCTFail() }
        XCTAssertEqual(r.symbols.first?.isFunction, true)
        XCTAssertEqual(r.symbols.first?.exported, true)
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(6, record(4)) }, .invalidValue, "register-guest.symbols")
    }

    /// Registration by digest (tag 0x8010, critical): 32 bytes, never beside symbol records, and
    /// refused by a receiver that does not know it (so an older server cannot register the guest
    /// with no symbols).
    func testRegisterGuestByDigest() throws {
        let digest = [UInt8](repeating: 0x5d, count: 32)
        guard case .registerGuest(let r) = try Message(type: .registerGuest, body: body { w in w.string(1, "g"); w.bytes(0x8010, digest) }) else { return XCTFail() }
        XCTAssertEqual(r.symbolsDigest, digest)
        XCTAssertTrue(r.isByDigest && r.symbols.isEmpty)
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(0x8010, Array(digest.prefix(31))) }, .invalidValue, "register-guest.symbols_digest")
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(0x8010, []) }, .invalidValue, "register-guest.symbols_digest")
        let record: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0x81, 0, 0, 0, UInt8(ascii: "T"), 1, 0, 1, UInt8(ascii: "f")]
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(6, record); w.bytes(0x8010, digest) }, .invalidValue, "register-guest.symbols_digest")
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(6, []); w.bytes(0x8010, digest) }, .invalidValue, "register-guest.symbols_digest")
        assertRefused(.registerGuest, body { w in w.string(1, "g"); w.bytes(0x8010, digest); w.bytes(0x8010, digest) }, .duplicateField, "register-guest.32784")
        // What a receiver of the earlier protocol (tags 1–15 only) does with it.
        let byDigest = Message.registerGuest(RegisterGuest(guestID: "g").byDigest(digest)).encodeBody()
        XCTAssertThrowsError(try TLVReader(byDigest, message: "register-guest", known: Set(1...15))) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .unknownCriticalField, "\(e)")
        }
        XCTAssertEqual(WireErrorCode.unknownBuild.rawValue, 15)
        XCTAssertEqual("\(WireErrorCode.unknownBuild)", "unknown-build")
    }

    func testRetireAndInitFreedNeedEveryField() {
        assertRefused(.retireModule, body { w in w.string(1, "g"); w.string(2, "m") }, .missingField, "retire-module.text_base")
        assertRefused(.retireModule, body { w in w.string(1, "g"); w.u64(3, 0) }, .missingField, "retire-module.module_name")
        assertRefused(.moduleInitFreed, body { w in w.string(1, "g") }, .missingField, "module-init-freed.module_name")
        XCTAssertEqual(MessageType.retireModule.description, "retire-module")
        XCTAssertEqual(MessageType.moduleInitFreedReply.rawValue, 0x8007)
        XCTAssertFalse(MessageType.retireModuleReply.isRequest)
    }

    /// Seeded: random and structurally valid bodies for the session messages (and the messages
    /// that grew session fields) decode canonically or fail with a typed error.
    func testRandomSessionBodiesDecodeCanonicallyOrFailTyped() {
        var rng = SeededRNG(seed: 0x5E55_10AB)
        let types: [MessageType] = [.registerGuest, .registerGuestReply, .authorizeModule, .authorizePatch, .verdict,
                                    .retireModule, .retireModuleReply, .moduleInitFreed, .moduleInitFreedReply]
        var accepted = 0, rejected = 0
        for _ in 0..<6000 {
            var bytes: [UInt8] = []
            var tag: UInt16 = 0
            for _ in 0..<Int.random(in: 1..<7, using: &rng) {
                tag += UInt16.random(in: 0...4, using: &rng)
                let len = [0, 1, 2, 4, 8, 8, 8, 16, 32].randomElement(using: &rng)!
                bytes += [UInt8(tag >> 8), UInt8(tag & 0xff), 0, 0, 0, UInt8(len)]
                bytes += (0..<len).map { _ in Bool.random(using: &rng) ? UInt8(ascii: "a") : UInt8.random(in: 0...255, using: &rng) }
            }
            let type = types.randomElement(using: &rng)!
            do {
                let m = try Message(type: type, body: ByteBuffer(bytes: bytes))
                XCTAssertEqual(try Message(type: type, body: m.encodeBody()), m, "round trip of an accepted \(type) body \(bytes)")
                accepted += 1
            } catch is WireDecodeError {
                rejected += 1
            } catch {
                XCTFail("untyped error \(error) for \(type) body \(bytes)")
            }
        }
        XCTAssertGreaterThan(accepted, 30, "the generator must reach the accepting paths too")
        XCTAssertGreaterThan(rejected, 1000)
    }
}
