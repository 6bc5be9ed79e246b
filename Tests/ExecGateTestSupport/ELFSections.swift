// SPDX-License-Identifier: Apache-2.0
import ExecGateELF

/// A test-side view of a module's sections (name, exec flag, file range) via the real parser.
public enum ExecGateELFFixture {
    public struct Section { public var name: String; public var exec: Bool; public var size: Int; public var range: Range<Int> }

    public static func sections(_ content: UnsafeRawBufferPointer) throws -> [Section] {
        let elf = try ELFFile(bytes: content)
        return elf.sections.filter { $0.isAlloc }.map { Section(name: $0.name, exec: $0.isExec, size: $0.size, range: $0.fileRange) }
    }

    /// An ELF with `names` as section names (section 0 null, section 1 `.shstrtab`, then one empty
    /// PROGBITS section per name), the section header table last.
    public static func elf(sectionNames names: [[UInt8]]) -> [UInt8] {
        var strtab: [UInt8] = [0]
        strtab += Array(".shstrtab".utf8) + [0]
        var offsets: [UInt32] = []
        for n in names { offsets.append(UInt32(strtab.count)); strtab += n + [0] }
        let strOff = 64, shoff = (strOff + strtab.count + 7) & ~7
        let shnum = 2 + names.count
        var b = [UInt8](repeating: 0, count: shoff + 64 * shnum)
        func put(_ o: Int, _ v: UInt64, _ w: Int) { for k in 0..<w { b[o + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) } }
        b[0] = 0x7f; b[1] = 0x45; b[2] = 0x4c; b[3] = 0x46; b[4] = 2; b[5] = 1; b[6] = 1
        put(16, 1, 2); put(18, 62, 2); put(20, 1, 4); put(40, UInt64(shoff), 8); put(52, 64, 2); put(58, 64, 2)
        put(60, UInt64(shnum), 2); put(62, 1, 2)
        for (k, x) in strtab.enumerated() { b[strOff + k] = x }
        // Section 1: .shstrtab
        let h1 = shoff + 64
        put(h1, 1, 4); put(h1 + 4, 3, 4); put(h1 + 24, UInt64(strOff), 8); put(h1 + 32, UInt64(strtab.count), 8); put(h1 + 48, 1, 8)
        for (i, o) in offsets.enumerated() {
            let h = shoff + 64 * (2 + i)
            put(h, UInt64(o), 4); put(h + 4, 1, 4); put(h + 24, UInt64(strOff), 8)  // size 0: no contents
        }
        return b
    }
}
