// SPDX-License-Identifier: Apache-2.0
//
// Runs the real `execgate` binary (built by `swift build --build-tests`) for end-to-end CLI tests.

import _ExecGateInternals

#if canImport(Glibc)
import Glibc
#endif

public struct ProcessResult {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public init(status: Int32, stdout: String, stderr: String) { self.status = status; self.stdout = stdout; self.stderr = stderr }
}

extension Fixtures {
    /// The execgate binary next to the test bundle.
    public static var execgateBinary: String {
        if let env = getenv("EXECGATE_BIN") { return String(cString: env) }
        return packageRoot + "/.build/debug/execgate"
    }

    /// Start `execgate ARGS…` with stdout/stderr to files; returns its pid.
    public static func spawnExecgate(_ args: [String], stdoutPath: String, stderrPath: String) -> pid_t {
        spawn(execgateBinary, args, stdoutPath: stdoutPath, stderrPath: stderrPath)
    }

    /// Start `executable ARGS…` (an absolute path) with stdout/stderr to files; returns its pid.
    public static func spawn(_ executable: String, _ args: [String], stdoutPath: String, stderrPath: String) -> pid_t {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&fa, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = [executable] + args
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &fa, nil, &cargs, environ)
        return rc == 0 ? pid : -1
    }

    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return exitCode(status)
    }

    /// A `waitpid` status as a shell reports it: the exit code, or 128 + the signal that ended
    /// the process (WIFEXITED / WEXITSTATUS / WTERMSIG spelled out: the C macros are not imported).
    public static func exitCode(_ status: Int32) -> Int32 { status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }

    /// `pid`'s exit code (`exitCode`) if it has ended, reaping it; nil while it runs.
    public static func exited(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == pid ? exitCode(status) : nil
    }

    /// `pid`'s exit code once it ends, asked every `pollMicroseconds`; nil when it is still running
    /// `seconds` from now, after which it is killed (SIGKILL) and reaped: a hang.
    public static func wait(_ pid: pid_t, seconds: Double, pollMicroseconds: UInt32 = 20_000) -> Int32? {
        let deadline = MonotonicClock.seconds() + seconds
        while true {
            if let code = exited(pid) { return code }
            if MonotonicClock.seconds() > deadline { kill(pid, SIGKILL); _ = wait(pid); return nil }
            usleep(pollMicroseconds)
        }
    }

    /// Run `execgate ARGS…` to completion.
    public static func runExecgate(_ args: [String]) -> ProcessResult { run(execgateBinary, args) }

    /// `runExecgate(args)` every 100 ms until it exits 0 (a server just spawned is not listening
    /// yet), at most `attempts` times; the last result.
    public static func runExecgateUntilSuccess(_ args: [String], attempts: Int = 100) -> ProcessResult {
        var r = ProcessResult(status: -1, stdout: "", stderr: "")
        for _ in 0..<attempts {
            r = runExecgate(args)
            if r.status == 0 { break }
            usleep(100_000)
        }
        return r
    }

    /// Run `executable ARGS…` (an absolute path) to completion.
    public static func run(_ executable: String, _ args: [String]) -> ProcessResult {
        let dir = temporaryDirectory()
        let pid = spawn(executable, args, stdoutPath: dir + "/out", stderrPath: dir + "/err")
        guard pid > 0 else { return ProcessResult(status: -1, stdout: "", stderr: "spawn failed: \(executable)") }
        let status = wait(pid)
        let out = (try? readFile(dir + "/out")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let err = (try? readFile(dir + "/err")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return ProcessResult(status: status, stdout: out, stderr: err)
    }

    /// `execgate ARGS…` with raw-byte arguments (they need not be UTF-8) and `extraEnvironment`
    /// entries (`NAME=value`, raw bytes) replacing or adding to the runner's environment, stdout
    /// and stderr to `dir`/run.out and run.err; killed after `seconds` (status nil: it had to be
    /// killed, a hang). For the hostile-input CLI tests, whose inputs a `String` cannot carry.
    public static func runExecgate(rawArguments args: [[UInt8]], extraEnvironment: [[UInt8]] = [], in dir: String,
                                   seconds: Double = 60) -> (status: Int32?, stdout: String, stderr: String) {
        let out = dir + "/run.out", err = dir + "/run.err"
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        func c(_ bytes: [UInt8]) -> UnsafeMutablePointer<CChar> {
            let p = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
            for (i, b) in bytes.enumerated() { p[i] = CChar(bitPattern: b) }
            p[bytes.count] = 0
            return p
        }
        var cargs: [UnsafeMutablePointer<CChar>?] = ([Array(execgateBinary.utf8)] + args).map(c) + [nil]
        var env: [[UInt8]] = []
        var e = environ
        while let p = e.pointee { env.append(Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p)))); e += 1 }
        let names = extraEnvironment.compactMap { v in v.firstIndex(of: UInt8(ascii: "=")).map { i in Array(v[..<i]) } }
        env = env.filter { v in !names.contains(where: { v.starts(with: $0 + [UInt8(ascii: "=")]) }) } + extraEnvironment
        var cenv: [UnsafeMutablePointer<CChar>?] = env.map(c) + [nil]
        defer { cargs.forEach { $0?.deallocate() }; cenv.forEach { $0?.deallocate() } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, execgateBinary, &fa, nil, &cargs, &cenv) == 0 else { return (-1, "", "spawn failed") }
        let status = wait(pid, seconds: seconds)
        let o = (try? readFile(out)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let er = (try? readFile(err)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return (status, o, er)
    }
}
