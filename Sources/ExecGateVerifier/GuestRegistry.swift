// SPDX-License-Identifier: Apache-2.0
//
// Per-guest state. What is trusted here, and why (docs/trust.md):
//   - the registration facts (kernel symbols, CPU capability words, slide, …) come from the VMM,
//     which reads them from the guest kernel's locked read-only memory or takes them from the
//     operator's build — never from the guest's word at run time;
//   - module exports enter a guest's symbol set only when ExecGate itself allowed that module
//     for that guest, so a later module can only be relocated against code ExecGate verified.

import ExecGateExplain
import ExecGateWire
import NIOConcurrencyHelpers

public final class GuestSession: @unchecked Sendable {
    // @unchecked: `resolver` and `allowed` are guarded by `lock`; `registration` and `facts` are immutable.
    public let registration: RegisterGuest
    /// The explanation engine's view of the registration (built once).
    public let facts: GuestFacts
    private let lock = NIOLock()
    private var resolver: SymbolResolver
    private var allowed: [String] = []
    /// Run-time patch sites of allowed modules (jump labels, static calls, ftrace).
    private var patchSites: [RuntimeSiteTable] = []

    init(registration: RegisterGuest) {
        self.registration = registration
        self.facts = GuestFactsBuilder.facts(from: registration)
        self.resolver = SymbolResolver(coreExports: facts.exports)
    }

    /// A snapshot of the resolver: core exports plus exports of modules allowed so far.
    public var symbolResolver: SymbolResolver { lock.withLock { resolver } }
    public var allowedModules: [String] { lock.withLock { allowed } }

    /// Record an allowed module and the exports it brings. Only the verifier calls this, and only
    /// after an allow verdict: a denied module's symbols never become resolvable.
    func recordAllowed(module: String, exports: ModuleExports?, sites: RuntimeSiteTable?) {
        lock.withLock {
            allowed.append(module)
            if let e = exports { resolver.add(e) }
            if let t = sites { patchSites.append(t) }
        }
    }

    /// The site tables of allowed modules (a snapshot).
    public var runtimeSites: [RuntimeSiteTable] { lock.withLock { patchSites } }
}

/// All registered guests. Re-registering an id replaces its session (a rebooted guest).
public final class GuestRegistry: @unchecked Sendable {
    // @unchecked: `guests` is guarded by `lock`.
    private let lock = NIOLock()
    private var guests: [String: GuestSession] = [:]

    public init() {}

    @discardableResult
    public func register(_ facts: RegisterGuest) -> GuestSession {
        let s = GuestSession(registration: facts)
        lock.withLock { guests[facts.guestID] = s }
        return s
    }

    public func session(_ id: String) -> GuestSession? { lock.withLock { guests[id] } }
    public var count: Int { lock.withLock { guests.count } }
}
