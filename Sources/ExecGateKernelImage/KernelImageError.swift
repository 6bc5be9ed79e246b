// SPDX-License-Identifier: Apache-2.0

import _ExecGateInternals

/// Why a kernel image could not be read: stable machine codes of `KernelImageError`.
public enum KernelImageErrorCode: String, ErrorCode {
    /// Neither a bzImage, an ELF vmlinux, nor a known compressed stream.
    case unknownFormat = "kernel.unknown-format"
    /// Shorter than the setup header it claims to have.
    case truncatedSetupHeader = "kernel.truncated-setup-header"
    /// Boot-sector signature present but the "HdrS" header or its fields are wrong.
    case badSetupHeader = "kernel.bad-setup-header"
    /// Boot protocol older than 2.08 (no payload_offset/payload_length).
    case unsupportedBootProtocol = "kernel.unsupported-boot-protocol"
    /// payload_offset/payload_length point outside the file.
    case payloadOutOfBounds = "kernel.payload-out-of-bounds"
    /// A compression the kernel supports but ExecGate does not (lzo), or unknown magic.
    case unsupportedCompression = "kernel.unsupported-compression"
    case corruptPayload = "kernel.corrupt-payload"
    case truncatedPayload = "kernel.truncated-payload"
    /// Decompressed output would exceed the cap (`KernelImageLimits.maxDecompressedSize`).
    case decompressedTooLarge = "kernel.decompressed-too-large"
    case outOfMemory = "kernel.out-of-memory"
    /// The payload decompressed, but not to an ELF file.
    case payloadNotELF = "kernel.payload-not-elf"
    /// No `system_certificate_list` (certificates followed by its two size fields) in the image.
    case noCertificates = "kernel.no-certificates"
    /// More than one run of certificates has the shape of `system_certificate_list`.
    case ambiguousCertificateList = "kernel.ambiguous-certificate-list"
    /// More certificate-shaped offsets than `KernelImageLimits.maxCertificateCandidates`: a flood
    /// built to make the scan parse for minutes, refused instead.
    case tooManyCertificateCandidates = "kernel.too-many-certificate-candidates"
}

/// Equality compares codes only (see `CodedError`).
public typealias KernelImageError = CodedError<KernelImageErrorCode>

/// Named limits for hostile images.
public enum KernelImageLimits {
    /// Largest decompressed vmlinux accepted (Debian's is ~66 MB; debug kernels reach ~300 MB).
    public static let maxDecompressedSize = 512 << 20
    /// Most certificate-shaped offsets (`30 82 LL LL 30 82`, at least 128 bytes, inside the image)
    /// handed to the DER parser (OpenSSL d2i_X509, ~3.3 µs each) in one image: the work of a scan
    /// stays ~15 ms. The real Debian 6.1 vmlinux has 6 (its one build key among them); a
    /// system_certificate_list holds the build key and CONFIG_SYSTEM_TRUSTED_KEYS
    /// (certs/system_certificates.S), never thousands.
    public static let maxCertificateCandidates = 4096
}
