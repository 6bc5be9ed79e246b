// SPDX-License-Identifier: Apache-2.0
//
// Per-guest state. What is trusted here, and why (docs/trust.md):
//   - the registration facts (kernel symbols, CPU capability words, slide, …) come from the VMM at
//     one defined trusted point (the guest sealed its kernel, before any module load), are checked
//     for plausibility, and are never replaced while the guest is live: a second register-guest
//     is refused unless it is an explicit reset, which drops every verified range;
//   - the session keeps a map of live, verified code: for each allowed module its core allocation,
//     its executable region and guest-physical frames, its init text while it is granted, its
//     run-time patch sites and its exports. A claim overlapping live code is denied (module_alloc()
//     never hands out live memory twice); a module name that is live is denied (the kernel's
//     add_unformed_module() refuses it with -EEXIST); retire-module (the VMM revoked EXEC first)
//     removes everything the module brought;
//   - module exports enter a guest's symbol set only when ExecGate itself allowed that module for
//     that guest and leave it when the module is retired, so a later module can only be relocated
//     against code that is verified and live;
//   - run-time patch sites are judged against the module that owns the address now, and key state
//     (jump-label keys, static-call keys, the uniprocessor lock group) is kept per key: a key
//     changes only as a whole, over every live site of every live module.
// Every mutation happens under one lock and re-checks what it relies on (check and commit are one
// step), so concurrent requests of one guest cannot both claim the same range or name.

import _ExecGateInternals
import ExecGateExplain
import ExecGatePolicy
import ExecGateWire
import NIOConcurrencyHelpers
import Synchronization

/// Why a commit or a preflight refused a module (mapped to a verdict reason by the verifier).
struct SessionRefusal: Error {
    var reason: VerdictReason
    var message: String
}

/// The live instances a run-time patch's entries belong to when it was judged (name → commit
/// serial): `GuestSession.apply` refuses the patch if any of them went since.
struct PatchOwners {
    let serials: [String: UInt64]
}

/// A committed module whose verdict is not final yet (the audit record may still be refused):
/// what `GuestSession.rollback` undoes. Names the one instance that commit recorded (its serial)
/// and the keys its commit counted, so a rollback undoes exactly that commit.
struct CommitTicket {
    let name: String
    let serial: UInt64
    let keys: Set<UInt64>
}

public final class GuestSession: @unchecked Sendable {
    // @unchecked: every `var` below is guarded by `lock`; `registration`, `kernel`, `facts`, `factsDigest` are immutable.
    /// The register-guest that established this session, **without** its symbol records: those
    /// live once per build in `kernel` (KernelFactsStore.swift), not once per guest.
    public let registration: RegisterGuest
    /// The build's facts this guest was registered with (shared with every guest of the same
    /// build and kernel digest, at link-time addresses read at this guest's slide; private when
    /// `kernel.key` is nil).
    public let kernel: KernelFacts
    /// The explanation engine over this guest's facts, made once at registration (it holds them
    /// in one box: no copy of the facts a request).
    public let explainer: Explainer
    /// The explanation engine's view of the registration: the build's tables of `kernel` (shared,
    /// read at this guest's slide) with this guest's own facts. The engine's own, read in place
    /// (one copy a guest, not a second beside the engine's).
    public var facts: GuestFacts { _read { yield explainer.facts } }
    /// The request digest of the register-guest that established this session.
    public let factsDigest: [UInt8]
    /// The registry's arrival stamp taken when this session was installed (`GuestRegistry
    /// .arrivalStamp()`): a request stamped before it arrived before this session existed and
    /// belongs to one it replaced (`GuestRegistry.session(_:arrivedAt:)`).
    let born: UInt64
    /// The `born` stamp of the first session of this guest's line of resets (this one's when it
    /// replaced none): a request stamped before it arrived while the guest had no session at all
    /// and belongs to none (`GuestRegistry.session(_:arrivedAt:)`: unknown guest).
    let lineageBorn: UInt64
    /// The arrival stamp of the register-guest that established this session (its `born` when it
    /// was not stamped: an in-process caller's), and that of the first registration of its line.
    /// A reset is judged against the session current when it ARRIVED (the one its VMM revoked
    /// the grants of): a session whose registration arrived after the reset is not it, however
    /// the pool ordered the two (`GuestRegistry.register`, `Verifier.respond`: StaleResetTests).
    /// Not `born`: a reset that arrived earlier may be installed after this one arrived.
    let registrationArrival: UInt64
    let lineageArrival: UInt64

