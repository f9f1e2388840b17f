#include "cmh/round/collector.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Parser and aggregator scratch of one scrape in flight; reused, at most one per connection. */
struct cmh_collector_slot {
    struct cmh_collector *c;
    struct cmh_collector_slot *next_free;
    size_t target;
    struct cmh_prom_parser parser;
    struct cmh_agg_scrape scratch;
};

static void slot_free(struct cmh_collector_slot *s)
{
    cmh_prom_close(&s->parser);
    cmh_agg_scrape_close(&s->scratch);
    cmh_free(s);
}

static struct cmh_collector_slot *slot_get(struct cmh_collector *c)
{
    struct cmh_collector_slot *s = c->free_slots;
    if (s != NULL) {
        c->free_slots = s->next_free;
        return s;
    }
    struct cmh_collector_slot **v =
        cmh_grow(c->all_slots, &c->slots_cap, c->nslots + 1, sizeof *v, 64);
    if (v == NULL)
        return NULL;
    c->all_slots = v;
    s = cmh_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->c = c;
    struct cmh_prom_options po;
    if (cmh_agg_scrape_init(&s->scratch, c->max_series) != 0) {
        cmh_free(s);
        return NULL;
    }
    cmh_agg_prom_options(&po, &s->scratch);
    po.max_line = c->max_line;
    if (cmh_prom_init(&s->parser, &po) != 0) {
        cmh_agg_scrape_close(&s->scratch);
        cmh_free(s);
        return NULL;
    }
    c->all_slots[c->nslots++] = s;
    return s;
}

static void slot_put(struct cmh_collector *c, struct cmh_collector_slot *s)
{
    s->next_free = c->free_slots;
    c->free_slots = s;
}

static int on_begin(void *arg, size_t target, void **ctx)
{
    struct cmh_collector *c = arg;
    struct cmh_collector_slot *s = slot_get(c);
    if (s == NULL)
        return -ENOMEM;
    cmh_prom_reset(&s->parser);
    cmh_agg_scrape_reset(&s->scratch);
    s->target = target;
    *ctx = s;
    return 0;
}

/* The direct engine indexes its own (address-checked) subset of the round's targets. */
static int on_begin_direct(void *arg, size_t target, void **ctx)
{
    struct cmh_collector *c = arg;
    return on_begin(c, c->dmap[target], ctx);
}

static int on_body(void *ctx, const char *buf, size_t len)
{
    struct cmh_collector_slot *s = ctx;
    return cmh_prom_feed(&s->parser, buf, len) == 0 ? 0 : -1;
}

static void log_refused(struct cmh_collector *c, struct cmh_collector_slot *s)
{
    if (!cmh_ratelimit_allow(&c->parse_log))
        return;
    const struct cmh_prom_error *e = cmh_prom_error(&s->parser);
    /* A body the aggregator refused stops the parser with -ECANCELED: its reason is the one. */
    const char *reason = e->code != 0 && (e->code != -ECANCELED || s->scratch.reason[0] == '\0')
                             ? e->reason
                             : s->scratch.reason;
    CMH_LOG(c->log, CMH_LOG_WARN, "scrape discarded", CMH_STR("target", c->names[s->target]),
            CMH_STR("result", "parse_error"), CMH_UINT("line", e->code != 0 ? e->line : 0),
            CMH_STR("reason", reason));
}

/* An ipamD family we do not know is logged once per name (the aggregator bounds the names). */
static void log_unknown(struct cmh_collector *c, const char *node)
{
    struct cmh_agg *a = &c->agg;
    for (; a->unknown_logged < a->nunknown; a->unknown_logged++)
        CMH_LOG(c->log, CMH_LOG_WARN,
                "ipamD family not in the metric table: counted, not published",
                CMH_STR("family", a->unknown_names[a->unknown_logged]), CMH_STR("target", node),
                CMH_STR("fix", "a newer VPC CNI? see the metric reference for the versions known"));
    if (a->unknown_untracked > 0 && !c->unknown_overflow_logged) {
        c->unknown_overflow_logged = 1;
        CMH_LOG(c->log, CMH_LOG_WARN, "more unknown ipamD families than are named; only counted",
                CMH_UINT("named", a->nunknown));
    }
}

