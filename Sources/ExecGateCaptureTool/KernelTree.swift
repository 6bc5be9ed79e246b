// SPDX-License-Identifier: Apache-2.0
//
// The host side's view of a Debian kernel package: where vmlinuz, the config and the module tree
// are, which module file a name refers to, and what each module depends on.
//
// Debian's linux-image .deb ships no modules.dep (no depmod run, and no kmod on a build host is
// assumed), so dependencies come from each .ko's `.modinfo` `depends=` list, exactly what depmod
// itself reads. Load order = depth-first over `depends=`, dependencies first, each module once.

import ExecGateELF
import ExecGateKernelImage
import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct KernelTree: Sendable {
    /// The unpacked package root (holds boot/ and lib/modules/).
    public var root: String
    public var version: String
    public var vmlinuz: String
    public var config: String?
    public var modulesDir: String
    /// Where the package came from (the .deb path, or nil for a directory).
    public var deb: String?

    /// `--kernel DEB|DIR`: a linux-image .deb is unpacked with `dpkg-deb -x` into `unpackDir`.
    public static func open(_ path: String, unpackDir: String, log: (String) -> Void) throws(CaptureToolError) -> KernelTree {
        if path.hasSuffix(".deb") {
            guard FS.exists(path) else { throw .missing("kernel package \(path) not found") }
            guard let dpkg = Subprocess.which("dpkg-deb") else {
                throw .missing("dpkg-deb not found: install dpkg, or unpack the package yourself and pass the directory")
            }
            let marker = unpackDir + "/.unpacked"
            if !FS.exists(marker) {
                log("capture: unpacking \(path) (dpkg-deb -x)")
                try wrap { () throws(ServiceVMError) in try FS.mkdirs(unpackDir) }
                let logPath = unpackDir + ".log"
                let pid = try wrap { () throws(ServiceVMError) in try Subprocess.spawn([dpkg, "-x", path, unpackDir], outputPath: logPath) }
                guard Subprocess.wait(pid, timeoutMillis: 300_000) == 0 else {
                    throw .failed("dpkg-deb -x \(path) failed: \(FS.tail(logPath, lines: 5))")
                }
                try wrap { () throws(ServiceVMError) in try FS.write(marker, "") }
            }
            var t = try open(directory: unpackDir)
            t.deb = path
            return t
        }
        return try open(directory: path)
    }

    public static func open(directory dir: String) throws(CaptureToolError) -> KernelTree {
        let boot = dir + "/boot"
        guard FS.isDirectory(boot), let vmlinuz = (try? FS.list(boot))?.filter({ $0.hasPrefix("vmlinuz-") }).last else {
            throw .missing("no boot/vmlinuz-* under \(dir): pass an unpacked linux-image package (or the .deb)")
        }
        let version = String(vmlinuz.dropFirst("vmlinuz-".count))
        var mods = dir + "/lib/modules/" + version
        if !FS.isDirectory(mods) { mods = dir + "/usr/lib/modules/" + version }
        guard FS.isDirectory(mods + "/kernel") else { throw .missing("no lib/modules/\(version)/kernel under \(dir)") }
        let config = boot + "/config-" + version
        return KernelTree(root: dir, version: version, vmlinuz: boot + "/" + vmlinuz,
                          config: FS.exists(config) ? config : nil, modulesDir: mods, deb: nil)
    }

    /// Link-time `_text`: `__START_KERNEL_map + CONFIG_PHYSICAL_START` (Debian's System.map is a
    /// stub, so the config is the source). Default 0xffffffff81000000 (PHYSICAL_START 16 MiB).
    public func linkTimeText() -> (address: UInt64, source: String) {
        let startKernelMap: UInt64 = 0xffff_ffff_8000_0000
        if let c = config, let text = try? FS.readString(c, limit: 16 << 20) {
            for line in text.split(separator: "\n") where line.hasPrefix("CONFIG_PHYSICAL_START=") {
                if let v = UInt64(line.dropFirst("CONFIG_PHYSICAL_START=0x".count), radix: 16) {
                    return (startKernelMap &+ v, "config (__START_KERNEL_map + CONFIG_PHYSICAL_START; System.map is a stub)")
                }
            }
        }
        return (0xffff_ffff_8100_0000, "default (__START_KERNEL_map + 16 MiB; no CONFIG_PHYSICAL_START found)")
    }
}

