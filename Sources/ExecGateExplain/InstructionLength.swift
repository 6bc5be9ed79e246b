// SPDX-License-Identifier: Apache-2.0
//
// An x86-64 instruction-length decoder: the subset of the kernel's `insn_decode_kernel()`
// (arch/x86/lib/insn.c, table-driven by arch/x86/lib/x86-opcode-map.txt) that the module loader's
// patching depends on: `optimize_nops()` walks instruction boundaries, `apply_returns()` /
// `apply_retpolines()` decode the site, `arch_jump_entry_size()` takes the length at a jump label.
//
// Only lengths and the opcode bytes are produced. Invalid encodings in 64-bit mode return nil, as
// the kernel's decoder fails on them (optimize_nops then stops, exactly like the kernel).

/// A decoded instruction: its length, the first opcode byte (after prefixes/REX), the second
/// byte when the first is 0x0f, and the immediate (sign-extended) for rel8/rel32 branches.
public struct DecodedInstruction: Equatable, Sendable {
    public let length: Int
    public let opcode0: UInt8
    public let opcode1: UInt8
    /// Signed immediate for `e8`/`e9`/`eb`/`7x`/`0f 8x` (branch displacement); 0 otherwise.
    public let immediate: Int64
}

public enum InstructionDecoder {
    /// The kernel's `MAX_INSN_SIZE`.
    public static let maxLength = 15

