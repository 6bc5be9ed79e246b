// SPDX-License-Identifier: Apache-2.0
//
// Stage 1: relocations. `simplify_symbols()` gives every symbol its final value (exports of the
// core kernel and of verified modules only, as `resolve_symbol()` does; the module's own sections
// at their laid-out addresses; per-cpu symbols at the claimed per-cpu base), then
// `apply_relocations()` writes every field of the module's allocated core sections.

import ExecGateELF

/// What `simplify_symbols()` gives symbol `i`: its value, or why the module is refused.
enum SymbolResolution {
    case value(UInt64)
    case common, livepatch, unknown, percpuWithoutBase
    case coreInit(UInt64)
    case badSection(UInt16)
}

extension Session {
    /// `simplify_symbols()`: the final value of symbol `i`.
    @inline(__always) func symbolValue(_ i: Int) throws -> UInt64 {
        if let v = symValue[i] { return v }
        let v = try computeSymbolValue(i)
        symValue[i] = v
        return v
    }

    /// The value of symbol `i` (not cached here: `symbolValue` and `relocate` keep the cache).
    func computeSymbolValue(_ i: Int) throws -> UInt64 {
        let t = symtab
        switch resolveSymbol(i) {
        case .value(let v): return v
        case .common:
            throw deny(.relocation, "symbol \(t.name(i)) is SHN_COMMON (the kernel refuses: compile with -fno-common)")
        case .livepatch:
            throw deny(.relocation, "livepatch symbol \(t.name(i)) is not supported")
        case .coreInit(let a):
            // An export inside the core's init memory is freed after boot (and never a real
            // export: modpost refuses EXPORT_SYMBOL of __init code): nothing may point there.
            throw deny(.initSymbol, "symbol \(t.name(i)) resolves to 0x\(String(a, radix: 16)), inside the core kernel's freed init memory")
        case .unknown:
            throw deny(.relocation, "unknown symbol \(t.name(i)): not exported by the core kernel or an allowed module")
        case .badSection(let shndx):
            throw deny(.relocation, "symbol \(t.name(i)) has unsupported section index \(shndx)")
        case .percpuWithoutBase:
            throw deny(.relocation, "symbol \(t.name(i)) is per-cpu but the claim gives no per-cpu base")
        }
    }

    /// The top 16 bits of the value made up for a symbol of a section that is not SHF_ALLOC.
    static let madeUpValueTag: UInt64 = 0xdead_0000_0000_0000

    /// Symbol `si` is defined in a section the kernel does not allocate (not SHN_UNDEF, SHN_ABS,
    /// SHN_COMMON or another reserved index, not the per-cpu section): its value is the kernel's
    /// temporary copy's address, made up here (`resolveSymbol`).
    func inSectionNotAllocated(_ si: Int) -> Bool {
        let shndx = symtab.sectionIndex(si)
        guard shndx != SectionIndex.undef, shndx < SectionIndex.loReserve, Int(shndx) < elf.sections.count,
              Int(shndx) != layout.percpuIndex else { return false }
        return addr[Int(shndx)] == nil
    }

    /// `simplify_symbols()` for symbol `i`, without throwing (the caller says what a refusal means).
    @inline(__always) func resolveSymbol(_ i: Int) -> SymbolResolution {
        let t = symtab
        let shndx = t.sectionIndex(i)
        switch shndx {
        case SectionIndex.common: return .common
        case SectionIndex.abs: return .value(t.value(i))
        case SectionIndex.livepatch: return .livepatch
        case SectionIndex.undef:
            if i == 0 { return .value(0) }
            // Looked up by the name's borrowed bytes; the String is made only for a message.
            if let a = resolver.lookup(utf8: t.nameBytes(i), likelyPresent: true) {
                return facts.isCoreInit(a) ? .coreInit(a) : .value(a)
            }
            return t.binding(i) == 2 ? .value(0) : .unknown  // unresolved weak: the kernel leaves 0.
        default:
            let si = Int(shndx)
            guard si < elf.sections.count, shndx < SectionIndex.loReserve else { return .badSection(shndx) }
            if si == layout.percpuIndex {
                // An empty per-cpu section gets no area (`percpu_modalloc()`: `if
                // (!pcpusec->sh_size) return 0`): `mod_percpu(mod)` stays NULL, so its symbols are
                // `0 + st_value`. A claimed base is never used then (it is checked only for a
                // section with a size, Session.init).
                if elf.sections[si].size == 0 { return .value(t.value(i)) }
                guard let p = claim.percpuBase else { return .percpuWithoutBase }
                return .value(p &+ t.value(i))
            } else if let a = addr[si] {
                return .value(a &+ t.value(i))
            }
            // Non-ALLOC section: the kernel would use its temporary copy — unexplainable by design
            // (a data field keeps the made-up value, `fieldOverPlaceholder`; an executable one is
            // denied in `apply`).
            return .value(Session.madeUpValueTag | UInt64(si) << 24)
        }
    }

