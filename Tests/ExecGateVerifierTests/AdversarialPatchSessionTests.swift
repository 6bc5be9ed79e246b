// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the session rules for init text and for static-call key states across a
// module's retire and reload. The guest chooses every byte of a claim and of a patch and the order
// of requests; a crafted module stands for one a trusted key holder signed: here a real signed
// Debian module edited in place and signed again by a test key the policy trusts next to Debian's.
// Each test names the attack and says why it fails (the rule and the kernel function it mirrors);
// a test that documented a hole says where it was fixed.
// Inputs: the committed fixture boot (signed Debian 6.1 modules and the bytes a real guest held).

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

/// A test signing key (ECDSA P-256: quick to make) the crafted modules are signed with.
private let craftSigner: ModuleSigner = {
    let (key, cert) = try! GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "ExecGate adversarial test key").load()
    return try! ModuleSigner(key: key, certificate: cert)
}()

/// The fixture guest, with the test key trusted besides Debian's.
private func craftGuest() throws -> FixtureGuest {
    let certs = try Fixtures.debianCertificates() + [craftSigner.certificate]
    return try FixtureGuest { $0.trust = TrustStore(certs) }
}

/// In-place edits of a signed module's ELF (its Debian signature is replaced when signed again).
private struct Craft {
    var ko: [UInt8]
    func elf<T>(_ body: (ELFFile) throws -> T) throws -> T { try ko.withUnsafeBytes { try body(try ELFFile(bytes: $0)) } }
    mutating func put<T: FixedWidthInteger>(_ v: T, at o: Int) {
        for k in 0..<MemoryLayout<T>.size { ko[o + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
    }
    func section(_ name: String) throws -> ELFSection { try XCTUnwrap(try elf { $0.section(named: name) }, name) }
    func symbolIndex(_ name: String) throws -> Int {
        try XCTUnwrap(try elf { e in let t = try e.symbolTable(); return t.indices.first { t.name($0) == name } }, name)
    }
    func symbolEntry(_ i: Int) throws -> Int { try elf { try $0.symbolTableSection().fileRange.lowerBound } + 24 * i }
    /// Renames symbol `i` in place (the new name no longer than the old one).
    mutating func rename(_ i: Int, to new: String) throws {
        let (strtab, old): (Range<Int>, String) = try elf { e in (e.sections[Int(try e.symbolTableSection().link)].fileRange, try e.symbolTable().name(i)) }
        XCTAssertLessThanOrEqual(new.utf8.count, old.utf8.count)
        var nameAt = 0
        for k in 0..<4 { nameAt |= Int(ko[try symbolEntry(i) + k]) << (8 * k) }
        let at = strtab.lowerBound + nameAt
        for (k, b) in new.utf8.enumerated() { ko[at + k] = b }
        ko[at + new.utf8.count] = 0
    }
    mutating func setSymbol(_ i: Int, shndx: UInt16, value: UInt64) throws {
        let o = try symbolEntry(i)
        put(shndx, at: o + 6)
        put(value, at: o + 8)
    }
    func signed() throws -> [UInt8] { try craftSigner.sign(module: ko, existingSignature: .replace) }
}

final class AdversarialPatchSessionTests: XCTestCase {
    /// irqbypass crafted with a static-call trampoline and key of its own (`__SCT__z`: `jmp
    /// <own function>; ud1` over 8 bytes of `.text` no loader stage touches; `__SCK__z` in its own
    /// `.data`), signed by the test key. Returns the request for the real end state with the
    /// trampoline as compiled, the trampoline's address and its RET form.
    private func craftedIrqbypass(_ g: FixtureGuest) throws -> (request: AuthorizeModule, trampoline: UInt64, off: Int, target: UInt64, retForm: [UInt8]) {
        let m = try g.boot.module("irqbypass")
        let s = try m.ko.withUnsafeBytes { raw in
            let s = try Session(elf: try ELFFile(bytes: raw), claim: m.claim, facts: g.session.facts, resolver: g.session.symbolResolver)
            try s.run()
            return s
        }
        let elfClass = UInt8(ExplanationClass.elf.rawValue)
        let p = try XCTUnwrap((0..<s.cls.count - 8).first { o in s.cls[o..<o + 8].allSatisfy { $0 == elfClass } })
        let tramp = m.claim.textBase &+ UInt64(p)
        let target = try XCTUnwrap(s.functionEntries.sorted.first { $0 > tramp &+ 8 })
        let insn = try XCTUnwrap(genInsn(0xe9, at: tramp, to: target)) + [0x0f, 0xb9, 0xcc]
        var c = Craft(ko: m.ko)
        let text = try c.section(".text")
        c.ko.replaceSubrange(text.fileRange.lowerBound + p ..< text.fileRange.lowerBound + p + 8, with: insn)
        let t = try c.symbolIndex("__UNIQUE_ID_depends198"), key = try c.symbolIndex("__crc_irq_bypass_register_producer")
        try c.rename(t, to: "__SCT__z")
        try c.setSymbol(t, shndx: UInt16(text.index), value: UInt64(p))
        try c.rename(key, to: "__SCK__z")
        try c.setSymbol(key, shndx: UInt16(try c.section(".data").index), value: 0)
        var r = m.request(guestID: "g")
        r.module = ByteBuffer(bytes: try c.signed())
        var bytes = m.claim.text
        bytes.replaceSubrange(p..<p + 8, with: insn)
        r.text = ByteBuffer(bytes: bytes)
        let ret = try XCTUnwrap(s.retInstruction(at: tramp)?.padded(to: 5, with: 0xcc).array)
        return (r, tramp, p, target, ret)
    }

    private func retire(_ g: FixtureGuest, _ name: String) throws {
        let base = try XCTUnwrap(g.session.liveModule(name)?.textRange.lowerBound, "\(name) is live")
        guard case .retireModuleReply = g.verifier.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: name, textBase: base)), requestDigest: []) else {
            return XCTFail("retire \(name)")
        }
    }

    /// Was a HOLE (fixed: `GuestSession.rebuildDerivedState` forgets the seen states of a key
    /// with no live site left, as it forgets the key's state): the states a static-call key was
    /// seen in (`keyStatesSeen`: what a run-time patch of a key the registration does not name
    /// may reach besides NULL) outlived the module that had them. Attack: load a module whose own
    /// key `z` is in state `target` (its trampoline as compiled), retire it, load it again with
    /// the trampoline in its RET form (NULL), then move the key to `target`. A guest that never
    /// loaded the first copy is denied that patch ("not trusted for that key": `target` was never
    /// seen at a live module); after the retire it was allowed on the strength of a module that is
    /// gone. The session's trust must not depend on retired modules: the same patch is now
    /// denied in both guests. (The site's own rule still held only the module's trusted targets,
    /// so no untrusted target was reachable: the stale state widened the session's rule only.)
    func testSeenStatesOfAKeyDoNotOutliveItsModules() throws {
        // The reference: a guest that loads only the second copy (trampoline in its RET form).
        let fresh = try craftGuest()
        var c = try craftedIrqbypass(fresh)
        var retText = Array(buffer: try XCTUnwrap(c.request.text))
        retText.replaceSubrange(c.off..<c.off + 5, with: c.retForm)
        var second = c.request
        second.text = ByteBuffer(bytes: retText)
        let v0 = fresh.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v0.decision, .allow, v0.message)
        let key = try XCTUnwrap(fresh.session.runtimeSites.first { $0.module == "irqbypass" }?.key(at: c.trampoline), "the trampoline is a site of its key")
        XCTAssertEqual(fresh.session.state(ofKey: key), 0)
        let jump = PatchEntry(address: c.trampoline, bytes: try XCTUnwrap(genInsn(0xe9, at: c.trampoline, to: c.target)))
        let ref = fresh.patch([jump])
        XCTAssertEqual(ref.decision, .deny, ref.message)
        XCTAssertTrue(ref.message.contains("not trusted for that key"), ref.message)

        // The attack: first copy as compiled (state `target`), retire, second copy, patch.
        let g = try craftGuest()
        c = try craftedIrqbypass(g)
        let v1 = g.verifier.authorize(c.request, requestDigest: [])
        XCTAssertEqual(v1.decision, .allow, v1.message)
        XCTAssertEqual(g.session.state(ofKey: key), c.target)
        try retire(g, "irqbypass")
        XCTAssertNil(g.session.state(ofKey: key))
        let v2 = g.verifier.authorize(second, requestDigest: [])
        XCTAssertEqual(v2.decision, .allow, v2.message)
        let v = g.patch([jump])
        XCTAssertEqual(v.decision, .deny, "a retired module's key state trusted after reload: \(v.message)")
        XCTAssertEqual(v.reason, .patchNotAllowed)
        XCTAssertTrue(v.message.contains("not trusted for that key"), v.message)
        XCTAssertEqual(g.session.state(ofKey: key), 0)
    }
}
