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

extension RegistrationBoundsTests {
    /// HOLE: `.data..ro_after_init` was required and ordered, never held to where the linker puts
    /// it: a registration naming a range outside the kernel image (below `_text`, in the module
    /// area) or outside rodata registered, and the sealed-key rule then covered no core key (a
    /// run-time patch of a key the kernel sealed at `mark_rodata_ro()` was judged like any other).
    /// include/asm-generic/vmlinux.lds.h places RO_AFTER_INIT_DATA inside RO_DATA, x86-64
    /// vmlinux.lds.S starts rodata at the 2 MiB boundary after text: the range lies in
    /// [ALIGN(PAGE_ALIGN(_etext), 2 MiB), __end_rodata] (6.1 and 6.12).
    func testTheROAfterInitRangeMustLieInRodata() throws {
        let honest = try CaptureBoot.load(EndStateVerifierTests.bootDir).registration(guestID: "g")
        func addr(_ n: String) throws -> UInt64 { try XCTUnwrap(honest.symbols.first { $0.name == n }?.address, n) }
        let stext = try addr("_stext"), etext = try addr("_etext"), endRodata = try addr("__end_rodata"), sdata = try addr("_sdata")
        let cases: [(String, UInt64, UInt64)] = [
            ("below the image", 0xffff_ffff_8000_0000, 0xffff_ffff_8000_1000),
            ("in core text", stext + 0x1000, stext + 0x2000),
            ("straddling _etext", etext - 0x1000, etext + 0x1000),
            ("past __end_rodata", endRodata - 0x1000, endRodata + 0x1000),
            ("in data", sdata, sdata + 0x1000),
            ("in the module area", 0xffff_ffff_c000_0000, 0xffff_ffff_c000_1000),
        ]
        for (what, lo, hi) in cases {
            var r = honest
            for (n, a) in [("__start_ro_after_init", lo), ("__end_ro_after_init", hi)] {
                let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == n })
                r.symbols[i].address = a
            }
            guard case .error(let e) = try verifier().respond(to: .registerGuest(r), requestDigest: []) else {
                XCTFail("registered with .data..ro_after_init \(what): [0x\(String(lo, radix: 16)), 0x\(String(hi, radix: 16)))"); continue
            }
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("__start_ro_after_init"), e.message)
        }
        // The honest range registers.
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the honest registration") }
    }
}
