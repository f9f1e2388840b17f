/* The subnet/AZ view: CIDR parsing and matching (IPv4, IPv6, IPv4-mapped, longest prefix), and the
 * datums of a round (per subnet, per AZ, the emptiest subnet, per AZ gauges with "unknown", per
 * node with its cap, the node closest to running out) against sums computed here by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/round/aggregate_int.h"
#include "cmh/round/subnets_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static struct cmh_cidr cidr(const char *s)
{
    struct cmh_cidr c;
    if (cmh_cidr_parse(s, strlen(s), &c) != 0)
        fail_msg("%s refused", s);
    return c;
}

static void subnets_cidr_parse_and_contains(void **state)
{
    (void)state;
    struct cmh_cidr c = cidr("10.1.0.0/16");
    assert_true(cmh_cidr_contains(&c, "10.1.255.3"));
    assert_false(cmh_cidr_contains(&c, "10.2.0.1"));
    assert_true(cmh_cidr_contains(&c, "::ffff:10.1.2.3")); /* IPv4-mapped */
    assert_false(cmh_cidr_contains(&c, "not-an-ip"));
    c = cidr("127.0.0.0/9");
    assert_true(cmh_cidr_contains(&c, "127.127.255.255"));
    assert_false(cmh_cidr_contains(&c, "127.128.0.0"));
    c = cidr("2600:1f18:abcd:ef00::/64");
    assert_true(cmh_cidr_contains(&c, "2600:1f18:abcd:ef00::1f"));
    assert_false(cmh_cidr_contains(&c, "2600:1f18:abcd:ef01::1"));
    assert_false(cmh_cidr_contains(&c, "10.1.2.3"));
    c = cidr("0.0.0.0/0");
    assert_true(cmh_cidr_contains(&c, "203.0.113.9"));
    static const char *const bad[] = {"10.0.0.0", "10.0.0.0/33", "10.0.0.1/24",  "10.0.0/24",
                                      "/24",      "10.0.0.0/",   "10.0.0.0/2x",  "::/129",
                                      "::1/64",   "10.0.0.0/-1", "10.0.0.0/0024"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cmh_cidr x;
        if (cmh_cidr_parse(bad[i], strlen(bad[i]), &x) != -EINVAL)
            fail_msg("%s accepted", bad[i]);
    }
}

static struct cmh_subnet subnet(const char *id, const char *az, const char *v4, const char *v6,
                                int64_t available)
{
    struct cmh_subnet s = {0};
    snprintf(s.id, sizeof s.id, "%s", id);
    snprintf(s.az, sizeof s.az, "%s", az);
    if (v4 != NULL) {
        snprintf(s.cidr, sizeof s.cidr, "%s", v4);
        s.cidrs[s.ncidrs++] = cidr(v4);
    }
    if (v6 != NULL)
        s.cidrs[s.ncidrs++] = cidr(v6);
    s.available = available;
    return s;
}

static void view(struct cmh_subnet_list *l)
{
    memset(l, 0, sizeof *l);
    struct cmh_subnet v[] = {
        subnet("subnet-00000003", "az-b", "127.2.0.0/16", NULL, 500),
        subnet("subnet-00000001", "az-a", "127.1.0.0/16", "fd00:1::/64", 1000),
        subnet("subnet-00000002", "az-a", "127.1.128.0/17", NULL, 40), /* more specific */
        subnet("subnet-00000001", "az-a", "127.1.0.0/16", NULL, 1),    /* repeated id: dropped */
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        assert_int_equal(cmh_subnet_list_push(l, &v[i]), 0);
    cmh_subnet_list_sort(l);
}

static void subnets_map_ip_longest_prefix_and_ids(void **state)
{
    (void)state;
    struct cmh_subnet_list l;
    view(&l);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.v[0].available, 1000); /* the first of a repeated id stays */
    assert_int_equal(cmh_subnet_list_find_id(&l, "subnet-00000002"), 1);
    assert_int_equal(cmh_subnet_list_find_id(&l, "subnet-9"), -1);
    assert_int_equal(cmh_subnets_find_ip(&l, "127.1.1.1"), 0);
    assert_int_equal(cmh_subnets_find_ip(&l, "127.1.200.1"), 1);
    assert_int_equal(cmh_subnets_find_ip(&l, "127.2.0.9"), 2);
    assert_int_equal(cmh_subnets_find_ip(&l, "fd00:1::5"), 0);
    assert_int_equal(cmh_subnets_find_ip(&l, "127.3.0.1"), -1);
    assert_int_equal(cmh_subnets_find_ip(&l, "fd00:2::5"), -1);
    cmh_subnet_list_free(&l);
}

