// SPDX-License-Identifier: Apache-2.0
//
// The host end of a connection: a non-blocking byte stream (a Unix socket in production, a fake in
// tests; FC `VsockConnectionBackend`).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum StreamResult: Equatable {
    case bytes(Int)
    case wouldBlock
    case eof
    case failed(Int32)
}

public protocol VsockStream: AnyObject {
    /// The descriptor to poll, or -1 (fakes).
    var fd: Int32 { get }
    func read(into buffer: UnsafeMutableRawBufferPointer) -> StreamResult
    func write(_ bytes: UnsafeRawBufferPointer) -> StreamResult
    func shutdownWrite()
    func close()
}

/// A connected non-blocking Unix stream socket.
public final class UnixStream: VsockStream {
    public private(set) var fd: Int32

    /// Takes ownership of `fd` and makes it non-blocking.
    public init(fd: Int32) {
        self.fd = fd
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Connects to `path` (guest → host connections go to `<uds>_<port>`). nil when nobody listens.
    public static func connect(path: String) -> UnixStream? {
        guard path.utf8.count < VsockLimits.maxUnixPath else { return nil }
        // Non-blocking from the start: a listener with a full backlog answers EAGAIN instead of
        // stalling the device's only thread (treated like "nobody listens").
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un.make(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { Glibc.close(fd); return nil }
        return UnixStream(fd: fd)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) -> StreamResult {
        guard fd >= 0 else { return .failed(EBADF) }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return .bytes(n) }
            if n == 0 { return .eof }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
            return .failed(errno)
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) -> StreamResult {
        guard fd >= 0 else { return .failed(EBADF) }
        while true {
            let n = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .bytes(n) }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
            return .failed(errno)
        }
    }

    public func shutdownWrite() { if fd >= 0 { _ = shutdown(fd, Int32(SHUT_WR)) } }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    deinit { close() }
}

extension sockaddr_un {
    /// A sockaddr_un for `path` (caller checked the length against `VsockLimits.maxUnixPath`).
    static func make(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(VsockLimits.maxUnixPath - 1))
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return addr
    }
}
