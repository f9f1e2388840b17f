/* Configuration: every variable's good and bad values, defaults, targets, typo warnings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/config_int.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct good {
    const char *var, *value, *text; /* text: cmh_config_value_text after loading */
};

/* At least one good value for every variable, including the boundaries of every range. */
static const struct good goods[] = {
    {"AWS_CA_BUNDLE", CMH_SOURCE_DIR "/test/unit/core/test_config.c",
     CMH_SOURCE_DIR "/test/unit/core/test_config.c"},
    {"USE_CLOUDWATCH", "yes", "true"},
    {"USE_CLOUDWATCH", "No", "false"},
    {"USE_CLOUDWATCH", "TRUE", "true"},
    {"USE_CLOUDWATCH", "false", "false"},
    {"USE_PROMETHEUS", "true", "true"},
    {"USE_PROMETHEUS", "NO", "false"},
    {"PROMETHEUS_ORIGINAL_NAMES", "yes", "true"},
    {"METRIC_UPDATE_INTERVAL", "1", "1s"},
    {"METRIC_UPDATE_INTERVAL", "60", "60s"},
    {"METRIC_UPDATE_INTERVAL", "3600", "3600s"},
    {"METRIC_UPDATE_INTERVAL", "1500ms", "1500ms"},
    {"METRIC_UPDATE_INTERVAL", "2m", "120s"},
    {"AWS_REGION", "eu-west-1", "eu-west-1"},
    {"AWS_REGION", "us-gov-west-1", "us-gov-west-1"},
    {"AWS_REGION", "cn-north-1", "cn-north-1"},
    {"AWS_REGION", "us-isob-east-1", "us-isob-east-1"},
    {"AWS_REGION", "ap-southeast-5", "ap-southeast-5"},
    {"AWS_CLUSTER_ID", "prod-cluster", "prod-cluster"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG", "debug"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "warn", "warn"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "Error", "error"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "FATAL", "fatal"},
    {"LOG_FORMAT", "json", "json"},
    {"LOG_FORMAT", "TEXT", "text"},
    {"HTTP_TIMEOUT", "1", "1s"},
    {"HTTP_TIMEOUT", "300", "300s"},
    {"SCRAPE_TARGETS", "10.0.0.1:61678", "10.0.0.1:61678=10.0.0.1:61678"},
    {"SCRAPE_TARGETS", "n1=10.0.0.1:1,n2=host.example:65535",
     "n1=10.0.0.1:1,n2=host.example:65535"},
    {"SCRAPE_TARGETS", " a=127.0.0.2 , 127.0.0.3 ", "a=127.0.0.2:61678,127.0.0.3=127.0.0.3:61678"},
    {"SCRAPE_TARGETS", "v6=[::1]:8080,[fe80::1]", "v6=[::1]:8080,[fe80::1]=[fe80::1]:61678"},
    {"IPAMD_METRICS_PORT", "1", "1"},
    {"IPAMD_METRICS_PORT", "65535", "65535"},
    {"PROMETHEUS_PORT", "9100", "9100"},
    {"SHUTDOWN_TIMEOUT", "0", "0s"},
    {"SHUTDOWN_TIMEOUT", "250ms", "250ms"},
    {"SHUTDOWN_TIMEOUT", "300", "300s"},
    {"PROMETHEUS_ADDRESS", "127.0.0.1", "127.0.0.1"},
    {"STALE_ROUNDS", "0", "0"},
    {"STALE_ROUNDS", "100", "100"},
    {"PROM_MAX_LINE", "256", "256"},
    {"PROM_MAX_LINE", "1MiB", "1048576"},
    {"SCRAPE_CONCURRENCY", "1", "1"},
    {"SCRAPE_CONCURRENCY", "100000", "100000"},
    {"SCRAPE_MAX_NODES", "1", "1"},
    {"SCRAPE_MAX_NODES", "1000000", "1000000"},
    {"SCRAPE_TIMEOUT", "10ms", "10ms"},
    {"SCRAPE_TIMEOUT", "300", "300s"},
    {"SCRAPE_ROUND_TIMEOUT", "0", "0s"},
    {"SCRAPE_ROUND_TIMEOUT", "25", "25s"},
    {"SCRAPE_MAX_BODY", "1024", "1024"},
    {"SCRAPE_MAX_BODY", "4MiB", "4194304"},
    {"SCRAPE_MAX_BODY", "1GiB", "1073741824"},
    {"SCRAPE_JITTER", "0", "0s"},
    {"SCRAPE_JITTER", "60", "60s"},
    {"SCRAPE_KEEPALIVE", "no", "false"},
    {"SCRAPE_GZIP", "false", "false"},
    {"SUBNET_METRICS", "yes", "true"},
    {"SUBNET_METRICS_INTERVAL", "10", "10s"},
    {"SUBNET_METRICS_INTERVAL", "1440m", "86400s"},
    {"SUBNET_IDS", "subnet-0a1b2c3d,subnet-0123456789abcdef0",
     "subnet-0a1b2c3d,subnet-0123456789abcdef0"},
    {"CW_PER_AZ", "true", "true"},
    {"CW_PER_NODE", "no", "false"},
    {"CW_PER_NODE_MAX", "10000", "10000"},
    {"REPORT_MIN_FREE_IPS", "0", "0"},
    {"FORECAST_WINDOW", "30s", "30s"},
    {"FORECAST_WINDOW", "1440m", "86400s"},
    {"SUBNET_PREFIX_METRICS", "true", "true"},
    {"SUBNET_PREFIX_METRICS", "False", "false"},
    {"SUBNET_PREFIX_METRICS", "AUTO", "auto"},
    {"SUBNET_PREFIX_INTERVAL", "15m", "900s"},
    {"REPORT_MIN_TIME_TO_EXHAUSTION", "60m", "3600s"},
    {"REPORT_MAX_UTILIZATION", "100", "100"},
    {"SCRAPE_MODE", "Proxy", "proxy"},
    {"SCRAPE_MODE", "direct", "direct"},
    {"SCRAPE_DIRECT_RECHECK", "1", "1s"},
    {"SCRAPE_DIRECT_RECHECK", "1440m", "86400s"},
    {"CW_NAMESPACE", "ContainerInsights/IP", "ContainerInsights/IP"},
    {"CW_STORAGE_RESOLUTION", "1", "1"},
    {"CW_STORAGE_RESOLUTION", "60", "60"},
    {"CW_BUFFER_MAX_DATUMS", "1000", "1000"},
    {"CW_BUFFER_MAX_DATUMS", "10000000", "10000000"},
    {"CW_MAX_ATTEMPTS", "1", "1"},
    {"CW_MAX_ATTEMPTS", "20", "20"},
    {"CW_MAX_AGE", "10", "10s"},
    {"CW_MAX_AGE", "1440m", "86400s"},
    {"CW_BACKOFF_BASE", "10ms", "10ms"},
    {"CW_BACKOFF_BASE", "60", "60s"},
    {"CW_BACKOFF_CAP", "100ms", "100ms"},
    {"CW_BACKOFF_CAP", "600", "600s"},
    {"K8S_NAMESPACE", "aws-cni", "aws-cni"},
    {"K8S_LABEL_SELECTOR", "app=aws-node,tier=cni", "app=aws-node,tier=cni"},
    {"K8S_TOKEN_FILE", "/tmp/token", "/tmp/token"},
    {"K8S_CA_FILE", "/tmp/ca.crt", "/tmp/ca.crt"},
    {"K8S_API_URL", "http://127.0.0.1:8001", "http://127.0.0.1:8001"},
    {"K8S_WATCH_TIMEOUT", "1", "1s"},
    {"K8S_WATCH_TIMEOUT", "60m", "3600s"},
    {"K8S_SYNC_TIMEOUT", "90", "90s"},
    {"K8S_SYNC_TIMEOUT", "1s", "1s"},
    {"LEADER_ELECTION", "true", "true"},
    {"LEADER_ELECTION", "No", "false"},
    {"LEADER_ELECTION_LEASE_NAME", "cmh-prod", "cmh-prod"},
    {"LEADER_ELECTION_LEASE_DURATION", "1", "1s"},
    {"LEADER_ELECTION_LEASE_DURATION", "5m", "300s"},
    {"LEADER_ELECTION_RENEW_DEADLINE", "500ms", "500ms"},
    {"LEADER_ELECTION_RENEW_DEADLINE", "300", "300s"},
    {"LEADER_ELECTION_RETRY_PERIOD", "100ms", "100ms"},
    {"LEADER_ELECTION_RETRY_PERIOD", "60", "60s"},
};

struct bad {
    const char *var, *value, *accepted; /* accepted: a part of the message saying what is */
};

static const struct bad bads[] = {
    /* AWS_REGION builds host names: only a region name. */
    {"AWS_REGION", "us-west-2.evil.example", "a region name such as us-west-2"},
    {"AWS_REGION", "us-west-2a", "a region name such as us-west-2"},
    {"AWS_REGION", "US-WEST-2", "a region name such as us-west-2"},
    {"AWS_REGION", "us-west", "a region name such as us-west-2"},
    {"AWS_REGION", "us--west-2", "a region name such as us-west-2"},
    {"AWS_REGION", "us-west-2/x", "a region name such as us-west-2"},
    {"AWS_REGION", "1us-west-2", "a region name such as us-west-2"},
    {"AWS_CA_BUNDLE", "/nonexistent/ca.pem", "cannot read the file: No such file or directory"},
    {"USE_CLOUDWATCH", "1", "yes, true, no or false"},
    {"USE_CLOUDWATCH", "enabled", "yes, true, no or false"},
    {"USE_PROMETHEUS", "y", "yes, true, no or false"},
    {"PROMETHEUS_ORIGINAL_NAMES", "on", "yes, true, no or false"},
    {"CW_NAMESPACE", "AWS/EKS", "reserved for AWS services"},
    {"CW_NAMESPACE", "Kube\tnetes", "printable ASCII"},
    {"METRIC_UPDATE_INTERVAL", "abc", "from 1s to 3600s"},
    {"METRIC_UPDATE_INTERVAL", "0", "from 1s"},
    {"METRIC_UPDATE_INTERVAL", "-5", "seconds"},
    {"METRIC_UPDATE_INTERVAL", "3601", "to 3600s"},
    {"METRIC_UPDATE_INTERVAL", "30 ", "seconds"},
    {"METRIC_UPDATE_INTERVAL", "1.5", "seconds"},
    {"METRIC_UPDATE_INTERVAL", "99999999999999999999", "seconds"},
    {"METRIC_UPDATE_INTERVAL", "5h", "ms, s or m"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "verbose", "one of debug, info, warn, error"},
    {"AWS_VPC_K8S_CNI_LOGLEVEL", "trace", "one of debug"},
    {"LOG_FORMAT", "yaml", "one of text, json"},
    {"HTTP_TIMEOUT", "0", "from 1s"},
    {"HTTP_TIMEOUT", "301", "to 300s"},
    {"SCRAPE_TARGETS", "a=", "bad host"},
    {"SCRAPE_TARGETS", "=10.0.0.1", "empty name"},
    {"SCRAPE_TARGETS", "10.0.0.1:0", "bad port"},
    {"SCRAPE_TARGETS", "10.0.0.1:65536", "bad port"},
    {"SCRAPE_TARGETS", "10.0.0.1:http", "bad port"},
    {"SCRAPE_TARGETS", "10.0.0.1:", "bad port"},
    {"SCRAPE_TARGETS", "a,,b", "empty item"},
    {"SCRAPE_TARGETS", "host_name", "bad host"},
    {"SCRAPE_TARGETS", "[::1", "without ']'"},
    {"SCRAPE_TARGETS", "[::1]x", "expected ':'"},
    {"SCRAPE_TARGETS", "[zz]:1", "bad host"},
    {"IPAMD_METRICS_PORT", "0", "from 1 to 65535"},
    {"IPAMD_METRICS_PORT", "65536", "from 1 to 65535"},
    {"IPAMD_METRICS_PORT", "+80", "from 1 to 65535"},
    {"PROMETHEUS_PORT", "port", "from 0 to 65535"},
    {"PROMETHEUS_PORT", "65536", "from 0 to 65535"},
    {"SHUTDOWN_TIMEOUT", "301", "to 300s"},
    {"STALE_ROUNDS", "101", "from 0 to 100"},
    {"PROM_MAX_LINE", "255", "from 256 to 16777216"},
    {"PROM_MAX_LINE", "64KB", "KiB, MiB or GiB"},
    {"SCRAPE_CONCURRENCY", "0", "from 1 to 100000"},
    {"SCRAPE_CONCURRENCY", "100001", "from 1 to 100000"},
    {"SCRAPE_MAX_NODES", "0", "from 1 to 1000000"},
    {"SCRAPE_MAX_NODES", "1000001", "from 1 to 1000000"},
    {"SCRAPE_TIMEOUT", "9ms", "from 10ms"},
    {"SCRAPE_TIMEOUT", "301", "to 300s"},
    {"SCRAPE_ROUND_TIMEOUT", "3601", "to 3600s"},
    {"SCRAPE_MAX_BODY", "1023", "bytes from 1024"},
    {"SCRAPE_MAX_BODY", "2GiB", "to 1073741824"},
    {"SCRAPE_JITTER", "61", "to 60s"},
    {"SCRAPE_KEEPALIVE", "2", "yes, true, no or false"},
    {"SCRAPE_GZIP", "gzip", "yes, true, no or false"},
    {"SUBNET_METRICS", "1", "yes, true, no or false"},
    {"SUBNET_METRICS_INTERVAL", "9", "from 10s to 86400s"},
    {"SUBNET_IDS", "subnet-0a1b2c3d,subnet-0a1b", "'subnet-0a1b' is not a subnet id"},
    {"SUBNET_IDS", "subnet-0a1b2c3d,", "subnet- and 8 to 17 hex digits each"},
    {"CW_PER_AZ", "maybe", "yes, true, no or false"},
    {"CW_PER_NODE", "on", "yes, true, no or false"},
    {"CW_PER_NODE_MAX", "0", "from 1 to 10000"},
    {"REPORT_MIN_FREE_IPS", "-1", "from 0 to 1000000"},
    {"FORECAST_WINDOW", "29s", "from 30s to 86400s"},
    {"FORECAST_WINDOW", "1441m", "from 30s to 86400s"},
    {"SUBNET_PREFIX_METRICS", "2", "one of auto, true, false"},
    {"SUBNET_PREFIX_METRICS", "yes", "one of auto, true, false"},
    {"SUBNET_PREFIX_INTERVAL", "9", "from 10s to 86400s"},
    {"REPORT_MIN_TIME_TO_EXHAUSTION", "604801", "to 604800s"},
    {"REPORT_MAX_UTILIZATION", "101", "from 1 to 100"},
    {"SCRAPE_MODE", "apiserver", "one of auto, direct, proxy"},
    {"SCRAPE_DIRECT_RECHECK", "500ms", "from 1s to 86400s"},
    {"CW_STORAGE_RESOLUTION", "30", "one of 60, 1"},
    {"CW_BUFFER_MAX_DATUMS", "999", "from 1000 to 10000000"},
    {"CW_MAX_ATTEMPTS", "0", "from 1 to 20"},
    {"CW_MAX_ATTEMPTS", "21", "from 1 to 20"},
    {"CW_MAX_AGE", "9", "from 10s"},
    {"CW_MAX_AGE", "1441m", "to 86400s"},
    {"CW_BACKOFF_BASE", "9ms", "from 10ms"},
    {"CW_BACKOFF_CAP", "601", "to 600s"},
    {"K8S_WATCH_TIMEOUT", "999ms", "from 1s"},
    {"K8S_WATCH_TIMEOUT", "61m", "to 3600s"},
    {"K8S_SYNC_TIMEOUT", "0", "from 1s"},
    {"K8S_SYNC_TIMEOUT", "2h", "to 3600s"},
    {"LEADER_ELECTION", "on", "yes, true, no or false"},
    {"LEADER_ELECTION_LEASE_DURATION", "999ms", "from 1s"},
    {"LEADER_ELECTION_LEASE_DURATION", "301", "to 300s"},
    {"LEADER_ELECTION_RENEW_DEADLINE", "499ms", "from 500ms"},
    {"LEADER_ELECTION_RETRY_PERIOD", "99ms", "from 100ms"},
    {"LEADER_ELECTION_RETRY_PERIOD", "61", "to 60s"},
};

static void load_one(const char *var, const char *value, struct cmh_config *cfg, int *rc, char *err)
{
    char entry[512];
    snprintf(entry, sizeof entry, "%s=%s", var, value);
    char *env[] = {entry, NULL};
    *rc = cmh_config_load(cfg, env, err);
}

static void every_good_value_loads_and_reads_back(void **state)
{
    for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
        struct cmh_config cfg;
        char err[CMH_CONFIG_ERR_MAX];
        int rc;
        load_one(goods[i].var, goods[i].value, &cfg, &rc, err);
        if (rc != 0)
            fail_msg("%s=%s rejected: %s", goods[i].var, goods[i].value, err);
        char text[512];
        cmh_config_value_text(&cfg, cmh_config_find(goods[i].var), text, sizeof text);
        if (strcmp(text, goods[i].text) != 0)
            fail_msg("%s=%s reads back as '%s', expected '%s'", goods[i].var, goods[i].value, text,
                     goods[i].text);
        cmh_config_free(&cfg);
    }
}

