// SPDX-License-Identifier: Apache-2.0
//
// `serve --policy FILE --admin-cert CERT --admin-listen ADDR --audit FILE`: the boot policy, the
// admin port and the audit sink (docs/policy.md). Kept apart from ServeCommand.swift so the serve
// command itself only gains a few lines.
//
// Boot policy: `--policy FILE` is a policy text or a signed bundle. A text is trusted because it
// comes from the same place as the binary (the image, the operator's command line); a bundle's
// signature is checked against the admin certificate. Without --policy the built-in policy
// (version 1, from --trust / --deny-*) applies, so any signed policy must be version ≥ 2.

import ArgumentParser
import ExecGateAdmin
import ExecGatePolicy
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire

struct ServePolicyOptions: ParsableArguments {
    /// Where the service VM image puts the admin certificate.
    static let imageAdminCertificate = "/etc/execgate/admin.pem"

    @Option(help: ArgumentHelp("Boot policy: a policy text or a signed bundle (default: the built-in policy).", valueName: "FILE"))
    var policy: String?

    @Option(help: ArgumentHelp("The certificate whose key signs policy bundles (default: \(imageAdminCertificate) if present). Without one, policy push is disabled.", valueName: "CERT"))
    var adminCert: String?

    @Option(help: ArgumentHelp("Admin port: unix:PATH or vsock:PORT (policy push/show, audit-read). Never the VMM port.", valueName: "ADDR"))
    var adminListen: String?

    @Option(help: ArgumentHelp("Append every verdict and policy change to FILE as JSON lines.", valueName: "FILE"))
    var audit: String?

    func validate(trust: TrustOptions) throws {
        if let a = adminListen { _ = try Endpoint(parsing: a, listening: true) }
        if policy != nil && !(trust.denyCertificates.isEmpty && trust.denyModuleHashes.isEmpty && trust.denyNames.isEmpty) {
            throw ValidationError("--deny-* options apply to the built-in policy; with --policy, put deny lines in the policy")
        }
    }

    var adminCertificatePath: String? {
        adminCert ?? (LocalFile.exists(Self.imageAdminCertificate) ? Self.imageAdminCertificate : nil)
    }

    func bootPolicy(trust: TrustOptions) throws -> Policy {
        guard let policy else { return try trust.builtInPolicy() }
        let anchors = try trust.loadAnchors()
        let bytes = try LocalFile.read(policy)
        if bytes.starts(with: PolicyBundle.magic) {
            guard let path = adminCertificatePath else { throw LocalFileError(path: policy, why: "a bundle needs --admin-cert to be verified") }
            return try PolicyBundle.open(bytes, admin: try PolicyFiles.loadOneCertificate(path), file: policy, builtinAnchors: anchors)
        }
        return try PolicyParser.parse(bytes, file: policy, builtinAnchors: anchors)
    }

    /// Audit sink and admin port, as configured.
    func start(verifier: Verifier, trust: TrustOptions) async throws -> ServeAdmin {
        var log: AuditLog? = nil
        if let audit { log = try AuditLog.appending(to: audit) } else if adminListen != nil { log = AuditLog() }
        if let log { verifier.auditSink = log }
        let administrator = PolicyAdministrator(verifier: verifier, adminCertificate: try adminCertificatePath.map(PolicyFiles.loadOneCertificate),
                                                builtinAnchors: try trust.loadAnchors(), audit: log)
        administrator.recordBoot()
        var server: AdminServer? = nil
        if let a = adminListen {
            let s = AdminServer(administrator: administrator)
            do { try await s.bind(try Endpoint(parsing: a, listening: true)) } catch {
                await s.shutdown()
                log?.close()
                throw LocalFileError(path: a, why: "cannot listen: \(error)")
            }
            server = s
        }
        return ServeAdmin(server: server, log: log)
    }
}

struct ServeAdmin {
    let server: AdminServer?
    let log: AuditLog?
    func shutdown() async {
        await server?.shutdown()
        log?.close()
    }
}
