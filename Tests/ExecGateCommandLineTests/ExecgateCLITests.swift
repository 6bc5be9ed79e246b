// SPDX-License-Identifier: Apache-2.0
//
// The real binary's command tree: every command answers --help from its declarations (exit 0),
// and bad usage exits 2 with the reason on stderr.

import ExecGateTestSupport
import XCTest

final class ExecgateCLITests: XCTestCase {
    /// Subcommand names listed under SUBCOMMANDS: in a group's help.
    func subcommands(_ help: String) -> [String] {
        guard let r = help.range(of: "SUBCOMMANDS:\n") else { return [] }
        return help[r.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).prefix(while: { $0.hasPrefix("  ") && !$0.hasPrefix("   ") })
            .compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    func testEveryCommandHasHelp() throws {
        var queue: [[String]] = [[]]
        var leaves: [String] = []
        while let path = queue.popLast() {
            let r = Fixtures.runExecgate(path + ["--help"])
            XCTAssertEqual(r.status, 0, "\(path): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("USAGE: execgate" + path.map { " " + $0 }.joined()), "\(path): \(r.stdout)")
            let subs = subcommands(r.stdout)
            if subs.isEmpty {
                XCTAssertTrue(r.stdout.contains("-h, --help"), "\(path)")
                leaves.append(path.joined(separator: " "))
            }
            queue += subs.map { path + [$0] }
        }
        // The command names scripts, docs, tests and the launcher use.
        for expected in ["serve", "request module", "request status", "request retire-module", "request init-freed", "verify module",
                         "bench", "sign module", "keys extract", "keys generate", "version", "explain", "image build", "vm start",
                         "vm stop", "vm status", "vm selftest", "init", "policy check", "policy sign", "policy push", "policy show",
                         "policy test", "policy audit", "capture", "vsock-backend", "vsock-bench"] {
            XCTAssertTrue(leaves.contains(expected), "no command '\(expected)' in \(leaves)")
        }
    }

    func testUsageErrorsExit2WithTheReason() {
        let cases: [([String], String)] = [
            (["vm", "start", "--memory", "x"], "execgate vm start: --memory: expected an integer (MiB), got 'x'"),
            (["vm", "start", "--memory", "8"], "execgate vm start: --memory: 32…65536 MiB"),
            (["vm", "start", "--cid", "-3"], "execgate vm start: --cid: expected an integer 0…4294967295, got '-3'"),
            (["verify", "module"], "execgate verify module: missing <file>"),
            (["verify", "module", "a.ko", "--claim"], "execgate verify module: --claim: missing value"),
            (["verify", "module", "a.ko", "--frobnicate"], "execgate verify module: unknown option '--frobnicate'"),
            (["verify", "module", "a.ko", "--deny-cert", "12"], "is not a SHA-256 digest"),
            (["request", "status", "--connect", "tcp:1"], "execgate request status:"),
            (["serve", "--listen", "unix:/tmp/x", "--log-format", "xml"], "--log-format must be text or json"),
            (["keys", "generate", "--out", "/nonexistent", "--bits", "1"], "--bits must be 2048, 3072 or 4096"), (["keys", "generate", "--out", "/nonexistent", "--bits", "8192"], "rsa_check_key_length"),
            (["sign", "module", "a.ko", "--key", "k", "--cert", "c", "--hash", "md5"], "--hash must be one of"),
            (["nosuch"], "unknown subcommand 'nosuch'"),
            (["vm"], "execgate vm: a subcommand is required"),
        ]
        for (args, expected) in cases {
            let r = Fixtures.runExecgate(args)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(expected), "\(args): expected '\(expected)' in \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
    }
}

/// /init (the same binary, statically linked) must not link Foundation: the dynamically linked
/// build shows what it links in DT_NEEDED (`make image` checks the static one's strings too).
/// Always the debug build `swift build --build-tests` made, also when EXECGATE_BIN names the
/// static binary (`make test-static`), which has no DT_NEEDED to read.
final class NoFoundationTests: XCTestCase {
    func testExecgateLinksNoFoundation() {
        let binary = Fixtures.packageRoot + "/.build/debug/execgate"
        let r = Fixtures.run("/usr/bin/readelf", ["-d", binary])
        XCTAssertEqual(r.status, 0, r.stderr)
        let needed = r.stdout.split(separator: "\n").filter { $0.contains("(NEEDED)") }
        XCTAssertTrue(needed.contains { $0.contains("libswiftCore") }, "no DT_NEEDED read from \(binary): \(r.stdout)")
        let foundation = needed.filter { $0.contains("Foundation") }
        XCTAssertEqual(foundation, [], "execgate links Foundation; find the import (Sources/, or a dependency) and remove it")
    }
}
