// SPDX-License-Identifier: Apache-2.0
//
// The policy language on real inputs: the shipped policies, an embedded Debian kernel certificate,
// and every refusal with its exact line and column.

import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import XCTest

/// Shared fixtures: the Debian kernel's builtin certificate and a policy text embedding it.
enum PolicyFixtures {
    static func kernelCertificate() throws -> Certificate { try Fixtures.debianCertificates()[0] }

    /// A complete policy embedding the Debian kernel certificate as a PEM trust anchor. These
    /// tests exercise policy mechanics (rules, audit, swaps) on modules sent without a guest, so
    /// the fixture opts into `end-state signature-only` explicitly (the default is `required`).
    static func text(id: String = "test", version: UInt64, mode: String = "enforce", body: String = "modules allow",
                     endState: String = "signature-only") throws -> String {
        let cert = try kernelCertificate()
        return """
        execgate-policy 1
        id \(id)
        version \(version)
        mode \(mode)
        trust sha256:\(cert.fingerprint.hex)   # Debian kernel build key
        \(cert.pem.split(separator: "\n").joined(separator: "\n"))
        audit-overflow block
        end-state \(endState)
        \(body)

        """
    }

    static func parse(_ text: String, builtin: [Certificate]? = nil) throws(PolicyParseError) -> Policy {
        try PolicyParser.parse(Array(text.utf8), file: "t.policy", builtinAnchors: builtin)
    }

    static var shippedDirectory: String { Fixtures.packageRoot + "/ServiceVM/policies" }
}

final class PolicyParserTests: XCTestCase {
    func testShippedPoliciesParseWithTheKernelsAnchors() throws {
        let anchors = try Fixtures.debianCertificates()
        for name in ["default", "audit-rollout", "blocklist-vulnerable-module", "hash-pinned"] {
            let bytes = try Fixtures.readFile(PolicyFixtures.shippedDirectory + "/\(name).policy")
            let p = try PolicyParser.parse(bytes, file: name, builtinAnchors: anchors)
            XCTAssertEqual(p.trust.anchors.map(\.fingerprint), anchors.map(\.fingerprint), name)
            XCTAssertEqual(p.source, bytes, name)
        }
        let d = try PolicyParser.parse(try Fixtures.readFile(PolicyFixtures.shippedDirectory + "/default.policy"), file: "d", builtinAnchors: anchors)
        XCTAssertEqual(d.id, "servicevm-default")
        XCTAssertEqual(d.version, 2)
        XCTAssertEqual(d.mode, .enforce)
        XCTAssertEqual(d.modules, .allow)
        XCTAssertEqual(d.textPatches, .allow)
        XCTAssertEqual(d.ebpfJIT, .deny)
        XCTAssertEqual(d.auditOverflow, .block)
    }

    /// Fail closed: no `end-state` line means `required`; the old fail-open `when-claimed` does
    /// not load (a policy must never load as something weaker than what its author meant).
    func testEndStateDefaultsToRequiredAndWhenClaimedIsRefused() throws {
        let stripped = try PolicyFixtures.text(version: 4).replacingOccurrences("end-state signature-only\n", "")
        XCTAssertFalse(stripped.contains("end-state"))
        XCTAssertEqual(try PolicyFixtures.parse(stripped).endState, .required)
        XCTAssertEqual(try PolicyFixtures.parse(try PolicyFixtures.text(version: 4)).endState, .signatureOnly)
        XCTAssertThrowsError(try PolicyFixtures.parse(try PolicyFixtures.text(version: 4, endState: "when-claimed"))) { e in
            let err = e as? PolicyParseError
            XCTAssertEqual(err?.code, .badArgument)
            XCTAssertTrue(err?.reason.contains("signature-only") ?? false, "\(e)")
        }
    }

