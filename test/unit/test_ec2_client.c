/* The EC2 client against the loopback stand-in (test/sim/ec2_standin.py, which recomputes every
 * SigV4 signature with botocore and validates the DescribeSubnets parameters against the EC2
 * model): pagination, ids, retries through throttling, 5xx, resets and garbage, Retry-After, a
 * refreshed credential after RequestExpired, AccessDenied and unknown ids as clear errors, the
 * attempt bound. Every case ends with the loop closed clean. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/curl_uv.h"
#include "cmh/ec2.h"
#include "test_peer.h"

#include <errno.h>
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
    char why[800];
    uint64_t t0, elapsed;
};

static char truth_path[256];

static void on_done(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *l, const char *why,
                    void *arg)
{
    struct run *r = arg;
    (void)e;
    r->done = 1;
    r->rc = rc;
    r->n = l->n;
    for (size_t i = 0; i < l->n && i < 8; i++) {
        char want[32];
        snprintf(want, sizeof want, "subnet-%08zu", i + 1);
        /* Sorted by id; the count says which subnet it is (the truth makes them equal). */
        r->available[i] = strcmp(l->v[i].id, want) == 0 ? l->v[i].available : -1;
    }
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->elapsed = uv_now(&r->loop) - r->t0;
}

/* Starts a stand-in with this fault script and describes (ids, or everything). */
static void describe(struct run *r, const char *faults, unsigned max_attempts,
                     const char *const *ids, size_t nids)
{
    memset(r, 0, sizeof *r);
    char script[256];
    snprintf(script, sizeof script, "%s/test/sim/ec2_standin.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON, script,     "--truth",   truth_path, "--key",
                    "AKIDC:sec:tok", "--region", "eu-west-1", "--faults", (char *)faults,
                    "--lifetime",    "60",       NULL};
    assert_int_equal(test_peer_start(&r->peer, argv), 0);
    char line[256];
    assert_int_equal(test_peer_read_line(&r->peer, line, sizeof line, 30), 0);
    int port = 0;
    assert_int_equal(sscanf(line, "READY http=%d", &port), 1);
    snprintf(r->env_endpoint, sizeof r->env_endpoint, "AWS_ENDPOINT_URL_EC2=http://127.0.0.1:%d",
             port);
    char *envp[] = {"AWS_ACCESS_KEY_ID=AKIDC", "AWS_SECRET_ACCESS_KEY=sec",
                    "AWS_SESSION_TOKEN=tok",   "AWS_EC2_METADATA_DISABLED=true",
                    r->env_endpoint,           NULL};
    assert_int_equal(uv_loop_init(&r->loop), 0);
    assert_int_equal(cmh_curl_uv_init(&r->curl, &r->loop, NULL, NULL), 0);
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

static void finish(struct run *r)
{
    cmh_ec2_free(r->ec2);
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
        cmocka_unit_test(ec2_client_attempts_bounded_and_retry_after_honoured),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
