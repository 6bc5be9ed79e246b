// SPDX-License-Identifier: Apache-2.0
//
// A guest's live modules' address ranges as one sorted index, kept as modules come and go, so a
// request asks "whose range holds or meets this one?" in O(log live modules): the commit-time
// overlap check (`GuestSession.conflicts`: preflight and commit, every authorize-module) walked
// every live module's held ranges, making an array per module, and the patch owner look-up
// sorted every module's text at the first batch after each commit. A guest chooses how many
// modules it keeps live (up to its budget: ~190,000 of the smallest), so both were a request's
// cost times what the guest had loaded (a review, 2026-12-07).

import _ExecGateInternals

/// Half-open address ranges, each with the live module that holds it, sorted by start and
/// pairwise disjoint. Disjoint by construction: each module's ranges enter merged into their union
/// (``merged(_:)``), and a module enters only after ``firstOverlap(_:)`` found none of its ranges
/// meeting a span already held (`GuestSession.commitLocked`, under the session's lock), so the
/// spans of two modules never share an address. With disjoint spans sorted by start, the only span
/// that can hold an address, or the only one that need be asked whether it meets a range, is the
/// last one starting below it: one binary search. (Debug builds compare the index with the live
/// modules at every use: `GuestSession.checkIndexes`.)
struct LiveSpans: Equatable {
    private(set) var spans: [Span] = []

    struct Span: Equatable {
        var lo: UInt64
        var hi: UInt64
        var owner: String
    }

    init() {}

    /// Every owner's ranges at once, sorted once (what inserting each owner's gives, in any order:
    /// the debug check rebuilds the indexes from the live modules at every use).
    init(_ owners: [(ranges: [Range<UInt64>], owner: String)]) {
        spans = owners.flatMap { o in Self.merged(o.ranges).map { Span(lo: $0.lowerBound, hi: $0.upperBound, owner: o.owner) } }
        spans.sort { $0.lo < $1.lo }
    }

    /// The union of `ranges` as sorted, disjoint, non-empty ranges (touching ones joined).
    static func merged(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for r in ranges.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = out.last, r.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// The index of the first span starting at or above `a`.
    private func firstStarting(atOrAbove a: UInt64) -> Int { spans.partitioningIndex { $0.lo < a } }

    /// Adds `owner`'s ranges (their union). The caller has checked that none meets a span held.
    mutating func insert(_ ranges: [Range<UInt64>], owner: String) {
        for r in Self.merged(ranges) {
            spans.insert(Span(lo: r.lowerBound, hi: r.upperBound, owner: owner), at: firstStarting(atOrAbove: r.lowerBound))
        }
    }

    /// Removes what ``insert(_:owner:)`` added for the same `ranges` and `owner`.
    mutating func remove(_ ranges: [Range<UInt64>], owner: String) {
        for r in Self.merged(ranges) {
            let span = Span(lo: r.lowerBound, hi: r.upperBound, owner: owner)
            let i = firstStarting(atOrAbove: r.lowerBound)
            if i < spans.count, spans[i] == span {
                spans.remove(at: i)
            } else if let j = spans.firstIndex(of: span) {
                // (Present at `i` by construction. Were the spans ever not disjoint, it could sit
                // beside a span of the same start: found by a scan then, never left stale.)
                spans.remove(at: j)
            }
        }
    }

    /// The owner of the span holding `a`, if any.
    func owner(of a: UInt64) -> String? {
        let i = spans.partitioningIndex { $0.lo <= a }
        return i > 0 && a < spans[i - 1].hi ? spans[i - 1].owner : nil
    }

    /// The owner of a span sharing an address with `r`, if any (an empty `r` shares none).
    func firstOverlap(_ r: Range<UInt64>) -> String? {
        guard !r.isEmpty else { return nil }
        let i = firstStarting(atOrAbove: r.upperBound)
        return i > 0 && spans[i - 1].hi > r.lowerBound ? spans[i - 1].owner : nil
    }

    /// No two spans share an address, and they are sorted by start (for tests and debug checks).
    var isSortedAndDisjoint: Bool {
        zip(spans, spans.dropFirst()).allSatisfy { $0.hi <= $1.lo } && spans.allSatisfy { $0.lo < $0.hi }
    }
}
