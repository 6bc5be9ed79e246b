// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers against a real `execgate serve` process (issue 10), on local Unix sockets only,
// while a well-behaved VMM client keeps asking for verdicts. Each attack is one peer doing what
// docs/protocol.md allows a client to attempt; after each, the test asserts that the server is
// alive, that the health probe (`status`, on a fresh connection) answers, and that the serve
// process's peak RSS stays under `rssBound`. The attacks are bounded in count and time (the whole
// class runs in about a minute).
//
// The RSS bound is stated for the debug build the tests run (`swift build`); the release target
// of ≤ 112 MiB is measured by scripts/soak.sh (docs/protocol.md, "Connections and limits").

import _ExecGateInternals
import ExecGateClient
import ExecGateService
import ExecGateSignature
import ExecGateTestSupport
import ExecGateTransport
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class HostilePeerTests: XCTestCase {
    /// Peak RSS the debug `serve` may reach under any one attack below (idle it is ~30 MiB; one
    /// maximum body buffered and judged adds ~30–60 MiB). Before issue 10 these attacks reached
    /// 0.9–9.2 GB.
    static let rssBound = 160 << 20

    var dir = ""
    var pid: pid_t = -1
    var vmm = ""
    var admin = ""
    var certPath = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
        certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        vmm = dir + "/vmm.sock"
        admin = dir + "/admin.sock"
    }

    override func tearDown() {
        if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }
    }

    func startServe() throws {
        // Signature-only, opted into explicitly: the well-behaved client sends modules without a
        // guest and must keep getting allows.
        let serve = ServeFixture.start(in: dir, ["--trust", certPath, "--signature-only"])
        pid = serve.pid
        precondition(serve.vmm == vmm && serve.admin == admin)
        if serve.up { return }
        XCTFail("serve did not listen: " + String(decoding: (try? Fixtures.readFile(dir + "/err")) ?? [], as: UTF8.self))
    }

    func testHostilePeersDoNotExhaustTheServer() async throws {
        try startServe()
        let module = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))
        let good = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 20)

        // Unloaded latency of the well-behaved client.
        var unloaded: [Double] = []
        for _ in 0..<60 {
            let t = now()
            let v = try await good.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
            XCTAssertEqual(v.decision, .allow, v.message)
            unloaded.append(now() - t)
        }

        // The well-behaved client keeps going through every attack.
        let stats = NIOLockedValueBox(GoodClientStats())
        let stop = NIOLockedValueBox(false)
        let goodLoop = Task {
            while !stop.withLockedValue({ $0 }) {
                let t = now()
                do {
                    let v = try await good.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
                    stats.withLockedValue { s in
                        s.latencies.append(now() - t)
                        if v.decision == .allow { s.allowed += 1 } else { s.wrong.append(v.message) }
                    }
                } catch {
                    stats.withLockedValue { $0.errors.append("\(error)") }
                }
                try? await Task.sleep(nanoseconds: 20_000_000)
            }
        }

        // 1. VMM port: status requests, never reading a reply.
        let noReader = try XCTUnwrap(SocketPeer(path: vmm))
        var status = ByteBuffer()
        for i in 0..<512 { status.writeFrame(Frame(type: .status, requestID: UInt64(i), body: ByteBuffer())) }
        let flooded = noReader.flood(Array(buffer: status), seconds: 3)
        try await checkpoint("status flood, replies never read (\(flooded) bytes sent)")

        // 2. Admin port: audit reads, never reading a reply.
        let auditReader = try XCTUnwrap(SocketPeer(path: admin))
        var auditRead = TLVWriter()
        auditRead.u64(1, 0); auditRead.u32(2, 10_000)
        var reads = ByteBuffer()
        for i in 0..<256 { reads.writeFrame(Frame(type: MessageType(rawValue: 0x0012), requestID: UInt64(i), body: auditRead.buffer)) }
        let auditFlooded = auditReader.flood(Array(buffer: reads), seconds: 3)
        try await checkpoint("audit-read flood, replies never read (\(auditFlooded) bytes sent)")

        // 3. One maximum-size body of empty duplicate fields, one of unknown fields.
        for (tag, expected) in [(UInt16(1), "duplicate-field"), (UInt16(0x0042), "too-many-items")] {
            let body = emptyFields(tag: tag, totalBytes: WireLimits.defaultMaximumBodySize)
            var frame = ByteBuffer()
            frame.writeFrame(Frame(type: .authorizeModule, requestID: 1, body: ByteBuffer(bytes: body)))
            let peer = try XCTUnwrap(SocketPeer(path: vmm))
            XCTAssertTrue(peer.writeAll(Array(buffer: frame)))
            let reply = try XCTUnwrap(peer.readFrame(timeout: 20), "a reply to the \(tag) body")
            let e = try ErrorReply(decoding: reply.body)
            XCTAssertEqual(e.code, .malformedBody)
            XCTAssertTrue(e.message.contains(expected), e.message)
            try await checkpoint("maximum body of empty fields with tag \(tag)")
        }

        // 4. 16 connections each holding a partial 20 MiB body (4 MiB of it sent): bodies are
        //    reserved as their bytes arrive, so the large-body budget (28 MiB) holds the sent
        //    bytes of at most 7 of them; the rest get `unavailable` (at the header or at the chunk
        //    that no longer fits) and their bodies are discarded unbuffered.
        var holders: [SocketPeer] = []
        var unavailable = 0
        for i in 0..<16 {
            let p = try XCTUnwrap(SocketPeer(path: vmm))
            var header = ByteBuffer()
            header.writeInteger(WireLimits.magic); header.writeInteger(UInt16(1)); header.writeInteger(MessageType.authorizeModule.rawValue)
            header.writeInteger(UInt64(i)); header.writeInteger(UInt32(20 << 20))
            XCTAssertTrue(p.writeAll(Array(buffer: header) + [UInt8](repeating: 0, count: 4 << 20)))
            holders.append(p)
        }
        for p in holders {
            if let f = p.readFrame(timeout: 1), f.type == .error, (try? ErrorReply(decoding: f.body))?.code == .unavailable { unavailable += 1 }
        }
        let fit = (PortLimits().bufferBudget - TransportLimits.smallFrameReserve) / (4 << 20)
        XCTAssertGreaterThanOrEqual(unavailable, 16 - fit, "more than the large-body budget of partial bodies is buffered")
        try await checkpoint("16 partial 20 MiB bodies")
        holders.removeAll()

        // 5. Slowloris: 200 connections sending 19 header bytes. The connection cap closes the
        //    excess at once; the header deadline (5 s) closes the rest within seconds. The wait is a
        //    generous 25 s so a loaded CI machine does not fail it; it ends as soon as all are closed.
        var slow: [SocketPeer] = []
        for _ in 0..<200 {
            guard let p = SocketPeer(path: vmm) else { continue }
            _ = p.writeAll([UInt8](repeating: 0x45, count: 19))
            slow.append(p)
        }
        let t0 = now()
        var open = slow
        while !open.isEmpty && now() - t0 < 25 {
            open = open.filter { !$0.closedByPeer() }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
        XCTAssertEqual(open.count, 0, "slowloris connections still open after \(Int(now() - t0)) s")
        try await checkpoint("200 slowloris connections (all closed after \(String(format: "%.1f", now() - t0)) s)")
        slow.removeAll()

        // 6. 20,000 refused policy pushes (no key needed to be refused): verdict records survive.
        let pusher = try XCTUnwrap(SocketPeer(path: admin))
        var push = TLVWriter()
        push.bytes(1, [UInt8](repeating: 0x41, count: 64))
        var refused = 0
        for batch in 0..<40 {
            var frames = ByteBuffer()
            for i in 0..<500 { frames.writeFrame(Frame(type: MessageType(rawValue: 0x0010), requestID: UInt64(batch * 500 + i), body: push.buffer)) }
            XCTAssertTrue(pusher.writeAll(Array(buffer: frames)))
            for _ in 0..<500 {
                guard let f = pusher.readFrame(timeout: 10) else { break }
                if f.type == .error { refused += 1 }
            }
        }
        XCTAssertEqual(refused, 20_000)
        let verdictsSoFar = stats.withLockedValue { $0.allowed } + unloaded.count
        let records = try readAudit()
        let verdictRecords = records.filter { $0.contains("\"event\":\"verdict\"") }.count
        let refusedRecords = records.filter { $0.contains("\"event\":\"policy-push-refused\"") }.count
        XCTAssertGreaterThanOrEqual(verdictRecords, verdictsSoFar, "every verdict record survives the flood")
        XCTAssertLessThanOrEqual(refusedRecords, 40, "refused pushes are rate-limited in the records")
        try await checkpoint("20,000 refused pushes (\(refusedRecords) recorded, \(verdictRecords) verdict records kept)")

        // The peers that never read were closed (write stall), freeing what they held.
        XCTAssertTrue(noReader.closedByPeer(timeout: 12), "a peer that reads no reply is closed")
        XCTAssertTrue(auditReader.closedByPeer(timeout: 12), "an admin peer that reads no reply is closed")

        stop.withLockedValue { $0 = true }
        await goodLoop.value
        await good.close()
        let s = stats.withLockedValue { $0 }
        XCTAssertEqual(s.errors, [], "the well-behaved client got every verdict")
        XCTAssertEqual(s.wrong, [], "and every verdict was right")
        XCTAssertGreaterThan(s.allowed, 50)
        let p99u = percentile(unloaded, 0.99), p99l = percentile(s.latencies, 0.99)
        print("hostile-peers: good client \(s.allowed) verdicts, p99 unloaded \(ms(p99u)) ms, under attack \(ms(p99l)) ms; "
              + "serve peak RSS \(peakRSS() >> 20) MiB")
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0, "graceful shutdown after the attacks")
        pid = -1
    }

    /// A second server never steals a live socket; the same path for both ports is refused;
    /// sockets are created 0600.
    func testSocketPathsAreNeverStolen() throws {
        try startServe()
        var st = stat()
        XCTAssertEqual(lstat(vmm, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        let second = Fixtures.runExecgate(["serve", "--listen", "unix:" + vmm, "--trust", certPath])
        XCTAssertEqual(second.status, 2, second.stderr)
        XCTAssertTrue(second.stderr.contains("in use"), second.stderr)
        XCTAssertNotNil(SocketPeer(path: vmm), "the first server is still reachable")
        let status = Fixtures.runExecgate(["request", "status", "--connect", "unix:" + vmm])
        XCTAssertEqual(status.status, 0, status.stderr)

        let same = Fixtures.runExecgate(["serve", "--listen", "unix:" + dir + "/x.sock", "--admin-listen", "unix:" + dir + "/x.sock", "--trust", certPath])
        XCTAssertEqual(same.status, 2, same.stderr)  // usage
        XCTAssertTrue(same.stderr.contains("--admin-listen"), same.stderr)

        try Fixtures.writeFile(dir + "/regular", [1, 2, 3])
        let file = Fixtures.runExecgate(["serve", "--listen", "unix:" + dir + "/regular", "--trust", certPath])
        XCTAssertEqual(file.status, 2)
        XCTAssertTrue(file.stderr.contains("regular file"), file.stderr)
        XCTAssertEqual(try Fixtures.readFile(dir + "/regular"), [1, 2, 3], "never removed")
    }

    /// The soak (scripts/soak.sh; not part of `make test`): N minutes of mixed load — two
    /// well-behaved clients, every attack above in rotation, a signed policy push every 10 s —
    /// against the serve binary in EXECGATE_BIN (the script builds and passes the release one).
    /// Prints max RSS, verdicts served, errors and the well-behaved clients' p99.
    func testSoak() async throws {
        guard let env = getenv("EXECGATE_SOAK_MINUTES"), let minutes = Double(String(cString: env)), minutes > 0 else {
            throw XCTSkip("EXECGATE_SOAK_MINUTES not set: the soak runs from scripts/soak.sh, not in make test")
        }
        try ServeFixture.adminKey(in: dir, commonName: "soak admin")
        let cert = try Fixtures.debianCertificates()[0]
        func policy(_ version: Int) -> String {
            "execgate-policy 1\nid soak\nversion \(version)\nmode enforce\ntrust sha256:\(cert.fingerprint.hex)\n\(cert.pem)\naudit-overflow drop\nmodules allow\n"
        }
        try Fixtures.writeFile(dir + "/p1.policy", Array(policy(1).utf8))
        pid = ServeFixture.start(in: dir, ["--trust", certPath, "--policy", dir + "/p1.policy", "--admin-cert", dir + "/admin.pem"]).pid
        let module = try Fixtures.readFile(try Fixtures.module(named: "vsock.ko"))

        // Unloaded p99.
        let probe = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 20)
        var unloaded: [Double] = []
        for _ in 0..<300 {
            let t = now()
            _ = try await probe.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
            unloaded.append(now() - t)
        }
        await probe.close()

        let stats = NIOLockedValueBox(GoodClientStats())
        let stop = NIOLockedValueBox(false)
        var clients: [Task<Void, Never>] = []
        for _ in 0..<2 {
            clients.append(Task { [vmm] in
                var client: ExecGateClient?
                while !stop.withLockedValue({ $0 }) {
                    do {
                        if client == nil { client = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 20) }
                        let t = now()
                        let v = try await client!.authorize(AuthorizeModule(module: ByteBuffer(bytes: module)))
                        stats.withLockedValue { s in
                            s.latencies.append(now() - t)
                            if v.decision == .allow { s.allowed += 1 } else { s.wrong.append(v.message) }
                        }
                    } catch {
                        stats.withLockedValue { $0.errors.append("\(error)") }
                        await client?.close()
                        client = nil
                    }
                    try? await Task.sleep(nanoseconds: 10_000_000)
                }
                await client?.close()
            })
        }

        var maxRSS = 0, pushes = 0, cycle = 0
        let start = now()
        var nextPush = start + 10
        while now() - start < minutes * 60 {
            XCTAssertEqual(kill(pid, 0), 0, "serve died")
            // One attack, in rotation; its connections are dropped when the next cycle starts.
            var held: [SocketPeer] = []
            switch cycle % 6 {
            case 0:
                if let p = SocketPeer(path: vmm) {
                    var b = ByteBuffer()
                    for i in 0..<512 { b.writeFrame(Frame(type: .status, requestID: UInt64(i), body: ByteBuffer())) }
                    _ = p.flood(Array(buffer: b), seconds: 2); held.append(p)
                }
            case 1:
                if let p = SocketPeer(path: admin) {
                    var w = TLVWriter(); w.u64(1, 0); w.u32(2, 10_000)
                    var b = ByteBuffer()
                    for i in 0..<256 { b.writeFrame(Frame(type: MessageType(rawValue: 0x0012), requestID: UInt64(i), body: w.buffer)) }
                    _ = p.flood(Array(buffer: b), seconds: 2); held.append(p)
                }
            case 2:
                if let p = SocketPeer(path: vmm) {
                    var f = ByteBuffer()
                    f.writeFrame(Frame(type: .authorizeModule, requestID: 1, body: ByteBuffer(bytes: emptyFields(tag: 1, totalBytes: WireLimits.defaultMaximumBodySize))))
                    _ = p.writeAll(Array(buffer: f)); _ = p.readFrame(timeout: 10)
                }
            case 3:
                for i in 0..<16 {
                    guard let p = SocketPeer(path: vmm) else { continue }
                    var h = ByteBuffer()
                    h.writeInteger(WireLimits.magic); h.writeInteger(UInt16(1)); h.writeInteger(MessageType.authorizeModule.rawValue)
                    h.writeInteger(UInt64(i)); h.writeInteger(UInt32(20 << 20))
                    _ = p.writeAll(Array(buffer: h) + [UInt8](repeating: 0, count: 4 << 20)); held.append(p)
                }
            case 4:
                for _ in 0..<200 {
                    guard let p = SocketPeer(path: vmm) else { continue }
                    _ = p.writeAll([UInt8](repeating: 0x45, count: 19)); held.append(p)
                }
            default:
                if let p = SocketPeer(path: admin) {
                    var w = TLVWriter(); w.bytes(1, [UInt8](repeating: 0x41, count: 64))
                    for batch in 0..<4 {
                        var b = ByteBuffer()
                        for i in 0..<500 { b.writeFrame(Frame(type: MessageType(rawValue: 0x0010), requestID: UInt64(batch * 500 + i), body: w.buffer)) }
                        _ = p.writeAll(Array(buffer: b))
                        for _ in 0..<500 where p.readFrame(timeout: 10) != nil {}
                    }
                }
            }
            let cycleEnd = now() + 5
            while now() < cycleEnd {
                maxRSS = max(maxRSS, currentRSS())
                if now() >= nextPush {
                    pushes += 1
                    let v = pushes + 1
                    try Fixtures.writeFile(dir + "/p.policy", Array(policy(v).utf8))
                    let signed = Fixtures.runExecgate(["policy", "sign", "--key", dir + "/admin-key.pem", "--cert", dir + "/admin.pem", dir + "/p.policy", "-o", dir + "/p.bundle"])
                    XCTAssertEqual(signed.status, 0, signed.stderr)
                    let pushed = Fixtures.runExecgate(["policy", "push", dir + "/p.bundle", "--connect", "unix:" + admin])
                    XCTAssertEqual(pushed.status, 0, pushed.stderr)
                    nextPush += 10
                }
                try await Task.sleep(nanoseconds: 250_000_000)
            }
            held.removeAll()
            cycle += 1
        }
        stop.withLockedValue { $0 = true }
        for c in clients { await c.value }
        let final = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 10)
        let status = try await final.status()
        await final.close()
        let s = stats.withLockedValue { $0 }
        let peak = peakRSS()
        let p99u = percentile(unloaded, 0.99), p99l = percentile(s.latencies, 0.99)
        print("""
        soak: \(String(format: "%.1f", (now() - start) / 60)) min, \(cycle) attack cycles, \(pushes) policy pushes (now v\(status.policyVersion))
        soak: serve peak RSS (VmHWM) \(peak >> 20) MiB, max sampled RSS \(maxRSS >> 20) MiB
        soak: requests served \(status.requestsServed); well-behaved verdicts \(s.allowed), wrong \(s.wrong.count), errors \(s.errors.count)
        soak: well-behaved p50 \(ms(percentile(s.latencies, 0.5))) ms, p99 \(ms(p99l)) ms; unloaded p99 \(ms(p99u)) ms (ratio \(String(format: "%.1f", p99l / p99u)))
        """)
        if !s.errors.isEmpty { print("soak: first errors: \(s.errors.prefix(5))") }
        XCTAssertEqual(s.wrong, [])
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
        pid = -1
    }

    /// At the fd limit (RLIMIT_NOFILE 64) accept backs off instead of spinning: the server stays
    /// idle, serves the connections it has, and accepts again once fds are free.
    func testAcceptBacksOffAtTheFdLimit() async throws {
        let script = "ulimit -n 64 && exec '\(Fixtures.execgateBinary)' serve --listen 'unix:\(vmm)' --trust '\(certPath)' --log-level critical"
        var spawned: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", script].map { (a: String) in strdup(a) } + [nil]
        defer { argv.forEach { free($0) } }
        XCTAssertEqual(posix_spawn(&spawned, "/bin/sh", nil, nil, argv, environ), 0)
        pid = spawned
        for _ in 0..<100 where SocketPeer(path: vmm) == nil { usleep(100_000) }
        var peers: [SocketPeer] = []
        for _ in 0..<100 { if let p = SocketPeer(path: vmm) { peers.append(p) } }  // the backlog takes what accept cannot
        XCTAssertEqual(peers.count, 100)
        usleep(500_000)
        let c0 = cpuSeconds(), t0 = now()
        usleep(3_000_000)
        let busy = (cpuSeconds() - c0) / (now() - t0)
        XCTAssertLessThan(busy, 0.10, "serve used \(Int(busy * 100))% of a core at the fd limit (spinning on accept)")
        // A connection accepted before the limit is served.
        var status = ByteBuffer()
        status.writeFrame(Frame(type: .status, requestID: 9, body: ByteBuffer()))
        XCTAssertTrue(peers[0].writeAll(Array(buffer: status)))
        XCTAssertEqual(peers[0].readFrame(timeout: 5)?.type, .statusReply)
        peers.removeAll()
        // Fds free again: new connections are accepted.
        let probe = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 10)
        let s = try await probe.status()
        XCTAssertEqual(s.state, "serving")
        await probe.close()
        print("hostile-peers: at the fd limit serve used \(String(format: "%.1f", busy * 100))% of a core")
    }

    func cpuSeconds() -> Double {
        let line = procText("/proc/\(pid)/stat")
        guard let close = line.lastIndex(of: ")") else { return 0 }
        let fields = line[line.index(after: close)...].split(separator: " ")
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: - Helpers

    struct GoodClientStats {
        var latencies: [Double] = []
        var allowed = 0
        var wrong: [String] = []
        var errors: [String] = []
    }

    func checkpoint(_ what: String) async throws {
        XCTAssertEqual(kill(pid, 0), 0, "serve died during: \(what)")
        // A liveness probe, not a latency bound (the good client's p99 is printed): a generous
        // timeout, as a machine loaded by other jobs once stalled this debug-build server past 5 s
        // right after the 64 MiB of partial bodies (CI clone, 2026-12-02, a compile beside it).
        let probe = try await ExecGateClient.connect(to: .unix(path: vmm), timeout: 20)
        let s = try await probe.status()
        XCTAssertEqual(s.state, "serving", what)
        await probe.close()
        let peak = peakRSS()
        XCTAssertLessThanOrEqual(peak, Self.rssBound, "peak RSS \(peak >> 20) MiB after: \(what)")
        print("hostile-peers: \(what): serve alive, status answered, peak RSS \(peak >> 20) MiB, now \(currentRSS() >> 20) MiB")
    }

    func readAudit() throws -> [String] {
        let peer = try XCTUnwrap(SocketPeer(path: admin))
        var all: [String] = []
        var after: UInt64 = 0
        for i in 0..<100 {
            var w = TLVWriter()
            w.u64(1, after); w.u32(2, 10_000)
            var frame = ByteBuffer()
            frame.writeFrame(Frame(type: MessageType(rawValue: 0x0012), requestID: UInt64(i), body: w.buffer))
            XCTAssertTrue(peer.writeAll(Array(buffer: frame)))
            let reply = try XCTUnwrap(peer.readFrame(timeout: 10))
            XCTAssertLessThanOrEqual(reply.body.readableBytes, (1 << 20) + 6 * 10_000 + 64, "one page is at most 1 MiB of records")
            let r = try TLVReader(reply.body, message: "audit-read-reply", known: [1, 2, 3, 4, 5], repeated: [1: 10_000])
            let records = try r.strings(1, "record")
            all += records
            after = try r.requiredInteger(2, "next_seq") - 1
            let more: UInt8 = try r.integer(5, "more") ?? 0
            if more == 0 { break }
        }
        return all
    }

    func statusField(_ name: String) -> Int { procStatusBytes(name, pid: "\(pid)") }

    func peakRSS() -> Int { statusField("VmHWM") }
    func currentRSS() -> Int { statusField("VmRSS") }
}

