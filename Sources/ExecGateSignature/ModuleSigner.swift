// SPDX-License-Identifier: Apache-2.0
//
// Signing modules in exactly scripts/sign-file.c's format, and generating signing keys.

import _ExecGateInternals
import COpenSSLShim
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Errors

/// Why signing failed. Equality compares codes only.
/// Stable machine codes of `SigningError` (`"sign.…"`).
public enum SigningErrorCode: String, ErrorCode {
    /// The input already ends with a signature and `existingSignature` is `.refuse`.
    case alreadySigned = "sign.already-signed"
    /// `.replace` was asked but the existing trailer does not parse.
    case malformedExistingSignature = "sign.malformed-existing-signature"
    case keyDoesNotMatchCertificate = "sign.key-cert-mismatch"
    case emptyModule = "sign.empty-module"
    case signatureTooLarge = "sign.signature-too-large"
    case openSSLFailure = "sign.openssl-failure"
}

/// Equality compares codes only (see `CodedError`).
public typealias SigningError = CodedError<SigningErrorCode>

// MARK: - Signer

public struct ModuleSigner: Sendable {
    /// What to do when the input is already signed.
    public enum ExistingSignature: Sendable {
        /// Fail with `.alreadySigned` (default: silently double-signing yields a module whose
        /// "content" includes the old signature, which no kernel key verifies usefully).
        case refuse
        /// Strip the existing (well-formed) signature and sign the content again.
        case replace
    }

    /// How the SignerInfo names the signer.
    public enum SignerIdentification: Sendable {
        /// issuerAndSerialNumber — sign-file's default.
        case issuerAndSerial
        /// subjectKeyIdentifier — sign-file `-k`.
        case subjectKeyIdentifier
    }

    public let key: PrivateKey
    public let certificate: Certificate
    public var digest: DigestAlgorithm
    public var identification: SignerIdentification
    /// Test-only knobs that produce messages the kernel rejects, to test rejection paths.
    public var _includeSignedAttributes = false
    public var _includeCertificate = false
    public var _embedContent = false
    public var _addSecondSigner = false

    /// - Throws: `.keyDoesNotMatchCertificate` when the key is not the certificate's.
    public init(key: PrivateKey, certificate: Certificate, digest: DigestAlgorithm = .sha256,
                identification: SignerIdentification = .issuerAndSerial) throws(SigningError) {
        guard key.matches(certificate) else {
            throw SigningError(.keyDoesNotMatchCertificate, "private key does not belong to certificate \(certificate.subject)")
        }
        self.key = key
        self.certificate = certificate
        self.digest = digest
        self.identification = identification
    }

    /// The detached DER CMS SignedData over `content`, as sign-file makes it.
    public func signature(over content: UnsafeRawBufferPointer) throws(SigningError) -> [UInt8] {
        var flags: Int32 = 0
        if identification == .subjectKeyIdentifier { flags |= Int32(EGS_SIGN_KEYID) }
        if _includeSignedAttributes { flags |= Int32(EGS_SIGN_ATTRS) }
        if _includeCertificate { flags |= Int32(EGS_SIGN_CERTS) }
        if _embedContent { flags |= Int32(EGS_SIGN_EMBED) }
        if _addSecondSigner { flags |= Int32(EGS_SIGN_TWICE) }
        var out: UnsafeMutablePointer<UInt8>?
        var outLen = 0
        let r = egs_sign_detached(content.baseAddress?.assumingMemoryBound(to: UInt8.self), content.count,
                                  key.handle, certificate.handle, digest.shimValue, flags, &out, &outLen)
        guard r == 0, let out else { throw SigningError(.openSSLFailure, "CMS signing failed: \(lastOpenSSLError())") }
        defer { egs_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: outLen))
    }

    /// Signs a module: returns `content + PKCS#7 + struct module_signature + magic`.
    ///
    /// - Throws: `.emptyModule`, `.alreadySigned`, `.malformedExistingSignature`,
    ///   `.signatureTooLarge`, `.openSSLFailure`.
    public func sign(module: UnsafeRawBufferPointer, existingSignature: ExistingSignature = .refuse) throws(SigningError) -> [UInt8] {
        var content = module
        if ModuleSignatureTrailer.hasMagic(module) {
            switch existingSignature {
            case .refuse:
                throw SigningError(.alreadySigned, "module is already signed; strip or replace its signature first")
            case .replace:
                guard let t = try? ModuleSignatureTrailer.parse(module) else {
                    throw SigningError(.malformedExistingSignature, "module ends with a signature magic but its trailer is malformed")
                }
                content = UnsafeRawBufferPointer(rebasing: module[t.contentRange])
            }
        }
        guard content.count > 0 else { throw SigningError(.emptyModule, "nothing to sign") }
        let sig = try signature(over: content)
        guard let sigLen = UInt32(exactly: sig.count) else {
            throw SigningError(.signatureTooLarge, "signature of \(sig.count) bytes does not fit sig_len")
        }
        var out: [UInt8] = []
        out.reserveCapacity(content.count + sig.count + 40)
        out.append(contentsOf: content)
        out.append(contentsOf: sig)
        out.append(contentsOf: ModuleSignatureTrailer.encode(signatureLength: sigLen))
        return out
    }

    public func sign(module: [UInt8], existingSignature: ExistingSignature = .refuse) throws(SigningError) -> [UInt8] {
        let r: Result<[UInt8], SigningError> = module.withUnsafeBytes { buf in
            Result { () throws(SigningError) in try sign(module: buf, existingSignature: existingSignature) }
        }
        return try r.get()
    }
}

