#include "cmh/http/expose.h"

#include "cmh/core/log.h"

#include <string.h>

#define PREFIX "cni_metrics_helper_"

void cmh_expose_round(struct cmh_expose *e, const struct cmh_agg *a)
{
    e->have_round = 1;
    for (int id = 0; id < CMH_M_COUNT; id++) {
        if (!((a->has_total >> id) & 1))
            continue;
        if (cmh_metrics[id].kind == CMH_METRIC_COUNTER)
            e->counters[id] += a->totals[id];
    }
    for (size_t i = 0; i < a->datums.n; i++) {
        const struct cmh_datum *d = &a->datums.v[i];
        if (d->kind == CMH_DATUM_STATS) {
            e->lat_sum += d->sum;
            e->lat_count += d->count;
        }
    }
}

/* Label values are escaped as the text format wants: backslash, quote and newline. */
static void label_value(struct cmh_buf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '"')
            cmh_buf_printf(out, "\\%c", *p);
        else if (*p == '\n')
            cmh_buf_add(out, "\\n", 2);
        else
            cmh_buf_add(out, p, 1);
    }
}

static void sample(struct cmh_buf *out, const char *name, const char *suffix, const char *labels,
                   double v)
{
    char num[40];
    cmh_fmt_double(num, sizeof num, v);
    cmh_buf_printf(out, "%s%s%s %s\n", name, suffix, labels, num);
}

/* The HELP and TYPE lines of a family of ours (name without PREFIX). */
static void family(struct cmh_buf *out, const char *name, const char *type, const char *help)
{
    cmh_buf_printf(out, "# HELP " PREFIX "%s %s\n# TYPE " PREFIX "%s %s\n", name, help, name, type);
}

/* A family of ours with one unlabelled sample. */
static void scalar(struct cmh_buf *out, const char *name, const char *type, const char *help,
                   unsigned long long v)
{
    family(out, name, type, help);
    cmh_buf_printf(out, PREFIX "%s %llu\n", name, v);
}

static void cloudwatch_metrics(const struct cmh_cloudwatch_stats *cw, struct cmh_buf *out)
{
    const struct {
        const char *outcome;
        uint64_t n;
    } outcomes[] = {{"published", cw->published},
                    {"dropped_overflow", cw->dropped_overflow},
                    {"dropped_age", cw->dropped_age},
                    {"dropped_invalid", cw->dropped_invalid},
                    {"dropped_shutdown", cw->dropped_shutdown},
                    {"dropped_not_leader", cw->dropped_not_leader}};
    family(out, "cloudwatch_datums_total", "counter", "Datums by how they ended.");
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
        cmh_buf_printf(out, PREFIX "cloudwatch_datums_total{outcome=\"%s\"} %llu\n",
                       outcomes[i].outcome, (unsigned long long)outcomes[i].n);
    scalar(out, "cloudwatch_queue_datums", "gauge", "Datums waiting to be published.",
           cw->in_queue);
    family(out, "cloudwatch_requests_total", "counter", "PutMetricData attempts by outcome class.");
    for (int k = 0; k < CMH_CW_CLASS_COUNT; k++)
        cmh_buf_printf(out, PREFIX "cloudwatch_requests_total{class=\"%s\"} %llu\n",
                       cmh_cloudwatch_class_name((enum cmh_cw_class)k),
                       (unsigned long long)cw->attempts[k]);
    scalar(out, "cloudwatch_access_denied", "gauge", "1 while CloudWatch answers AccessDenied.",
           cw->access_denied ? 1 : 0);
}

/* SCRAPE_MODE auto or proxy: scrapes through the API server's pod proxy and the fallbacks. */
static void proxy_metrics(const struct cmh_collector *c, struct cmh_buf *out)
{
    family(out, "proxy_scrapes_total", "counter",
           "Node scrapes through the API server's pod proxy by result.");
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
        cmh_buf_printf(out, PREFIX "proxy_scrapes_total{result=\"%s\"} %llu\n",
                       cmh_scrape_result_name((enum cmh_scrape_result)r),
                       (unsigned long long)c->proxy_results_total[r]);
    scalar(out, "proxy_connections_total", "counter",
           "TLS connections opened to the API server for proxied scrapes.",
           c->proxy.stats.connections);
    scalar(out, "scrape_fallbacks_total", "counter",
           "Nodes switched to the proxy after a direct connect failure (SCRAPE_MODE=auto).",
           c->fallbacks_total);
    scalar(out, "scrape_back_to_direct_total", "counter",
           "Nodes back on direct scraping after a re-check connected.", c->back_total);
    scalar(out, "scrape_nodes_on_proxy", "gauge",
           "Nodes scraped through the proxy because direct connects failed.", c->fallback.n);
}

