// SPDX-License-Identifier: Apache-2.0
//
// All registered guests: one `GuestSession` each (GuestSession.swift), the shared copies of
// their kernel builds' facts (KernelFactsStore.swift), the budget every registration and live
// module is charged to, and the arrival clock that orders requests against resets. What each
// session trusts, and why, is GuestSession.swift's header (and docs/trust.md).

import _ExecGateInternals
import ExecGateExplain
import ExecGatePolicy
import ExecGateSignature
import ExecGateWire
import NIOConcurrencyHelpers
import Synchronization

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
    /// Recent removals (remove-guest): each id's removal stamp, on the arrival clock, so that a
    /// reset that arrived before the removal never registers the guest again, however the two
    /// are scheduled. The most recent `maximumRemovalsRemembered`; older ones are forgotten (the
    /// race they guard is between two requests in flight at once).
    /// Keyed by the id's SHA-256, not its bytes: the history outlives the guest's charge, and
    /// 8,192 removed ids of 60,000 bytes each held ~900 MB no budget counted (round 14); a
    /// digest is 32 bytes whatever the id.
    private var removedAt: [Digest: UInt64] = [:]
    private var removals: [(key: Digest, stamp: UInt64)] = []
    /// The removal history's key for `id`.
    private static func removedKey(_ id: String) -> Digest { Digest.compute(.sha256, over: Array(id.utf8)) }
    static let maximumRemovalsRemembered = 4096
    /// A session token: the line in the bits from here up, the session's place in it below.
    public static let tokenLineShift: UInt64 = 40
    /// Most lines (first registrations) one registry numbers, and most sessions one line has.
    public static let maximumTokenLines: UInt64 = (1 << (64 - tokenLineShift)) - 1
    public static let maximumSessionsPerLine: UInt64 = 1 << tokenLineShift
    /// Whether two tokens were issued to one line (one id's first registration and its resets).
    static func sameLine(_ a: UInt64, _ b: UInt64) -> Bool { a >> tokenLineShift == b >> tokenLineShift }
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
    /// The session keeps the registration as sent too (`GuestSession.registration`), each key's
    /// `allowed` list an array of 8 bytes a target: charged beside the set (measured before this
    /// was counted: 30,000 keys of 64 targets a guest grew the resident set 1.25× their charge).
    static func guestBytes(_ r: RegisterGuest, holding facts: GuestFacts) -> Int {
        let held = facts.staticCallTrustedTargets.own.values.reduce(0) { $0 + ownStaticCallKeyCharge + 16 * $1.count }
        let sent = r.staticCallKeys.reduce(0) { $0 + 8 * (2 + $1.allowed.count) }
        return max(guestBytes(r), fixedGuestBytes(r) + held + sent)
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
    /// `replacing`: for a reset, the session current when the reset was taken up. When that guest
    /// is gone by the time the reset would be installed (a remove-guest landed while the facts
    /// were built), the reset is refused `unknown-guest` and registers nothing: the removal, which
    /// arrived after the reset, stands (a reset installed after it registered the removed guest
    /// again, live and holding a slot, while the VMM had been told it was removed).
    /// `arrivedAt`: the request's arrival stamp; a reset that arrived before the id's latest
    /// removal is refused `unknown-guest` (the removal arrived after it and stands).
    public func register(_ r: RegisterGuest, factsDigest: [UInt8] = [], symbolsDigest: [UInt8]? = nil,
                         replacing: GuestSession? = nil, arrivedAt: UInt64? = nil) -> Registration {
        register(r, factsDigest: factsDigest, symbolsDigest: symbolsDigest, replacing: replacing, arrivedAt: arrivedAt, adjustingFacts: nil)
    }

    /// The same, with `adjust` applied to the guest's facts once every check has passed: a test
    /// seam only (internal; no request reaches it), for session rules whose inputs no plausible
    /// registration of the committed fixture can give (a core `.data..ro_after_init` range around
    /// a key its modules use: the fixture's modules use no core key, DocAttack3SessionTests).
    func register(_ r: RegisterGuest, factsDigest: [UInt8] = [], symbolsDigest: [UInt8]? = nil, replacing: GuestSession? = nil,
                  arrivedAt: UInt64? = nil, adjustingFacts adjust: ((inout GuestFacts) -> Void)?) -> Registration {
        if let why = FactsPlausibility.checkRegistration(r) {
            return .refused(.implausibleFacts, "register-guest '\(r.guestID)': \(why)")
        }
        let key: KernelFactsKey?
        if r.isByDigest {
            // The wire decoder refuses both at once; an in-process caller gets the same answer.
            guard r.symbolRecords.isEmpty, r.symbolsDigest.count == 32 else {
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
        // A reset naming a session that is not the guest's is refused before its facts are built
        // (and again under the lock below, where it decides).
        if let refusal = lock.withLock({ Self.resetSessionRefusal(r, guests[GuestKey(r.guestID)], arrivedAt: arrivedAt) }) { return refusal }
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
            // The session a reset names decides first (the same answer as before the facts were
            // built, whatever was read meanwhile); then its arrival.
            if let refusal = Self.resetSessionRefusal(r, existing, arrivedAt: arrivedAt) { return refusal }
            if r.reset, let a = arrivedAt, let removed = removedAt[Self.removedKey(r.guestID)], a < removed {
                return .refused(.unknownGuest, "guest '\(r.guestID)' was removed (remove-guest) after this reset arrived: nothing was registered (register it again, without reset, if it is to run)")
            }
            if r.reset, let a = arrivedAt, let cur = existing {
                if !cur.registered(before: a) {
                    // The guest's session was registered by a request that arrived after this
                    // reset: it is not the one the reset was sent to replace, and its grants were
                    // not revoked for it (compared by arrival, not by when each was installed: an
                    // earlier reset may be installed after a later one arrived, and is replaced).
                    if cur.lineageArrival > a {
                        // Its line began after the reset arrived: the id was removed and
                        // registered again (another VM's), or registered for the first time (the
                        // removal's stamp may have left `removedAt`).
                        return .refused(.unknownGuest, "guest '\(r.guestID)' holds a registration whose first request arrived after this reset (removed and registered again, another VM's): it is not the session this reset replaces; nothing was registered (register it again, without reset, if it is to run)")
                    }
                    return .refused(.badRequest, "guest '\(r.guestID)': a reset that arrived after this one was accepted first; this reset is of the boot that reset replaced: nothing was registered and the guest's session stands (send a guest's next reset only after the previous one's reply)")
                }
                if let refused = cur.refusedResetArrival, refused > a {
                    // A reset that arrived after this one was refused and ended the guest's
                    // session: its VMM had revoked the grants of every earlier boot, this one's
                    // included. Installed now, this older boot's session would judge the newer
                    // boot's requests.
                    return .refused(.badRequest, "guest '\(r.guestID)': a reset that arrived after this one was refused and ended the guest's session; this reset is of an earlier boot: nothing was registered (the guest is judged in no session until a reset that arrived after that one is accepted)")
                }
            }
            if r.reset, let expected = replacing {
                // The session the reset was taken up to replace is gone: removed, or removed and
                // the id registered again (a new line of sessions: another VM's), whose facts a
                // reset of the old VM must not replace.
                guard let cur = existing, Self.sameLine(cur.token, expected.token) else {
                    return .refused(.unknownGuest, "guest '\(r.guestID)' was removed (remove-guest) while this reset was processed: nothing was registered (register it again, without reset, if it is to run)")
                }
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
            // A reset gives back the replaced session's live modules too: their charge read, the
            // budget checked and set, and the session ended, all under its lock
            // (`GuestSession.withCharge`), so no retire or notice of it moves the figure between
            // the check and the release. `admit` returns the refusal, or nil with `token` set.
            var token: UInt64 = 0
            func admit(_ oldLive: Int, _ endOld: (String) -> Void) -> Registration? {
                if let why = overBudget(r.guestID, cost: cost, alsoFreed: freed + oldLive) {
                    return .refused(.unavailable, "register-guest '\(r.guestID)': \(why)")
                }
                // The new session's token: the next place in the guest's line, or a new line
                // (decided before the budget's account is set: a refusal here changes nothing).
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
                // The same figures, set in the budget's account exactly (a commit of another
                // session may have charged live state since `overBudget` read it). A reset gives
                // back the old session's live modules (`end`) once it is installed: they count
                // until then, for every other session.
                let factsAfter = factsUsed - (charged[GuestKey(r.guestID)] ?? 0) - freed + cost
                if let live = ledger.setFacts(factsAfter, freeing: oldLive) {
                    return .refused(.unavailable, "register-guest '\(r.guestID)': \(cost) bytes of facts on top of \(factsAfter - cost) registered and \(live) of live modules exceeds the \(maximumSymbolBytes)-byte budget")
                }
                if existing == nil { lines += 1 }
                if let old = existing {
                    _ = release(old.kernel, dryRun: false)
                    endOld("was reset (register-guest reset=1)")
                }
                return nil
            }
            let refusal: Registration?
            if let old = existing { refusal = old.withCharge(admit) } else { refusal = admit(0) { _ in } }
            if let refusal { return refusal }
            if let k = shared.key { builds[k, default: (shared, 0)].guests += 1 }
            // Stamped while the registry is locked: a request stamped before this (it arrived
            // before the session existed) never finds it (`session(_:arrivedAt:)`).
            let born = arrivals.add(1, ordering: .sequentiallyConsistent).newValue
            var sessionFacts = shared === kernel ? facts : shared.facts(for: r)
            adjust?(&sessionFacts)
            let session = GuestSession(registration: r, kernel: shared, facts: sessionFacts, factsDigest: factsDigest,
                                       born: born, lineageBorn: existing?.lineageBorn,
                                       registrationArrival: arrivedAt ?? born, lineageArrival: existing?.lineageArrival ?? arrivedAt ?? born,
                                       token: token, resetFloor: existing.map { r.session ?? $0.resetFloor ?? $0.token }, ledger: ledger)
            guests[GuestKey(r.guestID)] = session
            charged[GuestKey(r.guestID)] = own + (shared.key == nil ? shared.symbolBytes : 0)
            _ = ledger.setFacts(factsUsed, force: true)
            return .registered(session)
        }
    }

    /// Whether a reset naming session `token` (its `session` field; nil: it names none), stamped
    /// `arrival`, is a reset of session `s`: `s` was registered before the reset arrived, and the
    /// reset names `s`, or a session of its line from `s.resetFloor` (what the reset that
    /// installed `s` named) up. The latter is resets of one guest in flight (the guest rebooted
    /// again before a reset's reply, or a reset retried after its reply was lost), each naming
    /// the VMM's latest token when it was sent: they are ordered by arrival, as resets naming
    /// nothing are, and a later-arriving one is of the newer boot: it replaces, or refused ends,
    /// the session the one before it installed. A reset naming a token below the floor was sent
    /// before the reset that installed `s`: of an older boot.
    static func reset(naming token: UInt64?, isOf s: GuestSession, arrivedAt arrival: UInt64?) -> Bool {
        guard s.registered(before: arrival) else { return false }
        guard let t = token else { return true }
        if t == s.token { return true }
        guard let floor = s.resetFloor else { return false }
        return sameLine(t, s.token) && floor <= t && t < s.token
    }

    /// The refusal of reset `r`, stamped `arrival`, by the session it names (its `session` token,
    /// docs/protocol.md register-guest "A reset names the session it replaces"), `existing` being
    /// the guest's session (caller holds `lock`). A reset's arrival orders it only against what
    /// its own connection carried: one read late on a busy connection, after a removal of the
    /// guest and another VM's registration of the id read on others, is of the new line by its
    /// stamp. Its token says which session's grants its VMM revoked: it replaces only a session
    /// it is of (`reset(naming:isOf:arrivedAt:)`). nil: no refusal here (not a reset; a reset without a token of a session that does
    /// not require one; a reset of the current session, `reset(naming:isOf:arrivedAt:)`, or
    /// naming it: the arrival checks decide).
    static func resetSessionRefusal(_ r: RegisterGuest, _ existing: GuestSession?, arrivedAt arrival: UInt64?) -> Registration? {
        guard r.reset else { return nil }
        guard let t = r.session else {
            guard let cur = existing, cur.requiresToken else { return nil }
            return .refused(.badRequest, "guest '\(r.guestID)' was registered with require_session=1: its reset carries the session token (tag 0x8020) of the session it replaces, \(tokenText(cur.token)) (its register-guest-reply's); nothing was registered and no session ended")
        }
        guard let cur = existing else {
            return .refused(.unknownGuest, "guest '\(r.guestID)' is not registered: this reset names session \(tokenText(t)), which is not the guest's (removed); nothing was registered (register it, without reset, if it is to run)")
        }
        if t == cur.token || reset(naming: t, isOf: cur, arrivedAt: arrival) { return nil }
        if sameLine(t, cur.token) && t < cur.token {
            return .refused(.badRequest, "guest '\(r.guestID)': this reset names session \(tokenText(t)), which a reset that arrived before this one already replaced (the guest's session is \(tokenText(cur.token))): it is of an earlier boot; nothing was registered and the guest's session stands")
        }
        return .refused(.badRequest, "guest '\(r.guestID)': this reset names session token \(tokenText(t)), which was not issued to the guest's current line of sessions (another guest's, one of an earlier registration of this id that was removed, or one not issued yet): nothing was registered and the guest's session stands")
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
        lock.withLock { guests[GuestKey(id)].map { removeLocked(id, $0) } != nil }
    }

    /// What a removal did (remove-guest-reply).
    public struct Removal: Sendable {
        /// Live modules the session held.
        public let liveModules: Int
        /// The build's facts the guest used are no longer held (it was the last guest on its
        /// shared copy, or the copy was its own).
        public let buildReleased: Bool
    }

    /// Drop guest `id` when `s` is still its current session (remove-guest): nil when it is not
    /// (a reset or another removal came first: that session is already gone, and a newer one of
    /// the same id is not this request's to remove).
    /// `arrivedAt`: the removal's arrival stamp (a reset that arrived before it registers
    /// nothing: `register(_:arrivedAt:)`); nil: now.
    public func remove(_ id: String, ifCurrent s: GuestSession, arrivedAt: UInt64? = nil) -> Removal? {
        lock.withLock {
            guard let current = guests[GuestKey(id)], current === s else { return nil }
            return removeLocked(id, s, arrivedAt: arrivedAt)
        }
    }

    /// The removal itself: the session ends (its live charge goes back; a verdict still being
    /// judged in it is denied), its own charge and slot go, its build's count drops. Caller holds `lock`.
    private func removeLocked(_ id: String, _ s: GuestSession, arrivedAt: UInt64? = nil) -> Removal {
        guests.removeValue(forKey: GuestKey(id))
        s.end("was removed (remove-guest)")
        let modules = s.liveModuleCount  // after end: no commit lands in it any more
        let stamp = arrivedAt ?? arrivals.add(1, ordering: .sequentiallyConsistent).newValue
        let key = Self.removedKey(id)
        removedAt[key] = stamp
        removals.append((key, stamp))
        if removals.count > 2 * Self.maximumRemovalsRemembered {
            for old in removals.prefix(Self.maximumRemovalsRemembered) where removedAt[old.key] == old.stamp { removedAt[old.key] = nil }
            removals.removeFirst(Self.maximumRemovalsRemembered)
        }
        charged[GuestKey(id)] = nil
        _ = release(s.kernel, dryRun: false)
        _ = ledger.setFacts(factsUsed, force: true)
        return Removal(liveModules: modules, buildReleased: s.kernel.key.map { builds[$0] == nil } ?? true)
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
            return "\(guests.count) guests are registered, the limit is \(maximumGuests) (a VMM sends remove-guest for each guest it destroys)"
        }
        let used = self.used - (charged[GuestKey(id)] ?? 0) - alsoFreed
        return used + cost > maximumSymbolBytes ? "\(cost) bytes of facts (symbols, static-call keys, the guest's own) on top of \(used) registered (live modules included) exceeds the \(maximumSymbolBytes)-byte budget" : nil
    }

    public func session(_ id: String) -> GuestSession? { lock.withLock { guests[GuestKey(id)] } }

    /// A reset of guest `id` stamped `arrival` (nil: not stamped) was refused: the guest's
    /// session ends when its registration arrived before the reset (its VMM revoked that
    /// session's grants; protocol.md, register-guest `reset`), keeping the reset's stamp. Under
    /// the registry's lock, so that an earlier reset of the guest still being judged is either
    /// installed before this (and it is that session that ends) or refused after it
    /// (`register`: `refusedResetArrival`), never installed live after the newer boot's refusal.
    /// Lock order registry → session → ledger.
    /// A reset that names a session (`token`, its `session` field) ends only a session it is of
    /// (`reset(naming:isOf:arrivedAt:)`); one that names none ends nothing of a session that
    /// requires tokens (`require_session`: its VMM names the session in its resets, so a
    /// token-less reset is not of it).
    public func endForRefusedReset(_ id: String, arrivedAt arrival: UInt64?, token: UInt64? = nil, _ why: String) {
        lock.withLock {
            guard let s = guests[GuestKey(id)], Self.reset(naming: token, isOf: s, arrivedAt: arrival),
                  token != nil || !s.requiresToken else { return }
            s.endForRefusedReset(why, arrival: arrival)
        }
    }

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
        if Self.sameLine(t, s.token) && t < s.token {
            return .session(s.standInForReplaced(token: t))
        }
        return .refused("session token \(Self.tokenText(t)) was not issued to guest '\(id)''s current line of sessions (another guest's token, one of an earlier registration of this id that was removed, or one not issued yet): a request echoes the token of its guest's register-guest-reply; nothing was judged")
    }
    public var count: Int { lock.withLock { guests.count } }
    /// Shared build copies held, with the number of guests on each (for status and tests).
    public var sharedBuilds: [(key: KernelFactsKey, guests: Int)] { lock.withLock { builds.map { ($0.key, $0.value.guests) } } }
    /// Bytes charged against `maximumSymbolBytes` now: facts and live modules.
    public var chargedBytes: Int { lock.withLock { used } }
    /// Of those, the live modules of every session (`GuestSession.liveBytes`).
    public var liveModuleBytes: Int { ledger.liveBytes }
}
