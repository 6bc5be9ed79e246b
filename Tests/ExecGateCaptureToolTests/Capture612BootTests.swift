// SPDX-License-Identifier: Apache-2.0
//
// Debian 6.12 end to end (QEMU TCG, one boot per CPU model): capture, with `execgate capture`, on
// linux-image-6.12.117+deb12-amd64
//   - 8021q (+ garp, mrp, stp, llc: a chain of modules linked against each other's exports;
//     8021q's alternatives are paravirt calls, ALT_FLAG_DIRECT_CALL),
//   - test_static_keys (+ test_static_key_base: static keys, jump labels across modules),
//   - isofs (+ cdrom: IBT seal, static calls, jump labels),
//   - cast_common (data only: no MOD_TEXT),
//   - ramoops (+ reed_solomon: an alternative on LA57, which these CPU models lack, so the
//     "alternative" mutation class has an unapplied site to flip),
// on an Intel model with a return-thunk mitigation and on an AMD model (CaptureTestCPU), then judge
// every module as the service does with the 6.12 loader replay: all allowed, 0 unexplained bytes,
// the data-only module reported with nothing executable, every mutation denied. The Intel boot also
// runs the served path: `execgate serve` trusting the certificate `execgate keys extract` takes from
// the 6.12 vmlinuz authorizes each module with its end state over the protocol, denies a mutated
// claim, and `execgate verify module` checks a `.ko.xz` of the package (and refuses a tampered one).
// Needs the unpacked 6.12 image (.cache/kernel-6.12), QEMU and the static execgate (`make image`);
// runs in the guest-booting phase (class name ends in BootTests, EXECGATE_VM_TEST=1).

