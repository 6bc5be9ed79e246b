// SPDX-License-Identifier: Apache-2.0
//
// Attack round 6 written from the docs (README, docs/protocol.md, docs/trust.md): the guest
// kernel chooses every fact it can reach (its registration's symbols, their type letters and
// order, the return thunk), every byte of a claim and the order of its requests. New angles:
// facts that are consistent field by field but not across fields (a symbol's type letter against
// where it lies, the record a name resolves to against the one the checks read), and init text
// against the core and against later requests. Inputs: the committed fixture boot (signed Debian
// 6.1 modules and the bytes a real guest held), through the verifier core as the service runs it.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack6Tests: XCTestCase {
    /// An address in the module area `[MODULES_VADDR, MODULES_END)` where no fixture module lies.
    static let moduleAreaPage: UInt64 = 0xffff_ffff_c300_0000

    private func verifier() throws -> Verifier { Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())) }

    /// HOLE (round docs6): trust.md "kernel symbols": "exported text lies in core text [_stext,
    /// _etext) … Only *exported* symbols resolve relocations", and the round-4 rule that no fact
    /// may name the module area (DocAttack4Tests.testCoreTextInTheModuleAreaIsImplausible: "every
    /// export … named the module's bytes"). The core-text check read the record's `nm` type
    /// letter: the same exported `_printk`, sent with type `D` (data) instead of `T`, escaped it,
    /// and its address could be anywhere but init text. Registered with `_printk` at a page of the
    /// module area, the guest had irqbypass laid out on that page and 8021q, whose `call _printk`
    /// it pointed there, was allowed: a verified call into the middle of another module's text
    /// (or any module page). A kernel export is `kernel_symbol_value()` of a core `__ksymtab`
    /// entry: an address in the kernel image (text, rodata, data, bss) or, x86-64 SMP, a
    /// zero-based per-cpu offset inside `[__per_cpu_start, __per_cpu_end)`
    /// (`EXPORT_PER_CPU_SYMBOL`); never the module area (every export of both Debian 6.1 corpus
    /// boots is one of the two).
    func testAnExportSentAsDataCannotNameTheModuleArea() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var r = try boot.registration(guestID: "g")
        let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_printk" && $0.exported })
        r.symbols[i].type = UInt8(ascii: "D")
        r.symbols[i].address = Self.moduleAreaPage
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("_printk"), e.message)
        } else {
            XCTFail("registered with the exported _printk (type D) at 0x\(String(Self.moduleAreaPage, radix: 16)), in the module area")
        }
        // Control: the real build registers.
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else {
            return XCTFail("the real registration")
        }

        // What the registration allowed: irqbypass on that page, 8021q calling "_printk" into it.
        guard let session = v.guests.session("g") else { return }
        for name in ["llc", "stp", "mrp", "garp"] {
            XCTAssertEqual(v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let target = try DocAttack4Tests.rebased(boot, session, "irqbypass", to: Self.moduleAreaPage, frames: [0x6_6000])
        XCTAssertEqual(v.authorize(target, requestDigest: []).decision, .allow, "irqbypass on the page '_printk' names")
        let caller = try boot.module("8021q").request(guestID: "g")
        let redirected = try DocAttack4Tests.rebased(boot, session, "8021q", to: caller.textBase!, frames: caller.frames)
        let verdict = v.authorize(redirected, requestDigest: [])
        XCTAssertEqual(verdict.decision, .deny, "8021q's call _printk into irqbypass's text at 0x\(String(Self.moduleAreaPage, radix: 16)): \(verdict.message)")
    }

    /// HOLE (round docs6): trust.md "x86_return_thunk … must be one of the kernel's own return
    /// thunks (bugs.c assigns no other)", "Static calls" rule 4 (`__static_call_return0`
    /// "transfers control nowhere") and protocol.md "Symbols the VMM must send" (`_paravirt_nop`,
    /// `paravirt_BUG`, `__static_call_return0`, `__static_call_return`, the return thunks: code
    /// the loader's rewrites jump to). The plausibility checks held only *exported text* records
    /// to core text; these helpers are looked up by name (the first record of the name), so a
    /// registration could name them anywhere: `srso_return_thunk` as a non-exported text record
    /// on a module-area page with `return_thunk` = that address (every rewritten return site
    /// `jmp`s there, 6.1 `apply_returns()` / `__static_call_transform()` RET forms), or an earlier
    /// record `__static_call_return0` on a module page ahead of the real one (a static call's
    /// NULL form, trusted for every key). Each was registered. The kernel's helpers are core
    /// functions (arch/x86/lib/retpoline.S, kernel/static_call.c, arch/x86/kernel/paravirt.c),
    /// in `[_stext, _etext)` outside init text, at every Debian 6.1 boot of the corpus.
    func testTheLoadersCodeHelpersLieInCoreText() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        func refused(_ r: RegisterGuest, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let v = try verifier()
            let reply = v.respond(to: .registerGuest(r), requestDigest: [])
            if case .error(let e) = reply {
                XCTAssertEqual(e.code, .implausibleFacts, e.message, file: file, line: line)
            } else {
                let f = v.guests.session("g")?.facts
                XCTFail("registered with \(what) at 0x\(String(Self.moduleAreaPage, radix: 16)), in the module area (return thunk 0x\(String(f?.returnThunk ?? 0, radix: 16)), __static_call_return0 0x\(String(f?.staticCallReturn0 ?? 0, radix: 16)))", file: file, line: line)
            }
        }
        // The return thunk: a registered thunk name, on a module page.
        var thunk = honest
        let t = try XCTUnwrap(thunk.symbols.firstIndex { $0.name == "srso_return_thunk" })
        thunk.symbols[t].address = Self.moduleAreaPage
        thunk.symbols[t].exported = false
        thunk.returnThunk = Self.moduleAreaPage
        try refused(thunk, "return_thunk = srso_return_thunk")
        // __static_call_return0 (and the other helpers) by an earlier record of the name.
        for helper in ["__static_call_return0", "__static_call_return", "_paravirt_nop", "paravirt_BUG"] {
            var r = honest
            XCTAssertTrue(r.symbols.contains { $0.name == helper }, helper)
            r.symbols.insert(KernelSymbol(name: helper, address: Self.moduleAreaPage, type: UInt8(ascii: "t"), exported: false), at: 0)
            try refused(r, helper)
        }
        // Control: the honest registration (every helper in core text) registers.
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }

    /// Failed attack kept: init text against later requests (protocol.md module-init-freed: "The
    /// init range stops being live: nothing there may be patched, and the range may be reused";
    /// "Init sites are never run-time patch sites"; authorize-patch: judged against "the live
    /// module that owns the address now"). test_static_keys is allowed with its init text; the
    /// guest then asks for a whole-key flip that also writes into that init text (the kernel's
    /// `jump_label_can_update()` does update a COMING module's init entries, but ExecGate takes
    /// no init site: denied, nothing moves), the init write alone, init-freed, the write again
    /// (no live code), and irqbypass laid out on the freed init page with the freed init frame:
    /// allowed (module_memfree() gives the memory back; the frame is no longer granted), and the
    /// old init address is then judged against irqbypass. While granted, the init frame is held.
    func testInitSitesAreNoPatchSitesBeforeOrAfterInitFreed() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("test_static_key_base").decision, .allow)
        let honest = try g.request("test_static_keys")
        let initBase: UInt64 = 0xffff_ffff_c200_0000
        let request = try DocAttack4Tests.rebased(g, "test_static_keys", to: honest.textBase!, frames: honest.frames,
                                                  initBase: initBase, initFrames: [0x5_5000])
        let v = g.verifier.authorize(request, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(v.initFrames, [0x5_5000])
        // A key of test_static_keys' core sites, and an init-text address (its init text has no
        // run-time site of its own: the guest names one anyway).
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { _, s in s.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let initSite = PatchEntry(address: initBase + 0x40, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])
        let initFlip = initSite.bytes

        // The whole key plus an init-text entry: denied, nothing moves.
        let core = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let withInit = g.patch(core + [initSite])
        XCTAssertEqual(withInit.decision, .deny, withInit.message)
        XCTAssertEqual(withInit.reason, .patchNotAllowed, withInit.message)
        XCTAssertEqual(g.session.state(ofKey: key), state)
        let alone = g.patch([PatchEntry(address: initSite.address, bytes: initFlip)])
        XCTAssertEqual(alone.reason, .patchNotAllowed, alone.message)
        // Its init frame is held while granted.
        var thief = try g.request("irqbypass")
        thief.frames[0] = 0x5_5000
        XCTAssertEqual(g.verifier.authorize(thief, requestDigest: []).reason, .claimFramesInvalid)

        // Init freed: the init site is no live code; the page and frame may be reused.
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keys", initBase: initBase)), requestDigest: []) else {
            return XCTFail("init freed")
        }
        let after = g.patch([PatchEntry(address: initSite.address, bytes: initFlip)])
        XCTAssertEqual(after.reason, .patchNotAllowed, after.message)
        XCTAssertTrue(after.message.contains("not in live code"), after.message)
        let reuse = try DocAttack4Tests.rebased(g, "irqbypass", to: initBase, frames: [0x5_5000])
        let r = g.verifier.authorize(reuse, requestDigest: [])
        XCTAssertEqual(r.decision, .allow, "irqbypass on the freed init page: \(r.message)")
        let owner = g.patch([PatchEntry(address: initSite.address, bytes: initFlip)])
        XCTAssertEqual(owner.decision, .deny, owner.message)
        XCTAssertTrue(owner.message.contains("irqbypass"), "judged against the page's owner now: \(owner.message)")
        XCTAssertEqual(g.session.state(ofKey: key), state, "the key never moved")
    }

    /// HOLE (round docs6): protocol.md plausibility: "every static-call key is a registered
    /// `__SCK__<name>` or a core-text `__SCT__<name>`", and FactsPlausibility's own reason: "Any
    /// other address — the module area where a later module's own key will be … — is no key
    /// static_call_add_module() writes a core target for". A `__SCK__` record was taken as a core
    /// key wherever it lay: a record `__SCK__<name>` on a module-area page (a new name, or an
    /// earlier record of a real key's name, `__SCK__cond_resched`, which the build-derived table
    /// trusts `__cond_resched` for), with a `static_call_key` fact naming it, registered; a
    /// module whose own key the guest lays at that address would have its sites trusted for the
    /// core targets listed (StaticCallTrust's union). A core `struct static_call_key` is kernel
    /// data (DEFINE_STATIC_CALL in vmlinux): in the image, below MODULES_VADDR.
    func testACoreStaticCallKeyInTheModuleAreaIsImplausible() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let printk = try XCTUnwrap(honest.symbols.first { $0.name == "_printk" }?.address)
        for name in ["__SCK__execgate_probe", "__SCK__cond_resched"] {
            var r = honest
            let key = Self.moduleAreaPage + 0x100
            r.symbols.insert(KernelSymbol(name: name, address: key, type: UInt8(ascii: "D"), exported: false), at: 0)
            r.staticCallKeys.append(StaticCallKeyFact(key: key, current: printk))
            let reply = try verifier().respond(to: .registerGuest(r), requestDigest: [])
            if case .error(let e) = reply {
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
            } else {
                XCTFail("registered a core static-call key '\(name)' at 0x\(String(key, radix: 16)), in the module area, trusted to call _printk")
            }
        }
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }

    /// Failed attack kept (after the export fix above): the same rule for a guest by digest at
    /// a larger slide (docs/trust.md "Registration by digest": everything of the guest's own is
    /// "checked against the copy at the guest's slide"). The fixture build at a slide where its
    /// core and init text stay in the image but its highest export (kernel data past init text)
    /// crosses MODULES_VADDR: refused in full and by digest (the registrant's copy is held),
    /// since at that slide an export names a module-area page.
    func testAnExportPastTheImageAtAGuestsSlideIsRefusedByDigestToo() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        // The fixture's reduced symbol table has no export in .bss (after init memory in
        // vmlinux.lds.S; the Debian build exports 167 'B' symbols): one is added, 16 MiB past init text.
        func build(_ id: String) throws -> RegisterGuest {
            var r = try boot.registration(guestID: id)
            let top = try XCTUnwrap(r.symbols.filter { ["_etext", "_einittext"].contains($0.name) }.map(\.address).max())
            r.symbols.append(KernelSymbol(name: "execgate_bss_export", address: top + 0x100_0000, type: UInt8(ascii: "B"), exported: true))
            return r
        }
        let honest = try build("first")
        let modulesVaddr: UInt64 = 0xffff_ffff_c000_0000
        let ceiling = try XCTUnwrap(honest.symbols.filter { $0.exported && $0.address >= KernelSlide.imageBase }.map(\.address).max())
        let textTop = try XCTUnwrap(honest.symbols.filter { ["_etext", "_einittext"].contains($0.name) }.map(\.address).max())
        XCTAssertGreaterThan(ceiling, textTop, "an export (kernel data) lies past the text")
        // The smallest 2 MiB slide that moves the highest export to MODULES_VADDR or above.
        let delta = ((modulesVaddr - ceiling) + 0x1f_ffff) & ~0x1f_ffff
        guard textTop + delta < modulesVaddr else { throw XCTSkip("no 2 MiB slide separates the text from the exports") }
        let v = try verifier()
        guard case .registerGuestReply(let first) = v.respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
        let slid = SlidSharedKernelFactsTests.moved(try build("slid"), by: delta, id: "slid")
        for r in [slid, slid.byDigest(first.symbolsDigest)] {
            let reply = v.respond(to: .registerGuest(r), requestDigest: [])
            if case .error(let e) = reply {
                XCTAssertEqual(e.code, .implausibleFacts, e.message)
            } else {
                XCTFail("registered at slide +0x\(String(delta, radix: 16)) (by digest: \(r.symbols.isEmpty)), an export at 0x\(String(ceiling + delta, radix: 16))")
            }
            XCTAssertNil(v.guests.session("slid"))
        }
    }
}
