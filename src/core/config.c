#include "cmh/core/config.h"
#include "cmh/core/config_int.h"

#include "cmh/core/alloc.h"
#include "cmh/core/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIELD(f) offsetof(struct cmh_config, f)
#define SEC      1000ull

/* "fatal" is accepted for compatibility with the original helper and logs as "error". */
static const char *const log_levels[] = {"debug", "info", "warn", "error", "fatal", NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const cw_resolutions[] = {"60", "1", NULL};
static const char *const scrape_modes[] = {"auto", "direct", "proxy", NULL};
static const char *const prefix_metrics[] = {"auto", "true", "false", NULL};

/* The one source of truth for configuration. Keep names compatible with the original helper. */
const struct cmh_config_var cmh_config_vars[] = {
    {"USE_CLOUDWATCH", CMH_CFG_BOOL, FIELD(use_cloudwatch), "true", 0, 0, NULL, 0,
     "Publish the cluster metrics to CloudWatch. With no, every datum of a round is logged "
     "instead."},
    {"USE_PROMETHEUS", CMH_CFG_BOOL, FIELD(use_prometheus), "false", 0, 0, NULL, 0,
     "Serve the cluster aggregates and self-metrics on our own /metrics (PROMETHEUS_PORT)."},
    {"PROMETHEUS_ORIGINAL_NAMES", CMH_CFG_BOOL, FIELD(prometheus_original_names), "false", 0, 0,
     NULL, 0,
     "Also serve the six cluster gauges under the names AWS's helper used with USE_PROMETHEUS "
     "(awscni_assigned_ip_addresses... without labels), for dashboards built on it. Off by "
     "default: a Prometheus that also scrapes ipamD would mix them with the per-node series."},
    {"METRIC_UPDATE_INTERVAL", CMH_CFG_DURATION, FIELD(interval_ms), "30", 1 * SEC, 3600 * SEC,
     NULL, 0, "Time between scrape rounds; bare numbers are seconds."},
    {"AWS_REGION", CMH_CFG_STR, FIELD(aws_region), NULL, 0, 0, NULL, CMH_CFG_REGION,
     "AWS region of the CloudWatch endpoint. Unset: AWS_DEFAULT_REGION, then the node's "
     "spec.providerID (NODE_NAME), then instance metadata."},
    {"AWS_CLUSTER_ID", CMH_CFG_STR, FIELD(cluster_id), NULL, 0, 0, NULL, 0,
     "Value of the CLUSTER_ID dimension on every datum."},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", CMH_CFG_ENUM, FIELD(log_level), "info", 0, 0, log_levels, 0,
     "Lowest level logged (any case); fatal, as the original accepted, logs errors only."},
    {"LOG_FORMAT", CMH_CFG_ENUM, FIELD(log_format), "text", 0, 0, log_formats, 0,
     "Log lines as logfmt text or as one JSON object each."},
    {"HTTP_TIMEOUT", CMH_CFG_DURATION, FIELD(http_timeout_ms), "10", 1 * SEC, 300 * SEC, NULL, 0,
     "Timeout of one HTTPS request to AWS (CloudWatch, STS, IMDS, EC2); bare numbers are seconds. "
     "Kubernetes requests have their own: a pod list page 30 s, a watch its K8S_WATCH_TIMEOUT "
     "plus a grace, a Lease request half the renew deadline."},
    {"AWS_CA_BUNDLE", CMH_CFG_STR, FIELD(aws_ca_bundle), NULL, 0, 0, NULL, CMH_CFG_READABLE,
     "PEM bundle trusted for AWS HTTPS endpoints (CloudWatch, STS, EC2) instead of the system "
     "store, as in the AWS SDKs (a TLS-inspecting proxy, a private endpoint's CA). Kubernetes "
     "keeps K8S_CA_FILE."},
    {"SCRAPE_TARGETS", CMH_CFG_TARGETS, FIELD(targets), NULL, 0, 0, NULL, 0,
     "Static targets, comma-separated `name=host:port`, `host:port` or `host` (port "
     "IPAMD_METRICS_PORT); IPv6 as `[addr]:port`. Set: Kubernetes discovery is off."},
    {"IPAMD_METRICS_PORT", CMH_CFG_UINT, FIELD(ipamd_port), "61678", 1, 65535, NULL, 0,
     "Port of ipamD's metrics endpoint on every node."},
    {"PROMETHEUS_PORT", CMH_CFG_UINT, FIELD(prometheus_port), "61681", 0, 65535, NULL, 0,
     "Port of our own HTTP server (/metrics, /healthz, /readyz); 0 picks a free port (logged)."},
    {"SHUTDOWN_TIMEOUT", CMH_CFG_DURATION, FIELD(shutdown_timeout_ms), "10", 0, 300 * SEC, NULL, 0,
     "On SIGTERM/SIGINT, how long in-flight work may take to finish before exit."},
    {"PROMETHEUS_ADDRESS", CMH_CFG_STR, FIELD(prometheus_address), "::", 0, 0, NULL, 0,
     "Address our HTTP server listens on. The default, ::, is every address, IPv4 and IPv6 "
     "(0.0.0.0 "
     "where the host has no IPv6): the kubelet's probes reach the pod IP, kubectl port-forward "
     "localhost."},
    {"STALE_ROUNDS", CMH_CFG_UINT, FIELD(stale_rounds), "2", 0, 100, NULL, 0,
     "Rounds a node whose scrape fails keeps contributing its last good gauges before it drops "
     "out."},
    {"PROM_MAX_LINE", CMH_CFG_BYTES, FIELD(prom_max_line), "64KiB", 256, 16u << 20, NULL, 0,
     "Longest line accepted in a node's /metrics body; a longer one fails that scrape."},
    {"SCRAPE_CONCURRENCY", CMH_CFG_UINT, FIELD(scrape_concurrency), "1000", 1, 100000, NULL, 0,
     "Most ipamD connections open at once (scraping and idle keep-alive together); capped at the "
     "open-file limit."},
    {"SCRAPE_MAX_NODES", CMH_CFG_UINT, FIELD(scrape_max_nodes), "100000", 1, 1000000, NULL, 0,
     "Most nodes scraped: aws-node pods beyond it are not kept (a warning says how many; /readyz "
     "says degraded), more SCRAPE_TARGETS are a configuration error. Bounds memory."},
    {"SCRAPE_TIMEOUT", CMH_CFG_DURATION, FIELD(scrape_timeout_ms), "5", 10, 300 * SEC, NULL, 0,
     "Deadline of one scrape, from connect to the last body byte."},
    {"SCRAPE_ROUND_TIMEOUT", CMH_CFG_DURATION, FIELD(scrape_round_timeout_ms), "0", 0, 3600 * SEC,
     NULL, 0,
     "Deadline of a whole scrape round; 0 means 80% of METRIC_UPDATE_INTERVAL. Always kept "
     "shorter than the interval so rounds never overlap."},
    {"SCRAPE_MAX_BODY", CMH_CFG_BYTES, FIELD(scrape_max_body), "4MiB", 1024, 1024ull << 20, NULL, 0,
     "Largest /metrics body accepted from one node; a bigger one fails as body too large."},
    {"SCRAPE_JITTER", CMH_CFG_DURATION, FIELD(scrape_jitter_ms), "1", 0, 60 * SEC, NULL, 0,
     "Scrape starts of a round are spread evenly, in a random order, over this window (at most "
     "half the round deadline)."},
    {"SCRAPE_KEEPALIVE", CMH_CFG_BOOL, FIELD(scrape_keepalive), "true", 0, 0, NULL, 0,
     "Keep idle ipamD connections open for the next round (within SCRAPE_CONCURRENCY); ipamD "
     "closes them after 5s, so this only helps at short intervals."},
    {"SCRAPE_GZIP", CMH_CFG_BOOL, FIELD(scrape_gzip), "true", 0, 0, NULL, 0,
     "Ask nodes for gzip bodies (Accept-Encoding: gzip; ipamD's 13-15 KB scrape travels as about "
     "3 KB). A gzip body is inflated as it streams, and its inflated size is bounded by "
     "SCRAPE_MAX_BODY too."},
    {"SCRAPE_MODE", CMH_CFG_ENUM, FIELD(scrape_mode), "auto", 0, 0, scrape_modes, 0,
     "How discovered nodes are reached: direct (hostIP:IPAMD_METRICS_PORT), proxy (through the "
     "API server's pods/proxy, one HTTP/2 connection), or auto (direct; a node whose connect fails "
     "falls back to the proxy). Static SCRAPE_TARGETS are always direct."},
    {"SCRAPE_DIRECT_RECHECK", CMH_CFG_DURATION, FIELD(scrape_direct_recheck_ms), "10m", 1 * SEC,
     24 * 3600 * SEC, NULL, 0,
     "SCRAPE_MODE=auto: how often a node that fell back to the proxy is tried directly again."},
    {"CW_NAMESPACE", CMH_CFG_STR, FIELD(cw_namespace), "Kubernetes", 0, 0, NULL, 0,
     "CloudWatch namespace of every datum (1-255 printable ASCII characters, not `AWS/...`)."},
    {"CW_STORAGE_RESOLUTION", CMH_CFG_ENUM, FIELD(cw_storage_resolution), "60", 0, 0,
     cw_resolutions, 0, "CloudWatch storage resolution in seconds: 60 (standard) or 1 (high)."},
    {"CW_BUFFER_MAX_DATUMS", CMH_CFG_UINT, FIELD(cw_buffer_max_datums), "100000", 1000, 10000000,
     NULL, 0,
     "Most datums waiting for CloudWatch; when full the oldest is dropped (counted as overflow)."},
    {"CW_MAX_ATTEMPTS", CMH_CFG_UINT, FIELD(cw_max_attempts), "5", 1, 20, NULL, 0,
     "Attempts of one PutMetricData batch before it goes back to the queue for a later round."},
    {"CW_MAX_AGE", CMH_CFG_DURATION, FIELD(cw_max_age_ms), "60m", 10 * SEC, 24 * 3600 * SEC, NULL,
     0,
     "Datums older than this (by their timestamp) are dropped instead of sent (counted as age)."},
    {"CW_BACKOFF_BASE", CMH_CFG_DURATION, FIELD(cw_backoff_base_ms), "200ms", 10, 60 * SEC, NULL, 0,
     "Base of the full-jitter exponential backoff between CloudWatch attempts."},
    {"CW_BACKOFF_CAP", CMH_CFG_DURATION, FIELD(cw_backoff_cap_ms), "20", 100, 600 * SEC, NULL, 0,
     "Longest backoff wait between CloudWatch attempts (a Retry-After hint may be longer)."},
    {"SUBNET_METRICS", CMH_CFG_BOOL, FIELD(subnet_metrics), "false", 0, 0, NULL, 0,
     "Publish free IPs per subnet and per AZ (EC2 DescribeSubnets; needs ec2:DescribeSubnets)."},
    {"SUBNET_METRICS_INTERVAL", CMH_CFG_DURATION, FIELD(subnet_interval_ms), "300", 10 * SEC,
     24 * 3600 * SEC, NULL, 0,
     "Time between DescribeSubnets calls; a view older than 3 intervals is not published."},
    {"SUBNET_IDS", CMH_CFG_STR, FIELD(subnet_ids), NULL, 0, 0, NULL, CMH_CFG_SUBNETS,
     "Comma-separated subnet ids to watch (ENIConfigs are then not read; an id EC2 does not know "
     "is left out and logged). Unset: the subnets holding a node's IP plus those named by "
     "ENIConfig resources."},
    {"FORECAST_WINDOW", CMH_CFG_DURATION, FIELD(forecast_window_ms), "30m", 30 * SEC,
     24 * 3600 * SEC, NULL, 0,
     "With SUBNET_METRICS: the history the time to exhaustion is estimated from (subnet view "
     "fetches over this window; nothing is published until it is full, see docs/forecast.md)."},
    {"SUBNET_PREFIX_METRICS", CMH_CFG_ENUM, FIELD(subnet_prefix_metrics), "auto", 0, 0,
     prefix_metrics, 0,
     "With SUBNET_METRICS: count free aligned /28 blocks per subnet for prefix delegation (EC2 "
     "DescribeNetworkInterfaces and GetSubnetCidrReservations; needs both permissions). auto: "
     "from the first round in which a node reports awscni_total_ipv4_prefixes > 0, and a denied "
     "call stops the count (logged once, /readyz says degraded); true: always; false: never."},
    {"SUBNET_PREFIX_INTERVAL", CMH_CFG_DURATION, FIELD(subnet_prefix_interval_ms), "15m", 10 * SEC,
     24 * 3600 * SEC, NULL, 0,
     "Time between the per-subnet DescribeNetworkInterfaces walks of SUBNET_PREFIX_METRICS (kept "
     "slow: they share the account's EC2 throttle with ipamD)."},
    {"CW_PER_AZ", CMH_CFG_BOOL, FIELD(cw_per_az), "false", 0, 0, NULL, 0,
     "With SUBNET_METRICS: also publish the IP gauges per AvailabilityZone (nodes mapped by IP)."},
    {"CW_PER_NODE", CMH_CFG_BOOL, FIELD(cw_per_node), "false", 0, 0, NULL, 0,
     "Also publish the IP gauges per NodeName (each node adds custom metrics: see "
     "docs/design.md)."},
    {"CW_PER_NODE_MAX", CMH_CFG_UINT, FIELD(cw_per_node_max), "100", 1, 10000, NULL, 0,
     "CW_PER_NODE: at most this many nodes, those nearest to exhaustion first."},
    {"REPORT_MIN_FREE_IPS", CMH_CFG_UINT, FIELD(report_min_free_ips), "0", 0, 1000000, NULL, 0,
     "`report` exits 3 when a subnet's free IPs, or the cluster's headroom (maxIPAddresses - "
     "assignIPAddresses), is below this; 0 never."},
    {"REPORT_MIN_TIME_TO_EXHAUSTION", CMH_CFG_DURATION, FIELD(report_min_tte_ms), "0", 0,
     7 * 24 * 3600 * SEC, NULL, 0,
     "`report` exits 3 when a subnet is forecast to run out of IPs within this (the report then "
     "samples the subnet view over FORECAST_WINDOW); 0 never."},
    {"REPORT_MAX_UTILIZATION", CMH_CFG_UINT, FIELD(report_max_utilization), "90", 1, 100, NULL, 0,
     "`report` exits 3 when the cluster's IP utilization (100 * assigned / max) is above this "
     "percent; 100 never."},
    {"K8S_NAMESPACE", CMH_CFG_STR, FIELD(k8s_namespace), "kube-system", 0, 0, NULL, 0,
     "Namespace of the aws-node pods discovered through the Kubernetes API."},
    {"K8S_LABEL_SELECTOR", CMH_CFG_STR, FIELD(k8s_label_selector), "k8s-app=aws-node", 0, 0, NULL,
     0, "Label selector of the aws-node pods (equality terms, comma-separated)."},
    {"K8S_TOKEN_FILE", CMH_CFG_STR, FIELD(k8s_token_file),
     "/var/run/secrets/kubernetes.io/serviceaccount/token", 0, 0, NULL, 0,
     "Service-account token for the Kubernetes API; re-read as it rotates."},
    {"K8S_CA_FILE", CMH_CFG_STR, FIELD(k8s_ca_file),
     "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", 0, 0, NULL, 0,
     "CA bundle that signs the Kubernetes API server certificate; the only anchors trusted for "
     "it (the system store is not used)."},
    {"K8S_API_URL", CMH_CFG_STR, FIELD(k8s_api_url), NULL, 0, 0, NULL, 0,
     "`report` only: the Kubernetes API to use, such as `kubectl proxy`'s "
     "`http://127.0.0.1:8001` (plain http only to a loopback address; no token is sent) or an "
     "https URL (with K8S_TOKEN_FILE and K8S_CA_FILE). Unset: the service account in a pod, else "
     "the current context of the kubeconfig (KUBECONFIG, else ~/.kube/config)."},
    {"K8S_SYNC_TIMEOUT", CMH_CFG_DURATION, FIELD(k8s_sync_timeout_ms), "60", 1 * SEC, 3600 * SEC,
     NULL, 0,
     "With Kubernetes discovery the first round waits for the first pod list, at most this long; "
     "then rounds run without it, and /readyz and the log say why."},
    {"K8S_WATCH_TIMEOUT", CMH_CFG_DURATION, FIELD(k8s_watch_timeout_ms), "5m", 1 * SEC, 3600 * SEC,
     NULL, 0, "Length of one pod watch request; the watch is then resumed from where it was."},
    {"LEADER_ELECTION", CMH_CFG_BOOL, FIELD(leader_election), "false", 0, 0, NULL, 0,
     "Run a Kubernetes Lease election (coordination.k8s.io/v1, in K8S_NAMESPACE) so that of "
     "several replicas only the leader publishes."},
    {"LEADER_ELECTION_LEASE_NAME", CMH_CFG_STR, FIELD(leader_lease_name), "cni-metrics-helper", 0,
     0, NULL, 0, "Name of the Lease object the replicas compete for."},
    {"LEADER_ELECTION_LEASE_DURATION", CMH_CFG_DURATION, FIELD(leader_lease_duration_ms), "15",
     1 * SEC, 300 * SEC, NULL, 0,
     "How long the others wait, after the lease last changed, before taking it over (failover "
     "time). Written to the Lease in whole seconds (rounded up), which the others honour."},
    {"LEADER_ELECTION_RENEW_DEADLINE", CMH_CFG_DURATION, FIELD(leader_renew_deadline_ms), "10", 500,
     300 * SEC, NULL, 0,
     "A leader that cannot renew for this long stops publishing; shorter than the lease "
     "duration."},
    {"LEADER_ELECTION_RETRY_PERIOD", CMH_CFG_DURATION, FIELD(leader_retry_period_ms), "2", 100,
     60 * SEC, NULL, 0,
     "Time between renewals by the leader and attempts by the others; shorter than the renew "
     "deadline."},
};
const size_t cmh_config_nvars = sizeof cmh_config_vars / sizeof cmh_config_vars[0];

