/* Discovery of the scrape targets by Kubernetes list+watch of the aws-node pods, over curl_uv.
 * The daemon embeds struct cmh_discovery and owns it; thread: the loop thread only. */
#ifndef CMH_DISCOVERY_H
#define CMH_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cmh/curl_uv.h"
#include "cmh/k8s_token.h"

struct cmh_log;
struct cmh_config;
struct cmh_discovery;

/* One target: a Running aws-node pod, scraped on its hostIP (aws-node is hostNetwork). */
struct cmh_discovery_target {
    const char *node; /* spec.nodeName ("" when unset) */
    const char *pod;  /* metadata.name */
    const char *ip;   /* status.hostIP, IPv4 or IPv6 literal */
};

/* An immutable, reference-counted target set, sorted by pod name. */
struct cmh_discovery_set {
    unsigned refs;
    uint64_t generation; /* grows by one with every published change */
    size_t n;
    struct cmh_discovery_target *v;
};

/* Fires from the loop (never inside a discovery call) after the target set changed, and after the
 * first full list even when it changed nothing (it may have found no pod); the new set is
 * published before the call. Changes that arrive together are coalesced into one call. */
typedef void (*cmh_discovery_change_cb)(struct cmh_discovery *d, void *arg);
typedef void (*cmh_discovery_close_cb)(struct cmh_discovery *d);

struct cmh_discovery_opts {
    const char *server;          /* "https://host:port" (see cmh_discovery_server_url) */
    const char *namespace_name;  /* default "kube-system" */
    const char *label_selector;  /* default "k8s-app=aws-node" */
    const char *token_file;      /* re-read every minute and after a 401; NULL = no token */
    const char *ca_file;         /* PEM bundle of the cluster CA; NULL = the system store */
    uint64_t watch_timeout_ms;   /* one watch request (timeoutSeconds); 0 = 5 min */
    uint64_t request_timeout_ms; /* a list page; 0 = 30 s */
    uint64_t backoff_base_ms;    /* full-jitter backoff after errors; 0 = 500 ms */
    uint64_t backoff_cap_ms;     /* 0 = 30 s */
    uint64_t token_max_age_ms;   /* re-read the token after this long; 0 = 60 s */
    size_t page_limit;           /* pods per list page; 0 = 500 */
    size_t max_pods;             /* pods kept at most (MAX_NODES); 0 = CMH_DISCOVERY_MAX_PODS */
    uint64_t seed;               /* PRNG seed for the jitter; 0 = from the clock */
};

/* Everything copied out of the opts and the status, for /readyz and logs. */
struct cmh_discovery_status {
    bool synced;    /* a full list has completed at least once */
    bool watching;  /* a watch stream is open now */
    bool no_pods;   /* synced, and the API has no pod matching the selector (EKS Auto Mode) */
    size_t pods;    /* pods matching the selector, whatever their phase */
    size_t targets; /* Running pods with a hostIP */
    uint64_t generation;
    uint64_t lists;        /* full lists completed */
    uint64_t relists_gone; /* relists forced by 410 Gone */
    uint64_t watches;      /* watch requests started */
    uint64_t errors;       /* failed requests (network, HTTP status, bad JSON) */
    uint64_t token_reads;  /* times the token file was read */
    uint64_t pods_refused; /* aws-node pods not kept because max_pods are */
    size_t max_pods;
    const char *last_error; /* "" when none yet; valid until the next discovery call */
    const char *state;      /* "listing", "watching", "backoff", "stopped" */
};

/* The pods as the pure parsers keep them: a map by name, with only the fields used. */
struct cmh_discovery_pod {
    char *name;
    char *node;
    char ip[48];
    bool running;
};

struct cmh_discovery_pods {
    struct cmh_discovery_pod *v; /* sorted by name */
    size_t n, cap;
    size_t max;       /* a new pod beyond this many is not kept; 0: no bound */
    uint64_t refused; /* pods not kept because of max (each counted once) */
};

/* Default bound on the pods kept: EKS's largest clusters, with room. */
#define CMH_DISCOVERY_MAX_PODS 100000

enum cmh_discovery_event_type {
    CMH_K8S_EV_ADDED,
    CMH_K8S_EV_MODIFIED,
    CMH_K8S_EV_DELETED,
    CMH_K8S_EV_BOOKMARK,
    CMH_K8S_EV_ERROR,
};

/* What one watch line said. */
struct cmh_discovery_event {
    enum cmh_discovery_event_type type;
    char rv[64];  /* object.metadata.resourceVersion ("" for ERROR) */
    long code;    /* ERROR: the Status code (410 = Gone) */
    bool changed; /* the pods map changed */
    bool relist;  /* a kept pod left while pods beyond max exist: list again to take one in */
};

/* Longest watch line accepted (one pod object); a longer one ends the watch as an error. */
#define CMH_DISCOVERY_LINE_MAX (1024 * 1024)

