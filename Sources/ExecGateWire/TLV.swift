// SPDX-License-Identifier: Apache-2.0
//
// Message bodies are lists of TLV fields (docs/protocol.md, "Body encoding"):
//
//     +--------+--------+------------------+
//     |  tag   | length |      value       |
//     |  u16   |  u32   |  `length` bytes  |
//     +--------+--------+------------------+
//
// Value kinds: u8/u16/u32/u64 (big-endian, exactly their width), UTF-8 string, raw bytes, and a
// nested TLV list. Encoders write fields in ascending tag order (repeated fields consecutive), so
// every message has one canonical encoding (the golden vectors rely on this). Decoders accept any
// order, reject a second copy of a singular field, and skip unknown tags whose high bit (0x8000,
// "critical") is clear; an unknown critical tag makes the message malformed.

import NIOCore

/// Why a body did not decode. Equality compares the code and field only, so tests can match.
public struct WireDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case truncatedField = "truncated-field"
        case fieldLengthExceedsBody = "field-length-exceeds-body"
        case badIntegerWidth = "bad-integer-width"
        case invalidUTF8 = "invalid-utf8"
        case stringTooLong = "string-too-long"
        case duplicateField = "duplicate-field"
        case missingField = "missing-field"
        case unknownCriticalField = "unknown-critical-field"
        case nestingTooDeep = "nesting-too-deep"
        case tooManyItems = "too-many-items"
        case invalidValue = "invalid-value"
    }
    public var code: Code
    public var field: String
    public var detail: String

    public init(_ code: Code, field: String, _ detail: String = "") {
        self.code = code
        self.field = field
        self.detail = detail
    }

    public var description: String {
        "\(code.rawValue) in field \(field)" + (detail.isEmpty ? "" : ": \(detail)")
    }

    public static func == (a: Self, b: Self) -> Bool { a.code == b.code && a.field == b.field }
    public func hash(into h: inout Hasher) { h.combine(code); h.combine(field) }
}

// MARK: - Writing

/// Builds a canonical TLV body. Callers add fields in ascending tag order.
///
/// A gathering writer (`gatherAbove`) does not copy a `bytes` value of at least that many bytes:
/// it ends the current part, keeps the value's buffer as a part of its own (shared storage) and
/// goes on in a new one, so a module-sized field is written to the socket from the caller's
/// buffer (`parts`, one gathered write) instead of being copied into the body first.
public struct TLVWriter {
    /// The body (the last part, for a gathering writer: read `parts` instead).
    public private(set) var buffer: ByteBuffer
    private var done: [ByteBuffer] = []
    private let gatherAbove: Int
    private let allocator: ByteBufferAllocator

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator(), capacity: Int = 256) {
        self.init(allocator: allocator, capacity: capacity, gatherAbove: .max)
    }

    /// A gathering writer: `bytes` values of at least `gatherAbove` bytes become parts of their own.
    public init(allocator: ByteBufferAllocator, capacity: Int, gatherAbove: Int) {
        buffer = allocator.buffer(capacity: capacity)
        self.allocator = allocator
        self.gatherAbove = gatherAbove
    }

    /// The body in order: the parts written so far and the borrowed values between them (non-empty
    /// parts only). Their concatenation is the body a non-gathering writer builds.
    public var parts: [ByteBuffer] { (done + [buffer]).filter { $0.readableBytes > 0 } }

    public mutating func u8(_ tag: UInt16, _ v: UInt8) { header(tag, 1); buffer.writeInteger(v) }
    public mutating func u16(_ tag: UInt16, _ v: UInt16) { header(tag, 2); buffer.writeInteger(v) }
    public mutating func u32(_ tag: UInt16, _ v: UInt32) { header(tag, 4); buffer.writeInteger(v) }
    public mutating func u64(_ tag: UInt16, _ v: UInt64) { header(tag, 8); buffer.writeInteger(v) }

    public mutating func string(_ tag: UInt16, _ s: String) {
        header(tag, s.utf8.count)
        buffer.writeString(s)
    }

    public mutating func bytes(_ tag: UInt16, _ b: ByteBuffer) {
        var b = b
        header(tag, b.readableBytes)
        if b.readableBytes >= gatherAbove {
            done.append(buffer)
            done.append(b)
            buffer = allocator.buffer(capacity: 256)
            return
        }
        buffer.writeBuffer(&b)
    }

    public mutating func bytes(_ tag: UInt16, _ b: [UInt8]) {
        header(tag, b.count)
        buffer.writeBytes(b)
    }

    public mutating func nested(_ tag: UInt16, _ build: (inout TLVWriter) -> Void) {
        var inner = TLVWriter(capacity: 64)
        build(&inner)
        bytes(tag, inner.buffer)
    }

    private mutating func header(_ tag: UInt16, _ length: Int) {
        buffer.writeInteger(tag)
        // Every field we encode is bounded by the message limits (<= 256 MiB): a length that does
        // not fit u32 is a programming error, not input.
        buffer.writeInteger(UInt32(length))
    }
}

