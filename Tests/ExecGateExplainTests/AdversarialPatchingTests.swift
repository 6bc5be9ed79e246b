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

    /// Passes (fail closed): a Jcc trampoline. `__static_call_validate(tramp, true, true)` accepts
    /// a trampoline whose first bytes are a Jcc (`0f 8x`, `__is_Jcc()`) when the signature is at
    /// +5, and `__static_call_transform()` then rewrites it as a 6-byte `Jcc func` (over the
    /// signature's first byte; arch/x86/kernel/static_call.c, 6.1.192 and 6.12.117). No build
    /// emits one (ARCH_DEFINE_STATIC_CALL_TRAMP is `jmp func` or `ret`; none of the 3634 `__SCT__`
    /// trampolines of the 4023 Debian 6.1.0-56 modules opens with `0f`), so
    /// `collectModuleTrampolines` takes none for a site: its loaded bytes are its only state. A
    /// claim with the kernel's rewrite (`Jcc func` for a function of the module) is denied at the
    /// displacement, the loaded bytes expected.
    func testJccTrampolineKeepsItsLoadedBytes() throws {
        let f = try FixtureReplay()
        // jne with a displacement whose top byte is the signature's 0f (the Jcc is 6 bytes).
        let c = try craftedTrampoline(f) { _, _ in [0x0f, 0x85, 0x10, 0x20, 0x30] }
        let loaded = try explainer.explain(f, "irqbypass", ko: c.ko, claim: c.claim)
        XCTAssertTrue(loaded.verdict.isAllowed, "\(loaded.verdict)")
        XCTAssertNil(loaded.runtimeSites?.key(at: c.trampoline), "a Jcc trampoline is no run-time site")
        let rel = Int32(truncatingIfNeeded: Int64(bitPattern: c.target &- (c.trampoline &+ 6)))
        let jcc: [UInt8] = [0x0f, 0x85] + (0..<4).map { UInt8(truncatingIfNeeded: rel >> (8 * $0)) }
        var claim = c.claim
        claim.text.replaceSubrange(c.off..<c.off + 6, with: jcc)
        let d = try XCTUnwrap(denial(try explainer.explain(f, "irqbypass", ko: c.ko, claim: claim)))
        XCTAssertEqual(d.address, c.trampoline &+ 2, d.reason)
        XCTAssertEqual(d.expected.first, 0x10, "the loaded displacement: \(d.reason)")
    }
}

// MARK: - module_finalize()'s tables: the last section of each name (arch/x86/kernel/module.c)

final class AdversarialFinalizeTableTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// llc with the section header of `donor` renamed to `name` (its `sh_name` pointed at the
    /// string of the section already called so): two sections of one name, the donor the later.
    func renamed(_ f: FixtureReplay, _ donor: String, to name: String) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let d = try ed.sectionIndex(donor), n = try ed.sectionIndex(name)
        XCTAssertLessThan(n, d, "the donor comes later in the section table")
        ed.put(ed.get(UInt32.self, at: ed.sectionHeader(n)), at: ed.sectionHeader(d))
        let names = try ed.elf { e in e.sections.map(\.name) }
        XCTAssertEqual(names.filter { $0 == name }.count, 2)
        return ed.ko
    }

    /// The real module's claim without section addresses (the guest chooses which it names; the
    /// crafted layouts no longer match the sysfs view of the real one).
    func claim(_ f: FixtureReplay) throws -> ModuleClaim {
        var c = try XCTUnwrap(f.modules["llc"]).module.claim
        c.sectionAddresses = [:]
        return c
    }

    /// Was a HOLE (fixed: `Session.refuseAmbiguousFinalizeTables`): `module_finalize()` (arch/x86/
    /// kernel/module.c, Debian 6.1.192 and 6.12.117) finds `.return_sites`, `.retpoline_sites`,
    /// `.altinstructions`, `.smp_locks`, ... by a scan of every section header that keeps the
    /// *last* section of each name (no SHF_ALLOC test), while the replay read the *first*
    /// (`find_sec()`'s rule, which only the generic loader's tables follow). llc crafted with its
    /// `.retpoline_sites` header renamed `.return_sites`: the kernel patches no return at all (the
    /// entries it reads name retpoline calls: "missing return thunk", left alone) and no retpoline
    /// (the table is gone), while the replay patched every return of the first table, so the
    /// real module's end state (returns patched) was allowed for a module whose returns the
    /// kernel never touches. Now two sections of one such name are a named denial (never built).
    func testSecondReturnSitesTableIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try renamed(f, ".retpoline_sites", to: ".return_sites")
        // The kernel's bytes at the return sites differ from the real end state's: it leaves
        // them as relocated (`jmp __x86_return_thunk`).
        let s = try f.session("llc")
        let real = try XCTUnwrap(f.modules["llc"]).module.claim
        let rtx = try XCTUnwrap(s.returnThunkExport)
        XCTAssertTrue(try s.returnSites.contains { r in Array(real.text[r.off..<r.off + 5]) != (try XCTUnwrap(genInsn(0xe9, at: r.addr, to: rtx))) },
                      "the real end state patched its returns")
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko, claim: try claim(f))), "the real end state for the crafted module")
        XCTAssertEqual(d.rule, .loader, d.reason)
        XCTAssertTrue(d.reason.contains("2 sections named .return_sites"), d.reason)
        XCTAssertTrue(d.reason.contains("module_finalize()"), d.reason)
    }

    /// The same for `.smp_locks` (a second table, here the return sites' header renamed): the
    /// kernel unlocks (or tracks) only the last table's prefixes.
    func testSecondSMPLocksTableIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try renamed(f, ".return_sites", to: ".smp_locks")
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ko, claim: try claim(f))))
        XCTAssertEqual(d.rule, .loader, d.reason)
        XCTAssertTrue(d.reason.contains("2 sections named .smp_locks"), d.reason)
    }

    /// A table that is not SHF_ALLOC: the kernel still takes it (module_finalize() does not look
    /// at the flags) and reads it at its `sh_addr`, which for a section the loader does not copy is
    /// the temporary copy of the file (`rewrite_section_headers()`), unrelocated
    /// (`apply_relocations()` skips sections without SHF_ALLOC). Not modelled: denied.
    func testUnallocatedReturnSitesTableIsDenied() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["llc"]).module.ko)
        let i = try ed.sectionIndex(".return_sites")
        ed.put(UInt64(0), at: ed.sectionHeader(i) + 8)  // sh_flags: no SHF_ALLOC
        let d = try XCTUnwrap(denial(try explainer.explain(f, "llc", ko: ed.ko, claim: try claim(f))))
        XCTAssertEqual(d.rule, .loader, d.reason)
        XCTAssertTrue(d.reason.contains(".return_sites is not allocated"), d.reason)
    }
}

