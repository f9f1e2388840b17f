/* The metric table: every ipamD family, published (CloudWatch name, unit, aggregation) or ignored
 * with the reason, and the metrics we derive. Static, read-only; thread: any. */
#ifndef CMH_METRICS_H
#define CMH_METRICS_H

#include <stddef.h>
#include <stdio.h>

enum cmh_metric_kind {
    CMH_METRIC_GAUGE_SUM,  /* gauge: per node, sum of its series; cluster: sum over nodes */
    CMH_METRIC_COUNTER,    /* counter: per node, sum of its series' increases; cluster: sum */
    CMH_METRIC_LATENCY,    /* summary: Δsum/Δcount per node, published as a statistic set */
    CMH_METRIC_START_TIME, /* process_start_time_seconds: restart detection, not published */
    CMH_METRIC_DERIVED,    /* computed from other metrics or from the round itself */
    CMH_METRIC_IGNORED,    /* deliberately not published; reason says why */
};

struct cmh_metric {
    const char *family;  /* ipamD family name; NULL for derived metrics */
    const char *cw_name; /* CloudWatch metric name; NULL when ignored */
    enum cmh_metric_kind kind;
    const char *unit;    /* CloudWatch unit */
    const char *meaning; /* what the published number means, or why the family is ignored */
    const char *prom;    /* name on our /metrics, after cni_metrics_helper_cluster_ */
};

/* Metric ids: indices into cmh_metrics[]. Families first (sorted by family name, which the lookup
 * relies on and a test checks), derived metrics after. */
enum cmh_metric_id {
    CMH_M_ADD_IP_REQ,
    CMH_M_ASSIGNED_IP,
    CMH_M_ASSIGNED_IP_PER_CIDR,
    CMH_M_ASSIGNED_IP_PER_ENI,
    CMH_M_AWS_API_ERR,
    CMH_M_AWS_API_LATENCY,
    CMH_M_AWS_UTILS_ERR,
    CMH_M_BUILD_INFO,
    CMH_M_CONNMARK_BACKEND,
    CMH_M_CONNMARK_RECONCILE,
    CMH_M_DEL_IP_REQ,
    CMH_M_EC2API_ERR,
    CMH_M_EC2API_REQ,
    CMH_M_ENI_ALLOCATED,
    CMH_M_ENI_MAX,
    CMH_M_FORCE_REMOVED_ENIS,
    CMH_M_FORCE_REMOVED_IPS,
    CMH_M_IP_MAX,
    CMH_M_IPAMD_ACTION_INPROGRESS,
    CMH_M_IPAMD_ERR,
    CMH_M_IPAMD_NODE_INIT,
    CMH_M_IPAMD_STARTUP,
    CMH_M_NO_AVAILABLE_IP,
    CMH_M_POD_ENI_ERR,
    CMH_M_RECONCILE,
    CMH_M_TOTAL_IP,
    CMH_M_TOTAL_IPV4_PREFIXES,
    CMH_M_PROCESS_START_TIME,
    /* Derived. */
    CMH_M_AVAILABLE_IP,
    CMH_M_IP_UTILIZATION,
    CMH_M_NODES_AT_IP_CAPACITY,
    CMH_M_SCRAPE_TARGETS,
    CMH_M_SCRAPE_FRESH,
    CMH_M_SCRAPE_STALE,
    CMH_M_SCRAPE_FAILED,
    CMH_M_SUBNET_AVAILABLE_IP,
    CMH_M_MIN_SUBNET_AVAILABLE_IP,
    CMH_M_MIN_NODE_AVAILABLE_IP,
    CMH_M_SUBNET_TOTAL_IP,
    CMH_M_SUBNET_IP_UTILIZATION,
    CMH_M_MAX_SUBNET_IP_UTILIZATION,
    CMH_M_SUBNET_TTE,
    CMH_M_MIN_TTE,
    CMH_M_SUBNET_FREE_PREFIXES,
    CMH_M_SUBNET_PREFIX_TTE,
    CMH_M_COUNT
};

/* Number of ipamD families in the table (ids below this have a family name). */
#define CMH_M_FAMILIES (CMH_M_PROCESS_START_TIME + 1)
/* Per-node presence of families is a 32-bit mask. */
_Static_assert(CMH_M_FAMILIES <= 32, "family bitmask too small");

extern const struct cmh_metric cmh_metrics[CMH_M_COUNT];

/* Bits of the aggregator's has_total mask. */
_Static_assert(CMH_M_COUNT <= 64, "has_total bitmask too small");

/* The id of the family named name[0..len), or -1 when it is not in the table. */
int cmh_metric_lookup(const char *name, size_t len);

/* The README's metric section, generated from the table. */
void cmh_metrics_print_markdown(FILE *out);

#endif
