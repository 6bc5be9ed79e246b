// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review: ECDSA signature malleability. (r, s) and (r, n − s) are both valid
// signatures of one message under one key; the kernel accepts both (crypto/ecdsa.c
// _ecdsa_verify() checks only 0 < r, s < n; no low-s rule), and so does OpenSSL. Anyone holding a
// signed module can therefore make a second file, byte-different, with the same signed content
// and a valid signature, without the key. Nothing ExecGate keys a decision or a record on may be
// the signature bytes, or the second form is a second entry: a deny rule made from one form
// missed by the other, a module live twice. Inputs: the committed fixture boot (signed Debian 6.1
// irqbypass, re-signed by an ECDSA P-256 test key the policy trusts), real OpenSSL.

import _ExecGateInternals
import ExecGateCapture
import ExecGateELF
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

private let formSigner: ModuleSigner = {
    let (key, cert) = try! GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "ExecGate signature-form test key").load()
    return try! ModuleSigner(key: key, certificate: cert)
}()

/// The order of P-256 (SEC 2, secp256r1 n), big-endian.
private let p256Order: [UInt8] = Hex.decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")!

private struct DERError: Error {}

/// A DER tree, just enough to rewrite one primitive and re-encode every enclosing length.
private indirect enum DERNode: Equatable {
    case primitive(UInt8, [UInt8])
    case constructed(UInt8, [DERNode])

    static func parse(_ b: ArraySlice<UInt8>) throws -> [DERNode] {
        var out: [DERNode] = []
        var i = b.startIndex
        while i < b.endIndex {
            let tag = b[i]
            XCTAssertNotEqual(tag & 0x1f, 0x1f, "high tag numbers are not used here")
            var len = Int(b[i + 1]), at = i + 2
            if len & 0x80 != 0 {
                let n = len & 0x7f
                len = 0
                for k in 0..<n { len = len << 8 | Int(b[i + 2 + k]) }
                at += n
            }
            guard at + len <= b.endIndex else { throw DERError() }
            let content = b[at..<at + len]
            out.append(tag & 0x20 != 0 ? .constructed(tag, try parse(content)) : .primitive(tag, Array(content)))
            i = at + len
        }
        return out
    }

    var encoded: [UInt8] {
        let (tag, content): (UInt8, [UInt8])
        switch self {
        case .primitive(let t, let c): (tag, content) = (t, c)
        case .constructed(let t, let kids): (tag, content) = (t, kids.flatMap(\.encoded))
        }
        var len: [UInt8] = []
        if content.count < 0x80 {
            len = [UInt8(content.count)]
        } else {
            var n = content.count
            while n > 0 { len.insert(UInt8(n & 0xff), at: 0); n >>= 8 }
            len.insert(0x80 | UInt8(len.count), at: 0)
        }
        return [tag] + len + content
    }

    /// Every OCTET STRING holding an ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }) gets
    /// s replaced by n − s; returns how many were changed.
    mutating func malleate() -> Int {
        switch self {
        case .primitive(0x04, let content):
            guard let seq = try? DERNode.parse(content[...]), seq.count == 1,
                  case .constructed(0x30, let ints) = seq[0], ints.count == 2,
                  case .primitive(0x02, let s) = ints[1] else { return 0 }
            self = .primitive(0x04, DERNode.constructed(0x30, [ints[0], .primitive(0x02, integer(minus(p256Order, unsigned(s))))]).encoded)
            return 1
        case .primitive:
            return 0
        case .constructed(let tag, var kids):
            var n = 0
            for k in kids.indices { n += kids[k].malleate() }
            self = .constructed(tag, kids)
            return n
        }
    }
}

/// A DER INTEGER's content as 32 big-endian bytes (positive values only).
private func unsigned(_ v: [UInt8]) -> [UInt8] {
    let trimmed = Array(v.drop { $0 == 0 })
    return [UInt8](repeating: 0, count: 32 - trimmed.count) + trimmed
}

