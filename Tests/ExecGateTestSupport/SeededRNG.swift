// SPDX-License-Identifier: Apache-2.0
//
// SplitMix64: the one reproducible generator for fuzz-style tests. A failing case prints its seed
// and iteration and replays exactly (SystemRandomNumberGenerator would not).

public struct SeededRNG: RandomNumberGenerator {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in 0..<n (0 when n ≤ 0): the modulo of `next()` (a bias of at most n / 2^64).
    public mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}
