// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the session rules for init text and for static-call key states across a
// module's retire and reload. The guest chooses every byte of a claim and of a patch and the order
// of requests; a crafted module stands for one a trusted key holder signed: here a real signed
// Debian module edited in place and signed again by a test key the policy trusts next to Debian's.
// Each test names the attack and says why it fails (the rule and the kernel function it mirrors);
// a test that documented a hole says where it was fixed.
// Inputs: the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

/// A test signing key (ECDSA P-256: quick to make) the crafted modules are signed with.
private let craftSigner: ModuleSigner = {
    let (key, cert) = try! GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "ExecGate adversarial test key").load()
    return try! ModuleSigner(key: key, certificate: cert)
}()

/// The fixture guest, with the test key trusted besides Debian's.
private func craftGuest() throws -> FixtureGuest {
    let certs = try Fixtures.debianCertificates() + [craftSigner.certificate]
    return try FixtureGuest { $0.trust = TrustStore(certs) }
}

/// In-place edits of a signed module's ELF (its Debian signature is replaced when signed again).
private struct Craft {
    var ko: [UInt8]
    func elf<T>(_ body: (ELFFile) throws -> T) throws -> T { try ko.withUnsafeBytes { try body(try ELFFile(bytes: $0)) } }
    mutating func put<T: FixedWidthInteger>(_ v: T, at o: Int) {
        for k in 0..<MemoryLayout<T>.size { ko[o + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
    }
    func section(_ name: String) throws -> ELFSection { try XCTUnwrap(try elf { $0.section(named: name) }, name) }
    func symbolIndex(_ name: String) throws -> Int {
        try XCTUnwrap(try elf { e in let t = try e.symbolTable(); return t.indices.first { t.name($0) == name } }, name)
    }
    func symbolEntry(_ i: Int) throws -> Int { try elf { try $0.symbolTableSection().fileRange.lowerBound } + 24 * i }
    /// Renames symbol `i` in place (the new name no longer than the old one).
    mutating func rename(_ i: Int, to new: String) throws {
        let (strtab, old): (Range<Int>, String) = try elf { e in (e.sections[Int(try e.symbolTableSection().link)].fileRange, try e.symbolTable().name(i)) }
        XCTAssertLessThanOrEqual(new.utf8.count, old.utf8.count)
        var nameAt = 0
        for k in 0..<4 { nameAt |= Int(ko[try symbolEntry(i) + k]) << (8 * k) }
        let at = strtab.lowerBound + nameAt
        for (k, b) in new.utf8.enumerated() { ko[at + k] = b }
        ko[at + new.utf8.count] = 0
    }
    mutating func setSymbol(_ i: Int, shndx: UInt16, value: UInt64) throws {
        let o = try symbolEntry(i)
        put(shndx, at: o + 6)
        put(value, at: o + 8)
    }
    func signed() throws -> [UInt8] { try craftSigner.sign(module: ko, existingSignature: .replace) }
}

final class AdversarialPatchSessionTests: XCTestCase {
    /// irqbypass crafted with a static-call trampoline and key of its own (`__SCT__z`: `jmp
    /// <own function>; ud1` over 8 bytes of `.text` no loader stage touches; `__SCK__z` in its own
    /// `.data`), signed by the test key. Returns the request for the real end state with the
    /// trampoline as compiled, the trampoline's address and its RET form.
    private func craftedIrqbypass(_ g: FixtureGuest) throws -> (request: AuthorizeModule, trampoline: UInt64, off: Int, target: UInt64, retForm: [UInt8]) {
        let m = try g.boot.module("irqbypass")
        let s = try m.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: m.claim, facts: g.session.facts, resolver: g.session.symbolResolver)
            try s.run()
            return s
        }
        let elfClass = UInt8(ExplanationClass.elf.rawValue)
        let p = try XCTUnwrap((0..<s.cls.count - 8).first { o in s.cls[o..<o + 8].allSatisfy { $0 == elfClass } })
        let tramp = m.claim.textBase &+ UInt64(p)
        let target = try XCTUnwrap(s.functionEntries.sorted.first { $0 > tramp &+ 8 })
        let insn = try XCTUnwrap(genInsn(0xe9, at: tramp, to: target)) + [0x0f, 0xb9, 0xcc]
        var c = Craft(ko: m.ko)
        let text = try c.section(".text")
        c.ko.replaceSubrange(text.fileRange.lowerBound + p ..< text.fileRange.lowerBound + p + 8, with: insn)
        let t = try c.symbolIndex("__UNIQUE_ID_depends198"), key = try c.symbolIndex("__crc_irq_bypass_register_producer")
        try c.rename(t, to: "__SCT__z")
        try c.setSymbol(t, shndx: UInt16(text.index), value: UInt64(p))
        try c.rename(key, to: "__SCK__z")
        try c.setSymbol(key, shndx: UInt16(try c.section(".data").index), value: 0)
        var r = m.request(guestID: "g")
        r.module = ByteBuffer(bytes: try c.signed())
        var bytes = m.claim.text
        bytes.replaceSubrange(p..<p + 8, with: insn)
        r.text = ByteBuffer(bytes: bytes)
        let ret = try XCTUnwrap(s.retInstruction(at: tramp)?.padded(to: 5, with: 0xcc).array)
        return (r, tramp, p, target, ret)
    }

