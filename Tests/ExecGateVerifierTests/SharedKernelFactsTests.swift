// SPDX-License-Identifier: Apache-2.0
//
// One copy of a kernel build's facts for every guest of that build (KernelFactsStore.swift):
// sharing, release when the last guest goes, the budget counted per copy + per guest, and a
// registration that claims a known kernel digest with other facts: it gets its own copy and does
// not change what any other guest is judged against. Guests judged in parallel get the verdicts
// they get one at a time. Input: the real captured end state in
// Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a (Debian 6.1 symbols, signed modules).

import Dispatch
import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOConcurrencyHelpers
import XCTest

/// Registration helpers both classes below use: a verifier with the Debian anchors and end state
/// required, the fixture boot's registration under a fixed kernel digest, and a registration that
/// must succeed.
protocol SharedFactsTesting {
    static var kernelDigest: [UInt8] { get }
}

extension SharedFactsTesting {
    func registration(_ boot: CaptureBoot, _ id: String) throws -> RegisterGuest {
        var r = try boot.registration(guestID: id)
        r.kernelDigest = Self.kernelDigest
        return r
    }

    func verifier() throws -> Verifier {
        Verifier(policy: Policy(id: "shared", version: 1, trust: try Fixtures.debianTrust(), endState: .required))
    }

    func register(_ v: Verifier, _ r: RegisterGuest) throws -> GuestSession {
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        guard case .registerGuestReply = reply else { throw RegistrationRefused(reply: "\(reply)") }
        return try XCTUnwrap(v.guests.session(r.guestID))
    }

    /// Every fact a guest is judged by, table by table, equals the one building its registration
    /// alone (at run-time addresses) gives.
    func assertSameFacts(_ got: GuestFacts, as alone: GuestFacts, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.exports.dictionary(), alone.exports.dictionary(), file: file, line: line)
        XCTAssertEqual(Set(got.functionEntries), Set(alone.functionEntries), file: file, line: line)
        XCTAssertEqual(got.staticCallTrustedTargets.dictionary(), alone.staticCallTrustedTargets.dictionary(), file: file, line: line)
        XCTAssertEqual(got.capabilities, alone.capabilities, file: file, line: line)
        XCTAssertEqual(got.pvOps, alone.pvOps, file: file, line: line)
        XCTAssertEqual(got.coreInitRanges, alone.coreInitRanges, file: file, line: line)
        XCTAssertEqual(got.coreROAfterInit, alone.coreROAfterInit, file: file, line: line)
        XCTAssertEqual(got.modulePercpuRange, alone.modulePercpuRange, file: file, line: line)
        XCTAssertEqual(got.uniprocessorPatched, alone.uniprocessorPatched, file: file, line: line)
        XCTAssertEqual(got.kernelRelease, alone.kernelRelease, file: file, line: line)
        XCTAssertEqual(got.paravirtNop, alone.paravirtNop, file: file, line: line)
        XCTAssertEqual(got.paravirtBUG, alone.paravirtBUG, file: file, line: line)
        XCTAssertEqual(got.staticCallReturn0, alone.staticCallReturn0, file: file, line: line)
        XCTAssertEqual(got.staticCallReturn, alone.staticCallReturn, file: file, line: line)
        XCTAssertEqual(got.itsReturnThunk, alone.itsReturnThunk, file: file, line: line)
        XCTAssertEqual(got.returnThunk, alone.returnThunk, file: file, line: line)
        XCTAssertEqual(got.kaslrSlide, alone.kaslrSlide, file: file, line: line)
    }
}

