// SPDX-License-Identifier: Apache-2.0
//
// Finding the kernel's builtin trusted certificates in vmlinux.
//
// certs/system_certificates.S places the DER certificates (the build-time module signing key, then
// CONFIG_SYSTEM_TRUSTED_KEYS) back to back in .init.rodata, followed by two sizes:
//
//         .align 8
//     system_certificate_list:            <- module cert, then the trusted certs
//         .incbin "certs/signing_key.x509"
//         .incbin "certs/x509_certificate_list"
//         .align 8
//     system_certificate_list_size:  .quad __cert_list_end - __cert_list_start
//     module_cert_size:              .quad __module_cert_end - __module_cert_start
//
// load_system_certificate_list() (certs/system_keyring.c) loads exactly those bytes into the
// builtin trusted keyring. Debian's vmlinux is stripped of the symbols, so the list is found by that
// shape: a run of complete DER certificates (each `30 82 LL LL 30 82 ...`, parsed completely by
// OpenSSL with its DER length exactly what OpenSSL consumed) that starts 8-aligned, ends in zero
// padding to 8, and is followed by a u64 equal to the run's length and a u64 equal to the first
// certificate's length (or 0: no module signing key). Measured on Debian 6.1: one 1324-byte
// certificate at 0x267ec58 of the vmlinux, then 4 zero bytes, 0x52c, 0x52c.
//
// Nothing else in the image is an anchor, whatever it looks like: the revoked certificates of
// CONFIG_SYSTEM_REVOCATION_LIST (certs/revocation_certificates.S: the same .align 8 run and a u64
// size, but no module_cert_size; load_revocation_certificate_list() puts them into the *blacklist*
// keyring), a built-in cfg80211's regulatory keys, certificates in built-in firmware or an embedded
// initramfs. Two runs of the list's shape cannot be told apart without the symbols: refused
// (`ambiguousCertificateList`), never both trusted. A list the shape does not find (e.g.
// CONFIG_SYSTEM_EXTRA_CERTIFICATE's reserved area sits between the certificates and the sizes) is
// `noCertificates`: the operator then names the anchors explicitly.

import CDecompress
import ExecGateSignature
import _ExecGateInternals

public enum BuiltinCertificates {
    /// A certificate smaller than this cannot hold an RSA/EC key and a signature; skip faster.
    static let minimumCertificateSize = 128

    /// The certificates of `system_certificate_list`, or [] when there is no such list or more than one.
    public static func scan(_ image: UnsafeRawBufferPointer) -> [Certificate] {
        (try? systemCertificateList(image)) ?? []
    }

    /// The certificates of the one `system_certificate_list` in `vmlinux`, in list order, each once.
    ///
    /// - Throws: `.noCertificates` when no run of certificates has the list's shape,
    ///   `.ambiguousCertificateList` when more than one has.
    public static func systemCertificateList(_ image: UnsafeRawBufferPointer) throws(KernelImageError) -> [Certificate] {
        let runs = try certificateRuns(image)
        var lists: [ArraySlice<(offset: Int, certificate: Certificate)>] = []
        for run in runs {
            // Every suffix of a run: a certificate-shaped blob right before the list is not part of it.
            for first in run.indices {
                let list = run[first...]
                if hasListSizes(image, list) { lists.append(list); break }
            }
        }
        guard let list = lists.first else {
            throw KernelImageError(.noCertificates, "no system_certificate_list in vmlinux (DER certificates followed by system_certificate_list_size and module_cert_size)")
        }
        guard lists.count == 1 else {
            throw KernelImageError(.ambiguousCertificateList, "\(lists.count) runs of certificates have the shape of system_certificate_list (at \(lists.map { Hex.address(UInt64($0.first!.offset)) }.joined(separator: ", "))); the kernel loads one")
        }
        var seen = Set<Digest>()
        let certificates = list.compactMap { seen.insert($0.certificate.fingerprint).inserted ? $0.certificate : nil }
        // load_certificate_list() (certs/common.c) adds each certificate with
        // key_create_or_update(); the X.509 parser rejects a self-signed one whose signature does
        // not verify with its own key (x509_check_for_self_signed(): -EKEYREJECTED), and the loop
        // goes on to the next. Such a certificate is no anchor of the kernel's: dropped here too
        // (trusted, it would allow modules the kernel refuses).
        // Nor is one whose key the kernel cannot verify with (Certificate.kernelKeyProblem: an
        // unknown curve or algorithm fails x509_cert_parse(); an RSA size rsa_check_key_length()
        // refuses fails at every verification with it): kept, it would allow modules the kernel
        // refuses (round 14).
        let kept = asLoaded(certificates.filter(\.selfSignatureVerifies)).filter { $0.kernelKeyProblem == nil }
        guard !kept.isEmpty else {
            throw KernelImageError(.noCertificates, "system_certificate_list holds \(certificates.count) certificate(s), none the kernel can verify a module with: each is self-signed with a signature that does not verify (x509_check_for_self_signed(), -EKEYREJECTED) or holds a key the kernel cannot use (\(certificates.compactMap(\.kernelKeyProblem).first ?? "none")), so its builtin keyring verifies nothing")
        }
        return kept
    }

