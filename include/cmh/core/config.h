/* Configuration: every setting is an environment variable, defined once in the table in config.c,
 * read at start-up into one validated struct. Owned by the daemon; thread: the loop thread. */
#ifndef CMH_CONFIG_H
#define CMH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct cmh_log;

/* One static scrape target from SCRAPE_TARGETS. */
struct cmh_target {
    char *name; /* "name=" part, or "host:port" when none was given */
    char *host; /* IPv4/IPv6 literal or DNS name, without brackets */
    uint16_t port;
};

struct cmh_target_list {
    struct cmh_target *v;
    size_t n;
};

/* SUBNET_PREFIX_METRICS, in the order of the config table's words. */
enum cmh_prefix_metrics {
    CMH_PREFIX_METRICS_AUTO = 0, /* once a node reports IPv4 prefixes; a denied call stops it */
    CMH_PREFIX_METRICS_ON,       /* always */
    CMH_PREFIX_METRICS_OFF,      /* never */
};

struct cmh_config {
    bool use_cloudwatch;
    bool use_prometheus;
    bool prometheus_original_names; /* also the original helper's six awscni_ gauges */
    uint64_t interval_ms;
    char *aws_region;
    char *cluster_id;
    int log_level;  /* enum cmh_log_level */
    int log_format; /* enum cmh_log_format */
    uint64_t http_timeout_ms;
    char *aws_ca_bundle; /* PEM bundle for AWS HTTPS endpoints; NULL = the system store */
    struct cmh_target_list targets;
    uint64_t ipamd_port;
    uint64_t prometheus_port;
    uint64_t shutdown_timeout_ms;
    uint64_t stale_rounds;
    uint64_t prom_max_line;
    char *prometheus_address;
    /* Scrape engine (include/cmh/scrape/scrape.h; cmh_scrape_opts_from_config derives the rest). */
    uint64_t scrape_concurrency;
    uint64_t scrape_max_nodes;
    uint64_t scrape_timeout_ms;
    uint64_t scrape_round_timeout_ms; /* 0: derived from interval_ms */
    uint64_t scrape_max_body;
    uint64_t scrape_jitter_ms;
    bool scrape_keepalive;
    bool scrape_gzip;
    int scrape_mode;                   /* enum cmh_scrape_mode (include/cmh/scrape/scrape_mode.h) */
    uint64_t scrape_direct_recheck_ms; /* auto: a node on the proxy tries direct again after this */
    /* CloudWatch publisher (include/cmh/aws/cloudwatch.h; cmh_cloudwatch_opts_from_config). */
    char *cw_namespace;
    int cw_storage_resolution; /* index into {"60", "1"}: 0 = standard (60 s), 1 = high (1 s) */
    uint64_t cw_buffer_max_datums;
    uint64_t cw_max_attempts;
    uint64_t cw_max_age_ms;
    uint64_t cw_backoff_base_ms;
    uint64_t cw_backoff_cap_ms;
    /* Kubernetes discovery (include/cmh/k8s/discovery.h; cmh_discovery_opts_from_config). */
    char *k8s_namespace;
    char *k8s_label_selector;
    char *k8s_token_file;
    char *k8s_ca_file;
    char *k8s_api_url; /* report only: the API as given (kubectl proxy), or NULL */
    uint64_t k8s_watch_timeout_ms;
    uint64_t k8s_sync_timeout_ms; /* the first round waits this long at most for the pod list */
    /* Leader election (include/cmh/k8s/leader.h; cmh_leader_opts_from_config). */
    bool leader_election;
    char *leader_lease_name;
    uint64_t leader_lease_duration_ms;
    uint64_t leader_renew_deadline_ms;
    uint64_t leader_retry_period_ms;
    /* Subnet and AZ view (include/cmh/aws/ec2.h, include/cmh/round/subnets.h) and the report
     * command. */
    bool subnet_metrics;
    uint64_t subnet_interval_ms;
    char *subnet_ids; /* comma list of subnet-…; NULL = the cluster's (nodes' IPs, ENIConfigs) */
    /* Time to exhaustion and free /28 blocks (include/cmh/round/forecast.h,
     * include/cmh/round/blocks28.h). */
    uint64_t forecast_window_ms;
    int subnet_prefix_metrics; /* enum cmh_prefix_metrics */
    uint64_t subnet_prefix_interval_ms;
    uint64_t report_min_tte_ms; /* 0: never */
    bool cw_per_az;
    bool cw_per_node;
    uint64_t cw_per_node_max;
    uint64_t report_min_free_ips;
    uint64_t report_max_utilization; /* percent */
};

