// SPDX-License-Identifier: Apache-2.0
//
// The initramfs compressors, through the project's one compression shim (CDecompress), so building
// an image needs no external tools. The same input always gives the same bytes: zlib's gzip wrapper
// writes mtime 0 and no file name; zstd runs single-threaded with fixed parameters.

import CDecompress

public enum Compression {
    /// The service VM's initramfs: zstd at level 19 with a 128 KiB window (`initramfsWindowLog`).
    /// The kernel (CONFIG_RD_ZSTD, lib/decompress_unzstd.c `__unzstd`) unpacks it streaming and
    /// allocates `zstd_dstream_workspace_bound(windowSize)` — the window plus about 0.4 MiB — for
    /// the whole unpack, when the guest's RAM is fullest (the compressed image and the growing ramfs
    /// both held). Measured (ServiceVM/README.md): at 40 MiB of guest RAM the test image unpacks and
    /// serves with a 128 KiB window, and panics during the unpack ("System is deadlocked on memory")
    /// with 256 KiB or 1 MiB; zstd -19's own choice for this input is 8 MiB. The cost is size: 5.9 MB
    /// against 5.6 MB with a 1 MiB window (gzip -9: 6.6 MB).
    public static let initramfsLevel: Int32 = 19
    public static let initramfsWindowLog: Int32 = 17

    public static func zstd(_ input: [UInt8], level: Int32 = initramfsLevel, windowLog: Int32 = initramfsWindowLog) throws(ServiceVMError) -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var len = 0
        let rc = input.withUnsafeBufferPointer { egd_zstd_compress($0.baseAddress, $0.count, level, windowLog, &out, &len) }
        guard rc == Int32(EGD_OK), let p = out else { throw .badInput("zstd failed (\(rc)) on \(input.count) bytes") }
        defer { egd_free(p) }
        return Array(UnsafeBufferPointer(start: p, count: len))
    }

    /// gzip (the capture tool's guest initramfs for distribution kernels).
    public static func gzip(_ input: [UInt8], level: Int32 = 9) throws(ServiceVMError) -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var len = 0
        let rc = input.withUnsafeBufferPointer { egd_gzip_compress($0.baseAddress, $0.count, level, &out, &len) }
        guard rc == Int32(EGD_OK), let p = out else { throw .badInput("gzip failed (\(rc)) on \(input.count) bytes") }
        defer { egd_free(p) }
        return Array(UnsafeBufferPointer(start: p, count: len))
    }
}

/// FNV-1a 64: a cheap content fingerprint for "inputs unchanged, skip the build" (not security).
public struct Fingerprint {
    public private(set) var value: UInt64 = 0xcbf29ce484222325
    public init() {}
    public mutating func add(_ bytes: [UInt8]) {
        var h = value
        bytes.withUnsafeBufferPointer { buf in
            for b in buf { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        }
        value = h
        add64(UInt64(bytes.count))
    }
    public mutating func add(_ s: String) { add(Array(s.utf8)) }
    mutating func add64(_ v: UInt64) {
        var h = value
        for i in 0..<8 { h = (h ^ ((v >> (8 * UInt64(i))) & 0xFF)) &* 0x100000001b3 }
        value = h
    }
    public var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
