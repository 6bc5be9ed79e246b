// SPDX-License-Identifier: Apache-2.0
//
// The one bounded file reader and the one atomic writer (write a temporary file in the same
// directory, fsync it, rename it over the target, fsync the directory), with POSIX calls only
// (no Foundation: the binary is also the service VM's /init). Not API.
//
// No temporary file survives a signal that ends the process (SIGINT, SIGTERM, SIGHUP, SIGXFSZ
// from `ulimit -f`, …): each is registered with CExecGateSignals before it is created, whose
// handler unlinks every registered one and re-raises the signal. A signal during the renames
// that publish files written together is held until they are all done.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CExecGateSignals

@inline(__always) private func sysRead(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int) -> Int { read(fd, p, n) }
@inline(__always) private func sysWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int { write(fd, p, n) }

/// A failed system call on a path: which call, which path, and errno's text.
public struct FileError: Error, Sendable, Equatable, CustomStringConvertible {
    public let operation: String
    public let path: String
    public let errno: Int32
    public let detail: String

    public init(_ operation: String, _ path: String, errno: Int32, detail: String = "") {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let why = detail.isEmpty ? String(cString: strerror(errno)) : detail
        return "\(path): \(operation): \(why)"
    }
}

public enum Files {
    /// The names in directory `dir` but `.` and `..`, in `readdir` order; nil when it cannot be
    /// opened.
    public static func entries(_ dir: String) -> [String]? {
        guard let d = opendir(dir) else { return nil }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if n != "." && n != ".." { names.append(n) }
        }
        return names
    }

    /// The whole file at `path`, refusing files larger than `limit` bytes: a regular file by its
    /// size before reading, anything else (pseudo-files under /proc and /sys report size 0, pipes)
    /// by reading until end of file and stopping past `limit`.
    public static func read(_ path: String, limit: Int = 1 << 30) throws(FileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError("open", path, errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileError("stat", path, errno: errno) }
        let size = Int(st.st_size)
        guard size <= limit else {
            throw FileError("read", path, errno: EFBIG, detail: "\(size) bytes is over the \(limit)-byte limit")
        }
        // Start from the reported size (exact for regular files) and grow while the file still has
        // bytes: st_size is only a hint for pseudo-files.
        var out = [UInt8](repeating: 0, count: max(size, 4096))
        var done = 0
        while true {
            if done == out.count {
                guard out.count <= limit else {
                    throw FileError("read", path, errno: EFBIG, detail: "more than \(limit) bytes")
                }
                out.append(contentsOf: repeatElement(0, count: min(out.count, limit + 1 - out.count)))
            }
            let n = out.withUnsafeMutableBytes { sysRead(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 { if errno == EINTR { continue }; throw FileError("read", path, errno: errno) }
            if n == 0 { break }
            done += n
        }
        guard done <= limit else { throw FileError("read", path, errno: EFBIG, detail: "more than \(limit) bytes") }
        out.removeLast(out.count - done)
        return out
    }

    /// The file at `path` as UTF-8 text (invalid sequences repaired), bounded like `read`.
    public static func readText(_ path: String, limit: Int = 64 << 20) throws(FileError) -> String {
        String(decoding: try read(path, limit: limit), as: UTF8.self)
    }

    /// Whether `writeAtomically(path, …)` may replace what is there: nothing, or a regular file
    /// (a symbolic link to one is followed). Renamed over, a FIFO, a device (/dev/null,
    /// /dev/stdout as root), a socket or a directory would be swapped for a regular file.
    /// A path whose links lead into /proc (`/dev/stdout` → /proc/self/fd/1, `/dev/fd/N`) names an
    /// open descriptor, not a file in a directory: stat follows it to whatever the descriptor is
    /// (a regular file when stdout is redirected to one), but the rename would replace the link
    /// itself (as root, the system's /dev/stdout). Refused, the link untouched.
    public static func checkReplaceable(_ path: String) throws(FileError) {
        if let hop = descriptorLink(path) {
            throw FileError("open", path, errno: EINVAL,
                            detail: "leads to \(hop) under /proc (an open descriptor, not a file in a directory); refusing to replace it, give a file's path")
        }
        var target = stat()
        if stat(path, &target) == 0, (target.st_mode & S_IFMT) != S_IFREG {
            throw FileError("open", path, errno: EEXIST,
                            detail: "exists and is not a regular file (\(fileType(target.st_mode))); refusing to replace it")
        }
    }

    /// The directory `path` names an entry of ("." for a bare name, "/" for one at the root).
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The first link of `path`'s chain (`path` included) whose directory resolves into /proc, or nil.
    static func descriptorLink(_ path: String) -> String? {
        func inProc(_ dir: String) -> Bool {
            guard let r = realpath(dir, nil) else { return false }
            defer { free(r) }
            let real = String(cString: r)
            return real == "/proc" || real.hasPrefix("/proc/")
        }
        var hop = path
        for _ in 0..<40 {  // MAXSYMLINKS
            if inProc(directory(of: hop)) { return hop }
            var st = stat()
            guard lstat(hop, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK else { return nil }
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(hop, &buf, Int(PATH_MAX))
            guard n > 0 else { return nil }
            let target = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            hop = target.hasPrefix("/") ? target : directory(of: hop) + "/" + target
        }
        return nil
    }

    /// Several files replaced as `writeAtomically` does each, after every target was checked
    /// (`checkReplaceable`): a target that cannot be replaced leaves all of them untouched, rather
    /// than the ones before it replaced (a key without its certificate). Every temporary file is
    /// written and fsync'd before the first rename, and a signal landing during the renames is
    /// held until the last, so a failed write or a signal leaves none of them replaced.
    public static func writeAllAtomically(_ files: [(path: String, bytes: [UInt8], mode: mode_t)]) throws(FileError) {
        for f in files { try checkReplaceable(f.path) }
        var written: [Temporary] = []
        defer { for t in written { t.discard() } }
        for f in files { written.append(try Temporary.write(f.path, f.bytes, mode: f.mode)) }
        try publish(written)
        written = []
    }

    /// A file type for messages ("a FIFO", "a character device", …).
    public static func fileType(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        case S_IFREG: return "a regular file"
        default: return "not a regular file"
        }
    }

    /// Whether `path` exists (any file type; symlinks followed).
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// Replaces `path` with `bytes` atomically and durably: readers see the old or the new file,
    /// never a part; after return the new content survives a crash (file and directory fsync'd).
    /// `path` must be a regular file or not exist (a symbolic link to a regular file is replaced
    /// by the new file, as `rename(2)` does). A signal that ends the process leaves the old file
    /// and no temporary one.
    public static func writeAtomically(_ path: String, _ bytes: some Collection<UInt8>, mode: mode_t = 0o644) throws(FileError) {
        try checkReplaceable(path)
        let t = try Temporary.write(path, Array(bytes), mode: mode)
        try publish([t])
    }

    /// Writes all of `data` to `fd` (the file `path`, named in errors), sets its mode (`fchmod`:
    /// the creation mode passed the umask) and fsyncs it: the one way a file this process
    /// publishes is written (a `Temporary`, a `StagedDirectory`'s file).
    static func writeAll(_ fd: Int32, _ data: [UInt8], path: String, mode: mode_t) throws(FileError) {
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { sysWrite(fd, $0.baseAddress! + done, data.count - done) }
            if n < 0 { if errno == EINTR { continue }; throw FileError("write", path, errno: errno) }
            done += n
        }
        guard fchmod(fd, mode) == 0 else { throw FileError("chmod", path, errno: errno) }
        guard fsync(fd) == 0 else { throw FileError("fsync", path, errno: errno) }
    }

    /// A temporary file written and fsync'd beside its target, registered with the signal handler
    /// until it is renamed or removed.
    struct Temporary {
        let target: String
        let path: String
        let slot: Int32

        static func write(_ target: String, _ data: [UInt8], mode: mode_t) throws(FileError) -> Temporary {
            // Created here, never opened when something is there (O_EXCL, which also refuses a
            // symbolic link or a FIFO under the name): the name is predictable, and a file another
            // user planted in a shared directory would receive the output through a descriptor
            // it keeps open, and (as root) be renamed over the target, its owner still the
            // planter's. Taken (planted, or left by a process of the same PID killed by SIGKILL):
            // another name, with a random suffix.
            var tmp = target + ".tmp.\(getpid())"
            // Registered before it exists: a signal from here on unlinks it.
            // O_NONBLOCK: no open of this kind ever waits (O_EXCL creates a regular file or fails).
            var slot: Int32 = -1
            var fd = execgate_temp_open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, Int32(mode), &slot)
            var tries = 0
            while fd < 0 && errno == EEXIST && tries < 8 {
                tries += 1
                tmp = target + ".tmp.\(getpid()).\(String(UInt64.random(in: 1...UInt64.max), radix: 16))"
                fd = execgate_temp_open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, Int32(mode), &slot)
            }
            guard fd >= 0 else { throw FileError("open", tmp, errno: errno) }
            var ok = false
            defer { close(fd); if !ok { unlink(tmp); execgate_temp_untrack(slot) } }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw FileError("open", tmp, errno: EEXIST, detail: "exists and is not a regular file (\(fileType(st.st_mode)))")
            }
            try Files.writeAll(fd, data, path: tmp, mode: mode)
            ok = true
            return Temporary(target: target, path: tmp, slot: slot)
        }

        /// Removes the temporary file (not published).
        func discard() {
            unlink(path)
            execgate_temp_untrack(slot)
        }
    }

    /// Renames every temporary file over its target, in order, then fsyncs their directories; a
    /// signal during the renames is held until they are done. A failed rename removes that
    /// temporary file and the ones after it.
    static func publish(_ files: [Temporary]) throws(FileError) {
        execgate_temp_commit_begin()
        var failure: FileError?
        var published = 0
        for t in files {
            if failure == nil, execgate_temp_rename(t.path, t.target) == 0 {
                execgate_temp_untrack(t.slot)
                published += 1
            } else {
                if failure == nil { failure = FileError("rename", t.target, errno: errno) }
                t.discard()
            }
        }
        execgate_temp_commit_end()
        var synced: Set<String> = []
        for t in files[..<published] {
            let dir = directory(of: t.target)
            guard synced.insert(dir).inserted else { continue }
            let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        }
        if let failure { throw failure }
    }
}

