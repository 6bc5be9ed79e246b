// SPDX-License-Identifier: Apache-2.0
//
// The one way the verifier service starts, on a host (`execgate serve`) and in the service VM
// (PID 1). Order, and what each step owns on failure:
//
//   1. trust anchors + boot policy       (nothing to undo)
//   2. Verifier, VerifierServer          (server threads)
//   3. audit log, PolicyAdministrator, admin listener (docs/policy.md), on the server's event loops
//   4. each verifier listener, in the order given
//
// A failure at any step shuts down what the earlier steps started, then throws a
// `ServiceStartError` naming the step.

import _ExecGateInternals
import Dispatch
import ExecGateAdmin
import ExecGateClient
import ExecGatePolicy
import ExecGateService
import ExecGateSignature
import ExecGateTransport
import ExecGateVerifier
import ExecGateWire
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public final class VerifierService: Sendable {
    /// The policy in force at boot (a push may replace it later; `verifier` has the current one).
    public let bootPolicy: Policy
    public let verifier: Verifier
    /// The verifier listeners, bound.
    public let listening: [Endpoint]
    /// The admin listener, when one is open.
    public let adminListening: Endpoint?
    /// How long each step of `start` took, in milliseconds, e.g. "boot policy 60, server 20, admin 31,
    /// listen 4" (PID 1 logs it: ServiceVM/README.md, "Where the time goes").
    public let startSteps: String
    private let server: VerifierServer
    private let admin: AdminServer?
    private let audit: AuditLog?

    private init(bootPolicy: Policy, verifier: Verifier, listening: [Endpoint], adminListening: Endpoint?,
                 server: VerifierServer, admin: AdminServer?, audit: AuditLog?, startSteps: String) {
        self.startSteps = startSteps
        self.bootPolicy = bootPolicy
        self.verifier = verifier
        self.listening = listening
        self.adminListening = adminListening
        self.server = server
        self.admin = admin
        self.audit = audit
    }

    /// Starts the verifier as configured and returns once every listener is bound.
    ///
    /// - Throws: `ServiceStartError` (`.bootPolicy`, `.admin`, `.listen(endpoint)`).
    public static func start(_ c: ServiceConfiguration) async throws -> VerifierService {
        var steps: [String] = []
        var t = MonotonicClock.nanoseconds()
        func step(_ name: String) {
            let now = MonotonicClock.nanoseconds()
            steps.append("\(name) \((now - t) / 1_000_000)")
            t = now
        }
        let anchors: [Certificate]
        let policy: Policy
        do { (policy, anchors) = try c.loadBootPolicy() } catch {
            throw ServiceStartError(stage: .bootPolicy, underlying: error)
        }
        if policy.trust.anchors.isEmpty {
            c.logger.warning("no trust anchors: every module will be denied (give --trust CERT)")
        }
        step("boot policy")
        // The facts budget follows the memory when the port's limits were derived from it
        // (MemoryBudget.limits: the service VM); otherwise the registry's fixed default.
        let factsBudget = min(GuestRegistry.defaultMaximumSymbolBytes, c.portLimits?.factsBudget ?? GuestRegistry.defaultMaximumSymbolBytes)
        let verifier = Verifier(policy: policy, serverName: c.serverName, guests: GuestRegistry(maximumSymbolBytes: factsBudget))
        let server = VerifierServer(responder: verifier, logger: c.logger, threads: c.threads, configuration: c.portLimits)
        step("server")

        // Audit sink and admin port.
        var audit: AuditLog? = nil
        var admin: AdminServer? = nil
        do {
            // Numbered from the clock: numbers keep increasing across restarts (AuditLog.startOfNumbering).
            let first = AuditLog.startOfNumbering()
            if let file = c.auditFile {
                audit = try AuditLog.appending(to: file, firstSequenceNumber: first)
            } else if c.adminListen != nil {
                audit = AuditLog(firstSequenceNumber: first)
            }
            if let audit { verifier.auditSink = audit }
            let adminCertificate = try c.adminCertificateFile.map(CertificateFiles.loadOne)
            // The key that signs policies must not sign modules (deployment.md, "The admin key"):
            // one that is both could push a policy trusting whatever it signs next.
            if let a = adminCertificate, let file = c.adminCertificateFile,
               PolicyBundle.adminAnchor(in: anchors + policy.trust.anchors, admin: a) != nil {
                throw LocalFileError(path: file, why: "the admin key is also a module trust anchor (a --trust or boot-policy certificate carries it): the key that signs policies must never sign modules; generate a separate admin key")
            }
            let administrator = PolicyAdministrator(verifier: verifier, adminCertificate: adminCertificate,
                                                    builtinAnchors: anchors, audit: audit)
            administrator.recordBoot()
            step("administrator")
            if let endpoint = c.adminListen {
                // The verifier server's loops: no threads of its own (AdminServer.swift, "Event loops").
                let s = AdminServer(administrator: administrator, group: server.eventLoopGroup)
                admin = s
                do { try await s.bind(endpoint) } catch {
                    throw LocalFileError(path: endpoint.description, why: "cannot listen: \(ConnectionFailure.describe(error))")
                }
            }
        } catch {
            await admin?.shutdown()
            audit?.close()
            await server.shutdown()
            throw ServiceStartError(stage: .admin, underlying: error)
        }
        if admin != nil { step("admin port") }

        for endpoint in c.listen {
            do { try await server.bind(endpoint) } catch {
                await admin?.shutdown()  // before the server: it runs on the server's loops
                await server.shutdown()
                audit?.close()
                throw ServiceStartError(stage: .listen(endpoint), underlying: error)
            }
        }
        step("listen")
        return VerifierService(bootPolicy: policy, verifier: verifier, listening: c.listen, adminListening: c.adminListen,
                               server: server, admin: admin, audit: audit, startSteps: steps.joined(separator: ", "))
    }

    /// Stops accepting, lets requests in flight finish (bounded), closes the admin port and
    /// flushes the audit log. Returns the audit records the sink never took whole (it stalled or
    /// refused past the flush's bound): lost at exit, for the caller to report.
    @discardableResult
    public func shutdown() async -> Int {
        // Verdicts waiting for audit-queue room (audit-overflow block, a stalled sink) are denied
        // now: waiting up to 5 s each they outlived the event loops that must answer them.
        audit?.refuseWaits()
        await admin?.shutdown()  // before the server, which shuts down the loops the admin port runs on
        await server.shutdown()
        return audit?.close() ?? 0
    }

    /// A logger for the service: text (swift-log's stream format, control characters in request
    /// words escaped: `TextLogHandler`) or one JSON object per line.
    public static func makeLogger(format: String, level: Logger.Level) -> Logger {
        var logger = format == "json" ? Logger(label: "execgate", factory: { JSONLogHandler(label: $0) })
                                      : Logger(label: "execgate", factory: { TextLogHandler(label: $0) })
        logger.logLevel = level
        return logger
    }
}

