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
}
