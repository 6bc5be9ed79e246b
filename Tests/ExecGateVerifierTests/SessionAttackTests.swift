// SPDX-License-Identifier: Apache-2.0
//
// Regression tests for issue 9: a compromised guest (any claim, any facts, any patch, no signing
// key) gets no ALLOW for control flow it chose. Each test replays the attack that used to be
// allowed against the real end states in Tests/ExecGateExplainTests/Fixtures (signed Debian
// modules, bytes read from a real guest) and checks the precise deny; the honest path next to it
// must still be allowed.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

/// A verifier with the fixture boot registered as guest "g" (fail-closed default policy).
struct FixtureGuest {
    let verifier: Verifier
    let boot: CaptureBoot
    let registration: RegisterGuest

    init(policy configure: (inout Policy) -> Void = { _ in }) throws {
        var p = Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())
        configure(&p)
        verifier = Verifier(policy: p)
        boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        registration = try boot.registration(guestID: "g")
        let reply = verifier.respond(to: .registerGuest(registration), requestDigest: [0xfa, 0xc7])
        guard case .registerGuestReply = reply else { throw RegistrationRefused(reply: "\(reply)") }
    }

    var session: GuestSession { verifier.guests.session("g")! }  // registered in init

    func request(_ name: String) throws -> AuthorizeModule { try boot.module(name).request(guestID: "g") }

    @discardableResult
    func load(_ name: String) throws -> ExecGateWire.Verdict { verifier.authorize(try request(name), requestDigest: []) }

    func loadAll() throws {
        for name in boot.availableModules {
            let v = try load(name)
            XCTAssertEqual(v.decision, .allow, "\(name): \(v.message)")
        }
    }

    func patch(_ entries: [PatchEntry]) -> ExecGateWire.Verdict {
        verifier.authorizePatch(AuthorizePatch(guestID: "g", patches: entries), session: session, requestDigest: [])
    }

    /// The bytes a live module's region holds at `address` (as claimed when it was allowed).
    func currentBytes(_ address: UInt64, _ length: Int) throws -> [UInt8] {
        for name in boot.availableModules {
            let c = try boot.module(name).claim
            if address >= c.textBase && address + UInt64(length) <= c.textBase + UInt64(c.text.count) {
                let o = Int(address - c.textBase)
                return Array(c.text[o..<o + length])
            }
        }
        throw XCTSkip("no fixture module holds 0x\(String(address, radix: 16))")
    }

    /// Live sites grouped by key (jump labels and static calls), each key's sites across modules.
    func sitesByKey() -> [UInt64: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)]] {
        var out: [UInt64: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)]] = [:]
        for t in session.runtimeSites { for s in t.siteList { if let k = s.key { out[k, default: []].append((t, s)) } } }
        return out
    }
}

final class SessionAttackTests: XCTestCase {
    // MARK: Item 1: live ranges, retire, one name

