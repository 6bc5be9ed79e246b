// SPDX-License-Identifier: Apache-2.0
//
// Plausibility of a register-guest's facts, checked before they become a session. The facts come
// from the VMM at the trusted point (docs/protocol.md, "register-guest"), but some of them live in
// guest-writable memory (`pv_ops` and `boot_cpu_data` are in .data, not __ro_after_init), so a VMM
// that reads them late, or a bug in how it reads them, must not become an ALLOW for attacker-chosen
// control flow. Every rule below is decidable from the registration itself and is derived from the
// kernel, never from captures:
//
//   - core text bounds `_stext`/`_etext` (vmlinux.lds.S) are required once symbols are sent:
//     every other check needs them;
//   - an exported text symbol lies in core text and outside init text (`_sinittext`/`_einittext`,
//     freed by free_initmem(); modpost refuses exports of __init code); no exported symbol lies in
//     init text; a name is exported once (the kernel's ksymtab has one entry per name); every
//     export, whatever its type letter, lies in the kernel image below MODULES_VADDR (at the
//     guest's slide) or in the core per-cpu section [__per_cpu_start, __per_cpu_end);
//   - every `pv_ops` entry is NULL or a core-text address outside init (paravirt_patch() emits a
//     direct call to it: a user-space or data address would be a call anywhere);
//   - the loader's code helpers (return thunks, `__static_call_return0`/`__static_call_return`,
//     `_paravirt_nop`/`paravirt_BUG`), at the first record of their name, lie in core text
//     outside init;
//   - `return_thunk` is one of the kernel's return thunks (arch/x86/kernel/cpu/bugs.c assigns
//     x86_return_thunk only `__x86_return_thunk`, `retbleed_return_thunk`, `srso_return_thunk`,
//     `srso_alias_return_thunk` or `its_return_thunk`), and those names must be registered;
//   - `cpu_caps` has exactly NCAPINTS + NBUGINTS words, and the mitigation bits agree with what
//     the kernel reported in /sys/devices/system/cpu/vulnerabilities (the same mitigation state
//     decides both: spectre_v2_select_mitigation(), retbleed/srso/its_select_mitigation()): a
//     reported retpoline mitigation with X86_FEATURE_RETPOLINE clear is a lie that would let plain
//     indirect calls through; a 6.12 "Stuffing" mitigation (retbleed, ITS) needs X86_FEATURE_CALL_DEPTH;
//   - `__per_cpu_end` (the start of the module per-cpu reserve) is not below `__per_cpu_start`
//     and, on a zero-based per-cpu build, below no core per-cpu symbol (vmlinux.lds.h PERCPU_SECTION);
//   - core and init text lie in the kernel image mapping [__START_KERNEL_map, MODULES_VADDR)
//     at the guest's slide (page_64_types.h / pgtable_64_types.h: KERNEL_IMAGE_SIZE), never in
//     the module area a module claim may use;
//   - CPU counts: present ≥ 1 and possible ≥ present;
//   - the KASLR slide is a multiple of 2 MiB (CONFIG_PHYSICAL_ALIGN on x86-64: `checkSlide`);
//   - static-call keys: the key is a registered `__SCK__<name>` symbol, or the trampoline
//     `__SCT__<name>` in core text for keys exported with EXPORT_STATIC_CALL_TRAMP
//     (static_call_add_module() → tramp_key_lookup()); each trusted target is NULL or a function
//     entry in core text outside init.

import _ExecGateInternals
import ExecGateExplain
import ExecGateWire

