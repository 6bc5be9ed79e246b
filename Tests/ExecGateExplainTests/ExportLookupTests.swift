// SPDX-License-Identifier: Apache-2.0
//
// The export tables' byte-keyed lookup (NameTable inside SlidExports) must answer what a
// dictionary with the same history answers, for names no two of which are canonically equivalent;
// names that are (e.g. "K" and U+212A KELVIN SIGN) are distinct names, as for the kernel's strcmp()
// (testCanonicallyEquivalentNamesAreDistinct).

@testable import ExecGateExplain
import XCTest

final class ExportLookupTests: XCTestCase {
    /// Names that stress the table: empty, lengths around the 8-byte word steps, shared prefixes,
    /// non-ASCII names (no two canonically equivalent: there a dictionary is not the model).
    static let names: [String] = {
        var n = ["", "K", "\u{E9}", "x", "__fentry__", "__x86_return_thunk", "abcdefg", "abcdefgh", "abcdefghi",
                 "abcdefghabcdefgh", "abcdefghabcdefghX", "Ω", "printk", "_printk"]
        for i in 0..<600 { n.append("sym_\(i)_" + String(repeating: "z", count: i % 19)) }
        return n
    }()

    /// Seeded random core tables and add sequences; every name's lookup (String and UTF-8 bytes)
    /// against a plain dictionary with the same history.
    func testLookupsMatchADictionaryWithTheSameHistory() {
        var rng = SplitMix64(state: 0x5eed_e0e0)
        for round in 0..<40 {
            var core: [String: UInt64] = [:]
            for n in Self.names where rng.below(3) == 0 { core[n] = rng.next() | 0xffff_ffff_8000_0000 }
            let slide = KernelSlide(round % 2 == 0 ? 0 : UInt64(rng.below(512)) << 21)
            var exports = SlidExports(core).slid(by: slide)
            var reference: [String: UInt64] = [:]  // the added entries, as the old dictionary held them
            func expected(_ n: String) -> UInt64? { reference[n] ?? core[n].map(slide.runTime) }
            func check(_ when: String) {
                for n in Self.names {
                    XCTAssertEqual(exports[n], expected(n), "round \(round) \(when): \(n.debugDescription)")
                    var m = n
                    let byBytes = m.withUTF8 { SymbolResolver(coreExports: exports).lookup(utf8: UnsafeRawBufferPointer($0)) }
                    XCTAssertEqual(byBytes, expected(n), "round \(round) \(when), bytes: \(n.debugDescription)")
                    // The undefined-symbol path (`likelyPresent: true`: the shared table probed
                    // for a hit, the added names still asked first): the same answer.
                    let likely = m.withUTF8 { SymbolResolver(coreExports: exports).lookup(utf8: UnsafeRawBufferPointer($0), likelyPresent: true) }
                    XCTAssertEqual(likely, expected(n), "round \(round) \(when), likely present: \(n.debugDescription)")
                }
                XCTAssertEqual(exports.added, reference, "round \(round) \(when): added entries")
                XCTAssertEqual(exports.dictionary(), core.mapValues(slide.runTime).merging(reference) { $1 }, "round \(round) \(when): dictionary")
            }
            check("before adds")
            for k in 0..<(1 + rng.below(80)) {
                let n = Self.names[rng.below(Self.names.count)]
                let v = rng.next()
                exports.add(n, v)
                reference[n] = v
                if k % 16 == 0 { check("after \(k + 1) adds") }
            }
            check("after adds")
        }
    }

