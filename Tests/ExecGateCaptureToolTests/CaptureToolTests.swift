// SPDX-License-Identifier: Apache-2.0
//
// `execgate capture` end to end: boot the real Debian kernel under QEMU (TCG here), load a varied
// set of signed modules, capture their end state, then explain every captured module through the
// verifier exactly as the service runs it (register-guest + authorize-module, end-state required)
// and through the explainer `execgate explain` uses: every module allowed, 0 unexplained bytes.
// Needs QEMU, the unpacked kernel (`make test-data`) and the static execgate (`make image`). The class
// name ends in BootTests so scripts/run-tests.sh runs it in its guest-booting phase, where
// `make test` provides them and sets EXECGATE_VM_TEST=1, which turns anything missing into a failure.
//
// Plus host-only tests of the pieces (archive format, module lists, dependency closure).

import ExecGateCapture
import ExecGateCaptureTool
import ExecGateELF
import ExecGateExplain
import ExecGateKernelImage
import ExecGatePolicy
import ExecGateServiceVM
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import XCTest

/// The modules captured on 6.1: alternatives and feature checks (crc32c_intel, aesni_intel,
/// sha256_ssse3), static keys (chacha_x86_64, poly1305_x86_64, test_static_keys), static calls and
/// paravirt and per-cpu data (kvm), dependency chains (8021q → garp, mrp, stp, llc; aesni_intel →
/// cryptd, crypto_simd; virtio_net → failover, virtio), data only (cast_common: S-boxes, no
/// executable byte), an alternative the test CPU models leave unapplied (ramoops: LA57, 16*32+16,
/// so the "alternative" mutation class has sites to flip), plain ones (tun, fuse, xxhash_generic).
let captureTestModules = ["crc32c_intel", "aesni_intel", "sha256_ssse3", "chacha_x86_64", "poly1305_x86_64", "test_static_keys",
                          "kvm", "8021q", "virtio_net", "tun", "fuse", "xxhash_generic", "cast_common", "ramoops"]

/// The CPU models every capture boot test runs on (one boot each; docs/kernels/matrix.md has what the
/// guest kernels report on them). Intel: Skylake-Client-IBRS (a retbleed-affected part: 6.1 picks
/// IBRS, 6.12 retpolines with ITS aligned branch/return thunks, `x86_return_thunk` =
/// its_return_thunk). AMD: EPYC-Rome (Zen 2: retbleed untrained return thunk, SRSO safe RET:
/// `x86_return_thunk` = srso_return_thunk).
enum CaptureTestCPU {
    static let intel = "Skylake-Client-IBRS"
    static let amd = "EPYC-Rome"
}

/// One fresh capture for a boot test: `modules` on `kernel` under QEMU `-cpu cpu`; the output is
/// removed after a passing test. Asserts that every module (and dependency) was captured.
func captureForTest(_ t: XCTestCase, kernel: String, modules: [String], cpu: String, kaslr: Bool) throws -> CaptureSummary {
    let vm = try requireVM(image: false)
    let out = Fixtures.temporaryDirectory()
    var o = CaptureOptions(kernel: kernel, modules: modules, outDir: out, initBinary: vm.staticExecgate, workDir: out + "/.work")
    o.kaslr = kaslr
    o.cpu = cpu
    o.timeoutSeconds = 200
    let t0 = Date()
    let s = try CaptureTool.run(o, log: { print($0) })
    try? FileManager.default.removeItem(atPath: o.workDir)  // initramfs, sparse disk, logs
    t.addTeardownBlock { [weak t] in
        if (t?.testRun?.failureCount ?? 1) == 0 { try? FileManager.default.removeItem(atPath: out) }
    }
    print("capture \(s.boot) -cpu \(cpu): \(s.captured.count) modules in \(Int(Date().timeIntervalSince(t0) * 1000)) ms (qemu \(s.qemuMillis) ms)")
    print((try? FS.readString(s.bootDir + "/vulnerabilities.txt")) ?? "")
    XCTAssertEqual(s.failed.map(\.0), [], "modules that failed to load: \(s.failed)")
    XCTAssertEqual(s.captured, s.loadOrder)
    return s
}

