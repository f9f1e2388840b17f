/* Scrapes through the Kubernetes API server's pod proxy: GET
 * {server}/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/metrics, every request multiplexed as an
 * HTTP/2 stream over one TLS connection of a curl_uv instance of its own (so the long-lived
 * discovery watch never shares it), bodies streamed to the same consumer the direct engine feeds.
 * Owned by the collector (embedded); thread: the loop thread only. */
#ifndef CMH_PROXY_SCRAPE_H
#define CMH_PROXY_SCRAPE_H

#include "cmh/http/curl_uv.h"
#include "cmh/core/gz.h"
#include "cmh/k8s/api.h"
#include "cmh/scrape/scrape.h"
#include "cmh/scrape/scrape_mode.h"

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cmh_log;
struct cmh_proxy_scrape;

struct cmh_config;

struct cmh_proxy_scrape_opts {
    const char *server;         /* "https://host:port" of the API server */
    const char *namespace_name; /* of the aws-node pods */
    const char *token_file;     /* bearer token, re-read every token_max_age_ms and after a 401 */
    const char *ca_file;        /* the cluster CA; NULL = the system store */
    uint64_t timeout_ms;        /* one scrape, whole response (SCRAPE_TIMEOUT) */
    uint64_t max_body;          /* body bytes (SCRAPE_MAX_BODY) */
    unsigned streams;           /* requests in flight at once; 0 = 100 (a usual h2 stream limit) */
    uint64_t token_max_age_ms;  /* 0 = 60 s */
    int gzip; /* send Accept-Encoding: gzip (SCRAPE_GZIP); a gzip body is inflated either way */
};

/* Options from the configuration (K8S_NAMESPACE, K8S_TOKEN_FILE, K8S_CA_FILE, SCRAPE_GZIP) for the
 * API server at server (borrowed); the rest zero, i.e. the defaults. */
void cmh_proxy_scrape_opts_from_config(struct cmh_proxy_scrape_opts *o,
                                       const struct cmh_config *cfg, const char *server);

/* Fires once per started target, from the loop (never inside cmh_proxy_scrape_start), with the
 * record of its outcome; the consumer has seen begin/body/end as the direct engine would call
 * them. */
typedef void (*cmh_proxy_scrape_done_cb)(struct cmh_proxy_scrape *p, size_t target,
                                         const struct cmh_scrape_record *rec, void *arg);
typedef void (*cmh_proxy_scrape_close_cb)(struct cmh_proxy_scrape *p);

/* Counters since init, for self-metrics and the round line. */
struct cmh_proxy_scrape_stats {
    uint64_t requests;    /* scrapes started */
    uint64_t h2;          /* responses that came over HTTP/2 */
    uint64_t connections; /* TLS connections opened to the API server */
    uint64_t unauthorized;
    uint64_t token_reads;
};

struct cmh_proxy_scrape_req; /* private: one request in flight */

struct cmh_proxy_scrape_job {
    size_t target;
    const char *pod; /* borrowed until done */
    uint16_t port;
    uint64_t timeout_ms;
};

struct cmh_proxy_scrape {
    /* read-only */
    struct cmh_proxy_scrape_stats stats;
    /* private */
    uv_loop_t *loop;
    struct cmh_log *log;
    struct cmh_curl_uv curl;
    struct cmh_scrape_consumer consumer;
    cmh_proxy_scrape_done_cb done;
    void *arg;
    struct cmh_k8s_api api; /* the server, its CA and the token */
    char *ns;
    uint64_t timeout_ms, max_body;
    unsigned streams, inflight;
    char last_token_error[256];
    struct cmh_proxy_scrape_req *reqs; /* streams of them */
    struct cmh_proxy_scrape_req *free_reqs;
    struct cmh_proxy_scrape_job *queue; /* waiting for a stream, FIFO ring */
    size_t qhead, qlen, qcap;
    int cancelling, closing;
    cmh_proxy_scrape_close_cb close_cb;
    int gzip;
    struct cmh_gunzip_pool gz; /* inflaters: a gzip body holds one while it is read */
};

/* Sets p up on loop (its own curl_uv instance, one connection to the API server). Strings of o
 * are copied; consumer is copied; log is borrowed. done fires with arg for every target. Returns
 * 0, -EINVAL (no server), -ENOMEM or -EIO; on failure nothing is left to close. */
int cmh_proxy_scrape_init(struct cmh_proxy_scrape *p, uv_loop_t *loop,
                          const struct cmh_proxy_scrape_opts *o,
                          const struct cmh_scrape_consumer *consumer, cmh_proxy_scrape_done_cb done,
                          void *arg, struct cmh_log *log);

/* Scrapes pod:port through the proxy as target (an index of the caller's; pod borrowed until
 * done) with a whole-request timeout of timeout_ms (0 = opts.timeout_ms). Starts now when a stream
 * is free, else queues. Returns 0, -EINVAL (a pod name that is not a DNS name), -ESHUTDOWN after
 * close, or -ENOMEM; on failure done never fires for it. */
int cmh_proxy_scrape_start(struct cmh_proxy_scrape *p, size_t target, const char *pod,
                           uint16_t port, uint64_t timeout_ms);

/* Ends every scrape now, as the round deadline: queued ones are skipped, those in flight time
 * out. Their done callbacks fire before this returns. */
void cmh_proxy_scrape_cancel_all(struct cmh_proxy_scrape *p);

/* Scrapes queued or in flight. */
size_t cmh_proxy_scrape_pending(const struct cmh_proxy_scrape *p);

/* Cancels everything (done fires for each first), closes the connection and handles; close_cb
 * (may be NULL) fires from the loop once all is closed, after which p may be freed. */
void cmh_proxy_scrape_close(struct cmh_proxy_scrape *p, cmh_proxy_scrape_close_cb close_cb);

#endif
