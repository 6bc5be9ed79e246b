// SPDX-License-Identifier: Apache-2.0
//
// Registration by digest through a real Unix-socket server and ExecGateClient's digest-first
// registration: the second guest of a build attaches by its digest (a body without the records);
// once the build's last guest has left, the digest is refused `unknown-build` and the client sends
// the full registration, which registers. Verdicts for the attached guest equal the full
// registrant's. Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/
// nokaslr-a (Debian 6.1 symbols, signed modules).

import ExecGateCapture
import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOCore
import XCTest

final class RegisterByDigestServiceTests: XCTestCase {
    func testDigestFirstRegistrationAttachesAndFallsBackWhenTheBuildIsGone() async throws {
        let verifier = Verifier(policy: Policy(id: "by-digest", version: 1, trust: try Fixtures.debianTrust(), endState: .required))
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = VerifierServer(responder: verifier, logger: logger, threads: 2)
        let endpoint = Endpoint.unix(path: Fixtures.temporaryDirectory() + "/execgate.sock")
        try await server.bind(endpoint)
        let client = try await ExecGateClient.connect(to: endpoint, timeout: 60)
        do {
            let boot = try CaptureBoot.load(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a")
            // No digest known yet: in full.
            let (first, firstByDigest) = try await client.register(try boot.registration(guestID: "a"), knownBuild: nil)
            XCTAssertFalse(firstByDigest)
            XCTAssertEqual(first.symbolsDigest.count, 32)
            // The second guest of the build: by the digest the first reply gave.
            let (second, secondByDigest) = try await client.register(try boot.registration(guestID: "b"), knownBuild: first.symbolsDigest)
            XCTAssertTrue(secondByDigest, "a held build was registered in full")
            XCTAssertEqual(second.symbolsDigest, first.symbolsDigest)
            XCTAssertEqual(second.symbolCount, first.symbolCount)
            XCTAssertNotEqual(second.factsDigest, first.factsDigest, "facts_digest is the digest of the body each guest sent")
            XCTAssertTrue(verifier.guests.session("a")?.kernel === verifier.guests.session("b")?.kernel)
            // Judged alike, over the wire: every module of the capture, for both guests.
            for name in boot.availableModules {
                let va = try await client.authorize(try boot.module(name).request(guestID: "a"))
                let vb = try await client.authorize(try boot.module(name).request(guestID: "b"))
                XCTAssertEqual(va.decision, .allow, "\(name): \(va.message)")
                XCTAssertEqual("\(vb.decision) \(vb.reason.name) \(vb.checks) \(vb.message)", "\(va.decision) \(va.reason.name) \(va.checks) \(va.message)", name)
            }
            // An unknown digest is an error naming what to do, not a registration.
            let raw = try await client.send(.registerGuest(try boot.registration(guestID: "c").byDigest([UInt8](repeating: 1, count: 32))))
            guard case .error(let e) = raw else { return XCTFail("registered by an unknown digest: \(raw)") }
            XCTAssertEqual(e.code, .unknownBuild)
            XCTAssertNil(verifier.guests.session("c"))
            // The build's guests leave (the VMM revoked their grants): the copy goes, and the
            // digest-first registration falls back to the full one.
            XCTAssertTrue(verifier.guests.remove("a"))
            XCTAssertTrue(verifier.guests.remove("b"))
            XCTAssertTrue(verifier.guests.sharedBuilds.isEmpty)
            let (third, thirdByDigest) = try await client.register(try boot.registration(guestID: "c"), knownBuild: first.symbolsDigest)
            XCTAssertFalse(thirdByDigest, "the digest of a build no longer held was accepted")
            XCTAssertEqual(third.symbolsDigest, first.symbolsDigest)
            XCTAssertNotNil(verifier.guests.session("c"))
            // Refusals other than unknown-build are the caller's: a live id stays refused.
            do {
                _ = try await client.register(try boot.registration(guestID: "c"), knownBuild: first.symbolsDigest)
                XCTFail("a live guest id was registered again")
            } catch ClientError.server(let e) {
                XCTAssertEqual(e.code, .guestExists)
            }
        } catch {
            await client.close()
            await server.shutdown()
            throw error
        }
        await client.close()
        await server.shutdown()
    }
}
