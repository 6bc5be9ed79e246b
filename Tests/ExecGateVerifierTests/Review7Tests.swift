// SPDX-License-Identifier: Apache-2.0
//
// Review round 7 (white-box review of the day's changes): attacks on the capture reader's
// cpus.txt parsing and on the registration facts' new checks.

import ExecGateCapture
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class Review7Tests: XCTestCase {
    /// A copy of the fixture boot (and its parent's load order) in a fresh directory.
    private func copyOfTheFixtureBoot() throws -> String {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus"
        var template = Array("/tmp/review7-capture-XXXXXX".utf8CString)
        let dir = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        XCTAssertEqual(system("cp -r '\(corpus)/.' '\(dir)/'"), 0)
        addTeardownBlock { _ = system("rm -rf '\(dir)'") }
        return dir + "/nokaslr-a"
    }

    /// HOLE (review 7): docs/capture.md: "`cpus.txt` must be a cpulist the kernel prints";
    /// the kernel prints a cpumask as ascending, disjoint runs (cpumap_print_to_pagebuf() →
    /// bitmap_print_list_to_buf(): one `a` or `a-b` per run of set bits, lowest first), so no CPU
    /// appears twice. countCPUs() summed the parts as written: `0,0,0,0` was 4 present CPUs of a
    /// one-CPU list, `0-3,0-3` 8, `3,0` and `0-3,2` read as well — lists no kernel prints, taken
    /// as a guest the capture never described (its SMP/uniprocessor handling included).
    func testACPUListWithARepeatedCPUIsRefused() throws {
        let boot = try copyOfTheFixtureBoot()
        for list in ["0,0,0,0", "0-3,0-3", "3,0", "0-3,2", "0-1,1-2", "2-3,0-1"] {
            try Fixtures.writeFile(boot + "/cpus.txt", Array("present \(list)\npossible \(list)\n".utf8))
            XCTAssertThrowsError(try CaptureBoot.load(boot), list) { e in
                XCTAssertTrue("\(e)".contains("cpus.txt"), "\(list): \(e)")
            }
        }
        // The lists a kernel prints still read, counted by their CPUs.
        for (list, n) in [("0", 1), ("0-3", 4), ("0-1,4,6-7", 5), ("0,2", 2), ("0-8191", 8192)] {
            try Fixtures.writeFile(boot + "/cpus.txt", Array("present \(list)\npossible \(list)\n".utf8))
            let b = try CaptureBoot.load(boot)
            XCTAssertEqual(b.facts.possibleCPUs, n, list)
        }
    }
}
