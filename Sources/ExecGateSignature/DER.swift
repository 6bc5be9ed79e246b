// SPDX-License-Identifier: Apache-2.0
//
// The smallest DER reading ExecGate needs itself: element boundaries (tag + definite length),
// used to cut the TBSCertificate out of a certificate's original encoding. Everything else is
// parsed by OpenSSL. Bounds are checked against the bytes present; lengths above 4 octets or
// indefinite forms are refused (DER forbids the latter).

import _ExecGateInternals

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

extension DER {
    /// The TBSCertificate and the fields the kernel-mirroring checks below read, in order
    /// (RFC 5280 § 4.1: `[0] version` optional, serial, signature, issuer, validity, subject),
    /// or nil when they cannot be walked inside the TBS.
    static func tbsFields(_ cert: UnsafeRawBufferPointer) -> (tbs: Element, serial: Element, validity: Element, subject: Element)? {
        guard let tbsRange = tbsCertificateRange(cert), let tbs = element(in: cert, at: tbsRange.lowerBound) else { return nil }
        var at = tbs.contents.lowerBound
        if let version = element(in: cert, at: at), version.tag == 0xa0 { at = version.whole.upperBound }
        guard let serial = element(in: cert, at: at), serial.tag == 0x02,
              let sigAlg = element(in: cert, at: serial.whole.upperBound), sigAlg.tag == 0x30,
              let issuer = element(in: cert, at: sigAlg.whole.upperBound), issuer.tag == 0x30,
              let validity = element(in: cert, at: issuer.whole.upperBound), validity.tag == 0x30,
              let subject = element(in: cert, at: validity.whole.upperBound), subject.tag == 0x30,
              subject.whole.upperBound <= tbs.contents.upperBound
        else { return nil }
        return (tbs, serial, validity, subject)
    }

    /// The description the kernel gives a certificate's key in its keyring, as bytes:
    /// crypto/asymmetric_keys/x509_public_key.c x509_key_preparse() writes `subject: id`, the
    /// subject as x509_fabricate_name() makes it (x509_cert_parser.c, 6.1 and 6.12: of the
    /// subject's commonName, organizationName and emailAddress values — the last of each, raw
    /// bytes, any string type — the CN alone when it starts with the whole O or shares its first 7
    /// bytes with an O of 7 or more, else "O: CN"; the CN, O or email alone when only it is there;
    /// empty when none is; cut at a NUL, as strlen() reads it), then ": " and the subject key
    /// identifier in lower-case hex (bin2hex()), or the raw serial INTEGER's contents when the
    /// certificate has no SKID. nil when the certificate's TBS cannot be walked that far.
    static func kernelKeyDescription(_ cert: UnsafeRawBufferPointer, subjectKeyIdentifier skid: [UInt8]?) -> [UInt8]? {
        guard let f = tbsFields(cert) else { return nil }
        let serial = f.serial, subject = f.subject
        let cnOID: [UInt8] = [0x55, 0x04, 0x03], oOID: [UInt8] = [0x55, 0x04, 0x0a]
        let emailOID: [UInt8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]
        var cn: [UInt8] = [], o: [UInt8] = [], email: [UInt8] = []
        var rdnAt = subject.contents.lowerBound
        while rdnAt < subject.contents.upperBound {
            guard let rdn = element(in: cert, at: rdnAt), rdn.whole.upperBound <= subject.contents.upperBound else { return nil }
            var avaAt = rdn.contents.lowerBound
            while avaAt < rdn.contents.upperBound {
                guard let ava = element(in: cert, at: avaAt), ava.whole.upperBound <= rdn.contents.upperBound,
                      let oid = element(in: cert, at: ava.contents.lowerBound), oid.tag == 0x06,
                      let value = element(in: cert, at: oid.whole.upperBound), value.whole.upperBound <= ava.contents.upperBound
                else { return nil }
                let oidBytes = Array(cert[oid.contents]), valueBytes = Array(cert[value.contents])
                if oidBytes == cnOID { cn = valueBytes } else if oidBytes == oOID { o = valueBytes } else if oidBytes == emailOID { email = valueBytes }
                avaAt = ava.whole.upperBound
            }
            rdnAt = rdn.whole.upperBound
        }
        var name: [UInt8]
        if !cn.isEmpty && !o.isEmpty {
            if (cn.count >= o.count && cn.starts(with: o)) || (cn.count >= 7 && o.count >= 7 && cn.prefix(7).elementsEqual(o.prefix(7))) {
                name = cn
            } else {
                name = o + Array(": ".utf8) + cn
            }
        } else {
            name = !cn.isEmpty ? cn : !o.isEmpty ? o : email
        }
        if let nul = name.firstIndex(of: 0) { name.removeSubrange(nul...) }
        let id = skid ?? Array(cert[serial.contents])
        return name + Array(": ".utf8) + Array(Hex.encode(id).utf8)
    }

