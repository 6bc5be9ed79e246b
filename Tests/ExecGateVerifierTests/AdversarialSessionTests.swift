// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the verdict paths after a module is allowed (authorize-patch, the guest
// session's live state, retire / init-freed / re-registration). The guest kernel chooses every
// byte of a patch, every address, the order of requests and how often it asks. Each test names
// the attack and states why it fails (the rule and the kernel function it mirrors); a test that
// documents a hole says so. Inputs: the committed fixture boot (signed Debian 6.1 modules and
// the bytes a real guest held, Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a).
//
// Not repeated here (SessionAttackTests covers them): a module laid over a live one, shared
// frames, a name loaded twice, retire of a module in use, half a jump-label key, a static call
// retargeted to an untrusted core function, re-registration without reset, kernel pins.

import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class AdversarialSessionTests: XCTestCase {
    // MARK: Helpers

    /// `op rel32` at `site` (an instruction of `length` bytes, the rel32 last) to `target`.
    private func rel32(_ prefix: [UInt8], at site: UInt64, length: Int, to target: UInt64) throws -> [UInt8] {
        let d = try XCTUnwrap(Int32(exactly: Int64(bitPattern: target &- (site &+ UInt64(length)))))
        let u = UInt32(bitPattern: d)
        return prefix + [UInt8(u & 0xff), UInt8((u >> 8) & 0xff), UInt8((u >> 16) & 0xff), UInt8(u >> 24)]
    }

    private func retire(_ g: FixtureGuest, _ name: String) throws -> Message {
        let base = try XCTUnwrap(g.session.liveModule(name)?.textRange.lowerBound, "\(name) is live")
        return g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: [])
    }

    /// The live site table of module `name`.
    private func table(_ g: FixtureGuest, _ name: String) throws -> RuntimeSiteTable {
        try XCTUnwrap(g.session.runtimeSites.first { $0.module == name }, "\(name) has run-time sites")
    }

    /// Re-register guest "g" (reset: its live modules go) with `change` applied to the fixture facts.
    private func reregister(_ g: FixtureGuest, _ change: (inout RegisterGuest) -> Void) throws {
        var r = g.registration
        r.reset = true
        change(&r)
        let reply = g.verifier.respond(to: .registerGuest(r), requestDigest: [])
        guard case .registerGuestReply = reply else { throw RegistrationRefused(reply: "\(reply)") }
    }

    // MARK: Patch geometry

    /// Attacks on where and how long a patch is, at a real 5-byte static-call site of irqbypass
    /// (a live module) and in memory around it. Every one fails because
    /// `RuntimeSiteTable.check` takes a patch only at the *start* of a known site and only with
    /// exactly the site's length (text_poke_bp() writes one whole instruction per site), and
    /// `judgePatches` takes only addresses inside a live module's granted region:
    ///   - the first 2 bytes of the site (half of a multi-byte site), then the other 3 at site+2;
    ///   - the site plus the byte after it (a site and its neighbour in one write);
    ///   - no bytes at all;
    ///   - one address twice in a batch (a legal write and a second, different one);
    ///   - core kernel text (`commit_creds`), address 0, the top of the address space;
    ///   - the module's core allocation past its executable region (its data).
    func testPatchGeometryAttacksAreDenied() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let t = try table(g, "irqbypass")
        let site = try XCTUnwrap(t.siteList.first { $0.kind == .staticCall && $0.length == 5 })
        let key = try XCTUnwrap(site.key)
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let legal = try XCTUnwrap(t.encoding(at: site.address, state: state))
        XCTAssertEqual(legal, try g.currentBytes(site.address, 5), "the site holds its current state's encoding")

        func denied(_ entries: [PatchEntry], _ why: String, file: StaticString = #filePath, line: UInt = #line) {
            let v = g.patch(entries)
            XCTAssertEqual(v.decision, .deny, v.message, file: file, line: line)
            XCTAssertEqual(v.reason, .patchNotAllowed, v.message, file: file, line: line)
            XCTAssertTrue(v.message.contains(why), "expected '\(why)' in: \(v.message)", file: file, line: line)
        }
        denied([PatchEntry(address: site.address, bytes: Array(legal[0..<2]))], "patch of 2 bytes, the site is 5")
        denied([PatchEntry(address: site.address + 2, bytes: Array(legal[2...]))], "is not the start of a run-time patch site")
        denied([PatchEntry(address: site.address, bytes: legal + [0xcc])], "patch of 6 bytes, the site is 5")
        denied([PatchEntry(address: site.address, bytes: [])], "patch of 0 bytes")
        denied([PatchEntry(address: site.address, bytes: legal), PatchEntry(address: site.address, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])],
               "appears twice in the batch")
        let commitCreds = try XCTUnwrap(g.registration.symbols.first { $0.name == "commit_creds" }?.address)
        denied([PatchEntry(address: commitCreds, bytes: [0xc3])], "is not in live code")
        denied([PatchEntry(address: 0, bytes: [0xc3])], "is not in live code")
        denied([PatchEntry(address: UInt64.max, bytes: [0xc3])], "is not in live code")
        let m = try XCTUnwrap(g.session.liveModule("irqbypass"))
        if m.coreRange.upperBound > m.textRange.upperBound {
            denied([PatchEntry(address: m.textRange.upperBound, bytes: [0xc3])], "is not in live code")
        }
        XCTAssertEqual(g.session.state(ofKey: key), state, "nothing moved")
    }

    // MARK: Encodings the kernel never writes

    /// Attack: rewrite a jump-label site of test_static_keys into a jump somewhere else — one
    /// byte past its own target, one byte before it, or a conditional jump / call to it.
    /// Fails: `__jump_label_patch()` writes exactly `x86_nops[size]` or `jmp <the entry's own
    /// target>` (text_gen_insn()); the site's rule holds exactly those two encodings
    /// (`.jumpLabel(nop:jmp:)`), whatever the key's state.
    func testJumpLabelSiteRetargetedElsewhereIsDenied() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let byKey = g.sitesByKey()
        let (key, sites) = try XCTUnwrap(byKey.filter { $0.value.count == 1 && $0.value[0].site.kind == .jumpLabel }.min { $0.key < $1.key })
        let (t, site) = sites[0]
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        // The jump form is the encoding of the state in which the site jumps (e9 rel32 or eb rel8).
        let jmpForm = try XCTUnwrap([t.encoding(at: site.address, state: 0), t.encoding(at: site.address, state: 1)].compactMap { $0 }.first { $0.first == 0xe9 || $0.first == 0xeb })
        var past = jmpForm, before = jmpForm, cond = jmpForm
        past[1] = past[1] &+ 1
        before[1] = before[1] &- 1
        cond[0] = jmpForm[0] == 0xe9 ? 0xe8 : 0x74  // call rel32 / je rel8 to the same target
        for bytes in [past, before, cond] {
            let v = g.patch([PatchEntry(address: site.address, bytes: bytes)])
            XCTAssertEqual(v.decision, .deny, v.message)
            XCTAssertEqual(v.reason, .patchNotAllowed)
            XCTAssertTrue(v.message.contains("not a legal encoding"), v.message)
        }
        XCTAssertEqual(g.session.state(ofKey: key), state)
        // The honest flip of the same site (the whole key: its one site) is allowed.
        XCTAssertEqual(g.patch([PatchEntry(address: site.address, bytes: try XCTUnwrap(t.encoding(at: site.address, state: 1 - state)))]).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: key), 1 - state)
    }

    /// Attack: retarget irqbypass's static-call key (4 sites, whole key) to forms the kernel never
    /// writes: one byte into its trusted target (mid-instruction), a `call __static_call_return0`
    /// (the kernel writes `2e 2e 2e 31 c0` instead: `__static_call_transform()`), a jmp at a call
    /// site (the site's kind is fixed: `__static_call_validate()`), and the key of ip6_udp_tunnel's
    /// static call's current target. Fails: each site's rule holds only NOP5, the return0 form and a
    /// call to a target trusted for that key (RuntimeSites.swift `.staticCall`), so no entry of the
    /// batch is a legal encoding.
    func testStaticCallRetargetToFormsTheKernelNeverWritesIsDenied() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let t = try table(g, "irqbypass")
        let sites = t.siteList.filter { $0.kind == .staticCall }
        let key = try XCTUnwrap(sites.first?.key)
        XCTAssertTrue(sites.allSatisfy { $0.key == key && $0.length == 5 })
        XCTAssertEqual(Set(g.sitesByKey()[key]?.map(\.site.address) ?? []), Set(sites.map(\.address)), "the batch covers the whole key")
        let target = try XCTUnwrap(g.session.state(ofKey: key))
        let ret0 = try XCTUnwrap(g.session.facts.staticCallReturn0)
        let current = try sites.map { try XCTUnwrap(t.encoding(at: $0.address, state: target)) }
        XCTAssertTrue(current.allSatisfy { $0.first == 0xe8 }, "call sites")
        for (what, make) in [("mid-function", { (a: UInt64) in try self.rel32([0xe8], at: a, length: 5, to: target + 1) }),
                             ("call __static_call_return0", { (a: UInt64) in try self.rel32([0xe8], at: a, length: 5, to: ret0) }),
                             ("jmp at a call site", { (a: UInt64) in try self.rel32([0xe9], at: a, length: 5, to: target) })] as [(String, (UInt64) throws -> [UInt8])] {
            let batch = try sites.map { PatchEntry(address: $0.address, bytes: try make($0.address)) }
            let v = g.patch(batch)
            XCTAssertEqual(v.decision, .deny, "\(what): \(v.message)")
            XCTAssertEqual(v.reason, .patchNotAllowed, what)
            XCTAssertTrue(v.message.contains("not a legal encoding"), "\(what): \(v.message)")
        }
        XCTAssertEqual(g.session.state(ofKey: key), target)
        // The key's disabled form is allowed (whole key): might_resched_dynamic_disabled is the
        // return0 form (its NULL form, NOP5, is no state of the key: DocAttack8Tests).
        let xor5 = try sites.map { PatchEntry(address: $0.address, bytes: try XCTUnwrap(t.encoding(at: $0.address, state: ret0))) }
        XCTAssertEqual(xor5.first?.bytes, [0x2e, 0x2e, 0x2e, 0x31, 0xc0])
        XCTAssertEqual(g.patch(xor5).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: key), ret0)
    }

    // MARK: Order: patches of code that is not (or no longer) live

    /// Attack: patch a module's sites before the module is allowed, after its load was denied,
    /// and after it was retired. Fails each time: a patch is judged only against live modules
    /// this verifier allowed for the guest (`judgePatches` finds no owner: "not in live code");
    /// a denied module never enters the live set; retire removes its range and sites.
    func testPatchesOfCodeNotLiveAreDenied() throws {
        // The sites, learned from a guest where test_static_keys is live.
        let probe = try FixtureGuest()
        try probe.loadAll()
        let t = try table(probe, "test_static_keys")
        let site = try XCTUnwrap(t.siteList.first { $0.kind == .jumpLabel })
        let state = try XCTUnwrap(probe.session.state(ofKey: try XCTUnwrap(site.key)))
        let flip = PatchEntry(address: site.address, bytes: try XCTUnwrap(t.encoding(at: site.address, state: 1 - state)))

        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("test_static_key_base").decision, .allow)
        let before = g.patch([flip])
        XCTAssertEqual(before.reason, .patchNotAllowed)
        XCTAssertTrue(before.message.contains("not in live code"), before.message)

        // A load of the module with one byte of its region changed is denied; its sites stay dead.
        var bad = try g.request("test_static_keys")
        var text = Array(buffer: try XCTUnwrap(bad.text))
        let o = Int(site.address - bad.textBase!) + site.length  // the byte after the site: code, not a site
        text[o] ^= 0xff
        bad.text = ByteBuffer(bytes: text)
        let denied = g.verifier.authorize(bad, requestDigest: [])
        XCTAssertEqual(denied.decision, .deny, denied.message)
        XCTAssertEqual(g.patch([flip]).reason, .patchNotAllowed)
        XCTAssertNil(g.session.liveModule("test_static_keys"))

        XCTAssertEqual(try g.load("test_static_keys").decision, .allow)
        guard case .retireModuleReply = try retire(g, "test_static_keys") else { return XCTFail("retire") }
        let after = g.patch([flip])
        XCTAssertEqual(after.reason, .patchNotAllowed)
        XCTAssertTrue(after.message.contains("not in live code"), after.message)
        // The key's state left with its last live site; the module loads again in its own state.
        XCTAssertNil(g.session.state(ofKey: try XCTUnwrap(site.key)))
        XCTAssertEqual(try g.load("test_static_keys").decision, .allow)
    }

    /// Attack: retire a module whose keys another live module's sites use (test_static_key_base
    /// defines the jump-label keys test_static_keys uses), then patch those sites as if the keys
    /// had gone. Fails: retire refuses a module in use (the kernel's ref_module() / try_stop_module()),
    /// so the keys and their exports stay; after test_static_keys goes, test_static_key_base's
    /// exports stop resolving (a later module cannot link against the retired one).
    func testKeysOfARetiredModuleDoNotOutliveIt() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        guard case .error(let inUse) = try retire(g, "test_static_key_base") else { return XCTFail("in use") }
        XCTAssertEqual(inUse.code, .moduleInUse)
        guard case .retireModuleReply = try retire(g, "test_static_keys") else { return XCTFail("retire") }
        guard case .retireModuleReply(let r) = try retire(g, "test_static_key_base") else { return XCTFail("retire") }
        XCTAssertGreaterThan(r.exportsRemoved, 0)
        let v = try g.load("test_static_keys")
        XCTAssertEqual(v.decision, .deny, "its keys' module is gone: \(v.message)")
        XCTAssertEqual(v.reason, .claimBytesUnexplained)
    }

    // MARK: Timing

    /// Attack: ask for the same module many times at once (eight concurrent authorize-module
    /// requests for llc, same claim, same frames), hoping two pass the live-set checks before
    /// either is recorded. Fails: the preflight is only an early answer; `GuestSession.commit`
    /// re-checks name, ranges and frames under the session lock and records in the same step,
    /// so exactly one is allowed and the others are denied (module-already-live, the overlap /
    /// frame checks, or duplicate exports when the explanation's snapshot already holds the winner).
    func testConcurrentLoadsOfOneModuleAllowExactlyOne() throws {
        let g = try FixtureGuest()
        let request = try g.request("llc")
        let lock = NSLock()
        nonisolated(unsafe) var verdicts: [ExecGateWire.Verdict] = []
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let v = g.verifier.authorize(request, requestDigest: [])
            lock.lock()
            verdicts.append(v)
            lock.unlock()
        }
        XCTAssertEqual(verdicts.count, 8)
        XCTAssertEqual(verdicts.filter { $0.decision == .allow }.count, 1, verdicts.map(\.message).joined(separator: "\n"))
        for v in verdicts where v.decision != .allow {
            // Which check sees the winner first depends on timing: the live-set checks, or the
            // explanation (its snapshot already holds llc's exports: duplicate-export).
            XCTAssertTrue([.moduleAlreadyLive, .claimOverlapsLive, .claimFramesInvalid].contains(v.reason)
                          || (v.reason == .claimBytesUnexplained && v.message.contains("duplicate")), "\(v.reason): \(v.message)")
        }
        XCTAssertEqual(g.session.allowedModules, ["llc"])
    }

    /// The product's judge, with a hook that runs after the explanation and before the verdict is
    /// committed: a request of another vCPU landing in that window, made deterministic.
    final class RacingJudge: EndStateJudge, @unchecked Sendable {
        var afterExplaining: ((String) -> Void)?
        func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult {
            let r = ExplainerJudge().judge(elf: elf, moduleName: moduleName, request: request, session: session)
            afterExplaining?(moduleName)
            return r
        }
    }

    /// Attack: load stp, which links against llc's exports, and retire llc while stp is being
    /// explained (another vCPU's delete_module, the VMM's retire-module). The explanation used the
    /// snapshot with llc's exports; if stp were then committed without a dependency on llc, stp
    /// would be live with calls into llc's revoked text — and a module loaded at llc's old address
    /// next would receive them at whatever its code holds there. Must be denied: the kernel
    /// takes the reference (resolve_symbol() → ref_module()) before llc can go, and
    /// try_stop_module() refuses a module in use.
    func testRetireRacingTheExplanationOfAUserIsDenied() throws {
        let judge = RacingJudge()
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()), endState: judge)
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else { return XCTFail("register") }
        XCTAssertEqual(v.authorize(try boot.module("llc").request(guestID: "g"), requestDigest: []).decision, .allow)
        let session = try XCTUnwrap(v.guests.session("g"))
        let llcBase = try XCTUnwrap(session.liveModule("llc")?.textRange.lowerBound)
        nonisolated(unsafe) var retired = false
        judge.afterExplaining = { name in
            guard name == "stp", !retired else { return }
            retired = true
            let reply = v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "llc", textBase: llcBase)), requestDigest: [])
            guard case .retireModuleReply = reply else { return XCTFail("llc is not used yet: \(reply)") }
        }
        let stp = v.authorize(try boot.module("stp").request(guestID: "g"), requestDigest: [])
        XCTAssertTrue(retired)
        XCTAssertNil(session.liveModule("llc"))
        XCTAssertEqual(stp.decision, .deny, "stp allowed with llc gone: \(stp.message)")
        XCTAssertEqual(stp.reason, .claimBytesUnexplained)
        XCTAssertTrue(stp.message.contains("retired while it was explained"), stp.message)
        XCTAssertNil(session.liveModule("stp")?.name)
        // Asked again in order, both load, and stp holds llc (retire refused while stp is live).
        XCTAssertEqual(v.authorize(try boot.module("llc").request(guestID: "g"), requestDigest: []).decision, .allow)
        XCTAssertEqual(v.authorize(try boot.module("stp").request(guestID: "g"), requestDigest: []).decision, .allow)
        XCTAssertEqual(session.liveModule("stp")?.dependsOn, ["llc"])
    }

    /// Runs `hook` once, on the first patch verdict it records: another vCPU's requests landing
    /// between the judgement of a patch and the recording of its key states.
    final class RacingSink: VerdictAuditSink, @unchecked Sendable {
        let lock = NSLock()
        var hook: (() -> Void)?
        func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool {
            guard verdict.checks.contains("patch-site") else { return true }
            lock.lock()
            let h = hook
            hook = nil
            lock.unlock()
            h?()
            return true
        }
    }

    /// Attack: flip a jump-label key of test_static_keys and, while that patch's verdict is being
    /// finished, retire test_static_keys and load it again (its claim holds the key's old state).
    /// The allowed patch was about sites that are gone; recording its state on the key would
    /// leave the session believing the key flipped while the live module's granted bytes hold
    /// the old state — a later module with sites of the key would then be admitted in the other
    /// state (a half-enabled key). Fails now: the key states of a batch are recorded only if no
    /// live module was removed since it was judged (GuestSession.removals). Round docs4: the
    /// patch's verdict is a deny too (its sites are gone: the VMM must not poke them into
    /// whatever was loaded there since, DocAttack4Tests), naming the retired module.
    func testPatchRacingARetireDoesNotMoveTheReloadedModulesKey() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let t = try table(g, "test_static_keys")
        let site = try XCTUnwrap(t.siteList.first { $0.kind == .jumpLabel && g.sitesByKey()[$0.key!]?.count == 1 })
        let key = try XCTUnwrap(site.key)
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let sink = RacingSink()
        var reload: ExecGateWire.Verdict? = nil
        sink.hook = {
            guard case .retireModuleReply = try? self.retire(g, "test_static_keys") else { return XCTFail("retire") }
            reload = try? g.load("test_static_keys")
        }
        g.verifier.auditSink = sink
        let flip = g.patch([PatchEntry(address: site.address, bytes: try XCTUnwrap(t.encoding(at: site.address, state: 1 - state)))])
        XCTAssertEqual(flip.decision, .deny, flip.message)
        XCTAssertEqual(flip.reason, .patchNotAllowed, flip.message)
        XCTAssertTrue(flip.message.contains("was retired while this patch was decided"), flip.message)
        XCTAssertNil(sink.hook, "the race ran")
        // The reload landing while the patch of its key is decided is refused, ask again (the
        // kernel holds jump_label_mutex for both: DocAttack2SessionTests); asked again, it loads.
        XCTAssertEqual(reload?.reason, .keyStateMismatch, reload?.message ?? "")
        XCTAssertTrue(reload?.message.contains("being decided") ?? false, reload?.message ?? "")
        XCTAssertNil(g.session.state(ofKey: key), "no live site of the key: nothing recorded")
        XCTAssertEqual(try g.load("test_static_keys").decision, .allow)
        XCTAssertNotNil(g.session.liveModule("test_static_keys"))
        XCTAssertEqual(try g.currentBytes(site.address, site.length), try XCTUnwrap(t.encoding(at: site.address, state: state)), "the reload's granted bytes")
        XCTAssertEqual(g.session.state(ofKey: key), state, "the key state is the live module's, not the stale patch's")
    }

    // MARK: SMP lock prefixes

    /// A guest booted with one present CPU of two possible (the fixture boot: its modules' prefixes
    /// hold `3e`): `alternative_instructions()` patches uniprocessor (`uniproc_patched`), every
    /// `.smp_locks` prefix of a module loaded then is `3e` (alternatives_smp_module_add() →
    /// alternatives_smp_unlock()), and bringing the second CPU online runs
    /// `alternatives_enable_smp()`, which turns every tracked prefix into `lock` (`f0`) and clears
    /// `uniproc_patched` — once. Since Linux 3.11 (commit 816afe4ff98e, "x86/smp: Don't ever patch
    /// back to UP if we unplug cpus") nothing turns `f0` into `3e` again: 6.1
    /// arch/x86/kernel/alternative.c has no SMP→UP path.
    private func upPatchedGuest() throws -> FixtureGuest {
        let g = try FixtureGuest()
        try reregister(g) { $0.presentCPUs = 1; $0.possibleCPUs = 2 }
        return g
    }

    /// Attack: on such a guest, let the second CPU come online (the legal `3e` → `f0` batch),
    /// then patch every live prefix back to `3e` as one whole-group batch: atomic
    /// read-modify-writes of every module become plain ones while two CPUs run them (reference
    /// counts, list updates: races the guest times). Must be denied: the kernel never writes it.
    func testLockPrefixesAreNeverStrippedOnceTheGuestWentSMP() throws {
        let g = try upPatchedGuest()
        try g.loadAll()
        let locks = g.session.runtimeSites.flatMap { $0.siteList.filter { $0.kind == .smpLock } }
        XCTAssertFalse(locks.isEmpty, "the fixture modules have .smp_locks prefixes in .text")
        let group = try XCTUnwrap(locks.first?.key)
        XCTAssertEqual(g.session.state(ofKey: group), 0, "uniprocessor: the captured prefixes are 3e")
        for s in locks { XCTAssertEqual(try g.currentBytes(s.address, 1), [0x3e]) }

        // Half the group: denied, the message naming the lock-prefix group (not its internal key).
        let half = g.patch(locks.dropLast().map { PatchEntry(address: $0.address, bytes: [0xf0]) })
        XCTAssertEqual(half.reason, .patchPartialKey, half.message)
        XCTAssertTrue(half.message.contains(".smp_locks lock-prefix group"), half.message)
        XCTAssertFalse(half.message.contains(String(group, radix: 16)), half.message)
        let toSMP = g.patch(locks.map { PatchEntry(address: $0.address, bytes: [0xf0]) })
        XCTAssertEqual(toSMP.decision, .allow, "alternatives_enable_smp(): \(toSMP.message)")
        XCTAssertEqual(g.session.state(ofKey: group), 1)

        let strip = g.patch(locks.map { PatchEntry(address: $0.address, bytes: [0x3e]) })
        XCTAssertEqual(strip.decision, .deny, "lock prefixes stripped on an SMP guest: \(strip.message)")
        XCTAssertEqual(strip.reason, .patchNotAllowed)
        XCTAssertEqual(g.session.state(ofKey: group), 1)

        // A guest that booted SMP (the fixture's own facts: not uniprocessor-patched) has no
        // run-time lock sites at all: the prefixes are fixed bytes, and writing 3e over one is a
        // patch at no site.
        let smp = try FixtureGuest()
        try smp.loadAll()
        XCTAssertTrue(smp.session.runtimeSites.allSatisfy { $0.siteList.allSatisfy { $0.kind != .smpLock } })
        let one = smp.patch([PatchEntry(address: locks[0].address, bytes: [0x3e])])
        XCTAssertEqual(one.reason, .patchNotAllowed)
        XCTAssertTrue(one.message.contains("is not the start of a run-time patch site"), one.message)
    }

    /// Attack (the same one-way rule, through the live set): after the guest went SMP, retire
    /// every module with `.smp_locks` prefixes (the session forgets a group's state when its last
    /// site leaves) and load one whose prefixes are `3e`. `alternatives_smp_module_add()` unlocks
    /// a module only while `uniproc_patched` is set, which `alternatives_enable_smp()` cleared for
    /// good: such a module never exists on that guest. Must be denied (key-state).
    func testLockPrefixStateIsNotForgottenWhenItsModulesRetire() throws {
        let g = try upPatchedGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        let locks = try table(g, "llc").siteList.filter { $0.kind == .smpLock }
        XCTAssertFalse(locks.isEmpty, "llc has .smp_locks prefixes")
        let group = try XCTUnwrap(locks.first?.key)
        XCTAssertEqual(g.patch(locks.map { PatchEntry(address: $0.address, bytes: [0xf0]) }).decision, .allow, "went SMP")
        XCTAssertEqual(g.session.state(ofKey: group), 1)
        guard case .retireModuleReply = try retire(g, "llc") else { return XCTFail("retire") }

        let unlocked = try g.load("llc")  // its captured prefixes are 3e
        XCTAssertEqual(unlocked.decision, .deny, "an unlocked module after the guest went SMP: \(unlocked.message)")
        XCTAssertEqual(unlocked.reason, .keyStateMismatch)

        // With lock prefixes (what the kernel loads after going SMP) the module is allowed.
        var locked = try g.request("llc")
        var text = Array(buffer: try XCTUnwrap(locked.text))
        for s in locks { text[Int(s.address - locked.textBase!)] = 0xf0 }
        locked.text = ByteBuffer(bytes: text)
        let v = g.verifier.authorize(locked, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(g.session.state(ofKey: group), 1)
    }

    // MARK: Registration facts

    /// Attack (a VMM that reads the wrong word, or a hostile peer of the VMM port): register a
    /// static-call "key" that is no key of the core kernel — an address in the module area where
    /// a later module's own `struct static_call_key` will be, and a user-space address — with a
    /// real core function (`commit_creds`) as its trusted target. The facts plausibility rules
    /// (FactsPlausibility.swift, header) say the key is `__SCK__<name>` or a core trampoline
    /// `__SCT__<name>`: `static_call_add_module()` only ever writes a core key's target at a site
    /// whose key is that core key. Must be refused (implausible-facts), as a target that is no
    /// function entry is.
    func testStaticCallKeyThatIsNoCoreKeyIsImplausible() throws {
        let g = try FixtureGuest()
        let commitCreds = try XCTUnwrap(g.registration.symbols.first { $0.name == "commit_creds" }?.address)
        let realKey = try XCTUnwrap(g.registration.symbols.first { $0.name.hasPrefix("__SCK__") }?.address, "the fixture's symbols name static-call keys")
        for bogus: UInt64 in [0xffff_ffff_c0fc_3400, 0x0000_7fff_0000_1000, commitCreds] {
            var r = g.registration
            r.guestID = "h"
            r.staticCallKeys = [StaticCallKeyFact(key: bogus, current: 0, allowed: [commitCreds])]
            let reply = g.verifier.respond(to: .registerGuest(r), requestDigest: [])
            guard case .error(let e) = reply else { return XCTFail("key 0x\(String(bogus, radix: 16)) accepted: \(reply)") }
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
        }
        // A real core key with a core function entry is the operator's word, and accepted.
        var r = g.registration
        r.guestID = "h"
        r.staticCallKeys = [StaticCallKeyFact(key: realKey, current: 0, allowed: [commitCreds])]
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("a real key") }

        // The same build at another KASLR slide shares the copy: its key is the real key moved by
        // that slide; the unmoved address is no key of that guest.
        let slide: UInt64 = 0x1e00_0000
        var slid = g.registration
        slid.guestID = "k"
        slid.kaslrSlide = g.registration.kaslrSlide + slide
        slid.symbols = g.registration.symbols.map { var x = $0; if x.address >= 0xffff_ffff_8000_0000 { x.address += slide }; return x }
        var ops = slid.pvOps
        for o in stride(from: 0, to: ops.count - ops.count % 8, by: 8) {
            var e: UInt64 = 0
            for b in 0..<8 { e |= UInt64(ops[o + b]) << (8 * UInt64(b)) }
            if e != 0 { e += slide }
            for b in 0..<8 { ops[o + b] = UInt8(truncatingIfNeeded: e >> (8 * UInt64(b))) }
        }
        slid.pvOps = ops
        slid.returnThunk = slid.returnThunk.map { $0 + slide }
        slid.staticCallKeys = [StaticCallKeyFact(key: realKey, current: 0, allowed: [commitCreds + slide])]
        guard case .error(let unmoved) = g.verifier.respond(to: .registerGuest(slid), requestDigest: []) else { return XCTFail("the unmoved key at another slide") }
        XCTAssertEqual(unmoved.code, .implausibleFacts, unmoved.message)
        slid.staticCallKeys = [StaticCallKeyFact(key: realKey + slide, current: 0, allowed: [commitCreds + slide])]
        let moved = g.verifier.respond(to: .registerGuest(slid), requestDigest: [])
        guard case .registerGuestReply = moved else { return XCTFail("the moved key: \(moved)") }
        XCTAssertEqual(g.verifier.guests.sharedBuilds.count, 1, "one shared copy for g, h and k")
    }

    /// Attack (facts shaped so that a later claim is explainable): register the build with
    /// `__per_cpu_end` moved down below core per-cpu variables (`this_cpu_off`, `__preempt_count`),
    /// so that the module per-cpu reserve `[__per_cpu_end, + PERCPU_MODULE_RESERVE)` the per-cpu
    /// check admits (trust.md "Per-cpu data") covers them: a module's `%gs:` accesses to its own
    /// per-cpu data would then be explained while they hit the core's per-cpu state. The kernel's
    /// linker script ends the core per-cpu section after every core per-cpu variable
    /// (PERCPU_SECTION / `__per_cpu_end`, include/asm-generic/vmlinux.lds.h). Must be refused.
    func testPerCPUEndBelowCorePerCPUVariablesIsImplausible() throws {
        let g = try FixtureGuest()
        var r = g.registration
        r.guestID = "h"
        let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "__per_cpu_end" })
        let preempt = try XCTUnwrap(r.symbols.first { $0.name == "__preempt_count" }?.address)
        XCTAssertLessThan(preempt, r.symbols[i].address)
        r.symbols[i].address = preempt & ~0xfff  // the reserve now starts below __preempt_count
        let reply = g.verifier.respond(to: .registerGuest(r), requestDigest: [])
        guard case .error(let e) = reply else { return XCTFail("__per_cpu_end below core per-cpu variables accepted: \(reply)") }
        XCTAssertEqual(e.code, .implausibleFacts, e.message)
    }

    // MARK: Init memory

    /// Attack: report init freed for a module that claimed no init text, for a name that is not
    /// live, and twice. Fails: `initFreed` answers only for a live module with granted init text
    /// (unknown-module otherwise); nothing in the session changes.
    func testInitFreedForNoInitTextIsRefused() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        for name in ["llc", "stp"] {
            guard case .error(let e) = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: name, initBase: 0xffff_ffff_c200_0000)), requestDigest: []) else {
                return XCTFail("\(name): no init text was granted")
            }
            XCTAssertEqual(e.code, .unknownModule)
        }
        XCTAssertNotNil(g.session.liveModule("llc"))
    }
}
