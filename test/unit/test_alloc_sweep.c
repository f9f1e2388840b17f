/* Allocation-failure sweep over a full round: scrape three ipamD peers (in-process, on the same
 * loop), parse, aggregate, and publish to the CloudWatch stand-in (test/sim/cloudwatch_standin.py).
 * A clean round first counts its allocations (N_total); then, for every N in 1..N_total, the Nth
 * allocation of a round fails: nothing crashes or leaks (ASan), the round either comes out right
 * or says so (a warn/error line or a failure counter), every datum is accounted for, and the NEXT
 * round, without failure, produces exactly the datums of a failure-free run, which the stand-in
 * receives exactly. Built against its own copy of the core with CMH_FAULT_INJECT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/container_of.h"
#include "cmh/core/alloc_int.h"
#include "cmh/aws/cloudwatch.h"
#include "cmh/round/collector.h"
#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/core/log.h"
#include "cmh/aws/sigv4.h"

#include "test_peer.h"
#include "test_standin_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NODES  3
#define REGION "us-west-2"
#define KEY_ID "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define TOKEN  "sweep-token"

/* ---- ipamD peers: real ipamD text with three values that change per node and version ---- */

struct pconn {
    uv_tcp_t tcp;
    struct sweep *sw;
    struct pconn *next;
    char req[2048];
    size_t len;
};

struct wreq {
    uv_write_t w;
    char *data;
};

struct npeer {
    uv_tcp_t server;
    struct sweep *sw;
    int node;
    int port;
};

struct sweep {
    uv_loop_t loop;
    struct npeer peers[NODES];
    struct pconn *conns;
    unsigned version; /* what the peers serve now */
    char *tmpl;       /* cni_test1.data */
    size_t tmpl_len;
    struct test_peer standin;
    int standin_port;
    struct cmh_config cfg;
    struct cmh_log log;
    char log_path[64];
    struct cmh_collector col;
    struct cmh_collector cold; /* the cold-start sweep's, new for every N */
    struct cmh_collector *cur; /* the one rounds run on */
    int cold_closed;
    struct cmh_curl_uv curl;
    struct cmh_cloudwatch *cw;
    char names[NODES][16];
    struct cmh_collector_target targets[NODES];
    uint64_t round;
    int64_t base_ms;
    uv_timer_t tick; /* keeps uv_run(UV_RUN_ONCE) returning, so every wait is bounded */
    int done;
    int closed;
};

/* The template with the three lines of interest replaced for node n at version v. Values:
 * awscni_add_ip_req_count grows by n+1 per version, the DescribeNetworkInterfaces request count by
 * 2(n+1); awscni_assigned_ip_addresses alternates with the version's parity. */
static double add_req(int n, unsigned v)
{
    return 100.0 + (double)v * (n + 1);
}
static double describe_req(int n, unsigned v)
{
    return 13.0 + 2.0 * (double)v * (n + 1);
}
static double assigned(int n, unsigned v)
{
    return (v % 2 ? 5.0 : 9.0) + n;
}

static char *body_for(const struct sweep *sw, int n, unsigned v, size_t *len)
{
    size_t cap = sw->tmpl_len + 256, off = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    const char *p = sw->tmpl, *end = sw->tmpl + sw->tmpl_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        static const char *const keys[] = {
            "awscni_add_ip_req_count ", "awscni_assigned_ip_addresses ",
            "awscni_ec2api_req_count{fn=\"DescribeNetworkInterfaces\"} "};
        int which = -1;
        for (int k = 0; k < 3; k++)
            if (ll > strlen(keys[k]) && strncmp(p, keys[k], strlen(keys[k])) == 0)
                which = k;
        if (which < 0) {
            memcpy(out + off, p, ll);
            off += ll;
        } else {
            double val = which == 0   ? add_req(n, v)
                         : which == 1 ? assigned(n, v)
                                      : describe_req(n, v);
            off += (size_t)snprintf(out + off, cap - off, "%s%.17g\n", keys[which], val);
        }
        p += ll;
    }
    *len = off;
    return out;
}

static void pconn_closed(uv_handle_t *h)
{
    free(container_of((uv_tcp_t *)h, struct pconn, tcp));
}

static void pconn_close(struct pconn *c)
{
    struct pconn **pp = &c->sw->conns;
    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    uv_close((uv_handle_t *)&c->tcp, pconn_closed);
}