    /// Whether the register-guest that established this session arrived before `arrival` (nil:
    /// not stamped, taken as yes): the session a reset stamped `arrival` was sent to replace.
    func registered(before arrival: UInt64?) -> Bool { arrival.map { registrationArrival < $0 } ?? true }
    /// The session token (docs/protocol.md, register-guest "Session tokens"; register-guest-reply
    /// tag 5): the guest's line of resets in the high 24 bits (`GuestRegistry.tokenLineShift`:
    /// numbered at its first registration, registry-wide), the session's place in the line in the
    /// low 40 (0 for the first registration, one more for each reset). Never 0. A request echoing
    /// it is judged by it (`GuestRegistry.session(_:arrivedAt:token:)`). 0 only for a stand-in.
    public let token: UInt64
    /// The registration asked for tokens (`require_session = 1`): a request of this session
    /// without one is refused.
    public var requiresToken: Bool { registration.requireSession }
    /// The oldest token a reset of a newer boot than this session's may name (nil: a first
    /// registration, whose resets name its token): the token the reset that installed this
    /// session named, or, for one that named none, the floor of the session it replaced (or that
    /// session's token). A VMM's latest token only moves forward, and a guest's resets go on one
    /// connection, so a reset arriving after this session's registration and naming a token from
    /// this floor up to this session's own was sent after the reset that installed it: of a newer
    /// boot, however many resets were in flight and whichever replies the VMM had by then
    /// (`GuestRegistry.reset(naming:isOf:arrivedAt:)`). One naming a token below the floor was sent
    /// before that reset: of an older boot.
    let resetFloor: UInt64?
    private let lock = NIOLock()
    private var resolver: SymbolResolver
    private var live: [String: LiveModule] = [:]
    /// Indexes of `live`'s address ranges (``LiveSpans``), kept with it under `lock` as modules
    /// come and go (`addSpansLocked`, `removeSpansLocked`), so no request walks every live module:
    /// `heldSpans`, each module's held ranges (`LiveModule.heldRanges`: what a new module must
    /// not meet); `percpuSpans`, each module's per-cpu area; `ownerSpans`, each module's text and
    /// granted init text (which module a patch entry's address belongs to). Debug builds check
    /// them against `live` at every use (`checkIndexes`).
    private var heldSpans = LiveSpans(), percpuSpans = LiveSpans(), ownerSpans = LiveSpans()
    private var order: [String] = []
    /// Indexes of `live`, kept with it under `lock` so that a commit costs what the new module
    /// brings, not what every live module holds (a boot storm commits each guest's modules one
    /// after another: walking every live module's exports and frames at each commit was 40% of an
    /// authorize-module at 100 live modules). `exportOwner`: each name a live module exports →
    /// that module (names are unique among live modules and absent from the core: commit refuses
    /// a duplicate export); `frameOwner`: each guest-physical frame granted to a live module (core
    /// and init text) → that module (never two: commit refuses a frame already granted). Added to
    /// at commit, cut at init-freed, rebuilt from `live` at every removal (`rebuildDerivedState`);
    /// debug builds check them against `live` at every use (`checkIndexes`).
    private var exportOwner: [String: String] = [:]
    private var frameOwner: [UInt64: String] = [:]
    /// Key → state, for keys that have sites in live modules.
    private var keyState: [UInt64: UInt64] = [:]
    /// States a static-call key was seen in at load or reached by an allowed patch while it had
    /// live sites (the legal run-time targets of a key the registration does not name, besides
    /// NULL); forgotten with the key's state when its last live site goes.
    private var keyStatesSeen: [UInt64: Set<UInt64>] = [:]
    /// Key → addresses of its sites in live modules (what a whole-key batch must cover).
    private var keySites: [UInt64: Set<UInt64>] = [:]
    /// The guest left uniprocessor mode: a live module's `.smp_locks` prefixes were `lock` (`f0`),
    /// or a batch turning them into `lock` was allowed. One way, and never forgotten (not even when
    /// the last module with prefixes retires): `alternatives_enable_smp()` clears `uniproc_patched`
    /// for good, and since 816afe4ff98e ("x86/smp: Don't ever patch back to UP if we unplug cpus")
    /// no kernel path writes `3e` over a `lock` prefix again, nor unlocks a module loaded later
    /// (`alternatives_smp_module_add()` unlocks only while `uniproc_patched`). Without this, a
    /// guest could strip `lock` from every module's atomic operations while several CPUs run them.
    private var wentSMP = false
    /// The state of each key in the core's `.data..ro_after_init` (`facts.coreROAfterInit`) as its
    /// first committed sites held it, and the module that recorded it. Kept for the guest's
    /// lifetime, not forgotten with the key's last live site: such a key is read-only from
    /// `mark_rodata_ro()` on, before the trusted point (6.12 seals it: `jump_label_init_ro()`), so
    /// its value never changes, and `jump_label_add_module()` / `static_call_add_module()` give
    /// every later module's sites that one state (6.12: `goto do_poke` for a sealed key). Without
    /// it, retiring every module with sites of the key and loading one again with those sites in
    /// the other state "moved" a key no kernel can move. `commits` counts the commits that held
    /// the key in that state and still stand (a retire does not undo a commit: its sites were
    /// granted and ran); only when `rollback` undoes the last of them (none was ever granted) is
    /// the state forgotten. Counted, not named: a module loaded again under the recorder's name,
    /// then rolled back, must not erase what the first, granted, load established.
    private var sealedKeyState: [UInt64: (state: UInt64, commits: Int)] = [:]
    /// Serial of the last commit (`LiveModule.commitSerial`).
    private var commits: UInt64 = 0
    /// Counts live modules removed (retire, rollback). A module explained against a resolver
    /// snapshot is committed only if none went since the snapshot: otherwise its relocations may
    /// name a module that is gone, with no dependency recorded on it.
    private var removals: UInt64 = 0
    /// Loads retired while their init text was still granted (delete_module() of a LIVE module
    /// whose init memory the init_free_wq worker had not freed yet), by (name, init base): each
    /// still owes its module-init-freed. The kernel reuses freed init memory at once (6.12:
    /// `do_free_init()` → `execmem_free()` → `vfree()` of a `VM_FLUSH_RESET_PERMS` area purges it;
    /// `module_memory_alloc()` then hands the same addresses to the next load of the name), so a
    /// later load may hold the same init base when the earlier one's notice arrives: the base
    /// names both. A notice for (name, base) is taken as an owed one's first (it frees nothing),
    /// and frees the live load's init text only when none is owed. Never frees a live grant early;
    /// at worst a load's init frames stay held until its own notice comes (round 15).
    private var owedInitFreed: [OwedInitFreed: Int] = [:]
    private var owedInitFreedCount = 0
    /// Keyed by the module's exact name bytes (as `liveExactLocked` matches a name: no `-` ≡ `_`,
    /// no Unicode equivalence), so only a notice naming that load exactly pays its debt.
    struct OwedInitFreed: Hashable { let name: [UInt8]; let initBase: UInt64 }
    /// At most this many retired loads may owe their notice at once: beyond it, retire-module of a
    /// module whose init text is still granted is refused `unavailable` (send the owed notices
    /// first). Bounds the table; an honest guest unloads a module during its init free's window
    /// rarely.
    static let maximumOwedInitFreed = 4096
    /// What one owed notice holds in `owedInitFreed` (its key's name bytes and array header, the
    /// init base, the count, the table's slot), charged to the session like its live modules from
    /// the retire until the notice comes: up to 4,096 a guest, about 0.5 MB, which an uncharged
    /// table let every one of the registry's guests hold beside its budget (a review, 2026-12-07).
    /// Always less than the retired module's own charge (`LiveModule.liveModuleCharge` alone is
    /// 1,024 plus its name twice), which it is kept out of.
    static func owedCharge(_ o: OwedInitFreed) -> Int { 128 + o.name.count }
    /// Bytes the owed notices are charged now (for tests).
    var owedInitFreedBytes: Int { lock.withLock { owedInitFreed.reduce(0) { $0 + $1.value * Self.owedCharge($1.key) } } }
    /// Keys of allowed run-time patches whose verdicts are being finished (judged, state not yet
    /// recorded), with how many such patches each. A module with sites of such a key is refused
    /// at commit (ask again): the batch covered every live site of the key when it was judged,
    /// not the sites of a module committed before its state is recorded, and recording it then
    /// would leave one key with live sites in two states. The kernel serialises the two under
    /// `jump_label_mutex` (`jump_label_update()`, `jump_label_add_module()`) and
    /// `static_call_mutex` (`__static_call_update()`, `static_call_add_module()`).
    private var patchesInFlight: [UInt64: Int] = [:]
    /// Why this session is no longer its guest's (a reset replaced it, or the guest was removed),
    /// or nil while it is. Set once, under `lock`, by the registry: nothing commits to or patches
    /// an ended session. A request takes its guest's session when it arrives and is judged
    /// without the registry's lock, so a reset (the VMM revoked every grant of this session, then
    /// sent it) can land before the request's commit; an allow then would be a grant of a session
    /// whose grants were revoked, live in no session the verifier still checks.
    /// (The refusal's whole message.)
    private var ended: String?
    /// The registry's budget (nil: not charged, a stand-in or a test's session).
    private let ledger: LiveLedger?
    /// What this session's live modules are charged in `ledger` (`LiveModule.heldBytes`); given
    /// back when a module goes, and all at once when the session ends.
    private var liveCharged = 0

