// SPDX-License-Identifier: Apache-2.0
//
// `execgate sign module`: sign a kernel module exactly like the kernel's scripts/sign-file.

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateELF
import ExecGateHost
import ExecGateKernelImage
import ExecGateSignature

struct SignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign code in the formats the kernel checks.",
        subcommands: [SignModule.self]
    )
}

struct SignModule: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "module",
        abstract: "Append a sign-file style PKCS#7 signature to a kernel module.",
        discussion: """
            Produces exactly scripts/sign-file's format: a detached DER CMS SignedData without \
            certificates or signed attributes, then struct module_signature and the magic \
            "~Module signature appended~". A file that is no x86-64 ELF relocatable object is signed too (as sign-file does), with a note on stderr. A compressed module (.ko.gz/.ko.xz/.ko.zst) is refused: the kernel \
            checks the signature of the ELF inside, so sign the .ko, then compress it. Without -o the result goes to FILE.signed; the input is \
            never modified. The output is written to a temporary file and renamed, never half-written; \
            an existing output must be a regular file (a FIFO or device is refused, never replaced).
            Exit status: 0 signed, 2 usage error, unreadable input or signing failure.
            """
    )

    @Option(help: ArgumentHelp("Private key (PEM, unencrypted).", valueName: "KEY.pem")) var key: String
    @Option(help: ArgumentHelp("Certificate of the key (PEM or DER).", valueName: "CERT.pem")) var cert: String
    @Argument(help: "The module (.ko).") var file: String
    @Option(name: [.short, .customLong("output")], help: "Where to write the signed module (default: FILE.signed).")
    var output: String?
    @Option(help: "Digest: sha256 (default), sha384, sha512, sha224 or sha1.") var hash: String = "sha256"
    @Flag(help: "Identify the signer by subjectKeyIdentifier instead of issuer and serial (sign-file -k).")
    var keyid = false
    @Flag(help: "Replace an existing signature instead of refusing to sign a signed module.")
    var replace = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false

    func validate() throws {
        // Usage errors exit 2 with one line on stderr.
        guard output != "" else { throw ValidationError(emptyOutputPath("-o/--output")) }
        guard DigestAlgorithm(name: hash) != nil else {
            throw ValidationError("--hash must be one of sha1, sha224, sha256, sha384, sha512")
        }
    }

    func run() throws {
        let out = output ?? file + ".signed"
        do {
            // validate() accepted the name.
            let digest = DigestAlgorithm(name: hash)!
            let keyBytes = try LocalFile.readCredential(key)
            let certBytes = try LocalFile.readCredential(cert)
            let module = try LocalFile.read(file)
            // The kernel decompresses a compressed module before it checks the signature
            // (kernel/module/decompress.c, then module_sig_check() on the ELF): a signature appended
            // to the compressed stream is checked by nobody, and the file loads nowhere.
            if let enc = module.withUnsafeBytes({ ModuleFile.encoding(of: $0) }), enc != .elf {
                throw LocalFileError(path: file, why: "a \(enc.rawValue)-compressed module: the kernel checks the signature of the ELF inside (module_decompress() before module_sig_check()); decompress it, sign the .ko, then compress the signed file")
            }
            // sign-file signs any file, and so does this (its output is sign-file's, byte for
            // byte); but a file that is no x86-64 ELF relocatable object is one no kernel loads
            // and `verify module` refuses (kernel.unknown-format): said, not silently signed.
            if (try? module.withUnsafeBytes { try ELFFile(bytes: $0) }) == nil {
                Console.error("execgate sign module: note: \(file) is not an x86-64 ELF relocatable object (a kernel module): signed as sign-file would, but no kernel loads it and `verify module` refuses it")
            }
            if digest.name == "sha1" {
                Console.error("execgate sign module: note: the default policy refuses sha1 signatures (sig.digest-too-weak); use sha256 or stronger unless a policy allows sha1")
            }
            let privateKey: PrivateKey
            do { privateKey = try PrivateKey(pem: keyBytes) } catch { throw LocalFileError(path: key, why: "\(error)") }
            let certs: [Certificate]
            do { certs = try Certificate.load(certBytes) } catch { throw LocalFileError(path: cert, why: "\(error)") }
            guard certs.count == 1 else { throw LocalFileError(path: cert, why: "holds \(certs.count) certificates, expected one") }
            let signer = try ModuleSigner(key: privateKey, certificate: certs[0], digest: digest,
                                          identification: keyid ? .subjectKeyIdentifier : .issuerAndSerial)
            let signed: [UInt8]
            do { signed = try signer.sign(module: module, existingSignature: replace ? .replace : .refuse) } catch {
                throw LocalFileError(path: file, why: "\(error)" + (error.code == .alreadySigned ? " (use --replace)" : ""))
            }
            try LocalFile.writeAtomically(out, signed)
            // Report from the bytes just produced, re-parsed (checks our own output).
            let trailer = try ModuleSignatureTrailer.parse(signed)
            if json {
                print(JSON.object([
                    ("output", .string(out)),
                    ("digest", .string(digest.name)),
                    ("signer", .string(certs[0].subject)),
                    ("signer_id", .string(keyid ? "skid" : "issuer-serial")),
                    ("signature_bytes", .uint(UInt64(trailer.signatureLength))),
                    ("content_sha256", .string(
                        signed.withUnsafeBytes { Digest.sha256(UnsafeRawBufferPointer(rebasing: $0[trailer.contentRange])) }.hex)),
                ]).serialized())
            } else {
                // The signer's name is its certificate's words: escaped for the terminal (TerminalText).
                let t = TerminalText.escaped
                print("signed \(t(file)) -> \(t(out)) (\(digest.name), \(trailer.signatureLength)-byte PKCS#7, signer \(t(certs[0].subject)))")
            }
        } catch {
            Console.error("execgate sign module: \(error)")
            throw ExecGateExit.usage
        }
    }
}