static void on_pwrite(uv_write_t *w, int status)
{
    struct wreq *r = container_of(w, struct wreq, w);
    (void)status;
    free(r->data);
    free(r);
}

static void p_alloc(uv_handle_t *h, size_t s, uv_buf_t *buf)
{
    struct pconn *c = container_of((uv_tcp_t *)h, struct pconn, tcp);
    (void)s;
    buf->base = c->req + c->len;
    buf->len = sizeof c->req - c->len;
}

static void p_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct pconn *c = container_of((uv_tcp_t *)st, struct pconn, tcp);
    (void)buf;
    if (nread < 0) {
        pconn_close(c);
        return;
    }
    c->len += (size_t)nread;
    if (c->len < 4 || memmem(c->req, c->len, "\r\n\r\n", 4) == NULL) {
        if (c->len == sizeof c->req)
            pconn_close(c);
        return;
    }
    c->len = 0;
    struct npeer *p = (struct npeer *)c->tcp.data;
    size_t blen;
    char *body = body_for(c->sw, p->node, c->sw->version, &blen);
    struct wreq *r = malloc(sizeof *r);
    assert_non_null(r);
    r->data = malloc(blen + 256);
    assert_non_null(r->data);
    int h = snprintf(r->data, 256,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     blen);
    memcpy(r->data + h, body, blen);
    free(body);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)(h + (int)blen));
    if (uv_write(&r->w, st, &b, 1, on_pwrite) != 0) {
        free(r->data);
        free(r);
        pconn_close(c);
    }
}

static void p_conn(uv_stream_t *server, int status)
{
    struct npeer *p = container_of((uv_tcp_t *)server, struct npeer, server);
    if (status != 0)
        return;
    struct pconn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->sw = p->sw;
    uv_tcp_init(&p->sw->loop, &c->tcp);
    c->tcp.data = p;
    c->next = p->sw->conns;
    p->sw->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, p_alloc, p_read) != 0)
        pconn_close(c);
}

static void peers_start(struct sweep *sw)
{
    for (int i = 0; i < NODES; i++) {
        struct npeer *p = &sw->peers[i];
        p->sw = sw;
        p->node = i;
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", 0, &a);
        assert_int_equal(uv_tcp_init(&sw->loop, &p->server), 0);
        assert_int_equal(uv_tcp_bind(&p->server, (struct sockaddr *)&a, 0), 0);
        assert_int_equal(uv_listen((uv_stream_t *)&p->server, 64, p_conn), 0);
        struct sockaddr_storage ss;
        int sl = sizeof ss;
        uv_tcp_getsockname(&p->server, (struct sockaddr *)&ss, &sl);
        p->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        snprintf(sw->names[i], sizeof sw->names[i], "node-%d", i);
        sw->targets[i] = (struct cmh_collector_target){
            .name = sw->names[i], .ip = "127.0.0.1", .port = (uint16_t)p->port};
    }
}

/* ---- stand-in control, credentials ---- */

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static json_t *standin_call(struct sweep *sw, const char *method, const char *path,
                            const char *json)
{
    return test_standin_call(&sw->loop, &sw->curl, sw->standin_port, method, path, json, 64u << 20);
}

static int creds_get(void *ctx, cmh_cloudwatch_creds_cb cb, void *arg)
{
    (void)ctx;
    struct cmh_sigv4_credentials c = {KEY_ID, SECRET, TOKEN};
    cb(arg, 0, &c, NULL);
    return 0;
}

static void creds_invalidate(void *ctx)
{
    (void)ctx;
}

/* ---- one round ---- */

/* A copy of a round's datums, strings included, to compare across rounds. */
struct snap {
    size_t n;
    struct cmh_datum v[256];
    char text[256][160];
};

static void snap_take(struct snap *s, const struct cmh_agg *a)
{
    assert_true(a->datums.n <= 256);
    s->n = a->datums.n;
    for (size_t i = 0; i < s->n; i++) {
        const struct cmh_datum *d = &a->datums.v[i];
        s->v[i] = *d;
        int off = snprintf(s->text[i], sizeof s->text[i], "%s|%s", d->metric, d->unit);
        for (unsigned k = 0; k < d->ndims; k++)
            off += snprintf(s->text[i] + off, sizeof s->text[i] - (size_t)off, "|%s=%s",
                            d->dims[k].name, d->dims[k].value);
        assert_true((size_t)off < sizeof s->text[i]);
    }
}

