// SPDX-License-Identifier: Apache-2.0
//
// Module signature verification as the kernel does it (kernel/module/signing.c →
// verify_pkcs7_signature → crypto/asymmetric_keys/pkcs7_*.c), over a borrowed buffer.
//
// Order: cheap structural checks first, crypto last.
//
//   trailer (mod_check_sig) → DER CMS parse, no trailing bytes → SignedData / id-data / detached
//   → exactly one SignerInfo, no certificates, no CRLs → no signed or unsigned attributes
//   → digest known and >= minimum → signer matches an anchor (issuer+serial or SKID)
//   → anchor not deny-listed → hash content (one pass) → content not deny-listed
//   → public-key verify of the digest.
//
// The content is hashed once, and the signature is checked against that digest, never over the
// content again: the kernel does the same. mod_verify_sig() (kernel/module/signing.c) →
// verify_pkcs7_signature() (certs/system_keyring.c) → pkcs7_supply_detached_data() →
// verify_pkcs7_message_sig() → pkcs7_verify() (crypto/asymmetric_keys/pkcs7_verify.c), which for
// VERIFYING_MODULE_SIGNATURE refuses authenticatedAttributes ("Invalid module sig (has
// authattrs)") → pkcs7_verify_one() → pkcs7_digest(): one crypto_shash_digest() of the data into
// sig->digest (with authattrs — never for a module — it would compare that digest with the
// messageDigest attribute and hash the attributes instead) → public_key_verify_signature() over
// sig->digest. Here: Digest over the content (the deny list's key too), then EVP_PKEY_verify of
// that digest (COpenSSLShim egs_verify_signature: PKCS#1 v1.5 DigestInfo{digestAlgorithm, digest},
// as the kernel's rsa-pkcs1pad checks it). `verifyWithDigests` hashes the content in the same
// pass as the whole file (the service's request digest names the file's; Verifier.swift).
//
// Differences from the kernel, all stricter: embedded certificates are refused (the kernel would
// ignore them when the signer is a builtin key; sign-file never writes any), unsigned attributes
// and CRLs are refused, SignedData.digestAlgorithms must be exactly the signer's digest and
// algorithm parameters absent or NULL (the kernel ignores those unauthenticated bytes, so flipping
// one would otherwise still verify), and a SignerInfo must match a trust anchor directly (no
// intermediate keys). SignedData/SignerInfo versions are checked as the kernel checks them.
// Like `openssl cms -verify -noverify`, no validity period, key usage or chain checks: the kernel
// does not check those for module signatures either.

import COpenSSLShim
import _ExecGateInternals

// MARK: - CMS handle (internal)

/// Owns a parsed `CMS_ContentInfo*`.
final class CMSMessage {
    let handle: OpaquePointer

    /// Parses DER that must occupy all of `der`.
    init(der: UnsafeRawBufferPointer) throws(SignatureFailure) {
        guard let base = der.baseAddress, der.count > 0 else { throw SignatureFailure.malformedPKCS7("empty") }
        var consumed = 0
        guard let h = egs_cms_from_der(base.assumingMemoryBound(to: UInt8.self), der.count, &consumed) else {
            throw SignatureFailure.malformedPKCS7("not DER CMS ContentInfo: \(lastOpenSSLError())")
        }
        handle = h
        // Trailing bytes inside sig_len would be unauthenticated data hiding in the trailer.
        guard consumed == der.count else {
            throw SignatureFailure.malformedPKCS7("\(der.count - consumed) trailing bytes after the DER message")
        }
    }

    deinit { egs_cms_free(handle) }
}

// MARK: - Verifier

public enum ModuleSignatureVerifier {
    /// Verifies the signature appended to `module` against `trust`.
    ///
    /// - Parameters:
    ///   - module: the whole signed `.ko` (borrowed; not copied).
    ///   - trust: the anchors a signer must be.
    ///   - denyList: certificates and module contents to refuse.
    ///   - minimumDigest: the weakest digest accepted (default SHA-256; pass `.sha1` to allow all).
    /// - Returns: `.success(VerifiedSignature)` or `.failure(SignatureFailure)`; never traps on input.
    public static func verify(
        module: UnsafeRawBufferPointer,
        trust: TrustStore,
        denyList: DenyList = .empty,
        minimumDigest: DigestAlgorithm = .sha256
    ) -> SignatureVerdict {
        // 1. Trailer.
        let trailer: ModuleSignatureTrailer
        do {
            trailer = try ModuleSignatureTrailer.parse(module)
        } catch {
            if error.code == .noMagic { return .failure(.unsigned) }
            return .failure(.malformedTrailer(error))
        }
        let content = UnsafeRawBufferPointer(rebasing: module[trailer.contentRange])
        let signature = UnsafeRawBufferPointer(rebasing: module[trailer.signatureRange])
        do {
            return try verifyDetached(content: content, signature: signature, trailer: trailer, trust: trust,
                                      denyList: denyList, minimumDigest: minimumDigest)
        } catch {
            return .failure(error)
        }
    }

