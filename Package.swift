// swift-tools-version:6.0
//===----------------------------------------------------------------------===//
// ExecGate — a code verifier that runs in its own service VM beside a hypervisor.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//
//
// Layering (bottom to top; a target only depends on targets above it in this list):
//
//   C shims      COpenSSLShim (libcrypto), CDecompress (zlib/xz/zstd/bzip2/lz4),
//                CExecGateSys (raw syscalls PID 1 needs), CExecGateVsockSys (fences, SCM_RIGHTS),
//                CExecGateSignals (the atomic writer's temporary files removed on a fatal signal)
//   pure core    ExecGateWire (frames + messages, NIOCore only), ExecGateELF (stdlib only),
//                ExecGateSignature (module trailers + PKCS#7 via the OpenSSL shim),
//                ExecGateExplain (relocations, patch sites: end-state explanation),
//                ExecGatePolicy, ExecGateVerifier (request + policy + guest state -> verdict)
//   edges        ExecGateVsockDevice (vhost-user-vsock backend: host <-> service VM; CExecGateVsockSys only;
//                also SocketPath: the one claim of a Unix socket path before bind),
//                ExecGateTransport (Endpoint -> listening NIOPosix channel: the one bind(endpoint:);
//                per-port budgets, backpressure and deadlines shared by the VMM and admin ports),
//                ExecGateKernelImage (bzImage/vmlinux, key extraction), ExecGateService (NIOPosix server),
//                ExecGateServiceVM (guest PID 1, image builder, QEMU launcher; CExecGateSys, and
//                ExecGateKernelImage + CDecompress for the kernel, its certificates and gzip),
//                ExecGateVsockDevice (vhost-user-vsock backend: host <-> service VM; CExecGateVsockSys only),
//                ExecGateClient (the one client: unix, vsock, hybrid), ExecGateAdmin (admin port, audit,
//                AdminClient on ExecGateClient; not on ExecGateService), ExecGateCaptureTool (`execgate capture`)
//   host         ExecGateHost (service set-up: ServiceConfiguration -> VerifierService.start, for
//                `execgate serve` and the service VM's PID 1; the in-guest self-test; the benchmarks)
//   executable   execgate (argument parsing only, with ExecGateCommandLine: the project's own
//                stdlib-only parser, so the guest's /init links no Foundation)

import PackageDescription

// Dependencies are pinned to exact versions (a security binary does not float), and Package.resolved
// is committed so transitive packages (swift-atomics, swift-collections, swift-system) are pinned too.

let swiftNIO = Package.Dependency.package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.2")
let swiftLog = Package.Dependency.package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2")

let nioCore: Target.Dependency = .product(name: "NIOCore", package: "swift-nio")
let nioPosix: Target.Dependency = .product(name: "NIOPosix", package: "swift-nio")
let nioEmbedded: Target.Dependency = .product(name: "NIOEmbedded", package: "swift-nio")
let nioConcurrency: Target.Dependency = .product(name: "NIOConcurrencyHelpers", package: "swift-nio")
let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v5),
]

