// SPDX-License-Identifier: Apache-2.0

import ExecGateWire

extension Fixtures {
    /// The image bounds a registration with exports must send besides `_stext`/`_etext`
    /// (FactsPlausibility: init memory, the rodata/data gap, `.data..ro_after_init`), laid out as
    /// x86-64 vmlinux.lds.S does, for synthetic registrations whose core text ends by
    /// 0xffffffff82000000: `__start_ro_after_init` … `__end_rodata` below `_sdata`, init text and
    /// memory after the data.
    public static let syntheticImageBounds: [KernelSymbol] = [
        KernelSymbol(name: "__start_ro_after_init", address: 0xffff_ffff_8240_0000, type: UInt8(ascii: "D"), exported: false),
        KernelSymbol(name: "__end_ro_after_init", address: 0xffff_ffff_8241_0000, type: UInt8(ascii: "D"), exported: false),
        KernelSymbol(name: "__end_rodata", address: 0xffff_ffff_8280_0000, type: UInt8(ascii: "D"), exported: false),
        KernelSymbol(name: "_sdata", address: 0xffff_ffff_82a0_0000, type: UInt8(ascii: "D"), exported: false),
        KernelSymbol(name: "__init_begin", address: 0xffff_ffff_8300_0000, type: UInt8(ascii: "D"), exported: false),
        KernelSymbol(name: "_sinittext", address: 0xffff_ffff_8300_1000, exported: false),
        KernelSymbol(name: "_einittext", address: 0xffff_ffff_8300_2000, exported: false),
        KernelSymbol(name: "__init_end", address: 0xffff_ffff_8300_3000, type: UInt8(ascii: "D"), exported: false),
    ]
}