final class SharedKernelFactsTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x61, count: 32)

    func boot() throws -> CaptureBoot { try CaptureBoot.load(EndStateVerifierTests.bootDir) }


    func testGuestsOfOneBuildShareOneCopyAndAreJudgedAlike() throws {
        let boot = try boot()
        let v = try verifier()
        let a = try register(v, try registration(boot, "a"))
        let b = try register(v, try registration(boot, "b"))
        XCTAssertTrue(a.kernel === b.kernel, "the second guest of the build got its own copy")
        XCTAssertNotNil(a.kernel.key)
        XCTAssertEqual(v.guests.sharedBuilds.count, 1)
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 2)
        XCTAssertTrue(a.registration.symbols.isEmpty && b.registration.symbols.isEmpty, "a session keeps its own copy of the symbol records")
        // The facts each guest is judged by are the ones building them alone gives.
        let alone = GuestFactsBuilder.facts(from: try registration(boot, "b"))
        assertSameFacts(b.facts, as: alone)
        // Both guests' modules are explained, each in its own session.
        for name in boot.availableModules {
            for g in ["a", "b"] {
                let verdict = v.authorize(try boot.module(name).request(guestID: g), requestDigest: [])
                XCTAssertEqual(verdict.decision, .allow, "\(g) \(name): \(verdict.message)")
            }
        }
        XCTAssertEqual(a.allowedModules, b.allowedModules)
    }

    func testTheCopyIsReleasedWithTheLastGuest() throws {
        let boot = try boot()
        let registry = GuestRegistry()
        weak var copy: KernelFacts?
        try autoreleasepoolCompat {
            guard case .registered(let a) = registry.register(try registration(boot, "a")) else { return XCTFail("a refused") }
            guard case .registered = registry.register(try registration(boot, "b")) else { return XCTFail("b refused") }
            copy = a.kernel
        }
        let oneBuild = try XCTUnwrap(copy).symbolBytes
        XCTAssertEqual(registry.sharedBuilds.first?.guests, 2)
        XCTAssertTrue(registry.remove("a"))
        XCTAssertFalse(registry.remove("a"))
        XCTAssertEqual(registry.sharedBuilds.first?.guests, 1)
        XCTAssertNotNil(copy, "released while a guest still uses it")
        XCTAssertGreaterThan(registry.chargedBytes, oneBuild)
        // A reset onto the same build keeps the copy (and its count).
        try autoreleasepoolCompat {
            var again = try registration(boot, "b")
            again.reset = true
            guard case .registered(let b1) = registry.register(again) else { return XCTFail("reset refused") }
            XCTAssertTrue(b1.kernel === copy)
            XCTAssertEqual(registry.sharedBuilds.first?.guests, 1)
        }
        // A reset onto another build (one more symbol) moves the last guest off the copy.
        var moved = try registration(boot, "b")
        moved.reset = true
        moved.symbols.append(KernelSymbol(name: "another_build", address: moved.symbols[0].address, type: UInt8(ascii: "t"), exported: false))
        let movedKey = KernelFactsKey.of(moved, symbolsDigest: KernelFactsKey.symbolsDigest(moved))
        guard case .registered(let b2) = registry.register(moved) else { return XCTFail("reset refused") }
        XCTAssertNil(copy, "the copy outlived its last guest")
        XCTAssertEqual(registry.sharedBuilds.count, 1)
        XCTAssertEqual(registry.sharedBuilds.first?.key, movedKey)
        XCTAssertFalse(b2.kernel.symbolCount == 0)
        XCTAssertTrue(registry.remove("b"))
        XCTAssertTrue(registry.sharedBuilds.isEmpty)
        XCTAssertEqual(registry.chargedBytes, 0)
    }

    /// A registration claiming the honest guests' kernel digest with other symbols (every exported
    /// text symbol moved by 16 bytes, still inside core text, so each rule passes) is kept apart.
    func testKnownDigestWithOtherFactsDoesNotPoisonTheSharedCopy() throws {
        let boot = try boot()
        let v = try verifier()
        let honest = try register(v, try registration(boot, "honest"))
        let before = honest.kernel.buildFacts.exports.dictionary()
        var lie = try registration(boot, "liar")
        var moved = 0
        let keep = Set(["__x86_return_thunk", "retbleed_return_thunk", "srso_return_thunk", "srso_alias_return_thunk", "its_return_thunk"])
        for i in lie.symbols.indices where lie.symbols[i].exported && lie.symbols[i].isText && !keep.contains(lie.symbols[i].name) {
            lie.symbols[i].address &+= 16
            moved += 1
        }
        XCTAssertGreaterThan(moved, 10)
        XCTAssertEqual(lie.kernelDigest, honest.registration.kernelDigest)
        let liar = try register(v, lie)
        XCTAssertFalse(liar.kernel === honest.kernel, "other facts were given the shared copy")
        XCTAssertNotEqual(liar.kernel.key, honest.kernel.key)
        // A later honest guest still finds the honest copy, unchanged.
        let late = try register(v, try registration(boot, "late"))
        XCTAssertTrue(late.kernel === honest.kernel)
        XCTAssertEqual(honest.kernel.buildFacts.exports.dictionary(), before)
        XCTAssertEqual(late.facts.exports.dictionary(), before)
        XCTAssertEqual(v.guests.sharedBuilds.first { $0.key == honest.kernel.key }?.guests, 2)
        // Verdicts: the honest guests' modules are explained; the liar's, judged by its own
        // (moved) exports, are not.
        var liarDenied = 0
        for name in boot.availableModules {
            let request = try boot.module(name).request(guestID: "liar")
            if v.authorize(request, requestDigest: []).decision == .deny { liarDenied += 1 }
            for g in ["honest", "late"] {
                let verdict = v.authorize(try boot.module(name).request(guestID: g), requestDigest: [])
                XCTAssertEqual(verdict.decision, .allow, "\(g) \(name): \(verdict.message)")
            }
        }
        XCTAssertGreaterThan(liarDenied, 0, "moved exports were never noticed")
    }

    /// The symbols digest the registry finds a build by is the protocol's (docs/protocol.md,
    /// "Kernel binding"): SHA-256 over `{u64 address − slide (image addresses only); u8 type; u8 flags;
    /// u16 name_len; name}` big-endian, in the order sent — packed here independently.
    func testSymbolsDigestIsTheProtocolsOne() throws {
        var r = try registration(try boot(), "d")
        r.kaslrSlide = 0x0c00_0000
        for i in r.symbols.indices where r.symbols[i].address >= 0xffff_ffff_8000_0000 { r.symbols[i].address &+= 0x0c00_0000 }
        r.symbols[0].isFunction = true
        var packed: [UInt8] = []
        for s in r.symbols {
            let a = s.address >= 0xffff_ffff_8000_0000 ? s.address - r.kaslrSlide : s.address
            for k in stride(from: 56, through: 0, by: -8) { packed.append(UInt8((a >> UInt64(k)) & 0xff)) }
            packed.append(s.type)
            packed.append((s.exported ? 1 : 0) | (s.isFunction ? 2 : 0))
            let name = Array(s.name.utf8)
            packed += [UInt8(name.count >> 8), UInt8(name.count & 0xff)] + name
        }
        XCTAssertEqual(RegisterGuestReply.linkTimeSymbolRecords(r), packed)
        XCTAssertEqual(KernelFactsKey.symbolsDigest(r).count, 32)
    }

    /// Removing the slide is not one-to-one for a run-time address just above 0xffffffff80000000:
    /// such a registration gets a private copy (never found by, nor finding, another).
    func testAmbiguousSlideGetsAPrivateCopy() throws {
        let boot = try boot()
        let registry = GuestRegistry()
        var r = try registration(boot, "odd")
        r.kaslrSlide = 0x20_0000
        r.symbols.append(KernelSymbol(name: "odd_absolute", address: 0xffff_ffff_8000_0800, type: UInt8(ascii: "A"), exported: false))
        XCTAssertNil(KernelFactsKey.of(r, symbolsDigest: KernelFactsKey.symbolsDigest(r)))
        guard case .registered(let s) = registry.register(r) else { return XCTFail("refused") }
        XCTAssertNil(s.kernel.key)
        XCTAssertTrue(registry.sharedBuilds.isEmpty)
        XCTAssertGreaterThanOrEqual(registry.chargedBytes, s.kernel.symbolBytes)
        XCTAssertTrue(registry.remove("odd"))
        XCTAssertEqual(registry.chargedBytes, 0)
    }

    /// The budget counts each copy once and each guest's own facts: many guests of one build fit
    /// where two builds do not; the guest cap holds regardless.
    func testBudgetCountsEachCopyOnceAndEachGuest() throws {
        let boot = try boot()
        let probe = GuestRegistry()
        guard case .registered(let first) = probe.register(try registration(boot, "gp")) else { return XCTFail("refused") }
        let build = first.kernel.symbolBytes
        let perGuest = probe.chargedBytes - build
        XCTAssertGreaterThan(perGuest, 0)
        let registry = GuestRegistry(maximumGuests: 6, maximumSymbolBytes: build + 6 * perGuest)
        for i in 0..<6 {
            guard case .registered = registry.register(try registration(boot, "g\(i)")) else { return XCTFail("g\(i) refused") }
        }
        XCTAssertEqual(registry.chargedBytes, build + 6 * perGuest)
        guard case .refused(let c, let why) = registry.register(try registration(boot, "g6")) else { return XCTFail("over the guest cap, kept") }
        XCTAssertEqual(c, .unavailable)
        XCTAssertTrue(why.contains("limit is 6"), why)
        // A second build does not fit beside the first.
        XCTAssertTrue(registry.remove("g5"))
        var other = try registration(boot, "g5")
        other.symbols.append(KernelSymbol(name: "another_build", address: other.symbols[0].address, type: UInt8(ascii: "t"), exported: false))
        guard case .refused(let c2, let why2) = registry.register(other) else { return XCTFail("a second build over budget was kept") }
        XCTAssertEqual(c2, .unavailable)
        XCTAssertTrue(why2.contains("budget"), why2)
        XCTAssertNil(registry.session("g5"))
        XCTAssertEqual(registry.sharedBuilds.count, 1)
        // The same build still does.
        guard case .registered = registry.register(try registration(boot, "g5")) else { return XCTFail("same build refused") }
    }

    /// Guests judged concurrently (one thread per guest, each in load order) get exactly the
    /// verdicts a sequential run gives.
    func testParallelJudgementsMatchSequentialOnes() throws {
        let boot = try boot()
        let names = boot.availableModules
        let requests = try names.map { try boot.module($0).request(guestID: "x") }
        func run(guests: Int, parallel: Bool) throws -> [[String]] {
            let v = try verifier()
            for g in 0..<guests { _ = try register(v, try registration(boot, "g\(g)")) }
            let out = NIOLockedValueBox([[String]](repeating: [], count: guests))
            let judge = { (g: Int) in
                var got: [String] = []
                for var r in requests {
                    r.guestID = "g\(g)"
                    let verdict = v.authorize(r, requestDigest: [])
                    got.append("\(verdict.moduleName) \(verdict.decision) \(verdict.reason.name) \(verdict.message)")
                }
                out.withLockedValue { $0[g] = got }
            }
            if parallel { DispatchQueue.concurrentPerform(iterations: guests, execute: judge) } else { (0..<guests).forEach(judge) }
            return out.withLockedValue { $0 }
        }
        let sequential = try run(guests: 4, parallel: false)
        let parallel = try run(guests: 4, parallel: true)
        XCTAssertEqual(sequential.first?.count, names.count)
        XCTAssertTrue(sequential.allSatisfy { $0 == sequential[0] })
        XCTAssertEqual(parallel, sequential)
        XCTAssertTrue(sequential[0].allSatisfy { $0.contains(" allow ") }, sequential[0].joined(separator: "\n"))
    }

    /// Runs `body` so that its locals are gone when it returns (weak references can then be checked).
    private func autoreleasepoolCompat(_ body: () throws -> Void) rethrows { try body() }
}

