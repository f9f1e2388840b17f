#include "cmh/round/metrics.h"

#include <string.h>

#define COUNT "Count"
#define PER_AZ_NODE                                                                                \
    "{CLUSTER_ID, AvailabilityZone} with CW_PER_AZ=true and SUBNET_METRICS=true; "                 \
    "{CLUSTER_ID, NodeName} with CW_PER_NODE=true (at most CW_PER_NODE_MAX nodes, nearest to "     \
    "exhaustion first)"

/* Names and meanings of the original helper's 20 metrics are kept; new metrics have new names.
 * When they are published: a gauge in every round in which a counted node (fresh, or stale within
 * STALE_ROUNDS) has its family; a counter in every round from the second on in which at least one
 * node answered, 0 when no node has the family (client_golang creates a labelled series at its
 * first increment, and awscni_no_available_ip_addresses may be absent on a healthy node); the
 * latency statistic set only in a round with calls; derived metrics as their meaning says. */
const struct cmh_metric cmh_metrics[CMH_M_COUNT] = {
    [CMH_M_ADD_IP_REQ] = {"awscni_add_ip_req_count", "addReqCount", CMH_METRIC_COUNTER, COUNT,
                          "Add-IP requests from the CNI plugin (pod creations) in the round.",
                          "add_ip_requests"},
    [CMH_M_ASSIGNED_IP] = {"awscni_assigned_ip_addresses", "assignIPAddresses",
                           CMH_METRIC_GAUGE_SUM, COUNT, "IP addresses assigned to pods.",
                           "assigned_ip_addresses"},
    [CMH_M_ASSIGNED_IP_PER_CIDR] = {"awscni_assigned_ip_per_cidr", "totalAssignedIPv4sPerCidr",
                                    CMH_METRIC_GAUGE_SUM, COUNT,
                                    "IPs assigned to pods, summed over every CIDR (prefix mode).",
                                    "assigned_ips_in_cidrs"},
    [CMH_M_ASSIGNED_IP_PER_ENI] = {"awscni_assigned_ip_per_eni", NULL, CMH_METRIC_IGNORED, NULL,
                                   "Per-ENI split of assignIPAddresses: its cluster sum is "
                                   "assignIPAddresses, and ENI ids are not useful dimensions.",
                                   NULL},
    [CMH_M_AWS_API_ERR] = {"awscni_aws_api_error_count", "awsAPIErr", CMH_METRIC_COUNTER, COUNT,
                           "AWS API calls by ipamD that returned an error, in the round.",
                           "aws_api_errors"},
    [CMH_M_AWS_API_LATENCY] = {"awscni_aws_api_latency_ms", "awsAPILatency", CMH_METRIC_LATENCY,
                               "Milliseconds",
                               "Latency of ipamD's AWS API calls in the round, as a statistic "
                               "set: SampleCount and Sum over the cluster (Average is the true "
                               "mean), Min/Max over nodes of each node's mean (or quantiles, when "
                               "a node exposes them).",
                               "aws_api_latency_seconds"},
    [CMH_M_AWS_UTILS_ERR] = {"awscni_aws_utils_error_count", "awsUtilErr", CMH_METRIC_COUNTER,
                             COUNT, "Errors not handled in ipamD's awsutils library, in the round.",
                             "aws_utils_errors"},
    [CMH_M_BUILD_INFO] = {"awscni_build_info", NULL, CMH_METRIC_IGNORED, NULL,
                          "Version information (constant 1); not a quantity.", NULL},
    [CMH_M_CONNMARK_BACKEND] = {"awscni_connmark_backend", NULL, CMH_METRIC_IGNORED, NULL,
                                "Which connmark backend a node uses (constant 1); not a quantity.",
                                NULL},
    [CMH_M_CONNMARK_RECONCILE] = {"awscni_connmark_reconcile_total", NULL, CMH_METRIC_IGNORED, NULL,
                                  "Node-local iptables/nftables bookkeeping; not an IP-capacity "
                                  "signal.",
                                  NULL},
    [CMH_M_DEL_IP_REQ] = {"awscni_del_ip_req_count", "delReqCount", CMH_METRIC_COUNTER, COUNT,
                          "Delete-IP requests (pod deletions), all reasons, in the round.",
                          "del_ip_requests"},
    [CMH_M_EC2API_ERR] = {"awscni_ec2api_error_count", "ec2ApiErrCount", CMH_METRIC_COUNTER, COUNT,
                          "Failed EC2 API requests by ipamD, in the round.", "ec2_api_errors"},
    [CMH_M_EC2API_REQ] = {"awscni_ec2api_req_count", "ec2ApiReqCount", CMH_METRIC_COUNTER, COUNT,
                          "EC2 API requests by ipamD, in the round.", "ec2_api_requests"},
    [CMH_M_ENI_ALLOCATED] = {"awscni_eni_allocated", "eniAllocated", CMH_METRIC_GAUGE_SUM, COUNT,
                             "ENIs allocated.", "enis_allocated"},
    [CMH_M_ENI_MAX] = {"awscni_eni_max", "eniMaxAvailable", CMH_METRIC_GAUGE_SUM, COUNT,
                       "ENIs the nodes can attach (the cluster's ENI capacity).", "enis_max"},
    [CMH_M_FORCE_REMOVED_ENIS] = {"awscni_force_removed_enis", "forceRemoveENI", CMH_METRIC_COUNTER,
                                  COUNT,
                                  "ENIs force-removed while they had assigned pods, in the round.",
                                  "force_removed_enis"},
    [CMH_M_FORCE_REMOVED_IPS] = {"awscni_force_removed_ips", "forceRemoveIPs", CMH_METRIC_COUNTER,
                                 COUNT,
                                 "IPs force-removed while they had assigned pods, in the round.",
                                 "force_removed_ips"},
    [CMH_M_IP_MAX] = {"awscni_ip_max", "maxIPAddresses", CMH_METRIC_GAUGE_SUM, COUNT,
                      "IP addresses the nodes can hold (the cluster's IP capacity).",
                      "max_ip_addresses"},
    [CMH_M_IPAMD_ACTION_INPROGRESS] = {"awscni_ipamd_action_inprogress", "ipamdActionInProgress",
                                       CMH_METRIC_GAUGE_SUM, COUNT,
                                       "ipamD actions in progress, all kinds.",
                                       "ipamd_actions_in_progress"},
    [CMH_M_IPAMD_ERR] = {"awscni_ipamd_error_count", "ipamdErr", CMH_METRIC_COUNTER, COUNT,
                         "Errors in ipamD, in the round.", "ipamd_errors"},
    [CMH_M_IPAMD_NODE_INIT] = {"awscni_ipamd_node_initialization_duration_seconds", NULL,
                               CMH_METRIC_IGNORED, NULL,
                               "One-off per-node start-up timing, not a cluster signal.", NULL},
    [CMH_M_IPAMD_STARTUP] = {"awscni_ipamd_startup_duration_seconds", NULL, CMH_METRIC_IGNORED,
                             NULL, "One-off per-node start-up timing, not a cluster signal.", NULL},
    [CMH_M_NO_AVAILABLE_IP] = {"awscni_no_available_ip_addresses", "noAvailableIPAddrs",
                               CMH_METRIC_COUNTER, COUNT,
                               "Pod IP assignments that failed for lack of an IP, in the round.",
                               "no_available_ip_addresses"},
    [CMH_M_POD_ENI_ERR] = {"awscni_pod_eni_error_count", "podENIErr", CMH_METRIC_COUNTER, COUNT,
                           "Errors on pod ENIs (security groups for pods), in the round.",
                           "pod_eni_errors"},
    [CMH_M_RECONCILE] = {"awscni_reconcile_count", "reconcileCount", CMH_METRIC_COUNTER, COUNT,
                         "ipamD reconciliations of ENIs and IPs, in the round.", "reconciles"},
    [CMH_M_TOTAL_IP] = {"awscni_total_ip_addresses", "totalIPAddresses", CMH_METRIC_GAUGE_SUM,
                        COUNT, "IP addresses in the warm pools (assigned or not).",
                        "total_ip_addresses"},
    [CMH_M_TOTAL_IPV4_PREFIXES] = {"awscni_total_ipv4_prefixes", "totalIPv4Prefixes",
                                   CMH_METRIC_GAUGE_SUM, COUNT, "IPv4 prefixes allocated.",
                                   "ipv4_prefixes"},
    [CMH_M_PROCESS_START_TIME] = {"process_start_time_seconds", NULL, CMH_METRIC_START_TIME, NULL,
                                  "Not published: tells a restarted ipamD (counters reset) and a "
                                  "new node whose whole counts fall in the round.",
                                  NULL},
    [CMH_M_AVAILABLE_IP] = {NULL, "availableIPAddresses", CMH_METRIC_DERIVED, COUNT,
                            "totalIPAddresses - assignIPAddresses: the free warm pool.",
                            "available_ip_addresses"},
    [CMH_M_IP_UTILIZATION] = {NULL, "ipUtilization", CMH_METRIC_DERIVED, "Percent",
                              "100 * assignIPAddresses / maxIPAddresses (omitted when max is 0).",
                              "ip_utilization_percent"},
    [CMH_M_NODES_AT_IP_CAPACITY] = {NULL, "nodesAtIPCapacity", CMH_METRIC_DERIVED, COUNT,
                                    "Nodes whose assigned IPs reached their maximum.",
                                    "nodes_at_ip_capacity"},
    [CMH_M_SCRAPE_TARGETS] = {NULL, "scrapeTargets", CMH_METRIC_DERIVED, COUNT,
                              "Nodes the round tried to scrape.", "scrape_targets"},
    [CMH_M_SCRAPE_FRESH] = {NULL, "scrapeTargetsFresh", CMH_METRIC_DERIVED, COUNT,
                            "Nodes whose scrape succeeded in the round.", "scrape_targets_fresh"},
    [CMH_M_SCRAPE_STALE] = {NULL, "scrapeTargetsStale", CMH_METRIC_DERIVED, COUNT,
                            "Failed nodes still counted with their last good gauges "
                            "(for at most STALE_ROUNDS rounds).",
                            "scrape_targets_stale"},
    [CMH_M_SCRAPE_FAILED] = {NULL, "scrapeTargetsFailed", CMH_METRIC_DERIVED, COUNT,
                             "Nodes whose scrape failed in the round (stale ones included).",
                             "scrape_targets_failed"},
    [CMH_M_SUBNET_AVAILABLE_IP] = {NULL, "subnetAvailableIPAddresses", CMH_METRIC_DERIVED, COUNT,
                                   "Free IP addresses of a subnet (EC2 AvailableIpAddressCount), "
                                   "per subnet and summed over the subnets of an AZ; only with "
                                   "SUBNET_METRICS=true, never with {CLUSTER_ID} alone.",
                                   NULL},
    [CMH_M_MIN_SUBNET_AVAILABLE_IP] = {NULL, "clusterMinSubnetAvailableIPAddresses",
                                       CMH_METRIC_DERIVED, COUNT,
                                       "The emptiest subnet: min over the cluster's subnets of "
                                       "AvailableIpAddressCount (SUBNET_METRICS=true).",
                                       "min_subnet_available_ip_addresses"},
    [CMH_M_MIN_NODE_AVAILABLE_IP] = {NULL, "minNodeAvailableIPAddresses", CMH_METRIC_DERIVED, COUNT,
                                     "The node closest to running out: min over fresh nodes of "
                                     "maxIPAddresses - assignIPAddresses.",
                                     "min_node_available_ip_addresses"},
    [CMH_M_SUBNET_TOTAL_IP] = {NULL, "subnetTotalIPAddresses", CMH_METRIC_DERIVED, COUNT,
                               "Usable IPv4 addresses of a subnet: its CIDR block's size less the "
                               "5 AWS reserves, per subnet and summed over an AZ's subnets; only "
                               "with SUBNET_METRICS=true, never with {CLUSTER_ID} alone.",
                               NULL},
    [CMH_M_SUBNET_IP_UTILIZATION] = {NULL, "subnetIPUtilization", CMH_METRIC_DERIVED, "Percent",
                                     "100 * (subnetTotalIPAddresses - subnetAvailableIPAddresses) "
                                     "/ subnetTotalIPAddresses: how full a subnet (or an AZ's "
                                     "subnets together) is; only with SUBNET_METRICS=true, never "
                                     "with {CLUSTER_ID} alone.",
                                     NULL},
    [CMH_M_MAX_SUBNET_IP_UTILIZATION] = {NULL, "clusterMaxSubnetIPUtilization", CMH_METRIC_DERIVED,
                                         "Percent",
                                         "The fullest subnet: max over the cluster's subnets of "
                                         "subnetIPUtilization (SUBNET_METRICS=true).",
                                         "max_subnet_ip_utilization_percent"},
    [CMH_M_SUBNET_TTE] = {NULL, "subnetTimeToIPExhaustion", CMH_METRIC_DERIVED, "Seconds",
                          "Forecast seconds until a subnet's free IPs reach 0 at the rate seen "
                          "over FORECAST_WINDOW; 604800 (7 days) when not declining or further "
                          "(SUBNET_METRICS=true; see docs/forecast.md).",
                          NULL},
    [CMH_M_MIN_TTE] = {NULL, "clusterMinTimeToIPExhaustion", CMH_METRIC_DERIVED, "Seconds",
                       "The soonest subnet: min of subnetTimeToIPExhaustion over the cluster's "
                       "subnets (SUBNET_METRICS=true).",
                       "min_time_to_ip_exhaustion_seconds"},
    [CMH_M_SUBNET_FREE_PREFIXES] = {NULL, "subnetFreeIPv4Prefixes", CMH_METRIC_DERIVED, COUNT,
                                    "Aligned /28 blocks of a subnet with no address in use (by "
                                    "an interface, a prefix or a CIDR reservation): what prefix "
                                    "delegation can still take (SUBNET_PREFIX_METRICS).",
                                    NULL},
    [CMH_M_SUBNET_PREFIX_TTE] = {NULL, "subnetTimeToPrefixExhaustion", CMH_METRIC_DERIVED,
                                 "Seconds",
                                 "Forecast seconds until subnetFreeIPv4Prefixes reaches 0, as "
                                 "subnetTimeToIPExhaustion (SUBNET_PREFIX_METRICS).",
                                 NULL},
};

