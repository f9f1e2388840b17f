/* `cni-metrics-helper report`: one round, nothing published, a table or JSON for people and cron
 * jobs. Reuses the daemon's pieces: discovery's pod-list parser and target-set builder (one list,
 * no watch), the collector (scrape, parse, aggregate) and the EC2 watch (one fetch). */
#include "cmh/cmd/report.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/round/collector.h"
#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/discovery.h"
#include "cmh/aws/subnet_watch.h"
#include "cmh/round/forecast.h"
#include "cmh/k8s/access.h"
#include "cmh/k8s/api.h"
#include "cmh/core/log.h"
#include "cmh/round/subnets.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long the whole report may take before it gives up (exit 1). */
#define REPORT_DEADLINE_MS 120000

struct report {
    uv_loop_t loop;
    struct cmh_log log;
    struct cmh_config cfg;
    int json;
    struct cmh_curl_uv curl;
    int has_curl;
    /* The one pod list (paginated): discovery's parser and target-set builder. */
    struct cmh_k8s_api api; /* set up when there is an API server */
    int has_api;
    char *cont;
    struct cmh_k8s_access access; /* outside a pod: the kubeconfig's server, token and CA */
    struct cmh_k8s_api_req list_req;
    int list_in_flight;
    struct cmh_discovery_pods pods;
    struct cmh_collector coll;
    int has_coll;
    struct cmh_subnet_watch *watch;
    uv_timer_t deadline;
    /* The round's targets. */
    struct cmh_collector_target *targets;
    char **strs; /* names and IPs we own */
    size_t n, nstrs;
    int scraped, fetched, finished;
    int fetch_rc;
    char fetch_why[512];
    /* REPORT_MIN_TIME_TO_EXHAUSTION: good fetches sampled for the forecast. */
    unsigned good_fetches;
    uint64_t first_ok_ms;
    uint64_t deadline_ms;
    int status;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *keep(struct report *r, const char *s)
{
    char **v = cmh_reallocarray(r->strs, r->nstrs + 1, sizeof *v);
    if (v == NULL)
        return NULL;
    r->strs = v;
    v[r->nstrs] = cmh_strdup(s);
    return v[r->nstrs] != NULL ? v[r->nstrs++] : NULL;
}

/* ---- the output -------------------------------------------------------------------------- */

struct node_row {
    struct cmh_agg_node_info ni;
    int has_max; /* its scrape had awscni_ip_max: headroom is known */
    const char *ip;
    const char *az;
    const char *subnet;
};

/* 0: headroom known; 1: scraped, but without awscni_ip_max (unknown is not exhausted); 2: failed.
 */
static int row_rank(const struct node_row *r)
{
    return !r->ni.fresh ? 2 : !r->has_max ? 1 : 0;
}

static int cmp_row(const void *x, const void *y)
{
    const struct node_row *a = x, *b = y;
    /* The least headroom first; nodes of unknown capacity after them, failed ones last; then by
     * name. */
    int ka = row_rank(a), kb = row_rank(b);
    if (ka != kb)
        return ka < kb ? -1 : 1;
    double ra = a->ni.max - a->ni.assigned, rb = b->ni.max - b->ni.assigned;
    if (ka == 0 && ra != rb)
        return ra < rb ? -1 : 1;
    return strcmp(a->ni.name, b->ni.name);
}

/* A forecast for people: "-" without one, ">7d" at the ceiling, else seconds to days. */
static void runs_out_in(const struct cmh_subnet *s, char *buf, size_t len)
{
    if (!s->has_tte)
        snprintf(buf, len, "-");
    else if (s->tte_s >= CMH_FORECAST_CAP_S)
        snprintf(buf, len, ">7d");
    else if (s->tte_s < 120)
        snprintf(buf, len, "%.0fs", s->tte_s);
    else if (s->tte_s < 7200)
        snprintf(buf, len, "%.0fm", s->tte_s / 60);
    else if (s->tte_s < 172800)
        snprintf(buf, len, "%.1fh", s->tte_s / 3600);
    else
        snprintf(buf, len, "%.1fd", s->tte_s / 86400);
}

static int cmp_subnet_free(const void *x, const void *y)
{
    const struct cmh_subnet *a = *(const struct cmh_subnet *const *)x;
    const struct cmh_subnet *b = *(const struct cmh_subnet *const *)y;
    if (a->available != b->available)
        return a->available < b->available ? -1 : 1;
    return strcmp(a->id, b->id);
}

struct az_row {
    const char *az;
    int64_t free_ips;
    size_t subnets, nodes;
    double assigned, max;
};

static int cmp_az(const void *x, const void *y)
{
    const struct az_row *a = x, *b = y;
    if (a->free_ips != b->free_ips)
        return a->free_ips < b->free_ips ? -1 : 1;
    return strcmp(a->az, b->az);
}

static const char *ip_of(const struct report *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->targets[i].name, name) == 0)
            return r->targets[i].ip;
    return "";
}