    /// Why the kernel's X.509 parser refuses this certificate (-EBADMSG), for the fields it reads
    /// more strictly than OpenSSL (crypto/asymmetric_keys/x509_cert_parser.c, 6.1 and 6.12), or
    /// nil: each validity time as x509_decode_time() takes it (UTCTime `YYMMDDHHMMSSZ`, or
    /// GeneralizedTime `YYYYMMDDHHMMSSZ` for a year outside 1950–2049; digits only; year from
    /// 1970; month 1–12, the day within it (leap years), hour ≤ 24, minute ≤ 59, second ≤ 60), and
    /// the subject key identifier as x509_process_extension() takes it (one extension at most,
    /// its value an OCTET STRING of 1 to 127 bytes in the short length form).
    static func kernelParseProblem(_ cert: UnsafeRawBufferPointer) -> String? {
        guard let f = tbsFields(cert),
              let notBefore = element(in: cert, at: f.validity.contents.lowerBound),
              let notAfter = element(in: cert, at: notBefore.whole.upperBound),
              let spki = element(in: cert, at: f.subject.whole.upperBound)
        else { return "the TBSCertificate's fields cannot be walked" }
        for (what, t) in [("notBefore", notBefore), ("notAfter", notAfter)] {
            if let why = kernelTimeProblem(Array(cert[t.contents]), tag: t.tag) { return "its \(what) \(why) (x509_decode_time())" }
        }
        let tbsEnd = f.tbs.contents.upperBound
        var next = spki.whole.upperBound
        var skids = 0
        while next < tbsEnd, let e = element(in: cert, at: next), e.whole.upperBound <= tbsEnd {
            next = e.whole.upperBound
            guard e.tag == 0xa3, let list = element(in: cert, at: e.contents.lowerBound) else { continue }
            var extAt = list.contents.lowerBound
            while extAt < list.contents.upperBound, let ext = element(in: cert, at: extAt), ext.whole.upperBound <= list.contents.upperBound {
                extAt = ext.whole.upperBound
                guard let oid = element(in: cert, at: ext.contents.lowerBound), oid.tag == 0x06,
                      Array(cert[oid.contents]) == [0x55, 0x1d, 0x0e] else { continue }  // subjectKeyIdentifier
                var valueAt = oid.whole.upperBound
                if let critical = element(in: cert, at: valueAt), critical.tag == 0x01 { valueAt = critical.whole.upperBound }
                guard let value = element(in: cert, at: valueAt), value.tag == 0x04 else { return "its subjectKeyIdentifier extension has no value" }
                skids += 1
                let v = Array(cert[value.contents])
                guard skids == 1 else { return "it has two subjectKeyIdentifier extensions (x509_process_extension())" }
                guard v.count >= 3, v[0] == 0x04, Int(v[1]) == v.count - 2 else {
                    return "its subjectKeyIdentifier is not an OCTET STRING of 1 to 127 bytes in the short length form (x509_process_extension())"
                }
            }
        }
        return nil
    }

