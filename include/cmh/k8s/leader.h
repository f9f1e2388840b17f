/* Leader election over a Kubernetes coordination.k8s.io/v1 Lease, like client-go's leaderelection,
 * through curl_uv. The daemon embeds struct cmh_leader and owns it; thread: the loop thread only.
 */
#ifndef CMH_LEADER_H
#define CMH_LEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cmh/http/curl_uv.h"
#include "cmh/k8s/api.h"

struct cmh_log;
struct cmh_config;
struct cmh_leader;

/* Fires from the loop (never inside a leader call) when this replica becomes leader (is_leader
 * true) or stops being leader (false). Never fires after cmh_leader_close was called. */
typedef void (*cmh_leader_change_cb)(struct cmh_leader *l, bool is_leader, void *arg);
typedef void (*cmh_leader_close_cb)(struct cmh_leader *l);

struct cmh_leader_opts {
    const char *server;         /* "https://host:port" (see cmh_k8s_api_in_cluster_url) */
    const char *namespace_name; /* of the Lease; default "kube-system" */
    const char *lease_name;     /* default "cni-metrics-helper" */
    const char *identity;       /* NULL: POD_NAME, else "<hostname>_<pid>" */
    const char *token_file;     /* re-read every minute and after a 401; NULL = no token */
    const char *ca_file;        /* PEM bundle of the cluster CA; NULL = the system store */
    uint64_t lease_duration_ms; /* written to the Lease as leaseDurationSeconds (rounded up to
                                   whole seconds): others take over that long after they saw the
                                   lease last change; 0 = 15 s */
    uint64_t renew_deadline_ms; /* the leader gives up when it could not renew for this long;
                                   0 = 10 s; must be < lease_duration_ms */
    uint64_t retry_period_ms;   /* between attempts; 0 = 2 s; must be < renew_deadline_ms */
    uint64_t seed;              /* PRNG seed for the jitter of candidates; 0 = from the clock */
};

/* Longest leaseDurationSeconds of a Lease honoured (a larger value counts as this): above the
 * longest LEADER_ELECTION_LEASE_DURATION, so a replica of ours is always waited for in full. */
#define CMH_LEADER_LEASE_MAX_S 3600

/* What the elector reads from a Lease (cmh_leader_lease_parse in leader_int.h). */
struct cmh_lease_record {
    char holder[254];          /* spec.holderIdentity; "" when absent, null or empty */
    char renew_time[64];       /* spec.renewTime as written; "" when absent or null */
    char resource_version[64]; /* metadata.resourceVersion; never "" */
    uint64_t duration_ms; /* spec.leaseDurationSeconds * 1000, at most CMH_LEADER_LEASE_MAX_S s;
                             0 when absent or not a positive integer (then a follower waits its
                             own lease duration) */
    int64_t transitions;  /* spec.leaseTransitions; 0 when absent or not an integer >= 0 */
};

/* Counters and state, for /readyz, self-metrics and logs. */
struct cmh_leader_status {
    bool is_leader;
    const char *holder;     /* holderIdentity last seen ("" when none or unknown) */
    const char *identity;   /* ours */
    uint64_t attempts;      /* acquire/renew attempts started */
    uint64_t renewals;      /* successful creates and updates of the Lease */
    uint64_t conflicts;     /* 409 answers: another replica wrote first */
    uint64_t errors;        /* failed requests (network, HTTP status, bad JSON) */
    uint64_t transitions;   /* times this replica became leader */
    const char *last_error; /* "" when none yet; valid until the next leader call */
};

struct cmh_leader {
    /* read-only: set by cmh_leader_start */
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    cmh_leader_change_cb on_change;
    void *arg;
    /* private */
    char *ns, *name, *identity;
    uint64_t lease_ms, renew_ms, retry_ms, request_ms;
    uint64_t rng;
    struct cmh_k8s_api api; /* the server, its CA and the token */
    char *body;             /* of the request in flight */
    struct cmh_k8s_api_req req;
    bool in_flight;
    int step;                         /* what the request in flight is (GET, POST, PUT, release) */
    void *record;                     /* json_t *: the Lease as last read or written */
    struct cmh_lease_record observed; /* the record last seen */
    uint64_t observed_ms;             /* uv_now when observed last changed */
    uint64_t observed_lease_ms;       /* its lease duration (ours when it gave none) */
    uint64_t attempt_ms;              /* uv_now when the attempt in progress started */
    bool leader;
    uv_timer_t retry, deadline;
    unsigned open_handles;
    bool started, stopping, releasing;
    struct cmh_leader_status st;
    char holder[256];
    struct cmh_k8s_api_err err; /* the last error and the count (st.errors) */
    cmh_leader_close_cb close_cb;
};

/* Fills opts from the configuration (strings borrowed from cfg); server is left NULL. */
void cmh_leader_opts_from_config(struct cmh_leader_opts *opts, const struct cmh_config *cfg);

/* Checks the server, the names (namespace a DNS label, lease name a DNS subdomain) and the timing
 * (retry period < renew deadline < lease duration). Returns 0 or -EINVAL with a sentence for a
 * person in err. */
int cmh_leader_check_opts(const struct cmh_leader_opts *opts, char *err, size_t errlen);

/* Starts campaigning on loop through curl (borrowed; must outlive l's activity). Strings of opts
 * are copied. The first attempt starts from the loop. on_change (may be NULL) fires with arg on
 * every change of leadership. Returns 0, -EINVAL (bad opts, logged), -ENOMEM; on failure nothing is
 * left to close. */
int cmh_leader_start(struct cmh_leader *l, uv_loop_t *loop, struct cmh_curl_uv *curl,
                     const struct cmh_leader_opts *opts, struct cmh_log *log,
                     cmh_leader_change_cb on_change, void *arg);

/* True while this replica holds the lease and renewed it within the renew deadline. */
bool cmh_leader_is_leader(const struct cmh_leader *l);

/* Stops campaigning: cmh_leader_is_leader is false from this call on and on_change no longer
 * fires. When leader, releases the Lease (holderIdentity cleared, one PUT bounded by the request
 * timeout, best effort) so another replica takes over at once; a request still in flight is let
 * end first (it may have renewed the Lease: the release names the resourceVersion it left).
 * close_cb (may be NULL) fires from
 * the loop once the release ended and the timers are closed, after which l may be freed. */
void cmh_leader_close(struct cmh_leader *l, cmh_leader_close_cb close_cb);

/* Copies the status (strings point into l). */
void cmh_leader_status(const struct cmh_leader *l, struct cmh_leader_status *st);

#endif
