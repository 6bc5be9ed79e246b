// SPDX-License-Identifier: Apache-2.0
//
// Turns the guest's archive into the capture layout (see CaptureHost.swift and the corpus README):
// the guest's raw files are copied as they are; the host adds what it knows better — the signed
// `.ko` files, `layout.json` (the module's sections from its ELF with their sysfs addresses),
// `slide.txt` (needs the link-time `_text`), and the top-level `load-order.txt`, `modules.list`,
// `modules.dep`, `corpus.json`.

import _ExecGateInternals
import ExecGateELF
import ExecGateServiceVM

enum CaptureLayout {
    static func write(members: [Tar.Member], options o: CaptureOptions, tree: KernelTree, index: ModuleIndex,
                      order: [String], depends: [String: [String]]) throws(CaptureToolError) -> CaptureSummary {
        let bootDir = o.outDir + "/" + o.bootName
        var files: [String: [UInt8]] = [:]
        for m in members { files[m.path] = m.bytes }
        for required in ["kallsyms.txt", "boot_cpu_data.bin", "pv_ops.bin", "cpus.txt", "cmdline.txt", "insmod.log"] where files[required] == nil {
            throw .guest("the capture archive has no \(required)")
        }
        try wrap { () throws(ServiceVMError) in
            try FS.mkdirs(bootDir)
            for m in members {
                guard !m.path.hasPrefix("/"), !m.path.split(separator: "/").contains(".."), !m.path.isEmpty else { continue }
                if let slash = m.path.lastIndex(of: "/") { try FS.mkdirs(bootDir + "/" + m.path[..<slash]) }
                try FS.write(bootDir + "/" + m.path, m.bytes)
            }
        }

        // insmod results.
        var insmod: [String: (rc: Int, t0: String, t1: String, msg: String)] = [:]
        for line in String(decoding: files["insmod.log"]!, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 4, omittingEmptySubsequences: false)
            guard f.count >= 4 else { continue }
            insmod[String(f[0])] = (Int(f[1].dropFirst(3)) ?? -1, String(f[2].dropFirst(3)), String(f[3].dropFirst(3)), f.count > 4 ? String(f[4]) : "")
        }

        // slide.txt
        let link = tree.linkTimeText()
        var kvars: [String: (addr: String, value: String)] = [:]
        for line in String(decoding: files["kvars.txt"] ?? [], as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 3 { kvars[String(f[0])] = (String(f[1]), String(f[2])) }
        }
        guard let textStr = kvars["_text"]?.addr, let kText = UInt64(textStr.dropFirst(2), radix: 16) else {
            throw .guest("no _text in the guest's kallsyms")
        }
        let slide = kText &- link.address
        var slideTxt = "slide 0x\(Hex.number(slide))\nkallsyms__text 0x\(Hex.number(kText))\nlink__text 0x\(Hex.number(link.address))\nlink__text_source \(link.source)\n"
        for v in ["page_offset_base", "vmalloc_base", "vmemmap_base", "phys_base"] { if let kv = kvars[v] { slideTxt += "\(v) \(kv.value)\n" } }

        var kos: [String: [UInt8]] = [:]
        for name in order where files[name + "/module.txt"] != nil { kos[name] = try index.bytes(of: name) }
        var captured: [String] = []
        var failed: [(String, String)] = []
        try wrap { () throws(ServiceVMError) in
            try FS.write(bootDir + "/slide.txt", slideTxt)
            // Also in the boot directory, so one boot's folder stands alone; there it names what
            // the guest kernel loaded. A module whose finit_module failed (a CPU feature check's
            // -ENODEV, kvm_intel's -EOPNOTSUPP under TCG, a failed dependency) never became live:
            // load_module() frees it on its error path (kernel/module/main.c), so nothing of it is
            // in the guest to judge. It is reported (`failed`, insmod.log), not named for explain
            // and policy test, which take every name here as a module to judge. One that loaded
            // (or whose result the guest did not report) but was not captured stays named.
            let loaded = order.filter { n in files[n + "/module.txt"] != nil || (insmod[n].map { $0.rc == 0 } ?? true) }
            try FS.write(bootDir + "/load-order.txt", loaded.joined(separator: "\n") + "\n")
            for name in order {
                let i = insmod[name]
                if let i, i.rc != 0 { failed.append((name, i.msg.isEmpty ? "rc=\(i.rc)" : i.msg)) }
                guard let info = files[name + "/module.txt"].map({ ImageInfo.parse(String(decoding: $0, as: UTF8.self)) }) else {
                    if i == nil || i?.rc == 0 { failed.append((name, "loaded but not captured (no executable core section?)")) }
                    continue
                }
                let mdir = bootDir + "/" + name
                guard let ko = kos[name] else { continue }
                try FS.write(mdir + "/" + name + ".ko", ko)
                let secs = parseSections(files[name + "/sections.json"] ?? [])
                let layout = layoutJSON(name: name, ko: ko, sysfs: secs, info: info, insmod: i, depends: depends[name] ?? [],
                                        kernel: tree.version, path: index.paths[name] ?? "")
                try FS.write(mdir + "/layout.json", layout)
                captured.append(name)
            }
        }

