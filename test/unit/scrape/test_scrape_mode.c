/* SCRAPE_MODE's pure parts: how a proxied scrape's outcome maps to a result class, the proxy URL,
 * and the per-node fallback state of auto mode (a scripted walk through every transition, then a
 * randomized run against a plain-array oracle). */
#include "cmh/scrape/proxy_scrape_int.h"
#include "cmh/core/rng.h"
#include "cmh/scrape/scrape_mode_int.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

struct mapping {
    enum cmh_curl_uv_error err;
    long status;
    enum cmh_scrape_mode_abort abort;
    int ct_ok;
    enum cmh_scrape_result want;
};

/* The contract of cmh_scrape_mode_proxy_result, case by case. */
static const struct mapping mappings[] = {
    {CMH_CURL_OK, 200, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_OK},
    {CMH_CURL_OK, 200, CMH_PROXY_ABORT_NONE, 0, CMH_SCRAPE_CONTENT_TYPE},
    /* The API server's answers when its dial to the pod fails. */
    {CMH_CURL_OK, 503, CMH_PROXY_ABORT_NONE, 0, CMH_SCRAPE_CONNECT_ERROR},
    {CMH_CURL_OK, 502, CMH_PROXY_ABORT_NONE, 0, CMH_SCRAPE_CONNECT_ERROR},
    {CMH_CURL_OK, 504, CMH_PROXY_ABORT_NONE, 0, CMH_SCRAPE_CONNECT_TIMEOUT},
    /* A non-200 whose body we did not read (aborted at the first byte). */
    {CMH_CURL_ERR_OTHER, 503, CMH_PROXY_ABORT_STATUS, 1, CMH_SCRAPE_CONNECT_ERROR},
    {CMH_CURL_ERR_OTHER, 403, CMH_PROXY_ABORT_STATUS, 1, CMH_SCRAPE_HTTP_STATUS},
    {CMH_CURL_OK, 401, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_HTTP_STATUS},
    {CMH_CURL_OK, 404, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_HTTP_STATUS},
    {CMH_CURL_OK, 500, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_HTTP_STATUS},
    {CMH_CURL_OK, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_MALFORMED_HTTP},
    /* What we cut short wins over what curl says about it. */
    {CMH_CURL_ERR_OTHER, 200, CMH_PROXY_ABORT_TOO_LARGE, 1, CMH_SCRAPE_BODY_TOO_LARGE},
    {CMH_CURL_ERR_OTHER, 200, CMH_PROXY_ABORT_CONSUMER, 1, CMH_SCRAPE_PARSE_ERROR},
    {CMH_CURL_ERR_CANCELLED, 200, CMH_PROXY_ABORT_DEADLINE, 1, CMH_SCRAPE_RESPONSE_TIMEOUT},
    {CMH_CURL_ERR_CANCELLED, 0, CMH_PROXY_ABORT_DEADLINE, 1, CMH_SCRAPE_RESPONSE_TIMEOUT},
    /* Transport failures. */
    {CMH_CURL_ERR_TIMEOUT, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_RESPONSE_TIMEOUT},
    {CMH_CURL_ERR_TIMEOUT, 200, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_RESPONSE_TIMEOUT},
    {CMH_CURL_ERR_CONNECT, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_CONNECT_ERROR},
    {CMH_CURL_ERR_TLS, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_CONNECT_ERROR},
    {CMH_CURL_ERR_RESET, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_RESET},
    {CMH_CURL_ERR_RESET, 200, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_TRUNCATED},
    {CMH_CURL_ERR_PROTOCOL, 200, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_TRUNCATED},
    {CMH_CURL_ERR_PROTOCOL, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_RESET},
    {CMH_CURL_ERR_TOO_LARGE, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_BODY_TOO_LARGE},
    {CMH_CURL_ERR_OTHER, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_CONNECT_ERROR},
    /* Closing cancels what is in flight: not a node's fault, but not a success either. */
    {CMH_CURL_ERR_CANCELLED, 0, CMH_PROXY_ABORT_NONE, 1, CMH_SCRAPE_RESPONSE_TIMEOUT},
};

static void proxy_result_maps_every_curl_error_and_status(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof mappings / sizeof mappings[0]; i++) {
        const struct mapping *m = &mappings[i];
        enum cmh_scrape_result got =
            cmh_scrape_mode_proxy_result(m->err, m->status, m->abort, m->ct_ok);
        if (got != m->want)
            fail_msg("case %zu: %s status %ld abort %d ct %d -> %s, want %s", i,
                     cmh_curl_uv_error_name(m->err), m->status, (int)m->abort, m->ct_ok,
                     cmh_scrape_result_name(got), cmh_scrape_result_name(m->want));
    }
    /* Every curl error gives some failure class, never ok, unless it is OK with a 200. */
    for (int e = 1; e < CMH_CURL_ERR_COUNT; e++)
        for (long st = 0; st < 600; st += 100)
            assert_int_not_equal(cmh_scrape_mode_proxy_result((enum cmh_curl_uv_error)e, st,
                                                              CMH_PROXY_ABORT_NONE, 1),
                                 CMH_SCRAPE_OK);
}