    /// x509_decode_time()'s rules for one Time (tag 0x17 UTCTime, 0x18 GeneralizedTime).
    private static func kernelTimeProblem(_ v: [UInt8], tag: UInt8) -> String? {
        func digits(_ r: Range<Int>) -> Int? {
            var n = 0
            for i in r { guard v[i] >= 0x30 && v[i] <= 0x39 else { return nil }; n = n * 10 + Int(v[i] - 0x30) }
            return n
        }
        let year: Int, rest: Int
        switch tag {
        case 0x17:
            guard v.count == 13, let yy = digits(0..<2) else { return "is not a UTCTime YYMMDDHHMMSSZ" }
            year = yy >= 50 ? 1900 + yy : 2000 + yy
            rest = 2
        case 0x18:
            guard v.count == 15, let y = digits(0..<4) else { return "is not a GeneralizedTime YYYYMMDDHHMMSSZ" }
            guard !(1950...2049).contains(y) else { return "is a GeneralizedTime in 1950–2049 (UTCTime's years)" }
            year = y
            rest = 4
        default:
            return "is neither a UTCTime nor a GeneralizedTime"
        }
        guard let mon = digits(rest..<rest + 2), let day = digits(rest + 2..<rest + 4), let hour = digits(rest + 4..<rest + 6),
              let min = digits(rest + 6..<rest + 8), let sec = digits(rest + 8..<rest + 10) else { return "has a non-digit" }
        guard v[rest + 10] == 0x5a else { return "does not end in Z" }
        guard year >= 1970, (1...12).contains(mon) else { return "names year \(year), month \(mon)" }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let monthLength = mon == 2 ? (leap ? 29 : 28) : [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mon - 1]
        guard day >= 1, day <= monthLength, hour <= 24, min <= 59, sec <= 60 else { return "names no valid day or time" }
        return nil
    }

    /// The DER `OBJECT IDENTIFIER` contents of each digest algorithm (RFC 5754 / RFC 3370).
    static func oidContents(_ a: DigestAlgorithm) -> [UInt8] {
        switch a {
        case .sha1: return [0x2b, 0x0e, 0x03, 0x02, 0x1a]                                   // 1.3.14.3.2.26
        case .sha224: return [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04]         // 2.16.840.1.101.3.4.2.4
        case .sha256: return [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]         // ...2.1
        case .sha384: return [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02]         // ...2.2
        case .sha512: return [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03]         // ...2.3
        }
    }

