// SPDX-License-Identifier: Apache-2.0
//
// Stage 3: run-time sites. After the text is executable the COMING notifiers patch it
// (`jump_label_add_module()`, `static_call_add_module()`), and they patch it again whenever a key
// or a static call changes. Their end state is guest run-time state, so each site gets the exact
// *set* of legal encodings (never a masked field), and all sites of one key must agree
// (Comparison.swift checks both). The same sites become the run-time patch table
// (RuntimePatching.swift).

import ExecGateELF
import _ExecGateInternals

/// Up to 8 bytes held inline (a site encoding: no heap allocation per site).
struct SiteBytes: Equatable {
    var raw: UInt64 = 0
    var count: Int = 0
    init() {}
    /// Bytes `raw` (little-endian: byte 0 in the low bits), `count` ≤ 8 of them.
    @inline(__always) init(raw: UInt64, count: Int) {
        precondition(count >= 0 && count <= 8 && (count == 8 || raw >> (8 * UInt64(count)) == 0))
        self.raw = raw
        self.count = count
    }
    /// These bytes followed by `pad` up to `n` bytes (n ≤ 8; unchanged when already that long).
    @inline(__always) func padded(to n: Int, with pad: UInt8) -> SiteBytes {
        precondition(n <= 8)
        var r = raw
        var k = count
        while k < n { r |= UInt64(pad) << (8 * UInt64(k)); k += 1 }
        return SiteBytes(raw: r, count: max(k, count))
    }
    init(_ b: [UInt8]) {
        precondition(b.count <= 8)
        for (k, x) in b.enumerated() { raw |= UInt64(x) << (8 * UInt64(k)) }
        count = b.count
    }
    /// `bytes == self`, byte for byte.
    @inline(__always) func matches(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count == count else { return false }
        var w: UInt64 = 0
        var k = 0
        if count >= 4 { w = UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))); k = 4 }
        while k < count { w |= UInt64(bytes[k]) << (8 * UInt64(k)); k += 1 }
        return w == raw
    }
    var array: [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: raw >> (8 * UInt64($0))) } }
}

/// The static-call keys a module defines → the targets trusted for them (its trampolines'
/// compiled defaults, its own trace events' probes, StaticCallTrust.moduleUpdates): (key, target)
/// pairs added in any order, then frozen once, sorted by key and target without repeats, each
/// key's targets one slice found through an ``AddressTable``. The `[UInt64: Set<UInt64>]` it
/// replaces hashed every insert and lookup with SipHash and grew a set per key (a module with
/// hundreds of trace events, xfs: ~10% of its explanation, 2026-12-04).
struct KeyTargets: Sendable {
    /// The pairs, in key then target order once frozen.
    private var keys: [UInt64] = []
    private var targets: [UInt64] = []
    /// Frozen: key → its first pair's index << 32 | its number of targets.
    private var index = AddressTable()
    private(set) var isFrozen = true

    init() {}

    /// The same pairs as `d`, frozen.
    init(_ d: [UInt64: Set<UInt64>]) {
        for (k, ts) in d { for t in ts { add(k, t) } }
        freeze()
    }

    var isEmpty: Bool { keys.isEmpty }
    /// Frozen: the distinct keys, and the (key, target) pairs.
    var keyCount: Int { precondition(isFrozen, "KeyTargets read before freeze()"); return index.count }
    var pairCount: Int { precondition(isFrozen, "KeyTargets read before freeze()"); return keys.count }

    /// Each key with its targets (ascending), keys ascending.
    func forEachKey(_ body: (UInt64, ArraySlice<UInt64>) -> Void) {
        precondition(isFrozen, "KeyTargets read before freeze()")
        var i = 0
        while i < keys.count {
            var j = i + 1
            while j < keys.count && keys[j] == keys[i] { j += 1 }
            body(keys[i], targets[i..<j])
            i = j
        }
    }

    /// Add `target` for `key` (a repeat is dropped at `freeze`); unfreezes.
    mutating func add(_ key: UInt64, _ target: UInt64) {
        keys.append(key)
        targets.append(target)
        isFrozen = false
    }

    /// Sort, drop repeats and index: lookups need it.
    mutating func freeze() {
        if isFrozen { return }
        var pairs: [(key: UInt64, target: UInt64)]
        if let kLo = keys.min(), let kHi = keys.max(), let tLo = targets.min(), let tHi = targets.max(),
           kHi - kLo <= UInt64(UInt32.max), tHi - tLo <= UInt64(UInt32.max) {
            // Both within 4 GiB of their least (a module's keys are its own addresses, its targets
            // its own functions and rel32 destinations: always), each pair packed in one word
            // (key offset above, target offset below) and sorted as integers: the same order as
            // by (key, target), without a comparison closure over tuples (2.6% of `xfs`'s explain).
            var packed = [UInt64](repeating: 0, count: keys.count)
            for i in keys.indices { packed[i] = (keys[i] - kLo) << 32 | (targets[i] - tLo) }
            packed.sort()
            pairs = packed.map { (kLo + ($0 >> 32), tLo + ($0 & 0xffff_ffff)) }
        } else {
            pairs = zip(keys, targets).map { (key: $0, target: $1) }
            pairs.sort { $0.key != $1.key ? $0.key < $1.key : $0.target < $1.target }
        }
        keys.removeAll(keepingCapacity: true)
        targets.removeAll(keepingCapacity: true)
        index = AddressTable(minimumCapacity: pairs.count)
        var start = 0
        for (i, p) in pairs.enumerated() where i == 0 || p.key != pairs[i - 1].key || p.target != pairs[i - 1].target {
            if keys.last != p.key {
                if let k = keys.last { index.set(k, UInt64(start) << 32 | UInt64(keys.count - start)) }
                start = keys.count
            }
            keys.append(p.key)
            targets.append(p.target)
        }
        if let k = keys.last { index.set(k, UInt64(start) << 32 | UInt64(keys.count - start)) }
        isFrozen = true
    }

    /// The targets of `key`, ascending; nil for a key with none.
    subscript(key: UInt64) -> ArraySlice<UInt64>? {
        precondition(isFrozen, "KeyTargets read before freeze()")
        guard !keys.isEmpty, let v = index[key] else { return nil }
        let start = Int(v >> 32)
        return targets[start..<start + Int(v & 0xffff_ffff)]
    }

    /// Every key's targets as sets (``ModuleExports/staticCallTrustedTargets``), each made once at its size.
    var dictionary: [UInt64: Set<UInt64>] {
        var d: [UInt64: Set<UInt64>] = [:]
        d.reserveCapacity(keyCount)
        forEachKey { k, ts in d[k] = Set(ts) }
        return d
    }
}

/// The static-call keys verified modules define → their trusted targets, merged into the
/// guest's ``SymbolResolver`` as each module is allowed: each key's targets one range of a flat
/// array, found through an ``AddressTable``. A module's keys arrive as its frozen
/// ``KeyTargets`` and are appended as they are (no set per key, no SipHash per insert or lookup:
/// the `[UInt64: Set<UInt64>]` it replaces made both at every allowed module and every key).
/// Two modules never define one key (their allocations never overlap:
/// `refuseLiveModuleKeysInOwnMemory`); if one is added again its targets are the union.
struct ModuleKeyTargets: Sendable {
    private var targets: [UInt64] = []
    /// key → its range's start << 32 | its number of targets.
    private var index = AddressTable()

    var isEmpty: Bool { targets.isEmpty }  // every key added brings at least one target

    mutating func add(_ m: KeyTargets) {
        m.forEachKey { key, ts in
            // A key new to the table (the common case) appends its slice as it is: no array made.
            if let old = self[key] {
                let list = TargetList(Array(ts) + old).sorted
                precondition(targets.count + list.count < 1 << 32, "static-call target table beyond its packed index")
                index.set(key, UInt64(targets.count) << 32 | UInt64(list.count))
                targets.append(contentsOf: list)
            } else {
                precondition(targets.count + ts.count < 1 << 32, "static-call target table beyond its packed index")
                index.set(key, UInt64(targets.count) << 32 | UInt64(ts.count))
                targets.append(contentsOf: ts)
            }
        }
    }