// MARK: - Run-time sites that share bytes

final class AdversarialOverlappingSiteTests: XCTestCase {
    /// Was a HOLE (fixed: `Session.refuseOverlappingSites`): two run-time sites that share bytes.
    /// test_static_keys crafted so that its old_true_key entry names a 5-byte site at `.text+0`
    /// loaded as `jmp T1` (`e9 eb 10 00 00`, T1 chosen so), and its old_false_key entry a 2-byte
    /// site at `.text+1` — the same bytes read as `jmp8 T2` (`eb 10`). Each site is legal on its
    /// own, so the module was allowed, and the run-time table judged each patch against its own
    /// site only: NOP5 at the first, then `jmp8 T2` at the second (`0f eb 10 00 00`, a byte
    /// sequence no rule holds). The kernel never writes that: `__jump_label_patch()` compares the
    /// site with the encoding it replaces (`memcmp(addr, expect, size)`) and BUGs on anything
    /// else, so after the first write the second key can no longer be flipped; the verifier has
    /// no current bytes to compare. No build emits overlapping sites (one instruction, one
    /// site): now denied at load.
    func testOverlappingJumpLabelSitesAreDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["test_static_keys"])
        var ed = KoEditor(ko: e.module.ko)
        let text = try ed.sectionIndex(".text")
        let textFile = try ed.elf { $0.sections[text].fileRange.lowerBound }
        // `.text+0..5`: the old_true_key site (66 90) and `mov $1, %eax` (no relocation).
        XCTAssertEqual(Array(ed.ko[textFile..<textFile + 7]), [0x66, 0x90, 0xb8, 0x01, 0x00, 0x00, 0x00])
        ed.ko.replaceSubrange(textFile..<textFile + 5, with: [0xe9, 0xeb, 0x10, 0x00, 0x00])
        let recs = try ed.relocations(for: "__jump_table"), r = try ed.rela(for: "__jump_table")
        func record(at field: Int) throws -> Int { try XCTUnwrap(recs.firstIndex { Int($0.offset) == field }, "record at \(field)") }
        // Entry 0 (old_true_key): code .text+0, target .text+5+0x10eb. Entry 1 (old_false_key):
        // code .text+1, target .text+3+0x10.
        XCTAssertEqual(recs[try record(at: 0)].addend, 0)
        ed.put(Int64(5 + 0x10eb), at: r.at + 24 * (try record(at: 4)) + 16)
        ed.put(Int64(1), at: r.at + 24 * (try record(at: 16)) + 16)
        ed.put(Int64(3 + 0x10), at: r.at + 24 * (try record(at: 20)) + 16)
        var claim = e.module.claim
        // The loader's image (the stages before the run-time sites, which write nothing) and the
        // jump-label sites it has.
        let s = try ed.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: claim, facts: f.boot.facts, resolver: e.before)
            try s.checkModinfo(); try s.relocate(); try s.verifyExportedSymbols(); try s.applyBootTimePatching(); try s.addJumpLabels()
            return s
        }
        claim.text = s.image
        let a = claim.textBase
        XCTAssertEqual(s.jumpSites.filter { $0.code == a || $0.code == a + 1 }.map(\.size).sorted(), [2, 5], "two sites sharing bytes")
        let res = try CraftedExplainer().explain(f, "test_static_keys", ko: ed.ko, claim: claim)
        if let t = res.runtimeSites {
            // What the run-time table then let through: NOP5 over the first site, then the second
            // site's jump into its middle.
            XCTAssertEqual(t.check(address: a, bytes: x86Nops[5]), .allowed(kind: "jump label (key 0x\(String(try XCTUnwrap(t.key(at: a)), radix: 16)))", state: t.state(address: a, bytes: x86Nops[5])!))
            guard case .allowed = t.check(address: a + 1, bytes: [0xeb, 0x10]) else { return XCTFail("the second site's jump") }
        }
        let d = try XCTUnwrap(denial(res), "overlapping run-time sites allowed")
        XCTAssertEqual(d.rule, .jumpLabel, d.reason)
        XCTAssertEqual(d.address, a + 1)
        XCTAssertTrue(d.reason.contains("shares bytes with"), d.reason)
    }
}