static void every_bad_value_is_rejected_naming_variable_value_and_accepted(void **state)
{
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        struct cmh_config cfg;
        char err[CMH_CONFIG_ERR_MAX];
        int rc;
        load_one(bads[i].var, bads[i].value, &cfg, &rc, err);
        if (rc != -EINVAL)
            fail_msg("%s=%s accepted (rc %d)", bads[i].var, bads[i].value, rc);
        char prefix[512];
        snprintf(prefix, sizeof prefix, "%s=%s:", bads[i].var, bads[i].value);
        if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, bads[i].accepted) == NULL)
            fail_msg("message for %s=%s is '%s'", bads[i].var, bads[i].value, err);
    }
}

/* A typo of a variable that decides where the numbers go stops the load; other near misses and
 * the variables the AWS SDKs define do not. */
static void near_miss_of_a_destination_variable_is_refused_naming_it(void **state)
{
    (void)state;
    const struct {
        const char *entry, *meant; /* meant NULL: loads */
    } cases[] = {
        {"AWS_CLUSTERID=prod", "AWS_CLUSTER_ID"},
        {"aws_cluster_id=prod", "AWS_CLUSTER_ID"},
        {"CW_NAMESPAC=x", "CW_NAMESPACE"},
        {"AWS_REGON=eu-west-1", "AWS_REGION"},
        {"USE_CLOUDWATCH_=no", "USE_CLOUDWATCH"},
        {"AWS_ENDPOINT_URL_CLOUDWATH=http://x", "AWS_ENDPOINT_URL_CLOUDWATCH"},
        {"AWS_DEFAULT_REGION=eu-west-1", NULL},
        {"AWS_ENDPOINT_URL_EC2=http://x", NULL},
        {"METRIC_UPDATE_INTERVALS=5", NULL},
        {"AWS_CLUSTERID=", NULL}, /* empty counts as unset */
        {"AWS_CLUSTERNAME=prod", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char entry[128];
        snprintf(entry, sizeof entry, "%s", cases[i].entry);
        char *env[] = {entry, NULL};
        struct cmh_config cfg;
        char err[CMH_CONFIG_ERR_MAX];
        int rc = cmh_config_load(&cfg, env, err);
        if (cases[i].meant == NULL) {
            if (rc != 0)
                fail_msg("%s refused: %s", cases[i].entry, err);
            cmh_config_free(&cfg);
            continue;
        }
        char want[128];
        snprintf(want, sizeof want, "did you mean %s?", cases[i].meant);
        if (rc != -EINVAL || strstr(err, want) == NULL)
            fail_msg("%s: rc %d, message '%s'", cases[i].entry, rc, err);
    }
}

static void every_variable_has_a_good_and_a_bad_case(void **state)
{
    for (size_t v = 0; v < cmh_config_nvars; v++) {
        const struct cmh_config_var *var = &cmh_config_vars[v];
        int good = 0, bad = 0;
        for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++)
            good += strcmp(goods[i].var, var->name) == 0;
        for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++)
            bad += strcmp(bads[i].var, var->name) == 0;
        /* Free text has no bad value. */
        int needs_bad = var->type != CMH_CFG_STR || (var->flags & CMH_CFG_SUBNETS);
        if (!good || (needs_bad && !bad))
            fail_msg("%s lacks a %s case in this test", var->name, good ? "bad" : "good");
    }
}

