#include "cmh/scrape/scrape.h"
#include "cmh/scrape/scrape_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/rng.h"
#include "cmh/core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

/* File descriptors kept free for everything else the daemon opens (log, HTTPS, server). */
#define FD_RESERVE 64
/* One read buffer for the whole scraper: a read is parsed to the end before the next one. */
#define RBUF_LEN (64 * 1024)

enum conn_state {
    CONN_CONNECTING,
    CONN_REQUEST, /* request written (or being written), response being read */
    CONN_IDLE,    /* kept alive between rounds */
    CONN_CLOSING,
};

enum hdr_which { HDR_OTHER, HDR_CONTENT_TYPE, HDR_CONTENT_ENCODING };

struct cmh_scrape_conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    llhttp_t parser;
    struct cmh_scraper *s;
    struct cmh_scrape_conn *prev, *next; /* active list, idle list or free list */
    struct cmh_scrape_conn *map_next;    /* idle map bucket */
    union cmh_scrape_addr addr;
    size_t target;
    uint64_t deadline_ms; /* loop time */
    uint64_t start_ns;
    enum conn_state state;
    uint8_t connected, reused, got_bytes, began, message_done, keep_alive;
    uint8_t ct_bad, enc_bad, enc_gzip, which, hname_len;
    uint8_t fail; /* result set by a parser callback before it returned an error */
    int uv_err;   /* the libuv error of a failed connect (for the log), or 0 */
    uint16_t status;
    uint32_t hdr_bytes;
    uint64_t body_bytes;
    uint32_t bytes;
    void *ctx;
    struct cmh_gunzip *gz; /* while a gzip body is read; from the scraper's spares */
    char hname[20];
    char req[320];
    size_t req_len;
};

static const char *const result_names[CMH_SCRAPE_NRESULTS] = {
    [CMH_SCRAPE_OK] = "ok",
    [CMH_SCRAPE_CONNECT_REFUSED] = "connect_refused",
    [CMH_SCRAPE_CONNECT_TIMEOUT] = "connect_timeout",
    [CMH_SCRAPE_CONNECT_ERROR] = "connect_error",
    [CMH_SCRAPE_RESET] = "reset",
    [CMH_SCRAPE_TRUNCATED] = "truncated",
    [CMH_SCRAPE_RESPONSE_TIMEOUT] = "response_timeout",
    [CMH_SCRAPE_HTTP_STATUS] = "http_status",
    [CMH_SCRAPE_CONTENT_TYPE] = "content_type",
    [CMH_SCRAPE_BODY_TOO_LARGE] = "body_too_large",
    [CMH_SCRAPE_MALFORMED_HTTP] = "malformed_http",
    [CMH_SCRAPE_PARSE_ERROR] = "parse_error",
    [CMH_SCRAPE_SKIPPED] = "skipped",
    [CMH_SCRAPE_CONTENT_ENCODING] = "content_encoding",
    [CMH_SCRAPE_GZIP_TOO_LARGE] = "gzip_too_large",
    [CMH_SCRAPE_GZIP_ERROR] = "gzip_error",
};

const char *cmh_scrape_result_name(enum cmh_scrape_result r)
{
    if ((unsigned)r >= CMH_SCRAPE_NRESULTS)
        return "unknown";
    return result_names[r];
}

int cmh_scrape_target_set(struct cmh_scrape_target *t, const char *name, const char *ip,
                          uint16_t port)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    if (inet_pton(AF_INET, ip, &t->addr.v4.sin_addr) == 1) {
        t->addr.v4.sin_family = AF_INET;
        t->addr.v4.sin_port = htons(port);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &t->addr.v6.sin6_addr) == 1) {
        t->addr.v6.sin6_family = AF_INET6;
        t->addr.v6.sin6_port = htons(port);
        return 0;
    }
    return -EINVAL;
}

void cmh_scrape_opts_default(struct cmh_scrape_opts *o)
{
    memset(o, 0, sizeof *o);
    o->concurrency = 1000;
    o->timeout_ms = 5000;
    o->round_timeout_ms = 0;
    o->jitter_ms = 1000;
    o->max_body = 4u << 20;
    o->max_header = 16 * 1024;
    o->keepalive = 1;
    o->log_failures = 10;
    o->gzip = 1;
}

void cmh_scrape_opts_from_config(struct cmh_scrape_opts *o, const struct cmh_config *cfg)
{
    cmh_scrape_opts_default(o);
    o->concurrency = (unsigned)cfg->scrape_concurrency;
    o->timeout_ms = cfg->scrape_timeout_ms;
    o->max_body = cfg->scrape_max_body;
    o->jitter_ms = cfg->scrape_jitter_ms;
    o->keepalive = cfg->scrape_keepalive;
    o->gzip = cfg->scrape_gzip;
    uint64_t interval = cfg->interval_ms;
    uint64_t round = cfg->scrape_round_timeout_ms;
    /* The round must be over before the next tick, or rounds would queue up behind each other. */
    if (round == 0 || round >= interval)
        round = interval * 4 / 5;
    if (round == 0)
        round = 1;
    o->round_timeout_ms = round;
    if (o->timeout_ms > round)
        o->timeout_ms = round;
    if (o->jitter_ms > round / 2)
        o->jitter_ms = round / 2;
}

