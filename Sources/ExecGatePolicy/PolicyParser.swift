// SPDX-License-Identifier: Apache-2.0
//
// The policy language: a small line-oriented text a security reviewer reads in one sitting.
// docs/policy.md is the user documentation; this file is the grammar's only implementation.
//
//     file      := line*
//     line      := ws* [directive] ws* ['#' comment] '\n'
//     directive := 'execgate-policy' '1'                      (must be the first directive)
//                | 'id' NAME | 'version' U64 | 'mode' ('enforce'|'audit')
//                | 'minimum-digest' DIGEST | 'end-state' ('required'|'signature-only')
//                | 'audit-overflow' ('block'|'drop')
//                | 'trust' 'kernel-builtin'
//                | 'trust' 'sha256:'HEX64  PEM-BLOCK             (PEM on the following lines)
//                | 'deny' ('certificate'|'module') 'sha256:'HEX64 | 'deny' 'module-name' NAME
//                | 'pin' 'sha256:'HEX64
//                | 'kernel' 'sha256:'HEX64 'symbols' 'sha256:'HEX64
//                | 'class' NAME PATTERN+
//                | KIND SETTING [ 'for' ('guest' ID | 'class' NAME) ]
//     KIND      := 'modules' | 'text-patches' | 'ebpf-jit'
//     SETTING   := 'deny' | 'allow' | 'hash-pinned' | 'audit-only'
//
// Security properties the parser enforces (a policy that says something ExecGate does not
// understand must not load, and must never load as something weaker than what it says):
//   - unknown keywords, extra tokens and missing arguments are errors, never ignored;
//   - singular settings given twice are errors (no "last one wins" surprises);
//   - an embedded trust anchor must match the fingerprint written next to it, so what the
//     reviewer reads (the fingerprint) is what is trusted;
//   - input is bounded (size, line length) and must be UTF-8 with LF line endings: the signature
//     covers exact bytes, and invisible differences (CR, NUL) would let two readers disagree.
// Errors name file, line and column (1-based; columns count bytes, which for the ASCII keywords
// of the language are characters).
//
// Pure: no I/O. The caller passes the bytes and the anchors `trust kernel-builtin` stands for.

import ExecGateSignature

// MARK: - Errors

/// Why a policy text was refused. Equality compares code, line and column (tests match on them).
public struct PolicyParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Backing: String, Sendable {
            case encoding = "policy.encoding"
            case tooLarge = "policy.too-large"
            case unknownKeyword = "policy.unknown-keyword"
            case badArgument = "policy.bad-argument"
            case missingArgument = "policy.missing-argument"
            case extraArgument = "policy.extra-argument"
            case duplicate = "policy.duplicate"
            case missingDirective = "policy.missing-directive"
            case badCertificate = "policy.bad-certificate"
            case fingerprintMismatch = "policy.fingerprint-mismatch"
            case undefinedClass = "policy.undefined-class"
            case unused = "policy.unused"
            case header = "policy.header"
        }
        let backing: Backing
        public static let encoding = Code(backing: .encoding)
        public static let tooLarge = Code(backing: .tooLarge)
        public static let unknownKeyword = Code(backing: .unknownKeyword)
        public static let badArgument = Code(backing: .badArgument)
        public static let missingArgument = Code(backing: .missingArgument)
        public static let extraArgument = Code(backing: .extraArgument)
        public static let duplicate = Code(backing: .duplicate)
        public static let missingDirective = Code(backing: .missingDirective)
        public static let badCertificate = Code(backing: .badCertificate)
        public static let fingerprintMismatch = Code(backing: .fingerprintMismatch)
        public static let undefinedClass = Code(backing: .undefinedClass)
        /// A line that would change nothing (a pin no hash-pinned rule reads, a class no rule names).
        public static let unused = Code(backing: .unused)
        public static let header = Code(backing: .header)
        public var rawValue: String { backing.rawValue }
        public var description: String { backing.rawValue }
    }

    public let code: Code
    public let file: String
    public let line: Int
    public let column: Int
    public let reason: String

    init(_ code: Code, _ file: String, _ line: Int, _ column: Int, _ reason: String) {
        self.code = code
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason
    }

    /// `FILE:LINE:COLUMN: error: REASON [code]`, the form editors and compilers use.
    public var description: String { "\(file):\(line):\(column): error: \(reason) [\(code)]" }

    public static func == (a: Self, b: Self) -> Bool { a.code == b.code && a.line == b.line && a.column == b.column }
    public func hash(into h: inout Hasher) { h.combine(code); h.combine(line); h.combine(column) }
}

