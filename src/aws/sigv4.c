/* AWS Signature Version 4, following the published algorithm and botocore's choices where the
 * specification leaves room (path normalisation, header value trimming, unsigned headers). The
 * only file that includes mbedTLS. */
#include "cmh/aws/sigv4.h"

#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"

#include <mbedtls/md.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALGORITHM "AWS4-HMAC-SHA256"

static const char EMPTY_SHA256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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

/* Appends path without empty and "." segments, with ".." resolved (never above the root),
 * keeping a leading and a trailing slash: botocore's remove_dot_segments. */
static int add_normalized_path(struct cmh_buf *out, const char *path)
{
    size_t n = strlen(path);
    if (n == 0)
        return cmh_buf_addc(out, '/');
    /* The segments kept so far, popped on "..": at most one per two bytes of path. */
    struct seg {
        const char *p;
        size_t n;
    } *segs = cmh_calloc(n / 2 + 1, sizeof *segs);
    if (segs == NULL)
        return -ENOMEM;
    size_t depth = 0;
    const char *p = path, *end = path + n;
    while (p < end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *seg_end = slash ? slash : end;
        size_t sl = (size_t)(seg_end - p);
        if (sl == 2 && p[0] == '.' && p[1] == '.') {
            if (depth > 0)
                depth--;
        } else if (sl > 0 && !(sl == 1 && p[0] == '.')) {
            segs[depth++] = (struct seg){p, sl};
        }
        p = slash ? slash + 1 : end;
    }
    if (path[0] == '/')
        cmh_buf_addc(out, '/');
    for (size_t i = 0; i < depth; i++) {
        if (i > 0)
            cmh_buf_addc(out, '/');
        cmh_buf_add(out, segs[i].p, segs[i].n);
    }
    /* A trailing slash survives only when some segment does (botocore). */
    if (path[n - 1] == '/' && depth > 0)
        cmh_buf_addc(out, '/');
    cmh_free(segs);
    return cmh_buf_err(out);
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
static void add_trimmed(struct cmh_buf *b, const char *v)
{
    int pending = 0, any = 0;
    for (; *v; v++) {
        if (is_space(*v)) {
            pending = any;
            continue;
        }
        if (pending)
            cmh_buf_addc(b, ' ');
        pending = 0;
        any = 1;
        cmh_buf_addc(b, *v);
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

/* Appends name=value to v[*n], both percent-encoded. */
static int add_qparam(struct qparam *v, size_t *n, const char *key, const char *value)
{
    struct cmh_buf k, val;
    cmh_buf_init(&k, 0);
    cmh_buf_init(&val, 0);
    cmh_buf_add_pct(&k, key, strlen(key), 0);
    cmh_buf_add_pct(&val, value, strlen(value), 0);
    char *ks = cmh_buf_take(&k, NULL), *vs = cmh_buf_take(&val, NULL);
    if (ks == NULL || vs == NULL) {
        cmh_free(ks);
        cmh_free(vs);
        return -ENOMEM;
    }
    v[*n].key = ks;
    v[*n].value = vs;
    (*n)++;
    return 0;
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

/* ---------------------------------------------------------------------------------------------
 * Signing, step by step (curl's Curl_output_aws_sigv4 is the model): each step reads what the
 * ones before it left in the context and returns 0 or a negative code. */

struct sign {
    const struct cmh_sigv4_request *req;
    struct cmh_sigv4_result *out;
    bool query_mode;
    bool token; /* the credentials carry a session token */
    char date8[9];
    struct hdr *hdrs; /* the headers signed, sorted by name (duplicates in request order) */
    size_t nh;
    struct qparam *qp; /* the query parameters, encoded and sorted */
    size_t nq;
    char expires[16];     /* query mode: X-Amz-Expires */
    struct cmh_buf sh;    /* the signed headers, "host;x-amz-date" */
    struct cmh_buf scope; /* the credential scope, "20150830/us-east-1/iam/aws4_request" */
    struct cmh_buf cred;  /* "<access key id>/<scope>" */
    struct cmh_buf cr;    /* the canonical request */
    struct cmh_buf sts;   /* the string to sign */
};

/* The signing time: X-Amz-Date and the scope's date. */
static int sign_time(struct sign *s)
{
    struct tm tm;
    time_t t = (time_t)s->req->time_s;
    if (s->req->time_s < 0 || gmtime_r(&t, &tm) == NULL ||
        strftime(s->out->amz_date, sizeof s->out->amz_date, "%Y%m%dT%H%M%SZ", &tm) != 16)
        return -EINVAL;
    memcpy(s->date8, s->out->amz_date, 8);
    s->date8[8] = '\0';
    return 0;
}

static int payload_hash(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    if (req->payload_hash != NULL) {
        snprintf(s->out->payload_hash, sizeof s->out->payload_hash, "%s", req->payload_hash);
        return 0;
    }
    if (req->payload_len == 0) {
        memcpy(s->out->payload_hash, EMPTY_SHA256, sizeof EMPTY_SHA256);
        return 0;
    }
    return cmh_sigv4_sha256_hex(req->payload, req->payload_len, s->out->payload_hash);
}

/* The headers to sign: the caller's, less the unsigned ones, plus the ones we add; sorted, and
 * the signed-headers list. */
static int signed_headers(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    s->hdrs = cmh_calloc(req->nheaders + 3, sizeof *s->hdrs);
    if (s->hdrs == NULL)
        return -ENOMEM;
    bool have_host = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        char *ln = lower_dup(req->headers[i].name);
        if (ln == NULL)
            return -ENOMEM;
        if (forbidden_header(ln, req)) {
            cmh_free(ln);
            return -EINVAL;
        }
        if (strcmp(ln, "host") == 0)
            have_host = true;
        if (unsigned_header(ln)) {
            cmh_free(ln);
            continue;
        }
        s->hdrs[s->nh++] = (struct hdr){ln, req->headers[i].value, i};
    }
    if (!have_host)
        return -EINVAL;
    const char *extra[3][2] = {{NULL, NULL}};
    size_t nextra = 0;
    if (!s->query_mode) {
        extra[nextra][0] = "x-amz-date";
        extra[nextra++][1] = s->out->amz_date;
        if (s->token && !(req->flags & CMH_SIGV4_OMIT_SESSION_TOKEN)) {
            extra[nextra][0] = "x-amz-security-token";
            extra[nextra++][1] = req->creds->session_token;
        }
        if (req->flags & CMH_SIGV4_CONTENT_SHA256_HEADER) {
            extra[nextra][0] = "x-amz-content-sha256";
            extra[nextra++][1] = s->out->payload_hash;
        }
    }
    for (size_t i = 0; i < nextra; i++) {
        char *ln = cmh_strdup(extra[i][0]);
        if (ln == NULL)
            return -ENOMEM;
        s->hdrs[s->nh++] = (struct hdr){ln, extra[i][1], req->nheaders + i};
    }
    qsort(s->hdrs, s->nh, sizeof *s->hdrs, cmp_hdr);
    for (size_t i = 0; i < s->nh; i++) {
        if (i > 0 && strcmp(s->hdrs[i].lname, s->hdrs[i - 1].lname) == 0)
            continue;
        if (cmh_buf_len(&s->sh) > 0)
            cmh_buf_addc(&s->sh, ';');
        cmh_buf_addstr(&s->sh, s->hdrs[i].lname);
    }
    return cmh_buf_err(&s->sh);
}

static int credential_scope(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    cmh_buf_printf(&s->scope, "%s/%s/%s/aws4_request", s->date8, req->region, req->service);
    cmh_buf_printf(&s->cred, "%s/%s", req->creds->access_key_id, cmh_buf_str(&s->scope));
    return cmh_buf_err(&s->scope) ? cmh_buf_err(&s->scope) : cmh_buf_err(&s->cred);
}

/* The query parameters, encoded then sorted by key and value; in query mode with the
 * authentication parameters. */
static int canonical_query(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    int rc = 0;
    s->qp = cmh_calloc(req->nquery + 6, sizeof *s->qp);
    if (s->qp == NULL)
        return -ENOMEM;
    for (size_t i = 0; rc == 0 && i < req->nquery; i++)
        rc = add_qparam(s->qp, &s->nq, req->query[i].name, req->query[i].value);
    if (rc == 0 && s->query_mode) {
        snprintf(s->expires, sizeof s->expires, "%u", (unsigned)req->expires_s);
        const char *auth_params[5][2] = {{"X-Amz-Algorithm", ALGORITHM},
                                         {"X-Amz-Credential", cmh_buf_str(&s->cred)},
                                         {"X-Amz-Date", s->out->amz_date},
                                         {"X-Amz-SignedHeaders", cmh_buf_str(&s->sh)},
                                         {"X-Amz-Expires", s->expires}};
        for (size_t i = 0; rc == 0 && i < 5; i++)
            rc = add_qparam(s->qp, &s->nq, auth_params[i][0], auth_params[i][1]);
        if (rc == 0 && s->token && !(req->flags & CMH_SIGV4_OMIT_SESSION_TOKEN))
            rc = add_qparam(s->qp, &s->nq, "X-Amz-Security-Token", req->creds->session_token);
    }
    if (rc == 0)
        qsort(s->qp, s->nq, sizeof *s->qp, cmp_qparam);
    return rc;
}

/* The path of the canonical request: normalised unless asked not to, then encoded once more
 * unless it is already canonical. */
static int canonical_path(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    struct cmh_buf path;
    cmh_buf_init(&path, 0);
    int rc = req->flags & CMH_SIGV4_NO_NORMALIZE
                 ? cmh_buf_addstr(&path, req->path[0] ? req->path : "/")
                 : add_normalized_path(&path, req->path);
    if (rc == 0 && (req->flags & CMH_SIGV4_PATH_NO_ENCODE))
        cmh_buf_add(&s->cr, cmh_buf_str(&path), cmh_buf_len(&path));
    else if (rc == 0)
        cmh_buf_add_pct(&s->cr, cmh_buf_str(&path), cmh_buf_len(&path), CMH_PCT_KEEP_SLASH);
    cmh_buf_free(&path);
    return rc;
}

static int canonical_request(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    char method[32];
    size_t ml = strlen(req->method);
    if (ml >= sizeof method)
        return -EINVAL;
    for (size_t i = 0; i <= ml; i++) {
        char ch = req->method[i];
        if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        method[i] = ch;
    }
    cmh_buf_addstr(&s->cr, method);
    cmh_buf_addc(&s->cr, '\n');
    int rc = canonical_path(s);
    if (rc != 0)
        return rc;
    cmh_buf_addc(&s->cr, '\n');
    for (size_t i = 0; i < s->nq; i++)
        cmh_buf_printf(&s->cr, "%s%s=%s", i > 0 ? "&" : "", s->qp[i].key, s->qp[i].value);
    cmh_buf_addc(&s->cr, '\n');
    for (size_t i = 0; i < s->nh; i++) {
        if (i == 0 || strcmp(s->hdrs[i].lname, s->hdrs[i - 1].lname) != 0)
            cmh_buf_printf(&s->cr, "%s%s:", i > 0 ? "\n" : "", s->hdrs[i].lname);
        else
            cmh_buf_addc(&s->cr, ',');
        add_trimmed(&s->cr, s->hdrs[i].value);
    }
    cmh_buf_printf(&s->cr, "\n\n%s\n%s", cmh_buf_str(&s->sh), s->out->payload_hash);
    return cmh_buf_err(&s->cr);
}

static int string_to_sign(struct sign *s)
{
    char cr_hash[CMH_SHA256_HEX_LEN + 1];
    int rc = cmh_sigv4_sha256_hex(cmh_buf_str(&s->cr), cmh_buf_len(&s->cr), cr_hash);
    if (rc != 0)
        return rc;
    cmh_buf_printf(&s->sts, ALGORITHM "\n%s\n%s\n%s", s->out->amz_date, cmh_buf_str(&s->scope),
                   cr_hash);
    return cmh_buf_err(&s->sts);
}

/* The signing key, derived from the secret for the scope, and the signature with it. */
static int signature(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    unsigned char key[CMH_SHA256_LEN], sig[CMH_SHA256_LEN];
    struct cmh_buf k;
    cmh_buf_init(&k, 0);
    /* One append, so one allocation: no copy of the secret is left behind by growth. */
    cmh_buf_printf(&k, "AWS4%s", req->creds->secret_access_key);
    size_t klen = cmh_buf_len(&k);
    char *kstr = cmh_buf_take(&k, NULL);
    if (kstr == NULL)
        return -ENOMEM;
    const char *parts[] = {s->date8, req->region, req->service, "aws4_request"};
    int rc = cmh_sigv4_hmac_sha256(kstr, klen, parts[0], strlen(parts[0]), key);
    for (size_t i = 1; rc == 0 && i < 4; i++)
        rc = cmh_sigv4_hmac_sha256(key, sizeof key, parts[i], strlen(parts[i]), key);
    if (rc == 0)
        rc =
            cmh_sigv4_hmac_sha256(key, sizeof key, cmh_buf_str(&s->sts), cmh_buf_len(&s->sts), sig);
    if (rc == 0)
        to_hex(sig, sizeof sig, s->out->signature);
    /* The copy of the secret (heap) and the derived key (stack, as good as the secret for a
     * day) are wiped. */
    cmh_free_secret(kstr);
    cmh_wipe(key, sizeof key);
    return rc;
}

/* Query mode: the parameters to append, in the order aws-c-auth appends them (servers do not
 * care). */
static int presigned_query(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    const char *names[] = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                           "X-Amz-SignedHeaders", "X-Amz-Expires"};
    const char *values[] = {ALGORITHM, cmh_buf_str(&s->cred), s->out->amz_date, cmh_buf_str(&s->sh),
                            s->expires};
    struct cmh_buf q;
    cmh_buf_init(&q, 0);
    for (size_t i = 0; i < 5; i++) {
        cmh_buf_printf(&q, "%s%s=", i > 0 ? "&" : "", names[i]);
        cmh_buf_add_pct(&q, values[i], strlen(values[i]), 0);
    }
    if (s->token) {
        cmh_buf_addstr(&q, "&X-Amz-Security-Token=");
        cmh_buf_add_pct(&q, req->creds->session_token, strlen(req->creds->session_token), 0);
    }
    cmh_buf_printf(&q, "&X-Amz-Signature=%s", s->out->signature);
    s->out->query = cmh_buf_take(&q, NULL);
    return s->out->query != NULL ? 0 : -ENOMEM;
}

/* Header mode: the Authorization value and the headers to add. */
static int authorization(struct sign *s)
{
    const struct cmh_sigv4_request *req = s->req;
    struct cmh_sigv4_result *out = s->out;
    struct cmh_buf auth;
    cmh_buf_init(&auth, 0);
    cmh_buf_printf(&auth, ALGORITHM " Credential=%s, SignedHeaders=%s, Signature=%s",
                   cmh_buf_str(&s->cred), cmh_buf_str(&s->sh), out->signature);
    out->authorization = cmh_buf_take(&auth, NULL);
    if (out->authorization == NULL)
        return -ENOMEM;
    if (s->token) {
        out->security_token = cmh_strdup(req->creds->session_token);
        if (out->security_token == NULL)
            return -ENOMEM;
        out->add[out->nadd++] =
            (struct cmh_sigv4_header){"X-Amz-Security-Token", out->security_token};
    }
    out->add[out->nadd++] = (struct cmh_sigv4_header){"X-Amz-Date", out->amz_date};
    if (req->flags & CMH_SIGV4_CONTENT_SHA256_HEADER)
        out->add[out->nadd++] =
            (struct cmh_sigv4_header){"x-amz-content-sha256", out->payload_hash};
    out->add[out->nadd++] = (struct cmh_sigv4_header){"Authorization", out->authorization};
    return 0;
}

/* Hands the canonical request, the string to sign and the signed headers over to the result. */
static int hand_over(struct sign *s)
{
    s->out->canonical_request = cmh_buf_take(&s->cr, NULL);
    s->out->string_to_sign = cmh_buf_take(&s->sts, NULL);
    s->out->signed_headers = cmh_buf_take(&s->sh, NULL);
    if (s->out->canonical_request == NULL || s->out->string_to_sign == NULL ||
        s->out->signed_headers == NULL)
        return -ENOMEM;
    return 0;
}

int cmh_sigv4_sign(const struct cmh_sigv4_request *req, struct cmh_sigv4_result *out)
{
    struct sign s = {.req = req, .out = out};
    cmh_buf_init(&s.sh, 0);
    cmh_buf_init(&s.scope, 0);
    cmh_buf_init(&s.cred, 0);
    cmh_buf_init(&s.cr, 0);
    cmh_buf_init(&s.sts, 0);
    memset(out, 0, sizeof *out);

    int rc = check_request(req);
    if (!rc) {
        s.query_mode = (req->flags & CMH_SIGV4_QUERY) != 0;
        s.token = nonempty(req->creds->session_token);
        rc = sign_time(&s);
    }
    if (!rc)
        rc = payload_hash(&s);
    if (!rc)
        rc = signed_headers(&s);
    if (!rc)
        rc = credential_scope(&s);
    if (!rc)
        rc = canonical_query(&s);
    if (!rc)
        rc = canonical_request(&s);
    if (!rc)
        rc = string_to_sign(&s);
    if (!rc)
        rc = signature(&s);
    if (!rc)
        rc = s.query_mode ? presigned_query(&s) : authorization(&s);
    if (!rc)
        rc = hand_over(&s);

    for (size_t i = 0; s.hdrs != NULL && i < s.nh; i++)
        cmh_free(s.hdrs[i].lname);
    cmh_free(s.hdrs);
    for (size_t i = 0; s.qp != NULL && i < s.nq; i++) {
        cmh_free(s.qp[i].key);
        cmh_free(s.qp[i].value);
    }
    cmh_free(s.qp);
    cmh_buf_free(&s.sh);
    cmh_buf_free(&s.scope);
    cmh_buf_free(&s.cred);
    cmh_buf_free(&s.cr);
    cmh_buf_free(&s.sts);
    if (rc != 0)
        cmh_sigv4_result_free(out);
    return rc;
}
