/* AWS Signature Version 4, following the published algorithm and botocore's choices where the
 * specification leaves room (path normalisation, header value trimming, unsigned headers). The
 * only file that includes mbedTLS. */
#include "cmh/aws/sigv4.h"

#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"

#include <mbedtls/md.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALGORITHM "AWS4-HMAC-SHA256"

static const char EMPTY_SHA256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/* A growable string; the first failed append sets err and later appends do nothing, so callers
 * check once at the end. */
struct sbuf {
    char *p;
    size_t len, cap;
    int err;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
    if (b->err)
        return;
    if (extra > SIZE_MAX / 2 - b->len - 1) {
        b->err = -ENOMEM;
        return;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = cmh_realloc(b->p, cap);
    if (p == NULL) {
        b->err = -ENOMEM;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_addn(struct sbuf *b, const char *s, size_t n)
{
    if (n == 0)
        return;
    sb_reserve(b, n);
    if (b->err)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(struct sbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_addc(struct sbuf *b, char c)
{
    sb_addn(b, &c, 1);
}

static void sb_encode(struct sbuf *b, const char *s, size_t n, int keep_slash)
{
    unsigned flags = keep_slash ? CMH_PCT_KEEP_SLASH : 0;
    size_t need = cmh_pct_encode(NULL, 0, s, n, flags);
    sb_reserve(b, need);
    if (b->err)
        return;
    cmh_pct_encode(b->p + b->len, b->cap - b->len, s, n, flags);
    b->len += need;
}

/* Hands the string over to the caller (never NULL on success). */
static char *sb_take(struct sbuf *b)
{
    sb_reserve(b, 0);
    if (b->err)
        return NULL;
    b->p[b->len] = '\0';
    char *p = b->p;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

static void sb_free(struct sbuf *b)
{
    cmh_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int cmh_sigv4_sha256_hex(const void *data, size_t len, char out[CMH_SHA256_HEX_LEN + 1])
{
    unsigned char digest[CMH_SHA256_LEN];
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (md == NULL || mbedtls_md(md, data, len, digest) != 0)
        return -EIO;
    to_hex(digest, sizeof digest, out);
    return 0;
}

int cmh_sigv4_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                          unsigned char out[CMH_SHA256_LEN])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (md == NULL || mbedtls_md_hmac(md, key, key_len, data, len, out) != 0)
        return -EIO;
    return 0;
}

/* Removes empty and "." segments and resolves ".." (never above the root), keeping a leading and
 * a trailing slash: botocore's remove_dot_segments. Writes into out (at least strlen(path)+2). */
static void normalize_path(const char *path, struct sbuf *out)
{
    size_t n = strlen(path);
    if (n == 0) {
        sb_addc(out, '/');
        return;
    }
    /* Segment start offsets in out, to pop on "..". */
    size_t depth = 0, cap = 16;
    size_t *starts = cmh_malloc(cap * sizeof *starts);
    if (starts == NULL) {
        out->err = -ENOMEM;
        return;
    }
    if (path[0] == '/')
        sb_addc(out, '/');
    size_t root = out->len;
    const char *p = path, *end = path + n;
    while (p < end && !out->err) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *seg_end = slash ? slash : end;
        size_t sl = (size_t)(seg_end - p);
        if (sl == 0 || (sl == 1 && p[0] == '.')) {
            /* skip */
        } else if (sl == 2 && p[0] == '.' && p[1] == '.') {
            if (depth > 0) {
                depth--;
                out->len = starts[depth];
                out->p[out->len] = '\0';
            }
        } else {
            if (depth == cap) {
                size_t *s = cmh_reallocarray(starts, cap * 2, sizeof *s);
                if (s == NULL) {
                    out->err = -ENOMEM;
                    break;
                }
                starts = s;
                cap *= 2;
            }
            starts[depth++] = out->len;
            if (out->len > root)
                sb_addc(out, '/');
            sb_addn(out, p, sl);
        }
        p = slash ? slash + 1 : end;
    }
    /* A trailing slash survives only when some segment does (botocore). */
    if (path[n - 1] == '/' && depth > 0)
        sb_addc(out, '/');
    cmh_free(starts);
}

struct qparam {
    char *key; /* encoded */
    char *value;
};

static int cmp_qparam(const void *a, const void *b)
{
    const struct qparam *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->value, y->value);
}

struct hdr {
    char *lname;
    const char *value;
    size_t index; /* keeps duplicates in request order through qsort */
};

static int cmp_hdr(const void *a, const void *b)
{
    const struct hdr *x = a, *y = b;
    int c = strcmp(x->lname, y->lname);
    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Trimall: drops leading and trailing whitespace and turns every run of it into one space. */
static void add_trimmed(struct sbuf *b, const char *v)
{
    int pending = 0, any = 0;
    for (; *v; v++) {
        if (is_space(*v)) {
            pending = any;
            continue;
        }
        if (pending)
            sb_addc(b, ' ');
        pending = 0;
        any = 1;
        sb_addc(b, *v);
    }
}

static int unsigned_header(const char *lname)
{
    static const char *const skip[] = {"user-agent", "expect", "x-amzn-trace-id",
                                       "transfer-encoding"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (strcmp(lname, skip[i]) == 0)
            return 1;
    return 0;
}

static int valid_hash(const char *h)
{
    if (strcmp(h, CMH_SIGV4_UNSIGNED_PAYLOAD) == 0)
        return 1;
    if (strlen(h) != CMH_SHA256_HEX_LEN)
        return 0;
    for (; *h; h++)
        if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f')))
            return 0;
    return 1;
}

static int nonempty(const char *s)
{
    return s != NULL && *s != '\0';
}

static char *lower_dup(const char *s)
{
    char *d = cmh_strdup(s);
    if (d == NULL)
        return NULL;
    for (char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return d;
}

/* RFC 9110 token: what a method or a header name may be made of. Anything else (';', ':', spaces,
 * control bytes) would change the structure of the canonical request. */
static int is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL)))
            return 0;
    }
    return 1;
}

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
            return 0;
    return 1;
}