    /// The targets of `key`, ascending; nil for a key no verified module defines.
    subscript(key: UInt64) -> ArraySlice<UInt64>? {
        guard let v = index[key] else { return nil }
        let start = Int(v >> 32)
        return targets[start..<start + Int(v & 0xffff_ffff)]
    }
}

/// A static-call key's trusted targets: a few distinct addresses, sorted (membership by binary
/// search: no hash per check, no hashed set built per key and module). Same members as the `Set`
/// it replaces; only membership is ever asked.
struct TargetList: Equatable {
    private(set) var sorted: [UInt64]
    /// The distinct members of `members`.
    init(_ members: [UInt64]) {
        var a = members
        self.init(normalizing: &a)
    }
    /// `TargetList(a)` for an `a` the caller owns: sorted and made distinct in place (no copy).
    init(normalizing a: inout [UInt64]) {
        AddressSort.sortUnique(&a)
        sorted = a
    }
    var isEmpty: Bool { sorted.isEmpty }
    var count: Int { sorted.count }
    @inline(__always) func contains(_ x: UInt64) -> Bool { sorted.sortedContains(x) }
}

/// The destination of the rel32 branch at `bytes[operandAt...]` for an instruction of `length`
/// bytes at `site`; nil if `bytes` is shorter than the operand.
@inline(__always) func rel32Destination(_ bytes: UnsafeRawBufferPointer, operandAt at: Int, site: UInt64, length: Int) -> UInt64? {
    guard let d = bytes.getInteger(at: at, as: Int32.self) else { return nil }
    return site &+ UInt64(length) &+ UInt64(bitPattern: Int64(d))
}

/// A site whose end state is run-time guest state: any member of the legal set is accepted.
/// The legal set is described by data (`Rule`), not by closures: no allocation per site, and the
/// same description answers the comparison, the run-time patch checks and the mutation tester.
struct VariableSite {
    // Packed: these are a guest's live-site tables, kept while its modules are live (tens of
    // thousands of sites a guest): the key and the header in 16 bytes before the rule (was 64,
    // with `Int` offset and length, an optional key and a `String` description).
    private var groupValue: UInt64
    private var offset32: Int32
    private var length8: UInt8
    let cls: ExplanationClass
    private var hasGroup: Bool
    /// Description: one of the kinds' fixed texts; the key, which is `group`, is appended only
    /// when a message needs it, and only for the kinds whose messages name it.
    let label: Label
    var rule: Rule

    /// Region offset of the site's first byte (regions are at most `ExplainLimits.maxCoreSize`).
    var offset: Int { Int(offset32) }
    var length: Int { Int(length8) }
    /// Consistency group (key address); sites of one group must report the same state.
    var group: UInt64? {
        get { hasGroup ? groupValue : nil }
        set { groupValue = newValue ?? 0; hasGroup = newValue != nil }
    }
    var what: String { label.showsKey ? group.map { "\(label.text) (key 0x\(String($0, radix: 16)))" } ?? label.text : label.text }

    /// The sites' descriptions (a byte in each site, not a `String`).
    enum Label: UInt8 {
        case smpLock, ftrace, jumpLabel, staticCallJccTail, staticCallTail, staticCall, trampoline
        var text: String {
            switch self {
            case .smpLock: return "smp lock prefix"
            case .ftrace: return "ftrace site"
            case .jumpLabel: return "jump label"
            case .staticCallJccTail: return "static call (Jcc tail)"
            case .staticCallTail: return "static call (tail)"
            case .staticCall: return "static call"
            case .trampoline: return "static-call trampoline"
            }
        }
        /// The kinds whose messages name their key.
        var showsKey: Bool { self != .smpLock && self != .ftrace }
    }

    /// The legal encodings of one site kind, with what they need to decide membership.
    enum Rule {
        /// `.smp_locks` prefix: `3e` (state 0, UP) or `f0` (state 1, SMP).
        case smpLock
        /// ftrace: NOP5 (state 0) or `call` to one of `targets` (state = target).
        case ftrace(site: UInt64, targets: Set<UInt64>)
        /// Jump label: `x86_nops[size]` or `jmp target` (`jmp` nil if it cannot be encoded);
        /// state = key enabled, with `branch` the entry's default (jump_label_type()).
        case jumpLabel(nop: SiteBytes, jmp: SiteBytes?, branch: UInt64)
        /// Static-call conditional tail call `0f 8x rel32`: to `nullTarget` (state 0) or a trusted target.
        case staticCallJcc(site: UInt64, op: UInt8, nullTarget: UInt64?, trusted: TargetList, orig: [UInt8])
        /// Static call (`tail`: jmp / RET form; else call / NOP5 / xor5rax for return0). `null`:
        /// the NULL form (NOP5, RET form) is a state of the key (not for a PREEMPT_DYNAMIC key
        /// disabled to `__static_call_return0`: StaticCallTrust.preemptDynamicDisabled).
        case staticCall(site: UInt64, tail: Bool, retForm: SiteBytes, ret0: UInt64?, trusted: TargetList, null: Bool = true)
        /// The module's own trampoline: its RET form (state 0; not when `null` is false: a
        /// tracepoint key's, DisabledForm.neither) or `jmp` to a trusted target.
        case trampoline(site: UInt64, retForm: SiteBytes, trusted: TargetList, null: Bool = true)
    }

    init(offset: Int, length: Int, cls: ExplanationClass, group: UInt64?, label: Label, rule: Rule) {
        precondition(offset >= 0 && offset <= Int(Int32.max) && length >= 0 && length <= Int(UInt8.max), "site outside a region")
        self.offset32 = Int32(offset); self.length8 = UInt8(length); self.cls = cls
        self.groupValue = group ?? 0; self.hasGroup = group != nil
        self.label = label; self.rule = rule
    }

    static let nop5 = SiteBytes(x86Nops[5])
    static let xor5rax = SiteBytes([0x2e, 0x2e, 0x2e, 0x31, 0xc0])

    /// Returns the state (e.g. key enabled, static-call function) if `bytes` is a legal encoding.
    func check(_ bytes: [UInt8]) -> UInt64? { bytes.withUnsafeBytes { check($0) } }

    /// `check(b)` on a site reached through a mutable pointer (the comparison's walk): the call
    /// borrows the site in place (`mutating`, though it changes nothing), where a call on
    /// `UnsafePointer.pointee` copies the site and its rule's reference-counted payload.
    @inline(__always) mutating func checkInPlace(_ b: UnsafeRawBufferPointer) -> UInt64? { check(b) }

    /// The same over borrowed bytes (the comparison reads the claim in place).
    func check(_ b: UnsafeRawBufferPointer) -> UInt64? {
        switch rule {
        case .smpLock:
            guard b.count == 1 else { return nil }
            return b[0] == 0x3e ? 0 : (b[0] == 0xf0 ? 1 : nil)
        case .ftrace(let site, let targets):
            if VariableSite.nop5.matches(b) { return 0 }
            // A call whose decoded destination is a target: exactly the bytes genInsn(0xe8, site,
            // target) gives for that target (the rel32 round-trips), and no other target gives them.
            guard b.count == 5, b[0] == 0xe8, let tg = rel32Destination(b, operandAt: 1, site: site, length: 5), targets.contains(tg) else { return nil }
            return tg
        case .jumpLabel(let nop, let jmp, let branch):
            if nop.matches(b) { return branch == 0 ? 0 : 1 }   // NOP: enabled == branch
            if let j = jmp, j.matches(b) { return branch == 0 ? 1 : 0 }
            return nil
        case .staticCallJcc(let site, let op, let nullTarget, let trusted, _):
            guard b.count == 6, b[0] == 0x0f, b[1] == op, let tg = rel32Destination(b, operandAt: 2, site: site, length: 6) else { return nil }
            if let n = nullTarget, tg == n { return 0 }
            return trusted.contains(tg) ? tg : nil
        case .staticCall(let site, let tail, let retF, let ret0, let trusted, let null):
            if tail {
                if null && retF.matches(b) { return 0 }
                if b.first == 0xe9, let tg = rel32Destination(b, operandAt: 1, site: site, length: 5) { return trusted.contains(tg) ? tg : nil }
                return nil
            }
            if null && VariableSite.nop5.matches(b) { return 0 }
            if let r0 = ret0, VariableSite.xor5rax.matches(b) { return r0 }
            if b.first == 0xe8, let tg = rel32Destination(b, operandAt: 1, site: site, length: 5) {
                if tg == ret0 { return nil }  // the kernel writes xor5rax instead
                return trusted.contains(tg) ? tg : nil
            }
            return nil
        case .trampoline(let site, let ret, let trusted, let null):
            if null && ret.matches(b) { return 0 }
            if b.first == 0xe9, let t = rel32Destination(b, operandAt: 1, site: site, length: 5), trusted.contains(t) { return t }
            return nil
        }
    }

