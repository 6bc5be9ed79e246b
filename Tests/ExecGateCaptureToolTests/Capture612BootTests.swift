// SPDX-License-Identifier: Apache-2.0
//
// Debian 6.12 end to end (QEMU TCG, ~10 s): capture crc7 (plain), isofs (+cdrom: IBT seal, static
// calls, jump labels) and cast_common (data only: no MOD_TEXT) on linux-image-6.12.117+deb12-amd64,
// then explain every module with the 6.12 loader replay: all allowed, 0 unexplained bytes, the
// data-only module reported with nothing executable, and every mutation denied.
// Needs the unpacked 6.12 image (.cache/kernel-6.12), QEMU and the static execgate (`make image`);
// runs in the guest-booting phase (class name ends in BootTests, EXECGATE_VM_TEST=1).

import ExecGateCapture
import ExecGateCaptureTool
import ExecGateELF
import ExecGateExplain
import ExecGateServiceVM
import ExecGateTestSupport
import Foundation
import XCTest

final class Capture612BootTests: XCTestCase {
    func testCapture612AndExplain() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian 6.12 kernel (linux-image-6.12.117+deb12-amd64)", make: "dpkg-deb -x")
        let vm = try requireVM(image: false)
        let out = Fixtures.temporaryDirectory()
        var o = CaptureOptions(kernel: kernel, modules: ["crc7", "isofs", "cast_common"], outDir: out, initBinary: vm.staticExecgate,
                               workDir: out + "/.work")
        o.timeoutSeconds = 200
        let s = try CaptureTool.run(o, log: { print($0) })
        try? FileManager.default.removeItem(atPath: o.workDir)
        addTeardownBlock { [weak self] in
            if (self?.testRun?.failureCount ?? 1) == 0 { try? FileManager.default.removeItem(atPath: out) }
        }
        XCTAssertEqual(s.failed.map(\.0), [])
        XCTAssertEqual(Set(s.captured), ["crc7", "cdrom", "isofs", "cast_common"])

        let boot = try CaptureBoot.load(s.bootDir)
        XCTAssertEqual(boot.facts.kernelRelease, "6.12.117+deb12-amd64")
        var replay = CaptureReplay(boot: boot)
        var tried = 0
        for name in boot.availableModules {
            let m = try boot.module(name)
            let rep = m.ko.withUnsafeBytes { raw -> MutationReport in
                guard let elf = try? ELFFile(bytes: raw) else { return MutationReport() }
                return Explainer(facts: boot.facts).mutate(elf: elf, claim: m.claim, resolver: replay.resolver, perClass: 8, seed: 0x612)
            }
            for c in rep.classes {
                tried += c.tried
                XCTAssertEqual(c.falseAccepts, [], "\(name) \(c.name)")
            }
            let r = replay.step(m)
            guard case .allowed(let st) = r.result.verdict else { XCTFail("\(name): \(r.result.verdict)"); continue }
            XCTAssertEqual(st.executableBytes, m.claim.text.count)
            if name == "cast_common" { XCTAssertEqual(st.executableBytes, 0, "data-only: no MOD_TEXT") }
            if name == "isofs" { XCTAssertGreaterThan(st.bytesByClass[.endbrSeal] ?? 0, 0, "6.12 seals ENDBRs unconditionally") }
        }
        XCTAssertGreaterThan(tried, 50)
    }
}
