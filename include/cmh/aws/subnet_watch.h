/* The daemon's subnet view: the subnets fetched from EC2 every SUBNET_METRICS_INTERVAL (those of
 * SUBNET_IDS, or every subnet of the region with the ENIConfig list of
 * include/cmh/k8s/eniconfig.h), each subnet's forecast of time to exhaustion, and with
 * SUBNET_PREFIX_METRICS the walk that counts free /28 blocks. Owned by the daemon or the report
 * command (cmh_subnet_watch_new/_close); thread: the loop thread only. */
#ifndef CMH_SUBNET_WATCH_H
#define CMH_SUBNET_WATCH_H

#include "cmh/round/subnets.h"

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

struct cmh_config;
struct cmh_curl_uv;
struct cmh_log;
struct cmh_subnet_watch; /* opaque */

/* Fires after every fetch (rc 0, or < 0 with why), from the loop. */
typedef void (*cmh_subnet_watch_fetch_cb)(void *arg, int rc, const char *why);

/* Fires once per cmh_subnet_watch_close, from the loop, when everything w holds has closed, just
 * before its memory goes. */
typedef void (*cmh_subnet_watch_close_cb)(struct cmh_subnet_watch *w, void *arg);

/* Fetches the subnets now and then every SUBNET_METRICS_INTERVAL: SUBNET_IDS when set (ENIConfigs
 * are then not read; an unknown id is left out), else every subnet of the region (kept whole;
 * cmh_subnet_watch_view picks the cluster's) plus, with k8s_server (NULL: none), the subnets named
 * by ENIConfig resources (404 = the CRD is absent = none; any other failure, 403 without RBAC
 * included, keeps the previous list), listed before every fetch with the service-account token and
 * CA of the config. cfg, envp (read in new) and log are borrowed; on_fetch may be NULL. Returns 0,
 * -EINVAL for a bad SUBNET_IDS or endpoint (logged), -ENOMEM. */
int cmh_subnet_watch_new(struct cmh_subnet_watch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_config *cfg, char *const *envp, const char *k8s_server,
                         struct cmh_log *log, cmh_subnet_watch_fetch_cb on_fetch, void *arg);

/* The cluster's subnets from the last good fetch: those of SUBNET_IDS, or those holding one of
 * nodes' IPs or named by an ENIConfig; sorted by id, owned by w, valid until the next call. NULL
 * when no fetch succeeded yet or the last good one is older than 3 intervals (stale: logged). */
const struct cmh_subnet_list *cmh_subnet_watch_view(struct cmh_subnet_watch *w,
                                                    const struct cmh_subnets_node *nodes, size_t n);

/* How many ids of SUBNET_IDS EC2 did not know at the last good fetch (each is logged once when it
 * goes missing; the view holds the others). */
size_t cmh_subnet_watch_missing(const struct cmh_subnet_watch *w);

/* After every round (after cmh_subnet_watch_view): whether a node of it reports IPv4 prefixes
 * (awscni_total_ipv4_prefixes > 0). With SUBNET_PREFIX_METRICS=auto the first true turns the free
 * /28 count on for good (prefixes may drop to 0 for a while). While the count is on and has not
 * walked yet, the first walk starts as soon as the view holds subnets; later walks follow
 * SUBNET_PREFIX_INTERVAL. */
void cmh_subnet_watch_prefix_delegation(struct cmh_subnet_watch *w, bool seen);

/* The free /28 count as it stands: on (walks run), per-subnet counts by result, and, in auto mode
 * after a denied usage call (the count is then off for good), why (owned by w; NULL otherwise). */
struct cmh_subnet_watch_prefix_status {
    int on;
    unsigned long long counts_ok, counts_failed, counts_denied;
    const char *denied;
};
void cmh_subnet_watch_prefix_status(const struct cmh_subnet_watch *w,
                                    struct cmh_subnet_watch_prefix_status *st);

/* Stops fetching and closes w (NULL: nothing to do): close_cb (may be NULL) fires with arg from
 * the loop once its timer and EC2 clients have closed, then w is freed (keep running the loop). */
void cmh_subnet_watch_close(struct cmh_subnet_watch *w, cmh_subnet_watch_close_cb close_cb,
                            void *arg);

#endif
