/* Pure parsers of the credential layer (see include/cmh/aws/creds_parse.h): the credential
 * documents of IMDS, the container agents and STS, IMDS's text answers, the expiration times and
 * the container-credentials URL gate. No I/O and no loop, so each can be fuzzed alone. expat is
 * included here only. */
#include "cmh/aws/creds_parse.h"

#include "cmh/core/alloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <expat.h>
#include <jansson.h>

#define FIELD_MAX (16 * 1024) /* one XML text field */

int cmh_aws_region_valid(const char *s, size_t n)
{
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

int cmh_aws_token_valid(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int valid_token(const char *s)
{
    return cmh_aws_token_valid(s, strlen(s));
}

/* Plain-http hosts that may serve container credentials: loopback, the ECS agent and the EKS
 * Pod Identity agent (documented allow-list of the AWS SDKs). Any host may serve https. */
int cmh_aws_container_url_allowed(const char *url, char *why, size_t whylen)
{
    int https = strncasecmp(url, "https://", 8) == 0;
    if (!https && strncasecmp(url, "http://", 7) != 0) {
        snprintf(why, whylen, "not an http(s) URL");
        return 0;
    }
    const char *h = url + (https ? 8 : 7);
    /* With user information the real host is what follows the '@': http://127.0.0.1:80@elsewhere/
     * goes to elsewhere. Refused, so the allow-list below judges the host libcurl connects to. */
    if (memchr(h, '@', strcspn(h, "/?#")) != NULL) {
        snprintf(why, whylen,
                 "user information (user@ or user:password@) is not allowed in a "
                 "container credentials URL");
        return 0;
    }
    char host[256];
    size_t n;
    if (*h == '[') {
        const char *e = strchr(h, ']');
        if (e == NULL || (size_t)(e - h - 1) >= sizeof host) {
            snprintf(why, whylen, "bad IPv6 host in %s", url);
            return 0;
        }
        n = (size_t)(e - h - 1);
        memcpy(host, h + 1, n);
    } else {
        n = strcspn(h, ":/?#");
        if (n >= sizeof host) {
            snprintf(why, whylen, "host too long in %s", url);
            return 0;
        }
        memcpy(host, h, n);
    }
    host[n] = '\0';
    if (n == 0) {
        snprintf(why, whylen, "no host in %s", url);
        return 0;
    }
    if (https)
        return 1;
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1) {
        if (a[0] == 127)
            return 1;
        if (a[0] == 169 && a[1] == 254 && a[2] == 170 && (a[3] == 2 || a[3] == 23))
            return 1;
    } else if (inet_pton(AF_INET6, host, a) == 1) {
        unsigned char b[16];
        if (inet_pton(AF_INET6, "::1", b) == 1 && memcmp(a, b, 16) == 0)
            return 1;
        if (inet_pton(AF_INET6, "fd00:ec2::23", b) == 1 && memcmp(a, b, 16) == 0)
            return 1;
    } else if (strcasecmp(host, "localhost") == 0) {
        return 1; /* libcurl resolves "localhost" to loopback itself, never through DNS */
    }
    snprintf(why, whylen,
             "plain-http host %s is not allowed for container credentials (allowed: 127.0.0.0/8, "
             "::1, 169.254.170.2, 169.254.170.23, fd00:ec2::23; any host with https)",
             host);
    return 0;
}
/* ---------------------------------------------------------------------------------------------
 * Time */

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int cmh_aws_parse_time(const char *s, int64_t *ms)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int Y, M, D, h, m, sec;
    if (s == NULL || strlen(s) < 20 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) ||
        s[7] != '-' || digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) || s[16] != ':' ||
        digits(s + 17, 2, &sec))
        return -EINVAL;
    if (M < 1 || M > 12 || h > 23 || m > 59 || sec > 59 || D < 1)
        return -EINVAL;
    int leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (D > mdays[M - 1] + (M == 2 && leap))
        return -EINVAL;
    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        int nd = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, nd++)
            if (nd < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
        if (nd == 0)
            return -EINVAL;
        for (; nd < 3; nd++)
            frac_ms *= 10;
    }
    int off_min = 0;
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
        off_min = 0;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
        off_min = (oh * 60 + om) * (*p == '+' ? 1 : -1);
    } else {
        return -EINVAL;
    }
    int64_t secs = days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec - off_min * 60;
    *ms = secs * 1000 + frac_ms;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Parsers */

