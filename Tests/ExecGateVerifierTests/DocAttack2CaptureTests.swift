// SPDX-License-Identifier: Apache-2.0
//
// Attack round 2 written from the docs alone: `execgate explain CAPTURE_DIR` and `execgate policy
// test … CAPTURE_DIR` on a hostile or broken capture directory (docs/capture.md: per module
// `<m>/<m>.ko`, `layout.json`, `core_text.bin`; docs/policy.md, dry run: "0 if everything would be
// allowed, 1 if anything would be denied, 2 on invalid input").

import ExecGateCapture
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttack2CaptureTests: XCTestCase {
    /// A copy of the fixture boot (and its parent's load order) in a fresh directory.
    private func copyOfTheFixtureBoot() throws -> String {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus"
        var template = Array("/tmp/docattack2-capture-XXXXXX".utf8CString)
        let dir = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        XCTAssertEqual(system("cp -r '\(corpus)/.' '\(dir)/'"), 0)
        addTeardownBlock { _ = system("rm -rf '\(dir)'") }
        return dir + "/nokaslr-a"
    }

    private func run(_ boot: String) throws -> (ExplainRunSummary, [String]) {
        var lines: [String] = []
        let s = ExplainRun.run(try CaptureBoot.load(boot), options: ExplainRunOptions(), out: { lines.append($0) }, progress: { _ in })
        return (s, lines)
    }

    /// HOLE (round docs2, misleading result): a module the load order names but whose directory
    /// the capture lacks was skipped silently (`availableModules` keeps only names with a
    /// `layout.json`): without `llc`, explain reported "explained 5 of 8 modules" (llc counted
    /// nowhere), and a load order naming only absent modules gave "explained 0 of 0 modules", exit
    /// 0, and `policy test` "0 allowed, 0 denied", exit 0 — a dry run passing on a capture that
    /// holds none of its modules. ExplainRun's own rule is that an unreadable module "gets its
    /// deny line and counts as denied"; an absent one now does too.
    func testAModuleTheLoadOrderNamesButTheCaptureLacksIsNotSkipped() throws {
        let boot = try copyOfTheFixtureBoot()
        XCTAssertEqual(system("rm -rf '\(boot)/llc'"), 0)
        let (s, lines) = try run(boot)
        XCTAssertEqual(s.modules, 9, "every module of the load order is judged")
        XCTAssertFalse(s.passed)
        XCTAssertTrue(lines.contains { $0.hasPrefix("deny  llc:") }, "\(lines)")

        // A load order naming only absent modules judges them, and fails.
        let parent = String(boot.dropLast("/nokaslr-a".count))
        XCTAssertEqual(system("printf 'nosuchmodule\\n' > '\(parent)/load-order.txt'"), 0)
        let (none, _) = try run(boot)
        XCTAssertEqual(none.modules, 1)
        XCTAssertFalse(none.passed, "a capture holding none of its modules passed")
        XCTAssertEqual(none.unreadable, 1, "an absent module is unreadable input (explain exits 2)")
        XCTAssertEqual(none.unexplainedBytes, 0, "no byte of an unread module was judged")
    }
}
