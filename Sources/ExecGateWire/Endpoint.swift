// SPDX-License-Identifier: Apache-2.0
//
// Addresses of the verifier, shared by the server, the client library and the CLI.

/// Where a server listens or a client connects.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    /// AF_VSOCK. For listening the CID is ignored (VMADDR_CID_ANY).
    case vsock(cid: UInt32, port: UInt32)
    /// A Firecracker/Cloud Hypervisor-style hybrid vsock Unix socket: `CONNECT <port>\n`.
    case hybrid(path: String, port: UInt32)

    /// Parses `unix:PATH`, `vsock:PORT` (listen), `vsock:CID:PORT`, `hybrid:PATH:PORT`.
    public init(parsing text: String, listening: Bool) throws {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[1].isEmpty else { throw EndpointError(text: text, why: "expected SCHEME:ADDRESS") }
        let rest = String(parts[1])
        switch parts[0] {
        case "unix":
            self = .unix(path: rest)
        case "vsock":
            let nums = rest.split(separator: ":").map { UInt32($0) }
            if nums.count == 1, let p = nums[0], listening {
                self = .vsock(cid: UInt32.max, port: p)
            } else if nums.count == 2, let c = nums[0], let p = nums[1] {
                self = .vsock(cid: c, port: p)
            } else {
                throw EndpointError(text: text, why: listening ? "expected vsock:PORT or vsock:CID:PORT" : "expected vsock:CID:PORT")
            }
        case "hybrid":
            guard let colon = rest.lastIndex(of: ":"), let p = UInt32(rest[rest.index(after: colon)...]), colon != rest.startIndex else {
                throw EndpointError(text: text, why: "expected hybrid:SOCKET_PATH:PORT")
            }
            self = .hybrid(path: String(rest[..<colon]), port: p)
        default:
            throw EndpointError(text: text, why: "unknown scheme '\(parts[0])' (unix, vsock, hybrid)")
        }
    }

    public var description: String {
        switch self {
        case .unix(let p): return "unix:\(p)"
        case .vsock(let c, let p): return c == UInt32.max ? "vsock:\(p)" : "vsock:\(c):\(p)"
        case .hybrid(let path, let p): return "hybrid:\(path):\(p)"
        }
    }
}

public struct EndpointError: Error, CustomStringConvertible {
    public var text: String
    public var why: String
    public init(text: String, why: String) { self.text = text; self.why = why }
    public var description: String { "invalid address '\(text)': \(why)" }
}