    /// The lowest target trusted for a static-call site's or trampoline's key (nil for the other
    /// kinds, or a key with none): a legal state to show as expected in a denial.
    var firstTrustedTarget: UInt64? {
        switch rule {
        case .staticCallJcc(_, _, _, let trusted, _), .staticCall(_, _, _, _, let trusted, _), .trampoline(_, _, let trusted, _):
            return trusted.sorted.first
        case .smpLock, .ftrace, .jumpLabel:
            return nil
        }
    }

    /// The encoding for a state (used as "expected" when the claim is illegal or inconsistent).
    func encode(_ st: UInt64?) -> [UInt8] {
        switch rule {
        case .smpLock:
            return st == 1 ? [0xf0] : [0x3e]
        case .ftrace:
            return x86Nops[5]
        case .jumpLabel(let nop, let jmp, let branch):
            let enabled = st ?? branch
            let isJmp = (enabled ^ branch) == 1
            return isJmp ? (jmp ?? nop).array : nop.array
        case .staticCallJcc(let site, let op, _, _, let orig):
            guard let s = st, s != 0, let j = genInsn(op, at: site &+ 1, to: s) else { return orig }
            return [0x0f] + j
        case .staticCall(let site, let tail, let retF, let ret0, _, _):
            guard let s = st, s != 0 else { return tail ? retF.array : x86Nops[5] }
            if !tail, s == ret0 { return VariableSite.xor5rax.array }
            return genInsn(tail ? 0xe9 : 0xe8, at: site, to: s) ?? x86Nops[5]
        case .trampoline(let site, let ret, _, _):
            return (st == nil || st == 0) ? ret.array : (genInsn(0xe9, at: site, to: st!) ?? ret.array)
        }
    }
}

extension Session {
    func addRuntimeSites() throws {
        try refuseLiveModuleKeysInOwnMemory()
        try addJumpLabels()
        collectModuleTrampolines()
        try addStaticCalls()
        addModuleTrampolineSites()
        try refuseOverlappingSites()
    }

    // MARK: Keys of live modules (6.12 placement)

    /// A static-call key that a verified live module defines or calls through
    /// (`resolver.moduleKeyTargets` / `staticCallStates`) may not lie in this module's own
    /// memory. The kernel's allocations never overlap (`move_module()` → `module_memory_alloc()` →
    /// `execmem_alloc()`: fresh vmalloc space per `enum mod_mem_type`, 6.12 kernel/module/main.c;
    /// 6.1 one core allocation), so a key inside the module is its own (`static_call_add_module()`
    /// → `__static_call_init()`: `static_call_key_has_mods()`/`within_module()`) and starts at its
    /// own `DEFINE_STATIC_CALL` default. On 6.12 only MOD_TEXT and MOD_INIT_TEXT are held
    /// against live modules (the verifier's live ranges); the data bases are the guest's word. A
    /// claim putting MOD_DATA over a live module's key would have the explainer trust that key's
    /// targets and state for one of this module's own keys: its sites calling another module's
    /// function. Denied as a placement no kernel makes.
    func refuseLiveModuleKeysInOwnMemory() throws {
        guard !resolver.moduleKeyTargets.isEmpty || !resolver.staticCallStates.isEmpty else { return }
        // (type: nil = 6.1's one core allocation; named only in the message.)
        var own: [(lo: UInt64, hi: UInt64, type: ModuleMemoryType?)] = []
        if layout.memType != nil {
            for (t, b) in memoryBases { own.append((b, b &+ UInt64(layout.allocationSize(t)), t)) }
        } else {
            own.append((claim.textBase, claim.textBase &+ UInt64(layout.coreSize), nil))
        }
        // The lowest such key is named (one message whatever the order of the allocations).
        var found: (key: UInt64, r: (lo: UInt64, hi: UInt64, type: ModuleMemoryType?))? = nil
        for r in own {
            if let key = resolver.lowestStaticCallKey(from: r.lo, below: r.hi), found == nil || key < found!.key { found = (key, r) }
        }
        if let (key, r) = found {
            throw deny(.layout, "static-call key 0x\(String(key, radix: 16)) of a live module lies in this module's \(r.type.map { "\($0)" } ?? "the core allocation") [0x\(String(r.lo, radix: 16)), 0x\(String(r.hi, radix: 16))): the claimed allocation overlaps a live module's (execmem_alloc() never hands out live memory, move_module())",
                       address: key)
        }
    }

    /// No two run-time sites share a byte, unless they are the same bytes (same offset and
    /// length: one site to the run-time table, `SiteMap`, and the comparison checks both rules).
    /// A site's run-time rule takes any of its encodings whatever the site holds now; the kernel's
    /// patchers compare the bytes they replace (`__jump_label_patch()`'s `memcmp(addr, expect)`,
    /// `__static_call_validate()`, `ftrace_verify_code()`, `alternatives_smp_lock()`'s `0x3e`
    /// test) and refuse anything else, and the verifier keeps no current bytes: with two sites
    /// over one byte, a write to one changes what the other may legally become, and the table
    /// would let through byte sequences no kernel writes. A build emits one site per instruction:
    /// denied (not modelled).
    func refuseOverlappingSites() throws {
        if variable.count < 2 { return }
        var covered = [UInt64](repeating: 0, count: (image.count + 63) >> 6)
        // The length of the site starting at each offset (the first one there). The sites before
        // site i are pairwise disjoint or identical (else one was denied), so when i's bytes are
        // covered and an earlier site has exactly i's offset and length, every site over those
        // bytes is identical to i: no clash, and no scan. The scan for the other site runs only
        // to name it in a denial, once. (It ran at every covered site: a signed module repeating
        // one `__jump_table` or `.static_call_sites` entry 300,000 times took 124 s, round 13.)
        // Made at the first covered site (most modules have none), kept from then on.
        var starts: AddressTable? = nil
        for i in variable.indices {
            let off = variable[i].offset, len = variable[i].length
            var clash = false
            for k in off..<off + len where covered[k >> 6] & (1 << UInt64(k & 63)) != 0 { clash = true; break }
            if clash && starts == nil {
                var t = AddressTable(expecting: variable.count)
                for e in variable[..<i] where t[UInt64(e.offset)] == nil { t.set(UInt64(e.offset), UInt64(e.length)) }
                starts = t
            }
            if clash, starts?[UInt64(off)] == UInt64(len) { continue }
            if starts != nil, starts![UInt64(off)] == nil { starts!.set(UInt64(off), UInt64(len)) }
            if clash, let j = variable[..<i].firstIndex(where: { $0.offset < off + len && off < $0.offset + $0.length && !($0.offset == off && $0.length == len) }) {
                let other = variable[j]
                throw deny(.stage(variable[i].cls), "\(variable[i].what) shares bytes with the \(other.what) at 0x\(String(base &+ UInt64(other.offset), radix: 16)) (overlapping run-time sites: not modelled)",
                           atRegionOffset: off, address: base &+ UInt64(off))
            }
            for k in off..<off + len { covered[k >> 6] |= 1 << UInt64(k & 63) }
        }
    }

    // MARK: Jump labels