static void emit_report(struct report *r)
{
    const struct cmh_agg *a = &r->coll.agg;
    size_t nn = cmh_agg_nodes(a);
    struct node_row *rows = cmh_calloc(nn ? nn : 1, sizeof *rows);
    struct cmh_subnets_node *sn = cmh_calloc(r->n ? r->n : 1, sizeof *sn);
    const struct cmh_subnet **subs = NULL;
    struct az_row *azs = NULL;
    json_t *root = NULL;
    if (rows == NULL || sn == NULL) {
        fprintf(stderr, "cni-metrics-helper report: out of memory\n");
        r->status = CMH_REPORT_ERROR;
        goto out;
    }
    for (size_t i = 0; i < r->n; i++)
        sn[i] = (struct cmh_subnets_node){r->targets[i].name, r->targets[i].ip};
    const struct cmh_subnet_list *view =
        r->watch != NULL && r->fetch_rc == 0 ? cmh_subnet_watch_view(r->watch, sn, r->n) : NULL;

    /* Nodes, with their subnet and AZ when known. */
    size_t fresh = 0, failed = 0, unknown_max = 0;
    double min_room = 0;
    int has_min_room = 0;
    for (size_t i = 0; i < nn; i++) {
        cmh_agg_node_info(a, i, &rows[i].ni);
        rows[i].has_max = rows[i].ni.fresh && ((rows[i].ni.present >> CMH_M_IP_MAX) & 1);
        rows[i].ip = ip_of(r, rows[i].ni.name);
        rows[i].az = view != NULL ? CMH_SUBNETS_AZ_UNKNOWN : "";
        rows[i].subnet = "";
        long s = view != NULL ? cmh_subnets_find_ip(view, rows[i].ip) : -1;
        if (s >= 0) {
            rows[i].az = view->v[s].az;
            rows[i].subnet = view->v[s].id;
        }
        if (rows[i].has_max) {
            double room = rows[i].ni.max - rows[i].ni.assigned;
            if (!has_min_room || room < min_room)
                min_room = room;
            has_min_room = 1;
        }
        fresh += rows[i].ni.fresh != 0;
        failed += rows[i].ni.fresh == 0;
        unknown_max += rows[i].ni.fresh && !rows[i].has_max;
    }
    qsort(rows, nn, sizeof *rows, cmp_row);

    /* Subnets, emptiest first, and AZs. */
    size_t nsub = view != NULL ? view->n : 0, naz = 0;
    subs = cmh_calloc(nsub + 1, sizeof *subs);
    azs = cmh_calloc(nsub + 2, sizeof *azs);
    if (subs == NULL || azs == NULL) {
        r->status = CMH_REPORT_ERROR;
        goto out;
    }
    for (size_t i = 0; i < nsub; i++) {
        subs[i] = &view->v[i];
        size_t z = 0;
        while (z < naz && strcmp(azs[z].az, view->v[i].az) != 0)
            z++;
        if (z == naz)
            azs[naz++] = (struct az_row){.az = view->v[i].az};
        azs[z].free_ips += view->v[i].available;
        azs[z].subnets++;
    }
    if (view != NULL)
        for (size_t i = 0; i < nn; i++) {
            if (!rows[i].ni.fresh)
                continue;
            size_t z = 0;
            while (z < naz && strcmp(azs[z].az, rows[i].az) != 0)
                z++;
            if (z == naz)
                azs[naz++] = (struct az_row){.az = rows[i].az};
            azs[z].nodes++;
            azs[z].assigned += rows[i].ni.assigned;
            azs[z].max += rows[i].ni.max;
        }
    qsort(subs, nsub, sizeof *subs, cmp_subnet_free);
    qsort(azs, naz, sizeof *azs, cmp_az);

    /* The cluster, and the verdict. Headroom and utilization count only the nodes whose capacity
     * is known: a node without awscni_ip_max would otherwise look full. */
    double assigned = 0, total = 0, max = 0, known_assigned = 0;
    for (size_t i = 0; i < nn; i++)
        if (rows[i].ni.fresh) {
            assigned += rows[i].ni.assigned;
            total += rows[i].ni.total;
        }
    for (size_t i = 0; i < nn; i++)
        if (rows[i].has_max) {
            max += rows[i].ni.max;
            known_assigned += rows[i].ni.assigned;
        }
    double util = max > 0 ? 100.0 * known_assigned / max : 0;
    double headroom = max - known_assigned;
    int has_headroom = has_min_room; /* some node's capacity is known */
    char reasons[4][256];
    size_t nreasons = 0;
    uint64_t min_free = r->cfg.report_min_free_ips, max_util = r->cfg.report_max_utilization;
    /* No free IP at all crosses the line whatever REPORT_MIN_FREE_IPS says (0 included). */
    double floor_ips = min_free > 0 ? (double)min_free : 1;
    if (max_util < 100 && max > 0 && util > (double)max_util)
        snprintf(reasons[nreasons++], sizeof reasons[0],
                 "cluster IP utilization %.1f%% is above REPORT_MAX_UTILIZATION=%llu%%", util,
                 (unsigned long long)max_util);
    if (has_headroom && headroom < floor_ips)
        snprintf(reasons[nreasons++], sizeof reasons[0],
                 min_free > 0 ? "cluster headroom %.0f IPs is below REPORT_MIN_FREE_IPS=%llu"
                              : "cluster headroom %.0f IPs: no node can take another pod IP "
                                "(REPORT_MIN_FREE_IPS=%llu)",
                 headroom, (unsigned long long)min_free);
    if (nsub > 0 && (double)subs[0]->available < floor_ips)
        snprintf(reasons[nreasons++], sizeof reasons[0],
                 min_free > 0 ? "subnet %s (%s) has %lld free IPs, below REPORT_MIN_FREE_IPS=%llu"
                              : "subnet %s (%s) has %lld free IPs: exhausted "
                                "(REPORT_MIN_FREE_IPS=%llu)",
                 subs[0]->id, subs[0]->az, (long long)subs[0]->available,
                 (unsigned long long)min_free);
    uint64_t min_tte_ms = r->cfg.report_min_tte_ms;
    for (size_t i = 0; i < nsub && min_tte_ms > 0 && nreasons < 4; i++) {
        if (subs[i]->has_tte && subs[i]->tte_s * 1000.0 < (double)min_tte_ms) {
            char when[32];
            runs_out_in(subs[i], when, sizeof when);
            snprintf(reasons[nreasons++], sizeof reasons[0],
                     "subnet %s (%s) runs out of IPs in %s, within "
                     "REPORT_MIN_TIME_TO_EXHAUSTION=%llus",
                     subs[i]->id, subs[i]->az, when, (unsigned long long)(min_tte_ms / 1000));
            break;
        }
    }
    const char *problem = NULL;
    if (nn == 0)
        problem = "no scrape target";
    else if (fresh == 0)
        problem = "every scrape failed";
    else if (r->cfg.subnet_metrics && view == NULL)
        problem = r->fetch_why[0] ? r->fetch_why : "no subnet view";
    r->status = problem != NULL ? CMH_REPORT_ERROR
                : nreasons > 0  ? CMH_REPORT_THRESHOLD
                                : CMH_REPORT_HEALTHY;
    const char *verdict = problem != NULL ? "error"
                          : nreasons > 0  ? "threshold_crossed"
                                          : "healthy";

    if (r->json) {
        root = json_object();
        json_t *cl = json_object(), *jn = json_array(), *js = json_array(), *ja = json_array(),
               *jr = json_array();
        json_object_set_new(root, "status", json_string(verdict));
        json_object_set_new(root, "exit_code", json_integer(r->status));
        if (problem != NULL)
            json_object_set_new(root, "error", json_string(problem));
        for (size_t i = 0; i < nreasons; i++)
            json_array_append_new(jr, json_string(reasons[i]));
        json_object_set_new(root, "thresholds_crossed", jr);
        json_object_set_new(cl, "cluster_id", json_string(a->cluster_id));
        json_object_set_new(cl, "nodes", json_integer((json_int_t)nn));
        json_object_set_new(cl, "nodes_fresh", json_integer((json_int_t)fresh));
        json_object_set_new(cl, "nodes_failed", json_integer((json_int_t)failed));
        json_object_set_new(cl, "assigned", json_real(assigned));
        json_object_set_new(cl, "total", json_real(total));
        json_object_set_new(cl, "max", json_real(max));
        json_object_set_new(cl, "available", json_real(total - assigned));
        json_object_set_new(cl, "headroom", has_headroom ? json_real(headroom) : json_null());
        json_object_set_new(cl, "utilization_pct", json_real(util));
        json_object_set_new(cl, "nodes_max_unknown", json_integer((json_int_t)unknown_max));
        if (has_min_room)
            json_object_set_new(cl, "min_node_headroom", json_real(min_room));
        if (nsub > 0)
            json_object_set_new(cl, "min_subnet_free", json_integer(subs[0]->available));
        json_object_set_new(cl, "report_min_free_ips", json_integer((json_int_t)min_free));
        json_object_set_new(cl, "report_max_utilization", json_integer((json_int_t)max_util));
        json_object_set_new(root, "cluster", cl);
        for (size_t i = 0; i < nn; i++) {
            const struct node_row *x = &rows[i];
            json_t *o = json_object();
            json_object_set_new(o, "node", json_string(x->ni.name));
            json_object_set_new(o, "ip", json_string(x->ip));
            json_object_set_new(o, "scrape", json_string(x->ni.fresh ? "ok" : "failed"));
            if (x->ni.fresh) {
                json_object_set_new(o, "assigned", json_real(x->ni.assigned));
                json_object_set_new(o, "total", json_real(x->ni.total));
                json_object_set_new(o, "max", x->has_max ? json_real(x->ni.max) : json_null());
                json_object_set_new(o, "enis", json_real(x->ni.eni_allocated));
                json_object_set_new(o, "enis_max", json_real(x->ni.eni_max));
                json_object_set_new(o, "free_warm", json_real(x->ni.total - x->ni.assigned));
                json_object_set_new(o, "headroom",
                                    x->has_max ? json_real(x->ni.max - x->ni.assigned)
                                               : json_null());
            }
            if (view != NULL) {
                json_object_set_new(o, "availability_zone", json_string(x->az));
                json_object_set_new(o, "subnet", json_string(x->subnet));
            }
            json_array_append_new(jn, o);
        }
        json_object_set_new(root, "nodes", jn);
        for (size_t i = 0; i < nsub; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "subnet", json_string(subs[i]->id));
            json_object_set_new(o, "availability_zone", json_string(subs[i]->az));
            json_object_set_new(o, "cidr", json_string(subs[i]->cidr));
            json_object_set_new(o, "free_ips", json_integer(subs[i]->available));
            json_object_set_new(o, "time_to_exhaustion_s",
                                subs[i]->has_tte ? json_real(subs[i]->tte_s) : json_null());
            json_array_append_new(js, o);
        }
        json_object_set_new(root, "subnets", js);
        for (size_t i = 0; i < naz; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "availability_zone", json_string(azs[i].az));
            json_object_set_new(o, "free_ips", json_integer(azs[i].free_ips));
            json_object_set_new(o, "subnets", json_integer((json_int_t)azs[i].subnets));
            json_object_set_new(o, "nodes", json_integer((json_int_t)azs[i].nodes));
            json_object_set_new(o, "assigned", json_real(azs[i].assigned));
            json_object_set_new(o, "max", json_real(azs[i].max));
            json_array_append_new(ja, o);
        }
        json_object_set_new(root, "availability_zones", ja);
        char *text =
            json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
        if (text == NULL) {
            r->status = CMH_REPORT_ERROR;
            goto out;
        }
        printf("%s\n", text);
        free(text); /* jansson allocates with malloc unless told otherwise */
        goto out;
    }

    /* Columns as wide as their longest value. */
    int nw = 4, iw = 2, aw = view != NULL ? 2 : 0;
    for (size_t i = 0; i < nn; i++) {
        nw = (int)strlen(rows[i].ni.name) > nw ? (int)strlen(rows[i].ni.name) : nw;
        iw = (int)strlen(rows[i].ip) > iw ? (int)strlen(rows[i].ip) : iw;
        aw = (int)strlen(rows[i].az) > aw ? (int)strlen(rows[i].az) : aw;
    }
    printf("Nodes (%zu: %zu scraped, %zu failed), least headroom first:\n", nn, fresh, failed);
    printf("  %-*s %-*s %-*s %8s %8s %8s %6s %7s %9s %8s\n", nw, "NODE", iw, "IP", aw,
           view != NULL ? "AZ" : "", "ASSIGNED", "TOTAL", "MAX", "ENIS", "ENI MAX", "FREE WARM",
           "HEADROOM");
    for (size_t i = 0; i < nn; i++) {
        const struct node_row *x = &rows[i];
        if (!x->ni.fresh) {
            printf("  %-*s %-*s %-*s %s\n", nw, x->ni.name, iw, x->ip, aw, x->az, "scrape failed");
            continue;
        }
        /* Unknown capacity is shown as "?", never as a number that looks like exhaustion. */
        char mx[32] = "?", room[32] = "?";
        if (x->has_max) {
            snprintf(mx, sizeof mx, "%.0f", x->ni.max);
            snprintf(room, sizeof room, "%.0f", x->ni.max - x->ni.assigned);
        }
        printf("  %-*s %-*s %-*s %8.0f %8.0f %8s %6.0f %7.0f %9.0f %8s\n", nw, x->ni.name, iw,
               x->ip, aw, x->az, x->ni.assigned, x->ni.total, mx, x->ni.eni_allocated,
               x->ni.eni_max, x->ni.total - x->ni.assigned, room);
    }
    if (view != NULL) {
        printf("\nSubnets (%zu), emptiest first:\n  %-26s %-14s %-20s %10s %12s\n", nsub, "SUBNET",
               "AZ", "CIDR", "FREE IPS", "RUNS OUT IN");
        for (size_t i = 0; i < nsub; i++) {
            char when[32];
            runs_out_in(subs[i], when, sizeof when);
            printf("  %-26s %-14s %-20s %10lld %12s\n", subs[i]->id, subs[i]->az, subs[i]->cidr,
                   (long long)subs[i]->available, when);
        }
        printf("\nAvailability zones, emptiest first:\n  %-14s %10s %8s %6s %9s %9s\n", "AZ",
               "FREE IPS", "SUBNETS", "NODES", "ASSIGNED", "MAX");
        for (size_t i = 0; i < naz; i++)
            printf("  %-14s %10lld %8zu %6zu %9.0f %9.0f\n", azs[i].az, (long long)azs[i].free_ips,
                   azs[i].subnets, azs[i].nodes, azs[i].assigned, azs[i].max);
    }
    printf("\nCluster %s: %.0f assigned, %.0f in warm pools, %.0f max; %.0f free warm, ",
           a->cluster_id, assigned, total, max, total - assigned);
    if (has_headroom)
        printf("%.0f headroom, utilization %.1f%%", headroom, util);
    else
        printf("headroom unknown");
    if (unknown_max > 0)
        printf(" (%zu node%s without awscni_ip_max left out)", unknown_max,
               unknown_max == 1 ? "" : "s");
    if (has_min_room)
        printf("; node closest to running out has %.0f", min_room);
    if (nsub > 0)
        printf("; emptiest subnet has %lld free", (long long)subs[0]->available);
    printf(".\n");
    if (problem != NULL)
        printf("ERROR: %s\n", problem);
    for (size_t i = 0; i < nreasons; i++)
        printf("THRESHOLD: %s\n", reasons[i]);
    if (problem == NULL && nreasons == 0)
        printf("Healthy (REPORT_MIN_FREE_IPS=%llu, REPORT_MAX_UTILIZATION=%llu%%).\n",
               (unsigned long long)min_free, (unsigned long long)max_util);
