// SPDX-License-Identifier: Apache-2.0
//
// Options shared by several commands, and the rendering of verdicts for humans and machines.

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost
import ExecGatePolicy
import ExecGateSignature
import ExecGateWire
import Logging

/// Trust anchors and deny lists given on the command line (the built-in policy's inputs).
struct TrustOptions: ParsableArguments {
    @Option(name: .customLong("trust"), help: ArgumentHelp("A trusted certificate (PEM or DER; may hold several). Repeatable.", valueName: "CERT"))
    var trust: [String] = []

    @Option(name: .customLong("deny-cert"), help: ArgumentHelp("Refuse a signer certificate by SHA-256 of its TBSCertificate (the kernel's tbs: entries).", valueName: "HEX"))
    var denyCertificates: [String] = []

    @Option(name: .customLong("deny-module-hash"), help: ArgumentHelp("Refuse a module by SHA-256 of its content before the signature.", valueName: "HEX"))
    var denyModuleHashes: [String] = []

    @Option(name: .customLong("deny-name"), help: ArgumentHelp("Refuse a module by its signed name ('-' and '_' alike; [A-Za-z0-9._-], at most 55 bytes), as the policy's 'deny module-name'.", valueName: "NAME"))
    var denyNames: [String] = []

    @Flag(name: .customLong("signature-only"), help: "Opt out of byte judgement: a request that claims no executable byte is judged on signature and structure only, and its verdict says so (default: end state required).")
    var signatureOnly = false

    func validate() throws {
        for h in denyCertificates + denyModuleHashes where Digest(algorithm: .sha256, hex: h) == nil {
            throw ValidationError("'\(h)' is not a SHA-256 digest (64 hex digits)")
        }
        // The policy language's rule for `deny module-name` (docs/policy.md): a name no module can
        // have would be a deny rule that never matches.
        for n in denyNames {
            let b = Array(n.utf8)
            let nameBytes = b.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
            guard (1...PolicyLimits.maximumModuleNameLength).contains(b.count), nameBytes else {
                throw ValidationError("--deny-name '\(n)': a module name is 1 to \(PolicyLimits.maximumModuleNameLength) bytes of letters, digits, '.', '_' and '-' (struct module's name); no module has this one")
            }
        }
    }

    func loadAnchors() throws -> [Certificate] { try CertificateFiles.loadAnchors(trust) }

    /// The built-in policy's inputs, into a service configuration.
    func apply(to c: inout ServiceConfiguration) {
        c.trustAnchorFiles = trust
        if signatureOnly { c.builtInEndState = .signatureOnly }
        c.denyList = DenyList(certificateTBSHashes: Set(denyCertificates.compactMap { Digest(algorithm: .sha256, hex: $0) }),
                              moduleContentHashes: Set(denyModuleHashes.compactMap { Digest(algorithm: .sha256, hex: $0) }))
        c.deniedModuleNames = Set(denyNames)
    }

    /// The built-in policy over these anchors and deny lists (the policy `serve` boots with).
    func builtInPolicy() throws -> Policy {
        var c = ServiceConfiguration(listen: [], serverName: ExecGateVersion.string, logger: Logger(label: "execgate"))
        apply(to: &c)
        return try c.loadBootPolicy().policy
    }
}

extension Verdict {
    var json: JSON {
        .object([
            ("decision", .string(decision == .allow ? "allow" : "deny")),
            ("reason", .string(reason.name)),
            ("reason_code", .uint(UInt64(reason.rawValue))),
            ("message", .string(message)),
            ("checks", .array(checks.map { .string($0) })),
            ("policy_id", .string(policyID)),
            ("policy_version", .uint(policyVersion)),
            ("audit_only", .bool(auditOnly)),
            ("signature_only", .bool(signatureOnly)),
            ("module", .string(moduleName)),
            ("module_sha256", .string(Hex.encode(moduleDigest))),
            ("request_sha256", .string(Hex.encode(requestDigest))),
        ])
    }

    /// One line for a human: `ALLOW vsock: …` / `DENY vsock: sig.bad-signature: …`. Every word of
    /// it is the verifier's (a server's reply, or a module's name for itself): control characters
    /// escaped (TerminalText), so the line is one line and shows what it says.
    var humanLine: String {
        let name = moduleName.isEmpty ? "module" : TerminalText.escaped(moduleName)
        let tail = "[policy \(TerminalText.escaped(policyID)) v\(policyVersion); checks: \(TerminalText.escaped(checks.joined(separator: ",")))]"
        switch decision {
        case .allow: return "\(auditOnly ? "ALLOW (audit: enforce would deny)" : "ALLOW") \(name): \(TerminalText.escaped(message)) \(tail)"
        case .deny: return "DENY \(name): \(TerminalText.escaped(reason.name)): \(TerminalText.escaped(message)) \(tail)"
        }
    }
}

/// register-guest's `kernel_digest` (docs/protocol.md, tag 3): the SHA-256 of the kernel image the
/// guest boots, which a policy's `kernel … symbols …` pins are checked against. One reading for
/// `policy test --kernel` and `request register-guest --kernel`.
func kernelImageDigest(_ path: String) throws -> [UInt8] {
    try LocalFile.read(path).withUnsafeBytes { Digest.sha256($0).bytes }
}
