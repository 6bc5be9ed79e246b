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

/// One verified, live module of a guest.
public struct LiveModule: Sendable {
    /// Canonical name (`-` ≡ `_`): the signed `struct module` name (`ModuleName.identity`).
    public let name: String
    /// The signed `struct module` name itself, byte for byte: what retire-module and
    /// module-init-freed must name (the kernel's find_module_all() compares bytes).
    public let identity: String
    /// The whole core allocation `[text_base, text_base + core size)` (layout_sections()).
    public let coreRange: Range<UInt64>
    /// The executable region the grant covers.
    public let textRange: Range<UInt64>
    public let frames: [UInt64]
    /// The init text while it is granted (nil once freed, or when none was claimed).
    public var initRange: Range<UInt64>?
    public var initFrames: [UInt64]
    public let exports: ModuleExports?
    public let sites: RuntimeSiteTable?
    /// Live modules whose exports this module's relocations resolved to (resolve_symbol() →
    /// ref_module(): the kernel refuses to unload those while this one is loaded). Set by
    /// `GuestSession.commit` from `imports`, under the lock that records the module.
    public internal(set) var dependsOn: Set<String>
    /// The module's undefined symbol names (what resolve_symbol() looks up).
    /// Emptied when the module is committed (its dependencies are then in `dependsOn`): not
    /// live state.
    var imports: Set<String>
    /// `GuestSession.removalGeneration` read before the module was explained (its resolver
    /// snapshot is no older): commit refuses when a live module went since.
    let explainedAt: UInt64
    /// The state of each key's sites in this module when it was allowed.
    let keyStates: [UInt64: UInt64]
    /// The state of each key's sites in its init text (while that is granted; emptied when init
    /// is freed). `jump_label_add_module()` / `static_call_add_module()` patch init sites to the
    /// key's current state like core ones, so they are held to the live state too.
    var initKeyStates: [UInt64: UInt64] = [:]
    /// The module's run-time site at `address`, read from `sites` (a second index of every site
    /// by address, kept per live module, was ~2.6 MiB a guest of the reference corpus's 103
    /// modules: 40% of a guest's live state).
    func site(at address: UInt64) -> RuntimeSiteTable.Site? { sites?.site(at: address) }
    /// Every run-time site of the module, in address order.
    func forEachSite(_ body: (RuntimeSiteTable.Site) -> Void) { sites?.forEachSite(body) }
    /// Which commit recorded this instance (`GuestSession.commit`): a rollback removes only the
    /// instance its own commit recorded, never another one of the same name loaded since.
    var commitSerial: UInt64 = 0
    /// Committed, verdict not final yet (`GuestSession.finish` clears it; `rollback` removes the
    /// module). No module may link against it meanwhile: its exports may still be taken back.
    var pending = false
    /// What this module's live state holds in its session (`LiveModule.heldBytes(…)`): charged
    /// against the registry's budget when it is committed, given back when it goes.
    let heldBytes: Int

    init(name: String, identity: String? = nil, coreRange: Range<UInt64>, textRange: Range<UInt64>, frames: [UInt64], initRange: Range<UInt64>?,
         initFrames: [UInt64], exports: ModuleExports?, sites: RuntimeSiteTable?, dependsOn: Set<String> = [], keyStates: [UInt64: UInt64],
         imports: Set<String> = [], explainedAt: UInt64 = 0) {
        self.name = name
        self.identity = identity ?? name
        self.coreRange = coreRange
        self.textRange = textRange
        self.frames = frames
        self.initRange = initRange
        self.initFrames = initFrames
        self.exports = exports
        self.sites = sites
        self.dependsOn = dependsOn
        self.keyStates = keyStates
        self.imports = imports
        self.explainedAt = explainedAt
        self.heldBytes = Self.heldBytes(names: [name, identity ?? name], frames: frames.count + initFrames.count, exports: exports,
                                        sites: sites?.count ?? 0, keys: keyStates.count)
    }

