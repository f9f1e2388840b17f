/* CloudWatch publisher: pure parts (classification, error bodies, endpoints, encoding, datum
 * checks) and the whole path against the loopback stand-in (test/sim/cloudwatch_standin.py),
 * which recomputes every signature with botocore and validates every request against botocore's
 * PutMetricData model: exact delivery, batch limits, every fault class, splitting, overflow, age,
 * flush. The accounting invariant is checked on every loop iteration. Every test ends with
 * uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_peer.h"
#include "test_standin_ctl.h"

#include "cmh/core/container_of.h"
#include "cmh/aws/cloudwatch.h"
#include "cmh/aws/cloudwatch_int.h"
#include "cmh/core/buf.h"
#include "cmh/http/curl_uv.h"
#include "cmh/aws/sigv4.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_ID "AKIDCMHTEST"
#define SECRET "cmh/test+secret=key"
#define TOKEN  "session-token-1"
#define REGION "us-west-2"

/* Pure parts ---------------------------------------------------------------------------------- */

static void classify_uses_code_before_status(void **state)
{
    (void)state;
    static const struct {
        enum cmh_curl_uv_error err;
        long status;
        const char *code;
        enum cmh_cw_class want;
    } cases[] = {
        {CMH_CURL_OK, 200, NULL, CMH_CW_OK},
        {CMH_CURL_OK, 400, "Throttling", CMH_CW_THROTTLE},
        {CMH_CURL_OK, 400, "ThrottlingException", CMH_CW_THROTTLE},
        {CMH_CURL_OK, 429, NULL, CMH_CW_THROTTLE},
        {CMH_CURL_OK, 500, "InternalFailure", CMH_CW_SERVER},
        {CMH_CURL_OK, 503, NULL, CMH_CW_SERVER},
        {CMH_CURL_OK, 502, "SomethingNew", CMH_CW_SERVER},
        {CMH_CURL_OK, 403, "ExpiredToken", CMH_CW_EXPIRED},
        {CMH_CURL_OK, 400, "ExpiredTokenException", CMH_CW_EXPIRED},
        {CMH_CURL_OK, 403, "AccessDenied", CMH_CW_DENIED},
        {CMH_CURL_OK, 400, "AccessDeniedException", CMH_CW_DENIED},
        {CMH_CURL_OK, 403, "SignatureDoesNotMatch", CMH_CW_DENIED},
        {CMH_CURL_OK, 403, NULL, CMH_CW_DENIED},
        {CMH_CURL_OK, 400, "InvalidParameterValue", CMH_CW_INVALID},
        {CMH_CURL_OK, 400, "InvalidParameterCombination", CMH_CW_INVALID},
        {CMH_CURL_OK, 400, "MissingParameter", CMH_CW_INVALID},
        {CMH_CURL_OK, 413, NULL, CMH_CW_INVALID},
        {CMH_CURL_OK, 400, "InvalidAction", CMH_CW_CLIENT},
        {CMH_CURL_OK, 400, NULL, CMH_CW_CLIENT},
        {CMH_CURL_OK, 404, "", CMH_CW_CLIENT},
        {CMH_CURL_ERR_RESET, 0, NULL, CMH_CW_NETWORK},
        {CMH_CURL_ERR_TIMEOUT, 0, NULL, CMH_CW_NETWORK},
        {CMH_CURL_ERR_CONNECT, 0, NULL, CMH_CW_NETWORK},
        {CMH_CURL_ERR_TLS, 0, NULL, CMH_CW_NETWORK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum cmh_cw_class got =
            cmh_cloudwatch_classify(cases[i].err, cases[i].status, cases[i].code);
        if (got != cases[i].want)
            fail_msg("case %zu (%ld %s): %s, want %s", i, cases[i].status,
                     cases[i].code ? cases[i].code : "-", cmh_cloudwatch_class_name(got),
                     cmh_cloudwatch_class_name(cases[i].want));
    }
}

static void error_body_code_and_message(void **state)
{
    (void)state;
    char code[64], msg[128];
    /* A real CloudWatch answer (Query protocol). */
    const char *real =
        "<ErrorResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">\n"
        "  <Error>\n    <Type>Sender</Type>\n    <Code>InvalidParameterValue</Code>\n"
        "    <Message>The value NaN for parameter MetricData.member.1.Value &amp; &lt;x&gt; is "
        "invalid.</Message>\n  </Error>\n  <RequestId>f1e2</RequestId>\n</ErrorResponse>\n";
    assert_int_equal(
        cmh_cloudwatch_parse_error(real, strlen(real), code, sizeof code, msg, sizeof msg), 0);
    assert_string_equal(code, "InvalidParameterValue");
    assert_string_equal(msg, "The value NaN for parameter MetricData.member.1.Value & <x> is "
                             "invalid.");
    /* The Code of the Error element wins over one elsewhere; whitespace is trimmed. */
    const char *two = "<R><Code>Outer</Code><Error><Code> Throttling </Code></Error></R>";
    assert_int_equal(cmh_cloudwatch_parse_error(two, strlen(two), code, sizeof code, NULL, 0), 0);
    assert_string_equal(code, "Throttling");
    /* STS-style bare Error element. */
    const char *bare = "<Error><Code>ExpiredToken</Code></Error>";
    assert_int_equal(
        cmh_cloudwatch_parse_error(bare, strlen(bare), code, sizeof code, msg, sizeof msg), 0);
    assert_string_equal(code, "ExpiredToken");
    assert_string_equal(msg, "");
    /* Refused: no code, unterminated, empty, bad characters, too long, not XML, truncated. */
    const char *bad[] = {
        "",
        "<Error><Message>x</Message></Error>",
        "<Error><Code>Throttling",
        "<Error><Code></Code></Error>",
        "<Error><Code>Bad Code</Code></Error>",
        "<Error><Code>a<b</Code></Error>",
        "{\"__type\":\"Throttling\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(
            cmh_cloudwatch_parse_error(bad[i], strlen(bad[i]), code, sizeof code, msg, sizeof msg),
            -EPROTO);
        assert_string_equal(code, "");
    }
    char small[8];
    assert_int_equal(cmh_cloudwatch_parse_error(bare, strlen(bare), small, sizeof small, NULL, 0),
                     -EPROTO);
    /* Length is honoured: the code past len is not seen. */
    assert_int_equal(cmh_cloudwatch_parse_error(real, 60, code, sizeof code, NULL, 0), -EPROTO);
}

