// SPDX-License-Identifier: Apache-2.0
//
// A small JSON value and writer for `--json` output, audit records and structured logs. Not API.
// Written without Foundation: the binary, which is also the service VM's /init, links no Foundation
// at all (JSONReader.swift reads JSON back; `make image` and a test refuse a binary that names
// Foundation; see ServiceVM/README.md). Output is one line, keys in the order given, so records are
// stable and diffable.

public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    /// A string, or null when absent.
    public static func optionalString(_ s: String?) -> JSON { s.map { .string($0) } ?? .null }

    public static func == (a: JSON, b: JSON) -> Bool { a.serialized() == b.serialized() }

    public func serialized() -> String {
        var out = ""
        write(into: &out)
        return out
    }

    public func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .uint(let u): out += String(u)
        case .double(let d): out += d.isFinite ? String(d) : "null"
        case .string(let s): JSON.escape(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() { if i > 0 { out += "," }; v.write(into: &out) }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out += "," }
                JSON.escape(k, into: &out)
                out += ":"
                v.write(into: &out)
            }
            out += "}"
        }
    }

    public static func escape(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            // C0 controls (JSON requires it), and DEL, the C1 controls (U+0085 NEXT LINE among
            // them) and U+2028/U+2029: line terminators to Unicode-aware readers (JavaScript,
            // Python's splitlines()). Raw, a request's words holding one would split a record of a
            // JSON-lines stream (audit records, `--json` output, JSON logs) in two, the second
            // line the request's own text. Escaped, every JSON reader reads the same string.
            // The bidirectional formatting characters too (TerminalText.isControl: all of these):
            // raw, a peer's words reordered the rest of the line wherever JSON meets a terminal.
            case _ where TerminalText.isControl(u):
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}
