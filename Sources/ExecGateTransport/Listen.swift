// SPDX-License-Identifier: Apache-2.0
//
// How a listening `Endpoint` becomes a bound SwiftNIO server channel. Both the verifier service
// (ExecGateService) and the admin port (ExecGateAdmin) listen through this one function, so the
// admin port does not depend on the service to open its socket.
//
// Who may reach which socket is a deployment decision (docs/deployment.md): a Unix socket is made
// mode 0600 here (only its owner may connect); an AF_VSOCK listener is reachable only from the
// host side of that guest's vsock device; a hybrid socket is never listened on here (the
// vhost-user-vsock backend owns it).

import ExecGateWire
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension ServerBootstrap {
    /// Bind to a listening endpoint. A Unix socket replaces a stale socket file (never any other
    /// kind of file) and is made 0600: only its owner may connect. AF_VSOCK listens on every CID.
    public func bind(endpoint: Endpoint) async throws -> Channel {
        switch endpoint {
        case .unix(let path):
            var st = stat()
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
            let channel = try await self.bind(unixDomainSocketPath: path).get()
            chmod(path, 0o600)
            return channel
        case .vsock(_, let port):
            return try await self.bind(to: VsockAddress(cid: .any, port: .init(rawValue: port))).get()
        case .hybrid:
            throw EndpointError(text: endpoint.description, why: "a hybrid socket is a client-side address; the vsock backend listens on it")
        }
    }
}
