// SPDX-License-Identifier: Apache-2.0
//
// The per-key view of a module's run-time patch sites, for the verifier's guest session: which
// sites belong to which key (jump-label key, static-call key, the uniprocessor lock group), so a
// run-time change can be judged as a whole-key transition across every live module
// (ExecGateVerifier GuestSession). Read-only; the legal encodings stay in `RuntimeSiteTable.check`.

extension RuntimeSiteTable {
    /// The key of every `.smp_locks` site: one group (the uniprocessor `lock` prefixes of every
    /// live module move together), keyed by a constant that is no kernel address.
    public static let smpLockGroup = Session.smpLockGroup

    /// One run-time patch site.
    public struct Site: Sendable, Hashable {
        public let address: UInt64
        public let length: Int
        /// The consistency group: the key's address for jump labels and static calls; nil for a
        /// site that changes on its own (ftrace, a trampoline whose key is unknown).
        public let key: UInt64?
        public let kind: ExplanationClass
    }

    /// The state of each key whose sites lie in `region` (the claimed bytes from `base`): per
    /// keyed site at or after `base` whose bytes are inside the region and a legal encoding, its
    /// key → the state they encode, the last such site in address order winning (the explainer
    /// already held every site of a key to one state). Read in place: no site list, no array of
    /// each site's bytes, no search for a site by address.
    public func keyStates(base: UInt64, region: UnsafeRawBufferPointer) -> [UInt64: UInt64] {
        var out: [UInt64: UInt64] = [:]
        for (address, site) in sites {
            guard let key = site.group, address >= base else { continue }
            let off = address - base
            guard off <= UInt64(region.count), site.length <= region.count - Int(off) else { continue }
            let at = Int(off)
            if let state = site.check(UnsafeRawBufferPointer(rebasing: region[at..<at + site.length])) { out[key] = state }
        }
        return out
    }

    /// The site starting at `address`, or nil (one binary search: no index of the sites is kept
    /// beside the table).
    public func site(at address: UInt64) -> Site? {
        sites[address].map { Site(address: address, length: $0.length, key: $0.group, kind: $0.cls) }
    }

    /// Every site, in address order, without making the list.
    public func forEachSite(_ body: (Site) throws -> Void) rethrows {
        for (address, v) in sites { try body(Site(address: address, length: v.length, key: v.group, kind: v.cls)) }
    }

    /// Every site, in address order.
    public var siteList: [Site] {
        sites.sorted { $0.key < $1.key }.map { Site(address: $0.key, length: $0.value.length, key: $0.value.group, kind: $0.value.cls) }
    }
}

extension RuntimeSiteTable {
    /// The bytes a site holds in `state` (for jump labels: key enabled 1 / disabled 0; for static
    /// calls: the target, 0 = NULL), or nil when `address` is not a site. The encoding is the
    /// engine's own (the one `check` accepts for that state).
    public func encoding(at address: UInt64, state: UInt64) -> [UInt8]? {
        sites[address].map { $0.encode(state) }
    }
}
