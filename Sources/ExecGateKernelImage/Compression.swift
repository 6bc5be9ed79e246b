// SPDX-License-Identifier: Apache-2.0
//
// Kernel payload compressions, recognised by their stream magic, decompressed by CDecompress.

import CDecompress

/// A compression a kernel payload may use (arch/x86/boot/compressed/Makefile: `vmlinux.bin.*`).
public enum KernelCompression: String, Sendable, Hashable, CaseIterable {
    case gzip, bzip2, lzma, xz, lzo, lz4, zstd

    /// Recognises a stream by its first bytes; nil when none matches.
    ///
    /// gzip `1f 8b`; xz `fd 37 7a 58 5a 00`; zstd `28 b5 2f fd`; bzip2 `"BZh"`;
    /// lz4 legacy `02 21 4c 18`; lzop `89 4c 5a 4f`; lzma-alone `5d 00 00` (properties byte 0x5d
    /// = lc3 lp0 pb2 and a little-endian dictionary size whose low bytes are zero).
    public static func detect(_ b: UnsafeRawBufferPointer) -> KernelCompression? {
        func has(_ magic: [UInt8]) -> Bool { b.count >= magic.count && b.prefix(magic.count).elementsEqual(magic) }
        if has([0x1f, 0x8b]) { return .gzip }
        if has([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return .xz }
        if has([0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        if has([0x42, 0x5a, 0x68]) { return .bzip2 }
        if has([0x02, 0x21, 0x4c, 0x18]) { return .lz4 }
        if has([0x89, 0x4c, 0x5a, 0x4f]) { return .lzo }
        if has([0x5d, 0x00, 0x00]) { return .lzma }
        return nil
    }

    var shimFormat: Int32? {
        switch self {
        case .gzip: return Int32(EGD_GZIP)
        case .xz: return Int32(EGD_XZ)
        case .lzma: return Int32(EGD_LZMA)
        case .zstd: return Int32(EGD_ZSTD)
        case .bzip2: return Int32(EGD_BZIP2)
        case .lz4: return Int32(EGD_LZ4_LEGACY)
        case .lzo: return nil
        }
    }

    /// Decompresses the first stream in `input`, refusing output above `maxOutput` bytes.
    ///
    /// - Throws: `.unsupportedCompression` (lzo), `.corruptPayload`, `.truncatedPayload`,
    ///   `.decompressedTooLarge`, `.outOfMemory`.
    public func decompress(_ input: UnsafeRawBufferPointer,
                           maxOutput: Int = KernelImageLimits.maxDecompressedSize) throws(KernelImageError) -> [UInt8] {
        try decompressStream(input, maxOutput: maxOutput).output
    }

    /// As `decompress`, also returning how many input bytes the first stream used (so callers that
    /// need exactly one stream can refuse trailing bytes).
    public func decompressStream(_ input: UnsafeRawBufferPointer,
                                 maxOutput: Int = KernelImageLimits.maxDecompressedSize) throws(KernelImageError) -> (output: [UInt8], consumed: Int) {
        guard let format = shimFormat else {
            throw KernelImageError(.unsupportedCompression, "\(rawValue)-compressed payloads are not supported")
        }
        var out: UnsafeMutablePointer<UInt8>?
        var outLen = 0
        var consumed = 0
        let r = egd_decompress(format, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
                               maxOutput, &out, &outLen, &consumed)
        switch r {
        case Int32(EGD_OK): break
        case Int32(EGD_ERR_LIMIT):
            throw KernelImageError(.decompressedTooLarge, "\(rawValue) payload inflates past \(maxOutput) bytes")
        case Int32(EGD_ERR_TRUNCATED):
            throw KernelImageError(.truncatedPayload, "\(rawValue) stream ends early (after \(consumed) of \(input.count) input bytes)")
        case Int32(EGD_ERR_NOMEM):
            throw KernelImageError(.outOfMemory, "\(rawValue): the decoder needs more memory than it may take (a stream whose header asks for a dictionary or window past the decoder's 256 MiB limit), or memory ran out")
        default:
            throw KernelImageError(.corruptPayload, "\(rawValue) stream is corrupt (near input byte \(consumed))")
        }
        // EGD_OK always sets out (possibly to a zero-length allocation).
        guard let out else { return ([], consumed) }
        defer { egd_free(out) }
        return (Array(UnsafeBufferPointer(start: out, count: outLen)), consumed)
    }

    /// Compresses `input` into one stream (tests and tools; `level` 0 = fast default).
    /// - Throws: `.unsupportedCompression` for lzo, `.corruptPayload` if the encoder fails.
    public func compress(_ input: UnsafeRawBufferPointer, level: Int = 0) throws(KernelImageError) -> [UInt8] {
        guard let format = shimFormat else {
            throw KernelImageError(.unsupportedCompression, "cannot compress \(rawValue)")
        }
        var out: UnsafeMutablePointer<UInt8>?
        var outLen = 0
        let r = egd_compress(format, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
                             Int32(clamping: level), &out, &outLen)
        guard r == Int32(EGD_OK), let out else {
            throw KernelImageError(.corruptPayload, "\(rawValue) encoder failed (\(r))")
        }
        defer { egd_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: outLen))
    }
}
