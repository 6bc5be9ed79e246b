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

    /// The initramfs stream: one zstd frame whose window (what the kernel's unpacker allocates,
    /// lib/decompress_unzstd.c) is at most 2^initramfsWindowLog (128 KiB) even for an input far
    /// larger, that zstd(1) decodes back to the input with no more memory than that, byte-identical
    /// on a second run.
    func testZstdInitramfsWindowAndRoundTrip() throws {
        // 3 MiB: a 1.5 MiB pseudo-random block twice, so a window >= 1.5 MiB would pay off and an
        // encoder that ignored the bound would show in the header.
        var seed: UInt64 = 0x9E3779B97F4A7C15
        var block = [UInt8](repeating: 0, count: 3 << 19)
        for i in block.indices { seed = seed &* 6364136223846793005 &+ 1442695040888963407; block[i] = UInt8(truncatingIfNeeded: seed >> 56) }
        let raw = block + block
        let z = try Compression.zstd(raw)
        XCTAssertEqual(try Compression.zstd(raw), z, "zstd output must be deterministic")
        XCTAssertEqual(Array(z[0..<4]), [0x28, 0xB5, 0x2F, 0xFD], "zstd frame magic")
        // RFC 8878 3.1.1.1: Frame_Header_Descriptor, then Window_Descriptor unless Single_Segment.
        let fhd = z[4]
        XCTAssertEqual(fhd & 0x20, 0, "not single-segment: the window is bounded, not the whole content")
        let wd = Int(z[5])
        let base = 1 << (10 + (wd >> 3))
        let window = base + base / 8 * (wd & 7)
        XCTAssertLessThanOrEqual(window, 1 << Int(Compression.initramfsWindowLog))
        // The repeat lies 1.5 MiB back: out of reach of the bounded window (no gain), within a 4 MiB one (half).
        XCTAssertGreaterThan(z.count, raw.count * 9 / 10, "the initramfs window must not reach a match 1.5 MiB back")
        XCTAssertLessThan(try Compression.zstd(raw, windowLog: 22).count, raw.count * 6 / 10, "a 4 MiB window finds it")
        XCTAssertThrowsError(try Compression.zstd(raw, windowLog: 28), "a window beyond what the kernel accepts is refused")

        guard let zstd = ["/usr/bin/zstd", "/bin/zstd"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("zstd(1) not installed (scripts/install-deps.sh installs it)")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("eg-zstd-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("a.cpio.zst")
        try Data(z).write(to: file)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: zstd)
        // --memory: the decoder's own window limit, as strict as the kernel's workspace for this frame.
        p.arguments = ["-dc", "--memory=\(1 << (Int(Compression.initramfsWindowLog) - 10))KB", file.path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        try p.run()
        let back = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertTrue(Array(back) == raw, "zstd -d gives back the input")
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