// MARK: - Limits

public enum PolicyLimits {
    /// Largest policy text: 1 MiB (a policy with a few hundred pins and anchors is ~100 KiB).
    public static let maximumSize = 1 << 20
    /// Longest line in bytes (PEM lines are 64; a long class line of guest ids fits easily).
    public static let maximumLineLength = 4096
    /// Longest id, guest id or class name.
    public static let maximumNameLength = 128
    /// Longest module name: `struct module`'s `char name[MODULE_NAME_LEN]` holds at most
    /// MODULE_NAME_LEN − 1 = 55 bytes and its NUL (include/linux/module.h: MODULE_NAME_LEN =
    /// MAX_PARAM_PREFIX_LEN = 64 − sizeof(unsigned long) on x86-64). A longer deny name matches
    /// no module the kernel (or ExecGate's ModuleName) accepts: a rule that would be ignored.
    public static let maximumModuleNameLength = 55
    /// The only policy language version this implementation reads.
    public static let languageVersion = "1"
}

// MARK: - Parser

public enum PolicyParser {
    /// Parses a policy text.
    ///
    /// - Parameters:
    ///   - bytes: the exact policy bytes (for a bundle: the signed bytes).
    ///   - file: the name used in error messages.
    ///   - builtinAnchors: what `trust kernel-builtin` stands for (the guest kernel's own builtin
    ///     certificates the service was started with). nil = not known here (signing, linting):
    ///     the line is accepted and resolves to nothing.
    /// - Returns: the policy, with `source` set to `bytes`.
    /// - Throws: `PolicyParseError` naming file, line and column.
    public static func parse(_ bytes: [UInt8], file: String, builtinAnchors: [Certificate]? = nil) throws(PolicyParseError) -> Policy {
        var p = Parser(bytes: bytes, file: file, builtinAnchors: builtinAnchors)
        return try p.run()
    }
}

/// One whitespace-separated word of a line and where it starts.
struct Token {
    var text: String
    var column: Int
}

struct Parser {
    let bytes: [UInt8]
    let file: String
    let builtinAnchors: [Certificate]?

    // Collected state.
    var sawHeader = false
    var id: (String, Int)?
    var version: UInt64?
    var mode: Policy.Mode?
    var minimumDigest: DigestAlgorithm?
    var endState: Policy.EndState?
    var auditOverflow: AuditOverflow?
    var anchors: [Certificate] = []
    var trustLines = 0
    var deniedCertificates = Set<Digest>()
    var deniedModules = Set<Digest>()
    var deniedNames = Set<String>()
    var pins = Set<Digest>()
    var kernels: [KernelPin] = []
    var classes: [String: [String]] = [:]
    var rules: [KindRuleEntry] = []
    /// The (kind, selector) pairs of `rules`: a duplicate is found by one lookup, not by comparing
    /// each rule with every earlier one (quadratic: 16,000 class rules, 800 KB, took 99 s to
    /// parse; `policy check` reads texts nobody signed yet).
    var ruleKeys = Set<KindRuleEntry.Key>()
    var hashPinnedLine: (Int, Int)?
    /// The first `pin` line (a pin no `hash-pinned` rule reads would be ignored: refused).
    var firstPinLine: (Int, Int)?
    /// Where each class is defined, and the classes a rule names (an unnamed class is refused).
    var classLines: [String: (Int, Int)] = [:]
    var usedClasses = Set<String>()
    /// `trust kernel-builtin` seen (a second one says nothing more: refused as given twice).
    var sawKernelBuiltin = false
    /// The fingerprints of the `trust sha256:…` lines (one of them twice is refused).
    var explicitAnchors = Set<Digest>()

