/* HTTP(S) client requests through libcurl's multi-socket API, driven by the uv loop (one uv_poll
 * per socket, one uv_timer). The owner embeds struct cmh_curl_uv and each request; loop thread
 * only. */
#ifndef CMH_CURL_UV_H
#define CMH_CURL_UV_H

#include "cmh/core/buf.h"

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cmh_log;
struct cmh_curl_uv;
struct cmh_curl_uv_req;

/* How a request ended. Everything but CMH_CURL_OK means no (complete) HTTP response; an HTTP error
 * status (4xx/5xx) is CMH_CURL_OK with that status. */
enum cmh_curl_uv_error {
    CMH_CURL_OK = 0,
    CMH_CURL_ERR_TIMEOUT,   /* the connect or the whole request took longer than timeout_ms */
    CMH_CURL_ERR_CONNECT,   /* refused, unreachable, name resolution failed */
    CMH_CURL_ERR_TLS,       /* handshake failed, untrusted certificate, wrong host name */
    CMH_CURL_ERR_RESET,     /* the connection broke or closed before the response was complete */
    CMH_CURL_ERR_TOO_LARGE, /* the response body was larger than max_body */
    CMH_CURL_ERR_PROTOCOL,  /* not a valid HTTP response */
    CMH_CURL_ERR_CANCELLED, /* cmh_curl_uv_close was called while the request was in flight */
    CMH_CURL_ERR_OTHER,     /* anything else (out of memory, libcurl internal error) */
    CMH_CURL_ERR_COUNT
};

/* A short stable name for logs and metrics labels ("timeout", "tls", ...). */
const char *cmh_curl_uv_error_name(enum cmh_curl_uv_error e);

/* Pure (reads the clock for dates): a Retry-After value, delay-seconds or an HTTP date, as ms from
 * now (0 for a date in the past, INT64_MAX when it overflows), or -1 when it is neither. Exposed
 * for the fuzzer. */
int64_t cmh_curl_uv_parse_retry_after(const char *v);

struct cmh_curl_uv_opts {
    uint64_t timeout_ms;         /* whole request, connect included (HTTP_TIMEOUT); 0 = 10 s */
    uint64_t connect_timeout_ms; /* 0 = timeout_ms */
    const char *ca_file;       /* PEM bundle, the only anchors; NULL = the system store. Copied. */
    size_t max_body;           /* default response size cap; 0 = 1 MiB */
    long max_host_connections; /* parallel connections per host; 0 = 8 (more requests queue) */
};

/* What a request produced; valid only during the done callback (copy what you keep). */
struct cmh_curl_uv_response {
    enum cmh_curl_uv_error error;
    long status;            /* HTTP status of the final response; 0 when there was none */
    const char *error_text; /* libcurl's explanation when error != OK, else "" */
    const char *body;       /* NUL-terminated for convenience; body_len bytes */
    size_t body_len;
    const char *content_type; /* Content-Type value, or NULL */
    int64_t retry_after_ms;   /* Retry-After (seconds or HTTP date, relative to now), or -1 */
    long new_connections;     /* connections this request had to open (0 = reused one) */
    int http_version;         /* 2 for HTTP/2, 1 for HTTP/1.x, 0 when unknown */
    uint64_t elapsed_ms;      /* from start to completion, monotonic */
};

/* Fires exactly once per successful cmh_curl_uv_start, never inside cmh_curl_uv_start itself. The
 * request may be started again (or its memory released) from inside the callback. */
typedef void (*cmh_curl_uv_done_cb)(struct cmh_curl_uv_req *req,
                                    const struct cmh_curl_uv_response *res);

typedef void (*cmh_curl_uv_close_cb)(struct cmh_curl_uv *c);

/* One request. The owner fills the public fields, embeds it where it likes (get back with
 * container_of) and keeps it, the body and the url alive until the done callback. */
