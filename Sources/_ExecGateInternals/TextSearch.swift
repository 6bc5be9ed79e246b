// SPDX-License-Identifier: Apache-2.0
//
// Substring search over UTF-8 bytes. The standard library's `String.contains(_: String)` and
// `firstRange(of:)` live in _StringProcessing, the regex engine: calling either links that engine
// and its Unicode property tables (≈1.6 MB) into the service VM's static /init. ExecGate only ever
// looks for fixed ASCII markers ("Retpolines", "capture: ", a command-line marker), so a byte search
// answers the same question. It compares bytes, not Characters: no canonical equivalence, and a
// needle may match inside a grapheme cluster (never inside a scalar: a valid UTF-8 needle starts
// with a leading byte). Not API.

extension StringProtocol {
    /// The first range at which `needle`'s UTF-8 bytes occur in this string; nil when they do not,
    /// and for an empty needle.
    public func utf8Range<T: StringProtocol>(of needle: T) -> Range<Index>? {
        let hay = utf8, pat = Array(needle.utf8)
        guard let first = pat.first else { return nil }
        var i = hay.startIndex
        while i != hay.endIndex {
            if hay[i] == first {
                var h = hay.index(after: i), k = 1
                while k < pat.count, h != hay.endIndex, hay[h] == pat[k] { h = hay.index(after: h); k += 1 }
                if k == pat.count { return i..<h }
            }
            i = hay.index(after: i)
        }
        return nil
    }

    /// Whether `needle`'s UTF-8 bytes occur in this string (false for an empty needle).
    public func containsUTF8<T: StringProtocol>(_ needle: T) -> Bool { utf8Range(of: needle) != nil }
}

extension String {
    /// The longest prefix of whole Unicode scalars that takes at most `bytes` UTF-8 bytes (a text
    /// cut to a bound without splitting a character's encoding). `self` when it fits.
    public func prefix(utf8Bytes bytes: Int) -> String {
        guard utf8.count > bytes else { return self }
        var kept = String.UnicodeScalarView(), used = 0
        for u in unicodeScalars {
            let w = UTF8.width(u)
            guard used + w <= bytes else { break }
            kept.append(u)
            used += w
        }
        return String(kept)
    }
}
