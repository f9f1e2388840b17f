/* AWS credential provider chain, region and cluster id (see include/cmh/aws/aws_creds.h).
 *
 * The chain is chosen once, at new(), from the environment, in the order of the AWS SDKs:
 * environment keys, web identity (IRSA), container credentials (ECS / EKS Pod Identity), IMDSv2.
 * The first source that is configured is the one used: when it fails we report its error rather
 * than fall through to the node's instance role, which would publish under another identity.
 *
 * Every network step is one curl_uv request owned by a heap `struct call`, so a step that times
 * out (our own per-step timer: curl_uv has one timeout per instance) or a provider that is freed
 * can abandon its request; the call frees itself when curl_uv finishes with it. Results are always
 * delivered from a 0 ms timer, never inside the call that asked. expat is included here only. */
#include "cmh/aws/aws_creds.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/aws/endpoint.h"
#include "cmh/aws/ini.h"
#include "cmh/http/curl_uv.h"
#include "cmh/core/log.h"
#include "cmh/aws/sigv4.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <expat.h>
#include <jansson.h>

#define REFRESH_AHEAD_MS   (5 * 60 * 1000) /* refresh credentials this long before expiry */
#define STALE_GRACE_MS     (10 * 1000)     /* a failed refresh may serve creds valid this long */
#define IMDS_DEFAULT       "http://169.254.169.254"
#define IMDS_DEFAULT_V6    "http://[fd00:ec2::254]"
#define ECS_DEFAULT        "http://169.254.170.2"
#define IMDS_TOKEN_TTL_S   21600
#define IMDS_ATTEMPTS      3
#define FILE_MAX           (64 * 1024)  /* token files */
#define DOC_MAX            (256 * 1024) /* credential documents */
#define FIELD_MAX          (16 * 1024)  /* one XML text field */
#define DEFAULT_CLUSTER_ID "k8s-cluster"
#define WHY_MAX            512

enum source {
    SRC_NONE,
    SRC_ENV,
    SRC_WEB_IDENTITY,
    SRC_CONTAINER,
    SRC_IMDS,
    SRC_PROFILE,    /* static keys of a profile in the shared files */
    SRC_ASSUME_ROLE /* a profile's role_arn, assumed with its source_profile's keys */
};

static const char *const source_names[] = {"none", "environment", "web-identity", "container",
                                           "imds", "profile",     "assume-role"};

/* Instance tags that name the cluster, in the original helper's order (it read them with
 * ec2:DescribeInstances; its last fallback, the instance's Name tag, names an instance, not a
 * cluster, and is not used), then the tag Karpenter puts on its nodes. IMDS serves them only with
 * instance metadata tags enabled; no IAM permission is involved. */
static const char *const cluster_tags[] = {"eks:cluster-name", "CLUSTER_ID", "eks:eks-cluster-name",
                                           "aws:eks:cluster-name"};

struct waiter {
    struct waiter *next;
    cmh_aws_creds_cb creds_cb;
    cmh_aws_resolve_cb resolve_cb;
    void *arg;
};

struct job;
typedef void (*step_fn)(struct job *j, const struct cmh_curl_uv_response *res);
typedef void (*file_fn)(struct job *j, int rc, const char *data);
typedef void (*next_fn)(struct job *j);

/* One HTTP request; outlives its job when abandoned (job == NULL), then frees itself. */
struct call {
    struct cmh_curl_uv_req req;
    struct job *job;
    char *url;
    char *body;
};

/* A sequence of steps (refresh the credentials, or resolve region + cluster id). */
struct job {
    struct cmh_aws_provider *p;
    uv_timer_t timer; /* the timeout of the step in flight */
    struct call *call;
    step_fn on_resp;
    int busy;
    int finished; /* result set, waiting for the defer timer */
    int rc;
    char why[WHY_MAX];
    struct waiter *waiting; /* want the result of the run in progress */
    struct waiter *ready;   /* cache hits, delivered from the defer timer */
    /* the request being made, kept for a retry */
    const char *method;
    char *url;
    char *hdr[8];
    size_t nhdr;
    char *body;
    int allow_http;
    int no_proxy; /* IMDS and container credentials: never through a proxy */
    uint64_t timeout_ms;
    unsigned attempts;
    next_fn after_token;
    /* a token file being read with uv_fs */
    uv_fs_t fs;
    int fs_busy;
    uv_file fd;
    char *fbuf;
    size_t flen;
    file_fn on_file;
    char *role;
};

struct cmh_aws_provider {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    enum source source;
    /* configuration, read from the environment at new() */
    char *role_arn, *token_file, *session_name, *sts_url;
    char *src_akid, *src_secret, *src_token, *external_id; /* SRC_ASSUME_ROLE's source profile */
    char *container_url, *container_token, *container_token_file;
    char *imds_base;
    int imds_disabled;
    uint64_t imds_timeout_ms, sts_timeout_ms;
    /* results */
    char *region, *cluster_id;
    const char *cluster_from, *region_from;
    char *instance_id;  /* the instance this runs on: opts->instance_id, or IMDS with lookup */
    int cluster_lookup; /* opts->cluster_lookup: no tags from IMDS, no default cluster id */
    int resolved;
    struct cmh_aws_credentials creds;
    char *c_akid, *c_secret, *c_token;
    int have_creds;
    char *imds_token;
    uint64_t imds_token_until; /* uv_now */
    struct job cj, rj;         /* credentials, resolve */
    uv_timer_t defer;
    unsigned open_handles;
    int closing;
    uint64_t requests;
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++)
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i][n + 1] != '\0' ? envp[i] + n + 1 : NULL;
    return NULL;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? cmh_strdup(s) : NULL;
}

/* Copies s without trailing '/' characters. */
static char *dup_base(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        n--;
    return cmh_strndup(s, n);
}

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = cmh_malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Appends the RFC 3986 percent-encoding of s (form values of the Query protocol). */
static size_t url_encode(char *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
        if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
            *c == '-' || *c == '_' || *c == '.' || *c == '~') {
            if (out != NULL)
                out[n] = (char)*c;
            n++;
        } else {
            if (out != NULL) {
                out[n] = '%';
                out[n + 1] = hex[*c >> 4];
                out[n + 2] = hex[*c & 15];
            }
            n += 3;
        }
    }
    return n;
}

static int valid_region_n(const char *s, size_t n)
{
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

static int valid_region(const char *s)
{
    return valid_region_n(s, strlen(s));
}

/* A header value or a file token: printable, no CR/LF (header injection) or NUL, not empty. */
static int valid_token_n(const char *s, size_t n)
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
    return valid_token_n(s, strlen(s));
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
    if (len > DOC_MAX)
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
    if (len > DOC_MAX)
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
    return dup_checked(body, n, valid_region_n(body, n), out);
}

int cmh_aws_imds_parse_role(const char *body, size_t len, char **out)
{
    size_t n = first_line(body, len);
    return dup_checked(body, n, valid_token_n(body, n) && n <= 128 && memchr(body, '/', n) == NULL,
                       out);
}

int cmh_aws_imds_parse_text(const char *body, size_t len, size_t max, char **out)
{
    return dup_checked(body, len, len <= max && valid_token_n(body, len), out);
}