static int check_request(const struct cmh_sigv4_request *req)
{
    if (!nonempty(req->method) || req->path == NULL || !nonempty(req->region) ||
        !nonempty(req->service) || req->creds == NULL || !nonempty(req->creds->access_key_id) ||
        !nonempty(req->creds->secret_access_key))
        return -EINVAL;
    if ((req->nquery > 0 && req->query == NULL) || (req->nheaders > 0 && req->headers == NULL))
        return -EINVAL;
    if (req->payload == NULL && req->payload_len > 0)
        return -EINVAL;
    if (req->payload_hash != NULL && !valid_hash(req->payload_hash))
        return -EINVAL;
    if ((req->flags & CMH_SIGV4_QUERY) && (req->expires_s < 1 || req->expires_s > 604800))
        return -EINVAL;
    for (size_t i = 0; i < req->nquery; i++)
        if (req->query[i].name == NULL || req->query[i].value == NULL)
            return -EINVAL;
    for (size_t i = 0; i < req->nheaders; i++)
        if (!nonempty(req->headers[i].name) || !is_token(req->headers[i].name) ||
            req->headers[i].value == NULL)
            return -EINVAL;
    if (!is_token(req->method))
        return -EINVAL;
    /* An HTTP path is empty or absolute; a relative one has no canonical form. */
    if (req->path[0] != '\0' && req->path[0] != '/')
        return -EINVAL;
    /* An already-canonical path goes in verbatim: it must not hold what encoding would hide. */
    if ((req->flags & CMH_SIGV4_PATH_NO_ENCODE) && !printable(req->path))
        return -EINVAL;
    return 0;
}

/* The headers we set ourselves must not come from the caller: they would be sent twice. */
static int forbidden_header(const char *lname, const struct cmh_sigv4_request *req)
{
    if (strcmp(lname, "authorization") == 0 || strcmp(lname, "x-amz-date") == 0)
        return 1;
    if (strcmp(lname, "x-amz-security-token") == 0 && nonempty(req->creds->session_token))
        return 1;
    if (strcmp(lname, "x-amz-content-sha256") == 0 &&
        (req->flags & CMH_SIGV4_CONTENT_SHA256_HEADER))
        return 1;
    return 0;
}

static int add_qparam(struct qparam *v, size_t *n, const char *key, const char *value)
{
    struct sbuf k = {0}, val = {0};
    sb_encode(&k, key, strlen(key), 0);
    sb_encode(&val, value, strlen(value), 0);
    char *ks = sb_take(&k), *vs = sb_take(&val);
    if (ks == NULL || vs == NULL) {
        sb_free(&k);
        sb_free(&val);
        cmh_free(ks);
        cmh_free(vs);
        return -ENOMEM;
    }
    v[*n].key = ks;
    v[*n].value = vs;
    (*n)++;
    return 0;
}

