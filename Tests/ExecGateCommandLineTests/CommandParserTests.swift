// SPDX-License-Identifier: Apache-2.0
//
// The command-line parser on its own (a small command tree shaped like execgate's), then the real
// binary: every command's --help, and usage errors with their exit status.

import ExecGateCommandLine
import ExecGateTestSupport
import XCTest

struct Shared: ParsableArguments {
    @Option(name: .customLong("trust"), help: ArgumentHelp("A certificate. Repeatable.", valueName: "CERT"))
    var trust: [String] = []
    @Flag(help: "Opt out.") var signatureOnly = false
    func validate() throws {
        if trust.contains("") { throw ValidationError("--trust: empty path") }
    }
}

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Boot it.", discussion: "Longer words.")
    @Argument(help: "The file.") var file: String
    @OptionGroup var shared: Shared
    @Option(help: ArgumentHelp("Guest memory.", valueName: "MiB")) var memory: Int = 64
    @Option(help: "CID.") var cid: UInt32 = 3
    @Option(help: "Seconds.") var timeout: Double = 30
    @Option(help: "Optional.") var policy: String?
    @Option(help: "Required.") var key: String
    @Option(name: [.short, .customLong("output")], help: "Out.") var output: String?
    @Option(help: "Mutations.") var mutate: Int?
    @Option(help: "Rounds.") var roundTrips = 200
    @Option(help: "Override.") var `init`: String?
    @Flag(help: "JSON.") var json = false
    func validate() throws {
        guard memory >= 32 else { throw ValidationError("--memory: at least 32 MiB") }
        if cid == 7 { throw ExitCode(5) }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop it.")
}

struct VM: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vm", abstract: "VMs.", subcommands: [Start.self, Stop.self])
}

struct Root: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tool", abstract: "A tool.", subcommands: [VM.self])
}

final class CommandParserTests: XCTestCase {
    func parse(_ args: [String]) -> ParseOutcome { CommandParser.parse(Root.self, arguments: args) }

    func start(_ args: [String], file: StaticString = #filePath, line: UInt = #line) -> Start? {
        switch parse(["vm", "start"] + args) {
        case .run(let c, let path):
            XCTAssertEqual(path, "tool vm start", file: file, line: line)
            return c as? Start
        case .help(let h): XCTFail("help: \(h)", file: file, line: line)
        case .refuse(let m, let code): XCTFail("refused (\(code)): \(m)", file: file, line: line)
        }
        return nil
    }

    /// The refusal's first line and status.
    func refusal(_ args: [String], file: StaticString = #filePath, line: UInt = #line) -> (String, Int32) {
        switch parse(args) {
        case .refuse(let m, let code): return (m.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? "", code.rawValue)
        case .run: XCTFail("accepted \(args)", file: file, line: line)
        case .help: XCTFail("help for \(args)", file: file, line: line)
        }
        return ("", -1)
    }

    func testValuesDefaultsAndSpellings() throws {
        let s = try XCTUnwrap(start(["f.ko", "--key", "k.pem"]))
        XCTAssertEqual(s.file, "f.ko")
        XCTAssertEqual(s.key, "k.pem")
        XCTAssertEqual(s.memory, 64)
        XCTAssertEqual(s.cid, 3)
        XCTAssertEqual(s.timeout, 30)
        XCTAssertNil(s.policy)
        XCTAssertNil(s.output)
        XCTAssertNil(s.mutate)
        XCTAssertEqual(s.roundTrips, 200)
        XCTAssertFalse(s.json)
        XCTAssertEqual(s.shared.trust, [])

        let t = try XCTUnwrap(start(["--memory=48", "--key", "k", "--trust", "a.pem", "--trust=b.pem", "-o", "out", "--cid", "9",
                                     "--timeout", "2.5", "--policy", "p", "--mutate", "-3", "--round-trips", "5", "--init", "/init",
                                     "--json", "--signature-only", "--", "--weird-file"]))
        XCTAssertEqual(t.memory, 48)
        XCTAssertEqual(t.shared.trust, ["a.pem", "b.pem"])
        XCTAssertTrue(t.shared.signatureOnly)
        XCTAssertEqual(t.output, "out")
        XCTAssertEqual(t.cid, 9)
        XCTAssertEqual(t.timeout, 2.5)
        XCTAssertEqual(t.policy, "p")
        XCTAssertEqual(t.mutate, -3)  // a value that starts with '-' but is no option of ours
        XCTAssertEqual(t.roundTrips, 5)
        XCTAssertEqual(t.`init`, "/init")
        XCTAssertTrue(t.json)
        XCTAssertEqual(t.file, "--weird-file")
        XCTAssertEqual(try XCTUnwrap(start(["f", "--key", "k", "--output=o2"])).output, "o2")
        XCTAssertEqual(try XCTUnwrap(start(["f", "--key", "k", "-o=o3"])).output, "o3")
    }

