/* Aggregation semantics against hand-computed truth: counter increases per node and series,
 * restarts, first-seen nodes, stale gauges, order independence, atomic commits. Bodies go through
 * the real parser, as in the daemon. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/round/aggregate.h"
#include "cmh/scrape/prom.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What one simulated node serves in one round. */
struct node_vals {
    double assigned, total, max, enis, eni_max;
    double ipamd_err_a, ipamd_err_b; /* ipamd_error_count{fn="a"}, {fn="b"}; b < 0: absent */
    double no_ip;                    /* awscni_no_available_ip_addresses */
    double lat_sum, lat_count;       /* awscni_aws_api_latency_ms{api="X"} */
    double start;                    /* process_start_time_seconds; 0: absent */
};

static size_t render(char *buf, size_t len, const struct node_vals *v)
{
    int n =
        snprintf(buf, len,
                 "# HELP go_goroutines Number of goroutines that currently exist.\n"
                 "# TYPE go_goroutines gauge\ngo_goroutines 42\n"
                 "# TYPE awscni_assigned_ip_addresses gauge\nawscni_assigned_ip_addresses %.17g\n"
                 "# TYPE awscni_total_ip_addresses gauge\nawscni_total_ip_addresses %.17g\n"
                 "# TYPE awscni_ip_max gauge\nawscni_ip_max %.17g\n"
                 "# TYPE awscni_eni_allocated gauge\nawscni_eni_allocated %.17g\n"
                 "# TYPE awscni_eni_max gauge\nawscni_eni_max %.17g\n"
                 "# TYPE awscni_ipamd_error_count counter\n"
                 "awscni_ipamd_error_count{fn=\"a\"} %.17g\n",
                 v->assigned, v->total, v->max, v->enis, v->eni_max, v->ipamd_err_a);
    if (v->ipamd_err_b >= 0)
        n += snprintf(buf + n, len - (size_t)n, "awscni_ipamd_error_count{fn=\"b\"} %.17g\n",
                      v->ipamd_err_b);
    n += snprintf(buf + n, len - (size_t)n,
                  "# TYPE awscni_no_available_ip_addresses counter\n"
                  "awscni_no_available_ip_addresses %.17g\n"
                  "# TYPE awscni_aws_api_latency_ms summary\n"
                  "awscni_aws_api_latency_ms_sum{api=\"X\",error=\"false\"} %.17g\n"
                  "awscni_aws_api_latency_ms_count{api=\"X\",error=\"false\"} %.17g\n",
                  v->no_ip, v->lat_sum, v->lat_count);
    if (v->start > 0)
        n += snprintf(buf + n, len - (size_t)n,
                      "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.17g\n",
                      v->start);
    return (size_t)n;
}

struct rig {
    struct cmh_agg agg;
    struct cmh_agg_scrape scrape;
    struct cmh_prom_parser parser;
};

static void rig_init(struct rig *r, unsigned stale_rounds)
{
    struct cmh_agg_opts o = {.stale_rounds = stale_rounds, .max_series = 64, .cluster_id = "c1"};
    assert_int_equal(cmh_agg_init(&r->agg, &o), 0);
    assert_int_equal(cmh_agg_scrape_init(&r->scrape, 64), 0);
    struct cmh_prom_options po;
    cmh_agg_prom_options(&po, &r->scrape);
    assert_int_equal(cmh_prom_init(&r->parser, &po), 0);
}

static void rig_close(struct rig *r)
{
    cmh_prom_close(&r->parser);
    cmh_agg_scrape_close(&r->scrape);
    cmh_agg_close(&r->agg);
}

/* Parses body as node's scrape and commits it, or records a failure when it does not parse. */
static int scrape_body(struct rig *r, const char *node, const char *body, size_t len)
{
    cmh_prom_reset(&r->parser);
    cmh_agg_scrape_reset(&r->scrape);
    int rc = cmh_prom_feed(&r->parser, body, len);
    if (rc == 0)
        rc = cmh_prom_finish(&r->parser);
    if (rc != 0) {
        cmh_agg_fail(&r->agg, node);
        return rc;
    }
    return cmh_agg_commit(&r->agg, node, &r->scrape);
}

static void scrape(struct rig *r, const char *node, const struct node_vals *v)
{
    char body[4096];
    size_t len = render(body, sizeof body, v);
    assert_int_equal(scrape_body(r, node, body, len), 0);
}

static const struct cmh_datum *find(const struct cmh_agg *a, const char *metric)
{
    for (size_t i = 0; i < a->datums.n; i++)
        if (strcmp(a->datums.v[i].metric, metric) == 0)
            return &a->datums.v[i];
    return NULL;
}

