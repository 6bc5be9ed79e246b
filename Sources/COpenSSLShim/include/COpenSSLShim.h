/* SPDX-License-Identifier: Apache-2.0 */
/*
 * COpenSSLShim: the few OpenSSL 3.0 operations ExecGateSignature needs, as plain C functions.
 *
 * Why a shim: OpenSSL's stack accessors (sk_X509_num, sk_CMS_SignerInfo_value, ...) are macros
 * that Swift cannot import, and keeping OpenSSL's headers out of this header keeps the Swift
 * surface small. Handles are pointers to incomplete structs (Swift sees them as OpaquePointer);
 * only ExecGateSignature's internals hold them, wrapped in classes that free them.
 *
 * Conventions:
 *  - Functions that produce variable-length output take (out, cap) and return the number of
 *    bytes needed; they copy only when cap is large enough. A negative return is an error.
 *  - Functions never read outside the (pointer, length) they are given.
 *  - The OpenSSL error queue is cleared before returning, so errors never leak between calls.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct x509_st;
struct evp_pkey_st;
struct CMS_ContentInfo_st;
struct CMS_SignerInfo_st;

/* Digest algorithms, as ExecGate numbers them (stable; not OpenSSL NIDs). */
enum {
    EGS_MD_UNKNOWN = 0,
    EGS_MD_SHA1 = 1,
    EGS_MD_SHA224 = 2,
    EGS_MD_SHA256 = 3,
    EGS_MD_SHA384 = 4,
    EGS_MD_SHA512 = 5,
};

/* Public-key algorithms. */
enum {
    EGS_PK_OTHER = 0,
    EGS_PK_RSA = 1,
    EGS_PK_EC = 2,
    EGS_PK_ED25519 = 3,
};

/* Results of egs_verify_signature. */
enum {
    EGS_VERIFY_OK = 1,
    EGS_VERIFY_BAD_SIGNATURE = 0,      /* the signature does not verify under the key */
    EGS_VERIFY_DIGEST_MISMATCH = 2,    /* RSA: the signature is genuine but signs another digest */
    EGS_VERIFY_ALG_MISMATCH = -2,      /* signatureAlgorithm does not fit the key or the digest */
    EGS_VERIFY_ERROR = -1,
};

/* Sign flags for egs_sign_detached. */
enum {
    EGS_SIGN_KEYID = 1,        /* identify the signer by subjectKeyIdentifier (sign-file -k) */
    EGS_SIGN_ATTRS = 2,        /* keep signed attributes (tests only: the kernel rejects these) */
    EGS_SIGN_CERTS = 4,        /* embed the signer certificate (tests only) */
    EGS_SIGN_EMBED = 8,        /* embed the content instead of a detached signature (tests only) */
    EGS_SIGN_TWICE = 16,       /* add a second SignerInfo with the same key (tests only) */
};

/* ---- memory ---- */
void egs_free(void *p);

/* ---- digests ---- */
/* Digest size in bytes for an EGS_MD_* value, 0 if unknown. */
size_t egs_md_size(int md);
/* One-shot digest of (data, len) into out (cap >= egs_md_size). Returns size or -1. */
int egs_digest(int md, const void *data, size_t len, uint8_t *out, size_t cap);
/* The digests of data[0, prefix_len) and of data[0, len) in one pass over the prefix: both into
 * buffers of cap bytes; returns the digest size, or -1. */
/* The digest of count buffers, in order, as if concatenated (no copy). */
int egs_digest_segments(int md, const void *const *parts, const size_t *lens, size_t count, uint8_t *out, size_t cap);
int egs_digest_with_prefix(int md, const void *data, size_t prefix_len, size_t len,
                           uint8_t *out_prefix, uint8_t *out_whole, size_t cap);
/* A digest fed in pieces: egs_digest_begin (NULL only when libcrypto is broken), any number of
 * egs_digest_update (1 ok, 0 failed), then egs_digest_end, which writes the digest (returns its
 * size, or -1) and frees the state. */
struct evp_md_ctx_st;
struct evp_md_ctx_st *egs_digest_begin(int md);
int egs_digest_update(struct evp_md_ctx_st *ctx, const void *data, size_t len);
int egs_digest_end(struct evp_md_ctx_st *ctx, uint8_t *out, size_t cap);

/* ---- certificates ---- */
struct x509_st *egs_x509_from_der(const uint8_t *der, size_t len, size_t *consumed);
/* Reads PEM certificates one at a time. *offset advances past the certificate read.
 * Returns NULL with *status = 0 at the end of the input, *status = -1 on a malformed block. */
struct x509_st *egs_x509_from_pem_next(const uint8_t *pem, size_t len, size_t *offset, int *status);
void egs_x509_free(struct x509_st *x);
int egs_x509_der(struct x509_st *x, uint8_t *out, size_t cap);
/* The certificate's SubjectPublicKeyInfo, DER (i2d_X509_PUBKEY): the key whatever certificate carries it. */
int egs_x509_pubkey_der(struct x509_st *x, uint8_t *out, size_t cap);
/* which: 0 = subject, 1 = issuer. One-line RFC 2253 form, NUL-terminated; returns strlen. */
int egs_x509_name(struct x509_st *x, int which, char *out, size_t cap);
/* Serial number as big-endian magnitude bytes; *negative set when the serial is negative. */
int egs_x509_serial(struct x509_st *x, uint8_t *out, size_t cap, int *negative);
/* Subject key identifier bytes; -1 when the certificate has none. */
int egs_x509_skid(struct x509_st *x, uint8_t *out, size_t cap);
int egs_x509_self_signature_ok(struct x509_st *x);
int egs_x509_pubkey_info(struct x509_st *x, int *alg, int *bits);
/* The short name of an EC key's curve ("prime256v1", "secp384r1", ...): length, or -1 (not an
 * EC key, or a curve with no name). */