/* Read by the credential chain, the endpoints and discovery, as the AWS SDKs and Kubernetes name
 * them; listed by --help. */
const struct cmh_config_other cmh_config_others[] = {
    {"AWS_DEFAULT_REGION", "Region when AWS_REGION is unset."},
    {"AWS_ACCESS_KEY_ID", "Static credentials (with AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)."},
    {"AWS_SECRET_ACCESS_KEY", "Static credentials' secret."},
    {"AWS_SESSION_TOKEN", "Static credentials' session token."},
    {"AWS_ROLE_ARN", "IRSA: role assumed with the web identity token."},
    {"AWS_WEB_IDENTITY_TOKEN_FILE", "IRSA: the projected service-account token."},
    {"AWS_ROLE_SESSION_NAME", "IRSA: session name of the assumed role."},
    {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "EKS Pod Identity / container credentials endpoint."},
    {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "ECS-style container credentials path."},
    {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "Pod Identity: file holding the token."},
    {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "Container credentials token given inline."},
    {"AWS_PROFILE", "Profile of the shared config and credentials files (default: default)."},
    {"AWS_CONFIG_FILE", "Shared config file (default: ~/.aws/config)."},
    {"AWS_SHARED_CREDENTIALS_FILE", "Shared credentials file (default: ~/.aws/credentials)."},
    {"HOME", "Where ~/.aws and, for report, ~/.kube/config are."},
    {"KUBECONFIG", "report outside a pod: the kubeconfig (its first existing file)."},
    {"KUBERNETES_EXEC_INFO",
     "Set for a kubeconfig exec plugin that report runs (any inherited value is replaced)."},
    {"TMPDIR", "report: where the private copies of a kubeconfig's token and CA are written."},
    {"AWS_EC2_METADATA_DISABLED", "true: never ask instance metadata (IMDS)."},
    {"AWS_EC2_METADATA_SERVICE_ENDPOINT", "IMDS endpoint override."},
    {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IMDS over IPv4 or IPv6."},
    {"AWS_ENDPOINT_URL", "Endpoint override for every AWS service."},
    {"AWS_ENDPOINT_URL_CLOUDWATCH", "CloudWatch endpoint override."},
    {"AWS_ENDPOINT_URL_STS", "STS endpoint override."},
    {"AWS_ENDPOINT_URL_EC2", "EC2 endpoint override (SUBNET_METRICS, cluster id from tags)."},
    {"POD_NAME", "This pod's name: its identity in leader election (set from metadata.name)."},
    {"NODE_NAME",
     "The node this pod runs on (set from spec.nodeName): its spec.providerID gives the "
     "instance and region when instance metadata is out of reach."},
    {"KUBERNETES_SERVICE_HOST", "The API server, as Kubernetes sets it in every pod."},
    {"KUBERNETES_SERVICE_PORT", "The API server's port, as Kubernetes sets it."},
};
const size_t cmh_config_nothers = sizeof cmh_config_others / sizeof cmh_config_others[0];

/* Variables that decide where the numbers go: a near miss of one of them is refused, not warned
 * about, since the daemon would otherwise publish under another cluster, namespace or region. */
static const char *const destinations[] = {"AWS_CLUSTER_ID",
                                           "CW_NAMESPACE",
                                           "AWS_REGION",
                                           "AWS_DEFAULT_REGION",
                                           "USE_CLOUDWATCH",
                                           "AWS_ENDPOINT_URL_CLOUDWATCH",
                                           NULL};

const char *const cmh_config_prefixes[] = {
    "USE_",        "METRIC_", "SCRAPE_",   "IPAMD_",  "PROMETHEUS_", "LOG_",
    "CW_",         "STALE_",  "SHUTDOWN_", "HTTP_",   "PROM_",       "AWS_VPC_K8S_CNI_",
    "AWS_CLUSTER", "K8S_",    "LEADER_",   "SUBNET_", "REPORT_",     "FORECAST_",
    NULL};

static void *field_ptr(struct cmh_config *cfg, const struct cmh_config_var *var)
{
    return (char *)cfg + var->offset;
}

static const void *field_cptr(const struct cmh_config *cfg, const struct cmh_config_var *var)
{
    return (const char *)cfg + var->offset;
}

static int fail(char *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, CMH_CONFIG_ERR_MAX, fmt, ap);
    va_end(ap);
    return code;
}

