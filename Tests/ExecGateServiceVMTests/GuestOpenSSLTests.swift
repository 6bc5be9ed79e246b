// SPDX-License-Identifier: Apache-2.0
//
// The minimal libcrypto of the service VM's static /init: the Configure options
// (Images/openssl/execgate.options), the pinned source checksums (Images/openssl/sources.sha256) and
// the cache key of scripts/build-openssl.sh. Building OpenSSL takes minutes, so the unit tests do not
// build it: `make image` does, and GuestOpenSSLLinkBootTests (the guest phase, which has the static
// binary) checks that /init really links it.

import ExecGateTestSupport
import Foundation
import XCTest
@testable import ExecGateServiceVM

final class GuestOpenSSLConfigTests: XCTestCase {
    static var optionsPath: String { Fixtures.packageRoot + "/Images/openssl/execgate.options" }
    static var pinsPath: String { Fixtures.packageRoot + "/Images/openssl/sources.sha256" }
    static var script: String { Fixtures.packageRoot + "/scripts/build-openssl.sh" }
    /// A version that Images/openssl/sources.sha256 pins (the keys below do not depend on what is installed).
    static let pinnedVersion = "3.0.19-1~deb12u2"

    /// Every option is a no-/enable- word, appears once, and has a reason: a comment on its own line
    /// or above its group. The algorithms the service accepts are never switched off.
    func testEveryOptionIsWellFormedOnceWithAReason() throws {
        let lines = try FS.readString(Self.optionsPath, limit: 1 << 20).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var seen: [String: Int] = [:]
        for (i, line) in lines.enumerated() {
            guard let option = Self.option(line) else {
                XCTAssertTrue(line.isEmpty || line.hasPrefix("#"), "line \(i + 1) is neither an option nor a comment: \(line)")
                continue
            }
            XCTAssertTrue(option.hasPrefix("no-") || option.hasPrefix("enable-"), "line \(i + 1): \(option)")
            if let first = seen[option] { XCTFail("\(option) on lines \(first) and \(i + 1)") }
            seen[option] = i + 1
            if line.contains("#") { continue }
            var j = i - 1
            while j >= 0, Self.option(lines[j]) != nil { j -= 1 }
            XCTAssertTrue(j >= 0 && lines[j].hasPrefix("# ") && lines[j].count > 12, "\(option) (line \(i + 1)) has no reason")
        }
        XCTAssertGreaterThan(seen.count, 30)
        for must in ["no-shared", "no-dso", "no-engine", "no-autoload-config", "no-tls", "no-sock"] {
            XCTAssertNotNil(seen[must], "\(must) must be decided in the options")
        }
        // What module signatures, certificates, policy bundles and `keys generate` use (COpenSSLShim):
        // RSA, EC (ECDSA; Ed25519 with it), the SHA-1/SHA-2 digests, CMS. None may be switched off.
        for kept in ["rsa", "ec", "ecdsa", "ec2m", "cms", "sha", "sha1", "sha256", "sha512", "err", "threads", "asm", "pic"] {
            XCTAssertNil(seen["no-" + kept], "no-\(kept) would drop something the service uses")
        }
    }

