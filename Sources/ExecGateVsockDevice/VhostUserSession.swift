// SPDX-License-Identifier: Apache-2.0
//
// The backend's side of one vhost-user session (one frontend connection): negotiated features,
// the guest memory table, and per-queue ring state. `handle` applies one message and returns the
// reply bytes to send (nil: no reply). A bad message throws `VhostUserError`; the caller answers
// REPLY_ACK with failure or drops the session — never the process.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import _ExecGateInternals

public final class VhostUserSession {
    public struct Vring {
        public var num = 0
        public var base: UInt16 = 0
        public var addr: (desc: UInt64, used: UInt64, avail: UInt64)?
        public var kickFd: Int32 = -1
        public var callFd: Int32 = -1
        public var errFd: Int32 = -1
        /// vhost-user.rst "Ring states": a ring is initialized stopped and disabled; SET_FEATURES
        /// enables every ring unless it acks F_PROTOCOL_FEATURES, which leaves them to
        /// SET_VRING_ENABLE 1. Processed only while started and enabled (`isLive`).
        public var enabled = false
        public var started = false
    }

    public let guestCID: UInt64
    public private(set) var ackedFeatures: UInt64 = 0
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var owned = false
    /// The memory table in use. Replaced whole by an accepted SET_MEM_TABLE, never edited in place.
    public private(set) var memory = GuestMemory()
    public private(set) var vrings = [Vring](repeating: Vring(), count: VsockLimits.queueCount)
    public let queues = (0..<VsockLimits.queueCount).map { _ in Virtqueue() }
    /// Diagnostics: (request, error) of messages refused.
    public var log: (String) -> Void = { _ in }

    public init(guestCID: UInt64) { self.guestCID = guestCID }

    deinit { closeAll() }

    /// Closes every fd and forgets the memory (frontend disconnect).
    public func closeAll() {
        for i in vrings.indices { stopRing(i); closeFd(&vrings[i].callFd); closeFd(&vrings[i].errFd) }
        memory.unmapAll()
        vrings = [Vring](repeating: Vring(), count: VsockLimits.queueCount)
    }

    private func closeFd(_ fd: inout Int32) { if fd >= 0 { close(fd); fd = -1 } }

    /// Whether queue `i` should be processed.
    public func isLive(_ i: Int) -> Bool { vrings[i].started && vrings[i].enabled && queues[i].isReady }

    public func kickFd(_ i: Int) -> Int32 { vrings[i].kickFd }

