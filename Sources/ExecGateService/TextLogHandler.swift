// SPDX-License-Identifier: Apache-2.0
//
// The text log (`execgate serve`'s default, the service VM's console): swift-log's stream format,
// one event per line. Messages and metadata carry request words (a guest id, the guest's name for
// its module, a client name, refusal messages quoting them), and an operator reads the log line by
// line: a newline in those words started a forged line (`… decision=allow …`). Every control
// character (C0, DEL, C1, line separators, bidirectional formatting) is written escaped
// (TerminalText), so one event is always exactly one line, shown as written; a metadata value with
// a space, `=` or `"` is quoted (`field`), so one value is always exactly one field.

import Logging
import _ExecGateInternals

public struct TextLogHandler: LogHandler {
    private var inner: StreamLogHandler

    public init(label: String) { inner = StreamLogHandler.standardError(label: label) }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }
    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        var e = event
        e.message = Logger.Message(stringLiteral: Self.escaped(event.message.description))
        e.metadata = event.metadata.map { $0.mapValues(Self.escaped) }
        inner.log(event: e)
    }

    static func escaped(_ v: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch v {
        case .string(let s): return .string(field(s))
        case .stringConvertible(let c): return .string(field(c.description))
        case .array(let a): return .array(a.map(escaped))
        case .dictionary(let d): return .dictionary(d.mapValues(escaped))
        }
    }

    /// `s` with every control character (C0, DEL, C1, the Unicode line and paragraph separators
    /// and the bidirectional formatting characters) escaped: `TerminalText.escaped`, the CLI's
    /// rule for the words of another party too. Unchanged when clean.
    public static func escaped(_ s: String) -> String { TerminalText.escaped(s) }

    /// A metadata value as exactly one `key=value` field: escaped, and quoted when it holds
    /// whitespace (any Unicode space, a no-break one included), `=` or `"`, or is empty, its own
    /// `"` written `\x22`. Without the quotes a request's words added fields to the event: a module
    /// named `crc8 decision=allow policy=p@2` logged `module=crc8 decision=allow policy=p@2` before
    /// the real `decision=deny` (a policy/admin review, 2026-12-05).
    public static func field(_ s: String) -> String {
        let e = TerminalText.escaped(s)
        guard e.isEmpty || e.unicodeScalars.contains(where: { $0 == "=" || $0 == "\"" || $0.properties.isWhitespace }) else { return e }
        var out = String.UnicodeScalarView()
        out.append("\"")
        for u in e.unicodeScalars {
            if u == "\"" { out.append(contentsOf: "\\x22".unicodeScalars) } else { out.append(u) }
        }
        out.append("\"")
        return String(out)
    }
}
