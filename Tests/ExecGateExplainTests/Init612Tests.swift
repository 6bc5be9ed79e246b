// SPDX-License-Identifier: Apache-2.0
//
// Linux 6.12 init text (MOD_INIT_TEXT) as an executable region, on real signed Debian 6.12.117
// modules (.cache/kernel-6.12). 6.12 allocates every `enum mod_mem_type` on its own
// (`move_module()`), so the init session checks three init bases against the four core ones and
// replays apply_relocations(), module_finalize() (no smp-lock rewriting: only mem[MOD_TEXT] is
// passed), ftrace_module_init(), jump_label_add_module() and static_call_add_module() on the
// init sites. The expected init bytes are the loader replay of the signed module (as
// InitTextTests does for 6.1); what the tests check is that the explainer accepts exactly that
// and denies every change, every hostile placement, with the first differing byte.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateKernelImage
import ExecGateTestSupport
import XCTest

final class Init612Tests: XCTestCase {
    static let root = Fixtures.packageRoot + "/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64/lib/modules/6.12.117+deb12-amd64/kernel/"

    /// A 6.12 module by its path under `kernel/`, decompressed as the kernel does.
    static func ko(_ rel: String) throws -> [UInt8] {
        let p = root + rel + ".ko.xz"
        guard let b = try? Fixtures.readFile(p) else { throw MissingInput(what: "6.12 module \(p) (unpack linux-image-6.12.117+deb12-amd64)") }
        return try ModuleFile.decode(b).elf
    }

    /// Modules with init text whose init sites exercise every stage (found by a scan of the 4230
    /// Debian 6.12 modules: relocation records of the tables against `.init.text`).
    static let modules: [(path: String, name: String)] = [
        ("arch/x86/kvm/kvm-intel", "kvm_intel"),                 // 6 alternatives, 5 smp locks, jump label, ENDBR seal, returns, ftrace
        ("arch/x86/kernel/cpu/mce/mce-inject", "mce_inject"),    // 12 alternatives, a static call
        ("drivers/xen/xen-acpi-processor", "xen_acpi_processor"), // 2 jump labels, 2 static calls
        ("lib/raid6/raid6_pq", "raid6_pq"),                      // 4 retpolines, 3 static calls
        ("net/netfilter/nf_tables", "nf_tables"),                // init alternatives whose replacement (core) branches into .init.text
        ("drivers/ras/amd/fmpm", "fmpm"),                        // 17 jump labels, 4 alternatives
        ("net/8021q/8021q", "8021q"),
        ("drivers/acpi/battery", "battery"),                     // .init.rodata and .init.data (MOD_INIT_RODATA, MOD_INIT_DATA)
    ]

    static let always = 3 * 32 + 21, rethunk = 11 * 32 + 14
    static let textBase: UInt64 = 0xffff_ffff_c100_0000
    /// One base per type, 16 MiB apart (every type its own allocation, as move_module() makes them).
    static let bases: [ModuleMemoryType: UInt64] = [
        .text: textBase, .data: 0xffff_ffff_c200_0000, .rodata: 0xffff_ffff_c300_0000, .roAfterInit: 0xffff_ffff_c400_0000,
        .initText: 0xffff_ffff_c500_0000, .initData: 0xffff_ffff_c600_0000, .initRodata: 0xffff_ffff_c700_0000,
    ]

    /// Everything one module's tests need: the facts, the resolver, the honest claim (core and
    /// init: the loader replay, every run-time site in its key-off state) and the replayed init
    /// session's per-byte classes.
    struct Case {
        var name: String
        var ko: [UInt8]
        var facts: GuestFacts
        var resolver: SymbolResolver
        var claim: ModuleClaim
        var initClasses: [UInt8]
        var layout: ModuleLayout
        var initSiteCounts: [ExplanationClass: Int]

