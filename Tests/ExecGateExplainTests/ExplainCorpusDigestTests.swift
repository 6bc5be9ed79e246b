// SPDX-License-Identifier: Apache-2.0
//
// Verdicts stay byte-identical across engine changes (speed work must not change a single verdict):
// every module of the shared reference corpus (`../shared/corpus` beside the repository, both boots)
// is replayed in load order, and for each module a digest of everything the engine answers —
// the verdict (statistics by class, relocation and site counts; or the denial text with its first
// unexplained byte), the exports later modules resolve against, the static-call trust and states,
// every run-time site with its NULL encoding and the state the claimed bytes encode — plus a digest
// of the denial texts of seeded mutations (Explainer.mutate) is compared against the digests
// committed in Fixtures/shared-corpus-digests.txt (computed by the engine before the speed work).
//
// The corpus is measurement data, not a build input: without it that test is skipped with a reason
// naming the missing directory (make test never needs it). The committed fixture corpus (9 modules)
// gets the same digest comparison in every run (Fixtures/fixture-corpus-digests.txt, also computed
// by the engine before the speed work), besides ExplainTests (every module explained, every
// mutation denied).
//
// Regenerate (only when a verdict change is intended and reviewed):
//   EXECGATE_WRITE_DIGESTS=/tmp/d.txt swift test --filter ExplainCorpusDigestTests
// then copy /tmp/d.txt over Fixtures/shared-corpus-digests.txt.

import ExecGateCapture
import ExecGateELF
@testable import ExecGateExplain
import Foundation
import XCTest

final class ExplainCorpusDigestTests: XCTestCase {
    /// Mutations per class per module (the committed digests are for this value).
    static let mutationsPerClass = 2
    /// Mutation classes whose choices depend only on the seed and the module (not on hash-set
    /// order): all of them since the static-call classes sample the core's entries in sorted
    /// order (Explainer.evenSample; they drew from a set's per-process order before).
    static let deterministicClasses: Set<String> = ["byte-flip", "reloc-redirect", "jump-label", "alternative", "return-thunk",
                                                    "static-call", "static-call-retarget", "static-call-init", "static-call-named", "padding"]

    static func corpusRoot() -> String {
        if let e = ProcessInfo.processInfo.environment["EXECGATE_SHARED_CORPUS"], !e.isEmpty { return e }
        // Tests/ExecGateExplainTests/<this file> → repository root → ../shared/corpus
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return repo.deletingLastPathComponent().appendingPathComponent("shared/corpus").path
    }

