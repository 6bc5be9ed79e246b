// SPDX-License-Identifier: Apache-2.0
//
// The text log (`execgate serve`'s default, the service VM's console): swift-log's stream format,
// one event per line. Messages and metadata carry request words (a guest id, the guest's name for
// its module, a client name, refusal messages quoting them), and an operator reads the log line by
// line: a newline in those words started a forged line (`… decision=allow …`). Every control
// character (C0, DEL, C1) is written escaped, so one event is always exactly one line.

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
        case .string(let s): return .string(escaped(s))
        case .stringConvertible(let c): return .string(escaped(c.description))
        case .array(let a): return .array(a.map(escaped))
        case .dictionary(let d): return .dictionary(d.mapValues(escaped))
        }
    }

    /// `s` with every control character (C0, DEL, C1, and the Unicode line and paragraph
    /// separators) written as `\n`, `\r`, `\t`, `\xNN` or `\u2028`/`\u2029`: unchanged when clean.
    public static func escaped(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isControl) else { return s }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars {
            guard isControl(u) else { out.append(u); continue }
            let text: String
            switch u.value {
            case 0x0A: text = "\\n"
            case 0x0D: text = "\\r"
            case 0x09: text = "\\t"
            default: text = (u.value > 0xFF ? "\\u" : "\\x") + Hex.number(u.value, width: 2)
            }
            out.append(contentsOf: text.unicodeScalars)
        }
        return String(out)
    }

    private static func isControl(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || (0x7F...0x9F).contains(u.value) || u.value == 0x2028 || u.value == 0x2029
    }
}
