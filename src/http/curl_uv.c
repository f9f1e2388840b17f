/* libcurl's multi-socket API on the uv loop: curl tells us which sockets to watch and when to time
 * out; we tell curl what happened (curl_multi_socket_action) and collect finished transfers after
 * every action. The only file that includes curl. */
#include "cmh/http/curl_uv.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/log.h"

#include <curl/curl.h>

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_BODY   (1024 * 1024)
#define DEFAULT_PER_HOST   8

/* One socket curl asked us to watch. */
struct cmh_curl_uv_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct cmh_curl_uv *c;
    struct cmh_curl_uv_sock *prev, *next; /* c->socks: watched, not yet closing */
};

static const char *const error_names[CMH_CURL_ERR_COUNT] = {
    "ok", "timeout", "connect", "tls", "reset", "too_large", "protocol", "cancelled", "other"};

const char *cmh_curl_uv_error_name(enum cmh_curl_uv_error e)
{
    return (unsigned)e < CMH_CURL_ERR_COUNT ? error_names[e] : "other";
}

static enum cmh_curl_uv_error classify(CURLcode rc, const struct cmh_curl_uv_req *req)
{
    if (req->too_large)
        return CMH_CURL_ERR_TOO_LARGE;
    switch (rc) {
    case CURLE_OK:
        return CMH_CURL_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return CMH_CURL_ERR_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return CMH_CURL_ERR_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return CMH_CURL_ERR_TLS;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return CMH_CURL_ERR_RESET;
    case CURLE_FILESIZE_EXCEEDED:
        return CMH_CURL_ERR_TOO_LARGE;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return CMH_CURL_ERR_PROTOCOL;
    default:
        return CMH_CURL_ERR_OTHER;
    }
}

static void multi_error(struct cmh_curl_uv *c, const char *what, CURLMcode rc)
{
    c->stats.multi_errors++;
    if (c->log != NULL)
        CMH_LOG(c->log, CMH_LOG_ERROR, "libcurl multi call failed", CMH_STR("call", what),
                CMH_STR("error", curl_multi_strerror(rc)));
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cmh_curl_uv *c;
    if (h->type == UV_POLL) {
        struct cmh_curl_uv_sock *s = container_of((uv_poll_t *)h, struct cmh_curl_uv_sock, poll);
        c = s->c;
        cmh_free(s);
    } else {
        c = container_of((uv_timer_t *)h, struct cmh_curl_uv, timer);
    }
    c->open_handles--;
    if (c->closing && c->open_handles == 0) {
        if (c->global_init)
            curl_global_cleanup();
        c->global_init = 0;
        cmh_free(c->ca_file);
        c->ca_file = NULL;
        if (c->close_cb != NULL)
            c->close_cb(c);
    }
}

static void unlink_req(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req)
{
    if (req->prev != NULL)
        req->prev->next = req->next;
    else
        c->inflight = req->next;
    if (req->next != NULL)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

int64_t cmh_curl_uv_parse_retry_after(const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (errno != 0 || *end != '\0')
            return -1;
        return s > (unsigned long long)INT64_MAX / 1000 ? INT64_MAX : (int64_t)s * 1000;
    }
    time_t when = curl_getdate(v, NULL);
    if (when == (time_t)-1)
        return -1;
    time_t now = time(NULL);
    if (when <= now)
        return 0;
    /* curl_getdate takes years far past 9999: saturate rather than overflow (found by fuzzing). */
    int64_t s = (int64_t)(when - now);
    return s > INT64_MAX / 1000 ? INT64_MAX : s * 1000;
}

/* Ends req: detaches every per-request resource first, so the callback may start req again. */
static void finish(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req, CURLcode rc,
                   enum cmh_curl_uv_error forced)
{
    CURL *easy = req->easy;
    struct cmh_curl_uv_response res = {.error = forced, .retry_after_ms = -1, .error_text = ""};
    char content_type[256] = "";
    char errbuf[sizeof req->errbuf];
    long status = 0, connects = 0;

