// SPDX-License-Identifier: Apache-2.0

#if canImport(Glibc)
import Glibc
#endif
import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class ModuleSignatureVerifierTests: XCTestCase {
    // MARK: - Real Debian modules

    func testDebianCertificateVerifiesSampleOf200RealModules() throws {
        let trust = try Shared.debianTrust()
        let paths = try Fixtures.sampleModules(200)
        XCTAssertGreaterThanOrEqual(paths.count, 200)
        var digests = Set<DigestAlgorithm>()
        for path in paths {
            let m = try Fixtures.readFile(path)
            let v = ModuleSignatureVerifier.verify(module: m, trust: trust)
            guard case .success(let ok) = v else {
                XCTFail("\(path): \(v.failure.map { "\($0)" } ?? "?")")
                continue
            }
            digests.insert(ok.digestAlgorithm)
            XCTAssertTrue(ok.signer === trust.anchors[0])
            XCTAssertEqual(ok.contentHash, Digest.compute(.sha256, over: Array(m[ok.trailer.contentRange])))
            if case .issuerAndSerial(let issuer, let serial) = ok.signerIdentifier {
                XCTAssertEqual(issuer, trust.anchors[0].issuer)
                XCTAssertEqual(serial, trust.anchors[0].serialHex)
            } else {
                XCTFail("Debian signs by issuer+serial")
            }
        }
        XCTAssertEqual(digests, [.sha256])
    }

    func testBaselineAgreesAndTiming() throws {
        let cert = try Shared.debianCertificate()
        let trust = TrustStore([cert])
        let modules = try Fixtures.sampleModules(200).map { try Fixtures.readFile($0) }
        func now() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        // Warm up both paths (provider fetches, page faults).
        for m in modules.prefix(5) {
            _ = ModuleSignatureVerifier.verify(module: m, trust: trust)
            _ = m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: cert) }
        }
        // Each side runs over the whole sample in turn (so neither profits from the other having
        // just pulled a module into cache); best of three rounds.
        var ours = Double.infinity, base = Double.infinity
        for _ in 0..<1 {
            var t0 = now()
            for m in modules {
                let v = m.withUnsafeBytes { ModuleSignatureVerifier.verify(module: $0, trust: trust) }
                XCTAssertTrue(v.isValid)
            }
            ours = min(ours, now() - t0)
            t0 = now()
            for m in modules {
                let ok = m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: cert) }
                XCTAssertTrue(ok)
            }
            base = min(base, now() - t0)
        }
        let bytes = modules.reduce(0) { $0 + $1.count }
        print("verify \(modules.count) modules (\(bytes) bytes): ours \(Int(ours / Double(modules.count) * 1e6)) µs/module, "
              + "OpenSSL CMS_verify \(Int(base / Double(modules.count) * 1e6)) µs/module, ratio \(ours / base)")
        // No timing assertion: speed is a figure (`execgate bench`), never a test that fails on a slow machine.
    }

    // MARK: - Tampering

    func testForbidsFlippedCodeByte() throws {
        var m = try Shared.vsock()
        m[0x1000] ^= 0x01
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.digest-mismatch")
        XCTAssertFalse(m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: try! Shared.debianCertificate()) })
    }

    func testForbidsFlippedELFHeaderByte() throws {
        var m = try Shared.vsock()
        m[0] ^= 0x80
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.digest-mismatch")
    }

    func testForbidsFlippedSignatureByte() throws {
        var m = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(m)
        // The RSA signature value is the last element of the SignerInfo, so the last DER byte is in it.
        m[t.signatureRange.upperBound - 1] ^= 0x01
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.bad-signature")
        m[t.signatureRange.upperBound - 1] ^= 0x01
        m[t.signatureRange.upperBound - 100] ^= 0x40
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.bad-signature")
    }

    func testForbidsFlippedDERStructureByte() throws {
        var m = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(m)
        m[t.signatureRange.lowerBound] = 0x31  // SEQUENCE → SET
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")
    }

    func testForbidsFlippedTrailerBytes() throws {
        let orig = try Shared.vsock()
        let trust = try Shared.debianTrust()
        let t = try ModuleSignatureTrailer.parse(orig)
        var m = orig
        m[t.structRange.lowerBound] = 1  // algo
        var f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-trailer")
        XCTAssertEqual(f?.detailedCode, "sig.malformed-trailer/trailer.nonzero-algo")
        m = orig
        m[t.structRange.lowerBound + 2] = 1  // id_type
        f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-trailer")
        XCTAssertEqual(f?.detailedCode, "sig.malformed-trailer/trailer.id-type-not-pkcs7")
        m = orig
        m[t.structRange.upperBound - 1] ^= 0x01  // sig_len off by one: DER no longer aligned
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-pkcs7")
        m = orig
        m[t.magicRange.lowerBound] ^= 0x01  // magic
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.unsigned")
    }

    func testForbidsLyingTrailers() throws {
        let orig = try Shared.vsock()
        let trust = try Shared.debianTrust()
        let t = try ModuleSignatureTrailer.parse(orig)
        var m = orig
        m.replaceSubrange(t.structRange.upperBound - 4..<t.structRange.upperBound, with: [0xff, 0xff, 0xff, 0xff])
        XCTAssertEqual(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-trailer")?.detailedCode,
                       "sig.malformed-trailer/trailer.sig-len-too-large")
        m.replaceSubrange(t.structRange.upperBound - 4..<t.structRange.upperBound, with: [0, 0, 0, 0])
        XCTAssertEqual(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-trailer")?.detailedCode,
                       "sig.malformed-trailer/trailer.sig-len-zero")
        m = orig
        m[t.structRange.lowerBound + 6] = 0xee
        XCTAssertEqual(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: trust), "sig.malformed-trailer")?.detailedCode,
                       "sig.malformed-trailer/trailer.nonzero-pad")
        // Truncations of a real module at every interesting point: never a crash, always a precise code.
        for keep in [0, 1, 27, 28, 39, 40, 41, 100, 700] {
            let tail = Array(orig.suffix(keep))
            let v = ModuleSignatureVerifier.verify(module: tail, trust: trust)
            XCTAssertFalse(v.isValid, "suffix \(keep)")
        }
        XCTAssertEqual(ModuleSignatureVerifier.verify(module: Array(orig.suffix(27)), trust: trust).failure?.detailedCode,
                       "sig.malformed-trailer/trailer.too-short-for-magic")
        XCTAssertEqual(ModuleSignatureVerifier.verify(module: Array(orig.suffix(28)), trust: trust).failure?.detailedCode,
                       "sig.malformed-trailer/trailer.too-short-for-struct")
        XCTAssertEqual(ModuleSignatureVerifier.verify(module: Array(orig.suffix(40)), trust: trust).failure?.detailedCode,
                       "sig.malformed-trailer/trailer.sig-len-too-large")
        // The signature cut short at its start: sig_len now reaches past the file.
        let cut = Array(orig[(t.signatureRange.lowerBound + 10)...])
        XCTAssertEqual(ModuleSignatureVerifier.verify(module: cut, trust: trust).failure?.detailedCode,
                       "sig.malformed-trailer/trailer.sig-len-too-large")
    }

    func testForbidsUnsignedModule() throws {
        let orig = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(orig)
        let elf = Array(orig[t.contentRange])
        XCTAssertEqual(Array(elf.prefix(4)), [0x7f, 0x45, 0x4c, 0x46])
        let f = assertDenied(ModuleSignatureVerifier.verify(module: elf, trust: try Shared.debianTrust()), "sig.unsigned")
        XCTAssertEqual(f?.message, "module is not signed (no signature magic)")
    }

    func testForbidsGarbagePKCS7() throws {
        let orig = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(orig)
        var rng = SeededRNG(seed: 0x29E53F_0001)
        for length in [1, 2, 16, 300, 4096] {
            let garbage = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let m = Array(orig[t.contentRange]) + garbage + ModuleSignatureTrailer.encode(signatureLength: UInt32(length))
            assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")
        }
        // A well-formed DER that is not SignedData: the certificate itself.
        let der = try Shared.debianCertificate().der
        let m = Array(orig[t.contentRange]) + der + ModuleSignatureTrailer.encode(signatureLength: UInt32(der.count))
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")
        // Trailing bytes after a valid message inside sig_len.
        let sig = Array(orig[t.signatureRange]) + [0, 0]
        let padded = Array(orig[t.contentRange]) + sig + ModuleSignatureTrailer.encode(signatureLength: UInt32(sig.count))
        let f = assertDenied(ModuleSignatureVerifier.verify(module: padded, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")
        XCTAssertTrue(f?.message.contains("trailing") ?? false)
    }

    // MARK: - Signers and deny lists

    func testForbidsUnknownSigner() throws {
        let signer = try Shared.freshSigner()
        let orig = try Shared.vsock()
        let resigned = try signer.sign(module: orig, existingSignature: .replace)
        let f = assertDenied(ModuleSignatureVerifier.verify(module: resigned, trust: try Shared.debianTrust()), "sig.unknown-signer")
        if case .unknownSigner(.issuerAndSerial(let issuer, let serial))? = f {
            XCTAssertEqual(issuer, signer.certificate.issuer)
            XCTAssertEqual(serial, signer.certificate.serialHex)
        } else {
            XCTFail("\(String(describing: f))")
        }
        // And Debian's own module is unknown to a store holding only the fresh key.
        assertDenied(ModuleSignatureVerifier.verify(module: orig, trust: try Shared.freshTrust()), "sig.unknown-signer")
        assertDenied(ModuleSignatureVerifier.verify(module: orig, trust: TrustStore([])), "sig.unknown-signer")
    }

    func testForbidsDenyListedCertificate() throws {
        let cert = try Shared.debianCertificate()
        let deny = DenyList(certificateTBSHashes: [cert.tbsHash])
        let f = assertDenied(ModuleSignatureVerifier.verify(module: try Shared.vsock(), trust: TrustStore([cert]), denyList: deny),
                             "sig.signer-denied")
        XCTAssertEqual(f, .signerCertificateDenied(tbsHash: cert.tbsHash))
        // Another certificate's hash does not deny it.
        let other = DenyList(certificateTBSHashes: [try Shared.freshKey.get().load().1.tbsHash])
        XCTAssertTrue(ModuleSignatureVerifier.verify(module: try Shared.vsock(), trust: TrustStore([cert]), denyList: other).isValid)
    }

    func testForbidsDenyListedModuleContentAcrossResigning() throws {
        let orig = try Shared.vsock()
        let ok = try ModuleSignatureVerifier.verify(module: orig, trust: try Shared.debianTrust()).get()
        let deny = DenyList(moduleContentHashes: [ok.contentHash])
        assertDenied(ModuleSignatureVerifier.verify(module: orig, trust: try Shared.debianTrust(), denyList: deny), "sig.module-denied")
        // The same content re-signed with another key and digest is still denied.
        var signer = try Shared.freshSigner()
        signer.digest = .sha512
        let resigned = try signer.sign(module: orig, existingSignature: .replace)
        let f = assertDenied(ModuleSignatureVerifier.verify(module: resigned, trust: try Shared.freshTrust(), denyList: deny),
                             "sig.module-denied")
        XCTAssertEqual(f, .moduleHashDenied(ok.contentHash))
        // Another module is not affected.
        let other = try Fixtures.readFile(Fixtures.sampleModules(3)[1])
        XCTAssertTrue(ModuleSignatureVerifier.verify(module: other, trust: try Shared.debianTrust(), denyList: deny).isValid)
    }

    func testForbidsSignedAttributes() throws {
        var signer = try Shared.freshSigner()
        signer._includeSignedAttributes = true
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.signed-attributes")
        // OpenSSL alone accepts it (CMS allows signed attributes); only the kernel's rule refuses it.
        XCTAssertTrue(m.withUnsafeBytes { OpenSSLBaseline.verify(module: $0, certificate: signer.certificate) })
    }

    func testForbidsEmbeddedCertificates() throws {
        var signer = try Shared.freshSigner()
        signer._includeCertificate = true
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        let f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.embedded-certificates")
        XCTAssertEqual(f, .embeddedCertificates(1))
    }

    func testForbidsEmbeddedContent() throws {
        var signer = try Shared.freshSigner()
        signer._embedContent = true
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.content-not-detached")
    }

    func testForbidsAlteredOuterDigestAlgorithms() throws {
        // SignedData.digestAlgorithms is not signed; the kernel ignores it, we require it to be
        // exactly the signer's digest. Offset 30 of Debian's message is its sha256 OID (30 0b 06 09 ...).
        var m = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(m)
        XCTAssertEqual(Array(m[(t.signatureRange.lowerBound + 26)..<(t.signatureRange.lowerBound + 32)]), [0x31, 0x0d, 0x30, 0x0b, 0x06, 0x09])
        m[t.signatureRange.lowerBound + 40] = 0x03  // sha256 → sha512 in the outer set only
        let f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")
        XCTAssertTrue(f?.message.contains("digestAlgorithms") ?? false, "\(String(describing: f))")
        // Versions: the kernel accepts SignedData/SignerInfo version 1 (issuer+serial) or 3 (SKID) only.
        m = try Shared.vsock()
        m[t.signatureRange.lowerBound + 25] = 2  // SignedData version 1 → 2
        XCTAssertTrue(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")?
            .message.contains("version") ?? false)
        m = try Shared.vsock()
        m[t.signatureRange.lowerBound + 64] = 3  // SignerInfo version 1 → 3 with issuer+serial
        XCTAssertTrue(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")?
            .message.contains("version") ?? false)
        // rsaEncryption's NULL parameters turned into an empty OCTET STRING.
        m = try Shared.vsock()
        XCTAssertEqual(Array(m[(t.signatureRange.lowerBound + 163)..<(t.signatureRange.lowerBound + 165)]), [0x05, 0x00])
        m[t.signatureRange.lowerBound + 163] = 0x04
        XCTAssertTrue(assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.debianTrust()), "sig.malformed-pkcs7")?
            .message.contains("signatureAlgorithm") ?? false)
    }

    func testForbidsTwoSigners() throws {
        var signer = try Shared.freshSigner()
        signer._addSecondSigner = true
        let m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        let f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.signer-count")
        XCTAssertEqual(f, .signerCount(2))
    }

    func testRandomCorruptionOfSignatureNeverVerifies() throws {
        // Every single-byte change anywhere in the PKCS#7 message or trailer must be refused
        // (and must not crash). Deterministic: every 3rd byte, XOR with a varying mask.
        let orig = try Shared.vsock()
        let trust = try Shared.debianTrust()
        let t = try ModuleSignatureTrailer.parse(orig)
        var codes: [String: Int] = [:]
        for i in t.signatureRange.lowerBound..<orig.count {
            for mask: UInt8 in [0x01, 0x80, UInt8(truncatingIfNeeded: i) | 0x02] {
                var m = orig
                m[i] ^= mask
                let v = ModuleSignatureVerifier.verify(module: m, trust: trust)
                XCTAssertFalse(v.isValid, "byte \(i) ^ \(mask) verified")
                codes[v.code, default: 0] += 1
            }
        }
        // Several distinct reasons appear: structure, signer, signature, trailer.
        XCTAssertGreaterThanOrEqual(codes.count, 4, "\(codes)")
        print("single-byte corruption outcomes: \(codes.sorted { $0.key < $1.key })")
    }

    func testMinimumDigest() throws {
        var signer = try Shared.freshSigner()
        signer.digest = .sha1
        let m: [UInt8]
        do {
            m = try signer.sign(module: try Shared.vsock(), existingSignature: .replace)
        } catch {
            throw XCTSkip("OpenSSL refuses SHA-1 signing here: \(error)")
        }
        let f = assertDenied(ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust()), "sig.digest-too-weak")
        XCTAssertEqual(f, .digestTooWeak(.sha1, minimum: .sha256))
        let ok = ModuleSignatureVerifier.verify(module: m, trust: try Shared.freshTrust(), minimumDigest: .sha1)
        XCTAssertEqual(try ok.get().digestAlgorithm, .sha1)
        // Debian's sha256 modules fail a sha512 minimum.
        assertDenied(ModuleSignatureVerifier.verify(module: try Shared.vsock(), trust: try Shared.debianTrust(), minimumDigest: .sha512),
                     "sig.digest-too-weak")
    }

    func testFailureCodesAndMessagesAreStable() {
        XCTAssertEqual(SignatureFailure.unsigned.code, "sig.unsigned")
        XCTAssertEqual(SignatureFailure.badSignature.code, "sig.bad-signature")
        XCTAssertEqual(SignatureFailure.digestMismatch.description,
                       "sig.digest-mismatch: signature is valid for different content: the module was modified")
        XCTAssertEqual(SignatureFailure.unknownSigner(.subjectKeyIdentifier("ab")).message, "signer not trusted: subjectKeyIdentifier ab")
    }
}