struct cmh_discovery {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    cmh_discovery_change_cb on_change;
    void *arg;
    /* Private. */
    char *server, *ns, *selector, *ca_file;
    uint64_t watch_timeout_ms, request_timeout_ms, backoff_base_ms, backoff_cap_ms;
    struct cmh_k8s_token tok;
    size_t page_limit;
    uint64_t rng;
    struct cmh_discovery_pods pods;    /* what the API says now */
    struct cmh_discovery_pods listing; /* pages of a list in progress */
    uint64_t refused_logged;           /* pods.refused when last logged */
    struct cmh_discovery_set *set;     /* published */
    char rv[64];                       /* resume point of the watch */
    char *cont;                        /* continue token of a paginated list */
    char *url;
    const char *headers[2];
    struct cmh_curl_uv_req req;
    bool in_flight;
    int mode; /* 0 list, 1 watch */
    bool abort_gone, abort_bad, abort_room;
    bool watch_got_data;
    char *line;
    size_t line_len, line_cap;
    size_t line_max; /* longest watch line; 0 = CMH_DISCOVERY_LINE_MAX (the fuzzer lowers it) */
    unsigned attempt;
    uv_timer_t retry, notify;
    unsigned open_handles;
    bool started, stopping, dirty, synced, watching;
    bool sync_told; /* on_change fired after the first list */
    struct cmh_discovery_status st;
    char last_error[256];
    cmh_discovery_close_cb close_cb;
};

/* Builds "https://host:port" from KUBERNETES_SERVICE_HOST/_PORT values (IPv6 in brackets).
 * Returns 0, or -EINVAL when host or port is missing or bad, -ENOSPC when len is too small. */
int cmh_discovery_server_url(char *buf, size_t len, const char *host, const char *port);

/* Resolves a SCRAPE_TARGETS host (name or literal) to the numeric address of its first answer,
 * blocking on DNS (start-up only). Returns 0; -EINVAL when it does not resolve, with *why (if not
 * NULL) set to the resolver's message or "no address". */
int cmh_discovery_resolve_ip(const char *host, char *ip, size_t len, const char **why);

/* Fills opts from the configuration (strings borrowed from cfg); server is left NULL. */
void cmh_discovery_opts_from_config(struct cmh_discovery_opts *opts, const struct cmh_config *cfg);

/* Checks namespace (DNS-1123 label) and label selector (equality terms). Returns 0 or -EINVAL
 * with a sentence for a person in err. */
int cmh_discovery_check_opts(const struct cmh_discovery_opts *opts, char *err, size_t errlen);

/* Starts list+watch on loop through curl (borrowed; must outlive d's activity). Strings of opts
 * are copied. on_change (may be NULL) fires with arg after every published change. Returns 0,
 * -EINVAL (bad opts), -ENOMEM, or a UV error; on failure nothing is left to close. */
int cmh_discovery_start(struct cmh_discovery *d, uv_loop_t *loop, struct cmh_curl_uv *curl,
                        const struct cmh_discovery_opts *opts, struct cmh_log *log,
                        cmh_discovery_change_cb on_change, void *arg);

/* Cancels the request in flight and closes the timers; close_cb (may be NULL) fires from the loop
 * once everything is closed, after which d may be freed. Sets held by callers stay valid. */
void cmh_discovery_stop(struct cmh_discovery *d, cmh_discovery_close_cb close_cb);

/* The current targets, valid until the next change callback (or until stop). *generation (may be
 * NULL) tells which publication this is. The last known targets are kept through API errors. */
const struct cmh_discovery_target *cmh_discovery_targets(const struct cmh_discovery *d, size_t *n,
                                                         uint64_t *generation);

/* A counted reference to the current set, for a round that must outlive change callbacks. Never
 * NULL after a successful start. Release with cmh_discovery_set_release. */
struct cmh_discovery_set *cmh_discovery_acquire(struct cmh_discovery *d);
void cmh_discovery_set_release(struct cmh_discovery_set *set);

/* Copies the status (strings point into d). */
void cmh_discovery_status(const struct cmh_discovery *d, struct cmh_discovery_status *st);

/* Pure parsers (no I/O), used by the watch and by the fuzzer. */
void cmh_discovery_pods_free(struct cmh_discovery_pods *pods);
/* Parses one page of a PodList into pods (adding to it). rv and cont receive
 * metadata.resourceVersion and metadata.continue ("" when absent). Returns 0, -EBADMSG (not a
 * PodList), -E2BIG (a field too long for its buffer) or -ENOMEM. */
int cmh_discovery_parse_list(struct cmh_discovery_pods *pods, const char *buf, size_t len, char *rv,
                             size_t rvlen, char *cont, size_t contlen);
/* Applies one watch event line to pods. Returns 0 with ev filled, -EBADMSG or -ENOMEM. */
int cmh_discovery_parse_event(struct cmh_discovery_pods *pods, const char *line, size_t len,
                              struct cmh_discovery_event *ev);
/* Builds a target set from pods (Running with a hostIP). Returns NULL on -ENOMEM. */
struct cmh_discovery_set *cmh_discovery_set_build(const struct cmh_discovery_pods *pods,
                                                  uint64_t generation);

/* The watch stream's framing (what libcurl's chunks of a 200 watch answer go through; a test and
 * fuzz seam, no I/O): cuts data into lines, a line possibly spanning chunks (kept in d->line) and
 * never longer than d->line_max, applies each non-blank line as an event to d->pods and d->rv and
 * records failures in d->last_error and d->st.errors (logged when d->log is set). Only those
 * fields, d->line* and d->abort_* are used: a zeroed struct with pods.max set is enough.
 * *changed says whether the pods map, or the count of pods beyond its bound, changed. Returns 0
 * to go on, or 1 when the watch must end: an ERROR event (410: d->abort_gone), a bad event, a line
 * too long or out of memory (d->abort_bad), a kept pod deleted while pods beyond the bound wait
 * (d->abort_room: a list takes one in); later data is then not applied. */
int cmh_discovery_watch_feed(struct cmh_discovery *d, const char *data, size_t len, bool *changed);

#endif
