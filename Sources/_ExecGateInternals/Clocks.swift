// SPDX-License-Identifier: Apache-2.0
//
// The one monotonic clock (durations, deadlines) and the one wall clock (timestamps in records).
// Named so they shadow nothing: the standard library owns `Clock`. Not API.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum MonotonicClock {
    /// Nanoseconds since an arbitrary fixed point (CLOCK_MONOTONIC): for durations and deadlines only.
    @inlinable
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Seconds since an arbitrary fixed point, as a Double (for printing durations).
    @inlinable
    public static func seconds() -> Double { Double(nanoseconds()) / 1e9 }

    /// Milliseconds elapsed since `start` (a value of `nanoseconds()`).
    @inlinable
    public static func milliseconds(since start: UInt64) -> Double { Double(nanoseconds() &- start) / 1e6 }

    /// Milliseconds since the kernel started (CLOCK_BOOTTIME: counts suspend too; in the service VM
    /// it is "time since boot", the figure boot-time reports use).
    public static func sinceBootMilliseconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
    }

    /// Microseconds elapsed since `start` (a value of `nanoseconds()`).
    @inlinable
    public static func microseconds(since start: UInt64) -> Double { Double(nanoseconds() &- start) / 1e3 }

    /// CPU seconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID): for benchmarks on a
    /// shared machine, where wall time counts the time other processes ran.
    public static func threadCPUSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

public enum WallClock {
    /// Seconds and nanoseconds since the Unix epoch (CLOCK_REALTIME): for timestamps in records.
    public static func now() -> (seconds: Int64, nanoseconds: Int64) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (Int64(ts.tv_sec), Int64(ts.tv_nsec))
    }

    /// Milliseconds since the Unix epoch.
    public static func milliseconds() -> Int64 {
        let n = now()
        return n.seconds * 1000 + n.nanoseconds / 1_000_000
    }

    /// RFC 3339 UTC timestamp with millisecond precision, e.g. `2026-12-01T14:50:11.123Z`.
    public static func rfc3339(seconds: Int64, nanoseconds: Int64) -> String {
        var t = time_t(seconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(nanoseconds / 1_000_000), 3))Z"
    }

    /// The current time as an RFC 3339 UTC timestamp.
    public static func rfc3339Now() -> String {
        let n = now()
        return rfc3339(seconds: n.seconds, nanoseconds: n.nanoseconds)
    }
}
