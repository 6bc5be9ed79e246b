// SPDX-License-Identifier: Apache-2.0
//
// Field-aware mutations of a module's ELF for seeded structural fuzzing (StructuralFuzzTests,
// ServedStructuralFuzzTests): section header fields, symbol fields, relocation record fields and
// words of allocated sections, set to edge values (0, all-ones, ±1..16, powers of two, a flipped
// bit), so that most mutants pass the parser and reach the stages behind it.

import ExecGateELF

public enum ELFMutator {
    /// An edge-biased value of `bytes` width near `old`.
    public static func edgeValue(_ rng: inout SeededRNG, old: UInt64, bytes: Int) -> UInt64 {
        let mask: UInt64 = bytes == 8 ? ~0 : (1 << (8 * UInt64(bytes))) - 1
        switch rng.next() % 8 {
        case 0: return 0
        case 1: return mask
        case 2: return (old &+ 1 &+ rng.next() % 16) & mask
        case 3: return (old &- 1 &- rng.next() % 16) & mask
        case 4: return (1 << (rng.next() % UInt64(8 * bytes))) & mask
        case 5: return old ^ (1 << (rng.next() % UInt64(8 * bytes))) & mask
        case 6: return (old &+ 4096) & mask
        default: return rng.next() & mask
        }
    }

    /// One field-aware mutation of `ko` (an ELF the parser accepts, else nothing is done: "none");
    /// returns what it did, for the failure message.
    public static func mutate(_ ko: inout [UInt8], _ rng: inout SeededRNG) -> String {
        guard let (sections, symtab, relas) = try? ko.withUnsafeBytes({ raw -> ([ELFSection], Range<Int>, [(Range<Int>, Int)]) in
            let e = try ELFFile(bytes: raw)
            let st = try e.symbolTableSection().fileRange
            let rs = try e.relocationSections(checkingRecords: false).map { ($0.section.fileRange, $0.targetSectionIndex) }
            return (e.sections, st, rs)
        }), sections.count > 1 else { return "none" }
        func put(_ at: Int, _ width: Int) -> String {
            var old: UInt64 = 0
            for k in 0..<width { old |= UInt64(ko[at + k]) << (8 * UInt64(k)) }
            let v = edgeValue(&rng, old: old, bytes: width)
            for k in 0..<width { ko[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            return "0x\(String(old, radix: 16)) → 0x\(String(v, radix: 16))"
        }
        var shoff = 0
        for k in 0..<8 { shoff |= Int(ko[40 + k]) << (8 * k) }
        switch rng.next() % 10 {
        case 0, 1:
            // A section header field (sh_addr is not read by the loader: skipped).
            let i = 1 + Int(rng.next() % UInt64(sections.count - 1))
            let fields: [(String, Int, Int)] = [("type", 4, 4), ("flags", 8, 8), ("offset", 24, 8), ("size", 32, 8), ("link", 40, 4),
                                                 ("info", 44, 4), ("addralign", 48, 8), ("entsize", 56, 8)]
            let (name, o, w) = fields[Int(rng.next() % UInt64(fields.count))]
            return "section \(sections[i].name) sh_\(name) " + put(shoff + 64 * i + o, w)
        case 2, 3:
            // A symbol field.
            let n = symtab.count / 24
            let i = 1 + Int(rng.next() % UInt64(max(1, n - 1)))
            let fields: [(String, Int, Int)] = [("name", 0, 4), ("info", 4, 1), ("other", 5, 1), ("shndx", 6, 2), ("value", 8, 8), ("size", 16, 8)]
            let (name, o, w) = fields[Int(rng.next() % UInt64(fields.count))]
            return "symbol \(i) st_\(name) " + put(symtab.lowerBound + 24 * i + o, w)
        case 4, 5, 6:
            // A relocation record field: offset, type, symbol, addend.
            guard !relas.isEmpty else { return "none" }
            let (range, target) = relas[Int(rng.next() % UInt64(relas.count))]
            let n = range.count / 24
            guard n > 0 else { return "none" }
            let r = range.lowerBound + 24 * Int(rng.next() % UInt64(n))
            switch rng.next() % 4 {
            case 0: return "rela of \(sections[target].name) r_offset " + put(r, 8)
            case 1: return "rela of \(sections[target].name) type " + put(r + 8, 4)
            case 2: return "rela of \(sections[target].name) symbol " + put(r + 12, 4)
            default: return "rela of \(sections[target].name) r_addend " + put(r + 16, 8)
            }
        default:
            // A word of an allocated section's contents (the tables module_finalize() and the
            // notifiers read, the ksymtab, .modinfo, text).
            let alloc = sections.filter { $0.isAlloc && !$0.isNoBits && $0.size >= 8 && $0.fileRange.count == $0.size }
            guard !alloc.isEmpty else { return "none" }
            let s = alloc[Int(rng.next() % UInt64(alloc.count))]
            let w = [1, 2, 4, 8][Int(rng.next() % 4)]
            let o = s.fileRange.lowerBound + Int(rng.next() % UInt64(s.size - w + 1))
            return "\(s.name) +0x\(String(o - s.fileRange.lowerBound, radix: 16)) " + put(o, w)
        }
    }
}
