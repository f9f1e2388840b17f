#include "cmh/aws/cloudwatch.h"
#include "cmh/aws/cloudwatch_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/core/buf.h"
#include "cmh/aws/endpoint.h"
#include "cmh/core/rng.h"
#include "cmh/core/config.h"
#include "cmh/core/gz.h"
#include "cmh/core/log.h"
#include "cmh/aws/sigv4.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BUFFER_MAX   100000
#define DEFAULT_MAX_ATTEMPTS 5
#define DEFAULT_MAX_AGE_MS   (3600ull * 1000)
/* CloudWatch refuses timestamps older than two weeks; keep an hour of margin. */
#define MAX_AGE_CAP_MS          ((14ull * 24 - 1) * 3600 * 1000)
#define DEFAULT_BACKOFF_BASE_MS 200
#define DEFAULT_BACKOFF_CAP_MS  20000
#define DEFAULT_RETRY_AFTER_MAX 300000
#define MAX_SEGMENTS            64
#define NS_MAX                  255

static const char *const class_names[CMH_CW_CLASS_COUNT] = {
    "ok", "throttle", "server", "network", "expired", "denied", "invalid", "client",
};

const char *cmh_cloudwatch_class_name(enum cmh_cw_class c)
{
    return (unsigned)c < CMH_CW_CLASS_COUNT ? class_names[c] : "unknown";
}

/* AWS error codes by class, from the SDKs' retry tables (botocore _retry.json, aws-c-sdkutils)
 * and CloudWatch's PutMetricData errors. */
static const char *const throttle_codes[] = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    NULL,
};
static const char *const server_codes[] = {
    "InternalFailure",      "InternalError",           "InternalServiceError",
    "InternalServiceFault", "ServiceUnavailable",      "ServiceUnavailableException",
    "RequestTimeout",       "RequestTimeoutException", NULL,
};
static const char *const expired_codes[] = {
    "ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired", NULL,
};
static const char *const denied_codes[] = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "SignatureDoesNotMatch",
    "OptInRequired",
    "NotAuthorized",
    NULL,
};
static const char *const invalid_codes[] = {
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidParameterCombination",
    "MissingParameter",
    "MissingRequiredParameter",
    "RequestEntityTooLarge",
    NULL,
};

static bool in_list(const char *const *list, const char *code)
{
    for (; *list != NULL; list++)
        if (strcmp(*list, code) == 0)
            return true;
    return false;
}

enum cmh_cw_class cmh_cloudwatch_classify(enum cmh_curl_uv_error error, long status,
                                          const char *code)
{
    if (error != CMH_CURL_OK || status == 0)
        return CMH_CW_NETWORK;
    if (status >= 200 && status < 300)
        return CMH_CW_OK;
    if (code != NULL && code[0] != '\0') {
        if (in_list(throttle_codes, code))
            return CMH_CW_THROTTLE;
        if (in_list(expired_codes, code))
            return CMH_CW_EXPIRED;
        if (in_list(denied_codes, code))
            return CMH_CW_DENIED;
        if (in_list(invalid_codes, code))
            return CMH_CW_INVALID;
        if (in_list(server_codes, code))
            return CMH_CW_SERVER;
    }
    if (status == 429)
        return CMH_CW_THROTTLE;
    if (status >= 500)
        return CMH_CW_SERVER;
    if (code == NULL || code[0] == '\0') {
        if (status == 403)
            return CMH_CW_DENIED;
        if (status == 413)
            return CMH_CW_INVALID;
    }
    return CMH_CW_CLIENT;
}

/* Error bodies ------------------------------------------------------------------------------- */

/* Finds "<tag>" ... "</tag>" in [p, end) and returns the content bounds, or false. */
static bool find_element(const char *p, const char *end, const char *tag, const char **cs,
                         const char **ce)
{
    char open[32], close[33];
    int no = snprintf(open, sizeof open, "<%s>", tag);
    int nc = snprintf(close, sizeof close, "</%s>", tag);
    if (no <= 0 || nc <= 0 || (size_t)no >= sizeof open || (size_t)nc >= sizeof close)
        return false;
    const char *s = memmem(p, (size_t)(end - p), open, (size_t)no);
    if (s == NULL)
        return false;
    s += no;
    const char *e = memmem(s, (size_t)(end - s), close, (size_t)nc);
    if (e == NULL)
        return false;
    *cs = s;
    *ce = e;
    return true;
}

static bool code_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

static void decode_text(const char *s, const char *e, char *out, size_t out_len)
{
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    size_t o = 0;
    if (out_len == 0)
        return;
    while (s < e && o + 1 < out_len) {
        char c = *s;
        size_t adv = 1;
        if (c == '&') {
            for (size_t i = 0; i < sizeof ents / sizeof ents[0]; i++) {
                size_t l = strlen(ents[i].ent);
                if ((size_t)(e - s) >= l && memcmp(s, ents[i].ent, l) == 0) {
                    c = ents[i].c;
                    adv = l;
                    break;
                }
            }
        }
        out[o++] = c;
        s += adv;
    }
    out[o] = '\0';
}