static void endpoint_is_partition_aware(void **state)
{
    (void)state;
    char buf[128];
    assert_true(cmh_cloudwatch_endpoint("us-east-1", NULL, buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://monitoring.us-east-1.amazonaws.com");
    assert_true(cmh_cloudwatch_endpoint("cn-north-1", "", buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://monitoring.cn-north-1.amazonaws.com.cn");
    assert_true(cmh_cloudwatch_endpoint("us-gov-west-1", NULL, buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://monitoring.us-gov-west-1.amazonaws.com");
    assert_true(cmh_cloudwatch_endpoint("us-iso-east-1", NULL, buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://monitoring.us-iso-east-1.c2s.ic.gov");
    assert_true(cmh_cloudwatch_endpoint("us-isob-east-1", NULL, buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://monitoring.us-isob-east-1.sc2s.sgov.gov");
    assert_true(cmh_cloudwatch_endpoint("eu-west-1", "http://127.0.0.1:4566", buf, sizeof buf) > 0);
    assert_string_equal(buf, "http://127.0.0.1:4566");
    assert_int_equal(cmh_cloudwatch_endpoint("EU_WEST", NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_cloudwatch_endpoint("x.evil.com/", NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_cloudwatch_endpoint(NULL, NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_cloudwatch_endpoint("us-east-1", NULL, buf, 10), -ENOSPC);
}

static void encode_datum_exact_form_appended_within_cap(void **state)
{
    (void)state;
    struct cmh_datum d = {
        .metric = "assignIPAddresses",
        .unit = "Count",
        .timestamp_ms = 1764142602123LL, /* 2025-11-26T07:36:42.123Z */
        .kind = CMH_DATUM_VALUE,
        .value = 1e+20,
        .dims = {{"CLUSTER_ID", "prod a&b"}},
        .ndims = 1,
    };
    const char *want = "&MetricData.member.7.MetricName=assignIPAddresses"
                       "&MetricData.member.7.Dimensions.member.1.Name=CLUSTER_ID"
                       "&MetricData.member.7.Dimensions.member.1.Value=prod%20a%26b"
                       "&MetricData.member.7.Timestamp=2025-11-26T07%3A36%3A42.123Z"
                       "&MetricData.member.7.Value=1e%2B20"
                       "&MetricData.member.7.Unit=Count"
                       "&MetricData.member.7.StorageResolution=60";
    size_t n = strlen(want);
    struct cmh_buf b;
    cmh_buf_init(&b, 0);
    assert_int_equal(cmh_buf_addstr(&b, "Namespace=x"), 0);
    assert_int_equal(cmh_cloudwatch_encode_datum(&b, &d, 7, 60), 0);
    assert_int_equal(cmh_buf_len(&b), strlen("Namespace=x") + n);
    assert_string_equal(cmh_buf_str(&b),
                        "Namespace=x&MetricData.member.7.MetricName=assignIPAddresses"
                        "&MetricData.member.7.Dimensions.member.1.Name=CLUSTER_ID"
                        "&MetricData.member.7.Dimensions.member.1.Value=prod%20a%26b"
                        "&MetricData.member.7.Timestamp=2025-11-26T07%3A36%3A42.123Z"
                        "&MetricData.member.7.Value=1e%2B20"
                        "&MetricData.member.7.Unit=Count"
                        "&MetricData.member.7.StorageResolution=60");
    cmh_buf_free(&b);
    /* A buffer whose cap is the encoding's length holds it; any smaller cap fails it whole. */
    cmh_buf_init(&b, n);
    assert_int_equal(cmh_cloudwatch_encode_datum(&b, &d, 7, 60), 0);
    assert_string_equal(cmh_buf_str(&b), want);
    cmh_buf_free(&b);
    for (size_t cap = 1; cap < n; cap += 7) {
        cmh_buf_init(&b, cap);
        assert_int_equal(cmh_cloudwatch_encode_datum(&b, &d, 7, 60), -E2BIG);
        assert_int_equal(cmh_buf_err(&b), -E2BIG);
        assert_int_equal(cmh_buf_len(&b), 0);
        cmh_buf_free(&b);
    }
    struct cmh_datum s = {
        .metric = "m",
        .timestamp_ms = 1000,
        .kind = CMH_DATUM_STATS,
        .count = 3,
        .sum = 0.5,
        .min = -1,
        .max = 1.25,
    };
    cmh_buf_init(&b, 0);
    assert_int_equal(cmh_cloudwatch_encode_datum(&b, &s, 1, 0), 0);
    assert_string_equal(cmh_buf_str(&b),
                        "&MetricData.member.1.MetricName=m"
                        "&MetricData.member.1.Timestamp=1970-01-01T00%3A00%3A01.000Z"
                        "&MetricData.member.1.StatisticValues.SampleCount=3"
                        "&MetricData.member.1.StatisticValues.Sum=0.5"
                        "&MetricData.member.1.StatisticValues.Minimum=-1"
                        "&MetricData.member.1.StatisticValues.Maximum=1.25");
    cmh_buf_free(&b);
}

static void datum_validity_matches_cloudwatch_rules(void **state)
{
    (void)state;
    struct cmh_datum ok = {.metric = "m", .unit = "Count", .timestamp_ms = 1, .value = 1};
    assert_int_equal(cmh_cloudwatch_datum_valid(&ok), 0);
    struct cmh_datum d = ok;
    d.value = NAN;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d.value = INFINITY;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d.value = ldexp(1.0, 361);
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d.value = ldexp(1.0, 360);
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), 0);
    d.value = ldexp(1.0, -361);
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d.value = 0;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), 0);
    d.unit = "Furlongs";
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d = ok;
    d.metric = "";
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d = ok;
    d.dims[0] = (struct cmh_dim){"CLUSTER_ID", ""};
    d.ndims = 1;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d = ok;
    d.kind = CMH_DATUM_STATS;
    d.count = 2, d.sum = 3, d.min = 2, d.max = 1;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
    d.min = 1, d.max = 2;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), 0);
    d.count = 0;
    assert_int_equal(cmh_cloudwatch_datum_valid(&d), -EINVAL);
}

/* The stand-in --------------------------------------------------------------------------------- */

struct standin {
    struct test_peer proc;
    int http, https;
    char ca[512];
};

static struct standin the_standin;

static int standin_start(void **state)
{
    struct standin *p = &the_standin;
    char script[1024];
    snprintf(script, sizeof script, "%s/test/sim/cloudwatch_standin.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON,
                    script,
                    "--tls",
                    "--lifetime",
                    "200",
                    "--stall",
                    "3",
                    "--region",
                    REGION,
                    "--key",
                    KEY_ID ":" SECRET ":" TOKEN,
                    NULL};
    char line[1024] = "";
    if (test_peer_start(&p->proc, argv) != 0)
        return -1;
    if (test_peer_read_line(&p->proc, line, sizeof line, 60) != 0 ||
        sscanf(line, "READY http=%d https=%d ca=%511s", &p->http, &p->https, p->ca) != 3) {
        fprintf(stderr, "stand-in did not start: '%s'\n", line);
        test_peer_stop(&p->proc);
        return -1;
    }
    *state = p;
    return 0;
}

static int standin_stop(void **state)
{
    (void)state;
    test_peer_stop(&the_standin.proc);
    return 0;
}

/* A test's loop, curl_uv, publisher and credentials. */
struct fx {
    uv_loop_t loop;
    struct cmh_curl_uv curl;
    struct cmh_cloudwatch *cw;
    uv_prepare_t check; /* the accounting invariant, every iteration */
    uv_timer_t tick;    /* keeps uv_run returning while waiting */
    unsigned gets, invalidates;
    const char *secret;
    int flushed;
    uint64_t invariant_checks;
    int closed;
    uv_timer_t creds_timer;
    uint64_t async_ms;
    int fail_next;
    cmh_cloudwatch_creds_cb pending_cb;
    void *pending_arg;
};

/* Credentials: answered inside get (static keys), or later from a timer as the real provider does
 * (async_ms > 0); fail_next makes the next get fail through its callback. */
static void on_creds_timer(uv_timer_t *t);

static int creds_get(void *ctx, cmh_cloudwatch_creds_cb cb, void *arg)
{
    struct fx *f = ctx;
    f->gets++;
    if (f->async_ms > 0) {
        f->pending_cb = cb;
        f->pending_arg = arg;
        uv_timer_start(&f->creds_timer, on_creds_timer, f->async_ms, 0);
        return 0;
    }
    struct cmh_sigv4_credentials c = {KEY_ID, f->secret, TOKEN};
    cb(arg, 0, &c, NULL);
    return 0;
}

static void on_creds_timer(uv_timer_t *t)
{
    struct fx *f = container_of(t, struct fx, creds_timer);
    struct cmh_sigv4_credentials c = {KEY_ID, f->secret, TOKEN};
    cmh_cloudwatch_creds_cb cb = f->pending_cb;
    f->pending_cb = NULL;
    if (f->fail_next) {
        f->fail_next = 0;
        cb(f->pending_arg, -EIO, NULL, "test: no credentials");
    } else {
        cb(f->pending_arg, 0, &c, NULL);
    }
}

static void creds_invalidate(void *ctx)
{
    struct fx *f = ctx;
    f->invalidates++;
}

static void check_invariant(struct fx *f)
{
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f->cw, &s);
    uint64_t rhs = s.published + s.dropped_overflow + s.dropped_age + s.dropped_invalid +
                   s.dropped_shutdown + s.dropped_not_leader + s.in_queue;
    if (s.enqueued != rhs)
        fail_msg("accounting broken: enqueued %llu != published %llu + drops "
                 "%llu/%llu/%llu/%llu/%llu + in_queue %llu",
                 (unsigned long long)s.enqueued, (unsigned long long)s.published,
                 (unsigned long long)s.dropped_overflow, (unsigned long long)s.dropped_age,
                 (unsigned long long)s.dropped_invalid, (unsigned long long)s.dropped_shutdown,
                 (unsigned long long)s.dropped_not_leader, (unsigned long long)s.in_queue);
    f->invariant_checks++;
}

static void on_prepare(uv_prepare_t *p)
{
    struct fx *f = container_of(p, struct fx, check);
    if (f->cw != NULL)
        check_invariant(f);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void fx_opts(struct fx *f, struct cmh_cloudwatch_opts *o, char *url, size_t url_len)
{
    snprintf(url, url_len, "http://127.0.0.1:%d/", the_standin.http);
    memset(o, 0, sizeof *o);
    o->region = REGION;
    o->endpoint = url;
    o->storage_resolution = 60;
    o->backoff_base_ms = 20;
    o->backoff_cap_ms = 200;
    o->seed = 42;
    o->creds = (struct cmh_cloudwatch_creds){creds_get, creds_invalidate, f};
}

static void fx_init(struct fx *f, const struct cmh_cloudwatch_opts *o, uint64_t timeout_ms)
{
    memset(f, 0, sizeof *f);
    f->secret = SECRET;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct cmh_curl_uv_opts co = {.timeout_ms = timeout_ms, .ca_file = the_standin.ca};
    assert_int_equal(cmh_curl_uv_init(&f->curl, &f->loop, &co, NULL), 0);
    uv_prepare_init(&f->loop, &f->check);
    uv_prepare_start(&f->check, on_prepare);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 10, 10);
    uv_timer_init(&f->loop, &f->creds_timer);
    if (o != NULL) {
        struct cmh_cloudwatch_opts oo = *o;
        oo.creds.ctx = f;
        assert_int_equal(cmh_cloudwatch_new(&f->cw, &f->loop, &f->curl, &oo, NULL), 0);
    }
}

static void on_curl_closed(struct cmh_curl_uv *c)
{
    (void)c;
}

static void fx_close(struct fx *f)
{
    if (f->cw != NULL) {
        check_invariant(f);
        cmh_cloudwatch_close(f->cw, NULL, NULL);
        f->cw = NULL;
    }
    cmh_curl_uv_close(&f->curl, on_curl_closed);
    uv_close((uv_handle_t *)&f->check, NULL);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_close((uv_handle_t *)&f->creds_timer, NULL);
    for (int i = 0; i < 1000 && uv_run(&f->loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Runs the loop until the publisher has nothing queued (and nothing in flight), or timeout. */
static void run_until_empty(struct fx *f, uint64_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    struct cmh_cloudwatch_stats s;
    do {
        uv_run(&f->loop, UV_RUN_ONCE);
        cmh_cloudwatch_stats(f->cw, &s);
    } while (s.in_queue > 0 && now_ms() < end);
    if (s.in_queue > 0)
        fail_msg("still %llu datums queued after %llu ms", (unsigned long long)s.in_queue,
                 (unsigned long long)timeout_ms);
}

static void run_for(struct fx *f, uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    while (now_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

/* A control call to the stand-in, through curl_uv on the same loop. */
static json_t *standin_call(struct fx *f, const char *method, const char *path, const char *json)
{
    return test_standin_call(&f->loop, &f->curl, the_standin.http, method, path, json, 256u << 20);
}

static void standin_reset(struct fx *f)
{
    json_decref(standin_call(f, "POST", "/reset", "{}"));
}

static void standin_faults(struct fx *f, const char *json)
{
    json_decref(standin_call(f, "POST", "/faults", json));
}

static long long stat_of(json_t *stats, const char *key)
{
    json_t *v = json_object_get(stats, key);
    return v ? json_integer_value(v) : -1;
}

static long long fault_count(json_t *stats, const char *key)
{
    json_t *v = json_object_get(json_object_get(stats, "faults"), key);
    return v ? json_integer_value(v) : 0;
}

/* Datums the tests send: metric m<i % 7>, dims CLUSTER_ID and node n<i>, values that need all
 * 17 digits to read back, a third of them statistic sets. */
struct datums {
    struct cmh_datum *v;
    char (*names)[32];
    size_t n;
};

static void make_datums(struct datums *d, size_t n, int64_t ts_ms, const char *prefix, size_t pad)
{
    d->n = n;
    d->v = calloc(n, sizeof *d->v);
    d->names = calloc(n * 2, sizeof *d->names);
    static char longval[1025];
    memset(longval, 'v', sizeof longval - 1);
    assert_true(pad < sizeof longval);
    for (size_t i = 0; i < n; i++) {
        struct cmh_datum *x = &d->v[i];
        snprintf(d->names[2 * i], 32, "%s%zu", prefix, i % 7);
        snprintf(d->names[2 * i + 1], 32, "n%zu", i);
        x->metric = d->names[2 * i];
        x->unit = "Count";
        x->timestamp_ms = ts_ms + (int64_t)(i / 100);
        x->dims[0] = (struct cmh_dim){"CLUSTER_ID", "cluster/one"};
        x->dims[1] = (struct cmh_dim){"node", d->names[2 * i + 1]};
        x->ndims = 2;
        if (pad > 0) {
            x->dims[2] = (struct cmh_dim){"pad", longval + (sizeof longval - 1 - pad)};
            x->ndims = 3;
        }
        if (i % 3 == 2) {
            x->kind = CMH_DATUM_STATS;
            x->count = (double)(i % 5 + 1);
            x->sum = (double)i / 3.0;
            x->min = -0.1 * (double)i;
            x->max = 1e10 / 7.0 + (double)i;
        } else {
            x->kind = CMH_DATUM_VALUE;
            x->value = (double)i / 7.0 + 1e-3;
        }
    }
}

static void free_datums(struct datums *d)
{
    free(d->v);
    free(d->names);
}

static double num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_non_null(v);
    return json_number_value(v);
}

/* Every datum in d that is not in skip appears exactly once at the stand-in, equal in every field,
 * and nothing else does. */
static void expect_exactly(struct fx *f, const struct datums *d, const char *skip_metric)
{
    json_t *all = standin_call(f, "GET", "/datums", NULL);
    size_t want = 0;
    char *seen = calloc(d->n, 1);
    for (size_t i = 0; i < d->n; i++)
        if (skip_metric == NULL || strcmp(d->v[i].metric, skip_metric) != 0)
            want++;
    assert_int_equal(json_array_size(all), want);
    size_t k;
    json_t *r;
    json_array_foreach(all, k, r)
    {
        const char *node =
            json_string_value(json_object_get(json_object_get(r, "dimensions"), "node"));
        assert_non_null(node);
        size_t i = strtoul(node + 1, NULL, 10);
        assert_true(i < d->n);
        if (seen[i]++)
            fail_msg("datum %zu published twice", i);
        const struct cmh_datum *x = &d->v[i];
        assert_string_equal(json_string_value(json_object_get(r, "metric")), x->metric);
        assert_string_equal(json_string_value(json_object_get(r, "namespace")), "Kubernetes");
        assert_string_equal(json_string_value(json_object_get(r, "unit")), "Count");
        assert_int_equal(json_integer_value(json_object_get(r, "timestamp_ms")), x->timestamp_ms);
        assert_int_equal(json_integer_value(json_object_get(r, "storage_resolution")), 60);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(r, "dimensions"), "CLUSTER_ID")),
            "cluster/one");
        if (x->kind == CMH_DATUM_VALUE) {
            assert_true(num(r, "value") == x->value);
        } else {
            json_t *s = json_object_get(r, "stats");
            assert_non_null(s);
            assert_true(num(s, "count") == x->count && num(s, "sum") == x->sum &&
                        num(s, "min") == x->min && num(s, "max") == x->max);
        }
    }
    json_decref(all);
    free(seen);
}

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Network tests ------------------------------------------------------------------------------- */

static void publishes_every_datum_exactly_once_gzip_signed(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    struct datums d;
    make_datums(&d, 2500, wall_now_ms() - 60000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 30000);
    expect_exactly(&f, &d, NULL);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 2500);
    assert_int_equal(s.batches_ok, 3);
    assert_int_equal(s.requests, 3);
    print_message("3 batches: %llu form bytes, %llu gzip bytes sent\n",
                  (unsigned long long)s.bytes_raw, (unsigned long long)s.bytes_sent);
    assert_true(s.bytes_sent < s.bytes_raw / 4); /* gzip did its job */
    json_t *st = standin_call(&f, "GET", "/stats", NULL);
    assert_int_equal(stat_of(st, "accepted"), 3);
    assert_int_equal(stat_of(st, "gzip_requests"), 3);
    assert_int_equal(stat_of(st, "bad_signature"), 0);
    assert_int_equal(stat_of(st, "invalid_params"), 0);
    assert_int_equal(stat_of(st, "duplicates"), 0);
    assert_int_equal(stat_of(st, "max_datums_in_request"), 1000);
    json_decref(st);
    assert_true(f.invariant_checks > 3);
    free_datums(&d);
    fx_close(&f);
}

static void batches_at_1000_datums_and_1mb_pass_model_validation(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 20000);
    standin_reset(&f);
    /* ~1.1 kB per datum: the 1 MB limit cuts batches before 1000 datums. */
    struct datums d;
    make_datums(&d, 2000, wall_now_ms() - 1000, "big", 1000);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 60000);
    json_t *st = standin_call(&f, "GET", "/stats", NULL);
    long long max_raw = stat_of(st, "max_raw_bytes");
    assert_true(max_raw <= CMH_CW_MAX_BATCH_BYTES);
    assert_true(max_raw > CMH_CW_MAX_BATCH_BYTES - 2000); /* filled to the limit */
    assert_true(stat_of(st, "max_datums_in_request") < 1000);
    assert_int_equal(stat_of(st, "invalid_params"), 0);
    assert_int_equal(stat_of(st, "datums"), 2000);
    json_decref(st);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 2000);
    free_datums(&d);
    fx_close(&f);
}

static void every_retryable_fault_then_exact_delivery(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.max_attempts = 10;
    fx_init(&f, &o, 1500); /* the stand-in stalls 3 s: a stall is a timeout */
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"throttle\",\"500\",\"503\",\"reset\",\"stall\","
                       "{\"kind\":\"throttle429\",\"retry_after\":1}]}");
    struct datums d;
    make_datums(&d, 1500, wall_now_ms() - 1000, "m", 0);
    uint64_t t0 = now_ms();
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 30000);
    uint64_t took = now_ms() - t0;
    expect_exactly(&f, &d, NULL);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.retries[CMH_CW_THROTTLE], 2);
    assert_int_equal(s.retries[CMH_CW_SERVER], 2);
    assert_int_equal(s.retries[CMH_CW_NETWORK], 2); /* the reset and the stall (a timeout) */
    assert_int_equal(s.attempts[CMH_CW_OK], 2);
    assert_int_equal(s.batches_failed, 6);
    assert_true(took >= 1000 + 1500); /* Retry-After: 1 honoured, the stall timed out */
    json_t *st = standin_call(&f, "GET", "/stats", NULL);
    assert_int_equal(stat_of(st, "requests"), s.requests);
    assert_int_equal(fault_count(st, "throttle"), 1);
    assert_int_equal(fault_count(st, "reset"), 1);
    assert_int_equal(fault_count(st, "stall"), 1);
    assert_int_equal(stat_of(st, "duplicates"), 0);
    json_decref(st);
    free_datums(&d);
    fx_close(&f);
}

