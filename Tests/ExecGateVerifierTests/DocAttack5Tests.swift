// SPDX-License-Identifier: Apache-2.0
//
// Attack round 5 written from the docs (README, docs/protocol.md, docs/trust.md): the guest
// kernel chooses every byte of a claim (frame numbers, addresses, lengths), the order of its
// requests and how often it asks again. Inputs: the committed fixture boot (signed Debian 6.1
// modules and the bytes a real guest held), through the verifier core as the service runs it
// (Verifier.respond / authorize / authorizePatch).

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack5Tests: XCTestCase {
    private func retire(_ g: FixtureGuest, _ name: String) -> Message {
        g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: g.session.liveModule(name)?.textRange.lowerBound ?? 0)),
                           requestDigest: [])
    }

    /// What a VMM makes of a frame number: protocol.md defines `frames` as `gpa >> 12`, so the
    /// page it grants EXEC on is `frame << 12` (a u64).
    private func gpa(_ frame: UInt64) -> UInt64 { frame << 12 }

    /// HOLE (round docs5): trust.md "The grant is on frames": "No frame may be granted to two live
    /// modules or two pages", and protocol.md: `frames` are "guest-physical frame numbers (`gpa >>
    /// 12`) … The EXEC grant covers exactly these frames". The verifier compared frame numbers as
    /// u64 values, but a frame number is a guest-physical page: x86-64 physical addresses have at
    /// most 52 bits (`__PHYSICAL_MASK_SHIFT`, arch/x86/include/asm/page_64_types.h; a PTE's PFN
    /// is bits 12–51, `PTE_PFN_MASK`), so no page has a frame number of 2⁴⁰ or more. The guest
    /// named, for one page, the frame of a page granted to a live module plus 2⁵²: a different
    /// number, so neither "granted to live code" nor "claimed for two pages" saw it, and the
    /// verdict echoed it as a grant — the same page `frame << 12` (and the same PFN field) as
    /// the live module's. One frame granted to two modules at two virtual addresses (the round-4
    /// attack, by arithmetic), and within one request one frame for two pages.
    func testFramesThatNameNoGuestPhysicalPageAreRefused() throws {
        let g = try FixtureGuest()
        let victim = try g.load("irqbypass")
        XCTAssertEqual(victim.decision, .allow, victim.message)
        let held = try XCTUnwrap(victim.grantFrames.first)

        // Another module, one of its pages on the live module's page (frame + 2^52).
        var thief = try g.request("llc")
        thief.frames[0] = held &+ (1 << 52)
        XCTAssertNotEqual(thief.frames[0], held)
        XCTAssertEqual(gpa(thief.frames[0]), gpa(held), "the same guest-physical page")
        let stolen = g.verifier.authorize(thief, requestDigest: [])
        XCTAssertEqual(stolen.decision, .deny, "frame 0x\(String(thief.frames[0], radix: 16)) = irqbypass's page 0x\(String(gpa(held), radix: 16)) granted again: \(stolen.message)")
        XCTAssertEqual(stolen.reason, .claimFramesInvalid, stolen.message)
        XCTAssertEqual(stolen.grantFrames, [])

        // One request, two of its pages on one page (and a frame past any 52-bit address).
        var mrp = try g.request("mrp")
        XCTAssertGreaterThanOrEqual(mrp.frames.count, 2)
        for alias in [mrp.frames[0] &+ (1 << 52), mrp.frames[0] | (1 << 40), UInt64.max] {
            mrp.frames[1] = alias
            let v = g.verifier.authorize(mrp, requestDigest: [])
            XCTAssertEqual(v.decision, .deny, "frame 0x\(String(alias, radix: 16)) for mrp's second page: \(v.message)")
            XCTAssertEqual(v.reason, .claimFramesInvalid, v.message)
        }
        // Init frames likewise (checked with the core's, before any byte is judged).
        var withInit = try g.request("stp")
        withInit.initBase = 0xffff_ffff_c200_0000
        withInit.initText = ByteBuffer(repeating: 0, count: 4096)
        withInit.initFrames = [held &+ (1 << 52)]
        let i = g.verifier.authorize(withInit, requestDigest: [])
        XCTAssertEqual(i.decision, .deny, i.message)
        XCTAssertEqual(i.reason, .claimFramesInvalid, i.message)

        // Control: the honest claims are allowed and the live module keeps its page.
        XCTAssertEqual(try g.load("llc").decision, .allow)
        XCTAssertEqual(try g.load("mrp").decision, .allow)
        XCTAssertEqual(g.session.liveModule("irqbypass")?.frames, victim.grantFrames)
    }

    /// HOLE (round docs5): protocol.md verdict tag 5: "A check not listed did not run: a verdict
    /// never claims more than was checked." An authorize-patch verdict listed `key-state` for every
    /// batch judged, also one denied at its first entry (an address in no live module, a byte
    /// string that is no legal encoding of the site) before any key rule (whole-key coverage, one
    /// state per key, `__ro_after_init` keys, trusted static-call targets, a transition in flight)
    /// ran; the audit record carried the same list.
    func testAPatchDeniedAtItsSitesListsNoKeyStateCheck() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { $0.value.count >= 2 && $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }

        let nowhere = g.patch([PatchEntry(address: 0x1000, bytes: [0xc3])])
        XCTAssertEqual(nowhere.reason, .patchNotAllowed, nowhere.message)
        XCTAssertEqual(nowhere.checks, ["policy-kind", "patch-site"], "denied at its site: no key rule ran (\(nowhere.message))")
        let illegal = g.patch([PatchEntry(address: flip[0].address, bytes: [UInt8](repeating: 0xcc, count: flip[0].bytes.count))])
        XCTAssertEqual(illegal.reason, .patchNotAllowed, illegal.message)
        XCTAssertEqual(illegal.checks, ["policy-kind", "patch-site"], "denied at its site: no key rule ran (\(illegal.message))")
        // A key rule decides: listed.
        let partial = g.patch([flip[0]])
        XCTAssertEqual(partial.reason, .patchPartialKey, partial.message)
        XCTAssertEqual(partial.checks, ["policy-kind", "patch-site", "key-state"])
        let whole = g.patch(flip)
        XCTAssertEqual(whole.decision, .allow, whole.message)
        XCTAssertEqual(whole.checks, ["policy-kind", "patch-site", "key-state"])
        XCTAssertEqual(g.session.state(ofKey: key), 1 - state)
    }

    /// Failed attack kept: numeric edges of a claim's addresses and lengths (protocol.md "No
    /// integer a peer sends may reach arithmetic that can trap"; trust.md "Init memory": init text
    /// is "its own page-aligned allocation inside the module area"; module_alloc() / 6.12
    /// execmem_alloc() hand out `[MODULES_VADDR, MODULES_END)` only). The core allocation or the
    /// init text wrapping 2⁶⁴, touching MODULES_END or starting below MODULES_VADDR, a zero-length
    /// or one-byte region, section bytes that wrap, a frame at 2^40: each is denied, none traps,
    /// and none leaves state behind (the honest module is allowed afterwards, alone, with a per-cpu
    /// base at the top of the address space, which a module without per-cpu data never uses, and
    /// its page at the last frame of a 52-bit physical address space).
    func testNumericEdgesOfAClaimAreDeniedNotTrapped() throws {
        let g = try FixtureGuest()
        let name = "irqbypass"
        let honest = try g.request(name)
        let size = UInt64(honest.text!.readableBytes)
        func deny(_ what: String, _ change: (inout AuthorizeModule) -> Void, file: StaticString = #filePath, line: UInt = #line) {
            var r = honest
            change(&r)
            let v = g.verifier.authorize(r, requestDigest: [])
            XCTAssertEqual(v.decision, .deny, "\(what): \(v.message)", file: file, line: line)
            XCTAssertEqual(v.grantFrames, [], what, file: file, line: line)
            XCTAssertEqual(g.session.allowedModules, [], what, file: file, line: line)
        }
        func rebase(_ r: inout AuthorizeModule, _ base: UInt64) {
            let d = base &- r.textBase!
            r.textBase = base
            r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.address &+ d, bytes: $0.bytes) }
        }
        deny("core allocation wrapping 2^64") { rebase(&$0, 0xffff_ffff_ffff_f000) }
        deny("core allocation at the last page below 2^64 - size") { rebase(&$0, (0 &- size) & ~0xfff) }
        deny("core allocation running past MODULES_END") { rebase(&$0, 0xffff_ffff_ff00_0000 &- 0x1000) }
        deny("core allocation at MODULES_END") { rebase(&$0, 0xffff_ffff_ff00_0000) }
        deny("core allocation below MODULES_VADDR") { rebase(&$0, 0xffff_ffff_c000_0000 &- 0x1000) }
        deny("core allocation at 0") { rebase(&$0, 0) }
        deny("empty region") { $0.text = ByteBuffer(); $0.frames = [] }
        deny("one-byte region") { $0.text = ByteBuffer(bytes: [0xc3]); $0.frames = [$0.frames[0]] }
        deny("region one page short") { $0.text = $0.text!.getSlice(at: 0, length: Int(size) - 4096) ?? ByteBuffer(); $0.frames = Array($0.frames.dropLast()) }
        deny("init text wrapping 2^64") { $0.initBase = 0xffff_ffff_ffff_f000; $0.initText = ByteBuffer(repeating: 0, count: 0x2000); $0.initFrames = [0x7_0000, 0x7_0001] }
        deny("init text at the last page") { $0.initBase = 0xffff_ffff_ffff_f000; $0.initText = ByteBuffer(repeating: 0, count: 0x1000); $0.initFrames = [0x7_0000] }
        deny("empty init text") { $0.initBase = 0xffff_ffff_c200_0000; $0.initText = ByteBuffer(); $0.initFrames = [] }
        deny("init text over the core allocation") { $0.initBase = $0.textBase; $0.initText = ByteBuffer(repeating: 0, count: 0x1000); $0.initFrames = [0x7_0000] }
        // .text with its own bytes (0x578 of them, as signed), claimed 2 bytes below 2^64.
        let textAt = try XCTUnwrap(honest.sections.first { $0.name == ".text" }?.address)
        let textBytes = try XCTUnwrap(honest.text!.getSlice(at: Int(textAt - honest.textBase!), length: 0x578))
        deny("section bytes wrapping 2^64") { r in
            r.sections = r.sections.map { $0.name == ".text" ? SectionClaim(name: ".text", address: UInt64.max - 1, bytes: textBytes) : $0 }
        }
        deny("section address at the top") { r in r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.name == ".text" ? UInt64.max : $0.address) } }
        deny("a frame at 2^40 (no guest-physical page)") { $0.frames = [WireLimits.frameNumberLimit] }
        var r = honest
        r.perCPUBase = UInt64.max - 7  // irqbypass has no per-cpu data: a base is never used
        r.frames = [WireLimits.frameNumberLimit - 1]  // the last page of a 52-bit physical address space
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, "a per-cpu base for a module without per-cpu data is layout only: \(v.message)")
        XCTAssertEqual(g.session.allowedModules, [name])
    }

    /// Failed attack kept: re-asking (protocol.md: "a verdict is a pure function of the request,
    /// the guest's registered state and the policy"; trust.md "Live code": one module per name,
    /// one owner per address). The guest has the VMM send the same requests again and again: a
    /// live module's load (`claim.module-already-live` every time, nothing added), a whole-key
    /// flip and its reverse 200 times each (allowed every time, one recorded state, the key's
    /// sites unchanged in number), init-freed and retire after they succeeded
    /// (`unknown-module`), and the same flip as a batch naming every site twice (refused). The
    /// session ends as it would after one of each.
    func testReaskingChangesNothingButTheFirstAnswer() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let before = g.session.allowedModules
        for _ in 0..<50 {
            let again = try g.load("irqbypass")
            XCTAssertEqual(again.reason, .moduleAlreadyLive, again.message)
        }
        XCTAssertEqual(g.session.allowedModules, before)
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        func flip(_ to: UInt64) throws -> [PatchEntry] { try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: to))) } }
        let on = try flip(1 - state), off = try flip(state)
        for k in 0..<200 {
            XCTAssertEqual(g.patch(k % 2 == 0 ? on : off).decision, .allow)
            XCTAssertEqual(g.patch(k % 2 == 0 ? on : off).decision, .allow, "the same transition asked again")
        }
        XCTAssertEqual(g.session.state(ofKey: key), state)
        XCTAssertEqual(g.sitesByKey()[key]?.count, sites.count)
        XCTAssertEqual(g.patch(on + on).reason, .patchNotAllowed, "every site twice")
        XCTAssertEqual(g.session.state(ofKey: key), state)

        // Retire asked twice: the second names no live module.
        guard case .retireModuleReply = retire(g, "irqbypass") else { return XCTFail("retire") }
        let base = try g.request("irqbypass").textBase!
        guard case .error(let e) = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "irqbypass", textBase: base)), requestDigest: []) else {
            return XCTFail("retired twice")
        }
        XCTAssertEqual(e.code, .unknownModule)
        XCTAssertEqual(try g.load("irqbypass").decision, .allow, "loaded again after its retire")
        XCTAssertEqual(Set(g.session.allowedModules), Set(before))
    }
}
