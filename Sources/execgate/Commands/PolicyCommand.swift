// SPDX-License-Identifier: Apache-2.0
//
// `execgate policy check|sign|push|show|test`: policies as signed data (docs/policy.md).
// Argument parsing and printing only; the work is in ExecGatePolicy and ExecGateAdmin.

import _ExecGateInternals
import CExecGateSys
import ExecGateClient
import ExecGateCommandLine
import ExecGateAdmin
import ExecGateCapture
import ExecGateHost
import ExecGatePolicy
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire

#if canImport(Glibc)
import Glibc
#endif

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Write, sign, push, show and dry-run verifier policies.",
        subcommands: [PolicyCheck.self, PolicySign.self, PolicyPushCommand.self, PolicyShowCommand.self, PolicyTest.self, PolicyAudit.self]
    )
}

/// Loads a policy file for offline use: a policy text, or a bundle (whose signature is checked when
/// an admin certificate is given).
enum PolicyFiles {
    /// What was established about a file's signature.
    enum Signature: String {
        /// A bundle whose admin signature was verified against --admin-cert.
        case verified
        /// A bundle read without --admin-cert: its policy parsed, its signature never looked at.
        case notChecked = "not-checked"
        /// A policy text: no signature to check (the admin port refuses it).
        case none
    }

    /// Whether a policy text (already parsed: valid) has a `trust kernel-builtin` line, whose
    /// anchors the parser adds only when it is given them (PolicyParser.parse's builtinAnchors).
    static func usesKernelBuiltin(_ text: [UInt8]) -> Bool {
        text.split(separator: UInt8(ascii: "\n")).contains { line in
            let code = line.prefix { $0 != UInt8(ascii: "#") }
            let words = code.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") })
            return words.count == 2 && words[0].elementsEqual("trust".utf8) && words[1].elementsEqual("kernel-builtin".utf8)
        }
    }

    /// A connection to the admin port at `address`; a failure says why in the operator's words
    /// (`No such file or directory (errno 2)`), not NIO's call names.
    static func connectAdmin(_ address: String) async throws -> AdminClient {
        let endpoint = try Endpoint(parsing: address, listening: false)
        do { return try await AdminClient.connect(to: endpoint) } catch {
            throw LocalFileError(path: address, why: "cannot connect: \(ConnectionFailure.describe(error))")
        }
    }

    static func load(_ path: String, builtinAnchors: [Certificate]?, adminCert: String?) throws -> Policy {
        try loadChecked(path, builtinAnchors: builtinAnchors, adminCert: adminCert).policy
    }

    static func loadChecked(_ path: String, builtinAnchors: [Certificate]?, adminCert: String?) throws
        -> (policy: Policy, signature: Signature, signer: String?, kernelBuiltin: Bool) {
        let bytes = try LocalFile.readPolicy(path)
        if bytes.starts(with: PolicyBundle.magic) {
            if let adminCert {
                let admin = try CertificateFiles.loadOne(adminCert)
                do {
                    let p = try PolicyBundle.open(bytes, admin: admin, file: path, builtinAnchors: builtinAnchors)
                    return (p, .verified, admin.subject, usesKernelBuiltin(try PolicyBundle.split(bytes).policy))
                } catch {
                    throw error.naming(path)
                }
            }
            let parts: PolicyBundle.Parts
            do { parts = try PolicyBundle.split(bytes) } catch { throw error.naming(path) }
            return (try PolicyParser.parse(parts.policy, file: path, builtinAnchors: builtinAnchors), .notChecked, nil, usesKernelBuiltin(parts.policy))
        }
        // A signature to verify was asked for, and a text carries none (the admin port refuses it).
        if adminCert != nil { throw LocalFileError(path: path, why: "a policy text, not a signed bundle: nothing to verify against --admin-cert") }
        return (try PolicyParser.parse(bytes, file: path, builtinAnchors: builtinAnchors), .none, nil, usesKernelBuiltin(bytes))
    }

    /// The summary's last part: what was checked of the signature.
    static func signatureLine(_ s: Signature, signer: String?) -> String {
        switch s {
        case .verified: return "bundle signature verified against \(signer.map(TerminalText.escaped) ?? "the admin certificate")"
        case .notChecked: return "bundle signature not checked (no --admin-cert): anyone may have signed it, or no one"
        case .none: return "policy text, unsigned (the admin port takes only a signed bundle)"
        }
    }

