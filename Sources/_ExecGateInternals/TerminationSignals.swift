// SPDX-License-Identifier: Apache-2.0
//
// The graceful stop's signals, for `serve`, `vsock-backend` and the guest's service.

import CExecGateSignals
import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// SIGTERM, SIGINT, SIGHUP (a closed terminal) and SIGQUIT, caught from the moment this is made:
/// `wait()` returns, and `whenArrived` actions run, once one has arrived, also when it arrived before they were asked. Made before
/// the process binds anything, so a stop that comes while it starts (a supervisor's stop right
/// after its start) is a graceful stop once it has started, never the signal's default action,
/// which killed `serve` and `vsock-backend` with their sockets and `.lock` files left behind
/// (`ServeSignalTests`).
///
/// The handler is CExecGateSignals' (`execgate_termination_fd`: installed by sigaction before this
/// returns; it makes an eventfd readable), read here by a dispatch source. A `DispatchSource` for
/// the signals themselves was not enough: libdispatch installs its handler when its manager thread
/// registers the source, asynchronously, and a signal before that met the SIG_IGN set ahead of it
/// and was lost (`vsock-backend` then ran on after its SIGTERM).
public final class TerminationSignals: @unchecked Sendable {
    // All state on `queue` (the source's handler runs there).
    private let queue = DispatchQueue(label: "execgate.signals")
    private var source: DispatchSourceRead?
    private var arrived = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var actions: [@Sendable () -> Void] = []

    public struct InstallError: Error, CustomStringConvertible {
        public let errno: Int32
        public var description: String { "cannot catch SIGTERM/SIGINT/SIGHUP/SIGQUIT: eventfd: \(String(cString: strerror(errno)))" }
    }

    public init() throws(InstallError) {
        let fd = execgate_termination_fd()
        guard fd >= 0 else { throw InstallError(errno: errno) }
        queue.sync {
            // The eventfd is never read: it stays readable once a signal came, for every reader.
            let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            s.setEventHandler { [weak self] in self?.fire() }
            s.resume()
            source = s
        }
    }

    deinit { source?.cancel() }

    private func fire() {
        guard !arrived else { return }
        arrived = true
        source?.cancel()
        let w = waiters, a = actions
        waiters = []
        actions = []
        w.forEach { $0.resume() }
        a.forEach { $0() }
    }

    /// Returns once one of the signals has arrived (at once if one already has).
    public func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.async {
                if self.arrived { c.resume() } else { self.waiters.append(c) }
            }
        }
    }

    /// Whether one of the signals has arrived: for a loop that polls (`vm start`'s boot wait).
    public var hasArrived: Bool { queue.sync { arrived } }

    /// Runs `body` on this object's queue once one of the signals has arrived (at once if one
    /// already has): for a synchronous loop that a signal must end (`vsock-backend`).
    public func whenArrived(_ body: @escaping @Sendable () -> Void) {
        queue.async {
            if self.arrived { body() } else { self.actions.append(body) }
        }
    }
}
