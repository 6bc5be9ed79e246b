// SPDX-License-Identifier: Apache-2.0
//
// The export tables' lookup structure: symbol names (ASCII byte strings) → addresses, looked up
// with the borrowed bytes of a module's symbol name (no `String` made, no SipHash over it).
// Every undefined symbol of every module, every name a module exports (verify_exported_symbols)
// and every export a verified module adds goes through it; with `[String: UInt64]` this was the
// largest single cost of the engine after the relocation walk.
//
// Equality is byte equality, as the kernel compares symbol names (`strcmp()`); for two ASCII
// strings it is also `String` equality. Non-ASCII names never enter the table: their owners
// (SlidExports, ModuleExports, KeySymbols) keep them apart and match them by their bytes only.

import _ExecGateInternals

/// Open addressing over a power-of-two array of slots that hold the entry itself (hash, value,
/// the name's first 16 bytes), probed through a parallel array of 32-bit tags (4 bytes a slot: it
/// stays in cache, so a miss, the usual answer of the added-exports table and of the duplicate-
/// export check, rarely reads a slot); a hit on a name of up to 16 bytes reads one slot, a longer
/// name one more read of its tail. A value type (copy-on-write through its arrays).
struct NameTable: Sendable {
    private struct Slot {
        var hash: UInt64 = 0
        var value: UInt64 = 0
        /// The name's first 16 bytes, zero-padded.
        var head0: UInt64 = 0
        var head1: UInt64 = 0
        /// Where the name's bytes are in `bytes`; count −1 marks an empty slot.
        var start: Int32 = 0
        var count: Int32 = -1
    }
    /// The names' bytes, one after another.
    private var bytes: [UInt8] = []
    /// At most half full.
    private var slots: [Slot] = []
    /// Per slot: 0 empty, else the high half of the hash with bit 0 set.
    private var tags: [UInt32] = []
    private(set) var count = 0

    init() {}

    init(minimumCapacity n: Int) {
        var size = 16
        while size < 2 * n { size <<= 1 }
        slots = [Slot](repeating: Slot(), count: size)
        tags = [UInt32](repeating: 0, count: size)
    }