static int same_double(double a, double b)
{
    return a == b || (isnan(a) && isnan(b));
}

/* Equal in everything but the timestamp. */
static int snap_equal(const struct snap *a, const struct snap *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++) {
        const struct cmh_datum *x = &a->v[i], *y = &b->v[i];
        if (strcmp(a->text[i], b->text[i]) != 0 || x->kind != y->kind)
            return 0;
        if (x->kind == CMH_DATUM_VALUE && !same_double(x->value, y->value))
            return 0;
        if (x->kind == CMH_DATUM_STATS &&
            !(same_double(x->count, y->count) && same_double(x->sum, y->sum) &&
              same_double(x->min, y->min) && same_double(x->max, y->max)))
            return 0;
    }
    return 1;
}

static const struct cmh_datum *snap_find(const struct snap *s, const char *metric)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].metric, metric) == 0 && s->v[i].ndims == 1)
            return &s->v[i];
    return NULL;
}

static void on_round_done(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                          void *arg)
{
    struct sweep *sw = arg;
    (void)c;
    (void)st;
    sw->done = 1;
}

struct outcome {
    int round_rc;   /* cmh_collector_round */
    int enqueue_rc; /* cmh_cloudwatch_enqueue */
    uint64_t failed_nodes;
    struct snap datums;
    int64_t start_ms;
};

/* The end of our log, to see why a round got stuck. */
static void dump_log_tail(struct sweep *sw)
{
    char buf[4096];
    struct stat st;
    if (fstat(sw->log.fd, &st) != 0)
        return;
    off_t from = st.st_size > (off_t)sizeof buf - 1 ? st.st_size - (off_t)sizeof buf + 1 : 0;
    ssize_t n = pread(sw->log.fd, buf, sizeof buf - 1, from);
    if (n > 0) {
        buf[n] = '\0';
        print_message("log tail:\n%s\n", buf);
    }
}

/* Runs one round at the peers' current version and publishes its datums; returns when the
 * publisher has nothing queued. */
static void run_round(struct sweep *sw, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    sw->round++;
    o->start_ms = sw->base_ms + (int64_t)sw->round;
    sw->done = 0;
    o->round_rc =
        cmh_collector_round(sw->cur, sw->round, o->start_ms, sw->targets, NODES, on_round_done, sw);
    if (o->round_rc != 0)
        return;
    uint64_t end = now_ms() + 20000;
    while (!sw->done && now_ms() < end)
        uv_run(&sw->loop, UV_RUN_ONCE);
    if (!sw->done)
        fail_msg("round %llu never finished", (unsigned long long)sw->round);
    o->failed_nodes = sw->cur->agg.last.failed;
    snap_take(&o->datums, &sw->cur->agg);
    for (size_t i = 0; i < o->datums.n; i++)
        assert_true(o->datums.v[i].timestamp_ms == o->start_ms);
    o->enqueue_rc = cmh_cloudwatch_enqueue(sw->cw, sw->cur->agg.datums.v, sw->cur->agg.datums.n);
    struct cmh_cloudwatch_stats s;
    do {
        uv_run(&sw->loop, UV_RUN_ONCE);
        cmh_cloudwatch_stats(sw->cw, &s);
    } while (s.in_queue > 0 && now_ms() < end);
    if (s.in_queue > 0) {
        dump_log_tail(sw);
        fail_msg("round %llu: %llu datums still queued after 20 s (requests %llu, ok %llu, "
                 "failed %llu, last error '%s')",
                 (unsigned long long)sw->round, (unsigned long long)s.in_queue,
                 (unsigned long long)s.requests, (unsigned long long)s.batches_ok,
                 (unsigned long long)s.batches_failed, s.last_error);
    }
}

static void check_accounting(struct sweep *sw)
{
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(sw->cw, &s);
    assert_true(s.enqueued == s.published + s.dropped_overflow + s.dropped_age + s.dropped_invalid +
                                  s.dropped_shutdown + s.dropped_not_leader + s.in_queue);
}

