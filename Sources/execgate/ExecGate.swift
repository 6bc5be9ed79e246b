// SPDX-License-Identifier: Apache-2.0
//
// `execgate`: one binary, many subcommands. It is also the service VM's /init (see ServiceVM/).
// This target only parses arguments and calls into the libraries.

import ExecGateCommandLine
import ExecGateHost

@main
struct ExecGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "execgate",
        abstract: "Decide whether code may become executable in a protected guest.",
        subcommands: ExecGate.allSubcommands
    )

    /// Every subcommand, one file each under Commands/. Register new ones here.
    static let allSubcommands: [ParsableCommand.Type] = [
        ServeCommand.self,
        RequestCommand.self,
        VerifyCommand.self,
        BenchCommand.self,
        SignCommand.self,
        KeysCommand.self,
        VersionCommand.self,
        ExplainCommand.self,
        ImageCommand.self, VMCommand.self, InitCommand.self,
        PolicyCommand.self,
        CaptureCommand.self,
        VsockBackendCommand.self, VsockBenchCommand.self,
    ]
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the ExecGate version.")
    func run() throws { print(ExecGateVersion.string) }
}