/* Dimension sets beyond {CLUSTER_ID}, and when they are published. */
// NOLINTBEGIN(bugprone-suspicious-missing-comma): each entry is one sentence split over lines
static const char *const extra_dims[CMH_M_COUNT] = {
    [CMH_M_ASSIGNED_IP] = PER_AZ_NODE,
    [CMH_M_TOTAL_IP] = PER_AZ_NODE,
    [CMH_M_IP_MAX] = PER_AZ_NODE,
    [CMH_M_AVAILABLE_IP] = PER_AZ_NODE,
    [CMH_M_SUBNET_AVAILABLE_IP] = "{CLUSTER_ID, SubnetId} one per subnet; {CLUSTER_ID, "
                                  "AvailabilityZone} the sum over the AZ's subnets "
                                  "(SUBNET_METRICS=true)",
    [CMH_M_SUBNET_TOTAL_IP] = "{CLUSTER_ID, SubnetId} one per subnet with an IPv4 block; "
                              "{CLUSTER_ID, AvailabilityZone} the sum over the AZ's subnets "
                              "(SUBNET_METRICS=true)",
    [CMH_M_SUBNET_IP_UTILIZATION] = "{CLUSTER_ID, SubnetId} one per subnet with an IPv4 block; "
                                    "{CLUSTER_ID, AvailabilityZone} over the AZ's subnets "
                                    "together (SUBNET_METRICS=true)",
    [CMH_M_SUBNET_TTE] =
        "{CLUSTER_ID, SubnetId} one per subnet (SUBNET_METRICS=true); {CLUSTER_ID, "
        "AvailabilityZone} the soonest of the AZ's subnets (and CW_PER_AZ=true)",
    [CMH_M_SUBNET_FREE_PREFIXES] = "{CLUSTER_ID, SubnetId} one per subnet (SUBNET_PREFIX_METRICS)",
    [CMH_M_SUBNET_PREFIX_TTE] = "{CLUSTER_ID, SubnetId} one per subnet (SUBNET_PREFIX_METRICS)",
};
// NOLINTEND(bugprone-suspicious-missing-comma)

