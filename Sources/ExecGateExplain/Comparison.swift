// SPDX-License-Identifier: Apache-2.0
//
// Stage 4: comparison. The claim against the replay: every variable site must hold a legal member
// of its set, consistent with the other sites of its key; every other byte must equal the replayed
// value. The first difference is the denial. Then the results of an allowed module: statistics
// by class and the exports later modules may resolve against.

import ExecGateELF

extension Session {
    // MARK: Compare

    func compare() throws {
        let claimed = self.claimed
        // Variable sites, in address order: legal member and consistent per group.
        sortVariableSites()
        // An init region's sites must agree with the module's core sites (same keys, same moment).
        var groupState = inherited?.groupState ?? AddressTable()
        // Static-call key states at this module's sites (the exports' `staticCallStates`).
        var callStates = AddressTable()
        defer { finalGroupState = groupState; staticCallStates = callStates.dictionary }
        // A static-call key's state at verified modules: this module's sites must agree with it
        // (static-call keys and jump-label keys are distinct objects: no address is both).
        let verifiedStates = resolver.staticCallStates
        // The sites read in place through a borrowed buffer (a copy of each site would retain and
        // release its rule's arrays); nothing below changes `variable`.
        let sites = variable
        // claimed.count == image.count (checked in set-up). The equality of the whole region is
        // folded into the same walk, in address order: before site k, the stretch from the last
        // site's offset up to site k's is compared word-wise (its bytes are final: sites are
        // sorted by offset and each writes only [offset, offset + length), so no later site
        // writes below site k's offset), then site k is checked on claimed bytes just brought
        // into the cache by that compare; the tail after the last site last. Every byte is
        // compared once, after every write that can change it: `diff` is zero exactly when the
        // finished image equals the claim (the slow path below then finds the first difference).
        precondition(claimed.count == image.count)
        var diff: UInt64 = 0
        var pos = 0
        @inline(__always) func compareStretch(to end: Int) {
            guard end > pos else { return }
            image.withUnsafeBytes { a in claimed.withUnsafeBytes { b in diff |= Session.xorOr(a, b, pos, end) } }
            pos = end
        }
        sites.withUnsafeBufferPointer { sites in
            for k in sites.indices {
                let site = sites.baseAddress! + k
                let off = site.pointee.offset, len = site.pointee.length, cls = site.pointee.cls, group = site.pointee.group
                compareStretch(to: off)
                // The claimed bytes of the site, read in place (an array only where a message needs it).
                precondition(off >= 0 && len >= 0 && off <= claimed.count - len, "site outside the region")
                let checked = claimed.withUnsafeBytes { site.pointee.check(UnsafeRawBufferPointer(rebasing: $0[off..<off + len])) }
                if let st = checked {
                    if let g = group {
                        // The group's state so far, looked up once (set only when new: a state
                        // already recorded is the same `st`, checked here).
                        let known = groupState[g]
                        if let prev = known, prev != st {
                            write(off, site.pointee.encode(prev), cls)
                            notes.append((off..<off + len, "\(site.pointee.what): state disagrees with other sites of the same key"))
                            continue
                        }
                        if cls == .staticCall, known == nil, let prev = verifiedStates[g], prev != st {
                            write(off, site.pointee.encode(prev), cls)
                            notes.append((off..<off + len, "\(site.pointee.what): state disagrees with the key's sites in verified modules"))
                            continue
                        }
                        if known == nil { groupState.set(g, st) }
                        if cls == .staticCall { callStates.set(g, st) }
                    }
                    write(off, claimed, from: off, count: len, cls)
                } else {
                    let found = Array(claimed[off..<off + len])
                    var exp = site.pointee.encode(group.flatMap { groupState[$0] })
                    if exp == found { exp = site.pointee.encode(nil) }
                    write(off, exp, cls)
                    notes.append((off..<off + len, "\(site.pointee.what): not a legal encoding (allowed: the NULL forms or a branch to a target trusted for the site)"))
                }
            }
        }
        compareStretch(to: image.count)
        // Equal regions are the common case; the slow path only on a difference.
        if diff == 0 { return }
        let img = image
        var differing = 0
        for i in 0..<img.count where img[i] != claimed[i] { differing += 1 }
        for i in 0..<img.count where img[i] != claimed[i] {
            let (sec, so) = sectionOf(regionOffset: i)
            let n = min(8, image.count - i)
            let byteClass = ExplanationClass(rawValue: Int(cls[i]))!  // rawValue set only from ExplanationClass
            var reason = "byte differs from the \(byteClass) value"
            var rule = DenialRule.stage(byteClass)
            if let note = notes.first(where: { $0.range.contains(i) }) { reason = note.text }
            else if let r = relocationCovering(i) { reason = r; rule = .relocation }
            else if sec == "(padding)" { reason = "alignment padding must be zero" }
            var d = deny(rule, reason, section: sec, offset: so, address: base &+ UInt64(i),
                         expected: Array(image[i..<i + n]), found: Array(claimed[i..<i + n]))
            d.denial.unexplainedBytes = differing
            throw d
        }
    }

