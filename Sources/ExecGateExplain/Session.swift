// SPDX-License-Identifier: Apache-2.0
//
// One explanation of one module: the set-up stage and the working state the later stages share.
//
// Set-up is what `load_module()` does before it writes any byte of text: `layout_sections()`
// (where every section goes), the copy of the sections into the allocation, the per-cpu area, and
// the symbol table. Everything set up here is fixed for the session (`let`); the stages after it
// (Relocations.swift, BootPatching.swift, RuntimeSites.swift, Comparison.swift) only edit the
// working image, its per-byte class, the relocated copies of data sections and the site lists.

import ExecGateELF
import _ExecGateInternals

struct DenyError: Error { var denial: Denial }

final class Session {
    // MARK: Inputs (untrusted: elf contents beyond the signature, claim; trusted: facts, resolver)

    let elf: ELFFile
    let claim: ModuleClaim
    /// Each section's claimed address (``claimedAddresses(_:_:)``; nil: not claimed).
    let claimedAt: [UInt64?]
    /// The guest's facts, read through the engine's box (not copied per session: a copy retained
    /// and released every reference the facts hold, a module at a time).
    let factsBox: FactsBox
    var facts: GuestFacts { _read { yield factsBox.facts } }
    /// The feature-bit numbers of the loader build that loads this module (`ModuleLoader`):
    /// these, not the facts' own, name the bits of `capabilities` the stages test.
    let featureBits: FeatureBits
    /// `facts.capabilities`, held apart for `hasFeature`: `facts.has(_:)` is a method of the
    /// 440-byte `GuestFacts`, and each call from the stages' closures copied the whole struct (a
    /// memmove and a retain and release of each of its tables): 26,400 copies a pass at the
    /// corpus's return sites alone.
    let capabilities: [UInt32]
    let resolver: SymbolResolver
    /// Which executable region this session explains.
    enum Region { case core, initText }
    let region: Region
    /// Base of the explained region: `claim.textBase` (core) or `claim.initTextBase` (init).
    let base: UInt64
    /// The claimed bytes of the explained region.
    let claimed: ClaimBytes
    /// What an init-region session takes over from the module's core session: its own keys'
    /// trusted defaults and the state of every key group (init sites must agree with core sites).
    struct Inherited {
        var ownKeyDefaults: KeyTargets
        var groupState: AddressTable
    }
    let inherited: Inherited?
    /// The loader replayed (LoaderSelection.swift), chosen from the registration and the module.
    let loader: ModuleLoader
    /// The module's `.modinfo` `vermagic=` value (its first such entry), nil without one.
    let vermagic: String?
    /// 6.12: the checked base of each allocated core type, and in an init session of each
    /// allocated init type too (empty on 6.1).
    let memoryBases: [ModuleMemoryType: UInt64]

    // MARK: Fixed by set-up

    /// The kernel's `layout_sections()` applied to the signed ELF.
    let layout: ModuleLayout
    /// Load address of each section (core sections at `base + offset`; init sections at the
    /// placeholder, see `initPlaceholderBase`); nil for sections the loader does not allocate.
    let addr: [UInt64?]
    /// Region-offset ranges of the explained region's exec sections (value: section index).
    let execSpans: Spans
    /// The same as region offsets, sorted (for reports and tests).
    var execRanges: [(lo: Int, hi: Int, sec: Int)] { execSpans.all.map { (Int($0.lo), Int($0.hi), $0.value) } }
    /// Address ranges of the data copies (value: section index) and of every allocated exec
    /// section, this region's or not (`requireExecutableSite`): made on first use.
    private(set) lazy var dataSpans = addressSpans(of: dataSections, atMost: dataSections.count)
    private(set) lazy var execSectionSpans = addressSpans(of: elf.sections.indices.lazy.filter { self.layout.flags[$0].contains(.alloc) && self.layout.flags[$0].contains(.execInstr) },
                                                         atMost: elf.sections.count)
    /// The address ranges of `sections` that have an address (value: section index), their list
    /// sized once for at most `n` (`compactMap` grew it by appends, a few allocations a module).
    private func addressSpans(of sections: some Sequence<Int>, atMost n: Int) -> Spans {
        var list: [(lo: UInt64, hi: UInt64, value: Int)] = []
        list.reserveCapacity(n)
        for i in sections {
            if let a = addr[i], let r = Session.span(a, UInt64(elf.sections[i].size)) { list.append((a, r.upperBound, i)) }
        }
        return Spans(list)
    }
    /// The symbol table, read in place (names made only where a name is needed).
    let symtab: ELFSymbolTable
    let rela: [ELFRelocationSection]
    /// Indices of the module's defined `__SCT__*` (static-call trampoline) symbols.
    let trampolineSymbols: [Int]
    /// The module's defined `__SCK__*` (static-call key) symbols by name.
    let keySymbols: KeySymbols
    /// This module's own function entries (STT_FUNC in exec core sections).
    let functionEntries: FunctionEntries

    // MARK: Working state of the stages