static void defaults_match_the_documented_ones(void **state)
{
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    assert_true(cfg.use_cloudwatch);
    assert_false(cfg.use_prometheus);
    assert_int_equal(cfg.interval_ms, 30000);
    assert_null(cfg.aws_region);
    assert_null(cfg.cluster_id);
    assert_int_equal(cfg.log_level, CMH_LOG_INFO);
    assert_int_equal(cfg.log_format, CMH_LOG_TEXT);
    assert_int_equal(cfg.http_timeout_ms, 10000);
    assert_int_equal(cfg.targets.n, 0);
    assert_int_equal(cfg.ipamd_port, 61678);
    assert_int_equal(cfg.prometheus_port, 61681);
    assert_int_equal(cfg.shutdown_timeout_ms, 10000);
    assert_int_equal(cfg.stale_rounds, 2);
    assert_int_equal(cfg.prom_max_line, 65536);
    assert_string_equal(cfg.prometheus_address, "::");
    cmh_config_free(&cfg);
}

/* auto by default; each word is the mode the subnet watch acts on. */
static void subnet_prefix_metrics_is_auto_true_or_false(void **state)
{
    static const struct {
        const char *entry;
        int want;
    } cases[] = {{"SUBNET_PREFIX_METRICS=", CMH_PREFIX_METRICS_AUTO},
                 {"SUBNET_PREFIX_METRICS=auto", CMH_PREFIX_METRICS_AUTO},
                 {"SUBNET_PREFIX_METRICS=true", CMH_PREFIX_METRICS_ON},
                 {"SUBNET_PREFIX_METRICS=FALSE", CMH_PREFIX_METRICS_OFF}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cmh_config cfg;
        char err[CMH_CONFIG_ERR_MAX];
        char *env[] = {(char *)cases[i].entry, NULL};
        assert_int_equal(cmh_config_load(&cfg, env, err), 0);
        if (cfg.subnet_prefix_metrics != cases[i].want)
            fail_msg("%s: mode %d, expected %d", cases[i].entry, cfg.subnet_prefix_metrics,
                     cases[i].want);
        cmh_config_free(&cfg);
    }
}

