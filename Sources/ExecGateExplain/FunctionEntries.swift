// SPDX-License-Identifier: Apache-2.0
//
// Function entries: a module's (sorted, unique, binary-searched) and a guest's verified modules'
// (each module's kept as added). `isFunctionEntry` asks them for the core's and every verified
// module's legitimate call targets.

/// A module's function entries (STT_FUNC addresses in its exec core sections): sorted, unique,
/// found by binary search. Built once per explanation from the symbol table (a sort of a few
/// hundred words instead of a hash per symbol), kept as is by ``ModuleExports`` and shared, not
/// merged, by ``SymbolResolver`` (``FunctionEntrySet``).
public struct FunctionEntries: Sendable, Sequence, ExpressibleByArrayLiteral, Equatable {
    /// Strictly increasing.
    public let sorted: [UInt64]

    public init(_ addresses: [UInt64]) {
        var a = addresses
        // (A module's entries span a few MiB: out of order, a radix sort of their offsets.)
        AddressSort.sortUnique(&a)
        sorted = a
    }
    public init(_ addresses: Set<UInt64>) { self.init(Array(addresses)) }

    public init(arrayLiteral elements: UInt64...) { self.init(elements) }

    public var count: Int { sorted.count }
    public var isEmpty: Bool { sorted.isEmpty }
    public var underestimatedCount: Int { sorted.count }
    public func makeIterator() -> IndexingIterator<[UInt64]> { sorted.makeIterator() }

    public func contains(_ a: UInt64) -> Bool { sorted.sortedContains(a) }
}

/// The function entries of every verified module of a guest: each module's ``FunctionEntries``
/// as it was added (shared storage, nothing merged), in the order added.
public struct FunctionEntrySet: Sendable, Sequence {
    public private(set) var modules: [FunctionEntries] = []
    public init() {}
    mutating func add(_ e: FunctionEntries) { if !e.isEmpty { modules.append(e) } }
    public func contains(_ a: UInt64) -> Bool { modules.contains { $0.contains(a) } }
    public var count: Int { modules.reduce(0) { $0 + $1.count } }
    public var isEmpty: Bool { modules.isEmpty }
    public var underestimatedCount: Int { count }
    public func makeIterator() -> FlattenSequence<[FunctionEntries]>.Iterator { modules.joined().makeIterator() }
}