static void proxy_content_type_accepts_text_plain_only(void **state)
{
    (void)state;
    assert_true(cmh_scrape_mode_content_type_ok(NULL));
    assert_true(cmh_scrape_mode_content_type_ok("text/plain"));
    assert_true(cmh_scrape_mode_content_type_ok("text/plain; version=0.0.4; charset=utf-8"));
    assert_true(cmh_scrape_mode_content_type_ok("Text/Plain ;charset=utf-8"));
    assert_false(cmh_scrape_mode_content_type_ok("text/html; charset=utf-8"));
    assert_false(cmh_scrape_mode_content_type_ok("application/json"));
    assert_false(cmh_scrape_mode_content_type_ok("text/plainx"));
    assert_false(cmh_scrape_mode_content_type_ok(""));
}

static void only_connect_failures_trigger_the_fallback(void **state)
{
    (void)state;
    for (int r = 0; r < CMH_SCRAPE_NRESULTS; r++) {
        int want = r == CMH_SCRAPE_CONNECT_REFUSED || r == CMH_SCRAPE_CONNECT_TIMEOUT ||
                   r == CMH_SCRAPE_CONNECT_ERROR;
        assert_int_equal(cmh_scrape_mode_is_connect_failure((enum cmh_scrape_result)r), want);
    }
}

static void proxy_url_is_the_pods_proxy_path_and_refuses_bad_names(void **state)
{
    (void)state;
    char buf[512];
    assert_int_equal(cmh_proxy_scrape_url(buf, sizeof buf, "https://10.100.0.1:443", "kube-system",
                                          "aws-node-7x2kq", 61678),
                     0);
    assert_string_equal(buf, "https://10.100.0.1:443/api/v1/namespaces/kube-system/pods/"
                             "aws-node-7x2kq:61678/proxy/metrics");
    assert_int_equal(
        cmh_proxy_scrape_url(buf, sizeof buf, "https://[fd00::1]:6443", "aws-cni", "a.b-c", 1), 0);
    assert_string_equal(
        buf, "https://[fd00::1]:6443/api/v1/namespaces/aws-cni/pods/a.b-c:1/proxy/metrics");
    const char *bad[] = {"", "Aws-Node", "a/../b", "a b", "a?x=1", "a%2f", "a:1", "a#b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(
            cmh_proxy_scrape_url(buf, sizeof buf, "https://h:1", "kube-system", bad[i], 1),
            -EINVAL);
    assert_int_equal(cmh_proxy_scrape_url(buf, sizeof buf, "https://h:1", "Kube", "a", 1), -EINVAL);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(cmh_proxy_scrape_url(buf, sizeof buf, "https://h:1", "ns", longname, 1),
                     -EINVAL);
    assert_int_equal(cmh_proxy_scrape_url(buf, 40, "https://h:1", "kube-system", "aws-node", 1),
                     -ENOSPC);
}

static void fallback_walks_switch_stay_recheck_and_back(void **state)
{
    (void)state;
    struct cmh_fallback f;
    enum cmh_fallback_event ev;
    cmh_fallback_init(&f, 600000);
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    /* A node starts direct; a good scrape or a bad body changes nothing. */
    assert_int_equal(cmh_fallback_route(&f, "n1", 1000), CMH_ROUTE_DIRECT);
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_OK, 1000, &ev), 0);
    assert_int_equal(ev, CMH_FALLBACK_NONE);
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_HTTP_STATUS, 1000, &ev), 0);
    assert_int_equal(ev, CMH_FALLBACK_NONE);
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_RESPONSE_TIMEOUT, 1000, &ev),
                     0);
    assert_int_equal(ev, CMH_FALLBACK_NONE);
    assert_false(cmh_fallback_on_proxy(&f, "n1"));
    /* A connect failure switches it, once. */
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_CONNECT_REFUSED, 1000, &ev),
                     0);
    assert_int_equal(ev, CMH_FALLBACK_SWITCHED);
    assert_true(cmh_fallback_on_proxy(&f, "n1"));
    assert_int_equal(f.n, 1);
    /* Until the re-check time it goes through the proxy. */
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    assert_int_equal(cmh_fallback_route(&f, "n1", 1000 + 30000), CMH_ROUTE_PROXY);
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    assert_int_equal(cmh_fallback_route(&f, "n1", 1000 + 599999), CMH_ROUTE_PROXY);
    /* Then one direct attempt: still refused, so it stays, re-checked later. */
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    assert_int_equal(cmh_fallback_route(&f, "n1", 1000 + 600000), CMH_ROUTE_DIRECT);
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_CONNECT_TIMEOUT, 601000, &ev),
                     0);
    assert_int_equal(ev, CMH_FALLBACK_STAYED);
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    assert_int_equal(cmh_fallback_route(&f, "n1", 601000 + 1000), CMH_ROUTE_PROXY);
    /* The next re-check connects (even to a bad answer): back to direct. */
    assert_int_equal(cmh_fallback_round_begin(&f), 0);
    assert_int_equal(cmh_fallback_route(&f, "n1", 1201000), CMH_ROUTE_DIRECT);
    assert_int_equal(cmh_fallback_direct_result(&f, "n1", CMH_SCRAPE_HTTP_STATUS, 1201000, &ev), 0);
    assert_int_equal(ev, CMH_FALLBACK_BACK);
    assert_false(cmh_fallback_on_proxy(&f, "n1"));
    assert_int_equal(cmh_fallback_route(&f, "n1", 1201001), CMH_ROUTE_DIRECT);
    assert_int_equal(f.n, 0);
    /* A node on the proxy that leaves the target set is forgotten after one round. */
    assert_int_equal(cmh_fallback_direct_result(&f, "n2", CMH_SCRAPE_CONNECT_ERROR, 0, &ev), 0);
    assert_int_equal(ev, CMH_FALLBACK_SWITCHED);
    assert_int_equal(cmh_fallback_round_begin(&f), 0); /* n2 was seen in the round it switched */
    assert_true(cmh_fallback_on_proxy(&f, "n2"));
    assert_int_equal(cmh_fallback_round_begin(&f), 0); /* not routed in the last round */
    assert_false(cmh_fallback_on_proxy(&f, "n2"));
    assert_int_equal(f.n, 0);
    cmh_fallback_free(&f);
}