    init(bytes: [UInt8], file: String, builtinAnchors: [Certificate]?) {
        self.bytes = bytes
        self.file = file
        self.builtinAnchors = builtinAnchors
    }

    func fail(_ code: PolicyParseError.Code, _ line: Int, _ column: Int, _ why: String) -> PolicyParseError {
        PolicyParseError(code, file, line, column, why)
    }

    mutating func run() throws(PolicyParseError) -> Policy {
        guard bytes.count <= PolicyLimits.maximumSize else {
            throw fail(.tooLarge, 1, 1, "policy is \(bytes.count) bytes; the limit is \(PolicyLimits.maximumSize)")
        }
        // Split into lines first (the whole text is already bounded), then read one directive per
        // line; a `trust sha256:…` line also consumes the PEM block under it.
        let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        let count = lines.last?.isEmpty == true ? lines.count - 1 : lines.count
        var index = 0
        while index < count {
            let lineNo = index + 1
            let tokens = try tokens(of: lines[index], lineNo)
            index += 1
            guard let head = tokens.first else { continue }
            if !sawHeader && head.text != "execgate-policy" {
                throw fail(.header, lineNo, head.column, "the first directive must be 'execgate-policy \(PolicyLimits.languageVersion)'")
            }
            index += try directive(head, Array(tokens.dropFirst()), lineNo, lines: lines[..<count], next: index)
        }
        return try finish(endLine: count + 1)
    }

    /// One line's words, after the byte-level rules (length, control characters, UTF-8), each
    /// refused with its exact position.
    func tokens(of raw: [UInt8], _ lineNo: Int) throws(PolicyParseError) -> [Token] {
        guard raw.count <= PolicyLimits.maximumLineLength else {
            throw fail(.tooLarge, lineNo, PolicyLimits.maximumLineLength + 1, "line is longer than \(PolicyLimits.maximumLineLength) bytes")
        }
        if let cr = raw.firstIndex(where: { $0 == 0x0D || $0 == 0x00 || ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
            let what = raw[cr] == 0x0D ? "carriage return (use LF line endings)" : "control character 0x\(String(raw[cr], radix: 16))"
            throw fail(.encoding, lineNo, cr + 1, what)
        }
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw fail(.encoding, lineNo, 1, "line is not valid UTF-8")
        }
        // What a Unicode-aware reader takes for a line break or a reordering of the text: the C1
        // controls (U+0085 NEXT LINE among them), U+2028/U+2029, and the bidirectional marks,
        // embeddings, overrides and isolates ("Trojan Source", CVE-2021-42574). In a comment they
        // would show a reviewer a directive the parser never reads.
        if raw.contains(where: { $0 >= 0x80 }) {
            var offset = 0
            for s in text.unicodeScalars {
                if Self.confusesReaders(s.value) {
                    throw fail(.encoding, lineNo, offset + 1, "U+\(String(s.value, radix: 16, uppercase: true).leftPadded(4)) (a C1 control, line or paragraph separator, or bidirectional control): two readers could see different texts")
                }
                offset += UTF8.width(s)
            }
        }
        return Self.tokenize(raw)
    }

