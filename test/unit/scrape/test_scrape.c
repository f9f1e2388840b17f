/* Scrape engine against scripted loopback peers on the same loop: every result class, streaming,
 * keep-alive reuse and its stale-connection retry, the connection bound, the round deadline,
 * jitter, rate-limited logging, close mid-round. Every test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"
#include "cmh/scrape/prom.h"
#include "cmh/scrape/scrape_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

/* ---- scripted peer ---- */

enum mode {
    M_OK,           /* Content-Length body */
    M_FRAGMENTS,    /* the OK response, 7 bytes per ms */
    M_CHUNKED,      /* chunked body, chunks of 100 bytes */
    M_EOF_BODY,     /* no Content-Length: the body ends at close */
    M_STALL,        /* read the request, never answer */
    M_RESET,        /* half the response, then RST */
    M_TRUNCATE,     /* Content-Length, half the body, then FIN */
    M_500,          /* status 500 */
    M_HTML,         /* Content-Type: text/html */
    M_GZIP,         /* gzip when asked, chunked by 2 KB as Go's server does; identity when not */
    M_GZIP_CUT,     /* always gzip: the first half of the stream in a complete response */
    M_BOMB,         /* always gzip: about 1 KB that inflates to 1 MiB of newlines */
    M_BR,           /* Content-Encoding: br (an identity body) */
    M_CL_HUGE,      /* Content-Length above max_body */
    M_CHUNKED_HUGE, /* a chunked body that never ends (above max_body) */
    M_GARBAGE,      /* not HTTP */
    M_HEADER_HUGE,  /* a header above max_header */
    M_CLOSE_SECOND, /* keep-alive: answer the first request, close at the second */
};

struct peer {
    uv_loop_t *loop;
    uv_tcp_t server;
    enum mode mode;
    struct sockaddr_in addr;
    const char *body;
    size_t body_len;
    unsigned char *gz; /* body (or the bomb) gzip-compressed by zlib, for the gzip modes */
    size_t gz_len;
    unsigned accepted, requests, open, max_open;
    unsigned asked_gzip; /* requests that carried Accept-Encoding: gzip */
    unsigned any_ae;     /* requests with any Accept-Encoding line */
    uint64_t first_accept_ms, last_accept_ms;
};

struct pconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    int timer_used, pending, closing;
    struct peer *p;
    char req[8192];
    size_t req_len;
    char *out;
    size_t out_len, off;
    unsigned nreq;
    int asks_gzip; /* the request being answered */
};

static void pconn_closed(uv_handle_t *h)
{
    struct pconn *c = h->data;
    if (--c->pending == 0) {
        free(c->out);
        free(c);
    }
}

static void pconn_close(struct pconn *c, int reset)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->p->open--;
    if (c->timer_used) {
        uv_timer_stop(&c->timer);
        uv_close((uv_handle_t *)&c->timer, pconn_closed);
    }
    if (reset)
        uv_tcp_close_reset(&c->tcp, pconn_closed);
    else
        uv_close((uv_handle_t *)&c->tcp, pconn_closed);
}

static void pwrite_all(struct pconn *c, const char *data, size_t len)
{
    /* Loopback buffers take our small responses whole; anything else is a test bug. */
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    while (b.len > 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == UV_EAGAIN)
            continue;
        if (n < 0)
            return;
        b.base += n;
        b.len -= (unsigned)n;
    }
}

static void on_fragment(uv_timer_t *t)
{
    struct pconn *c = container_of(t, struct pconn, timer);
    struct peer *p = c->p;
    if (p->mode == M_CHUNKED_HUGE) {
        char chunk[4096 + 16];
        int h = snprintf(chunk, sizeof chunk, "1000\r\n");
        memset(chunk + h, '#', 4096);
        chunk[h + 4095] = '\n';
        memcpy(chunk + h + 4096, "\r\n", 2);
        pwrite_all(c, chunk, (size_t)h + 4098);
        return;
    }
    size_t n = c->out_len - c->off < 7 ? c->out_len - c->off : 7;
    pwrite_all(c, c->out + c->off, n);
    c->off += n;
    if (c->off >= c->out_len)
        uv_timer_stop(t);
}

static void start_timer(struct pconn *c, uint64_t every)
{
    if (!c->timer_used) {
        uv_timer_init(c->p->loop, &c->timer);
        c->timer.data = c;
        c->timer_used = 1;
        c->pending++;
    }
    uv_timer_start(&c->timer, on_fragment, 0, every);
}

static char *ok_response(struct peer *p, const char *ctype, const char *extra, size_t *len)
{
    size_t cap = p->body_len + 512;
    char *out = malloc(cap);
    assert_non_null(out);
    int h =
        snprintf(out, cap, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%sContent-Length: %zu\r\n\r\n",
                 ctype, extra, p->body_len);
    memcpy(out + h, p->body, p->body_len);
    *len = (size_t)h + p->body_len;
    return out;
}

static const char prom_ct[] = "text/plain; version=0.0.4; charset=utf-8";

/* zlib straight, not our wrapper: an independent encoder. */
static unsigned char *deflate_gzip(const void *in, size_t len, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&z, (uLong)len);
    unsigned char *out = malloc(cap);
    assert_non_null(out);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    *out_len = z.total_out;
    deflateEnd(&z);
    return out;
}

/* A response with body b framed as chunks of at most chunk bytes, headers extra; *len set. */
static char *chunked_response(const char *extra, const void *b, size_t blen, size_t chunk,
                              size_t *len)
{
    char *o = malloc(blen * 2 + 1024);
    assert_non_null(o);
    size_t n = (size_t)snprintf(o, 512,
                                "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%s"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                prom_ct, extra);
    for (size_t off = 0; off < blen; off += chunk) {
        size_t k = blen - off < chunk ? blen - off : chunk;
        n += (size_t)snprintf(o + n, 16, "%zx\r\n", k);
        memcpy(o + n, (const char *)b + off, k);
        n += k;
        memcpy(o + n, "\r\n", 2);
        n += 2;
    }
    memcpy(o + n, "0\r\n\r\n", 5);
    *len = n + 5;
    return o;
}