    /// What a live module holds in its session, the same way the registry charges facts (at what
    /// they hold: docs/protocol.md "Limits"): `liveModuleCharge` for the record itself (its
    /// dictionary slot, its entry in the load order, its tables' headers), its names twice, 64 a
    /// frame (the module's list and the session's index of frames by owner); each export 320 (as
    /// a core export: `KernelFacts.symbolBytes`) plus its name three times (the module's table, the
    /// session's resolver, which merges it, and the session's index of exports by owner), 16 a
    /// function entry, 80 a static-call key it defines plus 16 a trusted target, 48 a key state
    /// its trampolines record; each run-time site 256 (the site table and the session's index by
    /// key); each key state 128 (the module's, the session's current and seen states). Its
    /// imports are not held: commit turns them into `dependsOn` and drops them.
    static func heldBytes(names: [String], frames: Int, exports: ModuleExports?, sites: Int, keys: Int) -> Int {
        var n = liveModuleCharge + names.reduce(0) { $0 + 2 * $1.utf8.count } + 64 * frames + 256 * sites + 128 * keys
        if let e = exports {
            n += e.exportedNames.reduce(0) { $0 + 320 + 3 * $1.utf8.count }
            n += 16 * e.functionEntries.sorted.count
            n += e.staticCallTrustedTargets.values.reduce(0) { $0 + 80 + 16 * $1.count } + 48 * e.staticCallStates.count
        }
        return n
    }
    /// Held per live module beyond what it counts (`heldBytes`).
    static let liveModuleCharge = 1024
}

/// The registry's budget as one account (`GuestRegistry.maximumSymbolBytes`): the registered
/// facts (set by the registry under its lock) and every session's live modules (charged by the
/// session at commit, under the session's lock). Its lock is taken last, under either of
/// theirs, and takes no other: a registration and a commit are each checked exactly.
final class LiveLedger: @unchecked Sendable {
    // @unchecked: `facts` and `live` are guarded by `lock`.
    private let lock = NIOLock()
    private var facts = 0
    private var live = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Charge `bytes` of live state: nil when it fits, else why not (the figures).
    func reserve(_ bytes: Int) -> String? {
        lock.withLock {
            guard facts + live + bytes <= limit else {
                return "\(bytes) bytes of live state on top of \(facts) registered and \(live) live exceeds the \(limit)-byte budget"
            }
            live += bytes
            return nil
        }
    }

    func release(_ bytes: Int) { lock.withLock { live -= bytes } }

    /// Set the registered facts to `bytes` if they fit beside the live state (nil), else the live
    /// bytes that left no room (nothing changed). `force`: set them whatever (they shrank).
    /// `freeing`: live bytes a reset is about to give back (the replaced session's).
    func setFacts(_ bytes: Int, freeing: Int = 0, force: Bool = false) -> Int? {
        lock.withLock {
            if !force && bytes + live - freeing > limit { return live - freeing }
            facts = bytes
            return nil
        }
    }

