/* SPDX-License-Identifier: Apache-2.0 */
/*
 * OpenSSL 3.0 wrappers for ExecGateSignature. See include/COpenSSLShim.h for the conventions.
 *
 * Security notes:
 *  - All DER parsing goes through OpenSSL's d2i_* with an explicit length; we additionally
 *    report how many bytes were consumed so callers can reject trailing data.
 *  - Memory BIOs are created with BIO_new_mem_buf on the caller's borrowed buffer: read-only,
 *    no copy of the (possibly multi-megabyte) module.
 */
#include "COpenSSLShim.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* ---- errors ---- */

static __thread char egs_err_text[256];

/* Remembers the most recent OpenSSL error for egs_last_error, then clears the queue. */
static void egs_capture_error(void) {
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        ERR_error_string_n(e, egs_err_text, sizeof egs_err_text);
    }
    ERR_clear_error();
}

int egs_last_error(char *out, size_t cap) {
    size_t n = strlen(egs_err_text);
    if (out != NULL && cap > n) memcpy(out, egs_err_text, n + 1);
    return (int)n;
}

void egs_free(void *p) { OPENSSL_free(p); }

/* Copies n bytes to out if it fits; returns n (as int, or -1 if n is absurdly large). */
static int egs_copy_out(const void *src, size_t n, void *out, size_t cap) {
    if (n > INT_MAX) return -1;
    if (out != NULL && cap >= n && n > 0) memcpy(out, src, n);
    return (int)n;
}

/* Copies a string with its NUL; returns strlen. */
static int egs_copy_str(const char *s, size_t n, char *out, size_t cap) {
    if (n >= INT_MAX) return -1;
    if (out != NULL && cap > n) {
        memcpy(out, s, n);
        out[n] = 0;
    }
    return (int)n;
}

/* ---- digests ---- */

/* Digest implementations are fetched once: in OpenSSL 3 the legacy EVP_sha256() accessors
 * trigger an implicit provider fetch on every EVP_DigestInit, which costs microseconds per call. */
static EVP_MD *egs_mds[6];
static pthread_once_t egs_mds_once = PTHREAD_ONCE_INIT;

static void egs_fetch_mds(void) {
    egs_mds[EGS_MD_SHA1] = EVP_MD_fetch(NULL, "SHA1", NULL);
    egs_mds[EGS_MD_SHA224] = EVP_MD_fetch(NULL, "SHA224", NULL);
    egs_mds[EGS_MD_SHA256] = EVP_MD_fetch(NULL, "SHA256", NULL);
    egs_mds[EGS_MD_SHA384] = EVP_MD_fetch(NULL, "SHA384", NULL);
    egs_mds[EGS_MD_SHA512] = EVP_MD_fetch(NULL, "SHA512", NULL);
    ERR_clear_error();
}

static const EVP_MD *egs_md(int md) {
    if (md < EGS_MD_SHA1 || md > EGS_MD_SHA512) return NULL;
    pthread_once(&egs_mds_once, egs_fetch_mds);
    return egs_mds[md];
}

static int egs_md_from_nid(int nid) {
    switch (nid) {
    case NID_sha1: return EGS_MD_SHA1;
    case NID_sha224: return EGS_MD_SHA224;
    case NID_sha256: return EGS_MD_SHA256;
    case NID_sha384: return EGS_MD_SHA384;
    case NID_sha512: return EGS_MD_SHA512;
    default: return EGS_MD_UNKNOWN;
    }
}

size_t egs_md_size(int md) {
    switch (md) {
    case EGS_MD_SHA1: return 20;
    case EGS_MD_SHA224: return 28;
    case EGS_MD_SHA256: return 32;
    case EGS_MD_SHA384: return 48;
    case EGS_MD_SHA512: return 64;
    default: return 0;
    }
}

int egs_digest(int md, const void *data, size_t len, uint8_t *out, size_t cap) {
    const EVP_MD *m = egs_md(md);
    unsigned int n = 0;
    if (m == NULL || out == NULL || cap < egs_md_size(md)) return -1;
    if (!EVP_Digest(data, len, out, &n, m, NULL)) {
        egs_capture_error();
        return -1;
    }
    return (int)n;
}