/* A node's gauges through the aggregator's own entry point, as a parser would deliver them. */
static void commit(struct cmh_agg *a, const char *node, double assigned, double total, double max)
{
    struct cmh_agg_scrape s;
    assert_int_equal(cmh_agg_scrape_init(&s, 64), 0);
    const struct {
        const char *family;
        double v;
    } g[] = {{"awscni_assigned_ip_addresses", assigned},
             {"awscni_total_ip_addresses", total},
             {"awscni_ip_max", max}};
    for (size_t i = 0; i < 3; i++) {
        struct cmh_prom_sample x = {0};
        x.family = x.name = g[i].family;
        x.family_len = x.name_len = strlen(g[i].family);
        x.value = g[i].v;
        assert_int_equal(cmh_agg_on_sample(&s, &x), 0);
    }
    assert_int_equal(cmh_agg_commit(a, node, &s), 0);
    cmh_agg_scrape_close(&s);
}

static const struct cmh_datum *find(const struct cmh_agg *a, const char *metric, const char *dim,
                                    const char *value)
{
    const struct cmh_datum *hit = NULL;
    for (size_t i = 0; i < a->datums.n; i++) {
        const struct cmh_datum *d = &a->datums.v[i];
        if (strcmp(d->metric, metric) != 0)
            continue;
        if (dim == NULL ? d->ndims != 1
                        : d->ndims != 2 || strcmp(d->dims[1].name, dim) != 0 ||
                              strcmp(d->dims[1].value, value) != 0)
            continue;
        if (hit != NULL)
            fail_msg("%s %s=%s twice in one round", metric, dim ? dim : "", value ? value : "");
        hit = d;
    }
    return hit;
}

static double val(const struct cmh_agg *a, const char *metric, const char *dim, const char *value)
{
    const struct cmh_datum *d = find(a, metric, dim, value);
    if (d == NULL)
        fail_msg("no %s %s=%s", metric, dim ? dim : "", value ? value : "");
    assert_string_equal(d->dims[0].name, "CLUSTER_ID");
    assert_string_equal(d->dims[0].value, "c1");
    return d->value;
}

static size_t count(const struct cmh_agg *a, const char *metric, const char *dim)
{
    size_t n = 0;
    for (size_t i = 0; i < a->datums.n; i++)
        n += strcmp(a->datums.v[i].metric, metric) == 0 && a->datums.v[i].ndims == 2 &&
             strcmp(a->datums.v[i].dims[1].name, dim) == 0;
    return n;
}

static const struct cmh_subnets_node targets[] = {
    {"n1", "127.1.0.10"},   /* subnet 1, az-a */
    {"n2", "127.1.200.10"}, /* subnet 2, az-a */
    {"n3", "127.2.0.10"},   /* subnet 3, az-b */
    {"n4", "127.9.0.10"},   /* no subnet: unknown */
    {"n5", "127.2.0.11"},   /* az-b, its scrape fails in round 2 */
};

static void round_of(struct cmh_agg *a, uint64_t r, int fail_n5)
{
    cmh_agg_round_begin(a, r, 1700000000000 + (int64_t)r * 60000);
    commit(a, "n1", 10, 20, 30);
    commit(a, "n2", 25, 28, 29);
    commit(a, "n3", 5, 14, 58);
    commit(a, "n4", 1, 2, 10);
    if (fail_n5)
        assert_int_equal(cmh_agg_fail(a, "n5"), 0);
    else
        commit(a, "n5", 7, 9, 11);
    assert_int_equal(cmh_agg_round_finish(a), 0);
}

