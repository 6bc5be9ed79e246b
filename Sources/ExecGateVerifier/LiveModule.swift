// SPDX-License-Identifier: Apache-2.0
//
// A guest's live modules: what the session keeps for each verified, live module (its ranges,
// frames, exports, run-time sites, key states) and what that costs the registry's one budget
// (`LiveLedger`). The rules they serve are GuestSession.swift's.

import _ExecGateInternals
import ExecGateExplain
import ExecGatePolicy
import ExecGateWire
import NIOConcurrencyHelpers
import Synchronization

/// One verified, live module of a guest.
public struct LiveModule: Sendable {
    /// Canonical name (`-` ≡ `_`): the signed `struct module` name (`ModuleName.identity`).
    public let name: String
    /// The signed `struct module` name itself, byte for byte: what retire-module and
    /// module-init-freed must name (the kernel's find_module_all() compares bytes).
    public let identity: String
    /// The whole core allocation `[text_base, text_base + core size)` (layout_sections()).
    public let coreRange: Range<UInt64>
    /// The executable region the grant covers.
    public let textRange: Range<UInt64>
    public let frames: [UInt64]
    /// The init text while it is granted (nil once freed, or when none was claimed).
    public var initRange: Range<UInt64>?
    /// The whole init allocation while the init text is granted (nil with `initRange`): on 6.1
    /// `init_layout`, init text then init rodata and data, one module_alloc() block freed whole by
    /// do_free_init(); on 6.12 `MOD_INIT_TEXT` (each memory type its own allocation: the init data
    /// types are `initDataAllocations`).
    public var initAllocation: Range<UInt64>?
    /// 6.12: the module's other core allocations (MOD_DATA, MOD_RODATA, MOD_RO_AFTER_INIT, each
    /// its own `execmem_alloc()` in `move_module()`), held while the module is live: the kernel
    /// never hands a live module's data pages out again, so a claim laid over them (a module's
    /// text over another's `struct module` and `.data`) describes no state the kernel makes.
    /// Empty on 6.1 (`coreRange` is the whole core allocation).
    public var dataAllocations: [Range<UInt64>] = []
    /// 6.12: MOD_INIT_DATA and MOD_INIT_RODATA while the init text is granted (freed with it by
    /// `do_free_init()`; emptied with `initRange`).
    public var initDataAllocations: [Range<UInt64>] = []
    /// Every range this module holds now: core, init (while granted) and 6.12's data allocations.
    var heldRanges: [Range<UInt64>] { [coreRange] + (initAllocation.map { [$0] } ?? []) + dataAllocations + initDataAllocations }
    /// The module's per-cpu area `[mod->percpu, + size of .data..percpu)` (percpu_modalloc()),
    /// nil when it has no per-cpu data.
    public let percpuRange: Range<UInt64>?
    public var initFrames: [UInt64]
    public let exports: ModuleExports?
    public let sites: RuntimeSiteTable?
    /// Live modules whose exports this module's relocations resolved to (resolve_symbol() →
    /// ref_module(): the kernel refuses to unload those while this one is loaded). Set by
    /// `GuestSession.commit` from `imports`, under the lock that records the module.
    public internal(set) var dependsOn: Set<String>
    /// The module's undefined symbol names (what resolve_symbol() looks up).
    /// Emptied when the module is committed (its dependencies are then in `dependsOn`): not
    /// live state.
    var imports: Set<String>
    /// `GuestSession.removalGeneration` read before the module was explained (its resolver
    /// snapshot is no older): commit refuses when a live module went since.
    let explainedAt: UInt64
    /// The state of each key's sites in this module when it was allowed.
    let keyStates: [UInt64: UInt64]
    /// The state of each key's sites in its init text (while that is granted; emptied when init
    /// is freed). `jump_label_add_module()` / `static_call_add_module()` patch init sites to the
    /// key's current state like core ones, so they are held to the live state too.
    var initKeyStates: [UInt64: UInt64] = [:]
    /// The module's run-time site at `address`, read from `sites` (a second index of every site
    /// by address, kept per live module, was ~2.6 MiB a guest of the reference corpus's 103
    /// modules: 40% of a guest's live state).
    func site(at address: UInt64) -> RuntimeSiteTable.Site? { sites?.site(at: address) }
    /// Every run-time site of the module, in address order.
    func forEachSite(_ body: (RuntimeSiteTable.Site) -> Void) { sites?.forEachSite(body) }
    /// Which commit recorded this instance (`GuestSession.commit`): a rollback removes only the
    /// instance its own commit recorded, never another one of the same name loaded since.
    var commitSerial: UInt64 = 0
    /// Committed, verdict not final yet (`GuestSession.finish` clears it; `rollback` removes the
    /// module). No module may link against it meanwhile: its exports may still be taken back.
    var pending = false
    /// What this module's live state holds in its session (`LiveModule.heldBytes(…)`): charged
    /// against the registry's budget when it is committed, given back when it goes.
    let heldBytes: Int

