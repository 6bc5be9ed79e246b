// SPDX-License-Identifier: Apache-2.0
//
// Attack round 2 written from the documentation alone (README.md, docs/trust.md, docs/protocol.md,
// docs/policy.md): grants and frames, guest lifecycle, run-time patches across retire, policy
// rules. Each test names the doc promise it attacks; inputs: the committed fixture boot (signed
// Debian 6.1 modules and the bytes a real guest held), through the verifier core as the service
// runs it.

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttack2SessionTests: XCTestCase {
    private func retire(_ g: FixtureGuest, _ name: String, base: UInt64? = nil) -> Message {
        let b = base ?? g.session.liveModule(name)?.textRange.lowerBound ?? 0
        return g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: b)), requestDigest: [])
    }

    private func initFreed(_ g: FixtureGuest, _ name: String) -> Message {
        g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: name, initBase: g.session.liveModule(name)?.initRange?.lowerBound ?? 0)), requestDigest: [])
    }

    // MARK: Grants and frames

    /// HOLE (round docs2): protocol.md, verdict: `grant_frames` "on allow with a region",
    /// `init_frames` "on allow with init text"; authorize-module: `frames` "with 7", `init_frames`
    /// "with 10"; the VMM grants EXEC "on exactly the frames the verdict echoes". Attack: under
    /// `end-state signature-only`, send frames and init frames but no region. The request claims no
    /// byte, so it took the signature-only allow, and the verdict echoed both frame lists as
    /// `grant_frames`/`init_frames`: a grant on guest-physical pages none of whose bytes anybody
    /// judged (or even sent), on a verdict that only vouches for a signature. Frames without the
    /// region they map are an inconsistent claim: denied `claim.frames-invalid`, nothing echoed.
    func testFramesWithoutARegionAreNeverEchoedAsAGrant() throws {
        let g = try FixtureGuest { $0.endState = .signatureOnly }
        var r = try g.request("llc")
        r.text = nil
        r.textBase = nil
        r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.address) }
        let claimed = r.frames
        r.frames = []
        for (frames, initFrames) in [(claimed, [UInt64]()), ([], [0x1234, 0x1235]), (claimed, [0x1234])] {
            var q = r
            q.frames = frames
            q.initFrames = initFrames
            let v = g.verifier.authorize(q, requestDigest: [])
            XCTAssertTrue(v.grantFrames.isEmpty && v.initFrames.isEmpty && v.grantBase == nil,
                          "frames granted without a judged region: \(v.grantFrames) \(v.initFrames)")
            XCTAssertEqual(v.decision, .deny, v.message)
            XCTAssertEqual(v.reason, .claimFramesInvalid, v.message)
        }
        // The signature-only request itself (no frames) is still allowed, and says so.
        let plain = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(plain.decision, .allow, plain.message)
        XCTAssertTrue(plain.signatureOnly)
        XCTAssertTrue(plain.grantFrames.isEmpty)
    }

    /// The same with a region judged in full (end state required): init frames without init text
    /// are not a grant of init text nobody judged.
    func testInitFramesWithoutInitTextAreNotGranted() throws {
        let g = try FixtureGuest()
        var r = try g.request("llc")
        r.initFrames = [0x7_7777]
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "init frames without init text: \(v.initFrames)")
        XCTAssertEqual(v.reason, .claimFramesInvalid, v.message)
        // A later module may take that frame: it was never granted.
        var other = try g.request("irqbypass")
        other.frames[0] = 0x7_7777
        let o = g.verifier.authorize(other, requestDigest: [])
        XCTAssertEqual(o.decision, .allow, o.message)
    }

    /// trust.md "The grant is on frames": "No frame may be granted to two live modules". Attack:
    /// after llc is retired its frames are free again (the VMM revoked them): reuse is allowed.
    /// While it is live, a second module naming one of its frames is denied (SessionAttackTests
    /// covers the live case); the retire must free exactly llc's frames, not stp's.
    func testRetireFreesOnlyTheRetiredModulesFrames() throws {
        let g = try FixtureGuest()
        let llc = try g.load("llc")
        XCTAssertEqual(llc.decision, .allow, llc.message)
        let stp = try g.load("stp")
        XCTAssertEqual(stp.decision, .allow, stp.message)
        // stp depends on llc: the retire is refused and llc's frames stay granted.
        guard case .error(let inUse) = retire(g, "llc") else { return XCTFail("llc retired under stp") }
        XCTAssertEqual(inUse.code, .moduleInUse, inUse.message)
        var thief = try g.request("mrp")
        thief.frames[0] = llc.grantFrames[0]
        XCTAssertEqual(g.verifier.authorize(thief, requestDigest: []).reason, .claimFramesInvalid)
        guard case .retireModuleReply = retire(g, "stp") else { return XCTFail("retire stp") }
        guard case .retireModuleReply = retire(g, "llc") else { return XCTFail("retire llc") }
        var reuse = try g.request("irqbypass")
        reuse.frames[0] = llc.grantFrames[0]
        if reuse.frames.count > 1 { reuse.frames[1] = stp.grantFrames[0] }
        let v = g.verifier.authorize(reuse, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
    }

    /// protocol.md module-init-freed: "a live module with granted init text … (else
    /// `error`/`unknown-module`)". Attack: init-freed for a module with no init text claimed, for
    /// one not live, for a retired one, and for a name differing by `-`/`_`.
    func testInitFreedWithoutGrantedInitTextIsUnknownModule() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("irqbypass").decision, .allow)
        for name in ["irqbypass", "llc", "irq-bypass", "IRQBYPASS", ""] {
            guard case .error(let e) = initFreed(g, name) else { XCTFail("\(name): init freed"); continue }
            XCTAssertEqual(e.code, .unknownModule, "\(name): \(e.message)")
        }
        XCTAssertNotNil(g.session.liveModule("irqbypass"), "a refused init-freed changes nothing")
    }

    /// protocol.md retire-module: "a module that is not live at that base gets
    /// `error`/`unknown-module`". Attack: retire by a base inside the module, one page off, or the
    /// right base under a `-`/`_` twin of the name; the module must stay live each time.
    func testRetireNeedsTheExactInstance() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("irqbypass").decision, .allow)
        let base = try XCTUnwrap(g.session.liveModule("irqbypass")?.textRange.lowerBound)
        for (name, b) in [("irqbypass", base + 1), ("irqbypass", base &+ 0x1000), ("irqbypass", base &- 0x1000), ("irq-bypass", base), ("irqbypass ", base)] {
            guard case .error(let e) = retire(g, name, base: b) else { XCTFail("\(name) at \(b): retired"); continue }
            XCTAssertEqual(e.code, .unknownModule, e.message)
            XCTAssertNotNil(g.session.liveModule("irqbypass"))
        }
    }

    /// trust.md "The grant is on frames": the VMM grants EXEC on the claimed frames, one per 4 KiB
    /// page of `text`. Attack: a claim whose `text_base` is not page-aligned (the kernel's
    /// module_alloc() and layout_sections() never give one): the frame of its first page would be
    /// granted whole, `text_base & 0xfff` bytes before the region included, bytes nobody judged.
    /// Fails: the engine refuses the layout before any byte ("not a page-aligned range").
    func testUnalignedTextBaseIsNoLayoutTheKernelGives() throws {
        let g = try FixtureGuest()
        for name in ["irqbypass", "llc"] {
            var r = try g.request(name)
            let shift: UInt64 = 0x40
            r.textBase = r.textBase! &+ shift
            r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.address &+ shift) }
            let v = g.verifier.authorize(r, requestDigest: [])
            XCTAssertEqual(v.decision, .deny, v.message)
            XCTAssertTrue(v.message.contains("not a page-aligned range"), v.message)
            XCTAssertTrue(v.grantFrames.isEmpty)
        }
    }

    // MARK: Guest lifecycle

    /// protocol.md register-guest: a refused registration changes nothing, but a refused *reset*
    /// ends the guest's session (the VMM revoked its grants before resetting; left live, a guest
    /// rebooted into an unpinned kernel kept being judged against the old one's facts,
    /// SessionAttackTests.testARefusedResetEndsTheGuestsSession). Attack: a reset with implausible
    /// facts. Refused, the guest stays registered, the old session is ended: a load in it is
    /// denied for that (not taken as a second copy of a live module), nothing is charged; an
    /// honest reset then starts the next session.
    func testRefusedResetEndsTheSession() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        let old = try XCTUnwrap(g.verifier.guests.session("g"))
        var r = g.registration
        r.reset = true
        r.presentCPUs = 0
        guard case .error(let e) = g.verifier.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("implausible reset accepted") }
        XCTAssertEqual(e.code, .implausibleFacts, e.message)
        XCTAssertTrue(g.verifier.guests.session("g") === old, "still registered")
        let again = try g.load("llc")
        XCTAssertEqual(again.reason, .endStateUnavailable, again.message)
        XCTAssertTrue(again.message.contains("reset was refused"), again.message)
        XCTAssertEqual(old.liveBytes, 0)
        r.presentCPUs = g.registration.presentCPUs
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("the honest reset") }
        XCTAssertFalse(g.verifier.guests.session("g") === old, "a new session")
    }

    /// protocol.md: a registration by digest attaches to the build the server "holds **now**",
    /// "held while at least one registered guest uses it", and "applies `reset`/`guest-exists` …
    /// as to any registration". Attack: reset the build's only guest by digest. The build is held
    /// (by that guest) when the request arrives: the reset must attach, or be refused and change
    /// nothing; it must never drop the guest and then refuse `unknown-build`.
    func testResetByDigestOfTheOnlyGuestOfItsBuild() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        // The build's symbols digest, from another verifier (so that "g" alone holds the build here).
        let other = try FixtureGuest()
        let probe = other.verifier.respond(to: .registerGuest({ var r = other.registration; r.guestID = "probe"; return r }()), requestDigest: [])
        guard case .registerGuestReply(let reply) = probe else { return XCTFail("\(probe)") }
        var reset = g.registration
        reset.reset = true
        reset.symbols = []
        reset.symbolsDigest = reply.symbolsDigest
        let m = g.verifier.respond(to: .registerGuest(reset), requestDigest: [])
        switch m {
        case .registerGuestReply:
            XCTAssertTrue(g.session.allowedModules.isEmpty, "a reset drops the old session")
            XCTAssertEqual(try g.load("llc").decision, .allow)
        case .error(let e):
            XCTAssertNotNil(g.verifier.guests.session("g"), "a refused reset (\(e.code)) dropped the guest: \(e.message)")
        default:
            XCTFail("\(m)")
        }
    }

    // MARK: Run-time patches across retire

    /// protocol.md authorize-patch: "Allowed only when every entry is at the start of a run-time
    /// patch site of the **live** module that owns the address now (a retired module's sites are
    /// gone)". Attack: record an allowed whole-key batch, retire a module holding sites of that key,
    /// load it again at another base, and replay the old batch: its addresses at the old base are
    /// no live code, so it is denied whole and no key state moves.
    func testReplayedBatchAfterRetireAndReloadElsewhereIsDenied() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let byKey = g.sitesByKey()
        guard let (key, sites) = byKey.sorted(by: { $0.key < $1.key }).first(where: { k, s in
            s.contains { $0.table.module == "test_static_keys" } && s.allSatisfy { $0.site.kind == .jumpLabel }
        }) else {
            throw XCTSkip("no key with sites in test_static_keys")
        }
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let v = g.patch(flip)
        XCTAssertEqual(v.decision, .allow, v.message)
        let back = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: state))) }
        XCTAssertEqual(g.patch(back).decision, .allow)
        guard case .retireModuleReply = retire(g, "test_static_keys") else { return XCTFail("retire test_static_keys") }
        // Reload elsewhere: above every live module.
        let top = try XCTUnwrap(g.session.allowedModules.compactMap { g.session.liveModule($0)?.coreRange.upperBound }.max())
        var moved = try g.request("test_static_keys")
        let delta = ((top + 0x10_0000) & ~0xfff) &- moved.textBase!
        moved.textBase = moved.textBase! &+ delta
        moved.sections = moved.sections.map { SectionClaim(name: $0.name, address: $0.address &+ delta, bytes: $0.bytes) }
        moved.frames = moved.frames.map { $0 &+ 0x10_0000 }
        let reload = g.verifier.authorize(moved, requestDigest: [])
        // The moved claim carries the old base's relocated bytes: it is denied (end state), or, if
        // allowed, the replay below must still be denied.
        XCTAssertEqual(reload.decision, .deny, reload.message)
        let before = g.session.state(ofKey: key)
        let replay = g.patch(flip)
        XCTAssertEqual(replay.decision, .deny, "an old batch replayed at a retired module's addresses: \(replay.message)")
        XCTAssertTrue(replay.message.contains("not in live code"), replay.message)
        XCTAssertEqual(g.session.state(ofKey: key), before, "a denied batch moves no key")
        // Reloaded at its old base (its captured bytes), the old batch is a legal whole-key flip again.
        XCTAssertEqual(try g.load("test_static_keys").decision, .allow)
        XCTAssertEqual(g.patch(flip).decision, .allow)
    }

    /// protocol.md authorize-patch: "for each key an entry touches …, the batch covers every site of
    /// that key in every live module, and all reach one state"; trust.md: "Across sites the state
    /// is one per key". Attack (two vCPUs): retire a module M holding some sites of a jump-label
    /// key, flip the key (a batch covering every *live* site) and, while that patch's verdict is
    /// being finished (between its judgement and the recording of its state), load M again with
    /// its sites in the old state (agreeing with the key as recorded at its commit). The batch no
    /// longer covers every live site of the key; recording its state leaves a key with live sites
    /// in two states. The kernel serialises the two under jump_label_mutex (jump_label_update()
    /// and jump_label_add_module()), so no kernel ends there. Inputs: the shared corpus (keys
    /// with sites in several modules; the fixture boot has none).
    func testPatchRacingALoadLeavesNoKeyInTwoStates() throws {
        let dir = SharedCorpusSessionTests.corpus + "/nokaslr-a"
        guard access(dir + "/kallsyms.txt", R_OK) == 0 else { throw XCTSkip("shared corpus boot \(dir) not present") }
        let v = Verifier(policy: Policy(id: "race", version: 1, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(dir)
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else { return XCTFail("registration") }
        let session = try XCTUnwrap(v.guests.session("g"))
        for n in boot.availableModules {
            let r = v.authorize(try boot.module(n).request(guestID: "g"), requestDigest: [])
            XCTAssertEqual(r.decision, .allow, "\(n): \(r.message)")
        }
        func sitesByKey() -> [UInt64: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)]] {
            var out: [UInt64: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)]] = [:]
            for t in session.runtimeSites { for s in t.siteList { if let k = s.key { out[k, default: []].append((t, s)) } } }
            return out
        }
        func retire(_ n: String) -> Bool {
            guard let base = session.liveModule(n)?.textRange.lowerBound else { return false }
            if case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: n, textBase: base)), requestDigest: []) { return true }
            return false
        }
        // A jump-label key with sites in two modules, one of which (M) nothing depends on.
        var pick: (key: UInt64, module: String)? = nil
        for (k, s) in sitesByKey().sorted(by: { $0.key < $1.key }) where s.allSatisfy({ $0.site.kind == .jumpLabel }) {
            let modules = Set(s.map { $0.table.module })
            guard modules.count > 1, session.state(ofKey: k).map({ $0 <= 1 }) == true else { continue }
            if let m = modules.sorted().first(where: { retire($0) }) { pick = (k, m); break }
        }
        let (key, m) = try XCTUnwrap(pick, "a jump-label key with sites in a module that can be retired")
        let state = try XCTUnwrap(session.state(ofKey: key), "the key still has live sites")
        let live = try XCTUnwrap(sitesByKey()[key])
        let flip = try live.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let sink = AdversarialSessionTests.RacingSink()
        var loaded: ExecGateWire.Verdict? = nil
        sink.hook = { loaded = v.authorize(try! boot.module(m).request(guestID: "g"), requestDigest: []) }
        v.auditSink = sink
        let patch = v.authorizePatch(AuthorizePatch(guestID: "g", patches: flip), session: session, requestDigest: [])
        XCTAssertNil(sink.hook, "the race ran")
        let load = try XCTUnwrap(loaded)
        if patch.decision == .allow && load.decision == .allow {
            XCTAssertEqual(session.state(ofKey: key), state,
                           "key 0x\(String(key, radix: 16)) recorded in the patch's state \(1 - state) while \(m), loaded meanwhile, holds its sites in \(state): one key, two states")
        }
        // Now: the load is refused while the patch of its key is decided (the kernel's key mutex),
        // the patch is allowed and recorded; M in the old state is then a plain mismatch, M in the
        // new state loads.
        XCTAssertEqual(patch.decision, .allow, patch.message)
        XCTAssertEqual(load.decision, .deny, load.message)
        XCTAssertEqual(load.reason, .keyStateMismatch, load.message)
        XCTAssertTrue(load.message.contains("being decided"), load.message)
        XCTAssertEqual(session.state(ofKey: key), 1 - state)
        let old = v.authorize(try boot.module(m).request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(old.reason, .keyStateMismatch, old.message)
        // No key stays in flight: the key flips back as a whole and M loads in its state.
        let back = try live.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: state))) }
        XCTAssertEqual(v.authorizePatch(AuthorizePatch(guestID: "g", patches: back), session: session, requestDigest: []).decision, .allow)
        let reload = v.authorize(try boot.module(m).request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(reload.decision, .allow, reload.message)
        // A whole-key batch must now cover M's sites too.
        let partial = v.authorizePatch(AuthorizePatch(guestID: "g", patches: flip), session: session, requestDigest: [])
        XCTAssertEqual(partial.decision, .deny, partial.message)
        XCTAssertEqual(partial.reason, .patchPartialKey, partial.message)
    }

    /// HOLE (round docs2, fixed: GuestSession.judgePatches refuses a key in flight).
    /// Attack (two vCPUs): while an allowed flip of a key is being decided, send a second batch of
    /// the same key (back to its old state). Both were judged against the same recorded state and
    /// both allowed; the session records whichever is finished last, the guest's bytes hold
    /// whichever the VMM poked last, and the two orders need not agree — a key recorded in one
    /// state while its sites hold the other, which later modules are then held to. The kernel never
    /// has two transitions of one key at once (jump_label_mutex, static_call_mutex): the second is
    /// refused, ask again.
    func testTwoTransitionsOfOneKeyAreNotDecidedAtOnce() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().sorted(by: { $0.key < $1.key }).first { _, s in s.allSatisfy { $0.site.kind == .jumpLabel } })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let back = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: state))) }
        let sink = AdversarialSessionTests.RacingSink()
        var second: ExecGateWire.Verdict? = nil
        sink.hook = { second = g.patch(back) }
        g.verifier.auditSink = sink
        let first = g.patch(flip)
        XCTAssertNil(sink.hook, "the race ran")
        XCTAssertEqual(first.decision, .allow, first.message)
        let s2 = try XCTUnwrap(second)
        XCTAssertEqual(s2.decision, .deny, "a second transition of key 0x\(String(key, radix: 16)) decided while the first was: \(s2.message)")
        XCTAssertTrue(s2.message.contains("being decided"), s2.message)
        XCTAssertEqual(g.session.state(ofKey: key), 1 - state)
        // Asked again afterwards, it is judged against the recorded state and allowed.
        XCTAssertEqual(g.patch(back).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: key), state)
    }

    /// The in-flight mark of an allowed patch whose verdict the audit sink refused (`audit-overflow
    /// block`) is cleared too: the key's modules load afterwards, in the key's unchanged state.
    func testARefusedPatchLeavesNoKeyInFlight() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().sorted(by: { $0.key < $1.key }).first { _, s in
            s.allSatisfy { $0.site.kind == .jumpLabel } && s.allSatisfy { $0.table.module == "test_static_keys" }
        })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        struct Refusing: VerdictAuditSink { func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool { !verdict.checks.contains("patch-site") } }
        g.verifier.auditSink = Refusing()
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        let v = g.patch(flip)
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .auditUnrecorded, v.message)
        XCTAssertEqual(g.session.state(ofKey: key), state)
        guard case .retireModuleReply = retire(g, "test_static_keys") else { return XCTFail("retire") }
        let again = try g.load("test_static_keys")
        XCTAssertEqual(again.decision, .allow, "a key left in flight by a refused patch: \(again.message)")
    }

    // MARK: Policy

    /// policy.md: "If a policy says nothing about `text-patches` or `ebpf-jit`, they are
    /// **denied**." Attack: a legal whole-key flip under a policy text with only `modules allow`.
    func testPolicyTextSilentOnTextPatchesDeniesALegalPatch() throws {
        let text = """
        execgate-policy 1
        id silent
        version 3
        mode enforce
        trust kernel-builtin
        modules allow

        """
        let parsed = try PolicyParser.parse(Array(text.utf8), file: "silent.policy", builtinAnchors: try Fixtures.debianCertificates())
        let g = try FixtureGuest { $0 = parsed }
        try g.loadAll()
        // A jump-label key (states 0 and 1), every live site encodable in the other state.
        let flips = g.sitesByKey().sorted { $0.key < $1.key }.compactMap { key, sites -> (UInt64, UInt64, [PatchEntry])? in
            guard let state = g.session.state(ofKey: key), state <= 1, sites.allSatisfy({ $0.site.kind == .jumpLabel }) else { return nil }
            let entries = sites.compactMap { s in s.table.encoding(at: s.site.address, state: 1 - state).map { PatchEntry(address: s.site.address, bytes: $0) } }
            return entries.count == sites.count ? (key, state, entries) : nil
        }
        let (key, state, flip) = try XCTUnwrap(flips.first, "a jump-label key")
        let control = try FixtureGuest()
        try control.loadAll()
        let c = control.patch(flip)
        XCTAssertEqual(c.decision, .allow, "the flip is legal under a policy that allows text patches: \(c.message)")
        let v = g.patch(flip)
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .kindDenied, v.message)
        XCTAssertEqual(v.policyID, "silent")
        XCTAssertEqual(v.policyVersion, 3)
        XCTAssertEqual(g.session.state(ofKey: key), state)
    }

    /// HOLE (round docs2, a doc promise not kept): policy.md `mode audit`: "a verdict enforce would
    /// deny is allowed, flagged `audit_only`" (a rollout "never slows production"); protocol.md
    /// verdict: `grant_frames` "on allow with a region", and the VMM grants EXEC on exactly the
    /// frames a verdict echoes. An audit-only allow carried no `grant_base`/`grant_frames` (they
    /// were filled before audit mode turned the deny into an allow): a VMM following the protocol
    /// granted nothing, so audit mode denied in effect. Now the audit-only allow echoes the
    /// claimed frames, and the module is still never live (its bytes were not verified: nothing
    /// resolves against it, the session holds none of it). Frames without their region stay
    /// unechoed under audit too.
    func testAuditOnlyAllowDoesNotMakeUnverifiedCodeLive() throws {
        let g = try FixtureGuest { $0.mode = .audit }
        var r = try g.request("irqbypass")
        var text = Array(buffer: try XCTUnwrap(r.text))
        text[0x10] ^= 0xff
        r.text = ByteBuffer(bytes: text)
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertTrue(v.auditOnly)
        XCTAssertEqual(v.reason, .claimBytesUnexplained)
        // Not verified, so not live: nothing resolves against it, nothing of it is held.
        XCTAssertNil(g.session.liveModule("irqbypass"))
        XCTAssertEqual(v.grantFrames, r.frames, "an audit-only allow grants the claimed frames")
        XCTAssertEqual(v.grantBase, r.textBase)
        // Under audit, frames without their region (denied claim.frames-invalid, then allowed
        // audit-only) are still no grant.
        var bare = r
        bare.text = nil
        bare.textBase = nil
        let b = g.verifier.authorize(bare, requestDigest: [])
        XCTAssertTrue(b.auditOnly, b.message)
        XCTAssertTrue(b.grantFrames.isEmpty && b.grantBase == nil, "\(b.grantFrames)")
        // Enforce again: the honest module is allowed at the same range and frames (the session
        // never held the audit-only one).
        var p = g.verifier.policy
        p.mode = .enforce
        p.version += 1
        try g.verifier.replacePolicy(p)
        let honest = try g.load("irqbypass")
        XCTAssertEqual(honest.decision, .allow, honest.message)
        XCTAssertFalse(honest.auditOnly)
    }

    /// policy.md `kernel … symbols …`: "a guest registers only with a listed kernel_digest".
    /// Attack: a guest registered before a policy that pins another build keeps its session:
    /// pins apply at registration (and reset), not to guests already registered.
    func testKernelPinsApplyAtRegistrationOnly() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        var p = g.verifier.policy
        p.version += 1
        p.trustedKernels = [KernelPin(kernel: try XCTUnwrap(Digest(algorithm: .sha256, bytes: [UInt8](repeating: 1, count: 32))),
                                      symbols: try XCTUnwrap(Digest(algorithm: .sha256, bytes: [UInt8](repeating: 2, count: 32))))]
        try g.verifier.replacePolicy(p)
        let later = try g.load("stp")
        XCTAssertEqual(later.decision, .allow, "the registered guest keeps its session: \(later.message)")
        var reset = g.registration
        reset.reset = true
        guard case .error(let e) = g.verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset of an unpinned build") }
        XCTAssertEqual(e.code, .untrustedKernel)
        XCTAssertEqual(g.session.allowedModules.sorted(), ["llc", "stp"], "a refused reset changes nothing")
    }

    /// policy.md `deny module-name NAME`: "refuse a module by its **signed** name (`-` ≡ `_`)".
    /// Attack: the deny rule written with dashes, the module loaded with underscores.
    func testDenyModuleNameWithDashesDeniesTheUnderscoredModule() throws {
        let text = """
        execgate-policy 1
        id dashes
        version 4
        mode enforce
        trust kernel-builtin
        deny module-name test-static-key-base
        modules allow
        text-patches allow

        """
        let parsed = try PolicyParser.parse(Array(text.utf8), file: "dashes.policy", builtinAnchors: try Fixtures.debianCertificates())
        let g = try FixtureGuest { $0 = parsed }
        let v = try g.load("test_static_key_base")
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .moduleNameDenied, v.message)
    }

    /// protocol.md verdict `policy_id`/`policy_version`: "the policy that decided". Attack: swap
    /// the policy between two requests of one guest; the later verdicts (module and patch) name
    /// the new policy, a rollback to an older version is refused and changes nothing.
    func testVerdictsNameThePolicyInForceAfterASwap() throws {
        let g = try FixtureGuest()
        let a = try g.load("llc")
        XCTAssertEqual(a.policyID, "test")
        XCTAssertEqual(a.policyVersion, 7)
        var p = g.verifier.policy
        p.id = "next"
        p.version = 8
        try g.verifier.replacePolicy(p)
        let b = try g.load("stp")
        XCTAssertEqual(b.decision, .allow, b.message)
        XCTAssertEqual(b.policyID, "next")
        XCTAssertEqual(b.policyVersion, 8)
        var old = p
        old.id = "old"
        old.version = 7
        XCTAssertThrowsError(try g.verifier.replacePolicy(old))
        XCTAssertEqual(try g.load("mrp").policyID, "next")
    }
}