const char *cmh_aws_imds_cluster_tag(const char *body, size_t len)
{
    for (size_t t = 0; t < sizeof cluster_tags / sizeof cluster_tags[0]; t++) {
        size_t tl = strlen(cluster_tags[t]);
        size_t i = 0;
        while (i < len) {
            size_t n = first_line(body + i, len - i);
            if (n == tl && memcmp(body + i, cluster_tags[t], n) == 0)
                return cluster_tags[t];
            i += n;
            while (i < len && (body[i] == '\r' || body[i] == '\n'))
                i++;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Jobs: requests with a timeout and retries, token files, results delivered from a timer */

static void on_defer(uv_timer_t *t);
static void job_finish(struct job *j, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_finish(struct job *j, int rc, const char *fmt, ...)
{
    j->rc = rc;
    j->why[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->why, sizeof j->why, fmt, ap);
        va_end(ap);
    }
    j->finished = 1;
    if (!j->p->closing)
        uv_timer_start(&j->p->defer, on_defer, 0, 0);
}

static void call_free(struct call *c)
{
    cmh_free(c->url);
    cmh_free_secret(c->body); /* STS: the web identity token */
    cmh_free(c);
}

static void job_clear_request(struct job *j)
{
    cmh_free(j->url);
    j->url = NULL;
    for (size_t i = 0; i < j->nhdr; i++) {
        cmh_free_secret(j->hdr[i]); /* an IMDS token or a container authorization token */
        j->hdr[i] = NULL;
    }
    j->nhdr = 0;
    cmh_free_secret(j->body);
    j->body = NULL;
}

static void on_call_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct call *c = container_of(req, struct call, req);
    struct job *j = c->job;
    if (j != NULL) {
        j->call = NULL;
        uv_timer_stop(&j->timer);
        j->on_resp(j, res);
    }
    call_free(c);
}

static void on_job_timer(uv_timer_t *t)
{
    struct job *j = container_of(t, struct job, timer);
    if (j->call == NULL)
        return;
    j->call->job = NULL; /* abandoned: frees itself when curl_uv is done with it */
    j->call = NULL;
    char text[64];
    snprintf(text, sizeof text, "no answer within %llu ms", (unsigned long long)j->timeout_ms);
    struct cmh_curl_uv_response res = {
        .error = CMH_CURL_ERR_TIMEOUT, .error_text = text, .body = "", .retry_after_ms = -1};
    j->on_resp(j, &res);
}

/* (Re)sends the request described in j. */
static int job_send(struct job *j)
{
    struct cmh_aws_provider *p = j->p;
    struct call *c = cmh_calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->url = cmh_strdup(j->url);
    c->body = j->body != NULL ? cmh_strdup(j->body) : NULL;
    if (c->url == NULL || (j->body != NULL && c->body == NULL)) {
        call_free(c);
        return -ENOMEM;
    }
    c->job = j;
    c->req.method = j->method;
    c->req.url = c->url;
    c->req.headers = (const char *const *)j->hdr;
    c->req.nheaders = j->nhdr;
    c->req.body = c->body;
    c->req.body_len = c->body != NULL ? strlen(c->body) : 0;
    c->req.max_body = DOC_MAX;
    c->req.allow_http = j->allow_http;
    c->req.no_proxy = j->no_proxy;
    int rc = cmh_curl_uv_start(p->curl, &c->req, on_call_done);
    if (rc != 0) {
        call_free(c);
        return rc;
    }
    p->requests++;
    j->call = c;
    uv_timer_start(&j->timer, on_job_timer, j->timeout_ms, 0);
    return 0;
}

/* Takes url, h0, h1 and body (allocated, may be NULL); starts the request. A credential
 * endpoint (link-local or loopback: IMDS, Pod Identity, ECS) is reached directly, never through
 * the proxy of HTTP_PROXY/ALL_PROXY, which would see and could answer the request; STS is an AWS
 * service endpoint and honours HTTPS_PROXY/NO_PROXY as the AWS SDKs do. */
static int job_request_hdrs(struct job *j, const char *method, char *url, char **hdr, size_t nhdr,
                            char *body, int allow_http, int credential_endpoint,
                            uint64_t timeout_ms, step_fn on_resp)
{
    job_clear_request(j);
    j->method = method;
    j->url = url;
    for (size_t i = 0; i < nhdr; i++)
        if (hdr[i] != NULL && j->nhdr < sizeof j->hdr / sizeof j->hdr[0])
            j->hdr[j->nhdr++] = hdr[i];
    j->body = body;
    j->allow_http = allow_http;
    j->no_proxy = credential_endpoint;
    j->timeout_ms = timeout_ms;
    j->on_resp = on_resp;
    j->attempts = 1;
    if (url == NULL)
        return -ENOMEM;
    return job_send(j);
}

static int job_request(struct job *j, const char *method, char *url, char *h0, char *h1, char *body,
                       int allow_http, int credential_endpoint, uint64_t timeout_ms,
                       step_fn on_resp)
{
    char *hdr[2] = {h0, h1};
    return job_request_hdrs(j, method, url, hdr, 2, body, allow_http, credential_endpoint,
                            timeout_ms, on_resp);
}

/* One more attempt of the same request after a 5xx or a broken connection (IMDS only). */
static int job_retry(struct job *j, const struct cmh_curl_uv_response *res)
{
    int transient = (res->error == CMH_CURL_OK && res->status >= 500) ||
                    res->error == CMH_CURL_ERR_CONNECT || res->error == CMH_CURL_ERR_RESET;
    if (!transient || j->attempts >= IMDS_ATTEMPTS || j->p->closing)
        return 0;
    j->attempts++;
    CMH_LOG(j->p->log, CMH_LOG_DEBUG, "aws: retrying metadata request", CMH_URL("url", j->url),
            CMH_UINT("attempt", j->attempts), CMH_INT("status", res->status),
            CMH_STR("error", cmh_curl_uv_error_name(res->error)));
    return job_send(j) == 0;
}

static void describe(const struct cmh_curl_uv_response *res, char *buf, size_t len)
{
    if (res->error != CMH_CURL_OK)
        snprintf(buf, len, "%s (%s)", cmh_curl_uv_error_name(res->error),
                 res->error_text != NULL ? res->error_text : "");
    else
        snprintf(buf, len, "HTTP %ld", res->status);
}

/* Token files are read again on every refresh (the kubelet rotates them), with uv_fs. */
static void fs_done(struct job *j, int rc)
{
    char *data = j->fbuf;
    j->fbuf = NULL;
    j->fs_busy = 0;
    if (j->p->closing) {
        cmh_free_secret(data);
        return;
    }
    if (rc == 0 && data != NULL) {
        data[j->flen] = '\0';
        size_t n = j->flen;
        while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r' || data[n - 1] == ' ' ||
                         data[n - 1] == '\t'))
            data[--n] = '\0';
    }
    j->on_file(j, rc, data);
    cmh_free_secret(data); /* a web identity or a container authorization token */
}

static void maybe_free(struct cmh_aws_provider *p);

static void on_fs_close(uv_fs_t *req)
{
    struct job *j = container_of(req, struct job, fs);
    int rc = (int)(intptr_t)req->data;
    uv_fs_req_cleanup(req);
    fs_done(j, rc);
    if (j->p->closing)
        maybe_free(j->p);
}

/* Closes the file; the result rc rides in fs.data (uv_fs_close leaves data alone). */
static void fs_finish(struct job *j, int rc)
{
    j->fs.data = (void *)(intptr_t)rc;
    if (uv_fs_close(j->p->loop, &j->fs, j->fd, on_fs_close) != 0) {
        fs_done(j, rc);
        if (j->p->closing)
            maybe_free(j->p);
    }
}

static void on_fs_read(uv_fs_t *req)
{
    struct job *j = container_of(req, struct job, fs);
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    if (n < 0 || j->p->closing) {
        fs_finish(j, n < 0 ? (int)n : -ECANCELED);
        return;
    }
    j->flen += (size_t)n;
    if (n == 0) {
        fs_finish(j, 0);
        return;
    }
    if (j->flen >= FILE_MAX) {
        fs_finish(j, -EFBIG);
        return;
    }
    uv_buf_t b = uv_buf_init(j->fbuf + j->flen, (unsigned)(FILE_MAX - j->flen));
    if (uv_fs_read(j->p->loop, &j->fs, j->fd, &b, 1, -1, on_fs_read) != 0)
        fs_finish(j, -EIO);
}

static void on_fs_open(uv_fs_t *req)
{
    struct job *j = container_of(req, struct job, fs);
    ssize_t fd = req->result;
    uv_fs_req_cleanup(req);
    if (fd < 0) {
        fs_done(j, (int)fd);
        if (j->p->closing)
            maybe_free(j->p);
        return;
    }
    j->fd = (uv_file)fd;
    if (j->p->closing) {
        fs_finish(j, -ECANCELED);
        return;
    }
    j->fbuf = cmh_malloc(FILE_MAX + 1);
    j->flen = 0;
    if (j->fbuf == NULL) {
        fs_finish(j, -ENOMEM);
        return;
    }
    uv_buf_t b = uv_buf_init(j->fbuf, FILE_MAX);
    if (uv_fs_read(j->p->loop, &j->fs, j->fd, &b, 1, -1, on_fs_read) != 0)
        fs_finish(j, -EIO);
}

