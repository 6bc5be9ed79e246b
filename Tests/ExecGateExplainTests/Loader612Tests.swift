// SPDX-License-Identifier: Apache-2.0
//
// The loader choice and the 6.12 replay on real Debian modules: 6.1 `.ko` from
// .cache/kernel/current, 6.12 `.ko.xz` from .cache/kernel-6.12 (decoded with ModuleFile.decode,
// the kernel's own in-kernel decompression rules). Expected values come from the kernel source
// rules quoted in docs/kernels/6.12-loader.md, not from a capture.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateKernelImage
import ExecGateTestSupport
import XCTest

struct MissingInput: Error, CustomStringConvertible {
    let what: String
    var description: String { "test input missing: \(what)" }
}

final class Loader612Tests: XCTestCase {
    static let release612 = "6.12.117+deb12-amd64"
    static let release61 = "6.1.0-56-amd64"

    static func module612(_ name: String) throws -> [UInt8] {
        let root = Fixtures.packageRoot + "/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64/lib/modules/6.12.117+deb12-amd64/kernel"
        var found: String?
        for dir in ["lib", "net/8021q", "drivers/net", "fs/isofs", "crypto", "net/netfilter"] {
            let p = root + "/" + dir + "/" + name + ".ko.xz"
            if (try? Fixtures.readFile(p)) != nil { found = p; break }
        }
        guard let path = found else { throw MissingInput(what: "6.12 module \(name).ko.xz under \(root) (unpack linux-image-6.12.117+deb12-amd64)") }
        return try ModuleFile.decode(try Fixtures.readFile(path)).elf
    }

    static func module61(_ name: String) throws -> [UInt8] { try Fixtures.readFile(try Fixtures.module(named: name + ".ko")) }

    func select(_ ko: [UInt8], _ release: String?) throws -> Result<ModuleLoader, LoaderSelectionError> {
        try ko.withUnsafeBytes { raw in ModuleLoader.select(elf: try ELFFile(bytes: raw), kernelRelease: release) }
    }

    func reason(_ r: Result<ModuleLoader, LoaderSelectionError>) -> String? {
        if case .failure(let e) = r { return e.reason }
        return nil
    }

    // MARK: Loader selection (deliverable 1)

    func testLoaderIsChosenFromReleaseVermagicAndStructModule() throws {
        let m61 = try Self.module61("crc7"), m612 = try Self.module612("crc7")
        XCTAssertEqual(try select(m61, Self.release61).get(), .linux6_1)
        XCTAssertEqual(try select(m61, nil).get(), .linux6_1, "a registration without a release keeps the 6.1 replay for 6.1 modules")
        XCTAssertEqual(try select(m612, Self.release612).get(), .linux6_12)

        // Fail closed, each with a reason naming what is wrong.
        let noRelease = try XCTUnwrap(reason(try select(m612, nil)))
        XCTAssertTrue(noRelease.contains("names no kernel release"), noRelease)
        let wrongKernel = try XCTUnwrap(reason(try select(m612, Self.release61)))
        XCTAssertTrue(wrongKernel.contains("6.12.117+deb12-amd64") && wrongKernel.contains("6.1.0-56-amd64"), wrongKernel)
        if case .failure(let e) = try select(m612, Self.release61) { XCTAssertEqual(e.rule, .vermagic) }
        let other = try XCTUnwrap(reason(try select(m61, "6.1.0-99-amd64")))
        XCTAssertTrue(other.contains("6.1.0-99-amd64"), other)
        guard case .failure(let e) = ModuleLoader.forRelease("6.6.15-amd64") else { return XCTFail("6.6 has no loader row") }
        XCTAssertTrue(e.reason.contains("kernel 6.6.15-amd64: module loader not known"), e.reason)
        XCTAssertEqual(try ModuleLoader.forRelease(Self.release612).get(), .linux6_12)
        // The loader is a property of the source version: every build of a family replays the same
        // way (other ABI numbers, the cloud and rt flavours, upstream sublevels).
        for r in ["6.1.0-57-amd64", "6.1.0-56-cloud-amd64", "6.1.0-56-rt-amd64", "6.1.192"] {
            XCTAssertEqual(try ModuleLoader.forRelease(r).get(), .linux6_1, r)
        }
        for r in ["6.12.48+deb13-amd64", "6.12.117+deb12-rt-amd64", "6.12.0"] {
            XCTAssertEqual(try ModuleLoader.forRelease(r).get(), .linux6_12, r)
        }
        for r in ["6.13.1", "6.10.0", "5.10.0-30-amd64", "6", "6.1", "6.x.1", "", "61.2.3", "6.12"] {
            guard case .failure = ModuleLoader.forRelease(r) else { return XCTFail("\(r) must have no loader") }
        }
        // Non-ASCII releases take the Character split, not the byte fast path: a combining mark
        // after the second "." makes it no separator (no loader), elsewhere it is text.
        XCTAssertEqual(try ModuleLoader.forRelease("6.1.0-\u{fc}").get(), .linux6_1)
        for r in ["6.1.\u{301}0", "6.12.\u{301}"] {
            guard case .failure = ModuleLoader.forRelease(r) else { return XCTFail("\(r) must have no loader") }
        }
        XCTAssertEqual(ModuleLoader.firstWord("6.1.0-56-amd64 SMP mod_unload"), "6.1.0-56-amd64")
        XCTAssertEqual(ModuleLoader.firstWord(" lead"), "")
        XCTAssertEqual(ModuleLoader.firstWord("6.1.0-\u{fc} SMP"), "6.1.0-\u{fc}")
        XCTAssertEqual(ModuleLoader.firstWord("a \u{301}b"), "a \u{301}b")  // " \u{301}" is one Character, not a space
    }