static int on_end(void *ctx, enum cmh_scrape_result result)
{
    struct cmh_collector_slot *s = ctx;
    struct cmh_collector *c = s->c;
    int rc = 0;
    if (result == CMH_SCRAPE_OK) {
        rc = cmh_prom_finish(&s->parser);
        if (rc == 0)
            rc = cmh_agg_commit(&c->agg, c->names[s->target], &s->scratch);
        if (rc != 0)
            log_refused(c, s);
        else if (c->agg.nunknown > c->agg.unknown_logged || c->agg.unknown_untracked > 0)
            log_unknown(c, c->names[s->target]);
    } else if (result == CMH_SCRAPE_PARSE_ERROR) {
        log_refused(c, s);
    }
    slot_put(c, s);
    return rc == 0 ? 0 : -1;
}

/* Every target has its final record: count, fail the failed, finish the aggregation. */
static void finish_round(struct cmh_collector *c)
{
    uv_timer_stop(&c->round_timer);
    struct cmh_scrape_round_stats *st = &c->round_stats;
    *st = c->direct_stats;
    memset(st->count, 0, sizeof st->count);
    st->targets = 0;
    for (size_t i = 0; i < c->nin; i++) {
        struct cmh_collector_route *r = &c->rt[i];
        if (r->state != 2)
            continue;
        st->targets++;
        st->count[r->rec.result]++;
        c->results_total[r->rec.result]++;
        if (r->via_proxy)
            st->bytes += r->rec.bytes;
        if (r->rec.result != CMH_SCRAPE_OK && cmh_agg_fail(&c->agg, c->names[i]) != 0)
            CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory recording a failed node",
                    CMH_STR("target", c->names[i]));
    }
    st->wall_us = (uv_hrtime() - c->round_start_ns) / 1000;
    if (cmh_agg_round_finish(&c->agg) != 0)
        CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory finishing the round; datums incomplete",
                CMH_UINT("round", c->agg.round));
    c->rounds_total++;
    c->last_round_seconds = (double)st->wall_us / 1e6;
    c->active = 0;
    if (c->parse_log.suppressed > 0)
        CMH_LOG(c->log, CMH_LOG_WARN, "more scrapes discarded", CMH_UINT("round", c->agg.round),
                CMH_UINT("not_logged", c->parse_log.suppressed));
    if (c->proxy_log.suppressed + c->fallback_log.suppressed > 0)
        CMH_LOG(c->log, CMH_LOG_WARN, "more proxy scrape lines not logged",
                CMH_UINT("round", c->agg.round),
                CMH_UINT("not_logged", c->proxy_log.suppressed + c->fallback_log.suppressed));
    if (c->done_cb != NULL)
        c->done_cb(c, st, c->done_arg);
}

static void maybe_finish(struct cmh_collector *c)
{
    if (c->active && c->pending == 0)
        finish_round(c);
}

/* Starts a proxied scrape of round target i (its done comes later). 0 or a negative code. */
static int proxy_start(struct cmh_collector *c, size_t i, uint64_t timeout_ms)
{
    const struct cmh_collector_target *t = &c->in[i];
    int rc = cmh_proxy_scrape_start(&c->proxy, i, t->pod, t->port, timeout_ms);
    if (rc != 0) {
        CMH_LOG(c->log, CMH_LOG_WARN, "cannot scrape through the API server proxy",
                CMH_STR("target", t->name), CMH_STR("pod", t->pod), CMH_INT("error", rc));
        return rc;
    }
    c->rt[i].state = 1;
    c->pending++;
    c->round_proxy++;
    return 0;
}

static const char *proxy_fix(const struct cmh_scrape_record *rec)
{
    switch (rec->http_status) {
    case 401:
        return "the API server refused the service-account token";
    case 403:
        return "grant get on pods/proxy to the helper's Role (manifests/base/role.yaml), or set "
               "SCRAPE_MODE=direct and open the node security group";
    case 404:
        return "the pod is gone; discovery drops it at its next event";
    default:
        return "";
    }
}