    /// Checks the parts of a CMS SignedData that are *not* covered by the signature and that
    /// OpenSSL does not check, the way the kernel's PKCS#7 parser (crypto/asymmetric_keys/
    /// pkcs7_parser.c) checks them, plus a few stricter rules that fix most of the message's
    /// unsigned bytes (strict DER, one digest entry, no certificates or attributes). Not all: an
    /// algorithm's parameters may be absent or NULL, and the signer may be named by issuer+serial
    /// or by subject key id, as the kernel accepts each, so those bytes can change while the
    /// verdict does not (a module's identity is its signed content, never its signature bytes:
    /// docs/trust.md). Returns nil when the shape is acceptable, else a reason.
    ///
    /// Per RFC 5652 § 5.1 and § 5.3:
    ///
    ///     ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SignedData }
    ///     SignedData ::= SEQUENCE {
    ///         version CMSVersion,
    ///         digestAlgorithms SET OF DigestAlgorithmIdentifier,
    ///         encapContentInfo EncapsulatedContentInfo,
    ///         certificates [0] IMPLICIT CertificateSet OPTIONAL,
    ///         crls [1] IMPLICIT RevocationInfoChoices OPTIONAL,
    ///         signerInfos SET OF SignerInfo }
    ///     SignerInfo ::= SEQUENCE {
    ///         version CMSVersion,
    ///         sid SignerIdentifier,            -- issuerAndSerialNumber | [0] SubjectKeyIdentifier
    ///         digestAlgorithm DigestAlgorithmIdentifier,
    ///         signedAttrs [0] IMPLICIT SignedAttributes OPTIONAL,
    ///         signatureAlgorithm SignatureAlgorithmIdentifier,
    ///         signature SignatureValue,
    ///         unsignedAttrs [1] IMPLICIT UnsignedAttributes OPTIONAL }
    ///
    /// Rules:
    /// - Versions as pkcs7_note_signeddata_version / pkcs7_note_signerinfo_version: SignedData
    ///   version 1 or 3; SignerInfo version 1 (issuer+serial, SignedData version 1) or 3 (SKID,
    ///   SignedData version 3).
    /// - digestAlgorithms is exactly one entry, the signer's digest (the kernel ignores this
    ///   unauthenticated set; we do not, so it cannot be altered).
    /// - No certificates / crls fields at all (not even empty ones), exactly one SignerInfo.
    /// - Algorithm parameters absent or NULL (the kernel and OpenSSL ignore RSA parameters).
    /// - DER throughout: the caller checked it before OpenSSL parsed the message
    ///   (`boundedEncodingProblem`), and this walk relies on it.
    static func signedDataShapeProblem(_ cms: UnsafeRawBufferPointer, digest: DigestAlgorithm) -> String? {
        // DER, not BER, throughout: OpenSSL's decoder (and the kernel's asn1_ber_decoder()) read
        // non-minimal lengths such as `02 81 01 01`, which would give one accepted message many
        // encodings. Every element, at every depth, must use the minimal length form: checked
        // once, before OpenSSL parsed the message (`boundedEncodingProblem`, its caller's step 2).
        guard let ci = element(in: cms, at: 0), ci.tag == 0x30, ci.whole.upperBound == cms.count,
              let type = element(in: cms, at: ci.contents.lowerBound), type.tag == 0x06,
              let explicit = element(in: cms, at: type.whole.upperBound), explicit.tag == 0xa0,
              explicit.whole.upperBound == ci.contents.upperBound,
              let sd = element(in: cms, at: explicit.contents.lowerBound), sd.tag == 0x30,
              sd.whole.upperBound == explicit.contents.upperBound
        else { return "ContentInfo is not DER SEQUENCE { OID, [0] SignedData }" }

        guard let sdVersionElement = element(in: cms, at: sd.contents.lowerBound), sdVersionElement.tag == 0x02,
              sdVersionElement.contents.count == 1, [1, 3].contains(cms[sdVersionElement.contents.lowerBound])
        else { return "SignedData version must be 1 or 3" }
        let sdVersion = cms[sdVersionElement.contents.lowerBound]

        guard let set = element(in: cms, at: sdVersionElement.whole.upperBound), set.tag == 0x31,
              let alg = element(in: cms, at: set.contents.lowerBound), alg.whole.upperBound == set.contents.upperBound,
              algorithmIdentifier(cms, alg, is: oidContents(digest))
        else { return "SignedData.digestAlgorithms is not exactly the signer's \(digest)" }

        guard let encap = element(in: cms, at: set.whole.upperBound), encap.tag == 0x30 else {
            return "SignedData has no EncapsulatedContentInfo"
        }
        guard let signerInfos = element(in: cms, at: encap.whole.upperBound), signerInfos.tag == 0x31 else {
            return "SignedData has certificates/crls fields or no signerInfos"
        }
        guard signerInfos.whole.upperBound == sd.contents.upperBound else { return "data after SignedData.signerInfos" }
        guard let si = element(in: cms, at: signerInfos.contents.lowerBound), si.tag == 0x30,
              si.whole.upperBound == signerInfos.contents.upperBound
        else { return "signerInfos is not exactly one SignerInfo" }

        guard let siVersionElement = element(in: cms, at: si.contents.lowerBound), siVersionElement.tag == 0x02,
              siVersionElement.contents.count == 1
        else { return "SignerInfo version is not a one-byte INTEGER" }
        let siVersion = cms[siVersionElement.contents.lowerBound]
        guard let sid = element(in: cms, at: siVersionElement.whole.upperBound) else { return "SignerInfo has no sid" }
        switch (siVersion, sid.tag) {
        case (1, 0x30) where sdVersion == 1: break  // issuerAndSerialNumber, PKCS#7 / CMS v1
        case (3, 0x80) where sdVersion == 3: break  // [0] subjectKeyIdentifier, CMS v3
        default:
            return "SignerInfo version \(siVersion) with SignedData version \(sdVersion) and this signer identifier form is not accepted"
        }
        guard let digestAlg = element(in: cms, at: sid.whole.upperBound), algorithmIdentifier(cms, digestAlg, is: oidContents(digest)) else {
            return "SignerInfo.digestAlgorithm is not a plain \(digest) AlgorithmIdentifier"
        }
        guard let sigAlg = element(in: cms, at: digestAlg.whole.upperBound), sigAlg.tag == 0x30,
              algorithmIdentifier(cms, sigAlg, is: nil)
        else { return "SignerInfo.signatureAlgorithm is absent or has parameters" }
        guard let signature = element(in: cms, at: sigAlg.whole.upperBound), signature.tag == 0x04,
              signature.whole.upperBound == si.contents.upperBound
        else { return "SignerInfo does not end with its signature OCTET STRING" }
        return nil
    }

