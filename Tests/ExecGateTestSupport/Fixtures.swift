// SPDX-License-Identifier: Apache-2.0
//
// Locates the real test inputs that `make test-data` (scripts/fetch-test-data.sh) prepares:
// a Debian `linux-image-6.1.0-*-amd64` package unpacked under `.cache/kernel/current/`.
// Tests run on these real, really signed modules; nothing here is synthesised.

#if canImport(Glibc)
import _ExecGateInternals
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Fixtures {
    public struct Missing: Error, CustomStringConvertible {
        public let what: String
        public var description: String {
            "test fixture missing: \(what) — run `make test-data` (or `make test`, which runs it) first"
        }
    }

    /// The package root, found from this source file's path (Tests/ExecGateTestSupport/Fixtures.swift).
    public static var packageRoot: String {
        if let env = getenv("EXECGATE_ROOT") { return String(cString: env) }
        var parts = String(#filePath).split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }

    /// The unpacked Debian kernel package (`.cache/kernel/current`, or `$EXECGATE_TEST_KERNEL`).
    public static func kernelDir() throws -> String {
        let dir: String
        if let env = getenv("EXECGATE_TEST_KERNEL") { dir = String(cString: env) } else { dir = packageRoot + "/.cache/kernel/current" }
        guard isDirectory(dir) else { throw Missing(what: "unpacked Debian kernel at \(dir)") }
        return dir
    }

    /// `vmlinuz-*` of the unpacked package.
    public static func vmlinuz() throws -> String {
        let boot = try kernelDir() + "/boot"
        guard let name = try listDirectory(boot).first(where: { $0.hasPrefix("vmlinuz-") }) else {
            throw Missing(what: "vmlinuz in \(boot)")
        }
        return boot + "/" + name
    }

    /// Every `.ko` of the package, sorted by path (deterministic sampling).
    public static func allModules() throws -> [String] {
        let lib = try kernelDir() + "/lib/modules"
        guard let release = try listDirectory(lib).first else { throw Missing(what: "lib/modules/<release>") }
        var out: [String] = []
        walk(lib + "/" + release + "/kernel") { path in if path.hasSuffix(".ko") { out.append(path) } }
        guard !out.isEmpty else { throw Missing(what: "modules under \(lib)/\(release)/kernel") }
        return out.sorted()
    }

    /// A deterministic sample of `count` modules spread over the whole package (every k-th by path).
    public static func sampleModules(_ count: Int) throws -> [String] {
        let all = try allModules()
        if all.count <= count { return all }
        let stride = Double(all.count) / Double(count)
        return (0..<count).map { all[Int(Double($0) * stride)] }
    }

    /// The path of one module by file name, e.g. `vsock.ko`.
    public static func module(named name: String) throws -> String {
        guard let path = try allModules().first(where: { $0.hasSuffix("/" + name) }) else {
            throw Missing(what: "module \(name)")
        }
        return path
    }

    // MARK: - Small file helpers (tests only)

    /// The whole file (the toolkit's bounded reader; 1 GiB covers every test input).
    public static func readFile(_ path: String) throws -> [UInt8] {
        do { return try Files.read(path) } catch { throw Missing(what: "\(error)") }
    }

    /// Writes `bytes` to `path` (atomically, like every writer in the project).
    public static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        try Files.writeAtomically(path, bytes)
    }

    /// A fresh temporary directory, inside this test process's own directory under /tmp, which
    /// is removed with everything in it when the process exits (a run used to leave one
    /// directory per call behind: thousands a day of runs).
    public static func temporaryDirectory() -> String {
        var template = Array((temporaryRoot + "/XXXXXX").utf8CString)
        let p = mkdtemp(&template)!  // mkdtemp only fails when /tmp is unusable: the test cannot run at all.
        return String(cString: p)
    }

    /// This process's directory for `temporaryDirectory()`, made on first use; `atexit` removes it.
    static let temporaryRoot: String = {
        var template = Array("/tmp/execgate-test-XXXXXX".utf8CString)
        let p = mkdtemp(&template)!  // as above
        atexit { _ = Fixtures.removeTree(Fixtures.temporaryRoot) }
        return String(cString: p)
    }()

    /// Removes `path` and everything under it, without following symbolic links (a test may
    /// leave a link to a real file or directory there); false when something could not be removed.
    @discardableResult
    public static func removeTree(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return true }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            if (st.st_mode & S_IRWXU) != S_IRWXU { chmod(path, st.st_mode | S_IRWXU) }  // a test may have made it unreadable
            var ok = true
            for n in (try? listDirectory(path)) ?? [] { ok = removeTree(path + "/" + n) && ok }
            return rmdir(path) == 0 && ok
        }
        return unlink(path) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func listDirectory(_ path: String) throws -> [String] {
        guard let d = opendir(path) else { throw Missing(what: path) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func walk(_ path: String, _ visit: (String) -> Void) {
        guard let names = try? listDirectory(path) else { return }
        for n in names {
            let p = path + "/" + n
            if isDirectory(p) { walk(p, visit) } else { visit(p) }
        }
    }
}
