// SPDX-License-Identifier: Apache-2.0
//
// Host side of the in-guest self-test: boot the test image with execgate.mode=test, collect the
// EXECGATE-RESULT / EXECGATE-DONE lines from the serial console, parse them.

import _ExecGateInternals

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

/// One flat JSON object per console line, read by the toolkit's bounded `JSONReader` (nested
/// values are kept as `.other`). Input is the guest's console: untrusted, bounded (1 MiB a line,
/// depth 32), never traps; anything that is not one strict JSON object is nil.
public enum FlatJSON {
    public enum Value: Sendable, Equatable {
        case string(String), number(Double), bool(Bool), null, other
    }

    static let limits = JSONReader.Limits(maxBytes: 1 << 20, maxDepth: 32)

    public static func parseObject(_ s: String) -> [String: Value]? {
        guard let members = (try? JSONReader.parse(Array(s.utf8), limits: limits))?.objectMembers else { return nil }
        var out: [String: Value] = [:]
        for (k, v) in members {
            switch v {
            case .string(let t): out[k] = .string(t)
            case .int(let i): out[k] = .number(Double(i))
            case .uint(let u): out[k] = .number(Double(u))
            case .double(let d): out[k] = .number(d)
            case .bool(let b): out[k] = .bool(b)
            case .null: out[k] = .null
            case .array, .object: out[k] = .other
            }
        }
        return out
    }
}
