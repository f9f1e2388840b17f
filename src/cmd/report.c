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

/* What the report says, computed once from the round and the subnet view, then printed. */
struct summary {
    const struct cmh_subnet_list *view; /* NULL: no subnet view */
    struct cmh_subnets_node *sn;        /* the round's targets as the subnet view wants them */
    struct node_row *rows;              /* least headroom first */
    size_t nn, fresh, failed, unknown_max;
    double min_room; /* the least headroom of a node whose capacity is known */
    int has_min_room;
    const struct cmh_subnet **subs; /* emptiest first */
    size_t nsub;
    struct az_row *azs; /* emptiest first */
    size_t naz;
    /* The cluster: headroom and utilization count only the nodes whose capacity is known. */
    double assigned, total, max, known_assigned, util, headroom;
    int has_headroom;
    uint64_t min_free, max_util;
    char reasons[4][256]; /* thresholds crossed */
    size_t nreasons;
    const char *problem; /* why the report is an error, or NULL */
    const char *verdict;
};

static void summary_free(struct summary *s)
{
    cmh_free(s->azs);
    cmh_free(s->subs);
    cmh_free(s->sn);
    cmh_free(s->rows);
}

/* Nodes, with their subnet and AZ when known, least headroom first. */
static int collect_nodes(const struct report *r, struct summary *s)
{
    const struct cmh_agg *a = &r->coll.agg;
    s->nn = cmh_agg_nodes(a);
    s->rows = cmh_calloc(s->nn ? s->nn : 1, sizeof *s->rows);
    s->sn = cmh_calloc(r->n ? r->n : 1, sizeof *s->sn);
    if (s->rows == NULL || s->sn == NULL) {
        fprintf(stderr, "cni-metrics-helper report: out of memory\n");
        return -ENOMEM;
    }
    for (size_t i = 0; i < r->n; i++)
        s->sn[i] = (struct cmh_subnets_node){r->targets[i].name, r->targets[i].ip};
    const struct cmh_subnet_list *view =
        r->watch != NULL && r->fetch_rc == 0 ? cmh_subnet_watch_view(r->watch, s->sn, r->n) : NULL;
    s->view = view;
    for (size_t i = 0; i < s->nn; i++) {
        struct node_row *row = &s->rows[i];
        cmh_agg_node_info(a, i, &row->ni);
        row->has_max = row->ni.fresh && ((row->ni.present >> CMH_M_IP_MAX) & 1);
        row->ip = ip_of(r, row->ni.name);
        row->az = view != NULL ? CMH_SUBNETS_AZ_UNKNOWN : "";
        row->subnet = "";
        long k = view != NULL ? cmh_subnets_find_ip(view, row->ip) : -1;
        if (k >= 0) {
            row->az = view->v[k].az;
            row->subnet = view->v[k].id;
        }
        if (row->has_max) {
            double room = row->ni.max - row->ni.assigned;
            if (!s->has_min_room || room < s->min_room)
                s->min_room = room;
            s->has_min_room = 1;
        }
        s->fresh += row->ni.fresh != 0;
        s->failed += row->ni.fresh == 0;
        s->unknown_max += row->ni.fresh && !row->has_max;
    }
    qsort(s->rows, s->nn, sizeof *s->rows, cmp_row);
    return 0;
}

/* The AZ row of az, added when new. */
static struct az_row *az_row(struct summary *s, const char *az)
{
    size_t z = 0;
    while (z < s->naz && strcmp(s->azs[z].az, az) != 0)
        z++;
    if (z == s->naz)
        s->azs[s->naz++] = (struct az_row){.az = az};
    return &s->azs[z];
}

/* Subnets, emptiest first, and AZs (their subnets' free IPs, their scraped nodes' IPs). */
static int collect_subnets(struct summary *s)
{
    const struct cmh_subnet_list *view = s->view;
    s->nsub = view != NULL ? view->n : 0;
    s->subs = cmh_calloc(s->nsub + 1, sizeof *s->subs);
    s->azs = cmh_calloc(s->nsub + 2, sizeof *s->azs);
    if (s->subs == NULL || s->azs == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < s->nsub; i++) {
        s->subs[i] = &view->v[i];
        struct az_row *z = az_row(s, view->v[i].az);
        z->free_ips += view->v[i].available;
        z->subnets++;
    }
    if (view != NULL)
        for (size_t i = 0; i < s->nn; i++) {
            if (!s->rows[i].ni.fresh)
                continue;
            struct az_row *z = az_row(s, s->rows[i].az);
            z->nodes++;
            z->assigned += s->rows[i].ni.assigned;
            z->max += s->rows[i].ni.max;
        }
    qsort(s->subs, s->nsub, sizeof *s->subs, cmp_subnet_free);
    qsort(s->azs, s->naz, sizeof *s->azs, cmp_az);
    return 0;
}