static int derive_signature(const struct cmh_sigv4_request *req, const char *date8,
                            const char *string_to_sign, char out[CMH_SHA256_HEX_LEN + 1])
{
    struct sbuf k = {0};
    unsigned char key[CMH_SHA256_LEN], sig[CMH_SHA256_LEN];
    int rc;
    sb_add(&k, "AWS4");
    sb_add(&k, req->creds->secret_access_key);
    if (k.err) {
        rc = k.err;
        goto out;
    }
    const char *parts[] = {date8, req->region, req->service, "aws4_request"};
    rc = cmh_sigv4_hmac_sha256(k.p, k.len, parts[0], strlen(parts[0]), key);
    for (size_t i = 1; rc == 0 && i < 4; i++)
        rc = cmh_sigv4_hmac_sha256(key, sizeof key, parts[i], strlen(parts[i]), key);
    if (rc == 0)
        rc = cmh_sigv4_hmac_sha256(key, sizeof key, string_to_sign, strlen(string_to_sign), sig);
    if (rc == 0)
        to_hex(sig, sizeof sig, out);
out:
    /* Wipe the copy of the secret (heap) and the derived key (stack, as good as the secret for
     * a day). */
    cmh_wipe(k.p, k.cap);
    sb_free(&k);
    cmh_wipe(key, sizeof key);
    return rc;
}

void cmh_sigv4_result_free(struct cmh_sigv4_result *out)
{
    cmh_free(out->canonical_request);
    cmh_free(out->string_to_sign);
    cmh_free(out->signed_headers);
    cmh_free_secret(out->authorization);
    cmh_free(out->query);
    cmh_free_secret(out->security_token);
    memset(out, 0, sizeof *out);
}

