// SPDX-License-Identifier: Apache-2.0
//
// Registration by digest (register-guest `symbols_digest`, GuestRegistry.register): a guest of a
// build the registry holds attaches to its shared copy without the symbol records; anything else
// is refused with a precise code, never built from nothing. The attached guest is judged exactly
// as the full registrant of the same records (same verdicts on the real modules, at the
// registrant's slide and at another). Pins apply as to the records the digest names; budgets apply
// per guest. Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/
// nokaslr-a (Debian 6.1 symbols, signed modules).

import _ExecGateInternals
import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import XCTest

final class RegisterByDigestTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x63, count: 32)

    func boot() throws -> CaptureBoot { try CaptureBoot.load(EndStateVerifierTests.bootDir) }

    /// Register `r` in full on `v`; the reply's symbols digest.
    func registerFull(_ v: Verifier, _ r: RegisterGuest) throws -> [UInt8] {
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        guard case .registerGuestReply(let rr) = reply else { throw RegistrationRefused(reply: "\(reply)") }
        XCTAssertEqual(rr.symbolsDigest.count, 32)
        return rr.symbolsDigest
    }

    /// The error `v` answers `r` with (nil: registered).
    func refusal(_ v: Verifier, _ r: RegisterGuest) -> ErrorReply? {
        if case .error(let e) = v.respond(to: .registerGuest(r), requestDigest: []) { return e }
        return nil
    }

    func testByDigestAttachesToTheHeldCopyAtItsOwnCost() throws {
        let boot = try boot()
        let v = try verifier()
        let full = try registration(boot, "a")
        let digest = try registerFull(v, full)
        XCTAssertEqual(digest, KernelFactsKey.symbolsDigest(full))
        let charged = v.guests.chargedBytes
        let a = try XCTUnwrap(v.guests.session("a"))
        // The by-digest body is the registration without its records (tag 6: 6 bytes of header,
        // 12 + name bytes per record) and with the 32-byte digest (tag 0x8010).
        let b = try registration(boot, "b").byDigest(digest)
        let body = Message.registerGuest(b).encodeBody()
        let records = full.symbols.reduce(0) { $0 + 12 + $1.name.utf8.count }
        XCTAssertEqual(Message.registerGuest(try registration(boot, "b")).encodeBody().readableBytes - body.readableBytes, 6 + records - (6 + 32))
        XCTAssertLessThan(body.readableBytes, 4096)
        XCTAssertEqual(try Message(type: .registerGuest, body: body), .registerGuest(b), "by-digest registration does not round-trip")
        guard case .registerGuestReply(let reply) = v.respond(to: .registerGuest(b), requestDigest: [7]) else { return XCTFail("\(v.respond(to: .registerGuest(b), requestDigest: []))") }
        XCTAssertEqual(reply.symbolsDigest, digest)
        XCTAssertEqual(Int(reply.symbolCount), full.symbols.count, "the reply counts the build's records, not the (absent) ones sent")
        XCTAssertEqual(reply.factsDigest, [7])
        let sb = try XCTUnwrap(v.guests.session("b"))
        XCTAssertTrue(sb.kernel === a.kernel, "attached to another copy")
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 2)
        XCTAssertEqual(v.guests.chargedBytes - charged, charged - a.kernel.symbolBytes, "a guest by digest is charged other than a guest's own facts")
        // Its facts are those its full registration alone gives.
        let alone = GuestFactsBuilder.facts(from: try registration(boot, "b"))
        assertSameFacts(sb.facts, as: alone)
    }

    /// The same modules, the same verdicts: a guest attached by digest (at the full registrant's
    /// slide, and at another one) against the same guest registered in full, alone, on a fresh
    /// verifier. Checks, reasons and messages are compared, not only decisions.
    func testAGuestByDigestIsJudgedExactlyLikeItsFullRegistration() throws {
        let boot = try boot()
        let v = try verifier()
        let digest = try registerFull(v, try registration(boot, "first"))
        let same = try registration(boot, "same")
        let slid = SlidSharedKernelFactsTests.moved(try registration(boot, "slid"), by: 0x1e00_0000, id: "slid")
        XCTAssertEqual(KernelFactsKey.symbolsDigest(slid), digest, "another slide of one build has one digest")
        for full in [same, slid] {
            XCTAssertNil(refusal(v, full.byDigest(digest)), full.guestID)
            let lone = try verifier()
            _ = try registerFull(lone, full)
            var allowed = 0
            for n in boot.availableModules {
                let request = try boot.module(n).request(guestID: full.guestID)
                let got = v.authorize(request, requestDigest: [])
                let want = lone.authorize(request, requestDigest: [])
                XCTAssertEqual("\(got.decision) \(got.reason.name) \(got.checks) \(got.message)",
                               "\(want.decision) \(want.reason.name) \(want.checks) \(want.message)", "\(full.guestID) \(n)")
                if got.decision == .allow { allowed += 1 }
            }
            // The modules were captured at the first boot's slide: all explained there, none at
            // another slide (their relocations name the first boot's kernel addresses).
            XCTAssertEqual(allowed, full.guestID == "same" ? boot.availableModules.count : 0, full.guestID)
        }
    }

    /// A digest the registry does not hold, a held digest under another kernel_digest, and the
    /// digest of a private copy: `unknown-build`, naming what to send, and nothing registered.
    func testUnknownBuildIsRefusedPreciselyAndRegistersNothing() throws {
        let boot = try boot()
        let v = try verifier()
        let nobody = try registration(boot, "x").byDigest([UInt8](repeating: 0xee, count: 32))
        let e = try XCTUnwrap(refusal(v, nobody))
        XCTAssertEqual(e.code, .unknownBuild)
        XCTAssertTrue(e.message.contains("send the full registration"), e.message)
        XCTAssertTrue(e.message.contains(Hex.encode(nobody.symbolsDigest)), e.message)
        XCTAssertEqual(v.guests.count, 0)
        XCTAssertTrue(v.guests.sharedBuilds.isEmpty)
        XCTAssertEqual(v.guests.chargedBytes, 0)
        // Held, but the key is (kernel_digest, symbols digest): another kernel_digest is another build.
        let digest = try registerFull(v, try registration(boot, "a"))
        var otherKernel = try registration(boot, "y").byDigest(digest)
        otherKernel.kernelDigest = [UInt8](repeating: 0x64, count: 32)
        XCTAssertEqual(refusal(v, otherKernel)?.code, .unknownBuild)
        otherKernel.kernelDigest = []
        XCTAssertEqual(refusal(v, otherKernel)?.code, .unknownBuild)
        XCTAssertNil(v.guests.session("y"))
        // A private copy (ambiguous slide, KernelFactsStore) is found by no other registration.
        var odd = try registration(boot, "odd")
        odd.kaslrSlide = 0x20_0000
        odd.symbols.append(KernelSymbol(name: "odd_absolute", address: 0xffff_ffff_8000_0800, type: UInt8(ascii: "A"), exported: false))
        let oddDigest = try registerFull(v, odd)
        XCTAssertNil(try XCTUnwrap(v.guests.session("odd")).kernel.key)
        var probe = try registration(boot, "z").byDigest(oddDigest)
        probe.kaslrSlide = 0x20_0000
        XCTAssertEqual(refusal(v, probe)?.code, .unknownBuild)
        XCTAssertNil(v.guests.session("z"))
    }

    /// The build's last guest left: its copy is gone, a registration by digest is refused, and
    /// the full registration the client then sends registers (building the copy again).
    func testAfterTheLastHolderLeftTheClientResendsInFull() throws {
        let boot = try boot()
        let v = try verifier()
        let digest = try registerFull(v, try registration(boot, "a"))
        XCTAssertTrue(v.guests.remove("a"))
        XCTAssertTrue(v.guests.sharedBuilds.isEmpty)
        let b = try registration(boot, "b")
        XCTAssertEqual(refusal(v, b.byDigest(digest))?.code, .unknownBuild)
        XCTAssertNil(v.guests.session("b"))
        XCTAssertEqual(try registerFull(v, b), digest)
        XCTAssertNil(refusal(v, try registration(boot, "c").byDigest(digest)))
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 2)
        // A reset of the last guest by digest onto its own build keeps the copy (it is held).
        XCTAssertTrue(v.guests.remove("b"))
        var reset = try registration(boot, "c").byDigest(digest)
        reset.reset = true
        XCTAssertNil(refusal(v, reset))
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 1)
    }

    /// Policy pins apply to the digest as to the records it stands for: a held build the policy
    /// does not pin (or pins under another kernel) is refused `untrusted-kernel` by digest too.
    func testPinsApplyToRegistrationsByDigest() throws {
        let boot = try boot()
        let trust = try Fixtures.debianTrust()
        let v = Verifier(policy: Policy(id: "pins", version: 1, trust: trust, endState: .required))
        let digest = try registerFull(v, try registration(boot, "a"))  // no pins yet: held
        let kernel = try XCTUnwrap(Digest(algorithm: .sha256, bytes: Self.kernelDigest))
        let symbols = try XCTUnwrap(Digest(algorithm: .sha256, bytes: digest))
        let other = try XCTUnwrap(Digest(algorithm: .sha256, bytes: [UInt8](repeating: 0x5a, count: 32)))
        var pinned = Policy(id: "pins", version: 2, trust: trust, endState: .required)
        pinned.trustedKernels = [KernelPin(kernel: kernel, symbols: other)]
        try v.replacePolicy(pinned)
        let b = try registration(boot, "b")
        let e = try XCTUnwrap(refusal(v, b.byDigest(digest)))
        XCTAssertEqual(e.code, .untrustedKernel)
        XCTAssertTrue(e.message.contains("named"), e.message)
        XCTAssertEqual(refusal(v, b)?.code, .untrustedKernel, "the full registration is refused alike")
        pinned.version = 3
        pinned.trustedKernels = [KernelPin(kernel: other, symbols: symbols)]
        try v.replacePolicy(pinned)
        XCTAssertEqual(refusal(v, b.byDigest(digest))?.code, .untrustedKernel)
        XCTAssertNil(v.guests.session("b"))
        pinned.version = 4
        pinned.trustedKernels = [KernelPin(kernel: kernel, symbols: symbols)]
        try v.replacePolicy(pinned)
        XCTAssertNil(refusal(v, b.byDigest(digest)))
        XCTAssertTrue(try XCTUnwrap(v.guests.session("b")).kernel === v.guests.session("a")?.kernel)
    }

    /// The guest cap and the byte budget hold for guests by digest: each is charged its own facts.
    func testBudgetsHoldForRegistrationsByDigest() throws {
        let boot = try boot()
        let probe = GuestRegistry()
        guard case .registered(let first) = probe.register(try registration(boot, "p0")) else { return XCTFail("refused") }
        let build = first.kernel.symbolBytes
        let perGuest = probe.chargedBytes - build
        let digest = KernelFactsKey.symbolsDigest(try registration(boot, "p0"))
        // Bytes: the build and two guests' own facts, not three.
        let bytes = GuestRegistry(maximumGuests: 10, maximumSymbolBytes: build + 2 * perGuest)
        guard case .registered = bytes.register(try registration(boot, "g0")) else { return XCTFail("g0 refused") }
        guard case .registered = bytes.register(try registration(boot, "g1").byDigest(digest)) else { return XCTFail("g1 refused") }
        guard case .refused(let c, let why) = bytes.register(try registration(boot, "g2").byDigest(digest)) else { return XCTFail("over the byte budget, kept") }
        XCTAssertEqual(c, .unavailable)
        XCTAssertTrue(why.contains("budget"), why)
        XCTAssertNil(bytes.session("g2"))
        XCTAssertEqual(bytes.chargedBytes, build + 2 * perGuest)
        // Guests: the cap counts guests by digest like any other.
        let cap = GuestRegistry(maximumGuests: 2)
        guard case .registered = cap.register(try registration(boot, "g0")) else { return XCTFail("g0 refused") }
        guard case .registered = cap.register(try registration(boot, "g1").byDigest(digest)) else { return XCTFail("g1 refused") }
        guard case .refused(let c2, let why2) = cap.register(try registration(boot, "g2").byDigest(digest)) else { return XCTFail("over the guest cap, kept") }
        XCTAssertEqual(c2, .unavailable)
        XCTAssertTrue(why2.contains("limit is 2"), why2)
        // A live id is not replaced by digest without reset either.
        guard case .refused(let c3, _) = cap.register(try registration(boot, "g1").byDigest(digest)) else { return XCTFail("replaced") }
        XCTAssertEqual(c3, .guestExists)
    }

    /// Attacks on the registration itself: records and a digest at once (in process; the wire
    /// refuses the body), a digest of the wrong length, and a slide at which the held build's
    /// addresses would wrap past 2^64 (no full registration with that digest exists there).
    func testMalformedAndImpossibleRegistrationsByDigest() throws {
        let boot = try boot()
        let v = try verifier()
        let digest = try registerFull(v, try registration(boot, "a"))
        var both = try registration(boot, "b")
        both.symbolsDigest = digest
        XCTAssertEqual(refusal(v, both)?.code, .badRequest)
        XCTAssertEqual(refusal(v, try registration(boot, "b").byDigest(Array(digest.prefix(31))))?.code, .badRequest)
        var wrap = try registration(boot, "b").byDigest(digest)
        wrap.kaslrSlide = 0x7fff_ffff_0000_0000
        let e = try XCTUnwrap(refusal(v, wrap))
        XCTAssertEqual(e.code, .implausibleFacts)
        XCTAssertTrue(e.message.contains("kaslr_slide"), e.message)
        XCTAssertNil(v.guests.session("b"))
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 1)
    }
}