    // The working state every site write touches: `image` (the executable region as the loader
    // leaves it, rebuilt stage by stage), `cls` (per byte of `image`, the `ExplanationClass` raw
    // value of the last rule that wrote it), `classCounts` (how many bytes of `cls` hold each
    // class, kept exact by every write of `cls`: the statistics need no pass over the region;
    // debug builds recount and compare), `siteCountByClass` (sites rewritten per class), the
    // symbol values and the variable sites.
    //
    // Exclusivity: a Session is made, run and dropped inside one `Explainer.explain` /
    // `mutate` call on one thread (it is not Sendable and never escapes), and its methods touch
    // these properties one after another, so the run-time exclusivity check (begin/end access
    // through thread-local state) can never fire on them in a correct build; in release it cost
    // ~10% of the engine (one check per array per site write), then several % more on the site
    // lists and caches. Debug builds, which run the tests, keep the check; release builds skip
    // it for these working properties only.
    #if DEBUG
    var image: [UInt8]
    var cls: [UInt8]
    var classCounts: [Int]
    var siteCountByClass = [Int](repeating: 0, count: ExplanationClass.allCases.count)
    var symValue: [UInt64?]
    var variable: [VariableSite] = []
    var data: [[UInt8]?] = []
    var pendingRela: [Int?] = []
    var notes: [(range: Range<Int>, site: Int, why: SiteNote)] = []
    var relocCount = 0
    var noBitsCopied = 0
    var initTextCopies: [Int: [UInt8]?] = [:]
    var relaByTargetCache: RelaByTarget?
    var initTextSpansCache: Spans?
    var relocationCovers: [Int: RangeCover] = [:]
    var zeroReadCover: RangeCover?
    var symbolInInit: [Bool] = []
    var relocFields: [(off: Int, size: Int, type: RelocationType, symbol: Int, addend: Int64, place: UInt64)] = []
    var jumpSites: [(off: Int, size: Int, code: UInt64, target: UInt64)] = []
    var returnSites: [(off: Int, addr: UInt64, len: Int)] = []
    var staticSites: [(off: Int, addr: UInt64, tail: Bool, key: UInt64)] = []
    var trampolineSites: [(addr: UInt64, off: Int)] = []
    var ownKeyDefaults = KeyTargets()
    var trustedTargetIndex = AddressTable()
    var trustedTargetLists: [TargetList] = []
    var staticCallStates: [UInt64: UInt64] = [:]
    var altSites: [(off: Int, len: Int, feature: Int, inverted: Bool, applied: Bool)] = []
    var trampolineKeyCache: TrampolineKeys?
    var exportedNameCache: ExportedNames?
    var ownTracepointKeyCache: AddressTable?
    var disabledFormMemo = AddressTable()
    #else
    @exclusivity(unchecked) var image: [UInt8]
    @exclusivity(unchecked) var cls: [UInt8]
    @exclusivity(unchecked) var classCounts: [Int]
    @exclusivity(unchecked) var siteCountByClass = [Int](repeating: 0, count: ExplanationClass.allCases.count)
    @exclusivity(unchecked) var symValue: [UInt64?]
    @exclusivity(unchecked) var variable: [VariableSite] = []
    @exclusivity(unchecked) var data: [[UInt8]?] = []
    @exclusivity(unchecked) var pendingRela: [Int?] = []
    @exclusivity(unchecked) var notes: [(range: Range<Int>, site: Int, why: SiteNote)] = []
    @exclusivity(unchecked) var relocCount = 0
    @exclusivity(unchecked) var noBitsCopied = 0
    @exclusivity(unchecked) var initTextCopies: [Int: [UInt8]?] = [:]
    @exclusivity(unchecked) var relaByTargetCache: RelaByTarget?
    @exclusivity(unchecked) var initTextSpansCache: Spans?
    @exclusivity(unchecked) var relocationCovers: [Int: RangeCover] = [:]
    @exclusivity(unchecked) var zeroReadCover: RangeCover?
    @exclusivity(unchecked) var symbolInInit: [Bool] = []
    @exclusivity(unchecked) var relocFields: [(off: Int, size: Int, type: RelocationType, symbol: Int, addend: Int64, place: UInt64)] = []
    @exclusivity(unchecked) var jumpSites: [(off: Int, size: Int, code: UInt64, target: UInt64)] = []
    @exclusivity(unchecked) var returnSites: [(off: Int, addr: UInt64, len: Int)] = []
    @exclusivity(unchecked) var staticSites: [(off: Int, addr: UInt64, tail: Bool, key: UInt64)] = []
    @exclusivity(unchecked) var trampolineSites: [(addr: UInt64, off: Int)] = []
    @exclusivity(unchecked) var ownKeyDefaults = KeyTargets()
    @exclusivity(unchecked) var trustedTargetIndex = AddressTable()
    @exclusivity(unchecked) var trustedTargetLists: [TargetList] = []
    @exclusivity(unchecked) var staticCallStates: [UInt64: UInt64] = [:]
    @exclusivity(unchecked) var altSites: [(off: Int, len: Int, feature: Int, inverted: Bool, applied: Bool)] = []
    @exclusivity(unchecked) var trampolineKeyCache: TrampolineKeys?
    @exclusivity(unchecked) var exportedNameCache: ExportedNames?
    @exclusivity(unchecked) var ownTracepointKeyCache: AddressTable?
    @exclusivity(unchecked) var disabledFormMemo = AddressTable()
    #endif
    // What the other working properties above hold (each stage's own state, unchecked in
    // release for the same reason):
    // - `data`: relocated copies of the allocated non-exec sections of the session (tables the
    //   stages read), made on first use (`dataCopy`): most data (`.orc_unwind_ip`, `.rodata`,
    //   `.data`, `__bug_table`, …) is never read, only its relocations checked (Relocations.swift).
    // - `pendingRela`: data section → the relocation section (index in `rela`) whose records were
    //   checked in place and are written when the copy is made.
    // - `notes`: per-range explanations for the first-difference report (Comparison.swift:
    //   `SiteNote`, put into words for the reported one only).
    // - `noBitsCopied`: bytes of SHT_NOBITS sections copied (`pristineCopy`, bounded);
    //   `initTextCopies`: a core session's relocated copies of its init text sections, made for
    //   the first retpoline site in each (`refuseRspRetpolineInInitText`; nil: a record's symbol
    //   value is unknown, the sites are the init session's);
    // - Indexes made on first use for the checks whose work is (sites × sections) by a scan
    //   (Spans.swift): `relaByTargetCache` (`relaByTarget`), `initTextSpansCache`
    //   (`initTextSpans`), `relocationCovers` (`relocationWrites`: per section, the bytes its
    //   records write), `zeroReadCover` (`read(a, 0)`: the data sections with their ends);
    // - `relocCount`: relocation fields applied; `symbolInInit`: in a core session, per symbol,
    //   defined in one of the module's init sections (freed after init), empty when none is
    //   (Relocations.swift `resolveAllSymbols`).
    // - Site records (for the mutation tester and diagnostics): `relocFields` only when
    //   `recordRelocationFields` is set before `run()` (the mutation tester: one record per field
    //   of the region, hundreds of thousands per boot, that nothing else reads), `jumpSites`,
    //   `returnSites`, `staticSites`, `altSites`, `trampolineSites` (the module's own static-call
    //   trampolines: address, region offset).
    // - `ownKeyDefaults`: keys this module defines → its trampolines' compiled default targets;
    //   `trustedTargetIndex`/`trustedTargetLists`: `trustedStaticCallTargets` per key; `staticCallStates`: static-call
    //   key states at this module's sites after comparison (key → target, 0 = NULL).
    // - `trampolineKeyCache`: trampoline address → its key (`trampolineKey`), built on first use;
    //   `exportedNameCache`: `exportedNames()`, the module's ksymtab entries read once
    //   (verify_exported_symbols and the exports both need them);
    //   `ownTracepointKeyCache`: the module's own tracepoint keys and trampolines
    //   (`ownTracepointKeys`), found on first use; `disabledFormMemo`: `disabledForm(ofKey:)` per
    //   key (its code: `Session.code(of:)`).
    /// The sections that have a data copy (made or not yet), in section order; `isData[i]` likewise.
    let dataSections: [Int]
    let isData: [Bool]
    /// Sites rewritten per class (the statistics list the classes with sites).
    @inline(__always) func countSite(_ c: ExplanationClass) { siteCountByClass[c.rawValue] += 1 }
    var recordRelocationFields = false
    /// The most ksymtab entries whose field counts `readKsymtab` made at once (for tests: the
    /// counts are made only for the entries the records can cover).
    var ksymtabEntriesCounted = 0
    /// Bytes the module's exported names may take in all (`readKsymtab`; tests lower it).
    var exportNameBudget = ExplainLimits.maxExportNameBytes
    /// The words `verifyExportedSymbols` reads ahead of its export lookups, folded (kept so the reads
    /// are not optimised away; nothing reads it).
    var exportTouchSink: UInt64 = 0
    /// Every symbol has its value after `resolveAllSymbols()` (none is left for the walk to refuse).
    var valuesComplete = false