static size_t addr_hash(const union cmh_scrape_addr *a)
{
    uint64_t h;
    if (a->sa.sa_family == AF_INET) {
        h = ((uint64_t)a->v4.sin_addr.s_addr << 16) ^ a->v4.sin_port;
    } else {
        uint64_t x[2];
        memcpy(x, &a->v6.sin6_addr, sizeof x);
        h = x[0] ^ (x[1] * 31) ^ a->v6.sin6_port;
    }
    /* Full avalanche: addresses of one subnet differ only in a few bytes. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (size_t)h;
}

static int addr_equal(const union cmh_scrape_addr *a, const union cmh_scrape_addr *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return 0;
    if (a->sa.sa_family == AF_INET)
        return a->v4.sin_port == b->v4.sin_port && a->v4.sin_addr.s_addr == b->v4.sin_addr.s_addr;
    return a->v6.sin6_port == b->v6.sin6_port &&
           memcmp(&a->v6.sin6_addr, &b->v6.sin6_addr, sizeof a->v6.sin6_addr) == 0;
}

static void addr_text(const union cmh_scrape_addr *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &a->v6.sin6_addr, ip, sizeof ip);
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(a->v6.sin6_port));
    } else {
        inet_ntop(AF_INET, &a->v4.sin_addr, ip, sizeof ip);
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(a->v4.sin_port));
    }
}

/* ---- lists ---- */

static void list_push(struct cmh_scrape_conn **head, struct cmh_scrape_conn **tail,
                      struct cmh_scrape_conn *c)
{
    c->next = NULL;
    c->prev = *tail;
    if (*tail != NULL)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
}

static void list_remove(struct cmh_scrape_conn **head, struct cmh_scrape_conn **tail,
                        struct cmh_scrape_conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        *tail = c->prev;
    c->prev = c->next = NULL;
}

/* new takes old's place in the active list (same deadline, so the order stays right). */
static void list_replace(struct cmh_scrape_conn **head, struct cmh_scrape_conn **tail,
                         struct cmh_scrape_conn *old, struct cmh_scrape_conn *new)
{
    new->prev = old->prev;
    new->next = old->next;
    if (old->prev != NULL)
        old->prev->next = new;
    else
        *head = new;
    if (old->next != NULL)
        old->next->prev = new;
    else
        *tail = new;
    old->prev = old->next = NULL;
}

static void idle_map_add(struct cmh_scraper *s, struct cmh_scrape_conn *c)
{
    size_t b = addr_hash(&c->addr) & s->idle_map_mask;
    c->map_next = s->idle_map[b];
    s->idle_map[b] = c;
}

static void idle_map_del(struct cmh_scraper *s, struct cmh_scrape_conn *c)
{
    size_t b = addr_hash(&c->addr) & s->idle_map_mask;
    for (struct cmh_scrape_conn **p = &s->idle_map[b]; *p != NULL; p = &(*p)->map_next) {
        if (*p == c) {
            *p = c->map_next;
            break;
        }
    }
    c->map_next = NULL;
}

static struct cmh_scrape_conn *idle_take(struct cmh_scraper *s, const union cmh_scrape_addr *a)
{
    size_t b = addr_hash(a) & s->idle_map_mask;
    for (struct cmh_scrape_conn *c = s->idle_map[b]; c != NULL; c = c->map_next) {
        if (addr_equal(&c->addr, a)) {
            idle_map_del(s, c);
            list_remove(&s->idle_head, &s->idle_tail, c);
            return c;
        }
    }
    return NULL;
}

/* ---- connection lifetime ---- */

static void maybe_closed(struct cmh_scraper *s);

static void on_conn_close(uv_handle_t *h)
{
    struct cmh_scrape_conn *c = container_of(h, struct cmh_scrape_conn, tcp);
    struct cmh_scraper *s = c->s;
    s->closing_conns--;
    if (s->closing) {
        cmh_free(c);
        maybe_closed(s);
        return;
    }
    c->next = s->free_list;
    s->free_list = c;
}

/* Closes the socket now (libuv closes the fd inside uv_close), frees the conn later. */
static void conn_close(struct cmh_scraper *s, struct cmh_scrape_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    s->open--;
    s->closing_conns++;
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

static void idle_evict_oldest(struct cmh_scraper *s)
{
    struct cmh_scrape_conn *c = s->idle_head;
    idle_map_del(s, c);
    list_remove(&s->idle_head, &s->idle_tail, c);
    conn_close(s, c);
}

static struct cmh_scrape_conn *conn_get(struct cmh_scraper *s)
{
    struct cmh_scrape_conn *c = s->free_list;
    if (c != NULL)
        s->free_list = c->next;
    else
        c = cmh_malloc(sizeof *c);
    if (c != NULL) {
        memset(c, 0, offsetof(struct cmh_scrape_conn, hname));
        c->s = s;
    }
    return c;
}

/* ---- results ---- */

static void round_finish_check(struct cmh_scraper *s);

static void log_failure(struct cmh_scraper *s, const struct cmh_scrape_conn *c,
                        enum cmh_scrape_result r, const struct cmh_scrape_record *rec)
{
    if (!cmh_log_enabled(s->log, CMH_LOG_WARN) || !cmh_ratelimit_allow(&s->loglimit))
        return;
    char addr[64];
    const struct cmh_scrape_target *t = &s->targets[c->target];
    addr_text(&t->addr, addr, sizeof addr);
    CMH_LOG(s->log, CMH_LOG_WARN, "scrape failed", CMH_STR("target", t->name ? t->name : addr),
            CMH_STR("addr", addr), CMH_STR("result", cmh_scrape_result_name(r)),
            CMH_UINT("http_status", rec->http_status),
            CMH_STR("error", c->uv_err != 0 ? uv_err_name(c->uv_err) : ""),
            CMH_DBL("duration_ms", rec->duration_us / 1000.0), CMH_UINT("bytes", rec->bytes),
            CMH_UINT("round", s->stats.round));
}

static void pump(struct cmh_scraper *s);

/* The target served by c has its result: record it, end the consumer, keep or close the socket. */
static void conn_finish(struct cmh_scraper *s, struct cmh_scrape_conn *c, enum cmh_scrape_result r)
{
    cmh_gunzip_give(&s->gz, c->gz);
    c->gz = NULL;
    if (c->began) {
        c->began = 0;
        if (s->consumer.end != NULL) {
            int rc = s->consumer.end(c->ctx, r);
            if (r == CMH_SCRAPE_OK && rc < 0)
                r = CMH_SCRAPE_PARSE_ERROR;
        }
    }
    struct cmh_scrape_record *rec = &s->records[c->target];
    uint64_t dur = (uv_hrtime() - c->start_ns) / 1000;
    rec->result = (uint8_t)r;
    rec->reused = c->reused;
    rec->http_status = c->status;
    rec->duration_us = dur > UINT32_MAX ? UINT32_MAX : (uint32_t)dur;
    rec->bytes = c->bytes;
    s->stats.count[r]++;
    s->stats.bytes += c->bytes;
    if (c->reused && r == CMH_SCRAPE_OK)
        s->stats.reused++;
    if (r != CMH_SCRAPE_OK)
        log_failure(s, c, r, rec);

    list_remove(&s->active_head, &s->active_tail, c);
    s->inflight--;
    s->finished++;
    if (r == CMH_SCRAPE_OK && s->opts.keepalive && c->keep_alive && !s->closing) {
        c->state = CONN_IDLE;
        list_push(&s->idle_head, &s->idle_tail, c);
        idle_map_add(s, c);
    } else {
        conn_close(s, c);
    }
    round_finish_check(s);
    pump(s);
}

/* ---- HTTP response parsing (llhttp) ---- */

static struct cmh_scrape_conn *conn_of(llhttp_t *p)
{
    return container_of(p, struct cmh_scrape_conn, parser);
}

static int fail_cb(struct cmh_scrape_conn *c, enum cmh_scrape_result r)
{
    c->fail = (uint8_t)r;
    return HPE_USER;
}

static int count_header(struct cmh_scrape_conn *c, size_t len)
{
    c->hdr_bytes += (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len);
    if (c->hdr_bytes > c->s->opts.max_header)
        return fail_cb(c, CMH_SCRAPE_MALFORMED_HTTP);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    return count_header(conn_of(p), len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct cmh_scrape_conn *c = conn_of(p);
    if (count_header(c, len) != 0)
        return HPE_USER;
    /* Names we care about are short; a longer one is simply "other". */
    size_t room = sizeof c->hname - c->hname_len;
    size_t n = len < room ? len : room;
    memcpy(c->hname + c->hname_len, at, n);
    c->hname_len = (uint8_t)(c->hname_len + n);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct cmh_scrape_conn *c = conn_of(p);
    c->which = HDR_OTHER;
    if (c->hname_len == 12 && strncasecmp(c->hname, "content-type", 12) == 0)
        c->which = HDR_CONTENT_TYPE;
    else if (c->hname_len == 16 && strncasecmp(c->hname, "content-encoding", 16) == 0)
        c->which = HDR_CONTENT_ENCODING;
    c->hname_len = 0;
    if (c->which == HDR_CONTENT_TYPE)
        c->ct_bad = 1; /* until its value proves otherwise */
    return 0;
}

/* Header values arrive in pieces when a read splits them; we only look at their first bytes,
 * kept in hname (free again once the field name is classified). */
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct cmh_scrape_conn *c = conn_of(p);
    if (count_header(c, len) != 0)
        return HPE_USER;
    if (c->which != HDR_OTHER) {
        size_t room = sizeof c->hname - c->hname_len;
        size_t n = len < room ? len : room;
        memcpy(c->hname + c->hname_len, at, n);
        c->hname_len = (uint8_t)(c->hname_len + n);
    }
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct cmh_scrape_conn *c = conn_of(p);
    const char *v = c->hname;
    size_t n = c->hname_len;
    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    if (c->which == HDR_CONTENT_TYPE) {
        /* The Prometheus text format is text/plain (any version/charset parameter). */
        c->ct_bad = !(n >= 10 && strncasecmp(v, "text/plain", 10) == 0 &&
                      (n == 10 || v[10] == ';' || v[10] == ' '));
    } else if (c->which == HDR_CONTENT_ENCODING) {
        /* gzip once; a second gzip, a list or any other coding is something we cannot read. */
        int coding = cmh_gzip_coding(v, n);
        if (coding == 1 && !c->enc_gzip)
            c->enc_gzip = 1;
        else if (coding != 0)
            c->enc_bad = 1;
    }
    c->which = HDR_OTHER;
    c->hname_len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct cmh_scrape_conn *c = conn_of(p);
    struct cmh_scraper *s = c->s;
    c->status = (uint16_t)llhttp_get_status_code(p);
    if (c->status != 200)
        return fail_cb(c, CMH_SCRAPE_HTTP_STATUS);
    if (c->ct_bad)
        return fail_cb(c, CMH_SCRAPE_CONTENT_TYPE);
    if (c->enc_bad)
        return fail_cb(c, CMH_SCRAPE_CONTENT_ENCODING);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > s->opts.max_body)
        return fail_cb(c, CMH_SCRAPE_BODY_TOO_LARGE);
    if (c->enc_gzip) {
        /* The inflated body has the same bound as one sent as is. */
        c->gz = cmh_gunzip_take(&s->gz, s->opts.max_body);
        if (c->gz == NULL)
            return fail_cb(c, CMH_SCRAPE_PARSE_ERROR);
        s->stats.gzip++;
    }
    if (s->consumer.begin != NULL && s->consumer.begin(s->consumer.arg, c->target, &c->ctx) < 0)
        return fail_cb(c, CMH_SCRAPE_PARSE_ERROR);
    c->began = 1;
    return 0;
}

static int to_consumer(void *arg, const char *buf, size_t len)
{
    struct cmh_scrape_conn *c = arg;
    struct cmh_scraper *s = c->s;
    return s->consumer.body != NULL ? s->consumer.body(c->ctx, buf, len) : 0;
}

/* A gunzip failure as a scrape result. */
static enum cmh_scrape_result gunzip_result(int rc)
{
    switch (rc) {
    case CMH_GUNZIP_ERR_LIMIT:
        return CMH_SCRAPE_GZIP_TOO_LARGE;
    case CMH_GUNZIP_ERR_DATA:
        return CMH_SCRAPE_GZIP_ERROR;
    default: /* the consumer refused the text, or no memory to inflate it */
        return CMH_SCRAPE_PARSE_ERROR;
    }
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct cmh_scrape_conn *c = conn_of(p);
    struct cmh_scraper *s = c->s;
    /* The consumer sees the body up to the cap whichever way reads split it, so a body that is
     * both too large and unparsable fails the same way every time. A gzip body is bounded twice:
     * as sent, and inflated (by the inflater, with the same cap). */
    uint64_t room = c->body_bytes < s->opts.max_body ? s->opts.max_body - c->body_bytes : 0;
    size_t n = len < room ? len : (size_t)room;
    c->body_bytes += len;
    if (n > 0) {
        int rc = c->gz != NULL
                     ? cmh_gunzip_feed(c->gz, at, n, s->gz.out, CMH_GUNZIP_OUT_LEN, to_consumer, c)
                     : to_consumer(c, at, n);
        if (rc < 0)
            return fail_cb(c, c->gz != NULL ? gunzip_result(rc) : CMH_SCRAPE_PARSE_ERROR);
    }
    if (c->body_bytes > s->opts.max_body)
        return fail_cb(c, CMH_SCRAPE_BODY_TOO_LARGE);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct cmh_scrape_conn *c = conn_of(p);
    /* A gzip stream cut short inside a complete HTTP message would lose the body's tail. */
    if (c->gz != NULL) {
        int rc = cmh_gunzip_finish(c->gz);
        if (rc < 0)
            return fail_cb(c, gunzip_result(rc));
    }
    c->message_done = 1;
    c->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
    /* Stop here: anything after the one response we asked for is not parsed. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses n more bytes of c's response. Returns its result once it has one, or -1 while more bytes
 * are needed. The socket path and cmh_scrape_parse_response share it. */
static int response_feed(struct cmh_scrape_conn *c, const char *buf, size_t n)
{
    llhttp_errno_t e = llhttp_execute(&c->parser, buf, n);
    if (c->message_done) {
        /* A response followed by more bytes is not something we can reuse safely. */
        if (e == HPE_PAUSED && c->parser.error_pos != NULL && c->parser.error_pos != buf + n)
            c->keep_alive = 0;
        return CMH_SCRAPE_OK;
    }
    if (e == HPE_OK)
        return -1;
    return c->fail != 0 ? c->fail : CMH_SCRAPE_MALFORMED_HTTP;
}

/* The stream ended: a body delimited by the end of the connection is complete only now. Returns
 * the result, or -1 when the response was cut short (truncated or reset: the caller knows). */
static int response_eof(struct cmh_scrape_conn *c)
{
    llhttp_errno_t e = c->got_bytes ? llhttp_finish(&c->parser) : HPE_INVALID_EOF_STATE;
    if (c->message_done)
        return CMH_SCRAPE_OK;
    if (e == HPE_USER && c->fail != 0)
        return c->fail;
    return -1;
}

enum cmh_scrape_result cmh_scrape_parse_response(const struct cmh_scrape_opts *o,
                                                 const struct cmh_scrape_consumer *consumer,
                                                 const char *buf, size_t len, size_t chunk,
                                                 struct cmh_scrape_record *rec, int *keep_alive)
{
    /* Only the options and the consumer of a scraper are read by the parser callbacks. */
    struct cmh_scraper s;
    struct cmh_scrape_conn c;
    memset(&s, 0, sizeof s);
    memset(&c, 0, sizeof c);
    s.opts = *o;
    if (consumer != NULL)
        s.consumer = *consumer;
    c.s = &s;
    c.state = CONN_REQUEST;
    llhttp_init(&c.parser, HTTP_RESPONSE, &parser_settings);
    int r = -1;
    size_t off = 0;
    while (r < 0 && off < len) {
        size_t n = chunk == 0 || chunk > len - off ? len - off : chunk;
        c.got_bytes = 1;
        uint64_t b = (uint64_t)c.bytes + n;
        c.bytes = b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
        r = response_feed(&c, buf + off, n);
        off += n;
    }
    if (r < 0)
        r = response_eof(&c);
    if (r < 0)
        r = CMH_SCRAPE_TRUNCATED;
    cmh_gunzip_give(&s.gz, c.gz);
    cmh_gunzip_pool_free(&s.gz);
    /* As conn_finish does: the consumer's end decides whether a complete body parsed. */
    if (c.began && s.consumer.end != NULL) {
        int rc = s.consumer.end(c.ctx, (enum cmh_scrape_result)r);
        if (r == CMH_SCRAPE_OK && rc < 0)
            r = CMH_SCRAPE_PARSE_ERROR;
    }
    if (rec != NULL) {
        memset(rec, 0, sizeof *rec);
        rec->result = (uint8_t)r;
        rec->http_status = c.status;
        rec->bytes = c.bytes;
    }
    if (keep_alive != NULL)
        *keep_alive = r == CMH_SCRAPE_OK && c.keep_alive;
    return (enum cmh_scrape_result)r;
}

/* ---- I/O ---- */

static void start_fresh(struct cmh_scraper *s, struct cmh_scrape_conn *c);

/* A kept-alive connection the server had already closed: try again at once on a new one, with the
 * same deadline. Not a failure. */
static void retry_fresh(struct cmh_scraper *s, struct cmh_scrape_conn *old)
{
    struct cmh_scrape_conn *c = conn_get(s);
    if (c == NULL) {
        conn_finish(s, old, CMH_SCRAPE_RESET);
        return;
    }
    s->stats.retried++;
    c->target = old->target;
    c->deadline_ms = old->deadline_ms;
    c->start_ns = old->start_ns;
    c->addr = old->addr;
    list_replace(&s->active_head, &s->active_tail, old, c);
    conn_close(s, old);
    start_fresh(s, c);
}

static int socket_error(struct cmh_scrape_conn *c)
{
    uv_os_fd_t fd;
    int err = 0;
    socklen_t len = sizeof err;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return 0;
    return err;
}

/* The connection ended (error or EOF) while a response was expected. */
static void conn_broken(struct cmh_scraper *s, struct cmh_scrape_conn *c, int err)
{
    if (c->reused && !c->got_bytes) {
        retry_fresh(s, c);
        return;
    }
    if (err == UV_EOF) {
        int r = response_eof(c);
        if (r >= 0) {
            conn_finish(s, c, (enum cmh_scrape_result)r);
            return;
        }
        /* Linux may report an RST that follows data as a plain end of stream; the socket's
         * pending error still tells the two apart. */
        conn_finish(s, c, socket_error(c) == ECONNRESET ? CMH_SCRAPE_RESET : CMH_SCRAPE_TRUNCATED);
        return;
    }
    conn_finish(s, c, CMH_SCRAPE_RESET);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct cmh_scrape_conn *c = container_of(h, struct cmh_scrape_conn, tcp);
    buf->base = c->s->rbuf;
    buf->len = c->s->rbuf_len;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct cmh_scrape_conn *c = container_of(st, struct cmh_scrape_conn, tcp);
    struct cmh_scraper *s = c->s;
    if (nread == 0 || c->state == CONN_CLOSING)
        return;
    if (c->state == CONN_IDLE) {
        /* The server closed an idle connection (ipamD does after 5 s), or sent junk. */
        idle_map_del(s, c);
        list_remove(&s->idle_head, &s->idle_tail, c);
        conn_close(s, c);
        return;
    }
    if (nread < 0) {
        conn_broken(s, c, (int)nread);
        return;
    }
    c->got_bytes = 1;
    uint64_t b = (uint64_t)c->bytes + (uint64_t)nread;
    c->bytes = b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
    int r = response_feed(c, buf->base, (size_t)nread);
    if (r >= 0)
        conn_finish(s, c, (enum cmh_scrape_result)r);
}

static void on_write(uv_write_t *req, int status)
{
    struct cmh_scrape_conn *c = container_of(req, struct cmh_scrape_conn, write_req);
    if (status == 0 || status == UV_ECANCELED || c->state != CONN_REQUEST)
        return;
    conn_broken(c->s, c, status);
}

static void send_request(struct cmh_scraper *s, struct cmh_scrape_conn *c)
{
    c->state = CONN_REQUEST;
    llhttp_init(&c->parser, HTTP_RESPONSE, &parser_settings);
    if (!c->reused) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc != 0) {
            conn_finish(s, c, CMH_SCRAPE_RESET);
            return;
        }
    }
    char host[64];
    addr_text(&c->addr, host, sizeof host);
    int n = snprintf(c->req, sizeof c->req,
                     "GET /metrics HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n"
                     "Accept: text/plain;version=0.0.4\r\n%s%s\r\n",
                     host, s->user_agent, s->opts.gzip ? "Accept-Encoding: gzip\r\n" : "",
                     s->opts.keepalive ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof c->req) {
        conn_finish(s, c, CMH_SCRAPE_CONNECT_ERROR);
        return;
    }
    c->req_len = (size_t)n;
    /* The request fits in any socket buffer: send it now, and only queue what did not go. send()
     * with MSG_NOSIGNAL, because a peer that already closed must not raise SIGPIPE in a daemon
     * that did not ignore it (libuv's writes use write(2)). Nothing else is queued on the
     * stream: one request per connection at a time. */
    uv_buf_t b = uv_buf_init(c->req, (unsigned)c->req_len);
    uv_os_fd_t fd;
    ssize_t w = -1;
    int err = UV_EBADF;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        do
            w = send(fd, c->req, c->req_len, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        err = w < 0 ? uv_translate_sys_error(errno) : 0;
    }
    if (w == (ssize_t)c->req_len)
        return;
    if (w < 0 && err != UV_EAGAIN) {
        conn_broken(s, c, err);
        return;
    }
    if (w > 0) {
        b.base += w;
        b.len -= (size_t)w;
    }
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc != 0)
        conn_broken(s, c, rc);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct cmh_scrape_conn *c = container_of(req, struct cmh_scrape_conn, connect_req);
    struct cmh_scraper *s = c->s;
    if (status == UV_ECANCELED || c->state != CONN_CONNECTING)
        return;
    if (status != 0) {
        c->uv_err = status;
        enum cmh_scrape_result r = status == UV_ECONNREFUSED ? CMH_SCRAPE_CONNECT_REFUSED
                                   : status == UV_ETIMEDOUT  ? CMH_SCRAPE_CONNECT_TIMEOUT
                                                             : CMH_SCRAPE_CONNECT_ERROR;
        conn_finish(s, c, r);
        return;
    }
    c->connected = 1;
    send_request(s, c);
}

