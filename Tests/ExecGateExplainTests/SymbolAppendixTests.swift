// SPDX-License-Identifier: Apache-2.0
//
// What a live module holds is the memory the kernel allocates for it, and `layout_symtab()`
// (kernel/module/kallsyms.c) appends the module's symbols after its sections: on 6.1 the core
// symbols to the core allocation (`core_layout.size`, which /sys/module/<m>/coresize reports) and
// the symbol table to the init allocation. Checked against the real boot's coresize of every
// module: the committed fixture's nine (their /sys/module sizes from the same boot, below), and
// every module of the shared reference corpus when it is present.

import ExecGateELF
@testable import ExecGateExplain
import ExecGateTestSupport
import XCTest

final class SymbolAppendixTests: XCTestCase {
    /// /sys/module/<m>/coresize of the fixture's modules on the captured boot (Debian
    /// 6.1.0-56-amd64, nokaslr-a: the shared corpus's sys_module_sizes.txt).
    static let fixtureCoreSizes: [String: Int] = [
        "8021q": 40960, "garp": 16384, "ip6_udp_tunnel": 20480, "irqbypass": 16384, "llc": 16384,
        "mrp": 20480, "stp": 16384, "test_static_key_base": 16384, "test_static_keys": 20480,
    ]

    static func coreSizeWithSymbols(_ ko: String) throws -> (sections: Int, withSymbols: Int) {
        let bytes = try Fixtures.readFile(ko)
        return try bytes.withUnsafeBytes { raw in
            let plan = try XCTUnwrap(ModuleLayoutPlan.compute(try ELFFile(bytes: raw)))
            return (plan.coreSize, plan.coreSizeWithSymbols)
        }
    }

    func testTheCoreAllocationWithItsSymbolsIsTheKernelsCoresize() throws {
        let corpus = Fixtures.packageRoot + "/Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a"
        var tail = 0
        for (name, want) in Self.fixtureCoreSizes {
            let (sections, got) = try Self.coreSizeWithSymbols(corpus + "/" + name + "/" + name + ".ko")
            XCTAssertEqual(got, want, name)
            tail += got - sections
        }
        XCTAssertGreaterThan(tail, 0, "the symbols take pages past the sections")
    }

    func testEveryModuleOfTheSharedCorpusToo() throws {
        let root = ProcessInfo.processInfo.environment["EXECGATE_SHARED_CORPUS"] ?? Fixtures.packageRoot + "/../shared/corpus"
        for boot in ["nokaslr-a", "kaslr"] {
            guard let sizes = try? Fixtures.readFile(root + "/" + boot + "/sys_module_sizes.txt") else {
                throw XCTSkip("shared reference corpus not present at \(root)")
            }
            var checked = 0
            for line in String(decoding: sizes, as: UTF8.self).split(separator: "\n") {
                let f = line.split(separator: " ")
                guard f.count >= 2, let want = Int(f[1]) else { continue }
                let ko = root + "/" + boot + "/" + f[0] + "/" + f[0] + ".ko"
                guard FileManager.default.fileExists(atPath: ko) else { continue }
                XCTAssertEqual(try Self.coreSizeWithSymbols(ko).withSymbols, want, "\(boot) \(f[0])")
                checked += 1
            }
            XCTAssertGreaterThanOrEqual(checked, 100, boot)
        }
    }
}