static void subnets_round_datums_equal_hand_sums(void **state)
{
    (void)state;
    struct cmh_agg a;
    struct cmh_agg_opts ao = {.stale_rounds = 0, .max_series = 64, .cluster_id = "c1"};
    assert_int_equal(cmh_agg_init(&a, &ao), 0);
    struct cmh_subnet_list l;
    view(&l);
    struct cmh_subnets_opts o = {.per_az = 1, .per_node = 1, .per_node_max = 2};

    round_of(&a, 1, 0);
    /* Always: min over fresh nodes of max - assigned = n2's 29 - 25. */
    assert_true(val(&a, "minNodeAvailableIPAddresses", NULL, NULL) == 4);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_true(val(&a, "subnetAvailableIPAddresses", "SubnetId", "subnet-00000001") == 1000);
    assert_true(val(&a, "subnetAvailableIPAddresses", "SubnetId", "subnet-00000002") == 40);
    assert_true(val(&a, "subnetAvailableIPAddresses", "SubnetId", "subnet-00000003") == 500);
    assert_true(val(&a, "subnetAvailableIPAddresses", "AvailabilityZone", "az-a") == 1040);
    assert_true(val(&a, "subnetAvailableIPAddresses", "AvailabilityZone", "az-b") == 500);
    assert_int_equal(count(&a, "subnetAvailableIPAddresses", "AvailabilityZone"), 2);
    assert_true(val(&a, "clusterMinSubnetAvailableIPAddresses", NULL, NULL) == 40);
    /* Size and fullness: a /16 holds 65536 - 5 usable addresses, a /17 32768 - 5. */
    assert_true(val(&a, "subnetTotalIPAddresses", "SubnetId", "subnet-00000001") == 65531);
    assert_true(val(&a, "subnetTotalIPAddresses", "SubnetId", "subnet-00000002") == 32763);
    assert_true(val(&a, "subnetTotalIPAddresses", "AvailabilityZone", "az-a") == 65531 + 32763);
    assert_true(val(&a, "subnetTotalIPAddresses", "AvailabilityZone", "az-b") == 65531);
    assert_true(val(&a, "subnetIPUtilization", "SubnetId", "subnet-00000002") ==
                100.0 * (32763 - 40) / 32763);
    assert_true(val(&a, "subnetIPUtilization", "AvailabilityZone", "az-a") ==
                100.0 * (65531 + 32763 - 1040) / (65531 + 32763));
    /* The fullest subnet is the /17 with 40 free, not the /16 with 500. */
    assert_true(val(&a, "clusterMaxSubnetIPUtilization", NULL, NULL) ==
                100.0 * (32763 - 40) / 32763);
    /* Per AZ: az-a = n1 + n2, az-b = n3 + n5, unknown = n4. */
    assert_true(val(&a, "assignIPAddresses", "AvailabilityZone", "az-a") == 35);
    assert_true(val(&a, "totalIPAddresses", "AvailabilityZone", "az-a") == 48);
    assert_true(val(&a, "maxIPAddresses", "AvailabilityZone", "az-a") == 59);
    assert_true(val(&a, "availableIPAddresses", "AvailabilityZone", "az-a") == 13);
    assert_true(val(&a, "assignIPAddresses", "AvailabilityZone", "az-b") == 12);
    assert_true(val(&a, "maxIPAddresses", "AvailabilityZone", "az-b") == 69);
    assert_true(val(&a, "assignIPAddresses", "AvailabilityZone", "unknown") == 1);
    /* The per-AZ parts add up to the cluster total. */
    assert_true(val(&a, "assignIPAddresses", NULL, NULL) == 35 + 12 + 1);
    /* Per node: the cap of 2 keeps the least headroom: n2 (4), n5 (4), not n4 (9). */
    assert_int_equal(count(&a, "assignIPAddresses", "NodeName"), 2);
    assert_true(val(&a, "assignIPAddresses", "NodeName", "n2") == 25);
    assert_true(val(&a, "availableIPAddresses", "NodeName", "n5") == 2);
    assert_null(find(&a, "assignIPAddresses", "NodeName", "n4"));

    /* Round 2: n5 fails with no stale rounds allowed, so it leaves az-b and the per-node list. */
    round_of(&a, 2, 1);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_true(val(&a, "assignIPAddresses", "AvailabilityZone", "az-b") == 5);
    assert_true(val(&a, "assignIPAddresses", "NodeName", "n4") == 1);
    assert_null(find(&a, "assignIPAddresses", "NodeName", "n5"));

    /* A drained subnet is the new minimum. */
    l.v[2].available = 0;
    round_of(&a, 3, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_true(val(&a, "clusterMinSubnetAvailableIPAddresses", NULL, NULL) == 0);
    assert_true(val(&a, "clusterMaxSubnetIPUtilization", NULL, NULL) == 100);
    assert_true(val(&a, "subnetIPUtilization", "SubnetId", "subnet-00000003") == 100);

    /* No view (stale or not fetched yet): no subnet or AZ datums, per node still. */
    round_of(&a, 4, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, NULL, targets, 5, &o), 0);
    assert_null(find(&a, "clusterMinSubnetAvailableIPAddresses", NULL, NULL));
    assert_null(find(&a, "clusterMaxSubnetIPUtilization", NULL, NULL));
    assert_int_equal(count(&a, "subnetIPUtilization", "SubnetId"), 0);
    assert_int_equal(count(&a, "assignIPAddresses", "AvailabilityZone"), 0);
    assert_int_equal(count(&a, "assignIPAddresses", "NodeName"), 2);

    /* Defaults: nothing per AZ or per node. */
    struct cmh_subnets_opts off = {0};
    round_of(&a, 5, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &off), 0);
    assert_int_equal(count(&a, "assignIPAddresses", "AvailabilityZone"), 0);
    assert_int_equal(count(&a, "assignIPAddresses", "NodeName"), 0);
    assert_int_equal(count(&a, "subnetAvailableIPAddresses", "SubnetId"), 3);

    cmh_subnet_list_free(&l);
    cmh_agg_close(&a);
}

