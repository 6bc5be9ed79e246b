// SPDX-License-Identifier: Apache-2.0
//
// Sorting addresses and packed keys: an LSD radix sort where the values lie within 4 GiB of each
// other (a module's functions, keys and sites; the facts' tables at link time), else the standard
// sort. Used by FunctionEntries, AddressTable, GuestFacts' tracepoint and resolver keys, and the
// comparison's site order.

enum AddressSort {
    /// `a` sorted ascending with repeats removed, in place (a module's function entries, a
    /// key's trusted targets). A list already ascending (a symbol table mostly lists a section's
    /// functions in address order) is not sorted again.
    static func sortUnique(_ a: inout [UInt64]) {
        var ascending = true
        for i in a.indices.dropFirst() where a[i - 1] > a[i] { ascending = false; break }
        if !ascending { sort(&a) }
        // Repeats dropped in place, through the buffer (an element assignment per entry checked
        // the array's uniqueness each time: a fifth of a module's function-entry set-up).
        let n = a.withUnsafeMutableBufferPointer { b -> Int in
            var n = 0
            for k in b.indices where n == 0 || b[n - 1] != b[k] { b[n] = b[k]; n += 1 }
            return n
        }
        a.removeLast(a.count - n)
    }

    /// `a.sort()` for addresses: by `radixSort` when there are at least 64 and they lie within
    /// 4 GiB of each other (a module's functions, keys or sites), else the standard sort.
    static func sort(_ a: inout [UInt64]) {
        if a.count >= 64, let lo = a.min(), let hi = a.max(), hi - lo <= UInt64(UInt32.max) {
            radixSort(&a, from: lo)
        } else {
            a.sort()
        }
    }

    /// Sorts `a`, whose values lie in `lo ... lo + 2^32 - 1`: LSD radix sort of `x - lo`, one
    /// pass per 8 bits of the largest offset (at most four; stable passes; the order of equal
    /// values does not matter). A module's text below 64 KiB takes two passes. With `shift`, by
    /// `x >> shift` alone (whose values then lie in that range), stably: values of one such key
    /// keep their order in `a` (the run-time sites' packed (offset, index) words).
    static func radixSort(_ a: inout [UInt64], from lo: UInt64, shift: UInt64 = 0) {
        precondition(shift < 64)
        let n = a.count
        var span: UInt64 = 0
        for x in a { span = Swift.max(span, (x >> shift) &- lo) }
        precondition(span <= UInt64(UInt32.max), "radix sort of offsets beyond 32 bits")
        let passes = (64 - span.leadingZeroBitCount + 7) / 8  // 0 when every value is lo: sorted
        if passes == 0 { return }
        var scratch = [UInt64](repeating: 0, count: n)
        // Every pass's digit counts from one read of the values (4 × 256 counters), then each
        // pass scatters by its running offsets. Indices stay in bounds by construction: a digit
        // is < 256, and a pass's offsets start at the prefix sums of counts totalling n, so each
        // is bumped at most to n and written only while below it (the buffers' subscripts are
        // checked in debug builds; the precondition below checks the totals in every build).
        var counts = [Int](repeating: 0, count: 4 * 256)
        counts.withUnsafeMutableBufferPointer { cnt in
            for x in a {
                let d = (x >> shift) &- lo
                cnt[Int(d & 0xff)] += 1
                cnt[256 + Int((d >> 8) & 0xff)] += 1
                cnt[512 + Int((d >> 16) & 0xff)] += 1
                cnt[768 + Int((d >> 24) & 0xff)] += 1
            }
            for p in 0..<passes {
                var sum = 0
                for k in 256 * p..<256 * (p + 1) { let c = cnt[k]; cnt[k] = sum; sum += c }
                precondition(sum == n, "radix sort counts")
            }
        }
        for pass in 0..<passes {
            let digitShift = UInt64(8 * pass), base = 256 * pass
            a.withUnsafeBufferPointer { src in
                scratch.withUnsafeMutableBufferPointer { dst in
                    counts.withUnsafeMutableBufferPointer { cnt in
                        for x in src {
                            let d = base + Int((((x >> shift) &- lo) >> digitShift) & 0xff)
                            dst[cnt[d]] = x
                            cnt[d] += 1
                        }
                    }
                }
            }
            swap(&a, &scratch)
        }
    }
}
