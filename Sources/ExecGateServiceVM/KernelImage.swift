// SPDX-License-Identifier: Apache-2.0
//
// What the image builder needs from a Debian kernel: the uncompressed vmlinux ELF (QEMU boots it
// directly through its PVH entry, skipping ~3 s of in-guest decompression under TCG) and the
// builtin certificates that sign the modules (the verifier's default trust anchors).
//
// Inputs here are the build host's own files, but they are parsed defensively anyway: every
// offset is bounds-checked and a malformed image is a typed error, never a trap.

public enum GuestKernel {
    static let xzMagic: [UInt8] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
    static let elfMagic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]

    public static func isELF(_ b: [UInt8]) -> Bool { b.count >= 64 && Array(b[0..<4]) == elfMagic }

    /// Extracts the vmlinux ELF from a bzImage whose payload is xz-compressed. Returns nil when the
    /// image has no xz payload or the payload is not an ELF (then boot the bzImage itself).
    public static func extractVmlinux(fromBzImage image: [UInt8]) -> [UInt8]? {
        var start = 0
        while let at = find(xzMagic, in: image, from: start) {
            if let out = try? Compression.unxz(image[at...]), isELF(out) { return out }
            start = at + 1
        }
        return nil
    }

    static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, hay.count >= needle.count, from <= hay.count - needle.count else { return nil }
        return hay.withUnsafeBufferPointer { h -> Int? in
            let first = needle[0]
            var i = from
            let last = h.count - needle.count
            while i <= last {
                if h[i] == first {
                    var ok = true
                    for j in 1..<needle.count where h[i + j] != needle[j] { ok = false; break }
                    if ok { return i }
                }
                i += 1
            }
            return nil
        }
    }

    /// Whether a 64-bit ELF has a PT_INTERP program header (i.e. is dynamically linked).
    public static func elfHasInterpreter(_ b: [UInt8]) -> Bool? {
        guard isELF(b), b[4] == 2 else { return nil }
        guard let phoff = le(b, 32, 8), let phentsize = le(b, 54, 2), let phnum = le(b, 56, 2), phentsize >= 56 else { return nil }
        for i in 0..<Int(phnum) {
            guard let t = le(b, Int(phoff) + i * Int(phentsize), 4) else { return nil }
            if t == 3 { return true }
        }
        return false
    }

    /// Maps a virtual address to a file offset through the PT_LOAD headers.
    static func fileOffset(_ b: [UInt8], vaddr: UInt64) -> Int? {
        guard isELF(b), b[4] == 2, let phoff = le(b, 32, 8), let phentsize = le(b, 54, 2), let phnum = le(b, 56, 2),
              phentsize >= 56 else { return nil }
        for i in 0..<Int(phnum) {
            let p = Int(phoff) + i * Int(phentsize)
            guard let type = le(b, p, 4), let off = le(b, p + 8, 8), let va = le(b, p + 16, 8), let filesz = le(b, p + 32, 8) else { return nil }
            if type == 1 && vaddr >= va && vaddr - va < filesz {
                let o = off + (vaddr - va)
                return o < UInt64(b.count) ? Int(o) : nil
            }
        }
        return nil
    }

    static func le(_ b: [UInt8], _ at: Int, _ n: Int) -> UInt64? {
        guard at >= 0, n <= 8, at <= b.count - n else { return nil }
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }

    /// Length of the DER element at `at` (tag + length + contents), or nil.
    static func derLength(_ b: [UInt8], _ at: Int) -> Int? {
        guard at + 2 <= b.count else { return nil }
        let l0 = Int(b[at + 1])
        if l0 < 0x80 { return 2 + l0 }
        let n = l0 & 0x7F
        guard n >= 1, n <= 3, at + 2 + n <= b.count else { return nil }
        var len = 0
        for i in 0..<n { len = len << 8 | Int(b[at + 2 + i]) }
        let total = 2 + n + len
        return at + total <= b.count ? total : nil
    }

    /// The builtin trusted certificates (DER) of a vmlinux: the list between the symbols
    /// `system_certificate_list` and its `system_certificate_list_size` (8 bytes), found via System.map.
    public static func builtinCertificates(vmlinux: [UInt8], systemMap: String) throws(ServiceVMError) -> [[UInt8]] {
        var listAddr: UInt64?
        var sizeAddr: UInt64?
        for line in systemMap.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 3 else { continue }
            if f[2] == "system_certificate_list" { listAddr = UInt64(f[0], radix: 16) }
            if f[2] == "system_certificate_list_size" { sizeAddr = UInt64(f[0], radix: 16) }
        }
        guard let la = listAddr, let sa = sizeAddr, let lo = fileOffset(vmlinux, vaddr: la), let so = fileOffset(vmlinux, vaddr: sa),
              let size = le(vmlinux, so, 8), size < 1 << 20, lo + Int(size) <= vmlinux.count
        else { throw .badInput("System.map/vmlinux: no system_certificate_list") }
        var certs: [[UInt8]] = []
        var at = lo
        let end = lo + Int(size)
        while at < end {
            guard vmlinux[at] == 0x30, let n = derLength(vmlinux, at), at + n <= end else { break }
            certs.append(Array(vmlinux[at..<at + n]))
            at += n
        }
        guard !certs.isEmpty else { throw .badInput("vmlinux: the builtin certificate list is empty") }
        return certs
    }

    /// Fallback when System.map is Debian's stub (the real one is in the -dbg package): scan the
    /// vmlinux for DER X.509 v3 certificates (`SEQUENCE { SEQUENCE { [0] { INTEGER 2 } ...`) whose
    /// nested lengths are consistent. On Debian 6.1 this finds exactly the builtin signing key.
    /// The certificates are only trust *anchors* the verifier is told about; a wrong hit would be a
    /// certificate nobody holds the key for, so a false positive cannot make a bad module pass.
    public static func scanCertificates(vmlinux b: [UInt8]) -> [[UInt8]] {
        let pattern: [UInt8] = [0xA0, 0x03, 0x02, 0x01, 0x02]
        var out: [[UInt8]] = []
        var at = 0
        while let hit = find(pattern, in: b, from: at) {
            at = hit + 1
            let start = hit - 8
            guard start >= 0, b[start] == 0x30, b[start + 1] == 0x82, b[start + 4] == 0x30, b[start + 5] == 0x82,
                  let total = derLength(b, start), let tbs = derLength(b, start + 4), 4 + tbs < total, total < 64 * 1024
            else { continue }
            let cert = Array(b[start..<start + total])
            if !out.contains(cert) { out.append(cert) }
            at = start + total
        }
        return out
    }
}
