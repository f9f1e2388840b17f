#include "cmh/daemon.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/round/subnets.h"

extern char **environ;

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* With Kubernetes discovery no round runs from a target set that was never listed: a tick before
 * the first list is held back (the list's arrival starts the rounds) until K8S_SYNC_TIMEOUT. */
static int wait_for_sync(struct cmh_daemon *d)
{
    if (!d->has_disc || d->sync_gave_up)
        return 0;
    struct cmh_discovery_status st;
    cmh_discovery_status(&d->disc, &st);
    if (st.synced)
        return 0;
    uint64_t now = uv_now(&d->loop);
    if (now < d->sync_deadline_ms) {
        if (!d->sync_waiting)
            CMH_LOG(&d->log, CMH_LOG_INFO, "first round waits for the first aws-node pod list",
                    CMH_UINT("at_most_ms", d->sync_deadline_ms - now));
        d->sync_waiting = 1;
        uv_timer_start(&d->round_timer, d->round_timer.timer_cb, d->sync_deadline_ms - now,
                       d->cfg.interval_ms);
        return 1;
    }
    d->sync_waiting = 0;
    d->sync_gave_up = 1;
    CMH_LOG(&d->log, CMH_LOG_WARN,
            "no aws-node pod list within K8S_SYNC_TIMEOUT: rounds run without it",
            CMH_UINT("timeout_ms", d->cfg.k8s_sync_timeout_ms),
            CMH_STR("reason", st.last_error[0] ? st.last_error : st.state),
            CMH_STR("fix", "check the API server address, RBAC (list/watch pods) and the token"));
    return 0;
}

/* The first pod list arrived while a round was held back for it: the rounds start now. */
static void on_disc_change(struct cmh_discovery *disc, void *arg)
{
    struct cmh_daemon *d = arg;
    (void)disc;
    if (!d->sync_waiting || d->stopping)
        return;
    d->sync_waiting = 0;
    uv_timer_start(&d->round_timer, d->round_timer.timer_cb, 0, d->cfg.interval_ms);
}

static void on_round_timer(uv_timer_t *t)
{
    struct cmh_daemon *d = container_of(t, struct cmh_daemon, round_timer);
    if (d->stopping || wait_for_sync(d))
        return;
    d->round++;
    int64_t start = wall_ms();
    CMH_LOG(&d->log, CMH_LOG_DEBUG, "round start", CMH_UINT("round", d->round),
            CMH_UINT("targets", d->cfg.targets.n));
    if (d->on_round != NULL)
        d->on_round(d, d->round, start);
}

/* The subnet, AZ and per-node datums of the round (include/cmh/round/subnets.h), added to the
 * aggregator's before they are published, exposed and logged. */
static void subnet_datums(struct cmh_daemon *d, struct cmh_collector *c)
{
    const struct cmh_collector_target *t =
        d->round_set != NULL ? d->round_targets : d->static_targets;
    size_t n = d->round_set != NULL ? d->round_set->n : d->nstatic;
    struct cmh_subnets_opts o = {.per_az = d->cfg.cw_per_az,
                                 .per_node = d->cfg.cw_per_node,
                                 .per_node_max = d->cfg.cw_per_node_max};
    if (d->subnets == NULL && !o.per_node)
        return;
    struct cmh_subnets_node *nodes = cmh_calloc(n ? n : 1, sizeof *nodes);
    int rc = -ENOMEM;
    if (nodes != NULL) {
        for (size_t i = 0; i < n; i++)
            nodes[i] = (struct cmh_subnets_node){t[i].name, t[i].ip};
        const struct cmh_subnet_list *view =
            d->subnets != NULL ? cmh_subnet_watch_view(d->subnets, nodes, n) : NULL;
        rc = cmh_subnets_round_datums(&c->agg, view, nodes, n, &o);
    }
    cmh_free(nodes);
    if (rc != 0)
        CMH_LOG(&d->log, CMH_LOG_ERROR, "out of memory adding subnet datums",
                CMH_UINT("round", c->agg.round));
}

static void on_collector_done(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                              void *arg)
{
    struct cmh_daemon *d = arg;
    subnet_datums(d, c);
    if (d->subnets != NULL)
        cmh_subnet_watch_prefix_delegation(d->subnets,
                                           c->agg.totals[CMH_M_TOTAL_IPV4_PREFIXES] > 0);
    if (d->round_set != NULL) {
        cmh_discovery_set_release(d->round_set);
        d->round_set = NULL;
    }
    cmh_round_expose_add(&d->round_expose, &c->agg);
    struct cmh_cloudwatch_stats cw;
    /* With leader election, only the leader publishes; the others keep scraping, so their state
     * is warm when they take over. */
    int publish = !d->has_leader || cmh_leader_is_leader(&d->leader);
    if (d->cfg.use_cloudwatch && publish) {
        int rc =
            d->pub != NULL ? cmh_publish_datums(d->pub, c->agg.datums.v, c->agg.datums.n) : -EAGAIN;
        if (rc == -EAGAIN)
            CMH_LOG(&d->log, CMH_LOG_WARN,
                    "round not published: CloudWatch publishing is not set up yet",
                    CMH_UINT("round", c->agg.round), CMH_UINT("datums", c->agg.datums.n));
        else if (rc != 0)
            CMH_LOG(&d->log, CMH_LOG_ERROR, "out of memory queueing datums; round not published",
                    CMH_UINT("round", c->agg.round), CMH_UINT("datums", c->agg.datums.n));
    }
    /* A follower's round line shows its publisher's figures too: what it dropped on losing the
     * lease is seen there. */
    struct cmh_kv kv[4];
    size_t n = 0;
    if (d->pub != NULL) {
        cmh_publish_stats(d->pub, &cw);
        kv[n++] = CMH_UINT("cw_published", cw.published);
        kv[n++] = CMH_UINT("cw_queued", cw.in_queue);
        kv[n++] = CMH_UINT("cw_dropped", cw.dropped_overflow + cw.dropped_age + cw.dropped_invalid +
                                             cw.dropped_shutdown + cw.dropped_not_leader);
        if (cw.last_error[0])
            kv[n++] = CMH_STR("cw_last_error", cw.last_error);
    }
    cmh_collector_log_round(c, st, !d->cfg.use_cloudwatch && publish, kv, n);
    cmh_daemon_work_end(d);
}

/* The round's targets: the static list, or the discovered set, held until the round is done. */
static int round_targets(struct cmh_daemon *d, const struct cmh_collector_target **t, size_t *n)
{
    if (!d->has_disc) {
        *t = d->static_targets;
        *n = d->nstatic;
        return 0;
    }
    struct cmh_discovery_set *set = cmh_discovery_acquire(&d->disc);
    if (set->n > d->round_cap) {
        struct cmh_collector_target *v = cmh_reallocarray(d->round_targets, set->n, sizeof *v);
        if (v == NULL) {
            cmh_discovery_set_release(set);
            return -ENOMEM;
        }
        d->round_targets = v;
        d->round_cap = set->n;
    }
    for (size_t i = 0; i < set->n; i++) {
        const struct cmh_discovery_target *x = &set->v[i];
        /* Nodes are the identity the aggregator keeps state under; a pod without a node name yet
         * falls back to its own name. */
        d->round_targets[i] = (struct cmh_collector_target){.name = x->node[0] ? x->node : x->pod,
                                                            .ip = x->ip,
                                                            .port = (uint16_t)d->cfg.ipamd_port,
                                                            .pod = x->pod};
    }
    d->round_set = set;
    *t = d->round_targets;
    *n = set->n;
    return 0;
}

static void collector_round(struct cmh_daemon *d, uint64_t round, int64_t start_ms)
{
    const struct cmh_collector_target *t = NULL;
    size_t n = 0;
    cmh_daemon_work_begin(d);
    int rc = round_targets(d, &t, &n);
    if (rc == 0)
        rc = cmh_collector_round(&d->collector, round, start_ms, t, n, on_collector_done, d);
    if (rc != 0) {
        if (d->round_set != NULL && !d->collector.active) {
            cmh_discovery_set_release(d->round_set);
            d->round_set = NULL;
        }
        cmh_daemon_work_end(d);
    }
}

/* SCRAPE_TARGETS, resolved once at start-up (the only time we may block on DNS). */
static int resolve_static(struct cmh_daemon *d)
{
    size_t n = d->cfg.targets.n;
    d->static_targets = cmh_calloc(n, sizeof *d->static_targets);
    d->static_ips = cmh_calloc(n, sizeof *d->static_ips);
    if (d->static_targets == NULL || d->static_ips == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct cmh_target *t = &d->cfg.targets.v[i];
        char ip[INET6_ADDRSTRLEN];
        const char *why = NULL;
        if (cmh_discovery_resolve_ip(t->host, ip, sizeof ip, &why) != 0) {
            CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot resolve target", CMH_STR("target", t->name),
                    CMH_STR("host", t->host), CMH_STR("error", why));
            return -EINVAL;
        }
        d->static_ips[i] = cmh_strdup(ip);
        if (d->static_ips[i] == NULL)
            return -ENOMEM;
        d->static_targets[i] =
            (struct cmh_collector_target){t->name, d->static_ips[i], t->port, NULL};
        d->nstatic = i + 1;
    }
    return 0;
}

