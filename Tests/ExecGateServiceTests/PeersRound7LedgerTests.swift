// SPDX-License-Identifier: Apache-2.0
//
// Peers round 7 on the registry's budget under interleaving: guests registered, reset, loaded,
// retired and removed from many threads at once (as many VMM connections' requests are judged
// on the pool), sharing guest ids, so resets land between a module's judging and its commit, and
// retires race with the resets that end their sessions.

import ExecGateCapture
import ExecGateHost
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Foundation
import XCTest

final class PeersRound7LedgerTests: XCTestCase {
    /// Failed attack (kept): make the live-state ledger drift. Four workers, each on the same two
    /// guest ids: register (or reset, when the other worker registered first), authorize every
    /// fixture module, retire half of them, reset, again, for a number of rounds, then remove both
    /// guests. Were a commit into a session a concurrent reset had just ended charged after the
    /// reset gave the session's bytes back (or a retire given back twice), the ledger would keep
    /// bytes no session holds, or go below them. Invariant at every quiet point: the ledger's live
    /// bytes are the sum of the current sessions' (`GuestSession.liveBytes`); at the end, with
    /// every guest removed, the registry charges nothing.
    func testInterleavedRegisterResetLoadRetireKeepTheLedgerExact() throws {
        let boot = try CaptureBoot.load(PeersRound6LiveStateTests.bootDir)
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()), guests: GuestRegistry())
        let ids = ["a", "b"]
        let names = boot.availableModules
        let modules = try names.map { try boot.module($0) }
        let template = try boot.registration(guestID: "x")
        let rounds = 6
        let allowed = NSLock()
        var allows = 0, resets = 0
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            let id = ids[worker % 2]
            for round in 0..<rounds {
                var r = template
                r.guestID = id
                if case .error = v.respond(to: .registerGuest(r), requestDigest: []) {
                    r.reset = true
                    _ = v.respond(to: .registerGuest(r), requestDigest: [])
                    allowed.lock(); resets += 1; allowed.unlock()
                }
                var mine: [(String, UInt64)] = []
                for (name, m) in zip(names, modules) {
                    let req = m.request(guestID: id)
                    if v.authorize(req, requestDigest: []).decision == .allow, let s = v.guests.session(id), let base = s.liveModule(name)?.textRange.lowerBound {
                        mine.append((name, base))
                    }
                }
                allowed.lock(); allows += mine.count; allowed.unlock()
                for (name, base) in mine.reversed().prefix(mine.count / 2 + round % 2) {
                    _ = v.respond(to: .retireModule(RetireModule(guestID: id, moduleName: name, textBase: base)), requestDigest: [])
                }
            }
        }
        let sessions = ids.compactMap { v.guests.session($0) }
        let held = sessions.reduce(0) { $0 + $1.liveBytes }
        print("ledger under interleaving: \(allows) modules allowed, \(resets) resets; live \(v.guests.liveModuleBytes) bytes, sessions hold \(held)")
        XCTAssertGreaterThan(allows, 0)
        XCTAssertEqual(v.guests.liveModuleBytes, held, "the ledger's live bytes drifted from what the current sessions hold")
        for id in ids { _ = v.guests.remove(id) }
        XCTAssertEqual(v.guests.liveModuleBytes, 0, "removed guests' live modules are still charged")
        XCTAssertEqual(v.guests.chargedBytes, 0, "the registry charges bytes with no guest registered")
    }
}