    /// Every symbol's value, in one pass before the relocation walk (the kernel's
    /// `simplify_symbols()` also resolves the whole table first). The export lookups, each about
    /// one cache miss into the export tables, then come one after another with nothing depending
    /// on them, so the processor overlaps their misses; in the walk they were spread between
    /// dependent field writes. A symbol the explainer cannot use is left unresolved here: the
    /// walk meets it at the record that uses it and throws its denial (`computeSymbolValue`).
    /// Those `simplify_symbols()` itself refuses, used or not — an undefined symbol no export
    /// resolves (`Unknown symbol`, -ENOENT; `_GLOBAL_OFFSET_TABLE_` and weak symbols excepted,
    /// `ignore_undef_symbol()`) and an SHN_COMMON symbol (-ENOEXEC; `__gnu_lto*` excepted) — are
    /// returned, the first in table order (the kernel's first message), for the caller to refuse
    /// before any relocation as the kernel does: a refused symbol only init text or no relocation
    /// uses still refuses the module.
    /// Also marks, in a core session, the symbols defined in the module's init sections (the
    /// walk's freed-memory check needs a symbol's section per field otherwise).
    func resolveAllSymbols() -> Int? {
        let t = symtab
        let initOffset = layout.initOffset, isCore = region == .core
        var anyInit = false
        var initFlags = [Bool]()
        var refused: Int?
        // Undefined symbols with ASCII names (every one in a real module): hashed in the table
        // walk, looked up after it (below), so the lookups, each about one cache miss into the
        // shared export table, come in a short loop of their own and the processor keeps several
        // in flight; interleaved with the walk's hashing and name scans it kept about one.
        var pending: [(i: Int, name: UnsafeRawBufferPointer, digest: NameTable.Digest)] = []
        pending.reserveCapacity(64)
        // Per section index: the base `resolveSymbol` adds a symbol's st_value to when it
        // answers `.value(addr[si] + st_value)` — a section laid out here (`addr` set), not
        // SHN_UNDEF (index 0), not reserved, not the per-cpu one — and whether the section is
        // one of the core session's init sections. `sectionKind[si]` bit 0 clear sends a symbol
        // to `resolveSymbol`. Most of a module's symbols take the table: a load and an add
        // instead of `resolveSymbol`'s tests.
        let sectionCount = elf.sections.count
        var sectionBase = [UInt64](repeating: 0, count: sectionCount)
        var sectionKind = [UInt8](repeating: 0, count: sectionCount)  // bit 0: base known; bit 1: init section
        for si in 1..<max(sectionCount, 1) where si < Int(SectionIndex.loReserve) {
            if isCore, si < initOffset.count, initOffset[si] != nil { sectionKind[si] |= 2 }
            if si != layout.percpuIndex, let a = addr[si] { sectionBase[si] = a; sectionKind[si] |= 1 }
        }
        let nameSeed = NameTable.seed
        symValue.withUnsafeMutableBufferPointer { vals in
            precondition(vals.count == t.count)
            for i in t.indices {
                let shndx = Int(t.sectionIndex(i))
                let kind = shndx < sectionCount ? sectionKind[shndx] : 0
                if vals[i] == nil {
                    if kind & 1 != 0 {
                        vals[i] = sectionBase[shndx] &+ t.value(i)
                    } else {
                        if i != 0 && shndx == Int(SectionIndex.undef) {
                            let n = t.nameBytes(i)
                            if n.isASCII {
                                pending.append((i, n, NameTable.digest(n, seed: nameSeed)))
                                continue  // SHN_UNDEF: never in an init section (below)
                            }
                        }
                        switch resolveSymbol(i) {
                        case .value(let v): vals[i] = v
                        case .unknown:
                            let n = t.nameBytes(i)
                            if refused == nil && !(n.count == 21 && n.hasASCIIPrefix("_GLOBAL_OFFSET_TABLE_")) { refused = i }
                        case .common:
                            if refused == nil && !t.nameBytes(i).hasASCIIPrefix("__gnu_lto") { refused = i }
                        default: break
                        }
                    }
                }
                if kind & 2 != 0 {
                    if !anyInit { initFlags = [Bool](repeating: false, count: t.count); anyInit = true }
                    initFlags[i] = true
                }
            }
            // `resolveSymbol(i)` for each deferred symbol (its SHN_UNDEF case, the lookup on the
            // digest already made: `SlidExports.lookup(ascii:digest:likelyPresent:)`, the answer
            // of `resolver.lookup(utf8:likelyPresent: true)` for an ASCII name).
            let exports = resolver.exports
            // First every lookup's first line read, in a loop of loads alone (their misses
            // overlap: ModuleChecks' duplicate-export check does the same), then the tails of the
            // long names those lines point to, then the lookups, on lines now in cache.
            var sink: UInt64 = 0
            for p in pending { sink ^= exports.touch(p.digest, likelyPresent: true) }
            let tailFrom = exports.linkTimeHeadBytes
            for p in pending where p.name.count > tailFrom { sink ^= exports.touchTail(p.digest) }
            exportTouchSink ^= sink
            for p in pending {
                let i = p.i
                if let a = exports.lookup(ascii: p.name, digest: p.digest, likelyPresent: true) {
                    if !facts.isCoreInit(a) { vals[i] = a }  // an init-memory export: the walk denies it
                } else if t.binding(i) == 2 {
                    vals[i] = 0  // unresolved weak: the kernel leaves 0.
                } else if refused.map({ i < $0 }) ?? true, !(p.name.count == 21 && p.name.hasASCIIPrefix("_GLOBAL_OFFSET_TABLE_")) {
                    refused = i  // the first refusal in table order, deferred or not
                }
            }
        }
        symbolInInit = initFlags
        return refused
    }

    /// `apply_relocate_add()` / `__write_relocate_add()` (arch/x86/kernel/module.c, 6.1):
    /// ```c
    /// val = sym->st_value + rel[i].r_addend;
    /// case R_X86_64_NONE: continue;  case R_X86_64_64: size = 8; break;
    /// case R_X86_64_32:  if (val != *(u32 *)&val) goto overflow; size = 4; break;
    /// case R_X86_64_32S: if ((s64)val != *(s32 *)&val) goto overflow; size = 4; break;
    /// case R_X86_64_PC32: case R_X86_64_PLT32: val -= (u64)loc; size = 4; break;
    /// case R_X86_64_PC64: val -= (u64)loc; size = 8; break;
    /// default: pr_err("Unknown rela relocation: %llu\n", ...); return -ENOEXEC;
    /// if (memcmp(loc, &zero, size)) { pr_err("x86/modules: Invalid relocation target, existing value is nonzero ..."); return -ENOEXEC; }
    /// ```
    func relocate() throws {
        let initRefs = try relocateFields()
        // Fields of `.altinstr_replacement` / `.altinstr_aux` that refer to the module's init
        // sections: legal only inside the replacement or the static_cpu_has() fallback block of an
        // alternative whose site is in init text (checked now that `.altinstructions` is relocated).
        if !initRefs.isEmpty {
            // (One sorted cover, a binary search per field: both counts are the file's, and a
            // scan of every template per field was quadratic in them.)
            let replacements = RangeCover(try initTextAlternativeTemplates())
            for f in initRefs where !replacements.covers(f.loc, UInt64(f.size)) {
                throw deny(.initSymbol, f.reason, section: f.section, offset: f.offset, address: f.loc)
            }
        }
    }

    /// A field of `.altinstr_replacement` / `.altinstr_aux` that refers to the module's init sections.
    typealias InitReference = (loc: UInt64, size: Int, reason: String, section: String, offset: Int)

