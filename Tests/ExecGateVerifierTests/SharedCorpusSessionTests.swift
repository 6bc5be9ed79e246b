// SPDX-License-Identifier: Apache-2.0
//
// The session attacks of issue 9 at scale, on the shared corpus of real end states (103 Debian
// modules per boot, both boots): every attack instance must be denied, every honest step allowed.
// Prints the figures (tried / denied / false accepts per class). The corpus lives outside the
// repository (/work/shared/corpus, or EXECGATE_CORPUS): without it the class is skipped, naming it.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class SharedCorpusSessionTests: XCTestCase {
    static var corpus: String { ProcessInfo.processInfo.environment["EXECGATE_CORPUS"] ?? "/work/shared/corpus" }

    struct Tally: CustomStringConvertible {
        var tried = 0, denied = 0, falseAccepts = 0
        mutating func attack(_ v: ExecGateWire.Verdict) { tried += 1; if v.decision == .deny { denied += 1 } else { falseAccepts += 1 } }
        mutating func attack(refused: Bool) { tried += 1; if refused { denied += 1 } else { falseAccepts += 1 } }
        var description: String { "tried \(tried), denied \(denied), false accepts \(falseAccepts)" }
    }

    func testSessionAttacksOnBothBoots() throws {
        var symbolDigests: [[UInt8]] = []
        for boot in ["nokaslr-a", "kaslr"] {
            let dir = Self.corpus + "/" + boot
            guard access(dir + "/kallsyms.txt", R_OK) == 0 else { throw XCTSkip("shared corpus boot \(dir) not present") }
            symbolDigests.append(try run(dir, boot))
        }
        // One kernel build, two boots (one with KASLR): one symbol table at link-time addresses,
        // so one `kernel … symbols …` pin covers both.
        XCTAssertEqual(symbolDigests[0], symbolDigests[1])
        XCTAssertEqual(symbolDigests[0].count, 32)
    }

    private func run(_ dir: String, _ label: String) throws -> [UInt8] {
        let v = Verifier(policy: Policy(id: "corpus", version: 1, trust: try Fixtures.debianTrust()))
        let boot = try CaptureBoot.load(dir)
        let registration = try boot.registration(guestID: "g")
        guard case .registerGuestReply(let reply) = v.respond(to: .registerGuest(registration), requestDigest: []) else {
            XCTFail("registration refused")
            return []
        }
        let names = boot.availableModules
        var requests: [String: AuthorizeModule] = [:]
        for n in names { requests[n] = try boot.module(n).request(guestID: "g") }
        var honest = Tally()
        for n in names {
            let r = v.authorize(requests[n]!, requestDigest: [])
            honest.tried += 1
            if r.decision == .allow { honest.denied += 1 } else { XCTFail("\(label) \(n): \(r.message)") }
        }
        let session = try XCTUnwrap(v.guests.session("g"))

        // The same name twice while live.
        var duplicate = Tally()
        for n in names { duplicate.attack(v.authorize(requests[n]!, requestDigest: [])) }

        // Half a key by patch: every single site of every key that has two or more live sites.
        var halfKey = Tally()
        var byKey: [UInt64: [(RuntimeSiteTable, RuntimeSiteTable.Site)]] = [:]
        for t in session.runtimeSites { for s in t.siteList { if let k = s.key { byKey[k, default: []].append((t, s)) } } }
        for (key, sites) in byKey where sites.count >= 2 {
            guard let state = session.state(ofKey: key) else { continue }
            let jumpLabel = sites.allSatisfy { $0.1.kind == .jumpLabel }
            let other: UInt64 = jumpLabel ? 1 - state : 0
            guard other != state else { continue }
            for (t, s) in sites.prefix(4) {
                guard let bytes = t.encoding(at: s.address, state: other) else { continue }
                halfKey.attack(v.authorizePatch(AuthorizePatch(guestID: "g", address: s.address, bytes: bytes), session: session, requestDigest: []))
            }
        }

        // Retire everything (dependents first), then load again at the same addresses.
        var retireReload = Tally()
        for n in names.reversed() {
            guard let base = session.liveModule(n)?.textRange.lowerBound else { continue }
            guard case .retireModuleReply = v.respond(to: .retireModule(RetireModule(guestID: "g", moduleName: n, textBase: base)), requestDigest: []) else {
                XCTFail("\(label): retire \(n) refused"); continue
            }
        }
        XCTAssertEqual(session.allowedModules, [])
        // Cross-module overlap, while reloading: before module n is loaded again (so its name is
        // free), claim it at the base of three modules already live again; each must be denied
        // for the overlap alone.
        var overlap = Tally()
        var reloaded: [String] = []
        for n in names {
            for target in reloaded.suffix(3) {
                guard let base = session.liveModule(target)?.textRange.lowerBound else { continue }
                var r = requests[n]!
                let shift = base &- r.textBase!
                r.textBase = base
                r.sections = r.sections.map { SectionClaim(name: $0.name, address: $0.address &+ shift, bytes: $0.bytes) }
                r.frames = r.frames.map { $0 &+ 0x1000_0000 }
                let verdict = v.authorize(r, requestDigest: [])
                overlap.attack(verdict)
                XCTAssertEqual(verdict.reason, .claimOverlapsLive, "\(n) over \(target): \(verdict.message)")
            }
            reloaded.append(n)
            let r = v.authorize(requests[n]!, requestDigest: [])
            retireReload.tried += 1
            if r.decision == .allow { retireReload.denied += 1 } else { XCTFail("\(label) reload \(n): \(r.message)") }
        }

        // Re-registration (last: a refused reset ends the session): without reset; with reset and
        // one lying pv_ops entry (each entry in turn); with RETPOLINE cleared.
        var reregistration = Tally()
        if case .error = v.respond(to: .registerGuest(registration), requestDigest: []) { reregistration.attack(refused: true) } else { reregistration.attack(refused: false) }
        for entry in 0..<(registration.pvOps.count / 8) {
            var lying = registration
            lying.reset = true
            lying.pvOps.replaceSubrange(entry * 8..<entry * 8 + 8, with: [0x00, 0x10, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00])  // 0x401000
            if case .error(let e) = v.respond(to: .registerGuest(lying), requestDigest: []), e.code == .implausibleFacts {
                reregistration.attack(refused: true)
            } else { reregistration.attack(refused: false) }
        }
        var noRetpoline = registration
        noRetpoline.reset = true
        let bit = FeatureBits.debian6_1.retpoline
        noRetpoline.cpuCapabilities[bit / 8] &= ~UInt8(1 << (bit % 8))
        if case .error = v.respond(to: .registerGuest(noRetpoline), requestDigest: []) { reregistration.attack(refused: true) } else { reregistration.attack(refused: false) }
        XCTAssertTrue(v.guests.session("g") === session, "no refused registration replaced the session")
        // A refused reset still ends it (the VMM revoked its grants before resetting): its
        // requests are denied from then on (protocol.md, register-guest).
        let afterReset = v.authorize(requests[names[0]]!, requestDigest: [])
        XCTAssertEqual(afterReset.reason, .endStateUnavailable, afterReset.message)

        XCTAssertEqual(overlap.falseAccepts + duplicate.falseAccepts + halfKey.falseAccepts + reregistration.falseAccepts, 0)
        XCTAssertGreaterThan(halfKey.tried, 0)
        print("""
            \(label): honest loads \(honest.denied)/\(honest.tried) allowed; retire all + reload \(retireReload.denied)/\(retireReload.tried) allowed
              cross-module overlap: \(overlap)
              duplicate live name:  \(duplicate)
              half-key patch:       \(halfKey)
              re-registration:      \(reregistration)
            """)
        return reply.symbolsDigest
    }
}