// MARK: - Key generation

/// A freshly generated signing key and self-signed certificate, as PEM.
public struct GeneratedSigningKey: Sendable {
    public let privateKeyPEM: [UInt8]
    public let certificatePEM: [UInt8]

    /// Generates an RSA key and a self-signed X.509 v3 certificate (CA:FALSE, digitalSignature,
    /// subjectKeyIdentifier, authorityKeyIdentifier), like the kernel's certs/default_x509.genkey.
    ///
    /// - Parameters:
    ///   - bits: RSA modulus size (Debian uses 4096; 2048 is quicker for tests).
    ///   - commonName: the certificate's CN (O is "ExecGate").
    ///   - days: validity (the kernel ignores validity for module signatures).
    public static func generateRSA(bits: Int = 4096, commonName: String = "ExecGate module signing key",
                                   days: Int = 36500) throws(CertificateError) -> GeneratedSigningKey {
        let d = try validityDays(days)
        guard let b = Int32(exactly: bits) else {
            throw CertificateError(.generationFailed, "bits out of range")
        }
        return try fromShim("key generation failed") { egs_generate_rsa_selfsigned(b, commonName, d, &$0, &$1, &$2, &$3) }
    }

    /// The key and certificate PEM one of the shim's generators hands out (0: success), the
    /// key's bytes wiped before they are freed.
    static func fromShim(_ failure: String, _ call: (inout UnsafeMutablePointer<CChar>?, inout Int, inout UnsafeMutablePointer<CChar>?, inout Int) -> Int32)
        throws(CertificateError) -> GeneratedSigningKey {
        var k: UnsafeMutablePointer<CChar>?
        var kLen = 0
        var c: UnsafeMutablePointer<CChar>?
        var cLen = 0
        guard call(&k, &kLen, &c, &cLen) == 0, let k, let c else {
            throw CertificateError(.generationFailed, "\(failure): \(lastOpenSSLError())")
        }
        defer {
            // The key PEM is secret: wipe before freeing.
            k.initialize(repeating: 0, count: kLen)
            egs_free(k)
            egs_free(c)
        }
        return GeneratedSigningKey(privateKeyPEM: Array(UnsafeRawBufferPointer(start: k, count: kLen)),
                                   certificatePEM: Array(UnsafeRawBufferPointer(start: c, count: cLen)))
    }

    /// Another self-signed certificate (new serial, this common name) for this key: the same
    /// key under a second certificate, as a rotation or a careless reissue makes one.
    public func reissued(commonName: String, days: Int = 36500) throws(CertificateError) -> GeneratedSigningKey {
        let d = try Self.validityDays(days)
        return try Self.fromShim("certificate for the key failed") { k, kLen, c, cLen in
            privateKeyPEM.withUnsafeBufferPointer { egs_selfsigned_for_key($0.baseAddress, $0.count, commonName, d, &k, &kLen, &c, &cLen) }
        }
    }

    /// Elliptic curves the kernel's ECDSA module signatures accept (crypto/ecdsa.c: NIST P-256, P-384).
    /// The last second an X.509 validity can state (GeneralizedTime 99991231235959Z), Unix time.
    static let lastEncodableSecond = 253_402_300_799

    /// The longest validity, in days from `now`, whose notAfter X.509 can encode (OpenSSL fails
    /// past it with no reason of its own).
    public static func maximumValidityDays(now: Int = Int(time(nil))) -> Int { max(0, (lastEncodableSecond - now) / 86_400) }

    static func validityDays(_ days: Int) throws(CertificateError) -> Int32 {
        let most = maximumValidityDays()
        guard days >= 1, days <= most, let d = Int32(exactly: days) else {
            throw CertificateError(.generationFailed, "a validity of \(days) days: 1…\(most) (notAfter by 9999-12-31, the last date X.509 encodes)")
        }
        return d
    }

    public enum Curve: String, Sendable, CaseIterable {
        case p256 = "P-256"
        case p384 = "P-384"
    }

    /// Generates an ECDSA key on `curve` and a self-signed certificate shaped like `generateRSA`'s.
    public static func generateECDSA(curve: Curve = .p384, commonName: String = "ExecGate module signing key",
                                     days: Int = 36500) throws(CertificateError) -> GeneratedSigningKey {
        let d = try validityDays(days)
        return try fromShim("key generation failed") { egs_generate_ec_selfsigned(curve.rawValue, commonName, d, &$0, &$1, &$2, &$3) }
    }

    /// The parsed certificate and key.
    public func load() throws(CertificateError) -> (PrivateKey, Certificate) {
        let key = try PrivateKey(pem: privateKeyPEM)
        let certs = try Certificate.parsePEM(certificatePEM)
        // parsePEM returns at least one certificate or throws.
        return (key, certs[0])
    }
}
