// SPDX-License-Identifier: Apache-2.0
//
// The service VM at a small RAM (ServiceVM/README.md, "Memory budget"): the guest derives its
// request budget from the memory it has, tells the VMM in hello, refuses a module it cannot hold
// with a precise frame-too-large before buffering it, and keeps serving; the kernel's OOM killer
// never runs. A boot test (needs `make image`; EXECGATE_VM_TEST=1 turns missing inputs into
// failures, scripts/run-tests.sh sets it).

import ExecGateClient
import ExecGateTestSupport
import ExecGateWire
import NIOCore
import XCTest
@testable import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#endif

final class MemoryAdmissionBootTests: XCTestCase {
    func testSmallGuestRefusesWhatItCannotHoldAndKeepsServing() async throws {
        let imageDir = Fixtures.packageRoot + "/Images/out"
        let paths: (kernel: String, initrd: String)
        do { paths = try VMConfig.imagePaths(imageDir: imageDir, test: false) } catch { try VMTestInputs.missing("\(error)") }
        if Subprocess.which("qemu-system-x86_64") == nil { try VMTestInputs.missing("qemu-system-x86_64 not installed") }
        guard access(Fixtures.execgateBinary, X_OK) == 0 else { try VMTestInputs.missing("no execgate binary at \(Fixtures.execgateBinary): swift build --build-tests") }
        var c = VMConfig(stateDir: "/tmp/egv-mem-\(getpid())", kernel: paths.kernel, initrd: paths.initrd)
        c.name = "mem-\(getpid())"
        c.accel = Accelerator.detect()
        c.readyTimeoutSeconds = 90
        c.vsockBackendCommand = [Fixtures.execgateBinary, "vsock-backend"]
        c.vhostVsockDevice = "/nonexistent/vhost-vsock"
        // Above the least that serves the self-test (48 MiB by vm-bench), far below the default.
        c.memoryMiB = 56
        defer { _ = Launcher.stop(c); VsockBackendProcess.stop(c) }

        // Inputs first (the server closes idle connections after 30 s).
        let big = try XCTUnwrap(try Fixtures.allModules().first { p in
            var st = stat()
            return stat(p, &st) == 0 && Int(st.st_size) > 3 << 20
        }, "no module above 3 MiB in the fixture kernel")
        let bigBytes = try Fixtures.readFile(big)
        let small = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))

        let started = try Launcher.start(c, log: { print($0) })
        let console = try FS.readString(c.consoleLog)
        let line = try XCTUnwrap(console.split(separator: "\n").first { $0.contains("memory available") }, console)
        print(line)
        let client = try await ExecGateClient.connect(to: try Endpoint(parsing: started.address, listening: false), timeout: 60)
        let hello = try await client.hello(clientName: "memory-test")
        XCTAssertLessThan(Int(hello.maximumBodySize), bigBytes.count, "a 56 MiB guest should not admit \(bigBytes.count) bytes")
        XCTAssertTrue(line.contains("largest body \(hello.maximumBodySize) bytes"), "console and hello disagree: \(line)")

        let refused = try await client.sendFrame(Message.authorizeModule(AuthorizeModule(module: ByteBuffer(bytes: bigBytes))).frame(requestID: client.allocateID()))
        guard case .error(let e) = refused else { await client.close(); return XCTFail("a module above the budget was not refused: \(refused)") }
        XCTAssertEqual(e.code, .frameTooLarge, e.message)
        XCTAssertTrue(e.message.contains("\(hello.maximumBodySize)"), e.message)

        // Still serving: a small real module is judged, status answers.
        let v = try await client.authorize(AuthorizeModule(module: ByteBuffer(bytes: small)))
        XCTAssertEqual(v.moduleName, "crc7")
        let s = try await client.status()
        XCTAssertEqual(s.state, "serving")
        await client.close()
        let after = try FS.readString(c.consoleLog)
        XCTAssertFalse(after.contains("Out of memory") || after.contains("oom-kill") || after.contains(ConsoleProtocol.fatal), after)
        XCTAssertTrue(Launcher.status(c).running)
    }
}
