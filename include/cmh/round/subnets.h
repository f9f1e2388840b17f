/* The subnet/AZ view: subnets as EC2 describes them, nodes mapped to them by IP (CIDR match, IPv4
 * and IPv6), and the datums that follow (per subnet, per AZ, per node, the emptiest subnet). Pure:
 * no I/O. Lists are owned by their holder; thread: the loop thread (or any, one list per thread).
 */
#ifndef CMH_SUBNETS_H
#define CMH_SUBNETS_H

#include "cmh/round/aggregate.h"

#include <stddef.h>
#include <stdint.h>

/* One CIDR block: family 4 or 6, the network address in network byte order, the prefix length. */
struct cmh_cidr {
    int family;
    uint8_t addr[16];
    unsigned prefix;
};

/* Parses "a.b.c.d/n" or "v6/n" (host bits must be zero). Returns 0 or -EINVAL. */
int cmh_cidr_parse(const char *s, size_t len, struct cmh_cidr *out);

#define CMH_SUBNET_ID_MAX    64 /* "subnet-" + 17 hex digits is 24; room to spare */
#define CMH_SUBNET_AZ_MAX    64
#define CMH_SUBNET_CIDR_MAX  64 /* "ffff:...:ffff/128" is 43 */
#define CMH_SUBNET_MAX_CIDRS 5  /* the IPv4 block and up to four IPv6 blocks */

/* One subnet: only what the view uses. */
struct cmh_subnet {
    char id[CMH_SUBNET_ID_MAX];
    char az[CMH_SUBNET_AZ_MAX];
    char cidr[CMH_SUBNET_CIDR_MAX]; /* the IPv4 CidrBlock as text ("" when none) */
    struct cmh_cidr cidrs[CMH_SUBNET_MAX_CIDRS];
    unsigned ncidrs;
    int64_t available; /* AvailableIpAddressCount */
    /* The forecast (include/cmh/round/forecast.h), set by the EC2 watch: seconds until available
     * reaches 0, capped at CMH_FORECAST_CAP_S; only when has_tte (enough history, no stale gap). */
    int has_tte;
    double tte_s;
    /* SUBNET_PREFIX_METRICS: aligned /28 blocks with no address in use, and their forecast. */
    int has_free_prefixes, has_prefix_tte;
    int64_t free_prefixes;
    double prefix_tte_s;
};

struct cmh_subnet_list {
    struct cmh_subnet *v;
    size_t n, cap;
};

/* Appends a copy of s. Returns 0 or -ENOMEM. */
int cmh_subnet_list_push(struct cmh_subnet_list *l, const struct cmh_subnet *s);
void cmh_subnet_list_free(struct cmh_subnet_list *l);
/* Sorts by subnet id and drops repeated ids (the first stays). */
void cmh_subnet_list_sort(struct cmh_subnet_list *l);
/* The index of the subnet with this id, or -1 (the list must be sorted). */
long cmh_subnet_list_find_id(const struct cmh_subnet_list *l, const char *id);

/* The subnet holding ip (the longest matching prefix wins), or -1. */
long cmh_subnets_find_ip(const struct cmh_subnet_list *l, const char *ip);

/* One scrape target as the round knew it: node name (the aggregator's identity) and its IP. */
struct cmh_subnets_node {
    const char *name;
    const char *ip;
};

struct cmh_subnets_opts {
    int per_az;          /* CW_PER_AZ: the IP gauges per AvailabilityZone */
    int per_node;        /* CW_PER_NODE: the IP gauges per NodeName */
    size_t per_node_max; /* CW_PER_NODE_MAX */
};

/* The AvailabilityZone dimension value of nodes whose subnet is not in the view. */
#define CMH_SUBNETS_AZ_UNKNOWN "unknown"

/* Appends the round's extra datums to a->datums, after cmh_agg_round_finish: with view (not NULL)
 * subnetAvailableIPAddresses per subnet and per AZ, clusterMinSubnetAvailableIPAddresses, for
 * subnets with an IPv4 block subnetTotalIPAddresses and subnetIPUtilization per subnet and per AZ
 * and clusterMaxSubnetIPUtilization, the forecast of the subnets that have one
 * (subnetTimeToIPExhaustion per subnet and, with o->per_az, the soonest of its subnets per AZ;
 * clusterMinTimeToIPExhaustion) and their free /28 blocks, and
 * with o->per_az the four IP gauges per AZ (nodes mapped by IP through nodes[0..n), unknown ones
 * under "unknown"); with o->per_node the four IP gauges per node for at most o->per_node_max fresh
 * nodes, the least headroom (max - assigned) first. Strings stay borrowed from view and a (valid
 * until the next round finishes and the view is replaced). Returns 0 or -ENOMEM. */
int cmh_subnets_round_datums(struct cmh_agg *a, const struct cmh_subnet_list *view,
                             const struct cmh_subnets_node *nodes, size_t n,
                             const struct cmh_subnets_opts *o);

#endif