// MARK: - Reading

/// One raw field: its tag and a zero-copy slice of its value.
public struct TLVField: Sendable {
    public var tag: UInt16
    public var value: ByteBuffer
}

/// Splits a body into fields (pass 1: bounds, counts and duplicates), then offers typed
/// accessors (pass 2).
///
/// Pass 1 bounds the work a body can cost before anything is allocated per field: a known tag
/// not listed in `repeated` is singular, and its second copy fails the body at once
/// (`duplicateField`); a repeated tag fails once it exceeds its cap (`tooManyItems`). So the
/// field list never holds more than `known.count + Σ repeated caps` entries, whatever the body's
/// size (a 64 MiB body of 6-byte empty fields is 11 million fields: before these caps, decoding
/// it cost ~1.5 GB of field list). Unknown non-critical fields are skipped without being stored,
/// at most `WireLimits.maximumUnknownFields` of them (`tooManyItems` after), so the first pass
/// also visits a bounded number of fields whatever the body's size.
public struct TLVReader {
    public private(set) var fields: [TLVField] = []
    private let message: String

    /// - Parameters:
    ///   - body: the body slice; not copied.
    ///   - message: a name for error messages (e.g. "authorize-module").
    ///   - known: the tags this message defines; unknown critical tags are rejected.
    ///   - repeated: the tags that may occur more than once, each with the most copies allowed.
    ///     Every other known tag is singular.
    /// - Throws: `WireDecodeError` `.truncatedField`, `.fieldLengthExceedsBody`, `.unknownCriticalField`,
    ///   `.duplicateField` (a singular tag twice), `.tooManyItems` (a repeated tag over its cap, or
    ///   more than `WireLimits.maximumUnknownFields` unknown fields).
    public init(_ body: ByteBuffer, message: String, known: Set<UInt16>, repeated: [UInt16: Int] = [:]) throws {
        self.message = message
        var body = body
        // Counts per tag, bounded by `known` (≤ 64 Ki entries, in practice < 20).
        var seen: [UInt16: Int] = [:]
        var unknown = 0
        while body.readableBytes > 0 {
            // Counted before the tag is read: a tail of 2–5 bytes was reported as 0–3 stray bytes.
            let stray = body.readableBytes
            guard let tag = body.readInteger(as: UInt16.self), let len = body.readInteger(as: UInt32.self) else {
                throw WireDecodeError(.truncatedField, field: message, "\(stray) stray bytes at end of body")
            }
            guard let length = Int(exactly: len), let value = body.readSlice(length: length) else {
                throw WireDecodeError(.fieldLengthExceedsBody, field: "\(message).\(tag)",
                                      "length \(len) but only \(body.readableBytes) bytes remain")
            }
            if !known.contains(tag) {
                if tag & 0x8000 != 0 { throw WireDecodeError(.unknownCriticalField, field: "\(message).\(tag)") }
                unknown += 1
                guard unknown <= WireLimits.maximumUnknownFields else {
                    throw WireDecodeError(.tooManyItems, field: message, "more than \(WireLimits.maximumUnknownFields) unknown fields")
                }
                continue  // Non-critical field from a newer peer: skipped, by the spec.
            }
            let count = seen[tag, default: 0] + 1
            if let cap = repeated[tag] {
                guard count <= cap else {
                    throw WireDecodeError(.tooManyItems, field: "\(message).\(tag)", "more than \(cap) copies")
                }
            } else if count > 1 {
                throw WireDecodeError(.duplicateField, field: "\(message).\(tag)", "a singular field occurs twice")
            }
            seen[tag] = count
            fields.append(TLVField(tag: tag, value: value))
        }
    }

