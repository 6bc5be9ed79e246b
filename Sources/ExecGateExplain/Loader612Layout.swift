// SPDX-License-Identifier: Apache-2.0
//
// Linux 6.12 module memory (docs/kernels/6.12-loader.md §4): since 6.4 every `enum mod_mem_type`
// is its own allocation (`struct module_memory mem[MOD_MEM_NUM_TYPES]`), so a module has up to
// seven independent bases and no fixed distance between text and data.
//
// `layout_sections()` → `__layout_sections(mod, info, is_init)` (6.12 kernel/module/main.c): for
// each mask row, every section header in order is placed in the row's type by
// `module_get_offset_and_type()`:
//     mod->mem[type].size += arch_mod_section_prepend(mod, section);   /* 0 on x86 */
//     offset = ALIGN(mod->mem[type].size, sechdr->sh_addralign ?: 1);
//     mod->mem[type].size = offset + sechdr->sh_size;
// No page alignment between or inside types (6.1's strict_align() steps are gone).
// `move_module()` allocates only types with a non-zero size (`module_memory_alloc()`: PAGE_ALIGN,
// `execmem_alloc`, `memset(0)`), a zero-size type keeps `base == NULL` (a data-only module has no
// MOD_TEXT at all, doc §4.4).

import ExecGateELF

/// `enum mod_mem_type` (6.12 include/linux/module.h), raw values as in the kernel.
public enum ModuleMemoryType: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case text = 0, data, rodata, roAfterInit, initText, initData, initRodata

    public var description: String {
        switch self {
        case .text: return "MOD_TEXT"
        case .data: return "MOD_DATA"
        case .rodata: return "MOD_RODATA"
        case .roAfterInit: return "MOD_RO_AFTER_INIT"
        case .initText: return "MOD_INIT_TEXT"
        case .initData: return "MOD_INIT_DATA"
        case .initRodata: return "MOD_INIT_RODATA"
        }
    }

    public var isInit: Bool { rawValue >= ModuleMemoryType.initText.rawValue }
}

extension ModuleLayout {
    /// The 6.12 layout of `elf`: `memType[i]` and the offset inside that type (`coreOffset` for
    /// core types, `initOffset` for init types); `textSize` = PAGE_ALIGN(mem[MOD_TEXT].size).
    /// nil if a size computation overflows (hostile ELF).
    static func compute612(_ elf: ELFFile) -> ModuleLayout? {
        let secs = elf.sections
        // layout_and_allocate() + rewrite_section_headers() and the masks: as in 6.1 (doc §3).
        let (flags, percpu) = loaderFlags(elf)
        let masks = sectionMasks
        let coreType: [ModuleMemoryType] = [.text, .rodata, .roAfterInit, .data, .data]
        let initType: [ModuleMemoryType?] = [.initText, .initRodata, nil, .initData, .initData]
        var placed = [Bool](repeating: false, count: secs.count)
        var memType = [ModuleMemoryType?](repeating: nil, count: secs.count)
        var core = [Int?](repeating: nil, count: secs.count)
        var initO = [Int?](repeating: nil, count: secs.count)
        var sizes = [Int](repeating: 0, count: ModuleMemoryType.allCases.count)
        let initNamed = secs.map { hasASCIIPrefix($0.name, ".init") }  // module_init_layout_section(), once per section
        for isInit in [false, true] {
            for (m, mask) in masks.enumerated() {
                for s in secs {
                    let f = flags[s.index]
                    // module_init_layout_section(): strstarts(name, ".init") (.exit* is core with
                    // CONFIG_MODULE_UNLOAD, Debian's setting).
                    if !f.isSuperset(of: mask.0) || !f.intersection(mask.1).isEmpty || placed[s.index] || initNamed[s.index] != isInit { continue }
                    guard let type = isInit ? initType[m] : coreType[m] else { continue }  // MOD_INVALID: WARN, skipped
                    let a = Int(exactly: s.addralign == 0 ? 1 : s.addralign) ?? -1
                    guard a > 0 else { return nil }
                    let (t, o1) = sizes[type.rawValue].addingReportingOverflow(a - 1)
                    guard !o1 else { return nil }
                    let off = t & ~(a - 1)
                    let (n, o2) = off.addingReportingOverflow(s.size)
                    guard !o2, n < (1 << 40) else { return nil }
                    sizes[type.rawValue] = n
                    placed[s.index] = true
                    memType[s.index] = type
                    if isInit { initO[s.index] = off } else { core[s.index] = off }
                }
            }
        }
        let coreTotal = [ModuleMemoryType.text, .data, .rodata, .roAfterInit].reduce(0) { $0 + pageAlign(sizes[$1.rawValue]) }
        let initTotal = [ModuleMemoryType.initText, .initData, .initRodata].reduce(0) { $0 + pageAlign(sizes[$1.rawValue]) }
        var l = ModuleLayout(flags: flags, coreOffset: core, initOffset: initO, textSize: pageAlign(sizes[ModuleMemoryType.text.rawValue]),
                             coreSize: coreTotal, initTextSize: pageAlign(sizes[ModuleMemoryType.initText.rawValue]), initSize: initTotal,
                             percpuIndex: percpu, memType: memType, typeSizes: sizes)
        // 6.12 layout_symtab(): appended to mem[MOD_DATA] and mem[MOD_INIT_DATA].
        let data = sizes[ModuleMemoryType.data.rawValue], initData = sizes[ModuleMemoryType.initData.rawValue]
        let (c, i) = symbolAppendix(elf, flags: flags, percpu: percpu, isInit: { memType[$0]?.isInit ?? (initO[$0] != nil) },
                                    coreEnd: data, initEnd: initData) ?? (data, initData)
        guard c >= 0 else { return nil }
        l.coreSizeWithSymbols = c
        l.initSizeWithSymbols = i
        return l
    }

