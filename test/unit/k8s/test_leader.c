/* Leader election against the fake Kubernetes API (test/sim/fake_k8s_api.py: Lease get/create/
 * update with resourceVersion conflicts, injected failures). Two electors, each with its own
 * curl instance (as two replicas would have), run on one loop, so the test sees both at every
 * instant: a sampler every 10 ms checks that at most one leads, and the change callbacks give exact
 * times for failover and step-down bounds. Every test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_peer.h"

#include "cmh/core/container_of.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/leader.h"
#include "cmh/k8s/leader_int.h"
#include "cmh/core/log.h"

#include <jansson.h>

#include <errno.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whole seconds: the Lease carries leaseDurationSeconds, and followers wait what it says. */
#define LEASE_MS 2000
#define RENEW_MS 1000
#define RETRY_MS 200
#define SLACK_MS 700 /* scheduling and TLS on a loaded 2-core machine, ASan included */
/* A GET and a PUT on loopback, plus the 10 ms sampler, on a loaded machine under ASan. */
#define REQUESTS_MS 250

struct elector {
    struct fx *f;
    struct cmh_curl_uv curl;
    struct cmh_leader l;
    bool started, curl_open, leader_closed, curl_closed;
    bool is_leader;         /* as the callbacks said */
    uint64_t became_ms;     /* uv_now of the last change to leader */
    uint64_t lost_ms;       /* uv_now of the last change to follower */
    uint64_t last_renew_ms; /* uv_now when the sampler last saw the renewals count grow */
    uint64_t renewals_seen;
    unsigned changes;
};

struct fx {
    struct test_peer fake_api;
    int port;
    char ca[512], token_file[512], dir[256];
    char reply[8192];
    uv_loop_t loop;
    struct cmh_log log;
    struct elector e[2];
    uv_timer_t sampler;
    /* The test's own client, to read the Lease from the API as an oracle. */
    struct cmh_curl_uv tcurl;
    struct cmh_curl_uv_req treq;
    bool tdone, tcurl_closed;
    long tstatus;
    char tbody[8192];
    uint64_t samples, both_leading, none_leading, callback_overlaps;
};

static const char *fake(struct fx *f, const char *cmd)
{
    assert_int_equal(test_peer_write_line(&f->fake_api, cmd), 0);
    assert_int_equal(test_peer_read_line(&f->fake_api, f->reply, sizeof f->reply, 20), 0);
    if (strncmp(f->reply, "OK", 2) != 0)
        fail_msg("fake refused '%s': %s", cmd, f->reply);
    return f->reply;
}

/* One counter of the fake API's stats. */
static json_int_t fake_stat(struct fx *f, const char *key)
{
    json_error_t jerr;
    json_t *stats = json_loads(fake(f, "stats") + 3, 0, &jerr);
    assert_non_null(stats);
    json_t *v = json_object_get(stats, key);
    assert_true(json_is_integer(v));
    json_int_t n = json_integer_value(v);
    json_decref(stats);
    return n;
}

static void on_change(struct cmh_leader *l, bool is_leader, void *arg)
{
    struct elector *e = arg;
    struct fx *f = e->f;
    assert_ptr_equal(&e->l, l);
    assert_true(is_leader != e->is_leader); /* only real changes are reported */
    assert_int_equal(cmh_leader_is_leader(l), is_leader);
    e->is_leader = is_leader;
    e->changes++;
    if (is_leader) {
        e->became_ms = uv_now(&f->loop);
        struct elector *other = &f->e[e == &f->e[0]];
        if (other->started && other->is_leader)
            f->callback_overlaps++;
    } else {
        e->lost_ms = uv_now(&f->loop);
    }
}

