/* Scrape engine: one HTTP/1.1 GET /metrics per target per round over libuv TCP, bounded in-flight,
 * bodies streamed to a consumer. Owned by the daemon (embedded); thread: the loop thread only. */
#ifndef CMH_SCRAPE_H
#define CMH_SCRAPE_H

#include "cmh/core/gz.h"
#include "cmh/core/log.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct cmh_config;

/* The outcome of one target in one round. Everything but CMH_SCRAPE_OK is a failure: the target
 * contributes nothing from that round (its consumer saw end() with the failure). */
enum cmh_scrape_result {
    CMH_SCRAPE_OK = 0,
    CMH_SCRAPE_CONNECT_REFUSED,  /* RST to our SYN (nothing listening) */
    CMH_SCRAPE_CONNECT_TIMEOUT,  /* the deadline passed before the connection was up */
    CMH_SCRAPE_CONNECT_ERROR,    /* any other connect failure (unreachable, no address...) */
    CMH_SCRAPE_RESET,            /* the peer reset the connection, or a write failed */
    CMH_SCRAPE_TRUNCATED,        /* the peer closed before the response was complete */
    CMH_SCRAPE_RESPONSE_TIMEOUT, /* connected, but the response did not finish by the deadline */
    CMH_SCRAPE_HTTP_STATUS,      /* a status other than 200 */
    CMH_SCRAPE_CONTENT_TYPE,     /* Content-Type not text/plain */
    CMH_SCRAPE_BODY_TOO_LARGE,   /* body (or Content-Length) above max_body */
    CMH_SCRAPE_MALFORMED_HTTP,   /* llhttp rejected the response, or headers above max_header */
    CMH_SCRAPE_PARSE_ERROR,      /* the consumer rejected the body */
    CMH_SCRAPE_SKIPPED,          /* the round deadline passed before this target was started */
    CMH_SCRAPE_CONTENT_ENCODING, /* a Content-Encoding other than gzip or identity */
    CMH_SCRAPE_GZIP_TOO_LARGE,   /* the gzip body inflates past max_body (a gzip bomb) */
    CMH_SCRAPE_GZIP_ERROR,       /* the gzip body is corrupt or ends before its gzip stream does */
    CMH_SCRAPE_NRESULTS
};

/* "ok", "connect_refused", ... : stable snake_case names for logs and metrics labels. */
const char *cmh_scrape_result_name(enum cmh_scrape_result r);

/* An IPv4 or IPv6 socket address (28 bytes: 100,000 targets cost 3.6 MB, not 13). */
union cmh_scrape_addr {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
};

/* A target, resolved once by the caller (IP literals: see cmh_scrape_target_set). The engine
 * borrows the array for the duration of a round. */
struct cmh_scrape_target {
    const char *name;           /* for logs; borrowed */
    union cmh_scrape_addr addr; /* AF_INET or AF_INET6, port set */
};

/* Fills t from an IP literal (IPv4 or IPv6, no brackets) and a port. name is borrowed. Host names
 * are not resolved here: discovery hands us pod IPs. Returns 0 or -EINVAL. */
int cmh_scrape_target_set(struct cmh_scrape_target *t, const char *name, const char *ip,
                          uint16_t port);

/* What the engine records for every target of a round. */
struct cmh_scrape_record {
    uint8_t result;       /* enum cmh_scrape_result */
    uint8_t reused;       /* 1 when the response came over a kept-alive connection */
    uint16_t http_status; /* 0 when no status line was read */
    uint32_t duration_us; /* from the start of this target's scrape to its result */
    uint32_t bytes;       /* bytes read from the socket (headers and body, as sent: compressed) */
};

/* Where body bytes go. All callbacks run on the loop thread. For each target that returns a 200
 * with an acceptable Content-Type, begin() is called once, then body() zero or more times with
 * the bytes in order (a gzip body inflated) (the buffer is only valid during the call), then end()
 * exactly once. Targets that fail before the headers are complete never see begin(). */
struct cmh_scrape_consumer {
    void *arg;
    /* Returns 0 with *ctx set, or <0 to fail the target as a parse error (end() is not called). */
    int (*begin)(void *arg, size_t target_index, void **ctx);
    /* Returns 0 to go on, or <0 to abort: the target fails as CMH_SCRAPE_PARSE_ERROR. */
    int (*body)(void *ctx, const char *buf, size_t len);
    /* The last call for this ctx. result is CMH_SCRAPE_OK when the whole body arrived; end may then
     * return <0 (e.g. the text ended mid-line) and the target fails as a parse error. For any
     * other result the consumer must drop what it got from this target. The return value is
     * ignored for failures. */
    int (*end)(void *ctx, enum cmh_scrape_result result);
};

struct cmh_scrape_opts {
    unsigned concurrency;      /* open connections at most (in flight + idle keep-alive) */
    uint64_t timeout_ms;       /* per target: connect + whole response */
    uint64_t round_timeout_ms; /* whole round; 0 = no round deadline */
    uint64_t jitter_ms;        /* starts spread over this window, in a random order */
    uint64_t max_body;         /* body bytes, as sent and, for a gzip body, once inflated */
    uint32_t max_header;       /* status line + headers bytes */
    int keepalive;             /* keep idle connections for the next round */
    unsigned log_failures;     /* failure lines per round before only the summary is logged */
    uint64_t seed;             /* of the per-round start order; 0 = from the clock */
    const char *user_agent;    /* borrowed; NULL = "cni-metrics-helper/VERSION" */
    /* Send Accept-Encoding: gzip. A gzip body is inflated as it streams, into the consumer, by an
     * inflater (about 40 KB) held only while that body is read and reused across rounds, so there
     * are at most as many as bodies being read at once. Inflated whether asked for or not. */
    int gzip;
};

