// SPDX-License-Identifier: Apache-2.0
//
// `serve --policy FILE --admin-cert CERT --admin-listen ADDR --audit FILE`: the boot policy, the
// admin port and the audit sink (docs/policy.md). Parsing only: what they mean is
// `ServiceConfiguration` / `VerifierService.start` (ExecGateHost).

import ExecGateCommandLine
import ExecGateHost
import ExecGateWire

struct ServePolicyOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Boot policy: a policy text or a signed bundle (default: the built-in policy).", valueName: "FILE"))
    var policy: String?

    @Option(help: ArgumentHelp("The certificate whose key signs policy bundles (default: \(ServiceConfiguration.imageAdminCertificate) if present). Without one, policy push is disabled.", valueName: "CERT"))
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
        // The built-in policy's end state (ServiceConfiguration.builtInEndState); a policy file
        // states its own (`end-state required|signature-only`): never dropped silently.
        if policy != nil && trust.signatureOnly {
            throw ValidationError("--signature-only applies to the built-in policy; with --policy, the policy's 'end-state' line decides (end-state signature-only)")
        }
    }

    func apply(to c: inout ServiceConfiguration) throws {
        c.policyFile = policy
        c.adminCertificateFile = adminCert ?? (LocalFile.exists(ServiceConfiguration.imageAdminCertificate) ? ServiceConfiguration.imageAdminCertificate : nil)
        c.adminListen = try adminListen.map { try Endpoint(parsing: $0, listening: true) }
        c.auditFile = audit
    }
}
