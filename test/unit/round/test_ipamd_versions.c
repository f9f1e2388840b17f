/* The VPC CNI releases we support: each release's ipamD family set (test/data/ipamd_versions, read
 * from the releases' source) is served as an exposition by two nodes for two rounds, through the
 * real parser and aggregator, and every family must end up published with the value the
 * generated series give, deliberately ignored, or counted as unknown: nothing is dropped silently.
 * Retyped families (v1.16-v1.19 declare some counters as gauges, still only ever increased) must
 * publish the same increase as when they are counters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/round/aggregate.h"
#include "cmh/scrape/prom.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DATA_DIR CMH_DATA_DIR "/ipamd_versions"

struct fam {
    char name[128];
    char type[16];   /* counter, gauge, summary, histogram: as the release declares it */
    char labels[96]; /* comma-separated, "-" for none */
    char update[16]; /* inc, level, observe: how ipamD updates it */
};

struct release {
    char version[32];
    struct fam f[64];
    size_t n;
};

static void load(const char *file, struct release *r)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", DATA_DIR, file);
    FILE *in = fopen(path, "r");
    if (in == NULL)
        fail_msg("cannot open %s", path);
    memset(r, 0, sizeof *r);
    snprintf(r->version, sizeof r->version, "%.*s", (int)(strlen(file) - 4), file);
    char line[512];
    while (fgets(line, sizeof line, in) != NULL) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        assert_true(r->n < sizeof r->f / sizeof r->f[0]);
        struct fam *f = &r->f[r->n++];
        if (sscanf(line, "%127s %15s %95s %15s", f->name, f->type, f->labels, f->update) != 4)
            fail_msg("%s: bad line %s", file, line);
    }
    fclose(in);
}

/* Series k of a family: with labels, every label is "s<k>"; two series per labelled family. */
static size_t nseries(const struct fam *f)
{
    return strcmp(f->labels, "-") == 0 ? 1 : 2;
}

static void label_set(char *buf, size_t len, const struct fam *f, size_t k, const char *extra)
{
    size_t used = 0;
    buf[0] = '\0';
    if (strcmp(f->labels, "-") != 0) {
        for (const char *l = f->labels; *l != '\0';) {
            size_t ll = strcspn(l, ",");
            used += (size_t)snprintf(buf + used, len - used, "%s%.*s=\"s%zu\"", used ? "," : "",
                                     (int)ll, l, k);
            l += ll + (l[ll] == ',');
        }
    }
    if (extra != NULL)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? "," : "", extra);
    if (used > 0) {
        memmove(buf + 1, buf, used + 1);
        buf[0] = '{';
        snprintf(buf + used + 1, len - used - 1, "}");
    }
}

/* The generated values: a level is 5 + k + node; an increased family starts at 100 + 10k and
 * grows by 3(k+1)(node+1) a round; an observed one has (k+1) calls of 2.5 ms a round. */
static double level(size_t k, int node)
{
    return 5.0 + (double)k + node;
}
static double counted(size_t k, int node, int round)
{
    return 100.0 + 10.0 * (double)k + 3.0 * (double)((k + 1) * (size_t)(node + 1)) * round;
}

