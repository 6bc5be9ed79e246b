// SPDX-License-Identifier: Apache-2.0
//
// Regression tests for the attacks of issue 9 that the explainer itself must stop, on the real
// fixture capture (9 modules of a Debian 6.1 boot) and real signed Debian modules. Each shows what
// the old rule accepted and that the claim is now denied with a precise rule and reason.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

/// The fixture boot replayed in load order: each module with the resolver it was explained against.
struct FixtureReplay {
    let boot: CaptureBoot
    var modules: [String: (module: CapturedModule, before: SymbolResolver, result: ExplainResult)] = [:]
    var after: SymbolResolver

    init() throws {
        boot = try CaptureBoot.load(try ExplainTests.bootDir())
        var r = CaptureReplay(boot: boot)
        for name in boot.availableModules {
            let m = try boot.module(name)
            let before = r.resolver
            let o = r.step(m)
            modules[name] = (m, before, o.result)
        }
        after = r.resolver
    }

    func explain(_ name: String, text: [UInt8]? = nil, ko: [UInt8]? = nil, facts: GuestFacts? = nil, resolver: SymbolResolver? = nil) throws -> ExplainResult {
        let e = try XCTUnwrap(modules[name])
        var c = e.module.claim
        if let t = text { c.text = t }
        let f = facts ?? boot.facts
        return try (ko ?? e.module.ko).withUnsafeBytes { raw in
            Explainer(facts: f).explain(elf: try ELFFile(bytes: raw), claim: c, resolver: resolver ?? e.before)
        }
    }

    func session(_ name: String) throws -> Session {
        let e = try XCTUnwrap(modules[name])
        return try e.module.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: e.module.claim, facts: boot.facts, resolver: e.before)
            s.recordRelocationFields = true  // the tests pick fields from them
            try s.run()
            return s
        }
    }

    func symbol(_ name: String) throws -> UInt64 { try XCTUnwrap(boot.probeTargets[name], "\(name) in the fixture's kallsyms") }

    /// irqbypass's first static-call site that holds a call (a might_resched site).
    func callSite(_ s: Session) throws -> (off: Int, addr: UInt64, tail: Bool, key: UInt64) {
        try XCTUnwrap(s.staticSites.first { !$0.tail && s.claim.text[$0.off] == 0xe8 })
    }
}

func denial(_ r: ExplainResult, file: StaticString = #filePath, line: UInt = #line) -> Denial? {
    guard case .denied(let d) = r.verdict else {
        XCTFail("allowed", file: file, line: line)
        return nil
    }
    return d
}

final class StaticCallTrustTests: XCTestCase {
    /// A denial's reason quotes names the signed module chose (a symbol, a section): a
    /// multi-megabyte symbol name made a multi-megabyte verdict message (round 11). Reasons and
    /// section names are cut at `Denial.maximumTextBytes`, on a character boundary, saying so.
    func testADenialsTextIsBounded() {
        let name = String(repeating: "é", count: 600_000)  // 1.2 MB of two-byte characters
        let d = Denial(module: "m", section: name, offset: 0, address: 0, expected: [], found: [], rule: .relocation,
                       reason: "unknown symbol " + name)
        for text in [d.reason, d.section] {
            XCTAssertLessThanOrEqual(text.utf8.count, Denial.maximumTextBytes)
            XCTAssertTrue(text.hasSuffix("bytes, cut)"), String(text.suffix(40)))
        }
        XCTAssertTrue(d.reason.hasPrefix("unknown symbol éé"))
        XCTAssertEqual(Denial(module: "m", section: ".text", offset: 0, address: 0, expected: [], found: [], rule: .relocation, reason: "short").reason, "short")
    }

    /// A denial of the claim as a whole points at no byte: stp explained without llc live (its
    /// `llc_*` imports resolve nowhere, `simplify_symbols()`: "Unknown symbol") reads
    /// "stp: relocation: unknown symbol …", not "stp: (claim)+0x0 (0x0): …".
    func testAClaimWideDenialNamesNoByte() throws {
        let f = try FixtureReplay()
        let r = try f.explain("stp", resolver: SymbolResolver(coreExports: f.boot.coreExports))
        guard case .denied(let d) = r.verdict else { return XCTFail("stp explained without llc's exports") }
        XCTAssertTrue(d.reason.contains("unknown symbol llc_"), "\(d)")
        XCTAssertEqual(d.description, "stp: relocation: \(d.reason)")
    }