/// A byte count from `/proc/PID/status` (`VmRSS`, `VmHWM`: the kernel prints kB), 0 when absent.
func procStatusBytes(_ name: String, pid: String = "self") -> Int {
        for line in procText("/proc/\(pid)/status").split(separator: "\n") where line.hasPrefix(name + ":") {
            return (Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0) << 10
        }
        return 0
}

/// A /proc file's text. (Files.read sizes its buffer by st_size, which /proc reports as 0.)
func procText(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
        if n == 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

func now() -> Double { MonotonicClock.seconds() }

/// The project's one percentile rule; `q` in 0...1.
extension HostilePeerTests {
    /// The admin port shares the VMM port's event loops (AdminServer.swift, "Event loops"), so what
    /// keeps it answering under a VMM flood is the loops' fairness, not a thread of its own: 32 VMM
    /// connections each stream a 28 MiB body of zeros (over the budget after the first: their
    /// bytes are read and discarded as fast as they come, which keeps every loop busy), and the
    /// admin port must still answer `policy-show`, each within 2 s. The figures (unloaded and
    /// flooded p50/max) are printed.
    func testAdminPortAnswersDuringAVMMPortFlood() async throws {
        try startServe()
        let show = { () throws -> Double in
            let peer = try XCTUnwrap(SocketPeer(path: self.admin))
            var frame = ByteBuffer()
            frame.writeFrame(Frame(type: MessageType(rawValue: 0x0011), requestID: 1, body: ByteBuffer()))
            let t = now()
            XCTAssertTrue(peer.writeAll(Array(buffer: frame)))
            let reply = try XCTUnwrap(peer.readFrame(timeout: 10), "policy-show answered")
            XCTAssertEqual(reply.type.rawValue, 0x8011)
            return now() - t
        }
        var unloaded: [Double] = []
        for _ in 0..<20 { unloaded.append(try show()) }

        let flooders = 32, seconds = 4.0
        let sent = NIOLockedValueBox(0)
        let started = NIOLockedValueBox(0)
        let vmm = self.vmm
        let floodThread = Thread {
            DispatchQueue.concurrentPerform(iterations: flooders) { i in
                guard let p = SocketPeer(path: vmm) else { return }
                var header = ByteBuffer()
                header.writeInteger(WireLimits.magic); header.writeInteger(UInt16(1)); header.writeInteger(MessageType.authorizeModule.rawValue)
                header.writeInteger(UInt64(i)); header.writeInteger(UInt32(WireLimits.defaultMaximumBodySize))
                guard p.writeAll(Array(buffer: header)) else { return }
                started.withLockedValue { $0 += 1 }
                let n = p.flood([UInt8](repeating: 0, count: 256 << 10), seconds: seconds)
                sent.withLockedValue { $0 += n }
            }
        }
        floodThread.start()
        while started.withLockedValue({ $0 }) < flooders / 2 { usleep(10_000) }
        usleep(300_000)
        var flooded: [Double] = []
        let t0 = now()
        while now() - t0 < seconds - 1 { flooded.append(try show()) }
        while sent.withLockedValue({ $0 }) == 0 { usleep(50_000) }
        let bytes = sent.withLockedValue { $0 }
        print("admin policy-show during a VMM flood (\(flooders) connections, \(bytes >> 20) MiB sent in \(Int(seconds)) s): "
              + "unloaded p50 \(ms(percentile(unloaded, 0.5))) ms max \(ms(unloaded.max() ?? 0)) ms; "
              + "flooded p50 \(ms(percentile(flooded, 0.5))) ms max \(ms(flooded.max() ?? 0)) ms (\(flooded.count) requests)")
        XCTAssertGreaterThan(bytes, 64 << 20, "the flood did not keep the loops busy")
        XCTAssertGreaterThanOrEqual(flooded.count, 5)
        XCTAssertLessThan(flooded.max() ?? .infinity, 2.0, "the admin port is starved by the VMM port")
    }
}

func percentile(_ xs: [Double], _ q: Double) -> Double { Percentiles.of(xs, q * 100) }

func ms(_ s: Double) -> String { String(format: "%.1f", s * 1000) }

/// A raw Unix-socket peer that speaks only what the test makes it send.
final class SocketPeer {
    let fd: Int32
    private var decoder = FrameDecoder(maximumBodySize: 4 << 20)
    private var inbound = ByteBuffer()

    init?(path: String) {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard UnixSocket.connect(fd, to: path) == 0 else { close(fd); return nil }
    }

    deinit { close(fd) }

    /// Blocking write of everything (false when the peer closed).
    func writeAll(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    /// Writes `chunk` again and again without reading, for at most `seconds` or until the socket
    /// takes nothing for one second (the server stopped reading). Returns the bytes sent.
    func flood(_ chunk: [UInt8], seconds: Double) -> Int {
        let start = now()
        var lastProgress = start, total = 0, off = 0
        while now() - start < seconds && now() - lastProgress < 1 {
            let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress! + off, chunk.count - off, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 {
                total += n; off = (off + n) % chunk.count; lastProgress = now()
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                usleep(10_000)
            } else {
                break
            }
        }
        return total
    }

    /// The next frame from the server, or nil after `timeout` seconds or at EOF.
    func readFrame(timeout: Double) -> Frame? {
        let deadline = now() + timeout
        while true {
            if case .frame(let f)? = try? decoder.decodeOne(&inbound) { return f }
            let left = deadline - now()
            guard left > 0 else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(left * 1000) + 1) > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            inbound.writeBytes(chunk[0..<n])
        }
    }

    /// True when the server closed the connection within `timeout` seconds. Reads nothing: a
    /// peer that never reads must stay one (draining would let the server write again).
    func closedByPeer(timeout: Double = 0) -> Bool {
        let deadline = now() + timeout
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 0) > 0 && p.revents & Int16(POLLHUP | POLLERR) != 0 { return true }
            // EOF with no data pending also shows as readable with 0 bytes.
            var byte: UInt8 = 0
            if p.revents & Int16(POLLIN) != 0 && recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0 { return true }
            guard now() < deadline else { return false }
            usleep(50_000)
        }
    }
}