/* Content-Length response with a gzip body of len bytes. */
static char *gzip_cl_response(const unsigned char *gz, size_t gz_len, size_t *len)
{
    char *o = malloc(gz_len + 512);
    assert_non_null(o);
    int h = snprintf(o, 512,
                     "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Encoding: gzip\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     prom_ct, gz_len);
    memcpy(o + h, gz, gz_len);
    *len = (size_t)h + gz_len;
    return o;
}

static void respond(struct pconn *c)
{
    struct peer *p = c->p;
    p->requests++;
    c->nreq++;
    free(c->out);
    c->out = NULL;
    c->off = 0;
    size_t len;
    switch (p->mode) {
    case M_OK:
    case M_CLOSE_SECOND:
        if (p->mode == M_CLOSE_SECOND && c->nreq >= 2) {
            pconn_close(c, 0);
            return;
        }
        c->out = ok_response(p, prom_ct, "", &len);
        pwrite_all(c, c->out, len);
        free(c->out);
        c->out = NULL;
        return;
    case M_FRAGMENTS:
        c->out = ok_response(p, prom_ct, "", &c->out_len);
        start_timer(c, 1);
        return;
    case M_CHUNKED: {
        char *o = chunked_response("", p->body, p->body_len, 100, &len);
        pwrite_all(c, o, len);
        free(o);
        return;
    }
    case M_EOF_BODY: {
        char h[256];
        int n =
            snprintf(h, sizeof h,
                     "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n\r\n", prom_ct);
        pwrite_all(c, h, (size_t)n);
        pwrite_all(c, p->body, p->body_len);
        pconn_close(c, 0);
        return;
    }
    case M_STALL:
        return;
    case M_RESET:
    case M_TRUNCATE:
        c->out = ok_response(p, prom_ct, "", &len);
        pwrite_all(c, c->out, len / 2);
        pconn_close(c, p->mode == M_RESET);
        return;
    case M_500: {
        static const char r[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                                "Content-Length: 5\r\n\r\noops\n";
        pwrite_all(c, r, sizeof r - 1);
        return;
    }
    case M_HTML:
        c->out = ok_response(p, "text/html; charset=utf-8", "", &len);
        pwrite_all(c, c->out, len);
        return;
    case M_GZIP:
        /* As promhttp on Go's server: gzip only when asked, and a body past 2 KB is chunked. */
        if (c->asks_gzip)
            c->out = chunked_response("Content-Encoding: gzip\r\n", p->gz, p->gz_len, 2048, &len);
        else
            c->out = ok_response(p, prom_ct, "", &len);
        pwrite_all(c, c->out, len);
        return;
    case M_GZIP_CUT:
        c->out = gzip_cl_response(p->gz, p->gz_len / 2, &len);
        pwrite_all(c, c->out, len);
        return;
    case M_BOMB:
        c->out = gzip_cl_response(p->gz, p->gz_len, &len);
        pwrite_all(c, c->out, len);
        return;
    case M_BR:
        c->out = ok_response(p, prom_ct, "Content-Encoding: br\r\n", &len);
        pwrite_all(c, c->out, len);
        return;
    case M_CL_HUGE: {
        static const char r[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                "Content-Length: 99999999\r\n\r\n# nothing\n";
        pwrite_all(c, r, sizeof r - 1);
        return;
    }
    case M_CHUNKED_HUGE: {
        static const char r[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n";
        pwrite_all(c, r, sizeof r - 1);
        start_timer(c, 1);
        return;
    }
    case M_GARBAGE: {
        static const char r[] = "\x16\x03\x01 not http at all\r\n\r\n";
        pwrite_all(c, r, sizeof r - 1);
        pconn_close(c, 0);
        return;
    }
    case M_HEADER_HUGE: {
        size_t n = 40000;
        char *o = malloc(n + 256);
        assert_non_null(o);
        int h = snprintf(o, 256, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Big: ");
        memset(o + h, 'a', n);
        memcpy(o + h + n, "\r\nContent-Length: 0\r\n\r\n", 23);
        pwrite_all(c, o, (size_t)h + n + 23);
        free(o);
        return;
    }
    }
}

static void p_alloc(uv_handle_t *h, size_t s, uv_buf_t *buf)
{
    struct pconn *c = h->data;
    buf->base = c->req + c->req_len;
    buf->len = sizeof c->req - 1 - c->req_len;
}

static void p_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct pconn *c = st->data;
    if (c->closing)
        return;
    if (nread < 0) {
        pconn_close(c, 0);
        return;
    }
    c->req_len += (size_t)nread;
    c->req[c->req_len] = '\0';
    char *end;
    while (!c->closing && (end = strstr(c->req, "\r\n\r\n")) != NULL) {
        size_t used = (size_t)(end + 4 - c->req);
        assert_memory_equal(c->req, "GET /metrics HTTP/1.1\r\n", 23);
        /* The request's headers end at "\r\n\r\n": its Accept-Encoding line is exactly gzip. */
        end[2] = '\0';
        c->asks_gzip = strcasestr(c->req, "\r\nAccept-Encoding: gzip\r\n") != NULL;
        c->p->asked_gzip += (unsigned)c->asks_gzip;
        c->p->any_ae += strcasestr(c->req, "\r\nAccept-Encoding:") != NULL;
        memmove(c->req, c->req + used, c->req_len - used + 1);
        c->req_len -= used;
        respond(c);
    }
}

static void p_conn(uv_stream_t *server, int status)
{
    struct peer *p = container_of((uv_tcp_t *)server, struct peer, server);
    assert_int_equal(status, 0);
    struct pconn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->p = p;
    c->pending = 1;
    uv_tcp_init(p->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
    p->accepted++;
    p->open++;
    if (p->open > p->max_open)
        p->max_open = p->open;
    uint64_t now = uv_now(p->loop);
    if (p->accepted == 1)
        p->first_accept_ms = now;
    p->last_accept_ms = now;
    uv_read_start((uv_stream_t *)&c->tcp, p_alloc, p_read);
}

static void peer_start(struct peer *p, uv_loop_t *loop, enum mode mode, const char *body,
                       size_t body_len)
{
    memset(p, 0, sizeof *p);
    p->loop = loop;
    p->mode = mode;
    p->body = body;
    p->body_len = body_len;
    if (mode == M_GZIP || mode == M_GZIP_CUT)
        p->gz = deflate_gzip(body, body_len, &p->gz_len);
    if (mode == M_BOMB) {
        size_t n = 1u << 20;
        char *nl = malloc(n);
        assert_non_null(nl);
        memset(nl, '\n', n);
        p->gz = deflate_gzip(nl, n, &p->gz_len);
        free(nl);
        assert_in_range(p->gz_len, 500, 1200); /* "about 1 KB" */
    }
    uv_tcp_init(loop, &p->server);
    uv_ip4_addr("127.0.0.1", 0, &p->addr);
    assert_int_equal(uv_tcp_bind(&p->server, (const struct sockaddr *)&p->addr, 0), 0);
    int len = sizeof p->addr;
    assert_int_equal(uv_tcp_getsockname(&p->server, (struct sockaddr *)&p->addr, &len), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&p->server, 128, p_conn), 0);
}

static void peer_stop(struct peer *p)
{
    uv_close((uv_handle_t *)&p->server, NULL);
    free(p->gz);
    p->gz = NULL;
}

/* ---- consumer: keeps the body bytes and, optionally, parses them ---- */

struct tctx {
    struct tcons *tc;
    size_t target;
};

struct tcons {
    int begins, ends, last_result;
    char *buf;
    size_t len, cap;
    int use_prom;
    struct cmh_prom_parser parser;
    uint64_t samples;
    struct tctx ctx[64];
};

static int t_begin(void *arg, size_t target, void **ctx)
{
    struct tcons *tc = arg;
    tc->begins++;
    tc->len = 0;
    if (tc->use_prom)
        cmh_prom_reset(&tc->parser);
    tc->ctx[target % 64].tc = tc;
    tc->ctx[target % 64].target = target;
    *ctx = &tc->ctx[target % 64];
    return 0;
}

static int t_body(void *ctx, const char *buf, size_t len)
{
    struct tcons *tc = ((struct tctx *)ctx)->tc;
    if (tc->len + len > tc->cap) {
        tc->cap = (tc->len + len) * 2;
        tc->buf = realloc(tc->buf, tc->cap);
        assert_non_null(tc->buf);
    }
    memcpy(tc->buf + tc->len, buf, len);
    tc->len += len;
    if (tc->use_prom)
        return cmh_prom_feed(&tc->parser, buf, len) == 0 ? 0 : -1;
    return 0;
}

static int t_end(void *ctx, enum cmh_scrape_result r)
{
    struct tcons *tc = ((struct tctx *)ctx)->tc;
    tc->ends++;
    tc->last_result = r;
    if (r == CMH_SCRAPE_OK && tc->use_prom) {
        if (cmh_prom_finish(&tc->parser) != 0)
            return -1;
        tc->samples = tc->parser.stats.samples;
    }
    return 0;
}

/* ---- fixture ---- */

struct fx {
    uv_loop_t loop;
    struct cmh_log log;
    int log_fd;
    struct cmh_scraper s;
    struct cmh_scrape_opts o;
    struct tcons tc;
    struct cmh_scrape_consumer consumer;
    struct cmh_scrape_round_stats st;
    int done, closed, done_inside_call, in_call;
    uint64_t done_ms, start_ms;
    char *ipamd;
    size_t ipamd_len;
};

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->log_fd = memfd_create("scrape-log", MFD_CLOEXEC);
    assert_true(f->log_fd >= 0);
    cmh_log_init(&f->log, CMH_LOG_DEBUG, CMH_LOG_TEXT, f->log_fd);
    cmh_scrape_opts_default(&f->o);
    f->o.jitter_ms = 0;
    f->o.timeout_ms = 2000;
    f->o.seed = 42;
    f->consumer = (struct cmh_scrape_consumer){&f->tc, t_begin, t_body, t_end};
    char path[4096];
    snprintf(path, sizeof path, "%s/ipamd/cni_test1.data",
             getenv("CMH_DATA_DIR") ? getenv("CMH_DATA_DIR") : CMH_DATA_DIR);
    f->ipamd = slurp(path, &f->ipamd_len);
    struct cmh_prom_options po = {.max_line = 4096};
    assert_int_equal(cmh_prom_init(&f->tc.parser, &po), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cmh_prom_close(&f->tc.parser);
    free(f->tc.buf);
    free(f->ipamd);
    close(f->log_fd);
    free(f);
    return 0;
}

static void on_done(struct cmh_scraper *s, const struct cmh_scrape_round_stats *st, void *arg)
{
    struct fx *f = arg;
    f->done++;
    f->st = *st;
    f->done_ms = uv_now(&f->loop);
    if (f->in_call)
        f->done_inside_call = 1;
}

static void on_closed(struct cmh_scraper *s)
{
    struct fx *f = container_of(s, struct fx, s);
    f->closed = 1;
}

static void scraper_up(struct fx *f)
{
    assert_int_equal(cmh_scraper_init(&f->s, &f->loop, &f->o, &f->log), 0);
}

/* Runs one round over targets and waits for done. */
static void run_round(struct fx *f, const struct cmh_scrape_target *t, size_t n)
{
    int before = f->done;
    f->in_call = 1;
    f->start_ms = uv_now(&f->loop);
    assert_int_equal(cmh_scraper_round(&f->s, t, n, &f->consumer, on_done, f), 0);
    f->in_call = 0;
    while (f->done == before)
        assert_true(uv_run(&f->loop, UV_RUN_ONCE) != 0 || f->done != before);
    assert_false(f->done_inside_call);
}

static void finish(struct fx *f, struct peer *p)
{
    cmh_scraper_close(&f->s, on_closed);
    if (p != NULL)
        peer_stop(p);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void target_of(struct cmh_scrape_target *t, const struct peer *p)
{
    memset(t, 0, sizeof *t);
    t->name = "peer";
    memcpy(&t->addr, &p->addr, sizeof p->addr);
}

/* One target against a peer in mode; returns its record. */
/* One target against a peer in mode; returns its record, and what the peer counted in *seen
 * (may be NULL). */
static struct cmh_scrape_record one_seen(struct fx *f, enum mode mode, struct peer *seen)
{
    struct peer p;
    peer_start(&p, &f->loop, mode, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    run_round(f, &t, 1);
    size_t n;
    struct cmh_scrape_record r = cmh_scraper_records(&f->s, &n)[0];
    assert_int_equal(n, 1);
    assert_int_equal(f->st.count[r.result], 1);
    assert_int_equal(f->st.targets, 1);
    finish(f, &p);
    if (seen != NULL)
        *seen = p;
    return r;
}

static struct cmh_scrape_record one(struct fx *f, enum mode mode)
{
    return one_seen(f, mode, NULL);
}

static size_t log_lines_with(struct fx *f, const char *needle)
{
    off_t end = lseek(f->log_fd, 0, SEEK_END);
    char *b = calloc(1, (size_t)end + 1);
    assert_non_null(b);
    assert_int_equal(pread(f->log_fd, b, (size_t)end, 0), end);
    size_t n = 0;
    for (char *p = b; (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(b);
    return n;
}

/* ---- tests: successes ---- */

static void ok_body_streamed_byte_exact(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_OK);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(r.http_status, 200);
    assert_int_equal(f->tc.begins, 1);
    assert_int_equal(f->tc.ends, 1);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_OK);
    assert_int_equal(f->tc.len, f->ipamd_len);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
    assert_true(r.bytes > f->ipamd_len);
}

/* The same samples whether the body comes whole or 7 bytes at a time. */
static void ok_body_in_7_byte_fragments_parses_same_samples(void **state)
{
    struct fx *f = *state;
    struct cmh_prom_parser whole;
    assert_int_equal(cmh_prom_init(&whole, NULL), 0);
    assert_int_equal(cmh_prom_feed(&whole, f->ipamd, f->ipamd_len), 0);
    assert_int_equal(cmh_prom_finish(&whole), 0);
    uint64_t expect = whole.stats.samples;
    cmh_prom_close(&whole);
    assert_true(expect > 100);
    f->tc.use_prom = 1;
    f->o.timeout_ms = 20000; /* 7 bytes a millisecond: about 2 s */
    struct cmh_scrape_record r = one(f, M_FRAGMENTS);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(f->tc.samples, expect);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
}

static void ok_chunked_body(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_CHUNKED);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(f->tc.len, f->ipamd_len);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
}

static void ok_body_delimited_by_close(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_EOF_BODY);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(f->tc.len, f->ipamd_len);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
}

/* ---- tests: failures ---- */

static void connect_refused(void **state)
{
    struct fx *f = *state;
    /* a port nobody listens on: bind one, read it back, close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    scraper_up(f);
    struct cmh_scrape_target t;
    char ip[] = "127.0.0.1";
    assert_int_equal(cmh_scrape_target_set(&t, "gone", ip, ntohs(a.sin_port)), 0);
    run_round(f, &t, 1);
    size_t n;
    assert_int_equal(cmh_scraper_records(&f->s, &n)[0].result, CMH_SCRAPE_CONNECT_REFUSED);
    assert_int_equal(f->tc.begins, 0);
    finish(f, NULL);
}

/* A listener whose accept queue is full drops our SYN: the connect never completes. */
static void connect_timeout_when_accept_queue_full(void **state)
{
    struct fx *f = *state;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(listen(l, 0), 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    usleep(50 * 1000);
    f->o.timeout_ms = 300;
    scraper_up(f);
    struct cmh_scrape_target t;
    memset(&t, 0, sizeof t);
    memcpy(&t.addr, &a, sizeof a);
    run_round(f, &t, 1);
    size_t n;
    struct cmh_scrape_record r = cmh_scraper_records(&f->s, &n)[0];
    assert_int_equal(r.result, CMH_SCRAPE_CONNECT_TIMEOUT);
    assert_in_range(r.duration_us, 250000, 6000000);
    finish(f, NULL);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(l);
}

static void response_timeout_when_peer_stalls(void **state)
{
    struct fx *f = *state;
    f->o.timeout_ms = 200;
    struct cmh_scrape_record r = one(f, M_STALL);
    assert_int_equal(r.result, CMH_SCRAPE_RESPONSE_TIMEOUT);
    assert_in_range(r.duration_us, 180000, 6000000);
    assert_int_equal(f->tc.begins, 0);
}

/* A slow trickle is cut by the same deadline, and the consumer is told to drop what it got. */
static void response_timeout_when_peer_trickles(void **state)
{
    struct fx *f = *state;
    f->o.timeout_ms = 150;
    struct cmh_scrape_record r = one(f, M_FRAGMENTS);
    assert_int_equal(r.result, CMH_SCRAPE_RESPONSE_TIMEOUT);
    assert_int_equal(f->tc.begins, 1);
    assert_int_equal(f->tc.ends, 1);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_RESPONSE_TIMEOUT);
}

static void reset_mid_body(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_RESET);
    assert_int_equal(r.result, CMH_SCRAPE_RESET);
    if (f->tc.begins)
        assert_int_equal(f->tc.last_result, CMH_SCRAPE_RESET);
}

static void truncated_body(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_TRUNCATE);
    assert_int_equal(r.result, CMH_SCRAPE_TRUNCATED);
    assert_int_equal(f->tc.ends, 1);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_TRUNCATED);
    assert_true(f->tc.len < f->ipamd_len);
}

static void http_status_500_never_begins_consumer(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_500);
    assert_int_equal(r.result, CMH_SCRAPE_HTTP_STATUS);
    assert_int_equal(r.http_status, 500);
    assert_int_equal(f->tc.begins, 0);
}

static void wrong_content_type(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_HTML);
    assert_int_equal(r.result, CMH_SCRAPE_CONTENT_TYPE);
    assert_int_equal(f->tc.begins, 0);
}

