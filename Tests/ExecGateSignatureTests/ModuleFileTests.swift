// SPDX-License-Identifier: Apache-2.0
//
// Compressed modules (`.ko.gz`, `.ko.xz`, `.ko.zst`), made the way distributions make them (the
// system's gzip/xz/zstd over a real signed Debian module, xz with Debian's kmod settings): the
// kernel decompresses before it checks the signature (kernel/module/decompress.c), so must we, and
// the verdict on the decompressed bytes is the verdict on the file.

import ExecGateKernelImage
import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class ModuleFileTests: XCTestCase {
    /// Compresses `bytes` with a system tool reading stdin, as `make modules_install` does.
    func compress(_ bytes: [UInt8], _ tool: [String]) throws -> [UInt8] {
        let dir = Fixtures.temporaryDirectory()
        let input = dir + "/m.ko"
        try Fixtures.writeFile(input, bytes)
        let r = Fixtures.run("/bin/sh", ["-c", "\(tool.joined(separator: " ")) < \(input) > \(input).z"])
        guard r.status == 0 else { throw Shared.Failure(description: "\(tool) failed: \(r.stderr)") }
        return try Fixtures.readFile(input + ".z")
    }

    static let tools: [(ModuleFileEncoding, [String])] = [
        (.xz, ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"]),  // scripts/Makefile.modinst (6.12)
        (.zstd, ["zstd", "-q", "-19", "-c"]),
        (.gzip, ["gzip", "-9", "-n", "-c"]),
    ]

    func testCompressedRealModulesVerifyExactlyLikeTheirELF() throws {
        let ko = try Shared.vsock()
        let trust = try Shared.debianTrust()
        guard case .success = ModuleSignatureVerifier.verify(module: ko, trust: trust) else { return XCTFail("vsock.ko must verify") }
        for (enc, tool) in Self.tools {
            let file = try compress(ko, tool)
            XCTAssertNotEqual(file, ko)
            let (elf, got) = try ModuleFile.decode(file)
            XCTAssertEqual(got, enc)
            XCTAssertEqual(elf, ko, "\(enc): decompression gives back the signed ELF byte for byte")
            guard case .success = ModuleSignatureVerifier.verify(module: elf, trust: trust) else { return XCTFail("\(enc) must verify") }
            // The compressed bytes themselves are not a signed module: only decoding makes them one.
            guard case .failure(let f) = ModuleSignatureVerifier.verify(module: file, trust: trust) else { return XCTFail("raw \(enc)") }
            XCTAssertEqual(f, .unsigned)
        }
        XCTAssertEqual(try ModuleFile.decode(ko).encoding, .elf)
    }

    func testTamperedCompressedModuleIsRefusedOrDenied() throws {
        let ko = try Shared.vsock()
        let trust = try Shared.debianTrust()
        // One changed byte inside the module before compressing: decodes fine, signature denies.
        var evil = ko
        evil[0x200] ^= 0x01
        let file = try compress(evil, Self.tools[0].1)
        let (elf, _) = try ModuleFile.decode(file)
        guard case .failure(let f) = ModuleSignatureVerifier.verify(module: elf, trust: trust) else { return XCTFail("tampered must deny") }
        XCTAssertEqual(f.code, "sig.digest-mismatch")
        // A changed byte in the compressed stream: the stream's own check (xz crc32) refuses it.
        var broken = try compress(ko, Self.tools[0].1)
        broken[broken.count / 2] ^= 0x40
        XCTAssertThrowsError(try ModuleFile.decode(broken))
    }

    func testForbidsTrailingBytesOtherFormatsAndBombs() throws {
        let ko = try Shared.vsock()
        for (_, tool) in Self.tools {
            let file = try compress(ko, tool) + [0x00, 0x00, 0x00, 0x00, 0x41]
            XCTAssertThrowsError(try ModuleFile.decode(file)) { e in
                XCTAssertEqual((e as? KernelImageError)?.code, .payloadNotELF, "\(tool[0]): \(e)")
            }
        }
        // bzip2 is a kernel-image compression, not a module one.
        let bz = try ko.withUnsafeBytes { try KernelCompression.bzip2.compress($0) }
        XCTAssertThrowsError(try ModuleFile.decode(bz)) { e in XCTAssertEqual((e as? KernelImageError)?.code, .unknownFormat) }
        XCTAssertThrowsError(try ModuleFile.decode([])) { e in XCTAssertEqual((e as? KernelImageError)?.code, .unknownFormat) }
        // A compressed stream that is not an ELF.
        let text = try compress(Array(repeating: 0x41, count: 4096), Self.tools[0].1)
        XCTAssertThrowsError(try ModuleFile.decode(text)) { e in XCTAssertEqual((e as? KernelImageError)?.code, .payloadNotELF) }
        // 64 MiB of zeros behind an ELF magic, decoded with a 1 MiB cap: refused, bounded.
        let bomb = try compress([0x7f, 0x45, 0x4c, 0x46] + [UInt8](repeating: 0, count: 64 << 20), Self.tools[0].1)
        XCTAssertLessThan(bomb.count, 64 << 10)
        XCTAssertThrowsError(try ModuleFile.decode(bomb, maximumSize: 1 << 20)) { e in
            XCTAssertEqual((e as? KernelImageError)?.code, .decompressedTooLarge)
        }
    }
}
