// SPDX-License-Identifier: Apache-2.0
//
// Reading a kernel image: an x86 bzImage (with any supported payload compression), a raw
// vmlinux ELF, or a compressed vmlinux stream — down to the vmlinux bytes.

// MARK: - bzImage setup header

/// The fields of the x86 real-mode setup header ExecGate uses (Documentation/x86/boot.rst):
///
///     Offset  Proto  Name            Meaning
///     01F1    ALL    setup_sects     The size of the setup in sectors (0 means 4)
///     01FE    ALL    boot_flag       0xAA55 magic number
///     0202    2.00+  header          Magic signature "HdrS"
///     0206    2.00+  version         Boot protocol version supported
///     0248    2.08+  payload_offset  Offset of kernel payload
///     024C    2.08+  payload_length  Length of kernel payload
///
/// "The 32-bit (non-real-mode) kernel starts at offset (setup_sects+1)*512 in the kernel file";
/// payload_offset is relative to that start.
public struct BzImageHeader: Sendable, Hashable {
    public static let setupSectsOffset = 0x1f1
    public static let bootFlagOffset = 0x1fe
    public static let headerMagicOffset = 0x202
    public static let versionOffset = 0x206
    public static let payloadOffsetOffset = 0x248
    public static let payloadLengthOffset = 0x24c
    /// Bytes needed to read every field above.
    public static let minimumSize = 0x250

    public let setupSects: Int
    /// Boot protocol version, e.g. 0x020f.
    public let protocolVersion: UInt16
    public let payloadOffset: UInt32
    public let payloadLength: UInt32
    /// File offset of the protected-mode code: (setup_sects + 1) * 512.
    public let protectedModeStart: Int
    /// File range of the compressed payload.
    public let payloadRange: Range<Int>

    /// True when the bytes look like a bzImage at all (boot flag + "HdrS").
    public static func looksLikeBzImage(_ b: UnsafeRawBufferPointer) -> Bool {
        b.count >= headerMagicOffset + 4 && b[bootFlagOffset] == 0x55 && b[bootFlagOffset + 1] == 0xaa
            && b[headerMagicOffset..<(headerMagicOffset + 4)].elementsEqual(Array("HdrS".utf8))
    }

    /// Parses and bounds-checks the header.
    ///
    /// - Throws: `.truncatedSetupHeader`, `.badSetupHeader`, `.unsupportedBootProtocol`, `.payloadOutOfBounds`.
    public init(_ b: UnsafeRawBufferPointer) throws(KernelImageError) {
        guard b.count >= BzImageHeader.minimumSize else {
            throw KernelImageError(.truncatedSetupHeader, "\(b.count) bytes, a bzImage setup header needs \(BzImageHeader.minimumSize)")
        }
        guard BzImageHeader.looksLikeBzImage(b) else {
            throw KernelImageError(.badSetupHeader, "no 0xAA55 boot flag and \"HdrS\" at 0x202")
        }
        // Every field below lies inside the first `minimumSize` bytes, checked above.
        let version = b.loadInteger(at: BzImageHeader.versionOffset, as: UInt16.self)
        guard version >= 0x0208 else {
            throw KernelImageError(.unsupportedBootProtocol, "boot protocol \(String(version, radix: 16)) predates payload_offset (2.08)")
        }
        let rawSects = Int(b[BzImageHeader.setupSectsOffset])
        let sects = rawSects == 0 ? 4 : rawSects
        let pmStart = (sects + 1) * 512  // at most 256 * 512: cannot overflow
        let off = b.loadInteger(at: BzImageHeader.payloadOffsetOffset, as: UInt32.self)
        let len = b.loadInteger(at: BzImageHeader.payloadLengthOffset, as: UInt32.self)
        // UInt32 fits Int on 64-bit; the sums are checked anyway.
        let (start, o1) = pmStart.addingReportingOverflow(Int(off))
        let (end, o2) = start.addingReportingOverflow(Int(len))
        guard !o1, !o2, len > 0, end <= b.count else {
            throw KernelImageError(.payloadOutOfBounds,
                                   "payload at \(pmStart)+\(off), \(len) bytes, does not fit the \(b.count)-byte file")
        }
        self.setupSects = sects
        self.protocolVersion = version
        self.payloadOffset = off
        self.payloadLength = len
        self.protectedModeStart = pmStart
        self.payloadRange = start..<end
    }
}