static void unknown_content_encoding_fails_as_content_encoding(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_BR);
    assert_int_equal(r.result, CMH_SCRAPE_CONTENT_ENCODING);
    assert_int_equal(f->tc.begins, 0);
    assert_int_equal(log_lines_with(f, "result=content_encoding"), 1);
}

/* ---- gzip ---- */

/* Samples of the ipamD body parsed whole, the oracle for what a scrape must deliver. */
static uint64_t samples_of(const char *body, size_t len)
{
    struct cmh_prom_parser whole;
    assert_int_equal(cmh_prom_init(&whole, NULL), 0);
    assert_int_equal(cmh_prom_feed(&whole, body, len), 0);
    assert_int_equal(cmh_prom_finish(&whole), 0);
    uint64_t n = whole.stats.samples;
    cmh_prom_close(&whole);
    return n;
}

/* The peer sees Accept-Encoding: gzip, answers as promhttp does (gzip, chunked), and the consumer
 * gets the very bytes and samples an identity scrape gives, for a quarter of the bytes read. */
static void gzip_asked_inflated_byte_exact_same_samples_as_identity(void **state)
{
    struct fx *f = *state;
    uint64_t expect = samples_of(f->ipamd, f->ipamd_len);
    f->tc.use_prom = 1;
    struct peer p;
    struct cmh_scrape_record r = one_seen(f, M_GZIP, &p);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(p.asked_gzip, 1);
    assert_int_equal(f->st.gzip, 1);
    assert_int_equal(f->tc.len, f->ipamd_len);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
    assert_int_equal(f->tc.samples, expect);
    assert_true(p.gz_len > 2048); /* more than one chunk */
    assert_true(r.bytes < p.gz_len + 400);
    uint32_t gz_bytes = r.bytes;

    /* The same body without gzip: same samples, about four times the bytes. */
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->closed = 0;
    f->o.gzip = 0;
    memset(f->tc.buf, 0, f->tc.len);
    r = one_seen(f, M_GZIP, &p);
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(p.asked_gzip, 0);
    assert_int_equal(f->st.gzip, 0);
    assert_memory_equal(f->tc.buf, f->ipamd, f->ipamd_len);
    assert_int_equal(f->tc.samples, expect);
    assert_true(r.bytes > 3 * gz_bytes);
}