/* Reads path; on_file(j, 0, contents without trailing white space) or (j, -errno, NULL). */
static int job_read_file(struct job *j, const char *path, file_fn on_file)
{
    j->on_file = on_file;
    j->fbuf = NULL;
    int rc = uv_fs_open(j->p->loop, &j->fs, path, O_RDONLY | O_CLOEXEC, 0, on_fs_open);
    if (rc != 0)
        return rc;
    j->fs_busy = 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Delivery */

static struct waiter *take_fifo(struct waiter **list)
{
    struct waiter *w = *list, *rev = NULL;
    *list = NULL;
    while (w != NULL) {
        struct waiter *next = w->next;
        w->next = rev;
        rev = w;
        w = next;
    }
    return rev;
}

static int creds_fresh(const struct cmh_aws_provider *p, int64_t ahead_ms)
{
    return p->have_creds &&
           (p->creds.expires_ms == 0 || p->creds.expires_ms - wall_ms() > ahead_ms);
}

static void deliver_creds(struct cmh_aws_provider *p, struct waiter *w, int rc, const char *why)
{
    while (w != NULL) {
        struct waiter *next = w->next;
        if (p->closing)
            w->creds_cb(p, -ECANCELED, NULL, "credential provider closed", w->arg);
        else
            w->creds_cb(p, rc, rc == 0 ? &p->creds : NULL, rc == 0 ? "" : why, w->arg);
        cmh_free(w);
        w = next;
    }
}

static void deliver_resolve(struct cmh_aws_provider *p, struct waiter *w, int rc, const char *why)
{
    while (w != NULL) {
        struct waiter *next = w->next;
        if (p->closing)
            w->resolve_cb(p, -ECANCELED, NULL, NULL, "credential provider closed", w->arg);
        else if (rc == 0)
            w->resolve_cb(p, 0, p->region, p->cluster_id, "", w->arg);
        else
            w->resolve_cb(p, rc, NULL, NULL, why, w->arg);
        cmh_free(w);
        w = next;
    }
}

static void creds_refresh_start(struct cmh_aws_provider *p);
static void resolve_start(struct cmh_aws_provider *p);

static void resolve_default_cluster(struct job *j, const char *why);
static void resolve_done(struct job *j);

/* The token step failed. Resolving can still finish with a default cluster id when the region is
 * known; everything else fails with why. */
static void resolve_for_lookup(struct job *j, const char *why);

static void imds_token_failed(struct job *j, int rc, const char *why)
{
    struct cmh_aws_provider *p = j->p;
    if (j == &p->rj && p->region != NULL && p->cluster_lookup) {
        resolve_for_lookup(j, why);
        return;
    }
    if (j == &p->rj && p->region != NULL) {
        resolve_default_cluster(j, why);
        if (!j->finished)
            resolve_done(j);
        return;
    }
    job_finish(j, rc, "%s", why);
}

static void on_defer(uv_timer_t *t)
{
    struct cmh_aws_provider *p = container_of(t, struct cmh_aws_provider, defer);
    char why[WHY_MAX];
    if (p->cj.finished) {
        struct job *j = &p->cj;
        j->finished = 0;
        j->busy = 0;
        int rc = j->rc;
        snprintf(why, sizeof why, "%s", j->why);
        if (rc != 0 && creds_fresh(p, STALE_GRACE_MS)) {
            CMH_LOG(p->log, CMH_LOG_WARN, "aws: credential refresh failed, using the cached ones",
                    CMH_STR("source", source_names[p->source]), CMH_STR("why", why),
                    CMH_INT("expires_in_s", (p->creds.expires_ms - wall_ms()) / 1000));
            rc = 0;
        }
        deliver_creds(p, take_fifo(&j->waiting), rc, why);
    }
    if (p->closing)
        return;
    if (p->rj.finished) {
        struct job *j = &p->rj;
        j->finished = 0;
        j->busy = 0;
        snprintf(why, sizeof why, "%s", j->why);
        deliver_resolve(p, take_fifo(&j->waiting), j->rc, why);
    }
    if (p->closing)
        return;
    if (p->cj.ready != NULL) {
        if (creds_fresh(p, REFRESH_AHEAD_MS)) {
            deliver_creds(p, take_fifo(&p->cj.ready), 0, "");
        } else {
            /* invalidated or expiring since the get: join a refresh */
            struct waiter *w = p->cj.ready;
            while (w->next != NULL)
                w = w->next;
            w->next = p->cj.waiting;
            p->cj.waiting = p->cj.ready;
            p->cj.ready = NULL;
            if (!p->cj.busy)
                creds_refresh_start(p);
        }
    }
    if (p->closing)
        return;
    if (p->rj.ready != NULL)
        deliver_resolve(p, take_fifo(&p->rj.ready), 0, "");
}

static void defer_kick(struct cmh_aws_provider *p)
{
    if (!p->closing)
        uv_timer_start(&p->defer, on_defer, 0, 0);
}

/* ---------------------------------------------------------------------------------------------
 * IMDSv2 */

static void on_imds_token(struct job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    char d[320], why[WHY_MAX];
    if (job_retry(j, res))
        return;
    if (res->error == CMH_CURL_ERR_TIMEOUT) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: IMDSv2 token request timed out: likely the instance's metadata hop limit",
                CMH_STR("reason", "imds-hop-limit"),
                CMH_STR("hint", "set HttpPutResponseHopLimit to 2 (aws ec2 "
                                "modify-instance-metadata-options --http-put-response-hop-limit "
                                "2), or use IRSA / EKS Pod Identity"),
                CMH_UINT("timeout_ms", j->timeout_ms));
        snprintf(why, sizeof why,
                 "IMDSv2 token request (PUT /latest/api/token) timed out after %llu ms: likely "
                 "the metadata PUT response hop limit is 1, too low for a pod; set it to 2, or "
                 "use IRSA / EKS Pod Identity",
                 (unsigned long long)j->timeout_ms);
        imds_token_failed(j, -ETIMEDOUT, why);
        return;
    }
    if (res->error == CMH_CURL_OK && res->status == 403) {
        imds_token_failed(j, -EACCES, "IMDSv2 token request forbidden (403): IMDS is disabled");
        return;
    }
    if (res->error != CMH_CURL_OK || res->status != 200 || res->body_len == 0 ||
        res->body_len > 1024) {
        describe(res, d, sizeof d);
        snprintf(why, sizeof why, "IMDSv2 token request failed: %s", d);
        imds_token_failed(j, res->error == CMH_CURL_ERR_CONNECT ? -ECONNREFUSED : -EIO, why);
        return;
    }
    char *tok;
    int rc = cmh_aws_imds_parse_text(res->body, res->body_len, 1024, &tok);
    if (rc != 0) {
        job_finish(j, rc, "IMDSv2 token unusable");
        return;
    }
    cmh_free_secret(p->imds_token);
    p->imds_token = tok;
    p->imds_token_until = uv_now(p->loop) + (uint64_t)(IMDS_TOKEN_TTL_S - 60) * 1000;
    j->after_token(j);
}

/* Gets (or reuses) the session token, then runs next. */
static void imds_with_token(struct job *j, next_fn next)
{
    struct cmh_aws_provider *p = j->p;
    j->after_token = next;
    if (p->imds_token != NULL && uv_now(p->loop) < p->imds_token_until) {
        next(j);
        return;
    }
    int rc = job_request(j, "PUT", str_printf("%s/latest/api/token", p->imds_base),
                         str_printf("X-aws-ec2-metadata-token-ttl-seconds: %d", IMDS_TOKEN_TTL_S),
                         NULL, NULL, 1, 1, p->imds_timeout_ms, on_imds_token);
    if (rc != 0)
        job_finish(j, rc, "cannot start the IMDSv2 token request");
}

static void imds_get(struct job *j, const char *path, step_fn on_resp)
{
    struct cmh_aws_provider *p = j->p;
    int rc = job_request(j, "GET", str_printf("%s%s", p->imds_base, path),
                         str_printf("X-aws-ec2-metadata-token: %s", p->imds_token), NULL, NULL, 1,
                         1, p->imds_timeout_ms, on_resp);
    if (rc != 0)
        job_finish(j, rc, "cannot start the IMDS request %s", path);
}

/* A 401 means the token expired or was revoked: the next run gets a new one. The string stays (the
 * other job may be about to use it) until a new token replaces it. */
