/* The subnet watch (include/cmh/aws/subnet_watch.h): a timer that lists the ENIConfigs, then
 * describes the subnets on one EC2 client; the view the rounds ask for is cut from the last good
 * fetch, with each subnet's forecast; the free /28 count walks the view's subnets one at a time on
 * a second client. */
#include "cmh/aws/subnet_watch.h"

#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/core/container_of.h"
#include "cmh/core/log.h"
#include "cmh/k8s/eniconfig.h"
#include "cmh/round/blocks28.h"
#include "cmh/round/forecast.h"
#include "cmh/aws/ec2.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct cmh_subnet_watch {
    uv_loop_t *loop;
    struct cmh_log *log;
    const struct cmh_config *cfg;
    struct cmh_ec2 *ec2;
    uv_timer_t timer;
    char **ids; /* SUBNET_IDS */
    size_t nids;
    struct cmh_eniconfig *eni; /* the ENIConfig list; NULL: not read */
    char **missing;            /* ids of SUBNET_IDS EC2 did not know at the last good fetch */
    size_t nmissing;
    int fetching;
    struct cmh_subnet_list all;  /* the last good fetch */
    struct cmh_subnet_list view; /* what the last view call returned */
    uint64_t fetched_at;         /* uv_now of the last good fetch; 0 = none */
    struct forecast *fc;         /* one per subnet of all, same order */
    size_t nfc;
    /* SUBNET_PREFIX_METRICS: a walk over the view's subnets every SUBNET_PREFIX_INTERVAL, one
     * subnet at a time on a client of its own. */
    struct cmh_ec2 *pfx_ec2;
    struct prefixes *pfx;
    size_t npfx;
    char (*walk)[CMH_SUBNET_ID_MAX]; /* the walk's subnets */
    size_t nwalk, walk_i;
    int walking;
    uint64_t walk_started; /* uv_now; 0 = never */
    int pfx_on;            /* SUBNET_PREFIX_METRICS=true, or auto once a node reported prefixes */
    char pfx_denied[512];  /* auto: why a usage call was denied (the count is off); "" = not */
    unsigned long long pfx_ok, pfx_failed, pfx_refused;
    int stale_logged;
    cmh_subnet_watch_fetch_cb on_fetch;
    void *arg;
    cmh_subnet_watch_close_cb close_cb;
    void *close_arg;
    unsigned closing; /* closing: the timer and EC2 clients not closed yet */
};

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_free(v[i]);
    cmh_free(v);
}

/* The subnets named by ENIConfigs at the last good list (none when they are not read). */
static size_t eniconfig_subnets(const struct cmh_subnet_watch *w, const char *const **ids)
{
    *ids = NULL;
    return w->eni != NULL ? cmh_eniconfig_subnets(w->eni, ids) : 0;
}

/* The history of one subnet's free addresses, for its time to exhaustion. */
struct forecast {
    char id[CMH_SUBNET_ID_MAX];
    struct cmh_forecast_series fs;
};

static void free_forecasts(struct forecast *fc, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_forecast_series_close(&fc[i].fs);
    cmh_free(fc);
}

/* A good fetch: each subnet's history (matched by id to the previous fetch, both sorted;
 * subnets gone are forgotten) gets the new count, and its forecast is set on the subnet. Out of
 * memory costs the forecasts (history starts again), not the fetch. */