void cmh_aws_creds_doc_clear(struct cmh_aws_creds_doc *doc)
{
    cmh_free_secret(doc->access_key_id);
    cmh_free_secret(doc->secret_access_key);
    cmh_free_secret(doc->session_token);
    cmh_free(doc->error_code);
    cmh_free(doc->error_message);
    memset(doc, 0, sizeof *doc);
}

/* -EPROTO when key holds something other than a string; *out NULL when absent or null. */
static int json_str(json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -EPROTO;
    *out = json_string_value(v);
    return 0;
}

int cmh_aws_creds_parse_json(const char *buf, size_t len, struct cmh_aws_creds_doc *doc)
{
    memset(doc, 0, sizeof *doc);
    if (len > CMH_AWS_DOC_MAX)
        return -EPROTO;
    json_error_t err;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
    int rc = -EPROTO;
    if (root == NULL || !json_is_object(root))
        goto out;
    const char *code, *msg, *akid, *secret, *token, *exp;
    if (json_str(root, "Code", &code) || json_str(root, "Message", &msg) ||
        json_str(root, "AccessKeyId", &akid) || json_str(root, "SecretAccessKey", &secret) ||
        json_str(root, "Token", &token) || json_str(root, "Expiration", &exp))
        goto out;
    if (code == NULL && akid == NULL) {
        /* the container agents answer errors as {"code": ..., "message": ...} */
        if (json_str(root, "code", &code) || json_str(root, "message", &msg) || code == NULL)
            goto out;
    }
    if (code != NULL && strcmp(code, "Success") != 0) {
        rc = -ENOMEM;
        doc->error_code = cmh_strdup(code);
        doc->error_message = cmh_strdup(msg != NULL ? msg : "");
        if (doc->error_code == NULL || doc->error_message == NULL)
            goto out;
        rc = 0;
        goto out;
    }
    if (akid == NULL || secret == NULL || *akid == '\0' || *secret == '\0' || !valid_token(akid) ||
        !valid_token(secret) || (token != NULL && !valid_token(token)))
        goto out;
    if (exp != NULL && cmh_aws_parse_time(exp, &doc->expires_ms) != 0)
        goto out;
    rc = -ENOMEM;
    doc->access_key_id = cmh_strdup(akid);
    doc->secret_access_key = cmh_strdup(secret);
    doc->session_token = token != NULL ? cmh_strdup(token) : NULL;
    if (doc->access_key_id == NULL || doc->secret_access_key == NULL ||
        (token != NULL && doc->session_token == NULL))
        goto out;
    rc = 0;
out:
    if (rc != 0)
        cmh_aws_creds_doc_clear(doc);
    json_decref(root);
    return rc;
}

/* The elements we know, by position; anything else is skipped whole. */
enum xel {
    X_UNKNOWN,
    X_RESPONSE,    /* AssumeRoleWithWebIdentityResponse */
    X_ERRRESPONSE, /* ErrorResponse */
    X_RESULT,      /* AssumeRoleWithWebIdentityResult */
    X_CREDENTIALS,
    X_ERROR,
    X_FIELD, /* a text field we capture */
};

enum xfield { F_AKID, F_SECRET, F_TOKEN, F_EXP, F_CODE, F_MSG, F_COUNT };

struct xstate {
    XML_Parser xp;
    int depth;
    enum xel path[8];
    int skip_depth; /* > 0: inside an unknown element that started at this depth */
    int field;      /* capturing this field, or -1 */
    char *text[F_COUNT];
    int seen[F_COUNT];
    char buf[FIELD_MAX];
    size_t blen;
    int root;
    int plain_role; /* AssumeRoleResponse, not AssumeRoleWithWebIdentityResponse */
    int error;      /* errno-style, set before stopping the parser */
};

static const char *local_name(const char *n)
{
    const char *c = strrchr(n, ':');
    return c != NULL ? c + 1 : n;
}