        func explain(_ c: ModuleClaim, ko other: [UInt8]? = nil) throws -> ExplainResult {
            try (other ?? ko).withUnsafeBytes { raw in Explainer(facts: facts).explain(elf: try ELFFile(bytes: raw), claim: c, resolver: resolver) }
        }

        func denial(_ c: ModuleClaim, file: StaticString = #filePath, line: UInt = #line) throws -> Denial {
            let r = try explain(c)
            guard case .denied(let d) = r.verdict else { XCTFail("allowed: \(r.verdict)", file: file, line: line); throw MissingInput(what: "a denial") }
            return d
        }
    }

    static func facts(caps: [Int]) -> GuestFacts {
        var f = Loader612Tests.facts(caps: caps, pvOps: [UInt64](repeating: 0xffff_ffff_8123_4560, count: 83))
        f.uniprocessorPatched = true  // core `lock` prefixes become `ds`; init ones must not
        f.possibleCPUs = 1
        f.modulePercpuRange = 0x3_0000..<0x13_0000
        return f
    }

    /// `bytes` with every run-time site written in its load state: keys off, ftrace NOP, static
    /// calls NULL, except a key the module defines with a default (its trampoline's
    /// DEFINE_STATIC_CALL target, as kvm's tracepoint keys `tp_func_kvm_*` → `__traceiter_kvm_*`),
    /// which static_call_add_module() → __static_call_init() writes at each site: the state the
    /// kernel gives them (a tracepoint key is never NULL, kernel/tracepoint.c
    /// tracepoint_update_call()). The same state for every site of a key.
    static func settle(_ s: Session) -> [UInt8] {
        var img = s.image
        for v in s.variable {
            let e = v.encode(v.group.flatMap { s.ownKeyDefaults[$0]?.min() } ?? 0)
            for k in e.indices { img[v.offset + k] = e[k] }
        }
        return img
    }