static void on_proxy_done(struct cmh_proxy_scrape *p, size_t i, const struct cmh_scrape_record *rec,
                          void *arg)
{
    struct cmh_collector *c = arg;
    (void)p;
    struct cmh_collector_route *r = &c->rt[i];
    r->rec = *rec;
    r->via_proxy = 1;
    r->state = 2;
    c->proxy_results_total[rec->result]++;
    if (rec->result == CMH_SCRAPE_OK)
        c->round_proxy_ok++;
    else if (rec->result != CMH_SCRAPE_PARSE_ERROR && cmh_ratelimit_allow(&c->proxy_log))
        CMH_LOG(c->log, CMH_LOG_WARN, "proxy scrape failed", CMH_STR("target", c->names[i]),
                CMH_STR("pod", c->in[i].pod),
                CMH_STR("result", cmh_scrape_result_name((enum cmh_scrape_result)rec->result)),
                CMH_UINT("status", rec->http_status), CMH_UINT("ms", rec->duration_us / 1000),
                CMH_STR("fix", proxy_fix(rec)));
    c->pending--;
    maybe_finish(c);
}

/* SCRAPE_MODE=auto after a direct attempt of round target i: switch, stay or come back. */
static void auto_after_direct(struct cmh_collector *c, size_t i, uint64_t now)
{
    const struct cmh_collector_target *t = &c->in[i];
    enum cmh_scrape_result res = (enum cmh_scrape_result)c->rt[i].rec.result;
    enum cmh_fallback_event ev;
    if (cmh_fallback_direct_result(&c->fallback, t->name, res, now, &ev) != 0) {
        CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory recording a proxy fallback",
                CMH_STR("target", t->name));
        return;
    }
    if (ev == CMH_FALLBACK_SWITCHED) {
        c->round_fallbacks++;
        c->fallbacks_total++;
        if (cmh_ratelimit_allow(&c->fallback_log)) {
            char fix[256];
            snprintf(fix, sizeof fix,
                     "allow inbound TCP %u on the node security group from the helper pod's "
                     "security group (or the cluster security group)",
                     (unsigned)t->port);
            CMH_LOG(c->log, CMH_LOG_WARN,
                    "direct scrape cannot connect; scraping this node through the API server proxy",
                    CMH_STR("target", t->name), CMH_STR("ip", t->ip), CMH_UINT("port", t->port),
                    CMH_STR("pod", t->pod), CMH_STR("result", cmh_scrape_result_name(res)),
                    CMH_UINT("recheck_s", c->fallback.recheck_ms / 1000), CMH_STR("fix", fix));
        }
    } else if (ev == CMH_FALLBACK_BACK) {
        c->round_back++;
        c->back_total++;
        if (cmh_ratelimit_allow(&c->fallback_log))
            CMH_LOG(c->log, CMH_LOG_INFO,
                    "direct scrape connects again; leaving the API server proxy",
                    CMH_STR("target", t->name), CMH_STR("ip", t->ip), CMH_UINT("port", t->port));
    }
    if (ev != CMH_FALLBACK_SWITCHED && ev != CMH_FALLBACK_STAYED)
        return;
    /* The same round, if its deadline leaves a useful amount of time. */
    uint64_t deadline = c->round_start_ms + c->round_timeout_ms;
    uint64_t left = deadline > now ? deadline - now : 0;
    uint64_t timeout = c->scraper.opts.timeout_ms;
    if (left < timeout)
        timeout = left;
    if (c->deadline_passed || timeout < 50)
        return;
    proxy_start(c, i, timeout);
}

static void on_scrape_done(struct cmh_scraper *sc, const struct cmh_scrape_round_stats *st,
                           void *arg)
{
    struct cmh_collector *c = container_of(sc, struct cmh_collector, scraper);
    (void)arg;
    c->direct_stats = *st;
    size_t n = 0;
    const struct cmh_scrape_record *rec = cmh_scraper_records(sc, &n);
    uv_update_time(c->loop);
    uint64_t now = uv_now(c->loop);
    /* Successful scrapes were committed as they ended; the rest wait for the round's end. */
    for (size_t k = 0; k < n; k++) {
        size_t i = c->dmap[k];
        c->rt[i].rec = rec[k];
        c->rt[i].via_proxy = 0;
        c->rt[i].state = 2;
        if (c->mode == CMH_SCRAPE_MODE_AUTO && c->has_proxy && !c->closing && c->in[i].pod != NULL)
            auto_after_direct(c, i, now);
    }
    c->pending--;
    maybe_finish(c);
}

