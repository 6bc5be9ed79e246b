// SPDX-License-Identifier: Apache-2.0
//
// ExecGateExplain — end-state verification of a loaded Linux 6.1 x86-64 kernel module.
//
// Every byte of a module's executable memory must be explained by the signed `.ko`, relocations to
// trusted symbol addresses, and the loader's known touch-ups; otherwise the answer is deny, with the
// first unexplained byte.
//
// Usage (the caller owns all I/O):
//
//     let facts = GuestFacts(exports: coreExports, capabilities: x86CapabilityWords,
//                            uniprocessorPatched: true, possibleCPUs: 1, pvOps: pvOpsTable,
//                            paravirtNop: addrOf_paravirt_nop, paravirtBUG: addrOfParavirtBUG,
//                            functionEntries: coreFunctionStarts, staticCallReturn0: addrOfReturn0)
//     var resolver = SymbolResolver(coreExports: coreExports)
//     let explainer = Explainer(facts: facts)
//     try koBytes.withUnsafeBytes { raw in
//         let elf = try ELFFile(bytes: raw)                  // ExecGateELF, borrowed bytes
//         let claim = ModuleClaim(name: "8021q", textBase: base, text: execRegionBytes,
//                                 sectionAddresses: sysfsSections, percpuBase: nil)
//         let result = explainer.explain(elf: elf, claim: claim, resolver: resolver)
//         switch result.verdict {
//         case .allowed(let stats): resolver.add(result.exports!)   // exports set on allow
//         case .denied(let d): print(d)                             // first unexplained byte
//         }
//     }
//
// Also: `ModuleLayoutPlan.compute(elf)` (the kernel's layout_sections(): where each section must
// be), `Explainer.runtimeSites(...)` (legal run-time text patches), `Explainer.mutate(...)`.

import ExecGateELF

/// Public view of the kernel's `layout_sections()` for a signed module: the claim-structure check
/// (where each allocated section must be relative to the module's core base).
public struct ModuleLayoutPlan: Sendable {
    public struct Placement: Sendable, Hashable {
        public let sectionIndex: Int
        public let name: String
        /// Offset from the core base (core sections) or from the init base (`.init*`).
        public let offset: Int
        public let size: Int
        public let isInit: Bool
        public let isExecutable: Bool
    }
    public let placements: [Placement]
    /// `core_layout.text_size`: the executable region's length (page-aligned).
    public let textSize: Int
    /// The whole core allocation (page-aligned).
    public let coreSize: Int
    /// The init allocation's sections (6.1 `init_layout`: init text, then init rodata and data;
    /// page-aligned; layout_symtab() appends the symbol table after them, not counted here).
    public let initSize: Int
    /// Index of `.data..percpu` (lives in the per-cpu area, not in the core allocation).
    public let percpuSectionIndex: Int?
    /// 6.1: the core and init allocations as the kernel makes them, with what `layout_symtab()`
    /// appends after the sections (the core symbols; `.symtab`, `.strtab`, `struct mod_kallsyms`
    /// and the type table in init), page-aligned: what a live module holds
    /// (`ModuleLayout.symbolAppendix`).
    public var coreSizeWithSymbols: Int = 0
    public var initSizeWithSymbols: Int = 0

    /// nil when the ELF's section sizes overflow the computation (hostile input).
    public static func compute(_ elf: ELFFile) -> ModuleLayoutPlan? {
        guard let l = ModuleLayout.compute(elf) else { return nil }
        var out: [Placement] = []
        for s in elf.sections {
            if let o = l.coreOffset[s.index] {
                out.append(Placement(sectionIndex: s.index, name: s.name, offset: o, size: s.size, isInit: false,
                                     isExecutable: l.flags[s.index].contains(.execInstr)))
            } else if let o = l.initOffset[s.index] {
                out.append(Placement(sectionIndex: s.index, name: s.name, offset: o, size: s.size, isInit: true,
                                     isExecutable: l.flags[s.index].contains(.execInstr)))
            }
        }
        var plan = ModuleLayoutPlan(placements: out, textSize: l.textSize, coreSize: l.coreSize, initSize: l.initSize, percpuSectionIndex: l.percpuIndex)
        // 6.1 layout_symtab(): appended to core_layout and init_layout, then debug_align()
        // (PAGE_ALIGN with CONFIG_STRICT_MODULE_RWX). Sizes that overflow: no layout.
        let (c, i) = ModuleLayout.symbolAppendix(elf, flags: l.flags, percpu: l.percpuIndex, isInit: { l.initOffset[$0] != nil },
                                                 coreEnd: l.coreSize, initEnd: l.initSize) ?? (l.coreSize, l.initSize)
        guard c >= 0 else { return nil }
        plan.coreSizeWithSymbols = ModuleLayout.pageAlign(c)
        plan.initSizeWithSymbols = ModuleLayout.pageAlign(i)
        return plan
    }
}
