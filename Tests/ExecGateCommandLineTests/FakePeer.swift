// SPDX-License-Identifier: Apache-2.0
//
// A fake admin/VMM peer for the CLI rounds: the real binary talks to a Unix socket this test
// serves, whose replies the test chooses (garbage, escapes, refusals).

import ExecGateTestSupport
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

extension XCTestCase {
    /// A Unix socket served by a thread of the calling test: each connection's first frame (20-byte
    /// header, then its body) is answered with `reply(requestType)` (a frame: type, body; the
    /// request's id), then the connection is held until the peer closes it; with `everyFrame`,
    /// every frame of the connection is answered so.
    func serveFrames(_ path: String, connections: Int, everyFrame: Bool = false,
                     reply: @escaping @Sendable (UInt16) -> (type: UInt16, body: [UInt8])) {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertEqual(UnixSocket.bind(s, to: path), 0)
        XCTAssertEqual(listen(s, 8), 0)
        @Sendable func readExactly(_ fd: Int32, _ n: Int) -> [UInt8]? {
            var out = [UInt8](repeating: 0, count: n)
            var got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r <= 0 { return nil }
                got += r
            }
            return out
        }
        Thread {
            for _ in 0..<connections {
                let c = accept(s, nil, nil)
                guard c >= 0 else { break }
                while let h = readExactly(c, 20) {
                    let type = UInt16(h[6]) << 8 | UInt16(h[7])
                    let length = Int(h[16]) << 24 | Int(h[17]) << 16 | Int(h[18]) << 8 | Int(h[19])
                    guard readExactly(c, length) != nil else { break }
                    let (t, body) = reply(type)
                    var frame: [UInt8] = Array("EXGT".utf8) + [0, 1, UInt8(t >> 8), UInt8(t & 0xff)] + Array(h[8..<16])
                    frame += [UInt8(body.count >> 24 & 0xff), UInt8(body.count >> 16 & 0xff), UInt8(body.count >> 8 & 0xff), UInt8(body.count & 0xff)] + body
                    guard frame.withUnsafeBytes({ send(c, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }) == frame.count else { break }
                    if everyFrame { continue }
                    var sink = [UInt8](repeating: 0, count: 4096)
                    while sink.withUnsafeMutableBytes({ recv(c, $0.baseAddress!, 4096, 0) }) > 0 {}
                    break
                }
                close(c)
            }
            close(s)
        }.start()
    }
}