static void imds_forget_token_on_401(struct job *j, const struct cmh_curl_uv_response *res)
{
    if (res->error == CMH_CURL_OK && res->status == 401)
        j->p->imds_token_until = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Credentials */

static void creds_take(struct cmh_aws_provider *p, struct cmh_aws_creds_doc *doc)
{
    cmh_free_secret(p->c_akid);
    cmh_free_secret(p->c_secret);
    cmh_free_secret(p->c_token);
    p->c_akid = doc->access_key_id;
    p->c_secret = doc->secret_access_key;
    p->c_token = doc->session_token;
    doc->access_key_id = doc->secret_access_key = doc->session_token = NULL;
    p->creds.access_key_id = p->c_akid;
    p->creds.secret_access_key = p->c_secret;
    p->creds.session_token = p->c_token;
    p->creds.expires_ms = doc->expires_ms;
    p->creds.source = source_names[p->source];
    p->have_creds = 1;
    char when[32] = "never";
    if (doc->expires_ms != 0)
        cmh_fmt_rfc3339(when, sizeof when, doc->expires_ms);
    CMH_LOG(p->log, CMH_LOG_INFO, "aws: credentials refreshed",
            CMH_STR("source", source_names[p->source]), CMH_STR("expires", when));
}

/* Credentials from a JSON document (IMDS, container agents). */
static void creds_from_json(struct job *j, const struct cmh_curl_uv_response *res, const char *what)
{
    struct cmh_aws_creds_doc doc;
    int rc = cmh_aws_creds_parse_json(res->body, res->body_len, &doc);
    if (rc != 0) {
        job_finish(j, rc, "%s: the credentials document is not valid", what);
        return;
    }
    if (doc.error_code != NULL) {
        job_finish(j, -EACCES, "%s: %s: %s", what, doc.error_code, doc.error_message);
        cmh_aws_creds_doc_clear(&doc);
        return;
    }
    if (j->p->source != SRC_CONTAINER && doc.session_token == NULL) {
        cmh_aws_creds_doc_clear(&doc);
        job_finish(j, -EPROTO, "%s: the credentials document has no Token", what);
        return;
    }
    creds_take(j->p, &doc);
    cmh_aws_creds_doc_clear(&doc);
    job_finish(j, 0, NULL);
}

static void on_imds_role_creds(struct job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (job_retry(j, res))
        return;
    imds_forget_token_on_401(j, res);
    if (res->error != CMH_CURL_OK || res->status != 200) {
        describe(res, d, sizeof d);
        job_finish(j, -EIO, "IMDS credentials of role %s: %s", j->role, d);
        return;
    }
    creds_from_json(j, res, "IMDS");
}

static void on_imds_role_list(struct job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (job_retry(j, res))
        return;
    imds_forget_token_on_401(j, res);
    if (res->error == CMH_CURL_OK && res->status == 404) {
        job_finish(j, -ENOENT,
                   "IMDS: no IAM role is attached to this instance (no instance "
                   "profile); attach one, or use IRSA / EKS Pod Identity");
        return;
    }
    if (res->error != CMH_CURL_OK || res->status != 200) {
        describe(res, d, sizeof d);
        job_finish(j, -EIO, "IMDS role listing: %s", d);
        return;
    }
    cmh_free(j->role);
    int rc = cmh_aws_imds_parse_role(res->body, res->body_len, &j->role);
    if (rc != 0) {
        job_finish(j, rc, "IMDS role listing: no usable role name");
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "/latest/meta-data/iam/security-credentials/%s", j->role);
    imds_get(j, path, on_imds_role_creds);
}

static void imds_creds_after_token(struct job *j)
{
    imds_get(j, "/latest/meta-data/iam/security-credentials/", on_imds_role_list);
}

static void on_container_creds(struct job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (res->error != CMH_CURL_OK || res->status != 200) {
        struct cmh_aws_creds_doc doc;
        describe(res, d, sizeof d);
        if (res->error == CMH_CURL_OK &&
            cmh_aws_creds_parse_json(res->body, res->body_len, &doc) == 0) {
            if (doc.error_code != NULL) {
                job_finish(j, -EACCES, "container credentials (%s): %s: %s", d, doc.error_code,
                           doc.error_message);
                cmh_aws_creds_doc_clear(&doc);
                return;
            }
            cmh_aws_creds_doc_clear(&doc);
        }
        char shown[512];
        cmh_url_redact(j->p->container_url, shown, sizeof shown);
        job_finish(j, -EIO, "container credentials from %s: %s", shown, d);
        return;
    }
    creds_from_json(j, res, "container credentials");
}

static void container_send(struct job *j, const char *auth)
{
    struct cmh_aws_provider *p = j->p;
    char *h = auth != NULL ? str_printf("Authorization: %s", auth) : NULL;
    if (auth != NULL && h == NULL) {
        job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    int rc = job_request(
        j, "GET", cmh_strdup(p->container_url), cmh_strdup("Accept: application/json"), h, NULL,
        strncasecmp(p->container_url, "http://", 7) == 0, 1, p->sts_timeout_ms, on_container_creds);
    if (rc != 0)
        job_finish(j, rc, "cannot start the container credentials request");
}

static void on_container_token_file(struct job *j, int rc, const char *data)
{
    if (rc != 0) {
        job_finish(j, rc, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: %s",
                   j->p->container_token_file, uv_strerror(rc));
        return;
    }
    if (!valid_token(data)) {
        job_finish(j, -EINVAL,
                   "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: empty, or not one line of text",
                   j->p->container_token_file);
        return;
    }
    container_send(j, data);
}

/* The STS endpoint: AWS_ENDPOINT_URL_STS / AWS_ENDPOINT_URL, else the region's, else the global
 * one. Allocated; NULL when out of memory. */
static char *sts_endpoint(const struct cmh_aws_provider *p)
{
    if (p->sts_url != NULL)
        return cmh_strdup(p->sts_url);
    if (p->region != NULL)
        return str_printf("https://sts.%s.amazonaws.com%s/", p->region,
                          strncmp(p->region, "cn-", 3) == 0 ? ".cn" : "");
    return cmh_strdup("https://sts.amazonaws.com/");
}

/* The form "Action=<action>&Version=2011-06-15" and the name/value pairs of kv (n strings; a NULL
 * value is left out), values percent-encoded. Allocated; NULL when out of memory. */
static char *sts_form(const char *action, const char *const *kv, size_t n)
{
    size_t len = strlen("Action=&Version=2011-06-15") + strlen(action) + 1;
    for (size_t i = 0; i + 1 < n; i += 2)
        if (kv[i + 1] != NULL)
            len += strlen(kv[i]) + 2 + url_encode(NULL, kv[i + 1]);
    char *body = cmh_malloc(len);
    if (body == NULL)
        return NULL;
    size_t k = (size_t)snprintf(body, len, "Action=%s&Version=2011-06-15", action);
    for (size_t i = 0; i + 1 < n; i += 2) {
        if (kv[i + 1] == NULL)
            continue;
        k += (size_t)snprintf(body + k, len - k, "&%s=", kv[i]);
        k += url_encode(body + k, kv[i + 1]);
    }
    body[k] = '\0';
    return body;
}

static void on_sts(struct job *j, const struct cmh_curl_uv_response *res);

/* STS AssumeRole for the profile's role_arn, SigV4-signed with the source profile's keys. */
static void assume_role(struct job *j)
{
    struct cmh_aws_provider *p = j->p;
    const char *fields[] = {"RoleArn",       p->role_arn,  "RoleSessionName",
                            p->session_name, "ExternalId", p->external_id};
    char *url = sts_endpoint(p);
    char *body = sts_form("AssumeRole", fields, sizeof fields / sizeof fields[0]);
    char *host = NULL, *path = NULL, *hdr[8] = {NULL};
    size_t nh = 0;
    int http = 0, rc = url == NULL || body == NULL ? -ENOMEM : 0;
    struct cmh_sigv4_result sig;
    memset(&sig, 0, sizeof sig);
    if (rc == 0)
        rc = cmh_aws_endpoint_split(url, &host, &path, &http);
    static const char ctype[] = "application/x-www-form-urlencoded; charset=utf-8";
    if (rc == 0) {
        const struct cmh_sigv4_kv headers[] = {{"Host", host}, {"Content-Type", ctype}};
        struct cmh_sigv4_credentials creds = {p->src_akid, p->src_secret, p->src_token};
        struct cmh_sigv4_request sreq = {
            .method = "POST",
            .path = path,
            .headers = headers,
            .nheaders = 2,
            .payload = body,
            .payload_len = strlen(body),
            .region = p->region != NULL ? p->region : "us-east-1",
            .service = "sts",
            .time_s = wall_ms() / 1000,
            .creds = &creds,
        };
        rc = cmh_sigv4_sign(&sreq, &sig);
    }
    if (rc == 0)
        rc = cmh_aws_header_add(hdr, &nh, 8, "Content-Type", ctype);
    if (rc == 0)
        rc = cmh_aws_header_add(hdr, &nh, 8, "Accept", "text/xml");
    for (size_t i = 0; rc == 0 && i < sig.nadd; i++)
        rc = cmh_aws_header_add(hdr, &nh, 8, sig.add[i].name, sig.add[i].value);
    cmh_sigv4_result_free(&sig);
    cmh_free(host);
    cmh_free(path);
    if (rc == 0) {
        rc = job_request_hdrs(j, "POST", url, hdr, nh, body, http, 0, p->sts_timeout_ms, on_sts);
        url = body = NULL;
        nh = 0;
    }
    for (size_t i = 0; i < nh; i++)
        cmh_free_secret(hdr[i]);
    cmh_free(url);
    cmh_free_secret(body);
    if (rc != 0)
        job_finish(j, rc, "cannot start the STS AssumeRole request for %s", p->role_arn);
}

static void on_sts(struct job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    const char *action =
        j->p->source == SRC_ASSUME_ROLE ? "AssumeRole" : "AssumeRoleWithWebIdentity";
    if (res->error != CMH_CURL_OK) {
        char shown[512];
        describe(res, d, sizeof d);
        cmh_url_redact(j->url, shown, sizeof shown);
        job_finish(j, res->error == CMH_CURL_ERR_TIMEOUT ? -ETIMEDOUT : -EIO, "STS %s (%s): %s",
                   action, shown, d);
        return;
    }
    struct cmh_aws_creds_doc doc;
    int rc = cmh_aws_creds_parse_sts_xml(res->body, res->body_len, &doc);
    if (rc != 0) {
        describe(res, d, sizeof d);
        job_finish(j, rc == -ENOMEM ? rc : -EPROTO, "STS %s: %s with an answer that is not valid",
                   action, d);
        return;
    }
    if (doc.error_code != NULL || res->status != 200) {
        describe(res, d, sizeof d);
        job_finish(j, res->status >= 500 ? -EIO : -EACCES, "STS %s for %s: %s: %s: %s", action,
                   j->p->role_arn, d, doc.error_code != NULL ? doc.error_code : "no error code",
                   doc.error_message != NULL ? doc.error_message : "");
        cmh_aws_creds_doc_clear(&doc);
        return;
    }
    creds_take(j->p, &doc);
    cmh_aws_creds_doc_clear(&doc);
    job_finish(j, 0, NULL);
}

static void on_web_identity_token(struct job *j, int rc, const char *data)
{
    struct cmh_aws_provider *p = j->p;
    if (rc != 0) {
        job_finish(j, rc, "AWS_WEB_IDENTITY_TOKEN_FILE %s: %s", p->token_file, uv_strerror(rc));
        return;
    }
    if (*data == '\0') {
        job_finish(j, -EINVAL, "AWS_WEB_IDENTITY_TOKEN_FILE %s is empty", p->token_file);
        return;
    }
    char *url = sts_endpoint(p);
    const char *fields[] = {"RoleArn",       p->role_arn,        "RoleSessionName",
                            p->session_name, "WebIdentityToken", data};
    char *body = sts_form("AssumeRoleWithWebIdentity", fields, sizeof fields / sizeof fields[0]);
    if (url == NULL || body == NULL) {
        cmh_free(url);
        cmh_free(body);
        job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    rc = job_request(j, "POST", url,
                     cmh_strdup("Content-Type: application/x-www-form-urlencoded; charset=utf-8"),
                     cmh_strdup("Accept: text/xml"), body, 0, 0, p->sts_timeout_ms, on_sts);
    if (rc != 0) {
        char shown[512];
        cmh_url_redact(j->url ? j->url : "?", shown, sizeof shown);
        job_finish(j, rc, "cannot start the STS request to %s", shown);
    }
}

static void creds_refresh_start(struct cmh_aws_provider *p)
{
    struct job *j = &p->cj;
    int rc = 0;
    j->busy = 1;
    switch (p->source) {
    case SRC_ENV:
    case SRC_PROFILE:
        job_finish(j, 0, NULL); /* cached at new(), never expire */
        return;
    case SRC_ASSUME_ROLE:
        assume_role(j);
        return;
    case SRC_WEB_IDENTITY:
        rc = job_read_file(j, p->token_file, on_web_identity_token);
        if (rc != 0)
            job_finish(j, rc, "AWS_WEB_IDENTITY_TOKEN_FILE %s: %s", p->token_file, uv_strerror(rc));
        return;
    case SRC_CONTAINER:
        if (p->container_token_file != NULL) {
            rc = job_read_file(j, p->container_token_file, on_container_token_file);
            if (rc != 0)
                job_finish(j, rc, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: %s",
                           p->container_token_file, uv_strerror(rc));
        } else {
            container_send(j, p->container_token);
        }
        return;
    case SRC_IMDS:
        imds_with_token(j, imds_creds_after_token);
        return;
    case SRC_NONE:
        break;
    }
    job_finish(j, -ENOENT,
               "no AWS credentials: set AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), "
               "AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity), AWS_ACCESS_KEY_ID + "
               "AWS_SECRET_ACCESS_KEY, or let IMDS be used (AWS_EC2_METADATA_DISABLED is set)");
}

/* ---------------------------------------------------------------------------------------------
 * Region and cluster id */

static void resolve_default_cluster(struct job *j, const char *why)
{
    struct cmh_aws_provider *p = j->p;
    p->cluster_id = cmh_strdup(DEFAULT_CLUSTER_ID);
    if (p->cluster_id == NULL) {
        job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    p->cluster_from = "default";
    CMH_LOG(p->log, CMH_LOG_WARN,
            "aws: cluster id unknown, using the default: set AWS_CLUSTER_ID to your cluster name",
            CMH_STR("cluster_id", DEFAULT_CLUSTER_ID), CMH_STR("why", why));
}

static void resolve_done(struct job *j)
{
    struct cmh_aws_provider *p = j->p;
    p->resolved = 1;
    if (p->cluster_id[0] != '\0')
        CMH_LOG(p->log, CMH_LOG_INFO, "aws: region and cluster id", CMH_STR("region", p->region),
                CMH_STR("region_from", p->region_from != NULL ? p->region_from : "unknown"),
                CMH_STR("cluster_id", p->cluster_id), CMH_STR("cluster_id_from", p->cluster_from));
    else
        CMH_LOG(p->log, CMH_LOG_INFO, "aws: region and instance", CMH_STR("region", p->region),
                CMH_STR("region_from", p->region_from != NULL ? p->region_from : "unknown"),
                CMH_STR("instance_id", p->instance_id != NULL ? p->instance_id : "(unknown)"));
    job_finish(j, 0, NULL);
}

/* With cluster_lookup the caller learns the cluster id itself (EC2 DescribeTags of the instance,
 * then what the cluster says): resolving ends with the region, the instance id when one could be
 * learnt, and an empty cluster id. why, when not NULL, says why the instance id is unknown. */
static void resolve_for_lookup(struct job *j, const char *why)
{
    struct cmh_aws_provider *p = j->p;
    if (why != NULL)
        CMH_LOG(p->log, CMH_LOG_WARN, "aws: instance id unknown: IMDS not reachable",
                CMH_STR("why", why),
                CMH_STR("fix", "set NODE_NAME (the node's spec.providerID names the instance) or "
                               "AWS_CLUSTER_ID"));
    p->cluster_id = cmh_strdup("");
    if (p->cluster_id == NULL) {
        job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    p->cluster_from = "lookup";
    resolve_done(j);
}

static void on_instance_id(struct job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    if (job_retry(j, res))
        return;
    char *v = NULL;
    if (res->error == CMH_CURL_OK && res->status == 200 &&
        cmh_aws_imds_parse_text(res->body, res->body_len, 64, &v) == 0) {
        p->instance_id = v;
        resolve_for_lookup(j, NULL);
        return;
    }
    char d[320], why[WHY_MAX];
    describe(res, d, sizeof d);
    snprintf(why, sizeof why, "IMDS instance-id: %s", d);
    resolve_for_lookup(j, why);
}

static void on_tag_value(struct job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    if (job_retry(j, res))
        return;
    char *v;
    if (res->error == CMH_CURL_OK && res->status == 200 &&
        cmh_aws_imds_parse_text(res->body, res->body_len, 255, &v) == 0) {
        p->cluster_id = v;
        p->cluster_from = "imds-instance-tag";
        CMH_LOG(p->log, CMH_LOG_INFO, "aws: cluster id from an instance tag",
                CMH_STR("tag", j->role), CMH_STR("cluster_id", v));
        resolve_done(j);
        return;
    }
    char d[320];
    describe(res, d, sizeof d);
    char why[WHY_MAX];
    snprintf(why, sizeof why, "IMDS instance tag %s: %s", j->role, d);
    resolve_default_cluster(j, why);
    if (!j->finished)
        resolve_done(j);
}

static void on_tag_list(struct job *j, const struct cmh_curl_uv_response *res)
{
    if (job_retry(j, res))
        return;
    if (res->error == CMH_CURL_OK && res->status == 200) {
        const char *tag = cmh_aws_imds_cluster_tag(res->body, res->body_len);
        if (tag != NULL) {
            cmh_free(j->role);
            j->role = cmh_strdup(tag);
            char path[128];
            snprintf(path, sizeof path, "/latest/meta-data/tags/instance/%s", tag);
            imds_get(j, path, on_tag_value);
            return;
        }
        resolve_default_cluster(j, "no cluster-name tag among the instance tags in IMDS");
    } else {
        char d[320], why[WHY_MAX];
        describe(res, d, sizeof d);
        snprintf(why, sizeof why,
                 "instance tags are not readable from IMDS (%s): instance metadata tags are "
                 "off by default",
                 d);
        resolve_default_cluster(j, why);
    }
    if (!j->finished)
        resolve_done(j);
}

static void resolve_cluster_step(struct job *j)
{
    if (j->p->cluster_id != NULL) {
        resolve_done(j);
        return;
    }
    if (j->p->cluster_lookup) {
        if (j->p->instance_id != NULL)
            resolve_for_lookup(j, NULL);
        else
            imds_get(j, "/latest/meta-data/instance-id", on_instance_id);
        return;
    }
    imds_get(j, "/latest/meta-data/tags/instance", on_tag_list);
}

static void on_region(struct job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    char d[320];
    if (job_retry(j, res))
        return;
    imds_forget_token_on_401(j, res);
    if (res->error != CMH_CURL_OK || res->status != 200) {
        describe(res, d, sizeof d);
        job_finish(j, -EIO,
                   "region from IMDS (/latest/meta-data/placement/region): %s; set "
                   "AWS_REGION",
                   d);
        return;
    }
    char *r;
    int rc = cmh_aws_imds_parse_region(res->body, res->body_len, &r);
    if (rc != 0) {
        job_finish(j, rc, "region from IMDS is not a region name; set AWS_REGION");
        return;
    }
    p->region = r;
    p->region_from = "imds";
    CMH_LOG(p->log, CMH_LOG_INFO, "aws: region from IMDS", CMH_STR("region", r));
    resolve_cluster_step(j);
}

static void resolve_after_token(struct job *j)
{
    if (j->p->region == NULL)
        imds_get(j, "/latest/meta-data/placement/region", on_region);
    else
        resolve_cluster_step(j);
}

static void resolve_start(struct cmh_aws_provider *p)
{
    struct job *j = &p->rj;
    j->busy = 1;
    if (p->region != NULL && p->cluster_id != NULL) {
        resolve_done(j);
        return;
    }
    if (p->cluster_lookup && p->region != NULL && (p->instance_id != NULL || p->imds_disabled)) {
        resolve_for_lookup(
            j, p->instance_id != NULL ? NULL : "IMDS is disabled by AWS_EC2_METADATA_DISABLED");
        return;
    }
    if (p->imds_disabled) {
        if (p->region == NULL) {
            job_finish(j, -ENOENT,
                       "region unknown: set AWS_REGION (IMDS is disabled by "
                       "AWS_EC2_METADATA_DISABLED)");
            return;
        }
        resolve_default_cluster(j, "IMDS is disabled by AWS_EC2_METADATA_DISABLED");
        if (!j->finished)
            resolve_done(j);
        return;
    }
    imds_with_token(j, resolve_after_token);
}

/* ---------------------------------------------------------------------------------------------
 * Public */

/* ---------------------------------------------------------------------------------------------
 * The shared config and credentials files (a laptop; in a pod there are none) */

struct shared_files {
    const char *name[2]; /* the config file, the credentials file */
    char *text[2];       /* NULL when the file does not exist */
    size_t len[2];
};

/* key of profile name: the credentials file's [name] first, then the config file's
 * [profile name] ([default] for default), as the SDKs merge them. 0 with *out (NULL when
 * absent; *exists set when either file has the profile), or -EINVAL (logged), -ENOMEM. */
static int profile_get(struct cmh_aws_provider *p, const struct shared_files *f, const char *name,
                       const char *key, char **out, int *exists)
{
    char sect[300];
    *out = NULL;
    for (int i = 1; i >= 0; i--) {
        if (f->text[i] == NULL)
            continue;
        snprintf(sect, sizeof sect, i == 0 && strcmp(name, "default") != 0 ? "profile %s" : "%s",
                 name);
        unsigned line = 0;
        int rc = cmh_aws_ini_get(f->text[i], f->len[i], sect, key, out, &line);
        if (rc == -ENOENT)
            continue;
        if (rc == -EINVAL)
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: a line of the shared file is not INI",
                    CMH_STR("file", f->name[i]), CMH_UINT("line", line));
        if (rc != 0)
            return rc;
        if (exists != NULL)
            *exists = 1;
        if (*out != NULL)
            return 0;
    }
    return 0;
}

/* Static keys of profile name into *akid, *secret, *token (NULL when the profile has none). */
static int profile_keys(struct cmh_aws_provider *p, const struct shared_files *f, const char *name,
                        char **akid, char **secret, char **token)
{
    int rc = profile_get(p, f, name, "aws_access_key_id", akid, NULL);
    if (rc == 0)
        rc = profile_get(p, f, name, "aws_secret_access_key", secret, NULL);
    if (rc == 0)
        rc = profile_get(p, f, name, "aws_session_token", token, NULL);
    if (rc == 0 && (*akid == NULL) != (*secret == NULL)) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: the profile has only one of aws_access_key_id and aws_secret_access_key",
                CMH_STR("profile", name));
        rc = -EINVAL;
    }
    return rc;
}

/* The profile (AWS_PROFILE, else "default") of AWS_CONFIG_FILE (~/.aws/config) and
 * AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials), where the SDKs look after the environment's
 * keys: static keys (SRC_PROFILE), or role_arn + source_profile (SRC_ASSUME_ROLE); its region
 * when none is known yet. Returns 1 when the profile gives the credentials; 0 when there is none
 * to use (no file and no AWS_PROFILE, as in a pod; or a default profile without credentials);
 * -EINVAL (logged, naming the key); -ENOMEM. */
static int read_profile(struct cmh_aws_provider *p, char *const *env)
{
    const char *name = env_get(env, "AWS_PROFILE");
    int explicit = name != NULL;
    if (name == NULL)
        name = "default";
    const char *home = env_get(env, "HOME");
    char *paths[2] = {NULL, NULL}, *akid = NULL, *secret = NULL, *token = NULL, *v = NULL;
    char *src = NULL;
    struct shared_files f = {{NULL, NULL}, {NULL, NULL}, {0, 0}};
    static const char *const vars[2] = {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"};
    static const char *const homes[2] = {".aws/config", ".aws/credentials"};
    int rc = 0, exists = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        const char *e = env_get(env, vars[i]);
        if (e != NULL)
            paths[i] = cmh_strdup(e);
        else if (home != NULL)
            paths[i] = str_printf("%s/%s", home, homes[i]);
        else
            continue;
        if (paths[i] == NULL) {
            rc = -ENOMEM;
            break;
        }
        f.name[i] = paths[i];
        int r = cmh_read_small_file(paths[i], CMH_AWS_INI_MAX, &f.text[i], &f.len[i]);
        if (r != 0 && r != -ENOENT) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: cannot read the shared file",
                    CMH_STR("file", paths[i]), CMH_STR("error", strerror(-r)));
            rc = r == -ENOMEM ? r : -EINVAL;
        }
    }
    if (rc != 0 || (f.text[0] == NULL && f.text[1] == NULL && !explicit))
        goto out;
    /* What needs a person or another program is not ours to run: say which key. */
    static const char *const refused[] = {"credential_process",      "sso_session",
                                          "sso_start_url",           "credential_source",
                                          "web_identity_token_file", "mfa_serial"};
    for (size_t i = 0; rc == 0 && i < sizeof refused / sizeof refused[0]; i++) {
        rc = profile_get(p, &f, name, refused[i], &v, &exists);
        if (rc == 0 && v != NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: the profile uses a key this program does not support: use static keys "
                    "or role_arn + source_profile, or export the credentials "
                    "(eval \"$(aws configure export-credentials --format env)\")",
                    CMH_STR("profile", name), CMH_STR("key", refused[i]));
            rc = -EINVAL;
        }
        cmh_free(v);
        v = NULL;
    }
    if (rc == 0 && !exists) {
        if (explicit) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: AWS_PROFILE names a profile that neither shared file has",
                    CMH_STR("profile", name), CMH_STR("config", f.name[0] ? f.name[0] : "-"),
                    CMH_STR("credentials", f.name[1] ? f.name[1] : "-"));
            rc = -EINVAL;
        }
        goto out;
    }
    if (rc == 0 && p->region == NULL) {
        rc = profile_get(p, &f, name, "region", &v, NULL);
        if (rc == 0 && v != NULL && !valid_region(v)) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the profile's region is not a region name",
                    CMH_STR("profile", name), CMH_STR("region", v));
            rc = -EINVAL;
        } else if (rc == 0 && v != NULL) {
            p->region = v;
            p->region_from = "profile";
            v = NULL;
        }
        cmh_free(v);
        v = NULL;
    }
    if (rc == 0)
        rc = profile_get(p, &f, name, "role_arn", &p->role_arn, NULL);
    if (rc == 0 && p->role_arn != NULL) {
        rc = profile_get(p, &f, name, "source_profile", &src, NULL);
        if (rc == 0 && src == NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the profile's role_arn needs a source_profile",
                    CMH_STR("profile", name));
            rc = -EINVAL;
        }
        /* One hop: the source profile's own keys (itself allowed, as in the SDKs). */
        if (rc == 0 && strcmp(src, name) != 0) {
            rc = profile_get(p, &f, src, "role_arn", &v, NULL);
            if (rc == 0 && v != NULL) {
                CMH_LOG(p->log, CMH_LOG_ERROR,
                        "aws: the source_profile assumes a role itself: not supported, give it "
                        "static keys",
                        CMH_STR("profile", name), CMH_STR("source_profile", src));
                rc = -EINVAL;
            }
            cmh_free(v);
            v = NULL;
        }
        if (rc == 0)
            rc = profile_keys(p, &f, src, &p->src_akid, &p->src_secret, &p->src_token);
        if (rc == 0 && p->src_akid == NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: the source_profile has no aws_access_key_id / aws_secret_access_key",
                    CMH_STR("profile", name), CMH_STR("source_profile", src));
            rc = -EINVAL;
        }
        if (rc == 0)
            rc = profile_get(p, &f, name, "external_id", &p->external_id, NULL);
        if (rc == 0)
            rc = profile_get(p, &f, name, "role_session_name", &p->session_name, NULL);
        if (rc == 0 && p->session_name == NULL &&
            (p->session_name = str_printf("cni-metrics-helper-%lld", (long long)wall_ms())) == NULL)
            rc = -ENOMEM;
        if (rc == 0) {
            p->source = SRC_ASSUME_ROLE;
            rc = 1;
        }
        goto out;
    }
    if (rc == 0)
        rc = profile_keys(p, &f, name, &akid, &secret, &token);
    if (rc == 0 && akid != NULL) {
        p->source = SRC_PROFILE;
        struct cmh_aws_creds_doc doc = {
            .access_key_id = akid, .secret_access_key = secret, .session_token = token};
        creds_take(p, &doc);
        akid = secret = token = NULL;
        rc = 1;
    } else if (rc == 0 && explicit) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: the profile has no credentials: aws_access_key_id + aws_secret_access_key, "
                "or role_arn + source_profile",
                CMH_STR("profile", name));
        rc = -EINVAL;
    }