/* SCRAPE_GZIP=false: no Accept-Encoding line at all. */
static void gzip_off_sends_no_accept_encoding(void **state)
{
    struct fx *f = *state;
    f->o.gzip = 0;
    struct peer p;
    assert_int_equal(one_seen(f, M_OK, &p).result, CMH_SCRAPE_OK);
    assert_int_equal(p.requests, 1);
    assert_int_equal(p.any_ae, 0);
    /* SCRAPE_GZIP is what sets it. */
    struct cmh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.interval_ms = 30000;
    cfg.scrape_concurrency = 1;
    cfg.scrape_timeout_ms = 1000;
    cfg.scrape_max_body = 1u << 20;
    struct cmh_scrape_opts o;
    cmh_scrape_opts_from_config(&o, &cfg);
    assert_int_equal(o.gzip, 0);
    cfg.scrape_gzip = true;
    cmh_scrape_opts_from_config(&o, &cfg);
    assert_int_equal(o.gzip, 1);
}

/* A gzip bomb (about 1 KB inflating to 1 MiB, twice the cap) fails its own node as
 * gzip_too_large, logged under that name, after the consumer saw at most the cap; a well-behaved
 * gzip node in the same round is fine. */
static void gzip_bomb_fails_that_node_only(void **state)
{
    struct fx *f = *state;
    f->o.max_body = 512 * 1024;
    struct peer bomb, good;
    peer_start(&bomb, &f->loop, M_BOMB, NULL, 0);
    peer_start(&good, &f->loop, M_GZIP, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t[2];
    target_of(&t[0], &bomb);
    target_of(&t[1], &good);
    t[0].name = "bomb";
    run_round(f, t, 2);
    size_t n;
    const struct cmh_scrape_record *r = cmh_scraper_records(&f->s, &n);
    assert_int_equal(r[0].result, CMH_SCRAPE_GZIP_TOO_LARGE);
    assert_true(r[0].bytes < 2000);
    assert_int_equal(r[1].result, CMH_SCRAPE_OK);
    assert_int_equal(f->st.count[CMH_SCRAPE_GZIP_TOO_LARGE], 1);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 1);
    assert_int_equal(log_lines_with(f, "result=gzip_too_large"), 1);
    assert_int_equal(log_lines_with(f, "target=bomb"), 1);
    /* the consumer's buffer holds one node's body: the cap at most, never the whole bomb */
    assert_true(f->tc.cap <= 2 * 512 * 1024 + 65536);
    peer_stop(&good);
    finish(f, &bomb);
}

