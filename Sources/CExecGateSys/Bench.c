/* SPDX-License-Identifier: Apache-2.0 */
/* What `execgate bench` needs from C (see CExecGateSys.h): the baseline of its round-trip figure, a
 * minimal echo over a Unix stream socket with blocking read/write on both ends and nothing else;
 * and the allocator's bytes in use (glibc mallinfo2, which Swift's Glibc module does not import). */
#define _GNU_SOURCE
#include "CExecGateSys.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct echo_server { int listener; int size; int cpu; };

static int read_full(int fd, char *buf, int n) {
    int got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, (size_t)(n - got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (int)r;
    }
    return 0;
}

static int write_full(int fd, const char *buf, int n) {
    int put = 0;
    while (put < n) {
        ssize_t w = write(fd, buf + put, (size_t)(n - put));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        put += (int)w;
    }
    return 0;
}

static void *echo_serve(void *arg) {
    struct echo_server *s = arg;
    char buf[4096];
    if (s->cpu >= 0) (void)execgate_pin_thread(0, s->cpu);
    int c = accept(s->listener, NULL, NULL);
    if (c < 0) return NULL;
    while (read_full(c, buf, s->size) == 0 && write_full(c, buf, s->size) == 0) {}
    close(c);
    return NULL;
}

int execgate_unix_echo_rtt(const char *path, int count, int size, double *samples_us, int server_cpu) {
    struct sockaddr_un a;
    struct echo_server s;
    pthread_t t;
    char buf[4096];
    int fd, rc = -1, saved = 0;
    if (size <= 0 || size > (int)sizeof(buf) || count < 0 || strlen(path) >= sizeof(a.sun_path)) { errno = EINVAL; return -1; }
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    strcpy(a.sun_path, path);
    s.size = size;
    s.cpu = server_cpu;
    s.listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s.listener < 0) return -1;
    unlink(path);
    if (bind(s.listener, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s.listener, 1) < 0) { saved = errno; close(s.listener); errno = saved; return -1; }
    if ((errno = pthread_create(&t, NULL, echo_serve, &s)) != 0) { saved = errno; close(s.listener); unlink(path); errno = saved; return -1; }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
        memset(buf, 0x5a, (size_t)size);
        rc = 0;
        for (int i = -100; i < count && rc == 0; i++) { /* the first 100 warm up, unrecorded */
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (write_full(fd, buf, size) < 0 || read_full(fd, buf, size) < 0) { rc = -1; saved = errno; break; }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if (i >= 0) samples_us[i] = (double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3;
        }
    } else {
        saved = errno;
        if (fd >= 0) { close(fd); fd = -1; }
        shutdown(s.listener, SHUT_RDWR);  /* wakes accept() */
    }
    if (fd >= 0) close(fd);
    pthread_join(t, NULL);
    close(s.listener);
    unlink(path);
    if (rc < 0) errno = saved;
    return rc;
}

int execgate_pin_thread(int tid, int cpu) {
    cpu_set_t set;
    if (cpu >= 0) {
        if (cpu >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
    } else if (sched_getaffinity(getpid(), sizeof set, &set) != 0) {
        return -1;
    }
    return sched_setaffinity(tid, sizeof set, &set);
}

int execgate_allowed_cpus(int *out, int max) {
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(getpid(), sizeof set, &set) != 0) return -1;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, &set)) out[n++] = c;
    return n;
}

/* mallinfo2() counts the main arena only, and threads allocate from arenas of their own; so
 * read malloc_info()'s totals over every arena instead: in use = system bytes of the arenas minus
 * their free chunks (fast + rest), plus mmap'd chunks. The totals are the last <total>/<system>
 * elements, after the per-heap ones. */
static long long xml_size(const char *from, const char *tag) {
    const char *p = NULL, *q = from;
    while ((q = strstr(q, tag)) != NULL) { p = q; q += 1; } /* the last one: the all-arena total */
    if (p == NULL || (p = strstr(p, "size=\"")) == NULL) return -1;
    return strtoll(p + 6, NULL, 10);
}

long long execgate_heap_in_use(void) {
#if defined(__GLIBC__)
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    long long fast, rest, mmapped, current, r = -1;
    if (f == NULL) return -1;
    if (malloc_info(0, f) != 0) { fclose(f); free(text); return -1; }
    fclose(f);
    fast = xml_size(text, "<total type=\"fast\"");
    rest = xml_size(text, "<total type=\"rest\"");
    mmapped = xml_size(text, "<total type=\"mmap\"");
    current = xml_size(text, "<system type=\"current\"");
    if (fast >= 0 && rest >= 0 && mmapped >= 0 && current >= 0) r = current - fast - rest + mmapped;
    free(text);
    return r;
#else
    return -1;
#endif
}