/// Guests of one build at DIFFERENT KASLR slides share one copy (at link-time addresses) and each
/// is judged exactly as its own unshared registration would be.
final class SlidSharedKernelFactsTests: XCTestCase, SharedFactsTesting {
    static let kernelDigest = [UInt8](repeating: 0x62, count: 32)

    /// `r` booted at `delta` more slide: every image address and non-NULL pv_ops entry and the
    /// return thunk move (what the VMM reads from a guest of the same build at another slide).
    static func moved(_ r: RegisterGuest, by delta: UInt64, id: String) -> RegisterGuest {
        var m = r
        m.guestID = id
        m.kaslrSlide = r.kaslrSlide + delta
        m.symbols = r.symbols.map { var s = $0; if s.address >= KernelSlide.imageBase { s.address += delta }; return s }
        m.pvOps = []
        for e in GuestFactsBuilder.facts(from: r).pvOps {
            let v = e == 0 ? 0 : e + delta
            withUnsafeBytes(of: v.littleEndian) { m.pvOps += $0 }
        }
        m.returnThunk = r.returnThunk.map { $0 + delta }
        m.staticCallKeys = r.staticCallKeys.map { k in
            var k = k
            k.key += delta
            if k.current != 0 { k.current += delta }
            k.allowed = k.allowed.map { $0 == 0 ? 0 : $0 + delta }
            return k
        }
        return m
    }