/// Every captured module of one boot: allowed by the verifier exactly as the service runs it
/// (register-guest + authorize-module, end state required, `trust` = the kernel's own keys) and by
/// the explainer `execgate explain` uses, with 0 unexplained bytes; and mutations of every class
/// of each module's fresh end state, each of which must be denied (and each class in
/// `requiredClasses` must have been tried). Returns each module's
/// statistics (keyed by name) for the caller's per-module checks.
@discardableResult
func explainEveryModule(_ dir: String, trust: TrustStore, expectModules: [String], minMutations: Int,
                        requiredClasses: [String] = ["alternative", "byte-flip", "jump-label", "padding", "reloc-redirect", "return-thunk", "static-call"]) throws -> [String: ExplainStats] {
    let boot = try CaptureBoot.load(dir)
    XCTAssertEqual(boot.availableModules, expectModules)
    let v = Verifier(policy: Policy(id: "capture-test", version: 1, trust: trust, endState: .required))
    guard case .registerGuestReply = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: []) else {
        XCTFail("register-guest refused for \(dir)")
        return [:]
    }
    var replay = CaptureReplay(boot: boot)
    var unexplained = 0
    var mutations: [String: (tried: Int, denied: Int, legal: Int)] = [:]
    var falseAccepts: [String] = []
    var stats: [String: ExplainStats] = [:]
    for name in boot.availableModules {
        let m = try boot.module(name)
        let verdict = v.authorize(m.request(guestID: "g"), requestDigest: [])
        XCTAssertEqual(verdict.decision, .allow, "\(name): \(verdict.message)")
        XCTAssertTrue(verdict.checks.contains("end-state"), name)
        // Mutations of this fresh end state, by class: every one must be denied (a legal
        // run-time alternative — e.g. a static call retargeted to another real function entry —
        // is counted apart, never as accepted tampering).
        // (Modules above 64 KiB of text are skipped here only to bound the debug-build test time;
        // `execgate explain --mutate N` covers every module.)
        let report = m.ko.withUnsafeBytes { raw -> MutationReport in
            guard m.claim.text.count <= 64 << 10, let elf = try? ELFFile(bytes: raw) else { return MutationReport() }
            return Explainer(facts: boot.facts).mutate(elf: elf, claim: m.claim, resolver: replay.resolver, perClass: 12, seed: 0x5eed)
        }
        for c in report.classes {
            var e = mutations[c.name] ?? (0, 0, 0)
            e.tried += c.tried; e.denied += c.denied; e.legal += c.legalAlternative
            mutations[c.name] = e
            falseAccepts += c.falseAccepts.map { "\(name): \($0)" }
        }
        let out = replay.step(m)
        switch out.result.verdict {
        case .allowed(let st):
            XCTAssertEqual(st.executableBytes, m.claim.text.count, name)
            stats[name] = st
        case .denied(let d):
            unexplained += max(1, d.unexplainedBytes)
            XCTFail("explain \(name): \(d)")
        }
    }
    XCTAssertEqual(unexplained, 0)
    let tried = mutations.values.reduce(0) { $0 + $1.tried }
    print("mutations on \(dir): \(tried) tried; " + mutations.sorted { $0.key < $1.key }
        .map { "\($0.key) \($0.value.tried) tried / \($0.value.denied) denied / \($0.value.legal) legal run-time state" }.joined(separator: "; "))
    XCTAssertEqual(falseAccepts, [], "mutations accepted")
    XCTAssertGreaterThanOrEqual(tried, minMutations, "too few mutations tried")
    for c in requiredClasses { XCTAssertGreaterThan(mutations[c]?.tried ?? 0, 0, "mutation class \(c) not exercised") }
    return stats
}

