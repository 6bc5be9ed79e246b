// SPDX-License-Identifier: Apache-2.0
//
// `execgate image build`: the service VM's kernel + initramfs (see ExecGateServiceVM/ImageBuilder).

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost
import ExecGatePolicy
import ExecGateServiceVM
import ExecGateSignature

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Build the service VM image (kernel + initramfs).",
        subcommands: [ImageBuildCommand.self]
    )
}

struct ImageBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build Images/out/{vmlinux,initramfs.cpio.zst,initramfs-test.cpio.zst}; skipped when inputs are unchanged."
    )

    @Option(help: "Unpacked Debian kernel package (boot/, lib/modules/).")
    var kernelPackage: String = ".cache/kernel/current"

    @Option(help: "The guest kernel bzImage (default: boot/vmlinuz-* of --kernel-package).")
    var kernel: String?

    @Option(help: "The service VM's own kernel to boot (vmlinux from scripts/build-kernel.sh; `make image` passes it). Without it the Debian kernel of --kernel-package is booted with its vsock/virtio modules. Trust anchors come from the Debian kernel either way.")
    var serviceKernel: String?

    @Option(help: "The static execgate binary to use as /init (default: this binary, if static).")
    var `init`: String?

    @Option(help: "Output directory.")
    var out: String = "Images/out"

    @Option(help: "Policy (text or signed bundle) to install as /etc/execgate/policy in the guest: the policy at boot. Checked as the guest will (a text parsed; a bundle verified against --admin-cert, which it then needs).")
    var policy: String?

    @Option(help: "Admin certificate to install as /etc/execgate/admin.pem: the guest then opens its admin port (VMM port + 1) and accepts policy bundles signed by its key. One certificate (PEM or DER).")
    var adminCert: String?

    @Flag(help: "Rebuild even when the inputs are unchanged.")
    var force = false

    @Flag(help: "Do not build the test initramfs.")
    var noTestImage = false

    /// What the guest's service does with `--policy` and `--admin-cert` at every boot
    /// (GuestService.configuration → VerifierService.start: CertificateFiles.loadOne for the admin
    /// certificate, ServiceConfiguration.loadBootPolicy for the policy: a text parsed, a bundle
    /// verified against the admin certificate, `trust kernel-builtin` standing for the image's
    /// trust anchors), done when the image is built: one the guest refuses made an image whose
    /// service never starts (docs/deployment.md, "Restart"). `anchors` nil: before they are known
    /// (everything but what `trust kernel-builtin` stands for).
    static func checkGuestInputs(policy: String?, adminCert: String?, anchors: [Certificate]?) throws {
        let admin = try adminCert.map(CertificateFiles.loadOne)
        guard let policy else { return }
        let bytes = try LocalFile.readPolicy(policy)
        if bytes.starts(with: PolicyBundle.magic) {
            guard let admin else {
                throw LocalFileError(path: policy, why: "a signed bundle, and no --admin-cert to verify it against (the guest refuses a bundle without its admin certificate)")
            }
            do { _ = try PolicyBundle.open(bytes, admin: admin, file: policy, builtinAnchors: anchors) } catch { throw error.naming(policy) }
        } else {
            _ = try PolicyParser.parse(bytes, file: policy, builtinAnchors: anchors)
        }
    }

    func validate() throws {
        // "" + "/vmlinux" is a file in the root directory (emptyOutputPath: every output option's rule).
        guard !out.isEmpty else { throw ValidationError(emptyOutputPath("--out")) }
        try refuseEmptyPaths([("--kernel-package", kernelPackage), ("--kernel", kernel), ("--service-kernel", serviceKernel),
                              ("--init", `init`), ("--policy", policy), ("--admin-cert", adminCert)])
    }

    func run() throws {
        // Everything the guest checks but the anchors first (before the kernel is even read), then
        // with the anchors the image will carry, before anything is written (ImageBuilder).
        do { try Self.checkGuestInputs(policy: policy, adminCert: adminCert, anchors: nil) } catch {
            Console.error("execgate image build: \(error) (the guest would refuse it at every boot; nothing built)")
            throw ExecGateExit.usage
        }
        do {
            let initBinary = try `init` ?? FS.selfExecutable() ?? { throw ServiceVMError.missing("cannot find this executable; pass --init") }()
            var o = try ImageBuildOptions.fromKernelPackage(kernelPackage, initBinary: initBinary, outDir: out)
            if let kernel {
                o.kernel = kernel
                // A kernel given by path: modules and System.map still come from the package.
            }
            o.serviceKernel = serviceKernel
            o.policy = policy
            o.adminCertificate = adminCert
            o.force = force
            o.withTestImage = !noTestImage
            o.checkGuestInputs = { [policy, adminCert] der in
                try Self.checkGuestInputs(policy: policy, adminCert: adminCert, anchors: try der.flatMap { try Certificate.load($0) })
            }
            let r = try ImageBuilder.build(o)
            if r.upToDate { print("image: up to date (inputs unchanged, fingerprint \(r.fingerprint))") }
            for a in r.artefacts {
                // A note quotes the inputs (the kernel image's version string): escaped (TerminalText).
                print("image: \(TerminalText.escaped(a.path))  \(humanBytes(a.bytes))  \(TerminalText.escaped(a.note))")
            }
        } catch {
            throw serviceVMFailure("image build", error)
        }
    }
}

func humanBytes(_ n: Int) -> String {
    if n >= 1 << 20 {
        let tenths = (n * 10 + (1 << 19)) >> 20
        return "\(tenths / 10).\(tenths % 10) MiB"
    }
    if n >= 1 << 10 { return "\((n + 512) >> 10) KiB" }
    return "\(n) B"
}

/// Prints one clear line on stderr and picks the exit status by the project's convention:
/// 2 when something is missing or malformed (install/build it, fix the option), 1 when the
/// operation itself failed (guest died, timeout, already running).
func serviceVMFailure(_ prefix: String, _ error: Error) -> ExitCode {
    Console.error("execgate \(prefix): \(error)")
    switch error as? ServiceVMError {
    case .missing?, .badOption?, .badInput?: return ExecGateExit.usage
    default: return ExitCode(1)
    }
}
