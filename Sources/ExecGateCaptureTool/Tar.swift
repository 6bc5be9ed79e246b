// SPDX-License-Identifier: Apache-2.0
//
// The capture guest hands its results to the host as a POSIX ustar archive written to the start of
// a raw virtio-blk disk (no filesystem: the guest has no mkfs and the host needs no loop mount).
// `tar tf capture.img` lists it, which helps when a capture goes wrong.
//
// ustar header (512 bytes, POSIX.1-1988): name[100] mode[8] uid[8] gid[8] size[12] mtime[12]
// chksum[8] typeflag[1] linkname[100] magic[6]="ustar\0" version[2]="00" uname[32] gname[32]
// devmajor[8] devminor[8] prefix[155] pad[12]. Numbers are octal, NUL-terminated. The archive ends
// with two zero blocks.

public enum Tar {
    public static let blockSize = 512
    /// Longest member path we write or accept (name + prefix split is not worth it for capture paths).
    public static let maxNameBytes = 99
    /// Largest single member we accept when reading (a full kallsyms is ~7 MB; kvm's text ~1.2 MB).
    public static let maxMemberBytes = 1 << 30

    public struct Member: Equatable, Sendable {
        public var path: String
        public var bytes: [UInt8]
        public init(path: String, bytes: [UInt8]) { self.path = path; self.bytes = bytes }
    }

    public struct Writer {
        public private(set) var bytes: [UInt8] = []
        public init() {}

        public mutating func add(_ path: String, _ data: [UInt8]) {
            var name = Array(path.utf8)
            if name.count > Tar.maxNameBytes { name = Array(name.prefix(Tar.maxNameBytes)) }  // never happens for capture paths
            var h = [UInt8](repeating: 0, count: Tar.blockSize)
            h.replaceSubrange(0..<name.count, with: name)
            put(&h, 100, octal(0o644, width: 8))
            put(&h, 108, octal(0, width: 8))
            put(&h, 116, octal(0, width: 8))
            put(&h, 124, octal(UInt64(data.count), width: 12))
            put(&h, 136, octal(0, width: 12))
            h[156] = UInt8(ascii: "0")
            put(&h, 257, Array("ustar".utf8) + [0])
            put(&h, 263, Array("00".utf8))
            // Checksum: sum of the header bytes with the checksum field read as spaces.
            for i in 148..<156 { h[i] = 0x20 }
            let sum = h.reduce(0) { $0 + UInt64($1) }
            put(&h, 148, octal(sum, width: 7) + [0x20])
            bytes += h
            bytes += data
            let pad = (Tar.blockSize - data.count % Tar.blockSize) % Tar.blockSize
            bytes += [UInt8](repeating: 0, count: pad)
        }

        public mutating func add(_ path: String, _ text: String) { add(path, Array(text.utf8)) }

        /// The archive with its end-of-archive marker.
        public func finish() -> [UInt8] { bytes + [UInt8](repeating: 0, count: 2 * Tar.blockSize) }

        private func put(_ h: inout [UInt8], _ at: Int, _ v: [UInt8]) { h.replaceSubrange(at..<at + v.count, with: v) }

        /// `width - 1` octal digits, zero-padded, then NUL.
        private func octal(_ v: UInt64, width: Int) -> [UInt8] {
            var s = Array(String(v, radix: 8).utf8)
            while s.count < width - 1 { s.insert(UInt8(ascii: "0"), at: 0) }
            return s + [0]
        }
    }

    public enum ReadError: Error, Equatable, CustomStringConvertible {
        case badHeader(offset: Int, reason: String)
        case truncated(path: String)
        public var description: String {
            switch self {
            case let .badHeader(o, r): return "capture archive: bad header at byte \(o): \(r)"
            case let .truncated(p): return "capture archive: member \(p) runs past the end of the disk"
            }
        }
    }

    /// Reads members until the end-of-archive marker (or a zero block). Regular files only.
    public static func read(_ disk: [UInt8]) throws(ReadError) -> [Member] {
        var out: [Member] = []
        var at = 0
        while at + blockSize <= disk.count {
            let h = disk[at..<at + blockSize]
            if h.allSatisfy({ $0 == 0 }) { return out }
            var stored: UInt64 = 0
            for i in 0..<blockSize { stored += (148..<156).contains(i) ? 0x20 : UInt64(h[at + i]) }
            guard let chk = parseOctal(h[(at + 148)..<(at + 156)]), chk == stored else {
                throw .badHeader(offset: at, reason: "checksum mismatch")
            }
            guard let size = parseOctal(h[(at + 124)..<(at + 136)]), size <= UInt64(maxMemberBytes) else {
                throw .badHeader(offset: at, reason: "bad size")
            }
            let nameBytes = h[at..<(at + 100)].prefix { $0 != 0 }
            let path = String(decoding: nameBytes, as: UTF8.self)
            let start = at + blockSize, n = Int(size)
            guard start + n <= disk.count else { throw .truncated(path: path) }
            if h[at + 156] == UInt8(ascii: "0") || h[at + 156] == 0 {
                out.append(Member(path: path, bytes: Array(disk[start..<start + n])))
            }
            at = start + (n + blockSize - 1) / blockSize * blockSize
        }
        return out
    }

    static func parseOctal(_ field: ArraySlice<UInt8>) -> UInt64? {
        var v: UInt64 = 0
        var any = false
        for b in field {
            if b == 0 || b == 0x20 { if any { break } else { continue } }
            guard b >= 0x30, b <= 0x37 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 8)
            guard !o1 else { return nil }
            v = m + UInt64(b - 0x30)
            any = true
        }
        return any ? v : nil
    }
}