static void forecast_update(struct cmh_subnet_watch *w, struct cmh_subnet_list *l)
{
    double now_s = (double)uv_now(w->loop) / 1000.0;
    double window_s = (double)w->cfg->forecast_window_ms / 1000.0;
    double interval_s = (double)w->cfg->subnet_interval_ms / 1000.0;
    struct forecast *fc = cmh_calloc(l->n ? l->n : 1, sizeof *fc);
    size_t j = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (fc == NULL) {
            l->v[i].has_tte = 0;
            continue;
        }
        while (j < w->nfc && strcmp(w->fc[j].id, l->v[i].id) < 0)
            cmh_forecast_series_close(&w->fc[j++].fs);
        snprintf(fc[i].id, sizeof fc[i].id, "%s", l->v[i].id);
        if (j < w->nfc && strcmp(w->fc[j].id, l->v[i].id) == 0) {
            fc[i].fs = w->fc[j].fs;
            memset(&w->fc[j++].fs, 0, sizeof w->fc[0].fs);
        } else {
            cmh_forecast_series_init(&fc[i].fs, window_s, interval_s);
        }
        double tte = 0;
        l->v[i].has_tte =
            cmh_forecast_series_add(&fc[i].fs, now_s, (double)l->v[i].available) == 0 &&
            cmh_forecast_series_estimate(&fc[i].fs, &tte) == 0;
        l->v[i].tte_s = tte;
    }
    free_forecasts(w->fc, w->nfc);
    w->fc = fc;
    w->nfc = fc != NULL ? l->n : 0;
}

/* A subnet's free /28 blocks, from its last usage walk, and their forecast. */
struct prefixes {
    char id[CMH_SUBNET_ID_MAX];
    size_t free;
    uint64_t at; /* uv_now of the count */
    int has_tte;
    double tte_s;
    struct cmh_forecast_series fs;
};

static struct prefixes *prefixes_of(struct cmh_subnet_watch *w, const char *id, int add)
{
    for (size_t i = 0; i < w->npfx; i++)
        if (strcmp(w->pfx[i].id, id) == 0)
            return &w->pfx[i];
    if (!add)
        return NULL;
    struct prefixes *v = cmh_reallocarray(w->pfx, w->npfx + 1, sizeof *v);
    if (v == NULL)
        return NULL;
    w->pfx = v;
    struct prefixes *p = &v[w->npfx++];
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    cmh_forecast_series_init(&p->fs, (double)w->cfg->forecast_window_ms / 1000.0,
                             (double)w->cfg->subnet_prefix_interval_ms / 1000.0);
    return p;
}

static void walk_next(struct cmh_subnet_watch *w);

static void on_usage(struct cmh_ec2 *e, int rc, const struct cmh_ec2_cidrs *used, const char *why,
                     void *arg)
{
    struct cmh_subnet_watch *w = arg;
    (void)e;
    const char *id = w->walk[w->walk_i];
    long s = cmh_subnet_list_find_id(&w->all, id);
    const struct cmh_cidr *c4 = NULL;
    for (unsigned k = 0; s >= 0 && k < w->all.v[s].ncidrs; k++)
        if (w->all.v[s].cidrs[k].family == 4)
            c4 = &w->all.v[s].cidrs[k];
    size_t nfree = 0;
    w->pfx_ok += rc == 0;
    w->pfx_failed += rc != 0 && rc != -EACCES;
    w->pfx_refused += rc == -EACCES;
    if (rc == -EACCES && w->cfg->subnet_prefix_metrics == CMH_PREFIX_METRICS_AUTO) {
        /* Prefix delegation was seen, the count was not asked for: said once, then left alone. */
        snprintf(w->pfx_denied, sizeof w->pfx_denied, "%s", why != NULL ? why : "denied");
        CMH_LOG(w->log, CMH_LOG_ERROR,
                "nodes use prefix delegation but counting free /28 blocks was denied: not counted "
                "until restart; the other subnet metrics go on",
                CMH_STR("subnet", id), CMH_STR("why", w->pfx_denied),
                CMH_STR("fix", "attach manifests/iam/subnet-prefix-metrics-policy.json "
                               "(ec2:DescribeNetworkInterfaces, ec2:GetSubnetCidrReservations) to "
                               "this role, or set SUBNET_PREFIX_METRICS=false"));
    } else if (rc != 0) {
        CMH_LOG(w->log, rc == -EACCES ? CMH_LOG_ERROR : CMH_LOG_WARN,
                "free /28 blocks not counted; the subnet's last count stays until it is stale",
                CMH_STR("subnet", id), CMH_STR("why", why));
    } else if (c4 != NULL && cmh_blocks28_free(c4, used->v, used->n, &nfree) == 0) {
        struct prefixes *p = prefixes_of(w, id, 1);
        if (p != NULL) {
            p->free = nfree;
            p->at = uv_now(w->loop);
            double tte = 0;
            p->has_tte =
                cmh_forecast_series_add(&p->fs, (double)p->at / 1000.0, (double)nfree) == 0 &&
                cmh_forecast_series_estimate(&p->fs, &tte) == 0;
            p->tte_s = tte;
        }
        CMH_LOG(w->log, CMH_LOG_DEBUG, "free /28 blocks counted", CMH_STR("subnet", id),
                CMH_UINT("free", nfree), CMH_UINT("used", used->n));
    }
    /* Denied for one subnet is denied for all: the walk ends here, and is logged once. */
    w->walk_i = rc == -EACCES ? w->nwalk : w->walk_i + 1;
    walk_next(w);
}