static void thirty_percent_faults_for_ten_rounds_nothing_lost_or_duplicated(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.max_attempts = 3; /* some batches exhaust their attempts and are re-queued */
    o.max_batch_datums = 100;
    fx_init(&f, &o, 5000);
    standin_reset(&f);
    standin_faults(&f, "{\"random\":{\"rate\":0.3,\"seed\":3,\"kinds\":[\"throttle\",\"500\","
                       "\"503\",\"reset\",\"throttle429\"]}}");
    struct datums d;
    make_datums(&d, 3000, wall_now_ms() - 600000, "m", 0);
    for (int round = 0; round < 10; round++) {
        assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v + round * 300, 300), 0);
        run_for(&f, 150);
    }
    run_for(&f, 300);
    standin_faults(&f, "{\"clear\":true}");
    run_until_empty(&f, 30000);
    expect_exactly(&f, &d, NULL);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 3000);
    json_t *st = standin_call(&f, "GET", "/stats", NULL);
    long long faults = fault_count(st, "throttle") + fault_count(st, "500") +
                       fault_count(st, "503") + fault_count(st, "reset") +
                       fault_count(st, "throttle429");
    print_message("requests %lld, faults %lld, retries throttle %llu server %llu network %llu, "
                  "requeued %llu\n",
                  stat_of(st, "requests"), faults, (unsigned long long)s.retries[CMH_CW_THROTTLE],
                  (unsigned long long)s.retries[CMH_CW_SERVER],
                  (unsigned long long)s.retries[CMH_CW_NETWORK], (unsigned long long)s.requeued);
    assert_true(fault_count(st, "throttle") + fault_count(st, "throttle429") >= 1);
    assert_true(fault_count(st, "500") + fault_count(st, "503") >= 1);
    assert_true(fault_count(st, "reset") >= 1);
    assert_true(s.retries[CMH_CW_NETWORK] >= 1);
    assert_int_equal(faults, (long long)s.batches_failed);
    assert_int_equal(stat_of(st, "duplicates"), 0);
    json_decref(st);
    free_datums(&d);
    fx_close(&f);
}