    /// Whole modules' exports added at once (``ModuleExports``: byte-keyed ASCII names merged
    /// without a `String`, the others by `String`), mixed with single adds, against the dictionary
    /// history `for (k, v) in m.symbols { add(k, v) }` gave; and the module's own accessors
    /// (`symbols`, `symbolCount`, `address(of:)`) against the dictionary it was made from.
    func testModuleExportsAddAsTheirDictionaryDid() {
        var rng = SplitMix64(state: 0x0dd_5eed)
        for round in 0..<40 {
            var core: [String: UInt64] = [:]
            for n in Self.names where rng.below(3) == 0 { core[n] = rng.next() | 0xffff_ffff_8000_0000 }
            let slide = KernelSlide(round % 2 == 0 ? 0 : UInt64(rng.below(512)) << 21)
            var resolver = SymbolResolver(coreExports: SlidExports(core).slid(by: slide))
            var reference: [String: UInt64] = [:]
            for step in 0..<(1 + rng.below(12)) {
                if rng.below(4) == 0 {
                    let n = Self.names[rng.below(Self.names.count)], v = rng.next()
                    var e = resolver.exports
                    e.add(n, v)
                    resolver = SymbolResolver(coreExports: e)
                    reference[n] = v
                    continue
                }
                var d: [String: UInt64] = [:]
                for _ in 0..<rng.below(round % 4 == 0 ? 3 : 200) { d[Self.names[rng.below(Self.names.count)]] = rng.next() }
                let m = ModuleExports(module: "m\(step)", symbols: d, functionEntries: [])
                XCTAssertEqual(m.symbols, d, "round \(round) step \(step): symbols")
                XCTAssertEqual(m.symbolCount, d.count)
                for n in Self.names { XCTAssertEqual(m.address(of: n), d[n], "round \(round) step \(step): address(of: \(n.debugDescription))") }
                resolver.add(m)
                for (k, v) in d { reference[k] = v }
                for n in Self.names {
                    let expected = reference[n] ?? core[n].map(slide.runTime)
                    XCTAssertEqual(resolver.lookup(n), expected, "round \(round) step \(step): \(n.debugDescription)")
                    var b = n
                    XCTAssertEqual(b.withUTF8 { resolver.lookup(utf8: UnsafeRawBufferPointer($0)) }, expected, "round \(round) step \(step), bytes: \(n.debugDescription)")
                    XCTAssertEqual(b.withUTF8 { resolver.lookup(utf8: UnsafeRawBufferPointer($0), likelyPresent: true) }, expected,
                                   "round \(round) step \(step), likely present: \(n.debugDescription)")
                }
                XCTAssertEqual(resolver.exports.added, reference, "round \(round) step \(step): added entries")
            }
        }
    }

    /// The undefined-symbol path (`lookup(utf8:likelyPresent: true)`, which probes the shared
    /// core table for a hit) gives an added name precedence over a core name of the same bytes,
    /// by every way of adding it: one name, a module's exports (never from an allowed module in
    /// a real guest: the kernel refuses a duplicate export, but the tables must not depend on it).
    func testAnAddedNameShadowingACoreNameTakesPrecedenceOnTheUndefinedSymbolPath() {
        let core: [String: UInt64] = ["printk": 0xffff_ffff_8100_0000, "kmalloc": 0xffff_ffff_8100_0100]
        func likely(_ r: SymbolResolver, _ n: String) -> UInt64? {
            var m = n
            return m.withUTF8 { r.lookup(utf8: UnsafeRawBufferPointer($0), likelyPresent: true) }
        }
        var r1 = SymbolResolver(coreExports: core)
        XCTAssertEqual(likely(r1, "printk"), 0xffff_ffff_8100_0000)
        r1.add(ModuleExports(module: "m", symbols: ["printk": 0xffff_ffff_c000_0000, "m_only": 0xffff_ffff_c000_0010], functionEntries: []))
        XCTAssertEqual(likely(r1, "printk"), 0xffff_ffff_c000_0000)
        XCTAssertEqual(likely(r1, "m_only"), 0xffff_ffff_c000_0010)
        XCTAssertEqual(likely(r1, "kmalloc"), 0xffff_ffff_8100_0100)
        XCTAssertNil(likely(r1, "absent"))
        var e = SlidExports(core)
        e.add("kmalloc", 0xffff_ffff_c000_0020)
        XCTAssertEqual(likely(SymbolResolver(coreExports: e), "kmalloc"), 0xffff_ffff_c000_0020)
        XCTAssertEqual(likely(SymbolResolver(coreExports: e), "printk"), 0xffff_ffff_8100_0000)
    }

