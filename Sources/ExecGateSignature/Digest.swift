// SPDX-License-Identifier: Apache-2.0
//
// Digests over borrowed buffers (OpenSSL's EVP_Digest; SHA-NI where the CPU has it).

import COpenSSLShim
import _ExecGateInternals

// MARK: - DigestAlgorithm

/// A digest algorithm a module signature may use. Ordered by strength, so a policy can say
/// "at least SHA-256" (`algorithm >= .sha256`). Raw values are ExecGate's own, stable numbers.
public enum DigestAlgorithm: Int, Sendable, Hashable, Comparable, CaseIterable, CustomStringConvertible {
    case sha1 = 1
    case sha224 = 2
    case sha256 = 3
    case sha384 = 4
    case sha512 = 5

    /// Output size in bytes.
    public var size: Int { Int(egs_md_size(Int32(rawValue))) }

    /// The name the kernel and OpenSSL use ("sha256").
    public var name: String {
        switch self {
        case .sha1: return "sha1"
        case .sha224: return "sha224"
        case .sha256: return "sha256"
        case .sha384: return "sha384"
        case .sha512: return "sha512"
        }
    }

    public var description: String { name }

    /// Parses "sha256", "SHA-256", ... (case-insensitive, dash optional).
    public init?(name: String) {
        let n = name.lowercased().filter { $0 != "-" }
        guard let a = DigestAlgorithm.allCases.first(where: { $0.name == n }) else { return nil }
        self = a
    }

    public static func < (lhs: DigestAlgorithm, rhs: DigestAlgorithm) -> Bool { lhs.rawValue < rhs.rawValue }

    var shimValue: Int32 { Int32(rawValue) }
}

// MARK: - Digest

/// A digest value: algorithm + bytes. Equality and hashing cover both.
public struct Digest: Sendable, Hashable, CustomStringConvertible {
    public let algorithm: DigestAlgorithm
    public let bytes: [UInt8]

    /// Wraps existing digest bytes; nil when the length does not fit the algorithm.
    public init?(algorithm: DigestAlgorithm, bytes: [UInt8]) {
        guard bytes.count == algorithm.size else { return nil }
        self.algorithm = algorithm
        self.bytes = bytes
    }

    /// Parses hex digest text (e.g. a `tbs:` blacklist entry without the prefix).
    public init?(algorithm: DigestAlgorithm, hex: String) {
        guard let b = Hex.decode(hex) else { return nil }
        self.init(algorithm: algorithm, bytes: b)
    }

    /// Lower-case hex of the digest bytes.
    public var hex: String { Hex.encode(bytes) }

    public var description: String { "\(algorithm.name):\(hex)" }

    /// Hashes a borrowed buffer without copying it.
    public static func compute(_ algorithm: DigestAlgorithm, over data: UnsafeRawBufferPointer) -> Digest {
        var out = [UInt8](repeating: 0, count: 64)
        let n = out.withUnsafeMutableBufferPointer { o in
            egs_digest(algorithm.shimValue, data.baseAddress, data.count, o.baseAddress, o.count)
        }
        // EVP_Digest with a fetched SHA-2 implementation only fails when libcrypto itself is broken
        // (e.g. the default provider cannot load); no input can make it fail.
        precondition(Int(n) == algorithm.size, "OpenSSL digest \(algorithm) unavailable")
        out.removeLast(out.count - Int(n))
        return Digest(uncheckedAlgorithm: algorithm, bytes: out)
    }

    /// Hashes a byte array.
    public static func compute(_ algorithm: DigestAlgorithm, over bytes: [UInt8]) -> Digest {
        bytes.withUnsafeBytes { compute(algorithm, over: $0) }
    }

    /// The digests of `data[0..<prefix]` and of all of `data`, hashing the prefix once (the state
    /// after the prefix is copied and finished for the first, continued for the second).
    public static func compute(_ algorithm: DigestAlgorithm, over data: UnsafeRawBufferPointer, prefix: Int) -> (prefix: Digest, whole: Digest) {
        precondition(prefix >= 0 && prefix <= data.count, "prefix \(prefix) outside \(data.count) bytes")
        var a = [UInt8](repeating: 0, count: 64), b = [UInt8](repeating: 0, count: 64)
        let n = a.withUnsafeMutableBufferPointer { pa in
            b.withUnsafeMutableBufferPointer { pb in
                egs_digest_with_prefix(algorithm.shimValue, data.baseAddress, prefix, data.count, pa.baseAddress, pb.baseAddress, 64)
            }
        }
        // As in `compute`: only a broken libcrypto fails here, never input.
        precondition(Int(n) == algorithm.size, "OpenSSL digest \(algorithm) unavailable")
        a.removeLast(a.count - Int(n))
        b.removeLast(b.count - Int(n))
        return (Digest(uncheckedAlgorithm: algorithm, bytes: a), Digest(uncheckedAlgorithm: algorithm, bytes: b))
    }

    /// The digest of `segments` in order, as if concatenated (without concatenating them).
    public static func compute(_ algorithm: DigestAlgorithm, overSegments segments: [UnsafeRawBufferPointer]) -> Digest {
        var out = [UInt8](repeating: 0, count: 64)
        let parts: [UnsafeRawPointer?] = segments.map(\.baseAddress)
        let lens = segments.map(\.count)
        let n = parts.withUnsafeBufferPointer { p in
            lens.withUnsafeBufferPointer { l in
                out.withUnsafeMutableBufferPointer { o in
                    egs_digest_segments(algorithm.shimValue, p.baseAddress, l.baseAddress, segments.count, o.baseAddress, o.count)
                }
            }
        }
        precondition(Int(n) == algorithm.size, "OpenSSL digest \(algorithm) unavailable")
        out.removeLast(out.count - Int(n))
        return Digest(uncheckedAlgorithm: algorithm, bytes: out)
    }

    /// The digest of the pieces `produce` feeds, in order, as if concatenated: each piece is
    /// hashed as it comes and nothing is kept (a register-guest's symbols digest is hashed from a
    /// small rewritten window, not a body-sized copy: KernelFactsKey.symbolsDigest).
    public static func compute(_ algorithm: DigestAlgorithm, streaming produce: ((UnsafeRawBufferPointer) -> Void) -> Void) -> Digest {
        let ctx = egs_digest_begin(algorithm.shimValue)
        // As in `compute`: only a broken libcrypto fails here, never input.
        precondition(ctx != nil, "OpenSSL digest \(algorithm) unavailable")
        var fed = true
        produce { piece in
            if piece.count > 0 && egs_digest_update(ctx, piece.baseAddress, piece.count) != 1 { fed = false }
        }
        var out = [UInt8](repeating: 0, count: 64)
        let n = out.withUnsafeMutableBufferPointer { o in egs_digest_end(ctx, o.baseAddress, o.count) }
        precondition(fed && Int(n) == algorithm.size, "OpenSSL digest \(algorithm) unavailable")
        out.removeLast(out.count - Int(n))
        return Digest(uncheckedAlgorithm: algorithm, bytes: out)
    }

    public static func sha256(_ data: UnsafeRawBufferPointer) -> Digest { compute(.sha256, over: data) }
    public static func sha512(_ data: UnsafeRawBufferPointer) -> Digest { compute(.sha512, over: data) }

    init(uncheckedAlgorithm: DigestAlgorithm, bytes: [UInt8]) {
        self.algorithm = uncheckedAlgorithm
        self.bytes = bytes
    }
}