// MARK: - KernelImage

/// A kernel image reduced to its vmlinux ELF bytes.
public struct KernelImage: Sendable {
    public enum Container: Sendable, Hashable {
        /// An x86 bzImage; the payload used `compression`.
        case bzImage(BzImageHeader)
        /// A bare compressed stream (e.g. vmlinux.gz).
        case compressedStream
        /// An uncompressed ELF vmlinux.
        case elf
    }

    public let container: Container
    /// nil for an uncompressed ELF.
    public let compression: KernelCompression?
    /// The vmlinux ELF.
    public let vmlinux: [UInt8]

    static let elfMagic: [UInt8] = [0x7f, 0x45, 0x4c, 0x46]

    static func isELF(_ b: UnsafeRawBufferPointer) -> Bool { b.count >= 4 && b.prefix(4).elementsEqual(elfMagic) }

    /// Reads an image from bytes.
    ///
    /// - Parameter maxDecompressedSize: the decompression cap (default 512 MiB).
    /// - Throws: every `KernelImageError` code except `.noCertificates`.
    public static func load(_ bytes: UnsafeRawBufferPointer,
                            maxDecompressedSize: Int = KernelImageLimits.maxDecompressedSize) throws(KernelImageError) -> KernelImage {
        if isELF(bytes) {
            return KernelImage(container: .elf, compression: nil, vmlinux: Array(bytes))
        }
        if bytes.count > BzImageHeader.bootFlagOffset + 1, bytes[BzImageHeader.bootFlagOffset] == 0x55,
           bytes[BzImageHeader.bootFlagOffset + 1] == 0xaa {
            let header = try BzImageHeader(bytes)
            let payload = UnsafeRawBufferPointer(rebasing: bytes[header.payloadRange])
            guard let c = KernelCompression.detect(payload) else {
                throw KernelImageError(.unsupportedCompression,
                                       "bzImage payload starts with \(payload.prefix(6).map { String($0, radix: 16) }), no known compression")
            }
            let vmlinux = try c.decompress(payload, maxOutput: maxDecompressedSize)
            guard vmlinux.withUnsafeBytes({ isELF($0) }) else {
                throw KernelImageError(.payloadNotELF, "\(c.rawValue) payload did not decompress to an ELF file")
            }
            return KernelImage(container: .bzImage(header), compression: c, vmlinux: vmlinux)
        }
        if let c = KernelCompression.detect(bytes) {
            let vmlinux = try c.decompress(bytes, maxOutput: maxDecompressedSize)
            guard vmlinux.withUnsafeBytes({ isELF($0) }) else {
                throw KernelImageError(.payloadNotELF, "\(c.rawValue) stream did not decompress to an ELF file")
            }
            return KernelImage(container: .compressedStream, compression: c, vmlinux: vmlinux)
        }
        throw KernelImageError(.unknownFormat, "neither a bzImage, an ELF vmlinux nor a known compressed stream")
    }

    public static func load(_ bytes: [UInt8],
                            maxDecompressedSize: Int = KernelImageLimits.maxDecompressedSize) throws(KernelImageError) -> KernelImage {
        let r: Result<KernelImage, KernelImageError> = bytes.withUnsafeBytes { b in
            Result { () throws(KernelImageError) in try load(b, maxDecompressedSize: maxDecompressedSize) }
        }
        return try r.get()
    }

    /// The builtin trusted certificates of this kernel (see `BuiltinCertificates`).
    ///
    /// - Throws: `.noCertificates` when none is found.
    public func builtinCertificates() throws(KernelImageError) -> [Certificate] {
        let result: Result<[Certificate], KernelImageError> = vmlinux.withUnsafeBytes { buf in
            Result { () throws(KernelImageError) in try BuiltinCertificates.systemCertificateList(buf) }
        }
        return try result.get()
    }
}

import ExecGateSignature
import _ExecGateInternals