    /// Writes every relocation field (above); returns the init-section references of alternative
    /// templates, which `relocate()` checks once the whole table is relocated.
    func relocateFields() throws -> [InitReference] {
        // simplify_symbols() before apply_relocations(): its refusal comes first.
        if let i = resolveAllSymbols() { _ = try computeSymbolValue(i) }
        valuesComplete = !symValue.contains { $0 == nil }
        var initRefs: [InitReference] = []
        // Work on local arrays (moved out, moved back on every exit), handed to the per-section
        // walk as borrowed buffers: no exclusivity checks in the walk (a local captured by a
        // nested function is boxed and checked at run time on every access), and each field is
        // read and written as one 4- or 8-byte little-endian word (bounds checked per field).
        var img: [UInt8] = [], cl: [UInt8] = [], vals: [UInt64?] = [], counts: [Int] = []
        var walk = RelocationWalk(fields: relocFields, count: relocCount, record: recordRelocationFields)
        swap(&img, &image); swap(&cl, &cls); swap(&vals, &symValue); swap(&counts, &classCounts); relocFields = []
        defer { swap(&img, &image); swap(&cl, &cls); swap(&vals, &symValue); swap(&counts, &classCounts); relocFields = walk.fields; relocCount = walk.count }
        precondition(ExplanationClass.relocation.rawValue < counts.count && ExplanationClass.elf.rawValue < counts.count)
        // Exec-target records (for the mutation tester only): reserved once, not grown per field.
        if walk.record { walk.fields.reserveCapacity(walk.fields.count + rela.reduce(0) { imageOffset(of: $1.targetSectionIndex) != nil ? $0 + $1.relocations.count : $0 }) }
        let symtabSection = try? elf.symbolTableSection()
        // Per target: the fields whose value is a placeholder (`fieldOverPlaceholder`), made at the
        // target's first copy; a core session's scratch copies of its init sections (and the
        // section left pending, as `pendingRela` for data), their bytes bounded together.
        var placeholderFields: [Int: AddressTable] = [:]
        var initScratch: [Int: [UInt8]] = [:], initPending: [Int: Int] = [:]
        var initScratchBytes = 0
        func reserveInitScratch(_ s: ELFSection) throws {
            initScratchBytes += s.size
            guard initScratchBytes <= ExplainLimits.maxCoreSize else {
                throw deny(.relocation, "init sections relocated out of order total \(initScratchBytes) bytes, more than \(ExplainLimits.maxCoreSize) (not modelled)", section: s.name)
            }
        }
        for (ri, rs) in rela.enumerated() {
            let t = rs.targetSectionIndex
            // apply_relocations() (kernel/module/main.c, 6.1 and 6.12) hands a section flagged
            // SHF_RELA_LIVEPATCH whose target is allocated (as layout_and_allocate() left the
            // flags: layout_symtab() also allocates .symtab and its .strtab) to
            // klp_apply_section_relocs() (kernel/livepatch/core.c, CONFIG_LIVEPATCH=y): a name
            // other than `.klp.rela.<object>.…` refuses the module (-EINVAL), another object's
            // records are skipped until it loads, vmlinux's resolve SHN_LIVEPATCH symbols first.
            // No module of the builds has one; not modelled: denied.
            if rs.section.flags.contains(.relaLivepatch),
               layout.flags[t].contains(.alloc) || t == symtabSection?.index || t == symtabSection.map({ Int($0.link) }) {
                throw deny(.relocation, "\(rs.section.name) is flagged SHF_RELA_LIVEPATCH: apply_relocations() hands it to klp_apply_section_relocs(), which refuses a misnamed section and skips other objects' records at load (not modelled)",
                           section: rs.section.name)
            }
            // Relocations of non-ALLOC sections are skipped by the kernel. The explained region's
            // exec sections are relocated in the image, the session's other allocated sections in
            // their data copies; init sections in a core session have neither (freed, never used).
            // A skipped section's records are still checked as the parser checks them (the walk
            // checks the others as it reads them: `apply`, `check`).
            guard layout.flags[t].contains(.alloc), let taddr = addr[t], imageOffset(of: t) != nil || (t < isData.count && isData[t]) else {
                let rels = rs.relocations
                if region == .core, layout.flags[t].contains(.alloc), let paddr = addr[t], t < layout.initOffset.count, layout.initOffset[t] != nil {
                    // An init section in a core session: never written into the region, but the
                    // kernel relocates it like any SHF_ALLOC section and refuses the module on an
                    // unknown type, a refused symbol, an R_X86_64_32/32S overflow or a nonzero
                    // target there too (`apply_relocate_add()`). Replayed at the placeholder address
                    // as a data section is, counting nothing: checked in place while its records
                    // come in order, else (from the first out of order, or for a second section
                    // with this target) applied to a scratch copy kept for the later sections
                    // (every test of `apply`: the nonzero target on the bytes earlier records
                    // wrote, a field over one whose value is a placeholder: `fieldOverPlaceholder`).
                    // (An R_X86_64_32/32S field against an init symbol must fit wherever init may
                    // lie: `field()`.)
                    var scratch = RelocationWalk(fields: [], count: 0, record: false), unused: [InitReference] = []
                    var copy = initScratch.removeValue(forKey: t)
                    let pending = initPending.removeValue(forKey: t)
                    if try relocateOnCopy(ri, t, paddr, &copy, pending: pending, everyField: true, reserve: reserveInitScratch,
                                          &vals, &scratch, &unused, &placeholderFields) {
                        initScratch[t] = copy
                    } else {
                        initPending[t] = ri
                    }
                }
                for i in rels.indices where !rels.isValid(i) { try refuseRecords() }
                continue
            }
            if let toff = imageOffset(of: t) {
                try img.withUnsafeMutableBytes { ib in
                    try cl.withUnsafeMutableBytes { cb in
                        try counts.withUnsafeMutableBufferPointer { cn in
                            try vals.withUnsafeMutableBufferPointer { v in
                                try apply(rs, t, taddr, ib, toff, (cb, cn), v, &walk, &initRefs)
                            }
                        }
                    }
                }
            } else if t < isData.count, isData[t] {
                var copy = data[t]
                data[t] = nil  // `copy` uniquely referenced while it is patched
                let pending = pendingRela[t]
                pendingRela[t] = nil
                if try relocateOnCopy(ri, t, taddr, &copy, pending: pending, everyField: false, reserve: { _ in },
                                      &vals, &walk, &initRefs, &placeholderFields) {
                    data[t] = copy
                } else {
                    pendingRela[t] = ri
                }
            }
        }
        return initRefs
    }

    /// Relocation section `ri`'s records applied to target `t` (at `taddr`), a data section or,
    /// in a core session, an init section, in the kernel's order. `copy` is the target's relocated
    /// copy when an earlier section made one; else `pending`, a section before this one whose
    /// records passed the in-place check, is written to a fresh copy first; else this section is
    /// checked in place (`check`) and, when every record passes, left pending: false, `copy`
    /// untouched. Otherwise (from the first record out of order) the records are applied to the
    /// copy, which `copy` then holds: true. Each fresh copy is first charged to `reserve`. The
    /// first record over an earlier field whose value is a placeholder is denied when `apply`
    /// reaches it (`fieldOverPlaceholder`; `everyField` on an init section's copy).
    func relocateOnCopy(_ ri: Int, _ t: Int, _ taddr: UInt64, _ copy: inout [UInt8]?, pending: Int?, everyField: Bool,
                        reserve: (ELFSection) throws -> Void, _ vals: inout [UInt64?], _ walk: inout RelocationWalk,
                        _ initRefs: inout [InitReference], _ placeholderFields: inout [Int: AddressTable]) throws -> Bool {
        let rs = rela[ri], s = elf.sections[t]
        var start = 0
        var d: [UInt8]
        if let made = copy {
            d = made
            copy = nil  // `d` uniquely referenced while it is patched
        } else if let p = pending {
            // A second relocation section for the same target: on the copy, after the first.
            try reserve(s)
            d = try pristineCopy(t, rela: p, upTo: rela[p].relocations.count, values: vals)
        } else {
            let k = try vals.withUnsafeMutableBufferPointer { v in
                try check(rs, t, taddr, s.isNoBits ? UnsafeRawBufferPointer(start: nil, count: 0) : elf.contents(of: s), s.size, v, &walk)
            }
            guard let k else { return false }
            try reserve(s)
            d = try pristineCopy(t, rela: ri, upTo: k, values: vals)
            start = k
        }
        // Fields out of order or of two sections may overlap here (never in `check`).
        let over = fieldOverPlaceholder(t, section: ri, earlier: pending, everyField: everyField, &placeholderFields)
        // (Records before `start` passed the in-place check, in order and apart, with no earlier
        // section for `t`: none of them can be it. Denied, should one ever be.)
        if let o = over, o < start {
            throw deny(.relocation, "relocation field over one whose value is not known here (not modelled)", section: sectionName(t), offset: Int(rs.relocations[o].offset))
        }
        try d.withUnsafeMutableBytes { db in
            try vals.withUnsafeMutableBufferPointer { v in try apply(rs, t, taddr, db, 0, nil, v, &walk, &initRefs, from: start, overPlaceholder: over) }
        }
        copy = d
        return true
    }