    func testKernelPins() throws {
        let k = String(repeating: "ab", count: 32), y = String(repeating: "cd", count: 32)
        let p = try PolicyFixtures.parse(try PolicyFixtures.text(version: 4, body: "kernel sha256:\(k) symbols sha256:\(y)\nmodules allow"))
        XCTAssertEqual(p.trustedKernels.count, 1)
        XCTAssertEqual(p.trustedKernels.first?.kernel.hex, k)
        XCTAssertEqual(p.trustedKernels.first?.symbols.hex, y)
        XCTAssertThrowsError(try PolicyFixtures.parse(try PolicyFixtures.text(version: 4, body: "kernel sha256:\(k)\nmodules allow"))) { e in
            XCTAssertEqual((e as? PolicyParseError)?.code, .missingArgument)
        }
        XCTAssertThrowsError(try PolicyFixtures.parse(try PolicyFixtures.text(version: 4, body: "kernel sha256:\(k) symbols sha256:\(y)\nkernel sha256:\(k) symbols sha256:\(y)\nmodules allow"))) { e in
            XCTAssertEqual((e as? PolicyParseError)?.code, .duplicate)
        }
    }

    func testEmbeddedAnchorAndEveryDirective() throws {
        let cert = try PolicyFixtures.kernelCertificate()
        let tbs = cert.tbsHash.hex
        let p = try PolicyFixtures.parse(try PolicyFixtures.text(version: 5, mode: "audit", body: """
            minimum-digest sha384
            deny certificate sha256:\(tbs)
            deny module sha256:\(String(repeating: "ab", count: 32))
            deny module-name vsock-diag
            pin sha256:\(String(repeating: "CD", count: 32))
            class db db-* analytics-7
            modules allow
            modules hash-pinned for class db
            modules deny for guest quarantined
            text-patches audit-only
            ebpf-jit deny for class db
            """, endState: "required"))
        XCTAssertEqual(p.version, 5)
        XCTAssertEqual(p.mode, .audit)
        XCTAssertEqual(p.trust.anchors, [cert])
        XCTAssertEqual(p.minimumDigest, .sha384)
        XCTAssertEqual(p.endState, .required)
        XCTAssertEqual(p.denyList.certificateTBSHashes, [cert.tbsHash])
        XCTAssertEqual(p.deniedModuleNames, ["vsock_diag"])
        XCTAssertEqual(p.pinnedModules.count, 1)
        // Resolution: exact guest > first matching class > default.
        XCTAssertEqual(p.resolved(forGuest: "db-3").modules, .hashPinned(p.pinnedModules))
        XCTAssertEqual(p.resolved(forGuest: "analytics-7").modules, .hashPinned(p.pinnedModules))
        XCTAssertEqual(p.resolved(forGuest: "analytics-70").modules, .allow)
        XCTAssertEqual(p.resolved(forGuest: "quarantined").modules, .deny)
        XCTAssertEqual(p.resolved(forGuest: "web-1").modules, .allow)
        XCTAssertEqual(p.resolved(forGuest: "db-3").ebpfJIT, .deny)
    }

