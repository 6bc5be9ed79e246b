// SPDX-License-Identifier: Apache-2.0
//
// Peers round 6 on the admin port (`execgate serve --admin-listen`, the service VM's vsock 5001):
// keyless peers holding every admin connection open against an operator's signed push.

import _ExecGateInternals
import ExecGateAdmin
import ExecGateSignature
import ExecGateTestSupport
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PeersRound6AdminTests: XCTestCase {
    var dir = ""
    var pid: pid_t = -1

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    /// serve with an admin certificate; returns (VMM socket, admin socket).
    func startServe() throws -> (String, String) {
        dir = Fixtures.temporaryDirectory()
        try ServeFixture.adminKey(in: dir, commonName: "round 6 admin")
        let serve = ServeFixture.start(in: dir, ["--admin-cert", dir + "/admin.pem"])
        pid = serve.pid
        return (serve.vmm, serve.admin)
    }

    func signedBundle(version: Int) throws -> String {
        let cert = try Fixtures.debianCertificates()[0]
        let text = "execgate-policy 1\nid round6\nversion \(version)\nmode enforce\ntrust sha256:\(cert.fingerprint.hex)\n\(cert.pem)\nmodules allow\n"
        try Fixtures.writeFile(dir + "/p\(version).policy", Array(text.utf8))
        let signed = Fixtures.runExecgate(["policy", "sign", "--key", dir + "/admin-key.pem", "--cert", dir + "/admin.pem",
                                           dir + "/p\(version).policy", "-o", dir + "/p\(version).bundle"])
        XCTAssertEqual(signed.status, 0, signed.stderr)
        return dir + "/p\(version).bundle"
    }

    /// A keyless admin connection that asked policy-show once and was answered.
    func keylessHolder(_ admin: String, _ i: Int) throws -> SocketPeer {
        let p = try XCTUnwrap(SocketPeer(path: admin))
        var frame = ByteBuffer()
        frame.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: UInt64(i), body: ByteBuffer()))
        XCTAssertTrue(p.writeAll(Array(buffer: frame)))
        XCTAssertEqual(p.readFrame(timeout: 10)?.type.rawValue, 0x8011, "policy-show not answered")
        return p
    }

    /// HOLE: 16 keyless connections (the admin port's limit, AdminLimits.maximumConnections),
    /// each answered a policy-show and then quiet (a peer keeps them by asking again every < 30 s,
    /// the idle deadline), left the operator's signed push closed at accept: nothing can be pushed
    /// for as long as a host process without the key keeps them (PeersRound5AdminTests measured
    /// the hold; docs/trust.md "Ports" recorded it as a residual). Now a connection that finds the
    /// port full takes the slot of a connection that has pushed no authenticated bundle (since
    /// Review6Tests: the longest open, at least AdminLimits.evictableAgeNanoseconds old, no request
    /// in progress), which is closed; the push goes through.
    func testIdleKeylessConnectionsDoNotLockOutASignedPush() throws {
        let (_, admin) = try startServe()
        let bundle = try signedBundle(version: 2)
        var holders: [SocketPeer] = []
        for i in 0..<AdminLimits.maximumConnections { holders.append(try keylessHolder(admin, i)) }
        usleep(1_500_000)  // quiet, as between a holder's keep-alive requests
        let pushed = Fixtures.runExecgate(["policy", "push", bundle, "--connect", "unix:" + admin])
        XCTAssertEqual(pushed.status, 0, "the signed push was locked out: \(pushed.stderr)")
        usleep(500_000)
        let evicted = holders.filter { $0.closedByPeer() }.count
        XCTAssertGreaterThanOrEqual(evicted, 1, "no idle keyless connection was closed")
        // The policy in force is the pushed one.
        let show = Fixtures.runExecgate(["policy", "show", "--connect", "unix:" + admin])
        XCTAssertEqual(show.status, 0, show.stderr)
        XCTAssertTrue(show.stdout.contains("round6"), show.stdout)
    }

    /// The rule takes only keyless idle connections: the operator's connection that pushed an
    /// activated bundle keeps its slot however long it is quiet, while new connections keep
    /// arriving at the cap (each takes a keyless holder's slot, the oldest first).
    func testAConnectionThatPushedASignedBundleIsNeverTaken() throws {
        let (_, admin) = try startServe()
        let operatorPeer = try XCTUnwrap(SocketPeer(path: admin))
        var push = ByteBuffer()
        push.writeFrame(Frame(type: MessageType(rawValue: 0x0010), requestID: 1,
                              body: PolicyPush(bundle: try Fixtures.readFile(try signedBundle(version: 2))).encode()))
        XCTAssertTrue(operatorPeer.writeAll(Array(buffer: push)))
        XCTAssertEqual(operatorPeer.readFrame(timeout: 20)?.type.rawValue, 0x8010, "the signed push was not activated")
        var holders: [SocketPeer] = []
        for i in 1..<AdminLimits.maximumConnections { holders.append(try keylessHolder(admin, i)) }
        usleep(1_500_000)
        // 15 newcomers, each at the cap: every keyless holder goes, the operator stays.
        var newcomers: [SocketPeer] = []
        for i in 0..<AdminLimits.maximumConnections - 1 {
            newcomers.append(try XCTUnwrap(SocketPeer(path: admin)))
            usleep(100_000)
            _ = i
        }
        usleep(500_000)
        XCTAssertEqual(holders.filter { $0.closedByPeer() }.count, holders.count, "a keyless holder kept its slot")
        XCTAssertFalse(operatorPeer.closedByPeer(), "the connection that pushed a signed bundle was taken")
        var show = ByteBuffer()
        show.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: 2, body: ByteBuffer()))
        XCTAssertTrue(operatorPeer.writeAll(Array(buffer: show)))
        XCTAssertEqual(operatorPeer.readFrame(timeout: 10)?.type.rawValue, 0x8011)
        // The next one takes the least recently active: the first newcomer (quiet since it came).
        let late = try XCTUnwrap(SocketPeer(path: admin))
        usleep(500_000)
        XCTAssertFalse(late.closedByPeer())
        XCTAssertTrue(newcomers[0].closedByPeer(), "not the least recently active connection was taken")
        XCTAssertEqual(newcomers.filter { $0.closedByPeer() }.count, 1)
        XCTAssertFalse(operatorPeer.closedByPeer())
    }
}