        // Top level.
        let corpusBoots = ((try? FS.list(o.outDir)) ?? []).filter { FS.exists(o.outDir + "/" + $0 + "/kallsyms.txt") }
        try wrap { () throws(ServiceVMError) in
            try FS.write(o.outDir + "/load-order.txt", order.joined(separator: "\n") + "\n")
            try FS.write(o.outDir + "/modules.list", o.modules.joined(separator: "\n") + "\n")
            try FS.write(o.outDir + "/modules.dep", index.modulesDep(order, depends: depends))
            let arr: ([String]) -> String = { "[" + $0.map(ConsoleJSON.string).joined(separator: ", ") + "]" }
            try FS.write(o.outDir + "/corpus.json", ConsoleJSON.object([
                ("kernel", ConsoleJSON.string(tree.version)), ("deb", tree.deb.map(ConsoleJSON.string) ?? "null"),
                ("kernel_root", ConsoleJSON.string(tree.root)), ("vmlinuz", ConsoleJSON.string(tree.vmlinuz)),
                ("link_text", ConsoleJSON.string("0x" + Hex.number(link.address))), ("link_text_source", ConsoleJSON.string(link.source)),
                ("tool", ConsoleJSON.string("execgate capture")), ("cpu", ConsoleJSON.string(o.cpu)),
                ("smp", ConsoleJSON.string((try? o.smpArgument()) ?? "\(o.smp)")),
                ("modules_requested", arr(o.modules)), ("load_order", arr(order)), ("boots", arr(corpusBoots)),
            ]) + "\n")
        }
        return CaptureSummary(boot: o.bootName, bootDir: bootDir, kernelVersion: tree.version, requested: o.modules, loadOrder: order,
                              captured: captured, failed: failed, slide: slide, accel: "", qemuMillis: 0, totalMillis: 0)
    }

    /// The guest's sections.json (written by CaptureGuest): one object of section name → "0x…",
    /// read by the toolkit's bounded JSON reader. The guest is untrusted: anything but one strict
    /// JSON object gives no addresses (the module is then reported without them), a value that is
    /// not a "0x…" string names no address.
    static func parseSections(_ b: [UInt8]) -> [String: UInt64] {
        guard let members = (try? JSONReader.parse(b, limits: JSONReader.Limits(maxBytes: 1 << 20, maxDepth: 2)))?.objectMembers else { return [:] }
        var out: [String: UInt64] = [:]
        for (name, v) in members {
            guard let t = v.stringValue, t.hasPrefix("0x"), let a = UInt64(t.dropFirst(2), radix: 16) else { continue }
            out[name] = a
        }
        return out
    }

    static func layoutJSON(name: String, ko: [UInt8], sysfs: [String: UInt64], info: [String: String],
                           insmod: (rc: Int, t0: String, t1: String, msg: String)?, depends: [String], kernel: String, path: String) -> String {
        let dropped: Set<String> = [".modinfo", "__versions", ".data..percpu"]
        var rows: [(UInt64, String)] = []
        var unaddressed: [String] = []
        ko.withUnsafeBytes { raw in
            guard let elf = try? ELFFile(bytes: raw) else { return }
            for s in elf.sections where s.isAlloc {
                let kind: String
                if dropped.contains(s.name) { kind = "dropped" }
                else if s.name.hasPrefix(".init") { kind = "init" }
                else if s.isExec { kind = "text" }
                else if s.isNoBits { kind = "nobits" }
                else { kind = "data" }
                var flags = "A"
                if s.isWrite { flags += "W" }
                if s.isExec { flags += "X" }
                let addr = sysfs[s.name]
                let row = ConsoleJSON.object([
                    ("name", ConsoleJSON.string(s.name)), ("kind", ConsoleJSON.string(kind)), ("elf_index", "\(s.index)"),
                    ("elf_flags", ConsoleJSON.string(flags)), ("elf_type", "\(s.type)"), ("size", "\(s.size)"),
                    ("align", "\(s.addralign)"), ("addr", addr.map { ConsoleJSON.string("0x" + Hex.number($0)) } ?? "null"),
                ])
                if let addr { rows.append((addr, row)) } else { unaddressed.append(row) }
            }
        }
        let sections = rows.sorted { $0.0 < $1.0 }.map(\.1) + unaddressed
        let num: (String?) -> String = { $0.flatMap { Int($0) }.map { "\($0)" } ?? "null" }
        return ConsoleJSON.object([
            ("module", ConsoleJSON.string(name)), ("ko", ConsoleJSON.string(name + ".ko")), ("ko_path_in_package", ConsoleJSON.string(path)),
            ("depends", "[" + depends.map(ConsoleJSON.string).joined(separator: ", ") + "]"), ("kernel", ConsoleJSON.string(kernel)),
            ("core_base", ConsoleJSON.string(info["core_base"] ?? "")),
            ("core_text", ConsoleJSON.object([
                ("base", ConsoleJSON.string(info["text_base"] ?? "")), ("size", num(info["text_size"])),
                ("end_used", ConsoleJSON.string(info["text_end_used"] ?? "")), ("file", ConsoleJSON.string("core_text.bin")),
            ])),
            ("sysfs_coresize", num(info["coresize"])), ("sysfs_initsize", num(info["initsize"])),
            ("taint", ConsoleJSON.string(info["taint"] ?? "")),
            ("insmod", insmod.map { ConsoleJSON.object([("rc", "\($0.rc)"), ("t0", Double($0.t0) != nil ? $0.t0 : "null"), ("t1", Double($0.t1) != nil ? $0.t1 : "null"), ("msg", ConsoleJSON.string($0.msg))]) } ?? "null"),
            ("sections", "[\n  " + sections.joined(separator: ",\n  ") + "\n]"),
        ]) + "\n"
    }
}