int cmh_cloudwatch_parse_error(const char *body, size_t len, char *code, size_t code_len,
                               char *message, size_t msg_len)
{
    if (code_len > 0)
        code[0] = '\0';
    if (message != NULL && msg_len > 0)
        message[0] = '\0';
    if (body == NULL || code_len == 0)
        return -EPROTO;
    const char *p = body, *end = body + len;
    const char *es, *ee, *cs, *ce;
    /* The Code of the Error element when there is one, else the first Code anywhere. */
    if (find_element(p, end, "Error", &es, &ee)) {
        p = es;
        end = ee;
    }
    if (!find_element(p, end, "Code", &cs, &ce))
        return -EPROTO;
    while (cs < ce && (*cs == ' ' || *cs == '\n' || *cs == '\r' || *cs == '\t'))
        cs++;
    while (ce > cs && (ce[-1] == ' ' || ce[-1] == '\n' || ce[-1] == '\r' || ce[-1] == '\t'))
        ce--;
    size_t n = (size_t)(ce - cs);
    if (n == 0 || n >= code_len)
        return -EPROTO;
    for (size_t i = 0; i < n; i++)
        if (!code_char(cs[i]))
            return -EPROTO;
    memcpy(code, cs, n);
    code[n] = '\0';
    const char *ms, *me;
    if (message != NULL && msg_len > 0 && find_element(p, end, "Message", &ms, &me))
        decode_text(ms, me, message, msg_len);
    return 0;
}

/* Endpoint ----------------------------------------------------------------------------------- */

int cmh_cloudwatch_endpoint(const char *region, const char *override, char *buf, size_t len)
{
    return cmh_aws_endpoint_url("monitoring", region, override, buf, len);
}

/* Encoding ----------------------------------------------------------------------------------- */

static void add_enc(struct cmh_buf *b, const char *s)
{
    cmh_buf_add_pct(b, s, strlen(s), 0);
}

static void add_num(struct cmh_buf *b, double d)
{
    char num[64];
    cmh_fmt_double(num, sizeof num, d);
    add_enc(b, num);
}

int cmh_cloudwatch_encode_datum(struct cmh_buf *b, const struct cmh_datum *d, unsigned index,
                                unsigned storage_resolution)
{
    char ts[32];
    cmh_buf_printf(b, "&MetricData.member.%u.MetricName=", index);
    add_enc(b, d->metric);
    for (unsigned i = 0; i < d->ndims && i < CMH_DATUM_MAX_DIMS; i++) {
        cmh_buf_printf(b, "&MetricData.member.%u.Dimensions.member.%u.Name=", index, i + 1);
        add_enc(b, d->dims[i].name);
        cmh_buf_printf(b, "&MetricData.member.%u.Dimensions.member.%u.Value=", index, i + 1);
        add_enc(b, d->dims[i].value);
    }
    cmh_fmt_rfc3339(ts, sizeof ts, d->timestamp_ms);
    cmh_buf_printf(b, "&MetricData.member.%u.Timestamp=", index);
    add_enc(b, ts);
    if (d->kind == CMH_DATUM_STATS) {
        cmh_buf_printf(b, "&MetricData.member.%u.StatisticValues.SampleCount=", index);
        add_num(b, d->count);
        cmh_buf_printf(b, "&MetricData.member.%u.StatisticValues.Sum=", index);
        add_num(b, d->sum);
        cmh_buf_printf(b, "&MetricData.member.%u.StatisticValues.Minimum=", index);
        add_num(b, d->min);
        cmh_buf_printf(b, "&MetricData.member.%u.StatisticValues.Maximum=", index);
        add_num(b, d->max);
    } else {
        cmh_buf_printf(b, "&MetricData.member.%u.Value=", index);
        add_num(b, d->value);
    }
    if (d->unit != NULL && d->unit[0] != '\0') {
        cmh_buf_printf(b, "&MetricData.member.%u.Unit=", index);
        add_enc(b, d->unit);
    }
    if (storage_resolution != 0)
        cmh_buf_printf(b, "&MetricData.member.%u.StorageResolution=%u", index, storage_resolution);
    return cmh_buf_err(b);
}

static const char *const units[] = {
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
    NULL,
};

/* CloudWatch: "values must be in the range of -2^360 to 2^360"; smaller magnitudes than 2^-360
 * (other than zero) are refused as well. */
static bool value_ok(double v)
{
    if (!isfinite(v))
        return false;
    double m = fabs(v);
    return m == 0 || (m >= ldexp(1.0, -360) && m <= ldexp(1.0, 360));
}

static bool text_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    return n >= 1 && n <= max;
}

int cmh_cloudwatch_datum_valid(const struct cmh_datum *d)
{
    if (d == NULL || !text_ok(d->metric, 255) || d->ndims > CMH_DATUM_MAX_DIMS ||
        d->timestamp_ms <= 0)
        return -EINVAL;
    for (unsigned i = 0; i < d->ndims; i++)
        if (!text_ok(d->dims[i].name, 255) || !text_ok(d->dims[i].value, 1024))
            return -EINVAL;
    if (d->unit != NULL && d->unit[0] != '\0' && !in_list(units, d->unit))
        return -EINVAL;
    if (d->kind == CMH_DATUM_STATS) {
        if (!value_ok(d->count) || !value_ok(d->sum) || !value_ok(d->min) || !value_ok(d->max) ||
            !(d->count > 0) || d->min > d->max)
            return -EINVAL;
    } else if (d->kind != CMH_DATUM_VALUE || !value_ok(d->value)) {
        return -EINVAL;
    }
    return 0;
}

/* The queue ---------------------------------------------------------------------------------- */

/* A queued datum owns one block with all of its strings. */
struct qd {
    struct cmh_datum d;
    char *strs;
};

struct queue {
    struct qd *v;
    size_t cap, head, n;
};

static struct qd *q_at(struct queue *q, size_t i)
{
    return &q->v[(q->head + i) % q->cap];
}

