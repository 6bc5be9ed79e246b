// SPDX-License-Identifier: Apache-2.0
//
// `execgate vm start|stop|status|selftest`: run the service VM under QEMU (see ExecGateServiceVM/Launcher).

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateServiceVM
import ExecGateVsockDevice
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Start, stop, inspect or self-test the service VM.",
        subcommands: [VMStartCommand.self, VMStopCommand.self, VMStatusCommand.self, VMSelfTestCommand.self]
    )
}

struct VMOptions: ParsableArguments {
    @Option(help: "VM name (one VM per name).")
    var name: String = "execgate"

    @Option(help: "State directory root; the VM's files go to <state-dir>/<name>/ (default: $EXECGATE_RUN_DIR or ServiceVM/run). Without /dev/vhost-vsock the vsock backend's sockets live there: <state-dir>/<name>/vhost-user-vsock.sock must fit 95 bytes.")
    var stateDir: String?

    @Option(help: "Image directory (from `execgate image build`).")
    var imageDir: String = "Images/out"

    func validate() throws {
        guard name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }), !name.isEmpty, name.count <= 64 else {
            throw ValidationError("--name: letters, digits, '-' and '_' only (max 64)")
        }
        // An empty directory was the current one (FS.absolute("")): the VM's state in ./NAME/.
        try refuseEmptyPaths([("--state-dir", stateDir), ("--image-dir", imageDir)])
        if stateDir == nil { _ = try Self.runDirFromEnvironment() }
    }

    /// `$EXECGATE_RUN_DIR`, held to the rule for arguments (README, "Commands"): a value that is
    /// not valid UTF-8 is refused, never used under a repaired name (`String(cString:)` turns bad
    /// bytes into U+FFFD: another directory, whose pid file `vm stop` would act on).
    static func runDirFromEnvironment() throws -> String? {
        guard let p = getenv("EXECGATE_RUN_DIR") else { return nil }
        let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p))
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw ValidationError("$EXECGATE_RUN_DIR is not valid UTF-8 (a state directory must be named in UTF-8; use --state-dir or rename it)")
        }
        return s
    }

    func config(test: Bool) throws -> VMConfig {
        let root = try stateDir ?? Self.runDirFromEnvironment() ?? "ServiceVM/run"
        let dir = FS.canonical(root) + "/" + name
        // Missing image files are reported by the launcher with what to run.
        let paths = (try? VMConfig.imagePaths(imageDir: imageDir, test: test))
            ?? (FS.absolute(imageDir) + "/vmlinux", FS.absolute(imageDir) + "/" + (test ? ImageBuilder.testInitramfsName : ImageBuilder.initramfsName))
        var c = VMConfig(stateDir: dir, kernel: FS.absolute(paths.0), initrd: FS.absolute(paths.1))
        c.name = name
        c.vsockBackendCommand = VsockBackendLaunch.command()
        return c
    }

    /// For the commands that boot (`start`, `selftest`): the paths go into QEMU's `-chardev
    /// socket,path=…` and `-kernel`/`-initrd` options, whose syntax takes ',' as a separator:
    /// refused before anything starts, naming the path. (`stop` and `status` pass no path to QEMU.)
    static func checkQEMUPaths(_ c: VMConfig) throws {
        for (option, path) in [("--state-dir", c.stateDir), ("--image-dir", c.kernel), ("--image-dir", c.initrd)] where path.contains(",") {
            throw ValidationError("\(option): \(path) holds a ',', which QEMU's option syntax reads as a separator; use a path without one")
        }
    }
}

struct BootOptions: ParsableArguments {
    @Option(help: "Guest CID for vhost-vsock (3 or more).")
    var cid: UInt32 = 3

    @Option(help: ArgumentHelp("Guest memory in MiB (the default serves the largest Debian module with its claim; with GUEST_KERNEL=debian use 256).", valueName: "MiB"))
    var memory: Int = VMConfig.defaultMemoryMiB

    @Option(help: "AF_VSOCK port the verifier listens on in the guest.")
    var port: UInt32 = GuestOptions.defaultPort

    @Option(help: "auto (detect), kvm or tcg.")
    var accel: String = "auto"

    @Option(help: "microvm (default, fastest) or pc.")
    var machine: String = "microvm"

    @Option(help: "Seconds to wait for the guest.")
    var timeout: Int = 90

