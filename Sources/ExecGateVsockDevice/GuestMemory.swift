// SPDX-License-Identifier: Apache-2.0
//
// Guest memory as the frontend shared it (vhost-user SET_MEM_TABLE): regions of guest-physical
// addresses, each also known by the frontend's own virtual address (vring addresses arrive in those)
// and mapped here from the region's fd. Every translation checks that the whole [addr, addr+len)
// lies inside one region, with overflow-free arithmetic; nothing outside is ever dereferenced.

import CExecGateVsockSys

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One region.
///
///     struct vhost_user_memory_region {   // docs/interop/vhost-user.rst "Memory region description"
///         uint64_t guest_phys_addr;
///         uint64_t memory_size;
///         uint64_t userspace_addr;
///         uint64_t mmap_offset;
///     };
public struct MemoryRegion: @unchecked Sendable {
    // @unchecked: `host` points into a shared mapping owned by `GuestMemory`; only the device's
    // single event-loop thread uses it.
    public let guestPhysAddr: UInt64
    public let size: UInt64
    public let userAddr: UInt64
    /// Where the region's first byte is mapped in this process.
    public let host: UnsafeMutableRawPointer
    /// The mapping to undo (nil: memory owned elsewhere, e.g. tests).
    let mapping: (base: UnsafeMutableRawPointer, length: Int)?

    public init(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, host: UnsafeMutableRawPointer) {
        self.guestPhysAddr = guestPhysAddr; self.size = size; self.userAddr = userAddr; self.host = host; self.mapping = nil
    }

    init(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, host: UnsafeMutableRawPointer, mapping: (UnsafeMutableRawPointer, Int)) {
        self.guestPhysAddr = guestPhysAddr; self.size = size; self.userAddr = userAddr; self.host = host; self.mapping = mapping
    }

    /// `[addr, addr+length)` relative to `base` inside `[base, base+size)`, or nil.
    @inline(__always)
    func offset(of addr: UInt64, length: UInt64, base: UInt64) -> Int? {
        guard addr >= base else { return nil }
        let off = addr &- base  // No wrap: addr >= base.
        guard off <= size, length <= size &- off, let o = Int(exactly: off) else { return nil }
        return o
    }
}

/// The guest's memory map. Owns the mappings it created (`unmapAll`).
public final class GuestMemory: @unchecked Sendable {
    // @unchecked: mutated and read only on the device's event-loop thread.
    public private(set) var regions: [MemoryRegion] = []

    public init(regions: [MemoryRegion] = []) { self.regions = regions }

    /// Host pointer for guest-physical `[gpa, gpa+length)`, or nil when it is not inside one region.
    public func translate(gpa: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions {
            if let o = r.offset(of: gpa, length: length, base: r.guestPhysAddr) { return r.host + o }
        }
        return nil
    }

    /// Host pointer for the frontend's virtual `[uva, uva+length)` (vring addresses), or nil.
    public func translate(userAddr uva: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions {
            if let o = r.offset(of: uva, length: length, base: r.userAddr) { return r.host + o }
        }
        return nil
    }

    /// Maps one region from its fd (`mmap_offset` bytes into the file). Closes `fd` either way.
    public func map(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, mmapOffset: UInt64, fd: Int32) throws(VhostUserError) {
        defer { close(fd) }
        guard size > 0, let sz = Int(exactly: size), let off = Int(exactly: mmapOffset),
              case (let total, false) = sz.addingReportingOverflow(off),
              case (_, false) = guestPhysAddr.addingReportingOverflow(size),
              case (_, false) = userAddr.addingReportingOverflow(size) else {
            throw VhostUserError(.badMemory, "region gpa 0x\(String(guestPhysAddr, radix: 16)) size \(size) offset \(mmapOffset) overflows")
        }
        guard regions.count < VsockLimits.maxMemoryRegions else { throw VhostUserError(.badMemory, "more than \(VsockLimits.maxMemoryRegions) regions") }
        // Touching a mapping past the end of its file raises SIGBUS, which would kill the whole
        // backend. Checking the size now is not enough (the frontend could ftruncate the file
        // later), so the file must be sealed against shrinking: F_SEAL_SHRINK cannot be removed
        // once set, so the size checked below holds for the life of the mapping. QEMU's
        // `memory-backend-memfd` seals F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL by default
        // (backends/hostmem-memfd.c: `m->seal = true` in memfd_backend_instance_init); a
        // `memory-backend-file` (or `seal=off`) cannot be sealed and is refused here.
        let seals = egv_get_seals(fd)
        guard seals >= 0, seals & EGV_F_SEAL_SHRINK != 0 else {
            throw VhostUserError(.badMemory, seals < 0
                ? "region fd cannot be sealed (errno \(errno)): use memory-backend-memfd (sealed by default)"
                : "region fd is not sealed against shrinking (F_SEAL_SHRINK): use memory-backend-memfd with seal=on")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 0, Int(st.st_size) >= total else {
            throw VhostUserError(.badMemory, "region of \(total) bytes exceeds its file (\(st.st_size) bytes)")
        }
        let p = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw VhostUserError(.badMemory, "mmap of \(total) bytes failed: errno \(errno)")
        }
        regions.append(MemoryRegion(guestPhysAddr: guestPhysAddr, size: size, userAddr: userAddr, host: p + off, mapping: (p, total)))
    }

    public func unmapAll() {
        for r in regions { if let m = r.mapping { munmap(m.base, m.length) } }
        regions.removeAll()
    }

    deinit { unmapAll() }
}
