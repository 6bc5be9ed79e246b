// SPDX-License-Identifier: Apache-2.0
//
// Doc-attack round 10: attacks a compromised guest could mount, written from docs/trust.md,
// docs/protocol.md and docs/kernels/ alone, then run against the real code. Inputs: the committed
// fixture boot (signed Debian 6.1 modules and the bytes a real guest held) and the shared corpus
// of real end states (/work/shared/corpus, or EXECGATE_CORPUS; skipped, naming it, when absent).
// Each test names the promise it tests and why the answer is the kernel's.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class DocAttack10Tests: XCTestCase {
    static var corpus: String { ProcessInfo.processInfo.environment["EXECGATE_CORPUS"] ?? "/work/shared/corpus" }

    /// The loader's image of `ko` for `claim` (every stage before the comparison), in `session`.
    static func image(_ ko: [UInt8], _ claim: ModuleClaim, _ session: GuestSession, region: Session.Region = .core) throws -> [UInt8] {
        try loader(ko, claim, session, region: region).image
    }

    /// The loader's session of `ko` for `claim`: its image and its variable (run-time) sites.
    static func loader(_ ko: [UInt8], _ claim: ModuleClaim, _ session: GuestSession, region: Session.Region = .core,
                       checkExports: Bool = true) throws -> Session {
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            let core = try Session(elf: elf, claim: claim, facts: session.facts, resolver: session.symbolResolver)
            try core.checkModinfo()
            try core.relocate()
            if checkExports { try core.verifyExportedSymbols() }  // off for a module that is live itself
            try core.applyBootTimePatching()
            try core.addRuntimeSites()
            guard region == .initText else { return core }
            let i = try Session(elf: elf, claim: claim, facts: session.facts, resolver: session.symbolResolver, region: .initText,
                                inherited: .init(ownKeyDefaults: core.ownKeyDefaults, groupState: AddressTable()))
            try i.relocate()
            try i.applyBootTimePatching()
            try i.addRuntimeSites()
            return i
        }
    }

    static func frames(_ base: UInt64, _ bytes: Int) -> [UInt64] {
        (0..<(bytes + 4095) / 4096).map { ((base >> 12) &+ UInt64($0)) & 0xffff_ffff }  // as CapturedModule.replayFrames
    }

    // MARK: Per-cpu data

    /// Attack (docs/trust.md "Per-cpu data", "Live code: one owner per address"): the per-cpu
    /// base is a layout claim, checked to lie in the module reserve `[__per_cpu_end, +8 KiB)`,
    /// aligned, with the whole `.data..percpu` inside. The guest retires one module with per-cpu
    /// data and loads it again claiming the per-cpu base of another live module: every `%gs:`
    /// access of the reloaded module's verified code then lands on the other module's per-cpu
    /// variables. The kernel never gives two live modules one per-cpu area: percpu_modalloc() →
    /// __alloc_reserved_percpu() hands out reserved-chunk memory that is free, and
    /// free_module() → percpu_modfree() gives it back only at unload (mm/percpu.c,
    /// kernel/module/main.c, 6.1 and 6.12). Control: the same reload at a free base of the
    /// reserve is allowed.
    func testAPerCPUAreaIsNeverClaimedOverALiveModulesPerCPUArea() throws {
        let dir = Self.corpus + "/nokaslr-a"
        guard access(dir + "/kallsyms.txt", R_OK) == 0 else { throw XCTSkip("shared corpus boot \(dir) not present") }
        let v = Verifier(policy: Policy(id: "corpus", version: 1, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(dir)
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else {
            return XCTFail("registration refused")
        }
        let session = try XCTUnwrap(v.guests.session("g"))
        for n in boot.availableModules {
            let r = v.authorize(try boot.module(n).request(guestID: "g"), requestDigest: [])
            XCTAssertEqual(r.decision, .allow, "\(n): \(r.message)")
        }
        // The live modules with per-cpu data: their base, size and alignment.
        struct PerCPU { let name: String; let base: UInt64; let size: UInt64; let align: UInt64 }
        var pcpu: [PerCPU] = []
        for n in boot.availableModules {
            let m = try boot.module(n)
            guard let base = m.claim.percpuBase else { continue }
            let (size, align) = try m.ko.withUnsafeBytes { raw -> (UInt64, UInt64) in
                let s = try XCTUnwrap(try ELFFile(bytes: raw).section(named: ".data..percpu"))
                return (UInt64(s.size), max(1, s.addralign))
            }
            if size > 0 { pcpu.append(PerCPU(name: n, base: base, size: size, align: align)) }
        }
        XCTAssertGreaterThanOrEqual(pcpu.count, 2, "the corpus has several modules with per-cpu data (ext4, kvm, openvswitch, sctp)")
        let reserve = try XCTUnwrap(session.facts.modulePercpuRange)
        // One of them that no live module uses: retire it.
        var victim: PerCPU?
        for p in pcpu {
            let m = try XCTUnwrap(session.liveModule(p.name))
            if case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m.identity, textBase: m.textRange.lowerBound)),
                                                 requestDigest: []) { victim = p; break }
        }
        let x = try XCTUnwrap(victim, "a per-cpu module with no live user")
        let mod = try boot.module(x.name)
        // Another live module's per-cpu area, at an alignment x's section accepts.
        let other = try XCTUnwrap(pcpu.first { $0.name != x.name && $0.base % x.align == 0 && $0.base + x.size <= reserve.upperBound },
                                  "a live per-cpu area \(x.name)'s section fits")
        // The bytes the loader writes for a given per-cpu base: the captured region with exactly
        // the bytes that depend on the base changed (the per-cpu relocations).
        let honestImage = try Self.image(mod.ko, mod.claim, session)
        func request(perCPUBase: UInt64) throws -> AuthorizeModule {
            var claim = mod.claim
            claim.percpuBase = perCPUBase
            let moved = try Self.image(mod.ko, claim, session)
            XCTAssertEqual(moved.count, mod.claim.text.count)
            var text = mod.claim.text
            for i in 0..<text.count where moved[i] != honestImage[i] { text[i] = moved[i] }
            XCTAssertNotEqual(text, mod.claim.text, "\(x.name)'s code addresses its per-cpu data")
            var r = mod.request(guestID: "g")
            r.perCPUBase = perCPUBase
            r.text = ByteBuffer(bytes: text)
            return r
        }
        // Every request made before any is judged (the loader's images see the same live set).
        let tail = (other.base + other.size - 1) & ~(x.align - 1)
        let edgeRequest = (tail > other.base && tail + x.size <= reserve.upperBound
            && !pcpu.contains(where: { $0.name != other.name && $0.name != x.name && $0.base < tail + x.size && tail < $0.base + $0.size }))
            ? try request(perCPUBase: tail) : nil
        let top = pcpu.filter { $0.name != x.name }.map { $0.base + $0.size }.max() ?? reserve.lowerBound
        let free = (top + 63) & ~UInt64(63)
        XCTAssertLessThanOrEqual(free + x.size, reserve.upperBound)
        let freeRequest = try request(perCPUBase: free)
        let aliased = v.authorize(try request(perCPUBase: other.base), requestDigest: [])
        XCTAssertEqual(aliased.decision, .deny, "\(x.name)'s per-cpu area claimed at \(other.name)'s (0x\(String(other.base, radix: 16))): \(aliased.message)")
        XCTAssertEqual(aliased.reason, .claimOverlapsLive, aliased.message)
        XCTAssertNil(session.liveModule(x.name))
        // Overlapping its last bytes only: denied too.
        if let edgeRequest {
            let edge = v.authorize(edgeRequest, requestDigest: [])
            XCTAssertEqual(edge.reason, .claimOverlapsLive, edge.message)
            XCTAssertNil(session.liveModule(x.name))
        }
        // A free base of the reserve (above every live per-cpu area): allowed.
        let ok = v.authorize(freeRequest, requestDigest: [])
        XCTAssertEqual(ok.decision, .allow, ok.message)
    }
}