static int start_curl(struct cmh_daemon *d)
{
    if (d->has_curl)
        return 0;
    /* AWS requests trust AWS_CA_BUNDLE; Kubernetes requests name their own CA (K8S_CA_FILE). */
    struct cmh_curl_uv_opts co = {.timeout_ms = d->cfg.http_timeout_ms,
                                  .ca_file = d->cfg.aws_ca_bundle};
    int rc = cmh_curl_uv_init(&d->curl, &d->loop, &co, &d->log);
    if (rc != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot set up HTTPS (libcurl)", CMH_INT("error", rc));
        return rc;
    }
    d->has_curl = 1;
    return 0;
}

static void on_leader_change(struct cmh_leader *l, bool is_leader, void *arg)
{
    struct cmh_daemon *d = arg;
    struct cmh_leader_status st;
    cmh_leader_status(l, &st);
    /* The leader module steps down before another replica may take the lease over; what is queued
     * goes at that moment, so nothing of ours is sent once another replica may lead. */
    struct cmh_cloudwatch_stats cw = {.requests = 0};
    if (d->pub != NULL) {
        cmh_publish_standby(d->pub, !is_leader);
        cmh_publish_stats(d->pub, &cw);
    }
    CMH_LOG(&d->log, CMH_LOG_INFO, is_leader ? "leader: publishing" : "not leader: not publishing",
            CMH_STR("identity", st.identity), CMH_STR("holder", st.holder),
            CMH_UINT("cw_dropped_not_leader", cw.dropped_not_leader),
            CMH_UINT("cw_in_flight", cw.in_flight), CMH_UINT("cw_requests", cw.requests));
}