    /// `__jump_table`: `struct jump_entry { s32 code; s32 target; long key; }` (16 bytes, relative;
    /// key bit 0 = branch default, bit 1 = init). `__jump_label_patch()`: the site (2 or 5 bytes,
    /// `arch_jump_entry_size()` decodes it) is exactly `x86_nops[size]` or `jmp target`.
    /// Either state is legal (key state is run-time data), but all sites of one key must agree.
    func addJumpLabels() throws {
        guard let t = try table("__jump_table") else { return }
        var o = 0
        while let codeRel = t.bytes.getInteger(at: o, as: Int32.self), let targetRel = t.bytes.getInteger(at: o + 4, as: Int32.self),
              let keyRel = t.bytes.getInteger(at: o + 8, as: UInt64.self) {
            let ea = t.addr &+ UInt64(o)
            let code = ea &+ UInt64(bitPattern: Int64(codeRel))
            let target = ea &+ 4 &+ UInt64(bitPattern: Int64(targetRel))
            o += 16
            // `jump_entry_key()` (include/linux/jump_label.h, 6.1 and 6.12): the flag bits are
            // cleared from the stored offset, then the offset is added to `&entry->key`;
            // `jump_entry_is_branch()` reads bit 0 of the offset. (Clearing them from the sum, as
            // `static_call_key()` does for `.static_call_sites`, names another key when the table
            // is not 4-byte aligned: only a crafted section alignment makes it so.)
            let key = ea &+ 8 &+ (keyRel & ~3), branch = keyRel & 1
            guard let off = execOffset(code, 2) else { continue }
            guard let insn = decode(at: off), insn.length == 2 || insn.length == 5, execOffset(code, insn.length) != nil else {
                throw deny(.jumpLabel, "site is neither 2 nor 5 bytes (the kernel BUGs)", atRegionOffset: off, address: code)
            }
            let size = insn.length
            let nop = SiteBytes(x86Nops[size])
            // `__jump_label_patch()` builds the jump (`text_gen_insn()`) every time it patches the
            // site, either way; a JMP8 whose displacement does not fit is a BUG_ON, so no kernel
            // ever flips such a site. Deny it: with no jump to encode, the comparison could not
            // tell a NOP meant for the key's other state from its own (a key "off" at one site and
            // "on" at another would pass unseen).
            guard let jmp = genInsnBytes(size == 2 ? 0xeb : 0xe9, at: code, to: target) else {
                throw deny(.jumpLabel, "jump to 0x\(String(target, radix: 16)) cannot be encoded at this \(size)-byte site (text_gen_insn() BUGs patching it)",
                           atRegionOffset: off, address: code)
            }
            // `__jump_label_patch()` replaces only the encoding it expects (the NOP or the jump:
            // `memcmp(addr, expect, size)`, else "unexpected op" and BUG): a site that loads with
            // other bytes is never patched, so its loaded bytes are its only state. Deny rather
            // than accept the NOP or the jump over, say, a call.
            let loaded = image.withUnsafeBytes { nop.matches(UnsafeRawBufferPointer(rebasing: $0[off..<off + size])) || jmp.matches(UnsafeRawBufferPointer(rebasing: $0[off..<off + size])) }
            guard loaded else {
                throw deny(.jumpLabel, "site holds neither its NOP nor its jump (__jump_label_patch() BUGs on an unexpected op)",
                           atRegionOffset: off, address: code, found: Array(image[off..<off + size]))
            }
            countSite(.jumpLabel)
            jumpSites.append((off, size, code, target))
            // State = key enabled (1) or not (0): JMP when enabled != branch default... the encoded
            // jump is taken iff (enabled XOR branch) — jump_label_type().
            variable.append(VariableSite(offset: off, length: size, cls: .jumpLabel, group: key, label: .jumpLabel,
                                         rule: .jumpLabel(nop: nop, jmp: jmp, branch: branch)))
        }
    }

    // MARK: Static calls

    /// `StaticCallTrust.disabledForm(ofKey:facts:preemptDynamicKeys:)` against this session's
    /// facts, with the PREEMPT_DYNAMIC keys' addresses looked up once per facts
    /// (`GuestFacts.preemptDynamicKeys`: ten String-keyed export lookups per static-call site cost
    /// the engine 27%, once per module still ~0.7%).
    ///
    /// Memoised per key (`disabledFormMemo`): every input is fixed for the session (the facts, the
    /// resolver, this module's own tracepoint keys), and it is asked at every static-call site and
    /// trampoline and for every key's target list (the tracepoint-key tests at each site cost the
    /// engine ~3%).
    func disabledForm(ofKey key: UInt64) -> StaticCallTrust.DisabledForm? {
        if disabledFormMemo.count != 0, let code = disabledFormMemo[key] { return Session.disabledForm(code: code) }
        let form = StaticCallTrust.disabledForm(ofKey: key, tracepointStaticCallKeys: facts.tracepointStaticCallKeys, moduleTracepointKey: isModuleTracepointKey(key),
                                                preemptDynamicKeys: facts.preemptDynamicKeys)
        disabledFormMemo.set(key, Session.code(of: form))
        return form
    }

    /// `disabledFormMemo`'s values: 0 no form (nil), 1 `.null`, 2 `.return0`, 3 `.neither`.
    @inline(__always) static func code(of form: StaticCallTrust.DisabledForm?) -> UInt64 {
        switch form {
        case nil: return 0
        case .null?: return 1
        case .return0?: return 2
        case .neither?: return 3
        }
    }
    @inline(__always) static func disabledForm(code: UInt64) -> StaticCallTrust.DisabledForm? {
        switch code {
        case 1: return .null
        case 2: return .return0
        case 3: return .neither
        default: return nil
        }
    }

    /// True for a module's tracepoint key: one of this module's own (`ownTracepointKeys`) or of a
    /// verified module's (`SymbolResolver.tracepointStaticCallKeys`, the kind carried by
    /// ``ModuleExports``: EXPORT_TRACEPOINT_SYMBOL[_GPL] exports the key to later modules, as
    /// kvm's `tp_func_kvm_*` to kvm_intel and kvm_amd).
    func isModuleTracepointKey(_ key: UInt64) -> Bool {
        // The table read in place (the `ownTracepointKeys` getter fills the cache; asked once a
        // key: `disabledForm(ofKey:)` is memoised).
        if ownTracepointKeyCache == nil { _ = ownTracepointKeys }
        if ownTracepointKeyCache?.count != 0, ownTracepointKeyCache?[key] != nil { return true }
        return resolver.isTracepointStaticCallKey(key)
    }

    /// This module's own tracepoint static-call keys and trampolines: include/linux/tracepoint.h
    /// `DEFINE_TRACE_FN` (CREATE_TRACE_POINTS in the module) emits `DEFINE_STATIC_CALL(tp_func_X,
    /// __traceiter_X)`, its `__SCK__tp_func_X` (a key of this module: `ownKeyAddress`) and its
    /// trampoline `__SCT__tp_func_X`, and the module's `struct tracepoint` in `__tracepoints`
    /// names that key. Its probes are (un)registered by the core's kernel/tracepoint.c as a core
    /// tracepoint's are (tracepoint_probe_register() → tracepoint_add_func() /
    /// tracepoint_remove_func() → tracepoint_update_call(), 6.1 and 6.12), the key's only
    /// updater: `tp->iterator` or the one probe, never NULL nor `__static_call_return0`
    /// (`DisabledForm.neither`, the core tracepoint keys' rule). By the signed names, as the core's
    /// are by the build's (`StaticCallTrust.isTracepointKeyName`).
    var ownTracepointKeys: AddressTable {
        if let t = ownTracepointKeyCache { return t }
        // Sized for every key and trampoline (no growth as a module's hundreds are added).
        var t = AddressTable(expecting: keySymbols.indices.count + trampolineSymbols.count)
        for ki in keySymbols.indices where symtab.nameHasPrefix(ki, "__SCK__tp_func_") {
            if let a = ownKeyAddress(ki) { t.set(a, 1) }
        }
        for k in trampolineSymbols where symtab.nameHasPrefix(k, "__SCT__tp_func_") {
            let si = Int(symtab.sectionIndex(k))
            if si < elf.sections.count, let sa = addr[si] { t.set(sa &+ symtab.value(k), 1) }
        }
        ownTracepointKeyCache = t
        return t
    }