    func testAuditOnlyForAClassMakesThatClassAuditMode() throws {
        let p = try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "class canary canary-*\nmodules allow\nmodules audit-only for class canary"))
        XCTAssertEqual(p.mode, .enforce)
        XCTAssertEqual(p.resolved(forGuest: "canary-1").mode, .audit)
        XCTAssertEqual(p.resolved(forGuest: "prod-1").mode, .enforce)
    }

    /// Each malformed policy is refused with the code, line and column of the offending token.
    func testForbidsMalformedPoliciesWithLineAndColumn() throws {
        let fp = try PolicyFixtures.kernelCertificate().fingerprint.hex
        // (text, code, line, column); lines of `head` are 1…4.
        let head = "execgate-policy 1\nid t\nversion 3\nmode enforce\n"
        let cases: [(String, PolicyParseError.Code, Int, Int)] = [
            ("id t\n", .header, 1, 1),
            ("execgate-policy 2\n", .header, 1, 17),
            (head + "modules allow\ntrust kernel-builtin\n  colour blue\n", .unknownKeyword, 7, 3),
            (head.replacingOccurrences("mode enforce", "mode enforc"), .badArgument, 4, 6),
            (head + "version 4\n", .duplicate, 5, 1),
            (head + "trust kernel-builtin\nmodules allow extra\n", .extraArgument, 6, 15),
            (head + "trust kernel-builtin\nmodules sometimes\n", .badArgument, 6, 9),
            (head + "trust kernel-builtin\nmodules allow\nmodules deny for class db\n", .undefinedClass, 7, 24),
            (head + "trust kernel-builtin\nmodules allow\ndeny module sha256:1234\n", .badArgument, 7, 20),
            (head + "trust kernel-builtin\nmodules allow\ndeny firmware sha256:00\n", .unknownKeyword, 7, 6),
            (head + "trust kernel-builtin\nmodules allow\nminimum-digest md5\n", .badArgument, 7, 16),
            (head + "trust kernel-builtin\nmodules allow\r\n", .encoding, 6, 14),
            (head + "trust kernel-builtin\n", .missingDirective, 6, 1),
            (head + "modules allow\n", .missingDirective, 6, 1),
            (head + "trust kernel-builtin\nmodules hash-pinned\n", .missingDirective, 6, 9),
            (head + "trust sha256:\(fp)\nmodules allow\n", .badCertificate, 6, 1),
            (head + "trust kernel-builtin\nmodules allow\nclass db db-*x\n", .badArgument, 7, 10),
            (head + "trust kernel-builtin\nmodules allow\ndeny module-name vsock/diag\n", .badArgument, 7, 23),
            // One kernel image pinned with two symbol tables: a contradiction (only one would apply).
            (head + "trust kernel-builtin\nmodules allow\nkernel sha256:abababababababababababababababababababababababababababababababab symbols sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\nkernel sha256:abababababababababababababababababababababababababababababababab symbols sha256:efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef\n", .duplicate, 8, 88),
        ]
        for (text, code, line, column) in cases {
            XCTAssertThrowsError(try PolicyFixtures.parse(text, builtin: try Fixtures.debianCertificates()), text) { e in
                guard let e = e as? PolicyParseError else { return XCTFail("\(e)") }
                XCTAssertEqual(e.code, code, "\(e) for\n\(text)")
                XCTAssertEqual(e.line, line, "\(e) for\n\(text)")
                XCTAssertEqual(e.column, column, "\(e) for\n\(text)")
                XCTAssertTrue(e.description.hasPrefix("t.policy:\(line):\(column): error: "), e.description)
            }
        }
    }

    func testForbidsAnEmbeddedCertificateThatIsNotTheOneNamed() throws {
        var text = try PolicyFixtures.text(version: 3)
        let fp = try PolicyFixtures.kernelCertificate().fingerprint.hex
        text = text.replacingOccurrences(fp, String(repeating: "0", count: 64))
        XCTAssertThrowsError(try PolicyFixtures.parse(text)) { e in
            let e = e as! PolicyParseError
            XCTAssertEqual(e.code, .fingerprintMismatch)
            XCTAssertEqual(e.line, 5)
            XCTAssertEqual(e.column, 7)
        }
        // One changed base64 character inside the PEM: no longer a certificate, or another one.
        let good = try PolicyFixtures.text(version: 3)
        var lines = good.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var chars = Array(lines[8])
        chars[10] = chars[10] == "A" ? "B" : "A"
        lines[8] = String(chars)
        XCTAssertThrowsError(try PolicyFixtures.parse(lines.joined(separator: "\n"))) { e in
            let code = (e as! PolicyParseError).code
            XCTAssertTrue(code == .badCertificate || code == .fingerprintMismatch, "\(e)")
        }
    }

    func testKernelBuiltinNeedsAnchorsWhenTheyAreKnown() throws {
        let text = "execgate-policy 1\nid t\nversion 3\nmode enforce\ntrust kernel-builtin\nmodules allow\n"
        XCTAssertNoThrow(try PolicyFixtures.parse(text, builtin: nil))
        XCTAssertThrowsError(try PolicyFixtures.parse(text, builtin: [])) { e in
            XCTAssertEqual((e as! PolicyParseError).line, 5)
        }
        XCTAssertEqual(try PolicyFixtures.parse(text, builtin: try Fixtures.debianCertificates()).trust.anchors.count, 1)
    }
}