final class CaptureToolBootTests: XCTestCase {
    func capture(kaslr: Bool, cpu: String) throws -> CaptureSummary {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian kernel", make: "make test-data")
        let s = try captureForTest(self, kernel: kernel, modules: captureTestModules, cpu: cpu, kaslr: kaslr)
        XCTAssertGreaterThanOrEqual(s.captured.count, 20)
        for file in ["load-order.txt", "modules.list", "modules.dep", "corpus.json"] { XCTAssertTrue(FS.exists(s.bootDir + "/../" + file), file) }
        for file in ["kallsyms.txt", "boot_cpu_data.bin", "pv_ops.bin", "cpus.txt", "cmdline.txt", "slide.txt", "vulnerabilities.txt", "cpuflags.txt"] {
            XCTAssertTrue(FS.exists(s.bootDir + "/" + file), file)
        }
        // Dependencies come first in the load order.
        let order = s.loadOrder
        for (dep, user) in [("irqbypass", "kvm"), ("llc", "stp"), ("reed_solomon", "ramoops"), ("stp", "8021q"), ("cryptd", "aesni_intel"), ("test_static_key_base", "test_static_keys")] {
            XCTAssertLessThan(try XCTUnwrap(order.firstIndex(of: dep), dep), try XCTUnwrap(order.firstIndex(of: user), user))
        }
        let stats = try explainEveryModule(s.bootDir, trust: try Fixtures.debianTrust(), expectModules: s.captured, minMutations: 800)
        // Reported, with nothing executable: signature, ELF and claim structure judged.
        XCTAssertEqual(stats["cast_common"]?.executableBytes, 0, "cast_common is data only")
        XCTAssertGreaterThan(stats["kvm"]?.bytesByClass[.alternative] ?? 0, 0, "kvm: alternatives applied")
        XCTAssertGreaterThan(stats["ramoops"]?.bytesByClass[.alternative] ?? 0, 0, "ramoops: alternatives applied")
        XCTAssertGreaterThan(stats["test_static_keys"]?.bytesByClass[.jumpLabel] ?? 0, 0, "test_static_keys: jump labels")
        return s
    }

    /// Intel, nokaslr.
    func testCaptureNokaslrAndExplain() throws {
        let s = try capture(kaslr: false, cpu: CaptureTestCPU.intel)
        XCTAssertEqual(s.slide, 0)
        let cmdline = try FS.readString(s.bootDir + "/cmdline.txt")
        XCTAssertTrue(cmdline.contains("nokaslr"), cmdline)
        // nokaslr: the module area starts at MODULES_VADDR.
        let first = try FS.readString(s.bootDir + "/" + s.loadOrder[0] + "/layout.json")
        XCTAssertTrue(first.contains("\"0xffffffffc0"), first)
    }

    /// AMD, KASLR.
    func testCaptureKaslrAndExplain() throws {
        let s = try capture(kaslr: true, cpu: CaptureTestCPU.amd)
        XCTAssertNotEqual(s.slide, 0, "KASLR boot with slide 0 (possible but unlikely)")
    }
}

final class CaptureToolUnitTests: XCTestCase {
    func testTarRoundTrips() throws {
        var w = Tar.Writer()
        w.add("kallsyms.txt", "ffffffff81000000 T _text\n")
        w.add("crc7/core_text.bin", [UInt8](repeating: 0xCC, count: 4096))
        w.add("empty", [])
        w.add("odd", [1, 2, 3])
        var disk = w.finish()
        disk += [UInt8](repeating: 0, count: 8192)  // the rest of the disk
        let m = try Tar.read(disk)
        XCTAssertEqual(m.map(\.path), ["kallsyms.txt", "crc7/core_text.bin", "empty", "odd"])
        XCTAssertEqual(m[1].bytes.count, 4096)
        XCTAssertEqual(m[3].bytes, [1, 2, 3])
    }

    func testForbidsCorruptTarHeader() {
        var w = Tar.Writer()
        w.add("a", [1])
        var disk = w.finish()
        disk[10] ^= 0x40
        XCTAssertThrowsError(try Tar.read(disk)) { XCTAssertEqual($0 as? Tar.ReadError, .badHeader(offset: 0, reason: "checksum mismatch")) }
    }

    func testForbidsTruncatedTarMember() {
        var w = Tar.Writer()
        w.add("big", [UInt8](repeating: 7, count: 2000))
        let disk = Array(w.finish().prefix(1024))
        XCTAssertThrowsError(try Tar.read(disk)) { XCTAssertEqual($0 as? Tar.ReadError, .truncated(path: "big")) }
    }

    func testModuleListParsing() throws {
        XCTAssertEqual(try parseModuleList("crc7, crc-itu-t,kvm.ko crc7"), ["crc7", "crc_itu_t", "kvm"])
        let f = Fixtures.temporaryDirectory() + "/list"
        try FS.write(f, "# header\ncrc8\nvirtio-net # the NIC\n\n")
        XCTAssertEqual(try parseModuleList("@" + f), ["crc8", "virtio_net"])
        XCTAssertThrowsError(try parseModuleList(" , "))
        XCTAssertThrowsError(try parseModuleList("@/nonexistent/list"))
    }