    /// irqbypass calls `might_resched` (a key modules reach only through its exported trampoline
    /// `__SCT__might_resched`) four times: the captured end state calls `__cond_resched`, which
    /// sched_dynamic_update() sets (StaticCallTrust.preemptDynamic): explained from the build's facts.
    func testHonestStaticCallsAreTrustedFromTheBuild() throws {
        let f = try FixtureReplay()
        XCTAssertTrue(try XCTUnwrap(f.modules["irqbypass"]).result.verdict.isAllowed)
        let s = try f.session("irqbypass")
        let key = try f.callSite(s).key
        XCTAssertTrue(s.trustedStaticCallTargets(key).contains(0xffff_ffff_81a5_2f80), "__cond_resched trusted for might_resched")
        XCTAssertEqual(s.staticCallStates[key], 0xffff_ffff_81a5_2f80)
    }

    /// A load-time static-call site redirected to a function the key never calls, to an
    /// entry-code label, to a label inside the SRSO thunk, or to freed init text: every one is a
    /// text symbol (the old rule — "any function entry" — allowed them all); now each is denied.
    func testRedirectedStaticCallIsDeniedAtLoad() throws {
        let f = try FixtureReplay()
        let s = try f.session("irqbypass")
        let site = try f.callSite(s)
        for name in ["commit_creds", "native_write_cr4", "native_irq_return_iret", "srso_safe_ret", "start_kernel", "_etext"] {
            let target = try f.symbol(name)
            XCTAssertTrue(f.boot.facts.functionEntries.contains(target), "\(name) is a text symbol: the old rule allowed it")
            var t = try XCTUnwrap(f.modules["irqbypass"]).module.claim.text
            let call = try XCTUnwrap(genInsn(0xe8, at: site.addr, to: target))
            t.replaceSubrange(site.off..<site.off + 5, with: call)
            guard let d = denial(try f.explain("irqbypass", text: t)) else { continue }
            XCTAssertEqual(d.rule, .staticCall, name)
            XCTAssertEqual(d.address, site.addr, name)
            XCTAssertTrue(d.reason.contains("not a legal encoding"), d.reason)
        }
    }

    /// The same retargets as run-time patches (authorize-patch checks the module's site table).
    func testRedirectedStaticCallIsDeniedAtRunTime() throws {
        let f = try FixtureReplay()
        let table = try XCTUnwrap(try XCTUnwrap(f.modules["irqbypass"]).result.runtimeSites)
        let s = try f.session("irqbypass")
        let site = try f.callSite(s)
        XCTAssertEqual(table.key(at: site.addr), site.key)
        for name in ["commit_creds", "native_irq_return_iret", "start_kernel"] {
            let call = try XCTUnwrap(genInsn(0xe8, at: site.addr, to: try f.symbol(name)))
            guard case .denied = table.check(address: site.addr, bytes: call) else { return XCTFail("\(name) allowed at run time") }
        }
        guard case .allowed(_, let st) = table.check(address: site.addr, bytes: try XCTUnwrap(genInsn(0xe8, at: site.addr, to: 0xffff_ffff_81a5_2f80))) else {
            return XCTFail("the trusted target refused")
        }
        XCTAssertEqual(st, 0xffff_ffff_81a5_2f80)
        // The site's key is might_resched (PREEMPT_DYNAMIC): its disabled form is
        // __static_call_return0 (`2e 2e 2e 31 c0`), never NULL (sched_dynamic_update(); DocAttack8).
        guard case .denied = table.check(address: site.addr, bytes: x86Nops[5]) else { return XCTFail("NULL form allowed for might_resched") }
        guard case .allowed(_, let r0) = table.check(address: site.addr, bytes: [0x2e, 0x2e, 0x2e, 0x31, 0xc0]), r0 != 0 else { return XCTFail("the return0 form refused") }
        XCTAssertEqual(table.addresses(ofKey: site.key).count, 4)
    }