    /// Attack: allow llc, then claim another module at llc's base and patch "its" range. Now the
    /// overlapping claim is denied before any byte is judged, and patches at llc's addresses stay
    /// judged against llc, the module that owns them.
    func testModuleLaidOverLiveModuleIsDeniedAndPatchesAreJudgedByTheOwner() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        let llcBase = try XCTUnwrap(g.session.liveModule("llc")?.textRange.lowerBound)
        var over = try g.request("irqbypass")
        let shift = llcBase &- over.textBase!
        over.textBase = llcBase
        over.sections = over.sections.map { SectionClaim(name: $0.name, address: $0.address &+ shift, bytes: $0.bytes) }
        over.frames = (0..<over.frames.count).map { 0x9_0000 + UInt64($0) }
        let v = g.verifier.authorize(over, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .claimOverlapsLive)
        XCTAssertTrue(v.message.contains("llc"), v.message)
        XCTAssertEqual(g.session.allowedModules, ["llc"])
        // A 5-byte call written into llc where llc has no patch site: judged against llc, denied.
        let notASite = llcBase + 0x10
        let call = g.patch([PatchEntry(address: notASite, bytes: [0xe8, 0x00, 0x00, 0x00, 0x00])])
        XCTAssertEqual(call.decision, .deny)
        XCTAssertEqual(call.reason, .patchNotAllowed)
        XCTAssertTrue(call.message.contains("llc"), call.message)
    }

    /// Frames: the same guest-physical frame for two claimed pages, or a frame granted to live
    /// code, is denied; the verdict echoes the frames it allows.
    func testFramesAreBoundToTheVerdictAndNeverShared() throws {
        let g = try FixtureGuest()
        let llc = try g.load("llc")
        XCTAssertEqual(llc.decision, .allow, llc.message)
        XCTAssertEqual(llc.grantFrames, try g.request("llc").frames)
        XCTAssertEqual(llc.grantBase, try g.request("llc").textBase)
        XCTAssertEqual(llc.factsDigest, [0xfa, 0xc7], "bound to the registration's facts")
        XCTAssertTrue(llc.checks.contains("frames") && llc.checks.contains("live-ranges"), "\(llc.checks)")

        var stolen = try g.request("irqbypass")
        stolen.frames[0] = llc.grantFrames[0]
        let s = g.verifier.authorize(stolen, requestDigest: [])
        XCTAssertEqual(s.reason, .claimFramesInvalid, s.message)
        XCTAssertTrue(s.message.contains("llc"), s.message)

        var mrp = try g.request("mrp")
        XCTAssertGreaterThanOrEqual(mrp.frames.count, 2)
        mrp.frames[1] = mrp.frames[0]
        XCTAssertEqual(g.verifier.authorize(mrp, requestDigest: []).reason, .claimFramesInvalid)
        mrp.frames = Array(mrp.frames.dropLast())
        XCTAssertEqual(g.verifier.authorize(mrp, requestDigest: []).reason, .claimFramesInvalid)
    }

    func testSameModuleNameTwiceWhileLiveIsDenied() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        let again = try g.load("llc")
        XCTAssertEqual(again.decision, .deny)
        XCTAssertEqual(again.reason, .moduleAlreadyLive)
        // Even at another address with other frames: one live module per name.
        var moved = try g.request("llc")
        moved.textBase! += 0x10_0000
        moved.sections = moved.sections.map { SectionClaim(name: $0.name, address: $0.address + 0x10_0000, bytes: $0.bytes) }
        moved.frames = moved.frames.map { $0 + 0x100 }
        XCTAssertEqual(g.verifier.authorize(moved, requestDigest: []).reason, .moduleAlreadyLive)
    }

    /// retire-module forgets the module (ranges, sites, exports); loading it again at the same
    /// address is then allowed. A module in use, a wrong base or an unknown name is refused.
    func testRetireThenLoadAgainAtTheSameAddressIsAllowed() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        XCTAssertEqual(try g.load("stp").decision, .allow)
        let base = try XCTUnwrap(g.session.liveModule("llc")?.textRange.lowerBound)

        func retire(_ name: String, _ base: UInt64) -> Message {
            g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: [])
        }
        guard case .error(let inUse) = retire("llc", base) else { return XCTFail("llc is used by stp") }
        XCTAssertEqual(inUse.code, .moduleInUse)
        XCTAssertTrue(inUse.message.contains("stp"), inUse.message)
        guard case .error(let wrongBase) = retire("stp", base) else { return XCTFail() }
        XCTAssertEqual(wrongBase.code, .unknownModule)

        let stpBase = try XCTUnwrap(g.session.liveModule("stp")?.textRange.lowerBound)
        guard case .retireModuleReply = retire("stp", stpBase) else { return XCTFail() }
        guard case .retireModuleReply(let r) = retire("llc", base) else { return XCTFail() }
        XCTAssertGreaterThan(r.exportsRemoved, 0, "llc exports symbols stp used")
        XCTAssertEqual(g.session.allowedModules, [])
        XCTAssertNil(g.session.symbolResolver.lookup("llc_sap_open"), "a retired module's exports no longer resolve")
        // stp needs llc's exports: with llc retired it cannot be explained.
        XCTAssertEqual(try g.load("stp").reason, .claimBytesUnexplained)
        // Patches at the retired module's old sites: not live code any more.
        let stray = g.patch([PatchEntry(address: base + 0x20, bytes: [0x66, 0x90])])
        XCTAssertEqual(stray.reason, .patchNotAllowed)
        XCTAssertTrue(stray.message.contains("not in live code"), stray.message)
        // Load again at the same address: allowed; then stp on top of it.
        let again = try g.load("llc")
        XCTAssertEqual(again.decision, .allow, again.message)
        XCTAssertEqual(try g.load("stp").decision, .allow)
        guard case .error(let unknown) = retire("nosuch", base) else { return XCTFail() }
        XCTAssertEqual(unknown.code, .unknownModule)
    }

    // MARK: Item 3: section bytes are the region's bytes

    /// Attack: per-section bytes that differ from the explained region (the region was judged,
    /// the section bytes ignored). Now they must be the region's slice, byte for byte.
    func testSectionBytesThatDifferFromTheRegionAreDenied() throws {
        let g = try FixtureGuest()
        let name = "irqbypass"
        let m = try g.boot.module(name)
        var request = try g.request(name)
        let textAddress = try XCTUnwrap(m.claim.sectionAddresses[".text"])
        let size = try m.ko.withUnsafeBytes { raw -> Int in
            let elf = try ExecGateELFFixture.sections(raw)
            return try XCTUnwrap(elf.first { $0.name == ".text" }).size
        }
        let offset = Int(textAddress - m.claim.textBase)
        let honest = Array(m.claim.text[offset..<offset + size])
        var forged = honest
        forged[min(3, size - 1)] ^= 0xff
        request.sections = request.sections.filter { $0.name != ".text" } + [SectionClaim(name: ".text", address: textAddress, bytes: ByteBuffer(bytes: forged))]
        let v = g.verifier.authorize(request, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .claimSectionBytes)
        XCTAssertTrue(v.message.contains(".text"), v.message)
        XCTAssertEqual(g.session.allowedModules, [])

        request.sections = request.sections.filter { $0.name != ".text" } + [SectionClaim(name: ".text", address: textAddress, bytes: ByteBuffer(bytes: honest))]
        let ok = g.verifier.authorize(request, requestDigest: [])
        XCTAssertEqual(ok.decision, .allow, ok.message)
        XCTAssertTrue(ok.checks.contains("end-state"))
    }

    /// Attack: section bytes (shellcode) with no region, for a registered guest.
    func testShellcodeInSectionBytesWithoutRegionIsDeniedForAGuest() throws {
        for endState in [Policy.EndState.required, .signatureOnly] {
            let g = try FixtureGuest { $0.endState = endState }
            let m = try g.boot.module("irqbypass")
            var request = try g.request("irqbypass")
            let size = try m.ko.withUnsafeBytes { raw in try XCTUnwrap(try ExecGateELFFixture.sections(raw).first { $0.name == ".text" }).size }
            let shellcode: [UInt8] = [0x48, 0xb8, 0x41, 0x41, 0x41, 0x41, 0x00, 0x00, 0x00, 0x00, 0xff, 0xe0]
            request.sections = request.sections.filter { $0.name != ".text" } + [SectionClaim(
                name: ".text", address: m.claim.sectionAddresses[".text"]!, bytes: ByteBuffer(bytes: Array((shellcode + [UInt8](repeating: 0xcc, count: size)).prefix(size))))]
            request.text = nil
            request.textBase = nil
            request.frames = []
            let v = g.verifier.authorize(request, requestDigest: [])
            XCTAssertEqual(v.decision, .deny, "\(endState): \(v.message)")
            XCTAssertEqual(v.reason, .claimSectionBytes, "\(endState)")
            XCTAssertFalse(v.signatureOnly)
        }
    }

    // MARK: Item 4: facts taken once, checked

    /// Attack: register the guest again with `pv_ops[n]` pointing at user space (paravirt call
    /// sites would be "explained" as calls there), or with the retpoline bit cleared.
    func testReRegistrationIsRefusedAndLyingFactsAreImplausible() throws {
        let g = try FixtureGuest()
        XCTAssertEqual(try g.load("llc").decision, .allow)
        let before = g.session

        guard case .error(let again) = g.verifier.respond(to: .registerGuest(g.registration), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(again.code, .guestExists)
        XCTAssertTrue(g.verifier.guests.session("g") === before, "the live session is untouched")

        var lying = g.registration
        lying.reset = true
        lying.pvOps.replaceSubrange(8..<16, with: [0x00, 0x00, 0xad, 0xde, 0xff, 0x7f, 0x00, 0x00])  // pv_ops[1] = 0x7fffdead0000
        guard case .error(let pv) = g.verifier.respond(to: .registerGuest(lying), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(pv.code, .implausibleFacts)
        XCTAssertTrue(pv.message.contains("pv_ops[1]"), pv.message)

        var noRetpoline = g.registration
        noRetpoline.reset = true
        let bit = FeatureBits.debian6_1.retpoline
        noRetpoline.cpuCapabilities[bit / 8] &= ~UInt8(1 << (bit % 8))
        guard case .error(let rp) = g.verifier.respond(to: .registerGuest(noRetpoline), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(rp.code, .implausibleFacts)
        XCTAssertTrue(rp.message.contains("RETPOLINE"), rp.message)

        var badThunk = g.registration
        badThunk.reset = true
        badThunk.returnThunk = 0xffff_ffff_8100_1234
        guard case .error(let th) = g.verifier.respond(to: .registerGuest(badThunk), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(th.code, .implausibleFacts)
        XCTAssertTrue(g.verifier.guests.session("g") === before, "refused registrations change nothing")
        XCTAssertEqual(g.session.allowedModules, ["llc"])

        // An explicit, honest reset drops every verified range.
        var reset = g.registration
        reset.reset = true
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail() }
        XCTAssertFalse(g.verifier.guests.session("g") === before)
        XCTAssertEqual(g.session.allowedModules, [])
        XCTAssertEqual(try g.load("llc").decision, .allow, "after a reset the same load is allowed again")
    }

    // MARK: Item 6: whole-key transitions

    /// Attack: enable one site of a jump-label key with several sites (denied at load, allowed as
    /// a patch before). Now only a batch covering every live site of the key is allowed.
    func testHalfEnabledJumpLabelKeyByPatchIsDenied() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let byKey = g.sitesByKey()
        let (key, sites) = try XCTUnwrap(byKey.filter { $0.value.count >= 2 && $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let flipped = 1 - state
        let all = try sites.map { s in PatchEntry(address: s.site.address, bytes: try XCTUnwrap(s.table.encoding(at: s.site.address, state: flipped))) }
        for e in all { XCTAssertNotEqual(e.bytes, try g.currentBytes(e.address, e.bytes.count), "the flip changes every site") }

        let one = g.patch([all[0]])
        XCTAssertEqual(one.decision, .deny, one.message)
        XCTAssertEqual(one.reason, .patchPartialKey)
        XCTAssertTrue(one.message.contains("of its \(sites.count) live sites"), one.message)
        // The denial names the lowest live site the batch leaves out.
        let lowestLeftOut = try XCTUnwrap(all.dropFirst().map(\.address).min())
        XCTAssertTrue(one.message.contains("missing e.g. 0x\(String(lowestLeftOut, radix: 16))"), one.message)
        let allButOne = g.patch(Array(all.dropLast()))
        XCTAssertEqual(allButOne.reason, .patchPartialKey)
        XCTAssertTrue(allButOne.message.contains("missing e.g. 0x\(String(all.last!.address, radix: 16))"), allButOne.message)
        XCTAssertEqual(g.session.state(ofKey: key), state, "denied batches change no key state")

        // Two states for one key in one batch: denied.
        var mixed = all
        mixed[0] = PatchEntry(address: all[0].address, bytes: try g.currentBytes(all[0].address, all[0].bytes.count))
        XCTAssertEqual(g.patch(mixed).reason, .patchPartialKey)

        let whole = g.patch(all)
        XCTAssertEqual(whole.decision, .allow, whole.message)
        XCTAssertTrue(whole.checks.contains("key-state"))
        XCTAssertEqual(g.session.state(ofKey: key), flipped)
        // And back.
        let back = try sites.map { s in PatchEntry(address: s.site.address, bytes: try XCTUnwrap(s.table.encoding(at: s.site.address, state: state))) }
        XCTAssertEqual(g.patch(back).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: key), state)
    }

    /// Static calls: a run-time retarget (a whole-key batch) may only reach a target trusted for
    /// the key. `commit_creds` is a real core function: not trusted for the key, the batch is
    /// denied; once the operator's registration lists it for that key (`static_call_key.allowed`),
    /// the same batch is allowed and the key's state follows.
    func testStaticCallRetargetNeedsATargetTrustedForTheKey() throws {
        let probe = try FixtureGuest()
        try probe.loadAll()
        let nulls: Set<UInt64> = [0, probe.session.facts.staticCallReturn0 ?? 0]
        let (key, sites) = try XCTUnwrap(probe.sitesByKey().filter { k, v in
            v.allSatisfy { $0.site.kind == .staticCall } && !nulls.contains(probe.session.state(ofKey: k) ?? 0)
        }.min { $0.key < $1.key }, "the fixture has static calls with a function target (ip6_udp_tunnel, irqbypass)")
        let current = try XCTUnwrap(probe.session.state(ofKey: key))
        let target = try XCTUnwrap(probe.registration.symbols.first { $0.name == "commit_creds" }?.address)
        XCTAssertFalse(probe.session.facts.staticCallTrustedTargets[key, default: []].contains(target))

        // Not trusted: denied (no table even encodes it as legal), and nothing moves.
        let untrusted = try sites.map { s in PatchEntry(address: s.site.address, bytes: try XCTUnwrap(genCall(s, target))) }
        let denied = probe.patch(untrusted)
        XCTAssertEqual(denied.decision, .deny, denied.message)
        XCTAssertEqual(denied.reason, .patchNotAllowed)
        XCTAssertEqual(probe.session.state(ofKey: key), current)
        // The key's disabled form is a legal state: NULL, or for a PREEMPT_DYNAMIC key disabled to
        // __static_call_return0 (might_resched here: might_resched_dynamic_disabled) that one only.
        let disabled = StaticCallTrust.disabledForm(ofKey: key, facts: probe.session.facts,
                                                     preemptDynamicKeys: StaticCallTrust.preemptDynamicKeys(coreExports: probe.session.facts.exports)) == .return0
            ? try XCTUnwrap(probe.session.facts.staticCallReturn0) : 0
        let toNull = try sites.map { s in PatchEntry(address: s.site.address, bytes: try XCTUnwrap(s.table.encoding(at: s.site.address, state: disabled))) }
        XCTAssertEqual(probe.patch(toNull).decision, .allow)

        // The operator trusts the target for this key: the same batch is allowed.
        let trusting = try FixtureGuest()
        var reg = trusting.registration
        reg.reset = true
        reg.staticCallKeys = [StaticCallKeyFact(key: key, current: current, allowed: [target])]
        let reply = trusting.verifier.respond(to: .registerGuest(reg), requestDigest: [])
        guard case .registerGuestReply = reply else { return XCTFail("\(reply)") }
        try trusting.loadAll()
        let allowed = trusting.patch(untrusted)
        XCTAssertEqual(allowed.decision, .allow, allowed.message)
        XCTAssertEqual(trusting.session.state(ofKey: key), target)
    }

    /// A call (or, for a tail site, a jump) at the site to `target`, encoded by hand.
    private func genCall(_ s: (table: RuntimeSiteTable, site: RuntimeSiteTable.Site), _ target: UInt64) -> [UInt8]? {
        guard s.site.length == 5, let current = s.table.encoding(at: s.site.address, state: 1) else { return nil }
        let op: UInt8 = current.first == 0xe9 ? 0xe9 : 0xe8
        let disp = Int64(bitPattern: target &- (s.site.address &+ 5))
        guard let d = Int32(exactly: disp) else { return nil }
        let u = UInt32(bitPattern: d)
        return [op, UInt8(u & 0xff), UInt8((u >> 8) & 0xff), UInt8((u >> 16) & 0xff), UInt8(u >> 24)]
    }

    // MARK: Item 4: symbols bound to the kernel build

    /// With `kernel … symbols …` pins, a registration must name a pinned kernel and carry exactly
    /// that build's symbol table; the same build under another KASLR slide still matches.
    func testKernelPinBindsTheSymbolsToTheKernelDigest() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var reg = try boot.registration(guestID: "g")
        reg.kernelDigest = [UInt8](repeating: 0xab, count: 32)
        let probe = Verifier(policy: Policy(id: "probe", version: 1, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply(let first) = probe.respond(to: .registerGuest(reg), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(first.symbolsDigest.count, 32)

        var policy = Policy(id: "pinned", version: 1, trust: try Fixtures.debianTrust())
        policy.trustedKernels = [KernelPin(kernel: try XCTUnwrap(Digest(algorithm: .sha256, bytes: reg.kernelDigest)),
                                           symbols: try XCTUnwrap(Digest(algorithm: .sha256, bytes: first.symbolsDigest)))]
        let v = Verifier(policy: policy)
        func register(_ r: RegisterGuest) -> Message { v.respond(to: .registerGuest(r), requestDigest: []) }

        var otherKernel = reg
        otherKernel.kernelDigest = [UInt8](repeating: 0xcd, count: 32)
        guard case .error(let k) = register(otherKernel) else { return XCTFail("unlisted kernel") }
        XCTAssertEqual(k.code, .untrustedKernel)
        var noDigest = reg
        noDigest.kernelDigest = []
        guard case .error(let n) = register(noDigest) else { return XCTFail("no kernel digest") }
        XCTAssertEqual(n.code, .untrustedKernel)
        // One export moved by 16 bytes (a lie about where a function is): not the pinned table.
        var moved = reg
        let i = try XCTUnwrap(moved.symbols.firstIndex { $0.exported && $0.isText })
        moved.symbols[i].address += 16
        guard case .error(let m) = register(moved) else { return XCTFail("moved export") }
        XCTAssertEqual(m.code, .untrustedKernel)
        XCTAssertNil(v.guests.session("g"))

        // The same build booted at another KASLR slide: every address and pv_ops entry moves.
        var slid = reg
        let slide: UInt64 = 0x1e00_0000
        slid.kaslrSlide = reg.kaslrSlide + slide
        slid.symbols = reg.symbols.map { var s = $0; if s.address >= 0xffff_ffff_8000_0000 { s.address += slide }; return s }
        var ops = reg.pvOps
        for o in stride(from: 0, to: ops.count, by: 8) {
            var e: UInt64 = 0
            for b in 0..<8 { e |= UInt64(ops[o + b]) << (8 * UInt64(b)) }
            if e != 0 { e += slide }
            for b in 0..<8 { ops[o + b] = UInt8(truncatingIfNeeded: e >> (8 * UInt64(b))) }
        }
        slid.pvOps = ops
        guard case .registerGuestReply(let r) = register(slid) else { return XCTFail("\(register(slid))") }
        XCTAssertEqual(r.symbolsDigest, first.symbolsDigest)
    }

    /// Attack (a policy/admin review, 2026-12-05): a guest registered before the operator pinned
    /// its kernel build reboots into a build the policy does not pin; the VMM revokes its grants
    /// and sends reset=1, refused `untrusted-kernel`. The old session stayed live: the guest,
    /// now on an unpinned kernel, kept having modules judged (and allowed) against the old
    /// kernel's facts. A refused reset ends the session: its requests are denied, its modules
    /// are gone; an accepted reset starts the next one.
    func testARefusedResetEndsTheGuestsSession() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let reg = try boot.registration(guestID: "g")
        let v = Verifier(policy: Policy(id: "open", version: 1, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply(let first) = v.respond(to: .registerGuest(reg), requestDigest: []) else { return XCTFail("registration") }
        XCTAssertEqual(v.authorize(try boot.module("llc").request(guestID: "g"), requestDigest: [], arrival: v.guests.arrivalStamp()).decision, .allow)
        // The operator pins another build; the guest reboots into the one it had, now unpinned.
        var pinned = Policy(id: "pinned", version: 2, trust: try Fixtures.debianTrust())
        pinned.trustedKernels = [KernelPin(kernel: try XCTUnwrap(Digest(algorithm: .sha256, bytes: [UInt8](repeating: 0xcd, count: 32))),
                                           symbols: try XCTUnwrap(Digest(algorithm: .sha256, bytes: first.symbolsDigest)))]
        try v.replacePolicy(pinned)
        var reset = reg
        reset.reset = true
        guard case .error(let refused) = v.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("reset into an unpinned kernel accepted") }
        XCTAssertEqual(refused.code, .untrustedKernel)
        // The old session's requests: denied, with its token or without.
        var stp = try boot.module("stp").request(guestID: "g")
        for token: UInt64? in [first.session, nil] {
            stp.session = token
            let after = v.authorize(stp, requestDigest: [], arrival: v.guests.arrivalStamp())
            XCTAssertEqual(after.decision, .deny, "a module allowed in the session a refused reset replaced: \(after.message)")
            XCTAssertEqual(after.reason, .endStateUnavailable, after.message)
            XCTAssertTrue(after.message.contains("reset was refused"), after.message)
        }
        XCTAssertEqual(v.guests.session("g")?.liveBytes, 0, "its live modules' charge went back")
        // An accepted reset (the operator pins the build) starts the next session.
        var fixed = pinned
        fixed.version = 3
        fixed.trustedKernels = []
        try v.replacePolicy(fixed)
        guard case .registerGuestReply(let next) = v.respond(to: .registerGuest(reset), requestDigest: []) else { return XCTFail("the accepted reset") }
        XCTAssertNotEqual(next.session, first.session)
        XCTAssertEqual(v.authorize(try boot.module("llc").request(guestID: "g"), requestDigest: [], arrival: v.guests.arrivalStamp()).decision, .allow)
    }

    /// A verdict the audit sink refuses (audit-overflow block) is a deny: the module it would have
    /// admitted never becomes live, and a patch it would have allowed moves no key.
    func testAuditRefusalRollsBackTheCommit() throws {
        struct Refusing: VerdictAuditSink { func record(_ verdict: ExecGateWire.Verdict, guestID: String, policy: Policy) -> Bool { false } }
        let g = try FixtureGuest()
        try g.loadAll()
        let (key, sites) = try XCTUnwrap(g.sitesByKey().filter { $0.value.allSatisfy { $0.site.kind == .jumpLabel } }.min { $0.key < $1.key })
        let state = try XCTUnwrap(g.session.state(ofKey: key))
        let base = try XCTUnwrap(g.session.liveModule("irqbypass")?.textRange.lowerBound)
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "irqbypass", textBase: base)), requestDigest: []) else { return XCTFail() }

        g.verifier.auditSink = Refusing()
        let v = try g.load("irqbypass")
        XCTAssertEqual(v.decision, .deny)
        XCTAssertEqual(v.reason, .auditUnrecorded)
        XCTAssertNil(g.session.liveModule("irqbypass"), "rolled back")
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }
        XCTAssertEqual(g.patch(flip).reason, .auditUnrecorded)
        XCTAssertEqual(g.session.state(ofKey: key), state, "a refused patch moves no key")

        g.verifier.auditSink = nil
        XCTAssertEqual(try g.load("irqbypass").decision, .allow)
        XCTAssertEqual(g.patch(flip).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: key), 1 - state)
    }
}