/* Parses [0-9]+ fully into *out; rejects signs, spaces, overflow. Returns the end pointer. */
static const char *parse_digits(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)*s))
        return NULL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return NULL;
    *out = v;
    return end;
}

static void free_targets(struct cmh_target_list *t)
{
    for (size_t i = 0; i < t->n; i++) {
        cmh_free(t->v[i].name);
        cmh_free(t->v[i].host);
    }
    cmh_free(t->v);
    t->v = NULL;
    t->n = 0;
}

static int valid_host(const char *h, size_t n, int bracketed)
{
    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (bracketed ? !(isxdigit(c) || c == ':' || c == '.')
                      : !(isalnum(c) || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* One item: [name=]host[:port] or [name=][v6]:port. Port 0 means IPAMD_METRICS_PORT. */
static int parse_target(const char *s, size_t n, struct cmh_target *t, const char **why)
{
    const char *eq = memchr(s, '=', n);
    const char *name = s, *hp = s;
    size_t name_len = 0;
    if (eq != NULL) {
        name_len = (size_t)(eq - s);
        hp = eq + 1;
        if (name_len == 0) {
            *why = "empty name before '='";
            return -EINVAL;
        }
    }
    size_t hp_len = n - (size_t)(hp - s);
    const char *host = hp, *port_s = NULL;
    size_t host_len = hp_len;
    int bracketed = 0;
    if (hp_len > 0 && hp[0] == '[') {
        const char *rb = memchr(hp, ']', hp_len);
        if (rb == NULL) {
            *why = "'[' without ']'";
            return -EINVAL;
        }
        bracketed = 1;
        host = hp + 1;
        host_len = (size_t)(rb - host);
        if (rb + 1 < hp + hp_len) {
            if (rb[1] != ':') {
                *why = "expected ':' after ']'";
                return -EINVAL;
            }
            port_s = rb + 2;
        }
    } else {
        const char *colon = memchr(hp, ':', hp_len);
        if (colon != NULL) {
            host_len = (size_t)(colon - hp);
            port_s = colon + 1;
        }
    }
    if (!valid_host(host, host_len, bracketed)) {
        *why = "bad host (IPv4, DNS name, or [IPv6])";
        return -EINVAL;
    }
    uint64_t port = 0;
    if (port_s != NULL) {
        char buf[8];
        size_t plen = (size_t)(hp + hp_len - port_s);
        if (plen == 0 || plen >= sizeof buf) {
            *why = "bad port (1-65535)";
            return -EINVAL;
        }
        memcpy(buf, port_s, plen);
        buf[plen] = '\0';
        const char *end = parse_digits(buf, &port);
        if (end == NULL || *end != '\0' || port < 1 || port > 65535) {
            *why = "bad port (1-65535)";
            return -EINVAL;
        }
    }
    t->port = (uint16_t)port;
    t->host = cmh_strndup(host, host_len);
    t->name = eq != NULL ? cmh_strndup(name, name_len) : cmh_strndup(hp, hp_len);
    if (t->host == NULL || t->name == NULL) {
        cmh_free(t->host);
        cmh_free(t->name);
        t->host = t->name = NULL;
        return -ENOMEM;
    }
    return 0;
}

static int parse_targets(const char *value, struct cmh_target_list *out, char *err)
{
    struct cmh_target_list list = {NULL, 0};
    size_t cap = 0;
    const char *p = value;
    int rc = 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        /* Tolerate spaces around items: YAML folding puts them there. */
        while (n > 0 && isspace((unsigned char)*p)) {
            p++;
            n--;
        }
        while (n > 0 && isspace((unsigned char)p[n - 1]))
            n--;
        if (n == 0) {
            rc = fail(err, -EINVAL,
                      "SCRAPE_TARGETS=%s: empty item; accepted: comma-separated "
                      "name=host:port, host:port or host",
                      value);
            goto out;
        }
        if (list.n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct cmh_target *v = cmh_reallocarray(list.v, ncap, sizeof *v);
            if (v == NULL) {
                rc = fail(err, -ENOMEM, "out of memory");
                goto out;
            }
            list.v = v;
            cap = ncap;
        }
        const char *why = "";
        rc = parse_target(p, n, &list.v[list.n], &why);
        if (rc == -ENOMEM) {
            fail(err, rc, "out of memory");
            goto out;
        }
        if (rc != 0) {
            fail(err, rc,
                 "SCRAPE_TARGETS=%s: item '%.*s': %s; accepted: comma-separated "
                 "name=host:port, host:port or host",
                 value, (int)n, p, why);
            goto out;
        }
        list.n++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    free_targets(out);
    *out = list;
    list.v = NULL;
    list.n = 0;
out:
    free_targets(&list);
    return rc;
}

/* Number with an optional unit from units[] (each with its multiplier). */
struct unit {
    const char *suffix;
    uint64_t mult;
};

static const struct unit duration_units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {NULL, 0}};
static const struct unit byte_units[] = {{"", 1},           {"B", 1},          {"KiB", 1u << 10},
                                         {"MiB", 1u << 20}, {"GiB", 1u << 30}, {NULL, 0}};

static int parse_scaled(const char *s, const struct unit *units, uint64_t *out)
{
    uint64_t v;
    const char *end = parse_digits(s, &v);
    if (end == NULL)
        return -EINVAL;
    for (const struct unit *u = units; u->suffix != NULL; u++) {
        if (strcmp(end, u->suffix) == 0) {
            if (v > UINT64_MAX / u->mult)
                return -EINVAL;
            *out = v * u->mult;
            return 0;
        }
    }
    return -EINVAL;
}

static int fmt_ms(char *buf, size_t len, uint64_t ms)
{
    return ms % 1000 ? snprintf(buf, len, "%llums", (unsigned long long)ms)
                     : snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
}

static void describe_range(const struct cmh_config_var *var, char *buf, size_t len)
{
    switch (var->type) {
    case CMH_CFG_BOOL:
        snprintf(buf, len, "yes, true, no or false");
        break;
    case CMH_CFG_UINT:
        snprintf(buf, len, "an integer from %llu to %llu", (unsigned long long)var->min,
                 (unsigned long long)var->max);
        break;
    case CMH_CFG_BYTES:
        snprintf(buf, len, "bytes from %llu to %llu, optionally with KiB, MiB or GiB",
                 (unsigned long long)var->min, (unsigned long long)var->max);
        break;
    case CMH_CFG_DURATION: {
        char lo[32], hi[32];
        fmt_ms(lo, sizeof lo, var->min);
        fmt_ms(hi, sizeof hi, var->max);
        snprintf(buf, len, "seconds, or a number with ms, s or m, from %s to %s", lo, hi);
        break;
    }
    case CMH_CFG_ENUM: {
        size_t off = (size_t)snprintf(buf, len, "one of");
        for (const char *const *w = var->words; *w && off < len; w++)
            off += (size_t)snprintf(buf + off, len - off, "%s %s", w == var->words ? "" : ",", *w);
        break;
    }
    case CMH_CFG_STR:
        snprintf(buf, len,
                 var->flags & CMH_CFG_READABLE  ? "the path of a readable file"
                 : var->flags & CMH_CFG_SUBNETS ? "comma-separated subnet ids, subnet- and 8 to "
                                                  "17 hex digits each"
                 : var->flags & CMH_CFG_REGION  ? "a region name such as us-west-2 or us-gov-west-1"
                                                : "any text");
        break;
    case CMH_CFG_TARGETS:
        snprintf(buf, len, "comma-separated name=host:port, host:port or host");
        break;
    }
}

int cmh_config_check_subnet_ids(const char *ids, char *err, size_t errlen)
{
    int n = 0;
    const char *p = ids;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        size_t hex = len > 7 ? len - 7 : 0;
        int ok = len > 7 && strncmp(p, "subnet-", 7) == 0 && hex >= 8 && hex <= 17;
        for (size_t i = 7; ok && i < len; i++)
            ok = isdigit((unsigned char)p[i]) || (p[i] >= 'a' && p[i] <= 'f');
        if (!ok) {
            snprintf(err, errlen, "'%.*s' is not a subnet id (subnet- and 8 to 17 hex digits)",
                     (int)(len > 64 ? 64 : len), p);
            return -EINVAL;
        }
        n++;
        if (comma == NULL)
            return n;
        p = comma + 1;
    }
}

/* An AWS region name: lower-case words joined by single hyphens, at least three of them, the
 * first letters only and the last a number (us-west-2, us-gov-west-1, us-isob-east-1), at most 32
 * characters. Anything else would go into an endpoint's host name. */
static int region_name(const char *s)
{
    size_t n = strlen(s), words = 1;
    if (n == 0 || n > 32 || !islower((unsigned char)s[0]) || !isdigit((unsigned char)s[n - 1]))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '-') {
            if (s[i + 1] == '-' || s[i + 1] == '\0')
                return 0;
            words++;
        } else if (!islower(c) && (words == 1 || !isdigit(c))) {
            return 0; /* the first word is letters only, the others letters or digits */
        }
    }
    const char *last = strrchr(s, '-');
    for (const char *c = last != NULL ? last + 1 : s; *c; c++)
        if (!isdigit((unsigned char)*c))
            return 0;
    return words >= 3;
}