    /// Applies one directive. Returns how many lines after it the directive consumed (a PEM block).
    mutating func directive(_ head: Token, _ args: [Token], _ lineNo: Int, lines: ArraySlice<[UInt8]>, next: Int) throws(PolicyParseError) -> Int {
        switch head.text {
        case "execgate-policy":
            try once(sawHeader, head, lineNo)
            let v = try one(args, lineNo, head, "the language version")
            guard v.text == PolicyLimits.languageVersion else {
                throw fail(.header, lineNo, v.column, "policy language version '\(v.text)' is not supported (this ExecGate reads version \(PolicyLimits.languageVersion))")
            }
            sawHeader = true
        case "id":
            try once(id != nil, head, lineNo)
            let v = try one(args, lineNo, head, "the policy id")
            try checkName(v, lineNo, what: "policy id")
            id = (v.text, lineNo)
        case "version":
            try once(version != nil, head, lineNo)
            let v = try one(args, lineNo, head, "the policy version")
            guard v.text.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(v.text), n >= 1 else {
                throw fail(.badArgument, lineNo, v.column, "version must be a decimal integer from 1 to \(UInt64.max), not '\(v.text)'")
            }
            version = n
        case "mode":
            try once(mode != nil, head, lineNo)
            mode = try choice(one(args, lineNo, head, "enforce or audit"), lineNo, head, "'enforce' or 'audit'")
        case "minimum-digest":
            try once(minimumDigest != nil, head, lineNo)
            let v = try one(args, lineNo, head, "a digest name")
            guard let d = DigestAlgorithm(name: v.text), v.text == d.name else {
                throw fail(.badArgument, lineNo, v.column, "unknown digest '\(v.text)' (one of \(DigestAlgorithm.allCases.map(\.name).joined(separator: ", ")))")
            }
            minimumDigest = d
        case "end-state":
            try once(endState != nil, head, lineNo)
            let v = try one(args, lineNo, head, "required or signature-only")
            if v.text == "when-claimed" {
                // Removed: it judged bytes only when the claim happened to carry them (fail open).
                throw fail(.badArgument, lineNo, v.column, "'when-claimed' is no longer accepted (it let unjudged bytes through): write 'required', or 'signature-only' to opt out of byte judgement explicitly")
            }
            endState = try choice(v, lineNo, head, "'required' or 'signature-only'")
        case "audit-overflow":
            try once(auditOverflow != nil, head, lineNo)
            auditOverflow = try choice(one(args, lineNo, head, "block or drop"), lineNo, head, "'block' or 'drop'")
        case "trust":
            return try trust(args, lineNo, head, lines: lines, next: next)
        case "deny":
            try deny(args, lineNo, head)
        case "pin":
            let v = try one(args, lineNo, head, "sha256:HASH of a module's content")
            guard pins.insert(try digest(v, lineNo)).inserted else { throw fail(.duplicate, lineNo, v.column, "pin \(v.text) given twice") }
            if firstPinLine == nil { firstPinLine = (lineNo, head.column) }
        case "kernel":
            guard args.count == 3, args[1].text == "symbols" else {
                throw fail(args.count < 3 ? .missingArgument : .extraArgument, lineNo, (args.last ?? head).column,
                           "'kernel' takes 'sha256:KERNEL_IMAGE symbols sha256:SYMBOL_TABLE'")
            }
            let pin = KernelPin(kernel: try digest(args[0], lineNo), symbols: try digest(args[2], lineNo))
            if kernels.contains(pin) { throw fail(.duplicate, lineNo, args[0].column, "kernel pin given twice") }
            // One kernel image has one symbol table: a second table for it is a contradiction the
            // verifier would resolve silently (the first pin of the image applies), so it never loads.
            if let other = kernels.first(where: { $0.kernel == pin.kernel }) {
                throw fail(.duplicate, lineNo, args[2].column, "kernel \(pin.kernel) is already pinned with symbols \(other.symbols): one kernel image has one symbol table")
            }
            kernels.append(pin)
        case "class":
            try guestClass(args, lineNo, head)
        default:
            guard let kind = CodeKind(rawValue: head.text) else {
                throw fail(.unknownKeyword, lineNo, head.column, "unknown keyword '\(head.text)'")
            }
            try kindRule(kind, head, args, lineNo)
        }
        return 0
    }