// MARK: Init memory and its frames

extension DocAttack10Tests {
    /// `name`'s request with its init text claimed at `initBase` (default: 1 MiB above every live
    /// module): the init region the loader writes (relocated, patched), page-aligned, its frames
    /// named like the core's (`CapturedModule.replayFrames`).
    static func withInitText(_ g: FixtureGuest, _ name: String, initBase: UInt64? = nil) throws -> AuthorizeModule {
        let m = try g.boot.module(name)
        var claim = m.claim
        claim.sectionAddresses = claim.sectionAddresses.filter { !$0.key.hasPrefix(".init") }
        let initSize = try m.ko.withUnsafeBytes { raw -> Int in
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: raw)))
            return try XCTUnwrap(plan.placements.filter { $0.isInit && $0.isExecutable }.map { $0.offset + $0.size }.max(), "\(name) has init text")
        }
        let top = g.session.allowedModules.compactMap { g.session.liveModule($0)?.coreRange.upperBound }.max() ?? claim.textBase
        claim.initTextBase = initBase ?? ((max(top, claim.textBase + UInt64(claim.text.count)) + 0x10_0000 + 0xfff) & ~0xfff)
        claim.initText = [UInt8](repeating: 0, count: (initSize + 4095) & ~4095)
        let initImage = try image(m.ko, claim, g.session, region: .initText)
        var r = m.request(guestID: "g")
        r.sections = claim.sectionAddresses.sorted { $0.key < $1.key }.map { SectionClaim(name: $0.key, address: $0.value) }
        r.initBase = claim.initTextBase
        r.initText = ByteBuffer(bytes: initImage)
        r.initFrames = frames(claim.initTextBase!, initImage.count)
        return r
    }

    /// module-init-freed for `name`'s init text at `base` (default: where its live instance's is).
    func initFreed(_ g: FixtureGuest, _ name: String, guest: String = "g", base: UInt64? = nil) -> Message {
        let b = base ?? g.verifier.guests.session(guest)?.liveModule(name)?.initRange?.lowerBound ?? 0
        return g.verifier.respond(to: .moduleInitFreed(ModuleInitFreed(guestID: guest, moduleName: name, initBase: b)), requestDigest: [])
    }

    /// Attack (round 14): a late module-init-freed for an earlier load of the name. 6.1 frees init
    /// memory from a work queue (do_init_module() queues do_free_init() once the module is LIVE),
    /// so delete_module() and a second init_module() can both come before the first load's notice,
    /// and a VMM with a connection per vCPU may deliver them in any order. Named by its module
    /// alone, that notice freed the second load's init text while its EXEC grant stood: its range
    /// and frames were handed to the next module (tpm_nsc's core over them was allowed). Rule:
    /// the notice names the init text by its `init_base` (docs/protocol.md module-init-freed), as
    /// retire-module names a load by its `text_base`. Asserted: the first load's base frees
    /// nothing (`unknown-module`), the second load's range and frames stay held, its own base
    /// frees them.
    func testALateInitFreedOfAnEarlierLoadFreesNothing() throws {
        let g = try FixtureGuest()
        let first = try loadAndRetire8021qWithInitText(g)
        let firstBase = try XCTUnwrap(first.initBase)
        let secondBase = firstBase + 0x10_0000
        let second = try Self.withInitText(g, "8021q", initBase: secondBase)
        let v = g.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let range = try XCTUnwrap(g.session.liveModule("8021q")?.initRange)
        XCTAssertEqual(range.lowerBound, secondBase)

        guard case .error(let late) = initFreed(g, "8021q", base: firstBase) else { return XCTFail("the first load's notice freed the second load's init text") }
        XCTAssertEqual(late.code, .unknownModule, late.message)
        XCTAssertEqual(g.session.liveModule("8021q")?.initRange, range, "untouched")
        // Its frames are still held: a module claiming one is refused.
        let irq = try XCTUnwrap(g.session.liveModule("irqbypass"))
        guard case .retireModuleReply = retire(g, "irqbypass", irq.textRange.lowerBound) else { return XCTFail("retire irqbypass") }
        var stolen = try g.request("irqbypass")
        stolen.frames[0] = second.initFrames[0]
        XCTAssertEqual(g.verifier.authorize(stolen, requestDigest: []).reason, .claimFramesInvalid)

        guard case .moduleInitFreedReply(let r) = initFreed(g, "8021q", base: secondBase) else { return XCTFail("the second load's own notice") }
        XCTAssertEqual(r.initBase, secondBase)
        XCTAssertNil(g.session.liveModule("8021q")?.initRange)
        XCTAssertEqual(g.verifier.authorize(stolen, requestDigest: []).decision, .allow, "the freed frame carries no grant")
    }

    /// HOLE (round 15, h15-seq): the late notice of an earlier load at the *same* init base. The
    /// kernel reuses freed init memory at once (6.12: do_free_init() → execmem_free() → vfree() of
    /// a VM_FLUSH_RESET_PERMS area purges it; module_memory_alloc() hands the next load the same
    /// addresses; 6.1's module_alloc() likewise), so after delete_module of a LIVE load whose init
    /// free was still queued, the next load of the name may sit at the same init base with the same
    /// frames, and the first load's module-init-freed, delivered late on another vCPU's
    /// connection, named the live load (the base names both): its granted init text was freed
    /// while its EXEC grant stood, and one of its init frames went to another module. Now a load
    /// retired with its init text granted owes a notice for (name, base), and the first notice for
    /// them is taken as that one's: it frees nothing; the live load's own notice frees its init.
    func testALateInitFreedAtTheSameBaseIsTheRetiredLoadsNotice() throws {
        let g = try FixtureGuest()
        let first = try loadAndRetire8021qWithInitText(g)
        let base = try XCTUnwrap(first.initBase)
        // The second load at the same init base with the same frames (the kernel reused them).
        let second = try Self.withInitText(g, "8021q", initBase: base)
        XCTAssertEqual(second.initFrames, first.initFrames)
        let v = g.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let range = try XCTUnwrap(g.session.liveModule("8021q")?.initRange)

        // The first load's late notice: taken as its own, nothing of the second load's freed.
        guard case .error(let late) = initFreed(g, "8021q", base: base) else { return XCTFail("the first load's late notice freed the second load's init text") }
        XCTAssertEqual(late.code, .unknownModule, late.message)
        XCTAssertTrue(late.message.contains("owes"), late.message)
        XCTAssertEqual(g.session.liveModule("8021q")?.initRange, range, "untouched")
        let irq = try XCTUnwrap(g.session.liveModule("irqbypass"))
        guard case .retireModuleReply = retire(g, "irqbypass", irq.textRange.lowerBound) else { return XCTFail("retire irqbypass") }
        var stolen = try g.request("irqbypass")
        stolen.frames[0] = second.initFrames[0]
        XCTAssertEqual(g.verifier.authorize(stolen, requestDigest: []).reason, .claimFramesInvalid, "an init frame of the live load went to another module")

        // The second load's own notice frees its init text.
        guard case .moduleInitFreedReply = initFreed(g, "8021q", base: base) else { return XCTFail("the second load's own notice") }
        XCTAssertNil(g.session.liveModule("8021q")?.initRange)
        XCTAssertEqual(g.verifier.authorize(stolen, requestDigest: []).decision, .allow, "the freed frame carries no grant")
    }

    /// Every module but 8021q loaded, then 8021q with its init text allowed and retired while
    /// that init text is still granted; returns its request.
    func loadAndRetire8021qWithInitText(_ g: FixtureGuest) throws -> AuthorizeModule {
        for n in g.boot.availableModules where n != "8021q" { XCTAssertEqual(try g.load(n).decision, .allow, n) }
        let first = try Self.withInitText(g, "8021q")
        XCTAssertEqual(g.verifier.authorize(first, requestDigest: []).decision, .allow)
        let live = try XCTUnwrap(g.session.liveModule("8021q"))
        guard case .retireModuleReply = retire(g, "8021q", live.textRange.lowerBound) else { throw NotRetired() }
        return first
    }

    struct NotRetired: Error {}

    func retire(_ g: FixtureGuest, _ name: String, _ base: UInt64) -> Message {
        g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: [])
    }

    /// Attacks on a module's granted init text (docs/protocol.md module-init-freed, retire-module;
    /// docs/trust.md "Init memory", "The grant is on frames"), with 8021q's real init text:
    /// - retire-module naming the init base instead of the text base: `unknown-module` (the
    ///   instance is named by its core `text_base`);
    /// - module-init-freed for it through another registered guest: `unknown-module` (sessions
    ///   are per guest);
    /// - another module claimed over the granted init range, or with one of its init frames:
    ///   `claim.overlaps-live`, `claim.frames-invalid` (module_alloc() never hands out live
    ///   memory; a frame holds one verified page);
    /// - one request whose init frames repeat one of its own core frames: `claim.frames-invalid`;
    /// - retire-module while init is still granted (delete_module() of a LIVE module whose init
    ///   memory do_free_init() has not freed yet: the init_free_wq worker frees it later): the
    ///   init range and frames go with the module, so the module loads again at the same init
    ///   base with the same init frames;
    /// - module-init-freed for the retired load's base is that load's owed notice first (round 15),
    ///   then the live load's; once more: `unknown-module` (no init text granted);
    ///   after it, the old init range and frames carry no grant and are free for the guest again.
    func testInitTextGrantFollowsTheModuleWhateverTheOrder() throws {
        let g = try FixtureGuest()
        for n in g.boot.availableModules where n != "8021q" { XCTAssertEqual(try g.load(n).decision, .allow, n) }
        let r = try Self.withInitText(g, "8021q")
        let initBase = try XCTUnwrap(r.initBase), initFrames = r.initFrames
        let initEnd = initBase + UInt64(try XCTUnwrap(r.initText).readableBytes)
        // Its own init frame equal to one of its core frames: one frame, two pages.
        var twice = r
        twice.initFrames[0] = r.frames[0]
        let t = g.verifier.authorize(twice, requestDigest: [])
        XCTAssertEqual(t.reason, .claimFramesInvalid, t.message)
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertEqual(v.initFrames, initFrames)
        XCTAssertEqual(g.session.liveModule("8021q")?.initRange, initBase..<initEnd)

        // retire-module naming the init base.
        guard case .error(let byInit) = retire(g, "8021q", initBase) else { return XCTFail("retired by its init base") }
        XCTAssertEqual(byInit.code, .unknownModule, byInit.message)
        // module-init-freed through another guest.
        let h = try g.boot.registration(guestID: "h")
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(h), requestDigest: []) else { return XCTFail("register h") }
        guard case .error(let other) = initFreed(g, "8021q", guest: "h") else { return XCTFail("init freed through another guest") }
        XCTAssertEqual(other.code, .unknownModule, other.message)
        XCTAssertEqual(g.session.liveModule("8021q")?.initRange, initBase..<initEnd, "untouched")

        // Another module over the granted init range, or with one of its frames.
        let ib = try XCTUnwrap(g.session.liveModule("irqbypass"))
        guard case .retireModuleReply = retire(g, "irqbypass", ib.textRange.lowerBound) else { return XCTFail("retire irqbypass") }
        var over = try g.request("irqbypass")
        let shift = initBase &- over.textBase!
        over.textBase = initBase
        over.sections = over.sections.map { SectionClaim(name: $0.name, address: $0.address &+ shift, bytes: $0.bytes) }
        over.frames = (0..<over.frames.count).map { 0x7_0000 + UInt64($0) }
        let o = g.verifier.authorize(over, requestDigest: [])
        XCTAssertEqual(o.reason, .claimOverlapsLive, o.message)
        XCTAssertTrue(o.message.contains("8021q"), o.message)
        var stolen = try g.request("irqbypass")
        stolen.frames[0] = initFrames[0]
        let s = g.verifier.authorize(stolen, requestDigest: [])
        XCTAssertEqual(s.reason, .claimFramesInvalid, s.message)
        XCTAssertTrue(s.message.contains("8021q"), s.message)

        // Retire while init is still granted: init range and frames go with it.
        let m = try XCTUnwrap(g.session.liveModule("8021q"))
        guard case .retireModuleReply = retire(g, "8021q", m.textRange.lowerBound) else { return XCTFail("retire 8021q with init granted") }
        XCTAssertEqual(g.session.liveModule("8021q")?.initRange, nil)
        var stolenAfter = try g.request("irqbypass")
        stolenAfter.frames[0] = initFrames[0]
        let sa = g.verifier.authorize(stolenAfter, requestDigest: [])
        XCTAssertEqual(sa.decision, .allow, "the frame carries no grant any more: \(sa.message)")
        XCTAssertNotNil(g.session.liveModule("irqbypass"))
        let irq = try XCTUnwrap(g.session.liveModule("irqbypass"))
        guard case .retireModuleReply = retire(g, "irqbypass", irq.textRange.lowerBound) else { return XCTFail("retire irqbypass again") }
        let again = g.verifier.authorize(try Self.withInitText(g, "8021q", initBase: initBase), requestDigest: [])
        XCTAssertEqual(again.decision, .allow, again.message)
        XCTAssertEqual(again.initFrames, initFrames)

        // The retired load owes its notice at this base (its init memory was never freed), so the
        // first notice is taken as its own and frees nothing (round 15,
        // testALateInitFreedAtTheSameBaseIsTheRetiredLoadsNotice); the next frees the live
        // load's; a third is refused.
        guard case .error(let owed) = initFreed(g, "8021q") else { return XCTFail("the retired load's owed notice freed the live load's init") }
        XCTAssertEqual(owed.code, .unknownModule, owed.message)
        XCTAssertNotNil(g.session.liveModule("8021q")?.initRange)
        guard case .moduleInitFreedReply = initFreed(g, "8021q") else { return XCTFail("init freed") }
        guard case .error(let second) = initFreed(g, "8021q") else { return XCTFail("init freed twice") }
        XCTAssertEqual(second.code, .unknownModule, second.message)
        // The old init range and frames are free: a module over them is judged on its bytes.
        XCTAssertNotEqual(g.verifier.authorize(over, requestDigest: []).reason, .claimOverlapsLive)
        var reuse = try g.request("irqbypass")
        reuse.frames[0] = initFrames[0]
        let u = g.verifier.authorize(reuse, requestDigest: [])
        XCTAssertEqual(u.decision, .allow, u.message)
    }
}