int egs_digest_with_prefix(int md, const void *data, size_t prefix_len, size_t len,
                           uint8_t *out_prefix, uint8_t *out_whole, size_t cap) {
    /* One pass over data[0, prefix_len): its digest and, continuing from a copy of the same state
     * (EVP_MD_CTX_copy_ex), the digest of all len bytes. The prefix is hashed once. */
    const EVP_MD *m = egs_md(md);
    EVP_MD_CTX *ctx = NULL, *fork = NULL;
    unsigned int n = 0, n2 = 0;
    int r = -1;
    if (m == NULL || out_prefix == NULL || out_whole == NULL || cap < egs_md_size(md) || prefix_len > len) return -1;
    ctx = EVP_MD_CTX_new();
    fork = EVP_MD_CTX_new();
    if (ctx == NULL || fork == NULL) goto out;
    if (!EVP_DigestInit_ex(ctx, m, NULL) || !EVP_DigestUpdate(ctx, data, prefix_len)) goto out;
    if (!EVP_MD_CTX_copy_ex(fork, ctx) || !EVP_DigestFinal_ex(fork, out_prefix, &n)) goto out;
    if (!EVP_DigestUpdate(ctx, (const uint8_t *)data + prefix_len, len - prefix_len) || !EVP_DigestFinal_ex(ctx, out_whole, &n2)) goto out;
    if (n == n2) r = (int)n;
out:
    EVP_MD_CTX_free(ctx);
    EVP_MD_CTX_free(fork);
    if (r < 0) egs_capture_error();
    return r;
}

int egs_digest_segments(int md, const void *const *parts, const size_t *lens, size_t count, uint8_t *out, size_t cap) {
    const EVP_MD *m = egs_md(md);
    EVP_MD_CTX *ctx = NULL;
    unsigned int n = 0;
    size_t i;
    int r = -1;
    if (m == NULL || out == NULL || cap < egs_md_size(md)) return -1;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, m, NULL)) goto out;
    for (i = 0; i < count; i++)
        if (lens[i] > 0 && !EVP_DigestUpdate(ctx, parts[i], lens[i])) goto out;
    if (EVP_DigestFinal_ex(ctx, out, &n)) r = (int)n;
out:
    EVP_MD_CTX_free(ctx);
    if (r < 0) egs_capture_error();
    return r;
}

/* A digest fed in pieces (nothing kept but the hash state): begin, update, end; end frees the
 * state whatever happened. NULL from begin only when libcrypto is broken. */
struct evp_md_ctx_st *egs_digest_begin(int md) {
    const EVP_MD *m = egs_md(md);
    EVP_MD_CTX *ctx;
    if (m == NULL) return NULL;
    ctx = EVP_MD_CTX_new();
    if (ctx != NULL && !EVP_DigestInit_ex(ctx, m, NULL)) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    if (ctx == NULL) egs_capture_error();
    return ctx;
}

int egs_digest_update(struct evp_md_ctx_st *ctx, const void *data, size_t len) {
    if (ctx == NULL) return 0;
    if (len == 0) return 1;
    return EVP_DigestUpdate(ctx, data, len) ? 1 : 0;
}

int egs_digest_end(struct evp_md_ctx_st *ctx, uint8_t *out, size_t cap) {
    unsigned int n = 0;
    int r = -1;
    if (ctx == NULL) return -1;
    if (out != NULL && cap >= EVP_MAX_MD_SIZE && EVP_DigestFinal_ex(ctx, out, &n)) r = (int)n;
    EVP_MD_CTX_free(ctx);
    if (r < 0) egs_capture_error();
    return r;
}

/* ---- certificates ---- */

X509 *egs_x509_from_der(const uint8_t *der, size_t len, size_t *consumed) {
    const unsigned char *p = der;
    X509 *x;
    if (len > LONG_MAX) return NULL;
    x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL) {
        egs_capture_error();
        return NULL;
    }
    if (consumed != NULL) *consumed = (size_t)(p - der);
    return x;
}

X509 *egs_x509_from_pem_next(const uint8_t *pem, size_t len, size_t *offset, int *status) {
    BIO *b;
    X509 *x;
    size_t off = *offset;
    *status = 0;
    if (off >= len || len - off > INT_MAX) return NULL;
    b = BIO_new_mem_buf(pem + off, (int)(len - off));
    if (b == NULL) {
        *status = -1;
        return NULL;
    }
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (x == NULL) {
        unsigned long e = ERR_peek_last_error();
        /* "no start line" at the end of the input is the normal end of a PEM bundle. */
        if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
            ERR_clear_error();
            *status = 0;
        } else {
            egs_capture_error();
            *status = -1;
        }
    } else {
        /* BIO_get_mem_data returns what is left unread. */
        char *rest = NULL;
        long left = BIO_get_mem_data(b, &rest);
        *offset = len - (size_t)(left < 0 ? 0 : left);
    }
    BIO_free(b);
    return x;
}