static void invalid_datums_isolated_by_splitting_rest_published(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    struct datums d;
    make_datums(&d, 1000, wall_now_ms() - 1000, "m", 0);
    /* Two datums CloudWatch refuses (the stand-in is told which), far apart in the batch. */
    snprintf(d.names[2 * 123], 32, "poison");
    snprintf(d.names[2 * 876], 32, "poison");
    standin_faults(&f, "{\"poison\":[\"poison\"]}");
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 30000);
    expect_exactly(&f, &d, "poison");
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_invalid, 2);
    assert_int_equal(s.published, 998);
    assert_true(s.splits >= 10 && s.splits <= 40); /* bisection, not one datum at a time */
    assert_string_equal(s.last_error, "InvalidParameterValue");
    free_datums(&d);
    fx_close(&f);
}

static void access_denied_fails_ready_keeps_data_recovers(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"denied\",\"denied\"]}");
    struct datums d;
    make_datums(&d, 50, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    struct cmh_cloudwatch_stats s;
    uint64_t end = now_ms() + 5000;
    do {
        uv_run(&f.loop, UV_RUN_ONCE);
        cmh_cloudwatch_stats(f.cw, &s);
    } while (!s.access_denied && now_ms() < end);
    assert_int_equal(cmh_cloudwatch_ready(f.cw), -EACCES);
    assert_int_equal(s.in_queue, 50);
    assert_string_equal(s.last_error, "AccessDenied");
    run_until_empty(&f, 10000);
    assert_int_equal(cmh_cloudwatch_ready(f.cw), 0);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.attempts[CMH_CW_DENIED], 2);
    expect_exactly(&f, &d, NULL);
    free_datums(&d);
    fx_close(&f);
}

