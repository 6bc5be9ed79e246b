// SPDX-License-Identifier: Apache-2.0
//
// Structured logs: one JSON object per line on stderr (or the guest console), so an operator's
// collector parses them without regexes: {"ts":…,"level":…,"label":…,"msg":…,"meta":{…}}.

import _ExecGateInternals
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var meta = self.metadata
        if let extra = event.metadata { meta.merge(extra) { _, new in new } }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let record = JSON.object([
            ("ts", .double(Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9)),
            ("level", .string(event.level.rawValue)),
            ("label", .string(label)),
            ("msg", .string(event.message.description)),
            ("meta", .object(meta.sorted { $0.key < $1.key }.map { ($0.key, .string("\($0.value)")) })),
        ])
        var line = record.serialized()
        line += "\n"
        fputs(line, stderr)
    }
}
