// SPDX-License-Identifier: Apache-2.0
//
// Attack round 7 written from the docs (README, docs/protocol.md, docs/trust.md, docs/kernels):
// the guest kernel chooses every registration fact (which symbol records it sends, in which
// order), every byte of a claim and the order of its requests. New angles: facts the checks need
// but the registration leaves out, and facts the engine derives *by name* from the symbol map
// (not the ones the plausibility checks read). Inputs: the committed fixture boot (signed Debian
// 6.1 modules and the bytes a real guest held), through the verifier core as the service runs it.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack7Tests: XCTestCase {
    /// What a registration that went through lets a guest do with `_printk` moved: its
    /// dependencies load, then 8021q (whose `call _printk` now points at the moved address)
    /// laid at its own base: that verdict (an allow is the hole).
    static func printkCallerVerdict(_ v: Verifier, _ boot: CaptureBoot) throws -> ExecGateWire.Verdict {
        let session = try XCTUnwrap(v.guests.session("g"))
        for name in ["llc", "stp", "mrp", "garp"] {
            XCTAssertEqual(v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let caller = try boot.module("8021q").request(guestID: "g")
        return v.authorize(try DocAttack4Tests.rebased(boot, session, "8021q", to: caller.textBase!, frames: caller.frames), requestDigest: [])
    }

    /// An address in the module area `[MODULES_VADDR, MODULES_END)` where no fixture module lies.
    static let moduleAreaPage: UInt64 = 0xffff_ffff_c300_0000
    static let initBounds = ["_sinittext", "_einittext", "__init_begin", "__init_end"]

    private func verifier() throws -> Verifier { Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())) }

    /// Attack: protocol.md "Symbols the VMM must send" names `_sinittext`, `_einittext` (and
    /// trust.md `__init_begin`, `__init_end`: "nothing may point into the core's freed init
    /// memory"), and promises "A fact the checks need but the registration lacks makes those
    /// modules denied, never allowed". The registration leaves the four init bounds out and sends
    /// the exported `_printk` as data (`D`, so the core-text rule does not apply) at an address
    /// inside the build's init text. With the bounds, that export is refused ("lies in init
    /// text"); without them nothing held it, and 8021q's `call _printk` was explained as a
    /// verified call into the core's freed init memory (free_initmem() gives those pages back to
    /// the page allocator; what is there later is the guest's choice).
    func testAnExportInFreedInitMemoryNeedsTheInitBounds() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let sinit = try XCTUnwrap(honest.symbols.first { $0.name == "_sinittext" }?.address)
        let einit = try XCTUnwrap(honest.symbols.first { $0.name == "_einittext" }?.address)
        let inInit = sinit + 0x1000
        XCTAssertLessThan(inInit, einit)
        func moved(_ r: RegisterGuest) throws -> RegisterGuest {
            var r = r
            let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_printk" && $0.exported })
            r.symbols[i].type = UInt8(ascii: "D")
            r.symbols[i].address = inInit
            return r
        }
        // Control: with the init bounds, the export in init text is refused.
        guard case .error(let withBounds) = try verifier().respond(to: .registerGuest(try moved(honest)), requestDigest: []) else {
            return XCTFail("registered _printk in init text with the init bounds sent")
        }
        XCTAssertEqual(withBounds.code, .implausibleFacts, withBounds.message)

        // The attack: the same export, the init bounds left out.
        var r = try moved(honest)
        r.symbols.removeAll { Self.initBounds.contains($0.name) }
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("_sinittext") || e.message.contains("__init_begin"), e.message)
        } else {
            // What the registration allowed: 8021q calling "_printk" inside init text.
            let verdict = try DocAttack7Tests.printkCallerVerdict(v, boot)
            XCTFail("registered without the init bounds, _printk (D) at 0x\(String(inInit, radix: 16)) in init text; 8021q's call _printk there: \(verdict.decision) \(verdict.message)")
        }
        XCTAssertNil(v.guests.session("g"))
        // The same with `_printk` as text (`T`) and `_etext` moved past the init text (the
        // registration's word too): the export is then "core text" and no export lies outside
        // it, yet it is in init text. The init bounds are what tell it: refused without them.
        var t = honest
        t.symbols.removeAll { Self.initBounds.contains($0.name) }
        let i = try XCTUnwrap(t.symbols.firstIndex { $0.name == "_printk" && $0.exported })
        t.symbols[i].address = inInit
        let e = try XCTUnwrap(t.symbols.firstIndex { $0.name == "_etext" })
        t.symbols[e].address = einit + 0x1000
        let vt = try verifier()
        let treply = vt.respond(to: .registerGuest(t), requestDigest: [])
        if case .error(let err) = treply {
            XCTAssertEqual(err.code, .implausibleFacts, err.message)
        } else {
            let verdict = try DocAttack7Tests.printkCallerVerdict(vt, boot)
            XCTFail("registered without the init bounds, _etext past init text, _printk (T) at 0x\(String(inInit, radix: 16)) in init text; 8021q's call _printk there: \(verdict.decision) \(verdict.message)")
        }
        // Control: the real build registers.
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }

    /// Attack: the init bounds sent, `_etext` (the registration's word) moved past `__init_end`.
    /// vmlinux.lds.S lays the image out as `_stext < _etext ≤ __init_begin ≤ _sinittext <
    /// _einittext ≤ __init_end`; the rules "in core text outside init text" (`pv_ops` entries,
    /// the return thunks, the loader's other helpers: FactsPlausibility, `KernelBounds.isCoreText`)
    /// excluded init *text* only, so with core text stretched over the whole init memory a
    /// `pv_ops` entry, or the `srso_return_thunk` record that `return_thunk` names, inside init
    /// *data* (`[__init_begin, _sinittext)`, freed by free_initmem() like init text) registered:
    /// every paravirt site of that op (`paravirt_patch()`: a direct call) or every return site
    /// (`apply_returns()`: `jmp x86_return_thunk`) would be a verified branch into freed memory.
    func testCoreTextDoesNotReachIntoInitMemory() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        func at(_ n: String) throws -> UInt64 { try XCTUnwrap(honest.symbols.first { $0.name == n }?.address, n) }
        let initBegin = try at("__init_begin"), sinit = try at("_sinittext"), initEnd = try at("__init_end")
        XCTAssertLessThan(initBegin, sinit)
        let initData = initBegin + 0x100
        func stretched(_ edit: (inout RegisterGuest) throws -> Void) throws -> RegisterGuest {
            var r = honest
            let e = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_etext" })
            r.symbols[e].address = initEnd + 0x1000
            try edit(&r)
            return r
        }
        let pv = try stretched { r in
            XCTAssertGreaterThanOrEqual(r.pvOps.count, 16)
            r.pvOps.replaceSubrange(8..<16, with: withUnsafeBytes(of: initData.littleEndian) { Array($0) })
        }
        let thunk = try stretched { r in
            let t = try XCTUnwrap(r.symbols.firstIndex { $0.name == "srso_return_thunk" })
            r.symbols[t].address = initData
            r.symbols[t].exported = false
            r.returnThunk = initData
        }
        for (what, r) in [("pv_ops[1]", pv), ("return_thunk = srso_return_thunk", thunk)] {
            let v = try verifier()
            let reply = v.respond(to: .registerGuest(r), requestDigest: [])
            if case .error(let e) = reply {
                XCTAssertEqual(e.code, .implausibleFacts, "\(what): \(e.message)")
            } else {
                XCTFail("registered with _etext past __init_end and \(what) at 0x\(String(initData, radix: 16)), in init data [__init_begin, _sinittext)")
            }
        }
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }

    /// Attack: exports the loader's rewrites look up by name, not through a relocation (6.12
    /// `BUG_func`, the call `apply_alternatives()` writes for an `ALT_FLAG_DIRECT_CALL` site whose
    /// `pv_ops` entry is NULL; `nop_func`, `pv_ops`: Loader612Patching; 6.1 `__fentry__`,
    /// `__x86_indirect_thunk_rax`). The relocation walk's `init-symbol` rule never sees them, and
    /// registration refused only exports in init *text*: `BUG_func` sent as data (`D`) in init
    /// data `[__init_begin, _sinittext)` registered and is what the 6.12 replay would write a
    /// `call` to. (The 6.1 return thunk, looked up the same way, is a code helper held to core
    /// text since DocAttack6, and core text excludes init memory since this round.) trust.md:
    /// "nothing may point into the core's freed init memory"; no Debian 6.1 export lies in
    /// `[__init_begin, __init_end)` (modpost refuses exporting __init/__initdata symbols).
    func testNoExportLiesInInitData() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let initBegin = try XCTUnwrap(honest.symbols.first { $0.name == "__init_begin" }?.address)
        var r = honest
        r.symbols.append(KernelSymbol(name: "BUG_func", address: initBegin + 0x100, type: UInt8(ascii: "D"), exported: true))
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("BUG_func"), e.message)
        } else {
            let s = try XCTUnwrap(v.guests.session("g"))
            XCTFail("registered the export BUG_func (D) at 0x\(String(initBegin + 0x100, radix: 16)) in init data; the replay's BUG_func is then 0x\(String(s.symbolResolver.lookup("BUG_func") ?? 0, radix: 16))")
        }
    }

    /// Attack: trust.md "Static calls" rule 2 (targets derived from the build by name:
    /// `sched_dynamic_update()`'s `__cond_resched`, `preempt_schedule_thunk`, …, each tracepoint
    /// key's `__traceiter_X`), and protocol.md's plausibility rule "every static-call target is 0
    /// or a core function entry outside init text". The derivation takes the *first* record of a
    /// target's name (StaticCallTrust.coreTargets), but no plausibility check read those records:
    /// only exported text is held to core text, and DocAttack6's fix covers the loader's code
    /// helpers only. An earlier, non-exported text record `__cond_resched` on a module-area page
    /// registered, the page became a trusted target of the `cond_resched` and `might_resched`
    /// keys, and a whole-key `static_call_update()` of those keys to it was allowed: a verified
    /// call from every such site into whatever module text the guest lays on that page. The
    /// kernel's targets are core functions (kernel/sched/core.c, arch/x86/entry/thunk_64.S,
    /// include/linux/tracepoint.h), in `[_stext, _etext)` outside init text.
    func testABuildDerivedStaticCallTargetLiesInCoreText() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let keyNames = ["__SCK__cond_resched", "__SCT__cond_resched", "__SCK__might_resched", "__SCT__might_resched"]
        let keys = Set(honest.symbols.filter { keyNames.contains($0.name) }.map(\.address))
        XCTAssertEqual(keys.count, 4)
        var r = honest
        r.symbols.insert(KernelSymbol(name: "__cond_resched", address: Self.moduleAreaPage, type: UInt8(ascii: "t"), exported: false, isFunction: true), at: 0)
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("__cond_resched"), e.message)
        } else {
            let session = try XCTUnwrap(v.guests.session("g"))
            var trusted = false
            for k in keys { trusted = trusted || (session.facts.staticCallTrustedTargets[k]?.contains(Self.moduleAreaPage) ?? false) }
            for name in boot.availableModules { _ = v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []) }
            var bySite: [UInt64: [(RuntimeSiteTable, RuntimeSiteTable.Site)]] = [:]
            for t in session.runtimeSites { for s in t.siteList where s.kind == .staticCall { if let k = s.key, keys.contains(k) { bySite[k, default: []].append((t, s)) } } }
            var outcomes: [String] = []
            for (key, sites) in bySite.sorted(by: { $0.key < $1.key }) {
                let entries = sites.compactMap { t, s in t.encoding(at: s.address, state: Self.moduleAreaPage).map { PatchEntry(address: s.address, bytes: $0) } }
                let verdict = v.authorizePatch(AuthorizePatch(guestID: "g", patches: entries), session: session, requestDigest: [])
                outcomes.append("key 0x\(String(key, radix: 16)) (\(entries.count) sites) → \(verdict.decision): \(verdict.message)")
            }
            XCTFail("registered an earlier record __cond_resched at 0x\(String(Self.moduleAreaPage, radix: 16)) (module area); trusted for the keys: \(trusted); static_call_update() there: \(outcomes)")
            // The fixture's modules have no site of those keys; on the shared corpus (real Debian
            // modules and end states) mbcache has one (`cond_resched()`, through
            // `__SCT__cond_resched`): claimed as `call` the module-area page, it is judged at load.
            let dir = SharedCorpusSessionTests.corpus + "/nokaslr-a"
            if let corpus = try? CaptureBoot.load(dir) {
                try mbcacheCallsThePage(corpus, keyNames)
            }
        }
        XCTAssertNil(v.guests.session("g"))
        guard case .registerGuestReply = try verifier().respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
        // Control: the real Debian build (every derived target in core text) registers.
        if let corpus = try? CaptureBoot.load(SharedCorpusSessionTests.corpus + "/nokaslr-a") {
            let reply = try verifier().respond(to: .registerGuest(try corpus.registration(guestID: "c")), requestDigest: [])
            guard case .registerGuestReply = reply else { return XCTFail("the shared corpus's registration: \(reply)") }
        }
    }

    /// Attack: the same derivation's *keys*. protocol.md plausibility: "every static-call key is
    /// a registered `__SCK__<name>` or a core-text `__SCT__<name>`" (DocAttack6 held `__SCK__`
    /// records to the image); StaticCallTrust stores each derived set under the key `__SCK__<name>`
    /// and the trampoline `__SCT__<name>`, each the first record of its name. An earlier text
    /// record `__SCT__cond_resched` on a module-area page made that page a static-call key the
    /// facts trust `__cond_resched` for: the sites of a module's own key whose trampoline the
    /// guest lays there (`tramp_key_lookup()` finds a key by its trampoline's address) would be
    /// trusted to call a core function the kernel never writes for them (it writes the module
    /// key's own target). A core trampoline is core text (arch/x86/kernel/static_call.c,
    /// ARCH_DEFINE_STATIC_CALL_TRAMP in vmlinux).
    func testABuildDerivedStaticCallKeyIsACoreKey() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        var r = honest
        r.symbols.insert(KernelSymbol(name: "__SCT__cond_resched", address: Self.moduleAreaPage, type: UInt8(ascii: "t"), exported: false, isFunction: true), at: 0)
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("__SCT__cond_resched"), e.message)
        } else {
            let s = try XCTUnwrap(v.guests.session("g"))
            let cond = try XCTUnwrap(honest.symbols.first { $0.name == "__cond_resched" }?.address)
            XCTFail("registered an earlier record __SCT__cond_resched at 0x\(String(Self.moduleAreaPage, radix: 16)) (module area): __cond_resched (0x\(String(cond, radix: 16))) trusted for a key there: \(s.facts.staticCallTrustedTargets[Self.moduleAreaPage]?.contains(cond) ?? false)")
        }
        XCTAssertNil(v.guests.session("g"))
    }

    /// The load-time half of the attack above, on the shared corpus: mbcache's one static-call
    /// site of `cond_resched`, claimed as a call to the module-area page the earlier record names.
    private func mbcacheCallsThePage(_ corpus: CaptureBoot, _ keyNames: [String]) throws {
        let honest = try corpus.registration(guestID: "c")
        let keys = Set(honest.symbols.filter { keyNames.contains($0.name) }.map(\.address))
        let probe = try verifier()
        guard case .registerGuestReply = probe.respond(to: .registerGuest(honest), requestDigest: []), let ps = probe.guests.session("c") else { return XCTFail("corpus registration") }
        var request = try corpus.module("mbcache").request(guestID: "c")
        XCTAssertEqual(probe.authorize(request, requestDigest: []).decision, .allow, "mbcache, honest")
        let sites = ps.runtimeSites.flatMap { $0.siteList }.filter { $0.kind == .staticCall && $0.key.map(keys.contains) == true }
        XCTAssertFalse(sites.isEmpty, "mbcache's cond_resched site")
        var text = Array(request.text!.readableBytesView)
        for site in sites {
            let o = Int(site.address - request.textBase!)
            XCTAssertEqual(text[o], 0xe8, "a call site")
            let rel = Int32(truncatingIfNeeded: Int64(bitPattern: Self.moduleAreaPage &- (site.address + 5)))
            text.replaceSubrange(o + 1 ..< o + 5, with: withUnsafeBytes(of: rel.littleEndian) { Array($0) })
        }
        request.text = ByteBuffer(bytes: text)
        var attacked = honest
        attacked.symbols.insert(KernelSymbol(name: "__cond_resched", address: Self.moduleAreaPage, type: UInt8(ascii: "t"), exported: false, isFunction: true), at: 0)
        let v = try verifier()
        let reply = v.respond(to: .registerGuest(attacked), requestDigest: [])
        guard case .registerGuestReply = reply else {
            if case .error(let e) = reply { XCTAssertEqual(e.code, .implausibleFacts, e.message) } else { XCTFail("\(reply)") }
            return
        }
        let verdict = v.authorize(request, requestDigest: [])
        XCTFail("shared corpus: mbcache with its cond_resched site(s) at \(sites.map { "0x" + String($0.address, radix: 16) }) claimed as call 0x\(String(Self.moduleAreaPage, radix: 16)): \(verdict.decision) \(verdict.message)")
    }

    /// Failed attack kept: two guests of one kernel build share one copy of its facts
    /// (docs/trust.md "One copy of a kernel build's facts", "Registration by digest"); guest A
    /// registers in full, guest B by digest. A's live state must not reach B: A's verified
    /// modules (mrp, garp, whose exports 8021q imports) do not resolve B's 8021q (unknown symbol:
    /// the kernel resolves against the modules loaded in *that* kernel); A's run-time flip of a
    /// key (test_static_keys' jump labels) does not move the key for B, whose test_static_keys is
    /// judged in its load state; A's `module-init-freed`/`retire-module` of a name B also has
    /// leaves B's module live. Each session holds its own live set (GuestSession), the shared copy
    /// holds only the build (immutable).
    func testOneGuestsLiveStateNeverReachesAnotherOfTheSameBuild() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let v = try verifier()
        guard case .registerGuestReply(let first) = v.respond(to: .registerGuest(try boot.registration(guestID: "a")), requestDigest: []) else { return XCTFail("a") }
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "b").byDigest(first.symbolsDigest)), requestDigest: []) else { return XCTFail("b by digest") }
        let a = try XCTUnwrap(v.guests.session("a")), b = try XCTUnwrap(v.guests.session("b"))
        XCTAssertTrue(a.kernel === b.kernel, "one shared copy of the build")
        for name in ["llc", "stp", "mrp", "garp", "test_static_key_base", "test_static_keys"] {
            XCTAssertEqual(v.authorize(try boot.module(name).request(guestID: "a"), requestDigest: []).decision, .allow, "a: \(name)")
        }
        // B never loaded mrp/garp: 8021q's imports resolve to nothing there.
        for name in ["llc", "stp"] { XCTAssertEqual(v.authorize(try boot.module(name).request(guestID: "b"), requestDigest: []).decision, .allow, "b: \(name)") }
        let q = v.authorize(try boot.module("8021q").request(guestID: "b"), requestDigest: [])
        XCTAssertEqual(q.decision, .deny, "b's 8021q against a's mrp/garp: \(q.message)")
        XCTAssertTrue(q.message.contains("unknown symbol") || q.message.contains("not exported"), q.message)

        // A flips a key of test_static_keys; B loads test_static_keys in its load state.
        var flips: [PatchEntry] = []
        var flipped: UInt64?
        var byKey: [UInt64: [(RuntimeSiteTable, RuntimeSiteTable.Site)]] = [:]
        for t in a.runtimeSites { for s in t.siteList where s.kind == .jumpLabel { if let k = s.key { byKey[k, default: []].append((t, s)) } } }
        for (k, sites) in byKey.sorted(by: { $0.key < $1.key }) {
            guard let st = a.state(ofKey: k) else { continue }
            flips = sites.compactMap { t, s in t.encoding(at: s.address, state: 1 - st).map { PatchEntry(address: s.address, bytes: $0) } }
            flipped = k
            break
        }
        let key = try XCTUnwrap(flipped)
        let before = try XCTUnwrap(a.state(ofKey: key))
        XCTAssertEqual(v.authorizePatch(AuthorizePatch(guestID: "a", patches: flips), session: a, requestDigest: []).decision, .allow)
        XCTAssertEqual(a.state(ofKey: key), 1 - before)
        for name in ["test_static_key_base", "test_static_keys"] {
            let r = v.authorize(try boot.module(name).request(guestID: "b"), requestDigest: [])
            XCTAssertEqual(r.decision, .allow, "b: \(name) in its load state: \(r.message)")
        }
        XCTAssertEqual(b.state(ofKey: key), before, "b's key never moved")
        // A retires its test_static_keys; B's stays live.
        let aLive = try XCTUnwrap(a.liveModule("test_static_keys"))
        guard case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "a", moduleName: "test_static_keys", textBase: aLive.textRange.lowerBound)), requestDigest: []) else { return XCTFail("a retires") }
        XCTAssertNotNil(b.liveModule("test_static_keys"))
        XCTAssertEqual(b.state(ofKey: key), before)
        // init-freed for a module with no granted init text, twice, on either guest: unknown-module.
        for g in ["a", "b", "b"] {
            guard case .error(let e) = v.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: g, moduleName: "test_static_keys", initBase: 0xffff_ffff_c200_0000)), requestDigest: []) else { return XCTFail("init freed on \(g)") }
            XCTAssertEqual(e.code, .unknownModule, e.message)
        }
    }
}
