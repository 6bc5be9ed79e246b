// SPDX-License-Identifier: Apache-2.0
import ExecGateWire
import NIOCore
import NIOEmbedded
import ExecGateTestSupport
import XCTest

final class FrameDecoderTests: XCTestCase {
    private func frameBytes(_ m: Message, id: UInt64 = 9) -> [UInt8] {
        var b = ByteBuffer()
        b.writeFrame(m.frame(requestID: id))
        return Array(buffer: b)
    }

    func testDecodesFramesFedByteByByteAndMerged() throws {
        let one = frameBytes(.status, id: 1) + frameBytes(.hello(Hello(clientName: "x")), id: 2)
        // Byte by byte through a real pipeline.
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        for byte in one { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        var ids: [UInt64] = []
        while let f: InboundFrame = try channel.readInbound() {
            guard case .frame(let frame) = f else { return XCTFail("refused") }
            ids.append(frame.requestID)
        }
        XCTAssertEqual(ids, [1, 2])
        XCTAssertTrue(try channel.finish().isClean)
        // Merged in one buffer.
        var decoder = FrameDecoder()
        var merged = ByteBuffer(bytes: one)
        guard case .frame(let a)? = try decoder.decodeOne(&merged), case .frame(let b)? = try decoder.decodeOne(&merged) else {
            return XCTFail("two frames expected")
        }
        XCTAssertEqual([a.type, b.type], [.status, .hello])
        XCTAssertNil(try decoder.decodeOne(&merged))
    }

    /// A body of `collectedBodyThreshold` bytes or more is taken into its own buffer as it arrives:
    /// fed in uneven chunks, merged with the next frame, it comes out byte for byte, the decoder
    /// reports it as awaited until it is complete, and the reader index never runs past it.
    func testLargeBodyIsCollectedIntoItsOwnBufferAcrossChunks() throws {
        let length = FrameDecoder.collectedBodyThreshold + 12_345
        var rng = SeededRNG(seed: 0x5ca1e)
        let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
        var wire = ByteBuffer()
        wire.writeFrame(Frame(type: .authorizeModule, requestID: 7, body: ByteBuffer(bytes: payload)))
        wire.writeFrame(Message.status.frame(requestID: 8))
        let bytes = Array(buffer: wire)
        var admitted: [Int] = []
        var decoder = FrameDecoder()
        // Never admitted ahead of the bytes received: each ask is checked against what the
        // decoder has been given of the body so far.
        var received = 0
        decoder.admitBody = { n, bodyLength in
            if bodyLength == length { XCTAssertLessThanOrEqual(admitted.reduce(0, +) + n, received, "admitted bytes not yet received") }
            admitted.append(n)
            return nil
        }
        var got: [Frame] = []
        var offset = 0
        var cumulation = ByteBuffer()
        var sizes = [1, 19, 4096, 65_536, 3, 100_000]
        while offset < bytes.count {
            let n = min(sizes.removeFirst(), bytes.count - offset)
            sizes.append(n == 0 ? 1 : n)
            cumulation.writeBytes(bytes[offset..<offset + n])
            offset += n
            received = max(0, min(offset, WireLimits.headerSize + length) - WireLimits.headerSize)
            while let f = try decoder.decodeOne(&cumulation) {
                guard case .frame(let frame) = f else { return XCTFail("refused") }
                got.append(frame)
            }
            if got.isEmpty && offset > WireLimits.headerSize { XCTAssertEqual(decoder.awaitingBodyLength, length) }
        }
        // The header's check (0), the body chunk by chunk, then the status frame's header check.
        XCTAssertEqual(admitted.first, 0)
        XCTAssertEqual(admitted.last, 0)
        XCTAssertEqual(admitted.reduce(0, +), length)
        XCTAssertGreaterThan(admitted.count, 3, "admitted at once, not as the chunks came")
        XCTAssertEqual(got.map(\.requestID), [7, 8])
        XCTAssertEqual(Array(buffer: got[0].body), payload)
        XCTAssertLessThan(got[0].body.capacity, 2 * length, "the body's buffer grows with its bytes, never to twice its length (NIO rounds a growth to a power of two)")
        XCTAssertNil(decoder.awaitingBodyLength)
        XCTAssertTrue(decoder.isBetweenFrames)
        XCTAssertEqual(cumulation.readableBytes, 0)
    }

    func testMaximumAllowedBodyLengthIsAccepted() throws {
        var decoder = FrameDecoder(maximumBodySize: 16)
        var b = ByteBuffer()
        b.writeFrame(Frame(type: .status, requestID: 3, body: ByteBuffer(bytes: [UInt8](repeating: 0, count: 16))))
        guard case .frame(let f)? = try decoder.decodeOne(&b) else { return XCTFail("should accept 16 bytes") }
        XCTAssertEqual(f.body.readableBytes, 16)
    }

    func testForbidsOversizedBodyWithoutBufferingAndStaysUsable() throws {
        var decoder = FrameDecoder(maximumBodySize: 16)
        var b = ByteBuffer()
        b.writeFrame(Frame(type: .authorizeModule, requestID: 4, body: ByteBuffer(bytes: [UInt8](repeating: 7, count: 17))))
        // Only the header arrives first: the refusal is immediate, before the body exists.
        var header = b.readSlice(length: WireLimits.headerSize)!
        guard case .refused(let id, _, let code, _)? = try decoder.decodeOne(&header) else { return XCTFail("should refuse") }
        XCTAssertEqual(id, 4)
        XCTAssertEqual(code, .frameTooLarge)
        // The body is discarded as it comes; the next frame decodes normally.
        b.writeFrame(Message.status.frame(requestID: 5))
        guard case .frame(let next)? = try decoder.decodeOne(&b) else { return XCTFail("next frame lost") }
        XCTAssertEqual(next.requestID, 5)
    }

    func testForbidsMaliciousFourGigabyteLength() throws {
        var decoder = FrameDecoder()
        var b = ByteBuffer()
        b.writeInteger(WireLimits.magic); b.writeInteger(UInt16(1)); b.writeInteger(UInt16(3)); b.writeInteger(UInt64(8)); b.writeInteger(UInt32.max)
        guard case .refused(_, _, let code, _)? = try decoder.decodeOne(&b) else { return XCTFail("should refuse") }
        XCTAssertEqual(code, .frameTooLarge)
    }

    func testForbidsBadMagicAndDropsTheRest() throws {
        var decoder = FrameDecoder()
        var b = ByteBuffer(bytes: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        guard case .refused(_, _, let code, let message)? = try decoder.decodeOne(&b) else { return XCTFail("should refuse") }
        XCTAssertEqual(code, .badMagic)
        XCTAssertTrue(message.contains("EXGT"), message)
        b.writeBytes(frameBytes(.status))
        XCTAssertNil(try decoder.decodeOne(&b), "after bad magic nothing is trusted")
    }

    func testPartialHeaderNeedsMoreDataWithoutConsuming() throws {
        var decoder = FrameDecoder()
        var b = ByteBuffer(bytes: Array(frameBytes(.status).prefix(19)))
        XCTAssertNil(try decoder.decodeOne(&b))
        XCTAssertEqual(b.readableBytes, 19)
    }
}

final class MessageDecodingTests: XCTestCase {
    func testForbidsTruncatedFieldHeader() {
        XCTAssertThrowsError(try Message(type: .hello, body: ByteBuffer(bytes: [0, 1, 0]))) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .truncatedField)
        }
    }

