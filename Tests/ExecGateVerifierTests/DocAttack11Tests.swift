// SPDX-License-Identifier: Apache-2.0
//
// Doc-driven attacks, round 11 (a reviewer with a wire client against `serve`, working from
// docs/protocol.md and docs/trust.md): the registration's KASLR slide.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class DocAttack11Tests: XCTestCase {
    /// HOLE (round 11): trust.md promised that "a build that passes [the symbol rules] at one
    /// admitted slide passes at every other", but the text/rodata gap rule rounds at run-time
    /// addresses: `_etext` up to its page, rodata at the next 2 MiB boundary. No slide was
    /// refused, so at slide 0x1fe000 the gap of a build whose export lies in it at slide 0
    /// closed up: the build was admitted, stored under its symbols digest (slide removed), and
    /// later guests attached to it by digest at real slides, and a full registration at slide 0
    /// found it held — whether the build was refused depended on which guest came first.
    /// x86-64 KASLR moves the kernel by multiples of CONFIG_PHYSICAL_ALIGN (≥ 2 MiB): any other
    /// slide is refused, and at every admitted slide the build fails alike.
    func testASlideNoKernelBootsAtIsRefusedSoAGapExportFailsAtEverySlide() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let etext = try XCTUnwrap(honest.symbols.first { $0.name == "_etext" }?.address)
        // An exported data symbol just above _etext's page, inside the gap at slide 0.
        var gap = honest
        gap.symbols.append(KernelSymbol(name: "evil_gap_export", address: ((etext + 0xfff) & ~0xfff) + 0x1000,
                                        type: UInt8(ascii: "D"), exported: true))
        let v = Verifier(policy: Policy(id: "test", version: 11, trust: try Fixtures.debianTrust()))
        func answer(_ r: RegisterGuest) -> ErrorReply? {
            if case .error(let e) = v.respond(to: .registerGuest(r), requestDigest: []) { return e }
            return nil
        }
        // Slides no x86-64 kernel boots at: refused before the symbols are looked at.
        for delta: UInt64 in [0x1fe000, 0x1000, 0x1, 0x10_0000, 0x1e1f_e000] {
            let e = answer(SlidSharedKernelFactsTests.moved(gap, by: delta, id: "odd-\(delta)"))
            XCTAssertEqual(e?.code, .implausibleFacts, "slide 0x\(String(delta, radix: 16)): \(e?.message ?? "registered")")
            XCTAssertTrue(e?.message.contains("not a multiple of 2 MiB") ?? false, e?.message ?? "registered")
            // The honest build at that slide too: the slide is the lie, not the symbols.
            XCTAssertEqual(answer(SlidSharedKernelFactsTests.moved(honest, by: delta, id: "h-\(delta)"))?.code, .implausibleFacts)
        }
        XCTAssertTrue(v.guests.sharedBuilds.isEmpty, "no copy was stored")
        // Admitted slides: the gap export fails at each, as at slide 0.
        for delta: UInt64 in [0, 0x20_0000, 0x1e00_0000, 0x3e00_0000] {
            let e = answer(SlidSharedKernelFactsTests.moved(gap, by: delta, id: "gap-\(delta)"))
            XCTAssertEqual(e?.code, .implausibleFacts, "slide 0x\(String(delta, radix: 16)): \(e?.message ?? "registered")")
            XCTAssertTrue(e?.message.contains("gap") ?? false, e?.message ?? "registered")
        }
        // By digest at an odd slide: refused for the slide, whatever the digest names.
        let digest = KernelFactsKey.symbolsDigest(honest)
        guard case .registerGuestReply = v.respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the honest build at slide 0") }
        var byDigest = try boot.registration(guestID: "b").byDigest(digest)
        byDigest.kaslrSlide = 0x1fe000
        XCTAssertEqual(answer(byDigest)?.code, .implausibleFacts)
        XCTAssertNil(answer(SlidSharedKernelFactsTests.moved(try boot.registration(guestID: "b"), by: 0x1e00_0000, id: "b").byDigest(digest)),
                     "a guest of the honest build at an admitted slide attaches")
    }

    /// HOLE (round 11): `explain` judged a capture with the facts a registration of it gives but
    /// never asked whether the service would accept that registration: a capture whose
    /// `x86_return_thunk` was another core function was explained (allow, returns rewritten into
    /// jumps to it) while `policy test` on it was refused implausible-facts. `explain` now refuses
    /// (a usage error, exit 2) a capture whose registration the service refuses, with the
    /// service's reason — here a vulnerabilities report naming a return-thunk mitigation the
    /// capability words do not have.
    func testExplainRefusesACaptureTheServiceRefuses() throws {
        let dir = Fixtures.temporaryDirectory()
        XCTAssertEqual(system("cp -r '\(Fixtures.packageRoot)/Tests/ExecGateExplainTests/Fixtures/corpus/.' '\(dir)/'"), 0)
        let bootDir = dir + "/nokaslr-a"
        XCTAssertNoThrow(try ExplainRunOptions().check(against: try CaptureBoot.load(bootDir)), "the honest capture")
        let path = bootDir + "/vulnerabilities.txt"
        let report = String(decoding: try Fixtures.readFile(path), as: UTF8.self)
            .replacingOccurrences(of: "retbleed: Not affected", with: "retbleed: Mitigation: untrained return thunk")
        try Fixtures.writeFile(path, Array(report.utf8))
        let boot = try CaptureBoot.load(bootDir)
        XCTAssertThrowsError(try ExplainRunOptions().check(against: boot)) { e in
            XCTAssertTrue("\(e)".contains("implausible-facts"), "\(e)")
            XCTAssertTrue("\(e)".contains("refuses this boot's registration"), "\(e)")
        }
    }
}
