// SPDX-License-Identifier: Apache-2.0
//
// Module files as they ship: a plain ELF `.ko`, or one compressed as `.ko.gz`, `.ko.xz` or `.ko.zst`
// (Debian's 6.12 packages ship `.ko.xz`). The kernel decompresses such a file itself before it
// looks at it (kernel/module/decompress.c `module_decompress()`, reached from
// `init_module_from_file()` when kmod passes MODULE_INIT_COMPRESSED_FILE to finit_module), and
// `module_sig_check()` then checks the signature appended to the DECOMPRESSED ELF: the compression
// is outside what is signed. ExecGate does the same: decompress first (bounded), then every check
// runs on the ELF bytes, so a `.ko.xz` and the `.ko` inside it get the same verdict.
//
// Stricter than the kernel where it costs nothing: exactly one stream, no bytes after it (they
// would be outside the signature and outside what the kernel loads), and the result must start
// with the ELF magic.

import _ExecGateInternals

/// How a module file is stored. Exactly the encodings the kernel's in-kernel decompression knows
/// (CONFIG_MODULE_COMPRESS_GZIP / _XZ / _ZSTD), plus plain ELF.
public enum ModuleFileEncoding: String, Sendable, Hashable, CaseIterable {
    case elf
    case gzip
    case xz
    case zstd

    var compression: KernelCompression? {
        switch self {
        case .elf: return nil
        case .gzip: return .gzip
        case .xz: return .xz
        case .zstd: return .zstd
        }
    }

    /// The file-name suffix kmod uses for this encoding.
    public var suffix: String {
        switch self {
        case .elf: return ".ko"
        case .gzip: return ".ko.gz"
        case .xz: return ".ko.xz"
        case .zstd: return ".ko.zst"
        }
    }
}

public enum ModuleFile {
    /// Largest decompressed module accepted. Debian 6.1's largest module (amdgpu.ko) is 19.5 MB;
    /// four times that leaves room for debug builds and still bounds a decompression bomb.
    public static let maximumDecompressedSize = 80 << 20

    static let elfMagic: [UInt8] = [0x7f, 0x45, 0x4c, 0x46]

    /// The encoding of `bytes`, by magic: ELF, or one of the kernel's module compressions; nil for
    /// anything else (including compressions the kernel does not accept for modules: bzip2, lzma,
    /// lz4, lzo).
    public static func encoding(of bytes: UnsafeRawBufferPointer) -> ModuleFileEncoding? {
        if bytes.count >= 4, bytes.prefix(4).elementsEqual(elfMagic) { return .elf }
        switch KernelCompression.detect(bytes) {
        case .gzip?: return .gzip
        case .xz?: return .xz
        case .zstd?: return .zstd
        default: return nil
        }
    }

    /// The module's ELF bytes (signature trailer included), decompressing when the file is
    /// compressed.
    ///
    /// - Throws: `.unknownFormat` (neither ELF nor a module compression), `.corruptPayload`,
    ///   `.truncatedPayload`, `.decompressedTooLarge`, `.outOfMemory`, `.payloadNotELF` (the stream
    ///   did not hold an ELF file, or bytes follow the stream).
    public static func decode(_ bytes: [UInt8],
                              maximumSize: Int = maximumDecompressedSize) throws(KernelImageError) -> (elf: [UInt8], encoding: ModuleFileEncoding) {
        let r: Result<(elf: [UInt8], encoding: ModuleFileEncoding), KernelImageError> = bytes.withUnsafeBytes { raw in
            guard let enc = encoding(of: raw) else {
                let head = Hex.encode(raw.prefix(6))
                return .failure(KernelImageError(.unknownFormat, "not a module: neither ELF nor a gzip/xz/zstd stream (first bytes \(head))"))
            }
            guard let c = enc.compression else { return .success((bytes, .elf)) }
            do throws(KernelImageError) {
                let (out, consumed) = try c.decompressStream(raw, maxOutput: maximumSize)
                guard consumed == raw.count else {
                    return .failure(KernelImageError(.payloadNotELF, "\(raw.count - consumed) bytes follow the \(c.rawValue) stream (outside anything the kernel would load or check)"))
                }
                guard out.count >= 4, out.prefix(4).elementsEqual(elfMagic) else {
                    return .failure(KernelImageError(.payloadNotELF, "the \(c.rawValue) stream does not hold an ELF module"))
                }
                return .success((out, enc))
            } catch {
                return .failure(error)
            }
        }
        return try r.get()
    }
}
