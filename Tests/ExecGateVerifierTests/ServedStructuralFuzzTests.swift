// SPDX-License-Identifier: Apache-2.0
//
// The structural fuzz (ExecGateExplainTests StructuralFuzzTests) through the served path: each
// mutant of a real module is signed by a test key the policy trusts (it stands for whatever a
// trusted key holder could sign) and sent as authorize-module with the real module's claim to a
// registered guest, so the verifier's own checks (signature, .modinfo, struct module name, claim
// structure, frames) and the session's commit run on it too. What must hold:
// - every request gets a verdict naming its reason, and the service keeps serving;
// - a mutant allowed with the real claim is retired again (its live state given back exactly);
// - after every module's mutants, the real module still loads: no mutant left state behind
//   (debug builds cross-check the session's owner indexes at every commit and removal);
// - the registry's live charge returns to what the real modules hold.

import ExecGateCapture
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class ServedStructuralFuzzTests: XCTestCase {
    func testSignedMutantsThroughTheVerifierLeaveNoState() throws {
        let (key, cert) = try GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "ExecGate structural fuzz key").load()
        let signer = try ModuleSigner(key: key, certificate: cert)
        let g = try FixtureGuest { $0.trust = TrustStore(try! Fixtures.debianCertificates() + [cert]) }
        let perModule = (Int(ProcessInfo.processInfo.environment["EXECGATE_FUZZ_PER_MODULE"] ?? "") ?? 300) / 8
        var allowed = 0, denied = 0
        var reasons: [String: Int] = [:]
        for (mi, name) in g.boot.availableModules.enumerated() {
            let real = try g.boot.module(name)
            for it in 0..<perModule {
                let seed = 0x5e7f_0000 &+ UInt64(mi) << 16 &+ UInt64(it)
                var rng = SeededRNG(seed: seed)
                var ko = real.ko
                var what = ELFMutator.mutate(&ko, &rng)
                if rng.next() % 4 == 0 { what += "; " + ELFMutator.mutate(&ko, &rng) }
                let tag = "\(name) seed 0x\(String(seed, radix: 16)): \(what)"
                var r = try g.request(name)
                r.module = ByteBuffer(bytes: try signer.sign(module: ko, existingSignature: .replace))
                let v = g.verifier.authorize(r, requestDigest: [])
                XCTAssertFalse(v.message.isEmpty, tag)
                reasons["\(v.reason)", default: 0] += 1
                guard v.decision == .allow else { denied += 1; continue }
                allowed += 1
                let reply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: v.moduleName, textBase: try XCTUnwrap(r.textBase))),
                                               requestDigest: [])
                guard case .retireModuleReply = reply else { return XCTFail("an allowed mutant could not be retired: \(reply): \(tag)") }
            }
            let v = try g.load(name)
            XCTAssertEqual(v.decision, .allow, "the real \(name) after its mutants: \(v.message)")
        }
        // What the live modules hold is what the real ones charge: nothing left by a mutant.
        let s = g.session
        let charged = s.allowedModules.compactMap { s.liveModule($0)?.heldBytes }.reduce(0, +)
        XCTAssertEqual(s.allowedModules.count, g.boot.availableModules.count)
        XCTAssertEqual(s.liveBytes, charged)
        XCTAssertEqual(g.verifier.guests.liveModuleBytes, charged)
        print("served structural fuzz: \(allowed) allowed and retired, \(denied) denied; reasons \(reasons.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(denied, 0)
        XCTAssertGreaterThan(allowed, 0)
    }
}