import ExecGateCapture
import ExecGateCaptureTool
import ExecGateClient
import ExecGateExplain
import ExecGateKernelImage
import ExecGateServiceVM
import ExecGateSignature
import ExecGateTestSupport
import ExecGateWire
import Foundation
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class Capture612BootTests: XCTestCase {
    static let package = Fixtures.packageRoot + "/.cache/kernel-6.12/linux-image-6.12.117+deb12-amd64"
    static let modules = ["8021q", "test_static_keys", "isofs", "cast_common", "ramoops"]

    /// The certificates built into the 6.12 vmlinuz (the 6.12 modules' signer), read once per process.
    nonisolated(unsafe) static var trust612Cache: TrustStore?  // XCTest runs this class's tests one at a time
    func trust612() throws -> TrustStore {
        if let t = Self.trust612Cache { return t }
        let vmlinuz = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: Self.package + "/boot").first { $0.hasPrefix("vmlinuz-") })
        let t = TrustStore(try KernelImage.load(try Fixtures.readFile(Self.package + "/boot/" + vmlinuz)).builtinCertificates())
        Self.trust612Cache = t
        return t
    }

    func captureAndExplain(cpu: String) throws -> CaptureSummary {
        try VMTestInputs.requireFile(Self.package + "/boot", "unpacked Debian 6.12 kernel (linux-image-6.12.117+deb12-amd64)", make: "make test-data")
        let s = try captureForTest(self, kernel: Self.package, modules: Self.modules, cpu: cpu, kaslr: true)
        XCTAssertEqual(Set(s.captured), ["llc", "stp", "garp", "mrp", "8021q", "test_static_key_base", "test_static_keys", "cdrom", "isofs", "cast_common",
                                       "reed_solomon", "ramoops"])
        let boot = try CaptureBoot.load(s.bootDir)
        XCTAssertEqual(boot.facts.kernelRelease, "6.12.117+deb12-amd64")
        let stats = try explainEveryModule(s.bootDir, trust: try trust612(), expectModules: s.captured, minMutations: 300)
        XCTAssertEqual(stats["cast_common"]?.executableBytes, 0, "data-only: no MOD_TEXT")
        XCTAssertGreaterThan(stats["isofs"]?.bytesByClass[.endbrSeal] ?? 0, 0, "6.12 seals ENDBRs unconditionally")
        XCTAssertGreaterThan(stats["8021q"]?.bytesByClass[.alternative] ?? 0, 0, "8021q: paravirt alternatives")
        XCTAssertGreaterThan(stats["test_static_keys"]?.bytesByClass[.jumpLabel] ?? 0, 0, "test_static_keys: jump labels")
        return s
    }

    /// Intel (return thunk: its_return_thunk on 6.12), plus the served path.
    func testCapture612IntelAndExplainAndServe() async throws {
        let s = try captureAndExplain(cpu: CaptureTestCPU.intel)
        try await servedPath(bootDir: s.bootDir)
    }

    /// AMD (return thunk: srso_return_thunk).
    func testCapture612AMDAndExplain() throws {
        _ = try captureAndExplain(cpu: CaptureTestCPU.amd)
    }

    /// `execgate serve` with the trust anchor extracted from the 6.12 vmlinuz by `execgate keys
    /// extract`: register the captured guest, authorize every module with its end state over the
    /// protocol (allow, end-state checked), a mutated claim is denied; then `execgate verify module`
    /// on a `.ko.xz` of the package.
    func servedPath(bootDir: String) async throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vmlinuz = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: Self.package + "/boot").first { $0.hasPrefix("vmlinuz-") })
        let keys = Fixtures.runExecgate(["keys", "extract", "--kernel", Self.package + "/boot/" + vmlinuz, "--out", dir + "/keys"])
        XCTAssertEqual(keys.status, 0, keys.stderr)
        let pems = try FileManager.default.contentsOfDirectory(atPath: dir + "/keys").filter { $0.hasSuffix(".pem") }.sorted()
        XCTAssertFalse(pems.isEmpty, "no certificate extracted from the 6.12 vmlinuz")
        let trustArgs = pems.flatMap { ["--trust", dir + "/keys/" + $0] }

        let sock = dir + "/vmm.sock"
        let pid = Fixtures.spawnExecgate(["serve", "--listen", "unix:" + sock, "--log-level", "critical"] + trustArgs,
                                         stdoutPath: dir + "/out", stderrPath: dir + "/err")
        XCTAssertGreaterThan(pid, 0)
        defer { kill(pid, SIGKILL); _ = Fixtures.wait(pid) }

        let boot = try CaptureBoot.load(bootDir)
        var client: ExecGateClient?
        for _ in 0..<100 where client == nil {  // until it listens (bounded: 10 s)
            client = try? await ExecGateClient.connect(to: .unix(path: sock), timeout: 20)
            if client == nil { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        let c = try XCTUnwrap(client, "serve did not listen: \((try? FS.readString(dir + "/err")) ?? "")")
        _ = try await c.register(try boot.registration(guestID: "g612"))
        for name in boot.availableModules {
            let r = try boot.module(name).request(guestID: "g612")
            if name == "8021q" {
                // First a claim whose end state differs from the replay in one byte of text (its
                // dependencies are already accepted, so only the bytes decide): denied, and nothing
                // of it is kept. Then the real claim.
                var m = r
                var text = Array(try XCTUnwrap(r.text).readableBytesView)
                text[text.count / 3] ^= 0x01
                m.text = ByteBuffer(bytes: text)
                let v = try await c.authorize(m)
                print("served mutated 8021q: \(v.decision) \(v.message)")
                XCTAssertEqual(v.decision, .deny, "mutated claim: \(v.message)")
            }
            let v = try await c.authorize(r)
            print("served \(name): \(v.decision) \(v.checks) \(v.message)")
            XCTAssertEqual(v.decision, .allow, "\(name): \(v.message)")
            XCTAssertTrue(v.checks.contains("end-state"), "\(name): \(v.checks)")
        }
        await c.close()

        // A .ko.xz of the package: decompressed, then its signature checked (as the kernel does with
        // in-kernel decompression) against the extracted certificate; a tampered one is refused.
        let ko = try XCTUnwrap(FileManager.default.enumerator(atPath: Self.package + "/lib/modules")?.compactMap { $0 as? String }.first { $0.hasSuffix("/isofs.ko.xz") })
        let path = Self.package + "/lib/modules/" + ko
        let ok = Fixtures.runExecgate(["verify", "module", path, "--signature-only", "--claim", "none", "--json"] + trustArgs)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("\"decision\":\"allow\"") && ok.stdout.contains("\"module\":\"isofs\""), ok.stdout)
        var elf = try ModuleFile.decode(try Fixtures.readFile(path)).elf
        elf[0x400] ^= 0x40
        try Fixtures.writeFile(dir + "/isofs.ko", elf)
        XCTAssertEqual(Fixtures.run("/usr/bin/xz", ["--check=crc32", dir + "/isofs.ko"]).status, 0)
        let bad = Fixtures.runExecgate(["verify", "module", dir + "/isofs.ko.xz", "--signature-only", "--claim", "none"] + trustArgs)
        XCTAssertEqual(bad.status, 1, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("DENY"), bad.stderr)
    }
}
