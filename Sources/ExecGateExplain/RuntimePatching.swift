// SPDX-License-Identifier: Apache-2.0
//
// Run-time text patching after load: jump-label flips, static_call_update(), the uniprocessor
// `lock` switch. These write to text that is already executable (text_poke_bp). A patch is
// allowed only if it covers exactly one known site of verified code and writes one of that site's
// legal encodings (NOP or jump to the site's own declared target; the NULL forms or a call/jmp to
// a target trusted for the static-call key; `f0`/`3e` for a switchable `lock` prefix). Anything
// else — another address, another length, another target — is denied. An ftrace site
// (`__mcount_loc`) is no run-time patch site: its NOP5 is final, so enabling ftrace on a module is
// denied (docs/trust.md, "Inputs of a verdict").

import ExecGateELF
import _ExecGateInternals

public enum RuntimePatchVerdict: Sendable, Equatable {
    /// Legal; `state` is the site's new state (key enabled 0/1, static-call function, `lock` byte).
    case allowed(kind: String, state: UInt64)
    case denied(reason: String)
}

/// The run-time sites of one allowed module, with their legal encodings.
public struct RuntimeSiteTable: @unchecked Sendable {
    // @unchecked: holds value-type site descriptions only (sets and inline bytes).
    let sites: SiteMap
    public let module: String

    /// Number of run-time patchable sites known for the module.
    public var count: Int { sites.count }
    /// Start addresses of the known sites.
    public var addresses: [UInt64] { sites.addresses }

    /// The consistency key of the site at `address` (jump-label `static_key` or static-call key
    /// address; the smp-lock group for lock prefixes), nil if none or no such site. A run-time
    /// patch of a keyed site is legal only as part of a whole-key transition: every site of the
    /// key, in every live module, to the same state (and `SymbolResolver.recordStaticCallState`
    /// afterwards for static calls).
    public func key(at address: UInt64) -> UInt64? { sites[address]?.group }

    /// Start addresses of this module's sites of `key`.
    public func addresses(ofKey key: UInt64) -> [UInt64] { sites.filter { $0.value.group == key }.map { $0.key }.sorted() }

    /// The state the bytes at a site encode (key enabled 0/1, static-call target, 0 = NULL), nil if
    /// not a legal encoding there.
    public func state(address: UInt64, bytes: [UInt8]) -> UInt64? {
        guard let s = sites[address], bytes.count == s.length else { return nil }
        return s.check(bytes)
    }

    /// Check one text_poke of `bytes` at `address`.
    public func check(address: UInt64, bytes: [UInt8]) -> RuntimePatchVerdict {
        guard let s = sites[address] else {
            return .denied(reason: "0x\(String(address, radix: 16)) is not the start of a run-time patch site of \(module)")
        }
        guard bytes.count == s.length else {
            return .denied(reason: "\(s.what): patch of \(bytes.count) bytes, the site is \(s.length)")
        }
        guard let st = s.check(bytes) else { return .denied(reason: "\(s.what): not a legal encoding") }
        return .allowed(kind: s.what, state: st)
    }
}

extension RuntimeSiteTable {
    /// The sites a successful explanation recorded, by address. They move out of the session
    /// (its `variable` is empty afterwards): the table keeps them without a copy of each.
    init(session s: Session, claim: ModuleClaim) {
        var sites: [VariableSite] = []
        swap(&sites, &s.variable)
        self.init(sites: SiteMap(base: s.base, sortedByOffset: &sites), module: claim.name)
    }
}

/// Sites by start address: two arrays in address order, found by binary search (a dictionary of
/// these values cost a hash per site to build and ~1.5x the memory of a guest's live-site tables).
struct SiteMap: Sequence {
    /// Strictly increasing.
    let addresses: [UInt64]
    let sites: [VariableSite]

    /// `variable` sorted by offset (Comparison.swift sorts it); of several sites at one offset the
    /// last wins, as it did in the dictionary this replaces. The sites move into the map: `variable`
    /// is empty afterwards.
    init(base: UInt64, sortedByOffset variable: inout [VariableSite]) {
        // Usually no two sites share an offset: then the sites are `variable` itself (shared
        // storage, no copy of each site and its rule).
        var a: [UInt64] = []
        a.reserveCapacity(variable.count)
        var distinct = true
        for k in variable.indices {
            let addr = base &+ UInt64(variable[k].offset)
            if let last = a.last, last >= addr {
                precondition(last == addr, "sites not sorted by offset")
                distinct = false
                break
            }
            a.append(addr)
        }
        if distinct {
            addresses = a
            // The table outlives the explanation (a guest's live state while the module is
            // live): the stages grew `variable` by appends, up to twice the sites it holds; a
            // copy holds exactly them, the sites moved into it (no retain of each rule's tables).
            if variable.capacity > variable.count + variable.count / 8 {
                let n = variable.count
                sites = [VariableSite](unsafeUninitializedCapacity: n) { dst, count in
                    variable.withUnsafeMutableBufferPointer { src in
                        // Moved out, each slot refilled with a site that holds no reference (its
                        // rule `.smpLock`) for `variable`'s own release.
                        _ = dst.moveInitialize(fromContentsOf: src)
                        src.initialize(repeating: VariableSite(offset: 0, length: 0, cls: .smpLock, group: nil, label: .smpLock, rule: .smpLock))
                    }
                    count = n
                }
            } else {
                sites = variable
            }
            variable = []
            return
        }
        a = []
        var v: [VariableSite] = []
        a.reserveCapacity(variable.count)
        v.reserveCapacity(variable.count)
        for site in variable {
            let addr = base &+ UInt64(site.offset)
            if let last = a.last, last >= addr {
                precondition(last == addr, "sites not sorted by offset")
                v[v.count - 1] = site
                continue
            }
            a.append(addr)
            v.append(site)
        }
        addresses = a
        sites = v
        variable = []
    }

    var count: Int { addresses.count }

    subscript(address: UInt64) -> VariableSite? { addresses.sortedIndex(of: address).map { sites[$0] } }

    struct Iterator: IteratorProtocol {
        let map: SiteMap
        var i = 0
        mutating func next() -> (key: UInt64, value: VariableSite)? {
            guard i < map.addresses.count else { return nil }
            defer { i += 1 }
            return (map.addresses[i], map.sites[i])
        }
    }
    func makeIterator() -> Iterator { Iterator(map: self) }
    var underestimatedCount: Int { addresses.count }
}

extension Explainer {
    /// The run-time site table of a module; nil unless the module's claim is explained (allowed).
    /// `explain` returns the same table with its verdict; use that when explaining anyway.
    public func runtimeSites(elf: ELFFile, claim: ModuleClaim, resolver: SymbolResolver) -> RuntimeSiteTable? {
        explain(elf: elf, claim: claim, resolver: resolver).runtimeSites
    }
}
