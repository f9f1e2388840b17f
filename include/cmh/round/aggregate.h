/* The aggregator: per-node, per-series state and the round's datums, with exact semantics
 * (README "Aggregation rules"). Pure: no I/O. Owned by the daemon; thread: the loop thread. */
#ifndef CMH_AGGREGATE_H
#define CMH_AGGREGATE_H

#include "cmh/round/datum.h"
#include "cmh/round/metrics.h"
#include "cmh/scrape/prom.h"

#include <stdint.h>

/* One series of a scrape in flight: its identity (metric, suffix, label set) and value. */
struct cmh_agg_series {
    uint64_t key;
    double value;
    uint16_t metric;
    uint8_t suffix;
};

/* An ipamD family the metric table does not know ("awscni_" and not in the table: a newer VPC CNI)
 * is counted and named, never silently dropped. Names kept per scrape, and distinct names kept
 * since start (the rest are counted only); a longer name is kept cut. */
#define CMH_AGG_UNKNOWN_PER_SCRAPE 8
#define CMH_AGG_UNKNOWN_KEPT       64
#define CMH_AGG_UNKNOWN_NAME       128

/* Scratch of one scrape in flight: filled by the parser's callbacks, then committed at once by
 * cmh_agg_commit, or dropped. Reused across scrapes (cmh_agg_scrape_reset keeps the buffers). */
struct cmh_agg_scrape {
    struct cmh_agg_series *series;
    uint32_t n, cap;
    uint32_t max_series;
    double gauge[CMH_M_FAMILIES];
    uint32_t present; /* bit per metric id: the family had a sample of interest */
    double start_time;
    int has_start;
    double q_min, q_max; /* over finite quantile values of the latency summary */
    int has_q;
    /* The family of the previous sample, to skip the lookup on the next one. */
    char fam[128];
    size_t fam_len;
    int fam_id;
    char reason[256]; /* why the scrape was refused by the aggregator */
    uint32_t unknown; /* unknown families in this body */
    char unknown_names[CMH_AGG_UNKNOWN_PER_SCRAPE][CMH_AGG_UNKNOWN_NAME];
};

struct cmh_agg_opts {
    unsigned stale_rounds;  /* STALE_ROUNDS */
    uint32_t max_series;    /* series of interest per node; more is an error */
    const char *cluster_id; /* the CLUSTER_ID dimension; copied */
};

/* Counts of the last finished round. */
struct cmh_agg_round {
    uint64_t round;
    int64_t start_ms;
    uint32_t targets, fresh, stale, failed;
};

struct cmh_agg_node; /* private */

struct cmh_agg {
    /* public */
    uint32_t
        unknown_logged; /* unknown_names[0..unknown_logged) are logged: the caller advances it */
    /* read-only */
    char *cluster_id;
    uint64_t round;
    int64_t start_ms;
    struct cmh_agg_round last;
    struct cmh_datum_list datums;
    double totals[CMH_M_COUNT]; /* the last round's cluster values, by metric id */
    uint64_t has_total;         /* bit i: totals[i] was published */
    /* Unknown families of committed scrapes: once per family and scrape (cumulative); distinct
     * names since start, the first CMH_AGG_UNKNOWN_KEPT of them in unknown_names (the caller logs
     * names[unknown_logged..) and advances it), the others counted in unknown_untracked. */
    uint64_t unknown_total;
    uint32_t nunknown;
    uint64_t unknown_untracked;
    char unknown_names[CMH_AGG_UNKNOWN_KEPT][CMH_AGG_UNKNOWN_NAME];
    /* private */
    struct cmh_agg_opts opt;
    struct cmh_agg_node **slots; /* open addressing by name */
    uint32_t slots_cap;
    struct cmh_agg_node **order; /* every node, sorted by name when sorted != 0 */
    uint32_t nnodes, order_cap;
    int sorted;
    int64_t prev_start_ms;
    uint64_t rounds_finished;
};

int cmh_agg_init(struct cmh_agg *a, const struct cmh_agg_opts *opt);
void cmh_agg_close(struct cmh_agg *a);

int cmh_agg_scrape_init(struct cmh_agg_scrape *s, uint32_t max_series);
void cmh_agg_scrape_reset(struct cmh_agg_scrape *s);
void cmh_agg_scrape_close(struct cmh_agg_scrape *s);

/* Options for a parser that feeds s. */
void cmh_agg_prom_options(struct cmh_prom_options *o, struct cmh_agg_scrape *s);

/* Starts round `round` (1-based, increasing) whose datums carry start_ms. */
void cmh_agg_round_begin(struct cmh_agg *a, uint64_t round, int64_t start_ms);
/* Commits node's complete, successful scrape atomically. Returns 0; -EINVAL when the scrape holds
 * the same series twice (then nothing changes and the node counts as failed, reason in s);
 * -ENOMEM when memory ran out (nothing changes, the node counts as failed). */
int cmh_agg_commit(struct cmh_agg *a, const char *node, struct cmh_agg_scrape *s);
/* Records that node was a target of the round and its scrape failed (or was partial). */
int cmh_agg_fail(struct cmh_agg *a, const char *node);
/* Ends the round: nodes that were not targets are forgotten; the datums (valid until the next
 * finish or close) are in a->datums, the counts in a->last. Returns 0 or -ENOMEM. */
int cmh_agg_round_finish(struct cmh_agg *a);

/* A node as the last finished round saw it. */
struct cmh_agg_node_info {
    const char *name; /* valid until the next round finishes */
    int fresh;        /* its scrape succeeded in the round */
    int counted;      /* its gauges are in the round's sums (fresh, or stale within STALE_ROUNDS) */
    uint32_t present; /* families of its last good scrape, bit per metric id */
    double assigned, total, max, eni_allocated, eni_max; /* 0 when the family was absent */
};

/* Nodes of the last finished round, in name order: i in [0, cmh_agg_nodes(a)). */
size_t cmh_agg_nodes(const struct cmh_agg *a);
void cmh_agg_node_info(const struct cmh_agg *a, size_t i, struct cmh_agg_node_info *out);

/* Appends one more datum of metric id to the round (after finish): the CLUSTER_ID dimension, then
 * extra[0..nextra) (strings borrowed until the next finish). With nextra 0 it is also recorded
 * as the metric's cluster total. Returns 0, -EINVAL (too many dimensions) or -ENOMEM. */
int cmh_agg_emit(struct cmh_agg *a, int id, double value, const struct cmh_dim *extra,
                 unsigned nextra);

#endif
