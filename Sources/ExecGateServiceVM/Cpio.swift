// SPDX-License-Identifier: Apache-2.0
//
// A writer for the kernel's initramfs format: "newc" cpio (magic 070701, all header fields 8 hex
// digits, name and data padded to 4 bytes, terminated by "TRAILER!!!"). See the kernel's
// Documentation/driver-api/early-userspace/buffer-format.rst.
//
// Determinism: entries are sorted by path, parents are emitted before children, mtimes are a fixed
// value, uid/gid 0, inode numbers are assigned in output order. The same inputs give the same bytes.

public struct CpioArchive {
    public enum Kind: Equatable {
        case directory
        case file([UInt8])
        case symlink(String)
        case charDevice(major: UInt32, minor: UInt32)
    }

    public struct Entry: Equatable {
        public var path: String  // relative, no leading "/"
        public var mode: UInt32  // permission bits only
        public var kind: Kind
    }

    public private(set) var entries: [String: Entry] = [:]
    public var mtime: UInt32

    public init(mtime: UInt32 = 0) { self.mtime = mtime }

    static func normalise(_ path: String) -> String {
        path.split(separator: "/").filter { $0 != "." && !$0.isEmpty }.joined(separator: "/")
    }

    /// Adds an entry and any missing parent directories (0755).
    public mutating func add(_ path: String, mode: UInt32, _ kind: Kind) {
        let p = CpioArchive.normalise(path)
        precondition(!p.isEmpty && !p.split(separator: "/").contains(".."), "bad cpio path \(path)")
        var parent = ""
        for part in p.split(separator: "/").dropLast() {
            parent = parent.isEmpty ? String(part) : parent + "/" + part
            if entries[parent] == nil { entries[parent] = Entry(path: parent, mode: 0o755, kind: .directory) }
        }
        entries[p] = Entry(path: p, mode: mode & 0o7777, kind: kind)
    }

    public mutating func addDirectory(_ path: String, mode: UInt32 = 0o755) { add(path, mode: mode, .directory) }
    public mutating func addFile(_ path: String, _ bytes: [UInt8], mode: UInt32 = 0o644) { add(path, mode: mode, .file(bytes)) }
    public mutating func addSymlink(_ path: String, target: String) { add(path, mode: 0o777, .symlink(target)) }

    /// The archive bytes. Sorting by path puts every directory before its contents.
    public func encode() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(entries.values.reduce(4096) { acc, e in
            if case let .file(b) = e.kind { return acc + b.count + 128 + e.path.utf8.count }
            return acc + 128 + e.path.utf8.count
        })
        var ino: UInt32 = 1
        for key in entries.keys.sorted() {
            let e = entries[key]!
            var typeBits: UInt32
            var data: [UInt8] = []
            var nlink: UInt32 = 1
            var rmaj: UInt32 = 0, rmin: UInt32 = 0
            switch e.kind {
            case .directory: typeBits = 0o040000; nlink = 2
            case let .file(b): typeBits = 0o100000; data = b
            case let .symlink(t): typeBits = 0o120000; data = Array(t.utf8)
            case let .charDevice(ma, mi): typeBits = 0o020000; rmaj = ma; rmin = mi
            }
            CpioArchive.appendEntry(&out, name: e.path, ino: ino, mode: typeBits | e.mode, nlink: nlink,
                                    mtime: mtime, data: data, rdevMajor: rmaj, rdevMinor: rmin)
            ino += 1
        }
        CpioArchive.appendEntry(&out, name: "TRAILER!!!", ino: 0, mode: 0, nlink: 1, mtime: 0, data: [], rdevMajor: 0, rdevMinor: 0)
        // Pad the archive to 512 bytes like cpio(1) does.
        while out.count % 512 != 0 { out.append(0) }
        return out
    }

    static func appendEntry(_ out: inout [UInt8], name: String, ino: UInt32, mode: UInt32, nlink: UInt32,
                            mtime: UInt32, data: [UInt8], rdevMajor: UInt32, rdevMinor: UInt32) {
        let nameBytes = Array(name.utf8) + [0]
        let fields: [UInt32] = [ino, mode, 0, 0, nlink, mtime, UInt32(data.count), 0, 0, rdevMajor, rdevMinor,
                                UInt32(nameBytes.count), 0]
        out.append(contentsOf: Array("070701".utf8))
        for f in fields { out.append(contentsOf: hex8(f)) }
        out.append(contentsOf: nameBytes)
        while out.count % 4 != 0 { out.append(0) }
        out.append(contentsOf: data)
        while out.count % 4 != 0 { out.append(0) }
    }

    static func hex8(_ v: UInt32) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return (0..<8).map { i in digits[Int((v >> (28 - 4 * UInt32(i))) & 0xF)] }
    }
}