extension DocAttack10Tests {
    /// `name` claimed with its core allocation at `base` (the captured region with exactly the
    /// bytes the loader writes differently there; its frames named by the new pages).
    static func moved(_ g: FixtureGuest, _ name: String, to base: UInt64) throws -> AuthorizeModule {
        let m = try g.boot.module(name)
        let honest = try image(m.ko, m.claim, g.session)
        var claim = m.claim
        let shift = base &- claim.textBase
        claim.textBase = base
        claim.sectionAddresses = claim.sectionAddresses.mapValues { $0 &+ shift }
        let loaded = try loader(m.ko, claim, g.session)
        let there = loaded.image
        var text = m.claim.text
        var isSite = [Bool](repeating: false, count: text.count)
        for v in loaded.variable { for i in v.offset..<v.offset + v.length { isSite[i] = true } }
        for i in 0..<text.count where there[i] != honest[i] && !isSite[i] { text[i] = there[i] }
        // Run-time sites keep the state they were captured in: a call/jmp rel32 to the same
        // target (one inside the module moves with it).
        let old = m.claim.textBase, oldRange = old..<(old + UInt64(text.count))
        for v in loaded.variable {
            let o = v.offset, n = v.length
            let op = m.claim.text[o]
            let relAt: Int? = (n == 5 && (op == 0xe8 || op == 0xe9)) ? o + 1 : (n == 6 && op == 0x0f && (m.claim.text[o + 1] & 0xf0) == 0x80) ? o + 2 : nil
            guard let at = relAt else { continue }
            let rel = Int32(bitPattern: UInt32(m.claim.text[at]) | UInt32(m.claim.text[at + 1]) << 8 | UInt32(m.claim.text[at + 2]) << 16 | UInt32(m.claim.text[at + 3]) << 24)
            var target = (old &+ UInt64(o + n)) &+ UInt64(bitPattern: Int64(rel))
            if oldRange.contains(target) { target = target &+ shift }
            let newRel = UInt32(truncatingIfNeeded: target &- (base &+ UInt64(o + n)))
            for k in 0..<4 { text[at + k] = UInt8(truncatingIfNeeded: newRel >> (8 * UInt32(k))) }
        }
        var r = m.request(guestID: "g")
        r.textBase = base
        r.sections = claim.sectionAddresses.sorted { $0.key < $1.key }.map { SectionClaim(name: $0.key, address: $0.value) }
        r.text = ByteBuffer(bytes: text)
        r.frames = frames(base, text.count)
        return r
    }

