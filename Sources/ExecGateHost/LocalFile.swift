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
import ExecGateKernelImage
import _ExecGateInternals

public struct LocalFileError: Error, CustomStringConvertible {
    public var path: String
    public var why: String
    public var description: String { "\(path): \(why)" }
    public init(path: String, why: String) { self.path = path; self.why = why }
}

public enum LocalFile {
    /// Largest file the CLI reads whole (modules, certificates, policies, captures' pieces).
    public static let maximumSize = 512 << 20

    /// A whole regular file, at most `maximumSize` bytes (the project's one bounded reader).
    public static func read(_ path: String, limit: Int = maximumSize) throws -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else { throw LocalFileError(path: path, why: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw LocalFileError(path: path, why: "not a regular file") }
        do { return try Files.read(path, limit: min(limit, maximumSize)) } catch {
            throw LocalFileError(path: path, why: error.errno == EFBIG ? "larger than \(min(limit, maximumSize)) bytes" : String(cString: strerror(error.errno)))
        }
    }

    /// Largest certificate or key file read (PEM or DER; a file may hold several certificates:
    /// a distribution's whole CA bundle is ~0.2 MiB).
    public static let maximumCredentialSize = 16 << 20

    /// A certificate or private-key file, at most `maximumCredentialSize` bytes (a larger one is
    /// refused unread, never searched for PEM).
    public static func readCredential(_ path: String) throws -> [UInt8] { try read(path, limit: maximumCredentialSize) }

    /// A module file as the kernel would load it: a plain `.ko`, or a `.ko.gz`/`.ko.xz`/`.ko.zst`
    /// decompressed first (ExecGateKernelImage `ModuleFile`, after kernel/module/decompress.c), so
    /// the signature and every later check run on the ELF bytes, as the kernel's do.
    public static func readModule(_ path: String) throws -> [UInt8] {
        let raw = try read(path)
        do { return try ModuleFile.decode(raw).elf } catch {
            throw LocalFileError(path: path, why: "\(error)")
        }
    }

    /// Write atomically and durably (the project's one atomic writer): a temporary file in the same
    /// directory, fsync, rename over `path`, fsync the directory. A crash leaves either the old
    /// file or the new one, never half of one.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        do { try Files.writeAtomically(path, bytes, mode: mode) } catch {
            throw LocalFileError(path: error.path, why: error.detail.isEmpty ? String(cString: strerror(error.errno)) : error.detail)
        }
    }

    /// Several files, each written atomically, after every target was checked: one that is not a
    /// regular file (or absent) refuses the lot before any is replaced (Files.writeAllAtomically).
    public static func writeAllAtomically(_ files: [(path: String, bytes: [UInt8], mode: mode_t)]) throws {
        do { try Files.writeAllAtomically(files) } catch {
            throw LocalFileError(path: error.path, why: error.detail.isEmpty ? String(cString: strerror(error.errno)) : error.detail)
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

    /// `path` and its missing parents; an existing `path` (or parent) must be a directory, and is
    /// named as given when it is not (mkdir's EEXIST said nothing of what was there: the refusal
    /// came later, naming a temporary file inside it).
    public static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw LocalFileError(path: current, why: String(cString: strerror(errno)))
            }
        }
        guard isDirectory(path) else { throw LocalFileError(path: path, why: "not a directory") }
    }
}