    /// PAGE_ALIGN(mem[t].size) of the sections: the part of the allocation `module_memory_alloc()`
    /// makes that relocations and tables address (0: no section of that type).
    func allocationSize(_ t: ModuleMemoryType) -> Int {
        let v = t.rawValue < typeSizes.count ? typeSizes[t.rawValue] : 0
        return ModuleLayout.pageAlign(v)
    }

    /// PAGE_ALIGN(mem[t].size) as the kernel allocates it: MOD_DATA and MOD_INIT_DATA with what
    /// `layout_symtab()` appends (`coreSizeWithSymbols`, `initSizeWithSymbols`); the other types
    /// as `allocationSize`. What a live module holds.
    func heldSize(_ t: ModuleMemoryType) -> Int {
        let v: Int
        switch t {
        case .data: v = coreSizeWithSymbols
        case .initData: v = initSizeWithSymbols
        default: v = t.rawValue < typeSizes.count ? typeSizes[t.rawValue] : 0
        }
        return ModuleLayout.pageAlign(v)
    }
}

extension Session {
    /// Placeholder bases of the freed init types (never module memory, see `initPlaceholderBase`):
    /// one 16 MiB window per type so init sections of different types never alias.
    static func initPlaceholder(_ t: ModuleMemoryType) -> UInt64 {
        initPlaceholderBase &+ UInt64(t.rawValue) << 24
    }

