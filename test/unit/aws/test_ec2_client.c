/* The EC2 client against the loopback stand-in (test/sim/ec2_standin.py, which recomputes every
 * SigV4 signature with botocore and validates the DescribeSubnets parameters against the EC2
 * model): pagination, ids, retries through throttling, 5xx, resets and garbage, Retry-After, a
 * refreshed credential after RequestExpired, AccessDenied as a clear error, the attempt bound;
 * unknown ids left out while the others are fetched, whether EC2's message names the first, every
 * or none of them; and the watch in SUBNET_IDS mode (the view is exactly those ids, ENIConfigs
 * are never read, an unknown id is logged once and counted). Every case ends with the loop
 * closed clean. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/aws/ec2.h"
#include "cmh/aws/subnet_watch.h"
#include "cmh/core/log.h"
#include "test_peer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char truth[] =
    "{\"subnets\":["
    "{\"SubnetId\":\"subnet-00000005\",\"CidrBlock\":\"10.0.4.0/24\",\"AvailabilityZone\":\"az-b\","
    "\"AvailableIpAddressCount\":5},"
    "{\"SubnetId\":\"subnet-00000001\",\"CidrBlock\":\"10.0.0.0/24\",\"Ipv6CidrBlocks\":"
    "[\"fd00:1::/64\"],\"AvailabilityZone\":\"az-a\",\"AvailableIpAddressCount\":1},"
    "{\"SubnetId\":\"subnet-00000003\",\"CidrBlock\":\"10.0.2.0/24\",\"AvailabilityZone\":\"az-a\","
    "\"AvailableIpAddressCount\":3},"
    "{\"SubnetId\":\"subnet-00000002\",\"CidrBlock\":\"10.0.1.0/24\",\"AvailabilityZone\":\"az-b\","
    "\"AvailableIpAddressCount\":2},"
    "{\"SubnetId\":\"subnet-00000004\",\"CidrBlock\":\"10.0.3.0/24\",\"AvailabilityZone\":\"az-c\","
    "\"AvailableIpAddressCount\":4}]}";

struct run {
    uv_loop_t loop;
    struct cmh_curl_uv curl;
    struct cmh_ec2 *ec2;
    struct test_peer peer;
    char endpoint[64];
    char env_endpoint[96];
    int done, rc;
    size_t n;
    int64_t available[8];
    char ids[8][CMH_SUBNET_ID_MAX]; /* the answer's ids, in order */
    char missing[8][CMH_SUBNET_ID_MAX];
    size_t nmissing;
    char why[800];
    uint64_t t0, elapsed;
};

static char truth_path[256];

static void on_done(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *l, const char *why,
                    void *arg)
{
    struct run *r = arg;
    r->done = 1;
    r->rc = rc;
    r->n = l->n;
    for (size_t i = 0; i < l->n && i < 8; i++) {
        char want[32];
        snprintf(want, sizeof want, "subnet-%08zu", i + 1);
        /* Sorted by id; the count says which subnet it is (the truth makes them equal). */
        r->available[i] = strcmp(l->v[i].id, want) == 0 ? l->v[i].available : -1;
        snprintf(r->ids[i], sizeof r->ids[i], "%s", l->v[i].id);
    }
    const char *const *missing;
    r->nmissing = cmh_ec2_missing(e, &missing);
    for (size_t i = 0; i < r->nmissing && i < 8; i++)
        snprintf(r->missing[i], sizeof r->missing[i], "%s", missing[i]);
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->elapsed = uv_now(&r->loop) - r->t0;
}

/* Starts a stand-in (this fault script; its InvalidSubnetID.NotFound wording) and the loop. */
static void start_standin(struct run *r, const char *faults, const char *notfound)
{
    memset(r, 0, sizeof *r);
    char script[256];
    snprintf(script, sizeof script, "%s/test/sim/ec2_standin.py", CMH_SOURCE_DIR);
    char *argv[] = {
        CMH_TEST_PYTHON,      script,           "--truth",    truth_path, "--key",
        "AKIDC:sec:tok",      "--region",       "eu-west-1",  "--faults", (char *)faults,
        "--notfound-message", (char *)notfound, "--lifetime", "60",       NULL};
    assert_int_equal(test_peer_start(&r->peer, argv), 0);
    char line[256];
    assert_int_equal(test_peer_read_line(&r->peer, line, sizeof line, 30), 0);
    int port = 0;
    assert_int_equal(sscanf(line, "READY http=%d", &port), 1);
    snprintf(r->env_endpoint, sizeof r->env_endpoint, "AWS_ENDPOINT_URL_EC2=http://127.0.0.1:%d",
             port);
    assert_int_equal(uv_loop_init(&r->loop), 0);
    assert_int_equal(cmh_curl_uv_init(&r->curl, &r->loop, NULL, NULL), 0);
}

