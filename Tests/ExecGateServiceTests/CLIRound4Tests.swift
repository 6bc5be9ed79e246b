// SPDX-License-Identifier: Apache-2.0
//
// CLI round 4: hostile command-line input against the real binary, as an operator's script or a
// careless user meets it. README's rules: exit 0 success/allow, 1 deny, 2 usage error, unreadable
// input or no verdict, the reason on stderr; never a trap (132/133/134/139) or a hang; nothing
// half-written or written to another path than the one given; `--json` output is JSON.

import _ExecGateInternals
import ExecGateTestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CLIRound4Tests: XCTestCase {
    var certPath = ""
    var dir = ""

    override func setUpWithError() throws {
        dir = Fixtures.temporaryDirectory()
        certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
    }

    static var fixtureCapture: String { Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a" }

    /// `execgate ARGS…` (raw bytes: arguments need not be UTF-8), killed after `seconds`;
    /// status nil when it had to be killed (a hang).
    func run(_ args: [[UInt8]], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        Fixtures.runExecgate(rawArguments: args, in: dir, seconds: seconds)
    }

    func run(_ args: [String], seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        run(args.map { Array($0.utf8) }, seconds: seconds)
    }

    /// Every line of `text` is one JSON value.
    func assertJSONLines(_ text: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        for l in text.split(separator: "\n") {
            XCTAssertNoThrow(try JSONReader.parse(Array(l.utf8)), "\(what): not JSON: \(l)", file: file, line: line)
        }
    }

    /// `execgate serve` on a fresh Unix socket (signature-only), answering status; its pid and address.
    func startServe() throws -> (pid: pid_t, address: String) {
        let address = "unix:" + dir + "/s.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", address, "--trust", certPath, "--signature-only"],
                                         stdoutPath: dir + "/serve.out", stderrPath: dir + "/serve.err")
        XCTAssertGreaterThan(pid, 0)
        let up = Fixtures.runExecgateUntilSuccess(["request", "status", "--connect", address])
        XCTAssertEqual(up.status, 0, up.stderr)
        addTeardownBlock { kill(pid, SIGTERM); _ = Fixtures.wait(pid) }
        return (pid, address)
    }

    /// `--timeout` takes any finite positive number of seconds; the client turned it into
    /// nanoseconds with Int64(t * 1e9), which traps from 9.3e9 s up (exit 132), on the request
    /// path and on the hybrid handshake's timer alike.
    func testHugeRequestTimeoutsAreWaitedOnNotATrap() throws {
        let serve = try startServe()
        for t in ["9.3e9", "1e10", "1e300"] {
            let r = run(["request", "status", "--connect", serve.address, "--timeout", t, "--json"], seconds: 30)
            XCTAssertEqual(r.status, 0, "--timeout \(t): \(r.stderr)")
            assertJSONLines(r.stdout, "status --timeout \(t)")
        }
        // A hybrid handshake with a verifier's own socket (no muxer behind it): the server's frame
        // deadline hangs up, and the handshake fails with a reason (exit 2), whatever the timeout.
        let h = run(["request", "status", "--connect", "hybrid:" + serve.address.dropFirst(5) + ":5000", "--timeout", "1e10"], seconds: 30)
        XCTAssertEqual(h.status, 2, h.stderr)
        XCTAssertTrue(h.stderr.contains("handshake"), h.stderr)
    }

    /// `explain --mutate N` ran `0..<N` mutations per class: N = -1 trapped (exit 132), and a huge
    /// N overflowed `N * 3` (the alternative class's attempt bound) or ran for ever.
    func testMutationCountsOutOfRangeAreUsageErrors() {
        for n in ["-1", "-9223372036854775808", "9223372036854775807", "100001"] {
            let r = run(["explain", Self.fixtureCapture, "--mutate", n, "--json"], seconds: 15)
            XCTAssertEqual(r.status, 2, "--mutate \(n): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("--mutate"), "--mutate \(n): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "--mutate \(n)")
        }
        for n in ["0", "1"] {
            let r = run(["explain", Self.fixtureCapture, "--mutate", n], seconds: 60)
            XCTAssertEqual(r.status, 0, "--mutate \(n): \(r.stderr)")
        }
        let p = run(["explain", Self.fixtureCapture, "--passes", "0"], seconds: 30)
        XCTAssertEqual(p.status, 2, p.stderr)
    }

    /// `explain --json` promises one JSON object per module and a summary; with `--mutate` the
    /// mutation totals (and any FALSE ACCEPT) and with `--bench` the throughput and RSS lines came
    /// out as text on the same stdout.
    func testExplainJSONStaysJSONWithMutateAndBench() {
        let m = run(["explain", Self.fixtureCapture, "--mutate", "1", "--json"], seconds: 120)
        XCTAssertEqual(m.status, 0, m.stderr)
        XCTAssertTrue(m.stdout.contains("\"mutation\""), m.stdout)
        assertJSONLines(m.stdout, "explain --mutate 1 --json")
        let b = run(["explain", Self.fixtureCapture, "--bench", "--passes", "1", "--json"], seconds: 120)
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(b.stdout.contains("\"bench\""), b.stdout)
        assertJSONLines(b.stdout, "explain --bench --json")
        // Text output unchanged.
        let t = run(["explain", Self.fixtureCapture, "--mutate", "1"], seconds: 120)
        XCTAssertTrue(t.stdout.contains("mutation byte-flip: tried "), t.stdout)
    }

    /// load-order.txt is capture data: a name holding a quote, a backslash or a control character
    /// was pasted into `explain --json` lines unescaped (the reason had only '"' replaced), so a
    /// reader got invalid JSON, or another string than the name.
    func testExplainJSONEscapesNamesFromTheCapture() throws {
        let cap = dir + "/cap"
        XCTAssertEqual(mkdir(cap, 0o755), 0)
        let d = try XCTUnwrap(opendir(Self.fixtureCapture))
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { XCTAssertEqual(symlink(Self.fixtureCapture + "/" + name, cap + "/" + name), 0) }
        }
        closedir(d)
        // A quote and a backslash are printable ASCII, so a module name; a control character is
        // not (CLIRound5Tests.testLoadOrderNamesArePlainModuleNamesNotPaths): invalid input, exit 2,
        // nothing on stdout.
        let odd = "x\"y\\q"
        try Fixtures.writeFile(cap + "/load-order.txt", Array("llc\n\(odd)\n".utf8))
        let r = run(["explain", cap, "--json"], seconds: 60)
        XCTAssertEqual(r.status, 2, "a module of the load order the capture lacks is unreadable input: \(r.stderr)")
        assertJSONLines(r.stdout, "explain --json of an odd name")
        let lines = r.stdout.split(separator: "\n").compactMap { try? JSONReader.parse(Array($0.utf8)) }
        XCTAssertTrue(lines.contains { $0["module"]?.stringValue == odd }, r.stdout)
        try Fixtures.writeFile(cap + "/load-order.txt", Array("llc\nx\u{01}z\n".utf8))
        let c = run(["explain", cap, "--json"], seconds: 60)
        XCTAssertEqual(c.status, 2, c.stderr)
        XCTAssertEqual(c.stdout, "")
        XCTAssertTrue(c.stderr.contains("x\\x1z"), c.stderr)
    }

    /// The atomic writer renamed its temporary file over whatever the output path named: `-o` a
    /// FIFO (or, as root, /dev/null or /dev/stdout) was replaced by a regular file, exit 0.
    func testOutputsNeverReplaceANonRegularFile() throws {
        let key = dir + "/adm"
        XCTAssertEqual(run(["keys", "generate", "--out", key, "--type", "ec-p256"]).status, 0)
        let ko = try Fixtures.module(named: "vsock.ko")
        let fifo = dir + "/out.fifo"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/blocklist-vulnerable-module.policy"
        for args in [["sign", "module", "--replace", "--key", key + "/key.pem", "--cert", key + "/cert.pem", ko, "-o", fifo, "--json"],
                     ["policy", "sign", "--key", key + "/key.pem", "--cert", key + "/cert.pem", policy, "-o", fifo]] {
            let r = run(args, seconds: 30)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("not a regular file"), r.stderr)
            XCTAssertEqual(r.stdout, "", "\(args)")
            var st = stat()
            XCTAssertEqual(lstat(fifo, &st), 0)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "the FIFO was replaced")
        }
        // A regular file is still replaced, atomically.
        let out = dir + "/signed.ko"
        try Fixtures.writeFile(out, [1, 2, 3])
        let ok = run(["sign", "module", "--replace", "--key", key + "/key.pem", "--cert", key + "/cert.pem", ko, "-o", out])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertGreaterThan(try Fixtures.readFile(out).count, 3)
    }

    /// Arguments reach Swift as Strings, with invalid UTF-8 replaced by U+FFFD: `-o o\xff.ko`
    /// wrote "o\u{FFFD}.ko", another file than the one named, exit 0, and an existing input with such
    /// a name was "No such file or directory".
    func testNonUTF8ArgumentsAreRefusedNotRewritten() throws {
        let key = dir + "/adm"
        XCTAssertEqual(run(["keys", "generate", "--out", key, "--type", "ec-p256"]).status, 0)
        let ko = try Fixtures.module(named: "vsock.ko")
        let out = Array((dir + "/o").utf8) + [0xff] + Array(".ko".utf8)
        let r = run([Array("sign".utf8), Array("module".utf8), Array("--replace".utf8), Array("--key".utf8), Array((key + "/key.pem").utf8),
                     Array("--cert".utf8), Array((key + "/cert.pem").utf8), Array(ko.utf8), Array("-o".utf8), out], seconds: 30)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("UTF-8"), r.stderr)
        XCTAssertNotEqual(access(dir + "/o\u{FFFD}.ko", F_OK), 0, "written under another name")
        var st = stat()
        XCTAssertNotEqual(stat(out.map { CChar(bitPattern: $0) } + [0], &st), 0, "nothing written under the name given either")
    }

    /// `vsock-bench` sizes: --bulk-mib 4096 made a frame the encoder cannot describe (exit 132);
    /// above the wire's largest body (28 MiB) the verifier refuses the frame unread and the bench
    /// printed its "throughput" (100 MiB: ~100 GB/s, exit 0); 2^44 shifted to 0 bytes; negative
    /// counts were silently taken as 1.
    func testVsockBenchSizesOutOfRangeAreUsageErrors() throws {
        let serve = try startServe()
        for args in [["--bulk-mib", "4096"], ["--bulk-mib", "100"], ["--bulk-mib", "17592186044416"], ["--bulk-mib", "0"],
                     ["--bulk-mib", "-1"], ["--round-trips", "-5"], ["--bulk-frames", "0"], ["--bulk-frames", "9223372036854775807"]] {
            let r = run(["vsock-bench", "--connect", serve.address, "--json"] + args, seconds: 15)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(args[0]), "\(args): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
        let ok = run(["vsock-bench", "--connect", serve.address, "--json", "--round-trips", "5", "--bulk-mib", "1", "--bulk-frames", "1"], seconds: 60)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        assertJSONLines(ok.stdout, "vsock-bench --json")
    }

    /// `bench --round-trips 9223372036854775807` reserved that many samples: glibc aborted
    /// (exit 134) after the signature phase; a negative count was taken as 1, a negative --limit as
    /// "every module".
    func testBenchCountsOutOfRangeAreUsageErrors() throws {
        let kernel = try Fixtures.kernelDir()
        for args in [["--round-trips", "9223372036854775807"], ["--round-trips", "30000000000"], ["--round-trips", "-5"], ["--round-trips", "0"], ["--limit", "-1"],
                     ["--rounds", "0"], ["--rounds", "21"], ["--rounds", "-1"], ["--clients", "0"], ["--clients", "65"]] {
            let r = run(["bench", "--kernel", kernel, "--json"] + (args[0] == "--limit" ? args : args + ["--limit", "1"]), seconds: 20)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(args[0]), "\(args): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
    }

    /// `serve --audit FIFO` opened the FIFO for writing in blocking mode: with no reader the
    /// service never started, printed nothing, and hung until killed.
    func testServeRefusesAnAuditFIFOWithoutAReader() throws {
        let fifo = dir + "/audit.fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let r = run(["serve", "--listen", "unix:" + dir + "/a.sock", "--trust", certPath, "--audit", fifo], seconds: 15)
        XCTAssertEqual(r.status, 2, "hung (nil) or wrong status: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains(fifo) && r.stderr.contains("reader"), r.stderr)
        // A regular audit file still works (created, serve starts).
        let file = dir + "/audit.jsonl"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + dir + "/b.sock", "--trust", certPath, "--audit", file],
                                         stdoutPath: dir + "/b.out", stderrPath: dir + "/b.err")
        let up = Fixtures.runExecgateUntilSuccess(["request", "status", "--connect", "unix:" + dir + "/b.sock"])
        XCTAssertEqual(up.status, 0, up.stderr)
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
        XCTAssertEqual(access(file, F_OK), 0)
    }

    /// keys generate and keys extract write several files: the first was replaced before the
    /// second was found unwritable, so a refused run (exit 2) had already swapped an operator's
    /// key.pem (--force) for a key with no certificate, or left cert-0.der without its PEM.
    func testMultiFileOutputsWriteNothingWhenOneCannotBeWritten() throws {
        let out = dir + "/keys"
        XCTAssertEqual(mkdir(out, 0o755), 0)
        try Fixtures.writeFile(out + "/key.pem", Array("OLD KEY\n".utf8))
        XCTAssertEqual(mkdir(out + "/cert.pem", 0o755), 0)
        let g = run(["keys", "generate", "--out", out, "--force", "--type", "ec-p256"], seconds: 60)
        XCTAssertEqual(g.status, 2, g.stderr)
        XCTAssertTrue(g.stderr.contains("cert.pem"), g.stderr)
        XCTAssertEqual(String(decoding: try Fixtures.readFile(out + "/key.pem"), as: UTF8.self), "OLD KEY\n", "key.pem replaced by a refused run")

        let ext = dir + "/extract"
        XCTAssertEqual(mkdir(ext, 0o755), 0)
        XCTAssertEqual(mkdir(ext + "/cert-0.pem", 0o755), 0)
        let e = run(["keys", "extract", "--kernel", try Fixtures.vmlinuz(), "--out", ext, "--json"], seconds: 60)
        XCTAssertEqual(e.status, 2, e.stderr)
        XCTAssertEqual(e.stdout, "")
        XCTAssertNotEqual(access(ext + "/cert-0.der", F_OK), 0, "cert-0.der left behind by a refused run")
    }

    /// bench finds a package's modules by walking lib/modules/*/kernel, following symbolic links
    /// into directories: two links to "." there (a loop) made the walk branch twice per level
    /// until the 40-link lookup limit, 2^40 paths: bench hung before its first progress line.
    func testBenchWalkDoesNotFollowDirectoryLinkLoops() throws {
        let pkg = dir + "/pkg"
        let kernel = pkg + "/lib/modules/6.1.0-test/kernel"
        for d in [pkg, pkg + "/boot", pkg + "/lib", pkg + "/lib/modules", pkg + "/lib/modules/6.1.0-test", kernel] {
            XCTAssertEqual(mkdir(d, 0o755), 0, d)
        }
        let vmlinuz = try Fixtures.vmlinuz()
        XCTAssertEqual(symlink(vmlinuz, pkg + "/boot/" + String(vmlinuz.split(separator: "/").last!)), 0)
        try Fixtures.writeFile(kernel + "/vsock.ko", try Fixtures.readFile(try Fixtures.module(named: "vsock.ko")))
        XCTAssertEqual(symlink(".", kernel + "/a"), 0)
        XCTAssertEqual(symlink(".", kernel + "/b"), 0)
        let r = run(["bench", "--kernel", pkg, "--round-trips", "10", "--json"], seconds: 60)
        XCTAssertEqual(r.status, 0, "hung (nil) or failed: \(r.stderr)")
        // Two JSON lines: the single-thread figures, then the pool and service ones.
        let figures = r.stdout.split(separator: "\n").first.flatMap { try? JSONReader.parse(Array($0.utf8)) }
        XCTAssertEqual(figures?["modules"], .int(1), r.stdout)
    }

    /// bench's inputs: a vmlinuz that is no kernel image escaped `run()` as a generic error
    /// (exit 1, README's deny status, for unreadable input), and a package without a single
    /// module was "benchmarked" (0 modules, ratios of nothing, exit 0).
    func testBenchRefusesUnreadableOrEmptyPackages() throws {
        let pkg = dir + "/pkg"
        let kernel = pkg + "/lib/modules/6.1.0-test/kernel"
        for d in [pkg, pkg + "/boot", pkg + "/lib", pkg + "/lib/modules", pkg + "/lib/modules/6.1.0-test", kernel] {
            XCTAssertEqual(mkdir(d, 0o755), 0, d)
        }
        try Fixtures.writeFile(pkg + "/boot/vmlinuz-test", Array("not a kernel".utf8))
        try Fixtures.writeFile(kernel + "/vsock.ko", try Fixtures.readFile(try Fixtures.module(named: "vsock.ko")))
        let garbage = run(["bench", "--kernel", pkg, "--round-trips", "10", "--json"], seconds: 60)
        XCTAssertEqual(garbage.status, 2, garbage.stderr)
        XCTAssertTrue(garbage.stderr.contains("vmlinuz-test"), garbage.stderr)
        XCTAssertEqual(garbage.stdout, "")

        XCTAssertEqual(unlink(kernel + "/vsock.ko"), 0)
        XCTAssertEqual(unlink(pkg + "/boot/vmlinuz-test"), 0)
        let vmlinuz = try Fixtures.vmlinuz()
        XCTAssertEqual(symlink(vmlinuz, pkg + "/boot/vmlinuz-test"), 0)
        let empty = run(["bench", "--kernel", pkg, "--round-trips", "10", "--json"], seconds: 60)
        XCTAssertEqual(empty.status, 2, empty.stderr)
        XCTAssertTrue(empty.stderr.contains("no module (.ko"), empty.stderr)
        XCTAssertEqual(empty.stdout, "")
    }

    /// A CAPTURE_DIR that does not exist or is a file was reported as its parent's missing
    /// load-order.txt ("./load-order.txt: No such file or directory" for `explain nosuch`), never
    /// naming the path given; `bench --scale` let that error escape as exit 1 and read
    /// `--guests 1,x` as "1".
    func testCaptureDirectoriesAreNamedWhenUnreadable() throws {
        let missing = dir + "/nosuch-boot"
        let file = dir + "/a-file"
        try Fixtures.writeFile(file, Array("x".utf8))
        for path in [missing, file] {
            for args in [["explain", path, "--json"],
                         ["policy", "test", "--policy", Fixtures.packageRoot + "/ServiceVM/policies/blocklist-vulnerable-module.policy", "--trust", certPath, path, "--json"],
                         ["bench", "--scale", "--kernel", try Fixtures.kernelDir(), "--capture", path, "--guests", "1"]] {
                let r = run(args, seconds: 60)
                XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains(path + ":"), "\(args): the reason names another path: \(r.stderr)")
                XCTAssertEqual(r.stdout, "", "\(args)")
            }
        }
        let g = run(["bench", "--scale", "--kernel", try Fixtures.kernelDir(), "--capture", Self.fixtureCapture, "--guests", "1,x"], seconds: 60)
        XCTAssertEqual(g.status, 2, g.stderr)
        XCTAssertTrue(g.stderr.contains("--guests"), g.stderr)
    }

    /// `policy check FILE --admin-cert CERT` ("also verify a bundle's signature against this admin
    /// certificate") exited 0 for a policy text, with nothing signed to verify, even when CERT did
    /// not exist: a script gating a push on it passed what the admin port refuses.
    func testPolicyCheckWithAnAdminCertificateNeedsASignedBundle() throws {
        let text = Fixtures.packageRoot + "/ServiceVM/policies/blocklist-vulnerable-module.policy"
        for cert in [dir + "/nosuch.pem", certPath] {
            let r = run(["policy", "check", text, "--admin-cert", cert], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(cert): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("not a signed bundle"), r.stderr)
            XCTAssertEqual(r.stdout, "")
        }
        XCTAssertEqual(run(["policy", "check", text]).status, 0, "a text alone still checks")
    }

    /// retire-module / init-freed exit 1 for a refusal (README: unknown module, module in use,
    /// unknown guest), 2 for a usage error or no verdict; every `error` reply exited 1, so a guest id
    /// too long for the wire (malformed-body, the caller's own bad input) read as a refusal.
    func testRetireAndInitFreedExit2ForErrorsThatAreNoRefusal() throws {
        let serve = try startServe()
        let long = String(repeating: "g", count: 70_000)
        for args in [["request", "init-freed", "vsock", "--guest", long, "--init-base", "0xffffffffc2000000"], ["request", "retire-module", "vsock", "--guest", long, "--text-base", "0xffffffffc0000000"]] {
            let r = run(args + ["--connect", serve.address, "--json"], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(args[1]): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("malformed-body"), r.stderr)
            XCTAssertEqual(r.stdout, "")
        }
        // A refusal stays 1.
        let refused = run(["request", "init-freed", "vsock", "--guest", "nosuch", "--init-base", "0xffffffffc2000000", "--connect", serve.address], seconds: 30)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("unknown-guest"), refused.stderr)
    }

    /// `explain --only NAME` with a name the load order does not hold (a typo) judged nothing and
    /// passed: "explained 0 of 0 modules", exit 0, as a capture holding none of its modules once did.
    func testExplainOnlyNamesModulesOfTheLoadOrder() {
        for only in ["nosuch", "llc,nosuch", ""] {
            let r = run(["explain", Self.fixtureCapture, "--only", only, "--json"], seconds: 60)
            XCTAssertEqual(r.status, 2, "--only '\(only)': \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("--only"), r.stderr)
            XCTAssertEqual(r.stdout, "", "--only '\(only)'")
        }
        let ok = run(["explain", Self.fixtureCapture, "--only", "llc,stp", "--json"], seconds: 60)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("\"modules\":2"), ok.stdout)
    }

    /// `--claim DIR` read every text/*.bin whole (each up to 512 MiB) with no bound on their
    /// number or total: three sparse 400 MiB files made `verify module` hold 1.2 GB and judge for
    /// minutes, a claim the service can never receive (its largest body is 28 MiB).
    func testClaimDirectoriesAreBoundedByTheWire() throws {
        let ko = try Fixtures.module(named: "vsock.ko")
        let claim = dir + "/claim"
        XCTAssertEqual(mkdir(claim, 0o755), 0)
        XCTAssertEqual(mkdir(claim + "/text", 0o755), 0)
        for i in 1...3 {
            let path = claim + "/text/ffffffffc000\(i)000_.text.bin"
            sparseFile(path, size: 400 << 20)
        }
        let t0 = MonotonicClock.seconds()
        let r = run(["verify", "module", ko, "--trust", certPath, "--claim", claim, "--json"], seconds: 60)
        XCTAssertEqual(r.status, 2, "killed (nil) or judged: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("bytes"), r.stderr)
        XCTAssertEqual(r.stdout, "")
        XCTAssertLessThan(MonotonicClock.seconds() - t0, 10)
        // More section files than a request may carry.
        let many = dir + "/many"
        XCTAssertEqual(mkdir(many, 0o755), 0)
        XCTAssertEqual(mkdir(many + "/text", 0o755), 0)
        for i in 0..<1025 { try Fixtures.writeFile(many + "/text/" + String(0xffffffffc0000000 + UInt64(i) << 12, radix: 16) + "_.text.bin", [0xc3]) }
        let m = run(["verify", "module", ko, "--trust", certPath, "--claim", many], seconds: 60)
        XCTAssertEqual(m.status, 2, m.stderr)
        XCTAssertTrue(m.stderr.contains("1024"), m.stderr)
    }

    /// keys generate created its --out directory before generating: a refused run (a common name
    /// OpenSSL cannot encode) left an empty directory behind, exit 2.
    func testRefusedKeysGenerateCreatesNothing() {
        let out = dir + "/new/keys"
        let r = run(["keys", "generate", "--out", out, "--type", "ec-p256", "--cn", String(repeating: "a", count: 100_000)], seconds: 60)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertNotEqual(access(dir + "/new", F_OK), 0, "a refused run left its output directory behind")
    }

    /// A sparse file of `size` bytes at `path` (no data blocks: a hostile size for free).
    private func sparseFile(_ path: String, size: off_t) {
        let fd = open(path, O_WRONLY | O_CREAT, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0, path)
        XCTAssertEqual(ftruncate(fd, size), 0, path)
        close(fd)
    }

    /// Runs the CLI with `args` (stdout to /dev/null, stderr kept): exit status, the child's
    /// `ru_maxrss` in KiB, stderr. Linux carries a process's RSS high-water mark across execve()
    /// (and posix_spawn() shares the test runner's memory until then), so the figure is at least
    /// the runner's own peak: compare against `execgate version` spawned the same way.
    private func spawnMeasured(_ args: [String]) -> (status: Int32, maxRSS: Int, err: String) {
        let pid = Fixtures.spawnExecgate(args, stdoutPath: "/dev/null", stderrPath: dir + "/err")
        XCTAssertGreaterThan(pid, 0, "spawn \(args)")
        var status: Int32 = 0
        var usage = rusage()
        XCTAssertEqual(wait4(pid, &status, 0, &usage), pid)
        let err = String(decoding: (try? Fixtures.readFile(dir + "/err")) ?? [], as: UTF8.self)
        return (status, usage.ru_maxrss, err)
    }

    /// Policy files were read with the CLI's general 512 MiB bound although no policy text is
    /// over 1 MiB and no bundle over 1 MiB + 64 KiB + 16: `policy check` of a 500 MiB file held
    /// ~1 GB before refusing it, and `policy push` read it whole before connecting.
    func testPolicyFilesAreReadWithThePolicyBound() throws {
        let baseline = spawnMeasured(["version"]).maxRSS
        let big = dir + "/big.policy"
        sparseFile(big, size: 500 << 20)
        for args in [["policy", "check", big], ["policy", "push", big, "--connect", "unix:" + dir + "/nosuch.sock"],
                     ["policy", "sign", "--key", certPath, "--cert", certPath, big, "-o", dir + "/b.bundle"],
                     ["serve", "--listen", "unix:" + dir + "/s.sock", "--policy", big]] {
            let (status, maxRSS, err) = spawnMeasured(args)
            XCTAssertEqual((status >> 8) & 0xff, 2, "\(args[0...1]): \(err)")
            XCTAssertLessThan(maxRSS, baseline + 200 << 10, "\(args[0...1]) held \(maxRSS) KiB (baseline \(baseline) KiB) for a file it must refuse: \(err)")
            XCTAssertTrue(err.contains("big.policy"), err)
        }
    }

    /// Certificates and keys (--trust, --cert, --admin-cert, --key) were read under the same
    /// 512 MiB bound as modules: a 500 MiB file named as a certificate or key made verify, sign
    /// and policy sign hold ~1 GB and search it for PEM before refusing it.
    func testCertificateAndKeyFilesAreReadWithASmallBound() throws {
        let baseline = spawnMeasured(["version"]).maxRSS
        let big = dir + "/big.pem"
        sparseFile(big, size: 500 << 20)
        let ko = try Fixtures.module(named: "vsock.ko")
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/blocklist-vulnerable-module.policy"
        for args in [["verify", "module", ko, "--trust", big, "--signature-only"],
                     ["sign", "module", "--key", big, "--cert", certPath, ko, "--replace", "-o", dir + "/s.ko"],
                     ["sign", "module", "--key", certPath, "--cert", big, ko, "--replace", "-o", dir + "/s.ko"],
                     ["policy", "sign", "--key", big, "--cert", certPath, policy, "-o", dir + "/b.bundle"],
                     ["policy", "check", policy, "--trust", big]] {
            let (status, maxRSS, err) = spawnMeasured(args)
            XCTAssertEqual((status >> 8) & 0xff, 2, "\(args[0...1]): \(err)")
            XCTAssertLessThan(maxRSS, baseline + 200 << 10, "\(args) held \(maxRSS) KiB (baseline \(baseline) KiB) for a file it must refuse: \(err)")
            XCTAssertTrue(err.contains("big.pem"), err)
        }
    }

    /// Failed attacks kept: every file-reading command refuses a directory, a FIFO (without
    /// blocking), /dev/zero, /dev/null, an empty file, a 100 GiB sparse file, a symbolic-link loop
    /// and a missing path with exit 2, the path in the reason and nothing on stdout (`--json` too);
    /// serve refuses a socket path over 107 bytes, a regular file, a directory or a FIFO in its
    /// place (left as they were), and replaces a stale socket.
    func testHostileInputPathsAreRefusedWithTheirReason() throws {
        let d = dir + "/d"
        XCTAssertEqual(mkdir(d, 0o755), 0)
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let empty = dir + "/empty"
        try Fixtures.writeFile(empty, [])
        let sparse = dir + "/sparse"
        sparseFile(sparse, size: 100 << 30)
        XCTAssertEqual(symlink(dir + "/loop-b", dir + "/loop-a"), 0)
        XCTAssertEqual(symlink(dir + "/loop-a", dir + "/loop-b"), 0)
        let ko = try Fixtures.module(named: "vsock.ko")
        let key = dir + "/adm"
        XCTAssertEqual(run(["keys", "generate", "--out", key, "--type", "ec-p256"]).status, 0)
        for bad in [d, fifo, "/dev/zero", "/dev/null", empty, sparse, dir + "/loop-a", dir + "/missing"] {
            for args in [["verify", "module", bad, "--trust", certPath, "--json"], ["verify", "module", ko, "--trust", bad, "--json"],
                         ["request", "module", bad, "--connect", "unix:" + dir + "/none.sock", "--json"],
                         ["sign", "module", "--key", key + "/key.pem", "--cert", key + "/cert.pem", bad, "-o", dir + "/o.ko", "--json"],
                         ["sign", "module", "--key", bad, "--cert", key + "/cert.pem", ko, "--replace", "-o", dir + "/o.ko", "--json"],
                         ["keys", "extract", "--kernel", bad, "--out", dir + "/kx", "--json"], ["policy", "check", bad],
                         ["policy", "sign", "--key", key + "/key.pem", "--cert", key + "/cert.pem", bad, "-o", dir + "/o.bundle"],
                         ["policy", "push", bad, "--connect", "unix:" + dir + "/none.sock", "--json"],
                         ["explain", bad, "--json"]] {
                let r = run(args, seconds: 30)
                XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
                // (An empty file is a bundle push sends: then the missing socket is the reason; an
                // empty folder is a boot without load-order.txt, its parent's then missing too.)
                XCTAssertTrue(r.stderr.contains(bad) || (bad == empty && args[1] == "push") || (bad == d && args[0] == "explain" && r.stderr.contains("load-order.txt")),
                              "\(args): \(r.stderr)")
                XCTAssertEqual(r.stdout, "", "\(args)")
            }
        }
        XCTAssertNotEqual(access(dir + "/o.ko", F_OK), 0)
        XCTAssertNotEqual(access(dir + "/o.bundle", F_OK), 0)
        XCTAssertNotEqual(access(dir + "/kx", F_OK), 0)

        let long = dir + "/" + String(repeating: "s", count: 110) + ".sock"
        let file = dir + "/file.sock"
        try Fixtures.writeFile(file, Array("keep".utf8))
        for (path, why) in [(long, "longer than 107 bytes"), (file, "regular file"), (d, "directory"), (fifo, "FIFO")] {
            let r = run(["serve", "--listen", "unix:" + path, "--trust", certPath], seconds: 30)
            XCTAssertEqual(r.status, 2, "\(path): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(why), r.stderr)
        }
        XCTAssertEqual(try Fixtures.readFile(file), Array("keep".utf8))
        var st = stat()
        XCTAssertEqual(lstat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO)
        // A stale socket (its listener gone) is replaced.
        let stale = dir + "/stale.sock"
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertEqual(UnixSocket.bind(s, to: stale), 0)
        close(s)
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + stale, "--trust", certPath], stdoutPath: dir + "/st.out", stderrPath: dir + "/st.err")
        let up = Fixtures.runExecgateUntilSuccess(["request", "status", "--connect", "unix:" + stale])
        XCTAssertEqual(up.status, 0, up.stderr)
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
    }

    /// `policy push` exits 1 when the verifier refuses the policy (another key, a version not
    /// newer, a bundle that does not parse: README), 2 when unreachable; pushed to a VMM port (no
    /// admin port there: unknown-message-type) it exited 1 as if the policy had been judged.
    func testPolicyPushToAPortThatIsNoAdminPortExits2() throws {
        let serve = try startServe()
        let key = dir + "/adm"
        XCTAssertEqual(run(["keys", "generate", "--out", key, "--type", "ec-p256"]).status, 0)
        let bundle = dir + "/p.bundle"
        let policy = Fixtures.packageRoot + "/ServiceVM/policies/blocklist-vulnerable-module.policy"
        XCTAssertEqual(run(["policy", "sign", "--key", key + "/key.pem", "--cert", key + "/cert.pem", policy, "-o", bundle]).status, 0)
        let wrongPort = run(["policy", "push", bundle, "--connect", serve.address], seconds: 30)
        XCTAssertEqual(wrongPort.status, 2, wrongPort.stderr)
        XCTAssertTrue(wrongPort.stderr.contains("unknown-message-type"), wrongPort.stderr)
        // A refusal by an admin port stays 1: a bundle signed by another key.
        let other = dir + "/other"
        XCTAssertEqual(run(["keys", "generate", "--out", other, "--type", "ec-p256"]).status, 0)
        let admin = "unix:" + dir + "/admin.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + dir + "/v2.sock", "--admin-listen", admin, "--admin-cert", other + "/cert.pem",
                                          "--trust", certPath], stdoutPath: dir + "/v2.out", stderrPath: dir + "/v2.err")
        XCTAssertEqual(Fixtures.runExecgateUntilSuccess(["policy", "show", "--connect", admin]).status, 0)
        let refused = run(["policy", "push", bundle, "--connect", admin, "--json"], seconds: 30)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stdout.contains("\"activated\":false"), refused.stdout)
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
    }

    /// keys generate --days past year 9999 (e.g. 3000000) failed as "key generation failed:
    /// unknown OpenSSL error": the certificate's notAfter cannot be encoded (X.509 GeneralizedTime
    /// ends with 9999), and nothing said which option or what range.
    func testKeysGenerateNamesTheLargestValidity() {
        for days in ["3000000", "2147483647"] {
            let r = run(["keys", "generate", "--out", dir + "/k" + days, "--type", "ec-p256", "--days", days], seconds: 30)
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains("--days") && r.stderr.contains("9999"), r.stderr)
        }
        XCTAssertEqual(run(["keys", "generate", "--out", dir + "/ok", "--type", "ec-p256", "--days", "2000000"], seconds: 30).status, 0)
    }
}
