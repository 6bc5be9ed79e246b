// SPDX-License-Identifier: Apache-2.0
//
// `execgate explain` over a capture with one unreadable module: that module gets its deny line
// with the reason, the others are still explained, and the run ends with its summary (exit 1).

import ExecGateTestSupport
import Foundation
import XCTest

final class ExplainRunTests: XCTestCase {
    func testOneUnreadableModuleDoesNotAbortTheRun() throws {
        let src = try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/corpus/nokaslr-a"
        let tmp = Fixtures.temporaryDirectory() + "/explain-run"
        let fm = FileManager.default
        try? fm.removeItem(atPath: tmp)
        try fm.copyItem(atPath: src, toPath: tmp)
        // load-order.txt lives in the corpus root of the fixture; a boot folder may carry its own.
        try fm.copyItem(atPath: src + "/../load-order.txt", toPath: tmp + "/load-order.txt")
        defer { try? fm.removeItem(atPath: tmp) }
        // test_static_keys is loaded last (nothing depends on it): its claim becomes unreadable.
        try Data("{\"ko\": 1}".utf8).write(to: URL(fileURLWithPath: tmp + "/test_static_keys/layout.json"))

        let r = Fixtures.runExecgate(["explain", tmp])
        XCTAssertEqual(r.status, 2, "an unreadable module is invalid input (docs/capture.md): " + r.stdout + r.stderr)
        XCTAssertTrue(r.stderr.contains("could not be read"), r.stderr)
        let lines = r.stdout.split(separator: "\n")
        let deny = try XCTUnwrap(lines.first { $0.hasPrefix("deny  test_static_keys") }, r.stdout)
        XCTAssertTrue(deny.contains("layout.json"), String(deny))
        XCTAssertEqual(lines.filter { $0.hasPrefix("allow ") }.count, 8, r.stdout)
        XCTAssertEqual(lines.last, "explained 8 of 9 modules, 0 unexplained bytes, 1 unreadable")
    }

    /// A corpus root (or any folder) given as the capture said `…/kallsyms.txt: No such file`
    /// or the parent's missing load-order.txt; now it says what it is and names the boots.
    func testADirectoryThatIsNoBootIsNamedSo() throws {
        let root = try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/corpus"
        let r = Fixtures.runExecgate(["explain", root])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("not one boot's capture directory") && r.stderr.contains(root + "/nokaslr-a"), r.stderr)
        let other = Fixtures.runExecgate(["explain", Fixtures.temporaryDirectory()])
        XCTAssertEqual(other.status, 2, other.stderr)
        XCTAssertTrue(other.stderr.contains("no load-order.txt here or in its parent"), other.stderr)
    }
}
