// SPDX-License-Identifier: Apache-2.0
//
// x86 encodings the loader writes: the NOP table, `add_nops()`, `__text_gen_insn()` and
// `optimize_nops()` (arch/x86/kernel/alternative.c, arch/x86/include/asm/text-patching.h, 6.1).

import _ExecGateInternals

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
func genInsn(_ op: UInt8, at addr: UInt64, to dest: UInt64) -> [UInt8]? { genInsnBytes(op, at: addr, to: dest)?.array }

/// `genInsn` held inline (no array: the per-site stages build thousands of these).
@inline(__always) func genInsnBytes(_ op: UInt8, at addr: UInt64, to dest: UInt64) -> SiteBytes? {
    let len: UInt64 = op == 0xeb ? 2 : 5
    let disp = Int64(bitPattern: dest &- (addr &+ len))
    if op == 0xeb {
        guard disp >= -128 && disp <= 127 else { return nil }
        return SiteBytes(raw: 0xeb | UInt64(UInt8(bitPattern: Int8(disp))) << 8, count: 2)
    }
    guard disp >= Int64(Int32.min) && disp <= Int64(Int32.max) else { return nil }
    return SiteBytes(raw: UInt64(op) | UInt64(UInt32(bitPattern: Int32(disp))) << 8, count: 5)
}


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


/// The destination of the rel32 branch in `insn` (the instruction at `site`, `length` bytes, its
/// displacement at `operandAt`) — read through the one bounds-checked reader; nil if `insn` is
/// shorter than the operand.
func rel32Destination(_ insn: [UInt8], operandAt at: Int, site: UInt64, length: Int) -> UInt64? {
    guard let d = insn.getInteger(at: at, as: Int32.self) else { return nil }
    return site &+ UInt64(length) &+ UInt64(bitPattern: Int64(d))
}