    /// The targets a site of `key` may call or jump to, besides its NULL forms: the targets the
    /// facts trust for the key (core keys), those of keys verified modules define, this module's
    /// own trampoline defaults, and `__static_call_return0` (StaticCallTrust.swift says why).
    /// Never a target in the core's init memory, never an address that is not a function entry.
    func trustedStaticCallTargets(_ key: UInt64) -> TargetList {
        // One list per key per session (a key has a few targets, many sites): found by address in
        // an open-addressing table, the lists kept in `trustedTargetLists`.
        if let i = trustedTargetIndex[key] { return trustedTargetLists[Int(i)] }
        var s: [UInt64] = []
        s.reserveCapacity(4)  // a key has a few targets (and __static_call_return0): one allocation
        facts.staticCallTrustedTargets.forEachTarget(of: key) { s.append($0) }
        // (Empty tables are common: no hash for them.)
        if !resolver.moduleKeyTargets.isEmpty, let m = resolver.moduleKeyTargets[key] { s.append(contentsOf: m) }
        if !ownKeyDefaults.isEmpty, let own = ownKeyDefaults[key] { s.append(contentsOf: own) }
        if !s.isEmpty {
            // isFunctionEntry, inline (no closure context made per key).
            let own = functionEntries, core = facts.functionEntries, mods = resolver.moduleFunctionEntries
            s.removeAll { !(own.contains($0) || core.contains($0) || mods.contains($0)) || facts.isCoreInit($0) }
        }
        // (Not for a PREEMPT_DYNAMIC key disabled to NULL: StaticCallTrust.preemptDynamicDisabled.
        // Nor for a tracepoint key: tracepoint_update_call() never writes it. For those no list
        // makes it a target: a registration's `static_call_key` targets included, since
        // sched_dynamic_update() / tracepoint_update_call() write what they write whatever the
        // registration lists.)
        if let r0 = facts.staticCallReturn0 {
            if disabledForm(ofKey: key)?.allowsReturn0 ?? true { s.append(r0) } else { s.removeAll { $0 == r0 } }
        }
        let list = TargetList(normalizing: &s)
        trustedTargetIndex.set(key, UInt64(trustedTargetLists.count))
        trustedTargetLists.append(list)
        return list
    }

    /// `.static_call_sites`: `struct static_call_site { s32 addr; s32 key; }` (key bit 0 = tail,
    /// bit 1 = init). `static_call_add_module()` rewrites every site via `__static_call_transform()`:
    /// CALL func | `2e 2e 2e 31 c0` (func == __static_call_return0) | NOP5 (NULL) for calls;
    /// JMP func | RET form for tail calls; `0f 8x` Jcc func for conditional tail calls. `func` must
    /// be trusted for the site's key (`trustedStaticCallTargets`); all sites of a key agree, here
    /// and with the key's state at verified modules (Comparison.swift).
    func addStaticCalls() throws {
        guard let t = try table(".static_call_sites") else { return }
        let ret0 = facts.staticCallReturn0
        // The per-key tables sized once for the module's own keys (a trampoline each) and a few
        // of the core's, instead of growing as a module's hundreds of tracepoint keys arrive (a
        // size from the site count would overshoot: many sites share a few keys).
        let keys = trampolineSymbols.count + 16
        if trustedTargetIndex.count == 0 { trustedTargetIndex = AddressTable(expecting: keys) }
        if disabledFormMemo.count == 0 { disabledFormMemo = AddressTable(expecting: keys) }
        var o = 0
        while let siteRel = t.bytes.getInteger(at: o, as: Int32.self), let keyRel = t.bytes.getInteger(at: o + 4, as: Int32.self) {
            let ea = t.addr &+ UInt64(o)
            let site = ea &+ UInt64(bitPattern: Int64(siteRel))
            let keyRaw = ea &+ 4 &+ UInt64(bitPattern: Int64(keyRel))
            o += 8
            let key = keyRaw & ~3, tail = keyRaw & 1 != 0
            // `static_call_add_module()` → `__static_call_init()` hands every site of the module
            // to `arch_static_call_transform()` at load, with no text test (6.1.192 and 6.12.117;
            // only the later `__static_call_update()` asks `kernel_text_address()`): a site in the
            // module's data is validated (BUG unless call/NOP5/xor5rax, or jmp/RET/Jcc for a
            // tail) and rewritten by `text_poke_bp()`. Deny it; a site in the other region's
            // text (core or init) is that region's session's.
            guard let off = execOffset(site, 5) else {
                try requireExecutableSite(site, 5, .staticCall, ".static_call_sites", writer: "static_call_add_module()")
                if region == .core { try refuseInvalidStaticCallInInitText(site, tail: tail) }
                continue
            }
            let first = image[off]
            let isJcc = first == 0x0f && image[off + 1] & 0xf0 == 0x80
            // `__static_call_validate()` (6.1 and 6.12), run before every rewrite of the site: a
            // tail site must hold a jmp, RET or Jcc, any other a call, NOP5 or `xor5rax`; else BUG.
            // A site of the wrong kind is never patched: deny rather than let a claim turn a tail
            // jump into a call, or a call into a jump.
            let valid = tail ? (first == 0xe9 || first == 0xc3 || isJcc)
                             : (first == 0xe8 || image[off..<off + 5].elementsEqual(x86Nops[5]) || image[off..<off + 5].elementsEqual(VariableSite.xor5rax.array))
            guard valid else {
                throw deny(.staticCall, "\(tail ? "tail" : "call") site is not a \(tail ? "jmp/ret/Jcc" : "call/nop/xor5rax") (__static_call_validate BUGs)",
                           atRegionOffset: off, address: site, found: Array(image[off..<off + 5]))
            }
            countSite(.staticCall)
            staticSites.append((off, site, tail, key))
            let trusted = trustedStaticCallTargets(key)
            // A PREEMPT_DYNAMIC key has one disabled form (StaticCallTrust.preemptDynamicDisabled):
            // NULL or __static_call_return0, never the other.
            // A tracepoint key has neither (tracepoint_update_call(): the iterator or a probe).
            let disabled = disabledForm(ofKey: key)
            if isJcc && tail {
                guard execOffset(site, 6) != nil else { continue }
                let op = image[off + 1]
                // 6.1 jumps to `__x86_return_thunk`, 6.12 to `x86_return_thunk` (doc §7.3).
                let nullTarget: UInt64? = !(disabled?.allowsNull ?? true) ? nil : (hasFeature(featureBits.rethunk)
                    ? (loader == .linux6_12 ? returnThunkTarget : returnThunkExport) : facts.staticCallReturn)
                let orig = Array(image[off..<off + 6])
                variable.append(VariableSite(offset: off, length: 6, cls: .staticCall, group: key, label: .staticCallJccTail,
                                             rule: .staticCallJcc(site: site, op: op, nullTarget: nullTarget, trusted: trusted, orig: orig)))
                continue
            }
            let retF = retInstruction(at: site)?.padded(to: 5, with: 0xcc) ?? SiteBytes(raw: 0xcccc_cccc_c3, count: 5)
            variable.append(VariableSite(offset: off, length: 5, cls: .staticCall, group: key, label: tail ? .staticCallTail : .staticCall,
                                         rule: .staticCall(site: site, tail: tail, retForm: retF,
                                                           ret0: (disabled?.allowsReturn0 ?? true) ? ret0 : nil, trusted: trusted,
                                                           null: disabled?.allowsNull ?? true)))
        }
    }