static void walk_next(struct cmh_subnet_watch *w)
{
    while (w->walk_i < w->nwalk) {
        if (cmh_ec2_subnet_usage(w->pfx_ec2, w->walk[w->walk_i], on_usage, w) == 0)
            return;
        w->walk_i++;
    }
    w->walking = 0;
}

/* Starts a walk over the subnets of the last view when SUBNET_PREFIX_INTERVAL has passed. */
static void maybe_walk(struct cmh_subnet_watch *w)
{
    uint64_t now = uv_now(w->loop);
    if (w->pfx_ec2 == NULL || !w->pfx_on || w->pfx_denied[0] != '\0' || w->walking ||
        w->view.n == 0 ||
        (w->walk_started != 0 && now - w->walk_started < w->cfg->subnet_prefix_interval_ms))
        return;
    char(*ids)[CMH_SUBNET_ID_MAX] = cmh_calloc(w->view.n, sizeof *ids);
    if (ids == NULL)
        return;
    for (size_t i = 0; i < w->view.n; i++)
        snprintf(ids[i], sizeof ids[i], "%s", w->view.v[i].id);
    cmh_free(w->walk);
    w->walk = ids;
    w->nwalk = w->view.n;
    w->walk_i = 0;
    w->walking = 1;
    w->walk_started = now ? now : 1;
    walk_next(w);
}

void cmh_subnet_watch_prefix_delegation(struct cmh_subnet_watch *w, bool seen)
{
    if (!w->pfx_on && seen && w->pfx_ec2 != NULL) {
        w->pfx_on = 1;
        CMH_LOG(w->log, CMH_LOG_INFO,
                "a node reports IPv4 prefixes (prefix delegation): counting free /28 blocks per "
                "subnet",
                CMH_UINT("interval_ms", w->cfg->subnet_prefix_interval_ms));
    }
    if (w->pfx_on && w->walk_started == 0)
        maybe_walk(w); /* the first walk as soon as the view holds subnets */
}

void cmh_subnet_watch_prefix_status(const struct cmh_subnet_watch *w,
                                    struct cmh_subnet_watch_prefix_status *st)
{
    *st =
        (struct cmh_subnet_watch_prefix_status){.on = w->pfx_on && w->pfx_denied[0] == '\0',
                                                .counts_ok = w->pfx_ok,
                                                .counts_failed = w->pfx_failed,
                                                .counts_denied = w->pfx_refused,
                                                .denied = w->pfx_denied[0] ? w->pfx_denied : NULL};
}

static void watch_fetch_done(struct cmh_subnet_watch *w, int rc, const char *why)
{
    w->fetching = 0;
    if (w->on_fetch != NULL)
        w->on_fetch(w->arg, rc, why);
}

static int named(const char *const *v, size_t n, const char *id);

/* After a good fetch: the ids of SUBNET_IDS that EC2 did not know, each logged once when it
 * goes missing (and once when it is back), not at every fetch. */