    @Option(help: "QEMU binary.")
    var qemu: String = "qemu-system-x86_64"

    /// A sanity floor, not the budget (ServiceVM/README.md "Memory budget"): with the service VM's
    /// own kernel and the 18.4 MiB Foundation-free /init the least that boots and serves the
    /// self-test is 48 MiB; Debian's kernel needs 112. Below 32 nothing we build boots. Inside the
    /// guest the service admits requests only within the memory it finds (`MemoryBudget`).
    static let minimumMemoryMiB = 32

    func validate() throws {
        guard cid >= 3, cid < UInt32.max else { throw ValidationError("--cid: 3…4294967294 (0-2 are reserved, 4294967295 is VMADDR_CID_ANY)") }
        guard (BootOptions.minimumMemoryMiB...65536).contains(memory) else {
            throw ValidationError("--memory: \(BootOptions.minimumMemoryMiB)…65536 MiB (the guest does not boot with less)")
        }
        guard VMConfig.Machine(rawValue: machine) != nil else { throw ValidationError("--machine: microvm or pc") }
        guard timeout > 0 && timeout <= 3600 else { throw ValidationError("--timeout: 1…3600 seconds") }
        // The admin port is the verifier's + 1, and 4294967295 is VMADDR_PORT_ANY (the guest would
        // bind a random port for it).
        guard port > 0 && port < UInt32.max - 1 else { throw ValidationError("--port: 1…4294967293 (the admin port, --port + 1, must not be 4294967295, VMADDR_PORT_ANY)") }
        do { _ = try Accelerator.choose(accel) } catch { throw ValidationError("\(error)") }
    }

    func apply(_ c: inout VMConfig) throws {
        c.cid = cid; c.memoryMiB = memory; c.port = port; c.machine = VMConfig.Machine(rawValue: machine) ?? .microvm
        c.readyTimeoutSeconds = timeout; c.qemu = qemu
        do { c.accel = try Accelerator.choose(accel) } catch { throw serviceVMFailure("vm", error) }
    }
}

struct VMStartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Boot the service VM and wait until the verifier is ready.")
    @OptionGroup var vm: VMOptions
    @OptionGroup var boot: BootOptions
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        var c = try vm.config(test: false)
        try boot.apply(&c)
        try VMOptions.checkQEMUPaths(c)
        try Self.checkBackendSockets(c)
        // A SIGINT/SIGTERM/SIGHUP/SIGQUIT while the guest boots stops what was started (QEMU and its backend)
        // before the command ends: the default action left QEMU running, which `vm status` then
        // called ready (round 12's review).
        let signals = try? TerminationSignals()
        do {
            let r = try Launcher.start(c, log: { if !json { print($0) } }, stopRequested: { signals?.hasArrived ?? false })
            let note = r.reachableFromHost ? "" :
                "host has no /dev/vhost-vsock and no vsock backend: the VM runs but the host cannot reach it over vsock"
            if json {
                print(ConsoleJSON.object([("name", ConsoleJSON.string(c.name)), ("ready", "true"), ("pid", "\(r.pid)"),
                                   ("address", ConsoleJSON.string(r.address)), ("reachable_from_host", r.reachableFromHost ? "true" : "false"),
                                   ("boot_ms", "\(r.bootMillis)"), ("accel", ConsoleJSON.string(c.accel.accel.rawValue)),
                                   ("console_log", ConsoleJSON.string(c.consoleLog)), ("note", ConsoleJSON.string(note)),
                                   ("admin_address", r.adminAddress.map(ConsoleJSON.string) ?? "null")]))
            } else {
                print("ready \(r.address) (pid \(r.pid), \(r.bootMillis) ms to ready; console \(c.consoleLog))")
                if let admin = r.adminAddress { print("admin \(admin) (policy push/show/audit; only bundles signed by the admin key are accepted)") }
                if !note.isEmpty { print("note: \(note)") }
            }
        } catch {
            // With --json, one object whatever the outcome (as `vm status` and `vm stop` print):
            // a supervisor parsing stdout sees the failure and its reason, not nothing.
            if json {
                print(ConsoleJSON.object([("name", ConsoleJSON.string(c.name)), ("ready", "false"),
                                          ("error", ConsoleJSON.string("\(error)")), ("console_log", ConsoleJSON.string(c.consoleLog))]))
            }
            throw serviceVMFailure("vm start", error)
        }
    }
}

