// SPDX-License-Identifier: Apache-2.0
//
// Review round 6 of today's GuestSession changes: the commit indexes (`frameOwner`,
// `exportOwner`) and the live-state charge, attacked through the served paths (commit, retire,
// rollback-free reloads, reset). Failed attacks kept.

import ExecGateCapture
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class Review6Tests: XCTestCase {
    /// Failed attack: get a guest-physical frame granted twice through the frame index. Every
    /// frame of every live module is refused to a new claim (as the old walk over each live
    /// module's frames did: no frame granted twice); a retire gives exactly the retired module's
    /// frames back (`rebuildDerivedState`), and a module loaded again takes them once more, each
    /// refused to a third claim. Debug builds also check the indexes against the live set at
    /// every use (`checkIndexes`). The charge follows the live set exactly: the session's
    /// `liveBytes` is the sum of its live modules' `heldBytes` after every step.
    func testNoFrameIsGrantedTwiceThroughRetireAndReload() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let s = g.session
        func charged() -> Int { s.allowedModules.compactMap { s.liveModule($0)?.heldBytes }.reduce(0, +) }
        func assertEveryLiveFrameRefused(_ line: UInt = #line) {
            for name in s.allowedModules {
                guard let m = s.liveModule(name) else { continue }
                for f in m.frames + m.initFrames {
                    let r = s.preflight(name: "review6_probe", coreRange: nil, initRange: nil, frames: [], initFrames: [f])
                    XCTAssertEqual(r?.reason, .claimFramesInvalid, "frame 0x\(String(f, radix: 16)) of live '\(name)' was claimable", line: line)
                }
            }
        }
        assertEveryLiveFrameRefused()
        XCTAssertEqual(s.liveBytes, charged())
        XCTAssertEqual(g.verifier.guests.liveModuleBytes, charged())

        // Retire a module no live module depends on, and load it again, three times.
        let leaf = try XCTUnwrap(s.allowedModules.last { n in !s.allowedModules.contains { s.liveModule($0)?.dependsOn.contains(n) ?? false } })
        for _ in 0..<3 {
            let m = try XCTUnwrap(s.liveModule(leaf))
            let r = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: leaf, textBase: m.textRange.lowerBound)), requestDigest: [])
            guard case .retireModuleReply = r else { return XCTFail("retire \(leaf): \(r)") }
            for f in m.frames {
                XCTAssertNil(s.preflight(name: "review6_probe", coreRange: nil, initRange: nil, frames: [f], initFrames: []), "a retired module's frame stayed granted")
            }
            assertEveryLiveFrameRefused()
            XCTAssertEqual(s.liveBytes, charged())
            XCTAssertEqual(try g.load(leaf).decision, .allow)
            assertEveryLiveFrameRefused()
            XCTAssertEqual(s.liveBytes, charged())
        }
    }

    /// Failed attack: retire a module another live module links against, through the export
    /// index (`ownersLocked` reads `exportOwner`, not the live modules' export tables). Every
    /// module a live module depends on (resolve_symbol() → ref_module()) is refused
    /// `module-in-use` (delete_module(): -EWOULDBLOCK while module_refcount > 0), before and after
    /// its users were retired and loaded again.
    func testAnExporterInUseIsNeverRetired() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        let s = g.session
        let users = s.allowedModules.filter { !(s.liveModule($0)?.dependsOn.isEmpty ?? true) }
        XCTAssertFalse(users.isEmpty, "the fixture has no module that links against another")
        func assertExportersPinned(_ line: UInt = #line) {
            for u in s.allowedModules {
                for d in s.liveModule(u)?.dependsOn ?? [] {
                    guard let m = s.liveModule(d) else { XCTFail("'\(u)' depends on '\(d)', which is not live", line: line); continue }
                    let r = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m.identity, textBase: m.textRange.lowerBound)), requestDigest: [])
                    guard case .error(let e) = r else { XCTFail("exporter '\(d)' of '\(u)' retired: \(r)", line: line); continue }
                    XCTAssertEqual(e.code, .moduleInUse, e.message, line: line)
                }
            }
        }
        assertExportersPinned()
        // A user retired and loaded again records its dependencies again (from the index).
        for u in users.reversed() {
            guard let m = s.liveModule(u), !s.allowedModules.contains(where: { s.liveModule($0)?.dependsOn.contains(u) ?? false }) else { continue }
            let before = m.dependsOn
            let r = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: m.identity, textBase: m.textRange.lowerBound)), requestDigest: [])
            guard case .retireModuleReply = r else { return XCTFail("retire \(u): \(r)") }
            XCTAssertEqual(try g.load(u).decision, .allow)
            XCTAssertEqual(s.liveModule(u)?.dependsOn, before, "'\(u)' loaded again depends on other modules")
        }
        assertExportersPinned()
    }
}
