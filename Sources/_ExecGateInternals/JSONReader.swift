// SPDX-License-Identifier: Apache-2.0
//
// The one JSON reader: bytes → the writer's `JSON` value tree (JSON.swift), strict RFC 8259, with
// the work bounded before it is done. Written without Foundation (JSONDecoder would link
// FoundationEssentials into the service VM's /init). Not API.
//
// Bounds, each refused with its own code rather than trimmed: input size, nesting depth (the
// parser recurses once per level, so the depth cap is also its stack bound), total values, one
// string's bytes, one number's characters. Refused as well: duplicate object keys (two readers
// of one document must not see two different values), invalid UTF-8, unpaired surrogates,
// control characters in strings, leading zeros, trailing data after the value.

public enum JSONReadErrorCode: String, ErrorCode {
    case tooLarge = "json.too-large"
    case tooDeep = "json.too-deep"
    case tooManyValues = "json.too-many-values"
    case unexpectedEnd = "json.unexpected-end"
    case unexpectedByte = "json.unexpected-byte"
    case badString = "json.bad-string"
    case badNumber = "json.bad-number"
    case duplicateKey = "json.duplicate-key"
    case trailingData = "json.trailing-data"
}

public typealias JSONReadError = CodedError<JSONReadErrorCode>

public struct JSONReader {
    public struct Limits: Sendable {
        public var maxBytes: Int
        public var maxDepth: Int
        public var maxValues: Int
        public var maxStringBytes: Int
        public var maxNumberCharacters: Int

        public init(maxBytes: Int = 4 << 20, maxDepth: Int = 32, maxValues: Int = 200_000, maxStringBytes: Int = 1 << 20,
                    maxNumberCharacters: Int = 64) {
            self.maxBytes = maxBytes
            self.maxDepth = maxDepth
            self.maxValues = maxValues
            self.maxStringBytes = maxStringBytes
            self.maxNumberCharacters = maxNumberCharacters
        }
    }

    /// Parses one JSON document (surrounding whitespace allowed, nothing else).
    public static func parse(_ bytes: [UInt8], limits: Limits = Limits()) throws(JSONReadError) -> JSON {
        guard bytes.count <= limits.maxBytes else {
            throw JSONReadError(.tooLarge, "\(bytes.count) bytes, more than \(limits.maxBytes)")
        }
        var r = JSONReader(bytes: bytes, limits: limits)
        r.skipWhitespace()
        let v = try r.value(depth: 0)
        r.skipWhitespace()
        guard r.i == bytes.count else { throw r.error(.trailingData, "data after the value") }
        return v
    }

    private let bytes: [UInt8]
    private let limits: Limits
    private var i = 0
    private var values = 0

    private init(bytes: [UInt8], limits: Limits) {
        self.bytes = bytes
        self.limits = limits
    }

    private func error(_ code: JSONReadErrorCode, _ why: String) -> JSONReadError {
        JSONReadError(code, "at byte \(i): \(why)")
    }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    private func describe(_ b: UInt8) -> String {
        (0x21...0x7E).contains(b) ? "'\(Character(Unicode.Scalar(b)))'" : "byte 0x\(Hex.number(b, width: 2))"
    }

    private mutating func expect(_ b: UInt8, _ what: String) throws(JSONReadError) {
        guard i < bytes.count else { throw error(.unexpectedEnd, "expected \(what)") }
        guard bytes[i] == b else { throw error(.unexpectedByte, "expected \(what), found \(describe(bytes[i]))") }
        i += 1
    }

