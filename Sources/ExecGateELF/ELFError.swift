// SPDX-License-Identifier: Apache-2.0
//
// The one error type of the ELF layer. Every malformed input maps to a precise code plus the file
// offset that failed and a human reason; equality compares codes only so tests can match errors.

/// A parse failure of an ELF64 relocatable object. Thrown by ``ELFFile/init(bytes:)`` and the typed
/// views; never a crash: every offset is bounds-checked with overflow-reporting arithmetic first.
public struct ELFError: Error, Hashable, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable {
            case truncated, badMagic, unsupportedClass, unsupportedEncoding, unsupportedVersion
            case unsupportedType, unsupportedMachine, badHeaderSize, badSectionHeaderSize
            case sectionTableOutOfBounds, tooManySections, sectionOutOfBounds, badStringTableIndex
            case badStringOffset, unterminatedString, badSymbolTable, badSymbolSectionIndex
            case badRelocationSection, badRelocationTarget, badEntrySize, badAlignment, overlappingSections
            case nameTooLong
        }
        fileprivate let base: Base
        public var description: String { base.rawValue }
        public static let truncated = Code(base: .truncated)
        public static let badMagic = Code(base: .badMagic)
        public static let unsupportedClass = Code(base: .unsupportedClass)
        public static let unsupportedEncoding = Code(base: .unsupportedEncoding)
        public static let unsupportedVersion = Code(base: .unsupportedVersion)
        public static let unsupportedType = Code(base: .unsupportedType)
        public static let unsupportedMachine = Code(base: .unsupportedMachine)
        public static let badHeaderSize = Code(base: .badHeaderSize)
        public static let badSectionHeaderSize = Code(base: .badSectionHeaderSize)
        public static let sectionTableOutOfBounds = Code(base: .sectionTableOutOfBounds)
        public static let tooManySections = Code(base: .tooManySections)
        public static let sectionOutOfBounds = Code(base: .sectionOutOfBounds)
        public static let badStringTableIndex = Code(base: .badStringTableIndex)
        public static let badStringOffset = Code(base: .badStringOffset)
        public static let unterminatedString = Code(base: .unterminatedString)
        public static let badSymbolTable = Code(base: .badSymbolTable)
        public static let badSymbolSectionIndex = Code(base: .badSymbolSectionIndex)
        public static let badRelocationSection = Code(base: .badRelocationSection)
        public static let badRelocationTarget = Code(base: .badRelocationTarget)
        public static let badEntrySize = Code(base: .badEntrySize)
        public static let badAlignment = Code(base: .badAlignment)
        public static let overlappingSections = Code(base: .overlappingSections)
        /// A section name past `ELFLimits.maxSectionNameBytes`, or all of them past
        /// `ELFLimits.maxSectionNamesBytes` (each name is kept as a `String`).
        public static let nameTooLong = Code(base: .nameTooLong)
    }

    public let code: Code
    /// File offset (in the ELF image) the failing check was about.
    public let offset: Int
    public let reason: String

    public init(_ code: Code, offset: Int, _ reason: String) {
        self.code = code
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "ELFError.\(code) at file offset \(offset): \(reason)" }

    public static func == (a: ELFError, b: ELFError) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}
