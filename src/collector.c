#include "cmh/collector.h"

#include "cmh/alloc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

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
    if (c->nslots == c->slots_cap) {
        size_t cap = c->slots_cap ? c->slots_cap * 2 : 64;
        struct cmh_collector_slot **v = cmh_reallocarray(c->all_slots, cap, sizeof *v);
        if (v == NULL)
            return NULL;
        c->all_slots = v;
        c->slots_cap = cap;
    }
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
    const char *reason = e->code != 0 ? e->reason : s->scratch.reason;
    CMH_LOG(c->log, CMH_LOG_WARN, "scrape discarded", CMH_STR("target", c->names[s->target]),
            CMH_STR("result", "parse_error"), CMH_UINT("line", e->code != 0 ? e->line : 0),
            CMH_STR("reason", reason));
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
    } else if (result == CMH_SCRAPE_PARSE_ERROR) {
        log_refused(c, s);
    }
    slot_put(c, s);
    return rc == 0 ? 0 : -1;
}

static void on_scrape_done(struct cmh_scraper *sc, const struct cmh_scrape_round_stats *st,
                           void *arg)
{
    struct cmh_collector *c = container_of(sc, struct cmh_collector, scraper);
    (void)arg;
    size_t n = 0;
    const struct cmh_scrape_record *rec = cmh_scraper_records(sc, &n);
    /* Successful scrapes were committed as they ended; every other target failed this round. */
    for (size_t i = 0; i < n; i++) {
        c->results_total[rec[i].result]++;
        if (rec[i].result != CMH_SCRAPE_OK && cmh_agg_fail(&c->agg, c->names[i]) != 0)
            CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory recording a failed node",
                    CMH_STR("target", c->names[i]));
    }
    if (cmh_agg_round_finish(&c->agg) != 0)
        CMH_LOG(c->log, CMH_LOG_ERROR, "out of memory finishing the round; datums incomplete",
                CMH_UINT("round", c->agg.round));
    c->rounds_total++;
    c->last_round_seconds = (double)st->wall_us / 1e6;
    c->active = 0;
    if (c->parse_log.suppressed > 0)
        CMH_LOG(c->log, CMH_LOG_WARN, "more scrapes discarded", CMH_UINT("round", c->agg.round),
                CMH_UINT("not_logged", c->parse_log.suppressed));
    if (c->done_cb != NULL)
        c->done_cb(c, st, c->done_arg);
}

int cmh_collector_init(struct cmh_collector *c, uv_loop_t *loop, const struct cmh_config *cfg,
                       const char *cluster_id, struct cmh_log *log)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->log = log;
    c->max_line = cfg->prom_max_line;
    c->max_series = 4096;
    struct cmh_agg_opts ao = {.stale_rounds = (unsigned)cfg->stale_rounds,
                              .max_series = c->max_series,
                              .cluster_id = cluster_id};
    int rc = cmh_agg_init(&c->agg, &ao);
    if (rc != 0)
        return rc;
    struct cmh_scrape_opts so;
    cmh_scrape_opts_from_config(&so, cfg);
    rc = cmh_scraper_init(&c->scraper, loop, &so, log);
    if (rc != 0)
        cmh_agg_close(&c->agg);
    return rc;
}

