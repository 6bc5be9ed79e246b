// SPDX-License-Identifier: Apache-2.0
//
// `execgate explain CAPTURE_DIR [--json] [--mutate N]`: replay a captured boot's modules through the
// end-state explainer (argument parsing and printing only; the work is in ExecGateCapture/Explain).

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateCapture
import ExecGateELF
import ExecGateExplain
import ExecGateHost
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
    @Flag(help: "Print one JSON object per module and a summary object.") var json = false
    @Option(help: "Run N mutations per class per module instead (every one must be denied).") var mutate: Int?
    @Option(help: "Seed for --mutate.") var seed: UInt64 = 1
    @Option(help: "Only these modules (comma-separated).") var only: String?
    @Flag(help: "Also report throughput vs SHA-256 over the same bytes.") var bench = false

    func run() throws {
        let boot: CaptureBoot
        do { boot = try CaptureBoot.load(captureDir) } catch {
            FileHandleErr.write("execgate explain: \(error)\n")
            throw ExecGateExit.usage
        }
        let onlySet: Set<String>? = only.map { Set($0.split(separator: ",").map(String.init)) }
        let rssAfterFacts = maxRSSKiB()
        var largest = (name: "", bytes: 0, rssBefore: 0, rssAfter: 0)
        var replay = CaptureReplay(boot: boot)
        var allowed = 0, total = 0, unexplained = 0
        var engineSeconds = 0.0, execBytes = 0, shaSeconds = 0.0
        var mutTotals: [String: (tried: Int, denied: Int, legal: Int)] = [:]
        var falseAccepts: [String] = []
        let sha = bench ? SHA256Dyn() : nil
        for (i, name) in boot.availableModules.enumerated() {
            let m: CapturedModule
            do { m = try boot.module(name) } catch {
                // One unreadable module never aborts the run: it gets its deny line (the reason
                // names the file) and counts as denied; the summary still follows (exit 1).
                if let set = onlySet, !set.contains(name) { continue }
                total += 1
                unexplained += 1
                if json {
                    print("{\"module\":\"\(name)\",\"verdict\":\"deny\",\"rule\":\"capture\",\"unexplained_bytes\":1,\"reason\":\"\("\(error)".replacingAll("\"", "'"))\"}")
                } else {
                    print("deny  \(name): (capture): capture: \(error)")
                }
                continue
            }
            FileHandleErr.write("[\(i + 1)/\(boot.availableModules.count)] \(name)\r")
            // Copy the resolver only for --mutate (a copy makes the next add() duplicate the table).
            let resolverBefore = mutate != nil ? replay.resolver : SymbolResolver(coreExports: [:])
            let rssBefore = maxRSSKiB()
            let out = replay.step(m)
            if m.claim.text.count > largest.bytes { largest = (name, m.claim.text.count, rssBefore, maxRSSKiB()) }
            if let set = onlySet, !set.contains(name) { continue }
            total += 1
            engineSeconds += out.seconds
            execBytes += out.executableBytes
            if let h = sha {
                let t0 = MonotonicClock.seconds()
                h.hash(m.claim.text)
                shaSeconds += MonotonicClock.seconds() - t0
            }
            switch out.result.verdict {
            case .allowed(let st):
                allowed += 1
                if json {
                    let cls = st.bytesByClass.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
                    print("{\"module\":\"\(name)\",\"verdict\":\"allow\",\"bytes\":\(st.executableBytes),\"classes\":{\(cls)}}")
                } else {
                    let cls = st.bytesByClass.filter { $0.key != .elf }.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                    if st.executableBytes == 0 {
                        print("allow \(name) 0 bytes (data-only: nothing executable; signature, ELF and claim structure judged)")
                    } else {
                        print("allow \(name) \(st.executableBytes) bytes (\(cls))")
                    }
                }
            case .denied(let d):
                unexplained += d.unexplainedBytes
                if json {
                    print("{\"module\":\"\(name)\",\"verdict\":\"deny\",\"section\":\"\(d.section)\",\"offset\":\(d.offset),\"address\":\"0x\(String(d.address, radix: 16))\",\"expected\":\"\(hexs(d.expected))\",\"found\":\"\(hexs(d.found))\",\"unexplained_bytes\":\(d.unexplainedBytes),\"rule\":\"\(d.rule)\",\"reason\":\"\(d.reason.replacingAll("\"", "'"))\"}")
                } else {
                    print("deny  \(d)")
                }
            }
            if let n = mutate, out.result.verdict.isAllowed {
                let rep: MutationReport = m.ko.withUnsafeBytes { raw in
                    guard let elf = try? ELFFile(bytes: raw) else { return MutationReport() }
                    return Explainer(facts: boot.facts).mutate(elf: elf, claim: m.claim, resolver: resolverBefore, perClass: n, seed: seed &+ UInt64(i),
                                                             probeTargets: boot.probeTargets)
                }
                for c in rep.classes {
                    var t = mutTotals[c.name] ?? (0, 0, 0)
                    t.tried += c.tried; t.denied += c.denied; t.legal += c.legalAlternative
                    mutTotals[c.name] = t
                    falseAccepts += c.falseAccepts.map { "\(name): \($0)" }
                }
            }
        }
        FileHandleErr.write("\n")
        if json {
            print("{\"summary\":{\"explained\":\(allowed),\"modules\":\(total),\"unexplained_bytes\":\(unexplained)}}")
        } else {
            print("explained \(allowed) of \(total) modules, \(unexplained) unexplained bytes")
        }
        // (one first-unexplained byte is reported per denied module; the count is of such bytes)
        if bench, engineSeconds > 0 {
            let mb = Double(execBytes) / 1e6
            print("throughput: \(fmt(mb)) MB executable bytes, explain \(fmt(mb / engineSeconds)) MB/s (\(fmt(engineSeconds)) s), sha256 \(fmt(shaSeconds > 0 ? mb / shaSeconds : 0)) MB/s (\(fmt(shaSeconds)) s)")
            print("max RSS: \(maxRSSKiB()) KiB (after loading facts: \(rssAfterFacts) KiB; largest module \(largest.name), \(largest.bytes) executable bytes: high-water \(largest.rssBefore) → \(largest.rssAfter) KiB)")
        }
        if mutate != nil {
            for (k, v) in mutTotals.sorted(by: { $0.key < $1.key }) {
                print("mutation \(k): tried \(v.tried) denied \(v.denied) legal-alternative \(v.legal) false-accept \(v.tried - v.denied - v.legal)")
            }
            for f in falseAccepts { print("FALSE ACCEPT \(f)") }
            if !falseAccepts.isEmpty { throw ExecGateExit.deny }
        }
        if allowed != total { throw ExecGateExit.deny }
    }
}