/* The gauges AWS's helper set on its own /metrics with USE_PROMETHEUS (its registry's names and
 * help, unlabelled; the other families it registered never got a value), as sums over the nodes. */
static void original_gauges(const struct cmh_agg *a, struct cmh_buf *out)
{
    static const struct {
        int id;
        const char *help;
    } g[] = {
        {CMH_M_ENI_MAX, "The maximum number of ENIs that can be attached to the instance, "
                        "accounting for unmanaged ENIs"},
        {CMH_M_IP_MAX, "The maximum number of IP addresses that can be allocated to the instance"},
        {CMH_M_ENI_ALLOCATED, "The number of ENIs allocated"},
        {CMH_M_TOTAL_IP, "The total number of IP addresses"},
        {CMH_M_ASSIGNED_IP, "The number of IP addresses assigned to pods"},
        {CMH_M_TOTAL_IPV4_PREFIXES, "The total number of IPv4 prefixes"},
    };
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        const char *name = cmh_metrics[g[i].id].family;
        if (!((a->has_total >> g[i].id) & 1))
            continue;
        cmh_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, g[i].help, name);
        sample(out, name, "", "", a->totals[g[i].id]);
    }
}

/* The per-subnet forecasts and free /28 blocks of the last round, labelled by subnet. */
static void subnet_metrics(const struct cmh_agg *a, const char *cluster_id, struct cmh_buf *out)
{
    static const struct {
        int id;
        const char *name;
    } fams[] = {{CMH_M_SUBNET_TTE, "subnet_time_to_ip_exhaustion_seconds"},
                {CMH_M_SUBNET_FREE_PREFIXES, "subnet_free_ipv4_prefixes"},
                {CMH_M_SUBNET_PREFIX_TTE, "subnet_time_to_prefix_exhaustion_seconds"}};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        const char *cw = cmh_metrics[fams[f].id].cw_name;
        int header = 0;
        for (size_t i = 0; i < a->datums.n; i++) {
            const struct cmh_datum *d = &a->datums.v[i];
            if (d->ndims != 2 || strcmp(d->metric, cw) != 0 ||
                strcmp(d->dims[1].name, "SubnetId") != 0)
                continue;
            if (!header)
                family(out, fams[f].name, "gauge", cmh_metrics[fams[f].id].meaning);
            header = 1;
            cmh_buf_printf(out, PREFIX "%s{cluster_id=\"", fams[f].name);
            label_value(out, cluster_id ? cluster_id : "");
            cmh_buf_add(out, "\",subnet_id=\"", 13);
            label_value(out, d->dims[1].value);
            cmh_buf_add(out, "\"}", 2);
            sample(out, "", "", "", d->value);
        }
    }
}