/* c is in the active list with target, deadline and addr set. */
static void start_fresh(struct cmh_scraper *s, struct cmh_scrape_conn *c)
{
    c->state = CONN_CONNECTING;
    c->reused = 0;
    c->uv_err = 0;
    uv_tcp_init(s->loop, &c->tcp);
    s->open++;
    if (s->open > s->stats.peak_open)
        s->stats.peak_open = s->open;
    s->stats.connects++;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, &c->addr.sa, on_connect);
    if (rc != 0) {
        /* Synchronous failures: no address, no fd, refused on loopback with some kernels. */
        c->uv_err = rc;
        if (rc == UV_EMFILE || rc == UV_ENFILE)
            s->stats.no_fds++;
        conn_finish(s, c,
                    rc == UV_ECONNREFUSED ? CMH_SCRAPE_CONNECT_REFUSED : CMH_SCRAPE_CONNECT_ERROR);
    }
}

static void on_deadline(uv_timer_t *t);

static void arm_deadline(struct cmh_scraper *s)
{
    if (s->active_head == NULL || uv_is_active((uv_handle_t *)&s->deadline_timer))
        return;
    uint64_t now = uv_now(s->loop);
    uint64_t d = s->active_head->deadline_ms;
    uv_timer_start(&s->deadline_timer, on_deadline, d > now ? d - now : 0, 0);
}

