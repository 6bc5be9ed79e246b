// SPDX-License-Identifier: Apache-2.0
//
// Commands, their configuration, and the errors that end one with a status.

/// A set of declarations (`@Option`, `@Flag`, `@Argument`, `@OptionGroup`); a command, or a
/// group of options several commands share.
public protocol ParsableArguments {
    init()
    /// Checks across declarations after parsing; throw `ValidationError` (exit 2 with its message)
    /// or an `ExitCode`.
    func validate() throws
}

extension ParsableArguments {
    public func validate() throws {}
}

/// A command: a leaf that runs, or a group of subcommands.
public protocol ParsableCommand: ParsableArguments {
    static var configuration: CommandConfiguration { get }
    func run() throws
}

extension ParsableCommand {
    public static var configuration: CommandConfiguration { CommandConfiguration() }

    /// A group without its own `run` (only subcommands) shows its help when run.
    public func run() throws { throw CommandLineError.subcommandMissing }
}

/// A command whose `run` is async (`serve`, `request …`).
public protocol AsyncParsableCommand: ParsableCommand {
    func run() async throws
}

public struct CommandConfiguration {
    public var commandName: String?
    public var abstract: String
    public var discussion: String
    public var subcommands: [ParsableCommand.Type]

    public init(commandName: String? = nil, abstract: String = "", discussion: String = "", subcommands: [ParsableCommand.Type] = []) {
        self.commandName = commandName
        self.abstract = abstract
        self.discussion = discussion
        self.subcommands = subcommands
    }
}

extension ParsableCommand {
    /// The name on the command line: the configured one, else the type name in kebab case.
    static var commandName: String { configuration.commandName ?? kebabCase(String(describing: Self.self)) }
}

/// A usage error found after parsing (in `validate()` or `run()`): exit 2 with this reason.
public struct ValidationError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Ends the process with this status (the message, if any, was already printed).
public struct ExitCode: Error, Equatable, CustomStringConvertible {
    public var rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let success = ExitCode(0)
    public static let failure = ExitCode(1)
    /// Bad usage: unknown option, missing or malformed value, failed validation.
    public static let usage = ExitCode(2)

    public var description: String { "exit \(rawValue)" }
}

/// Why a command line was refused. The description is the one-line reason printed on stderr.
public enum CommandLineError: Error, Equatable, CustomStringConvertible {
    case unknownOption(String)
    case unknownSubcommand(String, expected: [String])
    case subcommandMissing
    case missingValue(option: String)
    case invalidValue(option: String, expected: String, got: String)
    /// An option or argument given as "" (names no file, directory, guest or number).
    case emptyValue(String)
    case flagTakesNoValue(String)
    case givenTwice(String)
    case unexpectedArgument(String)
    case missing([String])
    /// argv[argument] is not valid UTF-8 (it cannot be taken as the word or path it spells).
    case notUTF8(argument: Int)

    public var description: String {
        switch self {
        case .unknownOption(let o): return "unknown option '\(o)'"
        case .unknownSubcommand(let s, let expected): return "unknown subcommand '\(s)' (expected one of: \(expected.joined(separator: ", ")))"
        case .subcommandMissing: return "a subcommand is required"
        case .missingValue(let o): return "\(o): missing value"
        case .invalidValue(let o, let expected, let got): return "\(o): expected \(expected), got '\(got)'"
        case .emptyValue(let o): return "\(o): an empty value names nothing (for a path, \".\" is the current directory)"
        case .flagTakesNoValue(let f): return "\(f) takes no value"
        case .givenTwice(let o): return "\(o) given more than once"
        case .unexpectedArgument(let a): return "unexpected argument '\(a)'"
        case .missing(let names): return "missing \(names.joined(separator: ", "))"
        case .notUTF8(let i): return "argument \(i) is not valid UTF-8 (a path named on the command line must be UTF-8; rename the file or use a link)"
        }
    }
}