static void on_sample(uv_timer_t *t)
{
    struct fx *f = container_of(t, struct fx, sampler);
    int n = 0;
    for (int i = 0; i < 2; i++) {
        struct elector *e = &f->e[i];
        if (!e->started)
            continue;
        struct cmh_leader_status st;
        cmh_leader_status(&e->l, &st);
        if (st.renewals != e->renewals_seen) {
            e->renewals_seen = st.renewals;
            e->last_renew_ms = uv_now(&f->loop);
        }
        n += cmh_leader_is_leader(&e->l);
        assert_int_equal(cmh_leader_is_leader(&e->l), e->is_leader);
    }
    f->samples++;
    if (n > 1)
        f->both_leading++;
    if (n == 0)
        f->none_leading++;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/cmh-lease-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->token_file, sizeof f->token_file, "%s/token", f->dir);
    char script[1024];
    snprintf(script, sizeof script, "%s/test/sim/fake_k8s_api.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON, script, "--token-file", f->token_file, "--lifetime",
                    "110",           NULL};
    if (test_peer_start(&f->fake_api, argv) != 0)
        return -1;
    char line[1024] = "";
    if (test_peer_read_line(&f->fake_api, line, sizeof line, 30) != 0 ||
        sscanf(line, "READY port=%d ca=%511s", &f->port, f->ca) != 2) {
        fprintf(stderr, "fake API did not start: '%s'\n", line);
        test_peer_stop(&f->fake_api);
        return -1;
    }
    assert_int_equal(uv_loop_init(&f->loop), 0);
    cmh_log_init(&f->log, CMH_LOG_INFO, CMH_LOG_TEXT, 2);
    assert_int_equal(uv_timer_init(&f->loop, &f->sampler), 0);
    assert_int_equal(cmh_curl_uv_init(&f->tcurl, &f->loop, NULL, NULL), 0);
    *state = f;
    return 0;
}

static void start_elector_timed(struct fx *f, int i, uint64_t lease, uint64_t renew, uint64_t retry)
{
    struct elector *e = &f->e[i];
    char server[128], identity[32];
    e->f = f;
    assert_int_equal(cmh_curl_uv_init(&e->curl, &f->loop, NULL, &f->log), 0);
    e->curl_open = true;
    snprintf(server, sizeof server, "https://127.0.0.1:%d", f->port);
    snprintf(identity, sizeof identity, "replica-%c", 'a' + i);
    struct cmh_leader_opts o = {0};
    o.server = server;
    o.identity = identity;
    o.token_file = f->token_file;
    o.ca_file = f->ca;
    o.lease_duration_ms = lease;
    o.renew_deadline_ms = renew;
    o.retry_period_ms = retry;
    o.seed = 7 + (uint64_t)i;
    assert_int_equal(cmh_leader_start(&e->l, &f->loop, &e->curl, &o, &f->log, on_change, e), 0);
    e->started = true;
    assert_false(cmh_leader_is_leader(&e->l)); /* nothing happens inside start */
}

static void start_elector(struct fx *f, int i)
{
    start_elector_timed(f, i, LEASE_MS, RENEW_MS, RETRY_MS);
}

static void leader_closed(struct cmh_leader *l)
{
    struct elector *e = container_of(l, struct elector, l);
    e->leader_closed = true;
}

static void curl_closed(struct cmh_curl_uv *c)
{
    struct elector *e = container_of(c, struct elector, curl);
    e->curl_closed = true;
}

