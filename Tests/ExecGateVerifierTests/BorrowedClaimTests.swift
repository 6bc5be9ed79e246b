// SPDX-License-Identifier: Apache-2.0
//
// The end-state judge hands the engine the request's executable bytes without copying them
// (`ExplainerJudge.borrowed`, `ClaimBytes`). What must hold: the engine reads the very bytes the
// request carried, a later write through any buffer sharing them cannot change what it reads
// (copy-on-write), and every verdict is the one an owned copy of the same bytes gets.
// Inputs: the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

/// The product's judge, and beside it the engine on the same claim with owned copies of the
/// bytes (as the judge made it before it borrowed them): both verdicts recorded.
private final class ComparingJudge: EndStateJudge, @unchecked Sendable {
    // @unchecked: the tests below call the verifier from one thread.
    var verdicts: [(module: String, borrowed: String, owned: String)] = []

    func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult {
        let r = ExplainerJudge().judge(elf: elf, moduleName: moduleName, request: request, session: session)
        let borrowed: String
        switch r {
        case .explained(let e): borrowed = "allowed \(e.statistics)"
        case .unexplained(let why): borrowed = "denied \(why)"
        case .invalidClaim(let why): borrowed = "invalid \(why)"
        }
        var owned = "invalid"
        if let base = request.textBase, let text = request.text {
            let claim = ModuleClaim(name: moduleName, textBase: base, text: Array(buffer: text),
                                    sections: request.sections.map { ClaimedSection(name: $0.name, address: $0.address) },
                                    percpuBase: request.perCPUBase, initTextBase: request.initBase,
                                    initText: request.initText.map { Array(buffer: $0) })
            switch Explainer(facts: session.facts).explain(elf: elf, claim: claim, resolver: session.symbolResolver).verdict {
            case .allowed(let stats): owned = "allowed \(stats)"
            case .denied(let d): owned = "denied \(d.description)"
            }
        }
        verdicts.append((moduleName, borrowed, owned))
        return r
    }
}

