// SPDX-License-Identifier: Apache-2.0
//
// The trailer the kernel's module loader reads from the end of a signed module.
//
//   +-------------------+------------------+-------------------------+------------------------------+
//   | ELF (content)     | PKCS#7 DER       | struct module_signature | "~Module signature appended~\n" |
//   |                   | (sig_len bytes)  | (12 bytes)              | (28 bytes)                    |
//   +-------------------+------------------+-------------------------+------------------------------+
//
// From include/linux/module_signature.h (6.1):
//
//     #define MODULE_SIG_STRING "~Module signature appended~\n"
//
//     enum pkey_id_type {
//         PKEY_ID_PGP,          /* OpenPGP generated key ID */
//         PKEY_ID_X509,         /* X.509 arbitrary subjectKeyIdentifier */
//         PKEY_ID_PKCS7,        /* Signature in PKCS#7 message */
//     };
//
//     struct module_signature {
//         u8      algo;         /* Public-key crypto algorithm [0] */
//         u8      hash;         /* Digest algorithm [0] */
//         u8      id_type;      /* Key identifier type [PKEY_ID_PKCS7] */
//         u8      signer_len;   /* Length of signer's name [0] */
//         u8      key_id_len;   /* Length of key identifier [0] */
//         u8      __pad[3];
//         __be32  sig_len;      /* Length of signature data */
//     };
//
// kernel/module_signature.c `mod_check_sig` accepts only id_type == PKEY_ID_PKCS7 with every other
// field zero, and requires `sig_len < file_len - sizeof(struct module_signature)` (at least one
// byte of module must remain). We check the same, plus sig_len != 0, and give each violation its
// own code so a refusal says exactly what was wrong.

// MARK: - Errors

/// Why a trailer could not be parsed: stable machine codes of `ModuleSignatureTrailerError`.
import _ExecGateInternals
public enum ModuleSignatureTrailerErrorCode: String, ErrorCode {
    /// The file is shorter than the 28-byte magic.
    case tooShortForMagic = "trailer.too-short-for-magic"
    /// No magic at the end: the module is not signed.
    case noMagic = "trailer.no-magic"
    /// Magic present but fewer than 12 bytes before it for `struct module_signature`.
    case tooShortForStruct = "trailer.too-short-for-struct"
    case nonZeroAlgo = "trailer.nonzero-algo"
    case nonZeroHash = "trailer.nonzero-hash"
    case nonZeroSignerLen = "trailer.nonzero-signer-len"
    case nonZeroKeyIDLen = "trailer.nonzero-key-id-len"
    case nonZeroPad = "trailer.nonzero-pad"
    /// `id_type` is not `PKEY_ID_PKCS7` (2).
    case notPKCS7 = "trailer.id-type-not-pkcs7"
    case zeroSignatureLength = "trailer.sig-len-zero"
    /// `sig_len` reaches past the start of the file (or leaves no module bytes).
    case signatureLengthTooLarge = "trailer.sig-len-too-large"
}

/// Equality compares codes only (see `CodedError`).
public typealias ModuleSignatureTrailerError = CodedError<ModuleSignatureTrailerErrorCode>

// MARK: - Trailer

/// A parsed, validated module signature trailer. Holds ranges into the caller's buffer, no bytes.
public struct ModuleSignatureTrailer: Sendable, Hashable {
    /// `MODULE_SIG_STRING`.
    public static let magic: [UInt8] = Array("~Module signature appended~\n".utf8)
    /// Length of the magic (28).
    public static let magicSize = 28
    /// `sizeof(struct module_signature)` (12).
    public static let structSize = 12
    /// `PKEY_ID_PKCS7`.
    public static let idTypePKCS7: UInt8 = 2

    public let algo: UInt8
    public let hash: UInt8
    public let idType: UInt8
    public let signerLen: UInt8
    public let keyIDLen: UInt8
    public let pad: [UInt8]
    /// `sig_len` (big-endian on disk).
    public let signatureLength: UInt32

    /// The signed content: every byte before the PKCS#7 message (the ELF).
    public let contentRange: Range<Int>
    /// The PKCS#7 DER message.
    public let signatureRange: Range<Int>
    /// The 12-byte `struct module_signature`.
    public let structRange: Range<Int>
    /// The 28-byte magic.
    public let magicRange: Range<Int>

