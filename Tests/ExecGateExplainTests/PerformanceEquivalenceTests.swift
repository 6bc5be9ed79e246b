// SPDX-License-Identifier: Apache-2.0
//
// Differential checks of the explainer's speed-ups (77f2fbf..e4bfb1a) against the code they
// replaced, re-implemented here, on seeded random inputs a hostile module could produce:
// - `Spans` (one array, sorted only when out of order) against the old three-array version and a
//   naive scan for "the first span in (lo, value) order holding [x, x + n)";
// - `ModuleLoader.firstWord(_:skippingLeadingSpaces:)` against the `split` it replaced;
// - `AddressSort.radixSort(_:from:shift:)` on packed (offset, index) words against `sort()`,
//   `AddressSort.sort` and `AddressTable.sortedKeys` against `sort()`;
//   `FunctionEntries.contains` against `Set.contains`;
// - `SlidStaticCallTargets.forEachTarget` (the key-range prefilter) against its subscript;
// - `TargetList(normalizing:)` against `TargetList(_:)`;
// - `SiteMap` taking the sites by move (reference-counted rules intact);
// - `Session.oneTypeRun` (the data-relocation check's loop for a run of one type) against the
//   tests of the one mixed loop it replaced, record by record;
// - `FunctionEntrySet.contains` (one module's span searched) against asking every module.