    /// Decode the instruction at `offset` of `bytes`; bytes past the end of `bytes` are unknown and
    /// make the decode fail (nil) if they are needed.
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>, at offset: Int) -> DecodedInstruction? {
        var i = offset
        let end = min(bytes.count, offset + maxLength)
        // The return, call and jump sites the stages decode most: `c3`, `e8`/`e9` rel32, `eb`
        // rel8 with no prefix, answered as the full decode below answers them (no prefix, no REX:
        // the one-byte map's `finish` with the immediate's size).
        if offset >= 0 && offset < end {
            switch bytes[offset] {
            case 0xc3: return DecodedInstruction(length: 1, opcode0: 0xc3, opcode1: 0, immediate: 0)
            case let op where (op == 0xe8 || op == 0xe9) && offset + 5 <= end:
                let u = UInt32(bytes[offset + 1]) | UInt32(bytes[offset + 2]) << 8 | UInt32(bytes[offset + 3]) << 16 | UInt32(bytes[offset + 4]) << 24
                return DecodedInstruction(length: 5, opcode0: bytes[offset], opcode1: 0, immediate: Int64(Int32(bitPattern: u)))
            case 0xeb where offset + 2 <= end:
                return DecodedInstruction(length: 2, opcode0: 0xeb, opcode1: 0, immediate: Int64(Int8(bitPattern: bytes[offset + 1])))
            default: break
            }
        }
        @inline(__always) func next() -> UInt8? { if i < end { defer { i += 1 }; return bytes[i] }; return nil }
        var opsize16 = false, addr32 = false, rexW = false
        var b: UInt8 = 0
        prefixes: while true {
            guard let x = next() else { return nil }
            switch x {
            case 0x66: opsize16 = true
            case 0x67: addr32 = true
            case 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65: continue
            default: b = x; break prefixes
            }
        }
        // REX (must immediately precede the opcode).
        if b & 0xf0 == 0x40 {
            rexW = b & 0x08 != 0
            guard let x = next() else { return nil }
            b = x
        }
        // `Iz`: 2 bytes with an operand-size prefix, unless REX.W overrides it (insn_get_prefixes():
        // `if (X86_REX_W(b)) insn->opnd_bytes = 8`; `__get_immv32()`: 8 → 4 bytes).
        let immZ = opsize16 && !rexW ? 2 : 4
        func modrm() -> Bool {
            guard let m = next() else { return false }
            let mod = m >> 6, rm = m & 7
            if mod == 3 { return true }
            var disp = 0
            if rm == 4 {
                guard let sib = next() else { return false }
                if mod == 0 && sib & 7 == 5 { disp = 4 }
            } else if mod == 0 && rm == 5 { disp = 4 }
            if mod == 1 { disp = 1 } else if mod == 2 { disp = 4 }
            i += disp
            return i <= end
        }
        func finish(_ op0: UInt8, _ op1: UInt8 = 0, imm: Int = 0, rel: Bool = false) -> DecodedInstruction? {
            let immStart = i
            i += imm
            guard i <= end else { return nil }
            var v: Int64 = 0
            if rel {
                if imm == 1 { v = Int64(Int8(bitPattern: bytes[immStart])) }
                else if imm == 4 {
                    let u = UInt32(bytes[immStart]) | UInt32(bytes[immStart + 1]) << 8 | UInt32(bytes[immStart + 2]) << 16 | UInt32(bytes[immStart + 3]) << 24
                    v = Int64(Int32(bitPattern: u))
                } else if imm == 2 { v = Int64(Int16(bitPattern: UInt16(bytes[immStart]) | UInt16(bytes[immStart + 1]) << 8)) }
            }
            return DecodedInstruction(length: i - offset, opcode0: op0, opcode1: op1, immediate: v)
        }
        switch b {
        case 0x0f:
            guard let o1 = next() else { return nil }
            switch o1 {
            case 0x38:
                guard let o2 = next() else { return nil }
                _ = o2
                guard modrm() else { return nil }
                return finish(0x0f, o1)
            case 0x3a:
                guard next() != nil, modrm() else { return nil }
                return finish(0x0f, o1, imm: 1)
            case 0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0x0e, 0x30...0x37, 0x77, 0xa0, 0xa1, 0xa2, 0xa8, 0xa9, 0xaa, 0xc8...0xcf:
                return finish(0x0f, o1)
            case 0x04, 0x0a, 0x0c, 0x24...0x27, 0x36, 0x39, 0x3b...0x3f, 0xff:
                return nil  // undefined in 64-bit mode (0f ff is UD0: needs ModRM; the kernel decodes it, we stay conservative)
            case 0x80...0x8f:
                // Jcc `Jz (f64)`: rel32 in 64-bit mode whatever a 66 prefix says (see e8/e9).
                return finish(0x0f, o1, imm: 4, rel: true)
            case 0x70...0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6, 0x0f:
                guard modrm() else { return nil }
                return finish(0x0f, o1, imm: 1)
            default:
                guard modrm() else { return nil }
                return finish(0x0f, o1)
            }
        case 0xc4, 0xc5:
            // VEX (64-bit mode: always VEX, never LES/LDS).
            var map: UInt8 = 1
            if b == 0xc4 {
                guard let p0 = next(), next() != nil else { return nil }
                map = p0 & 0x1f
            } else {
                guard next() != nil else { return nil }
            }
            guard let op = next() else { return nil }
            guard map >= 1 && map <= 3 else { return nil }
            if map == 1 && op == 0x77 { return finish(b, op) }  // vzeroupper/vzeroall: no ModRM
            guard modrm() else { return nil }
            let imm = map == 3 || (map == 1 && (op == 0x70 || op == 0x71 || op == 0x72 || op == 0x73 || op == 0xc2 || op == 0xc4 || op == 0xc5 || op == 0xc6)) ? 1 : 0
            return finish(b, op, imm: imm)
        case 0x62:
            // EVEX: 62 P0 P1 P2 opcode ModRM [imm8].
            guard let p0 = next(), next() != nil, next() != nil, let op = next() else { return nil }
            let map = p0 & 0x07
            guard map >= 1 && map <= 3 else { return nil }
            guard modrm() else { return nil }
            let imm = map == 3 || (map == 1 && (op == 0x70 || op == 0x71 || op == 0x72 || op == 0x73 || op == 0xc2 || op == 0xc6)) ? 1 : 0
            return finish(b, op, imm: imm)
        default:
            break
        }
        // One-byte opcode map.
        switch b {
        case 0x06, 0x07, 0x0e, 0x16, 0x17, 0x1e, 0x1f, 0x27, 0x2f, 0x37, 0x3f, 0x60, 0x61, 0x82, 0x9a, 0xce, 0xd4, 0xd5, 0xd6, 0xea:
            return nil  // invalid in 64-bit mode
        case 0x00...0x3f:
            switch b & 7 {
            case 0, 1, 2, 3: guard modrm() else { return nil }; return finish(b)
            case 4: return finish(b, imm: 1)
            default: return finish(b, imm: immZ)
            }
        case 0x50...0x5f, 0x6c...0x6f, 0x90...0x99, 0x9b...0x9f, 0xa4...0xa7, 0xaa...0xaf, 0xc3, 0xc9, 0xcb, 0xcc, 0xcf,
             0xd7, 0xec...0xef, 0xf1, 0xf4, 0xf5, 0xf8...0xfd:
            return finish(b)
        case 0x63, 0x84...0x8f, 0xd0...0xd3, 0xd8...0xdf, 0xfe, 0xff:
            guard modrm() else { return nil }; return finish(b)
        case 0x68: return finish(b, imm: immZ)
        case 0x69, 0x81, 0xc7: guard modrm() else { return nil }; return finish(b, imm: immZ)
        case 0x6a, 0xa8, 0xb0...0xb7, 0xcd, 0xe4...0xe7: return finish(b, imm: 1)
        case 0x6b, 0x80, 0x83, 0xc0, 0xc1, 0xc6: guard modrm() else { return nil }; return finish(b, imm: 1)
        case 0x70...0x7f, 0xe0...0xe3, 0xeb: return finish(b, imm: 1, rel: true)
        case 0xa0...0xa3: return finish(b, imm: addr32 ? 4 : 8)
        case 0xa9: return finish(b, imm: immZ)
        case 0xb8...0xbf: return finish(b, imm: rexW ? 8 : immZ)
        case 0xc2, 0xca: return finish(b, imm: 2)
        case 0xc8: return finish(b, imm: 3)
        // `CALL Jz (f64)`, `JMP-near Jz (f64)` (x86-opcode-map.txt): insn_get_modrm() forces
        // opnd_bytes = 8 in 64-bit mode for f64 opcodes, so the immediate is a rel32 even after a
        // 66 prefix (as Intel CPUs execute it), never the rel16 an operand-size prefix would give.
        case 0xe8, 0xe9: return finish(b, imm: 4, rel: true)
        case 0xf6, 0xf7:
            guard i < end else { return nil }
            let reg = (bytes[i] >> 3) & 7
            guard modrm() else { return nil }
            return finish(b, imm: reg <= 1 ? (b == 0xf6 ? 1 : immZ) : 0)
        default:
            return nil
        }
    }
}
