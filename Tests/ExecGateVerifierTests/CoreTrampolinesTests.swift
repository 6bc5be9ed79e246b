// SPDX-License-Identifier: Apache-2.0
//
// The core's static-call trampolines the capture's guest reads at the trusted point, and the
// `static_call_key` facts its registration sends from them (ExecGateCapture CoreTrampolines.swift;
// docs/trust.md "Static calls" rule 1, docs/capture.md). Booting with `trace_event=<event>` gives a
// core tracepoint one probe at boot, and tracepoint_update_call() (kernel/tracepoint.c) points the
// tracepoint's static call at the probe instead of the iterator: modules calling it carry the
// probe in their end state, so the registration must say so, as a VMM reading the trampoline does.

import ExecGateCapture
import ExecGateExplain
import ExecGatePolicy
import ExecGateTestSupport
@testable import ExecGateVerifier
import ExecGateWire
import XCTest

final class CoreTrampolinesTests: XCTestCase {
    static let sig: [UInt8] = [0x0f, 0xb9, 0xcc]

    static func jmp(from a: UInt64, to t: UInt64) -> [UInt8] {
        let rel = UInt32(truncatingIfNeeded: Int64(bitPattern: t &- (a &+ 5)))
        return [0xe9, UInt8(rel & 0xff), UInt8(rel >> 8 & 0xff), UInt8(rel >> 16 & 0xff), UInt8(rel >> 24)] + sig
    }

    /// arch/x86/kernel/static_call.c __static_call_transform(): JMP `e9 rel32`, RET `c3 cc cc cc
    /// cc` or (RETHUNK) `jmp x86_return_thunk`; the ud1 signature after the 5 bytes.
    func testEachTrampolineFormDecodes() {
        let a: UInt64 = 0xffff_ffff_81e0_0590, thunk: UInt64 = 0xffff_ffff_81e0_2000
        XCTAssertEqual(CoreTrampolines.decode(address: a, bytes: [0xc3, 0xcc, 0xcc, 0xcc, 0xcc] + Self.sig, returnThunks: [thunk]), .null)
        XCTAssertEqual(CoreTrampolines.decode(address: a, bytes: Self.jmp(from: a, to: thunk), returnThunks: [thunk]), .null)
        XCTAssertEqual(CoreTrampolines.decode(address: a, bytes: Self.jmp(from: a, to: 0xffff_ffff_8123_4560), returnThunks: [thunk]), .jump(0xffff_ffff_8123_4560))
        XCTAssertEqual(CoreTrampolines.decode(address: a, bytes: Self.jmp(from: a, to: a + 0x100), returnThunks: [thunk]), .jump(a + 0x100), "forward")
        // The same jmp to the thunk is a jump when the thunk is not one of the build's.
        XCTAssertEqual(CoreTrampolines.decode(address: a, bytes: Self.jmp(from: a, to: thunk), returnThunks: []), .jump(thunk))
        for bad: [UInt8] in [[0xe9, 0, 0, 0, 0, 0x90, 0x90, 0x90],             // no signature: not a trampoline
                             [0x0f, 0x1f, 0x44, 0x00, 0x00] + Self.sig,          // NOP5: a call site's NULL, never a trampoline's
                             [0xe8, 0, 0, 0, 0] + Self.sig,                      // call
                             [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9]] {       // short
            guard case .undecodable = CoreTrampolines.decode(address: a, bytes: bad, returnThunks: [thunk]) else { return XCTFail("\(bad) decoded") }
        }
    }

    /// A synthetic build: core text [0x81000000, 0x81e00000), init text and memory after it, a
    /// tracepoint key `tp_func_foo` (trampoline, key, iterator, probe), a PREEMPT_DYNAMIC key and
    /// a key the build's table does not cover.
    static let named: [String: UInt64] = [
        "_stext": 0xffff_ffff_8100_0000, "_etext": 0xffff_ffff_81e0_0000,
        "_sinittext": 0xffff_ffff_8300_1000, "_einittext": 0xffff_ffff_8300_2000, "__init_begin": 0xffff_ffff_8300_0000, "__init_end": 0xffff_ffff_8300_3000,
        "__x86_return_thunk": 0xffff_ffff_81d0_0000,
        "__SCT__tp_func_foo": 0xffff_ffff_8100_0010, "__SCK__tp_func_foo": 0xffff_ffff_8250_0000,
        "__traceiter_foo": 0xffff_ffff_8110_0000, "trace_event_raw_event_foo": 0xffff_ffff_8120_0000,
        "__SCT__cond_resched": 0xffff_ffff_8100_0020, "__SCK__cond_resched": 0xffff_ffff_8250_0010, "__cond_resched": 0xffff_ffff_8130_0000,
        "__SCT__x86_pmu_foo": 0xffff_ffff_8100_0030, "__SCK__x86_pmu_foo": 0xffff_ffff_8250_0020, "x86_pmu_foo_impl": 0xffff_ffff_8140_0000,
        "init_probe": 0xffff_ffff_8300_1800, "__static_call_return0": 0xffff_ffff_81d0_0100,
    ]
    static var entries: Set<UInt64> { Set(named.values) }

