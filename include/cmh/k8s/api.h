/* Requests to the Kubernetes API server over curl_uv, for every module that talks to it
 * (discovery, leader election, the pod-proxy scrape, cluster id, report): where the server is
 * (KUBERNETES_SERVICE_HOST/_PORT are read here and nowhere else), its CA, the service-account
 * token (cmh_k8s_token: read, rotated, read again after a refusal), the request (never through a
 * proxy) and what a failed answer means (a negative errno and a sentence). The owner embeds
 * struct cmh_k8s_api and each struct cmh_k8s_api_req; thread: the loop thread only. */
#ifndef CMH_K8S_API_H
#define CMH_K8S_API_H

#include <stddef.h>
#include <stdint.h>

#include "cmh/core/buf.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/token.h"

struct cmh_log;
struct cmh_kv;

/* Builds "https://host:port" from KUBERNETES_SERVICE_HOST/_PORT values (IPv6 in brackets).
 * Returns 0, or -EINVAL when host or port is missing or bad, -ENOSPC when len is too small. */
int cmh_k8s_api_server_url(char *buf, size_t len, const char *host, const char *port);

/* The in-cluster API server, "https://host:port" from KUBERNETES_SERVICE_HOST and
 * KUBERNETES_SERVICE_PORT of envp (NULL: the process environment). Returns as
 * cmh_k8s_api_server_url; -EINVAL when either is unset (not in a pod). */
int cmh_k8s_api_in_cluster_url(char *buf, size_t len, char *const *envp);

struct cmh_k8s_api_opts {
    /* "https://host:port" (cmh_k8s_api_in_cluster_url), or a URL to a loopback http listener
     * (`kubectl proxy`, checked by cmh_k8s_access_check_url); a trailing '/' is dropped. */
    const char *server;
    const char *token_file;    /* the bearer token; NULL = requests go without one */
    const char *ca_file;       /* PEM bundle of the cluster CA; NULL = the system store */
    uint64_t token_max_age_ms; /* read the token again after this long; 0 = 60 s */
};

/* One API server with its credentials. */
struct cmh_k8s_api {
    /* read-only */
    char *server; /* without a trailing '/' */
    struct cmh_k8s_token tok;
    /* private */
    char *ca_file;
    int allow_http; /* the server is http:// (a loopback kubectl proxy) */
};

/* Sets a up (strings copied). Returns 0, -EINVAL (no server), or -ENOMEM; on failure nothing is
 * left to free. */
int cmh_k8s_api_init(struct cmh_k8s_api *a, const struct cmh_k8s_api_opts *o);
/* Frees what a holds (the token wiped); a is then zeroed. */
void cmh_k8s_api_free(struct cmh_k8s_api *a);

/* Brings the token up to date at loop time now_ms (see cmh_k8s_token_refresh): 0, 1 when it
 * rotated, or the failed read's negative code with a sentence in why (the token held, if any, is
 * kept and requests go on with it). Synchronous: a few bytes from the kubelet's tmpfs, at most
 * once per max age or after a refusal. Call it before cmh_k8s_api_start when the answer matters
 * to you; start refreshes quietly otherwise. */
int cmh_k8s_api_refresh(struct cmh_k8s_api *a, uint64_t now_ms, char *why, size_t whylen);

/* The API server refused the token: it is read again before the next request. */
void cmh_k8s_api_refused(struct cmh_k8s_api *a);

/* One request. Get back to the owner from the done and on_data callbacks with
 * container_of(req, owner, field.curl). */
struct cmh_k8s_api_req {
    /* public */
    /* Set by cmh_k8s_api_begin (method and url); the caller may then set on_data, timeout_ms,
     * max_body, body/body_len (sent as application/json) and http2. headers, ca_file, no_proxy and
     * allow_http are the helper's. url may be pointed at a string of the caller's instead of the
     * builder (kept alive until done). */
    struct cmh_curl_uv_req curl;
    const char *accept; /* the Accept header line; NULL = "Accept: application/json" */
    const char *extra;  /* one more "Name: value" header line, or NULL */
    /* private */
    struct cmh_buf url;
    const char *headers[4];
};

/* Starts building r for method ("GET", "POST", "PUT"; NULL = GET): curl zeroed, accept and extra
 * cleared, the URL builder emptied (its memory kept) and set to the server. Returns the builder,
 * for the caller to append the path and query (cmh_buf_addstr, cmh_buf_add_pct for names and
 * values); a builder failure is reported by cmh_k8s_api_start. */
struct cmh_buf *cmh_k8s_api_begin(struct cmh_k8s_api *a, struct cmh_k8s_api_req *r,
                                  const char *method);

/* Starts r on curl with the token held (refreshed when due), the CA, and never a proxy, whatever
 * the proxy variables say. done fires later from the loop, exactly once when 0 is returned.
 * Returns 0, -ENOMEM or -E2BIG (the URL builder failed), or cmh_curl_uv_start's error. */
int cmh_k8s_api_start(struct cmh_k8s_api *a, struct cmh_curl_uv *curl, struct cmh_k8s_api_req *r,
                      cmh_curl_uv_done_cb done);

/* The whole of a plain read: GET path (already encoded, after the server) with an answer of at
 * most max_body bytes (0: curl's default), as cmh_k8s_api_begin, then cmh_k8s_api_start. Map
 * the answer with cmh_k8s_api_result in done. */
int cmh_k8s_api_get(struct cmh_k8s_api *a, struct cmh_curl_uv *curl, struct cmh_k8s_api_req *r,
                    const char *path, size_t max_body, cmh_curl_uv_done_cb done);

/* Frees r's URL builder. */
void cmh_k8s_api_req_free(struct cmh_k8s_api_req *r);

/* What an answer means: 0 for a 2xx, else a negative errno with a sentence in why. Transfer
 * failures: -ETIMEDOUT, -ECONNREFUSED, -ECONNABORTED (TLS), -ECONNRESET, -EFBIG, -EPROTO,
 * -ECANCELED, -EIO. HTTP statuses: 401 -EACCES and 403 -EPERM (the token is then read again
 * before the next request), 404 -ENOENT, 409 -EEXIST, 410 -ESTALE, 429 -EAGAIN, another 4xx
 * -EINVAL, 5xx -EIO, anything else -EPROTO; why then gives the status, and the reason and message
 * of a JSON Status body, else the start of the body. body is the answer's body (NULL: res->body; a
 * streaming caller passes the bytes it kept). a may be NULL. */
int cmh_k8s_api_result(struct cmh_k8s_api *a, const struct cmh_curl_uv_response *res,
                       const char *body, size_t body_len, char *why, size_t whylen);

/* A client's last error and the count of them, for /readyz and self-metrics. */
struct cmh_k8s_api_err {
    char text[256]; /* "" until the first */
    uint64_t count;
};

/* Records an error: text formatted into e->text, e->count grows, and when log is set one WARN
 * line msg with the field error=text followed by the nkv fields of kv (the caller's context). */
void cmh_k8s_api_fail(struct cmh_k8s_api_err *e, struct cmh_log *log, const char *msg,
                      const struct cmh_kv *kv, size_t nkv, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#endif