/* LEADER_ELECTION: campaign for the Lease; rounds publish only while we hold it. */
static int start_leader(struct cmh_daemon *d)
{
    char url[300];
    if (cmh_k8s_api_in_cluster_url(url, sizeof url, NULL) != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "leader election needs the Kubernetes API",
                CMH_STR("fix", "run in a cluster (KUBERNETES_SERVICE_HOST/_PORT) or set "
                               "LEADER_ELECTION=false"));
        return -EINVAL;
    }
    struct cmh_leader_opts o;
    cmh_leader_opts_from_config(&o, &d->cfg);
    o.server = url;
    char err[256];
    if (cmh_leader_check_opts(&o, err, sizeof err) != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "bad leader election settings", CMH_STR("error", err));
        return -EINVAL;
    }
    int rc = start_curl(d);
    if (rc == 0)
        rc = cmh_leader_start(&d->leader, &d->loop, &d->curl, &o, &d->log, on_leader_change, d);
    if (rc != 0)
        return rc;
    d->has_leader = 1;
    return 0;
}

/* In a cluster: list+watch the aws-node pods. */
static int start_discovery(struct cmh_daemon *d)
{
    char url[300];
    if (cmh_k8s_api_in_cluster_url(url, sizeof url, NULL) != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "no scrape targets",
                CMH_STR("fix", "set SCRAPE_TARGETS, or run in a cluster (KUBERNETES_SERVICE_HOST "
                               "and KUBERNETES_SERVICE_PORT are unset)"));
        return -EINVAL;
    }
    struct cmh_discovery_opts o;
    cmh_discovery_opts_from_config(&o, &d->cfg);
    o.server = url;
    char err[256];
    if (cmh_discovery_check_opts(&o, err, sizeof err) != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "bad discovery settings", CMH_STR("error", err));
        return -EINVAL;
    }
    int rc = start_curl(d);
    if (rc == 0)
        rc = cmh_discovery_start(&d->disc, &d->loop, &d->curl, &o, &d->log, on_disc_change, d);
    if (rc != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot start Kubernetes discovery", CMH_INT("error", rc));
        return rc;
    }
    d->has_disc = 1;
    return 0;
}

/* /healthz: answering at all proves the loop is alive. /readyz: every reason not to be ready,
 * one a line. /metrics: only with USE_PROMETHEUS. */
static int http_handler(void *arg, const char *path, struct cmh_buf *body, const char **ctype)
{
    struct cmh_daemon *d = arg;
    if (strcmp(path, "/healthz") == 0) {
        cmh_buf_printf(body, "ok\n");
        return 200;
    }
    if (strcmp(path, "/readyz") == 0) {
        int ready = 1;
        if (d->has_disc) {
            struct cmh_discovery_status st;
            cmh_discovery_status(&d->disc, &st);
            if (!st.synced) {
                cmh_buf_printf(body, "not ready: kubernetes discovery not synced: %s%s\n",
                               st.last_error[0] ? st.last_error : st.state,
                               d->sync_gave_up ? " (K8S_SYNC_TIMEOUT passed: rounds run without "
                                                 "a pod list, scraping nothing)"
                                               : " (the first round waits for the pod list)");
                ready = 0;
            } else if (st.no_pods) {
                cmh_buf_printf(body,
                               "not ready: no aws-node pods in %s (%s); EKS Auto Mode has none: "
                               "nothing to scrape\n",
                               d->cfg.k8s_namespace, d->cfg.k8s_label_selector);
                ready = 0;
            } else if (st.targets == 0) {
                cmh_buf_printf(body, "not ready: %zu aws-node pods, none Running with a hostIP\n",
                               st.pods);
                ready = 0;
            }
        } else if (d->nstatic == 0) {
            cmh_buf_printf(body, "not ready: no scrape targets\n");
            ready = 0;
        }
        if (d->cfg.use_cloudwatch) {
            const char *why = d->publish_why[0] != '\0'
                                  ? d->publish_why
                                  : "CloudWatch publishing not set up yet (see the log)";
            if (d->pub == NULL || cmh_publish_ready(d->pub, &why) != 0) {
                cmh_buf_printf(body, "not ready: %s\n", why);
                ready = 0;
            }
        }
        if (d->collector.rounds_total == 0) {
            cmh_buf_printf(body, "not ready: no round completed yet\n");
            ready = 0;
        }
        if (ready)
            cmh_buf_printf(body, "ready: %u targets, last round %u fresh, %u stale, %u failed\n",
                           d->collector.agg.last.targets, d->collector.agg.last.fresh,
                           d->collector.agg.last.stale, d->collector.agg.last.failed);
        /* A CLUSTER_ID no source named is said (the shared default), but keeps nobody from
         * ready: the original published there without a word. */
        const char *deg = NULL;
        if (d->pub != NULL)
            cmh_publish_cluster_id_source(d->pub, &deg);
        if (deg != NULL)
            cmh_buf_printf(body, "degraded: %s\n", deg);
        /* The subnet view is an extra: a failing fetch is said, but keeps nobody from ready. */
        if (d->subnet_why[0] != '\0')
            cmh_buf_printf(body, "degraded: subnet view: last fetch failed: %s\n", d->subnet_why);
        struct cmh_subnet_watch_prefix_status ps = {0};
        if (d->subnets != NULL)
            cmh_subnet_watch_prefix_status(d->subnets, &ps);
        if (ps.denied != NULL)
            cmh_buf_printf(body, "degraded: free /28 blocks not counted: %s\n", ps.denied);
        if (d->has_disc) {
            struct cmh_discovery_status st;
            cmh_discovery_status(&d->disc, &st);
            if (st.pods_refused > 0)
                cmh_buf_printf(body,
                               "degraded: %llu aws-node pods beyond SCRAPE_MAX_NODES=%zu are not "
                               "scraped\n",
                               (unsigned long long)st.pods_refused, st.max_pods);
        }
        return ready ? 200 : 503;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (!d->cfg.use_prometheus) {
            cmh_buf_printf(body, "not found: set USE_PROMETHEUS=true to serve /metrics\n");
            return 404;
        }
        *ctype = "text/plain; version=0.0.4; charset=utf-8";
        cmh_expose_render(&d->expose, body);
        return 200;
    }
    return 404;
}

