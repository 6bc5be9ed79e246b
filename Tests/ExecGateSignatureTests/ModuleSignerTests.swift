// SPDX-License-Identifier: Apache-2.0

@testable import ExecGateSignature
import COpenSSLShim
import ExecGateTestSupport
import XCTest

final class ModuleSignerTests: XCTestCase {
    /// Facts about a module's PKCS#7 message, read through the same shim the verifier uses.
    struct Shape: Equatable {
        var signedData: Bool
        var detached: Bool
        var certs: Int
        var crls: Int
        var signers: Int
        var signedAttrs: Int32
        var unsignedAttrs: Int32
        var idKind: Int32
        var digest: Int32
    }

    func shape(_ module: [UInt8]) throws -> Shape {
        let t = try ModuleSignatureTrailer.parse(module)
        return try module.withUnsafeBytes { b in
            let cms = try CMSMessage(der: UnsafeRawBufferPointer(rebasing: b[t.signatureRange]))
            let si = try XCTUnwrap(egs_cms_signer(cms.handle, 0))
            var nid: Int32 = 0
            return Shape(
                signedData: egs_cms_is_signed_data(cms.handle) != 0, detached: egs_cms_is_detached(cms.handle) == 1,
                certs: Int(egs_cms_cert_count(cms.handle)), crls: Int(egs_cms_crl_count(cms.handle)),
                signers: Int(egs_cms_signer_count(cms.handle)),
                signedAttrs: egs_si_signed_attr_count(si), unsignedAttrs: egs_si_unsigned_attr_count(si),
                idKind: egs_si_signer_id_kind(si), digest: egs_si_digest(si, &nid))
        }
    }