static void wrong_secret_is_caught_by_the_botocore_signature_check(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    f.secret = "not-the-secret";
    standin_reset(&f);
    struct datums d;
    make_datums(&d, 10, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_for(&f, 500);
    assert_int_equal(cmh_cloudwatch_ready(f.cw), -EACCES);
    json_t *st = standin_call(&f, "GET", "/stats", NULL);
    assert_true(stat_of(st, "bad_signature") >= 1);
    assert_int_equal(stat_of(st, "accepted"), 0);
    json_decref(st);
    f.secret = SECRET;
    run_until_empty(&f, 10000);
    expect_exactly(&f, &d, NULL);
    free_datums(&d);
    fx_close(&f);
}

static void expired_token_refreshes_credentials_once(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"expired\"]}");
    struct datums d;
    make_datums(&d, 20, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 10000);
    assert_int_equal(f.invalidates, 1);
    assert_int_equal(f.gets, 2);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.retries[CMH_CW_EXPIRED], 1);
    expect_exactly(&f, &d, NULL);
    free_datums(&d);
    fx_close(&f);
}

static void overflow_and_age_drops_are_exact(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.buffer_max = 1000;
    o.max_age_ms = 3600 * 1000;
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    standin_faults(&f, "{\"down\":true}");
    /* Down longer than the buffer: 10 rounds of 250 into a buffer of 1000. */
    struct datums d;
    make_datums(&d, 2500, wall_now_ms() - 1000, "m", 0);
    for (int round = 0; round < 10; round++) {
        assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v + round * 250, 250), 0);
        run_for(&f, 30);
    }
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_overflow, 1500);
    assert_int_equal(s.in_queue, 1000);
    /* Two hours old: past max_age, never sent. */
    struct datums old;
    make_datums(&old, 10, wall_now_ms() - 2 * 3600 * 1000, "old", 0);
    standin_faults(&f, "{\"clear\":true}");
    struct cmh_cloudwatch_opts o2 = o;
    (void)o2;
    run_until_empty(&f, 20000);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 1000);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, old.v, old.n), 0);
    run_until_empty(&f, 5000);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_age, 10);
    assert_int_equal(s.published, 1000);
    assert_int_equal(s.enqueued, 2510);
    json_t *all = standin_call(&f, "GET", "/datums", NULL);
    assert_int_equal(json_array_size(all), 1000);
    json_decref(all);
    /* Locally invalid datums are counted as such, never sent. */
    struct cmh_datum nan_datum = d.v[0];
    nan_datum.value = NAN;
    nan_datum.kind = CMH_DATUM_VALUE;
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, &nan_datum, 1), 0);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_invalid, 1);
    free_datums(&old);
    free_datums(&d);
    fx_close(&f);
}