enum FactsPlausibility {
    /// The kernel's return thunks (6.1 stable, arch/x86/lib/retpoline.S and bugs.c).
    static let returnThunks = RegistrationSymbols.returnThunks
    /// The code the loader's rewrites call or jump to, looked up by name (the first record of the
    /// name, as GuestFactsBuilder's helpers and `returnThunkAddresses` take it): the return thunks
    /// (`apply_returns()`, static calls' RET forms), `__static_call_return0` /
    /// `__static_call_return` (static-call NULL forms, trusted for every key), `_paravirt_nop` /
    /// `paravirt_BUG` (paravirt patching). All are core functions (arch/x86/lib/retpoline.S,
    /// kernel/static_call.c, arch/x86/kernel/static_call.c, arch/x86/kernel/paravirt.c).
    static let codeHelpers = returnThunks + [RegistrationSymbols.staticCallReturn0, RegistrationSymbols.staticCallReturn,
                                             RegistrationSymbols.paravirtNop, RegistrationSymbols.paravirtBUG]

    /// nil when plausible; otherwise one sentence naming the fact that fails. The same checks, in
    /// the same order, as the registry runs them in three steps (CPU counts and the slide; the
    /// build's symbols, once per shared copy; this guest's own facts against that copy).
    static func check(_ r: RegisterGuest, facts: GuestFacts) -> String? {
        if let why = checkRegistration(r) { return why }
        let build = checkSymbols(r.symbolRecords)
        if let why = build.failure { return why }
        return checkGuest(r, facts: facts, build: build.facts)
    }

    /// What the per-guest checks need of the build (kept by each shared copy).
    struct BuildFacts: Sendable {
        /// `_stext`/`_etext` (and the init text), nil when no symbols were sent.
        let bounds: KernelBounds?
        let symbolsSent: Bool
        /// The registered addresses of the kernel's return thunks (`returnThunks`, by name).
        let returnThunkAddresses: [UInt64]
        /// Addresses a `static_call_key` fact may name as its key: every `__SCK__<name>` symbol
        /// (the core's `struct static_call_key`) and every `__SCT__<name>` text symbol in core text
        /// (the trampoline, the key of a module site for a key exported with
        /// EXPORT_STATIC_CALL_TRAMP: static_call_add_module() → tramp_key_lookup()). Names by bytes.
        /// At the addresses of `mapped(_:keys: true)` (a shared copy: link time); a guest's key is
        /// looked up exactly at its slide (`checkGuest`'s `isStaticCallKey`), never mapped per guest.
        let staticCallKeys: Set<UInt64>
        /// The highest exported or `__SCK__` address in the kernel image mapping (≥
        /// `__START_KERNEL_map`) and its name, nil when none: at the guest's slide it must lie below MODULES_VADDR
        /// (`checkGuest`), whatever the record's type letter.
        var exportCeiling: (name: String, address: UInt64)? = nil

        /// The same facts with every address moved by `f` (KernelSlide: a shared copy keeps them
        /// at link-time addresses; each guest's checks see them at its own slide).
        func mapped(_ f: (UInt64) -> UInt64, keys: Bool = false) -> BuildFacts {
            BuildFacts(bounds: bounds?.mapped(f), symbolsSent: symbolsSent, returnThunkAddresses: returnThunkAddresses.map(f),
                       staticCallKeys: keys ? Set(staticCallKeys.map(f)) : staticCallKeys,
                       exportCeiling: exportCeiling.map { ($0.name, f($0.address)) })
        }
    }

    /// The checks of a registration's own numbers, before any symbol is read (the first step of
    /// `check`, and the registry's, which runs it before it looks up a shared copy).
    static func checkRegistration(_ r: RegisterGuest) -> String? { checkCPUs(r) ?? checkSlide(r) }

    static func checkCPUs(_ r: RegisterGuest) -> String? {
        guard r.presentCPUs >= 1 else { return "present_cpus is 0" }
        guard r.possibleCPUs >= r.presentCPUs else { return "possible_cpus \(r.possibleCPUs) < present_cpus \(r.presentCPUs)" }
        return nil
    }