out:
    for (int i = 0; i < 2; i++) {
        cmh_free(paths[i]);
        cmh_free_secret(f.text[i]);
    }
    cmh_free_secret(akid);
    cmh_free_secret(secret);
    cmh_free_secret(token);
    cmh_free(src);
    return rc;
}

static int read_config(struct cmh_aws_provider *p, const struct cmh_aws_creds_opts *o)
{
    char *const *env = o->envp;
    const char *akid = env_get(env, "AWS_ACCESS_KEY_ID");
    const char *secret = env_get(env, "AWS_SECRET_ACCESS_KEY");
    const char *role = env_get(env, "AWS_ROLE_ARN");
    const char *tokf = env_get(env, "AWS_WEB_IDENTITY_TOKEN_FILE");
    const char *full = env_get(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    const char *rel = env_get(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *dis = env_get(env, "AWS_EC2_METADATA_DISABLED");
    const char *imds = env_get(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    const char *mode = env_get(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
    const char *sts = env_get(env, "AWS_ENDPOINT_URL_STS");
    const char *region = o->region != NULL && o->region[0] != '\0' ? o->region : NULL;
    const char *cluster = o->cluster_id != NULL && o->cluster_id[0] != '\0' ? o->cluster_id : NULL;
    char why[WHY_MAX];

    p->region_from = region != NULL ? "AWS_REGION" : NULL;
    if (region == NULL && (region = env_get(env, "AWS_REGION")) != NULL)
        p->region_from = "AWS_REGION";
    if (region == NULL && (region = env_get(env, "AWS_DEFAULT_REGION")) != NULL)
        p->region_from = "AWS_DEFAULT_REGION";
    if (region == NULL && o->region_hint != NULL && o->region_hint[0] != '\0') {
        region = o->region_hint;
        p->region_from = "node-provider-id";
    }
    if (cluster == NULL)
        cluster = env_get(env, "AWS_CLUSTER_ID");
    p->cluster_lookup = o->cluster_lookup;
    if (o->instance_id != NULL && o->instance_id[0] != '\0' &&
        (p->instance_id = cmh_strdup(o->instance_id)) == NULL)
        return -ENOMEM;
    if (region != NULL && !valid_region(region)) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: not a region name", CMH_STR("region", region));
        return -EINVAL;
    }
    if (sts == NULL)
        sts = env_get(env, "AWS_ENDPOINT_URL");
    p->imds_disabled = dis != NULL && strcasecmp(dis, "true") == 0;
    if (mode != NULL && strcasecmp(mode, "ipv4") != 0 && strcasecmp(mode, "ipv6") != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE is IPv4 or IPv6",
                CMH_STR("value", mode));
        return -EINVAL;
    }
    if (imds != NULL && strncasecmp(imds, "http://", 7) != 0 &&
        strncasecmp(imds, "https://", 8) != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: AWS_EC2_METADATA_SERVICE_ENDPOINT is not a URL",
                CMH_URL("value", imds));
        return -EINVAL;
    }
    if (sts != NULL && strncasecmp(sts, "https://", 8) != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the STS endpoint must be https",
                CMH_URL("value", sts));
        return -EINVAL;
    }
    p->imds_base = imds != NULL
                       ? dup_base(imds)
                       : cmh_strdup(mode != NULL && strcasecmp(mode, "ipv6") == 0 ? IMDS_DEFAULT_V6
                                                                                  : IMDS_DEFAULT);
    if (p->imds_base == NULL)
        return -ENOMEM;
    if (sts != NULL) {
        size_t n = strlen(sts);
        const char *path = strchr(sts + 8, '/');
        p->sts_url = path != NULL ? cmh_strdup(sts) : str_printf("%.*s/", (int)n, sts);
        if (p->sts_url == NULL)
            return -ENOMEM;
    }
    if ((region != NULL && (p->region = cmh_strdup(region)) == NULL) ||
        (cluster != NULL && (p->cluster_id = cmh_strdup(cluster)) == NULL))
        return -ENOMEM;
    if (cluster != NULL)
        p->cluster_from = "AWS_CLUSTER_ID";

    if (akid != NULL && secret != NULL) {
        p->source = SRC_ENV;
        struct cmh_aws_creds_doc doc = {.access_key_id = cmh_strdup(akid),
                                        .secret_access_key = cmh_strdup(secret),
                                        .session_token =
                                            dup_or_null(env_get(env, "AWS_SESSION_TOKEN"))};
        if (doc.access_key_id == NULL || doc.secret_access_key == NULL) {
            cmh_aws_creds_doc_clear(&doc);
            return -ENOMEM;
        }
        creds_take(p, &doc);
        return 0;
    }
    if (akid != NULL || secret != NULL)
        CMH_LOG(p->log, CMH_LOG_WARN,
                "aws: only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set; ignored",
                CMH_BOOL("access_key_id", akid != NULL));
    int prc = read_profile(p, env);
    if (prc != 0)
        return prc < 0 ? prc : 0;
    if (role != NULL && tokf != NULL) {
        p->source = SRC_WEB_IDENTITY;
        const char *sn = env_get(env, "AWS_ROLE_SESSION_NAME");
        p->role_arn = cmh_strdup(role);
        p->token_file = cmh_strdup(tokf);
        p->session_name = sn != NULL ? cmh_strdup(sn)
                                     : str_printf("cni-metrics-helper-%lld", (long long)wall_ms());
        if (p->role_arn == NULL || p->token_file == NULL || p->session_name == NULL)
            return -ENOMEM;
        if (p->region == NULL && p->sts_url == NULL)
            CMH_LOG(p->log, CMH_LOG_WARN,
                    "aws: no region for STS: using the global endpoint; set AWS_REGION",
                    CMH_URL("endpoint", "https://sts.amazonaws.com/"));
        return 0;
    }
    if (rel != NULL || full != NULL) {
        p->source = SRC_CONTAINER;
        if (rel != NULL) {
            /* the relative URI wins, as in the SDKs; its host is fixed (the ECS agent) */
            if (rel[0] != '/') {
                CMH_LOG(p->log, CMH_LOG_ERROR,
                        "aws: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with /",
                        CMH_STR("value", rel));
                return -EINVAL;
            }
            char *base = dup_base(o->ecs_endpoint != NULL ? o->ecs_endpoint : ECS_DEFAULT);
            p->container_url = base != NULL ? str_printf("%s%s", base, rel) : NULL;
            cmh_free(base);
        } else {
            p->container_url = cmh_strdup(full);
        }
        if (p->container_url == NULL)
            return -ENOMEM;
        if (!cmh_aws_container_url_allowed(p->container_url, why, sizeof why)) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: container credentials endpoint refused",
                    CMH_URL("url", p->container_url), CMH_STR("why", why));
            return -EPERM;
        }
        const char *tf = env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
        const char *tk = env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
        if (tf != NULL) {
            if ((p->container_token_file = cmh_strdup(tf)) == NULL)
                return -ENOMEM;
        } else if (tk != NULL) {
            if (!valid_token(tk)) {
                CMH_LOG(p->log, CMH_LOG_ERROR,
                        "aws: AWS_CONTAINER_AUTHORIZATION_TOKEN is not one line of text",
                        CMH_UINT("length", strlen(tk)));
                return -EINVAL;
            }
            if ((p->container_token = cmh_strdup(tk)) == NULL)
                return -ENOMEM;
        }
        return 0;
    }
    if (role != NULL || tokf != NULL)
        CMH_LOG(
            p->log, CMH_LOG_WARN,
            "aws: web identity needs both AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE; ignored",
            CMH_BOOL("role_arn", role != NULL));
    p->source = p->imds_disabled ? SRC_NONE : SRC_IMDS;
    return 0;
}

