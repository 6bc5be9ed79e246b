// SPDX-License-Identifier: Apache-2.0
//
// Turns argv into one parsed, validated command, a help text, or a refusal with its reason.
//
// Rules (the whole grammar):
//   - words select nested subcommands first: `execgate vm start …`; `execgate help vm start`
//     is `execgate vm start --help`;
//   - `--name VALUE`, `--name=VALUE`, `-n VALUE`, `-n=VALUE`; a flag takes no value;
//   - an option's VALUE is the next word unless that word is itself an option of this command
//     (then the value is missing: `--connect --json` is refused, not taken as an address);
//   - a non-repeating option or flag given twice is refused (no silent "last one wins");
//   - other words fill the positional arguments in declaration order; `--` ends options;
//   - `-h`/`--help` anywhere before `--` prints the command's help (exit 0).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum ParseOutcome {
    /// A parsed and validated command, and its path for messages (`execgate vm start`).
    case run(ParsableCommand, path: String)
    /// Print this on stdout and exit 0.
    case help(String)
    /// Print this on stderr (if not empty) and exit with this status.
    case refuse(String, ExitCode)
}

public enum CommandParser {
    /// Parses `arguments` (without argv[0]) against `root` and its subcommands.
    public static func parse(_ root: ParsableCommand.Type, arguments: [String]) -> ParseOutcome {
        var type = root
        var path = [root.commandName]
        var rest = arguments[...]
        var helpRequested = false
        if rest.first == "help", !root.configuration.subcommands.isEmpty {
            helpRequested = true
            rest = rest.dropFirst()
        }
        // Walk subcommand words.
        while !type.configuration.subcommands.isEmpty {
            guard let word = rest.first else {
                if helpRequested { return .help(HelpText.render(type, path: path)) }
                return .refuse(refusal(path, .subcommandMissing, help: true, type: type), .usage)
            }
            if word == "-h" || word == "--help" { return .help(HelpText.render(type, path: path)) }
            guard let sub = type.configuration.subcommands.first(where: { $0.commandName == word }) else {
                if helpRequested { return .refuse(refusal(path, .unknownSubcommand(word, expected: type.configuration.subcommands.map { $0.commandName }), help: false, type: type), .usage) }
                let e: CommandLineError = word.hasPrefix("-") ? .unknownOption(word)
                    : .unknownSubcommand(word, expected: type.configuration.subcommands.map { $0.commandName })
                return .refuse(refusal(path, e, help: false, type: type), .usage)
            }
            type = sub
            path.append(sub.commandName)
            rest = rest.dropFirst()
        }
        if helpRequested { return .help(HelpText.render(type, path: path)) }
        if rest.prefix(while: { $0 != "--" }).contains(where: { $0 == "-h" || $0 == "--help" }) {
            return .help(HelpText.render(type, path: path))
        }
        let command = type.init()
        let pathText = path.joined(separator: " ")
        do {
            let table = try ArgumentTable(command)
            try table.parse(Array(rest))
            for group in table.groups { try group.validate() }
            try command.validate()
        } catch let e as CommandLineError {
            return .refuse(refusal(path, e, help: false, type: type), .usage)
        } catch let e as ValidationError {
            return .refuse("\(pathText): \(e.message)\n\(seeHelp(path))", .usage)
        } catch let e as ExitCode {
            return .refuse("", e)
        } catch {
            return .refuse("\(pathText): \(error)", .usage)
        }
        return .run(command, path: pathText)
    }

    static func seeHelp(_ path: [String]) -> String { "See '\(path.joined(separator: " ")) --help'." }

    static func refusal(_ path: [String], _ e: CommandLineError, help: Bool, type: ParsableCommand.Type) -> String {
        let head = "\(path.joined(separator: " ")): \(e)"
        if help { return head + "\n\n" + HelpText.render(type, path: path) }
        return head + "\n" + seeHelp(path)
    }

