// SPDX-License-Identifier: Apache-2.0
//
// Policies swapped at run time through the admin port of a real server, while a VMM keeps asking:
// a real Unix-socket VerifierServer, a real AdminServer, a real signed Debian module, real CMS
// bundles signed by a generated admin key. Every refusal must leave the running policy unchanged.

import _ExecGateInternals
import ExecGateAdmin
import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import XCTest

enum AdminKeys {
    /// Generated once per test process (RSA-2048: quick, and the bundle code is key-size agnostic).
    static let adminKey = try! GeneratedSigningKey.generateRSA(bits: 2048, commonName: "ExecGate test admin")
    static let admin: (PrivateKey, Certificate) = try! adminKey.load()
    static let other: (PrivateKey, Certificate) = try! GeneratedSigningKey.generateRSA(bits: 2048, commonName: "Someone else").load()

    static func bundle(_ text: String, signedBy key: (PrivateKey, Certificate) = admin) throws -> [UInt8] {
        try PolicyBundle.seal(policy: Array(text.utf8), signer: try ModuleSigner(key: key.0, certificate: key.1))
    }
}

final class LiveSwapTests: XCTestCase {
    var server: VerifierServer!
    var adminServer: AdminServer!
    var verifier: Verifier!
    var administrator: PolicyAdministrator!
    var audit: AuditLog!
    var vmmEndpoint: Endpoint!
    var adminEndpoint: Endpoint!

    override func setUp() async throws {
        let v1 = try PolicyFixtures.parse(try PolicyFixtures.text(id: "swap", version: 1))
        verifier = Verifier(policy: v1)
        audit = AuditLog(capacity: 1 << 16)
        verifier.auditSink = audit
        administrator = PolicyAdministrator(verifier: verifier, adminCertificate: AdminKeys.admin.1,
                                            builtinAnchors: try Fixtures.debianCertificates(), audit: audit)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        server = VerifierServer(responder: verifier, logger: logger, threads: 2)
        let dir = Fixtures.temporaryDirectory()
        vmmEndpoint = .unix(path: dir + "/vmm.sock")
        adminEndpoint = .unix(path: dir + "/admin.sock")
        try await server.bind(vmmEndpoint)
        adminServer = AdminServer(administrator: administrator, group: server.eventLoopGroup)  // as VerifierService wires it
        try await adminServer.bind(adminEndpoint)
    }

    override func tearDown() async throws {
        await adminServer.shutdown()
        await server.shutdown()
        audit.close()
    }

