// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the module name a verdict, a deny rule and the guest's live set key on.
// The kernel has two names for a module: `.modinfo` `name=` and `struct module`'s `name` in
// `.gnu.linkonce.this_module` (kernel/module/main.c, 6.1 and 6.12: setup_load_info() /
// elf_validity_cache_copy() take info->name from modinfo "name" and fall back to mod->name only
// when there is none; blacklisted(info->name) reads that; the module's identity after load —
// module_patient_check_exists() and add_unformed_module() at load, find_module_all() (an exact
// memcmp, no '-' ≡ '_'), /proc/modules, dependencies, unload — is mod->name). A crafted module
// stands for one a trusted key holder signed: a real signed Debian module edited in place and
// signed again by a test key the policy trusts next to Debian's. Each test names the attack and
// says why it fails; a test that documented a hole says where it was fixed.
// Inputs: the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateELF
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

private let nameSigner: ModuleSigner = {
    let (key, cert) = try! GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "ExecGate module-name test key").load()
    return try! ModuleSigner(key: key, certificate: cert)
}()

/// `struct module`'s `name` (include/linux/module.h: after `enum module_state state` and
/// `struct list_head list`; MODULE_NAME_LEN = 64 − sizeof(unsigned long)).
private let nameOffset = 24, nameLength = 56

final class AdversarialModuleNameTests: XCTestCase {
    /// The fixture guest with the test key trusted and `irqbypass` denied by name (or nothing).
    private func guest(denying denied: Set<String> = ["irqbypass"]) throws -> FixtureGuest {
        let certs = try Fixtures.debianCertificates() + [nameSigner.certificate]
        return try FixtureGuest {
            $0.trust = TrustStore(certs)
            $0.deniedModuleNames = denied
        }
    }

    private struct Crafted {
        var ko: [UInt8]
        func section(_ name: String) throws -> ELFSection {
            try XCTUnwrap(try ko.withUnsafeBytes { try ELFFile(bytes: $0).section(named: name) }, name)
        }
        /// Offset in the file of the `.modinfo` entry starting with `prefix`.
        func modinfoEntry(_ prefix: String) throws -> Int {
            let s = try section(".modinfo")
            let p = Array(prefix.utf8)
            return try XCTUnwrap(s.fileRange.first { o in (o == s.fileRange.lowerBound || ko[o - 1] == 0) && Array(ko[o..<min(o + p.count, ko.count)]) == p }, prefix)
        }
        mutating func write(_ text: [UInt8], at o: Int) { ko.replaceSubrange(o..<o + text.count, with: text) }
        /// Replaces `name=irqbypass` (9 bytes) in `.modinfo`.
        mutating func setModinfoName(_ new: [UInt8]) throws {
            XCTAssertEqual(new.count, 9)
            write(new, at: try modinfoEntry("name=irqbypass") + 5)
        }
        /// Replaces `struct module`'s name (NUL-padded).
        mutating func setThisModuleName(_ new: [UInt8]) throws {
            let at = try section(".gnu.linkonce.this_module").fileRange.lowerBound + nameOffset
            XCTAssertEqual(Array(ko[at..<at + 10]), Array("irqbypass\0".utf8))
            write(new + [UInt8](repeating: 0, count: nameLength - new.count), at: at)
        }
        func signed() throws -> [UInt8] { try nameSigner.sign(module: ko, existingSignature: .replace) }
    }

    private func crafted(_ g: FixtureGuest, _ edit: (inout Crafted) throws -> Void) throws -> AuthorizeModule {
        var c = Crafted(ko: try g.boot.module("irqbypass").ko)
        try edit(&c)
        var r = try g.request("irqbypass")
        r.module = ByteBuffer(bytes: try c.signed())
        return r
    }

    /// The verdict under `end-state signature-only` for the module of `r` alone (no byte claimed:
    /// the explainer never runs, so only the verifier's own checks stand between the module and
    /// an allow).
    private func signatureOnly(_ r: AuthorizeModule) throws -> ExecGateWire.Verdict {
        let certs = try Fixtures.debianCertificates() + [nameSigner.certificate]
        let v = Verifier(policy: Policy(id: "sig-only", version: 1, trust: TrustStore(certs), endState: .signatureOnly))
        return v.authorize(AuthorizeModule(module: try XCTUnwrap(r.module)), requestDigest: [])
    }

