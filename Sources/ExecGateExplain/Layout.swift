// SPDX-License-Identifier: Apache-2.0
//
// The kernel's `layout_sections()` (kernel/module/main.c, 6.1) re-run on the signed ELF, so that
// every section — zero-size ones included, which sysfs does not list — gets the address the loader
// gave it, and so that the guest's claimed section addresses can be cross-checked.

import ExecGateELF

struct ModuleLayout {
    /// Flags after the loader's edits (`.modinfo`, `__versions`, `.data..percpu` lose SHF_ALLOC;
    /// `.data..ro_after_init` and `__jump_table` gain SHF_RO_AFTER_INIT).
    var flags: [SectionFlags]
    /// Offset in the core allocation, nil if the section is not in core.
    var coreOffset: [Int?]
    /// Offset in the init allocation, nil if not in init.
    var initOffset: [Int?]
    /// `core_layout.text_size`: PAGE_ALIGN of the executable part (STRICT_MODULE_RWX).
    var textSize: Int
    /// Whole core allocation (text + data), page-aligned.
    var coreSize: Int
    /// `init_layout.text_size`: PAGE_ALIGN of the executable init part.
    var initTextSize: Int
    /// Whole init allocation.
    var initSize: Int
    var percpuIndex: Int?
    /// 6.12 (`struct module_memory`, Loader612Layout.swift): each section's memory type; its
    /// `coreOffset`/`initOffset` is then the offset inside that type's own allocation. nil on 6.1.
    var memType: [ModuleMemoryType?]? = nil
    /// 6.12: unaligned `mem[type].size` per type (indexed by raw value).
    var typeSizes: [Int] = []
    /// 6.12: what `layout_symtab()` appends after the sections (`symbolAppendix`):
    /// `mem[MOD_DATA].size` and `mem[MOD_INIT_DATA].size` once it has, unaligned (6.1's, the whole
    /// core and init allocations, are `ModuleLayoutPlan`'s). The sections' offsets do not move;
    /// these are the memory the kernel allocates, which a live module holds (no other claim may be
    /// laid over it). Equal to the sections' sizes when the module has no symbol table (the
    /// kernel refuses such a module).
    var coreSizeWithSymbols = 0
    var initSizeWithSymbols = 0

    /// One section as `compute` reads it (see there).
    private struct Entry {
        var align: UInt64
        var size: Int
        var cls: Int
        var isInit: Bool
    }

    static let pageSize = 4096
    /// `PAGE_ALIGN(v)`.
    static func pageAlign(_ v: Int) -> Int { (v + pageSize - 1) & ~(pageSize - 1) }

    /// ```c
    /// static unsigned long const masks[][2] = {
    ///     { SHF_EXECINSTR | SHF_ALLOC, ARCH_SHF_SMALL },
    ///     { SHF_ALLOC, SHF_WRITE | ARCH_SHF_SMALL },
    ///     { SHF_RO_AFTER_INIT | SHF_ALLOC, ARCH_SHF_SMALL },
    ///     { SHF_WRITE | SHF_ALLOC, ARCH_SHF_SMALL },
    ///     { ARCH_SHF_SMALL | SHF_ALLOC, 0 } };
    /// module_get_offset(): ret = ALIGN(*size, sh_addralign ?: 1); *size = ret + sh_size;
    /// ```
    /// ARCH_SHF_SMALL is 0 on x86; x86 has no separate data_layout (it aliases core_layout).
    /// Returns nil if a size computation overflows (hostile ELF).
    /// The `masks[][2]` table of `layout_sections()` (the same in 6.1 and 6.12): a section goes in
    /// the first class whose required flags it has and whose forbidden flags it lacks.
    static let sectionMasks: [(SectionFlags, SectionFlags)] = [
        ([.execInstr, .alloc], []), ([.alloc], [.write]), ([.roAfterInit, .alloc], []), ([.write, .alloc], []), ([.alloc], []),
    ]

