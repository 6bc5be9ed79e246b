// SPDX-License-Identifier: Apache-2.0
//
// The explainer on real end states (the committed fixture: 9 modules of a real Debian 6.1 boot,
// see Fixtures/README.md): every byte explained, every hostile variant denied.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import Foundation
import XCTest

final class ExplainTests: XCTestCase {
    static func bootDir() throws -> String {
        let root = try XCTUnwrap(Bundle.module.resourcePath)
        return root + "/Fixtures/corpus/nokaslr-a"
    }

    /// Replays the fixture boot; returns each module with the resolver state it was explained against.
    func replay() throws -> (CaptureBoot, [(CapturedModule, SymbolResolver, ExplainResult)]) {
        let boot = try CaptureBoot.load(try Self.bootDir())
        var r = CaptureReplay(boot: boot)
        var out: [(CapturedModule, SymbolResolver, ExplainResult)] = []
        for name in boot.availableModules {
            let m = try boot.module(name)
            let before = r.resolver
            let o = r.step(m)
            out.append((m, before, o.result))
        }
        return (boot, out)
    }

    func explain(_ boot: CaptureBoot, _ m: CapturedModule, _ r: SymbolResolver, ko: [UInt8]? = nil, text: [UInt8]? = nil, facts: GuestFacts? = nil) -> ExplainResult {
        var c = m.claim
        if let t = text { c.text = t }
        return (ko ?? m.ko).withUnsafeBytes { raw in
            guard let elf = try? ELFFile(bytes: raw) else {
                return ExplainResult(verdict: .denied(Denial(module: m.name, section: "(elf)", offset: 0, address: 0, expected: [], found: [], rule: .malformedELF, reason: "parse")), exports: nil)
            }
            return Explainer(facts: facts ?? boot.facts).explain(elf: elf, claim: c, resolver: r)
        }
    }

    func testFixtureModulesAreFullyExplained() throws {
        let (_, mods) = try replay()
        XCTAssertEqual(mods.count, 9)
        for (m, _, res) in mods {
            guard case .allowed(let st) = res.verdict else { return XCTFail("\(m.name): \(res.verdict)") }
            XCTAssertEqual(st.executableBytes, m.claim.text.count)
            XCTAssertEqual(st.bytesByClass.values.reduce(0, +), m.claim.text.count)
        }
        // Cross-module exports: 8021q imports garp/mrp symbols, test_static_keys a key of its base.
        let names = mods.map { $0.0.name }
        XCTAssertLessThan(names.firstIndex(of: "garp")!, names.firstIndex(of: "8021q")!)
    }

    func testEveryMutationIsDenied() throws {
        let (boot, mods) = try replay()
        var tried: [String: Int] = [:]
        for (i, (m, r, _)) in mods.enumerated() {
            let rep: MutationReport = m.ko.withUnsafeBytes { raw in
                Explainer(facts: boot.facts).mutate(elf: try! ELFFile(bytes: raw), claim: m.claim, resolver: r, perClass: 8, seed: UInt64(i + 1),
                                                    probeTargets: boot.probeTargets)  // parsed fine above
            }
            for c in rep.classes {
                tried[c.name, default: 0] += c.tried
                XCTAssertEqual(c.falseAccepts, [], "\(m.name) \(c.name)")
            }
        }
        let total = tried.values.reduce(0, +)
        XCTAssertGreaterThan(total, 300, "\(tried)")
        for cls in ["byte-flip", "reloc-redirect", "jump-label", "return-thunk", "static-call", "static-call-retarget", "static-call-init",
                    "static-call-named", "padding"] {
            XCTAssertGreaterThan(tried[cls] ?? 0, 0, cls)
        }
    }

