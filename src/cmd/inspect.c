/* The `inspect` command: files as node scrapes, through the same parser and aggregator as the
 * daemon, printing the datums a round would publish. No I/O but the files and stdout. */
#include "cmh/cmd/inspect.h"

#include "cmh/round/aggregate.h"
#include "cmh/core/alloc.h"
#include "cmh/round/datum.h"
#include "cmh/core/log.h"
#include "cmh/scrape/prom.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: cni-metrics-helper inspect [--json] FILE... [--then FILE...]...\n"
            "Treats each FILE as one node's /metrics scrape and prints the datums one round\n"
            "would publish. Counters need two rounds: after --then, the same positions are the\n"
            "same nodes one round later, and the datums of the last round are printed.\n");
}

/* Parses path as the scrape of node; commits it, or records the node as failed. */
static int scrape_file(struct cmh_agg *a, struct cmh_prom_parser *p, struct cmh_agg_scrape *s,
                       const char *node, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "inspect: %s: %s\n", path, strerror(errno));
        return -1;
    }
    cmh_prom_reset(p);
    cmh_agg_scrape_reset(s);
    char buf[65536];
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, f)) > 0)
        rc = cmh_prom_feed(p, buf, n);
    fclose(f);
    if (rc == 0)
        rc = cmh_prom_finish(p);
    if (rc == 0)
        rc = cmh_agg_commit(a, node, s);
    if (rc != 0) {
        const struct cmh_prom_error *e = cmh_prom_error(p);
        if (e->code != 0)
            fprintf(stderr, "inspect: %s: line %lu: %s (node counted as failed)\n", path, e->line,
                    e->reason);
        else
            fprintf(stderr, "inspect: %s: %s (node counted as failed)\n", path, s->reason);
        cmh_agg_fail(a, node);
    }
    return 0;
}

static void print_table(const struct cmh_agg *a)
{
    printf("%-28s %-13s %s\n", "METRIC", "UNIT", "VALUE");
    for (size_t i = 0; i < a->datums.n; i++) {
        const struct cmh_datum *d = &a->datums.v[i];
        char v[4][40];
        if (d->kind == CMH_DATUM_VALUE) {
            cmh_fmt_double(v[0], sizeof v[0], d->value);
            printf("%-28s %-13s %s\n", d->metric, d->unit, v[0]);
        } else {
            cmh_fmt_double(v[0], sizeof v[0], d->count);
            cmh_fmt_double(v[1], sizeof v[1], d->sum);
            cmh_fmt_double(v[2], sizeof v[2], d->min);
            cmh_fmt_double(v[3], sizeof v[3], d->max);
            printf("%-28s %-13s count=%s sum=%s min=%s max=%s\n", d->metric, d->unit, v[0], v[1],
                   v[2], v[3]);
        }
    }
    printf("\nnodes: %u fresh, %u failed (%u stale)\n", a->last.fresh, a->last.failed,
           a->last.stale);
}

static void print_json(const struct cmh_agg *a)
{
    printf("[");
    for (size_t i = 0; i < a->datums.n; i++) {
        const struct cmh_datum *d = &a->datums.v[i];
        char dims[1024], ts[32], v[4][40];
        if (cmh_datum_dims_json(d, dims, sizeof dims) < 0)
            snprintf(dims, sizeof dims, "{}");
        cmh_fmt_rfc3339(ts, sizeof ts, d->timestamp_ms);
        printf("%s\n  {\"metric\":\"%s\",\"dimensions\":%s,\"timestamp\":\"%s\",\"unit\":\"%s\",",
               i ? "," : "", d->metric, dims, ts, d->unit);
        if (d->kind == CMH_DATUM_VALUE) {
            cmh_fmt_double(v[0], sizeof v[0], d->value);
            printf("\"value\":%s}", v[0]);
        } else {
            cmh_fmt_double(v[0], sizeof v[0], d->count);
            cmh_fmt_double(v[1], sizeof v[1], d->sum);
            cmh_fmt_double(v[2], sizeof v[2], d->min);
            cmh_fmt_double(v[3], sizeof v[3], d->max);
            printf("\"statistics\":{\"sample_count\":%s,\"sum\":%s,\"min\":%s,\"max\":%s}}", v[0],
                   v[1], v[2], v[3]);
        }
    }
    printf("\n]\n");
}

int cmh_inspect_cmd(int argc, char **argv, const char *cluster_id)
{
    int json = 0, rc = 2;
    int first = 1;
    while (first < argc && argv[first][0] == '-' && strcmp(argv[first], "--then") != 0) {
        if (strcmp(argv[first], "--json") == 0)
            json = 1;
        else if (strcmp(argv[first], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "inspect: unknown option '%s'\n", argv[first]);
            usage(stderr);
            return 2;
        }
        first++;
    }
    if (first >= argc || strcmp(argv[first], "--then") == 0) {
        usage(stderr);
        return 2;
    }
    struct cmh_agg a;
    struct cmh_agg_scrape s;
    struct cmh_prom_parser p;
    struct cmh_agg_opts ao = {.stale_rounds = 2, .max_series = 4096, .cluster_id = cluster_id};
    struct cmh_prom_options po;
    int have_agg = cmh_agg_init(&a, &ao) == 0;
    int have_scratch = have_agg && cmh_agg_scrape_init(&s, 4096) == 0;
    if (have_scratch)
        cmh_agg_prom_options(&po, &s);
    int have_parser = have_scratch && cmh_prom_init(&p, &po) == 0;
    if (!have_parser) {
        fprintf(stderr, "inspect: out of memory\n");
        rc = 1;
        goto out;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t start = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    uint64_t round = 1;
    int i = first;
    while (i < argc) {
        /* Rounds are METRIC_UPDATE_INTERVAL apart in the daemon; 30 s here. */
        cmh_agg_round_begin(&a, round, start + (int64_t)(round - 1) * 30000);
        int node = 0;
        for (; i < argc && strcmp(argv[i], "--then") != 0; i++) {
            char name[32];
            snprintf(name, sizeof name, "node-%d", ++node);
            if (scrape_file(&a, &p, &s, name, argv[i]) != 0)
                goto out;
        }
        if (cmh_agg_round_finish(&a) != 0) {
            fprintf(stderr, "inspect: out of memory\n");
            rc = 1;
            goto out;
        }
        if (i < argc)
            i++; /* past --then */
        round++;
    }
    if (json)
        print_json(&a);
    else
        print_table(&a);
    rc = 0;
out:
    if (have_parser)
        cmh_prom_close(&p);
    if (have_scratch)
        cmh_agg_scrape_close(&s);
    if (have_agg)
        cmh_agg_close(&a);
    return rc;
}
