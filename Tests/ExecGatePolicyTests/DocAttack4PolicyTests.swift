// SPDX-License-Identifier: Apache-2.0
//
// Attack round 4 written from docs/policy.md: "Anything ExecGate does not understand is an error
// … A policy that says something ExecGate would ignore never loads, so no policy is silently
// weaker than its text." Module names in deny rules against the names a module can have.

import ExecGatePolicy
import ExecGateTestSupport
import XCTest

final class DocAttack4PolicyTests: XCTestCase {
    private func parse(_ rule: String) throws -> Policy {
        let text = ["execgate-policy 1", "id p", "version 3", "mode enforce", "trust kernel-builtin", "modules allow", rule].joined(separator: "\n") + "\n"
        return try PolicyParser.parse(Array(text.utf8), file: "p.policy", builtinAnchors: try Fixtures.debianCertificates())
    }

    /// HOLE (round docs4): `deny module-name NAME` took any name up to 128 bytes, but a module's
    /// name is `struct module`'s `char name[MODULE_NAME_LEN]` (include/linux/module.h: 64 −
    /// sizeof(unsigned long) = 56 bytes, NUL included, so at most 55 bytes; ExecGate's
    /// ModuleName reads it so and denies a longer one as malformed). A rule naming 56 to 128
    /// bytes loaded and could never match any module: a rule ExecGate ignores, in a policy that
    /// looked stricter than it was (e.g. a name pasted with a suffix). Now refused with its
    /// column; 55 bytes still load.
    func testADenyNameNoModuleCanHaveIsRefused() throws {
        let longest = String(repeating: "a", count: 55)
        XCTAssertTrue(try parse("deny module-name \(longest)").deniedModuleNames.contains(longest))
        for n in [56, 64, 128] {
            XCTAssertThrowsError(try parse("deny module-name " + String(repeating: "b", count: n)), "a \(n)-byte module name no module can have loaded") { e in
                XCTAssertTrue("\(e)".contains("p.policy:7:18"), "\(e)")
            }
        }
    }

    /// Failed attack kept: names differing from a module's only in case are another module to the
    /// kernel (find_module_all(), blacklisted(): byte comparisons) and to the deny list; '-' and
    /// '_' are one (the documented widening).
    func testDenyNamesAreCaseSensitiveAndDashUnderscoreBlind() throws {
        let p = try parse("deny module-name IP6-udp_TUNNEL")
        XCTAssertTrue(p.deniedModuleNames.contains(Policy.canonicalModuleName("IP6_udp_TUNNEL")))
        XCTAssertFalse(p.deniedModuleNames.contains(Policy.canonicalModuleName("ip6_udp_tunnel")))
    }
}
