// SPDX-License-Identifier: Apache-2.0
//
// ELF64 little-endian x86-64 relocatable objects (Linux kernel modules), parsed over borrowed bytes.
//
// Two passes, like the kernel's own `elf_validity_check()` (kernel/module/main.c):
//   1. header → validated section header table (every section in bounds, names from shstrtab);
//   2. typed views (symbols, RELA records) decoded on demand from the validated ranges.
// No byte of the file is copied: section contents are slices of the caller's buffer.

// MARK: - Public types

/// One validated section header.
///
/// ```c
/// typedef struct {            /* Elf64_Shdr, 64 bytes */
///     Elf64_Word  sh_name;    /* 0  */
///     Elf64_Word  sh_type;    /* 4  */
///     Elf64_Xword sh_flags;   /* 8  */
///     Elf64_Addr  sh_addr;    /* 16 */
///     Elf64_Off   sh_offset;  /* 24 */
///     Elf64_Xword sh_size;    /* 32 */
///     Elf64_Word  sh_link;    /* 40 */
///     Elf64_Word  sh_info;    /* 44 */
///     Elf64_Xword sh_addralign; /* 48 */
///     Elf64_Xword sh_entsize; /* 56 */
/// } Elf64_Shdr;
/// ```
import _ExecGateInternals
#if canImport(Glibc)
import Glibc
#endif

public struct ELFSection: Hashable, Sendable {
    public let index: Int
    public let name: String
    public let type: UInt32
    public let flags: SectionFlags
    public let size: Int
    public let addralign: UInt64
    public let entsize: UInt64
    public let link: UInt32
    public let info: UInt32
    /// Byte range of the contents in the file (empty for SHT_NOBITS).
    public let fileRange: Range<Int>

    public var isAlloc: Bool { flags.contains(.alloc) }
    public var isExec: Bool { flags.contains(.execInstr) }
    public var isWrite: Bool { flags.contains(.write) }
    public var isNoBits: Bool { type == SectionType.nobits }
}

/// One symbol (`Elf64_Sym`, 24 bytes: `st_name u32, st_info u8, st_other u8, st_shndx u16,
/// st_value u64, st_size u64`).
public struct ELFSymbol: Hashable, Sendable {
    public let index: Int
    public let name: String
    public let info: UInt8
    public let other: UInt8
    public let sectionIndex: UInt16
    public let value: UInt64
    public let size: UInt64
    /// `ELF64_ST_BIND`: 0 LOCAL, 1 GLOBAL, 2 WEAK.
    public var binding: UInt8 { info >> 4 }
    /// `ELF64_ST_TYPE`: 0 NOTYPE, 1 OBJECT, 2 FUNC, 3 SECTION, 4 FILE.
    public var type: UInt8 { info & 0xf }
    public var isUndefined: Bool { sectionIndex == SectionIndex.undef }
    public var isWeak: Bool { binding == 2 }
    public var isFunction: Bool { type == 2 }
}

/// One RELA record (`Elf64_Rela`, 24 bytes: `r_offset u64, r_info u64 (sym << 32 | type), r_addend s64`).
public struct ELFRelocation: Hashable, Sendable {
    /// Offset inside the target section.
    public let offset: UInt64
    public let type: RelocationType
    public let symbolIndex: Int
    public let addend: Int64

    @usableFromInline init(offset: UInt64, type: RelocationType, symbolIndex: Int, addend: Int64) {
        self.offset = offset; self.type = type; self.symbolIndex = symbolIndex; self.addend = addend
    }
}

/// A RELA section together with the section it applies to (`sh_info`) and its symbol table (`sh_link`).
///
/// - Warning: ``relocations`` borrows the ELF's buffer like ``ELFFile``.
public struct ELFRelocationSection: @unchecked Sendable {
    // @unchecked: an immutable borrowed buffer plus value types.
    public let section: ELFSection
    public let targetSectionIndex: Int
    public let relocations: ELFRelocations
}

/// The validated records of one RELA section, decoded in place from the borrowed bytes (no array
/// of records is made: a module's relocation sections hold tens of thousands of them).
/// Every record was checked by ``ELFFile/relocationSections(checkingRecords:)``: symbol index
/// inside the symbol table, field inside the target section — unless it was called with
/// `checkingRecords: false`; then the caller tests each record with ``isValid(_:)`` before using
/// it, and on the first that fails calls ``ELFFile/checkRelocationRecords()`` for the error.
public struct ELFRelocations: RandomAccessCollection, @unchecked Sendable {
    // @unchecked: an immutable borrowed buffer.
    @usableFromInline let entries: UnsafeRawBufferPointer
    /// Symbols in the linked symbol table, and the size of the target section.
    public let symbolCount: Int
    public let targetSize: UInt64
    init(entries: UnsafeRawBufferPointer, symbolCount: Int, targetSize: Int) {
        precondition(entries.count % 24 == 0 && symbolCount >= 0 && targetSize >= 0)
        self.entries = entries
        self.symbolCount = symbolCount
        self.targetSize = UInt64(targetSize)
    }
    /// The parser's per-record check (``ELFFile/relocationSections(checkingRecords:)`` throws for
    /// exactly the records where this is false): the symbol index is inside the symbol table and
    /// the field (the type's width; 0 for a type the loader refuses) inside the target section.
    @inlinable public func isValid(_ i: Int) -> Bool {
        let info = self.info(i)
        let width = UInt64(RelocationType(rawValue: UInt32(truncatingIfNeeded: info)).fieldSize ?? 0)
        let (end, ov) = offset(i).addingReportingOverflow(width)
        return Int(info >> 32) < symbolCount && !ov && end <= targetSize
    }
    public var startIndex: Int { 0 }
    public var endIndex: Int { entries.count / 24 }
    /// The records as the file holds them (`endIndex` × 24 bytes, little-endian `Elf64_Rela`),
    /// for a walk that reads them itself (the explainer's check of data records).
    @inlinable public var rawRecords: UnsafeRawBufferPointer { entries }
    // (Records are 24 bytes, little-endian; the host is x86-64. `entries[o]` traps out of range.)
    @inlinable public func offset(_ i: Int) -> UInt64 { UInt64(littleEndian: entries.loadUnaligned(fromByteOffset: at(i), as: UInt64.self)) }
    @inlinable public func info(_ i: Int) -> UInt64 { UInt64(littleEndian: entries.loadUnaligned(fromByteOffset: at(i) &+ 8, as: UInt64.self)) }
    @inlinable public func addend(_ i: Int) -> Int64 { Int64(littleEndian: entries.loadUnaligned(fromByteOffset: at(i) &+ 16, as: Int64.self)) }
    @inlinable func at(_ i: Int) -> Int { precondition(i >= 0 && i < endIndex, "relocation index"); return i &* 24 }
    @inlinable public subscript(i: Int) -> ELFRelocation {
        let info = self.info(i)
        return ELFRelocation(offset: offset(i), type: RelocationType(rawValue: UInt32(truncatingIfNeeded: info)), symbolIndex: Int(info >> 32), addend: addend(i))
    }
}

