// SPDX-License-Identifier: Apache-2.0
//
// The one rule for tests that need something outside the package (QEMU, the service VM image, the
// static execgate, the unpacked Debian kernel): under `make test` (scripts/run-tests.sh sets
// EXECGATE_REQUIRE_INPUTS=1, and EXECGATE_VM_TEST=1 for the guest-booting phase) a missing input is
// a FAILURE, never a skip; in a
// plain `swift test` it is a skip whose message names the missing input and the command that makes it.

import XCTest
#if canImport(Glibc)
import Glibc
#endif

public struct MissingTestInput: Error, CustomStringConvertible {
    public let description: String
}

public enum VMTestInputs {
    /// True when the run demands every input: make test sets EXECGATE_REQUIRE_INPUTS=1 for both
    /// phases and EXECGATE_VM_TEST=1 for the guest-booting one.
    public static var required: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["EXECGATE_VM_TEST"] == "1" || env["EXECGATE_REQUIRE_INPUTS"] == "1"
    }

    /// Fails (EXECGATE_VM_TEST=1) or skips with `why`, which must name the missing input.
    public static func missing(_ why: String) throws -> Never {
        if required { throw MissingTestInput(description: "make test needs every input, but \(why)") }
        throw XCTSkip(why)
    }

    /// `path` of an executable on PATH, or fail/skip naming it.
    @discardableResult
    public static func requireTool(_ name: String, install: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
        try missing("\(name) not installed (\(install))")
    }

    /// `path` if it exists, or fail/skip with "no WHAT at PATH: run `HOW`".
    @discardableResult
    public static func requireFile(_ path: String, _ what: String, make how: String) throws -> String {
        if access(path, F_OK) != 0 { try missing("no \(what) at \(path): run `\(how)`") }
        return path
    }
}

/// What a guest-booting test needs: QEMU, the service VM image in Images/out and the static
/// execgate. Returns the image directory.
@discardableResult
public func requireVM(image: Bool = true) throws -> (qemu: String, imageDir: String, staticExecgate: String) {
    let qemu = try VMTestInputs.requireTool("qemu-system-x86_64", install: "apt-get install qemu-system-x86")
    let imageDir = Fixtures.packageRoot + "/Images/out"
    let staticExecgate = Fixtures.packageRoot + "/.build-static/release/execgate"
    try VMTestInputs.requireFile(staticExecgate, "static execgate", make: "make image")
    if image { try VMTestInputs.requireFile(imageDir, "service VM image directory", make: "make image") }
    return (qemu, imageDir, staticExecgate)
}