extension String {
    func replacingOccurrences(_ a: String, _ b: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound] + b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

/// Round 13's policy review: lines that said nothing more (given twice) or nothing at all (read
/// by no rule) loaded, where docs/policy.md says such a policy never loads.
final class PolicyRound13Tests: XCTestCase {
    func testALineGivenTwiceOrReadByNoRuleDoesNotLoad() throws {
        let a = String(repeating: "a", count: 64), b = String(repeating: "b", count: 64)
        let cases: [(body: String, code: PolicyParseError.Code, words: String)] = [
            ("modules hash-pinned\npin sha256:\(a)\npin sha256:\(a)", .duplicate, "given twice"),
            ("modules allow\ndeny module-name crc_8\ndeny module-name crc-8", .duplicate, "'-' and '_' are one"),
            ("modules allow\ndeny module sha256:\(a)\ndeny module sha256:\(a)", .duplicate, "given twice"),
            ("modules allow\ndeny certificate sha256:\(b)\ndeny certificate sha256:\(b)", .duplicate, "given twice"),
            ("modules allow\ntrust kernel-builtin\ntrust kernel-builtin", .duplicate, "kernel-builtin' given twice"),
            ("modules allow\npin sha256:\(a)", .unused, "no 'hash-pinned' rule"),
            ("modules allow\nclass canary canary-*", .unused, "class 'canary' is named by no rule"),
        ]
        for c in cases {
            let text = try PolicyFixtures.text(version: 2, body: c.body)
            XCTAssertThrowsError(try PolicyFixtures.parse(text), c.body) { e in
                let p = e as? PolicyParseError
                XCTAssertEqual(p?.code, c.code, "\(c.body): \(e)")
                XCTAssertTrue(p?.reason.contains(c.words) ?? false, "\(c.body): \(e)")
            }
        }
        // The same lines once, each read by a rule: the policy loads.
        let ok = try PolicyFixtures.text(version: 2, body: """
            modules allow
            modules hash-pinned for class canary
            class canary canary-*
            pin sha256:\(a)
            deny module-name crc_8
            deny module sha256:\(b)
            """)
        XCTAssertThrowsError(try PolicyFixtures.parse(ok), "a class is defined before the rule that names it") { e in
            XCTAssertEqual((e as? PolicyParseError)?.code, .undefinedClass)
        }
        let ordered = try PolicyFixtures.text(version: 2, body: """
            modules allow
            class canary canary-*
            modules hash-pinned for class canary
            pin sha256:\(a)
            deny module-name crc_8
            deny module sha256:\(b)
            """)
        XCTAssertNoThrow(try PolicyFixtures.parse(ordered))
    }

    /// A certificate written in the text that is also one of the builtin anchors (the service's
    /// --trust) is one anchor, in either order of the lines: whether the policy loads depends on
    /// its text, not on the service's anchors or the order (the review of round 13's change).
    func testAnExplicitAnchorThatIsAlsoBuiltinIsMergedInEitherOrder() throws {
        let cert = try PolicyFixtures.kernelCertificate()
        let builtin = try Fixtures.debianCertificates()
        let explicit = "trust sha256:\(cert.fingerprint.hex)\n" + cert.pem.split(separator: "\n").joined(separator: "\n") + "\n"
        for lines in [explicit + "trust kernel-builtin\n", "trust kernel-builtin\n" + explicit] {
            let text = "execgate-policy 1\nid p\nversion 3\nmode enforce\n" + lines + "modules allow\n"
            let p = try PolicyParser.parse(Array(text.utf8), file: "p.policy", builtinAnchors: builtin)
            XCTAssertEqual(p.trust.anchors.count, Set(builtin.map { $0.fingerprint.hex } + [cert.fingerprint.hex]).count, lines)
            XCTAssertNoThrow(try PolicyParser.parse(Array(text.utf8), file: "p.policy", builtinAnchors: nil), "policy sign parses without anchors")
        }
        // The same explicit line twice is still refused.
        let twice = "execgate-policy 1\nid p\nversion 3\nmode enforce\n" + explicit + explicit + "modules allow\n"
        XCTAssertThrowsError(try PolicyParser.parse(Array(twice.utf8), file: "p.policy", builtinAnchors: builtin)) { e in
            XCTAssertEqual((e as? PolicyParseError)?.code, .duplicate, "\(e)")
        }
    }
}
