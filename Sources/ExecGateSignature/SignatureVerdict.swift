// SPDX-License-Identifier: Apache-2.0
//
// The outcome of verifying a module signature: a value, never a throw.

// MARK: - Signer identifier

/// How a SignerInfo names its signer (RFC 5652 § 5.3):
///
///     SignerIdentifier ::= CHOICE {
///         issuerAndSerialNumber IssuerAndSerialNumber,
///         subjectKeyIdentifier [0] SubjectKeyIdentifier }
public enum SignerIdentifier: Sendable, Hashable, CustomStringConvertible {
    /// Issuer (one line) and serial (hex).
    case issuerAndSerial(issuer: String, serialHex: String)
    /// Subject key identifier (hex).
    case subjectKeyIdentifier(String)

    public var description: String {
        switch self {
        case .issuerAndSerial(let issuer, let serial): return "issuer \"\(issuer)\" serial \(serial)"
        case .subjectKeyIdentifier(let skid): return "subjectKeyIdentifier \(skid)"
        }
    }
}

// MARK: - Success

/// What a successful verification established.
public struct VerifiedSignature: Sendable {
    /// The trust anchor whose key verified the signature.
    public let signer: Certificate
    /// How the SignerInfo named it.
    public let signerIdentifier: SignerIdentifier
    /// The SignerInfo's digest algorithm.
    public let digestAlgorithm: DigestAlgorithm
    /// SHA-256 of the content (the module bytes before the signature) — the deny-list key.
    public let contentHash: Digest
    /// Where the parts are in the verified buffer.
    public let trailer: ModuleSignatureTrailer
}

// MARK: - Failure

