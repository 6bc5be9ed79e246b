// SPDX-License-Identifier: Apache-2.0
//
// The loader's refusals that do not write text: `check_modinfo()` (vermagic) before relocation and
// `verify_exported_symbols()` after it (kernel/module/main.c, 6.1). A module the kernel would
// refuse must not be explained: its claim describes a load that cannot have happened.

import ExecGateELF

extension Session {
    /// `check_modinfo()`: `vermagic=` must be present (without it the kernel only loads with
    /// `--force`, which taints) and match the running kernel (`same_magic()`). With MODVERSIONS
    /// the kernel compares the string after the release and leaves the release to the symbol
    /// CRCs; ExecGate compares the release itself against the registered one (`kernelRelease`),
    /// which is stricter: a module built for another release is refused even if its CRCs match.
    func checkModinfo() throws {
        guard let release = facts.kernelRelease else { return }
        guard let vermagic else {  // (read at set-up: `Session.vermagic`)
            throw deny(.vermagic, "the module has no vermagic= in .modinfo (the kernel refuses it unless forced)", section: ".modinfo")
        }
        let moduleRelease = ModuleLoader.firstWord(vermagic, skippingLeadingSpaces: true)
        guard moduleRelease == release else {
            throw deny(.vermagic, "vermagic \"\(vermagic)\" is for release \(moduleRelease), the guest runs \(release)", section: ".modinfo")
        }
    }

    /// The value of the first `key=value` entry of `.modinfo` (NUL-separated strings).
    func modinfo(_ key: String) -> String? { ModuleLoader.modinfo(elf, key) }

    /// `verify_exported_symbols()`: a name the module exports must not be exported already by the
    /// core kernel or a live module ("exports duplicate symbol ... (owned by ...)", -ENOEXEC);
    /// otherwise the later export would shadow the earlier one for every module after it. The
    /// names are those of the module's ksymtab *entries* (`kernel_symbol_name()`, read by
    /// `exportedNames()`, which also denies entries the kernel could not have used as it is
    /// modelled), looked up in entry order, `__ksymtab` then `__ksymtab_gpl`, as the kernel does:
    /// the first duplicate it meets is the one reported.
    func verifyExportedSymbols() throws {
        let exported = try exportedNames()
        guard !exported.isEmpty else { return }
        let exports = resolver.exports
        let first: Int? = exported.bytes.withUnsafeBytes { nb in
            // Every name's first lines read in one pass (the digests were made with the names),
            // looked up in a second: the misses (usually two a name, the tags of both tables)
            // overlap instead of coming one after another. The names are ASCII (`exportedNames`
            // denies any other), which the byte-keyed tables answer alone (SlidExports).
            var sink: UInt64 = 0
            for d in exported.digests { sink ^= exports.touch(d, likelyPresent: false) }
            exportTouchSink ^= sink
            return exported.ranges.indices.first {
                exports.lookup(ascii: UnsafeRawBufferPointer(rebasing: nb[exported.ranges[$0]]), digest: exported.digests[$0], likelyPresent: false) != nil
            }
        }
        if let k = first {
            let name = String(decoding: exported.bytes[exported.ranges[k]], as: UTF8.self)
            throw deny(.duplicateExport, "the module exports \(name), which the core kernel or a verified module already exports")
        }
    }
}