/* The stand-in holds exactly the datums of o (it was reset before o's round). */
static void expect_published(struct sweep *sw, const struct outcome *o)
{
    json_t *all = standin_call(sw, "GET", "/datums", NULL);
    assert_int_equal(json_array_size(all), o->datums.n);
    char *seen = calloc(o->datums.n + 1, 1);
    size_t k;
    json_t *r;
    json_array_foreach(all, k, r)
    {
        char text[160];
        json_t *dims = json_object_get(r, "dimensions");
        /* Rebuild our text key from the record, dimensions in our order. */
        size_t match = o->datums.n;
        for (size_t i = 0; i < o->datums.n && match == o->datums.n; i++) {
            const struct cmh_datum *d = &o->datums.v[i];
            if (seen[i] ||
                strcmp(d->metric, json_string_value(json_object_get(r, "metric"))) != 0 ||
                json_object_size(dims) != d->ndims)
                continue;
            int off = snprintf(text, sizeof text, "%s|%s", d->metric,
                               json_string_value(json_object_get(r, "unit")));
            for (unsigned j = 0; j < d->ndims; j++) {
                const char *v = json_string_value(json_object_get(dims, d->dims[j].name));
                off += snprintf(text + off, sizeof text - (size_t)off, "|%s=%s", d->dims[j].name,
                                v ? v : "(none)");
            }
            if (strcmp(text, o->datums.text[i]) != 0)
                continue;
            assert_int_equal(json_integer_value(json_object_get(r, "timestamp_ms")), o->start_ms);
            if (d->kind == CMH_DATUM_VALUE) {
                if (json_real_value(json_object_get(r, "value")) != d->value &&
                    json_number_value(json_object_get(r, "value")) != d->value)
                    continue;
            } else {
                json_t *s = json_object_get(r, "stats");
                if (s == NULL || json_number_value(json_object_get(s, "count")) != d->count ||
                    json_number_value(json_object_get(s, "sum")) != d->sum ||
                    json_number_value(json_object_get(s, "min")) != d->min ||
                    json_number_value(json_object_get(s, "max")) != d->max)
                    continue;
            }
            match = i;
        }
        if (match == o->datums.n)
            fail_msg("stand-in datum %zu (%s) matches none of the round's", k,
                     json_string_value(json_object_get(r, "metric")));
        seen[match] = 1;
    }
    free(seen);
    json_decref(all);
}

static off_t log_size(struct sweep *sw)
{
    struct stat st;
    assert_int_equal(fstat(sw->log.fd, &st), 0);
    return st.st_size;
}

/* Did the log get a warn or error line after offset `from`? */
static int log_warned_since(struct sweep *sw, off_t from)
{
    off_t to = log_size(sw);
    if (to <= from)
        return 0;
    size_t n = (size_t)(to - from);
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    assert_int_equal(pread(sw->log.fd, buf, n, from), (ssize_t)n);
    buf[n] = '\0';
    int found = strstr(buf, "level=warn") != NULL || strstr(buf, "level=error") != NULL;
    free(buf);
    return found;
}

/* ---- the sweep ---- */

static void on_curl_closed(struct cmh_curl_uv *c)
{
    (void)c;
}

static void on_col_closed(struct cmh_collector *c)
{
    (void)c;
}

