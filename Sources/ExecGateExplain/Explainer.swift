// SPDX-License-Identifier: Apache-2.0
//
// End-state explanation of a loaded module's executable memory.
//
// The x86-64 6.1 loader writes module text in this order (kernel/module/main.c `load_module()`):
//
//   copy sections (layout_sections) ─► apply_relocations ─► module_finalize:
//       apply_paravirt ─► apply_retpolines ─► apply_returns ─► apply_alternatives (+optimize_nops
//       on every site) ─► apply_ibt_endbr ─► alternatives_smp_module_add (lock → ds on UP)
//   ─► ftrace_module_init (mcount sites → NOP5) ─► module_enable_ro/x
//   ─► COMING notifiers: jump_label_add_module, static_call_add_module (and again at run time).
//
// The explainer replays every deterministic step on a copy of the signed ELF at the claimed
// addresses, producing the exact expected bytes. Steps whose result depends on guest run-time state
// (jump-label key state, static-call target, ftrace enablement) produce a *set* of legal encodings
// per site, checked exactly (never by masking a field): the claimed bytes must be one member, and
// all sites of one key must agree. Every other byte must equal the replayed value; the first
// difference is the denial.

import ExecGateELF

/// The explanation engine. Pure: no I/O, no global state.
public struct Explainer: Sendable {
    public let facts: GuestFacts

    public init(facts: GuestFacts) { self.facts = facts }

    /// Explain one module.
    /// - Parameters:
    ///   - elf: the signed module's ELF (signature already verified by the caller).
    ///   - claim: the guest's claim (executable region bytes + layout).
    ///   - resolver: exports of the core kernel and of modules already allowed in this guest.
    /// - Returns: the verdict, and on allow the exports to add to `resolver` and the module's
    ///   run-time patch sites.
    public func explain(elf: ELFFile, claim: ModuleClaim, resolver: SymbolResolver) -> ExplainResult {
        let s = Session(elf: elf, claim: claim, facts: facts, resolver: resolver)
        do {
            try s.run()
            let stats = s.statistics()
            return ExplainResult(verdict: .allowed(stats), exports: s.moduleExports(), runtimeSites: RuntimeSiteTable(session: s, claim: claim))
        } catch let d as DenyError {
            return ExplainResult(verdict: .denied(d.denial), exports: nil)
        } catch {
            // Only DenyError and ELFError are thrown inside; map ELF errors to a structural denial.
            let d = Denial(module: claim.name, section: "(elf)", offset: 0, address: 0, expected: [], found: [],
                           rule: "elf", reason: "\(error)")
            return ExplainResult(verdict: .denied(d), exports: nil)
        }
    }
}

/// Named limits of the engine (hostile input: a signed-but-odd module must not exhaust memory).
public enum Limits {
    /// The whole x86-64 module area is 1 GiB; the largest Debian 6.1 module core is a few MiB.
    public static let maxCoreSize = 128 << 20
}

struct DenyError: Error { var denial: Denial }

// MARK: - Session