static void on_round_deadline(uv_timer_t *t)
{
    struct cmh_collector *c = container_of(t, struct cmh_collector, round_timer);
    c->deadline_passed = 1;
    if (c->has_proxy && cmh_proxy_scrape_pending(&c->proxy) > 0) {
        CMH_LOG(c->log, CMH_LOG_WARN, "round deadline passed; proxied scrapes cut short",
                CMH_UINT("round", c->agg.round), CMH_UINT("round_timeout_ms", c->round_timeout_ms),
                CMH_UINT("unfinished", cmh_proxy_scrape_pending(&c->proxy)));
        cmh_proxy_scrape_cancel_all(&c->proxy);
    }
}

int cmh_collector_init(struct cmh_collector *c, uv_loop_t *loop, const struct cmh_config *cfg,
                       const char *cluster_id, struct cmh_log *log)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->log = log;
    c->max_line = cfg->prom_max_line;
    c->max_series = 4096;
    c->mode = cfg->scrape_mode;
    cmh_fallback_init(&c->fallback, cfg->scrape_direct_recheck_ms);
    struct cmh_agg_opts ao = {.stale_rounds = (unsigned)cfg->stale_rounds,
                              .max_series = c->max_series,
                              .cluster_id = cluster_id};
    int rc = cmh_agg_init(&c->agg, &ao);
    if (rc != 0)
        return rc;
    struct cmh_scrape_opts so;
    cmh_scrape_opts_from_config(&so, cfg);
    c->round_timeout_ms = so.round_timeout_ms;
    rc = cmh_scraper_init(&c->scraper, loop, &so, log);
    if (rc != 0) {
        cmh_agg_close(&c->agg);
        return rc;
    }
    /* Cannot fail on Linux (libuv only fills the struct in). */
    uv_timer_init(loop, &c->round_timer);
    return 0;
}

int cmh_collector_enable_proxy(struct cmh_collector *c, const struct cmh_proxy_scrape_opts *o)
{
    if (c->has_proxy)
        return -EALREADY;
    struct cmh_proxy_scrape_opts po = *o;
    if (po.timeout_ms == 0)
        po.timeout_ms = c->scraper.opts.timeout_ms;
    if (po.max_body == 0)
        po.max_body = c->scraper.opts.max_body;
    struct cmh_scrape_consumer consumer = {c, on_begin, on_body, on_end};
    int rc = cmh_proxy_scrape_init(&c->proxy, c->loop, &po, &consumer, on_proxy_done, c, c->log);
    if (rc != 0) {
        CMH_LOG(c->log, CMH_LOG_ERROR, "cannot set up scraping through the API server proxy",
                CMH_INT("error", rc));
        return rc;
    }
    c->has_proxy = 1;
    return 0;
}

