// SPDX-License-Identifier: Apache-2.0
//
// The audit sink on real verdicts: audit-only mode allows and records what enforce would deny;
// `audit-overflow block` fails closed when the sink cannot keep up, `drop` keeps serving and counts.
// Also the dry run (`execgate policy test`) on the captured boot in the explainer's corpus.

import _ExecGateInternals
import ExecGateAdmin
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import XCTest
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

final class AuditTests: XCTestCase {
    func request(_ name: String, guest: String = "") throws -> AuthorizeModule {
        AuthorizeModule(guestID: guest, module: ByteBuffer(bytes: try Fixtures.readFile(try Fixtures.module(named: name))))
    }

    func testAuditModeAllowsAndRecordsWhatEnforceWouldDeny() throws {
        let body = "deny module-name crc7\nmodules allow"
        let enforce = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: body)))
        let audit = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, mode: "audit", body: body)))
        let log = AuditLog()
        audit.auditSink = log
        let denied = enforce.authorize(try request("crc7.ko"), requestDigest: [1, 2, 3])
        XCTAssertEqual(denied.decision, .deny)
        XCTAssertEqual(denied.reason, .moduleNameDenied)
        let v = audit.authorize(try request("crc7.ko"), requestDigest: [1, 2, 3])
        XCTAssertEqual(v.decision, .allow)
        XCTAssertTrue(v.auditOnly)
        XCTAssertEqual(v.reason, .moduleNameDenied)
        // A module enforce allows is an ordinary allow in audit mode.
        let clean = audit.authorize(try request("crc16.ko"), requestDigest: [4])
        XCTAssertEqual(clean.decision, .allow)
        XCTAssertFalse(clean.auditOnly)
        log.flush()
        let records = log.read(after: 0, limit: 10).records
        XCTAssertEqual(records.count, 2)
        XCTAssertTrue(records[0].contains("\"module\":\"crc7\""), records[0])
        XCTAssertTrue(records[0].contains("\"decision\":\"allow\",\"audit_only\":true,\"reason\":\"deny.module-name\""), records[0])
        XCTAssertTrue(records[0].contains("\"request_sha256\":\"010203\""), records[0])
        XCTAssertTrue(records[0].contains("\"policy_id\":\"test\",\"policy_version\":3"), records[0])
        XCTAssertTrue(records[1].contains("\"module\":\"crc16\",\"module_sha256\":\""), records[1])
        XCTAssertTrue(records[1].contains("\"audit_only\":false,\"reason\":\"allowed\""), records[1])
        log.close()
    }

    func testAuditOnlyRuleAppliesToItsClassOnly() throws {
        let body = "deny module-name crc7\nclass canary canary-*\nmodules allow\nmodules audit-only for class canary"
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: body)))
        XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .deny)  // no guest: default rule
        let canary = v.authorize(try request("crc7.ko", guest: "canary-1"), requestDigest: [])
        XCTAssertEqual(canary.decision, .allow)
        XCTAssertTrue(canary.auditOnly)
        XCTAssertEqual(canary.reason, .moduleNameDenied)
        XCTAssertEqual(v.authorize(try request("crc7.ko", guest: "prod-1"), requestDigest: []).decision, .deny)
    }

    /// Run-time text patches follow their own per-guest rules: denied outright for one class,
    /// audit-only for another (allowed, flagged, recorded), judged at the patch site for the rest.
    func testTextPatchRulesPerGuestClass() throws {
        let body = "class locked locked-*\nclass canary canary-*\nmodules allow\ntext-patches allow\n"
            + "text-patches deny for class locked\ntext-patches audit-only for class canary"
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: body)))
        let log = AuditLog()
        v.auditSink = log
        func patch(_ guest: String) -> Verdict {
            _ = v.respond(to: .registerGuest(RegisterGuest(guestID: guest)), requestDigest: [])
            let p = AuthorizePatch(guestID: guest, address: 0xffff_ffff_c000_1000, bytes: [0x0f, 0x1f, 0x44, 0x00, 0x00])
            guard case .verdict(let verdict) = v.respond(to: .authorizePatch(p), requestDigest: [9]) else { XCTFail("no verdict"); return Verdict(decision: .deny, reason: .allowed, message: "", checks: [], policyID: "", policyVersion: 0, requestDigest: []) }
            return verdict
        }
        let locked = patch("locked-1")
        XCTAssertEqual(locked.decision, .deny)
        XCTAssertEqual(locked.reason, .kindDenied)
        XCTAssertEqual(locked.checks, ["policy-kind"])
        let plain = patch("web-1")
        XCTAssertEqual(plain.decision, .deny)
        XCTAssertEqual(plain.checks, ["policy-kind", "patch-site"])  // judged: no module allowed, so no site (and no key rule ran)
        let canary = patch("canary-1")
        XCTAssertEqual(canary.decision, .allow)
        XCTAssertTrue(canary.auditOnly)
        XCTAssertEqual(canary.reason, plain.reason)
        log.flush()
        let records = log.read(after: 0, limit: 10).records
        XCTAssertEqual(records.count, 3)
        XCTAssertTrue(records[2].contains("\"guest\":\"canary-1\"") && records[2].contains("\"audit_only\":true"), records[2])
        log.close()
    }

    /// A writer that stalls until released, to make the sink fall behind.
    final class StalledWriter: @unchecked Sendable {
        let gate = DispatchSemaphoreBox()
        var lines = 0
        func write(_ b: [UInt8]) throws { gate.wait(); lines += b.filter { $0 == 0x0A }.count }
    }

    func testBlockFailsClosedWhenTheSinkCannotKeepUp() throws {
        let stalled = StalledWriter()
        let log = AuditLog(capacity: 2, blockTimeout: 0.2, writer: { try stalled.write($0) })
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))  // audit-overflow block
        v.auditSink = log
        var decisions: [Verdict.Decision] = []
        for _ in 0..<6 { decisions.append(v.authorize(try request("crc7.ko"), requestDigest: []).decision) }
        // Two fill the queue (the stalled writer's batch stays queued until it is written), then
        // every verdict is denied.
        XCTAssertEqual(decisions.prefix(2), [.allow, .allow])
        XCTAssertEqual(decisions.suffix(3), [.deny, .deny, .deny])
        let denied = v.authorize(try request("crc7.ko"), requestDigest: [])
        XCTAssertEqual(denied.reason, .auditUnrecorded, "its own reason, not a kind rule")
        XCTAssertTrue(denied.message.contains("audit-overflow block"), denied.message)
        XCTAssertEqual(log.counters.dropped, 0)
        for _ in 0..<20 { stalled.gate.signal() }
        log.flush()
        XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .allow)
        for _ in 0..<20 { stalled.gate.signal() }
        log.close()
    }

    /// A sink that takes part of a write and then refuses (a disk filling up, later freed): the
    /// records stay queued, counted against the queue's bounds, and are written whole and in order
    /// once it takes them again, the cut record resumed at its first unwritten byte: none lost, none
    /// cut, none glued to the next. While it refuses, `policy show` says so.
    func testAFailingSinkKeepsItsRecordsAndResumesMidRecord() throws {
        final class FillingDisk: @unchecked Sendable {
            let lock = NIOLock()
            var bytes: [UInt8] = []
            var room = 700  // bytes it takes before it is full: one record and part of the next
            func write(_ b: [UInt8]) throws {
                try lock.withLock {
                    let n = min(room, b.count)
                    bytes += b[..<n]
                    room -= n
                    if n < b.count { throw AuditWriteFailure(written: n, errno: ENOSPC) }
                }
            }
        }
        let disk = FillingDisk()
        let log = AuditLog(capacity: 64, blockTimeout: 0.2, writer: { try disk.write($0) })
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))  // audit-overflow block
        v.auditSink = log
        for _ in 0..<5 { XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .allow) }
        let administrator = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        var shown = administrator.show()
        for _ in 0..<100 where shown.auditWriteErrors == 0 || shown.auditQueued < 4 { usleep(10_000); shown = administrator.show() }
        XCTAssertGreaterThan(shown.auditWriteErrors, 0)
        XCTAssertGreaterThanOrEqual(shown.auditQueued, 4, "the records the disk did not take are still queued")
        XCTAssertTrue(shown.auditSinkError.contains("No space left on device"), shown.auditSinkError)
        let decoded = try PolicyShowReply(decoding: shown.encode())
        XCTAssertEqual(decoded, shown, "the sink's state crosses the admin port")
        disk.lock.withLock { disk.room = Int.max / 2 }
        log.flush()
        let lines = disk.lock.withLock { disk.bytes }.split(separator: 0x0A, omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 6, "five records, each ended by its newline")
        for (n, l) in lines.prefix(5).enumerated() {
            let text = String(decoding: l, as: UTF8.self)
            XCTAssertTrue(text.hasPrefix("{\"time\":") && text.hasSuffix(",\"seq\":\(n + 1)}") && text.contains("\"event\":\"verdict\""), text)
        }
        // The file and `audit-read` number the records alike: the same lines, the same numbers.
        let page = log.read(after: 2, limit: 10)
        XCTAssertEqual(page.records, lines[2..<5].map { String(decoding: $0, as: UTF8.self) })
        XCTAssertEqual(page.nextSeq, 6)
        XCTAssertEqual(log.counters.queued, 0)
        XCTAssertNil(log.counters.lastWriteError, "a write succeeded since")
        XCTAssertEqual(log.close(), 0)
    }

    /// The same with a real device that refuses every write (/dev/full: ENOSPC): under
    /// `audit-overflow block` the queue fills with the records it never takes and the next verdict
    /// is denied `audit.unrecorded` — no allow stands without its record in the queue — and
    /// shutdown says how many were never written.
    func testASinkThatRefusesEveryWriteFailsClosed() throws {
        let log = try AuditLog.appending(to: "/dev/full", capacity: 3, blockTimeout: 0.2)
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))  // audit-overflow block
        v.auditSink = log
        for _ in 0..<3 { XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .allow) }
        let denied = v.authorize(try request("crc7.ko"), requestDigest: [])
        XCTAssertEqual(denied.decision, .deny, denied.message)
        XCTAssertEqual(denied.reason, .auditUnrecorded, denied.message)
        XCTAssertGreaterThan(log.counters.writeErrors, 0)
        XCTAssertEqual(log.counters.queued, 3)
        XCTAssertEqual(log.counters.dropped, 0)
        XCTAssertEqual(log.close(timeout: 1), 3, "the three accepted records were never written")
    }

    /// At shutdown a verdict waiting for queue room is denied at once (`refuseWaits`), not after
    /// its 30 s here: it must not outlive the event loops that answer it.
    func testShutdownReleasesVerdictsWaitingForRoom() throws {
        let stalled = StalledWriter()
        let log = AuditLog(capacity: 1, blockTimeout: 30, writer: { try stalled.write($0) })
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))  // audit-overflow block
        v.auditSink = log
        XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .allow)  // the one queued record
        let done = DispatchSemaphore(value: 0)
        let r = try request("crc7.ko")
        nonisolated(unsafe) var waited: Verdict? = nil
        DispatchQueue.global().async { waited = v.authorize(r, requestDigest: []); done.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 0.5), .timedOut, "the second verdict waits for room")
        let t0 = MonotonicClock.nanoseconds()
        log.refuseWaits()
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertLessThan(MonotonicClock.nanoseconds() - t0, 2_000_000_000)
        XCTAssertEqual(waited?.reason, .auditUnrecorded)
        for _ in 0..<4 { stalled.gate.signal() }
        log.close(timeout: 1)
    }

    func testDropKeepsServingAndCountsDrops() throws {
        let stalled = StalledWriter()
        let log = AuditLog(capacity: 2, blockTimeout: 5, writer: { try stalled.write($0) })
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow").replacingOccurrences("audit-overflow block", "audit-overflow drop")))
        XCTAssertEqual(v.policy.auditOverflow, .drop)
        v.auditSink = log
        for _ in 0..<10 { XCTAssertEqual(v.authorize(try request("crc7.ko"), requestDigest: []).decision, .allow) }
        XCTAssertGreaterThanOrEqual(log.counters.dropped, 7)
        XCTAssertEqual(log.counters.dropped + log.counters.accepted, 10)
        let administrator = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        XCTAssertEqual(administrator.show().auditDropped, log.counters.dropped)
        for _ in 0..<20 { stalled.gate.signal() }
        log.close()
    }

    /// A valid policy near the 1 MiB limit made of `for guest` rules (a policy/admin review: 35,000
    /// of them made a 2.27 MB policy-show-reply, past the admin port's 2 MiB of unwritten replies,
    /// and `policy show` failed): the reply lists rules up to 512 KiB and says how many more the
    /// source holds, so it fits whatever the policy.
    func testPolicyShowOfTheLargestPolicyFitsTheAdminPort() throws {
        var body = "modules allow\n"
        var i = 0
        while body.utf8.count < 1_000_000 - 2_000 { body += "modules deny for guest web-\(i)\n"; i += 1 }
        let text = try PolicyFixtures.text(version: 3, body: body)
        let v = Verifier(policy: try PolicyFixtures.parse(text))
        let shown = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: nil).show()
        let bytes = shown.encode().readableBytes
        XCTAssertLessThan(bytes, AuditLimits.pagePoolBytes - (256 << 10), "policy-show-reply of \(bytes) bytes for \(i) rules")
        XCTAssertEqual(shown.source, text)
        let last = try XCTUnwrap(shown.rules.last)
        XCTAssertTrue(last.hasPrefix("… and ") && last.contains("more rule(s)"), last)
        XCTAssertEqual(try PolicyShowReply(decoding: shown.encode()), shown)
    }

    /// HOLE (round 12): `policy show` listed only the kind rules. A built-in policy's deny lists
    /// (`serve --deny-name`, `--deny-module-hash`, `--deny-cert`) were enforced but shown nowhere
    /// (it has no source), so two sidecars with different lists showed the same policy; a policy
    /// file's denials and pins were only in its source. Now every rule line is listed.
    func testPolicyShowListsDenyListsAndPins() throws {
        let h1 = String(repeating: "ab", count: 32), h2 = String(repeating: "cd", count: 32), h3 = String(repeating: "ef", count: 32)
        var builtin = Policy.builtIn(trust: TrustStore([]))
        builtin.deniedModuleNames = ["crc7"]
        builtin.denyList = DenyList(certificateTBSHashes: [Digest(algorithm: .sha256, hex: h1)!],
                                    moduleContentHashes: [Digest(algorithm: .sha256, hex: h2)!])
        let shown = PolicyAdministrator(verifier: Verifier(policy: builtin), adminCertificate: nil, builtinAnchors: [], audit: nil).show()
        XCTAssertEqual(shown.rules, ["modules allow for all guests", "text-patches allow for all guests", "deny module-name crc7",
                                     "deny module sha256:\(h2)", "deny certificate sha256:\(h1)"])
        let text = try PolicyFixtures.text(version: 3, body: "deny module-name vsock\ndeny module sha256:\(h2)\npin sha256:\(h3)\nmodules hash-pinned")
        let parsed = PolicyAdministrator(verifier: Verifier(policy: try PolicyFixtures.parse(text)), adminCertificate: nil, builtinAnchors: [], audit: nil).show()
        for line in ["deny module-name vsock", "deny module sha256:\(h2)", "pin sha256:\(h3)"] {
            XCTAssertTrue(parsed.rules.contains(line), "\(line) in \(parsed.rules)")
        }
    }

    /// A log's numbers stay below 2⁵³ whatever it is asked to start at (a clock read far in the
    /// future): `AuditLog(firstSequenceNumber: .max)` trapped at its first read (`last + 1`).
    func testNumberingNeverNearsTheTopOfU64() throws {
        let log = AuditLog(firstSequenceNumber: .max)
        defer { log.close() }
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))
        v.auditSink = log
        for _ in 0..<3 { _ = v.authorize(try request("crc7.ko"), requestDigest: []) }
        let page = log.read(after: 0, limit: 10)
        XCTAssertEqual(page.records.count, 3)
        XCTAssertEqual(page.firstSeq, AuditLog.highestFirstSequenceNumber)
        XCTAssertEqual(page.nextSeq, AuditLog.highestFirstSequenceNumber + 3)
        XCTAssertEqual(log.read(after: .max, limit: 10).records, page.records, "a cursor past the log reads it from its first record")
        XCTAssertLessThanOrEqual(AuditLog.startOfNumbering(), AuditLog.highestFirstSequenceNumber)
        XCTAssertGreaterThan(AuditLog.startOfNumbering(), 1_700_000_000_000_000)
    }

    func testPushIsDisabledWithoutAnAdminCertificate() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3)))
        let administrator = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: nil)
        let r = administrator.push(bundle: try AdminKeys.bundle(try PolicyFixtures.text(version: 4)))
        guard case .failure(let e) = r else { return XCTFail("accepted") }
        XCTAssertEqual(e.code, .pushDisabled)
        XCTAssertEqual(v.policy.version, 3)
    }

    func testAuditTimeFormat() {
        XCTAssertEqual(AuditTime.format(seconds: 0, milliseconds: 0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(AuditTime.format(seconds: 1_795_611_776, milliseconds: 123), "2026-11-25T13:02:56.123Z")
        XCTAssertEqual(AuditTime.format(seconds: 951_782_400, milliseconds: 5), "2000-02-29T00:00:00.005Z")
    }

    /// `execgate policy test` on the captured boot: default policy allows all 9 modules with
    /// end-state judged; the hash-pinned example denies all of them for an appliance guest (none is
    /// pinned) and allows them for another guest; exit codes 0 / 1.
    func testDryRunOnACapturedBoot() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try PolicyFixtures.kernelCertificate().pem.utf8))
        let capture = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        let policies = PolicyFixtures.shippedDirectory
        let ok = Fixtures.runExecgate(["policy", "test", "--policy", policies + "/default.policy", "--trust", cert, capture, "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let lines = ok.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 10, ok.stdout)
        XCTAssertTrue(lines.dropLast().allSatisfy { $0.contains("\"decision\":\"allow\"") && $0.contains("end-state") && $0.contains("\"policy_version\":2") }, ok.stdout)
        XCTAssertTrue(lines.last!.contains("\"allowed\":9,\"denied\":0"), ok.stdout)

        let pinned = Fixtures.runExecgate(["policy", "test", "--policy", policies + "/hash-pinned.policy", "--trust", cert, "--guest", "appliance-1", capture])
        XCTAssertEqual(pinned.status, 1, pinned.stderr)
        XCTAssertTrue(pinned.stdout.contains("DENY 8021q: policy.kind-denied"), pinned.stdout)
        XCTAssertTrue(pinned.stdout.contains("0 allowed (0 audit-only), 9 denied"), pinned.stdout)
        let other = Fixtures.runExecgate(["policy", "test", "--policy", policies + "/hash-pinned.policy", "--trust", cert, "--guest", "web-1", capture])
        XCTAssertEqual(other.status, 0, other.stdout)

        try Fixtures.writeFile(dir + "/bad.policy", Array("execgate-policy 1\nid x\nversion 2\nmode enforce\ntrust kernel-builtin\nmodules allow\nmodule deny\n".utf8))
        let bad = Fixtures.runExecgate(["policy", "test", "--policy", dir + "/bad.policy", "--trust", cert, capture])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("bad.policy:7:1: error: unknown keyword 'module'"), bad.stderr)
    }

    /// sign → check → serve with the bundle as boot policy → push a newer one → show, all through
    /// the real binary.
    func testCLISignServePushShow() throws {
        let dir = Fixtures.temporaryDirectory()
        let cert = dir + "/kernel.pem", adminKey = dir + "/admin-key.pem", adminCert = dir + "/admin.pem"
        try Fixtures.writeFile(cert, Array(try PolicyFixtures.kernelCertificate().pem.utf8))
        let gen = try GeneratedSigningKey.generateRSA(bits: 2048, commonName: "cli admin")
        try Fixtures.writeFile(adminKey, gen.privateKeyPEM)
        try Fixtures.writeFile(adminCert, gen.certificatePEM)
        let policies = PolicyFixtures.shippedDirectory
        let signed = Fixtures.runExecgate(["policy", "sign", "--key", adminKey, "--cert", adminCert, policies + "/blocklist-vulnerable-module.policy", "-o", dir + "/b.bundle"])
        XCTAssertEqual(signed.status, 0, signed.stderr)
        XCTAssertEqual(Fixtures.runExecgate(["policy", "check", dir + "/b.bundle", "--admin-cert", adminCert, "--trust", cert]).status, 0)
        XCTAssertEqual(Fixtures.runExecgate(["policy", "check", dir + "/b.bundle", "--admin-cert", cert, "--trust", cert]).status, 2)
        // `serve` refuses the same overlap (round 11: it started without complaint).
        let both = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + dir + "/o.sock", "--trust", adminCert, "--admin-cert", adminCert,
                                           "--admin-listen", "unix:" + dir + "/oa.sock"], stdoutPath: dir + "/o.out", stderrPath: dir + "/o.err")
        let overlapExit = Fixtures.wait(both, seconds: 30)
        if overlapExit == nil { kill(both, SIGKILL); _ = Fixtures.wait(both) }
        XCTAssertEqual(overlapExit, 2)
        XCTAssertTrue(String(decoding: try Fixtures.readFile(dir + "/o.err"), as: UTF8.self).contains("also a module trust anchor"))
        // `check --json` says everything the policy says: its deny lists too (they were missing).
        let checked = Fixtures.runExecgate(["policy", "check", dir + "/b.bundle", "--admin-cert", adminCert, "--trust", cert, "--json"])
        XCTAssertEqual(checked.status, 0, checked.stderr)
        let summary = try JSONReader.parse(Array(checked.stdout.utf8))
        XCTAssertEqual(summary["denied_module_names"], .array([.string("vsock_diag")]))
        XCTAssertEqual(summary["denied_modules"], .array([.string("sha256:ea2935d46800d6e0684b9d67b2366a1b1694798598509fa967fb908149ba0e94")]))
        XCTAssertEqual(summary["kernels"], .array([]))

        let vmm = "unix:" + dir + "/v.sock", adm = "unix:" + dir + "/a.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", vmm, "--admin-listen", adm, "--trust", cert, "--policy", policies + "/default.policy",
                                          "--admin-cert", adminCert, "--audit", dir + "/audit.jsonl"], stdoutPath: dir + "/out", stderrPath: dir + "/err")
        defer { kill(pid, SIGTERM); _ = Fixtures.wait(pid) }
        let shown = Fixtures.runExecgateUntilSuccess(["policy", "show", "--connect", adm, "--json"])
        XCTAssertEqual(shown.status, 0, shown.stderr)
        XCTAssertTrue(shown.stdout.contains("\"policy_id\":\"servicevm-default\",\"policy_version\":2"), shown.stdout)
        let push = Fixtures.runExecgate(["policy", "push", dir + "/b.bundle", "--connect", adm])
        XCTAssertEqual(push.status, 0, push.stderr)
        XCTAssertTrue(push.stdout.contains("activated block-vsock-cve v11 (was servicevm-default v2)"), push.stdout)
        let again = Fixtures.runExecgate(["policy", "push", dir + "/b.bundle", "--connect", adm])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("rollback refused"), again.stderr)
        let deny = Fixtures.runExecgate(["request", "module", try Fixtures.module(named: "vsock.ko"), "--connect", vmm])
        XCTAssertEqual(deny.status, 1)
        XCTAssertTrue(deny.stdout.contains("block-vsock-cve v11") || deny.stderr.contains("block-vsock-cve v11"), deny.stdout + deny.stderr)
        // The same records carried out through the admin port.
        let carried = Fixtures.runExecgate(["policy", "audit", "--connect", adm])
        XCTAssertEqual(carried.status, 0, carried.stderr)
        let carriedLines = carried.stdout.split(separator: "\n")
        XCTAssertEqual(carriedLines.count, 4, carried.stdout)  // boot, activation, refused push, one verdict
        XCTAssertTrue(carriedLines.first?.contains("\"detail\":\"boot\"") ?? false, carried.stdout)
        XCTAssertTrue(carriedLines.last?.contains("\"event\":\"verdict\"") ?? false, carried.stdout)
        kill(pid, SIGTERM)
        _ = Fixtures.wait(pid)
        let audit = String(decoding: try Fixtures.readFile(dir + "/audit.jsonl"), as: UTF8.self)
        XCTAssertTrue(audit.contains("\"event\":\"policy-activated\",\"policy_id\":\"block-vsock-cve\",\"policy_version\":11"), audit)
        XCTAssertTrue(audit.contains("\"event\":\"policy-push-refused\""), audit)
        XCTAssertTrue(audit.contains("\"decision\":\"deny\",\"audit_only\":false,\"reason\":\"deny.module-hash\""), audit)
    }
    /// Audit reads are paged by bytes as well as by count: the admin port's pages are ≤ 1 MiB,
    /// `more` says when to ask again, and paging carries every record once, in order.
    func testAuditReadIsPagedByBytes() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog(capacity: 100_000, retained: 100_000)
        v.auditSink = log
        let admin = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        let module = try request("crc7.ko")
        for i in 0..<6000 { _ = v.authorize(module, requestDigest: [UInt8(i & 0xff), UInt8(i >> 8)]) }
        log.flush()
        var after: UInt64 = 0, carried: [String] = [], pages = 0
        while true {
            let reply = admin.auditRead(AuditRead(afterSeq: after, maxRecords: 10_000))
            XCTAssertLessThanOrEqual(reply.records.reduce(0) { $0 + $1.utf8.count }, AuditLimits.maximumBytesPerRead)
            XCTAssertLessThanOrEqual(reply.encode().readableBytes, AuditLimits.maximumBytesPerRead + 6 * reply.records.count + 64)
            // The reply round-trips through its decoder (the repeated-record cap holds).
            XCTAssertEqual(try AuditReadReply(decoding: reply.encode()), reply)
            carried += reply.records
            pages += 1
            after = reply.nextSeq - 1
            if !reply.more { break }
        }
        XCTAssertEqual(carried.count, 6000)
        XCTAssertGreaterThan(pages, 1, "6000 records of ~400 bytes do not fit one 1 MiB page")
        XCTAssertEqual(Set(carried).count, 6000, "each record once")
        // A smaller max_bytes is honoured; a page always holds at least one record.
        let tiny = admin.auditRead(AuditRead(afterSeq: 0, maxRecords: 10, maxBytes: 1))
        XCTAssertEqual(tiny.records.count, 1)
        XCTAssertTrue(tiny.more)
        XCTAssertEqual(tiny.nextSeq, 2)
        log.close()
    }

    /// A flood of refused pushes (no key needed to be refused) is counted in full, recorded at a
    /// bounded rate, retained apart, and never evicts a verdict record.
    func testRefusedPushFloodNeverEvictsVerdicts() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog(capacity: 64, retained: 100)
        v.auditSink = log
        let admin = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        let module = try request("crc7.ko")
        for i in 0..<100 { _ = v.authorize(module, requestDigest: [UInt8(i)]) }
        log.flush()
        for _ in 0..<20_000 {
            if case .success = admin.push(bundle: [1, 2, 3]) { XCTFail("a push without an admin certificate succeeded") }
        }
        log.flush()
        XCTAssertEqual(log.counters.refusedPushes, 20_000)
        let page = log.read(after: 0, limit: 10_000)
        let verdicts = page.records.filter { $0.contains("\"event\":\"verdict\"") }
        let refused = page.records.filter { $0.contains("\"event\":\"policy-push-refused\"") }
        XCTAssertEqual(verdicts.count, 100, "every verdict survives the flood")
        XCTAssertGreaterThanOrEqual(refused.count, 1)
        XCTAssertLessThanOrEqual(refused.count, Int(AuditLimits.refusedPushBurst) + 5, "rate-limited")
        XCTAssertEqual(page.oldestSeq, 1)
        // Records are merged in sequence order.
        let seqOrder = page.records.map { $0 }
        XCTAssertEqual(seqOrder.count, verdicts.count + refused.count)
        log.close()
    }
}