static int set_bool(bool *f, const char *value)
{
    if (strcasecmp(value, "true") == 0 || strcasecmp(value, "yes") == 0)
        *f = true;
    else if (strcasecmp(value, "false") == 0 || strcasecmp(value, "no") == 0)
        *f = false;
    else
        return -EINVAL;
    return 0;
}

/* UINT (bare digits), BYTES and DURATION (digits and a unit), within [var->min, var->max]. */
static int set_number(const struct cmh_config_var *var, uint64_t *f, const char *value)
{
    uint64_t v = 0;
    int rc;
    if (var->type == CMH_CFG_UINT) {
        const char *end = parse_digits(value, &v);
        rc = end == NULL || *end != '\0' ? -EINVAL : 0;
    } else {
        rc = parse_scaled(value, var->type == CMH_CFG_BYTES ? byte_units : duration_units, &v);
    }
    if (rc == 0 && (v < var->min || v > var->max))
        rc = -EINVAL;
    if (rc == 0)
        *f = v;
    return rc;
}

static int set_enum(const struct cmh_config_var *var, int *f, const char *value)
{
    int rc = -EINVAL;
    for (int i = 0; var->words[i] != NULL; i++) {
        if (strcasecmp(value, var->words[i]) == 0) {
            *f = i;
            rc = 0;
        }
    }
    return rc;
}

