/* Requests to the Kubernetes API server (see include/cmh/k8s/api.h). A JSON-facing module: reads
 * the Status object of an error answer with jansson. */
#include "cmh/k8s/api.h"

#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"

#include <jansson.h>

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TOKEN_AGE 60000ull
#define ENV_HOST          "KUBERNETES_SERVICE_HOST"
#define ENV_PORT          "KUBERNETES_SERVICE_PORT"

/* ---- where the server is ---- */

int cmh_k8s_api_server_url(char *buf, size_t len, const char *host, const char *port)
{
    if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (errno != 0 || *end != '\0' || p == 0 || p > 65535 || !isdigit((unsigned char)port[0]))
        return -EINVAL;
    if (strpbrk(host, "/?#@ \t\r\n[]") != NULL)
        return -EINVAL;
    bool v6 = strchr(host, ':') != NULL;
    int n = snprintf(buf, len, v6 ? "https://[%s]:%lu" : "https://%s:%lu", host, p);
    return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

static const char *env_value(char *const *envp, const char *name)
{
    return envp == NULL ? getenv(name) : cmh_env_get(envp, name);
}

int cmh_k8s_api_in_cluster_url(char *buf, size_t len, char *const *envp)
{
    return cmh_k8s_api_server_url(buf, len, env_value(envp, ENV_HOST), env_value(envp, ENV_PORT));
}

/* ---- the server and its credentials ---- */

int cmh_k8s_api_init(struct cmh_k8s_api *a, const struct cmh_k8s_api_opts *o)
{
    memset(a, 0, sizeof *a);
    if (o->server == NULL || o->server[0] == '\0')
        return -EINVAL;
    int rc = cmh_k8s_token_init(&a->tok, o->token_file,
                                o->token_max_age_ms ? o->token_max_age_ms : DEFAULT_TOKEN_AGE);
    a->server = cmh_strdup_opt(o->server, &rc);
    a->ca_file = cmh_strdup_opt(o->ca_file, &rc);
    if (rc != 0) {
        cmh_k8s_api_free(a);
        return -ENOMEM;
    }
    size_t n = strlen(a->server);
    while (n > 0 && a->server[n - 1] == '/')
        a->server[--n] = '\0';
    /* http only where the URL was checked to be loopback (report's K8S_API_URL). */
    a->allow_http = strncmp(a->server, "http://", 7) == 0;
    return 0;
}

void cmh_k8s_api_free(struct cmh_k8s_api *a)
{
    cmh_k8s_token_free(&a->tok);
    cmh_free(a->server);
    cmh_free(a->ca_file);
    memset(a, 0, sizeof *a);
}

int cmh_k8s_api_refresh(struct cmh_k8s_api *a, uint64_t now_ms, char *why, size_t whylen)
{
    return cmh_k8s_token_refresh(&a->tok, now_ms, why, whylen);
}

void cmh_k8s_api_refused(struct cmh_k8s_api *a)
{
    cmh_k8s_token_refused(&a->tok);
}

/* ---- requests ---- */

struct cmh_buf *cmh_k8s_api_begin(struct cmh_k8s_api *a, struct cmh_k8s_api_req *r,
                                  const char *method)
{
    memset(&r->curl, 0, sizeof r->curl);
    r->curl.method = method != NULL ? method : "GET";
    r->accept = NULL;
    r->extra = NULL;
    cmh_buf_reset(&r->url);
    cmh_buf_addstr(&r->url, a->server);
    return &r->url;
}

int cmh_k8s_api_start(struct cmh_k8s_api *a, struct cmh_curl_uv *curl, struct cmh_k8s_api_req *r,
                      cmh_curl_uv_done_cb done)
{
    char why[256];
    if (r->curl.url == NULL) {
        if (cmh_buf_err(&r->url) != 0)
            return cmh_buf_err(&r->url);
        r->curl.url = cmh_buf_str(&r->url);
    }
    /* A failed read keeps the token held: the caller that cares asked cmh_k8s_api_refresh. */
    (void)cmh_k8s_token_refresh(&a->tok, uv_now(curl->loop), why, sizeof why);
    size_t nh = 0;
    r->headers[nh++] = r->accept != NULL ? r->accept : "Accept: application/json";
    if (r->curl.body != NULL)
        r->headers[nh++] = "Content-Type: application/json";
    if (r->extra != NULL)
        r->headers[nh++] = r->extra;
    if (a->tok.header != NULL)
        r->headers[nh++] = a->tok.header;
    r->curl.headers = r->headers;
    r->curl.nheaders = nh;
    r->curl.ca_file = a->ca_file;
    r->curl.allow_http = a->allow_http;
    r->curl.no_proxy = 1; /* the API server is never reached through a proxy */
    return cmh_curl_uv_start(curl, &r->curl, done);
}

int cmh_k8s_api_get(struct cmh_k8s_api *a, struct cmh_curl_uv *curl, struct cmh_k8s_api_req *r,
                    const char *path, size_t max_body, cmh_curl_uv_done_cb done)
{
    cmh_buf_addstr(cmh_k8s_api_begin(a, r, "GET"), path);
    r->curl.max_body = max_body;
    return cmh_k8s_api_start(a, curl, r, done);
}

void cmh_k8s_api_req_free(struct cmh_k8s_api_req *r)
{
    cmh_buf_free(&r->url);
}

/* ---- what an answer means ---- */

static int transfer_errno(enum cmh_curl_uv_error e)
{
    switch (e) {
    case CMH_CURL_OK:
        return 0;
    case CMH_CURL_ERR_TIMEOUT:
        return -ETIMEDOUT;
    case CMH_CURL_ERR_CONNECT:
        return -ECONNREFUSED;
    case CMH_CURL_ERR_TLS:
        return -ECONNABORTED;
    case CMH_CURL_ERR_RESET:
        return -ECONNRESET;
    case CMH_CURL_ERR_TOO_LARGE:
        return -EFBIG;
    case CMH_CURL_ERR_PROTOCOL:
        return -EPROTO;
    case CMH_CURL_ERR_CANCELLED:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

static int status_errno(long status)
{
    if (status >= 200 && status < 300)
        return 0;
    switch (status) {
    case 401:
        return -EACCES;
    case 403:
        return -EPERM;
    case 404:
        return -ENOENT;
    case 409:
        return -EEXIST;
    case 410:
        return -ESTALE;
    case 429:
        return -EAGAIN;
    default:
        return status >= 400 && status < 500 ? -EINVAL : status >= 500 ? -EIO : -EPROTO;
    }
}

/* "reason: message" of a Kubernetes Status body, or false when body is not one. */
static bool status_words(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *kind = json_is_object(root) ? json_object_get(root, "kind") : NULL;
    bool ok = json_is_string(kind) && strcmp(json_string_value(kind), "Status") == 0;
    if (ok) {
        const char *reason = json_string_value(json_object_get(root, "reason"));
        const char *msg = json_string_value(json_object_get(root, "message"));
        snprintf(out, outlen, "%s%s%.160s", reason != NULL ? reason : "",
                 reason != NULL && msg != NULL ? ": " : "", msg != NULL ? msg : "");
        ok = out[0] != '\0';
    }
    json_decref(root);
    return ok;
}

int cmh_k8s_api_result(struct cmh_k8s_api *a, const struct cmh_curl_uv_response *res,
                       const char *body, size_t body_len, char *why, size_t whylen)
{
    if (whylen > 0)
        why[0] = '\0';
    if (res->error != CMH_CURL_OK) {
        snprintf(why, whylen, "%s (%s)", cmh_curl_uv_error_name(res->error),
                 res->error_text != NULL ? res->error_text : "");
        return transfer_errno(res->error);
    }
    int rc = status_errno(res->status);
    if (rc == 0)
        return 0;
    if ((res->status == 401 || res->status == 403) && a != NULL)
        cmh_k8s_token_refused(&a->tok);
    if (body == NULL) {
        body = res->body;
        body_len = res->body_len;
    }
    char words[200];
    if (body != NULL && body_len > 0 && status_words(body, body_len, words, sizeof words))
        snprintf(why, whylen, "HTTP %ld %s", res->status, words);
    else
        snprintf(why, whylen, "HTTP %ld: %.*s", res->status,
                 (int)(body == NULL     ? 0
                       : body_len < 120 ? body_len
                                        : 120),
                 body ? body : "");
    return rc;
}

void cmh_k8s_api_fail(struct cmh_k8s_api_err *e, struct cmh_log *log, const char *msg,
                      const struct cmh_kv *kv, size_t nkv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, ap);
    va_end(ap);
    e->count++;
    if (log == NULL || !cmh_log_enabled(log, CMH_LOG_WARN))
        return;
    struct cmh_kv all[8];
    size_t n = 0;
    all[n++] = CMH_STR("error", e->text);
    for (size_t i = 0; i < nkv && n < sizeof all / sizeof all[0]; i++)
        all[n++] = kv[i];
    cmh_log_event(log, CMH_LOG_WARN, msg, all, n);
}
