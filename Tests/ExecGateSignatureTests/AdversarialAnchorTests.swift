// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of trust-anchor extraction (`execgate keys extract`, the service image's
// `trust kernel-builtin`): the anchors must be exactly the certificates the kernel loads into its
// builtin trusted keyring, i.e. `system_certificate_list` (certs/system_certificates.S, loaded by
// load_system_certificate_list() in certs/system_keyring.c), and nothing else a vmlinux carries.
//
// A vmlinux holds other DER certificates that the kernel does *not* trust for modules: the revoked
// certificates of CONFIG_SYSTEM_REVOCATION_LIST (`revocation_certificate_list`, loaded into the
// blacklist keyring: the kernel *refuses* their signatures), the regulatory-database keys of a
// built-in cfg80211 (`.builtin_regdb_keys`), certificates in built-in firmware (CONFIG_EXTRA_FIRMWARE)
// or in an embedded initramfs, a driver's test vectors. The image is the operator's, but the
// extraction must not turn any of those into a module-signing anchor. Each test plants such a
// certificate into the real Debian 6.1 vmlinux.

import ExecGateKernelImage
import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class AdversarialAnchorTests: XCTestCase {
    private func le64(_ v: Int) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// The real vmlinux with `bytes` written at `offset`.
    private func planted(_ bytes: [UInt8], at offset: Int) throws -> [UInt8] {
        var v = try Shared.debianImage.get().vmlinux
        XCTAssertLessThan(offset + bytes.count, v.count)
        v.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        return v
    }

    private func anchors(_ vmlinux: [UInt8]) throws -> [Certificate] {
        try KernelImage.load(vmlinux).builtinCertificates()
    }

    func testTheRealListIsFoundWithItsSizeFields() throws {
        // Control: Debian's list is one certificate followed (after .align 8) by
        // system_certificate_list_size and module_cert_size, both its length.
        XCTAssertEqual(try anchors(try Shared.debianImage.get().vmlinux), [try Shared.debianCertificate()])
    }

    /// Attack: a certificate anywhere else in the image (here 16 MiB in, as built-in firmware or an
    /// embedded initramfs would carry it). A scan for "any DER certificate" makes it an anchor.
    func testCertificateOutsideTheSystemListIsNoAnchor() throws {
        let foreign = try Shared.freshKey.get().load().1
        let v = try planted(foreign.der, at: 16 << 20)
        XCTAssertEqual(try anchors(v), [try Shared.debianCertificate()])
    }

    /// Attack: the shape of `revocation_certificate_list` (certs/revocation_certificates.S: .align 8,
    /// the certificates, .align 8, the u64 revocation_certificate_list_size; no module_cert_size).
    /// The kernel loads these into the blacklist keyring (load_revocation_certificate_list()):
    /// trusting them would accept exactly the modules the kernel refuses.
    func testRevocationListIsNoAnchor() throws {
        let revoked = try Shared.freshKey.get().load().1
        let start = (16 << 20)
        let padded = (revoked.der.count + 7) / 8 * 8
        let list = revoked.der + [UInt8](repeating: 0, count: padded - revoked.der.count) + le64(revoked.der.count)
            + Array("revocation".utf8)
        let v = try planted(list, at: start)
        XCTAssertEqual(try anchors(v), [try Shared.debianCertificate()])
    }

    /// Attack: a second run with the full system-list shape (both size fields right). Which one the
    /// kernel loads cannot be told without its symbols: refuse instead of trusting both.
    func testTwoCandidateSystemListsAreRefused() throws {
        let other = try Shared.freshKey.get().load().1
        let padded = (other.der.count + 7) / 8 * 8
        let list = other.der + [UInt8](repeating: 0, count: padded - other.der.count) + le64(other.der.count) + le64(other.der.count)
        let v = try planted(list, at: 16 << 20)
        XCTAssertThrowsError(try anchors(v)) { e in
            XCTAssertEqual((e as? KernelImageError)?.code, .ambiguousCertificateList, "\(e)")
        }
    }

    /// Attack: the real list's size field altered (a certificate appended past the list's end does
    /// not become part of it): system_certificate_list_size must be the run's length exactly.
    func testSizeFieldThatDoesNotMatchTheRunIsNoList() throws {
        let vmlinux = try Shared.debianImage.get().vmlinux
        let cert = try Shared.debianCertificate()
        guard let at = vmlinux.firstRange(of: cert.der)?.lowerBound else { return XCTFail("Debian certificate not in vmlinux") }
        let sizeAt = (at + cert.der.count + 7) / 8 * 8
        XCTAssertEqual(Array(vmlinux[sizeAt..<(sizeAt + 16)]), le64(cert.der.count) + le64(cert.der.count))
        var v = vmlinux
        v.replaceSubrange(sizeAt..<(sizeAt + 8), with: le64(cert.der.count + 8))
        XCTAssertThrowsError(try anchors(v)) { e in
            XCTAssertEqual((e as? KernelImageError)?.code, .noCertificates, "\(e)")
        }
    }

    /// Attack (round 14): an anchor whose key the guest kernel cannot verify with. ExecGate
    /// checked module signatures with OpenSSL, which takes an RSA key of any size and any named
    /// curve; the kernel's X.509 parser takes RSA and the NIST curves P-192/P-256/P-384 only
    /// (x509_extract_key_data(), 6.1), and verifies with RSA keys of 512, 1024, 1536, 2048, 3072
    /// or 4096 bits only (crypto/rsa.c rsa_check_key_length(), the modulus counted in 64-bit
    /// limbs). Booted on Debian 6.1 and 6.12 with such a certificate in the list (the helper's
    /// rewritten vmlinux), a module it signed was refused by the kernel (EKEYREJECTED/EINVAL) and
    /// allowed by ExecGate. Rule: `Certificate.kernelKeyProblem` names the reason; `keys extract`
    /// drops such a certificate from the list (as the self-signature check drops its own), and
    /// `--trust` and a policy's `trust` line refuse it. Asserted on generated keys: RSA-3000
    /// (3008 bits in limbs) refused; RSA-2047 (2048 in limbs), RSA-2048, P-256, P-384 and
    /// Debian's RSA-4096 build key taken.
    func testAnAnchorTheKernelCannotVerifyWithIsNamed() throws {
        let rsa3000 = try GeneratedSigningKey.generateRSA(bits: 3000, commonName: "odd size").load().1
        XCTAssertEqual(rsa3000.publicKeyBits, 3000)
        let problem = try XCTUnwrap(rsa3000.kernelKeyProblem, "an RSA-3000 anchor was taken")
        XCTAssertTrue(problem.contains("3000 bits") && problem.contains("rsa_check_key_length"), problem)
        let taken: [(String, Certificate)] = [
            ("RSA-2047", try GeneratedSigningKey.generateRSA(bits: 2047).load().1),
            ("RSA-2048", try Shared.freshKey.get().load().1),
            ("P-256", try GeneratedSigningKey.generateECDSA(curve: .p256).load().1),
            ("P-384", try GeneratedSigningKey.generateECDSA(curve: .p384).load().1),
            ("Debian's build key", try Shared.debianCertificate()),
        ]
        for (what, c) in taken { XCTAssertNil(c.kernelKeyProblem, what) }
        // What x509_cert_parse() refuses before any key (-EBADMSG), OpenSSL reads: a notBefore
        // UTCTime in 1960 (x509_decode_time(): year < 1970) and one with month 13.
        let fresh = try Shared.freshKey.get().load().1
        let at = try XCTUnwrap((0..<(fresh.der.count - 15)).first { fresh.der[$0] == 0x30 && fresh.der[$0 + 2] == 0x17 && fresh.der[$0 + 3] == 0x0d },
                               "the validity's UTCTime notBefore")
        for (edit, expected) in [((at + 4, Array("60".utf8)), "year 1960"), ((at + 6, Array("13".utf8)), "month 13")] {
            var der = fresh.der
            der.replaceSubrange(edit.0..<edit.0 + 2, with: edit.1)
            let c = try Certificate(derEncoded: der)
            let why = try XCTUnwrap(c.kernelKeyProblem, "\(expected): taken")
            XCTAssertTrue(why.contains("notBefore") && why.contains(expected) && why.contains("x509_decode_time"), why)
        }
    }

    /// Attack (round 14): two certificates of one subject and key id in the builtin list. The
    /// kernel's keyring names a key `subject: key id` (x509_key_preparse(), the subject as
    /// x509_fabricate_name() makes it) and a later key of the same description displaces the
    /// earlier (booted: a module signed by the first was refused, by the second loaded); both were
    /// anchors here. Rule: `Certificate.kernelKeyDescription` as the kernel writes it, and
    /// `BuiltinCertificates.asLoaded` keeps the last of each description. Asserted: the
    /// descriptions of Debian's key and of generated keys (the CN alone when it starts with the
    /// O, else "O: CN"), and the list as loaded when two descriptions collide.
    func testTheLaterOfTwoKeysTheKernelDescribesAlikeIsTheAnchor() throws {
        let debian = try Shared.debianCertificate()
        let skid = try XCTUnwrap(debian.subjectKeyIdentifierHex)
        XCTAssertEqual(debian.kernelKeyDescription.map { String(decoding: $0, as: UTF8.self) }, "Build time autogenerated kernel key: " + skid)
        let fresh = try Shared.freshKey.get().load().1  // CN "ExecGate test key", O "ExecGate"
        XCTAssertEqual(fresh.kernelKeyDescription.map { String(decoding: $0, as: UTF8.self) }, "ExecGate test key: " + (fresh.subjectKeyIdentifierHex ?? ""))
        let other = try GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "module key").load().1
        XCTAssertEqual(other.kernelKeyDescription.map { String(decoding: $0, as: UTF8.self) }, "ExecGate: module key: " + (other.subjectKeyIdentifierHex ?? ""))
        // Distinct descriptions: all kept, in order.
        XCTAssertEqual(BuiltinCertificates.asLoaded([debian, fresh, other]), [debian, fresh, other])
        // debian and other described alike: the later (other) displaces the earlier.
        let same: (Certificate) -> [UInt8]? = { $0 == fresh ? Array("a".utf8) : Array("b".utf8) }
        XCTAssertEqual(BuiltinCertificates.asLoaded([debian, fresh, other], description: same), [fresh, other])
    }
}
