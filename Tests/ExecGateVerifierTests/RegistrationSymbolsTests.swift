// SPDX-License-Identifier: Apache-2.0
//
// One list of the symbols a registration carries by name (ExecGateWire RegistrationSymbols): the
// verifier's plausibility checks and facts builder read names only from it, and the capture's
// registration sends every one of them whatever its type letter. Two lists drifted apart before:
// the capture did not send the rodata/data-gap and `.data..ro_after_init` bounds the checks need
// (RegistrationBoundsTests). These tests fail when a name the checks read is not sent.

import ExecGateCapture
import ExecGateExplain
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class RegistrationSymbolsTests: XCTestCase {
    /// Every name the facts builder and the plausibility checks look up is in the one list.
    func testTheCheckersNamesAreTheList() {
        let all = Set(RegistrationSymbols.all)
        for n in GuestFactsBuilder.helperNames { XCTAssertTrue(all.contains(n), "GuestFactsBuilder.helperNames: \(n)") }
        for n in FactsPlausibility.codeHelpers + FactsPlausibility.returnThunks { XCTAssertTrue(all.contains(n), "FactsPlausibility: \(n)") }
        for (lo, hi) in RegistrationSymbols.requiredBoundPairs { XCTAssertTrue(all.contains(lo) && all.contains(hi), "\(lo)/\(hi)") }
        // GuestFacts.coreInitRanges (ExecGateExplain, which sees no wire types) reads these by name.
        for n in ["_sinittext", "_einittext", "__init_begin", "__init_end"] { XCTAssertTrue(all.contains(n), n) }
    }

    /// No by-name lookup in the verifier's checks bypasses the list with a literal.
    func testNoLiteralLookupOutsideTheList() throws {
        let all = Set(RegistrationSymbols.all)
        for f in ["FactsPlausibility.swift", "GuestFactsBuilder.swift", "KernelFactsStore.swift", "GuestRegistry.swift"] {
            let path = Fixtures.packageRoot + "/Sources/ExecGateVerifier/" + f
            let text = String(decoding: try Fixtures.readFile(path), as: UTF8.self)
            for part in text.components(separatedBy: "named[\"").dropFirst() {
                guard let end = part.firstIndex(of: "\"") else { continue }
                let name = String(part[..<end])
                XCTAssertTrue(all.contains(name), "\(f) looks up '\(name)' by a literal that is not in RegistrationSymbols.all")
            }
        }
    }

    /// The capture's registration sends every listed name, also when the record is data (type
    /// `d`, not exported): the committed capture with each listed name turned into a data record
    /// (added when absent) registers with each exactly once.
    func testTheCaptureSendsEveryListedName() throws {
        let src = EndStateVerifierTests.bootDir
        let dir = Fixtures.temporaryDirectory()
        for f in ["boot_cpu_data.bin", "cmdline.txt", "cpus.txt", "pv_ops.bin", "slide.txt", "uname.txt", "vulnerabilities.txt"] {
            try Fixtures.writeFile(dir + "/" + f, try Fixtures.readFile(src + "/" + f))
        }
        let all = Set(RegistrationSymbols.all)
        var seen = Set<String>()
        var lines: [String] = []
        for l in String(decoding: try Fixtures.readFile(src + "/kallsyms.txt"), as: UTF8.self).split(separator: "\n") {
            var f = l.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            if f.count == 3, all.contains(f[2]), seen.insert(f[2]).inserted { f[1] = "d" }
            lines.append(f.joined(separator: " "))
        }
        for n in RegistrationSymbols.all where !seen.contains(n) { lines.append("ffffffff82000040 d \(n)") }
        try Fixtures.writeFile(dir + "/kallsyms.txt", Array((lines.joined(separator: "\n") + "\n").utf8))
        try Fixtures.writeFile(dir + "/load-order.txt", [])
        let r = try CaptureBoot.load(dir).registration(guestID: "g")
        for n in RegistrationSymbols.all {
            XCTAssertEqual(r.symbols.filter { $0.name == n }.count, 1, "\(n) sent once by the capture's registration")
        }
    }
}
