// SPDX-License-Identifier: Apache-2.0
//
// The verifier core on real, really signed Debian modules and the certificate pulled from the
// same package's vmlinuz. Every expected verdict follows from the input, none is hard-coded.

import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class VerifierTests: XCTestCase {
    var trust: TrustStore!
    var vsock: [UInt8]!

    override func setUpWithError() throws {
        trust = try Fixtures.debianTrust()
        vsock = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
    }

    /// These tests exercise the evidence checks (signature, deny lists, names, claim structure),
    /// which run before any byte is judged. Without a guest, bytes cannot be judged, so the policy
    /// opts into signature-only explicitly; what the fail-closed default does is tested below.
    private func verifier(_ configure: (inout Policy) -> Void = { _ in }) -> Verifier {
        var p = Policy.builtIn(trust: trust)
        p.endState = .signatureOnly
        configure(&p)
        return Verifier(policy: p)
    }

    private func authorize(_ v: Verifier, _ module: [UInt8], sections: [SectionClaim] = [], name: String = "") -> Verdict {
        v.authorize(AuthorizeModule(module: ByteBuffer(bytes: module), sections: sections, moduleName: name), requestDigest: [1, 2, 3])
    }

    /// The executable sections of `module` as a claim (the ELF's own bytes, distinct page-aligned addresses).
    private func elfClaim(_ module: [UInt8]) throws -> [SectionClaim] {
        try module.withUnsafeBytes { raw in
            let t = try ModuleSignatureTrailer.parse(raw)
            let content = UnsafeRawBufferPointer(rebasing: raw[t.contentRange])
            let elf = try ExecGateELFFixture.sections(content)
            var addr: UInt64 = 0xffff_ffff_c000_0000
            return elf.filter { $0.exec && $0.size > 0 && !$0.name.hasPrefix(".init") }.map { s in
                defer { addr += UInt64((s.size + 0xfff) & ~0xfff) }
                return SectionClaim(name: s.name, address: addr, bytes: ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: content[s.range])))
            }
        }
    }

    func testBuiltInPolicyFailsClosedWithoutBytes() throws {
        let v = authorize(Verifier(policy: Policy.builtIn(trust: trust)), vsock)
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .endStateUnavailable)
        XCTAssertFalse(v.signatureOnly)
        XCTAssertEqual(v.checks, ["policy-kind", "signature", "deny-list", "elf-structure", "module-name"])
        XCTAssertEqual(Policy.builtIn(trust: trust).endState, .required)
        XCTAssertEqual(Policy(id: "x", version: 1, trust: trust).endState, .required, "a policy built in code fails closed too")
    }

    func testSignatureOnlyIsAnOptInAndTheVerdictSaysSo() throws {
        let v = authorize(verifier(), vsock)
        XCTAssertEqual(v.decision, .allow, v.message)
        XCTAssertTrue(v.signatureOnly)
        XCTAssertTrue(v.message.hasPrefix("SIGNATURE ONLY"), v.message)
        XCTAssertEqual(v.moduleName, "vsock")
        XCTAssertEqual(v.checks, ["policy-kind", "signature", "deny-list", "elf-structure", "module-name"])
        XCTAssertFalse(v.checks.contains("end-state"), "no claim bytes: end-state must not be claimed")
        XCTAssertEqual(v.policyID, "builtin-default")
        XCTAssertEqual(v.policyVersion, 1)
        XCTAssertEqual(v.requestDigest, [1, 2, 3])
        XCTAssertEqual(v.moduleDigest.count, 32)
        XCTAssertTrue(v.grantFrames.isEmpty && v.grantBase == nil, "no bytes judged: no grant echoed")
    }

    /// Attack (issue 9, item 3): shellcode as a `.text` section claim of the right size, no
    /// executable region. It used to be allowed after a size check; no policy allows it now.
    func testForbidsSectionBytesThatNobodyExplains() throws {
        var claim = try elfClaim(vsock)
        let size = claim[0].bytes!.readableBytes
        // mov rax, 0x4141414141414141; jmp rax; then int3 padding to the section's size.
        let shellcode: [UInt8] = [0x48, 0xb8] + [UInt8](repeating: 0x41, count: 8) + [0xff, 0xe0]
        claim[0].bytes = ByteBuffer(bytes: Array((shellcode + [UInt8](repeating: 0xcc, count: max(0, size - shellcode.count))).prefix(size)))
        for v in [authorize(verifier(), vsock, sections: claim), authorize(Verifier(policy: Policy.builtIn(trust: trust)), vsock, sections: claim)] {
            XCTAssertEqual(v.decision, .deny, v.message)
            XCTAssertEqual(v.reason, .endStateUnavailable, v.message)
            XCTAssertTrue(v.checks.contains("claim-structure"))
            XCTAssertFalse(v.signatureOnly)
        }
    }

    func testForbidsClaimWithWrongSize() throws {
        var claim = try elfClaim(vsock)
        claim[0].bytes!.writeInteger(UInt8(0xcc))
        let v = authorize(verifier(), vsock, sections: claim)
        XCTAssertEqual(v.decision, .deny)
        XCTAssertEqual(v.reason, .claimSizeMismatch)
        XCTAssertTrue(v.message.contains(claim[0].name), v.message)
    }

    func testForbidsClaimOfUnknownSection() throws {
        let v = authorize(verifier(), vsock, sections: [SectionClaim(name: ".text.evil", address: 0x1000, bytes: ByteBuffer(bytes: [0xc3]))])
        XCTAssertEqual(v.reason, .claimUnknownSection)
    }

    func testForbidsBytesClaimedForDataSection() throws {
        let v = authorize(verifier(), vsock, sections: [SectionClaim(name: ".rodata", address: 0x1000, bytes: ByteBuffer(bytes: [0xc3]))])
        XCTAssertEqual(v.reason, .claimNotExecutable)
    }

    func testForbidsDuplicateAndOverlappingClaims() throws {
        let claim = try elfClaim(vsock)
        XCTAssertEqual(authorize(verifier(), vsock, sections: [claim[0], claim[0]]).reason, .claimDuplicateSection)
        guard claim.count >= 2 else { return XCTFail("vsock.ko has several executable sections") }
        var overlapping = claim
        overlapping[1].address = overlapping[0].address + 1
        XCTAssertEqual(authorize(verifier(), vsock, sections: overlapping).reason, .claimSizeMismatch)
        var wrapping = claim
        wrapping[0].address = UInt64.max - 1
        XCTAssertEqual(authorize(verifier(), vsock, sections: wrapping).reason, .claimSizeMismatch)
    }

    func testForbidsUnknownSigner() {
        let v = authorize(Verifier(policy: Policy.builtIn(trust: TrustStore([]))), vsock)
        XCTAssertEqual(v.decision, .deny)
        XCTAssertEqual(v.reason, .unknownSigner)
        XCTAssertEqual(v.checks, ["policy-kind", "signature", "deny-list"])
    }

    func testForbidsFlippedCodeByte() throws {
        var m = vsock!
        m[0x100] ^= 0x01  // inside the ELF, before the signature
        let v = authorize(verifier(), m)
        XCTAssertEqual(v.decision, .deny)
        XCTAssertTrue([VerdictReason.digestMismatch, .badSignature].contains(v.reason), v.reason.name)
    }

    func testForbidsDenyListedModuleHashAndName() throws {
        let allowed = authorize(verifier(), vsock)
        let hash = Digest(algorithm: .sha256, bytes: allowed.moduleDigest)!
        XCTAssertEqual(authorize(verifier { $0.denyList = DenyList(moduleContentHashes: [hash]) }, vsock).reason, .moduleHashDenied)
        XCTAssertEqual(authorize(verifier { $0.deniedModuleNames = ["vsock"] }, vsock).reason, .moduleNameDenied)
        let tbs = try Fixtures.debianCertificates()[0].tbsHash
        XCTAssertEqual(authorize(verifier { $0.denyList = DenyList(certificateTBSHashes: [tbs]) }, vsock).reason, .certificateDenied)
    }

    func testForbidsRequestNameThatDisagreesWithSignedModinfo() {
        let v = authorize(verifier(), vsock, name: "not-vsock")
        XCTAssertEqual(v.decision, .deny)
        XCTAssertEqual(v.reason, .moduleNameMismatch, "its own reason, not a signature failure")
        XCTAssertTrue(v.message.contains("the signed module is 'vsock'"), v.message)
        XCTAssertEqual(authorize(verifier(), vsock, name: "vsock").decision, .allow)
    }

    func testKindRulesAndHashPinning() throws {
        XCTAssertEqual(authorize(verifier { $0.modules = .deny }, vsock).reason, .kindDenied)
        let hash = Digest(algorithm: .sha256, bytes: authorize(verifier(), vsock).moduleDigest)!
        XCTAssertEqual(authorize(verifier { $0.modules = .hashPinned([hash]) }, vsock).decision, .allow)
        let other = try Fixtures.readFile(try Fixtures.module(named: "vsock_loopback.ko"))
        XCTAssertEqual(authorize(verifier { $0.modules = .hashPinned([hash]) }, other).reason, .kindDenied)
    }

    func testAuditModeAllowsButRecordsWhatEnforceWouldDeny() {
        let v = authorize(Verifier(policy: Policy(id: "audit", version: 3, mode: .audit, trust: TrustStore([]))), vsock)
        XCTAssertEqual(v.decision, .allow)
        XCTAssertTrue(v.auditOnly)
        XCTAssertEqual(v.reason, .unknownSigner, "the reason enforce would have given is kept")
        XCTAssertEqual(v.policyVersion, 3)
        // A refused signature still names the content judged (round 11: module_sha256 was empty
        // on an unknown signer or a deny-listed hash): the SHA-256 of the bytes before it.
        let trusted = authorize(verifier(), vsock)
        XCTAssertEqual(v.moduleDigest, trusted.moduleDigest)
        XCTAssertEqual(v.moduleDigest.count, 32)
    }

    func testEndStateRequiredWithoutBytesOrGuestIsDenied() throws {
        let v = authorize(verifier { $0.endState = .required }, vsock, sections: try elfClaim(vsock))
        XCTAssertEqual(v.reason, .endStateUnavailable)
    }

    func testPolicySwapIsAtomicAndRefusesRollback() throws {
        let v = verifier()
        XCTAssertEqual(authorize(v, vsock).policyVersion, 1)
        try v.replacePolicy(Policy(id: "next", version: 2, trust: trust, deniedModuleNames: ["vsock"]))
        let after = authorize(v, vsock)
        XCTAssertEqual(after.policyVersion, 2)
        XCTAssertEqual(after.reason, .moduleNameDenied)
        XCTAssertThrowsError(try v.replacePolicy(Policy(id: "old", version: 2, trust: trust)))
        XCTAssertThrowsError(try v.replacePolicy(Policy(id: "old", version: 1, trust: trust)))
        XCTAssertEqual(v.policy.id, "next", "a refused policy changes nothing")
    }

    func testProtocolLevelResponses() {
        let v = verifier()
        guard case .helloReply(let h) = v.respond(to: .hello(Hello(clientName: "t")), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(h.version, 1)
        guard case .error(let e) = v.respond(to: .hello(Hello(minimumVersion: 2, maximumVersion: 3, clientName: "t")), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(e.code, .unsupportedVersion)
        guard case .error(let u) = v.respond(to: .authorizeModule(AuthorizeModule(guestID: "nobody", module: ByteBuffer(bytes: vsock))), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(u.code, .unknownGuest)
        // A symbol without the core text bounds cannot be checked: refused, nothing registered.
        guard case .error(let implausible) = v.respond(to: .registerGuest(RegisterGuest(guestID: "g1", symbols: [KernelSymbol(name: "printk", address: 1)])), requestDigest: []) else { return XCTFail() }
        XCTAssertEqual(implausible.code, .implausibleFacts)
        XCTAssertTrue(implausible.message.contains("_stext"), implausible.message)
        XCTAssertEqual(v.guests.count, 0)
        let bounds = [KernelSymbol(name: "_stext", address: 0xffff_ffff_8100_0000, exported: false),
                      KernelSymbol(name: "_etext", address: 0xffff_ffff_81e0_0000, exported: false)]
                      // the image bounds come with any export (FactsPlausibility)
                      + Fixtures.syntheticImageBounds
        let outside = v.respond(to: .registerGuest(RegisterGuest(guestID: "g1", symbols: bounds + [KernelSymbol(name: "printk", address: 1)])), requestDigest: [])
        guard case .error(let e2) = outside else { return XCTFail("\(outside)") }
        XCTAssertEqual(e2.code, .implausibleFacts, "an exported text symbol outside core text")
        let good = RegisterGuest(guestID: "g1", symbols: bounds + [KernelSymbol(name: "printk", address: 0xffff_ffff_8110_0000)])
        guard case .registerGuestReply(let r) = v.respond(to: .registerGuest(good), requestDigest: [9, 9]) else { return XCTFail() }
        XCTAssertEqual(r.symbolCount, 11)
        XCTAssertEqual(r.factsDigest, [9, 9], "the reply names the facts the session was built from")
        XCTAssertEqual(v.guests.count, 1)
    }
}
