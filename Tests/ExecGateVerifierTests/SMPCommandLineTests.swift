// SPDX-License-Identifier: Apache-2.0
//
// The uniprocessor-patching fact from a registration's command line, as start_kernel() parses it
// (SMPCommandLine.swift): alternative_instructions() rewrites `lock` to `ds` when
// `!noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)`. Each case is a command
// line whose words the old whitespace split read differently from the kernel; a wrong fact makes
// the replay expect `ds` where the kernel left `lock` (a false denial) or, with more CPUs
// possible, admit `ds` on an SMP guest whose kernel never made a site uniprocessor (a false allow).

import ExecGateVerifier
import ExecGateWire
import XCTest

final class SMPCommandLineTests: XCTestCase {
    func patched(_ cmdline: String, present: UInt32 = 2, possible: UInt32 = 4) -> Bool {
        GuestFactsBuilder.facts(from: RegisterGuest(guestID: "g", commandLine: cmdline, presentCPUs: present, possibleCPUs: possible))
            .uniprocessorPatched
    }

    func testPlainWords() {
        XCTAssertTrue(patched("console=ttyS0 quiet", present: 1))
        XCTAssertFalse(patched("console=ttyS0 quiet"))
        XCTAssertTrue(patched("quiet maxcpus=1"))
        XCTAssertTrue(patched("quiet maxcpus=0"))
        XCTAssertFalse(patched("quiet maxcpus=2"))
        XCTAssertTrue(patched("nosmp"))
        XCTAssertFalse(patched("noreplace-smp", present: 1))
        XCTAssertFalse(patched("maxcpus=1 noreplace-smp"))
        // The last word wins (parse_args() runs each handler in order).
        XCTAssertFalse(patched("maxcpus=1 maxcpus=4"))
        XCTAssertTrue(patched("maxcpus=4 nosmp"))
    }

    /// get_option() → simple_strtoull(base 0) into the unsigned setup_max_cpus (kernel/smp.c maxcpus()).
    func testMaxcpusValueAsGetOption() {
        XCTAssertTrue(patched("maxcpus=0x1"))       // hex
        XCTAssertTrue(patched("maxcpus=01"))        // octal
        XCTAssertTrue(patched("maxcpus=1cpu"))      // digits stop at the first non-digit
        XCTAssertTrue(patched("maxcpus=abc"))       // stores 0 before it sees no digit
        XCTAssertTrue(patched("maxcpus=08"))        // octal: '8' is no digit, 0
        XCTAssertFalse(patched("maxcpus=-1"))       // -1 → UINT_MAX
        XCTAssertFalse(patched("maxcpus=4294967297 maxcpus=0x100000002")) // truncated to 32 bits: 2
        XCTAssertTrue(patched("maxcpus=4294967297"))                       // 2^32 + 1 → 1
        XCTAssertFalse(patched("maxcpus="))         // empty: unchanged
        XCTAssertFalse(patched("maxcpus"))          // no value: unchanged
        XCTAssertTrue(patched("maxcpus=\"1\""))     // quotes stripped (next_arg())
        XCTAssertTrue(patched("\"maxcpus=1\""))
        XCTAssertFalse(patched("max_cpus=1"))       // another name: early parameters match whole names
    }

    /// Early parameters match whole names with `-` and `_` alike (parameq()); `nosmp` takes any value.
    func testNosmpAnyValue() {
        XCTAssertTrue(patched("nosmp=1"))
        XCTAssertTrue(patched("nosmp=0"))
        XCTAssertFalse(patched("nosmpx"))
    }

    /// noreplace-smp is a __setup(): obsolete_checksetup() matches its name as a prefix of the word.
    func testNoreplaceSMPPrefix() {
        XCTAssertFalse(patched("noreplace_smp", present: 1))
        XCTAssertFalse(patched("noreplace-smp=0", present: 1))
        XCTAssertFalse(patched("noreplace-smpx", present: 1))
        XCTAssertTrue(patched("noreplace-sm", present: 1))
    }

    /// parse_args() stops at a bare `--`: the rest is init's.
    func testWordsAfterDashesAreInits() {
        XCTAssertFalse(patched("quiet -- maxcpus=1"))
        XCTAssertFalse(patched("quiet -- nosmp"))
        XCTAssertTrue(patched("quiet -- noreplace-smp", present: 1))
        XCTAssertTrue(patched("quiet --=x maxcpus=1"))  // `--=x` has a value: not the end
    }

    /// Whitespace is the kernel's isspace() (vertical tab, form feed, CR, 0xA0 too); a NUL ends the string.
    func testKernelWhitespaceAndNUL() {
        XCTAssertTrue(patched("quiet\u{0B}maxcpus=1"))
        XCTAssertTrue(patched("quiet\rmaxcpus=1"))
        XCTAssertFalse(patched("quiet\u{0}maxcpus=1"))
        XCTAssertTrue(patched("a=\"x y\" maxcpus=1"))    // a quoted value holds its space
        XCTAssertFalse(patched("a=\"x maxcpus=1"))       // an open quote runs to the end
    }

