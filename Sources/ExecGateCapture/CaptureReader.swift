// SPDX-License-Identifier: Apache-2.0
//
// Reads one boot of a capture (`<corpus>/<boot>/`, see corpus/README.md) into the explanation
// engine's inputs. Only what a real VMM could know is used:
//   trusted facts  — core kernel symbols (kallsyms lines WITHOUT `[module]`: exports via their
//                    `__ksymtab_<name>` lines, function entries for static-call targets),
//                    `boot_cpu_data.bin` (x86_capability), `cpus.txt`, `cmdline.txt`, `pv_ops.bin`,
//                    `slide.txt`;
//   the claim      — each module's `core_text.bin`, `layout.json` base, `sections.json` addresses
//                    and (for per-cpu modules) the per-cpu base;
//   the evidence   — the signed `.ko`.
// Never used: `data/` snapshots, `jump_table.txt`/`static_calls.txt` (run-time state), and the
// `[module]` kallsyms lines except to recover the guest's per-cpu base claim, which the engine
// then checks for consistency against every per-cpu relocation like any other claimed address.

import ExecGateELF
import ExecGateExplain
import ExecGateVerifier
import _ExecGateInternals
#if canImport(Glibc)
import Glibc
#endif

public struct CaptureError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// One capture file, read whole up to `limit` bytes (the toolkit's bounded read). A capture is
/// written by the captured guest and is untrusted input: only a regular file is read (as the CLI's
/// other readers, `LocalFile.read`). A FIFO nobody writes would block open() forever, and a device
/// (`/dev/zero`) would be read up to the limit; both are refused by `stat()` before any open.
func readFile(_ path: String, limit: Int = 1 << 30) throws -> [UInt8] {
    var st = stat()
    guard stat(path, &st) == 0 else { throw CaptureError(path: path, reason: String(cString: strerror(errno))) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw CaptureError(path: path, reason: "not a regular file") }
    do { return try Files.read(path, limit: limit) } catch { throw CaptureError(path: path, reason: "\(error)") }
}

func readText(_ path: String) throws -> String { String(decoding: try readFile(path, limit: CaptureLimits.smallFile), as: UTF8.self) }

/// A small capture file that may be absent (nil only when it does not exist: a file that is there
/// but too large, not regular or unreadable is invalid input, not "absent").
func readOptionalText(_ path: String) throws -> String? {
    try readOptionalFile(path).map { String(decoding: $0, as: UTF8.self) }
}

/// The same for bytes (a small file: `CaptureLimits.smallFile`).
func readOptionalFile(_ path: String) throws -> [UInt8]? {
    var st = stat()
    if lstat(path, &st) != 0 && errno == ENOENT { return nil }
    return try readFile(path, limit: CaptureLimits.smallFile)
}

/// Bounds on capture files by kind (a capture is untrusted input: each is refused from its size
/// before it is read). The largest seen: kallsyms.txt 6.4 MB (6.1 with 103 modules), the small
/// text files and CPU-state dumps a few KiB.
public enum CaptureLimits {
    /// load-order.txt, cpus.txt, slide.txt, kvars.txt, cmdline.txt, vulnerabilities.txt,
    /// uname.txt, boot_cpu_data.bin, pv_ops.bin, static_call_trampolines.txt (~700 lines of 50 bytes).
    public static let smallFile = 1 << 20
    /// kallsyms.txt: ~10× a Debian 6.1 kernel's with a hundred modules.
    public static let kallsyms = 64 << 20
}


func fileExists(_ path: String) -> Bool { access(path, R_OK) == 0 }

func parseHex(_ s: Substring) -> UInt64? {
    var t = s
    if t.hasPrefix("0x") { t = t.dropFirst(2) }
    return UInt64(t, radix: 16)
}

/// NR_CPUS of the kernels ExecGate replays (CONFIG_NR_CPUS=8192, Debian 6.1 and 6.12): no CPU
/// number a kernel prints in a cpulist is this high.
let capturedKernelMaximumCPUs = 8192