    /// The engine facts of `shared` (read from a shared copy at its slide) are those of `alone`
    /// (built from the registration alone, at run-time addresses), table by table, and exact
    /// membership holds at every address near a real entry — including the entries of a guest at
    /// another slide.
    func assertSameFacts(_ shared: GuestFacts, _ alone: GuestFacts, probes: [UInt64], file: StaticString = #filePath, line: UInt = #line) {
        assertSameFacts(shared, as: alone, file: file, line: line)
        let entries = Set(alone.functionEntries)
        let targets = alone.staticCallTrustedTargets.dictionary()
        var mismatches = 0
        for a in probes {
            if shared.functionEntries.contains(a) != entries.contains(a) { mismatches += 1 }
            if shared.staticCallTrustedTargets[a] != targets[a] { mismatches += 1 }
        }
        XCTAssertEqual(mismatches, 0, "lookups at a slide answered other than the guest's own table", file: file, line: line)
    }

    /// Addresses near every entry of every guest's tables: the entries, ±1, and each moved by the
    /// differences between the guests' slides (an address right for another guest).
    static func probes(_ facts: [GuestFacts]) -> [UInt64] {
        let slides = facts.map(\.kaslrSlide)
        var out = Set<UInt64>()
        for f in facts {
            for a in Array(f.functionEntries) + Array(f.staticCallTrustedTargets.dictionary().keys) {
                out.formUnion([a, a &+ 1, a &- 1])
                for s in slides { for t in slides where s != t { out.insert(a &+ s &- t) } }
            }
        }
        out.formUnion([0, KernelSlide.imageBase, KernelSlide.imageBase - 1, .max])
        return Array(out)
    }

