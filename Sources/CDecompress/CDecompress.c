/* SPDX-License-Identifier: Apache-2.0 */
#include "CDecompress.h"

#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

void egd_free(void *p) { free(p); }

/* ---- growing output buffer, never above max ---- */

typedef struct {
    uint8_t *p;
    size_t len, cap, max;
} egd_buf;

/* Makes room for at least one more byte. Returns EGD_OK, EGD_ERR_LIMIT or EGD_ERR_NOMEM. */
static int egd_grow(egd_buf *b) {
    size_t want;
    uint8_t *q;
    if (b->cap >= b->max) return EGD_ERR_LIMIT;
    want = b->cap == 0 ? (1u << 20) : b->cap * 2;
    if (want < b->cap || want > b->max) want = b->max; /* overflow or past the cap: clamp */
    q = realloc(b->p, want);
    if (q == NULL) return EGD_ERR_NOMEM;
    b->p = q;
    b->cap = want;
    return EGD_OK;
}

/* ---- gzip (zlib) ---- */

static int egd_gzip(const uint8_t *in, size_t in_len, egd_buf *b, size_t *consumed) {
    z_stream s;
    int zr, r = EGD_ERR_CORRUPT;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) return EGD_ERR_NOMEM;
    s.next_in = (Bytef *)in;
    /* zlib counts in uInt; feed at most UINT_MAX-sized pieces. */
    for (;;) {
        if (s.avail_in == 0) {
            size_t used = (size_t)(s.next_in - in);
            size_t left = in_len - used;
            s.avail_in = left > 0x40000000u ? 0x40000000u : (uInt)left;
        }
        if (b->len == b->cap && (r = egd_grow(b)) != EGD_OK) break;
        s.next_out = b->p + b->len;
        s.avail_out = (uInt)((b->cap - b->len) > 0x40000000u ? 0x40000000u : (b->cap - b->len));
        {
            uInt before = s.avail_out;
            zr = inflate(&s, Z_NO_FLUSH);
            b->len += before - s.avail_out;
        }
        if (zr == Z_STREAM_END) {
            r = EGD_OK;
            break;
        }
        if (zr == Z_BUF_ERROR && s.avail_in == 0 && (size_t)(s.next_in - in) == in_len) {
            r = EGD_ERR_TRUNCATED;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            r = zr == Z_MEM_ERROR ? EGD_ERR_NOMEM : EGD_ERR_CORRUPT;
            break;
        }
    }
    *consumed = (size_t)(s.next_in - in);
    inflateEnd(&s);
    return r;
}

/* ---- xz and lzma-alone (liblzma) ---- */

static int egd_lzma(int format, const uint8_t *in, size_t in_len, egd_buf *b, size_t *consumed) {
    lzma_stream s = LZMA_STREAM_INIT;
    lzma_ret lr;
    int r = EGD_ERR_CORRUPT;
    /* Decoder memory limit: the kernel's xz uses a 1-32 MiB dictionary; 256 MiB is generous and
     * still bounds what a hostile header can make liblzma allocate. */
    const uint64_t memlimit = 256u << 20;
    lr = format == EGD_XZ ? lzma_stream_decoder(&s, memlimit, 0) : lzma_alone_decoder(&s, memlimit);
    if (lr != LZMA_OK) return EGD_ERR_NOMEM;
    s.next_in = in;
    s.avail_in = in_len;
    for (;;) {
        if (b->len == b->cap && (r = egd_grow(b)) != EGD_OK) break;
        s.next_out = b->p + b->len;
        s.avail_out = b->cap - b->len;
        {
            size_t before = s.avail_out;
            lr = lzma_code(&s, s.avail_in == 0 ? LZMA_FINISH : LZMA_RUN);
            b->len += before - s.avail_out;
        }
        if (lr == LZMA_STREAM_END) {
            r = EGD_OK;
            break;
        }
        if (lr == LZMA_OK) continue;
        if (lr == LZMA_BUF_ERROR) {
            r = s.avail_in == 0 ? EGD_ERR_TRUNCATED : EGD_ERR_CORRUPT;
            break;
        }
        r = (lr == LZMA_MEM_ERROR || lr == LZMA_MEMLIMIT_ERROR) ? EGD_ERR_NOMEM : EGD_ERR_CORRUPT;
        break;
    }
    *consumed = in_len - s.avail_in;
    lzma_end(&s);
    return r;
}