    public func all(_ tag: UInt16) -> [ByteBuffer] { fields.lazy.filter { $0.tag == tag }.map(\.value) }

    /// The single value of a singular field, or nil when absent. Throws on duplicates.
    public func optional(_ tag: UInt16, _ name: String) throws -> ByteBuffer? {
        var found: ByteBuffer?
        for f in fields where f.tag == tag {
            if found != nil { throw WireDecodeError(.duplicateField, field: "\(message).\(name)") }
            found = f.value
        }
        return found
    }

    public func required(_ tag: UInt16, _ name: String) throws -> ByteBuffer {
        guard let v = try optional(tag, name) else { throw WireDecodeError(.missingField, field: "\(message).\(name)") }
        return v
    }

    // Typed accessors.

    public func integer<T: FixedWidthInteger>(_ tag: UInt16, _ name: String, as: T.Type = T.self) throws -> T? {
        guard var v = try optional(tag, name) else { return nil }
        guard v.readableBytes == MemoryLayout<T>.size, let x = v.readInteger(as: T.self) else {
            throw WireDecodeError(.badIntegerWidth, field: "\(message).\(name)",
                                  "expected \(MemoryLayout<T>.size) bytes, got \(v.readableBytes)")
        }
        return x
    }

    public func requiredInteger<T: FixedWidthInteger>(_ tag: UInt16, _ name: String, as: T.Type = T.self) throws -> T {
        guard let x: T = try integer(tag, name) else { throw WireDecodeError(.missingField, field: "\(message).\(name)") }
        return x
    }

    public func string(_ tag: UInt16, _ name: String) throws -> String? {
        guard let v = try optional(tag, name) else { return nil }
        return try Self.decodeString(v, field: "\(message).\(name)")
    }

    public func requiredString(_ tag: UInt16, _ name: String) throws -> String {
        guard let s = try string(tag, name) else { throw WireDecodeError(.missingField, field: "\(message).\(name)") }
        return s
    }

    public func strings(_ tag: UInt16, _ name: String) throws -> [String] {
        try all(tag).map { try Self.decodeString($0, field: "\(message).\(name)") }
    }

    static func decodeString(_ v: ByteBuffer, field: String) throws -> String {
        guard v.readableBytes <= WireLimits.maximumStringLength else {
            throw WireDecodeError(.stringTooLong, field: field, "\(v.readableBytes) bytes")
        }
        guard isValidUTF8(v) else { throw WireDecodeError(.invalidUTF8, field: field) }
        return String(buffer: v)
    }

    /// Whether `v` is valid UTF-8, checked strictly (String(decoding:) would silently repair
    /// hostile input); nothing is allocated.
    static func isValidUTF8(_ v: ByteBuffer) -> Bool {
        v.withUnsafeReadableBytes { isValidUTF8($0) }
    }

    /// The same over bytes in place. ASCII (every byte below 0x80, valid UTF-8 as it is: a
    /// kernel's symbol names) is told 8 bytes at a time; anything else goes through the decoder.
    static func isValidUTF8(_ raw: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let n = raw.count
        while n - i >= 8 {
            if raw.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 { break }
            i += 8
        }
        while i < n && raw[i] < 0x80 { i += 1 }
        if i == n { return true }
        var it = UnsafeRawBufferPointer(rebasing: raw[i...]).makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
}
