#include "cmh/expose.h"

#include "cmh/log.h"

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
            cmh_buf_append(out, "\\n", 2);
        else
            cmh_buf_append(out, p, 1);
    }
}

static void sample(struct cmh_buf *out, const char *name, const char *suffix, const char *labels,
                   double v)
{
    char num[40];
    cmh_fmt_double(num, sizeof num, v);
    cmh_buf_printf(out, "%s%s%s %s\n", name, suffix, labels, num);
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
                    {"dropped_shutdown", cw->dropped_shutdown}};
    cmh_buf_printf(out, "# HELP " PREFIX "cloudwatch_datums_total Datums by how they ended.\n"
                        "# TYPE " PREFIX "cloudwatch_datums_total counter\n");
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
        cmh_buf_printf(out, PREFIX "cloudwatch_datums_total{outcome=\"%s\"} %llu\n",
                       outcomes[i].outcome, (unsigned long long)outcomes[i].n);
    cmh_buf_printf(out,
                   "# HELP " PREFIX "cloudwatch_queue_datums Datums waiting to be published.\n"
                   "# TYPE " PREFIX "cloudwatch_queue_datums gauge\n" PREFIX
                   "cloudwatch_queue_datums %llu\n",
                   (unsigned long long)cw->in_queue);
    cmh_buf_printf(out, "# HELP " PREFIX "cloudwatch_requests_total PutMetricData attempts by "
                        "outcome class.\n# TYPE " PREFIX "cloudwatch_requests_total counter\n");
    for (int k = 0; k < CMH_CW_CLASS_COUNT; k++)
        cmh_buf_printf(out, PREFIX "cloudwatch_requests_total{class=\"%s\"} %llu\n",
                       cmh_cloudwatch_class_name((enum cmh_cw_class)k),
                       (unsigned long long)cw->attempts[k]);
    cmh_buf_printf(out,
                   "# HELP " PREFIX "cloudwatch_access_denied 1 while CloudWatch answers "
                   "AccessDenied.\n# TYPE " PREFIX "cloudwatch_access_denied gauge\n" PREFIX
                   "cloudwatch_access_denied %d\n",
                   cw->access_denied ? 1 : 0);
}

void cmh_expose_render(const struct cmh_expose *e, const struct cmh_collector *c,
                       const char *cluster_id, const struct cmh_cloudwatch_stats *cw,
                       struct cmh_buf *out)
{
    const struct cmh_agg *a = &c->agg;
    struct cmh_buf lb = {0};
    cmh_buf_append(&lb, "{cluster_id=\"", 13);
    label_value(&lb, cluster_id ? cluster_id : "");
    cmh_buf_append(&lb, "\"}", 3); /* with the NUL */
    const char *labels = lb.data ? lb.data : "";
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

    cmh_buf_printf(out,
                   "# HELP " PREFIX "rounds_total Scrape rounds finished.\n"
                   "# TYPE " PREFIX "rounds_total counter\n" PREFIX "rounds_total %llu\n",
                   (unsigned long long)c->rounds_total);
    cmh_buf_printf(out,
                   "# HELP " PREFIX "rounds_skipped_total Round ticks skipped because the "
                   "previous round was still running.\n"
                   "# TYPE " PREFIX "rounds_skipped_total counter\n" PREFIX
                   "rounds_skipped_total %llu\n",
                   (unsigned long long)c->skipped_ticks);
    cmh_buf_printf(out, "# HELP " PREFIX "round_duration_seconds Wall time of the last round.\n"
                        "# TYPE " PREFIX "round_duration_seconds gauge\n");
    sample(out, PREFIX "round_duration_seconds", "", "", c->last_round_seconds);
    cmh_buf_printf(out, "# HELP " PREFIX "scrapes_total Node scrapes by result.\n"
                        "# TYPE " PREFIX "scrapes_total counter\n");
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++)
        cmh_buf_printf(out, PREFIX "scrapes_total{result=\"%s\"} %llu\n",
                       cmh_scrape_result_name((enum cmh_scrape_result)r),
                       (unsigned long long)c->results_total[r]);
    if (cw != NULL)
        cloudwatch_metrics(cw, out);
    cmh_buf_printf(out,
                   "# HELP " PREFIX "build_info Version of this daemon.\n"
                   "# TYPE " PREFIX "build_info gauge\n" PREFIX "build_info{version=\"%s\"} 1\n",
                   CMH_VERSION);
}