    func testBadInputIsRefusedWithAReason() {
        let cases: [([String], String)] = [
            (["vm", "start", "f", "--key", "k", "--memory", "x"], "tool vm start: --memory: expected an integer (MiB), got 'x'"),
            (["vm", "start", "f", "--key", "k", "--memory", ""], "tool vm start: --memory: an empty value names nothing (for a path, \".\" is the current directory)"),
            (["vm", "start", "", "--key", "k"], "tool vm start: <file>: an empty value names nothing (for a path, \".\" is the current directory)"),
            (["vm", "start", "f", "--key="], "tool vm start: --key: an empty value names nothing (for a path, \".\" is the current directory)"),
            (["vm", "start", "f", "--key", "k", "--cid", "-1"], "tool vm start: --cid: expected an integer 0…4294967295, got '-1'"),
            (["vm", "start", "f", "--key", "k", "--cid", "4294967296"], "tool vm start: --cid: expected an integer 0…4294967295, got '4294967296'"),
            (["vm", "start", "f", "--key", "k", "--timeout", "nan"], "tool vm start: --timeout: expected a number, got 'nan'"),
            (["vm", "start", "f", "--key", "k", "--memory", "99999999999999999999"], "tool vm start: --memory: expected an integer (MiB), got '99999999999999999999'"),
            (["vm", "start", "f", "--key", "k", "--frob"], "tool vm start: unknown option '--frob'"),
            (["vm", "start", "f", "--key", "k", "--frob=1"], "tool vm start: unknown option '--frob'"),
            (["vm", "start", "f", "--key", "k", "-x"], "tool vm start: unknown option '-x'"),
            (["vm", "start", "f", "--key", "k", "-oj"], "tool vm start: unknown option '-oj'"),
            (["vm", "start", "f", "--key"], "tool vm start: --key: missing value"),
            (["vm", "start", "f", "--key", "--json"], "tool vm start: --key: missing value"),
            (["vm", "start", "f", "--key", "-o"], "tool vm start: --key: missing value"),
            (["vm", "start", "f", "--key", "k", "--json=yes"], "tool vm start: --json takes no value"),
            (["vm", "start", "f", "--key", "k", "--policy", "a", "--policy", "b"], "tool vm start: --policy given more than once"),
            (["vm", "start", "f", "--key", "k", "--json", "--json"], "tool vm start: --json given more than once"),
            (["vm", "start", "f", "g", "--key", "k"], "tool vm start: unexpected argument 'g'"),
            (["vm", "start"], "tool vm start: missing <file>, --key <key>"),
            (["vm", "start", "f"], "tool vm start: missing --key <key>"),
            (["vm", "start", "f", "--key", "k", "--memory", "16"], "tool vm start: --memory: at least 32 MiB"),
            (["vm", "start", "f", "--key", "k", "--trust", ""], "tool vm start: --trust: an empty value names nothing (for a path, \".\" is the current directory)"),
            (["vm", "frob"], "tool vm: unknown subcommand 'frob' (expected one of: start, stop)"),
            (["vm", "--frob"], "tool vm: unknown option '--frob'"),
            (["vm"], "tool vm: a subcommand is required"),
            ([], "tool: a subcommand is required"),
            (["vm", "stop", "extra"], "tool vm stop: unexpected argument 'extra'"),
        ]
        for (args, expected) in cases {
            let (line, code) = refusal(args)
            XCTAssertEqual(line, expected, "\(args)")
            XCTAssertEqual(code, 2, "\(args)")
        }
        // An ExitCode thrown by validate() is the status, with nothing more printed.
        switch parse(["vm", "start", "f", "--key", "k", "--cid", "7"]) {
        case .refuse(let m, let code): XCTAssertEqual(code, ExitCode(5)); XCTAssertEqual(m, "")
        default: XCTFail("accepted --cid 7")
        }
    }

