// SPDX-License-Identifier: Apache-2.0
//
// What the image builder (and `execgate capture`) needs from a kernel and from the /init binary,
// all read by the project's parsers: the uncompressed vmlinux ELF (QEMU boots it directly through
// its PVH entry, skipping ~3 s of in-guest decompression under TCG) and the builtin certificates
// that sign the modules (the verifier's default trust anchors) come from ExecGateKernelImage — the
// same code as `execgate keys extract`; whether a binary is dynamically linked comes from its ELF
// program headers (ExecGateKernelImage.ELFProgramHeaders).

import ExecGateKernelImage

public enum GuestKernel {
    /// The vmlinux ELF inside a kernel image (a bzImage with any supported payload compression, a
    /// compressed stream, or an ELF already). Nil when the image cannot be read (then boot the
    /// bzImage itself).
    public static func extractVmlinux(fromBzImage image: [UInt8]) -> [UInt8]? {
        (try? KernelImage.load(image))?.vmlinux
    }

    /// Whether a 64-bit ELF has a PT_INTERP program header (i.e. is dynamically linked); nil when
    /// it is not a readable 64-bit ELF.
    public static func elfHasInterpreter(_ b: [UInt8]) -> Bool? {
        ELFProgramHeaders(b)?.hasInterpreter
    }

    /// The builtin trusted certificates (DER) of a vmlinux, as `execgate keys extract` finds them:
    /// the certificates of `system_certificate_list` only. Empty when there is no such list or more
    /// than one (`builtinCertificatesOrReason` says which).
    public static func builtinCertificates(vmlinux: [UInt8]) -> [[UInt8]] {
        (try? builtinCertificatesOrReason(vmlinux: vmlinux).get()) ?? []
    }

    /// `builtinCertificates`, or why none were taken.
    public static func builtinCertificatesOrReason(vmlinux: [UInt8]) -> Result<[[UInt8]], KernelImageError> {
        vmlinux.withUnsafeBytes { buf in
            Result { () throws(KernelImageError) in try BuiltinCertificates.systemCertificateList(buf).map(\.der) }
        }
    }
}