void cmh_expose_render(const struct cmh_expose *e, const struct cmh_collector *c,
                       const char *cluster_id, const struct cmh_cloudwatch_stats *cw,
                       struct cmh_buf *out)
{
    const struct cmh_agg *a = &c->agg;
    struct cmh_buf lb = {0};
    cmh_buf_add(&lb, "{cluster_id=\"", 13);
    label_value(&lb, cluster_id ? cluster_id : "");
    cmh_buf_add(&lb, "\"}", 2);
    const char *labels = cmh_buf_str(&lb);
    for (int id = 0; id < CMH_M_COUNT && e->have_round; id++) {
        const struct cmh_metric *m = &cmh_metrics[id];
        if (m->prom == NULL)
            continue;
        char name[128];
        snprintf(name, sizeof name, PREFIX "cluster_%s", m->prom);
        if (m->kind == CMH_METRIC_COUNTER) {
            cmh_buf_printf(out,
                           "# HELP %s_total %s (cumulative since start)\n# TYPE %s_total counter\n",
                           name, m->meaning, name);
            sample(out, name, "_total", labels, e->counters[id]);
        } else if (m->kind == CMH_METRIC_LATENCY) {
            /* ipamD measures milliseconds; Prometheus wants base units. */
            cmh_buf_printf(out,
                           "# HELP %s Latency of ipamD's AWS API calls (cumulative since start)\n"
                           "# TYPE %s summary\n",
                           name, name);
            sample(out, name, "_sum", labels, e->lat_sum / 1000.0);
            sample(out, name, "_count", labels, e->lat_count);
        } else if ((a->has_total >> id) & 1) {
            cmh_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, m->meaning, name);
            sample(out, name, "", labels, a->totals[id]);
        }
    }
    cmh_buf_free(&lb);
    if (e->original_names && e->have_round)
        original_gauges(a, out);
    if (e->have_round)
        subnet_metrics(a, cluster_id, out);

    if (e->cluster_id_source != NULL) {
        family(out, "cluster_id_info", "gauge",
               "1, labelled with the CLUSTER_ID dimension and where it came from (AWS_CLUSTER_ID, "
               "ec2-describe-tags:<tag>, aws-node-env, or default: the shared k8s-cluster).");
        struct cmh_buf il = {0};
        cmh_buf_add(&il, "{cluster_id=\"", 13);
        label_value(&il, cluster_id ? cluster_id : "");
        cmh_buf_add(&il, "\",source=\"", 10);
        label_value(&il, e->cluster_id_source);
        cmh_buf_add(&il, "\"}", 2);
        sample(out, PREFIX "cluster_id_info", "", cmh_buf_str(&il), 1);
        cmh_buf_free(&il);
    }

    scalar(out, "rounds_total", "counter", "Scrape rounds finished.", c->rounds_total);
    scalar(out, "rounds_skipped_total", "counter",
           "Round ticks skipped because the previous round was still running.", c->skipped_ticks);
    family(out, "round_duration_seconds", "gauge", "Wall time of the last round.");
    sample(out, PREFIX "round_duration_seconds", "", "", c->last_round_seconds);
    family(out, "scrapes_total", "counter", "Node scrapes by result.");
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
        cmh_buf_printf(out, PREFIX "scrapes_total{result=\"%s\"} %llu\n",
                       cmh_scrape_result_name((enum cmh_scrape_result)r),
                       (unsigned long long)c->results_total[r]);
    scalar(out, "scrape_unknown_families_total", "counter",
           "ipamD families (awscni_*) not in the metric table, once per family and good scrape: "
           "read, not published (a newer VPC CNI?); each name is logged once.",
           a->unknown_total);
    scalar(out, "ipamd_unknown_families", "gauge",
           "Distinct unknown awscni_ family names seen since start, at most 64 (each named once "
           "in the log).",
           a->nunknown);
    if (c->has_proxy)
        proxy_metrics(c, out);
    if (cw != NULL)
        cloudwatch_metrics(cw, out);
    if (e->subnets) {
        family(out, "subnet_fetches_total", "counter",
               "EC2 DescribeSubnets fetches of the subnet view (SUBNET_METRICS) by result.");
        cmh_buf_printf(out, PREFIX "subnet_fetches_total{result=\"ok\"} %llu\n",
                       e->subnet_fetches_ok);
        cmh_buf_printf(out, PREFIX "subnet_fetches_total{result=\"error\"} %llu\n",
                       e->subnet_fetches_failed);
        family(
            out, "subnet_last_success_timestamp_seconds", "gauge",
            "When the subnet view was last fetched; 0 before the first good fetch. Subnet and AZ "
            "datums stop 3 intervals after it.");
        sample(out, PREFIX "subnet_last_success_timestamp_seconds", "", "", e->subnet_last_ok);
        scalar(out, "subnet_ids_missing", "gauge",
               "Subnets of SUBNET_IDS that EC2 did not know (deleted?) at the last good fetch; "
               "left out of the view, each logged once.",
               (unsigned long long)e->subnet_ids_missing);
        family(out, "subnet_prefix_counts_total", "counter",
               "Per-subnet free /28 block counts (DescribeNetworkInterfaces and "
               "GetSubnetCidrReservations) by result; denied with SUBNET_PREFIX_METRICS=auto "
               "stops the count (/readyz says degraded).");
        static const char *const results[] = {"ok", "error", "denied"};
        const unsigned long long n[] = {e->prefix.counts_ok, e->prefix.counts_failed,
                                        e->prefix.counts_denied};
        for (int i = 0; i < 3; i++)
            cmh_buf_printf(out, PREFIX "subnet_prefix_counts_total{result=\"%s\"} %llu\n",
                           results[i], n[i]);
        scalar(out, "subnet_prefix_counting", "gauge",
               "1 while free /28 blocks are counted (SUBNET_PREFIX_METRICS=true, or auto once a "
               "node reported IPv4 prefixes and until a call is denied), else 0.",
               (unsigned long long)(e->prefix.on != 0));
    }
    if (e->http != NULL) {
        scalar(out, "http_accept_errors_total", "counter",
               "Connections to this server that could not be accepted (EMFILE...).",
               e->http->accept_errors);
        scalar(out, "http_requests_rejected_total", "counter",
               "Requests and connections to this server refused: too large, malformed, or over "
               "the connection limit.",
               e->http->rejected);
    }
    if (c->log != NULL)
        scalar(out, "log_lines_lost_total", "counter",
               "Log lines that could not be written (full disk, closed pipe).",
               c->log->write_errors);
    family(out, "build_info", "gauge", "Version of this daemon.");
    cmh_buf_printf(out, PREFIX "build_info{version=\"%s\"} 1\n", CMH_VERSION);
}
