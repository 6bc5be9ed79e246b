// SPDX-License-Identifier: Apache-2.0

import ExecGateSignature
import ExecGateTestSupport
import XCTest

final class ModuleSignatureTrailerTests: XCTestCase {
    /// Parses `bytes` and returns the error code, failing if it parses.
    func trailerError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> ModuleSignatureTrailerError.Code? {
        do {
            let t = try ModuleSignatureTrailer.parse(bytes)
            XCTFail("parsed unexpectedly: \(t)", file: file, line: line)
            return nil
        } catch {
            return error.code
        }
    }

    /// content + fake signature + struct (with `mutate` applied) + magic.
    func synthetic(content: Int = 100, sig: Int = 50, mutate: (inout [UInt8]) -> Void = { _ in }) -> [UInt8] {
        var s = ModuleSignatureTrailer.encode(signatureLength: UInt32(sig))
        mutate(&s)
        return [UInt8](repeating: 0xaa, count: content) + [UInt8](repeating: 0x55, count: sig) + s
    }

    func testDebianVsockTrailerMatchesKnownBytes() throws {
        let m = try Shared.vsock()
        let t = try ModuleSignatureTrailer.parse(m)
        // FACTS: Debian's vsock.ko: `00 00 02 00 00 00 00 00 00 00 02 a9`.
        XCTAssertEqual(Array(m[t.structRange]), [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x02, 0xa9])
        XCTAssertEqual(t.signatureLength, 0x2a9)
        XCTAssertEqual(t.signatureRange.count, 0x2a9)
        XCTAssertEqual(t.contentRange, 0..<(m.count - 40 - 0x2a9))
        XCTAssertEqual(Array(m[t.magicRange]), ModuleSignatureTrailer.magic)
        XCTAssertEqual(t.idType, 2)
        XCTAssertEqual(m[t.signatureRange.lowerBound], 0x30)
    }

    func testSyntheticRoundTrip() throws {
        let b = synthetic()
        let t = try ModuleSignatureTrailer.parse(b)
        XCTAssertEqual(t.contentRange, 0..<100)
        XCTAssertEqual(t.signatureRange, 100..<150)
        XCTAssertEqual(t.structRange, 150..<162)
        XCTAssertEqual(t.magicRange, 162..<190)
    }

    func testForbidsFileShorterThanMagic() {
        XCTAssertEqual(trailerError([]), .tooShortForMagic)
        XCTAssertEqual(trailerError(Array(ModuleSignatureTrailer.magic.dropFirst())), .tooShortForMagic)
    }

    func testForbidsMissingMagic() {
        XCTAssertEqual(trailerError([UInt8](repeating: 0, count: 4096)), .noMagic)
        var b = synthetic()
        b[b.count - 1] = UInt8(ascii: "X")
        XCTAssertEqual(trailerError(b), .noMagic)
    }

    func testForbidsTooShortForStruct() {
        XCTAssertEqual(trailerError(ModuleSignatureTrailer.magic), .tooShortForStruct)
        XCTAssertEqual(trailerError([1, 2, 3] + ModuleSignatureTrailer.magic), .tooShortForStruct)
        // Boundary: exactly 12 bytes of struct and nothing else parses as far as sig_len.
        XCTAssertEqual(trailerError(ModuleSignatureTrailer.encode(signatureLength: 1)), .signatureLengthTooLarge)
    }

    func testForbidsEachNonZeroField() {
        XCTAssertEqual(trailerError(synthetic { $0[0] = 1 }), .nonZeroAlgo)
        XCTAssertEqual(trailerError(synthetic { $0[1] = 4 }), .nonZeroHash)
        XCTAssertEqual(trailerError(synthetic { $0[3] = 9 }), .nonZeroSignerLen)
        XCTAssertEqual(trailerError(synthetic { $0[4] = 20 }), .nonZeroKeyIDLen)
        XCTAssertEqual(trailerError(synthetic { $0[5] = 1 }), .nonZeroPad)
        XCTAssertEqual(trailerError(synthetic { $0[6] = 1 }), .nonZeroPad)
        XCTAssertEqual(trailerError(synthetic { $0[7] = 0x80 }), .nonZeroPad)
    }

    func testForbidsIDTypeOtherThanPKCS7() {
        XCTAssertEqual(trailerError(synthetic { $0[2] = 0 }), .notPKCS7)  // PKEY_ID_PGP
        XCTAssertEqual(trailerError(synthetic { $0[2] = 1 }), .notPKCS7)  // PKEY_ID_X509
        XCTAssertEqual(trailerError(synthetic { $0[2] = 3 }), .notPKCS7)
    }

    func testForbidsZeroSignatureLength() {
        XCTAssertEqual(trailerError(synthetic(sig: 0)), .zeroSignatureLength)
    }

    func testSignatureLengthBoundary() throws {
        // sig_len may cover all but one byte before the struct (kernel: sig_len < file_len - 12).
        let ok = synthetic(content: 1, sig: 50)
        XCTAssertEqual(try ModuleSignatureTrailer.parse(ok).contentRange, 0..<1)
        // ... and no more: zero content bytes is refused, as is anything past the start.
        XCTAssertEqual(trailerError(synthetic(content: 0, sig: 50)), .signatureLengthTooLarge)
        XCTAssertEqual(trailerError(synthetic(content: 10, sig: 50) { $0[11] = 61 }), .signatureLengthTooLarge)
        XCTAssertEqual(trailerError(synthetic { $0[8] = 0xff; $0[9] = 0xff; $0[10] = 0xff; $0[11] = 0xff }), .signatureLengthTooLarge)
    }

    func testErrorsHaveStableCodesAndReasons() {
        do {
            _ = try ModuleSignatureTrailer.parse(synthetic { $0[4] = 20 })
            XCTFail("parsed")
        } catch {
            XCTAssertEqual(error.code.rawValue, "trailer.nonzero-key-id-len")
            XCTAssertTrue(error.reason.contains("key_id_len is 20"), error.reason)
        }
    }
}