    /// Exports looked up once per session (the resolver is immutable for the session), at set-up.
    let returnThunkExport: UInt64?
    let indirectThunkExport: UInt64?

    /// Key-group states after comparison (handed to the init-region session).
    var finalGroupState = AddressTable()

    /// Where init sections are assumed to be when init is not claimed (user-space range: never
    /// module text).
    static let initPlaceholderBase: UInt64 = 0x10_0000

    // MARK: Set-up

    /// Lays the module out and copies its sections; throws the denial if the claim's structure
    /// (size, base, section addresses, per-cpu base) contradicts the signed ELF and the facts.
    convenience init(elf: ELFFile, claim: ModuleClaim, facts: GuestFacts, resolver: SymbolResolver, region: Region = .core, inherited: Inherited? = nil) throws {
        try self.init(elf: elf, claim: claim, factsBox: FactsBox(facts), resolver: resolver, region: region, inherited: inherited)
    }

    init(elf: ELFFile, claim: ModuleClaim, factsBox: FactsBox, resolver: SymbolResolver, region: Region = .core, inherited: Inherited? = nil) throws {
        self.factsBox = factsBox
        self.elf = elf
        self.claim = claim
        self.claimedAt = Session.claimedAddresses(elf, claim)
        self.resolver = resolver
        self.region = region
        self.inherited = inherited
        self.returnThunkExport = resolver.lookup("__x86_return_thunk")
        self.indirectThunkExport = resolver.lookup("__x86_indirect_thunk_rax")
        let coreBase = claim.textBase
        func deny(_ reason: String, section: String = "(claim)", address: UInt64 = 0) -> DenyError {
            Session.denial(claim, .layout, reason, section: section, address: address)
        }
        // Which loader (fail closed: no measured row, no replay). Its build fixes the feature bits.
        let loader: ModuleLoader
        // `.modinfo`'s vermagic read once, for the selection and `check_modinfo()` (a module with
        // hundreds of `alias=` entries made each read a long scan).
        let vermagic = ModuleLoader.vermagic(elf)
        self.vermagic = vermagic
        switch ModuleLoader.select(elf: elf, kernelRelease: factsBox.facts.kernelRelease, vermagic: vermagic) {
        case .success(let l): loader = l
        case .failure(let e): throw Session.denial(claim, e.rule, e.reason, section: e.rule == .vermagic ? ".modinfo" : "(claim)")
        }
        self.loader = loader
        self.featureBits = loader.featureBits
        self.capabilities = factsBox.facts.capabilities
        // layout_and_allocate() → module_enforce_rwx_sections() (kernel/module/strict_rwx.c, 6.1
        // and 6.12; CONFIG_STRICT_MODULE_RWX=y in both Debian builds): any section, allocated or
        // not, flagged SHF_WRITE|SHF_EXECINSTR refuses the module (-ENOEXEC) before layout.
        if let (s, why) = ModuleStructure.writableExecutableSection(elf) { throw Session.denial(claim, .malformedELF, why, section: s) }

        guard let lay = loader == .linux6_12 ? ModuleLayout.compute612(elf) : ModuleLayout.compute(elf) else {
            throw deny("section sizes/alignments overflow the kernel's layout computation")
        }
        layout = lay
        // `move_module()` copies every SHF_ALLOC section that is not SHT_NOBITS, `sh_size` bytes
        // from its file offset; but the kernel's offset check (`elf_validity_check()` in 6.1,
        // `elf_validity_cache_sechdrs()` in 6.12) skips SHT_NULL sections ("no contents"), and so
        // does the parser (no file range). An allocated SHT_NULL section with a size would be
        // copied from bytes nobody bounds-checked: nothing explains them (no real module has one).
        if let (s, why) = ModuleStructure.allocatedNullSection(elf, flags: lay.flags) { throw Session.denial(claim, .malformedELF, why, section: s) }
        guard lay.coreSize <= ExplainLimits.maxCoreSize else {
            throw deny("core allocation of \(lay.coreSize) bytes exceeds \(ExplainLimits.maxCoreSize)")
        }
        // 6.12 (Loader612Layout.swift): one checked base per core type; 6.1: one core allocation.
        let bases612: [ModuleMemoryType: UInt64]
        let coreEnd: UInt64
        if loader == .linux6_12 {
            // The init session also checks the three init types' bases (MOD_INIT_TEXT from the
            // claim's init region) against each other and the core's: every allocation its own,
            // page-aligned, in the module area, disjoint (memoryBases612, move_module()).
            bases612 = try Session.memoryBases612(lay, elf: elf, claim: claim, claimed: claimedAt, moduleArea: factsBox.facts.moduleArea, initRegion: region == .initText)
            coreEnd = coreBase &+ UInt64(lay.textSize)
        } else {
            bases612 = [:]
            guard claim.textBytes.count == lay.textSize else {
                throw deny("claimed executable region is \(claim.textBytes.count) bytes, layout_sections() gives core text_size \(lay.textSize)")
            }
            let (end, ovf) = coreBase.addingReportingOverflow(UInt64(lay.coreSize))
            guard !ovf, coreBase % UInt64(ModuleLayout.pageSize) == 0, coreBase >= factsBox.facts.moduleArea.lowerBound, end <= factsBox.facts.moduleArea.upperBound else {
                throw deny("core allocation 0x\(String(coreBase, radix: 16)) +\(lay.coreSize) is not a page-aligned range inside the module area", address: coreBase)
            }
            coreEnd = end
        }
        self.memoryBases = bases612
        // The init allocation, when claimed: its own page-aligned range in the module area, never
        // overlapping the core allocation, exactly init_layout.text_size of executable bytes.
        var initBase: UInt64? = nil
        if region == .initText, loader == .linux6_12 {
            initBase = bases612[.initText]  // checked above (size, alignment, area, disjoint from every other type)
        } else if region == .initText {
            guard let ib = claim.initTextBase, let it = claim.initTextBytes else { throw deny("no init region claimed") }
            guard it.count == lay.initTextSize, lay.initTextSize > 0 else {
                throw deny("claimed init region is \(it.count) bytes, layout_sections() gives init text_size \(lay.initTextSize)")
            }
            let (initEnd, o2) = ib.addingReportingOverflow(UInt64(lay.initSize))
            guard !o2, ib % UInt64(ModuleLayout.pageSize) == 0, ib >= factsBox.facts.moduleArea.lowerBound, initEnd <= factsBox.facts.moduleArea.upperBound,
                  initEnd <= coreBase || ib >= coreEnd else {
                throw deny("init allocation 0x\(String(ib, radix: 16)) +\(lay.initSize) is not a page-aligned range inside the module area apart from the core", address: ib)
            }
            initBase = ib
        }
        let base = initBase ?? coreBase
        self.base = base
        let regionSize = region == .core ? lay.textSize : lay.initTextSize
        self.claimed = region == .core ? claim.textBytes : (claim.initTextBytes ?? ClaimBytes([]))

        // Copy the sections (`move_module()`): the explained region's exec sections into the
        // image, every other allocated section of the session as a relocated data copy.
        var addr = [UInt64?](repeating: nil, count: elf.sections.count)
        // (Each sized once for every section: grown by appends, they were reallocated a few
        // times a module.)
        var copies: [(off: Int, sec: Int)] = [], execRanges: [(lo: Int, hi: Int, sec: Int)] = [], dataSections: [Int] = []
        copies.reserveCapacity(elf.sections.count)
        execRanges.reserveCapacity(elf.sections.count)
        dataSections.reserveCapacity(elf.sections.count)
        // (Sections by index, their fields read in place: a loop over the records copied each,
        // name and all, a module's sections twice a module.)
        let secs = elf.sections
        func copy(_ i: Int, at off: Int, intoImage: Bool) {
            if intoImage {
                let size = secs[i].size
                // Exec sections are inside [0, regionSize) by construction of the layout.
                precondition(off >= 0 && size <= regionSize && off <= regionSize - size, "exec section outside the region")
                copies.append((off, i))  // copied below, in this order
                if size > 0 { execRanges.append((off, off + size, i)) }
            } else {
                dataSections.append(i)  // copied on first use (dataCopy)
            }
        }
        for i in secs.indices {  // secs[i].index == i (ELFFile.init)
            if let ioff = lay.initOffset[i], let ib = initBase {
                // 6.12: each init type at its own checked base (address612); 6.1: one init allocation.
                let a = lay.memType == nil ? ib &+ UInt64(ioff) : (Session.address612(lay, i, bases: bases612, initBases: true) ?? 0)
                addr[i] = a
                copy(i, at: ioff, intoImage: lay.flags[i].contains(.execInstr))
            } else if let off = lay.coreOffset[i] {
                let a = lay.memType == nil ? coreBase &+ UInt64(off) : (Session.address612(lay, i, bases: bases612) ?? 0)
                addr[i] = a
                // In an init session the core's exec sections are data: read (alternative
                // replacements, trampolines) but not compared.
                if region == .initText {
                    copy(i, at: off, intoImage: false)
                    continue
                }
                copy(i, at: off, intoImage: lay.flags[i].contains(.execInstr))
            } else if let ioff = lay.initOffset[i] {
                // A core session never uses init addresses. The claimed (stale sysfs) init
                // address is deliberately NOT used: a hostile claim could place "init" sections on
                // top of the core text, turning init-only jump-label/static-call/alternative
                // entries into legal patch sites inside verified code. A low address that is never
                // module memory makes every init site fall outside the region, and any core byte
                // that would depend on an init address (a freed pointer) unexplainable: deny.
                addr[i] = lay.memType == nil ? Session.initPlaceholderBase &+ UInt64(ioff) : Session.address612(lay, i, bases: bases612)
            }
        }

        // The claimed address of every allocated section laid out above (at its init address when
        // the init allocation is laid out, else at its core one), where the claim names it, must
        // be that address; the first that differs, in section order, is the denial.
        for i in secs.indices where lay.flags[i].contains(.alloc) {
            let inInit = initBase != nil && lay.initOffset[i] != nil
            guard inInit || lay.coreOffset[i] != nil, let c = claimedAt[i], let a = addr[i], c != a else { continue }
            throw deny("claimed address 0x\(String(c, radix: 16)) of \(secs[i].name) differs from \(inInit ? "the init layout" : "layout_sections()") 0x\(String(a, radix: 16))",
                       section: secs[i].name, address: c)
        }

        (self.image, self.cls, self.classCounts) = Session.sectionImage(elf, regionSize, copies)
        self.addr = addr
        self.execSpans = Spans(execRanges.map { (UInt64($0.lo), UInt64($0.hi), $0.sec) })
        self.dataSections = dataSections
        var isData = [Bool](repeating: false, count: elf.sections.count)
        for i in dataSections { isData[i] = true }
        self.isData = isData
        // By section index (a dictionary hashed the index at every look-up: ~0.7% of a pass).
        self.data = [[UInt8]?](repeating: nil, count: elf.sections.count)
        self.pendingRela = [Int?](repeating: nil, count: elf.sections.count)

        // The per-cpu area (`percpu_modalloc()`: only when `.data..percpu` has a size): it must
        // come from the module reserve, aligned. Without a known reserve the base cannot be
        // checked, and an unchecked base aims `%gs:` accesses anywhere (e.g. onto the core's
        // `current_task`): deny rather than skip the check.
        if let pi = lay.percpuIndex, elf.sections[pi].size > 0 {
            let sec = elf.sections[pi]
            func denyPercpu(_ reason: String) -> DenyError { Session.denial(claim, .perCPU, reason, section: sec.name) }
            guard let range = factsBox.facts.modulePercpuRange else {
                throw denyPercpu("the module has \(sec.size) bytes of per-cpu data but no module per-cpu range is known (the registration lacks __per_cpu_end)")
            }
            guard let pb = claim.percpuBase else {
                throw denyPercpu("the module has \(sec.size) bytes of per-cpu data but the claim gives no per-cpu base")
            }
            let align = max(sec.addralign, 1)
            let (end, o) = pb.addingReportingOverflow(UInt64(sec.size))
            guard !o, pb >= range.lowerBound, end <= range.upperBound else {
                throw denyPercpu("claimed per-cpu base 0x\(String(pb, radix: 16)) (+\(sec.size)) is outside the module per-cpu area 0x\(String(range.lowerBound, radix: 16))..<0x\(String(range.upperBound, radix: 16))")
            }
            // pcpu_alloc() hands out `align`-aligned offsets (percpu_modalloc(), mod->percpu_size, align).
            guard pb % align == 0 else {
                throw denyPercpu("claimed per-cpu base 0x\(String(pb, radix: 16)) is not aligned to its section's \(align) bytes (percpu_modalloc() allocates aligned)")
            }
        }

        // Symbols: one pass, byte tests on the UTF-8 storage: "__SCT__" (trampolines), "__SCK__" (keys).
        let symtab = try elf.symbolTable()
        self.symtab = symtab
        // The records are checked by the relocation walk as it reads them (`relocate()`: one pass,
        // not a parser pass and then a walk); the first error stays the parser's (`run()`).
        do {
            self.rela = try elf.relocationSections(checkingRecords: false)
        } catch {
            try elf.checkRelocationRecords()  // a bad record before the bad section comes first
            throw error
        }
        self.symValue = [UInt64?](repeating: nil, count: symtab.count)
        var trampolines: [Int] = []
        var keys: [Int] = []
        var entries: [UInt64] = []
        entries.reserveCapacity(symtab.count)  // at most one a symbol: no reallocation as it fills
        // The 7-byte prefixes as words (`namePrefixWord`: the name's first 8 bytes): one load and
        // two compares a symbol (was two byte-wise prefix tests across modules).
        let prefixMask: UInt64 = (1 << 56) - 1
        let sctWord: UInt64 = 0x5f_5f54_4353_5f5f  // "__SCT__", byte 0 lowest
        let sckWord: UInt64 = 0x5f_5f4b_4353_5f5f  // "__SCK__"
        for i in symtab.indices where !symtab.isUndefined(i) {
            let w = symtab.namePrefixWord(i) & prefixMask
            if w == sctWord { trampolines.append(i) } else if w == sckWord { keys.append(i) }
            if symtab.isFunction(i) {
                let si = Int(symtab.sectionIndex(i))
                // Inside its section only: a function symbol's value is the file's word, and one
                // far past its section would stretch this module's span of entries over other
                // modules' text — the guest's entry set then answers by a scan of every live
                // module (FunctionEntrySet: not disjoint) at each later look-up (a review,
                // 2026-12-07). No compiler emits such a function; it is simply no entry (a
                // static-call target there is not trusted: fails closed).
                if si < elf.sections.count, lay.coreOffset[si] != nil, lay.flags[si].contains(.execInstr), let a = addr[si],
                   symtab.value(i) < UInt64(elf.sections[si].size) {
                    entries.append(a &+ symtab.value(i))
                }
            }
        }
        self.trampolineSymbols = trampolines
        self.keySymbols = KeySymbols(symtab, keys)
        self.functionEntries = FunctionEntries(entries)
    }