out:
    json_decref(root);
    cmh_free(azs);
    cmh_free(subs);
    cmh_free(sn);
    cmh_free(rows);
}

/* ---- the round --------------------------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_curl_closed(struct cmh_curl_uv *c)
{
    (void)c;
}

static void on_coll_closed(struct cmh_collector *c)
{
    (void)c;
}

/* Ends the run: every handle closes, and uv_run returns. */
static void finish(struct report *r, int status)
{
    if (r->finished)
        return;
    r->finished = 1;
    if (status >= 0)
        r->status = status;
    uv_close((uv_handle_t *)&r->deadline, on_closed);
    cmh_subnet_watch_close(r->watch, NULL, NULL);
    r->watch = NULL;
    if (r->has_coll) {
        r->has_coll = 0;
        cmh_collector_close(&r->coll, on_coll_closed);
    }
    if (r->list_in_flight)
        cmh_curl_uv_cancel(&r->curl, &r->list_req.curl);
    if (r->has_curl) {
        r->has_curl = 0;
        cmh_curl_uv_close(&r->curl, on_curl_closed);
    }
}

static void maybe_done(struct report *r)
{
    if (r->finished || !r->scraped || (r->cfg.subnet_metrics && !r->fetched))
        return;
    emit_report(r);
    finish(r, -1);
}