/* SCRAPE_MODE auto or proxy: discovered pods may be scraped through the API server's pod proxy. */
static int start_proxy_scraping(struct cmh_daemon *d)
{
    if (d->cfg.scrape_mode == CMH_SCRAPE_MODE_DIRECT)
        return 0;
    if (!d->has_disc) {
        if (d->cfg.scrape_mode == CMH_SCRAPE_MODE_PROXY)
            CMH_LOG(&d->log, CMH_LOG_WARN, "SCRAPE_MODE=proxy does not apply to SCRAPE_TARGETS",
                    CMH_STR("fix", "static targets are always scraped directly"));
        return 0;
    }
    char url[300];
    if (cmh_k8s_api_in_cluster_url(url, sizeof url, NULL) != 0)
        return -EINVAL; /* discovery checked the same values already */
    struct cmh_proxy_scrape_opts o;
    cmh_proxy_scrape_opts_from_config(&o, &d->cfg, url);
    return cmh_collector_enable_proxy(&d->collector, &o);
}

/* Scraping starts once the CLUSTER_ID dimension is known. */
static int start_collector(struct cmh_daemon *d, const char *cluster)
{
    d->cluster_id = cmh_strdup(cluster);
    if (d->cluster_id == NULL)
        return -ENOMEM;
    int rc = cmh_collector_init(&d->collector, &d->loop, &d->cfg, d->cluster_id, &d->log);
    if (rc != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot set up scraping", CMH_INT("error", rc));
        return rc;
    }
    d->has_collector = 1;
    d->on_round = collector_round;
    return start_proxy_scraping(d);
}

static void start_publish(struct cmh_daemon *d);

static void on_publish_retry(uv_timer_t *t)
{
    start_publish(container_of(t, struct cmh_daemon, publish_retry));
}

static void on_publish_ready(struct cmh_publish *p, int rc, const char *why, const char *fix,
                             void *arg)
{
    struct cmh_daemon *d = arg;
    if (d->stopping)
        return;
    if (rc != 0) {
        /* The original helper crash-loops here; we stay up, unready, and try again. */
        CMH_LOG(&d->log, CMH_LOG_ERROR, "CloudWatch publishing not possible yet; retrying in 30s",
                CMH_STR("reason", why), CMH_STR("fix", fix));
        snprintf(d->publish_why, sizeof d->publish_why, "CloudWatch publishing not set up: %s",
                 why != NULL ? why : "unknown");
        cmh_publish_free(p);
        d->pub = NULL;
        uv_timer_start(&d->publish_retry, on_publish_retry, 30000, 0);
        return;
    }
    if (d->has_collector)
        return; /* AWS_CLUSTER_ID was set: scraping runs already */
    d->cluster_id_source = cmh_publish_cluster_id_source(p, NULL);
    if (start_collector(d, cmh_publish_cluster_id(p)) != 0) {
        cmh_daemon_stop(d);
        d->exit_code = 1;
        return;
    }
    /* The first round now, then every interval. */
    uv_timer_start(&d->round_timer, d->round_timer.timer_cb, 0, d->cfg.interval_ms);
}