final class BorrowedClaimTests: XCTestCase {
    /// The claim's bytes are the request buffer's own (same address, no copy), and stay what
    /// they were when a buffer sharing the storage is written afterwards: the writer copies.
    func testTheJudgeReadsTheRequestBytesInPlace() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let name = try XCTUnwrap(boot.availableModules.first)
        let request = try boot.module(name).request(guestID: "g")
        var text = try XCTUnwrap(request.text)
        XCTAssertGreaterThan(text.readableBytes, 0)
        let at = text.withUnsafeReadableBytes { $0.baseAddress }
        let borrowed = ExplainerJudge.borrowed(text)
        XCTAssertEqual(borrowed.withUnsafeBytes { $0.baseAddress }, at, "the request's bytes, not a copy")
        XCTAssertEqual(borrowed.count, text.readableBytes)
        let before = Array(text.readableBytesView)
        XCTAssertTrue(borrowed.array == before, "the request's bytes")
        XCTAssertEqual(Array(borrowed[3..<9]), Array(before[3..<9]))
        // A write through a buffer that shares the storage (the guest's bytes cannot change under
        // the engine: only this process writes, and a write copies a shared storage first).
        let first = try XCTUnwrap(text.getInteger(at: text.readerIndex, as: UInt8.self))
        text.setInteger(~first, at: text.readerIndex)
        XCTAssertNotEqual(text.withUnsafeReadableBytes { $0.baseAddress }, at, "the writer copied the shared storage")
        XCTAssertTrue(borrowed.array == before, "the borrowed bytes did not change")
        XCTAssertEqual(borrowed[0], first)
        // The request itself still holds them too.
        XCTAssertTrue(request.text.map { Array($0.readableBytesView) } == before, "the request still holds its bytes")
    }

    /// The guarantee itself, on a buffer nothing else references: a write through the buffer
    /// copies the storage away from the claim (which alone keeps the old storage and its bytes),
    /// and the claim's bytes outlive the buffer. And a slice with a reader index inside a larger
    /// storage (what the request decoder's `readSlice` of a frame gives): the claim is exactly
    /// the readable bytes, at their address in that storage.
    func testBorrowedBytesAreKeptAndNeverWrittenUnderTheClaim() throws {
        let original: [UInt8] = (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        var buffer = ByteBuffer(bytes: original)
        let at = buffer.withUnsafeReadableBytes { $0.baseAddress }
        var claim: ClaimBytes? = ExplainerJudge.borrowed(buffer)
        XCTAssertEqual(claim?.withUnsafeBytes { $0.baseAddress }, at)
        buffer.setInteger(UInt8(0xee), at: 100)
        XCTAssertNotEqual(buffer.withUnsafeReadableBytes { $0.baseAddress }, at, "the buffer's write copied the storage the claim holds")
        XCTAssertEqual(claim?.withUnsafeBytes { $0.baseAddress }, at, "the claim still reads the old storage")
        XCTAssertTrue(claim?.array == original, "the claim's bytes are the received ones")
        // The buffer gone, the heap reused: the claim's bytes are still the received ones.
        buffer = ByteBuffer()
        var churn: [[UInt8]] = []
        for k in 0..<64 { churn.append([UInt8](repeating: UInt8(k), count: 40_000)) }
        XCTAssertTrue(claim?.array == original, "the claim's bytes are the received ones")
        XCTAssertEqual(churn.count, 64)
        claim = nil

        // A slice inside a frame: header bytes, then the text.
        var frame = ByteBuffer(bytes: [UInt8](repeating: 0xab, count: 24) + original)
        frame.moveReaderIndex(forwardBy: 24)
        let text = try XCTUnwrap(frame.readSlice(length: original.count))
        let sliced = ExplainerJudge.borrowed(text)
        XCTAssertEqual(sliced.count, original.count)
        XCTAssertTrue(sliced.array == original, "the slice's readable bytes")
        XCTAssertEqual(sliced.withUnsafeBytes { $0.baseAddress }, text.withUnsafeReadableBytes { $0.baseAddress })
        XCTAssertEqual(sliced[0], original[0])
        XCTAssertEqual(Array(sliced.suffix(3)), Array(original.suffix(3)))
    }

    /// Every verdict over the fixture boot — the honest modules in load order, then a module
    /// whose claimed bytes were changed (one byte: denied), then one whose claim is cut short —
    /// is the verdict of the same claim with owned bytes, word for word.
    func testBorrowedAndOwnedClaimsGetTheSameVerdicts() throws {
        let judge = ComparingJudge()
        let verifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()), endState: judge)
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let registration = try boot.registration(guestID: "g")
        guard case .registerGuestReply = verifier.respond(to: .registerGuest(registration), requestDigest: [1]) else { return XCTFail("registered") }
        let names = Array(boot.availableModules)
        XCTAssertGreaterThanOrEqual(names.count, 3)
        var allowed = 0
        for name in names.dropLast(2) {
            let v = verifier.authorize(try boot.module(name).request(guestID: "g"), requestDigest: [])
            if v.decision == .allow { allowed += 1 }
        }
        XCTAssertGreaterThan(allowed, 0, "honest modules are allowed")
        // One byte of the claim changed, in the middle of the region.
        var tampered = try boot.module(names[names.count - 2]).request(guestID: "g")
        var text = try XCTUnwrap(tampered.text)
        let mid = text.readerIndex + text.readableBytes / 2
        text.setInteger(~text.getInteger(at: mid, as: UInt8.self)!, at: mid)
        tampered.text = text
        XCTAssertEqual(verifier.authorize(tampered, requestDigest: []).decision, .deny)
        // The claim cut short by a page: the layout check denies it.
        var short = try boot.module(names[names.count - 1]).request(guestID: "g")
        var cut = try XCTUnwrap(short.text)
        cut.moveWriterIndex(to: cut.writerIndex - min(4096, cut.readableBytes))
        short.text = cut
        short.frames = Array(short.frames.dropLast())
        XCTAssertEqual(verifier.authorize(short, requestDigest: []).decision, .deny)
        XCTAssertEqual(judge.verdicts.count, names.count, "every request reached the judge: \(judge.verdicts.map(\.module))")
        for v in judge.verdicts { XCTAssertEqual(v.borrowed, v.owned, v.module) }
        XCTAssertTrue(judge.verdicts[judge.verdicts.count - 2].borrowed.hasPrefix("denied"), judge.verdicts[judge.verdicts.count - 2].borrowed)
    }
}
