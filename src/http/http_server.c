#include "cmh/http/http_server.h"
#include "cmh/http/http_server_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"

#include <errno.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define URL_MAX 1024
/* Room in the kernel's queue for a burst of connections between two turns of the loop: a
 * connection that finds it full has its SYN dropped and retries after a second, too late for a
 * probe with a one-second timeout. */
#define LISTEN_BACKLOG 1024

/* The request side of one connection, without its socket: what its reads feed and the answer they
 * produce. Embedded in a connection; cmh_http_server_feed runs one on the stack. */
struct exchange {
    struct cmh_http_server *s;
    llhttp_t parser;
    char url[URL_MAX];
    size_t url_len;
    int url_too_long;
    size_t bytes;
    int responded;
    struct cmh_buf out; /* the answer, once responded */
};

/* One remote address and how many connections it holds (a slot of s->peers; count 0 = free). */
struct cmh_http_peer {
    unsigned char addr[16]; /* IPv6, or IPv4-mapped */
    unsigned count;
};

struct cmh_http_conn {
    struct cmh_http_conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    struct exchange x;
    struct cmh_http_peer *peer; /* NULL until accepted */
    unsigned long long seq;     /* accept order: lower is older */
    int answering;              /* the answer is being written: never evicted */
    int closing;
    int pending; /* handles not yet closed */
    char rbuf[4096];
};

/* ---- connections -------------------------------------------------------------------------- */

static void maybe_server_closed(struct cmh_http_server *s)
{
    if (!s->listening && s->pending_closes == 0) {
        cmh_free(s->peers);
        s->peers = NULL;
        s->npeers = 0;
    }
    if (!s->listening && s->pending_closes == 0 && s->close_cb != NULL) {
        cmh_http_server_close_cb cb = s->close_cb;
        s->close_cb = NULL;
        cb(s);
    }
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct cmh_http_conn *c = h->data;
    if (--c->pending > 0)
        return;
    struct cmh_http_server *s = c->x.s;
    cmh_buf_free(&c->x.out);
    cmh_free(c);
    s->pending_closes--;
    maybe_server_closed(s);
}

static void conn_close(struct cmh_http_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    struct cmh_http_server *s = c->x.s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    if (c->peer != NULL)
        c->peer->count--;
    c->peer = NULL;
    s->pending_closes++;
    c->pending = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status; /* written or not, this connection is done */
    conn_close(container_of(w, struct cmh_http_conn, wreq));
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/* Builds the answer, status + body, in x->out; the connection sends it and closes: one request
 * per connection keeps the server simple and its resources bounded; probes and Prometheus
 * reconnect cheaply. */
static void respond(struct exchange *x, int status, const char *ctype, const char *body, size_t len,
                    int head_only)
{
    if (x->responded)
        return;
    x->responded = 1;
    cmh_buf_reset(&x->out);
    (void)cmh_buf_printf(&x->out,
                         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                         "Connection: close\r\n\r\n",
                         status, reason_phrase(status), ctype, len,
                         status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head_only)
        (void)cmh_buf_add(&x->out, body, len); /* checked once, before the answer is sent */
}

static void respond_text(struct exchange *x, int status, const char *text)
{
    respond(x, status, "text/plain; charset=utf-8", text, strlen(text), 0);
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *x = p->data;
    if (x->url_len + len >= URL_MAX) {
        x->url_too_long = 1;
        return 0;
    }
    memcpy(x->url + x->url_len, at, len);
    x->url_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct exchange *x = p->data;
    struct cmh_http_server *s = x->s;
    s->requests++;
    uint8_t method = llhttp_get_method(p);
    if (x->url_too_long) {
        respond_text(x, 414, "request target too long\n");
        return HPE_PAUSED;
    }
    if (method != HTTP_GET && method != HTTP_HEAD) {
        respond_text(x, 405, "only GET and HEAD\n");
        return HPE_PAUSED;
    }
    x->url[x->url_len] = '\0';
    char *q = strchr(x->url, '?');
    if (q != NULL)
        *q = '\0';
    struct cmh_buf body;
    cmh_buf_init(&body, 0);
    const char *ctype = "text/plain; charset=utf-8";
    int status = s->handler(s->handler_arg, x->url, &body, &ctype);
    if (cmh_buf_err(&body) != 0) {
        cmh_buf_free(&body);
        respond_text(x, 500, "out of memory\n");
        return HPE_PAUSED;
    }
    if (status == 404 && cmh_buf_len(&body) == 0)
        (void)cmh_buf_addstr(&body, "not found; paths: /metrics /healthz /readyz\n");
    respond(x, status, ctype, cmh_buf_str(&body), cmh_buf_len(&body), method == HTTP_HEAD);
    cmh_buf_free(&body);
    return HPE_PAUSED; /* one request per connection */
}

/* Callbacks we do not set stay NULL; const, so no parser state is shared between connections. */
static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

static void exchange_init(struct exchange *x, struct cmh_http_server *s)
{
    memset(x, 0, sizeof *x);
    x->s = s;
    llhttp_init(&x->parser, HTTP_REQUEST, &settings);
    x->parser.data = x;
}

/* Feeds one read of n bytes. Returns 1 when this read produced the answer (in x->out), else 0;
 * reads after the answer are ignored. */
static int exchange_read(struct exchange *x, const char *buf, size_t n)
{
    if (n == 0 || x->responded)
        return 0;
    /* Checked before parsing: a request that completes in the read that crosses the limit must
     * not be answered as if it were small. */
    x->bytes += n;
    if (x->bytes > x->s->opt.max_request) {
        x->s->rejected++;
        respond_text(x, 431, "request too large\n");
        return 1;
    }
    enum llhttp_errno err = llhttp_execute(&x->parser, buf, n);
    if (!x->responded && err != HPE_OK && err != HPE_PAUSED) {
        x->s->rejected++;
        respond_text(x, 400, "malformed request\n");
    }
    return x->responded;
}

int cmh_http_server_feed(struct cmh_http_server *s, const uv_buf_t *reads, size_t nreads,
                         size_t *used, struct cmh_buf *out)
{
    struct exchange x;
    int answered = 0;
    size_t i = 0;
    exchange_init(&x, s);
    while (i < nreads && !answered) {
        answered = exchange_read(&x, reads[i].base, reads[i].len);
        i++;
    }
    *used = i;
    cmh_buf_init(out, 0);
    if (!answered || cmh_buf_err(&x.out) != 0) {
        cmh_buf_free(&x.out);
        return answered ? -ENOMEM : 0;
    }
    *out = x.out;
    return 1;
}

/* Sends the answer the reads produced, then closes. */
static void conn_send(struct cmh_http_conn *c)
{
    c->answering = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);
    if (cmh_buf_err(&c->x.out) != 0) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(cmh_buf_ptr(&c->x.out), (unsigned)cmh_buf_len(&c->x.out));
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct cmh_http_conn *c = h->data;
    (void)suggested;
    buf->base = c->rbuf;
    buf->len = sizeof c->rbuf;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    struct cmh_http_conn *c = st->data;
    if (n < 0) {
        conn_close(c);
        return;
    }
    if (exchange_read(&c->x, buf->base, (size_t)n))
        conn_send(c);
}

