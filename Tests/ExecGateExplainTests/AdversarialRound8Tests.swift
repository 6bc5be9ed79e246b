// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review, round 8: the replay of ftrace's load-time NOPs when a `__mcount_loc` entry
// is bad, and 6.12 `.call_sites` (call-depth tracking). A crafted module stands for one a trusted
// key holder signed (unsigned crafted copies of the real signed Debian modules, as in
// AdversarialFinalizeSiteTests). Kernel sources: Debian's linux-source-6.1 (6.1.192) and
// linux-source-6.12 (6.12.117): kernel/trace/ftrace.c, arch/x86/kernel/module.c, callthunks.c.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class AdversarialRound8Tests: XCTestCase {
    let explainer = CraftedExplainer()

    /// 8021q with its `__mcount_loc` entry `k` (in table order) moved `delta` bytes on (its RELA
    /// record's addend).
    func mcountMoved(_ f: FixtureReplay, entry k: Int, by delta: Int64) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["8021q"]).module.ko)
        let r = try ed.rela(for: "__mcount_loc")
        let recs = try ed.relocations(for: "__mcount_loc")
        let i = try XCTUnwrap(recs.firstIndex { $0.offset == UInt64(8 * k) }, "__mcount_loc entry \(k)'s record")
        let at = r.at + 24 * i + 16
        ed.put(ed.get(Int64.self, at: at) + delta, at: at)
        return ed.ko
    }

    /// HOLE (round 8, lead 3; Sources/ExecGateExplain is the integrator's: the fix is his).
    /// Attack: a `__mcount_loc` entry inside the module's text but not at a `call __fentry__`
    /// (an 8021q entry moved one byte on, into the call's rel32; in .text and in .init.text). The replay skips it
    /// (`applyFtrace`: "ftrace_bug(): the kernel leaves the site alone and disables ftrace") and
    /// goes on to NOP every other site. The kernel does not go on: ftrace_module_init() →
    /// ftrace_process_locs() sorts the module's addresses and ftrace_update_code() hands each to
    /// ftrace_nop_initialize() → ftrace_init_nop() → ftrace_make_nop(), whose
    /// ftrace_verify_code() fails (-EINVAL); ftrace_nop_initialize() then calls ftrace_bug(),
    /// which ends in FTRACE_WARN_ON_ONCE(1) → WARN + ftrace_kill() (ftrace_disabled = 1), and
    /// ftrace_update_code() stops at once ("If something went wrong, bail without enabling
    /// anything"), 6.1.192 and 6.12.117 kernel/trace/ftrace.c. So every site after the bad one
    /// in address order keeps `call __fentry__`, ftrace is dead guest-wide (and a WARN panics a
    /// panic_on_warn guest), and every later module's sites stay calls too (its
    /// ftrace_update_code() returns at its first record): the replay's end state is not the
    /// kernel's, for this module and for every module after it. Never built (recordmcount/objtool
    /// emit only `call __fentry__` sites). The fix: in `applyFtrace`, a non-NULL entry inside the
    /// session's region whose 5 bytes are not `call __fentry__` (with `__fentry__` known) is a
    /// denial of the ftrace stage naming ftrace_bug()/ftrace_kill(), not a `continue`; and one in
    /// the other region's executable section (init text seen from the core session, where
    /// `execOffset` is nil) is denied unless its signed byte is `e8` and a relocation record of
    /// `__fentry__` (R_X86_64_PLT32/PC32, addend -4) writes the 4 bytes after it (the rel32 depends
    /// on the init placement the claim may not hold).
    func testMcountEntryOverNonCallTextIsDenied() throws {
        let f = try FixtureReplay()
        XCTAssertTrue(try XCTUnwrap(f.modules["8021q"]).result.verdict.isAllowed, "the real module is allowed")
        // Entry 1 is in .text (the core session's region); entry 0 is in .init.text (8021q's
        // init function), which a core-only claim does not hold: the kernel processes both
        // (ftrace_process_locs() records every non-NULL address of the module, sorted), so a bad
        // init site stops ftrace all the same.
        for (k, region) in [(1, ".text"), (0, ".init.text")] {
            let ko = try mcountMoved(f, entry: k, by: 1)
            let r = try explainer.explainHonest(f, "8021q", ko)
            guard case .denied(let d) = r.verdict else {
                XCTFail("8021q with __mcount_loc entry \(k) moved into its call in \(region) (not at `call __fentry__`) was allowed: the kernel's ftrace_bug() kills ftrace and leaves every later site a call")
                continue
            }
            XCTAssertEqual(d.rule, .stage(.ftrace), "\(region): \(d.reason)")
            XCTAssertEqual(d.section, "__mcount_loc", "\(region): \(d.reason)")
        }
    }

    // MARK: 6.12 `.call_sites` (callthunks_patch_module_calls())

    /// The 6.12 replay of `edit`ed 8021q up to module_finalize() with capability bits `caps`
    /// (AdversarialFinalizeSiteTests.denial612): the denial, or nil when the replay accepts it.
    func replay612(caps: [Int], _ edit: (inout KoEditor) throws -> Void = { _ in }) throws -> Denial? {
        try AdversarialFinalizeSiteTests.denial612(caps: caps, edit)
    }

    /// Round 8, lead 4 (attack failed; regression test). 6.12 module_finalize() hands `.call_sites`
    /// (and `.altinstructions`) to callthunks_patch_module_calls(), which returns at once unless
    /// `thunks_initialized` (arch/x86/kernel/callthunks.c, 6.12.117): only
    /// callthunks_patch_builtin_calls() sets it, at boot, and only when
    /// cpu_feature_enabled(X86_FEATURE_CALL_DEPTH) (bugs.c forces that bit for `retbleed=stuff`
    /// before alternatives run; nothing clears it), the bit the VMM reads from boot_cpu_data at the
    /// trusted point. Attacks: (1) the guest's facts say call depth is off: the replay must leave
    /// every `.call_sites` call as relocated, as the kernel does (it does: the real module replays,
    /// and a `.call_sites` entry aimed at `__this_module`, module data
    /// the kernel never reads then, changes nothing); (2) the facts say it is on: the kernel
    /// rewrites each call to its destination's call thunk (callthunks_setup() → patch_call()),
    /// which the replay does not model: denied as unmodelled, never replayed as if off.
    func testCallSites612FollowTheCallDepthFact() throws {
        let always = Loader612Tests.always, callDepth = 11 * 32 + 19
        XCTAssertNil(try replay612(caps: [always]), "the real 6.12 module replays with call depth off")
        let intoData: (inout KoEditor) throws -> Void = { ed in
            let r = try ed.rela(for: ".call_sites")
            let k = try XCTUnwrap(try ed.relocations(for: ".call_sites").firstIndex { $0.offset == 0 })
            let type = ed.get(UInt64.self, at: r.at + 24 * k + 8) & 0xffff_ffff
            ed.put(UInt64(try ed.symbolIndex("__this_module")) << 32 | type, at: r.at + 24 * k + 8)
            ed.put(Int64(0), at: r.at + 24 * k + 16)
        }
        XCTAssertNil(try replay612(caps: [always], intoData), "a .call_sites entry the kernel never reads (call depth off) changes nothing")
        for edit in [{ (_: inout KoEditor) in }, intoData] {
            let d = try XCTUnwrap(try replay612(caps: [always, callDepth], edit), "call depth on: the kernel rewrites calls to thunks")
            XCTAssertEqual(d.rule, .loader, d.reason)
            XCTAssertTrue(d.reason.contains("call-depth tracking"), d.reason)
        }
    }
}