/// A CPU list in the kernel's format ("0", "0-3,5") → count, or nil when it is not one. The kernel
/// prints a cpumask as increasing decimal numbers and `a-b` ranges (`cpumap_print_to_pagebuf()`,
/// the format `bitmap_parselist()` reads back), every number below the mask's width (NR_CPUS).
/// The guest wrote this file: a number at or past NR_CPUS, a reversed range, a part not past the
/// one before it (a CPU twice, or out of order) or any other word is
/// refused rather than counted, and the count is bounded (no arithmetic on guest numbers can trap).
func countCPUs(_ list: Substring) -> Int? {
    func cpu(_ s: Substring) -> Int? {
        guard !s.isEmpty, s.utf8.count <= 5, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(s), v < capturedKernelMaximumCPUs else { return nil }
        return v
    }
    // The kernel prints a mask's runs of set bits lowest first, each once
    // (cpumap_print_to_pagebuf() → bitmap_print_list_to_buf() → bitmap_list_string()): every part
    // starts past the previous part's end, so no CPU is counted twice (`0,0,0,0` was 4 CPUs, and
    // `3,0` or `0-3,2` read as well: no kernel prints them).
    var n = 0
    var last = -1
    for part in list.split(separator: ",", omittingEmptySubsequences: false) {
        let r = part.split(separator: "-", omittingEmptySubsequences: false)
        let a: Int, b: Int
        if r.count == 2, let x = cpu(r[0]), let y = cpu(r[1]), y >= x { (a, b) = (x, y) } else if r.count == 1, let x = cpu(part) { (a, b) = (x, x) } else { return nil }
        guard a > last else { return nil }
        n += b - a + 1
        last = b
    }
    // Disjoint and below NR_CPUS: at most NR_CPUS.
    return n
}

/// One boot of a capture.
public struct CaptureBoot {
    public let dir: String
    public let facts: GuestFacts
    public let coreExports: [String: UInt64]
    public let loadOrder: [String]
    /// `[module]` kallsyms lines with small (per-cpu offset) addresses: module → name → address.
    let percpuSymbols: [String: [String: UInt64]]
    /// Core symbols an attacker would aim a static call at (for the mutation tester only, never
    /// facts): entry-code labels, credential/CR4 writers, a label inside an instruction sequence,
    /// freed init text, the end of text.
    public let probeTargets: [String: UInt64]
    static let probeNames: Set<String> = ["native_irq_return_iret", "entry_SYSCALL_64_after_hwframe", "commit_creds", "native_write_cr4",
                                          "srso_safe_ret", "start_kernel", "_etext", "prepare_kernel_cred"]