    /// The section flags after the loader's edits before layout (unchanged from 6.1 to 6.12), each
    /// made to the one section `find_sec()` returns — the FIRST with SHF_ALLOC of that name
    /// ("Alloc bit cleared means ignore it"; kernel/module/main.c) — never to later ones:
    /// - setup_load_info() (6.1; 6.12 elf_validity_cache_index_info()/_versions()) takes
    ///   `index.info = find_sec(".modinfo")`, `index.vers = find_sec("__versions")` and
    ///   `index.pcpu = find_pcpusec()` on the file's flags; rewrite_section_headers() then clears
    ///   SHF_ALLOC of `index.vers` and `index.info`, layout_and_allocate() that of `index.pcpu`;
    /// - layout_and_allocate() then sets SHF_RO_AFTER_INIT on `find_sec(".data..ro_after_init")`
    ///   and `find_sec("__jump_table")`.
    /// A second allocated section of one of these names keeps its flags and is laid out as any
    /// other (a second `.modinfo` is refused elsewhere: ModuleName). Also returns the per-cpu
    /// section's index.
    static func loaderFlags(_ elf: ELFFile) -> (flags: [SectionFlags], percpu: Int?) {
        var flags = elf.sections.map { $0.flags }
        var modinfo: Int?, versions: Int?, percpu: Int?, roAfterInit: Int?, jumpTable: Int?
        for s in elf.sections where s.isAlloc && s.index > 0 {  // find_sec() starts at section 1
            // By length first: the one name of that length compared, as bytes (find_sec()'s
            // strcmp(); a String `switch` compared every case in turn).
            switch s.name.utf8.count {
            case 8: if modinfo == nil && isASCIIName(s.name, ".modinfo") { modinfo = s.index }
            case 10: if versions == nil && isASCIIName(s.name, "__versions") { versions = s.index }
            case 12: if jumpTable == nil && isASCIIName(s.name, "__jump_table") { jumpTable = s.index }
            case 13: if percpu == nil && isASCIIName(s.name, ".data..percpu") { percpu = s.index }
            case 20: if roAfterInit == nil && isASCIIName(s.name, ".data..ro_after_init") { roAfterInit = s.index }
            default: continue
            }
        }
        // (Each index tested on its own: array literals and `compactMap` made four arrays a module.)
        if let i = modinfo { flags[i].remove(.alloc) }
        if let i = versions { flags[i].remove(.alloc) }
        if let i = percpu { flags[i].remove(.alloc) }
        if let i = roAfterInit { flags[i].insert(.roAfterInit) }
        if let i = jumpTable { flags[i].insert(.roAfterInit) }
        return (flags, percpu)
    }

    static func compute(_ elf: ELFFile) -> ModuleLayout? {
        let secs = elf.sections
        let (flags, percpu) = loaderFlags(elf)
        let masks = sectionMasks
        var core = [Int?](repeating: nil, count: secs.count)
        var initO = [Int?](repeating: nil, count: secs.count)
        var textSize = 0
        var coreSize = 0
        var initTextSize = 0, initSize = 0
        // What the loop reads of a section, in one array (the loop visits every section in every
        // class of both passes: no section record, with its name, copied per visit): its
        // alignment and size; the class whose masks it fits first (-1: none), found once per
        // section instead of the mask tests per visit; whether `module_init_layout_section()`
        // puts it in init (`.init*` names; `.exit*` stays core with CONFIG_MODULE_UNLOAD). One
        // class and one pass a section: it is placed at most once, in the first class that fits
        // it, as the kernel's `sh_entsize = ~0UL` mark (placed) has it.
        var entries: [Entry] = []
        entries.reserveCapacity(secs.count)
        for i in secs.indices {  // secs[i].index == i (ELFFile.init)
            let f = flags[i]
            let cls = masks.firstIndex { f.isSuperset(of: $0.0) && f.intersection($0.1).isEmpty } ?? -1
            entries.append(Entry(align: secs[i].addralign, size: secs[i].size, cls: cls, isInit: hasASCIIPrefix(secs[i].name, ".init")))
        }
        func place(_ e: Entry, _ size: inout Int) -> Int? {
            let a = Int(exactly: e.align == 0 ? 1 : e.align) ?? -1
            guard a > 0 else { return nil }
            let (t, o1) = size.addingReportingOverflow(a - 1)
            guard !o1 else { return nil }
            let ret = t & ~(a - 1)
            let (n, o2) = ret.addingReportingOverflow(e.size)
            guard !o2, n < (1 << 40) else { return nil }
            size = n
            return ret
        }
        for pass in 0..<2 {
            var size = 0
            for m in masks.indices {
                for (i, e) in entries.enumerated() where e.cls == m && e.isInit == (pass == 1) {
                    guard let off = place(e, &size) else { return nil }
                    if pass == 0 { core[i] = off } else { initO[i] = off }
                }
                switch m {
                case 0:
                    size = pageAlign(size)
                    if pass == 0 { textSize = size } else { initTextSize = size }
                case 1, 4: size = pageAlign(size)
                case 2: if pass == 0 { size = pageAlign(size) }
                default: break
                }
            }
            if pass == 0 { coreSize = size } else { initSize = size }
        }
        // (6.1 layout_symtab()'s part, the memory a live module holds beyond its sections, is
        // ModuleLayoutPlan's: the engine never reads it, and every explanation would count the
        // names of every symbol for it.)
        return ModuleLayout(flags: flags, coreOffset: core, initOffset: initO, textSize: textSize, coreSize: coreSize,
                            initTextSize: initTextSize, initSize: initSize, percpuIndex: percpu)
    }

