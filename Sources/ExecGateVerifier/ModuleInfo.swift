// SPDX-License-Identifier: Apache-2.0
import ExecGateELF
import _ExecGateInternals

/// Reads `.modinfo` (NUL-separated `key=value` strings, include/linux/moduleparam.h MODULE_INFO).
enum ModuleInfo {
    /// The first `key=` entry (`name`, `vermagic`, …), if the section exists and has one.
    static func value(_ key: String, in elf: ELFFile) -> String? {
        rawValue(key, in: elf).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The bytes of the first `key=` entry, as the kernel's get_modinfo() finds it (entries are
    /// NUL-separated, empty ones skipped: next_string()).
    static func rawValue(_ key: String, in elf: ELFFile) -> [UInt8]? {
        guard let s = elf.section(named: ".modinfo"), !s.isNoBits else { return nil }
        let raw = UnsafeRawBufferPointer(rebasing: elf.bytes[s.fileRange])
        let prefix = Array((key + "=").utf8)
        for entry in raw.split(separator: 0) where entry.starts(with: prefix) {
            return Array(entry.dropFirst(prefix.count))
        }
        return nil
    }
}

/// The one name of a module: the name the kernel knows it by once loaded, which is also the
/// name its module blacklist reads. The kernel has two (kernel/module/main.c, 6.1 and 6.12):
/// `.modinfo` `name=` is `info->name` (6.1 setup_load_info(), 6.12 elf_validity_cache_index_info():
/// "Try to find a name early"), which blacklisted() checks; `struct module`'s `name`, in
/// `.gnu.linkonce.this_module`, is `mod->name`, the module's identity from then on:
/// add_unformed_module() (no second module of a name), find_module_all() (an exact memcmp: '-'
/// and '_' differ), /proc/modules, dependencies, unload. Without `name=` the kernel falls back to
/// `mod->name` (6.1 setup_load_info(), 6.12 elf_validity_cache_copy()). A deny rule,
/// a verdict, the audit log and the guest's live set must name what the kernel will, so:
///   - at most one `.modinfo` and exactly one `.gnu.linkonce.this_module` (6.12 elf_validity_cache_index_mod(); 6.1's
///     setup_load_info() takes the first of several: refused here), holding the name field,
///     NUL-terminated inside it;
///   - `name=`, when present, byte-equal to `struct module`'s (else one module has two names and
///     a rule on either could be dodged with the other);
///   - no relocation writes the name field: relocations are applied (apply_relocations()) after
///     add_unformed_module() checked the name, and x86's apply_relocate_add() refuses only a
///     non-zero target, which the name's zero padding is not;
///   - printable ASCII without space (0x21–0x7e): the kernel does not restrict the bytes, but
///     every name Kbuild makes (KBUILD_MODNAME) is, and the name is shown in verdicts and audit
///     records and compared as text (a control byte or invalid UTF-8 would not survive).
enum ModuleName {
    /// `struct module`'s `name` on x86-64 (include/linux/module.h: after `enum module_state
    /// state` and `struct list_head list`; MODULE_NAME_LEN = MAX_PARAM_PREFIX_LEN = 64 −
    /// sizeof(unsigned long)).
    static let fieldOffset = 24
    static let fieldLength = 56
    static let section = ".gnu.linkonce.this_module"

    enum Failure: Error {
        case malformed(String)
        case mismatch(modinfo: String, structModule: String)
    }

    static func identity(in elf: ELFFile) -> Result<String, Failure> {
        // At most one `.modinfo` (6.12 elf_validity_cache_index_info(): "Only one .modinfo section
        // must exist"): 6.1 reads the first with SHF_ALLOC (find_sec()), ModuleInfo the first by
        // name, so two would let the kernel and ExecGate read different `name=` and `vermagic=`.
        let infos = elf.sections(named: ".modinfo").count
        guard infos <= 1 else {
            return .failure(.malformed("\(infos) .modinfo sections: only one may exist (elf_validity_cache_index_info())"))
        }
        let found = elf.sections(named: section)
        guard found.count == 1, let mod = found.first else {
            return .failure(.malformed("exactly one \(section) section must exist, found \(found.count) (elf_validity_cache_index_mod())"))
        }
        let field = fieldOffset..<(fieldOffset + fieldLength)
        guard !mod.isNoBits, mod.fileRange.count >= field.upperBound else {
            return .failure(.malformed("\(section) (\(mod.fileRange.count) bytes) does not hold struct module's name (bytes \(field.lowerBound)..<\(field.upperBound))"))
        }
        let raw = Array(elf.bytes[(mod.fileRange.lowerBound + field.lowerBound)..<(mod.fileRange.lowerBound + field.upperBound)])
        guard let nul = raw.firstIndex(of: 0) else {
            return .failure(.malformed("struct module's name in \(section) is not NUL-terminated within its \(fieldLength) bytes"))
        }
        let name = Array(raw[..<nul])
        if let why = invalid(name) { return .failure(.malformed("struct module's name \(why)")) }
        let structName = String(decoding: name, as: UTF8.self)
        if let info = ModuleInfo.rawValue("name", in: elf) {
            if let why = invalid(info) { return .failure(.malformed(".modinfo name= \(why)")) }
            guard info == name else {
                return .failure(.mismatch(modinfo: String(decoding: info, as: UTF8.self), structModule: structName))
            }
        }
        let relocations: [ELFRelocationSection]
        do {
            relocations = try elf.relocationSections(checkingRecords: false)
        } catch {
            return .failure(.malformed("relocation sections: \(error)"))
        }
        for r in relocations where r.targetSectionIndex == mod.index {
            for i in r.relocations.indices {
                let off = r.relocations.offset(i)
                let width = UInt64(RelocationType(rawValue: UInt32(truncatingIfNeeded: r.relocations.info(i))).fieldSize ?? 8)
                if off < UInt64(field.upperBound) && off &+ width > UInt64(field.lowerBound) {
                    return .failure(.malformed("relocation \(i) of \(r.section.name) writes bytes \(off)..<\(off &+ width) of struct module, inside its name (bytes \(field.lowerBound)..<\(field.upperBound)): the name would change after the kernel checked it (apply_relocations() runs after add_unformed_module())"))
                }
            }
        }
        return .success(structName)
    }

    /// Why `name` is not a module name ExecGate accepts, or nil (also what a retire-module or
    /// module-init-freed name is checked against: Verifier.unnamable).
    static func invalid(_ name: some Collection<UInt8>) -> String? {
        if name.isEmpty { return "is empty" }
        if let bad = name.first(where: { $0 < 0x21 || $0 > 0x7e }) {
            return "has byte 0x\(Hex.number(UInt64(bad), width: 2)): module names are printable ASCII without space"
        }
        return nil
    }
}
