// SPDX-License-Identifier: Apache-2.0
//
// The end-state judge: lays the request's claim over the signed ELF and asks the explanation
// engine to account for every byte of the executable region, using only the guest's registered
// facts and the exports of modules this verifier allowed for the same guest.

import ExecGateELF
import ExecGateExplain
import ExecGateWire
import NIOCore

public struct ExplainerJudge: EndStateJudge {
    public init() {}

    public func judge(elf: ELFFile, moduleName: String, request: AuthorizeModule, session: GuestSession) -> EndStateResult {
        guard let base = request.textBase, let text = request.text else {
            return .invalidClaim("end-state verification needs the executable region (text_base + text)")
        }
        // Init text, when claimed, is its own allocation (module_alloc of the init layout): the
        // engine explains it like core text (relocations into init, the same loader stages; its
        // key states must agree with the core's). Both or neither of base and bytes.
        guard (request.initBase == nil) == (request.initText == nil) else {
            return .invalidClaim("init_base and init_text come together")
        }
        // The sections as listed (the engine finds each section's entry by name, by bytes for ASCII
        // names: Session.claimedAddresses; a repeated name, which ClaimStructure refuses before
        // this, would count its last entry).
        // The executable bytes borrowed from the request's buffer, not copied (up to 28 MiB a
        // request): the claim holds the buffer's storage, which copy-on-write keeps unchanged
        // while it does (ClaimBytes); nothing holds it past this call.
        let claim = ModuleClaim(name: moduleName, textBase: base, textBytes: Self.borrowed(text),
                                sections: request.sections.map { ClaimedSection(name: $0.name, address: $0.address) },
                                percpuBase: request.perCPUBase, initTextBase: request.initBase,
                                initTextBytes: request.initText.map { Self.borrowed($0) })
        let result = session.explainer.explain(elf: elf, claim: claim, resolver: session.symbolResolver)
        switch result.verdict {
        case .allowed(let stats):
            var e = ExplainedModule(exports: result.exports, statistics: stats, runtimeSites: result.runtimeSites,
                                    initRuntimeSites: result.initRuntimeSites)
            e.dataAllocations = result.dataAllocations
            e.initDataAllocations = result.initDataAllocations
            return .explained(e)
        case .denied(let d):
            return .unexplained(d.description)
        }
    }

    /// `buffer`'s readable bytes, borrowed: the claim keeps a reference to the buffer's storage.
    static func borrowed(_ buffer: ByteBuffer) -> ClaimBytes {
        buffer.withUnsafeReadableBytesWithStorageManagement { bytes, storage in
            ClaimBytes(borrowing: bytes, owner: storage.takeUnretainedValue())
        }
    }
}