    /// The OR of `a[i] ^ b[i]` over `lo..<hi` (zero iff the ranges are equal), word-wise.
    @inline(__always) static func xorOr(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ lo: Int, _ hi: Int) -> UInt64 {
        precondition(lo >= 0 && lo <= hi && hi <= a.count && hi <= b.count)
        var acc: UInt64 = 0
        var i = lo
        while i + 32 <= hi {
            acc |= (a.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                | (a.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))
                | (a.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self))
                | (a.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self))
            i += 32
        }
        while i + 8 <= hi { acc |= a.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i, as: UInt64.self); i += 8 }
        while i < hi { acc |= UInt64(a[i] ^ b[i]); i += 1 }
        return acc
    }

    /// `variable.sort { $0.offset < $1.offset }` (stable: sites at one offset keep their order),
    /// by sorting packed (offset, index) words and moving each site once, instead of a merge
    /// sort that moves the sites (each with its rule's sets) at every level.
    func sortVariableSites() {
        let n = variable.count
        precondition(n < 1 << 24 && image.count < 1 << 39, "site or region count beyond the packed sort key")
        var keys: [UInt64] = []
        keys.reserveCapacity(n)
        var sorted = true
        for i in variable.indices {
            let off = variable[i].offset
            precondition(off >= 0)
            if let last = keys.last, UInt64(off) < last >> 24 { sorted = false }
            keys.append(UInt64(off) << 24 | UInt64(i))
        }
        if sorted { return }
        keys.sort()
        // Position k takes the site now at perm[k]: applied in place, cycle by cycle, by swaps
        // (moves: no copy of a site, no second array of sites).
        var perm = keys.map { Int($0 & 0xff_ffff) }
        variable.withUnsafeMutableBufferPointer { sites in
            for i in 0..<n where perm[i] != i {
                var j = i
                while perm[j] != i {
                    let p = perm[j]
                    sites.swapAt(j, p)
                    perm[j] = j
                    j = p
                }
                perm[j] = j
            }
        }
    }

    // MARK: Results

    func statistics() -> ExplainStats {
        var st = ExplainStats()
        st.executableBytes = image.count
        assert(classCounts == recountClasses(), "incremental class counts drifted")
        for (i, n) in classCounts.enumerated() where n > 0 { st.bytesByClass[ExplanationClass(rawValue: i)!] = n }
        st.relocationsApplied = relocCount
        st.sites = siteCounts
        return st
    }

    /// The class counts by one pass over `cls` (debug check of `classCounts`).
    func recountClasses() -> [Int] {
        var counts = [Int](repeating: 0, count: 256)
        for c in cls { counts[Int(c)] += 1 }
        precondition(counts[ExplanationClass.allCases.count...].allSatisfy { $0 == 0 })
        counts.removeLast(256 - ExplanationClass.allCases.count)
        return counts
    }

    /// `__ksymtab_<name>` marks an export of `<name>` (EXPORT_SYMBOL / _GPL). Found once, on the
    /// borrowed name bytes: no `String` is made unless a name is not ASCII (``ExportedNames``).
    func exportedNames() -> ExportedNames {
        if let n = exportedNameCache { return n }
        var e = ExportedNames()
        var marks: [Int] = []
        // "__ksymtab_" as one 8-byte and one 2-byte little-endian compare.
        let head = UInt64(littleEndian: 0x6174_6d79_736b_5f5f), tail = UInt16(littleEndian: 0x5f62)  // "__ksymta", "b_"
        for i in symtab.indices {
            let b = symtab.nameBytes(i)
            if b.count >= 10 && b.loadUnaligned(as: UInt64.self) == head && b.loadUnaligned(fromByteOffset: 8, as: UInt16.self) == tail { marks.append(i) }
        }
        assert(marks == symtab.indices.filter { hasASCIIPrefix(symtab.nameBytes($0), "__ksymtab_") })
        e.table = NameTable(minimumCapacity: marks.count)  // sized once: no rehash as it fills
        for i in marks {
            let b = symtab.nameBytes(i)
            let n = UnsafeRawBufferPointer(rebasing: b[10...])
            guard NameTable.isASCII(n) else { e.allASCII = false; continue }
            // A duplicate (same bytes, so the same String) is one name, as in the Set it replaces.
            if e.table.lookup(n) == nil {
                e.table.insert(n, UInt64(i))
                e.symbols.append(i)
                if n.count < 64 { e.lengthMask |= 1 << UInt64(n.count) } else { e.anyLong = true }
            }
        }
        if !e.allASCII {
            // Some exported name is not ASCII: every use takes the `String` path (canonical
            // equivalence; see NameTable.swift), with the names as one Set, as before.
            var names: Set<String> = []
            for i in symtab.indices where hasASCIIPrefix(symtab.nameBytes(i), "__ksymtab_") { names.insert(String(symtab.name(i).dropFirst(10))) }
            e.strings = names
        }
        exportedNameCache = e
        return e
    }

    func moduleExports() -> ModuleExports {
        let names = exportedNames()
        // The usual case, every exported name and every candidate symbol name ASCII: the exports
        // are gathered by their borrowed bytes into a byte-keyed table (ASCII against ASCII:
        // `String` equality is byte equality, NameTable.swift), which the resolver merges as is.
        // A later symbol of the same name replaces the earlier one's value, as the dictionary
        // assignment did. Cheap integer tests first: names are only hashed for defined non-local
        // symbols.
        if names.allASCII {
            var table = NameTable(minimumCapacity: names.symbols.count)
            var allASCII = true
            if !names.isEmpty {
                for i in symtab.indices where !symtab.isUndefined(i) && symtab.binding(i) != 0 {
                    let b = symtab.nameBytes(i)
                    guard NameTable.isASCII(b) else {
                        // A non-ASCII symbol name may be `String`-equal to an exported ASCII name
                        // (canonical equivalence): if it is, everything takes the `String` path below.
                        if names.stringSet(symtab).contains(symtab.name(i)) { allASCII = false; break }
                        continue
                    }
                    guard names.mayHaveLength(b.count) else { continue }
                    let d = NameTable.digest(b)
                    guard names.table.lookup(b, digest: d) != nil, let v = try? symbolValue(i) else { continue }
                    table.insert(b, v, digest: d)
                }
            }
            if allASCII {
                return ModuleExports(module: claim.name, names: table, otherNames: [:], functionEntries: functionEntries,
                                     staticCallTrustedTargets: ownKeyDefaults, staticCallStates: staticCallStates)
            }
        }
        // Some name is not ASCII: `String` comparison throughout, as before.
        let strings = names.stringSet(symtab)
        var out: [String: UInt64] = [:]
        for i in symtab.indices where !symtab.isUndefined(i) && symtab.binding(i) != 0 {
            let n = symtab.name(i)
            guard strings.contains(n) else { continue }
            if let v = try? symbolValue(i) { out[n] = v }
        }
        return ModuleExports(module: claim.name, symbols: out, functionEntries: functionEntries,
                             staticCallTrustedTargets: ownKeyDefaults, staticCallStates: staticCallStates)
    }
}