/* A complete response whose gzip stream stops halfway is a failure, not a shorter body. */
static void gzip_stream_cut_short_fails_as_gzip_error(void **state)
{
    struct fx *f = *state;
    f->tc.use_prom = 1;
    struct cmh_scrape_record r = one(f, M_GZIP_CUT);
    assert_int_equal(r.result, CMH_SCRAPE_GZIP_ERROR);
    assert_int_equal(f->tc.ends, 1);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_GZIP_ERROR);
    assert_true(f->tc.len < f->ipamd_len);
}

/* One inflater per body being read, reused round after round: 40 gzip targets over 4
 * connections make at most 4, and later rounds make none. */
static void gzip_inflaters_bounded_by_connections_and_reused(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_GZIP, f->ipamd, f->ipamd_len);
    f->o.concurrency = 4;
    scraper_up(f);
    struct cmh_scrape_target t[40];
    for (int i = 0; i < 40; i++)
        target_of(&t[i], &p);
    run_round(f, t, 40);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 40);
    assert_int_equal(f->st.gzip, 40);
    unsigned made = f->s.gz.made;
    assert_in_range(made, 1, 4);
    for (int k = 0; k < 3; k++) {
        run_round(f, t, 40);
        assert_int_equal(f->st.count[CMH_SCRAPE_OK], 40);
        assert_int_equal(f->s.gz.made, made);
        assert_int_equal(f->s.gz.nspare, made); /* all given back */
    }
    assert_int_equal(p.asked_gzip, 160);
    finish(f, &p);
}

static void body_too_large_by_content_length(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_CL_HUGE);
    assert_int_equal(r.result, CMH_SCRAPE_BODY_TOO_LARGE);
    assert_int_equal(f->tc.begins, 0);
}

/* No Content-Length: the cap applies to the bytes as they stream. */
static void body_too_large_streamed_chunked(void **state)
{
    struct fx *f = *state;
    f->o.max_body = 64 * 1024;
    struct cmh_scrape_record r = one(f, M_CHUNKED_HUGE);
    assert_int_equal(r.result, CMH_SCRAPE_BODY_TOO_LARGE);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_BODY_TOO_LARGE);
    assert_true(f->tc.len <= 64 * 1024);
}

static void malformed_http_garbage(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_GARBAGE);
    assert_int_equal(r.result, CMH_SCRAPE_MALFORMED_HTTP);
}

static void malformed_http_header_too_large(void **state)
{
    struct fx *f = *state;
    struct cmh_scrape_record r = one(f, M_HEADER_HUGE);
    assert_int_equal(r.result, CMH_SCRAPE_MALFORMED_HTTP);
    assert_int_equal(f->tc.begins, 0);
}

static void parse_error_from_prometheus_parser(void **state)
{
    struct fx *f = *state;
    static const char bad[] = "# TYPE awscni_eni_max gauge\nawscni_eni_max{ 3\n";
    f->tc.use_prom = 1;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, bad, sizeof bad - 1);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    run_round(f, &t, 1);
    size_t n;
    assert_int_equal(cmh_scraper_records(&f->s, &n)[0].result, CMH_SCRAPE_PARSE_ERROR);
    assert_int_equal(f->tc.ends, 1);
    assert_int_equal(f->tc.last_result, CMH_SCRAPE_PARSE_ERROR);
    finish(f, &p);
}

/* A body that is fine until its end (no final newline) fails in end(). */
static void parse_error_at_end_of_body(void **state)
{
    struct fx *f = *state;
    static const char bad[] = "# TYPE awscni_eni_max gauge\nawscni_eni_max 3";
    f->tc.use_prom = 1;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, bad, sizeof bad - 1);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    run_round(f, &t, 1);
    size_t n;
    assert_int_equal(cmh_scraper_records(&f->s, &n)[0].result, CMH_SCRAPE_PARSE_ERROR);
    assert_int_equal(f->st.count[CMH_SCRAPE_PARSE_ERROR], 1);
    finish(f, &p);
}

/* ---- keep-alive ---- */

static void keepalive_reuses_connection(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    for (int i = 0; i < 3; i++) {
        run_round(f, &t, 1);
        size_t n;
        struct cmh_scrape_record r = cmh_scraper_records(&f->s, &n)[0];
        assert_int_equal(r.result, CMH_SCRAPE_OK);
        assert_int_equal(r.reused, i > 0);
        assert_int_equal(f->st.connects, i == 0);
    }
    assert_int_equal(p.accepted, 1);
    assert_int_equal(p.requests, 3);
    finish(f, &p);
}

static void keepalive_off_sends_connection_close(void **state)
{
    struct fx *f = *state;
    f->o.keepalive = 0;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    run_round(f, &t, 1);
    run_round(f, &t, 1);
    assert_int_equal(p.accepted, 2);
    assert_int_equal(f->st.reused, 0);
    finish(f, &p);
}