    /// Each section's claimed address: the address of the last `claim.sections` entry whose name
    /// equals the section's as Strings (what the String-keyed table `claim.sectionAddresses` gives
    /// for the section's name), nil for a section the claim does not name.
    ///
    /// Found from the claim's side when that is the same thing done by bytes: every section name
    /// and every claimed name ASCII (String equality is byte equality there); then each claimed
    /// name is looked up in the ELF's name index (a cheap key, at most 16 probes and a byte
    /// compare, or one hash of the name for a file without the index:
    /// ``ELFFile/firstSectionIndex(named:)``), the entries from the last, each section taking the
    /// first address it meets. A name the ELF has more than once sends it to the table too (no
    /// scan per entry for its other sections). The table otherwise — a non-ASCII name on either
    /// side (canonical equivalence: a claimed ".\u{212A}" names a section ".K") — made once and
    /// asked per section: either way linear in the claim and the sections. The service's claims are byte names of the ELF,
    /// distinct (`ClaimStructure`, at most `WireLimits.maximumSectionClaims`), and real modules'
    /// names ASCII and distinct: the first path, with no String hashed.
    static func claimedAddresses(_ elf: ELFFile, _ claim: ModuleClaim) -> [UInt64?] {
        var found = [UInt64?](repeating: nil, count: elf.sections.count)
        if elf.allNamesASCII {
            var byBytes = true
            for s in claim.sections.reversed() {
                // A name found by bytes equals an ELF name byte for byte: ASCII, as every ELF
                // name is. Only a name not found is tested: one that is not ASCII may still
                // equal an ELF name as a String (canonical equivalence), and sends the claim to
                // the table. (Testing every name first was a third of this function's cost.)
                guard let (i, repeated) = elf.firstSectionIndex(named: s.name) else {
                    if !s.name.utf8.allSatisfy({ $0 < 0x80 }) { byBytes = false; break }
                    continue
                }
                if repeated { byBytes = false; break }
                if found[i] == nil { found[i] = s.address }
            }
            if byBytes { return found }
            found = [UInt64?](repeating: nil, count: elf.sections.count)
        }
        let table = claim.sectionAddresses
        if table.isEmpty { return found }
        for i in elf.sections.indices { found[i] = table[elf.sections[i].name] }
        return found
    }

