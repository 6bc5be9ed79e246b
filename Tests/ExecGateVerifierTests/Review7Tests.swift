// SPDX-License-Identifier: Apache-2.0
//
// Review round 7 (white-box review of the day's changes): attacks on the capture reader's
// cpus.txt parsing and on the registration facts' new checks.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class Review7Tests: XCTestCase {
    /// A copy of the fixture boot (and its parent's load order) in a fresh directory.
    private func copyOfTheFixtureBoot() throws -> String {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus"
        var template = Array("/tmp/review7-capture-XXXXXX".utf8CString)
        let dir = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        XCTAssertEqual(system("cp -r '\(corpus)/.' '\(dir)/'"), 0)
        addTeardownBlock { _ = system("rm -rf '\(dir)'") }
        return dir + "/nokaslr-a"
    }

    /// HOLE (review 7): docs/capture.md: "`cpus.txt` must be a cpulist the kernel prints";
    /// the kernel prints a cpumask as ascending, disjoint runs (cpumap_print_to_pagebuf() →
    /// bitmap_print_list_to_buf(): one `a` or `a-b` per run of set bits, lowest first), so no CPU
    /// appears twice. countCPUs() summed the parts as written: `0,0,0,0` was 4 present CPUs of a
    /// one-CPU list, `0-3,0-3` 8, `3,0` and `0-3,2` read as well — lists no kernel prints, taken
    /// as a guest the capture never described (its SMP/uniprocessor handling included).
    func testACPUListWithARepeatedCPUIsRefused() throws {
        let boot = try copyOfTheFixtureBoot()
        for list in ["0,0,0,0", "0-3,0-3", "3,0", "0-3,2", "0-1,1-2", "2-3,0-1"] {
            try Fixtures.writeFile(boot + "/cpus.txt", Array("present \(list)\npossible \(list)\n".utf8))
            XCTAssertThrowsError(try CaptureBoot.load(boot), list) { e in
                XCTAssertTrue("\(e)".contains("cpus.txt"), "\(list): \(e)")
            }
        }
        // The lists a kernel prints still read, counted by their CPUs.
        for (list, n) in [("0", 1), ("0-3", 4), ("0-1,4,6-7", 5), ("0,2", 2), ("0-8191", 8192)] {
            try Fixtures.writeFile(boot + "/cpus.txt", Array("present \(list)\npossible \(list)\n".utf8))
            let b = try CaptureBoot.load(boot)
            XCTAssertEqual(b.facts.possibleCPUs, n, list)
        }
    }

    /// HOLE (review 7): DocAttack7 required the init bounds so that no export points into the
    /// core's init memory, freed after boot; but free_initmem() is not all the image memory the
    /// kernel frees. x86-64 mark_rodata_ro() (arch/x86/mm/init_64.c, 6.1 and 6.12) also frees the
    /// "unused kernel image (text/rodata gap)": [PFN_ALIGN(_etext), __start_rodata), where
    /// vmlinux.lds.S puts __start_rodata at the next 2 MiB boundary (X86_ALIGN_RODATA_BEGIN,
    /// `. = ALIGN(HPAGE_SIZE)`; the fixture: _etext 0x…81e01d32, __start_rodata 0x…82000000).
    /// The exported `_printk`, sent as data (`D`: the core-text rule does not apply) inside that
    /// gap, registered, and 8021q's `call _printk` was explained as a verified call into pages
    /// the page allocator has since handed out again (what is there is the guest's choice).
    func testAnExportInTheFreedTextRodataGapIsRefused() throws {
        let boot = try CaptureBoot.load(EndStateVerifierTests.bootDir)
        let honest = try boot.registration(guestID: "g")
        let etext = try XCTUnwrap(honest.symbols.first { $0.name == "_etext" }?.address)
        let inGap = ((etext + 0xfff) & ~0xfff) + 0x1000
        XCTAssertLessThan(inGap, (etext + 0x1f_ffff) & ~0x1f_ffff, "the fixture's gap holds the address")
        var r = honest
        let i = try XCTUnwrap(r.symbols.firstIndex { $0.name == "_printk" && $0.exported })
        r.symbols[i].type = UInt8(ascii: "D")
        r.symbols[i].address = inGap
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        let reply = v.respond(to: .registerGuest(r), requestDigest: [])
        if case .error(let e) = reply {
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
        } else {
            let verdict = try DocAttack7Tests.printkCallerVerdict(v, boot)
            XCTFail("registered _printk (D) at 0x\(String(inGap, radix: 16)) in the freed text/rodata gap; 8021q's call _printk there: \(verdict.decision) \(verdict.message)")
        }
        // Control: the real build registers.
        let honestVerifier = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply = honestVerifier.respond(to: .registerGuest(honest), requestDigest: []) else { return XCTFail("the real registration") }
    }
}