    public static func load(_ dirIn: String) throws -> CaptureBoot {
        var dir = dirIn
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        // The boot's own folder first: a missing one, or a file, is named as given (it was reported
        // as its parent's missing load-order.txt).
        var st = stat()
        guard stat(dir, &st) == 0 else { throw CaptureError(path: dir, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw CaptureError(path: dir, reason: "not a directory (a capture is one boot's folder)") }
        // The parent of a single relative component ("nokaslr-a") is ".", not "" (which made the
        // parent's load order "/load-order.txt", the filesystem root); of "/x" it is "" (root).
        var parent = dir.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if parent.isEmpty && !dir.hasPrefix("/") { parent = "." }
        let orderPath = fileExists(dir + "/load-order.txt") ? dir + "/load-order.txt" : parent + "/load-order.txt"
        // Neither here nor in the parent: not a boot directory (a corpus root, some other folder).
        // Said so, rather than as the parent's missing file (round 13).
        // (Present, readable or not: an unreadable kallsyms.txt is reported as such when read.)
        if access(dir + "/kallsyms.txt", F_OK) != 0 && (!fileExists(orderPath) || fileExists(dir + "/load-order.txt")) {
            let boots = ["nokaslr", "kaslr", "nokaslr-a"].filter { fileExists(dir + "/" + $0 + "/kallsyms.txt") }
            throw CaptureError(path: dir, reason: "not one boot's capture directory (no kallsyms.txt"
                + (fileExists(orderPath) ? "" : ", no load-order.txt here or in its parent")
                + "): pass <corpus>/<boot>" + (boots.isEmpty ? ", e.g. a capture's nokaslr/ or kaslr/" : ": " + boots.map { dir + "/" + $0 }.joined(separator: " or ")))
        }
        let order: [String] = try readText(orderPath).split(whereSeparator: \.isNewline).compactMap { (l: Substring) -> String? in
            guard let w = l.split(separator: " ").first else { return nil }
            return String(w.map { $0 == "-" ? "_" : $0 })
        }
        // Each name is a directory of this boot (`<boot>/<m>/`, docs/capture.md), and a module's
        // name is `struct module`'s: printable ASCII, at most MODULE_NAME_LEN − 1 = 55 bytes, never
        // a path. `../x` read a module outside the capture and got a verdict under that "name".
        for name in order where !Self.isModuleName(name) {
            let shown = name.utf8.map { $0 >= 0x20 && $0 < 0x7F ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
            throw CaptureError(path: orderPath, reason: "'\(shown)' is not a module name (printable ASCII, at most 55 bytes, no '/', not '.' or '..'): each module is a directory of the boot")
        }

        // Trusted facts come from the same register-guest message a VMM would send, turned into
        // the engine's GuestFacts by the verifier's own builder: offline replay and served
        // verdicts see identical facts.
        let registration = try Self.registration(dir: dir, guestID: "capture")
        var facts = GuestFactsBuilder.facts(from: registration)
        // Facts the explainer derives from the same message (kernel release, the core's init
        // memory, per-key static-call targets of the build); idempotent if the builder does it too.
        var named: [String: UInt64] = [:]
        for s in registration.symbols where named[s.name] == nil { named[s.name] = s.address }
        facts.deriveFromCoreSymbols(named)
        if !registration.kernelRelease.isEmpty { facts.kernelRelease = registration.kernelRelease }
        let exports = facts.exports.dictionary()
        let (percpu, probes) = scanKallsyms(try readFile(dir + "/kallsyms.txt", limit: CaptureLimits.kallsyms), module: nil)
        return CaptureBoot(dir: dir, facts: facts, coreExports: exports, loadOrder: order, percpuSymbols: percpu, probeTargets: probes)
    }

    /// A load-order word that can name a module directory of the boot.
    static func isModuleName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        return (1...55).contains(b.count) && b.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") } && name != "." && name != ".."
    }

    /// The signed module bytes and the guest's claim for one module.
    public func module(_ name: String) throws -> CapturedModule {
        try Self.module(name, bootDir: dir, percpu: percpuSymbols[name])
    }

    /// One module's claim without the boot's facts (`request module --claim BOOT/M`: a VMM playing
    /// one request need not build the registration's facts, ~0.7 s for a Debian boot): the same
    /// files and the same per-cpu base as `load(dir).module(name)`, the per-cpu symbols read
    /// from this module's own `kallsyms.txt` lines only.
    public static func module(_ name: String, inBoot dir: String) throws -> CapturedModule {
        guard isModuleName(name) else {
            throw CaptureError(path: dir + "/" + name, reason: "'\(name)' is not a module name (printable ASCII, at most 55 bytes, no '/', not '.' or '..')")
        }
        let ks = try readFile(dir + "/kallsyms.txt", limit: CaptureLimits.kallsyms)
        return try module(name, bootDir: dir, percpu: scanKallsyms(ks, module: name).percpu[name])
    }

    /// What a boot's `kallsyms.txt` gives besides the registration's facts. `[module]` lines are
    /// not facts; their small addresses only recover each module's per-cpu base claim (checked by
    /// the engine like any other claimed address): module → symbol → address for the lines below
    /// 2³², of `module` only when one is named (its lines told by their last word before any
    /// field is parsed). And the addresses of the core's `probeNames` (every module's scan only).
    static func scanKallsyms(_ kallsyms: [UInt8], module: String?) -> (percpu: [String: [String: UInt64]], probes: [String: UInt64]) {
        var percpu: [String: [String: UInt64]] = [:]
        var probes: [String: UInt64] = [:]
        let tail = module.map { Array("[\($0)]".utf8) }
        let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        for line in kallsyms.split(separator: UInt8(ascii: "\n")) {
            if let tail, !line.reversed().drop(while: blank).starts(with: tail.reversed()) { continue }
            let f = String(decoding: line, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if module == nil, f.count == 3, Self.probeNames.contains(String(f[2])), probes[String(f[2])] == nil, let a = UInt64(f[0], radix: 16) {
                probes[String(f[2])] = a
            }
            guard f.count >= 4, let a = UInt64(f[0], radix: 16), a < 1 << 32 else { continue }
            percpu[String(f[3].dropFirst().dropLast()), default: [:]][String(f[2])] = a
        }
        return (percpu, probes)
    }

    static func module(_ name: String, bootDir dir: String, percpu table: [String: UInt64]?) throws -> CapturedModule {
        let mdir = dir + "/" + name
        let layoutPath = mdir + "/layout.json"
        let layout: JSON
        do { layout = try JSONReader.parse(try readFile(layoutPath, limit: Self.maxJSONBytes)) } catch {
            throw CaptureError(path: layoutPath, reason: "\(error)")
        }
        guard let koName = layout["ko"]?.stringValue, let baseText = layout["core_text"]?["base"]?.stringValue else {
            throw CaptureError(path: layoutPath, reason: "missing ko / core_text.base (strings)")
        }
        // The .ko is named by the capture: a plain file in the module's own directory, never a path.
        guard !koName.isEmpty, !koName.contains("/"), koName != ".", koName != ".." else {
            throw CaptureError(path: layoutPath, reason: "ko '\(koName)' is not a file name")
        }
        guard let base = parseHex(Substring(baseText)) else { throw CaptureError(path: layoutPath, reason: "bad core_text.base '\(baseText)'") }
        let ko = try readFile(mdir + "/" + koName)
        // A data-only module has an empty executable region (no MOD_TEXT on 6.12: base 0).
        let text = fileExists(mdir + "/core_text.bin") ? try readFile(mdir + "/core_text.bin") : []
        var secs: [String: UInt64] = [:]
        let sectionsPath = mdir + "/sections.json"
        do {
            guard let members = try JSONReader.parse(try readFile(sectionsPath, limit: Self.maxJSONBytes)).objectMembers else {
                throw CaptureError(path: sectionsPath, reason: "not an object of section name → address")
            }
            for (k, v) in members {
                guard let t = v.stringValue else { throw CaptureError(path: sectionsPath, reason: "section \(k): the address is not a string") }
                // A string that is not "0x…" hex names no address (the section is then unclaimed).
                if let a = parseHex(Substring(t)) { secs[k] = a }
            }
        } catch let e as CaptureError { throw e } catch { throw CaptureError(path: sectionsPath, reason: "\(error)") }
        // Per-cpu base claim: kallsyms address of one of the module's per-cpu symbols minus its
        // offset in `.data..percpu` (the engine checks it against every per-cpu relocation).
        var percpuBase: UInt64? = nil
        try ko.withUnsafeBytes { raw in
            let elf = try ELFFile(bytes: raw)
            guard let pc = elf.section(named: ".data..percpu"), let table else { return }
            for s in try elf.symbols() where Int(s.sectionIndex) == pc.index && !s.name.isEmpty && s.type != 3 {
                if let a = table[s.name] { percpuBase = a &- s.value; break }
            }
        }
        return CapturedModule(name: name, ko: ko, claim: ModuleClaim(name: name, textBase: base, text: text, sectionAddresses: secs, percpuBase: percpuBase))
    }

    /// layout.json and sections.json are a few KiB (the largest in the shared corpus: 16 KiB).
    static let maxJSONBytes = 1 << 20

    public var availableModules: [String] { loadOrder.filter { fileExists(dir + "/" + $0 + "/layout.json") } }
}

public struct CapturedModule {
    public let name: String
    public let ko: [UInt8]
    public let claim: ModuleClaim
}