static void on_deadline(uv_timer_t *t)
{
    struct cmh_scraper *s = container_of(t, struct cmh_scraper, deadline_timer);
    uint64_t now = uv_now(s->loop);
    while (s->active_head != NULL && s->active_head->deadline_ms <= now) {
        struct cmh_scrape_conn *c = s->active_head;
        conn_finish(s, c, c->connected ? CMH_SCRAPE_RESPONSE_TIMEOUT : CMH_SCRAPE_CONNECT_TIMEOUT);
    }
    arm_deadline(s);
}

/* Starts target idx: over an idle kept-alive connection to the same address if there is one. */
static void start_target(struct cmh_scraper *s, size_t idx)
{
    const struct cmh_scrape_target *t = &s->targets[idx];
    struct cmh_scrape_conn *c = NULL;
    if (s->opts.keepalive && s->idle_head != NULL)
        c = idle_take(s, &t->addr);
    int reused = c != NULL;
    if (c == NULL) {
        c = conn_get(s);
        if (c == NULL) {
            struct cmh_scrape_record *rec = &s->records[idx];
            memset(rec, 0, sizeof *rec);
            rec->result = CMH_SCRAPE_CONNECT_ERROR;
            s->stats.count[CMH_SCRAPE_CONNECT_ERROR]++;
            s->finished++;
            round_finish_check(s);
            return;
        }
        c->addr = t->addr;
    } else {
        /* Reset the per-response state of a kept-alive connection. */
        c->connected = 1;
        c->got_bytes = c->began = c->message_done = c->keep_alive = 0;
        c->ct_bad = c->enc_bad = c->enc_gzip = c->which = c->hname_len = c->fail = 0;
        c->status = 0;
        c->hdr_bytes = 0;
        c->body_bytes = 0;
        c->bytes = 0;
        c->ctx = NULL;
    }
    c->target = idx;
    c->start_ns = uv_hrtime();
    c->deadline_ms = uv_now(s->loop) + s->opts.timeout_ms;
    s->inflight++;
    list_push(&s->active_head, &s->active_tail, c);
    arm_deadline(s);
    if (reused) {
        c->reused = 1;
        send_request(s, c);
    } else {
        start_fresh(s, c);
    }
}

