// SPDX-License-Identifier: Apache-2.0
//
// The registration bounds that were optional until session 22: `__end_rodata`/`_sdata` (the
// rodata/data gap x86-64 mark_rodata_ro() frees after boot, arch/x86/mm/init_64.c
// free_kernel_image_pages()) and `__start_ro_after_init`/`__end_ro_after_init` (the core's
// `.data..ro_after_init`, include/asm-generic/vmlinux.lds.h RO_AFTER_INIT_DATA, whose static keys
// never change after boot). Left out, each switched its rule off, and `execgate capture`'s
// registration left all four out: an export in the rodata/data gap registered, and a sealed core
// key could be flipped by a run-time patch.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class RegistrationBoundsTests: XCTestCase {
    static let bounds = ["__end_rodata", "_sdata", "__start_ro_after_init", "__end_ro_after_init"]

    private func verifier() throws -> Verifier { Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())) }

    /// HOLE: the capture's registration did not send the four bounds the kallsyms it reads holds,
    /// so a registration made by ExecGate's own tooling ran with the rodata/data-gap and
    /// sealed-key rules off.
    func testTheCaptureRegistrationSendsTheBounds() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let r = try boot.registration(guestID: "g")
        for n in Self.bounds + ["__per_cpu_start"] {
            XCTAssertEqual(r.symbols.filter { $0.name == n }.count, 1, "\(n) sent once")
        }
        let v = try verifier()
        guard case .registerGuestReply = v.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("the real registration") }
        let facts = try XCTUnwrap(v.guests.session("g")?.facts)
        let start = try XCTUnwrap(r.symbols.first { $0.name == "__start_ro_after_init" }?.address)
        let end = try XCTUnwrap(r.symbols.first { $0.name == "__end_ro_after_init" }?.address)
        XCTAssertEqual(facts.coreROAfterInit, start..<end)
    }

    /// HOLE: with exports, a registration leaving out either pair (or sending it unordered) was
    /// accepted with the rule it feeds off. Each is now `implausible-facts` naming the pair.
    func testEachBoundIsRequiredWithExports() throws {
        let honest = try CaptureBoot.load(EndStateVerifierTests.bootDir).registration(guestID: "g")
        for n in Self.bounds {
            var r = honest
            r.symbols.removeAll { $0.name == n }
            guard case .error(let e) = try verifier().respond(to: .registerGuest(r), requestDigest: []) else { XCTFail("registered without \(n)"); continue }
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains(n), e.message)
        }
        for (lo, hi) in [("__end_rodata", "_sdata"), ("__start_ro_after_init", "__end_ro_after_init")] {
            var r = honest
            let a = try XCTUnwrap(r.symbols.firstIndex { $0.name == lo }), z = try XCTUnwrap(r.symbols.firstIndex { $0.name == hi })
            r.symbols[a].address = r.symbols[z].address
            guard case .error(let e) = try verifier().respond(to: .registerGuest(r), requestDigest: []) else { XCTFail("registered with \(lo) = \(hi)"); continue }
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
        }
    }

    /// HOLE: an export sent as data inside the rodata/data gap `[PFN_ALIGN(__end_rodata), _sdata)`
    /// registered through the capture's own registration (the gap was checked only when the two
    /// bounds were sent, and the capture never sent them); 8021q's call to `_printk` there would be
    /// explained. Now refused without adding anything by hand.
    func testAnExportInTheRodataDataGapIsRefused() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var r = try boot.registration(guestID: "g")
        let endRodata = try XCTUnwrap(r.symbols.first { $0.name == "__end_rodata" }?.address)
        let sdata = try XCTUnwrap(r.symbols.first { $0.name == "_sdata" }?.address)
        let inGap = ((endRodata + 0xfff) & ~0xfff) + 0x1000
        XCTAssertLessThan(inGap, sdata, "the fixture's gap holds the address")
        let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_printk" && $0.exported })
        r.symbols[i].type = UInt8(ascii: "D")
        r.symbols[i].address = inGap
        let v = try verifier()
        if case .error(let e) = v.respond(to: .registerGuest(r), requestDigest: []) {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("rodata/data gap"), e.message)
        } else {
            let verdict = try DocAttack7Tests.printkCallerVerdict(v, boot)
            XCTFail("registered _printk (D) at 0x\(String(inGap, radix: 16)) in the freed rodata/data gap; 8021q's call _printk there: \(verdict.decision) \(verdict.message)")
        }
    }
}
