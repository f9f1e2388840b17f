/* The `report` command for people and scripts: one round against the live cluster (the daemon's
 * discovery, listed once, and scraping; the subnet view with SUBNET_METRICS), nothing published,
 * then a table (or --json), nearest to exhaustion first. Thread: main only (owns its loop). */
#ifndef CMH_REPORT_H
#define CMH_REPORT_H

/* Exit statuses of the report command. */
enum cmh_report_status {
    CMH_REPORT_HEALTHY = 0,
    CMH_REPORT_ERROR = 1,     /* cluster unreachable, no target, every scrape failed, no subnets */
    CMH_REPORT_USAGE = 2,     /* bad command line or configuration */
    CMH_REPORT_THRESHOLD = 3, /* REPORT_MIN_FREE_IPS or REPORT_MAX_UTILIZATION crossed */
};

/* argv[0] is "report"; envp is the environment (configuration). Writes the report on stdout and
 * problems on stderr. Returns an enum cmh_report_status. */
int cmh_report_cmd(int argc, char **argv, char *const *envp);

#endif
