// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review (round 11) of the capability words against the guest's own vulnerabilities
// report (FactsPlausibility.mitigationMismatch): a mitigation the kernel reports sets its
// synthetic feature bit in the same boot (arch/x86/kernel/cpu/bugs.c, 6.12.117), so a report
// without its bit is a lie (or a late read) that would have the replay explain other bytes.

import _ExecGateInternals
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

    /// Attack (round 14): 64,894 trailing spaces (the field's room in a register-guest by digest,
    /// a 66 KB body) after one report line. The value was trimmed a `Character` at a time with
    /// `last`/`dropLast()`, O(N²): 8.9 s of a judging thread per registration, refused ones too,
    /// so four in a row kept another guest's module waiting 27 s. Rule: work on a guest's facts is
    /// linear in their size (`trimmingBlanks`, one pass from each end on the UTF-8 bytes).
    /// Asserted: the padded report is judged as the plain one (refused, then registered, with the
    /// same reason), in well under the seconds it took (a generous bound: 2 s for both).
    func testTrailingBlanksInTheReportCostLinearTime() {
        let retpoline = 11 * 32 + 12, rethunk = 11 * 32 + 14
        let pad = String(repeating: " \t", count: 32_447)
        let t0 = MonotonicClock.seconds()
        guard case .refused(let code, let why) = register([rethunk], "spectre_v2: Mitigation: Retpolines" + pad) else { return XCTFail("RETPOLINE clear was accepted") }
        XCTAssertEqual(code, .implausibleFacts)
        XCTAssertTrue(why.contains("X86_FEATURE_RETPOLINE is clear"), why)
        guard case .registered = register([retpoline, rethunk], "spectre_v2: Mitigation: Retpolines" + pad) else { return XCTFail("the consistent facts") }
        XCTAssertLessThan(MonotonicClock.seconds() - t0, 2, "64,894 trailing blanks took seconds to trim")
    }

    /// Attack (round 14): register and remove guests with 60,000-byte ids, over and over. The
    /// removal history (kept so a reset that arrived before a removal never registers the guest
    /// again) held each id's bytes twice for the last 4,096–8,192 removals, after the guest's
    /// charge was given back: `serve` grew from 90 to 991 MB at 8,200 removals, past the service
    /// VM's memory. Rule: what the service holds for a peer is bounded or charged; the history
    /// now keys an id by its SHA-256. Asserted: 5,000 such cycles grow this process by less than
    /// 150 MB (the old history held ~600 MB of them; 981 MB measured at 9,000).
    func testTheRemovalHistoryDoesNotHoldLongGuestIDs() {
        let registry = GuestRegistry()
        let rss0 = ProcessUsage.residentBytes()
        for i in 0..<5_000 {
            let id = String(i) + String(repeating: "x", count: 60_000 - String(i).count)
            guard case .registered = registry.register(RegisterGuest(guestID: id, kernelRelease: "6.1.0-56-amd64")) else { return XCTFail("register \(i)") }
            XCTAssertTrue(registry.remove(id))
        }
        let grown = ProcessUsage.residentBytes() - rss0
        print("removal history: 5,000 removals of 60,000-byte ids, resident +\(grown >> 20) MiB")
        XCTAssertLessThan(grown, 150 << 20, "the removal history holds the ids")
    }
}
