// SPDX-License-Identifier: Apache-2.0
//
// Minimal file access for the host side: the CLI and service set-up (no Foundation: the binary is
// also the guest's /init and stays small). Errors say which path and why, for the one-line
// messages the CLI prints.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct LocalFileError: Error, CustomStringConvertible {
    public var path: String
    public var why: String
    public var description: String { "\(path): \(why)" }
    public init(path: String, why: String) { self.path = path; self.why = why }
}

public enum LocalFile {
    /// Largest file the CLI reads whole (modules, certificates, policies, captures' pieces).
    public static let maximumSize = 512 << 20

    public static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LocalFileError(path: path, why: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LocalFileError(path: path, why: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw LocalFileError(path: path, why: "not a regular file") }
        guard st.st_size <= maximumSize else { throw LocalFileError(path: path, why: "larger than \(maximumSize) bytes") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw LocalFileError(path: path, why: n == 0 ? "file shrank while reading" : String(cString: strerror(errno))) }
            done += n
        }
        return out
    }

    /// Write atomically: a temporary file in the same directory, fsync, then rename over `path`.
    /// A crash leaves either the old file or the new one, never half of one.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw LocalFileError(path: tmp, why: String(cString: strerror(errno))) }
        var ok = true
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { ok = false; break }
            done += n
        }
        if ok && fsync(fd) != 0 { ok = false }
        let err = errno
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw LocalFileError(path: path, why: String(cString: strerror(ok ? errno : err)))
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func list(_ dir: String) throws -> [String] {
        guard let d = opendir(dir) else { throw LocalFileError(path: dir, why: String(cString: strerror(errno))) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw LocalFileError(path: current, why: String(cString: strerror(errno)))
            }
        }
    }
}
