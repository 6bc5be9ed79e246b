// SPDX-License-Identifier: Apache-2.0
//
// posix_spawn without Foundation: argv exactly as given (no shell, so no quoting or injection
// issues with paths), stdin from /dev/null, stdout+stderr to a file.

#if canImport(Glibc)
import _ExecGateInternals
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Subprocess {
    /// Finds an executable on $PATH (or returns `name` when it contains a slash and exists).
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let p = dir + "/" + name
            if access(p, X_OK) == 0 { return p }
        }
        return nil
    }

    /// Starts `argv` with output to `outputPath` (appended). Returns the pid.
    public static func spawn(_ argv: [String], outputPath: String) throws(ServiceVMError) -> pid_t {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&fa, 1, 2)
        // The child starts with an empty signal mask and default dispositions: a parent that blocks
        // signals (test runners, thread pools) must not hand that to QEMU, whose TCG vCPU thread
        // is kicked with signals and otherwise never runs the guest.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &fa, &attr, cargs, environ)
        guard rc == 0 else { throw .system("cannot start", path: argv[0], errno: rc) }
        return pid
    }

    /// Waits for `pid`; returns its exit status (128+signal when killed), or nil on timeout.
    public static func wait(_ pid: pid_t, timeoutMillis: Int?) -> Int32? {
        let deadline = timeoutMillis.map { MonotonicClock.nanoseconds() + UInt64($0) * 1_000_000 }
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, deadline == nil ? 0 : WNOHANG)
            if r == pid {
                if status & 0x7F == 0 { return (status >> 8) & 0xFF }
                return 128 + (status & 0x7F)
            }
            if r < 0 && errno != EINTR { return -1 }
            if let d = deadline, MonotonicClock.nanoseconds() >= d { return nil }
            if deadline != nil { usleep(20_000) }
        }
    }

    /// Whether a process exists and one of its arguments is exactly `argument` (guards against
    /// pid reuse). Exactly: a substring test took VM `ab`'s QEMU (`-name execgate-vm-ab,…`) for
    /// VM `a`'s when a stale pid file named it, and `vm stop --name a` killed it.
    public static func isAlive(_ pid: pid_t, argument: String) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let cmd = try? FS.read("/proc/\(pid)/cmdline", limit: 1 << 20) else { return false }
        // A zombie has an empty cmdline: treat as dead.
        let want = Array(argument.utf8)
        return cmd.split(separator: 0, omittingEmptySubsequences: false).contains { $0.elementsEqual(want) }
    }
}
