// SPDX-License-Identifier: Apache-2.0
//
// Review round 6 of the atomic writer (Files.writeAtomically / writeAllAtomically: a temporary
// file beside the target, renamed over it).

@testable import _ExecGateInternals
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class Review6Tests: XCTestCase {
    /// HOLE: the temporary file's name is the target's plus ".tmp.PID" (predictable) and it was
    /// opened O_CREAT|O_TRUNC without O_EXCL: a regular file another user planted there (a
    /// shared, sticky directory such as /tmp; `keys generate --out /tmp`) was opened and written,
    /// so the output (a private key, mode 0600) went into the planter's inode through the
    /// descriptor the planter kept open; as root the rename then published that inode, owned by
    /// the planter, as the key file. The writer must create its temporary file itself (O_EXCL).
    func testAPlantedTemporaryFileNeverReceivesTheOutput() throws {
        let dir = "/tmp/execgate-review6-\(getpid())"
        mkdir(dir, 0o777)
        chmod(dir, 0o1777)  // a shared, sticky directory
        let target = dir + "/key.pem"
        let planted = target + ".tmp.\(getpid())"
        defer { unlink(target); unlink(planted); rmdir(dir) }
        // The other user's file, kept open for reading.
        let fd = open(planted, O_RDWR | O_CREAT | O_EXCL, 0o666)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        fchmod(fd, 0o666)
        if getuid() == 0 { XCTAssertEqual(fchown(fd, 65534, 65534), 0) }
        let secret = Array("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".utf8)
        do { try Files.writeAtomically(target, secret, mode: 0o600) } catch { print("writeAtomically refused: \(error)") }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = pread(fd, &buf, buf.count, 0)
        XCTAssertEqual(n, 0, "the planted file received \(n) bytes of the output: \(String(decoding: buf.prefix(max(n, 0)), as: UTF8.self))")
        var st = stat()
        if stat(target, &st) == 0 {
            XCTAssertEqual(st.st_uid, getuid(), "the published output is owned by the user who planted the temporary file")
            XCTAssertEqual(st.st_mode & 0o777, 0o600)
            XCTAssertEqual(try Files.read(target), secret)
        }
    }
}