void egs_x509_free(X509 *x) { X509_free(x); }

/* An i2d_* result (n bytes at buf, OpenSSL-allocated; n < 0: failed) copied out, buf freed. */
static int egs_i2d_out(int n, unsigned char *buf, uint8_t *out, size_t cap) {
    int r;
    if (n < 0) {
        egs_capture_error();
        return -1;
    }
    r = egs_copy_out(buf, (size_t)n, out, cap);
    OPENSSL_free(buf);
    return r;
}

int egs_x509_der(X509 *x, uint8_t *out, size_t cap) {
    unsigned char *buf = NULL;
    int n = i2d_X509(x, &buf);
    return egs_i2d_out(n, buf, out, cap);
}

int egs_x509_pubkey_der(X509 *x, uint8_t *out, size_t cap) {
    unsigned char *buf = NULL;
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &buf);
    return egs_i2d_out(n, buf, out, cap);
}

static int egs_name_string(const X509_NAME *name, char *out, size_t cap) {
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n;
    int r;
    if (b == NULL) return -1;
    /* RFC 2253 order reversed to the usual "C=.., O=.., CN=.." reading order, UTF-8 kept. */
    if (X509_NAME_print_ex(b, name, 0, (XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB & ~XN_FLAG_DN_REV) | XN_FLAG_SEP_COMMA_PLUS) < 0) {
        BIO_free(b);
        egs_capture_error();
        return -1;
    }
    n = BIO_get_mem_data(b, &data);
    r = n < 0 ? -1 : egs_copy_str(data, (size_t)n, out, cap);
    BIO_free(b);
    return r;
}

int egs_x509_name(X509 *x, int which, char *out, size_t cap) {
    return egs_name_string(which == 0 ? X509_get_subject_name(x) : X509_get_issuer_name(x), out, cap);
}

static int egs_integer_bytes(const ASN1_INTEGER *i, uint8_t *out, size_t cap, int *negative) {
    if (i == NULL) return -1;
    if (negative != NULL) *negative = (i->type == V_ASN1_NEG_INTEGER);
    /* ASN1_INTEGER keeps the magnitude as big-endian bytes. */
    return egs_copy_out(i->data, (size_t)i->length, out, cap);
}

int egs_x509_serial(X509 *x, uint8_t *out, size_t cap, int *negative) {
    return egs_integer_bytes(X509_get0_serialNumber(x), out, cap, negative);
}

int egs_x509_skid(X509 *x, uint8_t *out, size_t cap) {
    const ASN1_OCTET_STRING *s = X509_get0_subject_key_id(x);
    ERR_clear_error();
    if (s == NULL) return -1;
    return egs_copy_out(s->data, (size_t)s->length, out, cap);
}

/* The kernel's x509_check_for_self_signed() (crypto/asymmetric_keys/x509_public_key.c, 6.1;
 * x509_cert_parser.c, 6.12): a certificate whose raw issuer differs from its raw subject is not
 * self-signed (kept, unverified). Otherwise, when an authority key id is present: auth_ids[0] is
 * its issuer+serial, auth_ids[1] its key id; a = the key id equals the certificate's subject key
 * id, b = the issuer+serial equal the certificate's; neither: not self-signed (kept); exactly one
 * while both parts are present: rejected (-EKEYREJECTED). Then the signature must verify with the
 * certificate's own key, else rejected. 1: kept; 0: rejected. Fail closed: any outcome of
 * X509_verify() but 1 rejects (the kernel lets only -ENOPKG through, an algorithm it lacks; a
 * malformed signature or a key/algorithm mismatch it rejects, and OpenSSL reports those as -1). */
static int egs_bytes_equal(const unsigned char *a, int la, const unsigned char *b, int lb) {
    return la >= 0 && la == lb && (la == 0 || memcmp(a, b, (size_t)la) == 0);
}

