// SPDX-License-Identifier: Apache-2.0
//
// Hostile inputs for the policy parser, the bundle framing and the admin protocol: every one is
// refused with a typed error (never a trap), and the admin port answers with an `error` frame.

import ExecGateAdmin
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class HostileInputTests: XCTestCase {
    func testForbidsOversizedAndNonUTF8Policies() throws {
        let big = [UInt8](repeating: UInt8(ascii: "#"), count: PolicyLimits.maximumSize + 1)
        XCTAssertThrowsError(try PolicyParser.parse(big, file: "f")) { XCTAssertEqual(($0 as! PolicyParseError).code, .tooLarge) }
        // The boundary: a line of exactly the maximum length is fine (a comment here).
        let okLine = "execgate-policy 1\n#" + String(repeating: "x", count: PolicyLimits.maximumLineLength - 1) + "\n"
        XCTAssertThrowsError(try PolicyParser.parse(Array(okLine.utf8), file: "f")) { XCTAssertEqual(($0 as! PolicyParseError).code, .missingDirective) }
        let longLine = "execgate-policy 1\n#" + String(repeating: "x", count: PolicyLimits.maximumLineLength) + "\n"
        XCTAssertThrowsError(try PolicyParser.parse(Array(longLine.utf8), file: "f")) { e in
            XCTAssertEqual((e as! PolicyParseError).code, .tooLarge)
            XCTAssertEqual((e as! PolicyParseError).line, 2)
        }
        XCTAssertThrowsError(try PolicyParser.parse(Array("execgate-policy 1\nid \u{0}x\n".utf8), file: "f")) { e in
            XCTAssertEqual((e as! PolicyParseError).code, .encoding)
            XCTAssertEqual((e as! PolicyParseError).column, 4)
        }
        XCTAssertThrowsError(try PolicyParser.parse(Array("execgate-policy 1\n".utf8) + [0x69, 0x64, 0x20, 0xC3, 0x28, 0x0A], file: "f")) { e in
            XCTAssertEqual((e as! PolicyParseError).code, .encoding)
            XCTAssertEqual((e as! PolicyParseError).line, 2)
        }
        XCTAssertThrowsError(try PolicyParser.parse([], file: "f")) { XCTAssertEqual(($0 as! PolicyParseError).code, .header) }
    }

    /// Random byte edits of a real policy (with an embedded certificate): each result either parses
    /// or is refused with a position inside the text. Never a trap, never an untyped error.
    func testMutatedPoliciesAreParsedOrRefusedWithAPosition() throws {
        let base = Array(try PolicyFixtures.text(version: 3, body: "class c c-*\nmodules allow\nmodules deny for class c\npin sha256:\(String(repeating: "1", count: 64))").utf8)
        let lineCount = base.filter { $0 == 0x0A }.count + 1
        var rng = SeededRNG(seed: 0x6072B6_0001)
        var refused = 0
        let alphabet = Array(" \t\n#*:-_azAZ09\u{7f}".utf8) + [0, 0xff]
        for _ in 0..<2000 {
            var m = base
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<m.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: m[i] = alphabet.randomElement(using: &rng)!
                case 1: m.remove(at: i)
                default: m.insert(alphabet.randomElement(using: &rng)!, at: i)
                }
            }
            do {
                _ = try PolicyParser.parse(m, file: "m")
            } catch {
                refused += 1
                XCTAssertGreaterThanOrEqual(error.line, 1)
                XCTAssertLessThanOrEqual(error.line, lineCount + 2)
                XCTAssertGreaterThanOrEqual(error.column, 1)
            }
        }
        XCTAssertGreaterThan(refused, 100)
    }

    func testForbidsMalformedBundleFraming() throws {
        let good = try AdminKeys.bundle(try PolicyFixtures.text(version: 3))
        XCTAssertNoThrow(try PolicyBundle.split(good))
        // Huge declared lengths are refused before any allocation.
        var hugePolicy = good
        hugePolicy.replaceSubrange(8..<12, with: [0xff, 0xff, 0xff, 0xff])
        var hugeSig = good
        let n = Int(good[8]) << 24 | Int(good[9]) << 16 | Int(good[10]) << 8 | Int(good[11])
        hugeSig.replaceSubrange((12 + n)..<(16 + n), with: [0xff, 0xff, 0xff, 0xff])
        var zeroSig = good
        zeroSig.replaceSubrange((12 + n)..<(16 + n), with: [0, 0, 0, 0])
        var badMagic = good
        badMagic[7] = UInt8(ascii: "2")
        for (bytes, why) in [(hugePolicy, "policy_len"), (hugeSig, "sig_len"), (zeroSig, "sig_len"), (badMagic, "magic"),
                             (Array(good.prefix(15)), "magic"), (Array(good.prefix(20)), "truncated"), (good + [1, 2], "trailing")] {
            XCTAssertThrowsError(try PolicyBundle.split(bytes), why) { e in
                XCTAssertEqual((e as! PolicyBundleError).code, .malformed)
                XCTAssertTrue("\(e)".contains(why), "\(e)")
            }
        }
        // A module signature is not a policy bundle, and a signed module is not a policy.
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        XCTAssertThrowsError(try PolicyBundle.open(module, admin: AdminKeys.admin.1, file: "m", builtinAnchors: nil)) {
            XCTAssertEqual(($0 as! PolicyBundleError).code, .malformed)
        }
    }

    func testAdminPortAnswersBadFramesWithErrors() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))
        let audit = AuditLog()
        let admin = PolicyAdministrator(verifier: v, adminCertificate: AdminKeys.admin.1, builtinAnchors: [], audit: audit)
        func error(_ f: Frame) throws -> ErrorReply {
            let r = admin.respond(to: f)
            XCTAssertEqual(r.type, .error)
            XCTAssertEqual(r.requestID, f.requestID)
            return try ErrorReply(decoding: r.body)
        }
        // Missing required bundle; an unknown critical tag; a wrong frame version; a reply type; a VMM type.
        XCTAssertEqual(try error(Frame(type: AdminMessageType.policyPush, requestID: 1, body: ByteBuffer())).code, .malformedBody)
        var w = TLVWriter()
        w.u8(0x8001, 1)
        XCTAssertEqual(try error(Frame(type: AdminMessageType.policyShow, requestID: 2, body: w.buffer)).code, .malformedBody)
        XCTAssertEqual(try error(Frame(version: 2, type: AdminMessageType.policyShow, requestID: 3, body: ByteBuffer())).code, .unsupportedVersion)
        XCTAssertEqual(try error(Frame(type: AdminMessageType.policyShowReply, requestID: 4, body: ByteBuffer())).code, .badRequest)
        XCTAssertEqual(try error(Frame(type: .status, requestID: 5, body: ByteBuffer())).code, .unknownMessageType)
        // Garbage as a bundle: refused, policy unchanged.
        let e = try error(Frame(type: AdminMessageType.policyPush, requestID: 6, body: PolicyPush(bundle: [1, 2, 3]).encode()))
        XCTAssertEqual(e.code, .badRequest)
        XCTAssertTrue(e.message.hasPrefix("admin.refused: bundle.malformed"), e.message)
        XCTAssertEqual(v.policy.version, 3)
        // A good show round-trips through its encoding (the refused push's record written first:
        // `audit_queued` is the writer's, and moves between two shows while it writes).
        audit.flush()
        let shown = admin.respond(to: Frame(type: AdminMessageType.policyShow, requestID: 7, body: ByteBuffer()))
        XCTAssertEqual(shown.type, AdminMessageType.policyShowReply)
        let decoded = try PolicyShowReply(decoding: shown.body)
        XCTAssertEqual(decoded, admin.show())
        XCTAssertEqual(decoded.rules, ["modules allow for all guests", "text-patches deny for all guests", "ebpf-jit deny for all guests"])
        XCTAssertEqual(decoded.source, try PolicyFixtures.text(version: 3))
    }
}
