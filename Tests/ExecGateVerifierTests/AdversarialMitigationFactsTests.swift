// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 11) of the capability words against the guest's own vulnerabilities
// report (FactsPlausibility.mitigationMismatch): a mitigation the kernel reports sets its
// synthetic feature bit in the same boot (arch/x86/kernel/cpu/bugs.c, 6.12.117), so a report
// without its bit is a lie (or a late read) that would have the replay explain other bytes.

import ExecGateVerifier
import ExecGateWire
import XCTest

final class AdversarialMitigationFactsTests: XCTestCase {
    private func caps(_ bits: [Int]) -> [UInt8] {
        var w = [UInt32](repeating: 0, count: 24)
        for b in bits { w[b >> 5] |= 1 << UInt32(b & 31) }
        return w.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    }

    private func register(_ bits: [Int], _ report: String, release: String = "6.12.117+deb12-amd64") -> GuestRegistry.Registration {
        GuestRegistry().register(RegisterGuest(guestID: "g", kernelRelease: release, cpuCapabilities: caps(bits), vulnerabilities: report))
    }

    /// HOLE: retbleed_select_mitigation() (RETBLEED_MITIGATION_STUFF, "Mitigation: Stuffing") and
    /// its_select_mitigation() (ITS_MITIGATION_RETPOLINE_STUFF, "Mitigation: Retpolines, Stuffing
    /// RSB") both setup_force_cpu_cap(X86_FEATURE_CALL_DEPTH) (11*32+19 on 6.12). A 6.12
    /// registration reporting either with CALL_DEPTH clear was accepted, and its modules were
    /// replayed without call-depth tracking (calls not through their accounting thunks) instead
    /// of being denied by name.
    func testStuffingReportedWithoutCallDepthIsRefused() {
        let retpoline = 11 * 32 + 12, rethunk = 11 * 32 + 14, callDepth = 11 * 32 + 19
        for report in ["spectre_v2: Mitigation: Retpolines\nretbleed: Mitigation: Stuffing",
                       "spectre_v2: Mitigation: Retpolines\nindirect_target_selection: Mitigation: Retpolines, Stuffing RSB"] {
            guard case .refused(let code, let why) = register([retpoline, rethunk], report) else { return XCTFail("accepted: \(report)") }
            XCTAssertEqual(code, .implausibleFacts)
            XCTAssertTrue(why.contains("CALL_DEPTH"), why)
            guard case .registered = register([retpoline, rethunk, callDepth], report) else { return XCTFail("the consistent facts: \(report)") }
        }
        // 6.1 has no call-depth tracking (no CALL_DEPTH bit, no "Stuffing" mitigation): nothing to check.
        guard case .registered = register([retpoline, rethunk], "spectre_v2: Mitigation: Retpolines\nretbleed: Mitigation: Stuffing", release: "6.1.0-56-amd64") else {
            return XCTFail("6.1")
        }
    }
}