// MARK: - File

/// A parsed ELF64 little-endian x86-64 `ET_REL` object over borrowed bytes.
///
/// - Warning: the buffer is borrowed, not owned: keep the memory alive (and unchanged) for as long
///   as this value is used. All contents accessors return slices of it.
///
/// ## Errors
/// ``init(bytes:)`` throws ``ELFError`` with: `truncated`, `badMagic`, `unsupportedClass`,
/// `unsupportedEncoding`, `unsupportedVersion`, `unsupportedType`, `unsupportedMachine`,
/// `badHeaderSize`, `badSectionHeaderSize`, `sectionTableOutOfBounds`, `tooManySections`,
/// `sectionOutOfBounds`, `badStringTableIndex`, `badStringOffset`, `unterminatedString`,
/// `nameTooLong`, `badAlignment`; ``symbols()`` and ``relocationSections()`` add `badSymbolTable`, `badEntrySize`,
/// `badSymbolSectionIndex`, `badRelocationSection`, `badRelocationTarget`.
public struct ELFFile: @unchecked Sendable {
    // @unchecked: holds only an immutable borrowed buffer pointer plus value-type tables.
    public let bytes: UnsafeRawBufferPointer
    public let sections: [ELFSection]
    public let shstrndx: Int
    /// Per section: ``nameKey(_:)`` of its name (``section(named:)``: equal names have equal keys,
    /// so a lookup compares the bytes of the names whose key matches, about one, instead of every
    /// name of its length).
    let nameKeys: [UInt64]
    /// The first section of each name (``nameIndex(_:_:)``).
    let nameIndex: [Int32]
    /// Without the index (``nameIndex(_:_:)`` empty: names made to share a key): each name's bytes
    /// → its first section, ``repeatedName`` set when a later section has it too; else empty.
    let nameTable: [[UInt8]: Int32]
    /// Every section name is ASCII (then a name is equal as Strings to an ASCII name exactly when
    /// their bytes are equal: a caller holding ASCII names may match them by bytes where it would
    /// otherwise hash Strings).
    public let allNamesASCII: Bool

    public init(bytes: UnsafeRawBufferPointer) throws {
        self.bytes = bytes
        let table = try ELFFile.header(bytes)
        let raws = try ELFFile.rawSectionHeaders(bytes, table)
        try ELFFile.checkNoOverlap(raws, table)
        let strRaw = raws[table.shstrndx]
        guard strRaw.type == SectionType.strtab else {
            throw ELFError(.badStringTableIndex, offset: 62, "e_shstrndx \(table.shstrndx) is not SHT_STRTAB (type \(strRaw.type))")
        }
        var secs: [ELFSection] = []
        secs.reserveCapacity(raws.count)
        var keys: [UInt64] = []
        keys.reserveCapacity(raws.count)
        var nameBytes = 0
        var ascii = true
        for (i, r) in raws.enumerated() {
            // Each name found within its bound (the scan for its NUL stops there), all of them
            // within theirs, before any is made a String (ELFLimits.maxSectionNameBytes).
            let header = table.offset + i * ELFLimits.sectionHeaderSize
            let range = try ELFFile.stringRange(in: bytes, table: strRaw.range, at: r.name, what: "name of section \(i)",
                                                headerOffset: header, longest: ELFLimits.maxSectionNameBytes)
            nameBytes += range.count
            guard nameBytes <= ELFLimits.maxSectionNamesBytes else {
                throw ELFError(.nameTooLong, offset: header, "section names take more than \(ELFLimits.maxSectionNamesBytes) bytes by section \(i) (a module's take a few KiB)")
            }
            // (A typed view: the contiguous fast path; the raw view takes the generic append path.)
            let nameBuffer = UnsafeRawBufferPointer(rebasing: bytes[range])
            let isASCII = nameBuffer.isASCII
            ascii = ascii && isASCII
            let name = nameBuffer.withMemoryRebound(to: UInt8.self) { String(decoding: $0, as: UTF8.self) }
            // The key of the String's bytes: the file's bytes when ASCII (decoding changes only
            // bytes that are not valid UTF-8), else those the decoding made.
            keys.append(isASCII ? ELFFile.nameKey(nameBuffer) : ELFFile.nameKey(name))
            let s = ELFSection(index: i, name: name, type: r.type, flags: SectionFlags(rawValue: r.flags),
                               size: r.size, addralign: r.align, entsize: r.entsize, link: r.link, info: r.info,
                               fileRange: r.range)
            secs.append(s)
        }
        self.sections = secs
        self.shstrndx = table.shstrndx
        self.nameKeys = keys
        self.nameIndex = ELFFile.nameIndex(secs, keys)
        self.nameTable = nameIndex.isEmpty ? ELFFile.nameTable(secs) : [:]
        self.allNamesASCII = ascii
    }

