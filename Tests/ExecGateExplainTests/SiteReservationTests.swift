// SPDX-License-Identifier: Apache-2.0
//
// `reserveVariableSites()` sizes the run-time site list once from the module's tables, counting
// only the tables that make sites for this guest (BootPatching.swift). When it over-reserved
// (`__mcount_loc` counted for a guest whose ftrace has no call targets, `.smp_locks` for one not
// patched for a single CPU), the list ended with three times the capacity it needed on the
// shared corpus and 94 of its 103 modules' run-time site tables took a capacity-trimming copy of
// all their sites (`SiteMap`): ≈ 220 µs a corpus pass. Checked here on the fixture boot's real modules.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class SiteReservationTests: XCTestCase {
    func testReservationFitsTheSitesTheModulesMake() throws {
        let f = try FixtureReplay()
        XCTAssertTrue(f.boot.facts.ftraceCallTargets.isEmpty, "the fixture guest's ftrace has no call targets")
        var modulesWithSites = 0, mcountEntries = 0
        for name in f.boot.availableModules.sorted() {
            let e = try XCTUnwrap(f.modules[name])
            try e.module.ko.withUnsafeBytes { raw in
                let elf = try ELFFile(bytes: raw)
                mcountEntries += (elf.section(named: "__mcount_loc")?.size ?? 0) / 8
                let s = try Session(elf: elf, claim: e.module.claim, facts: f.boot.facts, resolver: e.before)
                try s.run()
                let n = s.variable.count
                if n > 0 { modulesWithSites += 1 }
                // The reservation's bound within SiteMap's no-copy test (capacity ≤ n + n / 8)
                // whatever the allocator rounds the capacity to.
                XCTAssertLessThanOrEqual(s.variableSiteBound(), n + n / 8, "\(name): \(n) sites")
                // And the table keeps the session's own storage: no trimming copy was made.
                let before = s.variable.withUnsafeBufferPointer { $0.baseAddress }
                let table = RuntimeSiteTable(session: s, claim: e.module.claim)
                XCTAssertEqual(table.count, n)
                if n > 0 { XCTAssertEqual(table.sites.sites.withUnsafeBufferPointer { $0.baseAddress }, before, "\(name): the sites were copied") }
            }
        }
        XCTAssertGreaterThanOrEqual(modulesWithSites, 3)
        XCTAssertGreaterThan(mcountEntries, 100, "the modules list ftrace sites that make no run-time site here")
    }
}