    /// The rules that need the whole file: required directives, and the defaults of unstated kinds.
    mutating func finish(endLine end: Int) throws(PolicyParseError) -> Policy {
        guard sawHeader else { throw fail(.header, 1, 1, "empty policy: the first directive must be 'execgate-policy \(PolicyLimits.languageVersion)'") }
        guard let id else { throw fail(.missingDirective, end, 1, "no 'id' line") }
        guard let version else { throw fail(.missingDirective, end, 1, "no 'version' line") }
        guard let mode else { throw fail(.missingDirective, end, 1, "no 'mode' line (enforce or audit): the mode must be stated, not assumed") }
        guard trustLines > 0 else { throw fail(.missingDirective, end, 1, "no 'trust' line: nothing would be trusted") }
        guard rules.contains(where: { $0.kind == .modules && $0.selector == .all }) else {
            throw fail(.missingDirective, end, 1, "no default 'modules' rule (deny, allow, hash-pinned or audit-only)")
        }
        if let (l, c) = hashPinnedLine, pins.isEmpty {
            throw fail(.missingDirective, l, c, "'hash-pinned' but no 'pin' line: nothing could load (write 'deny' if that is meant)")
        }
        // A policy that says something ExecGate would ignore never loads (docs/policy.md).
        if let (l, c) = firstPinLine, hashPinnedLine == nil {
            throw fail(.unused, l, c, "'pin' lines but no 'hash-pinned' rule reads them: they would change nothing (write 'modules hash-pinned', or remove the pins)")
        }
        if let (name, (l, c)) = classLines.filter({ !usedClasses.contains($0.key) }).min(by: { $0.value.0 < $1.value.0 }) {
            throw fail(.unused, l, c, "class '\(name)' is named by no rule: it would change nothing (write a rule 'KIND SETTING for class \(name)', or remove it)")
        }
        // Unstated kinds default to deny: a kind the reviewer did not think about is not allowed.
        for kind in [CodeKind.textPatches, .ebpfJIT] where !rules.contains(where: { $0.kind == kind && $0.selector == .all }) {
            rules.append(KindRuleEntry(selector: .all, kind: kind, setting: .deny))
        }
        var policy = Policy(id: id.0, version: version, mode: mode, trust: TrustStore(anchors),
                            denyList: DenyList(certificateTBSHashes: deniedCertificates, moduleContentHashes: deniedModules),
                            deniedModuleNames: deniedNames, minimumDigest: minimumDigest ?? .sha256,
                            endState: endState ?? .required, modules: .allow, textPatches: .deny, ebpfJIT: .deny,
                            auditOverflow: auditOverflow ?? .block, kindRules: rules, source: bytes, pinnedModules: pins)
        policy.trustedKernels = kernels
        // Fold the defaults (selector .all) into the flat fields and mode, so a reader of
        // `policy.modules` or `policy.mode` sees what applies to a guest no rule names.
        var flat = policy.resolved(forGuest: nil)
        flat.mode = mode
        return flat
    }

    // MARK: Pieces

    /// A directive that may appear once.
    func once(_ seen: Bool, _ head: Token, _ lineNo: Int) throws(PolicyParseError) {
        if seen { throw fail(.duplicate, lineNo, head.column, "'\(head.text)' given twice") }
    }

    /// A word that must be one of an enum's raw values.
    func choice<K: RawRepresentable>(_ v: Token, _ lineNo: Int, _ head: Token, _ choices: String) throws(PolicyParseError) -> K where K.RawValue == String {
        guard let k = K(rawValue: v.text) else { throw fail(.badArgument, lineNo, v.column, "\(head.text) must be \(choices), not '\(v.text)'") }
        return k
    }

    /// `trust kernel-builtin`, or `trust sha256:FP` followed by the certificate's PEM block.
    mutating func trust(_ args: [Token], _ lineNo: Int, _ head: Token, lines: ArraySlice<[UInt8]>, next: Int) throws(PolicyParseError) -> Int {
        let v = try one(args, lineNo, head, "'kernel-builtin' or sha256:FINGERPRINT")
        trustLines += 1
        guard v.text != "kernel-builtin" else {
            if sawKernelBuiltin { throw fail(.duplicate, lineNo, v.column, "'trust kernel-builtin' given twice") }
            sawKernelBuiltin = true
            if let b = builtinAnchors {
                guard !b.isEmpty else {
                    throw fail(.badArgument, lineNo, v.column, "'trust kernel-builtin' but no built-in anchors were given (--trust CERT, for serve and policy test alike: the guest kernel's builtin certificates, as `execgate keys extract` writes them)")
                }
                // A builtin certificate the text also names is one anchor (the text's line is no
                // repetition: whether it is builtin depends on the service's --trust).
                anchors += b.filter { c in !anchors.contains { $0.fingerprint == c.fingerprint } }
            }
            return 0
        }
        let fp = try digest(v, lineNo)
        let (cert, consumed) = try pemBlock(after: next, lines: lines, trustLine: lineNo, column: v.column)
        guard cert.fingerprint == fp else {
            throw fail(.fingerprintMismatch, lineNo, v.column,
                       "the certificate below has fingerprint sha256:\(cert.fingerprint.hex), not the one written here")
        }
        // Given twice in the text is refused; the same certificate among the builtin anchors
        // (`trust kernel-builtin`, which depends on the service's --trust) is merged, whatever the
        // lines' order, so a policy loads or not by its own text alone.
        guard explicitAnchors.insert(cert.fingerprint).inserted else {
            throw fail(.duplicate, lineNo, v.column, "trust sha256:\(cert.fingerprint.hex) given twice")
        }
        if !anchors.contains(where: { $0.fingerprint == cert.fingerprint }) { anchors.append(cert) }
        return consumed
    }