    /// Names are equal when their bytes are, as the kernel compares them (`strcmp()`): a name
    /// canonically equivalent to another (U+212A KELVIN SIGN and "K", NFD and NFC "é") is a
    /// different name, never resolved to the other's address; bytes that are not UTF-8 name
    /// nothing. Two non-ASCII names that `String` equality conflates cannot both be held: the
    /// later replaces the earlier, which is then unknown (denied, never answered wrongly).
    func testCanonicallyEquivalentNamesAreDistinct() {
        var e = SlidExports(["K": 1])
        XCTAssertNil(e["\u{212A}"], "KELVIN SIGN is not K")
        e.add("\u{212A}", 2)
        XCTAssertEqual(e["K"], 1)
        XCTAssertEqual(e["\u{212A}"], 2)
        e.add("K", 3)
        XCTAssertEqual(e["K"], 3)
        XCTAssertEqual(e["\u{212A}"], 2)
        XCTAssertNil(e["k"], "byte case matters")
        e.add("caf\u{E9}", 4)
        e.add("cafe\u{301}", 5)
        XCTAssertEqual(e["cafe\u{301}"], 5)
        XCTAssertNil(e["caf\u{E9}"], "replaced by a String-equal name: forgotten, not answered with its value")
        let linked = SlidExports(["\u{212A}x": 7, "y": 8])
        XCTAssertNil(linked["Kx"])
        XCTAssertEqual(linked["\u{212A}x"], 7)
        let resolver = SymbolResolver(coreExports: linked)
        for bytes: [UInt8] in [Array("Kx".utf8), [0xe2, 0x84], [0xff, 0x78], [0xef, 0xbf, 0xbd, 0x78]] {
            XCTAssertNil(bytes.withUnsafeBytes { resolver.lookup(utf8: $0) }, "\(bytes)")
        }
        XCTAssertEqual(Array("\u{212A}x".utf8).withUnsafeBytes { resolver.lookup(utf8: $0) }, 7)
        let m = ModuleExports(module: "m", symbols: ["\u{212A}": 9, "a": 10], functionEntries: [])
        XCTAssertNil(m.address(of: "K"))
        XCTAssertEqual(m.address(of: "\u{212A}"), 9)
        XCTAssertEqual(m.address(of: "a"), 10)
    }
}

/// The stages' integer map (key address → state) against a dictionary with the same history:
/// seeded keys that collide in the low bits (aligned addresses, one page apart, a few clustered
/// values), the empty-slot marker `UInt64.max` as a key, growth through many sizes from empty or
/// presized tables, replaced values; the sorted keys.
final class AddressTableTests: XCTestCase {
    func testMatchesADictionaryWithTheSameHistory() {
        var rng = SplitMix64(state: 0xadd7_ab1e)
        for round in 0..<30 {
            let n = 1 + rng.below(50 * (round + 1))
            // Two rounds in three presized, for fewer or more entries than it gets.
            var t = round % 3 == 0 ? AddressTable() : round % 3 == 1 ? AddressTable(minimumCapacity: rng.below(2 * n)) : AddressTable(expecting: rng.below(2 * n))
            var d: [UInt64: UInt64] = [:]
            var probes: [UInt64] = [UInt64.max, 0, 1]
            for _ in 0..<n {
                let k: UInt64
                switch rng.below(4) {
                case 0: k = 0xffff_ffff_c000_0000 &+ (UInt64(rng.below(4096)) << 12)  // page-aligned module addresses
                case 1: k = 0xffff_ffff_8000_0000 &+ (UInt64(rng.below(64)) << 3)     // a tight cluster
                case 2: k = rng.below(3) == 0 ? UInt64.max : rng.next()
                default: k = probes[rng.below(probes.count)]     // a key seen before: replace
                }
                let v = rng.next()
                t.set(k, v)
                d[k] = v
                probes.append(k)
                probes.append(k &+ 8)  // a near miss
            }
            for k in probes { XCTAssertEqual(t[k], d[k], "round \(round) key \(String(k, radix: 16))") }
            XCTAssertEqual(t.count, d.count, "the key UInt64.max is an entry like any other")
            XCTAssertEqual(t.dictionary, d)
            XCTAssertEqual(t.sortedKeys, d.keys.sorted())
        }
    }

