// SPDX-License-Identifier: Apache-2.0
//
// What the vhost-user-vsock backend needs from C and Swift cannot express directly:
//   - memory fences and single-copy-atomic 16-bit loads/stores on shared guest memory
//     (virtio 1.2 § 2.7.13: the driver and the device access the rings concurrently);
//   - recvmsg with SCM_RIGHTS (CMSG_* are macros Swift does not import).

#ifndef CEXECGATE_VSOCK_SYS_H
#define CEXECGATE_VSOCK_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

static inline void egv_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void egv_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void egv_fence_full(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline uint16_t egv_load_u16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE); }
static inline void egv_store_u16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }

/// recvmsg(sock, buf, len) collecting up to `max_fds` descriptors passed with SCM_RIGHTS (received
/// close-on-exec). Descriptors beyond `max_fds` are closed, never leaked; `*truncated` is set when
/// that happened or the control data was cut short. Returns recvmsg's result (-1 and errno on error).
ssize_t egv_recv_with_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *nfds, int *truncated);

/// sendmsg of `len` bytes with `nfds` descriptors as SCM_RIGHTS (tests play the vhost-user frontend).
ssize_t egv_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) (glibc's <sys/eventfd.h> is not in Swift's Glibc module).
int egv_eventfd(void);

/// eventfd(0, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC): the mode a ring notifier must not be in
/// (tests build the hostile case with it).
int egv_eventfd_semaphore(void);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC [| SOCK_NONBLOCK]).
int egv_accept(int fd, int nonblocking);

/// fcntl(fd, F_GET_SEALS): the file's seals (F_SEAL_* bits), or -1 and errno (EINVAL: the file
/// cannot be sealed, e.g. a regular file).
int egv_get_seals(int fd);

/// The seal bits of <linux/fcntl.h> (macros Swift does not import).
static const int EGV_F_SEAL_SEAL = 0x0001, EGV_F_SEAL_SHRINK = 0x0002, EGV_F_SEAL_GROW = 0x0004;

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), sized with ftruncate, then sealed with
/// `seals` (0 = unsealed): what QEMU's memory-backend-memfd does (tests play the frontend).
/// Returns the fd or -1 and errno.
int egv_memfd(const char *name, size_t size, int seals);

#endif
