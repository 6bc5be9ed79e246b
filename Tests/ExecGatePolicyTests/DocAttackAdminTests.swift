// SPDX-License-Identifier: Apache-2.0
//
// Attacks on the admin port written from docs/protocol.md ("audit-read") and docs/policy.md alone.
// The admin port needs no key to reach (docs/policy.md, "Who can reach which port"): whatever a
// peer sends there must be answered, never crash the service.

import ExecGateAdmin
import ExecGateSignature
import ExecGateTestSupport
import ExecGatePolicy
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttackAdminTests: XCTestCase {
    private func auditReadFrame(after: UInt64) -> Frame {
        Frame(type: AdminMessageType.auditRead, requestID: 7, body: AuditRead(afterSeq: after).encode())
    }

    /// HOLE (round docattack): `audit-read` with `after_seq` = 2⁶⁴−1 (a u64 the doc allows) trapped
    /// on `after_seq + 1` (arithmetic overflow) while computing `next_seq`: one keyless frame on the
    /// admin port killed the whole verifier (`execgate serve` crashed; in the service VM, PID 1).
    /// A cursor past the records issued is answered with no records and the log's own next
    /// sequence number, so the reader continues from records that exist.
    func testAuditReadAfterTheLastSequenceNumberIsAnsweredNotATrap() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog(capacity: 100, retained: 100)
        defer { log.close() }
        v.auditSink = log
        let admin = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        for after: UInt64 in [.max, .max - 1, 1 << 63] {
            let reply = admin.respond(to: auditReadFrame(after: after))
            XCTAssertEqual(reply.type, AdminMessageType.auditReadReply)
            let page = try AuditReadReply(decoding: reply.body)
            XCTAssertEqual(page.records, [])
            XCTAssertEqual(page.nextSeq, 1, "nothing was issued: continue from the first record")
        }
        // Without an audit log the same frame is answered too.
        let bare = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: nil)
        let reply = bare.respond(to: auditReadFrame(after: .max))
        XCTAssertEqual(reply.type, AdminMessageType.auditReadReply)
    }

    /// Failed attacks kept: what a keyless admin-port peer tries from docs/protocol.md ("Admin
    /// protocol") and docs/policy.md ("Bundles"), each answered as documented, the policy unchanged.
    func testKeylessAdminPeerIsAnsweredAsDocumented() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let admin = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: nil)
        func error(_ type: MessageType, _ body: ByteBuffer) throws -> ErrorReply {
            let reply = admin.respond(to: Frame(type: type, requestID: 9, body: body))
            XCTAssertEqual(reply.type, MessageType.error, "\(type)")
            XCTAssertEqual(reply.requestID, 9)
            return try ErrorReply(decoding: reply.body)
        }
        // Every VMM type on the admin port: unknown-message-type (neither port does the other's job).
        for t: UInt16 in 1...7 {
            XCTAssertEqual(try error(MessageType(rawValue: t), ByteBuffer()).code, .unknownMessageType)
        }
        // A push with no admin certificate configured: refused outright, with the stable prefix.
        let push = try error(AdminMessageType.policyPush, PolicyPush(bundle: Array("EXGTPOL1".utf8)).encode())
        XCTAssertEqual(push.code, .badRequest)
        XCTAssertTrue(push.message.hasPrefix("admin.push-disabled"), push.message)
        // A push with its bundle field missing, and a critical unknown field: malformed-body.
        XCTAssertEqual(try error(AdminMessageType.policyPush, ByteBuffer()).code, .malformedBody)
        var crit = TLVWriter(); crit.bytes(0x8001, [])
        XCTAssertEqual(try error(AdminMessageType.policyShow, crit.buffer).code, .malformedBody)
        XCTAssertEqual(v.policy.version, 3, "the running policy is unchanged")
    }

    /// HOLE (round docattack): `execgate policy audit --after 18446744073709551615` (a u64 the
    /// option accepts) trapped in the CLI on `cursor + 1` when comparing with `oldest_seq`: exit
    /// 132 instead of README's 0/1/2. The gap check compares without adding.
    func testPolicyAuditAfterTheLargestCursorDoesNotTrap() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem", adminCert = dir + "/admin.pem"
        try Fixtures.writeFile(cert, Array(try PolicyFixtures.kernelCertificate().pem.utf8))
        let gen = try GeneratedSigningKey.generateRSA(bits: 2048, commonName: "docattack admin")
        try Fixtures.writeFile(adminCert, gen.certificatePEM)
        let vmm = "unix:" + dir + "/v.sock", adm = "unix:" + dir + "/a.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", vmm, "--admin-listen", adm, "--trust", cert, "--admin-cert", adminCert],
                                         stdoutPath: dir + "/out", stderrPath: dir + "/err")
        defer { kill(pid, SIGTERM); _ = Fixtures.wait(pid) }
        let shown = Fixtures.runExecgateUntilSuccess(["policy", "show", "--connect", adm])
        XCTAssertEqual(shown.status, 0, shown.stderr)
        for after in ["18446744073709551615", "18446744073709551614", "0"] {
            let read = Fixtures.runExecgate(["policy", "audit", "--connect", adm, "--after", after])
            XCTAssertEqual(read.status, 0, "--after \(after): " + read.stderr)
        }
    }
}