/* The cluster's sums. Headroom and utilization count only the nodes whose capacity is known: a
 * node without awscni_ip_max would otherwise look full. */
static void cluster_totals(struct summary *s)
{
    for (size_t i = 0; i < s->nn; i++)
        if (s->rows[i].ni.fresh) {
            s->assigned += s->rows[i].ni.assigned;
            s->total += s->rows[i].ni.total;
        }
    for (size_t i = 0; i < s->nn; i++)
        if (s->rows[i].has_max) {
            s->max += s->rows[i].ni.max;
            s->known_assigned += s->rows[i].ni.assigned;
        }
    s->util = s->max > 0 ? 100.0 * s->known_assigned / s->max : 0;
    s->headroom = s->max - s->known_assigned;
    s->has_headroom = s->has_min_room; /* some node's capacity is known */
}

/* The verdict: the thresholds crossed, the problem that makes the report an error, the exit
 * status (r->status). */
static void judge(struct report *r, struct summary *s)
{
    s->min_free = r->cfg.report_min_free_ips;
    s->max_util = r->cfg.report_max_utilization;
    uint64_t min_free = s->min_free, max_util = s->max_util;
    const size_t rl = sizeof s->reasons[0];
    /* No free IP at all crosses the line whatever REPORT_MIN_FREE_IPS says (0 included). */
    double floor_ips = min_free > 0 ? (double)min_free : 1;
    if (max_util < 100 && s->max > 0 && s->util > (double)max_util)
        snprintf(s->reasons[s->nreasons++], rl,
                 "cluster IP utilization %.1f%% is above REPORT_MAX_UTILIZATION=%llu%%", s->util,
                 (unsigned long long)max_util);
    if (s->has_headroom && s->headroom < floor_ips)
        snprintf(s->reasons[s->nreasons++], rl,
                 min_free > 0 ? "cluster headroom %.0f IPs is below REPORT_MIN_FREE_IPS=%llu"
                              : "cluster headroom %.0f IPs: no node can take another pod IP "
                                "(REPORT_MIN_FREE_IPS=%llu)",
                 s->headroom, (unsigned long long)min_free);
    if (s->nsub > 0 && (double)s->subs[0]->available < floor_ips)
        snprintf(s->reasons[s->nreasons++], rl,
                 min_free > 0 ? "subnet %s (%s) has %lld free IPs, below REPORT_MIN_FREE_IPS=%llu"
                              : "subnet %s (%s) has %lld free IPs: exhausted "
                                "(REPORT_MIN_FREE_IPS=%llu)",
                 s->subs[0]->id, s->subs[0]->az, (long long)s->subs[0]->available,
                 (unsigned long long)min_free);
    uint64_t min_tte_ms = r->cfg.report_min_tte_ms;
    for (size_t i = 0; i < s->nsub && min_tte_ms > 0 && s->nreasons < 4; i++) {
        if (s->subs[i]->has_tte && s->subs[i]->tte_s * 1000.0 < (double)min_tte_ms) {
            char when[32];
            runs_out_in(s->subs[i], when, sizeof when);
            snprintf(s->reasons[s->nreasons++], rl,
                     "subnet %s (%s) runs out of IPs in %s, within "
                     "REPORT_MIN_TIME_TO_EXHAUSTION=%llus",
                     s->subs[i]->id, s->subs[i]->az, when, (unsigned long long)(min_tte_ms / 1000));
            break;
        }
    }
    if (s->nn == 0)
        s->problem = "no scrape target";
    else if (s->fresh == 0)
        s->problem = "every scrape failed";
    else if (r->cfg.subnet_metrics && s->view == NULL)
        s->problem = r->fetch_why[0] ? r->fetch_why : "no subnet view";
    r->status = s->problem != NULL ? CMH_REPORT_ERROR
                : s->nreasons > 0  ? CMH_REPORT_THRESHOLD
                                   : CMH_REPORT_HEALTHY;
    s->verdict = s->problem != NULL ? "error" : s->nreasons > 0 ? "threshold_crossed" : "healthy";
}

