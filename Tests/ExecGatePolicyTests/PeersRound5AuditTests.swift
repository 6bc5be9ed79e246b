// SPDX-License-Identifier: Apache-2.0
//
// Peers round 5: what a VMM-port peer can make the audit log hold. The service VM keeps the audit
// records in memory for audit-read (AuditLog with no file: the admin port's `audit-read`), and the
// memory budget keeps an 8 MiB reserve for "thread stacks, NIO's buffers, replies, the audit ring"
// (MemoryBudget.reserve): the ring must stay a small part of it, whatever a peer sends.

import _ExecGateInternals
import ExecGateAdmin
import ExecGatePolicy
import ExecGateSignature
import ExecGateTestSupport
import ExecGateVerifier
import ExecGateWire
import Foundation
import NIOCore
import XCTest

final class PeersRound5AuditTests: XCTestCase {
    /// A VMM's authorize request carries its words (guest id, the guest's name for its module) as
    /// wire strings of up to 64 KiB each (`WireLimits.maximumStringLength`), and each control
    /// character in them is written `\uXXXX` (6 bytes) in the record: one ~120 KiB request (a small
    /// frame, never refused for the body budget) made a ~770 KiB record, and the ring kept
    /// 16,384 records (32,768 between trims) whatever their size. 40 such requests are 30 MiB of
    /// records held in a VM whose whole reserve is 8 MiB (16,384 would be 12 GiB).
    func testRequestWordsCannotGrowTheRetainedRecordsPastTheirBudget() throws {
        let verifier = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow")))
        let log = AuditLog()
        verifier.auditSink = log
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        let words = String(repeating: "\u{1}", count: 60 << 10)
        for i in 0..<40 {
            var r = AuthorizeModule(guestID: "g\(i)" + words, module: ByteBuffer(bytes: module))
            r.moduleName = "m" + words
            _ = verifier.authorize(r, requestDigest: [UInt8(i)])
        }
        log.flush()
        let page = log.read(after: 0, limit: AuditLimits.maximumRecordsPerRead)
        let held = page.records.reduce(0) { $0 + $1.utf8.count }
        print("audit: \(page.records.count) records retained, \(held >> 10) KiB")
        XCTAssertLessThanOrEqual(held, 4 << 20, "the retained audit records outgrew their share of the service's reserve")
        // The newest record is still there (a reader sees the last verdict), its words bounded:
        // the first 1 KiB and a marker with their length and SHA-256, so the record stays one
        // string of audit-read-reply (< 64 KiB) and `policy audit` can carry it out (a record of
        // such words once stopped every read at it: string-too-long).
        let last = try XCTUnwrap(page.records.last)
        let guest = try XCTUnwrap(try JSONReader.parse(Array(last.utf8))["guest"]?.stringValue)
        let full = "g39" + words
        XCTAssertTrue(guest.hasPrefix("g39\u{1}") && guest.hasSuffix("]"), guest.prefix(40) + "…")
        XCTAssertTrue(guest.contains("…[\(full.utf8.count) bytes, sha256:\(Hex.encode(Array(full.utf8).withUnsafeBytes { Digest.sha256($0) }.bytes))]"))
        for r in page.records { XCTAssertLessThan(r.utf8.count, 64 << 10, "a record past a wire string's limit") }
        let reply = AuditReadReply(records: Array(page.records.suffix(3)), nextSeq: page.nextSeq, dropped: 0, oldestSeq: page.oldestSeq)
        XCTAssertEqual(try AuditReadReply(decoding: reply.encode()).records, reply.records, "the records cross the admin port")
        log.close()
    }

    /// The writer's queue is bounded by bytes too: with the writer stalled (a slow disk, a FIFO
    /// nobody reads), large records fill 8 MiB long before 4096 records, and the policy's
    /// `audit-overflow drop` drops (counted) the rest instead of queueing them.
    func testLargeRecordsFillTheWriterQueueByBytes() throws {
        let gate = DispatchSemaphore(value: 0)
        let log = AuditLog(writer: { _ in gate.wait() })
        let v = Verifier(policy: try PolicyFixtures.parse(try PolicyFixtures.text(version: 3, body: "modules allow").replacingOccurrences("audit-overflow block", "audit-overflow drop")))
        v.auditSink = log
        let module = try Fixtures.readFile(try Fixtures.module(named: "crc7.ko"))
        let words = String(repeating: "\u{1}", count: 60 << 10)
        // Each record holds 1 KiB of each word, 6 bytes of JSON a character: ~13 KiB, so 8 MiB
        // is ~650 records, well under 4096.
        let n = 1000
        for i in 0..<n {
            var r = AuthorizeModule(guestID: "g\(i)" + words, module: ByteBuffer(bytes: module))
            r.moduleName = "m" + words
            XCTAssertNotEqual(v.authorize(r, requestDigest: [UInt8(truncatingIfNeeded: i)]).reason, .auditUnrecorded)  // drop: never denied for the audit
        }
        let c = log.counters
        let size = try XCTUnwrap(log.read(after: 0, limit: 1).records.first).utf8.count + 1
        print("audit queue: \(c.queued) queued, \(c.dropped) dropped of \(n), \(size) bytes a record")
        XCTAssertGreaterThan(c.dropped, 0, "\(n) records of \(size) bytes were all queued")
        XCTAssertLessThanOrEqual((c.queued - 1) * (size - 16), 8 << 20, "more than 8 MiB of records queued")
        XCTAssertEqual(c.accepted + c.dropped, UInt64(n))
        for _ in 0..<64 { gate.signal() }
        log.close()
    }
}
