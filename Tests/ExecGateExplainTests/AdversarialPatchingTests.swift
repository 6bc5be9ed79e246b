// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the boot-time and run-time patching rules (a module's own static-call
// trampolines, init text, alternatives, return / retpoline sites, ENDBR sealing, paravirt, SMP
// locks, ftrace). The guest chooses every byte of a claim; a crafted module stands for one a
// trusted key holder signed (the signature is a separate layer: unsigned crafted copies of the
// real signed Debian modules are fine here, as in AdversarialExplainTests).
//
// Each test names the attack. A test that passes documents an attack that fails, and says why
// (the rule and the kernel function it mirrors). A test marked HOLE asserts the kernel's behaviour
// and failed while the hole was open; its comment then says where it was fixed.
// Inputs: the committed fixture capture (9 modules of a Debian 6.1.0-56 boot with their facts);
// kernel sources: Debian's linux-source-6.1 (6.1.192) and linux-source-6.12 (6.12.117).

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

// MARK: - A module's own static-call trampoline (collectModuleTrampolines)

final class AdversarialTrampolineTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// irqbypass crafted with a trampoline of its own: `__SCT__z` over 8 bytes of `.text` no stage
    /// touches, holding `first` (5 bytes) then the trampoline signature `ud1 %esp, %ecx` (0f b9
    /// cc), and its key `__SCK__z` in the module's own `.data` (a real own key). Returns the
    /// crafted module, the honest claim (the real end state with those 8 bytes as compiled: no
    /// stage writes them) and the trampoline.
    func craftedTrampoline(_ f: FixtureReplay, first: (UInt64, UInt64) throws -> [UInt8])
        throws -> (ko: [UInt8], claim: ModuleClaim, trampoline: UInt64, off: Int, target: UInt64, session: Session) {
        let e = try XCTUnwrap(f.modules["irqbypass"])
        let s = try f.session("irqbypass")
        let elfClass = UInt8(ExplanationClass.elf.rawValue)
        let p = try XCTUnwrap((0..<s.cls.count - 8).first { o in s.cls[o..<o + 8].allSatisfy { $0 == elfClass } })
        let tramp = e.module.claim.textBase &+ UInt64(p)
        let target = try XCTUnwrap(s.functionEntries.sorted.first { $0 > tramp &+ 8 }, "an own function after the trampoline")
        let insn = try first(tramp, target)
        XCTAssertEqual(insn.count, 5)
        var ed = KoEditor(ko: e.module.ko)
        let text = try ed.sectionIndex(".text")
        let textFile = try ed.elf { $0.sections[text].fileRange.lowerBound }
        ed.ko.replaceSubrange(textFile + p ..< textFile + p + 8, with: insn + [0x0f, 0xb9, 0xcc])
        let t = try ed.symbolIndex("__UNIQUE_ID_depends198"), key = try ed.symbolIndex("__crc_irq_bypass_register_producer")
        try ed.rename(t, to: "__SCT__z")
        try ed.setSymbol(t, shndx: UInt16(text), value: UInt64(p))
        try ed.rename(key, to: "__SCK__z")
        try ed.setSymbol(key, shndx: UInt16(try ed.sectionIndex(".data")), value: 0)
        var claim = e.module.claim
        let (image, session) = try loaderImage(ed.ko, claim, f.boot.facts, e.before)
        XCTAssertEqual(Array(image[p..<p + 8]), insn + [0x0f, 0xb9, 0xcc], "the loader leaves the crafted trampoline as compiled")
        claim.text.replaceSubrange(p..<p + 8, with: insn + [0x0f, 0xb9, 0xcc])
        return (ed.ko, claim, tramp, p, target, session)
    }

    /// Control: a trampoline compiled as `jmp func` (ARCH_DEFINE_STATIC_CALL_TRAMP) is a run-time
    /// site: `static_call_update()` may make it the RET form (NULL) — allowed, as the kernel does.
    func testJumpTrampolineMayBecomeItsRetForm() throws {
        let f = try FixtureReplay()
        let c = try craftedTrampoline(f) { a, t in try XCTUnwrap(genInsn(0xe9, at: a, to: t)) }
        XCTAssertTrue(try explainer.explain(f, "irqbypass", ko: c.ko, claim: c.claim).verdict.isAllowed, "the loader's image")
        var ret = c.claim
        let form = try XCTUnwrap(c.session.retInstruction(at: c.trampoline)?.padded(to: 5, with: 0xcc).array)
        ret.text.replaceSubrange(c.off..<c.off + 5, with: form)
        let r = try explainer.explain(f, "irqbypass", ko: c.ko, claim: ret)
        XCTAssertTrue(r.verdict.isAllowed, "\(r.verdict)")
        XCTAssertNotNil(r.runtimeSites?.key(at: c.trampoline), "the trampoline is a run-time site of its key")
    }

    /// Was a HOLE (fixed: `collectModuleTrampolines` takes a `__SCT__` symbol as a trampoline
    /// only when its loaded first byte is one `__static_call_validate()` accepts): a `__SCT__`
    /// symbol over a *call* followed by the ud1 signature was taken for a trampoline (only the
    /// signature at +5 was checked), so the claim could turn the call into the RET form (or a jmp
    /// to `__static_call_return0`): the call silently skipped. No kernel writes that:
    /// `arch_static_call_transform()` runs `__static_call_validate(tramp, true, true)` before
    /// every rewrite of a trampoline, and it BUGs unless the signature is there *and* the first
    /// byte is JMP32 (e9), RET (c3) or a Jcc (0f 8x) (arch/x86/kernel/static_call.c, identical in
    /// Debian 6.1.192 and 6.12.117). So such a `__SCT__` is never patched: its loaded bytes are
    /// its only state.
    func testTrampolineOverACallCannotBecomeARet() throws {
        let f = try FixtureReplay()
        let c = try craftedTrampoline(f) { a, t in try XCTUnwrap(genInsn(0xe8, at: a, to: t)) }
        XCTAssertTrue(try explainer.explain(f, "irqbypass", ko: c.ko, claim: c.claim).verdict.isAllowed, "the loader's image")
        let ret0 = try XCTUnwrap(f.boot.facts.staticCallReturn0)
        let forms: [(String, [UInt8])] = [
            ("RET form", try XCTUnwrap(c.session.retInstruction(at: c.trampoline)?.padded(to: 5, with: 0xcc).array)),
            ("jmp __static_call_return0", try XCTUnwrap(genInsn(0xe9, at: c.trampoline, to: ret0))),
        ]
        for (what, bytes) in forms {
            var claim = c.claim
            claim.text.replaceSubrange(c.off..<c.off + 5, with: bytes)
            guard let d = denial(try explainer.explain(f, "irqbypass", ko: c.ko, claim: claim)) else { continue }
            XCTAssertEqual(d.address, c.trampoline, "\(what): \(d.reason)")
            XCTAssertEqual(d.found.first, bytes[0], what)
            XCTAssertEqual(d.expected.first, 0xe8, "\(what): the call, as loaded")
        }
    }
}
