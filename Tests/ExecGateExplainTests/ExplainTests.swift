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
                return ExplainResult(verdict: .denied(Denial(module: m.name, section: "(elf)", offset: 0, address: 0, expected: [], found: [], rule: "elf", reason: "parse")), exports: nil)
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
                Explainer(facts: boot.facts).mutate(elf: try! ELFFile(bytes: raw), claim: m.claim, resolver: r, perClass: 8, seed: UInt64(i + 1))  // parsed fine above
            }
            for c in rep.classes {
                tried[c.name, default: 0] += c.tried
                XCTAssertEqual(c.falseAccepts, [], "\(m.name) \(c.name)")
            }
        }
        let total = tried.values.reduce(0, +)
        XCTAssertGreaterThan(total, 300, "\(tried)")
        for cls in ["byte-flip", "reloc-redirect", "jump-label", "return-thunk", "static-call", "padding"] {
            XCTAssertGreaterThan(tried[cls] ?? 0, 0, cls)
        }
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
        XCTAssertEqual(d.rule, "relocation")
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
        XCTAssertEqual(d.rule, "layout")
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
            let s = Session(elf: try! ELFFile(bytes: raw), claim: m.claim, facts: boot.facts, resolver: r)  // parsed fine above
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
