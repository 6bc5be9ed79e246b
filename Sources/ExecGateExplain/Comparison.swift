// SPDX-License-Identifier: Apache-2.0
//
// Stage 4: comparison. The claim against the replay: every variable site must hold a legal member
// of its set, consistent with the other sites of its key; every other byte must equal the replayed
// value. The first difference is the denial. Then the results of an allowed module: statistics
// by class and the exports later modules may resolve against.

import ExecGateELF
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Session {
    // MARK: Compare

    /// A site as a denial names it: its kind and key, the key by the symbol this module's ELF
    /// reaches it through (`__SCK__<name>`, or `__SCT__<name>` for a key exported by its
    /// trampoline) when one resolves to it, else by address alone. Messages only.
    func describe(_ site: VariableSite) -> String {
        guard site.label.showsKey, let key = site.group, let name = keySymbolName(key) else { return site.what }
        return "\(site.label.text) (key 0x\(String(key, radix: 16)) \(name))"
    }

    /// The first `__SCK__`/`__SCT__` symbol of the module whose value in this session is `key`
    /// (a scan of the symbol table: denial messages only).
    func keySymbolName(_ key: UInt64) -> String? {
        for i in symtab.indices where i < symValue.count && symValue[i] == key {
            if symtab.nameHasPrefix(i, "__SCK__") || symtab.nameHasPrefix(i, "__SCT__") { return symtab.name(i) }
        }
        return nil
    }

    /// Why a site's expected bytes differ from its claimed ones (`notes`, for the first-difference
    /// report), put into words only for the note a denial reports (`noteText`): a sentence made
    /// for every such site, its key named by a scan of the symbol table (`describe`), was
    /// sites × symbols of CPU and a few hundred bytes a site, from a module listing one
    /// illegal site a million times (a review, 2026-12-07).
    enum SiteNote {
        /// The key's state at another of this module's sites: the key's first site in address
        /// order (an index in the sorted sites) when that is before this one.
        case disagrees(first: Int?)
        /// The key's state at verified modules' sites.
        case disagreesWithVerified
        /// No legal encoding; `noEncoding`: none of the site's encodings is legal at all.
        case illegal(noEncoding: Bool)
    }

    /// The words of note `why` on site `k` of `sites` (the sorted sites the note's indices name).
    func noteText(_ why: SiteNote, site k: Int, in sites: [VariableSite]) -> String {
        let site = sites[k]
        switch why {
        case .disagrees(let first):
            var other = "other sites of the same key"
            if let f = first {
                let fo = sites[f].offset, (fs, fso) = sectionOf(regionOffset: fo)
                other = "the same key's site at 0x\(String(base &+ UInt64(fo), radix: 16)) (\(fs)+0x\(String(fso, radix: 16))), which holds another state: the kernel writes every site of a key to one state"
            }
            return "\(describe(site)): state disagrees with \(other)"
        case .disagreesWithVerified:
            return "\(describe(site)): state disagrees with the key's sites in verified modules"
        case .illegal(let none):
            return none
                ? "\(describe(site)): no encoding of this site is legal — no target is trusted for its key and its NULL forms are no state of it (a tracepoint key is written only by tracepoint_update_call(), to its iterator __traceiter_<name> or a probe: the registration must name the iterator; a PREEMPT_DYNAMIC key disabled to __static_call_return0 needs that function registered)"
                : "\(describe(site)): not a legal encoding (allowed: the NULL forms or a branch to a target trusted for the site)"
        }
    }

    func compare() throws {
        // The sort packs a site's index in 24 bits: a module listing more run-time sites (a
        // `.ko` of a gigabyte, which only an offline capture can hold: a request body is at most
        // 28 MiB) is refused here rather than trapped there.
        guard variable.count < 1 << 24 else {
            throw deny(.malformedELF, "the module's site tables list \(variable.count) run-time sites (more than 2^24: not modelled)")
        }
        let claimed = self.claimed
        // Variable sites, in address order: legal member and consistent per group.
        sortVariableSites()
        // An init region's sites must agree with the module's core sites (same keys, same moment).
        // (Both tables sized once for the keyed sites, at most 4,096 slots ahead: grown one
        // insert at a time they rehashed several times in a module with hundreds of keys.)
        var keyed = 0, staticKeyed = 0
        variable.withUnsafeBufferPointer { sites in  // (fields read in place: no site copied)
            for k in sites.indices where sites[k].label != .smpLock && sites[k].group != nil {
                keyed += 1
                if sites[k].cls == .staticCall { staticKeyed += 1 }
            }
        }
        var groupState = inherited?.groupState ?? AddressTable(expecting: keyed)
        // Static-call key states at this module's sites (the exports' `staticCallStates`).
        var callStates = AddressTable(expecting: staticKeyed)
        defer { finalGroupState = groupState; staticCallStates = callStates.dictionary }
        // A static-call key's state at verified modules: this module's sites must agree with it
        // (static-call keys and jump-label keys are distinct objects: no address is both).
        let verifiedStates = resolver.staticCallStates
        // The sites read in place, `variable` moved out for the walk (put back on every exit;
        // nothing below reads it): through a mutable buffer, `checkInPlace` borrows each site
        // where a call on `UnsafePointer.pointee` copied it (a retain and release of its rule's
        // target set or list a site: 8,574 copies a corpus pass).
        var siteArray: [VariableSite] = []
        swap(&siteArray, &variable)
        defer { swap(&siteArray, &variable) }
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
        // The first site whose claimed bytes are no legal encoding and equal the encoding written
        // for it (the NULL form, when that is no state of the key: a PREEMPT_DYNAMIC key disabled
        // to __static_call_return0, a tracepoint key): a byte-equal claim that is still denied.
        var illegalAt: Int? = nil
        @inline(__always) func compareStretch(to end: Int) {
            guard end > pos else { return }
            image.withUnsafeBytes { a in claimed.withUnsafeBytes { b in diff |= Session.xorOr(a, b, pos, end) } }
            pos = end
        }
        // Each key's first site (index into `sites`), kept once a disagreement needs it.
        var firstOfGroup: AddressTable? = nil
        siteArray.withUnsafeMutableBufferPointer { sites in
            for k in sites.indices {
                let site = sites.baseAddress! + k
                let off = site.pointee.offset, len = site.pointee.length, cls = site.pointee.cls, group = site.pointee.group
                if let g = group, firstOfGroup != nil, firstOfGroup![g] == nil { firstOfGroup!.set(g, UInt64(k)) }
                compareStretch(to: off)
                // The claimed bytes of the site, read in place (an array only where a message needs it).
                precondition(off >= 0 && len >= 0 && off <= claimed.count - len, "site outside the region")
                let checked = claimed.withUnsafeBytes { site.pointee.checkInPlace(UnsafeRawBufferPointer(rebasing: $0[off..<off + len])) }
                if let st = checked {
                    if let g = group {
                        // The group's state so far, looked up once (set only when new: a state
                        // already recorded is the same `st`, checked here).
                        let known = groupState[g]
                        if let prev = known, prev != st {
                            write(off, site.pointee.encode(prev), cls)
                            // Name the site whose state the key took (the first of the key in
                            // address order): either of the two may be the one a guest changed.
                            // The key's first site in address order, from a table made at the
                            // first disagreement (a scan from site 0 at each one was quadratic
                            // in a module with many disagreeing sites, round 13).
                            if firstOfGroup == nil {
                                var t = AddressTable(expecting: k + 1)
                                for e in 0...k { if let eg = sites[e].group, t[eg] == nil { t.set(eg, UInt64(e)) } }
                                firstOfGroup = t
                            }
                            let f = firstOfGroup![g].map { Int($0) }
                            notes.append((off..<off + len, k, .disagrees(first: f.flatMap { $0 < k ? $0 : nil })))
                            continue
                        }
                        if cls == .staticCall, known == nil, let prev = verifiedStates[g], prev != st {
                            write(off, site.pointee.encode(prev), cls)
                            notes.append((off..<off + len, k, .disagreesWithVerified))
                            continue
                        }
                        if known == nil { groupState.set(g, st) }
                        if cls == .staticCall { callStates.set(g, st) }
                    }
                    claimed.withUnsafeBytes { write(off, $0, from: off, count: len, cls) }
                } else {
                    let found = Array(claimed[off..<off + len])
                    // The expected bytes: the first of these that is a legal encoding of the site
                    // and differs from the claim — the key's state at this module's other sites
                    // (else, a static call, at verified modules'), its NULL form, a branch to its
                    // first trusted target (a key whose NULL form is no state: a tracepoint key, a
                    // PREEMPT_DYNAMIC key) — else the first that differs. Only when none differs
                    // is the denial a byte-equal one (`illegalAt`).
                    let site0 = site.pointee
                    var candidates = [site0.encode(group.flatMap { groupState[$0] ?? (cls == .staticCall ? verifiedStates[$0] : nil) }), site0.encode(nil)]
                    if let t = site0.firstTrustedTarget { candidates.append(site0.encode(t)) }
                    let exp = candidates.first { $0 != found && site0.check($0) != nil } ?? candidates.first { $0 != found } ?? candidates[0]
                    if exp == found && illegalAt == nil { illegalAt = off }
                    write(off, exp, cls)
                    // When no encoding of the site is legal (no target trusted for its key, and
                    // NULL no state of it), the expected bytes shown are no answer either: say so,
                    // and why, instead of suggesting them.
                    let none = cls == .staticCall && !candidates.contains { site0.check($0) != nil } && site0.firstTrustedTarget == nil
                    notes.append((off..<off + len, k, .illegal(noEncoding: none)))
                }
            }
        }
        compareStretch(to: image.count)
        // Equal regions are the common case; the slow path only on a difference.
        if diff == 0 && illegalAt == nil { return }
        let img = image
        // (The claim's bytes read in place: a subscript per byte went through ClaimBytes'
        // storage test each time, over the whole region, on a denial any one byte brings.)
        try claimed.withUnsafeBytes { found in
            var differing = 0
            for i in 0..<img.count where img[i] != found[i] || i == illegalAt { differing += 1 }
            for i in 0..<img.count where img[i] != found[i] || i == illegalAt {
                let (sec, so) = sectionOf(regionOffset: i)
                let n = min(8, image.count - i)
                let byteClass = ExplanationClass(rawValue: Int(cls[i]))!  // rawValue set only from ExplanationClass
                var reason = "byte differs from the \(byteClass) value"
                var rule = DenialRule.stage(byteClass)
                if let note = notes.first(where: { $0.range.contains(i) }) { reason = noteText(note.why, site: note.site, in: siteArray) }
                else if let r = relocationCovering(i) { reason = r; rule = .relocation }
                else if sec == "(padding)" { reason = "alignment padding must be zero" }
                var d = deny(rule, reason, section: sec, offset: so, address: base &+ UInt64(i),
                             expected: Array(image[i..<i + n]), found: Array(found[i..<i + n]))
                d.denial.unexplainedBytes = differing
                throw d
            }
        }
        // Unreachable (a difference or an illegal site is a byte the loops find); fail closed
        // should a later change make it reachable: denied, never allowed by falling through.
        throw deny(.stage(.elf), "the region differs from the replay at a byte the comparison did not locate (not modelled)")
    }

    /// The OR of `a[i] ^ b[i]` over `lo..<hi` (zero iff the ranges are equal), word-wise.
    @inline(__always) static func xorOr(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ lo: Int, _ hi: Int) -> UInt64 {
        precondition(lo >= 0 && lo <= hi && hi <= a.count && hi <= b.count)
        // Long stretches (most of a module's bytes lie between its sites) through the C
        // library's vectorised memcmp; only zero or not matters here.
        #if canImport(Glibc) || canImport(Musl)
        if hi - lo >= 64 { return memcmp(a.baseAddress! + lo, b.baseAddress! + lo, hi - lo) == 0 ? 0 : 1 }
        #endif
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
        // By offset alone, stably (the index part keeps the append order of one offset's sites,
        // as `keys.sort()` did): a radix sort of the offsets (the region is under 2^32 bytes).
        if image.count <= Int(UInt32.max) { AddressSort.radixSort(&keys, from: 0, shift: 24) } else { keys.sort() }
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
        precondition(classCounts.count == ExplanationClass.allCases.count && siteCountByClass.count == ExplanationClass.allCases.count)
        st.classBytes = classCounts
        st.relocationsApplied = relocCount
        st.classSites = siteCountByClass
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

    // MARK: Exports: the ksymtab entries

    /// The module's exports as the kernel reads them: the entries of its `__ksymtab` and
    /// `__ksymtab_gpl` sections (`find_module_sections()`: `section_objs()` on the first SHF_ALLOC
    /// section of each name, `sh_size / sizeof(struct kernel_symbol)` entries at its laid-out
    /// address), each a `struct kernel_symbol { int value_offset; int name_offset; int
    /// namespace_offset; }` (x86-64: CONFIG_HAVE_ARCH_PREL32_RELOCATIONS, 12 bytes) whose fields
    /// `apply_relocate_add()` wrote. `kernel_symbol_value()` is `&value_offset + value_offset`,
    /// `kernel_symbol_name()` is `&name_offset + name_offset`, a NUL-terminated string
    /// (kernel/module/main.c, include/linux/export.h; the same in 6.1 and 6.12). Neither the
    /// `__ksymtab_<name>` symbols nor the symbols named by the strings matter to the kernel.
    ///
    /// Read once, in place on the relocated copies (`dataCopy`, as `table()` reads the other
    /// tables), after relocation; no `String` is made. Denied, since nothing explains it and no
    /// real module has it (docs/trust.md "Exports"):
    /// - a `__ksymtab`/`__ksymtab_gpl` section that is executable (its bytes would be code) or
    ///   whose size is not a multiple of 12 (the kernel ignores the tail);
    /// - an entry whose `value_offset` or `name_offset` field is not written by exactly one
    ///   R_X86_64_PC32/PLT32 record at that field (no other record touching it): what
    ///   `__KSYMTAB()` (`.long sym - .`) assembles to;
    /// - a writable ksymtab, or a name in a writable section (SHF_WRITE, or SHF_RO_AFTER_INIT:
    ///   laid out with `.data..ro_after_init`, writable while the module's init runs): the kernel
    ///   reads entry and name again at each later lookup, so they must be read-only
    ///   (`module_enable_ro()` in complete_formation()) before any module code could change them;
    /// - a name outside the module's own allocated core data sections (normally
    ///   `__ksymtab_strings`), or not NUL-terminated inside its section, or not ASCII (C
    ///   identifiers are; names are compared as bytes, `strcmp()`, throughout);
    /// - entries not in strictly increasing `strcmp()` order within their table: the kernel finds
    ///   a module's export by `bsearch()` (`find_exported_symbol_in_section()`, `cmp_name()`),
    ///   which the linker's `SORT(___ksymtab+*)` (scripts/module.lds.S) makes exact; out of order
    ///   it could miss a name, or pick either of two equal ones;
    /// - a name in both tables (`find_symbol()` would take the `__ksymtab` one; never built).
    /// - a value field relocated against a symbol of the module's init sections (`initSymbol`).
    /// Any other value is the kernel's: `S + A` of the record, S as `simplify_symbols()` gives it.
    /// The namespace field is not read: `verify_namespace_is_imported()` (6.1) uses an export's
    /// namespace only to refuse a later *importer* that lacks `MODULE_IMPORT_NS()`, a refusal
    /// ExecGate does not model for any exporter (core kernel included): not modelling it can
    /// only allow such an importer, never change a byte the kernel writes.
    func exportedNames() throws -> ExportedNames {
        if let n = exportedNameCache { return n }
        var tables: [(index: Int, gpl: Bool)] = []
        for (name, gpl) in [("__ksymtab", false), ("__ksymtab_gpl", true)] {
            if let s = findSec(name) { tables.append((s.index, gpl)) }
        }
        var entries = 0
        for t in tables {
            let s = elf.sections[t.index]
            guard s.size % Session.kernelSymbolSize == 0 else {
                throw deny(.malformedELF, "\(s.name) is \(s.size) bytes, not a whole number of 12-byte struct kernel_symbol entries", section: s.name)
            }
            entries += s.size / Session.kernelSymbolSize
        }
        var e = ExportedNames(expecting: entries)
        var names = NameSource()
        for t in tables { try readKsymtab(t.index, into: &e, names: &names) }
        exportedNameCache = e
        return e
    }

    /// `sizeof(struct kernel_symbol)` with PREL32 offsets.
    static let kernelSymbolSize = 12

    /// The data section that held the last name (normally `__ksymtab_strings`) and its relocated bytes.
    struct NameSource {
        var section = -1
        var lo: UInt64 = 0
        var bytes: [UInt8] = []
    }

    /// The entries of one ksymtab section `i` into `e` (see `exportedNames`).
    private func readKsymtab(_ i: Int, into e: inout ExportedNames, names: inout NameSource) throws {
        let s = elf.sections[i]
        let n = s.size / Session.kernelSymbolSize
        guard n > 0 else { return }
        let nameSeed = NameTable.seed  // (read once: NameTable.digest(_:seed:))
        func notAllocated() -> DenyError {
            deny(.malformedELF, "\(s.name) is not an allocated data section of the module (its entries would not be the relocated data the kernel reads)", section: s.name)
        }
        guard i < isData.count, isData[i], let taddr = addr[i] else { throw notAllocated() }
        // Read-only after `module_enable_ro()` (complete_formation(), before the module's init
        // runs): the entries the kernel reads at every later lookup are the ones read here.
        guard !layout.flags[i].contains(.write), !layout.flags[i].contains(.roAfterInit) else {
            throw deny(.malformedELF, "\(s.name) is writable: its entries could change after they are read at load", section: s.name)
        }
        // Nothing sized by the section is made before its records are counted: every entry needs
        // its value_offset and name_offset written by a record (below), so with fewer records
        // than twice the entries some entry among the first `records / 2 + 1` has a field no
        // record writes. The section's size is only a header's word (an SHT_NOBITS __ksymtab of
        // 128 MiB has no byte in the file): its relocated copy (12 bytes an entry) and the field
        // counts (3 an entry) are made only when the records (24 file bytes each) can cover it,
        // and the counts of the first `records / 2 + 1` entries otherwise, to name that entry.
        var records = 0
        for rs in rela where rs.targetSectionIndex == i { records += rs.relocations.count }
        let counted = records < 2 * n ? Swift.min(n, records / 2 + 1) : n
        ksymtabEntriesCounted = Swift.max(ksymtabEntriesCounted, counted)
        // Per 4-byte field of the first `counted` entries: how many PC32/PLT32 records write
        // exactly it (0xff: some other record touches it). Every record was already checked by
        // the relocation stage.
        var writes = [UInt8](repeating: 0, count: 3 * counted)
        for rs in rela where rs.targetSectionIndex == i {
            let rels = rs.relocations
            for k in rels.indices {
                let r = rels[k]
                guard let size = r.type.fieldSize, size > 0 else { continue }
                let o = Int(r.offset)
                guard o >= 0, o < s.size else { continue }
                if (r.type.rawValue == 2 || r.type.rawValue == 4) && o % 4 == 0 {
                    if o / 4 < writes.count, writes[o / 4] < 0xfe { writes[o / 4] += 1 }
                    // A value in the module's own init sections: freed after init, and known here
                    // only at the placeholder (a core session never trusts init addresses:
                    // Session.swift), not at the address the kernel's entry holds. The kernel
                    // would export freed memory; never explained (no real module does).
                    if o % Session.kernelSymbolSize == 0, !symbolInInit.isEmpty, symbolInInit[r.symbolIndex] {
                        throw deny(.initSymbol, "\(s.name) entry \(o / Session.kernelSymbolSize): its value refers to \(symbolLabel(r.symbolIndex)) in init memory freed after init",
                                   section: s.name, offset: o)
                    }
                } else if o / 4 < writes.count {
                    for f in (o / 4)...min((o + size - 1) / 4, writes.count - 1) { writes[f] = 0xff }
                }
            }
        }
        func unwritten(_ k: Int) -> DenyError? {
            guard writes[3 * k] != 1 || writes[3 * k + 1] != 1 else { return nil }
            let field = writes[3 * k] == 1 ? "name_offset" : "value_offset", o = k * Session.kernelSymbolSize
            return deny(.relocation, "\(s.name) entry \(k): its \(field) field is not written by exactly one R_X86_64_PC32 record (not a __KSYMTAB() entry)",
                        section: s.name, offset: o, address: taddr &+ UInt64(o))
        }
        if counted < n {
            // (Refused before the entries ahead of it are read: their names are not checked.)
            for k in 0..<counted { if let d = unwritten(k) { throw d } }
            preconditionFailure("\(records) records cover the fields of \(counted) entries")
        }
        guard let copy = try dataCopy(i) else { throw notAllocated() }
        try copy.withUnsafeBytes { tb in
            precondition(tb.count == s.size)
            var previous: Range<Int>?  // the table's previous name in `e.bytes`
            for k in 0..<n {
                let o = k * Session.kernelSymbolSize
                if let d = unwritten(k) { throw d }
                let valueOffset = tb.loadUnaligned(fromByteOffset: o, as: Int32.self)
                let nameOffset = tb.loadUnaligned(fromByteOffset: o + 4, as: Int32.self)
                let value = taddr &+ UInt64(o) &+ UInt64(bitPattern: Int64(Int32(littleEndian: valueOffset)))
                let nameAddr = taddr &+ UInt64(o + 4) &+ UInt64(bitPattern: Int64(Int32(littleEndian: nameOffset)))
                // The name: inside a core data section of the module (bytes held), NUL-terminated there.
                if names.section < 0 || nameAddr < names.lo || nameAddr - names.lo >= UInt64(names.bytes.count) {
                    // (The data copy holding the name by binary search: a scan per entry was
                    // entries × sections, both the file's.)
                    guard let j = dataSpans.find(nameAddr, 1).map(\.value), j < layout.coreOffset.count, layout.coreOffset[j] != nil,
                          let b = try dataCopy(j), let a = addr[j] else {
                        throw deny(.malformedELF, "\(s.name) entry \(k): its name (0x\(String(nameAddr, radix: 16))) is not inside the module's own core data",
                                   section: s.name, offset: o + 4, address: nameAddr)
                    }
                    // The kernel reads the name again at every later lookup (`find_symbol()`):
                    // it must be read-only from before any module code runs, as the entries are.
                    guard !layout.flags[j].contains(.write), !layout.flags[j].contains(.roAfterInit) else {
                        throw deny(.malformedELF, "\(s.name) entry \(k): its name is in \(sectionName(j)), which is writable (the name could change after it is read at load)",
                                   section: s.name, offset: o + 4, address: nameAddr)
                    }
                    names = NameSource(section: j, lo: a, bytes: b)
                }
                let start = Int(nameAddr - names.lo)
                try names.bytes.withUnsafeBytes { sb in
                    // The NUL looked for in the name's longest allowed length only (a search to
                    // the section's end per entry was entries × section bytes, and each name is
                    // copied into the exports below).
                    let rest = UnsafeRawBufferPointer(rebasing: sb[start..<Swift.min(sb.count, start + ExplainLimits.maxExportNameLength + 1)])
                    guard let len = rest.firstIndex(of: 0) else {
                        throw deny(.malformedELF, rest.count > ExplainLimits.maxExportNameLength
                                   ? "\(s.name) entry \(k): its name is longer than \(ExplainLimits.maxExportNameLength) bytes (KSYM_NAME_LEN is 512: no symbol name is that long)"
                                   : "\(s.name) entry \(k): its name is not NUL-terminated inside \(sectionName(names.section))",
                                   section: s.name, offset: o + 4, address: nameAddr)
                    }
                    guard e.bytes.count + len <= exportNameBudget else {
                        throw deny(.malformedELF, "\(s.name) entry \(k): the module's exported names pass \(exportNameBudget) bytes in all (names sharing the file's bytes, or far more exports than any module has: not modelled)",
                                   section: s.name, offset: o + 4, address: nameAddr)
                    }
                    let name = UnsafeRawBufferPointer(rebasing: rest[..<len])
                    guard name.isASCII else {
                        throw deny(.malformedELF, "\(s.name) entry \(k): its name is not ASCII", section: s.name, offset: o + 4, address: nameAddr)
                    }
                    if let p = previous {
                        let sorted = e.bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[p]).lexicographicallyPrecedes(name) }
                        guard sorted else {
                            throw deny(.duplicateExport, "\(s.name) entry \(k) (\(String(decoding: name, as: UTF8.self))) is not after the previous entry in strcmp() order: the kernel's bsearch() could miss an export or pick either of two",
                                       section: s.name, offset: o + 4, address: nameAddr)
                        }
                    }
                    let d = NameTable.digest(name, seed: nameSeed)
                    guard e.table.lookup(name, digest: d) == nil else {
                        throw deny(.duplicateExport, "the module exports \(String(decoding: name, as: UTF8.self)) in both __ksymtab and __ksymtab_gpl", section: s.name, offset: o + 4, address: nameAddr)
                    }
                    e.table.insert(name, value, digest: d)
                    let at = e.bytes.count
                    e.bytes.append(contentsOf: name)
                    previous = at..<e.bytes.count
                    e.ranges.append(previous!)
                    e.digests.append(d)
                }
            }
        }
    }

    /// What this module adds for later modules: its exports (read from its ksymtab entries by
    /// `exportedNames()`, which `verifyExportedSymbols()` ran for this core session), its function
    /// entries and its static-call keys.
    func moduleExports() -> ModuleExports {
        guard let names = exportedNameCache else { preconditionFailure("moduleExports() before verifyExportedSymbols()") }
        var e = ModuleExports(module: claim.name, names: names.table, otherNames: [:], functionEntries: functionEntries,
                              keyTargets: ownKeyDefaults, staticCallStates: staticCallStates)
        e.tracepointStaticCallKeys = ownTracepointKeys.sortedKeys
        return e
    }
}

