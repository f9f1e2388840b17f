/* The rounds on our own /metrics (http/expose.h parts): the cluster values of the last round
 * (cluster_id label), the counters summed since start, the per-subnet gauges, and the collector's
 * own figures. Owned by the daemon (embedded); thread: the loop thread. */
#ifndef CMH_ROUND_EXPOSE_H
#define CMH_ROUND_EXPOSE_H

#include "cmh/core/buf.h"
#include "cmh/round/aggregate.h"
#include "cmh/round/collector.h"
#include "cmh/round/metrics.h"

struct cmh_round_expose {
    /* public */
    int original_names; /* PROMETHEUS_ORIGINAL_NAMES: the original helper's six gauges too */
    /* read-only */
    double counters[CMH_M_COUNT]; /* the published counter increases, summed since start */
    double lat_sum, lat_count;
    int have_round;
};

/* Adds the finished round's counter increases (a->datums) to the cumulative sums. */
void cmh_round_expose_add(struct cmh_round_expose *e, const struct cmh_agg *a);

/* The cluster values of the last round (a, cluster_id label), the original helper's gauges with
 * original_names, the per-subnet gauges; nothing before the first round. */
void cmh_round_expose_cluster(const struct cmh_round_expose *e, const struct cmh_agg *a,
                              const char *cluster_id, struct cmh_buf *out);

/* The collector's own figures: rounds, scrapes by result, unknown ipamD families, and with the
 * proxy enabled the proxied scrapes and fallbacks. */
void cmh_round_expose_collector(const struct cmh_collector *c, struct cmh_buf *out);

#endif
