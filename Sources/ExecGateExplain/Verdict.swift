// SPDX-License-Identifier: Apache-2.0

import _ExecGateInternals

/// Why a byte has its value.
public enum ExplanationClass: Int, CaseIterable, Sendable, CustomStringConvertible {
    case elf = 0, relocation, paravirt, retpoline, returnThunk, alternative, endbrSeal, smpLock, ftrace,
         jumpLabel, staticCall, padding
    public var description: String {
        switch self {
        case .elf: return "elf"
        case .relocation: return "relocation"
        case .paravirt: return "paravirt"
        case .retpoline: return "retpoline"
        case .returnThunk: return "return"
        case .alternative: return "alternative"
        case .endbrSeal: return "endbr-seal"
        case .smpLock: return "smp-lock"
        case .ftrace: return "ftrace"
        case .jumpLabel: return "jump-label"
        case .staticCall: return "static-call"
        case .padding: return "padding"
        }
    }
}

public struct ExplainStats: Sendable {
    /// Counts indexed by `ExplanationClass.rawValue` (the engine's own counters, handed over as
    /// they are: a dictionary a module, built and hashed per class, cost ~1% of a corpus pass).
    var classBytes = [Int](repeating: 0, count: ExplanationClass.allCases.count)
    var classSites = [Int](repeating: 0, count: ExplanationClass.allCases.count)
    /// Classes a setter listed with a count of 0 (bit `rawValue`): read back as listed, as the
    /// stored dictionaries these replace kept them (the engine lists a class only with a count).
    var zeroBytesListed: UInt64 = 0
    var zeroSitesListed: UInt64 = 0

    /// Bytes of the executable region by the last rule that produced them (classes with none
    /// are absent).
    public var bytesByClass: [ExplanationClass: Int] {
        get { Self.dictionary(classBytes, listedZeros: zeroBytesListed) }
        set { (classBytes, zeroBytesListed) = Self.counts(newValue) }
    }
    public var executableBytes: Int = 0
    public var relocationsApplied: Int = 0
    /// Sites rewritten per class (classes with none are absent).
    public var sites: [ExplanationClass: Int] {
        get { Self.dictionary(classSites, listedZeros: zeroSitesListed) }
        set { (classSites, zeroSitesListed) = Self.counts(newValue) }
    }

    public init() {}

    /// Bytes of one class (0 if none), without making the dictionary.
    public func bytes(of c: ExplanationClass) -> Int { classBytes[c.rawValue] }

    static func dictionary(_ counts: [Int], listedZeros: UInt64) -> [ExplanationClass: Int] {
        var d: [ExplanationClass: Int] = [:]
        for c in ExplanationClass.allCases where counts[c.rawValue] != 0 || listedZeros & (1 << UInt64(c.rawValue)) != 0 {
            d[c] = counts[c.rawValue]
        }
        return d
    }
    static func counts(_ d: [ExplanationClass: Int]) -> ([Int], listedZeros: UInt64) {
        var a = [Int](repeating: 0, count: ExplanationClass.allCases.count), zeros: UInt64 = 0
        for (c, n) in d {
            a[c.rawValue] = n
            if n == 0 { zeros |= 1 << UInt64(c.rawValue) }
        }
        return (a, zeros)
    }
}

/// Which rule a denial is under: one code per distinct meaning (printed as `rule` in verdicts).
public enum DenialRule: Sendable, Hashable, CustomStringConvertible {
    /// The claim's structure contradicts `layout_sections()` or the trusted areas (size, base,
    /// section addresses, per-cpu base).
    case layout
    /// No replayed loader matches the kernel release / the module's vermagic and struct module
    /// (LoaderSelection.swift), or the loader has a step ExecGate does not model (named).
    case loader
    /// The signed module's ELF could not be read.
    case malformedELF
    /// A loader stage could not account for a byte or refused the module (the stage's class).
    case stage(ExplanationClass)
    /// The module has per-cpu data but no verifiable per-cpu base (`percpu_modalloc()`).
    case perCPU
    /// `.modinfo` `vermagic=` missing or for another kernel release (`check_modinfo()`).
    case vermagic
    /// The module exports a name already exported (`verify_exported_symbols()`).
    case duplicateExport
    /// Module text would refer to init memory that is freed after init (the module's own `.init*`
    /// sections from core text, or the core kernel's init text/data).
    case initSymbol

    public static let relocation = DenialRule.stage(.relocation)
    public static let paravirt = DenialRule.stage(.paravirt)
    public static let retpoline = DenialRule.stage(.retpoline)
    public static let alternative = DenialRule.stage(.alternative)
    public static let jumpLabel = DenialRule.stage(.jumpLabel)
    public static let staticCall = DenialRule.stage(.staticCall)

