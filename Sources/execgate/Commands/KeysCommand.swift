// SPDX-License-Identifier: Apache-2.0
//
// `execgate keys extract` (a kernel's builtin trusted certificates) and `execgate keys generate`
// (a signing key + self-signed certificate for one's own modules and for tests).

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost
import ExecGateKernelImage
import ExecGateSignature
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Extract a kernel's trusted certificates or generate a signing key.",
        subcommands: [KeysExtract.self, KeysGenerate.self]
    )
}

/// JSON / text description of one certificate.
func certificateFacts(_ c: Certificate, files: [String]) -> (json: JSON, text: String) {
    let json = JSON.object([
        ("subject", .string(c.subject)),
        ("issuer", .string(c.issuer)),
        ("serial", .string(c.serialHex)),
        ("skid", JSON.optionalString(c.subjectKeyIdentifierHex)),
        ("tbs_sha256", .string(c.tbsHash.hex)),
        ("sha256_fingerprint", .string(c.fingerprint.hex)),
        ("key", .string("\(c.publicKeyAlgorithm.rawValue)-\(c.publicKeyBits)")),
        ("files", .array(files.map { .string($0) })),
    ])
    // A certificate's names are its issuer's words (a kernel image's, a bundle signer's), and
    // file names the operator's: escaped for the terminal (TerminalText); --json gives them exactly.
    let t = TerminalText.escaped
    let text = """
        subject: \(t(c.subject))
          issuer:  \(t(c.issuer))
          serial:  \(c.serialHex)
          skid:    \(c.subjectKeyIdentifierHex ?? "-")
          tbs:     \(c.tbsHash.hex)
          sha256:  \(c.fingerprint.hex)
          key:     \(c.publicKeyAlgorithm.rawValue)-\(c.publicKeyBits)
          files:   \(files.map(t).joined(separator: " "))
        """
    return (json, text)
}

struct KeysExtract: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Write the builtin trusted certificates of a kernel image as DER and PEM.",
        discussion: """
            Reads a bzImage (gzip, xz, lzma, zstd, bzip2 or lz4 payload), a compressed vmlinux \
            stream, or an ELF vmlinux, and finds the DER X.509 certificates of the builtin \
            system_certificate_list. Writes cert-N.der and cert-N.pem into --out (a cert-K file there \
            that this kernel's certificates would not replace is refused: another image's).
            Exit status: 0 success, 2 usage error, unreadable image, no certificate found or such a file.
            """
    )

    @Option(help: ArgumentHelp("Kernel image (vmlinuz, bzImage, vmlinux).", valueName: "VMLINUZ")) var kernel: String
    @Option(help: ArgumentHelp("Directory to write the certificates into (created if missing).", valueName: "DIR")) var out: String
    @Flag(help: "Print the certificates as JSON on stdout.") var json = false

    func validate() throws {
        guard !out.isEmpty else { throw ValidationError(emptyOutputPath("--out")) }
    }

    func run() throws {
        do {
            let bytes = try LocalFile.read(kernel)
            let certs: [Certificate]
            let image: KernelImage
            do {
                image = try KernelImage.load(bytes)
                certs = try image.builtinCertificates()
            } catch {
                throw LocalFileError(path: kernel, why: "\(error)")
            }
            try Self.refuseOtherImagesCertificates(in: out, writing: certs.count)
            try LocalFile.makeDirectories(out)
            var json: [JSON] = []
            var files: [(path: String, bytes: [UInt8], mode: mode_t)] = []
            for (i, c) in certs.enumerated() {
                files.append((out + "/cert-\(i).der", c.der, 0o644))
                files.append((out + "/cert-\(i).pem", Array(c.pem.utf8), 0o644))
            }
            try LocalFile.writeAllAtomically(files)  // every target checked before any is written
            for (i, c) in certs.enumerated() {
                let facts = certificateFacts(c, files: [files[2 * i].path, files[2 * i + 1].path])
                if self.json { json.append(facts.json) } else { print(facts.text) }
            }
            if self.json {
                print(JSON.object([
                    ("kernel", .string(kernel)),
                    ("compression", JSON.optionalString(image.compression?.rawValue)),
                    ("certificates", .array(json)),
                ]).serialized())
            }
        } catch {
            Console.error("execgate keys extract: \(error)")
            throw ExecGateExit.usage
        }
    }
}