    /// FNV-1a 64 (a regression fingerprint, not a security digest).
    struct FNV {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        mutating func add(_ s: String) { for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 } }
        var hex: String { String(h, radix: 16) }
    }

    /// Everything the engine answered for one module, as text.
    static func canonical(_ res: ExplainResult, claim: ModuleClaim) -> String {
        var out = ""
        func stats(_ st: ExplainStats) -> String {
            let c = st.bytesByClass.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            let s = st.sites.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            return "bytes=\(st.executableBytes) classes=\(c) relocs=\(st.relocationsApplied) sites=\(s)"
        }
        switch res.verdict {
        case .allowed(let st): out += "allow \(stats(st))\n"
        case .denied(let d): out += "deny \(d) #\(d.unexplainedBytes)\n"
        }
        if let e = res.exports {
            out += "exports " + e.symbols.sorted { $0.key < $1.key }.map { "\($0.key)=\(String($0.value, radix: 16))" }.joined(separator: ",") + "\n"
            out += "entries \(e.functionEntries.count) \(e.functionEntries.reduce(UInt64(0)) { $0 ^ ($1 &* 0x9e37_79b9_7f4a_7c15) })\n"
            out += "trusted " + e.staticCallTrustedTargets.sorted { $0.key < $1.key }
                .map { "\(String($0.key, radix: 16)):\($0.value.sorted().map { String($0, radix: 16) }.joined(separator: "/"))" }.joined(separator: ",") + "\n"
            out += "states " + e.staticCallStates.sorted { $0.key < $1.key }.map { "\(String($0.key, radix: 16))=\(String($0.value, radix: 16))" }
                .joined(separator: ",") + "\n"
        }
        if let t = res.runtimeSites {
            for s in t.siteList {
                let off = Int(s.address &- claim.textBase)
                let now = Array(claim.text[off..<off + s.length])
                let st = t.state(address: s.address, bytes: now).map { String($0, radix: 16) } ?? "-"
                let enc = t.encoding(at: s.address, state: 0).map { $0.map { String($0, radix: 16) }.joined(separator: " ") } ?? "-"
                out += "site \(String(s.address, radix: 16)) \(s.length) \(s.key.map { String($0, radix: 16) } ?? "-") \(s.kind) [\(enc)] \(st)\n"
            }
        }
        return out
    }

    /// "boot module verdict-digest mutation-digest" for every module of every boot of the corpus.
    static func digests(corpus: String) throws -> [String] {
        var lines: [String] = []
        let boots = try FileManager.default.contentsOfDirectory(atPath: corpus).filter {
            FileManager.default.fileExists(atPath: corpus + "/" + $0 + "/kallsyms.txt")
        }.sorted()
        for b in boots {
            let boot = try CaptureBoot.load(corpus + "/" + b)
            var replay = CaptureReplay(boot: boot)
            for (i, name) in boot.availableModules.enumerated() {
                let m = try boot.module(name)
                let before = replay.resolver
                let out = replay.step(m)
                var v = FNV()
                v.add(canonical(out.result, claim: m.claim))
                var mu = FNV(), all = FNV()
                if out.result.verdict.isAllowed {
                    let rep: MutationReport = m.ko.withUnsafeBytes { raw in
                        guard let elf = try? ELFFile(bytes: raw) else { return MutationReport() }
                        return Explainer(facts: boot.facts).mutate(elf: elf, claim: m.claim, resolver: before, perClass: mutationsPerClass,
                                                                   seed: 1 &+ UInt64(i), probeTargets: boot.probeTargets)
                    }
                    for c in rep.classes {
                        // (A class outside `deterministicClasses` would commit only its false
                        // accepts: none is, now.)
                        if deterministicClasses.contains(c.name) {
                            mu.add("\(c.name) \(c.tried) \(c.denied) \(c.legalAlternative) \(c.falseAccepts) \(String(c.denialDigest, radix: 16))\n")
                        } else {
                            mu.add("\(c.name) \(c.falseAccepts)\n")
                        }
                        all.add("\(c.name) \(c.tried) \(c.denied) \(c.legalAlternative) \(c.falseAccepts) \(String(c.denialDigest, radix: 16))\n")
                    }
                }
                // With SWIFT_DETERMINISTIC_HASHING set, a fifth column covers every class (compare
                // two engines' written files; not committed: make test runs without it). Since the
                // static-call classes sample sorted entries it equals the fourth's classes.
                let fifth = ProcessInfo.processInfo.environment["SWIFT_DETERMINISTIC_HASHING"] != nil ? " " + all.hex : ""
                lines.append("\(b) \(name) \(v.hex) \(mu.hex)\(fifth)")
            }
        }
        return lines
    }

    /// The same on the committed fixture corpus (9 modules of the same boot): runs in every
    /// `make test`, no shared corpus needed. Regenerate with EXECGATE_WRITE_FIXTURE_DIGESTS=path.
    func testFixtureVerdictsMatchCommittedDigests() throws {
        let corpus = try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/corpus"
        let got = try Self.digests(corpus: corpus)
        if let w = ProcessInfo.processInfo.environment["EXECGATE_WRITE_FIXTURE_DIGESTS"], !w.isEmpty {
            try (got.joined(separator: "\n") + "\n").write(toFile: w, atomically: true, encoding: .utf8)
        }
        let file = try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/fixture-corpus-digests.txt"
        let want = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        XCTAssertEqual(want.count, 9, "committed fixture digests")
        XCTAssertEqual(got.count, want.count, "module count")
        for (g, w) in zip(got.map { $0.split(separator: " ").prefix(4).joined(separator: " ") }, want) where g != w {
            XCTFail("fixture verdict digest changed: got \(g), committed \(w)")
        }
    }

    func testSharedCorpusVerdictsMatchCommittedDigests() throws {
        let corpus = Self.corpusRoot()
        guard FileManager.default.fileExists(atPath: corpus + "/load-order.txt") else {
            throw XCTSkip("shared reference corpus not present at \(corpus) (set EXECGATE_SHARED_CORPUS); verdict digests not compared")
        }
        let got = try Self.digests(corpus: corpus)
        if let w = ProcessInfo.processInfo.environment["EXECGATE_WRITE_DIGESTS"], !w.isEmpty {
            try (got.joined(separator: "\n") + "\n").write(toFile: w, atomically: true, encoding: .utf8)
        }
        let file = try XCTUnwrap(Bundle.module.resourcePath) + "/Fixtures/shared-corpus-digests.txt"
        let want = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        XCTAssertEqual(got.count, want.count, "module count")
        XCTAssertGreaterThanOrEqual(got.count, 200, "both boots of 103 modules")
        for (g, w) in zip(got.map { $0.split(separator: " ").prefix(4).joined(separator: " ") }, want) where g != w { XCTFail("verdict digest changed: got \(g), committed \(w)") }
    }
}
