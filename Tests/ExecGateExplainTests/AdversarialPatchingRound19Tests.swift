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
}
