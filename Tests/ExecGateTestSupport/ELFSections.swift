// SPDX-License-Identifier: Apache-2.0
import ExecGateELF

/// A test-side view of a module's sections (name, exec flag, file range) via the real parser.
public enum ExecGateELFFixture {
    public struct Section { public var name: String; public var exec: Bool; public var size: Int; public var range: Range<Int> }

    public static func sections(_ content: UnsafeRawBufferPointer) throws -> [Section] {
        let elf = try ELFFile(bytes: content)
        return elf.sections.filter { $0.isAlloc }.map { Section(name: $0.name, exec: $0.isExec, size: $0.size, range: $0.fileRange) }
    }
}
