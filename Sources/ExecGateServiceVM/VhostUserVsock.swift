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
    /// Starts the backend and waits until its vhost-user socket exists.
    static func start(_ c: VMConfig, command: [String]) throws(ServiceVMError) -> Int32 {
        for f in [c.vhostUserSocket, c.hybridSocket, c.vsockBackendLog, c.vsockBackendPidFile] { FS.remove(f) }
        let argv = command + ["--socket", c.vhostUserSocket, "--uds", c.hybridSocket, "--guest-cid", "\(c.cid)"]
        let pid = try Subprocess.spawn(argv, outputPath: c.vsockBackendLog)
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while !FS.exists(c.vhostUserSocket) {
            if let rc = Subprocess.wait(pid, timeoutMillis: 0) {
                throw .guestDied("the vsock backend exited with status \(rc)", consoleTail: FS.tail(c.vsockBackendLog))
            }
            if MonotonicClock.nanoseconds() >= deadline {
                kill(pid, SIGKILL); _ = Subprocess.wait(pid, timeoutMillis: 2000)
                throw .timeout("the vsock backend did not create \(c.vhostUserSocket)", consoleTail: FS.tail(c.vsockBackendLog))
            }
            usleep(10_000)
        }
        try FS.write(c.vsockBackendPidFile, "\(pid)\n")
        return pid
    }

    /// Stops the backend recorded in the state directory (pid checked against its socket path).
    static func stop(_ c: VMConfig) {
        guard let s = try? FS.readString(c.vsockBackendPidFile, limit: 64), let pid = Int32(s.trimmingTrailingNewlines()) else { return }
        if Subprocess.isAlive(pid, argument: c.vhostUserSocket) {
            _ = Launcher.stopProcess(pid, argument: c.vhostUserSocket)
        }
        _ = Subprocess.wait(pid, timeoutMillis: 0)  // Reap when it is our child.
        FS.remove(c.vsockBackendPidFile)
    }
}
