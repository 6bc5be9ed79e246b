// SPDX-License-Identifier: Apache-2.0
//
// Everything the verifier service needs to start, as one value. `execgate serve` fills it from its
// command line; the service VM's PID 1 fills it from what the image holds (GuestService.swift).
// Both then call the one `VerifierService.start(_:)`: nothing is turned back into argv and parsed
// again.
//
// Boot policy (docs/policy.md): `policyFile` is a policy text or a signed bundle. A text is trusted
// because it comes from the same place as the binary (the image, the operator's command line); a
// bundle's signature is checked against the admin certificate. Without a policy file the built-in
// policy (version 1, over the trust anchors and the deny lists) applies, so any signed policy that
// replaces it must be version ≥ 2.
//
// Admin port and audit (docs/policy.md, docs/deployment.md): the admin port is opened only when
// `adminListen` is set; a push is accepted only when signed by the key of `adminCertificateFile`.
// An audit log is kept when `auditFile` is set (appended as JSON lines), or in memory when the
// admin port is open (so `policy audit` can read it).

import ExecGateClient
import ExecGatePolicy
import ExecGateSignature
import ExecGateTransport
import ExecGateWire
import Logging
import NIOCore

public struct ServiceConfiguration: Sendable {
    /// Where the service VM image puts the admin certificate (`image build --admin-cert`).
    public static let imageAdminCertificate = "/etc/execgate/admin.pem"

    /// Addresses the verifier answers wire protocol v1 on (unix:PATH, vsock:PORT).
    public var listen: [Endpoint]
    /// Trusted certificates, PEM or DER files (each may hold several): the built-in policy's
    /// anchors, and what `trust kernel-builtin` stands for in a policy text or bundle.
    public var trustAnchorFiles: [String] = []
    /// Deny lists of the built-in policy. With `policyFile`, deny lines belong in the policy.
    public var denyList: DenyList = .empty
    public var deniedModuleNames: Set<String> = []
    /// The built-in policy's end state: `required` (fail closed), or `signature-only` only by the
    /// operator's explicit opt-in (`--signature-only`). A policy file states its own.
    public var builtInEndState: Policy.EndState = .required
    /// Boot policy: a policy text or a signed bundle; nil = the built-in policy.
    public var policyFile: String?
    /// The certificate whose key signs policy bundles. Nil: no policy push (the boot policy is final).
    public var adminCertificateFile: String?
    /// The admin port (policy push/show, audit-read); never one of `listen`.
    public var adminListen: Endpoint?
    /// Append every verdict and policy change to this file as JSON lines.
    public var auditFile: String?
    /// The VMM port's limits; nil = the defaults (`PortLimits()`). The service VM narrows them to
    /// the memory it has (`MemoryBudget`, GuestService.configuration): admission, not OOM.
    public var portLimits: PortLimits?
    /// Worker threads that judge requests.
    public var threads: Int = System.coreCount
    /// What `hello` answers as the server name.
    public var serverName: String
    public var logger: Logger

    public init(listen: [Endpoint], serverName: String, logger: Logger) {
        self.listen = listen
        self.serverName = serverName
        self.logger = logger
    }

    /// True when the built-in policy's deny lists are set (they conflict with a policy file).
    public var hasBuiltInDenyLists: Bool {
        !denyList.certificateTBSHashes.isEmpty || !denyList.moduleContentHashes.isEmpty || !deniedModuleNames.isEmpty
    }
}

/// Why the service did not start; `description` is the one line the CLI prints after its prefix.
public struct ServiceStartError: Error, CustomStringConvertible {
    public enum Stage: Sendable, Equatable {
        /// The boot policy (or a trust anchor file) could not be read, parsed or verified.
        case bootPolicy
        /// The audit file, the admin certificate or the admin listener failed.
        case admin
        /// A verifier listener could not be bound.
        case listen(Endpoint)
    }
    public let stage: Stage
    public let underlying: Error

    public var description: String {
        switch stage {
        case .bootPolicy, .admin: return "\(underlying)"
        case .listen(let endpoint): return "cannot listen on \(endpoint): \(ConnectionFailure.describe(underlying))"
        }
    }
}