    /// The region as `move_module()` leaves it: the exec sections `copies` (region offset, section
    /// index) copied in that order over zeros (SHT_NOBITS: zeros), the rest zero padding; with
    /// each byte's class (elf or padding) and the class counts. Sections that do not overlap (the
    /// layout places them apart) are written once each, gaps zeroed, without a first pass that
    /// zeroes and marks the whole region; overlapping ones take the general path, in order.
    static func sectionImage(_ elf: ELFFile, _ regionSize: Int, _ copies: [(off: Int, sec: Int)]) -> (image: [UInt8], cls: [UInt8], counts: [Int]) {
        let elfClass = UInt8(ExplanationClass.elf.rawValue), padClass = UInt8(ExplanationClass.padding.rawValue)
        var counts = [Int](repeating: 0, count: ExplanationClass.allCases.count)
        // (One array, sorted in place only when out of order: the layout places them in order.)
        var nonEmpty = copies.filter { elf.sections[$0.sec].size > 0 }
        if zip(nonEmpty, nonEmpty.dropFirst()).contains(where: { $0.off > $1.off }) { nonEmpty.sort { $0.off < $1.off } }
        var disjoint = true
        for k in nonEmpty.indices.dropFirst() where nonEmpty[k].off < nonEmpty[k - 1].off + elf.sections[nonEmpty[k - 1].sec].size { disjoint = false; break }
        if !disjoint {
            var image = [UInt8](repeating: 0, count: regionSize)
            var cls = [UInt8](repeating: padClass, count: regionSize)
            counts[Int(padClass)] = regionSize
            for (off, i) in copies {
                let s = elf.sections[i], n = s.size
                precondition(off >= 0 && n <= regionSize && off <= regionSize - n, "exec section outside the region")
                image.withUnsafeMutableBytes { img in
                    let dst = UnsafeMutableRawBufferPointer(rebasing: img[off..<off + n])
                    if s.isNoBits { dst.initializeMemory(as: UInt8.self, repeating: 0) } else {
                        let src = elf.contents(of: s)
                        precondition(src.count == n)
                        dst.copyMemory(from: src)
                    }
                }
                cls.withUnsafeMutableBufferPointer { Session.setClass($0, off, n, elfClass, &counts) }
            }
            return (image, cls, counts)
        }
        var covered = 0
        let image = [UInt8](unsafeUninitializedCapacity: regionSize) { b, count in
            let img = UnsafeMutableRawBufferPointer(b)
            var at = 0
            for (off, i) in nonEmpty {
                let s = elf.sections[i], n = s.size
                precondition(off >= at && n <= regionSize && off <= regionSize - n, "exec section outside the region")
                UnsafeMutableRawBufferPointer(rebasing: img[at..<off]).initializeMemory(as: UInt8.self, repeating: 0)
                let dst = UnsafeMutableRawBufferPointer(rebasing: img[off..<off + n])
                if s.isNoBits { dst.initializeMemory(as: UInt8.self, repeating: 0) } else {
                    let src = elf.contents(of: s)
                    precondition(src.count == n)
                    dst.copyMemory(from: src)
                }
                at = off + n
                covered += n
            }
            UnsafeMutableRawBufferPointer(rebasing: img[at..<regionSize]).initializeMemory(as: UInt8.self, repeating: 0)
            count = regionSize
        }
        let cls = [UInt8](unsafeUninitializedCapacity: regionSize) { c, count in
            var at = 0
            for (off, i) in nonEmpty {
                let n = elf.sections[i].size
                UnsafeMutableBufferPointer(rebasing: c[at..<off]).initialize(repeating: padClass)
                UnsafeMutableBufferPointer(rebasing: c[off..<off + n]).initialize(repeating: elfClass)
                at = off + n
            }
            UnsafeMutableBufferPointer(rebasing: c[at..<regionSize]).initialize(repeating: padClass)
            count = regionSize
        }
        counts[Int(elfClass)] = covered
        counts[Int(padClass)] = regionSize - covered
        return (image, cls, counts)
    }

