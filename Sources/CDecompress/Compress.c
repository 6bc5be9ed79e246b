/* SPDX-License-Identifier: Apache-2.0 */
#include "CDecompress.h"

#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <lz4.h>
#include <lzma.h>
#include <zstd.h>

/* Every format's encoder, for the tests and tools (ExecGateKernelImage.Compression.compress). In
 * its own file: the static /init calls only egd_gzip_compress and egd_zstd_compress (their own
 * files), so --gc-sections drops this object's .text and, with it, liblzma's encoder. */

int egd_compress(int format, const uint8_t *in, size_t in_len, int level, uint8_t **out, size_t *out_len) {
    uint8_t *p = NULL;
    size_t cap, len = 0;
    if (out == NULL || out_len == NULL || (in == NULL && in_len > 0)) return EGD_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    switch (format) {
    case EGD_GZIP: return egd_gzip_compress(in, in_len, level, out, out_len);
    case EGD_XZ:
    case EGD_LZMA: {
        lzma_stream s = LZMA_STREAM_INIT;
        lzma_options_lzma opt;
        lzma_ret lr;
        if (lzma_lzma_preset(&opt, (uint32_t)(level > 0 ? level : 0))) return EGD_ERR_ARGUMENT;
        lr = format == EGD_XZ ? lzma_easy_encoder(&s, (uint32_t)(level > 0 ? level : 0), LZMA_CHECK_CRC32)
                              : lzma_alone_encoder(&s, &opt);
        if (lr != LZMA_OK) return EGD_ERR_NOMEM;
        cap = in_len + in_len / 2 + 65536;
        p = malloc(cap);
        if (p == NULL) {
            lzma_end(&s);
            return EGD_ERR_NOMEM;
        }
        s.next_in = in;
        s.avail_in = in_len;
        s.next_out = p;
        s.avail_out = cap;
        lr = lzma_code(&s, LZMA_FINISH);
        len = cap - s.avail_out;
        lzma_end(&s);
        if (lr != LZMA_STREAM_END) {
            free(p);
            return EGD_ERR_CORRUPT;
        }
        break;
    }
    case EGD_ZSTD: {
        size_t zr;
        cap = ZSTD_compressBound(in_len);
        p = malloc(cap);
        if (p == NULL) return EGD_ERR_NOMEM;
        zr = ZSTD_compress(p, cap, in, in_len, level > 0 ? level : 1);
        if (ZSTD_isError(zr)) {
            free(p);
            return EGD_ERR_CORRUPT;
        }
        len = zr;
        break;
    }
    case EGD_BZIP2: {
        unsigned int dl;
        int br;
        if (in_len > 0x40000000u) return EGD_ERR_ARGUMENT;
        cap = in_len + in_len / 100 + 601;
        p = malloc(cap);
        if (p == NULL) return EGD_ERR_NOMEM;
        dl = (unsigned int)cap;
        br = BZ2_bzBuffToBuffCompress((char *)p, &dl, (char *)in, (unsigned int)in_len, level > 0 && level <= 9 ? level : 1, 0, 0);
        if (br != BZ_OK) {
            free(p);
            return EGD_ERR_CORRUPT;
        }
        len = dl;
        break;
    }
    case EGD_LZ4_LEGACY: {
        size_t pos = 0;
        size_t chunks = in_len / EGD_LZ4_CHUNK + 1;
        cap = 4 + chunks * (4 + (size_t)LZ4_compressBound(EGD_LZ4_CHUNK));
        p = malloc(cap);
        if (p == NULL) return EGD_ERR_NOMEM;
        p[0] = 0x02; p[1] = 0x21; p[2] = 0x4c; p[3] = 0x18;
        len = 4;
        while (pos < in_len) {
            size_t n = in_len - pos > EGD_LZ4_CHUNK ? EGD_LZ4_CHUNK : in_len - pos;
            int c = LZ4_compress_default((const char *)(in + pos), (char *)(p + len + 4), (int)n,
                                         LZ4_compressBound(EGD_LZ4_CHUNK));
            if (c <= 0) {
                free(p);
                return EGD_ERR_CORRUPT;
            }
            p[len] = (uint8_t)c; p[len + 1] = (uint8_t)(c >> 8); p[len + 2] = (uint8_t)(c >> 16); p[len + 3] = (uint8_t)(c >> 24);
            len += 4 + (size_t)c;
            pos += n;
        }
        break;
    }
    default: return EGD_ERR_UNSUPPORTED;
    }
    *out = p;
    *out_len = len;
    return EGD_OK;
}

