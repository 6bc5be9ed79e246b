// SPDX-License-Identifier: Apache-2.0
//
// Attack round 3 from the docs: register-guest facts (docs/protocol.md "Plausibility checks";
// docs/trust.md "Ports": "No integer a peer sends may reach arithmetic that can trap (checked or
// wrapping arithmetic, or a comparison, instead)").

import ExecGateVerifier
import ExecGateWire
import XCTest

final class DocAttack3FactsTests: XCTestCase {
    /// HOLE (round docs3): `__per_cpu_end` is a registration fact (protocol.md: the module per-cpu
    /// area is `[__per_cpu_end, __per_cpu_end + PERCPU_MODULE_RESERVE)`). The plausibility checks
    /// only asked that it not lie below `__per_cpu_start` or a core per-cpu symbol, and the
    /// builder then computed the reserve's end with a trapping `+`: a `__per_cpu_end` within
    /// 8 KiB of 2⁶⁴ killed the verifier (every guest's session with it) from one register-guest.
    /// A reserve that wraps the address space is no layout pcpu_setup_first_chunk() makes
    /// (`PERCPU_MODULE_RESERVE` bytes follow the static area in the first chunk): refused
    /// `implausible-facts`, naming it; the registry keeps serving.
    func testPerCPUReserveThatWrapsIsImplausibleNotATrap() throws {
        let g = try FixtureGuest()
        for end in [UInt64(0xffff_ffff_ffff_f000), 0xffff_ffff_ffff_ffff, 0xffff_ffff_ffff_e001] {
            var r = g.registration
            r.guestID = "percpu-\(end)"
            r.symbols.removeAll { $0.name == "__per_cpu_end" }
            r.symbols.append(KernelSymbol(name: "__per_cpu_end", address: end, type: UInt8(ascii: "D"), exported: false))
            let reply = g.verifier.respond(to: .registerGuest(r), requestDigest: [])
            guard case .error(let e) = reply else { XCTFail("__per_cpu_end 0x\(String(end, radix: 16)) registered: \(reply)"); continue }
            XCTAssertEqual(e.code, .implausibleFacts, e.message)
            XCTAssertTrue(e.message.contains("__per_cpu_end"), e.message)
        }
        // The honest guest is still served.
        XCTAssertEqual(try g.load("llc").decision, .allow)
    }
}