    // MARK: Run

    /// The loader's order after set-up (see Explainer.swift).
    func run() throws {
        do {
            if region == .core { try checkModinfo() }
            try relocate()
        } catch let d as DenyError {
            // The parser used to check every relocation record at set-up, before any of these
            // denials could be reached: a malformed record still comes first (the walk checks
            // the records it reads; this finds any, in file order).
            try elf.checkRelocationRecords()
            throw d
        }
        if region == .core { try verifyExportedSymbols() }
        try applyBootTimePatching()
        try addRuntimeSites()
        try compare()
    }

    // MARK: Denials

    static func denial(_ claim: ModuleClaim, _ rule: DenialRule, _ reason: String, section: String = "(claim)", offset: Int = 0,
                       address: UInt64 = 0, expected: [UInt8] = [], found: [UInt8] = []) -> DenyError {
        DenyError(denial: Denial(module: claim.name, section: section, offset: offset, address: address,
                                 expected: expected, found: found, rule: rule, reason: reason))
    }

    func deny(_ rule: DenialRule, _ reason: String, section: String = "(claim)", offset: Int = 0, address: UInt64 = 0,
              expected: [UInt8] = [], found: [UInt8] = []) -> DenyError {
        Session.denial(claim, rule, reason, section: section, offset: offset, address: address, expected: expected, found: found)
    }

    /// A denial at region offset `off` (section and offset within it filled in).
    func deny(_ rule: DenialRule, _ reason: String, atRegionOffset off: Int, address: UInt64, found: [UInt8] = []) -> DenyError {
        let (sec, so) = sectionOf(regionOffset: off)
        return deny(rule, reason, section: sec, offset: so, address: address, found: found)
    }

    func sectionName(_ i: Int) -> String { elf.sections[i].name }

    /// Symbol `i` as a denial names it: its name, or for a nameless section symbol (STT_SECTION,
    /// what most local relocations name) its section's, as `readelf -r` shows it.
    func symbolLabel(_ i: Int) -> String {
        let n = symtab.name(i)
        guard n.isEmpty, symtab.isSection(i) else { return n }
        let shndx = Int(symtab.sectionIndex(i))
        return shndx > 0 && shndx < elf.sections.count ? elf.sections[shndx].name : n
    }

    // MARK: Memory model

    /// Offset in the image of section `i` if it is an exec section of the explained region.
    func imageOffset(of i: Int) -> Int? {
        guard i < layout.flags.count, layout.flags[i].contains(.execInstr) else { return nil }
        return region == .core ? layout.coreOffset[i] : layout.initOffset[i]
    }

    /// Region offset of [a, a+n) when it lies inside one exec core section.
    func execOffset(_ a: UInt64, _ n: Int) -> Int? {
        guard a >= base else { return nil }
        let (d, o) = (a - base).addingReportingOverflow(UInt64(n))
        guard !o, d <= UInt64(image.count) else { return nil }
        let off = Int(a - base)
        // (n = 0 asks for no byte: inside when `off` is in a range or at its end, as it was.)
        if n == 0 { return execSpans.find(UInt64(off), 1) != nil || (off > 0 && execSpans.find(UInt64(off - 1), 1) != nil) ? off : nil }
        return execSpans.find(UInt64(off), UInt64(n)) != nil ? off : nil
    }

    func sectionOf(regionOffset off: Int) -> (String, Int) {
        if off >= 0, let r = execSpans.find(UInt64(off), 1) { return (sectionName(r.value), off - Int(r.lo)) }
        return ("(padding)", off)
    }

    /// Read bytes at a guest address from the working image or a data section copy.
    func read(_ a: UInt64, _ n: Int) throws -> [UInt8]? {
        if let off = execOffset(a, n) { return Array(image[off..<off + n]) }
        if n >= 1 {
            guard let r = dataSpans.find(a, UInt64(n)), let d = try dataCopy(r.value) else { return nil }
            let rel = Int(a - r.lo)
            return Array(d[rel..<rel + n])
        }
        // Zero bytes (a taken alternative whose replacement is empty): inside a data section or
        // at its end, empty sections included; no byte is read, so no copy is made. (A scan of
        // every data section per question, copying the first that held it, was entries ×
        // sections, both the file's: a review, 2026-12-07.)
        guard n == 0 else { return nil }
        if zeroReadCover == nil {
            zeroReadCover = RangeCover(dataSections.compactMap { i in addr[i].flatMap { Session.span($0, UInt64(elf.sections[i].size) + 1) } })
        }
        return zeroReadCover!.contains(a) ? [] : nil
    }

    func write(_ off: Int, _ bytes: [UInt8], _ c: ExplanationClass) {
        let n = bytes.count
        if n <= 8 {
            // A site (every boot-time and run-time rewrite but long alternatives): one word.
            var raw: UInt64 = 0
            bytes.withUnsafeBufferPointer { src in for k in 0..<n { raw |= UInt64(src[k]) << (8 * UInt64(k)) } }
            writeWord(off, raw, n, UInt8(c.rawValue))
            return
        }
        // One bounds check for the whole run (same trap as the per-byte subscripts it replaces),
        // then one exclusive access per array instead of one per byte.
        precondition(off >= 0 && n <= image.count && off <= image.count - n && image.count == cls.count, "write outside the image")
        let v = UInt8(c.rawValue)
        image.withUnsafeMutableBufferPointer { img in
            bytes.withUnsafeBufferPointer { src in
                for k in 0..<n { img[off + k] = src[k] }
            }
        }
        setClass(off, n, v)
    }

    /// `write(off, b.array, c)` without the array.
    @inline(__always) func write(_ off: Int, _ b: SiteBytes, _ c: ExplanationClass) {
        writeWord(off, b.raw, b.count, UInt8(c.rawValue))
    }