    /// `--smp N [--maxcpus M]` → QEMU `-smp N[,maxcpus=M]`, and the precise refusals.
    func testSMPArgument() throws {
        var o = CaptureOptions(kernel: "/k", modules: ["crc7"], outDir: "/o", initBinary: "/i", workDir: "/w")
        XCTAssertEqual(try o.smpArgument(), "1")
        o.smp = 2
        XCTAssertEqual(try o.smpArgument(), "2")
        o.smp = 1; o.maxCPUs = 4
        XCTAssertEqual(try o.smpArgument(), "1,maxcpus=4")
        o.smp = 64; o.maxCPUs = 64
        XCTAssertEqual(try o.smpArgument(), "64,maxcpus=64")
        let refusals: [(Int, Int?, String)] = [
            (0, nil, "--smp 0: the guest's CPU count must be 1…64"),
            (65, nil, "--smp 65: the guest's CPU count must be 1…64"),
            (-1, 4, "--smp -1: the guest's CPU count must be 1…64"),
            (2, 0, "--maxcpus 0: the guest's possible CPU count must be 1…64"),
            (2, 65, "--maxcpus 65: the guest's possible CPU count must be 1…64"),
            (4, 2, "--maxcpus 2 is below --smp 4: the CPUs present are possible CPUs too"),
        ]
        for (n, m, msg) in refusals {
            o.smp = n; o.maxCPUs = m
            XCTAssertThrowsError(try o.smpArgument()) { XCTAssertEqual($0 as? CaptureToolError, .usage(msg)) }
            // Refused by the run before anything is read or built (the kernel path does not exist).
            XCTAssertThrowsError(try CaptureTool.run(o, log: { _ in })) { XCTAssertEqual($0 as? CaptureToolError, .usage(msg)) }
        }
    }

    func testLoaderAllocationCount() {
        let info = """
        0x000000001234-0x000000005678   20480 load_module+0x1b2c/0x2a40 pages=4 vmalloc
        0x000000001234-0x000000005678    8192 kernel_read_file+0x1/0x2 pages=1 vmalloc
        0x000000001234-0x000000005678   20480 load_module+0x1b2c/0x2a40 pages=4 vmalloc
        0x0000000abcd-0x00000000ef01    4096 bpf_prog_alloc+0x3/0x4 pages=1 vmalloc
        """
        XCTAssertEqual(CaptureGuest.countLoaderAllocations(Array(info.utf8)), 2)
        // A region over 512 pages (amdgpu, 6.12.111 guest): its page array is vmalloc'ed with the
        // same caller and the region marked `vpages`; together they are one allocation.
        let large = """
        0x00000000c2b66507-0x00000000634725ac 6995968 load_module+0x7b8/0x21a0 pages=1707 vmalloc vpages N0=1707
        0x00000000cdf7feeb-0x00000000068f45cb   16384 load_module+0x7b8/0x21a0 pages=3 vmalloc N0=3
        0x0000000080a94a58-0x00000000c6dab494   20480 load_module+0x7b8/0x21a0 pages=4 vmalloc N0=4
        0x000000000a94a580-0x00000000c6dab494 4198400 pcpu_create_chunk+0x191/0x1a0 pages=1024 vmalloc vpages N0=1024
        """
        XCTAssertEqual(CaptureGuest.countLoaderAllocations(Array(large.utf8)), 2)
    }