    /// Tells the guest that queue `i` has new used entries.
    public func notify(_ i: Int) {
        let fd = vrings[i].callFd
        guard fd >= 0 else { return }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(fd, $0.baseAddress, 8) }
    }

    /// Applies one message. Takes ownership of `message.fds` (kept or closed).
    /// - Returns: the reply to send, if any.
    public func handle(_ message: VhostUserMessage) -> [UInt8]? {
        var fdsToClose = message.fds
        defer { for fd in fdsToClose { close(fd) } }
        let req = message.header.request
        do throws(VhostUserError) {
            let payload = try apply(message, keepFd: { fd in fdsToClose.removeAll { $0 == fd } })
            if let payload { return VhostUserMessage.reply(to: req, payload: payload) }
            if message.header.needsReply && protocolFeatures & VhostUserFeatures.protocolReplyAck != 0 {
                return VhostUserMessage.reply(to: req, payload: u64(0))
            }
            return nil
        } catch {
            log("refused \(req): \(error)")
            if message.header.needsReply && protocolFeatures & VhostUserFeatures.protocolReplyAck != 0 {
                return VhostUserMessage.reply(to: req, payload: u64(1))
            }
            return nil
        }
    }

    private func u64(_ v: UInt64) -> [UInt8] { var b: [UInt8] = []; b.appendLE(v); return b }

    /// Returns a reply payload for requests that always answer; nil for the others.
    private func apply(_ m: VhostUserMessage, keepFd: (Int32) -> Void) throws(VhostUserError) -> [UInt8]? {
        switch m.header.request {
        case .getFeatures:
            return u64(VhostUserFeatures.offered)
        case .setFeatures:
            let f = try m.u64()
            guard f & ~VhostUserFeatures.offered == 0 else { throw VhostUserError(.unsupported, "features 0x\(String(f, radix: 16)) not offered") }
            ackedFeatures = f
            // vhost-user.rst "Ring states": without F_PROTOCOL_FEATURES every ring is enabled at
            // once; with it, every ring is disabled until SET_VRING_ENABLE 1 (rust-vmm
            // vhost-user-backend VhostUserHandler::set_features does the same). A ring the
            // frontend has not enabled is never processed.
            let enable = f & VhostUserFeatures.protocolFeatures == 0
            for i in vrings.indices { vrings[i].enabled = enable }
        case .getProtocolFeatures:
            return u64(VhostUserFeatures.offeredProtocol)
        case .setProtocolFeatures:
            let f = try m.u64()
            protocolFeatures = f & VhostUserFeatures.offeredProtocol
        case .setOwner:
            owned = true
        case .resetOwner:
            for i in vrings.indices { stopRing(i) }
            owned = false; ackedFeatures = 0
            for i in vrings.indices { vrings[i].enabled = false }  // Disabled until SET_FEATURES again.
        case .getQueueNum:
            return u64(UInt64(VsockLimits.queueCount))
        case .getMaxMemSlots:
            return u64(UInt64(VsockLimits.maxMemoryRegions))
        case .setMemTable:
            let table = try m.memoryTable()
            // A refused table changes nothing (the kernel's vhost_set_memory(), drivers/vhost/vhost.c:
            // the new table is built whole, every running ring is checked against it with
            // memory_access_ok(), and only then swapped in; on any failure it is freed and the old
            // one stays). Each region's ends must not wrap (vhost_iotlb_add_range(): -EFAULT), the
            // regions must be disjoint in both address spaces (rust-vmm vm-memory
            // GuestRegionCollection::from_regions: MemoryRegionOverlap: one guest address, one
            // meaning), every region must map (sealed, inside its file), and every running ring
            // must lie inside the new table. Only then are the rings moved and the old mappings
            // dropped. (The regions used to be mapped one by one after the old table was
            // unmapped, so a bad second region left the guest's memory half replaced and its
            // running rings stopped.)
            for (i, a) in table.enumerated() {
                for (what, x) in [("guest-physical", a.gpa), ("frontend virtual", a.uva)] where x.addingReportingOverflow(a.size).overflow {
                    throw VhostUserError(.badMemory, "region \(i): \(what) [0x\(String(x, radix: 16)), +\(a.size)) wraps")
                }
                for b in table[(i + 1)...] {
                    for (what, x, y) in [("guest-physical", a.gpa, b.gpa), ("frontend virtual", a.uva, b.uva)] {
                        guard x &+ a.size <= y || y &+ b.size <= x else {  // No wrap: checked above.
                            throw VhostUserError(.badMemory, "regions overlap in \(what) addresses: [0x\(String(x, radix: 16)), +\(a.size)) and [0x\(String(y, radix: 16)), +\(b.size))")
                        }
                    }
                }
            }
            let fresh = GuestMemory()  // Unmapped again by its deinit if anything below throws.
            for (i, r) in table.enumerated() {
                keepFd(m.fds[i])  // `map` closes it.
                try fresh.map(guestPhysAddr: r.gpa, size: r.size, userAddr: r.uva, mmapOffset: r.offset, fd: m.fds[i])
            }
            let running = vrings.indices.filter { vrings[$0].started }
            for i in running {
                guard let a = vrings[i].addr, Virtqueue.ringsFit(size: vrings[i].num, desc: a.desc, avail: a.avail, used: a.used,
                                                                 translate: { fresh.translate(userAddr: $0, length: $1) }) else {
                    throw VhostUserError(.badMemory, "queue \(i) is running and its rings are not inside the new table (GET_VRING_BASE stops it first)")
                }
            }
            for i in queues.indices { queues[i].reset() }
            let old = memory
            memory = fresh
            old.unmapAll()
            for i in running { try configureQueue(i, keepIndices: true) }  // Cannot fail: checked against `fresh` above.
        case .setLogBase, .setLogFd:
            throw VhostUserError(.unsupported, "dirty logging (live migration) is not supported")
        case .setVringNum:
            let s = try m.vringState()
            try requireStopped(s.index, m.header.request)
            guard s.num > 0, s.num <= UInt32(VsockLimits.maxQueueSize), s.num & (s.num - 1) == 0 else {
                throw VhostUserError(.badPayload, "queue \(s.index) size \(s.num)")
            }
            vrings[s.index].num = Int(s.num)
        case .setVringAddr:
            let a = try m.vringAddr()
            // vhost_vring_set_addr() (drivers/vhost/vhost.c): flags other than VHOST_VRING_F_LOG are
            // -EOPNOTSUPP, and logging needs VHOST_F_LOG_ALL, never offered here; avail & 1 and
            // used & 3 are -EINVAL. The descriptor table is 16-aligned too (virtio 1.2 § 2.7,
            // "Alignment"; rust-vmm virtio-queue Queue::is_valid()). Every ring access below is then
            // a naturally aligned load or store (the u16 indices are atomics).
            guard a.flags == 0 else { throw VhostUserError(.unsupported, "queue \(a.index) address flags 0x\(String(a.flags, radix: 16)) (no used-ring logging)") }
            guard a.desc & 0xf == 0, a.avail & 0x1 == 0, a.used & 0x3 == 0 else {
                throw VhostUserError(.badPayload, "queue \(a.index) rings misaligned: desc 0x\(String(a.desc, radix: 16)) (16), avail 0x\(String(a.avail, radix: 16)) (2), used 0x\(String(a.used, radix: 16)) (4)")
            }
            if vrings[a.index].started {
                // A running ring moves at once, or not at all (the kernel's vhost_vring_set_addr() on
                // a vq with a backend: vq_access_ok() on the new rings, -EINVAL and nothing changed
                // if they are not accessible, else they take effect immediately). It was stored and
                // only used at the next SET_MEM_TABLE or kick, while the ring read its old addresses.
                guard Virtqueue.ringsFit(size: vrings[a.index].num, desc: a.desc, avail: a.avail, used: a.used,
                                         translate: { memory.translate(userAddr: $0, length: $1) }) else {
                    throw VhostUserError(.badMemory, "queue \(a.index) is running and its new rings are not inside guest memory")
                }
                vrings[a.index].addr = (a.desc, a.used, a.avail)
                try configureQueue(a.index, keepIndices: true)  // Cannot fail: checked just above.
            } else {
                vrings[a.index].addr = (a.desc, a.used, a.avail)
            }
        case .setVringBase:
            let s = try m.vringState()
            try requireStopped(s.index, m.header.request)
            guard s.num <= UInt32(UInt16.max) else { throw VhostUserError(.badPayload, "queue \(s.index) base \(s.num)") }
            vrings[s.index].base = UInt16(s.num)
        case .getVringBase:
            let s = try m.vringState()
            let base = vrings[s.index].started ? queues[s.index].lastAvailIndex : vrings[s.index].base
            stopRing(s.index)
            vrings[s.index].base = base
            var p: [UInt8] = []
            p.appendLE(UInt32(s.index)); p.appendLE(UInt32(base))
            return p
        case .setVringKick:
            let k = try m.vringFd()
            if let fd = k.fd { try requireEventfd(fd, m.header.request) }
            stopRing(k.index)
            if let fd = k.fd {
                keepFd(fd)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                vrings[k.index].kickFd = fd
            }
            // Kick set = ring starts (vhost-user.rst "Starting and stopping rings").
            try configureQueue(k.index, keepIndices: false)
            vrings[k.index].started = true
        case .setVringCall:
            let c = try m.vringFd()
            if let fd = c.fd { try requireEventfd(fd, m.header.request) }
            closeFd(&vrings[c.index].callFd)
            if let fd = c.fd {
                keepFd(fd)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)  // A full "eventfd" must never stall the loop.
                vrings[c.index].callFd = fd
            }
        case .setVringErr:
            let e = try m.vringFd()
            if let fd = e.fd { try requireEventfd(fd, m.header.request) }
            closeFd(&vrings[e.index].errFd)
            if let fd = e.fd { keepFd(fd); vrings[e.index].errFd = fd }
        case .setVringEnable:
            // vhost-user.rst SET_VRING_ENABLE: "0 disable, 1 enable", sent only once
            // F_PROTOCOL_FEATURES is negotiated; the rust-vmm vhost crate's backend request handler
            // refuses other values (InvalidParam) and the message without the feature
            // (InvalidOperation). Any non-zero value used to enable the ring.
            let s = try m.vringState()
            guard ackedFeatures & VhostUserFeatures.protocolFeatures != 0 else {
                throw VhostUserError(.unsupported, "SET_VRING_ENABLE for queue \(s.index) without F_PROTOCOL_FEATURES negotiated")
            }
            guard s.num <= 1 else { throw VhostUserError(.badPayload, "SET_VRING_ENABLE for queue \(s.index): \(s.num) (0 or 1)") }
            vrings[s.index].enabled = s.num == 1
        case .getConfig:
            let c = try m.configRequest()
            // struct virtio_vsock_config { le64 guest_cid; } — bytes past it read as zero.
            var config = [UInt8](repeating: 0, count: 256)
            withUnsafeBytes(of: guestCID.littleEndian) { for (i, b) in $0.enumerated() { config[i] = b } }
            guard c.offset <= 256, c.size <= 256 - c.offset else { throw VhostUserError(.badPayload, "GET_CONFIG offset \(c.offset) size \(c.size)") }
            var p: [UInt8] = []
            p.appendLE(c.offset); p.appendLE(c.size); p.appendLE(c.flags)
            p += config[Int(c.offset)..<Int(c.offset + c.size)]
            return p
        case .setConfig:
            throw VhostUserError(.unsupported, "the vsock config space is read-only")
        default:
            // Unknown or not negotiated: ignored (REPLY_ACK answers failure via the throw).
            throw VhostUserError(.unsupported, "\(m.header.request) not supported")
        }
        return nil
    }

    /// SET_VRING_NUM / SET_VRING_BASE only on a stopped ring (started by SET_VRING_KICK, stopped by
    /// GET_VRING_BASE: vhost-user.rst "Starting and stopping rings"). The kernel answers -EBUSY
    /// ("Resizing ring with an active backend? You don't want to do that.": vhost_vring_set_num(),
    /// VHOST_SET_VRING_BASE in vhost_vring_ioctl(), drivers/vhost/vhost.c).
    private func requireStopped(_ i: Int, _ request: VhostUserRequest) throws(VhostUserError) {
        guard !vrings[i].started else { throw VhostUserError(.busy, "\(request) for queue \(i) while it runs (GET_VRING_BASE stops it)") }
    }

    /// A ring's kick, call and error descriptors are eventfds (vhost-user.rst, SET_VRING_KICK/CALL/ERR);
    /// the kernel's vhost takes them with eventfd_fget() / eventfd_ctx_fdget() and fails with
    /// -EINVAL otherwise (vhost_vring_ioctl()). Anything else is refused (and closed by `handle`):
    /// a pipe whose writer is gone, a regular file or a socket can poll readable forever, and as a
    /// kick fd that would spin the backend's only thread. An eventfd's /proc/self/fd link is
    /// "anon_inode:[eventfd]" (fs/anon_inodes.c names it after eventfd_fops' "[eventfd]").
    private func requireEventfd(_ fd: Int32, _ request: VhostUserRequest) throws(VhostUserError) {
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        let target = n > 0 ? String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        guard target == "anon_inode:[eventfd]" else {
            throw VhostUserError(.badFd, "\(request): fd is not an eventfd (\(n > 0 ? target : "readlink errno \(errno)"))")
        }
        // Counter mode only. A kick is drained with one read(2); in EFD_SEMAPHORE mode that read
        // takes 1 off the counter, so one write of 2^64 − 2 would keep the fd readable (and the loop
        // spinning) for as many turns. QEMU's notifiers are eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        // (util/event_notifier-posix.c). Linux ≥ 6.6 shows the mode in fdinfo
        // ("eventfd-semaphore: 1"); an older kernel does not, and cannot be asked.
        if let info = Self.fdinfo(fd), info.containsUTF8("\neventfd-semaphore: 1") {
            throw VhostUserError(.badFd, "\(request): eventfd in semaphore mode (EFD_SEMAPHORE)")
        }
    }

    /// /proc/self/fdinfo/FD (a few hundred bytes), or nil.
    private static func fdinfo(_ fd: Int32) -> String? {
        let f = open("/proc/self/fdinfo/\(fd)", O_RDONLY | O_CLOEXEC)
        guard f >= 0 else { return nil }
        defer { close(f) }
        var buf = [UInt8](repeating: 0, count: 1024)
        let n = read(f, &buf, buf.count)
        return n > 0 ? String(decoding: buf.prefix(n), as: UTF8.self) : nil
    }

    private func configureQueue(_ i: Int, keepIndices: Bool) throws(VhostUserError) {
        guard let a = vrings[i].addr, vrings[i].num > 0 else { throw VhostUserError(.badQueue, "queue \(i) started without size or addresses") }
        let q = queues[i]
        let last = q.lastAvailIndex, used = q.usedIndex
        do {
            try q.configure(size: vrings[i].num, desc: a.desc, avail: a.avail, used: a.used) { memory.translate(userAddr: $0, length: $1) }
        } catch {
            throw VhostUserError(.badMemory, "queue \(i): \(error)")
        }
        if keepIndices {
            q.lastAvailIndex = last; q.usedIndex = used
        } else {
            q.lastAvailIndex = vrings[i].base
            q.usedIndex = q.currentUsedIndex
        }
    }

    private func stopRing(_ i: Int) {
        if vrings[i].started { vrings[i].base = queues[i].lastAvailIndex }
        vrings[i].started = false
        queues[i].reset()
        closeFd(&vrings[i].kickFd)
    }
}
