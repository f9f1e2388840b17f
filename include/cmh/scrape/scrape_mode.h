/* SCRAPE_MODE decisions, pure (no I/O): how a proxied scrape's outcome maps to a scrape result, and
 * the per-node fallback state of SCRAPE_MODE=auto. Owned by the collector; thread: any (the state
 * is the caller's). */
#ifndef CMH_SCRAPE_MODE_H
#define CMH_SCRAPE_MODE_H

#include "cmh/http/curl_uv.h"
#include "cmh/scrape/scrape.h"

#include <stddef.h>
#include <stdint.h>

/* SCRAPE_MODE, in the order of the config table's words. */
enum cmh_scrape_mode {
    CMH_SCRAPE_MODE_AUTO = 0, /* direct; per node, the proxy after a direct connect failure */
    CMH_SCRAPE_MODE_DIRECT,   /* hostIP:port only */
    CMH_SCRAPE_MODE_PROXY,    /* the API server's pods/proxy only */
};

const char *cmh_scrape_mode_name(enum cmh_scrape_mode m);

/* Why the proxy engine itself ended a transfer early. */
enum cmh_scrape_mode_abort {
    CMH_PROXY_ABORT_NONE = 0,
    CMH_PROXY_ABORT_TOO_LARGE,      /* the body passed max_body */
    CMH_PROXY_ABORT_CONSUMER,       /* the consumer refused the body (begin or body returned <0) */
    CMH_PROXY_ABORT_DEADLINE,       /* the round deadline passed */
    CMH_PROXY_ABORT_STATUS,         /* a status other than 200: its body is not read */
    CMH_PROXY_ABORT_ENCODING,       /* a Content-Encoding other than gzip or identity */
    CMH_PROXY_ABORT_GZIP_TOO_LARGE, /* the gzip body inflated past max_body */
    CMH_PROXY_ABORT_GZIP_ERROR,     /* the gzip body is corrupt or cut short */
};

/* The result of one proxied scrape: err and status as curl_uv reported them (status as seen on
 * the response, even when the transfer was then aborted), what we aborted for, and whether the
 * Content-Type was acceptable (see cmh_scrape_mode_content_type_ok). The API server answers 502
 * and 503 when it cannot reach the pod (connect_error), 504 when that timed out
 * (connect_timeout); every other non-200 status is http_status. A 200 whose transfer broke off
 * (connection reset, or an HTTP/2 stream reset) is truncated; a reset before any body byte (libcurl
 * reports no status then) is reset. */
enum cmh_scrape_result cmh_scrape_mode_proxy_result(enum cmh_curl_uv_error err, long status,
                                                    enum cmh_scrape_mode_abort abort,
                                                    int content_type_ok);

/* 1 when a /metrics Content-Type is acceptable: absent, or text/plain (any parameters). */
int cmh_scrape_mode_content_type_ok(const char *content_type);

/* The per-node state of SCRAPE_MODE=auto: the nodes that are on the proxy now (every other node is
 * direct), in an open-addressing hash table keyed by node name. */
struct cmh_fallback_entry {
    char *name;             /* owned; NULL = empty slot */
    uint64_t recheck_at_ms; /* from then on, the next round tries direct again */
    uint64_t seen_round;    /* last round that routed this node */
};

struct cmh_fallback {
    /* read-only */
    size_t n; /* nodes on the proxy now */
    /* private */
    struct cmh_fallback_entry *v;
    size_t cap; /* a power of two, or 0 */
    uint64_t recheck_ms;
    uint64_t round;
};

enum cmh_route {
    CMH_ROUTE_DIRECT = 0,
    CMH_ROUTE_PROXY,
};

/* What a direct result did to a node's state. */
enum cmh_fallback_event {
    CMH_FALLBACK_NONE = 0, /* direct, and stays direct */
    CMH_FALLBACK_SWITCHED, /* was direct, connect failed: now on the proxy (log it, retry via proxy)
                            */
    CMH_FALLBACK_STAYED,   /* on the proxy, the direct re-check failed to connect again: retry via
                              proxy, re-check later */
    CMH_FALLBACK_BACK,     /* on the proxy, the direct re-check connected: direct from now on */
};

void cmh_fallback_init(struct cmh_fallback *f, uint64_t recheck_ms);
void cmh_fallback_free(struct cmh_fallback *f);

/* Starts a round: nodes not routed during the previous round are forgotten (they left). */
int cmh_fallback_round_begin(struct cmh_fallback *f);

/* Where node name is scraped this round: DIRECT for a node not on the proxy, and for one on the
 * proxy whose re-check time has come (the direct attempt is the re-check); PROXY otherwise. */
enum cmh_route cmh_fallback_route(struct cmh_fallback *f, const char *name, uint64_t now_ms);

/* Records the outcome r of a direct scrape of name at now_ms and says what changed in *ev.
 * Returns 0 or -ENOMEM (the node then stays direct). */
int cmh_fallback_direct_result(struct cmh_fallback *f, const char *name, enum cmh_scrape_result r,
                               uint64_t now_ms, enum cmh_fallback_event *ev);

#endif