    /// ``nameIndex``'s flag on a slot: more sections than the slot's have its name.
    static let repeatedName: Int32 = 1 << 30
    /// The longest probe the index allows (see ``nameIndex(_:_:)``).
    static let maxNameProbe = 16

    /// The first section of each name, by its key: open addressing over a power of two of at
    /// least four times the sections (the shared corpus's 206 modules: at most 3 probes), each
    /// slot the first section's index (``repeatedName`` set when a later section has the name
    /// too), -1 empty; names compared as bytes. The key is no secret, so a file can make its
    /// names' keys collide: no insertion probes more than ``maxNameProbe`` slots, and a file
    /// whose names would need more gets no index (empty) but ``nameTable(_:)``, a table by the
    /// names' bytes under the dictionary's own seeded hash. So the work stays within a few probes
    /// a section and a look-up, or one hash of the name, whatever the names (a scan of every
    /// section per look-up, as before there was an index, made a claim of many names quadratic);
    /// and the answer is the scan's (the first section of the name, in section order) either way.
    static func nameIndex(_ secs: [ELFSection], _ keys: [UInt64]) -> [Int32] {
        var cap = 16
        while cap < 4 * secs.count { cap <<= 1 }
        let mask = cap - 1
        var slots = [Int32](repeating: -1, count: cap)
        for i in secs.indices {
            var s = slot(keys[i], cap), probes = 0
            while true {
                let j = slots[s]
                if j < 0 { slots[s] = Int32(i); break }
                let f = Int(j & ~repeatedName)
                if keys[f] == keys[i] && sameBytes(secs[f].name, secs[i].name) { slots[s] = j | repeatedName; break }
                probes += 1
                if probes == maxNameProbe { return [] }
                s = (s + 1) & mask
            }
        }
        return slots
    }

    /// ``nameTable``: each name's bytes → its first section (``repeatedName`` when repeated).
    static func nameTable(_ secs: [ELFSection]) -> [[UInt8]: Int32] {
        var t: [[UInt8]: Int32] = [:]
        t.reserveCapacity(secs.count)
        for s in secs {
            let b = Array(s.name.utf8)
            if let f = t[b] { t[b] = f | repeatedName } else { t[b] = Int32(s.index) }
        }
        return t
    }

