// SPDX-License-Identifier: Apache-2.0
//
// Peers round 5: what a VMM-port peer can make the audit log hold. The service VM keeps the audit
// records in memory for audit-read (AuditLog with no file: the admin port's `audit-read`), and the
// memory budget keeps an 8 MiB reserve for "thread stacks, NIO's buffers, replies, the audit ring"
// (MemoryBudget.reserve): the ring must stay a small part of it, whatever a peer sends.

import _ExecGateInternals
import ExecGateAdmin
import ExecGatePolicy
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
        // The newest record is still there, whole (a reader sees the last verdict).
        let last = try XCTUnwrap(page.records.last)
        XCTAssertEqual(try JSONReader.parse(Array(last.utf8))["guest"]?.stringValue, "g39" + words)
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
        for i in 0..<40 {
            var r = AuthorizeModule(guestID: "g\(i)" + words, module: ByteBuffer(bytes: module))
            r.moduleName = "m" + words
            XCTAssertNotEqual(v.authorize(r, requestDigest: [UInt8(i)]).reason, .auditUnrecorded)  // drop: never denied for the audit
        }
        let c = log.counters
        print("audit queue: \(c.queued) queued, \(c.dropped) dropped of 40")
        XCTAssertGreaterThan(c.dropped, 0, "40 records of ~720 KiB were all queued")
        XCTAssertLessThanOrEqual(c.queued, 12, "more than 8 MiB of ~720 KiB records queued")
        XCTAssertEqual(c.accepted + c.dropped, 40)
        for _ in 0..<64 { gate.signal() }
        log.close()
    }
}