static void note_missing(struct cmh_subnet_watch *w)
{
    const char *const *ids;
    size_t n = cmh_ec2_missing(w->ec2, &ids);
    char **keep = n > 0 ? cmh_calloc(n, sizeof *keep) : NULL;
    size_t k = 0;
    if (n > 0 && keep == NULL)
        return; /* out of memory: the previous list stays */
    for (size_t i = 0; i < n; i++) {
        if (!named((const char *const *)w->missing, w->nmissing, ids[i]))
            CMH_LOG(w->log, CMH_LOG_WARN,
                    "a subnet of SUBNET_IDS does not exist (InvalidSubnetID.NotFound); left out, "
                    "the others are fetched",
                    CMH_STR("subnet", ids[i]), CMH_STR("fix", "remove it from SUBNET_IDS"));
        if ((keep[k] = cmh_strdup(ids[i])) != NULL)
            k++;
    }
    for (size_t i = 0; i < w->nmissing; i++)
        if (!named((const char *const *)keep, k, w->missing[i]))
            CMH_LOG(w->log, CMH_LOG_INFO, "a subnet of SUBNET_IDS exists again",
                    CMH_STR("subnet", w->missing[i]));
    free_strv(w->missing, w->nmissing);
    w->missing = keep;
    w->nmissing = k;
}

size_t cmh_subnet_watch_missing(const struct cmh_subnet_watch *w)
{
    return w->nmissing;
}

static void on_subnets(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *subnets, const char *why,
                       void *arg)
{
    struct cmh_subnet_watch *w = arg;
    (void)e;
    if (rc != 0) {
        CMH_LOG(w->log, rc == -EACCES ? CMH_LOG_ERROR : CMH_LOG_WARN,
                "subnets not fetched; the last good view stays until it is stale",
                CMH_STR("why", why), CMH_UINT("requests", cmh_ec2_requests(w->ec2)));
        watch_fetch_done(w, rc, why);
        return;
    }
    forecast_update(w, subnets);
    cmh_ec2_take(subnets, &w->all);
    w->fetched_at = uv_now(w->loop);
    if (w->fetched_at == 0)
        w->fetched_at = 1;
    w->stale_logged = 0;
    note_missing(w);
    const char *const *eni;
    CMH_LOG(w->log, CMH_LOG_INFO, "subnets fetched", CMH_UINT("subnets", w->all.n),
            CMH_UINT("eniconfig_subnets", eniconfig_subnets(w, &eni)),
            CMH_UINT("missing", w->nmissing), CMH_UINT("requests", cmh_ec2_requests(w->ec2)));
    watch_fetch_done(w, 0, NULL);
}

static void describe(struct cmh_subnet_watch *w)
{
    int rc = cmh_ec2_describe_subnets(w->ec2, (const char *const *)w->ids, w->nids, on_subnets, w);
    if (rc != 0) {
        CMH_LOG(w->log, CMH_LOG_WARN, "subnets fetch not started", CMH_INT("error", rc));
        watch_fetch_done(w, rc, "not started");
    }
}

static void on_eniconfigs(struct cmh_eniconfig *l, int rc, void *arg)
{
    (void)l;
    (void)rc; /* logged by the list; its previous subnets stay */
    describe(arg);
}

static void on_watch_timer(uv_timer_t *t)
{
    struct cmh_subnet_watch *w = container_of(t, struct cmh_subnet_watch, timer);
    maybe_walk(w);
    if (w->fetching)
        return; /* the previous fetch is still retrying */
    w->fetching = 1;
    /* The ENIConfigs first, so the fetch's view has their subnets; a list that cannot start
     * keeps the previous one. */
    if (w->eni == NULL || cmh_eniconfig_list(w->eni, on_eniconfigs, w) != 0)
        describe(w);
}