/// The x86 NOP table `x86_nops[]` (arch/x86/include/asm/nops.h, BYTES_NOP1..8, 6.1 x86-64).
let x86Nops: [[UInt8]] = [
    [],
    [0x90],
    [0x66, 0x90],
    [0x0f, 0x1f, 0x00],
    [0x0f, 0x1f, 0x40, 0x00],
    [0x0f, 0x1f, 0x44, 0x00, 0x00],
    [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    [0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    [0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
]
let asmNopMax = 8

/// `add_nops()`: fill with the largest NOPs first.
func addNops(_ buf: inout [UInt8], at start: Int, count: Int) {
    var p = start, left = count
    while left > 0 {
        let n = min(left, asmNopMax)
        for k in 0..<n { buf[p + k] = x86Nops[n][k] }
        p += n
        left -= n
    }
}

/// `__text_gen_insn()`: opcode + rel32 (or rel8 for `eb`) from `addr` to `dest`. nil if rel8 does
/// not fit (the kernel BUGs) or rel32 overflows.
func genInsn(_ op: UInt8, at addr: UInt64, to dest: UInt64) -> [UInt8]? {
    let len: UInt64 = op == 0xeb ? 2 : 5
    let disp = Int64(bitPattern: dest &- (addr &+ len))
    if op == 0xeb {
        guard disp >= -128 && disp <= 127 else { return nil }
        return [0xeb, UInt8(bitPattern: Int8(disp))]
    }
    guard disp >= Int64(Int32.min) && disp <= Int64(Int32.max) else { return nil }
    let u = UInt32(bitPattern: Int32(disp))
    return [op, UInt8(u & 0xff), UInt8((u >> 8) & 0xff), UInt8((u >> 16) & 0xff), UInt8(u >> 24)]
}

/// A site whose end state is run-time guest state: any member of the legal set is accepted.
struct VariableSite {
    var offset: Int
    var length: Int
    var cls: ExplanationClass
    /// Consistency group (key address); sites of one group must report the same state.
    var group: UInt64?
    /// Description (built only when needed: most sites never need it).
    var label: String
    var labelKey: UInt64?
    var what: String { labelKey.map { "\(label) (key 0x\(String($0, radix: 16)))" } ?? label }
    /// Returns the state (e.g. key enabled, static-call function) if `bytes` is a legal encoding.
    var check: ([UInt8]) -> UInt64?
    /// The encoding for a state (used as "expected" when the claim is illegal or inconsistent).
    var encode: (UInt64?) -> [UInt8]

    init(offset: Int, length: Int, cls: ExplanationClass, group: UInt64?, what: String, whatKey: UInt64? = nil,
         check: @escaping ([UInt8]) -> UInt64?, encode: @escaping (UInt64?) -> [UInt8]) {
        self.offset = offset; self.length = length; self.cls = cls; self.group = group
        self.label = what; self.labelKey = whatKey; self.check = check; self.encode = encode
    }
}

final class Session {
    let elf: ELFFile
    let claim: ModuleClaim
    let facts: GuestFacts
    let resolver: SymbolResolver
    var layout: ModuleLayout!
    var addr: [UInt64?] = []
    var image: [UInt8] = []
    var cls: [UInt8] = []
    /// Region-offset ranges of exec core sections: (lo, hi, section index), sorted.
    var execRanges: [(lo: Int, hi: Int, sec: Int)] = []
    var data: [Int: [UInt8]] = [:]
    var symbols: [ELFSymbol] = []
    var symValue: [UInt64?] = []
    /// Indices of the module's defined `__SCT__*` (static-call trampoline) symbols.
    var trampolineSymbols: [Int] = []
    var keySymbols: [String: Int] = [:]
    var rela: [ELFRelocationSection] = []
    var variable: [VariableSite] = []
    var notes: [(range: Range<Int>, text: String)] = []
    var siteCounts: [ExplanationClass: Int] = [:]
    var relocCount = 0
    /// This module's own function entries (STT_FUNC in exec core sections).
    var functionEntries: Set<UInt64> = []
    let base: UInt64

    /// A legitimate function entry: of this module, of the core kernel, or of a verified module.
    /// Returns a closure over value copies (the sets are copy-on-write: no copying happens).
    var isFunctionEntry: (UInt64) -> Bool {
        let own = functionEntries, core = facts.functionEntries, mods = resolver.moduleFunctionEntries
        return { own.contains($0) || core.contains($0) || mods.contains($0) }
    }
    // Site records (for the mutation tester and diagnostics).
    var relocFields: [(off: Int, size: Int, type: RelocationType, symbol: Int, addend: Int64, place: UInt64)] = []
    var jumpSites: [(off: Int, size: Int, code: UInt64, target: UInt64)] = []
    var returnSites: [(off: Int, addr: UInt64, len: Int)] = []
    var staticSites: [(off: Int, addr: UInt64, tail: Bool)] = []
    var altSites: [(off: Int, len: Int, feature: Int, inverted: Bool, applied: Bool)] = []

    init(elf: ELFFile, claim: ModuleClaim, facts: GuestFacts, resolver: SymbolResolver) {
        self.elf = elf
        self.claim = claim
        self.facts = facts
        self.resolver = resolver
        self.base = claim.textBase
    }

    // MARK: Denial helpers

    func deny(_ rule: String, _ reason: String, section: String = "(claim)", offset: Int = 0, address: UInt64 = 0,
              expected: [UInt8] = [], found: [UInt8] = []) -> DenyError {
        DenyError(denial: Denial(module: claim.name, section: section, offset: offset, address: address,
                                 expected: expected, found: found, rule: rule, reason: reason))
    }

    func sectionName(_ i: Int) -> String { elf.sections[i].name }

    // MARK: Run

    func run() throws {
        try setUp()
        try relocate()
        try applyParavirt()
        try applyRetpolines()
        try applyReturns()
        try applyAlternatives()
        try applyEndbrSeal()
        try applySMPLocks()
        try applyFtrace()
        try addJumpLabels()
        try addStaticCalls()
        addModuleTrampolines()
        try compare()
    }

    // MARK: Structure and layout

    func setUp() throws {
        guard let lay = ModuleLayout.compute(elf) else {
            throw deny("layout", "section sizes/alignments overflow the kernel's layout computation")
        }
        layout = lay
        guard lay.coreSize <= Limits.maxCoreSize else {
            throw deny("layout", "core allocation of \(lay.coreSize) bytes exceeds \(Limits.maxCoreSize)")
        }
        guard claim.text.count == lay.textSize else {
            throw deny("layout", "claimed executable region is \(claim.text.count) bytes, layout_sections() gives core text_size \(lay.textSize)")
        }
        let (coreEnd, ovf) = base.addingReportingOverflow(UInt64(lay.coreSize))
        guard !ovf, base % UInt64(ModuleLayout.pageSize) == 0, base >= facts.moduleArea.lowerBound, coreEnd <= facts.moduleArea.upperBound else {
            throw deny("layout", "core allocation 0x\(String(base, radix: 16)) +\(lay.coreSize) is not a page-aligned range inside the module area", address: base)
        }
        addr = [UInt64?](repeating: nil, count: elf.sections.count)
        image = [UInt8](repeating: 0, count: lay.textSize)
        cls = [UInt8](repeating: UInt8(ExplanationClass.padding.rawValue), count: lay.textSize)
        for s in elf.sections {
            let i = s.index
            if let off = lay.coreOffset[i] {
                let a = base &+ UInt64(off)
                addr[i] = a
                if let c = claim.sectionAddresses[s.name], c != a, lay.flags[i].contains(.alloc) {
                    throw deny("layout", "claimed address 0x\(String(c, radix: 16)) of \(s.name) differs from layout_sections() 0x\(String(a, radix: 16))",
                               section: s.name, address: c)
                }
                if lay.flags[i].contains(.execInstr) {
                    // Exec sections are inside [0, textSize) by construction of the layout.
                    if !s.isNoBits { image.replaceSubrange(off..<off + s.size, with: elf.contents(of: s)) }
                    let n = s.size
                    cls.withUnsafeMutableBufferPointer { c in
                        precondition(off >= 0 && n <= c.count && off <= c.count - n)
                        UnsafeMutableBufferPointer(rebasing: c[off..<off + n]).update(repeating: UInt8(ExplanationClass.elf.rawValue))
                    }
                    if s.size > 0 { execRanges.append((off, off + s.size, i)) }
                } else {
                    data[i] = s.isNoBits ? [UInt8](repeating: 0, count: s.size) : Array(elf.contents(of: s))
                }
            } else if let ioff = lay.initOffset[i] {
                // Init memory is freed after init and never verified. Its claimed (stale sysfs)
                // address is deliberately NOT used: a hostile claim could place "init" sections on
                // top of the core text, turning init-only jump-label/static-call/alternative
                // entries into legal patch sites inside verified code. A low address that is never
                // module memory makes every init site fall outside the region, and any core byte
                // that would depend on an init address (a freed pointer) unexplainable: deny.
                addr[i] = Session.initPlaceholderBase &+ UInt64(ioff)
            }
        }
        execRanges.sort { $0.lo < $1.lo }
        if let pi = lay.percpuIndex, let pb = claim.percpuBase, let range = facts.modulePercpuRange {
            let sec = elf.sections[pi]
            let align = max(sec.addralign, 1)
            let (end, o) = pb.addingReportingOverflow(UInt64(sec.size))
            guard !o, pb >= range.lowerBound, end <= range.upperBound, pb % align == 0 else {
                throw deny("layout", "claimed per-cpu base 0x\(String(pb, radix: 16)) (+\(sec.size), align \(align)) is outside the module per-cpu area \(range)")
            }
        }
        symbols = try elf.symbols()
        rela = try elf.relocationSections()
        symValue = [UInt64?](repeating: nil, count: symbols.count)
        // One pass, byte tests on the UTF-8 storage: "__SCT__" (trampolines), "__SCK__" (keys).
        for i in symbols.indices where !symbols[i].isUndefined {
            var name = symbols[i].name
            let kind: UInt8 = name.withUTF8 { p in
                guard p.count >= 7, p[0] == 0x5f, p[1] == 0x5f, p[2] == 0x53, p[3] == 0x43, p[5] == 0x5f, p[6] == 0x5f else { return 0 }
                return p[4]
            }
            if kind == 0x54 { trampolineSymbols.append(i) } else if kind == 0x4b { keySymbols[name] = i }
        }
        for sym in symbols where sym.isFunction && !sym.isUndefined {
            let i = Int(sym.sectionIndex)
            if i < elf.sections.count, lay.coreOffset[i] != nil, lay.flags[i].contains(.execInstr), let a = addr[i] {
                functionEntries.insert(a &+ sym.value)
            }
        }
    }

    /// `simplify_symbols()`: the final value of symbol `i`.
    @inline(__always) func symbolValue(_ i: Int) throws -> UInt64 {
        if let v = symValue[i] { return v }
        return try resolveSymbolValue(i)
    }

    func resolveSymbolValue(_ i: Int) throws -> UInt64 {
        let sym = symbols[i]
        var v: UInt64
        switch sym.sectionIndex {
        case SectionIndex.common:
            throw deny("relocation", "symbol \(sym.name) is SHN_COMMON (the kernel refuses: compile with -fno-common)")
        case SectionIndex.abs:
            v = sym.value
        case SectionIndex.livepatch:
            throw deny("relocation", "livepatch symbol \(sym.name) is not supported")
        case SectionIndex.undef:
            if i == 0 { v = 0; break }
            if let a = resolver.lookup(sym.name) {
                v = a
            } else if sym.isWeak {
                v = 0  // unresolved weak: the kernel leaves 0.
            } else {
                throw deny("relocation", "unknown symbol \(sym.name): not exported by the core kernel or an allowed module")
            }
        default:
            let si = Int(sym.sectionIndex)
            guard si < elf.sections.count, sym.sectionIndex < SectionIndex.loReserve else {
                throw deny("relocation", "symbol \(sym.name) has unsupported section index \(sym.sectionIndex)")
            }
            if si == layout.percpuIndex {
                guard let p = claim.percpuBase else {
                    throw deny("relocation", "symbol \(sym.name) is per-cpu but the claim gives no per-cpu base")
                }
                v = p &+ sym.value
            } else if let a = addr[si] {
                v = a &+ sym.value
            } else {
                // Non-ALLOC section: the kernel would use its temporary copy — unexplainable by design.
                v = 0xdead_0000_0000_0000 | UInt64(si) << 24
            }
        }
        symValue[i] = v
        return v
    }

    // MARK: Memory model

    /// Region offset of [a, a+n) when it lies inside one exec core section.
    func execOffset(_ a: UInt64, _ n: Int) -> Int? {
        guard a >= base else { return nil }
        let (d, o) = (a - base).addingReportingOverflow(UInt64(n))
        guard !o, d <= UInt64(image.count) else { return nil }
        let off = Int(a - base)
        for r in execRanges where off >= r.lo && off + n <= r.hi { return off }
        return nil
    }

    func sectionOf(regionOffset off: Int) -> (String, Int) {
        for r in execRanges where off >= r.lo && off < r.hi { return (sectionName(r.sec), off - r.lo) }
        return ("(padding)", off)
    }

    /// Read bytes at a guest address from the working image or a data section copy.
    func read(_ a: UInt64, _ n: Int) -> [UInt8]? {
        if let off = execOffset(a, n) { return Array(image[off..<off + n]) }
        for (i, d) in data {
            guard let sa = addr[i], a >= sa else { continue }
            let rel = a - sa
            if rel <= UInt64(d.count), UInt64(d.count) - rel >= UInt64(n) { return Array(d[Int(rel)..<Int(rel) + n]) }
        }
        return nil
    }

    func write(_ off: Int, _ bytes: [UInt8], _ c: ExplanationClass) {
        // One bounds check for the whole run (same trap as the per-byte subscripts it replaces),
        // then one exclusive access per array instead of one per byte.
        let n = bytes.count
        precondition(off >= 0 && n <= image.count && off <= image.count - n && image.count == cls.count, "write outside the image")
        let v = UInt8(c.rawValue)
        image.withUnsafeMutableBufferPointer { img in
            bytes.withUnsafeBufferPointer { src in
                for k in 0..<n { img[off + k] = src[k] }
            }
        }
        cls.withUnsafeMutableBufferPointer { cl in
            for k in 0..<n { cl[off + k] = v }
        }
    }

    func decode(at off: Int) -> DecodedInstruction? {
        image.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: off) }
    }

    // MARK: Relocations

    /// `apply_relocate_add()` / `__write_relocate_add()` (arch/x86/kernel/module.c, 6.1):
    /// ```c
    /// val = sym->st_value + rel[i].r_addend;
    /// case R_X86_64_NONE: continue;  case R_X86_64_64: size = 8; break;
    /// case R_X86_64_32:  if (val != *(u32 *)&val) goto overflow; size = 4; break;
    /// case R_X86_64_32S: if ((s64)val != *(s32 *)&val) goto overflow; size = 4; break;
    /// case R_X86_64_PC32: case R_X86_64_PLT32: val -= (u64)loc; size = 4; break;
    /// case R_X86_64_PC64: val -= (u64)loc; size = 8; break;
    /// default: pr_err("Unknown rela relocation: %llu\n", ...); return -ENOEXEC;
    /// if (memcmp(loc, &zero, size)) { pr_err("x86/modules: Invalid relocation target, existing value is nonzero ..."); return -ENOEXEC; }
    /// ```
    func relocate() throws {
        // Work on local arrays (moved out, moved back on every exit): no per-byte exclusivity
        // checks on the class's stored properties in this loop.
        var img: [UInt8] = [], cl: [UInt8] = []
        var fields = relocFields, count = relocCount
        swap(&img, &image); swap(&cl, &cls); relocFields = []
        defer { swap(&img, &image); swap(&cl, &cls); relocFields = fields; relocCount = count }
        let relocClass = UInt8(ExplanationClass.relocation.rawValue)
        for rs in rela {
            let t = rs.targetSectionIndex
            // Relocations of non-ALLOC sections are skipped by the kernel; init memory is freed.
            guard layout.flags[t].contains(.alloc), let toff = layout.coreOffset[t], let taddr = addr[t] else { continue }
            let isExec = layout.flags[t].contains(.execInstr)
            var d: [UInt8] = []
            if !isExec, let cur = data[t] {
                d = cur
                data[t] = nil  // keep `d` uniquely referenced while it is patched
            }
            defer { if !isExec { data[t] = d } }
            for r in rs.relocations {
                guard let size = r.type.fieldSize, r.type.isKnownToLoader else {
                    throw deny("relocation", "unknown relocation type \(r.type) in \(rs.section.name) (the kernel refuses the module)",
                               section: sectionName(t), offset: Int(r.offset), address: taddr &+ r.offset)
                }
                if size == 0 { continue }
                let fo = Int(r.offset)  // validated against the section size by the parser.
                let loc = taddr &+ r.offset
                var val = (try symbolValue(r.symbolIndex)) &+ UInt64(bitPattern: r.addend)
                switch r.type {
                case .r32:
                    guard val <= UInt64(UInt32.max) else {
                        throw deny("relocation", "R_X86_64_32 overflow (value 0x\(String(val, radix: 16)))", section: sectionName(t), offset: fo, address: loc)
                    }
                case .r32S:
                    let sv = Int64(bitPattern: val)
                    guard sv >= Int64(Int32.min) && sv <= Int64(Int32.max) else {
                        throw deny("relocation", "R_X86_64_32S overflow (value 0x\(String(val, radix: 16)))", section: sectionName(t), offset: fo, address: loc)
                    }
                case .pc32, .plt32, .pc64:
                    val = val &- loc
                default: break
                }
                if isExec {
                    let o = toff + fo
                    guard img[o..<o + size].allSatisfy({ $0 == 0 }) else {
                        throw deny("relocation", "relocation target is nonzero in the ELF (the kernel refuses the module)", section: sectionName(t), offset: fo, address: loc)
                    }
                    for k in 0..<size {
                        img[o + k] = UInt8(truncatingIfNeeded: val >> (8 * UInt64(k)))
                        cl[o + k] = relocClass
                    }
                    fields.append((o, size, r.type, r.symbolIndex, r.addend, loc))
                } else if fo + size <= d.count {
                    guard d[fo..<fo + size].allSatisfy({ $0 == 0 }) else {
                        throw deny("relocation", "relocation target is nonzero in the ELF (the kernel refuses the module)", section: sectionName(t), offset: fo, address: loc)
                    }
                    for k in 0..<size { d[fo + k] = UInt8(truncatingIfNeeded: val >> (8 * UInt64(k))) }
                }
                count += 1
            }
        }
    }

    // MARK: Tables

    /// A table section of the module (relocated copy) and its address.
    func table(_ name: String) -> (bytes: [UInt8], addr: UInt64)? {
        guard let s = elf.section(named: name), let d = data[s.index], let a = addr[s.index] else { return nil }
        return (d, a)
    }

    func s32(_ d: [UInt8], _ o: Int) -> Int64 {
        Int64(Int32(bitPattern: UInt32(d[o]) | UInt32(d[o + 1]) << 8 | UInt32(d[o + 2]) << 16 | UInt32(d[o + 3]) << 24))
    }

    func u64(_ d: [UInt8], _ o: Int) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(d[o + k]) << (8 * UInt64(k)) }
        return v
    }

    /// Sites of a `s32` self-relative table (`.retpoline_sites`, `.return_sites`, `.smp_locks`, ...).
    func relativeSites(_ name: String) -> [UInt64] {
        guard let t = table(name) else { return [] }
        var out: [UInt64] = []
        var o = 0
        while o + 4 <= t.bytes.count {
            let v = s32(t.bytes, o)
            out.append(t.addr &+ UInt64(o) &+ UInt64(bitPattern: v))
            o += 4
        }
        return out
    }

    func hasFeature(_ bit: Int) -> Bool { facts.has(bit) }
    var returnThunkTarget: UInt64? { facts.returnThunk ?? returnThunkExport }
    /// Exports looked up once per session (the resolver is immutable for the session).
    lazy var returnThunkExport: UInt64? = resolver.lookup("__x86_return_thunk")
    lazy var indirectThunkExport: UInt64? = resolver.lookup("__x86_indirect_thunk_rax")

    // MARK: Paravirt

    /// `apply_paravirt()`: `struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }` (16 bytes,
    /// `instr` relocated by R_X86_64_64). Each site becomes `call pv_ops[type]` (or nothing for
    /// `_paravirt_nop`, or `call paravirt_BUG` for NULL) padded with `add_nops()`.
    func applyParavirt() throws {
        guard let t = table(".parainstructions") else { return }
        var o = 0
        while o + 16 <= t.bytes.count {
            let instr = u64(t.bytes, o), type = Int(t.bytes[o + 8]), len = Int(t.bytes[o + 9])
            o += 16
            guard let off = execOffset(instr, len) else { continue }
            var buf = Array(image[off..<off + len])
            guard type < facts.pvOps.count else {
                throw deny("paravirt", "pv_ops[\(type)] is not in the trusted pv_ops table", section: sectionOf(regionOffset: off).0,
                           offset: sectionOf(regionOffset: off).1, address: instr)
            }
            let op = facts.pvOps[type]
            var used = 0
            var target: UInt64? = op
            if op == 0 {
                target = facts.paravirtBUG
                guard target != nil else { throw deny("paravirt", "pv_ops[\(type)] is NULL and paravirt_BUG is unknown", address: instr) }
            } else if let nop = facts.paravirtNop, op == nop {
                target = nil
            }
            if let tgt = target {
                guard len >= 5, let call = genInsn(0xe8, at: instr, to: tgt) else {
                    throw deny("paravirt", "paravirt site of \(len) bytes cannot hold a call (the kernel BUGs)", address: instr)
                }
                for k in 0..<5 { buf[k] = call[k] }
                used = 5
            }
            addNops(&buf, at: used, count: len - used)
            write(off, buf, .paravirt)
            siteCounts[.paravirt, default: 0] += 1
        }
    }

    // MARK: Retpolines

    /// `apply_retpolines()` + `patch_retpoline()` (alternative.c). With RETPOLINE and not
    /// RETPOLINE_LFENCE the site is left as compiled (`return -1`).
    func applyRetpolines() throws {
        let sites = relativeSites(".retpoline_sites")
        if sites.isEmpty { return }
        let fb = facts.featureBits
        for a in sites {
            guard let off = execOffset(a, 1), let insn = decode(at: off) else { continue }
            let isJcc = insn.opcode0 == 0x0f && insn.opcode1 & 0xf0 == 0x80
            guard insn.opcode0 == 0xe8 || insn.opcode0 == 0xe9 || isJcc else { continue }  // WARN_ON_ONCE, skipped
            guard let thunks = indirectThunkExport else {
                throw deny("retpoline", "__x86_indirect_thunk_array base unknown (no __x86_indirect_thunk_rax export)", address: a)
            }
            let target = a &+ UInt64(insn.length) &+ UInt64(bitPattern: insn.immediate)
            let diff = Int64(bitPattern: target &- thunks)
            let reg = diff / 32  // C pointer subtraction over retpoline_thunk_t (32 bytes)
            if reg & ~0xf != 0 { continue }  // WARN_ON_ONCE: left alone
            if reg == 4 { throw deny("retpoline", "CALL/JMP *%rsp (the kernel BUGs)", address: a) }
            if hasFeature(fb.retpoline) && !hasFeature(fb.retpolineLfence) { continue }
            if hasFeature(fb.indirectThunkITS) {
                throw deny("retpoline", "ITS indirect-thunk pages are not modelled", address: a)
            }
            var bytes: [UInt8] = []
            var op = insn.opcode0
            if isJcc {
                bytes.append(0x70 + ((insn.opcode1 & 0xf) ^ 1))
                bytes.append(UInt8(insn.length - 2))
                op = 0xe9
            }
            if hasFeature(fb.retpolineLfence) { bytes += [0x0f, 0xae, 0xe8] }
            var r = Int(reg)
            var modrm: UInt8 = op == 0xe8 ? 0x10 : 0x20
            if r >= 8 { bytes.append(0x41); r -= 8 }
            modrm |= 0xc0
            modrm += UInt8(r)
            bytes += [0xff, modrm]
            if op == 0xe9 && bytes.count < insn.length { bytes.append(0xcc) }
            while bytes.count < insn.length { bytes.append(0x90) }
            guard bytes.count == insn.length else { continue }
            optimizeNops(&bytes, 0, bytes.count)
            write(off, bytes, .retpoline)
            siteCounts[.retpoline, default: 0] += 1
        }
    }

    // MARK: Returns

    func wantsRethunk(at a: UInt64) -> Bool {
        guard hasFeature(facts.featureBits.rethunk) else { return false }
        if let its = facts.itsReturnThunk, let rt = returnThunkTarget, rt == its { return a & 0x20 == 0 }
        return true
    }

    /// The `RET` form of `__static_call_transform()` / `patch_return()` at `a` for `length` bytes.
    func retForm(at a: UInt64, length: Int) -> [UInt8]? {
        var b: [UInt8]
        if wantsRethunk(at: a) {
            guard let rt = returnThunkTarget, let j = genInsn(0xe9, at: a, to: rt) else { return nil }
            b = j
        } else {
            b = [0xc3]
        }
        while b.count < length { b.append(0xcc) }
        return b
    }

    /// `apply_returns()` + `__static_call_fixup()` + `patch_return()` (alternative.c, static_call.c).
    func applyReturns() throws {
        for a in relativeSites(".return_sites") {
            guard let off = execOffset(a, 1), let insn = decode(at: off) else { continue }
            var dest: UInt64? = nil
            if insn.opcode0 == 0xe9 { dest = a &+ UInt64(insn.length) &+ UInt64(bitPattern: insn.immediate) }
            // __static_call_fixup(): a trampoline is followed by `ud1 %esp, %ecx` (0f b9 cc).
            if off + 8 <= image.count && image[off + 5] == 0x0f && image[off + 6] == 0xb9 && image[off + 7] == 0xcc {
                let rtx = returnThunkExport
                if insn.opcode0 == 0xc3 || (dest != nil && dest == rtx) {
                    guard let form = retForm(at: a, length: 5), execOffset(a, 5) != nil else { continue }
                    write(off, form, .returnThunk)
                    // A module's own static-call trampoline: static_call_update() may later make it
                    // `jmp func` or the RET form again.
                    addTrampolineSite(a, off)
                    siteCounts[.returnThunk, default: 0] += 1
                }
                continue
            }
            guard let d = dest, let rtx = returnThunkExport, d == rtx else { continue }  // WARN_ONCE: left alone
            guard let bytes = retForm(at: a, length: insn.length), bytes.count == insn.length, execOffset(a, insn.length) != nil else { continue }
            write(off, bytes, .returnThunk)
            returnSites.append((off, a, insn.length))
            siteCounts[.returnThunk, default: 0] += 1
        }
    }

    /// A module's own static-call trampolines (`__SCT__<name>` in `.static_call.text`, followed by
    /// `ud1 %esp, %ecx` = 0f b9 cc): `static_call_update()` on the module's key rewrites them to
    /// `jmp func` or the RET form at any time, so both are legal; the state must agree with the
    /// key's inline sites (`__SCK__<name>`).
    func addModuleTrampolines() {
        var seen = Set(variable.map { $0.offset })
        for k in trampolineSymbols {
            let sym = symbols[k]
            let si = Int(sym.sectionIndex)
            guard si < elf.sections.count, let a = addr[si].map({ $0 &+ sym.value }), let off = execOffset(a, 8),
                  image[off + 5] == 0x0f, image[off + 6] == 0xb9, image[off + 7] == 0xcc, !seen.contains(off) else { continue }
            seen.insert(off)
            addTrampolineSite(a, off)
        }
    }

    /// The module's own key (`__SCK__<name>`) of the trampoline at `a`.
    func trampolineKey(_ a: UInt64) -> UInt64? {
        for k in trampolineSymbols {
            let sym = symbols[k]
            let si = Int(sym.sectionIndex)
            guard si < elf.sections.count, let sa = addr[si], sa &+ sym.value == a else { continue }
            let keyName = "__SCK__" + sym.name.dropFirst(7)
            if let k = keySymbols[keyName], let v = try? symbolValue(k) { return v }
            return nil
        }
        return nil
    }

    func addTrampolineSite(_ a: UInt64, _ off: Int) {
        let funcs = isFunctionEntry
        let r0 = facts.staticCallReturn0
        let ret = retForm(at: a, length: 5) ?? []
        variable.append(VariableSite(offset: off, length: 5, cls: .staticCall, group: trampolineKey(a), what: "static-call trampoline",
            check: { b in
                if b == ret { return 0 }
                if b[0] == 0xe9 {
                    let t = a &+ 5 &+ UInt64(bitPattern: Int64(Int32(bitPattern: UInt32(b[1]) | UInt32(b[2]) << 8 | UInt32(b[3]) << 16 | UInt32(b[4]) << 24)))
                    if funcs(t) || t == r0 { return t }
                }
                return nil
            },
            encode: { st in (st == nil || st == 0) ? ret : (genInsn(0xe9, at: a, to: st!) ?? ret) }))
    }

    // MARK: Alternatives

    /// `optimize_nops()` on `buf[start..<start+len]`: runs of single-byte NOPs (0x90) at
    /// instruction boundaries become `add_nops()`; stops at the first undecodable instruction.
    func optimizeNops(_ buf: inout [UInt8], _ start: Int, _ len: Int) {
        var i = 0
        while true {
            let insn = buf.withUnsafeBufferPointer { InstructionDecoder.decode($0, at: start + i) }
            guard let ins = insn else { return }
            if ins.length == 1 && ins.opcode0 == 0x90 {
                var j = i
                while j < len && buf[start + j] == 0x90 { j += 1 }
                let n = j - i
                if n > 1 { addNops(&buf, at: start + i, count: n) }
                i += n
            } else {
                i += ins.length
            }
            if i >= len { return }
        }
    }

    /// `apply_alternatives()`:
    /// ```c
    /// struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen; } __packed;
    /// ```
    /// Bit 15 of `cpuid` (ALTINSTR_FLAG_INV) inverts the test. Every site then gets `optimize_nops()`.
    func applyAlternatives() throws {
        guard let t = table(".altinstructions") else { return }
        let maxFeature = facts.featureBits.capabilityWords * 32
        var o = 0
        while o + 12 <= t.bytes.count {
            let ea = t.addr &+ UInt64(o)
            let instr = ea &+ UInt64(bitPattern: s32(t.bytes, o))
            let repl = ea &+ 4 &+ UInt64(bitPattern: s32(t.bytes, o + 4))
            let cpuid = UInt16(t.bytes[o + 8]) | UInt16(t.bytes[o + 9]) << 8
            let instrlen = Int(t.bytes[o + 10]), repllen = Int(t.bytes[o + 11])
            o += 12
            let feature = Int(cpuid & 0x7fff)
            guard feature < maxFeature else {
                throw deny("alternative", "feature bit \(feature) beyond x86_capability (the kernel BUGs)", address: instr)
            }
            let size = max(instrlen, repllen)
            guard let off = execOffset(instr, max(size, 1)) else { continue }  // init text: freed
            let inv = cpuid & 0x8000 != 0
            altSites.append((off, instrlen, feature, inv, hasFeature(feature) != inv))
            if hasFeature(feature) != inv {
                guard var buf = read(repl, repllen) else {
                    throw deny("alternative", "replacement at 0x\(String(repl, radix: 16)) is outside the module", address: instr)
                }
                if repllen == 5 && buf[0] == 0xe8 {
                    let v = Int32(bitPattern: UInt32(buf[1]) | UInt32(buf[2]) << 8 | UInt32(buf[3]) << 16 | UInt32(buf[4]) << 24)
                    let nv = UInt32(bitPattern: v &+ Int32(truncatingIfNeeded: Int64(bitPattern: repl &- instr)))
                    for k in 0..<4 { buf[1 + k] = UInt8(truncatingIfNeeded: nv >> (8 * UInt32(k))) }
                }
                if repllen > 0 && (buf[0] == 0xeb || buf[0] == 0xe9) && repllen == 5 {
                    // recompute_jump()
                    let odspl = Int64(Int32(bitPattern: UInt32(buf[1]) | UInt32(buf[2]) << 8 | UInt32(buf[3]) << 16 | UInt32(buf[4]) << 24))
                    let tgt = repl &+ 5 &+ UInt64(bitPattern: odspl)
                    let ndspl = Int32(truncatingIfNeeded: Int64(bitPattern: tgt &- instr))
                    let twoByte = Int64(bitPattern: tgt &- instr) >= 0 ? (Int64(ndspl) - 2 <= 127) : ((ndspl &- 2) & 0xff) == (ndspl &- 2)
                    if twoByte {
                        buf[0] = 0xeb
                        buf[1] = UInt8(truncatingIfNeeded: ndspl &- 2)
                        addNops(&buf, at: 2, count: 3)
                    } else {
                        let n = UInt32(bitPattern: ndspl &- 5)
                        buf[0] = 0xe9
                        for k in 0..<4 { buf[1 + k] = UInt8(truncatingIfNeeded: n >> (8 * UInt32(k))) }
                    }
                }
                while buf.count < instrlen { buf.append(0x90) }
                write(off, buf, .alternative)
                siteCounts[.alternative, default: 0] += 1
            }
            // optimize_nops(instr, instrlen) on every site; the decoder may look up to 15 bytes on.
            if instrlen > 0 {
                var local = Array(image[off..<min(image.count, off + instrlen + InstructionDecoder.maxLength)])
                optimizeNops(&local, 0, instrlen)
                for k in 0..<instrlen where local[k] != image[off + k] {
                    image[off + k] = local[k]
                    cls[off + k] = UInt8(ExplanationClass.alternative.rawValue)
                }
            }
        }
    }

    // MARK: ENDBR seal

    /// `apply_ibt_endbr()` (CONFIG_X86_KERNEL_IBT only): `endbr64` (f3 0f 1e fa) → `66 0f 1f 00`.
    func applyEndbrSeal() throws {
        guard facts.ibtSeal else { return }
        for a in relativeSites(".ibt_endbr_seal") {
            guard let off = execOffset(a, 4), image[off..<off + 4].elementsEqual([0xf3, 0x0f, 0x1e, 0xfa]) else { continue }
            write(off, [0x66, 0x0f, 0x1f, 0x00], .endbrSeal)
            siteCounts[.endbrSeal, default: 0] += 1
        }
    }

    // MARK: SMP locks

    /// `alternatives_smp_unlock()`: on a uniprocessor-patched boot every `.smp_locks` site inside
    /// the module's `.text` (only that section's bounds are passed) holding `f0` becomes `3e`.
    func applySMPLocks() throws {
        guard facts.uniprocessorPatched, let text = elf.section(named: ".text"), let toff = layout.coreOffset[text.index],
              layout.flags[text.index].contains(.alloc) else { return }
        guard let t = table(".smp_locks") else { return }
        var o = 0
        while o + 4 <= t.bytes.count {
            let v = s32(t.bytes, o)
            let a = t.addr &+ UInt64(o) &+ UInt64(bitPattern: v)
            o += 4
            guard v != 0, a >= base else { continue }
            let d = a - base
            guard d >= UInt64(toff), d < UInt64(toff + text.size) else { continue }
            let off = Int(d)
            if image[off] == 0xf0 {
                write(off, [0x3e], .smpLock)
                siteCounts[.smpLock, default: 0] += 1
                if facts.possibleCPUs > 1 {
                    // The module is on smp_alt_modules: bringing a second CPU online runs
                    // alternatives_smp_lock() on every tracked module (3e → f0), all sites at once.
                    variable.append(VariableSite(offset: off, length: 1, cls: .smpLock, group: Session.smpLockGroup, what: "smp lock prefix",
                        check: { b in b == [0x3e] ? 0 : (b == [0xf0] ? 1 : nil) },
                        encode: { st in st == 1 ? [0xf0] : [0x3e] }))
                }
            }
        }
    }

    /// Consistency group of all `.smp_locks` sites (never a kernel address: key addresses are
    /// aligned and in the kernel half, this value is odd).
    /// Where init sections are assumed to be (user-space range: never module text).
    static let initPlaceholderBase: UInt64 = 0x10_0000

    static let smpLockGroup: UInt64 = 0x5350_4c4f_434b_0001

    // MARK: ftrace

    /// `ftrace_module_init()` → `ftrace_init_nop()` → `ftrace_make_nop()`: each `__mcount_loc` site
    /// that holds `call __fentry__` becomes NOP5. At run time tracing may turn it into a call to a
    /// trusted ftrace entry (facts.ftraceCallTargets), nothing else.
    func applyFtrace() throws {
        guard let t = table("__mcount_loc") else { return }
        let fentry = resolver.lookup("__fentry__")
        var o = 0
        while o + 8 <= t.bytes.count {
            let a = u64(t.bytes, o)
            o += 8
            guard let off = execOffset(a, 5) else { continue }
            guard let fe = fentry, let call = genInsn(0xe8, at: a, to: fe), image[off..<off + 5].elementsEqual(call) else {
                continue  // ftrace_bug(): the kernel leaves the site alone and disables ftrace.
            }
            write(off, x86Nops[5], .ftrace)
            siteCounts[.ftrace, default: 0] += 1
            let targets = facts.ftraceCallTargets
            if !targets.isEmpty {
                variable.append(VariableSite(offset: off, length: 5, cls: .ftrace, group: nil, what: "ftrace site",
                    check: { b in
                        if b == x86Nops[5] { return 0 }
                        for tg in targets where genInsn(0xe8, at: a, to: tg) == b { return tg }
                        return nil
                    }, encode: { _ in x86Nops[5] }))
            }
        }
    }

    // MARK: Jump labels

    /// `__jump_table`: `struct jump_entry { s32 code; s32 target; long key; }` (16 bytes, relative;
    /// key bit 0 = branch default, bit 1 = init). `__jump_label_patch()`: the site (2 or 5 bytes,
    /// `arch_jump_entry_size()` decodes it) is exactly `x86_nops[size]` or `jmp target`.
    /// Either state is legal (key state is run-time data), but all sites of one key must agree.
    func addJumpLabels() throws {
        guard let t = table("__jump_table") else { return }
        var o = 0
        while o + 16 <= t.bytes.count {
            let ea = t.addr &+ UInt64(o)
            let code = ea &+ UInt64(bitPattern: s32(t.bytes, o))
            let target = ea &+ 4 &+ UInt64(bitPattern: s32(t.bytes, o + 4))
            let keyRaw = ea &+ 8 &+ u64(t.bytes, o + 8)
            o += 16
            let key = keyRaw & ~3, branch = keyRaw & 1
            guard let off = execOffset(code, 2) else { continue }
            guard let insn = decode(at: off), insn.length == 2 || insn.length == 5, execOffset(code, insn.length) != nil else {
                throw deny("jump-label", "site is neither 2 nor 5 bytes (the kernel BUGs)", section: sectionOf(regionOffset: off).0,
                           offset: sectionOf(regionOffset: off).1, address: code)
            }
            let size = insn.length
            let nop = x86Nops[size]
            let jmp = genInsn(size == 2 ? 0xeb : 0xe9, at: code, to: target)
            siteCounts[.jumpLabel, default: 0] += 1
            jumpSites.append((off, size, code, target))
            // State = key enabled (1) or not (0): JMP when enabled != branch default... the encoded
            // jump is taken iff (enabled XOR branch) — jump_label_type().
            variable.append(VariableSite(offset: off, length: size, cls: .jumpLabel, group: key, what: "jump label", whatKey: key,
                check: { b in
                    if b == nop { return branch ^ 0 == 0 ? 0 : 1 }   // NOP: enabled == branch
                    if let j = jmp, b == j { return branch == 0 ? 1 : 0 }
                    return nil
                },
                encode: { st in
                    let enabled = st ?? branch
                    let isJmp = (enabled ^ branch) == 1
                    return isJmp ? (jmp ?? nop) : nop
                }))
        }
    }

    // MARK: Static calls

    /// `.static_call_sites`: `struct static_call_site { s32 addr; s32 key; }` (key bit 0 = tail,
    /// bit 1 = init). `static_call_add_module()` rewrites every site via `__static_call_transform()`:
    /// CALL func | `2e 2e 2e 31 c0` (func == __static_call_return0) | NOP5 (NULL) for calls;
    /// JMP func | RET form for tail calls; `0f 8x` Jcc func for conditional tail calls.
    func addStaticCalls() throws {
        guard let t = table(".static_call_sites") else { return }
        let funcs = isFunctionEntry
        let ret0 = facts.staticCallReturn0
        var o = 0
        while o + 8 <= t.bytes.count {
            let ea = t.addr &+ UInt64(o)
            let site = ea &+ UInt64(bitPattern: s32(t.bytes, o))
            let keyRaw = ea &+ 4 &+ UInt64(bitPattern: s32(t.bytes, o + 4))
            o += 8
            let key = keyRaw & ~3, tail = keyRaw & 1 != 0
            guard let off = execOffset(site, 5) else { continue }
            let first = image[off]
            let isJcc = first == 0x0f && image[off + 1] & 0xf0 == 0x80
            guard first == 0xe8 || first == 0xe9 || isJcc || image[off..<off + 5].elementsEqual(x86Nops[5]) || first == 0xc3 else {
                throw deny("static-call", "site is not a call/jmp/nop/ret (__static_call_validate BUGs)", section: sectionOf(regionOffset: off).0,
                           offset: sectionOf(regionOffset: off).1, address: site, found: Array(image[off..<off + 5]))
            }
            siteCounts[.staticCall, default: 0] += 1
            staticSites.append((off, site, tail))
            // A trusted current target for this key narrows the legal set to exactly it.
            let pinned = facts.staticCallTargets[key]
            func pin(_ st: UInt64?) -> UInt64? {
                guard let v = st else { return nil }
                if let p = pinned, p != v { return nil }
                return v
            }
            func rel32(_ b: [UInt8], _ at: Int) -> Int64 {
                Int64(Int32(bitPattern: UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24))
            }
            if isJcc && tail {
                guard execOffset(site, 6) != nil else { continue }
                let op = image[off + 1]
                let nullTarget: UInt64? = hasFeature(facts.featureBits.rethunk) ? returnThunkExport : facts.staticCallReturn
                let orig = Array(image[off..<off + 6])
                variable.append(VariableSite(offset: off, length: 6, cls: .staticCall, group: key, what: "static call (Jcc tail)",
                    check: { b in
                        guard b[0] == 0x0f, b[1] == op else { return nil }
                        let tg = site &+ 6 &+ UInt64(bitPattern: rel32(b, 2))
                        if let n = nullTarget, tg == n { return pin(0) }
                        return pin(funcs(tg) ? tg : nil)
                    },
                    encode: { st in
                        guard let s = st, s != 0, let j = genInsn(op, at: site &+ 1, to: s) else { return orig }
                        return [0x0f] + j
                    }))
                continue
            }
            let retF = retForm(at: site, length: 5) ?? [0xc3, 0xcc, 0xcc, 0xcc, 0xcc]
            variable.append(VariableSite(offset: off, length: 5, cls: .staticCall, group: key, what: tail ? "static call (tail)" : "static call",
                check: { b in pin({ () -> UInt64? in
                    if tail {
                        if b == retF { return 0 }
                        if b[0] == 0xe9 { let tg = site &+ 5 &+ UInt64(bitPattern: rel32(b, 1)); return funcs(tg) ? tg : nil }
                        return nil
                    }
                    if b == x86Nops[5] { return 0 }
                    if let r0 = ret0, b == [0x2e, 0x2e, 0x2e, 0x31, 0xc0] { return r0 }
                    if b[0] == 0xe8 {
                        let tg = site &+ 5 &+ UInt64(bitPattern: rel32(b, 1))
                        if tg == ret0 { return nil }  // the kernel writes xor5rax instead
                        return funcs(tg) ? tg : nil
                    }
                    return nil
                }()) },
                encode: { st in
                    guard let s = st, s != 0 else { return tail ? retF : x86Nops[5] }
                    if !tail, s == ret0 { return [0x2e, 0x2e, 0x2e, 0x31, 0xc0] }
                    return genInsn(tail ? 0xe9 : 0xe8, at: site, to: s) ?? x86Nops[5]
                }))
        }
    }

    // MARK: Compare

    func compare() throws {
        let claimed = claim.text
        // Variable sites, in address order: legal member and consistent per group.
        variable.sort { $0.offset < $1.offset }
        var groupState: [UInt64: UInt64] = [:]
        for v in variable {
            let found = Array(claimed[v.offset..<v.offset + v.length])
            if let st = v.check(found) {
                if let g = v.group, let prev = groupState[g], prev != st {
                    let exp = v.encode(prev)
                    write(v.offset, exp, v.cls)
                    notes.append((v.offset..<v.offset + v.length, "\(v.what): state disagrees with other sites of the same key"))
                    continue
                }
                if let g = v.group { groupState[g] = st }
                write(v.offset, found, v.cls)
            } else {
                var exp = v.encode(v.group.flatMap { groupState[$0] })
                if exp == found { exp = v.encode(nil) }
                write(v.offset, exp, v.cls)
                notes.append((v.offset..<v.offset + v.length, "\(v.what): not a legal encoding (allowed: NOP or branch to the site's own legitimate target)"))
            }
        }
        // claimed.count == image.count (checked in setUp). Equal regions are the common case:
        // one vectorisable counting pass over borrowed buffers; the slow path only on a difference.
        let img = image
        precondition(claimed.count == img.count)
        let equal = img.withUnsafeBytes { a in
            claimed.withUnsafeBytes { b in
                var acc: UInt64 = 0
                var i = 0
                while i + 32 <= a.count {
                    acc |= (a.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                        | (a.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))
                        | (a.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self))
                        | (a.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self))
                    i += 32
                }
                while i < a.count { acc |= UInt64(a[i] ^ b[i]); i += 1 }
                return acc == 0
            }
        }
        if equal { return }
        var differing = 0
        for i in 0..<img.count where img[i] != claimed[i] { differing += 1 }
        for i in 0..<img.count where img[i] != claimed[i] {
            let (sec, so) = sectionOf(regionOffset: i)
            let n = min(8, image.count - i)
            var reason = "byte differs from the \(ExplanationClass(rawValue: Int(cls[i]))!) value"  // rawValue set only from ExplanationClass
            var rule = ExplanationClass(rawValue: Int(cls[i]))!.description
            if let note = notes.first(where: { $0.range.contains(i) }) { reason = note.text }
            else if let r = relocationCovering(i) { reason = r; rule = "relocation" }
            else if sec == "(padding)" { reason = "alignment padding must be zero" }
            var d = deny(rule, reason, section: sec, offset: so, address: base &+ UInt64(i),
                         expected: Array(image[i..<i + n]), found: Array(claimed[i..<i + n]))
            d.denial.unexplainedBytes = differing
            throw d
        }
    }

    func relocationCovering(_ i: Int) -> String? {
        for rs in rela {
            let t = rs.targetSectionIndex
            guard layout.flags[t].contains(.execInstr), let toff = layout.coreOffset[t] else { continue }
            for r in rs.relocations {
                let lo = toff + Int(r.offset)
                if i >= lo && i < lo + (r.type.fieldSize ?? 0) {
                    return "\(r.type) field for symbol \(symbols[r.symbolIndex].name)\(r.addend >= 0 ? "+" : "")\(r.addend) has a different value"
                }
            }
        }
        return nil
    }

    // MARK: Results

    func statistics() -> ExplainStats {
        var st = ExplainStats()
        st.executableBytes = image.count
        var counts = [Int](repeating: 0, count: 256)
        counts.withUnsafeMutableBufferPointer { cnt in
            cls.withUnsafeBytes { c in
                // Runs of one class (ELF bytes, padding) eight at a time; mixed words byte by byte.
                let n = c.count
                var i = 0
                while i + 8 <= n {
                    let w = c.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    let b0 = UInt64(truncatingIfNeeded: w & 0xff)
                    if w == b0 &* 0x0101_0101_0101_0101 { cnt[Int(b0)] += 8 } else {
                        for k in 0..<8 { cnt[Int(c[i + k])] += 1 }  // UInt8 index < 256: in bounds
                    }
                    i += 8
                }
                while i < n { cnt[Int(c[i])] += 1; i += 1 }
            }
        }
        // only ExplanationClass raw values are stored in cls
        precondition(counts[ExplanationClass.allCases.count...].allSatisfy { $0 == 0 })
        counts.removeLast(256 - ExplanationClass.allCases.count)
        for (i, n) in counts.enumerated() where n > 0 { st.bytesByClass[ExplanationClass(rawValue: i)!] = n }
        st.relocationsApplied = relocCount
        st.sites = siteCounts
        return st
    }

    /// `__ksymtab_<name>` marks an export of `<name>` (EXPORT_SYMBOL / _GPL).
    func moduleExports() -> ModuleExports {
        var names: Set<String> = []
        for s in symbols where hasASCIIPrefix(s.name, "__ksymtab_") { names.insert(String(s.name.dropFirst(10))) }
        var out: [String: UInt64] = [:]
        // Cheap integer tests first: the name hash is only computed for defined non-local symbols.
        for (i, s) in symbols.enumerated() where !s.isUndefined && s.binding != 0 && names.contains(s.name) {
            if let v = try? symbolValue(i) { out[s.name] = v }
        }
        return ModuleExports(module: claim.name, symbols: out, functionEntries: functionEntries)
    }
}

/// `s.hasPrefix(p)` for an ASCII `p`, on the UTF-8 bytes (no Unicode normalisation needed: an
/// ASCII prefix matches byte for byte or not at all).
@inline(__always) func hasASCIIPrefix(_ s: String, _ p: StaticString) -> Bool {
    let pb = UnsafeBufferPointer(start: p.utf8Start, count: p.utf8CodeUnitCount)
    if let r = s.utf8.withContiguousStorageIfAvailable({ b in b.count >= pb.count && b.prefix(pb.count).elementsEqual(pb) }) { return r }
    return s.hasPrefix(String(decoding: pb, as: UTF8.self))
}