    /// `elf_validity_cache_index_mod()`: sh_size of .gnu.linkonce.this_module must be
    /// sizeof(struct module) of the build (0x500 on Debian 6.12): a module with another size could
    /// not have been loaded by it.
    func testStructModuleSizeMustMatchTheBuild() throws {
        var ko = try Self.module612("crc7")
        let idx = try ko.withUnsafeBytes { raw in try XCTUnwrap(try ELFFile(bytes: raw).section(named: ".gnu.linkonce.this_module")).index }
        let shoff = Int(ko[0x28..<0x30].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let sizeField = shoff + 64 * idx + 32
        XCTAssertEqual(ko[sizeField], 0x00)
        XCTAssertEqual(ko[sizeField + 1], 0x05)
        ko[sizeField + 1] = 0x03; ko[sizeField] = 0x80  // 6.1's 0x380
        let r = try XCTUnwrap(reason(try select(ko, Self.release612)))
        XCTAssertTrue(r.contains("0x380") && r.contains("0x500"), r)
    }

    func testNoLoaderIsAnExplainDenialNamingTheRelease() throws {
        let ko = try Self.module612("crc7")
        // A 6.12 module under a registration that names no release: no loader is chosen.
        var facts = Self.facts()
        facts.kernelRelease = nil
        let res = try ko.withUnsafeBytes { raw in
            Explainer(facts: facts).explain(elf: try ELFFile(bytes: raw), claim: ModuleClaim(name: "crc7", textBase: 0, text: [], sectionAddresses: [:]),
                                            resolver: SymbolResolver(coreExports: [:]))
        }
        guard case .denied(let d) = res.verdict else { return XCTFail("must deny") }
        XCTAssertEqual(d.rule, .loader)
        XCTAssertTrue(d.reason.contains("6.12.117+deb12-amd64") && d.reason.contains("no kernel release"), d.reason)
        // Under another registered release the module's vermagic is refused (check_modinfo()).
        facts.kernelRelease = "6.13.2+deb13-amd64"
        let res2 = try ko.withUnsafeBytes { raw in
            Explainer(facts: facts).explain(elf: try ELFFile(bytes: raw), claim: ModuleClaim(name: "crc7", textBase: 0, text: [], sectionAddresses: [:]),
                                            resolver: SymbolResolver(coreExports: [:]))
        }
        guard case .denied(let d2) = res2.verdict else { return XCTFail("must deny") }
        XCTAssertEqual(d2.rule, .vermagic)
        XCTAssertTrue(d2.reason.contains("6.13.2+deb13-amd64"), d2.reason)
    }

    // MARK: 6.12 layout

    static func facts(caps: [Int] = [], pvOps: [UInt64] = []) -> GuestFacts {
        var words = [UInt32](repeating: 0, count: 24)
        for b in caps { words[b >> 5] |= 1 << UInt32(b & 31) }
        var f = GuestFacts(exports: [:], capabilities: words, uniprocessorPatched: false, possibleCPUs: 2, pvOps: pvOps)
        f.kernelRelease = release612
        return f
    }

    /// `__layout_sections()` per type, checked against the worked example (doc §4.3, tun.ko).
    func testPerTypeLayoutOfTun() throws {
        let ko = try Self.module612("tun")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            func at(_ n: String) throws -> (ModuleMemoryType?, Int?) {
                let i = try XCTUnwrap(elf.section(named: n)).index
                return (lay.memType![i], lay.coreOffset[i] ?? lay.initOffset[i])
            }
            XCTAssertTrue(try at(".text") == (.text, 0))
            XCTAssertTrue(try at(".exit.text") == (.text, 0x8630))
            XCTAssertTrue(try at("__ksymtab_gpl") == (.rodata, 0))
            XCTAssertTrue(try at(".smp_locks") == (.rodata, 0x238))
            XCTAssertTrue(try at("__jump_table") == (.roAfterInit, 0))
            XCTAssertTrue(try at("__bug_table") == (.data, 0))
            XCTAssertTrue(try at(".static_call_sites") == (.data, 0x650))
            XCTAssertTrue(try at(".gnu.linkonce.this_module") == (.data, 0x680))
            XCTAssertTrue(try at(".init.text") == (.initText, 0))
            XCTAssertEqual(lay.textSize, 0x9000)
            // layout_symtab() (kernel/module/kallsyms.c): MOD_DATA's sections end at 0xb80; the
            // core symbols (Elf64_Sym, names, types) follow at ALIGN 8, so the allocation
            // execmem_alloc() makes, and a live tun holds, is three pages, not one.
            XCTAssertEqual(lay.typeSizes[ModuleMemoryType.data.rawValue], 0xb80)
            XCTAssertEqual(lay.coreSizeWithSymbols, 0x291b)
            XCTAssertEqual(lay.heldSize(.data), 0x3000)
            XCTAssertEqual(lay.allocationSize(.data), 0x1000)
            XCTAssertGreaterThan(lay.heldSize(.initData), lay.allocationSize(.initData), ".symtab and .strtab go to MOD_INIT_DATA")
        }
    }

