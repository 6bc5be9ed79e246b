// SPDX-License-Identifier: Apache-2.0
//
// Builds the service VM's boot artefacts into one output directory:
//
//   vmlinux                  the kernel, uncompressed PVH ELF: the service VM's own kernel
//                            (`serviceKernel`, scripts/build-kernel.sh, everything built in) or
//                            Debian's (or `vmlinuz` when extraction is impossible)
//   initramfs.cpio.zst       /init = the static execgate binary, /etc/execgate/{trust/*.der, policy},
//                            and, with the Debian kernel only, its vsock/virtio modules (zstd: both
//                            kernels have CONFIG_RD_ZSTD; `Compression.zstd` says why its window is 128 KiB)
//   initramfs-test.cpio.zst  the same plus test fixtures (real signed modules and a tampered copy)
//   image.txt                what was built from what (key=value), and the input fingerprint
//
// Security reasoning: the initramfs holds nothing executable but /init: no shell, no busybox,
// no helper binaries. A compromised request cannot turn the guest into a general-purpose machine.
// Modules are Debian's signed .ko files, loaded by init in a fixed order; the trust anchors are the
// certificates built into the very kernel whose modules we verify.
//
// Determinism: entries sorted, mtime 0, uid/gid 0, zstd single-threaded with fixed parameters. Rebuilding from the same
// inputs gives identical bytes, and when the input fingerprint matches the last build nothing is written.
//
// All or nothing: the artefacts are written into a staging directory beside the output directory
// (`.out.tmp.PID`) and it is swapped for the output directory in one rename (StagedDirectory,
// renameat2 RENAME_EXCHANGE): a build that fails or is stopped part-way leaves the old image
// whole (the kernel and initramfs of one build, never one of each) and no staging directory. The
// output directory is therefore the image's own: one holding anything else is refused.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import _ExecGateInternals

public struct ImageBuildOptions: Sendable {
    /// bzImage (vmlinuz) of the protected guests' Debian kernel: the trust anchors (its builtin
    /// certificates) always come from it; it is also the kernel booted when `serviceKernel` is nil.
    public var kernel: String
    /// The service VM's own kernel (an uncompressed vmlinux ELF from scripts/build-kernel.sh, vsock
    /// and virtio built in, CONFIG_MODULES=n). Set: boot it and put no modules in the initramfs.
    /// Nil: boot the Debian kernel above and load its signed vsock/virtio modules.
    public var serviceKernel: String? = nil
    /// `lib/modules/<version>` of the same kernel.
    public var modulesDir: String
    /// The static execgate binary to put at /init.
    public var initBinary: String
    public var outDir: String
    public var policy: String?
    /// The certificate whose key signs policy bundles (installed as /etc/execgate/admin.pem; the
    /// guest then opens its admin port). Nil = no admin port: the image's policy is final.
    public var adminCertificate: String?
    public var force = false
    /// Also build the test initramfs.
    public var withTestImage = true
    /// What the guest's service will do with `policy` and `adminCertificate` at every boot, given
    /// the trust anchors (DER) the image will carry: throws when it would refuse them. Called once
    /// those anchors are known and before anything is written (a refusal builds nothing). Nil: not
    /// checked (this library cannot parse policies; `execgate image build` sets it).
    public var checkGuestInputs: (@Sendable (_ trustAnchors: [[UInt8]]) throws -> Void)? = nil

    public init(kernel: String, modulesDir: String, initBinary: String, outDir: String) {
        self.kernel = kernel; self.modulesDir = modulesDir
        self.initBinary = initBinary; self.outDir = outDir
    }

    /// Defaults from an unpacked Debian kernel package (`.cache/kernel/current`).
    public static func fromKernelPackage(_ root: String, initBinary: String, outDir: String) throws(ServiceVMError) -> ImageBuildOptions {
        let boot = root + "/boot"
        guard FS.isDirectory(boot), let vmlinuz = (try? FS.list(boot))?.filter({ $0.hasPrefix("vmlinuz-") }).last else {
            throw .missing("no kernel package under \(root) (no \(boot)/vmlinuz-*): the package gives the image its kernel modules and trust anchors, even with --kernel; run `make test-data` (scripts/fetch-test-data.sh) or pass --kernel-package DIR")
        }
        let version = String(vmlinuz.dropFirst("vmlinuz-".count))
        return ImageBuildOptions(kernel: boot + "/" + vmlinuz, modulesDir: root + "/lib/modules/" + version,
                                 initBinary: initBinary, outDir: outDir)
    }
}

