// SPDX-License-Identifier: Apache-2.0
//
// CLI round 10: the leftovers of round 9. Words of another party printed for humans by the
// commands that read certificates, audit records and captures (README, "Commands": every control
// character escaped, `--json` exact), and input paths given as "". No QEMU is booted here.

import _ExecGateInternals
import ExecGateSignature
import ExecGateTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound10Tests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
    }

    func run(_ args: [String], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args.map { Array($0.utf8) }, extraEnvironment: [], in: dir, seconds: seconds)
    }

    /// A certificate's common name as a hostile signer chooses it (≤ 64 characters, X.520): an OSC
    /// window title and a CSI as escape sequences, a CSI as a C1 control, a right-to-left override
    /// and a line separator.
    static let hostileCN = "adm\u{1B}]0;owned\u{07}\u{9B}2J\u{202E}nimda\u{2028}ALLOW vsock: forged"

    /// What a terminal acts on rather than shows (CLIRound9Tests.isTerminalControl): C0 but the
    /// line feed, DEL, C1, U+2028/U+2029 and the bidirectional formatting characters.
    static func isTerminalControl(_ u: Unicode.Scalar) -> Bool {
        (u.value < 0x20 && u != "\n") || (0x7F...0x9F).contains(u.value) || u.value == 0x2028 || u.value == 0x2029
            || u.value == 0x061C || u.value == 0x200E || u.value == 0x200F || (0x202A...0x202E).contains(u.value) || (0x2066...0x2069).contains(u.value)
    }

    func assertTerminalSafe(_ text: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let raw = text.unicodeScalars.filter(Self.isTerminalControl).map { "U+" + String($0.value, radix: 16, uppercase: true) }
        XCTAssertTrue(raw.isEmpty, "\(what): control characters printed raw (\(raw)): \(text.debugDescription)", file: file, line: line)
        XCTAssertFalse(text.split(separator: "\n").contains { $0.hasPrefix("ALLOW vsock: forged") }, "\(what): a line of the signer's printed as ours",
                       file: file, line: line)
    }

    /// A vmlinux (ELF magic, then padding) holding `der` as its system_certificate_list: the list
    /// 8-aligned, zero-padded to 8, then system_certificate_list_size and module_cert_size
    /// (certs/system_certificates.S), as BuiltinCertificates finds it.
    static func vmlinux(holding der: [UInt8]) -> [UInt8] {
        var b: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 56)
        b += der
        while b.count % 8 != 0 { b.append(0) }
        for v in [UInt64(der.count), UInt64(der.count)] { b += (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        return b + [UInt8](repeating: 0, count: 64)
    }
}

extension CLIRound10Tests {
    /// HOLE: a certificate's subject and issuer were printed as they came by `keys generate`,
    /// `keys extract` (a kernel image's builtin certificates: the image is input), `sign module`,
    /// `policy sign` and `policy check --admin-cert` (the signer). OpenSSL's RFC 2253 printing
    /// (egs_x509_name: ASN1_STRFLGS_ESC_CTRL) escapes C0 controls as `\1B`, but not the C1
    /// controls (U+009B is CSI), U+2028 or the bidirectional overrides: a certificate whose CN
    /// holds them reordered the operator's line or acted on the terminal. README ("Commands"):
    /// words another party chose are printed for humans with every control character escaped;
    /// `--json` gives them exactly.
    func testCertificateSubjectsArePrintedEscaped() throws {
        let key = try GeneratedSigningKey.generateRSA(bits: 2048, commonName: Self.hostileCN)
        try Fixtures.writeFile(dir + "/key.pem", key.privateKeyPEM)
        try Fixtures.writeFile(dir + "/cert.pem", key.certificatePEM)
        let cert = try key.load().1
        XCTAssertTrue(cert.subject.unicodeScalars.contains("\u{202E}"), "the certificate does not hold the hostile name: \(cert.subject.debugDescription)")
        try Fixtures.writeFile(dir + "/vmlinux", Self.vmlinux(holding: cert.der))

        let generated = run(["keys", "generate", "--out", dir + "/gen", "--type", "ec-p256", "--cn", Self.hostileCN])
        XCTAssertEqual(generated.status, 0, generated.stderr)
        assertTerminalSafe(generated.stdout, "keys generate")

        let extracted = run(["keys", "extract", "--kernel", dir + "/vmlinux", "--out", dir + "/kx"])
        XCTAssertEqual(extracted.status, 0, extracted.stderr)
        XCTAssertTrue(extracted.stdout.contains("subject: "), extracted.stdout)
        assertTerminalSafe(extracted.stdout, "keys extract")
        // --json: the subject exactly, as a JSON string.
        let json = run(["keys", "extract", "--kernel", dir + "/vmlinux", "--out", dir + "/kx", "--json"])
        XCTAssertEqual(json.status, 0, json.stderr)
        let o = try? JSONReader.parse(Array(json.stdout.utf8))
        guard case .array(let certs)? = o?["certificates"] else { return XCTFail("no certificates array: \(json.stdout)") }
        XCTAssertEqual(certs.first?["subject"], .string(cert.subject), json.stdout)

        let module = try Fixtures.module(named: "vsock.ko")
        let signed = run(["sign", "module", "--key", dir + "/key.pem", "--cert", dir + "/cert.pem", "--replace", module, "-o", dir + "/v.ko"])
        XCTAssertEqual(signed.status, 0, signed.stderr)
        assertTerminalSafe(signed.stdout, "sign module")

        let policy = Fixtures.packageRoot + "/ServiceVM/policies/default.policy"
        let sealed = run(["policy", "sign", "--key", dir + "/key.pem", "--cert", dir + "/cert.pem", policy, "-o", dir + "/p.bundle"])
        XCTAssertEqual(sealed.status, 0, sealed.stderr)
        assertTerminalSafe(sealed.stdout, "policy sign")
        let checked = run(["policy", "check", dir + "/p.bundle", "--admin-cert", dir + "/cert.pem"])
        XCTAssertEqual(checked.status, 0, checked.stderr)
        assertTerminalSafe(checked.stdout, "policy check --admin-cert")
    }
}

