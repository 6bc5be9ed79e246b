// SPDX-License-Identifier: Apache-2.0
//
// Which module loader a module went through: chosen from what the registration and the signed
// module say, never guessed (docs/kernels/6.12-loader.md §2.2). A kernel release whose loader
// ExecGate does not replay is denied with a reason naming it.
//
// What each input contributes:
// - `kernel_release` (registration tag 2, `init_uts_ns`): its version family (MAJOR.MINOR) selects
//   the loader. The loader's behaviour — module memory layout, table formats, patching order — is
//   a property of the source version (kernel/module/main.c, arch/x86/kernel/module.c and
//   alternative.c of that version), not of one build: every 6.1.y build (generic, cloud, rt, any
//   ABI number) goes through 6.1's `layout_sections()`/`module_finalize()`, every 6.12.y build
//   through 6.12's. A family ExecGate does not replay (6.6, 6.13, …) is denied: fail closed.
// - the module's `.modinfo` `vermagic=` (signed): its release part must EQUAL the registered
//   release. The kernel itself is laxer: with CONFIG_MODVERSIONS `same_magic()`
//   (kernel/module/version.c) skips the release part. ExecGate is stricter on purpose: the replay
//   must be the one of the kernel the module was built for.
// - `.gnu.linkonce.this_module` `sh_size`: `elf_validity_cache_index_mod()` (6.12
//   kernel/module/main.c; `elf_validity_check`/`setup_load_info` in 6.1) refuses a module whose
//   size differs from `sizeof(struct module)` (-ENOEXEC). sizeof(struct module) depends on the
//   build's config (PREEMPT_RT, …), so it is checked for the builds whose size was measured
//   (`measured` below) and otherwise left to the kernel: a signed module of another build of the
//   same family carries its own build's size, and the replay reads nothing from struct module.
//
// A registration without a release (older VMMs, the committed 6.1 fixture) gets the 6.1 loader
// only, and only when the module's own vermagic names a 6.1 release: such registrations carry the
// capability words read at 6.1's `cpuinfo_x86` offset (0x28), which is wrong for 6.12 (0x30).

import ExecGateELF

/// One measured kernel build family whose loader ExecGate replays.
public enum ModuleLoader: String, Sendable, Hashable, CustomStringConvertible {
    /// Debian 6.1 (`6.1.0-N-amd64`, upstream 6.1.192): `layout_sections()` into one core and one
    /// init allocation; 12-byte `alt_instr`; `.parainstructions`.
    case linux6_1 = "6.1"
    /// Debian 6.12 (`6.12.N+deb12-amd64`, 6.12.117): per-type `struct module_memory`; 14-byte
    /// `alt_instr` with flags; paravirt as alternatives; IBT seal; call thunks.
    case linux6_12 = "6.12"

    public var description: String { rawValue }

    /// `sizeof(struct module)` of the measured generic build (BTF of its vmlinux; doc §2.3).
    public var thisModuleSize: Int {
        switch self {
        case .linux6_1: return 0x380
        case .linux6_12: return 0x500
        }
    }

    /// Offset of `x86_capability[]` in `struct cpuinfo_x86` (`boot_cpu_data`), BTF (doc §2.3).
    public var capabilityOffset: Int {
        switch self {
        case .linux6_1: return 0x28
        case .linux6_12: return 0x30
        }
    }

    /// Feature-bit numbers of the build (cpufeatures.h of that exact source, doc §9).
    public var featureBits: FeatureBits {
        switch self {
        case .linux6_1: return .debian6_1
        case .linux6_12: return FeatureBits(capabilityWords: 24, retpoline: 11 * 32 + 12, retpolineLfence: 11 * 32 + 13,
                                            rethunk: 11 * 32 + 14, indirectThunkITS: 21 * 32 + 6)
        }
    }

    /// Entries of `pv_ops` (`struct paravirt_patch_template`, BTF: 664 bytes = 83 pointers on
    /// Debian 6.12). A direct-call slot beyond them is not a pv_ops entry (doc §10).
    public var pvOpsEntries: Int? { self == .linux6_12 ? 83 : nil }

    /// `X86_FEATURE_CALL_DEPTH` (11*32+19) in 6.12; 6.1 has no call-depth tracking.
    public var callDepthBit: Int? { self == .linux6_12 ? 11 * 32 + 19 : nil }

    /// Builds whose `sizeof(struct module)` was measured (BTF of their vmlinux, doc §2.3): for these
    /// the module's `.gnu.linkonce.this_module` size is checked as the kernel checks it.
    static let measured: [(release: String, loader: ModuleLoader)] = [
        ("6.1.0-56-amd64", .linux6_1),
        ("6.12.117+deb12-amd64", .linux6_12),
    ]