    /// `__static_call_validate()`'s BUG holds for a site in init text too: __static_call_init()
    /// transforms every site of the module at load and only flags the init ones (6.1.192 and
    /// 6.12.117 kernel/static_call_inline.c). Seen from the core session (init text is no region
    /// of the claim), the site is checked on the signed bytes of its init section: a non-tail site
    /// must start with `e8` or be NOP5 or `xor5rax`, a tail site start with `e9`, `c3` or `0f 8x`.
    /// Those bytes are no relocation field of a module the build makes (a record that writes
    /// them is not modelled: denied); a rel32 after an opcode may be relocated, which the
    /// validation does not read.
    func refuseInvalidStaticCallInInitText(_ site: UInt64, tail: Bool) throws {
        guard let (t, off, b) = signedInitTextSite(site), off + 5 <= b.count else {
            throw deny(.staticCall, "site 0x\(String(site, radix: 16)) is in no init text section of the module (__static_call_validate reads it at load: not modelled)",
                       section: ".static_call_sites", address: site)
        }
        let w = Array(b[off..<off + 5])
        let opcode = w[0] == 0xe8 || w[0] == 0xe9
        let valid = tail ? (w[0] == 0xe9 || w[0] == 0xc3 || (w[0] == 0x0f && w[1] & 0xf0 == 0x80))
                         : (w[0] == 0xe8 || w == x86Nops[5] || w == VariableSite.xor5rax.array)
        // The bytes the test reads: the opcode (and the Jcc's second byte), or all five.
        let read = opcode || w[0] == 0xc3 ? 1 : (w[0] == 0x0f ? 2 : 5)
        let written = relocationWrites(section: t, off, off + read)
        guard valid, !written else {
            throw deny(.staticCall, "\(tail ? "tail" : "call") site in init text (\(elf.sections[t].name)+0x\(String(off, radix: 16))) is not a \(tail ? "jmp/ret/Jcc" : "call/nop/xor5rax")\(written ? " as signed (a relocation writes it: not modelled)" : "") (__static_call_validate BUGs at load)",
                       section: ".static_call_sites", address: site)
        }
    }

    /// A module's own static-call trampolines (`__SCT__<name>` in `.static_call.text`, followed by
    /// `ud1 %esp, %ecx` = 0f b9 cc). Those whose return was patched are already known
    /// (`applyReturns`); the rest are found by symbol. A trampoline that still holds its compiled
    /// `jmp func` (relocated: the signed module's `DEFINE_STATIC_CALL(name, func)` default) makes
    /// `func` trusted for the module's key `__SCK__<name>`.
    func collectModuleTrampolines() {
        if let inh = inherited { ownKeyDefaults = inh.ownKeyDefaults }  // the trampolines are core text
        defer { ownKeyDefaults.freeze() }
        // Offsets already known, in a small address-keyed table (no hash per symbol).
        var seen = AddressTable(expecting: trampolineSites.count + trampolineSymbols.count)
        for t in trampolineSites { seen.set(UInt64(t.off), 1) }
        for k in trampolineSymbols {
            let si = Int(symtab.sectionIndex(k))
            // `arch_static_call_transform()` runs `__static_call_validate(tramp, true, true)`
            // before every rewrite of a trampoline (arch/x86/kernel/static_call.c, the same in
            // Debian 6.1.192 and 6.12.117): the ud1 signature at +5 *and* a first byte of JMP32
            // (e9), RET (c3) or a Jcc, else BUG. Anything else is never patched: not a site (its
            // loaded bytes are its only state). A Jcc "trampoline" is left out too: the kernel
            // rewrites it as a 6-byte Jcc (over the signature's first byte), which the
            // trampoline rule does not model (fail closed: its loaded bytes only).
            guard si < elf.sections.count, let a = addr[si].map({ $0 &+ symtab.value(k) }), let off = execOffset(a, 8),
                  image[off] == 0xe9 || image[off] == 0xc3,
                  image[off + 5] == 0x0f, image[off + 6] == 0xb9, image[off + 7] == 0xcc, seen[UInt64(off)] == nil else { continue }
            seen.set(UInt64(off), 1)
            trampolineSites.append((a, off))
        }
        // Targets the module's own code sets for its own keys (StaticCallTrust.moduleUpdates),
        // looked up by the signed module's name and resolved to its own function symbols.
        if let name = modinfo("name"), let updates = StaticCallTrust.moduleUpdates[name] {
            for (keyName, targets, feature) in updates {
                // The source's CPU test (boot_cpu_has()): on a CPU without the feature the
                // module never makes the update.
                if let f = feature, !hasFeature(f) { continue }
                guard let ki = keySymbols.index(named: "__SCK__" + keyName, symtab), let key = ownKeyAddress(ki) else { continue }
                for t in targets {
                    // Byte equality, as the kernel's strcmp (String == would also accept a
                    // canonically equivalent Unicode spelling: never more targets than before).
                    for i in symtab.indices where symtab.isFunction(i) && !symtab.isUndefined(i) && symtab.nameEquals(i, t) {
                        if let v = try? symbolValue(i), functionEntries.contains(v) { ownKeyDefaults.add(key, v) }
                    }
                }
            }
        }
        if inherited == nil { addOwnTraceEventProbes() }  // (an init session inherits them)
        for (a, off) in trampolineSites {
            precondition(off >= 0 && off <= image.count - 5, "trampoline outside the image")  // execOffset checked it
            guard image[off] == 0xe9, let key = trampolineKey(a),
                  let dest = image.withUnsafeBytes({ rel32Destination(UnsafeRawBufferPointer(rebasing: $0[off..<off + 5]), operandAt: 1, site: a, length: 5) }),
                  dest != returnThunkExport, dest != returnThunkTarget else { continue }
            ownKeyDefaults.add(key, dest)
        }
    }

    /// The trace-event probes of the module's own tracepoints, trusted for the tracepoint's key.
    /// A module's `TRACE_EVENT()`/`DEFINE_EVENT()` (include/trace/trace_events.h, 6.1 and 6.12)
    /// emits `struct trace_event_call event_X = { .class = &event_class_C, .tp =
    /// &__tracepoint_X, … }` (its address in the module's `_ftrace_events` table) and `struct
    /// trace_event_class event_class_C = { .probe = trace_event_raw_event_C, .perf_probe =
    /// perf_trace_C, .reg = trace_event_reg, … }`. Enabling the event (tracefs, perf, or the module
    /// itself: qla2xxx's init enables its own "qla" events in its trace instance, qla_trace_init()
    /// → trace_array_set_clr_event()) goes through kernel/trace/trace_events.c trace_event_reg():
    /// TRACE_REG_REGISTER → `tracepoint_probe_register(call->tp, call->class->probe, file)`,
    /// TRACE_REG_PERF_REGISTER → `(call->tp, call->class->perf_probe, call)`; with that one
    /// probe, kernel/tracepoint.c tracepoint_update_call() points `tp->static_call_key` at it
    /// (6.1.192 and 6.12.117). So each of those two functions is a target of that key, read from
    /// the signed module's own relocated structures: `_ftrace_events[i]` → the call (class at
    /// +16, tp at +24: `struct list_head list` first), the class (probe at +8, perf_probe at +16,
    /// reg at +24 after `const char *system`), the tracepoint (`static_call_key` at +24, after
    /// `name` and `struct static_key`). Only a class whose `reg` is the core's `trace_event_reg`
    /// (no other registers `class->probe`), only a key that is one of this module's own
    /// tracepoint keys, only a function entry of its own text (`trustedStaticCallTargets`
    /// keeps function entries). Never the values in the module's writable data at run time, and
    /// no other probe (a BPF raw tracepoint's `__bpf_trace_C`, another module's probe): those stay
    /// denied, as tracing is (docs/trust.md, "Static calls").
    func addOwnTraceEventProbes() {
        // `find_module_sections()` → `section_objs()` → `find_sec()`.
        guard let ev = findSec("_ftrace_events"), ev.size >= 8 else { return }
        // This module's own tracepoint keys (`__SCK__tp_func_*` it defines: ownTracepointKeys
        // without the trampolines).
        var own = AddressTable(expecting: keySymbols.indices.count)
        for ki in keySymbols.indices where symtab.nameHasPrefix(ki, "__SCK__tp_func_") {
            if let a = ownKeyAddress(ki) { own.set(a, 1) }
        }
        if own.count == 0 { return }
        // The R_X86_64_64 fields the walk reads (the event table's slots; then each call's class
        // and tp; then each class's probes and reg and each tracepoint's key), from an index of
        // each section asked about, made once (``TraceEventFields``). (Three rounds, each a
        // filtered pass over the records of the sections it asked about — a module's `.rela.data`
        // twice — into a hashed table of the asked offsets, were ≈ 5% of a corpus pass.) The
        // fields the kernel relocates lie in the core allocation (at most
        // `ExplainLimits.maxCoreSize`), and a field not found only leaves a probe untrusted.
        typealias Field = TraceEventFields.Field
        var fields = TraceEventFields(sections: elf.sections.count)
        // The (section, offset) a pointer field points to: a symbol the module defines.
        func pointee(_ f: Field?) -> (sec: Int, off: UInt64)? {
            guard let f else { return nil }
            let shndx = symtab.sectionIndex(f.sym)
            guard shndx != SectionIndex.undef, shndx < SectionIndex.loReserve, Int(shndx) < elf.sections.count else { return nil }
            let (o, ov) = symtab.value(f.sym).addingReportingOverflow(UInt64(bitPattern: f.addend))
            return ov ? nil : (Int(shndx), o)
        }
        func value(_ f: Field?) -> UInt64? {
            guard let f, let v = try? symbolValue(f.sym) else { return nil }
            return v &+ UInt64(bitPattern: f.addend)
        }
        // Each section indexed before its first ask, from the relocation sections applying to
        // it (`relaByTarget`: a pass over every relocation section per section asked was their
        // product, both the file's); plain loops (no closure captures the index: no box, no
        // exclusivity check per field).
        let targeting = relaByTarget
        fields.index(ev.index, rela, targeting)
        var calls: [(sec: Int, off: UInt64)] = []
        calls.reserveCapacity(Swift.min(ev.size / 8, 4096))
        for slot in stride(from: UInt64(0), through: UInt64(ev.size) - 8, by: 8) {
            if let c = pointee(fields.field(ev.index, slot)) { calls.append(c) }
        }
        if calls.isEmpty { return }
        for c in calls { fields.index(c.sec, rela, targeting) }
        var pairs: [(cls: (sec: Int, off: UInt64), tp: (sec: Int, off: UInt64))] = []
        pairs.reserveCapacity(calls.count)
        for c in calls {
            guard let cls = pointee(fields.field(c.sec, c.off &+ 16)), let tp = pointee(fields.field(c.sec, c.off &+ 24)) else { continue }
            pairs.append((cls, tp))
        }
        for p in pairs { fields.index(p.cls.sec, rela, targeting); fields.index(p.tp.sec, rela, targeting) }
        // The undefined symbol found named `trace_event_reg` (its name compared once, not once a
        // class: most classes of a module name the same symbol; another index is compared again).
        var regSymbol = -1
        for (cls, tp) in pairs {
            guard let reg = fields.field(cls.sec, cls.off &+ 24), symtab.isUndefined(reg.sym), reg.addend == 0,
                  reg.sym == regSymbol || symtab.nameEquals(reg.sym, "trace_event_reg"),
                  let key = value(fields.field(tp.sec, tp.off &+ 24)), own[key] != nil else { continue }
            regSymbol = reg.sym
            // The class's `probe` and `perf_probe` (offsets 8 and 16; no array literal per event).
            if let p = value(fields.field(cls.sec, cls.off &+ 8)), functionEntries.contains(p) { ownKeyDefaults.add(key, p) }
            if let p = value(fields.field(cls.sec, cls.off &+ 16)), functionEntries.contains(p) { ownKeyDefaults.add(key, p) }
        }
    }