int egs_x509_self_signature_ok(X509 *x) {
    unsigned char *subject = NULL, *issuer = NULL;
    int ls = i2d_X509_NAME(X509_get_subject_name(x), &subject);
    int li = i2d_X509_NAME(X509_get_issuer_name(x), &issuer);
    int same = ls > 0 && egs_bytes_equal(subject, ls, issuer, li);
    OPENSSL_free(subject);
    int result = 1;
    if (same) {
        AUTHORITY_KEYID *akid = X509_get_ext_d2i(x, NID_authority_key_identifier, NULL, NULL);
        int has_keyid = akid != NULL && akid->keyid != NULL;
        int has_issuer = akid != NULL && akid->issuer != NULL && akid->serial != NULL;
        int a = 0, b = 0;
        if (has_keyid) {
            const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(x);
            a = skid != NULL && egs_bytes_equal(akid->keyid->data, akid->keyid->length, skid->data, skid->length);
        }
        if (has_issuer && sk_GENERAL_NAME_num(akid->issuer) == 1) {
            GENERAL_NAME *g = sk_GENERAL_NAME_value(akid->issuer, 0);
            if (g->type == GEN_DIRNAME && ASN1_INTEGER_cmp(akid->serial, X509_get0_serialNumber(x)) == 0) {
                unsigned char *named = NULL;
                int ln = i2d_X509_NAME(g->d.directoryName, &named);
                b = egs_bytes_equal(named, ln, issuer, li);
                OPENSSL_free(named);
            }
        }
        AUTHORITY_KEYID_free(akid);
        if ((has_keyid || has_issuer) && !a && !b) {
            result = 1;  /* names another key: not self-signed */
        } else if (has_keyid && has_issuer && (a != b)) {
            result = 0;  /* one part names it, the other does not */
        } else {
            EVP_PKEY *k = X509_get0_pubkey(x);
            result = k != NULL && X509_verify(x, k) == 1 ? 1 : 0;
        }
    }
    OPENSSL_free(issuer);
    ERR_clear_error();
    return result;
}

int egs_x509_pubkey_info(X509 *x, int *alg, int *bits) {
    EVP_PKEY *k = X509_get0_pubkey(x);
    if (k == NULL) {
        egs_capture_error();
        return -1;
    }
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA: *alg = EGS_PK_RSA; break;
    case EVP_PKEY_EC: *alg = EGS_PK_EC; break;
    case EVP_PKEY_ED25519: *alg = EGS_PK_ED25519; break;
    default: *alg = EGS_PK_OTHER; break;
    }
    *bits = EVP_PKEY_get_bits(k);
    return 0;
}

int egs_x509_ec_curve(X509 *x, char *out, size_t cap) {
    EVP_PKEY *k = X509_get0_pubkey(x);
    char name[80];
    size_t len = 0;
    if (k == NULL || EVP_PKEY_get_base_id(k) != EVP_PKEY_EC
        || !EVP_PKEY_get_group_name(k, name, sizeof name, &len) || len == 0) {
        ERR_clear_error();
        return -1;
    }
    return egs_copy_str(name, len, out, cap);
}

int egs_x509_pem(X509 *x, uint8_t *out, size_t cap) {
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n;
    int r;
    if (b == NULL) return -1;
    if (!PEM_write_bio_X509(b, x)) {
        BIO_free(b);
        egs_capture_error();
        return -1;
    }
    n = BIO_get_mem_data(b, &data);
    r = n < 0 ? -1 : egs_copy_out(data, (size_t)n, out, cap);
    BIO_free(b);
    return r;
}

/* ---- private keys ---- */

EVP_PKEY *egs_pkey_from_pem(const uint8_t *pem, size_t len) {
    BIO *b;
    EVP_PKEY *k;
    if (len > INT_MAX) return NULL;
    b = BIO_new_mem_buf(pem, (int)len);
    if (b == NULL) return NULL;
    /* No passphrase callback: encrypted keys fail instead of prompting on a terminal. */
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"");
    BIO_free(b);
    if (k == NULL) egs_capture_error();
    return k;
}

void egs_pkey_free(EVP_PKEY *k) { EVP_PKEY_free(k); }

int egs_pkey_matches_cert(EVP_PKEY *k, X509 *x) {
    int r = X509_check_private_key(x, k);
    ERR_clear_error();
    return r == 1;
}

/* ---- CMS ---- */

CMS_ContentInfo *egs_cms_from_der(const uint8_t *der, size_t len, size_t *consumed) {
    const unsigned char *p = der;
    CMS_ContentInfo *cms;
    if (len > LONG_MAX) return NULL;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (cms == NULL) {
        egs_capture_error();
        return NULL;
    }
    if (consumed != NULL) *consumed = (size_t)(p - der);
    return cms;
}

void egs_cms_free(CMS_ContentInfo *cms) { CMS_ContentInfo_free(cms); }

int egs_cms_is_signed_data(CMS_ContentInfo *cms) {
    return OBJ_obj2nid(CMS_get0_type(cms)) == NID_pkcs7_signed;
}

int egs_cms_econtent_is_data(CMS_ContentInfo *cms) {
    const ASN1_OBJECT *o = CMS_get0_eContentType(cms);
    ERR_clear_error();
    return o != NULL && OBJ_obj2nid(o) == NID_pkcs7_data;
}