    /// Structured keys a signed module's addends can make (its jump-table and static-call keys)
    /// spread over the table: keys differing only in their high bits (the old hash took the
    /// product's bits 32 and up: 8,192 of them fell on 4 homes, every insert walking thousands),
    /// only in bits whose multiples the old fixed multiplier moved by a sliver of a slot (a
    /// reviewer's flood set), and a dense run. Each set's summed displacement stays within 8
    /// slots a key (random keys at half load: about 0.5; one round of the new hash exceeded it
    /// for 3.7% of seeds, two rounds for none of 20,000 in a reviewer's simulation). Fails with
    /// a hash that keys can aim.
    func testStructuredKeysDoNotShareHomes() {
        var sets: [(String, [UInt64])] = []
        sets.append(("high bits", (0..<8_192).map { 0xffff_ffff_a000_0000 ^ (UInt64($0) << 44) }))
        sets.append(("bits 48-63", (0..<8_192).map { 0xffff_ffff_c000_0000 ^ (UInt64($0) << 51) }))
        var flood: [UInt64] = [0xffff_ffff_8100_0000]
        for b in [61, 62, 63, 30, 31, 51, 32, 46, 52, 33, 14, 0, 47] { flood += flood.map { $0 ^ (1 << UInt64(b)) } }
        sets.append(("flood", flood))
        sets.append(("dense", (0..<8_192).map { 0xffff_ffff_c000_0000 &+ UInt64($0) &* 8 }))
        for (name, keys) in sets {
            var t = AddressTable()
            for (i, k) in keys.enumerated() { t.set(k, UInt64(i)) }
            XCTAssertEqual(t.count, Set(keys).count, name)
            XCTAssertLessThanOrEqual(t.displacement, 8 * t.count, "\(name): \(t.count) keys, capacity \(t.capacity)")
            for (i, k) in keys.enumerated().prefix(64) { XCTAssertEqual(t[k], UInt64(i), name) }
        }
    }
}

/// `AddressTable(expecting:)` takes a count read from a module: it sizes for it up to 4,096
/// entries and no further (a million trampoline symbols that are no trampolines cost no 32 MB
/// table up front); the table still takes every entry by growth.
final class AddressTableSizingTests: XCTestCase {
    func testAnExpectedCountSizesUpToItsCap() {
        XCTAssertGreaterThanOrEqual(AddressTable(expecting: 600).capacity, 1_200)
        XCTAssertLessThanOrEqual(AddressTable(expecting: 1_000_000).capacity, 8_192)
        var t = AddressTable(expecting: 1_000_000)
        for k in 0..<20_000 { t.set(UInt64(k) << 12, UInt64(k)) }
        XCTAssertEqual(t.count, 20_000)
        XCTAssertEqual(t[UInt64(19_999) << 12], 19_999)
    }
}

