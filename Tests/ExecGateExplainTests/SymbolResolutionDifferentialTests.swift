// SPDX-License-Identifier: Apache-2.0
//
// `resolveAllSymbols()` gives the symbols of sections laid out here their values from a table
// made per section (the section's address plus st_value) and sends every other symbol through
// `resolveSymbol` (Relocations.swift). The table must answer exactly as `resolveSymbol` would, for
// every symbol a hostile signed ELF can have: checked here symbol by symbol — the value, the
// "defined in a core session's init section" flag and the first refusal — against
// `resolveSymbol` itself, on the fixture boot's real signed Debian 6.1 modules with their symbols
// moved (seeded) to every kind of section index: SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_LIVEPATCH,
// a section not allocated, an init section, text, data, and the per-cpu section (a data section
// renamed `.data..percpu`, with a claimed per-cpu base).

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class SymbolResolutionDifferentialTests: XCTestCase {
    /// `ko` with symbol `i`'s st_shndx set to `shndx`.
    static func setSectionIndex(_ ko: inout [UInt8], symtab: ELFSection, _ i: Int, _ shndx: UInt16) {
        let at = symtab.fileRange.lowerBound + 24 * i + 6
        ko[at] = UInt8(shndx & 0xff)
        ko[at + 1] = UInt8(shndx >> 8)
    }

    /// `ko` with the name of section `s` overwritten by `name` (no longer than the old name).
    static func rename(_ ko: inout [UInt8], _ elf: ELFFile, _ s: ELFSection, to name: String) {
        let shoff = Int(ko.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 40, as: UInt64.self) })
        let nameOffset = Int(ko.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: shoff + 64 * s.index, as: UInt32.self) })
        let strtab = elf.sections[elf.shstrndx].fileRange.lowerBound
        precondition(name.utf8.count <= s.name.utf8.count)
        for (k, b) in name.utf8.enumerated() { ko[strtab + nameOffset + k] = b }
        ko[strtab + nameOffset + name.utf8.count] = 0
    }

    /// What `resolveAllSymbols()` must leave, from `resolveSymbol` per symbol (the general path).
    static func expected(_ s: Session) -> (values: [UInt64?], inInit: [Bool], refused: Int?) {
        var values = [UInt64?](repeating: nil, count: s.symtab.count)
        var inInit = [Bool](repeating: false, count: s.symtab.count)
        var refused: Int?
        for i in s.symtab.indices {
            switch s.resolveSymbol(i) {
            case .value(let v): values[i] = v
            case .unknown:
                if refused == nil && s.symtab.name(i) != "_GLOBAL_OFFSET_TABLE_" { refused = i }
            case .common:
                if refused == nil && !s.symtab.name(i).hasPrefix("__gnu_lto") { refused = i }
            default: break
            }
            let si = Int(s.symtab.sectionIndex(i))
            if s.region == .core, si > 0, si < s.layout.initOffset.count, s.layout.initOffset[si] != nil { inInit[i] = true }
        }
        return (values, inInit, refused)
    }

    func testTableAnswersAsResolveSymbolForEveryKindOfSectionIndex() throws {
        let f = try FixtureReplay()
        var rng = SeededRNG(seed: 0x5eed_5b_1d)
        var sessions = 0, percpuSessions = 0, compared = 0, fastPath = 0, initFlagged = 0, refusals = 0
        for name in f.boot.availableModules.sorted() {
            let e = try XCTUnwrap(f.modules[name])
            let original = e.module.ko
            let (symtab, sections, renameable): (ELFSection, [ELFSection], ELFSection?) = try original.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                // A data section whose name can hold ".data..percpu" (13 bytes).
                let r = elf.sections.first { $0.isAlloc && !$0.isExec && $0.size > 0 && $0.name.utf8.count >= 13 && !$0.name.hasPrefix(".init") }
                return (try elf.symbolTableSection(), elf.sections, r)
            }
            let count = symtab.size / 24
            XCTAssertGreaterThan(count, 10, name)
            // The kinds of index a symbol is moved to.
            let notAllocated = sections.filter { !$0.isAlloc && $0.index > 0 }.map { UInt16($0.index) }
            let initSections = sections.filter { $0.isAlloc && $0.name.hasPrefix(".init") }.map { UInt16($0.index) }
            let laidOut = sections.filter { $0.isAlloc }.map { UInt16($0.index) }
            var kinds: [UInt16] = [SectionIndex.undef, SectionIndex.abs, SectionIndex.common, SectionIndex.livepatch]
            kinds += notAllocated.prefix(3) + initSections + laidOut.prefix(6)
            for round in 0..<24 {
                var ko = original
                // Round 0: as signed; then up to 12 symbols moved (not symbol 0 in most rounds).
                let moves = round == 0 ? 0 : 1 + rng.below(12)
                for _ in 0..<moves {
                    let i = round % 6 == 5 ? 0 : 1 + rng.below(count - 1)
                    Self.setSectionIndex(&ko, symtab: symtab, i, kinds[rng.below(kinds.count)])
                }
                // Every other round: a data section renamed `.data..percpu` (its symbols then per-cpu).
                var claim = e.module.claim
                claim.sections = []  // (the layout moves when a section turns per-cpu: addresses unchecked)
                var percpu = false
                if round % 2 == 1, let r = renameable, let range = f.boot.facts.modulePercpuRange {
                    try ko.withUnsafeBytes { raw in Self.rename(&ko, try ELFFile(bytes: raw), r, to: ".data..percpu") }
                    claim.percpuBase = (range.lowerBound + 0x1000) & ~UInt64(0xfff)
                    percpu = true
                }
                try ko.withUnsafeBytes { raw in
                    let elf = try ELFFile(bytes: raw)
                    guard let s = try? Session(elf: elf, claim: claim, facts: f.boot.facts, resolver: e.before) else { return }
                    sessions += 1
                    if percpu && s.layout.percpuIndex != nil { percpuSessions += 1 }
                    let want = Self.expected(s)
                    let refused = s.resolveAllSymbols()
                    XCTAssertEqual(refused, want.refused, "\(name) round \(round): first refusal")
                    if refused != nil { refusals += 1 }
                    for i in s.symtab.indices {
                        compared += 1
                        let si = Int(s.symtab.sectionIndex(i))
                        if si > 0, si < elf.sections.count, si != s.layout.percpuIndex, s.addr[si] != nil { fastPath += 1 }
                        XCTAssertEqual(s.symValue[i], want.values[i], "\(name) round \(round): symbol \(i) (\(s.symtab.name(i)), index \(si))")
                        let flagged = i < s.symbolInInit.count && s.symbolInInit[i]
                        XCTAssertEqual(flagged, want.inInit[i], "\(name) round \(round): symbol \(i) init flag")
                        if flagged { initFlagged += 1 }
                    }
                }
            }
        }
        // Each kind was met (no silent skip of a class).
        XCTAssertGreaterThan(sessions, 100)
        XCTAssertGreaterThan(percpuSessions, 10, "per-cpu sections")
        XCTAssertGreaterThan(fastPath, 10_000)
        XCTAssertGreaterThan(initFlagged, 100)
        XCTAssertGreaterThan(refusals, 10)
        XCTAssertGreaterThan(compared, fastPath)
    }
}