    func outcome(_ name: String, to target: UInt64?) -> CoreTrampolines.Outcome {
        let a = Self.named[name]!
        let bytes = target.map { Self.jmp(from: a, to: $0) } ?? ([0xc3, 0xcc, 0xcc, 0xcc, 0xcc] + Self.sig)
        return CoreTrampolines.outcome([CoreTrampoline(name: name, address: a, bytes: bytes)], named: Self.named, functionEntries: Self.entries, returnThunk: nil)
    }

    /// A probe in core text (trace_event=): sent for the trampoline and the key; the iterator (the
    /// build's default) and NULL send nothing.
    func testAProbeTargetIsSentAndTheDefaultIsNot() {
        let n = Self.named
        let probe = outcome("__SCT__tp_func_foo", to: n["trace_event_raw_event_foo"]!)
        XCTAssertEqual(probe.facts, [StaticCallKeyFact(key: n["__SCT__tp_func_foo"]!, current: n["trace_event_raw_event_foo"]!),
                                     StaticCallKeyFact(key: n["__SCK__tp_func_foo"]!, current: n["trace_event_raw_event_foo"]!)])
        XCTAssertTrue(probe.notSent.isEmpty)
        XCTAssertTrue(outcome("__SCT__tp_func_foo", to: n["__traceiter_foo"]!).facts.isEmpty, "the iterator is the build's default")
        XCTAssertTrue(outcome("__SCT__tp_func_foo", to: nil).facts.isEmpty, "NULL is the engine's rule per key, never sent")
        XCTAssertTrue(outcome("__SCT__tp_func_foo", to: n["__x86_return_thunk"]!).facts.isEmpty, "jmp to a return thunk is NULL")
        XCTAssertTrue(outcome("__SCT__cond_resched", to: n["__cond_resched"]!).facts.isEmpty, "a PREEMPT_DYNAMIC key's enabled form")
    }

    /// Only a function entry in core text outside init is sent: a trampoline pointing into the
    /// module area, user space, init text, inside a function, or a key the build's table does not
    /// cover (its default unknown) is reported and not sent.
    func testATargetOutsideCoreTextIsNotSent() {
        let n = Self.named
        for (what, target) in [("module area", UInt64(0xffff_ffff_c012_3000)), ("user space", 0x4000_0000), ("init text", n["init_probe"]!),
                               ("not a function entry", n["trace_event_raw_event_foo"]! + 4), ("past _etext", n["_etext"]! + 0x10)] {
            let o = outcome("__SCT__tp_func_foo", to: target)
            XCTAssertTrue(o.facts.isEmpty, what)
            XCTAssertEqual(o.notSent.count, 1, what)
        }
        // __static_call_return0: never sent; reported only for a key that never holds it.
        let r0tp = outcome("__SCT__tp_func_foo", to: n["__static_call_return0"]!)
        XCTAssertTrue(r0tp.facts.isEmpty)
        XCTAssertEqual(r0tp.notSent.count, 1)
        let r0 = outcome("__SCT__x86_pmu_foo", to: n["__static_call_return0"]!)
        XCTAssertTrue(r0.facts.isEmpty && r0.notSent.isEmpty, "DEFINE_STATIC_CALL_RET0: rule 4's")
        let uncovered = outcome("__SCT__x86_pmu_foo", to: n["x86_pmu_foo_impl"]!)
        XCTAssertTrue(uncovered.facts.isEmpty)
        XCTAssertTrue(uncovered.notSent.first?.reason.contains("does not cover") ?? false, "\(uncovered.notSent)")
        // A trampoline record that is not the first of its name, or outside core text, is no key's.
        let moved = CoreTrampolines.outcome([CoreTrampoline(name: "__SCT__tp_func_foo", address: 0xffff_ffff_c000_0000,
                                                            bytes: Self.jmp(from: 0xffff_ffff_c000_0000, to: n["trace_event_raw_event_foo"]!))],
                                            named: n, functionEntries: Self.entries, returnThunk: nil)
        XCTAssertTrue(moved.facts.isEmpty)
        XCTAssertEqual(moved.notSent.count, 1)
    }

