// SPDX-License-Identifier: Apache-2.0
//
// The symbols a register-guest must carry by name (docs/protocol.md "Symbols the VMM must send"),
// besides every export and every text symbol of the build: the ones the verifier's plausibility
// checks (FactsPlausibility) and facts builder (GuestFactsBuilder, KernelBounds) look up by name.
// One list, read by both sides: the verifier takes these names from here, and the capture's
// registration (ExecGateCapture CaptureWire) sends each of them, at the first record of the name,
// whatever its type letter. Two lists drifted apart once: the capture did not send the
// rodata/data-gap and `.data..ro_after_init` bounds the checks need, and its registrations ran with
// those rules off (RegistrationBoundsTests; RegistrationSymbolsTests keeps them one list).

public enum RegistrationSymbols {
    /// Core text (vmlinux.lds.S).
    public static let stext = "_stext", etext = "_etext"
    /// Init text and init memory, freed by free_initmem() after boot.
    public static let sinittext = "_sinittext", einittext = "_einittext"
    public static let initBegin = "__init_begin", initEnd = "__init_end"
    /// The rodata/data gap x86-64 mark_rodata_ro() frees: `[PFN_ALIGN(__end_rodata), _sdata)`.
    public static let endRodata = "__end_rodata", sdata = "_sdata"
    /// The core's `.data..ro_after_init` (RO_AFTER_INIT_DATA): its static keys never change after boot.
    public static let startROAfterInit = "__start_ro_after_init", endROAfterInit = "__end_ro_after_init"
    /// The core per-cpu section; the module per-cpu reserve follows `__per_cpu_end` (percpu_modalloc()).
    public static let perCPUStart = "__per_cpu_start", perCPUEnd = "__per_cpu_end"
    /// The kernel's return thunks (arch/x86/lib/retpoline.S; bugs.c assigns x86_return_thunk only these).
    public static let returnThunks = ["__x86_return_thunk", "retbleed_return_thunk", "srso_return_thunk", "srso_alias_return_thunk", "its_return_thunk"]
    /// Static-call NULL forms (kernel/static_call.c, arch/x86/kernel/static_call.c).
    public static let staticCallReturn0 = "__static_call_return0", staticCallReturn = "__static_call_return"
    /// Paravirt patching (arch/x86/kernel/paravirt.c).
    public static let paravirtNop = "_paravirt_nop", paravirtBUG = "paravirt_BUG"
    /// 6.12's ITS return thunk, a named helper of the loader replay.
    public static let itsReturnThunk = "its_return_thunk"

    /// Bound pairs `lo < hi` a registration with exports must send (FactsPlausibility).
    public static let requiredBoundPairs: [(lo: String, hi: String)] = [
        (sinittext, einittext), (initBegin, initEnd), (endRodata, sdata), (startROAfterInit, endROAfterInit),
    ]

    /// Every name above: what a registration sends by name, whatever the record's type letter.
    public static let all: [String] = [stext, etext, sinittext, einittext, initBegin, initEnd, endRodata, sdata,
                                       startROAfterInit, endROAfterInit, perCPUStart, perCPUEnd,
                                       staticCallReturn0, staticCallReturn, paravirtNop, paravirtBUG] + returnThunks
}