static void x_fail(struct xstate *x, int err)
{
    if (x->error == 0)
        x->error = err;
    XML_StopParser(x->xp, XML_FALSE);
}

static void XMLCALL x_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
    struct xstate *x = ud;
    const char *n = local_name(name);
    if (x->field >= 0) {
        x_fail(x, -EPROTO); /* an element inside a text field */
        return;
    }
    int d = x->depth++;
    if (x->skip_depth > 0)
        return;
    if (d >= (int)(sizeof x->path / sizeof x->path[0])) {
        x->skip_depth = d + 1;
        return;
    }
    enum xel parent = d > 0 ? x->path[d - 1] : X_UNKNOWN;
    enum xel me = X_UNKNOWN;
    int field = -1;
    if (d == 0) {
        if (strcmp(n, "AssumeRoleWithWebIdentityResponse") == 0 ||
            strcmp(n, "AssumeRoleResponse") == 0) {
            me = X_RESPONSE;
            x->plain_role = n[10] == 'R'; /* "AssumeRoleResponse" */
        } else if (strcmp(n, "ErrorResponse") == 0)
            me = X_ERRRESPONSE;
        else {
            x_fail(x, -EPROTO);
            return;
        }
        x->root = me;
    } else if (parent == X_RESPONSE &&
               strcmp(n, x->plain_role ? "AssumeRoleResult" : "AssumeRoleWithWebIdentityResult") ==
                   0) {
        me = X_RESULT;
    } else if (parent == X_RESULT && strcmp(n, "Credentials") == 0) {
        me = X_CREDENTIALS;
    } else if (parent == X_ERRRESPONSE && strcmp(n, "Error") == 0) {
        me = X_ERROR;
    } else if (parent == X_CREDENTIALS) {
        field = strcmp(n, "AccessKeyId") == 0       ? F_AKID
                : strcmp(n, "SecretAccessKey") == 0 ? F_SECRET
                : strcmp(n, "SessionToken") == 0    ? F_TOKEN
                : strcmp(n, "Expiration") == 0      ? F_EXP
                                                    : -1;
    } else if (parent == X_ERROR) {
        field = strcmp(n, "Code") == 0 ? F_CODE : strcmp(n, "Message") == 0 ? F_MSG : -1;
    }
    if (field >= 0) {
        if (x->seen[field]++) {
            x_fail(x, -EPROTO); /* a field twice: which one would be right? */
            return;
        }
        me = X_FIELD;
        x->field = field;
        x->blen = 0;
    } else if (me == X_UNKNOWN) {
        x->skip_depth = d + 1;
        return;
    }
    x->path[d] = me;
}

static void XMLCALL x_end(void *ud, const XML_Char *name)
{
    struct xstate *x = ud;
    int d = --x->depth;
    if (x->skip_depth > 0) {
        if (d + 1 == x->skip_depth)
            x->skip_depth = 0;
        return;
    }
    if (x->field >= 0 && x->path[d] == X_FIELD) {
        x->text[x->field] = cmh_strndup(x->buf, x->blen);
        if (x->text[x->field] == NULL)
            x_fail(x, -ENOMEM);
        x->field = -1;
    }
}

static void XMLCALL x_text(void *ud, const XML_Char *s, int len)
{
    struct xstate *x = ud;
    if (x->field < 0 || x->skip_depth > 0 || len <= 0)
        return;
    if ((size_t)len > sizeof x->buf - x->blen) {
        x_fail(x, -EPROTO);
        return;
    }
    memcpy(x->buf + x->blen, s, (size_t)len);
    x->blen += (size_t)len;
}

static void XMLCALL x_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                              const XML_Char *pubid, int has_internal_subset)
{
    x_fail(ud, -EPROTO); /* no DTDs, so no entity expansion of any kind */
}

static char *trim_dup(const char *s)
{
    if (s == NULL)
        return NULL;
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t'))
        n--;
    return cmh_strndup(s, n);
}

