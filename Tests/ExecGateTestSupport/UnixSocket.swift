// SPDX-License-Identifier: Apache-2.0
//
// The tests' fake peers and clients on Unix stream sockets: one place that fills a `sockaddr_un`.

#if canImport(Glibc)
import Glibc
#endif

public enum UnixSocket {
    /// `bind(2)` or `connect(2)` of `fd` to `path` (the path must fit `sun_path` with its NUL: a
    /// test path that does not is a bug in the test). Returns the call's result.
    public static func bind(_ fd: Int32, to path: String) -> Int32 { withAddress(path) { Glibc.bind(fd, $0, $1) } }
    public static func connect(_ fd: Int32, to path: String) -> Int32 { withAddress(path) { Glibc.connect(fd, $0, $1) } }

    private static func withAddress(_ path: String, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            precondition(path.utf8.count < p.count, "socket path longer than sun_path: \(path)")
            for (i, b) in path.utf8.enumerated() { p[i] = b }
        }
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    }
}