int cmh_sigv4_sign(const struct cmh_sigv4_request *req, struct cmh_sigv4_result *out)
{
    struct hdr *hdrs = NULL;
    struct qparam *qp = NULL;
    size_t nh = 0, nq = 0;
    struct sbuf cr = {0}, sts = {0}, sh = {0}, scope = {0}, auth = {0}, q = {0}, cred = {0};
    int rc;
    bool query_mode = (req->flags & CMH_SIGV4_QUERY) != 0;
    bool token = false;

    memset(out, 0, sizeof *out);
    rc = check_request(req);
    if (rc != 0)
        goto out;
    token = nonempty(req->creds->session_token);

    struct tm tm;
    time_t t = (time_t)req->time_s;
    if (req->time_s < 0 || gmtime_r(&t, &tm) == NULL ||
        strftime(out->amz_date, sizeof out->amz_date, "%Y%m%dT%H%M%SZ", &tm) != 16) {
        rc = -EINVAL;
        goto out;
    }
    char date8[9];
    memcpy(date8, out->amz_date, 8);
    date8[8] = '\0';

    if (req->payload_hash != NULL) {
        snprintf(out->payload_hash, sizeof out->payload_hash, "%s", req->payload_hash);
    } else if (req->payload_len == 0) {
        memcpy(out->payload_hash, EMPTY_SHA256, sizeof EMPTY_SHA256);
    } else {
        rc = cmh_sigv4_sha256_hex(req->payload, req->payload_len, out->payload_hash);
        if (rc != 0)
            goto out;
    }

    /* Headers to sign: the caller's, less the unsigned ones, plus the ones we add. */
    hdrs = cmh_calloc(req->nheaders + 3, sizeof *hdrs);
    if (hdrs == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    bool have_host = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        char *ln = lower_dup(req->headers[i].name);
        if (ln == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        if (forbidden_header(ln, req)) {
            cmh_free(ln);
            rc = -EINVAL;
            goto out;
        }
        if (strcmp(ln, "host") == 0)
            have_host = true;
        if (unsigned_header(ln)) {
            cmh_free(ln);
            continue;
        }
        hdrs[nh].lname = ln;
        hdrs[nh].value = req->headers[i].value;
        hdrs[nh].index = i;
        nh++;
    }
    if (!have_host) {
        rc = -EINVAL;
        goto out;
    }
    const char *extra[3][2] = {{NULL, NULL}};
    size_t nextra = 0;
    if (!query_mode) {
        extra[nextra][0] = "x-amz-date";
        extra[nextra++][1] = out->amz_date;
        if (token && !(req->flags & CMH_SIGV4_OMIT_SESSION_TOKEN)) {
            extra[nextra][0] = "x-amz-security-token";
            extra[nextra++][1] = req->creds->session_token;
        }
        if (req->flags & CMH_SIGV4_CONTENT_SHA256_HEADER) {
            extra[nextra][0] = "x-amz-content-sha256";
            extra[nextra++][1] = out->payload_hash;
        }
    }
    for (size_t i = 0; i < nextra; i++) {
        hdrs[nh].lname = cmh_strdup(extra[i][0]);
        if (hdrs[nh].lname == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        hdrs[nh].value = extra[i][1];
        hdrs[nh].index = req->nheaders + i;
        nh++;
    }
    qsort(hdrs, nh, sizeof *hdrs, cmp_hdr);
    for (size_t i = 0; i < nh; i++) {
        if (i > 0 && strcmp(hdrs[i].lname, hdrs[i - 1].lname) == 0)
            continue;
        if (sh.len > 0)
            sb_addc(&sh, ';');
        sb_add(&sh, hdrs[i].lname);
    }

    /* Credential scope. */
    sb_add(&scope, date8);
    sb_addc(&scope, '/');
    sb_add(&scope, req->region);
    sb_addc(&scope, '/');
    sb_add(&scope, req->service);
    sb_add(&scope, "/aws4_request");
    sb_add(&cred, req->creds->access_key_id);
    sb_addc(&cred, '/');
    if (scope.p != NULL)
        sb_add(&cred, scope.p);
    if (sh.err || scope.err || cred.err) {
        rc = -ENOMEM;
        goto out;
    }

    /* Query parameters, encoded then sorted by key and value. */
    qp = cmh_calloc(req->nquery + 6, sizeof *qp);
    if (qp == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < req->nquery; i++) {
        rc = add_qparam(qp, &nq, req->query[i].name, req->query[i].value);
        if (rc != 0)
            goto out;
    }
    char expires[16];
    if (query_mode) {
        snprintf(expires, sizeof expires, "%u", (unsigned)req->expires_s);
        const char *auth_params[5][2] = {{"X-Amz-Algorithm", ALGORITHM},
                                         {"X-Amz-Credential", cred.p},
                                         {"X-Amz-Date", out->amz_date},
                                         {"X-Amz-SignedHeaders", sh.p},
                                         {"X-Amz-Expires", expires}};
        for (size_t i = 0; i < 5; i++) {
            rc = add_qparam(qp, &nq, auth_params[i][0], auth_params[i][1]);
            if (rc != 0)
                goto out;
        }
        if (token && !(req->flags & CMH_SIGV4_OMIT_SESSION_TOKEN)) {
            rc = add_qparam(qp, &nq, "X-Amz-Security-Token", req->creds->session_token);
            if (rc != 0)
                goto out;
        }
    }
    qsort(qp, nq, sizeof *qp, cmp_qparam);

    /* The canonical request. */
    char method[32];
    size_t ml = strlen(req->method);
    if (ml >= sizeof method) {
        rc = -EINVAL;
        goto out;
    }
    for (size_t i = 0; i <= ml; i++) {
        char ch = req->method[i];
        if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        method[i] = ch;
    }
    sb_add(&cr, method);
    sb_addc(&cr, '\n');
    {
        struct sbuf path = {0};
        if (req->flags & CMH_SIGV4_NO_NORMALIZE)
            sb_add(&path, req->path[0] ? req->path : "/");
        else
            normalize_path(req->path, &path);
        if (path.err) {
            sb_free(&path);
            rc = -ENOMEM;
            goto out;
        }
        if (req->flags & CMH_SIGV4_PATH_NO_ENCODE)
            sb_addn(&cr, path.p, path.len);
        else
            sb_encode(&cr, path.p, path.len, 1);
        sb_free(&path);
    }
    sb_addc(&cr, '\n');
    for (size_t i = 0; i < nq; i++) {
        if (i > 0)
            sb_addc(&cr, '&');
        sb_add(&cr, qp[i].key);
        sb_addc(&cr, '=');
        sb_add(&cr, qp[i].value);
    }
    sb_addc(&cr, '\n');
    for (size_t i = 0; i < nh; i++) {
        bool first = i == 0 || strcmp(hdrs[i].lname, hdrs[i - 1].lname) != 0;
        if (first) {
            if (i > 0)
                sb_addc(&cr, '\n');
            sb_add(&cr, hdrs[i].lname);
            sb_addc(&cr, ':');
        } else {
            sb_addc(&cr, ',');
        }
        add_trimmed(&cr, hdrs[i].value);
    }
    sb_add(&cr, "\n\n");
    if (sh.p != NULL)
        sb_add(&cr, sh.p);
    sb_addc(&cr, '\n');
    sb_add(&cr, out->payload_hash);
    if (cr.err) {
        rc = cr.err;
        goto out;
    }

    /* The string to sign and the signature. */
    char cr_hash[CMH_SHA256_HEX_LEN + 1];
    rc = cmh_sigv4_sha256_hex(cr.p, cr.len, cr_hash);
    if (rc != 0)
        goto out;
    sb_add(&sts, ALGORITHM "\n");
    sb_add(&sts, out->amz_date);
    sb_addc(&sts, '\n');
    sb_add(&sts, scope.p);
    sb_addc(&sts, '\n');
    sb_add(&sts, cr_hash);
    if (sts.err) {
        rc = sts.err;
        goto out;
    }
    rc = derive_signature(req, date8, sts.p, out->signature);
    if (rc != 0)
        goto out;

    if (query_mode) {
        /* The order aws-c-auth appends them in; servers do not care. */
        const char *names[] = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                               "X-Amz-SignedHeaders", "X-Amz-Expires"};
        const char *values[] = {ALGORITHM, cred.p, out->amz_date, sh.p, expires};
        for (size_t i = 0; i < 5; i++) {
            if (i > 0)
                sb_addc(&q, '&');
            sb_add(&q, names[i]);
            sb_addc(&q, '=');
            sb_encode(&q, values[i], strlen(values[i]), 0);
        }
        if (token) {
            sb_add(&q, "&X-Amz-Security-Token=");
            sb_encode(&q, req->creds->session_token, strlen(req->creds->session_token), 0);
        }
        sb_add(&q, "&X-Amz-Signature=");
        sb_add(&q, out->signature);
        out->query = sb_take(&q);
        if (out->query == NULL) {
            rc = -ENOMEM;
            goto out;
        }
    } else {
        sb_add(&auth, ALGORITHM " Credential=");
        sb_add(&auth, cred.p);
        sb_add(&auth, ", SignedHeaders=");
        sb_add(&auth, sh.p);
        sb_add(&auth, ", Signature=");
        sb_add(&auth, out->signature);
        out->authorization = sb_take(&auth);
        if (out->authorization == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        if (token) {
            out->security_token = cmh_strdup(req->creds->session_token);
            if (out->security_token == NULL) {
                rc = -ENOMEM;
                goto out;
            }
            out->add[out->nadd++] =
                (struct cmh_sigv4_header){"X-Amz-Security-Token", out->security_token};
        }
        out->add[out->nadd++] = (struct cmh_sigv4_header){"X-Amz-Date", out->amz_date};
        if (req->flags & CMH_SIGV4_CONTENT_SHA256_HEADER)
            out->add[out->nadd++] =
                (struct cmh_sigv4_header){"x-amz-content-sha256", out->payload_hash};
        out->add[out->nadd++] = (struct cmh_sigv4_header){"Authorization", out->authorization};
    }
    out->canonical_request = sb_take(&cr);
    out->string_to_sign = sb_take(&sts);
    out->signed_headers = sb_take(&sh);
    if (out->canonical_request == NULL || out->string_to_sign == NULL ||
        out->signed_headers == NULL)
        rc = -ENOMEM;

out:
    for (size_t i = 0; hdrs != NULL && i < nh; i++)
        cmh_free(hdrs[i].lname);
    cmh_free(hdrs);
    for (size_t i = 0; qp != NULL && i < nq; i++) {
        cmh_free(qp[i].key);
        cmh_free(qp[i].value);
    }
    cmh_free(qp);
    sb_free(&cr);
    sb_free(&sts);
    sb_free(&sh);
    sb_free(&scope);
    sb_free(&auth);
    sb_free(&q);
    sb_free(&cred);
    if (rc != 0)
        cmh_sigv4_result_free(out);
    return rc;
}