/* Starts a stand-in and describes (ids, or everything), until the callback. */
static void describe_as(struct run *r, const char *faults, const char *notfound,
                        unsigned max_attempts, const char *const *ids, size_t nids)
{
    start_standin(r, faults, notfound);
    char *envp[] = {"AWS_ACCESS_KEY_ID=AKIDC", "AWS_SECRET_ACCESS_KEY=sec",
                    "AWS_SESSION_TOKEN=tok",   "AWS_EC2_METADATA_DISABLED=true",
                    r->env_endpoint,           NULL};
    struct cmh_ec2_opts o = {.envp = envp,
                             .region = "eu-west-1",
                             .timeout_ms = 3000,
                             .max_attempts = max_attempts,
                             .backoff_base_ms = 20,
                             .backoff_cap_ms = 2000,
                             .seed = 7};
    assert_int_equal(cmh_ec2_new(&r->ec2, &r->loop, &r->curl, &o, NULL), 0);
    r->t0 = uv_now(&r->loop);
    assert_int_equal(cmh_ec2_describe_subnets(r->ec2, ids, nids, on_done, r), 0);
    assert_int_equal(r->done, 0); /* never inside the call */
    assert_int_equal(cmh_ec2_describe_subnets(r->ec2, ids, nids, on_done, r), -EBUSY);
    for (int i = 0; i < 2000 && !r->done; i++)
        uv_run(&r->loop, UV_RUN_ONCE);
    assert_true(r->done);
}

static void describe(struct run *r, const char *faults, unsigned max_attempts,
                     const char *const *ids, size_t nids)
{
    describe_as(r, faults, "first", max_attempts, ids, nids);
}

static void finish(struct run *r)
{
    cmh_ec2_close(r->ec2, NULL, NULL);
    cmh_curl_uv_close(&r->curl, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&r->loop), 0);
    test_peer_stop(&r->peer);
}

static struct run R;