    /// ≥ 10,000 requests over 4 connections while v2 (which denies the module by name) is pushed.
    /// Each connection keeps one request in flight, so its completion order is its request order,
    /// and the policy snapshot each request takes at its start makes the version sequence on every
    /// connection exactly v1…v1 v2…v2: one switch point, no failure, no verdict from a mixture.
    func testSwapUnderLoadHasExactlyOneSwitchPointPerConnection() async throws {
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        let connections = 4, perConnection = 2600
        let completed = NIOLockedValueBox(0)
        let v2Text = try PolicyFixtures.text(id: "swap", version: 2, body: "deny module-name crc7\nmodules allow")
        let v2Bundle = try AdminKeys.bundle(v2Text)

        // The host carries the records out through the admin port while the load runs, page by
        // page, as a deployment does: the service VM keeps only the newest records in memory
        // (16,384, at most AuditLimits.retainedBytes of text: ~9,700 of these), so a reader that
        // waits for the end of 10,000 verdicts would find the oldest evicted (`oldest_seq`).
        let loadDone = NIOLockedValueBox(false)
        let carriedBox = NIOLockedValueBox([String]())
        let reader = Task { [adminEndpoint] in
            let admin = try await AdminClient.connect(to: adminEndpoint!)
            var cursor: UInt64 = 0
            while true {
                let finished = loadDone.withLockedValue { $0 }
                let p = try await admin.auditRead(afterSeq: cursor, maxRecords: 4000)
                XCTAssertLessThanOrEqual(p.oldestSeq, cursor + 1, "the reader fell behind: records \(cursor + 1)..<\(p.oldestSeq) were evicted")
                XCTAssertEqual(p.dropped, 0)
                carriedBox.withLockedValue { $0 += p.records }
                if p.records.isEmpty {
                    if finished { break }
                    try await Task.sleep(nanoseconds: 20_000_000)
                    continue
                }
                XCTAssertEqual(p.nextSeq, cursor + UInt64(p.records.count) + 1)
                cursor = p.nextSeq - 1
            }
            await admin.close()
        }

        let results = try await withThrowingTaskGroup(of: (Int, [(UInt64, Verdict.Decision)], Int).self) { group in
            for c in 0..<connections {
                group.addTask { [vmmEndpoint] in
                    let client = try await ExecGateClient.connect(to: vmmEndpoint!, timeout: 30)
                    var seq: [(UInt64, Verdict.Decision)] = []
                    var failures = 0
                    for _ in 0..<perConnection {
                        do {
                            let v = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
                            seq.append((v.policyVersion, v.decision))
                        } catch {
                            failures += 1
                        }
                        completed.withLockedValue { $0 += 1 }
                    }
                    await client.close()
                    return (c, seq, failures)
                }
            }
            // The push, from the admin port, once the load is well under way.
            group.addTask { [adminEndpoint] in
                while completed.withLockedValue({ $0 }) < connections * perConnection / 3 { try await Task.sleep(nanoseconds: 2_000_000) }
                let admin = try await AdminClient.connect(to: adminEndpoint!)
                let reply = try await admin.push(bundle: v2Bundle)
                await admin.close()
                XCTAssertEqual(reply.policyVersion, 2)
                XCTAssertEqual(reply.previousVersion, 1)
                return (-1, [], 0)
            }
            var all: [(Int, [(UInt64, Verdict.Decision)], Int)] = []
            for try await r in group { all.append(r) }
            return all
        }

        var total = 0, sawV1 = 0, sawV2 = 0
        for (c, seq, failures) in results where c >= 0 {
            XCTAssertEqual(failures, 0, "connection \(c)")
            XCTAssertEqual(seq.count, perConnection)
            total += seq.count
            // Exactly one switch point: versions are non-decreasing and only 1 then 2.
            var switches = 0
            for i in 1..<seq.count where seq[i].0 != seq[i - 1].0 {
                switches += 1
                XCTAssertEqual(seq[i - 1].0, 1, "connection \(c) index \(i)")
                XCTAssertEqual(seq[i].0, 2, "connection \(c) index \(i)")
            }
            XCTAssertLessThanOrEqual(switches, 1, "connection \(c)")
            for (version, decision) in seq {
                XCTAssertEqual(decision, version == 1 ? .allow : .deny, "v\(version) decided \(decision)")
                if version == 1 { sawV1 += 1 } else { sawV2 += 1 }
            }
        }
        XCTAssertGreaterThanOrEqual(total, 10_000)
        XCTAssertGreaterThan(sawV1, 0)
        XCTAssertGreaterThan(sawV2, 0)
        XCTAssertEqual(verifier.policy.version, 2)

        // Every verdict and the change are in the audit records, in order.
        audit.flush()
        XCTAssertEqual(audit.counters.accepted, UInt64(total + 1))
        XCTAssertEqual(audit.counters.dropped, 0)

        // Carried out through the admin port, page by page: every record, in sequence, no gaps.
        loadDone.withLockedValue { $0 = true }
        try await reader.value
        let carried = carriedBox.withLockedValue { $0 }
        XCTAssertEqual(carried.count, total + 1)
        let versions = carried.compactMap { r -> Int? in
            r.contains("\"event\":\"verdict\"") ? (r.contains("\"policy_version\":1,") ? 1 : 2) : nil
        }
        XCTAssertEqual(versions.count, total)
        XCTAssertEqual(versions.filter { $0 == 1 }.count, sawV1)
        XCTAssertTrue(carried.contains { $0.contains("\"event\":\"policy-activated\"") && $0.contains("\"policy_version\":2") })
    }

