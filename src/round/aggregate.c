#include "cmh/round/aggregate.h"
#include "cmh/round/aggregate_int.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-node state. vals[] holds, by metric id: for gauges the last good value, for counters this
 * round's increase. Series of counters and of the latency summary are kept sorted by key. */
/* How early a process_start_time_seconds may read (see observe_node). */
#define START_TIME_SLACK_MS 1000.0

struct cmh_agg_node {
    char *name;
    uint64_t hash;
    uint64_t seen_round;
    unsigned fail_streak;
    int has_state;  /* a good scrape was committed */
    int fresh;      /* committed in the current round */
    int last_fresh; /* the last finished round: fresh, and gauges counted */
    int last_counted;
    uint32_t present; /* bit per metric id: families in the last good scrape */
    double start_time;
    int has_start;
    double lat_count, lat_sum, lat_min, lat_max; /* this round's latency figures */
    struct cmh_agg_series *series;
    uint32_t nseries, cap;
    double vals[CMH_M_FAMILIES];
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t fnv(const char *s, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_BASIS 0xcbf29ce484222325ull

/* ---- scrape scratch ---------------------------------------------------------------------- */

int cmh_agg_scrape_init(struct cmh_agg_scrape *s, uint32_t max_series)
{
    memset(s, 0, sizeof *s);
    s->max_series = max_series ? max_series : 4096;
    s->cap = 64;
    s->series = cmh_calloc(s->cap, sizeof *s->series);
    if (s->series == NULL)
        return -ENOMEM;
    cmh_agg_scrape_reset(s);
    return 0;
}

void cmh_agg_scrape_reset(struct cmh_agg_scrape *s)
{
    s->n = 0;
    s->present = 0;
    memset(s->gauge, 0, sizeof s->gauge);
    s->has_start = 0;
    s->start_time = 0;
    s->has_q = 0;
    s->q_min = s->q_max = 0;
    s->fam_len = 0;
    s->fam_id = -1;
    s->reason[0] = '\0';
    s->unknown = 0;
}

void cmh_agg_scrape_close(struct cmh_agg_scrape *s)
{
    cmh_free(s->series);
    s->series = NULL;
    s->n = s->cap = 0;
}

#define IPAMD_PREFIX "awscni_"

int cmh_agg_want(void *arg, const char *family, size_t len, enum cmh_prom_type type)
{
    (void)arg;
    (void)type;
    int id = cmh_metric_lookup(family, len);
    if (id < 0) /* unknown: announced to on_family, to be counted */
        return len >= sizeof IPAMD_PREFIX - 1 &&
               memcmp(family, IPAMD_PREFIX, sizeof IPAMD_PREFIX - 1) == 0;
    return cmh_metrics[id].kind != CMH_METRIC_IGNORED;
}

/* Copies name[0..len) into dst (CMH_AGG_UNKNOWN_NAME bytes), cut to fit. */
static void copy_name(char *dst, const char *name, size_t len)
{
    if (len >= CMH_AGG_UNKNOWN_NAME)
        len = CMH_AGG_UNKNOWN_NAME - 1;
    memcpy(dst, name, len);
    dst[len] = '\0';
}

int cmh_agg_on_family(void *arg, const struct cmh_prom_family *f)
{
    struct cmh_agg_scrape *s = arg;
    if (cmh_metric_lookup(f->name, f->name_len) >= 0)
        return 0;
    if (s->unknown < CMH_AGG_UNKNOWN_PER_SCRAPE)
        copy_name(s->unknown_names[s->unknown], f->name, f->name_len);
    s->unknown++;
    return 0;
}

static int refuse(struct cmh_agg_scrape *s, const struct cmh_prom_sample *x, const char *why)
{
    snprintf(s->reason, sizeof s->reason, "line %lu: %.*s %.17g: %s", x->line, (int)x->name_len,
             x->name, x->value, why);
    return -1;
}

/* Identity of a series: metric, suffix and label set, independent of label order. The quantile
 * and le labels never reach here. */
static uint64_t series_key(int id, int suffix, const struct cmh_prom_sample *x)
{
    uint64_t h = mix64(((uint64_t)id << 8) | (uint64_t)suffix);
    for (size_t i = 0; i < x->nlabels; i++) {
        const struct cmh_prom_label *l = &x->labels[i];
        uint64_t lh = fnv(l->name, l->name_len, FNV_BASIS);
        lh = fnv("\xff", 1, lh); /* a separator no UTF-8 text contains */
        lh = fnv(l->value, l->value_len, lh);
        h += mix64(lh); /* commutative: label order does not matter */
    }
    return h;
}

static int add_series(struct cmh_agg_scrape *s, const struct cmh_prom_sample *x, int id)
{
    if (s->n == s->max_series)
        return refuse(s, x, "too many series of interest on one node");
    if (s->n == s->cap) {
        uint32_t cap = s->cap * 2;
        struct cmh_agg_series *v = cmh_reallocarray(s->series, cap, sizeof *v);
        if (v == NULL)
            return refuse(s, x, "out of memory");
        s->series = v;
        s->cap = cap;
    }
    s->present |= 1u << id;
    struct cmh_agg_series *e = &s->series[s->n++];
    e->key = series_key(id, x->suffix, x);
    e->value = x->value;
    e->metric = (uint16_t)id;
    e->suffix = (uint8_t)x->suffix;
    return 0;
}

static int has_label(const struct cmh_prom_sample *x, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < x->nlabels; i++)
        if (x->labels[i].name_len == n && memcmp(x->labels[i].name, name, n) == 0)
            return 1;
    return 0;
}

/* What one node's ipamD can report, from the VPC CNI's own instance table
 * (pkg/vpc/vpc_ip_resource_limit.go of amazon-vpc-cni-k8s v1.23.0, 1,392 instance types): the most
 * network interfaces of any type, over all its network cards, is 80 (trn1n.32xlarge); the most IPv4
 * addresses per interface is 64; the most pod IPv4 addresses with prefix delegation, max over types
 * of interfaces x (addresses per interface - 1) x 16, is 62,720 (trn1n.32xlarge: 80 x 49 x 16),
 * and the most /28 prefixes 3,920. The bounds leave four times that for types newer than the table.
 * A value beyond them is not a node's state but a broken or hostile endpoint: summed, one such node
 * would hide the cluster's exhaustion (-999996 assigned) or make a sum +Inf (1.7e308). */
#define NODE_MAX_ENIS     512.0     /* 80 x 4, rounded up */
#define NODE_MAX_IPS      262144.0  /* 2^18 >= 62,720 x 4 */
#define NODE_MAX_PREFIXES 16384.0   /* 2^14 >= 3,920 x 4 */
#define NODE_MAX_ACTIONS  1048576.0 /* ipamD actions in flight; 2^20 keeps cluster sums exact */
#define IPV6_PREFIX_IPS   281474976710656.0 /* 2^48: ipamD counts an IPv6 /80 as its addresses */
/* A counter or a summary's _count/_sum: at most 2^53, where a double still counts by one (and a
 * sum over any number of nodes stays finite). */
#define MAX_COUNT 9007199254740992.0

/* Whether v, one node's total of gauge family id, is a state some EC2 instance can be in. */
static int gauge_possible(int id, double v)
{
    switch (id) {
    case CMH_M_ENI_ALLOCATED:
    case CMH_M_ENI_MAX:
        return v <= NODE_MAX_ENIS;
    case CMH_M_TOTAL_IPV4_PREFIXES:
        return v <= NODE_MAX_PREFIXES;
    case CMH_M_IPAMD_ACTION_INPROGRESS:
        return v <= NODE_MAX_ACTIONS;
    case CMH_M_TOTAL_IP:
        /* IPv6 clusters: one /80 prefix per interface counts 2^48 addresses. */
        if (v > NODE_MAX_IPS)
            return fmod(v, IPV6_PREFIX_IPS) == 0 && v <= NODE_MAX_ENIS * IPV6_PREFIX_IPS;
        return 1;
    default: /* assigned, maximum and per-CIDR IP counts */
        return v <= NODE_MAX_IPS;
    }
}

static int is_count(double v, double max)
{
    return isfinite(v) && v >= 0 && v <= max && v == floor(v);
}

int cmh_agg_on_sample(void *arg, const struct cmh_prom_sample *x)
{
    struct cmh_agg_scrape *s = arg;
    int id;
    if (x->family_len == s->fam_len && memcmp(x->family, s->fam, s->fam_len) == 0) {
        id = s->fam_id;
    } else {
        id = cmh_metric_lookup(x->family, x->family_len);
        if (x->family_len < sizeof s->fam) {
            memcpy(s->fam, x->family, x->family_len);
            s->fam_len = x->family_len;
            s->fam_id = id;
        }
    }
    if (id < 0)
        return 0;
    double v = x->value;
    switch (cmh_metrics[id].kind) {
    case CMH_METRIC_GAUGE_SUM:
        if (x->suffix != CMH_PROM_SUFFIX_NONE)
            return 0;
        if (!is_count(v, MAX_COUNT))
            return refuse(s, x, "gauge value is not a count (negative, fractional or not finite)");
        s->gauge[id] += v;
        if (!gauge_possible(id, s->gauge[id]))
            return refuse(s, x, "the node's total is more than any EC2 instance can have");
        /* Kept in the scratch only to catch a series given twice. */
        return add_series(s, x, id);
    case CMH_METRIC_COUNTER:
        if (x->suffix != CMH_PROM_SUFFIX_NONE && x->suffix != CMH_PROM_SUFFIX_TOTAL)
            return 0; /* _created and the like */
        if (!is_count(v, MAX_COUNT))
            return refuse(s, x,
                          "counter value is not a count (negative, fractional, above 2^53 "
                          "or not finite)");
        return add_series(s, x, id);
    case CMH_METRIC_LATENCY:
        if (x->suffix == CMH_PROM_SUFFIX_SUM || x->suffix == CMH_PROM_SUFFIX_COUNT) {
            int ok = x->suffix == CMH_PROM_SUFFIX_COUNT ? is_count(v, MAX_COUNT)
                                                        : isfinite(v) && v >= 0 && v <= MAX_COUNT;
            if (!ok)
                return refuse(s, x,
                              "summary _sum/_count is negative, above 2^53, not finite, or "
                              "a fractional _count");
            return add_series(s, x, id);
        }
        if (x->suffix == CMH_PROM_SUFFIX_NONE && has_label(x, "quantile") && isfinite(v)) {
            if (!s->has_q || v < s->q_min)
                s->q_min = v;
            if (!s->has_q || v > s->q_max)
                s->q_max = v;
            s->has_q = 1;
        }
        return 0;
    case CMH_METRIC_START_TIME:
        if (x->suffix == CMH_PROM_SUFFIX_NONE && isfinite(v)) {
            s->start_time = v;
            s->has_start = 1;
        }
        return 0;
    default:
        return 0;
    }
}

void cmh_agg_prom_options(struct cmh_prom_options *o, struct cmh_agg_scrape *s)
{
    memset(o, 0, sizeof *o);
    o->want = cmh_agg_want;
    o->on_family = cmh_agg_on_family;
    o->on_sample = cmh_agg_on_sample;
    o->arg = s;
}

/* ---- nodes ------------------------------------------------------------------------------- */

int cmh_agg_init(struct cmh_agg *a, const struct cmh_agg_opts *opt)
{
    memset(a, 0, sizeof *a);
    a->opt = *opt;
    a->cluster_id = cmh_strdup(opt->cluster_id ? opt->cluster_id : "");
    a->slots_cap = 1024;
    a->slots = cmh_calloc(a->slots_cap, sizeof *a->slots);
    if (a->cluster_id == NULL || a->slots == NULL) {
        cmh_agg_close(a);
        return -ENOMEM;
    }
    a->opt.cluster_id = a->cluster_id;
    a->sorted = 1;
    return 0;
}

static void node_free(struct cmh_agg_node *n)
{
    cmh_free(n->series);
    cmh_free(n->name);
    cmh_free(n);
}

void cmh_agg_close(struct cmh_agg *a)
{
    for (uint32_t i = 0; i < a->nnodes; i++)
        node_free(a->order[i]);
    cmh_free(a->order);
    cmh_free(a->slots);
    cmh_free(a->cluster_id);
    cmh_datum_list_free(&a->datums);
    memset(a, 0, sizeof *a);
}

static uint32_t find_slot(const struct cmh_agg *a, const char *name, uint64_t h)
{
    uint32_t mask = a->slots_cap - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        struct cmh_agg_node *n = a->slots[i];
        if (n == NULL || (n->hash == h && strcmp(n->name, name) == 0))
            return i;
    }
}