/* Converts the round's targets for the scrape engine, reusing the arrays of earlier rounds. */
static int set_targets(struct cmh_collector *c, const struct cmh_collector_target *t, size_t n)
{
    if (n > c->targets_cap) {
        struct cmh_scrape_target *v = cmh_reallocarray(c->targets, n, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        c->targets = v;
        const char **names = cmh_reallocarray(c->names, n, sizeof *names);
        if (names == NULL)
            return -ENOMEM;
        c->names = names;
        c->targets_cap = n;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (cmh_scrape_target_set(&c->targets[k], t[i].name, t[i].ip, t[i].port) != 0) {
            /* Not an address: the node fails this round, visibly. */
            CMH_LOG(c->log, CMH_LOG_WARN, "target without a valid IP; not scraped",
                    CMH_STR("target", t[i].name), CMH_STR("ip", t[i].ip));
            cmh_agg_fail(&c->agg, t[i].name);
            continue;
        }
        c->names[k++] = t[i].name;
    }
    c->ntargets = k;
    return 0;
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
    cmh_agg_round_begin(&c->agg, round, start_ms);
    int rc = set_targets(c, targets, n);
    if (rc != 0)
        return rc;
    cmh_ratelimit_reset(&c->parse_log, 10);
    struct cmh_scrape_consumer consumer = {c, on_begin, on_body, on_end};
    c->done_cb = done;
    c->done_arg = arg;
    rc = cmh_scraper_round(&c->scraper, c->targets, c->ntargets, &consumer, on_scrape_done, NULL);
    if (rc == 0)
        c->active = 1;
    return rc;
}

static void on_scraper_closed(struct cmh_scraper *sc)
{
    struct cmh_collector *c = container_of(sc, struct cmh_collector, scraper);
    for (size_t i = 0; i < c->nslots; i++)
        slot_free(c->all_slots[i]);
    cmh_free(c->all_slots);
    cmh_free(c->names);
    cmh_free(c->targets);
    cmh_agg_close(&c->agg);
    c->all_slots = NULL;
    c->nslots = 0;
    c->ntargets = 0;
    if (c->close_cb != NULL)
        c->close_cb(c);
}

void cmh_collector_close(struct cmh_collector *c, cmh_collector_close_cb close_cb)
{
    c->close_cb = close_cb;
    c->done_cb = NULL; /* a round cut short by close publishes nothing */
    cmh_scraper_close(&c->scraper, on_scraper_closed);
}

void cmh_collector_log_round(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                             int datums, const struct cmh_cloudwatch_stats *cw)
{
    const struct cmh_agg *a = &c->agg;
    /* Datums first, then the summary line that closes the round. */
    if (datums)
        for (size_t i = 0; i < a->datums.n; i++)
            cmh_datum_log(c->log, &a->datums.v[i]);
    char failures[512] = "";
    size_t off = 0;
    for (int r = 1; r < CMH_SCRAPE_NRESULTS && off < sizeof failures; r++)
        if (st->count[r] > 0)
            off +=
                (size_t)snprintf(failures + off, sizeof failures - off, "%s%s:%zu", off ? "," : "",
                                 cmh_scrape_result_name((enum cmh_scrape_result)r), st->count[r]);
    double nan = 0.0 / 0.0;
#define TOTAL(id) ((a->has_total >> (id)) & 1 ? a->totals[(id)] : nan)
    struct cmh_kv kv[24];
    size_t n = 0;
    kv[n++] = CMH_UINT("round", a->last.round);
    kv[n++] = CMH_UINT("targets", a->last.targets);
    kv[n++] = CMH_UINT("fresh", a->last.fresh);
    kv[n++] = CMH_UINT("stale", a->last.stale);
    kv[n++] = CMH_UINT("failed", a->last.failed);
    kv[n++] = CMH_STR("failures", failures);
    kv[n++] = CMH_DBL("seconds", (double)st->wall_us / 1e6);
    kv[n++] = CMH_UINT("bytes", st->bytes);
    kv[n++] = CMH_UINT("datums", a->datums.n);
    kv[n++] = CMH_DBL("assigned", TOTAL(CMH_M_ASSIGNED_IP));
    kv[n++] = CMH_DBL("total", TOTAL(CMH_M_TOTAL_IP));
    kv[n++] = CMH_DBL("max", TOTAL(CMH_M_IP_MAX));
    kv[n++] = CMH_DBL("available", TOTAL(CMH_M_AVAILABLE_IP));
    kv[n++] = CMH_DBL("utilization_pct", TOTAL(CMH_M_IP_UTILIZATION));
    kv[n++] = CMH_DBL("no_ip_errors", TOTAL(CMH_M_NO_AVAILABLE_IP));
    if (cw != NULL) {
        kv[n++] = CMH_UINT("cw_published", cw->published);
        kv[n++] = CMH_UINT("cw_queued", cw->in_queue);
        kv[n++] = CMH_UINT("cw_dropped", cw->dropped_overflow + cw->dropped_age +
                                             cw->dropped_invalid + cw->dropped_shutdown);
        if (cw->last_error[0])
            kv[n++] = CMH_STR("cw_last_error", cw->last_error);
    }
    cmh_log_event(c->log, CMH_LOG_INFO, "round", kv, n);
#undef TOTAL
}
