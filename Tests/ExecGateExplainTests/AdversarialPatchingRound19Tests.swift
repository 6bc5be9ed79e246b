// SPDX-License-Identifier: Apache-2.0
//
// White-box review (session 19, wb5) of the explainer's patching stages against the kernel
// sources they mirror (Debian linux-source-6.1 6.1.192; 6.12.117 where named): the variable
// sites' accepted encodings (RuntimeSites.swift VariableSite.check) and the trust they draw on
// (StaticCallTrust.swift). Inputs are the real signed Debian modules of the shared reference
// corpus (`../shared/corpus` beside the repository; the class is skipped without it) with claims
// a hostile guest chooses.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class AdversarialPatchingRound19Tests: XCTestCase {
    /// The shared corpus's `nokaslr-a` boot replayed up to (not including) `name`: the module,
    /// the boot, and the resolver it is explained against.
    func replayUpTo(_ name: String) throws -> (CapturedModule, CaptureBoot, SymbolResolver) {
        let corpus = ExplainCorpusDigestTests.corpusRoot()
        guard FileManager.default.fileExists(atPath: corpus + "/load-order.txt") else {
            throw XCTSkip("shared reference corpus not present at \(corpus)")
        }
        let boot = try CaptureBoot.load(corpus + "/nokaslr-a")
        var r = CaptureReplay(boot: boot)
        for n in boot.availableModules {
            let m = try boot.module(n)
            if n == name { return (m, boot, r.resolver) }
            XCTAssertTrue(r.step(m).result.verdict.isAllowed, "\(n) is allowed")
        }
        throw XCTSkip("\(name) not in the corpus boot")
    }

    func explain(_ m: CapturedModule, facts: GuestFacts, resolver: SymbolResolver) throws -> ExplainResult {
        try m.ko.withUnsafeBytes { raw in Explainer(facts: facts).explain(elf: try ELFFile(bytes: raw), claim: m.claim, resolver: resolver) }
    }

    /// `X86_FEATURE_AVX` (arch/x86/include/asm/cpufeatures.h, 6.1 and 6.12: word 4, bit 28).
    static let avx = 4 * 32 + 28

    /// HOLE: aesni_intel's own key `aesni_ctr_enc_tfm` trusted `aesni_ctr_enc_avx_tfm` on every
    /// CPU (StaticCallTrust.moduleUpdates), but the only writer of that target is `aesni_init()`
    /// (arch/x86/crypto/aesni-intel_glue.c, 6.1.192 and 6.12.117): `if
    /// (boot_cpu_has(X86_FEATURE_AVX)) static_call_update(aesni_ctr_enc_tfm,
    /// aesni_ctr_enc_avx_tfm)`. On a CPU without AVX the key keeps its default (`aesni_ctr_enc`)
    /// for good; a guest claiming the trampoline `jmp aesni_ctr_enc_avx_tfm` there (the corpus's
    /// end state, taken on an AVX CPU) was explained though no kernel writes it on that CPU.
    func testAesniAvxCtrTargetNeedsAVX() throws {
        let (m, boot, resolver) = try replayUpTo("aesni_intel")
        XCTAssertTrue(boot.facts.has(Self.avx), "the corpus CPU (TCG max) has AVX")
        XCTAssertTrue(try explain(m, facts: boot.facts, resolver: resolver).verdict.isAllowed, "the honest end state on the AVX CPU")
        var noAVX = boot.facts
        noAVX.capabilities[Self.avx / 32] &= ~(UInt32(1) << UInt32(Self.avx % 32))
        let r = try explain(m, facts: noAVX, resolver: resolver)
        guard case .denied(let d) = r.verdict else {
            return XCTFail("the AVX CTR transform at aesni_ctr_enc_tfm's sites was explained on a CPU without AVX")
        }
        XCTAssertEqual(d.rule, .stage(.staticCall), "\(d)")
        XCTAssertTrue(d.reason.contains("aesni") || d.reason.contains("not a legal encoding") || d.reason.contains("static"), "\(d)")
    }

    /// Failed attack kept: on the AVX CPU both targets are legal for `aesni_ctr_enc_tfm`, but
    /// `__static_call_update()` rewrites the trampoline and every site of the key together
    /// (kernel/static_call_inline.c): the trampoline left at the AVX transform with the inline
    /// site moved back to the default `aesni_ctr_enc` (or the other way round) is a key in two
    /// states. Denied (Comparison: state disagrees with other sites of the same key).
    func testAesniKeySplitBetweenTrampolineAndSiteIsDenied() throws {
        let (m, boot, resolver) = try replayUpTo("aesni_intel")
        let s = try m.ko.withUnsafeBytes { raw -> Session in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: m.claim, facts: boot.facts, resolver: resolver)
            try s.run()
            return s
        }
        // The module's own key (the one with a trampoline) and its inline call site.
        let tramp = try XCTUnwrap(s.trampolineSites.first { s.trampolineKey($0.addr) != nil }, "aesni_ctr_enc_tfm's trampoline")
        let key = try XCTUnwrap(s.trampolineKey(tramp.addr))
        let call = try XCTUnwrap(s.staticSites.first { $0.key == key && !$0.tail }, "an inline call site of the key")
        let targets = try XCTUnwrap(s.ownKeyDefaults[key])
        XCTAssertEqual(targets.count, 2, "default and AVX transform")
        let now = try XCTUnwrap(m.claim.text.withUnsafeBytes { rel32Destination(UnsafeRawBufferPointer(rebasing: $0[call.off..<call.off + 5]), operandAt: 1, site: call.addr, length: 5) })
        let other = try XCTUnwrap(targets.first { $0 != now })
        var text = m.claim.text
        text.replaceSubrange(call.off..<call.off + 5, with: try XCTUnwrap(genInsn(0xe8, at: call.addr, to: other)))
        var c = m.claim
        c.text = text
        let r = try m.ko.withUnsafeBytes { raw in Explainer(facts: boot.facts).explain(elf: try ELFFile(bytes: raw), claim: c, resolver: resolver) }
        guard case .denied(let d) = r.verdict else { return XCTFail("a key in two states was explained") }
        XCTAssertTrue(d.reason.contains("disagrees"), "\(d)")
        // The denial lands on the later of the two sites and names the earlier one, whose state
        // the key took: either may be the changed one, and the reader sees both.
        let (first, second) = (min(tramp.addr, call.addr), max(tramp.addr, call.addr))
        XCTAssertTrue(d.address >= second && d.address < second + 5, "\(d)")
        XCTAssertTrue(d.reason.contains("site at 0x\(String(first, radix: 16))"), "\(d)")
    }
}

