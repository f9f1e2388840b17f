/* CloudWatch publisher: a bounded datum queue drained by PutMetricData (Query protocol, gzip,
 * SigV4) batches with retry, splitting and exact accounting. Owned by the daemon; loop thread only.
 */
#ifndef CMH_CLOUDWATCH_H
#define CMH_CLOUDWATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cmh/http/curl_uv.h"
#include "cmh/round/datum.h"

struct cmh_log;
struct cmh_config;
struct cmh_sigv4_credentials;
struct cmh_cloudwatch;

/* CloudWatch's own limits for one PutMetricData request. */
#define CMH_CW_MAX_BATCH_DATUMS 1000
#define CMH_CW_MAX_BATCH_BYTES  1000000 /* form body before compression ("1 MB") */

/* How one attempt ended, from the AWS error code first and the HTTP status second. */
enum cmh_cw_class {
    CMH_CW_OK = 0,
    CMH_CW_THROTTLE, /* Throttling, TooManyRequests..., HTTP 429: retried with backoff */
    CMH_CW_SERVER,   /* HTTP 5xx, InternalFailure, ServiceUnavailable: retried with backoff */
    CMH_CW_NETWORK,  /* no complete response (timeout, reset, refused, TLS): retried */
    CMH_CW_EXPIRED,  /* ExpiredToken & co: credentials refreshed once, then retried */
    CMH_CW_DENIED,   /* AccessDenied & co: logged loudly, /readyz fails, data kept */
    CMH_CW_INVALID,  /* InvalidParameterValue & co: the batch is split to isolate bad datums */
    CMH_CW_CLIENT,   /* any other 4xx: data kept, retried after the backoff cap */
    CMH_CW_CLASS_COUNT
};

/* "ok", "throttle", "server", "network", "expired", "denied", "invalid", "client". */
const char *cmh_cloudwatch_class_name(enum cmh_cw_class c);

/* Pure: the endpoint URL for region: override when not NULL/"" (AWS_ENDPOINT_URL_CLOUDWATCH, then
 * AWS_ENDPOINT_URL, chosen by the caller), else https://monitoring.<region>.<partition suffix>
 * (amazonaws.com, amazonaws.com.cn for cn-*, c2s.ic.gov for us-iso-*, sc2s.sgov.gov for
 * us-isob-*). Returns the length, -EINVAL for a region that is not [a-z0-9-]+, -ENOSPC. */
int cmh_cloudwatch_endpoint(const char *region, const char *override, char *buf, size_t len);

/* Where credentials come from (decoupled from the provider; the daemon adapts cmh_aws_creds_get /
 * cmh_aws_creds_invalidate to it, tests pass static keys). get calls cb exactly once, either
 * inside get or later from the loop, unless get returns non-zero. The credentials passed to cb
 * are borrowed for the duration of cb. */
typedef void (*cmh_cloudwatch_creds_cb)(void *arg, int rc,
                                        const struct cmh_sigv4_credentials *creds, const char *why);
struct cmh_cloudwatch_creds {
    int (*get)(void *ctx, cmh_cloudwatch_creds_cb cb, void *arg);
    void (*invalidate)(void *ctx); /* after ExpiredToken: the next get must refresh */
    void *ctx;
};

struct cmh_cloudwatch_opts {
    const char *region;     /* signing region, required; copied */
    const char *endpoint;   /* full URL (see cmh_cloudwatch_endpoint); copied. Plain http:// only
                               to a loopback address literal (127.0.0.0/8, [::1]), for tests. */
    const char *namespace_; /* default "Kubernetes"; copied, validated */
    unsigned storage_resolution; /* 1, 60, or 0 = leave the field out (CloudWatch: 60) */
    size_t buffer_max;           /* datums queued at most; 0 = 100000 */
    unsigned max_attempts;       /* per batch before it is re-queued; 0 = 5 */
    uint64_t max_age_ms;         /* drop datums older than this; 0 = 1 h; capped at 14 days - 1 h */
    uint64_t backoff_base_ms;    /* 0 = 200 */
    uint64_t backoff_cap_ms;     /* 0 = 20000 */
    uint64_t retry_after_max_ms; /* longest Retry-After honoured; 0 = 300000 */
    size_t max_batch_datums;     /* 0 = CMH_CW_MAX_BATCH_DATUMS (tests use smaller) */
    size_t max_batch_bytes;      /* 0 = CMH_CW_MAX_BATCH_BYTES */
    uint64_t seed;               /* backoff PRNG seed; 0 = from the clock */
    /* Not ready (cmh_cloudwatch_ready) once attempts have failed, whatever the answer (a 5xx, a
     * 307, a timeout...), for this long with no success between; 0 = never on that ground. */
    uint64_t unready_after_ms;
    struct cmh_cloudwatch_creds creds;
};

/* Fills *o: the CW_* configuration variables, every other field 0 (its default); the caller then
 * sets region, endpoint and creds. The namespace is borrowed from cfg. */
void cmh_cloudwatch_opts_from_config(struct cmh_cloudwatch_opts *o, const struct cmh_config *cfg);