static int q_grow(struct queue *q, size_t max)
{
    size_t ncap = q->cap ? q->cap * 2 : 1024;
    if (ncap > max)
        ncap = max;
    if (ncap <= q->cap)
        return -ENOSPC;
    struct qd *v = cmh_reallocarray(NULL, ncap, sizeof *v);
    if (v == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < q->n; i++)
        v[i] = *q_at(q, i);
    cmh_free(q->v);
    q->v = v;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

static void q_pop(struct queue *q)
{
    struct qd *e = q_at(q, 0);
    cmh_free(e->strs);
    e->strs = NULL;
    q->head = (q->head + 1) % q->cap;
    q->n--;
}

/* Removes the element at index i (0 < i < n) keeping the order of the others. */
static void q_remove_at(struct queue *q, size_t i)
{
    struct qd victim = *q_at(q, i);
    for (size_t k = i; k > 0; k--)
        *q_at(q, k) = *q_at(q, k - 1);
    *q_at(q, 0) = victim;
    q_pop(q);
}

static int copy_datum(struct qd *out, const struct cmh_datum *d)
{
    const char *src[2 + 2 * CMH_DATUM_MAX_DIMS];
    const char **dst[2 + 2 * CMH_DATUM_MAX_DIMS];
    size_t ns = 0, total = 0;
    out->d = *d;
    src[ns] = d->metric;
    dst[ns++] = &out->d.metric;
    src[ns] = d->unit;
    dst[ns++] = &out->d.unit;
    for (unsigned i = 0; i < d->ndims && i < CMH_DATUM_MAX_DIMS; i++) {
        src[ns] = d->dims[i].name;
        dst[ns++] = &out->d.dims[i].name;
        src[ns] = d->dims[i].value;
        dst[ns++] = &out->d.dims[i].value;
    }
    for (size_t i = 0; i < ns; i++)
        total += src[i] ? strlen(src[i]) + 1 : 0;
    out->strs = cmh_malloc(total ? total : 1);
    if (out->strs == NULL)
        return -ENOMEM;
    char *p = out->strs;
    for (size_t i = 0; i < ns; i++) {
        if (src[i] == NULL) {
            *dst[i] = NULL;
            continue;
        }
        size_t l = strlen(src[i]) + 1;
        memcpy(p, src[i], l);
        *dst[i] = p;
        p += l;
    }
    return 0;
}

/* The publisher ------------------------------------------------------------------------------ */

enum state { ST_IDLE, ST_TIMER, ST_CREDS, ST_SENDING };

struct cmh_cloudwatch {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    struct cmh_cloudwatch_opts o;
    char *region, *endpoint, *ns, *host, *path;
    int allow_http;

    struct queue q;
    size_t inflight_n; /* datums at the head of q in the request in flight */
    enum state st;
    unsigned attempt; /* failed attempts of the datums at the head, since their last success */
    int refreshed;    /* credentials refreshed once after ExpiredToken */
    size_t seg[MAX_SEGMENTS]; /* split stack: lengths from the head, top = first to send */
    unsigned nseg;

    uv_timer_t timer;    /* kick and backoff */
    uv_timer_t deadline; /* flush */
    struct cmh_curl_uv_req req;
    struct cmh_buf form; /* the batch's form, max_batch_bytes at most */
    struct cmh_buf one;  /* one datum's encoding, until it is known to fit in form */
    unsigned char *gz;
    size_t gz_len;
    char *hdr[8];
    size_t nhdr;
    uint64_t rng;

    struct cmh_cloudwatch_stats stats;

    int flushing, flushed, abandoned;
    int standby; /* this replica lost the lease: send nothing (cmh_cloudwatch_standby) */
    cmh_cloudwatch_flush_cb flush_cb;
    void *flush_arg;

    int freeing;
    cmh_cloudwatch_close_cb close_cb; /* cmh_cloudwatch_close */
    void *close_arg;
    unsigned pending; /* open timers, a request or a credentials call outstanding */
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void free_request_bufs(struct cmh_cloudwatch *cw)
{
    for (size_t i = 0; i < cw->nhdr; i++)
        cmh_free_secret(cw->hdr[i]); /* Authorization, X-Amz-Security-Token */
    cw->nhdr = 0;
    cmh_free(cw->gz);
    cw->gz = NULL;
    cw->gz_len = 0;
}

/* Frees the copied settings and cw itself. */
static void free_settings(struct cmh_cloudwatch *cw)
{
    cmh_free(cw->region);
    cmh_free(cw->endpoint);
    cmh_free(cw->ns);
    cmh_free(cw->host);
    cmh_free(cw->path);
    cmh_free(cw);
}

static void maybe_release(struct cmh_cloudwatch *cw)
{
    if (!cw->freeing || cw->pending > 0)
        return;
    if (cw->close_cb != NULL)
        cw->close_cb(cw, cw->close_arg);
    free_request_bufs(cw);
    cmh_free(cw->q.v);
    cmh_buf_free(&cw->form);
    cmh_buf_free(&cw->one);
    free_settings(cw);
}

static void on_timer_close(uv_handle_t *h)
{
    struct cmh_cloudwatch *cw = h->data;
    cw->pending--;
    maybe_release(cw);
}

/* Drops everything queued (in flight included) as dropped_shutdown. */
static void drop_all_shutdown(struct cmh_cloudwatch *cw)
{
    while (cw->q.n > 0) {
        q_pop(&cw->q);
        cw->stats.dropped_shutdown++;
    }
    if (cw->inflight_n > 0)
        cw->abandoned = 1;
    cw->inflight_n = 0;
    cw->nseg = 0;
}

static void finish_flush(struct cmh_cloudwatch *cw)
{
    if (!cw->flushing || cw->flushed)
        return;
    cw->flushed = 1;
    uv_timer_stop(&cw->deadline);
    if (cw->st == ST_TIMER) {
        uv_timer_stop(&cw->timer);
        cw->st = ST_IDLE;
    }
    drop_all_shutdown(cw);
    CMH_LOG(cw->log, CMH_LOG_INFO, "cloudwatch flush finished",
            CMH_UINT("published", cw->stats.published),
            CMH_UINT("dropped_shutdown", cw->stats.dropped_shutdown));
    if (cw->flush_cb != NULL)
        cw->flush_cb(cw, cw->flush_arg);
}

static void on_timer(uv_timer_t *t);

static void schedule(struct cmh_cloudwatch *cw, uint64_t delay)
{
    if (cw->flushing && !cw->flushed) {
        /* Backoff waits never run past the flush deadline; keep some spacing so a failing
         * endpoint is not hammered in the last moments. */
        uint64_t left = uv_timer_get_due_in(&cw->deadline);
        uint64_t clamp = left / 2;
        if (delay > clamp) {
            delay = clamp;
            if (delay < cw->o.backoff_base_ms)
                delay = left < cw->o.backoff_base_ms ? left : cw->o.backoff_base_ms;
        }
    }
    cw->st = ST_TIMER;
    uv_timer_start(&cw->timer, on_timer, delay, 0);
}

static void kick(struct cmh_cloudwatch *cw)
{
    if (cw->st == ST_IDLE && !cw->freeing && !cw->standby && cw->q.n > 0)
        schedule(cw, 0);
}

/* Called whenever the publisher went idle: completes a flush once nothing is left. */
static void idle(struct cmh_cloudwatch *cw)
{
    cw->st = ST_IDLE;
    if (cw->q.n > 0)
        kick(cw);
    else if (cw->flushing && !cw->flushed)
        finish_flush(cw);
}

/* Drops the datums from index from to the tail (those not in flight when from == inflight_n) as
 * dropped_not_leader; returns how many. */
static size_t drop_not_leader(struct cmh_cloudwatch *cw, size_t from)
{
    size_t n = 0;
    while (cw->q.n > from) {
        struct qd *e = q_at(&cw->q, cw->q.n - 1);
        cmh_free(e->strs);
        e->strs = NULL;
        cw->q.n--;
        n++;
    }
    cw->stats.dropped_not_leader += n;
    cw->nseg = 0;
    cw->attempt = 0;
    return n;
}

static void drop_aged(struct cmh_cloudwatch *cw)
{
    int64_t oldest = wall_ms() - (int64_t)cw->o.max_age_ms;
    size_t dropped = 0;
    while (cw->q.n > cw->inflight_n && cw->inflight_n == 0 &&
           q_at(&cw->q, 0)->d.timestamp_ms < oldest) {
        q_pop(&cw->q);
        cw->stats.dropped_age++;
        dropped++;
    }
    if (dropped > 0) {
        cw->nseg = 0;
        CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch datums too old, dropped",
                CMH_UINT("count", dropped), CMH_UINT("max_age_ms", cw->o.max_age_ms));
    }
}

static void on_creds(void *arg, int rc, const struct cmh_sigv4_credentials *creds, const char *why);
static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);