extension CLIRound10Tests {
    /// One TLV field: tag (u16), length (u32), value (docs/protocol.md, "Body encoding").
    static func tlv(_ tag: UInt16, _ value: [UInt8]) -> [UInt8] {
        [UInt8(tag >> 8), UInt8(tag & 0xff), UInt8(value.count >> 24 & 0xff), UInt8(value.count >> 16 & 0xff),
         UInt8(value.count >> 8 & 0xff), UInt8(value.count & 0xff)] + value
    }
    static func tlv(_ tag: UInt16, u64 v: UInt64) -> [UInt8] { tlv(tag, (0..<8).map { UInt8(v >> (56 - 8 * $0) & 0xff) }) }

    /// HOLE: `policy audit` printed each record as the admin port sent it once it was one JSON
    /// object on one line (no C0 control, no line separator: `PolicyAudit.isOneJSONLine`). Inside
    /// a JSON string a C1 control (U+009B, CSI), DEL or a bidirectional override is valid JSON,
    /// and a record's words are a VMM's (guest ids, module names) or a hostile server's: they
    /// reached the operator's terminal raw. Now every such character in a record is written as its
    /// `\uXXXX` escape, which any JSON reader reads as the same string: the records stay exact.
    func testAuditRecordsReachTheTerminalEscapedAndStayExact() throws {
        let words = "a\u{9B}2J\u{7F}b\u{202E}c\u{2066}d"
        let record = "{\"event\":\"verdict\",\"module\":\"" + words + "\"}"
        let page: [UInt8] = Self.tlv(1, Array(record.utf8)) + Self.tlv(2, u64: 2) + Self.tlv(3, u64: 0) + Self.tlv(4, u64: 1)
        let sock = dir + "/a.sock"
        serveFrames(sock, connections: 1, everyFrame: true) { type in type == 0x0012 ? (0x8012, page) : (0xFFFF, []) }
        let r = run(["policy", "audit", "--connect", "unix:" + sock], seconds: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        assertTerminalSafe(r.stdout, "policy audit")
        let lines = r.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, r.stdout)
        let o = try? JSONReader.parse(Array((lines.first ?? "").utf8))
        XCTAssertEqual(o?["module"], .string(words), "the record was not kept exact: \(r.stdout.debugDescription)")
    }
}

extension CLIRound10Tests {
    /// HOLE: a path option given as "" was taken as a path. `bench --kernel ''` read the root
    /// directory's /boot and lib/modules ("" + "/boot"), `image build --kernel-package ''` too;
    /// `capture --kernel ''` looked for the current directory's boot/, and `capture --out ''`
    /// booted the capture VM to write into the current directory (FS.absolute("")), where every
    /// other output option refuses an empty path as a usage error naming the option (CLIRound7,
    /// `emptyOutputPath`); `vm start|status --state-dir ''` and `--image-dir ''` were the current
    /// directory. Each is now a usage error, exit 2, naming the option, before anything is read.
    func testEmptyPathOptionsAreUsageErrors() throws {
        let module = try Fixtures.module(named: "vsock.ko")
        let cases: [(args: [String], option: String)] = [
            (["bench", "--kernel", ""], "--kernel"),
            (["bench", "--scale", "--kernel", "", "--capture", dir], "--kernel"),
            (["bench", "--scale", "--kernel", dir, "--capture", ""], "--capture"),
            (["image", "build", "--kernel-package", "", "--out", dir + "/img"], "--kernel-package"),
            (["image", "build", "--kernel", "", "--out", dir + "/img"], "--kernel"),
            (["capture", "--kernel", "", "--modules", "vsock", "--out", dir + "/cap", "--init", module], "--kernel"),
            (["capture", "--kernel", dir, "--modules", "vsock", "--out", "", "--init", module], "--out"),
            (["vm", "start", "--state-dir", "", "--image-dir", dir], "--state-dir"),
            (["vm", "status", "--state-dir", ""], "--state-dir"),
            (["vm", "start", "--state-dir", dir + "/st", "--image-dir", ""], "--image-dir"),
        ]
        for c in cases {
            let r = run(c.args, seconds: 60)
            XCTAssertEqual(r.status, 2, "\(c.args): \(r.stdout) \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(c.option) && r.stderr.contains("empty"), "\(c.args): the reason does not name \(c.option): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("/boot"), "\(c.args): the empty path was read as a directory: \(r.stderr)")
        }
        XCTAssertEqual(access(dir + "/execgate", F_OK), -1, "a VM state directory was made in the current directory")
    }