static void start_publish(struct cmh_daemon *d)
{
    int rc = start_curl(d);
    if (rc == 0)
        rc = cmh_publish_new(&d->pub, &d->loop, &d->curl, &d->cfg, environ, &d->log,
                             on_publish_ready, d);
    if (rc != 0)
        uv_timer_start(&d->publish_retry, on_publish_retry, 30000, 0);
}

static void on_subnets_fetched(void *arg, int rc, const char *why)
{
    struct cmh_daemon *d = arg;
    if (rc == 0) {
        d->subnet_expose.fetches_ok++;
        d->subnet_expose.ids_missing =
            d->subnets != NULL ? cmh_subnet_watch_missing(d->subnets) : 0;
        d->subnet_expose.last_ok = (double)wall_ms() / 1000.0;
        d->subnet_why[0] = '\0';
    } else {
        d->subnet_expose.fetches_failed++;
        snprintf(d->subnet_why, sizeof d->subnet_why, "%s", why != NULL ? why : "failed");
    }
}

/* SUBNET_METRICS: the subnet view, fetched now and every SUBNET_METRICS_INTERVAL. */
static int start_subnets(struct cmh_daemon *d)
{
    d->subnet_expose.on = 1;
    char url[300];
    int in_cluster = cmh_k8s_api_in_cluster_url(url, sizeof url, NULL) == 0;
    int rc = start_curl(d);
    if (rc == 0)
        rc = cmh_subnet_watch_new(&d->subnets, &d->loop, &d->curl, &d->cfg, environ,
                                  in_cluster ? url : NULL, &d->log, on_subnets_fetched, d);
    return rc;
}

/* ---- /metrics: the parts of the exposition, in their order ------------------------------- */

#define PREFIX CMH_EXPOSE_PREFIX

static void expose_round(void *arg, struct cmh_buf *out)
{
    struct cmh_daemon *d = arg;
    cmh_round_expose_cluster(&d->round_expose, &d->collector.agg, d->cluster_id, out);
}

static void expose_cluster_id(void *arg, struct cmh_buf *out)
{
    struct cmh_daemon *d = arg;
    if (d->cluster_id_source == NULL)
        return;
    cmh_expose_family(out, "cluster_id_info", "gauge",
                      "1, labelled with the CLUSTER_ID dimension and where it came from "
                      "(AWS_CLUSTER_ID, ec2-describe-tags:<tag>, aws-node-env, or default: the "
                      "shared k8s-cluster).");
    struct cmh_buf il = {0};
    cmh_buf_add(&il, "{cluster_id=\"", 13);
    cmh_expose_label_value(&il, d->cluster_id ? d->cluster_id : "");
    cmh_buf_add(&il, "\",source=\"", 10);
    cmh_expose_label_value(&il, d->cluster_id_source);
    cmh_buf_add(&il, "\"}", 2);
    cmh_expose_sample(out, PREFIX "cluster_id_info", "", cmh_buf_str(&il), 1);
    cmh_buf_free(&il);
}

static void expose_collector(void *arg, struct cmh_buf *out)
{
    struct cmh_daemon *d = arg;
    cmh_round_expose_collector(&d->collector, out);
}

/* The CloudWatch publisher's figures, once it is set up. */
static void expose_cloudwatch(void *arg, struct cmh_buf *out)
{
    struct cmh_daemon *d = arg;
    if (d->pub == NULL)
        return;
    struct cmh_cloudwatch_stats cw;
    cmh_publish_stats(d->pub, &cw);
    const struct {
        const char *outcome;
        uint64_t n;
    } outcomes[] = {{"published", cw.published},
                    {"dropped_overflow", cw.dropped_overflow},
                    {"dropped_age", cw.dropped_age},
                    {"dropped_invalid", cw.dropped_invalid},
                    {"dropped_shutdown", cw.dropped_shutdown},
                    {"dropped_not_leader", cw.dropped_not_leader}};
    cmh_expose_family(out, "cloudwatch_datums_total", "counter", "Datums by how they ended.");
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
        cmh_buf_printf(out, PREFIX "cloudwatch_datums_total{outcome=\"%s\"} %llu\n",
                       outcomes[i].outcome, (unsigned long long)outcomes[i].n);
    cmh_expose_scalar(out, "cloudwatch_queue_datums", "gauge", "Datums waiting to be published.",
                      cw.in_queue);
    cmh_expose_family(out, "cloudwatch_requests_total", "counter",
                      "PutMetricData attempts by outcome class.");
    for (int k = 0; k < CMH_CW_CLASS_COUNT; k++)
        cmh_buf_printf(out, PREFIX "cloudwatch_requests_total{class=\"%s\"} %llu\n",
                       cmh_cloudwatch_class_name((enum cmh_cw_class)k),
                       (unsigned long long)cw.attempts[k]);
    cmh_expose_scalar(out, "cloudwatch_access_denied", "gauge",
                      "1 while CloudWatch answers AccessDenied.", cw.access_denied ? 1 : 0);
}

