// SPDX-License-Identifier: Apache-2.0
//
// The one error shape of the layers (after swift-certificates' `CertificateError`): a code from a
// closed set, with a stable string that tests, logs and `--json` output match on, plus a reason
// for people. Equality compares codes only, so a test can assert "this is truncated-header"
// without spelling the reason. Each layer declares its codes as one `String` enum and names its
// error `typealias XError = CodedError<XErrorCode>`. Not API.

/// A layer's closed set of error codes; the raw value is the stable code string (`layer.name`).
public protocol ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible where RawValue == String {}

extension ErrorCode {
    public var description: String { rawValue }
}

public struct CodedError<LayerCode: ErrorCode>: Error, Sendable, Hashable, CustomStringConvertible {
    /// The layer's code type, so call sites can say `KernelImageError.Code.unknownFormat`.
    public typealias Code = LayerCode
    public let code: Code
    public let reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(code.rawValue): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}
