// SPDX-License-Identifier: Apache-2.0
//
// The program headers of a 64-bit little-endian ELF executable: what the service VM's image
// builder needs to know about the binary it installs as /init (a dynamically linked /init dies in
// the guest: there is no ld.so and no libc in the initramfs).
//
// Per the ELF gABI (include/uapi/linux/elf.h):
//
//     typedef struct elf64_hdr {          typedef struct elf64_phdr {
//       unsigned char e_ident[16];          Elf64_Word  p_type;     @0
//       Elf64_Half e_type;      @16         Elf64_Word  p_flags;    @4
//       Elf64_Half e_machine;   @18         Elf64_Off   p_offset;   @8
//       Elf64_Word e_version;   @20         Elf64_Addr  p_vaddr;    @16
//       Elf64_Addr e_entry;     @24         Elf64_Addr  p_paddr;    @24
//       Elf64_Off  e_phoff;     @32         Elf64_Xword p_filesz;   @32
//       Elf64_Off  e_shoff;     @40         Elf64_Xword p_memsz;    @40
//       Elf64_Word e_flags;     @48         Elf64_Xword p_align;    @48
//       Elf64_Half e_ehsize;    @52       } Elf64_Phdr;             (56 bytes)
//       Elf64_Half e_phentsize; @54
//       Elf64_Half e_phnum;     @56
//       ...                               PT_LOAD = 1, PT_INTERP = 3
//     } Elf64_Ehdr;                       (64 bytes)

public struct ELFProgramHeaders: Sendable {
    public static let headerSize = 64
    public static let entrySize = 56
    public static let ptLoad: UInt32 = 1
    public static let ptInterp: UInt32 = 3

    /// `p_type` of each program header, in file order.
    public let types: [UInt32]

    /// Reads the program header table; nil when the bytes are not a 64-bit little-endian ELF file
    /// or the table does not lie inside them.
    public init?(_ b: UnsafeRawBufferPointer) {
        guard b.count >= Self.headerSize, b[0] == 0x7f, b[1] == 0x45, b[2] == 0x4c, b[3] == 0x46,
              b[4] == 2 /* ELFCLASS64 */, b[5] == 1 /* ELFDATA2LSB */ else { return nil }
        func le(_ at: Int, _ n: Int) -> UInt64 {
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
            return v
        }
        let phentsize = Int(le(54, 2)), phnum = Int(le(56, 2))
        guard let phoff = Int(exactly: le(32, 8)), phentsize >= Self.entrySize else { return nil }
        // phnum ≤ 65535 and phentsize ≤ 65535: the product cannot overflow; the sum is checked.
        let (end, overflow) = phoff.addingReportingOverflow(phnum * phentsize)
        guard !overflow, end <= b.count else { return nil }
        types = (0..<phnum).map { UInt32(truncatingIfNeeded: le(phoff + $0 * phentsize, 4)) }
    }

    public init?(_ bytes: [UInt8]) {
        guard let h = bytes.withUnsafeBytes({ ELFProgramHeaders($0) }) else { return nil }
        self = h
    }

    /// True when the file names a program interpreter (PT_INTERP): it is dynamically linked.
    public var hasInterpreter: Bool { types.contains(Self.ptInterp) }
}
