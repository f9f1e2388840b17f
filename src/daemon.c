#include "cmh/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_round_timer(uv_timer_t *t)
{
    struct cmh_daemon *d = container_of(t, struct cmh_daemon, round_timer);
    if (d->stopping)
        return;
    d->round++;
    int64_t start = wall_ms();
    CMH_LOG(&d->log, CMH_LOG_DEBUG, "round start", CMH_UINT("round", d->round),
            CMH_UINT("targets", d->cfg.targets.n));
    if (d->on_round != NULL)
        d->on_round(d, d->round, start);
}

static void on_collector_done(struct cmh_collector *c, const struct cmh_scrape_round_stats *st,
                              void *arg)
{
    struct cmh_daemon *d = arg;
    cmh_expose_round(&d->expose, &c->agg);
    cmh_collector_log_round(c, st, !d->cfg.use_cloudwatch);
    cmh_daemon_work_end(d);
}

static void collector_round(struct cmh_daemon *d, uint64_t round, int64_t start_ms)
{
    cmh_daemon_work_begin(d);
    if (cmh_collector_round(&d->collector, round, start_ms, on_collector_done, d) != 0)
        cmh_daemon_work_end(d);
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
        if (d->collector.ntargets == 0) {
            cmh_buf_printf(body, "not ready: no scrape targets\n");
            ready = 0;
        }
        if (d->collector.rounds_total == 0) {
            cmh_buf_printf(body, "not ready: no round completed yet\n");
            ready = 0;
        }
        if (ready)
            cmh_buf_printf(body, "ready: %u targets, last round %u fresh, %u stale, %u failed\n",
                           d->collector.agg.last.targets, d->collector.agg.last.fresh,
                           d->collector.agg.last.stale, d->collector.agg.last.failed);
        return ready ? 200 : 503;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (!d->cfg.use_prometheus) {
            cmh_buf_printf(body, "not found: set USE_PROMETHEUS=true to serve /metrics\n");
            return 404;
        }
        *ctype = "text/plain; version=0.0.4; charset=utf-8";
        cmh_expose_render(&d->expose, &d->collector, d->cfg.cluster_id, body);
        return 200;
    }
    return 404;
}

int cmh_daemon_use_collector(struct cmh_daemon *d)
{
    int rc = cmh_collector_init(&d->collector, &d->loop, &d->cfg, &d->log);
    if (rc != 0) {
        CMH_LOG(&d->log, CMH_LOG_ERROR, "cannot set up scraping", CMH_INT("error", rc));
        return rc;
    }
    d->has_collector = 1;
    d->on_round = collector_round;
    struct cmh_http_server_opts ho = {.address = d->cfg.prometheus_address,
                                      .port = (unsigned)d->cfg.prometheus_port};
    rc = cmh_http_server_start(&d->http, &d->loop, &ho, http_handler, d, &d->log);
    if (rc != 0) {
        /* The listener handle may be closing: count it so close waits for it. */
        d->has_http = 1;
        return rc;
    }
    d->has_http = 1;
    return 0;
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
#define NHANDLES 5
static void own_handles(struct cmh_daemon *d, uv_handle_t *h[NHANDLES])
{
    h[0] = (uv_handle_t *)&d->round_timer;
    h[1] = (uv_handle_t *)&d->shutdown_timer;
    h[2] = (uv_handle_t *)&d->sigterm;
    h[3] = (uv_handle_t *)&d->sigint;
    h[4] = (uv_handle_t *)&d->sigusr1;
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
    uv_handle_t *handles[NHANDLES];
    own_handles(d, handles);
    for (size_t i = 0; i < NHANDLES; i++)
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], on_close);
}

static void maybe_finish(struct cmh_daemon *d)
{
    if (d->stopping && d->inflight == 0) {
        CMH_LOG(&d->log, CMH_LOG_INFO, "stopped", CMH_UINT("rounds", d->round));
        close_all(d);
    }
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
    uv_timer_stop(&d->round_timer);
    CMH_LOG(&d->log, CMH_LOG_INFO, "stopping", CMH_UINT("inflight", d->inflight),
            CMH_UINT("shutdown_timeout_ms", d->cfg.shutdown_timeout_ms));
    if (d->inflight > 0)
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
    cmh_log_init(&d->log, (enum cmh_log_level)d->cfg.log_level,
                 (enum cmh_log_format)d->cfg.log_format, log_fd);
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
    /* The first round runs at once; later ones every interval. */
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
    cmh_config_free(&d->cfg);
    return rc;
}