    func testResignedModuleVerifiesUnderFreshKeyOnly() throws {
        let signer = try Shared.freshSigner()
        let orig = try Shared.vsock()
        let m = try signer.sign(module: orig, existingSignature: .replace)
        let ok = try ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()).get()
        XCTAssertEqual(ok.signer, signer.certificate)
        XCTAssertEqual(ok.digestAlgorithm, .sha256)
        XCTAssertFalse(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()).isValid)
        // Same content as the Debian original.
        let t0 = try ModuleSignatureTrailer.parse(orig)
        let t1 = try ModuleSignatureTrailer.parse(m)
        XCTAssertEqual(Array(orig[t0.contentRange]), Array(m[t1.contentRange]))
        // OpenSSL agrees.
        XCTAssertTrue(m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: signer.certificate) })
        // Flipping a content byte of our own signature is caught too.
        var bad = m
        bad[100] ^= 1
        assertDenied(ModuleSignatureVerifier.verify(module: bad, trust: try Shared.freshTrust()), "sig.digest-mismatch")
    }

    func testResignedTrailerHasDebiansForm() throws {
        let orig = try Shared.vsock()
        let m = try Shared.freshSigner().sign(module: orig, existingSignature: .replace)
        let t0 = try ModuleSignatureTrailer.parse(orig)
        let t1 = try ModuleSignatureTrailer.parse(m)
        // struct module_signature: everything but sig_len identical; magic identical.
        XCTAssertEqual(Array(orig[t0.structRange].prefix(8)), Array(m[t1.structRange].prefix(8)))
        XCTAssertEqual(Array(orig[t0.magicRange]), Array(m[t1.magicRange]))
        XCTAssertEqual(Int(t1.signatureLength), t1.signatureRange.count)
        // DER: ContentInfo SEQUENCE with a two-byte length, then OID signedData (1.2.840.113549.1.7.2).
        let signedDataPrefix: [UInt8] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]
        for (mod, t) in [(orig, t0), (m, t1)] {
            XCTAssertEqual(mod[t.signatureRange.lowerBound], 0x30)
            XCTAssertEqual(mod[t.signatureRange.lowerBound + 1], 0x82)
            XCTAssertEqual(Array(mod[(t.signatureRange.lowerBound + 4)..<(t.signatureRange.lowerBound + 15)]), signedDataPrefix)
        }
        // Same shape: SignedData, detached, no certificates, no CRLs, one signer, no attributes,
        // issuer+serial, sha256.
        let debian = try shape(orig)
        XCTAssertEqual(debian, Shape(signedData: true, detached: true, certs: 0, crls: 0, signers: 1,
                                     signedAttrs: -1, unsignedAttrs: -1, idKind: 0, digest: Int32(EGS_MD_SHA256)))
        XCTAssertEqual(try shape(m), debian)
        // RSA-2048 signature: 256 bytes (Debian's RSA-4096: 512).
        XCTAssertLessThan(t1.signatureRange.count, t0.signatureRange.count)
    }

    func testSubjectKeyIdentifierOption() throws {
        let signer = try Shared.freshSigner(identification: .subjectKeyIdentifier)
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        XCTAssertEqual(try shape(m).idKind, 1)
        let ok = try ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()).get()
        XCTAssertEqual(ok.signerIdentifier, .subjectKeyIdentifier(try XCTUnwrap(signer.certificate.subjectKeyIdentifierHex)))
        let f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.unknown-signer")
        XCTAssertEqual(f, .unknownSigner(.subjectKeyIdentifier(signer.certificate.subjectKeyIdentifierHex!)))
    }

    func testSHA512Signing() throws {
        let signer = try Shared.freshSigner(digest: .sha512)
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        XCTAssertEqual(try ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()).get().digestAlgorithm, .sha512)
    }

    func testECDSASigning() throws {
        for curve in GeneratedSigningKey.Curve.allCases {
            let (key, cert) = try GeneratedSigningKey.generateECDSA(curve: curve, commonName: "EC \(curve.rawValue)").load()
            XCTAssertEqual(cert.publicKeyAlgorithm, .ec)
            XCTAssertEqual(cert.publicKeyBits, curve == .p256 ? 256 : 384)
            let signer = try ModuleSigner(key: key, certificate: cert, digest: curve == .p256 ? .sha256 : .sha384)
            let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
            let ok = try ModuleSignatureVerifier.verify(module: m, trust: TrustStore([cert])).get()
            XCTAssertEqual(ok.digestAlgorithm, curve == .p256 ? .sha256 : .sha384)
            XCTAssertTrue(m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: cert) })
            // ECDSA cannot tell "other content" from "bad signature": both are bad-signature.
            var bad = m
            bad[4096] ^= 0x10
            assertDenied(ModuleSignatureVerifier.verify(module: bad, trust: TrustStore([cert])), "sig.bad-signature")
            // Shape: ecdsa-with-SHA* without parameters passes the strict DER checks; an RSA anchor
            // never matches the EC signer.
            assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.unknown-signer")
        }
    }

    func testRefusesToSignSignedModule() throws {
        let signer = try Shared.freshSigner()
        XCTAssertThrowsError(try signer.sign(module: try Shared.vsock())) { e in
            XCTAssertEqual((e as? SigningError)?.code, .alreadySigned)
        }
        // Replacing a broken trailer is refused too.
        var broken = try Shared.vsock()
        broken[broken.count - 29] = 0xff  // sig_len low byte → trailer invalid... but keep magic
        broken[broken.count - 40] = 7     // algo non-zero
        XCTAssertThrowsError(try signer.sign(module: broken, existingSignature: .replace)) { e in
            XCTAssertEqual((e as? SigningError)?.code, .malformedExistingSignature)
        }
        XCTAssertThrowsError(try signer.sign(module: [])) { e in
            XCTAssertEqual((e as? SigningError)?.code, .emptyModule)
        }
    }

    func testSigningUnsignedModuleThenVerifying() throws {
        let orig = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(orig)
        let unsigned = Array(orig[t.contentRange])
        let signer = try Shared.freshSigner()
        let m = try signer.sign(module: unsigned)
        XCTAssertTrue(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()).isValid)
    }

    func testKeyMustMatchCertificate() throws {
        let (key, _) = try Shared.freshKey.get().load()
        XCTAssertThrowsError(try ModuleSigner(key: key, certificate: try Shared.debianCertificate())) { e in
            XCTAssertEqual((e as? SigningError)?.code, .keyDoesNotMatchCertificate)
        }
    }

    func testGeneratedCertificateFacts() throws {
        let g = try Shared.freshKey.get()
        let (key, cert) = try g.load()
        XCTAssertTrue(key.matches(cert))
        XCTAssertEqual(cert.subject, cert.issuer)
        XCTAssertTrue(cert.subject.contains("CN=ExecGate test key"), cert.subject)
        XCTAssertEqual(cert.publicKeyAlgorithm, .rsa)
        XCTAssertEqual(cert.publicKeyBits, 2048)
        XCTAssertEqual(cert.subjectKeyIdentifier?.count, 20)
        XCTAssertTrue(String(decoding: g.privateKeyPEM, as: UTF8.self).hasPrefix("-----BEGIN PRIVATE KEY-----"))
        // PEM → DER → same certificate.
        let again = try Certificate(derEncoded: cert.der)
        XCTAssertEqual(again, cert)
        XCTAssertEqual(again.tbsHash, cert.tbsHash)
        XCTAssertEqual(try Certificate.parsePEM(Array(cert.pem.utf8)), [cert])
    }
}