    /// `--mutate` with one seed tries the same mutations in every process: the core function
    /// entries its static-call classes draw from are a set, whose order is its hash seed's (a
    /// new one each process) and its storage's; the samples are taken from the sorted entries.
    /// Two copies of the facts whose sets hold the same entries in other storage (another
    /// capacity: another order) give the same denials, byte for byte (`denialDigest`).
    func testMutationsDoNotDependOnTheOrderOfTheFactsSets() throws {
        let (boot, mods) = try replay()
        // The fixture's core has a few hundred entries: 6,000 more, 16 bytes apart in the core's
        // text below its lowest (targets no key trusts: each retarget to one is denied), so the
        // sample is a choice among them.
        let core = boot.facts.functionEntries
        let low = try XCTUnwrap(core.linkTime.min())
        let entries = core.linkTime.union((1...6_000).map { low &- 16 &* UInt64($0) })
        var narrow = Set<UInt64>(), wide = Set<UInt64>(minimumCapacity: 8 * entries.count)
        for a in entries.sorted() { narrow.insert(a) }
        for a in entries.sorted(by: >) { wide.insert(a) }
        XCTAssertNotEqual(Array(wide.prefix(64)), Array(narrow.prefix(64)), "the two sets iterate in other orders")
        var one = boot.facts, other = boot.facts
        one.functionEntries = SlidAddressSet(linkTime: narrow, slide: core.slide)
        other.functionEntries = SlidAddressSet(linkTime: wide, slide: core.slide)
        var compared = 0
        for (m, r, _) in mods {
            let reports = [one, other].map { facts in
                m.ko.withUnsafeBytes { raw in
                    Explainer(facts: facts).mutate(elf: try! ELFFile(bytes: raw), claim: m.claim, resolver: r, perClass: 12, seed: 7,
                                                   probeTargets: boot.probeTargets)
                }
            }
            for (a, b) in zip(reports[0].classes, reports[1].classes) {
                XCTAssertEqual(a.name, b.name)
                XCTAssertEqual(a.tried, b.tried, "\(m.name) \(a.name)")
                XCTAssertEqual(a.denialDigest, b.denialDigest, "\(m.name) \(a.name)")
                if a.name.hasPrefix("static-call") && a.tried > 0 { compared += 1 }
            }
        }
        XCTAssertGreaterThanOrEqual(compared, 4, "the static-call classes ran")
    }