/// Run-time patches of ftrace sites (docs/trust.md: "an ftrace site may be NOP or a call to a
/// trusted ftrace entry"; protocol.md authorize-patch: "ftrace enable/disable (the guest's
/// `text_poke`)", "an ftrace site's NOP or a call to a trusted ftrace entry"; register-guest: the
/// VMM sends `__fentry__`, `ftrace_caller`, `ftrace_regs_caller`, "which the checks name"), against
/// a registration that names both entries.
final class DocAttack2FtraceTests: XCTestCase {
    private struct Guest {
        let verifier: Verifier
        let boot: CaptureBoot
        let fentry: UInt64, ftraceCaller: UInt64, ftraceRegsCaller: UInt64
        var session: GuestSession { verifier.guests.session("g")! }
        func patch(_ e: [PatchEntry]) -> ExecGateWire.Verdict {
            verifier.authorizePatch(AuthorizePatch(guestID: "g", patches: e), session: session, requestDigest: [])
        }
        /// rel32 instruction `op` at `at` to `to`.
        static func insn(_ op: UInt8, at: UInt64, to: UInt64) -> [UInt8] {
            let rel = UInt32(truncatingIfNeeded: to &- (at &+ 5))
            return [op] + (0..<4).map { UInt8(truncatingIfNeeded: rel >> (8 * $0)) }
        }
    }