    /// Marks the session as no longer its guest's (the registry, under its lock). Its live
    /// modules' charge goes back to the budget: nothing commits to an ended session, and what it
    /// holds goes with the last request still judging in it.
    func end(_ why: String) { lock.withLock { endLocked(why) } }

    /// The latest arrival stamp of a reset of this session's guest that was refused while this
    /// session was the guest's (nil: none). Such a reset ended it (its VMM revoked this session's
    /// grants and the guest booted again); a reset that arrived before that one is of an earlier
    /// boot still, and is not installed after it (`GuestRegistry.register`). Set and read under
    /// the registry's lock (`GuestRegistry.endForRefusedReset`).
    private(set) var refusedResetArrival: UInt64?

    /// `end` for a reset refused while this session was its guest's, keeping the reset's stamp
    /// (the registry, under its lock).
    func endForRefusedReset(_ why: String, arrival: UInt64?) {
        if let a = arrival { refusedResetArrival = max(refusedResetArrival ?? 0, a) }
        end(why)
    }

    /// `end` under `lock`.
    private func endLocked(_ why: String) {
        guard ended == nil else { return }
        ended = "guest '\(registration.guestID)' \(why) while this request was judged: the session it was judged in is gone (its grants were revoked); ask again in the new session"
        ledger?.release(liveCharged)
        liveCharged = 0
    }

    /// A reset's account of this session (the registry, under its own lock): `body` runs under
    /// this session's lock with what the session is charged now (its live modules and owed
    /// notices; 0 once ended), and may end the session there (the function it is handed). No
    /// charge of this session moves while `body` runs (commit, rollback, retire and
    /// module-init-freed wait for the lock), so the reset's budget check and the release at its
    /// end see one figure: read apart, a retire landing between the two was credited twice, and
    /// the new facts could be admitted over the budget by what it gave back (a review,
    /// 2026-12-07). Lock order: registry → session → ledger, as everywhere.
    func withCharge<T>(_ body: (_ charged: Int, _ end: (String) -> Void) -> T) -> T {
        lock.withLock { body(ended == nil ? liveCharged : 0, endLocked) }
    }

    /// A live module of this session went (retire, rollback): its charge goes back, but for
    /// `keeping` bytes (what a retired load's owed module-init-freed is charged, `owedCharge`),
    /// unless the session ended (then it went back at `end`). Caller holds `lock`.
    private func releaseLocked(_ m: LiveModule, keeping: Int = 0) {
        guard ended == nil else { return }
        ledger?.release(m.heldBytes - keeping)
        liveCharged -= m.heldBytes - keeping
    }

    /// Bytes this session's live modules are charged now.
    public var liveBytes: Int { lock.withLock { liveCharged } }

    /// Live modules of this session now.
    public var liveModuleCount: Int { lock.withLock { live.count } }

    private func endedRefusalLocked() -> SessionRefusal? {
        ended.map { SessionRefusal(reason: .endStateUnavailable, message: $0) }
    }

    /// The refusal of a request judged in this session once it ended (a reset or removal), or nil while it is its guest's.
    var endedRefusal: SessionRefusal? { lock.withLock { endedRefusalLocked() } }

    /// Why this session is no longer its guest's (the refusal's message), or nil while it is.
    public var endedMessage: String? { lock.withLock { ended } }

    /// What a request that arrived before this session was registered is judged in: a session of
    /// this registration that is already ended and holds nothing, standing for the replaced
    /// session the request belongs to (that one is gone: the VMM revoked its grants before it sent
    /// the reset). Every rule that ends in a commit, a key state or a retire refuses it, as it
    /// refuses a request whose session a reset ended while it was judged.
    /// `token`: the replaced session's token the request carries (nil: it carries none and
    /// arrived before this session was registered).
    func standInForReplaced(token: UInt64? = nil) -> GuestSession {
        let s = GuestSession(registration: registration, kernel: kernel, facts: facts, factsDigest: factsDigest, born: 0, lineageBorn: 0)
        if let t = token {
            s.ended = "guest '\(registration.guestID)': this request carries the session token \(GuestRegistry.tokenText(t)) of a session a reset (register-guest reset=1) replaced: the request belongs to that session, whose grants were revoked; ask again in the new session, with its token"
        } else {
            s.ended = "guest '\(registration.guestID)' was reset (register-guest reset=1) after this request arrived: the request belongs to the session the reset replaced, whose grants were revoked; ask again in the new session"
        }
        return s
    }

    /// Read before explaining a module (before the resolver snapshot): see `removals`.
    var removalGeneration: UInt64 { lock.withLock { removals } }

    init(registration: RegisterGuest, kernel: KernelFacts, facts: GuestFacts, factsDigest: [UInt8], born: UInt64, lineageBorn: UInt64? = nil,
         registrationArrival: UInt64? = nil, lineageArrival: UInt64? = nil, token: UInt64 = 0, resetFloor: UInt64? = nil,
         ledger: LiveLedger? = nil) {
        self.ledger = ledger
        self.resetFloor = resetFloor
        var r = registration
        // Kept without its records (the build's copy holds them as facts): a decoded
        // registration's records are a slice of its body, which they would keep alive.
        r.symbolRecords = SymbolRecords()
        self.registration = r
        self.kernel = kernel
        self.explainer = Explainer(facts: facts)
        self.factsDigest = factsDigest
        self.born = born
        self.lineageBorn = lineageBorn ?? born
        self.registrationArrival = registrationArrival ?? born
        self.lineageArrival = lineageArrival ?? registrationArrival ?? born
        self.token = token
        self.resolver = SymbolResolver(coreExports: facts.exports)
    }

    /// A snapshot of the resolver: core exports plus exports of live modules.
    public var symbolResolver: SymbolResolver { lock.withLock { resolver } }
    /// Live modules in the order they were allowed.
    public var allowedModules: [String] { lock.withLock { order } }
    public func liveModule(_ name: String) -> LiveModule? { lock.withLock { live[Policy.canonicalModuleName(name)] } }

    /// The site tables of live modules (a snapshot).
    public var runtimeSites: [RuntimeSiteTable] { lock.withLock { order.compactMap { live[$0]?.sites } } }