/// ``KeyTargets`` (a module's own static-call key → trusted targets) against a dictionary of sets
/// with the same history: seeded pairs with repeats and shared keys, frozen, then added to again
/// (an init session takes the core session's and adds its own) and frozen again.
final class KeyTargetsTests: XCTestCase {
    func testMatchesADictionaryOfSets() {
        var rng = SplitMix64(state: 0x6b65_7973)
        for round in 0..<40 {
            var kt = KeyTargets()
            var d: [UInt64: Set<UInt64>] = [:]
            for phase in 0..<2 {
                for _ in 0..<rng.below(8 * (round + 1)) {
                    let key = 0xffff_ffff_c000_0000 &+ UInt64(rng.below(1 + round)) << 4
                    let target = 0xffff_ffff_c100_0000 &+ UInt64(rng.below(6)) << 4
                    kt.add(key, target)
                    d[key, default: []].insert(target)
                }
                kt.freeze()
                XCTAssertTrue(kt.isFrozen)
                XCTAssertEqual(kt.dictionary, d, "round \(round) phase \(phase)")
                XCTAssertEqual(kt.isEmpty, d.isEmpty)
                for (k, v) in d { XCTAssertEqual(kt[k].map(Array.init), v.sorted(), "round \(round) key \(String(k, radix: 16))") }
                XCTAssertNil(kt[0xffff_ffff_8000_0000])
                XCTAssertEqual(kt.keyCount, d.count)
                XCTAssertEqual(kt.pairCount, d.values.reduce(0) { $0 + $1.count })
                XCTAssertEqual(KeyTargets(d).dictionary, d)
            }
        }
    }

    /// `freeze()` sorts the pairs as packed words when keys and targets each lie within 4 GiB of
    /// their least, else as (key, target) pairs: seeded rounds on both sides of that bound (keys
    /// or targets spread over the whole address space, or near it) against a dictionary of sets.
    func testWideAndNarrowSpansMatchADictionaryOfSets() {
        var rng = SplitMix64(state: 0x7769_6465)
        for round in 0..<40 {
            var kt = KeyTargets()
            var d: [UInt64: Set<UInt64>] = [:]
            let wideKeys = round % 4 == 1 || round % 4 == 3, wideTargets = round % 4 >= 2
            for _ in 0..<rng.below(200) {
                let key = wideKeys ? UInt64(rng.below(16)) << 60 | UInt64(rng.below(4)) << 4 : 0xffff_ffff_c000_0000 &+ UInt64(rng.below(64)) << 4
                let target = wideTargets ? UInt64(rng.below(8)) << 33 : 0xffff_ffff_c100_0000 &+ UInt64(rng.below(8)) << 4
                kt.add(key, target)
                d[key, default: []].insert(target)
            }
            kt.freeze()
            XCTAssertEqual(kt.dictionary, d, "round \(round)")
            var previous: UInt64? = nil
            kt.forEachKey { k, ts in
                XCTAssertTrue(previous.map { $0 < k } ?? true, "round \(round): keys ascending")
                XCTAssertEqual(Array(ts), d[k]?.sorted(), "round \(round): targets ascending, distinct")
                previous = k
            }
        }
    }

    /// The packing bound itself: keys and targets spanning exactly 2^32 - 1 (packed) or 2^32
    /// (sorted as pairs), in every order of adding, with repeats: the same frozen pairs.
    func testSpansAtThePackingBound() {
        for edge: UInt64 in [0xffff_ffff, 0x1_0000_0000] {
            let k: UInt64 = 0xffff_fffe_0000_0000, t: UInt64 = 0x0000_7000_0000_0000
            let pairs: [(UInt64, UInt64)] = [(k + edge, t), (k, t + edge), (k, t), (k + edge, t + edge), (k, t), (k + 1, t + edge - 1)]
            for rotation in pairs.indices {
                var kt = KeyTargets()
                var d: [UInt64: Set<UInt64>] = [:]
                for (key, target) in pairs[rotation...] + pairs[..<rotation] {
                    kt.add(key, target)
                    d[key, default: []].insert(target)
                }
                kt.freeze()
                XCTAssertEqual(kt.dictionary, d, "span \(edge)")
                var keys: [UInt64] = []
                kt.forEachKey { key, ts in keys.append(key); XCTAssertEqual(Array(ts), d[key]?.sorted(), "span \(edge)") }
                XCTAssertEqual(keys, d.keys.sorted(), "span \(edge)")
            }
        }
    }

