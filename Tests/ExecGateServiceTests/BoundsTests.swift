// SPDX-License-Identifier: Apache-2.0
//
// The named bounds, each against its boundary: the maximum body against the largest real module
// and its claim, the TLV first pass against bodies of duplicate and repeated fields, the shared
// buffer budget, and the decoder's refusal of a body the budget cannot hold.

import ExecGateService
import ExecGateTransport
import ExecGateTestSupport
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class BoundsTests: XCTestCase {
    /// The default maximum body holds Debian 6.1's largest module with its heaviest legal claim
    /// (section bytes and the whole executable region at once), and not much more.
    func testMaximumBodyFitsTheLargestRealModuleAndItsClaim() throws {
        let path = try Fixtures.module(named: "amdgpu.ko")
        let bytes = try Fixtures.readFile(path)
        let sections = try bytes.withUnsafeBytes { try ExecGateELFFixture.sections($0) }
        let exec = sections.filter { $0.exec && !$0.name.hasPrefix(".init") }
        let regionSize = (exec.reduce(0) { $0 + $1.size } + 4095) / 4096 * 4096
        var claims: [SectionClaim] = []
        for (i, s) in sections.enumerated() {
            let b = s.exec ? ByteBuffer(bytes: bytes[s.range]) : nil
            claims.append(SectionClaim(name: s.name, address: 0xffff_ffff_c000_0000 + UInt64(i) << 24, bytes: b))
        }
        let request = AuthorizeModule(guestID: "guest-with-a-long-identifier-0123456789", module: ByteBuffer(bytes: bytes), sections: claims,
                                      perCPUBase: 0x1000, moduleName: "amdgpu", textBase: 0xffff_ffff_c000_0000,
                                      text: ByteBuffer(repeating: 0xcc, count: regionSize))
        let body = Message.authorizeModule(request).encodeBody().readableBytes
        XCTAssertLessThanOrEqual(body, WireLimits.defaultMaximumBodySize, "amdgpu.ko and its claim must fit")
        // Sized to it, not more: less than 1 MiB of slack.
        XCTAssertLessThan(WireLimits.defaultMaximumBodySize - body, 1 << 20, "\(body) bytes")
    }

    /// A maximum-size body of empty duplicate fields fails at the second field, before the
    /// field list grows (it used to cost +1.56 GB for 64 MiB).
    func testForbidsDuplicateSingularFieldInTheFirstPass() throws {
        let body = ByteBuffer(bytes: emptyFields(tag: 1, totalBytes: WireLimits.defaultMaximumBodySize))
        let before = residentBytes()
        let t0 = DispatchTime.now().uptimeNanoseconds
        XCTAssertThrowsError(try Message(type: .authorizeModule, body: body)) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(.duplicateField, field: "authorize-module.1"))
        }
        let ms = (DispatchTime.now().uptimeNanoseconds - t0) / 1_000_000
        XCTAssertLessThan(ms, 100, "stopped at the second field")
        XCTAssertLessThan(residentBytes() - before, 8 << 20)
    }

    /// Unknown non-critical fields are skipped without being stored, and at most 256 of them:
    /// a body of them costs no memory beyond the body and stops at the 257th.
    func testUnknownFieldsAreCappedAndCostNoMemory() throws {
        let body = ByteBuffer(bytes: emptyFields(tag: 0x0042, totalBytes: WireLimits.defaultMaximumBodySize))
        let before = residentBytes()
        XCTAssertThrowsError(try Message(type: .authorizeModule, body: body)) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(.tooManyItems, field: "authorize-module"))
        }
        XCTAssertLessThan(residentBytes() - before, 8 << 20)
        // The boundary: 256 unknown fields beside a module are skipped.
        var w = TLVWriter()
        for _ in 0..<WireLimits.maximumUnknownFields { w.bytes(0x0042, []) }
        w.bytes(2, [1, 2, 3])
        guard case .authorizeModule(let m) = try Message(type: .authorizeModule, body: w.buffer) else { return XCTFail("not decoded") }
        XCTAssertEqual(m.module.readableBytes, 3)
    }

    /// A repeated field is capped in the first pass: 1024 section claims pass, 1025 fail.
    func testRepeatedFieldCapBoundary() throws {
        func body(sections n: Int) -> ByteBuffer {
            var w = TLVWriter()
            w.bytes(2, [0x7f, 0x45, 0x4c, 0x46])
            for _ in 0..<n { w.bytes(3, []) }
            return w.buffer
        }
        XCTAssertThrowsError(try Message(type: .authorizeModule, body: body(sections: WireLimits.maximumSectionClaims))) { e in
            // Within the cap: the first pass passes, the empty section fails its own decode.
            XCTAssertEqual((e as? WireDecodeError)?.code, .missingField)
        }
        XCTAssertThrowsError(try Message(type: .authorizeModule, body: body(sections: WireLimits.maximumSectionClaims + 1))) { e in
            XCTAssertEqual(e as? WireDecodeError, WireDecodeError(.tooManyItems, field: "authorize-module.3"))
        }
        var checks = TLVWriter()
        checks.u8(1, 1); checks.u16(2, 0)
        for _ in 0...WireLimits.maximumVerdictChecks { checks.string(5, "x") }
        XCTAssertThrowsError(try Message(type: .verdict, body: checks.buffer)) { e in
            XCTAssertEqual((e as? WireDecodeError)?.code, .tooManyItems)
        }
    }

    /// The budget admits one large body at a time; small frames keep their reserve.
    func testBufferBudgetKeepsOneLargeBodyAndTheSmallReserve() {
        let large = 28 << 20
        let budget = BufferBudget(total: large + (8 << 20), smallFrameSize: 1 << 20, smallReserve: 8 << 20)
        XCTAssertNil(budget.reserve(large))
        XCTAssertNotNil(budget.reserve(2 << 20), "a second large body is refused")
        for _ in 0..<8 { XCTAssertNil(budget.reserve(1 << 20)) }
        XCTAssertNotNil(budget.reserve(1), "the reserve is used up")
        budget.release(large)
        XCTAssertNil(budget.reserve(2 << 20))
        XCTAssertEqual(budget.inUse, 10 << 20)
        XCTAssertEqual(budget.refusals, 2)
    }

    /// The decoder asks the budget at the header and discards a refused body unbuffered; the
    /// connection stays usable and the next frame decodes.
    func testDecoderRefusesWhatTheBudgetCannotHoldAndStaysUsable() throws {
        let budget = BufferBudget(total: 1000, smallFrameSize: 100, smallReserve: 100)
        var decoder = FrameDecoder(maximumBodySize: 10_000)
        decoder.admitBody = { n, length in n == 0 ? budget.check(length) : budget.reserve(n, ofBody: length) }
        var buffer = ByteBuffer()
        buffer.writeFrame(Frame(type: .authorizeModule, requestID: 7, body: ByteBuffer(repeating: 1, count: 950)))
        buffer.writeFrame(Frame(type: .status, requestID: 8, body: ByteBuffer()))
        guard case .refused(7, _, .unavailable, let message) = try decoder.decodeOne(&buffer) else { return XCTFail("not refused") }
        XCTAssertTrue(message.contains("budget of 900"), message)
        guard case .frame(let f) = try decoder.decodeOne(&buffer) else { return XCTFail("no frame") }
        XCTAssertEqual(f.requestID, 8)
        XCTAssertEqual(budget.inUse, 0)
        XCTAssertTrue(decoder.isBetweenFrames)
    }

    /// A body is reserved chunk by chunk as it arrives, never ahead of its bytes: a header alone
    /// holds nothing. A chunk that does not fit refuses the frame `unavailable` mid-body: what it
    /// held is given back at once, the rest of its body is discarded unbuffered, and the next frame
    /// on the connection decodes. A frame's class is its declared length for every chunk: chunks of
    /// a large body never take the small frames' reserve.
    func testBodyIsReservedAsItArrivesAndRefusedMidBodyWhenTheBudgetFills() throws {
        let budget = BufferBudget(total: 1000, smallFrameSize: 100, smallReserve: 100)
        var decoder = FrameDecoder(maximumBodySize: 10_000)
        decoder.admitBody = { n, length in n == 0 ? budget.check(length) : budget.reserve(n, ofBody: length) }
        decoder.releaseBody = { n, length in budget.release(n, ofBody: length) }
        var wire = ByteBuffer()
        wire.writeFrame(Frame(type: .authorizeModule, requestID: 7, body: ByteBuffer(repeating: 1, count: 800)))
        wire.writeFrame(Frame(type: .status, requestID: 8, body: ByteBuffer(repeating: 2, count: 50)))
        var buffer = ByteBuffer()
        // The header alone: admitted, nothing held.
        buffer.writeBytes(wire.readBytes(length: WireLimits.headerSize)!)
        XCTAssertNil(try decoder.decodeOne(&buffer))
        XCTAssertEqual(budget.inUse, 0, "a header reserved its declared body")
        XCTAssertEqual(decoder.awaitingBodyLength, 800)
        // 300 bytes of it: 300 held.
        buffer.writeBytes(wire.readBytes(length: 300)!)
        XCTAssertNil(try decoder.decodeOne(&buffer))
        XCTAssertEqual(budget.inUse, 300)
        XCTAssertEqual(decoder.admittedBodyBytes, 300)
        // Another peer takes 550 of the large class (limit 900): the next 400 bytes do not fit.
        XCTAssertNil(budget.reserve(550, ofBody: 550))
        XCTAssertNotNil(budget.check(800), "the header check counts what is held")
        buffer.writeBytes(wire.readBytes(length: 400)!)
        guard case .refused(7, _, .unavailable, let message) = try decoder.decodeOne(&buffer) else { return XCTFail("not refused mid-body") }
        XCTAssertTrue(message.contains("400 more bytes of a body of 800 bytes"), message)
        XCTAssertEqual(budget.inUse, 550, "the refused frame's 300 bytes were not given back")
        XCTAssertEqual(decoder.admittedBodyBytes, 0)
        XCTAssertEqual(buffer.readableBytes, 0, "the refused chunk is kept")
        // The last 100 body bytes are discarded, then the small frame decodes (the reserve is its).
        buffer.writeBytes(wire.readBytes(length: wire.readableBytes)!)
        guard case .frame(let f) = try decoder.decodeOne(&buffer) else { return XCTFail("no frame after the refused one") }
        XCTAssertEqual(f.requestID, 8)
        XCTAssertEqual(f.body.readableBytes, 50)
        XCTAssertEqual(budget.inUse, 600)
        budget.release(50)
        budget.release(550)
        XCTAssertEqual(budget.inUse, 0)
        XCTAssertTrue(decoder.isBetweenFrames)
    }

    /// The same for a body collected into its own buffer (≥ `collectedBodyThreshold`): its chunks
    /// are reserved as they are copied in, and a refused chunk drops the buffer and what it held.
    func testCollectedBodyIsRefusedMidBodyAndGivesBackWhatItHeld() throws {
        let budget = BufferBudget(total: 300_000, smallFrameSize: 100, smallReserve: 0)
        var decoder = FrameDecoder(maximumBodySize: 1 << 20)
        decoder.admitBody = { n, length in n == 0 ? budget.check(length) : budget.reserve(n, ofBody: length) }
        decoder.releaseBody = { n, length in budget.release(n, ofBody: length) }
        let length = 200_000
        XCTAssertGreaterThan(length, FrameDecoder.collectedBodyThreshold)
        var wire = ByteBuffer()
        wire.writeFrame(Frame(type: .authorizeModule, requestID: 9, body: ByteBuffer(repeating: 3, count: length)))
        wire.writeFrame(Frame(type: .status, requestID: 10, body: ByteBuffer()))
        var buffer = ByteBuffer()
        buffer.writeBytes(wire.readBytes(length: WireLimits.headerSize + 100_000)!)
        XCTAssertNil(try decoder.decodeOne(&buffer))
        XCTAssertEqual(budget.inUse, 100_000)
        XCTAssertEqual(buffer.readableBytes, 0, "the chunk was not collected into the body's buffer")
        XCTAssertNil(budget.reserve(150_000, ofBody: 150_000))
        buffer.writeBytes(wire.readBytes(length: 60_000)!)
        guard case .refused(9, _, .unavailable, let message) = try decoder.decodeOne(&buffer) else { return XCTFail("not refused mid-body") }
        XCTAssertTrue(message.contains("60000 more bytes of a body of 200000 bytes"), message)
        XCTAssertEqual(budget.inUse, 150_000, "the refused frame's bytes were not given back")
        buffer.writeBytes(wire.readBytes(length: wire.readableBytes)!)
        guard case .frame(let f) = try decoder.decodeOne(&buffer) else { return XCTFail("no frame after the refused one") }
        XCTAssertEqual(f.requestID, 10)
        XCTAssertTrue(decoder.isBetweenFrames)
        budget.release(150_000)
        XCTAssertEqual(budget.inUse, 0)
    }

    func residentBytes() -> Int {
        // statm's second field: resident pages.
        guard let f = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(f) }
        var size = 0, resident = 0
        withUnsafeMutablePointer(to: &size) { s in withUnsafeMutablePointer(to: &resident) { r in _ = withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) } } }
        return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// A body of empty TLV fields `{tag, length 0}`, as many as fit in `totalBytes`.
func emptyFields(tag: UInt16, totalBytes: Int) -> [UInt8] {
    let n = totalBytes / 6
    var out = [UInt8](repeating: 0, count: n * 6)
    out.withUnsafeMutableBufferPointer { p in
        var i = 0
        while i < n * 6 {
            p[i] = UInt8(tag >> 8); p[i + 1] = UInt8(tag & 0xff)  // the length bytes stay zero
            i += 6
        }
    }
    return out
}
