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
    /// The claimed module allocation overlaps a range that is live (verified, not retired) in this guest.
    public static let claimOverlapsLive = VerdictReason(rawValue: 25)
    /// A module of the same name is live in this guest (the kernel refuses it: add_unformed_module()).
    public static let moduleAlreadyLive = VerdictReason(rawValue: 26)
    /// The guest-physical frames are missing, of the wrong count, repeated, or already granted to live code.
    public static let claimFramesInvalid = VerdictReason(rawValue: 27)
    /// Per-section bytes that are not the matching slice of an explained executable region.
    public static let claimSectionBytes = VerdictReason(rawValue: 28)
    /// The claim cannot be laid over the module (region, addresses, layout fields inconsistent).
    public static let claimInvalid = VerdictReason(rawValue: 29)
    /// The request's module name differs from the signed module's, or the signed `.modinfo name=`
    /// differs from its `struct module` name (`ModuleName.identity`).
    public static let moduleNameMismatch = VerdictReason(rawValue: 30)
    /// The audit record could not be written and the policy blocks unrecorded code (fail closed).
    public static let auditUnrecorded = VerdictReason(rawValue: 31)
    /// A run-time patch batch does not cover every live site of a key, or its sites disagree.
    public static let patchPartialKey = VerdictReason(rawValue: 32)
    /// The module's sites of a key shared with live code are in another state than the key.
    public static let keyStateMismatch = VerdictReason(rawValue: 33)
    /// The module's vermagic does not name the registered kernel release.
    public static let vermagicMismatch = VerdictReason(rawValue: 34)
    /// The module's live state does not fit the registry's budget beside the facts and the other live modules.
    public static let liveStateBudget = VerdictReason(rawValue: 35)

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
        case .claimOverlapsLive: return "claim.overlaps-live"
        case .moduleAlreadyLive: return "claim.module-already-live"
        case .claimFramesInvalid: return "claim.frames-invalid"
        case .claimSectionBytes: return "claim.section-bytes"
        case .claimInvalid: return "claim.invalid"
        case .moduleNameMismatch: return "claim.module-name-mismatch"
        case .auditUnrecorded: return "audit.unrecorded"
        case .patchPartialKey: return "patch.partial-key"
        case .keyStateMismatch: return "claim.key-state-mismatch"
        case .vermagicMismatch: return "claim.vermagic-mismatch"
        case .liveStateBudget: return "guest.live-state-budget"
        default: return "reason-\(rawValue)"
        }
    }

    public var description: String { name }
}