    /// The certificates the builtin keyring holds once `certificates` (those its X.509 parser
    /// took) are added in order: load_certificate_list() adds each with key_create_or_update(),
    /// and a key whose description (`Certificate.kernelKeyDescription`: subject and key id) is
    /// already in the keyring displaces it (asymmetric keys have no update; the keyring's link
    /// replaces the key of equal type and description): the later one stays. Booted on Debian
    /// 6.1 with two certificates of one subject and key id, a module signed by the first was
    /// refused, by the second loaded (round 14); both were anchors here. `description` is the
    /// rule (tests give their own to make two descriptions collide).
    public static func asLoaded(_ certificates: [Certificate],
                         description: (Certificate) -> [UInt8]? = { $0.kernelKeyDescription }) -> [Certificate] {
        let descriptions = certificates.map(description)
        var last: [[UInt8]: Int] = [:]
        for (i, d) in descriptions.enumerated() { if let d { last[d] = i } }
        return certificates.indices.filter { i in descriptions[i].map { last[$0] == i } ?? true }.map { certificates[$0] }
    }

    /// .align 8 before the list; zero padding to 8 after it; then system_certificate_list_size (the
    /// run's length) and module_cert_size (the first certificate's length, or 0), little-endian u64s.
    static func hasListSizes(_ image: UnsafeRawBufferPointer, _ list: ArraySlice<(offset: Int, certificate: Certificate)>) -> Bool {
        guard let head = list.first, let tail = list.last, head.offset % 8 == 0 else { return false }
        let end = tail.offset + tail.certificate.der.count
        let sizes = (end + 7) / 8 * 8
        guard sizes + 16 <= image.count, image[end..<sizes].allSatisfy({ $0 == 0 }),
              let listSize = image.getInteger(at: sizes, as: UInt64.self),
              let moduleCertSize = image.getInteger(at: sizes + 8, as: UInt64.self)
        else { return false }
        return listSize == UInt64(end - head.offset)
            && (moduleCertSize == 0 || moduleCertSize == UInt64(head.certificate.der.count))
    }

    /// Every complete DER X.509 certificate in `image`, grouped into runs of back-to-back ones.
    ///
    /// - Throws: `.tooManyCertificateCandidates` once more than `KernelImageLimits.maxCertificateCandidates`
    ///   offsets would go to the DER parser (the scan's work is bounded before it is done).
    static func certificateRuns(_ image: UnsafeRawBufferPointer) throws(KernelImageError) -> [[(offset: Int, certificate: Certificate)]] {
        guard let base = image.baseAddress, image.count >= 6 else { return [] }
        var runs: [[(offset: Int, certificate: Certificate)]] = []
        var pos = 0
        var candidates = 0
        let p = base.assumingMemoryBound(to: UInt8.self)
        while pos <= image.count - 6 {
            // The C helper never reads past image.count and returns image.count when done.
            let i = egd_find_der_certificate_candidate(p, image.count, pos)
            guard i <= image.count - 6 else { break }
            pos = i + 1
            guard image.count - i >= 6, image[i + 4] == 0x30, image[i + 5] == 0x82 else { continue }
            let length = Int(image[i + 2]) << 8 | Int(image[i + 3])
            let total = length + 4
            guard total >= minimumCertificateSize, total <= image.count - i else { continue }
            candidates += 1
            guard candidates <= KernelImageLimits.maxCertificateCandidates else {
                throw KernelImageError(.tooManyCertificateCandidates,
                                       "more than \(KernelImageLimits.maxCertificateCandidates) certificate-shaped offsets (the last at \(Hex.address(UInt64(i)))); a kernel's system_certificate_list holds a few")
            }
            let candidate = UnsafeRawBufferPointer(rebasing: image[i..<(i + total)])
            guard let (cert, consumed) = Certificate.parsePrefix(candidate), consumed == total else { continue }
            if let last = runs.last?.last, last.offset + last.certificate.der.count == i {
                runs[runs.count - 1].append((i, cert))
            } else {
                runs.append([(i, cert)])
            }
            pos = i + total
        }
        return runs
    }
}
