// SPDX-License-Identifier: Apache-2.0
//
// The signature check's single pass over a module (ModuleSignatureVerifier.verifyWithDigests):
// the content digest and the whole file's digest from one pass over the content, and exactly the
// verdict `verify` gives — on real Debian modules, on every single-byte change of vsock.ko's
// signature and trailer, on seeded random changes anywhere in a module, on truncations, and on an
// unsigned module. The digest helpers it rests on agree with OpenSSL's one-shot digests.

import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class OnePassDigestTests: XCTestCase {
    /// `verify` and `verifyWithDigests` agree on `module`, and the file digest is the file's.
    private func assertSameVerdict(_ module: [UInt8], _ trust: TrustStore, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let plain = ModuleSignatureVerifier.verify(module: module, trust: trust)
        let (verdict, fileDigest, _) = module.withUnsafeBytes { ModuleSignatureVerifier.verifyWithDigests(module: $0, trust: trust) }
        XCTAssertEqual(verdict.code, plain.code, what, file: file, line: line)
        XCTAssertEqual(verdict.failure, plain.failure, what, file: file, line: line)
        if case .success(let a) = verdict, case .success(let b) = plain {
            XCTAssertEqual(a.contentHash, b.contentHash, what, file: file, line: line)
            XCTAssertEqual(a.digestAlgorithm, b.digestAlgorithm, what, file: file, line: line)
            XCTAssertTrue(a.signer === b.signer, what, file: file, line: line)
        }
        XCTAssertEqual(fileDigest, Digest.compute(.sha256, over: module), what, file: file, line: line)
    }

    func testOnePassGivesVerifysVerdictsOnRealAndChangedModules() throws {
        let trust = try Shared.debianTrust()
        var valid = 0
        for path in try Fixtures.sampleModules(40) {
            let m = try Fixtures.readFile(path)
            assertSameVerdict(m, trust, path)
            if ModuleSignatureVerifier.verify(module: m, trust: trust).isValid { valid += 1 }
        }
        XCTAssertEqual(valid, 40, "the sample of real modules does not verify")
        let vsock = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(vsock)
        // Every byte of the signature and trailer, flipped.
        var codes = Set<String>()
        for i in t.signatureRange.lowerBound..<vsock.count {
            var m = vsock
            m[i] ^= 0x01
            assertSameVerdict(m, trust, "byte \(i)")
            codes.insert(ModuleSignatureVerifier.verify(module: m, trust: trust).code)
        }
        XCTAssertGreaterThanOrEqual(codes.count, 4, "\(codes)")
        // Seeded random changes anywhere (content: digest mismatch), and truncations.
        var rng = SeededRNG(seed: 0x0E_9A55)
        for _ in 0..<64 {
            var m = vsock
            m[Int.random(in: 0..<m.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            assertSameVerdict(m, trust, "random change")
        }
        for cut in [0, 1, 27, t.contentRange.upperBound, vsock.count - 1] { assertSameVerdict(Array(vsock.prefix(cut)), trust, "cut at \(cut)") }
        // Unsigned: the content alone.
        assertSameVerdict(Array(vsock[t.contentRange]), trust, "unsigned")
    }

    func testPrefixAndSegmentDigestsMatchOneShotDigests() throws {
        let m = try Shared.vsock()
        var rng = SeededRNG(seed: 0xD16E_57)
        for algorithm in [DigestAlgorithm.sha256, .sha512, .sha1] {
            for prefix in [0, 1, 63, 64, 65, m.count / 2, m.count - 1, m.count] {
                let (p, w) = m.withUnsafeBytes { Digest.compute(algorithm, over: $0, prefix: prefix) }
                XCTAssertEqual(p, Digest.compute(algorithm, over: Array(m.prefix(prefix))), "\(algorithm) prefix \(prefix)")
                XCTAssertEqual(w, Digest.compute(algorithm, over: m), "\(algorithm) whole, prefix \(prefix)")
            }
            for _ in 0..<16 {
                var cuts = (0..<Int.random(in: 0...5, using: &rng)).map { _ in Int.random(in: 0...m.count, using: &rng) }
                cuts = ([0] + cuts + [m.count]).sorted()
                let d = m.withUnsafeBytes { raw in
                    Digest.compute(algorithm, overSegments: zip(cuts, cuts.dropFirst()).map { UnsafeRawBufferPointer(rebasing: raw[$0..<$1]) })
                }
                XCTAssertEqual(d, Digest.compute(algorithm, over: m), "\(algorithm) segments \(cuts)")
            }
        }
    }
}