    @inline(__always) static func tag(_ hash: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: hash >> 32) | 1 }

    var isEmpty: Bool { count == 0 }

    /// Per-process seed (the order of nothing observable depends on it; it only spreads names).
    static let seed = UInt64.random(in: 1...UInt64.max)

    /// A name's hash and first 16 bytes (zero-padded): the same for every table (one seed per
    /// process), so a name looked up in several tables is hashed once.
    typealias Digest = (hash: UInt64, head0: UInt64, head1: UInt64)

    /// The hash and the first 16 bytes (zero-padded) of `b`, in one pass over it.
    @inline(__always) static func digest(_ b: UnsafeRawBufferPointer) -> Digest {
        var h = seed ^ (UInt64(b.count) &* 0x9e37_79b9_7f4a_7c15)
        var head0: UInt64 = 0, head1: UInt64 = 0
        var i = 0
        let n = b.count
        while i + 8 <= n {
            let w = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            if i == 0 { head0 = w } else if i == 8 { head1 = w }
            h = (h ^ w) &* 0xbf58_476d_1ce4_e5b9
            h ^= h >> 31
            i += 8
        }
        if i < n {
            var w: UInt64 = 0
            if n >= 8 {
                // The tail's bytes as the top of the name's last 8 (little-endian): the same
                // word the byte loop below builds, in one load.
                w = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self)) >> (8 * UInt64(8 - (n - i)))
            } else {
                var k = 0
                while i + k < n { w |= UInt64(b[i + k]) << (8 * UInt64(k)); k += 1 }
            }
            if i == 0 { head0 = w } else if i == 8 { head1 = w }
            h = (h ^ w) &* 0xbf58_476d_1ce4_e5b9
        }
        h ^= h >> 29
        h = h &* 0x94d0_49bb_1331_11eb
        return (h ^ (h >> 32), head0, head1)
    }

    /// The slot holding `b` (found) or the empty slot where it would go.
    @inline(__always) private func find(_ b: UnsafeRawBufferPointer, _ d: Digest) -> (slot: Int, found: Bool) {
        let mask = slots.count - 1
        precondition(mask >= 0 && tags.count == slots.count)
        var s = Int(truncatingIfNeeded: d.hash) & mask
        let t = Self.tag(d.hash)
        return tags.withUnsafeBufferPointer { tg in
            slots.withUnsafeBufferPointer { sl in
                while true {
                    let g = tg[s]
                    if g == 0 { return (s, false) }
                    if g == t {
                        let x = sl[s]
                        if x.hash == d.hash && Int(x.count) == b.count && x.head0 == d.head0 && x.head1 == d.head1
                            && (b.count <= 16 || tailEqual(Int(x.start), b)) { return (s, true) }
                    }
                    s = (s + 1) & mask
                }
            }
        }
    }

    /// `bytes[start + 16 ..< start + b.count] == b[16...]`.
    private func tailEqual(_ start: Int, _ b: UnsafeRawBufferPointer) -> Bool {
        bytes.withUnsafeBytes { nb in
            let n = b.count
            precondition(start >= 0 && start <= nb.count - n)
            var i = 16
            while i + 8 <= n {
                if nb.loadUnaligned(fromByteOffset: start + i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
                i += 8
            }
            while i < n { if nb[start + i] != b[i] { return false }; i += 1 }
            return true
        }
    }

    /// The value of the name `b` (ASCII bytes).
    func lookup(_ b: UnsafeRawBufferPointer) -> UInt64? {
        if count == 0 { return nil }
        return lookup(b, digest: Self.digest(b))
    }

    /// `lookup(b)` with `d == NameTable.digest(b)` already computed.
    @inline(__always) func lookup(_ b: UnsafeRawBufferPointer, digest d: Digest) -> UInt64? {
        if count == 0 { return nil }
        let (s, found) = find(b, d)
        return found ? slots[s].value : nil
    }

    /// `lookup(b, digest: d)` probing the slots directly, without the tags: for a table where
    /// names are usually present (the core's exports), a hit then costs the slot's line and not
    /// also a tag's (a tag is 0 exactly for an empty slot and matches whenever the hash does, so
    /// the answers are the same).
    @inline(__always) func lookupLikelyPresent(_ b: UnsafeRawBufferPointer, digest d: Digest) -> UInt64? {
        if count == 0 { return nil }
        let mask = slots.count - 1
        precondition(mask >= 0)
        var s = Int(truncatingIfNeeded: d.hash) & mask
        return slots.withUnsafeBufferPointer { sl in
            while true {
                let x = sl[s]
                if x.count < 0 { return nil }
                if x.hash == d.hash && Int(x.count) == b.count && x.head0 == d.head0 && x.head1 == d.head1
                    && (b.count <= 16 || tailEqual(Int(x.start), b)) { return x.value }
                s = (s + 1) & mask
            }
        }
    }

    /// Reads the first line a lookup of digest `d` reads (the tag with `viaTags`, else the slot)
    /// and returns a word of it: issued for many names before their lookups (which depend on
    /// nothing but their own line), the cache misses overlap instead of coming one after another.
    /// The caller folds the words into one value it keeps, so the reads are not optimised away.
    @inline(__always) func touch(_ d: Digest, viaTags: Bool) -> UInt64 {
        let mask = slots.count - 1
        if mask < 0 { return 0 }
        let s = Int(truncatingIfNeeded: d.hash) & mask
        return viaTags ? tags.withUnsafeBufferPointer { UInt64($0[s]) } : slots.withUnsafeBufferPointer { $0[s].value }
    }

    /// After `touch(d, viaTags: false)`: reads the stored tail (bytes 16 and on) of the name in
    /// the slot a lookup of `d` probes first, when it has one, and returns a byte of it (a
    /// lookup of a name longer than 16 bytes compares it there: a second miss, overlapped the same way).
    @inline(__always) func touchTail(_ d: Digest) -> UInt64 {
        let mask = slots.count - 1
        if mask < 0 { return 0 }
        let s = Int(truncatingIfNeeded: d.hash) & mask
        let (start, n) = slots.withUnsafeBufferPointer { (Int($0[s].start), Int($0[s].count)) }
        guard n > 16 else { return 0 }
        return bytes.withUnsafeBytes { nb in start + 16 < nb.count ? UInt64(nb[start + 16]) : 0 }
    }

    /// Insert, or replace the value of, the name `b` (ASCII bytes).
    mutating func insert(_ b: UnsafeRawBufferPointer, _ value: UInt64) {
        precondition(b.isASCII, "NameTable holds ASCII names only")
        insertChecked(b, value, digest: Self.digest(b))
    }

    /// `insert(b, value)` with `d == NameTable.digest(b)` already computed.
    mutating func insert(_ b: UnsafeRawBufferPointer, _ value: UInt64, digest d: Digest) {
        precondition(b.isASCII, "NameTable holds ASCII names only")
        insertChecked(b, value, digest: d)
    }

    /// Every entry of `other` inserted (or its value replacing this table's), in `other`'s slot
    /// order: the same table as `insert` of each of its (name, value) pairs. The names are not
    /// re-hashed (one seed per process: `other`'s stored hash and head are this table's too) nor
    /// re-checked for ASCII (`other` holds only ASCII names).
    mutating func insertAll(_ other: NameTable) {
        if other.count == 0 { return }
        if 2 * (count + other.count) > slots.count { grow(toHold: count + other.count) }
        other.bytes.withUnsafeBytes { ob in
            for x in other.slots where x.count >= 0 {
                let start = Int(x.start), n = Int(x.count)
                precondition(start >= 0 && start <= ob.count - n)
                insertChecked(UnsafeRawBufferPointer(rebasing: ob[start..<start + n]), x.value, digest: (x.hash, x.head0, x.head1))
            }
        }
    }

    /// Calls `body` with every (name bytes, value), in slot order (the bytes are borrowed).
    func forEach(_ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) rethrows {
        try bytes.withUnsafeBytes { nb in
            for x in slots where x.count >= 0 {
                try body(UnsafeRawBufferPointer(rebasing: nb[Int(x.start)..<Int(x.start) + Int(x.count)]), x.value)
            }
        }
    }

    /// `b` is ASCII and `d` its digest.
    private mutating func insertChecked(_ b: UnsafeRawBufferPointer, _ value: UInt64, digest d: Digest) {
        if 2 * (count + 1) > slots.count { grow(toHold: count + 1) }
        let (s, found) = find(b, d)
        if found { slots[s].value = value; return }
        precondition(bytes.count <= Int(Int32.max) - b.count)
        slots[s] = Slot(hash: d.hash, value: value, head0: d.head0, head1: d.head1, start: Int32(bytes.count), count: Int32(b.count))
        tags[s] = Self.tag(d.hash)
        bytes.append(contentsOf: b)
        count += 1
    }

    private mutating func grow(toHold n: Int) {
        var size = max(16, slots.count * 2)
        while size < 2 * n { size <<= 1 }
        var sl = [Slot](repeating: Slot(), count: size)
        var tg = [UInt32](repeating: 0, count: size)
        let mask = size - 1
        for x in slots where x.count >= 0 {
            var s = Int(truncatingIfNeeded: x.hash) & mask
            while tg[s] != 0 { s = (s + 1) & mask }
            sl[s] = x
            tg[s] = Self.tag(x.hash)
        }
        slots = sl
        tags = tg
    }

    /// Every (name, value), in slot order.
    var pairs: [(name: String, value: UInt64)] {
        bytes.withUnsafeBufferPointer { nb in
            slots.filter { $0.count >= 0 }.map {
                (String(decoding: UnsafeBufferPointer(rebasing: nb[Int($0.start)..<Int($0.start) + Int($0.count)]), as: UTF8.self), $0.value)
            }
        }
    }
}
