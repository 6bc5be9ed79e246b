// SPDX-License-Identifier: Apache-2.0
//
// Claiming a Unix socket path before bind(2), for every listener ExecGate opens (the verifier's
// VMM and admin ports, the vsock backend's vhost-user and hybrid sockets). POSIX only, no NIO,
// so both the SwiftNIO servers and the poll(2) backend call the same code.
//
// Rules (issue 10, "Sockets"):
//   1. A lock file `PATH.lock` (0600) is locked with flock(LOCK_EX | LOCK_NB) and held for the
//      life of the process. A second server on the same path — another process, or the same
//      process binding one path twice (`--listen X --admin-listen X`) — fails to lock and is
//      refused: flock locks belong to open file descriptions, so even the same process conflicts.
//   2. With the lock held, the path is probed: absent → bind; a socket that accepts connect(2)
//      → live (a server without the lock, e.g. an older ExecGate) → refused, never unlinked;
//      a socket that refuses (ECONNREFUSED) → stale → unlinked; anything else (regular file,
//      directory, symlink, FIFO) → refused with a message, never removed.
//   3. The socket is created 0600 with no window: umask 0177 is in force from the claim until
//      `finish()` (bind creates the inode with mode 0777 & ~umask). A chmod after bind would
//      leave a moment in which any local user could connect.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct SocketPathError: Error, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable { case inUse = "in-use", notASocket = "not-a-socket", tooLong = "too-long", io }
    public let code: Code
    public let path: String
    public let reason: String
    public init(_ code: Code, _ path: String, _ reason: String) { self.code = code; self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code && a.path == b.path }
}

public enum SocketPath {
    /// What is at a path now.
    public enum State: Equatable, Sendable {
        case absent
        case liveSocket
        case staleSocket
        /// Not a socket: the `S_IFMT` kind in words ("regular file", "directory", …).
        case other(String)
    }

    /// What the claim holds until `finish()`: the process umask (restored then). The lock file
    /// descriptor stays open for the life of the process.
    public struct Claim: Sendable {
        let previousUmask: mode_t
        /// Restores the umask. Call right after bind(2) (`defer`).
        public func finish() { SocketPath.releaseUmask(previousUmask) }
    }

    /// Longest path a `sockaddr_un` holds (108 bytes with the terminating NUL).
    public static let maximumPathLength = 107

    /// Lock, probe, remove a stale socket, and set umask 0177 for the bind that follows.
    /// - Throws: `SocketPathError` `.inUse` (locked or live), `.notASocket` (other file kind),
    ///   `.tooLong`, `.io`.
    public static func claim(_ path: String) throws -> Claim {
        guard path.utf8.count <= maximumPathLength else {
            throw SocketPathError(.tooLong, path, "socket path longer than \(maximumPathLength) bytes")
        }
        try lock(path)
        switch probe(path) {
        case .absent: break
        case .liveSocket:
            throw SocketPathError(.inUse, path, "a server is listening on this socket (connect succeeded); refusing to replace it")
        case .staleSocket:
            guard unlink(path) == 0 || errno == ENOENT else {
                throw SocketPathError(.io, path, "cannot remove the stale socket: errno \(errno)")
            }
        case .other(let kind):
            throw SocketPathError(.notASocket, path, "exists and is a \(kind), not a socket; refusing to remove it")
        }
        return Claim(previousUmask: acquireUmask())
    }

    /// Classify what is at `path` without changing it (lstat, then connect for a socket).
    public static func probe(_ path: String) -> State {
        var st = stat()
        guard lstat(path, &st) == 0 else { return .absent }
        switch st.st_mode & S_IFMT {
        case S_IFSOCK: break
        case S_IFREG: return .other("regular file")
        case S_IFDIR: return .other("directory")
        case S_IFLNK: return .other("symbolic link")
        case S_IFIFO: return .other("FIFO")
        case S_IFCHR, S_IFBLK: return .other("device")
        default: return .other("file of unknown kind")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .liveSocket }  // Cannot tell: never remove what may be live.
        defer { close(fd) }
        var addr = sockaddr_un.make(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc == 0 { return .liveSocket }
        // ECONNREFUSED: nobody listens. EAGAIN: a live listener with a full backlog.
        return errno == ECONNREFUSED ? .staleSocket : .liveSocket
    }

    // MARK: - Internals

    /// Lock files held by this process, by path (kept open: the lock lives as long as the fd).
    nonisolated(unsafe) private static var held: [String: Int32] = [:]
    nonisolated(unsafe) private static var umaskHolders = 0
    nonisolated(unsafe) private static var savedUmask: mode_t = 0
    private static let mutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    private static func withMutex<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    private static func lock(_ path: String) throws {
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SocketPathError(.io, path, "cannot open the lock file \(lockPath): errno \(errno)") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK {
                throw SocketPathError(.inUse, path, "in use by another listener (\(lockPath) is locked)")
            }
            throw SocketPathError(.io, path, "cannot lock \(lockPath): errno \(e)")
        }
        withMutex {
            if let old = held[path] { close(old) }
            held[path] = fd
        }
    }

    /// Gives up this process's lock on `path` (a listener that closed its socket for good).
    public static func unlock(_ path: String) {
        withMutex {
            if let fd = held.removeValue(forKey: path) { close(fd) }
        }
    }

    private static func acquireUmask() -> mode_t {
        withMutex {
            if umaskHolders == 0 { savedUmask = umask(0o177) }
            umaskHolders += 1
            return savedUmask
        }
    }

    fileprivate static func releaseUmask(_ previous: mode_t) {
        withMutex {
            umaskHolders -= 1
            if umaskHolders == 0 { umask(savedUmask) }
        }
    }
}