    /// cast_common: S-boxes only. MOD_TEXT is never allocated (base NULL); the module is judged
    /// on structure alone and allowed with 0 executable bytes; a claim of text for it is denied.
    func testDataOnlyModuleIsJudgedWithoutText() throws {
        let ko = try Self.module612("cast_common")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            XCTAssertEqual(lay.textSize, 0)
            let bases: [ModuleMemoryType: UInt64] = [.data: 0xffff_ffff_c000_1000, .rodata: 0xffff_ffff_c000_4000, .roAfterInit: 0xffff_ffff_c000_8000]
            var secs: [String: UInt64] = [:]
            for s in elf.sections where lay.flags[s.index].contains(.alloc) && s.size > 0 {
                guard let t = lay.memType![s.index], !t.isInit, let o = lay.coreOffset[s.index], let b = bases[t] else { continue }
                secs[s.name] = b + UInt64(o)
            }
            let claim = ModuleClaim(name: "cast_common", textBase: 0, text: [], sectionAddresses: secs)
            let ok = Explainer(facts: Self.facts()).explain(elf: elf, claim: claim, resolver: SymbolResolver(coreExports: [:]))
            guard case .allowed(let st) = ok.verdict else { return XCTFail("\(ok.verdict)") }
            XCTAssertEqual(st.executableBytes, 0)
            // Its exports (the S-boxes other modules link against) resolve into its MOD_RODATA.
            let s1 = try XCTUnwrap(ok.exports?.symbols["cast_s1"])
            XCTAssertTrue((bases[.rodata]!..<bases[.rodata]! + 0x3000).contains(s1), "0x\(String(s1, radix: 16))")

            var withText = claim
            withText.textBase = 0xffff_ffff_c001_0000
            guard case .denied(let d1) = Explainer(facts: Self.facts()).explain(elf: elf, claim: withText, resolver: SymbolResolver(coreExports: [:])).verdict else {
                return XCTFail("a MOD_TEXT base for a module without text must be denied")
            }
            XCTAssertEqual(d1.rule, .layout)
            var moved = claim
            moved.sectionAddresses[".rodata"]! += 0x10
            guard case .denied(let d2) = Explainer(facts: Self.facts()).explain(elf: elf, claim: moved, resolver: SymbolResolver(coreExports: [:])).verdict else {
                return XCTFail("sections of one type disagreeing on its base must be denied")
            }
            XCTAssertTrue(d2.reason.contains("MOD_RODATA"), d2.reason)
        }
    }

    /// What a 6.12 session hands the verifier to hold (`Session.allocations`, the allocations an
    /// allowed explanation's `ExplainResult.dataAllocations` carries): each core data type at its
    /// checked base, MOD_DATA with the core symbols' pages (a review of round 11: nothing asserted
    /// the served path's ranges).
    func testTheSessionsDataAllocationsAreTheHeldOnes() throws {
        let ko = try Self.module612("tun")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            var claim = ModuleClaim(name: "tun", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
            let d: UInt64 = 0xffff_ffff_c020_0000, r: UInt64 = 0xffff_ffff_c030_0000, a: UInt64 = 0xffff_ffff_c040_0000
            claim.memoryBases = [.data: d, .rodata: r, .roAfterInit: a]
            let s = try Session(elf: elf, claim: claim, facts: Self.facts(), resolver: SymbolResolver(coreExports: [:]))
            XCTAssertEqual(s.allocations([.data, .rodata, .roAfterInit]),
                           [d..<d + 0x3000, r..<r + UInt64(lay.heldSize(.rodata)), a..<a + UInt64(lay.heldSize(.roAfterInit))])
            XCTAssertEqual(s.allocations([.initData, .initRodata]), [], "the core session holds no init base")
        }
    }

    /// tun's MOD_DATA is one page of sections and three as allocated (layout_symtab() appends the
    /// core symbols): MOD_RODATA on the second page lies in MOD_DATA's allocation, a layout the
    /// kernel never makes (round 11), and is denied; on the fourth it is not.
    func testATypeOnTheSymbolPagesOfMODDataIsALayoutDenial() throws {
        let ko = try Self.module612("tun")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            XCTAssertEqual(lay.heldSize(.data), 0x3000)
            func verdict(rodataAt off: UInt64) -> Verdict {
                let d: UInt64 = 0xffff_ffff_c020_0000
                var claim = ModuleClaim(name: "tun", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
                claim.memoryBases = [.data: d, .rodata: d + off, .roAfterInit: 0xffff_ffff_c040_0000]
                return Explainer(facts: Self.facts()).explain(elf: elf, claim: claim, resolver: SymbolResolver(coreExports: [:])).verdict
            }
            guard case .denied(let on) = verdict(rodataAt: 0x1000) else { return XCTFail("MOD_RODATA on MOD_DATA's symbol pages") }
            XCTAssertEqual(on.rule, .layout)
            XCTAssertTrue(on.reason.contains("overlaps MOD_DATA"), on.reason)
            guard case .denied(let after) = verdict(rodataAt: 0x3000) else { return XCTFail("zero text allowed") }
            XCTAssertFalse(after.reason.contains("overlaps"), after.reason)
        }
    }

    // MARK: 6.12 alternatives: paravirt as ALWAYS|DIRECT_CALL + nested NOT XENPV (8021q)

    /// Replays relocations and module_finalize() on 8021q with every import at a distinct kernel
    /// address and returns the bytes of the first `.altinstructions` site.
    func pvSite(caps: [Int], slotTarget: (_ bug: UInt64, _ nop: UInt64) -> UInt64) throws -> (bytes: [UInt8], addr: UInt64, target: UInt64) {
        let ko = try Self.module612("8021q")
        return try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            var exports: [String: UInt64] = [:]
            for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            let pv: UInt64 = 0xffff_ffff_8300_0000
            exports["pv_ops"] = pv
            exports["BUG_func"] = 0xffff_ffff_8200_0000
            exports["nop_func"] = 0xffff_ffff_8200_0040
            let target = slotTarget(exports["BUG_func"]!, exports["nop_func"]!)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            var claim = ModuleClaim(name: "8021q", textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
            claim.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
            let s = try Session(elf: elf, claim: claim, facts: Self.facts(caps: caps, pvOps: [UInt64](repeating: target, count: 83)),
                                resolver: SymbolResolver(coreExports: exports))
            try s.relocate()
            try s.applyBootTimePatching()
            let t = try XCTUnwrap(s.table(".altinstructions"))
            XCTAssertEqual(t.bytes.count % 14, 0, "14-byte alt_instr")
            let rel = Int32(bitPattern: UInt32(t.bytes[0]) | UInt32(t.bytes[1]) << 8 | UInt32(t.bytes[2]) << 16 | UInt32(t.bytes[3]) << 24)
            let site = t.addr &+ UInt64(bitPattern: Int64(rel))
            let off = try XCTUnwrap(s.execOffset(site, 6))
            return (Array(s.image[off..<off + 6]), site, target)
        }
    }

    static let always = 3 * 32 + 21, xenpv = 8 * 32 + 16

    func testParavirtSiteOnNativeGuestBecomesTheNestedReplacement() throws {
        // Not Xen: entry 1 (NOT XENPV) is taken last: `pushf; pop %rax` + NOP4 (doc §6.5 worked result).
        let r = try pvSite(caps: [Self.always]) { _, _ in 0xffff_ffff_8123_4560 }
        XCTAssertEqual(r.bytes, [0x9c, 0x58, 0x0f, 0x1f, 0x40, 0x00])
    }

    func testParavirtSiteOnXenBecomesADirectCall() throws {
        let r = try pvSite(caps: [Self.always, Self.xenpv]) { _, _ in 0xffff_ffff_8123_4560 }
        let disp = Int64(bitPattern: r.target &- (r.addr + 5))
        let u = UInt32(bitPattern: Int32(disp))
        XCTAssertEqual(r.bytes, [0xe8, UInt8(u & 0xff), UInt8(u >> 8 & 0xff), UInt8(u >> 16 & 0xff), UInt8(u >> 24), 0x90], "a lone trailing NOP is kept")
        let n = try pvSite(caps: [Self.always, Self.xenpv]) { _, nop in nop }
        XCTAssertEqual(n.bytes, [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], "nop_func: the call disappears")
    }

    func testCallDepthTrackingAndITSAreNamedDenials() throws {
        for (bit, word) in [(11 * 32 + 19, "call-depth"), (21 * 32 + 6, "ITS")] {
            XCTAssertThrowsError(try pvSite(caps: [Self.always, bit]) { _, _ in 0xffff_ffff_8123_4560 }) { e in
                let d = (e as? DenyError)?.denial
                XCTAssertEqual(d?.rule, .loader)
                XCTAssertTrue(d?.reason.contains(word) == true && d?.reason.contains("not modelled") == true, "\(String(describing: d))")
            }
        }
    }

    /// nf_tables (6.12) has a `static_cpu_has()` in `__init` code: its alternative's replacement
    /// (`.altinstr_replacement`) and fallback block (`.altinstr_aux`) branch into `.init.text`, and
    /// stay in core text after init is freed. Those dead branches are explained with the claimed
    /// `.init.text` address; without one, or with one on top of the core text, they are denied
    /// (`init-symbol`).
    func testInitTextAlternativeTemplatesUseTheClaimedInitAddress() throws {
        let ko = try Self.module612("nf_tables")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            var exports: [String: UInt64] = [:]
            for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
            }
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            let text: UInt64 = 0xffff_ffff_c010_0000
            func relocate(initText: UInt64?) throws -> Session {
                var claim = ModuleClaim(name: "nf_tables", textBase: text, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: [:])
                claim.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
                if let i = initText { claim.sectionAddresses[".init.text"] = i }
                claim.percpuBase = 0x3_0000
                var facts = Self.facts()
                facts.modulePercpuRange = 0x3_0000..<0x3_2000
                let s = try Session(elf: elf, claim: claim, facts: facts, resolver: SymbolResolver(coreExports: exports))
                try s.relocate()
                return s
            }
            let initText: UInt64 = 0xffff_ffff_c050_0000
            let s = try relocate(initText: initText)
            // The first replacement is `jmp .init.text+0x79+4` (R_X86_64_PC32 at +1, addend 0x79).
            let repl = try XCTUnwrap(elf.section(named: ".altinstr_replacement"))
            let at = try XCTUnwrap(s.addr[repl.index]) &+ 1
            let off = try XCTUnwrap(s.execOffset(at, 4))
            let want = UInt32(truncatingIfNeeded: initText &+ 0x79 &- at)
            XCTAssertEqual(Array(s.image[off..<off + 4]), (0..<4).map { UInt8(truncatingIfNeeded: want >> (8 * $0)) })
            for bad in [nil, text, text + 0x1000, initText + 0x10] as [UInt64?] {
                XCTAssertThrowsError(try relocate(initText: bad), "init.text at \(String(describing: bad))") { e in
                    XCTAssertEqual((e as? DenyError)?.denial.rule, .initSymbol, "\(e)")
                }
            }
        }
    }

    func testNopTableAndOptimizeNops612() {
        XCTAssertEqual(x86Nops612[11], [0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00])
        var b: [UInt8] = [0x9c, 0x58, 0x90, 0x90, 0x90, 0x90]
        XCTAssertTrue(optimizeNops612(&b, 6))
        XCTAssertEqual(b, [0x9c, 0x58, 0x0f, 0x1f, 0x40, 0x00])
        var j = [UInt8](repeating: 0x90, count: 20) + [0xc3]
        XCTAssertTrue(optimizeNops612(&j, 20))
        XCTAssertEqual(Array(j[0..<3]), [0xeb, 18, 0xcc], "runs above 11 bytes become a short jmp over int3")
        var last: [UInt8] = [0xe8, 1, 2, 3, 4, 0x90]
        XCTAssertTrue(optimizeNops612(&last, 6))
        XCTAssertEqual(last, [0xe8, 1, 2, 3, 4, 0x90])
    }
}

