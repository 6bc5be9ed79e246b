// SPDX-License-Identifier: Apache-2.0
//
// Function entries: a module's (sorted, unique, binary-searched) and a guest's verified modules'
// (each module's kept as added). `isFunctionEntry` asks them for the core's and every verified
// module's legitimate call targets.

/// A module's function entries (STT_FUNC addresses in its exec core sections): sorted, unique,
/// found by binary search. Built once per explanation from the symbol table (a sort of a few
/// hundred words instead of a hash per symbol), kept as is by ``ModuleExports`` and shared, not
/// merged, by ``SymbolResolver`` (``FunctionEntrySet``).
public struct FunctionEntries: Sendable, Sequence, ExpressibleByArrayLiteral, Equatable {
    /// Strictly increasing.
    public let sorted: [UInt64]

    public init(_ addresses: [UInt64]) {
        var a = addresses
        // (A module's entries span a few MiB: out of order, a radix sort of their offsets.)
        AddressSort.sortUnique(&a)
        sorted = a
    }
    public init(_ addresses: Set<UInt64>) { self.init(Array(addresses)) }

    public init(arrayLiteral elements: UInt64...) { self.init(elements) }

    public var count: Int { sorted.count }
    public var isEmpty: Bool { sorted.isEmpty }
    public var underestimatedCount: Int { sorted.count }
    public func makeIterator() -> IndexingIterator<[UInt64]> { sorted.makeIterator() }

    public func contains(_ a: UInt64) -> Bool {
        // (Outside the first-to-last span no search: the static-call filter asks a module's own
        // entries first for every target, most of them the core's.)
        guard let lo = sorted.first, a >= lo, a <= sorted[sorted.count &- 1] else { return false }
        return sorted.sortedContains(a)
    }
}

/// The function entries of every verified module of a guest: each module's ``FunctionEntries``
/// as it was added (shared storage, nothing merged), in the order added.
public struct FunctionEntrySet: Sendable, Sequence {
    public private(set) var modules: [FunctionEntries] = []
    /// Each module's span, its first to its last entry, ordered by first entry (`module` indexes
    /// `modules`), and whether no two spans share an address. Modules are separate allocations,
    /// so their spans never do in a guest's set; then an address is a module's entry only if it
    /// lies in that module's span, and `contains` searches the spans, then that one module: a
    /// look-up costs two binary searches, where asking every module in turn cost one each (a
    /// target no module has, asked at the 100th module, made 100).
    private var spans: [(lo: UInt64, hi: UInt64, module: Int)] = []
    private var disjoint = true
    public init() {}
    mutating func add(_ e: FunctionEntries) {
        guard let lo = e.sorted.first, let hi = e.sorted.last else { return }
        modules.append(e)
        var at = spans.count
        while at > 0 && spans[at - 1].lo > lo { at -= 1 }  // (added in address order as a rule: no move)
        spans.insert((lo, hi, modules.count - 1), at: at)
        if at > 0 && spans[at - 1].hi >= lo { disjoint = false }
        if at + 1 < spans.count && spans[at + 1].lo <= hi { disjoint = false }
    }
    /// Every module of `all`, in that order, as `add` one at a time would leave the set, with
    /// the spans sorted once: added one at a time at descending addresses (the guest chooses
    /// where its modules are), every insert moved every span — quadratic in the live modules at
    /// each rebuild of a guest's resolver (every retire: a review, 2026-12-07). The order `add`
    /// keeps is (first entry, then order added); disjoint exactly when no two neighbours in
    /// that order share an address (two spans that do overlap each span between them too).
    mutating func add(contentsOf all: [FunctionEntries]) {
        for e in all {
            guard let lo = e.sorted.first, let hi = e.sorted.last else { continue }
            modules.append(e)
            spans.append((lo, hi, modules.count - 1))
        }
        spans.sort { ($0.lo, $0.module) < ($1.lo, $1.module) }
        for k in spans.indices.dropFirst() where spans[k - 1].hi >= spans[k].lo { disjoint = false; break }
    }
    public func contains(_ a: UInt64) -> Bool {
        guard disjoint else { return modules.contains { $0.contains(a) } }
        // The last span starting at or below `a`: the only one that can hold it.
        var lo = 0, hi = spans.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if spans[mid].lo <= a { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0, a <= spans[lo - 1].hi else { return false }
        return modules[spans[lo - 1].module].contains(a)
    }
    /// No two modules' spans share an address (look-ups by binary search; for tests).
    var isDisjoint: Bool { disjoint }
    public var count: Int { modules.reduce(0) { $0 + $1.count } }
    public var isEmpty: Bool { modules.isEmpty }
    public var underestimatedCount: Int { count }
    public func makeIterator() -> FlattenSequence<[FunctionEntries]>.Iterator { modules.joined().makeIterator() }
}