    /// Attack (docs/protocol.md authorize-module step 5, "Live code: one owner per address"): on
    /// 6.1 a module's init allocation is one block, init text then init rodata and data
    /// (layout_sections(): `init_layout`, text_size page-aligned by strict_align(), then the rest;
    /// layout_symtab() appends the symbol table to it too), allocated whole by module_alloc()
    /// and freed whole by do_free_init(). While 8021q's init text is granted, the guest claims
    /// another module's core allocation right after 8021q's init *text*, over its init data.
    /// module_alloc() never hands out live memory, so the kernel cannot have produced it: 8021q's
    /// init code (granted, running) would read and write its `.init.data` in the other module's
    /// core. Control: the same module claimed at a free address (after init is freed, at the
    /// same place) is allowed.
    func testACoreAllocationOverAModulesLiveInitDataIsDenied() throws {
        let g = try FixtureGuest()
        for n in g.boot.availableModules where n != "8021q" && n != "irqbypass" { XCTAssertEqual(try g.load(n).decision, .allow, n) }
        let r = try Self.withInitText(g, "8021q")
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let initBase = try XCTUnwrap(r.initBase), initTextEnd = initBase + UInt64(try XCTUnwrap(r.initText).readableBytes)
        // 8021q's init allocation holds more than its text: `.init.data` follows it.
        let initDataAt = try g.boot.module("8021q").ko.withUnsafeBytes { raw -> Int? in
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: raw)))
            return plan.placements.first { $0.isInit && !$0.isExecutable && $0.size > 0 }?.offset
        }
        let dataOffset = try XCTUnwrap(initDataAt, "8021q has init data after its init text")
        XCTAssertGreaterThanOrEqual(UInt64(dataOffset), initTextEnd - initBase, "init data follows the page-aligned init text")

        let over = try Self.moved(g, "irqbypass", to: initTextEnd)
        let o = g.verifier.authorize(over, requestDigest: [])
        XCTAssertEqual(o.decision, .deny, "irqbypass's core allocation over 8021q's live init data: \(o.message)")
        XCTAssertEqual(o.reason, .claimOverlapsLive, o.message)
        XCTAssertNil(g.session.liveModule("irqbypass"))
        // Once init is freed (do_free_init() frees the whole init allocation), that memory is free.
        guard case .moduleInitFreedReply = initFreed(g, "8021q") else { return XCTFail("init freed") }
        let after = g.verifier.authorize(over, requestDigest: [])
        XCTAssertEqual(after.decision, .allow, after.message)
    }
}

