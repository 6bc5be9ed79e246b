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
}