    /// The cache key is a function of the inputs: the same inputs give the same key; one option
    /// more, or another Debian version, gives another (a stale libcrypto is never reused).
    func testCacheKeyFollowsOptionsAndVersion() throws {
        let dir = NSTemporaryDirectory() + "eg-osslkey-\(getpid())"
        try FS.mkdirs(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let options = try FS.read(Self.optionsPath, limit: 1 << 20)
        try FS.write(dir + "/a.options", options)
        try FS.write(dir + "/b.options", options + Array("no-ec2m # test\n".utf8))
        try FS.write(dir + "/c.options", Array("# only a comment changed\n".utf8) + options)
        let a1 = try key(options: dir + "/a.options", version: Self.pinnedVersion, dir: dir)
        let a2 = try key(options: dir + "/a.options", version: Self.pinnedVersion, dir: dir)
        let b = try key(options: dir + "/b.options", version: Self.pinnedVersion, dir: dir)
        let c = try key(options: dir + "/c.options", version: Self.pinnedVersion, dir: dir)
        let v = try key(options: dir + "/a.options", version: "3.0.22-1~deb12u2", dir: dir)
        XCTAssertEqual(a1.count, 32, a1)
        XCTAssertTrue(a1.allSatisfy(\.isHexDigit), a1)
        XCTAssertEqual(a1, a2)
        XCTAssertEqual(a1, c, "a comment is not an input")
        XCTAssertNotEqual(a1, b, "a changed option must change the key")
        XCTAssertNotEqual(a1, v, "another source version must change the key")
    }

    /// A version without a pinned .dsc checksum is refused before any download, naming the file
    /// and where to pin it; an option that is not a no-/enable- word is refused too.
    func testScriptRefusesUnpinnedVersionAndBadOption() throws {
        let dir = NSTemporaryDirectory() + "eg-osslpin-\(getpid())"
        try FS.mkdirs(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (rc, out) = try runScript(["/bin/bash", Self.script, "--key", "--version", "9.9.9-1"], dir: dir)
        XCTAssertEqual(rc, 1, out)
        XCTAssertTrue(out.contains("no checksum for openssl_9.9.9-1.dsc") && out.contains("sources.sha256"), out)
        try FS.write(dir + "/bad.options", Array("no-tls\n--openssldir=/etc\n".utf8))
        let (rc2, out2) = try runScript(["/bin/bash", Self.script, "--key", "--options", dir + "/bad.options", "--version", Self.pinnedVersion], dir: dir)
        XCTAssertEqual(rc2, 1, out2)
        XCTAssertTrue(out2.contains("not a no-/enable- option") && out2.contains("--openssldir=/etc"), out2)
        let (rc3, out3) = try runScript(["/bin/bash", Self.script, "--bogus"], dir: dir)
        XCTAssertEqual(rc3, 2)
        XCTAssertTrue(out3.contains("unknown option --bogus"), out3)
    }

    /// Every pin is a sha256 and a .dsc name, once each.
    func testPinsAreWellFormed() throws {
        var names = Set<String>()
        for line in try FS.readString(Self.pinsPath, limit: 1 << 20).split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            XCTAssertEqual(f.count, 2, String(line))
            guard f.count == 2 else { continue }
            XCTAssertTrue(f[0].count == 64 && f[0].allSatisfy(\.isHexDigit), String(line))
            XCTAssertTrue(f[1].hasPrefix("openssl_") && f[1].hasSuffix(".dsc"), String(line))
            XCTAssertTrue(names.insert(String(f[1])).inserted, "\(f[1]) pinned twice")
        }
        XCTAssertTrue(names.contains("openssl_\(Self.pinnedVersion).dsc"))
    }

    static func option(_ line: String) -> String? {
        let body = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let word = body.trimmingCharacters(in: .whitespaces)
        return word.isEmpty || line.hasPrefix("#") ? nil : word
    }

    func key(options: String, version: String, dir: String) throws -> String {
        let (rc, out) = try runScript(["/bin/bash", Self.script, "--key", "--options", options, "--version", version], dir: dir)
        XCTAssertEqual(rc, 0, out)
        return out.split(separator: "\n").last.map(String.init) ?? ""
    }
}

/// The static /init links the minimal libcrypto, not Debian's libcrypto.a. Guest phase (class name
/// ends in BootTests) because it needs `make image`'s static binary; it boots nothing. The marker:
/// each libcrypto compiles its OPENSSLDIR into the binary (OpenSSL_version, the default certificate
/// paths): Debian's is /usr/lib/ssl, the minimal one's /nonexistent/execgate-openssl
/// (scripts/build-openssl.sh), a directory that names no place because that build never reads one.
final class GuestOpenSSLLinkBootTests: XCTestCase {
    func testStaticInitLinksTheMinimalLibcrypto() throws {
        let staticBinary = try requireVM(image: false).staticExecgate
        let bytes = Data(try FS.read(staticBinary, limit: 64 << 20))
        XCTAssertNotNil(bytes.range(of: Data("/nonexistent/execgate-openssl".utf8)),
                        "the static /init does not carry the minimal libcrypto's OPENSSLDIR: linked against another libcrypto")
        XCTAssertNil(bytes.range(of: Data("/usr/lib/ssl".utf8)),
                     "the static /init carries Debian's OPENSSLDIR (/usr/lib/ssl): Debian's libcrypto.a was linked")
        // And what the options switch off is gone: OCSP's error reasons (crypto/ocsp/ocsp_err.c, "status
        // expired") are loaded with every libcrypto that has OCSP (Debian's does, and its /init had them).
        XCTAssertNil(bytes.range(of: Data("status expired".utf8)), "OCSP's error strings are in /init (no-ocsp)")
    }

