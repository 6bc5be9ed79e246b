// SPDX-License-Identifier: Apache-2.0
//
// Finding the kernel's builtin trusted certificates in vmlinux.
//
// certs/system_certificates.S places the DER certificates (CONFIG_SYSTEM_TRUSTED_KEYS plus the
// build-time module signing key) back to back between the symbols `system_certificate_list` and
// `system_certificate_list_size`. Debian's vmlinux is stripped of those symbols, so we scan for
// what the kernel itself would load from there (certs/system_keyring.c → x509_load_certificate_list):
// DER certificates, each a SEQUENCE with a two-byte long-form length whose first element, the
// TBSCertificate, is again a long-form SEQUENCE:
//
//     30 82 LL LL 30 82 ...
//
// A candidate counts only if OpenSSL parses it completely as an X.509 certificate and the DER
// length matches exactly what it consumed, so random code bytes that happen to match the pattern
// are discarded. Duplicates (the same certificate twice) are reported once.

import CDecompress
import ExecGateSignature

public enum BuiltinCertificates {
    /// A certificate smaller than this cannot hold an RSA/EC key and a signature; skip faster.
    static let minimumCertificateSize = 128

    /// Every distinct DER X.509 certificate found in `vmlinux`, in file order.
    public static func scan(_ image: UnsafeRawBufferPointer) -> [Certificate] {
        guard let base = image.baseAddress, image.count >= 6 else { return [] }
        var found: [Certificate] = []
        var seen = Set<Digest>()
        var pos = 0
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
            let candidate = UnsafeRawBufferPointer(rebasing: image[i..<(i + total)])
            guard let (cert, consumed) = Certificate.parsePrefix(candidate), consumed == total else { continue }
            if seen.insert(cert.fingerprint).inserted { found.append(cert) }
            pos = i + total
        }
        return found
    }
}