    static func summary(_ p: Policy) -> String {
        "policy \(p.id) v\(p.version): mode \(p.mode.rawValue), \(p.trust.anchors.count) trust anchor(s), minimum \(p.minimumDigest.name), end-state \(p.endState.rawValue), audit-overflow \(p.auditOverflow.rawValue); "
            + PolicySummary.rules(p).joined(separator: "; ")
    }
}

struct PolicyCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Parse a policy (or bundle) and print what it says. Exit 0 valid, 2 invalid (FILE:LINE:COLUMN on stderr)."
    )
    @Argument(help: "The policy text or bundle.") var file: String
    @Option(name: .customLong("trust"), help: ArgumentHelp("What 'trust kernel-builtin' stands for (PEM/DER). Repeatable.", valueName: "CERT"))
    var trust: [String] = []
    @Option(help: ArgumentHelp("Also verify a bundle's signature against this admin certificate (FILE must then be a signed bundle).", valueName: "CERT")) var adminCert: String?
    @Flag(help: "Print one JSON object (an error too: {\"valid\": false, \"error\": …}).") var json = false

    func run() throws {
        do {
            let anchors = trust.isEmpty ? nil : try CertificateFiles.loadAnchors(trust)
            let (p, signature, signer, kernelBuiltin) = try PolicyFiles.loadChecked(file, builtinAnchors: anchors, adminCert: adminCert)
            // 'trust kernel-builtin' stands for --trust's certificates; without them it added none.
            let builtin = !kernelBuiltin ? "unused" : anchors == nil ? "not-resolved" : "resolved"
            if json {
                print(JSON.object([
                    ("valid", .bool(true)), ("file", .string(file)), ("signature", .string(signature.rawValue)),
                    ("signer", .optionalString(signer)), ("policy_id", .string(p.id)), ("policy_version", .uint(p.version)),
                    ("mode", .string(p.mode.rawValue)), ("trust_anchors", .uint(UInt64(p.trust.anchors.count))), ("kernel_builtin", .string(builtin)),
                    ("minimum_digest", .string(p.minimumDigest.name)), ("end_state", .string(p.endState.rawValue)),
                    ("audit_overflow", .string(p.auditOverflow.rawValue)), ("rules", .array(PolicySummary.rules(p).map { .string($0) })),
                    // Everything else the policy says, so a machine reading the check sees all of it.
                    ("denied_certificates", .array(p.denyList.certificateTBSHashes.map(\.description).sorted().map { .string($0) })),
                    ("denied_modules", .array(p.denyList.moduleContentHashes.map(\.description).sorted().map { .string($0) })),
                    ("denied_module_names", .array(p.deniedModuleNames.sorted().map { .string($0) })),
                    ("pinned_modules", .array(p.pinnedModules.map(\.description).sorted().map { .string($0) })),
                    ("kernels", .array(p.trustedKernels.map { .object([("kernel", .string($0.kernel.description)), ("symbols", .string($0.symbols.description))]) })),
                ]).serialized())
            } else {
                let unresolved = builtin == "not-resolved"
                    ? "; trust kernel-builtin not resolved (no --trust): the anchors above exclude the guest kernel's own certificates, which the service adds" : ""
                print(PolicyFiles.summary(p) + unresolved + "; " + PolicyFiles.signatureLine(signature, signer: signer))
            }
        } catch {
            if json { print(JSON.object([("valid", .bool(false)), ("file", .string(file)), ("error", .string("\(error)"))]).serialized()) }
            Console.error("execgate policy check: \(error)")
            throw ExecGateExit.usage
        }
    }
}

