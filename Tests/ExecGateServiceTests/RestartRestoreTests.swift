// SPDX-License-Identifier: Apache-2.0
//
// A verifier restart under load (docs/protocol.md, "Restart and restore"): the serve process is
// killed with SIGKILL while a VMM streams requests, comes back on the same socket, and the VMM
// sees the restart (a new hello-reply instance id), gets `unknown-guest` ("restore needed") —
// never a deny — for its guest, restores it (register again, re-present each live module in load
// order with its current claim), and a dependent module and a run-time patch are allowed again.
// Every request sent gets a verdict or a precise error; none is lost silently.
//
// Input: the real captured end state in Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a
// (provenance in its README): its modules in load order, among them llc, and stp which imports
// llc's exports.

import ExecGateCapture
import ExecGateClient
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import NIOCore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class RestartRestoreTests: XCTestCase {
    func testRestartIsSeenAndAGuestWithADependencyChainIsRestored() async throws {
        let dir = Fixtures.temporaryDirectory()
        let certPath = dir + "/kernel.pem"
        try Fixtures.writeFile(certPath, Array(try Fixtures.debianCertificates()[0].pem.utf8))
        let sock = dir + "/vmm.sock"
        func serve() -> pid_t {
            Fixtures.spawnExecgate(["serve", "--listen", "unix:" + sock, "--trust", certPath, "--log-level", "critical"],
                                   stdoutPath: dir + "/out", stderrPath: dir + "/err")
        }
        func connect() async throws -> ExecGateClient {
            for _ in 0..<100 {
                if let c = try? await ExecGateClient.connect(to: .unix(path: sock), timeout: 20) { return c }
                usleep(100_000)
            }
            return try await ExecGateClient.connect(to: .unix(path: sock), timeout: 20)
        }

        let boot = try CaptureBoot.load(Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a")
        // Every live module, in load order (stp imports llc's exports; 8021q imports garp and mrp).
        let live = try boot.availableModules.map { try boot.module($0).request(guestID: "g") }
        let stp = try boot.module("stp").request(guestID: "g")
        let registration = try boot.registration(guestID: "g")
        // A legal run-time patch of the chain's code: found with an in-process verifier (a site's current bytes).
        let patch = try legalPatch(boot: boot)

        var pid = serve()
        defer { if pid > 0 { kill(pid, SIGKILL); _ = Fixtures.wait(pid) } }
        var vmm = try await connect()
        let firstInstance = try await vmm.hello(clientName: "restart-test").instanceID
        XCTAssertEqual(firstInstance.count, 16)
        let registered = try await vmm.register(registration)
        // The first judgement of every live module (the restore must reach the same verdicts).
        var first: [String: Verdict.Decision] = [:]
        for (name, m) in zip(boot.availableModules, live) { first[name] = try await vmm.authorize(m).decision }
        XCTAssertEqual(first["llc"], .allow)
        XCTAssertEqual(first["stp"], .allow, "the dependent module")
        let patchFirst = try await verdict(vmm, patch)
        XCTAssertEqual(patchFirst?.decision, .allow)

        // Under load: patch requests stream while the server is killed.
        let outcomes = NIOLockedValueBox((verdicts: 0, errors: 0, other: [String]()))
        let loaded = vmm
        let load = Task {
            for _ in 0..<100_000 {
                do {
                    let reply = try await loaded.send(.authorizePatch(patch))
                    outcomes.withLockedValue { o in if case .verdict = reply { o.verdicts += 1 } else { o.other.append("\(reply)") } }
                } catch ClientError.connectionClosed {
                    outcomes.withLockedValue { $0.errors += 1 }
                    return
                } catch {
                    outcomes.withLockedValue { $0.other.append("\(error)") }
                    return
                }
            }
        }
        while outcomes.withLockedValue({ $0.verdicts }) < 50 { try await Task.sleep(nanoseconds: 5_000_000) }
        kill(pid, SIGKILL)
        _ = Fixtures.wait(pid)
        pid = -1
        await load.value
        let o = outcomes.withLockedValue { $0 }
        XCTAssertEqual(o.other, [], "every request got a verdict or a precise error")
        XCTAssertEqual(o.errors, 1, "the request in flight at the kill failed with connection-closed, not silently")
        await vmm.close()

        // The server comes back on the same path (the dead server's socket is stale: replaced).
        pid = serve()
        vmm = try await connect()
        let secondInstance = try await vmm.hello(clientName: "restart-test").instanceID
        XCTAssertNotEqual(secondInstance, firstInstance, "the VMM sees the restart")

        // Not restored yet: a precise error, never a deny.
        let before = try await vmm.send(.authorizePatch(patch))
        guard case .error(let e) = before else { return XCTFail("expected unknown-guest, got \(before)") }
        XCTAssertEqual(e.code, .unknownGuest)
        XCTAssertTrue(e.message.contains("restore needed"), e.message)
        let moduleBefore = try await vmm.send(.authorizeModule(stp))
        guard case .error(let me) = moduleBefore else { return XCTFail("expected unknown-guest, got \(moduleBefore)") }
        XCTAssertEqual(me.code, .unknownGuest)

        // Restore: register again, then every live module in load order with its current claim.
        // The VMM tries the build's digest first (it kept it from the first reply); the restarted
        // server holds no build, so it answers unknown-build and the client sends the records.
        let (_, byDigest) = try await vmm.register(registration, knownBuild: registered.symbolsDigest)
        XCTAssertFalse(byDigest, "a restarted server attached a guest to a build it cannot hold")
        let dependentFirst = try await vmm.authorize(stp)
        XCTAssertEqual(dependentFirst.decision, .deny, "out of order: its dependency is not re-presented yet")
        var again: [String: Verdict.Decision] = [:]
        for (name, m) in zip(boot.availableModules, live) { again[name] = try await vmm.authorize(m).decision }
        XCTAssertEqual(again, first, "each module judged as strictly as the first time")
        XCTAssertEqual(again["stp"], .allow, "the dependent module is allowed again")
        let patchAgain = try await verdict(vmm, patch)
        XCTAssertEqual(patchAgain?.decision, .allow, "run-time patches of restored code are judged again")
        await vmm.close()
        kill(pid, SIGTERM)
        XCTAssertEqual(Fixtures.wait(pid), 0)
        pid = -1
    }

    private func verdict(_ c: ExecGateClient, _ p: AuthorizePatch) async throws -> Verdict? {
        if case .verdict(let v) = try await c.send(.authorizePatch(p)) { return v }
        return nil
    }

    /// The current bytes of one run-time site of a live module (a legal state: the module was explained with them).
    private func legalPatch(boot: CaptureBoot) throws -> AuthorizePatch {
        let v = Verifier(policy: Policy(id: "probe", version: 1, trust: try Fixtures.debianTrust()))
        _ = v.respond(to: .registerGuest(try boot.registration(guestID: "g")), requestDigest: [])
        for name in boot.availableModules { _ = v.authorize(try boot.module(name).request(guestID: "g"), requestDigest: []) }
        let session = try XCTUnwrap(v.guests.session("g"))
        for table in session.runtimeSites {
            let m = try boot.module(table.module)
            for address in table.addresses {
                let offset = Int(address - m.claim.textBase)
                for len in [5, 2] where offset + len <= m.claim.text.count {
                    let p = AuthorizePatch(guestID: "g", address: address, bytes: Array(m.claim.text[offset..<offset + len]))
                    if v.authorizePatch(p, session: session, requestDigest: []).decision == .allow { return p }
                }
            }
        }
        throw XCTSkip("the fixture's modules have no run-time patch site")
    }
}