static void empty_value_counts_as_unset(void **state)
{
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {"METRIC_UPDATE_INTERVAL=", "USE_CLOUDWATCH=", NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    assert_int_equal(cfg.interval_ms, 30000);
    assert_true(cfg.use_cloudwatch);
    cmh_config_free(&cfg);
}

static void target_without_port_takes_ipamd_port_whatever_the_order(void **state)
{
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {"SCRAPE_TARGETS=node-a=127.0.0.9", "IPAMD_METRICS_PORT=9999", NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    assert_int_equal(cfg.targets.n, 1);
    assert_string_equal(cfg.targets.v[0].name, "node-a");
    assert_string_equal(cfg.targets.v[0].host, "127.0.0.9");
    assert_int_equal(cfg.targets.v[0].port, 9999);
    cmh_config_free(&cfg);
}

static void more_static_targets_than_scrape_max_nodes_is_an_error(void **state)
{
    (void)state;
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {"SCRAPE_TARGETS=127.0.0.2,127.0.0.3,127.0.0.4", "SCRAPE_MAX_NODES=2", NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), -EINVAL);
    assert_non_null(strstr(err, "3 targets, more than SCRAPE_MAX_NODES=2"));
    env[1] = "SCRAPE_MAX_NODES=3";
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    assert_int_equal(cfg.targets.n, 3);
    cmh_config_free(&cfg);
}

struct seen {
    char names[8][64];
    char sugg[8][64];
    int n;
};

static void record(void *arg, const char *name, const char *suggestion)
{
    struct seen *s = arg;
    assert_true(s->n < 8);
    snprintf(s->names[s->n], 64, "%s", name);
    snprintf(s->sugg[s->n], 64, "%s", suggestion ? suggestion : "");
    s->n++;
}

static void unknown_variables_with_our_prefixes_are_reported_with_a_suggestion(void **state)
{
    char *env[] = {"METRIC_UPDATE_INTERVALS=5",
                   "USE_CLOUDWATH=no",
                   "SCRAPE_ZZZZZZZZZZZZZ=1",
                   "HOME=/root",
                   "AWS_REGION=x",
                   "PATH=/bin",
                   "USE_PROMETHEUS=yes",
                   NULL};
    struct seen s = {.n = 0};
    cmh_config_unknown(env, record, &s);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.names[0], "METRIC_UPDATE_INTERVALS");
    assert_string_equal(s.sugg[0], "METRIC_UPDATE_INTERVAL");
    assert_string_equal(s.names[1], "USE_CLOUDWATH");
    assert_string_equal(s.sugg[1], "USE_CLOUDWATCH");
    assert_string_equal(s.names[2], "SCRAPE_ZZZZZZZZZZZZZ");
    assert_string_equal(s.sugg[2], "");
}