struct PolicySign: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign a policy with the admin key into a bundle (docs/policy.md, \"Bundles\").",
        discussion: "The policy is parsed first: an invalid policy is never signed. Exit 0 signed, 2 otherwise."
    )
    @Option(help: ArgumentHelp("Admin private key (PEM, unencrypted).", valueName: "KEY.pem")) var key: String
    @Option(help: ArgumentHelp("Admin certificate (the service's /etc/execgate/admin.pem).", valueName: "CERT.pem")) var cert: String
    @Argument(help: "The policy text.") var policy: String
    @Option(name: [.short, .customLong("output")], help: "Where to write the bundle (default: POLICY.bundle).") var output: String?

    func validate() throws {
        guard output != "" else { throw ValidationError(emptyOutputPath("-o/--output")) }
    }

    func run() throws {
        let out = output ?? policy + ".bundle"
        do {
            let text = try LocalFile.readPolicy(policy)
            if text.starts(with: PolicyBundle.magic) {
                throw LocalFileError(path: policy, why: "already a signed bundle: sign the policy text it was made from")
            }
            let parsed = try PolicyParser.parse(text, file: policy, builtinAnchors: nil)
            let privateKey: PrivateKey
            do { privateKey = try PrivateKey(pem: try LocalFile.readCredential(key)) } catch let e as LocalFileError { throw e } catch {
                throw LocalFileError(path: key, why: "\(error)")
            }
            let signer = try ModuleSigner(key: privateKey, certificate: try CertificateFiles.loadOne(cert), digest: .sha256)
            try PolicyBundle.checkAdminIsNoAnchor(parsed, admin: signer.certificate)
            let bundle = try PolicyBundle.seal(policy: text, signer: signer)
            try LocalFile.writeAtomically(out, bundle)
            let t = TerminalText.escaped  // the signer's certificate's words, the operator's file name
            print("signed \(parsed.id) v\(parsed.version) -> \(t(out)) (\(bundle.count) bytes, signer \(t(signer.certificate.subject)))")
        } catch {
            Console.error("execgate policy sign: \(error)")
            throw ExecGateExit.usage
        }
    }
}

struct PolicyPushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Send a signed bundle to a running verifier's admin port.",
        discussion: "Exit 0 activated, 1 refused by the verifier's admin port (reason on stderr), 2 usage error, unreachable, no admin port at ADDR (an error reply: not activated, --json says \"activated\": false), or no verdict (no reply, or one that does not decode: whether the bundle was activated is unknown; --json says \"activated\": null). With --json, once the bundle was sent, one object whatever the outcome."
    )
    @Argument(help: "The bundle (execgate policy sign).") var bundle: String
    @Option(help: ArgumentHelp("The admin port: unix:PATH, vsock:CID:PORT or hybrid:SOCKET:PORT.", valueName: "ADDR")) var connect: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let endpoint: Endpoint
        let bytes: [UInt8]
        do {
            endpoint = try Endpoint(parsing: connect, listening: false)
            bytes = try LocalFile.readPolicy(bundle)
        } catch {
            // Nothing sent: a usage or input error, the reason on stderr only (as every command's).
            Console.error("execgate policy push: \(error)")
            throw ExecGateExit.usage
        }
        let client: AdminClient
        do { client = try await AdminClient.connect(to: endpoint) } catch {
            Console.error("execgate policy push: cannot connect to \(endpoint): \(ConnectionFailure.describe(error))")
            throw ExecGateExit.usage
        }
        let r: PolicyPushReply
        do { r = try await client.push(bundle: bytes) } catch {
            await client.close()
            // Exit 1 only for the admin port's judgement (README: "the policy in force then
            // stays"). Another `error` reply (a VMM port's unknown-message-type, overload) is an
            // answer too: nothing was activated. No reply, or one that does not decode, is no
            // verdict: the sidecar may have activated the bundle or not (exit 2, "activated": null;
            // `policy show` tells).
            if let e = error as? AdminClientError, case .server = e {
                fail(activated: .bool(false), e.description)
                throw e.isRefusal ? ExecGateExit.deny : ExecGateExit.usage
            }
            fail(activated: .null, "no verdict: \(error)")
            throw ExecGateExit.usage
        }
        await client.close()
        if json {
            print(JSON.object([("activated", .bool(true)), ("policy_id", .string(r.policyID)), ("policy_version", .uint(r.policyVersion)),
                               ("previous_id", .string(r.previousID)), ("previous_version", .uint(r.previousVersion))]).serialized())
        } else {
            print("activated \(TerminalText.escaped(r.policyID)) v\(r.policyVersion) (was \(TerminalText.escaped(r.previousID)) v\(r.previousVersion))")
        }
    }

    /// The reason on stderr and, with --json, one object on stdout: `activated` false (an error
    /// reply: refused) or null (sent, but no verdict came back).
    func fail(activated: JSON, _ reason: String) {
        if json { print(JSON.object([("activated", activated), ("reason", .string(reason))]).serialized()) }
        Console.error("execgate policy push: \(reason)")
    }
}

