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
/// where the name's bytes are, the name's first bytes), probed through a parallel array of 32-bit
/// tags (4 bytes a slot: it stays in cache, so a miss, the usual answer of the added-exports
/// table and of the duplicate-export check, rarely reads a slot). Two layouts (``Layout``):
/// - `wide`, for the shared core export index, the table every module's undefined symbols are
///   looked up in (``SlidExports``): 64-byte slots aligned to a cache line, the name's first 40
///   bytes inside, so a hit on a name of up to 40 bytes (all but 7 of the 9,648 undefined symbols
///   of the shared corpus's 103 modules) reads one line. (With the compact layout a probe reads
///   about 1.5 lines — a 40-byte slot crosses a line boundary at half its positions — and 44% of
///   those names are longer than 16 bytes: their tails a second miss each.) Held once per kernel
///   build, shared by its guests.
/// - `compact`, for every other table (a module's exports and key symbols, a guest's verified
///   modules' exports): 40-byte slots, the first 16 bytes inside; a longer name's tail compared in
///   `bytes`. What those tables hold is charged per module and per guest
///   (`LiveModule.heldBytes`), at this size.
/// A value type: copy-on-write through its arrays and its slot storage (``Slots``).
struct NameTable: Sendable {
    /// A slot's fields, at these byte offsets: hash (UInt64), value (UInt64), start of the name in
    /// `bytes` (Int32), the name's length + 1 (Int32; 0 marks an empty slot, so zeroed storage is
    /// an empty table), then the name's first `headBytes` bytes, zero-padded.
    fileprivate static let hashAt = 0, valueAt = 8, startAt = 16, countAt = 20, headAt = 24

    struct Layout: Sendable, Equatable {
        let slotSize: Int
        let headBytes: Int
        static let compact = Layout(slotSize: 40, headBytes: 16)
        static let wide = Layout(slotSize: 64, headBytes: 40)
        /// What the slot code assumes: 8-byte aligned slots (its aligned loads), the digest's 16
        /// head bytes at least inside (`holds`), the head within the slot.
        private init(slotSize: Int, headBytes: Int) {
            precondition(slotSize % 8 == 0 && headBytes >= 16 && NameTable.headAt + headBytes <= slotSize, "NameTable slot layout")
            self.slotSize = slotSize
            self.headBytes = headBytes
        }
    }