static json_t *json_cluster(const struct cmh_agg *a, const struct summary *s)
{
    json_t *cl = json_object();
    json_object_set_new(cl, "cluster_id", json_string(a->cluster_id));
    json_object_set_new(cl, "nodes", json_integer((json_int_t)s->nn));
    json_object_set_new(cl, "nodes_fresh", json_integer((json_int_t)s->fresh));
    json_object_set_new(cl, "nodes_failed", json_integer((json_int_t)s->failed));
    json_object_set_new(cl, "assigned", json_real(s->assigned));
    json_object_set_new(cl, "total", json_real(s->total));
    json_object_set_new(cl, "max", json_real(s->max));
    json_object_set_new(cl, "available", json_real(s->total - s->assigned));
    json_object_set_new(cl, "headroom", s->has_headroom ? json_real(s->headroom) : json_null());
    json_object_set_new(cl, "utilization_pct", json_real(s->util));
    json_object_set_new(cl, "nodes_max_unknown", json_integer((json_int_t)s->unknown_max));
    if (s->has_min_room)
        json_object_set_new(cl, "min_node_headroom", json_real(s->min_room));
    if (s->nsub > 0)
        json_object_set_new(cl, "min_subnet_free", json_integer(s->subs[0]->available));
    json_object_set_new(cl, "report_min_free_ips", json_integer((json_int_t)s->min_free));
    json_object_set_new(cl, "report_max_utilization", json_integer((json_int_t)s->max_util));
    return cl;
}

static json_t *json_nodes(const struct summary *s)
{
    json_t *jn = json_array();
    for (size_t i = 0; i < s->nn; i++) {
        const struct node_row *x = &s->rows[i];
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
                                x->has_max ? json_real(x->ni.max - x->ni.assigned) : json_null());
        }
        if (s->view != NULL) {
            json_object_set_new(o, "availability_zone", json_string(x->az));
            json_object_set_new(o, "subnet", json_string(x->subnet));
        }
        json_array_append_new(jn, o);
    }
    return jn;
}

static json_t *json_subnets(const struct summary *s)
{
    json_t *js = json_array();
    for (size_t i = 0; i < s->nsub; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "subnet", json_string(s->subs[i]->id));
        json_object_set_new(o, "availability_zone", json_string(s->subs[i]->az));
        json_object_set_new(o, "cidr", json_string(s->subs[i]->cidr));
        json_object_set_new(o, "free_ips", json_integer(s->subs[i]->available));
        json_object_set_new(o, "time_to_exhaustion_s",
                            s->subs[i]->has_tte ? json_real(s->subs[i]->tte_s) : json_null());
        json_array_append_new(js, o);
    }
    return js;
}

static json_t *json_azs(const struct summary *s)
{
    json_t *ja = json_array();
    for (size_t i = 0; i < s->naz; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "availability_zone", json_string(s->azs[i].az));
        json_object_set_new(o, "free_ips", json_integer(s->azs[i].free_ips));
        json_object_set_new(o, "subnets", json_integer((json_int_t)s->azs[i].subnets));
        json_object_set_new(o, "nodes", json_integer((json_int_t)s->azs[i].nodes));
        json_object_set_new(o, "assigned", json_real(s->azs[i].assigned));
        json_object_set_new(o, "max", json_real(s->azs[i].max));
        json_array_append_new(ja, o);
    }
    return ja;
}

/* --json: the verdict, the cluster, nodes, subnets and AZs as one document. */
static int print_json(const struct report *r, const struct summary *s)
{
    json_t *root = json_object(), *jr = json_array();
    json_object_set_new(root, "status", json_string(s->verdict));
    json_object_set_new(root, "exit_code", json_integer(r->status));
    if (s->problem != NULL)
        json_object_set_new(root, "error", json_string(s->problem));
    for (size_t i = 0; i < s->nreasons; i++)
        json_array_append_new(jr, json_string(s->reasons[i]));
    json_object_set_new(root, "thresholds_crossed", jr);
    json_object_set_new(root, "cluster", json_cluster(&r->coll.agg, s));
    json_object_set_new(root, "nodes", json_nodes(s));
    json_object_set_new(root, "subnets", json_subnets(s));
    json_object_set_new(root, "availability_zones", json_azs(s));
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (text == NULL)
        return -ENOMEM;
    printf("%s\n", text);
    free(text); /* jansson allocates with malloc unless told otherwise */
    return 0;
}