/* A string, checked as its flags say (a readable file, subnet ids, a region name). */
static int set_str(const struct cmh_config_var *var, char **f, const char *value,
                   char err[CMH_CONFIG_ERR_MAX])
{
    char accepted[256];
    if (var->flags & CMH_CFG_READABLE) {
        /* Non-blocking, so that a FIFO named by mistake cannot hang the start. */
        int fd = open(value, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        struct stat st;
        int e = fd < 0 ? errno : fstat(fd, &st) != 0 ? errno : S_ISREG(st.st_mode) ? 0 : -1;
        if (fd >= 0)
            close(fd);
        if (e != 0)
            return fail(err, -EINVAL, "%s=%s: cannot read the file: %s", var->name, value,
                        e > 0 ? strerror(e) : "not a regular file");
    }
    char why[160];
    if ((var->flags & CMH_CFG_SUBNETS) && cmh_config_check_subnet_ids(value, why, sizeof why) < 0) {
        describe_range(var, accepted, sizeof accepted);
        return fail(err, -EINVAL, "%s=%s: invalid value (%s); accepted: %s", var->name, value, why,
                    accepted);
    }
    if ((var->flags & CMH_CFG_REGION) && !region_name(value)) {
        describe_range(var, accepted, sizeof accepted);
        return fail(err, -EINVAL,
                    "%s=%s: not a region name (it builds the endpoints' host "
                    "names); accepted: %s",
                    var->name, value, accepted);
    }
    char *copy = cmh_strdup(value);
    if (copy == NULL)
        return fail(err, -ENOMEM, "out of memory");
    cmh_free(*f);
    *f = copy;
    return 0;
}

int cmh_config_set(struct cmh_config *cfg, const struct cmh_config_var *var, const char *value,
                   char err[CMH_CONFIG_ERR_MAX])
{
    void *f = field_ptr(cfg, var);
    int rc = -EINVAL;
    switch (var->type) {
    case CMH_CFG_BOOL:
        rc = set_bool(f, value);
        break;
    case CMH_CFG_UINT:
    case CMH_CFG_BYTES:
    case CMH_CFG_DURATION:
        rc = set_number(var, f, value);
        break;
    case CMH_CFG_ENUM:
        rc = set_enum(var, f, value);
        break;
    case CMH_CFG_STR:
        return set_str(var, f, value, err);
    case CMH_CFG_TARGETS:
        return parse_targets(value, f, err);
    }
    if (rc != 0) {
        char accepted[256];
        describe_range(var, accepted, sizeof accepted);
        const char *secret = var->flags & CMH_CFG_SECRET ? "<redacted>" : value;
        return fail(err, rc, "%s=%s: invalid value; accepted: %s", var->name, secret, accepted);
    }
    return 0;
}

const struct cmh_config_var *cmh_config_find(const char *name)
{
    for (size_t i = 0; i < cmh_config_nvars; i++)
        if (strcmp(cmh_config_vars[i].name, name) == 0)
            return &cmh_config_vars[i];
    return NULL;
}

const char *cmh_env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

void cmh_config_free(struct cmh_config *cfg)
{
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        if (var->type == CMH_CFG_STR) {
            char **s = field_ptr(cfg, var);
            cmh_free(*s);
            *s = NULL;
        } else if (var->type == CMH_CFG_TARGETS) {
            free_targets(field_ptr(cfg, var));
        }
    }
}