    /// Without a trusted target for the key (a registration that supplies none), a call is denied:
    /// the engine does not fall back to "some function".
    func testNoTrustedTargetMeansOnlyTheNullForms() throws {
        let f = try FixtureReplay()
        var facts = f.boot.facts
        facts.staticCallTrustedTargets = SlidStaticCallTargets([:])
        let d = try XCTUnwrap(denial(try f.explain("irqbypass", facts: facts)))
        XCTAssertEqual(d.rule, .staticCall)
        // The same bytes with every might_resched site in the key's disabled form are legal: the
        // return0 form (`2e 2e 2e 31 c0`), never NULL (might_resched_dynamic_disabled,
        // sched_dynamic_update(); DocAttack8Tests, DocAttack9Tests): NOP5 there is denied.
        let s = try f.session("irqbypass")
        let orig = try XCTUnwrap(f.modules["irqbypass"]).module.claim.text
        let key = try f.callSite(s).key
        for (form, legal) in [([UInt8]([0x2e, 0x2e, 0x2e, 0x31, 0xc0]), true), (x86Nops[5], false)] {
            var t = orig
            for site in s.staticSites where site.key == key { t.replaceSubrange(site.off..<site.off + 5, with: form) }
            XCTAssertEqual(try f.explain("irqbypass", text: t, facts: facts).verdict.isAllowed, legal, "\(form)")
        }
    }

    /// A trusted target listed in the core's init text is never legal (freed after boot).
    func testInitTextIsNeverTrusted() throws {
        let f = try FixtureReplay()
        let s = try f.session("irqbypass")
        let site = try f.callSite(s)
        var facts = f.boot.facts
        let startKernel = try f.symbol("start_kernel")
        facts.staticCallTrustedTargets[site.key, default: []].insert(startKernel)  // a lying build list
        var t = try XCTUnwrap(f.modules["irqbypass"]).module.claim.text
        for st in s.staticSites where st.key == site.key {
            t.replaceSubrange(st.off..<st.off + 5, with: try XCTUnwrap(genInsn(0xe8, at: st.addr, to: startKernel)))
        }
        XCTAssertEqual(try XCTUnwrap(denial(try f.explain("irqbypass", text: t, facts: facts))).rule, .staticCall)
    }

    /// All sites of a key agree across modules: a key recorded NULL at a verified module makes a
    /// module calling through it unexplainable until the whole key moves.
    func testKeyStateMustAgreeAcrossModules() throws {
        let f = try FixtureReplay()
        let s = try f.session("irqbypass")
        let key = try f.callSite(s).key
        var r = try XCTUnwrap(f.modules["irqbypass"]).before
        r.recordStaticCallState(key: key, state: 0)
        let d = try XCTUnwrap(denial(try f.explain("irqbypass", resolver: r)))
        XCTAssertTrue(d.reason.contains("verified modules"), d.reason)
        r.recordStaticCallState(key: key, state: 0xffff_ffff_81a5_2f80)
        XCTAssertTrue(try f.explain("irqbypass", resolver: r).verdict.isAllowed)
    }
}

final class LoaderRefusalTests: XCTestCase {
    /// `verify_exported_symbols()`: garp loaded over a session that already exports garp's names
    /// (garp itself, or any module exporting one of them) — the old engine allowed it and let the
    /// second export overwrite the first.
    func testDuplicateExportIsDenied() throws {
        let f = try FixtureReplay()
        let garp = try XCTUnwrap(f.modules["garp"])
        XCTAssertTrue(garp.result.verdict.isAllowed)
        let d = try XCTUnwrap(denial(try f.explain("garp", resolver: f.after)))
        XCTAssertEqual(d.rule, .duplicateExport)
        XCTAssertTrue(d.reason.contains("garp_"), d.reason)
        // Another verified module exporting one of garp's names: equally refused.
        var r = garp.before
        let name = try XCTUnwrap(garp.result.exports?.symbols.keys.sorted().first)
        r.add(ModuleExports(module: "other", symbols: [name: 0xffff_ffff_c000_0000], functionEntries: []))
        let d2 = try XCTUnwrap(denial(try f.explain("garp", resolver: r)))
        XCTAssertEqual(d2.rule, .duplicateExport)
        XCTAssertTrue(d2.reason.contains(name), d2.reason)
    }