/// A module's exported names (`__ksymtab_<name>` symbols), as byte ranges into its string table.
struct ExportedNames {
    /// The distinct ASCII names (value: the `__ksymtab_` symbol's index), byte-keyed.
    var table = NameTable()
    /// The `__ksymtab_` symbol of each distinct ASCII name, in symbol order.
    var symbols: [Int] = []
    /// Bit n set: some name is n bytes long (n < 64); `anyLong`: some is 64 or longer.
    var lengthMask: UInt64 = 0
    var anyLong = false
    /// False if some exported name is not ASCII; then `strings` holds every name and all
    /// comparisons are `String` comparisons.
    var allASCII = true
    var strings: Set<String>?

    var isEmpty: Bool { allASCII ? table.isEmpty : strings!.isEmpty }

    @inline(__always) func mayHaveLength(_ n: Int) -> Bool { n < 64 ? lengthMask & (1 << UInt64(n)) != 0 : anyLong }

    /// The names as `String`s (made here only for the rare paths: a non-ASCII name somewhere, or
    /// a duplicate export to report).
    func stringSet(_ symtab: ELFSymbolTable) -> Set<String> {
        if let s = strings { return s }
        return Set(symbols.map { String(symtab.name($0).dropFirst(10)) })
    }

    /// The borrowed bytes of the `k`th ASCII name.
    @inline(__always) func nameBytes(_ k: Int, _ symtab: ELFSymbolTable) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: symtab.nameBytes(symbols[k])[10...])
    }
}