static void on_pace(uv_timer_t *t)
{
    struct cmh_scraper *s = container_of(t, struct cmh_scraper, pace_timer);
    pump(s);
}

/* Starts as many released targets as the connection budget allows. */
static void pump(struct cmh_scraper *s)
{
    /* Starting a target can finish one at once (a synchronous connect failure), which pumps
     * again: the outer call's loop picks that up instead of recursing once per target. */
    if (!s->active || s->closing || s->pumping)
        return;
    s->pumping = 1;
    uint64_t now = uv_now(s->loop);
    uint64_t elapsed = now - s->round_start_ms;
    while (s->next < s->ntargets && s->inflight < s->opts.concurrency) {
        /* Target k of the round is released at k * jitter / n into the round. */
        uint64_t release = s->opts.jitter_ms * (uint64_t)s->next / s->ntargets;
        if (release > elapsed) {
            if (!uv_is_active((uv_handle_t *)&s->pace_timer))
                uv_timer_start(&s->pace_timer, on_pace, release - elapsed, 0);
            break;
        }
        if (s->open >= s->opts.concurrency) {
            /* The budget counts idle sockets too: give the oldest one up, unless the next target
             * has its own (then reuse it). */
            if (s->idle_head == NULL)
                break;
            struct cmh_scrape_conn *mine = NULL;
            const struct cmh_scrape_target *t = &s->targets[s->order[s->next]];
            if (s->opts.keepalive)
                mine = idle_take(s, &t->addr);
            if (mine != NULL) {
                /* Put it back where start_target will find it. */
                list_push(&s->idle_head, &s->idle_tail, mine);
                idle_map_add(s, mine);
            } else {
                idle_evict_oldest(s);
            }
        }
        size_t idx = s->order[s->next++];
        start_target(s, idx);
    }
    s->pumping = 0;
}

