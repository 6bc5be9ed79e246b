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
        guard let vermagic = modinfo("vermagic") else {
            throw deny(.vermagic, "the module has no vermagic= in .modinfo (the kernel refuses it unless forced)", section: ".modinfo")
        }
        let moduleRelease = vermagic.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true).first.map(String.init) ?? ""
        guard moduleRelease == release else {
            throw deny(.vermagic, "vermagic \"\(vermagic)\" is for release \(moduleRelease), the guest runs \(release)", section: ".modinfo")
        }
    }

    /// The value of the first `key=value` entry of `.modinfo` (NUL-separated strings).
    func modinfo(_ key: String) -> String? { ModuleLoader.modinfo(elf, key) }

    /// `verify_exported_symbols()`: a name the module exports must not be exported already by the
    /// core kernel or a live module ("exports duplicate symbol ... (owned by ...)", -ENOEXEC);
    /// otherwise the later export would shadow the earlier one for every module after it.
    func verifyExportedSymbols() throws {
        let exported = exportedNames()
        // The common case (no duplicate) needs no order and no String: the resolver looks the
        // borrowed bytes up (`lookup(utf8:)` answers as `lookup(String)` does). The first
        // duplicate in name order is reported (Strings made only then).
        if exported.allASCII {
            let exports = resolver.exports
            if exports.answersASCIIByBytes {
                // Hashed and their first lines read in one pass, looked up in a second: the misses
                // (usually two a name, the tags of both tables) overlap instead of coming one
                // after another. The same answers as `lookup(utf8:)` (``SlidExports/answersASCIIByBytes``).
                var digests: [NameTable.Digest] = []
                digests.reserveCapacity(exported.symbols.count)
                var sink: UInt64 = 0
                for k in exported.symbols.indices {
                    let d = NameTable.digest(exported.nameBytes(k, symtab))
                    sink ^= exports.touch(d, likelyPresent: false)
                    digests.append(d)
                }
                exportTouchSink ^= sink
                guard exported.symbols.indices.contains(where: {
                    exports.lookup(ascii: exported.nameBytes($0, symtab), digest: digests[$0], likelyPresent: false) != nil
                }) else { return }
            } else {
                guard exported.symbols.indices.contains(where: { resolver.lookup(utf8: exported.nameBytes($0, symtab)) != nil }) else { return }
            }
        }
        let names = exported.stringSet(symtab)
        guard names.contains(where: { resolver.lookup($0) != nil }) else { return }
        for name in names.sorted() where resolver.lookup(name) != nil {
            throw deny(.duplicateExport, "the module exports \(name), which the core kernel or a verified module already exports")
        }
    }
}