/// DispatchSemaphore without importing Dispatch into every test file.
final class DispatchSemaphoreBox: @unchecked Sendable {
    private let s = DispatchSemaphore(value: 0)
    func wait() { s.wait() }
    func signal() { s.signal() }

}

extension AuditTests {
    /// HOLE (round 13): the refusals at the end of a burst were counted only in the next recorded
    /// refusal, which may never come: 15 refused pushes left 10 records and nothing else, not even
    /// after a graceful stop, and `policy show` had no count. Now `policy show` counts them all
    /// (tag 17), an activation names those suppressed before it, and `close` writes the rest.
    func testEveryRefusedPushOfABurstIsAccountedFor() throws {
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog(capacity: 64, retained: 100)
        v.auditSink = log
        let admin = PolicyAdministrator(verifier: v, adminCertificate: nil, builtinAnchors: [], audit: log)
        for _ in 0..<15 {
            if case .success = admin.push(bundle: [1, 2, 3]) { XCTFail("a push without an admin certificate succeeded") }
        }
        XCTAssertEqual(admin.show().refusedPushes, 15)
        XCTAssertEqual(try PolicyShowReply(decoding: admin.show().encode()).refusedPushes, 15, "tag 17 on the wire")
        log.close()
        let records = log.read(after: 0, limit: 1000).records
        let refused = records.filter { $0.contains("\"event\":\"policy-push-refused\"") }
        let tail = records.filter { $0.contains("\"event\":\"policy-push-refusals-unrecorded\"") }
        XCTAssertEqual(refused.count, Int(AuditLimits.refusedPushBurst))
        XCTAssertEqual(tail.count, 1, "\(records)")
        XCTAssertTrue(tail.first?.contains("\"count\":\(15 - Int(AuditLimits.refusedPushBurst))") ?? false, "\(tail)")
    }
}
