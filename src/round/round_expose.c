#include "cmh/round/round_expose.h"

#include "cmh/http/expose.h"

#include <stdio.h>
#include <string.h>

#define PREFIX CMH_EXPOSE_PREFIX

void cmh_round_expose_add(struct cmh_round_expose *e, const struct cmh_agg *a)
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
        cmh_expose_sample(out, name, "", "", a->totals[g[i].id]);
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
                cmh_expose_family(out, fams[f].name, "gauge", cmh_metrics[fams[f].id].meaning);
            header = 1;
            cmh_buf_printf(out, PREFIX "%s{cluster_id=\"", fams[f].name);
            cmh_expose_label_value(out, cluster_id ? cluster_id : "");
            cmh_buf_add(out, "\",subnet_id=\"", 13);
            cmh_expose_label_value(out, d->dims[1].value);
            cmh_buf_add(out, "\"}", 2);
            cmh_expose_sample(out, "", "", "", d->value);
        }
    }
}

void cmh_round_expose_cluster(const struct cmh_round_expose *e, const struct cmh_agg *a,
                              const char *cluster_id, struct cmh_buf *out)
{
    if (!e->have_round)
        return;
    struct cmh_buf lb = {0};
    cmh_buf_add(&lb, "{cluster_id=\"", 13);
    cmh_expose_label_value(&lb, cluster_id ? cluster_id : "");
    cmh_buf_add(&lb, "\"}", 2);
    const char *labels = cmh_buf_str(&lb);
    for (int id = 0; id < CMH_M_COUNT; id++) {
        const struct cmh_metric *m = &cmh_metrics[id];
        if (m->prom == NULL)
            continue;
        char name[128];
        snprintf(name, sizeof name, PREFIX "cluster_%s", m->prom);
        if (m->kind == CMH_METRIC_COUNTER) {
            cmh_buf_printf(out,
                           "# HELP %s_total %s (cumulative since start)\n# TYPE %s_total counter\n",
                           name, m->meaning, name);
            cmh_expose_sample(out, name, "_total", labels, e->counters[id]);
        } else if (m->kind == CMH_METRIC_LATENCY) {
            /* ipamD measures milliseconds; Prometheus wants base units. */
            cmh_buf_printf(out,
                           "# HELP %s Latency of ipamD's AWS API calls (cumulative since start)\n"
                           "# TYPE %s summary\n",
                           name, name);
            cmh_expose_sample(out, name, "_sum", labels, e->lat_sum / 1000.0);
            cmh_expose_sample(out, name, "_count", labels, e->lat_count);
        } else if ((a->has_total >> id) & 1) {
            cmh_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, m->meaning, name);
            cmh_expose_sample(out, name, "", labels, a->totals[id]);
        }
    }
    cmh_buf_free(&lb);
    if (e->original_names)
        original_gauges(a, out);
    subnet_metrics(a, cluster_id, out);
}

/* SCRAPE_MODE auto or proxy: scrapes through the API server's pod proxy and the fallbacks. */
static void proxy_metrics(const struct cmh_collector *c, struct cmh_buf *out)
{
    cmh_expose_family(out, "proxy_scrapes_total", "counter",
                      "Node scrapes through the API server's pod proxy by result.");
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
        cmh_buf_printf(out, PREFIX "proxy_scrapes_total{result=\"%s\"} %llu\n",
                       cmh_scrape_result_name((enum cmh_scrape_result)r),
                       (unsigned long long)c->proxy_results_total[r]);
    cmh_expose_scalar(out, "proxy_connections_total", "counter",
                      "TLS connections opened to the API server for proxied scrapes.",
                      c->proxy.stats.connections);
    cmh_expose_scalar(
        out, "scrape_fallbacks_total", "counter",
        "Nodes switched to the proxy after a direct connect failure (SCRAPE_MODE=auto).",
        c->fallbacks_total);
    cmh_expose_scalar(out, "scrape_back_to_direct_total", "counter",
                      "Nodes back on direct scraping after a re-check connected.", c->back_total);
    cmh_expose_scalar(out, "scrape_nodes_on_proxy", "gauge",
                      "Nodes scraped through the proxy because direct connects failed.",
                      c->fallback.n);
}

void cmh_round_expose_collector(const struct cmh_collector *c, struct cmh_buf *out)
{
    const struct cmh_agg *a = &c->agg;
    cmh_expose_scalar(out, "rounds_total", "counter", "Scrape rounds finished.", c->rounds_total);
    cmh_expose_scalar(out, "rounds_skipped_total", "counter",
                      "Round ticks skipped because the previous round was still running.",
                      c->skipped_ticks);
    cmh_expose_family(out, "round_duration_seconds", "gauge", "Wall time of the last round.");
    cmh_expose_sample(out, PREFIX "round_duration_seconds", "", "", c->last_round_seconds);
    cmh_expose_family(out, "scrapes_total", "counter", "Node scrapes by result.");
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
        cmh_buf_printf(out, PREFIX "scrapes_total{result=\"%s\"} %llu\n",
                       cmh_scrape_result_name((enum cmh_scrape_result)r),
                       (unsigned long long)c->results_total[r]);
    cmh_expose_scalar(out, "scrape_unknown_families_total", "counter",
                      "ipamD families (awscni_*) not in the metric table, once per family and "
                      "good scrape: read, not published (a newer VPC CNI?); each name is logged "
                      "once.",
                      a->unknown_total);
    cmh_expose_scalar(out, "ipamd_unknown_families", "gauge",
                      "Distinct unknown awscni_ family names seen since start, at most 64 (each "
                      "named once in the log).",
                      a->nunknown);
    if (c->has_proxy)
        proxy_metrics(c, out);
}
