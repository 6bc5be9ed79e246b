// SPDX-License-Identifier: Apache-2.0
//
// End to end: QEMU (TCG here) boots the real service VM image with a vhost-user-vsock device bound
// to `execgate vsock-backend`; the host client speaks to the in-guest verifier over `hybrid:`.
// Needs `make image` and the execgate binary (`swift build --build-tests`). The class name ends in
// BootTests so that scripts/run-tests.sh runs it in the guest-booting phase, which sets
// EXECGATE_VM_TEST=1, which turns a missing image into a failure instead of a skip.
//
// One boot serves every check (a TCG boot costs ~10–15 s here), then QEMU is killed mid-request,
// rebooted against the same backend, and finally the backend is killed mid-request.

import ExecGateClient
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest
@testable import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#endif

final class VhostUserVsockBootTests: XCTestCase {
    func config() throws -> VMConfig {
        let imageDir = Fixtures.packageRoot + "/Images/out"
        let paths: (kernel: String, initrd: String)
        do { paths = try VMConfig.imagePaths(imageDir: imageDir, test: false) } catch { try VMTestInputs.missing("\(error)") }
        if Subprocess.which("qemu-system-x86_64") == nil { try VMTestInputs.missing("qemu-system-x86_64 not installed") }
        guard access(Fixtures.execgateBinary, X_OK) == 0 else { try VMTestInputs.missing("no execgate binary at \(Fixtures.execgateBinary): swift build --build-tests") }
        // Short state path: sockaddr_un holds 107 bytes, and guest→host sockets append "_<port>".
        let state = "/tmp/egv-e2e-\(getpid())"
        var c = VMConfig(stateDir: state, kernel: paths.kernel, initrd: paths.initrd)
        c.name = "vsock-e2e-\(getpid())"
        c.accel = Accelerator.detect()
        c.readyTimeoutSeconds = 90
        c.vsockBackendCommand = [Fixtures.execgateBinary, "vsock-backend"]
        c.vhostVsockDevice = "/nonexistent/vhost-vsock"  // Always the vhost-user path, even where vhost-vsock exists.
        return c
    }

