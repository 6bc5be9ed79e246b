// SPDX-License-Identifier: Apache-2.0
//
// Wire protocol v1 framing. The normative specification is docs/protocol.md; this file implements
// its "Frame" section. Every frame is a fixed 20-byte header followed by `length` body bytes:
//
//     0        4        6        8                16       20
//     +--------+--------+--------+----------------+--------+------------------+
//     | magic  |version |  type  |   request id   | length |   body (TLVs)    |
//     | "EXGT" |  u16   |  u16   |      u64       |  u32   |  `length` bytes  |
//     +--------+--------+--------+----------------+--------+------------------+
//
// All integers are big-endian (network order). The header is validated before a single byte of
// the body is buffered: a `length` above the receiver's limit is refused without allocating.

import NIOCore

/// A decoded frame: the header fields and a zero-copy slice of the body.
public struct Frame: Sendable, Equatable {
    public var version: UInt16
    public var type: MessageType
    public var requestID: UInt64
    public var body: ByteBuffer

    public init(version: UInt16 = WireLimits.protocolVersion, type: MessageType, requestID: UInt64, body: ByteBuffer) {
        self.version = version
        self.type = type
        self.requestID = requestID
        self.body = body
    }
}

/// Named limits and constants of wire protocol v1 (docs/protocol.md, "Limits").
public enum WireLimits {
    /// `"EXGT"` as a big-endian u32.
    public static let magic: UInt32 = 0x4558_4754
    /// The only protocol version this implementation speaks.
    public static let protocolVersion: UInt16 = 1
    /// Size of the fixed frame header in bytes.
    public static let headerSize = 20
    /// Default largest body a receiver accepts: 28 MiB = 29,360,128 bytes. Sized to the largest
    /// real module plus its heaviest legal claim, not more: Debian 6.1's largest module,
    /// `amdgpu.ko`, is 19,462,545 bytes; its claim carrying both forms at once (every executable
    /// section's bytes, 4,850,199, and the whole executable region, 4,853,760 page-rounded, plus
    /// 47 section addresses) makes an authorize-module body of 29,168,501 bytes
    /// (`WireLimitsTests.testMaximumBodyFitsTheLargestRealModuleAndItsClaim` recomputes it).
    /// A server buffers at most one body of this size at a time across all connections
    /// (ExecGateTransport `BufferBudget`), so this is also most of its memory budget.
    public static let defaultMaximumBodySize = 28 << 20
    /// Absolute cap on any configured maximum: the length field is u32, but nobody needs > 256 MiB.
    public static let absoluteMaximumBodySize = 256 << 20
    /// Deepest nesting of TLV lists a decoder follows.
    public static let maximumNestingDepth = 4
    /// Most section claims in one authorize-module request (a module has < 100 sections; 6.1 caps
    /// e_shnum at 65535, we cap the claim far lower).
    public static let maximumSectionClaims = 1024
    /// Most `check` entries in one verdict (the verifier runs fewer than 16 checks).
    public static let maximumVerdictChecks = 64
    /// Most unknown non-critical fields one body may carry (skipped unread): room for a much
    /// newer peer, while the first pass over any body visits a bounded number of fields.
    public static let maximumUnknownFields = 256
    /// Longest string field (names, messages) in bytes.
    public static let maximumStringLength = 64 << 10
}

extension ByteBuffer {
    /// Write one complete frame (header + body).
    public mutating func writeFrame(_ frame: Frame) {
        self.writeInteger(WireLimits.magic)
        self.writeInteger(frame.version)
        self.writeInteger(frame.type.rawValue)
        self.writeInteger(frame.requestID)
        // The body of an outgoing frame is built by us; it can never exceed u32 because every
        // encoder caps its inputs far below that. A violation is a programming error.
        precondition(frame.body.readableBytes <= Int(UInt32.max), "frame body exceeds u32")
        self.writeInteger(UInt32(frame.body.readableBytes))
        var body = frame.body
        self.writeBuffer(&body)
    }
}
