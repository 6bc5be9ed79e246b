// SPDX-License-Identifier: Apache-2.0
//
// File access and JSON text for the `sign` and `keys` commands (no Foundation: the binary is
// also the guest's /init). Errors name the path and the reason, for one-line CLI messages.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct CommandFileError: Error, CustomStringConvertible {
    var path: String
    var why: String
    var description: String { "\(path): \(why)" }
}

enum CommandFiles {
    /// Largest file read whole (modules, kernel images, keys).
    static let maximumSize = 512 << 20

    static func errnoText() -> String { String(cString: strerror(errno)) }

    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CommandFileError(path: path, why: errnoText()) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CommandFileError(path: path, why: errnoText()) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CommandFileError(path: path, why: "not a regular file") }
        guard st.st_size <= maximumSize else { throw CommandFileError(path: path, why: "larger than \(maximumSize) bytes") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { b in
                // b.count == st.st_size > done, so the pointer arithmetic stays inside the buffer.
                pread(fd, b.baseAddress! + done, b.count - done, off_t(done))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CommandFileError(path: path, why: n == 0 ? "file shrank while reading" : errnoText()) }
            done += n
        }
        return out
    }

    /// Writes atomically: a fresh temporary file in the same directory (mkstemp), fsync, rename.
    /// A crash or error leaves either the old file or the new one, never half of one.
    static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        var template = Array((path + ".tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw CommandFileError(path: path, why: "cannot create temporary file: \(errnoText())") }
        let tmp = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        var ok = fchmod(fd, mode) == 0
        var err = errno
        var done = 0
        while ok && done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { ok = false; err = errno; break }
            done += n
        }
        if ok && fsync(fd) != 0 { ok = false; err = errno }
        close(fd)
        if ok && rename(tmp, path) != 0 { ok = false; err = errno }
        guard ok else {
            unlink(tmp)
            throw CommandFileError(path: path, why: String(cString: strerror(err)))
        }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Creates `path` (one level) if missing; fails if it exists and is not a directory.
    static func ensureDirectory(_ path: String, mode: mode_t = 0o755) throws {
        if isDirectory(path) { return }
        guard mkdir(path, mode) == 0 else { throw CommandFileError(path: path, why: errnoText()) }
    }

    /// One line on stderr.
    static func printError(_ line: String) {
        var text = line
        text.append("\n")
        _ = text.withCString { fputs($0, stderr) }
    }
}

/// Minimal JSON text for `--json` output.
enum CommandJSON {
    static func string(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// An object from ordered (key, already-encoded value) pairs.
    static func object(_ pairs: [(String, String)]) -> String {
        "{" + pairs.map { string($0.0) + ":" + $0.1 }.joined(separator: ",") + "}"
    }

    static func array(_ items: [String]) -> String { "[" + items.joined(separator: ",") + "]" }

    static func optional(_ s: String?) -> String { s.map(string) ?? "null" }
}