static void provider_release(struct cmh_aws_provider *p)
{
    struct job *jobs[] = {&p->cj, &p->rj};
    for (size_t i = 0; i < 2; i++) {
        job_clear_request(jobs[i]);
        cmh_free(jobs[i]->role);
        cmh_free_secret(jobs[i]->fbuf);
    }
    cmh_free(p->role_arn);
    cmh_free_secret(p->src_akid);
    cmh_free_secret(p->src_secret);
    cmh_free_secret(p->src_token);
    cmh_free(p->external_id);
    cmh_free(p->token_file);
    cmh_free(p->session_name);
    cmh_free(p->sts_url);
    cmh_free(p->container_url);
    cmh_free_secret(p->container_token);
    cmh_free(p->container_token_file);
    cmh_free(p->imds_base);
    cmh_free(p->region);
    cmh_free(p->cluster_id);
    cmh_free(p->instance_id);
    cmh_free_secret(p->c_akid);
    cmh_free_secret(p->c_secret);
    cmh_free_secret(p->c_token);
    cmh_free_secret(p->imds_token);
    cmh_free(p);
}

static void maybe_free(struct cmh_aws_provider *p)
{
    if (p->closing && p->open_handles == 0 && !p->cj.fs_busy && !p->rj.fs_busy)
        provider_release(p);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cmh_aws_provider *p = h->data;
    p->open_handles--;
    maybe_free(p);
}

