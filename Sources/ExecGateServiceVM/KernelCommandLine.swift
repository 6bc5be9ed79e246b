// SPDX-License-Identifier: Apache-2.0
//
// The guest's options come from the kernel command line (/proc/cmdline), the only channel a VMM
// has into an initramfs that holds no shell and no config generator:
//
//   execgate.mode=serve|test   serve (default): the verifier on AF_VSOCK; test: serve + act as the
//                              VMM over vsock loopback (CID 1), print EXECGATE-RESULT lines, power off;
//                              capture: `execgate capture`'s guest half (GuestServiceHooks.runCapture)
//   execgate.port=N            the AF_VSOCK port of the VMM protocol (default 5000)
//   execgate.timeout=S         test mode: give up (and power off) after S seconds (default 90)
//   execgate.debug=1           more console logging
//
// Unknown `execgate.*` keys are reported and ignored; bad values are errors (PID 1 logs and powers off).

public struct GuestOptions: Equatable, Sendable {
    public enum Mode: String, Sendable { case serve, test, capture }  // capture: `execgate capture` (ExecGateCaptureTool)

    /// The documented AF_VSOCK port of the VMM ↔ verifier protocol.
    public static let defaultPort: UInt32 = 5000

    public var mode: Mode = .serve
    public var port: UInt32 = GuestOptions.defaultPort
    public var testTimeoutSeconds: Int = 90
    public var debug = false
    public var unknownKeys: [String] = []

    public init() {}

    /// Splits a command line the way the kernel does for our purposes (whitespace-separated words,
    /// double quotes group). Only `execgate.` keys are interpreted.
    public init(commandLine: String) throws(ServiceVMError) {
        for word in GuestOptions.words(commandLine) {
            guard word.hasPrefix("execgate.") else { continue }
            let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0].dropFirst("execgate.".count))
            let value = kv.count > 1 ? String(kv[1]) : ""
            switch key {
            case "mode":
                guard let m = Mode(rawValue: value) else { throw .badOption("execgate.mode=\(value): expected serve, test or capture") }
                mode = m
            case "port":
                guard let p = UInt32(value), p > 0, p != UInt32.max else { throw .badOption("execgate.port=\(value): expected 1…4294967294") }
                port = p
            case "timeout":
                guard let t = Int(value), t > 0, t <= 3600 else { throw .badOption("execgate.timeout=\(value): expected 1…3600 seconds") }
                testTimeoutSeconds = t
            case "debug":
                debug = value != "0"
            default:
                unknownKeys.append(key)
            }
        }
    }

    static func words(_ s: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var quoted = false
        var have = false
        for c in s {
            if c == "\"" { quoted.toggle(); have = true; continue }
            if !quoted && (c == " " || c == "\n" || c == "\t") {
                if have { out.append(cur); cur = ""; have = false }
                continue
            }
            cur.append(c); have = true
        }
        if have { out.append(cur) }
        return out
    }
}