struct PolicyShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show the policy in force on a running verifier (admin port).")
    @Option(help: ArgumentHelp("The admin port: unix:PATH, vsock:CID:PORT or hybrid:SOCKET:PORT.", valueName: "ADDR")) var connect: String
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Also print the policy text.") var source = false

    func run() async throws {
        do {
            let client = try await PolicyFiles.connectAdmin(connect)
            let r: PolicyShowReply
            do { r = try await client.show() } catch { await client.close(); throw error }
            await client.close()
            if json {
                print(PolicySummary.json(r).serialized())
            } else {
                // The admin port's words, escaped (TerminalText): one line each, shown as sent;
                // the source keeps its lines.
                let t = TerminalText.escaped
                print("policy \(t(r.policyID)) v\(r.policyVersion) (\(t(r.activatedBy))), mode \(t(r.mode)), minimum \(t(r.minimumDigest)), end-state \(t(r.endState))")
                print("audit: overflow \(t(r.auditOverflow)), \(r.auditAccepted) recorded, \(r.auditDropped) dropped, \(r.auditQueued) waiting for the sink"
                      + (r.refusedPushes > 0 ? "; \(r.refusedPushes) policy push(es) refused since start" : ""))
                if r.auditWriteErrors > 0 || !r.auditSinkError.isEmpty {
                    print("audit sink: \(r.auditWriteErrors) failed write(s), retried (records stay queued until written)" + (r.auditSinkError.isEmpty ? "" : "; failing now: \(t(r.auditSinkError))"))
                }
                for a in r.anchors { print("trust \(t(a))") }
                for rule in r.rules { print("rule \(t(rule))") }
                if !r.sourceSHA256.isEmpty { print("source sha256:\(Hex.encode(r.sourceSHA256))") }
                if source { print(TerminalText.escapedLines(r.source)) }
            }
        } catch {
            Console.error("execgate policy show: \(error)")
            throw ExecGateExit.usage
        }
    }
}