    func testUnknownAndBuiltinModuleNamesAreUsageErrors() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian kernel", make: "make test-data")
        let out = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        // /bin/sh stands in for the init binary: the names are refused before anything is built or booted.
        let o = CaptureOptions(kernel: kernel, modules: ["crc7", "no_such_module", "amd-uncore"], outDir: out, initBinary: "/bin/sh", workDir: out + "/w")
        XCTAssertThrowsError(try CaptureTool.run(o, log: { _ in })) { e in
            guard case let CaptureToolError.badModule(msg) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(msg.contains("no module named no_such_module"), msg)
            XCTAssertTrue(msg.contains("amd-uncore is built into the kernel"), msg)
            XCTAssertFalse(msg.contains("crc7"), msg)
        }
        var missingKernel = o
        missingKernel.kernel = out + "/nokernel"
        XCTAssertThrowsError(try CaptureTool.run(missingKernel, log: { _ in })) { e in
            guard case let CaptureToolError.missing(msg) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(msg.contains("no boot/vmlinuz-*"), msg)
        }
        var noInit = o
        noInit.initBinary = out + "/no-init"
        XCTAssertThrowsError(try CaptureTool.run(noInit, log: { _ in })) { e in
            XCTAssertEqual(e as? CaptureToolError, .missing("init binary \(out)/no-init not found: build the static execgate first (`make image`, or pass --init)"))
        }
    }

    func testCompressedModulesAreFoundAndDecompressed() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian kernel", make: "make test-data")
        let tree = try KernelTree.open(directory: kernel)
        let real = try ModuleIndex(modulesDir: tree.modulesDir)
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FS.mkdirs(dir + "/kernel/net")
        for (name, c) in [("llc", KernelCompression.xz), ("stp", .zstd)] {
            let ko = try real.bytes(of: name)
            try FS.write(dir + "/kernel/net/\(name).ko.\(c == .xz ? "xz" : "zst")", try ko.withUnsafeBytes { try c.compress($0) })
        }
        let index = try ModuleIndex(modulesDir: dir)
        XCTAssertEqual(try index.bytes(of: "stp"), try real.bytes(of: "stp"))
        XCTAssertEqual(try index.closure(["stp"]).order, ["llc", "stp"])
        XCTAssertEqual(index.modulesDep(["stp"], depends: try index.closure(["stp"]).depends), "kernel/net/stp.ko.zst: kernel/net/llc.ko.xz\n")
    }

    func testDependencyClosureOfRealModules() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian kernel", make: "make test-data")
        let tree = try KernelTree.open(directory: kernel)
        let index = try ModuleIndex(modulesDir: tree.modulesDir)
        let (order, deps) = try index.closure(["8021q", "kvm"])
        XCTAssertEqual(Set(order), ["llc", "stp", "garp", "mrp", "8021q", "irqbypass", "kvm"])
        for (m, ds) in deps { for d in ds { XCTAssertLessThan(order.firstIndex(of: d)!, order.firstIndex(of: m)!, "\(d) before \(m)") } }
        XCTAssertThrowsError(try index.closure(["no_such_module"])) { e in
            XCTAssertTrue("\(e)".contains("no module named no_such_module"), "\(e)")
        }
        XCTAssertTrue(index.modulesDep(["stp"], depends: deps).hasPrefix("kernel/net/802/stp.ko: kernel/net/llc/llc.ko"))
        XCTAssertEqual(tree.linkTimeText().address, 0xffff_ffff_8100_0000)
    }
}

/// A module tree laid out the way Debian's 6.12 packages ship it: `.ko.xz` files, and drivers such
/// as virtio_pci built in (listed in modules.builtin, no file).
final class CompressedModuleTreeTests: XCTestCase {
    func testXZModulesDecodeAndBuiltinTransportIsSkipped() throws {
        let kernel = Fixtures.packageRoot + "/.cache/kernel/current"
        try VMTestInputs.requireFile(kernel + "/boot", "unpacked Debian kernel", make: "make test-data")
        let crc7 = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        let dir = Fixtures.temporaryDirectory() + "/lib/modules/6.12.0-test"
        try FS.mkdirs(dir + "/kernel/lib")
        try Fixtures.writeFile(dir + "/kernel/lib/crc7.ko", crc7)
        let r = Fixtures.run("/usr/bin/xz", ["--check=crc32", "--lzma2=dict=1MiB", dir + "/kernel/lib/crc7.ko"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FS.exists(dir + "/kernel/lib/crc7.ko.xz"))
        XCTAssertFalse(FS.exists(dir + "/kernel/lib/crc7.ko"), "xz replaces the file, as kbuild's modules_install does")
        try Fixtures.writeFile(dir + "/modules.builtin", Array("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n".utf8))

        let index = try ModuleIndex(modulesDir: dir)
        XCTAssertEqual(try index.path(of: "crc7"), "kernel/lib/crc7.ko.xz")
        XCTAssertEqual(try index.bytes(of: "crc7"), crc7, "the ELF inside, signature included, byte for byte")
        XCTAssertEqual(index.loadable(CaptureTool.transportModules + ["crc7"]), ["crc7"])
        XCTAssertThrowsError(try index.path(of: "virtio_pci")) { e in
            XCTAssertTrue("\(e)".contains("built into the kernel"), "\(e)")
        }
        XCTAssertEqual(try index.closure(index.loadable(CaptureTool.transportModules)).order, [])
    }
}