    private mutating func value(depth: Int) throws(JSONReadError) -> JSON {
        values += 1
        guard values <= limits.maxValues else { throw error(.tooManyValues, "more than \(limits.maxValues) values") }
        guard i < bytes.count else { throw error(.unexpectedEnd, "expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw error(.unexpectedByte, "expected a value, found \(describe(bytes[i]))")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONReadError) {
        let n = word.utf8CodeUnitCount
        let w = UnsafeBufferPointer(start: word.utf8Start, count: n)
        guard i + n <= bytes.count, bytes[i..<(i + n)].elementsEqual(w) else {
            throw error(.unexpectedByte, "expected '\(word)'")
        }
        i += n
    }

    private mutating func object(depth: Int) throws(JSONReadError) -> JSON {
        guard depth <= limits.maxDepth else { throw error(.tooDeep, "nested deeper than \(limits.maxDepth)") }
        i += 1  // '{', checked by value()
        var members: [(String, JSON)] = []
        var keys = Set<String>()
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard i < bytes.count else { throw error(.unexpectedEnd, "expected an object key") }
            guard bytes[i] == UInt8(ascii: "\"") else { throw error(.unexpectedByte, "expected an object key, found \(describe(bytes[i]))") }
            let keyAt = i
            let key = try string()
            guard keys.insert(key).inserted else { throw JSONReadError(.duplicateKey, "at byte \(keyAt): key \"\(key)\" appears twice") }
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "':' after an object key")
            skipWhitespace()
            members.append((key, try value(depth: depth)))
            skipWhitespace()
            guard i < bytes.count else { throw error(.unexpectedEnd, "expected ',' or '}'") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            throw error(.unexpectedByte, "expected ',' or '}', found \(describe(bytes[i]))")
        }
    }

    private mutating func array(depth: Int) throws(JSONReadError) -> JSON {
        guard depth <= limits.maxDepth else { throw error(.tooDeep, "nested deeper than \(limits.maxDepth)") }
        i += 1  // '[', checked by value()
        var elements: [JSON] = []
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
        while true {
            skipWhitespace()
            elements.append(try value(depth: depth))
            skipWhitespace()
            guard i < bytes.count else { throw error(.unexpectedEnd, "expected ',' or ']'") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
            throw error(.unexpectedByte, "expected ',' or ']', found \(describe(bytes[i]))")
        }
    }

    /// A string starting at the opening quote; UTF-8 validated, escapes decoded.
    private mutating func string() throws(JSONReadError) -> String {
        let start = i
        i += 1  // '"', checked by the caller
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw JSONReadError(.unexpectedEnd, "at byte \(start): unterminated string") }
            guard out.count <= limits.maxStringBytes else {
                throw JSONReadError(.tooLarge, "at byte \(start): a string longer than \(limits.maxStringBytes) bytes")
            }
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\""):
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw JSONReadError(.badString, "at byte \(start): a string that is not valid UTF-8")
                }
                return s
            case UInt8(ascii: "\\"):
                i += 1
                guard i < bytes.count else { throw error(.unexpectedEnd, "unterminated escape") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                            throw error(.badString, "a high surrogate without its low surrogate")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw error(.badString, "a high surrogate without its low surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw error(.badString, "a low surrogate without its high surrogate")
                    }
                    // Not a surrogate (checked above) and ≤ 0x10FFFF by construction: a scalar.
                    guard let u = Unicode.Scalar(scalar) else { throw error(.badString, "not a Unicode scalar") }
                    out.append(contentsOf: String(u).utf8)
                default:
                    i -= 1
                    throw error(.badString, "unknown escape \\\(describe(e))")
                }
            default:
                guard b >= 0x20 else { throw error(.badString, "a control character (\(describe(b))) in a string") }
                out.append(b)
                i += 1
            }
        }
    }

    private mutating func hex4() throws(JSONReadError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard i < bytes.count else { throw error(.unexpectedEnd, "a \\u escape needs four hex digits") }
            let b = bytes[i]
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
            default: throw error(.badString, "a \\u escape needs four hex digits, found \(describe(b))")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`: an integer as .uint/.int when it
    /// fits, anything else as .double (finite only).
    private mutating func number() throws(JSONReadError) -> JSON {
        let start = i
        func digits() -> Int {
            let s = i
            while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
            return i - s
        }
        var integral = true
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        let n = digits()
        guard n > 0 else { throw JSONReadError(.badNumber, "at byte \(start): a number needs digits") }
        guard !(n > 1 && bytes[intStart] == UInt8(ascii: "0")) else { throw JSONReadError(.badNumber, "at byte \(start): a leading zero") }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            integral = false
            guard digits() > 0 else { throw JSONReadError(.badNumber, "at byte \(start): digits must follow '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            integral = false
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw JSONReadError(.badNumber, "at byte \(start): digits must follow the exponent") }
        }
        guard i - start <= limits.maxNumberCharacters else {
            throw JSONReadError(.badNumber, "at byte \(start): a number longer than \(limits.maxNumberCharacters) characters")
        }
        // ASCII only, by the grammar above.
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if integral {
            if bytes[start] == UInt8(ascii: "-") {
                if let v = Int64(text) { return .int(v) }
            } else if let v = UInt64(text) {
                return .uint(v)
            }
        }
        guard let d = Double(text), d.isFinite else { throw JSONReadError(.badNumber, "at byte \(start): \(text) is out of range") }
        return .double(d)
    }
}

extension JSON {
    /// The value of `key` in an object (nil: not an object, or no such key).
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first(where: { $0.0 == key })?.1
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var objectMembers: [(String, JSON)]? {
        if case .object(let o) = self { return o }
        return nil
    }
}