/* Usable addresses per block size, and the subnets whose size is unknown (IPv6 only) left out of
 * the size and fullness datums while their free IPs still count. */
static void subnets_size_and_utilization_of_small_and_ipv6_only_subnets(void **state)
{
    (void)state;
    const struct {
        const char *v4;
        int64_t usable;
    } sizes[] = {{"127.5.0.0/28", 11},
                 {"127.5.0.0/29", 3},
                 {"127.5.0.0/30", 0},
                 {"127.5.0.0/32", 0},
                 {"127.0.0.0/8", 16777211}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct cmh_subnet s = subnet("subnet-0000000a", "az-a", sizes[i].v4, NULL, 0);
        assert_int_equal(cmh_subnet_usable_ipv4(&s), sizes[i].usable);
    }
    struct cmh_subnet v6only = subnet("subnet-0000000b", "az-a", NULL, "fd00:5::/64", 7);
    assert_int_equal(cmh_subnet_usable_ipv4(&v6only), 0);

    struct cmh_agg a;
    struct cmh_agg_opts ao = {.stale_rounds = 0, .max_series = 64, .cluster_id = "c1"};
    assert_int_equal(cmh_agg_init(&a, &ao), 0);
    struct cmh_subnet_list l = {0};
    struct cmh_subnet small = subnet("subnet-0000000a", "az-a", "127.5.0.0/28", NULL, 2);
    assert_int_equal(cmh_subnet_list_push(&l, &small), 0);
    assert_int_equal(cmh_subnet_list_push(&l, &v6only), 0);
    cmh_subnet_list_sort(&l);
    struct cmh_subnets_opts o = {0};
    round_of(&a, 1, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_true(val(&a, "subnetTotalIPAddresses", "SubnetId", "subnet-0000000a") == 11);
    assert_true(val(&a, "subnetIPUtilization", "SubnetId", "subnet-0000000a") == 100.0 * 9 / 11);
    assert_null(find(&a, "subnetTotalIPAddresses", "SubnetId", "subnet-0000000b"));
    assert_null(find(&a, "subnetIPUtilization", "SubnetId", "subnet-0000000b"));
    assert_true(val(&a, "subnetAvailableIPAddresses", "AvailabilityZone", "az-a") == 9);
    assert_true(val(&a, "subnetIPUtilization", "AvailabilityZone", "az-a") == 100.0 * 9 / 11);
    assert_true(val(&a, "clusterMaxSubnetIPUtilization", NULL, NULL) == 100.0 * 9 / 11);
    assert_true(val(&a, "clusterMinSubnetAvailableIPAddresses", NULL, NULL) == 2);
    cmh_subnet_list_free(&l);
    cmh_agg_close(&a);
}

/* Time to exhaustion and free /28 blocks: only subnets with a forecast, the soonest per AZ with
 * CW_PER_AZ, the soonest overall; nothing at all when no subnet has one. */
static void subnets_forecast_datums_min_per_az_and_cluster(void **state)
{
    (void)state;
    struct cmh_agg a;
    struct cmh_agg_opts ao = {.stale_rounds = 0, .max_series = 64, .cluster_id = "c1"};
    assert_int_equal(cmh_agg_init(&a, &ao), 0);
    struct cmh_subnet_list l;
    view(&l);
    struct cmh_subnets_opts o = {.per_az = 1};
    /* None has a forecast yet (the window is filling). */
    round_of(&a, 1, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_null(find(&a, "clusterMinTimeToIPExhaustion", NULL, NULL));
    assert_int_equal(count(&a, "subnetTimeToIPExhaustion", "SubnetId"), 0);
    /* Subnets 1 and 2 (az-a) have one, 3 (az-b) not; 2 has free /28 blocks counted. */
    l.v[0].has_tte = 1;
    l.v[0].tte_s = 5000;
    l.v[1].has_tte = 1;
    l.v[1].tte_s = 1200;
    l.v[1].has_free_prefixes = 1;
    l.v[1].free_prefixes = 0;
    l.v[1].has_prefix_tte = 1;
    l.v[1].prefix_tte_s = 0;
    round_of(&a, 2, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &o), 0);
    assert_true(val(&a, "subnetTimeToIPExhaustion", "SubnetId", "subnet-00000001") == 5000);
    assert_true(val(&a, "subnetTimeToIPExhaustion", "SubnetId", "subnet-00000002") == 1200);
    assert_null(find(&a, "subnetTimeToIPExhaustion", "SubnetId", "subnet-00000003"));
    assert_true(val(&a, "subnetTimeToIPExhaustion", "AvailabilityZone", "az-a") == 1200);
    assert_null(find(&a, "subnetTimeToIPExhaustion", "AvailabilityZone", "az-b"));
    assert_true(val(&a, "clusterMinTimeToIPExhaustion", NULL, NULL) == 1200);
    assert_true(val(&a, "subnetFreeIPv4Prefixes", "SubnetId", "subnet-00000002") == 0);
    assert_true(val(&a, "subnetTimeToPrefixExhaustion", "SubnetId", "subnet-00000002") == 0);
    assert_int_equal(count(&a, "subnetFreeIPv4Prefixes", "SubnetId"), 1);
    assert_string_equal(find(&a, "subnetTimeToIPExhaustion", "SubnetId", "subnet-00000001")->unit,
                        "Seconds");
    /* Without CW_PER_AZ: no AZ value, the rest the same. */
    struct cmh_subnets_opts off = {0};
    round_of(&a, 3, 0);
    assert_int_equal(cmh_subnets_round_datums(&a, &l, targets, 5, &off), 0);
    assert_int_equal(count(&a, "subnetTimeToIPExhaustion", "AvailabilityZone"), 0);
    assert_int_equal(count(&a, "subnetTimeToIPExhaustion", "SubnetId"), 2);
    assert_true(val(&a, "clusterMinTimeToIPExhaustion", NULL, NULL) == 1200);
    cmh_subnet_list_free(&l);
    cmh_agg_close(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(subnets_cidr_parse_and_contains),
        cmocka_unit_test(subnets_map_ip_longest_prefix_and_ids),
        cmocka_unit_test(subnets_round_datums_equal_hand_sums),
        cmocka_unit_test(subnets_size_and_utilization_of_small_and_ipv6_only_subnets),
        cmocka_unit_test(subnets_forecast_datums_min_per_az_and_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