static void on_round_done(uv_timer_t *t);

static void round_finish_check(struct cmh_scraper *s)
{
    if (!s->active || s->finished < s->ntargets)
        return;
    uv_timer_stop(&s->pace_timer);
    uv_timer_stop(&s->round_timer);
    /* done runs from its own callback, never inside whatever finished the last target. */
    uv_timer_start(&s->round_timer, on_round_done, 0, 0);
}

static void close_handles(struct cmh_scraper *s);

static void on_round_done(uv_timer_t *t)
{
    struct cmh_scraper *s = container_of(t, struct cmh_scraper, round_timer);
    s->stats.wall_us = (uv_hrtime() - s->round_start_ns) / 1000;
    s->stats.logged = s->loglimit.used;
    s->stats.suppressed = s->loglimit.suppressed;
    if (s->stats.no_fds > 0)
        CMH_LOG(s->log, CMH_LOG_WARN,
                "out of file descriptors: targets not scraped this round; raise the open-file "
                "limit or lower SCRAPE_CONCURRENCY",
                CMH_UINT("round", s->stats.round), CMH_UINT("targets", s->stats.no_fds),
                CMH_UINT("concurrency", s->opts.concurrency));
    if (cmh_log_enabled(s->log, CMH_LOG_DEBUG)) {
        /* One summary line: counts of every result that happened. */
        struct cmh_kv kv[CMH_SCRAPE_NRESULTS + 8];
        size_t n = 0;
        kv[n++] = CMH_UINT("round", s->stats.round);
        kv[n++] = CMH_UINT("targets", s->ntargets);
        for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
            if (s->stats.count[r] != 0)
                kv[n++] = CMH_UINT(result_names[r], s->stats.count[r]);
        kv[n++] = CMH_DBL("wall_ms", s->stats.wall_us / 1000.0);
        kv[n++] = CMH_UINT("bytes", s->stats.bytes);
        kv[n++] = CMH_UINT("connects", s->stats.connects);
        kv[n++] = CMH_UINT("reused", s->stats.reused);
        kv[n++] = CMH_UINT("failure_lines_suppressed", s->loglimit.suppressed);
        /* The collector logs the round's one summary line; this one is for debugging. */
        cmh_log_event(s->log, CMH_LOG_DEBUG, "scrape round", kv, n);
    }
    s->active = 0;
    struct cmh_scrape_round_stats st = s->stats;
    cmh_scrape_done_cb done = s->done_cb;
    void *arg = s->done_arg;
    s->targets = NULL;
    if (done != NULL)
        done(s, &st, arg);
    if (s->closing && !s->active)
        close_handles(s);
}