int cmh_aws_provider_new(struct cmh_aws_provider **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_aws_creds_opts *opts, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_aws_provider *p = cmh_calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    p->curl = curl;
    p->log = log;
    p->cj.p = p->rj.p = p;
    p->imds_timeout_ms = opts->imds_timeout_ms != 0 ? opts->imds_timeout_ms : 1000;
    p->sts_timeout_ms = opts->sts_timeout_ms != 0 ? opts->sts_timeout_ms : 5000;
    int rc = read_config(p, opts);
    if (rc != 0) {
        provider_release(p);
        return rc;
    }
    /* uv_timer_init cannot fail on a live loop; the handles are closed in free */
    uv_timer_init(loop, &p->defer);
    uv_timer_init(loop, &p->cj.timer);
    uv_timer_init(loop, &p->rj.timer);
    p->defer.data = p->cj.timer.data = p->rj.timer.data = p;
    p->open_handles = 3;
    CMH_LOG(log, CMH_LOG_INFO, "aws: credential source", CMH_STR("source", source_names[p->source]),
            CMH_STR("region", p->region != NULL ? p->region : "(unknown)"),
            CMH_STR("imds", p->imds_disabled ? "disabled" : p->imds_base));
    *out = p;
    return 0;
}

int cmh_aws_creds_get(struct cmh_aws_provider *p, cmh_aws_creds_cb cb, void *arg)
{
    if (p->closing)
        return -ECANCELED;
    struct waiter *w = cmh_calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->creds_cb = cb;
    w->arg = arg;
    if (!p->cj.busy && creds_fresh(p, REFRESH_AHEAD_MS)) {
        w->next = p->cj.ready;
        p->cj.ready = w;
        defer_kick(p);
        return 0;
    }
    w->next = p->cj.waiting;
    p->cj.waiting = w;
    if (!p->cj.busy)
        creds_refresh_start(p);
    return 0;
}

