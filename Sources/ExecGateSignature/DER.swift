// SPDX-License-Identifier: Apache-2.0
//
// The smallest DER reading ExecGate needs itself: element boundaries (tag + definite length),
// used to cut the TBSCertificate out of a certificate's original encoding. Everything else is
// parsed by OpenSSL. Bounds are checked against the bytes present; lengths above 4 octets or
// indefinite forms are refused (DER forbids the latter).

enum DER {
    /// One element: its tag byte and the ranges of the whole element and of its contents.
    struct Element {
        let tag: UInt8
        let whole: Range<Int>
        let contents: Range<Int>
    }

    /// Reads the element starting at `offset`; nil when it does not fit in `bytes`.
    static func element(in bytes: UnsafeRawBufferPointer, at offset: Int) -> Element? {
        guard offset >= 0, offset < bytes.count, bytes.count - offset >= 2 else { return nil }
        let tag = bytes[offset]
        // Multi-byte tags (low 5 bits all set) never start a certificate or TBS; refuse them.
        guard tag & 0x1f != 0x1f else { return nil }
        let first = bytes[offset + 1]
        var headerLength = 2
        var length = 0
        if first < 0x80 {
            length = Int(first)
        } else {
            let n = Int(first & 0x7f)
            // 0x80 = indefinite (BER only); more than 4 length octets is never a sane certificate.
            guard n >= 1, n <= 4, bytes.count - offset - 2 >= n else { return nil }
            for i in 0..<n { length = length << 8 | Int(bytes[offset + 2 + i]) }
            headerLength = 2 + n
        }
        let (contentStart, o1) = offset.addingReportingOverflow(headerLength)
        let (end, o2) = contentStart.addingReportingOverflow(length)
        guard !o1, !o2, end <= bytes.count else { return nil }
        return Element(tag: tag, whole: offset..<end, contents: contentStart..<end)
    }

    /// The TBSCertificate element of a DER certificate:
    ///
    ///     Certificate  ::=  SEQUENCE  {
    ///         tbsCertificate       TBSCertificate,
    ///         signatureAlgorithm   AlgorithmIdentifier,
    ///         signatureValue       BIT STRING  }
    ///
    /// (RFC 5280 § 4.1). Returns the byte range of `tbsCertificate` including its header.
    static func tbsCertificateRange(_ cert: UnsafeRawBufferPointer) -> Range<Int>? {
        guard let outer = element(in: cert, at: 0), outer.tag == 0x30, outer.whole.upperBound == cert.count,
              let tbs = element(in: cert, at: outer.contents.lowerBound), tbs.tag == 0x30,
              tbs.whole.upperBound <= outer.contents.upperBound
        else { return nil }
        return tbs.whole
    }
}
