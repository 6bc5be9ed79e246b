// SPDX-License-Identifier: Apache-2.0
//
// Linux 6.12 `module_finalize()` (arch/x86/kernel/module.c) and `ftrace_module_init()`, in the
// kernel's order (docs/kernels/6.12-loader.md §6, §7.1):
//   its_init_mod ─► apply_fineibt (no-op: no CFI_CLANG) ─► apply_retpolines ─► its_fini_mod
//   ─► apply_returns ─► apply_alternatives (14-byte entries, ALT_FLAG_DIRECT_CALL, relocation
//   of the replacement, 6.12 optimize_nops) ─► callthunks_patch_module_calls ─► apply_seal_endbr
//   ─► alternatives_smp_module_add over MOD_TEXT ─► ftrace NOPs.
// `.parainstructions` / apply_paravirt() no longer exist (6.8: paravirt calls are alternatives).
//
// Not modelled, denied by name (fail closed): ITS thunk pages (X86_FEATURE_INDIRECT_THUNK_ITS)
// and call-depth tracking (X86_FEATURE_CALL_DEPTH: call thunks, `retbleed=stuff`).

import ExecGateELF
import _ExecGateInternals

/// `x86_nops[]` of 6.12 (arch/x86/include/asm/nops.h, x86-64, ASM_NOP_MAX = 11).
let x86Nops612: [[UInt8]] = x86Nops + [
    [0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    [0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    [0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
]

/// 6.12 `add_nop(buf, len)`: one NOP up to 11 bytes, else `jmp` over `int3` filler.
func addNop612(_ buf: inout [UInt8], at p: Int, count len: Int) {
    if len <= 0 { return }
    if len <= 11 {
        for k in 0..<len { buf[p + k] = x86Nops612[len][k] }
        return
    }
    var q: Int
    if len < 128 {
        buf[p] = 0xeb
        buf[p + 1] = UInt8(len - 2)
        q = p + 2
    } else {
        let d = UInt32(len - 5)
        buf[p] = 0xe9
        for k in 0..<4 { buf[p + 1 + k] = UInt8(truncatingIfNeeded: d >> (8 * UInt32(k))) }
        q = p + 5
    }
    while q < p + len { buf[q] = 0xcc; q += 1 }
}

/// 6.12 `insn_is_nop()`: `90` without an F3 (PAUSE) first prefix, or `0f 1f` (NOPL).
func isNop612(_ buf: [UInt8], _ i: Int, _ insn: DecodedInstruction) -> Bool {
    if insn.opcode0 == 0x90 { return buf[i] != 0xf3 }
    return insn.opcode0 == 0x0f && insn.opcode1 == 0x1f
}

/// 6.12 `optimize_nops(instr, buf, len)` on `buf[0..<len]` (bytes after `len` are what the decoder
/// may look at). Returns false when a NOP run decodes past `len` (the kernel's `add_nop()` would
/// then write past the site: never produced by the build; denied by the caller).
func optimizeNops612(_ buf: inout [UInt8], _ len: Int) -> Bool {
    var i = 0
    while i < len {
        guard let insn = buf.withUnsafeBufferPointer({ InstructionDecoder.decode($0, at: i) }) else { return true }
        var next = i + insn.length
        if isNop612(buf, i, insn) {
            if i + insn.length == len { return true }  // "Has the NOP already been optimized?"
            // skip_nops()
            while next < len {
                guard let n2 = buf.withUnsafeBufferPointer({ InstructionDecoder.decode($0, at: next) }), isNop612(buf, next, n2) else { break }
                next += n2.length
            }
            guard next <= len else { return false }
            addNop612(&buf, at: i, count: next - i)
        }
        i = next
    }
    return true
}

/// The offset of the disp32 of a RIP-relative operand (`modrm.mod == 0 && rm == 5`) of the
/// instruction at `i`, or nil. The ModRM position is found from the prefixes and the opcode
/// length; that the byte there really is a ModRM with a disp32 is confirmed by the decoder: with
/// `mod` set to 3 the instruction must become exactly 4 bytes shorter.
func ripRelativeDisplacement(_ buf: [UInt8], at i: Int, length: Int) -> Int? {
    var p = i
    while p < i + length, [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65].contains(buf[p]) { p += 1 }
    if p < i + length, buf[p] & 0xf0 == 0x40 { p += 1 }
    guard p < i + length else { return nil }
    if buf[p] == 0x0f {
        guard p + 1 < i + length else { return nil }
        p += (buf[p + 1] == 0x38 || buf[p + 1] == 0x3a) ? 3 : 2
    } else if buf[p] == 0xc5 || buf[p] == 0xc4 || buf[p] == 0x62 {
        // VEX (c5: 1 payload byte, c4: 2) and EVEX (62: 3) in 64-bit mode, then the opcode: the
        // kernel's decoder reads their ModRM like any other (insn_rip_relative() on
        // insn.modrm), so their RIP-relative operands are relocated too. (`8f` is POP Ev to the
        // kernel's decoder, which has no XOP: a legacy ModRM opcode, the branch below.)
        p += (buf[p] == 0xc5 ? 2 : buf[p] == 0xc4 ? 3 : 4) + 1
    } else {
        p += 1
    }
    guard p + 5 <= i + length, buf[p] & 0xc7 == 0x05 else { return nil }
    var probe = Array(buf[i..<i + length])
    probe[p - i] = 0xc0 | (buf[p] & 0x38)
    guard let short = probe.withUnsafeBufferPointer({ InstructionDecoder.decode($0, at: 0) }), short.length == length - 4 else { return nil }
    return p + 1
}

extension Session {
    /// The 6.12 `module_finalize()` work this replay does not model, refused before any stage runs.
    func refuseUnmodelled612() throws {
        // its_init_mod / its_allocate_thunk: each module gets fresh 0xcc pages of thunks that are
        // executable but outside mem[]; not replayed yet.
        // A module without retpoline sites in its text gets no ITS page (its_init_mod() only
        // resets its_page; pages are allocated per thunk).
        if hasFeature(featureBits.indirectThunkITS), try relativeSites(".retpoline_sites").contains(where: { execOffset($0, 1) != nil }) {
            throw deny(.loader, "6.12 ITS indirect-thunk pages (X86_FEATURE_INDIRECT_THUNK_ITS, its_allocate_thunk) are not modelled")
        }
        // callthunks_patch_module_calls(), emit_call_track_retpoline(), callthunks_translate_call_dest().
        // A data-only module is untouched: callthunks_patch_module_calls() gets [NULL, NULL).
        if let cd = loader.callDepthBit, hasFeature(cd), !image.isEmpty {
            throw deny(.loader, "6.12 call-depth tracking (X86_FEATURE_CALL_DEPTH: call thunks, retbleed=stuff) is not modelled")
        }
        // apply_fineibt(): __apply_fineibt() is the empty stub without CONFIG_FINEIBT (gcc build);
        // a `.cfi_sites` table is nothing this build produces.
        if elf.section(named: ".cfi_sites") != nil {
            throw deny(.loader, "module has .cfi_sites (kCFI/FineIBT), which the Debian 6.12 gcc build does not produce")
        }
        if elf.section(named: ".parainstructions") != nil {
            throw deny(.loader, "module has .parainstructions, which 6.12 no longer processes (paravirt is alternatives since 6.8)")
        }
    }

    /// `module_finalize()` up to and including `apply_alternatives()`, in the loader's order (the
    /// first half of `applyBootTimePatching()`, and alone for the mutation tester's "feature
    /// flipped" replays).
    func applyStagesThroughAlternatives() throws {
        if loader == .linux6_12 {
            // patch_retpoline() / patch_return(): identical to 6.1.192 apart from the CALL_DEPTH
            // branch (refused) and the ITS bit number (LoaderSelection.featureBits).
            try applyRetpolines()
            try applyReturns()
            try applyAlternatives612()
        } else {
            try applyParavirt()
            try applyRetpolines()
            try applyReturns()
            try applyAlternatives()
        }
    }

    // MARK: Alternatives (6.12)

    /// `apply_alternatives()` (6.12 arch/x86/kernel/alternative.c):
    /// ```c
    /// struct alt_instr { s32 instr_offset; s32 repl_offset;
    ///                    union { struct { u32 cpuid: 16; u32 flags: 16; }; u32 ft_flags; };
    ///                    u8 instrlen; u8 replacementlen; } __packed;   /* 14 bytes */
    /// ```
    func applyAlternatives612() throws {
        guard let t = try table(".altinstructions") else { return }
        let maxFeature = featureBits.capabilityWords * 32
        struct Entry { var instr: UInt64; var repl: UInt64; var cpuid: Int; var flags: UInt16; var instrlen: Int; var repllen: Int }
        var entries: [Entry] = []
        var o = 0
        while o + 14 <= t.bytes.count, let instrRel = t.bytes.getInteger(at: o, as: Int32.self), let replRel = t.bytes.getInteger(at: o + 4, as: Int32.self),
              let cpuid = t.bytes.getInteger(at: o + 8, as: UInt16.self), let flags = t.bytes.getInteger(at: o + 10, as: UInt16.self),
              let il = t.bytes.getInteger(at: o + 12, as: UInt8.self), let rl = t.bytes.getInteger(at: o + 13, as: UInt8.self) {
            let ea = t.addr &+ UInt64(o)
            entries.append(Entry(instr: ea &+ UInt64(bitPattern: Int64(instrRel)), repl: ea &+ 4 &+ UInt64(bitPattern: Int64(replRel)),
                                 cpuid: Int(cpuid), flags: flags, instrlen: Int(il), repllen: Int(rl)))
            o += 14
        }
        guard o == t.bytes.count else {
            throw deny(.alternative, ".altinstructions is \(t.bytes.count) bytes, not a whole number of 14-byte entries")
        }
        let bugFunc = resolver.lookup("BUG_func"), nopFunc = resolver.lookup("nop_func"), pvOpsBase = resolver.lookup("pv_ops")
        var takenOutside = Set<UInt64>()  // sites outside this region an earlier taken entry rewrote
        var runEnd = 0, runMax = 0
        for ai in entries.indices {
            // Nesting pad: consecutive entries of one site share the largest instrlen. The kernel
            // walks the rest of the run from each entry (quadratic in a run's length: 320,000
            // entries at one site held a judging thread 86 s, round 13); each entry, when its turn
            // comes, holds the run's maximum there (the first entry's walk leaves running maxima
            // behind it, each later walk the maximum of the rest), and nothing here reads another
            // entry: the run's maximum, found once per run, is the same.
            if ai >= runEnd {
                runEnd = ai + 1
                runMax = entries[ai].instrlen
                while runEnd < entries.count && entries[runEnd].instr == entries[ai].instr {
                    runMax = max(runMax, entries[runEnd].instrlen)
                    runEnd += 1
                }
            }
            entries[ai].instrlen = runMax
            let a = entries[ai]
            guard a.cpuid < maxFeature else {
                throw deny(.alternative, "feature bit \(a.cpuid) beyond x86_capability (the kernel BUGs)", address: a.instr)
            }
            // BUG_ON(a->instrlen > sizeof(insn_buff)) for every entry (after the nesting pad).
            guard a.instrlen <= Session.maxPatchLen else {
                throw deny(.alternative, "alternative of \(a.instrlen) bytes is longer than MAX_PATCH_LEN (254): the kernel BUGs", address: a.instr)
            }
            // Taken or not, the kernel writes instrlen bytes (text_poke_early() of optimize_nops()' buffer).
            try requireExecutableSite(a.instr, a.instrlen, .alternative, ".altinstructions")
            let notFlag = a.flags & 1 != 0, directCall = a.flags & 2 != 0
            guard let off = execOffset(a.instr, max(a.instrlen, 1)) else {
                // Init text: freed, never verified; but alt_replace_call()'s BUG()s hold there too.
                let taken = hasFeature(a.cpuid) != notFlag
                if taken && directCall && region == .core {
                    try refuseDirectCallBugInInitText(instr: a.instr, instrlen: a.instrlen, repl: a.repl, repllen: a.repllen,
                                                      rewrittenBefore: takenOutside.contains(a.instr))
                }
                if taken { takenOutside.insert(a.instr) }
                continue
            }
            guard a.flags & ~3 == 0 else {
                throw deny(.alternative, "alt_instr flags 0x\(String(a.flags, radix: 16)) beyond ALT_FLAG_NOT|ALT_FLAG_DIRECT_CALL", atRegionOffset: off, address: a.instr)
            }
            let taken = hasFeature(a.cpuid) != notFlag
            altSites.append((off, a.instrlen, a.cpuid, notFlag, taken))
            // The decoder may look up to 15 bytes past the site (the kernel's insn_buff holds
            // stale bytes there; an instruction that needs them is a mismatch and denied).
            let tailEnd = min(image.count, off + a.instrlen + InstructionDecoder.maxLength)
            if !taken {
                var buf = Array(image[off..<tailEnd])
                guard optimizeNops612(&buf, a.instrlen) else {
                    throw deny(.alternative, "NOP run crosses the end of the alternative site", atRegionOffset: off, address: a.instr)
                }
                // (Each changed byte stored as it is: an array of one a byte was up to 254
                // allocations an entry.)
                let altClass = UInt8(ExplanationClass.alternative.rawValue)
                for k in 0..<a.instrlen where buf[k] != image[off + k] { writeWord(off + k, UInt64(buf[k]), 1, altClass) }
                continue
            }
            guard a.repllen <= a.instrlen else {
                throw deny(.alternative, "replacement of \(a.repllen) bytes is longer than the \(a.instrlen)-byte site (the copy would overrun it)",
                           atRegionOffset: off, address: a.instr)
            }
            guard let repl = try read(a.repl, a.repllen) else {
                throw deny(.alternative, "replacement at 0x\(String(a.repl, radix: 16)) is outside the module", atRegionOffset: off, address: a.instr)
            }
            var buf = repl + Array(image[min(image.count, off + a.repllen)..<tailEnd])
            var n = a.repllen
            if directCall {
                // alt_replace_call(): `call *pv_ops[i](%rip)` → `call target` (NULL: BUG_func;
                // nop_func: nothing).
                let site = Array(image[off..<min(image.count, off + 6)])
                guard a.repllen == 5, buf[0] == 0xe8, a.instrlen == 6, site.count == 6, site[0] == 0xff, site[1] == 0x15,
                      let disp = site.getInteger(at: 2, as: Int32.self) else {
                    throw deny(.alternative, "ALT_FLAG_DIRECT_CALL on a site that is not `call *disp32(%rip)` with a 5-byte call replacement (the kernel BUGs)",
                               atRegionOffset: off, address: a.instr, found: site)
                }
                let slot = a.instr &+ 6 &+ UInt64(bitPattern: Int64(disp))
                guard let bug = bugFunc else { throw deny(.alternative, "BUG_func is not exported by the kernel facts", atRegionOffset: off, address: a.instr) }
                // alt_replace_call() also compares the target with &nop_func (the call is then
                // dropped): without its address the replay cannot tell a call from NOPs.
                guard let nop = nopFunc else { throw deny(.alternative, "nop_func is not exported by the kernel facts", atRegionOffset: off, address: a.instr) }
                let entries = min(facts.pvOps.count, loader.pvOpsEntries ?? facts.pvOps.count)
                guard let pv = pvOpsBase, slot >= pv, (slot - pv) % 8 == 0, (slot - pv) / 8 < UInt64(entries) else {
                    throw deny(.alternative, "direct-call slot 0x\(String(slot, radix: 16)) is not an entry of the trusted pv_ops table", atRegionOffset: off, address: a.instr)
                }
                var target = facts.pvOps[Int((slot - pv) / 8)]
                if target == 0 { target = bug }
                guard let rel = buf.getInteger(at: 1, as: Int32.self) else { throw deny(.alternative, "short replacement", address: a.instr) }
                let nv = UInt32(bitPattern: rel &+ Int32(truncatingIfNeeded: Int64(bitPattern: target &- bug)))
                for k in 0..<4 { buf[1 + k] = UInt8(truncatingIfNeeded: nv >> (8 * UInt32(k))) }
                n = target == nop ? 0 : 5
            }
            for k in n..<a.instrlen { buf[k] = 0x90 }
            try applyRelocation612(&buf, instr: a.instr, instrlen: a.instrlen, repl: a.repl, repllen: a.repllen, off: off)
            guard optimizeNops612(&buf, a.instrlen) else {
                throw deny(.alternative, "NOP run crosses the end of the alternative site", atRegionOffset: off, address: a.instr)
            }
            write(off, Array(buf[0..<a.instrlen]), .alternative)
            countSite(.alternative)
        }
    }

    /// alt_replace_call() (6.12) BUG()s on a taken ALT_FLAG_DIRECT_CALL entry unless its
    /// replacement is a 5-byte `e8` and its site (`instrlen` 6) holds `ff 15` (`call
    /// *disp32(%rip)`), and apply_alternatives() takes no text range: the rule holds for a site in
    /// init text too, which the core session otherwise skips (6.12 init text is never an
    /// executable region). The site's bytes are the signed ones there: the opcode bytes are no
    /// relocation field of a module the build makes (a record that writes them, or an earlier
    /// taken entry that rewrote the site, is not modelled: denied). The replacement lies in core
    /// text or data, read as relocated.
    func refuseDirectCallBugInInitText(instr: UInt64, instrlen: Int, repl: UInt64, repllen: Int, rewrittenBefore: Bool) throws {
        func refuse(_ why: String) -> DenyError {
            deny(.alternative, "ALT_FLAG_DIRECT_CALL entry at 0x\(String(instr, radix: 16)) in init text: \(why) (alt_replace_call() BUGs)",
                 section: ".altinstructions", address: instr)
        }
        guard repllen == 5, let r = try read(repl, 1), r[0] == 0xe8 else { throw refuse("the replacement is not a 5-byte call") }
        guard instrlen == 6 else { throw refuse("the site is \(instrlen) bytes, not 6") }
        guard !rewrittenBefore else { throw refuse("an earlier taken entry rewrote the site (not modelled)") }
        guard let (t, off, signed) = signedInitTextSite(instr) else { throw refuse("the site is in no init text section") }
        guard off + 2 <= signed.count, signed[off] == 0xff, signed[off + 1] == 0x15 else {
            throw refuse("the site is not call *disp32(%rip)")
        }
        if relocationWrites(section: t, off, off + 2) { throw refuse("a relocation writes the site's opcode bytes (not modelled)") }
    }

    /// `__apply_relocation(buf, instr, instrlen, repl, repl_len)` (6.12): branches and RIP-relative
    /// operands of the copied replacement whose target lies outside the replacement get
    /// `repl - instr` added; a `jmp rel32` becomes `jmp rel8` + `int3` when it fits.
    func applyRelocation612(_ buf: inout [UInt8], instr: UInt64, instrlen: Int, repl: UInt64, repllen: Int, off: Int) throws {
        let diff = Int64(bitPattern: repl &- instr)
        func needReloc(_ rel: Int64) -> Bool { rel < 0 || rel > Int64(repllen) }
        func addReloc(_ n: Int, at p: Int) throws {
            // apply_reloc_n(): s32 v = *(sN *)p + diff; BUG_ON((v >> 31) != (v >> (N-1)))
            let cur: Int32
            switch n {
            case 1: cur = Int32(Int8(bitPattern: buf[p]))
            case 2: cur = Int32(buf.getInteger(at: p, as: Int16.self) ?? 0)
            default: cur = buf.getInteger(at: p, as: Int32.self) ?? 0
            }
            let v = cur &+ Int32(truncatingIfNeeded: diff)
            guard (v >> 31) == (v >> Int32(n * 8 - 1)) else {
                throw deny(.alternative, "relocated branch in the replacement overflows its \(n)-byte field (the kernel BUGs)", atRegionOffset: off, address: instr)
            }
            for k in 0..<n { buf[p + k] = UInt8(truncatingIfNeeded: v >> Int32(8 * k)) }
        }
        var i = 0
        while i < instrlen {
            guard let insn = buf.withUnsafeBufferPointer({ InstructionDecoder.decode($0, at: i) }) else {
                throw deny(.alternative, "replacement does not decode at +\(i) (the kernel WARNs and stops)", atRegionOffset: off, address: instr)
            }
            let next = i + insn.length
            let op = insn.opcode0
            let isJcc32 = op == 0x0f && insn.opcode1 >= 0x80 && insn.opcode1 <= 0x8f
            let isBranch = isJcc32 || (op >= 0x70 && op <= 0x7f) || op == 0xeb || op == 0xe9 || op == 0xe8
            if isBranch {
                let nbytes = (op == 0xeb || (op >= 0x70 && op <= 0x7f)) ? 1 : 4
                // A 16-bit-operand branch (66 e8 rel16) is nothing gcc emits here: deny it rather
                // than guess its immediate's place.
                guard next - nbytes > i, insn.length >= nbytes + 1, !(op != 0x0f && insn.length > nbytes + 1 && nbytes == 4 && buf[i] == 0x66) else {
                    throw deny(.alternative, "branch of \(insn.length) bytes at +\(i) of the replacement is not a plain rel8/rel32 form", atRegionOffset: off, address: instr)
                }
                if needReloc(Int64(next) + insn.immediate) { try addReloc(nbytes, at: next - nbytes) }
                if op == 0xe9 {
                    let imm = Int32(truncatingIfNeeded: insn.immediate) &+ Int32(truncatingIfNeeded: diff) &+ 3
                    if (imm >> 31) == (imm >> 7) {
                        buf[i] = 0xeb
                        buf[i + 1] = UInt8(bitPattern: Int8(truncatingIfNeeded: imm))
                        for k in (i + 2)..<next { buf[k] = 0xcc }
                    }
                }
            }
            if let dp = ripRelativeDisplacement(buf, at: i, length: insn.length),
               let d = buf.getInteger(at: dp, as: Int32.self), needReloc(Int64(next) + Int64(d)) {
                try addReloc(4, at: dp)
            }
            i = next
        }
    }

    // MARK: ENDBR seal (6.12)

    /// `apply_seal_endbr()` → `poison_endbr(addr, true)`: unconditional with CONFIG_X86_KERNEL_IBT
    /// (=y in Debian 6.12). `is_endbr()` accepts endbr64 (f3 0f 1e fa), endbr32 (f3 0f 1e fb) and the
    /// poison itself; those 4 bytes become `66 0f 1f 00`. Anything else: WARN, left alone.
    func applySealEndbr612() throws {
        for a in try relativeSites(".ibt_endbr_seal") {
            try requireExecutableSite(a, 4, .stage(.endbrSeal), ".ibt_endbr_seal", probe: 4, kernelWrites: Session.endbrMayWrite)
            guard let off = execOffset(a, 4) else { continue }
            let b = Array(image[off..<off + 4])
            guard Session.endbrMayWrite(b) else { continue }
            write(off, [0x66, 0x0f, 0x1f, 0x00], .endbrSeal)
            countSite(.endbrSeal)
        }
    }

    // MARK: SMP locks (6.12)

    /// `alternatives_smp_module_add(me, name, locks, mem[MOD_TEXT].base, + mem[MOD_TEXT].size)`:
    /// the range is the whole MOD_TEXT allocation (6.1: the `.text` section only). Never init
    /// text: module_finalize() (6.12 arch/x86/kernel/module.c) passes mem[MOD_TEXT] only, and
    /// alternatives_smp_unlock() skips every entry outside it, so an init session leaves its
    /// `lock` prefixes as compiled.
    func applySMPLocks612() throws {
        guard region == .core, facts.uniprocessorPatched, let t = try table(".smp_locks"), !image.isEmpty else { return }
        var o = 0
        while let v = t.bytes.getInteger(at: o, as: Int32.self) {
            let a = t.addr &+ UInt64(o) &+ UInt64(bitPattern: Int64(v))
            o += 4
            guard v != 0, a >= base, a - base < UInt64(image.count) else { continue }
            let off = Int(a - base)
            if image[off] == 0xf0 {
                write(off, [0x3e], .smpLock)
                countSite(.smpLock)
                if facts.possibleCPUs > 1 {
                    variable.append(VariableSite(offset: off, length: 1, cls: .smpLock, group: Session.smpLockGroup, label: .smpLock, rule: .smpLock))
                }
            }
        }
    }
}