extension Loader612Tests {
    /// Hostile input on the 6.12 paths: flipped bytes anywhere in the ELF, and concentrated on the
    /// tables the 6.12 replay parses (.altinstructions, .altinstr_replacement, .ibt_endbr_seal,
    /// .smp_locks), never crash the engine; each corrupted module gets a verdict.
    func testCorrupted612ModulesNeverCrashTheEngine() throws {
        var checked = 0
        for name in ["8021q", "tun"] {
            let ko = try Self.module612(name)
            var exports: [String: UInt64] = [:]
            var hot: [Range<Int>] = []
            var textSize = 0
            try ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
                    exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
                }
                for n in [".altinstructions", ".altinstr_replacement", ".ibt_endbr_seal", ".smp_locks", ".rela.altinstructions"] {
                    if let s = elf.section(named: n), !s.isNoBits, s.size > 0 { hot.append(s.fileRange) }
                }
                textSize = try XCTUnwrap(ModuleLayout.compute612(elf)).textSize
            }
            exports["pv_ops"] = 0xffff_ffff_8300_0000
            exports["BUG_func"] = 0xffff_ffff_8200_0000
            exports["nop_func"] = 0xffff_ffff_8200_0040
            var claim = ModuleClaim(name: name, textBase: 0xffff_ffff_c010_0000, text: [UInt8](repeating: 0, count: textSize), sectionAddresses: [:])
            claim.memoryBases = [.data: 0xffff_ffff_c020_0000, .rodata: 0xffff_ffff_c030_0000, .roAfterInit: 0xffff_ffff_c040_0000]
            let facts = Self.facts(caps: [Self.always], pvOps: [UInt64](repeating: 0xffff_ffff_8123_4560, count: 83))
            var rng: UInt64 = 0x612
            for i in 0..<300 {
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                var bad = ko
                let o: Int
                if i % 2 == 0, !hot.isEmpty {
                    let r = hot[Int((rng >> 20) % UInt64(hot.count))]
                    o = r.lowerBound + Int((rng >> 33) % UInt64(r.count))
                } else {
                    o = Int((rng >> 33) % UInt64(bad.count))
                }
                bad[o] ^= UInt8(truncatingIfNeeded: rng >> 9) | 1
                bad.withUnsafeBytes { raw in
                    guard let elf = try? ELFFile(bytes: raw) else { return }
                    let res = Explainer(facts: facts).explain(elf: elf, claim: claim, resolver: SymbolResolver(coreExports: exports))
                    XCTAssertFalse(res.verdict.isAllowed, "an all-zero claim is never the end state")
                    checked += 1
                }
            }
        }
        XCTAssertGreaterThan(checked, 200)
    }
}