static void ec2_client_paginates_through_throttling_5xx_resets_garbage(void **state)
{
    (void)state;
    describe(&R, "[\"throttle\",\"500\",\"reset\",\"ok\",\"garbage\"]", 0, NULL, 0);
    if (R.rc != 0)
        fail_msg("rc %d: %s", R.rc, R.why);
    assert_int_equal(R.n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(R.available[i], (int64_t)i + 1);
    /* Three pages of two, plus four failed attempts. */
    assert_int_equal(cmh_ec2_requests(R.ec2), 7);
    finish(&R);
}

static void ec2_client_ids_only_those(void **state)
{
    (void)state;
    const char *ids[] = {"subnet-00000002", "subnet-00000001"};
    describe(&R, "[]", 0, ids, 2);
    assert_int_equal(R.rc, 0);
    assert_int_equal(R.n, 2);
    assert_int_equal(R.available[0], 1);
    assert_int_equal(R.available[1], 2);
    finish(&R);
}

static void ec2_client_denied_names_the_permission(void **state)
{
    (void)state;
    describe(&R, "[\"denied\"]", 0, NULL, 0);
    assert_int_equal(R.rc, -EACCES);
    assert_non_null(strstr(R.why, "UnauthorizedOperation"));
    assert_non_null(strstr(R.why, "grant ec2:DescribeSubnets"));
    assert_int_equal(cmh_ec2_requests(R.ec2), 1); /* no retry of a refusal */
    finish(&R);
}

static void ec2_client_expired_request_retried_once(void **state)
{
    (void)state;
    describe(&R, "[\"expired\"]", 0, NULL, 0);
    assert_int_equal(R.rc, 0);
    assert_int_equal(R.n, 5);
    assert_int_equal(cmh_ec2_requests(R.ec2), 4);
    finish(&R);
}

static void ec2_client_unknown_id_is_clear(void **state)
{
    (void)state;
    const char *ids[] = {"subnet-0000000f"};
    describe(&R, "[]", 0, ids, 1);
    assert_int_equal(R.rc, -ENOENT);
    assert_non_null(strstr(R.why, "InvalidSubnetID.NotFound"));
    assert_non_null(strstr(R.why, "SUBNET_IDS"));
    finish(&R);
}

/* SUBNET_IDS with two deleted subnets among four. */
static const char *const with_unknown[] = {"subnet-00000001", "subnet-0000000f", "subnet-00000003",
                                           "subnet-0000000e"};

static void expect_unknown_left_out(const struct run *r, uint64_t requests)
{
    if (r->rc != 0)
        fail_msg("rc %d: %s", r->rc, r->why);
    assert_int_equal(r->n, 2);
    assert_string_equal(r->ids[0], "subnet-00000001");
    assert_string_equal(r->ids[1], "subnet-00000003");
    assert_int_equal(r->nmissing, 2);
    assert_string_equal(r->missing[0], "subnet-0000000f");
    assert_string_equal(r->missing[1], "subnet-0000000e");
    assert_int_equal(cmh_ec2_requests(r->ec2), requests);
}

static void ec2_client_unknown_ids_left_out_others_fetched(void **state)
{
    (void)state;
    static const struct {
        const char *faults, *wording;
        uint64_t requests;
    } cases[] = {
        /* EC2 names the first unknown id: one more request per unknown id, then the rest. */
        {"[]", "first", 3},
        /* The message names every unknown id: one more request. */
        {"[]", "all", 2},
        /* A wording that names none: every id on its own (1 + 4 requests). */
        {"[]", "vague", 5},
        /* A throttled answer on the way is retried as ever. */
        {"[\"ok\",\"throttle\"]", "first", 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        describe_as(&R, cases[i].faults, cases[i].wording, 0, with_unknown, 4);
        expect_unknown_left_out(&R, cases[i].requests);
        finish(&R);
    }
}

/* ---- the watch in SUBNET_IDS mode ------------------------------------------------------- */

/* Stands for the Kubernetes API: counts connections; the watch must never open one. */
struct k8s_trap {
    uv_tcp_t tcp;
    unsigned accepted;
};

static void on_trap_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_conn_closed(uv_handle_t *h)
{
    free(h);
}

static void on_trap_conn(uv_stream_t *server, int status)
{
    struct k8s_trap *t = (struct k8s_trap *)((char *)server - offsetof(struct k8s_trap, tcp));
    if (status != 0)
        return;
    uv_tcp_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    uv_tcp_init(server->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) == 0)
        t->accepted++;
    uv_close((uv_handle_t *)c, on_conn_closed);
}

struct fetches {
    int n, last_rc;
};

static void on_fetch(void *arg, int rc, const char *why)
{
    struct fetches *f = arg;
    (void)why;
    f->n++;
    f->last_rc = rc;
}

static size_t count_in_file(int fd, const char *needle)
{
    static char buf[1 << 16];
    ssize_t len = pread(fd, buf, sizeof buf - 1, 0);
    assert_true(len >= 0);
    buf[len] = '\0';
    size_t n = 0;
    for (const char *p = strstr(buf, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void ec2_watch_subnet_ids_exact_view_no_eniconfigs_unknown_logged_once(void **state)
{
    (void)state;
    start_standin(&R, "[]", "first");
    char *envp[] = {"AWS_ACCESS_KEY_ID=AKIDC",
                    "AWS_SECRET_ACCESS_KEY=sec",
                    "AWS_SESSION_TOKEN=tok",
                    "AWS_EC2_METADATA_DISABLED=true",
                    "AWS_REGION=eu-west-1",
                    "SUBNET_METRICS=true",
                    "SUBNET_IDS=subnet-00000001,subnet-0000000f,subnet-00000003",
                    "CW_BACKOFF_BASE=20ms",
                    R.env_endpoint,
                    NULL};
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    assert_int_equal(cmh_config_load(&cfg, envp, err), 0);
    cfg.subnet_interval_ms = 300; /* below the configurable floor: three fetches in a second */
    struct k8s_trap trap = {0};
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_init(&R.loop, &trap.tcp), 0);
    assert_int_equal(uv_tcp_bind(&trap.tcp, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&trap.tcp, 8, on_trap_conn), 0);
    int namelen = sizeof sa;
    uv_tcp_getsockname(&trap.tcp, (struct sockaddr *)&sa, &namelen);
    char server[64];
    snprintf(server, sizeof server, "http://127.0.0.1:%d", ntohs(sa.sin_port));
    char logpath[] = "/tmp/cmh-ec2-watch-log-XXXXXX";
    int logfd = mkstemp(logpath);
    assert_true(logfd >= 0);
    unlink(logpath);
    struct cmh_log log;
    cmh_log_init(&log, CMH_LOG_INFO, CMH_LOG_TEXT, logfd);
    struct fetches f = {0};
    struct cmh_subnet_watch *w = NULL;
    assert_int_equal(
        cmh_subnet_watch_new(&w, &R.loop, &R.curl, &cfg, envp, server, &log, on_fetch, &f), 0);
    for (int i = 0; i < 4000 && f.n < 3; i++)
        uv_run(&R.loop, UV_RUN_ONCE);
    assert_int_equal(f.n, 3);
    assert_int_equal(f.last_rc, 0);
    /* Nodes in subnet 1, in subnet 2 (not listed) and in none. */
    const struct cmh_subnets_node nodes[] = {
        {"n1", "10.0.0.9"}, {"n2", "10.0.1.9"}, {"n3", "192.0.2.1"}};
    const struct cmh_subnet_list *v = cmh_subnet_watch_view(w, nodes, 3);
    assert_non_null(v);
    assert_int_equal(v->n, 2);
    assert_string_equal(v->v[0].id, "subnet-00000001");
    assert_string_equal(v->v[1].id, "subnet-00000003");
    assert_true(cmh_subnets_find_ip(v, "10.0.0.9") == 0);
    /* Outside the listed subnets: the per-AZ datums put it under "unknown". */
    assert_true(cmh_subnets_find_ip(v, "10.0.1.9") == -1);
    assert_int_equal(cmh_subnet_watch_missing(w), 1);
    assert_int_equal(trap.accepted, 0); /* ENIConfigs never read */
    assert_int_equal(count_in_file(logfd, "subnet-0000000f"), 1);
    assert_int_equal(count_in_file(logfd, "does not exist"), 1);
    assert_int_equal(count_in_file(logfd, "subnets fetched"), 3);
    cmh_subnet_watch_close(w, NULL, NULL);
    uv_close((uv_handle_t *)&trap.tcp, on_trap_closed);
    finish(&R);
    close(logfd);
    cmh_config_free(&cfg);
}

static void ec2_client_attempts_bounded_and_retry_after_honoured(void **state)
{
    (void)state;
    describe(&R, "[\"throttle\",\"throttle\",\"throttle\",\"throttle\"]", 3, NULL, 0);
    assert_int_equal(R.rc, -EAGAIN);
    assert_non_null(strstr(R.why, "RequestLimitExceeded"));
    assert_int_equal(cmh_ec2_requests(R.ec2), 3);
    finish(&R);
    /* Retry-After: 1 s is waited (the jitter alone would be at most 20-40 ms). */
    describe(&R, "[{\"kind\":\"throttle\",\"retry_after\":1}]", 0, NULL, 0);
    assert_int_equal(R.rc, 0);
    assert_true(R.elapsed >= 1000);
    assert_true(R.elapsed < 10000);
    finish(&R);
}

static int setup(void **state)
{
    (void)state;
    snprintf(truth_path, sizeof truth_path, "/tmp/cmh-ec2-truth-%d.json", (int)getpid());
    FILE *f = fopen(truth_path, "w");
    if (f == NULL)
        return -1;
    fputs(truth, f);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(truth_path);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ec2_client_paginates_through_throttling_5xx_resets_garbage),
        cmocka_unit_test(ec2_client_ids_only_those),
        cmocka_unit_test(ec2_client_denied_names_the_permission),
        cmocka_unit_test(ec2_client_expired_request_retried_once),
        cmocka_unit_test(ec2_client_unknown_id_is_clear),
        cmocka_unit_test(ec2_client_unknown_ids_left_out_others_fetched),
        cmocka_unit_test(ec2_watch_subnet_ids_exact_view_no_eniconfigs_unknown_logged_once),
        cmocka_unit_test(ec2_client_attempts_bounded_and_retry_after_honoured),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