    func testHelpIsGeneratedFromDeclarations() {
        guard case .help(let h) = parse(["vm", "start", "--help"]) else { return XCTFail("no help") }
        for piece in ["OVERVIEW: Boot it.", "Longer words.", "USAGE: tool vm start <file> [--trust <CERT> ...]", "--key <key>",
                      "--memory <MiB>", "Guest memory. (default: 64)", "A certificate. Repeatable. (repeatable)", "-o, --output <output>",
                      "--round-trips <round-trips>", "--signature-only", "--init <init>", "ARGUMENTS:", "<file>", "The file.", "-h, --help"] {
            XCTAssertTrue(h.contains(piece), "help lacks '\(piece)':\n\(h)")
        }
        guard case .help(let same) = parse(["help", "vm", "start"]) else { return XCTFail("no help") }
        XCTAssertEqual(same, h)
        guard case .help(let h2) = parse(["vm", "start", "f", "--memory", "x", "-h"]) else { return XCTFail("no help") }
        XCTAssertEqual(h2, h)
        guard case .help(let group) = parse(["vm", "-h"]) else { return XCTFail("no help") }
        XCTAssertTrue(group.contains("SUBCOMMANDS:") && group.contains("start") && group.contains("Boot it."), group)
        // Its hint names the form that works (`tool help vm start`; `tool vm help start` is no command).
        XCTAssertTrue(group.contains("See 'tool help vm <subcommand>'"), group)
        guard case .help = parse(["help", "vm", "start"]) else { return XCTFail("the hinted form") }
        // After `--`, --help is a positional word.
        XCTAssertEqual(start(["--key", "k", "--", "--help"])?.file, "--help")
        // The refusal for a missing subcommand shows the group's help.
        if case .refuse(let m, _) = parse(["vm"]) { XCTAssertTrue(m.contains("SUBCOMMANDS:"), m) } else { XCTFail("accepted") }
    }

    /// Random argv words (options, values, junk) never crash the parser: each line is parsed,
    /// refused with a reason and status 2, or answered with help.
    func testSeededRandomCommandLines() {
        var rng = SeededRNG(seed: 0xC11)
        let words = ["vm", "start", "stop", "help", "--key", "k", "--memory", "48", "x", "-o", "--", "--json", "--trust", "=",
                     "--memory=", "-", "-h", "--cid", "-1", "f", "--policy", "--output=", "--round-trips", "\u{0}", "é", "--init"]
        var outcomes = (run: 0, help: 0, refused: 0)
        for _ in 0..<3000 {
            let n = Int(rng.next() % 8)
            let args = (0..<n).map { _ in words[Int(rng.next() % UInt64(words.count))] }
            switch parse(args) {
            case .run: outcomes.run += 1
            case .help(let h): XCTAssertTrue(h.contains("USAGE:")); outcomes.help += 1
            case .refuse(let m, let code):
                XCTAssertEqual(code.rawValue, 2, "\(args)")
                XCTAssertFalse(m.isEmpty, "\(args)")
                outcomes.refused += 1
            }
        }
        XCTAssertGreaterThan(outcomes.help, 0)
        XCTAssertGreaterThan(outcomes.refused, 0)
    }

    func testKebabCaseNames() throws {
        guard case .help(let h) = parse(["vm", "start", "-h"]) else { return XCTFail("no help") }
        XCTAssertTrue(h.contains("--round-trips"))
        XCTAssertTrue(h.contains("--signature-only"))
        XCTAssertFalse(h.contains("roundTrips"))
    }
}
