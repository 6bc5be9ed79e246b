// SPDX-License-Identifier: Apache-2.0
//
// A policy is data: what ExecGate trusts and refuses, and how strictly it judges. It is pure
// (no I/O): loading from files and the signed bundle format live at the edges. Every verdict
// names the policy id and version that decided it.

import ExecGateSignature

public struct Policy: Sendable {
    /// What happens when a check fails.
    public enum Mode: String, Sendable {
        /// Deny.
        case enforce
        /// Allow, but mark the verdict `audit_only` and record what enforce would have denied.
        case audit
    }

    /// Whether an authorize request must be judged on its bytes (end-state) or may be judged on
    /// its evidence alone. Fail closed: `required` is the default everywhere (built-in policy,
    /// policy files without an `end-state` line, `Policy(...)` in code).
    public enum EndState: String, Sendable {
        /// Every authorize-module must name a registered guest and carry the executable region;
        /// every claimed byte is explained or the request is denied.
        case required
        /// Operator opt-in: a request that claims no executable bytes (no `text`, no section
        /// bytes) is judged on signature, deny lists and structure only, and its verdict says so
        /// (`signature_only`). Bytes that are claimed are still explained byte for byte, or denied.
        case signatureOnly = "signature-only"
    }

    /// How one kind of code (modules, run-time patches, eBPF JIT) is treated.
    public enum KindRule: Sendable, Equatable {
        case deny
        case allow
        /// Only modules whose content hash is listed (and which pass every other check).
        case hashPinned(Set<Digest>)
    }

    public var id: String
    public var version: UInt64
    public var mode: Mode
    public var trust: TrustStore
    public var denyList: DenyList
    /// Module names (the signed `struct module` name, equal to `.modinfo name=`; `-` and `_`
    /// equivalent) refused even when signed.
    public var deniedModuleNames: Set<String>
    public var minimumDigest: DigestAlgorithm
    public var endState: EndState
    public var modules: KindRule
    public var textPatches: KindRule
    /// eBPF JIT output (reserved: not yet served on the wire; carried so a policy can state it).
    public var ebpfJIT: KindRule
    /// What the audit sink does when its queue is full (see `AuditOverflow`).
    public var auditOverflow: AuditOverflow
    /// Per-guest and per-guest-class rules from the policy language, in file order, plus the
    /// defaults (`selector == .all`). Empty for a policy built in code: then `modules`,
    /// `textPatches`, `ebpfJIT` and `mode` apply to every guest unchanged.
    public var kindRules: [KindRuleEntry]
    /// The exact bytes the policy was parsed from (nil for a policy built in code). A signed
    /// bundle's signature covers exactly these bytes; `policy show` returns them.
    public var source: [UInt8]?
    /// Module content hashes listed by `pin` lines: what a `hash-pinned` rule admits.
    public var pinnedModules: Set<Digest>
    /// Kernel builds a guest may register with (`kernel` lines). Empty: any kernel the VMM
    /// measured. Otherwise register-guest must carry a listed `kernel_digest`, and its symbol
    /// table must hash to the digest pinned with it (see `KernelPin`).
    public var trustedKernels: [KernelPin] = []

    public init(id: String, version: UInt64, mode: Mode = .enforce, trust: TrustStore, denyList: DenyList = .empty,
                deniedModuleNames: Set<String> = [], minimumDigest: DigestAlgorithm = .sha256,
                endState: EndState = .required, modules: KindRule = .allow, textPatches: KindRule = .allow,
                ebpfJIT: KindRule = .allow, auditOverflow: AuditOverflow = .block, kindRules: [KindRuleEntry] = [],
                source: [UInt8]? = nil, pinnedModules: Set<Digest> = []) {
        self.id = id
        self.version = version
        self.mode = mode
        self.trust = trust
        self.denyList = denyList
        self.deniedModuleNames = Set(deniedModuleNames.map(Policy.canonicalModuleName))
        self.minimumDigest = minimumDigest
        self.endState = endState
        self.modules = modules
        self.textPatches = textPatches
        self.ebpfJIT = ebpfJIT
        self.auditOverflow = auditOverflow
        self.kindRules = kindRules
        self.source = source
        self.pinnedModules = pinnedModules
    }

    /// The policy built into the binary: enforce, SHA-256 or stronger, the given anchors, end-state
    /// required (fail closed). Version 1, so any pushed policy must be version 2 or later.
    public static func builtIn(trust: TrustStore) -> Policy {
        Policy(id: "builtin-default", version: 1, trust: trust)
    }

    /// The kernel treats `-` and `_` in module names as the same character.
    public static func canonicalModuleName(_ name: String) -> String {
        String(name.map { $0 == "-" ? "_" : $0 })
    }
}

/// One trusted kernel build: the SHA-256 of its image and of its symbol table as register-guest
/// carries it, at link-time addresses (each record `{u64 address − kaslr_slide; u8 type; u8 flags;
/// u16 name_len; name}`, big-endian, in the order sent). The symbols digest does not depend on the
/// boot's KASLR slide (image addresses, ≥ 0xffffffff80000000, have the slide subtracted; per-cpu
/// offsets do not move), so one pin covers every boot of the build; register-guest-reply reports it.
public struct KernelPin: Sendable, Hashable {
    public var kernel: Digest
    public var symbols: Digest
    public init(kernel: Digest, symbols: Digest) {
        self.kernel = kernel
        self.symbols = symbols
    }
}
