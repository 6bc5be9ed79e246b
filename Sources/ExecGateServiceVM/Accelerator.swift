// SPDX-License-Identifier: Apache-2.0
//
// KVM or TCG? Detected, never assumed. KVM is used only when /dev/kvm opens read-write, reports
// API version 12, and is not a paravirtual KVM (kvm_pvm) — on those, QEMU+KVM runs real-mode
// test code but hangs booting Linux, so a simple ioctl probe would say "works" and be wrong.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CExecGateSys

public enum Accelerator: String, Sendable, CaseIterable {
    case kvm, tcg

    public struct Decision: Sendable, Equatable {
        public var accel: Accelerator
        public var reason: String
    }

    /// Facts the decision is made from (injectable for tests).
    public struct HostFacts: Sendable {
        public var kvmDevice: String = "/dev/kvm"
        public var sysModule: String = "/sys/module"
        public init() {}
    }

    public static func detect(_ facts: HostFacts = HostFacts()) -> Decision {
        guard FS.exists(facts.kvmDevice) else { return Decision(accel: .tcg, reason: "no \(facts.kvmDevice)") }
        let fd = open(facts.kvmDevice, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            return Decision(accel: .tcg, reason: "cannot open \(facts.kvmDevice): \(String(cString: strerror(errno))) (join the kvm group?)")
        }
        defer { close(fd) }
        let api = execgate_kvm_api_version(fd)
        guard api == 12 else { return Decision(accel: .tcg, reason: "\(facts.kvmDevice) reports KVM API \(api), expected 12") }
        for pvm in ["kvm_pvm"] where FS.exists(facts.sysModule + "/" + pvm) {
            return Decision(accel: .tcg, reason: "paravirtual KVM (\(pvm)) cannot boot a Linux guest; using TCG")
        }
        return Decision(accel: .kvm, reason: "\(facts.kvmDevice) usable (API 12)")
    }

    /// `auto` → detect; `kvm`/`tcg` → as asked. Also honours $EXECGATE_ACCEL when `requested` is auto.
    public static func choose(_ requested: String) throws(ServiceVMError) -> Decision {
        var r = requested
        if r == "auto", let env = getenv("EXECGATE_ACCEL") { r = String(cString: env) }
        switch r {
        case "auto": return detect()
        case "kvm": return Decision(accel: .kvm, reason: "requested")
        case "tcg": return Decision(accel: .tcg, reason: "requested")
        default: throw .badOption("--accel \(r): expected auto, kvm or tcg")
        }
    }
}