    /// `deny certificate|module sha256:…` or `deny module-name NAME`.
    mutating func deny(_ args: [Token], _ lineNo: Int, _ head: Token) throws(PolicyParseError) {
        guard let what = args.first else { throw fail(.missingArgument, lineNo, head.column + 4, "'deny' needs certificate, module or module-name") }
        let v = try one(Array(args.dropFirst()), lineNo, what, "a value")
        switch what.text {
        case "certificate":
            guard deniedCertificates.insert(try digest(v, lineNo)).inserted else { throw fail(.duplicate, lineNo, v.column, "deny certificate \(v.text) given twice") }
        case "module":
            guard deniedModules.insert(try digest(v, lineNo)).inserted else { throw fail(.duplicate, lineNo, v.column, "deny module \(v.text) given twice") }
        case "module-name":
            try checkName(v, lineNo, what: "module name")
            guard v.text.utf8.count <= PolicyLimits.maximumModuleNameLength else {
                throw fail(.badArgument, lineNo, v.column, "module name is longer than \(PolicyLimits.maximumModuleNameLength) bytes: no module has it (struct module's name holds MODULE_NAME_LEN − 1 bytes)")
            }
            // '-' and '_' are one in a module name (the kernel's own rule): `crc-8` after `crc_8`
            // is the same name given twice.
            guard deniedNames.insert(Policy.canonicalModuleName(v.text)).inserted else {
                throw fail(.duplicate, lineNo, v.column, "deny module-name \(v.text) given twice ('-' and '_' are one in a module name)")
            }
        default:
            throw fail(.unknownKeyword, lineNo, what.column, "unknown deny list '\(what.text)' (certificate, module or module-name)")
        }
    }

    /// `class NAME PATTERN…`: guest id patterns, each with at most one trailing `*`.
    mutating func guestClass(_ args: [Token], _ lineNo: Int, _ head: Token) throws(PolicyParseError) {
        guard args.count >= 2 else {
            throw fail(.missingArgument, lineNo, (args.last ?? head).column, "'class' needs a name and at least one guest id pattern")
        }
        let name = args[0]
        try checkName(name, lineNo, what: "class name")
        if classes[name.text] != nil { throw fail(.duplicate, lineNo, name.column, "class '\(name.text)' defined twice") }
        var patterns: [String] = []
        for p in args.dropFirst() {
            let body = p.text.hasSuffix("*") ? String(p.text.dropLast()) : p.text
            guard !body.contains("*") else { throw fail(.badArgument, lineNo, p.column, "only one trailing '*' is allowed in a guest id pattern") }
            try checkName(Token(text: body.isEmpty ? "x" : body, column: p.column), lineNo, what: "guest id pattern")
            if patterns.contains(p.text) { throw fail(.duplicate, lineNo, p.column, "guest id pattern '\(p.text)' given twice in class '\(name.text)'") }
            patterns.append(p.text)
        }
        classes[name.text] = patterns
        classLines[name.text] = (lineNo, name.column)
    }