/* Stops elector i (releasing the lease when it leads) and runs the loop until it closed. */
static void stop_elector(struct fx *f, int i)
{
    struct elector *e = &f->e[i];
    if (!e->started)
        return;
    cmh_leader_close(&e->l, leader_closed);
    assert_false(cmh_leader_is_leader(&e->l));
    e->started = false;
    e->is_leader = false;
    for (int k = 0; k < 5000 && !e->leader_closed; k++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(e->leader_closed);
}

static void close_curl(struct fx *f, int i)
{
    struct elector *e = &f->e[i];
    if (!e->curl_open)
        return;
    cmh_curl_uv_close(&e->curl, curl_closed);
    e->curl_open = false;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    for (int i = 0; i < 2; i++)
        stop_elector(f, i);
    for (int i = 0; i < 2; i++)
        close_curl(f, i);
    cmh_curl_uv_close(&f->tcurl, NULL);
    uv_close((uv_handle_t *)&f->sampler, NULL);
    for (int i = 0; i < 2000 && uv_run(&f->loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    test_peer_stop(&f->fake_api);
    unlink(f->token_file);
    char ca[600];
    snprintf(ca, sizeof ca, "%s.ca.crt", f->token_file);
    unlink(ca);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Runs the loop for ms (sampling), or until pred(f) holds when pred is given. Returns whether
 * pred held (true without pred). */
static bool run_until(struct fx *f, uint64_t ms, bool (*pred)(struct fx *f))
{
    uint64_t end = uv_now(&f->loop) + ms;
    if (!uv_is_active((uv_handle_t *)&f->sampler))
        uv_timer_start(&f->sampler, on_sample, 10, 10);
    while (uv_now(&f->loop) < end) {
        if (pred != NULL && pred(f))
            return true;
        uv_run(&f->loop, UV_RUN_ONCE);
        uv_update_time(&f->loop);
    }
    return pred == NULL || pred(f);
}

static int leaders(struct fx *f)
{
    return f->e[0].is_leader + f->e[1].is_leader;
}

static bool one_leads(struct fx *f)
{
    return leaders(f) == 1;
}

static bool none_leads(struct fx *f)
{
    return leaders(f) == 0;
}

static int the_leader(struct fx *f)
{
    assert_int_equal(leaders(f), 1);
    return f->e[0].is_leader ? 0 : 1;
}

/* Starts both electors, waits until one leads, lets settle_ms pass; returns the leader's index. */
static int elect_one(struct fx *f, uint64_t settle_ms)
{
    start_elector(f, 0);
    start_elector(f, 1);
    assert_true(run_until(f, 5000, one_leads));
    run_until(f, settle_ms, NULL);
    return the_leader(f);
}

static void lease_got(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct fx *f = container_of(req, struct fx, treq);
    f->tstatus = res->status;
    snprintf(f->tbody, sizeof f->tbody, "%s", res->body ? res->body : "");
    f->tdone = true;
}

/* The Lease as the API server has it (an oracle independent of the electors' own view). */
static json_t *lease_from_api(struct fx *f)
{
    char url[256], auth[512], tok[256] = "";
    FILE *tf = fopen(f->token_file, "r");
    assert_non_null(tf);
    assert_non_null(fgets(tok, sizeof tok, tf));
    fclose(tf);
    tok[strcspn(tok, "\r\n")] = '\0';
    snprintf(url, sizeof url,
             "https://127.0.0.1:%d/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"
             "cni-metrics-helper",
             f->port);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", tok);
    const char *headers[] = {auth};
    memset(&f->treq, 0, sizeof f->treq);
    f->treq.url = url;
    f->treq.headers = headers;
    f->treq.nheaders = 1;
    f->treq.ca_file = f->ca;
    f->tdone = false;
    assert_int_equal(cmh_curl_uv_start(&f->tcurl, &f->treq, lease_got), 0);
    for (int k = 0; k < 10000 && !f->tdone; k++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(f->tdone);
    assert_int_equal(f->tstatus, 200);
    json_error_t jerr;
    json_t *lease = json_loads(f->tbody, 0, &jerr);
    assert_non_null(lease);
    return lease;
}

static void assert_micro_time(const char *s)
{
    regex_t re;
    assert_non_null(s);
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int m = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    if (m != 0)
        fail_msg("not an RFC 3339 MicroTime: '%s'", s);
}

/* Checks the server's Lease: holder, transitions, duration and the MicroTime fields. */
static void expect_lease_secs(struct fx *f, const char *holder, long long transitions,
                              long long secs)
{
    json_t *lease = lease_from_api(f);
    json_t *spec = json_object_get(lease, "spec");
    assert_true(json_is_object(spec));
    assert_string_equal(json_string_value(json_object_get(spec, "holderIdentity")), holder);
    assert_int_equal(json_integer_value(json_object_get(spec, "leaseTransitions")), transitions);
    assert_int_equal(json_integer_value(json_object_get(spec, "leaseDurationSeconds")), secs);
    assert_micro_time(json_string_value(json_object_get(spec, "renewTime")));
    assert_micro_time(json_string_value(json_object_get(spec, "acquireTime")));
    json_decref(lease);
}

static void expect_lease(struct fx *f, const char *holder, long long transitions)
{
    expect_lease_secs(f, holder, transitions, (LEASE_MS + 999) / 1000);
}

/* Two electors: one leads within a few retry periods, and at every 10 ms sample for 3 s exactly
 * one leads (the same one: no flapping); the other then sees the leader's identity as holder. */
static void two_electors_exactly_one_leader_at_every_sample(void **state)
{
    struct fx *f = *state;
    start_elector(f, 0);
    start_elector(f, 1);
    assert_true(run_until(f, 5000, one_leads));
    int w = the_leader(f);
    uint64_t s0 = f->samples, none0 = f->none_leading;
    run_until(f, 3000, NULL);
    assert_true(f->samples - s0 >= 100);
    assert_int_equal(f->none_leading, none0);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
    assert_int_equal(the_leader(f), w);
    assert_int_equal(f->e[w].changes, 1);
    assert_int_equal(f->e[!w].changes, 0);
    struct cmh_leader_status sw, sl;
    cmh_leader_status(&f->e[w].l, &sw);
    cmh_leader_status(&f->e[!w].l, &sl);
    /* The leader renewed about every retry period; the follower sees it as the holder. */
    assert_true(sw.renewals >= 3000 / (RETRY_MS * 2));
    assert_string_equal(sl.holder, sw.identity);
    assert_int_equal(sl.renewals, 0);
    assert_int_equal(sl.transitions, 0);
    /* The API server agrees: the leader is the holder, and the Lease was created once. */
    expect_lease(f, sw.identity, 0);
    assert_true(cmh_leader_is_leader(&f->e[w].l));
}

/* The leader stops gracefully (releasing the lease): the other leads within one lease duration;
 * never both. */
static void graceful_stop_fails_over_within_one_lease_duration(void **state)
{
    struct fx *f = *state;
    int w = elect_one(f, 500);
    uint64_t t0 = uv_now(&f->loop);
    stop_elector(f, w);
    assert_true(run_until(f, LEASE_MS + SLACK_MS, one_leads));
    assert_true(f->e[!w].is_leader);
    uint64_t took = f->e[!w].became_ms - t0;
    fprintf(stderr, "graceful failover took %llu ms (lease %d ms)\n", (unsigned long long)took,
            LEASE_MS);
    assert_true(took <= LEASE_MS);
    /* Released (holder cleared) then taken: one transition, the new leader holds it. */
    expect_lease(f, f->e[!w].l.identity, 1);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* The leader stops while a renewal is in flight that the API server has already applied (its
 * answer is held back): the release waits for that answer and names the resourceVersion it left,
 * so the Lease is released (not refused with 409 and left to expire) and the other takes over
 * well within a lease duration. */
static void stop_during_renewal_releases_with_the_new_version(void **state)
{
    struct fx *f = *state;
    int w = elect_one(f, 300);
    fake(f, "leasedelay 0.25");
    /* A write of the leader in flight: its body is set only for writes. */
    bool writing = false;
    for (int k = 0; k < 2000 && !writing; k++) {
        uv_run(&f->loop, UV_RUN_ONCE);
        writing = f->e[w].l.in_flight && f->e[w].l.body != NULL;
    }
    assert_true(writing);
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    stop_elector(f, w);
    assert_true(run_until(f, LEASE_MS + SLACK_MS, one_leads));
    uint64_t took = f->e[!w].became_ms - t0;
    fprintf(stderr, "stopped during a renewal: the other leads %llu ms later\n",
            (unsigned long long)took);
    assert_true(took < LEASE_MS - 500);
    fake(f, "leasedelay 0");
    expect_lease(f, f->e[!w].l.identity, 1);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* The leader "crashes": its HTTPS client is gone, so it can neither renew nor release. It stops
 * leading within the renew deadline of its last renewal, and the other takes over only after a
 * lease duration without change, and within one lease duration and one retry period of the last
 * renewal (plus the two requests of the takeover). */
static void crashed_leader_steps_down_before_takeover(void **state)
{
    struct fx *f = *state;
    int w = elect_one(f, 500);
    uint64_t t0 = uv_now(&f->loop);
    close_curl(f, w);
    assert_true(run_until(f, RENEW_MS + SLACK_MS, none_leads));
    uint64_t renew = f->e[w].last_renew_ms;
    fprintf(stderr, "crashed leader stepped down %llu ms after its last renewal seen\n",
            (unsigned long long)(f->e[w].lost_ms - renew));
    assert_true(f->e[w].lost_ms - renew <= RENEW_MS + 20);
    assert_true(run_until(f, LEASE_MS + RETRY_MS + SLACK_MS, one_leads));
    assert_true(f->e[!w].is_leader);
    uint64_t after = f->e[!w].became_ms - renew;
    fprintf(stderr,
            "takeover %llu ms after the crash, %llu ms after the last renewal, %llu ms after the "
            "old leader stopped\n",
            (unsigned long long)(f->e[!w].became_ms - t0), (unsigned long long)after,
            (unsigned long long)(f->e[!w].became_ms - f->e[w].lost_ms));
    /* Not before a lease duration since the last renewal the follower could have seen, and
     * within one lease duration and one retry period of it. */
    assert_true(after >= LEASE_MS - RETRY_MS);
    assert_true(after <= LEASE_MS + RETRY_MS + REQUESTS_MS);
    assert_true(f->e[!w].became_ms > f->e[w].lost_ms);
    expect_lease(f, f->e[!w].l.identity, 1);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* Every API request fails (500, then 429 and 403): the leader stops leading before a lease
 * duration passed since its last successful renewal (within the renew deadline); nobody leads
 * while the API fails; after it recovers one leads again. */
static void api_failures_leader_gives_up_before_lease_expires(void **state)
{
    struct fx *f = *state;
    static const char *const cmds[] = {"fail 100000 500", "fail 100000 429", "fail 100000 403"};
    start_elector(f, 0);
    start_elector(f, 1);
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        assert_true(run_until(f, LEASE_MS * 2 + SLACK_MS, one_leads));
        run_until(f, 400, NULL);
        int w = the_leader(f);
        fake(f, cmds[c]);
        uint64_t t0 = uv_now(&f->loop);
        assert_true(run_until(f, RENEW_MS + SLACK_MS, none_leads));
        uint64_t since = f->e[w].lost_ms - f->e[w].last_renew_ms;
        fprintf(stderr,
                "'%s': leader gave up %llu ms after its last renewal, %llu ms after the "
                "failures began\n",
                cmds[c], (unsigned long long)since, (unsigned long long)(f->e[w].lost_ms - t0));
        assert_true(since <= RENEW_MS + 20);
        assert_true(since < LEASE_MS);
        /* Nobody leads while every request fails. */
        run_until(f, LEASE_MS + 500, NULL);
        assert_int_equal(leaders(f), 0);
        fake(f, "fail 0");
    }
    assert_true(run_until(f, LEASE_MS * 2 + SLACK_MS, one_leads));
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* The API hangs (the fake is frozen with SIGSTOP): requests time out instead of failing, and the
 * leader still gives up within the renew deadline; once it thaws, one leads again. */
static void hung_api_leader_gives_up_within_renew_deadline(void **state)
{
    struct fx *f = *state;
    int w = elect_one(f, 500);
    assert_int_equal(kill(f->fake_api.pid, SIGSTOP), 0);
    bool gave_up = run_until(f, RENEW_MS + SLACK_MS, none_leads);
    uint64_t since = f->e[w].lost_ms - f->e[w].last_renew_ms;
    run_until(f, LEASE_MS, NULL);
    int still = leaders(f);
    assert_int_equal(kill(f->fake_api.pid, SIGCONT), 0);
    assert_true(gave_up);
    fprintf(stderr, "hung API: leader gave up %llu ms after its last renewal\n",
            (unsigned long long)since);
    assert_true(since <= RENEW_MS + 20);
    assert_int_equal(still, 0);
    assert_true(run_until(f, LEASE_MS * 2 + 3 * RETRY_MS + SLACK_MS, one_leads));
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* A follower judges expiry by the holder's leaseDurationSeconds, not its own (client-go): a
 * candidate with a 1 s lease does not take over a lease written with 4 s by a leader that
 * crashed before those 4 s passed (with its own it would take over while that leader, whose renew
 * deadline is 3 s, still leads), and takes it within 4 s and one retry period. */
static void short_lease_candidate_waits_for_the_holders_longer_lease(void **state)
{
    struct fx *f = *state;
    start_elector_timed(f, 0, 4000, 3000, RETRY_MS);
    assert_true(run_until(f, 5000, one_leads));
    assert_true(f->e[0].is_leader);
    start_elector_timed(f, 1, 1000, 600, RETRY_MS);
    run_until(f, 1500, NULL);
    assert_true(f->e[0].is_leader);
    assert_int_equal(f->e[1].changes, 0);
    close_curl(f, 0);
    assert_true(run_until(f, 3000 + SLACK_MS, none_leads));
    uint64_t renew = f->e[0].last_renew_ms;
    assert_true(f->e[0].lost_ms - renew <= 3000 + 20);
    assert_true(run_until(f, 4000 + RETRY_MS + SLACK_MS, one_leads));
    assert_true(f->e[1].is_leader);
    uint64_t after = f->e[1].became_ms - renew;
    fprintf(stderr, "1 s candidate took over a 4 s lease %llu ms after its last renewal\n",
            (unsigned long long)after);
    assert_true(after >= 4000 - RETRY_MS);
    assert_true(after <= 4000 + RETRY_MS + REQUESTS_MS);
    expect_lease_secs(f, f->e[1].l.identity, 1, 1);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* Stops elector i, closes its HTTPS client and makes it startable again. */
static void reset_elector(struct fx *f, int i)
{
    struct elector *e = &f->e[i];
    stop_elector(f, i);
    close_curl(f, i);
    for (int k = 0; k < 5000 && !e->curl_closed; k++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(e->curl_closed);
    memset(e, 0, sizeof *e);
}

/* A Lease left by a replica that is gone (written through the fake API): a candidate waits the
 * record's leaseDurationSeconds (1 s, shorter than its own 2 s), or its own lease duration when the
 * record has none or one that is not a positive integer; the wait starts when it first saw the
 * record, and its attempt comes at the moment the wait ends. */
static void candidate_waits_the_records_duration_or_its_own(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *secs;
        uint64_t wait_ms;
    } cases[] = {{"1", 1000}, {"none", LEASE_MS}, {"\"1\"", LEASE_MS}, {"-3", LEASE_MS}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "lease cni-metrics-helper gone-%zu %s", c, cases[c].secs);
        fake(f, cmd);
        uv_update_time(&f->loop);
        uint64_t t0 = uv_now(&f->loop);
        start_elector(f, 0);
        assert_true(run_until(f, cases[c].wait_ms + RETRY_MS + SLACK_MS, one_leads));
        uint64_t took = f->e[0].became_ms - t0;
        fprintf(stderr, "leaseDurationSeconds %s: took over after %llu ms\n", cases[c].secs,
                (unsigned long long)took);
        assert_true(took >= cases[c].wait_ms);
        assert_true(took <= cases[c].wait_ms + RETRY_MS + REQUESTS_MS);
        reset_elector(f, 0);
    }
}

/* The API server rotates the service-account token (the file is rewritten, only the new one is
 * accepted): the leader's next renewal is refused once, it reads the file again, renews and keeps
 * the lease without a step-down. Then the token rotates before the file is rewritten (the kubelet
 * late): the leader cannot renew and steps down within the renew deadline; once the file holds the
 * new token it reads it after the next refusal and leads again, still the holder (no transition),
 * before the other could take over. */
static void token_rotation_leader_keeps_then_regains_the_lease(void **state)
{
    struct fx *f = *state;
    int w = elect_one(f, 300);
    struct cmh_leader_status s0, s1;
    cmh_leader_status(&f->e[w].l, &s0);
    uint64_t renewals0 = s0.renewals, none0 = f->none_leading;
    fake(f, "token tok-rotated-1");
    run_until(f, 2000, NULL);
    cmh_leader_status(&f->e[w].l, &s1);
    json_int_t unauthorized = fake_stat(f, "unauthorized");
    fprintf(stderr, "rotation: %lld requests refused, %llu renewals after it\n",
            (long long)unauthorized, (unsigned long long)(s1.renewals - renewals0));
    assert_true(unauthorized >= 1); /* the old token was presented, and refused */
    assert_true(f->e[w].is_leader);
    assert_int_equal(f->e[w].changes, 1);
    assert_int_equal(f->none_leading, none0);
    assert_true(s1.renewals - renewals0 >= 2000 / (RETRY_MS * 2));
    expect_lease(f, f->e[w].l.identity, 0);

    /* The kubelet is late: the API takes only tok-rotated-2, the file still has the old one. */
    fake(f, "token tok-rotated-2 file=no");
    assert_true(run_until(f, RENEW_MS + SLACK_MS, none_leads));
    uv_update_time(&f->loop);
    uint64_t t_file = uv_now(&f->loop);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.new", f->token_file);
    FILE *tf = fopen(tmp, "w");
    assert_non_null(tf);
    fputs("tok-rotated-2\n", tf);
    assert_int_equal(fclose(tf), 0);
    assert_int_equal(rename(tmp, f->token_file), 0);
    assert_true(run_until(f, 2 * RETRY_MS + SLACK_MS, one_leads));
    assert_true(f->e[w].is_leader);
    fprintf(stderr, "leader again %llu ms after the file was rewritten\n",
            (unsigned long long)(f->e[w].became_ms - t_file));
    assert_int_equal(f->e[w].changes, 3);
    assert_int_equal(f->e[!w].changes, 0);
    expect_lease(f, f->e[w].l.identity, 0);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* Two candidates race for an absent Lease: the fake answers both GETs together, both create, one
 * gets 201 and the other 409 Conflict; exactly one leads, and the conflicts the electors count are
 * the ones the API server answered. */
static void racing_candidates_one_wins_the_other_gets_409(void **state)
{
    struct fx *f = *state;
    fake(f, "leasebarrier 2");
    start_elector(f, 0);
    start_elector(f, 1);
    assert_true(run_until(f, 5000, one_leads));
    run_until(f, 500, NULL);
    assert_true(one_leads(f));
    struct cmh_leader_status a, b;
    cmh_leader_status(&f->e[0].l, &a);
    cmh_leader_status(&f->e[1].l, &b);
    json_int_t server = fake_stat(f, "lease_conflicts");
    fprintf(stderr, "race: conflicts %llu + %llu, the API server answered %lld\n",
            (unsigned long long)a.conflicts, (unsigned long long)b.conflicts, (long long)server);
    assert_true(a.conflicts + b.conflicts > 0);
    assert_int_equal(a.conflicts + b.conflicts, server);
    int w = the_leader(f);
    expect_lease(f, f->e[w].l.identity, 0);
    assert_int_equal(f->both_leading, 0);
    assert_int_equal(f->callback_overlaps, 0);
}

/* The Lease parser (pure): what a follower reads, the bounds on leaseDurationSeconds, and the
 * documents it refuses. */
static void lease_parse_reads_bounds_and_refuses(void **state)
{
    (void)state;
    struct cmh_lease_record r;
    const char *ok = "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":"
                     "{\"name\":\"x\",\"resourceVersion\":\"4242\"},\"spec\":{\"holderIdentity\":"
                     "\"pod-a\",\"leaseDurationSeconds\":15,\"renewTime\":"
                     "\"2026-01-02T03:04:05.123456Z\",\"leaseTransitions\":3}}";
    assert_int_equal(cmh_leader_lease_parse(ok, strlen(ok), &r), 0);
    assert_string_equal(r.holder, "pod-a");
    assert_string_equal(r.resource_version, "4242");
    assert_string_equal(r.renew_time, "2026-01-02T03:04:05.123456Z");
    assert_int_equal(r.duration_ms, 15000);
    assert_int_equal(r.transitions, 3);
    static const struct {
        const char *spec;
        uint64_t ms;
    } durations[] = {
        {"{\"leaseDurationSeconds\":1}", 1000},
        {"{\"leaseDurationSeconds\":3600}", 3600000},
        {"{\"leaseDurationSeconds\":3601}", 3600000},
        {"{\"leaseDurationSeconds\":9223372036854775807}", 3600000},
        {"{\"leaseDurationSeconds\":0}", 0},
        {"{\"leaseDurationSeconds\":-15}", 0},
        {"{\"leaseDurationSeconds\":1.5}", 0},
        {"{\"leaseDurationSeconds\":\"15\"}", 0},
        {"{\"leaseDurationSeconds\":null}", 0},
        {"{}", 0},
        {"null", 0},
    };
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        char doc[256];
        snprintf(doc, sizeof doc, "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":%s}",
                 durations[i].spec);
        assert_int_equal(cmh_leader_lease_parse(doc, strlen(doc), &r), 0);
        if (r.duration_ms != durations[i].ms)
            fail_msg("%s: %llu ms", doc, (unsigned long long)r.duration_ms);
        assert_string_equal(r.holder, "");
    }
    /* Holders up to 253 bytes, the longest identity. */
    char holder253[400], holder254[400];
    snprintf(holder253, sizeof holder253,
             "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":{\"holderIdentity\":\"%0253d\"}}",
             0);
    snprintf(holder254, sizeof holder254,
             "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":{\"holderIdentity\":\"%0254d\"}}",
             0);
    assert_int_equal(cmh_leader_lease_parse(holder253, strlen(holder253), &r), 0);
    assert_int_equal(strlen(r.holder), 253);
    const char *const bad[] = {
        "",
        "[]",
        "{\"spec\":{}}",
        "{\"metadata\":{\"resourceVersion\":\"\"}}",
        "{\"metadata\":{\"resourceVersion\":7}}",
        "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":[]}",
        "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":{\"holderIdentity\":5}}",
        "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":{\"renewTime\":{}}}",
        "{\"metadata\":{\"resourceVersion\":\"7\"},\"spec\":{\"holderIdentity\":\"a\\u0000b\"}}",
        "{\"metadata\":{\"resourceVersion\":\"7\"}",
        holder254,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&r, 0x5a, sizeof r);
        if (cmh_leader_lease_parse(bad[i], strlen(bad[i]), &r) != -EPROTO)
            fail_msg("accepted: %s", bad[i]);
        assert_string_equal(r.resource_version, "");
        assert_int_equal(r.duration_ms, 0);
    }
}

/* Timing and names are checked before anything starts. */
static void bad_options_are_refused(void **state)
{
    (void)state;
    char err[512];
    struct cmh_leader_opts o = {.server = "https://127.0.0.1:1"};
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), 0); /* the defaults */
    o.lease_duration_ms = 1000;
    o.renew_deadline_ms = 1000;
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "LEADER_ELECTION_RENEW_DEADLINE"));
    o.renew_deadline_ms = 900;
    o.retry_period_ms = 900;
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "LEADER_ELECTION_RETRY_PERIOD"));
    o.retry_period_ms = 100;
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), 0);
    o.lease_name = "Bad_Name";
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "LEADER_ELECTION_LEASE_NAME=Bad_Name"));
    o.lease_name = "cmh.leader-1";
    o.namespace_name = "a.b";
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), -EINVAL);
    o.namespace_name = NULL;
    o.server = NULL;
    assert_int_equal(cmh_leader_check_opts(&o, err, sizeof err), -EINVAL);
    /* start refuses too, leaving nothing to close. */
    uv_loop_t loop;
    struct cmh_leader l;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(cmh_leader_start(&l, &loop, NULL, &o, NULL, NULL, NULL), -EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test_setup_teardown(two_electors_exactly_one_leader_at_every_sample, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(graceful_stop_fails_over_within_one_lease_duration, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(crashed_leader_steps_down_before_takeover, setup, teardown),
        cmocka_unit_test_setup_teardown(stop_during_renewal_releases_with_the_new_version, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(api_failures_leader_gives_up_before_lease_expires, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(hung_api_leader_gives_up_within_renew_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(short_lease_candidate_waits_for_the_holders_longer_lease,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(candidate_waits_the_records_duration_or_its_own, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(token_rotation_leader_keeps_then_regains_the_lease, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(racing_candidates_one_wins_the_other_gets_409, setup,
                                        teardown),
        cmocka_unit_test(lease_parse_reads_bounds_and_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