static void on_flushed(struct cmh_cloudwatch *cw, void *arg)
{
    (void)cw;
    struct fx *f = arg;
    f->flushed++;
}

static void flush_sends_queue_or_counts_rest_at_deadline(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.backoff_cap_ms = 5000;
    o.backoff_base_ms = 2000;
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    /* One throttle with a long backoff: the flush clamps the wait and still delivers all. */
    standin_faults(&f, "{\"script\":[\"throttle\"]}");
    struct datums d;
    make_datums(&d, 1200, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_for(&f, 100);
    uint64_t t0 = now_ms();
    assert_int_equal(cmh_cloudwatch_flush(f.cw, 3000, on_flushed, &f), 0);
    assert_int_equal(f.flushed, 0); /* never inside the call */
    assert_int_equal(cmh_cloudwatch_flush(f.cw, 3000, on_flushed, &f), -EBUSY);
    while (!f.flushed && now_ms() - t0 < 10000)
        uv_run(&f.loop, UV_RUN_ONCE);
    assert_int_equal(f.flushed, 1);
    assert_true(now_ms() - t0 < 10000);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 1200);
    assert_int_equal(s.dropped_shutdown, 0);
    expect_exactly(&f, &d, NULL);
    /* After the flush, enqueues are dropped_shutdown. */
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, 5), 0);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_shutdown, 5);
    fx_close(&f);

    /* Stand-in down: at the deadline everything left counts as dropped_shutdown. */
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    standin_faults(&f, "{\"down\":true}");
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_for(&f, 50);
    t0 = now_ms();
    assert_int_equal(cmh_cloudwatch_flush(f.cw, 700, on_flushed, &f), 0);
    while (!f.flushed && now_ms() - t0 < 10000)
        uv_run(&f.loop, UV_RUN_ONCE);
    uint64_t took = now_ms() - t0;
    assert_int_equal(f.flushed, 1);
    /* Not before the deadline; the upper bound is loose: CI machines are loaded and sanitized. */
    if (!(took >= 695 && took < 6000))
        fail_msg("flush took %llu ms, deadline 700", (unsigned long long)took);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_shutdown, 1200);
    assert_int_equal(s.published, 0);
    assert_int_equal(s.in_queue, 0);
    run_for(&f, 100);
    standin_faults(&f, "{\"clear\":true}");
    fx_close(&f);

    /* Nothing queued: the callback still comes from the loop. */
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, &o, 10000);
    assert_int_equal(cmh_cloudwatch_flush(f.cw, 1000, on_flushed, &f), 0);
    assert_int_equal(f.flushed, 0);
    run_for(&f, 20);
    assert_int_equal(f.flushed, 1);
    free_datums(&d);
    fx_close(&f);
}

