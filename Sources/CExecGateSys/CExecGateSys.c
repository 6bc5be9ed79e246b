/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "CExecGateSys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/*
 * PID 1's main thread must not end in pthread_exit. An `async` main hands the main thread to
 * `swift_task_asyncMainDrainQueue`, which calls `dispatch_main()`, which ends the main thread with
 * pthread_exit: a forced unwind of its stack. In a static executable crtbeginT.o registers the
 * whole .eh_frame with libgcc's unwinder, so that first unwind sorts every FDE of /init (~51,000:
 * `init_object`, `frame_downheap`, `fde_single_encoding_compare`; ~0.1 s natively, measured with
 * perf). In the service VM (-smp 1, TCG) that sort runs beside PID 1's set-up on the one vCPU
 * and delays READY (ServiceVM/README.md, "Where the time goes"). So, as PID 1, the drain hook
 * (a Swift concurrency runtime hook, ConcurrencyHooks.def) parks the main thread instead, where
 * dispatch_main's own thread ends (libdispatch queue.c, _dispatch_sig_thread → _dispatch_sigsuspend):
 * in sigsuspend with the EMPTY mask. That is the one thread of the process that takes signals: the
 * global executor's worker threads block them all (_dispatch_sigmask), so a park with signals blocked
 * would leave a process-directed SIGTERM pending for ever and no handler would run (`vsock-backend`
 * ignored `make stop` until its SIGKILL and left its sockets and .lock files; Ctrl-C did nothing).
 * As PID 1 the empty mask changes nothing the kernel lets through: signals at their default action
 * are not delivered to init (SIGNAL_UNKILLABLE), and GuestInit's own handlers run here as they would
 * under dispatch_main. PID 1's async work runs on the global executor's
 * threads as before; nothing in PID 1 runs on the main actor or the main queue (which would
 * then never be drained: a hang the boot tests would show as a missing READY line).
 * Weak: in a build without the concurrency runtime the hook simply stays unset.
 */
extern void *swift_task_asyncMainDrainQueue_hook __attribute__((weak));

__attribute__((swiftcall, noreturn)) static void execgate_park_main_thread(void *original, void *override) {
    (void)original;
    (void)override;
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    for (;;) sigsuspend(&none);
}

/*
 * Defined only by Images/link/no-unwind-tables.ld: the static /init linked without unwind tables.
 * There the main thread's pthread_exit would not merely be slow: libgcc's unwinder would find no
 * frame to start from and abort. So such a binary parks its main thread in every process (the
 * host commands of the same binary too), not only as PID 1.
 */
extern const char execgate_linked_without_unwind_tables __attribute__((weak));

/* CLOCK_BOOTTIME when this constructor ran (ns; 0 if unknown): the process's first instruction of
 * ours, after execve and glibc's start-up, before the Swift runtime. PID 1 logs it, so the console
 * splits "kernel → /init" from "process start → Swift main" (ServiceVM/README.md, "Where the time goes"). */
static long long process_start_boottime_ns = 0;

__attribute__((constructor(101))) static void execgate_early_proc(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0) process_start_boottime_ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    int pid1 = getpid() == 1;
    if ((pid1 || &execgate_linked_without_unwind_tables != NULL) && &swift_task_asyncMainDrainQueue_hook != NULL)
        swift_task_asyncMainDrainQueue_hook = (void *)execgate_park_main_thread;
    if (!pid1) return;
    struct stat st;
    if (stat("/proc/self/exe", &st) == 0) { early_proc_status = 1; return; }
    (void)mkdir("/proc", 0555);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0 || errno == EBUSY)
        early_proc_status = 1;
    else
        early_proc_status = -errno;
}

int execgate_early_proc_status(void) { return early_proc_status; }
long long execgate_process_start_boottime_ns(void) { return process_start_boottime_ns; }

int execgate_kvm_api_version(int kvm_fd) { return ioctl(kvm_fd, KVM_GET_API_VERSION, 0); }

void execgate_stdout_discard(void) {
    __fpurge(stdout);
    clearerr(stdout);
}