    private func retire(_ g: FixtureGuest, _ name: String) throws {
        let base = try XCTUnwrap(g.session.liveModule(name)?.textRange.lowerBound, "\(name) is live")
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: []) else {
            return XCTFail("retire \(name)")
        }
    }

    /// Was a HOLE (fixed: `GuestSession.rebuildDerivedState` forgets the seen states of a key
    /// with no live site left, as it forgets the key's state): the states a static-call key was
    /// seen in (`keyStatesSeen`: what a run-time patch of a key the registration does not name
    /// may reach besides NULL) outlived the module that had them. Attack: load a module whose own
    /// key `z` is in state `target` (its trampoline as compiled), retire it, load it again with
    /// the trampoline in its RET form (NULL), then move the key to `target`. A guest that never
    /// loaded the first copy is denied that patch ("not trusted for that key": `target` was never
    /// seen at a live module); after the retire it was allowed on the strength of a module that is
    /// gone. The session's trust must not depend on retired modules: the same patch is now
    /// denied in both guests. (The site's own rule still held only the module's trusted targets,
    /// so no untrusted target was reachable: the stale state widened the session's rule only.)
    func testSeenStatesOfAKeyDoNotOutliveItsModules() throws {
        // The reference: a guest that loads only the second copy (trampoline in its RET form).
        let fresh = try craftGuest()
        var c = try craftedIrqbypass(fresh)
        var retText = Array(buffer: try XCTUnwrap(c.request.text))
        retText.replaceSubrange(c.off..<c.off + 5, with: c.retForm)
        var second = c.request
        second.text = ByteBuffer(bytes: retText)
        let v0 = fresh.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v0.decision, .allow, v0.message)
        let key = try XCTUnwrap(fresh.session.runtimeSites.first { $0.module == "irqbypass" }?.key(at: c.trampoline), "the trampoline is a site of its key")
        XCTAssertEqual(fresh.session.state(ofKey: key), 0)
        let jump = PatchEntry(address: c.trampoline, bytes: try XCTUnwrap(genInsn(0xe9, at: c.trampoline, to: c.target)))
        let ref = fresh.patch([jump])
        XCTAssertEqual(ref.decision, .deny, ref.message)
        XCTAssertTrue(ref.message.contains("not trusted for that key"), ref.message)

        // The attack: first copy as compiled (state `target`), retire, second copy, patch.
        let g = try craftGuest()
        c = try craftedIrqbypass(g)
        let v1 = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v1.decision, .allow, v1.message)
        XCTAssertEqual(g.session.state(ofKey: key), c.target)
        try retire(g, "irqbypass")
        XCTAssertNil(g.session.state(ofKey: key))
        let v2 = g.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v2.decision, .allow, v2.message)
        let v = g.patch([jump])
        XCTAssertEqual(v.decision, .deny, "a retired module's key state trusted after reload: \(v.message)")
        XCTAssertEqual(v.reason, .patchNotAllowed)
        XCTAssertTrue(v.message.contains("not trusted for that key"), v.message)
        XCTAssertEqual(g.session.state(ofKey: key), 0)
    }

    // MARK: Init text

    /// The loader's images (every stage before the comparison) of `ko` for `claim`: the core
    /// region and, when the claim has an init base, the init region.
    private func loaderImages(_ ko: [UInt8], _ claim: ModuleClaim, _ g: FixtureGuest) throws -> (core: Session, initText: Session?) {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            func stages(_ s: Session) throws -> Session {
                if s.region == .core { try s.checkModinfo() }
                try s.relocate()
                if s.region == .core { try s.verifyExportedSymbols() }
                try s.applyBootTimePatching()
                try s.addRuntimeSites()
                return s
            }
            let core = try stages(try Session(elf: elf, claim: claim, facts: g.session.facts, resolver: g.session.symbolResolver))
            guard claim.initTextBase != nil else { return (core, nil) }
            let i = try stages(try Session(elf: elf, claim: claim, facts: g.session.facts, resolver: g.session.symbolResolver, region: .initText,
                                           inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: AddressTable())))
            return (core, i)
        }
    }

    /// test_static_keys crafted as `test_static_keyz` (a second module using test_static_key_base's
    /// keys) whose one `base_true_key` jump entry names a site in its *init* text (NOP5 written
    /// over 5 init bytes no stage touches), signed by the test key, laid out above the live
    /// modules with its init text claimed. Returns the request (the loader's images, the init
    /// site in `initState`), the key and the init site.
    private func craftedInitJumpLabel(_ g: FixtureGuest, coreStatesFrom reference: GuestSession? = nil, initState: (UInt64?) -> UInt64) throws -> (request: AuthorizeModule, key: UInt64, site: UInt64, liveState: UInt64?) {
        let m = try g.boot.module("test_static_keys")
        var c = Craft(ko: m.ko)
        // The name, in .modinfo and in struct module (same length: the last letter, before the
        // NUL of the second needle; the two must stay byte-equal, ModuleName.identity).
        for needle in ["name=test_static_keys", "test_static_keys\0"] {
            let n = Array(needle.utf8)
            var k = 0
            var hits = 0
            while k + n.count <= c.ko.count {
                if c.ko[k] == n[0] && Array(c.ko[k..<k + n.count]) == n { c.ko[k + n.count - (needle.hasSuffix("\0") ? 2 : 1)] = UInt8(ascii: "z"); hits += 1; k += n.count } else { k += 1 }
            }
            XCTAssertGreaterThan(hits, 0, needle)
        }
        // Layout: above every live module, init text after the core.
        let top = try XCTUnwrap(g.session.allowedModules.compactMap { g.session.liveModule($0)?.coreRange.upperBound }.max())
        let base = (top + 0x1_0000 + 0xfff) & ~0xfff
        let delta = base &- m.claim.textBase
        var claim = m.claim
        claim.name = "test_static_keyz"
        claim.textBase = base
        claim.sectionAddresses = Dictionary(uniqueKeysWithValues: m.claim.sectionAddresses.filter { !$0.key.hasPrefix(".init") }.map { ($0.key, $0.value &+ delta) })
        let plan = try XCTUnwrap(try c.elf { ModuleLayoutPlan.compute($0) })
        let initSize = try XCTUnwrap(plan.placements.filter { $0.isInit && $0.isExecutable }.map { $0.offset + $0.size }.max())
        claim.initTextBase = (base + UInt64(plan.coreSize) + 0x1_0000 + 0xfff) & ~0xfff
        claim.initText = [UInt8](repeating: 0, count: (initSize + 4095) & ~4095)
        // The entries of base_true_key (two: its likely and unlikely sites) moved to 5-byte spots
        // of init text no stage writes, each holding NOP5.
        let probe = try loaderImages(c.ko, claim, g)
        let pristine = try XCTUnwrap(probe.initText)
        let elfClass = UInt8(ExplanationClass.elf.rawValue)
        var spots: [Int] = []
        var o = 0
        while o + 5 <= pristine.cls.count && spots.count < 2 {
            if pristine.cls[o..<o + 5].allSatisfy({ $0 == elfClass }) { spots.append(o); o += 5 } else { o += 1 }
        }
        XCTAssertEqual(spots.count, 2)
        let initText = try c.section(".init.text")
        XCTAssertEqual(plan.placements.first { $0.isInit && $0.isExecutable }?.offset, 0, ".init.text opens the init region")
        let (codeRecords, initSym): ([Int], Int) = try c.elf { e in
            let t = try e.symbolTable()
            let key = try XCTUnwrap(t.indices.first { t.name($0) == "base_true_key" })
            let rs = try XCTUnwrap(try e.relocationSections().first { e.sections[$0.targetSectionIndex].name == "__jump_table" })
            let recs = Array(rs.relocations)
            let entries = recs.filter { Int($0.symbolIndex) == key }.map { Int($0.offset) - 8 }
            let codeRecs = try entries.map { entry in try XCTUnwrap(recs.firstIndex { Int($0.offset) == entry }) }
            let sym = try XCTUnwrap(t.indices.first { t.sectionIndex($0) == UInt16(initText.index) && t.value($0) == 0 && t.name($0).isEmpty }, ".init.text section symbol")
            return (codeRecs.map { rs.section.fileRange.lowerBound + 24 * $0 }, sym)
        }
        XCTAssertEqual(codeRecords.count, 2, "base_true_key's entries")
        for (recAt, q) in zip(codeRecords, spots) {
            c.ko.replaceSubrange(initText.fileRange.lowerBound + q ..< initText.fileRange.lowerBound + q + 5, with: [0x0f, 0x1f, 0x44, 0x00, 0x00])
            c.put(UInt64(initSym) << 32 | 2, at: recAt + 8)  // R_X86_64_PC32 against .init.text
            c.put(Int64(q), at: recAt + 16)
        }
        // The loader's images of the crafted module: every core jump-label site in its key's
        // live state (jump_label_add_module()), the init sites in the chosen state.
        let (core, initS) = try loaderImages(c.ko, claim, g)
        let i = try XCTUnwrap(initS)
        var coreBytes = core.image
        for v in core.variable where v.cls == .jumpLabel {
            if let k = v.group, let st = g.session.state(ofKey: k) ?? reference?.state(ofKey: k) { coreBytes.replaceSubrange(v.offset..<v.offset + v.length, with: v.encode(st)) }
        }
        let initSites = i.variable.filter { spots.contains($0.offset) }
        XCTAssertEqual(initSites.count, 2, "the init sites")
        let key = try XCTUnwrap(initSites.first?.group)
        XCTAssertTrue(initSites.allSatisfy { $0.group == key })
        XCTAssertFalse(core.variable.contains { $0.group == key }, "no core site of the key is left")
        let liveState = g.session.state(ofKey: key)
        var initBytes = i.image
        for v in initSites { initBytes.replaceSubrange(v.offset..<v.offset + v.length, with: v.encode(initState(liveState))) }
        let site = claim.initTextBase! + UInt64(spots[0])
        var r = m.request(guestID: "g")
        r.module = ByteBuffer(bytes: try c.signed())
        r.moduleName = "test_static_keyz"
        r.textBase = base
        r.text = ByteBuffer(bytes: coreBytes)
        r.sections = claim.sectionAddresses.sorted { $0.key < $1.key }.map { SectionClaim(name: $0.key, address: $0.value) }
        r.frames = (0..<(core.image.count + 4095) / 4096).map { ((base >> 12) &+ UInt64($0)) & 0xffff_ffff }  // a frame number (below 2^40), as CapturedModule.replayFrames
        r.initBase = claim.initTextBase
        r.initText = ByteBuffer(bytes: initBytes)
        r.initFrames = (0..<(initBytes.count + 4095) / 4096).map { ((claim.initTextBase! >> 12) &+ UInt64($0)) & 0xffff_ffff }  // a frame number (below 2^40), as CapturedModule.replayFrames
        return (r, key, site, liveState)
    }

    /// Control: the crafted module with its init site in the key's live state is allowed (init
    /// text claimed and explained); the site is no run-time patch site of the live module (a
    /// patch there is denied: init sites are not in the live table, fail closed), and once init
    /// is freed the init range is no live code at all.
    func testInitJumpLabelInTheLiveStateIsAllowedAndNotPatchable() throws {
        let g = try craftGuest()
        try g.loadAll()
        let c = try craftedInitJumpLabel(g) { try! XCTUnwrap($0, "base_true_key has live sites (test_static_keys)") }
        let v = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let live = try XCTUnwrap(g.session.liveModule("test_static_keyz"))
        XCTAssertNotNil(live.initRange)
        let flip = g.patch([PatchEntry(address: c.site, bytes: [0xe9, 0, 0, 0, 0])])
        XCTAssertEqual(flip.decision, .deny, flip.message)
        XCTAssertTrue(flip.message.contains("not the start of a run-time patch site"), flip.message)
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keyz", initBase: g.session.liveModule("test_static_keyz")?.initRange?.lowerBound ?? 0)), requestDigest: []) else {
            return XCTFail("init freed")
        }
        let after = g.patch([PatchEntry(address: c.site, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])])
        XCTAssertEqual(after.decision, .deny, after.message)
        XCTAssertTrue(after.message.contains("not in live code"), after.message)
    }

    /// Attack: flip a key at run time while a module's init text holding a site of it is still
    /// granted. The kernel updates a module's init entries only while the module is COMING
    /// (`jump_label_can_update(entry, init)` with `init = mod->state == MODULE_STATE_COMING`,
    /// kernel/jump_label.c; `__static_call_update()` likewise, kernel/static_call_inline.c; 6.1
    /// and 6.12); init sites are no run-time patch sites of the verifier. Fails closed and stays
    /// consistent: a batch that pokes the init site with the core sites is denied whole (no key
    /// state changes, no byte is granted); the whole-key flip of the live core sites alone is
    /// allowed (what a LIVE module's kernel does: its init text keeps the bytes it was granted,
    /// in the state that was legal when it came); once init is freed the key flips back freely.
    func testKeyFlipWhileInitTextIsLiveNeverPokesInitSites() throws {
        let g = try craftGuest()
        try g.loadAll()
        let c = try craftedInitJumpLabel(g) { try! XCTUnwrap($0, "base_true_key has live sites (test_static_keys)") }
        let v = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let state = try XCTUnwrap(g.session.state(ofKey: c.key))
        let sites = try XCTUnwrap(g.sitesByKey()[c.key], "live core sites of the key")
        XCTAssertFalse(sites.contains { $0.site.address == c.site }, "the init site is no live site")
        let flip = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: 1 - state))) }

        // The kernel's COMING-time flip, init site included: denied whole, nothing recorded.
        let withInit = g.patch(flip + [PatchEntry(address: c.site, bytes: [0xe9, 0, 0, 0, 0])])
        XCTAssertEqual(withInit.decision, .deny, withInit.message)
        XCTAssertTrue(withInit.message.contains("not the start of a run-time patch site"), withInit.message)
        XCTAssertEqual(g.session.state(ofKey: c.key), state, "a denied batch changes no key state")

        // The LIVE module's flip: the core sites only.
        let core = g.patch(flip)
        XCTAssertEqual(core.decision, .allow, core.message)
        XCTAssertEqual(g.session.state(ofKey: c.key), 1 - state)
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keyz", initBase: g.session.liveModule("test_static_keyz")?.initRange?.lowerBound ?? 0)), requestDigest: []) else {
            return XCTFail("init freed")
        }
        let back = try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: state))) }
        XCTAssertEqual(g.patch(back).decision, .allow)
        XCTAssertEqual(g.session.state(ofKey: c.key), state)
    }

    /// Was a HOLE (fixed: the verifier reads the key states of the init sites too,
    /// `LiveModule.initKeyStates`, and `GuestSession.commit` holds them to the live states and
    /// records them until init is freed): an init-text site of a key was not held to the key's
    /// live state. `jump_label_add_module()`
    /// (kernel/jump_label.c, 6.1 and 6.12) patches every entry of a key the module does not
    /// define, init entries included (`jump_entry_set_init()` only marks them), to the key's
    /// current state when the module comes; so a module's init sites agree with every live site
    /// of the key. The verifier records (and checks at commit) the key states of the *core*
    /// sites only: a module whose only site of a key is in init text may hold the other state.
    func testInitJumpLabelInTheOtherStateIsDenied() throws {
        let g = try craftGuest()
        try g.loadAll()
        let c = try craftedInitJumpLabel(g) { 1 - (try! XCTUnwrap($0, "base_true_key has live sites (test_static_keys)")) }
        let v = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, "init site of key 0x\(String(c.key, radix: 16)) against its live state \(c.liveState.map { String($0) } ?? "none"): \(v.message)")
        XCTAssertEqual(v.reason, .keyStateMismatch, v.message)
        XCTAssertEqual(g.session.state(ofKey: c.key), c.liveState)
    }

    /// The same hole the other way round: the init sites come first (no live site of the key:
    /// test_static_keys retired), in state X; then test_static_keys, whose core sites of the key
    /// are in the other state, is denied while the init text is granted (its state is the key's
    /// live state), and allowed once init is freed (the key then has no live site left). The
    /// crafted module's core sites hold test_static_keys' states (so that only the init key differs).
    func testLiveStateOfAKeyIncludesInitSites() throws {
        let g = try craftGuest()
        try g.loadAll()
        let real = try XCTUnwrap(g.session.liveModule("test_static_keys"))
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "test_static_keys", textBase: real.textRange.lowerBound)), requestDigest: []) else {
            return XCTFail("retire test_static_keys")
        }
        // The state test_static_keys' own claim holds for the key (read from a guest where it is
        // live); the crafted init sites take the other one.
        let probe = try FixtureGuest()
        try probe.loadAll()
        let mine: UInt64 = 0
        let c = try craftedInitJumpLabel(g, coreStatesFrom: probe.session) { live in
            XCTAssertNil(live, "no live site of the key")
            return mine
        }
        // The committed fixture's test_static_keys holds the key in state 1 (its claim): the
        // crafted init sites hold the other state.
        XCTAssertEqual(probe.session.state(ofKey: c.key), 1 - mine, "test_static_keys' state of base_true_key in the fixture")
        let v0 = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v0.decision, .allow, v0.message)
        XCTAssertEqual(g.session.state(ofKey: c.key), mine, "the init sites' state is the key's live state")
        let v = try g.load("test_static_keys")
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .keyStateMismatch, v.message)
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keyz", initBase: g.session.liveModule("test_static_keyz")?.initRange?.lowerBound ?? 0)), requestDigest: []) else {
            return XCTFail("init freed")
        }
        XCTAssertNil(g.session.state(ofKey: c.key), "the init sites are gone")
        let after = try g.load("test_static_keys")
        XCTAssertEqual(after.decision, .allow, after.message)
    }

    /// Attack: report init freed for, and retire, a live module under a name that is not its
    /// signed name: `-` for `_` ("test-static-keyz"), another case, a Kelvin sign, empty. The
    /// kernel finds a module by `find_module_all()`, an exact `strlen` + `memcmp` of
    /// `mod->name` (kernel/module/main.c, 6.1 and 6.12; `delete_module()` looks the user's name
    /// up so, no `-` ≡ `_`). Refused (unknown-module), nothing changes; the exact name works.
    func testInitFreedAndRetireTakeOnlyTheExactSignedName() throws {
        let g = try craftGuest()
        try g.loadAll()
        let c = try craftedInitJumpLabel(g) { try! XCTUnwrap($0, "base_true_key has live sites (test_static_keys)") }
        XCTAssertEqual(g.verifier.authorize(c.request, requestDigest: []).decision, .allow)
        let live = try XCTUnwrap(g.session.liveModule("test_static_keyz"))
        XCTAssertNotNil(live.initRange)
        let base = live.textRange.lowerBound
        for name in ["test-static-keyz", "test_static-keyz", "TEST_STATIC_KEYZ", "test_static_\u{212A}eyz", "", "test_static_keyz\0", "test_static_keyz "] {
            guard case .error(let e) = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: name, initBase: g.session.liveModule("test_static_keyz")?.initRange?.lowerBound ?? 0)), requestDigest: []) else {
                return XCTFail("init freed under '\(name)'")
            }
            XCTAssertEqual(e.code, .unknownModule, "\(name): \(e.message)")
            guard case .error(let r) = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: []) else {
                return XCTFail("retired under '\(name)'")
            }
            XCTAssertEqual(r.code, .unknownModule, "\(name): \(r.message)")
            // Precisely: an empty or non-printable-ASCII name can name no module at all.
            let why = name.isEmpty ? "is empty" : (name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } ? "no live module '\(name)'" : "printable ASCII")
            XCTAssertTrue(e.message.contains(why) || (why.hasPrefix("no live") && e.message.contains("no live module")), "\(name): \(e.message)")
            XCTAssertTrue(r.message.contains(why), "\(name): \(r.message)")
            XCTAssertNotNil(g.session.liveModule("test_static_keyz")?.initRange, name)
        }
        guard case .moduleInitFreedReply = g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: "g", moduleName: "test_static_keyz", initBase: g.session.liveModule("test_static_keyz")?.initRange?.lowerBound ?? 0)), requestDigest: []) else {
            return XCTFail("init freed under the exact name")
        }
        XCTAssertNil(g.session.liveModule("test_static_keyz")?.initRange)
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "test_static_keyz", textBase: base)), requestDigest: []) else {
            return XCTFail("retired under the exact name")
        }
        XCTAssertFalse(g.session.allowedModules.contains("test_static_keyz"))
    }
}

