// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of where the run-time site tables (`__jump_table`, `.static_call_sites`)
// and `.retpoline_sites` may point. Crafted copies of the real signed Debian 6.1 modules stand
// for modules a trusted key holder signed (as in AdversarialFinalizeSiteTests). Kernel sources:
// Debian's linux-source-6.1 (6.1.192) and linux-source-6.12 (6.12.117): kernel/jump_label.c,
// kernel/static_call_inline.c, arch/x86/kernel/static_call.c, arch/x86/kernel/alternative.c.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class AdversarialRuntimeSiteTextTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// Address of section `name` in the real module's core layout.
    func sectionAddress(_ f: FixtureReplay, _ module: String, _ name: String) throws -> UInt64 {
        let s = try f.session(module)
        let i = try XCTUnwrap(s.elf.section(named: name)?.index, name)
        return try XCTUnwrap(s.addr[i], name)
    }

    /// `name` with the RELA record of `table`'s first entry's site field (r_offset 0) pointed at
    /// `.data` + `dataOffset`, `plant` written there in the signed `.data` (no relocation of
    /// `.data` may write those bytes).
    func retargetedToData(_ f: FixtureReplay, _ name: String, _ table: String, dataOffset: Int, plant: [UInt8]) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules[name]).module.ko)
        let r = try ed.rela(for: table)
        let k = try XCTUnwrap(try ed.relocations(for: table).firstIndex { $0.offset == 0 }, "\(table) entry 0's record")
        let at = r.at + 24 * k
        let type = ed.get(UInt64.self, at: at + 8) & 0xffff_ffff
        let data = try ed.sectionIndex(".data")
        let file = try ed.elf { $0.sections[data].fileRange.lowerBound }
        ed.ko.replaceSubrange(file + dataOffset ..< file + dataOffset + plant.count, with: plant)
        let hasDataRela = try ed.elf { e in try e.relocationSections().contains { e.sections[$0.targetSectionIndex].name == ".data" } }
        if hasDataRela {
            XCTAssertFalse(try ed.relocations(for: ".data").contains { Int($0.offset) < dataOffset + plant.count && Int($0.offset) + 8 > dataOffset }, "no relocation writes the planted bytes")
        }
        // A symbol of `.data` (its section symbol when it has one): the record is `sym + addend`.
        let (sym, value) = try ed.elf { e -> (Int, UInt64) in
            let t = try e.symbolTable()
            let all = t.indices.filter { t.sectionIndex($0) == UInt16(data) }
            let i = try XCTUnwrap(all.first { t.value($0) == 0 && t.name($0).isEmpty } ?? all.first, "a .data symbol")
            return (i, t.value(i))
        }
        ed.put(UInt64(sym) << 32 | type, at: at + 8)
        ed.put(Int64(dataOffset) - Int64(value), at: at + 16)
        return ed.ko
    }

    /// Control (passes): a `__jump_table` entry whose code is in the module's data is never a
    /// site. The kernel never writes it: `jump_label_add_module()` → `__jump_label_update()` →
    /// `jump_label_can_update()` skips a code address that is not `kernel_text_address()` (a
    /// module's text only: `__module_text_address()`), at load and at every later key change
    /// (6.1.192 and 6.12.117), so the replay skips it and the run-time table has no site there:
    /// a patch of those bytes is denied. test_static_keys crafted with its first jump entry aimed
    /// at a NOP5 planted in `.data`.
    func testJumpLabelEntryInModuleDataIsNoSite() throws {
        let f = try FixtureReplay()
        let site = try sectionAddress(f, "test_static_keys", ".data") + 0x10
        let ko = try retargetedToData(f, "test_static_keys", "__jump_table", dataOffset: 0x10, plant: x86Nops[5])
        let r = try explainer.explainHonest(f, "test_static_keys", ko)
        XCTAssertTrue(r.verdict.isAllowed, "\(r.verdict)")
        let table = try XCTUnwrap(r.runtimeSites)
        XCTAssertFalse(table.addresses.contains(site))
        XCTAssertGreaterThan(table.count, 0, "the other jump entries are still sites")
        guard case .denied(let why) = table.check(address: site, bytes: [0xe9, 0, 0, 0, 0]) else { return XCTFail("a patch of module data allowed") }
        XCTAssertTrue(why.contains("is not the start of a run-time patch site"), why)
    }

    /// Attack: a `.static_call_sites` entry whose site is in the module's data. The replay skipped
    /// it ("not in the region"), but `static_call_add_module()` → `__static_call_init()` hands
    /// every site to `arch_static_call_transform()` with no text test (6.1.192 and 6.12.117; only
    /// the later `__static_call_update()` tests `kernel_text_address()`): `__static_call_validate()`
    /// BUGs unless the bytes are a call / NOP5 / `xor5rax` (a tail site: jmp / RET / Jcc), and
    /// `__static_call_transform()` then rewrites them with `text_poke_bp()`: the kernel writes
    /// module data the replay reads as signed. irqbypass crafted with its first static-call site
    /// aimed at `.data` + 0: a planted `call` (written) and a planted `ud2` (BUG) are both denied.
    func testStaticCallSiteInModuleDataIsDenied() throws {
        let f = try FixtureReplay()
        let site = try sectionAddress(f, "irqbypass", ".data")
        let e = try XCTUnwrap(f.modules["irqbypass"])
        for plant: [UInt8] in [[0xe8, 0, 0, 0, 0], [0x0f, 0x0b, 0x90, 0x90, 0x90]] {
            let ko = try retargetedToData(f, "irqbypass", ".static_call_sites", dataOffset: 0, plant: plant)
            // The kernel's end state: the captured one, except the site entry 0 named before
            // (.text + 0x145), no longer listed, keeps its loaded bytes (the signed module's
            // relocated bytes there, as the replay of the real module leaves them).
            var claim = e.module.claim
            let (image, s) = try loaderImage(e.module.ko, claim, f.boot.facts, e.before)
            let old = Int(try XCTUnwrap(s.addr[try XCTUnwrap(s.elf.section(named: ".text")?.index)]) - s.base) + 0x145
            claim.text.replaceSubrange(old..<old + 5, with: image[old..<old + 5])
            guard let d = denial(try explainer.explain(f, "irqbypass", ko: ko, claim: claim)) else { continue }
            XCTAssertEqual(d.rule, .staticCall, d.reason)
            XCTAssertEqual(d.section, ".static_call_sites", d.reason)
            XCTAssertEqual(d.address, site, d.reason)
            XCTAssertTrue(d.reason.contains("outside the module's executable sections"), d.reason)
        }
    }

    /// 8021q with the call relocated by the `.rela<section>` record at `operand` aimed at
    /// `__x86_indirect_thunk_array` + 4 * 32 (`__x86_indirect_thunk_rsp`: `__x86_indirect_thunk_rax`,
    /// the array's first thunk, + 128, addend -4 + 128), and the first `.retpoline_sites` entry at
    /// that call (`section` + operand - 1).
    func rspRetpoline(_ f: FixtureReplay, in section: String, operand: UInt64) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["8021q"]).module.ko)
        let r = try ed.rela(for: section)
        let k = try XCTUnwrap(try ed.relocations(for: section).firstIndex { $0.offset == operand }, "\(section)+0x\(String(operand, radix: 16)) record")
        ed.put(UInt64(try ed.symbolIndex("__x86_indirect_thunk_rax")) << 32 | 4, at: r.at + 24 * k + 8)  // R_X86_64_PLT32
        ed.put(Int64(-4 + 4 * 32), at: r.at + 24 * k + 16)
        let sec = try ed.sectionIndex(section)
        let file = try ed.elf { $0.sections[sec].fileRange.lowerBound }
        XCTAssertTrue([0xe8, 0xe9].contains(ed.ko[file + Int(operand) - 1]), "a call or jmp")
        let sites = try ed.rela(for: ".retpoline_sites")
        let j = try XCTUnwrap(try ed.relocations(for: ".retpoline_sites").firstIndex { $0.offset == 0 })
        let sym = try ed.elf { e in
            let t = try e.symbolTable()
            return try XCTUnwrap(t.indices.first { t.sectionIndex($0) == UInt16(sec) && t.value($0) == 0 && t.name($0).isEmpty }, "\(section) section symbol")
        }
        let type = ed.get(UInt64.self, at: sites.at + 24 * j + 8) & 0xffff_ffff
        ed.put(UInt64(sym) << 32 | type, at: sites.at + 24 * j + 8)
        ed.put(Int64(operand) - 1, at: sites.at + 24 * j + 16)
        return ed.ko
    }

    /// Control (passes): a retpoline site calling `__x86_indirect_thunk_rsp` (reg 4) is denied
    /// whatever the CPU features: `patch_retpoline()` runs `BUG_ON(reg == 4)` before it looks at
    /// X86_FEATURE_RETPOLINE (6.1.192 and 6.12.117), and `module_finalize()` →
    /// `apply_retpolines()` covers core and init text alike. 8021q crafted so, in `.text` (its
    /// thunk call at +0x1202) and in `.init.text` (the `_printk` call at +0x1b, claimed with the
    /// init region).
    func testRetpolineThroughRspThunkIsDenied() throws {
        let f = try FixtureReplay()
        for (section, operand) in [(".text", UInt64(0x1203)), (".init.text", UInt64(0x1c))] {
            let ko = try rspRetpoline(f, in: section, operand: operand)
            let e = try XCTUnwrap(f.modules["8021q"])
            var claim = e.module.claim
            if section == ".init.text" {
                // The init region claimed in its own allocation (as InitTextTests): the capture
                // has none (init was freed); the denial comes before any init byte is compared.
                let plan = try ko.withUnsafeBytes { try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: $0))) }
                let initSize = try XCTUnwrap(plan.placements.filter { $0.isInit && $0.isExecutable }.map { $0.offset + $0.size }.max())
                claim.sectionAddresses = claim.sectionAddresses.filter { !$0.key.hasPrefix(".init") }
                claim.initTextBase = claim.textBase &- 0x10_0000
                claim.initText = [UInt8](repeating: 0, count: (initSize + 4095) & ~4095)
            }
            let d = try XCTUnwrap(denial(try explainer.explain(f, "8021q", ko: ko, claim: claim)), section)
            XCTAssertEqual(d.rule, .retpoline, "\(section): \(d.reason)")
            XCTAssertTrue(d.reason.contains("*%rsp"), "\(section): \(d.reason)")
        }
    }

    /// Attack: the `.init.text` rsp retpoline of testRetpolineThroughRspThunkIsDenied, claimed
    /// without the init region (the capture's claim: init already freed). The core session
    /// skipped the init-text site, so a module the kernel BUGs on in `module_finalize()` →
    /// `apply_retpolines()` (before `do_init_module()`, whatever is claimed later) was explained.
    /// Denied as the paravirt BUGs are (AdversarialFinalizeSiteTests.testShortParavirtSiteInInitTextIsDenied).
    func testRetpolineThroughRspThunkInInitTextIsDeniedWithoutInitClaim() throws {
        let f = try FixtureReplay()
        let ko = try rspRetpoline(f, in: ".init.text", operand: 0x1c)
        XCTAssertNil(try XCTUnwrap(f.modules["8021q"]).module.claim.initText, "the captured claim has no init region")
        let d = try XCTUnwrap(denial(try explainer.explain(f, "8021q", ko: ko)))
        XCTAssertEqual(d.rule, .retpoline, d.reason)
        XCTAssertTrue(d.reason.contains("*%rsp"), d.reason)
    }
}
