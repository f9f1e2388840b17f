/* AWS Signature Version 4 (header and query signing) plus the SHA-256/HMAC helpers other modules
 * use. Pure functions: the caller owns every input; results are owned by the caller. Thread: any.
 */
#ifndef CMH_SIGV4_H
#define CMH_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#define CMH_SHA256_LEN     32
#define CMH_SHA256_HEX_LEN 64

/* The payload hash placeholder AWS accepts when the body is not signed. */
#define CMH_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

/* One header or query parameter. Strings are NUL-terminated and borrowed for the call only.
 * Header values may hold obsolete line folding ("a\n  b"): folded whitespace counts as a space. */
struct cmh_sigv4_kv {
    /* public */
    const char *name;
    const char *value;
};

struct cmh_sigv4_credentials {
    /* public */
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token; /* NULL or "" when the credentials have none */
};

enum cmh_sigv4_flag {
    /* The path is already in canonical (encoded) form and is used as is, not encoded again: the
     * S3 rule. Default (every other AWS service): the path is encoded once more, so a caller
     * passes the path exactly as it goes on the wire ("/a%20b" is signed as "/a%2520b"). */
    CMH_SIGV4_PATH_NO_ENCODE = 1u << 0,
    /* Keep "." / ".." segments and repeated slashes (S3). Default: remove them as botocore does,
     * keeping a trailing slash; an empty path becomes "/". */
    CMH_SIGV4_NO_NORMALIZE = 1u << 1,
    /* Add X-Amz-Security-Token after signing, so it is not signed (some services, e.g. IoT). */
    CMH_SIGV4_OMIT_SESSION_TOKEN = 1u << 2,
    /* Add and sign an x-amz-content-sha256 header carrying the payload hash (header mode). */
    CMH_SIGV4_CONTENT_SHA256_HEADER = 1u << 3,
    /* Presigned request: the authentication goes in the query string (result.query), valid for
     * expires_s seconds; no header is added. Default: Authorization header. */
    CMH_SIGV4_QUERY = 1u << 4,
};

/* What to sign. Every pointer is borrowed for the duration of cmh_sigv4_sign only. */
struct cmh_sigv4_request {
    /* public */
    const char *method; /* "GET", "POST"... (an HTTP token); upper-cased for signing */
    const char *path;   /* "/..." without query ("" = "/"); see CMH_SIGV4_PATH_NO_ENCODE */
    /* Decoded query parameters, in any order, duplicates allowed (value "" for "k" or "k=").
     * They are percent-encoded and sorted here; the caller sends them encoded the same way
     * (cmh_pct_encode, core/buf.h). */
    const struct cmh_sigv4_kv *query;
    size_t nquery;
    /* The headers as they will be sent; names (HTTP tokens) in any case, duplicates allowed
     * (joined with ',' in order). Must include Host exactly as sent (with ":port" when not the
     * default one). Authorization, X-Amz-Date and the headers this call adds must not be present.
     * User-Agent, Expect, X-Amzn-Trace-Id and Transfer-Encoding are sent but not signed (as
     * botocore). */
    const struct cmh_sigv4_kv *headers;
    size_t nheaders;
    /* The bytes actually sent (after gzip, if any), or NULL/0 for no body... */
    const void *payload;
    size_t payload_len;
    /* ...or their precomputed hash (64 lowercase hex) or CMH_SIGV4_UNSIGNED_PAYLOAD; when not
     * NULL it wins over payload. */
    const char *payload_hash;
    const char *region;  /* "us-east-1" */
    const char *service; /* "monitoring", "sts" */
    int64_t time_s;      /* signing time, seconds since the epoch (wall clock, UTC) */
    const struct cmh_sigv4_credentials *creds;
    unsigned flags;     /* enum cmh_sigv4_flag */
    uint32_t expires_s; /* CMH_SIGV4_QUERY only: X-Amz-Expires, 1..604800 */
};

/* A header to add to the request: name is a string constant, value is owned by the result. */
struct cmh_sigv4_header {
    /* read-only */
    const char *name;
    const char *value;
};

#define CMH_SIGV4_MAX_ADD_HEADERS 4

/* Everything cmh_sigv4_sign produced; owned by the caller, released with cmh_sigv4_result_free. */
struct cmh_sigv4_result {
    /* read-only */
    char *canonical_request;
    char *string_to_sign;
    char signature[CMH_SHA256_HEX_LEN + 1];
    char amz_date[17];                         /* "20150830T123600Z" */
    char payload_hash[CMH_SHA256_HEX_LEN + 1]; /* the hash in the canonical request */
    char *signed_headers;                      /* "host;x-amz-date" */
    char *authorization;                       /* header mode: the Authorization value */
    /* Header mode: headers to add, in this order: X-Amz-Security-Token (when a token is set),
     * X-Amz-Date, x-amz-content-sha256 (when asked), Authorization. Query mode: none. */
    struct cmh_sigv4_header add[CMH_SIGV4_MAX_ADD_HEADERS];
    size_t nadd;
    /* Query mode: the encoded parameters to append to the request's query (after '&' or '?'):
     * X-Amz-Algorithm, -Credential, -Date, -SignedHeaders, -Expires, [-Security-Token],
     * -Signature. NULL in header mode. */
    char *query;
    char *security_token; /* the copy the X-Amz-Security-Token header points to */
};

/* Signs req. On success returns 0 and fills *out (which the caller frees with
 * cmh_sigv4_result_free); on failure returns -EINVAL (a missing or forbidden field, no Host
 * header, a bad payload_hash) or -ENOMEM, and *out is left empty (safe to free). */
int cmh_sigv4_sign(const struct cmh_sigv4_request *req, struct cmh_sigv4_result *out);
void cmh_sigv4_result_free(struct cmh_sigv4_result *out);

/* SHA-256 of len bytes as 64 lowercase hex digits and a NUL. Returns 0 or -EIO. */
int cmh_sigv4_sha256_hex(const void *data, size_t len, char out[CMH_SHA256_HEX_LEN + 1]);

/* HMAC-SHA256(key, data). Returns 0 or -EIO. */
int cmh_sigv4_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                          unsigned char out[CMH_SHA256_LEN]);

#endif