/// A directory of files replaced as one: built in a staging directory beside the target (same
/// file system), then swapped for it in one rename (renameat2 RENAME_EXCHANGE), so a reader, a
/// crash or a signal finds the old set of files or the new one, never a mix. Until published,
/// the staging directory and every file in it are registered with the signal handler
/// (CExecGateSignals), which removes them; `discard` removes them on an error.
public final class StagedDirectory {
    /// The directory replaced, as given.
    public let target: String
    /// The directory the rename acts on: `target`, or what a symbolic link there leads to (the
    /// link stays a link; the directory it names is swapped).
    public let resolvedTarget: String
    /// The staging directory (`.NAME.tmp.PID` beside the resolved target).
    public let path: String
    private var slot: Int32
    private var files: [(name: String, slot: Int32)] = []
    private var live = true

    /// A staging directory for `target`, which must be a directory or not exist (its parent must).
    public init(replacing target: String) throws(FileError) {
        self.target = target
        var st = stat()
        var resolved = target
        if stat(target, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                throw FileError("open", target, errno: ENOTDIR, detail: "exists and is not a directory (\(Files.fileType(st.st_mode)))")
            }
            if lstat(target, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK {
                guard let r = realpath(target, nil) else { throw FileError("resolve", target, errno: errno) }
                resolved = String(cString: r)
                free(r)
            }
        }
        while resolved.count > 1 && resolved.hasSuffix("/") { resolved.removeLast() }
        resolvedTarget = resolved
        let parent = Files.directory(of: resolved)
        let base = resolved.split(separator: "/").last.map(String.init) ?? resolved
        var candidate = parent + "/." + base + ".tmp.\(getpid())"
        var s: Int32 = -1
        var tries = 0
        while execgate_temp_mkdir(candidate, 0o755, &s) != 0 {
            guard errno == EEXIST, tries < 8 else { throw FileError("mkdir", candidate, errno: errno) }
            tries += 1
            candidate = parent + "/." + base + ".tmp.\(getpid()).\(String(UInt64.random(in: 1...UInt64.max), radix: 16))"
        }
        path = candidate
        slot = s
    }

