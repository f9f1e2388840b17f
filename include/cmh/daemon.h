/* The daemon: owns the uv loop, the configuration, the log and every module instance; runs the
 * round timer and the graceful stop. Thread: the loop thread only (main owns the one instance). */
#ifndef CMH_DAEMON_H
#define CMH_DAEMON_H

#include "cmh/round/collector.h"
#include "cmh/round/round_expose.h"
#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/discovery.h"
#include "cmh/aws/subnet_watch.h"
#include "cmh/http/expose.h"
#include "cmh/http/http_server.h"
#include "cmh/k8s/leader.h"
#include "cmh/aws/publish.h"
#include "cmh/core/log.h"

#include <uv.h>

struct cmh_daemon;

/* Called at the start of every round, with the round number (1-based) and the wall-clock start
 * in ms since the epoch (the timestamp of every datum of the round). */
typedef void (*cmh_round_cb)(struct cmh_daemon *d, uint64_t round, int64_t start_ms);

struct cmh_daemon {
    /* public */
    cmh_round_cb on_round; /* cmh_daemon_use_collector sets the collector's */
    /* read-only */
    uv_loop_t loop;
    struct cmh_config cfg;
    struct cmh_log log;
    uint64_t round;
    unsigned inflight; /* units of work that a graceful stop waits for */
    int stopping;      /* a stop signal arrived */
    int exit_code;
    unsigned open_handles;
    /* private */
    uv_timer_t round_timer;
    uv_timer_t shutdown_timer;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_signal_t sigusr1; /* runs a round now */
    struct cmh_collector collector;
    int has_collector;
    struct cmh_http_server http;
    int has_http;
    struct cmh_expose expose;             /* /metrics: the parts below, in their order */
    struct cmh_round_expose round_expose; /* the rounds' part of /metrics */
    const char *cluster_id_source; /* where CLUSTER_ID came from (borrowed); NULL: not shown */
    /* SUBNET_METRICS on /metrics: the subnet view's fetches and the free /28 count. */
    struct {
        int on;
        unsigned long long fetches_ok, fetches_failed;
        size_t ids_missing; /* ids of SUBNET_IDS EC2 did not know at the last good fetch */
        double last_ok;     /* Unix seconds of the last good fetch, 0 when none */
        struct cmh_subnet_watch_prefix_status prefix;
    } subnet_expose;
    struct cmh_curl_uv curl; /* HTTPS to Kubernetes and AWS */
    int has_curl;
    struct cmh_discovery disc;
    int has_disc;
    /* With discovery, the first round waits for the first pod list until sync_deadline_ms
     * (uv_now); sync_waiting while a tick was held back, sync_gave_up once the wait timed out. */
    uint64_t sync_deadline_ms;
    int sync_waiting, sync_gave_up;
    struct cmh_leader leader; /* LEADER_ELECTION: only the leader publishes */
    int has_leader;
    unsigned curl_users; /* discovery and leader still stopping: curl closes after them */
    /* Targets: static (SCRAPE_TARGETS, resolved once) or the discovery set held for a round. */
    struct cmh_collector_target *static_targets;
    char **static_ips;
    size_t nstatic;
    struct cmh_discovery_set *round_set;
    struct cmh_collector_target *round_targets;
    size_t round_cap;
    char *cluster_id;         /* the CLUSTER_ID dimension in use */
    struct cmh_publish *pub;  /* USE_CLOUDWATCH */
    char publish_why[160];    /* why the last publisher set-up failed, for /readyz */
    uv_timer_t publish_retry; /* re-resolves region/cluster id after a failure */
    uint64_t stop_at;         /* uv_now when the stop began */
    int flushed;
    /* SUBNET_METRICS: the subnet view (include/cmh/aws/subnet_watch.h), and why its last fetch
     * failed ("" when it did not), for /readyz. */
    struct cmh_subnet_watch *subnets;
    char subnet_why[200];
};

/* Takes ownership of *cfg (left zeroed) and the log settings; sets up the loop, timers and signal
 * watchers. Returns 0 or a negative errno-style code. */
int cmh_daemon_init(struct cmh_daemon *d, struct cmh_config *cfg, int log_fd);

/* Makes every round a collector round (scrape, parse, aggregate, then publish to CloudWatch or,
 * with USE_CLOUDWATCH=no, log every datum; one summary line) and starts our HTTP server
 * (/healthz, /readyz, and /metrics with USE_PROMETHEUS) on PROMETHEUS_ADDRESS:PROMETHEUS_PORT.
 * With CloudWatch, rounds begin once region and cluster id are known. Call after init, before
 * run. Returns 0, -EINVAL for a configuration that cannot work (logged), or another negative
 * code. */
int cmh_daemon_use_collector(struct cmh_daemon *d);

/* Runs rounds until a stop signal (or cmh_daemon_stop). Returns the process exit status: 0 after
 * a graceful stop, 1 if the shutdown deadline cut in-flight work. A second signal exits the
 * process at once with 128+signal. */
int cmh_daemon_run(struct cmh_daemon *d);

/* Begins a graceful stop, as SIGTERM does: no new rounds; the loop ends when in-flight work is
 * done or SHUTDOWN_TIMEOUT passes. */
void cmh_daemon_stop(struct cmh_daemon *d);

/* In-flight work accounting: a graceful stop waits until every begin has had its end. */
void cmh_daemon_work_begin(struct cmh_daemon *d);
void cmh_daemon_work_end(struct cmh_daemon *d);

/* Closes our handles, runs the loop until every close callback ran, closes the loop and frees
 * everything init took. Call after run returned. Returns uv_loop_close's result (0, or UV_EBUSY
 * when a handle someone else opened on the loop is still open). */
int cmh_daemon_close(struct cmh_daemon *d);

#endif
