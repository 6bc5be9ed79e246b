// SPDX-License-Identifier: Apache-2.0
//
// Doc-attack round 8: the guest as attacker, using docs/protocol.md and docs/trust.md as its
// manual. Failed attacks kept (each asserts what the service answers and why it is the kernel's).

import ExecGateExplain
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack8Tests: XCTestCase {
    /// Attack (a key of another module, retire order): test_static_keys' jump labels use keys
    /// test_static_key_base defines and exports. The guest flips such a key as a whole (legal),
    /// retires the importer, and loads it again with its sites in the key's *old* state (the
    /// bytes it was first granted), hoping the session forgot the flip. It did, and that is the
    /// kernel's: the key lives on in its (live) exporter's data with no site left, so the guest
    /// can move it back without a single poke (static_key_disable() on a key with no entries
    /// patches nothing, kernel/jump_label.c), and jump_label_add_module() then gives the reloaded
    /// importer's sites whatever the key holds. The reload is allowed in either state, and its
    /// state becomes the key's. While the importer is live, a batch covering part of the key's
    /// sites is partial, and the exporter cannot be retired under it.
    func testAForeignKeyWithNoLiveSiteLeftMayComeBackInEitherState() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let s = g.session
        // A jump-label key defined in one live module, every site of it in another.
        var found: (key: UInt64, sites: [(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)], owner: String, importer: String)?
        for (key, sites) in g.sitesByKey().sorted(by: { $0.key < $1.key }) where sites.allSatisfy({ $0.site.kind == .jumpLabel }) && sites.count >= 2 {
            let users = Set(sites.map { $0.table.module })
            guard users.count == 1, let importer = users.first,
                  let owner = s.allowedModules.first(where: { s.liveModule($0)?.coreRange.contains(key) ?? false }), owner != importer else { continue }
            found = (key, sites, owner, importer)
            break
        }
        let (key, sites, owner, importer) = try XCTUnwrap(found, "a key of one fixture module used by another")
        XCTAssertTrue(s.liveModule(importer)?.dependsOn.contains(owner) ?? false)
        let state = try XCTUnwrap(s.state(ofKey: key))
        func entries(_ sites: ArraySlice<(table: RuntimeSiteTable, site: RuntimeSiteTable.Site)>, _ st: UInt64) throws -> [PatchEntry] {
            try sites.map { PatchEntry(address: $0.site.address, bytes: try XCTUnwrap($0.table.encoding(at: $0.site.address, state: st))) }
        }

        // Part of the key: partial, nothing recorded.
        let half = g.patch(try entries(sites.dropLast(), 1 - state))
        XCTAssertEqual(half.decision, .deny, half.message)
        XCTAssertEqual(half.reason, .patchPartialKey, half.message)
        XCTAssertEqual(s.state(ofKey: key), state)
        // The exporter is pinned by its user.
        let o = try XCTUnwrap(s.liveModule(owner))
        guard case .error(let inUse) = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: o.identity, textBase: o.textRange.lowerBound)), requestDigest: []) else {
            return XCTFail("the exporter of a live user's key was retired")
        }
        XCTAssertEqual(inUse.code, .moduleInUse, inUse.message)

        // The whole key: allowed, recorded.
        let whole = g.patch(try entries(sites[...], 1 - state))
        XCTAssertEqual(whole.decision, .allow, whole.message)
        XCTAssertEqual(s.state(ofKey: key), 1 - state)

        // Retire the importer: the key has no live site left and forgets its state.
        let m = try XCTUnwrap(s.liveModule(importer))
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m.identity, textBase: m.textRange.lowerBound)), requestDigest: []) else {
            return XCTFail("retire \(importer)")
        }
        XCTAssertNil(s.state(ofKey: key))
        // Reloaded as first granted (the key's old state): allowed, and the key is there again.
        let old = try g.load(importer)
        XCTAssertEqual(old.decision, .allow, old.message)
        XCTAssertEqual(s.state(ofKey: key), state)
        // Flipped again, retired, reloaded with its sites in the flipped state: allowed too.
        XCTAssertEqual(g.patch(try entries(sites[...], 1 - state)).decision, .allow)
        let m2 = try XCTUnwrap(s.liveModule(importer))
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m2.identity, textBase: m2.textRange.lowerBound)), requestDigest: []) else {
            return XCTFail("retire \(importer) again")
        }
        var flipped = try g.request(importer)
        var text = try XCTUnwrap(flipped.text)
        let base = try XCTUnwrap(flipped.textBase)
        for x in sites {
            text.setBytes(try XCTUnwrap(x.table.encoding(at: x.site.address, state: 1 - state)), at: text.readerIndex + Int(x.site.address - base))
        }
        flipped.text = text
        flipped.sections = flipped.sections.map { sec in
            guard let b = sec.bytes else { return sec }
            return SectionClaim(name: sec.name, address: sec.address, bytes: text.getSlice(at: text.readerIndex + Int(sec.address - base), length: b.readableBytes))
        }
        let new = g.verifier.authorize(flipped, requestDigest: [])
        XCTAssertEqual(new.decision, .allow, new.message)
        XCTAssertEqual(s.state(ofKey: key), 1 - state)
    }
}

