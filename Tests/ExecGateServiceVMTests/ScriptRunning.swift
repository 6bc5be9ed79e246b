// SPDX-License-Identifier: Apache-2.0
//
// Running one of the project's build scripts (scripts/build-kernel.sh, scripts/build-openssl.sh) from a
// test: its exit code and everything it printed, within a minute.

import ExecGateTestSupport
import Foundation
import XCTest
@testable import ExecGateServiceVM

extension XCTestCase {
    /// `argv` to completion with stdout and stderr in one log under `dir`: (exit code, output).
    /// Fails the test (and returns -1) if it runs longer than 60 s.
    func runScript(_ argv: [String], dir: String) throws -> (Int32, String) {
        let log = dir + "/out-\(ProcessInfo.processInfo.globallyUniqueString).log"
        let pid = try Subprocess.spawn(argv, outputPath: log)
        guard let rc = Subprocess.wait(pid, timeoutMillis: 60_000) else {
            kill(pid, SIGKILL); _ = Subprocess.wait(pid, timeoutMillis: 5000)
            XCTFail("\(argv.joined(separator: " ")) did not finish in 60 s")
            return (-1, "")
        }
        return (rc, (try? FS.readString(log, limit: 1 << 20)) ?? "")
    }
}