    func testGuestsAtDistinctSlidesShareOneCopyAndAreJudgedAsAlone() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let a = try registration(boot, "a")
        let deltas: [UInt64] = [0x1e00_0000, 0x0020_0000, 0x3c40_0000]
        let others = deltas.enumerated().map { Self.moved(a, by: $0.element, id: ["b", "c", "d"][$0.offset]) }
        let v = try verifier()
        let sa = try register(v, a)
        let charged = v.guests.chargedBytes
        var sessions = [sa]
        for r in others { sessions.append(try register(v, r)) }
        XCTAssertEqual(Set(([a] + others).map(\.kaslrSlide)).count, 4, "the guests' slides are distinct")
        XCTAssertNotNil(sa.kernel.key)
        XCTAssertTrue(sessions.allSatisfy { $0.kernel === sa.kernel }, "a guest at another slide got its own copy")
        XCTAssertEqual(v.guests.sharedBuilds.count, 1)
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 4)
        // Memory: the build is charged once; each further guest adds only its own facts.
        let perGuest = charged - sa.kernel.symbolBytes
        XCTAssertEqual(v.guests.chargedBytes, sa.kernel.symbolBytes + 4 * perGuest)
        // The copy holds link-time addresses: the registrations' records with the slide removed.
        XCTAssertEqual(sa.kernel.buildFacts.exports.slide, KernelSlide.none)
        for s in sessions {
            XCTAssertEqual(s.facts.exports.slide, KernelSlide(s.registration.kaslrSlide))
        }

        // Facts: each guest's, read from the copy, are those of its registration alone.
        let alone = ([a] + others).map { GuestFactsBuilder.facts(from: $0) }
        let probes = Self.probes(alone)
        XCTAssertGreaterThan(probes.count, 1000)
        for (s, f) in zip(sessions, alone) { assertSameFacts(s.facts, f, probes: probes) }
        // An export of the first guest is not another guest's (off by the slides' difference).
        let name = try XCTUnwrap(a.symbols.first { $0.exported && $0.isText }?.name)
        let atA = try XCTUnwrap(sa.facts.exports[name])
        for s in sessions.dropFirst() {
            XCTAssertNotEqual(s.facts.exports[name], atA)
            XCTAssertFalse(s.facts.functionEntries.contains(atA))
        }

        // Verdicts on the real modules (captured at the first guest's slide): each guest's are the
        // ones it gets registered alone on a fresh verifier; the first guest's are all allow, the
        // others' (kernel addresses off by their slide) are denied.
        for (i, r) in ([a] + others).enumerated() {
            let lone = try verifier()
            _ = try register(lone, r)
            var denied = 0
            for n in boot.availableModules {
                var request = try boot.module(n).request(guestID: r.guestID)
                request.guestID = r.guestID
                let got = v.authorize(request, requestDigest: [])
                let want = lone.authorize(request, requestDigest: [])
                XCTAssertEqual("\(got.decision) \(got.reason.name) \(got.message)", "\(want.decision) \(want.reason.name) \(want.message)", "\(r.guestID) \(n)")
                if i == 0 { XCTAssertEqual(got.decision, .allow, "\(n): \(got.message)") }
                if got.decision == .deny { denied += 1 }
            }
            if i > 0 { XCTAssertEqual(denied, boot.availableModules.count, "\(r.guestID): a module relocated for another slide was accepted") }
        }
    }

    /// The real boots of the shared corpus (one with KASLR, slide 0x13600000; one without): one
    /// copy for both, every module judged allowed in both, verdicts equal to each registered alone.
    /// The first 30 modules in load order (a prefix keeps every dependency before its user) keep
    /// the test at seconds in a debug build; the full 103 run in SharedCorpusSessionTests. The
    /// corpus lives outside the repository (/work/shared/corpus, or EXECGATE_CORPUS).
    func testRealKASLRAndNoKASLRBootsShareOneCopy() throws {
        let root = SharedCorpusSessionTests.corpus
        var boots: [CaptureBoot] = []
        for b in ["nokaslr-a", "kaslr"] {
            let dir = root + "/" + b
            guard FileManager.default.fileExists(atPath: dir + "/kallsyms.txt") else { throw XCTSkip("shared corpus boot \(dir) not present") }
            boots.append(try CaptureBoot.load(dir))
        }
        let v = try verifier()
        var sessions: [GuestSession] = []
        for (i, b) in boots.enumerated() { sessions.append(try register(v, try registration(b, "g\(i)"))) }
        XCTAssertNotEqual(sessions[0].registration.kaslrSlide, sessions[1].registration.kaslrSlide)
        XCTAssertTrue(sessions[0].kernel === sessions[1].kernel, "the KASLR boot got its own copy")
        XCTAssertEqual(v.guests.sharedBuilds.first?.guests, 2)
        let alone = try boots.enumerated().map { GuestFactsBuilder.facts(from: try registration($0.element, "g\($0.offset)")) }
        let probes = Self.probes(alone)
        for (s, f) in zip(sessions, alone) { assertSameFacts(s.facts, f, probes: probes) }
        for (i, b) in boots.enumerated() {
            let lone = try verifier()
            _ = try register(lone, try registration(b, "g\(i)"))
            for n in b.availableModules.prefix(30) {
                let request = try b.module(n).request(guestID: "g\(i)")
                let got = v.authorize(request, requestDigest: [])
                XCTAssertEqual(got.decision, .allow, "g\(i) \(n): \(got.message)")
                let want = lone.authorize(request, requestDigest: [])
                XCTAssertEqual("\(got.decision) \(got.message)", "\(want.decision) \(want.message)", "g\(i) \(n)")
            }
        }
    }
}