let package = Package(
    name: "ExecGate",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "execgate", targets: ["execgate"]),
        .library(name: "ExecGateClient", targets: ["ExecGateClient"]),
    ],
    dependencies: [swiftNIO, swiftLog],
    targets: [
        // MARK: - C shims
        // libcrypto only: nothing in ExecGate speaks TLS (no SSL_* call anywhere), so libssl is not linked.
        // The service VM's static /init links the minimal libcrypto of scripts/build-openssl.sh instead
        // of the system's (`make image`: -I/-L of its cache directory come first).
        .target(
            name: "COpenSSLShim",
            linkerSettings: [.linkedLibrary("crypto")]
        ),
        .target(
            name: "CDecompress",
            linkerSettings: [
                .linkedLibrary("z"), .linkedLibrary("lzma"), .linkedLibrary("zstd"),
                .linkedLibrary("bz2"), .linkedLibrary("lz4"),
            ]
        ),
        .target(name: "CExecGateSys"),
        .target(name: "CExecGateVsockSys"),
        // The atomic writer's temporary files, removed when a signal ends the process.
        .target(name: "CExecGateSignals"),
        .target(name: "_ExecGateInternals", dependencies: ["CExecGateSignals"], swiftSettings: swiftSettings),
        // The command-line parser (stdlib only: no Foundation in the service VM's /init).
        .target(name: "ExecGateCommandLine", swiftSettings: swiftSettings),

        // MARK: - Pure core
        .target(name: "ExecGateWire", dependencies: [nioCore], swiftSettings: swiftSettings),
        .target(name: "ExecGateELF", dependencies: ["_ExecGateInternals"], swiftSettings: swiftSettings),
        .target(name: "ExecGateSignature", dependencies: ["COpenSSLShim", "_ExecGateInternals"], swiftSettings: swiftSettings),
        .target(name: "ExecGateExplain", dependencies: ["ExecGateELF", "_ExecGateInternals"], swiftSettings: swiftSettings),
        
        .target(name: "ExecGatePolicy", dependencies: ["ExecGateSignature", "_ExecGateInternals"], swiftSettings: swiftSettings),
        .target(
            name: "ExecGateVerifier",
            dependencies: ["ExecGateWire", "ExecGateELF", "ExecGateSignature", "ExecGateExplain", "ExecGatePolicy", "_ExecGateInternals", nioCore, nioConcurrency],
            swiftSettings: swiftSettings
        ),

        // MARK: - Edges
        .target(
            name: "ExecGateTransport",
            dependencies: ["ExecGateWire", "ExecGateVsockDevice", nioCore, nioPosix, logging],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ExecGateCapture",
            dependencies: ["ExecGateELF", "ExecGateExplain", "ExecGateVerifier", "ExecGateSignature", "ExecGateWire", "_ExecGateInternals", nioCore],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ExecGateAdmin",
            dependencies: ["ExecGateTransport", "ExecGateClient", "ExecGateWire", "ExecGatePolicy", "ExecGateVerifier", "ExecGateSignature", "_ExecGateInternals", nioCore, nioPosix, nioConcurrency, logging],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ExecGateKernelImage",
            dependencies: ["CDecompress", "ExecGateSignature", "ExecGateELF", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ExecGateService",
            dependencies: ["ExecGateTransport", "ExecGateWire", "ExecGateVerifier", "ExecGateSignature", "_ExecGateInternals", nioCore, nioPosix, nioConcurrency, logging],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ExecGateClient",
            dependencies: ["ExecGateWire", "_ExecGateInternals", nioCore, nioPosix, nioConcurrency],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "ExecGateVsockDevice",
            dependencies: ["CExecGateVsockSys", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "ExecGateServiceVM",
            dependencies: ["CExecGateSys", "CDecompress", "ExecGateKernelImage", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "ExecGateCaptureTool",
            dependencies: ["ExecGateServiceVM", "ExecGateELF", "ExecGateKernelImage", "CExecGateSys", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "ExecGateHost",
            dependencies: ["ExecGateService", "ExecGateTransport", "ExecGateAdmin", "ExecGateClient", "ExecGateServiceVM", "ExecGateKernelImage", "ExecGateELF", "ExecGateVerifier", "ExecGatePolicy",
                           "ExecGateSignature", "ExecGateWire", "ExecGateCapture", "CExecGateSys", "_ExecGateInternals", nioCore, nioPosix, nioConcurrency, logging],
            swiftSettings: swiftSettings
        ),

        // MARK: - Executable
        .executableTarget(
            name: "execgate",
            dependencies: [
                "ExecGateWire", "ExecGateELF", "ExecGateSignature", "ExecGateKernelImage", "ExecGateExplain", "ExecGateCapture",
                "ExecGatePolicy", "ExecGateVerifier", "ExecGateService", "ExecGateClient", "CExecGateSys", "_ExecGateInternals",
                "ExecGateServiceVM", "ExecGateAdmin", "ExecGateVsockDevice", "ExecGateCaptureTool", "ExecGateHost", "ExecGateCommandLine", logging, nioCore, nioPosix,
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: - Tests
        .target(
            name: "ExecGateTestSupport",
            dependencies: ["ExecGateSignature", "ExecGateELF", "ExecGateWire", "ExecGateKernelImage", "_ExecGateInternals", nioConcurrency],
            path: "Tests/ExecGateTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateInternalsTests",
            dependencies: ["_ExecGateInternals", "ExecGateTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateCommandLineTests",
            dependencies: ["ExecGateCommandLine", "ExecGateTestSupport", "ExecGateCapture", "ExecGateVerifier", "ExecGateSignature"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateWireTests",
            dependencies: ["ExecGateWire", "ExecGateTestSupport", nioCore, nioEmbedded],
            exclude: ["Vectors"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateELFTests",
            dependencies: ["ExecGateELF", "ExecGateTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateSignatureTests",
            dependencies: ["ExecGateSignature", "ExecGateKernelImage", "ExecGateTestSupport", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateExplainTests",
            dependencies: ["ExecGateExplain", "ExecGateELF", "ExecGateCapture", "ExecGateTestSupport", "ExecGateKernelImage"],
            resources: [.copy("Fixtures")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateVerifierTests",
            dependencies: ["ExecGateVerifier", "ExecGateCapture", "ExecGateTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateServiceTests",
            dependencies: ["ExecGateService", "ExecGateHost", "ExecGateTransport", "ExecGateClient", "ExecGateVsockDevice", "_ExecGateInternals", "ExecGateCapture", "ExecGatePolicy", "ExecGateVerifier", "ExecGateTestSupport", nioPosix],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateVsockDeviceTests",
            dependencies: ["ExecGateVsockDevice", "CExecGateVsockSys", "ExecGateServiceVM", "ExecGateClient", "ExecGateWire", "ExecGateVerifier",
                           "ExecGatePolicy", "ExecGateSignature", "ExecGateTestSupport", nioCore],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGatePolicyTests",
            dependencies: ["ExecGatePolicy", "ExecGateAdmin", "ExecGateVerifier", "ExecGateService", "ExecGateClient", "ExecGateCapture",
                           "ExecGateSignature", "ExecGateTestSupport", nioCore, nioPosix, nioConcurrency],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateClientTests",
            dependencies: ["ExecGateClient", "ExecGateAdmin", "ExecGateService", "ExecGateVerifier", "ExecGatePolicy", "ExecGateSignature",
                           "ExecGateWire", "ExecGateTestSupport", nioCore, nioPosix, logging],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateKernelImageTests",
            dependencies: ["ExecGateKernelImage", "ExecGateSignature", "ExecGateTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateServiceVMTests",
            dependencies: ["ExecGateServiceVM", "ExecGateSignature", "ExecGateTestSupport", "_ExecGateInternals"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ExecGateCaptureToolTests",
            dependencies: ["ExecGateELF", "ExecGateExplain", "ExecGateCaptureTool", "ExecGateServiceVM", "ExecGateKernelImage", "ExecGateCapture", "ExecGateVerifier", "ExecGatePolicy", "ExecGateClient", "ExecGateSignature",
                           "ExecGateWire", "ExecGateTestSupport", nioCore],
            swiftSettings: swiftSettings
        ),
    ]
)
