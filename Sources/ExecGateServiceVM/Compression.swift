// SPDX-License-Identifier: Apache-2.0
//
// gzip (for the initramfs) and xz (to take the vmlinux ELF out of a bzImage), via zlib and liblzma
// in CExecGateSys, so building an image needs no external tools.

import CExecGateSys

public enum Compression {
    public static func gzip(_ input: [UInt8], level: Int32 = 9) throws(ServiceVMError) -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var len = 0
        let rc = input.withUnsafeBufferPointer { execgate_gzip($0.baseAddress, $0.count, level, &out, &len) }
        guard rc == 0, let p = out else { throw .sys("gzip failed", "") }
        defer { execgate_free(p) }
        return Array(UnsafeBufferPointer(start: p, count: len))
    }

    /// Decompresses the first xz stream in `input`; trailing bytes are ignored.
    public static func unxz(_ input: ArraySlice<UInt8>, maxOutput: Int = 512 << 20) throws(ServiceVMError) -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var len = 0
        let rc = input.withUnsafeBufferPointer { execgate_xz_decompress($0.baseAddress, $0.count, maxOutput, &out, &len) }
        guard rc == 0, let p = out else { throw .badInput("the xz payload does not decompress") }
        defer { execgate_free(p) }
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
