// SPDX-License-Identifier: Apache-2.0
//
// `execgate capture`: load modules into a real kernel under QEMU and write what they became in
// memory as a capture directory (`execgate explain <out>/<boot>` explains it). Argument parsing
// only; the work is in ExecGateCaptureTool (host half CaptureHost.swift, guest half CaptureGuest.swift).

import ExecGateCapture
import ExecGateCommandLine
import ExecGateCaptureTool
import ExecGateHost
import ExecGateServiceVM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct CaptureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Boot a kernel under QEMU, load modules, and capture their executable end state.",
        discussion: """
        Writes OUT/load-order.txt, modules.list, modules.dep, corpus.json and OUT/<boot>/ (boot = \
        nokaslr or kaslr): kallsyms.txt, boot_cpu_data.bin, pv_ops.bin, cpus.txt, cmdline.txt, \
        slide.txt, vulnerabilities.txt, cpuflags.txt, … and per module <m>/<m>.ko, sections.json, \
        layout.json, core_text.bin. Check it with `execgate explain OUT/<boot>`. Needs \
        qemu-system-x86_64 and a static execgate for the guest's /init (`make image` builds one). \
        Exit 0 when every module was captured, 1 when some failed to load or the VM failed, 2 on \
        usage errors (an option out of range, unknown module, missing kernel or QEMU; options are \
        checked before any work).
        """
    )

    @Option(help: ArgumentHelp("A linux-image .deb or an unpacked package directory (boot/, lib/modules/).", valueName: "DEB|DIR"))
    var kernel: String

    @Option(help: ArgumentHelp("Modules to load: a comma-separated list, or @FILE (names per line, # comments). Dependencies are added.", valueName: "LIST"))
    var modules: String

    @Option(help: ArgumentHelp("Output directory (created; a boot's subdirectory is replaced).", valueName: "DIR"))
    var out: String

    @Option(help: "QEMU CPU model (decides alternatives and mitigations).")
    var cpu: String = "max"

    @Option(help: ArgumentHelp("Guest CPUs present at boot (QEMU -smp), 1…64. One CPU makes the kernel patch `lock` prefixes to `ds` (uniprocessor alternatives).", valueName: "N"))
    var smp: Int = 1

    @Option(help: ArgumentHelp("Guest CPUs possible (QEMU -smp N,maxcpus=M; the rest hot-pluggable), --smp…64. Default: --smp.", valueName: "M"))
    var maxcpus: Int?

    @Option(help: ArgumentHelp("Extra kernel command-line words, space-separated (e.g. \"retbleed=stuff spectre_v2=retpoline\").", valueName: "ARGS"))
    var kernelArgs: String = ""

    @Flag(help: "Boot with KASLR (the bzImage; boot directory `kaslr`). Default: nokaslr.")
    var kaslr = false

    @Flag(help: "Boot the extracted vmlinux through its PVH entry (faster under TCG; no KASLR, no 5-level paging: a different end state).")
    var pvh = false

    @Flag(help: "Print a JSON summary on stdout.")
    var json = false

    @Option(help: ArgumentHelp("The static execgate used as the guest's /init (default: this binary if static, else .build-static/release/execgate).", valueName: "PATH"))
    var `init`: String?

    @Option(help: ArgumentHelp("Scratch directory (unpacked .deb, vmlinux, initramfs, disk, logs).", valueName: "DIR"))
    var workDir: String?

    @Option(help: "Give up after this many seconds (1…86400).")
    var timeout: Int = 600

    @Option(help: ArgumentHelp("Guest memory in MiB (32…65536).", valueName: "MiB"))
    var memory: Int = 1024

    @Option(help: "auto, kvm or tcg (auto uses KVM only where it boots Linux).")
    var accel: String = "auto"

    /// The options as CaptureTool takes them (modules, paths and init binary filled in by run()).
    func options(modules names: [String] = [], initBinary: String = "", workDir: String = "") -> CaptureOptions {
        var o = CaptureOptions(kernel: kernel, modules: names, outDir: FS.absolute(out), initBinary: initBinary, workDir: workDir)
        o.cpu = cpu
        o.smp = smp
        o.maxCPUs = maxcpus
        o.kernelArgs = kernelArgs.split(separator: " ").map(String.init)
        o.kaslr = kaslr
        o.pvh = pvh
        o.timeoutSeconds = timeout
        o.memoryMiB = memory
        o.accel = accel
        return o
    }

    /// Every option a usage error before anything is read or started (CaptureOptions.checkOptions).
    func validate() throws {
        // An empty --out was the current directory, an empty --kernel the current directory's boot/.
        guard !out.isEmpty else { throw ValidationError(emptyOutputPath("--out")) }
        try refuseEmptyPaths([("--kernel", kernel), ("--init", `init`), ("--work-dir", workDir)])
        do { try options().checkOptions() } catch { throw ValidationError(error.description) }
    }

    func run() throws {
        do {
            let names = try parseModuleList(modules)
            let o = options(modules: names, initBinary: try initBinary(), workDir: workDir.map(FS.absolute) ?? defaultWorkDir())
            let s = try CaptureTool.run(o, log: { Console.error($0) })
            for (n, why) in s.failed { Console.error("capture: \(n) not captured: \(why)") }
            Console.error("capture: \(s.captured.count) of \(s.loadOrder.count) modules captured in \(s.bootDir) (slide 0x\(String(s.slide, radix: 16)), \(s.totalMillis) ms); check with `execgate explain \(s.bootDir)`")
            Self.reportTrampolines(s.bootDir)
            if json { print(s.json) }
            if !s.failed.isEmpty { throw ExecGateExit.deny }
        } catch let e as CaptureToolError {
            Console.error("execgate capture: \(e)")
            switch e {
            case .usage, .missing, .badModule: throw ExecGateExit.usage
            case .failed, .guest: throw ExecGateExit.deny
            }
        }
    }

    /// What the boot's registration makes of the core's static-call trampolines the guest read
    /// (CoreTrampolines.swift): keys moved from the build's default and sent as `static_call_key`,
    /// and every trampoline left out, with why.
    static func reportTrampolines(_ bootDir: String) {
        do {
            guard let t = try CaptureBoot.staticCallTrampolines(dir: bootDir) else {
                return Console.error("capture: no \(CoreTrampolines.fileName): no static_call_key sent")
            }
            Console.error("capture: \(t.read) core static-call trampolines read; \(t.sent.count) moved from the build's default, sent as static_call_key; \(t.notSent.count) not sent")
            for (n, a) in t.sent { Console.error("capture:   sent \(n) -> 0x\(String(a, radix: 16))") }
            // Grouped by reason, a few names each: a default boot leaves out hundreds for one
            // reason (keys the build's table does not cover), which buried the summary.
            var reasons: [String] = [], names: [String: [String]] = [:]
            for (n, why) in t.notSent {
                if names[why] == nil { reasons.append(why) }
                names[why, default: []].append(n)
            }
            for why in reasons {
                let ns = names[why] ?? []
                let shown = ns.prefix(3).joined(separator: ", ") + (ns.count > 3 ? ", … (\(ns.count - 3) more)" : "")
                Console.error("capture:   NOT sent \(ns.count): \(why): \(shown)")
            }
        } catch {
            Console.error("capture: \(CoreTrampolines.fileName): \(error)")
        }
    }

    func initBinary() throws -> String {
        if let i = `init` { return FS.absolute(i) }
        if let me = FS.selfExecutable(), let b = try? FS.read(me, limit: 512 << 20), GuestKernel.elfHasInterpreter(b) == false { return me }
        return FS.absolute(".build-static/release/execgate")
    }

    func defaultWorkDir() -> String {
        let tmp = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        let tag = kernel.split(separator: "/").last.map(String.init) ?? "kernel"
        return "\(tmp)/execgate-capture-\(getuid())/\(tag)"
    }

    /// The guest half, run by PID 1 in `execgate.mode=capture` (wired in GuestWiring.swift).
    static let guestHook: @Sendable () async throws -> Void = { try await CaptureGuest.run() }
}