/* SUBNET_METRICS: the subnet view's fetches and the free /28 count. */
static void expose_subnets(void *arg, struct cmh_buf *out)
{
    struct cmh_daemon *d = arg;
    if (!d->subnet_expose.on)
        return;
    if (d->subnets != NULL)
        cmh_subnet_watch_prefix_status(d->subnets, &d->subnet_expose.prefix);
    const struct cmh_subnet_watch_prefix_status *prefix = &d->subnet_expose.prefix;
    cmh_expose_family(out, "subnet_fetches_total", "counter",
                      "EC2 DescribeSubnets fetches of the subnet view (SUBNET_METRICS) by result.");
    cmh_buf_printf(out, PREFIX "subnet_fetches_total{result=\"ok\"} %llu\n",
                   d->subnet_expose.fetches_ok);
    cmh_buf_printf(out, PREFIX "subnet_fetches_total{result=\"error\"} %llu\n",
                   d->subnet_expose.fetches_failed);
    cmh_expose_family(
        out, "subnet_last_success_timestamp_seconds", "gauge",
        "When the subnet view was last fetched; 0 before the first good fetch. Subnet and AZ "
        "datums stop 3 intervals after it.");
    cmh_expose_sample(out, PREFIX "subnet_last_success_timestamp_seconds", "", "",
                      d->subnet_expose.last_ok);
    cmh_expose_scalar(out, "subnet_ids_missing", "gauge",
                      "Subnets of SUBNET_IDS that EC2 did not know (deleted?) at the last good "
                      "fetch; left out of the view, each logged once.",
                      (unsigned long long)d->subnet_expose.ids_missing);
    cmh_expose_family(out, "subnet_prefix_counts_total", "counter",
                      "Per-subnet free /28 block counts (DescribeNetworkInterfaces and "
                      "GetSubnetCidrReservations) by result; denied with "
                      "SUBNET_PREFIX_METRICS=auto stops the count (/readyz says degraded).");
    static const char *const results[] = {"ok", "error", "denied"};
    const unsigned long long n[] = {prefix->counts_ok, prefix->counts_failed,
                                    prefix->counts_denied};
    for (int i = 0; i < 3; i++)
        cmh_buf_printf(out, PREFIX "subnet_prefix_counts_total{result=\"%s\"} %llu\n", results[i],
                       n[i]);
    cmh_expose_scalar(out, "subnet_prefix_counting", "gauge",
                      "1 while free /28 blocks are counted (SUBNET_PREFIX_METRICS=true, or auto "
                      "once a node reported IPv4 prefixes and until a call is denied), else 0.",
                      (unsigned long long)(prefix->on != 0));
}

int cmh_daemon_use_collector(struct cmh_daemon *d)
{
    int rc = d->cfg.targets.n > 0 ? resolve_static(d) : start_discovery(d);
    if (rc == 0 && d->cfg.leader_election)
        rc = start_leader(d);
    if (rc == 0 && d->cfg.subnet_metrics)
        rc = start_subnets(d);
    if (d->cfg.cw_per_az && !d->cfg.subnet_metrics)
        CMH_LOG(&d->log, CMH_LOG_WARN, "CW_PER_AZ ignored: nodes are mapped to AZs by subnet",
                CMH_STR("fix", "set SUBNET_METRICS=true"));
    if (rc != 0)
        return rc;
    if (d->cfg.use_cloudwatch) {
        /* With AWS_CLUSTER_ID set, scraping (and our /metrics) need not wait for the region and
         * credentials: rounds run at once, and are published once the publisher is ready. */
        if (d->cfg.cluster_id != NULL && d->cfg.cluster_id[0] != '\0') {
            d->cluster_id_source = "AWS_CLUSTER_ID";
            rc = start_collector(d, d->cfg.cluster_id);
            if (rc != 0)
                return rc;
        }
        start_publish(d);
    } else {
        const char *cluster = d->cfg.cluster_id;
        d->cluster_id_source = "AWS_CLUSTER_ID";
        if (cluster == NULL || cluster[0] == '\0') {
            d->cluster_id_source = "default";
            cluster = "k8s-cluster"; /* the original helper's default */
            CMH_LOG(&d->log, CMH_LOG_WARN, "no cluster id; using the default",
                    CMH_STR("cluster_id", cluster), CMH_STR("fix", "set AWS_CLUSTER_ID"));
        }
        rc = start_collector(d, cluster);
        if (rc != 0)
            return rc;
    }
    struct cmh_http_server_opts ho = {.address = d->cfg.prometheus_address,
                                      .port = (unsigned)d->cfg.prometheus_port};
    rc = cmh_http_server_start(&d->http, &d->loop, &ho, http_handler, d, &d->log);
    /* Even on failure the listener may be closing: close_all waits for it. */
    d->has_http = 1;
    d->round_expose.original_names = d->cfg.prometheus_original_names;
    cmh_expose_add(&d->expose, expose_round, d);
    cmh_expose_add(&d->expose, expose_cluster_id, d);
    cmh_expose_add(&d->expose, expose_collector, d);
    cmh_expose_add(&d->expose, expose_cloudwatch, d);
    cmh_expose_add(&d->expose, expose_subnets, d);
    cmh_expose_add(&d->expose, cmh_expose_http_server, &d->http);
    cmh_expose_add(&d->expose, cmh_expose_log, &d->log);
    return rc;
}

