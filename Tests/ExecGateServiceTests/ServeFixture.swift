// SPDX-License-Identifier: Apache-2.0
//
// `execgate serve` in a child process on two Unix sockets, as the peer and admin-port tests start
// it (one helper instead of a copy of the spawn-and-wait in each of them).

import ExecGateSignature
import ExecGateTestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

enum ServeFixture {
    /// Starts `execgate serve --listen unix:DIR/vmm.sock --admin-listen unix:DIR/admin.sock EXTRA…
    /// --log-level critical` (stdout and stderr to `DIR/out`, `DIR/err`) and waits up to 10 s for
    /// both sockets to accept. `up` is false when they did not (the caller decides whether that
    /// fails the test); the process is the caller's to kill either way.
    static func start(in dir: String, _ extra: [String]) -> (pid: pid_t, vmm: String, admin: String, up: Bool) {
        let vmm = dir + "/vmm.sock", admin = dir + "/admin.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + vmm, "--admin-listen", "unix:" + admin] + extra + ["--log-level", "critical"],
                                         stdoutPath: dir + "/out", stderrPath: dir + "/err")
        XCTAssertGreaterThan(pid, 0)
        for _ in 0..<100 {
            if SocketPeer(path: vmm) != nil && SocketPeer(path: admin) != nil { return (pid, vmm, admin, true) }
            usleep(100_000)
        }
        return (pid, vmm, admin, false)
    }

    /// A new operator admin key in `dir` (`admin-key.pem`, `admin.pem`) for `serve --admin-cert DIR/admin.pem`.
    @discardableResult
    static func adminKey(in dir: String, commonName: String) throws -> GeneratedSigningKey {
        let key = try GeneratedSigningKey.generateRSA(bits: 2048, commonName: commonName)
        try Fixtures.writeFile(dir + "/admin-key.pem", key.privateKeyPEM)
        try Fixtures.writeFile(dir + "/admin.pem", key.certificatePEM)
        return key
    }
}
