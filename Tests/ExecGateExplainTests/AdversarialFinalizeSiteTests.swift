// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the sites `module_finalize()` (arch/x86/kernel/module.c) patches: where a
// table entry may point, and the limits the kernel BUGs on. A crafted module stands for one a
// trusted key holder signed (unsigned crafted copies of the real signed Debian modules, as in
// AdversarialPatchingTests). Each test names the attack; a test marked "Was a HOLE" failed until
// the fix its comment names. Kernel sources: Debian's linux-source-6.1 (6.1.192) and
// linux-source-6.12 (6.12.117), arch/x86/kernel/alternative.c and module.c.
//
// Measured on the 4023 modules of Debian 6.1.0-56 (every `.ko` of the package, a scan of their
// RELA records): no `.altinstructions`, `.parainstructions`, `.retpoline_sites`, `.return_sites`,
// `.smp_locks` or `.ibt_endbr_seal` entry targets a section that is not SHF_EXECINSTR (1657 + 3007
// + 75545 + 216674 + 34247 entries; init text included); the largest `instrlen` and
// `replacementlen` are 31, no `replacementlen` exceeds its `instrlen`, the longest paravirt site
// is 6 bytes; and none of the 3634 `__SCT__` trampolines a module defines opens with a Jcc.
// The 4230 modules of Debian 6.12.117 likewise: no such entry (also none of 1458002 `.call_sites`
// and 52217 `.ibt_endbr_seal` entries), `instrlen`/`replacementlen` at most 43, none longer
// than its site, no Jcc among 4164 `__SCT__` trampolines.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class AdversarialFinalizeSiteTests: XCTestCase {
    let explainer = CraftedExplainer()

    /// `name` with the RELA record of `table`'s first entry's site field (r_offset 0) pointed at
    /// `symbol` + 0 (or, `symbol` nil, at `.data` + `dataOffset`, with `plant` written there in
    /// the signed `.data`): the entry then names that address.
    func retargeted(_ f: FixtureReplay, _ name: String, _ table: String, at symbol: String?,
                    dataOffset: Int = 0, plant: [UInt8] = []) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules[name]).module.ko)
        let r = try ed.rela(for: table)
        let recs = try ed.relocations(for: table)
        let k = try XCTUnwrap(recs.firstIndex { $0.offset == 0 }, "\(table) entry 0's record")
        let at = r.at + 24 * k
        let type = ed.get(UInt64.self, at: at + 8) & 0xffff_ffff
        let sym: Int
        if let symbol {
            sym = try ed.symbolIndex(symbol)
        } else {
            let data = try ed.sectionIndex(".data")
            let file = try ed.elf { $0.sections[data].fileRange.lowerBound }
            ed.ko.replaceSubrange(file + dataOffset ..< file + dataOffset + plant.count, with: plant)
            XCTAssertFalse(try ed.relocations(for: ".data").contains { Int($0.offset) < dataOffset + plant.count && Int($0.offset) + 8 > dataOffset },
                           "no relocation writes the planted bytes")
            sym = try ed.elf { e in
                let t = try e.symbolTable()
                return try XCTUnwrap(t.indices.first { t.sectionIndex($0) == UInt16(data) && t.value($0) == 0 && t.name($0).isEmpty }, ".data section symbol")
            }
        }
        ed.put(UInt64(sym) << 32 | type, at: at + 8)
        ed.put(Int64(dataOffset), at: at + 16)
        return ed.ko
    }

    /// Address of section `name` in the real module's core layout.
    func sectionAddress(_ f: FixtureReplay, _ module: String, _ name: String) throws -> UInt64 {
        let s = try f.session(module)
        let i = try XCTUnwrap(s.elf.section(named: name)?.index, name)
        return try XCTUnwrap(s.addr[i], name)
    }

    /// Was a HOLE (fixed: `Session.requireExecutableSite`, at collection time in each stage): a
    /// `module_finalize()` table entry whose site is in the module's own *non-executable*
    /// allocated memory was skipped by the replay ("not in the region"), while the kernel writes
    /// it: `apply_alternatives()`, `apply_paravirt()`, `apply_retpolines()` and `apply_returns()`
    /// take no text range and `text_poke_early()` is a `memcpy()` on the module, still writable
    /// before `module_enable_ro()` (6.1.192 and 6.12.117). Aimed at `__this_module` (struct module,
    /// which the loader reads afterwards: init/exit pointers, the tables' bounds), or at
    /// `__jump_table` / `.static_call_sites` / `__mcount_loc` / `__ksymtab`, the kernel would patch
    /// what the later stages read, and the replay would read the unpatched tables. 8021q crafted
    /// with the first alternative and paravirt entry aimed at `__this_module` (written whatever
    /// the bytes), the first return site at a RET trampoline planted in `.data` (`c3` + `int3` +
    /// the `ud1` signature: `__static_call_fixup()` rewrites it as the RET form, `jmp
    /// __x86_return_thunk` under RETHUNK), the first retpoline site at a planted `call`: now a
    /// named denial of the stage (never built: none in the 4023 Debian 6.1 modules).
    func testFinalizeSiteOutsideExecutableSectionsIsDenied() throws {
        let f = try FixtureReplay()
        let module = try sectionAddress(f, "8021q", ".gnu.linkonce.this_module")
        let data = try sectionAddress(f, "8021q", ".data") + 0x40
        let cases: [(String, DenialRule, String?, [UInt8], UInt64)] = [
            (".altinstructions", .alternative, "__this_module", [], module),
            (".parainstructions", .paravirt, "__this_module", [], module),
            (".retpoline_sites", .retpoline, nil, [0xe8, 0, 0, 0, 0], data),
            (".return_sites", .stage(.returnThunk), nil, [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9, 0xcc], data),
        ]
        for (table, rule, symbol, plant, target) in cases {
            let ko = try retargeted(f, "8021q", table, at: symbol, dataOffset: symbol == nil ? 0x40 : 0, plant: plant)
            guard let d = denial(try explainer.explainHonest(f, "8021q", ko)) else { continue }
            XCTAssertEqual(d.rule, rule, "\(table): \(d.reason)")
            XCTAssertEqual(d.section, table, d.reason)
            XCTAssertEqual(d.address, target, "\(table): \(d.reason)")
            XCTAssertTrue(d.reason.contains("outside the module's executable sections"), d.reason)
        }
    }

    /// Control (passes): a return or retpoline site aimed at bytes the kernel does not take for
    /// its form (`__this_module`'s first bytes, zeros) is no attack: `apply_returns()` WARNs
    /// "missing return thunk" and `apply_retpolines()` WARNs on a non-branch, and both skip it;
    /// so does the replay (the crafted module's loader image is explained).
    func testReturnAndRetpolineSitesOverForeignBytesAreSkippedAsTheKernelDoes() throws {
        let f = try FixtureReplay()
        for table in [".return_sites", ".retpoline_sites"] {
            let ko = try retargeted(f, "8021q", table, at: "__this_module")
            let r = try explainer.explainHonest(f, "8021q", ko)
            XCTAssertTrue(r.verdict.isAllowed, "\(table): \(r.verdict)")
        }
    }

    /// Control (passes): an `.smp_locks` entry aimed at `__this_module` is no attack.
    /// `alternatives_smp_unlock()` / `alternatives_smp_lock()` skip every site outside the text
    /// range `module_finalize()` passes (`.text` in 6.1, MOD_TEXT in 6.12: `ptr < text || ptr >=
    /// text_end`), so the kernel never writes it, and neither does the replay: llc crafted so is
    /// explained (the one lock site the entry named is then left as compiled by both).
    func testSMPLockOutsideTextIsSkippedAsTheKernelDoes() throws {
        let f = try FixtureReplay()
        let ko = try retargeted(f, "llc", ".smp_locks", at: "__this_module")
        let e = try XCTUnwrap(f.modules["llc"])
        let (image, _) = try loaderImage(ko, e.module.claim, f.boot.facts, e.before)
        var claim = e.module.claim
        claim.text = image
        let r = try explainer.explain(f, "llc", ko: ko, claim: claim)
        XCTAssertTrue(r.verdict.isAllowed, "\(r.verdict)")
    }

    /// The byte of 8021q's `table` at `entryOffset` set to `value` (in the signed section data).
    func patchedTableByte(_ f: FixtureReplay, _ table: String, _ entryOffset: Int, _ value: UInt8) throws -> [UInt8] {
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["8021q"]).module.ko)
        let i = try ed.sectionIndex(table)
        let at = try ed.elf { $0.sections[i].fileRange.lowerBound }
        ed.ko[at + entryOffset] = value
        return ed.ko
    }

    /// Was a HOLE (fixed: the MAX_PATCH_LEN checks in `applyAlternatives` / `applyAlternatives612`
    /// and `applyParavirt`): an entry longer than the kernel's patch buffer. `apply_alternatives()`
    /// has `BUG_ON(a->instrlen > sizeof(insn_buff))` with `u8 insn_buff[MAX_PATCH_LEN]`,
    /// MAX_PATCH_LEN = 255 - 1, for every entry before the feature test (6.1.192 and 6.12.117; a
    /// taken 6.1 entry also `memcpy()`s `replacementlen` bytes into it: past its end at 255), and
    /// `apply_paravirt()` has `BUG_ON(p->len > MAX_PATCH_LEN)` (6.1). The kernel oopses and the
    /// module never comes; the replay patched 255 bytes. 8021q crafted with its one alternative's
    /// `instrlen`, then its `replacementlen`, then its one paravirt site's `len` set to 255.
    func testPatchLongerThanMaxPatchLenIsDenied() throws {
        let f = try FixtureReplay()
        let cases: [(String, Int, DenialRule)] = [
            (".altinstructions", 10, .alternative),  // instrlen
            (".altinstructions", 11, .alternative),  // replacementlen
            (".parainstructions", 9, .paravirt),  // len
        ]
        for (table, field, rule) in cases {
            let ko = try patchedTableByte(f, table, field, 255)
            guard let d = denial(try explainer.explainHonest(f, "8021q", ko)) else { continue }
            XCTAssertEqual(d.rule, rule, "\(table)+\(field): \(d.reason)")
            XCTAssertTrue(d.reason.contains("MAX_PATCH_LEN"), "\(table)+\(field): \(d.reason)")
        }
    }

    /// Passes: a paravirt site whose `type` indexes past the trusted `pv_ops` (the kernel reads
    /// `*((void **)&pv_ops + type)`, beyond the table: `paravirt_patch()`, 6.1) is denied by name,
    /// never replayed with a guessed target.
    func testParavirtTypeBeyondPvOpsIsDenied() throws {
        let f = try FixtureReplay()
        let ko = try patchedTableByte(f, ".parainstructions", 8, 255)
        XCTAssertLessThan(f.boot.facts.pvOps.count, 256)
        let d = try XCTUnwrap(denial(try explainer.explainHonest(f, "8021q", ko)))
        XCTAssertEqual(d.rule, .paravirt, d.reason)
        XCTAssertTrue(d.reason.contains("pv_ops[255]"), d.reason)
    }

    /// Was a HOLE (fixed: `applyParavirt` checks the kernel's BUGs before it skips a site of
    /// the other region): a paravirt site in *init* text too short for the call
    /// `paravirt_patch_call()` writes (5 bytes: `BUG_ON(used > p->len)` in `apply_paravirt()`,
    /// 6.1.192) was skipped by the core session ("init text: freed"), so a module the kernel
    /// oopses on was explained. 8021q crafted with its paravirt site moved to `.init.text` + 0
    /// and its `len` set to 3: denied whether or not the claim includes the init text.
    func testShortParavirtSiteInInitTextIsDenied() throws {
        let f = try FixtureReplay()
        var ed = KoEditor(ko: try XCTUnwrap(f.modules["8021q"]).module.ko)
        let r = try ed.rela(for: ".parainstructions")
        let k = try XCTUnwrap(try ed.relocations(for: ".parainstructions").firstIndex { $0.offset == 0 })
        let initText = try ed.sectionIndex(".init.text")
        let sym = try ed.elf { e in
            let t = try e.symbolTable()
            return try XCTUnwrap(t.indices.first { t.sectionIndex($0) == UInt16(initText) && t.value($0) == 0 && t.name($0).isEmpty }, ".init.text section symbol")
        }
        let type = ed.get(UInt64.self, at: r.at + 24 * k + 8) & 0xffff_ffff
        ed.put(UInt64(sym) << 32 | type, at: r.at + 24 * k + 8)
        ed.put(Int64(0), at: r.at + 24 * k + 16)
        let table = try ed.elf { $0.sections[try ed.sectionIndex(".parainstructions")].fileRange.lowerBound }
        ed.ko[table + 9] = 3
        let d = try XCTUnwrap(denial(try explainer.explainHonest(f, "8021q", ed.ko)))
        XCTAssertEqual(d.rule, .paravirt, d.reason)
        XCTAssertTrue(d.reason.contains("cannot hold a call"), d.reason)
    }

    /// Was a HOLE (fixed: `applyFtrace` holds a site outside the executable sections to
    /// `requireExecutableSite`): `ftrace_module_init()` → `ftrace_process_locs()` records every
    /// non-NULL `__mcount_loc` address of a module, with no text test (6.1.192; 6.12.117 tests
    /// only the core kernel's, `!mod`), and `ftrace_init_nop()` → `ftrace_make_nop()` rewrites
    /// each one that holds `call __fentry__` (`ftrace_verify_code()`) as NOP5 with
    /// `text_poke_early()`, module still writable. The replay skipped a site outside the region.
    /// 8021q crafted with `call __fentry__` planted in `.data` + 0x40 (a `.rela.data` record
    /// turned into R_X86_64_PLT32 against `__fentry__`) and its first `__mcount_loc` entry aimed
    /// there: the kernel rewrites module data the replay reads as signed. Now denied (`ftrace`);
    /// an entry over bytes that are not a call is skipped as `ftrace_bug()` skips it.
    func testFtraceSiteInModuleDataIsDenied() throws {
        let f = try FixtureReplay()
        let plantAt = 0x40
        func crafted(call: Bool) throws -> [UInt8] {
            var ed = KoEditor(ko: try retargeted(f, "8021q", "__mcount_loc", at: nil, dataOffset: plantAt, plant: call ? [0xe8, 0, 0, 0, 0] : [0x0f, 0x0b, 0, 0, 0]))
            guard call else { return ed.ko }
            let r = try ed.rela(for: ".data")
            let k = try XCTUnwrap(try ed.relocations(for: ".data").firstIndex { $0.offset == 0x38 }, ".data+0x38 record")
            ed.put(UInt64(plantAt + 1), at: r.at + 24 * k)
            ed.put(UInt64(try ed.symbolIndex("__fentry__")) << 32 | 4, at: r.at + 24 * k + 8)  // R_X86_64_PLT32
            ed.put(Int64(-4), at: r.at + 24 * k + 16)
            return ed.ko
        }
        let site = try sectionAddress(f, "8021q", ".data") + UInt64(plantAt)
        let d = try XCTUnwrap(denial(try explainer.explainHonest(f, "8021q", try crafted(call: true))))
        XCTAssertEqual(d.rule, .stage(.ftrace), d.reason)
        XCTAssertEqual(d.section, "__mcount_loc", d.reason)
        XCTAssertEqual(d.address, site, d.reason)
        XCTAssertTrue(d.reason.contains("outside the module's executable sections"), d.reason)
        // Control: ud2 there is no `call __fentry__`: ftrace_bug(), the site is left alone.
        let r = try explainer.explainHonest(f, "8021q", try crafted(call: false))
        XCTAssertTrue(r.verdict.isAllowed, "\(r.verdict)")
    }

    // MARK: 6.12 (8021q.ko.xz of Debian 6.12.117: paravirt calls are alternatives)

    /// The 6.12 replay of `edit`ed 8021q up to module_finalize() (every import at a distinct
    /// kernel address, as Loader612Tests.pvSite): the denial, or nil when the replay accepts it.
    /// `caps`: the guest's capability bits (default: the always-present bit only).
    static func denial612(caps: [Int] = [Loader612Tests.always], _ edit: (inout KoEditor) throws -> Void) throws -> Denial? {
        var ed = KoEditor(ko: try Loader612Tests.module612("8021q"))
        try edit(&ed)
        return try ed.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            var exports: [String: UInt64] = [:]
            for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            exports["pv_ops"] = 0xffff_ffff_8300_0000
            exports["BUG_func"] = 0xffff_ffff_8200_0000
            exports["nop_func"] = 0xffff_ffff_8200_0040
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            var claim = ModuleClaim(name: "8021q", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
            claim.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
            let s = try Session(elf: elf, claim: claim, facts: Loader612Tests.facts(caps: caps, pvOps: [UInt64](repeating: 0xffff_ffff_8123_4560, count: 83)),
                                resolver: SymbolResolver(coreExports: exports))
            do {
                try s.relocate()
                try s.applyBootTimePatching()
                return nil
            } catch let e as DenyError {
                return e.denial
            }
        }
    }

    /// Was a HOLE on 6.12 too (same fix; checked by running this test on the sources before
    /// it): `apply_alternatives()` (6.12.117) writes `instrlen` bytes at every site, taken or not
    /// (`text_poke_early()` of `optimize_nops()`' buffer), and the replay skipped a site outside
    /// the text: 8021q (6.12) with its first entry aimed at `__this_module` was accepted. It also
    /// `BUG_ON(a->instrlen > sizeof(insn_buff))` for every entry after the nesting pad: that
    /// entry with `instrlen` 255 was denied before only because it is a DIRECT_CALL entry whose
    /// shape then no longer matched; now by the kernel's own check, first.
    func testAlternatives612OverMaxPatchLenOrOutsideTextAreDenied() throws {
        XCTAssertNil(try Self.denial612 { _ in }, "the real module replays")
        let long = try XCTUnwrap(try Self.denial612 { ed in
            let at = try ed.elf { $0.sections[try ed.sectionIndex(".altinstructions")].fileRange.lowerBound }
            ed.ko[at + 12] = 255
        })
        XCTAssertEqual(long.rule, .alternative, long.reason)
        XCTAssertTrue(long.reason.contains("MAX_PATCH_LEN"), long.reason)
        let outside = try XCTUnwrap(try Self.denial612 { ed in
            let r = try ed.rela(for: ".altinstructions")
            let k = try XCTUnwrap(try ed.relocations(for: ".altinstructions").firstIndex { $0.offset == 0 })
            let type = ed.get(UInt64.self, at: r.at + 24 * k + 8) & 0xffff_ffff
            ed.put(UInt64(try ed.symbolIndex("__this_module")) << 32 | type, at: r.at + 24 * k + 8)
            ed.put(Int64(0), at: r.at + 24 * k + 16)
        })
        XCTAssertEqual(outside.rule, .alternative, outside.reason)
        XCTAssertEqual(outside.section, ".altinstructions", outside.reason)
        XCTAssertTrue(outside.reason.contains("outside the module's executable sections"), outside.reason)
    }
}
