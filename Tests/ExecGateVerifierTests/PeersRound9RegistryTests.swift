// SPDX-License-Identifier: Apache-2.0
//
// Hostile peers, round 9, at the registry: registrations racing each other.

import ExecGateCapture
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Foundation
import XCTest

final class PeersRound9RegistryTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x99, count: 32)

    /// Attack (failed; kept): concurrent registrations of two builds claiming one kernel digest.
    /// Eight guest ids are registered, reset and re-registered at once from many threads (what
    /// pipelined register-guest requests on many connections do on the pool): each time onto the
    /// honest build, a lying build of the same `kernel_digest` (exported text moved by 16), or the
    /// honest build by digest. Copies are built outside the registry's lock and stored under it,
    /// resets release the old build's count and charge, and a build by digest attaches only to a
    /// copy held at that moment: a race could leave a copy counted for guests that left it, a
    /// guest on a copy the store no longer holds (or two copies of one key), or a charge that is
    /// not the final state's. Why it fails: the store and the charges are decided once, under the
    /// lock, from what is held then (a copy built meanwhile by another registration of the same key
    /// is dropped for the stored one). Checked: each held build's guest count is the number of
    /// sessions on it, every session's copy is the one the store holds, and the registry's charge
    /// equals a fresh registry's for the same final guests registered one by one.
    func testConcurrentRegistrationsOfTwoBuildsOfOneKernelDigestKeepTheLedgerExact() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let v = try verifier()
        let honest = try registration(boot, "t")
        var lie = honest
        let keep = Set(["__x86_return_thunk", "retbleed_return_thunk", "srso_return_thunk", "srso_alias_return_thunk", "its_return_thunk"])
        for i in lie.symbols.indices where lie.symbols[i].exported && lie.symbols[i].isText && !keep.contains(lie.symbols[i].name) {
            lie.symbols[i].address &+= 16
        }
        let honestDigest = KernelFactsKey.symbolsDigest(honest)
        XCTAssertNotEqual(honestDigest, KernelFactsKey.symbolsDigest(lie))
        var ops: [RegisterGuest] = []
        for round in 0..<4 {
            for g in 0..<8 {
                var r: RegisterGuest
                switch (g + round) % 3 {
                case 0: r = honest
                case 1: r = lie
                default: r = honest.byDigest(honestDigest)
                }
                r.guestID = "g\(g)"
                r.reset = round > 0 || g % 2 == 1
                ops.append(r)
            }
        }
        let lock = NSLock()
        var outcomes: [String: Int] = [:]
        DispatchQueue.concurrentPerform(iterations: ops.count) { i in
            let reply = v.respond(to: .registerGuest(ops[i]), requestDigest: [])
            let what: String
            switch reply {
            case .registerGuestReply: what = "registered"
            case .error(let e): what = "\(e.code)"
            default: what = "other"
            }
            lock.lock(); outcomes[what, default: 0] += 1; lock.unlock()
        }
        print("concurrent registrations of two builds of one kernel digest: \(outcomes.sorted { $0.key < $1.key })")
        let sessions = (0..<8).compactMap { v.guests.session("g\($0)") }
        XCTAssertFalse(sessions.isEmpty)
        var onBuild: [KernelFactsKey: Int] = [:]
        for s in sessions { if let k = s.kernel.key { onBuild[k, default: 0] += 1 } }
        let held = Dictionary(uniqueKeysWithValues: v.guests.sharedBuilds.map { ($0.key, $0.guests) })
        XCTAssertEqual(held, onBuild, "a held build's guest count is not the number of sessions on it")
        // Every session is on the copy the store holds for its key (a guest on a copy that is no
        // longer held, or one of two copies of a key, is a second unaccounted copy).
        let copies = Dictionary(sessions.compactMap { s in s.kernel.key.map { ($0, s.kernel) } }, uniquingKeysWith: { a, _ in a })
        for s in sessions { if let k = s.kernel.key { XCTAssertTrue(s.kernel === copies[k], "\(s.registration.guestID): a second copy of its build") } }
        // The charge is the final state's: the same guests registered one by one, in full.
        let fresh = try verifier()
        for s in sessions {
            // (A session keeps its registration without the symbol records: the build holds them.)
            var r = s.kernel.key?.symbolsDigest == honestDigest ? honest : lie
            r.guestID = s.registration.guestID
            _ = try register(fresh, r)
        }
        XCTAssertEqual(v.guests.chargedBytes, fresh.guests.chargedBytes, "the charge after the race is not the final guests'")
        for s in sessions { v.guests.remove(s.registration.guestID) }
        XCTAssertEqual(v.guests.chargedBytes, 0)
        XCTAssertTrue(v.guests.sharedBuilds.isEmpty)
    }

    /// What a retry of a committed request gets (docs/protocol.md, "Connections and limits": a
    /// closed connection fails its in-flight requests and the VMM retries them). Judging commits:
    /// an allowed module is live in the session before its reply is written, so when the
    /// connection closes before the reply leaves (the peer's hang-up, a deadline, unread replies
    /// past the reply pool) the retry is judged against a state that holds it — denied
    /// `claim.module-already-live`, not allowed again; the VMM that retires it (it granted nothing)
    /// and asks again gets the allow. A retried register-guest meets `guest-exists` (send reset=1).
    func testARetryOfACommittedModuleIsDeniedAlreadyLiveUntilRetired() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let v = try verifier()
        let r = try registration(boot, "retry")
        _ = try register(v, r)
        var allowed: (name: String, request: AuthorizeModule, base: UInt64)?
        for name in boot.availableModules {
            let request = try boot.module(name).request(guestID: "retry")
            let verdict = v.authorize(request, requestDigest: [])
            if verdict.decision == .allow, let base = verdict.grantBase { allowed = (verdict.moduleName, request, base); break }
        }
        let first = try XCTUnwrap(allowed, "no fixture module is allowed alone")
        let retry = v.authorize(first.request, requestDigest: [])
        XCTAssertEqual(retry.decision, .deny)
        XCTAssertEqual(retry.reason, .moduleAlreadyLive, retry.message)
        guard case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "retry", moduleName: first.name, textBase: first.base)), requestDigest: []) else {
            return XCTFail("the module the VMM never granted could not be retired")
        }
        XCTAssertEqual(v.authorize(first.request, requestDigest: []).decision, .allow, "asked again after the retire")
        guard case .error(let e) = v.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("a retried registration was taken") }
        XCTAssertEqual(e.code, .guestExists)
    }
}