    /// The low `n` (≤ 8) bytes of `raw` (byte 0 in the low bits) into `image[off...]`, of class
    /// `v`: one masked word store where a whole word fits (the bytes around the site are written
    /// back unchanged), byte stores at the region's last bytes.
    @inline(__always) func writeWord(_ off: Int, _ raw: UInt64, _ n: Int, _ v: UInt8) {
        precondition(n >= 0 && n <= 8 && off >= 0 && off <= image.count - n && image.count == cls.count, "write outside the image")
        if n == 0 { return }
        let mask: UInt64 = n == 8 ? ~0 : (1 << (8 * UInt64(n))) &- 1
        image.withUnsafeMutableBytes { img in
            if img.count - off >= 8 {
                let old = img.loadUnaligned(fromByteOffset: off, as: UInt64.self)
                img.storeBytes(of: (old & ~mask) | (raw & mask), toByteOffset: off, as: UInt64.self)
            } else {
                for k in 0..<n { img[off + k] = UInt8(truncatingIfNeeded: raw >> (8 * UInt64(k))) }
            }
        }
        setClassWord(off, n, v)
    }

    /// `setClass(off, n, v)` for a site of 1...8 bytes (`off + n` inside `cls`, checked by the
    /// caller): when all the bytes hold one class (one masked word compare), one counter step.
    @inline(__always) func setClassWord(_ off: Int, _ n: Int, _ v: UInt8) {
        let mask: UInt64 = n == 8 ? ~0 : (1 << (8 * UInt64(n))) &- 1
        let fill = UInt64(v) &* 0x0101_0101_0101_0101
        classCounts.withUnsafeMutableBufferPointer { counts in
            cls.withUnsafeMutableBytes { c in
                precondition(Int(v) < counts.count && off >= 0 && n >= 1 && n <= 8 && off <= c.count - n, "class write outside the image")
                let first = c[off]
                precondition(Int(first) < counts.count)  // class values are ExplanationClass raw values
                if c.count - off >= 8 {
                    let old = c.loadUnaligned(fromByteOffset: off, as: UInt64.self)
                    if (old ^ UInt64(first) &* 0x0101_0101_0101_0101) & mask == 0 {
                        counts[Int(first)] -= n
                    } else if n >= 2, case let second = Int(truncatingIfNeeded: (old >> 8) & 0xff), second < counts.count,
                              ((old >> 8) ^ UInt64(second) &* 0x0101_0101_0101_0101) & (mask >> 8) == 0 {
                        // One byte of one class, then the rest of another (an opcode of the ELF class
                        // before a relocated rel32: every `jmp __x86_return_thunk`): two counter steps
                        // instead of a chain of n decrements of one counter.
                        counts[Int(first)] -= 1
                        counts[second] -= n - 1
                    } else {
                        for k in off..<off + n { let o = Int(c[k]); precondition(o < counts.count); counts[o] -= 1 }
                    }
                    c.storeBytes(of: (old & ~mask) | (fill & mask), toByteOffset: off, as: UInt64.self)
                } else {
                    for k in off..<off + n { let o = Int(c[k]); precondition(o < counts.count); counts[o] -= 1; c[k] = v }
                }
                counts[Int(v)] += n
            }
        }
    }

    /// `cls[off..<off+n] = v`, keeping `classCounts` exact.
    func setClass(_ off: Int, _ n: Int, _ v: UInt8) {
        if n >= 1 && n <= 8 {
            precondition(off >= 0 && off <= cls.count - n, "class write outside the image")
            setClassWord(off, n, v)
            return
        }
        classCounts.withUnsafeMutableBufferPointer { counts in
            cls.withUnsafeMutableBufferPointer { c in
                precondition(off >= 0 && n >= 0 && n <= c.count && off <= c.count - n, "class write outside the image")
                if n <= 16 {
                    // Sites: a few bytes, counted one by one (class values index the 12 counters;
                    // the buffer subscript is checked against them below).
                    for k in off..<off + n {
                        let old = Int(c[k])
                        precondition(old < counts.count && Int(v) < counts.count)
                        counts[old] -= 1
                        c[k] = v
                    }
                    counts[Int(v)] += n
                } else {
                    var a = Array(counts)
                    Session.setClass(c, off, n, v, &a)
                    for i in 0..<a.count { counts[i] = a[i] }
                }
            }
        }
    }

    /// `c[off..<off+n] = v` and the class counts moved accordingly. A range that is all one class
    /// (the section copies: padding → elf) is recognised word-wise and moved in one step.
    static func setClass(_ c: UnsafeMutableBufferPointer<UInt8>, _ off: Int, _ n: Int, _ v: UInt8, _ counts: inout [Int]) {
        precondition(off >= 0 && n >= 0 && n <= c.count && off <= c.count - n, "class write outside the image")
        if n == 0 { return }
        let first = c[off]
        let pattern = UInt64(first) &* 0x0101_0101_0101_0101
        var uniform = true
        let raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(c)[off..<off + n])
        var i = 0
        while i + 8 <= n { if raw.loadUnaligned(fromByteOffset: i, as: UInt64.self) != pattern { uniform = false; break }; i += 8 }
        if uniform { while i < n { if raw[i] != first { uniform = false; break }; i += 1 } }
        if uniform {
            counts[Int(first)] -= n
        } else {
            for k in off..<off + n { counts[Int(c[k])] -= 1 }
        }
        counts[Int(v)] += n
        UnsafeMutableBufferPointer(rebasing: c[off..<off + n]).update(repeating: v)
    }

    /// `write(off, Array(src[from..<from + count]), c)` without the array.
    func write(_ off: Int, _ src: UnsafeRawBufferPointer, from: Int, count n: Int, _ c: ExplanationClass) {
        precondition(off >= 0 && n >= 0 && n <= image.count && off <= image.count - n && image.count == cls.count, "write outside the image")
        precondition(from >= 0 && from <= src.count - n, "read outside the source")
        let v = UInt8(c.rawValue)
        if n <= 8 {
            var raw: UInt64 = 0
            for k in 0..<n { raw |= UInt64(src[from + k]) << (8 * UInt64(k)) }
            writeWord(off, raw, n, v)
            return
        }
        image.withUnsafeMutableBufferPointer { img in
            for k in 0..<n { img[off + k] = src[from + k] }
        }
        setClass(off, n, v)
    }

    func decode(at off: Int) -> DecodedInstruction? {
        image.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: off) }
    }

    // MARK: Tables

    /// `find_sec()` (kernel/module/main.c, 6.1 and 6.12): the first section named `name` (its
    /// bytes, as strcmp() compares them) with SHF_ALLOC as the loader leaves the flags
    /// (`layout.flags`); `section_objs()` and the loader's other lookups by name never read a
    /// section without it.
    func findSec(_ name: String) -> ELFSection? {
        elf.sections(named: name).first { $0.index < layout.flags.count && layout.flags[$0.index].contains(.alloc) }
    }

    /// A table section of the module (relocated copy) and its address.
    func table(_ name: String) throws -> (bytes: [UInt8], addr: UInt64)? {
        guard let s = elf.section(named: name), let a = addr[s.index], let d = try dataCopy(s.index) else { return nil }
        return (d, a)
    }

    /// The relocated copy of data section `i` (nil if the session has none), made on first use:
    /// the signed contents (zeros for SHT_NOBITS) with the relocations already checked written in.
    /// Copies of SHT_NOBITS sections are bounded in all (`pristineCopy`).
    func dataCopy(_ i: Int) throws -> [UInt8]? {
        guard i >= 0, i < isData.count, isData[i] else { return nil }  // (only these have copies)
        if let d = data[i] { return d }
        let pending = pendingRela[i]
        let d = try pristineCopy(i, rela: pending, upTo: pending.map { rela[$0].relocations.count } ?? 0, values: symValue)
        pendingRela[i] = nil
        data[i] = d
        return d
    }

    /// Sites of a `s32` self-relative table (`.retpoline_sites`, `.return_sites`, `.ibt_endbr_seal`).
    func relativeSites(_ name: String) throws -> [UInt64] {
        var out: [UInt64] = []
        try forEachRelativeSite(name) { out.append($0) }
        return out
    }

    /// `relativeSites(name)` visited in order, without the array.
    func forEachRelativeSite(_ name: String, _ body: (UInt64) throws -> Void) throws {
        guard let t = try table(name) else { return }
        try forEachRelativeSite(t, body)
    }

    /// `forEachRelativeSite(name, body)` over the table `t` already found.
    func forEachRelativeSite(_ t: (bytes: [UInt8], addr: UInt64), _ body: (UInt64) throws -> Void) rethrows {
        try t.bytes.withUnsafeBytes { b in
            var o = 0
            while let v = b.getInteger(at: o, as: Int32.self) {
                try body(t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64(v)))
                o += 4
            }
        }
    }

    // MARK: Trusted facts, as the stages ask for them

    func hasFeature(_ bit: Int) -> Bool { GuestFacts.has(bit, in: capabilities) }
    var returnThunkTarget: UInt64? { facts.returnThunk ?? returnThunkExport }

    /// A legitimate function entry: of this module, of the core kernel, or of a verified module.
    /// Returns a closure over value copies (the tables are copy-on-write: no copying happens).
    var isFunctionEntry: (UInt64) -> Bool {
        let own = functionEntries, core = facts.functionEntries, mods = resolver.moduleFunctionEntries
        return { own.contains($0) || core.contains($0) || mods.contains($0) }
    }
}

