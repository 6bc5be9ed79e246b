// SPDX-License-Identifier: Apache-2.0
//
// Per-guest and per-guest-class rules for which kinds of code may become executable, and their
// resolution into the flat `Policy` the verifier judges with.
//
// Resolution order for one guest and one kind (first match wins):
//   1. a `for guest ID` rule naming exactly this guest id;
//   2. the first `for class NAME` rule (in file order) whose class matches the guest id;
//   3. the default rule (a bare `modules …` / `text-patches …` / `ebpf-jit …` line).
// Guest ids are the VMM's names for its guests. The VMM is the party that asks for verdicts and
// is trusted to name guests (it already decides which guest a request concerns); a class is
// therefore a set of VMM-assigned ids, never something the guest says about itself.

import ExecGateSignature

/// A kind of code that can become executable in a guest.
public enum CodeKind: String, Sendable, CaseIterable, Hashable {
    case modules
    case textPatches = "text-patches"
    case ebpfJIT = "ebpf-jit"
}

/// What the policy language says about one kind of code.
public enum KindSetting: String, Sendable, Hashable {
    /// Refused outright (`policy.kind-denied`).
    case deny
    /// Allowed when every other check passes.
    case allow
    /// Allowed only when the module's content hash is listed by a `pin` line (and every other check passes).
    case hashPinned = "hash-pinned"
    /// Every check runs; what enforce would deny is allowed, flagged `audit_only` and recorded (rollout).
    case auditOnly = "audit-only"
}

/// Whom a rule applies to.
public enum GuestSelector: Sendable, Hashable, CustomStringConvertible {
    /// The default for every guest.
    case all
    /// Exactly this guest id.
    case guest(String)
    /// A named class: a guest id matches when it equals one of `patterns`, or starts with the
    /// part before a pattern's single trailing `*`.
    case guestClass(name: String, patterns: [String])

    /// By UTF-8 bytes, never by `String` comparison: `String ==` takes a canonically equivalent
    /// spelling (U+212A for `K`), and `hasPrefix` compares grapheme clusters, so `appl*` did not
    /// match `appl` + U+0301 + `iance` (the accent joins the `l`) and that guest got the default
    /// rule instead of its class's. Patterns are ASCII (PolicyParser.checkName); the id is the
    /// VMM's, any UTF-8.
    public func matches(_ guestID: String) -> Bool {
        switch self {
        case .all: return true
        case .guest(let id): return id.utf8.elementsEqual(guestID.utf8)
        case .guestClass(_, let patterns):
            return patterns.contains { p in
                p.utf8.last == UInt8(ascii: "*") ? guestID.utf8.starts(with: p.utf8.dropLast()) : guestID.utf8.elementsEqual(p.utf8)
            }
        }
    }

    public var description: String {
        switch self {
        case .all: return "all guests"
        case .guest(let id): return "guest \(id)"
        case .guestClass(let name, _): return "class \(name)"
        }
    }
}

public struct KindRuleEntry: Sendable, Hashable {
    public var selector: GuestSelector
    public var kind: CodeKind
    public var setting: KindSetting
    public init(selector: GuestSelector, kind: CodeKind, setting: KindSetting) {
        self.selector = selector
        self.kind = kind
        self.setting = setting
    }

    /// What makes two rules the same rule (a policy gives at most one per kind and selector).
    struct Key: Hashable {
        let kind: CodeKind
        let selector: GuestSelector
    }
}

/// What the audit sink does when records arrive faster than it can hand them on.
public enum AuditOverflow: String, Sendable, Hashable {
    /// Fail closed: a verdict is only returned once its record was accepted; if the queue stays
    /// full past the sink's bound, the request is denied rather than allowed unrecorded.
    case block
    /// Keep serving: the record is dropped and counted; `policy show` and `status` report the count.
    case drop
}

extension Policy {
    /// The setting for `kind` as it applies to `guestID` (see the resolution order above).
    /// A policy built in code (no `kindRules`) has no settings: nil.
    /// `guestID` nil asks for the default (the rule for all guests).
    public func setting(for kind: CodeKind, guestID: String?) -> KindSetting? {
        let rules = kindRules.filter { $0.kind == kind }
        guard !rules.isEmpty else { return nil }
        guard let guestID else { return rules.first(where: { $0.selector == .all })?.setting }
        if let exact = rules.first(where: { if case .guest = $0.selector { return $0.selector.matches(guestID) }; return false }) {
            return exact.setting
        }
        if let cls = rules.first(where: { if case .guestClass = $0.selector { return $0.selector.matches(guestID) }; return false }) {
            return cls.setting
        }
        return rules.first(where: { $0.selector == .all })?.setting
    }

    /// The flat policy for one guest: the per-guest/class rules folded into `modules`,
    /// `textPatches`, `ebpfJIT` and `mode`. Id, version, trust and deny lists are unchanged, so a
    /// verdict still names the policy that decided it. A policy without rules returns itself.
    /// `guestID` nil resolves the defaults only.
    ///
    /// `audit-only` for the kind being judged (`kind`) turns the resolved policy's `mode` to
    /// `.audit` for this guest (the verifier already turns a deny into allow + `audit_only` in
    /// audit mode).
    public func resolved(forGuest guestID: String?, kind: CodeKind = .modules) -> Policy {
        guard !kindRules.isEmpty else { return self }
        var p = self
        let pins = pinnedModules
        func rule(_ s: KindSetting?, _ current: KindRule) -> KindRule {
            switch s {
            case nil: return current
            case .deny: return .deny
            case .allow, .auditOnly: return .allow
            case .hashPinned: return .hashPinned(pins)
            }
        }
        p.modules = rule(setting(for: .modules, guestID: guestID), modules)
        p.textPatches = rule(setting(for: .textPatches, guestID: guestID), textPatches)
        p.ebpfJIT = rule(setting(for: .ebpfJIT, guestID: guestID), ebpfJIT)
        if setting(for: kind, guestID: guestID) == .auditOnly { p.mode = .audit }
        return p
    }
}