    /// `verify`, plus the SHA-256 of the whole module file (content, signature and trailer) for the
    /// verifier's request digest, computed in the same pass as the content digest: the content is
    /// hashed once (Digest.compute(_:over:prefix:)), before the PKCS#7 checks instead of after them.
    /// A module without a valid trailer has no content digest; its file is hashed alone. The
    /// content's SHA-256 (the bytes before the signature: a module's identity) comes back whenever
    /// the trailer parsed, whatever the verdict: a denial of a deny-listed or untrusted module
    /// still names the content it judged (verdict and audit `module_sha256`).
    public static func verifyWithDigests(
        module: UnsafeRawBufferPointer,
        trust: TrustStore,
        denyList: DenyList = .empty,
        minimumDigest: DigestAlgorithm = .sha256
    ) -> (verdict: SignatureVerdict, fileDigest: Digest, contentDigest: Digest?) {
        let trailer: ModuleSignatureTrailer
        do {
            trailer = try ModuleSignatureTrailer.parse(module)
        } catch {
            let file = Digest.sha256(module)
            if error.code == .noMagic { return (.failure(.unsigned), file, nil) }
            return (.failure(.malformedTrailer(error)), file, nil)
        }
        // The trailer puts the content first (contentRange starts at 0), so the content is a prefix.
        let (content, file) = Digest.compute(.sha256, over: module, prefix: trailer.contentRange.upperBound)
        let signature = UnsafeRawBufferPointer(rebasing: module[trailer.signatureRange])
        let contentBytes = UnsafeRawBufferPointer(rebasing: module[trailer.contentRange])
        do {
            return (try verifyDetached(content: contentBytes, signature: signature, trailer: trailer, trust: trust,
                                       denyList: denyList, minimumDigest: minimumDigest, contentHash: content), file, content)
        } catch {
            return (.failure(error), file, content)
        }
    }

    /// Array convenience.
    public static func verify(
        module: [UInt8], trust: TrustStore, denyList: DenyList = .empty, minimumDigest: DigestAlgorithm = .sha256
    ) -> SignatureVerdict {
        module.withUnsafeBytes { verify(module: $0, trust: trust, denyList: denyList, minimumDigest: minimumDigest) }
    }

