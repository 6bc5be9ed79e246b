// SPDX-License-Identifier: Apache-2.0
import _ExecGateInternals
import ExecGateCommandLine
import ExecGateCapture
import ExecGateClient
import ExecGateHost
import ExecGateWire
import NIOCore

/// Plays the VMM: sends requests to a running verifier.
struct RequestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "request",
        abstract: "Send a request to a running verifier (plays the VMM).",
        subcommands: [RequestRegisterGuest.self, RequestModule.self, RequestStatus.self, RequestRetireModule.self, RequestInitFreed.self, RequestRemoveGuest.self]
    )
}

struct ConnectOptions: ParsableArguments {
    @Option(name: .customLong("connect"), help: ArgumentHelp("unix:PATH, vsock:CID:PORT or hybrid:SOCKET:PORT", valueName: "ADDR"))
    var connect: String

    @Option(help: "Seconds to wait for a reply.")
    var timeout: Double = 30

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func endpoint() throws -> Endpoint { try Endpoint(parsing: connect, listening: false) }

    /// `--guest`, which names a guest: refused empty (a usage error, exit 2).
    static func requireGuest(_ guest: String, command: String) throws {
        guard !guest.isEmpty else {
            Console.error("execgate request \(command): --guest is empty: name the guest")
            throw ExecGateExit.usage
        }
    }

    /// `--session`: the guest's session token (register-guest-reply tag 5), 0x-hex or decimal;
    /// nil when not given. docs/protocol.md, register-guest "Session tokens".
    static func sessionToken(_ text: String?, command: String) throws -> UInt64? {
        guard let text else { return nil }
        let t = text.hasPrefix("0x") || text.hasPrefix("0X") ? Hex.parseUInt64(text) : UInt64(text)
        guard let t, t != 0 else {
            Console.error("execgate request \(command): --session '\(text)' is not a session token (a nonzero u64, 0x-hex or decimal)")
            throw ExecGateExit.usage
        }
        return t
    }

    /// An address option (`--text-base`, `--init-base`): hex, 0x optional; a usage error naming
    /// the option otherwise.
    static func address(_ text: String, option: String, command: String) throws -> UInt64 {
        guard let a = Hex.parseUInt64(text) else {
            Console.error("execgate request \(command): \(option) '\(text)' is not a hex address")
            throw ExecGateExit.usage
        }
        return a
    }

    func validate() throws {
        _ = try endpoint()
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func client() async throws -> ExecGateClient {
        do { return try await ExecGateClient.connect(to: try endpoint(), timeout: timeout) } catch {
            Console.error("execgate request: cannot connect to \(connect): \(ConnectionFailure.describe(error))")
            throw ExecGateExit.usage
        }
    }

    /// One request on a fresh connection, closed afterwards. A refusal by the server for the
    /// guest's state (`WireErrorCode.isStateRefusal`: unknown module, module in use, unknown guest)
    /// exits 1; any other `error` reply and anything else that went wrong (no answer, transport)
    /// exits 2.
    /// `refusals`: further error codes that are this command's refusals (exit 1) beside the
    /// state refusals every session command has (`WireErrorCode.isStateRefusal`).
    func exchange<Reply>(_ command: String, refusals: Set<WireErrorCode> = [], _ body: (ExecGateClient) async throws -> Reply) async throws -> Reply {
        let client = try await client()
        let outcome: Result<Reply, any Error>
        do { outcome = .success(try await body(client)) } catch { outcome = .failure(error) }
        await client.close()
        do { return try outcome.get() } catch ClientError.server(let e) {
            Console.error("execgate request \(command): \(e.code): \(TerminalText.escaped(e.message))")
            throw e.code.isStateRefusal || refusals.contains(e.code) ? ExecGateExit.deny : ExecGateExit.usage
        } catch {
            Console.error("execgate request \(command): \(error)")
            throw ExecGateExit.usage
        }
    }
}

struct RequestModule: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "module",
        abstract: "Ask whether a module's pages may become executable.",
        discussion: "Exit status: 0 allow, 1 deny, 2 usage error, unreadable input or no answer."
    )

    @Argument(help: "The signed module (.ko, or .ko.gz/.ko.xz/.ko.zst: decompressed first, as the kernel does).") var file: String
    @OptionGroup var connection: ConnectOptions
    @Option(help: "Claim: none, elf, a module's directory of a capture (BOOT/MODULE: its loaded end state, as `policy test` sends it; register the guest with `request register-guest --capture BOOT` first), or a directory of text/<addr>_<section>.bin files.")
    var claim: String = "elf"
    @Option(help: "Registered guest id the pages belong to (empty: no guest).")
    var guest: String = ""
    @Option(help: ArgumentHelp("The guest's session token, as its register-guest-reply named it (0x-hex or decimal): the request is judged in that session.", valueName: "TOKEN"))
    var session: String?

    func run() async throws {
        let token = try ConnectOptions.sessionToken(session, command: "module")
        if token != nil && guest.isEmpty {
            Console.error("execgate request module: --session names a session of a guest: give --guest")
            throw ExecGateExit.usage
        }
        let request: AuthorizeModule
        do {
            request = try ClaimSource.request(claim, module: try LocalFile.readModule(file), guestID: guest, session: token)
        } catch {
            Console.error("execgate request module: \(error)")
            throw ExecGateExit.usage
        }
        let client = try await connection.client()
        let verdict: Verdict
        do {
            verdict = try await client.authorize(request)
        } catch {
            Console.error("execgate request module: \(error)")
            await client.close()
            throw ExecGateExit.usage
        }
        await client.close()
        if connection.json { print(verdict.json.serialized()) } else {
            print(verdict.humanLine)
        }
        if verdict.decision == .deny { throw ExecGateExit.deny }
    }
}