/// Why a module signature was refused. Each case has a stable `code` and a human `message`.
public enum SignatureFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// No signature magic: the module is not signed. Code "sig.unsigned".
    case unsigned
    /// The trailer is present but malformed. Code "sig.malformed-trailer".
    case malformedTrailer(ModuleSignatureTrailerError)
    /// The PKCS#7 bytes are not a DER CMS SignedData we accept. Code "sig.malformed-pkcs7".
    case malformedPKCS7(String)
    /// The SignedData embeds the content (the kernel only accepts detached). "sig.content-not-detached".
    case contentNotDetached
    /// Not exactly one SignerInfo. "sig.signer-count".
    case signerCount(Int)
    /// Certificates embedded in the message (sign-file uses CMS_NOCERTS). "sig.embedded-certificates".
    case embeddedCertificates(Int)
    /// CRLs embedded in the message. "sig.embedded-crls".
    case embeddedCRLs(Int)
    /// Signed (authenticated) attributes: the kernel refuses these for modules. "sig.signed-attributes".
    case signedAttributesPresent
    /// Unsigned attributes (sign-file never writes any). "sig.unsigned-attributes".
    case unsignedAttributesPresent
    /// A digest algorithm ExecGate does not implement (OpenSSL short name). "sig.unsupported-digest".
    case unsupportedDigest(String)
    /// The digest is weaker than the caller's minimum. "sig.digest-too-weak".
    case digestTooWeak(DigestAlgorithm, minimum: DigestAlgorithm)
    /// No trust anchor matches the SignerInfo's identifier. "sig.unknown-signer".
    case unknownSigner(SignerIdentifier)
    /// The matching anchor's TBSCertificate hash is deny-listed. "sig.signer-denied".
    case signerCertificateDenied(tbsHash: Digest)
    /// The module content hash is deny-listed. "sig.module-denied".
    case moduleHashDenied(Digest)
    /// The signatureAlgorithm does not fit the anchor's key or the digest. "sig.algorithm-mismatch".
    case signatureAlgorithmMismatch
    /// The signature is genuine (opens under the key) but over other content. "sig.digest-mismatch".
    case digestMismatch
    /// The signature does not verify under the anchor's key. "sig.bad-signature".
    case badSignature

    /// Stable short machine code.
    public var code: String {
        switch self {
        case .unsigned: return "sig.unsigned"
        case .malformedTrailer: return "sig.malformed-trailer"
        case .malformedPKCS7: return "sig.malformed-pkcs7"
        case .contentNotDetached: return "sig.content-not-detached"
        case .signerCount: return "sig.signer-count"
        case .embeddedCertificates: return "sig.embedded-certificates"
        case .embeddedCRLs: return "sig.embedded-crls"
        case .signedAttributesPresent: return "sig.signed-attributes"
        case .unsignedAttributesPresent: return "sig.unsigned-attributes"
        case .unsupportedDigest: return "sig.unsupported-digest"
        case .digestTooWeak: return "sig.digest-too-weak"
        case .unknownSigner: return "sig.unknown-signer"
        case .signerCertificateDenied: return "sig.signer-denied"
        case .moduleHashDenied: return "sig.module-denied"
        case .signatureAlgorithmMismatch: return "sig.algorithm-mismatch"
        case .digestMismatch: return "sig.digest-mismatch"
        case .badSignature: return "sig.bad-signature"
        }
    }

    /// Code plus the trailer sub-code where there is one ("sig.malformed-trailer/trailer.sig-len-zero").
    public var detailedCode: String {
        if case .malformedTrailer(let e) = self { return "\(code)/\(e.code)" }
        return code
    }

    /// One human sentence.
    public var message: String {
        switch self {
        case .unsigned: return "module is not signed (no signature magic)"
        case .malformedTrailer(let e): return "malformed signature trailer: \(e.reason)"
        case .malformedPKCS7(let d): return "malformed PKCS#7 signature: \(d)"
        case .contentNotDetached: return "PKCS#7 message embeds its content; module signatures must be detached"
        case .signerCount(let n): return "PKCS#7 message has \(n) signers, exactly one is required"
        case .embeddedCertificates(let n): return "PKCS#7 message embeds \(n) certificate(s); module signatures carry none"
        case .embeddedCRLs(let n): return "PKCS#7 message embeds \(n) CRL(s)"
        case .signedAttributesPresent: return "PKCS#7 signer has authenticated attributes, which the kernel rejects for modules"
        case .unsignedAttributesPresent: return "PKCS#7 signer has unauthenticated attributes"
        case .unsupportedDigest(let n): return "unsupported digest algorithm \(n)"
        case .digestTooWeak(let a, let m): return "digest \(a) is weaker than the required \(m)"
        case .unknownSigner(let id): return "signer not trusted: \(id)"
        case .signerCertificateDenied(let h): return "signer certificate is deny-listed (tbs:\(h.hex))"
        case .moduleHashDenied(let h): return "module content is deny-listed (\(h))"
        case .signatureAlgorithmMismatch: return "signature algorithm does not match the signer's key or digest"
        case .digestMismatch: return "signature is valid for different content: the module was modified"
        case .badSignature: return "signature does not verify under the signer's key"
        }
    }

    public var description: String { "\(code): \(message)" }
}

/// The verdict: `.success` with what was established, or `.failure` with the reason.
public typealias SignatureVerdict = Result<VerifiedSignature, SignatureFailure>

extension Result where Success == VerifiedSignature, Failure == SignatureFailure {
    /// True for `.success`.
    public var isValid: Bool { if case .success = self { return true } else { return false } }
    /// The failure, if any.
    public var failure: SignatureFailure? { if case .failure(let f) = self { return f } else { return nil } }
    /// "ok" or the failure code.
    public var code: String { failure?.code ?? "ok" }
}

// MARK: - Deny list

/// Things to refuse even when correctly signed by a trusted anchor.
///
/// - `certificateTBSHashes`: SHA-256 of a certificate's TBSCertificate, the kernel's `tbs:` entries
///   (`.blacklist` keyring). Hashing the TBS rather than the whole certificate catches the same
///   key+identity re-issued with a different outer signature encoding.
/// - `moduleContentHashes`: SHA-256 of the module content *before* the signature (the bytes the
///   signature covers). This survives re-signing: a known-bad module re-signed with another key,
///   another digest, or by issuer+serial vs. SKID still has the same content hash, whereas a hash of
///   the whole file would change with every signature.
public struct DenyList: Sendable {
    public var certificateTBSHashes: Set<Digest>
    public var moduleContentHashes: Set<Digest>

    public init(certificateTBSHashes: Set<Digest> = [], moduleContentHashes: Set<Digest> = []) {
        self.certificateTBSHashes = certificateTBSHashes
        self.moduleContentHashes = moduleContentHashes
    }

    public static let empty = DenyList()
}
