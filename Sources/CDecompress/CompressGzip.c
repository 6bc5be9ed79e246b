/* SPDX-License-Identifier: Apache-2.0 */
#include "CDecompress.h"

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

/* Its own file (object) so that a link that needs gzip but not egd_compress (the static /init: the
 * capture tool's initramfs for distribution kernels) takes only zlib's deflate, not every encoder:
 * a C object's .text is kept or dropped whole by --gc-sections (ServiceVM/README.md, "What `/init`
 * is made of"). */
int egd_gzip_compress(const uint8_t *in, size_t in_len, int level, uint8_t **out, size_t *out_len) {
    z_stream s;
    uint8_t *p;
    size_t cap, len;
    int zr;
    if (out == NULL || out_len == NULL || (in == NULL && in_len > 0)) return EGD_ERR_ARGUMENT;
    *out = NULL;
    *out_len = 0;
    memset(&s, 0, sizeof s);
    if (in_len > 0x40000000u) return EGD_ERR_ARGUMENT;
    if (deflateInit2(&s, level > 0 ? level : 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return EGD_ERR_NOMEM;
    cap = deflateBound(&s, (uLong)in_len) + 64;
    p = malloc(cap);
    if (p == NULL) {
        deflateEnd(&s);
        return EGD_ERR_NOMEM;
    }
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)in_len;
    s.next_out = p;
    s.avail_out = (uInt)cap;
    zr = deflate(&s, Z_FINISH);
    len = cap - s.avail_out;
    deflateEnd(&s);
    if (zr != Z_STREAM_END) {
        free(p);
        return EGD_ERR_CORRUPT;
    }
    *out = p;
    *out_len = len;
    return EGD_OK;
}
