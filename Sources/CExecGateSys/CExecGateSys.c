/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "CExecGateSys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

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

int execgate_kvm_api_version(int kvm_fd) { return ioctl(kvm_fd, KVM_GET_API_VERSION, 0); }