    /// Two symbols' values are placeholders here, not the kernel's: in a core session those of the
    /// module's own init sections (the placeholder init address, Session.swift; the kernel's is in
    /// the module area, 0xffffffff above: untrusted here), and in any session those of a section
    /// that is not SHF_ALLOC (`resolveSymbol`: the kernel's temporary copy's address). A field
    /// against one holds bytes the kernel decides and the replay does not know; a later field over
    /// any of them meets those bytes in `apply_relocate_add()`'s nonzero test. Where the
    /// placeholder leaves zeros (the upper half of an 8-byte field against init memory) the kernel
    /// finds them nonzero and refuses the module, which the replay cannot see; so the later field
    /// is denied (`relocation`) — conservatively: with a crafted addend the kernel's bytes there
    /// could be zero. Returns the first record of relocation section `current` whose field
    /// overlaps such a field written before it (in the kernel's order: the sections targeting `t`
    /// in file order, their records in order), or nil; `apply` denies it after its own tests, so an
    /// earlier refusal the kernel makes comes first. An earlier field under a later placeholder
    /// one needs nothing: its bytes are exact. No module of the builds has overlapping fields;
    /// fields apart or adjacent are untouched. Only copies need this (`check` takes records in
    /// order and apart; an executable field against init memory takes the claimed init address or
    /// is denied; an executable field against a section not allocated is denied). On a core
    /// session's init section (`everyField`) every field counts: a PC-relative field's value there
    /// is taken at the placeholder's P, not the kernel's. `fields[t]` holds each such field's start
    /// → length (one entry a field), made at the target's first copy from the one section before it
    /// (`earlier`: the section left pending, the only one a target can have before its first copy)
    /// and grown by each later section: every record is read once here, a look-up asks the at
    /// most 15 starts a field can overlap from.
    func fieldOverPlaceholder(_ t: Int, section current: Int, earlier: Int?, everyField: Bool, _ fields: inout [Int: AddressTable]) -> Int? {
        let inInit = symbolInInit
        let size = UInt64(elf.sections[t].size)
        func placeholder(_ si: Int) -> Bool { everyField || (si < inInit.count && inInit[si]) || inSectionNotAllocated(si) }
        func add(_ rels: ELFRelocations, into table: inout AddressTable, findingOverlap: Bool) -> Int? {
            var first: Int? = nil
            for i in rels.indices where rels.isValid(i) {
                let r = rels[i]
                guard let n = r.type.fieldSize, n > 0, r.offset <= size, UInt64(n) <= size - r.offset else { continue }
                if findingOverlap, first == nil, table.count != 0 {
                    // A field starting at `s` (at most 8 bytes) overlaps [offset, offset + n) when
                    // s < offset + n and s + its length > offset.
                    var s0 = r.offset >= 7 ? r.offset - 7 : 0
                    while s0 < r.offset + UInt64(n) {
                        if let len = table[s0], s0 + len > r.offset { first = i; break }
                        s0 += 1
                    }
                }
                if placeholder(r.symbolIndex) { table.set(r.offset, max(table[r.offset] ?? 0, UInt64(n))) }
            }
            return first
        }
        var table: AddressTable
        if let made = fields[t] {
            table = made
            fields[t] = nil  // uniquely referenced while it grows
        } else {
            table = AddressTable()
            if let e = earlier { _ = add(rela[e].relocations, into: &table, findingOverlap: false) }
        }
        let first = add(rela[current].relocations, into: &table, findingOverlap: true)
        fields[t] = table
        return first
    }

    /// A record the parser refuses (``ELFRelocations/isValid(_:)`` false): its error, or that of
    /// an earlier bad record in file order (the parser checked every record before the walk).
    func refuseRecords() throws -> Never {
        try elf.checkRelocationRecords()
        preconditionFailure("ELFRelocations.isValid and ELFFile.checkRelocationRecords disagree")
    }

    /// The walk's running state: fields applied, and the exec-target records when `record`.
    struct RelocationWalk {
        var fields: [(off: Int, size: Int, type: RelocationType, symbol: Int, addend: Int64, place: UInt64)]
        var count: Int
        let record: Bool
    }