static int rehash(struct cmh_agg *a, uint32_t cap)
{
    struct cmh_agg_node **slots = cmh_calloc(cap, sizeof *slots);
    if (slots == NULL)
        return -ENOMEM;
    cmh_free(a->slots);
    a->slots = slots;
    a->slots_cap = cap;
    for (uint32_t i = 0; i < a->nnodes; i++)
        a->slots[find_slot(a, a->order[i]->name, a->order[i]->hash)] = a->order[i];
    return 0;
}

static struct cmh_agg_node *node_get(struct cmh_agg *a, const char *name)
{
    uint64_t h = mix64(fnv(name, strlen(name), FNV_BASIS));
    uint32_t i = find_slot(a, name, h);
    if (a->slots[i] != NULL)
        return a->slots[i];
    /* Keep the table at most half full. */
    if ((a->nnodes + 1) * 2 > a->slots_cap) {
        if (rehash(a, a->slots_cap * 2) != 0)
            return NULL;
        i = find_slot(a, name, h);
    }
    if (a->nnodes == a->order_cap) {
        uint32_t cap = a->order_cap ? a->order_cap * 2 : 256;
        struct cmh_agg_node **o = cmh_reallocarray(a->order, cap, sizeof *o);
        if (o == NULL)
            return NULL;
        a->order = o;
        a->order_cap = cap;
    }
    struct cmh_agg_node *n = cmh_calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->name = cmh_strdup(name);
    if (n->name == NULL) {
        cmh_free(n);
        return NULL;
    }
    n->hash = h;
    a->slots[i] = n;
    a->order[a->nnodes++] = n;
    a->sorted = 0;
    return n;
}