    if (forced == CMH_CURL_OK) {
        res.error = classify(rc, req);
        if (curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK)
            res.status = status;
        if (curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK)
            res.new_connections = connects;
        long ver = 0;
        if (curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &ver) == CURLE_OK)
            res.http_version = ver == CURL_HTTP_VERSION_2_0 ? 2 : ver != 0 ? 1 : 0;
        struct curl_header *h;
        if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
            res.retry_after_ms = cmh_curl_uv_parse_retry_after(h->value);
        if (curl_easy_header(easy, "Content-Type", 0, CURLH_HEADER, -1, &h) == CURLHE_OK) {
            size_t n = strlen(h->value);
            if (n >= sizeof content_type)
                n = sizeof content_type - 1;
            memcpy(content_type, h->value, n);
            content_type[n] = '\0';
            res.content_type = content_type;
        }
    }
    if (res.error != CMH_CURL_OK) {
        memcpy(errbuf, req->errbuf, sizeof errbuf);
        errbuf[sizeof errbuf - 1] = '\0';
        if (errbuf[0] == '\0')
            snprintf(errbuf, sizeof errbuf, "%s",
                     forced == CMH_CURL_ERR_CANCELLED ? "cancelled" : curl_easy_strerror(rc));
        res.error_text = errbuf;
        /* A partial body is not a response. */
        res.status = res.error == CMH_CURL_ERR_TOO_LARGE ? res.status : 0;
    }
    CURLMcode mrc = curl_multi_remove_handle(c->multi, easy);
    if (mrc != CURLM_OK)
        multi_error(c, "remove_handle", mrc);
    curl_easy_cleanup(easy);
    curl_slist_free_all(req->slist);
    unlink_req(c, req);

    struct cmh_buf body = req->body_buf; /* the request may be started again from done */
    res.body = cmh_buf_str(&body);
    res.body_len = cmh_buf_len(&body);
    res.elapsed_ms = uv_now(c->loop) - req->start_ms;
    cmh_curl_uv_done_cb done = req->done;
    req->easy = req->slist = NULL;
    cmh_buf_init(&req->body_buf, 0);
    req->done = NULL;
    req->owner = NULL;

    c->stats.completed++;
    c->stats.errors[res.error]++;
    c->stats.connections += (uint64_t)(connects > 0 ? connects : 0);
    if (c->log != NULL)
        CMH_LOG(c->log, CMH_LOG_DEBUG, "http request done", CMH_URL("url", req->url),
                CMH_INT("status", res.status), CMH_STR("error", cmh_curl_uv_error_name(res.error)),
                CMH_UINT("bytes", res.body_len), CMH_UINT("ms", res.elapsed_ms),
                CMH_INT("new_connections", res.new_connections));
    done(req, &res);
    /* Answers may carry credentials (IMDS, container credentials, STS): none stays in freed
     * memory. */
    cmh_wipe(cmh_buf_ptr(&body), cmh_buf_len(&body));
    cmh_buf_free(&body);
}

/* Collects every finished transfer; runs after every curl_multi_socket_action. */
static void drain(struct cmh_curl_uv *c)
{
    CURLMsg *msg;
    int left;
    while (!c->closing && (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv) != CURLE_OK || priv == NULL)
            continue;
        finish(c, (struct cmh_curl_uv_req *)(void *)priv, rc, CMH_CURL_OK);
    }
}

static void on_timer(uv_timer_t *t)
{
    struct cmh_curl_uv *c = container_of(t, struct cmh_curl_uv, timer);
    int running;
    if (c->closing)
        return;
    CURLMcode rc = curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        multi_error(c, "socket_action(timeout)", rc);
    drain(c);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct cmh_curl_uv_sock *s = container_of(p, struct cmh_curl_uv_sock, poll);
    struct cmh_curl_uv *c = s->c;
    int flags = 0;
    if (c->closing)
        return;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    /* s may be freed (closed) inside this call: use only c afterwards. */
    CURLMcode rc = curl_multi_socket_action(c->multi, s->fd, flags, &running);
    if (rc != CURLM_OK)
        multi_error(c, "socket_action", rc);
    drain(c);
}