    /// `check_modinfo()`: the registered kernel release must be the module's vermagic release.
    func testVermagicMustMatchTheRegisteredRelease() throws {
        let f = try FixtureReplay()
        XCTAssertEqual(f.boot.facts.kernelRelease, "6.1.0-56-amd64")
        var facts = f.boot.facts
        facts.kernelRelease = "6.1.0-57-amd64"
        let d = try XCTUnwrap(denial(try f.explain("llc", facts: facts)))
        XCTAssertEqual(d.rule, .vermagic)
        XCTAssertTrue(d.reason.contains("6.1.0-56-amd64"), d.reason)
    }

    /// A relocation that lands on the core's init text (a registration whose export points there,
    /// e.g. at start_kernel) is denied, not explained.
    func testCoreInitSymbolIsDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        let s = try f.session("llc")
        let field = try XCTUnwrap(s.relocFields.first { s.symtab.isUndefined($0.symbol) && ($0.type == .pc32 || $0.type == .plt32) })
        let name = s.symtab.name(field.symbol)
        let startKernel = try f.symbol("start_kernel")
        var core = f.boot.coreExports
        core[name] = startKernel
        var facts = f.boot.facts
        facts.exports = SlidExports(core)
        // The claim the old engine explained: the field pointing at start_kernel.
        var t = e.module.claim.text
        for r in s.relocFields where r.symbol == field.symbol {
            let v = startKernel &+ UInt64(bitPattern: r.addend) &- (r.type == .pc32 || r.type == .plt32 || r.type == .pc64 ? r.place : 0)
            for k in 0..<r.size { t[r.off + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
        }
        let d = try XCTUnwrap(denial(try f.explain("llc", text: t, facts: facts, resolver: SymbolResolver(coreExports: core))))
        XCTAssertEqual(d.rule, .initSymbol)
        XCTAssertTrue(d.reason.contains(name), d.reason)
    }

    /// Core text referring to the module's own `.init.text` (a relocation re-aimed at init_module
    /// in the ELF): the old engine gave it a placeholder address near 0x100000 and explained a claim
    /// holding that value; such a pointer would aim into freed memory: denied.
    func testCoreTextReferenceToModuleInitIsDenied() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["llc"])
        var ko = e.module.ko
        let (off, initSym): (Int, UInt32) = try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let syms = try elf.symbols()
            let initText = try XCTUnwrap(elf.section(named: ".init.text"))
            let i = try XCTUnwrap(syms.firstIndex { Int($0.sectionIndex) == initText.index && $0.isFunction })
            let rs = try XCTUnwrap(try elf.relocationSections().first { elf.sections[$0.targetSectionIndex].name == ".text" })
            return (rs.section.fileRange.lowerBound + 8 + 4, UInt32(i))  // r_info high half of the first record
        }
        for k in 0..<4 { ko[off + k] = UInt8(truncatingIfNeeded: initSym >> (8 * UInt32(k))) }
        let d = try XCTUnwrap(denial(try f.explain("llc", ko: ko)))
        XCTAssertEqual(d.rule, .initSymbol)
        XCTAssertTrue(d.reason.contains(".init.text"), d.reason)
    }
}

