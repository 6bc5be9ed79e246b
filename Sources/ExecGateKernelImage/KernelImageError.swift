// SPDX-License-Identifier: Apache-2.0

/// Why a kernel image could not be read. Equality compares codes only.
public struct KernelImageError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Backing: String, Sendable {
            case unknownFormat = "kernel.unknown-format"
            case truncatedSetupHeader = "kernel.truncated-setup-header"
            case badSetupHeader = "kernel.bad-setup-header"
            case unsupportedBootProtocol = "kernel.unsupported-boot-protocol"
            case payloadOutOfBounds = "kernel.payload-out-of-bounds"
            case unsupportedCompression = "kernel.unsupported-compression"
            case corruptPayload = "kernel.corrupt-payload"
            case truncatedPayload = "kernel.truncated-payload"
            case decompressedTooLarge = "kernel.decompressed-too-large"
            case outOfMemory = "kernel.out-of-memory"
            case payloadNotELF = "kernel.payload-not-elf"
            case noCertificates = "kernel.no-certificates"
        }
        let backing: Backing
        /// Neither a bzImage, an ELF vmlinux, nor a known compressed stream.
        public static let unknownFormat = Code(backing: .unknownFormat)
        /// Shorter than the setup header it claims to have.
        public static let truncatedSetupHeader = Code(backing: .truncatedSetupHeader)
        /// Boot-sector signature present but the "HdrS" header or its fields are wrong.
        public static let badSetupHeader = Code(backing: .badSetupHeader)
        /// Boot protocol older than 2.08 (no payload_offset/payload_length).
        public static let unsupportedBootProtocol = Code(backing: .unsupportedBootProtocol)
        /// payload_offset/payload_length point outside the file.
        public static let payloadOutOfBounds = Code(backing: .payloadOutOfBounds)
        /// A compression the kernel supports but ExecGate does not (lzo), or unknown magic.
        public static let unsupportedCompression = Code(backing: .unsupportedCompression)
        public static let corruptPayload = Code(backing: .corruptPayload)
        public static let truncatedPayload = Code(backing: .truncatedPayload)
        /// Decompressed output would exceed the cap (`KernelImageLimits.maxDecompressedSize`).
        public static let decompressedTooLarge = Code(backing: .decompressedTooLarge)
        public static let outOfMemory = Code(backing: .outOfMemory)
        /// The payload decompressed, but not to an ELF file.
        public static let payloadNotELF = Code(backing: .payloadNotELF)
        /// No DER X.509 certificate found in the image.
        public static let noCertificates = Code(backing: .noCertificates)
        public var rawValue: String { backing.rawValue }
        public var description: String { backing.rawValue }
    }

    public let code: Code
    public let reason: String
    public let file: String
    public let line: Int

    init(_ code: Code, _ reason: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.reason = reason
        self.file = file
        self.line = line
    }

    public var description: String { "\(code): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}

/// Named limits for hostile images.
public enum KernelImageLimits {
    /// Largest decompressed vmlinux accepted (Debian's is ~66 MB; debug kernels reach ~300 MB).
    public static let maxDecompressedSize = 512 << 20
}