extension KeysExtract {
    /// A `cert-K.der`/`cert-K.pem` in `dir` that this extraction (K < `count`) does not replace
    /// was written for another image: left beside this kernel's, `--trust DIR/*.pem` would trust
    /// it. Refused, named, before anything is written (the files are the operator's to remove).
    static func refuseOtherImagesCertificates(in dir: String, writing count: Int) throws {
        guard LocalFile.isDirectory(dir) else { return }
        for name in try LocalFile.list(dir) {
            guard name.hasPrefix("cert-"), name.hasSuffix(".der") || name.hasSuffix(".pem") else { continue }
            let index = name.dropFirst(5).dropLast(4)
            guard !index.isEmpty, index.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            if let k = Int(index), k < count { continue }
            throw LocalFileError(path: dir + "/" + name,
                                 why: "a certificate file this kernel's \(count) certificate(s) would not replace (another image's?): left beside them, --trust \(dir)/*.pem would trust it; remove it or give another --out")
        }
    }
}

struct KeysGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate an RSA signing key and self-signed certificate (key.pem, cert.pem).",
        discussion: """
            The certificate is shaped like the kernel's certs/default_x509.genkey (CA:FALSE, \
            digitalSignature, subjectKeyIdentifier). key.pem is written with mode 0600. Existing \
            files are not overwritten unless --force is given.
            Exit status: 0 success, 2 usage error or write failure.
            """
    )

    @Option(help: ArgumentHelp("Directory to write key.pem and cert.pem into (created if missing).", valueName: "DIR"))
    var out: String
    @Option(help: "Certificate common name (1…64 characters).") var cn: String = "ExecGate module signing key"
    @Option(help: "Key type: rsa (default), ec-p256 or ec-p384.") var type: String = "rsa"
    @Option(help: "RSA modulus size in bits: 2048, 3072 or 4096 (the sizes the kernel verifies with: crypto/rsa.c rsa_check_key_length()).") var bits: Int = 4096
    @Option(help: "Validity in days (notAfter by 9999-12-31).") var days: Int = 36500
    @Flag(help: "Overwrite existing key.pem / cert.pem.") var force = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false

    func validate() throws {
        // Usage errors exit 2 with one line on stderr.
        guard !out.isEmpty else { throw ValidationError(emptyOutputPath("--out")) }
        guard ["rsa", "ec-p256", "ec-p384"].contains(type) else { throw ValidationError("--type must be rsa, ec-p256 or ec-p384") }
        guard [2048, 3072, 4096].contains(bits) else { throw ValidationError("--bits must be 2048, 3072 or 4096: the kernel verifies with no other RSA size of at least 2048 bits (crypto/rsa.c rsa_check_key_length()), so a module signed with it would never load") }
        let most = GeneratedSigningKey.maximumValidityDays()
        guard days > 0 else { throw ValidationError("--days must be positive") }
        guard days <= most else { throw ValidationError("--days must be 1…\(most): the certificate's notAfter must fall by 9999-12-31, the last date X.509 encodes") }
        guard !cn.isEmpty, !cn.utf8.contains(0) else { throw ValidationError("--cn must be a non-empty name") }
        // X.520 ub-common-name (RFC 5280 Appendix A): OpenSSL refuses a longer commonName when the
        // certificate is made, i.e. after the key was generated, with "string too long".
        guard cn.unicodeScalars.count <= 64 else {
            throw ValidationError("--cn is \(cn.unicodeScalars.count) characters: a certificate's common name is at most 64 (X.520 ub-common-name)")
        }
    }

    func run() throws {
        do {
            let keyPath = out + "/key.pem"
            let certPath = out + "/cert.pem"
            for p in [keyPath, certPath] where LocalFile.exists(p) && !force {
                throw LocalFileError(path: p, why: "exists (use --force to overwrite)")
            }
            let generated: GeneratedSigningKey
            switch type {
            case "ec-p256": generated = try GeneratedSigningKey.generateECDSA(curve: .p256, commonName: cn, days: days)
            case "ec-p384": generated = try GeneratedSigningKey.generateECDSA(curve: .p384, commonName: cn, days: days)
            default:
                // A long step says so (RSA-8192 takes tens of seconds, 16384 minutes).
                if bits >= 4096 { Console.error("execgate keys generate: generating an RSA-\(bits) key (a few seconds)…") }
                generated = try GeneratedSigningKey.generateRSA(bits: bits, commonName: cn, days: days)
            }
            try LocalFile.makeDirectories(out)  // only once there is something to write into it
            // Both targets checked before either is replaced (never a new key without its certificate).
            try LocalFile.writeAllAtomically([(keyPath, generated.privateKeyPEM, 0o600), (certPath, generated.certificatePEM, 0o644)])
            let cert = try generated.load().1
            let facts = certificateFacts(cert, files: [keyPath, certPath])
            print(json ? facts.json.serialized() : facts.text)
        } catch {
            Console.error("execgate keys generate: \(error)")
            throw ExecGateExit.usage
        }
    }
}
