// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 12) of the Debian 6.12 loader replay against Debian's 6.12.117 sources
// (linux-source-6.12 6.12.117-1~deb12u1: kernel/module/main.c, kernel/module/strict_rwx.c,
// arch/x86/kernel/module.c, alternative.c, arch/x86/lib/insn.c and x86-opcode-map.txt,
// kernel/livepatch/core.c). Inputs are real 6.12 modules (Loader612Tests.module612) edited with
// KoEditor; the expected outcome is what the kernel's code does with the edited module.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class Adversarial612Round12Tests: XCTestCase {
    static func replay(_ ko: [UInt8], _ name: String, caps: [Int] = [Loader612Tests.always], runtime: Bool = false) throws -> Session {
        try Adversarial612Round11Tests.replay612(ko, name: name, caps: caps, runtime: runtime)
    }

    static func denial(_ e: Error) -> Denial? { (e as? DenyError)?.denial }

    /// HOLE: layout_and_allocate() → module_enforce_rwx_sections() (kernel/module/strict_rwx.c,
    /// 6.1 and 6.12, CONFIG_STRICT_MODULE_RWX=y in both Debian builds) refuses a module with any
    /// section flagged SHF_WRITE|SHF_EXECINSTR (-ENOEXEC, "has invalid WRITE|EXEC flags"), before
    /// layout. The replay laid such a section out in MOD_TEXT like any `AX` one, so tun with a
    /// writable `.text` (or `.data` made executable: signed data bytes in the executable region)
    /// was explained though no kernel loads it.
    func testWritableExecutableSectionIsRefused() throws {
        let ko = try Loader612Tests.module612("tun")
        XCTAssertNoThrow(try Self.replay(ko, "tun"), "the real module replays")
        for (name, add) in [(".text", UInt64(0x1)), (".data", UInt64(0x4))] {
            var ed = KoEditor(ko: ko)
            let at = ed.sectionHeader(try ed.sectionIndex(name)) + 8
            ed.put(ed.get(UInt64.self, at: at) | add, at: at)
            XCTAssertThrowsError(try Self.replay(ed.ko, "tun"), "\(name) made SHF_WRITE|SHF_EXECINSTR") { e in
                let d = Self.denial(e)
                XCTAssertEqual(d?.rule, .malformedELF)
                XCTAssertTrue(d?.reason.contains("module_enforce_rwx_sections") == true, "\(String(describing: d))")
            }
        }
    }

    /// HOLE: apply_relocations() (kernel/module/main.c, 6.1 and 6.12) hands a relocation section
    /// flagged SHF_RELA_LIVEPATCH (0x00100000) to klp_apply_section_relocs()
    /// (kernel/livepatch/core.c, CONFIG_LIVEPATCH=y), never to apply_relocate_add() directly: a
    /// name that is not `.klp.rela.<object>.…` refuses the module (-EINVAL, "has an incorrectly
    /// formatted name"), and one naming another object than vmlinux is skipped at load (its fields
    /// stay zero until that object loads). The replay applied every SHT_RELA section alike, so
    /// tun with `.rela.text` flagged so was explained (relocated) though the kernel refuses it.
    func testLivepatchRelocationSectionIsRefused() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        let r = try ed.rela(for: ".text")
        let at = ed.sectionHeader(r.index) + 8
        ed.put(ed.get(UInt64.self, at: at) | 0x0010_0000, at: at)
        XCTAssertThrowsError(try Self.replay(ed.ko, "tun")) { e in
            let d = Self.denial(e)
            XCTAssertEqual(d?.rule, .relocation)
            XCTAssertTrue(d?.reason.contains("SHF_RELA_LIVEPATCH") == true, "\(String(describing: d))")
        }
    }

    /// HOLE: the kernel's instruction decoder (arch/x86/lib/insn.c `insn_get_modrm()`: `if
    /// (insn->x86_64 && inat_is_force64(insn->attr)) insn->opnd_bytes = 8`) gives the near
    /// branches `e8`/`e9`/`0f 8x`, which x86-opcode-map.txt marks `Jz (f64)`, a rel32 in 64-bit
    /// mode whatever an operand-size prefix says (`__get_immv32()`: 8 → 4 bytes), as Intel CPUs
    /// execute them. The replay's decoder read `66 e9` as a 4-byte `jmp rel16`. So a
    /// `.return_sites` entry at `66 e9 <rel32 to __x86_return_thunk>` (tun, one `66` byte written
    /// before a real return site, the entry moved onto it) was left alone as "not a jump to the
    /// return thunk", where apply_returns() → patch_return() rewrites all six bytes: the replay
    /// explained the unpatched jump to the compile-time thunk (no return mitigation) and refused
    /// the kernel's bytes.
    func testOperandSizePrefixedReturnJumpIsDecodedAsTheKernelDecodesIt() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        let names = try ed.symbolNames()
        let textRelocs = try ed.relocations(for: ".text")
        let siteRela = try ed.rela(for: ".return_sites")
        let sites = try ed.relocations(for: ".return_sites")
        let textIndex = try ed.sectionIndex(".text")
        let text = try ed.elf { $0.sections[textIndex].fileRange.lowerBound }
        XCTAssertEqual(try ed.elf { e in ModuleLayout.compute612(e)?.coreOffset[textIndex] }, 0, ".text starts MOD_TEXT")
        var chosen: (k: Int, off: Int)? = nil
        for (k, r) in sites.enumerated() where names[r.symbolIndex] == "" || names[r.symbolIndex] == ".text" {
            let off = Int(r.addend)
            guard off >= 1, ed.ko[text + off] == 0xe9,
                  let j = textRelocs.first(where: { $0.offset == UInt64(off + 1) }), names[j.symbolIndex] == "__x86_return_thunk",
                  !textRelocs.contains(where: { $0.offset < UInt64(off) && $0.offset + 8 > UInt64(off - 1) }) else { continue }
            chosen = (k, off)
            break
        }
        let (k, off) = try XCTUnwrap(chosen, "tun has a `jmp __x86_return_thunk` return site")
        ed.ko[text + off - 1] = 0x66
        ed.put(Int64(off - 1), at: siteRela.at + 24 * k + 16)
        // No X86_FEATURE_RETHUNK: patch_return() writes `ret` and int3 to the instruction's length.
        let s = try Self.replay(ed.ko, "tun")
        XCTAssertEqual(Array(s.image[(off - 1)..<(off + 5)]), [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc],
                       "apply_returns(): insn_decode_kernel() gives `66 e9 rel32` 6 bytes, dest __x86_return_thunk, patch_return()")
        var raw = [UInt8](repeating: 0x90, count: 16)
        raw[0] = 0x66; raw[1] = 0xe9
        XCTAssertEqual(raw.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }?.length, 6, "66 e9 rel32")
        raw[1] = 0xe8
        XCTAssertEqual(raw.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }?.length, 6, "66 e8 rel32")
        raw[1] = 0x0f; raw[2] = 0x85
        XCTAssertEqual(raw.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }?.length, 7, "66 0f 85 rel32")
        // REX.W overrides the operand-size prefix (insn_get_prefixes(): opnd_bytes = 8): `66 48 05
        // imm32` is `add $imm32, %rax`, 7 bytes.
        raw[1] = 0x48; raw[2] = 0x05
        XCTAssertEqual(raw.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }?.length, 7, "66 48 05 imm32")
        raw[1] = 0x05
        XCTAssertEqual(raw.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }?.length, 4, "66 05 imm16 (no REX.W)")
    }

    /// HOLE: `__apply_relocation()` (6.12 arch/x86/kernel/alternative.c) adds `repl - instr` to
    /// the displacement of every RIP-relative instruction of a taken replacement whose target
    /// lies outside it, as `insn_rip_relative()` (arch/x86/lib/insn.c: a ModRM with mod 0, r/m 5)
    /// finds them: `8f /0` (POP Ev, which the kernel's decoder knows, with no XOP) and VEX/EVEX
    /// instructions included. The replay skipped `8f`, `c4`, `c5` and `62` forms ("not in module
    /// alternatives"), so their displacement kept the replacement's value: bytes no kernel writes,
    /// a memory operand aimed `instr - repl` away from where the kernel aims it. 8021q with its
    /// NOT-XENPV paravirt entry's replacement made the 6-byte `pop 0x100(%rip)` (entry 0 made
    /// not taken, its `call BUG_func` relocation dropped).
    func testRipRelativeOperandsOfEveryOpcodeMapAreRelocatedInAReplacement() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("8021q"))
        let altOff = try ed.elf { $0.sections[try ed.sectionIndex(".altinstructions")].fileRange.lowerBound }
        let ar = try ed.rela(for: ".altinstructions"), arel = try ed.relocations(for: ".altinstructions")
        let replIndex = try ed.sectionIndex(".altinstr_replacement")
        let replOff = try ed.elf { $0.sections[replIndex].fileRange.lowerBound }
        let rr = try ed.rela(for: ".altinstr_replacement"), rrel = try ed.relocations(for: ".altinstr_replacement")
        XCTAssertEqual(try ed.elf { $0.sections[try ed.sectionIndex(".altinstructions")].size }, 28, "two 14-byte entries")
        XCTAssertEqual(ed.ko[altOff + 14 + 12], 6, "entry 1 patches 6 bytes")
        // Entry 0 (ALWAYS|DIRECT_CALL) on X86_FEATURE_XENPV instead: not taken on this guest.
        ed.put(UInt16(Loader612Tests.xenpv), at: altOff + 8)
        for (k, r) in rrel.enumerated() where r.offset < 6 { ed.put(UInt64(0), at: rr.at + 24 * k + 8) }  // R_X86_64_NONE
        let pop: [UInt8] = [0x8f, 0x05, 0x00, 0x01, 0x00, 0x00]  // pop 0x100(%rip): the target is past the replacement
        for (i, b) in pop.enumerated() { ed.ko[replOff + i] = b }
        let k1 = try XCTUnwrap(arel.firstIndex { $0.offset == 18 }, "entry 1's repl_offset record")
        ed.put(Int64(0), at: ar.at + 24 * k1 + 16)  // entry 1's replacement: .altinstr_replacement + 0
        ed.ko[altOff + 14 + 13] = 6
        let s = try Self.replay(ed.ko, "8021q")
        let k0 = try XCTUnwrap(arel.firstIndex { $0.offset == 0 })
        let instr = try s.symbolValue(arel[k0].symbolIndex) &+ UInt64(bitPattern: arel[k0].addend)
        let repl = try XCTUnwrap(s.addr[replIndex])
        let d = UInt32(truncatingIfNeeded: 0x100 &+ Int64(bitPattern: repl &- instr))
        let off = Int(instr - s.base)
        XCTAssertEqual(Array(s.image[off..<off + 6]), [0x8f, 0x05] + (0..<4).map { UInt8(truncatingIfNeeded: d >> (8 * UInt32($0))) },
                       "the taken NOT-XENPV entry: its RIP-relative operand relocated by repl - instr")
        // The kernel's insn_rip_relative() on VEX/EVEX forms: the displacement after their ModRM.
        for (bytes, at) in [([0xc5, 0xf9, 0x6f, 0x05], 4), ([0xc4, 0xe2, 0x79, 0x18, 0x05], 5), ([0x62, 0xf1, 0x7c, 0x48, 0x10, 0x05], 6),
                            ([0x8f, 0x05], 2)] as [([UInt8], Int)] {
            let b = bytes + [0x10, 0, 0, 0] + [UInt8](repeating: 0x90, count: 16)
            XCTAssertEqual(ripRelativeDisplacement(b, at: 0, length: bytes.count + 4), at, "\(bytes)")
        }
    }

    /// HOLE: module_finalize() walks its `s32` tables as `for (s = start; s < end; s++)` with
    /// `end = sh_addr + sh_size` (6.12 arch/x86/kernel/alternative.c apply_retpolines(),
    /// apply_returns(), apply_seal_endbr(), alternatives_smp_unlock(); 6.1 the same, and
    /// apply_paravirt() over 16-byte entries): a size that is not a whole number of entries makes
    /// the kernel read one more entry whose last bytes are whatever follows the table in
    /// MOD_RODATA. The replay stopped at the last whole entry. isofs with `.ibt_endbr_seal` one
    /// byte short (its last record dropped, the three bytes left holding the distance to an
    /// address-taken function's ENDBR, and the next section, `.orc_unwind`, starting 0xff): the
    /// kernel seals that ENDBR (poison_endbr()), the replay explained it unsealed.
    func testPartialEntryAtTheEndOfAFinalizeTableIsRefused() throws {
        let original = try Loader612Tests.module612("isofs")
        let s0 = try Self.replay(original, "isofs")
        var ed = KoEditor(ko: original)
        let sealIndex = try ed.sectionIndex(".ibt_endbr_seal"), orcIndex = try ed.sectionIndex(".orc_unwind")
        let seal = try ed.elf { $0.sections[sealIndex] }
        XCTAssertEqual(try ed.elf { e in ModuleLayout.compute612(e).map { $0.coreOffset[orcIndex]! - $0.coreOffset[sealIndex]! } }, seal.size,
                       ".orc_unwind follows the seal table in MOD_RODATA (both align 1)")
        XCTAssertEqual(seal.size % 4, 0)
        let sr = try ed.rela(for: ".ibt_endbr_seal"), srel = try ed.relocations(for: ".ibt_endbr_seal")
        let last = seal.size - 4
        let k = try XCTUnwrap(srel.firstIndex { $0.offset == UInt64(last) })
        ed.put(UInt64(0), at: sr.at + 24 * k + 8)  // R_X86_64_NONE: the field keeps its file bytes
        ed.put(UInt64(seal.size - 1), at: ed.sectionHeader(sealIndex) + 32)
        ed.ko[try ed.elf { $0.sections[orcIndex].fileRange.lowerBound }] = 0xff
        // An address-taken function of .text (its ENDBR kept: not in the seal table).
        let textIndex = try ed.sectionIndex(".text")
        let text = try ed.elf { $0.sections[textIndex].fileRange.lowerBound }
        let (rodataOffset, textOffset) = try ed.elf { e -> (Int, Int) in
            let l = try XCTUnwrap(ModuleLayout.compute612(e))
            return (try XCTUnwrap(l.coreOffset[sealIndex]), try XCTUnwrap(l.coreOffset[textIndex]))
        }
        let endbr: [UInt8] = [0xf3, 0x0f, 0x1e, 0xfa]
        let fn = try XCTUnwrap(try ed.elf { e in
            try e.symbols().first { $0.sectionIndex == UInt16(textIndex) && $0.type == 2
                && Array(ed.ko[(text + Int($0.value))..<(text + Int($0.value) + 4)]) == endbr
                && Array(s0.image[(textOffset + Int($0.value))..<(textOffset + Int($0.value) + 4)]) == endbr }?.value
        }, "an address-taken function: its ENDBR kept by the real module's replay")
        let entry = 0xffff_ffff_c030_0000 + UInt64(rodataOffset + last)  // replay612's MOD_RODATA base
        let target = 0xffff_ffff_c010_0000 + UInt64(textOffset) + fn     // and MOD_TEXT base
        let v = Int64(bitPattern: target &- entry)
        XCTAssertTrue(v < 0 && v >= -0x100_0000, "the 0xff from .orc_unwind makes the s32 negative")
        for b in 0..<3 { ed.ko[seal.fileRange.lowerBound + last + b] = UInt8(truncatingIfNeeded: v >> (8 * Int64(b))) }
        do {
            let s = try Self.replay(ed.ko, "isofs")
            let off = Int(target - s.base)
            XCTAssertEqual(Array(s.image[off..<off + 4]), [0x66, 0x0f, 0x1f, 0x00], "apply_seal_endbr() reads the partial entry: that ENDBR is sealed")
        } catch {
            let d = Self.denial(error)
            XCTAssertEqual(d?.rule, .loader)
            XCTAssertTrue(d?.reason.contains("whole number") == true, "\(String(describing: d))")
        }
    }

    /// HOLE: elf_validity_cache_index_mod() (6.12 kernel/module/main.c) refuses a module whose
    /// `.gnu.linkonce.this_module` is SHT_NOBITS ("must have a size set") or lacks SHF_ALLOC
    /// ("must occupy memory during process execution"), before anything is laid out. The loader
    /// selection checked only its size, so crc7 with the section's SHF_ALLOC cleared (struct
    /// module then never placed, its init/exit relocations skipped; no relocation of crc7's
    /// text names `__this_module`) was explained. (tun is denied all the same, by accident: its
    /// text refers to `__this_module`, whose value in a section the kernel does not allocate is
    /// no address.)
    func testStructModuleSectionMustBeAllocated() throws {
        XCTAssertNoThrow(try Self.replay(try Loader612Tests.module612("crc7"), "crc7"), "the real module replays")
        var ed = KoEditor(ko: try Loader612Tests.module612("crc7"))
        let at = ed.sectionHeader(try ed.sectionIndex(".gnu.linkonce.this_module")) + 8
        ed.put(ed.get(UInt64.self, at: at) & ~2, at: at)
        XCTAssertThrowsError(try Self.replay(ed.ko, "crc7")) { e in
            let d = Self.denial(e)
            XCTAssertEqual(d?.rule, .loader)
            XCTAssertTrue(d?.reason.contains("elf_validity_cache_index_mod") == true, "\(String(describing: d))")
        }
    }
}
