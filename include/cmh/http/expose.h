/* Our own Prometheus exposition: the cluster aggregates (names prefixed cni_metrics_helper_, so a
 * Prometheus scraping ipamD too never double counts) and the daemon's self-metrics. Owned by the
 * daemon; thread: the loop thread. */
#ifndef CMH_EXPOSE_H
#define CMH_EXPOSE_H

#include "cmh/round/aggregate.h"
#include "cmh/round/collector.h"
#include "cmh/aws/subnet_watch.h"
#include "cmh/http/http_server.h"

/* Cumulative sums of the published counter increases: exposed as Prometheus counters. The
 * daemon's parts outside the collector are set by the daemon as they change. */
struct cmh_expose {
    double counters[CMH_M_COUNT];
    double lat_sum, lat_count;
    int have_round;
    const struct cmh_http_server *http; /* our HTTP server's own errors; NULL: not shown */
    int subnets;                        /* SUBNET_METRICS: the subnet view's fetches are shown */
    int original_names; /* PROMETHEUS_ORIGINAL_NAMES: the original helper's six gauges too */
    unsigned long long subnet_fetches_ok, subnet_fetches_failed;
    size_t subnet_ids_missing;     /* ids of SUBNET_IDS EC2 did not know at the last good fetch */
    double subnet_last_ok;         /* Unix seconds of the last good fetch, 0 when none */
    const char *cluster_id_source; /* where CLUSTER_ID came from (borrowed); NULL: not shown */
    struct cmh_subnet_watch_prefix_status prefix; /* the free /28 count (SUBNET_METRICS) */
};

/* Adds the finished round's counter increases (a->datums) to the cumulative sums. */
void cmh_expose_round(struct cmh_expose *e, const struct cmh_agg *a);

/* Renders text format 0.0.4 into out: cluster values of the last round (cluster_id label), then
 * self-metrics of c and, when cw is not NULL, of the CloudWatch publisher. */
void cmh_expose_render(const struct cmh_expose *e, const struct cmh_collector *c,
                       const char *cluster_id, const struct cmh_cloudwatch_stats *cw,
                       struct cmh_buf *out);

#endif