    /// HOLE (round 11): a signature-only allow ("judged on signature and structure") checked the
    /// section headers alone: an SHF_ALLOC section of type SHT_NULL (trust.md names it: denied),
    /// a symbol table with a bad entry size, a relocation naming symbol 0xffffffff, all signed by
    /// a trusted key, were allowed. The engine's fact-free structural refusals now run first
    /// (`ModuleStructure.check`); the unedited module is still allowed.
    func testASignatureOnlyAllowChecksTheStructureTheEngineWould() throws {
        let g = try guest()
        let base = try g.request("irqbypass")
        func verdict(_ edit: (inout Crafted) throws -> Void) throws -> ExecGateWire.Verdict {
            var c = Crafted(ko: try g.boot.module("irqbypass").ko)
            try edit(&c)
            var r = base
            r.module = ByteBuffer(bytes: try c.signed())
            return try signatureOnly(r)
        }
        func put32(_ c: inout Crafted, _ o: Int, _ v: UInt32) { c.write((0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) }, at: o) }
        func header(_ c: Crafted, _ name: String) throws -> Int {
            let elf = try c.ko.withUnsafeBytes { try ELFFile(bytes: $0) }
            var shoff = 0
            for k in 0..<8 { shoff |= Int(c.ko[40 + k]) << (8 * k) }
            return shoff + (try XCTUnwrap(elf.section(named: name))).index * 64
        }
        XCTAssertEqual(try verdict { _ in }.decision, .allow, "the unedited module")
        // .text retyped SHT_NULL (still SHF_ALLOC|SHF_EXECINSTR, with its size).
        let nullText = try verdict { c in put32(&c, try header(c, ".text") + 4, 0) }
        XCTAssertEqual(nullText.decision, .deny)
        XCTAssertEqual(nullText.reason, .malformedELF, nullText.message)
        XCTAssertTrue(nullText.message.contains("SHT_NULL"), nullText.message)
        // .symtab's sh_entsize 23.
        let entsize = try verdict { c in put32(&c, try header(c, ".symtab") + 56, 23) }
        XCTAssertEqual(entsize.reason, .malformedELF, entsize.message)
        // The first record of .rela.text names symbol 0xffffffff.
        let badSymbol = try verdict { c in
            let rela = try c.section(".rela.text").fileRange.lowerBound
            put32(&c, rela + 12, 0xffff_ffff)
        }
        XCTAssertEqual(badSymbol.reason, .malformedELF, badSymbol.message)
    }

    /// The unedited module re-signed by the test key is denied by name: the baseline the attacks
    /// below start from (and a guard that the craft itself does not break the module).
    func testBaselineDeniedByName() throws {
        let g = try guest()
        let v = g.verifier.authorize(try crafted(g) { _ in }, requestDigest: [])
        XCTAssertEqual(v.reason, .moduleNameDenied, v.message)
        XCTAssertEqual(v.moduleName, "irqbypass")
    }

    /// Was a HOLE (fixed: `ModuleName.identity`, Verifier step 3). Attack: `.modinfo`
    /// `name=zzzbypass`, `struct module` name `irqbypass` (deny-listed); the request names
    /// `zzzbypass`. The deny rule read only `.modinfo`, so the module was allowed and recorded as
    /// `zzzbypass`, while the kernel would know it as `irqbypass` (find_module_all(), /proc/modules).
    /// Now the two names must be byte-equal (the kernel's blacklisted() and its identity then name
    /// one module): denied as a name mismatch, naming both.
    func testModinfoNameDifferentFromStructModuleNameIsDenied() throws {
        let g = try guest()
        var r = try crafted(g) { try $0.setModinfoName(Array("zzzbypass".utf8)) }
        r.moduleName = "zzzbypass"
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .moduleNameMismatch, v.message)
        XCTAssertTrue(v.message.contains("zzzbypass") && v.message.contains("irqbypass"), v.message)
        XCTAssertNil(g.session.liveModule("zzzbypass"))
    }

    /// Was a HOLE (fixed with the above). Attack, the other way round: `.modinfo` says the
    /// allowed `irqbypass`-alike name and `struct module` says another: the module would be live in
    /// the kernel under a name ExecGate never recorded (a second copy of a live module, a name the
    /// policy denies). Same rule: denied as a mismatch.
    func testStructModuleNameDifferentFromModinfoIsDenied() throws {
        let g = try guest(denying: [])
        let r = try crafted(g) { try $0.setThisModuleName(Array("llc".utf8)) }
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.reason, .moduleNameMismatch, v.message)
        XCTAssertTrue(v.message.contains("'llc'"), v.message)
    }

    /// Was a HOLE (fixed: the name falls back to `struct module`'s, as the kernel's does). Attack:
    /// no `name=` in `.modinfo` (its key renamed `xame=`) and a request naming nobody: the verifier
    /// fell back to the guest's word (the request's empty name), so no deny rule matched and the
    /// verdict named no module. Now the name is `struct module`'s (elf_validity_cache_copy():
    /// `if (!info->name) info->name = info->mod->name`): denied by name as `irqbypass`.
    func testMissingModinfoNameFallsBackToStructModuleName() throws {
        let g = try guest()
        var r = try crafted(g) { c in c.write(Array("x".utf8), at: try c.modinfoEntry("name=irqbypass")) }
        r.moduleName = ""
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.reason, .moduleNameDenied, v.message)
        XCTAssertEqual(v.moduleName, "irqbypass")
        // And a request naming another module is a mismatch, not that other module.
        r.moduleName = "zzzbypass"
        XCTAssertEqual(g.verifier.authorize(r, requestDigest: []).reason, .moduleNameMismatch)
    }

    /// '-' and '_' : Kbuild makes KBUILD_MODNAME with '_' and modprobe treats the two as one, but the
    /// kernel's own comparisons (find_module_all(), blacklisted()) are exact memcmp. Attack:
    /// `.modinfo` `irq_bypas`, `struct module` `irq-bypas`: to the kernel two different names.
    /// Denied as a mismatch (byte equality, not the deny list's canonical equality).
    func testDashAndUnderscoreVariantsAreDifferentNamesToTheKernel() throws {
        let g = try guest()
        var r = try crafted(g) {
            try $0.setModinfoName(Array("irq_bypas".utf8))
            try $0.setThisModuleName(Array("irq-bypas".utf8))
        }
        r.moduleName = "irq_bypas"
        XCTAssertEqual(g.verifier.authorize(r, requestDigest: []).reason, .moduleNameMismatch)
    }

    /// Was a HOLE (fixed: names must be printable ASCII without space). Attack: a name carrying a
    /// control byte (ESC) or a non-ASCII byte in both places. The kernel does not restrict the
    /// bytes, but the name goes into the verdict, the audit log and the deny-list lookup, which
    /// decoded it lossily (invalid UTF-8 → U+FFFD: two byte names, one text). Denied as a
    /// malformed name.
    func testNameWithControlOrNonASCIIBytesIsDenied() throws {
        for bad: [UInt8] in [Array("irqbypas".utf8) + [0x1b], Array("irqbypas".utf8) + [0xff]] {
            let g = try guest()
            var r = try crafted(g) {
                try $0.setModinfoName(bad)
                try $0.setThisModuleName(bad)
            }
            r.moduleName = ""
            let v = g.verifier.authorize(r, requestDigest: [])
            XCTAssertEqual(v.reason, .malformedELF, v.message)
            XCTAssertTrue(v.message.contains("printable ASCII"), v.message)
        }
    }

    /// Was a HOLE under `end-state signature-only` (fixed: no relocation may write `struct
    /// module`'s name; with bytes claimed the explainer already refused it). Attack: a relocation
    /// section applying to `.gnu.linkonce.this_module` (real modules have one, for the init and
    /// exit pointers; irqbypass has none, so its `.rela.data` is retargeted there by `sh_info`)
    /// whose first record writes just after the name's NUL. The kernel checks the name for
    /// duplicates at add_unformed_module(), then applies relocations (apply_relocations(), later
    /// in load_module()); x86's apply_relocate_add() only refuses a non-zero target, and the
    /// name's padding is zero, so the module's name would change after every check. Denied,
    /// naming the relocation.
    func testRelocationIntoStructModuleNameIsDenied() throws {
        let g = try guest(denying: [])
        let r = try crafted(g) { c in
            let rela = try c.section(".rela.data"), target = try c.section(".gnu.linkonce.this_module")
            var shoff = 0
            for k in 0..<8 { shoff |= Int(c.ko[0x28 + k]) << (8 * k) }
            let info = shoff + 64 * rela.index + 44
            for k in 0..<4 { c.ko[info + k] = UInt8(truncatingIfNeeded: target.index >> (8 * k)) }
            let at = UInt64(nameOffset + "irqbypass".utf8.count + 1)
            for k in 0..<8 { c.ko[rela.fileRange.lowerBound + k] = UInt8(truncatingIfNeeded: at >> (8 * k)) }
        }
        // With bytes claimed the explainer refuses the renamed module too (the relocation's target
        // is not zero, or its bytes do not match); under signature-only nothing else would.
        for v in [g.verifier.authorize(r, requestDigest: []), try signatureOnly(r)] {
            XCTAssertEqual(v.reason, .malformedELF, v.message)
            XCTAssertTrue(v.message.contains("relocation 0 of .rela.data"), v.message)
        }
    }

    /// Was a HOLE under `end-state signature-only` (fixed: exactly one `.gnu.linkonce.this_module`;
    /// with bytes claimed the claim's section list already failed). Attack: no
    /// `.gnu.linkonce.this_module` (its section name overwritten): no kernel identity at all. The kernel refuses (elf_validity_cache_index_mod(): "Exactly one
    /// .gnu.linkonce.this_module section must exist"); so does ExecGate, before any byte is judged.
    func testMissingStructModuleSectionIsDenied() throws {
        let g = try guest(denying: [])
        let r = try crafted(g) { c in
            let shstr = try c.ko.withUnsafeBytes { raw -> Int in
                let e = try ELFFile(bytes: raw)
                return e.sections[Int(raw.load(fromByteOffset: 0x3e, as: UInt16.self))].fileRange.lowerBound
            }
            // ".gnu.linkonce.this_module" → ".gnu.linkonce.this_modulX"
            let name = Array(".gnu.linkonce.this_module\0".utf8)
            let at = try XCTUnwrap((shstr..<c.ko.count - name.count).first { Array(c.ko[$0..<$0 + name.count]) == name })
            c.ko[at + name.count - 2] = UInt8(ascii: "X")
        }
        // With bytes claimed the claim's own section list fails to match; under signature-only
        // nothing else would refuse it.
        for v in [g.verifier.authorize(r, requestDigest: []), try signatureOnly(r)] {
            XCTAssertEqual(v.reason, .malformedELF, v.message)
            XCTAssertTrue(v.message.contains("exactly one .gnu.linkonce.this_module"), v.message)
        }
    }

    /// Attack: a second `.modinfo` (irqbypass's `.comment`, same name length, renamed). The
    /// kernels disagree on which one is read: 6.12 refuses the module (elf_validity_cache_index_info():
    /// "Only one .modinfo section must exist"), 6.1 reads the first with SHF_ALLOC (find_sec(),
    /// "Alloc bit cleared means ignore it"), while ExecGate read the first by name: a crafted pair
    /// (the first not ALLOC) gives ExecGate one `name=` and `vermagic=` and the kernel another.
    /// Refused, as 6.12 does, before any `.modinfo` entry is read.
    func testSecondModinfoSectionIsDenied() throws {
        let g = try guest(denying: [])
        let r = try crafted(g) { c in
            let shstr = try c.ko.withUnsafeBytes { raw -> Int in
                let e = try ELFFile(bytes: raw)
                return e.sections[Int(raw.load(fromByteOffset: 0x3e, as: UInt16.self))].fileRange.lowerBound
            }
            let name = Array(".comment\0".utf8)
            let at = try XCTUnwrap((shstr..<c.ko.count - name.count).first { Array(c.ko[$0..<$0 + name.count]) == name })
            c.write(Array(".modinfo".utf8), at: at)
        }
        for v in [g.verifier.authorize(r, requestDigest: []), try signatureOnly(r)] {
            XCTAssertEqual(v.reason, .malformedELF, v.message)
            XCTAssertTrue(v.message.contains("2 .modinfo sections"), v.message)
        }
    }

    /// Attack: retire a module under a Unicode spelling canonically equivalent to its signed
    /// name. irqbypass re-signed as `irqbypasK` (printable ASCII) is allowed; the retire names
    /// `irqbypas` + U+212A KELVIN SIGN, which Swift's `String` equality (and a dictionary keyed by
    /// `String`) takes for `K`. The kernel's `find_module_all()` compares bytes (`memcmp`), and
    /// no module name holds a byte outside printable ASCII (ModuleName.identity). Refused as an
    /// unknown module, as are `irqbypask` and the empty name; the module stays live; the exact
    /// name retires it.
    func testRetireUnderACanonicallyEquivalentNameIsRefused() throws {
        let g = try guest(denying: [])
        var r = try crafted(g) {
            try $0.setModinfoName(Array("irqbypasK".utf8))
            try $0.setThisModuleName(Array("irqbypasK".utf8))
        }
        r.moduleName = "irqbypasK"
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .allow, v.message)
        let base = try XCTUnwrap(g.session.liveModule("irqbypasK")?.textRange.lowerBound)
        for name in ["irqbypas\u{212A}", "irqbypask", "irq-bypasK", ""] {
            guard case .error(let e) = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: []) else {
                return XCTFail("retired under '\(name)'")
            }
            XCTAssertEqual(e.code, .unknownModule, "\(name): \(e.message)")
            let why = name.isEmpty ? "is empty" : (name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } ? "no live module '\(name)'" : "has byte 0xe2: module names are printable ASCII")
            XCTAssertTrue(e.message.contains(why), "\(name): \(e.message)")
            XCTAssertEqual(g.session.allowedModules, ["irqbypasK"], name)
        }
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: "irqbypasK", textBase: base)), requestDigest: []) else {
            return XCTFail("the exact name")
        }
        XCTAssertEqual(g.session.allowedModules, [])
    }

    /// Round 8, lead 5. Attack: the request's `module_name` (the guest's word, read by the VMM from
    /// the guest's own `struct module`) spelled differently from the signed name but equal to it
    /// under `-` ≡ `_` (`irq-bypas` for `irq_bypas`) or under Unicode canonical equivalence
    /// (`irqbypas` + U+212A KELVIN SIGN for `irqbypasK`). The request check compared
    /// `Policy.canonicalModuleName` Strings, so both were taken as the signed name: a guest whose
    /// module in memory names itself otherwise than its evidence was judged as agreeing. The kernel
    /// knows a module only by its exact bytes (find_module_all(): `strlen` + `memcmp` of
    /// `mod->name`, kernel/module/main.c 6.1 and 6.12; the retire and init-freed lookups are
    /// exact already), so the cross-check is byte for byte: both are name mismatches, nothing is
    /// live, and the exact spelling is allowed.
    func testRequestNameMustEqualTheSignedNameByteForByte() throws {
        for (signed, asked) in [("irq_bypas", "irq-bypas"), ("irqbypasK", "irqbypas\u{212A}"), ("irqbypasK", "irqbypask")] {
            let g = try guest(denying: [])
            var r = try crafted(g) {
                try $0.setModinfoName(Array(signed.utf8))
                try $0.setThisModuleName(Array(signed.utf8))
            }
            r.moduleName = asked
            let v = g.verifier.authorize(r, requestDigest: [])
            XCTAssertEqual(v.decision, .deny, "\(asked): \(v.message)")
            XCTAssertEqual(v.reason, .moduleNameMismatch, "\(asked): \(v.message)")
            XCTAssertEqual(g.session.allowedModules, [], asked)
            r.moduleName = signed
            let exact = g.verifier.authorize(r, requestDigest: [])
            XCTAssertEqual(exact.decision, .allow, "\(signed): \(exact.message)")
            XCTAssertEqual(g.session.allowedModules, [signed])
        }
    }

    /// Round 8, lead 2 (attack failed; regression test). Attack: a lone `.modinfo` without
    /// SHF_ALLOC. 6.1 looks it up with find_sec(), which skips a section without SHF_ALLOC
    /// ("Alloc bit cleared means ignore it"): setup_load_info() then has no `name=` and falls back
    /// to `mod->name`, check_modinfo() finds no vermagic (Debian's CONFIG_MODULE_FORCE_LOAD=y:
    /// try_to_force_load() only taints) and set_license(NULL) taints it proprietary. 6.12 finds it
    /// with find_any_unique_sec(), which has no SHF_ALLOC test, and reads it
    /// (elf_validity_cache_index_info()), kernel/module/main.c 6.1.192 / 6.12.117. ExecGate reads
    /// it as 6.12 does, and its identity rule makes the kernels agree on the name: `name=` must equal
    /// `struct module`'s, 6.1's fallback. So `name=zzzbypass` there is still a mismatch, the
    /// unedited name is still denied by name, and a first `name=` ahead of the real one (6.1 and
    /// 6.12 get_modinfo() both return the first) is the one compared.
    func testNonAllocModinfoAndRepeatedNameKeepOneName() throws {
        let g = try guest()
        func nonAlloc(_ c: inout Crafted) throws {
            let s = try c.section(".modinfo")
            var shoff = 0
            for k in 0..<8 { shoff |= Int(c.ko[0x28 + k]) << (8 * k) }
            let flags = shoff + 64 * s.index + 8
            XCTAssertEqual(c.ko[flags] & 0x2, 0x2, "the real .modinfo is SHF_ALLOC")
            c.ko[flags] &= ~0x2
        }
        var r = try crafted(g) { try nonAlloc(&$0) }
        XCTAssertEqual(g.verifier.authorize(r, requestDigest: []).reason, .moduleNameDenied)
        r = try crafted(g) { try nonAlloc(&$0); try $0.setModinfoName(Array("zzzbypass".utf8)) }
        r.moduleName = ""
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.reason, .moduleNameMismatch, v.message)
        // `license=GPL v2` (14 bytes) becomes a first `name=zzzbypass`, ahead of `name=irqbypass`.
        r = try crafted(g) { c in c.write(Array("name=zzzbypass".utf8), at: try c.modinfoEntry("license=GPL v2")) }
        r.moduleName = ""
        let first = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(first.reason, .moduleNameMismatch, first.message)
        XCTAssertTrue(first.message.contains("'zzzbypass'"), first.message)
    }

    /// Round 8, lead 5 (names by bytes). Attack: a claimed section named by a Unicode spelling
    /// canonically equivalent to the signed section's name. irqbypass's `.note.Linux` renamed
    /// `.note.LinuK` and re-signed; the claim names `.note.Linu` + U+212A KELVIN SIGN.
    /// ClaimStructure found the section by `String ==` (and the explainer's address map is a
    /// `String`-keyed dictionary), so the claim was taken as naming it, while the kernel's
    /// section names (`find_sec()`'s strcmp, the sysfs `sections/` entries the VMM reads) are
    /// bytes. Now a claimed name must be a section's name byte for byte
    /// (`ELFFile.section(named:)`): refused as an unknown section; the exact name is allowed.
    func testClaimedSectionNameMustBeTheSectionsBytes() throws {
        let g = try guest(denying: [])
        var r = try crafted(g) { c in
            let shstr = try c.ko.withUnsafeBytes { raw -> Int in
                let e = try ELFFile(bytes: raw)
                return e.sections[Int(raw.load(fromByteOffset: 0x3e, as: UInt16.self))].fileRange.lowerBound
            }
            let name = Array("\0.note.Linux\0".utf8)
            let at = try XCTUnwrap((shstr..<c.ko.count - name.count).first { Array(c.ko[$0..<$0 + name.count]) == name })
            c.ko[at + name.count - 2] = UInt8(ascii: "K")
        }
        let k = try XCTUnwrap(r.sections.firstIndex { $0.name == ".note.Linux" }, "the claim lists .note.Linux")
        r.sections[k].name = ".note.Linu\u{212A}"
        let v = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .claimUnknownSection, v.message)
        XCTAssertEqual(g.session.allowedModules, [])
        r.sections[k].name = ".note.LinuK"
        let exact = g.verifier.authorize(r, requestDigest: [])
        XCTAssertEqual(exact.decision, .allow, exact.message)
    }
}