struct RequestStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Ask a verifier for its health and counters.")
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let client = try await connection.client()
        let s: StatusReply
        do { s = try await client.status() } catch {
            Console.error("execgate request status: \(error)")
            await client.close()
            throw ExecGateExit.usage
        }
        await client.close()
        if connection.json {
            print(JSON.object([
                ("server", .string(s.serverName)), ("state", .string(s.state)), ("uptime_ms", .uint(s.uptimeMilliseconds)),
                ("requests", .uint(s.requestsServed)), ("guests", .uint(UInt64(s.guests))),
                ("policy_id", .string(s.policyID)), ("policy_version", .uint(s.policyVersion)),
            ]).serialized())
        } else {
            // The server's words, escaped (TerminalText): a line of ours, whatever they hold.
            let t = TerminalText.escaped
            print("\(t(s.state)): \(t(s.serverName)), policy \(t(s.policyID)) v\(s.policyVersion), \(s.requestsServed) requests, \(s.guests) guest(s), up \(s.uptimeMilliseconds) ms")
        }
    }
}

struct RequestRetireModule: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retire-module",
        abstract: "Report a module unloaded (EXEC on its pages already revoked): the verifier forgets its ranges, sites and exports.",
        discussion: "Exit status: 0 retired, 1 refused (unknown module, module in use, unknown guest), 2 usage error or no answer."
    )
    @Argument(help: "The module's name, as in its verdict.") var name: String
    @OptionGroup var connection: ConnectOptions
    @Option(help: "Registered guest id.") var guest: String
    @Option(name: .customLong("text-base"), help: "The live module's text_base (hex, 0x…).") var textBase: String
    @Option(help: ArgumentHelp("The guest's session token, as its register-guest-reply named it (0x-hex or decimal).", valueName: "TOKEN"))
    var session: String?

    func run() async throws {
        let base = try ConnectOptions.address(textBase, option: "--text-base", command: "retire-module")
        let token = try ConnectOptions.sessionToken(session, command: "retire-module")
        let r = try await connection.exchange("retire-module") {
            try await $0.retireModule(RetireModule(guestID: guest, moduleName: name, textBase: base, session: token))
        }
        if connection.json {
            print(JSON.object([("guest", .string(r.guestID)), ("module", .string(r.moduleName)),
                               ("sites_removed", .uint(UInt64(r.sitesRemoved))), ("exports_removed", .uint(UInt64(r.exportsRemoved)))]).serialized())
        } else {
            print("retired \(TerminalText.escaped(r.moduleName)) in \(TerminalText.escaped(r.guestID)): \(r.sitesRemoved) patch site(s), \(r.exportsRemoved) export(s) forgotten")
        }
    }
}

struct RequestInitFreed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-freed",
        abstract: "Report a module's init memory freed (EXEC on it already revoked).",
        discussion: "Exit status: 0 recorded, 1 refused, 2 usage error or no answer."
    )
    @Argument(help: "The module's name, as in its verdict.") var name: String
    @OptionGroup var connection: ConnectOptions
    @Option(help: "Registered guest id.") var guest: String
    @Option(name: .customLong("init-base"), help: "Start of the module's init text, as its authorize-module claimed it (hex, 0x…): names the load whose init memory was freed.")
    var initBase: String
    @Option(help: ArgumentHelp("The guest's session token, as its register-guest-reply named it (0x-hex or decimal).", valueName: "TOKEN"))
    var session: String?

    func run() async throws {
        let base = try ConnectOptions.address(initBase, option: "--init-base", command: "init-freed")
        let token = try ConnectOptions.sessionToken(session, command: "init-freed")
        let r = try await connection.exchange("init-freed") {
            try await $0.moduleInitFreed(ModuleInitFreed(guestID: guest, moduleName: name, initBase: base, session: token))
        }
        print(connection.json ? JSON.object([("guest", .string(r.guestID)), ("module", .string(r.moduleName)), ("init_base", .string("0x" + Hex.number(r.initBase)))]).serialized()
                              : "init text of \(TerminalText.escaped(r.moduleName)) at 0x\(Hex.number(r.initBase)) in \(TerminalText.escaped(r.guestID)) no longer live")
    }
}