struct cmh_curl_uv_req {
    /* public */
    const char *method; /* "GET", "POST", "PUT", "DELETE", "HEAD"; NULL = GET, or POST with body */
    const char *url;    /* https://...; http:// only with allow_http */
    /* "Name: value" lines, copied at start. libcurl adds Host (from the url), Content-Length and
     * Accept; a caller's line replaces libcurl's of the same name. */
    const char *const *headers;
    size_t nheaders;
    const void *body; /* borrowed until the done callback; NULL/0 = no body */
    size_t body_len;
    size_t max_body; /* response cap; 0 = the instance's opts.max_body */
    /* Plain HTTP is refused unless set: only the instance-metadata and container-credential
     * endpoints (link-local or loopback, by design plain HTTP) may use it. */
    int allow_http;
    /* Optional streaming (a watch): when set, body bytes go to on_data as they arrive, with the
     * response status, instead of being collected (the done callback then sees an empty body and no
     * size cap applies). Returning non-zero aborts the transfer (done fires with
     * CMH_CURL_ERR_OTHER). */
    int (*on_data)(struct cmh_curl_uv_req *req, long status, const char *data, size_t len);
    uint64_t timeout_ms; /* whole request; 0 = the instance's opts.timeout_ms */
    /* PEM bundle for this request, the only trust anchors (the system store is not used); NULL
     * = the instance's. Borrowed. */
    const char *ca_file;
    /* Never through a proxy, whatever http_proxy, HTTPS_PROXY, ALL_PROXY or NO_PROXY say: set for
     * the instance-metadata and container-credential endpoints and the Kubernetes API. 0 = the
     * proxy variables apply as libcurl reads them (the AWS service endpoints). */
    int no_proxy;
    /* HTTP/2 over TLS (falling back to HTTP/1.1 when the server does not offer h2), waiting for an
     * existing connection to multiplex on rather than opening another. 0 = HTTP/1.1. */
    int http2;

    /* private */
    struct cmh_curl_uv *owner;
    cmh_curl_uv_done_cb done;
    void *easy;              /* CURL * */
    void *slist;             /* struct curl_slist * */
    struct cmh_buf body_buf; /* the answer, capped at the request's max_body */
    int too_large;
    uint64_t start_ms;
    struct cmh_curl_uv_req *prev, *next; /* in flight */
    char errbuf[256];                    /* CURL_ERROR_SIZE */
};

/* Counters since init, for self-metrics. */
struct cmh_curl_uv_stats {
    uint64_t started;
    uint64_t completed; /* done callbacks, whatever the outcome */
    uint64_t errors[CMH_CURL_ERR_COUNT];
    uint64_t connections;  /* new connections opened */
    uint64_t multi_errors; /* unexpected libcurl multi failures (logged) */
};

struct cmh_curl_uv {
    /* read-only */
    struct cmh_curl_uv_stats stats;
    /* private */
    uv_loop_t *loop;
    struct cmh_log *log;
    struct cmh_curl_uv_opts opts;
    char *ca_file;
    void *multi; /* CURLM * */
    uv_timer_t timer;
    struct cmh_curl_uv_req *inflight;
    struct cmh_curl_uv_sock *socks; /* the sockets being watched */
    struct cmh_curl_uv_sock *spare; /* watchers kept for when memory runs out */
    unsigned nspare;                /* their number */
    unsigned open_handles;          /* the timer and every socket poll not yet closed */
    int closing;
    int global_init;
    cmh_curl_uv_close_cb close_cb;
};

/* Sets up the multi handle and the timer on loop. opts may be NULL (defaults); log is borrowed
 * and may be NULL. Returns 0, -ENOMEM, or -EIO when libcurl cannot be initialised. On failure
 * nothing is left to close. */
int cmh_curl_uv_init(struct cmh_curl_uv *c, uv_loop_t *loop, const struct cmh_curl_uv_opts *opts,
                     struct cmh_log *log);

/* Starts req; done fires later from the loop. Returns 0, -EINVAL (no url, a header without ':'),
 * -EPROTONOSUPPORT (not https://, or http:// without allow_http), -EBUSY (req in flight, or the
 * instance is closing), -ENOMEM or -EIO; on failure done never fires. */
int cmh_curl_uv_start(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req, cmh_curl_uv_done_cb done);

/* Ends every request in flight (their done callbacks fire with CMH_CURL_ERR_CANCELLED before this
 * returns), closes the connections and handles; close_cb (may be NULL) fires from the loop once
 * everything is closed, after which c may be freed. */
void cmh_curl_uv_close(struct cmh_curl_uv *c, cmh_curl_uv_close_cb close_cb);

/* Ends one request in flight: its done callback fires with CMH_CURL_ERR_CANCELLED before this
 * returns. Does nothing when req is not in flight. */
void cmh_curl_uv_cancel(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req);

/* From inside req's on_data: the value of the index-th response header called name (any case),
 * or NULL when there is none; *amount (may be NULL) gets how many such headers there are. The
 * value is valid until on_data returns. */
const char *cmh_curl_uv_header(const struct cmh_curl_uv_req *req, const char *name, size_t index,
                               size_t *amount);

#endif