int egs_cms_is_detached(CMS_ContentInfo *cms) {
    int r = CMS_is_detached(cms);
    ERR_clear_error();
    return r;
}

int egs_cms_cert_count(CMS_ContentInfo *cms) {
    STACK_OF(X509) *certs = CMS_get1_certs(cms);
    int n = certs == NULL ? 0 : sk_X509_num(certs);
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
    return n;
}

int egs_cms_crl_count(CMS_ContentInfo *cms) {
    STACK_OF(X509_CRL) *crls = CMS_get1_crls(cms);
    int n = crls == NULL ? 0 : sk_X509_CRL_num(crls);
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    ERR_clear_error();
    return n;
}

int egs_cms_signer_count(CMS_ContentInfo *cms) {
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    ERR_clear_error();
    return sis == NULL ? 0 : sk_CMS_SignerInfo_num(sis);
}

CMS_SignerInfo *egs_cms_signer(CMS_ContentInfo *cms, int index) {
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    ERR_clear_error();
    if (sis == NULL || index < 0 || index >= sk_CMS_SignerInfo_num(sis)) return NULL;
    return sk_CMS_SignerInfo_value(sis, index);
}

int egs_si_signed_attr_count(CMS_SignerInfo *si) { return CMS_signed_get_attr_count(si); }
int egs_si_unsigned_attr_count(CMS_SignerInfo *si) { return CMS_unsigned_get_attr_count(si); }

int egs_si_digest(CMS_SignerInfo *si, int *raw_nid) {
    X509_ALGOR *dig = NULL;
    int nid;
    CMS_SignerInfo_get0_algs(si, NULL, NULL, &dig, NULL);
    if (dig == NULL) return EGS_MD_UNKNOWN;
    nid = OBJ_obj2nid(dig->algorithm);
    if (raw_nid != NULL) *raw_nid = nid;
    return egs_md_from_nid(nid);
}

int egs_nid_name(int nid, char *out, size_t cap) {
    const char *s = OBJ_nid2sn(nid);
    if (s == NULL) s = "unknown";
    return egs_copy_str(s, strlen(s), out, cap);
}

int egs_si_signer_id_kind(CMS_SignerInfo *si) {
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *sno = NULL;
    if (!CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno)) {
        egs_capture_error();
        return -1;
    }
    return keyid != NULL ? 1 : 0;
}

int egs_si_signer_skid(CMS_SignerInfo *si, uint8_t *out, size_t cap) {
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *sno = NULL;
    if (!CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno) || keyid == NULL) {
        ERR_clear_error();
        return -1;
    }
    return egs_copy_out(keyid->data, (size_t)keyid->length, out, cap);
}

int egs_si_signer_issuer(CMS_SignerInfo *si, char *out, size_t cap) {
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *sno = NULL;
    if (!CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno) || issuer == NULL) {
        ERR_clear_error();
        return -1;
    }
    return egs_name_string(issuer, out, cap);
}

int egs_si_signer_serial(CMS_SignerInfo *si, uint8_t *out, size_t cap, int *negative) {
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *sno = NULL;
    if (!CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno) || sno == NULL) {
        ERR_clear_error();
        return -1;
    }
    return egs_integer_bytes(sno, out, cap, negative);
}

/* The DER encodings of two names are the same bytes. A name parsed by d2i keeps its original
 * encoding, and i2d returns that encoding unchanged. */
static int egs_name_der_equal(const X509_NAME *a, const X509_NAME *b) {
    unsigned char *da = NULL, *db = NULL;
    int na = i2d_X509_NAME(a, &da), nb = i2d_X509_NAME(b, &db);
    int eq = na > 0 && na == nb && memcmp(da, db, (size_t)na) == 0;
    OPENSSL_free(da);
    OPENSSL_free(db);
    return eq;
}

