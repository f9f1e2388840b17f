/* The collector runs one round: scrape every target (scrape engine), parse each body as it
 * streams in (prom), commit or fail each node (aggregate), then hands the round's datums to the
 * caller. Owned by the daemon (embedded); thread: the loop thread only. */
#ifndef CMH_COLLECTOR_H
#define CMH_COLLECTOR_H

#include "cmh/round/aggregate.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"
#include "cmh/scrape/prom.h"
#include "cmh/scrape/proxy_scrape.h"
#include "cmh/scrape/scrape.h"
#include "cmh/scrape/scrape_mode.h"

#include <uv.h>

struct cmh_collector;

/* Fires once per round after the aggregator finished it: c->agg.datums and c->agg.last hold the
 * round, st the scrape figures. Never inside cmh_collector_round. */
typedef void (*cmh_collector_done_cb)(struct cmh_collector *c,
                                      const struct cmh_scrape_round_stats *st, void *arg);

typedef void (*cmh_collector_close_cb)(struct cmh_collector *c);

struct cmh_collector_slot; /* private: parser + scratch of one scrape in flight */

/* One target of a round: borrowed until the round's done callback. */
struct cmh_collector_target {
    const char *name; /* node identity for the aggregator */
    const char *ip;   /* IPv4 or IPv6 literal */
    uint16_t port;
    const char *pod; /* the aws-node pod, for the API server proxy; NULL = direct only (static) */
};

/* Where one target of the round stands. */
struct cmh_collector_route {
    struct cmh_scrape_record rec; /* the final record */
    uint8_t state;                /* 0 not scraped (bad address), 1 in progress, 2 done */
    uint8_t via_proxy;            /* the final record came through the proxy */
};

struct cmh_collector {
    /* read-only */
    struct cmh_agg agg; /* the last finished round (a round's done callback may add datums) */
    struct cmh_log *log;
    /* Totals since start, by scrape result: for our own /metrics. */
    uint64_t results_total[CMH_SCRAPE_NRESULTS];
    uint64_t rounds_total;
    uint64_t skipped_ticks;
    double last_round_seconds;
    /* SCRAPE_MODE: the proxy engine (discovered targets only) and the auto fallback state. */
    int mode; /* enum cmh_scrape_mode */
    struct cmh_proxy_scrape proxy;
    int has_proxy;
    struct cmh_fallback fallback;
    /* Totals since start: proxied scrapes by result, switches to the proxy and back. */
    uint64_t proxy_results_total[CMH_SCRAPE_NRESULTS];
    uint64_t fallbacks_total, back_total;
    /* private */
    uv_loop_t *loop;
    struct cmh_scraper scraper;
    struct cmh_scrape_target *targets; /* this round's, converted; capacity reused */
    const char **names;                /* borrowed from the round's caller */
    size_t ntargets, targets_cap;
    struct cmh_collector_slot *free_slots;
    struct cmh_collector_slot **all_slots;
    size_t nslots, slots_cap;
    size_t max_line;
    uint32_t max_series;
    int active;
    cmh_collector_done_cb done_cb;
    void *done_arg;
    struct cmh_ratelimit parse_log;
    int unknown_overflow_logged; /* the warning about unnamed unknown families was written */
    cmh_collector_close_cb close_cb;
    uv_timer_t round_timer; /* the round deadline for proxied scrapes */
    const struct cmh_collector_target *in;
    struct cmh_collector_route *rt; /* per target of the round */
    size_t *dmap;                   /* direct engine index -> round index */
    size_t nin, rt_cap;
    size_t pending; /* the direct round (1 while it runs) + proxied scrapes in flight */
    int deadline_passed, closing;
    unsigned closing_parts;
    uint64_t round_start_ms, round_start_ns, round_timeout_ms;
    struct cmh_scrape_round_stats direct_stats, round_stats;
    struct cmh_ratelimit proxy_log, fallback_log;
    /* This round: scrapes through the proxy (first tries and fallbacks), of them ok, nodes that
     * switched to the proxy, nodes back on direct. */
    size_t round_proxy, round_proxy_ok, round_fallbacks, round_back;
};

/* Sets c up on loop: the scrape engine from cfg (SCRAPE_*), the aggregator (STALE_ROUNDS,
 * AWS_CLUSTER_ID), and the static targets of SCRAPE_TARGETS, resolved once here (start-up may
 * block on DNS). log and cfg are borrowed for c's life. Returns 0, -ENOMEM, or -EINVAL with a
 * logged reason when a target's host cannot be resolved. */
int cmh_collector_init(struct cmh_collector *c, uv_loop_t *loop, const struct cmh_config *cfg,
                       const char *cluster_id, struct cmh_log *log);

/* Scrapes discovered targets (those with a pod) through the API server's pod proxy as
 * SCRAPE_MODE says (auto: after a direct connect failure; proxy: always). Call once after init;
 * o's strings are copied, its timeout and body cap default to the scrape engine's. Without this
 * call every target is scraped directly. Returns 0 or a negative code (logged). */
int cmh_collector_enable_proxy(struct cmh_collector *c, const struct cmh_proxy_scrape_opts *o);

/* Starts round `round` stamped start_ms over targets[0..n) (borrowed until done). done fires when
 * every target has a result; a target scraped directly whose ip is not an IP literal fails the
 * round at once. With the proxy enabled, SCRAPE_MODE=auto retries a node through the proxy in the
 * same round after a direct connect failure (if the round deadline leaves time) and keeps it there
 * until a direct re-check (SCRAPE_DIRECT_RECHECK) connects; one warning per switch names the
 * security-group rule. Returns 0, -EBUSY when the previous round is still running (the tick is
 * skipped and counted), -ESHUTDOWN after close, or -ENOMEM. */
int cmh_collector_round(struct cmh_collector *c, uint64_t round, int64_t start_ms,
                        const struct cmh_collector_target *targets, size_t n,
                        cmh_collector_done_cb done, void *arg);

/* Closes the scrapers (a running round is cut short and its done fires first) and frees
 * everything; close_cb fires when the last handle is closed. */
void cmh_collector_close(struct cmh_collector *c, cmh_collector_close_cb close_cb);

/* Logs the round: with datums != 0 every datum as an event, then the one summary line, which
 * ends with extra[0..nextra) (the caller's figures of the round, e.g. the publisher's; borrowed
 * for the call, at most 8 fields). */
void cmh_collector_log_round(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                             int datums, const struct cmh_kv *extra, size_t nextra);

#endif