    /// `static_call_update()` on the module's key rewrites its trampoline to `jmp func` or the RET
    /// form at any time: both are legal when `func` is trusted for the key, and the state must
    /// agree with the key's inline sites (`__SCK__<name>`).
    func addModuleTrampolineSites() {
        if trampolineSites.isEmpty { return }
        // The trampolines that already have a site (few trampolines, thousands of sites: the
        // trampolines' offsets in a small table, one pass over the sites).
        var known = AddressTable(expecting: trampolineSites.count)
        var lo = Int.max, hi = Int.min
        for (_, off) in trampolineSites { known.set(UInt64(off), 0); lo = Swift.min(lo, off); hi = Swift.max(hi, off) }
        // Only a site inside the trampolines' span can share an offset with one: two compares
        // before the table is asked (the trampolines sit together in `.static_call.text`).
        variable.withUnsafeBufferPointer { sites in
            for i in sites.indices {
                let off = sites[i].offset
                if off >= lo && off <= hi && known[UInt64(off)] != nil { known.set(UInt64(off), 1) }
            }
        }
        for (a, off) in trampolineSites where known[UInt64(off)] != 1 { addTrampolineSite(a, off) }
    }

    /// The module's own key (`__SCK__<name>`) of the trampoline at `a` (the first `__SCT__`
    /// symbol at that address names it; nil if its key symbol is missing or has no value).
    func trampolineKey(_ a: UInt64) -> UInt64? {
        if trampolineKeyCache == nil { trampolineKeyCache = buildTrampolineKeys() }
        // Asked in place (`mutating`, changes nothing): read out of the class's property, the
        // table was copied, three retains and releases a trampoline.
        return trampolineKeyCache!.keyInPlace(a)
    }

    /// `trampolineKey` for every trampoline address, built once per session (first symbol wins).
    func buildTrampolineKeys() -> TrampolineKeys {
        var m = TrampolineKeys()
        m.slot = AddressTable(expecting: trampolineSymbols.count)
        m.keys.reserveCapacity(Swift.min(trampolineSymbols.count, 1 << 12))
        for k in trampolineSymbols {
            let si = Int(symtab.sectionIndex(k))
            guard si < elf.sections.count, let sa = addr[si] else { continue }
            let a = sa &+ symtab.value(k)
            if m.slot[a] != nil { continue }
            m.slot.set(a, UInt64(m.keys.count))
            m.keys.append(keySymbols.index(ofTrampoline: k, symtab).flatMap { ownKeyAddress($0) })
        }
        return m
    }

    /// The address of key symbol `ki` when it is a key this module defines: in one of its own
    /// allocated core sections, the whole `struct static_call_key` (`func` and a union: 16 bytes,
    /// include/linux/static_call_types.h) inside the section. The kernel adds `st_value` to the
    /// section's address unbounded (`simplify_symbols()`), and an SHN_ABS symbol is any address:
    /// taken by name alone, a `__SCK__<name>` symbol could name a *core* key (or another module's)
    /// and make this module's trampoline default trusted for it, a target
    /// `static_call_add_module()` never writes at that key's sites. Otherwise nil: no key.
    func ownKeyAddress(_ ki: Int) -> UInt64? {
        let shndx = symtab.sectionIndex(ki), si = Int(shndx)
        guard shndx != SectionIndex.undef, shndx < SectionIndex.loReserve, si < elf.sections.count, layout.coreOffset[si] != nil,
              layout.flags[si].contains(.alloc), let a = addr[si] else { return nil }
        let v = symtab.value(ki), size = UInt64(elf.sections[si].size)
        guard size >= 16, v <= size - 16 else { return nil }
        return a &+ v
    }

    func addTrampolineSite(_ a: UInt64, _ off: Int) {
        let key = trampolineKey(a)
        // A trampoline without a key symbol has no trusted target: only its RET form.
        let trusted = key.map { trustedStaticCallTargets($0) } ?? TargetList([])
        let ret = retInstruction(at: a)?.padded(to: 5, with: 0xcc) ?? SiteBytes()
        // A tracepoint key's trampoline is never NULL either (its key or the trampoline itself a
        // tracepoint's: `disabledForm`): tracepoint_update_call() rewrites it with the key.
        let null = (key.flatMap { disabledForm(ofKey: $0) } ?? disabledForm(ofKey: a))?.allowsNull ?? true
        variable.append(VariableSite(offset: off, length: 5, cls: .staticCall, group: key, label: .trampoline,
                                     rule: .trampoline(site: a, retForm: ret, trusted: trusted, null: null)))
    }
}