static double value_of(const struct cmh_agg *a, const char *metric)
{
    const struct cmh_datum *d = find(a, metric);
    if (d == NULL)
        fail_msg("no datum %s", metric);
    return d->value;
}

static const struct node_vals base = {.assigned = 10,
                                      .total = 20,
                                      .max = 30,
                                      .enis = 2,
                                      .eni_max = 4,
                                      .ipamd_err_a = 100,
                                      .ipamd_err_b = -1,
                                      .no_ip = 7,
                                      .lat_sum = 1000,
                                      .lat_count = 10,
                                      .start = 1000};

static void five_nodes_with_ten_errors_a_round_publish_exactly_ten(void **state)
{
    /* The original helper's bug: deltas against one shared previous value gave ~440 here. */
    struct rig r;
    rig_init(&r, 2);
    const char *names[] = {"n1", "n2", "n3", "n4", "n5"};
    struct node_vals v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = base;
        v[i].ipamd_err_a = 1000.0 * (i + 1); /* very different running totals per node */
    }
    for (uint64_t round = 1; round <= 6; round++) {
        cmh_agg_round_begin(&r.agg, round, (int64_t)round * 30000 + 1700000000000);
        for (int i = 0; i < 5; i++) {
            scrape(&r, names[i], &v[i]);
            v[i].ipamd_err_a += 2;
        }
        assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
        if (round == 1) {
            assert_null(find(&r.agg, "ipamdErr")); /* no previous scrape to compare with */
        } else {
            assert_true(value_of(&r.agg, "ipamdErr") == 10);
        }
        assert_true(value_of(&r.agg, "assignIPAddresses") == 50);
        assert_true(value_of(&r.agg, "scrapeTargetsFresh") == 5);
    }
    rig_close(&r);
}

static void gauges_sum_and_derived_metrics_follow(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    struct node_vals a = base, b = base;
    b.assigned = 30; /* at capacity */
    b.total = 30;
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
    assert_true(value_of(&r.agg, "assignIPAddresses") == 40);
    assert_true(value_of(&r.agg, "totalIPAddresses") == 50);
    assert_true(value_of(&r.agg, "maxIPAddresses") == 60);
    assert_true(value_of(&r.agg, "eniAllocated") == 4);
    assert_true(value_of(&r.agg, "eniMaxAvailable") == 8);
    assert_true(value_of(&r.agg, "availableIPAddresses") == 10);
    assert_true(fabs(value_of(&r.agg, "ipUtilization") - 100.0 * 40 / 60) < 1e-12);
    assert_true(value_of(&r.agg, "nodesAtIPCapacity") == 1);
    assert_true(value_of(&r.agg, "scrapeTargets") == 2);
    const struct cmh_datum *d = find(&r.agg, "assignIPAddresses");
    assert_int_equal(d->timestamp_ms, 1700000000000);
    assert_string_equal(d->dims[0].name, "CLUSTER_ID");
    assert_string_equal(d->dims[0].value, "c1");
    assert_string_equal(d->unit, "Count");
    rig_close(&r);
}

static void restart_counts_the_new_value_and_new_series_count_whole(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals v = base;
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);

    /* Restart: counters reset to small values, start time moves. */
    v.ipamd_err_a = 3;
    v.no_ip = 1;
    v.start = 1700000010;
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 3);
    assert_true(value_of(&r.agg, "noAvailableIPAddrs") == 1);

    /* A restart whose counters already passed the old values is still seen, by start time. */
    v.ipamd_err_a = 500;
    v.start = 1700000040;
    cmh_agg_round_begin(&r.agg, 3, 1700000060000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 500);

    /* A labelled series appearing on the known node counts its whole value. */
    v.ipamd_err_a = 501;
    v.ipamd_err_b = 4;
    cmh_agg_round_begin(&r.agg, 4, 1700000090000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 5);

    /* Without process_start_time_seconds a decrease still means a restart. */
    v.start = 0;
    v.ipamd_err_a = 2;
    v.ipamd_err_b = 4;
    cmh_agg_round_begin(&r.agg, 5, 1700000120000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 2);
    rig_close(&r);
}

static void first_seen_node_counts_only_if_started_after_previous_round(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals old = base, young = base, veteran = base;
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    scrape(&r, "old", &old);
    cmh_agg_round_finish(&r.agg);

    young.ipamd_err_a = 6;
    young.no_ip = 2;
    young.start = 1700000010; /* after round 1 started */
    veteran.ipamd_err_a = 9999;
    veteran.start = 1600000000; /* long before */
    /* client_golang's start time reads up to a second early (boot time in whole seconds). */
    struct node_vals early = base, late_by_2s = base;
    early.ipamd_err_a = 40;
    early.start = 1699999999.5; /* "started" 0.5 s before round 1: within the slack */
    late_by_2s.ipamd_err_a = 500;
    late_by_2s.start = 1699999998; /* 2 s before round 1: history */
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    scrape(&r, "old", &old);
    scrape(&r, "young", &young);
    scrape(&r, "veteran", &veteran);
    scrape(&r, "early", &early);
    scrape(&r, "late_by_2s", &late_by_2s);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 6 + 40);
    assert_true(value_of(&r.agg, "noAvailableIPAddrs") == 2 + base.no_ip);
    assert_true(value_of(&r.agg, "scrapeTargets") == 5);
    rig_close(&r);
}