void cmh_aws_creds_invalidate(struct cmh_aws_provider *p)
{
    /* the strings stay until the next refresh replaces them: a caller may still hold them */
    if (p->source != SRC_ENV && p->source != SRC_PROFILE)
        p->have_creds = 0;
}

int cmh_aws_resolve(struct cmh_aws_provider *p, cmh_aws_resolve_cb cb, void *arg)
{
    if (p->closing)
        return -ECANCELED;
    struct waiter *w = cmh_calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->resolve_cb = cb;
    w->arg = arg;
    if (p->resolved) {
        w->next = p->rj.ready;
        p->rj.ready = w;
        defer_kick(p);
        return 0;
    }
    w->next = p->rj.waiting;
    p->rj.waiting = w;
    if (!p->rj.busy)
        resolve_start(p);
    return 0;
}

const char *cmh_aws_provider_instance_id(const struct cmh_aws_provider *p)
{
    return p->instance_id;
}

const char *cmh_aws_provider_region_from(const struct cmh_aws_provider *p)
{
    return p->region_from != NULL ? p->region_from : "unknown";
}

uint64_t cmh_aws_provider_requests(const struct cmh_aws_provider *p)
{
    return p->requests;
}

void cmh_aws_provider_free(struct cmh_aws_provider *p)
{
    if (p == NULL || p->closing)
        return;
    p->closing = 1;
    struct job *jobs[] = {&p->cj, &p->rj};
    for (size_t i = 0; i < 2; i++) {
        if (jobs[i]->call != NULL) {
            jobs[i]->call->job = NULL;
            jobs[i]->call = NULL;
        }
    }
    deliver_creds(p, take_fifo(&p->cj.waiting), -ECANCELED, "");
    deliver_creds(p, take_fifo(&p->cj.ready), -ECANCELED, "");
    deliver_resolve(p, take_fifo(&p->rj.waiting), -ECANCELED, "");
    deliver_resolve(p, take_fifo(&p->rj.ready), -ECANCELED, "");
    uv_close((uv_handle_t *)&p->defer, on_handle_closed);
    uv_close((uv_handle_t *)&p->cj.timer, on_handle_closed);
    uv_close((uv_handle_t *)&p->rj.timer, on_handle_closed);
}