static void on_idle(uv_timer_t *t)
{
    conn_close(container_of(t, struct cmh_http_conn, timer));
}

/* The slot of the connection's remote address (a new slot for a new address), or NULL when it
 * cannot be read. There are as many slots as connections may be open, plus one. */
static struct cmh_http_peer *peer_of(struct cmh_http_server *s, struct cmh_http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    unsigned char key[16] = {0};
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return NULL;
    if (ss.ss_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        memcpy(key, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    } else {
        return NULL;
    }
    struct cmh_http_peer *free_slot = NULL;
    for (unsigned i = 0; i < s->npeers; i++) {
        struct cmh_http_peer *p = &s->peers[i];
        if (p->count > 0 && memcmp(p->addr, key, sizeof key) == 0)
            return p;
        if (p->count == 0 && free_slot == NULL)
            free_slot = p;
    }
    if (free_slot != NULL)
        memcpy(free_slot->addr, key, sizeof key);
    return free_slot;
}

/* With every connection slot taken, who makes room for a newcomer: the oldest connection, still
 * waiting for its request, of the address that holds the most. So one address, or a few, that
 * open connections and send nothing (or drip bytes) can never keep another address out: a
 * kubelet probe, which sends its request as soon as it connects, is answered while a flood from
 * elsewhere goes on. Only a flood from as many addresses as there are slots competes with it on
 * age alone. NULL when every other connection is being answered. */
static struct cmh_http_conn *eviction_victim(struct cmh_http_server *s, struct cmh_http_conn *newc)
{
    struct cmh_http_conn *victim = NULL;
    for (struct cmh_http_conn *c = s->conns; c != NULL; c = c->next) {
        if (c == newc || c->answering)
            continue;
        unsigned n = c->peer != NULL ? c->peer->count : 0;
        unsigned vn = victim != NULL && victim->peer != NULL ? victim->peer->count : 0;
        if (victim == NULL || n > vn || (n == vn && c->seq < victim->seq))
            victim = c;
    }
    return victim;
}

static void on_connection(uv_stream_t *l, int status)
{
    struct cmh_http_server *s = container_of((uv_tcp_t *)l, struct cmh_http_server, listener);
    if (status < 0) {
        /* libuv meets EMFILE with its reserve descriptor (accepts and closes what waits) and calls
         * us only when that fails too, or for other errors; it keeps polling, nothing to retry
         * here. Count it and say so at the 1st, 2nd, 4th... failure. */
        s->accept_errors++;
        if ((s->accept_errors & (s->accept_errors - 1)) == 0)
            CMH_LOG(s->log, CMH_LOG_WARN, "http server cannot accept connections",
                    CMH_STR("error", uv_err_name(status)), CMH_UINT("failures", s->accept_errors));
        return;
    }
    struct cmh_http_conn *c = cmh_calloc(1, sizeof *c);
    if (c == NULL)
        return; /* the connection waits in the backlog; the next accept retries */
    exchange_init(&c->x, s);
    if (uv_tcp_init(s->loop, &c->tcp) != 0) {
        cmh_free(c);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->seq = ++s->accepted;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0 || (c->peer = peer_of(s, c)) == NULL) {
        s->rejected++;
        conn_close(c);
        return;
    }
    c->peer->count++;
    if (s->nconns > s->opt.max_conns) {
        struct cmh_http_conn *victim = eviction_victim(s, c);
        s->rejected++;
        if (victim == NULL) {
            conn_close(c);
            return;
        }
        s->evicted++;
        conn_close(victim);
    }
    uv_timer_start(&c->timer, on_idle, s->opt.idle_ms, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

int cmh_http_server_start(struct cmh_http_server *s, uv_loop_t *loop,
                          const struct cmh_http_server_opts *opt, cmh_http_handler handler,
                          void *arg, struct cmh_log *log)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->log = log;
    s->opt = *opt;
    if (s->opt.max_conns == 0)
        s->opt.max_conns = 64;
    if (s->opt.max_request == 0)
        s->opt.max_request = 8192;
    if (s->opt.idle_ms == 0)
        s->opt.idle_ms = 10000;
    s->handler = handler;
    s->handler_arg = arg;
    s->npeers = s->opt.max_conns + 1;
    s->peers = cmh_calloc(s->npeers, sizeof *s->peers);
    if (s->peers == NULL)
        return UV_ENOMEM;
    struct sockaddr_storage ss;
    int rc = uv_ip4_addr(opt->address, (int)opt->port, (struct sockaddr_in *)&ss);
    if (rc != 0)
        rc = uv_ip6_addr(opt->address, (int)opt->port, (struct sockaddr_in6 *)&ss);
    if (rc == 0)
        rc = uv_tcp_init_ex(loop, &s->listener, ss.ss_family);
    if (rc == UV_EAFNOSUPPORT && ss.ss_family == AF_INET6 &&
        IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr)) {
        /* Every address, on a kernel without IPv6: the IPv4 wildcard is all there is. */
        CMH_LOG(log, CMH_LOG_INFO, "no IPv6 on this host: listening on IPv4 only",
                CMH_STR("address", "0.0.0.0"));
        rc = uv_ip4_addr("0.0.0.0", (int)opt->port, (struct sockaddr_in *)&ss);
        if (rc == 0)
            rc = uv_tcp_init_ex(loop, &s->listener, AF_INET);
    }
    if (rc != 0) {
        CMH_LOG(log, CMH_LOG_ERROR, "cannot listen", CMH_STR("address", opt->address),
                CMH_STR("error", uv_strerror(rc)));
        cmh_free(s->peers);
        s->peers = NULL;
        return rc;
    }
    s->listening = 1;
    /* No UV_TCP_IPV6ONLY: libuv then turns IPV6_V6ONLY off, so "::" takes IPv4 connections too
     * (127.0.0.1 through kubectl port-forward as well as ::1 and the pod IP). */
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0) {
        CMH_LOG(log, CMH_LOG_ERROR, "cannot listen", CMH_STR("address", opt->address),
                CMH_UINT("port", opt->port), CMH_STR("error", uv_strerror(rc)));
        cmh_http_server_close(s, NULL);
        return rc;
    }
    CMH_LOG(log, CMH_LOG_INFO, "listening", CMH_STR("address", opt->address),
            CMH_UINT("port", cmh_http_server_port(s)));
    return 0;
}

unsigned cmh_http_server_port(const struct cmh_http_server *s)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct cmh_http_server *s = container_of((uv_tcp_t *)h, struct cmh_http_server, listener);
    s->pending_closes--;
    maybe_server_closed(s);
}

void cmh_http_server_close(struct cmh_http_server *s, cmh_http_server_close_cb close_cb)
{
    s->close_cb = close_cb;
    if (s->listening) {
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        s->listening = 0;
    }
    while (s->conns != NULL)
        conn_close(s->conns);
    maybe_server_closed(s);
}