static void on_cold_closed(struct cmh_collector *c)
{
    struct sweep *sw = container_of(c, struct sweep, cold);
    sw->cold_closed = 1;
}

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void sweep_setup(struct sweep *sw)
{
    memset(sw, 0, sizeof *sw);
    FILE *f = fopen(CMH_DATA_DIR "/ipamd/cni_test1.data", "rb");
    assert_non_null(f);
    sw->tmpl = malloc(1 << 16);
    assert_non_null(sw->tmpl);
    sw->tmpl_len = fread(sw->tmpl, 1, 1 << 16, f);
    fclose(f);
    assert_true(sw->tmpl_len > 1000 && sw->tmpl_len < (1 << 16));

    char script[1024];
    snprintf(script, sizeof script, "%s/test/sim/cloudwatch_standin.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON,
                    script,
                    "--lifetime",
                    "300",
                    "--region",
                    REGION,
                    "--key",
                    KEY_ID ":" SECRET ":" TOKEN,
                    NULL};
    assert_int_equal(test_peer_start(&sw->standin, argv), 0);
    char line[1024] = "";
    int https;
    char ca[512];
    if (test_peer_read_line(&sw->standin, line, sizeof line, 60) != 0 ||
        sscanf(line, "READY http=%d https=%d ca=%511s", &sw->standin_port, &https, ca) < 1)
        fail_msg("stand-in did not start: '%s'", line);

    assert_int_equal(uv_loop_init(&sw->loop), 0);
    uv_timer_init(&sw->loop, &sw->tick);
    uv_timer_start(&sw->tick, on_tick, 10, 10);
    peers_start(sw);
    char *env[] = {"SCRAPE_JITTER=0", "SCRAPE_TIMEOUT=5", "METRIC_UPDATE_INTERVAL=30",
                   "STALE_ROUNDS=2", NULL};
    char err[CMH_CONFIG_ERR_MAX];
    assert_int_equal(cmh_config_load(&sw->cfg, env, err), 0);
    snprintf(sw->log_path, sizeof sw->log_path, "/tmp/cmh_alloc_sweep_%d.log", (int)getpid());
    int fd = open(sw->log_path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND, 0600);
    assert_true(fd >= 0);
    unlink(sw->log_path);
    cmh_log_init(&sw->log, CMH_LOG_INFO, CMH_LOG_TEXT, fd);
    assert_int_equal(cmh_collector_init(&sw->col, &sw->loop, &sw->cfg, "sweep-cluster", &sw->log),
                     0);
    sw->cur = &sw->col;
    struct cmh_curl_uv_opts co = {.timeout_ms = 10000};
    assert_int_equal(cmh_curl_uv_init(&sw->curl, &sw->loop, &co, &sw->log), 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", sw->standin_port);
    struct cmh_cloudwatch_opts o;
    memset(&o, 0, sizeof o);
    o.region = REGION;
    o.endpoint = url;
    o.storage_resolution = 60;
    o.backoff_base_ms = 5;
    o.backoff_cap_ms = 40;
    o.seed = 7;
    o.creds = (struct cmh_cloudwatch_creds){creds_get, creds_invalidate, sw};
    assert_int_equal(cmh_cloudwatch_new(&sw->cw, &sw->loop, &sw->curl, &o, &sw->log), 0);
    sw->base_ms = wall_now_ms() - 60000;
}

static void sweep_teardown(struct sweep *sw)
{
    cmh_cloudwatch_close(sw->cw, NULL, NULL);
    cmh_collector_close(&sw->col, on_col_closed);
    cmh_curl_uv_close(&sw->curl, on_curl_closed);
    while (sw->conns != NULL)
        pconn_close(sw->conns);
    for (int i = 0; i < NODES; i++)
        uv_close((uv_handle_t *)&sw->peers[i].server, NULL);
    uv_close((uv_handle_t *)&sw->tick, NULL);
    for (int i = 0; i < 1000 && uv_run(&sw->loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(uv_loop_close(&sw->loop), 0);
    cmh_config_free(&sw->cfg);
    close(sw->log.fd);
    test_peer_stop(&sw->standin);
    free(sw->tmpl);
}

static struct sweep the_sweep;

/* Expected datums of a clean round that follows a clean round at version v-1 (B) or at the same
 * version (A), by the parity of v. */
struct expect {
    struct snap b[2], a[2];
};

static struct expect the_expect;

static void check_against_truth(const struct snap *s, unsigned v, int after_same_version)
{
    double add = 0, desc = 0, asg = 0;
    for (int n = 0; n < NODES; n++) {
        add += after_same_version ? 0 : add_req(n, v) - add_req(n, v - 1);
        desc += after_same_version ? 0 : describe_req(n, v) - describe_req(n, v - 1);
        asg += assigned(n, v);
    }
    const struct cmh_datum *d = snap_find(s, "addReqCount");
    assert_non_null(d);
    assert_true(d->value == add);
    d = snap_find(s, "assignIPAddresses");
    assert_non_null(d);
    assert_true(d->value == asg);
    d = snap_find(s, "ec2ApiReqCount");
    assert_non_null(d);
    assert_true(d->value == desc);
}

/* Cold start: a new collector (connections, parser slots, node table all allocated afresh) whose
 * init and first round get the Nth allocation failure. Round A at version v on the new collector,
 * B at v+1 and C at v+2 clean: B has every node fresh with exact gauges, C exactly the datums of
 * a failure-free run. */
static void cold_sweep(struct sweep *sw, struct outcome *o)
{
    struct expect *ex = &the_expect;
    struct snap *clean_a = calloc(1, sizeof *clean_a);
    assert_non_null(clean_a);
    int have_clean = 0;
    unsigned long n, n_cold = 0, fired = 0, init_failed = 0, visible = 0;
    uint64_t t0 = now_ms();
    /* n == 0: the failure-free reference of a cold round A. */
    for (n = 0; n < 100000 && (n_cold == 0 || n <= n_cold + 16); n++) {
        sw->version += 2 - (sw->version % 2); /* A always at an even version */
        off_t log_at = log_size(sw);
        cmh_alloc_fail_at(n);
        int rc = cmh_collector_init(&sw->cold, &sw->loop, &sw->cfg, "sweep-cluster", &sw->log);
        if (rc != 0) {
            int hit = cmh_alloc_count() >= n;
            cmh_alloc_fail_at(0);
            assert_int_equal(rc, -ENOMEM);
            assert_true(hit);
            fired++;
            init_failed++;
            continue;
        }
        sw->cur = &sw->cold;
        struct cmh_cloudwatch_stats before, after;
        cmh_cloudwatch_stats(sw->cw, &before);
        run_round(sw, o);
        unsigned long count = cmh_alloc_count();
        int hit = n > 0 && count >= n;
        cmh_alloc_fail_at(0);
        fired += hit;
        cmh_cloudwatch_stats(sw->cw, &after);
        check_accounting(sw);
        if (n == 0) {
            n_cold = count;
            assert_int_equal(o->round_rc, 0);
            assert_int_equal(o->failed_nodes, 0);
            *clean_a = o->datums;
            have_clean = 1;
        } else {
            int wrong = o->round_rc != 0 || o->enqueue_rc != 0 ||
                        !snap_equal(&o->datums, clean_a) ||
                        after.published - before.published != o->datums.n;
            if (wrong) {
                visible++;
                int said = o->round_rc != 0 || o->enqueue_rc != 0 || o->failed_nodes > 0 ||
                           after.batches_failed != before.batches_failed ||
                           log_warned_since(sw, log_at);
                if (!said)
                    fail_msg("cold N=%lu: round came out wrong without a warning or a counter", n);
            }
        }
        /* B: every node answers; gauges exact. */
        sw->version++;
        run_round(sw, o);
        assert_int_equal(o->round_rc, 0);
        assert_int_equal(o->failed_nodes, 0);
        double asg = 0;
        for (int k = 0; k < NODES; k++)
            asg += assigned(k, sw->version);
        const struct cmh_datum *d = snap_find(&o->datums, "assignIPAddresses");
        assert_non_null(d);
        assert_true(d->value == asg);
        /* C: exactly a failure-free run's datums, and exactly those at the stand-in. */
        json_decref(standin_call(sw, "POST", "/reset", "{}"));
        sw->version++;
        run_round(sw, o);
        assert_int_equal(o->round_rc, 0);
        if (!snap_equal(&o->datums, &ex->b[sw->version % 2]))
            fail_msg("cold N=%lu: the second round after the failure differs from a "
                     "failure-free run",
                     n);
        expect_published(sw, o);
        sw->cold_closed = 0;
        cmh_collector_close(&sw->cold, on_cold_closed);
        uint64_t end = now_ms() + 10000;
        while (!sw->cold_closed && now_ms() < end)
            uv_run(&sw->loop, UV_RUN_ONCE);
        assert_true(sw->cold_closed);
        sw->cur = &sw->col;
        /* Counts vary by an allocation or two between runs (how reads split): go on past the
         * reference count until a run makes no failing allocation. */
        if (n > 0 && !hit && (n_cold == 0 || n > n_cold))
            break;
    }
    assert_true(have_clean);
    print_message("cold sweep: N_total=%lu (collector init + first round + publish), swept "
                  "N=1..%lu, %lu failures injected (%lu in init), %lu first rounds visibly "
                  "affected (all reported), every second round exact, %llu ms\n",
                  n_cold, n - 1, fired, init_failed, visible, (unsigned long long)(now_ms() - t0));
    assert_true(n >= n_cold && fired >= n_cold * 9 / 10);
    free(clean_a);
}

static void alloc_sweep_full_round_every_n(void **state)
{
    (void)state;
    struct sweep *sw = &the_sweep;
    struct expect *ex = &the_expect;
    sweep_setup(sw);
    struct outcome *o = calloc(1, sizeof *o);
    assert_non_null(o);

    /* Warm-up, failure-free: every node known, connections up, expectations recorded. */
    sw->version = 1;
    run_round(sw, o);
    for (unsigned v = 2; v <= 3; v++) {
        sw->version = v;
        run_round(sw, o);
        assert_int_equal(o->failed_nodes, 0);
        check_against_truth(&o->datums, v, 0);
        ex->b[v % 2] = o->datums;
        cmh_alloc_fail_at(0);
        run_round(sw, o);
        unsigned long n_total = cmh_alloc_count();
        assert_int_equal(o->failed_nodes, 0);
        check_against_truth(&o->datums, v, 1);
        ex->a[v % 2] = o->datums;
        print_message("clean round (scrape %d nodes, aggregate, publish %zu datums): %lu "
                      "allocations\n",
                      NODES, o->datums.n, n_total);
    }
    cmh_alloc_fail_at(0);
    run_round(sw, o);
    unsigned long n_total = cmh_alloc_count();
    assert_true(n_total > 20);

    uint64_t t0 = now_ms();
    unsigned long fired = 0, visible = 0;
    unsigned long n;
    /* CMH_SWEEP_FROM=N starts at N, to look at one case under a debugger. */
    const char *from = getenv("CMH_SWEEP_FROM");
    for (n = from ? strtoul(from, NULL, 10) : 1; n <= n_total + 16; n++) {
        /* Round A: same version as the last clean round; its Nth allocation fails. */
        struct cmh_cloudwatch_stats before, after;
        cmh_cloudwatch_stats(sw->cw, &before);
        uint64_t fail_before = 0;
        for (int r = 1; r < CMH_SCRAPE_NRESULTS; r++)
            fail_before += sw->col.results_total[r];
        off_t log_at = log_size(sw);
        cmh_alloc_fail_at(n);
        run_round(sw, o);
        int hit = cmh_alloc_count() >= n;
        cmh_alloc_fail_at(0);
        fired += hit;
        cmh_cloudwatch_stats(sw->cw, &after);
        check_accounting(sw);
        uint64_t fail_after = 0;
        for (int r = 1; r < CMH_SCRAPE_NRESULTS; r++)
            fail_after += sw->col.results_total[r];
        int wrong = o->round_rc != 0 || o->enqueue_rc != 0 ||
                    !snap_equal(&o->datums, &ex->a[sw->version % 2]) ||
                    after.published - before.published != o->datums.n;
        if (wrong) {
            visible++;
            /* A round that came out wrong must say so. */
            int said = o->round_rc != 0 || o->enqueue_rc != 0 || o->failed_nodes > 0 ||
                       fail_after != fail_before || after.batches_failed != before.batches_failed ||
                       after.dropped_invalid != before.dropped_invalid ||
                       log_warned_since(sw, log_at);
            if (!said)
                fail_msg("N=%lu: round %llu came out wrong without a warning or a counter", n,
                         (unsigned long long)sw->round);
        }
        /* Round B: the next version, no failure: exactly the failure-free datums, published. */
        json_decref(standin_call(sw, "POST", "/reset", "{}"));
        sw->version++;
        run_round(sw, o);
        assert_int_equal(o->round_rc, 0);
        assert_int_equal(o->enqueue_rc, 0);
        if (!snap_equal(&o->datums, &ex->b[sw->version % 2]))
            fail_msg("N=%lu: the round after the failure differs from a failure-free run", n);
        expect_published(sw, o);
        check_accounting(sw);
        if (!hit && n > n_total)
            break;
    }
    uint64_t ms = now_ms() - t0;
    print_message("alloc sweep: N_total=%lu, swept N=1..%lu, %lu failures injected, %lu rounds "
                  "visibly affected (all reported), every next round exact, %llu ms\n",
                  n_total, n - 1 < n_total ? n - 1 : n_total, fired, visible,
                  (unsigned long long)ms);
    assert_true(fired >= n_total * 9 / 10);
    cold_sweep(sw, o);
    free(o);
    sweep_teardown(sw);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(alloc_sweep_full_round_every_n),
    };
    return cmocka_run_group_tests_name("alloc_sweep", tests, NULL, NULL);
}