/* ---- zstd ---- */

static int egd_zstd(const uint8_t *in, size_t in_len, egd_buf *b, size_t *consumed) {
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer ib = {in, in_len, 0};
    int r = EGD_ERR_CORRUPT;
    if (d == NULL) return EGD_ERR_NOMEM;
    /* Window up to 2^27 (128 MiB, zstd's default decoder limit): what `zstd -22 --ultra` uses. */
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 27);
    for (;;) {
        size_t zr;
        ZSTD_outBuffer ob;
        if (b->len == b->cap && (r = egd_grow(b)) != EGD_OK) break;
        ob.dst = b->p;
        ob.size = b->cap;
        ob.pos = b->len;
        zr = ZSTD_decompressStream(d, &ob, &ib);
        b->len = ob.pos;
        if (ZSTD_isError(zr)) {
            r = EGD_ERR_CORRUPT;
            break;
        }
        if (zr == 0) { /* a frame is complete */
            r = EGD_OK;
            break;
        }
        if (ib.pos == ib.size && ob.pos < ob.size) {
            r = EGD_ERR_TRUNCATED;
            break;
        }
    }
    *consumed = ib.pos;
    ZSTD_freeDCtx(d);
    return r;
}

/* ---- bzip2 ---- */

static int egd_bzip2(const uint8_t *in, size_t in_len, egd_buf *b, size_t *consumed) {
    bz_stream s;
    int br, r = EGD_ERR_CORRUPT;
    size_t used = 0;
    memset(&s, 0, sizeof s);
    if (BZ2_bzDecompressInit(&s, 0, 0) != BZ_OK) return EGD_ERR_NOMEM;
    for (;;) {
        size_t out_room;
        unsigned int before_out, before_in;
        if (s.avail_in == 0) {
            size_t left = in_len - used;
            s.next_in = (char *)(in + used);
            s.avail_in = left > 0x40000000u ? 0x40000000u : (unsigned int)left;
        }
        if (b->len == b->cap && (r = egd_grow(b)) != EGD_OK) break;
        out_room = b->cap - b->len;
        s.next_out = (char *)(b->p + b->len);
        s.avail_out = out_room > 0x40000000u ? 0x40000000u : (unsigned int)out_room;
        before_out = s.avail_out;
        before_in = s.avail_in;
        br = BZ2_bzDecompress(&s);
        b->len += before_out - s.avail_out;
        used += before_in - s.avail_in;
        if (br == BZ_STREAM_END) {
            r = EGD_OK;
            break;
        }
        if (br != BZ_OK) {
            r = br == BZ_MEM_ERROR ? EGD_ERR_NOMEM : EGD_ERR_CORRUPT;
            break;
        }
        if (used == in_len && s.avail_in == 0 && before_out == s.avail_out) {
            r = EGD_ERR_TRUNCATED;
            break;
        }
    }
    *consumed = used;
    BZ2_bzDecompressEnd(&s);
    return r;
}

/* ---- lz4 legacy ---- */

/* lib/decompress_unlz4.c: "#define LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE (8 << 20)" (EGD_LZ4_CHUNK,
 * CDecompress.h) and "#define ARCHIVE_MAGICNUMBER 0x184C2102". The stream is the magic, then chunks
 * of {le32 compressed_size, compressed bytes}, each inflating to at most 8 MiB. */
#define EGD_LZ4_MAGIC 0x184C2102u

