/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CDecompress: one-shot, size-capped decompression of kernel payloads (and compression, used by
 * tests and tools to build re-packed images).
 *
 * Formats are the ones a bzImage payload can use (arch/x86/boot/compressed/Makefile, 6.1):
 * gzip, bzip2, lzma ("alone" .lzma), xz, lzo (unsupported here), lz4 (the *legacy* lz4 frame the
 * kernel's `lz4 -l` produces), zstd. The kernel appends a 4-byte little-endian uncompressed size
 * after non-gzip streams (scripts/Makefile.lib size_append); every decoder here stops at the end
 * of the first stream and ignores what follows.
 *
 * Output is capped by max_out: hostile input cannot make us allocate more than that
 * (plus one growth step's slack never exceeds max_out either).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

enum {
    EGD_GZIP = 1,
    EGD_XZ = 2,
    EGD_LZMA = 3,
    EGD_ZSTD = 4,
    EGD_BZIP2 = 5,
    EGD_LZ4_LEGACY = 6,
};

enum {
    EGD_OK = 0,
    EGD_ERR_CORRUPT = -1,      /* the decoder rejected the data */
    EGD_ERR_LIMIT = -2,        /* output would exceed max_out */
    EGD_ERR_NOMEM = -3,
    EGD_ERR_TRUNCATED = -4,    /* input ended before the stream did */
    EGD_ERR_UNSUPPORTED = -5,  /* unknown format number */
    EGD_ERR_ARGUMENT = -6,
};

/* Decompresses the first stream of `format` in (in, in_len). On EGD_OK, *out (free with egd_free)
 * holds *out_len bytes and *consumed is the number of input bytes the stream used. */
int egd_decompress(int format, const uint8_t *in, size_t in_len, size_t max_out,
                   uint8_t **out, size_t *out_len, size_t *consumed);

/* Compresses (in, in_len) into one stream of `format` (level: format-specific, <= 0 for a fast
 * default). For EGD_LZ4_LEGACY the kernel's legacy framing is produced. */
int egd_compress(int format, const uint8_t *in, size_t in_len, int level, uint8_t **out, size_t *out_len);

/* The same as egd_compress(EGD_GZIP, ...): gzip alone (mtime 0, no name), in its own object so a
 * link that needs only gzip does not take every encoder (CompressGzip.c). */
int egd_gzip_compress(const uint8_t *in, size_t in_len, int level, uint8_t **out, size_t *out_len);

/* The kernel's legacy lz4 chunk: each inflates to at most 8 MiB (lib/decompress_unlz4.c). */
#define EGD_LZ4_CHUNK (8u << 20)

/* One zstd frame of (in, in_len) at `level` with the window bounded to 2^window_log bytes (10..27),
 * content size and checksum in the frame header. For streams a small decoder unpacks with a fixed
 * budget: the Linux initramfs unpacker (lib/decompress_unzstd.c) allocates a workspace of about the
 * frame's window size. Single-threaded, so the same input always gives the same bytes. */
int egd_zstd_compress(const uint8_t *in, size_t in_len, int level, int window_log, uint8_t **out, size_t *out_len);

void egd_free(void *p);

/* Offset >= start of the next `30 82 ?? ?? 30 82` (a DER SEQUENCE with a two-byte length whose
 * first element is again such a SEQUENCE: the shape of an X.509 certificate), or len if none.
 * Used to scan stripped vmlinux images for the builtin certificate list. */
size_t egd_find_der_certificate_candidate(const uint8_t *p, size_t len, size_t start);
