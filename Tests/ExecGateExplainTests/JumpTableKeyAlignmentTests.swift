// SPDX-License-Identifier: Apache-2.0
//
// Round 15 (h15-seq), for c1ea1fc: a jump entry's key is `jump_entry_key()`
// (include/linux/jump_label.h, 6.1 and 6.12): `(void *)&entry->key + (entry->key & ~3L)` — the
// flag bits cleared from the stored self-relative offset, then the offset added to the field's
// address. The two formulas (this one, and clearing bits 0-1 of the sum) differ only when the
// field, i.e. `__jump_table`, is not 4-byte aligned. A signed module can make it so: 6.12's
// __layout_sections() places each section at ALIGN(size so far, sh_addralign) inside its memory
// type, and MOD_RO_AFTER_INIT takes `__jump_table` (marked by module_mark_ro_after_init()) after
// any SHF_WRITE|SHF_RO_AFTER_INIT section before it in the file (the mask {SHF_RO_AFTER_INIT |
// SHF_ALLOC}, the bit honoured from the file as from the loader). Crafted here from the real
// fmpm.ko (17 jump labels, 6 of them in core text): `.orc_unwind` (0x1aa bytes, before `__jump_table`) flagged
// WA + SHF_RO_AFTER_INIT, `__jump_table`'s sh_addralign 2, so the table sits at +0x1aa ≡ 2 (mod 4).
// With the field ≡ 2 (mod 4) and a 4-aligned key K, the kernel's key is K + 2 (the stored offset
// carries 6.12's `2 | branch` flag bits, and only the offset's low bits are cleared); clearing the
// sum's bits always gives a 4-aligned key (K). Checked: with c1ea1fc reverted this test fails (all six core keys 4-aligned).

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class JumpTableKeyAlignmentTests: XCTestCase {
    /// The jump-label sites' keys of fmpm's core session, with `edit` applied to the ELF first;
    /// also the address the layout gives `__jump_table`.
    func jumpKeys(_ edit: (inout [UInt8], ELFFile) throws -> Void) throws -> (table: UInt64, keys: [UInt64]) {
        var ko = try Init612Tests.ko("drivers/ras/amd/fmpm")
        let orig = try ko.withUnsafeBytes { try ELFFile(bytes: $0) }
        try edit(&ko, orig)
        return try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let resolver = try Init612Tests.resolver(for: elf)
            let facts = Init612Tests.facts(caps: [Init612Tests.always, Init612Tests.rethunk])
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            let mt = try XCTUnwrap(lay.memType)
            let secs = Init612Tests.sectionAddresses(elf, lay, mt)
            let jt = try XCTUnwrap(secs["__jump_table"])
            let claim = ModuleClaim(name: "fmpm", textBase: Init612Tests.textBase, text: [UInt8](repeating: 0, count: lay.textSize),
                                    sectionAddresses: secs, percpuBase: 0x3_0000)
            let s = try Session(elf: elf, claim: claim, facts: facts, resolver: resolver)
            try s.relocate(); try s.applyBootTimePatching(); try s.addRuntimeSites()
            return (jt, s.variable.filter { $0.label == .jumpLabel }.compactMap { $0.group })
        }
    }

    func testAJumpEntryKeyOnAMisalignedTableIsTheKernelsJumpEntryKey() throws {
        let honest = try jumpKeys { _, _ in }
        XCTAssertEqual(honest.table % 4, 0)
        XCTAssertEqual(honest.keys.count, 6, "fmpm: 6 jump labels in core text (11 in init text)")
        XCTAssertTrue(honest.keys.allSatisfy { $0 % 4 == 0 }, "aligned table: the keys as relocated")

        let crafted = try jumpKeys { ko, elf in
            let shoff = Int(ko.withUnsafeBytes { $0.load(fromByteOffset: 0x28, as: UInt64.self) })
            let shentsize = Int(ko[0x3a]) | Int(ko[0x3b]) << 8
            func set(_ index: Int, field: Int, _ v: UInt64) {
                let at = shoff + index * shentsize + field
                for k in 0..<8 { ko[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            }
            let orc = try XCTUnwrap(elf.section(named: ".orc_unwind"))
            let jt = try XCTUnwrap(elf.section(named: "__jump_table"))
            XCTAssertLessThan(orc.index, jt.index)
            XCTAssertEqual(orc.size % 4, 2)
            set(orc.index, field: 8, 0x3 | 0x0020_0000)  // sh_flags: SHF_WRITE | SHF_ALLOC | SHF_RO_AFTER_INIT
            set(jt.index, field: 0x30, 2)                 // sh_addralign
        }
        XCTAssertEqual(crafted.table % 4, 2, "__jump_table placed at 0x\(String(crafted.table, radix: 16))")
        XCTAssertEqual(crafted.keys.count, honest.keys.count)
        // jump_entry_key(): never 4-aligned here (the old formula gave K, ≡ 0 mod 4).
        XCTAssertTrue(crafted.keys.allSatisfy { $0 % 4 == 2 }, "keys: \(crafted.keys.map { String($0, radix: 16) })")
        // Exactly: the entry stores `key + (2 | branch) - .` (6.12 arch/x86/include/asm/jump_label.h,
        // `"i" (2 | branch)`), so with the field ≡ 2 (mod 4) the stored offset is K + 2 - F ≡ 0
        // (mod 4) for a branch-0 entry and clearing its low bits leaves it: jump_entry_key() = K + 2.
        XCTAssertEqual(crafted.keys, honest.keys.map { $0 + 2 }, "keys: \(crafted.keys.map { String($0, radix: 16) })")
        // (Clearing bits 0-1 of the sum can only give a 4-aligned key: the old formula fails above.)
    }
}
