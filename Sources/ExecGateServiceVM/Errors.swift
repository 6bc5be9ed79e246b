// SPDX-License-Identifier: Apache-2.0
//
// One typed error for the service VM target. Every failure carries what was being done and the
// errno text, so a PID 1 that must power off can still say why on the console.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum ServiceVMError: Error, CustomStringConvertible, Equatable {
    /// A system call failed: what we tried, on what, and errno.
    case system(String, path: String, errno: Int32)
    /// An input file is not what it claims to be (bad kernel image, unreadable certificate, ...).
    case badInput(String)
    /// Something the user must install or build first; the message says what.
    case missing(String)
    /// A VM with this name is already running.
    /// `stateRoot`: the `--state-dir` the VM's state lives under (the stop hint names it).
    case alreadyRunning(name: String, pid: Int32, stateRoot: String)
    /// The guest did not answer in time; `consoleTail` holds the last console lines.
    case timeout(String, consoleTail: String)
    /// The guest or QEMU stopped unexpectedly.
    case guestDied(String, consoleTail: String)
    /// A kernel command line option had a bad value.
    case badOption(String)

    public var description: String {
        switch self {
        case let .system(what, path, err):
            return "\(what) \(path): \(String(cString: strerror(err))) (errno \(err))"
        case let .badInput(s), let .missing(s), let .badOption(s):
            return s
        case let .alreadyRunning(name, pid, root):
            return "VM '\(name)' is already running (pid \(pid)); `execgate vm stop --name \(name) --state-dir \(root)` first"
        case let .timeout(s, tail), let .guestDied(s, tail):
            // The message names the log the lines are from (console, QEMU or backend log).
            return tail.isEmpty ? s : "\(s)\n--- last lines ---\n\(tail)"
        }
    }

    static func sys(_ what: String, _ path: String) -> ServiceVMError {
        .system(what, path: path, errno: errno)
    }
}