    /// The file the guest writes parses, and a malformed one is invalid input.
    func testTheFileParses() throws {
        // The guest (ExecGateCaptureTool, which this reader does not link) writes the same name.
        let guest = String(decoding: try Fixtures.readFile(Fixtures.packageRoot + "/Sources/ExecGateCaptureTool/CaptureGuest.swift"), as: UTF8.self)
        XCTAssertTrue(guest.contains("staticCallTrampolinesFile = \"\(CoreTrampolines.fileName)\""))
        let t = try CoreTrampolines.parse("__SCT__tp_func_foo ffffffff81000010 c3cccccccc0fb9cc\n__SCT__x ffffffff81000018 ?\n", path: "f")
        XCTAssertEqual(t, [CoreTrampoline(name: "__SCT__tp_func_foo", address: 0xffff_ffff_8100_0010, bytes: [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9, 0xcc]),
                           CoreTrampoline(name: "__SCT__x", address: 0xffff_ffff_8100_0018, bytes: nil)])
        for bad in ["__SCT__a ffffffff81000010\n", "foo ffffffff81000010 c3cccccccc0fb9cc\n", "__SCT__a ffffffff81000010 c3cc\n",
                    "__SCT__a ffffffff81000010 zzcccccccc0fb9cc\n", "__SCT__a 81000010 c3cccccccc0fb9cc\n"] {
            XCTAssertThrowsError(try CoreTrampolines.parse(bad, path: "f"), bad)
        }
    }

    /// End to end: the committed capture with a tracepoint key added whose trampoline points at
    /// its probe registers (the fact passes plausibility), and the key's trusted targets are its
    /// iterator and the probe; the tracepoint rule still refuses its NULL forms (`.neither`). The
    /// same capture with the trampoline pointing into the module area registers without the fact.
    func testTheCaptureRegistrationSendsTheProbe() throws {
        let src = EndStateVerifierTests.bootDir
        let sct: UInt64 = 0xffff_ffff_8100_0ff0, sck: UInt64 = 0xffff_ffff_8250_0000
        let iter: UInt64 = 0xffff_ffff_8100_0fc0, probe: UInt64 = 0xffff_ffff_8100_0fd0
        func capture(target: UInt64) throws -> String {
            let dir = Fixtures.temporaryDirectory()
            for f in ["boot_cpu_data.bin", "cmdline.txt", "cpus.txt", "pv_ops.bin", "slide.txt", "uname.txt", "vulnerabilities.txt"] {
                try Fixtures.writeFile(dir + "/" + f, try Fixtures.readFile(src + "/" + f))
            }
            var ks = String(decoding: try Fixtures.readFile(src + "/kallsyms.txt"), as: UTF8.self)
            ks += "ffffffff81000fc0 T __traceiter_execgate_test\nffffffff81000fd0 t trace_event_raw_event_execgate_test\n"
            ks += "ffffffff81000ff0 T __SCT__tp_func_execgate_test\nffffffff82500000 D __SCK__tp_func_execgate_test\n"
            try Fixtures.writeFile(dir + "/kallsyms.txt", Array(ks.utf8))
            try Fixtures.writeFile(dir + "/load-order.txt", [])
            let bytes = Self.jmp(from: sct, to: target).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
            try Fixtures.writeFile(dir + "/" + CoreTrampolines.fileName, Array("__SCT__tp_func_execgate_test ffffffff81000ff0 \(bytes)\n".utf8))
            return dir
        }
        let dir = try capture(target: probe)
        let r = try CaptureBoot.load(dir).registration(guestID: "g")
        XCTAssertEqual(r.staticCallKeys, [StaticCallKeyFact(key: sct, current: probe), StaticCallKeyFact(key: sck, current: probe)])
        let v = Verifier(policy: Policy(id: "test", version: 7, trust: try Fixtures.debianTrust()))
        guard case .registerGuestReply = v.respond(to: .registerGuest(r), requestDigest: []) else { return XCTFail("registered") }
        let facts = try XCTUnwrap(v.guests.session("g")?.facts)
        for k in [sct, sck] {
            XCTAssertEqual(facts.staticCallTrustedTargets[k], [iter, probe])
            XCTAssertEqual(StaticCallTrust.disabledForm(ofKey: k, facts: facts, preemptDynamicKeys: StaticCallTrust.preemptDynamicKeys(coreExports: facts.exports)), .neither)
        }
        let away = try CaptureBoot.staticCallTrampolines(dir: try capture(target: 0xffff_ffff_c012_3000))
        XCTAssertEqual(away?.facts, [])
        XCTAssertEqual(away?.notSent.count, 1)
        let r2 = try CaptureBoot.load(try capture(target: 0xffff_ffff_c012_3000)).registration(guestID: "g2")
        XCTAssertTrue(r2.staticCallKeys.isEmpty)
        guard case .registerGuestReply = v.respond(to: .registerGuest(r2), requestDigest: []) else { return XCTFail("registered without the fact") }
        XCTAssertEqual(v.guests.session("g2")?.facts.staticCallTrustedTargets[sct], [iter])
    }
}