    /// The loader's checks on one record, in `apply_relocate_add()`'s order (arch/x86/kernel/
    /// module.c: known type, symbol value, the 32/32S overflow checks on S + A): its field size,
    /// offset in the section, address and S + A (before a PC-relative type subtracts the
    /// address); nil for a type that writes nothing.
    @inline(__always) func field(_ r: ELFRelocation, _ rs: ELFRelocationSection, _ t: Int, _ taddr: UInt64,
                                 _ vals: UnsafeMutableBufferPointer<UInt64?>) throws -> (size: Int, offset: Int, loc: UInt64, value: UInt64)? {
        guard let size = r.type.fieldSize, r.type.isKnownToLoader else {
            throw deny(.relocation, "unknown relocation type \(r.type) in \(rs.section.name) (the kernel refuses the module)",
                       section: sectionName(t), offset: Int(r.offset), address: taddr &+ r.offset)
        }
        if size == 0 { return nil }
        let fo = Int(r.offset)  // inside the section: the caller checked `isValid` (the parser's check).
        let loc = taddr &+ r.offset
        let si = r.symbolIndex
        let sv: UInt64
        if let v = vals[si] { sv = v } else { sv = try computeSymbolValue(si); vals[si] = sv }
        let val = sv &+ UInt64(bitPattern: r.addend)
        switch r.type.rawValue {
        case 10:  // R_X86_64_32
            guard val <= UInt64(UInt32.max) else {
                throw deny(.relocation, "R_X86_64_32 overflow (value 0x\(String(val, radix: 16)))", section: sectionName(t), offset: fo, address: loc)
            }
        case 11:  // R_X86_64_32S
            let sv = Int64(bitPattern: val)
            guard sv >= Int64(Int32.min) && sv <= Int64(Int32.max) else {
                throw deny(.relocation, "R_X86_64_32S overflow (value 0x\(String(val, radix: 16)))", section: sectionName(t), offset: fo, address: loc)
            }
        default: break
        }
        // A core session computes a symbol of the module's own init sections at the placeholder
        // (Session.initPlaceholderBase: low, upper half zero), not where the kernel put init (an
        // address of the module area it does not trust). The overflow checks above then answer
        // for the placeholder: an R_X86_64_32 field fits there and overflows at any module
        // address with an honest addend (`apply_relocate_add()` refuses the module), and a
        // crafted addend can make either width fit at some init addresses and not at others.
        // Such a field is explained only when it fits wherever in the module area init was
        // allocated (both ends of the area: S + A moves with S without wrapping in between, or
        // fails at an end); else denied, as the kernel may refuse it.
        if r.type.rawValue == 10 || r.type.rawValue == 11, !symbolInInit.isEmpty, symbolInInit[si] {
            let a = UInt64(bitPattern: r.addend)
            let lo = facts.moduleArea.lowerBound &+ a, hi = (facts.moduleArea.upperBound &- 1) &+ a
            let fits = r.type.rawValue == 10
                ? lo <= UInt64(UInt32.max) && hi <= UInt64(UInt32.max) && lo <= hi
                : Int64(bitPattern: lo) >= Int64(Int32.min) && Int64(bitPattern: hi) <= Int64(Int32.max) && Int64(bitPattern: lo) <= Int64(bitPattern: hi)
            guard fits else {
                throw deny(.relocation, "\(r.type) against \(symbolLabel(si)) in the module's init memory: its value does not fit the field wherever init may lie in the module area (a core session does not trust the claimed init address; the kernel refuses the module where the value overflows)",
                           section: sectionName(t), offset: fo, address: loc)
            }
        }
        // Likewise against a section the kernel does not allocate: the value is its temporary
        // copy's address (vmalloc space), made up here, so whether it fits 32 bits is unknown.
        if r.type.rawValue == 10 || r.type.rawValue == 11, inSectionNotAllocated(si) {
            throw deny(.relocation, "\(r.type) against \(symbolLabel(si)), in a section the kernel does not allocate: its value (the kernel's temporary copy's address) is not known here, nor whether it fits the field",
                       section: sectionName(t), offset: fo, address: loc)
        }
        return (size, fo, loc, val)
    }

