/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "CExecGateSys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/vm_sockets.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zlib.h>

#ifndef SYS_finit_module
#define SYS_finit_module 313 /* x86_64 */
#endif

int execgate_finit_module(int fd, const char *params, int flags) {
    return (int)syscall(SYS_finit_module, fd, params ? params : "", flags);
}

int execgate_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
                   const char *data) {
    return mount(source, target, fstype, flags, data);
}

int execgate_reboot(unsigned int cmd) { return reboot((int)cmd); }
void execgate_sync(void) { sync(); }

/*
 * Swift's runtime reads /proc/self/exe before `main` runs; as PID 1 of a fresh initramfs there is
 * no /proc yet and the runtime would crash (init killed => kernel panic). This constructor runs
 * before the Swift runtime initialises (priority 101 is the earliest user priority) and mounts
 * /proc only when we really are PID 1: on a host it does nothing at all.
 */
static int early_proc_status = 0;

__attribute__((constructor(101))) static void execgate_early_proc(void) {
    if (getpid() != 1) return;
    struct stat st;
    if (stat("/proc/self/exe", &st) == 0) { early_proc_status = 1; return; }
    (void)mkdir("/proc", 0555);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0 || errno == EBUSY)
        early_proc_status = 1;
    else
        early_proc_status = -errno;
}

int execgate_early_proc_status(void) { return early_proc_status; }

int execgate_vsock_listen(uint32_t cid, uint32_t port, int backlog) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, backlog) != 0) {
        int e = errno; close(fd); errno = e; return -1;
    }
    return fd;
}

int execgate_vsock_connect(uint32_t cid, uint32_t port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno; close(fd); errno = e; return -1;
    }
    return fd;
}

int execgate_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

static int64_t vsock_name_cid(int fd, int peer) {
    struct sockaddr_vm addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    int r = peer ? getpeername(fd, (struct sockaddr *)&addr, &len) : getsockname(fd, (struct sockaddr *)&addr, &len);
    if (r != 0 || addr.svm_family != AF_VSOCK) return -1;
    return (int64_t)addr.svm_cid;
}
int64_t execgate_vsock_peer_cid(int fd) { return vsock_name_cid(fd, 1); }
int64_t execgate_vsock_local_cid(int fd) { return vsock_name_cid(fd, 0); }

int execgate_kvm_api_version(int kvm_fd) { return ioctl(kvm_fd, KVM_GET_API_VERSION, 0); }

int execgate_gzip(const uint8_t *in, size_t in_len, int level, uint8_t **out, size_t *out_len) {
    *out = NULL; *out_len = 0;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    /* windowBits 15 + 16 = gzip wrapper; zlib writes mtime 0 and no file name: deterministic. */
    if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) { errno = ENOMEM; return -1; }
    size_t cap = deflateBound(&zs, (uLong)in_len) + 64;
    uint8_t *buf = malloc(cap);
    if (!buf) { deflateEnd(&zs); errno = ENOMEM; return -1; }
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = buf;
    zs.avail_out = (uInt)cap;
    if (in_len > 0xFFFFFFFFu || deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        deflateEnd(&zs); free(buf); errno = EOVERFLOW; return -1;
    }
    *out_len = zs.total_out;
    *out = buf;
    deflateEnd(&zs);
    return 0;
}

int execgate_xz_decompress(const uint8_t *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len) {
    *out = NULL; *out_len = 0;
    lzma_stream strm = LZMA_STREAM_INIT;
    /* No LZMA_CONCATENATED: the decoder stops at the end of the first stream (a bzImage has the
     * decompressed size and padding after it). */
    if (lzma_stream_decoder(&strm, UINT64_MAX, 0) != LZMA_OK) { errno = ENOMEM; return -1; }
    size_t cap = in_len * 4 + 4096, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) { lzma_end(&strm); errno = ENOMEM; return -1; }
    strm.next_in = in;
    strm.avail_in = in_len;
    for (;;) {
        if (len == cap) {
            if (cap >= max_out) { free(buf); lzma_end(&strm); errno = EFBIG; return -1; }
            size_t ncap = cap * 2 > max_out ? max_out : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) { free(buf); lzma_end(&strm); errno = ENOMEM; return -1; }
            buf = nb; cap = ncap;
        }
        strm.next_out = buf + len;
        strm.avail_out = cap - len;
        lzma_ret r = lzma_code(&strm, LZMA_FINISH);
        len = cap - strm.avail_out;
        if (r == LZMA_STREAM_END) break;
        if (r != LZMA_OK && r != LZMA_BUF_ERROR) { free(buf); lzma_end(&strm); errno = EINVAL; return -1; }
        if (r == LZMA_BUF_ERROR && strm.avail_in == 0) { free(buf); lzma_end(&strm); errno = EINVAL; return -1; }
    }
    lzma_end(&strm);
    *out = buf; *out_len = len;
    return 0;
}

void execgate_free(void *p) { free(p); }
