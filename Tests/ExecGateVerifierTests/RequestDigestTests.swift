// SPDX-License-Identifier: Apache-2.0
//
// The request digest of an authorize-module (Verifier.requestDigest(authorizeModuleBody:),
// docs/protocol.md verdict `request_digest`): SHA-256 of the body as received with the module
// field's value replaced by the module file's SHA-256. Checked against an independent
// construction, for every judged part (module content, signature, trailer, claim, frames,
// unknown fields), and in verdicts: the verifier takes the file digest from its one pass over
// the module. Input: a real signed module and its claim from the committed capture
// (Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a).

import ExecGateCapture
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class RequestDigestTests: XCTestCase {
    func request() throws -> AuthorizeModule {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        return try boot.module(try XCTUnwrap(boot.availableModules.first)).request(guestID: "g")
    }

    func digest(_ body: ByteBuffer) -> [UInt8] { Verifier.requestDigest(authorizeModuleBody: body)! }

    func testTheDefinitionByAnIndependentConstruction() throws {
        let r = try request()
        let body = Message.authorizeModule(r).encodeBody()
        // Built by hand: the same fields, tag order, with the module's value its 32-byte digest.
        let file = Digest.compute(.sha256, over: Array(r.module.readableBytesView)).bytes
        var stand = r
        stand.module = ByteBuffer(bytes: file)
        let expected = Digest.compute(.sha256, over: Array(Message.authorizeModule(stand).encodeBody().readableBytesView)).bytes
        XCTAssertEqual(digest(body), expected)
        XCTAssertEqual(Verifier.requestDigest(authorizeModuleBody: body, moduleFileDigest: file), expected)
        XCTAssertNotEqual(expected, Digest.compute(.sha256, over: Array(body.readableBytesView)).bytes)
        // The module field need not come first, and what follows it counts: a body with the
        // fields in another order (legal on the wire) is another body, another digest.
        var w = TLVWriter()
        w.bytes(2, r.module)
        w.string(1, "g")
        let reordered = w.buffer
        var w2 = TLVWriter()
        w2.string(1, "g")
        w2.bytes(2, r.module)
        XCTAssertNotEqual(digest(reordered), digest(w2.buffer))
        // No module field, or a truncated one: nil (such a body does not decode either).
        var none = TLVWriter()
        none.string(1, "g")
        XCTAssertNil(Verifier.requestDigest(authorizeModuleBody: none.buffer))
        XCTAssertNil(Verifier.requestDigest(authorizeModuleBody: body.getSlice(at: body.readerIndex, length: 40)!))
    }

    /// Every judged byte is bound: the module's content, signature and trailer (through the file
    /// digest), the claim's bytes, frames and addresses, and an unknown field sent along.
    func testEveryPartOfTheRequestIsBound() throws {
        let r = try request()
        let base = digest(Message.authorizeModule(r).encodeBody())
        var module = Array(r.module.readableBytesView)
        let trailer = try ModuleSignatureTrailer.parse(module)
        var seen = Set([base])
        for i in [0, trailer.contentRange.upperBound / 2, trailer.signatureRange.lowerBound + 7, module.count - 1] {
            module[i] ^= 0x20
            var m = r
            m.module = ByteBuffer(bytes: module)
            XCTAssertTrue(seen.insert(digest(Message.authorizeModule(m).encodeBody())).inserted, "module byte \(i) not bound")
            module[i] ^= 0x20
        }
        var text = r
        var t = Array(r.text!.readableBytesView)
        t[t.count / 2] ^= 1
        text.text = ByteBuffer(bytes: t)
        XCTAssertTrue(seen.insert(digest(Message.authorizeModule(text).encodeBody())).inserted, "text not bound")
        var frames = r
        frames.frames[0] ^= 1
        XCTAssertTrue(seen.insert(digest(Message.authorizeModule(frames).encodeBody())).inserted, "frames not bound")
        var base2 = r
        base2.textBase = r.textBase! + 0x1000
        XCTAssertTrue(seen.insert(digest(Message.authorizeModule(base2).encodeBody())).inserted, "text_base not bound")
        var extra = Message.authorizeModule(r).encodeBody()
        extra.writeBytes([0x00, 0x77, 0, 0, 0, 1, 0x42])  // unknown non-critical tag 0x77
        XCTAssertTrue(seen.insert(digest(extra)).inserted, "an unknown field sent along is not bound")
    }

    /// Verdicts carry it: from the received body, or from the canonical encoding when judged in
    /// process without one; module_digest stays the content's SHA-256.
    func testVerdictsCarryTheRequestDigest() throws {
        let r = try request()
        let v = Verifier(policy: Policy(id: "rd", version: 1, trust: try Fixtures.debianTrust(), endState: .signatureOnly))
        var bare = r
        bare.text = nil
        bare.textBase = nil
        bare.frames = []
        bare.sections = []
        bare.guestID = ""
        let body = Message.authorizeModule(bare).encodeBody()
        let served = v.authorize(bare, body: body)
        XCTAssertEqual(served.decision, .allow, served.message)
        XCTAssertEqual(served.requestDigest, digest(body))
        XCTAssertEqual(v.authorize(bare).requestDigest, digest(body), "in process, the canonical body's digest")
        XCTAssertEqual(v.authorize(bare, requestDigest: [1, 2]).requestDigest, [1, 2])
        let trailer = try ModuleSignatureTrailer.parse(Array(r.module.readableBytesView))
        XCTAssertEqual(served.moduleDigest, Digest.compute(.sha256, over: Array(Array(r.module.readableBytesView).prefix(trailer.contentRange.upperBound))).bytes)
        // A tampered module (denied after the digest pass) and an unsigned one (no content
        // digest) carry their own request digests too.
        var tampered = Array(bare.module.readableBytesView)
        tampered[100] ^= 1
        var t = bare
        t.module = ByteBuffer(bytes: tampered)
        let tb = Message.authorizeModule(t).encodeBody()
        let tv = v.authorize(t, body: tb)
        XCTAssertEqual(tv.decision, .deny)
        XCTAssertEqual(tv.requestDigest, digest(tb))
        var u = bare
        u.module = ByteBuffer(bytes: Array(bare.module.readableBytesView.prefix(trailer.contentRange.upperBound)))
        let ub = Message.authorizeModule(u).encodeBody()
        let uv = v.authorize(u, body: ub)
        XCTAssertEqual(uv.reason, .unsigned)
        XCTAssertEqual(uv.requestDigest, digest(ub))
    }
}