static void failed_node_keeps_gauges_for_stale_rounds_then_drops_out(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals a = base, b = base;
    b.assigned = 5;
    uint64_t round = 1;
    cmh_agg_round_begin(&r.agg, round++, 1700000000000);
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    for (int k = 1; k <= 3; k++) {
        cmh_agg_round_begin(&r.agg, round, 1700000000000 + (int64_t)round * 30000);
        round++;
        a.ipamd_err_a += 1;
        b.ipamd_err_a += 10; /* counted by b, but b is unreachable */
        scrape(&r, "a", &a);
        assert_int_equal(cmh_agg_fail(&r.agg, "b"), 0);
        cmh_agg_round_finish(&r.agg);
        assert_true(value_of(&r.agg, "scrapeTargetsFailed") == 1);
        assert_true(value_of(&r.agg, "ipamdErr") == 1);
        if (k <= 2) {
            assert_true(value_of(&r.agg, "assignIPAddresses") == 15);
            assert_true(value_of(&r.agg, "scrapeTargetsStale") == 1);
        } else {
            assert_true(value_of(&r.agg, "assignIPAddresses") == 10);
            assert_true(value_of(&r.agg, "scrapeTargetsStale") == 0);
        }
    }
    /* b is back: the errors it counted while unreachable are not lost. */
    cmh_agg_round_begin(&r.agg, round, 1700000000000 + (int64_t)round * 30000);
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 30);
    assert_true(value_of(&r.agg, "assignIPAddresses") == 15);
    rig_close(&r);
}

static void malformed_scrape_changes_nothing_and_counts_as_failed(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals v = base;
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);

    /* Round 2: the body breaks after the counter line; nothing of it may count. */
    v.ipamd_err_a = 150;
    char body[4096];
    size_t len = render(body, sizeof body, &v);
    char *cut = strstr(body, "# TYPE awscni_no_available");
    memcpy(cut, "awscni_no_available_ip_addresses{", 33);
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    assert_int_not_equal(scrape_body(&r, "n", body, len), 0);
    cmh_agg_round_finish(&r.agg);
    assert_null(find(&r.agg, "ipamdErr")); /* no node answered: no known increase */
    assert_true(value_of(&r.agg, "scrapeTargetsFailed") == 1);
    assert_true(value_of(&r.agg, "assignIPAddresses") == 10); /* stale */

    /* Round 3: good again: the whole increase since the last good scrape. */
    cmh_agg_round_begin(&r.agg, 3, 1700000060000);
    scrape(&r, "n", &v);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 50);
    rig_close(&r);
}

static void same_series_twice_is_refused(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    const char body[] = "# TYPE awscni_assigned_ip_addresses gauge\n"
                        "awscni_assigned_ip_addresses 1\nawscni_assigned_ip_addresses 2\n";
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    assert_int_equal(scrape_body(&r, "n", body, sizeof body - 1), -EINVAL);
    assert_non_null(strstr(r.scrape.reason, "twice"));
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "scrapeTargetsFailed") == 1);
    assert_null(find(&r.agg, "assignIPAddresses"));
    rig_close(&r);
}

static void latency_is_a_statistic_set_of_the_round(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals a = base, b = base;
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    assert_null(find(&r.agg, "awsAPILatency"));
    a.lat_sum += 50; /* 5 calls of 10 ms */
    a.lat_count += 5;
    b.lat_sum += 300; /* 2 calls of 150 ms */
    b.lat_count += 2;
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    const struct cmh_datum *d = find(&r.agg, "awsAPILatency");
    assert_non_null(d);
    assert_int_equal(d->kind, CMH_DATUM_STATS);
    assert_true(d->count == 7 && d->sum == 350 && d->min == 10 && d->max == 150);
    assert_string_equal(d->unit, "Milliseconds");
    /* No calls in a round: no latency datum rather than a made-up 0. */
    cmh_agg_round_begin(&r.agg, 3, 1700000060000);
    scrape(&r, "a", &a);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    assert_null(find(&r.agg, "awsAPILatency"));
    rig_close(&r);
}

