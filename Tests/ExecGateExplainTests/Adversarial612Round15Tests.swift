// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 15) of the Debian 6.12 loader replay against Debian's 6.12.117 sources
// (linux-source-6.12 6.12.117-1~deb12u1: arch/x86/kernel/alternative.c, static_call.c,
// kernel/module/main.c) and the compiler Debian built them with (gcc 12.2.0). Inputs are real
// 6.12 modules (Loader612Tests.module612) edited with KoEditor; the expected outcome is what the
// kernel's code does with the edited module.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class Adversarial612Round15Tests: XCTestCase {
    /// HOLE: patch_retpoline() (6.12 and 6.1 arch/x86/kernel/alternative.c) finds the register
    /// as a C pointer difference, `reg = target - __x86_indirect_thunk_array` over 32-byte
    /// `retpoline_thunk_t`, which gcc 12.2 compiles to `sub; sar $5`: a floor. A site whose call
    /// target lies 1..31 bytes *before* the thunk array gets reg = -1, so `WARN_ON_ONCE(reg &
    /// ~0xf)` leaves it alone. The replay divided with truncation (`diff / 32` = 0) and rewrote
    /// the site as `call *%rax` on a CPU without X86_FEATURE_RETPOLINE: an indirect call no
    /// kernel writes there was explained, and the kernel's bytes (the untouched call) refused.
    /// tun with one `.retpoline_sites` call's relocation addend made -5 (target
    /// `__x86_indirect_thunk_rax - 1`).
    func testRetpolineTargetJustBeforeTheThunkArrayIsLeftAlone() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        let names = try ed.symbolNames()
        let textRela = try ed.rela(for: ".text")
        let textRelocs = try ed.relocations(for: ".text")
        let sites = try ed.relocations(for: ".retpoline_sites")
        let text = try ed.elf { $0.sections[try ed.sectionIndex(".text")].fileRange.lowerBound }
        var chosen: (j: Int, off: Int)? = nil
        for r in sites where names[r.symbolIndex] == "" || names[r.symbolIndex] == ".text" {
            let off = Int(r.addend)
            guard ed.ko[text + off] == 0xe8,
                  let j = textRelocs.firstIndex(where: { $0.offset == UInt64(off + 1) }), names[textRelocs[j].symbolIndex] == "__x86_indirect_thunk_rax",
                  textRelocs[j].addend == -4 else { continue }
            chosen = (j, off)
            break
        }
        let (j, off) = try XCTUnwrap(chosen, "tun has a `call __x86_indirect_thunk_rax` retpoline site")
        ed.put(Int64(-5), at: textRela.at + 24 * j + 16)
        let thunks: UInt64 = 0xffff_ffff_8280_0000
        // No X86_FEATURE_RETPOLINE: patch_retpoline() would inline `call *%reg` for reg 0..15.
        let s = try Adversarial612Round11Tests.replay612(ed.ko, name: "tun", caps: [Loader612Tests.always], thunks: thunks)
        let site = s.base &+ UInt64(off)
        let rel = Int32(truncatingIfNeeded: Int64(bitPattern: (thunks &- 1) &- (site &+ 5)))
        let untouched: [UInt8] = [0xe8] + withUnsafeBytes(of: rel.littleEndian) { Array($0) }
        XCTAssertEqual(Array(s.image[off..<(off + 5)]), untouched,
                       "reg = (thunk_array - 1 - thunk_array) >> 5 = -1: WARN_ON_ONCE(reg & ~0xf), the site is left as relocated")
    }
}