    /// A key at the top of the address space (the address table's empty-slot marker) is a key
    /// like any other: counted (LiveModule charges 80 bytes a key), found, and merged.
    func testAKeyAtTheLastAddressIsCounted() {
        var kt = KeyTargets()
        kt.add(UInt64.max, 0xffff_ffff_c100_0000)
        kt.add(0xffff_ffff_c000_0000, 0xffff_ffff_c100_0010)
        kt.freeze()
        XCTAssertEqual(kt.keyCount, 2)
        XCTAssertEqual(kt[UInt64.max].map(Array.init), [0xffff_ffff_c100_0000])
        var merged = ModuleKeyTargets()
        merged.add(kt)
        XCTAssertFalse(merged.isEmpty)
        XCTAssertEqual(merged[UInt64.max].map(Array.init), [0xffff_ffff_c100_0000])
    }

    /// ``ModuleKeyTargets`` (the resolver's merge of verified modules' keys) against a dictionary
    /// of sets merged by `formUnion`, over seeded modules whose keys sometimes repeat an earlier
    /// module's (never in a real guest: the union is kept all the same).
    func testModuleMergeMatchesAUnionOfSets() {
        var rng = SplitMix64(state: 0x6d6f_6473)
        for round in 0..<30 {
            var merged = ModuleKeyTargets()
            var d: [UInt64: Set<UInt64>] = [:]
            XCTAssertTrue(merged.isEmpty)
            for _ in 0..<rng.below(12) {
                var kt = KeyTargets()
                for _ in 0..<rng.below(40) {
                    let key = 0xffff_ffff_c000_0000 &+ UInt64(rng.below(4 + 4 * round)) << 4
                    let target = 0xffff_ffff_c100_0000 &+ UInt64(rng.below(5)) << 4
                    kt.add(key, target)
                    d[key, default: []].insert(target)
                }
                kt.freeze()
                merged.add(kt)
                for (k, v) in d { XCTAssertEqual(merged[k].map(Array.init), v.sorted(), "round \(round) key \(String(k, radix: 16))") }
                XCTAssertNil(merged[0xffff_ffff_8000_0000])
                XCTAssertEqual(merged.isEmpty, d.isEmpty)
            }
        }
    }
}

/// A module's function entries (sorted, unique; built by a radix sort when out of order) against
/// the standard sort, on seeded tables: small and large, duplicates, spans from under 2^8 to near the 2^32 limit.
final class FunctionEntriesTests: XCTestCase {
    func testEntriesAreSortedAndUnique() {
        var rng = SplitMix64(state: 0xf0_e7_12)
        for round in 0..<40 {
            let n = rng.below(round < 20 ? 80 : 3000)
            let base: UInt64 = 0xffff_ffff_c000_0000 &+ UInt64(rng.below(1 << 20)) << 12
            // Spans of 1 to 4 radix passes (below 2^8, 2^16, 2^24, 2^32).
            let span: UInt64 = round % 3 == 0 ? UInt64(UInt32.max)
                : round % 6 == 1 ? UInt64(1 + rng.below(round % 4 == 1 ? 1 << 8 : 1 << 16)) : UInt64(1 + rng.below(8 << 20))
            var a: [UInt64] = []
            for _ in 0..<n {
                let x = base &+ rng.next() % span
                a.append(x)
                if rng.below(8) == 0 { a.append(x) }  // a duplicate entry (aliases)
            }
            if round % 5 == 4 { a.append(base &+ UInt64(UInt32.max) + 1) }  // beyond 2^32 from the lowest: the standard sort
            XCTAssertEqual(FunctionEntries(a).sorted, Array(Set(a)).sorted(), "round \(round)")
        }
    }
}