struct PolicyTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Dry run: what each module of a captured boot would get under a policy.",
        discussion: """
            Replays CAPTURE_DIR (register-guest, then authorize-module per module in load order) \
            through the same Verifier the service runs, built with the given policy. Nothing is \
            activated anywhere. A registration the service would refuse is reported instead \
            (`REFUSED register-guest …`, with --json one object with "registered": false) and no \
            module is judged: the service answers every request of an unregistered guest \
            unknown-guest. A capture holds no kernel digest: under a policy with `kernel … \
            symbols …` pins, --kernel (the image the guest boots) is required, its SHA-256 the \
            registration's kernel_digest. Exit 0 if every module would be allowed, 1 if any would \
            be denied or the policy refuses the guest's kernel (untrusted-kernel), 2 on invalid \
            input (a registration refused for the capture's facts included, and kernel pins \
            without --kernel).
            """
    )
    @Option(help: ArgumentHelp("The policy text or bundle.", valueName: "FILE")) var policy: String
    @Argument(help: "One boot's capture directory.") var captureDir: String
    @Option(name: .customLong("trust"), help: ArgumentHelp("What 'trust kernel-builtin' stands for (PEM/DER). Repeatable.", valueName: "CERT"))
    var trust: [String] = []
    @Option(help: "Guest id to judge as (selects per-guest and per-class rules).") var guest: String = "capture"
    @Option(help: ArgumentHelp("The kernel image the captured guest boots: its SHA-256 is sent as register-guest's kernel_digest, which a policy's `kernel … symbols …` pins are checked against (required under such pins: a capture holds no kernel digest).", valueName: "VMLINUZ"))
    var kernel: String?
    @Flag(help: "One JSON object per module, then a summary object (a refused registration: one object).") var json = false
    @Option(help: ArgumentHelp("Also verify a bundle's signature against this admin certificate (--policy must then be a signed bundle); without it a bundle's signature is not checked, and a note on stderr says so.", valueName: "CERT")) var adminCert: String?

    func validate() throws {
        // register-guest's guest_id is non-empty (docs/protocol.md); an authorize-module with an
        // empty one names no guest at all.
        guard !guest.isEmpty else { throw ValidationError("--guest: a guest id is non-empty (register-guest refuses an empty guest_id)") }
        guard kernel != "" else { throw ValidationError("--kernel: an empty path names no kernel image") }
    }

    func run() throws {
        let p: Policy
        let boot: CaptureBoot
        var kernelDigest: [UInt8] = []
        do {
            let loaded = try PolicyFiles.loadChecked(policy, builtinAnchors: try CertificateFiles.loadAnchors(trust), adminCert: adminCert)
            p = loaded.policy
            // A dry run of a bundle nobody verified says so: the sidecar would refuse one its
            // admin key did not sign, whatever this run prints.
            if loaded.signature == .notChecked { Console.error("execgate policy test: note: \(PolicyFiles.signatureLine(loaded.signature, signer: nil))") }
            // The registration's kernel_digest: the image's SHA-256 (docs/protocol.md,
            // register-guest tag 3). Without it a pin is judged against no digest at all, which
            // says nothing of the capture's kernel: no result, a usage error.
            if let kernel {
                kernelDigest = try kernelImageDigest(kernel)
            } else if !p.trustedKernels.isEmpty {
                throw LocalFileError(path: policy, why: "policy \(p.id) v\(p.version) pins \(p.trustedKernels.count) kernel build(s) (kernel … symbols …), and a capture holds no kernel digest: give --kernel VMLINUZ, the image the guest boots, whose SHA-256 register-guest sends as kernel_digest, so the pin is judged (docs/policy.md, \"Dry run\")")
            }
            boot = try CaptureBoot.load(captureDir)
        } catch {
            Console.error("execgate policy test: \(error)")
            throw ExecGateExit.usage
        }
        let verifier = Verifier(policy: p, serverName: ExecGateVersion.string)
        var allowed = 0, denied = 0, auditOnly = 0
        // What the replayed registration carried: a `kernel … symbols …` pin names these two.
        var digests: [(String, JSON)] = []
        do {
            var reg = try boot.registration(guestID: guest)
            reg.kernelDigest = kernelDigest
            digests = [("kernel_digest", kernelDigest.isEmpty ? .null : .string("sha256:" + Hex.encode(kernelDigest))),
                       ("symbols_digest", .string("sha256:" + Hex.encode(KernelFactsKey.symbolsDigest(reg))))]
            // As the VMM would: a refused registration leaves no guest, whose every request the
            // service answers unknown-guest (Verifier.respond): no module is judged.
            if case .error(let e) = verifier.respond(to: .registerGuest(reg), requestDigest: []) {
                try Self.reportRefusedRegistration(e, policy: p, guest: guest, json: json, digests: digests)
            }
            // Every module the load order names: one the capture lacks is invalid input (exit 2),
            // never skipped (a capture holding none of its modules passed "0 allowed, 0 denied").
            for name in boot.loadOrder {
                let m = try boot.module(name)
                let v = verifier.authorize(m.request(guestID: guest), requestDigest: [])
                if v.decision == .allow { allowed += 1 } else { denied += 1 }
                if v.auditOnly { auditOnly += 1 }
                print(json ? v.json.serialized() : v.humanLine)
            }
        } catch let e as ExitCode {
            throw e  // reportRefusedRegistration's, its result printed
        } catch {
            Console.error("execgate policy test: \(error)")
            throw ExecGateExit.usage
        }
        if json {
            print(JSON.object([("policy_id", .string(p.id)), ("policy_version", .uint(p.version)), ("guest", .string(guest)),
                               ("allowed", .uint(UInt64(allowed))), ("denied", .uint(UInt64(denied))), ("audit_only", .uint(UInt64(auditOnly)))] + digests).serialized())
        } else {
            print("policy \(p.id) v\(p.version) for guest \(TerminalText.escaped(guest)): \(allowed) allowed (\(auditOnly) audit-only), \(denied) denied")
        }
        if denied > 0 { throw ExecGateExit.deny }
    }

    /// A register-guest refusal: the policy's own (`untrusted-kernel`: its `kernel … symbols …`
    /// pins leave this build out) is this guest's outcome, printed as the result, exit 1; any
    /// other is the capture's facts refused, invalid input (exit 2, the reason on stderr).
    static func reportRefusedRegistration(_ e: ErrorReply, policy p: Policy, guest: String, json: Bool, digests: [(String, JSON)]) throws -> Never {
        guard e.code == .untrustedKernel else {
            throw LocalFileError(path: "register-guest '\(guest)'", why: "refused: \(e.code): \(e.message)")
        }
        if json {
            print(JSON.object([("policy_id", .string(p.id)), ("policy_version", .uint(p.version)), ("guest", .string(guest)),
                               ("registered", .bool(false)), ("error", .string("\(e.code)")), ("message", .string(e.message))] + digests).serialized())
        } else {
            print("REFUSED register-guest \(TerminalText.escaped(guest)): \(e.code): \(TerminalText.escaped(e.message)) [policy \(p.id) v\(p.version)]")
            print("policy \(p.id) v\(p.version) for guest \(TerminalText.escaped(guest)): registration refused, no module judged (every request of the guest: unknown-guest)")
        }
        throw ExecGateExit.deny
    }
}