/// Module name → file, and `.modinfo` dependencies.
public struct ModuleIndex: Sendable {
    /// Normalised name (`-` → `_`) → path relative to the modules dir (`kernel/lib/crc7.ko`).
    public private(set) var paths: [String: String] = [:]
    public private(set) var builtin: Set<String> = []
    public let modulesDir: String

    public static func normalise(_ name: String) -> String { String(name.map { $0 == "-" ? "_" : $0 }) }

    public init(modulesDir: String) throws(CaptureToolError) {
        self.modulesDir = modulesDir
        walk("kernel")
        if let b = try? FS.readString(modulesDir + "/modules.builtin", limit: 16 << 20) {
            for line in b.split(separator: "\n") {
                let base = line.split(separator: "/").last.map(String.init) ?? ""
                if base.hasSuffix(".ko") { builtin.insert(ModuleIndex.normalise(String(base.dropLast(3)))) }
            }
        }
        guard !paths.isEmpty else { throw .missing("no .ko files under \(modulesDir)/kernel") }
    }

    /// Descends only into real directories: a symbolic link to a directory is not followed (two
    /// links to "." made the walk branch twice per level up to the kernel's 40-link lookup limit,
    /// 2^40 paths, before any name was looked up; a package's module tree holds no such link),
    /// as `SignatureBenchmark.walk` (bench) does. A module file is taken by its name, as before.
    private mutating func walk(_ rel: String) {
        guard let entries = try? FS.list(modulesDir + "/" + rel) else { return }
        for e in entries {
            let r = rel + "/" + e
            if let suffix = ModuleIndex.suffixes.first(where: { e.hasSuffix($0) }) {
                let n = ModuleIndex.normalise(String(e.dropLast(suffix.count)))
                if paths[n] == nil { paths[n] = r }
            } else if FS.isRealDirectory(modulesDir + "/" + r) {
                walk(r)
            }
        }
    }

    public func path(of name: String) throws(CaptureToolError) -> String {
        let n = ModuleIndex.normalise(name)
        if let p = paths[n] { return p }
        if builtin.contains(n) { throw .badModule("\(name) is built into the kernel (modules.builtin): there is no .ko to load or capture") }
        throw .badModule("no module named \(name) under \(modulesDir)/kernel")
    }

