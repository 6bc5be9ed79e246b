// SPDX-License-Identifier: Apache-2.0
//
// A module's own tracepoints: `DEFINE_TRACE_FN` (include/linux/tracepoint.h, CREATE_TRACE_POINTS in
// the module) defines `DEFINE_STATIC_CALL(tp_func_X, __traceiter_X)` in the module itself, with
// its trampoline `__SCT__tp_func_X` in the module's `.static_call.text`, and its `struct
// tracepoint` in the module's `__tracepoints` (static_call_key = &__SCK__tp_func_X). Probes on it
// are registered through the same kernel/tracepoint.c code as the core's (tracepoint_probe_register()
// → tracepoint_add_func() → tracepoint_update_call(); tracepoint_remove_func()), the key's only
// updater: it writes `tp->iterator` or the one probe, never NULL nor `__static_call_return0`
// (6.1 and 6.12). Real Debian 6.1 modules: jbd2 (21 own tracepoint keys, no dependencies) and tun
// (a key of another module's tracepoint, as kvm_intel has kvm's: EXPORT_TRACEPOINT_SYMBOL_GPL).

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class ModuleTracepointKeyTests: XCTestCase {
    static let base: UInt64 = 0xffff_ffff_c100_0000

    /// The claim an honest guest sends for `ko` at `base`: the loader replay's image with every
    /// static-call site and trampoline in its key's load state (a key of a verified module: its
    /// recorded state; the module's own: its trampoline default; a core key: its trusted target
    /// from the build), as static_call_add_module() → __static_call_init() writes them.
    static func honest(_ ko: [UInt8], _ name: String, _ facts: GuestFacts, _ resolver: SymbolResolver, at textBase: UInt64 = base) throws -> (claim: ModuleClaim, session: Session) {
        let plan = try ko.withUnsafeBytes { try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: $0))) }
        var claim = ModuleClaim(name: name, textBase: textBase, text: [UInt8](repeating: 0, count: plan.textSize), sectionAddresses: [:])
        var (image, s) = try loaderImage(ko, claim, facts, resolver)
        for v in s.variable where v.cls == .staticCall {
            guard let k = v.group else { continue }
            let st = resolver.staticCallStates[k] ?? s.ownKeyDefaults[k]?.min() ?? facts.staticCallTrustedTargets[k]?.min() ?? 0
            image.replaceSubrange(v.offset..<v.offset + v.length, with: v.encode(st))
        }
        claim.text = image
        return (claim, s)
    }

    /// The fixture's facts (its kallsyms is trimmed to what the fixture modules import) with every
    /// import of `kos` the core does not export added at a distinct address in core text (a
    /// data word for the relocation replay; none of them is a static-call key or target).
    static func facts(_ f: FixtureReplay, for kos: [[UInt8]], except: Set<String> = []) throws -> GuestFacts {
        var facts = f.boot.facts
        var next: UInt64 = 0xffff_ffff_8170_0000
        for ko in kos {
            try ko.withUnsafeBytes { raw in
                for s in try ELFFile(bytes: raw).symbols() where s.isUndefined && !s.name.isEmpty && !except.contains(s.name) && facts.exports[s.name] == nil {
                    facts.exports.add(s.name, next)
                    next += 0x40
                }
            }
        }
        return facts
    }

    static func explain(_ ko: [UInt8], _ claim: ModuleClaim, _ facts: GuestFacts, _ resolver: SymbolResolver) throws -> ExplainResult {
        try ko.withUnsafeBytes { Explainer(facts: facts).explain(elf: try ELFFile(bytes: $0), claim: claim, resolver: resolver) }
    }

    /// `ko` (module `name`) loaded by an honest guest: the facts for it alone, its resolver, the
    /// claim (`honest`), the session, the explanation, which must allow it (asserted; `what` leads
    /// the message), and its run-time sites.
    static func honestLoad(_ f: FixtureReplay, _ ko: [UInt8], _ name: String, _ what: String? = nil,
                           file: StaticString = #filePath, line: UInt = #line) throws
        -> (facts: GuestFacts, resolver: SymbolResolver, claim: ModuleClaim, session: Session, result: ExplainResult, table: RuntimeSiteTable) {
        let facts = try Self.facts(f, for: [ko])
        let resolver = SymbolResolver(coreExports: facts.exports)
        let (claim, s) = try honest(ko, name, facts, resolver)
        let result = try explain(ko, claim, facts, resolver)
        XCTAssertTrue(result.verdict.isAllowed, "\(what.map { $0 + ": " } ?? "")\(result.verdict)", file: file, line: line)
        return (facts, resolver, claim, s, result, try XCTUnwrap(result.runtimeSites, file: file, line: line))
    }

    /// The address of the module's own static-call key `__SCK__<name>` (`Session.ownKeyAddress`).
    static func ownKey(_ s: Session, _ name: String) throws -> UInt64 {
        try XCTUnwrap(s.ownKeyAddress(try XCTUnwrap(s.keySymbols.index(named: "__SCK__" + name, s.symtab), name)), name)
    }

    /// jbd2's own tracepoint key addresses (`__SCK__tp_func_*` in its own sections).
    static func ownTracepointKeys(_ s: Session) -> [UInt64] {
        s.keySymbols.indices.filter { s.symtab.nameHasPrefix($0, "__SCK__tp_func_") }.compactMap { s.ownKeyAddress($0) }
    }

    /// HOLE: jbd2's own tracepoint keys took NULL and `__static_call_return0` where the core's
    /// (DisabledForm.neither) take neither: the guest claims every site of `tp_func_X` (and its
    /// trampoline) as NOP5 / `2e 2e 2e 31 c0`, at load and as a run-time whole-key patch, and the
    /// tracepoint's probes are silently skipped.
    func testModuleOwnTracepointKeyTakesNeitherNullNorReturn0() throws {
        let f = try FixtureReplay()
        let ko = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        let (facts, resolver, claim, s, honest, table) = try Self.honestLoad(f, ko, "jbd2")
        let r0 = try XCTUnwrap(facts.staticCallReturn0)
        let keys = Set(Self.ownTracepointKeys(s))
        XCTAssertEqual(keys.count, 21)
        // A key with call sites (and its trampoline, a site of the same key).
        let sites = table.siteList.filter { $0.kind == .staticCall && $0.key.map(keys.contains) == true }
        let key = try XCTUnwrap(Dictionary(grouping: sites, by: { $0.key! }).filter { $0.value.count >= 2 }.keys.min())
        let keySites = sites.filter { $0.key == key }
        let iter = try XCTUnwrap(honest.exports?.staticCallStates[key])
        XCTAssertNotEqual(iter, 0)
        for bad in [UInt64(0), r0] {
            // At load: every site of the key, trampoline included, in the state `bad`.
            var c = claim
            for site in keySites {
                let o = Int(site.address - claim.textBase)
                c.text.replaceSubrange(o..<o + site.length, with: try XCTUnwrap(table.encoding(at: site.address, state: bad)))
            }
            let v = try Self.explain(ko, c, facts, resolver)
            XCTAssertFalse(v.verdict.isAllowed, "load with tp_func key in state 0x\(String(bad, radix: 16)): \(keySites) \(v.runtimeSites.map { t in keySites.map { t.state(address: $0.address, bytes: Array(c.text[Int($0.address - c.textBase)..<Int($0.address - c.textBase) + $0.length])) } } as Any)")
            // The denial shows a legal state of the site as expected (a call to a trusted
            // target), not the NULL form the key never takes, nor the claim's own bytes.
            if case .denied(let d) = v.verdict, let first = keySites.map(\.address).min() {
                XCTAssertNotEqual(d.expected, d.found, d.reason)
                let o = Int(first - claim.textBase)
                let shown = Array(d.expected.prefix(5))
                if d.address == first, shown.count == 5 {
                    XCTAssertEqual(shown.first, 0xe8, "expected a call, got \(shown)")
                    XCTAssertNotEqual(shown, Array(c.text[o..<o + 5]))
                }
            }
            // At run time: no site of the key takes it.
            for site in keySites {
                let b = try XCTUnwrap(table.encoding(at: site.address, state: bad))
                if case .allowed = table.check(address: site.address, bytes: b) {
                    XCTFail("run-time patch of \(site) to 0x\(String(bad, radix: 16)) (\(b)) allowed")
                }
            }
        }
    }

    /// jbd2 loaded honestly, exporting its `tp_func_jbd2_run_stats` key under the name tun
    /// imports for its one tracepoint key (`__SCK__tp_func_xdp_exception`), as
    /// EXPORT_TRACEPOINT_SYMBOL_GPL exports a module's tracepoint key (the kind goes with the
    /// address). `keepState: false` drops the key's recorded state (no jbd2 site agreed on one).
    /// Returns tun's bytes, the facts, the resolver holding jbd2's exports, the key and its
    /// iterator (the key's load state).
    static func tunImportingJbd2sKey(keepState: Bool) throws -> (tun: [UInt8], facts: GuestFacts, resolver: SymbolResolver, key: UInt64, iterator: UInt64) {
        let f = try FixtureReplay()
        let jbd2 = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        let tun = try Fixtures.readFile(try Fixtures.module(named: "tun.ko"))
        let facts = try Self.facts(f, for: [jbd2, tun], except: ["__SCK__tp_func_xdp_exception"])
        var resolver = SymbolResolver(coreExports: facts.exports)
        let (jc, js) = try Self.honest(jbd2, "jbd2", facts, resolver)
        let jr = try Self.explain(jbd2, jc, facts, resolver)
        XCTAssertTrue(jr.verdict.isAllowed, "\(jr.verdict)")
        let key = try XCTUnwrap(js.ownKeyAddress(try XCTUnwrap(js.keySymbols.index(named: "__SCK__tp_func_jbd2_run_stats", js.symtab))))
        var exports = try XCTUnwrap(jr.exports)
        let iter = try XCTUnwrap(exports.staticCallStates[key])
        XCTAssertNotEqual(iter, 0)
        if !keepState { exports.staticCallStates[key] = nil }
        exports.symbols["__SCK__tp_func_xdp_exception"] = key
        resolver.add(exports)
        XCTAssertEqual(resolver.staticCallStates[key], keepState ? iter : nil)
        return (tun, facts, resolver, key, iter)
    }

    /// HOLE: a key of another module's tracepoint (kvm_intel's sites of kvm's exported
    /// `tp_func_kvm_*`; here tun's `__SCK__tp_func_xdp_exception` import resolved to jbd2's
    /// `tp_func_jbd2_run_stats` key, which jbd2 is made to export under that name, as
    /// EXPORT_TRACEPOINT_SYMBOL_GPL exports a module's tracepoint key) took NULL and
    /// `__static_call_return0`: the key's kind was not carried past the module that defines it.
    func testAnotherModulesTracepointKeyTakesNeitherNullNorReturn0() throws {
        let (tun, facts, resolver, key, iter) = try Self.tunImportingJbd2sKey(keepState: true)
        let r0 = try XCTUnwrap(facts.staticCallReturn0)

        // Its own allocation, away from jbd2's (a live module's key in it is refused).
        let (tc, _) = try Self.honest(tun, "tun", facts, resolver, at: Self.base + 0x100_0000)
        let ok = try Self.explain(tun, tc, facts, resolver)
        XCTAssertTrue(ok.verdict.isAllowed, "\(ok.verdict)")
        let table = try XCTUnwrap(ok.runtimeSites)
        let sites = table.siteList.filter { $0.kind == .staticCall && $0.key == key }
        XCTAssertFalse(sites.isEmpty)
        for site in sites {
            XCTAssertEqual(table.state(address: site.address, bytes: Array(tc.text[Int(site.address - tc.textBase)..<Int(site.address - tc.textBase) + site.length])), iter)
        }
        for bad in [UInt64(0), r0] {
            var cb = tc
            for site in sites {
                let o = Int(site.address - tc.textBase)
                cb.text.replaceSubrange(o..<o + site.length, with: try XCTUnwrap(table.encoding(at: site.address, state: bad)))
            }
            XCTAssertFalse(try Self.explain(tun, cb, facts, resolver).verdict.isAllowed, "load with jbd2's tp_func key in state 0x\(String(bad, radix: 16))")
            for site in sites {
                let b = try XCTUnwrap(table.encoding(at: site.address, state: bad))
                if case .allowed = table.check(address: site.address, bytes: b) {
                    XCTFail("run-time patch of \(site) to 0x\(String(bad, radix: 16)) (\(b)) allowed")
                }
            }
        }
    }

    /// Failed attack kept: jbd2's sites of one tracepoint key `tp_func_X` (and its trampoline)
    /// claimed calling another of jbd2's iterators, `__traceiter_Y`, at load and as a run-time
    /// patch (its probes called with X's arguments as Y's). Denied: a module's own key trusts
    /// only its own trampoline's default (`DEFINE_STATIC_CALL(tp_func_X, __traceiter_X)`,
    /// collectModuleTrampolines), never another key's.
    func testModuleTracepointKeyTakesNoOtherKeysIterator() throws {
        let f = try FixtureReplay()
        let ko = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        let (facts, resolver, claim, s, honest, table) = try Self.honestLoad(f, ko, "jbd2")
        let keys = Set(Self.ownTracepointKeys(s))
        let sites = table.siteList.filter { $0.kind == .staticCall && $0.key.map(keys.contains) == true }
        let byKey = Dictionary(grouping: sites, by: { $0.key! })
        let states = try XCTUnwrap(honest.exports?.staticCallStates)
        let key = try XCTUnwrap(byKey.filter { $0.value.count >= 2 }.keys.min())
        let other = try XCTUnwrap(keys.filter { $0 != key }.compactMap { states[$0] }.first { $0 != states[key] })
        var c = claim
        for site in byKey[key]! {
            let o = Int(site.address - claim.textBase)
            c.text.replaceSubrange(o..<o + site.length, with: try XCTUnwrap(table.encoding(at: site.address, state: other)))
            if case .allowed = table.check(address: site.address, bytes: try XCTUnwrap(table.encoding(at: site.address, state: other))) {
                XCTFail("run-time patch of \(site) to another key's iterator allowed")
            }
        }
        XCTAssertFalse(try Self.explain(ko, c, facts, resolver).verdict.isAllowed)
    }

    /// The cross-module case at load when the defining module has no site of the key (kvm's
    /// `tp_func_kvm_nested_vmenter_failed` is traced only from kvm_intel): no verified state to
    /// agree with, so only the rule holds the first user's sites. jbd2's `tp_func_jbd2_run_stats`
    /// exported as in testAnotherModulesTracepointKeyTakesNeitherNullNorReturn0, its recorded
    /// state dropped; tun's sites claimed NOP5 or `2e 2e 2e 31 c0` at load: denied (before the
    /// Fix both were allowed); the iterator allowed.
    func testAnotherModulesTracepointKeyWithNoStateYetTakesNeitherAtLoad() throws {
        let (tun, facts, resolver, key, iter) = try Self.tunImportingJbd2sKey(keepState: false)
        let r0 = try XCTUnwrap(facts.staticCallReturn0)
        let (tc, ts) = try Self.honest(tun, "tun", facts, resolver, at: Self.base + 0x100_0000)
        let sites = ts.variable.filter { $0.cls == .staticCall && $0.group == key }
        XCTAssertFalse(sites.isEmpty)
        for (state, legal) in [(iter, true), (UInt64(0), false), (r0, false)] {
            var c = tc
            for v in sites { c.text.replaceSubrange(v.offset..<v.offset + v.length, with: v.encode(state)) }
            XCTAssertEqual(try Self.explain(tun, c, facts, resolver).verdict.isAllowed, legal, "state 0x\(String(state, radix: 16))")
        }
    }

    /// A site of a tracepoint key that has no trusted target (here jbd2's key, reached by tun as
    /// `__SCK__tp_func_xdp_exception`, with jbd2's trusted targets for it dropped: as a key whose
    /// iterator the registration does not name): no encoding of the site is legal, and the denial
    /// says so and why, naming the key by the symbol tun reaches it through, instead of offering
    /// NOP5 as "expected" (a reviewer wrote the suggested NOP5 into the claim and got the same
    /// denial with expected = found, round 11).
    func testASiteWithNoLegalEncodingIsDeniedForThatNamingItsKey() throws {
        let (tun, facts, _, key, _) = try Self.tunImportingJbd2sKey(keepState: false)
        // The resolver again, with jbd2's key trusting nothing.
        var resolver = SymbolResolver(coreExports: facts.exports)
        let jbd2 = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        let (jc, _) = try Self.honest(jbd2, "jbd2", facts, resolver)
        var exports = try XCTUnwrap(try Self.explain(jbd2, jc, facts, resolver).exports)
        exports.staticCallStates[key] = nil
        var trusted = exports.staticCallTrustedTargets
        trusted[key] = nil
        exports.staticCallTrustedTargets = trusted
        exports.symbols["__SCK__tp_func_xdp_exception"] = key
        resolver.add(exports)
        XCTAssertNil(resolver.moduleKeyTargets[key])
        let (tc, ts) = try Self.honest(tun, "tun", facts, resolver, at: Self.base + 0x100_0000)
        let sites = ts.variable.filter { $0.cls == .staticCall && $0.group == key }
        XCTAssertFalse(sites.isEmpty)
        for encoding in [x86Nops[5], sites[0].encode(0)] {
            var c = tc
            for v in sites { c.text.replaceSubrange(v.offset..<v.offset + v.length, with: encoding) }
            guard case .denied(let d) = try Self.explain(tun, c, facts, resolver).verdict else { return XCTFail("a key with no trusted target took \(encoding)") }
            XCTAssertTrue(d.reason.contains("no encoding of this site is legal"), d.reason)
            XCTAssertTrue(d.reason.contains("__SCK__tp_func_xdp_exception"), d.reason)
        }
    }

    /// The address of `name`, a function the session's module defines (nil if none).
    static func function(_ s: Session, _ name: String) throws -> UInt64? {
        for i in s.symtab.indices where s.symtab.isFunction(i) && !s.symtab.isUndefined(i) && s.symtab.nameEquals(i, name) {
            return try s.symbolValue(i)
        }
        return nil
    }

    /// The sites of `key` (its trampoline included) claimed in `state`: the verdict at load, and
    /// whether each site takes the state as a run-time patch.
    static func claimKey(_ ko: [UInt8], _ claim: ModuleClaim, _ table: RuntimeSiteTable, key: UInt64, state: UInt64,
                         _ facts: GuestFacts, _ resolver: SymbolResolver) throws -> (load: Bool, patches: [Bool]) {
        let sites = table.siteList.filter { $0.kind == .staticCall && $0.key == key }
        var c = claim
        var patches: [Bool] = []
        for site in sites {
            let o = Int(site.address - claim.textBase)
            let b = try XCTUnwrap(table.encoding(at: site.address, state: state))
            c.text.replaceSubrange(o..<o + site.length, with: b)
            if case .allowed = table.check(address: site.address, bytes: b) { patches.append(true) } else { patches.append(false) }
        }
        return (try explain(ko, c, facts, resolver).verdict.isAllowed, patches)
    }

    /// Before the Fix: qla2xxx's init enables its own trace events (qla_os.c qla_trace_init() →
    /// trace_array_set_clr_event(qla_trc_array, "qla", NULL, true)); trace_event_reg() registers
    /// the class probe `trace_event_raw_event_qla_log_event` on its tracepoint `ql_dbg_log`, and
    /// tracepoint_update_call() points the module's own key `tp_func_ql_dbg_log` (every site and
    /// the trampoline) at that one probe. A real capture (Debian 6.1.0-56, 6.12.118: `execgate
    /// capture`, docs/kernels/matrix.md round 10) found qla2xxx denied `static-call` on a default
    /// boot. The probe is the module's own event class's (`event_class_qla_log_event.probe`, read
    /// from the signed relocations), so the end state is explained now, at load and as a run-time
    /// patch; so is the perf probe (`perf_trace_qla_log_event`, TRACE_REG_PERF_REGISTER).
    func testOwnTraceEventClassProbeIsATargetOfItsKey() throws {
        let f = try FixtureReplay()
        let ko = try Fixtures.readFile(try Fixtures.module(named: "qla2xxx.ko"))
        let (facts, resolver, claim, s, _, table) = try Self.honestLoad(f, ko, "qla2xxx")
        let key = try Self.ownKey(s, "tp_func_ql_dbg_log")
        XCTAssertGreaterThan(table.siteList.filter { $0.kind == .staticCall && $0.key == key }.count, 1)
        for name in ["trace_event_raw_event_qla_log_event", "perf_trace_qla_log_event", "__traceiter_ql_dbg_log"] {
            let target = try XCTUnwrap(try Self.function(s, name), name)
            let r = try Self.claimKey(ko, claim, table, key: key, state: target, facts, resolver)
            XCTAssertTrue(r.load, "load with tp_func_ql_dbg_log on \(name)")
            XCTAssertEqual(r.patches, r.patches.map { _ in true }, "run-time patch to \(name)")
        }
    }

    /// Failed attacks kept (they cover the Fix's bounds): jbd2's key `tp_func_jbd2_checkpoint`
    /// (a TRACE_EVENT: class jbd2_checkpoint) claimed calling another class's probe
    /// (`trace_event_raw_event_jbd2_commit`: another prototype), the BPF raw-tracepoint stub
    /// `__bpf_trace_jbd2_checkpoint` (bpf_probe_register(): not a class probe) or one byte into
    /// its own class probe (not a function entry): denied at load and as a run-time patch. Its
    /// own class probe and perf probe are allowed.
    func testTraceEventProbesAreBoundToTheirOwnEventsKey() throws {
        let f = try FixtureReplay()
        let ko = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        let (facts, resolver, claim, s, _, table) = try Self.honestLoad(f, ko, "jbd2")
        let key = try Self.ownKey(s, "tp_func_jbd2_checkpoint")
        XCTAssertFalse(table.siteList.filter { $0.kind == .staticCall && $0.key == key }.isEmpty)
        let own = try XCTUnwrap(try Self.function(s, "trace_event_raw_event_jbd2_checkpoint"))
        let cases: [(String, UInt64, Bool)] = [
            ("trace_event_raw_event_jbd2_checkpoint", own, true),
            ("perf_trace_jbd2_checkpoint", try XCTUnwrap(try Self.function(s, "perf_trace_jbd2_checkpoint")), true),
            ("trace_event_raw_event_jbd2_commit", try XCTUnwrap(try Self.function(s, "trace_event_raw_event_jbd2_commit")), false),
            ("__bpf_trace_jbd2_checkpoint", try XCTUnwrap(try Self.function(s, "__bpf_trace_jbd2_checkpoint")), false),
            ("trace_event_raw_event_jbd2_checkpoint+1", own + 1, false),
        ]
        for (name, target, legal) in cases {
            let r = try Self.claimKey(ko, claim, table, key: key, state: target, facts, resolver)
            XCTAssertEqual(r.load, legal, "load with tp_func_jbd2_checkpoint on \(name)")
            XCTAssertEqual(r.patches, r.patches.map { _ in legal }, "run-time patch to \(name)")
        }
    }

    /// Attacks on the walk's relocation reads (it reads only the records at the fields it walks,
    /// keyed by section and offset): jbd2's `tp_func_jbd2_checkpoint`, each in a module whose
    /// honest load stays allowed (its iterator default too), the class probe claimed as the key's
    /// target. Each fails: (1) the class's `reg` record given addend 8 (`trace_event_reg + 8` is
    /// not the core's register function: the class registers nothing we can bound); (2) the
    /// class's probe field written by an R_X86_64_NONE record (no write: the field is not the
    /// probe); (3) the call's class pointer given an addend of 2^40 (a class far past its section:
    /// offsets past 2^40 are never asked, so no class, no probe; jbd2 has no record at the field
    /// such a packing would alias, so this case shows the refusal, not the bound itself). Cases
    /// (1) and (2) fail on a walk without the addend test or the R_X86_64_64 test (checked
    /// by hand with those mutants).
    func testTheProbeWalkTrustsOnlyTheFieldsTheSignedRecordsWrite() throws {
        let f = try FixtureReplay()
        let pristine = try Fixtures.readFile(try Fixtures.module(named: "jbd2.ko"))
        // The file offset of the RELA record writing `symbol + delta` in the symbol's section.
        func record(_ ed: KoEditor, _ symbol: String, plus delta: UInt64) throws -> Int {
            let (target, value) = try ed.elf { e -> (String, UInt64) in
                let t = try e.symbolTable()
                let i = try XCTUnwrap(t.indices.first { t.nameEquals($0, symbol) }, symbol)
                return (e.sections[Int(t.sectionIndex(i))].name, t.value(i))
            }
            let r = try ed.rela(for: target)
            let k = try XCTUnwrap((0..<r.count).first { ed.get(UInt64.self, at: r.at + 24 * $0) == value + delta }, "\(symbol)+\(delta)")
            return r.at + 24 * k
        }
        var reg = KoEditor(ko: pristine)
        let regAt = try record(reg, "event_class_jbd2_checkpoint", plus: 24)
        reg.put(Int64(8), at: regAt + 16)
        var none = KoEditor(ko: pristine)
        let probeInfo = try record(none, "event_class_jbd2_checkpoint", plus: 8) + 8
        none.put(none.get(UInt64.self, at: probeInfo) & ~0xffff_ffff, at: probeInfo)  // r_info's type := R_X86_64_NONE
        var far = KoEditor(ko: pristine)
        let classAt = try record(far, "event_jbd2_checkpoint", plus: 16)
        far.put(far.get(Int64.self, at: classAt + 16) &+ (1 << 40), at: classAt + 16)
        for (what, ko) in [("reg + 8", reg.ko), ("probe field by R_X86_64_NONE", none.ko), ("class pointer + 2^40", far.ko)] {
            let (facts, resolver, claim, s, _, table) = try Self.honestLoad(f, ko, "jbd2", what)
            let key = try Self.ownKey(s, "tp_func_jbd2_checkpoint")
            let iterator = try XCTUnwrap(try Self.function(s, "__traceiter_jbd2_checkpoint"))
            let probe = try XCTUnwrap(try Self.function(s, "trace_event_raw_event_jbd2_checkpoint"))
            XCTAssertTrue(try Self.claimKey(ko, claim, table, key: key, state: iterator, facts, resolver).load, "\(what): the iterator")
            let r = try Self.claimKey(ko, claim, table, key: key, state: probe, facts, resolver)
            XCTAssertFalse(r.load, "\(what): the class probe at load")
            XCTAssertEqual(r.patches, r.patches.map { _ in false }, "\(what): the class probe as a run-time patch")
        }
    }
}
