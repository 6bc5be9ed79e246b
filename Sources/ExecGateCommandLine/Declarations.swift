// SPDX-License-Identifier: Apache-2.0
//
// The declarations a command is made of: `@Option`, `@Flag`, `@Argument`, `@OptionGroup`.
// Standard library only (no Foundation: this target is linked into the service VM's /init).
//
// Each declaration is a property wrapper holding a reference to one `ArgumentSlot`; the parser
// finds the slots by reflecting over a freshly made command value (`Mirror`, in declaration
// order) and writes the parsed values into them. A copy of the command shares the slots.

/// A value that can be parsed from one command-line word.
public protocol ExpressibleByArgument {
    init?(argument: String)
    /// What a word must look like, for errors: "--memory: expected an integer, got 'x'".
    static var argumentExpectation: String { get }
    /// How a default value is shown in help.
    var defaultValueDescription: String { get }
}

extension ExpressibleByArgument {
    public var defaultValueDescription: String { "\(self)" }
}

extension String: ExpressibleByArgument {
    public init?(argument: String) { self = argument }
    public static var argumentExpectation: String { "a word" }
    public var defaultValueDescription: String { isEmpty ? "\"\"" : self }
}

extension Int: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument, radix: 10) }
    public static var argumentExpectation: String { "an integer" }
}

extension UInt32: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument, radix: 10) }
    public static var argumentExpectation: String { "an integer 0…\(UInt32.max)" }
}

extension UInt64: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument, radix: 10) }
    public static var argumentExpectation: String { "an integer 0…\(UInt64.max)" }
}

extension Double: ExpressibleByArgument {
    /// Finite decimal numbers only ("inf" and "nan" are not durations or sizes).
    public init?(argument: String) {
        guard let v = Double(argument), v.isFinite else { return nil }
        self = v
    }
    public static var argumentExpectation: String { "a number" }
}

/// The help text of one declaration, and the placeholder its value is shown with (`<CERT>`).
public struct ArgumentHelp: ExpressibleByStringInterpolation, Sendable {
    public var abstract: String
    public var valueName: String?

    public init(_ abstract: String = "", valueName: String? = nil) {
        self.abstract = abstract
        self.valueName = valueName
    }

    public init(stringLiteral value: String) { self.init(value) }
}

/// How an option is spelled: `--kebab-case-of-the-property` by default.
public struct NameSpecification: ExpressibleByArrayLiteral, Sendable {
    public enum Element: Sendable {
        /// `--` + the property name in kebab case.
        case long
        /// `-` + the first letter of the property name.
        case short
        case customLong(String)
        case customShort(Character)
    }

    var elements: [Element]

    public init(arrayLiteral elements: Element...) { self.elements = elements }

    public static var long: NameSpecification { [.long] }
    public static var short: NameSpecification { [.short] }
    public static func customLong(_ name: String) -> NameSpecification { [.customLong(name)] }
    public static func customShort(_ c: Character) -> NameSpecification { [.customShort(c)] }
}

/// One declared option, flag or positional argument: its spelling, help, and where the parsed
/// value goes. Made by the property wrappers; filled in by `CommandParser`.
public final class ArgumentSlot {
    enum Kind { case option, flag, positional }

    let kind: Kind
    let nameSpecification: NameSpecification
    let help: ArgumentHelp
    /// May be given more than once (an array option); all values are kept in order.
    let isRepeating: Bool
    /// Must be given (no default, not optional).
    let isRequired: Bool
    /// The default as help shows it (nil: none to show).
    let defaultDescription: String?
    let expectation: String
    /// Parses and stores one value; false if the word is not a valid value.
    let store: (String) -> Bool
    /// "" is a value here: the option's own default is "" (it means "none": `--guest ""`,
    /// `--kernel-args ""`), so giving it is the same as leaving the option out. Every other
    /// option and argument refuses "" (CommandParser).
    var acceptsEmpty = false

    /// Set by the parser from the property name.
    var propertyName = ""
    var given = false

