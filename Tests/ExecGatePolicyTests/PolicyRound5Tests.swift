// SPDX-License-Identifier: Apache-2.0
//
// Hostile input round 5 on the policy language (docs/policy.md, "The language"): "Control
// characters, CR and NUL are refused: a signature covers exact bytes, and two readers must never
// see different texts", and "A policy that says something ExecGate would ignore never loads".

import _ExecGateInternals
import ExecGateAdmin
import ExecGatePolicy
import ExecGateTestSupport
import XCTest

final class PolicyRound5Tests: XCTestCase {
    private func parse(_ lines: [String]) throws -> Policy {
        let text = (["execgate-policy 1", "id p", "version 3", "mode enforce", "trust kernel-builtin", "modules allow"] + lines)
            .joined(separator: "\n") + "\n"
        return try PolicyParser.parse(Array(text.utf8), file: "p.policy", builtinAnchors: try Fixtures.debianCertificates())
    }

    /// HOLE (round 5): only C0 controls and DEL were refused. A comment holding U+2028 LINE
    /// SEPARATOR, U+2029 PARAGRAPH SEPARATOR or U+0085 NEXT LINE (a C1 control) loaded, and so
    /// did the bidirectional overrides of "Trojan Source" (CVE-2021-42574): a Unicode-aware
    /// viewer (editors, a review page, JavaScript) shows `# reviewed⏎modules deny for guest
    /// quarantined-7` as a comment and a deny rule, the parser saw one comment: the reviewer read
    /// a rule ExecGate ignores. The audit trail already escapes the same characters
    /// (DocAttack3AuditTests); the policy text now refuses them, with line and column.
    func testLineSeparatorsC1ControlsAndBidiOverridesAreRefused() throws {
        for (scalar, name) in [("\u{2028}", "LINE SEPARATOR"), ("\u{2029}", "PARAGRAPH SEPARATOR"), ("\u{85}", "NEXT LINE"),
                               ("\u{9B}", "CSI"), ("\u{202E}", "RIGHT-TO-LEFT OVERRIDE"), ("\u{2066}", "LEFT-TO-RIGHT ISOLATE"),
                               ("\u{200F}", "RIGHT-TO-LEFT MARK"), ("\u{61C}", "ARABIC LETTER MARK")] {
            XCTAssertThrowsError(try parse(["# reviewed by ops" + scalar + "modules deny for guest quarantined-7"]), name) { e in
                XCTAssertTrue("\(e)".hasPrefix("p.policy:7:18: error:"), "\(name): \(e)")
                XCTAssertTrue("\(e)".contains("[policy.encoding]"), "\(name): \(e)")
            }
        }
    }

    /// Failed attack kept: other non-ASCII text in comments (a reviewer's name, a ZWJ emoji)
    /// still loads: it cannot change what any reader takes for a line or its order.
    func testOrdinaryUnicodeCommentsStillLoad() throws {
        XCTAssertNoThrow(try parse(["# Grüße, Zoë — 👩‍💻 ünïcödé", "text-patches allow  # ok ✓"]))
    }

    /// HOLE (round 5): docs/policy.md, "Audit": every verdict and policy change "is one JSON
    /// line". `serve --audit FILE` appends, and a previous writer killed mid-record (SIGKILL, power
    /// loss, a full disk) leaves a last line without its newline: the next service's first record
    /// (its boot `policy-activated`) was glued onto that fragment, so a JSON-lines reader lost it
    /// as one invalid line. Now an audit file that does not end in a newline is first given one:
    /// the fragment stays a line of its own (evidence of the crash), and every new record is a
    /// line.
    func testAnAuditFileLeftMidRecordDoesNotSwallowTheNextRecord() throws {
        let path = Fixtures.temporaryDirectory() + "/audit.jsonl"
        let fragment = "{\"time\":\"2026-12-03T07:00:00.000Z\",\"event\":\"verdict\",\"gue"
        try Fixtures.writeFile(path, Array(("{\"event\":\"old\"}\n" + fragment).utf8))
        let text = "execgate-policy 1\nid p\nversion 3\nmode enforce\ntrust kernel-builtin\nmodules allow\n"
        let policy = try PolicyParser.parse(Array(text.utf8), file: "p.policy")
        for round in 0..<2 {
            let log = try AuditLog.appending(to: path)
            log.recordPolicyEvent("policy-activated", policy: policy, previous: nil, detail: "boot \(round)")
            log.close()
        }
        let lines = String(decoding: try Fixtures.readFile(path), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        // old, fragment, two records, and the final newline's empty tail
        guard lines.count == 5 else { return XCTFail("\(lines.count) lines: \(lines)") }
        XCTAssertEqual(lines[1], Substring(fragment))
        for i in [0, 2, 3] {
            XCTAssertNoThrow(try JSONReader.parse(Array(lines[i].utf8)), "line \(i + 1): \(lines[i])")
        }
        XCTAssertTrue(lines[2].contains("boot 0") && lines[3].contains("boot 1"), "\(lines)")
        XCTAssertEqual(lines[4], "")
    }

    /// Failed attacks kept (round 5), each refused with its position or harmless by design: a
    /// byte-order mark before the header (header error at 1:1), an `include` line (unknown
    /// keyword), a version past 2⁶⁴−1, NUL and CR inside a comment, a line of 4097 bytes and a
    /// second header. Accepted as
    /// harmless: `version 007` is version 7 (one value, whatever a reader's habits), and a `pin`
    /// repeated in other letter case is one pin (hex digits name one digest; a set, nothing
    /// ignored).
    func testRound5FailedAttacksOnTheLanguage() throws {
        let head = "execgate-policy 1\nid p\nversion 3\nmode enforce\ntrust kernel-builtin\nmodules allow\n"
        func fails(_ text: [UInt8], _ position: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try PolicyParser.parse(text, file: "p.policy"), file: file, line: line) { e in
                XCTAssertTrue("\(e)".hasPrefix("p.policy:" + position + ": error:"), "\(e)", file: file, line: line)
            }
        }
        fails([0xEF, 0xBB, 0xBF] + Array(head.utf8), "1:1")
        fails(Array((head + "include other.policy\n").utf8), "7:1")
        fails(Array(head.replacingVersion("18446744073709551616").utf8), "3:9")
        fails(Array((head + "# a\u{0}b\n").utf8), "7:4")
        fails(Array((head + "# a\rb\n").utf8), "7:4")
        fails(Array((head + "#" + String(repeating: "x", count: 4096) + "\n").utf8), "7:4097")
        fails(Array((head + "execgate-policy 1\n").utf8), "7:1")
        let seven = try PolicyParser.parse(Array(head.replacingVersion("007").utf8), file: "p.policy")
        XCTAssertEqual(seven.version, 7)
        let pin = String(repeating: "ab", count: 32)
        // One pin spelled twice (hex case) is one line given twice: refused since round 13 (it was
        // loaded as one pin; docs/policy.md: a line given twice never loads).
        XCTAssertThrowsError(try PolicyParser.parse(Array((head + "pin sha256:\(pin)\npin sha256:\(pin.uppercased())\n").utf8), file: "p.policy")) { e in
            XCTAssertEqual((e as? PolicyParseError)?.code, .duplicate, "\(e)")
        }
    }
}

private extension String {
    func replacingVersion(_ v: String) -> String {
        split(separator: "\n", omittingEmptySubsequences: false).map { $0 == "version 3" ? "version " + v : String($0) }.joined(separator: "\n")
    }
}