    init(name: String, identity: String? = nil, coreRange: Range<UInt64>, textRange: Range<UInt64>, frames: [UInt64], initRange: Range<UInt64>?,
         initAllocation: Range<UInt64>? = nil, percpuRange: Range<UInt64>? = nil,
         initFrames: [UInt64], exports: ModuleExports?, sites: RuntimeSiteTable?, dependsOn: Set<String> = [], keyStates: [UInt64: UInt64],
         imports: Set<String> = [], explainedAt: UInt64 = 0) {
        self.name = name
        self.identity = identity ?? name
        self.coreRange = coreRange
        self.textRange = textRange
        self.frames = frames
        self.initRange = initRange
        self.initAllocation = initRange == nil ? nil : (initAllocation ?? initRange)
        self.percpuRange = percpuRange
        self.initFrames = initFrames
        self.exports = exports
        self.sites = sites
        self.dependsOn = dependsOn
        self.keyStates = keyStates
        self.imports = imports
        self.explainedAt = explainedAt
        self.heldBytes = Self.heldBytes(names: [name, identity ?? name], frames: frames.count + initFrames.count, exports: exports,
                                        sites: sites?.count ?? 0, keys: keyStates.count)
    }

    /// What a live module holds in its session, the same way the registry charges facts (at what
    /// they hold: docs/protocol.md "Limits"): `liveModuleCharge` for the record itself (its
    /// dictionary slot, its entry in the load order, its entries in the range indexes, its tables' headers), its names twice, 64 a
    /// frame (the module's list and the session's index of frames by owner); each export 320 (as
    /// a core export: `KernelFacts.symbolBytes`) plus its name three times (the module's table, the
    /// session's resolver, which merges it, and the session's index of exports by owner), 16 a
    /// function entry, 80 a static-call key it defines plus 16 a trusted target, 48 a key state
    /// its trampolines record, 32 a tracepoint key it defines (its list and the resolver's
    /// table); each run-time site 256 (the site table and the session's index by key); each key
    /// state 128 (the module's, the session's current and seen states). Its imports are not held: commit turns them into `dependsOn` and drops them.
    static func heldBytes(names: [String], frames: Int, exports: ModuleExports?, sites: Int, keys: Int) -> Int {
        var n = liveModuleCharge + names.reduce(0) { $0 + 2 * $1.utf8.count } + 64 * frames + 256 * sites + 128 * keys
        if let e = exports {
            n += e.exportedNames.reduce(0) { $0 + 320 + 3 * $1.utf8.count }
            n += 16 * e.functionEntries.sorted.count
            n += 80 * e.staticCallKeyCount + 16 * e.staticCallTargetCount + 48 * e.staticCallStates.count
            n += 32 * e.tracepointStaticCallKeys.count
        }
        return n
    }
    /// Held per live module beyond what it counts (`heldBytes`).
    static let liveModuleCharge = 1024
}

/// The registry's budget as one account (`GuestRegistry.maximumSymbolBytes`): the registered
/// facts (set by the registry under its lock) and every session's live modules (charged by the
/// session at commit, under the session's lock). Its lock is taken last, under either of
/// theirs, and takes no other: a registration and a commit are each checked exactly.
final class LiveLedger: @unchecked Sendable {
    // @unchecked: `facts` and `live` are guarded by `lock`.
    private let lock = NIOLock()
    private var facts = 0
    private var live = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Charge `bytes` of live state: nil when it fits, else why not (the figures).
    func reserve(_ bytes: Int) -> String? {
        lock.withLock {
            guard facts + live + bytes <= limit else {
                return "\(bytes) bytes of live state on top of \(facts) registered and \(live) live exceeds the \(limit)-byte budget"
            }
            live += bytes
            return nil
        }
    }

    func release(_ bytes: Int) { lock.withLock { live -= bytes } }

    /// Set the registered facts to `bytes` if they fit beside the live state (nil), else the live
    /// bytes that left no room (nothing changed). `force`: set them whatever (they shrank).
    /// `freeing`: live bytes a reset is about to give back (the replaced session's).
    func setFacts(_ bytes: Int, freeing: Int = 0, force: Bool = false) -> Int? {
        lock.withLock {
            if !force && bytes + live - freeing > limit { return live - freeing }
            facts = bytes
            return nil
        }
    }

    var liveBytes: Int { lock.withLock { live } }
}