    // Found independently by the adversarial review (round 11) against the same kernel sources,
    // each case a command line the old whitespace split read differently from the kernel.

    /// HOLE: `maxcpus=1` after `--` is init's argument (parse_args() stops at `--`), so the kernel
    /// runs SMP with its `lock` prefixes; the replay took it as a kernel parameter and explained
    /// `ds` prefixes instead.
    func testMaxcpusAfterDoubleDashIsInitsArgument() {
        XCTAssertFalse(patched("root=/dev/vda -- maxcpus=1"))
        XCTAssertFalse(patched("quiet -- nosmp"))
        XCTAssertTrue(patched("maxcpus=1 -- single"))
    }

    /// HOLE: `maxcpus=-1` is 0xffffffff in `unsigned int setup_max_cpus`: `setup_max_cpus <= 1` is
    /// false and the kernel stays SMP; the replay compared a signed -1.
    func testNegativeMaxcpusIsUnsigned() {
        XCTAssertFalse(patched("maxcpus=-1"))
        XCTAssertFalse(patched("maxcpus=-2"))
        // get_option(): -(4294967295) is 1 in an int; "+1" parses no digit and stores 0.
        XCTAssertTrue(patched("maxcpus=-4294967295"))
        XCTAssertTrue(patched("maxcpus=+1"))
    }

    /// HOLE: a quoted value holding `nosmp` is one parameter for next_arg(); the replay split it on
    /// the space inside the quotes and took `nosmp` as a parameter.
    func testNosmpInsideAQuotedValueIsNoParameter() {
        XCTAssertFalse(patched("dyndbg=\"file x nosmp \" quiet"))
        XCTAssertFalse(patched("init=\"/bin/sh maxcpus=1\""))
    }

    /// HOLE: obsolete_checksetpatched() matches `noreplace-smp` by parameqn() on its first 13 bytes,
    /// `-` and `_` alike: `noreplace_smp`, `noreplace-smp=1` and `noreplace-smpX` all set
    /// noreplace_smp, and the kernel keeps every `lock` prefix on its single CPU; the replay
    /// knew only the exact word and explained `ds` prefixes.
    func testNoreplaceSmpSpellingsTheKernelAccepts() {
        XCTAssertFalse(patched("noreplace_smp", present: 1))
        XCTAssertFalse(patched("noreplace-smp=0", present: 1))
        XCTAssertFalse(patched("noreplace-smpX", present: 1))
        XCTAssertFalse(patched("\"noreplace-smp\"", present: 1))
        XCTAssertTrue(patched("noreplace-sm", present: 1))
        XCTAssertTrue(patched("xnoreplace-smp", present: 1))
    }

    /// HOLE: isspace() (lib/ctype.c) is 9-13, 32 and 0xa0; the replay split only on space, tab and
    /// newline (and Swift Characters: "\r\n" is one), so `noreplace-smp` after a carriage
    /// return, a vertical tab, a form feed or a 0xa0 byte (the second byte of UTF-8 "à") was
    /// part of the word before it.
    func testEveryKernelSpaceSeparates() {
        for sep in ["\r", "\u{0B}", "\u{0C}", "\r\n", "\u{E0}"] {
            XCTAssertFalse(patched("quiet\(sep)noreplace-smp", present: 1), "separator \(Array(sep.utf8))")
        }
    }

    /// The parse the kernel makes, in the direction that patches (kept, cheap): get_option()
    /// takes hex, octal and trailing junk; `maxcpus` with no value changes nothing; `nosmp=x` is
    /// nosmp; the early params are matched by parameq() (`-` == `_`).
    func testKernelParseOfMaxcpusAndNosmp() {
        XCTAssertTrue(patched("maxcpus=0x1"))
        XCTAssertTrue(patched("maxcpus=01"))
        XCTAssertTrue(patched("maxcpus=08"))  // octal: "0" then '8' stops the parse
        XCTAssertTrue(patched("maxcpus=1abc"))
        XCTAssertTrue(patched("maxcpus=4294967297"))  // truncated to the int 1
        XCTAssertTrue(patched("maxcpus=\"1\""))
        XCTAssertTrue(patched("nosmp=1"))
        XCTAssertTrue(patched("  nosmp  "))
        XCTAssertFalse(patched("maxcpus"))
        XCTAssertFalse(patched("maxcpus="))
        XCTAssertFalse(patched("maxcpus=2"))
        XCTAssertTrue(patched("maxcpus=0x"))  // "0x" without a hex digit: octal "0", then 'x' stops it
        XCTAssertTrue(patched("nosmp maxcpus=1"))
        XCTAssertFalse(patched("nosmp maxcpus=4"))  // the later value wins
        XCTAssertTrue(patched("", present: 1))
        XCTAssertFalse(patched(""))
    }
}
