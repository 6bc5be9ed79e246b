// SPDX-License-Identifier: Apache-2.0
//
// Attack round 3 written from the docs alone: the CLI's capture reader (`execgate explain
// CAPTURE_DIR`, `execgate policy test … CAPTURE_DIR`; docs/capture.md, README "Commands": exit 2 on
// a usage error or unreadable input). A capture directory is written by a guest (its PID 1 packs
// `cpus.txt`, `kallsyms.txt`, … from the captured kernel's /sys and /proc) and read back on the
// host: every file of it is untrusted input, which a reader rejects with a precise error and
// never crashes on or waits for forever.

import ExecGateCapture
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttack3CaptureTests: XCTestCase {
    /// A copy of the fixture boot (and its parent's load order) in a fresh directory.
    private func copyOfTheFixtureBoot() throws -> String {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus"
        var template = Array("/tmp/docattack3-capture-XXXXXX".utf8CString)
        let dir = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        XCTAssertEqual(system("cp -r '\(corpus)/.' '\(dir)/'"), 0)
        addTeardownBlock { _ = system("rm -rf '\(dir)'") }
        return dir + "/nokaslr-a"
    }

    /// `execgate ARGS…` with a deadline: the exit status, stderr, and whether it had to be killed
    /// (only the process this test started, by its pid).
    private func runWithDeadline(_ args: [String], seconds: Double = 20) -> (status: Int32, stderr: String, killed: Bool) {
        let dir = Fixtures.temporaryDirectory()
        let pid = Fixtures.spawnExecgate(args, stdoutPath: dir + "/out", stderrPath: dir + "/err")
        guard pid > 0 else { return (-1, "spawn failed", false) }
        let code = Fixtures.wait(pid, seconds: seconds, pollMicroseconds: 50_000)
        let err = (try? Fixtures.readFile(dir + "/err")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return (code ?? 128 + SIGKILL, err, code == nil)
    }

    /// HOLE (round docs3): `cpus.txt` (the kernel's cpulist, e.g. `present 0-3`) was counted with
    /// unchecked arithmetic and converted with a trapping `UInt32(_:)`: a range `0-9223372036854775807`
    /// overflowed `b - a + 1`, and a range of more than 2³² CPUs trapped the conversion, killing
    /// `execgate explain` (and `policy test`) with SIGILL (exit 132) instead of exit 2 and a message.
    /// A CPU number the kernel can print is below NR_CPUS (8192 in Debian 6.1 and 6.12:
    /// bitmap_parselist() refuses a bit at or past the mask's width, cpumap_print_to_pagebuf()
    /// prints no higher one): anything else is not a cpulist, refused naming the file.
    func testACPUListNoKernelPrintsIsRefusedNotATrap() throws {
        let boot = try copyOfTheFixtureBoot()
        for list in ["0-9223372036854775807", "0-4294967296", "1-0", "0-8192", "8192", "0-3,x", "-1"] {
            XCTAssertEqual(system("printf 'present %s\\npossible %s\\n' '\(list)' '\(list)' > '\(boot)/cpus.txt'"), 0)
            let r = runWithDeadline(["explain", boot])
            XCTAssertFalse(r.killed, "\(list): still running after 20 s")
            XCTAssertEqual(r.status, 2, "\(list): \(r.stderr.suffix(400))")
            XCTAssertTrue(r.stderr.contains("cpus.txt"), "\(list): \(r.stderr.suffix(400))")
        }
        // The lists a kernel prints still read (the fixture's own `present 0`, and ranges).
        for list in ["0", "0-3", "0-1,4,6-7", "0-8191"] {
            XCTAssertEqual(system("printf 'present %s\\npossible %s\\n' '\(list)' '\(list)' > '\(boot)/cpus.txt'"), 0)
            XCTAssertNoThrow(try CaptureBoot.load(boot), list)
        }
    }

    /// HOLE (round docs3): the capture reader opened whatever a capture's name pointed at. A
    /// `cpus.txt` (or any other capture file) that is a FIFO nobody writes blocked `execgate
    /// explain` in open() forever; `/dev/zero` as `kallsyms.txt` was read up to the 1 GiB limit.
    /// Round 2 made the CLI's other readers refuse what is not a regular file
    /// (DocAttack2PolicyTests.testCLIReadersRefuseWhatIsNotARegularFile); the capture reader now
    /// does too: exit 2 at once, "not a regular file", nothing read.
    func testCaptureFilesThatAreNoRegularFilesAreRefusedAtOnce() throws {
        let boot = try copyOfTheFixtureBoot()
        XCTAssertEqual(system("rm -f '\(boot)/cpus.txt'"), 0)
        XCTAssertEqual(mkfifo(boot + "/cpus.txt", 0o600), 0)
        let r = runWithDeadline(["explain", boot], seconds: 10)
        XCTAssertFalse(r.killed, "explain blocked on a FIFO cpus.txt")
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("not a regular file"), r.stderr)

        let boot2 = try copyOfTheFixtureBoot()
        XCTAssertEqual(system("rm -f '\(boot2)/kallsyms.txt' && ln -s /dev/zero '\(boot2)/kallsyms.txt'"), 0)
        let z = runWithDeadline(["explain", boot2], seconds: 10)
        XCTAssertFalse(z.killed, "explain read /dev/zero as kallsyms.txt")
        XCTAssertEqual(z.status, 2, z.stderr)
        XCTAssertTrue(z.stderr.contains("not a regular file"), z.stderr)
    }

    /// HOLE (round docs3): README "Commands": `request module FILE --claim elf` (and `verify module
    /// … --claim elf`) lays each executable section of FILE at synthetic addresses from
    /// 0xffffffffc0000000, page after page. The section sizes are the file's word: an SHT_NOBITS
    /// executable section may declare up to 2⁶³−1 bytes (nothing in the file backs it), and the
    /// next address overflowed `address += size`: SIGILL (exit 132) instead of exit 2 and a
    /// message. Now a layout that leaves the module area (MODULES_END, 0xffffffffff000000) is
    /// refused as unreadable input before anything is sent.
    func testClaimElfOfAHugeNobitsSectionIsRefusedNotATrap() throws {
        var ko = try Fixtures.readFile(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a/irqbypass/irqbypass.ko")
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(ko[o + $1]) << (8 * UInt64($1)) } }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(ko[o + $1]) << (8 * UInt32($1)) } }
        func u16(_ o: Int) -> Int { Int(ko[o]) | Int(ko[o + 1]) << 8 }
        let shoff = Int(u64(0x28)), shnum = u16(0x3c), shstrndx = u16(0x3e)
        let names = Int(u64(shoff + shstrndx * 64 + 24))
        var patched = false
        for i in 0..<shnum {
            let h = shoff + i * 64
            let n = names + Int(u32(h))
            guard Array(ko[n..<n + 6]) == Array(".text\0".utf8) else { continue }
            ko.replaceSubrange(h + 4..<h + 8, with: [8, 0, 0, 0])  // SHT_NOBITS
            ko.replaceSubrange(h + 32..<h + 40, with: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])  // sh_size 2^63 - 1
            patched = true
        }
        XCTAssertTrue(patched, ".text")
        let dir = Fixtures.temporaryDirectory()
        try Fixtures.writeFile(dir + "/nobits.ko", ko)
        for args in [["request", "module", dir + "/nobits.ko", "--claim", "elf", "--connect", "unix:" + dir + "/none.sock"]] {
            let r = runWithDeadline(args)
            XCTAssertFalse(r.killed)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr.prefix(600))")
            XCTAssertTrue(r.stderr.contains("module area"), "\(args): \(r.stderr.prefix(600))")
        }
    }
}
