// SPDX-License-Identifier: Apache-2.0
//
// Stage 2: boot-time patching. What `module_finalize()` (arch/x86/kernel/module.c, 6.1) does to the
// relocated text, in its order, then `ftrace_module_init()`:
//   apply_paravirt ─► apply_retpolines ─► apply_returns ─► apply_alternatives (+optimize_nops on
//   every site) ─► apply_ibt_endbr ─► alternatives_smp_module_add (lock → ds on UP) ─► ftrace NOPs.
// Each step is deterministic given the trusted facts (CPU capabilities, pv_ops, thunks, the
// uniprocessor decision); the results are exact bytes. The only variable sites added here are the
// smp-lock prefixes of a multi-CPU guest and ftrace sites (RuntimeSites.swift holds the rest).

import ExecGateELF
import _ExecGateInternals

extension Session {
    /// `module_finalize()` in the loader's order: paravirt (6.1 only), retpolines, returns,
    /// alternatives (applyStagesThroughAlternatives, Loader612Patching.swift), then the ENDBR seal,
    /// SMP lock prefixes and ftrace; 6.12 first refuses what the replay does not model.
    func applyBootTimePatching() throws {
        try refuseAmbiguousFinalizeTables()
        if loader == .linux6_12 { try refuseUnmodelled612() }
        reserveVariableSites()  // (after the refusals: a module denied there reserves nothing)
        try applyStagesThroughAlternatives()
        if loader == .linux6_12 {
            try applySealEndbr612()
            try applySMPLocks612()
        } else {
            try applyEndbrSeal()
            try applySMPLocks()
        }
        try applyFtrace()
    }

    /// Room in `variable` for every run-time site the module's tables can list (`.smp_locks`,
    /// `__mcount_loc`, `__jump_table`, `.static_call_sites` entries and the trampolines), taken
    /// once before the stages append them: grown by appends, `variable` ended with up to twice
    /// the capacity it needed, and ``SiteMap`` (which outlives the explanation as the guest's
    /// live sites) then copied every site, each copy a retain of its rule's tables. At most
    /// 65,536 sites are reserved ahead (a hostile table's size reserves nothing beyond that; the
    /// appends grow the array as before).
    /// A table whose entries make no run-time site for this guest counts nothing: `.smp_locks`
    /// makes sites only in a core session of a guest patched for one CPU that can bring up
    /// another (`applySMPLocks`), `__mcount_loc` only when the guest's ftrace has call targets
    /// (`applyFtrace`). (Counted anyway, they made the reservation three times the sites on the
    /// shared corpus, and 94 of its 103 modules' tables then took the capacity-trimming copy.)
    func reserveVariableSites() {
        variable.reserveCapacity(min(variableSiteBound(), 1 << 16))
    }

    /// The sites the module's tables can list for this guest (see `reserveVariableSites`): an
    /// upper bound of what the stages append (entries they skip, e.g. in init text, count too).
    func variableSiteBound() -> Int {
        var bound = trampolineSymbols.count
        let smpLockSites = region == .core && facts.uniprocessorPatched && facts.possibleCPUs > 1
        let ftraceSites = !facts.ftraceCallTargets.isEmpty
        for s in elf.sections where s.isAlloc && !s.isNoBits {
            // By length first, then the names of that length compared as bytes (a String
            // `switch` compared every case in turn, four a section).
            switch s.name.utf8.count {
            case 10: if smpLockSites && isASCIIName(s.name, ".smp_locks") { bound += s.size / 4 }
            case 12:
                if ftraceSites && isASCIIName(s.name, "__mcount_loc") { bound += s.size / 8 }
                if isASCIIName(s.name, "__jump_table") { bound += s.size / 16 }
            case 18: if isASCIIName(s.name, ".static_call_sites") { bound += s.size / 8 }
            default: continue
            }
        }
        return bound
    }

    /// The section names `module_finalize()` looks up (arch/x86/kernel/module.c: 6.1.192 and 6.12.117).
    static let finalizeTables61 = [".text", ".altinstructions", ".smp_locks", ".parainstructions", ".retpoline_sites", ".return_sites", ".ibt_endbr_seal"]
    static let finalizeTables612 = [".altinstructions", ".smp_locks", ".retpoline_sites", ".return_sites", ".call_sites", ".cfi_sites", ".ibt_endbr_seal"]