static void on_curl_closed(struct cmh_curl_uv *c)
{
    struct cmh_daemon *d = container_of(c, struct cmh_daemon, curl);
    d->open_handles--;
}

static void close_curl(struct cmh_daemon *d)
{
    if (d->has_curl) {
        d->has_curl = 0;
        d->open_handles++;
        cmh_curl_uv_close(&d->curl, on_curl_closed);
    }
}

/* HTTPS users stop first, then the transport they share. */
static void curl_user_stopped(struct cmh_daemon *d)
{
    d->open_handles--;
    if (--d->curl_users == 0)
        close_curl(d);
}

static void on_disc_stopped(struct cmh_discovery *disc)
{
    curl_user_stopped(container_of(disc, struct cmh_daemon, disc));
}

static void on_leader_stopped(struct cmh_leader *l)
{
    curl_user_stopped(container_of(l, struct cmh_daemon, leader));
}

static void on_http_closed(struct cmh_http_server *s)
{
    struct cmh_daemon *d = container_of(s, struct cmh_daemon, http);
    d->open_handles--;
}

static void on_collector_closed(struct cmh_collector *c)
{
    struct cmh_daemon *d = container_of(c, struct cmh_daemon, collector);
    d->open_handles--;
}

static void on_close(uv_handle_t *h)
{
    struct cmh_daemon *d = h->data;
    d->open_handles--;
}

/* The handles embedded in the daemon itself. */
#define NHANDLES 6
static void own_handles(struct cmh_daemon *d, uv_handle_t *h[NHANDLES])
{
    h[0] = (uv_handle_t *)&d->round_timer;
    h[1] = (uv_handle_t *)&d->shutdown_timer;
    h[2] = (uv_handle_t *)&d->sigterm;
    h[3] = (uv_handle_t *)&d->sigint;
    h[4] = (uv_handle_t *)&d->sigusr1;
    h[5] = (uv_handle_t *)&d->publish_retry;
}

/* Closes every handle we own; the loop then has nothing left and uv_run returns. */
static void close_all(struct cmh_daemon *d)
{
    if (d->has_collector) {
        d->has_collector = 0;
        d->open_handles++;
        cmh_collector_close(&d->collector, on_collector_closed);
    }
    if (d->has_http) {
        d->has_http = 0;
        d->open_handles++;
        cmh_http_server_close(&d->http, on_http_closed);
    }
    if (d->pub != NULL) {
        cmh_publish_free(d->pub);
        d->pub = NULL;
    }
    cmh_subnet_watch_close(d->subnets, NULL, NULL);
    d->subnets = NULL;
    /* Count both users before stopping either: a stop may call back at once. */
    d->curl_users = 1 + (unsigned)d->has_disc + (unsigned)d->has_leader;
    if (d->has_disc) {
        d->has_disc = 0;
        d->open_handles++;
        cmh_discovery_close(&d->disc, on_disc_stopped);
    }
    if (d->has_leader) {
        d->has_leader = 0;
        d->open_handles++;
        cmh_leader_close(&d->leader, on_leader_stopped);
    }
    if (--d->curl_users == 0)
        close_curl(d);
    uv_handle_t *handles[NHANDLES];
    own_handles(d, handles);
    for (size_t i = 0; i < NHANDLES; i++)
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], on_close);
}

static void on_flushed(void *arg)
{
    cmh_daemon_work_end(arg);
}

static void maybe_finish(struct cmh_daemon *d)
{
    if (!d->stopping || d->inflight > 0)
        return;
    /* Rounds are done; what they queued goes out within what is left of the deadline. */
    if (d->pub != NULL && !d->flushed) {
        d->flushed = 1;
        uint64_t spent = uv_now(&d->loop) - d->stop_at;
        uint64_t left = spent < d->cfg.shutdown_timeout_ms ? d->cfg.shutdown_timeout_ms - spent : 0;
        /* The flush ends a little before our own deadline, so it is the one that decides. */
        left = left > 200 ? left - 200 : 0;
        cmh_daemon_work_begin(d);
        if (cmh_publish_flush(d->pub, left, on_flushed, d) == 0)
            return;
        d->inflight--;
    }
    if (d->pub != NULL) {
        struct cmh_cloudwatch_stats cw;
        cmh_publish_stats(d->pub, &cw);
        CMH_LOG(&d->log, CMH_LOG_INFO, "stopped", CMH_UINT("rounds", d->round),
                CMH_UINT("cw_published", cw.published),
                CMH_UINT("cw_dropped_shutdown", cw.dropped_shutdown + cw.in_queue));
    } else {
        CMH_LOG(&d->log, CMH_LOG_INFO, "stopped", CMH_UINT("rounds", d->round));
    }
    close_all(d);
}

static void on_shutdown_deadline(uv_timer_t *t)
{
    struct cmh_daemon *d = container_of(t, struct cmh_daemon, shutdown_timer);
    CMH_LOG(&d->log, CMH_LOG_ERROR, "shutdown deadline passed; abandoning in-flight work",
            CMH_UINT("inflight", d->inflight),
            CMH_UINT("shutdown_timeout_ms", d->cfg.shutdown_timeout_ms));
    d->exit_code = 1;
    d->inflight = 0;
    maybe_finish(d);
}