    /// The loader of a kernel release's version family: `6.1.*` → 6.1, `6.12.*` → 6.12, else nil.
    /// (Split on dots so "6.12.x" is never read as "6.1".)
    public static func family(ofRelease release: String) -> ModuleLoader? {
        // An ASCII release (every real one) on its bytes: "6", ".", a minor of digits equal to
        // "1" or "12", "." — exactly the releases starting "6.1." or "6.12." (for ASCII text the
        // Character split below is the byte split). Anything else takes the split.
        var r = release
        if let fast = r.withUTF8({ u -> ModuleLoader?? in
            guard UnsafeRawBufferPointer(u).isASCII else { return .none }
            if u.starts(with: "6.1.".utf8) { return .some(.linux6_1) }
            if u.starts(with: "6.12.".utf8) { return .some(.linux6_12) }
            return .some(nil)
        }) { return fast }
        let parts = release.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0] == "6" else { return nil }
        let minor = parts[1]
        guard !minor.isEmpty, minor.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        switch minor {
        case "1": return .linux6_1
        case "12": return .linux6_12
        default: return nil
        }
    }

    static func notKnown(_ release: String) -> LoaderSelectionError {
        LoaderSelectionError("kernel \(release): module loader not known (ExecGate replays the 6.1 and 6.12 loaders)")
    }

    /// The loader for a kernel release, or the reason there is none.
    public static func forRelease(_ release: String) -> Result<ModuleLoader, LoaderSelectionError> {
        if let l = family(ofRelease: release) { return .success(l) }
        return .failure(notKnown(release))
    }

    /// Select the loader for `elf` under a guest that registered `kernelRelease` (nil: none given).
    public static func select(elf: ELFFile, kernelRelease: String?) -> Result<ModuleLoader, LoaderSelectionError> {
        select(elf: elf, kernelRelease: kernelRelease, vermagic: vermagic(elf))
    }

    /// The same with the module's `vermagic=` entry already read (`vermagic(elf)`).
    static func select(elf: ELFFile, kernelRelease: String?, vermagic: String?) -> Result<ModuleLoader, LoaderSelectionError> {
        guard let vm = vermagic else {
            return .failure(LoaderSelectionError("the module has no vermagic= in .modinfo (the kernel refuses it unless forced: check_modinfo)", rule: .vermagic))
        }
        let modRelease = firstWord(vm)
        let release: String
        if let kr = kernelRelease, !kr.isEmpty {
            guard modRelease == kr else {
                return .failure(LoaderSelectionError("vermagic \"\(vm)\" is for release \(modRelease), the guest runs \(kr)", rule: .vermagic))
            }
            release = kr
        } else {
            release = modRelease
        }
        guard let loader = family(ofRelease: release) else { return .failure(notKnown(release)) }
        if kernelRelease == nil || kernelRelease!.isEmpty, loader != .linux6_1 {
            return .failure(LoaderSelectionError("module is for kernel \(release) but the registration names no kernel release: the \(loader) loader is only chosen from a registered release"))
        }
        guard let tm = elf.section(named: ".gnu.linkonce.this_module") else {
            return .failure(LoaderSelectionError("module has no .gnu.linkonce.this_module (the kernel refuses it: no struct module)"))
        }
        // elf_validity_cache_index_mod() (6.12; 6.1 setup_load_info() finds it by find_sec(), which
        // takes only an SHF_ALLOC section): struct module must be allocated and have contents.
        guard tm.flags.contains(.alloc), !tm.isNoBits else {
            return .failure(LoaderSelectionError("struct module (.gnu.linkonce.this_module) is \(tm.isNoBits ? "SHT_NOBITS" : "not SHF_ALLOC"): elf_validity_cache_index_mod() refuses the module"))
        }
        if let row = measured.first(where: { $0.release == release }), tm.size != row.loader.thisModuleSize {
            return .failure(LoaderSelectionError("struct module (.gnu.linkonce.this_module) is 0x\(String(tm.size, radix: 16)) bytes, \(release) has 0x\(String(row.loader.thisModuleSize, radix: 16)) (the kernel refuses the module)"))
        }
        return .success(loader)
    }

    /// The `vermagic=` entry of `.modinfo` (NUL-separated `key=value`, MODULE_INFO), without the key.
    static func vermagic(_ elf: ELFFile) -> String? { modinfo(elf, "vermagic") }

    /// `String(s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)[0])`:
    /// for ASCII text (Characters are bytes) the bytes before the first space, else the split.
    /// With `skippingLeadingSpaces`, the first word after any leading spaces ("" if none),
    /// as `s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true).first ?? ""`.
    static func firstWord(_ s: String, skippingLeadingSpaces: Bool = false) -> String {
        var t = s
        if let w = t.withUTF8({ u -> String? in
            guard UnsafeRawBufferPointer(u).isASCII else { return nil }
            var start = 0
            if skippingLeadingSpaces { while start < u.count && u[start] == 0x20 { start += 1 } }
            let end = u[start...].firstIndex(of: 0x20) ?? u.count
            return String(decoding: UnsafeBufferPointer(rebasing: u[start..<end]), as: UTF8.self)
        }) { return w }
        if skippingLeadingSpaces { return s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true).first.map(String.init) ?? "" }
        return String(s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)[0])
    }

    /// The value of the first `key=value` entry of `.modinfo` (NUL-separated, empty entries
    /// skipped), read in place: the entries are walked without splitting the section.
    static func modinfo(_ elf: ELFFile, _ key: String) -> String? {
        guard let s = elf.section(named: ".modinfo"), !s.isNoBits else { return nil }
        let b = elf.contents(of: s)
        var prefix = key + "="
        return prefix.withUTF8 { p -> String? in
            var start = 0
            while start < b.count {
                // The entry's end: its NUL, or the section's end (word-wise search).
                let end = ELFFile.firstNUL(in: b, from: start, to: b.count) ?? b.count
                if end - start >= p.count {
                    var match = true
                    for k in 0..<p.count where b[start + k] != p[k] { match = false; break }
                    if match {
                        return UnsafeRawBufferPointer(rebasing: b[(start + p.count)..<end]).withMemoryRebound(to: UInt8.self) {
                            String(decoding: $0, as: UTF8.self)
                        }
                    }
                }
                start = end + 1
            }
            return nil
        }
    }
}

public struct LoaderSelectionError: Error, Sendable, CustomStringConvertible {
    public let reason: String
    /// `.vermagic` when the module's vermagic contradicts the registration (check_modinfo()),
    /// `.loader` when no replayed loader fits.
    public let rule: DenialRule
    init(_ reason: String, rule: DenialRule = .loader) { self.reason = reason; self.rule = rule }
    public var description: String { reason }
}
