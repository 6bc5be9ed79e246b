// SPDX-License-Identifier: Apache-2.0
//
// Review round 6 of the admin port's eviction of keyless connections (AdminConnections.evict):
// a host process without the admin key holding every admin connection against an operator's
// signed push (docs/trust.md "Ports": "Keyless connections cannot lock out a push").

import _ExecGateInternals
import ExecGateAdmin
import ExecGateSignature
import ExecGateTestSupport
import ExecGateWire
import Foundation
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class Review6Tests: XCTestCase {
    var pid: pid_t = -1

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    /// A keyless peer's connections, each asking policy-show again every `period` on a thread
    /// of its own until `stop`.
    final class Keeper: @unchecked Sendable {
        let peers: [SocketPeer]
        private let lock = NSLock()
        private var stopped = false
        private var threads: [Thread] = []
        init(_ peers: [SocketPeer]) { self.peers = peers }
        func start(period: useconds_t) {
            for (i, p) in peers.enumerated() {
                let t = Thread { [self] in
                    var id = UInt64(1000 * (i + 1))
                    while !self.isStopped {
                        id += 1
                        var frame = ByteBuffer()
                        frame.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: id, body: ByteBuffer()))
                        guard p.writeAll(Array(buffer: frame)), p.readFrame(timeout: 5) != nil else { return }
                        usleep(period)
                    }
                }
                threads.append(t)
                t.start()
            }
        }
        var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
        func stop() { lock.lock(); stopped = true; lock.unlock(); usleep(500_000) }
    }

    /// HOLE: the eviction took only connections idle for 1 s, so a keyless peer whose 16
    /// connections each ask policy-show every 300 ms (never idle, no request in progress between
    /// its requests, no frame deadline: every frame completes at once) held the admin port
    /// indefinitely: the operator's signed push was closed at accept ("none idle"), the lock-out
    /// PeersRound6AdminTests' fix promised to end, at a cost of 53 tiny requests a second.
    func testKeylessConnectionsKeptBusyDoNotLockOutASignedPush() throws {
        let dir = Fixtures.temporaryDirectory()
        try ServeFixture.adminKey(in: dir, commonName: "review 6 admin")
        let serve = ServeFixture.start(in: dir, ["--admin-cert", dir + "/admin.pem"])
        pid = serve.pid
        let admin = serve.admin
        let cert = try Fixtures.debianCertificates()[0]
        let text = "execgate-policy 1\nid review6\nversion 2\nmode enforce\ntrust sha256:\(cert.fingerprint.hex)\n\(cert.pem)\nmodules allow\n"
        try Fixtures.writeFile(dir + "/p.policy", Array(text.utf8))
        let signed = Fixtures.runExecgate(["policy", "sign", "--key", dir + "/admin-key.pem", "--cert", dir + "/admin.pem",
                                           dir + "/p.policy", "-o", dir + "/p.bundle"])
        XCTAssertEqual(signed.status, 0, signed.stderr)

        var peers: [SocketPeer] = []
        for _ in 0..<AdminLimits.maximumConnections { peers.append(try XCTUnwrap(SocketPeer(path: admin))) }
        let keeper = Keeper(peers)
        keeper.start(period: 300_000)
        defer { keeper.stop() }
        usleep(1_500_000)  // every holder open for more than 1 s, none idle for 1 s
        let pushed = Fixtures.runExecgate(["policy", "push", dir + "/p.bundle", "--connect", "unix:" + admin])
        XCTAssertEqual(pushed.status, 0, "the signed push was locked out by keyless connections kept busy: \(pushed.stderr)")
        keeper.stop()
        let show = Fixtures.runExecgate(["policy", "show", "--connect", "unix:" + admin])
        XCTAssertTrue(show.stdout.contains("review6"), "the pushed policy is not in force: \(show.stdout) \(show.stderr)")
    }
}