    func testForbidsFieldLengthBeyondBody() {
        XCTAssertThrowsError(try Message(type: .hello, body: ByteBuffer(bytes: [0, 1, 0, 0, 0, 9, 0, 1]))) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .fieldLengthExceedsBody)
        }
    }

    func testForbidsWrongIntegerWidth() {
        var w = TLVWriter()
        w.u32(1, 1)  // min_version must be a u16
        w.u16(2, 1)
        XCTAssertThrowsError(try Message(type: .hello, body: w.buffer)) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(.badIntegerWidth, field: "hello.min_version"))
        }
    }

    func testForbidsDuplicateSingularField() {
        var w = TLVWriter()
        w.u16(1, 1); w.u16(1, 1); w.u16(2, 1)
        XCTAssertThrowsError(try Message(type: .hello, body: w.buffer)) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .duplicateField)
        }
    }

    func testForbidsMissingRequiredField() {
        var w = TLVWriter()
        w.string(1, "guest")
        XCTAssertThrowsError(try Message(type: .authorizeModule, body: w.buffer)) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(.missingField, field: "authorize-module.module"))
        }
    }

    func testForbidsInvalidUTF8() {
        var w = TLVWriter()
        w.u16(1, 1); w.u16(2, 1); w.bytes(3, [0xff, 0xfe])
        XCTAssertThrowsError(try Message(type: .hello, body: w.buffer)) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .invalidUTF8)
        }
    }

    func testSkipsUnknownNonCriticalFieldButForbidsUnknownCritical() throws {
        var w = TLVWriter()
        w.u16(1, 1); w.u16(2, 1); w.string(0x0042, "from a newer peer")
        XCTAssertEqual(try Message(type: .hello, body: w.buffer), .hello(Hello(clientName: "")))
        var c = TLVWriter()
        c.u16(1, 1); c.u16(2, 1); c.string(0x8042, "must understand")
        XCTAssertThrowsError(try Message(type: .hello, body: c.buffer)) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .unknownCriticalField)
        }
    }

    func testForbidsTruncatedSymbolRecord() {
        var packed = ByteBuffer()
        packed.writeInteger(UInt64(1)); packed.writeInteger(UInt8(ascii: "T")); packed.writeInteger(UInt8(1)); packed.writeInteger(UInt16(10)); packed.writeString("abc")
        var w = TLVWriter()
        w.string(1, "g"); w.bytes(6, packed)
        XCTAssertThrowsError(try Message(type: .registerGuest, body: w.buffer)) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .truncatedField)
        }
    }

    func testUnknownMessageTypeIsRepresentable() {
        XCTAssertThrowsError(try Message(type: MessageType(rawValue: 0x0077), body: ByteBuffer())) { e in
            XCTAssertEqual((e as? UnknownMessageType)?.type.rawValue, 0x0077)
        }
    }

    /// Seeded random bodies, half of them built from valid TLV records with random tags and lengths:
    /// every decoder either throws a typed `WireDecodeError` or decodes to a message whose canonical
    /// re-encoding decodes to the same message (decode ∘ encode is the identity on what was accepted).
    func testRandomBodiesDecodeCanonicallyOrFailTyped() {
        var rng = SeededRNG(seed: 0x0E_5EED_F12A)
        let types: [MessageType] = [.hello, .helloReply, .registerGuest, .registerGuestReply, .authorizeModule, .verdict, .status, .statusReply, .error]
        var accepted = 0, rejected = 0
        for i in 0..<5000 {
            var bytes: [UInt8] = []
            if i % 2 == 0 {
                let n = Int.random(in: 0..<64, using: &rng)
                bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                // Structurally valid records: u16 tag (small, sometimes critical), u32 length, value.
                var tag: UInt16 = 0
                for _ in 0..<Int.random(in: 0..<6, using: &rng) {
                    tag += UInt16.random(in: 0...3, using: &rng)
                    let t = Bool.random(using: &rng) ? tag : tag | 0x8000
                    let len = Int.random(in: 0..<10, using: &rng)
                    bytes += [UInt8(t >> 8), UInt8(t & 0xff), 0, 0, 0, UInt8(len)]
                    bytes += (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
            }
            let type = types.randomElement(using: &rng)!
            do {
                let m = try Message(type: type, body: ByteBuffer(bytes: bytes))
                let again = try Message(type: type, body: m.encodeBody())
                XCTAssertEqual(again, m, "round trip of an accepted \(type) body \(bytes)")
                accepted += 1
            } catch is WireDecodeError {
                rejected += 1
            } catch {
                XCTFail("untyped error \(error) for \(type) body \(bytes)")
            }
        }
        XCTAssertGreaterThan(accepted, 50, "the generator must reach the accepting paths too")
        XCTAssertGreaterThan(rejected, 1000)
    }
}