    /// Writes `name` (a plain name) into the staging directory, fsync'd; it stays registered
    /// until the directory is published or discarded.
    public func write(_ name: String, _ data: [UInt8], mode: mode_t = 0o644) throws(FileError) {
        let p = path + "/" + name
        var s: Int32 = -1
        let fd = execgate_temp_open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, Int32(mode), &s)
        guard fd >= 0 else { throw FileError("open", p, errno: errno) }
        files.append((name, s))
        defer { close(fd) }
        try Files.writeAll(fd, data, path: p, mode: mode)
    }

    /// Swaps the staging directory for the target (creates the target when there is none), then
    /// removes the old directory: its files that `isOld` accepts, then the directory itself. A
    /// signal during the swap and the removal is held until both are done. Returns the old
    /// directory's path when something `isOld` refused kept it (left in place, not removed).
    @discardableResult
    public func publish(isOld: (String) -> Bool) throws(FileError) -> String? {
        precondition(live)
        let dfd = openDirectory(path)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        var st = stat()
        let exists = stat(resolvedTarget, &st) == 0
        if exists { _ = chmod(path, st.st_mode & 0o7777) }
        execgate_temp_commit_begin()
        var failure: FileError?
        var leftover: String?
        if !exists {
            if execgate_rename_noreplace(path, resolvedTarget) != 0 { failure = FileError("rename", resolvedTarget, errno: errno) }
        } else if execgate_rename_exchange(path, resolvedTarget) != 0 {
            // The kernel or file system cannot exchange (EINVAL, ENOSYS): move the old directory
            // aside, then the new one in: two renames, still inside the held-signal section.
            let e = errno
            if e == EINVAL || e == ENOSYS {
                let aside = path + ".old"
                if rename(resolvedTarget, aside) != 0 {
                    failure = FileError("rename", resolvedTarget, errno: errno)
                } else if rename(path, resolvedTarget) != 0 {
                    failure = FileError("rename", resolvedTarget, errno: errno)
                    _ = rename(aside, resolvedTarget)
                } else {
                    leftover = Self.removeOld(aside, isOld: isOld)
                }
            } else {
                failure = FileError("rename", resolvedTarget, errno: e)
            }
        } else {
            // The staging path now names the old directory.
            leftover = Self.removeOld(path, isOld: isOld)
        }
        if failure == nil {
            for f in files { execgate_temp_untrack(f.slot) }
            execgate_temp_untrack(slot)
            live = false
        }
        execgate_temp_commit_end()
        if let failure { discard(); throw failure }
        let pfd = openDirectory(Files.directory(of: resolvedTarget))
        if pfd >= 0 { _ = fsync(pfd); close(pfd) }
        return leftover
    }

    /// Removes the staging directory and what was written into it (nothing published).
    public func discard() {
        guard live else { return }
        for f in files {
            unlink(path + "/" + f.name)
            execgate_temp_untrack(f.slot)
        }
        rmdir(path)
        execgate_temp_untrack(slot)
        live = false
    }

    deinit { discard() }

    /// Removes the entries of `dir` that `isOld` accepts (regular files only), then `dir`;
    /// `dir` when it could not be removed.
    private static func removeOld(_ dir: String, isOld: (String) -> Bool) -> String? {
        if let names = Files.entries(dir) {
            for n in names where isOld(n) {
                var st = stat()
                if lstat(dir + "/" + n, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { unlink(dir + "/" + n) }
            }
        }
        return rmdir(dir) == 0 ? nil : dir
    }
}

/// A directory opened for fsync.
private func openDirectory(_ dir: String) -> Int32 { open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
