// SPDX-License-Identifier: Apache-2.0
//
// Hostile input round 6 on the policy language (docs/policy.md, "The language": "Anything
// ExecGate does not understand is an error … or a setting given twice"). Round 6 found no hole in
// the parser; its failed attacks are kept here. The holes of the round were in `policy check`'s
// report (CLIRound6Tests).

import _ExecGateInternals
import ExecGatePolicy
import ExecGateTestSupport
import XCTest

final class PolicyRound6Tests: XCTestCase {
    private let head = "execgate-policy 1\nid p\nversion 3\nmode enforce\ntrust kernel-builtin\nmodules allow\n"

    /// Failed attacks kept: repetitions that name one value never become a second rule or a
    /// setting read two ways: `trust kernel-builtin` twice, a class pattern listed twice, and
    /// `deny module-name a-b` beside `a_b` ('-' and '_' alike, as the kernel compares module
    /// names) are refused as given twice (round 13; they loaded as sets before). What is a second
    /// setting is still refused at its line: a second rule for the same kind and selector
    /// (spelled with a tab, or after a comment), and a class defined twice.
    func testRound6FailedAttacksOnTheLanguage() throws {
        // Since round 13 a repetition is refused (policy.duplicate), as docs/policy.md says of a
        // line given twice: it was loaded as one value, harmless but a line that said nothing.
        let builtin = try Fixtures.debianCertificates()
        for tail in ["trust kernel-builtin\n", "class c a a\nmodules deny for class c\n", "deny module-name a-b\ndeny module-name a_b\n"] {
            XCTAssertThrowsError(try PolicyParser.parse(Array((head + tail).utf8), file: "p.policy", builtinAnchors: builtin), tail) { e in
                XCTAssertEqual((e as? PolicyParseError)?.code, .duplicate, "\(tail): \(e)")
            }
        }
        func fails(_ tail: String, _ position: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try PolicyParser.parse(Array((head + tail).utf8), file: "p.policy"), file: file, line: line) { e in
                XCTAssertTrue("\(e)".hasPrefix("p.policy:" + position + ": error:"), "\(e)", file: file, line: line)
            }
        }
        fails("modules\tdeny\n", "7:1")
        fails("# a comment\nmodules allow # again\n", "8:1")
        fails("modules deny for guest a\nmodules allow for guest a\n", "8:1")
        fails("class c a*\nclass c b\n", "8:7")
        fails("modules deny for guest a b\n", "7:26")
    }
}