    func testFirstUnexplainedByteIsReported() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "8021q" }!
        var t = m.claim.text
        t[0x123] ^= 0x40
        t[0x200] ^= 0x01
        guard case .denied(let d) = explain(boot, m, r, text: t).verdict else { return XCTFail("flip allowed") }
        XCTAssertEqual(d.address, m.claim.textBase + 0x123)
        XCTAssertEqual(d.section, ".text")
        XCTAssertEqual(d.offset, 0x123)
        XCTAssertEqual(d.found.first, t[0x123])
        XCTAssertEqual(d.expected.first, m.claim.text[0x123])
    }

    /// A changed byte in a field whose record names a section symbol (nameless, STT_SECTION: most
    /// local references) names that section, as `readelf -r` does ("field for symbol
    /// .rodata.str1.1+…"); it read "field for symbol +4" (a doc-driven review, 2026-12-04).
    func testAFieldAgainstASectionSymbolNamesTheSection() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "8021q" }!
        let textOffset = Int(try XCTUnwrap(m.claim.sectionAddresses[".text"]) - m.claim.textBase)
        let (fieldOffset, section): (Int, String) = try m.ko.withUnsafeBytes { raw in
            let f = try ELFFile(bytes: raw)
            let symtab = try f.symbolTable()
            let rs = try XCTUnwrap(try f.relocationSections().first { f.sections[$0.targetSectionIndex].name == ".text" })
            let rec = try XCTUnwrap(rs.relocations.first { r in
                r.type == .pc32 && symtab.info(r.symbolIndex) & 0xf == 3 && symtab.name(r.symbolIndex).isEmpty
            }, "a .text record against a section symbol")
            return (Int(rec.offset), f.sections[Int(symtab.sectionIndex(rec.symbolIndex))].name)
        }
        XCTAssertFalse(section.isEmpty)
        var t = m.claim.text
        t[textOffset + fieldOffset] ^= 0x01
        guard case .denied(let d) = explain(boot, m, r, text: t).verdict else { return XCTFail("flip allowed") }
        XCTAssertEqual(d.offset, fieldOffset)
        XCTAssertTrue(d.reason.contains("field for symbol \(section)+") || d.reason.contains("field for symbol \(section)-"), d.reason)
    }

    func testPaddingMustBeZero() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "stp" }!
        var t = m.claim.text
        t[t.count - 1] = 0xcc  // the page tail after the last section
        guard case .denied(let d) = explain(boot, m, r, text: t).verdict else { return XCTFail("allowed") }
        XCTAssertEqual(d.section, "(padding)")
    }

    func testUnknownRelocationTypeIsDenied() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "llc" }!
        var ko = m.ko
        let off: Int = try ko.withUnsafeBytes { raw in
            let f = try ELFFile(bytes: raw)
            let rs = try f.relocationSections().first { f.sections[$0.targetSectionIndex].name == ".text" }!
            return rs.section.fileRange.lowerBound + 8  // r_info of the first record
        }
        ko[off] = 9  // R_X86_64_GOTPCREL
        guard case .denied(let d) = explain(boot, m, r, ko: ko).verdict else { return XCTFail("allowed") }
        XCTAssertEqual(d.rule, .relocation)
        XCTAssertTrue(d.reason.contains("unknown relocation type"), d.reason)
    }

    func testUnresolvableSymbolIsDenied() throws {
        let (boot, mods) = try replay()
        let (m, _, _) = mods.first { $0.0.name == "8021q" }!
        // Without garp/mrp's exports (never allowed), 8021q cannot be explained.
        guard case .denied(let d) = explain(boot, m, SymbolResolver(coreExports: boot.coreExports)).verdict else { return XCTFail("allowed") }
        XCTAssertTrue(d.reason.contains("unknown symbol"), d.reason)
    }

    func testLayoutClaimMismatchIsDenied() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "mrp" }!
        var c = m.claim
        c.sectionAddresses[".rodata"] = (c.sectionAddresses[".rodata"] ?? 0) + 0x1000
        let res = m.ko.withUnsafeBytes { Explainer(facts: boot.facts).explain(elf: try! ELFFile(bytes: $0), claim: c, resolver: r) }  // parses: allowed above
        guard case .denied(let d) = res.verdict else { return XCTFail("allowed") }
        XCTAssertEqual(d.rule, .layout)
    }

    func testCoreBaseMustBeAPageInTheModuleArea() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "llc" }!
        for bad: UInt64 in [m.claim.textBase + 16, 0xffff_8880_0000_0000, 0xffff_ffff_fff0_0000] {
            var c = m.claim
            c.textBase = bad
            c.sectionAddresses = [:]
            let res = m.ko.withUnsafeBytes { Explainer(facts: boot.facts).explain(elf: try! ELFFile(bytes: $0), claim: c, resolver: r) }  // real module
            guard case .denied(let d) = res.verdict else { return XCTFail("allowed at 0x\(String(bad, radix: 16))") }
            XCTAssertEqual(d.rule, .layout)
        }
    }

    func testAlternativeNeedsTheFeature() throws {
        // 8021q's alternatives are applied on this CPU; a guest without those features must not
        // accept the same bytes.
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "8021q" }!
        var facts = boot.facts
        facts.capabilities = facts.capabilities.map { _ in 0 }
        XCTAssertFalse(explain(boot, m, r, facts: facts).verdict.isAllowed)
    }

    func testJumpLabelKeyMayFlipAsAWhole() throws {
        let (boot, mods) = try replay()
        let (m, r, _) = mods.first { $0.0.name == "test_static_keys" }!
        let s = m.ko.withUnsafeBytes { raw -> Session in
            let s = try! Session(elf: try! ELFFile(bytes: raw), claim: m.claim, facts: boot.facts, resolver: r)  // parsed and allowed above
            try? s.run()
            return s
        }
        XCTAssertFalse(s.jumpSites.isEmpty)
        // Group the sites by key; flip every site of one key: still legal.
        let v = s.variable.filter { $0.cls == .jumpLabel }
        let groups = Dictionary(grouping: v, by: { $0.group! })
        let (key, sites) = try XCTUnwrap(groups.first { $0.value.count >= 2 } ?? groups.first)
        var t = m.claim.text
        for site in sites {
            let cur = Array(t[site.offset..<site.offset + site.length])
            let st = try XCTUnwrap(site.check(cur))
            let other = site.encode(st ^ 1)
            for (k, b) in other.enumerated() { t[site.offset + k] = b }
        }
        XCTAssertTrue(explain(boot, m, r, text: t).verdict.isAllowed, "flipping key 0x\(String(key, radix: 16)) as a whole")
        if sites.count >= 2 {
            // Flipping only one site of that key is inconsistent: denied.
            var t1 = m.claim.text
            let site = sites[0]
            let st = try XCTUnwrap(site.check(Array(t1[site.offset..<site.offset + site.length])))
            for (k, b) in site.encode(st ^ 1).enumerated() { t1[site.offset + k] = b }
            XCTAssertFalse(explain(boot, m, r, text: t1).verdict.isAllowed)
        }
    }

    func testInstructionLengths() {
        let cases: [([UInt8], Int)] = [
            ([0x90], 1), ([0x66, 0x90], 2), ([0x0f, 0x1f, 0x44, 0x00, 0x00], 5), ([0xe8, 0, 0, 0, 0], 5),
            ([0xe9, 1, 2, 3, 4], 5), ([0xeb, 0x10], 2), ([0x0f, 0x85, 0, 0, 0, 0], 6), ([0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8], 10),
            ([0x48, 0x8b, 0x05, 0, 0, 0, 0], 7), ([0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0], 9), ([0xf0, 0x0f, 0xb1, 0x17], 4),
            ([0x0f, 0xae, 0xe8], 3), ([0xc5, 0xf8, 0x77], 3), ([0xc4, 0xe3, 0x79, 0x0f, 0xc1, 0x08], 6), ([0xc3], 1),
            ([0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], 6), ([0x0f, 0x01, 0xca], 3), ([0xf7, 0xc7, 1, 0, 0, 0], 6), ([0xf6, 0x47, 0x10, 1], 4),
        ]
        for (b, n) in cases {
            let d = b.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) }
            XCTAssertEqual(d?.length, n, "\(b)")
        }
        XCTAssertNil([0x06].withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) })  // invalid in 64-bit mode
        XCTAssertNil([0xe8, 0].withUnsafeBufferPointer { InstructionDecoder.decode($0, at: 0) })  // truncated
        // The branch forms the decoder answers first (c3, e8/e9 rel32, eb rel8): opcode and signed
        // displacement too, truncation at the buffer's end, and prefixed forms (the full decode).
        func decode(_ b: [UInt8], at o: Int = 0) -> DecodedInstruction? { b.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: o) } }
        XCTAssertEqual(decode([0xe8, 0xfb, 0xff, 0xff, 0xff]), DecodedInstruction(length: 5, opcode0: 0xe8, opcode1: 0, immediate: -5))
        XCTAssertEqual(decode([0x90, 0xe9, 0x00, 0x01, 0x00, 0x80], at: 1), DecodedInstruction(length: 5, opcode0: 0xe9, opcode1: 0, immediate: -0x7fff_ff00))
        XCTAssertEqual(decode([0xeb, 0xfe]), DecodedInstruction(length: 2, opcode0: 0xeb, opcode1: 0, immediate: -2))
        XCTAssertEqual(decode([0xc3, 0xcc]), DecodedInstruction(length: 1, opcode0: 0xc3, opcode1: 0, immediate: 0))
        XCTAssertNil(decode([0x90, 0xe8, 1, 2, 3], at: 1))  // 4 bytes left for a 5-byte call
        XCTAssertNil(decode([0x90, 0xe9, 1, 2, 3], at: 1))
        XCTAssertNil(decode([0x90, 0xeb], at: 1))
        // `66 e9`: still a rel32 (Jz f64: insn_get_modrm() forces the operand size in 64-bit mode),
        // so four bytes are a truncated jump, six a whole one.
        XCTAssertNil(decode([0x66, 0xe9, 0x10, 0x00]))
        XCTAssertEqual(decode([0x66, 0xe9, 0x10, 0x00, 0x00, 0x00]), DecodedInstruction(length: 6, opcode0: 0xe9, opcode1: 0, immediate: 0x10))
        XCTAssertEqual(decode([0xf3, 0xc3])?.length, 2)  // rep ret
    }
}