static void on_fetch(void *arg, int rc, const char *why)
{
    struct report *r = arg;
    if (r->fetched)
        return;
    if (r->cfg.report_min_tte_ms > 0) {
        /* The forecast needs a full FORECAST_WINDOW of fetches (docs/forecast.md): keep
         * sampling; a failed fetch in between waits for the next one. */
        uint64_t now = uv_now(&r->loop);
        if (rc != 0 && r->good_fetches > 0)
            return;
        if (rc == 0 && r->good_fetches++ == 0)
            r->first_ok_ms = now;
        if (rc == 0 &&
            (r->good_fetches < CMH_FORECAST_MIN_SAMPLES ||
             now - r->first_ok_ms + r->cfg.subnet_interval_ms / 2 < r->cfg.forecast_window_ms))
            return;
    }
    r->fetched = 1;
    r->fetch_rc = rc;
    if (rc != 0)
        snprintf(r->fetch_why, sizeof r->fetch_why, "subnets: %s", why ? why : "fetch failed");
    maybe_done(r);
}

static void on_round_done(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                          void *arg)
{
    struct report *r = arg;
    (void)c;
    (void)st;
    r->scraped = 1;
    maybe_done(r);
}

static void start_round(struct report *r)
{
    if (r->n == 0) {
        fprintf(stderr, "cni-metrics-helper report: no scrape target (no aws-node pod Running)\n");
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    int rc = cmh_collector_round(&r->coll, 1, wall_ms(), r->targets, r->n, on_round_done, r);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper report: cannot start the round: %s\n", strerror(-rc));
        finish(r, CMH_REPORT_ERROR);
    }
}