    // MARK: Admission

    /// Cheap early refusal before the module is explained (commit re-checks under the same lock).
    /// `initRange`: the whole init allocation (`LiveModule.initAllocation`); `percpuRange`: the
    /// module's per-cpu area.
    func preflight(name: String, coreRange: Range<UInt64>?, initRange: Range<UInt64>?, percpuRange: Range<UInt64>? = nil,
                   frames: [UInt64], initFrames: [UInt64]) -> SessionRefusal? {
        lock.withLock { conflicts(name: name, coreRange: coreRange, initRange: initRange, percpuRange: percpuRange, frames: frames, initFrames: initFrames) }
    }

    /// `dataRanges`: a 6.12 module's other allocations (`LiveModule.dataAllocations` and, while
    /// its init text is, `initDataAllocations`), known once it is explained (commit): checked
    /// against every range a live module holds, as its text and init ranges are.
    private func conflicts(name: String, coreRange: Range<UInt64>?, initRange: Range<UInt64>?, percpuRange: Range<UInt64>?,
                           frames: [UInt64], initFrames: [UInt64], dataRanges: [Range<UInt64>] = []) -> SessionRefusal? {
        let canonical = Policy.canonicalModuleName(name)
        if live[canonical] != nil {
            return SessionRefusal(reason: .moduleAlreadyLive, message: "module '\(name)' is already live in guest '\(registration.guestID)': retire it first (the kernel refuses a second module of one name)")
        }
        checkIndexes()
        // Each claimed range against the live modules' held ranges: one binary search a range
        // (`heldSpans`), the message naming the module's own range that it meets.
        for r in [coreRange, initRange].compactMap({ $0 }) + dataRanges {
            guard let owner = heldSpans.firstOverlap(r) else { continue }
            // (The owner's own range it meets is always found: the span is part of their union.)
            let theirs = live[owner]?.heldRanges.first(where: { r.overlaps($0) })
            return SessionRefusal(reason: .claimOverlapsLive, message: "claimed range 0x\(Hex.number(r.lowerBound))..<0x\(Hex.number(r.upperBound)) overlaps live module '\(owner)'"
                                  + (theirs.map { " at 0x\(Hex.number($0.lowerBound))..<0x\(Hex.number($0.upperBound))" } ?? ""))
        }
        // The per-cpu area: percpu_modalloc() → __alloc_reserved_percpu() hands out only free
        // memory of the reserved chunk, given back by percpu_modfree() at unload (mm/percpu.c,
        // kernel/module/main.c, 6.1 and 6.12): two live modules never share per-cpu bytes.
        if let p = percpuRange, let owner = percpuSpans.firstOverlap(p) {
            let theirs = live[owner]?.percpuRange.map { " 0x\(Hex.number($0.lowerBound))..<0x\(Hex.number($0.upperBound))" } ?? ""
            return SessionRefusal(reason: .claimOverlapsLive, message: "claimed per-cpu area 0x\(Hex.number(p.lowerBound))..<0x\(Hex.number(p.upperBound)) overlaps live module '\(owner)''s per-cpu area\(theirs) (percpu_modalloc() never hands out a live module's per-cpu memory)")
        }
        // Each claimed frame looked up once (`frameOwner`: every frame granted to a live module).
        for f in frames + initFrames {
            if let owner = frameOwner[f] {
                return SessionRefusal(reason: .claimFramesInvalid, message: "guest-physical frame 0x\(Hex.number(f)) is already granted to live module '\(owner)'")
            }
        }
        return nil
    }

    /// `exportOwner` and `frameOwner` as `live` gives them (see there). The caller holds `lock`.
    private func indexesFromLive() -> (exports: [String: String], frames: [UInt64: String]) {
        var exports: [String: String] = [:], frames: [UInt64: String] = [:]
        for m in live.values {
            for n in m.exports?.exportedNames ?? [] { exports[n] = m.name }
            for f in m.frames { frames[f] = m.name }
            for f in m.initFrames { frames[f] = m.name }
        }
        return (exports, frames)
    }

    /// Debug builds (the tests): the indexes equal what `live` gives. The caller holds `lock`.
    @inline(__always) private func checkIndexes() {
        #if DEBUG
        let (e, f) = indexesFromLive()
        precondition(e == exportOwner && f == frameOwner, "GuestSession indexes drifted from the live modules")
        let held = LiveSpans(live.values.map { ($0.heldRanges, $0.name) })
        let percpu = LiveSpans(live.values.map { ($0.percpuRange.map { [$0] } ?? [], $0.name) })
        let owners = LiveSpans(live.values.map { (Self.ownedRanges($0), $0.name) })
        precondition(held == heldSpans && percpu == percpuSpans && owners == ownerSpans, "GuestSession range indexes drifted from the live modules")
        precondition(heldSpans.isSortedAndDisjoint && percpuSpans.isSortedAndDisjoint && ownerSpans.isSortedAndDisjoint, "GuestSession range indexes overlap")
        #endif
    }

    /// The ranges a patch entry may lie in for `m` to own it: its text, and its init text while
    /// granted.
    private static func ownedRanges(_ m: LiveModule) -> [Range<UInt64>] { [m.textRange] + (m.initRange.map { [$0] } ?? []) }

    /// `m`'s ranges entered in the range indexes (call under `lock`, with `m` in `live`).
    private func addSpansLocked(_ m: LiveModule) {
        heldSpans.insert(m.heldRanges, owner: m.name)
        if let p = m.percpuRange { percpuSpans.insert([p], owner: m.name) }
        ownerSpans.insert(Self.ownedRanges(m), owner: m.name)
    }

    /// `m`'s ranges taken out of the range indexes, as `addSpansLocked` entered them (call under
    /// `lock`, before `m` leaves `live` or changes its ranges).
    private func removeSpansLocked(_ m: LiveModule) {
        heldSpans.remove(m.heldRanges, owner: m.name)
        if let p = m.percpuRange { percpuSpans.remove([p], owner: m.name) }
        ownerSpans.remove(Self.ownedRanges(m), owner: m.name)
    }

    /// Record an allowed module atomically: re-checks name, ranges, frames, duplicate exports and
    /// key states against the live set under the lock, then inserts. Only the verifier calls this,
    /// and only for an allow verdict: a denied module's symbols never become resolvable.
    func commit(_ module: LiveModule) -> Result<CommitTicket, SessionRefusal> {
        lock.withLock {
            switch commitLocked(module) {
            case .some(let refusal): return .failure(refusal)
            case .none:
                let m = live[module.name]!  // inserted by commitLocked
                return .success(CommitTicket(name: m.name, serial: m.commitSerial,
                                             keys: Set(m.keyStates.keys).union(m.initKeyStates.keys)))
            }
        }
    }