/* ---- rounds ------------------------------------------------------------------------------ */

void cmh_agg_round_begin(struct cmh_agg *a, uint64_t round, int64_t start_ms)
{
    if (a->round != 0)
        a->prev_start_ms = a->start_ms;
    a->round = round;
    a->start_ms = start_ms;
}

static int cmp_series(const void *x, const void *y)
{
    const struct cmh_agg_series *a = x, *b = y;
    return a->key < b->key ? -1 : a->key > b->key;
}

static double increase(double cur, double last)
{
    return cur >= last ? cur - last : cur; /* went down: the process restarted */
}

/* The unknown families of a committed scrape: counted, and their names remembered (bounded). */
static void note_unknown(struct cmh_agg *a, const struct cmh_agg_scrape *s)
{
    a->unknown_total += s->unknown;
    uint32_t named =
        s->unknown < CMH_AGG_UNKNOWN_PER_SCRAPE ? s->unknown : CMH_AGG_UNKNOWN_PER_SCRAPE;
    for (uint32_t i = 0; i < named; i++) {
        const char *name = s->unknown_names[i];
        uint32_t k = 0;
        while (k < a->nunknown && strcmp(a->unknown_names[k], name) != 0)
            k++;
        if (k < a->nunknown)
            continue;
        if (a->nunknown < CMH_AGG_UNKNOWN_KEPT)
            copy_name(a->unknown_names[a->nunknown++], name, strlen(name));
        else
            a->unknown_untracked++;
    }
}

