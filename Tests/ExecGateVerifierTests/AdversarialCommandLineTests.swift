// SPDX-License-Identifier: Apache-2.0
//
// Adversarial review of the one replay decision taken from the guest's command line (register-guest
// `cmdline`): uniprocessor `lock` patching. alternative_instructions() (6.1 and 6.12
// arch/x86/kernel/alternative.c) patches every `lock` prefix to `ds` when
//     !noreplace_smp && (num_present_cpus() == 1 || setup_max_cpus <= 1)
// and module_finalize() -> alternatives_smp_module_add() does the same to each module loaded while
// `uniproc_patched`. The guest chooses the command line's bytes (the VMM reads them at the trusted
// point, but the guest's boot loader wrote them), so the replay must read them exactly as the
// kernel's parser does, or it explains lock-free atomics in a kernel that runs SMP:
//   - parse_args() (kernel/params.c) splits with next_arg() (lib/cmdline.c): isspace() of
//     lib/ctype.c (9-13, 32 and 0xa0), double quotes group, and stops at `--` (what follows is
//     init's argv, never a kernel parameter);
//   - `nosmp` and `maxcpus` are early_param()s (kernel/smp.c) matched by parameq() (`-` == `_`);
//     maxcpus() reads its value with get_option() (lib/cmdline.c: simple_strtoull() base 0, a
//     leading `-` negates) into `unsigned int setup_max_cpus` (include/linux/smp.h), so the test
//     `setup_max_cpus <= 1` is unsigned;
//   - `noreplace-smp` is a __setup() (alternative.c), found by obsolete_checksetup() (init/main.c)
//     with parameqn(line, "noreplace-smp", 13): any parameter whose first 13 bytes match, `-` and
//     `_` alike, with or without a value.

import ExecGateVerifier
import ExecGateWire
import XCTest

final class AdversarialCommandLineTests: XCTestCase {
    private func up(_ cmdline: String, present: UInt32 = 4) -> Bool {
        GuestFactsBuilder.facts(from: RegisterGuest(guestID: "g", commandLine: cmdline, presentCPUs: present, possibleCPUs: 8)).uniprocessorPatched
    }

    /// HOLE: `maxcpus=1` after `--` is init's argument (parse_args() stops at `--`), so the kernel
    /// runs SMP with its `lock` prefixes; the replay took it as a kernel parameter and explained
    /// `ds` prefixes instead.
    func testMaxcpusAfterDoubleDashIsInitsArgument() {
        XCTAssertFalse(up("root=/dev/vda -- maxcpus=1"))
        XCTAssertFalse(up("quiet -- nosmp"))
        XCTAssertTrue(up("maxcpus=1 -- single"))
    }

    /// HOLE: `maxcpus=-1` is 0xffffffff in `unsigned int setup_max_cpus`: `setup_max_cpus <= 1` is
    /// false and the kernel stays SMP; the replay compared a signed -1.
    func testNegativeMaxcpusIsUnsigned() {
        XCTAssertFalse(up("maxcpus=-1"))
        XCTAssertFalse(up("maxcpus=-2"))
        // get_option(): -(4294967295) is 1 in an int; "+1" parses no digit and stores 0.
        XCTAssertTrue(up("maxcpus=-4294967295"))
        XCTAssertTrue(up("maxcpus=+1"))
    }

    /// HOLE: a quoted value holding `nosmp` is one parameter for next_arg(); the replay split it on
    /// the space inside the quotes and took `nosmp` as a parameter.
    func testNosmpInsideAQuotedValueIsNoParameter() {
        XCTAssertFalse(up("dyndbg=\"file x nosmp \" quiet"))
        XCTAssertFalse(up("init=\"/bin/sh maxcpus=1\""))
    }

    /// HOLE: obsolete_checksetup() matches `noreplace-smp` by parameqn() on its first 13 bytes,
    /// `-` and `_` alike: `noreplace_smp`, `noreplace-smp=1` and `noreplace-smpX` all set
    /// noreplace_smp, and the kernel keeps every `lock` prefix on its single CPU; the replay
    /// knew only the exact word and explained `ds` prefixes.
    func testNoreplaceSmpSpellingsTheKernelAccepts() {
        XCTAssertFalse(up("noreplace_smp", present: 1))
        XCTAssertFalse(up("noreplace-smp=0", present: 1))
        XCTAssertFalse(up("noreplace-smpX", present: 1))
        XCTAssertFalse(up("\"noreplace-smp\"", present: 1))
        XCTAssertTrue(up("noreplace-sm", present: 1))
        XCTAssertTrue(up("xnoreplace-smp", present: 1))
    }

    /// HOLE: isspace() (lib/ctype.c) is 9-13, 32 and 0xa0; the replay split only on space, tab and
    /// newline (and Swift Characters: "\r\n" is one), so `noreplace-smp` after a carriage
    /// return, a vertical tab, a form feed or a 0xa0 byte (the second byte of UTF-8 "à") was
    /// part of the word before it.
    func testEveryKernelSpaceSeparates() {
        for sep in ["\r", "\u{0B}", "\u{0C}", "\r\n", "\u{E0}"] {
            XCTAssertFalse(up("quiet\(sep)noreplace-smp", present: 1), "separator \(Array(sep.utf8))")
        }
    }

    /// The parse the kernel makes, in the direction that patches (kept, cheap): get_option()
    /// takes hex, octal and trailing junk; `maxcpus` with no value changes nothing; `nosmp=x` is
    /// nosmp; the early params are matched by parameq() (`-` == `_`).
    func testKernelParseOfMaxcpusAndNosmp() {
        XCTAssertTrue(up("maxcpus=0x1"))
        XCTAssertTrue(up("maxcpus=01"))
        XCTAssertTrue(up("maxcpus=08"))  // octal: "0" then '8' stops the parse
        XCTAssertTrue(up("maxcpus=1abc"))
        XCTAssertTrue(up("maxcpus=4294967297"))  // truncated to the int 1
        XCTAssertTrue(up("maxcpus=\"1\""))
        XCTAssertTrue(up("nosmp=1"))
        XCTAssertTrue(up("  nosmp  "))
        XCTAssertFalse(up("maxcpus"))
        XCTAssertFalse(up("maxcpus="))
        XCTAssertFalse(up("maxcpus=2"))
        XCTAssertTrue(up("maxcpus=0x"))  // "0x" without a hex digit: octal "0", then 'x' stops it
        XCTAssertTrue(up("nosmp maxcpus=1"))
        XCTAssertFalse(up("nosmp maxcpus=4"))  // the later value wins
        XCTAssertTrue(up("", present: 1))
        XCTAssertFalse(up(""))
    }
}