static void close_sock(struct cmh_curl_uv *c, struct cmh_curl_uv_sock *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

/* curl cannot take a failure of its socket callback: every transfer of the multi handle is
 * aborted, for good. So each request starts with two watchers in reserve (IPv4 and IPv6 attempts),
 * and on_socket falls back on them when an allocation fails. */
#define SPARE_SOCKS 2

static int reserve_socks(struct cmh_curl_uv *c)
{
    while (c->nspare < SPARE_SOCKS) {
        struct cmh_curl_uv_sock *s = cmh_calloc(1, sizeof *s);
        if (s == NULL)
            return -ENOMEM;
        s->next = c->spare;
        c->spare = s;
        c->nspare++;
    }
    return 0;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct cmh_curl_uv *c = userp;
    struct cmh_curl_uv_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            CURLMcode rc = curl_multi_assign(c->multi, fd, NULL);
            if (rc != CURLM_OK)
                multi_error(c, "assign", rc);
            close_sock(c, s);
        }
        return 0;
    }
    if (s == NULL) {
        s = cmh_calloc(1, sizeof *s);
        if (s == NULL && c->spare != NULL) {
            s = c->spare;
            c->spare = s->next;
            c->nspare--;
            memset(s, 0, sizeof *s);
        }
        if (s == NULL)
            return -1;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            cmh_free(s);
            return -1;
        }
        s->fd = fd;
        s->c = c;
        s->next = c->socks;
        if (s->next != NULL)
            s->next->prev = s;
        c->socks = s;
        c->open_handles++;
        CURLMcode rc = curl_multi_assign(c->multi, fd, s);
        if (rc != CURLM_OK) {
            multi_error(c, "assign", rc);
            close_sock(c, s);
            return -1;
        }
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct cmh_curl_uv *c = userp;
    if (timeout_ms < 0)
        return uv_timer_stop(&c->timer) == 0 ? 0 : -1;
    /* 0 means "as soon as possible": the next loop iteration, never from inside curl. */
    return uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

/* The most bytes of an answer kept: the request's cap, else the instance's. */
static size_t body_limit(const struct cmh_curl_uv *c, const struct cmh_curl_uv_req *req)
{
    return req->max_body ? req->max_body : c->opts.max_body;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    struct cmh_curl_uv_req *req = userp;
    size_t n = size * nmemb;
    if (req->on_data != NULL) {
        long status = 0;
        if (curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
            status = 0;
        return req->on_data(req, status, data, n) == 0 ? n : 0;
    }
    int rc = cmh_buf_add(&req->body_buf, data, n);
    if (rc == -E2BIG)
        req->too_large = 1;
    return rc == 0 ? n : 0; /* 0: curl aborts the transfer with CURLE_WRITE_ERROR */
}

int cmh_curl_uv_init(struct cmh_curl_uv *c, uv_loop_t *loop, const struct cmh_curl_uv_opts *opts,
                     struct cmh_log *log)
{
    int rc;
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->log = log;
    if (opts != NULL)
        c->opts = *opts;
    if (c->opts.timeout_ms == 0)
        c->opts.timeout_ms = DEFAULT_TIMEOUT_MS;
    if (c->opts.connect_timeout_ms == 0 || c->opts.connect_timeout_ms > c->opts.timeout_ms)
        c->opts.connect_timeout_ms = c->opts.timeout_ms;
    if (c->opts.max_body == 0)
        c->opts.max_body = DEFAULT_MAX_BODY;
    if (c->opts.max_host_connections <= 0)
        c->opts.max_host_connections = DEFAULT_PER_HOST;
    if (c->opts.ca_file != NULL) {
        c->ca_file = cmh_strdup(c->opts.ca_file);
        if (c->ca_file == NULL)
            return -ENOMEM;
    }
    c->opts.ca_file = c->ca_file;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = -EIO;
        goto fail;
    }
    c->global_init = 1;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    CURLMcode m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    if (m == CURLM_OK)
        m = curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    if (m == CURLM_OK)
        m = curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    if (m == CURLM_OK)
        m = curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    if (m == CURLM_OK)
        m = curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                              c->opts.max_host_connections);
    /* Keep every idle connection a full set of hosts could use, for reuse across rounds. */
    if (m == CURLM_OK)
        m = curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, c->opts.max_host_connections * 4);
    if (m != CURLM_OK) {
        rc = -EIO;
        goto fail;
    }
    rc = uv_timer_init(loop, &c->timer);
    if (rc != 0)
        goto fail;
    c->open_handles = 1;
    return 0;