int cmh_agg_commit(struct cmh_agg *a, const char *name, struct cmh_agg_scrape *s)
{
    qsort(s->series, s->n, sizeof *s->series, cmp_series);
    for (uint32_t i = 1; i < s->n; i++) {
        if (s->series[i].key == s->series[i - 1].key) {
            snprintf(s->reason, sizeof s->reason, "the same series appears twice (%s)",
                     cmh_metrics[s->series[i].metric].family);
            cmh_agg_fail(a, name);
            return -EINVAL;
        }
    }
    struct cmh_agg_node *n = node_get(a, name);
    if (n == NULL) {
        snprintf(s->reason, sizeof s->reason, "out of memory");
        return -ENOMEM;
    }
    /* Count the series kept as state (counters and the summary) and make room first, so a
     * failed allocation leaves the node as it was. */
    uint32_t keep = 0;
    for (uint32_t i = 0; i < s->n; i++)
        keep += cmh_metrics[s->series[i].metric].kind != CMH_METRIC_GAUGE_SUM;
    struct cmh_agg_series *next = cmh_malloc((keep ? keep : 1) * sizeof *next);
    if (next == NULL) {
        snprintf(s->reason, sizeof s->reason, "out of memory");
        cmh_agg_fail(a, name);
        return -ENOMEM;
    }

    int first = !n->has_state;
    int restarted = !first && s->has_start && n->has_start && s->start_time != n->start_time;
    /* A node seen for the first time counts its whole values only if its process started after
     * our previous round: everything it counted then happened within this round. client_golang
     * reports the start as /proc/stat's boot time, whole seconds, plus the start ticks, so it
     * reads up to a second early; the slack only concerns counts no round has published. */
    int whole = first && a->prev_start_ms > 0 && s->has_start &&
                s->start_time * 1000.0 + START_TIME_SLACK_MS > (double)a->prev_start_ms;
    double dsum = 0, dcount = 0;
    for (int id = 0; id < CMH_M_FAMILIES; id++)
        n->vals[id] = cmh_metrics[id].kind == CMH_METRIC_GAUGE_SUM ? s->gauge[id] : 0;
    uint32_t j = 0, k = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        const struct cmh_agg_series *e = &s->series[i];
        if (cmh_metrics[e->metric].kind == CMH_METRIC_GAUGE_SUM)
            continue;
        while (j < n->nseries && n->series[j].key < e->key)
            j++;
        double inc;
        if (first)
            inc = whole ? e->value : 0;
        else if (!restarted && j < n->nseries && n->series[j].key == e->key)
            inc = increase(e->value, n->series[j].value);
        else
            inc = e->value; /* restarted, or a new series on a known node: all of it is new */
        if (e->metric == CMH_M_AWS_API_LATENCY) {
            if (e->suffix == CMH_PROM_SUFFIX_SUM)
                dsum += inc;
            else
                dcount += inc;
        } else {
            n->vals[e->metric] += inc;
        }
        next[k++] = *e;
    }
    cmh_free(n->series);
    n->series = next;
    n->nseries = k;
    n->cap = keep;
    n->lat_count = dcount;
    n->lat_sum = dsum;
    if (dcount > 0) {
        double mean = dsum / dcount;
        n->lat_min = s->has_q ? s->q_min : mean;
        n->lat_max = s->has_q ? s->q_max : mean;
    }
    note_unknown(a, s);
    n->present = s->present;
    n->start_time = s->start_time;
    n->has_start = s->has_start;
    n->has_state = 1;
    n->fresh = 1;
    n->fail_streak = 0;
    n->seen_round = a->round;
    return 0;
}