int cmh_metric_lookup(const char *name, size_t len)
{
    int lo = 0, hi = CMH_M_FAMILIES - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const char *f = cmh_metrics[mid].family;
        int c = strncmp(f, name, len);
        if (c == 0 && f[len] != '\0')
            c = 1; /* f is longer, so it sorts after name */
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static const char *aggregation(enum cmh_metric_kind kind)
{
    switch (kind) {
    case CMH_METRIC_GAUGE_SUM:
        return "gauge, sum over nodes";
    case CMH_METRIC_COUNTER:
        return "counter, sum of per-node increases (0 when no node has the family)";
    case CMH_METRIC_LATENCY:
        return "statistic set (SampleCount, Sum, Min, Max)";
    case CMH_METRIC_DERIVED:
        return "derived";
    default:
        return "";
    }
}

void cmh_metrics_print_markdown(FILE *out)
{
    fprintf(out, "| CloudWatch metric | Unit | From ipamD | Aggregation | Meaning |\n"
                 "|---|---|---|---|---|\n");
    for (int i = 0; i < CMH_M_COUNT; i++) {
        const struct cmh_metric *m = &cmh_metrics[i];
        if (m->cw_name == NULL)
            continue;
        fprintf(out, "| `%s` | %s | %s%s%s | %s | %s |\n", m->cw_name, m->unit,
                m->family ? "`" : "", m->family ? m->family : "-", m->family ? "`" : "",
                aggregation(m->kind), m->meaning);
    }
    fprintf(out, "\nEvery datum carries the dimension CLUSTER_ID; these metrics are also published "
                 "with more dimensions:\n\n| CloudWatch metric | Dimension sets |\n|---|---|\n");
    for (int i = 0; i < CMH_M_COUNT; i++) {
        const struct cmh_metric *m = &cmh_metrics[i];
        if (m->cw_name != NULL && extra_dims[i] != NULL)
            fprintf(out, "| `%s` | %s |\n", m->cw_name, extra_dims[i]);
    }
    fprintf(out, "\nipamD families deliberately not published:\n\n"
                 "| ipamD family | Why |\n|---|---|\n");
    for (int i = 0; i < CMH_M_COUNT; i++) {
        const struct cmh_metric *m = &cmh_metrics[i];
        if (m->cw_name == NULL)
            fprintf(out, "| `%s` | %s |\n", m->family, m->meaning);
    }
}