// MARK: Restart and restore

extension DocAttack10Tests {
    /// Attack (docs/protocol.md "Restart and restore", register-guest "Once"): the guest's
    /// modules were loaded uniprocessor (the fixture boot: one CPU present and possible, so
    /// alternatives_smp_module_add() unlocked every `.smp_locks` prefix to `3e`). The session is
    /// then re-registered (`reset = 1`) with other facts, two CPUs present, and the live modules
    /// are replayed with their current bytes. The replay is judged by the new facts, as a first
    /// load: a kernel that booted with two CPUs never unlocks (alternative_instructions() sets
    /// `uniproc_patched` only for one present CPU or maxcpus <= 1), so the `3e` prefixes are
    /// denied, and a module without lock prefixes is allowed. Nothing of the old session (its
    /// modules, their key states) survives the reset.
    func testAResetWithOtherFactsJudgesTheReplayByTheNewFacts() throws {
        let g = try FixtureGuest()
        try g.loadAll()  // every module allowed under the uniprocessor facts
        let lockModules = try Set(g.boot.availableModules.filter { n in
            try g.boot.module(n).ko.withUnsafeBytes { raw in ((try ELFFile(bytes: raw).section(named: ".smp_locks"))?.size ?? 0) > 0 }
        })
        XCTAssertFalse(lockModules.isEmpty, "fixture modules with .smp_locks")
        var smp = g.registration
        smp.presentCPUs = 2
        smp.possibleCPUs = 2
        smp.reset = true
        guard case .registerGuestReply = g.verifier.respond(to: .registerGuest(smp), requestDigest: [0x5e]) else { return XCTFail("reset refused") }
        XCTAssertEqual(g.session.allowedModules, [], "the reset dropped every live module")
        // Replay in load order: each module with its current (uniprocessor) bytes.
        var verdicts: [String: ExecGateWire.Verdict] = [:]
        for n in g.boot.availableModules { verdicts[n] = try g.load(n) }
        let lockDenied = verdicts.filter { lockModules.contains($0.key) && $0.value.decision == .deny }
        XCTAssertFalse(lockDenied.isEmpty, "modules with unlocked prefixes replayed on an SMP boot: \(verdicts.mapValues(\.message))")
        for (n, d) in lockDenied {
            XCTAssertEqual(d.factsDigest, [0x5e], "\(n): judged under the new registration")
        }
        // A `3e` where the SMP kernel keeps `lock` (llc, ip6_udp_tunnel: "expected [f0 …] found [3e …]").
        XCTAssertTrue(lockDenied.values.contains { $0.message.contains("expected [f0") && $0.message.contains("found [3e") }, "\(lockDenied.mapValues(\.message))")
        // Some module without lock prefixes is allowed under the new facts, and every denied one
        // has lock prefixes or links against a denied module.
        XCTAssertTrue(verdicts.contains { $0.value.decision == .allow && !lockModules.contains($0.key) }, "\(verdicts.mapValues(\.message))")
        for (n, d) in verdicts where d.decision == .deny && !lockModules.contains(n) {
            XCTAssertEqual(d.reason, .claimBytesUnexplained, "\(n): \(d.message)")
        }
    }
}

