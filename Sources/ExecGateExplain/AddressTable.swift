// SPDX-License-Identifier: Apache-2.0
//
// A small integer map for the stages' per-site bookkeeping (key address → state), where
// `[UInt64: UInt64]` cost a SipHash per access, several per site.

/// `UInt64 → UInt64` by open addressing (linear probing) over power-of-two arrays, at most half
/// full, hashed by a multiply with a per-process seed (as NameTable: the keys come from a signed
/// module placed at a guest-chosen base, and a module has at most a few hundred distinct keys).
/// A value type (copy-on-write through its arrays). Every key is allowed (`UInt64.max`, the
/// empty-slot marker, is kept apart); entries are never removed.
struct AddressTable {
    private var keys: [UInt64] = []
    private var values: [UInt64] = []
    /// The entries held in `keys` (all but the key `UInt64.max`).
    private var slotted = 0
    /// The entry for the key `UInt64.max`, which cannot live in `keys`.
    private var maxKeyValue: UInt64?
    /// The entries, the key `UInt64.max` included.
    var count: Int { slotted + (maxKeyValue == nil ? 0 : 1) }
    /// The process's seed, copied into each table: a `static let` is read through a lazy
    /// initialiser's once-check (`swift_once`) at every access, and `home` runs at every probe.
    private let seed = AddressTable.processSeed

    private static let empty = UInt64.max
    private static let processSeed = UInt64.random(in: 0...UInt64.max)

    init() {}

    /// A table with room for `n` entries before it grows.
    init(minimumCapacity n: Int) {
        var size = 16
        while size < 2 * n { size <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: size)
        values = [UInt64](repeating: 0, count: size)
    }

    /// A table sized up front for the `n` entries a count read from a module suggests (its
    /// trampoline or key symbols), at most 4,096 of them: the rest arrive by growth, so a module
    /// listing a million candidates that turn out to be no entries allocates nothing for them.
    init(expecting n: Int) { self.init(minimumCapacity: Swift.min(n, 1 << 12)) }

    init(_ d: [UInt64: UInt64]) {
        for (k, v) in d { set(k, v) }
    }

    @inline(__always) private func home(_ k: UInt64, _ mask: Int) -> Int {
        let h = (k ^ seed) &* 0x9e37_79b9_7f4a_7c15
        return Int(truncatingIfNeeded: h >> 32) & mask
    }

    /// The slot holding `k`, or the empty slot where it would go (`keys` not empty).
    @inline(__always) private func find(_ k: UInt64) -> (slot: Int, found: Bool) {
        let mask = keys.count - 1
        return keys.withUnsafeBufferPointer { ks in
            var s = home(k, mask)
            while true {
                let x = ks[s]
                if x == k { return (s, true) }
                if x == Self.empty { return (s, false) }
                s = (s + 1) & mask
            }
        }
    }

    subscript(k: UInt64) -> UInt64? {
        if k == Self.empty { return maxKeyValue }
        if slotted == 0 { return nil }
        let (s, found) = find(k)
        return found ? values[s] : nil
    }

    /// Insert, or replace the value of, `k` (entries are never removed).
    mutating func set(_ k: UInt64, _ v: UInt64) {
        if k == Self.empty { maxKeyValue = v; return }
        if 2 * (slotted + 1) > keys.count { grow() }
        let (s, found) = find(k)
        if !found { keys[s] = k; slotted += 1 }
        values[s] = v
    }

    private mutating func grow() {
        var size = max(16, keys.count * 2)
        while size < 2 * (slotted + 1) { size <<= 1 }
        let (oldKeys, oldValues) = (keys, values)
        keys = [UInt64](repeating: Self.empty, count: size)
        values = [UInt64](repeating: 0, count: size)
        let mask = size - 1
        for i in oldKeys.indices where oldKeys[i] != Self.empty {
            var s = home(oldKeys[i], mask)
            while keys[s] != Self.empty { s = (s + 1) & mask }
            keys[s] = oldKeys[i]
            values[s] = oldValues[i]
        }
    }

    /// Slots allocated (twice the entries it holds at most before it grows).
    var capacity: Int { keys.count }

    /// Every key, ascending.
    var sortedKeys: [UInt64] {
        var k = keys.filter { $0 != Self.empty }
        AddressSort.sort(&k)
        if maxKeyValue != nil { k.append(Self.empty) }  // the largest key: last
        return k
    }

    /// Every entry, as a dictionary.
    var dictionary: [UInt64: UInt64] {
        var d: [UInt64: UInt64] = [:]
        d.reserveCapacity(count)
        for i in keys.indices where keys[i] != Self.empty { d[keys[i]] = values[i] }
        if let v = maxKeyValue { d[Self.empty] = v }
        return d
    }
}
