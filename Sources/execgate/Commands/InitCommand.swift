// SPDX-License-Identifier: Apache-2.0
//
// `execgate init`: PID 1 of the service VM. The kernel starts the binary as /init with no
// arguments; `ExecGate.main` below sends a PID-1 process here whatever its argv says, so the guest
// never lands in argument parsing (an unknown argv word must not make init exit → kernel panic).

import ExecGateCommandLine
import ExecGateHost
import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Run as the service VM's PID 1 (mount, load vsock modules, serve on AF_VSOCK, power off).",
        discussion: """
        Options come from the kernel command line: execgate.mode=serve|test, execgate.port=N (default \
        \(GuestOptions.defaultPort)), execgate.timeout=S (test mode), execgate.debug=1.
        """
    )

    func run() async throws {
        guard GuestInit.isPID1 else {
            Console.error("execgate init: only runs as PID 1 inside the service VM (see `execgate vm start`)")
            throw ExecGateExit.usage
        }
        await GuestInit.run(hooks: guestHooks)
    }
}

extension ExecGate {
    /// As PID 1 the binary is always init; otherwise the usual argument parsing. Exit status:
    /// 0 allow/success, 1 deny, 2 usage or unreadable input (ExecGateExit); --help exits 0.
    static func main() async {
        if GuestInit.isPID1 { await GuestInit.run(hooks: guestHooks) }
        await CommandParser.main(ExecGate.self)
    }
}

/// PID 1's hooks: the verifier and its self-test (ExecGateHost), and `execgate capture`'s guest
/// half (execgate.mode=capture, CaptureCommand.swift).
var guestHooks: GuestServiceHooks {
    var hooks = GuestService.hooks
    hooks.runCapture = CaptureCommand.guestHook
    return hooks
}
