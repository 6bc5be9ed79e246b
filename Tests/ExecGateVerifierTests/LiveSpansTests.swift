// SPDX-License-Identifier: Apache-2.0
//
// The live modules' range indexes (`LiveSpans`): the commit-time overlap check and the patch
// owner look-up answer by one binary search each, as the walks over every live module they
// replaced answered (a review, 2026-12-07: both were a request's cost times the modules a guest
// keeps live).

import ExecGateExplain
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class LiveSpansTests: XCTestCase {
    /// Seeded: owners come and go with ranges that never meet another owner's (as commit keeps
    /// them) but may meet their own; every answer equals a scan of the owners' ranges.
    func testLiveSpansAnswerAsAScanOfEveryOwnersRanges() {
        var rng = SeededRNG(seed: 0x5a4e_1ce5)
        var index = LiveSpans()
        var held: [String: [Range<UInt64>]] = [:]
        func meetsHeld(_ r: Range<UInt64>) -> String? { held.first { $0.value.contains { $0.overlaps(r) } }?.key }
        for step in 0..<2500 {
            if !held.isEmpty && Int.random(in: 0..<3, using: &rng) == 0 {
                let name = held.keys.sorted()[Int.random(in: 0..<held.count, using: &rng)]
                index.remove(held[name]!, owner: name)
                held[name] = nil
            } else {
                // One to four ranges of one owner, possibly meeting each other or empty.
                let base = UInt64.random(in: 0..<1 << 20, using: &rng) * 16
                let ranges = (0..<Int.random(in: 1...4, using: &rng)).map { _ -> Range<UInt64> in
                    let lo = base + UInt64.random(in: 0..<256, using: &rng)
                    return lo..<lo + UInt64.random(in: 0..<96, using: &rng)
                }
                let name = "m\(step)"
                // Asked as commit asks: each range against the index, the answer the scan's.
                var refused = false
                for r in ranges {
                    let scan = meetsHeld(r)
                    XCTAssertEqual(index.firstOverlap(r) != nil, scan != nil, "step \(step) \(r)")
                    if let o = index.firstOverlap(r) { XCTAssertTrue(held[o]!.contains { $0.overlaps(r) }, "named an owner whose ranges miss \(r)") }
                    refused = refused || scan != nil
                }
                if !refused {
                    index.insert(ranges, owner: name)
                    held[name] = ranges
                }
            }
            XCTAssertTrue(index.isSortedAndDisjoint, "step \(step)")
            // Addresses: at span ends, inside, and at random.
            for _ in 0..<8 {
                let a = UInt64.random(in: 0..<(1 << 24) + 512, using: &rng)
                let scan = held.first { $0.value.contains { $0.contains(a) } }?.key
                XCTAssertEqual(index.owner(of: a), scan, "step \(step) 0x\(String(a, radix: 16))")
            }
        }
        for s in index.spans {
            XCTAssertEqual(index.owner(of: s.lo), s.owner)
            XCTAssertEqual(index.owner(of: s.hi - 1), s.owner)
            XCTAssertNotEqual(index.owner(of: s.hi), s.owner == index.owner(of: s.hi) ? nil : s.owner)
        }
        XCTAssertEqual(LiveSpans.merged([5..<9, 0..<3, 3..<4, 8..<12, 20..<20]), [0..<4, 5..<12])
        XCTAssertNil(index.firstOverlap(7..<7), "an empty range meets nothing")
        // Were two spans ever to share a start (commit keeps them apart), removing one still
        // finds it and leaves the other: no stale span.
        var odd = LiveSpans()
        odd.insert([10..<20], owner: "a")
        odd.insert([10..<30], owner: "b")
        odd.remove([10..<20], owner: "a")
        XCTAssertEqual(odd.spans, [LiveSpans.Span(lo: 10, hi: 30, owner: "b")])
        odd.insert([10..<20], owner: "a")
        odd.remove([10..<30], owner: "b")
        XCTAssertEqual(odd.spans, [LiveSpans.Span(lo: 10, hi: 20, owner: "a")])
    }

    /// The owner index takes a module's text and init text as parts of what it holds; commit
    /// refuses a module whose text or init text lies outside its allocations (the verifier never
    /// makes one: fail closed), so two modules' owner spans never meet.
    func testCommitRefusesTextOutsideTheAllocationItHolds() throws {
        let s = try FixtureGuest().session  // the fixture boot's guest "g", registered, nothing loaded
        let b = s.facts.moduleArea.lowerBound
        let outside = LiveModule(name: "a", coreRange: b..<b + 0x1000, textRange: b + 0x800..<b + 0x1800, frames: [1],
                                 initRange: nil, initFrames: [], exports: nil, sites: nil, keyStates: [:])
        guard case .failure(let r1) = s.commit(outside) else { return XCTFail("text past its core committed") }
        XCTAssertEqual(r1.reason, .claimInvalid, r1.message)
        let initOutside = LiveModule(name: "a", coreRange: b..<b + 0x1000, textRange: b..<b + 0x1000, frames: [1],
                                     initRange: b + 0x4000..<b + 0x6000, initAllocation: b + 0x4000..<b + 0x5000, initFrames: [2, 3],
                                     exports: nil, sites: nil, keyStates: [:])
        guard case .failure(let r2) = s.commit(initOutside) else { return XCTFail("init text past its allocation committed") }
        XCTAssertEqual(r2.reason, .claimInvalid, r2.message)
        XCTAssertEqual(s.liveModuleCount, 0)
        let inside = LiveModule(name: "a", coreRange: b..<b + 0x2000, textRange: b..<b + 0x1000, frames: [1],
                                initRange: b + 0x4000..<b + 0x5000, initAllocation: b + 0x4000..<b + 0x6000, initFrames: [2],
                                exports: nil, sites: nil, keyStates: [:])
        guard case .success = s.commit(inside) else { return XCTFail("a module inside its allocations refused") }
    }

    /// Served: hundreds of live modules of one guest, each claim's overlap found against the one
    /// module it meets (text, init allocation, per-cpu area), the refusal naming that module and
    /// its range; init text freed is free again, and a retired module's ranges with it. Patch
    /// entries are owned by the module whose text or granted init text holds them.
    func testOverlapsAndPatchOwnersAmongHundredsOfLiveModules() throws {
        let s = try FixtureGuest().session  // the fixture boot's guest "g", registered, nothing loaded
        let area = s.facts.moduleArea.lowerBound
        let n = 500
        // Module k: core [base, +0x2000) with text its first page, init [base + 0x4000, +0x1000),
        // per-cpu [k * 64, +32); committed from the top down (each insert at the front).
        func base(_ k: Int) -> UInt64 { area + UInt64(k) * 0x8000 }
        for k in (0..<n).reversed() {
            let b = base(k)
            let m = LiveModule(name: "m\(k)", coreRange: b..<b + 0x2000, textRange: b..<b + 0x1000, frames: [UInt64(2 * k)],
                               initRange: b + 0x4000..<b + 0x5000, percpuRange: 0x1000 + UInt64(k) * 64..<0x1000 + UInt64(k) * 64 + 32,
                               initFrames: [UInt64(2 * k + 1)], exports: nil, sites: nil, keyStates: [:])
            guard case .success(let t) = s.commit(m) else { return XCTFail("m\(k) refused") }
            XCTAssertNil(s.finish(t))
        }
        for k in stride(from: 0, to: n, by: 23) {
            let b = base(k)
            // The last byte of its core, its init allocation, a range across its core's end.
            for (r, theirs) in [(b + 0x1fff..<b + 0x3000, b..<b + 0x2000), (b + 0x4800..<b + 0x4900, b + 0x4000..<b + 0x5000)] {
                let refusal = try XCTUnwrap(s.preflight(name: "new", coreRange: r, initRange: nil, frames: [], initFrames: []))
                XCTAssertEqual(refusal.reason, .claimOverlapsLive)
                XCTAssertTrue(refusal.message.contains("live module 'm\(k)' at 0x\(String(theirs.lowerBound, radix: 16))..<0x\(String(theirs.upperBound, radix: 16))"), refusal.message)
            }
            // The gaps between modules are free.
            XCTAssertNil(s.preflight(name: "new", coreRange: b + 0x2000..<b + 0x4000, initRange: b + 0x5000..<b + 0x8000, frames: [], initFrames: []))
            let p = try XCTUnwrap(s.preflight(name: "new", coreRange: nil, initRange: nil, percpuRange: 0x1000 + UInt64(k) * 64 + 31..<0x1000 + UInt64(k) * 64 + 40,
                                              frames: [], initFrames: []))
            XCTAssertTrue(p.message.contains("live module 'm\(k)''s per-cpu area"), p.message)
            XCTAssertNil(s.preflight(name: "new", coreRange: nil, initRange: nil, percpuRange: 0x1000 + UInt64(k) * 64 + 32..<0x1000 + UInt64(k) * 64 + 64,
                                     frames: [], initFrames: []))
            // Patch entries: in its text, its init text, and past its text (its data: no owner).
            for (a, owned) in [(b + 0x10, true), (b + 0x4010, true), (b + 0x1010, false)] {
                guard case .denied(_, let module, let message, _) = s.judgePatches([PatchEntry(address: a, bytes: [0x90])]) else { return XCTFail("patch allowed") }
                if owned { XCTAssertEqual(module, "m\(k)", message) } else { XCTAssertTrue(message.contains("is not in live code"), message) }
            }
        }
        // Init freed: its init allocation is free, its init text no longer owned; retired: its core too.
        let k = 321, b = base(k)
        XCTAssertEqual(s.initFreed(name: "m\(k)", initBase: b + 0x4000), .freed)
        XCTAssertNil(s.preflight(name: "new", coreRange: b + 0x4000..<b + 0x5000, initRange: nil, frames: [], initFrames: []))
        guard case .denied(_, _, let message, _) = s.judgePatches([PatchEntry(address: b + 0x4010, bytes: [0x90])]) else { return XCTFail("patch allowed") }
        XCTAssertTrue(message.contains("is not in live code"), message)
        guard case .retired = s.retire(name: "m\(k)", textBase: b) else { return XCTFail("retire") }
        XCTAssertNil(s.preflight(name: "new", coreRange: b..<b + 0x8000, initRange: nil, percpuRange: 0x1000 + UInt64(k) * 64..<0x1000 + UInt64(k) * 64 + 32,
                                 frames: [], initFrames: []))
        XCTAssertNotNil(s.preflight(name: "new", coreRange: b..<b + 0x8001, initRange: nil, frames: [], initFrames: []), "the next module's core")
        XCTAssertEqual(s.liveModuleCount, n - 1)
    }
}
