// SPDX-License-Identifier: Apache-2.0
//
// The launcher's vhost-user-vsock path (hosts without /dev/vhost-vsock): guest RAM becomes a
// shared memfd, QEMU gets a vhost-user-vsock device bound to a backend process
// (`execgate vsock-backend`) that the launcher starts first and stops with the VM. Host clients
// then reach the verifier at `hybrid:<state-dir>/vsock.sock:<port>` (docs/vsock.md).

#if canImport(Glibc)
import _ExecGateInternals
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension VMConfig {
    /// The vhost-user socket between QEMU and the backend.
    public var vhostUserSocket: String { stateDir + "/vhost-user-vsock.sock" }
    /// The hybrid vsock socket host clients connect to.
    public var hybridSocket: String { stateDir + "/vsock.sock" }
    public var vsockBackendLog: String { stateDir + "/vsock-backend.log" }
    public var vsockBackendPidFile: String { stateDir + "/vsock-backend.pid" }

    /// How a host client reaches the verifier: vhost-vsock → `vsock:CID:PORT`, backend → `hybrid:…`.
    public func hostAddress(vhostUser: Bool) -> String { hostAddress(vhostUser: vhostUser, port: port) }

    /// How a host client reaches guest port `port` (the admin port is the verifier's port + 1).
    public func hostAddress(vhostUser: Bool, port: UInt32) -> String {
        vhostUser ? "hybrid:\(hybridSocket):\(port)" : "vsock:\(cid):\(port)"
    }

    /// Whether `start` uses the vhost-user backend: no /dev/vhost-vsock, and a backend command given.
    public var usesVhostUserVsock: Bool { !hostHasVhostVsock && vsockBackendCommand != nil }

    /// QEMU arguments for the vhost-user-vsock device; `-M` gains `memory-backend=mem`
    /// (vhost-user needs guest RAM the backend can map: a shared memfd of exactly -m).
    func addVhostUserVsock(to a: inout [String]) {
        if let m = a.firstIndex(of: "-M"), m + 1 < a.count { a[m + 1] += ",memory-backend=mem" }
        a += ["-object", "memory-backend-memfd,id=mem,size=\(memoryMiB)M,share=on",
              "-chardev", "socket,id=vu,path=\(vhostUserSocket)",
              "-device", machine == .microvm ? "vhost-user-vsock-device,chardev=vu" : "vhost-user-vsock-pci,chardev=vu"]
    }
}

enum VsockBackendProcess {
    /// Starts the backend and waits until it has bound its vhost-user socket. Called only with
    /// no QEMU of this VM running (`Launcher.start` checked): a backend this state directory
    /// still records is an orphan of a VM that exited (a guest panic, QEMU killed) and is
    /// stopped first; it held the sockets, and the new backend failed on them for good while
    /// `vm stop` no longer found it. The sockets are never removed here: the backend claims them
    /// (`SocketPath`: a stale socket replaced, a live one or any other file refused, named in
    /// its log); the launcher removed them, a live backend's and a regular file alike.
    static func start(_ c: VMConfig, command: [String]) throws(ServiceVMError) -> Int32 {
        stop(c)
        for f in [c.vsockBackendLog, c.vsockBackendPidFile] { FS.remove(f) }
        // Bound when the socket at the path is a new one (a stale one from a killed backend is
        // replaced by the claim): inode and change time differ from what was there before.
        let before = identity(c.vhostUserSocket)
        let argv = command + ["--socket", c.vhostUserSocket, "--uds", c.hybridSocket, "--guest-cid", "\(c.cid)"]
        let pid = try Subprocess.spawn(argv, outputPath: c.vsockBackendLog)
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while identity(c.vhostUserSocket).map({ $0 == before }) ?? true {
            if let rc = Subprocess.wait(pid, timeoutMillis: 0) {
                throw .guestDied("the vsock backend exited with status \(rc); \(c.vsockBackendLog):", consoleTail: FS.tail(c.vsockBackendLog))
            }
            if MonotonicClock.nanoseconds() >= deadline {
                kill(pid, SIGKILL); _ = Subprocess.wait(pid, timeoutMillis: 2000)
                throw .timeout("the vsock backend did not create \(c.vhostUserSocket); \(c.vsockBackendLog):", consoleTail: FS.tail(c.vsockBackendLog))
            }
            usleep(10_000)
        }
        try FS.write(c.vsockBackendPidFile, "\(pid)\n")
        return pid
    }

    /// A socket file's identity (device, inode, change time), nil when there is none.
    static func identity(_ path: String) -> [Int]? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return [Int(st.st_dev), Int(st.st_ino), st.st_ctim.tv_sec, st.st_ctim.tv_nsec]
    }

    /// The backend this state directory records, while it runs (pid checked against its socket path).
    static func runningPid(_ c: VMConfig) -> Int32? {
        guard let pid = Launcher.readPid(c.vsockBackendPidFile), Subprocess.isAlive(pid, argument: c.vhostUserSocket) else { return nil }
        return pid
    }

    /// Stops the backend recorded in the state directory (pid checked against its socket path).
    static func stop(_ c: VMConfig) {
        guard let pid = Launcher.readPid(c.vsockBackendPidFile) else { return }
        if Subprocess.isAlive(pid, argument: c.vhostUserSocket) {
            _ = Launcher.stopProcess(pid, argument: c.vhostUserSocket)
        }
        _ = Subprocess.wait(pid, timeoutMillis: 0)  // Reap when it is our child.
        FS.remove(c.vsockBackendPidFile)
    }
}