/* The server closed the kept-alive connection as we sent: retried at once, not a failure. */
static void stale_keepalive_connection_retried_not_failed(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_CLOSE_SECOND, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    run_round(f, &t, 1);
    run_round(f, &t, 1);
    size_t n;
    struct cmh_scrape_record r = cmh_scraper_records(&f->s, &n)[0];
    assert_int_equal(r.result, CMH_SCRAPE_OK);
    assert_int_equal(r.reused, 0);
    assert_int_equal(f->st.retried, 1);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 1);
    assert_int_equal(p.accepted, 2);
    assert_int_equal(f->tc.len, f->ipamd_len);
    finish(f, &p);
}

/* ---- bounds, deadlines, scheduling ---- */

static void concurrency_bounds_open_connections(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_FRAGMENTS, f->ipamd, 700);
    f->o.concurrency = 4;
    scraper_up(f);
    struct cmh_scrape_target t[40];
    for (int i = 0; i < 40; i++)
        target_of(&t[i], &p);
    run_round(f, t, 40);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 40);
    assert_true(f->st.peak_open <= 4);
    assert_true(p.max_open <= 4);
    assert_int_equal(p.max_open, 4);
    /* the next round reuses the four idle connections and opens no more */
    run_round(f, t, 40);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 40);
    assert_true(f->st.peak_open <= 4);
    assert_true(p.max_open <= 4);
    finish(f, &p);
}

static void round_deadline_times_out_inflight_and_skips_rest(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_STALL, f->ipamd, f->ipamd_len);
    f->o.concurrency = 2;
    f->o.timeout_ms = 10000;
    f->o.round_timeout_ms = 150;
    scraper_up(f);
    struct cmh_scrape_target t[10];
    for (int i = 0; i < 10; i++)
        target_of(&t[i], &p);
    run_round(f, t, 10);
    assert_int_equal(f->st.count[CMH_SCRAPE_RESPONSE_TIMEOUT], 2);
    assert_int_equal(f->st.count[CMH_SCRAPE_SKIPPED], 8);
    assert_in_range(f->done_ms - f->start_ms, 140, 1000);
    finish(f, &p);
}

static void empty_round_done_fires_later(void **state)
{
    struct fx *f = *state;
    scraper_up(f);
    run_round(f, NULL, 0);
    assert_int_equal(f->done, 1);
    assert_int_equal(f->st.targets, 0);
    finish(f, NULL);
}

static void overlapping_round_is_refused(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t;
    target_of(&t, &p);
    assert_int_equal(cmh_scraper_round(&f->s, &t, 1, &f->consumer, on_done, f), 0);
    assert_int_equal(cmh_scraper_round(&f->s, &t, 1, &f->consumer, on_done, f), -EBUSY);
    while (f->done == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 1);
    finish(f, &p);
}

static void jitter_spreads_starts_over_window(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_OK, f->ipamd, 700);
    f->o.jitter_ms = 300;
    f->o.keepalive = 0;
    scraper_up(f);
    struct cmh_scrape_target t[20];
    for (int i = 0; i < 20; i++)
        target_of(&t[i], &p);
    run_round(f, t, 20);
    assert_int_equal(f->st.count[CMH_SCRAPE_OK], 20);
    /* target k starts at k * 300 / 20 ms: the last at 285 ms */
    assert_in_range(p.last_accept_ms - p.first_accept_ms, 250, 1000);
    assert_in_range(f->done_ms - f->start_ms, 280, 1500);
    finish(f, &p);
}

static void failure_logging_is_rate_limited(void **state)
{
    struct fx *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    f->o.log_failures = 5;
    scraper_up(f);
    static struct cmh_scrape_target t[100];
    for (int i = 0; i < 100; i++) {
        memset(&t[i], 0, sizeof t[i]);
        memcpy(&t[i].addr, &a, sizeof a);
    }
    run_round(f, t, 100);
    assert_int_equal(f->st.count[CMH_SCRAPE_CONNECT_REFUSED], 100);
    assert_int_equal(f->st.logged, 5);
    assert_int_equal(f->st.suppressed, 95);
    assert_int_equal(log_lines_with(f, "msg=\"scrape failed\""), 5);
    assert_int_equal(log_lines_with(f, "msg=\"scrape round\""), 1);
    assert_int_equal(log_lines_with(f, "failure_lines_suppressed=95"), 1);
    /* the budget is per round */
    run_round(f, t, 100);
    assert_int_equal(log_lines_with(f, "msg=\"scrape failed\""), 10);
    finish(f, NULL);
}

static void close_mid_round_fires_done_then_close(void **state)
{
    struct fx *f = *state;
    struct peer p;
    peer_start(&p, &f->loop, M_STALL, f->ipamd, f->ipamd_len);
    scraper_up(f);
    struct cmh_scrape_target t[3];
    for (int i = 0; i < 3; i++)
        target_of(&t[i], &p);
    assert_int_equal(cmh_scraper_round(&f->s, t, 3, &f->consumer, on_done, f), 0);
    while (p.accepted < 3)
        uv_run(&f->loop, UV_RUN_ONCE);
    cmh_scraper_close(&f->s, on_closed);
    assert_int_equal(cmh_scraper_round(&f->s, t, 3, &f->consumer, on_done, f), -ESHUTDOWN);
    peer_stop(&p);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->done, 1);
    assert_int_equal(f->st.count[CMH_SCRAPE_RESPONSE_TIMEOUT], 3);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void result_names_are_distinct(void **state)
{
    for (int i = 0; i < CMH_SCRAPE_NRESULTS; i++) {
        const char *a = cmh_scrape_result_name((enum cmh_scrape_result)i);
        assert_string_not_equal(a, "unknown");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a, cmh_scrape_result_name((enum cmh_scrape_result)j));
    }
    assert_string_equal(cmh_scrape_result_name(CMH_SCRAPE_NRESULTS), "unknown");
    struct cmh_scrape_target t;
    assert_int_equal(cmh_scrape_target_set(&t, "a", "::1", 1), 0);
    assert_int_equal(t.addr.sa.sa_family, AF_INET6);
    assert_int_equal(cmh_scrape_target_set(&t, "a", "node.example", 1), -EINVAL);
}

/* The round always ends before the next tick; the target timeout and jitter fit inside it. */
static void opts_from_config_keep_round_inside_interval(void **state)
{
    struct cmh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.interval_ms = 30000;
    cfg.scrape_concurrency = 500;
    cfg.scrape_timeout_ms = 5000;
    cfg.scrape_max_body = 1u << 20;
    cfg.scrape_jitter_ms = 1000;
    cfg.scrape_keepalive = false;
    struct cmh_scrape_opts o;
    cmh_scrape_opts_from_config(&o, &cfg);
    assert_int_equal(o.round_timeout_ms, 24000);
    assert_int_equal(o.timeout_ms, 5000);
    assert_int_equal(o.jitter_ms, 1000);
    assert_int_equal(o.concurrency, 500);
    assert_int_equal(o.max_body, 1u << 20);
    assert_int_equal(o.keepalive, 0);
    cfg.scrape_round_timeout_ms = 10000;
    cmh_scrape_opts_from_config(&o, &cfg);
    assert_int_equal(o.round_timeout_ms, 10000);
    /* a round deadline at or above the interval is pulled back; timeout and jitter follow */
    cfg.interval_ms = 2000;
    cfg.scrape_round_timeout_ms = 5000;
    cfg.scrape_jitter_ms = 60000;
    cmh_scrape_opts_from_config(&o, &cfg);
    assert_int_equal(o.round_timeout_ms, 1600);
    assert_int_equal(o.timeout_ms, 1600);
    assert_int_equal(o.jitter_ms, 800);
}