    /// The process's arguments (without argv[0]), each decoded as UTF-8, or the refusal of the
    /// first that is not valid UTF-8. `CommandLine.arguments` repairs such bytes to U+FFFD: a file
    /// name given as `o\xff.ko` became `o\u{FFFD}.ko`, another path, which was then read or written.
    public static func processArguments() -> Result<[String], CommandLineError> {
        var out: [String] = []
        for i in 1..<Int(CommandLine.argc) {
            guard let p = CommandLine.unsafeArgv[i] else { break }
            guard let s = String(validatingCString: p) else { return .failure(.notUTF8(argument: i)) }
            out.append(s)
        }
        return .success(out)
    }

    /// `main(root, arguments:)` over the process's arguments; an argument that is not valid
    /// UTF-8 is refused (exit 2, its position on stderr), never repaired into another word.
    public static func main(_ root: ParsableCommand.Type) async -> Never {
        switch processArguments() {
        case .success(let arguments): await main(root, arguments: arguments)
        case .failure(let e):
            writeError("\(root.commandName): \(e)")
            exit(ExitCode.usage.rawValue)
        }
    }

    /// Parses, validates and runs; never returns. Exit status: the command's `ExitCode`, 2 for
    /// bad usage (with the reason on stderr), 1 for any other error escaping `run()`.
    public static func main(_ root: ParsableCommand.Type, arguments: [String]) async -> Never {
        switch parse(root, arguments: arguments) {
        case .help(let text):
            print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
            exit(outputStatus(0, root.commandName))
        case .refuse(let message, let code):
            if !message.isEmpty { writeError(message) }
            exit(code.rawValue)
        case .run(let command, let path):
            do {
                if let a = command as? AsyncParsableCommand {
                    try await a.run()
                } else {
                    try command.run()
                }
                exit(outputStatus(0, path))
            } catch let e as ExitCode {
                exit(outputStatus(e.rawValue, path))
            } catch let e as ValidationError {
                writeError("\(path): \(e.message)")
                exit(ExitCode.usage.rawValue)
            } catch CommandLineError.subcommandMissing {
                writeError("\(path): a subcommand is required")
                exit(ExitCode.usage.rawValue)
            } catch {
                writeError("\(path): \(error)")
                exit(ExitCode.failure.rawValue)
            }
        }
    }

    /// The exit status once standard output is flushed: `code`, or 2 when a write to standard
    /// output failed (a full disk, a device refusing writes) and the command would have exited 0:
    /// what it printed is lost or cut short, so there is no result to read (README: 2 "no
    /// verdict"); a failing status is kept. The reason on stderr either way.
    public static func outputStatus(_ code: Int32, _ path: String) -> Int32 {
        errno = 0
        let flushed = fflush(stdout) == 0
        let e = errno
        guard !flushed || ferror(stdout) != 0 else { return code }
        let why = e != 0 ? String(cString: strerror(e)) : "an earlier write failed"
        writeError("\(path): cannot write standard output (\(why)): what was printed is lost or incomplete")
        return code == 0 ? ExitCode.usage.rawValue : code
    }

    static func writeError(_ s: String) {
        fputs(s.hasSuffix("\n") ? s : s + "\n", stderr)
    }
}

/// The declarations of one command (its groups inlined), indexed by spelling.
struct ArgumentTable {
    var slots: [ArgumentSlot] = []
    var groups: [ParsableArguments] = []
    var long: [String: ArgumentSlot] = [:]
    var short: [Character: ArgumentSlot] = [:]
    var positionals: [ArgumentSlot] = []

    init(_ command: ParsableArguments) throws {
        collect(command)
        for s in slots {
            switch s.kind {
            case .positional: positionals.append(s)
            case .option, .flag:
                for n in s.longNames {
                    // Two declarations with one spelling is a programming error in the command.
                    precondition(long[n] == nil && n != "help", "--\(n) declared twice")
                    long[n] = s
                }
                for c in s.shortNames {
                    precondition(short[c] == nil && c != "h", "-\(c) declared twice")
                    short[c] = s
                }
            }
        }
    }

