// SPDX-License-Identifier: Apache-2.0
//
// Per-guest state. What is trusted here, and why (docs/trust.md):
//   - the registration facts (kernel symbols, CPU capability words, slide, …) come from the VMM,
//     which reads them from the guest kernel's locked read-only memory or takes them from the
//     operator's build — never from the guest's word at run time;
//   - module exports enter a guest's symbol set only when ExecGate itself allowed that module
//     for that guest, so a later module can only be relocated against code ExecGate verified.

import ExecGateWire
import NIOConcurrencyHelpers

public final class GuestSession: @unchecked Sendable {
    // @unchecked: `exports` is guarded by `lock`; `facts` is immutable.
    public let facts: RegisterGuest
    /// Core-kernel exports by name (the guest's registered symbols).
    public let kernelSymbols: [String: UInt64]
    private let lock = NIOLock()
    private var _moduleExports: [String: UInt64] = [:]
    private var _allowedModules: [String] = []

    init(facts: RegisterGuest) {
        self.facts = facts
        var symbols: [String: UInt64] = [:]
        symbols.reserveCapacity(facts.symbols.count)
        for s in facts.symbols where symbols[s.name] == nil { symbols[s.name] = s.address }
        self.kernelSymbols = symbols
    }

    /// Exports of modules ExecGate allowed for this guest, by name.
    public var moduleExports: [String: UInt64] { lock.withLock { _moduleExports } }
    public var allowedModules: [String] { lock.withLock { _allowedModules } }

    /// Record an allowed module and the exports it brings.
    public func recordAllowed(module: String, exports: [String: UInt64]) {
        lock.withLock {
            _allowedModules.append(module)
            for (k, v) in exports where _moduleExports[k] == nil { _moduleExports[k] = v }
        }
    }

    /// Resolve a name the way the module loader does: core exports, then verified modules' exports.
    public func resolve(_ name: String) -> UInt64? {
        if let a = kernelSymbols[name] { return a }
        return lock.withLock { _moduleExports[name] }
    }
}

/// All registered guests. Re-registering an id replaces its session (a rebooted guest).
public final class GuestRegistry: @unchecked Sendable {
    // @unchecked: `guests` is guarded by `lock`.
    private let lock = NIOLock()
    private var guests: [String: GuestSession] = [:]

    public init() {}

    @discardableResult
    public func register(_ facts: RegisterGuest) -> GuestSession {
        let s = GuestSession(facts: facts)
        lock.withLock { guests[facts.guestID] = s }
        return s
    }

    public func session(_ id: String) -> GuestSession? { lock.withLock { guests[id] } }
    public var count: Int { lock.withLock { guests.count } }
}
