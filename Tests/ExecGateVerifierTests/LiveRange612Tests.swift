// SPDX-License-Identifier: Apache-2.0
//
// The live-range check of authorize-module on a 6.12 guest: every `enum mod_mem_type` is its own
// allocation (6.12 move_module()), so the core range held against live modules is the MOD_TEXT
// allocation (the claimed text), not 6.1's one core block of text, rodata and data.

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class LiveRange612Tests: XCTestCase {
    func testCoreRangeIsMODTextOn612AndTheCoreBlockOn61() throws {
        let ko = try Fixtures.readFile(try Fixtures.module(named: "8021q.ko"))
        let plan = try ko.withUnsafeBytes { raw in try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: raw))) }
        XCTAssertGreaterThan(plan.coreSize, plan.textSize)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: 0x3000, kernelRelease: "6.12.117+deb12-amd64"), 0x3000)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: 0, kernelRelease: "6.12.117+deb12-amd64"), 0, "data-only: no MOD_TEXT")
        // On 6.1 the core allocation as the kernel makes it: with the core symbols layout_symtab()
        // appends (/sys/module/8021q/coresize on the captured boot: 40960; SymbolAppendixTests).
        XCTAssertGreaterThanOrEqual(plan.coreSizeWithSymbols, plan.coreSize)
        XCTAssertEqual(plan.coreSizeWithSymbols, 40960)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: "6.1.0-56-amd64"), plan.coreSizeWithSymbols)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: nil), plan.coreSizeWithSymbols)
        XCTAssertEqual(Verifier.liveCoreSize(plan: plan, textBytes: plan.textSize, kernelRelease: "6.13.1"), plan.coreSizeWithSymbols, "no loader: the larger range")
    }

    /// HOLE (round 11, a reviewer's synthetic 6.12 boot of the real Debian 6.12 crc7 and tun):
    /// only MOD_TEXT and MOD_INIT_TEXT were held against live modules on 6.12, so tun's text
    /// claimed over crc7's live MOD_DATA and MOD_RODATA (its `struct module`, `__ksymtab`) was
    /// allowed — pages execmem_alloc() never hands out while crc7 is live, and frames the VMM
    /// would grant EXEC on though crc7's data aliases them. Every 6.12 allocation is now held:
    /// the data types while the module is live, the init data types while its init text is
    /// (do_free_init() frees all three init types). Checked both ways: a text over live data,
    /// and data over live text. (The served path: `ExplainResult.dataAllocations` from the
    /// session's checked bases, `LiveModule.dataAllocations`.)
    func testA612ModulesDataAllocationsAreHeldWhileItIsLive() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let v = Verifier(policy: Policy(id: "t", version: 1, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else { return XCTFail("register") }
        let s = try XCTUnwrap(v.guests.session("g"))
        let b: UInt64 = 0xffff_ffff_c010_0000
        var a = LiveModule(name: "crc7", coreRange: b..<b + 0x1000, textRange: b..<b + 0x1000, frames: [0x100],
                           initRange: b + 0x10_0000..<b + 0x10_1000, initFrames: [0x300], exports: nil, sites: nil, keyStates: [:])
        a.dataAllocations = [b + 0x2000..<b + 0x3000, b + 0x4000..<b + 0x5000]
        a.initDataAllocations = [b + 0x10_2000..<b + 0x10_3000]
        guard case .success(let ta) = s.commit(a) else { return XCTFail("crc7") }
        XCTAssertNil(s.finish(ta))
        func module(_ name: String, text: Range<UInt64>, data: [Range<UInt64>] = [], frame: UInt64) -> LiveModule {
            var m = LiveModule(name: name, coreRange: text, textRange: text, frames: [frame], initRange: nil, initFrames: [], exports: nil, sites: nil, keyStates: [:])
            m.dataAllocations = data
            return m
        }
        // Text over crc7's MOD_DATA: refused before judging (preflight) and at commit.
        let over = b + 0x2000..<b + 0x3000
        XCTAssertEqual(s.preflight(name: "tun", coreRange: over, initRange: nil, frames: [0x200], initFrames: [])?.reason, .claimOverlapsLive)
        guard case .failure(let r1) = s.commit(module("tun", text: over, frame: 0x200)) else { return XCTFail("tun's text over crc7's data committed") }
        XCTAssertEqual(r1.reason, .claimOverlapsLive, r1.message)
        // Its data over crc7's text, or over crc7's init data while crc7's init text is granted.
        for data in [b..<b + 0x1000, b + 0x10_2000..<b + 0x10_3000] {
            guard case .failure(let r) = s.commit(module("tun", text: b + 0x8000..<b + 0x9000, data: [data], frame: 0x200)) else {
                return XCTFail("tun's data at 0x\(String(data.lowerBound, radix: 16)) committed over live crc7")
            }
            XCTAssertEqual(r.reason, .claimOverlapsLive, r.message)
        }
        // Once crc7's init is freed its init data may be reused; its core data stays held.
        XCTAssertEqual(s.initFreed(name: "crc7", initBase: try XCTUnwrap(s.liveModule("crc7")?.initRange?.lowerBound)), .freed)
        guard case .success = s.commit(module("tun", text: b + 0x8000..<b + 0x9000, data: [b + 0x10_2000..<b + 0x10_3000], frame: 0x200)) else {
            return XCTFail("freed init data not reusable")
        }
        guard case .failure = s.commit(module("veth", text: b + 0x4000..<b + 0x5000, frame: 0x201)) else { return XCTFail("crc7's MOD_RODATA released with its init") }
    }

    /// HOLE (round 11): the range a live 6.1 module holds was its sections' core layout, short of
    /// the pages layout_symtab() appends (its core symbols: /sys/module/<m>/coresize counts them),
    /// so another module's text could be claimed on them while it was live. Served: the fixture
    /// module whose symbols take pages of their own is allowed, and a claim starting on the first
    /// of those pages is claim.overlaps-live before it is judged.
    func testA61ModuleHoldsThePagesOfItsCoreSymbols() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let v = Verifier(policy: Policy(id: "t", version: 1, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else { return XCTFail("register") }
        var found: (name: String, base: UInt64, sections: Int)?
        var next: String?
        for n in boot.availableModules {
            if found != nil { next = n; break }
            let m = try boot.module(n)
            let plan = try m.ko.withUnsafeBytes { try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: $0))) }
            guard v.authorize(m.request(guestID: "g"), requestDigest: []).decision == .allow else { return XCTFail("\(n) not allowed") }
            if plan.coreSizeWithSymbols > plan.coreSize { found = (n, m.claim.textBase, plan.coreSize) }
        }
        let holder = try XCTUnwrap(found, "a fixture module whose core symbols take a page past its sections")
        // The next module's claim laid on the holder's first symbol page.
        let other = try boot.module(try XCTUnwrap(next, "a module after \(holder.name)"))
        var r = other.request(guestID: "g")
        r.textBase = holder.base + UInt64(holder.sections)
        let pages = (other.claim.text.count + 4095) / 4096
        r.frames = (0..<pages).map { 0x7000_0000 + UInt64($0) }
        let verdict = v.authorize(r, requestDigest: [])
        XCTAssertEqual(verdict.decision, .deny)
        XCTAssertEqual(verdict.reason, .claimOverlapsLive, verdict.message)
    }
}
