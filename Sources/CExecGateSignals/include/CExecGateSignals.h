/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CExecGateSignals: no temporary file of the atomic writer (_ExecGateInternals Files) survives a
 * signal that ends the process. The writer registers each temporary path here before creating it
 * and unregisters it once renamed or removed; a handler, installed for the signals whose default
 * action ends the process (only while they are at that default), unlinks every registered path
 * and re-raises the signal at its default action, so the process still ends by that signal.
 * Everything the handler touches is a fixed-size static table and async-signal-safe calls
 * (unlink, sigaction, sigprocmask, raise: signal-safety(7)).
 */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

/* Registers `path` (a temporary file about to be created) and returns its slot, or -1 with errno
 * ENAMETOOLONG when the path does not fit (open(2) would refuse it too). Installs the handler on
 * first use. Waits while every slot is taken (one slot per file being written at once). */
int execgate_temp_track(const char *path);

/* execgate_temp_track(path), then open(path, flags, mode) with signals blocked in this thread:
 * a signal handled on another thread meanwhile waits for the file to exist and removes it; once
 * a signal is ending the process, the calling thread waits for the end instead of creating a
 * file. The fd, `*slot` set; or -1 with errno (nothing registered). */
int execgate_temp_open(const char *path, int flags, int mode, int *slot);

/* rename(2); when it fails because a signal ending the process removed `from`, the calling
 * thread waits for the end (it must not report a failure of its own, or exit with its status). */
int execgate_temp_rename(const char *from, const char *to);

/* execgate_temp_track(path) as a directory, then mkdir(path, mode) as execgate_temp_open opens: a
 * staging directory, removed by the handler (rmdir) after every registered file, so the files
 * staged in it (registered too) go first. 0 and `*slot` set; or -1 with errno. */
int execgate_temp_mkdir(const char *path, int mode, int *slot);

/* renameat2(RENAME_EXCHANGE): `a` and `b` (both existing) swap names atomically, a directory for
 * a directory. -1 with errno (EINVAL, ENOSYS: the file system or kernel cannot). */
int execgate_rename_exchange(const char *a, const char *b);

/* renameat2(RENAME_NOREPLACE): rename(2) that fails with EEXIST rather than replace `to`. */
int execgate_rename_noreplace(const char *from, const char *to);

/* The temporary file of `slot` is gone (renamed over its target, or unlinked): forget it. */
void execgate_temp_untrack(int slot);

/* The commit section (the renames that publish files written together): a signal landing inside
 * it is held until execgate_temp_commit_end, so a set of files is published whole (a key with its
 * certificate) or, when the signal landed earlier, not at all. */
void execgate_temp_commit_begin(void);
void execgate_temp_commit_end(void);

/* A graceful stop (`serve`, `vsock-backend`, `vm start`, the guest's service): from the first call
 * on, SIGTERM, SIGINT, SIGHUP and SIGQUIT run a handler that makes an eventfd readable (write(2)
 * of 8 bytes: async-signal-safe), which stays readable. Installed synchronously by sigaction, so
 * no signal between this call and the reader's start is lost or met at its default action (a
 * DispatchSource made its handler only when the dispatch manager got to it, asynchronously: a
 * SIGTERM meanwhile met the SIG_IGN set before it and was lost). The fd, the same on every call;
 * or -1 with errno when no eventfd could be made (nothing installed). */
int execgate_termination_fd(void);

#ifdef __cplusplus
}
#endif