static void on_timer(uv_timer_t *t)
{
    struct cmh_cloudwatch *cw = container_of(t, struct cmh_cloudwatch, timer);
    cw->st = ST_IDLE;
    drop_aged(cw);
    if (cw->q.n == 0) {
        idle(cw);
        return;
    }
    cw->st = ST_CREDS;
    cw->pending++;
    int rc = cw->o.creds.get(cw->o.creds.ctx, on_creds, cw);
    if (rc != 0)
        on_creds(cw, rc, NULL, "credentials source refused the call");
}

static void fail_attempt(struct cmh_cloudwatch *cw, enum cmh_cw_class cls, const char *code,
                         int64_t retry_after_ms);

static void set_last_error(struct cmh_cloudwatch *cw, const char *what)
{
    snprintf(cw->stats.last_error, sizeof cw->stats.last_error, "%s", what);
}

static int gzip_body(struct cmh_cloudwatch *cw, const char *in, size_t len)
{
    cmh_free(cw->gz);
    cw->gz = NULL;
    cw->gz_len = 0;
    return cmh_gzip(in, len, &cw->gz, &cw->gz_len);
}

static int add_header(struct cmh_cloudwatch *cw, const char *name, const char *value)
{
    return cmh_aws_header_add(cw->hdr, &cw->nhdr, sizeof cw->hdr / sizeof cw->hdr[0], name, value);
}

/* Encodes the next batch from the head into cw->form: as many datums as fit in
 * max_batch_bytes. Returns 0 with their number, -E2BIG when not even the first fits, -ENOMEM. */
static int build_form(struct cmh_cloudwatch *cw, size_t *count)
{
    size_t limit = cw->o.max_batch_datums;
    if (cw->nseg > 0) {
        if (cw->seg[cw->nseg - 1] <= cw->q.n)
            limit = cw->seg[cw->nseg - 1];
        else
            cw->nseg = 0;
    }
    if (limit > cw->q.n)
        limit = cw->q.n;
    struct cmh_buf *f = &cw->form, *one = &cw->one;
    cmh_buf_reset(f);
    cmh_buf_addstr(f, "Action=PutMetricData&Version=2010-08-01&Namespace=");
    add_enc(f, cw->ns);
    size_t n = 0;
    for (; n < limit; n++) {
        cmh_buf_reset(one);
        int rc = cmh_cloudwatch_encode_datum(one, &q_at(&cw->q, n)->d, (unsigned)n + 1,
                                             cw->o.storage_resolution);
        if (rc == -ENOMEM)
            return rc;
        if (rc != 0 || cmh_buf_len(f) + cmh_buf_len(one) > cw->o.max_batch_bytes)
            break;
        cmh_buf_add(f, cmh_buf_str(one), cmh_buf_len(one));
    }
    if (cmh_buf_err(f) != 0)
        return cmh_buf_err(f);
    if (n == 0)
        return -E2BIG; /* one datum larger than a request: cannot happen with valid datums */
    *count = n;
    return 0;
}