fail:
    if (c->multi != NULL)
        curl_multi_cleanup(c->multi);
    c->multi = NULL;
    if (c->global_init)
        curl_global_cleanup();
    c->global_init = 0;
    cmh_free(c->ca_file);
    c->ca_file = NULL;
    return rc;
}

static int scheme_allowed(const char *url, int allow_http)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return 1;
    return allow_http && strncasecmp(url, "http://", 7) == 0;
}

/* Applies every option of one request; the first failure wins. */
static CURLcode setup_easy(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req, CURL *e)
{
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PRIVATE, (char *)(void *)req);
    SET(CURLOPT_ERRORBUFFER, req->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, req->allow_http ? "http,https" : "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    /* TLS verification is never optional. */
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    /* A CA file replaces the system store, it does not add to it: libcurl's built-in CA path
     * (Debian's is /etc/ssl/certs) would otherwise stay an anchor too, and any certificate from
     * a public CA for the API server's address would get the service-account token. */
    const char *ca = req->ca_file != NULL ? req->ca_file : c->ca_file;
    if (ca != NULL) {
        SET(CURLOPT_CAINFO, ca);
        SET(CURLOPT_CAPATH, (char *)NULL);
    }
    /* The credential endpoints and the Kubernetes API never go through a proxy: PROXY "" makes
     * libcurl ignore http_proxy, HTTPS_PROXY, ALL_PROXY and NO_PROXY. Other requests (the AWS
     * service endpoints) keep libcurl's reading of those variables. */
    if (req->no_proxy)
        SET(CURLOPT_PROXY, "");
    uint64_t total = req->timeout_ms ? req->timeout_ms : c->opts.timeout_ms;
    SET(CURLOPT_TIMEOUT_MS, (long)(total > LONG_MAX ? LONG_MAX : total));
    SET(CURLOPT_CONNECTTIMEOUT_MS,
        (long)(c->opts.connect_timeout_ms > LONG_MAX ? LONG_MAX : c->opts.connect_timeout_ms));
    if (req->http2) {
        SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        SET(CURLOPT_PIPEWAIT, 1L);
    } else {
        SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    }
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, req);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(req->on_data != NULL ? 0 : body_limit(c, req)));
    SET(CURLOPT_HTTPHEADER, (struct curl_slist *)req->slist);

    const char *m = req->method;
    if (m == NULL)
        m = req->body_len > 0 ? "POST" : "GET";
    if (strcmp(m, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else {
        /* A body, even empty, for POST and PUT: both need a Content-Length. */
        if (req->body_len > 0 || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
            SET(CURLOPT_POSTFIELDS, req->body_len > 0 ? (const char *)req->body : "");
        }
        if (strcmp(m, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, m);
    }
#undef SET
    return rc;
}

int cmh_curl_uv_start(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req, cmh_curl_uv_done_cb done)
{
    CURL *e = NULL;
    struct curl_slist *list = NULL;
    int rc;
    if (c->closing || c->multi == NULL || req->easy != NULL)
        return -EBUSY;
    if (req->url == NULL || done == NULL || (req->body == NULL && req->body_len > 0) ||
        (req->nheaders > 0 && req->headers == NULL))
        return -EINVAL;
    if (!scheme_allowed(req->url, req->allow_http))
        return -EPROTONOSUPPORT;
    if (reserve_socks(c) != 0)
        return -ENOMEM;
    /* Never "Expect: 100-continue": one round trip more for nothing. */
    list = curl_slist_append(NULL, "Expect:");
    if (list == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < req->nheaders; i++) {
        if (req->headers[i] == NULL || strchr(req->headers[i], ':') == NULL ||
            strpbrk(req->headers[i], "\r\n") != NULL) {
            rc = -EINVAL;
            goto fail;
        }
        struct curl_slist *l = curl_slist_append(list, req->headers[i]);
        if (l == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        list = l;
    }
    e = curl_easy_init();
    if (e == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    req->slist = list;
    req->errbuf[0] = '\0';
    cmh_buf_init(&req->body_buf, body_limit(c, req));
    req->too_large = 0;
    CURLcode crc = setup_easy(c, req, e);
    if (crc != CURLE_OK) {
        rc = crc == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
        goto fail;
    }
    req->owner = c;
    req->done = done;
    req->easy = e;
    req->start_ms = uv_now(c->loop);
    /* Adding only arms the timer (curl asks for a 0 ms timeout); the transfer and the done
     * callback happen from the loop. */
    CURLMcode m = curl_multi_add_handle(c->multi, e);
    if (m != CURLM_OK) {
        multi_error(c, "add_handle", m);
        req->easy = NULL;
        req->done = NULL;
        req->owner = NULL;
        rc = m == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
        goto fail;
    }
    req->prev = NULL;
    req->next = c->inflight;
    if (c->inflight != NULL)
        c->inflight->prev = req;
    c->inflight = req;
    c->stats.started++;
    return 0;

fail:
    if (e != NULL)
        curl_easy_cleanup(e);
    curl_slist_free_all(list);
    req->slist = NULL;
    return rc;
}

void cmh_curl_uv_close(struct cmh_curl_uv *c, cmh_curl_uv_close_cb close_cb)
{
    if (c->closing)
        return;
    c->close_cb = close_cb;
    /* From here cmh_curl_uv_start refuses, so the cancelled callbacks cannot add requests. */
    c->closing = 1;
    while (c->inflight != NULL)
        finish(c, c->inflight, CURLE_OK, CMH_CURL_ERR_CANCELLED);
    uv_timer_stop(&c->timer);
    /* Cleanup closes the cached connections; curl may or may not report their sockets removed. */
    CURLMcode m = curl_multi_cleanup(c->multi);
    if (m != CURLM_OK)
        multi_error(c, "cleanup", m);
    c->multi = NULL;
    while (c->spare != NULL) {
        struct cmh_curl_uv_sock *s = c->spare;
        c->spare = s->next;
        cmh_free(s);
    }
    c->nspare = 0;
    while (c->socks != NULL)
        close_sock(c, c->socks);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

void cmh_curl_uv_cancel(struct cmh_curl_uv *c, struct cmh_curl_uv_req *req)
{
    if (c->closing || req->easy == NULL || req->owner != c)
        return;
    finish(c, req, CURLE_OK, CMH_CURL_ERR_CANCELLED);
}

const char *cmh_curl_uv_header(const struct cmh_curl_uv_req *req, const char *name, size_t index,
                               size_t *amount)
{
    struct curl_header *h;
    if (amount != NULL)
        *amount = 0;
    if (req->easy == NULL ||
        curl_easy_header(req->easy, name, index, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    if (amount != NULL)
        *amount = h->amount;
    return h->value;
}