/* Sizes the per-round arrays for n targets, reusing those of earlier rounds. */
static int reserve(struct cmh_collector *c, size_t n)
{
    if (n <= c->targets_cap)
        return 0;
    struct cmh_scrape_target *v = cmh_reallocarray(c->targets, n, sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    c->targets = v;
    const char **names = cmh_reallocarray(c->names, n, sizeof *names);
    if (names == NULL)
        return -ENOMEM;
    c->names = names;
    struct cmh_collector_route *rt = cmh_reallocarray(c->rt, n, sizeof *rt);
    if (rt == NULL)
        return -ENOMEM;
    c->rt = rt;
    size_t *dmap = cmh_reallocarray(c->dmap, n, sizeof *dmap);
    if (dmap == NULL)
        return -ENOMEM;
    c->dmap = dmap;
    c->targets_cap = n;
    return 0;
}

/* Where every target goes this round: the direct engine's list (address-checked) or the proxy. */
static enum cmh_route route_of(struct cmh_collector *c, const struct cmh_collector_target *t,
                               uint64_t now)
{
    if (!c->has_proxy || t->pod == NULL || c->mode == CMH_SCRAPE_MODE_DIRECT)
        return CMH_ROUTE_DIRECT;
    if (c->mode == CMH_SCRAPE_MODE_PROXY)
        return CMH_ROUTE_PROXY;
    return cmh_fallback_route(&c->fallback, t->name, now);
}

int cmh_collector_round(struct cmh_collector *c, uint64_t round, int64_t start_ms,
                        const struct cmh_collector_target *targets, size_t n,
                        cmh_collector_done_cb done, void *arg)
{
    if (c->active) {
        c->skipped_ticks++;
        CMH_LOG(c->log, CMH_LOG_WARN, "previous round still running; tick skipped",
                CMH_UINT("round", round));
        return -EBUSY;
    }
    if (c->closing)
        return -ESHUTDOWN;
    int rc = reserve(c, n);
    if (rc != 0)
        return rc;
    cmh_agg_round_begin(&c->agg, round, start_ms);
    if (c->mode == CMH_SCRAPE_MODE_AUTO && c->has_proxy &&
        cmh_fallback_round_begin(&c->fallback) != 0)
        CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory pruning the proxy fallback table",
                CMH_UINT("round", round));
    uv_update_time(c->loop);
    uint64_t now = uv_now(c->loop);
    c->in = targets;
    c->nin = n;
    c->round_start_ms = now;
    c->round_start_ns = uv_hrtime();
    c->deadline_passed = 0;
    c->round_proxy = c->round_proxy_ok = c->round_fallbacks = c->round_back = 0;
    cmh_ratelimit_reset(&c->parse_log, 10);
    cmh_ratelimit_reset(&c->proxy_log, 10);
    cmh_ratelimit_reset(&c->fallback_log, 10);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        c->names[i] = targets[i].name;
        memset(&c->rt[i], 0, sizeof c->rt[i]);
        if (route_of(c, &targets[i], now) == CMH_ROUTE_PROXY) {
            c->rt[i].via_proxy = 1;
            continue;
        }
        if (cmh_scrape_target_set(&c->targets[k], targets[i].name, targets[i].ip,
                                  targets[i].port) != 0) {
            /* Not an address: the node fails this round, visibly. */
            CMH_LOG(c->log, CMH_LOG_WARN, "target without a valid IP; not scraped",
                    CMH_STR("target", targets[i].name), CMH_STR("ip", targets[i].ip));
            cmh_agg_fail(&c->agg, targets[i].name);
            continue;
        }
        c->rt[i].state = 1;
        c->dmap[k++] = i;
    }
    c->ntargets = k;
    struct cmh_scrape_consumer consumer = {c, on_begin_direct, on_body, on_end};
    c->done_cb = done;
    c->done_arg = arg;
    rc = cmh_scraper_round(&c->scraper, c->targets, c->ntargets, &consumer, on_scrape_done, NULL);
    if (rc != 0)
        return rc;
    c->active = 1;
    c->pending = 1;
    for (size_t i = 0; i < n; i++) {
        if (!c->rt[i].via_proxy)
            continue;
        if (proxy_start(c, i, 0) != 0) {
            c->rt[i].rec.result = CMH_SCRAPE_CONNECT_ERROR;
            c->rt[i].state = 2;
        }
    }
    if (c->has_proxy)
        uv_timer_start(&c->round_timer, on_round_deadline, c->round_timeout_ms, 0);
    return 0;
}

static void part_closed(struct cmh_collector *c)
{
    if (--c->closing_parts > 0)
        return;
    for (size_t i = 0; i < c->nslots; i++)
        slot_free(c->all_slots[i]);
    cmh_free(c->all_slots);
    cmh_free(c->names);
    cmh_free(c->targets);
    cmh_free(c->rt);
    cmh_free(c->dmap);
    cmh_fallback_free(&c->fallback);
    cmh_agg_close(&c->agg);
    c->all_slots = NULL;
    c->names = NULL;
    c->targets = NULL;
    c->rt = NULL;
    c->dmap = NULL;
    c->nslots = 0;
    c->ntargets = 0;
    c->nin = 0;
    if (c->close_cb != NULL)
        c->close_cb(c);
}

