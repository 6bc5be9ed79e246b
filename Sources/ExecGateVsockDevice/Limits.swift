// SPDX-License-Identifier: Apache-2.0
//
// Every limit of the vhost-user-vsock backend, named in one place (FC `vsock/defs.rs` style).

public enum VsockLimits {
    // MARK: - vhost-user
    /// Largest vhost-user payload accepted. The biggest we understand is SET_MEM_TABLE with 8
    /// regions (8 + 8 × 32 = 264 bytes) or GET_CONFIG (12 + 256); anything larger ends the session.
    public static let maxVhostUserPayload = 4096
    /// VHOST_MEMORY_BASELINE_NREGIONS: regions (and fds) in one SET_MEM_TABLE.
    public static let maxMemoryRegions = 8
    /// Queues the frontend may address: rx 0, tx 1, event 2 (QEMU keeps the event queue itself).
    public static let queueCount = 3
    /// Largest split-virtqueue size (virtio 1.2 § 2.7: Queue Size ≤ 32768, a power of 2).
    public static let maxQueueSize = 32768
    /// Most descriptors in one chain, whatever the queue size: the kernel's vhost-vsock takes at
    /// most UIO_MAXIOV (1024) buffers per chain (vhost_get_vq_desc() with ARRAY_SIZE(vq->iov);
    /// translate_desc() -ENOBUFS past it). A Linux guest's vsock chain is a header and its payload.
    /// Bounds the work one avail entry buys (a 32768-descriptor chain cost 2.5 s per 256 of them).
    public static let maxChainDescriptors = 1024
    /// Seconds a blocked send to the frontend may take (SO_SNDTIMEO) before the session is dropped.
    public static let vhostUserReadTimeoutSeconds = 2
    /// Milliseconds one whole vhost-user message (header, payload, fds) may take from its first
    /// byte: one deadline per message, not per recv(), so the backend's only thread is never
    /// held longer than this by a trickling frontend.
    public static let vhostUserMessageDeadlineMillis = 2000

    // MARK: - vsock packets
    /// Largest payload of one packet, either direction (Linux: VIRTIO_VSOCK_MAX_PKT_BUF_SIZE 64 KiB).
    public static let maxPacketPayload = 64 * 1024
    /// Bytes of one host → guest RW packet (also bounded by the guest's rx buffer and credit).
    public static let rxPacketChunk = 64 * 1024
    /// Packets taken off the tx queue per kick before looking at other work (fairness, no starvation).
    public static let txBatch = 256

    // MARK: - connections
    /// Live connections (FC MAX_CONNECTIONS = 1023).
    public static let maxConnections = 1023
    /// Descriptors kept free beyond connections and handshakes: both listeners, the wake eventfd,
    /// the frontend, 9 ring eventfds, the 16 one vhost-user message may carry (SET_MEM_TABLE's 8
    /// and the extras detected and closed), one host socket being connected, stdio.
    public static let reservedDescriptors = 64
    /// Our receive buffer per connection = the `buf_alloc` we advertise: how much the guest may send
    /// before the host stream drains it. Bounded memory: at most this much is ever buffered.
    public static let connBufferSize: UInt32 = 256 * 1024
    /// Send CREDIT_UPDATE once this many consumed bytes have not been advertised, or when the
    /// guest's view of our free space falls below it.
    public static let creditUpdateThreshold: UInt32 = 64 * 1024
    /// Milliseconds the guest has to answer a host-initiated REQUEST (FC CONN_REQUEST_TIMEOUT_MS).
    public static let connectTimeoutMillis = 2000
    /// Milliseconds to wait for the guest's RST after we sent SHUTDOWN (FC CONN_SHUTDOWN_TIMEOUT_MS).
    public static let shutdownTimeoutMillis = 2000
    /// Orphan RSTs waiting for rx buffers; beyond this they are dropped (an RST flood costs nothing).
    public static let maxPendingOrphanRST = 256

    // MARK: - hybrid host socket
    /// Longest `CONNECT <port>\n` line (FC reads at most 32 bytes). "CONNECT 4294967295\n" is 19.
    public static let maxHandshakeLine = 32
    /// Host clients mid-handshake at once.
    public static let maxPendingHandshakes = 64
    /// Milliseconds a host client has to send its CONNECT line.
    public static let handshakeTimeoutMillis = 5000
    /// Milliseconds a listener is left unpolled after accept4() failed for lack of resources
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM): the waiting client stays in the backlog and keeps the
    /// socket readable, so polling it again at once would spin (TransportLimits.acceptBackoff, 200 ms).
    public static let acceptPauseMillis = 200
    /// First local port handed to host-initiated connections (FC: 1 << 30, counting up).
    public static let firstHostPort: UInt32 = 1 << 30
    /// Longest path in a sockaddr_un (including the NUL).
    public static let maxUnixPath = 108
}
