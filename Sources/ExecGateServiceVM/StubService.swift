// SPDX-License-Identifier: Apache-2.0
//
// A stand-in verifier for the service VM until the executable wires in the real one
// (ExecGateService). It speaks a trivial line protocol on AF_VSOCK: "PING <n>\n" → "PONG <n>\n".
// It exists so init, image, launcher and the in-guest self-test can be exercised end to end
// without the real service; it is never the production answer path once the hooks are set.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CExecGateSys

public enum StubService {
    static let maxLine = 256

    public static func run(port: UInt32, ready: @escaping @Sendable () -> Void) async throws {
        let fd = execgate_vsock_listen(UInt32.max /* VMADDR_CID_ANY */, port, 64)
        guard fd >= 0 else { throw ServiceVMError.sys("cannot listen on vsock port", "\(port)") }
        startDetachedThread {
            while true {
                let c = execgate_accept(fd)
                if c < 0 { if errno == EINTR || errno == ECONNABORTED { continue }; return }
                startDetachedThread { serve(c) }
            }
        }
        ready()
        // Serve until the process ends (PID 1 powers the VM off); the stub has no graceful stop.
        while !Task.isCancelled { try? await Task.sleep(nanoseconds: 1_000_000_000) }
    }

    static func serve(_ fd: Int32) {
        defer { close(fd) }
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return }
            pending += buf[0..<n]
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                let reply = line.hasPrefix("PING ") ? "PONG " + line.dropFirst(5) : "ERROR bad request"
                if !sendAll(fd, Array((reply + "\n").utf8)) { return }
            }
            if pending.count > maxLine { _ = sendAll(fd, Array("ERROR line too long\n".utf8)); return }
        }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    static func readLine(_ fd: Int32) -> String? {
        var line: [UInt8] = []
        var b: UInt8 = 0
        while line.count <= maxLine {
            let n = recv(fd, &b, 1, 0)
            if n <= 0 { return nil }
            if b == 0x0A { return String(decoding: line, as: UTF8.self) }
            line.append(b)
        }
        return nil
    }

    /// The stand-in request set: one round trip, 100 sequential round trips (latency), a malformed
    /// request, 4 concurrent clients.
    public static func selfTest(port: UInt32, report: @escaping @Sendable (SelfTestResult) -> Void) async throws {
        let loopback: UInt32 = 1
        func roundTrips(_ count: Int, tag: String) -> (ok: Bool, micros: Int, detail: String) {
            let t0 = Clock.nanos()
            let fd = execgate_vsock_connect(loopback, port)
            guard fd >= 0 else { return (false, 0, "connect to vsock 1:\(port): errno \(errno)") }
            defer { close(fd) }
            for i in 0..<count {
                guard sendAll(fd, Array("PING \(tag)-\(i)\n".utf8)), let r = readLine(fd), r == "PONG \(tag)-\(i)" else {
                    return (false, Int((Clock.nanos() - t0) / 1000), "round trip \(i) failed")
                }
            }
            return (true, Int((Clock.nanos() - t0) / 1000), "\(count) round trip(s)")
        }
        let one = roundTrips(1, tag: "hello")
        report(SelfTestResult(name: "stub.hello", passed: one.ok, detail: one.detail, micros: one.micros))
        let many = roundTrips(100, tag: "seq")
        report(SelfTestResult(name: "stub.sequential-100", passed: many.ok, detail: many.detail, micros: many.micros,
                              extra: [("mean_us", "\(many.micros / 100)")]))

        let t0 = Clock.nanos()
        let fd = execgate_vsock_connect(loopback, port)
        var badOK = false
        if fd >= 0 {
            badOK = sendAll(fd, Array("NOT A REQUEST\n".utf8)) && readLine(fd)?.hasPrefix("ERROR") == true
            close(fd)
        }
        report(SelfTestResult(name: "stub.malformed", passed: badOK, detail: "malformed request answered with ERROR",
                              micros: Int((Clock.nanos() - t0) / 1000)))

        let gate = ResultCounter()
        let done = Gate()
        let clients = 4
        let remaining = Countdown(clients) { done.open() }
        let tc = Clock.nanos()
        for c in 0..<clients {
            startDetachedThread {
                gate.add(roundTrips(25, tag: "c\(c)").ok)
                remaining.tick()
            }
        }
        await done.wait()
        let (p, f) = gate.counts
        report(SelfTestResult(name: "stub.concurrent-4x25", passed: p == clients && f == 0, detail: "\(p)/\(clients) clients ok",
                              micros: Int((Clock.nanos() - tc) / 1000)))
    }
}

final class Countdown: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var left: Int
    private let action: () -> Void
    init(_ n: Int, _ action: @escaping () -> Void) { left = n; self.action = action; pthread_mutex_init(&mutex, nil) }
    func tick() {
        pthread_mutex_lock(&mutex)
        left -= 1
        let fire = left == 0
        pthread_mutex_unlock(&mutex)
        if fire { action() }
    }
}