    /// The static binary is linked without unwind tables (Images/link/no-unwind-tables.ld): neither
    /// `.eh_frame` nor `.eh_frame_hdr` is in it. It must still end its processes the ordinary way:
    /// with its main thread parked instead of unwound (CExecGateSys.c), a host command that succeeds
    /// exits 0, one that fails exits with its code and reason (an unwind would abort: status 134).
    func testStaticBinaryHasNoUnwindTablesAndStillExits() throws {
        let staticBinary = try requireVM(image: false).staticExecgate
        let names = try Self.sectionNames(try FS.read(staticBinary, limit: 64 << 20))
        XCTAssertTrue(names.contains(".text"), "no section table read: \(names)")
        XCTAssertFalse(names.contains(".eh_frame"), "the static execgate has .eh_frame: linked without Images/link/no-unwind-tables.ld")
        XCTAssertFalse(names.contains(".eh_frame_hdr"), "the static execgate has .eh_frame_hdr")

        let dir = NSTemporaryDirectory() + "eg-nounwind-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ok = Fixtures.run(staticBinary, ["keys", "generate", "--out", dir, "--cn", "unwind test"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/cert.pem"), ok.stdout + ok.stderr)
        let bad = Fixtures.run(staticBinary, ["verify", "module", dir + "/does-not-exist.ko"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertLessThan(bad.status, 128, "ended by a signal (an unwind aborts): \(bad.stderr)")
        XCTAssertFalse(bad.stderr.isEmpty, "a failing command says why")
    }

    /// The standard library's Unicode name, alias, age and script tables are not in the static
    /// binary: the static link wraps their lookups (Makefile UNICODE_WRAPPED,
    /// Sources/CExecGateSys/UnicodeDataStubs.c), so --gc-sections drops the tables. The bytes looked
    /// for are the tables' own, read from the toolchain's libswiftCore.a (the archive the static link
    /// used); a table that stays (general categories: `Character.isPunctuation` reads it) is found in
    /// the binary the same way, so the search itself is shown to work.
    func testStaticInitHasNoUnicodeNameTables() throws {
        let staticBinary = try requireVM(image: false).staticExecgate
        let swiftc = try VMTestInputs.requireTool("swiftc", install: "a Swift toolchain")
        guard let resolved = realpath(swiftc, nil) else { return XCTFail("cannot resolve \(swiftc)") }
        let toolchain = (String(cString: resolved) as NSString).deletingLastPathComponent
        free(resolved)
        let archivePath = try VMTestInputs.requireFile((toolchain as NSString).deletingLastPathComponent + "/lib/swift_static/linux/libswiftCore.a",
                                                       "static Swift standard library", make: "install the Swift toolchain")
        let archive = try FS.read(archivePath, limit: 256 << 20)
        let member = try XCTUnwrap(Self.archiveMember(archive, named: "UnicodeScalarProps.cpp.o"), "no UnicodeScalarProps.cpp.o in \(archivePath)")
        let sections = try Self.sections(Array(member))
        let binary = Data(try FS.read(staticBinary, limit: 64 << 20))
        /// 64 bytes from the middle of a table (the middle: its start may be shared with other data).
        func window(_ name: String) throws -> Data {
            let s = try XCTUnwrap(sections[name], "no section \(name) in UnicodeScalarProps.cpp.o: another standard library layout")
            _ = try XCTUnwrap(s.size > 1024 && s.offset + s.size <= member.count ? s : nil, "\(name): \(s.size) bytes at \(s.offset)")
            let at = member.startIndex + s.offset + s.size / 2
            return Data(member[at..<at + 64])
        }
        for table in [".rodata._ZL19_swift_stdlib_names", ".rodata._ZL19_swift_stdlib_words", ".rodata._ZL27_swift_stdlib_names_scalars",
                      ".rodata._ZL26_swift_stdlib_word_indices", ".rodata._ZL18_swift_stdlib_ages", ".rodata._ZL21_swift_stdlib_scripts"] {
            XCTAssertNil(binary.range(of: try window(table)), "the static /init holds \(table): linked without the --wrap of UNICODE_WRAPPED")
        }
        XCTAssertNotNil(binary.range(of: try window(".rodata._ZL29_swift_stdlib_generalCategory")),
                        "a table /init keeps was not found: the search does not work")
    }

    /// /init links no regex engine (`_StringProcessing`, 1.2 MB of `/init`): `String.contains(String)`,
    /// `firstRange(of:)`, `split(separator:)` with a string and the like come from it, and one such
    /// call in any module the service links pulls the whole engine in (it did once: a vsock fdinfo
    /// check took `/init` from 11.9 to 13.1 MB and the initramfs from 4.5 to 4.9 MB). Its module's
    /// mangled names stay in the stripped binary's metadata; NIO's are found the same way, so the
    /// search works. (The Makefile refuses such an image too.)
    func testStaticInitLinksNoRegexEngine() throws {
        let binary = Data(try FS.read(try requireVM(image: false).staticExecgate, limit: 64 << 20))
        XCTAssertNil(binary.range(of: Data("17_StringProcessing".utf8)), "the static /init links _StringProcessing: use _ExecGateInternals' containsUTF8/utf8Range(of:)")
        XCTAssertNotNil(binary.range(of: Data("7NIOCore".utf8)), "NIOCore's mangled names were not found: the search does not work")
    }

    /// The bytes of the member `name` of a System V / GNU `ar` archive (long names in the `//` table).
    static func archiveMember(_ bytes: [UInt8], named name: String) -> ArraySlice<UInt8>? {
        guard bytes.starts(with: Array("!<arch>\n".utf8)) else { return nil }
        var at = 8
        var longNames: ArraySlice<UInt8> = []
        func field(_ from: Int, _ count: Int) -> String {
            String(decoding: bytes[from..<from + count], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        }
        while at + 60 <= bytes.count {
            let rawName = field(at, 16)
            guard let size = Int(field(at + 48, 10)), size >= 0, at + 60 + size <= bytes.count else { return nil }
            let data = bytes[(at + 60)..<(at + 60 + size)]
            var memberName = rawName
            if rawName == "//" {
                longNames = data
            } else if rawName.hasPrefix("/"), let offset = Int(rawName.dropFirst()), offset < longNames.count {
                let start = longNames.startIndex + offset
                let end = longNames[start...].firstIndex(of: UInt8(ascii: "\n")) ?? longNames.endIndex
                memberName = String(decoding: longNames[start..<end], as: UTF8.self)
            }
            if memberName.hasSuffix("/") { memberName.removeLast() }
            if memberName == name { return data }
            at += 60 + size + (size & 1)
        }
        return nil
    }

    /// Section names of an ELF64 little-endian file (its section header table and name table).
    static func sectionNames(_ bytes: [UInt8]) throws -> Set<String> {
        Set(try sections(bytes).keys)
    }

    /// Each section of an ELF64 little-endian file by name: its file offset and size.
    static func sections(_ bytes: [UInt8]) throws -> [String: (offset: Int, size: Int)] {
        struct Bad: Error {}
        guard let shoff = bytes.getInteger(at: 0x28, as: UInt64.self), let shentsize = bytes.getInteger(at: 0x3A, as: UInt16.self),
              let shnum = bytes.getInteger(at: 0x3C, as: UInt16.self), let shstrndx = bytes.getInteger(at: 0x3E, as: UInt16.self),
              shentsize >= 64, shstrndx < shnum else { throw Bad() }
        func header(_ i: Int) throws -> (name: Int, offset: Int, size: Int) {
            let at = Int(shoff) + i * Int(shentsize)
            guard let name = bytes.getInteger(at: at, as: UInt32.self), let offset = bytes.getInteger(at: at + 0x18, as: UInt64.self),
                  let size = bytes.getInteger(at: at + 0x20, as: UInt64.self) else { throw Bad() }
            return (Int(name), Int(offset), Int(size))
        }
        let strtab = try header(Int(shstrndx))
        guard strtab.offset + strtab.size <= bytes.count else { throw Bad() }
        var result: [String: (offset: Int, size: Int)] = [:]
        for i in 0..<Int(shnum) {
            let h = try header(i)
            let start = strtab.offset + h.name
            guard start < strtab.offset + strtab.size else { throw Bad() }
            var end = start
            while end < strtab.offset + strtab.size && bytes[end] != 0 { end += 1 }
            result[String(decoding: bytes[start..<end], as: UTF8.self)] = (h.offset, h.size)
        }
        return result
    }
}
