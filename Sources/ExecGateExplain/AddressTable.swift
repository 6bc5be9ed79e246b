// SPDX-License-Identifier: Apache-2.0
//
// A small integer map for the stages' per-site bookkeeping (key address → state), where
// `[UInt64: UInt64]` cost a SipHash per access, several per site.

/// `UInt64 → UInt64` by open addressing (linear probing) over a power of two of slots, at most half
/// full. The keys come from a signed module placed at a guest-chosen base (and from relocation
/// addends the signed module holds), so the hash takes every key bit and secrets: the key, XORed
/// with a per-process random word, times a per-process random odd multiplier, the 128-bit
/// product's halves folded, twice (`home`). (It was the product's bits 32 and up with a fixed
/// multiplier: keys differing only at and above bit 32 + log2(slots) shared one home whatever
/// the seed, and a module listing thousands of such keys made every insert walk them all.)
/// A value type (copy-on-write through its one array of slots). Every key is allowed (`UInt64.max`, the
/// empty-slot marker, is kept apart); entries are never removed.
struct AddressTable {
    /// Slot `i`'s key at `2i` and its value at `2i + 1` (a key and its value share a cache line:
    /// a look-up that hits touches one line, where two arrays took two), a power of two of slots.
    private var slots: [UInt64] = []
    /// The entries held in `slots` (all but the key `UInt64.max`).
    private var slotted = 0
    /// The entry for the key `UInt64.max`, which cannot live in `slots`.
    private var maxKeyValue: UInt64?
    /// The entries, the key `UInt64.max` included.
    var count: Int { slotted + (maxKeyValue == nil ? 0 : 1) }
    /// The process's hash secrets, copied into each table: a `static let` is read through a lazy
    /// initialiser's once-check (`swift_once`) at every access, and `home` runs at every probe.
    private let seed = AddressTable.processSeed

    private static let empty = UInt64.max
    typealias Seed = (xor: UInt64, multiplier: UInt64, xor2: UInt64, multiplier2: UInt64)
    private static let processSeed: Seed = (UInt64.random(in: 0...UInt64.max), UInt64.random(in: 0...UInt64.max) | 1,
                                            UInt64.random(in: 0...UInt64.max), UInt64.random(in: 0...UInt64.max) | 1)

    init() {}

    /// A table with room for `n` entries before it grows.
    init(minimumCapacity n: Int) {
        var size = 16
        while size < 2 * n { size <<= 1 }
        slots = AddressTable.emptySlots(size)
    }

    /// A table sized up front for the `n` entries a count read from a module suggests (its
    /// trampoline or key symbols), at most 4,096 of them: the rest arrive by growth, so a module
    /// listing a million candidates that turn out to be no entries allocates nothing for them.
    init(expecting n: Int) { self.init(minimumCapacity: Swift.min(n, 1 << 12)) }

    init(_ d: [UInt64: UInt64]) {
        for (k, v) in d { set(k, v) }
    }

    /// `size` empty slots (key `empty`, value 0).
    private static func emptySlots(_ size: Int) -> [UInt64] {
        [UInt64](unsafeUninitializedCapacity: 2 * size) { b, n in
            var i = 0
            while i < 2 * size { b[i] = empty; b[i + 1] = 0; i += 2 }
            n = 2 * size
        }
    }

    @inline(__always) private static func home(_ k: UInt64, _ mask: Int, _ seed: Seed) -> Int {
        // Two rounds: one leaves keys that differ only above log2(slots) bits in an arithmetic
        // run of homes, which clusters under linear probing for some multipliers (a run of 8,192
        // such keys past 8 slots a key for 1.6% of seeds, a reviewer's simulation); the second
        // round's secrets spread the run (none in 20,000 seeds).
        let p = (k ^ seed.xor).multipliedFullWidth(by: seed.multiplier)
        let q = ((p.high ^ p.low) ^ seed.xor2).multipliedFullWidth(by: seed.multiplier2)
        return Int(truncatingIfNeeded: q.high ^ q.low) & mask
    }

    /// The slot holding `k`, or the empty slot where it would go (`b` is `slots`, not empty).
    @inline(__always) private static func find(_ k: UInt64, in b: UnsafeBufferPointer<UInt64>, _ seed: Seed) -> (slot: Int, found: Bool) {
        let mask = b.count / 2 - 1
        var s = home(k, mask, seed)
        while true {
            let x = b[2 &* s]
            if x == k { return (s, true) }
            if x == Self.empty { return (s, false) }
            s = (s &+ 1) & mask
        }
    }

    subscript(k: UInt64) -> UInt64? {
        if k == Self.empty { return maxKeyValue }
        if slotted == 0 { return nil }
        let seed = self.seed
        return slots.withUnsafeBufferPointer { b in
            let (s, found) = AddressTable.find(k, in: b, seed)
            return found ? b[2 &* s &+ 1] : nil
        }
    }

    /// Insert, or replace the value of, `k` (entries are never removed).
    mutating func set(_ k: UInt64, _ v: UInt64) {
        if k == Self.empty { maxKeyValue = v; return }
        if 2 * (slotted + 1) > slots.count / 2 { grow() }
        let seed = self.seed
        let added = slots.withUnsafeMutableBufferPointer { b -> Bool in
            let (s, found) = AddressTable.find(k, in: UnsafeBufferPointer(b), seed)
            b[2 &* s] = k
            b[2 &* s &+ 1] = v
            return !found
        }
        if added { slotted += 1 }
    }

    private mutating func grow() {
        var size = max(16, slots.count)  // twice the slots: `slots` holds two words a slot
        while size < 2 * (slotted + 1) { size <<= 1 }
        let old = slots
        slots = AddressTable.emptySlots(size)
        let mask = size - 1, seed = self.seed
        slots.withUnsafeMutableBufferPointer { b in
            for i in stride(from: 0, to: old.count, by: 2) where old[i] != Self.empty {
                var s = AddressTable.home(old[i], mask, seed)
                while b[2 * s] != Self.empty { s = (s + 1) & mask }
                b[2 * s] = old[i]
                b[2 * s + 1] = old[i + 1]
            }
        }
    }

    /// Slots allocated (twice the entries it holds at most before it grows).
    var capacity: Int { slots.count / 2 }

    /// The slots each key sits past its home, summed (for tests: a hash that keys can aim at one
    /// home makes it grow as the square of the keys).
    var displacement: Int {
        let size = slots.count / 2
        var d = 0
        for s in 0..<size where slots[2 * s] != Self.empty {
            d += (s - AddressTable.home(slots[2 * s], size - 1, seed) + size) & (size - 1)
        }
        return d
    }

    /// Every key, ascending.
    var sortedKeys: [UInt64] {
        var k: [UInt64] = []
        k.reserveCapacity(slotted + 1)
        for i in stride(from: 0, to: slots.count, by: 2) where slots[i] != Self.empty { k.append(slots[i]) }
        AddressSort.sort(&k)
        if maxKeyValue != nil { k.append(Self.empty) }  // the largest key: last
        return k
    }

    /// Every entry, as a dictionary.
    var dictionary: [UInt64: UInt64] {
        var d: [UInt64: UInt64] = [:]
        d.reserveCapacity(count)
        for i in stride(from: 0, to: slots.count, by: 2) where slots[i] != Self.empty { d[slots[i]] = slots[i + 1] }
        if let v = maxKeyValue { d[Self.empty] = v }
        return d
    }
}