static size_t render(char *buf, size_t len, const struct release *r, int node, int round)
{
    size_t used = (size_t)snprintf(buf, len,
                                   "# HELP process_start_time_seconds Start time.\n"
                                   "# TYPE process_start_time_seconds gauge\n"
                                   "process_start_time_seconds 1.6e9\n");
    for (size_t i = 0; i < r->n; i++) {
        const struct fam *f = &r->f[i];
        used += (size_t)snprintf(buf + used, len - used, "# HELP %s x\n# TYPE %s %s\n", f->name,
                                 f->name, f->type);
        for (size_t k = 0; k < nseries(f); k++) {
            char ls[256];
            if (strcmp(f->update, "observe") == 0) {
                double calls = (double)((k + 1) * (size_t)round);
                const char *b = strcmp(f->type, "histogram") == 0 ? "le=\"+Inf\"" : NULL;
                if (b != NULL) {
                    label_set(ls, sizeof ls, f, k, b);
                    used += (size_t)snprintf(buf + used, len - used, "%s_bucket%s %.17g\n", f->name,
                                             ls, calls);
                }
                label_set(ls, sizeof ls, f, k, NULL);
                used +=
                    (size_t)snprintf(buf + used, len - used, "%s_sum%s %.17g\n%s_count%s %.17g\n",
                                     f->name, ls, 2.5 * calls, f->name, ls, calls);
                continue;
            }
            label_set(ls, sizeof ls, f, k, NULL);
            double v = strcmp(f->update, "inc") == 0 ? counted(k, node, round) : level(k, node);
            used += (size_t)snprintf(buf + used, len - used, "%s%s %.17g\n", f->name, ls, v);
        }
        assert_true(used < len);
    }
    return used;
}

static const struct cmh_datum *find(const struct cmh_agg *a, const char *metric)
{
    for (size_t i = 0; i < a->datums.n; i++)
        if (a->datums.v[i].ndims == 1 && strcmp(a->datums.v[i].metric, metric) == 0)
            return &a->datums.v[i];
    return NULL;
}

static const struct fam *in_release(const struct release *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->f[i].name, name) == 0)
            return &r->f[i];
    return NULL;
}

