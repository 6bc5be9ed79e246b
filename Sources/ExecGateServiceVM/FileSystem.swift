// SPDX-License-Identifier: Apache-2.0
//
// Small, Foundation-free file helpers. The service VM binary is the guest's /init and must stay
// small (no Foundation: ~7 MB instead of ~58 MB), so everything here is plain POSIX.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import _ExecGateInternals

public enum FS {
    /// Reads a whole file, up to end of file. `limit` caps what we accept (hostile or wrong inputs
    /// must not exhaust memory).
    ///
    /// Not `Files.read` (the toolkit's reader): that one reads `st_size` bytes, and procfs/sysfs
    /// files report size 0 — PID 1 reads /proc/cmdline and /proc/meminfo, the launcher reads
    /// /proc/<pid>/cmdline and /proc/cpuinfo, all of which would come back empty.
    /// The whole file, at most `limit` bytes (the toolkit's bounded reader: reads to end of file, so
    /// /proc and /sys files, whose size is reported as 0, come back whole).
    ///
    /// Only a regular file is opened (procfs and sysfs files are regular files too): a FIFO
    /// without a writer blocked open(2) forever (`vm status` on a state directory holding one),
    /// and a device is no file of the project's. Refused, named, unopened.
    public static func read(_ path: String, limit: Int = 1 << 30) throws(ServiceVMError) -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .system("cannot open", path: path, errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw .badInput("\(path): \(Files.fileType(st.st_mode)), not a regular file; refusing to open it")
        }
        do { return try Files.read(path, limit: limit) } catch {
            if error.errno == EFBIG { throw .badInput("\(path): more than the \(limit) bytes allowed") }
            throw .system("cannot \(error.operation)", path: path, errno: error.errno)
        }
    }

    public static func readString(_ path: String, limit: Int = 1 << 20) throws(ServiceVMError) -> String {
        String(decoding: try read(path, limit: limit), as: UTF8.self)
    }

    /// Writes `bytes` to `path` atomically and durably: the project's one atomic writer.
    public static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(ServiceVMError) {
        do { try Files.writeAtomically(path, bytes, mode: mode) } catch {
            throw .system("cannot \(error.operation)", path: error.path, errno: error.errno)
        }
    }

    public static func write(_ path: String, _ text: String, mode: mode_t = 0o644) throws(ServiceVMError) {
        try write(path, Array(text.utf8), mode: mode)
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// A directory itself, not a symbolic link to one (lstat): what a tree walk may descend into
    /// without following links in circles.
    public static func isRealDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func size(_ path: String) -> Int? {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : nil
    }

    public static func mkdirs(_ path: String, mode: mode_t = 0o755) throws(ServiceVMError) {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, mode) != 0 && errno != EEXIST { throw .sys("cannot create directory", prefix) }
        }
    }

    /// Directory entries (no "." / ".."), sorted for determinism.
    public static func list(_ path: String) throws(ServiceVMError) -> [String] {
        guard let d = opendir(path) else { throw .sys("cannot list", path) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { p in
                p.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func remove(_ path: String) { unlink(path) }

    /// The absolute path of the running executable.
    public static func selfExecutable() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `absolute(path)` spelled one way: no empty, `.` or `..` components (removed lexically), no
    /// trailing `/`. A state directory is named by the path its files carry (QEMU's `-pidfile`):
    /// `/run/x/` and `/run/x` named one VM two ways, and `vm stop` with the other spelling found
    /// it not running, removed its pid files and left it out of reach (round 12).
    public static func canonical(_ path: String) -> String {
        var parts: [Substring] = []
        for p in absolute(path).split(separator: "/", omittingEmptySubsequences: true) {
            if p == "." { continue }
            if p == ".." { _ = parts.popLast(); continue }
            parts.append(p)
        }
        return "/" + parts.joined(separator: "/")
    }

    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return path }
        return String(cString: buf) + "/" + path
    }

    /// Last `lines` lines of a text file ("" when unreadable). Used for console tails.
    public static func tail(_ path: String, lines: Int = 25) -> String {
        guard let bytes = try? read(path, limit: 64 << 20) else { return "" }
        let text = String(decoding: bytes.suffix(64 * 1024), as: UTF8.self)
        let all = text.consoleLines(omittingEmpty: false)
        return all.suffix(lines + 1).joined(separator: "\n").trimmingTrailingNewlines()
    }
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    /// Lines of a serial console log. The guest writes "\r\n", which Swift treats as one
    /// Character, so split on both forms; the trailing "\r" never reaches the caller.
    public func consoleLines(omittingEmpty: Bool = true) -> [Substring] {
        split(omittingEmptySubsequences: omittingEmpty, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
    }

    func trimmingTrailingNewlines() -> String {
        var s = Substring(self)
        while let last = s.last, last == "\n" || last == "\r" || last == " " { s = s.dropLast() }
        return String(s)
    }
}

/// Runs `body` on a new detached POSIX thread (for blocking loops that must not sit on Swift's
/// cooperative pool, which has a single thread in a one-vCPU guest).
public func startDetachedThread(_ body: @escaping () -> Void) {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        b.body()
        return nil
    }, box)
    if rc == 0 { pthread_detach(tid) } else { Unmanaged<Box>.fromOpaque(box).release(); body() }
}