    /// `module_finalize()` finds its tables by a scan of every section header that keeps the
    /// *last* section of each name, whatever its flags (no SHF_ALLOC test, unlike `find_sec()`,
    /// which takes the first allocated one and which `table()` follows). Two sections of one of
    /// these names, or one that is not allocated (the kernel reads it at its `sh_addr`: for a
    /// section the loader does not copy, the temporary copy of the file, unrelocated), never come
    /// from a build: denied by name, not replayed from another table than the kernel's.
    func refuseAmbiguousFinalizeTables() throws {
        for name in loader == .linux6_12 ? Session.finalizeTables612 : Session.finalizeTables61 {
            guard let (sec, count) = elf.lastSection(named: name) else { continue }
            if count > 1 {
                throw deny(.loader, "\(count) sections named \(name): module_finalize() takes the last, the replay's tables the first (not modelled)", section: name)
            }
            if !sec.flags.contains(.alloc) {
                throw deny(.loader, "\(name) is not allocated: module_finalize() would read it from the temporary copy, unrelocated (not modelled)", section: name)
            }
            // Each pass walks its table as `for (p = start; p < end; p++)` with `end = sh_addr +
            // sh_size` (apply_alternatives(), apply_paravirt(), apply_retpolines(),
            // apply_returns(), apply_seal_endbr()/apply_ibt_endbr(), alternatives_smp_unlock()):
            // a trailing partial entry is read too, its missing bytes from whatever follows the
            // table in memory. Never built: denied. (`.call_sites` is read only by
            // callthunks_patch_module_calls(), a no-op without X86_FEATURE_CALL_DEPTH, which is
            // denied by name; `.text` is 6.1's range, no table; 6.1's `.ibt_endbr_seal` is read only
            // with CONFIG_X86_KERNEL_IBT.)
            let entry: Int
            switch name {
            case ".altinstructions": entry = loader == .linux6_12 ? 14 : 12
            case ".parainstructions": entry = 16
            case ".smp_locks", ".retpoline_sites", ".return_sites": entry = 4
            case ".ibt_endbr_seal": entry = loader == .linux6_12 || facts.ibtSeal ? 4 : 1
            default: entry = 1
            }
            if sec.size % entry != 0 {
                throw deny(.loader, "\(name) is \(sec.size) bytes, not a whole number of \(entry)-byte entries: module_finalize() would read a last entry past its end (not modelled)",
                           section: name)
            }
        }
    }

    /// A `module_finalize()` site that is not in this session's executable region is skipped only
    /// when all its `n` bytes lie in one executable section of the module (the other region's:
    /// init text seen from the core session, core text seen from the init session, which that
    /// region's session replays or the kernel frees), or when the kernel provably leaves it
    /// alone. Anywhere else (the module's own `__jump_table`, `.static_call_sites`,
    /// `__mcount_loc`, `__ksymtab`, `struct module`, or outside the module) the kernel writes it
    /// all the same: `apply_alternatives()`, `apply_paravirt()`, `apply_retpolines()`,
    /// `apply_returns()` and `apply_ibt_endbr()` take no text range, and `text_poke_early()` is a
    /// `memcpy()` on the module, still writable before `module_enable_ro()` (6.1.192 and 6.12.117
    /// arch/x86/kernel/alternative.c, module.c), so the tables the later stages read would not be
    /// the signed ones. Never built (none of the 4023 Debian 6.1.0-56 modules has one): denied.
    ///
    /// `kernelWrites` (retpolines, returns, ENDBR seal: the kernel decodes the bytes first and
    /// WARNs and skips a site that is not its form) is asked about the first `probe` bytes of a
    /// site in the module's own data (a superset of the kernel's test: never fewer denials); a
    /// site it rejects is skipped as the kernel skips it. Outside the module the bytes are
    /// unknown: denied. (`.smp_locks` needs no check: `alternatives_smp_unlock()` skips every
    /// site outside the text range it is given.)
    func requireExecutableSite(_ a: UInt64, _ n: Int, _ rule: DenialRule, _ table: String,
                               probe: Int = 0, kernelWrites: (([UInt8]) -> Bool)? = nil, writer: String = "module_finalize()") throws {
        if n <= 0 || execOffset(a, n) != nil { return }
        // Inside any allocated exec section (the other region's too): one binary search.
        if execSectionSpans.find(a, UInt64(n)) != nil { return }
        if let writes = kernelWrites, let b = try read(a, probe), !writes(b) { return }
        throw deny(rule, "\(table) entry patches \(n) bytes at 0x\(String(a, radix: 16)), outside the module's executable sections (\(writer) would write them; not modelled)",
                   section: table, address: a)
    }

    /// A legacy prefix or REX byte: the kernel's decoder would look past it for the opcode.
    static func isPrefixOrREX(_ b: UInt8) -> Bool {
        b & 0xf0 == 0x40 || [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65].contains(b)
    }