    /// The alignment every x86-64 KASLR slide has: a multiple of CONFIG_PHYSICAL_ALIGN, which
    /// arch/x86/Kconfig bounds to 0x200000…0x1000000 on X86_64 (a power of two), so a multiple of
    /// 2 MiB: arch/x86/boot/compressed/kaslr.c find_random_virt_addr() returns
    /// `minimum + random % slots * CONFIG_PHYSICAL_ALIGN` with `minimum` = LOAD_PHYSICAL_ADDR
    /// (itself aligned), and the slide is that address minus LOAD_PHYSICAL_ADDR (0 without KASLR;
    /// the same in 6.1 and 6.12).
    static let slideAlignment: UInt64 = 2 << 20

    /// A `kaslr_slide` no x86-64 kernel boots at is refused, full registration or by digest.
    /// Besides being a lie, such a slide breaks what sharing a build rests on: the symbol rules
    /// round addresses to 4 KiB pages and to the 2 MiB boundary after `_etext` (the text/rodata
    /// gap `mark_rodata_ro()` frees, the ro_after_init bounds), and only a slide that is a
    /// multiple of 2 MiB keeps those roundings, so a build that passes at one admitted slide
    /// passes at every other (docs/trust.md). At slide 0x1fe000 the gap of a build whose export
    /// lies in it at slide 0 closed up, the build was admitted and shared, and guests at real
    /// slides attached to it by digest.
    static func checkSlide(_ r: RegisterGuest) -> String? {
        guard r.kaslrSlide % slideAlignment == 0 else {
            return "kaslr_slide 0x\(Hex.number(r.kaslrSlide)) is not a multiple of 2 MiB (x86-64 KASLR moves the kernel by multiples of CONFIG_PHYSICAL_ALIGN, at least 2 MiB: arch/x86/boot/compressed/kaslr.c find_random_virt_addr())"
        }
        return nil
    }