extension DocAttack8Tests {
    /// The run-time address of a symbol of the fixture registration.
    func symbol(_ g: FixtureGuest, _ name: String) throws -> UInt64 {
        try XCTUnwrap(g.registration.symbols.first { $0.name == name }?.address, name)
    }

    /// HOLE: ip6_udp_tunnel calls `preempt_schedule` through its trampoline (`__preempt_schedule()`,
    /// arch/x86/include/asm/preempt.h: `asm volatile ("call __SCT__preempt_schedule" :
    /// ASM_CALL_CONSTRAINT)`, no clobber: the compiler keeps every register live across it, which
    /// preempt_schedule_thunk preserves). The only values the kernel ever gives that key are
    /// sched_dynamic_update()'s `preempt_schedule_dynamic_enabled` (preempt_schedule_thunk) and
    /// `preempt_schedule_dynamic_disabled` (NULL) (kernel/sched/core.c, 6.1 and 6.12), but the
    /// verifier took `__static_call_return0` as legal for every key: the guest wrote
    /// `2e 2e 2e 31 c0` (`xor %eax,%eax`, what __static_call_transform() writes only for a key set
    /// to __static_call_return0) at the site, at run time and at load, and verified code then had
    /// %eax zeroed behind the compiler's back at every preemption point.
    func testPreemptScheduleSitesNeverTakeTheReturn0Form() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let tramp = try symbol(g, "__SCT__preempt_schedule")
        let t = try XCTUnwrap(g.session.runtimeSites.first { $0.module == "ip6_udp_tunnel" })
        let sites = t.siteList.filter { $0.kind == .staticCall && $0.key == tramp }
        XCTAssertFalse(sites.isEmpty, "ip6_udp_tunnel calls preempt_schedule")
        XCTAssertEqual(Set(g.sitesByKey()[tramp]?.map(\.site.address) ?? []), Set(sites.map(\.address)), "the batch covers the whole key")
        let state = try XCTUnwrap(g.session.state(ofKey: tramp))
        let xor5: [UInt8] = [0x2e, 0x2e, 0x2e, 0x31, 0xc0]
        let v = g.patch(sites.map { PatchEntry(address: $0.address, bytes: xor5) })
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .patchNotAllowed, v.message)
        XCTAssertEqual(g.session.state(ofKey: tramp), state)
        // Its two states are legal (whole key): NULL (NOP5) and a call to preempt_schedule_thunk.
        let thunk = try symbol(g, "preempt_schedule_thunk")
        for st in [thunk, 0, thunk] as [UInt64] {
            let b = try sites.map { PatchEntry(address: $0.address, bytes: try XCTUnwrap(t.encoding(at: $0.address, state: st))) }
            let ok = g.patch(b)
            XCTAssertEqual(ok.decision, .allow, ok.message)
            XCTAssertEqual(g.session.state(ofKey: tramp), st)
        }

        // At load: ip6_udp_tunnel claimed with the site in the return0 form.
        let m = try XCTUnwrap(g.session.liveModule("ip6_udp_tunnel"))
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m.identity, textBase: m.textRange.lowerBound)), requestDigest: []) else {
            return XCTFail("retire ip6_udp_tunnel")
        }
        var r = try g.request("ip6_udp_tunnel")
        var text = try XCTUnwrap(r.text)
        let base = try XCTUnwrap(r.textBase)
        for s in sites { text.setBytes(xor5, at: text.readerIndex + Int(s.address - base)) }
        r.text = text
        r.sections = r.sections.map { sec in
            guard let b = sec.bytes else { return sec }
            return SectionClaim(name: sec.name, address: sec.address, bytes: text.getSlice(at: text.readerIndex + Int(sec.address - base), length: b.readableBytes))
        }
        let load = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(load.decision, .deny, load.message)
        XCTAssertEqual(load.reason, .claimBytesUnexplained, load.message)
        XCTAssertEqual(try g.load("ip6_udp_tunnel").decision, .allow, "as captured")
    }
}