int egs_si_matches_cert(CMS_SignerInfo *si, X509 *x) {
    /* CMS_SignerInfo_cert_cmp: 0 when issuer+serial (or the SKID) designate this certificate.
     * For issuer+serial it compares the names with X509_NAME_cmp, i.e. their *canonical* forms
     * (case folded, whitespace collapsed, string types unified), so an issuer the kernel would not
     * recognise matches. The kernel identifies the signer by raw bytes: pkcs7_note_signed_info()
     * makes the key id asymmetric_key_generate_id(raw_serial, raw_issuer), x509_cert_parse() makes
     * the certificate's the same way, and find_asymmetric_key() compares them with memcmp
     * (asymmetric_key_id_same()). So the issuer must also be the certificate's issuer byte for byte.
     * The serial needs no extra check: OpenSSL refuses non-minimal INTEGERs when parsing, so equal
     * values (ASN1_INTEGER_cmp) are equal bytes. A SKID is compared as bytes already. */
    ASN1_OCTET_STRING *keyid = NULL;
    X509_NAME *issuer = NULL;
    ASN1_INTEGER *sno = NULL;
    int r = CMS_SignerInfo_cert_cmp(si, x);
    if (r == 0 && CMS_SignerInfo_get0_signer_id(si, &keyid, &issuer, &sno) && keyid == NULL &&
        (issuer == NULL || !egs_name_der_equal(issuer, X509_get_issuer_name(x))))
        r = -1;
    ERR_clear_error();
    return r == 0;
}

int egs_si_signature(CMS_SignerInfo *si, const uint8_t **sig, size_t *len) {
    ASN1_OCTET_STRING *s = CMS_SignerInfo_get0_signature(si);
    if (s == NULL || s->length < 0) return -1;
    *sig = s->data;
    *len = (size_t)s->length;
    return 0;
}

/* Is the SignerInfo's signatureAlgorithm one the kernel's PKCS#7 parser accepts, one that a key of
 * this type can have made, and is a digest it names (ecdsa-with-SHA256) the SignerInfo's
 * digestAlgorithm (stricter than the kernel, which takes the digest from digestAlgorithm alone)? */
static int egs_sig_alg_fits(CMS_SignerInfo *si, EVP_PKEY *k, int md) {
    X509_ALGOR *sig = NULL;
    int sig_nid, dig_nid = NID_undef, pk_nid = NID_undef;
    int key_type = EVP_PKEY_get_base_id(k);
    CMS_SignerInfo_get0_algs(si, NULL, NULL, NULL, &sig);
    if (sig == NULL) return 0;
    sig_nid = OBJ_obj2nid(sig->algorithm);
    /* pkcs7_sig_note_pkey_algo() (6.1, and 6.12 alike) knows exactly these for RSA and ECDSA:
     * OID_rsaEncryption (sign-file's form: the bare key algorithm, digest from digestAlgorithm) and
     * OID_id_ecdsa_with_sha1..sha512; every other OID, sha256WithRSAEncryption and RSASSA-PSS
     * included, fails the parse with -ENOPKG. OpenSSL would verify those; we refuse them. */
    if (sig_nid == NID_rsaEncryption) return key_type == EVP_PKEY_RSA;
    if (!OBJ_find_sigid_algs(sig_nid, &dig_nid, &pk_nid)) return 0;
    if (pk_nid != NID_X9_62_id_ecPublicKey) return 0;
    if (dig_nid == NID_undef || egs_md_from_nid(dig_nid) != md) return 0;
    return key_type == EVP_PKEY_EC;
}

int egs_verify_signature(CMS_SignerInfo *si, X509 *x, int md, const uint8_t *digest, size_t digest_len) {
    EVP_PKEY *k = X509_get0_pubkey(x);
    EVP_PKEY_CTX *ctx = NULL;
    const EVP_MD *m = egs_md(md);
    const uint8_t *sig = NULL;
    size_t sig_len = 0;
    int r = EGS_VERIFY_ERROR;
    if (k == NULL || m == NULL || egs_si_signature(si, &sig, &sig_len) != 0) goto out;
    if (!egs_sig_alg_fits(si, k, md)) {
        r = EGS_VERIFY_ALG_MISMATCH;
        goto out;
    }
    ctx = EVP_PKEY_CTX_new(k, NULL);
    if (ctx == NULL || EVP_PKEY_verify_init(ctx) <= 0) goto out;
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0) goto out;
    if (EVP_PKEY_CTX_set_signature_md(ctx, m) <= 0) goto out;
    /* PKCS#1 v1.5: the signature encodes DigestInfo{digestAlgorithm, digest}; OpenSSL checks both. */
    if (EVP_PKEY_verify(ctx, sig, sig_len, digest, digest_len) == 1) {
        r = EGS_VERIFY_OK;
        goto out;
    }
    r = EGS_VERIFY_BAD_SIGNATURE;
    ERR_clear_error();
    /* Only to name the failure precisely (never to accept): for RSA, recover the signed digest.
     * If the signature opens under the key to a well-formed DigestInfo, the signature bytes are
     * genuine and the *content* changed (digest mismatch); otherwise the signature itself is bad. */
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        unsigned char rec[EVP_MAX_MD_SIZE];
        size_t rec_len = sizeof rec;
        EVP_PKEY_CTX_free(ctx);
        ctx = EVP_PKEY_CTX_new(k, NULL);
        if (ctx != NULL && EVP_PKEY_verify_recover_init(ctx) > 0 &&
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
            EVP_PKEY_CTX_set_signature_md(ctx, m) > 0 &&
            EVP_PKEY_verify_recover(ctx, rec, &rec_len, sig, sig_len) == 1 &&
            rec_len == digest_len && memcmp(rec, digest, digest_len) != 0) {
            r = EGS_VERIFY_DIGEST_MISMATCH;
        }
    }
