// SPDX-License-Identifier: Apache-2.0

extension StringProtocol {
    /// Without its leading spaces and tabs and its trailing ones (with `newlines`, trailing "\n"
    /// too). Found on the UTF-8 bytes, each end once: a run of N blanks costs O(N). (Trimming by
    /// `Character` with `last`/`dropLast()` in a loop cost O(N²): 64,894 trailing spaces in a
    /// register-guest `vulnerabilities` line held a judging thread for 8.9 s, round 14.)
    public func trimmingBlanks(newlines: Bool = false) -> String {
        let text = String(self)  // one copy: its UTF-8 view is bidirectional
        let u = text.utf8
        var start = u.startIndex, end = u.endIndex
        while start < end, u[start] == 0x20 || u[start] == 0x09 { start = u.index(after: start) }
        while start < end {
            let p = u.index(before: end)
            let b = u[p]
            guard b == 0x20 || b == 0x09 || (newlines && b == 0x0A) else { break }
            end = p
        }
        return String(decoding: u[start..<end], as: UTF8.self)
    }
}
