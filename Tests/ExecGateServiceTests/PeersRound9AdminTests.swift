// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 9, on the admin port: holding its slots with replies never read.

import _ExecGateInternals
import ExecGateAdmin
import ExecGateTestSupport
import ExecGateWire
import Foundation
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PeersRound9AdminTests: XCTestCase {
    var pid: pid_t = -1

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    /// Attack (failed; kept): hold the admin port's 16 slots with requests "in progress" that cost
    /// the server nothing. A connection is evictable only with no request in progress, and an
    /// in-flight slot is held until its reply is *written*: so each keyless connection pipelines
    /// 4,000 policy-show requests and reads nothing until its socket buffer and the server's
    /// 64 KiB are full of replies (the next reply waits for the peer), then reads 4 KiB every
    /// 3 s — less often than the write stall, so a write completes now and then and the
    /// connection is never closed for stalling, and the request behind it starts and waits at
    /// once. Why it fails: what eviction counts as in progress is a request being judged (begun
    /// on the pool, ended when its judgment completes), not a reply waiting for its reader, so
    /// these connections are evictable like idle ones and the operator's signed push takes the
    /// oldest one's slot.
    func testUnreadRepliesDoNotKeepKeylessAdminSlots() throws {
        let dir = Fixtures.temporaryDirectory()
        try ServeFixture.adminKey(in: dir, commonName: "round 9 admin")
        let serve = ServeFixture.start(in: dir, ["--admin-cert", dir + "/admin.pem"])
        pid = serve.pid
        let cert = try Fixtures.debianCertificates()[0]
        let text = "execgate-policy 1\nid round9\nversion 2\nmode enforce\ntrust sha256:\(cert.fingerprint.hex)\n\(cert.pem)\nmodules allow\n"
        try Fixtures.writeFile(dir + "/p.policy", Array(text.utf8))
        let signed = Fixtures.runExecgate(["policy", "sign", "--key", dir + "/admin-key.pem", "--cert", dir + "/admin.pem",
                                           dir + "/p.policy", "-o", dir + "/p.bundle"])
        XCTAssertEqual(signed.status, 0, signed.stderr)
        var burst = ByteBuffer()
        for i in 0..<4000 { burst.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: UInt64(i), body: ByteBuffer())) }
        let bytes = Array(buffer: burst)
        var peers: [SocketPeer] = []
        for _ in 0..<AdminLimits.maximumConnections {
            let p = try XCTUnwrap(SocketPeer(path: serve.admin))
            var flags = fcntl(p.fd, F_GETFL); flags |= O_NONBLOCK; _ = fcntl(p.fd, F_SETFL, flags)
            peers.append(p)
        }
        let stop = NSLock()
        final class Flag: @unchecked Sendable { var on = false }
        let stopped = Flag()
        let held = peers
        let readers = Thread {
            let peers = held
            var chunk = [UInt8](repeating: 0, count: 4096)
            var sent = [Int](repeating: 0, count: peers.count)
            var lastRead = now()
            while true {
                stop.lock(); let s = stopped.on; stop.unlock()
                if s { return }
                for (i, p) in peers.enumerated() where sent[i] < bytes.count {
                    let n = bytes.withUnsafeBytes { send(p.fd, $0.baseAddress! + sent[i], bytes.count - sent[i], Int32(MSG_NOSIGNAL)) }
                    if n > 0 { sent[i] += n }
                }
                if now() - lastRead > 3 {
                    lastRead = now()
                    for p in peers { _ = chunk.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, 4096, Int32(MSG_DONTWAIT)) } }
                }
                usleep(20_000)
            }
        }
        readers.start()
        defer { stop.lock(); stopped.on = true; stop.unlock() }
        sleep(4)  // every slot older than 1 s, its socket full of unread replies
        let pushed = Fixtures.runExecgate(["policy", "push", dir + "/p.bundle", "--connect", "unix:" + serve.admin])
        XCTAssertEqual(pushed.status, 0, "the signed push was locked out by keyless connections holding unread replies: \(pushed.stderr)")
        let show = Fixtures.runExecgate(["policy", "show", "--connect", "unix:" + serve.admin])
        XCTAssertTrue(show.stdout.contains("round9"), "the pushed policy is not in force: \(show.stdout) \(show.stderr)")
    }
}