/// A module's exports as its ksymtab entries give them (``Session/exportedNames()``): every name
/// ASCII and distinct.
struct ExportedNames {
    /// Name → `kernel_symbol_value()`, byte-keyed.
    var table = NameTable()
    /// The names' bytes, one after another, in entry order (`__ksymtab`, then `__ksymtab_gpl`):
    /// the order `verify_exported_symbols()` looks them up in.
    var bytes: [UInt8] = []
    var ranges: [Range<Int>] = []
    /// Each name's digest (hashed once, for the table and the duplicate-export lookups).
    var digests: [NameTable.Digest] = []

    init() {}

    /// Sized once for the `n` entries the ksymtab sections' sizes give, up to 4,096 (no rehash or
    /// regrowth as a real module's fill; the names' bytes for the usual export name, under 32
    /// bytes): beyond that they grow as entries are read and checked, so sections that only state
    /// millions of entries (an SHT_NOBITS `__ksymtab` has no file bytes behind its size; refused
    /// at the first entry) reserve nothing for them.
    init(expecting n: Int) {
        let expected = min(n, 1 << 12)
        table = NameTable(expecting: expected)
        ranges.reserveCapacity(expected)
        digests.reserveCapacity(expected)
        bytes.reserveCapacity(expected * 32)
    }

    var isEmpty: Bool { ranges.isEmpty }
}
