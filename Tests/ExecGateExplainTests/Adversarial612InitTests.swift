// SPDX-License-Identifier: Apache-2.0
//
// Adversarial round on 6.12 init text (MOD_INIT_TEXT explained by an init session) and the 6.12
// placement it rests on. The guest chooses every byte of the claim: the init bytes, every base,
// every section address. Each test names the attack; a hole has a HOLE commit (the test failing)
// and a Fix commit (the rule, with the kernel function it mirrors). Built on Init612Tests' honest
// claims of real signed Debian 6.12.117 modules.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class Adversarial612InitTests: XCTestCase {
    typealias Case = Init612Tests.Case

    /// Every run-time site of `key` in `s`'s region rewritten to state `state` in `bytes`.
    static func setKey(_ s: Session, _ key: UInt64, _ state: UInt64, in bytes: inout [UInt8]) -> Int {
        var n = 0
        for v in s.variable where v.group == key {
            let e = v.encode(state)
            for k in e.indices { bytes[v.offset + k] = e[k] }
            n += 1
        }
        return n
    }

    /// HOLE (static-call key aliasing through overlapping 6.12 data allocations). 6.12 tracks
    /// only MOD_TEXT and MOD_INIT_TEXT against live modules (Verifier.liveCoreSize); a module's
    /// MOD_DATA / MOD_RO_AFTER_INIT base is the guest's word, checked only against the module's
    /// own other allocations. Claim kvm's data where a live module's static-call key lies, so one
    /// of kvm's own keys (DEFINE_STATIC_CALL_NULL: its sites are NOP5 at load, __static_call_init())
    /// has that live key's address: the explainer then trusts the live module's target for it and
    /// holds kvm's sites to the live key's state, and kvm's own static calls become `call F` for
    /// a function F of another module. No 6.12 kernel produces that: execmem_alloc() never hands
    /// out a live allocation (module_memory_alloc(), move_module()), so a key inside the module is
    /// its own and starts at its own default.
    func testOwnStaticCallKeyAtALiveModulesKeyIsDenied() throws {
        let c = try Init612Tests.make("arch/x86/kvm/kvm", "kvm")
        XCTAssertTrue(try c.explain(c.claim).verdict.isAllowed, "the honest kvm claim")
        try c.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let core = try Session(elf: elf, claim: c.claim, facts: c.facts, resolver: c.resolver)
            try core.run()
            let lay = c.layout
            // A non-tail static-call site in core text of a key kvm defines (in its own data).
            func own(_ k: UInt64) -> Bool {
                [ModuleMemoryType.data, .roAfterInit, .rodata].contains { t in
                    guard let b = Init612Tests.bases[t] else { return false }
                    return k >= b && k < b + UInt64(lay.allocationSize(t))
                }
            }
            guard let site = core.variable.first(where: { v in
                guard let k = v.group, own(k), case .staticCall(_, false, _, _, _, _) = v.rule else { return false }
                return true
            }), let key = site.group else { return XCTFail("kvm has a call site of its own static-call key") }
            // F: one of kvm's functions (standing for the live module's: any verified function entry).
            let syms = try elf.symbols()
            guard let text = elf.section(named: ".text"), let f = syms.first(where: { $0.isFunction && Int($0.sectionIndex) == text.index && $0.value > 0 }),
                  let textAddr = core.addr[text.index] else { return XCTFail("a kvm function") }
            let F = textAddr + f.value
            var bad = c.claim
            let n = Self.setKey(core, key, F, in: &bad.text)
            XCTAssertGreaterThan(n, 0)
            let initS = try Session(elf: elf, claim: c.claim, facts: c.facts, resolver: c.resolver, region: .initText,
                                    inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: core.finalGroupState))
            try initS.run()
            _ = Self.setKey(initS, key, F, in: &bad.initText!)
            // Without the alias: kvm's own key is NULL at load, `call F` is denied.
            if case .allowed = try c.explain(bad).verdict { XCTFail("kvm's own key in state F without any live key") }
            // With a live module's key at the same address (its DEFINE_STATIC_CALL default F,
            // its sites calling F): must be denied too.
            var aliased = c.resolver
            aliased.add(ModuleExports(module: "live_a", symbols: [:], functionEntries: FunctionEntries([F]),
                                      staticCallTrustedTargets: [key: [F]], staticCallStates: [key: F]))
            let r = Explainer(facts: c.facts).explain(elf: elf, claim: bad, resolver: aliased)
            guard case .denied(let d) = r.verdict else {
                return XCTFail("kvm's own static-call key 0x\(String(key, radix: 16)) aliased onto a live module's key: \(n) site(s) calling 0x\(String(F, radix: 16)) allowed")
            }
            XCTAssertEqual(d.rule, .layout, "\(d)")
        }
    }

    /// Failed attack kept: an init-text ftrace site (`__mcount_loc` in `.init.text`) claimed as
    /// `call __fentry__` (as relocated, before ftrace_module_init() → ftrace_make_nop()), or as a
    /// call into the module's own core text (a "tracer" the guest picked): denied at that site.
    /// 6.12 leaves every init site NOP5 at load; tracing a protected module is not supported
    /// (trust.md), in init text as in core text.
    func testInitFtraceSiteAsACallIsDenied() throws {
        let c = try Init612Tests.make("arch/x86/kvm/kvm-intel", "kvm_intel")
        let (sites, relocated): ([Int], [UInt8]) = try c.ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let i = try Session(elf: elf, claim: c.claim, facts: c.facts, resolver: c.resolver, region: .initText)
            try i.relocate()
            let img = i.image
            // ftrace NOPs are fixed bytes (no run-time site): found by their class.
            let f = UInt8(ExplanationClass.ftrace.rawValue)
            let offs = c.initClasses.indices.filter { c.initClasses[$0] == f && ($0 == 0 || c.initClasses[$0 - 1] != f) }
            return (offs, img)
        }
        XCTAssertGreaterThan(sites.count, 0, "kvm_intel has ftrace sites in init text")
        for o in sites {
            XCTAssertEqual(relocated[o], 0xe8, "the signed site is a call")
            var asSigned = c.claim
            for k in 0..<5 { asSigned.initText![o + k] = relocated[o + k] }
            let d = try c.denial(asSigned)
            XCTAssertEqual(d.address, c.claim.initTextBase! + UInt64(o), "\(d)")
            var toCore = c.claim
            let site = c.claim.initTextBase! + UInt64(o)
            let rel = Int32(truncatingIfNeeded: Int64(bitPattern: c.claim.textBase &- (site &+ 5)))
            toCore.initText![o] = 0xe8
            withUnsafeBytes(of: rel.littleEndian) { for k in 0..<4 { toCore.initText![o + 1 + k] = $0[k] } }
            let d2 = try c.denial(toCore)
            XCTAssertEqual(d2.address, site, "\(d2)")
        }
    }
}
