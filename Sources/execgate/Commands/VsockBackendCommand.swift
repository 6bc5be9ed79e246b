// SPDX-License-Identifier: Apache-2.0
//
// `execgate vsock-backend`: the vhost-user-vsock device backend (ExecGateVsockDevice) for hosts
// without /dev/vhost-vsock; `execgate vsock-bench`: round-trip and bulk figures through it.

import _ExecGateInternals
import ExecGateCommandLine
import ExecGateHost
import ExecGateClient
import ExecGateVsockDevice
import ExecGateWire
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

struct VsockBackendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsock-backend",
        abstract: "Serve a vhost-user-vsock device to QEMU; host clients reach the guest through a hybrid Unix socket.",
        discussion: """
        QEMU: -object memory-backend-memfd,id=mem,size=<RAM>,share=on -M <machine>,memory-backend=mem \
        -chardev socket,id=vu,path=<SOCKET> -device vhost-user-vsock-pci,chardev=vu (microvm: vhost-user-vsock-device).
        Host → guest port P: connect to <UDS>, send "CONNECT P\\n", read "OK <hostport>\\n", then a byte stream.
        Guest → host port P: the backend connects to <UDS>_P. See docs/vsock.md.
        """
    )

    @Option(help: ArgumentHelp("vhost-user socket QEMU connects to (created; a stale file is replaced).", valueName: "VU_SOCK"))
    var socket: String

    @Option(help: ArgumentHelp("Hybrid vsock Unix socket for host clients (created).", valueName: "HYBRID_SOCK"))
    var uds: String

    @Option(help: "The guest's CID (device config guest_cid), 3 or more.")
    var guestCid: UInt64 = 3

    @Flag(help: "Log vhost-user messages and refused packets to stderr.")
    var verbose = false

    func validate() throws {
        guard guestCid >= 3, guestCid < UInt64(UInt32.max) else { throw ValidationError("--guest-cid must be 3…4294967294") }
        for (name, p) in [("--socket", socket), ("--uds", uds)] where p.isEmpty || p.utf8.count >= VsockLimits.maxUnixPath - 12 {
            throw ValidationError("\(name): a path of 1…\(VsockLimits.maxUnixPath - 13) bytes")
        }
    }

    func run() throws {
        var config = VsockBackendConfig(vhostUserSocket: socket, hybridSocket: uds, guestCID: guestCid)
        config.verbose = verbose
        // SIGTERM/SIGINT/SIGHUP/SIGQUIT caught before the sockets exist: a stop at any moment after they appear
        // ends `run()` cleanly (socket files removed, then their lock files).
        let stop: TerminationSignals
        do { stop = try TerminationSignals() } catch {
            Console.error("execgate vsock-backend: \(error)")
            throw ExecGateExit.usage
        }
        let backend: VsockBackend
        do { backend = try VsockBackend(config: config) } catch {
            Console.error("execgate vsock-backend: \(error)")
            throw ExecGateExit.usage
        }
        signal(SIGPIPE, SIG_IGN)
        stop.whenArrived { backend.stop() }  // `stop()` only writes to an eventfd
        Console.error("execgate vsock-backend: vhost-user on \(socket), hybrid vsock on \(uds), guest CID \(guestCid)")
        backend.run()
    }
}

struct VsockBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsock-bench",
        abstract: "Measure round trips (p50/p99) and bulk MB/s to a verifier, e.g. through the vsock backend."
    )

    @Option(name: .customLong("connect"), help: ArgumentHelp("hybrid:SOCKET:PORT (or unix:/vsock:)", valueName: "ADDR"))
    var connect: String

    @Option(help: "Sequential status round trips (1…10000000).")
    var roundTrips = 200

    @Option(name: .customLong("bulk-mib"), help: ArgumentHelp("Bulk: MiB per frame (1…28, the wire's largest body).", valueName: "MiB"))
    var bulkMiB = 8

    @Option(help: "Bulk: frames (1…65536).")
    var bulkFrames = 4

    @Flag(help: "JSON output.")
    var json = false

    func validate() throws {
        _ = try Endpoint(parsing: connect, listening: false)
        do { try RoundTripBenchmark.checkSizes(roundTrips: roundTrips, bulkMiB: bulkMiB, bulkFrames: bulkFrames) } catch {
            throw ValidationError(error.description)
        }
    }

    func run() async throws {
        let endpoint = try Endpoint(parsing: connect, listening: false)  // validate() parsed it
        let r: RoundTripBenchmark.Result
        do { r = try await RoundTripBenchmark.run(endpoint: endpoint, roundTrips: roundTrips, bulkMiB: bulkMiB, bulkFrames: bulkFrames) } catch {
            Console.error("execgate vsock-bench: \(connect): \(ConnectionFailure.describe(error))")
            throw ExecGateExit.usage
        }
        if json { print(r.json) } else { print(r.text) }
    }
}
