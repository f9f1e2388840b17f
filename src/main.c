/* Entry point: the daemon, plus the commands for people (--help, --version, ...). */
#include "cmh/core/config.h"
#include "cmh/daemon.h"
#include "cmh/cmd/inspect.h"
#include "cmh/cmd/parse.h"
#include "cmh/core/log.h"
#include "cmh/round/metrics.h"
#include "cmh/cmd/report.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out, "Usage: cni-metrics-helper [help | --help | -h | version | --version | -v]\n"
                 "       cni-metrics-helper parse [FILE|-]   print the samples of an exposition\n"
                 "       cni-metrics-helper inspect [--json] FILE... [--then FILE...]\n"
                 "                                           datums a round would publish\n"
                 "       cni-metrics-helper report [--json]  one round, nothing published: IPs\n"
                 "                                           per node, subnet and AZ (exit 3:\n"
                 "                                           a REPORT_* threshold crossed)\n"
                 "\n"
                 "Scrapes the ipamD metrics of every node of an EKS cluster, aggregates the\n"
                 "IP/ENI picture of the cluster and publishes it to CloudWatch (namespace\n"
                 "Kubernetes, dimension CLUSTER_ID). Configured by environment variables only.\n"
                 "\n"
                 "Signals: SIGTERM or SIGINT stop gracefully (in-flight work gets\n"
                 "SHUTDOWN_TIMEOUT; a second one stops at once); SIGUSR1 runs a round now.\n"
                 "\n"
                 "Exit status: 0 after a graceful stop, 1 on a runtime failure, 2 on a bad\n"
                 "configuration or command line, 128+N after a second signal N.\n"
                 "\n");
    cmh_config_print_help(out);
}

struct warn_ctx {
    struct cmh_log *log;
};

static void warn_unknown(void *arg, const char *name, const char *suggestion)
{
    struct warn_ctx *w = arg;
    if (suggestion != NULL)
        CMH_LOG(w->log, CMH_LOG_WARN, "unknown variable ignored", CMH_STR("name", name),
                CMH_STR("did_you_mean", suggestion));
    else
        CMH_LOG(w->log, CMH_LOG_WARN, "unknown variable ignored", CMH_STR("name", name));
}

static int run_daemon(void)
{
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    int rc = cmh_config_load(&cfg, environ, err);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper: %s\n", err);
        return 2;
    }
    struct cmh_daemon *d = &(struct cmh_daemon){0};
    rc = cmh_daemon_init(d, &cfg, STDERR_FILENO);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper: cannot start the event loop: %s\n", uv_strerror(rc));
        cmh_config_free(&d->cfg);
        return 1;
    }
    struct warn_ctx w = {&d->log};
    cmh_config_unknown(environ, warn_unknown, &w);
    cmh_config_log(&d->cfg, &d->log);
    int rc2 = cmh_daemon_use_collector(d);
    if (rc2 != 0) {
        cmh_daemon_close(d);
        return rc2 == -EINVAL ? 2 : 1;
    }
    int status = cmh_daemon_run(d);
    cmh_daemon_close(d);
    return status;
}

int main(int argc, char **argv)
{
    /* A peer that closes while we write must be an error return, never a killed process. */
    signal(SIGPIPE, SIG_IGN);
    /* No core file and no ptrace by another process of the same user: the memory holds AWS
     * credentials and the service-account token. */
    if (prctl(PR_SET_DUMPABLE, 0L, 0L, 0L, 0L) != 0)
        fprintf(stderr, "cni-metrics-helper: cannot make the process non-dumpable: %s\n",
                strerror(errno));
    if (argc < 2)
        return run_daemon();
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-v") == 0 || strcmp(cmd, "version") == 0) {
        printf("cni-metrics-helper %s\n", CMH_VERSION);
        return 0;
    }
    /* The file tools end quietly when their reader goes away (`parse FILE | head`), as cat and
     * grep do: the default SIGPIPE action, not an error message. */
    if (strcmp(cmd, "inspect") == 0 || strcmp(cmd, "parse") == 0)
        signal(SIGPIPE, SIG_DFL);
    if (strcmp(cmd, "inspect") == 0) {
        const char *cluster = getenv("AWS_CLUSTER_ID");
        return cmh_inspect_cmd(argc - 1, argv + 1, cluster && *cluster ? cluster : "inspect");
    }
    if (strcmp(cmd, "report") == 0)
        return cmh_report_cmd(argc - 1, argv + 1, environ);
    if (strcmp(cmd, "parse") == 0)
        return cmh_parse_cmd(argc - 1, argv + 1);
    if (strcmp(cmd, "--help-config-markdown") == 0) {
        cmh_config_print_markdown(stdout);
        return 0;
    }
    if (strcmp(cmd, "--help-metrics-markdown") == 0) {
        cmh_metrics_print_markdown(stdout);
        return 0;
    }
    fprintf(stderr, "cni-metrics-helper: unknown argument '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