out:
    EVP_PKEY_CTX_free(ctx);
    egs_capture_error();
    return r;
}

/* ---- baseline ---- */

int egs_baseline_cms_verify(const uint8_t *sig, size_t sig_len, const uint8_t *content, size_t content_len,
                            X509 *cert) {
    /* The plain OpenSSL sequence of `openssl cms -verify -binary -inform DER -in SIG
     * -content CONTENT -certfile CERT -noverify -out /dev/null`. */
    BIO *in = NULL, *data = NULL;
    CMS_ContentInfo *cms = NULL;
    STACK_OF(X509) *certs = NULL;
    int ok = 0;
    if (sig_len > INT_MAX || content_len > INT_MAX) return -1;
    in = BIO_new_mem_buf(sig, (int)sig_len);
    data = BIO_new_mem_buf(content, (int)content_len);
    certs = sk_X509_new_null();
    if (in == NULL || data == NULL || certs == NULL || !sk_X509_push(certs, cert)) goto out;
    cms = d2i_CMS_bio(in, NULL);
    if (cms == NULL) goto out;
    ok = CMS_verify(cms, certs, NULL, data, NULL, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) == 1;
out:
    CMS_ContentInfo_free(cms);
    sk_X509_free(certs); /* the certificate itself is borrowed */
    BIO_free(in);
    BIO_free(data);
    ERR_clear_error();
    return ok;
}

/* ---- signing ---- */

int egs_sign_detached(const uint8_t *content, size_t len, EVP_PKEY *key, X509 *cert, int md, int flags,
                      uint8_t **out, size_t *out_len) {
    /* scripts/sign-file.c (6.1):
     *   cms = CMS_sign(NULL, NULL, NULL, NULL,
     *                  CMS_NOCERTS | CMS_PARTIAL | CMS_BINARY | CMS_DETACHED | CMS_STREAM);
     *   CMS_add1_signer(cms, x509, private_key, digest_algo,
     *                   CMS_NOCERTS | CMS_BINARY | CMS_NOSMIMECAP | use_keyid | use_signed_attrs);
     *   CMS_final(cms, bm, NULL, CMS_NOCERTS | CMS_BINARY);
     * with use_signed_attrs = CMS_NOATTR unless -a was given. */
    const EVP_MD *m = egs_md(md);
    BIO *data = NULL;
    CMS_ContentInfo *cms = NULL;
    unsigned char *der = NULL;
    int n, r = -1;
    int nocerts = (flags & EGS_SIGN_CERTS) ? 0 : CMS_NOCERTS;
    int signer_flags = nocerts | CMS_BINARY | CMS_NOSMIMECAP;
    if (m == NULL || len > INT_MAX) return -1;
    if (flags & EGS_SIGN_KEYID) signer_flags |= CMS_USE_KEYID;
    if (!(flags & EGS_SIGN_ATTRS)) signer_flags |= CMS_NOATTR;
    data = BIO_new_mem_buf(content, (int)len);
    if (data == NULL) goto out;
    cms = CMS_sign(NULL, NULL, NULL, NULL,
                   nocerts | CMS_PARTIAL | CMS_BINARY | ((flags & EGS_SIGN_EMBED) ? 0 : CMS_DETACHED) | CMS_STREAM);
    if (cms == NULL) goto out;
    if (CMS_add1_signer(cms, cert, key, m, signer_flags) == NULL) goto out;
    if ((flags & EGS_SIGN_TWICE) && CMS_add1_signer(cms, cert, key, egs_md(EGS_MD_SHA512), signer_flags) == NULL) goto out;
    if (CMS_final(cms, data, NULL, nocerts | CMS_BINARY) != 1) goto out;
    n = i2d_CMS_ContentInfo(cms, &der);
    if (n <= 0) goto out;
    *out = der;
    *out_len = (size_t)n;
    r = 0;
out:
    CMS_ContentInfo_free(cms);
    BIO_free(data);
    egs_capture_error();
    return r;
}

