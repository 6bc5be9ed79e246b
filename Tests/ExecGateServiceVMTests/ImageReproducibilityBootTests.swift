// SPDX-License-Identifier: Apache-2.0
//
// The image is reproducible: two `image build --force` runs from the same inputs into different
// directories give byte-identical artefacts (kernel, initramfs; image.txt records the output paths,
// so only its input fingerprint is compared). The test image is left out: it is the same archive
// plus fixtures through the same writer, and each zstd -19 pass costs seconds. Runs in
// the guest-booting phase (class name ends in BootTests, EXECGATE_VM_TEST=1) because it needs
// `make image`'s static execgate as /init (the builder refuses a dynamically linked one); it boots
// nothing. The kernel build's own reproducibility is checked by hand (Images/README.md): a second
// cold kernel build takes minutes.

import ExecGateTestSupport
import XCTest
@testable import ExecGateServiceVM

final class ImageReproducibilityBootTests: XCTestCase {
    func testTwoBuildsGiveByteIdenticalImages() throws {
        let staticBinary = try requireVM(image: false).staticExecgate
        let kernelPackage = try Fixtures.kernelDir()
        let root = NSTemporaryDirectory() + "eg-repro-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }

        var built: [[String: [UInt8]]] = []
        for run in ["a", "b"] {
            var o = try ImageBuildOptions.fromKernelPackage(kernelPackage, initBinary: staticBinary, outDir: root + "/" + run)
            o.force = true
            o.withTestImage = false
            let result = try ImageBuilder.build(o, log: { _ in })
            XCTAssertFalse(result.upToDate)
            var files: [String: [UInt8]] = [:]
            for name in try FS.list(o.outDir) { files[name] = try FS.read(o.outDir + "/" + name, limit: 256 << 20) }
            built.append(files)
        }
        let (a, b) = (built[0], built[1])
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        let x = try XCTUnwrap(a[ImageBuilder.initramfsName], "no initramfs built"), y = try XCTUnwrap(b[ImageBuilder.initramfsName])
        XCTAssertTrue(x == y, "the initramfs differs between two builds of the same inputs (\(x.count) vs \(y.count) bytes)")
        let fa = ImageInfo.parse(String(decoding: try XCTUnwrap(a["image.txt"]), as: UTF8.self))["fingerprint"]
        let fb = ImageInfo.parse(String(decoding: try XCTUnwrap(b["image.txt"]), as: UTF8.self))["fingerprint"]
        XCTAssertNotNil(fa)
        XCTAssertEqual(fa, fb, "the input fingerprint differs")
        XCTAssertTrue(a["vmlinux"] == b["vmlinux"] || a["vmlinuz"] == b["vmlinuz"], "the kernel differs")
        // And it is what the guest kernel can unpack: a zstd frame within the window bound.
        let z = try XCTUnwrap(a[ImageBuilder.initramfsName])
        XCTAssertEqual(Array(z.prefix(4)), [0x28, 0xB5, 0x2F, 0xFD], "not a zstd frame")
    }
}