    private mutating func collect(_ value: ParsableArguments) {
        for child in Mirror(reflecting: value).children {
            if let d = child.value as? DeclaredArgument {
                var name = child.label ?? ""
                if name.hasPrefix("_") { name.removeFirst() }  // the wrapper's storage is `_name`
                d.slot.propertyName = name
                slots.append(d.slot)
            } else if let g = child.value as? DeclaredGroup {
                collect(g.arguments)
                groups.append(g.arguments)
            }
        }
    }

    /// The option a word names, if it is one of ours (`--x`, `--x=…`, `-x`, `-x=…`).
    func optionNamed(by word: String) -> ArgumentSlot? {
        if word.hasPrefix("--") {
            let name = word.dropFirst(2).split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            return long[name]
        }
        if word.hasPrefix("-"), word.count >= 2 {
            let c = word[word.index(after: word.startIndex)]
            let tail = word.dropFirst(2)
            if tail.isEmpty || tail.hasPrefix("=") { return short[c] }
        }
        return nil
    }

    func parse(_ words: [String]) throws {
        var i = 0
        var nextPositional = 0
        var optionsEnded = false
        func give(_ s: ArgumentSlot, _ display: String) throws {
            if s.given && !s.isRepeating { throw CommandLineError.givenTwice(display) }
            s.given = true
        }
        while i < words.count {
            let w = words[i]
            i += 1
            if !optionsEnded && w == "--" { optionsEnded = true; continue }
            let looksLikeOption = !optionsEnded && w.hasPrefix("-") && w.count >= 2
            if looksLikeOption {
                let isLong = w.hasPrefix("--")
                let body = isLong ? w.dropFirst(2) : w.dropFirst(1)
                var inline: String? = nil
                var nameText = String(body)
                if let eq = body.firstIndex(of: "=") {
                    nameText = String(body[..<eq])
                    inline = String(body[body.index(after: eq)...])
                } else if !isLong && body.count > 1 {
                    throw CommandLineError.unknownOption(w)  // no bundled short options
                }
                let display = (isLong ? "--" : "-") + nameText
                let slot: ArgumentSlot?
                if isLong { slot = long[nameText] } else { slot = nameText.count == 1 ? short[nameText.first!] : nil }  // count checked
                guard let s = slot else { throw CommandLineError.unknownOption(isLong ? "--" + nameText : w) }
                try give(s, s.displayName)
                if s.kind == .flag {
                    if inline != nil { throw CommandLineError.flagTakesNoValue(display) }
                    _ = s.store("")
                    continue
                }
                let value: String
                if let inline {
                    value = inline
                } else {
                    guard i < words.count, optionNamed(by: words[i]) == nil, words[i] != "--",
                          words[i] != "-h", words[i] != "--help" else {
                        throw CommandLineError.missingValue(option: s.displayName)
                    }
                    value = words[i]
                    i += 1
                }
                // "" names nothing: no file or directory (an input directory joined with "/boot"
                // would be the root directory's), no guest, no number. A usage error naming the
                // option, for every option alike, except one whose own default is "" (`acceptsEmpty`).
                guard !value.isEmpty || s.acceptsEmpty else { throw CommandLineError.emptyValue(s.displayName) }
                guard s.store(value) else {
                    let what = s.expectation + (s.help.valueName.map { " (\($0))" } ?? "")
                    throw CommandLineError.invalidValue(option: s.displayName, expected: what, got: value)
                }
                continue
            }
            guard nextPositional < positionals.count else { throw CommandLineError.unexpectedArgument(w) }
            let p = positionals[nextPositional]
            nextPositional += 1
            p.given = true
            guard !w.isEmpty || p.acceptsEmpty else { throw CommandLineError.emptyValue(p.displayName) }
            guard p.store(w) else {
                throw CommandLineError.invalidValue(option: p.displayName, expected: p.expectation, got: w)
            }
        }
        let missing = slots.filter { $0.isRequired && !$0.given }.map { s in
            s.kind == .positional ? s.displayName : "\(s.displayName) \(s.valuePlaceholder)"
        }
        if !missing.isEmpty { throw CommandLineError.missing(missing) }
    }
}