/* cmh_scrape_parse_response (the fuzzing entry point) classifies responses as the socket path
 * does, the same way for every split of the bytes into reads, and streams the body up to the cap.
 * Keep-alive is checked on one read only: bytes after a response in a later read are seen by the
 * idle connection instead, which then closes. */
struct pr_seen {
    size_t body;
    int begun, ended;
    char buf[4096]; /* the body's first bytes */
};

static int pr_begin(void *arg, size_t target, void **ctx)
{
    struct pr_seen *s = arg;
    s->begun++;
    *ctx = s;
    return 0;
}

static int pr_body(void *ctx, const char *buf, size_t len)
{
    struct pr_seen *s = ctx;
    size_t room = s->body < sizeof s->buf ? sizeof s->buf - s->body : 0;
    memcpy(s->buf + s->body, buf, len < room ? len : room);
    s->body += len;
    return memchr(buf, '\0', len) != NULL ? -1 : 0;
}

static int pr_end(void *ctx, enum cmh_scrape_result r)
{
    struct pr_seen *s = ctx;
    s->ended++;
    return 0;
}

static void parse_response_classifies_like_the_socket_path(void **state)
{
    static const struct {
        const char *text;
        size_t len; /* 0: strlen */
        enum cmh_scrape_result want;
        uint16_t status;
        size_t body; /* bytes the consumer sees */
        int keep;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n\r\n"
         "x 1\n",
         0, CMH_SCRAPE_OK, 200, 4, 1},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
         "2\r\nx \r\n2\r\n1\n\r\n0\r\n\r\n",
         0, CMH_SCRAPE_OK, 200, 4, 1},
        {"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nx 1\n", 0, CMH_SCRAPE_OK, 200, 4, 0},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
         "\r\n",
         0, CMH_SCRAPE_OK, 200, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nx 1\nHTTP", 0,
         CMH_SCRAPE_OK, 200, 4, 0},
        {"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 0, CMH_SCRAPE_HTTP_STATUS, 500, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n", 0,
         CMH_SCRAPE_CONTENT_TYPE, 200, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: br\r\n"
         "Content-Length: 0\r\n\r\n",
         0, CMH_SCRAPE_CONTENT_ENCODING, 200, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99999\r\n\r\n", 0,
         CMH_SCRAPE_BODY_TOO_LARGE, 200, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nx 1", 0,
         CMH_SCRAPE_TRUNCATED, 200, 3, 0},
        {"SSH-2.0-OpenSSH\r\n", 0, CMH_SCRAPE_MALFORMED_HTTP, 0, 0, 0},
        {"", 0, CMH_SCRAPE_TRUNCATED, 0, 0, 0},
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nx\0 1", 64,
         CMH_SCRAPE_PARSE_ERROR, 200, 0, 0},
    };
    struct cmh_scrape_opts o;
    cmh_scrape_opts_default(&o);
    o.max_body = 1024;
    o.max_header = 256;
    struct pr_seen seen;
    struct cmh_scrape_consumer consumer = {&seen, pr_begin, pr_body, pr_end};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].text);
        if (cases[i].len != 0)
            len = (size_t)(strchr(cases[i].text, '\0') - cases[i].text) + 3; /* "x\0 1" */
        for (size_t chunk = 0; chunk <= 7; chunk++) {
            memset(&seen, 0, sizeof seen);
            struct cmh_scrape_record rec;
            int keep = -1;
            enum cmh_scrape_result r =
                cmh_scrape_parse_response(&o, &consumer, cases[i].text, len, chunk, &rec, &keep);
            if (r != cases[i].want || rec.http_status != cases[i].status ||
                seen.begun != seen.ended ||
                (r == CMH_SCRAPE_OK && chunk == 0 && keep != cases[i].keep))
                fail_msg("case %zu chunk %zu: %s status %u keep %d", i, chunk,
                         cmh_scrape_result_name(r), rec.http_status, keep);
            if (cases[i].want != CMH_SCRAPE_PARSE_ERROR)
                assert_int_equal(seen.body, cases[i].body);
        }
    }
    /* A chunked body above the cap: the consumer gets exactly the first max_body bytes, however
     * the reads fall, and the result is body_too_large. */
    char big[4096];
    int h = snprintf(big, sizeof big,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked"
                     "\r\n\r\n%x\r\n",
                     2000);
    memset(big + h, 'a', 2000);
    for (size_t chunk = 0; chunk <= 300; chunk += 37) {
        memset(&seen, 0, sizeof seen);
        struct cmh_scrape_record rec;
        assert_int_equal(
            cmh_scrape_parse_response(&o, &consumer, big, (size_t)h + 2000, chunk, &rec, NULL),
            CMH_SCRAPE_BODY_TOO_LARGE);
        assert_int_equal(seen.body, 1024);
        assert_int_equal(seen.ended, 1);
    }
}

/* gzip through cmh_scrape_parse_response: chunked and split at every byte boundary, several
 * members, the bound on the inflated size, and every way a gzip body can be wrong. */
static size_t gz_response(char *out, size_t cap, const char *coding, const void *body, size_t len,
                          int chunked)
{
    size_t n;
    if (chunked) {
        char *r = chunked_response(coding, body, len, 5, &n);
        assert_true(n <= cap);
        memcpy(out, r, n);
        free(r);
        return n;
    }
    n = (size_t)snprintf(out, cap,
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n%sContent-Length: %zu"
                         "\r\n\r\n",
                         coding, len);
    assert_true(n + len <= cap);
    memcpy(out + n, body, len);
    return n + len;
}

static enum cmh_scrape_result gz_parse(const struct cmh_scrape_opts *o, const char *resp,
                                       size_t len, size_t chunk, struct pr_seen *seen)
{
    struct cmh_scrape_consumer consumer = {seen, pr_begin, pr_body, pr_end};
    memset(seen, 0, sizeof *seen);
    enum cmh_scrape_result r =
        cmh_scrape_parse_response(o, &consumer, resp, len, chunk, NULL, NULL);
    assert_int_equal(seen->begun, seen->ended);
    return r;
}