/* The round deadline, or cancel: targets not started are skipped, the rest time out now. */
static void end_round_now(struct cmh_scraper *s)
{
    if (!s->active)
        return;
    while (s->next < s->ntargets) {
        size_t idx = s->order[s->next++];
        struct cmh_scrape_record *rec = &s->records[idx];
        memset(rec, 0, sizeof *rec);
        rec->result = CMH_SCRAPE_SKIPPED;
        s->stats.count[CMH_SCRAPE_SKIPPED]++;
        s->finished++;
    }
    uv_timer_stop(&s->pace_timer);
    while (s->active_head != NULL) {
        struct cmh_scrape_conn *c = s->active_head;
        conn_finish(s, c, c->connected ? CMH_SCRAPE_RESPONSE_TIMEOUT : CMH_SCRAPE_CONNECT_TIMEOUT);
    }
    round_finish_check(s);
}

static void on_round_deadline(uv_timer_t *t)
{
    struct cmh_scraper *s = container_of(t, struct cmh_scraper, round_timer);
    CMH_LOG(s->log, CMH_LOG_WARN, "scrape round deadline passed", CMH_UINT("round", s->stats.round),
            CMH_UINT("round_timeout_ms", s->opts.round_timeout_ms),
            CMH_UINT("unfinished", s->ntargets - s->finished));
    end_round_now(s);
}

void cmh_scraper_cancel(struct cmh_scraper *s)
{
    end_round_now(s);
}