/* pod: the aws-node pod, for SCRAPE_MODE auto/proxy; NULL for static targets (always direct). */
static int add_target(struct report *r, const char *name, const char *ip, uint16_t port,
                      const char *pod)
{
    struct cmh_collector_target *v = cmh_reallocarray(r->targets, r->n + 1, sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    r->targets = v;
    const char *kn = keep(r, name), *ki = keep(r, ip), *kp = pod != NULL ? keep(r, pod) : NULL;
    if (kn == NULL || ki == NULL || (pod != NULL && kp == NULL))
        return -ENOMEM;
    r->targets[r->n++] =
        (struct cmh_collector_target){.name = kn, .ip = ki, .port = port, .pod = kp};
    return 0;
}

static void list_page(struct report *r);

static void on_list(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct report *r = container_of(req, struct report, list_req.curl);
    r->list_in_flight = 0;
    if (r->finished)
        return;
    char why[300];
    if (cmh_k8s_api_result(&r->api, res, NULL, 0, why, sizeof why) != 0 || res->status != 200) {
        if (why[0] == '\0')
            snprintf(why, sizeof why, "HTTP %ld", res->status);
        fprintf(stderr, "cni-metrics-helper report: Kubernetes API unreachable: %s\n", why);
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    char rv[64], cont[4096];
    int rc = cmh_discovery_parse_list(&r->pods, res->body, res->body_len, rv, sizeof rv, cont,
                                      sizeof cont);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper report: the pod list is not a PodList (%s)\n",
                strerror(-rc));
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    if (cont[0] != '\0') {
        cmh_free(r->cont);
        r->cont = cmh_strdup(cont);
        if (r->cont == NULL) {
            finish(r, CMH_REPORT_ERROR);
            return;
        }
        list_page(r);
        return;
    }
    /* The whole list: the targets exactly as the daemon's discovery would have them. */
    struct cmh_discovery_set *set = cmh_discovery_set_build(&r->pods, 1);
    if (set == NULL) {
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    for (size_t i = 0; i < set->n && rc == 0; i++)
        rc = add_target(r, set->v[i].node[0] ? set->v[i].node : set->v[i].pod, set->v[i].ip,
                        (uint16_t)r->cfg.ipamd_port, set->v[i].pod);
    cmh_discovery_set_release(set);
    if (rc != 0) {
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    start_round(r);
}

static void list_page(struct report *r)
{
    char why[300];
    if (cmh_k8s_api_refresh(&r->api, uv_now(&r->loop), why, sizeof why) < 0)
        fprintf(stderr, "cni-metrics-helper report: %s\n", why);
    struct cmh_buf *u = cmh_k8s_api_begin(&r->api, &r->list_req, "GET");
    cmh_buf_addstr(u, "/api/v1/namespaces/");
    cmh_buf_add_pct(u, r->cfg.k8s_namespace, strlen(r->cfg.k8s_namespace), 0);
    cmh_buf_addstr(u, "/pods?limit=500&labelSelector=");
    cmh_buf_add_pct(u, r->cfg.k8s_label_selector, strlen(r->cfg.k8s_label_selector), 0);
    if (r->cont != NULL) {
        cmh_buf_addstr(u, "&continue=");
        cmh_buf_add_pct(u, r->cont, strlen(r->cont), 0);
    }
    r->list_req.curl.max_body = 64u << 20;
    int rc = cmh_k8s_api_start(&r->api, &r->curl, &r->list_req, on_list);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper report: cannot list the pods: %s\n", strerror(-rc));
        finish(r, CMH_REPORT_ERROR);
        return;
    }
    r->list_in_flight = 1;
}

static void on_deadline(uv_timer_t *t)
{
    struct report *r = container_of(t, struct report, deadline);
    fprintf(stderr, "cni-metrics-helper report: no answer within %llu s (%s)\n",
            (unsigned long long)r->deadline_ms / 1000,
            r->list_in_flight ? "Kubernetes API"
            : r->scraped      ? "EC2"
                              : "scraping");
    finish(r, CMH_REPORT_ERROR);
}

static int static_targets(struct report *r)
{
    for (size_t i = 0; i < r->cfg.targets.n; i++) {
        const struct cmh_target *t = &r->cfg.targets.v[i];
        char ip[INET6_ADDRSTRLEN];
        if (cmh_discovery_resolve_ip(t->host, ip, sizeof ip, NULL) != 0) {
            fprintf(stderr, "cni-metrics-helper report: cannot resolve target %s (%s)\n", t->name,
                    t->host);
            return -EINVAL;
        }
        int rc = add_target(r, t->name, ip, t->port, NULL);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Replaces the configured string *field with s (NULL: none). */
static int set_field(char **field, const char *s)
{
    char *d = s != NULL ? cmh_strdup(s) : NULL;
    if (s != NULL && d == NULL)
        return -ENOMEM;
    cmh_free(*field);
    *field = d;
    return 0;
}

/* Where the Kubernetes API is: K8S_API_URL as given (kubectl proxy: no token); in a pod its
 * service; else the kubeconfig's current context, whose token and CA then stand for K8S_TOKEN_FILE
 * and K8S_CA_FILE. Returns 1 with url set, 0 when there is none, -EINVAL (said why), -ENOMEM. */
static int api_access(struct report *r, char *url, size_t len)
{
    char why[600];
    const char *given = r->cfg.k8s_api_url;
    if (given != NULL && given[0] != '\0') {
        size_t n = strlen(given);
        while (n > 0 && given[n - 1] == '/')
            n--;
        if (cmh_k8s_access_check_url(given, why, sizeof why) != 0 || n >= len) {
            fprintf(stderr, "cni-metrics-helper report: K8S_API_URL=%s\n", why);
            return -EINVAL;
        }
        memcpy(url, given, n);
        url[n] = '\0';
        /* kubectl proxy adds the credentials itself; a token sent in clear is not ours to send. */
        if (strncmp(url, "http://", 7) == 0)
            set_field(&r->cfg.k8s_token_file, NULL); /* to NULL: cannot fail */
        return 1;
    }
    if (cmh_k8s_api_in_cluster_url(url, len, NULL) == 0)
        return 1;
    if (r->cfg.targets.n > 0 && !r->cfg.subnet_metrics)
        return 0; /* nothing to ask the API */
    int rc = cmh_k8s_access_kubeconfig(&r->access, getenv("KUBECONFIG"), getenv("HOME"), 60000, why,
                                       sizeof why);
    if (rc == -ENOENT)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper report: %s\n", why);
        return rc;
    }
    if (strlen(r->access.server) >= len) {
        fprintf(stderr, "cni-metrics-helper report: the kubeconfig's server URL is too long\n");
        return -EINVAL;
    }
    snprintf(url, len, "%s", r->access.server);
    rc = set_field(&r->cfg.k8s_token_file, r->access.token_file);
    if (rc == 0)
        rc = set_field(&r->cfg.k8s_ca_file, r->access.ca_file);
    return rc == 0 ? 1 : rc;
}

static int start(struct report *r, char *const *envp)
{
    char url[300];
    const char *cluster =
        r->cfg.cluster_id && r->cfg.cluster_id[0] ? r->cfg.cluster_id : "k8s-cluster";
    /* Cannot fail on Linux; finish closes them whatever happens next. */
    uv_timer_init(&r->loop, &r->deadline);
    int in_cluster = api_access(r, url, sizeof url);
    if (in_cluster < 0)
        return in_cluster;
    int rc = cmh_collector_init(&r->coll, &r->loop, &r->cfg, cluster, &r->log);
    if (rc != 0)
        return rc;
    r->has_coll = 1;
    uint64_t sampling = r->cfg.subnet_metrics && r->cfg.report_min_tte_ms > 0
                            ? r->cfg.forecast_window_ms + r->cfg.subnet_interval_ms
                            : 0;
    r->deadline_ms = REPORT_DEADLINE_MS + sampling;
    uv_timer_start(&r->deadline, on_deadline, r->deadline_ms, 0);
    if (r->cfg.targets.n == 0 || r->cfg.subnet_metrics) {
        struct cmh_curl_uv_opts co = {.timeout_ms = r->cfg.http_timeout_ms,
                                      .ca_file = r->cfg.aws_ca_bundle};
        rc = cmh_curl_uv_init(&r->curl, &r->loop, &co, &r->log);
        if (rc != 0)
            return rc;
        r->has_curl = 1;
    }
    if (r->cfg.subnet_metrics) {
        /* In a cluster the ENIConfig subnets count whatever the targets are, as in the daemon. */
        rc = cmh_subnet_watch_new(&r->watch, &r->loop, &r->curl, &r->cfg, envp,
                                  in_cluster ? url : NULL, &r->log, on_fetch, r);
        if (rc != 0)
            return rc;
    }
    if (r->cfg.targets.n > 0) {
        rc = static_targets(r);
        if (rc != 0)
            return rc;
        start_round(r);
        return 0;
    }
    if (!in_cluster) {
        fprintf(stderr,
                "cni-metrics-helper report: no Kubernetes API (not in a pod, no K8S_API_URL, "
                "no kubeconfig) and no SCRAPE_TARGETS\n");
        return -EINVAL;
    }
    struct cmh_discovery_opts o;
    cmh_discovery_opts_from_config(&o, &r->cfg);
    o.server = url;
    char err[256];
    if (cmh_discovery_check_opts(&o, err, sizeof err) != 0) {
        fprintf(stderr, "cni-metrics-helper report: %s\n", err);
        return -EINVAL;
    }
    struct cmh_k8s_api_opts ao = {
        .server = url, .token_file = r->cfg.k8s_token_file, .ca_file = r->cfg.k8s_ca_file};
    if (cmh_k8s_api_init(&r->api, &ao) != 0)
        return -ENOMEM; /* the server was checked */
    r->has_api = 1;
    if (r->cfg.scrape_mode != CMH_SCRAPE_MODE_DIRECT) {
        /* The same scrape modes as the daemon: through the pod proxy, or falling back to it. */
        struct cmh_proxy_scrape_opts po;
        cmh_proxy_scrape_opts_from_config(&po, &r->cfg, url);
        rc = cmh_collector_enable_proxy(&r->coll, &po);
        if (rc != 0)
            return rc;
    }
    list_page(r);
    return 0;
}

int cmh_report_cmd(int argc, char **argv, char *const *envp)
{
    struct report *r = cmh_calloc(1, sizeof *r);
    if (r == NULL)
        return CMH_REPORT_ERROR;
    for (int i = 1; i < argc; i++) {
        static const char usage[] = "Usage: cni-metrics-helper report [--json]\n"
                                    "Exit status: 0 healthy, 3 a REPORT_* threshold crossed, 1 "
                                    "error, 2 bad usage.\n";
        if (strcmp(argv[i], "--json") == 0) {
            r->json = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            cmh_free(r);
            return 0;
        } else {
            fprintf(stderr, "cni-metrics-helper report: unknown argument '%s'\n%s", argv[i], usage);
            cmh_free(r);
            return CMH_REPORT_USAGE;
        }
    }
    char err[CMH_CONFIG_ERR_MAX];
    if (cmh_config_load(&r->cfg, envp, err) != 0) {
        fprintf(stderr, "cni-metrics-helper report: %s\n", err);
        cmh_free(r);
        return CMH_REPORT_USAGE;
    }
    /* Warnings and errors only: the report itself is the output. */
    int level = r->cfg.log_level < CMH_LOG_WARN ? CMH_LOG_WARN : r->cfg.log_level;
    if (level > CMH_LOG_ERROR)
        level = CMH_LOG_ERROR;
    cmh_log_init(&r->log, (enum cmh_log_level)level, (enum cmh_log_format)r->cfg.log_format,
                 STDERR_FILENO);
    r->status = CMH_REPORT_ERROR;
    int rc = uv_loop_init(&r->loop);
    if (rc == 0) {
        rc = start(r, envp);
        if (rc != 0)
            finish(r, rc == -EINVAL ? CMH_REPORT_USAGE : CMH_REPORT_ERROR);
        uv_run(&r->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&r->loop) != 0)
            fprintf(stderr, "cni-metrics-helper report: handles left open\n");
    }
    int status = r->status;
    for (size_t i = 0; i < r->nstrs; i++)
        cmh_free(r->strs[i]);
    cmh_free(r->strs);
    cmh_free(r->targets);
    if (r->has_api)
        cmh_k8s_api_free(&r->api);
    cmh_k8s_api_req_free(&r->list_req);
    cmh_free(r->cont);
    cmh_discovery_pods_free(&r->pods);
    cmh_k8s_access_free(&r->access);
    cmh_config_free(&r->cfg);
    cmh_free(r);
    return status;
}
