// SPDX-License-Identifier: Apache-2.0
//
// Runs the real `execgate` binary (built by `swift build --build-tests`) for end-to-end CLI tests.

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
        // WIFEXITED / WEXITSTATUS, spelled out (the C macros are not imported).
        if status & 0x7f == 0 { return (status >> 8) & 0xff }
        return 128 + (status & 0x7f)
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
}
