// SPDX-License-Identifier: Apache-2.0
//
// The guest's claim about one loaded module: where it is and what its executable memory holds.
// Untrusted: every byte and address is checked against the signed ELF and the trusted facts.

/// The claim for one module.
///
/// - `textBase` / `text`: the module's whole executable core region
///   `[core_layout.base, + core_layout.text_size)` — every byte that becomes executable, section
///   contents and the zero padding between and after them.
/// - `sectionAddresses`: the guest's addresses of the module's allocated sections by name (the
///   `/sys/module/<m>/sections/` view). Core-section addresses must agree with the kernel's
///   `layout_sections()` applied to the signed ELF; `.init*` addresses are ignored unless the init region is
///   claimed (then they must agree with the init layout; see `Session.init`).
/// - `percpuBase`: the module's per-cpu area (`mod->percpu`), needed when it has `.data..percpu`.
/// - `initTextBase` / `initText` (optional): the module's executable init region
///   `[init_layout.base, + init_layout.text_size)` while its init function runs. When given, it is
///   explained like the core region (same loader stages, relocations into init at these
///   addresses) and the verdict covers both; the init region is valid only until the VMM reports
///   init freed. Core bytes never depend on init addresses either way. On 6.12 it is the
///   MOD_INIT_TEXT allocation `[mem[MOD_INIT_TEXT].base, + PAGE_ALIGN(size))`, and the init data
///   types' bases come from `memoryBases` or the claimed `.init*` section addresses
///   (Loader612Layout.swift `memoryBases612(initRegion:)`).
public struct ModuleClaim: Sendable {
    public var name: String
    public var textBase: UInt64
    public var text: [UInt8]
    public var sectionAddresses: [String: UInt64]
    public var percpuBase: UInt64?
    /// 6.12 (separate allocation per `enum mod_mem_type`): the claimed base of each type
    /// (`mod->mem[t].base`). Optional: when a type is absent here its base is derived from the
    /// claimed section addresses (all sections of one type must agree). `textBase` is `MOD_TEXT`'s
    /// base (0 with an empty `text` for a data-only module, whose `MOD_TEXT` is not allocated).
    public var memoryBases: [ModuleMemoryType: UInt64] = [:]
    public var initTextBase: UInt64?
    public var initText: [UInt8]?

    public init(name: String, textBase: UInt64, text: [UInt8], sectionAddresses: [String: UInt64], percpuBase: UInt64? = nil,
                initTextBase: UInt64? = nil, initText: [UInt8]? = nil) {
        self.initTextBase = initTextBase
        self.initText = initText
        self.name = name
        self.textBase = textBase
        self.text = text
        self.sectionAddresses = sectionAddresses
        self.percpuBase = percpuBase
    }
}
