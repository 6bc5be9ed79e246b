// SPDX-License-Identifier: Apache-2.0
import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost
import ExecGateWire
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the verifier service.",
        discussion: """
        Listens on each --listen address (unix:PATH, vsock:PORT) and answers wire protocol v1 \
        (docs/protocol.md). Stops gracefully on SIGTERM, SIGINT, SIGHUP or SIGQUIT: no new connections, requests in \
        flight finish, then exit 0. Policies (docs/policy.md): --policy sets the boot policy; \
        --admin-listen opens the separate admin port, where only bundles signed by the --admin-cert \
        key can replace it; --audit records every verdict and policy change as JSON lines.
        """
    )

    @Option(name: .customLong("listen"), help: ArgumentHelp("Address to serve: unix:PATH or vsock:PORT. Repeatable.", valueName: "ADDR"))
    var listen: [String] = []

    @OptionGroup var trust: TrustOptions

    @Option(help: "Log format: text or json (one JSON object per line).")
    var logFormat: String = "text"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Worker threads that judge requests, 1…256 (the default is one per core: this machine's count is shown).")
    var threads: Int = System.coreCount

    @OptionGroup var policyOptions: ServePolicyOptions

    func validate() throws {
        guard !listen.isEmpty else { throw ValidationError("give at least one --listen address (unix:PATH or vsock:PORT)") }
        for l in listen { _ = try Endpoint(parsing: l, listening: true) }
        // The same path twice would make one port unreachable (the lock in SocketPath also refuses it).
        guard Set(listen).count == listen.count else { throw ValidationError("the same --listen address is given twice") }
        if let a = policyOptions.adminListen, listen.contains(a) {
            throw ValidationError("--admin-listen \(a) is also a --listen address: the admin port needs its own socket")
        }
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level '\(logLevel)'") }
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be 1...256") }
        try policyOptions.validate(trust: trust)
    }

    func run() async throws {
        var c = ServiceConfiguration(listen: try listen.map { try Endpoint(parsing: $0, listening: true) }, serverName: ExecGateVersion.string,
                                     logger: VerifierService.makeLogger(format: logFormat, level: Logger.Level(rawValue: logLevel) ?? .info))
        c.threads = threads
        trust.apply(to: &c)
        try policyOptions.apply(to: &c)
        // Caught before anything binds: a stop while the service starts ends it gracefully.
        let stop: TerminationSignals
        do { stop = try TerminationSignals() } catch {
            Console.error("execgate serve: \(error)")
            throw ExecGateExit.usage
        }
        let service: VerifierService
        do { service = try await VerifierService.start(c) } catch {
            Console.error("execgate serve: \(error)")
            throw ExecGateExit.usage
        }
        let policy = service.bootPolicy
        for endpoint in service.listening {
            print("execgate: listening on \(endpoint) (policy \(policy.id) v\(policy.version), \(policy.trust.anchors.count) trust anchor(s))")
        }
        if let a = policyOptions.adminListen {
            // Without an admin certificate the port shows and reads, and refuses every push
            // (`admin.push-disabled`): say so where the operator looks first.
            print(c.adminCertificateFile != nil ? "execgate: admin port on \(a) (policy push/show, audit-read)"
                                                : "execgate: admin port on \(a) (policy show, audit-read; push disabled: no --admin-cert)")
        }
        if let first = listen.first, first.hasPrefix("unix:") {
            print("execgate: try   execgate request status --connect \(first)")
            print("execgate: then  execgate request register-guest --capture BOOT --guest ID --connect \(first)")
            print("execgate: and   execgate request module BOOT/M/M.ko --claim BOOT/M --guest ID --connect \(first)   (each module of BOOT/load-order.txt, in that order)")
        }
        fflush(stdout)
        await stop.wait()
        c.logger.info("signal received: shutting down")
        let unwritten = await service.shutdown()
        if unwritten > 0 { c.logger.error("\(unwritten) audit record(s) accepted but never written to the audit file: the sink did not take them before shutdown (they were readable through audit-read until now)") }
    }
}