/// Bytes as space-separated lower-case hex pairs ("0f 1f 44").
func hexs(_ b: [UInt8]) -> String { b.map { Hex.number($0, width: 2) }.joined(separator: " ") }

func fmt(_ v: Double) -> String {
    let x = (v * 1000).rounded() / 1000
    return "\(x)"
}

extension String {
    func replacingAll(_ a: Character, _ b: Character) -> String { String(map { $0 == a ? b : $0 }) }
}

enum FileHandleErr {
    static func write(_ s: String) { fputs(s, stderr) }
}

func maxRSSKiB() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Int(u.ru_maxrss)
}

/// SHA-256 from the system libcrypto, loaded at run time (bench only; no link dependency).
final class SHA256Dyn {
    typealias Fn = @convention(c) (UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<UInt8>?) -> UnsafeMutablePointer<UInt8>?
    let fn: Fn?
    init() {
        let h = dlopen("libcrypto.so.3", RTLD_NOW)
        if let h, let s = dlsym(h, "SHA256") { fn = unsafeBitCast(s, to: Fn.self) } else { fn = nil }
    }
    func hash(_ b: [UInt8]) {
        var out = [UInt8](repeating: 0, count: 32)
        _ = b.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { fn?(p.baseAddress, p.count, $0.baseAddress) } }
    }
}
