// SPDX-License-Identifier: Apache-2.0
//
// Stage 1: relocations. `simplify_symbols()` gives every symbol its final value (exports of the
// core kernel and of verified modules only, as `resolve_symbol()` does; the module's own sections
// at their laid-out addresses; per-cpu symbols at the claimed per-cpu base), then
// `apply_relocations()` writes every field of the module's allocated core sections.

import ExecGateELF

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
        let shndx = t.sectionIndex(i)
        var v: UInt64
        switch shndx {
        case SectionIndex.common:
            throw deny(.relocation, "symbol \(t.name(i)) is SHN_COMMON (the kernel refuses: compile with -fno-common)")
        case SectionIndex.abs:
            v = t.value(i)
        case SectionIndex.livepatch:
            throw deny(.relocation, "livepatch symbol \(t.name(i)) is not supported")
        case SectionIndex.undef:
            if i == 0 { v = 0; break }
            let name = t.name(i)
            if let a = resolver.lookup(name) {
                // An export inside the core's init memory is freed after boot (and never a real
                // export: modpost refuses EXPORT_SYMBOL of __init code): nothing may point there.
                guard !facts.isCoreInit(a) else {
                    throw deny(.initSymbol, "symbol \(name) resolves to 0x\(String(a, radix: 16)), inside the core kernel's freed init memory")
                }
                v = a
            } else if t.binding(i) == 2 {
                v = 0  // unresolved weak: the kernel leaves 0.
            } else {
                throw deny(.relocation, "unknown symbol \(name): not exported by the core kernel or an allowed module")
            }
        default:
            let si = Int(shndx)
            guard si < elf.sections.count, shndx < SectionIndex.loReserve else {
                throw deny(.relocation, "symbol \(t.name(i)) has unsupported section index \(shndx)")
            }
            if si == layout.percpuIndex {
                guard let p = claim.percpuBase else {
                    throw deny(.relocation, "symbol \(t.name(i)) is per-cpu but the claim gives no per-cpu base")
                }
                v = p &+ t.value(i)
            } else if let a = addr[si] {
                v = a &+ t.value(i)
            } else {
                // Non-ALLOC section: the kernel would use its temporary copy — unexplainable by design.
                v = 0xdead_0000_0000_0000 | UInt64(si) << 24
            }
        }
        return v
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
        // Work on local arrays (moved out, moved back on every exit): no exclusivity checks on the
        // class's stored properties in this loop, and each field is read and written as one
        // 4- or 8-byte little-endian word through the borrowed buffer (bounds checked per field).
        var img: [UInt8] = [], cl: [UInt8] = [], vals: [UInt64?] = [], counts: [Int] = []
        var fields = relocFields, count = relocCount
        swap(&img, &image); swap(&cl, &cls); swap(&vals, &symValue); swap(&counts, &classCounts); relocFields = []
        defer { swap(&img, &image); swap(&cl, &cls); swap(&vals, &symValue); swap(&counts, &classCounts); relocFields = fields; relocCount = count }
        let relocClass = UInt8(ExplanationClass.relocation.rawValue), elfClass = UInt8(ExplanationClass.elf.rawValue)
        precondition(Int(relocClass) < counts.count && Int(elfClass) < counts.count)
        let symtab = self.symtab
        let initOffset = layout.initOffset, isCore = region == .core
        // Exec-target records (for the mutation tester): reserved once, not grown per field.
        fields.reserveCapacity(fields.count + rela.reduce(0) { imageOffset(of: $1.targetSectionIndex) != nil ? $0 + $1.relocations.count : $0 })
        /// One relocation section into `buf` (the image from `toff`, or a data copy from 0);
        /// `classes` is the image's class array when the target is the explained region.
        func apply(_ rs: ELFRelocationSection, _ t: Int, _ taddr: UInt64, _ buf: UnsafeMutableRawBufferPointer, _ toff: Int,
                   _ classes: UnsafeMutableRawBufferPointer?, _ counts: UnsafeMutableBufferPointer<Int>?) throws {
            let isExec = classes != nil
            var fromELF = 0, toReloc = 0
            defer {
                if let cn = counts {
                    cn[Int(elfClass)] -= fromELF
                    cn[Int(relocClass)] += toReloc
                }
            }
            for r in rs.relocations {
                guard let size = r.type.fieldSize, r.type.isKnownToLoader else {
                    throw deny(.relocation, "unknown relocation type \(r.type) in \(rs.section.name) (the kernel refuses the module)",
                               section: sectionName(t), offset: Int(r.offset), address: taddr &+ r.offset)
                }
                if size == 0 { continue }
                let fo = Int(r.offset)  // validated against the section size by the parser.
                let loc = taddr &+ r.offset
                let si = r.symbolIndex
                let sv: UInt64
                if let v = vals[si] { sv = v } else { sv = try computeSymbolValue(si); vals[si] = sv }
                var val = sv &+ UInt64(bitPattern: r.addend)
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
                case 2, 4, 24:  // R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64
                    val = val &- loc
                default: break
                }
                if isExec {
                    // Core text pointing into the module's own init sections would point into
                    // memory freed after init (`do_free_init()`): not explainable.
                    let ssi = Int(symtab.sectionIndex(si))
                    if isCore, ssi > 0, ssi < initOffset.count, initOffset[ssi] != nil {
                        throw deny(.initSymbol, "\(r.type) in \(sectionName(t)) refers to \(symtab.name(si)) in \(sectionName(ssi)), init memory freed after init",
                                   section: sectionName(t), offset: fo, address: loc)
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
                // Little-endian field of `size` bytes: the low bytes of `val` (x86-64 host and target).
                if size == 8 {
                    buf.storeBytes(of: val.littleEndian, toByteOffset: o, as: UInt64.self)
                } else {
                    buf.storeBytes(of: UInt32(truncatingIfNeeded: val).littleEndian, toByteOffset: o, as: UInt32.self)
                }
                if let c = classes, let cn = counts {
                    // Bytes leaving the ELF class (the usual case: fields are written once) are
                    // tallied in a register and settled after the section, so scattered class
                    // reads do not chain through the counters in memory.
                    for k in 0..<size {
                        let old = c[o + k]
                        if old == elfClass { fromELF += 1 } else {
                            precondition(Int(old) < cn.count)  // class values are ExplanationClass raw values
                            cn[Int(old)] -= 1
                        }
                        c[o + k] = relocClass
                    }
                    toReloc += size
                    fields.append((o, size, r.type, si, r.addend, loc))
                }
                count += 1
            }
        }
        for rs in rela {
            let t = rs.targetSectionIndex
            // Relocations of non-ALLOC sections are skipped by the kernel. The explained region's
            // exec sections are relocated in the image, the session's other allocated sections in
            // their data copies; init sections in a core session have neither (freed, never used).
            guard layout.flags[t].contains(.alloc), let taddr = addr[t] else { continue }
            if let toff = imageOffset(of: t) {
                try img.withUnsafeMutableBytes { ib in
                    try cl.withUnsafeMutableBytes { cb in try counts.withUnsafeMutableBufferPointer { try apply(rs, t, taddr, ib, toff, cb, $0) } }
                }
            } else if var d = data[t] {
                data[t] = nil  // keep `d` uniquely referenced while it is patched
                defer { data[t] = d }
                try d.withUnsafeMutableBytes { try apply(rs, t, taddr, $0, 0, nil, nil) }
            }
        }
    }

    /// The relocation whose field covers region offset `i` (for the first-difference report).
    func relocationCovering(_ i: Int) -> String? {
        for rs in rela {
            let t = rs.targetSectionIndex
            guard let toff = imageOffset(of: t) else { continue }
            for r in rs.relocations {
                let lo = toff + Int(r.offset)
                if i >= lo && i < lo + (r.type.fieldSize ?? 0) {
                    return "\(r.type) field for symbol \(symtab.name(r.symbolIndex))\(r.addend >= 0 ? "+" : "")\(r.addend) has a different value"
                }
            }
        }
        return nil
    }
}
