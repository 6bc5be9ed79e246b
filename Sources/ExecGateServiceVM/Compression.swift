// SPDX-License-Identifier: Apache-2.0
//
// gzip for the initramfs, through the project's one compression shim (CDecompress, zlib), so
// building an image needs no external tools. zlib's gzip wrapper writes mtime 0 and no file name:
// the same input always gives the same bytes.

import CDecompress

public enum Compression {
    public static func gzip(_ input: [UInt8], level: Int32 = 9) throws(ServiceVMError) -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var len = 0
        let rc = input.withUnsafeBufferPointer { egd_compress(Int32(EGD_GZIP), $0.baseAddress, $0.count, level, &out, &len) }
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