    /// HOLE: `PATH.lock` files stayed behind. Every Unix listener locks `PATH.lock`
    /// (SocketPath.claim, rule 1); `execgate serve` left `vmm.sock.lock` and `admin.sock.lock`
    /// (and both sockets) after a graceful stop (SIGTERM: exit 0), the vsock backend left both
    /// `.lock` files though it removes its sockets when it stops (docs/vsock.md), a start refused
    /// for the path (a regular file there, one path for both backend sockets) left the lock file
    /// it had created for nothing. Now a listener that closes for good removes its socket (the
    /// one it bound) and then its lock file, still locked; a refused claim leaves none; a killed
    /// server's leftovers are reused by the next start.
    func testListenersLeaveNoLockFiles() throws {
        let key = try GeneratedSigningKey.generateECDSA(curve: .p256, commonName: "round 10 admin")
        try Fixtures.writeFile(dir + "/admin.pem", key.certificatePEM)
        func serve() -> pid_t {
            let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + dir + "/vmm.sock", "--admin-listen", "unix:" + dir + "/admin.sock",
                                              "--admin-cert", dir + "/admin.pem", "--log-level", "critical"],
                                             stdoutPath: dir + "/out", stderrPath: dir + "/err")
            for _ in 0..<100 where access(dir + "/admin.sock", F_OK) != 0 { usleep(100_000) }
            usleep(200_000)
            return pid
        }
        var pid = serve()
        XCTAssertEqual(access(dir + "/vmm.sock.lock", F_OK), 0, "serve holds no lock file")
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
        for f in ["vmm.sock", "vmm.sock.lock", "admin.sock", "admin.sock.lock"] {
            XCTAssertEqual(access(dir + "/" + f, F_OK), -1, "serve left \(f) after a graceful stop")
        }
        // Killed: both stay; the next start reuses them and stops clean.
        pid = serve()
        kill(pid, SIGKILL); _ = Fixtures.wait(pid)
        XCTAssertEqual(access(dir + "/vmm.sock.lock", F_OK), 0)
        pid = serve()
        XCTAssertEqual(Fixtures.runExecgate(["request", "status", "--connect", "unix:" + dir + "/vmm.sock"]).status, 0, "restarted serve does not answer")
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
        XCTAssertEqual(access(dir + "/vmm.sock.lock", F_OK), -1, "serve left vmm.sock.lock after a restart and a graceful stop")

        // Refused starts.
        try Fixtures.writeFile(dir + "/regular", [1])
        let file = run(["serve", "--listen", "unix:" + dir + "/regular"])
        XCTAssertEqual(file.status, 2, file.stderr)
        XCTAssertEqual(access(dir + "/regular.lock", F_OK), -1, "a refused listen left its lock file")
        let same = run(["vsock-backend", "--socket", dir + "/same.sock", "--uds", dir + "/same.sock", "--guest-cid", "3"], seconds: 15)
        XCTAssertEqual(same.status, 2, same.stderr)
        XCTAssertEqual(access(dir + "/same.sock.lock", F_OK), -1, "a refused backend left its lock file")

        // The backend, stopped.
        let b = Fixtures.spawnExecgate(["vsock-backend", "--socket", dir + "/vu.sock", "--uds", dir + "/h.sock", "--guest-cid", "3"],
                                       stdoutPath: dir + "/bout", stderrPath: dir + "/berr")
        for _ in 0..<100 where access(dir + "/h.sock", F_OK) != 0 { usleep(100_000) }
        XCTAssertEqual(access(dir + "/h.sock.lock", F_OK), 0, "the backend holds no lock file")
        kill(b, SIGTERM)
        _ = Fixtures.wait(b)
        for f in ["vu.sock", "vu.sock.lock", "h.sock", "h.sock.lock"] {
            XCTAssertEqual(access(dir + "/" + f, F_OK), -1, "the backend left \(f) when stopped")
        }
    }
}
