// SPDX-License-Identifier: Apache-2.0
import _ExecGateInternals
import ExecGateCommandLine
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Standard error output for one-line reasons and progress.
enum Console {
    /// `line` on stderr, its control characters but line feeds escaped (TerminalText.escapedLines):
    /// a reason quotes words of another party (a server's error message, a file's name for a
    /// thing, a guest's console), which must not act on the terminal. Words that must not start a
    /// line of their own either are escaped where they are quoted (`TerminalText.escaped`).
    static func error(_ line: String) {
        var s = TerminalText.escapedLines(line)
        if !s.hasSuffix("\n") { s += "\n" }
        fputs(s, stderr)
    }
}

/// The refusal of an output option given as "": an empty path names no file (and "" + "/key.pem"
/// is a file in the root directory).
func emptyOutputPath(_ option: String) -> String {
    option == "--out" ? "--out: an empty path names no directory (\".\" is the current one)" : "\(option): an empty path names no file"
}

/// The refusal of a path option given as "": an empty path names no file or directory (an input
/// directory joined with "/boot" is the root directory's /boot; taken as a path, the current
/// directory). Every path option refuses it as a usage error naming the option, as the output
/// options do (`emptyOutputPath`).
func refuseEmptyPaths(_ options: [(name: String, value: String?)]) throws {
    for (name, value) in options where value == "" {
        throw ValidationError("\(name): an empty path names no file or directory (\".\" is the current one)")
    }
}