/// a − b, 32-byte big-endian, a > b.
private func minus(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32), borrow = 0
    for i in (0..<32).reversed() {
        var d = Int(a[i]) - Int(b[i]) - borrow
        borrow = d < 0 ? 1 : 0
        if d < 0 { d += 256 }
        out[i] = UInt8(d)
    }
    return out
}

/// Minimal DER INTEGER content of a positive 32-byte value.
private func integer(_ v: [UInt8]) -> [UInt8] {
    var t = Array(v.drop { $0 == 0 })
    if t.isEmpty { t = [0] }
    if t[0] & 0x80 != 0 { t.insert(0, at: 0) }
    return t
}

final class AdversarialSignatureFormTests: XCTestCase {
    /// The module file with its PKCS#7 signature's s replaced by n − s (the trailer's sig_len
    /// follows the message's new length). No key is needed for this.
    private func otherForm(_ file: [UInt8]) throws -> [UInt8] {
        let t = try file.withUnsafeBytes { try ModuleSignatureTrailer.parse($0) }
        var message = try XCTUnwrap(try DERNode.parse(file[t.signatureRange]).first)
        XCTAssertEqual(message.malleate(), 1, "one ECDSA signature in the message")
        let pkcs7 = message.encoded
        var trailer = Array(file[t.structRange])
        let len = UInt32(pkcs7.count)
        for k in 0..<4 { trailer[8 + k] = UInt8(truncatingIfNeeded: len >> (8 * (3 - k))) }
        return Array(file[t.contentRange]) + pkcs7 + trailer + ModuleSignatureTrailer.magic
    }

    /// Attack: present the same signed module in its other signature form. Both forms are valid
    /// (real OpenSSL; the kernel accepts both). What must hold, and does: every identity ExecGate
    /// keys on is the signed *content* or the name, never the signature bytes — the verdict's
    /// module digest (SHA-256 of the content: the deny list `deny module` and `modules pinned`
    /// compare it) is the same for both forms, so a deny entry made from one form refuses the
    /// other; the guest's live set is keyed by name, so the second form of a live module is
    /// `claim.module-already-live`, not a second entry. Only the request digest (SHA-256 of the
    /// request as sent, echoed so the VMM can match reply to request) differs, and nothing
    /// dedups or caches on it. (Passes: a regression test.)
    func testOtherECDSASignatureFormIsTheSameModule() throws {
        let certs = try Fixtures.debianCertificates() + [formSigner.certificate]
        let g = try FixtureGuest { $0.trust = TrustStore(certs) }
        let m = try g.boot.module("irqbypass")
        let a = try formSigner.sign(module: m.ko, existingSignature: .replace)
        let b = try otherForm(a)
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(try b.withUnsafeBytes { try ModuleSignatureTrailer.parse($0) }.contentRange, try a.withUnsafeBytes { try ModuleSignatureTrailer.parse($0) }.contentRange)
        // Both forms verify (the attack is real).
        for form in [a, b] {
            XCTAssertTrue(ModuleSignatureVerifier.verify(module: form, trust: TrustStore([formSigner.certificate])).isValid, "a signature form is refused")
        }

        var ra = m.request(guestID: "g"), rb = ra
        ra.module = ByteBuffer(bytes: a)
        rb.module = ByteBuffer(bytes: b)
        let va = g.verifier.authorize(ra)
        XCTAssertEqual(va.decision, .allow, va.message)
        let vb = g.verifier.authorize(rb)
        XCTAssertEqual(vb.reason, .moduleAlreadyLive, vb.message)
        XCTAssertEqual(va.moduleDigest, vb.moduleDigest, "the module digest is of the signed content")
        XCTAssertNotEqual(va.requestDigest, vb.requestDigest, "the request digest is of the bytes as sent")

        // A deny entry made from form a (its verdict's module digest) refuses form b.
        let hash = try XCTUnwrap(Digest(algorithm: .sha256, bytes: va.moduleDigest))
        let denying = try FixtureGuest {
            $0.trust = TrustStore(certs)
            $0.denyList = DenyList(moduleContentHashes: [hash])
        }
        XCTAssertEqual(denying.verifier.authorize(rb).reason, .moduleHashDenied)
    }
}
