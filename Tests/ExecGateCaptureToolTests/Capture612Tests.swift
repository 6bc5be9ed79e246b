// SPDX-License-Identifier: Apache-2.0
//
// Host-only: what a capture's registration takes from the guest depends on the kernel build.
// `x86_capability[]` sits at +0x28 of `struct cpuinfo_x86` on Debian 6.1 and at +0x30 on Debian
// 6.12 (BTF of both vmlinux, docs/kernels/6.12-loader.md §2.3); the release in `uname.txt` picks it.

@testable import ExecGateCapture
@testable import ExecGateCaptureTool
import ExecGateKernelImage
import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class Capture612Tests: XCTestCase {
    func registration(uname: String) throws -> (caps: [UInt8], release: String, cpu: [UInt8]) {
        let dir = Fixtures.temporaryDirectory()
        try Fixtures.writeFile(dir + "/kallsyms.txt", Array("ffffffff81000000 T _text\n".utf8))
        let cpu = (0..<512).map { UInt8(truncatingIfNeeded: $0) }
        try Fixtures.writeFile(dir + "/boot_cpu_data.bin", cpu)
        try Fixtures.writeFile(dir + "/cpus.txt", Array("present 0\npossible 0\n".utf8))
        try Fixtures.writeFile(dir + "/uname.txt", Array(uname.utf8))
        let r = try CaptureBoot.registration(dir: dir, guestID: "t")
        return (r.cpuCapabilities, r.kernelRelease, cpu)
    }

    func testCapabilityWordsAreReadAtTheBuildsOffset() throws {
        let new = try registration(uname: "6.12.117+deb12-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.12.117-1~deb12u1\n")
        XCTAssertEqual(new.release, "6.12.117+deb12-amd64")
        XCTAssertEqual(new.caps, Array(new.cpu[0x30..<0x90]))
        let old = try registration(uname: "Linux (none) 6.1.0-56-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 x86_64 GNU/Linux\n")
        XCTAssertEqual(old.release, "6.1.0-56-amd64")
        XCTAssertEqual(old.caps, Array(old.cpu[0x28..<0x88]))
        XCTAssertEqual(ModuleLoader.linux6_12.capabilityOffset, 0x30)
    }
}

extension Capture612Tests {
    /// 6.12 keeps one vmalloc area per non-empty core type (move_module()); the capture paces its
    /// init-free wait on that count. crc7 has text, rodata and data; cast_common no text.
    func testCoreAllocationCountPerType() throws {
        let crc7 = try Loader612Inputs.module("lib/crc7")
        let cast = try Loader612Inputs.module("crypto/cast_common")
        XCTAssertEqual(try CaptureGuest.coreTypeCount(crc7), 3)
        XCTAssertEqual(try CaptureGuest.coreTypeCount(cast), 2)
        XCTAssertTrue(CaptureGuest.perTypeModuleMemory(release: "6.12.117+deb12-amd64"))
        XCTAssertFalse(CaptureGuest.perTypeModuleMemory(release: "6.1.0-56-amd64"))
    }
}

enum Loader612Inputs {
    static func module(_ rel: String) throws -> [UInt8] {
        let p = Fixtures.packageRoot + "/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64/lib/modules/6.12.117+deb12-amd64/kernel/" + rel + ".ko.xz"
        return try ModuleFile.decode(try Fixtures.readFile(p)).elf
    }
}