    /// A key's first slot in a table of `cap` (a power of two) slots: the high bits of the key
    /// times 2^64/φ (a key's low bits are mostly its name's first bytes, alike in most names).
    @inline(__always) static func slot(_ key: UInt64, _ cap: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9e37_79b9_7f4a_7c15) >> UInt64(64 - cap.trailingZeroBitCount))
    }

    /// The first section named `name` (its key `q`) and whether later sections have the name too;
    /// nil when none has it.
    @inline(__always) func firstNamed(_ name: String, key q: UInt64) -> (index: Int, repeated: Bool)? {
        if nameIndex.isEmpty {
            guard let j = nameTable[Array(name.utf8)] else { return nil }
            return (Int(j & ~ELFFile.repeatedName), j & ELFFile.repeatedName != 0)
        }
        let mask = nameIndex.count - 1
        var s = ELFFile.slot(q, nameIndex.count)
        for _ in 0..<ELFFile.maxNameProbe {
            let j = nameIndex[s]
            if j < 0 { return nil }
            let f = Int(j & ~ELFFile.repeatedName)
            if hasName(f, name, key: q) { return (f, j & ELFFile.repeatedName != 0) }
            s = (s + 1) & mask
        }
        return nil  // (every name was placed within the probe bound)
    }

    /// A name's key for ``section(named:)``: its UTF-8 length, first and last 8 bytes (fewer when
    /// shorter), mixed. Equal names (equal bytes) have equal keys; a key match is confirmed on the
    /// bytes. No secret goes into it, so a file can choose names of one key: the index made of
    /// the keys (``nameIndex(_:_:)``) bounds its probes and falls back to a table by the names'
    /// bytes (``nameTable``), so a file's names cannot steer a look-up's answer (find_sec()'s: the
    /// first in section order), nor its cost past one hash of the name.
    static func nameKey(_ s: String) -> UInt64 {
        // (Read in place: a native string's bytes are contiguous; `withUTF8` needs a mutable copy.)
        if let k = s.utf8.withContiguousStorageIfAvailable({ nameKey(UnsafeRawBufferPointer($0)) }) { return k }
        return Array(s.utf8).withUnsafeBytes { nameKey($0) }
    }

    /// ``nameKey(_:)`` of a name's UTF-8 bytes.
    static func nameKey(_ b: UnsafeRawBufferPointer) -> UInt64 {
        let n = b.count
        var head: UInt64 = 0, tail: UInt64 = 0
        if n >= 8 {
            head = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            tail = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self))
        } else {
            for k in 0..<n { head |= UInt64(b[k]) << (8 * UInt64(k)) }
        }
        return head ^ (tail &* 0x9e37_79b9_7f4a_7c15) ^ (UInt64(n) &* 0xff51_afd7_ed55_8ccd)
    }

    /// Where the section header table is, from a validated Elf64_Ehdr.
    struct SectionTable { var offset: Int; var count: Int; var end: Int; var shstrndx: Int }

    /// One section header as read, its contents range validated against the file.
    struct RawSectionHeader { var name: UInt32; var type: UInt32; var flags: UInt64; var offset: Int; var size: Int
        var link: UInt32; var info: UInt32; var align: UInt64; var entsize: UInt64; var range: Range<Int> }

    /// Pass 0: the ELF header. Only ELFCLASS64, little-endian, ET_REL, EM_X86_64 modules.
    static func header(_ bytes: UnsafeRawBufferPointer) throws -> SectionTable {
        let n = bytes.count
        guard n >= ELFLimits.headerSize else {
            throw ELFError(.truncated, offset: n, "file is \(n) bytes, an Elf64_Ehdr needs 64")
        }
        // e_ident: 7f 'E' 'L' 'F', EI_CLASS=2 (ELFCLASS64), EI_DATA=1 (ELFDATA2LSB), EI_VERSION=1.
        guard bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46 else {
            throw ELFError(.badMagic, offset: 0, "not an ELF file (magic \(hex(bytes[0])) \(hex(bytes[1])) \(hex(bytes[2])) \(hex(bytes[3])))")
        }
        guard bytes[4] == 2 else { throw ELFError(.unsupportedClass, offset: 4, "EI_CLASS \(bytes[4]), need 2 (ELFCLASS64)") }
        guard bytes[5] == 1 else { throw ELFError(.unsupportedEncoding, offset: 5, "EI_DATA \(bytes[5]), need 1 (ELFDATA2LSB)") }
        guard bytes[6] == 1 else { throw ELFError(.unsupportedVersion, offset: 6, "EI_VERSION \(bytes[6]), need 1 (EV_CURRENT)") }
        // Elf64_Ehdr: e_type u16 @16, e_machine u16 @18, e_version u32 @20, e_entry @24, e_phoff @32,
        // e_shoff u64 @40, e_flags u32 @48, e_ehsize u16 @52, e_phentsize @54, e_phnum @56,
        // e_shentsize u16 @58, e_shnum u16 @60, e_shstrndx u16 @62. (All inside the 64 bytes checked above.)
        let eType = bytes.loadInteger(at: 16, as: UInt16.self), eMachine = bytes.loadInteger(at: 18, as: UInt16.self)
        let eVersion = bytes.loadInteger(at: 20, as: UInt32.self), ehsize = bytes.loadInteger(at: 52, as: UInt16.self)
        guard eType == 1 else { throw ELFError(.unsupportedType, offset: 16, "e_type \(eType), need 1 (ET_REL)") }
        guard eMachine == 62 else { throw ELFError(.unsupportedMachine, offset: 18, "e_machine \(eMachine), need 62 (EM_X86_64)") }
        guard eVersion == 1 else { throw ELFError(.unsupportedVersion, offset: 20, "e_version \(eVersion), need 1") }
        guard ehsize == 64 else { throw ELFError(.badHeaderSize, offset: 52, "e_ehsize \(ehsize), need 64") }
        let shoff64 = bytes.loadInteger(at: 40, as: UInt64.self)
        let shentsize = Int(bytes.loadInteger(at: 58, as: UInt16.self))
        let shnum = Int(bytes.loadInteger(at: 60, as: UInt16.self)), shstrndx = Int(bytes.loadInteger(at: 62, as: UInt16.self))
        guard shentsize == ELFLimits.sectionHeaderSize else {
            throw ELFError(.badSectionHeaderSize, offset: 58, "e_shentsize \(shentsize), need 64")
        }
        // e_shnum == 0 with extended numbering (count in section 0's sh_size) never occurs in modules: refuse.
        guard shnum > 0, shnum < ELFLimits.maxSections else {
            throw ELFError(.tooManySections, offset: 60, "e_shnum \(shnum) (0 / extended numbering unsupported)")
        }
        guard let shoff = Int(exactly: shoff64) else {
            throw ELFError(.sectionTableOutOfBounds, offset: 40, "e_shoff \(shoff64) not representable")
        }
        let (tableLen, o1) = shnum.multipliedReportingOverflow(by: shentsize)
        let (tableEnd, o2) = shoff.addingReportingOverflow(tableLen)
        guard !o1, !o2, shoff >= ELFLimits.headerSize, tableEnd <= n else {
            throw ELFError(.sectionTableOutOfBounds, offset: 40, "section header table [\(shoff), +\(tableLen)) outside file of \(n) bytes")
        }
        guard shstrndx != 0, shstrndx < shnum else {
            throw ELFError(.badStringTableIndex, offset: 62, "e_shstrndx \(shstrndx) of \(shnum) sections")
        }
        return SectionTable(offset: shoff, count: shnum, end: tableEnd, shstrndx: shstrndx)
    }

    /// Pass 1: raw section headers, each contents range validated against the file.
    static func rawSectionHeaders(_ bytes: UnsafeRawBufferPointer, _ table: SectionTable) throws -> [RawSectionHeader] {
        let n = bytes.count
        var raws: [RawSectionHeader] = []
        raws.reserveCapacity(table.count)
        for i in 0..<table.count {
            let h = table.offset + i * ELFLimits.sectionHeaderSize  // cannot overflow: table.end was checked.
            let type = bytes.loadInteger(at: h + 4, as: UInt32.self)
            let off64 = bytes.loadInteger(at: h + 24, as: UInt64.self), size64 = bytes.loadInteger(at: h + 32, as: UInt64.self)
            let align = bytes.loadInteger(at: h + 48, as: UInt64.self)
            guard let off = Int(exactly: off64), let size = Int(exactly: size64), size >= 0, off >= 0 else {
                throw ELFError(.sectionOutOfBounds, offset: h + 24, "section \(i): offset/size \(off64)/\(size64) not representable")
            }
            // gABI: sh_addralign is 0 or a power of two.
            guard align == 0 || align & (align &- 1) == 0 else {
                throw ELFError(.badAlignment, offset: h + 48, "section \(i): sh_addralign \(align) is not a power of two")
            }
            var range = 0..<0
            if type != SectionType.nobits && type != SectionType.null {
                let (end, o) = off.addingReportingOverflow(size)
                guard !o, end <= n else {
                    throw ELFError(.sectionOutOfBounds, offset: h + 24, "section \(i): contents [\(off), +\(size)) outside file of \(n) bytes")
                }
                range = off..<end
            }
            raws.append(RawSectionHeader(
                name: bytes.loadInteger(at: h, as: UInt32.self), type: type, flags: bytes.loadInteger(at: h + 8, as: UInt64.self),
                offset: off, size: size, link: bytes.loadInteger(at: h + 40, as: UInt32.self),
                info: bytes.loadInteger(at: h + 44, as: UInt32.self), align: align,
                entsize: bytes.loadInteger(at: h + 56, as: UInt64.self), range: range))
        }
        return raws
    }

    /// Pass 2: no two sections' contents share a byte, and none overlaps the ELF header or the
    /// section header table (a section aliasing another would let one signed byte stand for two
    /// different things).
    static func checkNoOverlap(_ raws: [RawSectionHeader], _ table: SectionTable) throws {
        var spans: [(Range<Int>, Int)] = []
        spans.reserveCapacity(raws.count + 2)
        for (i, r) in raws.enumerated() where !r.range.isEmpty { spans.append((r.range, i)) }
        // The order is the stable sort by start of (sections in index order, the ELF header, the
        // table), which names the pair an overlap reports. Usually the contents are in section
        // order, after the header and before the table: that order is built as is, no sort.
        var inOrder = spans.first.map { $0.0.lowerBound > 0 } ?? true
        if inOrder { for k in spans.indices.dropFirst() where spans[k].0.lowerBound < spans[k - 1].0.lowerBound { inOrder = false; break } }
        if inOrder, let last = spans.last, last.0.lowerBound > table.offset { inOrder = false }
        if inOrder {
            spans.insert((0..<ELFLimits.headerSize, -1), at: 0)
            spans.append((table.offset..<table.end, -2))
        } else {
            // (A module's relocation sections follow all its other contents: the usual case.)
            // The stable sort by start as a sort of words: each span's start above 17 bits of
            // its place in the list (a tie keeps list order, as the stable sort does), no
            // closure per compare. A start lies inside the file (every span was checked against
            // its size: below 2^46, a file of 64 TiB) and a place below 2^17 (at most
            // ELFLimits.maxSections + 2 spans).
            spans.append((0..<ELFLimits.headerSize, -1))
            spans.append((table.offset..<table.end, -2))
            precondition(spans.count < 1 << 17, "spans beyond the packed sort key")
            var keys = [UInt64](unsafeUninitializedCapacity: spans.count) { k, n in
                for (p, s) in spans.enumerated() {
                    precondition(s.0.lowerBound < 1 << 46, "span start beyond the packed sort key")
                    k.initializeElement(at: p, to: UInt64(s.0.lowerBound) << 17 | UInt64(p))
                }
                n = spans.count
            }
            keys.sort()
            spans = keys.map { spans[Int($0 & 0x1_ffff)] }
        }
        for k in spans.indices.dropFirst() where spans[k].0.lowerBound < spans[k - 1].0.upperBound {
            let a = spans[k - 1].1, b = spans[k].1
            func nm(_ i: Int) -> String { i == -1 ? "the ELF header" : i == -2 ? "the section header table" : "section \(i)" }
            throw ELFError(.overlappingSections, offset: spans[k].0.lowerBound, "\(nm(b)) overlaps \(nm(a))")
        }
    }

    // MARK: Lookup

    /// The first section with this exact name (the kernel's `find_sec()` order).
    public func section(named name: String) -> ELFSection? {
        // The name index made at parse (or, without one, a scan of the names' keys, as find_sec()
        // scans): the first section of the name in section order. Names are equal when their
        // bytes are, as find_sec()'s strcmp() compares them (String equality is canonical
        // equivalence: ".\u{212A}" would equal ".K"); a name whose key differs is not compared.
        firstNamed(name, key: ELFFile.nameKey(name)).map { sections[$0.index] }
    }

    /// Every section with this exact name, in section order (the names compared as
    /// ``section(named:)`` compares them). `module_finalize()` keeps the *last* of a name.
    public func sections(named name: String) -> [ELFSection] {
        let q = ELFFile.nameKey(name)
        guard let (first, repeated) = firstNamed(name, key: q) else { return [] }
        if !repeated { return [sections[first]] }
        return Array(sections.indices[first...].lazy.filter { hasName($0, name, key: q) }.map { sections[$0] })
    }

    /// The index of the first section with this exact name (names compared as ``section(named:)``
    /// compares them) and whether a later section has the name too; nil when none has it.
    public func firstSectionIndex(named name: String) -> (index: Int, repeated: Bool)? {
        firstNamed(name, key: ELFFile.nameKey(name))
    }

    /// The last section with this exact name and how many have it (names compared as
    /// ``section(named:)`` compares them), without collecting them: `module_finalize()` keeps
    /// the last of a name.
    public func lastSection(named name: String) -> (section: ELFSection, count: Int)? {
        let q = ELFFile.nameKey(name)
        guard let (first, repeated) = firstNamed(name, key: q) else { return nil }
        if !repeated { return (sections[first], 1) }
        var last = -1, count = 0
        for i in sections.indices[first...] where hasName(i, name, key: q) { last = i; count += 1 }
        return (sections[last], count)
    }

    /// Section `i`'s name is `name`'s bytes (`q`: `name`'s ``nameKey(_:)``).
    @inline(__always) private func hasName(_ i: Int, _ name: String, key q: UInt64) -> Bool {
        nameKeys[i] == q && ELFFile.sameBytes(sections[i].name, name)
    }

    /// True when the UTF-8 bytes of `a` and `b` are the same (`strcmp() == 0`), compared in
    /// place (a section name is a native string: contiguous storage), eight bytes at a time.
    @inline(__always) static func sameBytes(_ a: String, _ b: String) -> Bool {
        let r = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in
                x.count == y.count && UnsafeRawBufferPointer(x).hasPrefix(UnsafeRawBufferPointer(y))
            }
        }
        if let r, let r { return r }
        return a.utf8.elementsEqual(b.utf8)
    }

    /// The first symbol with this exact name (linear scan; use ``symbols()`` once for many lookups).
    public func symbol(named name: String) throws -> ELFSymbol? {
        try symbols().first { $0.name == name }
    }

    /// Contents of a section (empty for SHT_NOBITS). A slice of the borrowed buffer.
    public func contents(of section: ELFSection) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[section.fileRange])
    }

    /// The symbol table (`SHT_SYMTAB`, exactly one in a module — the kernel refuses others).
    public func symbolTableSection() throws -> ELFSection {
        // Counted in place (asked a few times a module: no array of the matches).
        var first = -1, count = 0
        for i in sections.indices where sections[i].type == SectionType.symtab {
            if first < 0 { first = i }
            count += 1
        }
        guard count == 1 else {
            throw ELFError(.badSymbolTable, offset: 0, "\(count) SHT_SYMTAB sections, need exactly 1")
        }
        return sections[first]
    }

    /// Every symbol of the symbol table, index 0 included. Names from the linked string table.
    /// (One `String` per symbol: for many symbols whose names are rarely needed, use
    /// ``symbolTable()``, which validates the same way and makes names on demand.)
    public func symbols() throws -> [ELFSymbol] {
        let t = try symbolTable()
        var out: [ELFSymbol] = []
        out.reserveCapacity(t.count)
        for i in 0..<t.count { out.append(t[i]) }
        return out
    }

    /// The symbol table as a validated view over the borrowed bytes: every entry's section index
    /// and name (in the linked string table, NUL-terminated) checked once, in index order, with
    /// the errors ``symbols()`` gives; no name is copied until asked for.
    public func symbolTable() throws -> ELFSymbolTable {
        let t = try symbolTableSection()
        guard t.entsize == UInt64(ELFLimits.symbolSize), t.size % ELFLimits.symbolSize == 0 else {
            throw ELFError(.badEntrySize, offset: t.fileRange.lowerBound, "\(t.name): sh_entsize \(t.entsize) / size \(t.size) not a multiple of 24")
        }
        let link = Int(t.link)
        guard link > 0, link < sections.count, sections[link].type == SectionType.strtab else {
            throw ELFError(.badSymbolTable, offset: t.fileRange.lowerBound, "\(t.name): sh_link \(t.link) is not a string table")
        }
        let strRange = sections[link].fileRange
        let count = t.size / ELFLimits.symbolSize
        // A string table whose last byte is NUL (every linker writes one so; 6.12's
        // elf_validity_cache_strtab() requires it) terminates every name inside it: each entry
        // needs only its offset checked, and a name's end is found when the name is read (most
        // symbols' names never are). Otherwise every name's NUL is looked for here, so that a
        // table the kernel would read past is refused with the same error, naming the symbol.
        let terminated = !strRange.isEmpty && bytes[strRange.upperBound - 1] == 0
        // Unterminated: a name is terminated when a NUL follows its start, i.e. when it starts at
        // or before the table's last NUL (found from the end, once).
        var lastNUL = -1
        if !terminated {
            var p = strRange.upperBound - 1
            while p >= strRange.lowerBound && bytes[p] != 0 { p -= 1 }
            lastNUL = p >= strRange.lowerBound ? p - strRange.lowerBound : -1
        }
        for i in 0..<count {
            let o = t.fileRange.lowerBound + i * ELFLimits.symbolSize
            let shndx = bytes.loadInteger(at: o + 6, as: UInt16.self)
            if shndx != SectionIndex.undef && shndx < SectionIndex.loReserve && Int(shndx) >= sections.count {
                throw ELFError(.badSymbolSectionIndex, offset: o + 6, "symbol \(i): st_shndx \(shndx) of \(sections.count) sections")
            }
            let name = bytes.loadInteger(at: o, as: UInt32.self)
            guard Int(name) < strRange.count else {
                throw ELFError(.badStringOffset, offset: o, "name of symbol \(i): offset \(name) outside string table of \(strRange.count) bytes")
            }
            if !terminated && Int(name) > lastNUL {
                throw ELFError(.unterminatedString, offset: strRange.lowerBound + Int(name), "name of symbol \(i): no NUL before end of string table")
            }
        }
        precondition(t.fileRange.count == count * ELFLimits.symbolSize)
        // No long name (ELFLimits.maxSymbolNameRun): every aligned block holds a NUL, so no run
        // without one reaches twice the block.
        var block = strRange.lowerBound
        while block + ELFLimits.maxSymbolNameRun <= strRange.upperBound {
            guard ELFFile.memchrNUL(bytes, from: block, to: block + ELFLimits.maxSymbolNameRun) != nil else {
                throw ELFError(.nameTooLong, offset: block, "\(sections[link].name): \(ELFLimits.maxSymbolNameRun) bytes without a NUL at offset \(block - strRange.lowerBound): no symbol name is that long (KSYM_NAME_LEN is 512)")
            }
            block += ELFLimits.maxSymbolNameRun
        }
        let entries = UnsafeRawBufferPointer(rebasing: bytes[t.fileRange])
        let strings = UnsafeRawBufferPointer(rebasing: bytes[strRange])
        guard !terminated else { return ELFSymbolTable(entries: entries, strings: strings, count: count, nameEnds: nil) }
        // Each name's NUL, in one sweep over the table in the names' order: looked for from each
        // name's start, many names over one long NUL-free run cost that run once per name (8,000
        // names × 2 MB: 3.8 s; 40,000 × 10 MB did not finish in a minute).
        var order = (0..<count).map { (Int(UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: $0 * ELFLimits.symbolSize, as: UInt32.self))), $0) }
        order.sort { $0.0 < $1.0 }
        var nameEnds = [Int32](repeating: 0, count: count)
        var nul = -1  // the NUL found last (at or after every start so far, when ≥ the start)
        for (start, i) in order {
            if nul < start { nul = ELFFile.memchrNUL(strings, from: start, to: strings.count) ?? lastNUL }  // found: start ≤ lastNUL
            nameEnds[i] = Int32(nul)  // < table size ≤ file size < 2^31
        }
        return ELFSymbolTable(entries: entries, strings: strings, count: count, nameEnds: nameEnds)
    }

    /// Every `SHT_RELA` section, validated (records decoded in place: ``ELFRelocations``). `SHT_REL` is refused (x86-64 modules use RELA only; the
    /// kernel's `apply_relocate()` for REL on x86-64 fails with -ENOEXEC). With `checkingRecords:
    /// false` only the sections are checked here and the records are left to the caller, who
    /// reads each one anyway (``ELFRelocations/isValid(_:)``; the errors: ``checkRelocationRecords()``,
    /// which throws what this call would have thrown with `checkingRecords: true`).
    public func relocationSections(checkingRecords: Bool = true) throws -> [ELFRelocationSection] {
        let symtab = try symbolTableSection()
        let symCount = symtab.size / ELFLimits.symbolSize
        var out: [ELFRelocationSection] = []
        // (Sized once: grown by appends it was reallocated, its sections copied, a few times a module.)
        var n = 0
        for s in sections where s.type == SectionType.rela || s.type == SectionType.rel { n += 1 }
        out.reserveCapacity(n)
        for s in sections where s.type == SectionType.rela || s.type == SectionType.rel {
            let at = s.fileRange.lowerBound
            guard s.type == SectionType.rela else {
                throw ELFError(.badRelocationSection, offset: at, "\(s.name): SHT_REL is not used on x86-64")
            }
            guard s.entsize == UInt64(ELFLimits.relaSize), s.size % ELFLimits.relaSize == 0 else {
                throw ELFError(.badEntrySize, offset: at, "\(s.name): sh_entsize \(s.entsize) / size \(s.size) not a multiple of 24")
            }
            guard Int(s.link) == symtab.index else {
                throw ELFError(.badRelocationSection, offset: at, "\(s.name): sh_link \(s.link) is not the symbol table \(symtab.index)")
            }
            let target = Int(s.info)
            guard target > 0, target < sections.count else {
                throw ELFError(.badRelocationTarget, offset: at, "\(s.name): sh_info \(s.info) of \(sections.count) sections")
            }
            let tsec = sections[target]
            let rels = ELFRelocations(entries: UnsafeRawBufferPointer(rebasing: bytes[s.fileRange]), symbolCount: symCount, targetSize: tsec.size)
            if checkingRecords {
                for i in rels.indices where !rels.isValid(i) {
                    let o = at + i * ELFLimits.relaSize
                    let off = bytes.loadInteger(at: o, as: UInt64.self), info = bytes.loadInteger(at: o + 8, as: UInt64.self)
                    let symIdx = Int(info >> 32)
                    let type = RelocationType(rawValue: UInt32(truncatingIfNeeded: info))
                    guard symIdx < symCount else {
                        throw ELFError(.badSymbolTable, offset: o + 8, "\(s.name)[\(i)]: symbol index \(symIdx) of \(symCount)")
                    }
                    // The field must lie inside the target section (the kernel checks
                    // `rel[i].r_offset + size <= sh_size` only implicitly; we refuse outright).
                    let width = UInt64(type.fieldSize ?? 0)
                    throw ELFError(.badRelocationTarget, offset: o, "\(s.name)[\(i)]: field [\(off), +\(width)) outside \(tsec.name) of \(tsec.size) bytes")
                }
            }
            out.append(ELFRelocationSection(section: s, targetSectionIndex: target, relocations: rels))
        }
        return out
    }

    /// Throws the error ``relocationSections(checkingRecords:)`` throws with `checkingRecords:
    /// true` (the first bad section or record, in file order), if any.
    public func checkRelocationRecords() throws { _ = try relocationSections(checkingRecords: true) }

    // MARK: Internals

    /// The byte range (without its NUL) of the string at `offset` of a string table; with
    /// `longest`, the search for its NUL stops after that many bytes (`nameTooLong` beyond).
    static func stringRange(in bytes: UnsafeRawBufferPointer, table: Range<Int>, at offset: UInt32,
                            what: @autoclosure () -> String, headerOffset: Int, longest: Int? = nil) throws -> Range<Int> {
        let start = table.lowerBound + Int(offset)  // offset ≤ 2^32, lowerBound ≤ file size: no overflow.
        guard Int(offset) < table.count else {
            throw ELFError(.badStringOffset, offset: headerOffset, "\(what()): offset \(offset) outside string table of \(table.count) bytes")
        }
        let limit = longest.map { Swift.min(table.upperBound, start + $0 + 1) } ?? table.upperBound
        let end: Int
        if let p = memchrNUL(bytes, from: start, to: limit) { end = p } else if limit < table.upperBound, let n = longest {
            throw ELFError(.nameTooLong, offset: start, "\(what()): longer than \(n) bytes")
        } else {
            throw ELFError(.unterminatedString, offset: start, "\(what()): no NUL before end of string table")
        }
        return start..<end
    }

    /// The first NUL in `bytes[from..<to]` (nil if none), eight bytes at a time: for NUL-separated
    /// tables read outside the parser (`.modinfo`).
    @inlinable public static func firstNUL(in bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        precondition(from >= 0 && from <= to && to <= bytes.count)
        return memchrNUL(bytes, from: from, to: to)
    }

    /// The first NUL in `bytes[from..<to]`.
    @usableFromInline @inline(__always) static func memchrNUL(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        #if canImport(Glibc)
        // libc's memchr (vector loads; a symbol table asks this once per symbol name, names of
        // ~10-40 bytes, where the word loop below mispredicts its exit on most names). It reads
        // only [from, to) as far as the result is concerned: its wide loads stay within pages
        // that hold part of the range.
        precondition(from >= 0 && from <= to && to <= bytes.count)
        guard from < to, let base = bytes.baseAddress else { return nil }
        guard let p = memchr(base + from, 0, to - from) else { return nil }
        let at = base.distance(to: UnsafeRawPointer(p))
        precondition(at >= from && at < to)
        return at
        #else
        var e = from
        // Eight bytes at a time (exact test: m = (w - 0x01…) & ~w & 0x80… is nonzero iff some byte
        // of w is zero, and its lowest set bit is in the lowest zero byte: a borrow only runs
        // upward from a zero byte, so no bit below the first zero byte is set), then the tail
        // byte by byte.
        precondition(from >= 0 && to <= bytes.count)
        while e + 8 <= to {
            let w = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: e, as: UInt64.self))
            let m = (w &- 0x0101_0101_0101_0101) & ~w & 0x8080_8080_8080_8080
            if m != 0 { return e + m.trailingZeroBitCount / 8 }
            e += 8
        }
        while e < to && bytes[e] != 0 { e += 1 }
        return e < to ? e : nil
        #endif
    }
}