int cmh_agg_fail(struct cmh_agg *a, const char *name)
{
    struct cmh_agg_node *n = node_get(a, name);
    if (n == NULL)
        return -ENOMEM;
    if (n->seen_round != a->round || n->fresh) {
        n->fail_streak++;
        n->fresh = 0;
    }
    n->seen_round = a->round;
    return 0;
}

static uint32_t gauge_mask(void)
{
    uint32_t m = 0;
    for (int id = 0; id < CMH_M_FAMILIES; id++)
        if (cmh_metrics[id].kind == CMH_METRIC_GAUGE_SUM)
            m |= 1u << id;
    return m;
}

static int cmp_node(const void *x, const void *y)
{
    const struct cmh_agg_node *const *a = x, *const *b = y;
    return strcmp((*a)->name, (*b)->name);
}

/* Appends one datum of metric id with CLUSTER_ID and nextra more dimensions (checked by the
 * caller to fit). */
static int push(struct cmh_agg *a, int id, double value, const struct cmh_dim *extra,
                unsigned nextra)
{
    struct cmh_datum d = {.metric = cmh_metrics[id].cw_name,
                          .unit = cmh_metrics[id].unit,
                          .timestamp_ms = a->start_ms,
                          .kind = CMH_DATUM_VALUE,
                          .value = value,
                          .dims = {{"CLUSTER_ID", a->cluster_id}},
                          .ndims = 1 + nextra};
    for (unsigned i = 0; i < nextra; i++)
        d.dims[1 + i] = extra[i];
    return cmh_datum_push(&a->datums, &d);
}