extension ServiceConfiguration {
    /// Reads the trust anchors and chooses the boot policy: the policy file (text, or a bundle verified against the admin
    /// certificate), or the built-in policy over the anchors and deny lists.
    public func loadBootPolicy() throws -> (policy: Policy, anchors: [Certificate]) {
        let c = self
        let anchors = try CertificateFiles.loadAnchors(c.trustAnchorFiles)
        guard let file = c.policyFile else {
            var p = Policy.builtIn(trust: TrustStore(anchors))
            p.denyList = c.denyList
            p.deniedModuleNames = Set(c.deniedModuleNames.map(Policy.canonicalModuleName))
            p.endState = c.builtInEndState
            return (p, anchors)
        }
        let bytes = try LocalFile.readPolicy(file)
        if bytes.starts(with: PolicyBundle.magic) {
            guard let admin = c.adminCertificateFile else { throw LocalFileError(path: file, why: "a bundle needs --admin-cert to be verified") }
            let adminCert = try CertificateFiles.loadOne(admin)
            do { return (try PolicyBundle.open(bytes, admin: adminCert, file: file, builtinAnchors: anchors), anchors) } catch {
                throw error.naming(file)
            }
        }
        return (try PolicyParser.parse(bytes, file: file, builtinAnchors: anchors), anchors)
    }
}

extension PolicyBundleError {
    /// The error a reader of the bundle file `path` reports: framing and signature refusals led by
    /// the path (errors name the bad input); a policy refusal already says `path:LINE:COLUMN`.
    public func naming(_ path: String) -> any Error {
        code == .policy ? self : LocalFileError(path: path, why: description)
    }
}

extension LocalFile {
    /// A policy text or bundle file, read no further than the largest bundle
    /// (PolicyBundle.maximumFileSize): a larger file is neither, and is refused unread.
    public static func readPolicy(_ path: String) throws -> [UInt8] {
        do { return try read(path, limit: PolicyBundle.maximumFileSize) } catch let e as LocalFileError where e.why.hasPrefix("larger than") {
            throw LocalFileError(path: path, why: "larger than \(PolicyBundle.maximumFileSize) bytes: no policy text (at most \(PolicyLimits.maximumSize)) or signed bundle is")
        }
    }
}

/// Certificates from files, with errors that name the file.
public enum CertificateFiles {
    /// Every certificate in every file (PEM or DER; a file may hold several). A certificate whose
    /// key the guest kernel cannot verify with (`Certificate.kernelKeyProblem`) is refused, naming
    /// the file: trusted, it would allow modules the kernel refuses.
    public static func loadAnchors(_ paths: [String]) throws -> [Certificate] {
        var out: [Certificate] = []
        for p in paths {
            let certs: [Certificate]
            do { certs = try Certificate.load(try LocalFile.readCredential(p)) } catch let e as LocalFileError { throw e } catch {
                throw LocalFileError(path: p, why: "\(error)")
            }
            if let (i, problem) = certs.enumerated().lazy.compactMap({ c in c.element.kernelKeyProblem.map { (c.offset, $0) } }).first {
                throw LocalFileError(path: p, why: "\(certs.count > 1 ? "certificate \(i + 1) holds" : "holds") \(problem): as an anchor it would allow modules the guest kernel refuses")
            }
            out += certs
        }
        return out
    }

    /// Exactly one certificate (an admin certificate, a signer).
    public static func loadOne(_ path: String) throws -> Certificate {
        let certs: [Certificate]
        do { certs = try Certificate.load(try LocalFile.readCredential(path)) } catch let e as LocalFileError { throw e } catch {
            throw LocalFileError(path: path, why: "\(error)")
        }
        guard certs.count == 1 else { throw LocalFileError(path: path, why: "holds \(certs.count) certificates, expected one") }
        return certs[0]
    }
}

/// The version string `execgate version` prints and the service answers `hello` with.
public enum ExecGateVersion {
    public static let string = "execgate 0.1.0 (wire protocol v1)"
}