/* Standby (the lease was lost): what is queued is dropped as dropped_not_leader at once, a request
 * in flight that then fails is dropped, not retried, nothing is queued or sent while in standby,
 * and leading again publishes what comes next. */
static void standby_drops_queue_and_sends_nothing(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.max_batch_datums = 100;
    fx_init(&f, &o, 1500); /* the stand-in's stall (3 s) is a timeout at 1.5 s */
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"stall\"]}");
    struct datums d, d2;
    make_datums(&d, 300, wall_now_ms() - 1000, "m", 0);
    make_datums(&d2, 50, wall_now_ms() - 500, "k", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    struct cmh_cloudwatch_stats s;
    uint64_t t0 = now_ms();
    do {
        uv_run(&f.loop, UV_RUN_ONCE);
        cmh_cloudwatch_stats(f.cw, &s);
    } while (s.in_flight == 0 && now_ms() - t0 < 5000);
    assert_int_equal(s.in_flight, 100); /* the first batch, stalled */
    cmh_cloudwatch_standby(f.cw, true);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_not_leader, 200);
    assert_int_equal(s.in_queue, 100);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, 20), 0);
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_not_leader, 220);
    run_for(&f, 2500); /* the stalled request times out: dropped, not retried */
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.dropped_not_leader, 320);
    assert_int_equal(s.in_queue, 0);
    assert_int_equal(s.published, 0);
    assert_int_equal(s.batches_failed, 1);
    check_invariant(&f);
    cmh_cloudwatch_standby(f.cw, false);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d2.v, d2.n), 0);
    run_until_empty(&f, 10000);
    expect_exactly(&f, &d2, NULL); /* none of the first 320 reached the stand-in */
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.published, 50);
    fx_close(&f);
    free_datums(&d);
    free_datums(&d2);
}

static void https_endpoint_with_test_ca(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    snprintf(url, sizeof url, "https://127.0.0.1:%d", the_standin.https);
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    struct datums d;
    make_datums(&d, 30, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 10000);
    expect_exactly(&f, &d, NULL);
    free_datums(&d);
    fx_close(&f);
}