    /// Every element in `range` has a minimal definite length (short form below 128, else the
    /// fewest long-form octets with no leading zero), and a constructed element's contents are
    /// exactly a sequence of such elements. Depth-bounded (a module signature nests ~8 deep).
    /// At most `elements` elements in all (counted down; false past it).
    static func isMinimalDER(_ b: UnsafeRawBufferPointer, _ range: Range<Int>, depth: Int, elements: inout Int) -> Bool {
        guard depth < 32 else { return false }
        var at = range.lowerBound
        while at < range.upperBound {
            guard elements > 0, let e = element(in: b, at: at), e.whole.upperBound <= range.upperBound else { return false }
            elements -= 1
            let headerLength = e.contents.lowerBound - e.whole.lowerBound
            let length = e.contents.count
            let minimalHeader = length < 0x80 ? 2 : 2 + (Int.bitWidth - length.leadingZeroBitCount + 7) / 8
            guard headerLength == minimalHeader else { return false }
            if e.tag & 0x20 != 0, !isMinimalDER(b, e.contents, depth: depth + 1, elements: &elements) { return false }
            at = e.whole.upperBound
        }
        return true
    }

    /// Most DER elements a module signature may hold before OpenSSL parses it. sign-file's
    /// message has about 30 (one SignerInfo, no certificates); one embedded certificate adds
    /// ~100–200 (refused later as `sig.embedded-certificates`, naming the count, as before).
    static let maximumSignatureElements = 4_096

    /// Bounds OpenSSL's work before it allocates (`d2i_CMS_ContentInfo` builds a structure per
    /// element: a million one-field SignerInfos in a 20 MB signature took 377 MB of the service
    /// before the signer count refused them, round 14): the signature must be DER (minimal
    /// lengths, elements tiling their parents, 32 levels at most) with at most
    /// `maximumSignatureElements` elements. Linear in the signature, allocates nothing. The
    /// kernel's own decoder (asn1_ber_decoder() with pkcs7.asn1's actions) keeps one signer
    /// structure per SignerInfo too; ExecGate accepts exactly one SignerInfo and no
    /// certificates (below), so no message it would accept comes near the bound.
    static func boundedEncodingProblem(_ cms: UnsafeRawBufferPointer) -> String? {
        var elements = maximumSignatureElements
        guard isMinimalDER(cms, 0..<cms.count, depth: 0, elements: &elements) else {
            return elements == 0
                ? "more than \(maximumSignatureElements) DER elements (a module signature has about 30): refused before it is parsed"
                : "not DER: an element's length is not in its minimal form, the elements do not tile their parent, or they nest deeper than 32 levels"
        }
        return nil
    }

    /// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }` with the
    /// parameters absent or NULL, and (if `oid` is given) exactly that OID.
    private static func algorithmIdentifier(_ b: UnsafeRawBufferPointer, _ e: Element, is oid: [UInt8]?) -> Bool {
        guard e.tag == 0x30, let o = element(in: b, at: e.contents.lowerBound), o.tag == 0x06, !o.contents.isEmpty,
              o.whole.upperBound <= e.contents.upperBound
        else { return false }
        if let oid, !b[o.contents].elementsEqual(oid) { return false }
        if o.whole.upperBound == e.contents.upperBound { return true }
        guard let p = element(in: b, at: o.whole.upperBound), p.tag == 0x05, p.contents.isEmpty,
              p.whole.upperBound == e.contents.upperBound
        else { return false }
        return true
    }
}
