// SPDX-License-Identifier: Apache-2.0
//
// A module the guest kernel refuses (finit_module fails: `kvm_intel` under TCG, "Operation not
// supported"; `sha256_ssse3` on QEMU's qemu64 model, "No such device") was never loaded:
// load_module() frees it on its error path (kernel/module/main.c, `free_module`/`bug_cleanup`
// labels) and it never becomes a live module, so there is nothing of it to judge. The capture
// reports it (exit 1, "not captured"), but its boot directory's load-order.txt named it anyway,
// and since ef3e4a7 `explain` denies and `policy test` rejects (exit 2) every module
// load-order.txt names without a directory: an honest capture on a CPU model lacking one
// feature was unusable, and every module after the refused one went unjudged.
// Runs on the cached Debian 6.1 tree (.cache/kernel/current, `make test-data`): the real llc.ko and
// stp.ko are laid out from a synthetic guest archive whose insmod.log says stp was refused.

@testable import ExecGateCaptureTool
import ExecGateCapture
import ExecGateServiceVM
import ExecGateTestSupport
import _ExecGateInternals
import XCTest

final class CaptureRefusedModuleTests: XCTestCase {
    func testRefusedModuleIsNotInTheBootsLoadOrder() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        guard FileManager.default.fileExists(atPath: kernel + "/boot") else {
            throw XCTSkip("no unpacked Debian kernel at \(kernel) (make test-data): the layout needs its llc.ko and stp.ko")
        }
        let tree = try KernelTree.open(directory: kernel)
        let index = try ModuleIndex(modulesDir: tree.modulesDir)
        let out = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let o = CaptureOptions(kernel: kernel, modules: ["stp", "tun"], outDir: out, initBinary: "/bin/sh", workDir: out + "/w")
        let t = { (s: String) in Array(s.utf8) }
        let members: [Tar.Member] = [
            .init(path: "kallsyms.txt", bytes: t("ffffffff81000000 T _text\n")),
            .init(path: "boot_cpu_data.bin", bytes: [UInt8](repeating: 0, count: 512)),
            .init(path: "pv_ops.bin", bytes: [UInt8](repeating: 0, count: 4096)),
            .init(path: "cpus.txt", bytes: t("present 0\npossible 0\nonline 0\n")),
            .init(path: "cmdline.txt", bytes: t("console=ttyS0\n")),
            .init(path: "kvars.txt", bytes: t("_text 0xffffffff81000000 0x9090909090909090\n")),
            // llc loaded, stp refused by the guest kernel, tun (after it) loaded.
            .init(path: "insmod.log", bytes: t("llc rc=0 t0=1.00 t1=1.01 \nstp rc=-19 t0=1.02 t1=1.03 No such device\ntun rc=0 t0=1.04 t1=1.05 \n")),
            .init(path: "llc/module.txt", bytes: t("core_base=0xffffffffc0000000\ntext_base=0xffffffffc0000000\ntext_size=4096\ncoresize=8192\ninitsize=0\ntaint=\n")),
            .init(path: "llc/sections.json", bytes: t("{\n \".text\": \"0xffffffffc0000000\"\n}\n")),
            .init(path: "tun/module.txt", bytes: t("core_base=0xffffffffc0010000\ntext_base=0xffffffffc0010000\ntext_size=4096\ncoresize=8192\ninitsize=0\ntaint=\n")),
            .init(path: "tun/sections.json", bytes: t("{\n \".text\": \"0xffffffffc0010000\"\n}\n")),
        ]
        let s = try CaptureLayout.write(members: members, options: o, tree: tree, index: index, order: ["llc", "stp", "tun"],
                                        depends: ["stp": ["llc"]])
        XCTAssertEqual(s.captured, ["llc", "tun"])
        XCTAssertEqual(s.failed.map(\.0), ["stp"], "the refusal is still reported")
        // The boot's load order names what the guest kernel loaded, in order; each has its directory.
        let order = try String(contentsOfFile: s.bootDir + "/load-order.txt", encoding: .utf8)
        XCTAssertEqual(order, "llc\ntun\n")
        for name in order.split(separator: "\n") {
            XCTAssertTrue(FileManager.default.fileExists(atPath: s.bootDir + "/\(name)/layout.json"), "\(name) named but not captured")
        }
    }
}

/// A capture guest killed before its done line: the console's cause in words (CaptureTool.diagnosis).
final class CaptureGuestDiagnosisTests: XCTestCase {
    /// QEMU's `Conroe` model has no CMPXCHG16B: the static /init dies on its first `lock
    /// cmpxchg16b` (the console of a real 6.12.111-cloud capture, trimmed), and the capture said
    /// only "stopped without finishing" above the console tail.
    func testAnInvalidOpcodeInInitNamesTheCPUModel() {
        let console = """
        [    5.391211] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000004\r
        [    5.392403] CPU: 0 UID: 0 PID: 1 Comm: init Not tainted 6.12.111+deb12-cloud-amd64 #1  Debian 6.12.111-1~deb12u1\r
        [    5.395110]  irqentry_exit_to_user_mode+0x12e/0x1a0\r
        [    5.395225]  asm_exc_invalid_op+0x1a/0x20\r
        [    5.395449] RIP: 0033:0x8dd3d2\r
        """
        let hint = CaptureTool.diagnosis(console: console)
        XCTAssertNotNil(hint)
        XCTAssertTrue(hint?.contains("cx16") == true && hint?.contains("--cpu") == true, hint ?? "nil")
        // Another death of init is named as such, without the CPU claim; a console without one, nothing.
        let other = CaptureTool.diagnosis(console: "[ 1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\r\n")
        XCTAssertEqual(other.map { $0.contains("cx16") }, false)
        XCTAssertNil(CaptureTool.diagnosis(console: "[ 1.0] Run /init as init process\r\n"))
    }
}