/// The validated symbol table (``ELFFile/symbolTable()``): fixed-size entries read in place from
/// the borrowed buffer; names as borrowed bytes, or as a `String` only when asked.
///
/// - Warning: borrows the ELF's buffer like ``ELFFile``.
public struct ELFSymbolTable: @unchecked Sendable {
    // @unchecked: immutable borrowed buffers plus a value-type array.
    @usableFromInline let entries: UnsafeRawBufferPointer
    @usableFromInline let strings: UnsafeRawBufferPointer
    /// Offset of each name's NUL in `strings` (the name starts at `st_name`), when `strings` does
    /// not end in NUL; nil when it does (a name's NUL is then found when the name is read: it is
    /// inside `strings`).
    @usableFromInline let nameEnds: [Int32]?
    public let count: Int

    init(entries: UnsafeRawBufferPointer, strings: UnsafeRawBufferPointer, count: Int, nameEnds: [Int32]?) {
        precondition(entries.count == count * 24 && (nameEnds == nil ? strings.last == 0 : nameEnds!.count == count))
        self.entries = entries; self.strings = strings; self.count = count; self.nameEnds = nameEnds
    }

    public var indices: Range<Int> { 0..<count }

    // Every accessor takes an index in `indices` (trap otherwise), and every entry of the table
    // lies inside `entries` by construction; every `st_name` is inside `strings` (checked there).
    @inlinable func at(_ i: Int) -> Int { precondition(i >= 0 && i < count, "symbol index"); return i &* 24 }
    // (Entries are 24 bytes, little-endian, validated at construction; the host is x86-64.)
    @inlinable public func sectionIndex(_ i: Int) -> UInt16 { UInt16(littleEndian: entries.loadUnaligned(fromByteOffset: at(i) &+ 6, as: UInt16.self)) }
    @inlinable public func info(_ i: Int) -> UInt8 { entries.load(fromByteOffset: at(i) &+ 4, as: UInt8.self) }
    @inlinable public func value(_ i: Int) -> UInt64 { UInt64(littleEndian: entries.loadUnaligned(fromByteOffset: at(i) &+ 8, as: UInt64.self)) }
    @inlinable public func size(_ i: Int) -> UInt64 { UInt64(littleEndian: entries.loadUnaligned(fromByteOffset: at(i) &+ 16, as: UInt64.self)) }
    @inlinable public func isUndefined(_ i: Int) -> Bool { sectionIndex(i) == 0 }
    /// `st_name`: the name's offset in the string table (0: no name).
    @inlinable public func nameOffset(_ i: Int) -> UInt32 { UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at(i), as: UInt32.self)) }
    /// `ELF64_ST_BIND`: 0 LOCAL, 1 GLOBAL, 2 WEAK.
    @inlinable public func binding(_ i: Int) -> UInt8 { info(i) >> 4 }
    @inlinable public func isFunction(_ i: Int) -> Bool { info(i) & 0xf == 2 }
    /// STT_SECTION: the symbol stands for its section (nameless; most local relocations name one).
    @inlinable public func isSection(_ i: Int) -> Bool { info(i) & 0xf == 3 }
    /// The name's bytes (no NUL), borrowed.
    @inlinable public func nameBytes(_ i: Int) -> UnsafeRawBufferPointer {
        let start = Int(UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at(i), as: UInt32.self)))
        let end: Int
        if let ends = nameEnds { end = Int(ends[i]) } else {
            // A NUL at or after `start` exists: the table's last byte (checked at construction).
            end = ELFFile.memchrNUL(strings, from: start, to: strings.count) ?? strings.count - 1
        }
        return UnsafeRawBufferPointer(rebasing: strings[start..<end])
    }
    /// True when the name starts with the ASCII `prefix`, read without looking for the name's
    /// end (the prefix's bytes are not NUL: a match lies inside the name).
    @inlinable public func nameHasPrefix(_ i: Int, _ prefix: StaticString) -> Bool {
        let start = Int(UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at(i), as: UInt32.self)))
        return UnsafeRawBufferPointer(rebasing: strings[start...]).hasASCIIPrefix(prefix)
    }
    /// The name's first 8 bytes as a little-endian word (byte k in bits 8k...8k+7), bytes past the
    /// string table's end zero: one load, no search for the name's end. A prefix of non-NUL bytes
    /// lies inside the name exactly when its bytes match here (`nameHasPrefix` in one compare).
    @inlinable public func namePrefixWord(_ i: Int) -> UInt64 {
        let start = Int(UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at(i), as: UInt32.self)))
        if start <= strings.count - 8 { return UInt64(littleEndian: strings.loadUnaligned(fromByteOffset: start, as: UInt64.self)) }
        var w: UInt64 = 0
        var k = 0
        while k < 8 && start + k < strings.count { w |= UInt64(strings[start + k]) << (8 * UInt64(k)); k += 1 }
        return w
    }
    /// The name as a `String` (allocates for names over 15 bytes).
    public func name(_ i: Int) -> String {
        nameBytes(i).withMemoryRebound(to: UInt8.self) { String(decoding: $0, as: UTF8.self) }
    }
    /// True if the name is exactly `s` (byte comparison).
    public func nameEquals(_ i: Int, _ s: String) -> Bool {
        let b = nameBytes(i)
        var s = s
        return s.withUTF8 { u in
            guard u.count == b.count else { return false }
            for k in 0..<u.count where u[k] != b[k] { return false }
            return true
        }
    }
    /// The whole entry, name included.
    public subscript(i: Int) -> ELFSymbol {
        let o = at(i)
        return ELFSymbol(index: i, name: name(i), info: entries[o + 4], other: entries[o + 5], sectionIndex: sectionIndex(i),
                         value: value(i), size: size(i))
    }
}

// MARK: - Diagnostics

@inline(__always) func hex(_ b: UInt8) -> String { Hex.number(b, width: 2) }