@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class PerformanceEquivalenceTests: XCTestCase {
    // MARK: Spans

    /// `Spans` as it was at 77f2fbf (three parallel arrays, always sorted).
    struct OldSpans {
        var lows: [UInt64] = [], highs: [UInt64] = [], values: [Int] = []
        var disjoint = true
        init(_ spans: [(lo: UInt64, hi: UInt64, value: Int)]) {
            let sorted = spans.filter { $0.lo < $0.hi }.sorted { ($0.lo, $0.value) < ($1.lo, $1.value) }
            lows = sorted.map(\.lo); highs = sorted.map(\.hi); values = sorted.map(\.value)
            for k in sorted.indices.dropFirst() where lows[k] < highs[k - 1] { disjoint = false; break }
        }
        var all: [(lo: UInt64, hi: UInt64, value: Int)] { lows.indices.map { (lows[$0], highs[$0], values[$0]) } }
        func find(_ x: UInt64, _ n: UInt64) -> (lo: UInt64, hi: UInt64, value: Int)? {
            let (end, o) = x.addingReportingOverflow(n)
            guard !o, n >= 1 else { return nil }
            if !disjoint || lows.count <= 8 {
                for k in lows.indices where x >= lows[k] && end <= highs[k] { return (lows[k], highs[k], values[k]) }
                return nil
            }
            var lo = 0, hi = lows.count
            while lo < hi { let mid = (lo + hi) / 2; if lows[mid] <= x { lo = mid + 1 } else { hi = mid } }
            guard lo > 0, end <= highs[lo - 1] else { return nil }
            return (lows[lo - 1], highs[lo - 1], values[lo - 1])
        }
    }

    /// The definition: the first span, in (lo, value) order, holding [x, x + n); nil for n = 0 or a wrap.
    static func naiveFind(_ ordered: [(lo: UInt64, hi: UInt64, value: Int)], _ x: UInt64, _ n: UInt64) -> (lo: UInt64, hi: UInt64, value: Int)? {
        guard n >= 1, x <= UInt64.max - n else { return nil }
        return ordered.first { x >= $0.lo && x + n <= $0.hi }
    }

    static func same(_ a: (lo: UInt64, hi: UInt64, value: Int)?, _ b: (lo: UInt64, hi: UInt64, value: Int)?) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case let (x?, y?): return x.lo == y.lo && x.hi == y.hi && x.value == y.value
        default: return false
        }
    }

    func testSpansFindMatchesOldAndNaiveOnSeededSpans() {
        var rng = SeededRNG(seed: 0x5ba75)
        var found = 0, missed = 0, searched = 0
        for round in 0..<1_500 {
            let count = rng.below(20)
            let top = UInt64.max - UInt64(rng.below(3)) * 1_000  // sometimes spans near 2^64
            let nearTop = rng.below(4) == 0
            var input: [(lo: UInt64, hi: UInt64, value: Int)] = []
            let inOrder = rng.below(2) == 0
            var cursor: UInt64 = nearTop ? top - 400 : UInt64(rng.below(50))
            for k in 0..<count {
                let lo: UInt64, hi: UInt64
                if inOrder {
                    lo = cursor
                    hi = Swift.min(top, lo + UInt64(rng.below(30)))
                    cursor = Swift.min(top, hi + UInt64(rng.below(3)))  // disjoint when increasing
                } else {
                    lo = (nearTop ? top - 400 : 0) + UInt64(rng.below(300))
                    hi = lo + UInt64(rng.below(40)) - (rng.below(10) == 0 ? Swift.min(lo, 5) : 0)  // empty or inverted sometimes
                }
                // Values usually distinct section indices, now and then repeated or out of order.
                let value = rng.below(6) == 0 ? rng.below(4) : (inOrder ? k : count - k)
                input.append((lo, hi, value))
            }
            let new = Spans(input), old = OldSpans(input)
            // The non-empty spans in (lo, value) order, input order among equal pairs.
            let ordered = input.enumerated().filter { $0.element.lo < $0.element.hi }
                .sorted { ($0.element.lo, $0.element.value, $0.offset) < ($1.element.lo, $1.element.value, $1.offset) }.map(\.element)
            XCTAssertEqual(new.isEmpty, old.lows.isEmpty)
            XCTAssertTrue(new.all.count == old.all.count && zip(new.all, old.all).allSatisfy { Self.same($0, $1) }, "round \(round) all")
            let base: UInt64 = nearTop ? top - 420 : 0
            for dx in stride(from: 0, to: 460, by: 1 + rng.below(3)) {
                let x = base &+ UInt64(dx)
                for n in [0, 1, 2, 5, 17, 64] as [UInt64] {
                    let a = new.find(x, n), b = old.find(x, n), c = Self.naiveFind(ordered, x, n)
                    searched += 1
                    if !Self.same(a, b) || !Self.same(a, c) {
                        XCTFail("round \(round) find(\(x), \(n)): new \(String(describing: a)) old \(String(describing: b)) naive \(String(describing: c)) of \(input)")
                        return
                    }
                    if a == nil { missed += 1 } else { found += 1 }
                }
            }
            for x in [UInt64.max, UInt64.max - 1, top, 0] { XCTAssertTrue(Self.same(new.find(x, 1), old.find(x, 1)) && Self.same(new.find(x, 2), old.find(x, 2))) }
        }
        XCTAssertGreaterThan(found, 50_000)
        XCTAssertGreaterThan(missed, 50_000)
        XCTAssertGreaterThan(searched, 500_000)
    }

    // MARK: firstWord

    func testFirstWordMatchesSplitOnSeededStrings() {
        var rng = SeededRNG(seed: 0xf1a57)
        let pieces = [" ", " ", "  ", "6", ".1", ".0-28", "-amd64", "SMP", "a", "\r\n", "\n", "\t", "\u{301}", "\u{fc}", "e\u{301}",
                      "\u{a0}", "\u{3000}", "\u{200d}", "\u{1f600}", "\u{fffd}", "\0", "mod_unload", "\u{0}x"]
        var nonASCII = 0
        for round in 0..<40_000 {
            var s = ""
            for _ in 0..<rng.below(9) { s += pieces[rng.below(rng.below(3) == 0 ? pieces.count : 9)] }
            if !s.utf8.allSatisfy({ $0 < 0x80 }) { nonASCII += 1 }
            let oldSkipping = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true).first.map(String.init) ?? ""
            let oldPlain = String(s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)[0])
            XCTAssertEqual(ModuleLoader.firstWord(s, skippingLeadingSpaces: true), oldSkipping, "round \(round) \(Array(s.unicodeScalars))")
            XCTAssertEqual(ModuleLoader.firstWord(s), oldPlain, "round \(round) \(Array(s.unicodeScalars))")
        }
        XCTAssertGreaterThan(nonASCII, 5_000)
        XCTAssertEqual(ModuleLoader.firstWord("   6.1.0-28-amd64 SMP", skippingLeadingSpaces: true), "6.1.0-28-amd64")
        XCTAssertEqual(ModuleLoader.firstWord("    ", skippingLeadingSpaces: true), "")
        XCTAssertEqual(ModuleLoader.firstWord(" \u{301}6.1 SMP", skippingLeadingSpaces: true), " \u{301}6.1")  // one Character, not a space
    }

    // MARK: Sorts

    func testPackedSiteKeysRadixSortIsStableByOffset() {
        var rng = SeededRNG(seed: 0x50f7)
        for round in 0..<400 {
            let n = rng.below(3_000)
            let spread = [1, 2, 16, 300, 70_000, 1 << 27][rng.below(6)]  // many ties .. a 128 MiB region
            var keys: [UInt64] = []
            for i in 0..<n { keys.append(UInt64(rng.below(spread)) << 24 | UInt64(i)) }  // appended in index order
            var radix = keys, reference = keys
            AddressSort.radixSort(&radix, from: 0, shift: 24)
            reference.sort()
            XCTAssertEqual(radix, reference, "round \(round)")
        }
    }

    func testSortAddressesAndSortedKeysMatchSort() {
        var rng = SeededRNG(seed: 0xadd5)
        for round in 0..<600 {
            let n = rng.below(400)
            let base = [0, 0xffff_ffff_c000_0000, UInt64.max - (1 << 33), 1 << 40][rng.below(4)]
            let spread = [UInt64(16), 1 << 20, UInt64(UInt32.max), UInt64(UInt32.max) + 1, 1 << 34][rng.below(5)]
            var a: [UInt64] = []
            for _ in 0..<n { a.append(base &+ rng.next() % spread) }
            if rng.below(5) == 0 { a.append(UInt64.max) }
            if rng.below(5) == 0, let x = a.first { a.append(x) }
            var s = a, r = a
            AddressSort.sort(&s)
            r.sort()
            XCTAssertEqual(s, r, "round \(round)")
            XCTAssertEqual(FunctionEntries(a).sorted, Array(Set(a)).sorted(), "round \(round)")
            // `FunctionEntries.contains` (its span test before the search) answers as
            // `Set.contains`, the key `UInt64.max` included, on present keys, their neighbours
            // and far addresses.
            let entries = FunctionEntries(a), reference = Set(a)
            var asks: [UInt64] = [0, 1, UInt64.max, UInt64.max - 1, base, base &- 1]
            for x in a.prefix(40) { asks += [x, x &- 1, x &+ 1, x ^ (1 << 63)] }
            for _ in 0..<16 { asks.append(rng.next()) }
            for x in asks {
                XCTAssertEqual(entries.contains(x), reference.contains(x), "round \(round): 0x\(String(x, radix: 16))")
            }
            var t = AddressTable()
            var d: [UInt64: UInt64] = [:]
            for (k, x) in a.enumerated() { t.set(x, UInt64(k)); d[x] = UInt64(k) }
            XCTAssertEqual(t.sortedKeys, d.keys.sorted(), "round \(round)")
            XCTAssertEqual(t.dictionary, d, "round \(round)")
            for x in a.prefix(20) { XCTAssertEqual(t[x], d[x]) }
        }
    }

    func testTargetListNormalizingMatchesInit() {
        var rng = SeededRNG(seed: 0x7a26)
        for _ in 0..<2_000 {
            var a: [UInt64] = []
            for _ in 0..<rng.below(12) { a.append(rng.below(2) == 0 ? UInt64(rng.below(6)) : rng.next()) }
            var b = a
            XCTAssertEqual(TargetList(normalizing: &b), TargetList(a))
        }
    }

    // MARK: The core static-call table's key-range prefilter

    func testForEachTargetMatchesSubscriptAtSlides() {
        var rng = SeededRNG(seed: 0x51de)
        let image = KernelSlide.imageBase
        for round in 0..<300 {
            var table: [UInt64: Set<UInt64>] = [:]
            let kinds: [UInt64] = [image, image + 0x100_0000, 0x2_0000, UInt64.max - 0x1000, image - 0x10]
            for _ in 0..<rng.below(8) {
                let k = kinds[rng.below(kinds.count)] &+ UInt64(rng.below(0x800))
                var targets = Set<UInt64>()
                for _ in 0..<(1 + rng.below(3)) { targets.insert(image + UInt64(rng.below(0x10_0000))) }
                table[k] = targets
            }
            let slide = KernelSlide([0, 0x20_0000, 0x3fe0_0000, 0x7fe0_0000][rng.below(4)])
            var t = SlidStaticCallTargets(linkTime: table, slide: slide)
            // Own entries sometimes, at and away from the shared keys.
            for _ in 0..<rng.below(3) {
                let k = rng.below(2) == 0 ? (table.keys.first.map(slide.runTime) ?? 0) : 0xffff_ffff_c000_0000 + UInt64(rng.below(0x1000))
                t[k, default: []].insert(image + 0x1234)
            }
            var probes: [UInt64] = Array(table.keys.map(slide.runTime)) + Array(table.keys) + Array(t.own.keys)
            for k in table.keys { probes += [slide.runTime(k) &+ 1, slide.runTime(k) &- 1, k &+ slide.value &+ 8] }
            probes += [0, UInt64.max, image, image &+ slide.value, image &- 1]
            for _ in 0..<50 { probes.append(kinds[rng.below(kinds.count)] &+ UInt64(rng.below(0x900)) &+ (rng.below(2) == 0 ? slide.value : 0)) }
            for k in probes {
                var got = Set<UInt64>()
                var calls = 0
                t.forEachTarget(of: k) { got.insert($0); calls += 1 }
                XCTAssertEqual(got, t[k] ?? [], "round \(round) key 0x\(String(k, radix: 16))")
                XCTAssertEqual(calls, (t[k] ?? []).count, "round \(round)")
            }
        }
    }

    // MARK: SiteMap takes the sites by move

    /// Sites with reference-counted rules (an ftrace site's target set) moved into a `SiteMap`,
    /// with and without spare capacity (the move-and-refill path and the shared-storage path) and
    /// with repeated offsets (the copy path): every site keeps its rule (its call to its own
    /// target still checks), the source is left empty, and the sets outlive it (run under
    /// `--sanitize=address` too: no double release, no use after the move).
    func testSiteMapMovesSitesWithTheirRules() {
        var rng = SeededRNG(seed: 0x517e)
        // reserveVariableSites reserves at most 65,536 sites a session ahead (80 bytes each today: 5 MiB, untouched until appended).
        XCTAssertLessThanOrEqual((1 << 16) * MemoryLayout<VariableSite>.stride, 8 << 20)
        for round in 0..<300 {
            let n = rng.below(200)
            let repeats = rng.below(3) == 0
            var v: [VariableSite] = []
            var expect: [(offset: Int, target: UInt64)] = []
            var off = 0
            for _ in 0..<n {
                off += repeats && rng.below(4) == 0 ? 0 : 5 + rng.below(20)
                let site = 0xffff_ffff_c000_0000 + UInt64(off)
                let target = 0xffff_ffff_8100_0000 + UInt64(rng.below(1 << 20))
                var targets = Set<UInt64>([target])
                for _ in 0..<rng.below(40) { targets.insert(rng.next()) }  // a set with its own storage
                v.append(VariableSite(offset: off, length: 5, cls: .ftrace, group: nil, label: .ftrace,
                                      rule: .ftrace(site: site, targets: targets)))
                if let last = expect.last, last.offset == off { expect[expect.count - 1] = (off, target) } else { expect.append((off, target)) }
            }
            if rng.below(2) == 0 { v.reserveCapacity(v.count * (2 + rng.below(3))) }
            let kept = rng.below(2) == 0 ? v : []  // another reference to the storage now and then
            let map = SiteMap(base: 0xffff_ffff_c000_0000, sortedByOffset: &v)
            XCTAssertTrue(v.isEmpty, "round \(round)")
            XCTAssertEqual(map.count, expect.count, "round \(round)")
            for (k, e) in expect.enumerated() {
                let a = 0xffff_ffff_c000_0000 + UInt64(e.offset)
                XCTAssertEqual(map.addresses[k], a)
                guard let site = map[a] else { XCTFail("round \(round): no site at +\(e.offset)"); continue }
                let rel = Int32(truncatingIfNeeded: Int64(bitPattern: e.target &- (a &+ 5)))
                let call: [UInt8] = [0xe8] + withUnsafeBytes(of: rel.littleEndian, Array.init)
                XCTAssertEqual(site.check(call), e.target, "round \(round) +\(e.offset)")
                XCTAssertEqual(site.check(Array(x86Nops[5])), 0)
            }
            for s in kept { XCTAssertEqual(s.length, 5) }  // the other reference still reads its sites
        }
    }

    // MARK: The data-relocation check's one-type runs

    /// The tests of `Session.check`'s fast path for one record, as its one loop over every type
    /// made them at 62ac4c5 (the runs of one type replaced that loop):
    /// a known type's width, a symbol of the table, the field inside the section, at or after the
    /// previous field's end, on zero signed bytes when the section has any.
    static func mixedLoopTakes(_ rec: (fo: UInt64, info: UInt64), _ symbolCount: UInt64, _ targetSize: UInt64, _ src: [UInt8], _ end: UInt64) -> UInt64? {
        let ty = UInt32(truncatingIfNeeded: rec.info)
        let w: UInt64 = ty == 2 || ty == 4 ? 4 : ty == 1 || ty == 24 ? 8 : 0
        guard w != 0, rec.info >> 32 < symbolCount, rec.fo <= targetSize, w <= targetSize - rec.fo, rec.fo >= end else { return nil }
        if !src.isEmpty {
            guard w <= UInt64(src.count), rec.fo <= UInt64(src.count) - w else { return nil }
            guard src[Int(rec.fo)..<Int(rec.fo + w)].allSatisfy({ $0 == 0 }) else { return nil }
        }
        return rec.fo + w
    }

    /// `oneTypeRun` takes exactly the records the replaced mixed loop would take while their type stays
    /// the first one's, and stops at the first it would not (or of another type), with the same
    /// end: seeded records with fields in and out of order, across the section's and the signed
    /// bytes' ends (a section longer than its bytes, as a hostile header may say), symbol indices
    /// at and past the table's end, other and unknown types, nonzero signed bytes, and SHT_NOBITS.
    func testOneTypeRunTakesWhatTheMixedLoopTakes() {
        var rng = SeededRNG(seed: 0x5eed_0c4e)
        var stoppedOnType = 0, stoppedOnTest = 0, ranOut = 0
        for round in 0..<3_000 {
            let srcCount = rng.below(4) == 0 ? 0 : 8 + rng.below(120)
            var src = [UInt8](repeating: 0, count: srcCount)
            for k in src.indices where rng.below(12) == 0 { src[k] = UInt8(1 + rng.below(255)) }
            let targetSize = UInt64(rng.below(3) == 0 ? rng.below(140) : srcCount)
            let symbolCount = UInt64(1 + rng.below(8))
            let types: [UInt32] = [1, 2, 4, 24, 0, 10, 11, 3, 0x1_0002]
            let base = types[rng.below(4)]
            var recs: [(fo: UInt64, info: UInt64)] = []
            var at: UInt64 = UInt64(rng.below(8))
            for _ in 0..<(1 + rng.below(24)) {
                let ty = rng.below(8) == 0 ? types[rng.below(types.count)] : base
                let sym = UInt64(rng.below(9 + Int(symbolCount))) % (symbolCount + 1)
                var fo = at
                switch rng.below(10) {
                case 0: fo = at >= 4 ? at - 4 : 0                // overlapping the previous field
                case 1: fo = UInt64(rng.below(160))             // anywhere, past the ends too
                case 2: fo = UInt64.max - UInt64(rng.below(8))  // a wrapping offset
                default: break
                }
                recs.append((fo, UInt64(ty) | sym << 32))
                at = fo &+ 4 &+ UInt64(rng.below(3) * 4)
            }
            let raw = recs.flatMap { r -> [UInt8] in
                (0..<8).map { UInt8(truncatingIfNeeded: r.fo >> (8 * UInt64($0))) } + (0..<8).map { UInt8(truncatingIfNeeded: r.info >> (8 * UInt64($0))) } + [UInt8](repeating: 0, count: 8)
            }
            let start = rng.below(2) == 0 ? 0 : rng.below(recs.count)
            let end0: UInt64 = rng.below(3) == 0 ? UInt64(rng.below(16)) : 0
            let ty = UInt32(truncatingIfNeeded: recs[start].info)
            let w: UInt64 = ty == 2 || ty == 4 ? 4 : ty == 1 || ty == 24 ? 8 : 0
            guard w != 0 else { continue }
            // The oracle: record by record while the type is the first one's.
            var want = start, wantEnd = end0
            while want < recs.count, UInt32(truncatingIfNeeded: recs[want].info) == ty,
                  let e = Self.mixedLoopTakes(recs[want], symbolCount, targetSize, src, wantEnd) {
                wantEnd = e; want += 1
            }
            var ri = start, end = end0
            raw.withUnsafeBytes { r in
                src.withUnsafeBytes { sb in
                    Session.oneTypeRun(r, &ri, recs.count, ty, w, symbolCount, src.isEmpty ? targetSize : min(targetSize, UInt64(src.count)),
                                       src.isEmpty ? nil : sb, &end)
                }
            }
            XCTAssertEqual(ri, want, "round \(round): stopped at another record")
            XCTAssertEqual(end, wantEnd, "round \(round): another end")
            if want == recs.count { ranOut += 1 } else if UInt32(truncatingIfNeeded: recs[want].info) != ty { stoppedOnType += 1 } else { stoppedOnTest += 1 }
        }
        // Every way a run ends is exercised.
        XCTAssertGreaterThan(ranOut, 40)
        XCTAssertGreaterThan(stoppedOnType, 100)
        XCTAssertGreaterThan(stoppedOnTest, 100)
    }

    // MARK: The verified modules' function entries

    /// `FunctionEntrySet.contains` answers as asking every module did, on seeded sets of modules
    /// added in and out of address order, with spans apart, touching (one's last entry the next
    /// one's first) and overlapping (the fallback), asked at every entry, next to each, at the
    /// spans' ends and beyond them.
    /// `SymbolResolver.add(contentsOf:)` (a guest's rebuild at each retire: the sorted tables
    /// sorted once) answers as `add` one module at a time, for the fixture boot's modules in load
    /// order and reversed (descending addresses: every span insert at the front, the case that
    /// was quadratic).
    func testResolverAddInOneCallAnswersAsOneAtATime() throws {
        let f = try FixtureReplay()
        let names = f.boot.availableModules
        let core = try XCTUnwrap(f.modules[names[0]]).before
        let exports = names.compactMap { f.modules[$0]?.result.exports }
        XCTAssertGreaterThan(exports.count, 5)
        for list in [exports, exports.reversed()] {
            var one = core
            for e in list { one.add(e) }
            var bulk = core
            bulk.add(contentsOf: list)
            XCTAssertEqual(bulk.moduleFunctionEntries.isDisjoint, one.moduleFunctionEntries.isDisjoint)
            XCTAssertEqual(Array(bulk.moduleFunctionEntries), Array(one.moduleFunctionEntries))
            XCTAssertEqual(bulk.staticCallStates, one.staticCallStates)
            var keys: [UInt64] = Array(one.staticCallStates.keys)
            for e in list {
                for (name, _) in e.symbols { XCTAssertEqual(bulk.lookup(name), one.lookup(name), name) }
                for a in e.functionEntries.sorted { XCTAssertEqual(bulk.moduleFunctionEntries.contains(a &+ 1), one.moduleFunctionEntries.contains(a &+ 1)) }
                e.keyTargets.forEachKey { k, _ in keys.append(k) }
            }
            XCTAssertFalse(keys.isEmpty)
            for k in keys {
                XCTAssertEqual(bulk.moduleKeyTargets[k].map(Array.init), one.moduleKeyTargets[k].map(Array.init), "key 0x\(String(k, radix: 16))")
                for (lo, hi) in [(k, k &+ 1), (k &- 1, k), (k &- 64, k &+ 64), (0, k)] {
                    XCTAssertEqual(bulk.lowestStaticCallKey(from: lo, below: hi), one.lowestStaticCallKey(from: lo, below: hi))
                }
            }
        }
    }

    func testFunctionEntrySetContainsMatchesAskingEveryModule() {  // (and `add(contentsOf:)` as `add` one at a time)
        var rng = SeededRNG(seed: 0xf0_e7_5e7)
        var overlapping = 0
        for round in 0..<400 {
            var set = FunctionEntrySet()
            var all: [FunctionEntries] = [], added: [FunctionEntries] = []
            var base: UInt64 = 0xffff_ffff_c000_0000 &+ UInt64(rng.below(1 << 20))
            var bases: [UInt64] = []
            for _ in 0..<(1 + rng.below(12)) {
                bases.append(base)
                base &+= UInt64(rng.below(4) == 0 ? rng.below(64) : 4_096 + rng.below(1 << 16))
            }
            if rng.below(2) == 0 { bases.shuffle(using: &rng) }
            for b in bases {
                let n = rng.below(6)  // an empty module too, now and then
                let e = FunctionEntries((0..<n).map { _ in b &+ UInt64(16 * rng.below(256)) })
                set.add(e)
                added.append(e)
                if !e.isEmpty { all.append(e) }
            }
            // The same modules added in one call (a rebuild): the same answers, order and mode.
            var bulk = FunctionEntrySet()
            bulk.add(contentsOf: added)
            XCTAssertEqual(bulk.isDisjoint, set.isDisjoint, "round \(round): disjoint")
            XCTAssertEqual(Array(bulk), Array(set), "round \(round): the bulk add's order")
            var asks: [UInt64] = [0, UInt64.max]
            for e in all { for a in e.sorted { asks += [a, a &- 1, a &+ 1, a &+ 16] } }
            for _ in 0..<32 { asks.append(0xffff_ffff_c000_0000 &+ UInt64(rng.below(1 << 22))) }
            for a in asks {
                XCTAssertEqual(set.contains(a), all.contains { $0.contains(a) }, "round \(round): 0x\(String(a, radix: 16))")
                XCTAssertEqual(bulk.contains(a), set.contains(a), "round \(round): bulk 0x\(String(a, radix: 16))")
            }
            XCTAssertEqual(Array(set), all.flatMap(\.sorted), "round \(round): the modules' order")
            let spans = all.map { ($0.sorted.first!, $0.sorted.last!) }.sorted { $0.0 < $1.0 }
            if zip(spans, spans.dropFirst()).contains(where: { $0.1 >= $1.0 }) { overlapping += 1 }
        }
        XCTAssertGreaterThan(overlapping, 40)  // the fallback is exercised
        XCTAssertLessThan(overlapping, 360)    // and so is the span search
    }
}