final class RuntimePatchTests: XCTestCase {
    func testRuntimePatchesOnlyAtKnownSitesWithLegalEncodings() throws {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        var r = CaptureReplay(boot: boot)
        var table: RuntimeSiteTable?
        for name in boot.availableModules {
            let m = try boot.module(name)
            let before = r.resolver
            _ = r.step(m)
            if name == "test_static_keys" {
                table = m.ko.withUnsafeBytes { Explainer(facts: boot.facts).runtimeSites(elf: try! ELFFile(bytes: $0), claim: m.claim, resolver: before) }  // parsed in step()
                let t = try XCTUnwrap(table)
                XCTAssertGreaterThan(t.count, 0)
                let a = t.addresses[0]
                let off = Int(a - m.claim.textBase)
                let cur = Array(m.claim.text[off..<off + 2])
                let len = cur == [0x66, 0x90] || cur[0] == 0xeb ? 2 : 5
                let now = Array(m.claim.text[off..<off + len])
                guard case .allowed = t.check(address: a, bytes: now) else { return XCTFail("current state refused") }
                let nop = len == 2 ? [UInt8]([0x66, 0x90]) : [0x0f, 0x1f, 0x44, 0x00, 0x00]
                guard case .allowed = t.check(address: a, bytes: nop) else { return XCTFail("NOP refused") }
                XCTAssertEqual(t.check(address: a &+ 1, bytes: nop), .denied(reason: "0x\(String(a &+ 1, radix: 16)) is not the start of a run-time patch site of test_static_keys"))
                guard case .denied = t.check(address: a, bytes: len == 2 ? [0xeb, 0x7f] : [0xe9, 1, 2, 3, 4]) else { return XCTFail("foreign jump accepted") }
                guard case .denied = t.check(address: a, bytes: [0x90]) else { return XCTFail("short patch accepted") }
            }
        }
        XCTAssertNotNil(table)
    }
}

