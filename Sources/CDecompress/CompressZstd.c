/* SPDX-License-Identifier: Apache-2.0 */
#include "CDecompress.h"

#include <stdlib.h>
#include <string.h>

#include <zstd.h>

/* Its own file (object): the image builder's one encoder (the static /init builds images), kept
 * apart from egd_compress so the static link takes zstd's encoder and not the others. */
int egd_zstd_compress(const uint8_t *in, size_t in_len, int level, int window_log, uint8_t **out, size_t *out_len) {
    ZSTD_CCtx *c;
    uint8_t *p;
    size_t cap, zr;
    if (out == NULL || out_len == NULL || (in == NULL && in_len > 0)) return EGD_ERR_ARGUMENT;
    if (window_log < 10 || window_log > 27 || level < 1 || level > ZSTD_maxCLevel()) return EGD_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    c = ZSTD_createCCtx();
    if (c == NULL) return EGD_ERR_NOMEM;
    if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1))) {
        ZSTD_freeCCtx(c);
        return EGD_ERR_ARGUMENT;
    }
    cap = ZSTD_compressBound(in_len);
    p = malloc(cap);
    if (p == NULL) {
        ZSTD_freeCCtx(c);
        return EGD_ERR_NOMEM;
    }
    zr = ZSTD_compress2(c, p, cap, in, in_len);
    ZSTD_freeCCtx(c);
    if (ZSTD_isError(zr)) {
        free(p);
        return EGD_ERR_CORRUPT;
    }
    *out = p;
    *out_len = zr;
    return EGD_OK;
}