static void send_batch(struct cmh_cloudwatch *cw, const struct cmh_sigv4_credentials *creds)
{
    size_t n = 0;
    struct cmh_sigv4_result sig;
    memset(&sig, 0, sizeof sig);
    free_request_bufs(cw);
    drop_aged(cw);
    if (cw->q.n == 0) {
        idle(cw);
        return;
    }
    int rc = build_form(cw, &n);
    if (rc == -E2BIG) {
        /* Unreachable for datums that passed validation; never loop on one. */
        q_pop(&cw->q);
        cw->stats.dropped_invalid++;
        idle(cw);
        return;
    }
    if (rc == 0)
        rc = gzip_body(cw, cmh_buf_str(&cw->form), cmh_buf_len(&cw->form));
    if (rc == 0) {
        const struct cmh_sigv4_kv headers[] = {
            {"Host", cw->host},
            {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
            {"Content-Encoding", "gzip"},
        };
        struct cmh_sigv4_request sreq = {
            .method = "POST",
            .path = cw->path,
            .headers = headers,
            .nheaders = sizeof headers / sizeof headers[0],
            .payload = cw->gz,
            .payload_len = cw->gz_len,
            .region = cw->region,
            .service = "monitoring",
            .time_s = wall_ms() / 1000,
            .creds = creds,
        };
        rc = cmh_sigv4_sign(&sreq, &sig);
        for (size_t i = 0; rc == 0 && i < sizeof headers / sizeof headers[0]; i++)
            rc = add_header(cw, headers[i].name, headers[i].value);
        for (size_t i = 0; rc == 0 && i < sig.nadd; i++)
            rc = add_header(cw, sig.add[i].name, sig.add[i].value);
        if (rc == 0)
            rc = add_header(cw, "Expect", ""); /* no 100-continue round trip */
    }
    cmh_sigv4_result_free(&sig);
    if (rc != 0) {
        CMH_LOG(cw->log, CMH_LOG_ERROR, "cloudwatch request not built", CMH_INT("rc", rc));
        fail_attempt(cw, CMH_CW_NETWORK, "build", -1);
        return;
    }
    /* "Expect: " (empty value) makes libcurl drop the header; add_header wrote "Expect: ". */
    cw->hdr[cw->nhdr - 1][7] = '\0';
    memset(&cw->req, 0, sizeof cw->req);
    cw->req.method = "POST";
    cw->req.url = cw->endpoint;
    cw->req.headers = (const char *const *)cw->hdr;
    cw->req.nheaders = cw->nhdr;
    cw->req.body = cw->gz;
    cw->req.body_len = cw->gz_len;
    cw->req.max_body = 64 * 1024;
    cw->req.allow_http = cw->allow_http;
    cw->inflight_n = n;
    cw->st = ST_SENDING;
    cw->pending++;
    rc = cmh_curl_uv_start(cw->curl, &cw->req, on_done);
    if (rc != 0) {
        cw->pending--;
        cw->inflight_n = 0;
        CMH_LOG(cw->log, CMH_LOG_ERROR, "cloudwatch request not started", CMH_INT("rc", rc));
        fail_attempt(cw, CMH_CW_NETWORK, "start", -1);
        return;
    }
    cw->stats.requests++;
    cw->stats.bytes_raw += cmh_buf_len(&cw->form);
    cw->stats.bytes_sent += cw->gz_len;
}

static void on_creds(void *arg, int rc, const struct cmh_sigv4_credentials *creds, const char *why)
{
    struct cmh_cloudwatch *cw = arg;
    if (cw->st == ST_CREDS)
        cw->pending--;
    if (cw->freeing) {
        maybe_release(cw);
        return;
    }
    if (cw->st != ST_CREDS)
        return;
    if (rc != 0 || creds == NULL) {
        cw->stats.creds_errors++;
        CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch has no credentials", CMH_INT("rc", rc),
                CMH_STR("why", why ? why : ""));
        fail_attempt(cw, CMH_CW_NETWORK, "credentials", -1);
        return;
    }
    send_batch(cw, creds);
}

/* Attempt 1 waits up to the base, each later one up to twice as long, up to the cap. */
static uint64_t backoff(struct cmh_cloudwatch *cw, unsigned attempt)
{
    return cmh_backoff_full_jitter(&cw->rng, attempt > 0 ? attempt - 1 : 0, cw->o.backoff_base_ms,
                                   cw->o.backoff_cap_ms);
}

/* Split bookkeeping: the n datums just answered leave the segment on top. */
static void seg_consume(struct cmh_cloudwatch *cw, size_t n)
{
    if (cw->nseg == 0)
        return;
    if (cw->seg[cw->nseg - 1] > n)
        cw->seg[cw->nseg - 1] -= n;
    else
        cw->nseg--;
}