    mutating func kindRule(_ kind: CodeKind, _ head: Token, _ args: [Token], _ lineNo: Int) throws(PolicyParseError) {
        guard let s = args.first else {
            throw fail(.missingArgument, lineNo, head.column + head.text.utf8.count + 1, "'\(head.text)' needs deny, allow, hash-pinned or audit-only")
        }
        guard let setting = KindSetting(rawValue: s.text) else {
            throw fail(.badArgument, lineNo, s.column, "'\(s.text)' is not deny, allow, hash-pinned or audit-only")
        }
        if setting == .hashPinned && kind != .modules {
            throw fail(.badArgument, lineNo, s.column, "hash-pinned applies to modules only (pins are module content hashes)")
        }
        if setting == .hashPinned && hashPinnedLine == nil { hashPinnedLine = (lineNo, s.column) }
        var selector = GuestSelector.all
        if args.count > 1 {
            let f = args[1]
            guard f.text == "for" else { throw fail(.extraArgument, lineNo, f.column, "unexpected '\(f.text)' (expected 'for guest ID' or 'for class NAME')") }
            guard args.count >= 4 else { throw fail(.missingArgument, lineNo, f.column, "'for' needs 'guest ID' or 'class NAME'") }
            guard args.count == 4 else { throw fail(.extraArgument, lineNo, args[4].column, "unexpected '\(args[4].text)'") }
            let which = args[2], name = args[3]
            try checkName(name, lineNo, what: which.text == "class" ? "class name" : "guest id")
            switch which.text {
            case "guest": selector = .guest(name.text)
            case "class":
                guard let patterns = classes[name.text] else {
                    throw fail(.undefinedClass, lineNo, name.column, "class '\(name.text)' is not defined above (write 'class \(name.text) PATTERN…' first)")
                }
                selector = .guestClass(name: name.text, patterns: patterns)
                usedClasses.insert(name.text)
            default:
                throw fail(.unknownKeyword, lineNo, which.column, "unknown selector '\(which.text)' (guest or class)")
            }
        }
        guard ruleKeys.insert(KindRuleEntry.Key(kind: kind, selector: selector)).inserted else {
            throw fail(.duplicate, lineNo, head.column, "a '\(kind.rawValue)' rule for \(selector) was already given")
        }
        rules.append(KindRuleEntry(selector: selector, kind: kind, setting: setting))
    }

    /// Exactly one argument.
    func one(_ args: [Token], _ lineNo: Int, _ head: Token, _ what: String) throws(PolicyParseError) -> Token {
        guard let v = args.first else {
            throw fail(.missingArgument, lineNo, head.column + head.text.utf8.count + 1, "'\(head.text)' needs \(what)")
        }
        guard args.count == 1 else { throw fail(.extraArgument, lineNo, args[1].column, "unexpected '\(args[1].text)' after '\(head.text) \(v.text)'") }
        return v
    }

    /// `sha256:` followed by 64 lowercase or uppercase hex digits.
    func digest(_ t: Token, _ lineNo: Int) throws(PolicyParseError) -> Digest {
        guard t.text.hasPrefix("sha256:") else {
            throw fail(.badArgument, lineNo, t.column, "expected sha256:<64 hex digits>, not '\(t.text)'")
        }
        let hex = String(t.text.dropFirst(7))
        guard hex.utf8.count == 64, let d = Digest(algorithm: .sha256, hex: hex.lowercased()) else {
            throw fail(.badArgument, lineNo, t.column + 7, "a SHA-256 digest is 64 hex digits; '\(hex)' is not one")
        }
        return d
    }