static size_t distance(const char *a, const char *b);

static int known_name(const char *name)
{
    if (cmh_config_find(name) != NULL)
        return 1;
    for (size_t i = 0; i < cmh_config_nothers; i++)
        if (strcmp(cmh_config_others[i].name, name) == 0)
            return 1;
    return 0;
}

/* A set variable one edit, or only letter case, away from a destination variable. */
static int near_miss(char *const *envp, char *err)
{
    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        char name[128], upper[128];
        size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
        if (n == 0 || n >= sizeof name || eq == NULL || eq[1] == '\0')
            continue;
        memcpy(name, *e, n);
        name[n] = '\0';
        for (size_t i = 0; i <= n; i++)
            upper[i] = (char)toupper((unsigned char)name[i]);
        if (known_name(name))
            continue;
        for (const char *const *d = destinations; *d != NULL; d++) {
            if (distance(upper, *d) <= 1)
                return fail(err, -EINVAL,
                            "%s is not a variable this daemon reads; did you mean %s? It decides "
                            "where the numbers are published, so the start stops here: rename "
                            "it or remove it",
                            name, *d);
        }
    }
    return 0;
}

/* CloudWatch refuses AWS/ namespaces (reserved for AWS services) and anything but 1-255 printable
 * ASCII characters: every PutMetricData would fail, so the start stops instead. */
