/* Discovery of the scrape targets by Kubernetes list+watch of the aws-node pods, over curl_uv.
 * The daemon embeds struct cmh_discovery and owns it; thread: the loop thread only. */
#ifndef CMH_DISCOVERY_H
#define CMH_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cmh/http/curl_uv.h"
#include "cmh/core/log.h"
#include "cmh/k8s/api.h"

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
    /* read-only */
    unsigned refs;
    uint64_t generation; /* grows by one with every published change */
    size_t n;
    struct cmh_discovery_target *v;
};

/* Fires from the loop (never inside a discovery call) after the target set changed, and after the
 * first full list even when it changed nothing (it may have found no pod); the new set is
 * published before the call. Changes are coalesced: at most one call a second, however many
 * events arrive. */
typedef void (*cmh_discovery_change_cb)(struct cmh_discovery *d, void *arg);
typedef void (*cmh_discovery_close_cb)(struct cmh_discovery *d);

struct cmh_discovery_opts {
    const char *server;          /* "https://host:port" (see cmh_k8s_api_in_cluster_url) */
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
    const char *last_error;   /* "" when none yet; valid until the next discovery call */
    const char *state;        /* "listing", "watching", "backoff", "stopped" */
    uint64_t set_builds;      /* target sets built (at most one a second, and one per acquire) */
    uint64_t items_too_large; /* listed pods skipped: one object over CMH_DISCOVERY_ITEM_MAX */
};

/* The pods as the pure parsers keep them: a map by name, with only the fields used. */
struct cmh_discovery_pod {
    /* read-only */
    char *name;
    char *node;
    char ip[48];
    bool running;
    /* private: the AVL tree over the pods by name (indices into v plus one; 0 = none) */
    unsigned char height;
    uint32_t left, right;
};

/* Lookup, insertion and removal take O(log n) name comparisons whatever the order pods come in
 * (an AVL tree over v); the target set is built from the tree in name order. */
struct cmh_discovery_pods {
    /* public */
    size_t max; /* a new pod beyond this many is not kept; 0: no bound */
    /* read-only */
    struct cmh_discovery_pod *v; /* in no order (a removal moves the last pod into its place) */
    size_t n, cap;
    uint64_t refused; /* pods not kept because of max (each counted once) */
    /* private */
    uint32_t root;    /* the tree's root (index into v plus one; 0 = empty) */
    size_t targets;   /* pods that are targets (Running with a hostIP) */
    uint64_t version; /* grows whenever the targets (names, nodes, addresses) may have changed */
    uint64_t steps;   /* name comparisons, rotations and pods moved so far: the work done */
};

/* Default bound on the pods kept: EKS's largest clusters, with room. */
#define CMH_DISCOVERY_MAX_PODS 100000

/* Longest watch line accepted (one pod object); a longer one ends the watch as an error. */
#define CMH_DISCOVERY_LINE_MAX (1024 * 1024)
/* Largest pod object of a list page held at once (the page itself is never held), in bytes and in
 * JSON values (objects, arrays and members or elements: a real aws-node pod has about 1,200); a
 * larger one is skipped and counted. A watch event line over the values bound is refused. These
 * bound jansson's tree of one pod to about 15 MB whatever it holds. */
#define CMH_DISCOVERY_ITEM_MAX    CMH_DISCOVERY_LINE_MAX
#define CMH_DISCOVERY_ITEM_VALUES 65536

/* A PodList page parsed as it streams (cmh_discovery_list_begin in discovery_int.h), embedded in
 * struct cmh_discovery. */
struct cmh_discovery_list_parser {
    /* private */
    struct cmh_discovery_pods *pods;
    size_t item_max;
    int state, rc;
    int key;   /* what the value being read is for */
    int cut;   /* how the value being cut ends */
    char *buf; /* the value being cut: one item, key or top-level value */
    size_t len, cap;
    unsigned depth; /* brackets open in the value being cut */
    size_t values;  /* values begun in it */
    bool in_str, esc, too_large;
    bool seen_meta, meta_ok, seen_items;
    char *rv, *cont; /* metadata.resourceVersion and .continue (NULL when absent) */
    uint64_t items_too_large;
};

struct cmh_discovery {
    /* read-only: set by cmh_discovery_start */
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    cmh_discovery_change_cb on_change;
    void *arg;
    /* private */
    char *ns, *selector;
    uint64_t watch_timeout_ms, request_timeout_ms, backoff_base_ms, backoff_cap_ms;
    struct cmh_k8s_api api; /* the server, its CA and the token */
    size_t page_limit;
    uint64_t rng;
    struct cmh_discovery_pods pods;    /* what the API says now */
    struct cmh_discovery_pods listing; /* pages of a list in progress */
    uint64_t refused_logged;           /* pods.refused when last logged */
    struct cmh_discovery_set *set;     /* published */
    char rv[64];                       /* resume point of the watch */
    char *cont;                        /* continue token of a paginated list */
    struct cmh_k8s_api_req req;
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
    struct cmh_k8s_api_err err; /* the last error and the count (st.errors) */
    cmh_discovery_close_cb close_cb;
    uint64_t built_version;   /* pods.version the published set was built from */
    uint64_t last_publish_ms; /* when the notify timer last published (uv_now) */
    bool unnotified;          /* a set was built by acquire and on_change has not fired for it */
    struct cmh_ratelimit change_log;     /* "scrape targets changed": one line per window */
    uint64_t change_log_window_ms;       /* start of the current window (uv_now) */
    size_t change_log_suppressed;        /* lines held back in the windows since the last line */
    struct cmh_discovery_list_parser lp; /* the list page being streamed */
    char err_body[128];                  /* the start of an error answer's body */
    size_t err_len;
    size_t list_bytes; /* bytes of the page being streamed */
};

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
void cmh_discovery_close(struct cmh_discovery *d, cmh_discovery_close_cb close_cb);

/* The current targets, valid until the next change callback (or until close). *generation (may be
 * NULL) tells which publication this is. The last known targets are kept through API errors. */
const struct cmh_discovery_target *cmh_discovery_targets(const struct cmh_discovery *d, size_t *n,
                                                         uint64_t *generation);

/* A counted reference to the current set, for a round that must outlive change callbacks: built
 * now when the pods changed since the last set (so a round never sees a set older than the pods
 * known). Never NULL after a successful start (on -ENOMEM, the last set). Release with
 * cmh_discovery_set_release. */
struct cmh_discovery_set *cmh_discovery_acquire(struct cmh_discovery *d);
void cmh_discovery_set_release(struct cmh_discovery_set *set);

/* Copies the status (strings point into d). */
void cmh_discovery_status(const struct cmh_discovery *d, struct cmh_discovery_status *st);

/* Pure (no I/O): the pods store, and the PodList parser report uses for its one list. The
 * streaming parser, the watch's and the store's checks are in discovery_int.h. */
void cmh_discovery_pods_free(struct cmh_discovery_pods *pods);
/* Parses one page of a PodList into pods (adding to it), through the streaming parser above in
 * one chunk. rv and cont receive metadata.resourceVersion and metadata.continue ("" when absent).
 * Returns 0, -EBADMSG (not a PodList), -E2BIG (a field too long for its buffer) or -ENOMEM. */
int cmh_discovery_parse_list(struct cmh_discovery_pods *pods, const char *buf, size_t len, char *rv,
                             size_t rvlen, char *cont, size_t contlen);
/* Builds a target set from pods (Running with a hostIP). Returns NULL on -ENOMEM. */
struct cmh_discovery_set *cmh_discovery_set_build(const struct cmh_discovery_pods *pods,
                                                  uint64_t generation);

#endif
