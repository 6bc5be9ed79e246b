// SPDX-License-Identifier: Apache-2.0
//
// The export tables' lookup structure: symbol names (ASCII byte strings) → addresses, looked up
// with the borrowed bytes of a module's symbol name (no `String` made, no SipHash over it).
// Every undefined symbol of every module, every name a module exports (verify_exported_symbols)
// and every export a verified module adds goes through it; with `[String: UInt64]` this was the
// largest single cost of the engine after the relocation walk.
//
// Equality is byte equality, which for two ASCII strings is exactly `String` equality (canonical
// equivalence maps an ASCII string only to itself). Non-ASCII names never enter the table: their
// owners (SlidExports) keep them in a `[String: UInt64]` and compare them as `String`s, as before.

/// Open addressing over a power-of-two slot array; a name's bytes are compared only when its
/// 64-bit hash matches. A value type (copy-on-write through its arrays).
struct NameTable: Sendable {
    private struct Entry {
        var hash: UInt64
        var start: Int
        var count: Int
        var value: UInt64
    }
    /// The names' bytes, one after another.
    private var bytes: [UInt8] = []
    private var entries: [Entry] = []
    /// Index into `entries`, -1 for an empty slot; at most half full.
    private var slots: [Int32] = []

    init() {}

    init(minimumCapacity n: Int) {
        entries.reserveCapacity(n)
        var size = 16
        while size < 2 * n { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
    }

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    /// Per-process seed (the order of nothing observable depends on it; it only spreads names).
    private static let seed = UInt64.random(in: 1...UInt64.max)

    @inline(__always) static func hash(_ b: UnsafeRawBufferPointer) -> UInt64 {
        var h = seed ^ (UInt64(b.count) &* 0x9e37_79b9_7f4a_7c15)
        var i = 0
        let n = b.count
        while i + 8 <= n {
            h = (h ^ UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self))) &* 0xbf58_476d_1ce4_e5b9
            h ^= h >> 31
            i += 8
        }
        if i < n {
            var w: UInt64 = 0
            var k = 0
            while i + k < n { w |= UInt64(b[i + k]) << (8 * UInt64(k)); k += 1 }
            h = (h ^ w) &* 0xbf58_476d_1ce4_e5b9
        }
        h ^= h >> 29
        h = h &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 32)
    }

    /// True if every byte is below 0x80 (word-wise).
    @inline(__always) static func isASCII(_ b: UnsafeRawBufferPointer) -> Bool {
        var acc: UInt64 = 0
        var i = 0
        while i + 8 <= b.count { acc |= b.loadUnaligned(fromByteOffset: i, as: UInt64.self); i += 8 }
        while i < b.count { acc |= UInt64(b[i]); i += 1 }
        return acc & 0x8080_8080_8080_8080 == 0
    }

    /// The slot holding `b` (its entry index ≥ 0), or the empty slot where it would go (-1).
    @inline(__always) private func find(_ b: UnsafeRawBufferPointer, _ h: UInt64) -> (slot: Int, entry: Int) {
        let mask = slots.count - 1
        var s = Int(truncatingIfNeeded: h) & mask
        return slots.withUnsafeBufferPointer { sl in
            entries.withUnsafeBufferPointer { en in
                bytes.withUnsafeBytes { nb in
                    while true {
                        let e = Int(sl[s])
                        if e < 0 { return (s, -1) }
                        let x = en[e]
                        if x.hash == h && x.count == b.count && Self.equal(nb, x.start, b) { return (s, e) }
                        s = (s + 1) & mask
                    }
                }
            }
        }
    }

    @inline(__always) private static func equal(_ nb: UnsafeRawBufferPointer, _ start: Int, _ b: UnsafeRawBufferPointer) -> Bool {
        let n = b.count
        precondition(start >= 0 && start <= nb.count - n)
        var i = 0
        while i + 8 <= n {
            if nb.loadUnaligned(fromByteOffset: start + i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
            i += 8
        }
        while i < n { if nb[start + i] != b[i] { return false }; i += 1 }
        return true
    }

    /// The value of the name `b` (ASCII bytes).
    func lookup(_ b: UnsafeRawBufferPointer) -> UInt64? {
        if entries.isEmpty { return nil }
        let (_, e) = find(b, Self.hash(b))
        return e < 0 ? nil : entries[e].value
    }

    /// Insert, or replace the value of, the name `b` (ASCII bytes).
    mutating func insert(_ b: UnsafeRawBufferPointer, _ value: UInt64) {
        precondition(Self.isASCII(b), "NameTable holds ASCII names only")
        if 2 * (entries.count + 1) > slots.count { grow() }
        let h = Self.hash(b)
        let (s, e) = find(b, h)
        if e >= 0 { entries[e].value = value; return }
        precondition(entries.count < Int(Int32.max))
        entries.append(Entry(hash: h, start: bytes.count, count: b.count, value: value))
        bytes.append(contentsOf: b)
        slots[s] = Int32(entries.count - 1)
    }

    private mutating func grow() {
        var size = max(16, slots.count * 2)
        while size < 2 * (entries.count + 1) { size <<= 1 }
        var sl = [Int32](repeating: -1, count: size)
        let mask = size - 1
        for (i, e) in entries.enumerated() {
            var s = Int(truncatingIfNeeded: e.hash) & mask
            while sl[s] >= 0 { s = (s + 1) & mask }
            sl[s] = Int32(i)
        }
        slots = sl
    }

    /// Every (name, value), in insertion order.
    var pairs: [(name: String, value: UInt64)] {
        bytes.withUnsafeBufferPointer { nb in
            entries.map { (String(decoding: UnsafeBufferPointer(rebasing: nb[$0.start..<$0.start + $0.count]), as: UTF8.self), $0.value) }
        }
    }

    /// Without the names `drop` says yes to (rebuilt: for the rare non-ASCII insert only).
    func removing(where drop: (String) -> Bool) -> NameTable {
        var t = NameTable()
        for (n, v) in pairs where !drop(n) {
            var n = n
            n.withUTF8 { t.insert(UnsafeRawBufferPointer($0), v) }
        }
        return t
    }
}
