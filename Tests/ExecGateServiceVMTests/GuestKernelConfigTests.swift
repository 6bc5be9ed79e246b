// SPDX-License-Identifier: Apache-2.0
//
// The service VM's own kernel: the config fragment (Images/kernel/execgate.config) and the cache
// key of scripts/build-kernel.sh. Building the kernel takes minutes, so these tests do not build it:
// `make image` does, and the boot tests run on what it built. Byte-identical rebuilds were checked
// by hand (Images/README.md records how and the result).

import ExecGateTestSupport
import XCTest
@testable import ExecGateServiceVM

final class GuestKernelConfigTests: XCTestCase {
    var fragmentPath: String { Fixtures.packageRoot + "/Images/kernel/execgate.config" }
    var script: String { Fixtures.packageRoot + "/scripts/build-kernel.sh" }

    /// Every option line of the fragment sits under a comment line that says why it is there,
    /// and no option is named twice (the later line would silently win in Kconfig).
    func testEveryOptionHasAReasonAndAppearsOnce() throws {
        let lines = try FS.readString(fragmentPath, limit: 1 << 20).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var seen: [String: Int] = [:]
        var options = 0
        for (i, line) in lines.enumerated() {
            guard let name = Self.optionName(line) else {
                XCTAssertTrue(line.isEmpty || line.hasPrefix("#"), "line \(i + 1) is neither an option nor a comment: \(line)")
                continue
            }
            options += 1
            if let first = seen[name] { XCTFail("\(name) on lines \(first) and \(i + 1)") }
            seen[name] = i + 1
            // Walk up over the option lines of the same group to its reason.
            var j = i - 1
            while j >= 0, Self.optionName(lines[j]) != nil { j -= 1 }
            XCTAssertTrue(j >= 0 && lines[j].hasPrefix("# ") && !lines[j].hasPrefix("## ") && lines[j].count > 12,
                          "\(name) (line \(i + 1)) has no reason comment above it")
        }
        XCTAssertGreaterThan(options, 20)
        for must in ["CONFIG_MODULES", "CONFIG_64BIT", "CONFIG_PVH", "CONFIG_VSOCKETS", "CONFIG_BLK_DEV_INITRD"] {
            XCTAssertNotNil(seen[must], "\(must) must be decided explicitly in the fragment")
        }
    }

    /// The cache key is a function of the inputs: the same inputs give the same key, and changing
    /// one option of the fragment, or the source tarball, gives a different one (a stale kernel is
    /// never reused).
    func testCacheKeyFollowsFragmentAndSource() throws {
        let dir = NSTemporaryDirectory() + "eg-kkey-\(getpid())"
        try FS.mkdirs(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fragment = try FS.read(fragmentPath, limit: 1 << 20)
        try FS.write(dir + "/a.config", fragment)
        try FS.write(dir + "/b.config", Array(String(decoding: fragment, as: UTF8.self)
            .replacingOccurrences(of: "CONFIG_HZ_250=y", with: "CONFIG_HZ_100=y").utf8))
        try FS.write(dir + "/src1.tar.xz", Array("not a kernel 1".utf8))
        try FS.write(dir + "/src2.tar.xz", Array("not a kernel 2".utf8))
        let a1 = try key(config: dir + "/a.config", source: dir + "/src1.tar.xz", dir: dir)
        let a2 = try key(config: dir + "/a.config", source: dir + "/src1.tar.xz", dir: dir)
        let b = try key(config: dir + "/b.config", source: dir + "/src1.tar.xz", dir: dir)
        let s = try key(config: dir + "/a.config", source: dir + "/src2.tar.xz", dir: dir)
        XCTAssertEqual(a1.count, 32, a1)
        XCTAssertTrue(a1.allSatisfy(\.isHexDigit), a1)
        XCTAssertEqual(a1, a2)
        XCTAssertNotEqual(a1, b, "a changed fragment must change the key")
        XCTAssertNotEqual(a1, s, "a changed source must change the key")
    }

    /// An unknown option is refused with a message and exit status 2, before any work.
    func testScriptRefusesUnknownOption() throws {
        let dir = NSTemporaryDirectory() + "eg-kopt-\(getpid())"
        try FS.mkdirs(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (rc, out) = try runScript(["/bin/bash", script, "--bogus"], dir: dir)
        XCTAssertEqual(rc, 2)
        XCTAssertTrue(out.contains("unknown option --bogus"), out)
    }

    static func optionName(_ line: String) -> String? {
        if line.hasPrefix("CONFIG_"), let eq = line.firstIndex(of: "=") { return String(line[..<eq]) }
        if line.hasPrefix("# CONFIG_"), line.hasSuffix(" is not set") {
            return String(line.dropFirst(2).dropLast(" is not set".count))
        }
        return nil
    }

    func key(config: String, source: String, dir: String) throws -> String {
        let (rc, out) = try runScript(["/bin/bash", script, "--key", "--config", config, "--source", source], dir: dir)
        XCTAssertEqual(rc, 0, out)
        return out.split(separator: "\n").last.map(String.init) ?? ""
    }
}