#define NNAMES 1500

/* Random routes, results and departures against a plain array: the table must agree on which
 * nodes are on the proxy, on every event, and on its size (exercises growth, backward-shift
 * deletion and pruning). */
static void fallback_table_agrees_with_array_oracle_random(void **state)
{
    (void)state;
    static char names[NNAMES][16];
    static int on[NNAMES], seen[NNAMES];
    static uint64_t recheck[NNAMES];
    struct cmh_fallback f;
    cmh_fallback_init(&f, 50);
    uint64_t rng = cmh_rng_seed(42);
    for (int i = 0; i < NNAMES; i++)
        snprintf(names[i], sizeof names[i], "node-%d", i);
    uint64_t now = 0;
    for (int round = 0; round < 400; round++) {
        assert_int_equal(cmh_fallback_round_begin(&f), 0);
        for (int i = 0; i < NNAMES; i++) {
            if (on[i] && !seen[i])
                on[i] = 0; /* left the target set last round: forgotten */
            seen[i] = 0;
        }
        now += 10;
        /* A random subset of nodes is in this round's target set. */
        int present = (int)(cmh_rng_next(&rng) % NNAMES);
        for (int k = 0; k < present; k++) {
            int i = (int)(cmh_rng_next(&rng) % NNAMES);
            enum cmh_route want = on[i] && now < recheck[i] ? CMH_ROUTE_PROXY : CMH_ROUTE_DIRECT;
            seen[i] = 1;
            enum cmh_route got = cmh_fallback_route(&f, names[i], now);
            if (got != want)
                fail_msg("round %d node %d: route %d, want %d", round, i, (int)got, (int)want);
            if (got == CMH_ROUTE_PROXY)
                continue;
            enum cmh_scrape_result r = (enum cmh_scrape_result)(
                cmh_rng_next(&rng) % 4 == 0 ? CMH_SCRAPE_CONNECT_REFUSED : cmh_rng_next(&rng) % 3);
            int fails = cmh_scrape_mode_is_connect_failure(r);
            enum cmh_fallback_event wev = on[i]
                                              ? (fails ? CMH_FALLBACK_STAYED : CMH_FALLBACK_BACK)
                                              : (fails ? CMH_FALLBACK_SWITCHED : CMH_FALLBACK_NONE);
            enum cmh_fallback_event ev;
            assert_int_equal(cmh_fallback_direct_result(&f, names[i], r, now, &ev), 0);
            if (ev != wev)
                fail_msg("round %d node %d: event %d, want %d", round, i, (int)ev, (int)wev);
            on[i] = fails;
            if (fails)
                recheck[i] = now + 50;
        }
        size_t n = 0;
        for (int i = 0; i < NNAMES; i++) {
            n += (size_t)on[i];
            if (cmh_fallback_on_proxy(&f, names[i]) != on[i])
                fail_msg("round %d node %d: on_proxy %d, want %d", round, i,
                         cmh_fallback_on_proxy(&f, names[i]), on[i]);
        }
        assert_int_equal(f.n, n);
    }
    cmh_fallback_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(proxy_result_maps_every_curl_error_and_status),
        cmocka_unit_test(proxy_content_type_accepts_text_plain_only),
        cmocka_unit_test(only_connect_failures_trigger_the_fallback),
        cmocka_unit_test(proxy_url_is_the_pods_proxy_path_and_refuses_bad_names),
        cmocka_unit_test(fallback_walks_switch_stay_recheck_and_back),
        cmocka_unit_test(fallback_table_agrees_with_array_oracle_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
