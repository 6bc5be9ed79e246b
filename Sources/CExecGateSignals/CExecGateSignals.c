/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "CExecGateSignals.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#define SLOTS 32

/* 0 free, 1 claimed (path being copied in, no file yet), 2 armed (the file may exist), 3 armed
 * directory (removed after every armed file: the files staged in it go first). */
static _Atomic int slot_state[SLOTS];
static char slot_path[SLOTS][PATH_MAX];
static _Atomic int commit_depth;
static _Atomic int held_signal;
/* Set once a handled signal is ending the process; threads in execgate_temp_open's window. */
static _Atomic int dying;
static _Atomic int opening;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

/* Signals whose default action ends the process and that arrive from outside (kill(1), the
 * terminal, a service manager, setrlimit's RLIMIT_FSIZE and RLIMIT_CPU): signal(7). */
static const int handled[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2,
                              SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF};

/* A writer thread that finds the process ending waits for the end: never creates a file the
 * handler has already passed over, never reports the rename of a file the handler removed. */
static void park(void) {
    for (;;) pause();
}

static void remove_and_die(int sig) {
    atomic_store(&dying, 1);
    /* A thread between registering a path and creating it (signals blocked there, so not this
     * one) either saw `dying` and creates nothing, or is counted in `opening`: wait for its file
     * to exist, then remove it with the rest. */
    while (atomic_load(&opening) > 0) {
    }
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&slot_state[i]) == 2) (void)unlink(slot_path[i]);
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&slot_state[i]) == 3) (void)rmdir(slot_path[i]);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    (void)sigaction(sig, &dfl, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    (void)raise(sig);                         /* pending while blocked in the handler */
    (void)pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* delivered here, at its default action */
}

static void on_signal(int sig) {
    int saved = errno;
    if (atomic_load(&commit_depth) > 0) {
        int none = 0;
        (void)atomic_compare_exchange_strong(&held_signal, &none, sig);
        errno = saved;
        return;
    }
    remove_and_die(sig);
    errno = saved; /* only reached if the default action does not end the process */
}

static void install(void) {
    /* PID 1 is not ended by a signal at its default action (the kernel ignores it for init), so
     * no temporary file can be left that way; its own handlers (GuestInit) stay as they are. */
    if (getpid() == 1) return;
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++) {
        struct sigaction old;
        if (sigaction(handled[i], NULL, &old) != 0) continue;
        /* Only a signal still at its default action: an ignored one (SIGXFSZ ignored makes
         * write(2) fail with EFBIG, and the writer cleans up) or one with its own handler (serve)
         * keeps what the process chose. */
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigfillset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        (void)sigaction(handled[i], &sa, NULL);
    }
}

int execgate_temp_track(const char *path) {
    size_t n = strlen(path);
    if (n >= PATH_MAX) { errno = ENAMETOOLONG; return -1; }
    (void)pthread_once(&install_once, install);
    for (;;) {
        for (int i = 0; i < SLOTS; i++) {
            int free_ = 0;
            if (atomic_compare_exchange_strong(&slot_state[i], &free_, 1)) {
                memcpy(slot_path[i], path, n + 1);
                atomic_store(&slot_state[i], 2);
                return i;
            }
        }
        usleep(1000);
    }
}

/* The creation both calls share: with every signal blocked and counted in `opening`, so a
 * handler that is ending the process waits for it and then finds the path to remove (or this
 * thread parks before creating anything once the process is dying). `dir`: mkdir, else open. */
static int create_tracked(int s, const char *path, int dir, int flags, int mode) {
    sigset_t all, old;
    sigfillset(&all);
    (void)pthread_sigmask(SIG_BLOCK, &all, &old);
    atomic_fetch_add(&opening, 1);
    if (atomic_load(&dying)) {
        atomic_fetch_sub(&opening, 1);
        park();
    }
    int r = dir ? mkdir(path, (mode_t)mode) : open(path, flags, mode);
    int e = errno;
    atomic_fetch_sub(&opening, 1);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0) {
        execgate_temp_untrack(s);
        errno = e;
        return -1;
    }
    return r;
}

int execgate_temp_open(const char *path, int flags, int mode, int *slot) {
    int s = execgate_temp_track(path);
    if (s < 0) return -1;
    int fd = create_tracked(s, path, 0, flags, mode);
    if (fd < 0) return -1;
    *slot = s;
    return fd;
}

int execgate_temp_mkdir(const char *path, int mode, int *slot) {
    int s = execgate_temp_track(path);
    if (s < 0) return -1;
    atomic_store(&slot_state[s], 3);
    if (create_tracked(s, path, 1, 0, mode) < 0) return -1;
    *slot = s;
    return 0;
}

int execgate_rename_exchange(const char *a, const char *b) {
    long r = syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
    if (r != 0 && atomic_load(&dying)) park();
    return (int)r;
}

int execgate_rename_noreplace(const char *from, const char *to) {
    long r = syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
    if (r != 0 && atomic_load(&dying)) park();
    return (int)r;
}

int execgate_temp_rename(const char *from, const char *to) {
    int r = rename(from, to);
    if (r != 0 && atomic_load(&dying)) park();
    return r;
}

void execgate_temp_untrack(int slot) {
    if (slot >= 0 && slot < SLOTS) atomic_store(&slot_state[slot], 0);
}

void execgate_temp_commit_begin(void) { atomic_fetch_add(&commit_depth, 1); }

void execgate_temp_commit_end(void) {
    if (atomic_fetch_sub(&commit_depth, 1) != 1) return;
    int sig = atomic_exchange(&held_signal, 0);
    if (sig == 0) return;
    /* As the handler would have: the held signal, now that the files are published. */
    sigset_t all, old;
    sigfillset(&all);
    (void)pthread_sigmask(SIG_BLOCK, &all, &old);
    remove_and_die(sig);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* The graceful stop's signals (CExecGateSignals.h): the eventfd their handler makes readable. */
static int termination_fd = -1;
static int termination_errno = 0;
static pthread_once_t termination_once = PTHREAD_ONCE_INIT;

static void on_termination(int sig) {
    (void)sig;
    int saved = errno;
    uint64_t one = 1;
    (void)write(termination_fd, &one, sizeof one);
    errno = saved;
}

static void termination_install(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) { termination_errno = errno; return; }
    termination_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_termination;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    /* SIGHUP (the terminal or ssh session closing) and SIGQUIT (Ctrl+backslash) end a process by default
     * as SIGTERM does: each is a graceful stop too, else a closed terminal killed `serve` with its
     * sockets and .lock files left, and `vm start` with QEMU left booting. */
    (void)sigaction(SIGTERM, &sa, NULL);
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGHUP, &sa, NULL);
    (void)sigaction(SIGQUIT, &sa, NULL);
}

int execgate_termination_fd(void) {
    (void)pthread_once(&termination_once, termination_install);
    if (termination_fd < 0) errno = termination_errno;
    return termination_fd;
}
