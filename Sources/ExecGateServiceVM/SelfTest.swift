// SPDX-License-Identifier: Apache-2.0
//
// Host side of the in-guest self-test: boot the test image with execgate.mode=test, collect the
// EXECGATE-RESULT / EXECGATE-DONE lines from the serial console, parse them.

public struct SelfTestRun: Sendable {
    public struct Result: Sendable {
        public var name: String
        public var passed: Bool
        public var detail: String
        public var fields: [String: FlatJSON.Value]
    }
    public var results: [Result] = []
    public var summary: [String: FlatJSON.Value]?
    public var rawLines: [String] = []
    public var hostMillis = 0
    public var console = ""

    public var passed: Bool {
        guard let s = summary, case .number(let f)? = s["failed"] else { return false }
        return f == 0 && !results.isEmpty && results.allSatisfy(\.passed)
    }

    public var summaryText: String {
        let p = results.filter(\.passed).count
        var s = "\(p)/\(results.count) passed; host boot→poweroff \(hostMillis) ms"
        if let sum = summary {
            for k in ["kernel_ms", "init_ms", "ready_ms", "tests_ms", "mem_total_kb"] {
                if case .number(let v)? = sum[k] { s += "; \(k)=\(v)" }
            }
        } else {
            s += "; no EXECGATE-DONE line"
        }
        return s
    }

    /// Parses the protocol lines out of a console log (kernel noise around them is ignored).
    public static func parse(console: String) -> SelfTestRun {
        var run = SelfTestRun()
        run.console = console
        for raw in console.consoleLines(omittingEmpty: true) {
            let line = String(raw).trimmingTrailingNewlines()
            if line.hasPrefix(ConsoleProtocol.result + " ") {
                run.rawLines.append(line)
                let obj = FlatJSON.parseObject(String(line.dropFirst(ConsoleProtocol.result.count + 1))) ?? [:]
                var name = "?", detail = "unparseable result line: \(line)", passed = false
                if case .string(let n)? = obj["name"] { name = n }
                if case .string(let d)? = obj["detail"] { detail = d }
                if case .bool(let b)? = obj["passed"] { passed = b }
                run.results.append(Result(name: name, passed: passed, detail: detail, fields: obj))
            } else if line.hasPrefix(ConsoleProtocol.done + " ") {
                run.rawLines.append(line)
                run.summary = FlatJSON.parseObject(String(line.dropFirst(ConsoleProtocol.done.count + 1)))
            } else if line.hasPrefix(ConsoleProtocol.ready) || line.hasPrefix(ConsoleProtocol.fatal) {
                run.rawLines.append(line)
            }
        }
        return run
    }
}

public enum SelfTest {
    public static func run(_ c: VMConfig, timeoutSeconds: Int) throws(ServiceVMError) -> SelfTestRun {
        var cfg = c
        cfg.mode = .test
        let (console, ms) = try Launcher.runToCompletion(cfg, timeoutSeconds: timeoutSeconds)
        var r = SelfTestRun.parse(console: console)
        r.hostMillis = ms
        if let fatal = r.rawLines.first(where: { $0.hasPrefix(ConsoleProtocol.fatal) }) {
            throw .guestDied("the test guest failed: \(fatal)", consoleTail: FS.tail(cfg.consoleLog))
        }
        if r.summary == nil {
            throw .guestDied("the test guest stopped without an \(ConsoleProtocol.done) line (\(r.results.count) result(s) seen)",
                             consoleTail: FS.tail(cfg.consoleLog))
        }
        return r
    }
}

/// A small JSON reader for one flat object per line (nested values are kept as `.other`).
/// Input is the guest's console: treated as untrusted, bounded, never traps.
public enum FlatJSON {
    public enum Value: Sendable, Equatable {
        case string(String), number(Double), bool(Bool), null, other
    }

    public static func parseObject(_ s: String) -> [String: Value]? {
        var p = Parser(Array(s.utf8))
        guard s.utf8.count <= 1 << 20, let obj = p.object(), p.atEndAfterSpace() else { return nil }
        return obj
    }

    struct Parser {
        let b: [UInt8]
        var i = 0
        var depth = 0
        init(_ b: [UInt8]) { self.b = b }

        mutating func space() { while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0D || b[i] == 0x0A { i += 1 } }
        mutating func atEndAfterSpace() -> Bool { space(); return i == b.count }
        mutating func eat(_ c: UInt8) -> Bool { space(); if i < b.count, b[i] == c { i += 1; return true }; return false }

        mutating func object() -> [String: Value]? {
            guard eat(UInt8(ascii: "{")) else { return nil }
            depth += 1
            defer { depth -= 1 }
            guard depth < 32 else { return nil }
            var out: [String: Value] = [:]
            if eat(UInt8(ascii: "}")) { return out }
            repeat {
                space()
                guard let k = string(), eat(UInt8(ascii: ":")), let v = value() else { return nil }
                out[k] = v
            } while eat(UInt8(ascii: ","))
            return eat(UInt8(ascii: "}")) ? out : nil
        }

        mutating func array() -> Bool {
            guard eat(UInt8(ascii: "[")) else { return false }
            depth += 1
            defer { depth -= 1 }
            guard depth < 32 else { return false }
            if eat(UInt8(ascii: "]")) { return true }
            repeat { guard value() != nil else { return false } } while eat(UInt8(ascii: ","))
            return eat(UInt8(ascii: "]"))
        }

        mutating func value() -> Value? {
            space()
            guard i < b.count else { return nil }
            switch b[i] {
            case UInt8(ascii: "\""): return string().map(Value.string)
            case UInt8(ascii: "{"): return object() != nil ? .other : nil
            case UInt8(ascii: "["): return array() ? .other : nil
            case UInt8(ascii: "t"): return literal("true") ? .bool(true) : nil
            case UInt8(ascii: "f"): return literal("false") ? .bool(false) : nil
            case UInt8(ascii: "n"): return literal("null") ? .null : nil
            default:
                let start = i
                while i < b.count, let c = Optional(b[i]), (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x2B || c == 0x2E || c == 0x65 || c == 0x45 { i += 1 }
                guard i > start, let d = Double(String(decoding: b[start..<i], as: UTF8.self)) else { return nil }
                return .number(d)
            }
        }

        mutating func literal(_ w: String) -> Bool {
            let u = Array(w.utf8)
            guard i + u.count <= b.count, Array(b[i..<i + u.count]) == u else { return false }
            i += u.count
            return true
        }

        mutating func string() -> String? {
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { return nil }
            i += 1
            var out: [UInt8] = []
            while i < b.count {
                let c = b[i]; i += 1
                if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
                if c == UInt8(ascii: "\\") {
                    guard i < b.count else { return nil }
                    let e = b[i]; i += 1
                    switch e {
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "u"):
                        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<i + 4], as: UTF8.self), radix: 16) else { return nil }
                        i += 4
                        out += Array(String(Unicode.Scalar(v).map(Character.init) ?? "\u{FFFD}").utf8)
                    default: out.append(e)
                    }
                } else {
                    out.append(c)
                }
            }
            return nil
        }
    }
}
