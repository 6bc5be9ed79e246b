// SPDX-License-Identifier: Apache-2.0
//
// `--help` for every command, generated from its configuration and declarations.

enum HelpText {
    static func render(_ type: ParsableCommand.Type, path: [String]) -> String {
        let config = type.configuration
        var out = ""
        if !config.abstract.isEmpty { out += "OVERVIEW: \(config.abstract)\n\n" }
        if !config.discussion.isEmpty { out += config.discussion + "\n\n" }
        let name = path.joined(separator: " ")
        if !config.subcommands.isEmpty {
            out += "USAGE: \(name) <subcommand>\n\nSUBCOMMANDS:\n"
            for s in config.subcommands { out += row(s.commandName, s.configuration.abstract) }
            // `help` is the root's: `execgate help policy push`, never `execgate policy help push`.
            let helpPath = ([path.first ?? name, "help"] + path.dropFirst()).joined(separator: " ")
            out += "\n  See '\(helpPath) <subcommand>' for detailed help.\n"
            return out
        }
        // Building the table cannot fail for a command that parses; help shows what it can.
        guard let table = try? ArgumentTable(type.init()) else { return out + "USAGE: \(name)\n" }
        var usage = "USAGE: \(name)"
        for s in table.slots {
            let piece: String
            switch s.kind {
            case .positional: piece = s.isRequired ? s.displayName : "[\(s.displayName)]"
            case .flag: piece = "[\(s.displayName)]"
            case .option:
                let p = "\(s.displayName) \(s.valuePlaceholder)" + (s.isRepeating ? " ..." : "")
                piece = s.isRequired ? p : "[\(p)]"
            }
            usage += " " + piece
        }
        out += usage + "\n"
        if !table.positionals.isEmpty {
            out += "\nARGUMENTS:\n"
            for p in table.positionals { out += row(p.displayName, p.help.abstract) }
        }
        out += "\nOPTIONS:\n"
        for s in table.slots where s.kind != .positional {
            var names = s.shortNames.map { "-\($0)" } + s.longNames.map { "--\($0)" }
            if s.kind == .option { names[names.count - 1] += " \(s.valuePlaceholder)" }
            var text = s.help.abstract
            if let d = s.defaultDescription { text += " (default: \(d))" }
            if s.isRepeating { text += " (repeatable)" }
            out += row(names.joined(separator: ", "), text)
        }
        out += row("-h, --help", "Show help information.")
        return out
    }

    static func row(_ left: String, _ right: String) -> String {
        let width = 28
        let l = "  " + left
        if right.isEmpty { return l + "\n" }
        if l.count + 2 <= width { return l + String(repeating: " ", count: width - l.count) + right + "\n" }
        return l + "\n" + String(repeating: " ", count: width) + right + "\n"
    }
}