static void fail_attempt(struct cmh_cloudwatch *cw, enum cmh_cw_class cls, const char *code,
                         int64_t retry_after_ms)
{
    uint64_t delay;
    cw->stats.batches_failed++;
    set_last_error(cw, code && code[0] ? code : cmh_cloudwatch_class_name(cls));
    if (cw->standby) {
        /* Not the leader any more: nothing is retried. */
        drop_not_leader(cw, 0);
        idle(cw);
        return;
    }
    switch (cls) {
    case CMH_CW_EXPIRED:
        if (!cw->refreshed) {
            cw->refreshed = 1;
            if (cw->o.creds.invalidate != NULL)
                cw->o.creds.invalidate(cw->o.creds.ctx);
            cw->stats.retries[cls]++;
            schedule(cw, 0);
            return;
        }
        CMH_LOG(cw->log, CMH_LOG_ERROR, "cloudwatch credentials expired again after a refresh",
                CMH_STR("code", code));
        cw->stats.retries[cls]++;
        cw->refreshed = 0;
        schedule(cw, cw->o.backoff_cap_ms);
        return;
    case CMH_CW_DENIED:
        cw->stats.access_denied = 1;
        CMH_LOG(cw->log, CMH_LOG_ERROR,
                "cloudwatch PutMetricData denied: grant cloudwatch:PutMetricData to this role; "
                "datums are kept and /readyz fails until it works",
                CMH_STR("code", code), CMH_UINT("queued", cw->q.n));
        cw->stats.retries[cls]++;
        schedule(cw, cw->o.backoff_cap_ms);
        return;
    case CMH_CW_CLIENT:
        CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch refused the request; datums kept",
                CMH_STR("code", code));
        cw->stats.retries[cls]++;
        schedule(cw, cw->o.backoff_cap_ms);
        return;
    default:
        break;
    }
    cw->attempt++;
    cw->stats.retries[cls]++;
    if (cw->attempt >= cw->o.max_attempts) {
        cw->attempt = 0;
        cw->stats.requeued++;
        CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch batch failed every attempt; kept for later",
                CMH_STR("class", cmh_cloudwatch_class_name(cls)), CMH_STR("code", code),
                CMH_UINT("queued", cw->q.n));
        delay = cw->o.backoff_cap_ms;
    } else {
        delay = backoff(cw, cw->attempt);
        CMH_LOG(cw->log, CMH_LOG_DEBUG, "cloudwatch retry",
                CMH_STR("class", cmh_cloudwatch_class_name(cls)), CMH_STR("code", code),
                CMH_UINT("attempt", cw->attempt), CMH_UINT("delay_ms", delay));
    }
    if (retry_after_ms > 0) {
        uint64_t ra = (uint64_t)retry_after_ms;
        if (ra > cw->o.retry_after_max_ms)
            ra = cw->o.retry_after_max_ms;
        if (ra > delay)
            delay = ra;
    }
    schedule(cw, delay);
}

static void log_dropped_invalid(struct cmh_cloudwatch *cw, const struct cmh_datum *d,
                                const char *code, const char *msg)
{
    char dims[1024];
    if (cmh_datum_dims_json(d, dims, sizeof dims) < 0)
        snprintf(dims, sizeof dims, "{}");
    CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch rejected a datum; dropped",
            CMH_STR("metric", d->metric), CMH_JSON("dimensions", dims), CMH_STR("code", code),
            CMH_STR("message", msg));
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_cloudwatch *cw = container_of(req, struct cmh_cloudwatch, req);
    size_t n = cw->inflight_n;
    cw->pending--;
    cw->inflight_n = 0;
    if (cw->freeing) {
        maybe_release(cw);
        return;
    }
    if (cw->abandoned) {
        /* The flush deadline already counted these datums as dropped_shutdown. */
        cw->abandoned = 0;
        cw->st = ST_IDLE;
        return;
    }
    char code[64] = "", msg[256] = "";
    if (res->error == CMH_CURL_OK && (res->status < 200 || res->status >= 300))
        cmh_cloudwatch_parse_error(res->body, res->body_len, code, sizeof code, msg, sizeof msg);
    enum cmh_cw_class cls = cmh_cloudwatch_classify(res->error, res->status, code);
    cw->stats.attempts[cls]++;
    if (cls == CMH_CW_OK)
        cw->stats.failing_since_ms = 0;
    else if (cw->stats.failing_since_ms == 0)
        cw->stats.failing_since_ms = uv_now(cw->loop) > 0 ? uv_now(cw->loop) : 1;
    if (cls == CMH_CW_NETWORK && code[0] == '\0')
        snprintf(code, sizeof code, "%s", cmh_curl_uv_error_name(res->error));
    if (cls == CMH_CW_OK) {
        for (size_t i = 0; i < n; i++)
            q_pop(&cw->q);
        cw->stats.published += n;
        cw->stats.batches_ok++;
        if (cw->stats.access_denied)
            CMH_LOG(cw->log, CMH_LOG_INFO, "cloudwatch PutMetricData allowed again",
                    CMH_UINT("published", n));
        cw->stats.access_denied = 0;
        cw->attempt = 0;
        cw->refreshed = 0;
        seg_consume(cw, n);
        idle(cw);
        return;
    }
    if (cls == CMH_CW_INVALID && cw->standby) {
        fail_attempt(cw, cls, code, -1); /* dropped, not split: we are no longer the leader */
        return;
    }
    if (cls == CMH_CW_INVALID) {
        cw->stats.batches_failed++;
        set_last_error(cw, code[0] ? code : "invalid");
        cw->attempt = 0;
        if (n <= 1) {
            log_dropped_invalid(cw, &q_at(&cw->q, 0)->d, code, msg);
            q_pop(&cw->q);
            cw->stats.dropped_invalid++;
            seg_consume(cw, 1);
        } else {
            /* Halve: the first half is sent next, then the second, each halved again if it is
             * refused, until every bad datum stands alone. */
            seg_consume(cw, n);
            size_t first = n / 2;
            if (cw->nseg + 2 <= MAX_SEGMENTS) {
                cw->seg[cw->nseg++] = n - first;
                cw->seg[cw->nseg++] = first;
            }
            cw->stats.splits++;
        }
        cw->st = ST_IDLE;
        schedule(cw, 0);
        return;
    }
    fail_attempt(cw, cls, code, res->retry_after_ms);
}