    /// Module file names we know: plain, and compressed by kbuild's CONFIG_MODULE_COMPRESS_* (newer
    /// distributions ship `.ko.xz` / `.ko.zst`; the signature is inside, appended before compression).
    public static let suffixes = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]

    /// The module's bytes, decompressed (ExecGateKernelImage's `ModuleFile`, the kernel's own rules):
    /// what finit_module gets and what the capture stores.
    public func bytes(of name: String) throws(CaptureToolError) -> [UInt8] {
        let p = modulesDir + "/" + (try path(of: name))
        let raw = try wrap { () throws(ServiceVMError) in try FS.read(p, limit: 256 << 20) }
        do { return try ModuleFile.decode(raw).elf } catch { throw .badModule("\(p): \(error)") }
    }

    /// The names in `names` that are modules of this kernel, dropping those built into it
    /// (modules.builtin): a kernel that builds a transport driver in needs no .ko for it.
    public func loadable(_ names: [String]) -> [String] {
        names.filter { !builtin.contains(ModuleIndex.normalise($0)) || paths[ModuleIndex.normalise($0)] != nil }
    }

    /// `depends=` of a module's `.modinfo` (normalised names, in file order).
    public static func depends(ko: [UInt8], name: String) throws(CaptureToolError) -> [String] {
        do {
            return try ko.withUnsafeBytes { raw throws -> [String] in
                let elf = try ELFFile(bytes: raw)
                guard let mi = elf.section(named: ".modinfo") else { return [] }
                let body = elf.contents(of: mi)
                for entry in body.split(separator: 0) {
                    let s = String(decoding: entry, as: UTF8.self)
                    if s.hasPrefix("depends=") {
                        return s.dropFirst("depends=".count).split(separator: ",").map { normalise(String($0)) }
                    }
                }
                return []
            }
        } catch {
            throw .badModule("\(name): not a loadable module ELF: \(error)")
        }
    }

    /// Dependency closure of `requested`, dependencies first (DFS in request order), plus each
    /// module's direct dependencies.
    public func closure(_ requested: [String]) throws(CaptureToolError) -> (order: [String], depends: [String: [String]]) {
        var order: [String] = []
        var deps: [String: [String]] = [:]
        var state: [String: Int] = [:]  // 1 = on the DFS stack, 2 = done
        func visit(_ raw: String, chain: [String]) throws(CaptureToolError) {
            let n = ModuleIndex.normalise(raw)
            if state[n] == 2 { return }
            if state[n] == 1 { throw .badModule("dependency cycle: \((chain + [n]).joined(separator: " -> "))") }
            state[n] = 1
            let d = try ModuleIndex.depends(ko: try bytes(of: n), name: n)
            deps[n] = d
            for x in d { try visit(x, chain: chain + [n]) }
            state[n] = 2
            order.append(n)
        }
        for r in requested { try visit(r, chain: []) }
        return (order, deps)
    }

    /// depmod's format: `kernel/a.ko: kernel/b.ko kernel/c.ko`, for the given modules.
    public func modulesDep(_ names: [String], depends: [String: [String]]) -> String {
        names.map { n in
            let p = paths[n] ?? n
            let d = (depends[n] ?? []).map { paths[$0] ?? $0 }
            return d.isEmpty ? "\(p):" : "\(p): " + d.joined(separator: " ")
        }.joined(separator: "\n") + "\n"
    }
}

/// `--modules a,b,c` or `--modules @file` (names separated by commas, whitespace or newlines;
/// `#` starts a comment).
public func parseModuleList(_ spec: String) throws(CaptureToolError) -> [String] {
    var text = spec
    if spec.hasPrefix("@") {
        let p = String(spec.dropFirst())
        // A regular file, checked before it is opened (a FIFO nobody writes blocked open() for
        // ever; /dev/zero was read to the limit), and the reason named when refused.
        var st = stat()
        guard stat(p, &st) == 0 else { throw .missing("module list \(p): \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .missing("module list \(p): not a regular file") }
        let t: String
        do { t = try FS.readString(p, limit: 4 << 20) } catch { throw .missing("module list \(p): \(error)") }
        text = t.split(separator: "\n").map { $0.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? "" }
            .joined(separator: "\n")
    }
    var seen = Set<String>()
    var out: [String] = []
    for w in text.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }) {
        var n = String(w)
        if n.hasSuffix(".ko") { n = String(n.dropLast(3)) }
        n = ModuleIndex.normalise(n)
        if seen.insert(n).inserted { out.append(n) }
    }
    guard !out.isEmpty else { throw .usage("--modules: no module names given") }
    return out
}

public enum CaptureToolError: Error, CustomStringConvertible, Equatable {
    case usage(String)
    case missing(String)
    case badModule(String)
    case failed(String)
    case guest(String)

    public var description: String {
        switch self {
        case let .usage(s), let .missing(s), let .badModule(s), let .failed(s), let .guest(s): return s
        }
    }
}

/// ServiceVMError → CaptureToolError at this layer's boundary.
func wrap<T>(_ body: () throws(ServiceVMError) -> T) throws(CaptureToolError) -> T {
    do { return try body() } catch {
        switch error {
        case let .missing(s): throw .missing(s)
        default: throw .failed(error.description)
        }
    }
}