int egs_x509_ec_curve(struct x509_st *x, char *out, size_t cap);
/* PEM text of the certificate (no NUL). */
int egs_x509_pem(struct x509_st *x, uint8_t *out, size_t cap);

/* ---- private keys ---- */
struct evp_pkey_st *egs_pkey_from_pem(const uint8_t *pem, size_t len);
void egs_pkey_free(struct evp_pkey_st *k);
int egs_pkey_matches_cert(struct evp_pkey_st *k, struct x509_st *x);

/* ---- CMS / PKCS#7 SignedData ---- */
struct CMS_ContentInfo_st *egs_cms_from_der(const uint8_t *der, size_t len, size_t *consumed);
void egs_cms_free(struct CMS_ContentInfo_st *cms);
int egs_cms_is_signed_data(struct CMS_ContentInfo_st *cms);
int egs_cms_econtent_is_data(struct CMS_ContentInfo_st *cms);
int egs_cms_is_detached(struct CMS_ContentInfo_st *cms);
int egs_cms_cert_count(struct CMS_ContentInfo_st *cms);
int egs_cms_crl_count(struct CMS_ContentInfo_st *cms);
int egs_cms_signer_count(struct CMS_ContentInfo_st *cms);
struct CMS_SignerInfo_st *egs_cms_signer(struct CMS_ContentInfo_st *cms, int index);
/* -1 when the SignerInfo has no such attribute set at all; >= 0 when the set is present. */
int egs_si_signed_attr_count(struct CMS_SignerInfo_st *si);
int egs_si_unsigned_attr_count(struct CMS_SignerInfo_st *si);
/* EGS_MD_* of the SignerInfo's digestAlgorithm; *raw_nid gets OpenSSL's NID for messages. */
int egs_si_digest(struct CMS_SignerInfo_st *si, int *raw_nid);
/* Short name of an OpenSSL NID (for messages), NUL-terminated; returns strlen. */
int egs_nid_name(int nid, char *out, size_t cap);
/* 0 = issuerAndSerialNumber, 1 = subjectKeyIdentifier, -1 error. */
int egs_si_signer_id_kind(struct CMS_SignerInfo_st *si);
int egs_si_signer_skid(struct CMS_SignerInfo_st *si, uint8_t *out, size_t cap);
int egs_si_signer_issuer(struct CMS_SignerInfo_st *si, char *out, size_t cap);
int egs_si_signer_serial(struct CMS_SignerInfo_st *si, uint8_t *out, size_t cap, int *negative);
/* 1 when the SignerInfo's signer identifier designates this certificate. */
int egs_si_matches_cert(struct CMS_SignerInfo_st *si, struct x509_st *x);
/* Borrowed pointer to the signature octets (valid while the CMS lives). */
int egs_si_signature(struct CMS_SignerInfo_st *si, const uint8_t **sig, size_t *len);
/* Verifies a signature over a precomputed digest with the certificate's public key.
 * Returns one of EGS_VERIFY_*. */
int egs_verify_signature(struct CMS_SignerInfo_st *si, struct x509_st *x, int md,
                         const uint8_t *digest, size_t digest_len);

/* ---- baseline: OpenSSL's own CMS_verify, as `openssl cms -verify -binary -noverify` ---- */
int egs_baseline_cms_verify(const uint8_t *sig, size_t sig_len, const uint8_t *content, size_t content_len,
                            struct x509_st *cert);

/* ---- signing (scripts/sign-file.c) ---- */
/* Produces the DER CMS over (content, len). *out is allocated; free with egs_free. */
int egs_sign_detached(const uint8_t *content, size_t len, struct evp_pkey_st *key, struct x509_st *cert,
                      int md, int flags, uint8_t **out, size_t *out_len);

/* ---- key generation ---- */
/* RSA key + self-signed certificate; PEM texts allocated, free with egs_free. */
int egs_generate_rsa_selfsigned(int bits, const char *common_name, int days,
                                char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len);

/* The same with an EC key on `curve` ("P-256", "P-384": the curves the kernel's ECDSA accepts). */
int egs_generate_ec_selfsigned(const char *curve, const char *common_name, int days,
                               char **key_pem, size_t *key_len, char **cert_pem, size_t *cert_len);
/* A new self-signed certificate (new serial) for an existing private key (PEM); out as above. */
int egs_selfsigned_for_key(const uint8_t *key, size_t key_len, const char *common_name, int days,
                           char **key_pem, size_t *key_len_out, char **cert_pem, size_t *cert_len);

/* Last OpenSSL error as text (thread-local copy), for messages. Returns strlen. */
int egs_last_error(char *out, size_t cap);
