// SPDX-License-Identifier: Apache-2.0
//
// Expensive inputs computed once per test process: the Debian certificate (from the real vmlinuz),
// the decompressed vmlinux, and one fresh RSA-2048 key.

import ExecGateKernelImage
import ExecGateSignature
import ExecGateTestSupport
import XCTest

enum Shared {
    struct Failure: Error, CustomStringConvertible { let description: String }

    /// The real vmlinuz bytes.
    static let vmlinuzBytes: Result<[UInt8], Error> = Result { try Fixtures.readFile(Fixtures.vmlinuz()) }

    /// The real vmlinuz, loaded.
    static let debianImage: Result<KernelImage, Error> = Result {
        try KernelImage.load(try vmlinuzBytes.get())
    }

    /// The certificates extracted from the real vmlinuz.
    static let debianCertificates: Result<[Certificate], Error> = Result {
        try debianImage.get().builtinCertificates()
    }

    static func debianCertificate() throws -> Certificate {
        let certs = try debianCertificates.get()
        guard certs.count == 1 else { throw Failure(description: "expected 1 builtin certificate, found \(certs.count)") }
        return certs[0]
    }

    static func debianTrust() throws -> TrustStore { TrustStore([try debianCertificate()]) }

    /// A fresh RSA-2048 key + self-signed certificate (generated once).
    static let freshKey: Result<GeneratedSigningKey, Error> = Result {
        try GeneratedSigningKey.generateRSA(bits: 2048, commonName: "ExecGate test key")
    }

    static func freshSigner(digest: DigestAlgorithm = .sha256,
                            identification: ModuleSigner.SignerIdentification = .issuerAndSerial) throws -> ModuleSigner {
        let (key, cert) = try freshKey.get().load()
        return try ModuleSigner(key: key, certificate: cert, digest: digest, identification: identification)
    }

    static func freshTrust() throws -> TrustStore { TrustStore([try freshKey.get().load().1]) }

    /// A real signed Debian module.
    static func vsock() throws -> [UInt8] { try Fixtures.readFile(Fixtures.module(named: "vsock.ko")) }
}

/// Asserts a verdict failed with `code` (and returns the failure for further checks).
@discardableResult
func assertDenied(_ v: SignatureVerdict, _ code: String, file: StaticString = #filePath, line: UInt = #line) -> SignatureFailure? {
    switch v {
    case .success(let ok):
        XCTFail("expected \(code), got success (signer \(ok.signer.subject))", file: file, line: line)
        return nil
    case .failure(let f):
        XCTAssertEqual(f.code, code, "\(f)", file: file, line: line)
        return f
    }
}