    public var description: String {
        switch self {
        case .layout: return "layout"
        case .loader: return "loader"
        case .malformedELF: return "elf"
        case .stage(let c): return c.description
        case .perCPU: return "percpu"
        case .vermagic: return "vermagic"
        case .duplicateExport: return "duplicate-export"
        case .initSymbol: return "init-symbol"
        }
    }
}

/// The first byte that could not be explained.
public struct Denial: Sendable, CustomStringConvertible {
    public var module: String
    /// Section containing the byte ("(padding)" between sections, "(claim)" for structural problems).
    public var section: String
    public var offset: Int
    public var address: UInt64
    public var expected: [UInt8]
    public var found: [UInt8]
    public var rule: DenialRule
    public var reason: String
    /// How many bytes of the executable region differ from their explanation (1 for structural
    /// denials, where no byte comparison took place).
    public var unexplainedBytes: Int

    public init(module: String, section: String, offset: Int, address: UInt64, expected: [UInt8], found: [UInt8], rule: DenialRule, reason: String,
                unexplainedBytes: Int = 1) {
        self.module = module; self.section = Self.bounded(section); self.offset = offset; self.address = address
        self.expected = expected; self.found = found; self.rule = rule; self.reason = Self.bounded(reason)
        self.unexplainedBytes = unexplainedBytes
    }

    /// The most of a reason (or section name) a denial carries, in UTF-8 bytes: a reason quotes
    /// names the signed module chose, and a multi-megabyte symbol name made a multi-megabyte
    /// verdict message (round 11). Longer text is cut at a character boundary and says how long
    /// it was.
    public static let maximumTextBytes = 4096

    static func bounded(_ s: String) -> String {
        let n = s.utf8.count
        guard n > maximumTextBytes else { return s }
        return s.prefix(utf8Bytes: maximumTextBytes - 64) + "… (\(n) bytes, cut)"
    }

    public var description: String {
        let e = expected.map { Hex.encode(CollectionOfOne($0)) }.joined(separator: " ")
        let f = found.map { Hex.encode(CollectionOfOne($0)) }.joined(separator: " ")
        // A structural denial (layout, loader, claim) has no bytes to show: no empty brackets.
        let bytes = expected.isEmpty && found.isEmpty ? "" : " expected [\(e)] found [\(f)]:"
        // A denial of the claim as a whole (an unknown symbol, a refused placement) has no byte
        // to point at: no "(claim)+0x0 (0x0)".
        if section == "(claim)" && offset == 0 && address == 0 { return "\(module):\(bytes) \(rule): \(reason)" }
        return "\(module): \(section)+0x\(String(offset, radix: 16)) (0x\(String(address, radix: 16))):\(bytes) \(rule): \(reason)"
    }
}

public enum Verdict: Sendable {
    case allowed(ExplainStats)
    case denied(Denial)
    public var isAllowed: Bool { if case .allowed = self { return true }; return false }
}

public struct ExplainResult: Sendable {
    public var verdict: Verdict
    /// Exports to add to the resolver if (and only if) the verdict is allowed.
    public var exports: ModuleExports?
    /// On allow: the module's run-time patch sites with their legal encodings (for later
    /// jump-label / static-call / ftrace patch requests).
    public var runtimeSites: RuntimeSiteTable?
    /// On allow of a claim with an init region: its statistics and run-time sites (valid until
    /// the VMM reports init freed; then both must be dropped and EXEC on the init pages revoked).
    public var initStatistics: ExplainStats?
    public var initRuntimeSites: RuntimeSiteTable?
    /// On allow, 6.12 only: the module's other allocations, page-aligned at their checked bases
    /// (`move_module()` allocates each `enum mod_mem_type` on its own): MOD_DATA, MOD_RODATA and
    /// MOD_RO_AFTER_INIT for the module's lifetime, and with an init region MOD_INIT_DATA and
    /// MOD_INIT_RODATA until init is freed. A live module holds them (no other claim may be laid
    /// over them); empty on 6.1, whose core allocation is one range from the text base.
    public var dataAllocations: [Range<UInt64>] = []
    public var initDataAllocations: [Range<UInt64>] = []
    public init(verdict: Verdict, exports: ModuleExports?, runtimeSites: RuntimeSiteTable? = nil) {
        self.verdict = verdict
        self.exports = exports
        self.runtimeSites = runtimeSites
    }
}
