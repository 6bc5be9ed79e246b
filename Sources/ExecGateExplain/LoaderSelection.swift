// SPDX-License-Identifier: Apache-2.0
//
// Which module loader a module went through: chosen from what the registration and the signed
// module say, by an exact table, never guessed (docs/kernels/6.12-loader.md §2.2). A kernel
// release or a module that maps to no measured row is denied with a reason naming it.
//
// What each input contributes:
// - `kernel_release` (registration tag 2, `init_uts_ns`): selects the row. Only releases whose
//   build was measured have a row (the constants below are per build, not per version family).
// - the module's `.modinfo` `vermagic=` (signed): its release part must EQUAL the kernel release
//   and its flag words must be the row's `VERMAGIC_STRING` tail (include/linux/vermagic.h). The
//   kernel itself is laxer: with CONFIG_MODVERSIONS `same_magic()` (kernel/module/version.c)
//   skips the release part. ExecGate is stricter on purpose: the replay is right only for the build
//   it models.
// - `.gnu.linkonce.this_module` `sh_size`: `elf_validity_cache_index_mod()` (6.12
//   kernel/module/main.c; `elf_validity_check`/`setup_load_info` in 6.1) refuses a module whose
//   size differs from `sizeof(struct module)` (-ENOEXEC). A module failing this could never have
//   been loaded by that build: deny it.
//
// A registration without a release (older VMMs, the committed 6.1 fixture) gets the 6.1 row only,
// and only when the module's own vermagic names a measured 6.1 build: such registrations carry the
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

    /// `sizeof(struct module)` of the measured build (BTF of its vmlinux; doc §2.3).
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

    /// Measured builds: (release pattern, loader, vermagic flag words). Exact table (doc §2.2):
    /// 6.1 rows key on Debian's ABI number, 6.12 rows on the upstream sublevel. Only the generic
    /// `amd64` flavour was measured (sizeof(struct module) is config-dependent: cloud and rt
    /// flavours need their own measurement before they get a row).
    static let measured: [(release: String, loader: ModuleLoader, flags: String)] = [
        ("6.1.0-56-amd64", .linux6_1, "SMP preempt mod_unload modversions "),
        ("6.12.117+deb12-amd64", .linux6_12, "SMP preempt mod_unload modversions "),
    ]

    /// The row for a kernel release, or the reason there is none.
    public static func forRelease(_ release: String) -> Result<ModuleLoader, LoaderSelectionError> {
        if let row = measured.first(where: { $0.release == release }) { return .success(row.loader) }
        return .failure(LoaderSelectionError("kernel \(release): module loader not known (replayed builds: \(measured.map(\.release).joined(separator: ", ")))"))
    }

    /// Select the loader for `elf` under a guest that registered `kernelRelease` (nil: none given).
    public static func select(elf: ELFFile, kernelRelease: String?) -> Result<ModuleLoader, LoaderSelectionError> {
        guard let vm = vermagic(elf) else {
            return .failure(LoaderSelectionError("the module has no vermagic= in .modinfo (the kernel refuses it unless forced: check_modinfo)", rule: .vermagic))
        }
        let parts = vm.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
        let modRelease = String(parts[0])
        let modFlags = parts.count > 1 ? String(parts[1]) : ""
        let release: String
        if let kr = kernelRelease, !kr.isEmpty {
            guard modRelease == kr else {
                return .failure(LoaderSelectionError("vermagic \"\(vm)\" is for release \(modRelease), the guest runs \(kr)", rule: .vermagic))
            }
            release = kr
        } else {
            release = modRelease
        }
        guard let row = measured.first(where: { $0.release == release }) else {
            return .failure(LoaderSelectionError("kernel \(release): module loader not known (replayed builds: \(measured.map(\.release).joined(separator: ", ")))"))
        }
        if kernelRelease == nil || kernelRelease!.isEmpty, row.loader != .linux6_1 {
            return .failure(LoaderSelectionError("module is for kernel \(release) but the registration names no kernel release: the \(row.loader) loader is only chosen from a registered release"))
        }
        guard modFlags == row.flags else {
            return .failure(LoaderSelectionError("module vermagic flags '\(modFlags)' are not \(release)'s '\(row.flags)'", rule: .vermagic))
        }
        guard let tm = elf.section(named: ".gnu.linkonce.this_module") else {
            return .failure(LoaderSelectionError("module has no .gnu.linkonce.this_module (the kernel refuses it: no struct module)"))
        }
        guard tm.size == row.loader.thisModuleSize else {
            return .failure(LoaderSelectionError("struct module (.gnu.linkonce.this_module) is 0x\(String(tm.size, radix: 16)) bytes, \(release) has 0x\(String(row.loader.thisModuleSize, radix: 16)) (the kernel refuses the module)"))
        }
        return .success(row.loader)
    }

    /// The `vermagic=` entry of `.modinfo` (NUL-separated `key=value`, MODULE_INFO), without the key.
    static func vermagic(_ elf: ELFFile) -> String? {
        guard let s = elf.section(named: ".modinfo"), !s.isNoBits else { return nil }
        for entry in elf.contents(of: s).split(separator: 0) where entry.starts(with: Array("vermagic=".utf8)) {
            return String(decoding: entry.dropFirst(9), as: UTF8.self)
        }
        return nil
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
