/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CExecGateSys: the raw Linux syscalls the service VM's PID 1 and its launcher need, wrapped in
 * plain non-variadic C functions Swift can call. Every function returns -1 and leaves errno set on
 * failure (the Swift side turns that into a typed error); none of them aborts.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* finit_module(2): load the module in `fd`. glibc has no wrapper and syscall() is variadic. */
int execgate_finit_module(int fd, const char *params, int flags);

/* mount(2), umount2(2). */
int execgate_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
                   const char *data);

/* reboot(2) with the LINUX_REBOOT_CMD_* values below. Only returns on failure. */
#define EXECGATE_REBOOT_POWER_OFF 0x4321FEDCu
#define EXECGATE_REBOOT_RESTART 0x01234567u
#define EXECGATE_REBOOT_HALT 0xCDEF0123u
#define EXECGATE_REBOOT_CAD_OFF 0x00000000u
int execgate_reboot(unsigned int cmd);
void execgate_sync(void);

/* 1 when the C constructor found itself PID 1 and mounted /proc (or /proc was already there),
 * 0 when not PID 1, -errno when the mount failed. */
int execgate_early_proc_status(void);
/* CLOCK_BOOTTIME (ns) when the process's first constructor ran: after execve and libc start-up, before the Swift runtime; 0 if unknown. */
long long execgate_process_start_boottime_ns(void);

/* KVM: API version (12 on every real KVM) of an open /dev/kvm fd, or -1. */
int execgate_kvm_api_version(int kvm_fd);

/* Benchmark baseline (Bench.c): `count` round trips of `size` bytes (≤ 4096) over a Unix stream
 * socket at `path` to a minimal blocking echo thread, after 100 unrecorded ones; sample i in
 * microseconds goes to samples_us[i]. The socket file is removed afterwards. */
int execgate_unix_echo_rtt(const char *path, int count, int size, double *samples_us, int server_cpu);

/* Thread `tid` (0: the calling thread) onto CPU `cpu` alone, or (cpu -1) back onto every CPU the
 * process's main thread may use (sched_setaffinity). 0, or -1 with errno. For `bench`'s round-trip
 * placements: client and server on one core, then on two. */
int execgate_pin_thread(int tid, int cpu);
/* The CPUs the process's main thread may use, ascending, at most `max` of them into `out`; their
 * count, or -1. */
int execgate_allowed_cpus(int *out, int max);

/* Bytes the allocator has handed out and not had back, over every arena (glibc malloc_info
 * totals: arena bytes minus free chunks, plus mmap'd chunks); -1 where the C library cannot tell. */
long long execgate_heap_in_use(void);

/* Drops what stdio holds unwritten for standard output and clears its error flag (__fpurge,
 * clearerr): after a write to it failed and was reported, exit does not try (and fail) again. */
void execgate_stdout_discard(void);

#ifdef __cplusplus
}
#endif