extension VMStartCommand {
    /// Where the launcher will run the vsock backend (no /dev/vhost-vsock), its two sockets live
    /// in the state directory and must fit the backend's own bound (VsockBackendCommand.validate:
    /// a Unix socket's sun_path less the `_PORT` suffix of guest-to-host connections). A usage
    /// error before anything is written, naming the options that make the path.
    static func checkBackendSockets(_ c: VMConfig) throws {
        guard c.usesVhostUserVsock else { return }
        let most = VsockLimits.maxUnixPath - 13
        for p in [c.vhostUserSocket, c.hybridSocket] where p.utf8.count > most {
            throw serviceVMFailure("vm start", ServiceVMError.badOption(
                "--state-dir/--name: the vsock backend's socket \(p) is \(p.utf8.count) bytes, at most \(most) fit (no /dev/vhost-vsock here: the backend's sockets live in the state directory); give a shorter --state-dir"))
        }
    }
}

struct VMStopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop the service VM.")
    @OptionGroup var vm: VMOptions
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        let c = try vm.config(test: false)
        do { try Launcher.checkStateFiles([c.pidFile, c.vsockBackendPidFile]) } catch { throw serviceVMFailure("vm stop", error) }
        let stopped = Launcher.stop(c)
        if json { print(ConsoleJSON.object([("name", ConsoleJSON.string(c.name)), ("stopped", stopped ? "true" : "false")])) }
        else { print(stopped ? "stopped '\(c.name)'" : "'\(c.name)' was not running") }
    }
}

struct VMStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Is the service VM running and ready?",
                                                    discussion: "Exit status: 0 running, 3 not running (the console tail of a dead VM is printed), 2 usage error or a state file (qemu.pid, vm.txt, console.log) that is not a regular file or cannot be read.")
    @OptionGroup var vm: VMOptions
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        let c = try vm.config(test: false)
        do { try Launcher.checkStateFiles([c.pidFile, c.infoFile, c.consoleLog]) } catch { throw serviceVMFailure("vm status", error) }
        let s = Launcher.status(c)
        if json { print(s.json) }
        else if s.running {
            print("'\(s.name)' running (pid \(s.pid!)), \(s.ready ? "ready at \(TerminalText.escaped(s.address!))" : "not ready yet")"
                  + (s.reachableFromHost ? "" : "; not reachable from the host (no vhost-vsock, no vsock backend)"))
            if !s.consoleTail.isEmpty { print("--- console tail ---\n\(TerminalText.escapedLines(s.consoleTail))") }
        } else {
            print("'\(s.name)' is not running" + (s.info.isEmpty ? " (never started here)" : ""))
            if !s.consoleTail.isEmpty { print("--- console tail ---\n\(TerminalText.escapedLines(s.consoleTail))") }
        }
        if !s.running { throw ExitCode(3) }
    }
}

struct VMSelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Boot the test image (execgate.mode=test): the guest serves on vsock and queries itself over loopback; print the results."
    )
    @OptionGroup var vm: VMOptions
    @OptionGroup var boot: BootOptions
    @Flag(help: "Print the raw EXECGATE-* console lines.") var json = false

    func run() throws {
        var c = try vm.config(test: true)
        c.name = vm.name + "-selftest"
        c.stateDir += "-selftest"
        try VMOptions.checkQEMUPaths(c)
        try boot.apply(&c)
        c.mode = .test
        c.extraCmdline = ["execgate.timeout=\(max(10, boot.timeout - 5))"]
        do {
            let run = try SelfTest.run(c, timeoutSeconds: boot.timeout)
            if json {
                for l in run.rawLines { print(l) }
            } else {
                for r in run.results { print("\(r.passed ? "PASS" : "FAIL") \(TerminalText.escaped(r.name))  \(TerminalText.escaped(r.detail))") }
                print(run.summaryText)
            }
            if !run.passed { throw ExitCode(1) }
        } catch let e as ExitCode {
            throw e
        } catch {
            throw serviceVMFailure("vm selftest", error)
        }
    }
}

/// The vhost-user-vsock backend is this very binary (`execgate vsock-backend`).
enum VsockBackendLaunch {
    static func command() -> [String]? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return [String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self), "vsock-backend"]
    }
}
