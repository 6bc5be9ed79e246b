// SPDX-License-Identifier: Apache-2.0
//
// Building the claim part of an authorize-module request (`execgate request module --claim`):
//   none  evidence only (signature and ELF structure are judged);
//   elf   each executable section with the module's own file bytes at synthetic addresses —
//         what a VMM would claim for a module not yet relocated (useful to exercise the structure
//         check; an end-state judge will deny it, as the bytes are not what a loader leaves);
//   DIR   a module's directory of a capture (`execgate capture`, docs/capture.md: layout.json,
//         core_text.bin, sections.json, in a boot directory with its kallsyms): the claim a VMM
//         sends for the loaded module (text_base, the region's bytes, one frame a page, the
//         sections' addresses), as `policy test` replays it; or a directory of
//         text/<addr>_<section>.bin files (section bytes at their addresses).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import _ExecGateInternals
import ExecGateCapture
import ExecGateELF
import ExecGateSignature
import ExecGateWire
import NIOCore

public enum ClaimSource {
    /// The x86-64 module area (`MODULES_VADDR`, `MODULES_END`; docs/kernels/6.12-loader.md §4.5).
    static let modulesVaddr: UInt64 = 0xffff_ffff_c000_0000
    static let modulesEnd: UInt64 = 0xffff_ffff_ff00_0000

    public static func sections(_ spec: String, module: [UInt8]) throws -> [SectionClaim] {
        switch spec {
        case "none": return []
        case "elf": return try fromELF(module)
        default: return try fromCaptureDirectory(spec)
        }
    }

    public static func fromELF(_ module: [UInt8]) throws -> [SectionClaim] {
        try module.withUnsafeBytes { raw in
            let content: UnsafeRawBufferPointer
            if let t = try? ModuleSignatureTrailer.parse(raw) { content = UnsafeRawBufferPointer(rebasing: raw[t.contentRange]) } else { content = raw }
            let elf = try ELFFile(bytes: content)
            var address: UInt64 = modulesVaddr
            var out: [SectionClaim] = []
            for s in elf.sections where s.isAlloc && s.isExec && !s.name.hasPrefix(".init") && s.size > 0 {
                // The sizes are the file's word (an SHT_NOBITS section's is backed by nothing):
                // the synthetic layout must stay inside the module area, never wrap.
                let (end, o) = address.addingReportingOverflow(UInt64(s.size))
                guard !o, end <= modulesEnd else {
                    throw LocalFileError(path: s.name, why: "section of \(s.size) bytes does not fit the module area [0x\(String(modulesVaddr, radix: 16)), 0x\(String(modulesEnd, radix: 16))) after the sections before it")
                }
                let bytes = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: content[s.fileRange]))
                out.append(SectionClaim(name: s.name, address: address, bytes: bytes))
                address = (end &+ 0xfff) & ~0xfff  // end <= modulesEnd: no wrap
            }
            return out
        }
    }

    /// The authorize-module request for `module` (the evidence sent) with the claim `spec` names
    /// (above), for guest `guestID`, in session `session`.
    public static func request(_ spec: String, module: [UInt8], guestID: String, session: UInt64?) throws -> AuthorizeModule {
        var r = try capturedRequest(spec, guestID: guestID)
            ?? AuthorizeModule(guestID: guestID, module: ByteBuffer(), sections: try sections(spec, module: module))
        r.module = ByteBuffer(bytes: module)
        r.session = session
        return r
    }

    /// The whole claim of a captured module (`dir` holds its layout.json; its parent is the boot
    /// directory): the request `policy test` sends for it, for guest `guestID`; nil when `dir` is
    /// no module directory of a capture.
    static func capturedRequest(_ dir: String, guestID: String) throws -> AuthorizeModule? {
        guard LocalFile.exists(dir + "/layout.json") else { return nil }
        var d = dir
        while d.count > 1 && d.hasSuffix("/") { d.removeLast() }
        let why = "a module's capture directory is named inside its boot directory (BOOT/MODULE, as `execgate capture` wrote it: the boot directory holds kallsyms.txt, whose lines of the module give its per-cpu base)"
        guard let slash = d.lastIndex(of: "/") else { throw LocalFileError(path: dir, why: why) }
        let boot = Files.directory(of: d)
        guard LocalFile.exists(boot + "/kallsyms.txt") else {
            throw LocalFileError(path: dir, why: "\(boot) is no capture's boot directory (no kallsyms.txt): \(why)")
        }
        return try CaptureBoot.module(String(d[d.index(after: slash)...]), inBoot: boot).request(guestID: guestID)
    }

    /// Reads `DIR/text/<16 hex digits>_<section>.bin` files.
    public static func fromCaptureDirectory(_ dir: String) throws -> [SectionClaim] {
        let textDir = dir + "/text"
        guard LocalFile.isDirectory(textDir) else {
            throw LocalFileError(path: dir, why: "not 'none', 'elf' or a capture directory with text/<addr>_<section>.bin files")
        }
        // A claim the service could never receive is refused before it is read: at most
        // WireLimits.maximumSectionClaims sections, and no more bytes in all than the wire's largest
        // request body (each file's size from stat; a sparse 400 MiB file was read whole).
        let names = try LocalFile.list(textDir).filter { $0.hasSuffix(".bin") }
        guard names.count <= WireLimits.maximumSectionClaims else {
            throw LocalFileError(path: textDir, why: "\(names.count) section files; a request carries at most \(WireLimits.maximumSectionClaims)")
        }
        var total = 0
        for name in names {
            var st = stat()
            guard stat(textDir + "/" + name, &st) == 0 else { throw LocalFileError(path: textDir + "/" + name, why: String(cString: strerror(errno))) }
            total += max(0, Int(st.st_size))
            guard total <= WireLimits.defaultMaximumBodySize else {
                throw LocalFileError(path: textDir, why: "the section files hold more than \(WireLimits.defaultMaximumBodySize) bytes, the largest request body a verifier receives")
            }
        }
        var out: [SectionClaim] = []
        for name in names {
            let stem = name.dropLast(4)
            guard stem.count > 17, stem[stem.index(stem.startIndex, offsetBy: 16)] == "_",
                  let addr = UInt64(stem.prefix(16), radix: 16) else {
                throw LocalFileError(path: textDir + "/" + name, why: "name is not <16 hex digits>_<section>.bin")
            }
            let section = String(stem.dropFirst(17))
            out.append(SectionClaim(name: section, address: addr, bytes: ByteBuffer(bytes: try LocalFile.read(textDir + "/" + name))))
        }
        return out
    }
}
