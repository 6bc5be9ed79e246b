// SPDX-License-Identifier: Apache-2.0
//
// Message types of wire protocol v1 (docs/protocol.md, "Message types"). Requests have the high
// bit clear; the reply to request type `t` is `t | 0x8000`. `error` (0xFFFF) may answer any request.
// A RawRepresentable struct, not an enum, so unknown values from a newer peer stay representable
// and can be answered with `unknownMessageType` instead of failing to decode the frame.

public struct MessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// 0x0001: version negotiation. Optional; without it both sides speak version 1.
    public static let hello = MessageType(rawValue: 0x0001)
    /// 0x0002: register a protected guest and the facts later checks need.
    public static let registerGuest = MessageType(rawValue: 0x0002)
    /// 0x0003: may these module pages become executable? Evidence + claim.
    public static let authorizeModule = MessageType(rawValue: 0x0003)
    /// 0x0004: health and counters.
    public static let status = MessageType(rawValue: 0x0004)
    /// 0x0005: may this run-time text patch (jump label, static call, ftrace) be applied?
    public static let authorizePatch = MessageType(rawValue: 0x0005)
    /// 0x0006: a module was unloaded (EXEC already revoked): forget its ranges, sites and exports.
    public static let retireModule = MessageType(rawValue: 0x0006)
    /// 0x0007: a module's init memory was freed (EXEC on it already revoked).
    public static let moduleInitFreed = MessageType(rawValue: 0x0007)
    /// 0x0008: the guest is gone (destroyed, every EXEC grant revoked): forget it.
    public static let removeGuest = MessageType(rawValue: 0x0008)

    public static let helloReply = MessageType(rawValue: 0x8001)
    public static let registerGuestReply = MessageType(rawValue: 0x8002)
    /// 0x8003: the answer to authorize-module and authorize-patch.
    public static let verdict = MessageType(rawValue: 0x8003)
    public static let statusReply = MessageType(rawValue: 0x8004)
    public static let retireModuleReply = MessageType(rawValue: 0x8006)
    public static let moduleInitFreedReply = MessageType(rawValue: 0x8007)
    public static let removeGuestReply = MessageType(rawValue: 0x8008)
    /// 0xFFFF: the request could not be processed (see `WireErrorCode`).
    public static let error = MessageType(rawValue: 0xFFFF)

    public var isRequest: Bool { rawValue & 0x8000 == 0 }

    public var description: String {
        switch self {
        case .hello: return "hello"
        case .registerGuest: return "register-guest"
        case .authorizeModule: return "authorize-module"
        case .status: return "status"
        case .authorizePatch: return "authorize-patch"
        case .helloReply: return "hello-reply"
        case .registerGuestReply: return "register-guest-reply"
        case .verdict: return "verdict"
        case .statusReply: return "status-reply"
        case .retireModule: return "retire-module"
        case .retireModuleReply: return "retire-module-reply"
        case .moduleInitFreed: return "module-init-freed"
        case .moduleInitFreedReply: return "module-init-freed-reply"
        case .removeGuest: return "remove-guest"
        case .removeGuestReply: return "remove-guest-reply"
        case .error: return "error"
        default: return "type-0x" + String(rawValue, radix: 16)
        }
    }
}

/// Error codes carried by an `error` frame (docs/protocol.md, "Error codes").
public struct WireErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// 1: the header's magic was wrong. The stream cannot be resynchronised: the server closes it.
    public static let badMagic = WireErrorCode(rawValue: 1)
    /// 2: the header's version is not one the server speaks. The body was skipped; connection usable.
    public static let unsupportedVersion = WireErrorCode(rawValue: 2)
    /// 3: unknown message type. The body was skipped; connection usable.
    public static let unknownMessageType = WireErrorCode(rawValue: 3)
    /// 4: the body does not decode as the message its type names. Connection usable.
    public static let malformedBody = WireErrorCode(rawValue: 4)
    /// 5: `length` exceeded the server's limit. The body is discarded unbuffered; connection usable.
    public static let frameTooLarge = WireErrorCode(rawValue: 5)
    /// 6: the request names a guest that was never registered.
    public static let unknownGuest = WireErrorCode(rawValue: 6)
    /// 7: the request was understood but refused (e.g. a reply type sent as a request).
    public static let badRequest = WireErrorCode(rawValue: 7)
    /// 8: the server is shutting down or overloaded; retry on another connection later.
    public static let unavailable = WireErrorCode(rawValue: 8)
    /// 9: an internal error; the request may be retried.
    public static let internalError = WireErrorCode(rawValue: 9)
    /// 10: register-guest for a guest id that is live, without `reset`: facts are taken once.
    public static let guestExists = WireErrorCode(rawValue: 10)
    /// 11: retire-module / module-init-freed for a module that is not live in that guest.
    public static let unknownModule = WireErrorCode(rawValue: 11)
    /// 12: retire-module for a module whose exports a live module uses (the kernel refuses such
    /// an unload: delete_module() → -EWOULDBLOCK while the module's source_list is not empty).
    public static let moduleInUse = WireErrorCode(rawValue: 12)
    /// 13: register-guest whose facts fail a plausibility check (the message names the fact).
    public static let implausibleFacts = WireErrorCode(rawValue: 13)
    /// 14: register-guest for a kernel build the policy does not list (`kernel … symbols …` pins).
    public static let untrustedKernel = WireErrorCode(rawValue: 14)
    /// 15: register-guest by digest (`symbols_digest`) for a build this server does not hold now
    /// (never registered, or its last guest left, or the server restarted): nothing was registered;
    /// send the full registration with the symbol records.
    public static let unknownBuild = WireErrorCode(rawValue: 15)

    /// The server understood a retire-module / module-init-freed request and refused it for the
    /// guest's state: the module is not live, is in use, or the guest is not registered. Every
    /// other code is no answer to the request (bad input, overload, a fault): a caller reports
    /// those as "no verdict" (the CLI's exit 2), these as a refusal (exit 1).
    public var isStateRefusal: Bool { self == .unknownModule || self == .moduleInUse || self == .unknownGuest }

    public var description: String {
        switch self {
        case .badMagic: return "bad-magic"
        case .unsupportedVersion: return "unsupported-version"
        case .unknownMessageType: return "unknown-message-type"
        case .malformedBody: return "malformed-body"
        case .frameTooLarge: return "frame-too-large"
        case .unknownGuest: return "unknown-guest"
        case .badRequest: return "bad-request"
        case .unavailable: return "unavailable"
        case .internalError: return "internal-error"
        case .guestExists: return "guest-exists"
        case .unknownModule: return "unknown-module"
        case .moduleInUse: return "module-in-use"
        case .implausibleFacts: return "implausible-facts"
        case .untrustedKernel: return "untrusted-kernel"
        case .unknownBuild: return "unknown-build"
        default: return "error-\(rawValue)"
        }
    }
}
