// SPDX-License-Identifier: Apache-2.0
//
// The claim laid over the evidence, structurally: before any byte is compared, every claimed
// section must be one the signed ELF has, executable where bytes are claimed, of exactly the
// ELF's size, with no two claimed ranges overlapping and no range wrapping the address space.
// A claim for fewer executable sections than the ELF has is not refused: pages that are not
// claimed are not made executable.

import ExecGateELF
import ExecGateWire

enum ClaimStructure {
    struct Failure { var reason: VerdictReason; var message: String }

    static func check(_ claims: [SectionClaim], against elf: ELFFile) -> Failure? {
        var seen = Set<String>()
        var ranges: [(start: UInt64, end: UInt64, name: String)] = []
        for c in claims {
            guard seen.insert(c.name).inserted else {
                return Failure(reason: .claimDuplicateSection, message: "section '\(c.name)' is claimed twice")
            }
            // By bytes (ELFFile.section(named:), find_sec()'s strcmp), never String ==, which takes
            // a canonically equivalent spelling ('.note.Linu' + U+212A for '.note.LinuK').
            // (A look-up is a few probes, or one hash of the name for a file whose names were made
            // to share a key: never a scan of the sections, up to 1,024 claims × 65,279 sections.)
            guard let s = elf.section(named: c.name) else {
                return Failure(reason: .claimUnknownSection, message: "claimed section '\(c.name)' does not exist in the signed module")
            }
            guard let bytes = c.bytes else {
                // A layout-only entry: it must at least be a section the loader places.
                if !s.isAlloc && !Self.placedWithoutAllocFlag.contains(s.name) {
                    return Failure(reason: .claimUnknownSection, message: "section '\(c.name)' is not allocated by the loader")
                }
                continue
            }
            guard s.isAlloc && s.isExec else {
                return Failure(reason: .claimNotExecutable, message: "claimed section '\(c.name)' is not an executable section of the signed module")
            }
            guard bytes.readableBytes == s.size else {
                return Failure(reason: .claimSizeMismatch, message: "section '\(c.name)': claimed \(bytes.readableBytes) bytes, the signed module has \(s.size)")
            }
            let (end, overflow) = c.address.addingReportingOverflow(UInt64(bytes.readableBytes))
            guard !overflow else {
                return Failure(reason: .claimSizeMismatch, message: "section '\(c.name)' at 0x\(String(c.address, radix: 16)) wraps the address space")
            }
            ranges.append((c.address, end, c.name))
        }
        ranges.sort { $0.start < $1.start }
        for (a, b) in zip(ranges, ranges.dropFirst()) where b.start < a.end {
            return Failure(reason: .claimSizeMismatch, message: "claimed sections '\(a.name)' and '\(b.name)' overlap")
        }
        return nil
    }

    /// Sections whose SHF_ALLOC the 6.1 loader changes (kernel/module/main.c): it strips it from
    /// `.modinfo`, `__versions` and `.data..percpu` (per-cpu data lives in the per-cpu area) and
    /// sets it on `.symtab`/`.strtab` (layout_symtab keeps them for kallsyms). Their addresses may
    /// appear in a layout claim, as in /sys/module/<m>/sections/.
    static let placedWithoutAllocFlag: Set<String> = [".modinfo", "__versions", ".data..percpu", ".symtab", ".strtab"]
}