final class LayoutPlanTests: XCTestCase {
    /// layout_sections() re-run on the signed ELF reproduces every claimed (sysfs) core address.
    func testLayoutPlanReproducesClaimedAddresses() throws {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        for name in boot.availableModules {
            let m = try boot.module(name)
            let plan = try XCTUnwrap(m.ko.withUnsafeBytes { ModuleLayoutPlan.compute(try! ELFFile(bytes: $0)) })  // real signed module
            XCTAssertEqual(plan.textSize, m.claim.text.count, name)
            var checked = 0
            for p in plan.placements where !p.isInit {
                if let a = m.claim.sectionAddresses[p.name] {
                    XCTAssertEqual(a, m.claim.textBase + UInt64(p.offset), "\(name) \(p.name)")
                    checked += 1
                }
            }
            XCTAssertGreaterThan(checked, 3, name)
        }
    }
}

final class SMPLockTests: XCTestCase {
    /// With more possible CPUs the kernel may re-lock every tracked module (3e → f0) when a CPU
    /// comes online: all sites in one state are legal, a mix is not; with one possible CPU only 3e.
    func testLockPrefixesSwitchTogether() throws {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        var r = CaptureReplay(boot: boot)
        for name in boot.availableModules {
            let m = try boot.module(name)
            let before = r.resolver
            _ = r.step(m)
            guard name == "ip6_udp_tunnel" else { continue }
            var facts = boot.facts
            facts.possibleCPUs = 4
            let s = m.ko.withUnsafeBytes { raw -> Session in
                let s = try! Session(elf: try! ELFFile(bytes: raw), claim: m.claim, facts: facts, resolver: before)  // real module, allowed
                try? s.run()
                return s
            }
            let locks = s.variable.filter { $0.cls == .smpLock }.map { $0.offset }
            XCTAssertGreaterThan(locks.count, 1)
            func verdict(_ t: [UInt8], _ f: GuestFacts) -> Bool {
                var c = m.claim
                c.text = t
                return m.ko.withUnsafeBytes { Explainer(facts: f).explain(elf: try! ELFFile(bytes: $0), claim: c, resolver: before).verdict.isAllowed }
            }
            XCTAssertTrue(verdict(m.claim.text, facts))
            var all = m.claim.text
            for o in locks { all[o] = 0xf0 }
            XCTAssertTrue(verdict(all, facts))
            XCTAssertFalse(verdict(all, boot.facts), "one possible CPU: lock prefixes stay 3e")
            var one = m.claim.text
            one[locks[0]] = 0xf0
            XCTAssertFalse(verdict(one, facts))
        }
    }
}

final class HostileInputTests: XCTestCase {
    /// Corrupted module bytes (any field: section headers, symbols, relocations, tables) must give a
    /// verdict, never a trap. Nearly all are denials; none may be an allow of the original claim
    /// unless the corruption did not touch anything the loader reads.
    func testCorruptedModulesNeverCrashTheEngine() throws {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        var r = CaptureReplay(boot: boot)
        var checked = 0
        for name in boot.availableModules {
            let m = try boot.module(name)
            let before = r.resolver
            _ = r.step(m)
            guard name == "test_static_keys" || name == "ip6_udp_tunnel" else { continue }
            var rng: UInt64 = 0x5eed
            let elfEnd = m.ko.count - 40  // keep the trailer; the ELF part is what the engine reads
            for _ in 0..<400 {
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                var ko = m.ko
                let o = Int((rng >> 33) % UInt64(elfEnd))
                ko[o] ^= UInt8(truncatingIfNeeded: rng >> 9) | 1
                ko.withUnsafeBytes { raw in
                    guard let elf = try? ELFFile(bytes: raw) else { return }
                    _ = Explainer(facts: boot.facts).explain(elf: elf, claim: m.claim, resolver: before)
                    checked += 1
                }
            }
        }
        XCTAssertGreaterThan(checked, 100)
    }

