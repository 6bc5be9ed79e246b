// SPDX-License-Identifier: Apache-2.0
import ExecGateELF

/// Reads `.modinfo` (NUL-separated `key=value` strings, include/linux/moduleparam.h MODULE_INFO).
enum ModuleInfo {
    /// The `name=` entry, if the section exists and has one.
    static func name(in elf: ELFFile) -> String? { value("name", in: elf) }

    /// The first `key=` entry (`name`, `vermagic`, …), if the section exists and has one.
    static func value(_ key: String, in elf: ELFFile) -> String? {
        guard let s = elf.sections.first(where: { $0.name == ".modinfo" }), !s.isNoBits else { return nil }
        let raw = UnsafeRawBufferPointer(rebasing: elf.bytes[s.fileRange])
        let prefix = key + "="
        for entry in raw.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            if text.hasPrefix(prefix) { return String(text.dropFirst(prefix.count)) }
        }
        return nil
    }
}
