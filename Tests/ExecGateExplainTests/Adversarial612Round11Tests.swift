// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 11) of the Debian 6.12 loader replay against the 6.12.117 sources
// (arch/x86/kernel/alternative.c, kernel/module/main.c). Inputs are real 6.12 modules
// (Loader612Tests.module612) edited with KoEditor; expected bytes come from the kernel's code.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class Adversarial612Round11Tests: XCTestCase {
    /// The replay of `ko` (6.12) with every import at a distinct kernel address, the retpoline
    /// thunk array at `thunks` (`__x86_indirect_thunk_rax`, 32 bytes a register), and `caps`.
    static func replay612(_ ko: [UInt8], name: String, caps: [Int], thunks: UInt64 = 0xffff_ffff_8280_0000, omit: Set<String> = [],
                          pvOps: [UInt64] = [UInt64](repeating: 0xffff_ffff_8123_4560, count: 83), runtime: Bool = false) throws -> Session {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            var exports: [String: UInt64] = [:]
            for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            for (r, n) in ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"].enumerated() {
                exports["__x86_indirect_thunk_" + n] = thunks + UInt64(r) * 32
            }
            exports["pv_ops"] = 0xffff_ffff_8300_0000
            exports["BUG_func"] = 0xffff_ffff_8200_0000
            exports["nop_func"] = 0xffff_ffff_8200_0040
            for n in omit { exports[n] = nil }
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            var claim = ModuleClaim(name: name, textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
            claim.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
            let s = try Session(elf: elf, claim: claim, facts: Loader612Tests.facts(caps: caps, pvOps: pvOps),
                                resolver: SymbolResolver(coreExports: exports))
            try s.relocate()
            try s.applyBootTimePatching()
            if runtime { try s.addRuntimeSites() }
            return s
        }
    }

    /// HOLE: apply_retpolines() (6.12) ends each rewritten site with 6.12's optimize_nops()
    /// (one NOP up to 11 bytes, else `jmp` over `int3`: add_nop()), but the replay ran 6.1's
    /// (NOPs of at most 8 bytes, split). A retpoline site of 15 bytes (`call` with ten `cs`
    /// prefixes to __x86_indirect_thunk_rax: the kernel's decoder takes repeated prefixes) on a
    /// CPU without RETPOLINE becomes `call *%rax` + 13 bytes of NOP run: the kernel writes
    /// `ff d0 eb 0b cc×11`, the replay explained `ff d0` + NOP8 + NOP5.
    func testLongRetpolineSiteGets612NopRun() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        let names = try ed.symbolNames()
        let textRelocs = try ed.relocations(for: ".text")
        let siteRela = try ed.rela(for: ".retpoline_sites")
        let sites = try ed.relocations(for: ".retpoline_sites")
        let text = try ed.elf { $0.sections[try ed.sectionIndex(".text")].fileRange.lowerBound }
        // A site in .text calling the rax thunk with no relocation in the 10 bytes before it.
        var chosen: (k: Int, off: Int)? = nil
        for (k, r) in sites.enumerated() where names[r.symbolIndex] == "" || names[r.symbolIndex] == ".text" {
            let off = Int(r.addend)
            guard off >= 10, ed.ko[text + off] == 0xe8,
                  let call = textRelocs.first(where: { $0.offset == UInt64(off + 1) }), names[call.symbolIndex] == "__x86_indirect_thunk_rax",
                  !textRelocs.contains(where: { $0.offset + 4 > UInt64(off - 10) && $0.offset < UInt64(off) }) else { continue }
            chosen = (k, off)
            break
        }
        let (k, off) = try XCTUnwrap(chosen, "tun has a call to __x86_indirect_thunk_rax")
        for i in (off - 10)..<off { ed.ko[text + i] = 0x2e }
        ed.put(Int64(off - 10), at: siteRela.at + 24 * k + 16)
        let s = try Self.replay612(ed.ko, name: "tun", caps: [Loader612Tests.always])
        let got = Array(s.image[(off - 10)..<(off + 5)])
        XCTAssertEqual(got, [0xff, 0xd0, 0xeb, 0x0b] + [UInt8](repeating: 0xcc, count: 11),
                       "6.12 apply_retpolines(): patch_retpoline() then optimize_nops() -> add_nop(13)")
    }

    /// HOLE: alt_replace_call() (6.12) drops the call when the pv_ops target is `nop_func`
    /// (`if (target == &nop_func) return 0`: the site becomes NOPs). A registration without the
    /// `nop_func` export left the replay unable to tell, and it explained `call <target>` for
    /// every DIRECT_CALL site, where the kernel writes NOPs if the target is nop_func. BUG_func,
    /// the other name alt_replace_call() compares with, was already required.
    func testDirectCallNeedsNopFunc() throws {
        let ko = try Loader612Tests.module612("8021q")
        XCTAssertNoThrow(try Self.replay612(ko, name: "8021q", caps: [Loader612Tests.always, Loader612Tests.xenpv]), "the real module replays")
        XCTAssertThrowsError(try Self.replay612(ko, name: "8021q", caps: [Loader612Tests.always, Loader612Tests.xenpv], omit: ["nop_func"])) { e in
            let d = (e as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .alternative)
            XCTAssertTrue(d?.reason.contains("nop_func") == true, "\(String(describing: d))")
        }
    }

    /// HOLE: alt_replace_call() BUG()s on an ALT_FLAG_DIRECT_CALL entry whose site is not
    /// `call *disp32(%rip)` (`ff 15`, instrlen 6) or whose replacement is not a 5-byte `e8`, for
    /// every taken entry, init text included (apply_alternatives() takes no text range). The core
    /// session skipped init-text sites (6.12 init text is never an executable region), so 8021q
    /// with its first paravirt entry aimed at the start of `.init.text` (the NOP padding of a `__pfx_` symbol) was
    /// explained though the kernel oopses loading it. The same rule as the 6.1 paravirt one
    /// (AdversarialFinalizeSiteTests.testShortParavirtSiteInInitText...).
    func testDirectCallEntryOverInitTextThatIsNoIndirectCallIsDenied() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("8021q"))
        let initText = try ed.sectionIndex(".init.text")
        let sym = try XCTUnwrap(try ed.elf { e in try e.symbols().first { $0.sectionIndex == UInt16(initText) && ($0.type == 3 || $0.type == 2) && $0.value == 0 }?.index },
                                "a symbol at .init.text+0")
        XCTAssertEqual(try ed.elf { e in Array(e.contents(of: e.sections[initText]).prefix(2)) }, [0x90, 0x90], "__pfx_ padding first, not ff 15")
        let r = try ed.rela(for: ".altinstructions")
        let k = try XCTUnwrap(try ed.relocations(for: ".altinstructions").firstIndex { $0.offset == 0 })
        let flags = try ed.elf { e in e.contents(of: e.sections[try ed.sectionIndex(".altinstructions")])[10] }
        XCTAssertEqual(flags & 2, 2, "entry 0 is ALT_FLAG_DIRECT_CALL")
        let type = ed.get(UInt64.self, at: r.at + 24 * k + 8) & 0xffff_ffff
        ed.put(UInt64(sym) << 32 | type, at: r.at + 24 * k + 8)
        ed.put(Int64(0), at: r.at + 24 * k + 16)
        XCTAssertThrowsError(try Self.replay612(ed.ko, name: "8021q", caps: [Loader612Tests.always])) { e in
            let d = (e as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .alternative)
            XCTAssertTrue(d?.reason.contains("DIRECT_CALL") == true, "\(String(describing: d))")
        }
    }

    /// Fixed in Layout.swift `loaderFlags` (shared by 6.1 and 6.12):
    /// layout_and_allocate() marks SHF_RO_AFTER_INIT on `find_sec(info, "__jump_table")` and
    /// `find_sec(info, ".data..ro_after_init")`, and rewrite_section_headers() clears SHF_ALLOC
    /// of `info->index.vers = find_sec(info, "__versions")` only: find_sec() (kernel/module/main.c,
    /// 6.1 and 6.12) returns the FIRST section with SHF_ALLOC of that name. The replay edited every
    /// section of those names, so a second `__jump_table` (here `.data` renamed) was laid out in
    /// MOD_RO_AFTER_INIT instead of MOD_DATA, and a second `__versions` (here `.rodata` renamed)
    /// was left out of MOD_RODATA: every address after it, and every relocation against it,
    /// differs from the kernel's.
    func testOnlyTheFirstAllocSectionOfANameGetsTheLoadersFlagEdits() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        func shName(_ i: Int) -> UInt32 { ed.get(UInt32.self, at: ed.sectionHeader(i)) }
        let jt = try ed.sectionIndex("__jump_table"), data = try ed.sectionIndex(".data")
        let vers = try ed.sectionIndex("__versions"), ro = try ed.sectionIndex(".rodata")
        ed.put(shName(jt), at: ed.sectionHeader(data))
        ed.put(shName(vers), at: ed.sectionHeader(ro))
        let (types, firstJT, firstVers): ([ModuleMemoryType?], Int, Int) = try ed.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            let first = { (n: String) in elf.sections.first { $0.name == n && $0.isAlloc }!.index }
            return (try XCTUnwrap(lay.memType), first("__jump_table"), first("__versions"))
        }
        let secondJT = firstJT == jt ? data : jt, secondVers = firstVers == vers ? ro : vers
        XCTAssertEqual(types[firstJT], .roAfterInit, "find_sec()'s __jump_table")
        XCTAssertEqual(types[secondJT], .data, "a later __jump_table keeps its flags: SHF_WRITE|SHF_ALLOC -> MOD_DATA")
        XCTAssertNil(types[firstVers], "find_sec()'s __versions loses SHF_ALLOC")
        XCTAssertEqual(types[secondVers], .rodata, "a later __versions keeps SHF_ALLOC -> MOD_RODATA")
    }

    /// HOLE: static_call_add_module() → __static_call_init() hands every site of the module to
    /// arch_static_call_transform(), init text included (it only flags init sites), and
    /// __static_call_validate() BUG()s unless a non-tail site holds a call, NOP5 or xor5rax (a
    /// tail site a jmp, ret or Jcc); 6.1.192 and 6.12.117 kernel/static_call_inline.c,
    /// arch/x86/kernel/static_call.c. The core session skipped init-text sites, so tun (6.12)
    /// with a static-call site aimed at `.init.text`+0 (NOP padding) was explained though the
    /// kernel oopses loading it.
    func testStaticCallSiteInInitTextThatIsNoCallIsDenied() throws {
        var ed = KoEditor(ko: try Loader612Tests.module612("tun"))
        let initText = try ed.sectionIndex(".init.text")
        let sym = try XCTUnwrap(try ed.elf { e in try e.symbols().first { $0.sectionIndex == UInt16(initText) && ($0.type == 3 || $0.type == 2) && $0.value == 0 }?.index },
                                "a symbol at .init.text+0")
        XCTAssertNoThrow(try Self.replay612(ed.ko, name: "tun", caps: [Loader612Tests.always], runtime: true), "the real module replays")
        let r = try ed.rela(for: ".static_call_sites")
        let k = try XCTUnwrap(try ed.relocations(for: ".static_call_sites").firstIndex { $0.offset == 0 })
        let type = ed.get(UInt64.self, at: r.at + 24 * k + 8) & 0xffff_ffff
        ed.put(UInt64(sym) << 32 | type, at: r.at + 24 * k + 8)
        ed.put(Int64(0), at: r.at + 24 * k + 16)
        XCTAssertThrowsError(try Self.replay612(ed.ko, name: "tun", caps: [Loader612Tests.always], runtime: true)) { e in
            let d = (e as? DenyError)?.denial
            XCTAssertEqual(d?.rule, .staticCall)
            XCTAssertTrue(d?.reason.contains("__static_call_validate") == true, "\(String(describing: d))")
        }
    }
}
