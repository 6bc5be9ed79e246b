// SPDX-License-Identifier: Apache-2.0
import ExecGateCommandLine

/// Exit codes shared by every command that reports a verdict.
///   0 allow / success, 1 deny, 2 usage error or unreadable input.
enum ExecGateExit {
    static let allow = ExitCode(0)
    static let deny = ExitCode(1)
    static let usage = ExitCode(2)
}