    private func guest() throws -> Guest {
        let v = Verifier(policy: Policy(id: "ftrace", version: 2, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var r = try boot.registration(guestID: "g")
        let fentry = try XCTUnwrap(r.symbols.first { $0.name == "__fentry__" })
        // Two core functions after __fentry__ (core text, outside init text), as a build lists them.
        let caller = fentry.address + 0x40, regsCaller = fentry.address + 0x80
        let function = r.symbols.contains { $0.isFunction }
        r.symbols.append(KernelSymbol(name: "ftrace_caller", address: caller, exported: false, isFunction: function))
        r.symbols.append(KernelSymbol(name: "ftrace_regs_caller", address: regsCaller, exported: false, isFunction: function))
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        guard case .registerGuestReply = reply else { throw XCTSkip("registration with ftrace entries refused: \(reply)") }
        for name in boot.availableModules {
            let verdict = v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: [])
            XCTAssertEqual(verdict.decision, .allow, "\(name): \(verdict.message)")
        }
        return Guest(verifier: v, boot: boot, fentry: fentry.address, ftraceCaller: caller, ftraceRegsCaller: regsCaller)
    }

    /// The first `__mcount_loc` site of `module` (an R_X86_64_64 against `.text` + offset) at its
    /// claimed address, and its bytes in the region (NOP5 after ftrace_init_nop()).
    private func ftraceSite(_ g: Guest, _ module: String) throws -> (address: UInt64, bytes: [UInt8]) {
        let m = try g.boot.module(module)
        let off: UInt64 = try m.ko.withUnsafeBytes { raw in
            let e = try ELFFile(bytes: raw)
            let t = try e.symbolTable()
            let rs = try XCTUnwrap(try e.relocationSections().first { e.sections[$0.targetSectionIndex].name == "__mcount_loc" }, "__mcount_loc")
            let text = try XCTUnwrap(e.section(named: ".text"))
            let r = try XCTUnwrap(Array(rs.relocations).first { t.sectionIndex($0.symbolIndex) == UInt16(text.index) && t.value($0.symbolIndex) == 0 })
            return UInt64(r.addend)
        }
        let a = try XCTUnwrap(m.claim.sectionAddresses[".text"]) + off
        let o = Int(a - m.claim.textBase)
        return (a, Array(m.claim.text[o..<o + 5]))
    }

    /// Was a doc promise not kept (fixed in the docs): trust.md and protocol.md promised "an ftrace
    /// site's NOP or a call to a trusted ftrace entry" as run-time patches, but no registration
    /// fact fills the engine's ftrace targets, so an ftrace site is never a run-time patch site.
    /// The docs now say so (fail closed: ftrace on module code is not supported; the kernel's
    /// ftrace_make_call() may also target an ops' own trampoline or a BPF direct call, memory
    /// ExecGate never verified). Attacks, all denied: ftrace "enable" written as a `jmp
    /// ftrace_caller` (e9: the traced function's body skipped, what ftrace_make_call() never
    /// writes), a patch running past the site's 5 bytes, a call one byte into the entry, a call to
    /// `__fentry__`, a 2-byte jmp; and the kernel's own enable/disable, as documented now.
    func testFtraceSiteIsNoRuntimePatchSite() throws {
        let g = try guest()
        let site = try ftraceSite(g, "irqbypass")
        let nop: [UInt8] = [0x0f, 0x1f, 0x44, 0x00, 0x00]
        XCTAssertEqual(site.bytes, nop, "ftrace_init_nop() left NOP5")
        let call = Guest.insn(0xe8, at: site.address, to: g.ftraceCaller)
        let attacks: [(String, [UInt8])] = [
            ("jmp to the entry", Guest.insn(0xe9, at: site.address, to: g.ftraceCaller)),
            ("call + 11 bytes past the site", call + [UInt8](repeating: 0x90, count: 11)),
            ("NOP5 + 11 bytes past the site", nop + [0x48, 0x31, 0xc0, 0xc3] + [UInt8](repeating: 0xcc, count: 7)),
            ("call one byte into the entry", Guest.insn(0xe8, at: site.address, to: g.ftraceCaller + 1)),
            ("call to __fentry__", Guest.insn(0xe8, at: site.address, to: g.fentry)),
            ("2-byte jmp over the site", [0xeb, 0x03]),
            ("call ftrace_caller", call),
            ("call ftrace_regs_caller", Guest.insn(0xe8, at: site.address, to: g.ftraceRegsCaller)),
            ("NOP5", nop),
        ]
        for (what, bytes) in attacks {
            let v = g.patch([PatchEntry(address: site.address, bytes: bytes)])
            XCTAssertEqual(v.decision, .deny, "\(what): \(v.message)")
            XCTAssertEqual(v.reason, .patchNotAllowed, "\(what)")
            XCTAssertTrue(v.message.contains("not the start of a run-time patch site"), "\(what): \(v.message)")
        }
    }
}
