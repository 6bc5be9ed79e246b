// SPDX-License-Identifier: Apache-2.0
import XCTest
@testable import ExecGateServiceVM

final class CpioTests: XCTestCase {
    func sample() -> CpioArchive {
        var a = CpioArchive(mtime: 0)
        a.addFile("init", Array("#!/bin/false\n".utf8), mode: 0o755)
        a.addFile("lib/modules/execgate/01-a.ko", [1, 2, 3, 4, 5])
        a.addDirectory("proc")
        a.add("dev/console", mode: 0o600, .charDevice(major: 5, minor: 1))
        a.addSymlink("bin/x", target: "/init")
        return a
    }

    func testNewcLayoutAndTrailer() {
        let bytes = sample().encode()
        XCTAssertEqual(Array(bytes[0..<6]), Array("070701".utf8))
        XCTAssertEqual(bytes.count % 512, 0)
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(text.contains("TRAILER!!!"))
        // Parents are created and emitted before children (sorted order).
        let names = parseNames(bytes)
        XCTAssertEqual(names, ["bin", "bin/x", "dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/execgate",
                               "lib/modules/execgate/01-a.ko", "proc", "TRAILER!!!"])
    }

    func testDeterministic() {
        XCTAssertEqual(sample().encode(), sample().encode())
        var b = CpioArchive(mtime: 0)  // other insertion order, same content
        b.addSymlink("bin/x", target: "/init")
        b.addDirectory("proc")
        b.add("dev/console", mode: 0o600, .charDevice(major: 5, minor: 1))
        b.addFile("lib/modules/execgate/01-a.ko", [1, 2, 3, 4, 5])
        b.addFile("init", Array("#!/bin/false\n".utf8), mode: 0o755)
        XCTAssertEqual(sample().encode(), b.encode())
    }

    func testSystemCpioReadsIt() throws {
        guard let cpio = ["/usr/bin/cpio", "/bin/cpio"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("cpio(1) not installed")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("eg-cpio-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("a.cpio")
        try Data(sample().encode()).write(to: file)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: cpio)
        p.arguments = ["-itv", "-F", file.path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        try p.run()
        p.waitUntilExit()
        let listing = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, listing)
        XCTAssertTrue(listing.contains("lib/modules/execgate/01-a.ko"), listing)
        XCTAssertTrue(listing.contains("bin/x -> /init"), listing)
        XCTAssertTrue(listing.contains("crw-------"), listing)
    }

    func testGzipRoundTripsThroughZcat() throws {
        let raw = sample().encode()
        let gz = try Compression.gzip(raw)
        XCTAssertEqual(Array(gz[0..<2]), [0x1F, 0x8B])
        XCTAssertEqual(Array(gz[4..<8]), [0, 0, 0, 0], "gzip mtime must be 0 (determinism)")
        XCTAssertEqual(try Compression.gzip(raw), gz)
    }

    func parseNames(_ b: [UInt8]) -> [String] {
        var names: [String] = []
        var at = 0
        while at + 110 <= b.count, Array(b[at..<at + 6]) == Array("070701".utf8) {
            func field(_ i: Int) -> Int { Int(String(decoding: b[at + 6 + 8 * i..<at + 14 + 8 * i], as: UTF8.self), radix: 16)! }
            let size = field(6), nameSize = field(11)
            let name = String(decoding: b[at + 110..<at + 110 + nameSize - 1], as: UTF8.self)
            names.append(name)
            if name == "TRAILER!!!" { break }
            var next = at + 110 + nameSize
            next = (next + 3) & ~3
            next += size
            at = (next + 3) & ~3
        }
        return names
    }
}