    /// The rules that depend on the symbols alone: a build that fails them never becomes facts.
    /// (Records read in place, SymbolRecords: a name becomes a `String` only here, once, in the
    /// name tables (`names`) built after the registry's budget admitted the build; the tables of
    /// its facts take them from here, GuestFactsBuilder.kernelFacts.)
    static func checkSymbols(_ symbols: SymbolRecords) -> (failure: String?, facts: BuildFacts, names: SymbolNames) {
        func isKeyRecord(_ s: SymbolRecordView) -> Bool { s.nameStarts(with: "__SCK__") }
        var failure: String? = nil
        var ceiling: (name: String, address: UInt64)? = nil
        let names = SymbolNames(symbols) { s, name, exportedBefore in
            // No kernel exports an empty name: EXPORT_SYMBOL(sym) emits `__ksymtab_<sym>` for a C
            // identifier, and find_symbol() matches a module's undefined name by strcmp, so an
            // exported "" would resolve a nameless undefined symbol simplify_symbols() refuses.
            if s.exported && name.isEmpty && failure == nil { failure = "an exported symbol record (address 0x\(String(s.address, radix: 16))) has an empty name" }
            if s.exported && exportedBefore && failure == nil { failure = "symbol '\(name)' is exported twice" }
            // Exports and core static-call keys (`__SCK__<name>`, a `struct static_call_key` in the
            // kernel's data) stay in the image: the highest one is held below MODULES_VADDR per guest.
            if (s.exported || isKeyRecord(s)) && s.address >= KernelSlide.imageBase && s.address >= (ceiling?.address ?? 0) { ceiling = (name, s.address) }
        }
        let named = names.named
        let bounds = KernelBounds(named)
        var keys = Set<UInt64>()
        symbols.forEachRecord { s in
            if s.nameStarts(with: "__SCK__") { keys.insert(s.address) }
            if s.nameStarts(with: "__SCT__"), s.isText, bounds?.isCoreText(s.address) ?? false { keys.insert(s.address) }
        }
        let facts = BuildFacts(bounds: bounds, symbolsSent: !symbols.isEmpty, returnThunkAddresses: Self.returnThunks.compactMap { named[$0] },
                               staticCallKeys: keys, exportCeiling: ceiling)
        if let failure { return (failure, facts, names) }
        if !symbols.isEmpty && bounds == nil {
            return ("symbols are sent without the core text bounds _stext < _etext: nothing can be checked against them", facts, names)
        }
        // Module per-cpu areas come from the reserve right after the core per-cpu section
        // (percpu_modalloc(), `[__per_cpu_end, + PERCPU_MODULE_RESERVE)`): `__per_cpu_end` ends
        // that section after every core per-cpu variable (PERCPU_SECTION, vmlinux.lds.h). On a
        // zero-based per-cpu build (x86_64 SMP: per-cpu symbols below the image base) a core
        // per-cpu symbol past it means the reserve the per-cpu check admits would cover core
        // per-cpu state (`__preempt_count`, `this_cpu_off`, `current_task`).
        if let end = named[RegistrationSymbols.perCPUEnd] {
            // pcpu_setup_first_chunk() places PERCPU_MODULE_RESERVE bytes after the static area:
            // a reserve that wraps the address space is no layout a kernel makes (and its end
            // must never be computed with arithmetic that traps).
            if end > UInt64.max - GuestFactsBuilder.percpuModuleReserve {
                return ("__per_cpu_end 0x\(Hex.number(end)): the module per-cpu reserve after it (PERCPU_MODULE_RESERVE, \(GuestFactsBuilder.percpuModuleReserve) bytes) would wrap the address space", facts, names)
            }
            if let start = named[RegistrationSymbols.perCPUStart], start > end {
                return ("__per_cpu_start 0x\(Hex.number(start)) lies past __per_cpu_end 0x\(Hex.number(end))", facts, names)
            }
            if end < KernelSlide.imageBase, let s = symbols.firstRecord(where: { $0.address < KernelSlide.imageBase && $0.address > end }) {
                return ("per-cpu symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies past __per_cpu_end 0x\(Hex.number(end)): the module per-cpu reserve would cover core per-cpu data", facts, names)
            }
        }
        if let b = bounds {
            // The first export any of the three rules refuses, named by the first rule it fails
            // (read in place: a name becomes a `String` only for the refusal).
            if let s = symbols.firstRecord(where: { s in
                s.exported && ((b.initText?.contains(s.address) ?? false) || (b.initMemory?.contains(s.address) ?? false) || (s.isText && !b.isCoreText(s.address)))
            }) {
                if let i = b.initText, i.contains(s.address) { return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in init text (freed after boot)", facts, names) }
                // Init data too (`[__init_begin, __init_end)`): the loaders look some exports up by
                // name and write calls to them (6.12 `BUG_func`, `nop_func`), where the relocation
                // walk's `init-symbol` rule never looks; modpost refuses exporting __init and
                // __initdata symbols, so no build has one.
                if let m = b.initMemory, m.contains(s.address) { return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in the core's init memory [__init_begin, __init_end) (freed after boot)", facts, names) }
                if s.isText && !b.isCoreText(s.address) { return ("exported text symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies outside core text", facts, names) }
            }
            // Every export is told from the core's init memory only by the init bounds: init text
            // and data (`[_sinittext, _einittext)`, `[__init_begin, __init_end)`, vmlinux.lds.S)
            // are freed by free_initmem() after boot, and nothing may point there (the check above,
            // the relocation walk's `init-symbol` rule). Without them both rules were off: an
            // export sent as data inside init text was resolved like any other, and so was one
            // sent as text with `_etext` (the registration's word too) moved past the init text.
            // A fact the checks need is never switched off by omission (protocol.md "Symbols the
            // VMM must send"); every kernel has init memory.
            // The same for the other bounds a rule needs once anything is exported: the
            // rodata/data gap `mark_rodata_ro()` frees (`__end_rodata` < `_sdata`: below), and the
            // core's `.data..ro_after_init` (include/asm-generic/vmlinux.lds.h RO_AFTER_INIT_DATA),
            // whose static keys never change after `mark_rodata_ro()` (GuestSession's sealed-key
            // rule). Every 6.1 and 6.12 build has all four pairs.
            if let s = symbols.firstRecord(where: { $0.exported }) {
                let freedInit = "no export can be told from the init memory free_initmem() releases after boot"
                let reasons = [freedInit, freedInit, "no export can be told from the rodata/data gap mark_rodata_ro() frees after boot",
                               "no static key can be told to lie in the core's __ro_after_init data, sealed after boot"]
                for ((lo, hi), why) in zip(RegistrationSymbols.requiredBoundPairs, reasons) {
                    guard let a = named[lo], let z = named[hi], a < z else {
                        let kind = why == freedInit ? "core init bounds" : "bounds"
                        return ("symbols are sent with exports ('\(s.name)', …) but without the \(kind) \(lo) < \(hi): \(why)", facts, names)
                    }
                }
            }
        }
        // Init memory is not all the image memory the kernel frees after boot: x86-64
        // mark_rodata_ro() (arch/x86/mm/init_64.c, 6.1 and 6.12) frees the "unused kernel image
        // (text/rodata gap)" [PFN_ALIGN(_etext), __start_rodata) and the "(rodata/data gap)"
        // [PFN_ALIGN(__end_rodata), _sdata) with free_kernel_image_pages(): those pages go back to
        // the page allocator, and what is there later is the guest's choice. vmlinux.lds.S starts
        // rodata at the next 2 MiB boundary after text (`_etext = .; . = ALIGN(PAGE_SIZE);`
        // X86_ALIGN_RODATA_BEGIN `. = ALIGN(HPAGE_SIZE)`; the KASLR slide keeps 2 MiB alignment),
        // so the first gap follows from `_etext` alone; the second is checked when `__end_rodata`
        // and `_sdata` are sent. No export lies there (an export sent as data in the first gap
        // registered, and a module's call to it was explained: Review7Tests).
        // `x` rounded up to a multiple of `align` (a power of two), nil past 2^64.
        func alignUp(_ x: UInt64, _ align: UInt64) -> UInt64? { x <= UInt64.max - (align - 1) ? (x + align - 1) & ~(align - 1) : nil }
        if let b = bounds, let textEnd = alignUp(b.coreText.upperBound, 0x1000), let rodata = alignUp(textEnd, 0x20_0000) {
            var gaps = [("text/rodata", textEnd..<rodata)]
            if let er = named[RegistrationSymbols.endRodata], let sd = named[RegistrationSymbols.sdata], let gapStart = alignUp(er, 0x1000), gapStart < sd {
                gaps.append(("rodata/data", gapStart..<sd))
            }
            for (what, gap) in gaps where !gap.isEmpty {
                if let s = symbols.firstRecord(where: { $0.exported && gap.contains($0.address) }) {
                    return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies in the kernel image's \(what) gap [0x\(Hex.number(gap.lowerBound)), 0x\(Hex.number(gap.upperBound))), which mark_rodata_ro() frees after boot", facts, names)
                }
            }
            // `.data..ro_after_init` (the sealed-key rule's range, GuestFactsBuilder) lies in
            // rodata: include/asm-generic/vmlinux.lds.h RO_DATA places RO_AFTER_INIT_DATA inside
            // `.rodata`, before `__end_rodata`, and rodata starts at the 2 MiB boundary after text
            // (above; x86-64 vmlinux.lds.S, 6.1 and 6.12). Required and ordered with exports
            // (above), it was never held there: a range below the image, in core text or the
            // module area registered, and the rule then covered no core key
            // (RegistrationBoundsTests). Whenever it is sent, so is `__end_rodata`, and it lies in
            // [rodata start, __end_rodata].
            if let lo = named[RegistrationSymbols.startROAfterInit], let hi = named[RegistrationSymbols.endROAfterInit], lo < hi {
                guard let er = named[RegistrationSymbols.endRodata], rodata <= lo, hi <= er else {
                    let end = named[RegistrationSymbols.endRodata].map { "0x" + Hex.number($0) } ?? "not sent"
                    return ("__start_ro_after_init 0x\(Hex.number(lo)) .. __end_ro_after_init 0x\(Hex.number(hi)) lies outside rodata [0x\(Hex.number(rodata)) (the 2 MiB boundary after _etext), __end_rodata \(end)], where vmlinux.lds.h RO_DATA places .data..ro_after_init", facts, names)
                }
            }
        }
        // A core static-call key is kernel data (DEFINE_STATIC_CALL in vmlinux): in the image,
        // never the module area (where a later module's own key would take the core targets
        // listed for it) nor below the image.
        if let s = symbols.firstRecord(where: { isKeyRecord($0) && $0.address < KernelSlide.imageBase }) {
            return ("static-call key '\(s.name)' at 0x\(Hex.number(s.address)) lies outside the kernel image", facts, names)
        }
        // The loader's code helpers (`codeHelpers`) at the record their name resolves to: core
        // text outside init, whatever the record's type letter or export flag. Elsewhere (a
        // module-area page, user space) every return site, static-call NULL form or paravirt
        // site rewritten to them would be a verified jump there.
        if let b = bounds {
            for h in Self.codeHelpers {
                if let a = named[h], !b.isCoreText(a) {
                    return ("'\(h)' at 0x\(Hex.number(a)) lies outside core text [_stext, _etext) (or in init text): the loader's rewrites jump to it", facts, names)
                }
            }
        }
        // The static-call targets the engine derives from the build by name (StaticCallTrust:
        // sched_dynamic_update()'s `__cond_resched`, `preempt_schedule_thunk`, …, each core
        // tracepoint key's iterator `__traceiter_X`), at the record the derivation takes (the first
        // of the name): core functions (kernel/sched/core.c, arch/x86/entry/thunk_64.S,
        // include/linux/tracepoint.h DEFINE_TRACE_FN), in core text outside init, like every
        // `static_call_key` target (`checkGuest`). Elsewhere (an earlier record on a module-area
        // page) every module site of the key could be claimed, or updated, as a call there.
        // The keys those sets are stored under are the core's too: a `__SCT__<name>` trampoline
        // is core text (ARCH_DEFINE_STATIC_CALL_TRAMP in vmlinux; `__SCK__` records are held to
        // the image below): an earlier record on a module-area page would make a key there, where
        // a module's own trampoline may lie, trusted for the core's targets.
        if let b = bounds {
            var bad: String?
            StaticCallTrust.forEachCoreTarget(symbols: named) { k, kn, n, a in
                guard bad == nil else { return }
                if !b.isCoreText(a) {
                    bad = "'\(n)' at 0x\(Hex.number(a)), a static-call target the build trusts for key '\(kn)' (StaticCallTrust), lies outside core text [_stext, _etext) (or in init text)"
                } else if kn.utf8.starts(with: "__SCT__".utf8) && !b.isCoreText(k) {
                    bad = "static-call trampoline '\(kn)' at 0x\(Hex.number(k)), a key the build trusts '\(n)' for (StaticCallTrust), lies outside core text [_stext, _etext) (or in init text)"
                }
            }
            if let bad { return (bad, facts, names) }
        }
        // Every export, whatever its `nm` type letter (the letter is the registration's word, the
        // address is what relocations get): a kernel export is kernel_symbol_value() of a core
        // `__ksymtab` entry, an address in the kernel image (text, rodata, data, bss: below
        // MODULES_VADDR at the guest's slide, `checkGuest`) or, x86-64 SMP
        // (EXPORT_PER_CPU_SYMBOL), a zero-based offset inside the core per-cpu section
        // `[__per_cpu_start, __per_cpu_end)` (vmlinux.lds.h PERCPU_SECTION). Never the module
        // area, user space or anything else a module call could be pointed at.
        // (`__per_cpu_start` is 0 on such a build; when it is not sent, 0 is its bound.)
        func inCorePerCPU(_ a: UInt64) -> Bool {
            guard let end = named[RegistrationSymbols.perCPUEnd], end < KernelSlide.imageBase, (named[RegistrationSymbols.perCPUStart] ?? 0) <= a, a < end else { return false }
            return true
        }
        if let s = symbols.firstRecord(where: { $0.exported && $0.address < KernelSlide.imageBase && !inCorePerCPU($0.address) }) {
            return ("exported symbol '\(s.name)' at 0x\(Hex.number(s.address)) lies neither in the kernel image nor in the core per-cpu section [__per_cpu_start, __per_cpu_end)", facts, names)
        }
        return (nil, facts, names)
    }

    /// This guest's own facts (`pv_ops`, return thunk, capability words, static-call keys) against
    /// the build they claim (`build`, and the function entries in `facts`).
    static func checkGuest(_ r: RegisterGuest, facts: GuestFacts, build: BuildFacts,
                           isStaticCallKey: ((UInt64) -> Bool)? = nil) -> String? {
        let isKey = isStaticCallKey ?? { build.staticCallKeys.contains($0) }
        let bounds = build.bounds
        // x86-64 maps the kernel image in [__START_KERNEL_map, __START_KERNEL_map +
        // KERNEL_IMAGE_SIZE) and modules from MODULES_VADDR = __START_KERNEL_map +
        // KERNEL_IMAGE_SIZE on (arch/x86/include/asm/page_64_types.h, pgtable_64_types.h; KASLR
        // keeps the whole image inside, arch/x86/boot/compressed/kaslr.c). Core and init text at
        // this guest's slide must lie there: each fact below is checked against these bounds, so
        // bounds in the module area would let a module claim the pages every export, `pv_ops`
        // entry and static-call target names.
        if let b = bounds {
            let image = KernelSlide.imageBase..<facts.moduleArea.lowerBound
            for (what, range) in [("core text [_stext, _etext)", Optional(b.coreText)), ("init text [_sinittext, _einittext)", b.initText)] {
                guard let range else { continue }
                guard range.lowerBound >= image.lowerBound, range.upperBound <= image.upperBound else {
                    return "\(what) = [0x\(Hex.number(range.lowerBound)), 0x\(Hex.number(range.upperBound))) at kaslr_slide 0x\(Hex.number(r.kaslrSlide)) lies outside the kernel image mapping [0x\(Hex.number(image.lowerBound)), 0x\(Hex.number(image.upperBound))) (modules are mapped from MODULES_VADDR = __START_KERNEL_map + KERNEL_IMAGE_SIZE on)"
                }
            }
        }
        // An export in the image stays in the image at this slide: below MODULES_VADDR, never on
        // a page a module claim may take (its type letter notwithstanding: checkSymbols).
        if let c = build.exportCeiling, c.address >= facts.moduleArea.lowerBound {
            return "symbol '\(c.name)' (an export or a core static-call key) at 0x\(Hex.number(c.address)) at kaslr_slide 0x\(Hex.number(r.kaslrSlide)) lies outside the kernel image mapping, at or above MODULES_VADDR 0x\(Hex.number(facts.moduleArea.lowerBound)) (a kernel export is an image address or a core per-cpu offset, whatever its type letter)"
        }
        if !r.pvOps.isEmpty {
            guard r.pvOps.count % 8 == 0 else { return "pv_ops is \(r.pvOps.count) bytes, not whole u64 entries" }
            guard let b = bounds else { return "pv_ops is sent without the core text bounds _stext/_etext" }
            for (i, e) in GuestFactsBuilder.pvOpsEntries(r.pvOps).enumerated() where e != 0 && !b.isCoreText(e) {
                return "pv_ops[\(i)] = 0x\(Hex.number(e)) is not in core kernel text"
            }
        }
        if let t = r.returnThunk {
            let known = build.returnThunkAddresses
            guard !known.isEmpty else { return "return_thunk is sent but none of the kernel's return thunks (\(Self.returnThunks.joined(separator: ", "))) is registered" }
            guard known.contains(t) else { return "return_thunk 0x\(Hex.number(t)) is not one of the kernel's return thunks" }
        }
        if !r.cpuCapabilities.isEmpty {
            let words = facts.featureBits.capabilityWords
            guard r.cpuCapabilities.count == words * 4 else {
                return "cpu_caps is \(r.cpuCapabilities.count / 4) words; this kernel build has \(words) (NCAPINTS + NBUGINTS)"
            }
            if let why = mitigationMismatch(r.vulnerabilities, facts) { return why }
        }
        for k in r.staticCallKeys {
            // The key is a core key (or its trampoline): a listed target is trusted only at sites
            // of that key. Any other address — the module area where a later module's own key will
            // be, user space, a function — is no key static_call_add_module() writes a core
            // target for (a module's own key takes its module's defaults: StaticCallTrust.swift).
            guard isKey(k.key) else {
                return "static-call key 0x\(Hex.number(k.key)) is not a registered __SCK__<name> key or __SCT__<name> trampoline in core text"
            }
            for t in [k.current] + k.allowed where t != 0 {
                guard let b = bounds, b.isCoreText(t), facts.functionEntries.contains(t) else {
                    return "static-call key 0x\(Hex.number(k.key)): target 0x\(Hex.number(t)) is not a core-kernel function entry"
                }
            }
        }
        return nil
    }

    /// The vulnerabilities report against the capability bits it implies (fail closed: without a
    /// report the bits cannot be cross-checked, so capability words need one).
    static func mitigationMismatch(_ vulnerabilities: String, _ facts: GuestFacts) -> String? {
        var report: [String: String] = [:]
        for line in vulnerabilities.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            report[String(line[..<colon])] = line[line.index(after: colon)...].trimmingBlanks()
        }
        guard let v2 = report["spectre_v2"] else {
            return "cpu_caps is sent without the vulnerabilities report (spectre_v2 line): the mitigation bits cannot be cross-checked"
        }
        let fb = facts.featureBits
        if v2.containsUTF8("Retpolines") && !facts.has(fb.retpoline) {
            return "vulnerabilities report 'spectre_v2: \(v2)' but X86_FEATURE_RETPOLINE is clear in cpu_caps"
        }
        if v2.containsUTF8("LFENCE") && !facts.has(fb.retpolineLfence) {
            return "vulnerabilities report 'spectre_v2: \(v2)' but X86_FEATURE_RETPOLINE_LFENCE is clear in cpu_caps"
        }
        let rethunkBy = [("retbleed", "untrained return thunk"), ("spec_rstack_overflow", "Safe RET"),
                         ("indirect_target_selection", "return thunks")]
        for (name, needle) in rethunkBy {
            if let v = report[name], v.containsUTF8(needle), !facts.has(fb.rethunk) {
                return "vulnerabilities report '\(name): \(v)' but X86_FEATURE_RETHUNK is clear in cpu_caps"
            }
        }
        // retbleed_select_mitigation() (RETBLEED_MITIGATION_STUFF) and its_select_mitigation()
        // (ITS_MITIGATION_RETPOLINE_STUFF) setup_force_cpu_cap(X86_FEATURE_CALL_DEPTH) (6.12
        // bugs.c); the bit number is the loader's (6.1 has neither the bit nor the mitigation).
        if let cd = facts.kernelRelease.flatMap(ModuleLoader.family(ofRelease:))?.callDepthBit, !facts.has(cd) {
            for (name, needle) in [("retbleed", "Stuffing"), ("indirect_target_selection", "Stuffing")] {
                if let v = report[name], v.containsUTF8(needle) {
                    return "vulnerabilities report '\(name): \(v)' but X86_FEATURE_CALL_DEPTH is clear in cpu_caps"
                }
            }
        }
        return nil
    }

}
