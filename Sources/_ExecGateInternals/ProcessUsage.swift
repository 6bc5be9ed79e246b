// SPDX-License-Identifier: Apache-2.0
//
// What this process has used, for benchmark figures (`bench`, `explain --bench`). Not API.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum ProcessUsage {
    /// CPU seconds (user + system) this process has used so far.
    public static func cpuSeconds() -> Double {
        var u = rusage()
        guard getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u) == 0 else { return 0 }
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }

    /// Peak resident set of this process so far, KiB (getrusage's ru_maxrss).
    public static func peakResidentKiB() -> Int {
        var u = rusage()
        guard getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u) == 0 else { return 0 }
        return Int(u.ru_maxrss)
    }

    /// Resident set now, bytes (VmRSS of /proc/self/status; 0 where unknown).
    public static func residentBytes() -> Int {
        guard let text = try? Files.read("/proc/self/status", limit: 1 << 16) else { return 0 }
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (Int(line.filter { $0.isNumber }) ?? 0) * 1024
        }
        return 0
    }
}