final class PerCPUTests: XCTestCase {
    /// Set-up of a real signed Debian module `name` with `.data..percpu` (runs before any byte is
    /// compared), a zero region of its layout's size at a module-area base: `body` gets the ELF,
    /// its per-cpu section, the fixture boot and `setUp(facts, base)`, the denial or nil.
    func withPerCPUModule(_ name: String, _ body: (ELFFile, Int, CaptureBoot, (GuestFacts, UInt64?) -> Denial?) throws -> Void) throws {
        let ko = try Fixtures.readFile(try Fixtures.module(named: name + ".ko"))
        let boot = try CaptureBoot.load(try ExplainTests.bootDir())
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(elf))
            let pcpu = try XCTUnwrap(plan.percpuSectionIndex)
            XCTAssertGreaterThan(elf.sections[pcpu].size, 0)
            try body(elf, pcpu, boot) { facts, base in
                let claim = ModuleClaim(name: name, textBase: 0xffff_ffff_c000_0000, text: [UInt8](repeating: 0, count: plan.textSize),
                                        sectionAddresses: [:], percpuBase: base)
                do { _ = try Session(elf: elf, claim: claim, facts: facts, resolver: SymbolResolver(coreExports: boot.coreExports)); return nil }
                catch let e as DenyError { return e.denial } catch { XCTFail("\(error)"); return nil }
            }
        }
    }

    /// nf_dup_netdev: with a known module per-cpu range and an honest base set-up passes; with no
    /// range (`__per_cpu_end` not registered) the old engine skipped the check — now a denial; a
    /// base aliased onto the core's per-cpu area (current_task's offset) is denied.
    func testPerCPUBaseNeedsAKnownRange() throws {
        try withPerCPUModule("nf_dup_netdev") { _, _, boot, setUp in
            let perCPUEnd = try XCTUnwrap(boot.facts.modulePercpuRange?.lowerBound, "fixture registers __per_cpu_end")
            XCTAssertNil(setUp(boot.facts, perCPUEnd), "an honest base in the module reserve passes set-up")
            var noRange = boot.facts
            noRange.modulePercpuRange = nil
            let d = try XCTUnwrap(setUp(noRange, perCPUEnd))
            XCTAssertEqual(d.rule, .perCPU)
            XCTAssertTrue(d.reason.contains("__per_cpu_end"), d.reason)
            let d2 = try XCTUnwrap(setUp(boot.facts, 0x2ad00))  // a core per-cpu offset (current_task's neighbourhood)
            XCTAssertEqual(d2.rule, .perCPU)
            XCTAssertTrue(d2.reason.contains("outside the module per-cpu area"), d2.reason)
            XCTAssertEqual(try XCTUnwrap(setUp(boot.facts, nil)).rule, .perCPU)
        }
    }

    /// A per-cpu base inside the module reserve but not aligned to `.data..percpu`'s alignment
    /// (act_mirred: 4) is denied for its alignment, not as outside the area, which it is not (a
    /// doc-driven review found that reason wrong, 2026-12-04); the aligned base passes set-up.
    func testMisalignedPerCPUBaseInsideTheReserveIsDeniedForItsAlignment() throws {
        try withPerCPUModule("act_mirred") { elf, pcpu, boot, setUp in
            XCTAssertEqual(elf.sections[pcpu].addralign, 4)
            let reserve = try XCTUnwrap(boot.facts.modulePercpuRange, "fixture registers __per_cpu_end")
            XCTAssertEqual(reserve.lowerBound % 4, 0)
            XCTAssertNil(setUp(boot.facts, reserve.lowerBound + 4), "an aligned base in the reserve passes set-up")
            let d = try XCTUnwrap(setUp(boot.facts, reserve.lowerBound + 2))
            XCTAssertEqual(d.rule, .perCPU)
            XCTAssertTrue(d.reason.contains("not aligned to its section's 4 bytes"), d.reason)
            XCTAssertFalse(d.reason.contains("outside"), d.reason)
        }
    }
}

