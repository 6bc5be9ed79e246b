// SPDX-License-Identifier: Apache-2.0
//
// End-state verification through the verifier core, exactly as the service runs it: a captured
// boot becomes register-guest + authorize-module messages; each module must be allowed with the
// `end-state` check, its exports must feed the next modules, and any changed byte must be denied
// naming the byte. Input: the real end states in Tests/ExecGateExplainTests/Fixtures (provenance
// in its README).

import ExecGateCapture
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

/// The committed fixture's registration was refused: every test that needs it fails with the reply.
struct RegistrationRefused: Error, CustomStringConvertible {
    let reply: String
    var description: String { "the fixture registration was refused: \(reply)" }
}

final class EndStateVerifierTests: XCTestCase {
    static var bootDir: String { Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a" }

    private func session() throws -> (Verifier, CaptureBoot) {
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust(), endState: .required))
        let boot = try CaptureBoot.load(Self.bootDir)
        let reply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: [])
        // A refused registration is a failure of what these tests rely on, never a skip.
        guard case .registerGuestReply = reply else { throw RegistrationRefused(reply: "\(reply)") }
        return (v, boot)
    }

    func testEveryFixtureModuleIsExplainedInLoadOrder() throws {
        let (v, boot) = try session()
        XCTAssertGreaterThanOrEqual(boot.availableModules.count, 5)
        for name in boot.availableModules {
            let verdict = v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: [])
            XCTAssertEqual(verdict.decision, .allow, "\(name): \(verdict.message)")
            XCTAssertTrue(verdict.checks.contains("end-state"), name)
            XCTAssertEqual(verdict.policyVersion, 7)
        }
        XCTAssertEqual(v.guests.session("g")?.allowedModules.count, boot.availableModules.count)
    }

    func testDependentModuleNeedsItsDependencyVerifiedFirst() throws {
        // stp imports llc's exports: without llc allowed in this guest, its relocations have no
        // trusted target and the module must be denied.
        let (v, boot) = try session()
        guard boot.availableModules.contains("stp"), boot.availableModules.contains("llc") else { throw XCTSkip("fixture lacks stp/llc") }
        let stpFirst = v.authorize(try boot.module("stp").request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(stpFirst.decision, .deny, stpFirst.message)
        XCTAssertEqual(stpFirst.reason, .claimBytesUnexplained)
        XCTAssertEqual(v.authorize(try boot.module("llc").request(guestID: "g"), requestDigest: []).decision, .allow)
        XCTAssertEqual(v.authorize(try boot.module("stp").request(guestID: "g"), requestDigest: []).decision, .allow)
    }

    func testFlippedExecutableByteIsDeniedNamingIt() throws {
        let (v, boot) = try session()
        let name = boot.availableModules.first { !(["llc", "stp", "garp", "mrp", "8021q"].contains($0)) } ?? boot.availableModules[0]
        var request = try boot.module(name).request(guestID: "g")
        var text = request.text!
        let offset = min(0x40, text.readableBytes - 1)
        let old = text.getInteger(at: text.readerIndex + offset, as: UInt8.self)!
        text.setInteger(old ^ 0x20, at: text.readerIndex + offset)
        request.text = text
        let verdict = v.authorize(request, requestDigest: [])
        XCTAssertEqual(verdict.decision, .deny)
        XCTAssertEqual(verdict.reason, .claimBytesUnexplained)
        XCTAssertTrue(verdict.message.contains("expected"), verdict.message)
        XCTAssertTrue(verdict.message.contains("found"), verdict.message)
    }

    func testEndStateRequiredDeniesRegionlessClaim() throws {
        let (v, boot) = try session()
        var request = try boot.module(boot.availableModules[0]).request(guestID: "g")
        request.text = nil
        request.textBase = nil
        XCTAssertEqual(v.authorize(request, requestDigest: []).reason, .endStateUnavailable)
    }
}

final class RuntimePatchVerifierTests: XCTestCase {
    /// Every live site: its current state is a legal patch, as a whole-key batch for keyed sites
    /// (jump labels, static calls) and alone for the others (ftrace); int3 fill and an address one
    /// byte into the site are never legal.
    func testPatchesOnlyAtKnownSitesWithLegalEncodings() throws {
        let g = try FixtureGuest()
        try g.loadAll()
        var checked = 0, keyed = 0
        let byKey = g.sitesByKey()
        for table in g.session.runtimeSites {
            for site in table.siteList.prefix(20) {
                let current = try g.currentBytes(site.address, site.length)
                let batch: [PatchEntry]
                if let k = site.key {
                    batch = try byKey[k, default: []].map { PatchEntry(address: $0.site.address, bytes: try g.currentBytes($0.site.address, $0.site.length)) }
                    keyed += 1
                } else {
                    batch = [PatchEntry(address: site.address, bytes: current)]
                }
                let same = g.patch(batch)
                XCTAssertEqual(same.decision, .allow, "\(table.module) site 0x\(String(site.address, radix: 16)): current state refused: \(same.message)")
                let trap = g.patch(batch.map { $0.address == site.address ? PatchEntry(address: site.address, bytes: [UInt8](repeating: 0xcc, count: site.length)) : $0 })
                XCTAssertEqual(trap.decision, .deny)
                XCTAssertEqual(trap.reason, .patchNotAllowed)
                XCTAssertEqual(g.patch([PatchEntry(address: site.address + 1, bytes: current)]).decision, .deny)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 10, "fixture modules have jump-label, static-call and ftrace sites")
        XCTAssertGreaterThan(keyed, 0)
        // Text nobody verified.
        let stray = g.verifier.respond(to: .authorizePatch(AuthorizePatch(guestID: "g", address: 0xffff_ffff_8100_0000, bytes: [0x66, 0x90])), requestDigest: [])
        guard case .verdict(let sv) = stray else { return XCTFail("\(stray)") }
        XCTAssertEqual(sv.reason, .patchNotAllowed)
        // Policy: no patches at all.
        try g.verifier.replacePolicy(Policy(id: "nopatch", version: 8, trust: try Fixtures.debianTrust(), textPatches: .deny))
        let addr = try XCTUnwrap(g.session.runtimeSites.first?.addresses.first)
        XCTAssertEqual(g.patch([PatchEntry(address: addr, bytes: [0x66, 0x90])]).reason, .kindDenied)
    }
}