/// The R_X86_64_64 fields of the sections the trace-event probe walk asks about
/// (``Session/addOwnTraceEventProbes()``), each section indexed once, from its relocation
/// sections' records (counted, then read): a field is the one valid R_X86_64_64 record at exactly
/// its offset (two such records: no field, the kernel refuses the second write; any other record
/// is no field). A section's fields at 8-aligned offsets are in one flat array by 8-byte slot
/// while all the sections' slots number at most 8 a record read plus 4,096 (`.data` with its
/// pointers, `__tracepoints`, `_ftrace_events`); any other field (an offset not 8-aligned, or a
/// section past that budget: a large `.bss`, or many sections of a few records each) in an
/// ``AddressTable`` keyed by section and offset. Memory: the slots at most 32 bytes a record
/// read plus 16 KiB in all, and 16 bytes a valid R_X86_64_64 record kept (plus its table entry
/// or a slot). A field is looked up only inside its own section's slots. Sections past 2^24 and
/// offsets past 2^40 are never indexed nor found (a field not found only leaves a probe
/// untrusted).
struct TraceEventFields {
    typealias Field = (sym: Int, addend: Int64)
    static let twice = UInt32.max
    /// The valid R_X86_64_64 records of the indexed sections (symbol, addend).
    private var records: [Field] = []
    /// Per section: its first slot in `slots`, -1 with no slots (its fields in `table`), -2 not indexed.
    private var base: [Int]
    /// Per section with slots: how many (its slots are `slots[base ..< base + slotCount]`).
    private var slotCount: [Int]
    /// Records counted in the sections indexed so far (the slots' budget).
    private var recordsRead = 0
    /// Per 8-byte slot of the sections with slots: 0 no field, `records` index + 1, or `twice`.
    private var slots: [UInt32] = []
    /// (section << 40 | offset) → as `slots`, for the fields outside them.
    private var table = AddressTable()

    init(sections: Int) {
        base = [Int](repeating: -2, count: sections)
        slotCount = [Int](repeating: 0, count: sections)
    }

    /// Indexes section `sec` (once) from the records of `rela` that target it (`targeting[sec]`).
    mutating func index(_ sec: Int, _ rela: [ELFRelocationSection], _ targeting: RelaByTarget) {
        guard sec >= 0, sec < base.count, sec < 1 << 24, base[sec] == -2 else { return }
        var count = 0, size: UInt64 = 0
        for ri in targeting[sec] {
            let rs = rela[ri]
            count += rs.relocations.count
            size = Swift.max(size, rs.relocations.targetSize)  // (every one is the section's size)
        }
        recordsRead += count
        let want = Int(clamping: size / 8) + 1
        // One budget for all the sections' slots (a section each with one record would otherwise
        // bring 16 KiB of slots each).
        let dense = count > 0 && want <= 8 * recordsRead + 4096 - slots.count
        let first = slots.count, start = records.count
        precondition(start + count < Int(Self.twice) - 1, "relocation records beyond the field index")
        base[sec] = dense ? first : -1
        if dense {
            slots.append(contentsOf: repeatElement(0, count: want))
            slotCount[sec] = want
        }
        // The records read in place (the parser's layout: offset, info, addend; little-endian),
        // kept in a buffer of their own and the slots written through theirs: no uniqueness
        // check per record. Fields outside the slots are put in the table after the pass.
        var odd: [(key: UInt64, record: Int)] = []
        let found: [Field] = slots.withUnsafeMutableBufferPointer { sb in
            [Field](unsafeUninitializedCapacity: count) { kept, n in
                n = 0
                for ri in targeting[sec] {
                    let rr = rela[ri].relocations, raw = rr.rawRecords
                    let symbols = UInt64(rr.symbolCount), targetSize = rr.targetSize
                    for at in stride(from: 0, to: raw.count, by: 24) {
                        let off = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self))
                        let info = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self))
                        // R_X86_64_64 (type 1), valid as the parser's `isValid` has it (symbol
                        // inside the table; the 8-byte field inside the section, no sum wrapping),
                        // at an offset a field can be asked at.
                        guard UInt32(truncatingIfNeeded: info) == RelocationType.r64.rawValue, info >> 32 < symbols,
                              targetSize >= 8, off <= targetSize - 8, off < 1 << 40 else { continue }
                        let addend = Int64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 16, as: Int64.self))
                        kept.initializeElement(at: n, to: (Int(info >> 32), addend))
                        n += 1
                        let v = UInt32(start + n)
                        if dense && off % 8 == 0 && Int(off / 8) < want {  // (always: off + 8 <= size)
                            let k = first + Int(off / 8)
                            sb[k] = sb[k] == 0 ? v : Self.twice
                        } else {
                            odd.append((UInt64(sec) << 40 | off, start + n))
                        }
                    }
                }
            }
        }
        records.append(contentsOf: found)
        for (k, r) in odd { table.set(k, table[k] == nil ? UInt64(r) : UInt64(Self.twice)) }
    }

    /// The field at (`sec`, `off`) of an indexed section; nil for none (or a section not indexed).
    func field(_ sec: Int, _ off: UInt64) -> Field? {
        guard sec >= 0, sec < base.count, off < 1 << 40, base[sec] != -2 else { return nil }
        let b = base[sec]
        let v: UInt32
        if b >= 0 && off % 8 == 0 {
            // Inside this section's own slots only (past them: no record of the section there).
            guard off / 8 < UInt64(slotCount[sec]) else { return nil }
            v = slots[b + Int(off / 8)]
        } else {
            guard let t = table[UInt64(sec) << 40 | off] else { return nil }
            v = UInt32(truncatingIfNeeded: t)
        }
        guard v != 0, v != Self.twice else { return nil }
        return records[Int(v) - 1]
    }
}

/// Trampoline address → its key (nil: a trampoline whose key symbol is missing or not the module's own: ownKeyAddress),
/// by address in an ``AddressTable`` (the `[UInt64: UInt64?]` it replaces hashed each address).
struct TrampolineKeys {
    /// Trampoline address → index in `keys`.
    var slot = AddressTable()
    var keys: [UInt64?] = []
    /// The key of the trampoline at `a`; nil for no trampoline there or one without a key.
    func key(_ a: UInt64) -> UInt64? { slot[a].flatMap { keys[Int($0)] } }
    /// `key(a)` on a table reached through a class's stored property: borrowed in place.
    @inline(__always) mutating func keyInPlace(_ a: UInt64) -> UInt64? { key(a) }
}

/// A module's defined static-call key symbols (`__SCK__<name>`), found by name (the last symbol
/// of a name wins), names equal when their bytes are (as the kernel's: SlidExports): the ASCII
/// names after the 7-byte prefix in a ``NameTable``, any other (never seen in a real module) by
/// its bytes in `other`. No `String` per key or per lookup.
struct KeySymbols {
    /// The key symbols, in symbol order.
    let indices: [Int]
    /// ASCII name after `__SCK__` → symbol index.
    private var table = NameTable()
    /// Any other name after `__SCK__`, as bytes → symbol index.
    private var other: [[UInt8]: Int] = [:]

    init(_ symtab: ELFSymbolTable, _ indices: [Int]) {
        self.indices = indices
        guard !indices.isEmpty else { return }
        table = NameTable(minimumCapacity: indices.count)
        for i in indices {
            let rest = UnsafeRawBufferPointer(rebasing: symtab.nameBytes(i)[7...])
            // Both replace an earlier entry of the same name: the last wins.
            if rest.isASCII { table.insert(rest, UInt64(i)) } else { other[Array(rest)] = i }
        }
    }

    /// The key symbol named `name` (bytes).
    func index(named name: String, _ symtab: ELFSymbolTable) -> Int? {
        if indices.isEmpty { return nil }
        var n = name
        return n.withUTF8 { u in
            let b = UnsafeRawBufferPointer(u)
            guard b.count >= 7, b.starts(with: "__SCK__".utf8) else { return nil }
            return index(after: UnsafeRawBufferPointer(rebasing: b[7...]))
        }
    }

    /// The key symbol of the trampoline symbol `t` (`__SCT__<name>` → `__SCK__<name>`).
    func index(ofTrampoline t: Int, _ symtab: ELFSymbolTable) -> Int? {
        let b = symtab.nameBytes(t)
        precondition(b.count >= 7, "a trampoline symbol's name starts with __SCT__")
        return index(after: UnsafeRawBufferPointer(rebasing: b[7...]))
    }

    /// The key symbol whose name after the prefix has the bytes `rest`.
    private func index(after rest: UnsafeRawBufferPointer) -> Int? {
        rest.isASCII ? table.lookup(rest).map { Int($0) } : other.isEmpty ? nil : other[Array(rest)]
    }
}
