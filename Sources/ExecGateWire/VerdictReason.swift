// SPDX-License-Identifier: Apache-2.0
//
// Machine-readable verdict reasons (docs/protocol.md, "Verdict reasons"). The number is what a C
// VMM switches on; the name is stable text for logs and JSON. New reasons only ever get new numbers.

public struct VerdictReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let allowed = VerdictReason(rawValue: 0)
    // Signature (the evidence is not what a trusted key signed).
    public static let unsigned = VerdictReason(rawValue: 1)
    public static let malformedTrailer = VerdictReason(rawValue: 2)
    public static let malformedPKCS7 = VerdictReason(rawValue: 3)
    public static let embeddedCertificates = VerdictReason(rawValue: 4)
    public static let signedAttributes = VerdictReason(rawValue: 5)
    public static let unknownSigner = VerdictReason(rawValue: 6)
    public static let badSignature = VerdictReason(rawValue: 7)
    public static let digestTooWeak = VerdictReason(rawValue: 8)
    // Deny lists.
    public static let certificateDenied = VerdictReason(rawValue: 9)
    public static let moduleHashDenied = VerdictReason(rawValue: 10)
    public static let moduleNameDenied = VerdictReason(rawValue: 11)
    // The evidence's ELF.
    public static let malformedELF = VerdictReason(rawValue: 12)
    // The claim against the evidence.
    public static let claimUnknownSection = VerdictReason(rawValue: 13)
    public static let claimNotExecutable = VerdictReason(rawValue: 14)
    public static let claimSizeMismatch = VerdictReason(rawValue: 15)
    public static let claimMissingSection = VerdictReason(rawValue: 16)
    public static let claimBytesUnexplained = VerdictReason(rawValue: 17)
    public static let claimDuplicateSection = VerdictReason(rawValue: 18)
    // Guest state and policy.
    public static let unknownGuest = VerdictReason(rawValue: 19)
    public static let kindDenied = VerdictReason(rawValue: 20)
    public static let endStateUnavailable = VerdictReason(rawValue: 21)
    public static let unsupportedCryptography = VerdictReason(rawValue: 22)
    /// The signature opens under the signer's key but covers other content: the module was modified.
    public static let digestMismatch = VerdictReason(rawValue: 23)
    /// A run-time text patch that is not a legal encoding of a known site of verified code.
    public static let patchNotAllowed = VerdictReason(rawValue: 24)

    public var name: String {
        switch self {
        case .allowed: return "allowed"
        case .unsigned: return "sig.unsigned"
        case .malformedTrailer: return "sig.malformed-trailer"
        case .malformedPKCS7: return "sig.malformed-pkcs7"
        case .embeddedCertificates: return "sig.embedded-certificates"
        case .signedAttributes: return "sig.signed-attributes"
        case .unknownSigner: return "sig.unknown-signer"
        case .badSignature: return "sig.bad-signature"
        case .digestTooWeak: return "sig.digest-too-weak"
        case .certificateDenied: return "deny.certificate"
        case .moduleHashDenied: return "deny.module-hash"
        case .moduleNameDenied: return "deny.module-name"
        case .malformedELF: return "elf.malformed"
        case .claimUnknownSection: return "claim.unknown-section"
        case .claimNotExecutable: return "claim.not-executable"
        case .claimSizeMismatch: return "claim.size-mismatch"
        case .claimMissingSection: return "claim.missing-section"
        case .claimBytesUnexplained: return "claim.bytes-unexplained"
        case .claimDuplicateSection: return "claim.duplicate-section"
        case .unknownGuest: return "guest.unknown"
        case .kindDenied: return "policy.kind-denied"
        case .endStateUnavailable: return "policy.end-state-unavailable"
        case .unsupportedCryptography: return "sig.unsupported-cryptography"
        case .digestMismatch: return "sig.digest-mismatch"
        case .patchNotAllowed: return "patch.not-allowed"
        default: return "reason-\(rawValue)"
        }
    }

    public var description: String { name }
}