/// `s.hasPrefix(p)` for an ASCII `p`, on the UTF-8 bytes (no Unicode normalisation needed: an
/// ASCII prefix matches byte for byte or not at all).
@inline(__always) func hasASCIIPrefix(_ s: String, _ p: StaticString) -> Bool {
    // (The bytes read in place and compared by `UnsafeRawBufferPointer.hasASCIIPrefix`: the
    // element-by-element `elementsEqual` of a buffer's prefix walked it through generic iterators.)
    if let r = s.utf8.withContiguousStorageIfAvailable({ UnsafeRawBufferPointer($0).hasASCIIPrefix(p) }) { return r }
    return s.hasPrefix(String(decoding: UnsafeBufferPointer(start: p.utf8Start, count: p.utf8CodeUnitCount), as: UTF8.self))
}

/// True when the UTF-8 bytes of `s` are exactly the ASCII `p` (`strcmp() == 0`, as `find_sec()`
/// compares), read in place. For a `p` without `K`, `;` or `` ` `` (the only ASCII characters
/// another character is canonically equivalent to), the same answer as `s == p`, which compares
/// characters, one `String` comparison a case of a `switch`.
@inline(__always) func isASCIIName(_ s: String, _ p: StaticString) -> Bool {
    if let r = s.utf8.withContiguousStorageIfAvailable({ $0.count == p.utf8CodeUnitCount && UnsafeRawBufferPointer($0).hasASCIIPrefix(p) }) { return r }
    return s.utf8.elementsEqual(UnsafeBufferPointer(start: p.utf8Start, count: p.utf8CodeUnitCount))
}

/// The structural refusals that need no guest facts: what the kernel refuses (or would copy
/// unchecked) before any byte of the module is placed. The engine applies each at its stage
/// (`Session.init`, the relocation walk); a signature-only verdict, which runs no engine, applies
/// them all (`check`), so "judged on signature and structure" holds for it too.
public enum ModuleStructure {
    /// `module_enforce_rwx_sections()` (kernel/module/strict_rwx.c, 6.1 and 6.12;
    /// CONFIG_STRICT_MODULE_RWX=y): any section flagged SHF_WRITE|SHF_EXECINSTR refuses the module.
    static func writableExecutableSection(_ elf: ELFFile) -> (section: String, reason: String)? {
        // (By index, the flags read in place: a closure over each section copied its record.)
        let secs = elf.sections
        guard let i = secs.indices.first(where: { secs[$0].flags.contains(.write) && secs[$0].flags.contains(.execInstr) }) else { return nil }
        let s = secs[i]
        return (s.name, "\(s.name) has invalid WRITE|EXEC flags: module_enforce_rwx_sections() refuses the module (-ENOEXEC)")
    }

    /// `move_module()` copies every SHF_ALLOC section that is not SHT_NOBITS from its file offset,
    /// but the kernel's offset check (`elf_validity_check()` in 6.1, `elf_validity_cache_sechdrs()`
    /// in 6.12) skips SHT_NULL sections, and so does the parser (no file range): an allocated
    /// SHT_NULL section with a size would be copied from bytes nobody bounds-checked (`flags`:
    /// after the loader's edits, `ModuleLayout.loaderFlags`).
    static func allocatedNullSection(_ elf: ELFFile, flags: [SectionFlags]) -> (section: String, reason: String)? {
        let secs = elf.sections
        guard let i = secs.indices.first(where: { secs[$0].type == SectionType.null && secs[$0].size > 0 && flags[$0].contains(.alloc) }) else { return nil }
        let s = secs[i]
        return (s.name, "\(s.name) is SHF_ALLOC with type SHT_NULL and \(s.size) bytes: move_module() would copy them from a file offset the kernel never checks")
    }

    /// Every fact-free structural refusal, in the engine's order: the sections' flags, the
    /// layout's arithmetic, allocated SHT_NULL sections, the symbol table, every relocation
    /// record. nil when the module passes; else the reason.
    public static func check(_ elf: ELFFile) -> String? {
        if let (_, why) = writableExecutableSection(elf) { return why }
        guard let lay = ModuleLayout.compute(elf) else { return "section sizes/alignments overflow the kernel's layout computation" }
        if let (_, why) = allocatedNullSection(elf, flags: lay.flags) { return why }
        do {
            _ = try elf.symbolTable()
            try elf.checkRelocationRecords()
        } catch {
            return "\(error)"
        }
        return nil
    }
}