    /// `layout_symtab()` (kernel/module/kallsyms.c, 6.1 and 6.12; CONFIG_KALLSYMS_ALL=y in both
    /// Debian builds): the sizes the core data allocation and the init data allocation reach
    /// (unaligned) when the loader appends, after their sections (ending at `coreEnd`, `initEnd`):
    /// to the core, at ALIGN(coreEnd, .symtab's sh_addralign), one `Elf64_Sym` (24 bytes), the
    /// name and its NUL, and a type byte for each symbol `is_core_symbol()` keeps (symbol 0,
    /// every symbol of a livepatch module, else one with a name in an SHF_ALLOC section that is
    /// not init, or in the per-cpu section); to the init data, `.symtab` and `.strtab` placed as
    /// sections are (`module_get_offset()` at their alignment), then ALIGN 8, a `struct
    /// mod_kallsyms` (32 bytes on x86-64), and a type byte for every symbol. nil: no symbol table
    /// (the kernel refuses the module elsewhere); (-1, -1): the sizes overflow (a hostile
    /// alignment or size: no layout, as the kernel could allocate none).
    static func symbolAppendix(_ elf: ELFFile, flags: [SectionFlags], percpu: Int?, isInit: (Int) -> Bool,
                               coreEnd: Int, initEnd: Int) -> (core: Int, init: Int)? {
        guard let symsect = try? elf.symbolTableSection(), let t = try? elf.symbolTable(),
              Int(symsect.link) < elf.sections.count else { return nil }
        let strsect = elf.sections[Int(symsect.link)]
        let livepatch = ModuleLoader.modinfo(elf, "livepatch") == "Y"
        let shnum = elf.sections.count
        var kept = 0, strings = 0
        for i in t.indices {
            let shndx = Int(t.sectionIndex(i))
            var core = i == 0 || livepatch
            if !core, shndx != 0, shndx < shnum, t.nameOffset(i) != 0 {
                core = shndx == percpu || (flags[shndx].contains(.alloc) && !isInit(shndx))
            }
            guard core else { continue }
            kept += 1
            strings += t.nameBytes(i).count + 1
        }
        func align(_ v: Int, _ a: UInt64) -> Int? {
            guard let a = Int(exactly: a == 0 ? 1 : a), a > 0 else { return nil }
            let (t, o) = v.addingReportingOverflow(a - 1)
            return o ? nil : t & ~(a - 1)
        }
        let overflow = (core: -1, init: -1)
        guard let symoffs = align(coreEnd, symsect.addralign), let s0 = align(initEnd, symsect.addralign) else { return overflow }
        let core = symoffs + kept * 24 + strings + kept
        guard symsect.size < 1 << 40, strsect.size < 1 << 40, let s1 = align(s0 + symsect.size, strsect.addralign),
              let s2 = align(s1 + strsect.size, 8) else { return overflow }
        let initTotal = s2 + 32 + t.count
        guard core < 1 << 40, initTotal < 1 << 40 else { return overflow }
        return (core, initTotal)
    }
}
