// SPDX-License-Identifier: Apache-2.0
//
// Signed policy bundles: the policy text, byte for byte, and a detached CMS (PKCS#7) signature
// over exactly those bytes by the admin key. Format (all integers big-endian):
//
//     offset   size  field
//     0        8     magic "EXGTPOL1"
//     8        4     policy_len  (≤ PolicyLimits.maximumSize)
//     12       n     policy      the policy text (docs/policy.md), exactly as signed
//     12+n     4     sig_len     (≤ PolicyBundle.maximumSignatureSize)
//     16+n     m     signature   DER CMS SignedData: detached, one signer, no certificates, no
//                                signed attributes, digest SHA-256 or stronger
//     16+n+m         end: no trailing bytes
//
// Verification order (cheap and decisive first, crypto before the policy parser sees a byte):
//   1. framing: magic, lengths against named caps and against the bytes present, no trailer;
//   2. signature: the same code that checks module signatures the kernel's way
//      (ModuleSignatureVerifier), with a trust store holding only the admin certificate — so the
//      signer must *be* the admin certificate, and every structural rule for module PKCS#7
//      applies (one signer, detached, no embedded certificates or attributes);
//   3. the policy parser, on the now-authenticated bytes.
// Only then may the caller activate the policy (Verifier.replacePolicy checks the version).
//
// Domain separation: the admin key must never be a module signing key and vice versa. A bundle
// signature lifted onto a module would need the admin certificate among the module trust
// anchors, and a module signature lifted onto a policy fails step 3 (an ELF is not a policy).

import ExecGateSignature

