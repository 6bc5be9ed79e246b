// SPDX-License-Identifier: Apache-2.0
//
// Constants of the ELF gABI (System V ABI, "Object Files") and the x86-64 psABI used by the parser.

/// Named limits of the parser (hostile input: every count is capped before use).
public enum ELFLimits {
    /// Kernel modules have a few hundred sections at most (`-ffunction-sections` is not used by kbuild).
    public static let maxSections = 65_280  // SHN_LORESERVE
    /// `sizeof(Elf64_Ehdr)`.
    public static let headerSize = 64
    /// `sizeof(Elf64_Shdr)`.
    public static let sectionHeaderSize = 64
    /// `sizeof(Elf64_Sym)`.
    public static let symbolSize = 24
    /// `sizeof(Elf64_Rela)`.
    public static let relaSize = 24
    /// The longest section name read, in bytes (without its NUL). kbuild's names are short
    /// (`__patchable_function_entries`, 28); a build with `-ffunction-sections` names a section
    /// `.rela.text.<symbol>`, and a symbol is at most KSYM_NAME_LEN − 1 = 511 bytes (6.1 and 6.12).
    public static let maxSectionNameBytes = 1024
    /// All section names together, in bytes. Every name is kept as a `String`: without a bound,
    /// 8,000 section headers naming one NUL-free megabyte of `.shstrtab` asked for 8 GB (and as
    /// many bytes scanned) from a 1.5 MB signed module, and the service aborted. A real module's
    /// names take a few KiB.
    public static let maxSectionNamesBytes = 1 << 20
    /// A symbol string table may hold no run of this many bytes without a NUL, so no symbol name
    /// is longer than twice it less one (KSYM_NAME_LEN is 512 in 6.1 and 6.12). Checked a block at
    /// a time (one `memchr` a block: a real table has a NUL within its first bytes): every reader
    /// of names (resolution hashes each undefined symbol's name whole, the layout counts each
    /// kept name) then does bounded work per name, where symbols sharing one long name cost its
    /// length each (a million undefined symbols naming 10 MB).
    public static let maxSymbolNameRun = 1024
}

/// Section header types (`sh_type`), gABI.
public enum SectionType {
    public static let null: UInt32 = 0      // SHT_NULL
    public static let progbits: UInt32 = 1  // SHT_PROGBITS
    public static let symtab: UInt32 = 2    // SHT_SYMTAB
    public static let strtab: UInt32 = 3    // SHT_STRTAB
    public static let rela: UInt32 = 4      // SHT_RELA
    public static let nobits: UInt32 = 8    // SHT_NOBITS
    public static let rel: UInt32 = 9       // SHT_REL
}

/// Section flags (`sh_flags`), gABI.
public struct SectionFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let write = SectionFlags(rawValue: 0x1)      // SHF_WRITE
    public static let alloc = SectionFlags(rawValue: 0x2)      // SHF_ALLOC
    public static let execInstr = SectionFlags(rawValue: 0x4) // SHF_EXECINSTR
    public static let infoLink = SectionFlags(rawValue: 0x40)  // SHF_INFO_LINK
    /// Linux-internal `SHF_RO_AFTER_INIT` (include/linux/moduleloader.h / module.h: 0x00200000),
    /// set by the loader on `.data..ro_after_init` and `__jump_table`; never in a file.
    public static let roAfterInit = SectionFlags(rawValue: 0x0020_0000)
    /// Linux `SHF_RELA_LIVEPATCH` (include/uapi/linux/elf.h: 0x00100000): a livepatch module's
    /// `.klp.rela.<object>.<section>` relocation section, applied by klp_apply_section_relocs().
    public static let relaLivepatch = SectionFlags(rawValue: 0x0010_0000)
}

/// Special section indices (`st_shndx`), gABI.
public enum SectionIndex {
    public static let undef: UInt16 = 0          // SHN_UNDEF
    public static let loReserve: UInt16 = 0xff00 // SHN_LORESERVE
    public static let livepatch: UInt16 = 0xff20 // SHN_LIVEPATCH (Linux, in SHN_LOOS..SHN_HIOS)
    public static let abs: UInt16 = 0xfff1       // SHN_ABS
    public static let common: UInt16 = 0xfff2    // SHN_COMMON
    public static let xindex: UInt16 = 0xffff    // SHN_XINDEX
}

/// x86-64 psABI relocation types ("System V ABI AMD64", table 4.9). The kernel's
/// `apply_relocate_add()` (arch/x86/kernel/module.c, 6.1) accepts exactly NONE, 64, 32, 32S, PC32,
/// PLT32 and PC64 and refuses every other type with -ENOEXEC; ``RelocationType/isKnownToLoader`` says so.
public struct RelocationType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// R_X86_64_NONE (0): no reloc.
    public static let none = RelocationType(rawValue: 0)
    /// R_X86_64_64 (1): S + A, word64.
    public static let r64 = RelocationType(rawValue: 1)
    /// R_X86_64_PC32 (2): S + A - P, word32 (sign-extended).
    public static let pc32 = RelocationType(rawValue: 2)
    /// R_X86_64_PLT32 (4): L + A - P; the kernel treats it as PC32 (no PLT for modules).
    public static let plt32 = RelocationType(rawValue: 4)
    /// R_X86_64_32 (10): S + A, word32 zero-extended (overflow checked).
    public static let r32 = RelocationType(rawValue: 10)
    /// R_X86_64_32S (11): S + A, word32 sign-extended (overflow checked).
    public static let r32S = RelocationType(rawValue: 11)
    /// R_X86_64_PC64 (24): S + A - P, word64.
    public static let pc64 = RelocationType(rawValue: 24)

    @inlinable public var isKnownToLoader: Bool {
        switch rawValue { case 0, 1, 2, 4, 10, 11, 24: return true; default: return false }
    }
    /// Width of the field written, in bytes (0 for NONE, nil for types the loader refuses).
    @inlinable public var fieldSize: Int? {
        switch rawValue {
        case 0: return 0
        case 1, 24: return 8
        case 2, 4, 10, 11: return 4
        default: return nil
        }
    }
    public var description: String {
        switch rawValue {
        case 0: return "R_X86_64_NONE"
        case 1: return "R_X86_64_64"
        case 2: return "R_X86_64_PC32"
        case 4: return "R_X86_64_PLT32"
        case 10: return "R_X86_64_32"
        case 11: return "R_X86_64_32S"
        case 24: return "R_X86_64_PC64"
        default: return "R_X86_64_type\(rawValue)"
        }
    }
}