    /// The bases of the core types of a 6.12 claim, checked (doc §4.7): MOD_TEXT from `textBase`
    /// (absent when the layout has no text), every other allocated core type from
    /// `claim.memoryBases` or, failing that, derived from the claimed section addresses, where all
    /// sections of one type must agree. Each base must be page-aligned, its page-aligned allocation
    /// inside the module area, and no two allocations may overlap.
    ///
    /// With `initRegion` (the init session, Session.Region.initText) the three init types too:
    /// `move_module()` (6.12 kernel/module/main.c) allocates every type with a size on its own
    /// (`module_memory_alloc()`: PAGE_ALIGN(mem[type].size), execmem_alloc(), memset 0) and gives
    /// each SHF_ALLOC section `sh_addr = mem[type].base + offset`. MOD_INIT_TEXT's base is
    /// `claim.initTextBase` and its bytes `claim.initText`, exactly PAGE_ALIGN(mem[MOD_INIT_TEXT].size)
    /// (the allocation `module_enable_text_rox()` makes ROX in complete_formation(), the same
    /// convention as MOD_TEXT); MOD_INIT_DATA and MOD_INIT_RODATA are derived as the core data
    /// types are. All seven allocations are then pairwise disjoint: an init allocation laid over
    /// core text (or core rodata, ...) would let init relocations, jump-label, static-call and
    /// alternative entries name verified bytes. MOD_INIT_DATA's allocation is larger than its
    /// sections by what `layout_symtab()` (kernel/module/kallsyms.c) appends (the full .symtab and
    /// .strtab, `struct mod_kallsyms`, the init type table); MOD_DATA likewise by the core symbol
    /// copy. Only the sections' part is checked: no relocation or table entry addresses the tail.
    /// `claimed`: each section's claimed address (``Session/claimedAddresses(_:_:)``).
    static func memoryBases612(_ lay: ModuleLayout, elf: ELFFile, claim: ModuleClaim, claimed: [UInt64?], moduleArea: Range<UInt64>,
                               initRegion: Bool = false) throws -> [ModuleMemoryType: UInt64] {
        func deny(_ reason: String, section: String = "(claim)", address: UInt64 = 0) -> DenyError {
            Session.denial(claim, .layout, reason, section: section, address: address)
        }
        guard let mt = lay.memType else { throw deny("internal: not a 6.12 layout") }
        var bases: [ModuleMemoryType: UInt64] = [:]
        let textAlloc = lay.allocationSize(.text)
        guard claim.textBytes.count == textAlloc else {
            throw deny("claimed executable region is \(claim.textBytes.count) bytes, __layout_sections() gives PAGE_ALIGN(mem[MOD_TEXT].size) \(textAlloc)")
        }
        if textAlloc > 0 { bases[.text] = claim.textBase }
        else if claim.textBase != 0 {
            throw deny("claim names a MOD_TEXT base 0x\(String(claim.textBase, radix: 16)) but the module has no text (move_module() leaves base NULL)",
                       address: claim.textBase)
        }
        var types: [ModuleMemoryType] = [.data, .rodata, .roAfterInit]
        if initRegion {
            guard let ib = claim.initTextBase, let it = claim.initTextBytes else { throw deny("no init region claimed") }
            let initAlloc = lay.allocationSize(.initText)
            guard initAlloc > 0, it.count == initAlloc else {
                throw deny("claimed init region is \(it.count) bytes, __layout_sections() gives PAGE_ALIGN(mem[MOD_INIT_TEXT].size) \(initAlloc)")
            }
            // One base per type: a `memoryBases` entry for MOD_INIT_TEXT must be the init region's.
            if let given = claim.memoryBases[.initText], given != ib {
                throw deny("claimed MOD_INIT_TEXT base 0x\(String(given, radix: 16)) disagrees with the init region's 0x\(String(ib, radix: 16))", address: given)
            }
            bases[.initText] = ib
            types += [.initData, .initRodata]
        }
        for t in types where lay.allocationSize(t) > 0 {
            var derived: UInt64? = nil
            for s in elf.sections where mt[s.index] == t && lay.flags[s.index].contains(.alloc) {
                guard let c = claimed[s.index], let off = t.isInit ? lay.initOffset[s.index] : lay.coreOffset[s.index] else { continue }
                let b = c &- UInt64(off)
                if let d = derived, d != b {
                    throw deny("claimed address 0x\(String(c, radix: 16)) of \(s.name) puts \(t) at 0x\(String(b, radix: 16)), other sections at 0x\(String(d, radix: 16))",
                               section: s.name, address: c)
                }
                derived = b
            }
            if let given = claim.memoryBases[t] {
                if let d = derived, d != given {
                    throw deny("claimed \(t) base 0x\(String(given, radix: 16)) disagrees with its sections' addresses (0x\(String(d, radix: 16)))", address: given)
                }
                derived = given
            }
            guard let b = derived else { throw deny("the claim gives no base for \(t) (\(lay.allocationSize(t)) bytes allocated)") }
            bases[t] = b
        }
        // Page-aligned, inside the module area, pairwise disjoint.
        var ranges: [(lo: UInt64, hi: UInt64, t: ModuleMemoryType)] = []
        for (t, b) in bases {
            // As allocated: MOD_DATA and MOD_INIT_DATA with the symbols layout_symtab() appends
            // (no other type of the module can lie on those pages either).
            let n = UInt64(lay.heldSize(t))
            let (end, ovf) = b.addingReportingOverflow(n)
            guard !ovf, b % UInt64(ModuleLayout.pageSize) == 0, b >= moduleArea.lowerBound, end <= moduleArea.upperBound else {
                throw deny("\(t) allocation 0x\(String(b, radix: 16)) +\(n) is not a page-aligned range inside the module area", address: b)
            }
            ranges.append((b, end, t))
        }
        // (Ties broken by type: the same message whatever the dictionary's order.)
        ranges.sort { $0.lo != $1.lo ? $0.lo < $1.lo : $0.t.rawValue < $1.t.rawValue }
        for k in ranges.indices.dropFirst() where ranges[k].lo < ranges[k - 1].hi {
            throw deny("\(ranges[k].t) allocation overlaps \(ranges[k - 1].t)", address: ranges[k].lo)
        }
        return bases
    }

    /// The page-aligned allocations of `types` at this session's checked bases (6.12: each
    /// `[mem[type].base, + PAGE_ALIGN(mem[type].size))`, as `memoryBases612` checked them; a type
    /// without a size has none). Empty on 6.1.
    func allocations(_ types: [ModuleMemoryType]) -> [Range<UInt64>] {
        guard layout.memType != nil else { return [] }
        return types.compactMap { t in
            let n = layout.heldSize(t)
            guard n > 0, let b = memoryBases[t] else { return nil }
            let (end, o) = b.addingReportingOverflow(UInt64(n))
            return b..<(o ? .max : end)
        }
    }

    /// 6.12 address of section `i` (nil: not allocated by the loader). A section of an init type
    /// is at its type's placeholder (`initPlaceholder`) unless `initBases` (the init session, whose
    /// `bases` hold the checked init bases): then at `mem[type].base + offset` as `move_module()`
    /// places it, NULL + offset for an unallocated (empty) type.
    static func address612(_ lay: ModuleLayout, _ i: Int, bases: [ModuleMemoryType: UInt64], initBases: Bool = false) -> UInt64? {
        guard let mt = lay.memType, let t = mt[i] else { return nil }
        if t.isInit {
            guard let off = lay.initOffset[i] else { return nil }
            return initBases ? (bases[t] ?? 0) &+ UInt64(off) : initPlaceholder(t) &+ UInt64(off)
        }
        guard let off = lay.coreOffset[i] else { return nil }
        // An empty section of an unallocated type: sh_addr = NULL + offset (doc §4.4).
        return (bases[t] ?? 0) &+ UInt64(off)
    }
}