public struct ImageBuildResult: Sendable {
    public struct Artefact: Sendable { public var path: String; public var bytes: Int; public var note: String }
    public var artefacts: [Artefact] = []
    public var upToDate = false
    public var fingerprint = ""
}

public enum ImageBuilder {
    public static let builderVersion = "execgate-image-5"
    /// The initramfs file names in an image directory (the launcher boots these).
    public static let initramfsName = "initramfs.cpio.zst"
    public static let testInitramfsName = "initramfs-test.cpio.zst"
    /// The fingerprint of an image's files (kernel, initramfs, test initramfs: `image.txt` aside),
    /// by name: what `image.txt` records as `outputs`, so a later build finds a damaged output.
    static func outputsFingerprint(_ files: [(name: String, bytes: [UInt8])]) -> String {
        var f = Fingerprint()
        for (name, bytes) in files.sorted(by: { $0.name < $1.name }) where name != "image.txt" { f.add(name); f.add(bytes) }
        return f.hex
    }

    /// `outputsFingerprint` of the image files in `outDir` now ("" when one cannot be read).
    static func outputsFingerprint(outDir: String) -> String {
        var files: [(name: String, bytes: [UInt8])] = []
        for name in imageFileNames.sorted() where name != "image.txt" && FS.exists(outDir + "/" + name) {
            guard let b = try? FS.read(outDir + "/" + name, limit: 1 << 30) else { return "" }
            files.append((name, b))
        }
        return outputsFingerprint(files)
    }

    /// Every file an image directory may hold: this builder's, and those of the builders before
    /// execgate-image-4 (gzip'd initramfs).
    public static let imageFileNames: Set<String> = ["vmlinux", "vmlinuz", initramfsName, testInitramfsName, "image.txt",
                                                     "initramfs.cpio.gz", "initramfs-test.cpio.gz"]

    /// Whether `name` in an image directory is the builder's: one of `imageFileNames`, or the
    /// temporary file of one an earlier builder (which replaced them one by one) left when killed.
    static func isImageFile(_ name: String) -> Bool {
        if imageFileNames.contains(name) { return true }
        return imageFileNames.contains { name.hasPrefix($0 + ".tmp.") }
    }

    /// The output directory is replaced whole: it must not exist, or hold only the image's own
    /// regular files (anything else would be swapped away with the old image and removed, or
    /// keep the old directory from being removed). Checked before anything is written.
    static func checkOutputDirectory(_ dir: String) throws(ServiceVMError) {
        var st = stat()
        guard stat(dir, &st) == 0 else {
            // Absent: created. Anything else (a link loop, a path through a file) is the option's
            // bad value, named.
            guard errno == ENOENT else { throw .badInput("\(dir): \(String(cString: strerror(errno))); --out names the image's directory") }
            return
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .badInput("\(dir): exists and is not a directory (\(Files.fileType(st.st_mode))); --out names the image's directory") }
        let names: [String]
        do { names = try FS.list(dir) } catch { throw error }
        for n in names.sorted() {
            var e = stat()
            let path = dir + "/" + n
            guard lstat(path, &e) == 0 else { throw .sys("cannot stat", path) }
            guard isImageFile(n), (e.st_mode & S_IFMT) == S_IFREG else {
                let what = (e.st_mode & S_IFMT) == S_IFREG ? "a file image build does not write" : Files.fileType(e.st_mode)
                throw .badInput("\(path): \(what); the image directory is replaced whole (all of a build's files or none), so it holds nothing else: give --out a directory of its own, or move this away (nothing built)")
            }
        }
    }

    /// Modules init loads, in this order (dependencies first). Paths relative to lib/modules/<v>/kernel.
    /// virtio_mmio serves `-M microvm`, virtio_pci serves `-M pc/q35`; both are small and harmless
    /// without devices. vsock_loopback gives CID 1 inside the guest (the self-test).
    public static let guestModules: [String] = [
        "drivers/virtio/virtio_ring.ko",
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_mmio.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio_pci.ko",
        "net/vmw_vsock/vsock.ko",
        "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        "net/vmw_vsock/vsock_loopback.ko",
    ]

