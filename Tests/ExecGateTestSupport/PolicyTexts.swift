// SPDX-License-Identifier: Apache-2.0
//
// Policy texts several test targets write to files (one spelling of each).

public enum PolicyTexts {
    /// An enforcing policy trusting the guest kernel's builtin certificates that pins one kernel
    /// build (`kernel sha256:KERNEL symbols sha256:SYMBOLS`, hex digests) and allows modules and
    /// text patches: what `policy test --kernel` and `request register-guest --kernel` are checked
    /// against.
    public static func kernelPinned(kernel: String, symbols: String) -> String {
        """
        execgate-policy 1
        id pinned
        version 3
        mode enforce
        trust kernel-builtin
        minimum-digest sha256
        end-state required
        audit-overflow block
        kernel sha256:\(kernel) symbols sha256:\(symbols)
        modules allow
        text-patches allow

        """
    }
}