static void nodes_no_longer_targets_are_forgotten(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    struct node_vals v = base;
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    scrape(&r, "a", &v);
    scrape(&r, "b", &v);
    cmh_agg_round_finish(&r.agg);
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    scrape(&r, "a", &v);
    cmh_agg_round_finish(&r.agg);
    assert_int_equal(r.agg.nnodes, 1);
    assert_true(value_of(&r.agg, "scrapeTargets") == 1);
    /* b returns with a large count but an old process: a new node, no increase. */
    struct node_vals b = v;
    b.ipamd_err_a = 100000;
    cmh_agg_round_begin(&r.agg, 3, 1700000060000);
    scrape(&r, "a", &v);
    scrape(&r, "b", &b);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "ipamdErr") == 0);
    rig_close(&r);
}

/* Runs rounds with a fixed commit order given by perm and returns every datum value. */
static void run_ordered(const int *perm, int n, double *out, size_t *nout)
{
    struct rig r;
    rig_init(&r, 1);
    *nout = 0;
    for (uint64_t round = 1; round <= 4; round++) {
        cmh_agg_round_begin(&r.agg, round, 1700000000000 + (int64_t)round * 30000);
        for (int k = 0; k < n; k++) {
            int i = perm[(k + (int)round) % n];
            char name[16];
            snprintf(name, sizeof name, "node-%02d", i);
            struct node_vals v = base;
            /* Gauges and counters are integral counts (anything else is refused), so their sums
             * are exact in any order; the latency sum is fractional, so a different summation
             * order would change its bits. */
            v.assigned = 7.0 * i + (double)round;
            v.total = 11.0 * i + 3 * (double)round;
            v.lat_sum = 1000 + 0.7 * (double)round * (i + 1) + 1.0 / (i + 3);
            v.lat_count = 10 + round;
            v.ipamd_err_a = 100 + round * (unsigned)i;
            if (i % 5 == 0 && round == 3) {
                cmh_agg_fail(&r.agg, name);
                continue;
            }
            scrape(&r, name, &v);
        }
        assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
        for (size_t d = 0; d < r.agg.datums.n; d++) {
            const struct cmh_datum *x = &r.agg.datums.v[d];
            out[(*nout)++] = x->kind == CMH_DATUM_VALUE ? x->value : x->sum + x->min + x->max;
        }
    }
    rig_close(&r);
}

