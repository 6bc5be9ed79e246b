// SPDX-License-Identifier: Apache-2.0
//
// Replays one boot's modules in load order as one guest session: each allowed module's exports
// become resolvable for the modules after it (the kernel's resolve_symbol() over loaded modules).

import ExecGateELF
import ExecGateExplain
import _ExecGateInternals

public struct ModuleOutcome {
    public let name: String
    public let result: ExplainResult
    public let executableBytes: Int
    /// Seconds spent in the engine (ELF parse + explain), excluding file I/O.
    public let seconds: Double
}


#if canImport(Glibc)
import Glibc
#endif

public struct CaptureReplay {
    public let boot: CaptureBoot
    public private(set) var resolver: SymbolResolver
    /// One engine over the boot's facts for every step (the facts boxed once, not copied a module).
    let explainer: Explainer

    public init(boot: CaptureBoot) {
        self.boot = boot
        self.resolver = SymbolResolver(coreExports: boot.coreExports)
        self.explainer = Explainer(facts: boot.facts)
    }

    /// Explain one captured module with the session's current resolver; on allow, extend it.
    public mutating func step(_ m: CapturedModule) -> ModuleOutcome {
        let t0 = MonotonicClock.seconds()
        let result: ExplainResult = m.ko.withUnsafeBytes { raw in
            do {
                let elf = try ELFFile(bytes: raw)
                return explainer.explain(elf: elf, claim: m.claim, resolver: resolver)
            } catch {
                return ExplainResult(verdict: .denied(Denial(module: m.name, section: "(elf)", offset: 0, address: 0, expected: [], found: [],
                                                             rule: .malformedELF, reason: "\(error)")), exports: nil)
            }
        }
        let dt = MonotonicClock.seconds() - t0
        if result.verdict.isAllowed, let ex = result.exports { resolver.add(ex) }
        return ModuleOutcome(name: m.name, result: result, executableBytes: m.claim.textBytes.count, seconds: dt)
    }
}