static void max_attempts_requeue_then_delivery_with_async_credentials(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    o.max_attempts = 2;
    fx_init(&f, &o, 10000);
    f.async_ms = 5;
    f.fail_next = 1; /* the first credentials call fails: a retry, no request */
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"500\",\"503\",\"500\"]}");
    struct datums d;
    make_datums(&d, 40, wall_now_ms() - 1000, "m", 0);
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_until_empty(&f, 10000);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.creds_errors, 1);
    assert_int_equal(s.requeued, 2); /* (creds, 500) then (503, 500) */
    assert_int_equal(s.requests, 4);
    assert_int_equal(s.published, 40);
    assert_int_equal(f.gets, 5);
    expect_exactly(&f, &d, NULL);
    free_datums(&d);
    fx_close(&f);
}

static void free_with_request_or_credentials_pending(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    struct datums d;
    make_datums(&d, 100, wall_now_ms() - 1000, "m", 0);
    /* A request stalled at the stand-in: free, then closing curl_uv cancels it. */
    fx_init(&f, &o, 10000);
    standin_reset(&f);
    standin_faults(&f, "{\"script\":[\"stall\"]}");
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_for(&f, 200);
    struct cmh_cloudwatch_stats s;
    cmh_cloudwatch_stats(f.cw, &s);
    assert_int_equal(s.in_flight, 100);
    fx_close(&f); /* ASan: nothing leaks, nothing is touched after release */
    /* A credentials call outstanding at free: its callback still comes, then the memory goes. */
    fx_init(&f, &o, 10000);
    f.async_ms = 50;
    assert_int_equal(cmh_cloudwatch_enqueue(f.cw, d.v, d.n), 0);
    run_for(&f, 20);
    assert_non_null(f.pending_cb);
    cmh_cloudwatch_close(f.cw, NULL, NULL);
    f.cw = NULL;
    run_for(&f, 100);
    assert_null(f.pending_cb);
    fx_close(&f);
    free_datums(&d);
}

static void new_refuses_bad_options(void **state)
{
    (void)state;
    struct fx f;
    struct cmh_cloudwatch_opts o;
    char url[128];
    fx_opts(&f, &o, url, sizeof url);
    fx_init(&f, NULL, 1000);
    struct cmh_cloudwatch *cw = NULL;
    static const char *const bad_urls[] = {
        "http://10.0.0.1/", "http://localhost:80/", "http://128.0.0.1/", "ftp://127.0.0.1/",
        "https:///",        "https://user@host/",   "http://[::2]:80/",
    };
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        o.endpoint = bad_urls[i];
        if (cmh_cloudwatch_new(&cw, &f.loop, &f.curl, &o, NULL) != -EINVAL)
            fail_msg("endpoint %s accepted", bad_urls[i]);
        assert_null(cw);
    }
    static const char *const good_urls[] = {
        "http://127.0.0.1:1/",
        "http://127.9.8.7",
        "http://[::1]:8080/",
        "https://monitoring.eu-west-1.amazonaws.com",
    };
    for (size_t i = 0; i < sizeof good_urls / sizeof good_urls[0]; i++) {
        o.endpoint = good_urls[i];
        assert_int_equal(cmh_cloudwatch_new(&cw, &f.loop, &f.curl, &o, NULL), 0);
        cmh_cloudwatch_close(cw, NULL, NULL);
    }
    o.endpoint = url;
    static const char *const bad_ns[] = {"", "AWS/EC2", "tab\there"};
    for (size_t i = 0; i < sizeof bad_ns / sizeof bad_ns[0]; i++) {
        o.namespace_ = bad_ns[i];
        assert_int_equal(cmh_cloudwatch_new(&cw, &f.loop, &f.curl, &o, NULL), -EINVAL);
    }
    o.namespace_ = NULL;
    o.storage_resolution = 30;
    assert_int_equal(cmh_cloudwatch_new(&cw, &f.loop, &f.curl, &o, NULL), -EINVAL);
    o.storage_resolution = 1;
    o.region = NULL;
    assert_int_equal(cmh_cloudwatch_new(&cw, &f.loop, &f.curl, &o, NULL), -EINVAL);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(classify_uses_code_before_status),
        cmocka_unit_test(error_body_code_and_message),
        cmocka_unit_test(endpoint_is_partition_aware),
        cmocka_unit_test(encode_datum_exact_form_appended_within_cap),
        cmocka_unit_test(datum_validity_matches_cloudwatch_rules),
    };
    const struct CMUnitTest net[] = {
        cmocka_unit_test(new_refuses_bad_options),
        cmocka_unit_test(publishes_every_datum_exactly_once_gzip_signed),
        cmocka_unit_test(batches_at_1000_datums_and_1mb_pass_model_validation),
        cmocka_unit_test(every_retryable_fault_then_exact_delivery),
        cmocka_unit_test(thirty_percent_faults_for_ten_rounds_nothing_lost_or_duplicated),
        cmocka_unit_test(invalid_datums_isolated_by_splitting_rest_published),
        cmocka_unit_test(access_denied_fails_ready_keeps_data_recovers),
        cmocka_unit_test(wrong_secret_is_caught_by_the_botocore_signature_check),
        cmocka_unit_test(expired_token_refreshes_credentials_once),
        cmocka_unit_test(overflow_and_age_drops_are_exact),
        cmocka_unit_test(flush_sends_queue_or_counts_rest_at_deadline),
        cmocka_unit_test(standby_drops_queue_and_sends_nothing),
        cmocka_unit_test(https_endpoint_with_test_ca),
        cmocka_unit_test(max_attempts_requeue_then_delivery_with_async_credentials),
        cmocka_unit_test(free_with_request_or_credentials_pending),
    };
    signal(SIGPIPE, SIG_IGN);
    int failed = cmocka_run_group_tests_name("cloudwatch_pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("cloudwatch_standin", net, standin_start, standin_stop);
    return failed;
}