    /// `commit` under `lock`: nil when `module` is recorded (with a new `commitSerial`).
    private func commitLocked(_ module: LiveModule) -> SessionRefusal? {
        var m = module
        if let e = endedRefusalLocked() { return e }
        // `ownerSpans` keeps a module's text and init text as parts of its held ranges, so two
        // modules' never meet. The verifier makes them so (the explainer holds the claimed text to
        // the layout's text size, inside the core allocation; the init allocation is at least the
        // init text: `Verifier.liveInitAllocation`); checked here all the same, failing closed.
        func within(_ r: Range<UInt64>, _ outer: Range<UInt64>?) -> Bool {
            r.isEmpty || outer.map { $0.lowerBound <= r.lowerBound && r.upperBound <= $0.upperBound } ?? false
        }
        guard within(m.textRange, m.coreRange), m.initRange.map({ within($0, m.initAllocation) }) ?? true else {
            return SessionRefusal(reason: .claimInvalid, message: "module '\(m.name)': its text or init text lies outside the allocation it holds (not a layout the kernel makes)")
        }
        if let c = conflicts(name: m.name, coreRange: m.coreRange, initRange: m.initAllocation, percpuRange: m.percpuRange, frames: m.frames, initFrames: m.initFrames,
                             dataRanges: m.dataAllocations + m.initDataAllocations) { return c }
        // A module was retired (or rolled back) while this one was explained: the snapshot
        // may have resolved symbols to it, and it is no longer live to depend on. The kernel
        // takes the reference (resolve_symbol() → ref_module()) before the exporter can go.
        if m.explainedAt != removals {
            return SessionRefusal(reason: .claimBytesUnexplained, message: "module '\(m.name)': a live module of guest '\(registration.guestID)' was retired while it was explained against their exports: ask again")
        }
        // Its dependencies, from the live set the snapshot saw (no removal since; a module
        // added since cannot have been resolved against, and depending on it is only stricter).
        m.dependsOn.formUnion(ownersLocked(of: m.imports))
        m.imports = []  // not kept while the module is live (only its dependencies are)
        // The module was explained against a snapshot of the live exports: a module it links
        // against must still be live (a retire may have raced with the explanation).
        for d in m.dependsOn.sorted() where live[d] == nil {
            return SessionRefusal(reason: .claimBytesUnexplained, message: "module '\(m.name)' links against '\(d)', which is no longer live")
        }
        // Nor may it link against a module whose own verdict is not final: that verdict can
        // still become a deny (audit record refused), and then its exports were never a
        // verified module's. The kernel makes a module wait for an exporter that is still
        // COMING (resolve_symbol() → ref_module() → strong_try_module_get(): -EBUSY;
        // resolve_symbol_wait()), kernel/module/main.c, 6.1 and 6.12.
        for d in m.dependsOn.sorted() where live[d]?.pending == true {
            return SessionRefusal(reason: .claimBytesUnexplained, message: "module '\(m.name)' links against '\(d)', whose verdict is still being finished (the kernel waits for an exporter that is still coming): ask again")
        }
        // Its exported names, made once for the duplicate check and the owner index below.
        let exported = m.exports?.exportedNames ?? []
        // The kernel refuses a module exporting a name that is already exported
        // (verify_exported_symbols(): -ENOEXEC "exports duplicate symbol").
        for name in exported.sorted() where resolver.lookup(name) != nil {
            return SessionRefusal(reason: .claimBytesUnexplained, message: "module '\(m.name)' exports '\(name)', which is already exported (the kernel refuses duplicate exports)")
        }
        var smpGroups = Set<UInt64>()
        m.forEachSite { if $0.kind == .smpLock, let k = $0.key { smpGroups.insert(k) } }
        // Core and init sites of one key agree (the explainer holds init sites to the core's).
        let states = m.keyStates.merging(m.initKeyStates) { core, _ in core }
        for (key, state) in states.sorted(by: { $0.key < $1.key }) {
            if patchesInFlight[key] != nil {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': a run-time patch of \(Self.keyLabel(key)) is being decided (the kernel holds the key's mutex for both): ask again")
            }
            if smpGroups.contains(key) && state == 0 && wentSMP {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its .smp_locks prefixes are unlocked (3e), but guest '\(registration.guestID)' left uniprocessor mode (alternatives_smp_module_add() unlocks only while uniproc_patched)")
            }
            if let ro = facts.coreROAfterInit, ro.contains(key), let sealed = sealedKeyState[key], sealed.state != state {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its sites of key 0x\(Hex.number(key)) are in state 0x\(Hex.number(state)), but the key lies in the kernel's __ro_after_init data and was in state 0x\(Hex.number(sealed.state)) at earlier sites: read-only since mark_rodata_ro(), it never changes (jump_label_add_module() gives a sealed key's sites its one state)")
            }
            if let current = keyState[key], current != state {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its sites of \(Self.keyLabel(key)) are in state 0x\(Hex.number(state)), live sites of it are in state 0x\(Hex.number(current))")
            }
            if keyState[key] == nil, let trusted = facts.staticCallTrustedTargets[key], !Self.nullStates(facts).contains(state), !trusted.contains(state) {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': static-call key 0x\(Hex.number(key)) targets 0x\(Hex.number(state)), which is not trusted for that key")
            }
        }
        // Its live state is charged to the registry's budget beside the facts (docs/protocol.md
        // "Limits"): a session holds no more than the budget, whatever a guest loads.
        if let ledger, let why = ledger.reserve(m.heldBytes) {
            return SessionRefusal(reason: .liveStateBudget, message: "module '\(m.name)' of guest '\(registration.guestID)': \(why) (this guest's \(live.count) live modules and its owed module-init-freed notices hold \(liveCharged)): retire modules or remove guests")
        }
        liveCharged += m.heldBytes
        commits &+= 1
        m.commitSerial = commits
        m.pending = true
        live[m.name] = m
        addSpansLocked(m)
        order.append(m.name)
        for n in exported { exportOwner[n] = m.name }
        for f in m.frames { frameOwner[f] = m.name }
        for f in m.initFrames { frameOwner[f] = m.name }
        if smpGroups.contains(where: { m.keyStates[$0] == 1 }) { wentSMP = true }
        for (key, state) in states {
            keyState[key] = state
            keyStatesSeen[key, default: []].insert(state)
            if let ro = facts.coreROAfterInit, ro.contains(key) { sealedKeyState[key] = (state, (sealedKeyState[key]?.commits ?? 0) + 1) }
        }
        m.forEachSite { site in if let k = site.key { keySites[k, default: []].insert(site.address) } }
        if let e = m.exports { resolver.add(e) }
        return nil
    }

    /// A key as messages name it: its address, or for the uniprocessor `lock` prefixes
    /// (`.smp_locks`, one group of every live module, keyed by a constant that is no address) the group.
    static func keyLabel(_ key: UInt64) -> String {
        key == RuntimeSiteTable.smpLockGroup ? "the .smp_locks lock-prefix group (3e: uniprocessor, f0: SMP)" : "key 0x\(Hex.number(key))"
    }

    /// NULL forms of a static call: NULL itself and `__static_call_return0` (DEFINE_STATIC_CALL_RET0).
    static func nullStates(_ facts: GuestFacts) -> Set<UInt64> {
        var s: Set<UInt64> = [0]
        if let r0 = facts.staticCallReturn0 { s.insert(r0) }
        return s
    }

    /// Live modules that export any of `imports` (and the core does not): the modules a new
    /// module depends on (resolve_symbol() → ref_module()). The caller holds `lock`.
    private func ownersLocked(of imports: Set<String>) -> Set<String> {
        checkIndexes()
        var out = Set<String>()
        for name in imports { if let owner = exportOwner[name], facts.exports[name] == nil { out.insert(owner) } }
        return out
    }

    /// The verdict of a commit is final and an allow: its module is no longer pending (modules
    /// may link against it). Refused when a reset (or removal) ended the session since the commit
    /// (while the verdict's audit record was written): the VMM revoked every grant of this
    /// session before sending the reset, so the verdict must not become an allow now.
    func finish(_ ticket: CommitTicket) -> SessionRefusal? {
        lock.withLock {
            if let e = endedRefusalLocked() { return e }
            guard live[ticket.name]?.commitSerial == ticket.serial else {
                // (Retire and init-freed refuse a pending module, and only its own rollback
                // removes it: not reached. Fail closed all the same: no allow for a module the
                // session does not hold.)
                return SessionRefusal(reason: .endStateUnavailable, message: "module '\(ticket.name)' is no longer held by guest '\(registration.guestID)': ask again")
            }
            live[ticket.name]!.pending = false
            return nil
        }
    }

    /// Undo a commit whose verdict did not become an allow (the audit sink refused the record).
    /// Only the instance that commit recorded is removed: between the commit and the refusal the
    /// guest may have had that instance retired and the module loaded again (a granted instance
    /// of the same name, whose verdict the VMM acted on); removing by name would forget that
    /// granted module's range, frames, sites and exports while its pages stay executable.
    func rollback(_ ticket: CommitTicket) {
        lock.withLock {
            if let m = live[ticket.name], m.commitSerial == ticket.serial {
                releaseLocked(m)
                removeSpansLocked(m)
                live[ticket.name] = nil
                removals &+= 1
                order.removeAll { $0 == ticket.name }
                rebuildDerivedState()
            }
            // Its sites were never granted (whether or not its instance is still live): its
            // commit no longer holds a sealed key's state; the state goes only with the last
            // standing commit that held it (see `sealedKeyState`).
            for k in ticket.keys {
                guard let sealed = sealedKeyState[k] else { continue }
                sealedKeyState[k] = sealed.commits > 1 ? (sealed.state, sealed.commits - 1) : nil
            }
        }
    }

    /// Resolver and key states from the core and the modules still live (call under `lock`).
    private func rebuildDerivedState() {
        var r = SymbolResolver(coreExports: facts.exports)
        // (In one call: the guest-wide sorted tables sorted once, not merged module by module.)
        r.add(contentsOf: order.compactMap { live[$0]?.exports })
        resolver = r
        (exportOwner, frameOwner) = indexesFromLive()
        // Keys with no live site left forget their state (any legal state may come next).
        let stillUsed = Set(live.values.flatMap { Array($0.keyStates.keys) + Array($0.initKeyStates.keys) })
        for k in keyState.keys where !stillUsed.contains(k) { keyState[k] = nil }
        // Likewise the states such a key was seen in: a run-time target is trusted on the
        // strength of a *live* module that had it (a module loaded again after a retire starts
        // from its own load state, as in a guest that never had the first copy).
        for k in keyStatesSeen.keys where !stillUsed.contains(k) { keyStatesSeen[k] = nil }
        keySites = [:]
        for m in live.values { m.forEachSite { site in if let k = site.key { keySites[k, default: []].insert(site.address) } } }
        // Run-time transitions since load are part of the live state: keep the engine's view of
        // static-call key states current (the exports above carry only load-time states).
        for m in live.values {
            m.forEachSite { site in
                if site.kind == .staticCall, let k = site.key, let st = keyState[k] { resolver.recordStaticCallState(key: k, state: st) }
            }
        }
    }

    // MARK: Retirement

    enum RetireOutcome { case retired(sites: Int, exports: Int), failed(WireErrorCode, String) }

    /// The live module a message names: its signed name exactly, byte for byte
    /// (`find_module_all()`: `strlen` + `memcmp` of `mod->name`, 6.1 and 6.12; no `-` ≡ `_`, and
    /// not `String` equality, which takes a canonically equivalent Unicode spelling, e.g. U+212A
    /// for `K`). The caller holds `lock`.
    private func liveExactLocked(_ name: String) -> LiveModule? {
        guard let m = live[Policy.canonicalModuleName(name)], m.identity.utf8.elementsEqual(name.utf8) else { return nil }
        return m
    }

    func retire(name: String, textBase: UInt64) -> RetireOutcome {
        lock.withLock {
            guard let m = liveExactLocked(name), m.textRange.lowerBound == textBase else {
                return .failed(.unknownModule, "no live module '\(name)' at 0x\(Hex.number(textBase)) in guest '\(registration.guestID)'")
            }
            // Not live yet: its verdict is still being finished (the kernel refuses to unload a
            // module that is still coming: delete_module() → -EBUSY unless MODULE_STATE_LIVE).
            // Removing it now would let that verdict become an allow for a module live nowhere.
            if m.pending {
                return .failed(.unknownModule, "module '\(name)' at 0x\(Hex.number(textBase)) in guest '\(registration.guestID)' is not live yet: its verdict is still being finished (the kernel refuses to unload a module that is still coming)")
            }
            let canonical = m.name
            if let user = order.first(where: { live[$0]?.dependsOn.contains(canonical) ?? false }) {
                return .failed(.moduleInUse, "module '\(name)' is used by live module '\(user)': retire that first (the kernel refuses to unload a module in use)")
            }
            var kept = 0
            if let initRange = m.initRange {
                // Its init memory is not freed yet: this load owes its module-init-freed.
                guard owedInitFreedCount < Self.maximumOwedInitFreed else {
                    return .failed(.unavailable, "module '\(name)' at 0x\(Hex.number(textBase)) still has its init text granted, and \(owedInitFreedCount) retired loads of guest '\(registration.guestID)' still owe their module-init-freed: send those first")
                }
                let owed = OwedInitFreed(name: Array(m.identity.utf8), initBase: initRange.lowerBound)
                owedInitFreed[owed, default: 0] += 1
                owedInitFreedCount += 1
                // The debt stays charged until its notice comes (`owedCharge`): kept out of what
                // the module's charge gives back.
                kept = Self.owedCharge(owed)
            }
            releaseLocked(m, keeping: kept)
            removeSpansLocked(m)
            live[canonical] = nil
            removals &+= 1
            order.removeAll { $0 == canonical }
            // The retired module's exports and function entries stop resolving.
            rebuildDerivedState()
            return .retired(sites: m.sites?.count ?? 0, exports: m.exports?.symbolCount ?? 0)
        }
    }

    enum InitFreedOutcome { case freed, owedByRetiredLoad, noSuchInitText }

    func initFreed(name: String, initBase: UInt64) -> InitFreedOutcome {
        lock.withLock {
            // A retired load of the name at this init base owes its notice: this is taken as
            // that one (`owedInitFreed`), whatever is live there now.
            let owed = OwedInitFreed(name: Array(name.utf8), initBase: initBase)
            if let n = owedInitFreed[owed] {
                owedInitFreed[owed] = n > 1 ? n - 1 : nil
                owedInitFreedCount -= 1
                if ended == nil {  // (an ended session gave its whole charge back at `end`)
                    ledger?.release(Self.owedCharge(owed))
                    liveCharged -= Self.owedCharge(owed)
                }
                return .owedByRetiredLoad
            }
            // A module whose verdict is still being finished has no init text granted yet (the
            // kernel frees init memory only after init returned: do_init_module() → do_free_init()).
            // The init base names the instance: a late notice for an earlier load of the name
            // (unloaded and loaded again before its init memory was freed) frees nothing.
            guard var m = liveExactLocked(name), let range = m.initRange, range.lowerBound == initBase, !m.pending else { return .noSuchInitText }
            let canonical = m.name
            removeSpansLocked(m)
            m.initRange = nil
            m.initAllocation = nil  // do_free_init() frees the whole init allocation
            m.initDataAllocations = []  // (6.12: MOD_INIT_DATA and MOD_INIT_RODATA with it)
            for f in m.initFrames where frameOwner[f] == canonical { frameOwner[f] = nil }
            m.initFrames = []
            // Its init sites are gone: a key only they used forgets its state.
            let hadInitKeys = !m.initKeyStates.isEmpty
            m.initKeyStates = [:]
            live[canonical] = m
            addSpansLocked(m)
            if hadInitKeys { rebuildDerivedState() }
            return .freed
        }
    }

    // MARK: Run-time patches

    enum PatchOutcome {
        /// Legal; `newStates` are the keys' states after the transition (apply with `apply(_:)`
        /// once the verdict is final).
        /// `judgedAt`: the live instances the batch's entries belong to (`apply` refuses if one of
        /// them went since).
        case allowed(module: String, message: String, newStates: [UInt64: UInt64], staticKeys: Set<UInt64>, judgedAt: PatchOwners)
        /// `stage`: how far the judgement got (the verdict lists only the checks that ran).
        case denied(VerdictReason, module: String, message: String, stage: PatchStage)
    }

    /// The rules of `judgePatches` in the order they run: the session itself (a reset ended it:
    /// nothing was judged), each entry at a live site in a legal encoding (`patch-site`), then
    /// the key rules (`key-state`: one state per key, whole-key coverage, one-way `lock`
    /// prefixes, `__ro_after_init` keys, trusted static-call targets, one transition at a time).
    enum PatchStage { case session, site, key }

    /// Judge a batch of text_pokes as one transition (see docs/protocol.md, authorize-patch):
    /// every entry at a site of the live module that owns its address, in a legal encoding; the
    /// sites of one key all reach one state, and the batch covers every live site of each key it
    /// touches; a static-call key only reaches a target trusted for it. Nothing changes until the
    /// verdict is final and `apply` records the new key states.
    func judgePatches(_ patches: [PatchEntry]) -> PatchOutcome {
        lock.withLock {
            if let e = endedRefusalLocked() { return .denied(e.reason, module: "", message: e.message, stage: .session) }
            var seen = Set<UInt64>()
            var newState: [UInt64: UInt64] = [:]
            var batchSites: [UInt64: Set<UInt64>] = [:]
            var staticKeys = Set<UInt64>()
            var owners: [String] = []
            var ownerSerials: [String: UInt64] = [:]
            var smpBatch = false
            // An entry's owner by one binary search of `ownerSpans` (each live module's text and
            // granted init text), not a walk over every live module (a whole-key batch can name
            // thousands of sites). The ranges are disjoint (commit refuses a claim overlapping a
            // live module's core or init allocation), so at most one holds an address.
            checkIndexes()
            var previous: LiveModule?  // the last entry's owner (batches are mostly one module's sites)
            for p in patches {
                let at = "0x" + Hex.number(p.address)
                guard seen.insert(p.address).inserted else { return .denied(.patchNotAllowed, module: "", message: "\(at) appears twice in the batch", stage: .site) }
                guard let name = ownerSpans.owner(of: p.address), let owner = previous?.name == name ? previous : live[name] else {
                    return .denied(.patchNotAllowed, module: "", message: "\(at) is not in live code verified for guest '\(registration.guestID)'", stage: .site)
                }
                previous = owner
                #if DEBUG
                precondition(order.lazy.compactMap({ self.live[$0] }).first(where: { $0.textRange.contains(p.address) || ($0.initRange?.contains(p.address) ?? false) })?.name == owner.name,
                             "patch owner index disagrees with the live modules")
                #endif
                // (Membership by the serials' table: a scan of `owners` per entry was entries ×
                // owners, up to 16,384 × the live modules in one batch.)
                if ownerSerials.updateValue(owner.commitSerial, forKey: owner.name) == nil { owners.append(owner.name) }
                guard let table = owner.sites else {
                    return .denied(.patchNotAllowed, module: owner.name, message: "\(at) is not a run-time patch site of \(owner.name)", stage: .site)
                }
                let state: UInt64
                switch table.check(address: p.address, bytes: p.bytes) {
                case .allowed(_, let s): state = s
                case .denied(let why): return .denied(.patchNotAllowed, module: owner.name, message: why, stage: .site)
                }
                guard let site = owner.site(at: p.address), let key = site.key else { continue }
                // Lock prefixes go one way, UP (3e) → SMP (f0): alternatives_enable_smp().
                if site.kind == .smpLock && state == 0 && wentSMP {
                    return .denied(.patchNotAllowed, module: owner.name, message: "\(at): unlocks an .smp_locks prefix (f0 → 3e), but guest '\(registration.guestID)' left uniprocessor mode: the kernel never patches back to UP (alternatives_enable_smp() is one-way)", stage: .key)
                }
                if site.kind == .smpLock && state == 1 { smpBatch = true }
                if let other = newState[key], other != state {
                    return .denied(.patchPartialKey, module: owner.name, message: "\(at): the batch moves \(Self.keyLabel(key)) to two states (0x\(Hex.number(other)), 0x\(Hex.number(state)))", stage: .key)
                }
                newState[key] = state
                batchSites[key, default: []].insert(p.address)
                if site.kind == .staticCall { staticKeys.insert(key) }
            }
            for (key, covered) in batchSites.sorted(by: { $0.key < $1.key }) {
                let all = keySites[key] ?? []
                // Covered when no live site of the key is left out: fewer sites in the batch than
                // the key has leaves one out; else each is asked of the batch (as many as it
                // names). Only a batch that leaves one out scans the key's sites, for the lowest
                // it leaves out (the message); nothing is copied (the difference as a set was a
                // copy of every live site of the key at every batch: a review, 2026-12-07).
                if covered.count < all.count || !all.allSatisfy(covered.contains) {
                    var lowest = UInt64.max
                    for a in all where a < lowest && !covered.contains(a) { lowest = a }
                    return .denied(.patchPartialKey, module: owners.joined(separator: ","),
                                   message: "the batch changes \(Self.keyLabel(key)) at \(covered.count) of its \(all.count) live sites (missing e.g. 0x\(Hex.number(lowest))): a key changes only as a whole", stage: .key)
                }
                // A key in the core's .data..ro_after_init is read-only from mark_rodata_ro() on
                // (before the trusted point): static_key_enable()/static_call_update() cannot
                // change it, and 6.12 seals it (jump_label_init_ro(): jump_label_add_module()
                // patches a module's sites of a sealed key once, at load, and never links them).
                // Its sites keep their load state: no kernel moves them.
                if let ro = facts.coreROAfterInit, ro.contains(key) {
                    return .denied(.patchNotAllowed, module: owners.joined(separator: ","),
                                   message: "key 0x\(Hex.number(key)) lies in the kernel's __ro_after_init data [0x\(Hex.number(ro.lowerBound)), 0x\(Hex.number(ro.upperBound))): read-only since mark_rodata_ro(), its sites never change after load (jump_label_init_ro() seals it)", stage: .key)
                }
                let state = newState[key]!  // set for every key in batchSites (same loop above)
                if staticKeys.contains(key) && !Self.nullStates(facts).contains(state) {
                    let trusted = facts.staticCallTrustedTargets[key] ?? keyStatesSeen[key] ?? []
                    if !trusted.contains(state) {
                        return .denied(.patchNotAllowed, module: owners.joined(separator: ","),
                                       message: "static-call key 0x\(Hex.number(key)): target 0x\(Hex.number(state)) is not trusted for that key", stage: .key)
                    }
                }
            }
            // One transition of a key at a time, as the kernel's key mutex allows (jump_label_mutex,
            // static_call_mutex): a second batch of a key whose allowed transition is still being
            // decided was judged against the state the first is replacing; allowing both would
            // let the recorded state (the last to finish here) and the guest's bytes (the last the
            // VMM poked) disagree.
            for key in newState.keys.sorted() where patchesInFlight[key] != nil {
                return .denied(.patchNotAllowed, module: owners.joined(separator: ","),
                               message: "\(Self.keyLabel(key)): another run-time patch of it is being decided (the kernel holds the key's mutex across a transition): ask again", stage: .key)
            }
            // Recorded at the allow, not when the key states are applied: a concurrent batch
            // judged before this one is applied must not be allowed to unlock the prefixes. (If
            // the audit sink then refuses this allow, the guest stays judged as SMP: only its
            // unlocked modules and unlocking batches are denied — fail closed.)
            if smpBatch { wentSMP = true }
            for key in newState.keys { patchesInFlight[key, default: 0] += 1 }  // until `apply` (always called)
            let what = patches.count == 1 ? "1 site" : "\(patches.count) sites"
            return .allowed(module: owners.joined(separator: ","), message: "\(what) in \(owners.joined(separator: ", ")): legal encodings, whole-key transition",
                            newStates: newState, staticKeys: staticKeys, judgedAt: PatchOwners(serials: ownerSerials))
        }
    }

    /// Ends an allowed transition's verdict: its keys are no longer in flight, and when the verdict
    /// stayed an allow (`record`) the keys' new states are recorded (keys whose sites are all gone
    /// are skipped). Called once for every `.allowed` outcome, whatever the final verdict.
    /// No module with sites of the batch's keys was committed meanwhile (`patchesInFlight`).
    /// Returns a refusal, nothing recorded, and the verdict must be a deny, when since the
    /// judgement (while the verdict's audit record was written):
    ///   - a reset (or removal) ended the session;
    ///   - a module the batch's entries belong to is no longer that live instance (retired, or
    ///     its commit rolled back): its sites are gone, and a module loaded since at their
    ///     addresses was granted its own bytes there — the VMM must not poke the batch into them
    ///     (`judgedAt`, the owners' commit serials).
    @discardableResult
    func apply(_ newStates: [UInt64: UInt64], staticKeys: Set<UInt64>, judgedAt owners: PatchOwners, record: Bool = true) -> SessionRefusal? {
        lock.withLock {
            for key in newStates.keys {
                if let n = patchesInFlight[key], n > 1 { patchesInFlight[key] = n - 1 } else { patchesInFlight[key] = nil }
            }
            if let e = endedRefusalLocked() { return e }
            for (name, serial) in owners.serials.sorted(by: { $0.key < $1.key }) where live[name]?.commitSerial != serial {
                return SessionRefusal(reason: .patchNotAllowed, message: "module '\(name)' was retired while this patch was decided: its sites are gone (the addresses may hold another module's granted bytes now); ask again")
            }
            guard record else { return nil }
            for (k, s) in newStates where keySites[k] != nil {
                keyState[k] = s
                if staticKeys.contains(k) {
                    keyStatesSeen[k, default: []].insert(s)
                    // The engine checks later modules' sites against the verified state too.
                    resolver.recordStaticCallState(key: k, state: s)
                }
            }
            return nil
        }
    }

    /// Current state of a key with live sites (for tests and diagnostics).
    public func state(ofKey key: UInt64) -> UInt64? { lock.withLock { keyState[key] } }
}
