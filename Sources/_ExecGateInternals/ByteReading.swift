// SPDX-License-Identifier: Apache-2.0
//
// The one bounds-checked integer reader over borrowed bytes, after SwiftNIO's
// `ByteBuffer.getInteger(at:endianness:as:)`: `get…` never traps and never moves anything; it returns
// nil when the bytes are not there (offset negative, past the end, or overflowing). Hostile input
// (ELF files, guest claims, vhost-user messages) goes through these, never through raw
// `load(fromByteOffset:)` with an unchecked offset. Not API.

public enum ByteOrder: Sendable {
    case little
    case big
}

extension UnsafeRawBufferPointer {
    /// The integer of type `T` stored at `offset` in `order`, or nil if `offset..<offset+size` is not
    /// inside the buffer.
    @inlinable @inline(__always)
    public func getInteger<T: FixedWidthInteger>(at offset: Int, order: ByteOrder = .little, as: T.Type = T.self) -> T? {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= count &- size, count >= size, let base = baseAddress else { return nil }
        let raw = (base + offset).loadUnaligned(as: T.self)
        return order == .little ? T(littleEndian: raw) : T(bigEndian: raw)
    }

    /// The integer at `offset` for a range the caller has ALREADY bounds-checked (a validated ELF
    /// header or section table): no optional, one unaligned load; the range is checked by a
    /// precondition in debug builds only. Use `getInteger` for anything not yet validated.
    @inlinable @inline(__always)
    public func loadInteger<T: FixedWidthInteger>(at offset: Int, order: ByteOrder = .little, as: T.Type = T.self) -> T {
        assert(offset >= 0 && offset <= count - MemoryLayout<T>.size, "loadInteger: unchecked range")
        let raw = loadUnaligned(fromByteOffset: offset, as: T.self)
        return order == .little ? T(littleEndian: raw) : T(bigEndian: raw)
    }

    /// The signed 32-bit displacement at `offset` (little-endian, as in an x86 rel32 operand).
    @inlinable @inline(__always)
    public func getRel32(at offset: Int) -> Int32? { getInteger(at: offset, order: .little, as: Int32.self) }

    /// True if the bytes start with the ASCII `p` (byte for byte).
    @inlinable @inline(__always)
    public func hasASCIIPrefix(_ p: StaticString) -> Bool {
        let n = p.utf8CodeUnitCount
        guard count >= n else { return false }
        let q = p.utf8Start
        for k in 0..<n where self[k] != q[k] { return false }
        return true
    }

    /// True if the bytes start with the bytes of `p` (byte for byte; eight at a time).
    @inlinable @inline(__always)
    public func hasPrefix(_ p: UnsafeRawBufferPointer) -> Bool {
        let n = p.count
        guard count >= n else { return false }
        var i = 0
        while i + 8 <= n {
            if loadUnaligned(fromByteOffset: i, as: UInt64.self) != p.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
            i += 8
        }
        while i < n { if self[i] != p[i] { return false }; i += 1 }
        return true
    }

    /// True if every byte is below 0x80, eight bytes at a time (the one ASCII test of borrowed
    /// names: section names at parse, symbol and export names in the tables).
    @inlinable @inline(__always)
    public var isASCII: Bool {
        var acc: UInt64 = 0
        var i = 0
        while i + 8 <= count { acc |= loadUnaligned(fromByteOffset: i, as: UInt64.self); i += 8 }
        // The tail inside the last 8 bytes (re-reading some: an OR does not mind), else bytewise.
        if i < count && count >= 8 { acc |= loadUnaligned(fromByteOffset: count - 8, as: UInt64.self); i = count }
        while i < count { acc |= UInt64(self[i]); i += 1 }
        return acc & 0x8080_8080_8080_8080 == 0
    }
}

/// Decimal ASCII as both ends of the hybrid vsock handshake write a port: 1–10 digits and nothing
/// else (no sign, space or CR), whose value fits a `UInt32`.
public enum ASCIIDecimal {
    @inlinable
    public static func uint32<C: Collection>(_ digits: C) -> UInt32? where C.Element == UInt8 {
        guard !digits.isEmpty, digits.count <= 10 else { return nil }
        var v: UInt64 = 0
        for d in digits {
            guard d >= 0x30 && d <= 0x39 else { return nil }
            v = v &* 10 &+ UInt64(d &- 0x30)
        }
        return v <= UInt64(UInt32.max) ? UInt32(v) : nil
    }
}

extension Array where Element == UInt8 {
    /// See `UnsafeRawBufferPointer.getInteger(at:order:as:)`; `offset` is an array index.
    @inlinable
    public func getInteger<T: FixedWidthInteger>(at offset: Int, order: ByteOrder = .little, as: T.Type = T.self) -> T? {
        withUnsafeBytes { $0.getInteger(at: offset, order: order, as: T.self) }
    }
}

extension ArraySlice where Element == UInt8 {
    /// See `UnsafeRawBufferPointer.getInteger(at:order:as:)`; `offset` is relative to `startIndex`.
    @inlinable
    public func getInteger<T: FixedWidthInteger>(at offset: Int, order: ByteOrder = .little, as: T.Type = T.self) -> T? {
        withUnsafeBytes { $0.getInteger(at: offset, order: order, as: T.self) }
    }
}

/// A forward cursor over borrowed bytes. `read…` moves the cursor only on success (NIO's
/// `readInteger` contract); `nil` means "not enough bytes" and leaves the cursor where it was.
public struct ByteCursor {
    public let bytes: UnsafeRawBufferPointer
    @usableFromInline var _offset: Int
    /// Where the next read starts.
    @inlinable public var offset: Int { _offset }

    @inlinable public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self._offset = offset
    }

    @inlinable public var remaining: Int { Swift.max(0, bytes.count - offset) }

    @inlinable
    public mutating func readInteger<T: FixedWidthInteger>(order: ByteOrder = .little, as: T.Type = T.self) -> T? {
        guard let v = bytes.getInteger(at: offset, order: order, as: T.self) else { return nil }
        _offset += MemoryLayout<T>.size
        return v
    }

    /// The next `count` bytes as a slice of the borrowed buffer (no copy), or nil if fewer remain.
    @inlinable
    public mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= remaining else { return nil }
        let s = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
        _offset += count
        return s
    }

    @inlinable
    public mutating func skip(_ count: Int) -> Bool {
        guard count >= 0, count <= remaining else { return false }
        _offset += count
        return true
    }
}