static void check_release(const struct release *r)
{
    struct cmh_agg agg;
    struct cmh_agg_scrape s;
    struct cmh_prom_parser p;
    struct cmh_agg_opts o = {.stale_rounds = 2, .max_series = 256, .cluster_id = "c"};
    assert_int_equal(cmh_agg_init(&agg, &o), 0);
    assert_int_equal(cmh_agg_scrape_init(&s, 256), 0);
    struct cmh_prom_options po;
    cmh_agg_prom_options(&po, &s);
    assert_int_equal(cmh_prom_init(&p, &po), 0);
    static char body[65536];
    for (int round = 1; round <= 2; round++) {
        cmh_agg_round_begin(&agg, (uint64_t)round, 1700000000000 + round * 30000);
        for (int node = 0; node < 2; node++) {
            size_t len = render(body, sizeof body, r, node, round);
            cmh_prom_reset(&p);
            cmh_agg_scrape_reset(&s);
            int rc = cmh_prom_feed(&p, body, len);
            if (rc == 0)
                rc = cmh_prom_finish(&p);
            if (rc != 0)
                fail_msg("%s: parse: %s / %s", r->version, cmh_prom_error(&p)->reason, s.reason);
            char name[8];
            snprintf(name, sizeof name, "n%d", node);
            if (cmh_agg_commit(&agg, name, &s) != 0)
                fail_msg("%s: commit: %s", r->version, s.reason);
        }
        assert_int_equal(cmh_agg_round_finish(&agg), 0);
    }

    /* Every family of the release: published with the generated truth, ignored on purpose, or
     * counted as unknown. */
    size_t unknown = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct fam *f = &r->f[i];
        int id = cmh_metric_lookup(f->name, strlen(f->name));
        if (id < 0) {
            int named = 0;
            for (uint32_t k = 0; k < agg.nunknown; k++)
                named += strcmp(agg.unknown_names[k], f->name) == 0;
            if (named != 1)
                fail_msg("%s: %s is neither published nor counted as unknown", r->version, f->name);
            unknown++;
            continue;
        }
        const struct cmh_metric *m = &cmh_metrics[id];
        if (m->kind == CMH_METRIC_IGNORED) {
            assert_null(m->cw_name);
            continue;
        }
        const struct cmh_datum *d = find(&agg, m->cw_name);
        if (d == NULL)
            fail_msg("%s: %s (%s) not published", r->version, m->cw_name, f->name);
        double want = 0, want_count = 0;
        for (size_t k = 0; k < nseries(f); k++)
            for (int node = 0; node < 2; node++) {
                if (strcmp(f->update, "inc") == 0)
                    want += counted(k, node, 2) - counted(k, node, 1);
                else if (strcmp(f->update, "level") == 0)
                    want += level(k, node);
                else {
                    want += 2.5 * (double)(k + 1);
                    want_count += (double)(k + 1);
                }
            }
        switch (m->kind) {
        case CMH_METRIC_COUNTER:
            /* Published as a round's increase: right only for a family ipamD only increases,
             * whatever TYPE it declares. */
            if (strcmp(f->update, "inc") != 0)
                fail_msg("%s: %s is a %s updated as %s", r->version, f->name, f->type, f->update);
            break;
        case CMH_METRIC_GAUGE_SUM:
            if (strcmp(f->update, "level") != 0)
                fail_msg("%s: %s summed as a level but updated as %s", r->version, f->name,
                         f->update);
            break;
        case CMH_METRIC_LATENCY:
            assert_string_equal(f->update, "observe");
            assert_int_equal(d->kind, CMH_DATUM_STATS);
            if (d->sum != want || d->count != want_count)
                fail_msg("%s: %s sum %g count %g, want %g %g", r->version, m->cw_name, d->sum,
                         d->count, want, want_count);
            continue;
        default:
            fail_msg("%s: %s: unexpected kind", r->version, f->name);
        }
        if (d->value != want)
            fail_msg("%s: %s = %.17g, want %.17g", r->version, m->cw_name, d->value, want);
    }
    assert_int_equal(agg.unknown_total, 2 * 2 * unknown);

    /* Counters the release does not have at all are published as 0. */
    for (int id = 0; id < CMH_M_FAMILIES; id++) {
        if (cmh_metrics[id].kind != CMH_METRIC_COUNTER || in_release(r, cmh_metrics[id].family))
            continue;
        const struct cmh_datum *d = find(&agg, cmh_metrics[id].cw_name);
        if (d == NULL || d->value != 0)
            fail_msg("%s: %s, absent from the release, not published as 0", r->version,
                     cmh_metrics[id].cw_name);
    }
    /* Both nodes fresh, every datum finite. */
    assert_true(find(&agg, "scrapeTargetsFresh")->value == 2);
    for (size_t i = 0; i < agg.datums.n; i++)
        assert_true(isfinite(agg.datums.v[i].value));
    cmh_prom_close(&p);
    cmh_agg_scrape_close(&s);
    cmh_agg_close(&agg);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void every_vpc_cni_release_v1_12_to_v1_23_is_published_or_counted(void **state)
{
    (void)state;
    DIR *dir = opendir(DATA_DIR);
    assert_non_null(dir);
    char *files[64];
    size_t n = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".txt") == 0 && n < 64)
            files[n++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(files, n, sizeof files[0], by_name);
    /* Every minor release from v1.12 to v1.23 has a fixture. */
    for (int minor = 12; minor <= 23; minor++) {
        char prefix[16];
        int found = 0;
        snprintf(prefix, sizeof prefix, "v1.%d.", minor);
        for (size_t i = 0; i < n; i++)
            found += strncmp(files[i], prefix, strlen(prefix)) == 0;
        if (found == 0)
            fail_msg("no fixture for %sx", prefix);
    }
    static struct release r;
    for (size_t i = 0; i < n; i++) {
        load(files[i], &r);
        assert_true(r.n >= 19);
        check_release(&r);
        free(files[i]);
    }
}

/* The unknown-family path with a release newer than the table: a v1.23.0 family set plus two
 * families no release had. */
static void a_newer_release_with_new_families_is_counted_not_dropped(void **state)
{
    (void)state;
    static struct release r;
    load("v1.23.0.txt", &r);
    struct fam extra[] = {{"awscni_future_pool_ips", "gauge", "-", "level"},
                          {"awscni_future_error_count", "counter", "fn", "inc"}};
    for (size_t i = 0; i < 2; i++)
        r.f[r.n++] = extra[i];
    check_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_vpc_cni_release_v1_12_to_v1_23_is_published_or_counted),
        cmocka_unit_test(a_newer_release_with_new_families_is_counted_not_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