static void result_never_depends_on_scrape_order(void **state)
{
    enum { N = 23 };
    int perm[N];
    for (int i = 0; i < N; i++)
        perm[i] = i;
    double ref[512], got[512];
    size_t nref, ngot;
    run_ordered(perm, N, ref, &nref);
    srand(7);
    for (int trial = 0; trial < 20; trial++) {
        for (int i = N - 1; i > 0; i--) {
            int j = rand() % (i + 1);
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        run_ordered(perm, N, got, &ngot);
        assert_int_equal(nref, ngot);
        assert_memory_equal(ref, got, nref * sizeof ref[0]);
    }
}

static void counters_refuse_negative_and_nan_values(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    const char neg[] = "# TYPE awscni_ipamd_error_count counter\nawscni_ipamd_error_count -1\n";
    const char nan[] = "# TYPE awscni_ipamd_error_count counter\nawscni_ipamd_error_count NaN\n";
    const char gauge_inf[] = "# TYPE awscni_ip_max gauge\nawscni_ip_max +Inf\n";
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    assert_int_not_equal(scrape_body(&r, "a", neg, sizeof neg - 1), 0);
    assert_int_not_equal(scrape_body(&r, "b", nan, sizeof nan - 1), 0);
    assert_int_not_equal(scrape_body(&r, "c", gauge_inf, sizeof gauge_inf - 1), 0);
    cmh_agg_round_finish(&r.agg);
    assert_true(value_of(&r.agg, "scrapeTargetsFailed") == 3);
    rig_close(&r);
}

/* Two nodes a (10 assigned of 20 warm, 30 max) and b (40 of 50, 60 max) answer round 1; in round 2
 * b serves body (an absurd value), a the same as before. */
static void absurd_round_two(struct rig *r, const char *b_round2)
{
    char body[4096];
    struct node_vals a = base, b = base;
    b.assigned = 40, b.total = 50, b.max = 60;
    cmh_agg_round_begin(&r->agg, 1, 1700000000000);
    scrape(r, "a", &a);
    scrape(r, "b", &b);
    assert_int_equal(cmh_agg_round_finish(&r->agg), 0);
    cmh_agg_round_begin(&r->agg, 2, 1700000030000);
    scrape(r, "a", &a);
    size_t len = render(body, sizeof body, &b);
    /* b's body with its first line replaced by the absurd one. */
    char *cut = strstr(body, "# TYPE awscni_assigned_ip_addresses");
    assert_non_null(cut);
    char bad[4096];
    int n = snprintf(bad, sizeof bad, "%.*s%s", (int)(cut - body), body, b_round2);
    assert_true(n > 0 && (size_t)n < sizeof bad);
    (void)len;
    assert_int_not_equal(scrape_body(r, "b", bad, (size_t)n), 0);
    assert_int_equal(cmh_agg_round_finish(&r->agg), 0);
    /* b is failed and stale: its round-1 gauges stand, so the sums are those of round 1. */
    assert_true(value_of(&r->agg, "scrapeTargetsFailed") == 1);
    assert_true(value_of(&r->agg, "scrapeTargetsStale") == 1);
    assert_true(value_of(&r->agg, "assignIPAddresses") == 50);
    assert_true(value_of(&r->agg, "totalIPAddresses") == 70);
    assert_true(value_of(&r->agg, "maxIPAddresses") == 90);
    assert_true(value_of(&r->agg, "availableIPAddresses") == 20);
    for (size_t i = 0; i < r->agg.datums.n; i++)
        assert_true(isfinite(r->agg.datums.v[i].value));
}

static void node_reporting_negative_assigned_is_refused_and_its_last_state_kept(void **state)
{
    /* Summed as served, -999996 would make assignIPAddresses negative and availableIPAddresses
     * over a million: the cluster would look empty while it runs out. */
    struct rig r;
    rig_init(&r, 2);
    absurd_round_two(&r, "# TYPE awscni_assigned_ip_addresses gauge\n"
                         "awscni_assigned_ip_addresses -999996\n");
    assert_non_null(strstr(r.scrape.reason, "not a count"));
    assert_non_null(strstr(r.scrape.reason, "-999996"));
    rig_close(&r);
}

static void node_reporting_1_7e308_is_refused_and_the_sums_stay_finite(void **state)
{
    /* Two series of 1.7e308 on one node overflow its own total to +Inf. */
    struct rig r;
    rig_init(&r, 2);
    absurd_round_two(&r, "# TYPE awscni_ip_max gauge\nawscni_ip_max 1.7e308\n");
    assert_non_null(strstr(r.scrape.reason, "not a count"));
    rig_close(&r);
    rig_init(&r, 2);
    absurd_round_two(&r, "# TYPE awscni_assigned_ip_per_cidr gauge\n"
                         "awscni_assigned_ip_per_cidr{cidr=\"a\"} 1.7e308\n"
                         "awscni_assigned_ip_per_cidr{cidr=\"b\"} 1.7e308\n");
    rig_close(&r);
    /* And a counter at 1.7e308: no count a double can still step by one. */
    rig_init(&r, 2);
    absurd_round_two(&r, "# TYPE awscni_ipamd_error_count counter\n"
                         "awscni_ipamd_error_count{fn=\"z\"} 1.7e308\n");
    assert_non_null(strstr(r.scrape.reason, "2^53"));
    rig_close(&r);
}

static void node_values_outside_any_ec2_instance_are_refused(void **state)
{
    struct {
        const char *body;
        int ok;
    } cases[] = {
        /* The largest instance with prefix delegation: 80 ENIs x 49 prefixes x 16 = 62,720. */
        {"# TYPE awscni_ip_max gauge\nawscni_ip_max 62720\n", 1},
        {"# TYPE awscni_ip_max gauge\nawscni_ip_max 262145\n", 0},
        {"# TYPE awscni_assigned_ip_addresses gauge\nawscni_assigned_ip_addresses 10.5\n", 0},
        {"# TYPE awscni_assigned_ip_addresses gauge\nawscni_assigned_ip_addresses -0.5\n", 0},
        {"# TYPE awscni_eni_max gauge\nawscni_eni_max 80\n", 1},
        {"# TYPE awscni_eni_max gauge\nawscni_eni_max 513\n", 0},
        {"# TYPE awscni_eni_allocated gauge\nawscni_eni_allocated 1e6\n", 0},
        {"# TYPE awscni_total_ipv4_prefixes gauge\nawscni_total_ipv4_prefixes 3920\n", 1},
        {"# TYPE awscni_total_ipv4_prefixes gauge\nawscni_total_ipv4_prefixes 16385\n", 0},
        /* IPv6: ipamD counts its /80 prefix as 2^48 addresses. */
        {"# TYPE awscni_total_ip_addresses gauge\nawscni_total_ip_addresses 281474976710656\n", 1},
        {"# TYPE awscni_total_ip_addresses gauge\nawscni_total_ip_addresses 281474976710657\n", 0},
        {"# TYPE awscni_total_ip_addresses gauge\nawscni_total_ip_addresses 300000\n", 0},
        /* Per-CIDR series are summed per node before the bound. */
        {"# TYPE awscni_assigned_ip_per_cidr gauge\nawscni_assigned_ip_per_cidr{cidr=\"a\"} "
         "200000\nawscni_assigned_ip_per_cidr{cidr=\"b\"} 200000\n",
         0},
        {"# TYPE awscni_ipamd_error_count counter\nawscni_ipamd_error_count 2.5\n", 0},
        {"# TYPE awscni_ipamd_error_count counter\nawscni_ipamd_error_count 9007199254740992\n", 1},
        {"# TYPE awscni_ipamd_error_count counter\nawscni_ipamd_error_count 1e16\n", 0},
        {"# TYPE awscni_aws_api_latency_ms summary\nawscni_aws_api_latency_ms_sum 12.75\n"
         "awscni_aws_api_latency_ms_count 3\n",
         1},
        {"# TYPE awscni_aws_api_latency_ms summary\nawscni_aws_api_latency_ms_count 3.5\n", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rig r;
        rig_init(&r, 2);
        cmh_agg_round_begin(&r.agg, 1, 1700000000000);
        int rc = scrape_body(&r, "n", cases[i].body, strlen(cases[i].body));
        if ((rc == 0) != cases[i].ok)
            fail_msg("case %zu: rc %d (%s) for %s", i, rc, r.scrape.reason, cases[i].body);
        assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
        assert_true(value_of(&r.agg, "scrapeTargetsFailed") == (cases[i].ok ? 0 : 1));
        rig_close(&r);
    }
}

/* A newer VPC CNI's family (awscni_ and not in the metric table) is counted once per family and
 * good scrape and named once; go_*, process_* and the deliberately ignored families are not
 * unknown; what is published does not change. */
static void unknown_ipamd_families_are_counted_and_named_not_dropped(void **state)
{
    const char known[] = "# TYPE awscni_assigned_ip_addresses gauge\n"
                         "awscni_assigned_ip_addresses 3\n"
                         "# TYPE awscni_build_info gauge\n"
                         "awscni_build_info{version=\"v1.23.0\",goversion=\"go1.24\"} 1\n"
                         "# TYPE go_threads gauge\ngo_threads 9\n"
                         "# TYPE process_open_fds gauge\nprocess_open_fds 12\n";
    const char unknown[] = "# TYPE awscni_new_pool_gauge gauge\nawscni_new_pool_gauge 7\n"
                           "# TYPE awscni_new_error_count counter\n"
                           "awscni_new_error_count{fn=\"a\"} 1\n"
                           "awscni_new_error_count{fn=\"b\"} 2\n";
    char both[1024];
    int n = snprintf(both, sizeof both, "%s%s", unknown, known);
    assert_true(n > 0 && (size_t)n < sizeof both);

    struct rig plain, r;
    rig_init(&plain, 2);
    rig_init(&r, 2);
    for (uint64_t round = 1; round <= 2; round++) {
        int64_t t = 1700000000000 + (int64_t)round * 30000;
        cmh_agg_round_begin(&plain.agg, round, t);
        cmh_agg_round_begin(&r.agg, round, t);
        assert_int_equal(scrape_body(&plain, "n", known, sizeof known - 1), 0);
        assert_int_equal(plain.agg.unknown_total, 0);
        assert_int_equal(scrape_body(&r, "n", both, (size_t)n), 0);
        assert_int_equal(r.agg.unknown_total, 2 * round);
        assert_int_equal(cmh_agg_round_finish(&plain.agg), 0);
        assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
        /* The same datums, value for value. */
        assert_int_equal(r.agg.datums.n, plain.agg.datums.n);
        for (size_t i = 0; i < r.agg.datums.n; i++) {
            assert_string_equal(r.agg.datums.v[i].metric, plain.agg.datums.v[i].metric);
            assert_true(r.agg.datums.v[i].value == plain.agg.datums.v[i].value);
        }
    }
    assert_int_equal(r.agg.nunknown, 2);
    assert_int_equal(plain.agg.nunknown, 0);
    assert_string_equal(r.agg.unknown_names[0], "awscni_new_pool_gauge");
    assert_string_equal(r.agg.unknown_names[1], "awscni_new_error_count");
    /* A refused scrape counts nothing. */
    cmh_agg_round_begin(&r.agg, 3, 1700000090000);
    char bad[1024];
    n = snprintf(bad, sizeof bad, "%sawscni_assigned_ip_addresses -1\n", unknown);
    assert_int_not_equal(scrape_body(&r, "n", bad, (size_t)n), 0);
    assert_int_equal(r.agg.unknown_total, 4);
    rig_close(&plain);
    rig_close(&r);
}

/* Distinct names are remembered up to CMH_AGG_UNKNOWN_KEPT; the rest are still counted. */
static void unknown_family_names_are_bounded(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    for (int i = 0; i < CMH_AGG_UNKNOWN_KEPT / 2 + 10; i++) { /* two names a scrape */
        char body[256];
        int n = snprintf(body, sizeof body, "awscni_future_%d 1\nawscni_future_%d_b 1\n", i, i);
        assert_int_equal(scrape_body(&r, "n", body, (size_t)n), 0);
    }
    assert_int_equal(r.agg.unknown_total, CMH_AGG_UNKNOWN_KEPT + 20);
    assert_int_equal(r.agg.nunknown, CMH_AGG_UNKNOWN_KEPT);
    assert_int_equal(r.agg.unknown_untracked, 20);
    /* A name longer than kept is cut, not overrun. */
    char body[600];
    memset(body, 'x', sizeof body);
    memcpy(body, "awscni_", 7);
    memcpy(body + 500, " 1\n", 3);
    assert_int_equal(scrape_body(&r, "m", body, 503), 0);
    rig_close(&r);
}

static void gauges_no_node_exposes_are_not_published_as_zero(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    const char body[] = "# TYPE awscni_assigned_ip_addresses gauge\n"
                        "awscni_assigned_ip_addresses 3\n"
                        "# TYPE awscni_ip_max gauge\nawscni_ip_max 4\n";
    for (uint64_t round = 1; round <= 2; round++) {
        cmh_agg_round_begin(&r.agg, round, 1700000000000 + (int64_t)round * 30000);
        assert_int_equal(scrape_body(&r, "n", body, sizeof body - 1), 0);
        assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
    }
    assert_true(value_of(&r.agg, "assignIPAddresses") == 3);
    assert_true(value_of(&r.agg, "ipUtilization") == 75);
    assert_true(value_of(&r.agg, "nodesAtIPCapacity") == 0);
    assert_null(find(&r.agg, "totalIPv4Prefixes"));
    assert_null(find(&r.agg, "availableIPAddresses")); /* needs totalIPAddresses */
    assert_null(find(&r.agg, "awsAPILatency"));        /* no call: no statistic set */
    assert_true(value_of(&r.agg, "scrapeTargetsFresh") == 1);
    rig_close(&r);
}

/* client_golang creates a labelled counter series at its first increment: on a healthy cluster
 * no node has awscni_pod_eni_error_count or awscni_ipamd_error_count, and a node may lack
 * awscni_no_available_ip_addresses. Every counter of the table is still published, 0. */
static void every_counter_is_published_as_zero_when_no_node_has_the_family(void **state)
{
    struct rig r;
    rig_init(&r, 2);
    const char body[] = "# TYPE awscni_assigned_ip_addresses gauge\n"
                        "awscni_assigned_ip_addresses 3\n"
                        "# TYPE awscni_ipamd_error_count counter\n"
                        "awscni_ipamd_error_count{fn=\"x\"} 5\n";
    const char later[] = "# TYPE awscni_assigned_ip_addresses gauge\n"
                         "awscni_assigned_ip_addresses 3\n"
                         "# TYPE awscni_ipamd_error_count counter\n"
                         "awscni_ipamd_error_count{fn=\"x\"} 8\n";
    const char *counters[] = {"addReqCount",        "awsAPIErr",      "awsUtilErr",
                              "delReqCount",        "ec2ApiErrCount", "ec2ApiReqCount",
                              "forceRemoveENI",     "forceRemoveIPs", "ipamdErr",
                              "noAvailableIPAddrs", "podENIErr",      "reconcileCount"};
    size_t ncounters = sizeof counters / sizeof counters[0];
    /* Every counter of the table is in the list above, and only those. */
    size_t in_table = 0;
    for (int i = 0; i < CMH_M_FAMILIES; i++)
        in_table += cmh_metrics[i].kind == CMH_METRIC_COUNTER;
    assert_int_equal(in_table, ncounters);

    /* Round 1: no previous scrape, so no counter at all. */
    cmh_agg_round_begin(&r.agg, 1, 1700000000000);
    assert_int_equal(scrape_body(&r, "n", body, sizeof body - 1), 0);
    assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
    for (size_t k = 0; k < ncounters; k++)
        assert_null(find(&r.agg, counters[k]));

    /* Round 2: every counter, 0 except the family the node has. */
    cmh_agg_round_begin(&r.agg, 2, 1700000030000);
    assert_int_equal(scrape_body(&r, "n", later, sizeof later - 1), 0);
    assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
    for (size_t k = 0; k < ncounters; k++) {
        const struct cmh_datum *d = find(&r.agg, counters[k]);
        if (d == NULL)
            fail_msg("%s not published", counters[k]);
        assert_true(d->value == (strcmp(counters[k], "ipamdErr") == 0 ? 3 : 0));
        assert_string_equal(d->unit, "Count");
        assert_true(d->timestamp_ms == 1700000030000);
    }
    /* One datum per counter: never two values in a period. */
    size_t ndatums = 0;
    for (size_t i = 0; i < r.agg.datums.n; i++)
        for (size_t k = 0; k < ncounters; k++)
            ndatums += strcmp(r.agg.datums.v[i].metric, counters[k]) == 0;
    assert_int_equal(ndatums, ncounters);

    /* Round 3: the only node fails: no node answered, so no counter (unknown, not 0). */
    cmh_agg_round_begin(&r.agg, 3, 1700000060000);
    assert_int_equal(cmh_agg_fail(&r.agg, "n"), 0);
    assert_int_equal(cmh_agg_round_finish(&r.agg), 0);
    for (size_t k = 0; k < ncounters; k++)
        assert_null(find(&r.agg, counters[k]));
    rig_close(&r);
}

static void metric_table_is_sorted_and_covers_the_ipamd_inventory(void **state)
{
    for (int i = 1; i < CMH_M_FAMILIES; i++)
        assert_true(strcmp(cmh_metrics[i - 1].family, cmh_metrics[i].family) < 0);
    for (int i = 0; i < CMH_M_FAMILIES; i++)
        assert_int_equal(cmh_metric_lookup(cmh_metrics[i].family, strlen(cmh_metrics[i].family)),
                         i);
    assert_int_equal(cmh_metric_lookup("awscni_ip", 9), -1);
    assert_int_equal(cmh_metric_lookup("awscni_ip_maxx", 14), -1);
    /* Every family of the inventory is classified. */
    FILE *f = fopen(CMH_DATA_DIR "/ipamd/ipamd_metric_inventory.tsv", "r");
    assert_non_null(f);
    char line[1024];
    int families = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || strncmp(line, "name\t", 5) == 0)
            continue;
        size_t n = strcspn(line, "\t");
        if (cmh_metric_lookup(line, n) < 0)
            fail_msg("unclassified family %.*s", (int)n, line);
        families++;
    }
    fclose(f);
    assert_int_equal(families, 27);
    /* The original helper's 20 names are all published. */
    const char *orig[] = {"addReqCount",
                          "assignIPAddresses",
                          "awsAPIErr",
                          "awsAPILatency",
                          "awsUtilErr",
                          "delReqCount",
                          "eniAllocated",
                          "eniMaxAvailable",
                          "ipamdActionInProgress",
                          "ipamdErr",
                          "maxIPAddresses",
                          "podENIErr",
                          "reconcileCount",
                          "totalIPAddresses",
                          "totalIPv4Prefixes",
                          "totalAssignedIPv4sPerCidr",
                          "forceRemoveENI",
                          "forceRemoveIPs",
                          "ec2ApiReqCount",
                          "ec2ApiErrCount"};
    for (size_t k = 0; k < sizeof orig / sizeof orig[0]; k++) {
        int found = 0;
        for (int i = 0; i < CMH_M_COUNT; i++)
            found += cmh_metrics[i].cw_name && strcmp(cmh_metrics[i].cw_name, orig[k]) == 0;
        if (found != 1)
            fail_msg("%s published %d times", orig[k], found);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(five_nodes_with_ten_errors_a_round_publish_exactly_ten),
        cmocka_unit_test(gauges_sum_and_derived_metrics_follow),
        cmocka_unit_test(restart_counts_the_new_value_and_new_series_count_whole),
        cmocka_unit_test(first_seen_node_counts_only_if_started_after_previous_round),
        cmocka_unit_test(failed_node_keeps_gauges_for_stale_rounds_then_drops_out),
        cmocka_unit_test(malformed_scrape_changes_nothing_and_counts_as_failed),
        cmocka_unit_test(same_series_twice_is_refused),
        cmocka_unit_test(latency_is_a_statistic_set_of_the_round),
        cmocka_unit_test(nodes_no_longer_targets_are_forgotten),
        cmocka_unit_test(result_never_depends_on_scrape_order),
        cmocka_unit_test(counters_refuse_negative_and_nan_values),
        cmocka_unit_test(node_reporting_negative_assigned_is_refused_and_its_last_state_kept),
        cmocka_unit_test(node_reporting_1_7e308_is_refused_and_the_sums_stay_finite),
        cmocka_unit_test(node_values_outside_any_ec2_instance_are_refused),
        cmocka_unit_test(unknown_ipamd_families_are_counted_and_named_not_dropped),
        cmocka_unit_test(unknown_family_names_are_bounded),
        cmocka_unit_test(gauges_no_node_exposes_are_not_published_as_zero),
        cmocka_unit_test(every_counter_is_published_as_zero_when_no_node_has_the_family),
        cmocka_unit_test(metric_table_is_sorted_and_covers_the_ipamd_inventory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