static int split_ids(const char *s, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char **v = cmh_reallocarray(*out, *n + 1, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        *out = v;
        if ((v[*n] = cmh_strndup(p, len)) == NULL)
            return -ENOMEM;
        (*n)++;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

int cmh_subnet_watch_new(struct cmh_subnet_watch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_config *cfg, char *const *envp, const char *k8s_server,
                         struct cmh_log *log, cmh_subnet_watch_fetch_cb on_fetch, void *arg)
{
    *out = NULL;
    char err[160];
    if (cfg->subnet_ids != NULL && cfg->subnet_ids[0] != '\0' &&
        cmh_config_check_subnet_ids(cfg->subnet_ids, err, sizeof err) < 0) {
        CMH_LOG(log, CMH_LOG_ERROR, "bad SUBNET_IDS", CMH_STR("error", err));
        return -EINVAL;
    }
    if (cfg->forecast_window_ms < 2 * cfg->subnet_interval_ms)
        CMH_LOG(log, CMH_LOG_WARN,
                "FORECAST_WINDOW is shorter than two SUBNET_METRICS_INTERVALs: no time to "
                "exhaustion will be published",
                CMH_UINT("forecast_window_ms", cfg->forecast_window_ms),
                CMH_UINT("subnet_interval_ms", cfg->subnet_interval_ms),
                CMH_STR("fix", "raise FORECAST_WINDOW or lower SUBNET_METRICS_INTERVAL"));
    struct cmh_subnet_watch *w = cmh_calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->loop = loop;
    w->log = log;
    w->cfg = cfg;
    w->on_fetch = on_fetch;
    w->arg = arg;
    int rc = 0;
    if (cfg->subnet_ids != NULL && cfg->subnet_ids[0] != '\0')
        rc = split_ids(cfg->subnet_ids, &w->ids, &w->nids);
    if (rc == 0 && k8s_server != NULL && w->nids == 0)
        rc = cmh_eniconfig_new(&w->eni, curl, k8s_server, cfg, log);
    struct cmh_ec2_opts eo = {.envp = envp,
                              .region = cfg->aws_region,
                              .timeout_ms = cfg->http_timeout_ms,
                              .backoff_base_ms = cfg->cw_backoff_base_ms,
                              .backoff_cap_ms = cfg->cw_backoff_cap_ms};
    if (rc == 0)
        rc = cmh_ec2_new(&w->ec2, loop, curl, &eo, log);
    if (rc == 0 && cfg->subnet_prefix_metrics != CMH_PREFIX_METRICS_OFF)
        rc = cmh_ec2_new(&w->pfx_ec2, loop, curl, &eo, log);
    w->pfx_on = cfg->subnet_prefix_metrics == CMH_PREFIX_METRICS_ON;
    if (rc == 0)
        rc = uv_timer_init(loop, &w->timer);
    if (rc == 0)
        rc = uv_timer_start(&w->timer, on_watch_timer, 0, cfg->subnet_interval_ms);
    if (rc != 0) {
        cmh_ec2_close(w->ec2, NULL, NULL);
        cmh_ec2_close(w->pfx_ec2, NULL, NULL);
        cmh_eniconfig_free(w->eni);
        free_strv(w->ids, w->nids);
        cmh_free(w);
        return rc;
    }
    CMH_LOG(log, CMH_LOG_INFO, "subnet metrics on",
            CMH_UINT("interval_ms", cfg->subnet_interval_ms), CMH_UINT("subnet_ids", w->nids),
            CMH_BOOL("eniconfigs", w->eni != NULL));
    *out = w;
    return 0;
}

static int named(const char *const *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], id) == 0)
            return 1;
    return 0;
}