    /// Every undefined symbol of `elf` exported at its own address, with the thunk array, `pv_ops`,
    /// `BUG_func` and `nop_func` the 6.12 stages ask for.
    static func resolver(for elf: ELFFile) throws -> SymbolResolver {
        var exports: [String: UInt64] = [:]
        for (k, s) in try elf.symbols().enumerated() where s.isUndefined && !s.name.isEmpty {
            exports[s.name] = 0xffff_ffff_8100_0000 + UInt64(k) * 0x40
        }
        for (r, n) in ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"].enumerated() {
            exports["__x86_indirect_thunk_" + n] = 0xffff_ffff_8280_0000 + UInt64(r) * 32
        }
        exports["pv_ops"] = 0xffff_ffff_8300_0000
        exports["BUG_func"] = 0xffff_ffff_8200_0000
        exports["nop_func"] = 0xffff_ffff_8200_0040
        return SymbolResolver(coreExports: exports)
    }

    /// The sysfs view: every allocated section at `bases[type]` + its offset (init ones included).
    static func sectionAddresses(_ elf: ELFFile, _ lay: ModuleLayout, _ mt: [ModuleMemoryType?]) -> [String: UInt64] {
        var secs: [String: UInt64] = [:]
        for s in elf.sections where lay.flags[s.index].contains(.alloc) {
            guard let t = mt[s.index], let o = t.isInit ? lay.initOffset[s.index] : lay.coreOffset[s.index], let b = bases[t] else { continue }
            if lay.allocationSize(t) > 0 { secs[s.name] = b + UInt64(o) }
        }
        return secs
    }

    static func make(_ path: String, _ name: String, caps: [Int] = [always, rethunk]) throws -> Case {
        let ko = try Self.ko(path)
        return try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let resolver = try Self.resolver(for: elf)
            let facts = Self.facts(caps: caps)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            let mt = try XCTUnwrap(lay.memType)
            XCTAssertGreaterThan(lay.allocationSize(.initText), 0, "\(name) has init text")
            // The sysfs view: every allocated section at base[type] + offset (init ones included:
            // the claim is made while init runs).
            let secs = Self.sectionAddresses(elf, lay, mt)
            var claim = ModuleClaim(name: name, textBase: textBase, text: [UInt8](repeating: 0, count: lay.textSize), sectionAddresses: secs,
                                    percpuBase: 0x3_0000)
            // Core: the loader replay on a zero claim, then its run-time sites settled.
            let core0 = try Session(elf: elf, claim: claim, facts: facts, resolver: resolver)
            try core0.relocate(); try core0.applyBootTimePatching(); try core0.addRuntimeSites()
            claim.text = settle(core0)
            let core = try Session(elf: elf, claim: claim, facts: facts, resolver: resolver)
            try core.run()
            // Init: the same on the init region, inheriting the core's key state.
            claim.initTextBase = bases[.initText]
            claim.initText = [UInt8](repeating: 0, count: lay.allocationSize(.initText))
            let i0 = try Session(elf: elf, claim: claim, facts: facts, resolver: resolver, region: .initText,
                                 inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: core.finalGroupState))
            try i0.relocate(); try i0.applyBootTimePatching(); try i0.addRuntimeSites()
            XCTAssertGreaterThan(i0.relocCount, 0)
            claim.initText = settle(i0)
            return Case(name: name, ko: ko, facts: facts, resolver: resolver, claim: claim, initClasses: i0.cls, layout: lay,
                        initSiteCounts: i0.statistics().sites)
        }
    }

    /// Entries of table `table` (`stride` bytes each, the site field at +0) whose site is in the
    /// module's init text, counted from the signed relocation records (independent of the replay).
    static func initEntries(_ ko: [UInt8], _ table: String, stride: Int) throws -> Int {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let syms = try elf.symbols()
            guard let initText = elf.section(named: ".init.text") else { return 0 }
            var n = 0
            for rs in try elf.relocationSections() where elf.sections[rs.targetSectionIndex].name == table {
                for r in rs.relocations where Int(r.offset) % stride == 0 && Int(syms[Int(r.symbolIndex)].sectionIndex) == initText.index { n += 1 }
            }
            return n
        }
    }

    // MARK: The honest claim

    /// The replayed init region of each module is allowed; its statistics are exact: every byte
    /// of PAGE_ALIGN(mem[MOD_INIT_TEXT].size) counted once, the padding exactly what the init
    /// text sections leave, one ftrace / ENDBR-seal / jump-label / static-call site per table
    /// entry in init text; the core verdict is the one the core claim alone gets.
    func testReplayedInitRegionIsAllowedWithExactStatistics() throws {
        var seen = Set<ExplanationClass>()
        for (path, name) in Self.modules {
            let c = try Self.make(path, name)
            let r = try c.explain(c.claim)
            guard case .allowed(let core) = r.verdict else { return XCTFail("\(name): \(r.verdict)") }
            let st = try XCTUnwrap(r.initStatistics, name)
            let size = c.layout.allocationSize(.initText)
            XCTAssertEqual(st.executableBytes, size, name)
            XCTAssertEqual(st.bytesByClass.values.reduce(0, +), size, name)
            let sectionBytes: Int = try c.ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                return elf.sections.filter { c.layout.memType?[$0.index] == .initText }.reduce(0) { $0 + $1.size }
            }
            // Padding: the allocation minus the init text sections (alignment gaps and the tail up
            // to the page, zero from module_memory_alloc()'s memset); no rule writes there.
            XCTAssertEqual(st.bytesByClass[.padding] ?? 0, size - sectionBytes, name)
            XCTAssertEqual(st.sites[.ftrace] ?? 0, try Self.initEntries(c.ko, "__mcount_loc", stride: 8), "\(name) ftrace")
            XCTAssertEqual(st.sites[.endbrSeal] ?? 0, try Self.initEntries(c.ko, ".ibt_endbr_seal", stride: 4), "\(name) endbr")
            XCTAssertEqual(st.sites[.jumpLabel] ?? 0, try Self.initEntries(c.ko, "__jump_table", stride: 16), "\(name) jump labels")
            XCTAssertEqual(st.sites[.staticCall] ?? 0, try Self.initEntries(c.ko, ".static_call_sites", stride: 8), "\(name) static calls")
            XCTAssertEqual(st.sites[.returnThunk] ?? 0, try Self.initEntries(c.ko, ".return_sites", stride: 4), "\(name) returns")
            XCTAssertEqual(st.sites[.retpoline] ?? 0, try Self.initEntries(c.ko, ".retpoline_sites", stride: 4), "\(name) retpolines")
            XCTAssertNil(st.sites[.smpLock], "\(name): no smp-lock rewriting in init text")
            XCTAssertEqual(st.sites, c.initSiteCounts, name)
            for (k, v) in st.bytesByClass where v > 0 { seen.insert(k) }
            // The core verdict does not depend on the init region.
            var coreOnly = c.claim
            coreOnly.initTextBase = nil
            coreOnly.initText = nil
            guard case .allowed(let alone) = try c.explain(coreOnly).verdict else { return XCTFail("\(name): core alone denied") }
            XCTAssertEqual(alone.bytesByClass, core.bytesByClass, name)
            XCTAssertEqual(alone.sites, core.sites, name)
            XCTAssertEqual(alone.relocationsApplied, core.relocationsApplied, name)
            XCTAssertNil(try c.explain(coreOnly).initStatistics)
        }
        for k: ExplanationClass in [.elf, .relocation, .returnThunk, .alternative, .endbrSeal, .ftrace, .jumpLabel, .staticCall, .retpoline, .padding] {
            XCTAssertTrue(seen.contains(k), "some module's init text has \(k) bytes")
        }
    }

    /// module_finalize() (6.12) passes only mem[MOD_TEXT] to alternatives_smp_module_add(): on a
    /// uniprocessor-patched guest the core's `lock` prefixes are `ds`, init text keeps `lock`.
    /// A claim with `ds` in init text (what a replay over the init region would give) is denied.
    func testInitLockPrefixesStayLock() throws {
        let c = try Self.make("arch/x86/kvm/kvm-intel", "kvm_intel")
        let n = try Self.initEntries(c.ko, ".smp_locks", stride: 4)
        XCTAssertGreaterThan(n, 0)
        // The init `.smp_locks` sites, from the relocated table (core data, read by the init session).
        let sites: [UInt64] = try c.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: c.claim, facts: c.facts, resolver: c.resolver, region: .initText)
            try s.relocate()
            return try s.relativeSites(".smp_locks").filter { s.execOffset($0, 1) != nil }
        }
        XCTAssertEqual(sites.count, n)
        let ib = try XCTUnwrap(c.claim.initTextBase)
        for a in sites {
            let off = Int(a - ib)
            XCTAssertEqual(c.claim.initText![off], 0xf0, "init lock prefix at 0x\(String(a, radix: 16)) is kept")
            var bad = c.claim
            bad.initText![off] = 0x3e
            let d = try c.denial(bad)
            XCTAssertEqual(d.address, a)
        }
    }

    // MARK: Every byte

    /// A single-byte change at sampled offsets of each class of the init region is denied, at
    /// that byte.
    func testEveryInitByteFlipIsDeniedAtThatByte() throws {
        for (path, name) in Self.modules {
            let c = try Self.make(path, name)
            var byClass: [UInt8: [Int]] = [:]
            for (i, k) in c.initClasses.enumerated() { byClass[k, default: []].append(i) }
            var rng: UInt64 = 0x1_2612
            for (k, offs) in byClass.sorted(by: { $0.key < $1.key }) {
                var picks = [offs.first!, offs.last!, offs[offs.count / 2]]
                for _ in 0..<5 { rng = rng &* 6364136223846793005 &+ 1442695040888963407; picks.append(offs[Int((rng >> 33) % UInt64(offs.count))]) }
                for off in Set(picks) {
                    var bad = c.claim
                    bad.initText![off] ^= 0x01
                    let d = try c.denial(bad)
                    XCTAssertEqual(d.address, c.claim.initTextBase! + UInt64(off),
                                   "\(name) class \(ExplanationClass(rawValue: Int(k))!) at +0x\(String(off, radix: 16)): \(d)")
                    XCTAssertNotEqual(d.rule, .layout)
                }
            }
        }
    }

    // MARK: Layout of the init allocations

    /// `claim` with MOD_INIT_TEXT (or another init type) moved to `base`, its sections with it.
    static func moved(_ c: Case, _ t: ModuleMemoryType, to base: UInt64) throws -> ModuleClaim {
        var claim = c.claim
        try c.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            for s in elf.sections where c.layout.memType?[s.index] == t && c.layout.flags[s.index].contains(.alloc) {
                if let o = c.layout.initOffset[s.index], claim.sectionAddresses[s.name] != nil { claim.sectionAddresses[s.name] = base + UInt64(o) }
            }
        }
        if t == .initText { claim.initTextBase = base }
        // The core bytes as the loader leaves them for this placement (a core dead branch into
        // `.init.text`, nf_tables/kvm_intel, follows it), so the init session is what decides;
        // a placement the core session itself refuses keeps the old core bytes (denied anyway).
        try c.ko.withUnsafeBytes { raw in
            let core0 = try Session(elf: try ELFFile(bytes: raw), claim: claim, facts: c.facts, resolver: c.resolver)
            do { try core0.relocate(); try core0.applyBootTimePatching(); try core0.addRuntimeSites() } catch is DenyError { return }
            claim.text = settle(core0)
        }
        return claim
    }

    /// Hostile placements of the init allocations, each with core bytes replayed for it: the
    /// init session's set-up refuses them (`layout`; battery: MOD_INIT_TEXT, MOD_INIT_DATA and
    /// MOD_INIT_RODATA). For a module whose core text has dead branches into `.init.text`
    /// (kvm_intel: init-site alternatives' templates), the core
    /// session may refuse first (`init-symbol`: `.init.text` not a page-aligned init allocation
    /// outside the core text); either way denied.
    func testHostileInitPlacementsAreDenied() throws {
        for (path, name) in [("drivers/acpi/battery", "battery"), ("arch/x86/kvm/kvm-intel", "kvm_intel")] {
            try hostilePlacements(try Self.make(path, name), coreMayRefuse: name == "kvm_intel")
        }
    }

    func hostilePlacements(_ c: Case, coreMayRefuse: Bool) throws {
        let b = Self.bases
        func expectLayout(_ claim: ModuleClaim, _ words: [String], _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let d = try c.denial(claim, file: file, line: line)
            if coreMayRefuse && d.rule == .initSymbol && d.section == ".init.text" { return }
            XCTAssertEqual(d.rule, .layout, "\(c.name) \(what): \(d)", file: file, line: line)
            for w in words { XCTAssertTrue(d.reason.contains(w), "\(c.name) \(what): \(d.reason)", file: file, line: line) }
        }
        // MOD_INIT_TEXT: misaligned, outside the module area, over core text, rodata, data, over
        // the init data, straddling the end of core text.
        try expectLayout(try Self.moved(c, .initText, to: b[.initText]! + 0x10), ["MOD_INIT_TEXT", "page-aligned"], "misaligned")
        try expectLayout(try Self.moved(c, .initText, to: 0xffff_ffff_8100_0000), ["MOD_INIT_TEXT", "module area"], "kernel text")
        try expectLayout(try Self.moved(c, .initText, to: 0xffff_ffff_ff00_0000), ["MOD_INIT_TEXT", "module area"], "past the module area")
        for t: ModuleMemoryType in [.text, .rodata, .data, .roAfterInit, .initData] {
            try expectLayout(try Self.moved(c, .initText, to: b[t]!), ["MOD_INIT_TEXT", "overlaps"], "over \(t)")
        }
        try expectLayout(try Self.moved(c, .initText, to: b[.text]! + UInt64(c.layout.textSize) - 0x1000), ["overlaps"], "straddling core text's end")
        // MOD_INIT_DATA over core rodata and over core text; MOD_INIT_RODATA likewise where the module has it.
        for t: ModuleMemoryType in [.initData, .initRodata] where c.layout.allocationSize(t) > 0 {
            try expectLayout(try Self.moved(c, t, to: b[.rodata]!), ["\(t)", "overlaps"], "\(t) over rodata")
            try expectLayout(try Self.moved(c, t, to: b[.text]!), ["overlaps"], "\(t) over text")
            try expectLayout(try Self.moved(c, t, to: b[t]! + 8), ["\(t)", "page-aligned"], "\(t) misaligned")
        }
        XCTAssertGreaterThan(c.layout.allocationSize(.initData), 0, "\(c.name) has init data")
        // Init data base disagreeing with its sections; one init section off its type's base.
        var given = c.claim
        given.memoryBases[.initData] = b[.initData]! + 0x1000
        try expectLayout(given, ["MOD_INIT_DATA", "disagrees"], "init data base vs sections")
        let initDataSecs: [String] = try c.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            return elf.sections.filter { c.layout.memType?[$0.index] == .initData && c.layout.flags[$0.index].contains(.alloc) && c.claim.sectionAddresses[$0.name] != nil }.map(\.name)
        }
        if initDataSecs.count >= 2 {
            var split = c.claim
            split.sectionAddresses[initDataSecs.last!]! += 0x1000
            try expectLayout(split, ["MOD_INIT_DATA"], "init data sections disagreeing")
        }
        var twoBases = c.claim
        twoBases.memoryBases[.initText] = b[.text]!
        try expectLayout(twoBases, ["MOD_INIT_TEXT", "disagrees"], "a second MOD_INIT_TEXT base")
        // No base at all for an allocated init type.
        var none = c.claim
        for n in initDataSecs { none.sectionAddresses[n] = nil }
        try expectLayout(none, ["no base for MOD_INIT_DATA"], "init data base missing")
        // `.init.text` claimed somewhere else than the init base: the init layout decides.
        var stale = c.claim
        stale.sectionAddresses[".init.text"] = b[.text]!
        try expectLayout(stale, [".init.text"], "init text section over core text")
        // Wrong sizes.
        for delta in [-4096, 4096] {
            var wrong = c.claim
            wrong.initText = delta < 0 ? Array(c.claim.initText!.dropLast(4096)) : c.claim.initText! + [UInt8](repeating: 0, count: 4096)
            try expectLayout(wrong, ["MOD_INIT_TEXT"], "init size \(delta)")
        }
        var half = c.claim
        half.initTextBase = nil
        try expectLayout(half, ["no init region"], "init bytes without a base")
    }

    /// What 6.12 does to init text that the replay does not model stays denied by name in the
    /// init session: ITS thunk pages for init retpoline sites (its_init_mod() /
    /// its_allocate_thunk(): patch_retpoline() takes no text range) and call-depth tracking
    /// (callthunks_patch_module_calls(), emit_call_track_retpoline()).
    func testUnmodelledInitPatchingIsDeniedByName() throws {
        let c = try Self.make("lib/raid6/raid6_pq", "raid6_pq")
        XCTAssertGreaterThan(try Self.initEntries(c.ko, ".retpoline_sites", stride: 4), 0)
        for (bit, word) in [(21 * 32 + 6, "ITS"), (11 * 32 + 19, "call-depth")] {
            let facts = Self.facts(caps: [Self.always, Self.rethunk, bit])
            try c.ko.withUnsafeBytes { raw in
                let s = try Session(elf: try ELFFile(bytes: raw), claim: c.claim, facts: facts, resolver: c.resolver, region: .initText)
                try s.relocate()
                XCTAssertThrowsError(try s.applyBootTimePatching()) { e in
                    let d = (e as? DenyError)?.denial
                    XCTAssertEqual(d?.rule, .loader)
                    XCTAssertTrue(d?.reason.contains(word) == true && d?.reason.contains("not modelled") == true, "\(String(describing: d))")
                }
            }
        }
    }

    /// A module without init text (cast_common: MOD_INIT_TEXT never allocated) cannot have an
    /// executable init region: any claimed one is denied, empty or not.
    func testInitRegionOfAModuleWithoutInitTextIsDenied() throws {
        let ko = try Loader612Tests.module612("cast_common")
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let lay = try XCTUnwrap(ModuleLayout.compute612(elf))
            XCTAssertEqual(lay.allocationSize(.initText), 0)
            var secs: [String: UInt64] = [:]
            for s in elf.sections where lay.flags[s.index].contains(.alloc) && s.size > 0 {
                guard let t = lay.memType![s.index], !t.isInit, let o = lay.coreOffset[s.index], let b = Self.bases[t] else { continue }
                secs[s.name] = b + UInt64(o)
            }
            var claim = ModuleClaim(name: "cast_common", textBase: 0, text: [], sectionAddresses: secs)
            let facts = Self.facts(caps: [Self.always])
            XCTAssertTrue(Explainer(facts: facts).explain(elf: elf, claim: claim, resolver: SymbolResolver(coreExports: [:])).verdict.isAllowed)
            for n in [0, 4096] {
                claim.initTextBase = Self.bases[.initText]
                claim.initText = [UInt8](repeating: 0, count: n)
                guard case .denied(let d) = Explainer(facts: facts).explain(elf: elf, claim: claim, resolver: SymbolResolver(coreExports: [:])).verdict else {
                    return XCTFail("an init region for a module without init text was allowed (\(n) bytes)")
                }
                XCTAssertEqual(d.rule, .layout)
                XCTAssertTrue(d.reason.contains("MOD_INIT_TEXT"), d.reason)
            }
        }
    }

    /// Init relocations follow the checked bases: a claim that places the init text elsewhere
    /// (consistently, page-aligned, apart from the rest) with the bytes of the first placement
    /// is denied at a byte of `.init.text` (a PC-relative field to anything outside it), not on
    /// its layout.
    func testInitBytesForAnotherPlacementAreDenied() throws {
        for (path, name) in [("lib/raid6/raid6_pq", "raid6_pq"), ("net/netfilter/nf_tables", "nf_tables")] {
            let c = try Self.make(path, name)
            let other = try Self.moved(c, .initText, to: Self.bases[.initText]! + 0x10_0000)  // init bytes of the first placement
            let d = try c.denial(other)
            XCTAssertNotEqual(d.rule, .layout, "\(d)")
            XCTAssertEqual(d.section, ".init.text", "\(name): \(d)")
        }
    }

    /// A jump-label or static-call site in init text in another state than the core's sites of
    /// the same key (inherited group state): denied.
    func testInitSiteStateMustAgreeWithCore() throws {
        var tried = 0
        for (path, name) in Self.modules {
            let c = try Self.make(path, name)
            let sites: [VariableSite] = try c.ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                let core = try Session(elf: elf, claim: c.claim, facts: c.facts, resolver: c.resolver)
                try core.run()
                let i = try Session(elf: elf, claim: c.claim, facts: c.facts, resolver: c.resolver, region: .initText,
                                    inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: core.finalGroupState))
                try i.run()
                return i.variable.filter { v in
                    guard let g = v.group, core.finalGroupState[g] != nil, case .jumpLabel = v.rule else { return false }
                    return true
                }
            }
            for v in sites {
                var bad = c.claim
                let e = v.encode(1)
                for k in e.indices { bad.initText![v.offset + k] = e[k] }
                let d = try c.denial(bad)
                XCTAssertEqual(d.address, c.claim.initTextBase! + UInt64(v.offset), "\(name): \(d)")
                XCTAssertTrue(d.reason.contains("disagrees"), d.reason)
                tried += 1
            }
        }
        print("init sites of core keys flipped: \(tried)")
    }
}