static void effective_configuration_is_one_line_with_every_variable(void **state)
{
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {"AWS_CLUSTER_ID=c1", NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct cmh_log log;
    cmh_log_init(&log, CMH_LOG_INFO, CMH_LOG_TEXT, fds[1]);
    cmh_config_log(&cfg, &log);
    close(fds[1]);
    char buf[8192];
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strchr(buf, '\n'));
    assert_int_equal(strchr(buf, '\n') - buf, n - 1); /* exactly one line */
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        char key[80];
        snprintf(key, sizeof key, " %s=", cmh_config_vars[i].name);
        if (strstr(buf, key) == NULL)
            fail_msg("%s missing from: %s", cmh_config_vars[i].name, buf);
    }
    assert_non_null(strstr(buf, "AWS_CLUSTER_ID=c1"));
    cmh_config_free(&cfg);
}

static void subnet_ids_are_subnet_dash_8_to_17_lowercase_hex_comma_separated(void **state)
{
    (void)state;
    char err[128];
    assert_int_equal(cmh_config_check_subnet_ids("subnet-0a1b2c3d", err, sizeof err), 1);
    assert_int_equal(
        cmh_config_check_subnet_ids("subnet-0a1b2c3d,subnet-0123456789abcdef0", err, sizeof err),
        2);
    static const char *const bad[] = {"",
                                      "subnet-",
                                      "subnet-0A1B2C3D",
                                      "subnet-0a1b2c3",
                                      "subnet-0a1b2c3d,",
                                      "sg-0a1b2c3d",
                                      "subnet-0a1b2c3d 1",
                                      "subnet-0123456789abcdef01"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cmh_config_check_subnet_ids(bad[i], err, sizeof err) != -EINVAL)
            fail_msg("'%s' accepted", bad[i]);
}