static uint32_t egd_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int egd_lz4(const uint8_t *in, size_t in_len, egd_buf *b, size_t *consumed) {
    size_t pos = 0;
    int r;
    if (in_len < 4 || egd_le32(in) != EGD_LZ4_MAGIC) return EGD_ERR_CORRUPT;
    pos = 4;
    for (;;) {
        uint32_t chunk;
        int n;
        size_t room;
        if (in_len - pos < 4) break; /* end of input */
        chunk = egd_le32(in + pos);
        if (chunk == EGD_LZ4_MAGIC) { /* concatenated stream */
            pos += 4;
            continue;
        }
        if (in_len - pos == 4) break; /* the kernel's appended 4-byte size, not a chunk */
        pos += 4;
        if (chunk == 0 || chunk > (uint32_t)LZ4_compressBound(EGD_LZ4_CHUNK)) {
            *consumed = pos;
            return EGD_ERR_CORRUPT;
        }
        if (chunk > in_len - pos) {
            *consumed = pos;
            return EGD_ERR_TRUNCATED;
        }
        /* Room for one whole chunk (or whatever is left under the cap). */
        while (b->cap - b->len < EGD_LZ4_CHUNK && b->cap < b->max) {
            if ((r = egd_grow(b)) != EGD_OK) return r;
        }
        room = b->cap - b->len;
        if (room > EGD_LZ4_CHUNK) room = EGD_LZ4_CHUNK;
        if (room == 0) return EGD_ERR_LIMIT;
        n = LZ4_decompress_safe((const char *)(in + pos), (char *)(b->p + b->len), (int)chunk, (int)room);
        if (n < 0) {
            *consumed = pos;
            /* With less room than a full chunk, failure may be the cap rather than corruption. */
            return room < EGD_LZ4_CHUNK ? EGD_ERR_LIMIT : EGD_ERR_CORRUPT;
        }
        b->len += (size_t)n;
        pos += chunk;
    }
    *consumed = pos;
    return b->len > 0 ? EGD_OK : EGD_ERR_TRUNCATED;
}

int egd_decompress(int format, const uint8_t *in, size_t in_len, size_t max_out,
                   uint8_t **out, size_t *out_len, size_t *consumed) {
    egd_buf b = {NULL, 0, 0, max_out};
    size_t used = 0;
    int r;
    if (out == NULL || out_len == NULL || (in == NULL && in_len > 0) || max_out == 0) return EGD_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    switch (format) {
    case EGD_GZIP: r = egd_gzip(in, in_len, &b, &used); break;
    case EGD_XZ:
    case EGD_LZMA: r = egd_lzma(format, in, in_len, &b, &used); break;
    case EGD_ZSTD: r = egd_zstd(in, in_len, &b, &used); break;
    case EGD_BZIP2: r = egd_bzip2(in, in_len, &b, &used); break;
    case EGD_LZ4_LEGACY: r = egd_lz4(in, in_len, &b, &used); break;
    default: return EGD_ERR_UNSUPPORTED;
    }
    if (consumed != NULL) *consumed = used;
    if (r != EGD_OK) {
        free(b.p);
        return r;
    }
    *out = b.p;
    *out_len = b.len;
    return EGD_OK;
}

/* ---- compression: Compress.c (every format: tests and tools), CompressGzip.c, CompressZstd.c ---- */

/* ---- scanning ---- */

size_t egd_find_der_certificate_candidate(const uint8_t *p, size_t len, size_t start) {
    size_t i = start;
    if (p == NULL || len < 6) return len;
    while (i <= len - 6) {
        const uint8_t *hit = memchr(p + i, 0x30, len - 5 - i);
        if (hit == NULL) return len;
        i = (size_t)(hit - p);
        if (p[i + 1] == 0x82 && p[i + 4] == 0x30 && p[i + 5] == 0x82) return i;
        i++;
    }
    return len;
}