int cmh_scraper_round(struct cmh_scraper *s, const struct cmh_scrape_target *targets, size_t n,
                      const struct cmh_scrape_consumer *consumer, cmh_scrape_done_cb done,
                      void *arg)
{
    if (s->closing)
        return -ESHUTDOWN;
    if (s->active)
        return -EBUSY;
    if (n > UINT32_MAX)
        return -EINVAL;
    if (n > s->records_cap) {
        struct cmh_scrape_record *r = cmh_reallocarray(s->records, n, sizeof *r);
        if (r == NULL)
            return -ENOMEM;
        s->records = r;
        uint32_t *o = cmh_reallocarray(s->order, n, sizeof *o);
        if (o == NULL)
            return -ENOMEM;
        s->order = o;
        s->records_cap = n;
    }
    /* A fresh random order every round, so no node is always first or last. */
    for (size_t i = 0; i < n; i++)
        s->order[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(cmh_rng_next(&s->rng) % i);
        uint32_t tmp = s->order[i - 1];
        s->order[i - 1] = s->order[j];
        s->order[j] = tmp;
    }
    if (n > 0)
        memset(s->records, 0, n * sizeof *s->records);
    s->targets = targets;
    s->ntargets = n;
    if (consumer != NULL)
        s->consumer = *consumer;
    else
        memset(&s->consumer, 0, sizeof s->consumer);
    s->done_cb = done;
    s->done_arg = arg;
    s->next = 0;
    s->finished = 0;
    uint64_t round_no = s->stats.round + 1;
    memset(&s->stats, 0, sizeof s->stats);
    s->stats.round = round_no;
    s->stats.targets = n;
    s->stats.peak_open = s->open;
    cmh_ratelimit_reset(&s->loglimit, s->opts.log_failures);
    s->round_start_ns = uv_hrtime();
    uv_update_time(s->loop);
    s->round_start_ms = uv_now(s->loop);
    s->active = 1;
    if (n == 0) {
        round_finish_check(s);
        return 0;
    }
    if (s->opts.round_timeout_ms > 0)
        uv_timer_start(&s->round_timer, on_round_deadline, s->opts.round_timeout_ms, 0);
    /* First starts from a callback too, so nothing of the round runs inside this call. */
    uv_timer_start(&s->pace_timer, on_pace, 0, 0);
    return 0;
}

const struct cmh_scrape_record *cmh_scraper_records(const struct cmh_scraper *s, size_t *n)
{
    *n = s->ntargets;
    return s->records;
}

static void free_all(struct cmh_scraper *s)
{
    while (s->free_list != NULL) {
        struct cmh_scrape_conn *c = s->free_list;
        s->free_list = c->next;
        cmh_free(c);
    }
    cmh_free(s->records);
    cmh_free(s->order);
    cmh_free(s->idle_map);
    cmh_free(s->rbuf);
    cmh_gunzip_pool_free(&s->gz);
    s->records = NULL;
    s->order = NULL;
    s->idle_map = NULL;
    s->rbuf = NULL;
    s->records_cap = 0;
}

static void maybe_closed(struct cmh_scraper *s)
{
    if (!s->closing || s->handles_open > 0 || s->closing_conns > 0)
        return;
    free_all(s);
    cmh_scrape_close_cb cb = s->close_cb;
    s->close_cb = NULL;
    if (cb != NULL)
        cb(s);
}

static void on_handle_close(uv_handle_t *h)
{
    struct cmh_scraper *s = h->data;
    s->handles_open--;
    maybe_closed(s);
}

static void close_handles(struct cmh_scraper *s)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&s->pace_timer, (uv_handle_t *)&s->deadline_timer,
                         (uv_handle_t *)&s->round_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], on_handle_close);
}

void cmh_scraper_close(struct cmh_scraper *s, cmh_scrape_close_cb close_cb)
{
    if (s->closing)
        return;
    s->close_cb = close_cb;
    end_round_now(s);
    s->closing = 1;
    while (s->idle_head != NULL)
        idle_evict_oldest(s);
    /* Closed conns parked for reuse are freed now; those still closing free themselves. */
    while (s->free_list != NULL) {
        struct cmh_scrape_conn *c = s->free_list;
        s->free_list = c->next;
        cmh_free(c);
    }
    if (!s->active)
        close_handles(s);
    /* else on_round_done closes them after done has run */
}

int cmh_scraper_init(struct cmh_scraper *s, uv_loop_t *loop, const struct cmh_scrape_opts *o,
                     struct cmh_log *log)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->log = log;
    s->opts = *o;
    if (s->opts.concurrency == 0)
        s->opts.concurrency = 1;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        rlim_t cap = rl.rlim_cur > 2 * FD_RESERVE ? rl.rlim_cur - FD_RESERVE : rl.rlim_cur / 2;
        if (s->opts.concurrency > cap) {
            CMH_LOG(log, CMH_LOG_WARN, "SCRAPE_CONCURRENCY above the open-file limit; capped",
                    CMH_UINT("requested", s->opts.concurrency), CMH_UINT("capped", cap),
                    CMH_UINT("nofile", rl.rlim_cur));
            s->opts.concurrency = (unsigned)cap;
        }
    }
    snprintf(s->user_agent, sizeof s->user_agent, "%s",
             o->user_agent != NULL ? o->user_agent : "cni-metrics-helper/" CMH_VERSION);
    s->opts.user_agent = NULL;
    s->rng = cmh_rng_seed(o->seed);
    size_t buckets = 16;
    while (buckets < 2 * (size_t)s->opts.concurrency)
        buckets *= 2;
    s->idle_map = cmh_calloc(buckets, sizeof *s->idle_map);
    s->rbuf_len = RBUF_LEN;
    s->rbuf = cmh_malloc(s->rbuf_len);
    if (s->idle_map == NULL || s->rbuf == NULL) {
        cmh_free(s->idle_map);
        cmh_free(s->rbuf);
        s->idle_map = NULL;
        s->rbuf = NULL;
        return -ENOMEM;
    }
    s->idle_map_mask = buckets - 1;
    uv_timer_t *ts[] = {&s->pace_timer, &s->deadline_timer, &s->round_timer};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        uv_timer_init(loop, ts[i]);
        ts[i]->data = s;
        s->handles_open++;
    }
    return 0;
}
