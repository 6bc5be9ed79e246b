// SPDX-License-Identifier: Apache-2.0
//
// `execgate explain CAPTURE_DIR [--json] [--mutate N]`: replay a captured boot's modules through the
// end-state explainer (argument parsing and printing only; the work is in ExecGateCapture/Explain).

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateCapture
#if canImport(Glibc)
import Glibc
#endif

struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Explain every executable byte of a captured boot's modules (allow/deny per module).",
        discussion: "CAPTURE_DIR is one boot's folder (<corpus>/<boot>); load-order.txt is read from it or its parent. Exit 0 if all modules are allowed, 1 if any is denied, 2 on unreadable input."
    )

    @Argument(help: "One boot's capture directory.") var captureDir: String
    @Flag(help: "Print one JSON object per module and a summary object; with --bench a {\"bench\": …} object, with --mutate one {\"mutation\": …} per class (and {\"false_accept\": …}).") var json = false
    @Option(help: "Run N mutations per class per module instead (every one must be denied; 0…100000).") var mutate: Int?
    @Option(help: "Seed for --mutate (default 1).") var seed: UInt64?
    @Option(help: "Only these modules (comma-separated).") var only: String?
    @Flag(help: "Also report throughput vs SHA-256 over the same bytes.") var bench = false

    @Option(help: "Timing passes for --bench (best and median are printed; default 5).") var passes: Int?

    func validate() throws {
        // An option given is never dropped silently: each of these only means something beside the other.
        if seed != nil && mutate == nil { throw ValidationError("--seed seeds --mutate: give --mutate N, or leave --seed out") }
        if passes != nil && !bench { throw ValidationError("--passes counts the timing passes of --bench: give --bench, or leave --passes out") }
    }

    func run() throws {
        var o = ExplainRunOptions()
        o.json = json
        o.mutate = mutate
        o.seed = seed ?? 1
        o.only = only.map { Set($0.split(separator: ",").map(String.init)) }
        o.bench = bench
        o.benchRepetitions = passes ?? 5
        let boot: CaptureBoot
        do {
            try o.check()
            boot = try CaptureBoot.load(captureDir)
            try o.check(against: boot)
        } catch {
            Console.error("execgate explain: \(error)")
            throw ExecGateExit.usage
        }
        // A capture is a guest's memory and files: a deny's reason quotes its words (symbol names
        // of the module's ELF, the capture's own files). Each human line is one line, escaped
        // (TerminalText); --json lines are JSON already (their strings escaped by JSON).
        let json = o.json
        // Progress is a line rewritten in place (\r): for a terminal only, never into a log or a pipe.
        let terminal = isatty(2) != 0
        let summary = ExplainRun.run(boot, options: o, out: { print(json ? $0 : TerminalText.escaped($0)) },
                                     progress: { if terminal { fputs($0, stderr) } })
        // A module whose files could not be read is invalid input, as the capture's own files are
        // (docs/capture.md): exit 2, not a verdict.
        // A false accept (--mutate) is the most serious result: a verdict (exit 1) before all else.
        if !summary.falseAccepts.isEmpty { throw ExecGateExit.deny }
        if summary.unreadable > 0 {
            Console.error("execgate explain: \(summary.unreadable) module\(summary.unreadable == 1 ? "" : "s") of the load order could not be read (the deny lines name the files)")
            throw ExecGateExit.usage
        }
        if !summary.passed { throw ExecGateExit.deny }
    }
}
