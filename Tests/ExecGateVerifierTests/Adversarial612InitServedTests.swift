// SPDX-License-Identifier: Apache-2.0
//
// Adversarial round on the served path of 6.12 init text (authorize-module with init_base,
// init_text, init_frames): failed attacks kept. The VMM grants EXEC on exactly the frames a
// verdict echoes, so the frames of one request are checked before any byte is judged
// (Verifier.checkFrames).

import ExecGateWire
@testable import ExecGateVerifier
import NIOCore
import XCTest

final class Adversarial612InitServedTests: XCTestCase {
    static func request(text: Int, frames: [UInt64], initBase: UInt64?, initText: Int?, initFrames: [UInt64]) -> AuthorizeModule {
        AuthorizeModule(module: ByteBuffer(), moduleName: "m", textBase: 0xffff_ffff_c100_0000,
                        text: ByteBuffer(repeating: 0xcc, count: text), frames: frames, initBase: initBase,
                        initText: initText.map { ByteBuffer(repeating: 0xcc, count: $0) }, initFrames: initFrames)
    }

    /// Attack: one guest-physical frame named for a core page and an init page (so the init
    /// bytes, judged at the init address, would be the frame the core's bytes were judged in, or
    /// the reverse). Refused: one frame holds one verified page.
    func testInitFrameReusingACoreFrameIsRefused() {
        let r = Self.request(text: 0x2000, frames: [0x100, 0x101], initBase: 0xffff_ffff_c500_0000, initText: 0x1000, initFrames: [0x101])
        guard case .failure(let d) = Verifier.checkFrames(r, textBytes: 0x2000) else { return XCTFail("init frame = core frame accepted") }
        XCTAssertEqual(d.reason, .claimFramesInvalid, d.message)
        // Two init pages on one frame likewise.
        let r2 = Self.request(text: 0x1000, frames: [0x100], initBase: 0xffff_ffff_c500_0000, initText: 0x2000, initFrames: [0x200, 0x200])
        guard case .failure(let d2) = Verifier.checkFrames(r2, textBytes: 0x1000) else { return XCTFail("one frame for two init pages accepted") }
        XCTAssertEqual(d2.reason, .claimFramesInvalid, d2.message)
    }

    /// Attack: an init region that is not a page-aligned range (a misaligned base, one wrapping
    /// the address space) or fewer/more init frames than its pages: refused before judging.
    func testMisplacedInitRegionOrFramesAreRefused() {
        for (ib, n, frames) in [(UInt64(0xffff_ffff_c500_0010), 0x1000, [UInt64(0x200)]),
                                (0xffff_ffff_ffff_f000, 0x2000, [0x200, 0x201]),
                                (0xffff_ffff_c500_0000, 0x2000, [0x200]),
                                (0xffff_ffff_c500_0000, 0x1000, [0x200, 0x201])] {
            let r = Self.request(text: 0x1000, frames: [0x100], initBase: ib, initText: n, initFrames: frames)
            guard case .failure = Verifier.checkFrames(r, textBytes: 0x1000) else {
                return XCTFail("init region 0x\(String(ib, radix: 16)) +\(n) with \(frames.count) frame(s) accepted")
            }
        }
        // The honest shape passes this stage.
        let ok = Self.request(text: 0x1000, frames: [0x100], initBase: 0xffff_ffff_c500_0000, initText: 0x2000, initFrames: [0x200, 0x201])
        guard case .success(let range) = Verifier.checkFrames(ok, textBytes: 0x1000) else { return XCTFail("honest init frames refused") }
        XCTAssertEqual(range, 0xffff_ffff_c500_0000..<0xffff_ffff_c500_2000)
    }
}