    /// One relocation section into `buf` (the image from `toff`, or a data copy from 0);
    /// `classes` is the image's class array and its counters when the target is the explained region.
    func apply(_ rs: ELFRelocationSection, _ t: Int, _ taddr: UInt64, _ buf: UnsafeMutableRawBufferPointer, _ toff: Int,
               _ classes: (c: UnsafeMutableRawBufferPointer, counts: UnsafeMutableBufferPointer<Int>)?,
               _ vals: UnsafeMutableBufferPointer<UInt64?>, _ walk: inout RelocationWalk, _ initRefs: inout [InitReference], from start: Int = 0,
               overPlaceholder: Int? = nil) throws {
        let relocClass = UInt8(ExplanationClass.relocation.rawValue), elfClass = UInt8(ExplanationClass.elf.rawValue)
        let isExec = classes != nil
        let symtab = self.symtab
        let inInit = symbolInInit
        var fromELF = 0, toReloc = 0, count = walk.count
        defer {
            if let cn = classes?.counts {
                cn[Int(elfClass)] -= fromELF
                cn[Int(relocClass)] += toReloc
            }
            walk.count = count
        }
        let rels = rs.relocations
        let records = rels.rawRecords, n = rels.count
        precondition(records.count == n * 24)
        let symbolCount = UInt64(rels.symbolCount), targetSize = rels.targetSize
        // The common run of exec records in a loop of its own over the raw records (as `check`
        // does for data records): R_X86_64_64/PC32/PLT32/PC64/32/32S (the last two inside their
        // range), valid, symbol value known and not made up (`madeUpValueTag`), signed bytes zero, the field all of
        // the ELF class, a symbol outside the module's init sections, no field recording. It writes what the record-by-record path below writes; the first
        // record it does not take goes to that path, which checks it in full (and denies).
        // (Only when the whole target section lies inside `buf` and the class array spans `buf`:
        // then a field inside the section, which the loop checks, lies inside both, and the
        // loop needs no per-record bounds test of its own. Exec sections always do, by the layout.)
        let tight = classes != nil && !walk.record && toff >= 0 && toff <= buf.count && targetSize <= UInt64(buf.count - toff) && classes?.c.count == buf.count
        let anyInit = !inInit.isEmpty
        // Every relocation section links the one symbol table (ELFFile.relocationSections), whose
        // symbols these arrays hold: the loop's unchecked reads below stay inside them.
        precondition(vals.count == Int(symbolCount) && (!anyInit || inInit.count == Int(symbolCount)), "values and init flags per symbol")
        var ri = start
        while ri < n {
            defer { ri += 1 }
            if tight, let (c, _) = classes {
                while ri < n {
                    let at = ri &* 24
                    let fo = UInt64(littleEndian: records.loadUnaligned(fromByteOffset: at, as: UInt64.self))
                    let info = UInt64(littleEndian: records.loadUnaligned(fromByteOffset: at &+ 8, as: UInt64.self))
                    let ty = UInt32(truncatingIfNeeded: info)
                    let size: UInt64
                    switch ty {
                    case 2, 4, 10, 11: size = 4  // PC32, PLT32, 32, 32S
                    case 1, 24: size = 8         // 64, PC64
                    default: size = 0
                    }
                    let si = info >> 32
                    guard size != 0, si < symbolCount, fo <= targetSize, size <= targetSize &- fo, !(anyInit && inInit[Int(si)]),
                          let sv = vals[Int(si)], sv & 0xffff_0000_0000_0000 != Session.madeUpValueTag else { break }
                    let o = toff &+ Int(fo)  // inside `buf` and `c`: fo + size <= targetSize (above), `tight`'s test
                    let loc = taddr &+ fo
                    var val = sv &+ UInt64(bitPattern: Int64(littleEndian: records.loadUnaligned(fromByteOffset: at &+ 16, as: Int64.self)))
                    // `field()`'s overflow checks (an overflow leaves the record to it: its denial).
                    if ty == 10 {
                        guard val <= UInt64(UInt32.max) else { break }
                    } else if ty == 11 {
                        let v = Int64(bitPattern: val)
                        guard v >= Int64(Int32.min) && v <= Int64(Int32.max) else { break }
                    } else if ty != 1 {
                        val = val &- loc  // PC32, PLT32, PC64
                    }
                    if size == 8 {
                        guard buf.loadUnaligned(fromByteOffset: o, as: UInt64.self) == 0,
                              c.loadUnaligned(fromByteOffset: o, as: UInt64.self) == UInt64(elfClass) &* 0x0101_0101_0101_0101 else { break }
                        buf.storeBytes(of: val.littleEndian, toByteOffset: o, as: UInt64.self)
                        c.storeBytes(of: UInt64(relocClass) &* 0x0101_0101_0101_0101, toByteOffset: o, as: UInt64.self)
                    } else {
                        guard buf.loadUnaligned(fromByteOffset: o, as: UInt32.self) == 0,
                              c.loadUnaligned(fromByteOffset: o, as: UInt32.self) == UInt32(elfClass) &* 0x0101_0101 else { break }
                        buf.storeBytes(of: UInt32(truncatingIfNeeded: val).littleEndian, toByteOffset: o, as: UInt32.self)
                        c.storeBytes(of: UInt32(relocClass) &* 0x0101_0101, toByteOffset: o, as: UInt32.self)
                    }
                    fromELF += Int(size)
                    toReloc += Int(size)
                    count += 1
                    ri += 1
                }
                if ri == n { break }
            }
            if !rels.isValid(ri) { try refuseRecords() }
            let r = rels[ri]
            guard let (size, fo, loc, s) = try field(r, rs, t, taddr, vals) else { continue }
            let si = r.symbolIndex
            var val = s
            switch r.type.rawValue {
            case 2, 4, 24:  // R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64
                val = val &- loc
            default: break
            }
            if isExec {
                // A field against a section the kernel does not allocate holds its temporary
                // copy's address (freed after load), which nothing here knows: not explainable.
                if inSectionNotAllocated(si) {
                    throw deny(.relocation, "\(r.type) in \(sectionName(t)) refers to \(symbolLabel(si)), in \(sectionName(Int(symtab.sectionIndex(si)))), a section the kernel does not allocate (its temporary copy's address: not modelled)",
                               section: sectionName(t), offset: fo, address: loc)
                }
                // Core text pointing into the module's own init sections would point into
                // memory freed after init (`do_free_init()`): not explainable. (`inInit` marks
                // the symbols of a core session's init sections: resolveAllSymbols.)
                if !inInit.isEmpty && inInit[si] {
                    let ssi = Int(symtab.sectionIndex(si))
                    let tn = sectionName(t)
                    guard tn == ".altinstr_replacement" || tn == ".altinstr_aux", r.type == .pc32 || r.type == .plt32 else {
                        throw deny(.initSymbol, "\(r.type) in \(tn) refers to \(symbolLabel(si)) in \(sectionName(ssi)), init memory freed after init",
                                   section: tn, offset: fo, address: loc)
                    }
                    // The branch's value: the init section's real (claimed) address, used
                    // for this field only (site classification keeps the placeholder).
                    val = (try claimedInitAddress(ssi)) &+ symtab.value(si) &+ UInt64(bitPattern: r.addend) &- loc
                    initRefs.append((loc, size, "\(r.type) in \(tn) refers to \(symbolLabel(si)) in \(sectionName(ssi)), init memory freed after init, outside the template of an init-text alternative",
                                     tn, fo))
                }
            } else if fo + size > buf.count {
                count += 1
                continue
            }
            let o = toff + fo
            // Exec sections lie inside the image by the layout; data fields inside the copy (above).
            precondition(o >= 0 && o <= buf.count - size, "relocation field outside its section")
            let nonzero = size == 8 ? buf.loadUnaligned(fromByteOffset: o, as: UInt64.self) != 0
                                    : buf.loadUnaligned(fromByteOffset: o, as: UInt32.self) != 0
            guard !nonzero else {
                throw deny(.relocation, "relocation target is nonzero in the ELF (the kernel refuses the module)", section: sectionName(t), offset: fo, address: loc)
            }
            if ri == overPlaceholder {
                throw deny(.relocation, "relocation field over one whose value is not known here (against the module's init memory in a core session, or a section not SHF_ALLOC): the kernel's bytes there are that address's (apply_relocate_add() refuses a nonzero target; not modelled)",
                           section: sectionName(t), offset: fo, address: loc)
            }
            // Little-endian field of `size` bytes: the low bytes of `val` (x86-64 host and target).
            if size == 8 {
                buf.storeBytes(of: val.littleEndian, toByteOffset: o, as: UInt64.self)
            } else {
                buf.storeBytes(of: UInt32(truncatingIfNeeded: val).littleEndian, toByteOffset: o, as: UInt32.self)
            }
            if let (c, cn) = classes {
                // Bytes leaving the ELF class (the usual case: fields are written once) are
                // tallied in a register and settled after the section, so scattered class
                // reads do not chain through the counters in memory. A field all of the ELF
                // class (one word compare) moves in one step; `c` spans the image, so the
                // field's bounds checked above hold for it too.
                precondition(c.count == buf.count)
                let allELF = size == 8 ? c.loadUnaligned(fromByteOffset: o, as: UInt64.self) == UInt64(elfClass) &* 0x0101_0101_0101_0101
                                       : c.loadUnaligned(fromByteOffset: o, as: UInt32.self) == UInt32(elfClass) &* 0x0101_0101
                if allELF {
                    fromELF += size
                    if size == 8 {
                        c.storeBytes(of: UInt64(relocClass) &* 0x0101_0101_0101_0101, toByteOffset: o, as: UInt64.self)
                    } else {
                        c.storeBytes(of: UInt32(relocClass) &* 0x0101_0101, toByteOffset: o, as: UInt32.self)
                    }
                } else {
                    for k in 0..<size {
                        let old = c[o + k]
                        if old == elfClass { fromELF += 1 } else {
                            precondition(Int(old) < cn.count)  // class values are ExplanationClass raw values
                            cn[Int(old)] -= 1
                        }
                        c[o + k] = relocClass
                    }
                }
                toReloc += size
                if walk.record { walk.fields.append((o, size, r.type, si, r.addend, loc)) }
            }
            count += 1
        }
    }

