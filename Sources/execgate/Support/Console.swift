// SPDX-License-Identifier: Apache-2.0
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Standard error output for one-line reasons and progress.
enum Console {
    static func error(_ line: String) {
        var s = line
        if !s.hasSuffix("\n") { s += "\n" }
        fputs(s, stderr)
    }
}

/// The refusal of an output option given as "": an empty path names no file (and "" + "/key.pem"
/// is a file in the root directory).
func emptyOutputPath(_ option: String) -> String {
    option == "--out" ? "--out: an empty path names no directory (\".\" is the current one)" : "\(option): an empty path names no file"
}