static void parse_response_gzip_chunked_every_split_and_every_fault(void **state)
{
    static const char body[] = "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 2\n";
    const size_t blen = sizeof body - 1;
    struct cmh_scrape_opts o;
    cmh_scrape_opts_default(&o);
    o.max_body = 1024;
    size_t gl;
    unsigned char *gz = deflate_gzip(body, blen, &gl);
    char resp[8192];
    struct pr_seen seen;

    /* chunked + gzip, every read size from 1 byte (a split at every boundary) to the whole */
    size_t n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", gz, gl, 1);
    for (size_t chunk = 0; chunk <= n; chunk++) {
        assert_int_equal(gz_parse(&o, resp, n, chunk, &seen), CMH_SCRAPE_OK);
        assert_int_equal(seen.body, blen);
        assert_memory_equal(seen.buf, body, blen);
    }
    /* x-gzip, surrounding blanks, any case; identity as well */
    n = gz_response(resp, sizeof resp, "Content-Encoding:  X-GZip \r\n", gz, gl, 0);
    assert_int_equal(gz_parse(&o, resp, n, 3, &seen), CMH_SCRAPE_OK);
    assert_int_equal(seen.body, blen);
    n = gz_response(resp, sizeof resp, "Content-Encoding: identity\r\n", body, blen, 1);
    assert_int_equal(gz_parse(&o, resp, n, 1, &seen), CMH_SCRAPE_OK);
    assert_memory_equal(seen.buf, body, blen);
    /* two members are one stream (RFC 1952) */
    unsigned char two[1024];
    memcpy(two, gz, gl);
    memcpy(two + gl, gz, gl);
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", two, 2 * gl, 1);
    for (size_t chunk = 1; chunk <= 9; chunk++) {
        assert_int_equal(gz_parse(&o, resp, n, chunk, &seen), CMH_SCRAPE_OK);
        assert_int_equal(seen.body, 2 * blen);
        assert_memory_equal(seen.buf + blen, body, blen);
    }
    /* an empty body is an empty body */
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", "", 0, 0);
    assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_OK);
    assert_int_equal(seen.body, 0);

    /* cut short: at every length, in a complete chunked response or in one ended by close */
    for (size_t cut = 1; cut < gl; cut++) {
        n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", gz, cut, 1);
        assert_int_equal(gz_parse(&o, resp, n, 7, &seen), CMH_SCRAPE_GZIP_ERROR);
        assert_true(seen.body <= blen); /* the trailer may be what is missing */
        n = (size_t)snprintf(resp, sizeof resp,
                             "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Encoding: gzip\r\n\r\n");
        memcpy(resp + n, gz, cut);
        assert_int_equal(gz_parse(&o, resp, n + cut, 0, &seen), CMH_SCRAPE_GZIP_ERROR);
    }
    /* corrupt: a flipped byte in the deflate data or the CRC; trailing bytes that are no member */
    for (size_t at = 10; at < gl; at++) {
        memcpy(two, gz, gl);
        two[at] ^= 0x55;
        n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", two, gl, 0);
        assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_GZIP_ERROR);
    }
    memcpy(two, gz, gl);
    memcpy(two + gl, "junk", 4);
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", two, gl + 4, 0);
    assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_GZIP_ERROR);
    /* not gzip at all */
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", body, blen, 0);
    assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_GZIP_ERROR);
    assert_int_equal(seen.body, 0);
    /* codings we cannot read: never begun */
    static const char *const bad[] = {"br", "deflate", "gzip, gzip", "compress", "zstd", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char h[64];
        snprintf(h, sizeof h, "Content-Encoding: %s\r\n", bad[i]);
        n = gz_response(resp, sizeof resp, h, gz, gl, 0);
        assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_CONTENT_ENCODING);
        assert_int_equal(seen.begun, 0);
    }
    n = (size_t)snprintf(resp, sizeof resp,
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip"
                         "\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_CONTENT_ENCODING);
    free(gz);

    /* a bomb: the consumer gets exactly the cap, however the reads fall */
    char *nl = malloc(64 * 1024);
    assert_non_null(nl);
    memset(nl, '\n', 64 * 1024);
    gz = deflate_gzip(nl, 64 * 1024, &gl);
    free(nl);
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", gz, gl, 1);
    for (size_t chunk = 0; chunk <= 50; chunk += 5) {
        assert_int_equal(gz_parse(&o, resp, n, chunk, &seen), CMH_SCRAPE_GZIP_TOO_LARGE);
        assert_int_equal(seen.body, 1024);
    }
    /* exactly the cap is fine */
    free(gz);
    nl = malloc(1024);
    assert_non_null(nl);
    memset(nl, '\n', 1024);
    gz = deflate_gzip(nl, 1024, &gl);
    free(nl);
    n = gz_response(resp, sizeof resp, "Content-Encoding: gzip\r\n", gz, gl, 1);
    assert_int_equal(gz_parse(&o, resp, n, 0, &seen), CMH_SCRAPE_OK);
    assert_int_equal(seen.body, 1024);
    free(gz);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    /* The scripted peers write with write(2): a scraper that hung up must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        T(ok_body_streamed_byte_exact),
        T(ok_body_in_7_byte_fragments_parses_same_samples),
        T(ok_chunked_body),
        T(ok_body_delimited_by_close),
        T(connect_refused),
        T(connect_timeout_when_accept_queue_full),
        T(response_timeout_when_peer_stalls),
        T(response_timeout_when_peer_trickles),
        T(reset_mid_body),
        T(truncated_body),
        T(http_status_500_never_begins_consumer),
        T(wrong_content_type),
        T(unknown_content_encoding_fails_as_content_encoding),
        T(gzip_asked_inflated_byte_exact_same_samples_as_identity),
        T(gzip_off_sends_no_accept_encoding),
        T(gzip_bomb_fails_that_node_only),
        T(gzip_stream_cut_short_fails_as_gzip_error),
        T(gzip_inflaters_bounded_by_connections_and_reused),
        T(body_too_large_by_content_length),
        T(body_too_large_streamed_chunked),
        T(malformed_http_garbage),
        T(malformed_http_header_too_large),
        T(parse_error_from_prometheus_parser),
        T(parse_error_at_end_of_body),
        T(keepalive_reuses_connection),
        T(keepalive_off_sends_connection_close),
        T(stale_keepalive_connection_retried_not_failed),
        T(concurrency_bounds_open_connections),
        T(round_deadline_times_out_inflight_and_skips_rest),
        T(empty_round_done_fires_later),
        T(overlapping_round_is_refused),
        T(jitter_spreads_starts_over_window),
        T(failure_logging_is_rate_limited),
        T(close_mid_round_fires_done_then_close),
        cmocka_unit_test(result_names_are_distinct),
        cmocka_unit_test(opts_from_config_keep_round_inside_interval),
        cmocka_unit_test(parse_response_classifies_like_the_socket_path),
        cmocka_unit_test(parse_response_gzip_chunked_every_split_and_every_fault),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