    /// A data section not copied yet: the kernel's checks in place, against the signed bytes
    /// (`src`, empty for SHT_NOBITS: zeros), which is exact while every field starts at or
    /// after the end of the previous one (none can see an earlier record's write). Returns
    /// nil when every record passed (they are written when the copy is made: `dataCopy`), or
    /// the index of the first record out of that order (the caller continues on a copy).
    func check(_ rs: ELFRelocationSection, _ t: Int, _ taddr: UInt64, _ src: UnsafeRawBufferPointer, _ sectionSize: Int,
               _ vals: UnsafeMutableBufferPointer<UInt64?>, _ walk: inout RelocationWalk) throws -> Int? {
        let rels = rs.relocations
        var prevEnd = 0, count = walk.count
        defer { walk.count = count }
        // When every symbol has its value (`resolveAllSymbols` left none to the walk), a record of
        // a type with no overflow check (R_X86_64_64, PC32, PLT32, PC64) can fail none of
        // `field`'s checks, so its symbol's value is not read: what is left of the loader's checks
        // is the parser's (symbol index, field inside the section), the order, and the signed
        // bytes being zero. Any other record takes the full path below (the same checks and
        // errors). Most data records are such (`.rela.orc_unwind_ip`'s PC32s are 37% of a
        // module's records), and the symbol-value load was the largest share of this walk.
        let fast = valuesComplete
        let symbolCount = UInt64(rels.symbolCount), targetSize = rels.targetSize
        let records = rels.rawRecords, n = rels.count
        precondition(records.count == n * 24)
        var ri = 0
        while ri < n {
            defer { ri += 1 }
            if fast {
                // The common records first, over the raw records in runs of one type: 4- and
                // 8-byte fields of those four types, in order, inside the section, on zero signed
                // bytes (every `.rela.orc_unwind_ip` record: 37% of a corpus's). A section's
                // records are mostly of one type (every `.rela.orc_unwind_ip`, `.rela.return_sites`,
                // `.rela__mcount_loc` record), and in a run the width and the bounds are constants
                // of the loop (`oneTypeRun`). The record-by-record path below gives the same answer
                // for the records a run takes; the first record no run takes (of a type none takes, or
                // failing a test) goes to it.
                let srcCount = UInt64(src.count)
                var end = UInt64(prevEnd)
                while ri < n {
                    let ty = UInt32(truncatingIfNeeded: UInt64(littleEndian: records.loadUnaligned(fromByteOffset: ri &* 24 &+ 8, as: UInt64.self)))
                    let from = ri
                    switch ty {
                    case 2, 4:  // PC32, PLT32
                        if src.isEmpty { Session.oneTypeRun(records, &ri, n, ty, 4, symbolCount, targetSize, nil, &end) }
                        else { Session.oneTypeRun(records, &ri, n, ty, 4, symbolCount, min(targetSize, srcCount), src, &end) }
                    case 1, 24:  // R_X86_64_64, PC64
                        if src.isEmpty { Session.oneTypeRun(records, &ri, n, ty, 8, symbolCount, targetSize, nil, &end) }
                        else { Session.oneTypeRun(records, &ri, n, ty, 8, symbolCount, min(targetSize, srcCount), src, &end) }
                    default: break
                    }
                    if ri == from { break }  // a record no run takes: the path below decides it
                    count += ri &- from
                }
                prevEnd = Int(end)
                if ri == n { break }
            }
            if !rels.isValid(ri) { try refuseRecords() }
            let r = rels[ri]
            // A record out of order is left to the copy, where `apply` runs the same checks on
            // it first (the same first error either way).
            if r.type.fieldSize != 0, Int(r.offset) < prevEnd { return ri }
            guard let (size, fo, loc, _) = try field(r, rs, t, taddr, vals) else { continue }
            if fo + size > sectionSize {
                count += 1
                continue
            }
            if !src.isEmpty {
                precondition(fo >= 0 && fo <= src.count - size, "relocation field outside its section")
                let nonzero = size == 8 ? src.loadUnaligned(fromByteOffset: fo, as: UInt64.self) != 0
                                        : src.loadUnaligned(fromByteOffset: fo, as: UInt32.self) != 0
                guard !nonzero else {
                    throw deny(.relocation, "relocation target is nonzero in the ELF (the kernel refuses the module)", section: sectionName(t), offset: fo, address: loc)
                }
            }
            prevEnd = fo + size
            count += 1
        }
        return nil
    }

