// SPDX-License-Identifier: Apache-2.0
//
// CLI round 5: what CLIRound4Tests left, against the real binary: environment variables the CLI
// reads and the capture directory reader (docs/capture.md: "A capture is written by the captured
// guest, so reading one is reading untrusted input").

import _ExecGateInternals
import ExecGateAdmin
import ExecGateTestSupport
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound5Tests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
    }

    static var fixtureCorpus: String { Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus" }

    /// `execgate ARGS…` with `extraEnvironment` (raw bytes) added to the runner's environment;
    /// status nil when it had to be killed (a hang).
    func run(_ args: [String], extraEnvironment: [[UInt8]] = [], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args.map { Array($0.utf8) }, extraEnvironment: extraEnvironment, in: dir, seconds: seconds)
    }

    /// HOLE (round 5): README: "Every argument must be valid UTF-8: one that is not … is refused
    /// with exit 2, never read or written under a repaired name." `vm status|stop` take their
    /// state directory from `$EXECGATE_RUN_DIR` when `--state-dir` is not given, and read it with
    /// `String(cString:)`, which repairs bad bytes to U+FFFD: `EXECGATE_RUN_DIR=/x/r\xff` looked
    /// for the VM under `/x/r\u{FFFD}/` (another directory, whose pid file `vm stop` would act
    /// on), where `--state-dir /x/r\xff` is refused. Now the variable is held to the same rule.
    func testANonUTF8RunDirectoryIsRefusedNotRepaired() throws {
        let repaired = dir + "/r\u{FFFD}"
        XCTAssertEqual(mkdir(repaired, 0o755), 0)
        let env = Array("EXECGATE_RUN_DIR=".utf8) + Array((dir + "/r").utf8) + [0xFF]
        for args in [["vm", "status"], ["vm", "status", "--json"]] {
            let r = run(args, extraEnvironment: [env], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stdout) \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("EXECGATE_RUN_DIR"), r.stderr)
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
        // A UTF-8 value is still the default, and --state-dir still overrides it.
        let ok = run(["vm", "status", "--name", "nobody"], extraEnvironment: [Array("EXECGATE_RUN_DIR=\(dir)".utf8)], seconds: 30)
        XCTAssertEqual(ok.status, 3, ok.stderr)
        let given = run(["vm", "status", "--name", "nobody", "--state-dir", dir], extraEnvironment: [env], seconds: 30)
        XCTAssertEqual(given.status, 3, given.stderr)
    }

    /// A copy of the fixture corpus whose load-order.txt has `line` in place of irqbypass's.
    func corpus(irqbypassAs line: String, moveTo: String? = nil) throws -> String {
        let root = dir + "/corpus"
        XCTAssertEqual(Fixtures.run("/bin/rm", ["-rf", root]).status, 0)
        let r = Fixtures.run("/bin/cp", ["-r", Self.fixtureCorpus, root])
        XCTAssertEqual(r.status, 0, r.stderr)
        if let moveTo {
            XCTAssertEqual(mkdir(root + "/" + moveTo, 0o755), 0)
            XCTAssertEqual(rename(root + "/nokaslr-a/irqbypass", root + "/" + moveTo + "/irqbypass"), 0)
        }
        let order = String(decoding: try Fixtures.readFile(root + "/load-order.txt"), as: UTF8.self)
        let lines = order.split(separator: "\n").map { $0 == "irqbypass" ? line : String($0) }
        XCTAssertTrue(lines.contains(line), order)
        try Fixtures.writeFile(root + "/load-order.txt", Array((lines.joined(separator: "\n") + "\n").utf8))
        return root + "/nokaslr-a"
    }

    /// HOLE (round 5): load-order.txt names the modules, and each module's files are
    /// `<boot>/<m>/` (docs/capture.md, "Output"), but a name was pasted into the path as written:
    /// `../elsewhere/irqbypass` read a module directory outside the capture and `explain` printed
    /// `allow ../elsewhere/irqbypass` (exit 0), a verdict for a "module" whose name the kernel
    /// could never load (a module name holds no '/': it is `struct module`'s name, printable
    /// ASCII, at most MODULE_NAME_LEN − 1 = 55 bytes). Now a load-order word that is not such a
    /// name is invalid input (exit 2), naming load-order.txt, for `explain` and `policy test`.
    func testLoadOrderNamesArePlainModuleNamesNotPaths() throws {
        let boot = try corpus(irqbypassAs: "../elsewhere/irqbypass", moveTo: "elsewhere")
        let e = run(["explain", boot, "--json"], seconds: 60)
        XCTAssertEqual(e.status, 2, e.stdout + e.stderr)
        XCTAssertTrue(e.stderr.contains("load-order.txt"), e.stderr)
        XCTAssertFalse(e.stdout.contains("elsewhere"), e.stdout)
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let t = run(["policy", "test", "--policy", Fixtures.packageRoot + "/ServiceVM/policies/default.policy", "--trust", cert, boot], seconds: 60)
        XCTAssertEqual(t.status, 2, t.stdout + t.stderr)
        XCTAssertTrue(t.stderr.contains("load-order.txt"), t.stderr)
        for bad in ["..", ".", "/tmp/irqbypass", String(repeating: "m", count: 56)] {
            let b = try corpus(irqbypassAs: bad)
            let r = run(["explain", b], seconds: 60)
            XCTAssertEqual(r.status, 2, "\(bad): \(r.stdout) \(r.stderr)")
        }
    }

    /// Failed attack kept: an honest load order (names with '-', which the reader maps to '_' as
    /// the kernel does) still explains every module.
    func testHonestLoadOrderStillExplains() throws {
        let boot = try corpus(irqbypassAs: "irqbypass")
        let r = run(["explain", boot], seconds: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("explained 9 of 9 modules"), r.stdout)
    }

    /// HOLE (round 5): docs/policy.md: `deny module-name NAME` is "at most 55 bytes
    /// (`MODULE_NAME_LEN` − 1: a longer name is no module's, refused)", and names are
    /// `[A-Za-z0-9._-]`; the built-in policy's `--deny-name` (serve, verify) took any word: a
    /// 56-byte name, an empty one or `vsock diag` loaded a deny rule no module can ever match,
    /// and the command went on (the module allowed, exit 0). Now the same rule as the policy
    /// language: a usage error (exit 2) naming --deny-name.
    func testDenyNamesNoModuleCanHaveAreUsageErrors() throws {
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let ko = Self.fixtureCorpus + "/nokaslr-a/irqbypass/irqbypass.ko"
        for bad in [String(repeating: "a", count: 56), "", "vsock diag", "vsock/diag", "vs\u{0301}ock"] {
            let r = run(["verify", "module", ko, "--trust", cert, "--signature-only", "--deny-name", bad, "--json"], seconds: 30)
            XCTAssertEqual(r.status, 2, "'\(bad)': \(r.stdout) \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("--deny-name"), r.stderr)
            XCTAssertEqual(r.stdout, "", "'\(bad)'")
        }
        // 55 bytes, and '-' for '_', still load (the second denies ip6_udp_tunnel by name).
        let longest = run(["verify", "module", ko, "--trust", cert, "--signature-only", "--deny-name", String(repeating: "a", count: 55)], seconds: 30)
        XCTAssertEqual(longest.status, 0, longest.stderr)
        let tunnel = Self.fixtureCorpus + "/nokaslr-a/ip6_udp_tunnel/ip6_udp_tunnel.ko"
        let denied = run(["verify", "module", tunnel, "--trust", cert, "--signature-only", "--deny-name", "ip6-udp-tunnel", "--json"], seconds: 30)
        XCTAssertEqual(denied.status, 1, denied.stderr)
        XCTAssertTrue(denied.stdout.contains("deny.module-name"), denied.stdout)
    }

    /// HOLE (round 5): "errors name the bad input": a bundle refused for its framing (truncated,
    /// trailing bytes) or its signature (another key) was reported as `execgate policy check:
    /// bundle.malformed: truncated: …`, naming no file, by `policy check`, `policy test` and
    /// `serve --policy` alike (a policy text's errors say FILE:LINE:COLUMN). Now the path leads.
    func testRefusedBundlesNameTheirFile() throws {
        let cert = dir + "/kernel.pem"
        try Fixtures.writeFile(cert, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        for (who, out) in [("admin", dir + "/admin"), ("other", dir + "/other")] {
            let k = run(["keys", "generate", "--out", out, "--type", "ec-p256", "--cn", who], seconds: 30)
            XCTAssertEqual(k.status, 0, k.stderr)
        }
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/default.policy"
        let good = dir + "/good.bundle", other = dir + "/other.bundle"
        for (key, path) in [("admin", good), ("other", other)] {
            let s = run(["policy", "sign", policy, "--key", dir + "/\(key)/key.pem", "--cert", dir + "/\(key)/cert.pem", "-o", path], seconds: 30)
            XCTAssertEqual(s.status, 0, s.stderr)
        }
        let bytes = try Fixtures.readFile(good)
        let truncated = dir + "/truncated.bundle", trailing = dir + "/trailing.bundle"
        try Fixtures.writeFile(truncated, Array(bytes.dropLast(10)))
        try Fixtures.writeFile(trailing, bytes + [0x0A])
        let admin = dir + "/admin/cert.pem"
        for bundle in [truncated, trailing, other] {
            let name = String(bundle.split(separator: "/").last!)
            var runs = [("check", run(["policy", "check", bundle, "--trust", cert, "--admin-cert", admin], seconds: 30)),
                        ("serve", run(["serve", "--listen", "unix:" + dir + "/never.sock", "--trust", cert, "--policy", bundle, "--admin-cert", admin], seconds: 30))]
            // Without an admin certificate only the framing is checked (a dry run verifies no signature).
            if bundle != other {
                runs.append(("check, no admin cert", run(["policy", "check", bundle, "--trust", cert], seconds: 30)))
                runs.append(("test", run(["policy", "test", "--policy", bundle, "--trust", cert, Self.fixtureCorpus + "/nokaslr-a"], seconds: 60)))
            }
            for (what, r) in runs {
                XCTAssertEqual(r.status, 2, "\(what) \(name): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains(bundle), "\(what) \(name): \(r.stderr)")
            }
        }
        // The honest bundle still checks and boots.
        let ok = run(["policy", "check", good, "--trust", cert, "--admin-cert", admin], seconds: 30)
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }

    /// HOLE (round 5): every capture file was read whole under a 1 GiB bound, the small text files
    /// too (docs/capture.md: "reading one is reading untrusted input"): a sparse 300 MiB
    /// `cpus.txt` (NUL bytes, no disk) made `explain` of the 9-module fixture hold ~940 MB and run
    /// for over four minutes, then exit 0. Now each file has a bound its kind can need (1 MiB for
    /// load-order.txt, cpus.txt, slide.txt, cmdline.txt, … and the two CPU-state dumps; 64 MiB
    /// for kallsyms.txt, ~10× a 6.1 kernel's with modules): a larger one is invalid input (exit
    /// 2) naming it, refused from its size before it is read.
    func testOversizedCaptureFilesAreRefusedFromTheirSize() throws {
        for (file, size) in [("nokaslr-a/cpus.txt", off_t(300 << 20)), ("load-order.txt", off_t(300 << 20)),
                             ("nokaslr-a/slide.txt", off_t(300 << 20)), ("nokaslr-a/kallsyms.txt", off_t(600 << 20))] {
            let boot = try corpus(irqbypassAs: "irqbypass")
            let path = dir + "/corpus/" + file
            XCTAssertEqual(truncate(path, size), 0, path)
            let t0 = MonotonicClock.seconds()
            let r = run(["explain", boot, "--json"], seconds: 15)
            XCTAssertEqual(r.status, 2, "\(file): killed (nil) or judged: \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(String(file.split(separator: "/").last!)), "\(file): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", file)
            XCTAssertLessThan(MonotonicClock.seconds() - t0, 5, file)
        }
    }

    /// A one-shot admin port at `path` that answers every frame with an audit-read-reply holding
    /// `records`; serves `connections` connections on a thread, then closes.
    func fakeAdminPort(_ path: String, records: [String], connections: Int = 1) -> Thread {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertEqual(UnixSocket.bind(fd, to: path), 0)
        XCTAssertEqual(listen(fd, 4), 0)
        let t = Thread {
            for _ in 0..<connections {
                let c = accept(fd, nil, nil)
                guard c >= 0 else { break }
                while true {
                    var header = [UInt8](repeating: 0, count: WireLimits.headerSize)
                    guard recv(c, &header, header.count, Int32(MSG_WAITALL)) == header.count else { break }
                    let id = header[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    let len = Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                    var body = [UInt8](repeating: 0, count: len)
                    if len > 0 { guard recv(c, &body, len, Int32(MSG_WAITALL)) == len else { break } }
                    var out = ByteBuffer()
                    out.writeFrame(Frame(type: AdminMessageType.auditReadReply, requestID: id,
                                         body: AuditReadReply(records: records, nextSeq: UInt64(records.count) + 1, dropped: 0, oldestSeq: 1).encode()))
                    let bytes = out.readBytes(length: out.readableBytes)!
                    _ = bytes.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
                close(c)
            }
            close(fd)
        }
        t.start()
        return t
    }

    /// Round 12: cursors from another log (a restart). A cursor past the log's last record
    /// reads it from its first, once a run; a resume hint's --log naming another log re-reads
    /// the service's from its first record.
    func testPolicyAuditRewindsOnceToALogNumberedBelowItsCursor() throws {
        // A cursor past every record of the log (a restart with the clock set back: the service
        // reads such a cursor from its first record) prints the log from its first record, once;
        // a server that keeps answering below the cursor is refused, never printed for ever.
        let records = ["{\"event\":\"policy-activated\",\"seq\":1}", "{\"event\":\"verdict\",\"seq\":2}"]
        for follow in [false, true] {
            let path = dir + "/admin-rewind-\(follow).sock"
            let t = fakeAdminPort(path, records: records)
            let r = run(["policy", "audit", "--after", "100", "--connect", "unix:" + path] + (follow ? ["--follow"] : []), seconds: 30)
            XCTAssertEqual(r.stdout, records.joined(separator: "\n") + "\n", r.stderr)
            XCTAssertTrue(r.stderr.contains("--after 100 is past the log's last record"), r.stderr)
            if follow {
                XCTAssertEqual(r.status, 2, "the same page again does not move the cursor: refused")
                XCTAssertTrue(r.stderr.contains("not past them"), r.stderr)
            } else {
                XCTAssertEqual(r.status, 0, r.stderr)
            }
            while !t.isFinished { usleep(10_000) }
        }
        // A resume hint's --log names the log the cursor was read from: another one (the service
        // restarted, its clock set back, so the cursor lies inside the new log's numbers) is
        // read from its first record, with a note.
        let path = dir + "/admin-log.sock"
        let t = fakeAdminPort(path, records: records)
        let r = run(["policy", "audit", "--after", "1", "--log", "500", "--connect", "unix:" + path], seconds: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("is not the one --after 1 was read from (500)"), r.stderr)
        XCTAssertEqual(r.stdout, records.joined(separator: "\n") + "\n", r.stderr)
        while !t.isFinished { usleep(10_000) }
    }

    /// HOLE (round 5): `policy audit` promises "JSON lines on stdout … one JSON line each" and
    /// printed each record as the admin port sent it: a record holding a newline (or a U+2028, or
    /// not JSON at all) became two lines on stdout, the second a forged `policy-activated` record
    /// in the operator's carried-out trail. Now every record must be one JSON object with no raw
    /// line break (the service escapes them: docs/policy.md, "Audit"), or `policy audit` stops,
    /// exit 2, naming the record, with nothing of it on stdout.
    func testPolicyAuditPrintsOnlyOneJSONLinePerRecord() throws {
        let honest = "{\"event\":\"verdict\",\"module\":\"a\\u2028b\"}"
        for bad in ["{\"event\":\"verdict\"}\n{\"event\":\"policy-activated\",\"policy_id\":\"forged\"}",
                    "{\"event\":\"verdict\",\"module\":\"a\u{2028}b\"}", "not json", "[1]"] {
            let path = dir + "/admin-\(bad.utf8.count).sock"
            let t = fakeAdminPort(path, records: [honest, bad])
            let r = run(["policy", "audit", "--connect", "unix:" + path], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(bad): \(r.stdout) \(r.stderr)")
            XCTAssertEqual(r.stdout, honest + "\n", bad)
            XCTAssertTrue(r.stderr.contains("record 2"), r.stderr)
            while !t.isFinished { usleep(10_000) }
        }
        let path = dir + "/admin-ok.sock"
        let t = fakeAdminPort(path, records: [honest])
        let ok = run(["policy", "audit", "--connect", "unix:" + path], seconds: 30)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(ok.stdout, honest + "\n")
        while !t.isFinished { usleep(10_000) }
    }

    /// Failed attack kept: a write cut short by the file-size limit (`ulimit -f`: SIGXFSZ, then
    /// EFBIG) in the middle of an output leaves nothing behind: `policy sign` and `keys generate`
    /// exit 2 naming the temporary file, and the output directory holds no part of either.
    func testAWriteCutShortByTheFileSizeLimitLeavesNothing() throws {
        let out = dir + "/out"
        XCTAssertEqual(mkdir(out, 0o755), 0)
        let k = run(["keys", "generate", "--out", dir + "/admin", "--type", "ec-p256"], seconds: 30)
        XCTAssertEqual(k.status, 0, k.stderr)
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/default.policy"
        for args in [["policy", "sign", policy, "--key", dir + "/admin/key.pem", "--cert", dir + "/admin/cert.pem", "-o", out + "/p.bundle"],
                     ["keys", "generate", "--out", out, "--bits", "2048"]] {
            let quoted = ([Fixtures.execgateBinary] + args).map { "'" + $0 + "'" }.joined(separator: " ")
            let r = Fixtures.run("/bin/sh", ["-c", "ulimit -f 2; exec " + quoted])
            XCTAssertEqual(r.status, 2, "\(args[0...1]): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("File too large"), r.stderr)
            var names: [String] = []
            if let d = opendir(out) {
                while let e = readdir(d) {
                    let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
                    if n != "." && n != ".." { names.append(n) }
                }
                closedir(d)
            }
            XCTAssertEqual(names, [], "\(args[0...1]) left \(names)")
        }
    }
}
