// SPDX-License-Identifier: Apache-2.0
//
// A request with no byte claimed, for tests of the signature-only judgement.

import ExecGateWire

extension AuthorizeModule {
    /// This request without its claim: no text, init text, frames or per-cpu base, and its
    /// sections' names and addresses only (the judgement a signature-only policy makes).
    public var withoutClaimedBytes: AuthorizeModule {
        var bare = self
        (bare.text, bare.textBase, bare.frames, bare.initText, bare.initBase, bare.initFrames, bare.perCPUBase) = (nil, nil, [], nil, nil, [], nil)
        bare.sections = bare.sections.map { SectionClaim(name: $0.name, address: $0.address) }
        return bare
    }
}