    func testRandomClaimIsDenied() throws {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        let m = try boot.module("llc")
        var rng: UInt64 = 7
        var t = m.claim.text
        for i in t.indices { rng = rng &* 6364136223846793005 &+ 1; t[i] = UInt8(truncatingIfNeeded: rng >> 33) }
        var c = m.claim
        c.text = t
        let v = m.ko.withUnsafeBytes { Explainer(facts: boot.facts).explain(elf: try! ELFFile(bytes: $0), claim: c, resolver: SymbolResolver(coreExports: boot.coreExports)) }  // real module
        XCTAssertFalse(v.verdict.isAllowed)
        c.text = Array(m.claim.text.dropLast(4096))  // wrong length for the layout
        let v2 = m.ko.withUnsafeBytes { Explainer(facts: boot.facts).explain(elf: try! ELFFile(bytes: $0), claim: c, resolver: SymbolResolver(coreExports: boot.coreExports)) }
        guard case .denied(let d) = v2.verdict else { return XCTFail("allowed") }
        XCTAssertEqual(d.rule, .layout)
    }
}

/// Other CPU models choose other mitigations: the replay must follow the kernel's rules, not this
/// corpus. These check the rewritten encodings the 6.1 rules give for other feature sets.
final class MitigationRuleTests: XCTestCase {
    func session(_ name: String, _ edit: (inout GuestFacts) -> Void) throws -> (Session, CapturedModule) {
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        var r = CaptureReplay(boot: boot)
        for n in boot.availableModules {
            let m = try boot.module(n)
            let before = r.resolver
            _ = r.step(m)
            guard n == name else { continue }
            var f = boot.facts
            edit(&f)
            let s = m.ko.withUnsafeBytes { raw -> Session in
                let s = try! Session(elf: try! ELFFile(bytes: raw), claim: m.claim, facts: f, resolver: before)  // real module
                try? s.relocate(); try? s.applyParavirt(); try? s.applyRetpolines(); try? s.applyReturns()
                return s
            }
            return (s, m)
        }
        throw XCTSkip("module \(name) not in fixture")
    }

    func clear(_ f: inout GuestFacts, _ bit: Int) { f.capabilities[bit >> 5] &= ~(1 << UInt32(bit & 31)) }
    func set(_ f: inout GuestFacts, _ bit: Int) { f.capabilities[bit >> 5] |= 1 << UInt32(bit & 31) }

    /// spectre_v2 without retpolines: `call __x86_indirect_thunk_rREG` → `call *%rREG` + NOPs.
    func testRetpolineSitesBecomeIndirectCallsWithoutRetpoline() throws {
        let (s, _) = try session("8021q") { clear(&$0, FeatureBits.debian6_1.retpoline) }
        let sites = try s.relativeSites(".retpoline_sites").compactMap { s.execOffset($0, 5) }
        XCTAssertFalse(sites.isEmpty)
        for off in sites {
            let b = Array(s.image[off..<off + 5])
            // ff /2 (call r/m, mod=3) or 41 ff /2 for r8..r15, then NOPs.
            let ok = (b[0] == 0xff && b[1] & 0xf8 == 0xd0 && Array(b[2...]) == [0x0f, 0x1f, 0x00])
                || (b[0] == 0x41 && b[1] == 0xff && b[2] & 0xf8 == 0xd0 && Array(b[3...]) == [0x66, 0x90])
                || (b[0] == 0xff && b[1] & 0xf8 == 0xe0 && b[2] == 0xcc && Array(b[3...]) == [0x66, 0x90])
                || (b[0] == 0x41 && b[1] == 0xff && b[2] & 0xf8 == 0xe0 && b[3] == 0xcc && b[4] == 0x90)
            XCTAssertTrue(ok, "\(b)")
        }
    }

    /// RETHUNK with a non-default thunk: `jmp __x86_return_thunk` → `jmp x86_return_thunk`.
    func testReturnSitesJumpToTheChosenThunk() throws {
        let thunk: UInt64 = 0xffff_ffff_81e0_1c00
        let (s, m) = try session("8021q") { set(&$0, FeatureBits.debian6_1.rethunk); $0.returnThunk = thunk }
        XCTAssertFalse(s.returnSites.isEmpty)
        for r in s.returnSites {
            XCTAssertEqual(Array(s.image[r.off..<r.off + 5]), genInsn(0xe9, at: m.claim.textBase + UInt64(r.off), to: thunk))
        }
    }
}