    /// `check`'s fast loop for a run of records of one type `ty` (width `w`, 4 or 8): advances `ri`
    /// past every record that is of type `ty`, names a symbol of the table, lies inside `limit`
    /// bytes (the section's size, and the signed bytes' when `src` is given), starts at or after
    /// `end` (the previous field's end) and, when `src` is given, has zero signed bytes; stops at
    /// the first that is not (of another type: the caller's next run; failing a test: the
    /// record-by-record path). The field's bounds as one test: `fo <= size && w <= size - fo`
    /// is `size >= w && fo <= size - w`.
    @inline(__always) static func oneTypeRun(_ records: UnsafeRawBufferPointer, _ ri: inout Int, _ n: Int, _ ty: UInt32, _ w: UInt64,
                                             _ symbolCount: UInt64, _ limit: UInt64, _ src: UnsafeRawBufferPointer?, _ end: inout UInt64) {
        guard limit >= w else { return }
        let last = limit &- w
        var i = ri, e = end
        defer { ri = i; end = e }
        while i < n {
            let at = i &* 24
            let info = UInt64(littleEndian: records.loadUnaligned(fromByteOffset: at &+ 8, as: UInt64.self))
            let fo = UInt64(littleEndian: records.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            guard UInt32(truncatingIfNeeded: info) == ty, info >> 32 < symbolCount, fo <= last, fo >= e else { return }
            if let src {
                guard w == 8 ? src.loadUnaligned(fromByteOffset: Int(fo), as: UInt64.self) == 0
                             : src.loadUnaligned(fromByteOffset: Int(fo), as: UInt32.self) == 0 else { return }
            }
            e = fo &+ w
            i &+= 1
        }
    }

    /// Data section `t` as `move_module()` copies it (zeros for SHT_NOBITS), with records
    /// `0..<k` of relocation section `rela[ri]` written: records `check` passed in place (in
    /// increasing, non-overlapping order), so writing them now gives the bytes
    /// `apply_relocate_add()` leaves. `values` holds every symbol value they use.
    /// Copies of SHT_NOBITS sections are bounded in all (`ExplainLimits.maxNoBitsCopy`, counted in
    /// `noBitsCopied`): past that the module is denied here, before the zeros are made.
    func pristineCopy(_ t: Int, rela ri: Int?, upTo k: Int, values: [UInt64?]) throws -> [UInt8] {
        let s = elf.sections[t]
        if s.isNoBits {
            noBitsCopied += s.size
            guard noBitsCopied <= ExplainLimits.maxNoBitsCopy else {
                throw deny(.malformedELF, "\(s.name) is SHT_NOBITS (\(s.size) bytes, none in the file) and is read or relocated here as data: copies of such sections beyond \(ExplainLimits.maxNoBitsCopy) bytes in all are not made (working memory the request did not bring; no toolchain emits a table, a patch site or an out-of-order relocation there)",
                           section: s.name)
            }
        }
        var d = s.isNoBits ? [UInt8](repeating: 0, count: s.size) : Array(elf.contents(of: s))
        guard let ri, k > 0, let taddr = addr[t] else { return d }
        let rels = rela[ri].relocations
        precondition(rela[ri].targetSectionIndex == t && k <= rels.count)
        d.withUnsafeMutableBytes { buf in
            for i in 0..<k {
                let r = rels[i]
                guard let size = r.type.fieldSize, size > 0 else { continue }
                let fo = Int(r.offset)
                if fo + size > buf.count { continue }  // skipped by `check` too
                guard let sv = values[r.symbolIndex] else { preconditionFailure("checked record without its symbol value") }
                let loc = taddr &+ r.offset
                var val = sv &+ UInt64(bitPattern: r.addend)
                switch r.type.rawValue {
                case 2, 4, 24: val = val &- loc  // R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64
                default: break
                }
                precondition(fo >= 0 && fo <= buf.count - size, "relocation field outside its section")
                if size == 8 {
                    buf.storeBytes(of: val.littleEndian, toByteOffset: fo, as: UInt64.self)
                } else {
                    buf.storeBytes(of: UInt32(truncatingIfNeeded: val).littleEndian, toByteOffset: fo, as: UInt32.self)
                }
            }
        }
        return d
    }

    /// The claimed address of init section `i` (sysfs `sections/`, which `mod->mem[]` placed when
    /// the module was loaded), for the dead branches of init-text alternative templates only. It
    /// must be consistent with `layout_sections()` (its allocation page-aligned at
    /// `address − offset`), inside the module area and outside the claimed core text, so the
    /// branch can never name verified code.
    func claimedInitAddress(_ i: Int) throws -> UInt64 {
        let name = sectionName(i)
        guard let c = claimedAt[i], i < layout.initOffset.count, let off = layout.initOffset[i] else {
            throw deny(.initSymbol, "core text refers to \(name) (freed after init) and the claim gives no address for it")
        }
        let base = c &- UInt64(off), end = c &+ UInt64(elf.sections[i].size)
        let textEnd = claim.textBase &+ UInt64(claim.textBytes.count)
        guard base % UInt64(ModuleLayout.pageSize) == 0, facts.moduleArea.contains(base), end <= facts.moduleArea.upperBound,
              end <= claim.textBase || base >= textEnd else {
            throw deny(.initSymbol, "claimed address 0x\(String(c, radix: 16)) of \(name) is not a page-aligned init allocation in the module area outside the core text",
                       section: name, address: c)
        }
        return c
    }

    /// The byte ranges, in core text, that only init-text alternative sites use: their
    /// replacements in `.altinstr_replacement` and their `static_cpu_has()` fallback blocks in
    /// `.altinstr_aux`. `apply_alternatives()` (6.1 and 6.12 arch/x86/kernel/alternative.c, called
    /// by `module_finalize()` over the whole `.altinstructions`, init sites included) only *copies*
    /// a replacement into its site (`memcpy(insn_buff, replacement, a->replacementlen)`, then
    /// re-relocates branches to the site's address): the template is never a branch target. The
    /// fallback block is reached only through the site's original `jmp 6f` of `_static_cpu_has()`
    /// (arch/x86/include/asm/cpufeature.h: `ALTERNATIVE_TERNARY("jmp 6f", feature, "", "jmp
    /// %l[t_no]")`, block `6: testb $bit, cap_byte(%rip); jnz t_yes; jmp t_no` = 7 + 6 + 5 bytes in
    /// `.altinstr_aux`), and one of the ternary's two entries always overwrites that jump. So a
    /// branch of such a template or block to the init function's labels (in `.init.text`) is
    /// relocated by `apply_relocate_add()` like any field and stays in core text after
    /// `do_free_init()`: explained, and dead (the freed init pages lose EXEC at init-freed).
    /// `struct alt_instr`: `{s32 instr, s32 repl, …, u8 instrlen, u8 replacementlen}`, 12 bytes on
    /// 6.1 (replacementlen at +11), 14 on 6.12 (at +13).
    func initTextAlternativeTemplates() throws -> [Range<UInt64>] {
        guard let t = try table(".altinstructions") else { return [] }
        let size = loader == .linux6_12 ? 14 : 12
        var spans: [Range<UInt64>] = []
        for s in elf.sections where s.index < layout.initOffset.count && layout.initOffset[s.index] != nil {
            if let a = addr[s.index], let r = Session.span(a, UInt64(s.size)) { spans.append(r) }
        }
        let initRanges = RangeCover(spans)
        var out: [Range<UInt64>] = []
        var initSites = Set<UInt64>()
        var o = 0
        while o + size <= t.bytes.count, let instrRel = t.bytes.getInteger(at: o, as: Int32.self),
              let replRel = t.bytes.getInteger(at: o + 4, as: Int32.self), let rl = t.bytes.getInteger(at: o + size - 1, as: UInt8.self) {
            let ea = t.addr &+ UInt64(o)
            let instr = ea &+ UInt64(bitPattern: Int64(instrRel)), repl = ea &+ 4 &+ UInt64(bitPattern: Int64(replRel))
            if initRanges.contains(instr) {
                // `repl` comes from a relocated field (its addend is the file's): a template that
                // would wrap the address space is none (round 13: the Range trapped; skipping it
                // only leaves a reference outside every template, which is denied).
                if let r = Session.span(repl, UInt64(rl)) { out.append(r) }
                initSites.insert(instr)
            }
            o += size
        }
        // The fallback blocks: the rel32 of an init site's `jmp 6f` (`e9`, field at site + 1)
        // relocated against `.altinstr_aux`; the block starts at S + A + 4.
        guard !initSites.isEmpty, let aux = elf.section(named: ".altinstr_aux") else { return out }
        for rs in rela where rs.targetSectionIndex < layout.initOffset.count && layout.initOffset[rs.targetSectionIndex] != nil {
            guard let base = addr[rs.targetSectionIndex] else { continue }
            for r in rs.relocations where r.offset >= 1 && (r.type == .pc32 || r.type == .plt32)
                && Int(symtab.sectionIndex(r.symbolIndex)) == aux.index && initSites.contains(base &+ r.offset &- 1) {
                guard let s = try? symbolValue(r.symbolIndex) else { continue }
                let start = s &+ UInt64(bitPattern: r.addend) &+ 4
                if let b = Session.span(start, 18) { out.append(b) }
            }
        }
        return out
    }


    /// `lo..<lo + n`, or nil when that end would wrap past 2^64 (an address computed from file
    /// fields: a `Range` whose bounds are out of order traps).
    static func span(_ lo: UInt64, _ n: UInt64) -> Range<UInt64>? {
        let (hi, o) = lo.addingReportingOverflow(n)
        return o ? nil : lo..<hi
    }

    /// The relocation whose field covers region offset `i` (for the first-difference report).
    func relocationCovering(_ i: Int) -> String? {
        for rs in rela {
            let t = rs.targetSectionIndex
            guard let toff = imageOffset(of: t) else { continue }
            for r in rs.relocations {
                let lo = toff + Int(r.offset)
                if i >= lo && i < lo + (r.type.fieldSize ?? 0) {
                    return "\(r.type) field for symbol \(symbolLabel(r.symbolIndex))\(r.addend >= 0 ? "+" : "")\(r.addend) has a different value"
                }
            }
        }
        return nil
    }
}