static int check_namespace(const char *ns, char *err)
{
    size_t n = ns ? strlen(ns) : 0;
    if (n >= 4 && strncmp(ns, "AWS/", 4) == 0)
        return fail(err, -EINVAL,
                    "CW_NAMESPACE=%s: namespaces starting with AWS/ are reserved for AWS services "
                    "and CloudWatch refuses them; choose another (the default is Kubernetes, which "
                    "the shipped alarms use)",
                    ns);
    int ok = n >= 1 && n <= 255;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)ns[i] >= 0x20 && (unsigned char)ns[i] <= 0x7e;
    if (!ok)
        return fail(
            err, -EINVAL,
            "CW_NAMESPACE=%s: invalid value; accepted: 1 to 255 printable ASCII characters, "
            "not starting with AWS/",
            ns ? ns : "");
    return 0;
}

int cmh_config_load(struct cmh_config *cfg, char *const *envp, char err[CMH_CONFIG_ERR_MAX])
{
    int rc = 0;
    memset(cfg, 0, sizeof *cfg);
    err[0] = '\0';
    for (size_t i = 0; i < cmh_config_nvars && rc == 0; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        if (var->def != NULL && var->def[0] != '\0')
            rc = cmh_config_set(cfg, var, var->def, err);
    }
    for (size_t i = 0; i < cmh_config_nvars && rc == 0; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        const char *value = cmh_env_get(envp, var->name);
        if (value != NULL && value[0] != '\0')
            rc = cmh_config_set(cfg, var, value, err);
    }
    if (rc == 0)
        rc = near_miss(envp, err);
    if (rc == 0)
        rc = check_namespace(cfg->cw_namespace, err);
    if (rc != 0) {
        cmh_config_free(cfg);
        return rc;
    }
    if (cfg->targets.n > cfg->scrape_max_nodes) {
        snprintf(err, CMH_CONFIG_ERR_MAX,
                 "SCRAPE_TARGETS: %zu targets, more than SCRAPE_MAX_NODES=%llu", cfg->targets.n,
                 (unsigned long long)cfg->scrape_max_nodes);
        cmh_config_free(cfg);
        return -EINVAL;
    }
    /* Targets given without a port use IPAMD_METRICS_PORT, whatever order they were read in. */
    for (size_t i = 0; i < cfg->targets.n; i++)
        if (cfg->targets.v[i].port == 0)
            cfg->targets.v[i].port = (uint16_t)cfg->ipamd_port;
    return 0;
}

