// SPDX-License-Identifier: Apache-2.0
//
// The one binary search over sorted collections (site tables, function entries, trusted targets,
// audit rings). Inlinable so each caller gets a specialised loop over its own element type: the
// explainer calls it once per patch site. Not API.

extension RandomAccessCollection {
    /// The first index whose element does not satisfy `belongsBefore`, for a collection
    /// partitioned by it (every element satisfying it comes before every element that does not);
    /// `endIndex` if all do. O(log n) predicate calls.
    @inlinable
    public func partitioningIndex(where belongsBefore: (Element) throws -> Bool) rethrows -> Index {
        var lo = startIndex
        var n = count
        while n > 0 {
            let half = n >> 1
            let mid = index(lo, offsetBy: half)
            if try belongsBefore(self[mid]) {
                lo = index(after: mid)
                n -= half + 1
            } else {
                n = half
            }
        }
        return lo
    }
}

extension RandomAccessCollection where Element: Comparable {
    /// The index of an element equal to `x` in a collection sorted ascending, or nil.
    /// (With repeated elements: the first of them.)
    @inlinable
    public func sortedIndex(of x: Element) -> Index? {
        let i = partitioningIndex { $0 < x }
        return i != endIndex && self[i] == x ? i : nil
    }

    /// Whether a collection sorted ascending holds `x`.
    @inlinable
    public func sortedContains(_ x: Element) -> Bool { sortedIndex(of: x) != nil }
}