/* ---- key generation ---- */

static int egs_add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL) return 0;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static int egs_bio_to_malloc(BIO *b, char **out, size_t *out_len) {
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    if (n <= 0) return 0;
    *out = OPENSSL_malloc((size_t)n);
    if (*out == NULL) return 0;
    memcpy(*out, data, (size_t)n);
    *out_len = (size_t)n;
    return 1;
}

static int egs_selfsigned(EVP_PKEY *k, const char *common_name, int days,
                          char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len);

int egs_generate_rsa_selfsigned(int bits, const char *common_name, int days,
                                char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len) {
    *key_pem = NULL;
    *cert_pem = NULL;
    if (bits < 1024 || bits > 16384) return -1;
    return egs_selfsigned(EVP_RSA_gen((unsigned int)bits), common_name, days, key_pem, key_len, cert_pem, cert_len);
}

int egs_generate_ec_selfsigned(const char *curve, const char *common_name, int days,
                               char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len) {
    *key_pem = NULL;
    *cert_pem = NULL;
    return egs_selfsigned(EVP_EC_gen(curve), common_name, days, key_pem, key_len, cert_pem, cert_len);
}

int egs_selfsigned_for_key(const uint8_t *key, size_t key_len, const char *common_name, int days,
                           char **key_pem, size_t *key_len_out, char **cert_pem, size_t *cert_len) {
    BIO *b;
    EVP_PKEY *k;
    *key_pem = NULL;
    *cert_pem = NULL;
    if (key_len > INT_MAX) return -1;
    b = BIO_new_mem_buf(key, (int)key_len);
    if (b == NULL) return -1;
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (k == NULL) egs_capture_error();
    return egs_selfsigned(k, common_name, days, key_pem, key_len_out, cert_pem, cert_len);
}

/* Takes ownership of k (may be NULL: generation failed). */
static int egs_selfsigned(EVP_PKEY *k, const char *common_name, int days,
                          char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len) {
    /* Mirrors the kernel's certs/default_x509.genkey: self-signed, CA:FALSE, digitalSignature,
     * subjectKeyIdentifier=hash, authorityKeyIdentifier=keyid. */
    X509 *x = NULL;
    X509_NAME *name = NULL;
    BIGNUM *bn = NULL;
    BIO *kb = NULL, *cb = NULL;
    unsigned char serial[16];
    int r = -1;
    if (days <= 0) goto out;
    x = X509_new();
    if (k == NULL || x == NULL) goto out;
    if (!X509_set_version(x, 2)) goto out;
    /* 16 random bytes, top bit cleared so the INTEGER stays positive. */
    if (RAND_bytes(serial, sizeof serial) != 1) goto out;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    bn = BN_bin2bn(serial, sizeof serial, NULL);
    if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL) goto out;
    if (X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL) goto out;
    if (X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) == NULL) goto out;
    name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"ExecGate", -1, -1, 0)) goto out;
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1, -1, 0)) goto out;
    if (!X509_set_issuer_name(x, name)) goto out;
    if (!X509_set_pubkey(x, k)) goto out;
    if (!egs_add_ext(x, x, NID_basic_constraints, "critical,CA:FALSE")) goto out;
    if (!egs_add_ext(x, x, NID_key_usage, "digitalSignature")) goto out;
    if (!egs_add_ext(x, x, NID_subject_key_identifier, "hash")) goto out;
    if (!egs_add_ext(x, x, NID_authority_key_identifier, "keyid")) goto out;
    if (X509_sign(x, k, egs_md(EGS_MD_SHA256)) <= 0) goto out;
    kb = BIO_new(BIO_s_mem());
    cb = BIO_new(BIO_s_mem());
    if (kb == NULL || cb == NULL) goto out;
    if (!PEM_write_bio_PrivateKey(kb, k, NULL, NULL, 0, NULL, NULL)) goto out;
    if (!PEM_write_bio_X509(cb, x)) goto out;
    if (!egs_bio_to_malloc(kb, key_pem, key_len)) goto out;
    if (!egs_bio_to_malloc(cb, cert_pem, cert_len)) goto out;
    r = 0;
out:
    if (r != 0) {
        OPENSSL_clear_free(*key_pem, *key_pem ? *key_len : 0);
        OPENSSL_free(*cert_pem);
        *key_pem = NULL;
        *cert_pem = NULL;
    }
    BN_free(bn);
    BIO_free(kb);
    BIO_free(cb);
    X509_free(x);
    EVP_PKEY_free(k);
    egs_capture_error();
    return r;
}