struct RequestRemoveGuest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove-guest",
        abstract: "Report a guest gone (destroyed, every EXEC grant revoked): the verifier forgets it and frees its slot and charge.",
        discussion: "Exit status: 0 removed, 1 refused (unknown guest, or its session was already replaced), 2 usage error, an error reply to a bad request (a session token not issued to the guest), or no answer."
    )
    @OptionGroup var connection: ConnectOptions
    @Option(help: "Registered guest id.") var guest: String
    @Option(help: ArgumentHelp("The guest's session token, as its register-guest-reply named it (0x-hex or decimal): only that session is removed.", valueName: "TOKEN"))
    var session: String?

    func run() async throws {
        try ConnectOptions.requireGuest(guest, command: "remove-guest")
        let token = try ConnectOptions.sessionToken(session, command: "remove-guest")
        let r = try await connection.exchange("remove-guest") {
            try await $0.removeGuest(RemoveGuest(guestID: guest, session: token))
        }
        if connection.json {
            print(JSON.object([("guest", .string(r.guestID)), ("modules_removed", .uint(UInt64(r.modulesRemoved))),
                               ("build_released", .bool(r.buildReleased == 1))]).serialized())
        } else {
            print("removed \(TerminalText.escaped(r.guestID)): \(r.modulesRemoved) live module(s) forgotten; its kernel build's facts \(r.buildReleased == 1 ? "released" : "still held for other guests")")
        }
    }
}

struct RequestRegisterGuest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register-guest",
        abstract: "Register a guest with the facts of a captured boot (plays the VMM at the trusted point): prints its session token.",
        discussion: "The facts are the boot directory's (kallsyms, CPU words, pv_ops, command line, …: docs/capture.md), sent in full as docs/protocol.md's register-guest, with --kernel's SHA-256 as kernel_digest (a policy pinning kernel builds refuses a registration without it). Then `request module FILE --claim BOOT/MODULE --guest ID` sends a loaded module's end state. A reset names the session it replaces with --session (the token the guest's last register-guest-reply printed): refused when it names a session another reset already replaced, or none of the guest's (docs/protocol.md, \"A reset names the session it replaces\"). Exit status: 0 registered, 1 refused (guest exists, implausible facts, untrusted kernel, unavailable, unknown guest), 2 usage error, unreadable capture, an error reply to a bad request (a reset naming a session another reset already replaced, or a token not issued to the guest) or no answer."
    )
    @OptionGroup var connection: ConnectOptions
    @Option(help: "Guest id to register.") var guest: String
    @Option(help: ArgumentHelp("A boot directory of a capture (execgate capture; the corpus layout).", valueName: "BOOT")) var capture: String
    @Flag(help: "Replace the guest's session (the VMM revoked every grant of it first: the guest rebooted).") var reset = false
    @Flag(name: .customLong("require-session"), help: "Refuse this guest's requests that carry no session token.") var requireSession = false
    @Option(help: ArgumentHelp("With --reset: the token of the session the reset replaces, as its register-guest-reply named it (0x-hex or decimal); the reset is refused when it names a session another reset already replaced, or none of the guest's.", valueName: "TOKEN"))
    var session: String?
    @Option(help: ArgumentHelp("The kernel image the captured guest boots: its SHA-256 is sent as kernel_digest, which a policy's `kernel … symbols …` pins are checked against (as `policy test --kernel`; a capture holds no kernel digest).", valueName: "VMLINUZ"))
    var kernel: String?

    func run() async throws {
        try ConnectOptions.requireGuest(guest, command: "register-guest")
        let token = try ConnectOptions.sessionToken(session, command: "register-guest")
        guard token == nil || reset else {
            Console.error("execgate request register-guest: --session names the session a reset replaces: give --reset")
            throw ExecGateExit.usage
        }
        var r: RegisterGuest
        do { r = try CaptureBoot.load(capture).registration(guestID: guest) } catch {
            Console.error("execgate request register-guest: \(capture): \(error)")
            throw ExecGateExit.usage
        }
        if let kernel {
            do { r.kernelDigest = try kernelImageDigest(kernel) } catch {
                Console.error("execgate request register-guest: \(error)")
                throw ExecGateExit.usage
            }
        }
        r.reset = reset
        r.requireSession = requireSession
        r.session = token
        let reply = try await connection.exchange("register-guest", refusals: [.guestExists, .implausibleFacts, .untrustedKernel, .unavailable, .unknownGuest]) {
            try await $0.register(r)
        }
        let issued = reply.session.map { "0x" + String($0, radix: 16) }
        if connection.json {
            print(JSON.object([("guest", .string(reply.guestID)), ("session", issued.map { .string($0) } ?? .null),
                               ("symbol_count", .uint(UInt64(reply.symbolCount))), ("symbols_digest", .string(Hex.encode(reply.symbolsDigest))),
                               ("facts_digest", .string(Hex.encode(reply.factsDigest)))]).serialized())
        } else {
            print("registered \(TerminalText.escaped(reply.guestID)): session \(issued ?? "(none)"), \(reply.symbolCount) symbols, symbols digest \(Hex.encode(reply.symbolsDigest))")
        }
    }
}