struct PolicyAudit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Carry audit records out of a running verifier (admin port audit-read): JSON lines on stdout.",
        discussion: """
            Prints every retained record after --after (default: all), oldest first, one JSON line \
            each. With --follow, keeps polling for new records until interrupted. A note on stderr \
            reports records dropped under audit-overflow drop, and records no longer retained.
            """
    )
    @Option(help: ArgumentHelp("The admin port: unix:PATH, vsock:CID:PORT or hybrid:SOCKET:PORT.", valueName: "ADDR")) var connect: String
    /// A JSON object with no raw character a reader takes for a line break (C0 controls, U+0085,
    /// U+2028, U+2029: inside a JSON string they must be escaped anyway or are invalid).
    static func isOneJSONLine(_ record: String) -> Bool {
        guard !record.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x85 || $0.value == 0x2028 || $0.value == 0x2029 }),
              let v = try? JSONReader.parse(Array(record.utf8)), v.objectMembers != nil else { return false }
        return true
    }

    /// `record` (one JSON object, `isOneJSONLine`) with every character a terminal acts on
    /// (TerminalText.isControl: DEL, the C1 controls, the bidirectional formatting characters; C0
    /// and the line separators are refused before) written as its `\uXXXX` escape. Such a
    /// character can only stand inside a JSON string (anywhere else the record is no JSON), where
    /// the escape is the same string to every JSON reader: the record stays exact, and a VMM's or
    /// a hostile server's words never reach the operator's terminal raw.
    static func terminalSafe(_ record: String) -> String {
        guard record.unicodeScalars.contains(where: TerminalText.isControl) else { return record }
        var out = String.UnicodeScalarView()
        for u in record.unicodeScalars {
            guard TerminalText.isControl(u) else { out.append(u); continue }
            out.append(contentsOf: "\\u\(Hex.number(u.value, width: 4))".unicodeScalars)
        }
        return String(out)
    }

    @Option(help: "Only records with a sequence number greater than this. A number past the service log's last record (a cursor from before a restart, or a guess) reads the log from its first record.") var after: UInt64 = 0
    @Option(help: ArgumentHelp("The log --after's number belongs to (its first_seq, which this command's resume hints name): when the service's log is another one (it restarted), reading starts at that log's first record.", valueName: "FIRST_SEQ")) var log: UInt64?
    @Flag(help: "Keep polling for new records (every 0.5 s).") var follow = false

    /// `--after C [--log F]`: where to resume.
    static func resume(_ cursor: UInt64, _ log: UInt64?) -> String { "--after \(cursor)" + (log.map { " --log \($0)" } ?? "") }

    func run() async throws {
        do {
            let client = try await PolicyFiles.connectAdmin(connect)
            var cursor = after
            var reportedDrops: UInt64 = 0
            // One rewind a run, to a restarted log's first record (by `--log` or by a cursor past
            // the log): the next pages are that log's, and a server asking for a second would
            // have this loop print its records for ever.
            var rewound = false
            var knownLog = log
            while true {
                let page: AuditReadReply
                do { page = try await client.auditRead(afterSeq: cursor, maxRecords: UInt32(AuditLimits.maximumRecordsPerRead)) } catch {
                    await client.close()
                    // (A restarted service, under --follow: its records are numbered above every
                    // earlier one, so resuming at the cursor misses none of them.)
                    throw LocalFileError(path: connect, why: "\(error); every record up to \(cursor) was printed: resume with \(PolicyAudit.resume(cursor, knownLog))")
                }
                // Numbers below `first_seq` were never this log's: a cursor there is from before a
                // restart (the service numbers from its clock, so the new log's records all follow
                // it and none is missed). Records max(cursor+1, first) … oldest-1 were this log's
                // and evicted. Compared without adding: `--after` is any u64 (cursor + 1 trapped
                // at 2⁶⁴−1), and a server without a log answers oldest 0.
                let first = max(1, page.firstSeq)  // the peer's number: 0 would wrap below
                // The cursor's log (--log, a resume hint's) is not this one: the service restarted.
                // A cursor from the earlier log may lie inside this one's numbers (its clock set
                // back), where it would skip records: ask again from this log's first record.
                if let known = knownLog, known != first, cursor > first - 1, !rewound {
                    Console.error("execgate policy audit: the service's log is not the one --after \(cursor) was read from (\(known)): it restarted; reading its log from the first record, \(first)")
                    knownLog = first
                    cursor = first - 1
                    rewound = true
                    continue
                }
                knownLog = first
                // A cursor past every record of the log reads from its first (AuditLog.read): a
                // log numbered below the cursor, after a restart with the clock set back (or a
                // guessed cursor). A second such page is refused below like any page that does not
                // move the cursor.
                if !rewound && !page.records.isEmpty && page.nextSeq > 0 && page.nextSeq - 1 <= cursor && page.nextSeq - 1 > first - 1 && first - 1 < cursor {
                    Console.error("execgate policy audit: --after \(cursor) is past the log's last record (a cursor from before a restart, or a guess): reading the log from its first record, \(first)")
                    cursor = first - 1
                    rewound = true
                }
                if cursor != 0 && cursor < first - 1 {
                    Console.error("execgate policy audit: --after \(cursor) is below the log's first record, \(first): if the service restarted, records of the earlier log after \(cursor) that were not carried out are only in its --audit file")
                }
                // Records are numbered from here in this page's messages: the cursor, or the
                // log's start when the cursor lies below it (another log's number).
                let firstAsked = max(cursor, first - 1)
                if page.oldestSeq > 0 && firstAsked < page.oldestSeq - 1 {
                    Console.error("execgate policy audit: records \(firstAsked + 1)...\(page.oldestSeq - 1) are no longer retained (see the --audit file)")
                }
                // The service's pages (AuditLog.read) set `more` only with records (this command asks
                // for 10,000; a page asked with max_records 0 has none and may set it), and `next_seq`
                // one past the last record sent. A page that does neither would have this loop ask again
                // forever (printing the same records again): refused before any of it is printed.
                guard page.records.isEmpty || (page.nextSeq > 0 && page.nextSeq - 1 > cursor) else {
                    await client.close()
                    throw LocalFileError(path: connect, why: "audit-read reply with \(page.records.count) record(s) after \(cursor) gives next_seq \(page.nextSeq), not past them; nothing of it printed")
                }
                guard !page.more || !page.records.isEmpty else {
                    await client.close()
                    throw LocalFileError(path: connect, why: "audit-read reply says more records follow \(cursor) but holds none (next_seq \(page.nextSeq)); nothing of it printed")
                }
                for (i, r) in page.records.enumerated() {
                    // One JSON object per line, as the service writes them (docs/policy.md, "Audit":
                    // line breaks in a record's words are escaped): anything else from the admin
                    // port would split or forge lines in the trail carried out.
                    guard PolicyAudit.isOneJSONLine(r) else {
                        await client.close()
                        throw LocalFileError(path: connect, why: "audit record \(firstAsked &+ UInt64(i) &+ 1) (record \(i + 1) of this page) is not one JSON object on one line; nothing of it printed")
                    }
                    print(PolicyAudit.terminalSafe(r))
                }
                // Written before the cursor moves past them: a page that could not be written
                // (a full disk) ends the command, never skipped (the trail carried out would have
                // a gap). Its records may be partly written: resuming after the cursor repeats
                // them, never loses one.
                if !page.records.isEmpty && (fflush(stdout) != 0 || ferror(stdout) != 0) {
                    let why = String(cString: strerror(errno))
                    // Said once, here: what is left in the buffer is not written again at exit.
                    execgate_stdout_discard()
                    await client.close()
                    throw LocalFileError(path: "standard output", why: "cannot write audit records \(firstAsked &+ 1)...\(firstAsked &+ UInt64(page.records.count)) (\(why)); they may be partly written: resume with \(PolicyAudit.resume(cursor, knownLog))")
                }
                if page.dropped > reportedDrops {
                    Console.error("execgate policy audit: \(page.dropped) record(s) dropped under audit-overflow drop")
                    reportedDrops = page.dropped
                }
                cursor = page.nextSeq &- 1
                if page.more || page.records.count >= AuditLimits.maximumRecordsPerRead { continue }
                guard follow else { break }
                fflush(stdout)
                try await Task.sleep(nanoseconds: 500_000_000)
            }
            await client.close()
        } catch {
            Console.error("execgate policy audit: \(error)")
            throw ExecGateExit.usage
        }
    }
}
