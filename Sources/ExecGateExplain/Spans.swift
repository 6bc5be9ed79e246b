// SPDX-License-Identifier: Apache-2.0
//
// Interval lookups whose sizes a module file chooses (its section count, its site tables): asked
// once per site or table entry, a scan of every section per question is the product of two counts
// the file picks (round 13: 60,000 executable sections and 4,000,000 `.ibt_endbr_seal` entries held
// a judging thread 225 s). Both answer the yes/no questions exactly as the scans they replace;
// `Spans.find` names the first span in address order, where the scans took section order: the
// same span whenever the spans are disjoint, which a module's sections are (the 6.1 layout's
// offsets, the 6.12 per-type bases checked apart).)

import ExecGateELF

/// Half-open spans [lo, hi) with a value each (a section index), sorted by `lo`: "which span holds
/// all of [x, x + n)?" by binary search when the spans are disjoint (a module's sections are: the
/// layout gives each its own offset), by the scan in `lo` order otherwise (never seen; kept exact).
struct Spans {
    /// The non-empty spans sorted by (lo, value): one array (set-up makes three `Spans` a module:
    /// three parallel arrays each, made through a filter, a sort and three maps, were 17 of the
    /// ~127 allocations of a small module's explanation).
    private var spans: [(lo: UInt64, hi: UInt64, value: Int)]
    private var disjoint = true

    /// Empty spans are left out (they hold no byte).
    init(_ input: [(lo: UInt64, hi: UInt64, value: Int)]) {
        var a = input
        // (Only when there is one to remove: `removeAll(where:)` makes the shared buffer unique,
        // a copy, even when it removes nothing — three `Spans` a module.)
        if a.contains(where: { $0.lo >= $0.hi }) { a.removeAll { $0.lo >= $0.hi } }
        // Usually already in order (sections in file order, laid out in that order).
        var inOrder = true
        for k in a.indices.dropFirst() where (a[k].lo, a[k].value) < (a[k - 1].lo, a[k - 1].value) { inOrder = false; break }
        if !inOrder { a.sort { ($0.lo, $0.value) < ($1.lo, $1.value) } }
        for k in a.indices.dropFirst() where a[k].lo < a[k - 1].hi { disjoint = false; break }
        spans = a
    }

    var isEmpty: Bool { spans.isEmpty }

    /// Every span, in `lo` order.
    var all: [(lo: UInt64, hi: UInt64, value: Int)] { spans }

    /// The span holding all of [x, x + n) (n ≥ 1; the first in `lo` order), or nil.
    func find(_ x: UInt64, _ n: UInt64) -> (lo: UInt64, hi: UInt64, value: Int)? {
        let (end, o) = x.addingReportingOverflow(n)
        guard !o, n >= 1 else { return nil }
        return spans.withUnsafeBufferPointer { s in
            // A few spans (most modules have a handful of exec sections): the scan is cheaper than
            // the search, and gives the same answer (disjoint or not: the first in `lo` order).
            if !disjoint || s.count <= 8 {
                for k in s.indices where x >= s[k].lo && end <= s[k].hi { return s[k] }
                return nil
            }
            // The last span starting at or below x is the only one that can hold x.
            var lo = 0, hi = s.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if s[mid].lo <= x { lo = mid + 1 } else { hi = mid }
            }
            guard lo > 0, end <= s[lo - 1].hi else { return nil }
            return s[lo - 1]
        }
    }
}

/// How many of the ascending `lows` are ≤ `x` (binary search): "the last interval starting at
/// or below x" (`Spans.find` searches its own pairs the same way).
private func countAtOrBelow(_ lows: [UInt64], _ x: UInt64) -> Int {
    var lo = 0, hi = lows.count
    while lo < hi {
        let mid = (lo + hi) / 2
        if lows[mid] <= x { lo = mid + 1 } else { hi = mid }
    }
    return lo
}

