// SPDX-License-Identifier: Apache-2.0
//
// Attack round 2 written from docs/policy.md alone: `execgate policy check` (and `policy sign`,
// `policy test`, a push's parse) on hostile policy texts within the documented limits ("at most
// 1 MiB, and no line may be longer than 4096 bytes").

import ExecGatePolicy
import ExecGateTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class DocAttack2PolicyTests: XCTestCase {
    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        var a = timespec(), b = timespec()
        clock_gettime(CLOCK_MONOTONIC, &a)
        try body()
        clock_gettime(CLOCK_MONOTONIC, &b)
        return Double(b.tv_sec - a.tv_sec) + Double(b.tv_nsec - a.tv_nsec) / 1e9
    }

    /// HOLE (round docs2): a policy of 16,000 `class` lines and 16,000 `modules allow for class`
    /// rules (800 KB, inside the 1 MiB and 4,096-byte-line limits) took 100 s to parse in a debug
    /// build: each rule was checked against every earlier one for a duplicate (kind, selector),
    /// comparing selectors with their pattern lists, a quadratic pass. `policy check` exists to
    /// review a text before anyone signs it, so its input is hostile; the parse bounds its work by
    /// the file's size. Now one set lookup per rule.
    func testManyClassRulesParseInLinearTime() throws {
        var lines = ["execgate-policy 1", "id many", "version 3", "mode enforce", "trust kernel-builtin", "modules allow"]
        let n = 16_000
        for i in 0..<n { lines.append("class c\(i) g\(i)*") }
        for i in 0..<n { lines.append("modules allow for class c\(i)") }
        lines.append("modules deny for class c7")  // a duplicate, found at the end
        let text = Array((lines.joined(separator: "\n") + "\n").utf8)
        XCTAssertLessThan(text.count, 1 << 20)
        let anchors = try Fixtures.debianCertificates()
        var failure: PolicyParseError? = nil
        let t = seconds {
            do { _ = try PolicyParser.parse(text, file: "many.policy", builtinAnchors: anchors) } catch let e as PolicyParseError { failure = e } catch { XCTFail("\(error)") }
        }
        XCTAssertEqual(failure?.code, .duplicate, "\(String(describing: failure))")
        XCTAssertEqual(failure?.line, lines.count)
        XCTAssertLessThan(t, 20, "parsing \(text.count) bytes took \(t) s")
        // Without the duplicate it parses, every rule kept in file order.
        lines.removeLast()
        let ok = try PolicyParser.parse(Array((lines.joined(separator: "\n") + "\n").utf8), file: "many.policy", builtinAnchors: anchors)
        XCTAssertEqual(ok.kindRules.count, n + 3)
    }

    /// Failed attacks kept: the CLI's file readers on what is not a file. `policy check`, `policy
    /// sign`, `policy push`, `verify module` and `keys extract` on /dev/zero (endless) and on a FIFO
    /// nobody writes (would block at open or read forever): each answers at once, exit 2, "not a
    /// regular file" (README: 2 on unreadable input); nothing is read.
    func testCLIReadersRefuseWhatIsNotARegularFile() throws {
        var template = Array("/tmp/docattack2-fifo-XXXXXX".utf8CString)
        let dir = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        addTeardownBlock { _ = system("rm -rf '\(dir)'") }
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        for path in ["/dev/zero", fifo] {
            for args in [["policy", "check", path],
                         ["policy", "sign", path, "--key", path, "--cert", path, "-o", dir + "/b"],
                         ["policy", "push", path, "--connect", "unix:" + dir + "/none.sock"],
                         ["verify", "module", path, "--signature-only", "--trust", path],
                         ["keys", "extract", "--kernel", path, "--out", dir + "/k"]] {
                let r = Fixtures.runExecgate(args)
                XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains("not a regular file"), "\(args): \(r.stderr)")
            }
        }
    }
}