    /// Names: 1…128 of [A-Za-z0-9._-].
    func checkName(_ t: Token, _ lineNo: Int, what: String) throws(PolicyParseError) {
        guard t.text.utf8.count <= PolicyLimits.maximumNameLength else {
            throw fail(.badArgument, lineNo, t.column, "\(what) is longer than \(PolicyLimits.maximumNameLength) bytes")
        }
        if let bad = t.text.utf8.firstIndex(where: { b in
            !((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D)
        }) {
            let offset = t.text.utf8.distance(from: t.text.utf8.startIndex, to: bad)
            throw fail(.badArgument, lineNo, t.column + offset, "\(what) '\(t.text)' may only contain letters, digits, '.', '_' and '-'")
        }
    }

    /// The PEM block that must follow a `trust sha256:…` line: BEGIN CERTIFICATE … END CERTIFICATE
    /// on the next lines (blank lines and comments are not allowed inside it).
    func pemBlock(after start: Int, lines: ArraySlice<[UInt8]>, trustLine: Int, column: Int) throws(PolicyParseError) -> (Certificate, Int) {
        let begin = Array("-----BEGIN CERTIFICATE-----".utf8), end = Array("-----END CERTIFICATE-----".utf8)
        func trimmed(_ l: [UInt8]) -> [UInt8] {
            var s = l[...]
            while let f = s.first, f == 0x20 || f == 0x09 { s.removeFirst() }
            while let e = s.last, e == 0x20 || e == 0x09 { s.removeLast() }
            return Array(s)
        }
        guard start < lines.count, trimmed(lines[start]) == begin else {
            throw fail(.badCertificate, trustLine + 1, 1, "'trust sha256:…' must be followed by a -----BEGIN CERTIFICATE----- line")
        }
        var pem: [UInt8] = []
        var i = start
        while i < lines.count {
            let t = trimmed(lines[i])
            if let bad = t.firstIndex(where: { $0 == 0x0D || ($0 < 0x20 && $0 != 0x09) }) {
                throw fail(.encoding, i + 1, bad + 1, "control character inside a PEM block")
            }
            pem += t + [0x0A]
            i += 1
            if t == end {
                let certs: [Certificate]
                do { certs = try Certificate.parsePEM(pem) } catch {
                    throw fail(.badCertificate, start + 1, 1, "the PEM block is not a certificate: \(error)")
                }
                guard certs.count == 1 else { throw fail(.badCertificate, start + 1, 1, "one certificate per trust line") }
                // The block must be exactly the certificate's PEM (64-column base64, as `keys extract`
                // and `policy show` print it). OpenSSL's PEM decoder skips spaces inside the base64 and
                // PEM_read_bio_X509 ignores decoded bytes after the certificate, so without this a line
                // that reads like a directive ("modules deny for guest web12") could sit in the block,
                // unenforced, with the fingerprint (which covers only the DER) still matching.
                guard pem == Array(certs[0].pem.utf8) else {
                    throw fail(.badCertificate, start + 1, 1, "the PEM block is not exactly the certificate's PEM (64-column base64 and nothing else): every line a reviewer reads must be the certificate")
                }
                // An anchor the kernel could not verify with would allow modules the kernel refuses.
                if let problem = certs[0].kernelKeyProblem {
                    throw fail(.badCertificate, start + 1, 1, "this anchor holds \(problem): no module it signs loads in the guest")
                }
                return (certs[0], i - start)
            }
            if i - start > 256 { break }  // A certificate PEM is < 100 lines; anything longer is not one.
        }
        throw fail(.badCertificate, start + 1, 1, "no -----END CERTIFICATE----- line closes this PEM block")
    }

    /// C1 controls, U+2028/U+2029, and the bidirectional formatting characters (ALM U+061C,
    /// LRM/RLM U+200E/U+200F, LRE…RLO U+202A–U+202E, LRI…PDI U+2066–U+2069).
    static func confusesReaders(_ v: UInt32) -> Bool {
        (0x80...0x9F).contains(v) || v == 0x2028 || v == 0x2029 || v == 0x061C || v == 0x200E || v == 0x200F
            || (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v)
    }

    /// Words separated by spaces or tabs, up to a `#` that starts a comment.
    static func tokenize(_ line: [UInt8]) -> [Token] {
        var out: [Token] = []
        var i = 0
        while i < line.count {
            let b = line[i]
            if b == 0x23 { break }  // '#': comment to end of line.
            if b == 0x20 || b == 0x09 { i += 1; continue }
            let start = i
            while i < line.count, line[i] != 0x20, line[i] != 0x09, line[i] != 0x23 { i += 1 }
            // The whole line was validated as UTF-8 and we only split at ASCII bytes.
            out.append(Token(text: String(decoding: line[start..<i], as: UTF8.self), column: start + 1))
        }
        return out
    }
}

private extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: Swift.max(0, width - count)) + self }
}
