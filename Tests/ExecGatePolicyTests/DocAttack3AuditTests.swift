// SPDX-License-Identifier: Apache-2.0
//
// Attack round 3 from the docs: policy.md "Audit": "Every verdict is one JSON line"; protocol.md
// audit-read: "one JSON line each". The words of a request (the VMM's guest id, the guest's name
// for its module, echoed as the record's `module` on an early denial and in messages) reach the
// record.

import _ExecGateInternals
import ExecGateAdmin
import ExecGatePolicy
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import NIOCore
import XCTest

final class DocAttack3AuditTests: XCTestCase {
    /// HOLE (round docs3): the JSON writer escaped C0 controls, quotes and backslashes only, so
    /// U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR and U+0085 NEXT LINE in a request's words
    /// went into the audit record raw. They are line terminators to Unicode-aware readers (a
    /// JavaScript consumer, Python's `str.splitlines()`): one verdict record read as two lines, the
    /// second one the request's own text, e.g. a forged `{"event":"verdict",…,"decision":"allow"}`.
    /// The text log escapes them already (TextLogHandler: "so one event is always exactly one
    /// line"); JSON output now writes them (and every other C1 control and DEL) as `\uXXXX`, which
    /// every JSON reader decodes back to the same string.
    func testRequestWordsCannotSplitAnAuditRecord() throws {
        let forged = "{\"time\":\"2000-01-01T00:00:00.000Z\",\"event\":\"verdict\",\"guest\":\"web-1\",\"decision\":\"allow\"}"
        let verifier = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog()
        verifier.auditSink = log
        let words = ["\u{2028}", "\u{2029}", "\u{85}", "\u{7f}", "\u{9b}"]
        for sep in words {
            let guest = "g" + sep + forged
            var r = AuthorizeModule(guestID: guest, module: ByteBuffer(bytes: try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))))
            r.moduleName = "crc7" + sep + forged
            let v = verifier.authorize(r, requestDigest: [1])
            XCTAssertEqual(v.decision, .deny, v.message)
        }
        log.flush()
        let records = log.read(after: 0, limit: 100).records
        XCTAssertEqual(records.count, words.count)
        let terminators: Set<UInt32> = [0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029]
        for (record, sep) in zip(records, words) {
            let bad = record.unicodeScalars.filter { terminators.contains($0.value) || (0x7f...0x9f).contains($0.value) }
            XCTAssertTrue(bad.isEmpty, "U+\(String(sep.unicodeScalars.first!.value, radix: 16)): the record holds \(bad.map { "U+" + String($0.value, radix: 16) }): \(record)")
            // Still the same words to a JSON reader.
            let json = try JSONReader.parse(Array(record.utf8))
            XCTAssertEqual(json["guest"]?.stringValue, "g" + sep + forged)
            XCTAssertTrue(json["message"]?.stringValue?.contains(sep) ?? false || json["module"]?.stringValue?.contains(sep) ?? false, record)
        }
        log.close()
    }

    /// HOLE (round docs3): protocol.md verdict tag 9 `module_name`: "the signed `struct module`
    /// name …; on a denial before the name is read (policy kind, signature, deny lists, ELF
    /// structure: `checks` has no `module-name`) the request's own, unverified". A request naming
    /// another module than the one it carries is denied *after* the signed name was read, yet the
    /// verdict and its audit record named the request's word: the guest chose which module an
    /// audit record of its failed load names (here crc7 recorded as `vsock`, so a search of the
    /// audit for crc7 misses it; the record carries no `checks` to tell). Now the signed name.
    func testANameMismatchIsRecordedUnderTheSignedName() throws {
        let verifier = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog()
        verifier.auditSink = log
        var r = AuthorizeModule(module: ByteBuffer(bytes: try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))))
        r.moduleName = "vsock"
        let v = verifier.authorize(r, requestDigest: [1])
        XCTAssertEqual(v.decision, .deny, v.message)
        XCTAssertEqual(v.reason, .moduleNameMismatch, v.message)
        XCTAssertEqual(v.moduleName, "crc7", "the verdict names the guest's word for the module")
        XCTAssertTrue(v.message.contains("vsock") && v.message.contains("crc7"), v.message)
        log.flush()
        let record = try XCTUnwrap(log.read(after: 0, limit: 10).records.first)
        XCTAssertEqual(try JSONReader.parse(Array(record.utf8))["module"]?.stringValue, "crc7", record)
        log.close()
    }
}
