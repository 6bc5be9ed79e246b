// SPDX-License-Identifier: Apache-2.0
//
// Claiming a Unix socket path before bind(2), for every listener ExecGate opens (the verifier's
// VMM and admin ports, the vsock backend's vhost-user and hybrid sockets). POSIX only, no NIO,
// so both the SwiftNIO servers and the poll(2) backend call the same code.
//
// Rules (issue 10, "Sockets"):
//   1. A lock file `PATH.lock` (0600) is locked with flock(LOCK_EX | LOCK_NB) and held for as
//      long as the listener lives. A second server on the same path — another process, or the
//      same process binding one path twice (`--listen X --admin-listen X`) — fails to lock and is
//      refused: flock locks belong to open file descriptions, so even the same process conflicts.
//      A listener that closes for good (a stop, a refused start) removes its socket and then its
//      lock file, still locked (`release`); a claim counts only once the file it locked is the one
//      at the path (a file removed under a waiting claimant is not). A process killed (SIGKILL)
//      leaves both: the next claim reuses the lock file and replaces the stale socket (rule 2).
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
        do {
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
        } catch {
            release(path)  // a refused claim leaves no lock file of its own
            throw error
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
    /// The socket each held path was bound to (device, inode): `remove` unlinks only that one.
    nonisolated(unsafe) private static var bound: [String: (dev_t, ino_t)] = [:]
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
        // A listener that closes for good removes its lock file while it still holds the lock
        // (`release`). A claimant that opened the file before that removal locks a file no longer
        // at the path once the holder closes it: it would hold a lock nobody else sees while a
        // third claimant creates and locks a new file there. So the lock counts only when the
        // locked file is the one at the path (same device and inode, lstat: never through a
        // symbolic link); otherwise it is dropped and the claim tried again.
        for _ in 0..<16 {
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
            var locked = stat(), named = stat()
            guard fstat(fd, &locked) == 0, lstat(lockPath, &named) == 0, locked.st_dev == named.st_dev, locked.st_ino == named.st_ino else {
                close(fd)
                continue
            }
            withMutex {
                if let old = held[path] { close(old) }
                held[path] = fd
            }
            return
        }
        throw SocketPathError(.inUse, path, "in use by another listener (\(lockPath) was replaced while it was being locked, again and again)")
    }

    /// Notes the socket just bound at `path` (claimed by this process), for `remove`.
    public static func didBind(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        withMutex { if held[path] != nil { bound[path] = (st.st_dev, st.st_ino) } }
    }

    /// A listener on `path` closed for good (`execgate serve` stopping): its socket is removed
    /// when it is still the one this process bound (never another file put there since), then its
    /// lock file (`release`). Nothing is removed for a path this process holds no lock on.
    public static func remove(_ path: String) {
        withMutex {
            guard held[path] != nil, let (dev, ino) = bound.removeValue(forKey: path) else { return }
            var st = stat()
            if lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK, st.st_dev == dev, st.st_ino == ino { unlink(path) }
        }
        release(path)
    }

    /// Gives up this process's lock on `path` and removes its lock file (a listener that closed
    /// its socket for good): removed while still locked, so no other claimant holds a lock on the
    /// removed file that counts (`lock` checks the locked file is the path's). The lock file is
    /// the process's own only while it holds it: nothing is removed when this process holds no
    /// lock on `path`.
    public static func release(_ path: String) {
        withMutex {
            bound[path] = nil
            guard let fd = held.removeValue(forKey: path) else { return }
            let lockPath = path + ".lock"
            var locked = stat(), named = stat()
            if fstat(fd, &locked) == 0, lstat(lockPath, &named) == 0, locked.st_dev == named.st_dev, locked.st_ino == named.st_ino {
                unlink(lockPath)
            }
            close(fd)
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
