// SPDX-License-Identifier: Apache-2.0
//
// What the guest's kernel command line says about SMP alternatives, read the way start_kernel()
// reads it (6.1.192 and 6.12.117 alike). alternative_instructions() (arch/x86/kernel/alternative.c)
// rewrites every `lock` prefix to `ds` when
//
//     !noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)
//
// and the two command-line inputs are set by:
//   - `maxcpus=N` (early_param, kernel/smp.c maxcpus()): get_option(&str, &setup_max_cpus), i.e.
//     simple_strtoull(base 0: `0x` hex, `0` octal, else decimal; digits stop at the first
//     non-digit; wrapping), negated after a leading `-`, truncated to the 32-bit unsigned
//     setup_max_cpus (NR_CPUS until set). A word with no value or an empty one changes nothing;
//     any other value sets it (`maxcpus=abc` sets 0: get_option stores before it checks).
//   - `nosmp` (early_param, kernel/smp.c nosmp()): setup_max_cpus = 0, whatever its value.
//     Early parameters match by name exactly, `-` and `_` alike (do_early_param(): parameq()).
//   - `noreplace-smp` (__setup, arch/x86/kernel/alternative.c): not an early parameter, so it is
//     seen by unknown_bootoption() → obsolete_checksetup(), which matches a __setup name as a
//     PREFIX of the word (parameqn(line, "noreplace-smp", 13)): `noreplace_smp=0` and
//     `noreplace-smpx` set it too.
// Both passes split words with next_arg() (lib/cmdline.c: whitespace is the kernel's isspace(),
// double quotes group and are stripped) and stop at a bare `--` (parse_args(), kernel/params.c):
// what follows is init's, never the kernel's. The guest's command line is a registration fact;
// reading it any other way than the kernel does would make the replay expect the wrong prefix
// (a false denial) or admit both prefixes where the kernel left only `lock` (a false allow).

struct SMPCommandLine: Equatable {
    /// `noreplace_smp` (alternative.c).
    var noreplaceSMP = false
    /// `setup_max_cpus` (kernel/smp.c): NR_CPUS until the command line sets it; only `<= 1` matters.
    var setupMaxCPUs = UInt32.max

    init(_ commandLine: String) {
        // A C string: the kernel's copy ends at the first NUL.
        var b = Array(commandLine.utf8)
        if let z = b.firstIndex(of: 0) { b.removeSubrange(z...) }
        var at = Self.skipSpaces(b, 0)
        while at < b.count {
            let (param, val, next) = Self.nextArg(b, at)
            at = next
            if val == nil && param.elementsEqual("--".utf8) { break }
            if Self.parameq(param, "nosmp") { setupMaxCPUs = 0 }
            if Self.parameq(param, "maxcpus"), let v = val, let n = Self.getOption(v) { setupMaxCPUs = n }
            if param.count >= 13 && Self.parameq(param.prefix(13), "noreplace-smp") { noreplaceSMP = true }
        }
    }

    /// The kernel's rule, given the guest's present CPU count.
    func uniprocessorPatched(presentCPUs: UInt32) -> Bool {
        !noreplaceSMP && (presentCPUs == 1 || setupMaxCPUs <= 1)
    }

    /// isspace() of the kernel's ctype table (lib/ctype.c): \t \n \v \f \r, space, and 0xA0.
    static func isSpace(_ c: UInt8) -> Bool { (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0xa0 }

    static func skipSpaces(_ b: [UInt8], _ from: Int) -> Int {
        var i = from
        while i < b.count && isSpace(b[i]) { i += 1 }
        return i
    }

    /// next_arg() (lib/cmdline.c): one word from `from` → its parameter name, its value (nil
    /// without `=`), and where the next word starts.
    static func nextArg(_ b: [UInt8], _ from: Int) -> (param: ArraySlice<UInt8>, val: ArraySlice<UInt8>?, next: Int) {
        var a = from
        var inQuote = false, quoted = false
        if a < b.count && b[a] == UInt8(ascii: "\"") { a += 1; inQuote = true; quoted = true }
        var i = 0, equals = 0
        while a + i < b.count {
            let c = b[a + i]
            if isSpace(c) && !inQuote { break }
            if equals == 0 && c == UInt8(ascii: "=") { equals = i }
            if c == UInt8(ascii: "\"") { inQuote.toggle() }
            i += 1
        }
        // The kernel writes NULs: at the `=` (ends the name), over a closing quote (ends the value,
        // or the name of a quoted word without `=`) and at the terminating space.
        var end = a + i
        var val: ArraySlice<UInt8>? = nil
        var valStart = 0
        if equals != 0 {
            valStart = a + equals + 1
            if valStart < end && b[valStart] == UInt8(ascii: "\"") {
                valStart += 1
                if b[a + i - 1] == UInt8(ascii: "\"") { end = a + i - 1 }
            }
        }
        if quoted && i > 0 && b[a + i - 1] == UInt8(ascii: "\"") { end = a + i - 1 }
        let param = equals != 0 ? b[a..<(a + equals)] : b[a..<max(a, end)]
        if equals != 0 { val = b[valStart..<max(valStart, end)] }
        let next = a + i < b.count ? skipSpaces(b, a + i + 1) : b.count
        return (param, val, next)
    }

    /// parameq() (kernel/params.c): equal names, `-` and `_` alike.
    static func parameq(_ a: ArraySlice<UInt8>, _ name: String) -> Bool {
        let d: (UInt8) -> UInt8 = { $0 == UInt8(ascii: "-") ? UInt8(ascii: "_") : $0 }
        return a.count == name.utf8.count && zip(a, name.utf8).allSatisfy { d($0) == d($1) }
    }

    /// get_option() into an unsigned int: nil when it stores nothing (an empty value).
    static func getOption(_ v: ArraySlice<UInt8>) -> UInt32? {
        guard let first = v.first else { return nil }
        let negative = first == UInt8(ascii: "-")
        let n = simpleStrtoull(negative ? v.dropFirst() : v)
        return UInt32(truncatingIfNeeded: negative ? 0 &- n : n)
    }

    /// simple_strtoull(cp, NULL, 0) (lib/vsprintf.c, lib/kstrtox.c _parse_integer_fixup_radix()
    /// and _parse_integer_limit()): the radix from the prefix, digits until the first that is
    /// not one of it, wrapping on overflow. No bound on the work beyond the word's length.
    static func simpleStrtoull(_ s: ArraySlice<UInt8>) -> UInt64 {
        let c = Array(s)
        func at(_ i: Int) -> UInt8 { i < c.count ? c[i] : 0 }
        func isXDigit(_ x: UInt8) -> Bool { (x >= 0x30 && x <= 0x39) || ((x | 0x20) >= 0x61 && (x | 0x20) <= 0x66) }
        var base: UInt64 = 10, i = 0
        if at(0) == UInt8(ascii: "0") {
            if at(1) | 0x20 == UInt8(ascii: "x") && isXDigit(at(2)) { base = 16; i = 2 } else { base = 8 }
        }
        var res: UInt64 = 0
        while i < c.count {
            let ch = c[i], lc = ch | 0x20
            let v: UInt64
            if ch >= 0x30 && ch <= 0x39 { v = UInt64(ch - 0x30) } else if lc >= 0x61 && lc <= 0x66 { v = UInt64(lc - 0x61 + 10) } else { break }
            if v >= base { break }
            res = res &* base &+ v
            i += 1
        }
        return res
    }
}