extension AdversarialPatchSessionTests {
    /// Review 8: a core tracepoint's static-call key `tp_func_X` (include/linux/tracepoint.h
    /// DEFINE_TRACE_FN: `DEFINE_STATIC_CALL(tp_func_X, __traceiter_X)`, exported by
    /// EXPORT_TRACEPOINT_SYMBOL[_GPL] with its `__SCK__`/`__SCT__`). Its only updater is
    /// kernel/tracepoint.c tracepoint_update_call() (6.1 and 6.12): `func = tp->iterator`, or the
    /// one registered probe when exactly one is (TP_FUNC_1), then `__static_call_update()`; after
    /// the last probe goes (tracepoint_remove_func(), TP_FUNC_0) it sets the iterator again. So the
    /// key never holds NULL nor `__static_call_return0`. The fixture's irqbypass is crafted (its
    /// undefined `__SCT__might_resched` renamed `__SCT__tp_func_mr`), the registration names the
    /// trampoline and the iterator `__traceiter_mr` (at `__cond_resched`'s entry), and the sites
    /// are claimed calling the iterator. Attack: the whole key to NOP5 (the call to the
    /// tracepoint's probes dropped) or to `2e 2e 2e 31 c0`: neither is a state of the key.
    func testTracepointKeySitesNeverTakeTheNullOrReturn0Form() throws {
        let tramp: UInt64 = 0xffff_ffff_81e0_05b0
        let ref = try FixtureGuest()
        let iter = try XCTUnwrap(ref.registration.symbols.first { $0.name == "__cond_resched" }?.address)
        let mr = try XCTUnwrap(ref.registration.symbols.first { $0.name == "__SCT__might_resched" }?.address)
        try ref.loadAll()
        let siteAddrs = try XCTUnwrap(ref.session.runtimeSites.first { $0.module == "irqbypass" }).siteList
            .filter { $0.kind == .staticCall && $0.key == mr }.map(\.address)
        XCTAssertEqual(siteAddrs.count, 4)

        let certs = try Fixtures.debianCertificates() + [craftSigner.certificate]
        let g = try FixtureGuest(policy: { $0.trust = TrustStore(certs) }, editRegistration: { r in
            r.symbols.append(KernelSymbol(name: "__SCT__tp_func_mr", address: tramp, type: UInt8(ascii: "T"), exported: true, isFunction: true))
            r.symbols.append(KernelSymbol(name: "__traceiter_mr", address: iter, type: UInt8(ascii: "T"), exported: true, isFunction: true))
        })
        for name in g.boot.availableModules where name != "irqbypass" {
            let v = try g.load(name)
            XCTAssertEqual(v.decision, .allow, "\(name): \(v.message)")
        }
        let m = try g.boot.module("irqbypass")
        var c = Craft(ko: m.ko)
        try c.rename(try c.symbolIndex("__SCT__might_resched"), to: "__SCT__tp_func_mr")
        var r = m.request(guestID: "g")
        r.module = ByteBuffer(bytes: try c.signed())
        var text = m.claim.text
        for s in siteAddrs {
            let o = Int(s - m.claim.textBase)
            text.replaceSubrange(o..<o + 5, with: try XCTUnwrap(genInsn(0xe8, at: s, to: iter)))
        }
        r.text = ByteBuffer(bytes: text)
        r.sections = r.sections.map { sec in
            guard let b = sec.bytes else { return sec }
            let o = Int(sec.address - m.claim.textBase)
            return SectionClaim(name: sec.name, address: sec.address, bytes: ByteBuffer(bytes: text[o..<o + b.readableBytes]))
        }
        let load = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(load.decision, .allow, load.message)
        let t = try XCTUnwrap(g.session.runtimeSites.first { $0.module == "irqbypass" })
        let sites = t.siteList.filter { $0.kind == .staticCall && $0.key == tramp }
        XCTAssertEqual(Set(sites.map(\.address)), Set(siteAddrs))
        XCTAssertEqual(g.session.state(ofKey: tramp), iter)
        for bad in [[0x0f, 0x1f, 0x44, 0x00, 0x00], [0x2e, 0x2e, 0x2e, 0x31, 0xc0]] as [[UInt8]] {
            let v = g.patch(sites.map { PatchEntry(address: $0.address, bytes: bad) })
            XCTAssertEqual(v.decision, .deny, "\(bad): \(v.message)")
            XCTAssertEqual(g.session.state(ofKey: tramp), iter)
        }
    }
}

extension FixtureGuest {
    /// A fixture guest whose registration is edited before it is sent.
    init(policy configure: (inout Policy) -> Void, editRegistration: (inout RegisterGuest) -> Void) throws {
        var p = Policy(id: "test", version: 7, trust: try Fixtures.debianTrust())
        configure(&p)
        verifier = Verifier(policy: p)
        boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        var r = try boot.registration(guestID: "g")
        editRegistration(&r)
        registration = r
        let reply = verifier.respond(to: .registerGuest(registration), requestDigest: [0xfa, 0xc7])
        guard case .registerGuestReply = reply else { throw RegistrationRefused(reply: "\(reply)") }
    }
}