    /// Real signed modules the in-guest test sends to the verifier (small ones; missing ones are skipped).
    public static let testModules: [String] = [
        "net/vmw_vsock/vsock_diag.ko",
        "lib/crc7.ko",
        "lib/crc-itu-t.ko",
        "drivers/virtio/virtio_balloon.ko",
    ]

    /// Where things live inside the guest.
    public enum GuestPaths {
        public static let modules = "/lib/modules/execgate"
        public static let etc = "/etc/execgate"
        public static let trust = "/etc/execgate/trust"
        public static let policy = "/etc/execgate/policy"
        public static let adminCertificate = "/etc/execgate/admin.pem"
        public static let testModules = "/usr/share/execgate/test"
    }

    public static func build(_ o: ImageBuildOptions, log: (String) -> Void = { print($0) }) throws(ServiceVMError) -> ImageBuildResult {
        guard FS.exists(o.kernel) else { throw .missing("kernel \(o.kernel) not found: run `make test-data` or pass --kernel PATH") }
        guard FS.exists(o.initBinary) else { throw .missing("init binary \(o.initBinary) not found: run `make image` (static release build)") }
        let initBytes = try FS.read(o.initBinary, limit: 512 << 20)
        switch GuestKernel.elfHasInterpreter(initBytes) {
        case .some(false): break
        case .some(true):
            throw .badInput("\(o.initBinary) is dynamically linked and cannot be /init; build it static: "
                + "swift build -c release --static-swift-stdlib -Xswiftc -static-executable (`make image` does this)")
        case .none: throw .badInput("\(o.initBinary) is not a 64-bit ELF executable")
        }
        let kernelBytes = try FS.read(o.kernel, limit: 256 << 20)
        let serviceKernelBytes = try o.serviceKernel.map { p throws(ServiceVMError) -> [UInt8] in
            guard FS.exists(p) else { throw .missing("service VM kernel \(p) not found: run scripts/build-kernel.sh (`make image` does)") }
            let b = try FS.read(p, limit: 256 << 20)
            guard GuestKernel.elfHasInterpreter(b) != nil else { throw .badInput("\(p) is not a 64-bit ELF vmlinux (QEMU boots it through its PVH entry)") }
            return b
        }
        var moduleFiles: [(name: String, bytes: [UInt8])] = []
        // The service kernel has everything built in: no .ko file goes into its initramfs.
        for (i, rel) in (serviceKernelBytes == nil ? guestModules : []).enumerated() {
            let path = o.modulesDir + "/kernel/" + rel
            guard FS.exists(path) else { throw .missing("module \(path) not found (is \(o.modulesDir) the kernel's module tree?)") }
            let base = String(rel.split(separator: "/").last!)
            let idx = i < 9 ? "0\(i + 1)" : "\(i + 1)"
            moduleFiles.append(("\(idx)-\(base)", try FS.read(path, limit: 64 << 20)))
        }
        var testFiles: [(name: String, bytes: [UInt8])] = []
        if o.withTestImage {
            for rel in testModules {
                let path = o.modulesDir + "/kernel/" + rel
                if FS.exists(path) { testFiles.append((String(rel.split(separator: "/").last!), try FS.read(path, limit: 64 << 20))) }
            }
        }
        let policyBytes = try o.policy.map { p throws(ServiceVMError) in try FS.read(p, limit: 1 << 20) }
        let adminBytes = try o.adminCertificate.map { p throws(ServiceVMError) in try FS.read(p, limit: 1 << 20) }

        var fp = Fingerprint()
        fp.add(builderVersion)
        fp.add(initBytes); fp.add(kernelBytes)
        fp.add(serviceKernelBytes == nil ? "debian-kernel-with-modules" : "service-kernel")
        fp.add(serviceKernelBytes ?? [])
        for m in moduleFiles { fp.add(m.name); fp.add(m.bytes) }
        for m in testFiles { fp.add(m.name); fp.add(m.bytes) }
        fp.add(policyBytes ?? [])
        fp.add(adminBytes ?? [])
        fp.add(o.withTestImage ? "test" : "notest")

        let stampPath = o.outDir + "/image.txt"
        let vmlinuxPath = o.outDir + "/vmlinux", vmlinuzPath = o.outDir + "/vmlinuz"
        let initrdPath = o.outDir + "/" + initramfsName, testInitrdPath = o.outDir + "/" + testInitramfsName
        var result = ImageBuildResult()
        result.fingerprint = fp.hex

        // Up to date: the same inputs, and the outputs still the bytes that build wrote (an emptied
        // vmlinux or a truncated initramfs was "up to date, unchanged": only inputs were compared).
        if !o.force, let old = try? FS.readString(stampPath), ImageInfo.parse(old)["fingerprint"] == fp.hex,
           FS.exists(initrdPath), FS.exists(vmlinuxPath) || FS.exists(vmlinuzPath), !o.withTestImage || FS.exists(testInitrdPath),
           let outputs = ImageInfo.parse(old)["outputs"], outputs == Self.outputsFingerprint(outDir: o.outDir) {
            result.upToDate = true
            for p in [vmlinuxPath, vmlinuzPath, initrdPath, testInitrdPath] {
                if let s = FS.size(p) { result.artefacts.append(.init(path: p, bytes: s, note: "unchanged")) }
            }
            return result
        }

        // Kernel: the service kernel when given; else the Debian kernel as a PVH ELF, else its bzImage.
        // `vmlinux` stays the Debian kernel's: the trust anchors below come from it in both cases.
        let vmlinux = GuestKernel.extractVmlinux(fromBzImage: kernelBytes)
        // Trust anchors: the certificates built into the kernel (the same scan as `execgate keys
        // extract`: the certificates of system_certificate_list, nothing else in the image).
        var certs: [[UInt8]] = []
        if let vmlinux {
            switch GuestKernel.builtinCertificatesOrReason(vmlinux: vmlinux) {
            case .success(let found): certs = found
            case .failure(let e): log("image: warning: \(e); no trust anchors in the image")
            }
        } else {
            log("image: warning: no vmlinux to take certificates from; no trust anchors in the image")
        }

        // The policy and admin certificate as the guest will take them (with these anchors for
        // `trust kernel-builtin`), before anything is written: one it refuses builds no image.
        if let check = o.checkGuestInputs {
            do { try check(certs) } catch { throw .badInput("\(error) (the guest would refuse it at every boot; nothing built)") }
        }
        try checkOutputDirectory(o.outDir)
        // Everything is written into `stage` and published at the end, whole; an error before
        // then removes it (`discard`), a signal too (the signal handler: CExecGateSignals).
        if !FS.exists(o.outDir) { try FS.mkdirs(parent(o.outDir)) }
        let stage: StagedDirectory
        do { stage = try StagedDirectory(replacing: o.outDir) } catch { throw Self.failure(error) }
        defer { stage.discard() }
        var written: [(name: String, bytes: [UInt8])] = []
        func write(_ name: String, _ bytes: [UInt8]) throws(ServiceVMError) {
            do { try stage.write(name, bytes) } catch { throw Self.failure(error) }
            written.append((name, bytes))
        }
        if let serviceKernelBytes, let path = o.serviceKernel {
            try write("vmlinux", serviceKernelBytes)
            result.artefacts.append(.init(path: vmlinuxPath, bytes: serviceKernelBytes.count, note: "service VM kernel (PVH ELF, no modules) from \(path)"))
        } else if let vmlinux {
            try write("vmlinux", vmlinux)
            result.artefacts.append(.init(path: vmlinuxPath, bytes: vmlinux.count, note: "uncompressed PVH ELF from \(basename(o.kernel))"))
        } else {
            try write("vmlinuz", kernelBytes)
            result.artefacts.append(.init(path: vmlinuzPath, bytes: kernelBytes.count, note: "bzImage (no xz payload to extract)"))
            log("image: note: \(o.kernel) has no xz-compressed ELF payload; booting the bzImage (slower under TCG)")
        }

        var cpio = CpioArchive(mtime: 0)
        cpio.addFile("init", initBytes, mode: 0o755)
        for d in ["dev", "proc", "sys", "tmp", "run", "etc/execgate/trust"] { cpio.addDirectory(d) }
        cpio.add("dev/console", mode: 0o600, .charDevice(major: 5, minor: 1))
        cpio.add("dev/null", mode: 0o666, .charDevice(major: 1, minor: 3))
        for m in moduleFiles { cpio.addFile(GuestPaths.modules + "/" + m.name, m.bytes) }
        for (i, c) in certs.enumerated() { cpio.addFile(GuestPaths.trust + "/kernel-builtin-\(i).der", c) }
        if let policyBytes { cpio.addFile(GuestPaths.policy, policyBytes) }
        if let adminBytes { cpio.addFile(GuestPaths.adminCertificate, adminBytes) }
        let kernelVersion = basename(o.kernel).replacingPrefix("vmlinuz-", with: "")
        cpio.addFile(GuestPaths.etc + "/image.txt", Array("builder=\(builderVersion)\nkernel=\(kernelVersion)\nfingerprint=\(fp.hex)\n".utf8))
        let raw = cpio.encode()
        let packed = try Compression.zstd(raw)
        try write(initramfsName, packed)
        result.artefacts.append(.init(path: initrdPath, bytes: packed.count,
                                      note: "\(cpio.entries.count) entries, \(raw.count) bytes uncompressed, \(certs.count) trust anchor(s)"))

        if o.withTestImage {
            var t = cpio
            for m in testFiles { t.addFile(GuestPaths.testModules + "/" + m.name, m.bytes) }
            if let victim = testFiles.first {
                // Flip one byte in the middle of the signed content: the signature must no longer verify.
                var bytes = victim.bytes
                let at = bytes.count / 3
                bytes[at] ^= 0x01
                t.addFile(GuestPaths.testModules + "/tampered-" + victim.name, bytes)
            }
            let traw = t.encode()
            let tpacked = try Compression.zstd(traw)
            try write(testInitramfsName, tpacked)
            result.artefacts.append(.init(path: testInitrdPath, bytes: tpacked.count,
                                          note: "test image: +\(testFiles.count) signed module(s) and 1 tampered copy"))
        }

        let info = ImageInfo.render([
            ("builder", builderVersion), ("fingerprint", fp.hex), ("kernel_source", o.kernel),
            ("kernel_version", kernelVersion),
            ("kernel", vmlinux != nil || serviceKernelBytes != nil ? vmlinuxPath : vmlinuzPath),
            ("kernel_format", vmlinux != nil || serviceKernelBytes != nil ? "pvh-elf" : "bzimage"),
            ("service_kernel", o.serviceKernel ?? "debian (\(kernelVersion), with modules)"),
            ("initrd", initrdPath), ("initrd_test", o.withTestImage ? testInitrdPath : ""),
            ("init_binary", o.initBinary), ("trust_anchors", "\(certs.count)"),
            ("admin_certificate", adminBytes != nil ? "yes" : "no"),
            ("outputs", Self.outputsFingerprint(written)),
        ])
        try write("image.txt", Array(info.utf8))
        // The swap: the old directory's files (every one the builder's: checkOutputDirectory) go
        // with it, among them an older builder's gzip'd initramfs, never left to be booted by mistake.
        do {
            if let kept = try stage.publish(isOld: isImageFile) {
                log("image: note: the previous image directory, now \(kept), held files that are not the image's; left in place")
            }
        } catch { throw Self.failure(error) }
        return result
    }

    static func basename(_ p: String) -> String { String(p.split(separator: "/").last ?? Substring(p)) }

    static func failure(_ e: FileError) -> ServiceVMError {
        e.detail.isEmpty ? .system("cannot \(e.operation)", path: e.path, errno: e.errno) : .badInput(e.description)
    }

    /// The directory `path` names an entry of ("." for a bare name).
    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// `key=value` lines: the image's build record and the launcher's state files (no JSON parser needed).
public enum ImageInfo {
    public static func parse(_ s: String) -> [String: String] {
        var d: [String: String] = [:]
        for line in s.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            d[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return d
    }
    public static func render(_ pairs: [(String, String)]) -> String {
        pairs.map { "\($0.0)=\($0.1.replacingNewlines())" }.joined(separator: "\n") + "\n"
    }
}

extension String {
    func replacingPrefix(_ p: String, with r: String) -> String { hasPrefix(p) ? r + dropFirst(p.count) : self }
    func replacingNewlines() -> String { String(map { $0 == "\n" ? " " : $0 }) }
}