static void help_lists_every_variable_with_default_and_accepted_values(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cmh_config_print_help(f);
    fclose(f);
    for (size_t i = 0; i < cmh_config_nvars; i++) {
        assert_non_null(strstr(text, cmh_config_vars[i].name));
        assert_non_null(strstr(text, cmh_config_vars[i].help));
    }
    assert_non_null(strstr(text, "METRIC_UPDATE_INTERVAL (duration, default: 30)"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_good_value_loads_and_reads_back),
        cmocka_unit_test(every_bad_value_is_rejected_naming_variable_value_and_accepted),
        cmocka_unit_test(every_variable_has_a_good_and_a_bad_case),
        cmocka_unit_test(defaults_match_the_documented_ones),
        cmocka_unit_test(subnet_prefix_metrics_is_auto_true_or_false),
        cmocka_unit_test(empty_value_counts_as_unset),
        cmocka_unit_test(target_without_port_takes_ipamd_port_whatever_the_order),
        cmocka_unit_test(more_static_targets_than_scrape_max_nodes_is_an_error),
        cmocka_unit_test(unknown_variables_with_our_prefixes_are_reported_with_a_suggestion),
        cmocka_unit_test(near_miss_of_a_destination_variable_is_refused_naming_it),
        cmocka_unit_test(effective_configuration_is_one_line_with_every_variable),
        cmocka_unit_test(subnet_ids_are_subnet_dash_8_to_17_lowercase_hex_comma_separated),
        cmocka_unit_test(help_lists_every_variable_with_default_and_accepted_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