    init(kind: Kind, name: NameSpecification, help: ArgumentHelp, isRepeating: Bool, isRequired: Bool,
         defaultDescription: String?, expectation: String, store: @escaping (String) -> Bool) {
        self.kind = kind
        self.nameSpecification = name
        self.help = help
        self.isRepeating = isRepeating
        self.isRequired = isRequired
        self.defaultDescription = defaultDescription
        self.expectation = expectation
        self.store = store
    }

    /// `--kebab-name` spellings (without the dashes).
    var longNames: [String] {
        var out: [String] = []
        for e in nameSpecification.elements {
            switch e {
            case .long: out.append(kebabCase(propertyName))
            case .customLong(let n): out.append(n)
            case .short, .customShort: break
            }
        }
        return out
    }

    var shortNames: [Character] {
        var out: [Character] = []
        for e in nameSpecification.elements {
            switch e {
            case .short: if let c = propertyName.first { out.append(c) }
            case .customShort(let c): out.append(c)
            case .long, .customLong: break
            }
        }
        return out
    }

    /// How errors and help name it: `--memory`, or `<file>` for a positional.
    var displayName: String {
        if kind == .positional { return "<\(help.valueName ?? kebabCase(propertyName))>" }
        if let l = longNames.first { return "--" + l }
        if let s = shortNames.first { return "-" + String(s) }
        return kebabCase(propertyName)
    }

    var valuePlaceholder: String { "<\(help.valueName ?? kebabCase(propertyName))>" }
}

extension ArgumentSlot {
    /// A slot that parses one `T` per word and stores `wrap(value)` in `box` (a later word replaces it).
    static func single<T: ExpressibleByArgument, V>(_ kind: Kind, name: NameSpecification, help: ArgumentHelp, isRequired: Bool,
                                                     defaultDescription: String? = nil, box: ValueBox<V>,
                                                     wrap: @escaping (T) -> V) -> ArgumentSlot {
        ArgumentSlot(kind: kind, name: name, help: help, isRepeating: false, isRequired: isRequired,
                     defaultDescription: defaultDescription, expectation: T.argumentExpectation,
                     store: { w in
                         guard let v = T(argument: w) else { return false }
                         box.value = wrap(v)
                         return true
                     })
    }
}

/// A storage box for one value (shared by copies of the declaring struct).
final class ValueBox<Value> {
    var value: Value?
    init(_ value: Value?) { self.value = value }

    /// The value of a declaration after parsing. The parser refuses a command whose required
    /// option or argument is missing before run() sees it, so an empty box here is a bug.
    func parsed(_ slot: ArgumentSlot) -> Value {
        guard let v = value else { fatalError("\(slot.displayName) read before parsing") }
        return v
    }
}

/// Something the parser can find in a command by reflection.
protocol DeclaredArgument {
    var slot: ArgumentSlot { get }
}

protocol DeclaredGroup {
    var arguments: ParsableArguments { get }
}

// MARK: - @Option

/// `--name VALUE` (or `--name=VALUE`). Required when it has no default and is not optional;
/// an array option may be repeated.
@propertyWrapper
public struct Option<Value>: DeclaredArgument {
    let box: ValueBox<Value>
    let slot: ArgumentSlot

    public var wrappedValue: Value {
        get { box.parsed(slot) }
        nonmutating set { box.value = newValue }
    }

    public init(wrappedValue: Value, name: NameSpecification = .long, help: ArgumentHelp = "") where Value: ExpressibleByArgument {
        let box = ValueBox<Value>(wrappedValue)
        self.box = box
        self.slot = .single(.option, name: name, help: help, isRequired: false,
                            defaultDescription: wrappedValue.defaultValueDescription, box: box, wrap: { (v: Value) in v })
        if let d = wrappedValue as? String, d.isEmpty { slot.acceptsEmpty = true }
    }

    public init(name: NameSpecification = .long, help: ArgumentHelp = "") where Value: ExpressibleByArgument {
        let box = ValueBox<Value>(nil)
        self.box = box
        self.slot = .single(.option, name: name, help: help, isRequired: true, box: box, wrap: { (v: Value) in v })
    }