/* Accounting. At every moment: enqueued == published + dropped_overflow + dropped_age +
 * dropped_invalid + dropped_shutdown + dropped_not_leader + in_queue. */
struct cmh_cloudwatch_stats {
    uint64_t enqueued;
    uint64_t published;
    uint64_t dropped_overflow;   /* the queue was full: the oldest went */
    uint64_t dropped_age;        /* older than max_age before it could be sent */
    uint64_t dropped_invalid;    /* rejected by CloudWatch (isolated by splitting) or by us */
    uint64_t dropped_shutdown;   /* still queued (or in flight) at the flush deadline or free */
    uint64_t dropped_not_leader; /* queued when this replica lost the lease (see _standby) */
    uint64_t in_queue;           /* waiting, including those in the request in flight */
    uint64_t in_flight;
    uint64_t requests;                     /* PutMetricData attempts sent */
    uint64_t batches_ok;                   /* attempts answered 200 */
    uint64_t batches_failed;               /* attempts that did not publish */
    uint64_t attempts[CMH_CW_CLASS_COUNT]; /* attempts by outcome class */
    uint64_t retries[CMH_CW_CLASS_COUNT];  /* retries scheduled, by the class that caused them */
    uint64_t requeued;                     /* batches put back after max_attempts */
    uint64_t splits;                       /* batches halved after an invalid answer */
    uint64_t bytes_raw, bytes_sent;        /* form bytes before / after gzip */
    uint64_t creds_errors;                 /* the credential source failed */
    int access_denied;                     /* the last answer was AccessDenied: /readyz fails */
    uint64_t failing_since_ms; /* loop time of the first failed attempt since the last success */
    char last_error[64];       /* AWS code or class name of the last failure */
};

/* Creates the publisher on loop, sending through curl (borrowed, must outlive it). Returns 0,
 * -EINVAL (no region or endpoint, a bad namespace, plain http to a non-loopback host, no creds
 * source) with a log line, or -ENOMEM. */
int cmh_cloudwatch_new(struct cmh_cloudwatch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                       const struct cmh_cloudwatch_opts *opts, struct cmh_log *log);

/* Copies n datums (strings included) into the queue and starts sending from the loop. A datum
 * CloudWatch would refuse (cmh_cloudwatch_datum_valid) counts as enqueued and dropped_invalid;
 * a full queue drops its oldest waiting datum (dropped_overflow). Returns 0 or -ENOMEM (then
 * the datums not copied are neither enqueued nor counted). */
int cmh_cloudwatch_enqueue(struct cmh_cloudwatch *cw, const struct cmh_datum *d, size_t n);

typedef void (*cmh_cloudwatch_flush_cb)(struct cmh_cloudwatch *cw, void *arg);

/* Sends everything queued, with backoff waits clamped to the deadline (deadline_ms from now);
 * cb fires (never inside this call) when the queue is empty or at the deadline, where what is
 * left, including a request still in flight, counts as dropped_shutdown. Later enqueues are
 * dropped_shutdown too. Returns 0 or -EBUSY (a flush is already running). */
int cmh_cloudwatch_flush(struct cmh_cloudwatch *cw, uint64_t deadline_ms,
                         cmh_cloudwatch_flush_cb cb, void *arg);

/* With leader election: standby true when this replica lost the lease. Every queued datum not
 * in the request in flight is dropped at once as dropped_not_leader, no request starts while in
 * standby, and what is enqueued meanwhile is dropped_not_leader too. A request already in flight
 * cannot be recalled: if it succeeds its datums count as published, otherwise as
 * dropped_not_leader (never retried). A flush running then ends as soon as that request ended.
 * standby false (the lease regained) resumes sending. Idempotent. */
void cmh_cloudwatch_standby(struct cmh_cloudwatch *cw, bool standby);

void cmh_cloudwatch_stats(const struct cmh_cloudwatch *cw, struct cmh_cloudwatch_stats *out);

/* For /readyz: 0 when publishing works; -EACCES while the last answer was AccessDenied;
 * -ETIMEDOUT when every attempt for opts.unready_after_ms or longer failed (no success since the
 * first of them). A replica in standby sends nothing and is not judged on it. */
int cmh_cloudwatch_ready(const struct cmh_cloudwatch *cw);

/* Fires once per cmh_cloudwatch_close, from the loop, when cw's timers have closed and what it
 * abandoned has finished, just before its memory goes. */
typedef void (*cmh_cloudwatch_close_cb)(struct cmh_cloudwatch *cw, void *arg);

/* Counts what is still queued as dropped_shutdown and closes cw (NULL: nothing to do). A request
 * in flight or a credentials call still pending is abandoned; close_cb (may be NULL) fires with
 * arg once they have finished (closing curl_uv ends a request at once) and the timers have
 * closed, then the memory goes: keep running the loop. */
void cmh_cloudwatch_close(struct cmh_cloudwatch *cw, cmh_cloudwatch_close_cb close_cb, void *arg);

#endif