final class InitTextTests: XCTestCase {
    /// The init region of a real module (8021q: its init function, relocated against the core and
    /// its own core sections, with ftrace/return sites patched) placed in its own allocation: the
    /// loader's result is explained; one changed byte, a wrong size, or an init allocation laid
    /// over the core are denied. (The capture has no init bytes — init was freed before it was
    /// taken — so the expected init image is the loader replay of the signed module, and the
    /// test checks that the explainer accepts it and nothing else.)
    func testInitTextIsExplainedLikeCoreText() throws {
        let f = try FixtureReplay()
        let e = try XCTUnwrap(f.modules["8021q"])
        try e.module.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(elf))
            let initSize = try XCTUnwrap(plan.placements.filter { $0.isInit && $0.isExecutable }.map { $0.offset + $0.size }.max())
            let initTextSize = (initSize + 4095) & ~4095
            var claim = e.module.claim
            claim.sectionAddresses = claim.sectionAddresses.filter { !$0.key.hasPrefix(".init") }  // stale sysfs init addresses
            claim.initTextBase = claim.textBase &- 0x10_0000
            claim.initText = [UInt8](repeating: 0, count: initTextSize)
            // The loader's init bytes (the stages before comparison, at the claimed init base).
            let core = try Session(elf: elf, claim: claim, facts: f.boot.facts, resolver: e.before)
            try core.run()
            let s = try Session(elf: elf, claim: claim, facts: f.boot.facts, resolver: e.before, region: .initText,
                                inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: core.finalGroupState))
            s.recordRelocationFields = true
            try s.relocate(); try s.applyBootTimePatching(); try s.addRuntimeSites()
            XCTAssertGreaterThan(s.relocCount, 0)
            claim.initText = s.image
            let ok = Explainer(facts: f.boot.facts).explain(elf: elf, claim: claim, resolver: e.before)
            XCTAssertTrue(ok.verdict.isAllowed, "\(ok.verdict)")
            let st = try XCTUnwrap(ok.initStatistics)
            XCTAssertEqual(st.executableBytes, initTextSize)
            XCTAssertGreaterThan(st.bytesByClass[.relocation] ?? 0, 0)

            var flipped = claim
            let at = try XCTUnwrap(s.relocFields.first).off
            flipped.initText![at] ^= 0x20
            guard case .denied(let d) = Explainer(facts: f.boot.facts).explain(elf: elf, claim: flipped, resolver: e.before).verdict else {
                return XCTFail("a changed init byte was allowed")
            }
            XCTAssertEqual(d.address, claim.initTextBase! + UInt64(at))
            XCTAssertEqual(d.section, ".init.text")
            XCTAssertEqual(d.rule, .relocation)

            var overlap = claim
            overlap.initTextBase = claim.textBase
            guard case .denied(let d2) = Explainer(facts: f.boot.facts).explain(elf: elf, claim: overlap, resolver: e.before).verdict else {
                return XCTFail("init laid over core allowed")
            }
            XCTAssertEqual(d2.rule, .layout)

            var short = claim
            short.initText = Array(claim.initText!.dropLast(4096))
            guard case .denied(let d3) = Explainer(facts: f.boot.facts).explain(elf: elf, claim: short, resolver: e.before).verdict else {
                return XCTFail("wrong init size allowed")
            }
            XCTAssertEqual(d3.rule, .layout)
        }
    }
}

