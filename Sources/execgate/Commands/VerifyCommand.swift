// SPDX-License-Identifier: Apache-2.0
import ExecGateCommandLine
import ExecGateHost
import ExecGateVerifier
import ExecGateWire
import NIOCore

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Judge code offline, with the same core the service uses.",
        subcommands: [VerifyModule.self]
    )
}

struct VerifyModule: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "module",
        abstract: "Verify a module's signature (and a claim's structure) without a service.",
        discussion: "Exit status: 0 allow, 1 deny (reason on stderr, or in JSON with --json), 2 usage error or unreadable input."
    )

    @Argument(help: "The signed module (.ko, or .ko.gz/.ko.xz/.ko.zst: decompressed first, as the kernel does).") var file: String
    @OptionGroup var trust: TrustOptions
    @Option(help: "Claim: none, elf, or a capture directory of the module.") var claim: String = "none"
    @Flag(help: "Print the verdict as JSON on stdout.") var json = false

    func run() throws {
        let verifier: Verifier
        let module: [UInt8]
        let sections: [SectionClaim]
        do {
            verifier = Verifier(policy: try trust.builtInPolicy(), serverName: ExecGateVersion.string)
            module = try LocalFile.readModule(file)
            sections = try ClaimSource.sections(claim, module: module)
        } catch {
            Console.error("execgate verify module: \(error)")
            throw ExecGateExit.usage
        }
        let request = AuthorizeModule(module: ByteBuffer(bytes: module), sections: sections)
        // The request digest is the one the service would give this body (Verifier.requestDigest).
        let verdict = verifier.authorize(request, body: Message.authorizeModule(request).encodeBody())
        if json { print(verdict.json.serialized()) } else if verdict.decision == .allow { print(verdict.humanLine) } else { Console.error(verdict.humanLine) }
        if verdict.decision == .deny { throw ExecGateExit.deny }
    }
}