    /// `patch_retpoline()`'s `BUG_ON(reg == 4)` (6.1 and 6.12) holds for every site, init text
    /// included, before any CPU feature is asked: an init-text site seen from the core session
    /// (the claim may hold no init region) is decoded in the init section as
    /// `apply_relocate_add()` leaves it (the placeholder address: the rel32 target, S + A + 4
    /// for a call, does not depend on where init text is). Other init-text verdicts are the
    /// init session's.
    func refuseRspRetpolineInInitText(_ a: UInt64, thunks: UInt64?) throws {
        // The init text section holding the site, and the first relocation section applying to
        // it (by index: a scan of every relocation section per site was sites × sections, both
        // the file's).
        guard let thunks, let span = initTextSpans.find(a, 1) else { return }
        let t = span.value
        var chain = relaByTarget[t]
        guard let ri = chain.next() else { return }
        // One copy of the section for all its sites (a copy per site was sites × section bytes),
        // or none when a record's symbol value is unknown (the core session checked these records
        // in place; the site is then the init session's), both decided once a section.
        let copy: [UInt8]
        switch initTextCopies[t] {
        case .some(.some(let c)): copy = c
        case .some(.none): return
        case .none:
            let rels = rela[ri].relocations
            guard rels.indices.allSatisfy({ rels.isValid($0) && rels[$0].symbolIndex < symValue.count && symValue[rels[$0].symbolIndex] != nil }) else {
                initTextCopies.updateValue(nil, forKey: t)
                return
            }
            copy = try pristineCopy(t, rela: ri, upTo: rels.count, values: symValue)
            initTextCopies[t] = copy
        }
        let off = Int(a - span.lo)
        guard let insn = copy.withUnsafeBufferPointer({ InstructionDecoder.decode($0, at: off) }),
              insn.opcode0 == 0xe8 || insn.opcode0 == 0xe9 || (insn.opcode0 == 0x0f && insn.opcode1 & 0xf0 == 0x80) else { return }
        let target = a &+ UInt64(insn.length) &+ UInt64(bitPattern: insn.immediate)
        if Session.retpolineRegister(Int64(bitPattern: target &- thunks)) == 4 {
            throw deny(.retpoline, "CALL/JMP *%rsp in init text (the kernel BUGs)", section: ".retpoline_sites", address: a)
        }
    }

    /// `reg = target - __x86_indirect_thunk_array` of `patch_retpoline()` (6.1.192 and 6.12.117
    /// arch/x86/kernel/alternative.c): a pointer difference over 32-byte `retpoline_thunk_t`,
    /// which gcc emits as an arithmetic shift (`sar $5`: rounds toward minus infinity), then
    /// stored in an `int` (the rel32 reach keeps it far inside one).
    static func retpolineRegister(_ diff: Int64) -> Int64 { diff >> 5 }

    /// `apply_retpolines()` patches only a CALL, JMP or Jcc (`patch_retpoline()`).
    static func retpolineMayWrite(_ b: [UInt8]) -> Bool {
        isPrefixOrREX(b[0]) || b[0] == 0xe8 || b[0] == 0xe9 || (b[0] == 0x0f && b[1] & 0xf0 == 0x80)
    }

    /// `apply_returns()` patches only `jmp __x86_return_thunk` or, by `__static_call_fixup()`,
    /// a RET / that JMP followed by the trampoline signature.
    static func returnMayWrite(_ b: [UInt8]) -> Bool { isPrefixOrREX(b[0]) || b[0] == 0xe9 || b[0] == 0xc3 }

    /// `apply_ibt_endbr()` / `poison_endbr()` patch only `is_endbr()` bytes (6.12: or the poison).
    static func endbrMayWrite(_ b: [UInt8]) -> Bool {
        b == [0xf3, 0x0f, 0x1e, 0xfa] || b == [0xf3, 0x0f, 0x1e, 0xfb] || b == [0x66, 0x0f, 0x1f, 0x00]
    }

    // MARK: Paravirt

    /// `apply_paravirt()`: `struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }` (16 bytes,
    /// `instr` relocated by R_X86_64_64). Each site becomes `call pv_ops[type]` (or nothing for
    /// `_paravirt_nop`, or `call paravirt_BUG` for NULL) padded with `add_nops()`.
    func applyParavirt() throws {
        guard let t = try table(".parainstructions") else { return }
        var o = 0
        while o + 16 <= t.bytes.count, let instr = t.bytes.getInteger(at: o, as: UInt64.self),
              let type = t.bytes.getInteger(at: o + 8, as: UInt8.self).map(Int.init), let len = t.bytes.getInteger(at: o + 9, as: UInt8.self).map(Int.init) {
            o += 16
            // apply_paravirt(): BUG_ON(p->len > MAX_PATCH_LEN), MAX_PATCH_LEN = 254, for every site.
            guard len <= Session.maxPatchLen else {
                throw deny(.paravirt, "paravirt site of \(len) bytes is longer than MAX_PATCH_LEN (254): the kernel BUGs", address: instr)
            }
            try requireExecutableSite(instr, len, .paravirt, ".parainstructions")
            // The kernel's BUGs hold for every site, in this region or not (an init-text site
            // seen from the core session): paravirt_patch() reads pv_ops[type], and a call (5
            // bytes) in fewer than 5 trips BUG_ON(used > p->len).
            guard type < facts.pvOps.count else {
                throw deny(.paravirt, "pv_ops[\(type)] is not in the trusted pv_ops table", address: instr)
            }
            let op = facts.pvOps[type]
            var target: UInt64? = op
            if op == 0 {
                target = facts.paravirtBUG
                guard target != nil else { throw deny(.paravirt, "pv_ops[\(type)] is NULL and paravirt_BUG is unknown", address: instr) }
            } else if let nop = facts.paravirtNop, op == nop {
                target = nil
            }
            if target != nil && len < 5 {
                throw deny(.paravirt, "paravirt site of \(len) bytes cannot hold a call (the kernel BUGs)", address: instr)
            }
            guard let off = execOffset(instr, len) else { continue }
            var buf = Array(image[off..<off + len])
            var used = 0
            if let tgt = target {
                guard let call = genInsn(0xe8, at: instr, to: tgt) else {
                    throw deny(.paravirt, "paravirt call at 0x\(String(instr, radix: 16)) cannot reach its target in rel32", address: instr)
                }
                for k in 0..<5 { buf[k] = call[k] }
                used = 5
            }
            addNops(&buf, at: used, count: len - used)
            write(off, buf, .paravirt)
            countSite(.paravirt)
        }
    }

