// SPDX-License-Identifier: Apache-2.0
//
// Attack round 3 from the docs: 6.12 placement (docs/kernels/6.12-loader.md §4.8; docs/trust.md
// "Init memory"): against live modules the verifier holds only MOD_TEXT and MOD_INIT_TEXT, every
// other base is the guest's word, checked only against the module's own allocations. What the
// explainer trusts by address from live modules is their static-call keys (the targets and states
// of keys they define or call through); a key at a live key's address would inherit them.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class DocAttack3PlacementTests: XCTestCase {
    /// Failed attack kept: a live module's static-call key inside each one of this module's seven
    /// allocations in turn (MOD_TEXT, MOD_DATA, MOD_RODATA, MOD_RO_AFTER_INIT, MOD_INIT_TEXT,
    /// MOD_INIT_DATA, MOD_INIT_RODATA: a claim placing that allocation over the live module's key)
    /// is a `layout` denial naming the type, whichever kind of trust the live key carries
    /// (a defined key's default targets, or the state its sites call); the same key one byte past
    /// every allocation changes nothing (the honest claims of kvm and battery, which between them have all seven, are allowed). execmem_alloc() never
    /// hands out live memory (move_module() → module_memory_alloc()).
    func testALiveStaticCallKeyInAnyAllocationIsALayoutDenial() throws {
        var covered = Set<ModuleMemoryType>()
        for (path, name) in [("arch/x86/kvm/kvm", "kvm"), ("drivers/acpi/battery", "battery")] {
        let c = try Init612Tests.make(path, name)
        XCTAssertTrue(try c.explain(c.claim).verdict.isAllowed, "the honest \(name) claim")
        let target: UInt64 = 0xffff_ffff_8100_0000  // a core function entry stands for the live module's target
        func explain(_ key: UInt64, defined: Bool) throws -> ExplainResult {
            var r = c.resolver
            r.add(ModuleExports(module: "live_a", symbols: [:], functionEntries: FunctionEntries([target]),
                                staticCallTrustedTargets: defined ? [key: [target]] : [:], staticCallStates: defined ? [:] : [key: 0]))
            return try c.ko.withUnsafeBytes { raw in Explainer(facts: c.facts).explain(elf: try ELFFile(bytes: raw), claim: c.claim, resolver: r) }
        }
        for t in [ModuleMemoryType.text, .data, .rodata, .roAfterInit, .initText, .initData, .initRodata] {
            let size = UInt64(c.layout.allocationSize(t))
            guard size > 0, let b = Init612Tests.bases[t] else { continue }
            covered.insert(t)
            for defined in [true, false] {
                for key in [b, b + size / 2 & ~7, b + size - 16] {
                    guard case .denied(let d) = try explain(key, defined: defined).verdict else {
                        XCTFail("\(name) \(t): a live key at 0x\(String(key, radix: 16)) inside its allocation was not refused"); continue
                    }
                    XCTAssertEqual(d.rule, .layout, "\(t): \(d)")
                    XCTAssertTrue("\(d)".contains("\(t)"), "\(t): \(d)")
                }
                XCTAssertTrue(try explain(b + size, defined: defined).verdict.isAllowed, "\(t): a live key one byte past the allocation")
            }
        }
        }
        XCTAssertEqual(covered.count, 7, "every mod_mem_type tried: \(covered)")
    }
}