/* A cluster-wide datum, also kept as the round's total. */
static int emit(struct cmh_agg *a, int id, double value)
{
    a->totals[id] = value;
    a->has_total |= 1ull << id;
    return push(a, id, value, NULL, 0);
}

int cmh_agg_round_finish(struct cmh_agg *a)
{
    /* Forget the nodes that were not targets of this round. */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < a->nnodes; i++) {
        struct cmh_agg_node *n = a->order[i];
        if (n->seen_round == a->round)
            a->order[kept++] = n;
        else
            node_free(n);
    }
    if (kept != a->nnodes) {
        a->nnodes = kept;
        if (rehash(a, a->slots_cap) != 0)
            return -ENOMEM;
    }
    /* Sum in name order, so floating-point sums never depend on which node answered first. */
    if (!a->sorted) {
        qsort(a->order, a->nnodes, sizeof *a->order, cmp_node);
        a->sorted = 1;
    }
    double sum[CMH_M_FAMILIES] = {0};
    uint32_t present = 0; /* families some contributing node exposed: other gauges are not sent */
    double lat_count = 0, lat_sum = 0, lat_min = 0, lat_max = 0;
    int has_lat = 0;
    uint32_t fresh = 0, stale = 0, failed = 0, at_capacity = 0;
    double min_node = 0;
    int has_min_node = 0;
#define HAS_NODE(n, id) (((n)->present >> (id)) & 1)
    for (uint32_t i = 0; i < a->nnodes; i++) {
        struct cmh_agg_node *n = a->order[i];
        int gauges;
        if (n->fresh) {
            fresh++;
            gauges = 1;
            present |= n->present;
            for (int id = 0; id < CMH_M_FAMILIES; id++)
                if (cmh_metrics[id].kind == CMH_METRIC_COUNTER)
                    sum[id] += n->vals[id];
            if (n->lat_count > 0) {
                lat_count += n->lat_count;
                lat_sum += n->lat_sum;
                if (!has_lat || n->lat_min < lat_min)
                    lat_min = n->lat_min;
                if (!has_lat || n->lat_max > lat_max)
                    lat_max = n->lat_max;
                has_lat = 1;
            }
        } else {
            failed++;
            gauges = n->has_state && n->fail_streak <= a->opt.stale_rounds;
            stale += (uint32_t)gauges;
        }
        n->last_fresh = n->fresh;
        n->last_counted = gauges;
        if (n->fresh && HAS_NODE(n, CMH_M_IP_MAX) && HAS_NODE(n, CMH_M_ASSIGNED_IP)) {
            double room = n->vals[CMH_M_IP_MAX] - n->vals[CMH_M_ASSIGNED_IP];
            if (!has_min_node || room < min_node)
                min_node = room;
            has_min_node = 1;
        }
        if (gauges) {
            present |= n->present & gauge_mask();
            for (int id = 0; id < CMH_M_FAMILIES; id++)
                if (cmh_metrics[id].kind == CMH_METRIC_GAUGE_SUM)
                    sum[id] += n->vals[id];
            double max = n->vals[CMH_M_IP_MAX];
            at_capacity += max > 0 && n->vals[CMH_M_ASSIGNED_IP] >= max;
        }
        n->fresh = 0;
    }

    a->datums.n = 0;
    a->has_total = 0;
    int rc = 0;
    /* Counters need a previous scrape to compare with (from the second round on) and at least
     * one node that answered: a round where every scrape failed knows no increase, not zero.
     * Then every counter of the table is published, 0 when no node has the family: client_golang
     * creates a labelled series at its first increment, so on a healthy cluster most error
     * families exist nowhere, and an alarm on them must see 0, not missing data. */
    int counters = a->rounds_finished > 0 && fresh > 0;
    for (int id = 0; id < CMH_M_FAMILIES && rc == 0; id++) {
        enum cmh_metric_kind kind = cmh_metrics[id].kind;
        if (kind == CMH_METRIC_COUNTER) {
            if (counters)
                rc = emit(a, id, sum[id]);
            continue;
        }
        if (!((present >> id) & 1))
            continue;
        if (kind == CMH_METRIC_GAUGE_SUM)
            rc = emit(a, id, sum[id]);
        if (kind == CMH_METRIC_LATENCY && counters && has_lat) {
            struct cmh_datum d = {.metric = cmh_metrics[id].cw_name,
                                  .unit = cmh_metrics[id].unit,
                                  .timestamp_ms = a->start_ms,
                                  .kind = CMH_DATUM_STATS,
                                  .count = lat_count,
                                  .sum = lat_sum,
                                  .min = lat_min,
                                  .max = lat_max,
                                  .dims = {{"CLUSTER_ID", a->cluster_id}},
                                  .ndims = 1};
            a->totals[id] = lat_sum / lat_count;
            a->has_total |= 1ull << id;
            rc = cmh_datum_push(&a->datums, &d);
        }
    }
