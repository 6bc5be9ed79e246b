// SPDX-License-Identifier: Apache-2.0
//
// How a listening `Endpoint` becomes a bound SwiftNIO server channel. Both the verifier service
// (ExecGateService) and the admin port (ExecGateAdmin) listen through this one function, so the
// admin port does not depend on the service to open its socket.
//
// Who may reach which socket is a deployment decision (docs/deployment.md): a Unix socket is made
// mode 0600 here, with no window (only its owner may connect); an AF_VSOCK listener is reachable only from the
// host side of that guest's vsock device; a hybrid socket is never listened on here (the
// vhost-user-vsock backend owns it).

import ExecGateVsockDevice
import ExecGateWire
import NIOCore
import NIOPosix

extension ServerBootstrap {
    /// Bind to a listening endpoint. A Unix socket path is claimed first (ExecGateVsockDevice
    /// `SocketPath`: a lock held while the listener lives; a stale socket is replaced, a live one
    /// or any other kind of file refused, never removed) and the socket is created 0600 with no
    /// window (umask 0177 around bind): only its owner may connect. AF_VSOCK listens on every CID.
    /// A server that stops for good calls `SocketPath.remove(path)` once its channel is closed.
    public func bind(endpoint: Endpoint) async throws -> Channel {
        switch endpoint {
        case .unix(let path):
            let claim = try SocketPath.claim(path)
            defer { claim.finish() }
            do {
                let channel = try await self.bind(unixDomainSocketPath: path).get()
                SocketPath.didBind(path)
                return channel
            } catch {
                SocketPath.release(path)  // a refused listen leaves no lock file of its own
                throw error
            }
        case .vsock(_, let port):
            return try await self.bind(to: VsockAddress(cid: .any, port: .init(rawValue: port))).get()
        case .hybrid:
            throw EndpointError(text: endpoint.description, why: "a hybrid socket is a client-side address; the vsock backend listens on it")
        }
    }
}

extension Endpoint {
    /// The listener on this endpoint closed for good: a Unix socket this process bound is removed
    /// (when it is still the one bound), then its lock file (`SocketPath.remove`). Nothing for
    /// AF_VSOCK, or for a path this process does not hold.
    public func removeListeningSocket() {
        if case .unix(let path) = self { SocketPath.remove(path) }
    }
}