const struct cmh_subnet_list *cmh_subnet_watch_view(struct cmh_subnet_watch *w,
                                                    const struct cmh_subnets_node *nodes, size_t n)
{
    if (w->fetched_at == 0)
        return NULL;
    uint64_t age = uv_now(w->loop) - w->fetched_at;
    if (age > 3 * w->cfg->subnet_interval_ms) {
        if (!w->stale_logged)
            CMH_LOG(w->log, CMH_LOG_WARN,
                    "subnet view stale (no good fetch for 3 intervals); subnet datums not "
                    "published",
                    CMH_UINT("age_ms", age));
        w->stale_logged = 1;
        return NULL;
    }
    w->view.n = 0;
    const char *const *eni;
    size_t neni = eniconfig_subnets(w, &eni);
    unsigned char *keep = cmh_calloc(w->all.n ? w->all.n : 1, 1);
    if (keep == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        long s = cmh_subnets_find_ip(&w->all, nodes[i].ip);
        if (s >= 0)
            keep[s] = 1;
    }
    for (size_t i = 0; i < w->all.n; i++) {
        if ((w->nids > 0 || keep[i] || named(eni, neni, w->all.v[i].id)) &&
            cmh_subnet_list_push(&w->view, &w->all.v[i]) != 0) {
            cmh_free(keep);
            return NULL;
        }
    }
    cmh_free(keep);
    /* A forecast counts down from its fetch: the moment of exhaustion stays where it was seen.
     */
    for (size_t i = 0; i < w->view.n; i++) {
        struct cmh_subnet *s = &w->view.v[i];
        if (s->has_tte && s->tte_s < CMH_FORECAST_CAP_S)
            s->tte_s = s->tte_s > (double)age / 1000.0 ? s->tte_s - (double)age / 1000.0 : 0;
        const struct prefixes *p = prefixes_of(w, s->id, 0);
        uint64_t page = p != NULL ? uv_now(w->loop) - p->at : 0;
        s->has_free_prefixes = p != NULL && page <= 3 * w->cfg->subnet_prefix_interval_ms;
        s->free_prefixes = p != NULL ? (int64_t)p->free : 0;
        s->has_prefix_tte = s->has_free_prefixes && p->has_tte;
        s->prefix_tte_s = s->has_prefix_tte ? p->tte_s : 0;
        if (s->has_prefix_tte && s->prefix_tte_s < CMH_FORECAST_CAP_S)
            s->prefix_tte_s = s->prefix_tte_s > (double)page / 1000.0
                                  ? s->prefix_tte_s - (double)page / 1000.0
                                  : 0;
    }
    return &w->view;
}

/* One of the timer and the EC2 clients has closed; the last frees w. */
static void closed_one(struct cmh_subnet_watch *w)
{
    if (--w->closing > 0)
        return;
    if (w->close_cb != NULL)
        w->close_cb(w, w->close_arg);
    cmh_free(w);
}

static void on_watch_timer_closed(uv_handle_t *h)
{
    closed_one(container_of((uv_timer_t *)h, struct cmh_subnet_watch, timer));
}

static void on_client_closed(struct cmh_ec2 *e, void *arg)
{
    (void)e;
    closed_one(arg);
}

void cmh_subnet_watch_close(struct cmh_subnet_watch *w, cmh_subnet_watch_close_cb close_cb,
                            void *arg)
{
    if (w == NULL)
        return;
    w->on_fetch = NULL;
    w->close_cb = close_cb;
    w->close_arg = arg;
    w->closing = 1 + (w->ec2 != NULL) + (w->pfx_ec2 != NULL);
    cmh_eniconfig_free(w->eni); /* a list in flight is cancelled: no fetch follows */
    w->eni = NULL;
    if (w->ec2 != NULL)
        cmh_ec2_close(w->ec2, on_client_closed, w);
    if (w->pfx_ec2 != NULL)
        cmh_ec2_close(w->pfx_ec2, on_client_closed, w);
    free_strv(w->ids, w->nids);
    free_strv(w->missing, w->nmissing);
    cmh_subnet_list_free(&w->all);
    cmh_subnet_list_free(&w->view);
    free_forecasts(w->fc, w->nfc);
    for (size_t i = 0; i < w->npfx; i++)
        cmh_forecast_series_close(&w->pfx[i].fs);
    cmh_free(w->pfx);
    cmh_free(w->walk);
    uv_close((uv_handle_t *)&w->timer, on_watch_timer_closed);
}