/// The relocation walk checks each record as it reads it (the parser no longer makes a pass of its
/// own over the records first). A malformed record must still be the denial, with the parser's
/// error, whatever else is wrong and wherever the record is: in a section the walk writes, after
/// an earlier record the walk would deny, or in a section the walk skips (init text in a core
/// session). Real signed module (llc), records corrupted in place.
final class RelocationRecordCheckTests: XCTestCase {
    /// Offset in `ko` of record `i` of the RELA section for `target`, and the module's symbol count.
    func record(_ ko: [UInt8], target: String, _ i: Int) throws -> (at: Int, symbols: Int) {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let rs = try XCTUnwrap(try elf.relocationSections().first { elf.sections[$0.targetSectionIndex].name == target }, target)
            XCTAssertGreaterThan(rs.relocations.count, i)
            return (rs.section.fileRange.lowerBound + 24 * i, try elf.symbolTable().count)
        }
    }

    /// The explainer's denial for `ko` is the parser's error for it, as a structural denial.
    func assertParserError(_ f: FixtureReplay, _ ko: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws {
        let expected: String = try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            do { _ = try elf.relocationSections(); XCTFail("the parser accepts the records", file: file, line: line); return "" } catch { return "\(error)" }
        }
        let d = try XCTUnwrap(denial(try f.explain("llc", ko: ko)), file: file, line: line)
        XCTAssertEqual(d.rule, .malformedELF, d.reason, file: file, line: line)
        XCTAssertEqual(d.section, "(elf)", file: file, line: line)
        XCTAssertEqual(d.reason, expected, file: file, line: line)
    }

    func setSymbol(_ ko: inout [UInt8], _ at: Int, _ sym: UInt32) {
        for k in 0..<4 { ko[at + 12 + k] = UInt8(truncatingIfNeeded: sym >> (8 * UInt32(k))) }  // r_info high half
    }

    func testOutOfRangeSymbolInWrittenSection() throws {
        let f = try FixtureReplay()
        var ko = try XCTUnwrap(f.modules["llc"]).module.ko
        let (at, n) = try record(ko, target: ".text", 1)
        setSymbol(&ko, at, UInt32(n))
        try assertParserError(f, ko)
    }

    func testFieldOutsideSectionInSkippedSection() throws {
        let f = try FixtureReplay()
        var ko = try XCTUnwrap(f.modules["llc"]).module.ko
        let (at, _) = try record(ko, target: ".init.text", 0)
        for k in 0..<8 { ko[at + k] = 0xff }  // r_offset far outside .init.text
        try assertParserError(f, ko)
    }

    /// An earlier record the walk would deny (a nonzero relocation target in the signed text) and
    /// a malformed record after it: the parser's error, as when the parser checked every record first.
    func testMalformedRecordBeatsAnEarlierWalkDenial() throws {
        let f = try FixtureReplay()
        var ko = try XCTUnwrap(f.modules["llc"]).module.ko
        let textField: Int = try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let rs = try XCTUnwrap(try elf.relocationSections().first { elf.sections[$0.targetSectionIndex].name == ".text" })
            let text = elf.sections[rs.targetSectionIndex]
            return text.fileRange.lowerBound + Int(rs.relocations[0].offset)
        }
        ko[textField] ^= 0x01  // the kernel refuses a nonzero relocation target: a walk denial
        let (at, n) = try record(ko, target: ".text", 2)
        setSymbol(&ko, at, UInt32(n) + 7)
        try assertParserError(f, ko)
        // Without the malformed record, the walk's own denial.
        let clean = try XCTUnwrap(f.modules["llc"]).module.ko
        var onlyWalk = clean
        onlyWalk[textField] ^= 0x01
        let d = try XCTUnwrap(denial(try f.explain("llc", ko: onlyWalk)))
        XCTAssertEqual(d.rule, .relocation, d.reason)
        XCTAssertTrue(d.reason.contains("nonzero"), d.reason)
    }

    /// A nonzero target in a data section checked in place against the signed bytes
    /// (`Session.check`, no copy made): denied at exactly that record, for a record at the start,
    /// in the middle and at the end of the section.
    func testNonzeroTargetInACheckedDataSectionIsDeniedAtItsRecord() throws {
        let f = try FixtureReplay()
        let clean = try XCTUnwrap(f.modules["llc"]).module.ko
        XCTAssertTrue(try f.explain("llc", ko: clean).verdict.isAllowed, "the fixture is allowed")
        let (fieldAt, offsets): (Int, [UInt64]) = try clean.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let rs = try XCTUnwrap(try elf.relocationSections().first { elf.sections[$0.targetSectionIndex].name == ".orc_unwind_ip" })
            XCTAssertGreaterThan(rs.relocations.count, 8)
            return (elf.sections[rs.targetSectionIndex].fileRange.lowerBound, rs.relocations.map(\.offset))
        }
        for k in [0, offsets.count / 2, offsets.count - 1] {
            var ko = clean
            ko[fieldAt + Int(offsets[k]) + 2] = 0x40
            let d = try XCTUnwrap(denial(try f.explain("llc", ko: ko)), "record \(k)")
            XCTAssertEqual(d.rule, .relocation, d.reason)
            XCTAssertTrue(d.reason.contains("nonzero"), d.reason)
            XCTAssertEqual(d.section, ".orc_unwind_ip")
            XCTAssertEqual(d.offset, Int(offsets[k]), "record \(k)")
        }
    }
}