/// Failed attacks kept (session 19, wb5): encodings a guest may choose at each kind of variable
/// site, judged by the rule itself (`VariableSite.check`) against what the kernel function that
/// writes the site can produce. Each is denied.
final class VariableSiteEncodingRound19Tests: XCTestCase {
    let site: UInt64 = 0xffff_ffff_c012_3450
    let trusted: UInt64 = 0xffff_ffff_8110_0000
    let untrusted: UInt64 = 0xffff_ffff_8110_0040
    let ret0: UInt64 = 0xffff_ffff_8120_0000
    let thunk: UInt64 = 0xffff_ffff_8230_0000       // x86_return_thunk
    let scReturn: UInt64 = 0xffff_ffff_8120_0100    // __static_call_return

    func enc(_ op: [UInt8], _ at: UInt64, _ len: Int, _ to: UInt64) -> [UInt8] {
        let d = Int32(truncatingIfNeeded: Int64(bitPattern: to &- (at &+ UInt64(len))))
        return op + withUnsafeBytes(of: d.littleEndian) { Array($0) }
    }

    /// alternatives_smp_lock()/alternatives_smp_unlock() (6.1.192, 6.12.117 alternative.c) write
    /// only `f0` and `3e`: every other byte at a lock site (another segment prefix, `f2`/`f3`,
    /// REX, a NOP) is denied.
    func testSMPLockSiteTakesOnly3eOrF0() {
        let s = VariableSite(offset: 0, length: 1, cls: .smpLock, group: Session.smpLockGroup, label: .smpLock, rule: .smpLock)
        for b in 0...255 {
            let st = s.check([UInt8(b)])
            switch b {
            case 0x3e: XCTAssertEqual(st, 0)
            case 0xf0: XCTAssertEqual(st, 1)
            default: XCTAssertNil(st, "byte 0x\(String(b, radix: 16)) at a lock site")
            }
        }
        XCTAssertNil(s.check([0xf0, 0x90]), "two bytes at a one-byte site")
    }