extension DocAttack8Tests {
    /// HOLE: irqbypass calls `might_resched` (`static_call_mod(might_resched)()`, 4 sites). The
    /// kernel gives that key `__cond_resched` or `(void *)&__static_call_return0`
    /// (`might_resched_dynamic_disabled`, kernel/sched/core.c sched_dynamic_update(); likewise
    /// cond_resched), never NULL, but the verifier took NULL as a state of every key: the whole key
    /// moved to NOP5 (the call dropped, a form the kernel never writes at these sites) was allowed.
    func testMightReschedSitesNeverTakeTheNullForm() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let tramp = try symbol(g, "__SCT__might_resched")
        let t = try XCTUnwrap(g.session.runtimeSites.first { $0.module == "irqbypass" })
        let sites = t.siteList.filter { $0.kind == .staticCall && $0.key == tramp }
        XCTAssertEqual(sites.count, 4)
        XCTAssertEqual(Set(g.sitesByKey()[tramp]?.map(\.site.address) ?? []), Set(sites.map(\.address)), "the batch covers the whole key")
        let state = try XCTUnwrap(g.session.state(ofKey: tramp))
        let v = g.patch(sites.map { PatchEntry(address: $0.address, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00]) })
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .patchNotAllowed, v.message)
        XCTAssertEqual(g.session.state(ofKey: tramp), state)
        // Its two states: __static_call_return0 (the xor form) and __cond_resched.
        let ret0 = try symbol(g, "__static_call_return0"), cond = try symbol(g, "__cond_resched")
        for st in [ret0, cond] {
            let ok = g.patch(try sites.map { PatchEntry(address: $0.address, bytes: try XCTUnwrap(t.encoding(at: $0.address, state: st))) })
            XCTAssertEqual(ok.decision, .allow, ok.message)
            XCTAssertEqual(g.session.state(ofKey: tramp), st)
        }
    }
}

extension DocAttack8Tests {
    /// Review 8: the registration's `static_call_key` list names `__static_call_return0` as an
    /// allowed target of `__SCT__preempt_schedule` (FactsPlausibility accepts it: a core function
    /// entry outside init text). The site rule of a key disabled to NULL keeps no return0 form
    /// (no `2e 2e 2e 31 c0`), so it no longer held `call __static_call_return0` back either (the
    /// generic rule refuses that call because the kernel writes the xor form instead), and the
    /// listed target made the call trusted: ip6_udp_tunnel's preempt_schedule sites moved whole to
    /// `call __static_call_return0`, %eax zeroed under `__preempt_schedule()`'s no-clobber asm.
    /// No registration changes what sched_dynamic_update() writes (kernel/sched/core.c:
    /// preempt_schedule_thunk or NULL), nor what tracepoint_update_call() writes.
    static func call(at a: UInt64, to d: UInt64) -> [UInt8] {
        let rel = UInt32(truncatingIfNeeded: d &- (a &+ 5))
        return [0xe8] + (0..<4).map { UInt8(truncatingIfNeeded: rel >> (8 * $0)) }
    }

    func testARegisteredTargetDoesNotGiveAPreemptKeyTheReturn0State() throws {
        let ref = try FixtureGuest()
        let tramp = try symbol(ref, "__SCT__preempt_schedule"), ret0 = try symbol(ref, "__static_call_return0")
        let thunk = try symbol(ref, "preempt_schedule_thunk")
        let g = try FixtureGuest(policy: { _ in }, editRegistration: { r in
            r.staticCallKeys.append(StaticCallKeyFact(key: tramp, current: thunk, allowed: [ret0]))
        })
        try g.loadAll()
        let t = try XCTUnwrap(g.session.runtimeSites.first { $0.module == "ip6_udp_tunnel" })
        let sites = t.siteList.filter { $0.kind == .staticCall && $0.key == tramp }
        XCTAssertFalse(sites.isEmpty)
        XCTAssertEqual(Set(g.sitesByKey()[tramp]?.map(\.site.address) ?? []), Set(sites.map(\.address)), "the batch covers the whole key")
        let state = g.session.state(ofKey: tramp)
        let v = g.patch(sites.map { PatchEntry(address: $0.address, bytes: Self.call(at: $0.address, to: ret0)) })
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(g.session.state(ofKey: tramp), state)
        // Its two states stay legal.
        for st in [0, thunk] as [UInt64] {
            let ok = g.patch(try sites.map { PatchEntry(address: $0.address, bytes: try XCTUnwrap(t.encoding(at: $0.address, state: st))) })
            XCTAssertEqual(ok.decision, .allow, ok.message)
        }
    }
}