    /// The slots: `capacity` × `slotSize` bytes, 64-byte aligned, zeroed when made. Shared by
    /// copies of the table and never written while shared (`insertChecked` copies them first when
    /// `isKnownUniquelyReferenced` says another table holds them), as an array's storage: that is
    /// what makes the unchecked `Sendable` sound.
    private final class Slots: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let capacity: Int
        let slotSize: Int
        init(capacity: Int, slotSize: Int) {
            precondition(capacity > 0 && capacity.nonzeroBitCount == 1 && capacity <= Int.max / slotSize)
            self.capacity = capacity
            self.slotSize = slotSize
            base = .allocate(byteCount: capacity * slotSize, alignment: 64)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * slotSize)
        }
        /// The same slots in storage of their own.
        func copy() -> Slots {
            let c = Slots(capacity: capacity, slotSize: slotSize)
            c.base.copyMemory(from: base, byteCount: capacity * slotSize)
            return c
        }
        deinit { base.deallocate() }
    }

    /// The names' bytes, one after another.
    private var bytes: [UInt8] = []
    /// At most half full; nil until the first insert.
    private var slots: Slots?
    /// Per slot: 0 empty, else the high half of the hash with bit 0 set.
    private var tags: [UInt32] = []
    private(set) var count = 0
    let layout: Layout

    init(layout: Layout = .compact) { self.layout = layout }

    init(minimumCapacity n: Int, layout: Layout = .compact) {
        self.layout = layout
        var size = 16
        while size < 2 * n { size <<= 1 }
        slots = Slots(capacity: size, slotSize: layout.slotSize)
        tags = [UInt32](repeating: 0, count: size)
    }

    /// A table sized up front for the `n` entries a count read from a module suggests (its
    /// ksymtab entries, from the sections' sizes), at most 4,096 of them (as
    /// ``AddressTable/init(expecting:)``): the rest arrive by growth, so a table a module only
    /// claims to have (a huge `__ksymtab`, refused at its first entry) reserves nothing for it.
    /// (Real modules export at most a few thousand names.)
    init(expecting n: Int) { self.init(minimumCapacity: Swift.min(n, 1 << 12)) }

    @inline(__always) static func tag(_ hash: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: hash >> 32) | 1 }

    var isEmpty: Bool { count == 0 }
    /// Slots allocated (0 before the first insert).
    var capacity: Int { slots?.capacity ?? 0 }

    /// Per-process seed (the order of nothing observable depends on it; it only spreads names).
    static let seed = UInt64.random(in: 1...UInt64.max)

    /// A name's hash and first 16 bytes (zero-padded): the same for every table (one seed per
    /// process), so a name looked up in several tables is hashed once.
    typealias Digest = (hash: UInt64, head0: UInt64, head1: UInt64)

    /// The hash and the first 16 bytes (zero-padded) of `b`, in one pass over it.
    @inline(__always) static func digest(_ b: UnsafeRawBufferPointer) -> Digest { digest(b, seed: seed) }

    /// `digest(b)` with `seed` read by the caller (`NameTable.seed`, once before a loop: each read
    /// of the lazily initialised static is a call to `swift_once`, which the optimiser does not
    /// move out of a loop).
    @inline(__always) static func digest(_ b: UnsafeRawBufferPointer, seed: UInt64) -> Digest {
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

    /// The slot at index `s` of `p` (`s` below the capacity).
    @inline(__always) private func slot(_ p: UnsafeMutableRawPointer, _ s: Int) -> UnsafeMutableRawPointer { p + s &* layout.slotSize }

    /// The stored name's word at byte `i` of its head, as the digest reads a name's words
    /// (little-endian: the same on any host).
    @inline(__always) private static func headWord(_ x: UnsafeMutableRawPointer, _ i: Int) -> UInt64 {
        UInt64(littleEndian: x.load(fromByteOffset: headAt + i, as: UInt64.self))
    }

    /// The slot at `x` holds the name `b` whose digest is `d`: the same hash and length, the same
    /// first 16 bytes (the digest's), the same bytes up to `headBytes` (in the slot) and after
    /// them (in `bytes`, a name longer than `headBytes`).
    @inline(__always) private func holds(_ x: UnsafeMutableRawPointer, _ b: UnsafeRawBufferPointer, _ d: Digest) -> Bool {
        let n = b.count
        guard x.load(fromByteOffset: Self.hashAt, as: UInt64.self) == d.hash,
              Int(x.load(fromByteOffset: Self.countAt, as: Int32.self)) == n &+ 1,
              Self.headWord(x, 0) == d.head0, Self.headWord(x, 8) == d.head1 else { return false }
        if n <= 16 { return true }
        // Bytes 16 ..< min(n, headBytes) in the slot (none in the compact layout), then the rest.
        let hb = layout.headBytes
        let m = min(n, hb)
        if m > 16, !UnsafeRawBufferPointer(rebasing: b[16..<m]).hasPrefix(UnsafeRawBufferPointer(start: x + Self.headAt + 16, count: m - 16)) { return false }
        return n <= hb || tailEqual(Int(x.load(fromByteOffset: Self.startAt, as: Int32.self)), from: hb, b)
    }

    /// The slot holding `b` (found) or the empty slot where it would go (a table with slots).
    @inline(__always) private func find(_ b: UnsafeRawBufferPointer, _ d: Digest) -> (slot: Int, found: Bool) {
        guard let sl = slots else { preconditionFailure("find in a table without slots") }
        let mask = sl.capacity - 1
        precondition(tags.count == sl.capacity)
        var s = Int(truncatingIfNeeded: d.hash) & mask
        let t = Self.tag(d.hash)
        let base = sl.base
        return tags.withUnsafeBufferPointer { tg in
            while true {
                let g = tg[s]
                if g == 0 { return (s, false) }
                if g == t && holds(slot(base, s), b, d) { return (s, true) }
                s = (s + 1) & mask
            }
        }
    }

    /// `bytes[start + from ..< start + b.count] == b[from...]` (`b.count > from`).
    private func tailEqual(_ start: Int, from: Int, _ b: UnsafeRawBufferPointer) -> Bool {
        bytes.withUnsafeBytes { nb in
            let n = b.count
            precondition(start >= 0 && start <= nb.count - n)
            return UnsafeRawBufferPointer(rebasing: nb[start + from..<start + n]).hasPrefix(UnsafeRawBufferPointer(rebasing: b[from...]))
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
        return found ? slot(slots!.base, s).load(fromByteOffset: Self.valueAt, as: UInt64.self) : nil
    }

    /// `lookup(b, digest: d)` probing the slots directly, without the tags: for a table where
    /// names are usually present (the core's exports), a hit then costs the slot's line and not
    /// also a tag's (a tag is 0 exactly for an empty slot and matches whenever the hash does, so
    /// the answers are the same).
    @inline(__always) func lookupLikelyPresent(_ b: UnsafeRawBufferPointer, digest d: Digest) -> UInt64? {
        if count == 0 { return nil }
        let sl = slots!
        let mask = sl.capacity - 1
        var s = Int(truncatingIfNeeded: d.hash) & mask
        while true {
            let x = slot(sl.base, s)
            if x.load(fromByteOffset: Self.countAt, as: Int32.self) == 0 { return nil }
            if holds(x, b, d) { return x.load(fromByteOffset: Self.valueAt, as: UInt64.self) }
            s = (s + 1) & mask
        }
    }

    /// Reads the first line a lookup of digest `d` reads (the tag with `viaTags`, else the slot)
    /// and returns a word of it: issued for many names before their lookups (which depend on
    /// nothing but their own line), the cache misses overlap instead of coming one after another.
    /// The caller folds the words into one value it keeps, so the reads are not optimised away.
    @inline(__always) func touch(_ d: Digest, viaTags: Bool) -> UInt64 {
        guard let sl = slots else { return 0 }
        let s = Int(truncatingIfNeeded: d.hash) & (sl.capacity - 1)
        return viaTags ? tags.withUnsafeBufferPointer { UInt64($0[s]) } : slot(sl.base, s).load(fromByteOffset: Self.valueAt, as: UInt64.self)
    }

    /// After `touch(d, viaTags: false)`: reads the stored tail (the bytes past `headBytes`) of the
    /// name in the slot a lookup of `d` probes first, when it has one, and returns a byte of it (a
    /// lookup of a longer name compares it there: a second miss, overlapped the same way).
    @inline(__always) func touchTail(_ d: Digest) -> UInt64 {
        guard let sl = slots else { return 0 }
        let x = slot(sl.base, Int(truncatingIfNeeded: d.hash) & (sl.capacity - 1))
        let start = Int(x.load(fromByteOffset: Self.startAt, as: Int32.self)), n = Int(x.load(fromByteOffset: Self.countAt, as: Int32.self)) - 1
        let hb = layout.headBytes
        guard n > hb else { return 0 }
        return bytes.withUnsafeBytes { nb in start + hb < nb.count ? UInt64(nb[start + hb]) : 0 }
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
        growIfNeeded(toHold: count + other.count)
        other.forEachSlot { name, value, d in insertChecked(name, value, digest: d) }
    }

    /// Calls `body` with every (name bytes, value, digest) in slot order (the bytes borrowed).
    private func forEachSlot(_ body: (UnsafeRawBufferPointer, UInt64, Digest) throws -> Void) rethrows {
        guard let sl = slots else { return }
        try bytes.withUnsafeBytes { nb in
            for s in 0..<sl.capacity {
                let x = slot(sl.base, s)
                let n = Int(x.load(fromByteOffset: Self.countAt, as: Int32.self)) - 1
                if n < 0 { continue }
                let start = Int(x.load(fromByteOffset: Self.startAt, as: Int32.self))
                precondition(start >= 0 && start <= nb.count - n)
                let d = (x.load(fromByteOffset: Self.hashAt, as: UInt64.self), Self.headWord(x, 0), Self.headWord(x, 8))
                try body(UnsafeRawBufferPointer(rebasing: nb[start..<start + n]), x.load(fromByteOffset: Self.valueAt, as: UInt64.self), d)
            }
        }
    }

    /// Calls `body` with every (name bytes, value), in slot order (the bytes are borrowed).
    func forEach(_ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) rethrows {
        try forEachSlot { name, value, _ in try body(name, value) }
    }

    /// `b` is ASCII and `d` its digest.
    private mutating func insertChecked(_ b: UnsafeRawBufferPointer, _ value: UInt64, digest d: Digest) {
        growIfNeeded(toHold: count + 1)
        let (s, found) = find(b, d)
        if !isKnownUniquelyReferenced(&slots) { slots = slots!.copy() }
        let x = slot(slots!.base, s)
        if found { x.storeBytes(of: value, toByteOffset: Self.valueAt, as: UInt64.self); return }
        precondition(bytes.count <= Int(Int32.max) - b.count && b.count < Int(Int32.max))
        x.storeBytes(of: d.hash, toByteOffset: Self.hashAt, as: UInt64.self)
        x.storeBytes(of: value, toByteOffset: Self.valueAt, as: UInt64.self)
        x.storeBytes(of: Int32(bytes.count), toByteOffset: Self.startAt, as: Int32.self)
        x.storeBytes(of: Int32(b.count + 1), toByteOffset: Self.countAt, as: Int32.self)
        if let src = b.baseAddress { (x + Self.headAt).copyMemory(from: src, byteCount: min(b.count, layout.headBytes)) }
        tags[s] = Self.tag(d.hash)
        bytes.append(contentsOf: b)
        count += 1
    }

    /// Makes room for `n` entries at most half full: the slots moved (not re-hashed: each keeps
    /// its stored hash) into storage of the next power of two that holds them.
    private mutating func growIfNeeded(toHold n: Int) {
        let old = slots?.capacity ?? 0
        if 2 * n <= old { return }
        var size = max(16, old * 2)
        while size < 2 * n { size <<= 1 }
        let grown = Slots(capacity: size, slotSize: layout.slotSize)
        var tg = [UInt32](repeating: 0, count: size)
        let mask = size - 1
        if let sl = slots {
            for i in 0..<sl.capacity {
                let x = slot(sl.base, i)
                if x.load(fromByteOffset: Self.countAt, as: Int32.self) == 0 { continue }
                let h = x.load(fromByteOffset: Self.hashAt, as: UInt64.self)
                var s = Int(truncatingIfNeeded: h) & mask
                while tg[s] != 0 { s = (s + 1) & mask }
                slot(grown.base, s).copyMemory(from: x, byteCount: layout.slotSize)
                tg[s] = Self.tag(h)
            }
        }
        slots = grown
        tags = tg
    }

    /// Every (name, value), in slot order.
    var pairs: [(name: String, value: UInt64)] {
        var out: [(name: String, value: UInt64)] = []
        out.reserveCapacity(count)
        forEach { name, value in out.append((String(decoding: name, as: UTF8.self), value)) }
        return out
    }
}