int cmh_aws_creds_parse_sts_xml(const char *buf, size_t len, struct cmh_aws_creds_doc *doc)
{
    /* expat's buffers hold the document, credentials included: wiped when released. */
    static const XML_Memory_Handling_Suite mem = {cmh_malloc, cmh_realloc_secret, cmh_free_secret};
    memset(doc, 0, sizeof *doc);
    if (len > CMH_AWS_DOC_MAX)
        return -EPROTO;
    struct xstate *x = cmh_calloc(1, sizeof *x);
    if (x == NULL)
        return -ENOMEM;
    int rc = -ENOMEM;
    x->field = -1;
    x->xp = XML_ParserCreate_MM(NULL, &mem, NULL);
    if (x->xp == NULL)
        goto out;
    XML_SetUserData(x->xp, x);
    XML_SetElementHandler(x->xp, x_start, x_end);
    XML_SetCharacterDataHandler(x->xp, x_text);
    XML_SetStartDoctypeDeclHandler(x->xp, x_doctype);
    if (XML_Parse(x->xp, buf, (int)len, XML_TRUE) != XML_STATUS_OK) {
        rc = x->error != 0 ? x->error : -EPROTO;
        if (XML_GetErrorCode(x->xp) == XML_ERROR_NO_MEMORY)
            rc = -ENOMEM;
        goto out;
    }
    rc = -EPROTO;
    if (x->root == X_ERRRESPONSE) {
        if (x->text[F_CODE] == NULL || x->text[F_CODE][0] == '\0')
            goto out;
        rc = -ENOMEM;
        doc->error_code = trim_dup(x->text[F_CODE]);
        doc->error_message = trim_dup(x->text[F_MSG] != NULL ? x->text[F_MSG] : "");
        if (doc->error_code == NULL || doc->error_message == NULL)
            goto out;
        rc = 0;
        goto out;
    }
    if (x->root != X_RESPONSE || x->text[F_AKID] == NULL || x->text[F_SECRET] == NULL ||
        x->text[F_TOKEN] == NULL || x->text[F_EXP] == NULL)
        goto out;
    rc = -ENOMEM;
    doc->access_key_id = trim_dup(x->text[F_AKID]);
    doc->secret_access_key = trim_dup(x->text[F_SECRET]);
    doc->session_token = trim_dup(x->text[F_TOKEN]);
    char *exp = trim_dup(x->text[F_EXP]);
    if (doc->access_key_id == NULL || doc->secret_access_key == NULL ||
        doc->session_token == NULL || exp == NULL) {
        cmh_free(exp);
        goto out;
    }
    rc = -EPROTO;
    int bad = cmh_aws_parse_time(exp, &doc->expires_ms) != 0;
    cmh_free(exp);
    if (bad || !valid_token(doc->access_key_id) || !valid_token(doc->secret_access_key) ||
        !valid_token(doc->session_token))
        goto out;
    rc = 0;
out:
    if (rc != 0)
        cmh_aws_creds_doc_clear(doc);
    for (int i = 0; i < F_COUNT; i++)
        cmh_free_secret(x->text[i]);
    if (x->xp != NULL)
        XML_ParserFree(x->xp);
    cmh_free_secret(x); /* its text buffer held the last field */
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * IMDS text answers (pure) */

/* The length of the first line of body: up to the first CR or LF, or all of it. */
static size_t first_line(const char *body, size_t len)
{
    size_t n = 0;
    while (n < len && body[n] != '\r' && body[n] != '\n')
        n++;
    return n;
}

static int dup_checked(const char *s, size_t n, int ok, char **out)
{
    *out = NULL;
    if (!ok)
        return -EPROTO;
    *out = cmh_strndup(s, n);
    return *out != NULL ? 0 : -ENOMEM;
}

int cmh_aws_imds_parse_region(const char *body, size_t len, char **out)
{
    size_t n = first_line(body, len);
    return dup_checked(body, n, cmh_aws_region_valid(body, n), out);
}

int cmh_aws_imds_parse_role(const char *body, size_t len, char **out)
{
    size_t n = first_line(body, len);
    return dup_checked(
        body, n, cmh_aws_token_valid(body, n) && n <= 128 && memchr(body, '/', n) == NULL, out);
}

int cmh_aws_imds_parse_text(const char *body, size_t len, size_t max, char **out)
{
    return dup_checked(body, len, len <= max && cmh_aws_token_valid(body, len), out);
}