    var liveBytes: Int { lock.withLock { live } }
}

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
    /// The explanation engine's view of the registration: the build's tables of `kernel` (shared,
    /// read at this guest's slide) with this guest's own facts.
    public let facts: GuestFacts
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
    /// The session token (docs/protocol.md, register-guest "Session tokens"; register-guest-reply
    /// tag 5): the guest's line of resets in the high 24 bits (`GuestRegistry.tokenLineShift`:
    /// numbered at its first registration, registry-wide), the session's place in the line in the
    /// low 40 (0 for the first registration, one more for each reset). Never 0. A request echoing
    /// it is judged by it (`GuestRegistry.session(_:arrivedAt:token:)`). 0 only for a stand-in.
    public let token: UInt64
    /// The registration asked for tokens (`require_session = 1`): a request of this session
    /// without one is refused.
    public var requiresToken: Bool { registration.requireSession }
    private let lock = NIOLock()
    private var resolver: SymbolResolver
    private var live: [String: LiveModule] = [:]
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
    func end(_ why: String) {
        let message = "guest '\(registration.guestID)' \(why) while this request was judged: the session it was judged in is gone (its grants were revoked); ask again in the new session"
        lock.withLock {
            if ended == nil {
                ended = message
                ledger?.release(liveCharged)
                liveCharged = 0
            }
        }
    }

    /// A live module of this session went (retire, rollback): its charge goes back, unless the
    /// session ended (then it went back at `end`). Caller holds `lock`.
    private func releaseLocked(_ m: LiveModule) {
        guard ended == nil else { return }
        ledger?.release(m.heldBytes)
        liveCharged -= m.heldBytes
    }

    /// Bytes this session's live modules are charged now.
    public var liveBytes: Int { lock.withLock { liveCharged } }

    private func endedRefusalLocked() -> SessionRefusal? {
        ended.map { SessionRefusal(reason: .endStateUnavailable, message: $0) }
    }

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
         token: UInt64 = 0, ledger: LiveLedger? = nil) {
        self.ledger = ledger
        var r = registration
        r.symbols = []
        self.registration = r
        self.kernel = kernel
        self.facts = facts
        self.factsDigest = factsDigest
        self.born = born
        self.lineageBorn = lineageBorn ?? born
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
    func preflight(name: String, coreRange: Range<UInt64>?, initRange: Range<UInt64>?, frames: [UInt64], initFrames: [UInt64]) -> SessionRefusal? {
        lock.withLock { conflicts(name: name, coreRange: coreRange, initRange: initRange, frames: frames, initFrames: initFrames) }
    }

    private func conflicts(name: String, coreRange: Range<UInt64>?, initRange: Range<UInt64>?, frames: [UInt64], initFrames: [UInt64]) -> SessionRefusal? {
        let canonical = Policy.canonicalModuleName(name)
        if live[canonical] != nil {
            return SessionRefusal(reason: .moduleAlreadyLive, message: "module '\(name)' is already live in guest '\(registration.guestID)': retire it first (the kernel refuses a second module of one name)")
        }
        checkIndexes()
        for m in live.values {
            for r in [coreRange, initRange] {
                guard let r else { continue }
                for theirs in [m.coreRange, m.initRange] {
                    guard let theirs, r.overlaps(theirs) else { continue }
                    return SessionRefusal(reason: .claimOverlapsLive, message: "claimed range 0x\(Hex.number(r.lowerBound))..<0x\(Hex.number(r.upperBound)) overlaps live module '\(m.name)' at 0x\(Hex.number(theirs.lowerBound))..<0x\(Hex.number(theirs.upperBound))")
                }
            }
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
        #endif
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
        if let c = conflicts(name: m.name, coreRange: m.coreRange, initRange: m.initRange, frames: m.frames, initFrames: m.initFrames) { return c }
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
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': a run-time patch of key 0x\(Hex.number(key)) is being decided (the kernel holds the key's mutex for both): ask again")
            }
            if smpGroups.contains(key) && state == 0 && wentSMP {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its .smp_locks prefixes are unlocked (3e), but guest '\(registration.guestID)' left uniprocessor mode (alternatives_smp_module_add() unlocks only while uniproc_patched)")
            }
            if let ro = facts.coreROAfterInit, ro.contains(key), let sealed = sealedKeyState[key], sealed.state != state {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its sites of key 0x\(Hex.number(key)) are in state 0x\(Hex.number(state)), but the key lies in the kernel's __ro_after_init data and was in state 0x\(Hex.number(sealed.state)) at earlier sites: read-only since mark_rodata_ro(), it never changes (jump_label_add_module() gives a sealed key's sites its one state)")
            }
            if let current = keyState[key], current != state {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': its sites of key 0x\(Hex.number(key)) are in state 0x\(Hex.number(state)), live sites of that key are in state 0x\(Hex.number(current))")
            }
            if keyState[key] == nil, let trusted = facts.staticCallTrustedTargets[key], !Self.nullStates(facts).contains(state), !trusted.contains(state) {
                return SessionRefusal(reason: .keyStateMismatch, message: "module '\(m.name)': static-call key 0x\(Hex.number(key)) targets 0x\(Hex.number(state)), which is not trusted for that key")
            }
        }
        // Its live state is charged to the registry's budget beside the facts (docs/protocol.md
        // "Limits"): a session holds no more than the budget, whatever a guest loads.
        if let ledger, let why = ledger.reserve(m.heldBytes) {
            return SessionRefusal(reason: .liveStateBudget, message: "module '\(m.name)' of guest '\(registration.guestID)': \(why) (this guest's \(live.count) live modules hold \(liveCharged)): retire modules or remove guests")
        }
        liveCharged += m.heldBytes
        commits &+= 1
        m.commitSerial = commits
        m.pending = true
        live[m.name] = m
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
        for n in order { if let e = live[n]?.exports { r.add(e) } }
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
            releaseLocked(m)
            live[canonical] = nil
            removals &+= 1
            order.removeAll { $0 == canonical }
            // The retired module's exports and function entries stop resolving.
            rebuildDerivedState()
            return .retired(sites: m.sites?.count ?? 0, exports: m.exports?.symbolCount ?? 0)
        }
    }

    func initFreed(name: String) -> Bool {
        lock.withLock {
            // A module whose verdict is still being finished has no init text granted yet (the
            // kernel frees init memory only after init returned: do_init_module() → do_free_init()).
            guard var m = liveExactLocked(name), m.initRange != nil, !m.pending else { return false }
            let canonical = m.name
            m.initRange = nil
            for f in m.initFrames where frameOwner[f] == canonical { frameOwner[f] = nil }
            m.initFrames = []
            // Its init sites are gone: a key only they used forgets its state.
            let hadInitKeys = !m.initKeyStates.isEmpty
            m.initKeyStates = [:]
            live[canonical] = m
            if hadInitKeys { rebuildDerivedState() }
            return true
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
            // Each live module's text and granted init text, sorted by start: an entry's owner is
            // found by one binary search, not a walk over every live module (a whole-key batch
            // can name thousands of sites). The ranges are disjoint (commit refuses a claim
            // overlapping a live module's core or init range), so at most one holds an address;
            // empty ranges hold none and are left out.
            var spans: [(lo: UInt64, hi: UInt64, name: String)] = []
            spans.reserveCapacity(2 * live.count)
            for m in live.values {
                for r in [m.textRange, m.initRange] { if let r, !r.isEmpty { spans.append((r.lowerBound, r.upperBound, m.name)) } }
            }
            spans.sort { $0.lo < $1.lo }
            func ownerName(of a: UInt64) -> String? {
                var lo = 0, hi = spans.count  // first span starting after `a`
                while lo < hi { let mid = (lo + hi) / 2; if spans[mid].lo <= a { lo = mid + 1 } else { hi = mid } }
                guard lo > 0, a < spans[lo - 1].hi else { return nil }
                return spans[lo - 1].name
            }
            var previous: LiveModule?  // the last entry's owner (batches are mostly one module's sites)
            for p in patches {
                let at = "0x" + Hex.number(p.address)
                guard seen.insert(p.address).inserted else { return .denied(.patchNotAllowed, module: "", message: "\(at) appears twice in the batch", stage: .site) }
                guard let name = ownerName(of: p.address), let owner = previous?.name == name ? previous : live[name] else {
                    return .denied(.patchNotAllowed, module: "", message: "\(at) is not in live code verified for guest '\(registration.guestID)'", stage: .site)
                }
                previous = owner
                #if DEBUG
                precondition(order.lazy.compactMap({ self.live[$0] }).first(where: { $0.textRange.contains(p.address) || ($0.initRange?.contains(p.address) ?? false) })?.name == owner.name,
                             "patch owner index disagrees with the live modules")
                #endif
                if !owners.contains(owner.name) { owners.append(owner.name) }
                ownerSerials[owner.name] = owner.commitSerial
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
                    return .denied(.patchPartialKey, module: owner.name, message: "\(at): the batch moves key 0x\(Hex.number(key)) to two states (0x\(Hex.number(other)), 0x\(Hex.number(state)))", stage: .key)
                }
                newState[key] = state
                batchSites[key, default: []].insert(p.address)
                if site.kind == .staticCall { staticKeys.insert(key) }
            }
            for (key, covered) in batchSites.sorted(by: { $0.key < $1.key }) {
                let all = keySites[key] ?? []
                let missing = all.subtracting(covered)
                if !missing.isEmpty {
                    return .denied(.patchPartialKey, module: owners.joined(separator: ","),
                                   message: "the batch changes key 0x\(Hex.number(key)) at \(covered.count) of its \(all.count) live sites (missing e.g. 0x\(Hex.number(missing.min()!))): a key changes only as a whole", stage: .key)
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
                               message: "key 0x\(Hex.number(key)): another run-time patch of it is being decided (the kernel holds the key's mutex across a transition): ask again", stage: .key)
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

/// A guest id as the registry holds it: its UTF-8 bytes. A `String` key would take a canonically
/// equivalent spelling (`g` + U+212A KELVIN SIGN for `gK`) as the same guest, and hand its
/// requests (and a reset) to another guest's session; guest ids are the VMM's, any UTF-8, and may
/// come from names its tenants chose.
struct GuestKey: Hashable {
    let bytes: [UInt8]
    init(_ id: String) { bytes = Array(id.utf8) }
}

/// All registered guests. Facts are taken once: a live guest id is only replaced by an explicit
/// reset (the VMM revoked every grant of the old session first).
///
/// Guests of one kernel build share one immutable copy of the build's facts (KernelFactsStore.swift):
/// a registration of a known build costs its own few KiB, not the build's tables.
///
/// Bounded (a peer on the VMM port must not grow the service VM without limit): at most
/// `maximumGuests` guests and `maximumSymbolBytes` of registered facts in all. Each copy of a
/// build's facts is charged once — its symbols' name bytes plus 16 bytes of record each, the size
/// they arrive in — and each guest its own facts' bytes (`guestBytes`). Over budget →
/// `unavailable` with the figures, and nothing is kept.
public final class GuestRegistry: @unchecked Sendable {
    /// One sidecar serves one host's guests; a few hundred is the deployment's scale.
    public static let defaultMaximumGuests = 512
    /// A Debian 6.1 registration is charged ~6.3 MiB (94,266 core symbols: `KernelFacts.symbolBytes`,
    /// names, records, exports, text symbols, static-call keys); 192 MiB holds 30 different builds (the wire's own cap
    /// of 1,048,576 symbols per registration still applies). The ceiling: the service VM derives
    /// its budget from the memory it has (ExecGateTransport `MemoryBudget.factsBudget`), at most this.
    public static let defaultMaximumSymbolBytes = 192 << 20

    // @unchecked: `guests`, `guestBytes`, `builds` are guarded by `lock`.
    private let lock = NIOLock()
    private var guests: [GuestKey: GuestSession] = [:]
    /// What each guest is charged: its own facts, plus the whole build when its copy is private.
    private var charged: [GuestKey: Int] = [:]
    /// Shared copies and how many registered guests use each.
    private var builds: [KernelFactsKey: (facts: KernelFacts, guests: Int)] = [:]
    public let maximumGuests: Int
    public let maximumSymbolBytes: Int
    /// The budget as one account: the facts below and every session's live modules.
    private let ledger: LiveLedger
    /// The arrival clock (`arrivalStamp()`): requests and registrations stamped from one counter.
    private let arrivals = Atomic<UInt64>(0)
    /// Lines of resets numbered so far (each first registration of a guest id starts one): the
    /// high bits of their sessions' tokens. Guarded by `lock`.
    private var lines: UInt64 = 0
    /// A session token: the line in the bits from here up, the session's place in it below.
    public static let tokenLineShift: UInt64 = 40
    /// Most lines (first registrations) one registry numbers, and most sessions one line has.
    public static let maximumTokenLines: UInt64 = (1 << (64 - tokenLineShift)) - 1
    public static let maximumSessionsPerLine: UInt64 = 1 << tokenLineShift
    /// A token as the messages show it.
    static func tokenText(_ t: UInt64) -> String { "0x" + String(t, radix: 16) }

    public init(maximumGuests: Int = GuestRegistry.defaultMaximumGuests,
                maximumSymbolBytes: Int = GuestRegistry.defaultMaximumSymbolBytes) {
        self.maximumGuests = maximumGuests
        self.maximumSymbolBytes = maximumSymbolBytes
        self.ledger = LiveLedger(limit: maximumSymbolBytes)
    }

    /// What a guest's own facts are charged (bytes as they arrive; twice for those held twice): capability words, `pv_ops`,
    /// command line, vulnerabilities, release, id, and 16 bytes per static-call target.
    /// That is the charge checked before any facts are built; `guestBytes(_:holding:)` is the
    /// exact one, once they are.
    static func guestBytes(_ r: RegisterGuest) -> Int {
        fixedGuestBytes(r) + r.staticCallKeys.reduce(0) { $0 + 16 * (2 + $1.allowed.count) }
    }

    /// `pv_ops` and the capability words are held twice (the session's registration keeps the
    /// bytes as sent, its facts the decoded entries: GuestFactsBuilder.guestFacts), so charged twice.
    private static func fixedGuestBytes(_ r: RegisterGuest) -> Int {
        2 * r.cpuCapabilities.count + 2 * r.pvOps.count + r.commandLine.utf8.count + r.vulnerabilities.utf8.count
            + r.kernelRelease.utf8.count + r.guestID.utf8.count
    }

    /// What a guest's own facts hold once built (`facts`): as `guestBytes(_:)`, but each of its own
    /// static-call entries charged at the targets it holds. An own entry for a key the build
    /// already trusts targets for is the build's whole set for that key plus the guest's
    /// (SlidStaticCallTargets: "an own entry for a key replaces the shared one"), so a key with
    /// many build targets named by many guests is one copy of that set per guest, not 16 bytes a
    /// listed target: `ownStaticCallKeyCharge` a key, 16 a target it holds (a Set<UInt64> keeps
    /// 8–16 bytes of buckets per member, within MemoryBudget's 3/2 of the charge).
    static func guestBytes(_ r: RegisterGuest, holding facts: GuestFacts) -> Int {
        let held = facts.staticCallTrustedTargets.own.values.reduce(0) { $0 + ownStaticCallKeyCharge + 16 * $1.count }
        return max(guestBytes(r), fixedGuestBytes(r) + held)
    }
    /// Held per own static-call entry beyond its targets (its dictionary slot and set header).
    static let ownStaticCallKeyCharge = 80

    public enum Registration {
        case registered(GuestSession)
        case refused(WireErrorCode, String)
    }

    /// Register a guest: plausibility first, then refuse a live id unless `reset` is set.
    /// `symbolsDigest` is the registration's symbols digest when the caller has computed it (the
    /// verifier does, for the reply); otherwise it is computed here.
    ///
    /// A registration **by digest** (`r.isByDigest`: no records, the symbols digest of a build)
    /// attaches to the shared copy of that build and `kernel_digest` if the registry holds it at
    /// that moment, and is refused `unknown-build` otherwise (never a copy built from nothing):
    /// the client then sends the full registration. Attached, the guest is in exactly the state a
    /// full registration with the records the copy was built from would give it (docs/trust.md,
    /// "Registration by digest"): same key, same copy, its own facts checked against it.
    public func register(_ r: RegisterGuest, factsDigest: [UInt8] = [], symbolsDigest: [UInt8]? = nil) -> Registration {
        if let why = FactsPlausibility.checkCPUs(r) { return .refused(.implausibleFacts, "register-guest '\(r.guestID)': \(why)") }
        let key: KernelFactsKey?
        if r.isByDigest {
            // The wire decoder refuses both at once; an in-process caller gets the same answer.
            guard r.symbols.isEmpty, r.symbolsDigest.count == 32 else {
                return .refused(.badRequest, "register-guest '\(r.guestID)': a registration by digest carries a 32-byte symbols digest and no symbol records")
            }
            key = KernelFactsKey(kernelDigest: r.kernelDigest, symbolsDigest: r.symbolsDigest)
        } else {
            key = KernelFactsKey.of(r, symbolsDigest: symbolsDigest ?? KernelFactsKey.symbolsDigest(r))
        }
        var own = Self.guestBytes(r)
        // Budget first, before any facts are built (building a new build's tables is the costly
        // part); checked again, exactly, under the lock below.
        let known: KernelFacts? = lock.withLock {
            key.flatMap { builds[$0]?.facts }
        }
        if r.isByDigest {
            guard let known else { return .refused(.unknownBuild, Self.unknownBuild(r)) }
            guard known.admits(slide: r.kaslrSlide) else {
                return .refused(.implausibleFacts, "register-guest '\(r.guestID)': kaslr_slide 0x\(Hex.number(r.kaslrSlide)) moves the build's link-time addresses past the top of the address space (no full registration of this build at that slide exists)")
            }
        }
        let buildCost = known == nil ? KernelFacts.symbolBytes(r) : 0
        if let why = lock.withLock({ guests[GuestKey(r.guestID)] == nil ? overBudget(r.guestID, cost: own + buildCost) : nil }) {
            return .refused(.unavailable, "register-guest '\(r.guestID)': \(why)")
        }
        let kernel: KernelFacts
        if let known { kernel = known } else {
            switch KernelFacts.make(r, key: key) {
            case .success(let k): kernel = k
            case .failure(let f): return .refused(.implausibleFacts, "register-guest '\(r.guestID)': \(f.message)")
            }
        }
        let facts: GuestFacts
        switch kernel.guestFacts(r) {
        case .success(let f): facts = f
        case .failure(let f): return .refused(.implausibleFacts, "register-guest '\(r.guestID)': \(f.message)")
        }
        // The exact charge of this guest's own facts, now that they are built (its own static-call
        // entries hold copies of the build's target sets for their keys).
        own = Self.guestBytes(r, holding: facts)
        return lock.withLock {
            let existing = guests[GuestKey(r.guestID)]
            if existing != nil && !r.reset {
                return .refused(.guestExists, "guest '\(r.guestID)' is registered: its facts were taken at the trusted point and are not replaced (send reset=1 after revoking every EXEC grant of the old session)")
            }
            // Another registration of this build may have stored its copy meanwhile: use that one
            // (same key, same content), so the build is held once.
            var shared = kernel
            if let k = kernel.key, let stored = builds[k]?.facts { shared = stored }
            // A registration by digest attaches only to a copy held now: its build's last guest
            // may have left since the lookup above (the copy is not rebuilt from this reference).
            if r.isByDigest, let k = kernel.key, builds[k] == nil { return .refused(.unknownBuild, Self.unknownBuild(r)) }
            let isNewBuild = shared.key.map { builds[$0] == nil } ?? true
            let cost = own + (isNewBuild ? shared.symbolBytes : 0)
            // A reset of a guest that was the last one on another build frees that build's charge.
            let sameBuild = shared.key != nil && existing?.kernel.key == shared.key
            let freed = sameBuild ? 0 : existing.map { release($0.kernel, dryRun: true) } ?? 0
            // A reset gives back the replaced session's live modules too.
            let oldLive = existing?.liveBytes ?? 0
            if let why = overBudget(r.guestID, cost: cost, alsoFreed: freed + oldLive) {
                return .refused(.unavailable, "register-guest '\(r.guestID)': \(why)")
            }
            // The new session's token: the next place in the guest's line, or a new line (decided
            // before the budget's account is set: a refusal here changes nothing).
            let token: UInt64
            if let old = existing {
                let place = old.token & (Self.maximumSessionsPerLine - 1)
                guard place + 1 < Self.maximumSessionsPerLine else {
                    return .refused(.unavailable, "register-guest '\(r.guestID)': the guest's line has had \(Self.maximumSessionsPerLine) sessions, the most one line's session tokens can number")
                }
                token = old.token + 1
            } else {
                guard lines < Self.maximumTokenLines else {
                    return .refused(.unavailable, "register-guest '\(r.guestID)': this server has numbered \(Self.maximumTokenLines) guest lines, the most session tokens can name")
                }
                token = (lines + 1) << Self.tokenLineShift
            }
            // The same figures, set in the budget's account exactly (a commit may have charged
            // live state since `overBudget` read it). A reset gives back the old session's live
            // modules (`end`) once it is installed: they count until then, for every other session.
            let factsAfter = factsUsed - (charged[GuestKey(r.guestID)] ?? 0) - freed + cost
            if let live = ledger.setFacts(factsAfter, freeing: oldLive) {
                return .refused(.unavailable, "register-guest '\(r.guestID)': \(cost) bytes of symbols on top of \(factsAfter - cost) registered and \(live) of live modules exceeds the \(maximumSymbolBytes)-byte budget")
            }
            if existing == nil { lines += 1 }
            if let old = existing {
                _ = release(old.kernel, dryRun: false)
                old.end("was reset (register-guest reset=1)")
            }
            if let k = shared.key { builds[k, default: (shared, 0)].guests += 1 }
            // Stamped while the registry is locked: a request stamped before this (it arrived
            // before the session existed) never finds it (`session(_:arrivedAt:)`).
            let born = arrivals.add(1, ordering: .sequentiallyConsistent).newValue
            let session = GuestSession(registration: r, kernel: shared, facts: shared === kernel ? facts : shared.facts(for: r), factsDigest: factsDigest,
                                       born: born, lineageBorn: existing?.lineageBorn, token: token, ledger: ledger)
            guests[GuestKey(r.guestID)] = session
            charged[GuestKey(r.guestID)] = own + (shared.key == nil ? shared.symbolBytes : 0)
            _ = ledger.setFacts(factsUsed, force: true)
            return .registered(session)
        }
    }

    /// The refusal of a registration by digest whose build is not held: what to send instead.
    static func unknownBuild(_ r: RegisterGuest) -> String {
        "register-guest '\(r.guestID)': no kernel build with symbols digest \(Hex.encode(r.symbolsDigest))"
            + (r.kernelDigest.isEmpty ? " (no kernel_digest)" : " and kernel_digest \(Hex.encode(r.kernelDigest))")
            + " is held by this server (never registered, its last guest left, or the server restarted): nothing was registered; send the full registration with the symbol records"
    }

    /// Drop a guest (the VMM revoked every EXEC grant of it first). Its build's copy goes when it
    /// was the last guest on it. Returns false when the id is not registered.
    @discardableResult
    public func remove(_ id: String) -> Bool {
        lock.withLock {
            guard let s = guests.removeValue(forKey: GuestKey(id)) else { return false }
            s.end("was removed")
            charged[GuestKey(id)] = nil
            _ = release(s.kernel, dryRun: false)
            _ = ledger.setFacts(factsUsed, force: true)
            return true
        }
    }

    /// One guest stops using `kernel`: the shared copy's count drops, and the copy is forgotten
    /// when it reaches zero. Returns the bytes of build charge that frees. Caller holds `lock`.
    private func release(_ kernel: KernelFacts, dryRun: Bool) -> Int {
        guard let k = kernel.key, let entry = builds[k] else { return 0 }
        if entry.guests <= 1 {
            if !dryRun { builds[k] = nil }
            return entry.facts.symbolBytes
        }
        if !dryRun { builds[k]!.guests -= 1 }  // present: looked up above
        return 0
    }

    /// Facts charged: every shared copy once, every guest its own part. Caller holds `lock`.
    private var factsUsed: Int { builds.values.reduce(0) { $0 + $1.facts.symbolBytes } + charged.values.reduce(0, +) }
    /// Bytes charged in all: the facts and every session's live modules. Caller holds `lock`.
    private var used: Int { factsUsed + ledger.liveBytes }

    /// Why registering `id` with `cost` bytes would exceed a budget (nil: it fits). A live id is
    /// not a new guest: its own charge, and `alsoFreed` (its build, when it was the last guest on
    /// it), are replaced. Caller holds `lock`.
    private func overBudget(_ id: String, cost: Int, alsoFreed: Int = 0) -> String? {
        if guests[GuestKey(id)] == nil && guests.count >= maximumGuests {
            return "\(guests.count) guests are registered, the limit is \(maximumGuests)"
        }
        let used = self.used - (charged[GuestKey(id)] ?? 0) - alsoFreed
        return used + cost > maximumSymbolBytes ? "\(cost) bytes of symbols on top of \(used) registered (live modules included) exceeds the \(maximumSymbolBytes)-byte budget" : nil
    }

    public func session(_ id: String) -> GuestSession? { lock.withLock { guests[GuestKey(id)] } }

    /// A stamp from the arrival clock, strictly greater than every stamp taken before it. The
    /// service takes one for each request when it decodes the request's frame, on its connection's
    /// event loop, in the order the connection sent them — before the request waits behind the
    /// connection's in-flight cap or for a pool thread.
    public func arrivalStamp() -> UInt64 { arrivals.add(1, ordering: .sequentiallyConsistent).newValue }

    /// The session a request that arrived at `arrival` (`arrivalStamp()`; nil: not stamped) is
    /// judged in: the guest's session when it was registered before the request arrived; when it
    /// was registered after (a reset landed between the request's arrival and its judging, e.g.
    /// the VMM pipelined the old boot's load and then the reset on one connection, and a pool
    /// thread took the reset first), an ended stand-in for the replaced session
    /// (`GuestSession.standInForReplaced()`): the request is the old boot's, and is never judged
    /// in the new session (docs/protocol.md, register-guest "Once.").
    /// A request stamped before the first session of the guest's line of resets was registered
    /// arrived while the guest had no session: nil (unknown guest, "restore needed"), as when it
    /// is judged before the registration lands (docs/protocol.md, "Restart and restore": never a
    /// deny, nothing was judged).
    public func session(_ id: String, arrivedAt arrival: UInt64?) -> GuestSession? {
        session(id).flatMap { Self.session($0, arrivedAt: arrival) }
    }

    private static func session(_ s: GuestSession, arrivedAt arrival: UInt64?) -> GuestSession? {
        guard let a = arrival, s.born > a else { return s }
        guard s.lineageBorn < a else { return nil }
        return s.standInForReplaced()
    }

    /// What a session request is judged in (`session(_:arrivedAt:token:)`).
    public enum SessionLookup {
        /// The guest's current session, or an ended stand-in for one a reset replaced.
        case session(GuestSession)
        /// The guest is not registered (or the request arrived before it was): `unknown-guest`.
        case unknownGuest
        /// Nothing is judged: `bad-request` with this message (a token not issued to the guest,
        /// or none where the session requires one).
        case refused(String)
    }

    /// The session a request for guest `id` is judged in. With a session `token` (docs/protocol.md,
    /// register-guest "Session tokens") the token decides, not the arrival: the current session's
    /// token is that session; the token of an earlier session of the guest's line (one a reset
    /// replaced) an ended stand-in (`GuestSession.standInForReplaced(token:)`), whatever
    /// connection carried the request and however late it was read; any other token (another
    /// guest's, one not issued yet) is refused. Without one, `session(_:arrivedAt:)`, unless the
    /// current session requires tokens (`require_session`): refused.
    public func session(_ id: String, arrivedAt arrival: UInt64?, token: UInt64?) -> SessionLookup {
        guard let s = session(id) else { return .unknownGuest }
        guard let t = token else {
            if s.requiresToken {
                return .refused("guest '\(id)' was registered with require_session=1: a request of its session carries the session token (tag 0x8020) its register-guest-reply named; nothing was judged")
            }
            return Self.session(s, arrivedAt: arrival).map { .session($0) } ?? .unknownGuest
        }
        if t == s.token { return .session(s) }
        if t >> Self.tokenLineShift == s.token >> Self.tokenLineShift && t < s.token {
            return .session(s.standInForReplaced(token: t))
        }
        return .refused("session token \(Self.tokenText(t)) was not issued to guest '\(id)' (another guest's token, or one not issued yet): a request echoes the token of its guest's register-guest-reply; nothing was judged")
    }
    public var count: Int { lock.withLock { guests.count } }
    /// Shared build copies held, with the number of guests on each (for status and tests).
    public var sharedBuilds: [(key: KernelFactsKey, guests: Int)] { lock.withLock { builds.map { ($0.key, $0.value.guests) } } }
    /// Bytes charged against `maximumSymbolBytes` now: facts and live modules.
    public var chargedBytes: Int { lock.withLock { used } }
    /// Of those, the live modules of every session (`GuestSession.liveBytes`).
    public var liveModuleBytes: Int { ledger.liveBytes }
}