static void on_scraper_closed(struct cmh_scraper *sc)
{
    part_closed(container_of(sc, struct cmh_collector, scraper));
}

static void on_proxy_closed(struct cmh_proxy_scrape *p)
{
    part_closed(container_of(p, struct cmh_collector, proxy));
}

static void on_timer_closed(uv_handle_t *h)
{
    part_closed(container_of((uv_timer_t *)h, struct cmh_collector, round_timer));
}

void cmh_collector_close(struct cmh_collector *c, cmh_collector_close_cb close_cb)
{
    c->close_cb = close_cb;
    c->done_cb = NULL; /* a round cut short by close publishes nothing */
    c->closing = 1;
    c->closing_parts = 2 + (unsigned)c->has_proxy;
    uv_timer_stop(&c->round_timer);
    uv_close((uv_handle_t *)&c->round_timer, on_timer_closed);
    if (c->has_proxy)
        cmh_proxy_scrape_close(&c->proxy, on_proxy_closed);
    cmh_scraper_close(&c->scraper, on_scraper_closed);
}

void cmh_collector_log_round(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                             int datums, const struct cmh_kv *extra, size_t nextra)
{
    const struct cmh_agg *a = &c->agg;
    /* Datums first, then the summary line that closes the round. */
    if (datums)
        for (size_t i = 0; i < a->datums.n; i++)
            cmh_datum_log(c->log, &a->datums.v[i]);
    /* Bounded by the result names; out of memory the field is left empty. */
    struct cmh_buf failures = {0};
    for (int r = 1; r < CMH_SCRAPE_NRESULTS; r++)
        if (st->count[r] > 0)
            cmh_buf_printf(&failures, "%s%s:%zu", cmh_buf_len(&failures) ? "," : "",
                           cmh_scrape_result_name((enum cmh_scrape_result)r), st->count[r]);
    double nan = 0.0 / 0.0;
#define TOTAL(id) ((a->has_total >> (id)) & 1 ? a->totals[(id)] : nan)
    struct cmh_kv kv[32];
    size_t n = 0;
    kv[n++] = CMH_UINT("round", a->last.round);
    kv[n++] = CMH_UINT("targets", a->last.targets);
    kv[n++] = CMH_UINT("fresh", a->last.fresh);
    kv[n++] = CMH_UINT("stale", a->last.stale);
    kv[n++] = CMH_UINT("failed", a->last.failed);
    kv[n++] = CMH_STR("failures", cmh_buf_str(&failures));
    kv[n++] = CMH_DBL("seconds", (double)st->wall_us / 1e6);
    kv[n++] = CMH_UINT("bytes", st->bytes);
    kv[n++] = CMH_UINT("datums", a->datums.n);
    kv[n++] = CMH_DBL("assigned", TOTAL(CMH_M_ASSIGNED_IP));
    kv[n++] = CMH_DBL("total", TOTAL(CMH_M_TOTAL_IP));
    kv[n++] = CMH_DBL("max", TOTAL(CMH_M_IP_MAX));
    kv[n++] = CMH_DBL("available", TOTAL(CMH_M_AVAILABLE_IP));
    kv[n++] = CMH_DBL("utilization_pct", TOTAL(CMH_M_IP_UTILIZATION));
    kv[n++] = CMH_DBL("no_ip_errors", TOTAL(CMH_M_NO_AVAILABLE_IP));
    if (c->has_proxy) {
        kv[n++] = CMH_STR("mode", cmh_scrape_mode_name((enum cmh_scrape_mode)c->mode));
        kv[n++] = CMH_UINT("proxy", c->round_proxy);
        kv[n++] = CMH_UINT("proxy_ok", c->round_proxy_ok);
        kv[n++] = CMH_UINT("fallbacks", c->round_fallbacks);
        kv[n++] = CMH_UINT("on_proxy", c->fallback.n);
    }
    for (size_t i = 0; i < nextra && n < sizeof kv / sizeof kv[0]; i++)
        kv[n++] = extra[i];
    cmh_log_event(c->log, CMH_LOG_INFO, "round", kv, n);
    cmh_buf_free(&failures);
#undef TOTAL
}
