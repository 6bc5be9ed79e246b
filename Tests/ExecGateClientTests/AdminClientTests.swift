// SPDX-License-Identifier: Apache-2.0
//
// AdminClient (built on ExecGateClient) against a real AdminServer + PolicyAdministrator, over
// unix: and over hybrid: (the admin port of a sidecar behind a hybrid vsock backend, which the
// admin client used to refuse): show, push of a real CMS-signed bundle, audit-read, and the
// refusals an operator must see as `.server` errors — another key, a replay, a lower version.

import ExecGateAdmin
import ExecGateClient
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import NIOPosix
import XCTest

final class AdminClientTests: XCTestCase {
    /// RSA-2048: quick to generate, and the bundle code is key-size agnostic.
    static let admin: (PrivateKey, Certificate) = try! GeneratedSigningKey.generateRSA(bits: 2048, commonName: "admin client test").load()
    static let other: (PrivateKey, Certificate) = try! GeneratedSigningKey.generateRSA(bits: 2048, commonName: "not the admin").load()

    var verifier: Verifier!
    var audit: AuditLog!
    var adminServer: AdminServer!
    var hybrid: HybridBackendStandIn!
    var unixEndpoint: Endpoint!
    var hybridEndpoint: Endpoint!

    override func setUp() async throws {
        verifier = Verifier(policy: Policy.builtIn(trust: try Fixtures.debianTrust()))
        audit = AuditLog()
        verifier.auditSink = audit
        let administrator = PolicyAdministrator(verifier: verifier, adminCertificate: Self.admin.1,
                                                builtinAnchors: try Fixtures.debianCertificates(), audit: audit)
        administrator.recordBoot()
        adminServer = AdminServer(administrator: administrator, group: MultiThreadedEventLoopGroup.singleton)
        let dir = Fixtures.temporaryDirectory()
        unixEndpoint = .unix(path: dir + "/admin.sock")
        try await adminServer.bind(unixEndpoint)
        hybrid = try await HybridBackendStandIn(path: dir + "/vsock.sock", routes: [5001: dir + "/admin.sock"])
        hybridEndpoint = try Endpoint(parsing: "hybrid:\(dir)/vsock.sock:5001", listening: false)
    }

    override func tearDown() async throws {
        await hybrid.shutdown()
        await adminServer.shutdown()
        audit.close()
    }

    func policy(version: UInt64, deny name: String) -> String {
        """
        execgate-policy 1
        id admin-client-test
        version \(version)
        mode enforce
        trust kernel-builtin
        minimum-digest sha256
        end-state signature-only
        audit-overflow block
        deny module-name \(name)
        modules allow
        text-patches allow
        ebpf-jit deny

        """
    }

    func bundle(version: UInt64, deny name: String = "vsock", signedBy key: (PrivateKey, Certificate) = admin) throws -> [UInt8] {
        try PolicyBundle.seal(policy: Array(policy(version: version, deny: name).utf8), signer: try ModuleSigner(key: key.0, certificate: key.1))
    }

    func refusal(_ client: AdminClient, _ bundle: [UInt8], file: StaticString = #filePath, line: UInt = #line) async -> String {
        do {
            let r = try await client.push(bundle: bundle)
            XCTFail("accepted: \(r.policyID) v\(r.policyVersion)", file: file, line: line)
            return ""
        } catch AdminClientError.server(_, let message) {
            return message
        } catch {
            XCTFail("expected a refusal from the server, got \(error)", file: file, line: line)
            return ""
        }
    }

    func testShowAndPushOverHybridThenUnix() async throws {
        let overHybrid = try await AdminClient.connect(to: hybridEndpoint)
        let before = try await overHybrid.show()
        XCTAssertEqual(before.policyVersion, 1)

        let pushed = try await overHybrid.push(bundle: try bundle(version: 2))
        XCTAssertEqual(pushed.policyID, "admin-client-test")
        XCTAssertEqual(pushed.policyVersion, 2)
        XCTAssertEqual(pushed.previousVersion, 1)
        XCTAssertEqual(verifier.policy.version, 2, "the verifier judges with the pushed policy")
        XCTAssertTrue(verifier.policy.deniedModuleNames.contains("vsock"))

        // The same server over unix: sees the new policy; a second connection works alongside.
        let overUnix = try await AdminClient.connect(to: unixEndpoint)
        let shown = try await overUnix.show()
        XCTAssertEqual(shown.policyID, "admin-client-test")
        XCTAssertEqual(shown.policyVersion, 2)

        // audit-read over hybrid: the boot record and the activation.
        let page = try await overHybrid.auditRead(afterSeq: 0)
        XCTAssertTrue(page.records.contains { $0.contains("admin-client-test") }, "\(page.records)")
        await overHybrid.close()
        await overUnix.close()
        await overUnix.close()  // idempotent
    }

    /// Reaching the admin port is not enough: the key, the version order and replay all hold over
    /// hybrid exactly as over unix, and every refusal leaves the policy in force unchanged.
    func testForbidsWrongKeyReplayAndDowngradeOverHybrid() async throws {
        let client = try await AdminClient.connect(to: hybridEndpoint)
        let wrongKey = await refusal(client, try bundle(version: 5, signedBy: Self.other))
        XCTAssertFalse(wrongKey.isEmpty)
        XCTAssertEqual(verifier.policy.version, 1)

        let v3 = try bundle(version: 3)
        _ = try await client.push(bundle: v3)
        let replay = await refusal(client, v3)
        XCTAssertFalse(replay.isEmpty)
        let downgrade = await refusal(client, try bundle(version: 2, deny: "crc7"))
        XCTAssertFalse(downgrade.isEmpty)
        var tampered = try bundle(version: 4)
        tampered[tampered.count / 2] ^= 0x01
        _ = await refusal(client, tampered)
        let shown = try await client.show()
        XCTAssertEqual(shown.policyVersion, 3)
        print("refusals: wrong key: \(wrongKey); replay: \(replay); downgrade: \(downgrade)")
        await client.close()
    }

    func testUnreachableAdminPortFailsToConnect() async throws {
        let dir = Fixtures.temporaryDirectory()
        do {
            let c = try await AdminClient.connect(to: .unix(path: dir + "/nobody.sock"))
            await c.close()
            XCTFail("connected to a socket nobody listens on")
        } catch {}
        do {
            let c = try await AdminClient.connect(to: try Endpoint(parsing: "hybrid:\(dir)/nobody.sock:5001", listening: false))
            await c.close()
            XCTFail("connected to a hybrid socket nobody listens on")
        } catch {}
    }
}
