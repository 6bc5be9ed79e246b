// SPDX-License-Identifier: Apache-2.0
//
// `execgate explain CAPTURE_DIR` / `policy test`: "load-order.txt is read from it or its parent"
// (ExplainCommand's help, docs/capture.md). A tester names the boot relative to where they stand.

import ExecGateCapture
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttackCaptureTests: XCTestCase {
    /// HOLE (round docattack): a capture directory given as one relative component (`nokaslr-a`,
    /// run from the corpus) had the parent "" and its load order was read from `/load-order.txt`,
    /// the filesystem root, not `./load-order.txt`: the documented parent was never looked at.
    func testRelativeBootDirectoryReadsItsParentsLoadOrder() throws {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus"
        let here = getcwd(nil, 0).map { p -> String in defer { free(p) }; return String(cString: p) } ?? "/"
        XCTAssertEqual(chdir(corpus), 0)
        defer { _ = chdir(here) }
        let relative = try CaptureBoot.load("nokaslr-a")
        let absolute = try CaptureBoot.load(corpus + "/nokaslr-a")
        XCTAssertEqual(relative.loadOrder, absolute.loadOrder)
        XCTAssertFalse(relative.loadOrder.isEmpty)
    }
}