/* Public API --------------------------------------------------------------------------------- */

void cmh_cloudwatch_opts_from_config(struct cmh_cloudwatch_opts *o, const struct cmh_config *cfg)
{
    /* Every field the configuration does not set starts at its default (0), like the other
     * *_opts_from_config functions. */
    memset(o, 0, sizeof *o);
    o->namespace_ = cfg->cw_namespace;
    o->storage_resolution = cfg->cw_storage_resolution == 1 ? 1 : 60;
    o->buffer_max = (size_t)cfg->cw_buffer_max_datums;
    o->max_attempts = (unsigned)cfg->cw_max_attempts;
    o->max_age_ms = cfg->cw_max_age_ms;
    o->backoff_base_ms = cfg->cw_backoff_base_ms;
    o->backoff_cap_ms = cfg->cw_backoff_cap_ms;
}

static bool namespace_ok(const char *ns)
{
    size_t n = strlen(ns);
    if (n < 1 || n > NS_MAX || strncmp(ns, "AWS/", 4) == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)ns[i] < 0x20 || (unsigned char)ns[i] > 0x7e)
            return false;
    return true;
}

int cmh_cloudwatch_new(struct cmh_cloudwatch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                       const struct cmh_cloudwatch_opts *opts, struct cmh_log *log)
{
    int rc = 0;
    struct cmh_cloudwatch *cw = NULL;
    *out = NULL;
    if (opts == NULL || opts->region == NULL || opts->region[0] == '\0' || opts->endpoint == NULL ||
        opts->creds.get == NULL || curl == NULL) {
        CMH_LOG(log, CMH_LOG_ERROR, "cloudwatch needs a region, an endpoint and credentials",
                CMH_STR("region", opts && opts->region ? opts->region : ""));
        return -EINVAL;
    }
    const char *ns = opts->namespace_ ? opts->namespace_ : "Kubernetes";
    if (!namespace_ok(ns)) {
        CMH_LOG(log, CMH_LOG_ERROR,
                "CW_NAMESPACE must be 1-255 printable ASCII characters and not start with AWS/",
                CMH_STR("value", ns));
        return -EINVAL;
    }
    if (opts->storage_resolution != 0 && opts->storage_resolution != 1 &&
        opts->storage_resolution != 60) {
        CMH_LOG(log, CMH_LOG_ERROR, "CW_STORAGE_RESOLUTION must be 1 or 60",
                CMH_UINT("value", opts->storage_resolution));
        return -EINVAL;
    }
    cw = cmh_calloc(1, sizeof *cw);
    if (cw == NULL)
        return -ENOMEM;
    cw->loop = loop;
    cw->curl = curl;
    cw->log = log;
    cw->o = *opts;
    if (cw->o.buffer_max == 0)
        cw->o.buffer_max = DEFAULT_BUFFER_MAX;
    if (cw->o.max_attempts == 0)
        cw->o.max_attempts = DEFAULT_MAX_ATTEMPTS;
    if (cw->o.max_age_ms == 0)
        cw->o.max_age_ms = DEFAULT_MAX_AGE_MS;
    if (cw->o.max_age_ms > MAX_AGE_CAP_MS)
        cw->o.max_age_ms = MAX_AGE_CAP_MS;
    if (cw->o.backoff_base_ms == 0)
        cw->o.backoff_base_ms = DEFAULT_BACKOFF_BASE_MS;
    if (cw->o.backoff_cap_ms == 0)
        cw->o.backoff_cap_ms = DEFAULT_BACKOFF_CAP_MS;
    if (cw->o.backoff_cap_ms < cw->o.backoff_base_ms)
        cw->o.backoff_cap_ms = cw->o.backoff_base_ms;
    if (cw->o.retry_after_max_ms == 0)
        cw->o.retry_after_max_ms = DEFAULT_RETRY_AFTER_MAX;
    if (cw->o.max_batch_datums == 0 || cw->o.max_batch_datums > CMH_CW_MAX_BATCH_DATUMS)
        cw->o.max_batch_datums = CMH_CW_MAX_BATCH_DATUMS;
    if (cw->o.max_batch_bytes == 0 || cw->o.max_batch_bytes > CMH_CW_MAX_BATCH_BYTES)
        cw->o.max_batch_bytes = CMH_CW_MAX_BATCH_BYTES;
    cw->rng = cmh_rng_seed(cw->o.seed);
    cmh_buf_init(&cw->form, cw->o.max_batch_bytes);
    cmh_buf_init(&cw->one, cw->o.max_batch_bytes);
    cw->region = cmh_strdup(opts->region);
    cw->endpoint = cmh_strdup(opts->endpoint);
    cw->ns = cmh_strdup(ns);
    if (cw->region == NULL || cw->endpoint == NULL || cw->ns == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    cw->o.region = cw->region;
    cw->o.endpoint = cw->endpoint;
    cw->o.namespace_ = cw->ns;
    rc = cmh_url_split(cw->endpoint, &cw->host, &cw->path, &cw->allow_http);
    if (rc != 0) {
        CMH_LOG(log, CMH_LOG_ERROR,
                rc == -EPROTONOSUPPORT
                    ? "CloudWatch endpoint: plain http is allowed only to a loopback address"
                    : "CloudWatch endpoint is not an https:// URL",
                CMH_URL("endpoint", cw->endpoint));
        if (rc == -EPROTONOSUPPORT)
            rc = -EINVAL;
        goto out;
    }
    uv_timer_init(loop, &cw->timer);
    uv_timer_init(loop, &cw->deadline);
    cw->timer.data = cw;
    cw->deadline.data = cw;
    cw->pending = 2;
    *out = cw;
    return 0;
out:
    free_settings(cw);
    return rc;
}

int cmh_cloudwatch_enqueue(struct cmh_cloudwatch *cw, const struct cmh_datum *d, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (cw->flushed || cw->freeing) {
            cw->stats.enqueued++;
            cw->stats.dropped_shutdown++;
            continue;
        }
        if (cw->standby) {
            cw->stats.enqueued++;
            cw->stats.dropped_not_leader++;
            continue;
        }
        if (cmh_cloudwatch_datum_valid(&d[i]) != 0) {
            cw->stats.enqueued++;
            cw->stats.dropped_invalid++;
            log_dropped_invalid(cw, &d[i], "local", "refused before sending");
            continue;
        }
        struct qd e;
        if (copy_datum(&e, &d[i]) != 0) {
            rc = -ENOMEM;
            break;
        }
        if (cw->q.n >= cw->o.buffer_max) {
            cw->stats.dropped_overflow++;
            if (cw->q.n == cw->inflight_n) {
                /* Everything queued is in flight: the newcomer is the one that cannot stay. */
                cw->stats.enqueued++;
                cmh_free(e.strs);
                continue;
            }
            if (cw->inflight_n == 0)
                q_pop(&cw->q);
            else
                q_remove_at(&cw->q, cw->inflight_n);
            cw->nseg = 0;
        } else if (cw->q.n == cw->q.cap) {
            rc = q_grow(&cw->q, cw->o.buffer_max);
            if (rc != 0) {
                cmh_free(e.strs);
                rc = -ENOMEM;
                break;
            }
        }
        *q_at(&cw->q, cw->q.n) = e;
        cw->q.n++;
        cw->stats.enqueued++;
    }
    /* What was queued before running out of memory is sent as usual, not left for the next call. */
    kick(cw);
    return rc;
}

