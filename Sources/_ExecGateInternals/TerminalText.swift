// SPDX-License-Identifier: Apache-2.0
//
// Text another party chose (a server's reply, a guest's name for its module, a certificate's
// subject, a console a guest wrote), made safe to print for a human: every character a terminal
// acts on instead of showing is written escaped, so the text cannot move the cursor, clear the
// screen, set a window title, start a line of its own or reorder what is shown around it. The one
// rule for the service's text log (TextLogHandler) and the CLI's human output. Not API.

public enum TerminalText {
    /// `s` with every control character written as `\n`, `\r`, `\t`, `\xNN` or `\uNNNN`:
    /// unchanged when clean. For a word printed within a line.
    public static func escaped(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isControl) else { return s }
        return escaping(s, keepLineFeeds: false)
    }

    /// `s` escaped as `escaped` does, but for its line feeds: multi-line text (a console tail, a
    /// policy's source) keeps its lines, and each line is shown as it is, never acted on.
    public static func escapedLines(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { isControl($0) && $0 != "\n" }) else { return s }
        return escaping(s, keepLineFeeds: true)
    }

    private static func escaping(_ s: String, keepLineFeeds: Bool) -> String {
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars {
            guard isControl(u), !(keepLineFeeds && u == "\n") else { out.append(u); continue }
            let text: String
            switch u.value {
            case 0x0A: text = "\\n"
            case 0x0D: text = "\\r"
            case 0x09: text = "\\t"
            default: text = (u.value > 0xFF ? "\\u" : "\\x") + Hex.number(u.value, width: u.value > 0xFF ? 4 : 2)
            }
            out.append(contentsOf: text.unicodeScalars)
        }
        return String(out)
    }

    /// C0 controls (ESC starts every escape sequence, CR returns over the line, BS, BEL), DEL,
    /// the C1 controls (U+009B is CSI, U+009D OSC, U+0085 NEXT LINE), the Unicode line and
    /// paragraph separators (line breaks to Unicode-aware readers), and the bidirectional
    /// formatting characters (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069: they reorder
    /// what follows them on the line, the words around a name included).
    public static func isControl(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x00..<0x20, 0x7F...0x9F, 0x2028, 0x2029, 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }
}