    public init<T: ExpressibleByArgument>(name: NameSpecification = .long, help: ArgumentHelp = "") where Value == T? {
        let box = ValueBox<Value>(.some(nil))
        self.box = box
        self.slot = .single(.option, name: name, help: help, isRequired: false, box: box, wrap: { (v: T) in .some(v) })
    }

    public init<T: ExpressibleByArgument>(wrappedValue: [T], name: NameSpecification = .long, help: ArgumentHelp = "") where Value == [T] {
        let box = ValueBox<Value>(wrappedValue)
        var parsedAny = false
        self.box = box
        self.slot = ArgumentSlot(kind: .option, name: name, help: help, isRepeating: true, isRequired: false,
                                 defaultDescription: nil, expectation: T.argumentExpectation,
                                 store: { w in
                                     guard let v = T(argument: w) else { return false }
                                     // Values given replace the default; repeats accumulate.
                                     if !parsedAny { box.value = []; parsedAny = true }
                                     box.value!.append(v)  // set just above or by the initialiser
                                     return true
                                 })
    }
}

// MARK: - @Flag

/// `--name` with no value: true when given.
@propertyWrapper
public struct Flag: DeclaredArgument {
    let box: ValueBox<Bool>
    let slot: ArgumentSlot

    public var wrappedValue: Bool {
        get { box.value ?? false }
        nonmutating set { box.value = newValue }
    }

    public init(wrappedValue: Bool = false, name: NameSpecification = .long, help: ArgumentHelp = "") {
        let box = ValueBox<Bool>(wrappedValue)
        self.box = box
        self.slot = ArgumentSlot(kind: .flag, name: name, help: help, isRepeating: false, isRequired: false,
                                 defaultDescription: nil, expectation: "",
                                 store: { _ in box.value = true; return true })
    }
}

// MARK: - @Argument

/// A positional argument, in declaration order. Required unless optional or defaulted.
@propertyWrapper
public struct Argument<Value>: DeclaredArgument {
    let box: ValueBox<Value>
    let slot: ArgumentSlot

    public var wrappedValue: Value {
        get { box.parsed(slot) }
        nonmutating set { box.value = newValue }
    }

    public init(help: ArgumentHelp = "") where Value: ExpressibleByArgument {
        let box = ValueBox<Value>(nil)
        self.box = box
        self.slot = .single(.positional, name: [], help: help, isRequired: true, box: box, wrap: { (v: Value) in v })
    }

    public init<T: ExpressibleByArgument>(help: ArgumentHelp = "") where Value == T? {
        let box = ValueBox<Value>(.some(nil))
        self.box = box
        self.slot = .single(.positional, name: [], help: help, isRequired: false, box: box, wrap: { (v: T) in .some(v) })
    }
}

// MARK: - @OptionGroup

/// The declarations of another `ParsableArguments` type, inlined where the group is declared.
@propertyWrapper
public struct OptionGroup<Value: ParsableArguments>: DeclaredGroup {
    let box: ValueBox<Value>

    public var wrappedValue: Value {
        get { box.value! }  // set by init() and never cleared
        nonmutating set { box.value = newValue }
    }

    var arguments: ParsableArguments { box.value! }  // as above

    public init() { box = ValueBox(Value()) }
}

/// `roundTrips` → `round-trips`, `bulkMiB` → `bulk-mi-b`, `URLPath` → `url-path`.
func kebabCase(_ name: String) -> String {
    let chars = Array(name)
    var out = ""
    for (i, c) in chars.enumerated() {
        if c.isUppercase, i > 0 {
            let prev = chars[i - 1]
            let nextIsLower = i + 1 < chars.count && chars[i + 1].isLowercase
            if prev.isLowercase || prev.isNumber || (prev.isUppercase && nextIsLower) { out.append("-") }
        }
        out += c.lowercased()
    }
    return out
}
