// SPDX-License-Identifier: Apache-2.0
//
// `request module --claim BOOT/M` reads one module's claim without building the boot's facts
// (CaptureBoot.module(_:inBoot:)): it must send exactly the request `explain` and `policy test`
// build from the whole boot (CaptureBoot.load(_:).module(_:)).

import ExecGateCapture
import ExecGateTestSupport
import ExecGateWire
import XCTest

final class CapturedClaimTests: XCTestCase {
    /// Every module of `bootDir` (at most `limit` of those with a per-cpu base, and then only
    /// those: a debug build scans a Debian boot's 10 MB kallsyms.txt in about a second a module).
    func assertSameRequests(_ bootDir: String, perCPUOnly limit: Int? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        let boot = try CaptureBoot.load(bootDir)
        XCTAssertFalse(boot.availableModules.isEmpty, file: file, line: line)
        var withPerCPU = 0
        for m in boot.availableModules {
            let whole = try boot.module(m).request(guestID: "g")
            if let limit { guard whole.perCPUBase != nil, withPerCPU < limit else { continue } }
            let alone = try CaptureBoot.module(m, inBoot: bootDir).request(guestID: "g")
            XCTAssertEqual(alone, whole, m, file: file, line: line)
            if whole.perCPUBase != nil { withPerCPU += 1 }
        }
        return withPerCPU
    }

    func testOneModulesClaimIsTheWholeBootsClaim() throws {
        _ = try assertSameRequests(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a")
        // The per-cpu base (no fixture module has per-cpu data): the shared corpus of the
        // development machine, when it is there.
        for b in ["nokaslr-a", "kaslr"] where FileManager.default.fileExists(atPath: Fixtures.packageRoot + "/../shared/corpus/" + b) {
            XCTAssertEqual(try assertSameRequests(Fixtures.packageRoot + "/../shared/corpus/" + b, perCPUOnly: 3), 3, b)
        }
    }
}