    // MARK: Retpolines

    /// `apply_retpolines()` + `patch_retpoline()` (alternative.c). With RETPOLINE and not
    /// RETPOLINE_LFENCE the site is left as compiled (`return -1`).
    func applyRetpolines() throws {
        let sites = try relativeSites(".retpoline_sites")
        if sites.isEmpty { return }
        let fb = featureBits
        for a in sites {
            guard let off = execOffset(a, 1), let insn = decode(at: off) else {
                try requireExecutableSite(a, 1, .retpoline, ".retpoline_sites", probe: 2, kernelWrites: Session.retpolineMayWrite)
                if region == .core { try refuseRspRetpolineInInitText(a, thunks: indirectThunkExport) }
                continue
            }
            let isJcc = insn.opcode0 == 0x0f && insn.opcode1 & 0xf0 == 0x80
            guard insn.opcode0 == 0xe8 || insn.opcode0 == 0xe9 || isJcc else { continue }  // WARN_ON_ONCE, skipped
            guard let thunks = indirectThunkExport else {
                throw deny(.retpoline, "__x86_indirect_thunk_array base unknown (no __x86_indirect_thunk_rax export)", address: a)
            }
            let target = a &+ UInt64(insn.length) &+ UInt64(bitPattern: insn.immediate)
            let diff = Int64(bitPattern: target &- thunks)
            // C pointer subtraction over retpoline_thunk_t (32 bytes): gcc (12.2, Debian's 6.1
            // and 6.12 builds) compiles `target - __x86_indirect_thunk_array` to `sar $5`, a
            // floor: a target 1..31 bytes before the array is reg -1, not 0 (a truncating `/ 32`
            // made it rax and rewrote a site the kernel leaves alone).
            let reg = Session.retpolineRegister(diff)
            if reg & ~0xf != 0 { continue }  // WARN_ON_ONCE: left alone
            if reg == 4 { throw deny(.retpoline, "CALL/JMP *%rsp (the kernel BUGs)", address: a) }
            if hasFeature(fb.retpoline) && !hasFeature(fb.retpolineLfence) { continue }
            if hasFeature(fb.indirectThunkITS) {
                throw deny(.retpoline, "ITS indirect-thunk pages are not modelled", address: a)
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
            // apply_retpolines() → optimize_nops(addr, bytes, len) of the loader's own version:
            // 6.12 merges a NOP run into one NOP up to 11 bytes or a `jmp` over `int3`
            // (add_nop()), 6.1 into NOPs of at most 8 bytes (add_nops()). The run here ends at the
            // site's end (patch_retpoline() pads to insn->length), so 6.12's never crosses it.
            if loader == .linux6_12 {
                guard optimizeNops612(&bytes, bytes.count) else {
                    throw deny(.retpoline, "NOP run crosses the end of the retpoline site", address: a)
                }
            } else {
                optimizeNops(&bytes, 0, bytes.count)
            }
            write(off, bytes, .retpoline)
            countSite(.retpoline)
        }
    }

    // MARK: Returns

    func wantsRethunk(at a: UInt64) -> Bool {
        guard hasFeature(featureBits.rethunk) else { return false }
        if let its = facts.itsReturnThunk, let rt = returnThunkTarget, rt == its { return a & 0x20 == 0 }
        return true
    }

    /// The `RET` form of `__static_call_transform()` / `patch_return()` at `a` for `length` bytes.
    func retForm(at a: UInt64, length: Int) -> [UInt8]? {
        guard var b = retInstruction(at: a)?.array else { return nil }
        while b.count < length { b.append(0xcc) }
        return b
    }

    /// The instruction of the `RET` form at `a` (before its `int3` padding): `jmp
    /// x86_return_thunk` (5 bytes) or `ret` (1); nil when the jump cannot be encoded.
    @inline(__always) func retInstruction(at a: UInt64) -> SiteBytes? {
        if wantsRethunk(at: a) {
            guard let rt = returnThunkTarget else { return nil }
            return genInsnBytes(0xe9, at: a, to: rt)
        }
        return SiteBytes(raw: 0xc3, count: 1)
    }

    /// `apply_returns()` + `__static_call_fixup()` + `patch_return()` (alternative.c, static_call.c).
    func applyReturns() throws {
        guard let t = try table(".return_sites") else { return }
        // (Sized once from the table: grown by appends, reallocated about log2(sites) times.)
        returnSites.reserveCapacity(returnSites.count + Swift.min(t.bytes.count / 4, 1 << 16))
        try forEachRelativeSite(t) { a in
            guard let off = execOffset(a, 1), let insn = decode(at: off) else {
                return try requireExecutableSite(a, 1, .stage(.returnThunk), ".return_sites", probe: 1, kernelWrites: Session.returnMayWrite)
            }
            var dest: UInt64? = nil
            if insn.opcode0 == 0xe9 { dest = a &+ UInt64(insn.length) &+ UInt64(bitPattern: insn.immediate) }
            // __static_call_fixup(): a trampoline is followed by `ud1 %esp, %ecx` (0f b9 cc).
            if off + 8 <= image.count && image[off + 5] == 0x0f && image[off + 6] == 0xb9 && image[off + 7] == 0xcc {
                let rtx = returnThunkExport
                if insn.opcode0 == 0xc3 || (dest != nil && dest == rtx) {
                    guard let form = retInstruction(at: a)?.padded(to: 5, with: 0xcc), execOffset(a, 5) != nil else { return }
                    write(off, form, .returnThunk)
                    // A module's own static-call trampoline: static_call_update() may later make it
                    // `jmp func` or the RET form again (a run-time site, RuntimeSites.swift).
                    trampolineSites.append((a, off))
                    countSite(.returnThunk)
                }
                return
            }
            guard let d = dest, let rtx = returnThunkExport, d == rtx else { return }  // WARN_ONCE: left alone
            // retForm(at: a, length: insn.length), inline when it fits a word (every real site).
            if insn.length <= 8 {
                guard let ins = retInstruction(at: a), ins.count <= insn.length, execOffset(a, insn.length) != nil else { return }
                write(off, ins.padded(to: insn.length, with: 0xcc), .returnThunk)
            } else {
                guard let bytes = retForm(at: a, length: insn.length), bytes.count == insn.length, execOffset(a, insn.length) != nil else { return }
                write(off, bytes, .returnThunk)
            }
            returnSites.append((off, a, insn.length))
            countSite(.returnThunk)
        }
    }

    // MARK: Alternatives

    /// `apply_alternatives()`:
    /// ```c
    /// struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen; } __packed;
    /// ```
    /// Bit 15 of `cpuid` (ALTINSTR_FLAG_INV) inverts the test. Every site then gets `optimize_nops()`.
    func applyAlternatives() throws {
        guard let t = try table(".altinstructions") else { return }
        let maxFeature = featureBits.capabilityWords * 32
        var o = 0
        while let instrRel = t.bytes.getInteger(at: o, as: Int32.self), let replRel = t.bytes.getInteger(at: o + 4, as: Int32.self),
              let cpuid = t.bytes.getInteger(at: o + 8, as: UInt16.self), let il = t.bytes.getInteger(at: o + 10, as: UInt8.self),
              let rl = t.bytes.getInteger(at: o + 11, as: UInt8.self) {
            let ea = t.addr &+ UInt64(o)
            let instr = ea &+ UInt64(bitPattern: Int64(instrRel))
            let repl = ea &+ 4 &+ UInt64(bitPattern: Int64(replRel))
            let instrlen = Int(il), repllen = Int(rl)
            o += 12
            let feature = Int(cpuid & 0x7fff)
            guard feature < maxFeature else {
                throw deny(.alternative, "feature bit \(feature) beyond x86_capability (the kernel BUGs)", address: instr)
            }
            // apply_alternatives(): BUG_ON(a->instrlen > sizeof(insn_buff)), MAX_PATCH_LEN = 254,
            // for every entry; a taken one memcpy()s replacementlen bytes into that buffer too.
            guard instrlen <= Session.maxPatchLen, repllen <= Session.maxPatchLen else {
                throw deny(.alternative, "alternative of \(instrlen)/\(repllen) bytes is longer than MAX_PATCH_LEN (254): the kernel BUGs", address: instr)
            }
            let size = max(instrlen, repllen)
            try requireExecutableSite(instr, hasFeature(feature) != (cpuid & 0x8000 != 0) ? size : instrlen, .alternative, ".altinstructions")
            guard let off = execOffset(instr, max(size, 1)) else { continue }  // init text: freed
            let inv = cpuid & 0x8000 != 0
            altSites.append((off, instrlen, feature, inv, hasFeature(feature) != inv))
            if hasFeature(feature) != inv {
                guard var buf = try read(repl, repllen) else {
                    throw deny(.alternative, "replacement at 0x\(String(repl, radix: 16)) is outside the module", address: instr)
                }
                if repllen == 5 && buf[0] == 0xe8, let v = buf.getInteger(at: 1, as: Int32.self) {
                    let nv = UInt32(bitPattern: v &+ Int32(truncatingIfNeeded: Int64(bitPattern: repl &- instr)))
                    for k in 0..<4 { buf[1 + k] = UInt8(truncatingIfNeeded: nv >> (8 * UInt32(k))) }
                }
                if repllen == 5 && (buf[0] == 0xeb || buf[0] == 0xe9), let tgt = rel32Destination(buf, operandAt: 1, site: repl, length: 5) {
                    // recompute_jump()
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
                countSite(.alternative)
            }
            // optimize_nops(instr, instrlen) on every site; the decoder may look up to 15 bytes on.
            if instrlen > 0 {
                var local = Array(image[off..<min(image.count, off + instrlen + InstructionDecoder.maxLength)])
                optimizeNops(&local, 0, instrlen)
                for k in 0..<instrlen where local[k] != image[off + k] {
                    image[off + k] = local[k]
                    setClass(off + k, 1, UInt8(ExplanationClass.alternative.rawValue))
                }
            }
        }
    }

    // MARK: ENDBR seal

    /// `apply_ibt_endbr()` (CONFIG_X86_KERNEL_IBT only): `endbr64` (f3 0f 1e fa) → `66 0f 1f 00`.
    func applyEndbrSeal() throws {
        guard facts.ibtSeal else { return }
        for a in try relativeSites(".ibt_endbr_seal") {
            try requireExecutableSite(a, 4, .stage(.endbrSeal), ".ibt_endbr_seal", probe: 4, kernelWrites: Session.endbrMayWrite)
            guard let off = execOffset(a, 4), image[off..<off + 4].elementsEqual([0xf3, 0x0f, 0x1e, 0xfa]) else { continue }
            write(off, SiteBytes(raw: 0x001f_0f66, count: 4), .endbrSeal)
            countSite(.endbrSeal)
        }
    }

    // MARK: SMP locks

    /// `alternatives_smp_unlock()`: on a uniprocessor-patched boot every `.smp_locks` site inside
    /// the module's `.text` (only that section's bounds are passed) holding `f0` becomes `3e`
    /// (never in init text).
    func applySMPLocks() throws {
        guard region == .core, facts.uniprocessorPatched, let text = elf.section(named: ".text"), let toff = layout.coreOffset[text.index],
              layout.flags[text.index].contains(.alloc) else { return }
        guard let t = try table(".smp_locks") else { return }
        var o = 0
        while let v = t.bytes.getInteger(at: o, as: Int32.self) {
            let a = t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64(v))
            o += 4
            guard v != 0, a >= base else { continue }
            let d = a - base
            guard d >= UInt64(toff), d < UInt64(toff + text.size) else { continue }
            // module_finalize() passes the section *named* `.text`, whatever its flags: one
            // without SHF_EXECINSTR lies in the core's data, past the image, and the kernel's
            // 3e write there is a data write nothing models (round 13: `image[off]` trapped,
            // taking `serve` down). `execOffset` holds for an executable `.text` (its core
            // offset is inside the text by the layout); otherwise a lock byte there is denied.
            guard let off = execOffset(a, 1) else {
                try requireExecutableSite(a, 1, .stage(.smpLock), ".smp_locks", probe: 1, kernelWrites: { $0 == [0xf0] },
                                          writer: "alternatives_smp_unlock()")
                continue
            }
            if image[off] == 0xf0 {
                write(off, SiteBytes(raw: 0x3e, count: 1), .smpLock)
                countSite(.smpLock)
                if facts.possibleCPUs > 1 {
                    // The module is on smp_alt_modules: bringing a second CPU online runs
                    // alternatives_smp_lock() on every tracked module (3e → f0), all sites at once.
                    variable.append(VariableSite(offset: off, length: 1, cls: .smpLock, group: Session.smpLockGroup, label: .smpLock, rule: .smpLock))
                }
            }
        }
    }

    /// Consistency group of all `.smp_locks` sites (never a kernel address: key addresses are
    /// aligned and in the kernel half, this value is odd).
    static let smpLockGroup: UInt64 = 0x5350_4c4f_434b_0001

    /// `MAX_PATCH_LEN` (arch/x86/kernel/alternative.c, 6.1.192 and 6.12.117): `255 - 1`, the size
    /// of `insn_buff`.
    static let maxPatchLen = 254

    // MARK: ftrace

    /// The module's executable init sections (laid out in init, SHF_EXECINSTR, not empty) as
    /// spans of their addresses as this session places them (a core session: the placeholder
    /// ones), valued by section index; made on first use. Disjoint (the layout gives each its own
    /// offset), so `find` answers by binary search.
    var initTextSpans: Spans {
        if let c = initTextSpansCache { return c }
        var spans: [(lo: UInt64, hi: UInt64, value: Int)] = []
        for t in elf.sections.indices where t < layout.initOffset.count && layout.initOffset[t] != nil && layout.flags[t].contains(.execInstr) {
            guard let sa = addr[t], let r = Session.span(sa, UInt64(elf.sections[t].size)) else { continue }
            spans.append((r.lowerBound, r.upperBound, t))
        }
        let c = Spans(spans)
        initTextSpansCache = c
        return c
    }

    /// The relocation sections applying to each section (indices in `rela`), made on first use.
    var relaByTarget: RelaByTarget {
        if let c = relaByTargetCache { return c }
        let c = RelaByTarget(rela, sections: elf.sections.count)
        relaByTargetCache = c
        return c
    }

    /// The module's executable init section holding address `a`, as the core session sees it
    /// (init text is no region of its claim): the section's index, `a`'s offset in it and the
    /// section's signed bytes; nil when `a` lies in none. For the loader steps that read a site in
    /// init text at load (`refuseDirectCallBugInInitText`, `refuseInvalidStaticCallInInitText`).
    func signedInitTextSite(_ a: UInt64) -> (section: Int, offset: Int, signed: UnsafeRawBufferPointer)? {
        guard let span = initTextSpans.find(a, 1) else { return nil }
        return (span.value, Int(a - span.lo), elf.contents(of: elf.sections[span.value]))
    }

    /// Whether a relocation record of section `t` writes a byte of `[lo, hi)` (a record the parser
    /// refuses is left to the walk, which refuses it). The bytes each section's records write are
    /// gathered once (`relocationCovers`): a pass over every relocation section per question was
    /// sites × records.
    func relocationWrites(section t: Int, _ lo: Int, _ hi: Int) -> Bool {
        let cover: RangeCover
        if let c = relocationCovers[t] { cover = c } else {
            var written: [Range<UInt64>] = []
            for ri in relaByTarget[t] {
                let rels = rela[ri].relocations
                for i in rels.indices where rels.isValid(i) {
                    guard let size = rels[i].type.fieldSize, size > 0 else { continue }
                    let o = rels[i].offset
                    written.append(o..<o + UInt64(size))  // (a valid record's field lies inside the section)
                }
            }
            cover = RangeCover(written)
            relocationCovers[t] = cover
        }
        guard lo >= 0, hi >= 0 else { return false }
        return cover.overlaps(UInt64(lo), UInt64(hi))
    }

    /// `__mcount_loc` entries in the module's init text seen from the core session (the claim
    /// may hold no init region; the init session, when there is one, checks their bytes as
    /// placed): the kernel processes them all the same (ftrace_process_locs() records every
    /// non-NULL address of the module), so each must be `call __fentry__` too, or ftrace_bug()
    /// stops ftrace (see `applyFtrace`). Their rel32 depends on where init text is, which the core
    /// session does not know (at the placeholder it overflows): the signed bytes say `e8`, and
    /// the one relocation record that writes the site's bytes is R_X86_64_PLT32/PC32 at the
    /// rel32 with addend -4 of a symbol whose value is `__fentry__` — the rel32
    /// `apply_relocate_add()` writes at any placement, which decodes to `call __fentry__`.
    /// Anything else is denied. One pass over each init section's records (sites sorted).
    func requireFentryCallsInInitText(_ sites: [UInt64], fentry: UInt64) throws {
        guard region == .core, !sites.isEmpty else { return }  // an init session's other region is core text: the core session's
        // Each site in its init text section (by index: every site asked of every section was
        // sites × sections), sorted by section then offset, one entry per (section, offset): a
        // repeated entry is the same site (its verdict the same), and a record then overlaps at
        // most a dozen entries, not every repeat.
        let spans = initTextSpans
        var placed: [(t: Int, off: Int, a: UInt64)] = []
        placed.reserveCapacity(sites.count)
        for a in sites { if let sp = spans.find(a, 1) { placed.append((sp.value, Int(a - sp.lo), a)) } }
        placed.sort { ($0.t, $0.off) < ($1.t, $1.off) }
        var g = 0
        while g < placed.count {
            let t = placed[g].t, s = elf.sections[t]
            // (offset in the section, address, records writing the site's bytes, whether one is
            // the rel32 of __fentry__ - 4), sorted by offset, one entry per offset.
            var here: [(off: Int, a: UInt64, writers: Int, good: Bool)] = []
            while g < placed.count && placed[g].t == t {
                if here.last?.off != placed[g].off { here.append((placed[g].off, placed[g].a, 0, false)) }
                g += 1
            }
            func refuse(_ k: Int, _ why: String) -> DenyError {
                deny(.stage(.ftrace), "__mcount_loc entry 0x\(String(here[k].a, radix: 16)) in \(s.name)+0x\(String(here[k].off, radix: 16)) is not `call __fentry__` (\(why)): ftrace_make_nop() fails, ftrace_bug() kills ftrace guest-wide (not modelled)",
                     section: "__mcount_loc", address: here[k].a)
            }
            let signed = elf.contents(of: s)
            for k in here.indices {
                guard here[k].off <= s.size - 5 else { throw refuse(k, "fewer than 5 bytes of the section") }
                guard !signed.isEmpty, signed[here[k].off] == 0xe8 else { throw refuse(k, "no e8 opcode") }
            }
            for ri in relaByTarget[t] {
                let rels = rela[ri].relocations
                for i in rels.indices where rels.isValid(i) {
                    let r = rels[i]
                    guard let size = r.type.fieldSize, size > 0 else { continue }
                    let lo = Int(r.offset), hi = lo + size
                    // Sites overlapping [lo, hi): the first whose window [off, off + 5) ends after lo.
                    var l = 0, h = here.count
                    while l < h { let m = (l + h) / 2; if here[m].off + 5 <= lo { l = m + 1 } else { h = m } }
                    var k = l
                    while k < here.count && here[k].off < hi {
                        here[k].writers += 1
                        if lo == here[k].off + 1, r.type == .pc32 || r.type == .plt32, r.addend == -4,
                           r.symbolIndex < symtab.count, (try? symbolValue(r.symbolIndex)) == fentry { here[k].good = true }
                        k += 1
                    }
                }
            }
            for k in here.indices where !here[k].good || here[k].writers != 1 {
                throw refuse(k, "its rel32 is not one relocation of __fentry__ - 4")
            }
        }
    }

    /// `ftrace_module_init()` → `ftrace_init_nop()` → `ftrace_make_nop()`: each `__mcount_loc` site
    /// that holds `call __fentry__` becomes NOP5. At run time tracing may turn it into a call to a
    /// trusted ftrace entry (facts.ftraceCallTargets), nothing else.
    func applyFtrace() throws {
        guard let t = try table("__mcount_loc") else { return }
        let fentry = resolver.lookup("__fentry__")
        let targets = facts.ftraceCallTargets  // read once (not once per site)
        var initSites: [UInt64] = []  // entries in other executable text (checked after the walk)
        var o = 0
        while let a = t.bytes.getInteger(at: o, as: UInt64.self) {
            o += 8
            guard let off = execOffset(a, 5) else {
                // ftrace_process_locs() skips only a NULL entry; any other address of a module is
                // recorded (no text test: 6.1.192; 6.12.117 tests the core kernel's only), and
                // ftrace_make_nop() rewrites it when it holds `call __fentry__` (a superset here:
                // any `e8`). Outside the executable sections: denied (requireExecutableSite).
                if a != 0 {
                    try requireExecutableSite(a, 5, .stage(.ftrace), "__mcount_loc", probe: 1, kernelWrites: { $0[0] == 0xe8 })
                    initSites.append(a)
                }
                continue
            }
            // `call __fentry__` at the site: e8 and a rel32 that lands on __fentry__ — exactly the
            // bytes genInsn(0xe8, a, __fentry__) gives (a rel32 that decodes to the target is the
            // one genInsn encodes; a target out of rel32 range decodes from no rel32).
            guard fentry != nil else { continue }  // no ftrace in the guest kernel: no site is rewritten
            let isCall = image.withUnsafeBytes { b in
                b[off] == 0xe8 && rel32Destination(UnsafeRawBufferPointer(rebasing: b[off..<off + 5]), operandAt: 1, site: a, length: 5) == fentry
            }
            // Not `call __fentry__`: ftrace_init_nop() → ftrace_make_nop() fails its
            // ftrace_verify_code(), ftrace_nop_initialize() calls ftrace_bug() → ftrace_kill()
            // (a WARN: a panic_on_warn guest dies) and ftrace_update_code() stops there, so this
            // module's later sites, and every later module's, keep their calls (kernel/trace/ftrace.c,
            // 6.1.192 and 6.12.117). Not the end state the replay builds; never built
            // (recordmcount/objtool list only `call __fentry__`): denied.
            guard isCall else {
                throw deny(.stage(.ftrace), "__mcount_loc entry 0x\(String(a, radix: 16)) is not `call __fentry__`: ftrace_make_nop() fails, ftrace_bug() kills ftrace guest-wide and leaves every later site a call (not modelled)",
                           section: "__mcount_loc", address: a)
            }
            write(off, VariableSite.nop5, .ftrace)
            countSite(.ftrace)
            if !targets.isEmpty {
                variable.append(VariableSite(offset: off, length: 5, cls: .ftrace, group: nil, label: .ftrace, rule: .ftrace(site: a, targets: targets)))
            }
        }
        if let fentry { try requireFentryCallsInInitText(initSites, fentry: fentry) }
    }
}
