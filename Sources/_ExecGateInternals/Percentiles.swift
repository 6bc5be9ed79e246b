// SPDX-License-Identifier: Apache-2.0
//
// The one percentile rule for figures (benchmarks, self-test latencies, soak reports). Not API.

public enum Percentiles {
    /// The `p`-th percentile (0...100) of `samples` by the nearest-rank method on a sorted copy;
    /// 0 for no samples. Nearest rank: the smallest value such that at least p% of samples are ≤ it.
    public static func of(_ samples: [Double], _ p: Double) -> Double {
        guard !samples.isEmpty else { return 0 }
        return ofSorted(samples.sorted(), p)
    }

    /// As `of(_:_:)`, for samples already sorted ascending.
    public static func ofSorted(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let clamped = Swift.min(100, Swift.max(0, p))
        let rank = Int((clamped / 100 * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(sorted.count - 1, Swift.max(0, rank - 1))]
    }

    /// p50, p99 and mean of `samples` (all 0 for none).
    public static func summary(_ samples: [Double]) -> (p50: Double, p99: Double, mean: Double) {
        guard !samples.isEmpty else { return (0, 0, 0) }
        let s = samples.sorted()
        return (ofSorted(s, 50), ofSorted(s, 99), s.reduce(0, +) / Double(s.count))
    }
}