void cmh_daemon_stop(struct cmh_daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    d->stop_at = uv_now(&d->loop);
    uv_timer_stop(&d->round_timer);
    uv_timer_stop(&d->publish_retry);
    CMH_LOG(&d->log, CMH_LOG_INFO, "stopping", CMH_UINT("inflight", d->inflight),
            CMH_UINT("shutdown_timeout_ms", d->cfg.shutdown_timeout_ms));
    if (d->inflight > 0 || d->pub != NULL)
        uv_timer_start(&d->shutdown_timer, on_shutdown_deadline, d->cfg.shutdown_timeout_ms, 0);
    maybe_finish(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct cmh_daemon *d = s->data;
    if (d->stopping) {
        /* The operator asked twice: do not wait any longer. */
        CMH_LOG(&d->log, CMH_LOG_WARN, "second signal; exiting now", CMH_INT("signal", signum),
                CMH_UINT("inflight", d->inflight));
        _exit(128 + signum);
    }
    CMH_LOG(&d->log, CMH_LOG_INFO, "signal received", CMH_STR("signal", strsignal(signum)));
    cmh_daemon_stop(d);
}

/* SIGUSR1: a round now, outside the timer's rhythm (for people debugging, and for tests that
 * step a simulator between rounds). A round still running makes it a counted, skipped tick. */
static void on_usr1(uv_signal_t *s, int signum)
{
    struct cmh_daemon *d = s->data;
    (void)signum;
    on_round_timer(&d->round_timer);
}

void cmh_daemon_work_begin(struct cmh_daemon *d)
{
    d->inflight++;
}

void cmh_daemon_work_end(struct cmh_daemon *d)
{
    if (d->inflight > 0)
        d->inflight--;
    if (d->stopping && d->inflight == 0) {
        uv_timer_stop(&d->shutdown_timer);
        maybe_finish(d);
    }
}

int cmh_daemon_init(struct cmh_daemon *d, struct cmh_config *cfg, int log_fd)
{
    memset(d, 0, sizeof *d);
    d->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    int level = d->cfg.log_level > CMH_LOG_ERROR ? CMH_LOG_ERROR : d->cfg.log_level;
    cmh_log_init(&d->log, (enum cmh_log_level)level, (enum cmh_log_format)d->cfg.log_format,
                 log_fd);
    int rc = uv_loop_init(&d->loop);
    if (rc != 0)
        return rc;
    uv_handle_t *handles[NHANDLES];
    own_handles(d, handles);
    /* Timers and signal watchers cannot fail to initialise on Linux; assert the contract anyway. */
    rc = uv_timer_init(&d->loop, &d->round_timer);
    if (rc == 0)
        rc = uv_timer_init(&d->loop, &d->shutdown_timer);
    if (rc == 0)
        rc = uv_signal_init(&d->loop, &d->sigterm);
    if (rc == 0)
        rc = uv_signal_init(&d->loop, &d->sigint);
    if (rc == 0)
        rc = uv_signal_init(&d->loop, &d->sigusr1);
    if (rc == 0)
        rc = uv_timer_init(&d->loop, &d->publish_retry);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < NHANDLES; i++) {
        handles[i]->data = d;
        d->open_handles++;
    }
    return 0;
}

int cmh_daemon_run(struct cmh_daemon *d)
{
    int rc = uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    if (rc == 0)
        rc = uv_signal_start(&d->sigint, on_signal, SIGINT);
    if (rc == 0)
        rc = uv_signal_start(&d->sigusr1, on_usr1, SIGUSR1);
    /* The first round runs at once (with discovery, once the pods are listed); later ones every
     * interval. */
    uv_update_time(&d->loop);
    d->sync_deadline_ms = uv_now(&d->loop) + d->cfg.k8s_sync_timeout_ms;
    if (rc == 0)
        rc = uv_timer_start(&d->round_timer, on_round_timer, 0, d->cfg.interval_ms);
    if (rc != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot start", CMH_STR("error", uv_strerror(rc)));
        close_all(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        return 1;
    }
    CMH_LOG(&d->log, CMH_LOG_INFO, "started", CMH_STR("version", CMH_VERSION),
            CMH_UINT("interval_ms", d->cfg.interval_ms), CMH_UINT("targets", d->cfg.targets.n));
    uv_run(&d->loop, UV_RUN_DEFAULT);
    return d->exit_code;
}

int cmh_daemon_close(struct cmh_daemon *d)
{
    if (d->open_handles > 0)
        close_all(d);
    /* Runs the close callbacks of our handles and of any the caller closed on our loop. */
    uv_run(&d->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&d->loop);
    if (rc != 0)
        CMH_LOG(&d->log, CMH_LOG_ERROR, "loop closed with handles open",
                CMH_STR("error", uv_strerror(rc)));
    for (size_t i = 0; i < d->nstatic; i++)
        cmh_free(d->static_ips[i]);
    cmh_free(d->static_ips);
    cmh_free(d->static_targets);
    cmh_free(d->round_targets);
    cmh_free(d->cluster_id);
    cmh_config_free(&d->cfg);
    return rc;
}