static void on_deadline(uv_timer_t *t)
{
    struct cmh_cloudwatch *cw = container_of(t, struct cmh_cloudwatch, deadline);
    finish_flush(cw);
}

int cmh_cloudwatch_flush(struct cmh_cloudwatch *cw, uint64_t deadline_ms,
                         cmh_cloudwatch_flush_cb cb, void *arg)
{
    if (cw->flushing)
        return -EBUSY;
    cw->flushing = 1;
    cw->flush_cb = cb;
    cw->flush_arg = arg;
    uv_update_time(cw->loop); /* the deadline counts from this call, not the last loop turn */
    if (cw->q.n == 0 && cw->st == ST_IDLE) {
        uv_timer_start(&cw->deadline, on_deadline, 0, 0);
        return 0;
    }
    uv_timer_start(&cw->deadline, on_deadline, deadline_ms, 0);
    if (cw->st == ST_TIMER) {
        /* Re-arm a pending backoff wait within the deadline. */
        uint64_t due = uv_timer_get_due_in(&cw->timer);
        schedule(cw, due);
    }
    return 0;
}

void cmh_cloudwatch_standby(struct cmh_cloudwatch *cw, bool standby)
{
    if (cw->freeing || (cw->standby != 0) == standby)
        return;
    cw->standby = standby;
    cw->stats.failing_since_ms = 0;
    if (!standby) {
        CMH_LOG(cw->log, CMH_LOG_INFO, "cloudwatch: leader again, publishing",
                CMH_UINT("dropped_not_leader", cw->stats.dropped_not_leader));
        kick(cw);
        return;
    }
    /* The datums waiting (not those of a request in flight, which cannot be recalled) go now, at
     * the moment the lease is lost, so none is sent after another replica may lead. */
    size_t dropped = drop_not_leader(cw, cw->inflight_n);
    CMH_LOG(cw->log, CMH_LOG_WARN, "cloudwatch: not leader; queued datums dropped",
            CMH_UINT("dropped", dropped), CMH_UINT("in_flight", cw->inflight_n));
    if (cw->st == ST_TIMER) {
        uv_timer_stop(&cw->timer);
        idle(cw); /* ends a flush that only waited for a backoff */
    }
}

void cmh_cloudwatch_stats(const struct cmh_cloudwatch *cw, struct cmh_cloudwatch_stats *out)
{
    *out = cw->stats;
    out->in_queue = cw->q.n;
    out->in_flight = cw->inflight_n;
}

int cmh_cloudwatch_ready(const struct cmh_cloudwatch *cw)
{
    if (cw->stats.access_denied)
        return -EACCES;
    if (!cw->standby && cw->o.unready_after_ms > 0 && cw->stats.failing_since_ms > 0 &&
        uv_now(cw->loop) - cw->stats.failing_since_ms >= cw->o.unready_after_ms)
        return -ETIMEDOUT;
    return 0;
}

void cmh_cloudwatch_close(struct cmh_cloudwatch *cw, cmh_cloudwatch_close_cb close_cb, void *arg)
{
    if (cw == NULL || cw->freeing)
        return;
    cw->freeing = 1;
    cw->close_cb = close_cb;
    cw->close_arg = arg;
    drop_all_shutdown(cw);
    uv_close((uv_handle_t *)&cw->timer, on_timer_close);
    uv_close((uv_handle_t *)&cw->deadline, on_timer_close);
}
