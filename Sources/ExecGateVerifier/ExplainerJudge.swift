// SPDX-License-Identifier: Apache-2.0
//
// The end-state judge: lays the request's claim over the signed ELF and asks the explanation
// engine to account for every byte of the executable region, using only the guest's registered
// facts and the exports of modules this verifier allowed for the same guest.

import ExecGateELF
import ExecGateExplain
import ExecGateWire

public struct ExplainerJudge: EndStateJudge {
    public init() {}

    public func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult {
        guard let base = request.textBase, let text = request.text else {
            return .invalidClaim("end-state verification needs the executable region (text_base + text)")
        }
        if request.initText != nil {
            // Init text is claimed with its own region; until the engine explains it (ModuleClaim
            // grows the init region), a claimed init byte is an unexplained byte: deny.
            return .unexplained("\(moduleName): init text is claimed but this engine does not explain init text yet: not granted")
        }
        var addresses: [String: UInt64] = [:]
        for s in request.sections { addresses[s.name] = s.address }
        let claim = ModuleClaim(name: moduleName, textBase: base, text: Array(buffer: text), sectionAddresses: addresses,
                                percpuBase: request.perCPUBase)
        let result = Explainer(facts: session.facts).explain(elf: elf, claim: claim, resolver: session.symbolResolver)
        switch result.verdict {
        case .allowed(let stats):
            return .explained(ExplainedModule(exports: result.exports, statistics: stats, runtimeSites: result.runtimeSites))
        case .denied(let d):
            return .unexplained(d.description)
        }
    }
}