// MARK: Alternatives at run time

extension DocAttack10Tests {
    /// Attack (docs/protocol.md authorize-patch: "a jump-label flip, static_call_update() or an
    /// alternatives_enable_smp() `lock` rewrite"): the guest asks to poke an alternative site of a
    /// live module at run time, with the replacement apply_alternatives() would have copied had
    /// the CPU bit been the other way, and with the very bytes the site holds. apply_alternatives()
    /// runs once, in module_finalize() at load (arch/x86/kernel/alternative.c, 6.1 and 6.12); the
    /// kernel never pokes an alternative site again (only `.smp_locks` prefixes, through
    /// alternatives_smp_lock()): an alternative site is no run-time patch site, both are
    /// `patch.not-allowed` and nothing is recorded.
    func testAnAlternativeSiteIsNoRunTimePatchSite() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        var found: (module: String, address: UInt64, length: Int, replacement: [UInt8])?
        for n in g.boot.availableModules {
            let m = try g.boot.module(n)
            let s = try Self.loader(m.ko, m.claim, g.session, checkExports: false)
            guard let a = s.altSites.first(where: { $0.len >= 2 }) else { continue }
            let here = Array(m.claim.text[a.off..<a.off + a.len])
            var other = [UInt8](repeating: 0x90, count: a.len)
            other[0] = here[0] == 0x90 ? 0xcc : 0x90
            found = (n, m.claim.textBase + UInt64(a.off), a.len, other)
            break
        }
        let f = try XCTUnwrap(found, "a fixture module with an alternative site")
        let siteBefore = g.session.liveModule(f.module).map { _ in g.sitesByKey().count }
        for bytes in [f.replacement, try g.currentBytes(f.address, f.length)] {
            let v = g.patch([PatchEntry(address: f.address, bytes: bytes)])
            XCTAssertEqual(v.decision, .deny, "\(f.module) alternative at 0x\(String(f.address, radix: 16)): \(v.message)")
            XCTAssertEqual(v.reason, .patchNotAllowed, v.message)
        }
        XCTAssertEqual(g.session.liveModule(f.module).map { _ in g.sitesByKey().count }, siteBefore)
    }
}