    /// __static_call_transform() (6.1.192 and 6.12.117 static_call.c) for a call site: CALL func,
    /// NOP5 for NULL, `2e 2e 2e 31 c0` for __static_call_return0, never `call
    /// __static_call_return0`, never a JMP (a tail form) or the older `66 66 48 31 c0`.
    func testCallSiteForms() {
        let s = VariableSite(offset: 0, length: 5, cls: .staticCall, group: 0xffff_ffff_8300_0000, label: .staticCall,
                             rule: .staticCall(site: site, tail: false, retForm: SiteBytes([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), ret0: ret0,
                                               trusted: TargetList([trusted, ret0])))
        XCTAssertEqual(s.check(enc([0xe8], site, 5, trusted)), trusted)
        XCTAssertEqual(s.check(x86Nops[5]), 0)
        XCTAssertEqual(s.check([0x2e, 0x2e, 0x2e, 0x31, 0xc0]), ret0)
        XCTAssertNil(s.check(enc([0xe8], site, 5, ret0)), "call __static_call_return0: the kernel writes xor5rax")
        XCTAssertNil(s.check(enc([0xe9], site, 5, trusted)), "a jmp at a call site")
        XCTAssertNil(s.check(enc([0xe8], site, 5, untrusted)))
        XCTAssertNil(s.check([0x66, 0x66, 0x48, 0x31, 0xc0]), "the pre-5.12 xor form")
        XCTAssertNil(s.check([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), "RET at a call site")
        XCTAssertNil(s.check([0x66, 0x66, 0x66, 0x66, 0x90]), "another 5-byte NOP than x86_nops[5]")
        // Without __static_call_return0 known, xor5rax is no state of the key.
        let n = VariableSite(offset: 0, length: 5, cls: .staticCall, group: 0xffff_ffff_8300_0000, label: .staticCall,
                             rule: .staticCall(site: site, tail: false, retForm: SiteBytes([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), ret0: nil,
                                               trusted: TargetList([trusted])))
        XCTAssertNil(n.check([0x2e, 0x2e, 0x2e, 0x31, 0xc0]))
    }

    /// A tail site: JMP func or the RET form (`jmp x86_return_thunk` when the CPU wants return
    /// thunks); never a CALL, never a bare `ret` when the RET form is the thunk jump.
    func testTailSiteForms() {
        let retForm = SiteBytes(enc([0xe9], site, 5, thunk))
        let s = VariableSite(offset: 0, length: 5, cls: .staticCall, group: 0xffff_ffff_8300_0000, label: .staticCallTail,
                             rule: .staticCall(site: site, tail: true, retForm: retForm, ret0: ret0, trusted: TargetList([trusted, ret0])))
        XCTAssertEqual(s.check(enc([0xe9], site, 5, trusted)), trusted)
        XCTAssertEqual(s.check(retForm.array), 0)
        XCTAssertEqual(s.check(enc([0xe9], site, 5, ret0)), ret0, "JMP __static_call_return0 (no xor form for a tail)")
        XCTAssertNil(s.check([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), "bare RET on a return-thunk CPU")
        XCTAssertNil(s.check(enc([0xe8], site, 5, trusted)), "a call at a tail site")
        XCTAssertNil(s.check(x86Nops[5]), "NOP5 at a tail site")
        XCTAssertNil(s.check([0x2e, 0x2e, 0x2e, 0x31, 0xc0]), "xor5rax at a tail site (the kernel jumps to return0)")
        XCTAssertNil(s.check(enc([0xe9], site, 5, untrusted)))
    }

    /// The JCC case: `0f <op> rel32` with the loaded condition `op`, to func or, for NULL, to
    /// the null target (x86_return_thunk with RETHUNK, else __static_call_return); never another
    /// condition, never the other null target, never an untrusted one.
    func testJccTailSiteForms() {
        let s = VariableSite(offset: 0, length: 6, cls: .staticCall, group: 0xffff_ffff_8300_0000, label: .staticCallJccTail,
                             rule: .staticCallJcc(site: site, op: 0x85, nullTarget: thunk, trusted: TargetList([trusted, ret0]), orig: [0x0f, 0x85, 0, 0, 0, 0]))
        XCTAssertEqual(s.check(enc([0x0f, 0x85], site, 6, trusted)), trusted)
        XCTAssertEqual(s.check(enc([0x0f, 0x85], site, 6, thunk)), 0)
        XCTAssertNil(s.check(enc([0x0f, 0x84], site, 6, trusted)), "the inverted condition")
        XCTAssertNil(s.check(enc([0x0f, 0x85], site, 6, scReturn)), "__static_call_return on a RETHUNK CPU")
        XCTAssertNil(s.check(enc([0x0f, 0x85], site, 6, untrusted)))
        XCTAssertNil(s.check([0x75, 0x04] + [0xe9, 0, 0, 0]), "a Jcc.d8 over a jmp")
    }

    /// __jump_label_patch() (6.1.192 and 6.12.117 jump_label.c) writes `x86_nops[size]` or
    /// `text_gen_insn(JMP8/JMP32, code, target)` for the size the site decodes to: never the
    /// other jump size, another NOP, or a jump elsewhere.
    func testJumpLabelSiteForms() throws {
        let target = site &+ 0x40
        let jmp5 = try XCTUnwrap(genInsnBytes(0xe9, at: site, to: target))
        let s = VariableSite(offset: 0, length: 5, cls: .jumpLabel, group: 0xffff_ffff_8300_0000, label: .jumpLabel,
                             rule: .jumpLabel(nop: SiteBytes(x86Nops[5]), jmp: jmp5, branch: 0))
        XCTAssertEqual(s.check(x86Nops[5]), 0)
        XCTAssertEqual(s.check(jmp5.array), 1)
        XCTAssertNil(s.check([0xeb, 0x3e] + x86Nops[3]), "jmp8 to the same target in a 5-byte site")
        XCTAssertNil(s.check(enc([0xe9], site, 5, target &+ 1)), "a jump one byte on")
        XCTAssertNil(s.check(enc([0xe8], site, 5, target)), "a call to the target")
        XCTAssertNil(s.check([0x66, 0x66, 0x66, 0x66, 0x90]), "another 5-byte NOP")
        let jmp2 = try XCTUnwrap(genInsnBytes(0xeb, at: site, to: target))
        let t = VariableSite(offset: 0, length: 2, cls: .jumpLabel, group: 0xffff_ffff_8300_0000, label: .jumpLabel,
                             rule: .jumpLabel(nop: SiteBytes(x86Nops[2]), jmp: jmp2, branch: 1))
        XCTAssertEqual(t.check(x86Nops[2]), 1, "NOP: enabled == branch default")
        XCTAssertEqual(t.check(jmp2.array), 0)
        XCTAssertNil(t.check([0x90, 0x90]), "two one-byte NOPs")
        XCTAssertNil(t.check([0x75, 0x3e]), "a conditional jump")
    }

    /// arch_static_call_transform() on a trampoline: JMP func or the RET form only.
    func testTrampolineForms() {
        let retForm = SiteBytes(enc([0xe9], site, 5, thunk))
        let s = VariableSite(offset: 0, length: 5, cls: .staticCall, group: 0xffff_ffff_c020_0000, label: .trampoline,
                             rule: .trampoline(site: site, retForm: retForm, trusted: TargetList([trusted])))
        XCTAssertEqual(s.check(enc([0xe9], site, 5, trusted)), trusted)
        XCTAssertEqual(s.check(retForm.array), 0)
        XCTAssertNil(s.check(enc([0xe8], site, 5, trusted)), "a call in a trampoline")
        XCTAssertNil(s.check([0xc3, 0xcc, 0xcc, 0xcc, 0xcc]), "bare RET on a return-thunk CPU")
        XCTAssertNil(s.check(enc([0xe9], site, 5, untrusted)))
        XCTAssertNil(s.check(enc([0x0f, 0x85], site, 6, trusted).prefix(5).map { $0 }), "a Jcc head")
    }
}
