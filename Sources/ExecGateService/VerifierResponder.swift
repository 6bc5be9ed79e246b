// SPDX-License-Identifier: Apache-2.0
import ExecGateSignature
import ExecGateVerifier
import ExecGateWire
import NIOCore

extension Verifier: RequestResponder {
    public func digest(of body: ByteBuffer) -> [UInt8] {
        body.withUnsafeReadableBytes { Digest.sha256($0).bytes }
    }
}