    static func now() -> Double {
        var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func authorizeRequest(_ bytes: [UInt8]) -> (AuthorizeModule, [UInt8]) {
        let req = AuthorizeModule(module: ByteBuffer(bytes: bytes))
        // The request digest of the body sent (docs/protocol.md: the module replaced by its digest).
        return (req, Verifier.requestDigest(authorizeModuleBody: Message.authorizeModule(req).encodeBody()) ?? [])
    }

    func testServiceVMOverVhostUserVsock() async throws {
        var c = try config()
        defer { _ = Launcher.stop(c); VsockBackendProcess.stop(c) }
        let started = try Launcher.start(c, log: { print($0) })
        print("ready \(started.address) in \(started.bootMillis) ms")
        XCTAssertEqual(started.address, "hybrid:\(c.hybridSocket):5000")
        XCTAssertTrue(started.reachableFromHost)
        let status = Launcher.status(c)
        XCTAssertEqual(status.address, started.address)
        XCTAssertTrue(status.reachableFromHost)
        let endpoint = try Endpoint(parsing: started.address, listening: false)

        // 1. Real Debian modules, a tampered one, and a multi-megabyte one: same verdicts as in-process.
        let verifier = Verifier(policy: Policy.builtIn(trust: try Fixtures.debianTrust()), serverName: "in-process")
        // Inputs first, then connect: the server drops a connection idle for 30 s
        // (TransportLimits.idleTimeout), and reading files is not traffic.
        var modules = try Fixtures.sampleModules(6).map { ($0, try Fixtures.readFile($0)) }
        var tampered = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
        tampered[tampered.count / 3] ^= 0x01
        modules.append(("tampered vsock.ko", tampered))
        // The first module above 3 MiB, found by its size on disk (not by reading all 4,023).
        let bigPath = try Fixtures.allModules().first { p in
            var st = stat()
            return stat(p, &st) == 0 && Int(st.st_size) > 3 << 20
        }
        let bigModule = (try XCTUnwrap(bigPath, "no module above 3 MiB in the fixture kernel"), try Fixtures.readFile(bigPath!))
        modules.append(bigModule)
        let client = try await ExecGateClient.connect(to: endpoint, timeout: 60)
        for (name, bytes) in modules {
            let (req, digest) = authorizeRequest(bytes)
            let remote = try await client.authorize(req)
            let local = verifier.authorize(req, requestDigest: digest)
            XCTAssertEqual(remote.decision, local.decision, name)
            XCTAssertEqual(remote.reason, local.reason, name)
            XCTAssertEqual(remote.moduleDigest, local.moduleDigest, name)
            XCTAssertEqual(remote.requestDigest, digest, "\(name): the guest judged different bytes")
            print("\(name) (\(bytes.count) bytes): \(remote.decision) \(remote.reason)")
        }
        let tamperedVerdict = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: tampered)))
        XCTAssertEqual(tamperedVerdict.decision, .deny)
        XCTAssertGreaterThan(bigModule.1.count, 3 << 20)

        // 2. Malformed frames are answered with errors; the connection stays usable.
        guard case .error(let e1) = try await client.sendFrame(Frame(type: .authorizeModule, requestID: client.allocateID(), body: ByteBuffer(bytes: [0, 1, 0]))) else {
            return XCTFail("malformed body not answered with an error")
        }
        XCTAssertEqual(e1.code, .malformedBody)
        guard case .error(let e2) = try await client.sendFrame(Frame(type: MessageType(rawValue: 0x77), requestID: client.allocateID(), body: ByteBuffer())) else {
            return XCTFail("unknown type not answered with an error")
        }
        XCTAssertEqual(e2.code, .unknownMessageType)
        let stillServing = try await client.status().state
        XCTAssertEqual(stillServing, "serving")

        // 3. 32 concurrent connections, each with its own requests.
        let small = modules[0].1
        let smallExpected = verifier.authorize(authorizeRequest(small).0, requestDigest: []).decision
        let t0 = Self.now()
        let wrong = try await withThrowingTaskGroup(of: Int.self) { g in
            for _ in 0..<32 {
                g.addTask {
                    let c = try await ExecGateClient.connect(to: endpoint, timeout: 120)
                    defer { Task { await c.close() } }
                    var bad = 0
                    if try await c.status().state != "serving" { bad += 1 }
                    if try await c.authorize(AuthorizeModule(module: ByteBuffer(bytes: small))).decision != smallExpected { bad += 1 }
                    await c.close()
                    return bad
                }
            }
            var n = 0
            for try await b in g { n += b }
            return n
        }
        XCTAssertEqual(wrong, 0)
        print("32 concurrent connections: \(String(format: "%.2f", Self.now() - t0)) s")

        // 4. Figures through the backend.
        let bench = Fixtures.runExecgate(["vsock-bench", "--connect", started.address, "--round-trips", "200", "--bulk-mib", "8", "--bulk-frames", "2", "--json"])
        XCTAssertEqual(bench.status, 0, bench.stderr)
        print("FIGURES vsock-bench: \(bench.stdout)")

        // 5. The guest dies mid-request (QEMU killed): the client fails promptly; the backend lives.
        let backendPid = try XCTUnwrap(Int32(try String(decoding: Fixtures.readFile(c.vsockBackendPidFile), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
        let qemuPid = try XCTUnwrap(Launcher.runningPid(c))
        let t1 = Self.now()
        async let inFlight: [Bool] = withTaskGroup(of: Bool.self) { g in
            for _ in 0..<3 {
                g.addTask { (try? await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: bigModule.1)))) != nil }
            }
            var r: [Bool] = []
            for await x in g { r.append(x) }
            return r
        }
        usleep(150_000)
        kill(qemuPid, SIGKILL)
        let results = await inFlight
        let failedAfter = Self.now() - t1
        print("QEMU killed mid-request: \(results) after \(String(format: "%.2f", failedAfter)) s")
        XCTAssertTrue(results.contains(false), "some request should have been cut off")
        XCTAssertLessThan(failedAfter, 10, "the client must fail promptly, not hang")
        await client.close()
        XCTAssertTrue(Subprocess.isAlive(backendPid, argument: c.vhostUserSocket), "the backend must survive QEMU going away")
        // With no guest, a new host client fails within the connect timeout (no hang).
        let t2 = Self.now()
        do {
            let orphan = try await ExecGateClient.connect(to: endpoint, timeout: 10)
            _ = try? await orphan.status()
            await orphan.close()
        } catch {}
        XCTAssertLessThan(Self.now() - t2, 8)

        // 6. A new QEMU attaches to the same backend and is served.
        for _ in 0..<100 where Subprocess.isAlive(qemuPid, argument: c.processArgument) { usleep(50_000) }
        FS.remove(c.consoleLog); FS.remove(c.pidFile)
        let qemu = try Launcher.findQEMU(c.qemu)
        let parent = try Subprocess.spawn(c.qemuArguments(qemuPath: qemu, vhost: false, vhostUser: true) + ["-daemonize", "-pidfile", c.pidFile], outputPath: c.qemuLog)
        XCTAssertEqual(Subprocess.wait(parent, timeoutMillis: 30_000), 0, FS.tail(c.qemuLog))
        let pid2 = try XCTUnwrap(Launcher.readPid(c.pidFile))
        _ = try Launcher.waitForReady(c, pid: pid2, timeoutSeconds: 90)
        let again = try await ExecGateClient.connect(to: endpoint, timeout: 60)
        let secondState = try await again.status().state
        XCTAssertEqual(secondState, "serving")
        print("second QEMU served by the same backend (pid \(backendPid))")

        // 7. The backend dies mid-request: the client fails promptly.
        let t3 = Self.now()
        async let inFlight2: Bool = (try? await again.authorize(AuthorizeModule(module: ByteBuffer(bytes: bigModule.1)))) != nil
        usleep(100_000)
        kill(backendPid, SIGKILL)
        let ok2 = await inFlight2
        print("backend killed mid-request: reply=\(ok2) after \(String(format: "%.2f", Self.now() - t3)) s")
        XCTAssertLessThan(Self.now() - t3, 10)
        do {
            _ = try await again.status()
            XCTFail("a request after the backend died must fail")
        } catch {}
        await again.close()
        _ = Subprocess.wait(backendPid, timeoutMillis: 2000)
        c.vsockBackendCommand = nil
    }
}