    /// True when `bytes` ends with the magic (cheap test for "is this module signed at all").
    public static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count >= magicSize else { return false }
        let tail = UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - magicSize)...])
        return tail.elementsEqual(magic)
    }

    /// Parses the trailer at the end of `bytes`, checking every field like `mod_check_sig`.
    ///
    /// - Throws: `ModuleSignatureTrailerError` with one of: `tooShortForMagic`, `noMagic`,
    ///   `tooShortForStruct`, `signatureLengthTooLarge`, `notPKCS7`, `nonZeroAlgo`, `nonZeroHash`,
    ///   `nonZeroSignerLen`, `nonZeroKeyIDLen`, `nonZeroPad`, `zeroSignatureLength`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ModuleSignatureTrailerError) -> ModuleSignatureTrailer {
        let total = bytes.count
        guard total >= magicSize else {
            throw ModuleSignatureTrailerError(.tooShortForMagic, "file is \(total) bytes, shorter than the \(magicSize)-byte signature magic")
        }
        guard hasMagic(bytes) else {
            throw ModuleSignatureTrailerError(.noMagic, "no \"~Module signature appended~\" magic at the end: module is unsigned")
        }
        let structEnd = total - magicSize
        guard structEnd >= structSize else {
            throw ModuleSignatureTrailerError(.tooShortForStruct, "only \(structEnd) bytes before the magic, struct module_signature needs \(structSize)")
        }
        let structStart = structEnd - structSize
        // Copy the 12 header bytes once; everything below reads the copy.
        var s = [UInt8](repeating: 0, count: structSize)
        for i in 0..<structSize { s[i] = bytes[structStart + i] }
        let sigLen = UInt32(s[8]) << 24 | UInt32(s[9]) << 16 | UInt32(s[10]) << 8 | UInt32(s[11])

        // Field checks in struct order. id_type first among them, because a PGP/X509 trailer with
        // other fields set is better described as "not PKCS#7" than as "non-zero algo".
        guard s[2] == idTypePKCS7 else {
            throw ModuleSignatureTrailerError(.notPKCS7, "id_type is \(s[2]), only PKEY_ID_PKCS7 (2) is supported")
        }
        guard s[0] == 0 else { throw ModuleSignatureTrailerError(.nonZeroAlgo, "algo is \(s[0]), must be 0 for PKCS#7") }
        guard s[1] == 0 else { throw ModuleSignatureTrailerError(.nonZeroHash, "hash is \(s[1]), must be 0 for PKCS#7") }
        guard s[3] == 0 else { throw ModuleSignatureTrailerError(.nonZeroSignerLen, "signer_len is \(s[3]), must be 0 for PKCS#7") }
        guard s[4] == 0 else { throw ModuleSignatureTrailerError(.nonZeroKeyIDLen, "key_id_len is \(s[4]), must be 0 for PKCS#7") }
        guard s[5] == 0, s[6] == 0, s[7] == 0 else {
            throw ModuleSignatureTrailerError(.nonZeroPad, "__pad is \(Hex.encode(s[5...7])), must be zero")
        }
        guard sigLen != 0 else {
            throw ModuleSignatureTrailerError(.zeroSignatureLength, "sig_len is 0")
        }
        // UInt32 always fits Int on 64-bit; Int(exactly:) keeps that assumption explicit.
        guard let sigLenInt = Int(exactly: sigLen), sigLenInt < structStart else {
            throw ModuleSignatureTrailerError(
                .signatureLengthTooLarge,
                "sig_len \(sigLen) does not fit the \(structStart) bytes before struct module_signature (at least one module byte must remain)"
            )
        }
        let sigStart = structStart - sigLenInt
        return ModuleSignatureTrailer(
            algo: s[0], hash: s[1], idType: s[2], signerLen: s[3], keyIDLen: s[4], pad: Array(s[5...7]),
            signatureLength: sigLen,
            contentRange: 0..<sigStart,
            signatureRange: sigStart..<structStart,
            structRange: structStart..<structEnd,
            magicRange: structEnd..<total
        )
    }

    /// Convenience for arrays.
    public static func parse(_ bytes: [UInt8]) throws(ModuleSignatureTrailerError) -> ModuleSignatureTrailer {
        let result: Result<ModuleSignatureTrailer, ModuleSignatureTrailerError> = bytes.withUnsafeBytes { buf in
            Result { () throws(ModuleSignatureTrailerError) in try parse(buf) }
        }
        return try result.get()
    }

    /// The 12 + 28 bytes that follow a PKCS#7 message of `signatureLength` bytes (what sign-file appends).
    public static func encode(signatureLength: UInt32) -> [UInt8] {
        var out: [UInt8] = [0, 0, idTypePKCS7, 0, 0, 0, 0, 0]
        out.append(UInt8(truncatingIfNeeded: signatureLength >> 24))
        out.append(UInt8(truncatingIfNeeded: signatureLength >> 16))
        out.append(UInt8(truncatingIfNeeded: signatureLength >> 8))
        out.append(UInt8(truncatingIfNeeded: signatureLength))
        out.append(contentsOf: magic)
        return out
    }
}