    /// Rollback, a foreign key, a tampered bundle, a malformed policy: each refused with a reason,
    /// the running policy unchanged (version and verdicts).
    func testRefusalsLeaveTheRunningPolicyUnchanged() async throws {
        let admin = try await AdminClient.connect(to: adminEndpoint)
        let vmm = try await ExecGateClient.connect(to: vmmEndpoint)
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        let v3 = try PolicyFixtures.text(id: "swap", version: 3, body: "deny module-name crc7\nmodules allow")
        let pushed = try await admin.push(bundle: try AdminKeys.bundle(v3))
        XCTAssertEqual(pushed.policyVersion, 3)

        func assertUnchanged(_ what: String, file: StaticString = #filePath, line: UInt = #line) async throws {
            XCTAssertEqual(verifier.policy.version, 3, what, file: file, line: line)
            let shown = try await admin.show()
            XCTAssertEqual(shown.policyVersion, 3, what, file: file, line: line)
            XCTAssertEqual(shown.source, v3, what, file: file, line: line)
            let v = try await vmm.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
            XCTAssertEqual(v.policyVersion, 3, what, file: file, line: line)
            XCTAssertEqual(v.decision, .deny, what, file: file, line: line)
        }
        func assertRefused(_ bundle: [UInt8], _ expected: String..., file: StaticString = #filePath, line: UInt = #line) async throws {
            do {
                _ = try await admin.push(bundle: bundle)
                XCTFail("accepted; expected refusal containing '\(expected)'", file: file, line: line)
            } catch AdminClientError.server(let code, let message) {
                XCTAssertEqual(code, .badRequest, file: file, line: line)
                for e in expected { XCTAssertTrue(message.contains(e), message, file: file, line: line) }
            }
            try await assertUnchanged(expected.joined(separator: ", "), file: file, line: line)
        }

        // Lower and equal versions: rollback refused.
        try await assertRefused(try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 1)), "admin.rollback")
        try await assertRefused(try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 3)), "admin.rollback")
        // Another key, even with a newer version.
        try await assertRefused(try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 9), signedBy: AdminKeys.other), "bundle.signature")
        // Tampered: one policy byte changed after signing ("allow" → "allov" would not parse; flip
        // the version digit so the text is still a valid policy).
        var tampered = try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 4))
        let text = Array(try PolicyFixtures.text(id: "swap", version: 4).utf8)
        let digit = 12 + text.indices.first { i in text[i...].starts(with: Array("version 4".utf8)) }! + 8
        XCTAssertEqual(tampered[digit], UInt8(ascii: "4"))
        tampered[digit] = UInt8(ascii: "8")
        try await assertRefused(tampered, "bundle.signature", "the policy was modified")  // a policy, not a module
        // Tampered signature byte, truncated bundle, trailing garbage.
        var badSig = try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 5))
        badSig[badSig.count - 10] ^= 0x01
        try await assertRefused(badSig, "bundle.signature")
        let good = try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 6))
        try await assertRefused(Array(good.dropLast(7)), "bundle.malformed")
        try await assertRefused(good + [0], "bundle.malformed")
        try await assertRefused(Array("execgate-policy 1\n".utf8), "bundle.malformed")
        // Correctly signed, but not a valid policy: refused with line and column.
        let malformed = try PolicyFixtures.text(id: "swap", version: 7, body: "modules allow\nmodules perhaps")
        let badLine = malformed.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0 == "modules perhaps" }! + 1
        try await assertRefused(try AdminKeys.bundle(malformed), "pushed-bundle:\(badLine):9: error: 'perhaps' is not deny, allow, hash-pinned or audit-only")

        // HOLE (round 12): a policy trusting the admin certificate as a module signer, which
        // `serve` refuses at boot, activated when pushed: the admin key then signed loadable
        // modules. Refused as at boot (deployment.md, "The admin key").
        // So is one trusting another certificate of the admin key (a reissue: new serial and
        // subject, the same key; a module signature is verified with the anchor's key).
        let reissued = try AdminKeys.adminKey.reissued(commonName: "Module signer (the admin key again)").load().1
        XCTAssertNotEqual(reissued.fingerprint, AdminKeys.admin.1.fingerprint)
        for cert in [AdminKeys.admin.1, reissued] {
            let trustsAdmin = try PolicyFixtures.text(id: "swap", version: 8).replacingOccurrences(of: "audit-overflow block",
                with: "trust sha256:\(cert.fingerprint.hex)\n\(cert.pem.split(separator: "\n").joined(separator: "\n"))\naudit-overflow block")
            XCTAssertTrue(try PolicyParser.parse(Array(trustsAdmin.utf8), file: "t", builtinAnchors: nil).trust.anchors.contains { $0.fingerprint == cert.fingerprint })
            try await assertRefused(try AdminKeys.bundle(trustsAdmin), "bundle.policy", "a certificate of the admin key")
        }

        // Every refusal is in the audit trail.
        audit.flush()
        let refusals = audit.read(after: 0, limit: 1000).records.filter { $0.contains("\"event\":\"policy-push-refused\"") }
        // Eleven refusals, all counted, recorded up to the burst of 10 (AuditLimits.refusedPushBurst)
        // plus the bucket's refill while they ran (one a second: on a loaded machine the eleven
        // took over a second once, and the eleventh was recorded too; AuditTests asserts the
        // limit itself with 20,000 refusals).
        XCTAssertEqual(audit.counters.refusedPushes, 11)
        XCTAssertGreaterThanOrEqual(refusals.count, Int(AuditLimits.refusedPushBurst), "a refusal within the burst went unrecorded")
        XCTAssertLessThanOrEqual(refusals.count, 11)
        // Each names what was refused: the two rollbacks (v1, then a v3 that is not the v3 in
        // force) by their bundles' digests and the pushed versions.
        for (i, version) in [(0, 1), (1, 3)] {
            let digest = Hex.encode(PolicySummary.sha256(try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: UInt64(version)))))
            XCTAssertTrue(refusals[i].contains("[bundle sha256:\(digest), ") && refusals[i].contains("policy swap v\(version)]"), refusals[i])
        }
        XCTAssertTrue(refusals.allSatisfy { $0.contains("[bundle sha256:") }, "\(refusals)")
        // And a good push still works afterwards.
        let v10 = try await admin.push(bundle: try AdminKeys.bundle(try PolicyFixtures.text(id: "swap", version: 10)))
        XCTAssertEqual(v10.previousVersion, 3)
        let after = try await vmm.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
        XCTAssertEqual(after.decision, .allow)
        XCTAssertEqual(after.policyVersion, 10)
        await admin.close()
        await vmm.close()
    }

    /// The admin port answers VMM requests `unknown-message-type`, and the VMM port answers admin
    /// requests the same way: neither port does the other's job.
    func testPortsDoNotServeEachOthersMessages() async throws {
        let vmm = try await ExecGateClient.connect(to: vmmEndpoint)
        let reply = try await vmm.sendFrame(Frame(type: AdminMessageType.policyPush, requestID: 77,
                                                  body: PolicyPush(bundle: try AdminKeys.bundle(try PolicyFixtures.text(version: 50))).encode()))
        guard case .error(let e) = reply else { return XCTFail("\(reply)") }
        XCTAssertEqual(e.code, .unknownMessageType)
        XCTAssertEqual(verifier.policy.version, 1)
        await vmm.close()

        let admin = try await AdminClient.connect(to: adminEndpoint)
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        var w = TLVWriter()
        AuthorizeModule(module: ByteBuffer(bytes: module)).encode(into: &w)
        do {
            _ = try await admin.request(.authorizeModule, w.buffer)
            XCTFail("the admin port answered a verdict")
        } catch AdminClientError.server(let code, _) {
            XCTAssertEqual(code, .unknownMessageType)
        }
        // Admin reads work on the admin port.
        let page = try await admin.auditRead(afterSeq: 0)
        XCTAssertTrue(page.records.isEmpty || page.records.allSatisfy { $0.hasPrefix("{\"time\":") })
        await admin.close()
    }
}