public struct PolicyBundleError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The bytes are not a bundle (magic, lengths, trailing data).
        case malformed = "bundle.malformed"
        /// The signature does not verify under the admin certificate.
        case signature = "bundle.signature"
        /// The signed policy text does not parse.
        case policy = "bundle.policy"
    }
    public let code: Code
    public let reason: String
    /// Set for `.policy`: where in the policy text.
    public let parseError: PolicyParseError?

    init(_ code: Code, _ reason: String, parseError: PolicyParseError? = nil) {
        self.code = code
        self.reason = reason
        self.parseError = parseError
    }

    public var description: String { "\(code.rawValue): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}

public enum PolicyBundle {
    /// "EXGTPOL1".
    public static let magic: [UInt8] = Array("EXGTPOL1".utf8)
    /// A CMS signature by an RSA-4096 key is ~550 bytes; 64 KiB is generous and bounded.
    public static let maximumSignatureSize = 64 << 10
    /// The largest bundle file: framing (magic, two lengths), the largest policy text and the
    /// largest signature. Nothing larger is a policy text or a bundle, so readers stop there.
    public static let maximumFileSize = 16 + PolicyLimits.maximumSize + maximumSignatureSize

    /// The two parts of a bundle, bounds-checked but not yet verified.
    public struct Parts: Sendable {
        public let policy: [UInt8]
        public let signature: [UInt8]
    }

    /// Frames `policy` and its detached signature into a bundle.
    public static func seal(policy: [UInt8], signer: ModuleSigner) throws -> [UInt8] {
        guard policy.count <= PolicyLimits.maximumSize else {
            throw PolicyBundleError(.malformed, "policy is \(policy.count) bytes; the limit is \(PolicyLimits.maximumSize)")
        }
        let signature = try policy.withUnsafeBytes { raw in try signer.signature(over: raw) }
        return encode(Parts(policy: policy, signature: signature))
    }

    public static func encode(_ parts: Parts) -> [UInt8] {
        var out = magic
        out.reserveCapacity(16 + parts.policy.count + parts.signature.count)
        appendU32(&out, UInt32(parts.policy.count))
        out += parts.policy
        appendU32(&out, UInt32(parts.signature.count))
        out += parts.signature
        return out
    }

    /// Step 1: framing only.
    public static func split(_ bytes: [UInt8]) throws(PolicyBundleError) -> Parts {
        guard bytes.count >= 8, Array(bytes[0..<8]) == magic else {
            throw PolicyBundleError(.malformed, "not a policy bundle (no \"EXGTPOL1\" magic)")
        }
        guard bytes.count >= 16 else {
            throw PolicyBundleError(.malformed, "truncated policy bundle: \(bytes.count) bytes, its framing alone (magic and two lengths) is 16")
        }
        let n = Int(readU32(bytes, 8))
        guard n <= PolicyLimits.maximumSize else { throw PolicyBundleError(.malformed, "policy_len \(n) exceeds \(PolicyLimits.maximumSize)") }
        // 12 + n + 4 cannot overflow: n ≤ 1 MiB.
        guard bytes.count >= 12 + n + 4 else { throw PolicyBundleError(.malformed, "truncated: policy_len \(n) but only \(bytes.count - 12) bytes follow") }
        let m = Int(readU32(bytes, 12 + n))
        guard m > 0, m <= maximumSignatureSize else { throw PolicyBundleError(.malformed, "sig_len \(m) is not in 1...\(maximumSignatureSize)") }
        let end = 16 + n + m
        guard bytes.count >= end else { throw PolicyBundleError(.malformed, "truncated: sig_len \(m) but only \(bytes.count - 16 - n) bytes follow") }
        guard bytes.count == end else { throw PolicyBundleError(.malformed, "\(bytes.count - end) trailing bytes after the signature") }
        return Parts(policy: Array(bytes[12..<(12 + n)]), signature: Array(bytes[(16 + n)..<end]))
    }

    /// Steps 1–3: framing, the admin signature over the exact policy bytes, then the parser.
    ///
    /// - Parameters:
    ///   - bytes: the bundle.
    ///   - admin: the only certificate whose key may sign policies.
    ///   - file: name for parse errors.
    ///   - builtinAnchors: what `trust kernel-builtin` means here (see `PolicyParser.parse`).
    /// - Throws: `PolicyBundleError` (`.malformed`, `.signature`, `.policy` with the parse error).
    public static func open(_ bytes: [UInt8], admin: Certificate, file: String, builtinAnchors: [Certificate]?) throws(PolicyBundleError) -> Policy {
        let parts = try split(bytes)
        try verifySignature(parts, admin: admin)
        let policy: Policy
        do {
            policy = try PolicyParser.parse(parts.policy, file: file, builtinAnchors: builtinAnchors)
        } catch {
            throw PolicyBundleError(.policy, "\(error)", parseError: error)
        }
        try checkAdminIsNoAnchor(policy, admin: admin)
        return policy
    }

    /// The key that signs policies must never sign modules (deployment.md, "The admin key"): a
    /// policy trusting the admin certificate makes every module the admin key signs loadable,
    /// and an admin key is kept for one job. `serve` refuses it at boot (`--trust` or the boot
    /// policy); a pushed bundle and `policy sign` refuse it the same way.
    /// The key, not the certificate: a second certificate of the admin key (another serial or
    /// subject) verifies the same signatures, and module signers are matched by issuer and serial
    /// or key identifier, then verified with the anchor's key.
    public static func checkAdminIsNoAnchor(_ policy: Policy, admin: Certificate) throws(PolicyBundleError) {
        guard let a = adminAnchor(in: policy.trust.anchors, admin: admin) else { return }
        throw PolicyBundleError(.policy, "policy \(policy.id) v\(policy.version) trusts '\(a.subject)', a certificate of the admin key '\(admin.subject)', as a module signer: the key that signs policies must never sign modules; trust a separate module-signing key")
    }

    /// The first of `anchors` that carries the admin certificate's public key, if any.
    public static func adminAnchor(in anchors: [Certificate], admin: Certificate) -> Certificate? {
        let key = admin.publicKeyDER
        return anchors.first { $0.fingerprint == admin.fingerprint || (!key.isEmpty && $0.publicKeyDER == key) }
    }

    /// Step 2. The module-signature verifier checks `content ‖ PKCS#7 ‖ struct module_signature ‖
    /// magic`; we lay the parts out that way in memory (the content is exactly the policy bytes),
    /// so one audited verification path serves modules and policies.
    public static func verifySignature(_ parts: Parts, admin: Certificate) throws(PolicyBundleError) {
        guard let sigLen = UInt32(exactly: parts.signature.count) else { throw PolicyBundleError(.malformed, "signature too large") }
        let laidOut = parts.policy + parts.signature + ModuleSignatureTrailer.encode(signatureLength: sigLen)
        switch ModuleSignatureVerifier.verify(module: laidOut, trust: TrustStore([admin]), denyList: .empty, minimumDigest: .sha256) {
        case .success(let v):
            // The content range must be exactly the policy (it is by construction; checked anyway).
            guard v.trailer.contentRange == 0..<parts.policy.count else {
                throw PolicyBundleError(.signature, "signature does not cover exactly the policy bytes")
            }
        case .failure(let f):
            // The module verifier's words are about a module; here the content is the policy.
            let why: String
            if case .digestMismatch = f { why = "signature is valid for different content: the policy was modified" } else { why = f.message }
            throw PolicyBundleError(.signature, "not signed by the admin key '\(admin.subject)': \(why) [\(f.detailedCode)]")
        }
    }

    static func appendU32(_ out: inout [UInt8], _ v: UInt32) {
        out += [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
    }

    static func readU32(_ b: [UInt8], _ at: Int) -> UInt32 {
        // Callers checked `at + 4 <= b.count`.
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }
}
