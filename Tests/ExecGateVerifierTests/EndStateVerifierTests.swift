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

final class EndStateVerifierTests: XCTestCase {
    static var bootDir: String { Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a" }

    private func session() throws -> (Verifier, CaptureBoot) {
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust(), endState: .required))
        let boot = try CaptureBoot.load(Self.bootDir)
        guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else {
            throw XCTSkip("registration failed")
        }
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
    func testPatchesOnlyAtKnownSitesWithLegalEncodings() throws {
        let v = Verifier(policy: Policy(id: "test", version: 1, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        _ = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: [])
        var checked = 0
        for name in boot.availableModules {
            let m = try boot.module(name)
            XCTAssertEqual(v.authorize(m.request(guestID: "g"), requestDigest: []).decision, .allow, name)
        }
        let session = try XCTUnwrap(v.guests.session("g"))
        for table in session.runtimeSites {
            let m = try boot.module(table.module)
            for address in table.addresses.prefix(20) {
                let offset = Int(address - m.claim.textBase)
                // The site's current bytes are a legal state (the module was explained with them).
                var current: [UInt8]? = nil
                for len in [2, 5] where offset + len <= m.claim.text.count {
                    let bytes = Array(m.claim.text[offset..<offset + len])
                    if case .allow = v.authorizePatch(AuthorizePatch(guestID: "g", address: address, bytes: bytes), session: session, requestDigest: []).decision {
                        current = bytes
                        break
                    }
                }
                let legal = try XCTUnwrap(current, "\(table.module) site 0x\(String(address, radix: 16)): current state refused")
                // int3 fill of the same length: never a legal encoding.
                let trap = v.authorizePatch(AuthorizePatch(guestID: "g", address: address, bytes: [UInt8](repeating: 0xcc, count: legal.count)), session: session, requestDigest: [])
                XCTAssertEqual(trap.decision, .deny)
                XCTAssertEqual(trap.reason, .patchNotAllowed)
                // One byte into the site: not a site.
                XCTAssertEqual(v.authorizePatch(AuthorizePatch(guestID: "g", address: address + 1, bytes: legal), session: session, requestDigest: []).decision, .deny)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 10, "fixture modules have jump-label, static-call and ftrace sites")
        // Text nobody verified.
        let stray = v.respond(to: .authorizePatch(AuthorizePatch(guestID: "g", address: 0xffff_ffff_8100_0000, bytes: [0x66, 0x90])), requestDigest: [])
        guard case .verdict(let sv) = stray else { return XCTFail("\(stray)") }
        XCTAssertEqual(sv.reason, .patchNotAllowed)
        // Policy: no patches at all.
        try v.replacePolicy(Policy(id: "nopatch", version: 2, trust: try Fixtures.debianTrust(), textPatches: .deny))
        let addr = try XCTUnwrap(session.runtimeSites.first?.addresses.first)
        XCTAssertEqual(v.authorizePatch(AuthorizePatch(guestID: "g", address: addr, bytes: [0x66, 0x90]), session: session, requestDigest: []).reason, .kindDenied)
    }
}