    static func verifyDetached(
        content: UnsafeRawBufferPointer, signature: UnsafeRawBufferPointer, trailer: ModuleSignatureTrailer,
        trust: TrustStore, denyList: DenyList, minimumDigest: DigestAlgorithm, contentHash precomputed: Digest? = nil
    ) throws(SignatureFailure) -> SignatureVerdict {
        // 2. Structure of the PKCS#7 message: its size in elements first, so a crafted message
        // cannot make OpenSSL's parser allocate without bound (DER.boundedEncodingProblem).
        if let problem = DER.boundedEncodingProblem(signature) { throw .malformedPKCS7(problem) }
        let cms = try CMSMessage(der: signature)
        let h = cms.handle
        guard egs_cms_is_signed_data(h) != 0 else { throw .malformedPKCS7("content type is not signedData") }
        // Per RFC 5652 § 5.2, eContentType is id-data for a plain detached signature; the kernel's
        // pkcs7 parser requires OID_data for modules (pkcs7_check_content_type).
        guard egs_cms_econtent_is_data(h) != 0 else { throw .malformedPKCS7("eContentType is not id-data") }
        // The kernel's pkcs7_supply_detached_data refuses a message that already carries data.
        guard egs_cms_is_detached(h) == 1 else { throw .contentNotDetached }
        let signers = Int(egs_cms_signer_count(h))
        guard signers == 1 else { throw .signerCount(signers) }
        let certs = Int(egs_cms_cert_count(h))
        guard certs == 0 else { throw .embeddedCertificates(certs) }
        let crls = Int(egs_cms_crl_count(h))
        guard crls == 0 else { throw .embeddedCRLs(crls) }
        // We confirmed a count of exactly one above, so index 0 exists.
        guard let si = egs_cms_signer(h, 0) else { throw .malformedPKCS7("no SignerInfo") }
        // The kernel (pkcs7_verify → pkcs7_digest, VERIFYING_MODULE_SIGNATURE) rejects any
        // authenticatedAttributes for modules: with attributes the signature covers the attributes
        // (including messageDigest), not the module, and sign-file uses CMS_NOATTR. An empty but
        // present attribute set counts as present (count 0, not -1).
        guard egs_si_signed_attr_count(si) < 0 else { throw .signedAttributesPresent }
        guard egs_si_unsigned_attr_count(si) < 0 else { throw .unsignedAttributesPresent }

        // 3. Digest algorithm.
        var rawNID: Int32 = 0
        let md = egs_si_digest(si, &rawNID)
        guard let digestAlgorithm = DigestAlgorithm(rawValue: Int(md)) else {
            throw .unsupportedDigest(shimString { egs_nid_name(rawNID, $0, $1) } ?? "nid \(rawNID)")
        }
        guard digestAlgorithm >= minimumDigest else { throw .digestTooWeak(digestAlgorithm, minimum: minimumDigest) }
        // The unauthenticated parts OpenSSL does not check: versions (as the kernel checks them),
        // digestAlgorithms, algorithm parameters. See DER.signedDataShapeProblem.
        if let problem = DER.signedDataShapeProblem(signature, digest: digestAlgorithm) {
            throw .malformedPKCS7(problem)
        }

        // 4. Signer: the identifier must be an anchor's issuer+serial or SKID byte for byte, as the
        // kernel's find_asymmetric_key() compares key ids (egs_si_matches_cert).
        let matching = trust.anchors.filter { egs_si_matches_cert(si, $0.handle) != 0 }
        guard !matching.isEmpty else { throw .unknownSigner(signerIdentifier(si)) }
        // Conservative: if any anchor the identifier designates is deny-listed, refuse.
        if let denied = matching.first(where: { denyList.certificateTBSHashes.contains($0.tbsHash) }) {
            throw .signerCertificateDenied(tbsHash: denied.tbsHash)
        }

        // 5. One hash pass over the content serves both the deny list (SHA-256) and the signature
        // when the signer used SHA-256 (the common case).
        let contentHash = precomputed ?? Digest.sha256(content)
        if denyList.moduleContentHashes.contains(contentHash) { throw .moduleHashDenied(contentHash) }
        let signedDigest = digestAlgorithm == .sha256 ? contentHash : Digest.compute(digestAlgorithm, over: content)

        // 6. Public-key verification against each matching anchor (normally exactly one).
        var firstFailure: SignatureFailure?
        for anchor in matching {
            let r = signedDigest.bytes.withUnsafeBufferPointer {
                egs_verify_signature(si, anchor.handle, md, $0.baseAddress, $0.count)
            }
            switch r {
            case Int32(EGS_VERIFY_OK):
                // The identifier matched this anchor, so it *is* the anchor's issuer+serial or
                // SKID: take the strings precomputed in Certificate instead of re-rendering them.
                let identifier: SignerIdentifier
                if egs_si_signer_id_kind(si) == 1, let skid = anchor.subjectKeyIdentifierHex {
                    identifier = .subjectKeyIdentifier(skid)
                } else {
                    identifier = .issuerAndSerial(issuer: anchor.issuer, serialHex: anchor.serialHex)
                }
                return .success(VerifiedSignature(
                    signer: anchor, signerIdentifier: identifier, digestAlgorithm: digestAlgorithm,
                    contentHash: contentHash, trailer: trailer))
            case Int32(EGS_VERIFY_DIGEST_MISMATCH): firstFailure = firstFailure ?? .digestMismatch
            case Int32(EGS_VERIFY_ALG_MISMATCH): firstFailure = firstFailure ?? .signatureAlgorithmMismatch
            default: firstFailure = firstFailure ?? .badSignature
            }
        }
        // `matching` is non-empty (checked above), so the loop set firstFailure.
        throw firstFailure ?? .badSignature
    }

    static func signerIdentifier(_ si: OpaquePointer) -> SignerIdentifier {
        if egs_si_signer_id_kind(si) == 1 {
            return .subjectKeyIdentifier(Hex.encode(shimBytes { egs_si_signer_skid(si, $0, $1) } ?? []))
        }
        var negative: Int32 = 0
        let serial = shimBytes { egs_si_signer_serial(si, $0, $1, &negative) } ?? []
        return .issuerAndSerial(
            issuer: shimString { egs_si_signer_issuer(si, $0, $1) } ?? "",
            serialHex: integerHex(serial, negative: negative != 0))
    }
}

// MARK: - Baseline

/// The same verification done by OpenSSL alone (`openssl cms -verify -binary -noverify -content`),
/// for benchmarks: ExecGate's verifier should cost no more than ~1.2× this.
public enum OpenSSLBaseline {
    /// `CMS_verify(CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY)` of the module's detached signature
    /// with `certificate` supplied as the signer. True when OpenSSL accepts.
    /// Returns false for unsigned or malformed trailers too.
    public static func verify(module: UnsafeRawBufferPointer, certificate: Certificate) -> Bool {
        guard let t = try? ModuleSignatureTrailer.parse(module), let base = module.baseAddress else { return false }
        let p = base.assumingMemoryBound(to: UInt8.self)
        return egs_baseline_cms_verify(
            p + t.signatureRange.lowerBound, t.signatureRange.count, p, t.contentRange.count, certificate.handle) == 1
    }
}