#define HAS(id) ((present >> (id)) & 1)
    double assigned = sum[CMH_M_ASSIGNED_IP], max = sum[CMH_M_IP_MAX];
    if (rc == 0 && HAS(CMH_M_ASSIGNED_IP) && HAS(CMH_M_TOTAL_IP))
        rc = emit(a, CMH_M_AVAILABLE_IP, sum[CMH_M_TOTAL_IP] - assigned);
    if (rc == 0 && HAS(CMH_M_ASSIGNED_IP) && HAS(CMH_M_IP_MAX) && max > 0)
        rc = emit(a, CMH_M_IP_UTILIZATION, 100.0 * assigned / max);
    if (rc == 0 && HAS(CMH_M_ASSIGNED_IP) && HAS(CMH_M_IP_MAX))
        rc = emit(a, CMH_M_NODES_AT_IP_CAPACITY, at_capacity);
    if (rc == 0 && has_min_node)
        rc = emit(a, CMH_M_MIN_NODE_AVAILABLE_IP, min_node);
#undef HAS
#undef HAS_NODE
    if (rc == 0)
        rc = emit(a, CMH_M_SCRAPE_TARGETS, a->nnodes);
    if (rc == 0)
        rc = emit(a, CMH_M_SCRAPE_FRESH, fresh);
    if (rc == 0)
        rc = emit(a, CMH_M_SCRAPE_STALE, stale);
    if (rc == 0)
        rc = emit(a, CMH_M_SCRAPE_FAILED, failed);
    a->last = (struct cmh_agg_round){a->round, a->start_ms, a->nnodes, fresh, stale, failed};
    a->rounds_finished++;
    return rc;
}

size_t cmh_agg_nodes(const struct cmh_agg *a)
{
    return a->nnodes;
}

void cmh_agg_node_info(const struct cmh_agg *a, size_t i, struct cmh_agg_node_info *out)
{
    const struct cmh_agg_node *n = a->order[i];
    *out = (struct cmh_agg_node_info){
        .name = n->name,
        .fresh = n->last_fresh,
        .counted = n->last_counted,
        .present = n->present,
        .assigned = n->vals[CMH_M_ASSIGNED_IP],
        .total = n->vals[CMH_M_TOTAL_IP],
        .max = n->vals[CMH_M_IP_MAX],
        .eni_allocated = n->vals[CMH_M_ENI_ALLOCATED],
        .eni_max = n->vals[CMH_M_ENI_MAX],
    };
}

int cmh_agg_emit(struct cmh_agg *a, int id, double value, const struct cmh_dim *extra,
                 unsigned nextra)
{
    if (nextra + 1 > CMH_DATUM_MAX_DIMS || id < 0 || id >= CMH_M_COUNT)
        return -EINVAL;
    if (nextra == 0)
        return emit(a, id, value);
    return push(a, id, value, extra, nextra);
}