/* Defaults: 1000 connections, 5 s, no round deadline, 1 s jitter, 4 MiB body, 16 KiB header,
 * keep-alive on, 10 failure lines per round, gzip on. */
void cmh_scrape_opts_default(struct cmh_scrape_opts *o);

/* Options from the configuration: SCRAPE_* variables; the round deadline is
 * SCRAPE_ROUND_TIMEOUT, or 80% of METRIC_UPDATE_INTERVAL when 0, and always below the interval;
 * the per-target timeout and the jitter window are cut to fit inside it. */
void cmh_scrape_opts_from_config(struct cmh_scrape_opts *o, const struct cmh_config *cfg);

/* Totals of one round, valid in the done callback. */
struct cmh_scrape_round_stats {
    uint64_t round; /* 1-based count of rounds run by this scraper */
    size_t targets;
    size_t count[CMH_SCRAPE_NRESULTS]; /* targets per result */
    size_t connects;                   /* TCP connects attempted */
    size_t reused;                     /* responses over kept-alive connections */
    size_t retried;                    /* stale kept-alive connections retried fresh */
    uint64_t bytes;                    /* read from sockets */
    uint64_t wall_us;                  /* round start to done */
    unsigned peak_open;                /* most connections open at once */
    size_t logged, suppressed;         /* failure lines written / held back */
    size_t no_fds;                     /* connects refused for lack of a file descriptor */
    size_t gzip;                       /* responses that came gzip-encoded */
};

struct cmh_scraper;
/* Fires once per round, on the loop thread, after every target has its record; from here the
 * target array and consumer are no longer used. A new round may be started from inside it. */
typedef void (*cmh_scrape_done_cb)(struct cmh_scraper *s, const struct cmh_scrape_round_stats *st,
                                   void *arg);
typedef void (*cmh_scrape_close_cb)(struct cmh_scraper *s);

struct cmh_scrape_conn;

/* Embed it in its owner. */
struct cmh_scraper {
    /* private */
    uv_loop_t *loop;
    struct cmh_log *log;
    struct cmh_scrape_opts opts;
    char user_agent[96];
    uv_timer_t pace_timer;     /* releases targets over the jitter window */
    uv_timer_t deadline_timer; /* per-target deadlines: the head of the active list */
    uv_timer_t round_timer;    /* the round deadline; also defers done when a round is empty */
    unsigned handles_open;
    int closing;
    int pumping;
    cmh_scrape_close_cb close_cb;

    /* The round in progress. */
    int active;
    const struct cmh_scrape_target *targets;
    size_t ntargets;
    struct cmh_scrape_consumer consumer;
    cmh_scrape_done_cb done_cb;
    void *done_arg;
    struct cmh_scrape_record *records; /* ntargets of them, reused across rounds */
    size_t records_cap;
    uint32_t *order; /* start order: a permutation of the target indexes */
    size_t next;     /* targets started so far (in order) */
    size_t finished;
    uint64_t round_start_ns;
    uint64_t round_start_ms; /* uv_now */
    struct cmh_scrape_round_stats stats;
    uint64_t rng;
    struct cmh_ratelimit loglimit;

    /* Connections. */
    unsigned open;     /* sockets open (fd held): in flight + idle */
    unsigned inflight; /* scraping now */
    struct cmh_scrape_conn *active_head, *active_tail; /* in flight, by deadline */
    struct cmh_scrape_conn *idle_head, *idle_tail;     /* idle keep-alive, oldest first */
    struct cmh_scrape_conn **idle_map;                 /* by address: buckets of idle conns */
    size_t idle_map_mask;
    struct cmh_scrape_conn *free_list; /* closed conns kept for reuse */
    unsigned closing_conns;            /* uv_close not yet called back */
    char *rbuf;                        /* one read buffer shared by all connections */
    size_t rbuf_len;
    struct cmh_gunzip_pool gz; /* inflaters: a gzip body holds one while it is read */
};

/* Initialises s on loop with a copy of *o (user_agent copied too). log is borrowed. Caps
 * o->concurrency at the open-file limit minus a reserve, with a warning. Returns 0 or -ENOMEM. */
int cmh_scraper_init(struct cmh_scraper *s, uv_loop_t *loop, const struct cmh_scrape_opts *o,
                     struct cmh_log *log);

/* Starts a round over targets[0..n): every target gets exactly one record. targets and the
 * consumer's arg are borrowed until done fires (never inside this call, even for n == 0).
 * Returns 0, -EBUSY while a round is running (rounds never overlap: the daemon keeps the round
 * deadline below its interval), -ESHUTDOWN after close, -EINVAL for more than 2^32 targets, or
 * -ENOMEM. Requests go out with Connection: close when keep-alive is off. A request is sent with
 * MSG_NOSIGNAL; only what a full socket buffer refuses goes through libuv's write(2), so the
 * daemon should still ignore SIGPIPE. */
int cmh_scraper_round(struct cmh_scraper *s, const struct cmh_scrape_target *targets, size_t n,
                      const struct cmh_scrape_consumer *consumer, cmh_scrape_done_cb done,
                      void *arg);

/* Records of the last (or current) round, indexed like its targets; *n gets their number. */
const struct cmh_scrape_record *cmh_scraper_records(const struct cmh_scraper *s, size_t *n);

/* Ends the round in progress now, as its deadline would (done fires from a later callback). */
void cmh_scraper_cancel(struct cmh_scraper *s);

/* Cancels any round (its done fires first), closes every connection and handle, and calls
 * close_cb (may be NULL) once all are closed; then s may be freed. */
void cmh_scraper_close(struct cmh_scraper *s, cmh_scrape_close_cb close_cb);

#endif