enum cmh_config_type {
    CMH_CFG_BOOL,     /* bool: yes/true/no/false, any case */
    CMH_CFG_UINT,     /* uint64_t in [min, max] */
    CMH_CFG_BYTES,    /* uint64_t bytes; digits with optional KiB/MiB/GiB suffix */
    CMH_CFG_DURATION, /* uint64_t ms; bare digits are seconds, or digits with ms/s/m */
    CMH_CFG_STR,      /* char *, owned; NULL when unset and no default */
    CMH_CFG_ENUM,     /* int index into words */
    CMH_CFG_TARGETS,  /* struct cmh_target_list */
};

#define CMH_CFG_SECRET   1u /* never logged: the effective-config line shows <redacted> */
#define CMH_CFG_READABLE 2u /* STR: a path; a file that cannot be read is a configuration error */
#define CMH_CFG_SUBNETS  4u /* STR: comma-separated subnet ids (cmh_config_check_subnet_ids) */
#define CMH_CFG_REGION   8u /* STR: an AWS region name (it builds endpoint host names) */

struct cmh_config_var {
    const char *name;
    enum cmh_config_type type;
    size_t offset;            /* of the field in struct cmh_config */
    const char *def;          /* default, as text parsed like a value; NULL or "" = unset */
    uint64_t min, max;        /* UINT, BYTES, DURATION (ms) */
    const char *const *words; /* ENUM: NULL-terminated */
    unsigned flags;
    const char *help;
};

/* The table, in the order --help and the README list it. */
extern const struct cmh_config_var cmh_config_vars[];
extern const size_t cmh_config_nvars;

/* Prefixes of our own variables: unknown names with them draw a warning (a likely typo). */
extern const char *const cmh_config_prefixes[];

/* Variables the daemon reads outside the table: the standard AWS SDK ones and what Kubernetes
 * sets. Each has a line of help for --help; a test derives the names from the source. */
struct cmh_config_other {
    const char *name;
    const char *help;
};
extern const struct cmh_config_other cmh_config_others[];
extern const size_t cmh_config_nothers;

#define CMH_CONFIG_ERR_MAX 512

/* The value of name in envp (a NULL-terminated "NAME=value" array, like environ; NULL: none), or
 * NULL when it is not there. The one lookup of an environment block: every module that is handed
 * one (the AWS settings, the Kubernetes API server, the node name) reads it through this. */
const char *cmh_env_get(char *const *envp, const char *name);

/* Fills cfg from envp (a NULL-terminated "NAME=value" array, like environ). An empty value counts
 * as unset. On a bad value returns -EINVAL with one line in err naming the variable, the value and
 * what is accepted; cfg is then freed. So that a typo never sends the numbers elsewhere, a set
 * variable one edit (or a letter case) away from one that decides where they go (AWS_CLUSTER_ID,
 * CW_NAMESPACE, AWS_REGION, ...) is refused the same way, naming the intended variable. On -ENOMEM
 * err says so. cfg is owned by the caller and released with cmh_config_free. */
int cmh_config_load(struct cmh_config *cfg, char *const *envp, char err[CMH_CONFIG_ERR_MAX]);
void cmh_config_free(struct cmh_config *cfg);

/* Calls cb for every variable in envp that has one of our prefixes but is not in the table, with
 * the closest known name (or NULL) as a suggestion. */
void cmh_config_unknown(char *const *envp,
                        void (*cb)(void *arg, const char *name, const char *suggestion), void *arg);

/* Logs the effective configuration as one event, secrets redacted. */
void cmh_config_log(const struct cmh_config *cfg, struct cmh_log *log);

/* Checks the syntax of a SUBNET_IDS value: comma-separated ids of the form subnet-[0-9a-f]{8,17}.
 * Returns the number of ids, or -EINVAL with the offending id in err. */
int cmh_config_check_subnet_ids(const char *ids, char *err, size_t errlen);

/* --help text and the README's configuration section, both generated from the table. */
void cmh_config_print_help(FILE *out);
void cmh_config_print_markdown(FILE *out);

#endif