/// Which addresses a set of ranges covers, asked by binary search: the ranges sorted by lower
/// bound with the running maximum of their upper bounds (a range containing [lo, lo + n) exists
/// exactly when the largest upper bound among the ranges starting at or below `lo` reaches
/// lo + n). For tables whose sizes a module file chooses, where a scan per question is quadratic.
struct RangeCover {
    private var lows: [UInt64] = []
    private var highs: [UInt64] = []  // highs[i] = max upper bound of the first i + 1 ranges

    /// (The ranges taken over: sorted in place when the caller hands its last use, no copy — a
    /// cover of a section's relocation fields is 16 bytes a record before these two arrays.)
    init(_ ranges: consuming [Range<UInt64>]) {
        var sorted = ranges
        if sorted.contains(where: { $0.isEmpty }) { sorted.removeAll { $0.isEmpty } }
        sorted.sort { $0.lowerBound < $1.lowerBound }
        lows.reserveCapacity(sorted.count)
        highs.reserveCapacity(sorted.count)
        var m: UInt64 = 0
        for r in sorted {
            m = Swift.max(m, r.upperBound)
            lows.append(r.lowerBound)
            highs.append(m)
        }
    }

    /// The largest upper bound of the ranges starting at or below `x`.
    private func reach(_ x: UInt64) -> UInt64? {
        let k = countAtOrBelow(lows, x)
        return k == 0 ? nil : highs[k - 1]
    }

    /// Some range contains `x`.
    func contains(_ x: UInt64) -> Bool { reach(x).map { $0 > x } ?? false }

    /// Some range shares a byte with [lo, hi): one starting below `hi` ends above `lo` (the
    /// largest end among the ranges starting below `hi` is above `lo`). The test of the scan it
    /// replaces (`r.lowerBound < hi && r.upperBound > lo` for some non-empty range).
    func overlaps(_ lo: UInt64, _ hi: UInt64) -> Bool {
        guard hi > 0, let r = reach(hi - 1) else { return false }
        return r > lo
    }

    /// Some range contains all of [lo, lo + n) (false when that end wraps past 2^64).
    func covers(_ lo: UInt64, _ n: UInt64) -> Bool {
        let (end, o) = lo.addingReportingOverflow(n)
        guard !o, let r = reach(lo) else { return false }
        return r >= end
    }
}

/// The relocation sections that apply to each section, as indices in a session's `rela`, in that
/// order: one pass over `rela` instead of one per question. A module chooses both how many
/// relocation sections it has (tens of thousands of empty ones cost a header each) and how many
/// questions its tables ask (a site each), so a scan of `rela` per site was their product
/// (`relocationWrites`, `requireFentryCallsInInitText`, `refuseRspRetpolineInInitText`,
/// `TraceEventFields.index`). A list through one array per target section.
struct RelaByTarget {
    /// One array (one allocation): per relocation section `ri`, at `ri`, the next one with the
    /// same target + 1 (0: none); then per section `t`, at `relas + t`, the first relocation
    /// section applying to it + 1 (0: none).
    private var words: [Int]
    private let relas: Int

    init(_ rela: [ELFRelocationSection], sections: Int) {
        relas = rela.count
        var w = [Int](repeating: 0, count: rela.count + sections)
        // Backwards, each pushed in front: every list in `rela` order.
        for ri in rela.indices.reversed() {
            let t = rela[ri].targetSectionIndex
            guard t >= 0, t < sections else { continue }
            w[ri] = w[relas + t]
            w[relas + t] = ri + 1
        }
        words = w
    }

    /// The relocation sections applying to section `t`, in `rela` order (none for an index
    /// outside the sections).
    subscript(_ t: Int) -> Chain { Chain(words: words, k: t >= 0 && t < words.count - relas ? words[relas + t] : 0) }

    struct Chain: Sequence, IteratorProtocol {
        let words: [Int]
        var k: Int
        mutating func next() -> Int? {
            guard k > 0 else { return nil }
            defer { k = words[k - 1] }
            return k - 1
        }
    }
}
