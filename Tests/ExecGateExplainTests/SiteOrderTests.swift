// SPDX-License-Identifier: Apache-2.0
//
// The comparison's working orders against the standard library's, on the real sites of the fixture
// capture's modules: `sortVariableSites` (packed keys, permutation applied in place) against a stable
// sort by offset, `SiteMap` (shares the sorted sites when no offset repeats, else the last site at an
// offset wins) and `TargetList` (sorted, binary search) against a `Set`.

@testable import ExecGateExplain
import XCTest

final class SiteOrderTests: XCTestCase {
    /// A site's identity for these comparisons (VariableSite is not Equatable: its rule holds sets).
    static func id(_ v: VariableSite) -> String { "\(v.offset)/\(v.length)/\(v.cls)/\(v.group.map { String($0, radix: 16) } ?? "-")/\(v.label)" }

    /// The fixture module with the most variable sites, explained.
    static func busiestSession() throws -> Session {
        let f = try FixtureReplay()
        var best: Session?
        for name in f.modules.keys.sorted() {
            let s = try f.session(name)
            if s.variable.count > (best?.variable.count ?? -1) { best = s }
        }
        return try XCTUnwrap(best)
    }

    /// Seeded shuffles of the real sites, some repeated at one offset with another label (the stable
    /// order of equal offsets is observable: the first difference report and `SiteMap`'s last-wins).
    func testSortIsTheStableSortByOffset() throws {
        let s = try Self.busiestSession()
        let sites = s.variable
        XCTAssertGreaterThan(sites.count, 10, "a module with sites to sort")
        var rng = SplitMix64(state: 0x5047_5e55)
        for round in 0..<12 {
            var shuffled = sites
            for i in shuffled.indices.reversed() { shuffled.swapAt(i, rng.below(i + 1)) }
            if round % 2 == 1 {
                for _ in 0..<(1 + rng.below(20)) {
                    var d = shuffled[rng.below(shuffled.count)]
                    d.group = 0xd0_0000 + UInt64(rng.below(1000))  // a duplicate, told apart by its id
                    shuffled.insert(d, at: rng.below(shuffled.count + 1))
                }
            }
            let expected = shuffled.enumerated().sorted { ($0.element.offset, $0.offset) < ($1.element.offset, $1.offset) }.map { Self.id($0.element) }
            s.variable = shuffled
            s.sortVariableSites()
            XCTAssertEqual(s.variable.map(Self.id), expected, "round \(round)")
        }
        s.variable = sites
        s.sortVariableSites()
        XCTAssertEqual(s.variable.map(Self.id), sites.map(Self.id), "already sorted: unchanged")
    }

    /// `SiteMap` answers what the dictionary it replaced answered (last site at an address wins),
    /// with and without repeated offsets.
    func testSiteMapLastSiteAtAnOffsetWins() throws {
        let s = try Self.busiestSession()
        let sites = s.variable
        var rng = SplitMix64(state: 0x517e_3a9)
        for round in 0..<6 {
            var v = sites
            if round > 0 {
                for _ in 0..<(1 + rng.below(10)) {
                    let k = rng.below(v.count)
                    var d = v[k]
                    d.group = 0x1a7e_0000 + UInt64(round)  // a later site at the offset, told apart by its id
                    v.insert(d, at: k + 1)
                }
            }
            var reference: [UInt64: String] = [:]
            for site in v { reference[s.base &+ UInt64(site.offset)] = Self.id(site) }
            // Every other round with room to spare: the table then moves the sites into an
            // array of their count (SiteMap's trim), which must keep every site as it was.
            if round % 2 == 0 { v.reserveCapacity(3 * v.count) }
            let map = SiteMap(base: s.base, sortedByOffset: &v)
            XCTAssertTrue(v.isEmpty, "the sites moved into the table")
            XCTAssertEqual(map.count, reference.count, "round \(round)")
            for (a, want) in reference { XCTAssertEqual(map[a].map(Self.id), want, "round \(round) 0x\(String(a, radix: 16))") }
            XCTAssertNil(map[s.base &- 1])
        }
    }

    /// Membership in a `TargetList` equals membership in the `Set` of the same addresses.
    func testTargetListMembershipIsTheSets() {
        var rng = SplitMix64(state: 0x7a46_e75)
        for round in 0..<200 {
            let base: UInt64 = 0xffff_ffff_8100_0000 &+ UInt64(rng.below(1 << 16)) << 4
            var members: [UInt64] = []
            for _ in 0..<rng.below(round < 100 ? 6 : 80) {
                members.append(base &+ UInt64(rng.below(256)))
                if rng.below(4) == 0, let m = members.last { members.append(m) }
            }
            if round % 10 == 0 { members.append(UInt64.max); members.append(0) }
            let set = Set(members)
            let list = TargetList(members)
            XCTAssertEqual(list.sorted, set.sorted(), "round \(round)")
            for probe in (0..<300).map({ _ in base &+ UInt64(rng.below(300)) }) + [0, UInt64.max, base &- 1] {
                XCTAssertEqual(list.contains(probe), set.contains(probe), "round \(round) 0x\(String(probe, radix: 16))")
            }
        }
    }
}