/* The node table, columns as wide as their longest value. */
static void print_nodes(const struct summary *s)
{
    int nw = 4, iw = 2, aw = s->view != NULL ? 2 : 0;
    for (size_t i = 0; i < s->nn; i++) {
        const struct node_row *x = &s->rows[i];
        nw = (int)strlen(x->ni.name) > nw ? (int)strlen(x->ni.name) : nw;
        iw = (int)strlen(x->ip) > iw ? (int)strlen(x->ip) : iw;
        aw = (int)strlen(x->az) > aw ? (int)strlen(x->az) : aw;
    }
    printf("Nodes (%zu: %zu scraped, %zu failed), least headroom first:\n", s->nn, s->fresh,
           s->failed);
    printf("  %-*s %-*s %-*s %8s %8s %8s %6s %7s %9s %8s\n", nw, "NODE", iw, "IP", aw,
           s->view != NULL ? "AZ" : "", "ASSIGNED", "TOTAL", "MAX", "ENIS", "ENI MAX", "FREE WARM",
           "HEADROOM");
    for (size_t i = 0; i < s->nn; i++) {
        const struct node_row *x = &s->rows[i];
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
}

/* The subnet and AZ tables. */
static void print_subnets(const struct summary *s)
{
    printf("\nSubnets (%zu), emptiest first:\n  %-26s %-14s %-20s %10s %12s\n", s->nsub, "SUBNET",
           "AZ", "CIDR", "FREE IPS", "RUNS OUT IN");
    for (size_t i = 0; i < s->nsub; i++) {
        char when[32];
        runs_out_in(s->subs[i], when, sizeof when);
        printf("  %-26s %-14s %-20s %10lld %12s\n", s->subs[i]->id, s->subs[i]->az,
               s->subs[i]->cidr, (long long)s->subs[i]->available, when);
    }
    printf("\nAvailability zones, emptiest first:\n  %-14s %10s %8s %6s %9s %9s\n", "AZ",
           "FREE IPS", "SUBNETS", "NODES", "ASSIGNED", "MAX");
    for (size_t i = 0; i < s->naz; i++)
        printf("  %-14s %10lld %8zu %6zu %9.0f %9.0f\n", s->azs[i].az,
               (long long)s->azs[i].free_ips, s->azs[i].subnets, s->azs[i].nodes,
               s->azs[i].assigned, s->azs[i].max);
}

/* The cluster line and the verdict lines. */
static void print_verdict(const struct report *r, const struct summary *s)
{
    printf("\nCluster %s: %.0f assigned, %.0f in warm pools, %.0f max; %.0f free warm, ",
           r->coll.agg.cluster_id, s->assigned, s->total, s->max, s->total - s->assigned);
    if (s->has_headroom)
        printf("%.0f headroom, utilization %.1f%%", s->headroom, s->util);
    else
        printf("headroom unknown");
    if (s->unknown_max > 0)
        printf(" (%zu node%s without awscni_ip_max left out)", s->unknown_max,
               s->unknown_max == 1 ? "" : "s");
    if (s->has_min_room)
        printf("; node closest to running out has %.0f", s->min_room);
    if (s->nsub > 0)
        printf("; emptiest subnet has %lld free", (long long)s->subs[0]->available);
    printf(".\n");
    if (s->problem != NULL)
        printf("ERROR: %s\n", s->problem);
    for (size_t i = 0; i < s->nreasons; i++)
        printf("THRESHOLD: %s\n", s->reasons[i]);
    if (s->problem == NULL && s->nreasons == 0)
        printf("Healthy (REPORT_MIN_FREE_IPS=%llu, REPORT_MAX_UTILIZATION=%llu%%).\n",
               (unsigned long long)s->min_free, (unsigned long long)s->max_util);
}

/* The table for people. */
static int print_text(const struct report *r, const struct summary *s)
{
    print_nodes(s);
    if (s->view != NULL)
        print_subnets(s);
    print_verdict(r, s);
    return 0;
}

/* The report of the finished round: collect, judge, print (JSON or text); r->status is the exit
 * status. */
static void emit_report(struct report *r)
{
    struct summary s = {0};
    int rc = collect_nodes(r, &s);
    if (!rc)
        rc = collect_subnets(&s);
    if (!rc) {
        cluster_totals(&s);
        judge(r, &s);
        rc = r->json ? print_json(r, &s) : print_text(r, &s);
    }
    if (rc)
        r->status = CMH_REPORT_ERROR;
    summary_free(&s);
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