size_t cmh_config_value_text(const struct cmh_config *cfg, const struct cmh_config_var *var,
                             char *buf, size_t len)
{
    const void *f = field_cptr(cfg, var);
    int n = 0;
    switch (var->type) {
    case CMH_CFG_BOOL:
        n = snprintf(buf, len, "%s", *(const bool *)f ? "true" : "false");
        break;
    case CMH_CFG_UINT:
    case CMH_CFG_BYTES:
        n = snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)f);
        break;
    case CMH_CFG_DURATION:
        n = fmt_ms(buf, len, *(const uint64_t *)f);
        break;
    case CMH_CFG_ENUM:
        n = snprintf(buf, len, "%s", var->words[*(const int *)f]);
        break;
    case CMH_CFG_STR: {
        const char *s = *(char *const *)f;
        n = snprintf(buf, len, "%s", s ? s : "");
        break;
    }
    case CMH_CFG_TARGETS: {
        const struct cmh_target_list *t = f;
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < t->n && off < len; i++) {
            const struct cmh_target *x = &t->v[i];
            int v6 = strchr(x->host, ':') != NULL;
            off += (size_t)snprintf(buf + off, len - off, "%s%s=%s%s%s:%u", i ? "," : "", x->name,
                                    v6 ? "[" : "", x->host, v6 ? "]" : "", (unsigned)x->port);
        }
        return off < len ? off : len - 1;
    }
    }
    return n < 0 ? 0 : ((size_t)n < len ? (size_t)n : len - 1);
}

/* Edit distance, capped: names are short, so a two-row table on the stack is enough. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 64;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

void cmh_config_unknown(char *const *envp,
                        void (*cb)(void *arg, const char *name, const char *suggestion), void *arg)
{
    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        char name[128];
        size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
        if (n == 0 || n >= sizeof name)
            continue;
        memcpy(name, *e, n);
        name[n] = '\0';
        int ours = 0;
        for (const char *const *p = cmh_config_prefixes; *p && !ours; p++)
            ours = strncmp(name, *p, strlen(*p)) == 0;
        if (!ours || cmh_config_find(name) != NULL)
            continue;
        const char *best = NULL;
        size_t best_d = 4; /* suggest only close names */
        for (size_t i = 0; i < cmh_config_nvars; i++) {
            size_t d = distance(name, cmh_config_vars[i].name);
            if (d < best_d) {
                best_d = d;
                best = cmh_config_vars[i].name;
            }
        }
        cb(arg, name, best);
    }
}

void cmh_config_log(const struct cmh_config *cfg, struct cmh_log *log)
{
    struct cmh_kv kv[sizeof cmh_config_vars / sizeof cmh_config_vars[0]];
    char values[sizeof cmh_config_vars / sizeof cmh_config_vars[0]][256];
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        if (var->flags & CMH_CFG_SECRET)
            snprintf(values[i], sizeof values[i], "<redacted>");
        else
            cmh_config_value_text(cfg, var, values[i], sizeof values[i]);
        kv[i] = CMH_STR(var->name, values[i]);
    }
    cmh_log_event(log, CMH_LOG_INFO, "effective configuration", kv, cmh_config_nvars);
}

static const char *type_name(enum cmh_config_type t)
{
    static const char *const names[] = {"bool",   "integer", "bytes",  "duration",
                                        "string", "enum",    "targets"};
    return names[t];
}

void cmh_config_print_help(FILE *out)
{
    char accepted[256];
    fprintf(out, "Environment variables (an empty value counts as unset):\n");
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        describe_range(var, accepted, sizeof accepted);
        fprintf(out, "  %s (%s, default: %s)\n      %s\n      Accepted: %s.\n", var->name,
                type_name(var->type), var->def && var->def[0] ? var->def : "unset", var->help,
                accepted);
    }
    fprintf(out, "\nAlso read, as the AWS SDKs and Kubernetes define them:\n");
    for (size_t i = 0; i < cmh_config_nothers; i++)
        fprintf(out, "  %s\n      %s\n", cmh_config_others[i].name, cmh_config_others[i].help);
}

void cmh_config_print_markdown(FILE *out)
{
    char accepted[256];
    fprintf(out, "| Variable | Default | Accepted | Meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        const struct cmh_config_var *var = &cmh_config_vars[i];
        describe_range(var, accepted, sizeof accepted);
        fprintf(out, "| `%s` | %s%s%s | %s | %s |\n", var->name, var->def && var->def[0] ? "`" : "",
                var->def && var->def[0] ? var->def : "unset", var->def && var->def[0] ? "`" : "",
                accepted, var->help);
    }
    fprintf(out, "\nAlso read, as the AWS SDKs and Kubernetes define them:\n\n"
                 "| Variable | Meaning |\n|---|---|\n");
    for (size_t i = 0; i < cmh_config_nothers; i++)
        fprintf(out, "| `%s` | %s |\n", cmh_config_others[i].name, cmh_config_others[i].help);
}
