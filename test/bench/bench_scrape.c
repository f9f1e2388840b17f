/* bench_scrape: runs scrape rounds of the real engine (src/scrape/scrape.c) with the real
 * Prometheus parser (src/scrape/prom.c) as the consumer, against a target list (ipamd_sim
 * --targets-out). Used by the benchmark (test/bench/scrape.bench.sh) and by the integration tests
 * (test/integration/).
 *
 *   bench_scrape --targets FILE [--rounds R] [--concurrency C] [--timeout-ms T]
 *                [--round-timeout-ms T] [--jitter-ms J] [--keepalive 0|1] [--max-body B]
 *                [--consumer prom|prom-all|count] [--control IP:PORT] [--advance 0|1] [--gap-ms G]
 *                [--records FILE] [--log-failures N] [--seed S] [--warmup R] [--gzip 0|1]
 *
 * Per round it prints one line:
 *   ROUND r=N wall_s=… cpu_s=… ok=… fail=… <result>=count… bytes=… connects=… reused=…
 *         retried=… peak_open=… gzip=… samples=… fds=… rss_kb=…
 * and at the end:
 *   SUMMARY rounds=N targets=… wall_s_avg=… cpu_s_avg=… cpu_us_per_target=… rss_mb=… …
 * (averages over the rounds after --warmup). With --control and --advance 1 it POSTs /advance to
 * ipamd_sim before every round but the first (outside the measured time). --consumer prom (the
 * default) parses every body and keeps the families the daemon uses (awscni_*,
 * process_start_time_seconds), prom-all keeps every family, count only counts body bytes. --records
 * writes one line per target and round: "round name result http_status bytes duration_us reused
 * samples". --gzip 0 sends no Accept-Encoding (default 1, as SCRAPE_GZIP). */
#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/log.h"
#include "cmh/scrape/prom_int.h"
#include "cmh/scrape/scrape.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

struct slot {
    struct cmh_prom_parser parser;
    struct bench *b;
    size_t target;
    uint64_t bytes;
    struct slot *next;
};

struct bench {
    uv_loop_t loop;
    struct cmh_log log;
    struct cmh_scraper scraper;
    struct cmh_scrape_target *targets;
    char **names;
    size_t n;
    int use_prom;
    int want_filter; /* parse only the families the daemon uses */
    struct slot *free_slots;
    size_t nslots;
    uint64_t *samples; /* per target, last round */
    uint64_t round_samples;
    unsigned rounds, warmup, done_rounds;
    int advance;
    char control[64];
    uint64_t gap_ms;
    FILE *records;
    uv_timer_t gap_timer;
    struct rusage ru0;
    uint64_t t0;
    double sum_wall, sum_cpu, sum_bytes;
    unsigned measured;
    int failed;
};

static int on_sample(void *arg, const struct cmh_prom_sample *s)
{
    struct slot *sl = arg;
    sl->b->samples[sl->target]++;
    return 0;
}

static int c_begin(void *arg, size_t target, void **ctx)
{
    struct bench *b = arg;
    struct slot *sl = b->free_slots;
    if (sl != NULL) {
        b->free_slots = sl->next;
    } else {
        sl = cmh_calloc(1, sizeof *sl);
        if (sl == NULL)
            return -1;
        if (b->use_prom) {
            /* What the daemon keeps: ipamD's own families and the restart marker. */
            static const char *const wanted[] = {"awscni_*", "process_start_time_seconds"};
            static const struct cmh_prom_names names = {wanted, 2};
            struct cmh_prom_options o = {.max_line = 4096, .on_sample = on_sample, .arg = sl};
            if (b->want_filter) {
                o.want = cmh_prom_want_names;
                o.want_arg = (void *)&names;
            }
            if (cmh_prom_init(&sl->parser, &o) != 0) {
                cmh_free(sl);
                return -1;
            }
        }
        sl->b = b;
        b->nslots++;
    }
    if (b->use_prom)
        cmh_prom_reset(&sl->parser);
    sl->target = target;
    sl->bytes = 0;
    b->samples[target] = 0;
    *ctx = sl;
    return 0;
}

static int c_body(void *ctx, const char *buf, size_t len)
{
    struct slot *sl = ctx;
    sl->bytes += len;
    if (sl->b->use_prom)
        return cmh_prom_feed(&sl->parser, buf, len) == 0 ? 0 : -1;
    return 0;
}

static int c_end(void *ctx, enum cmh_scrape_result r)
{
    struct slot *sl = ctx;
    struct bench *b = sl->b;
    int rc = 0;
    if (r == CMH_SCRAPE_OK && b->use_prom)
        rc = cmh_prom_finish(&sl->parser) == 0 ? 0 : -1;
    if (r != CMH_SCRAPE_OK || rc != 0)
        b->samples[sl->target] = 0;
    sl->next = b->free_slots;
    b->free_slots = sl;
    return rc;
}

static unsigned count_fds(void)
{
    unsigned n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n > 3 ? n - 3 : 0;
}

static long rss_now_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2)
        res = 0;
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Blocking POST /advance to the simulator; outside the measured part of a round. */
static int sim_advance(const char *control)
{
    char ip[64];
    const char *colon = strrchr(control, ':');
    if (colon == NULL || (size_t)(colon - control) >= sizeof ip)
        return -1;
    memcpy(ip, control, (size_t)(colon - control));
    ip[colon - control] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || port == 0 || port > 65535)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int rc = -1;
    static const char req[] = "POST /advance HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\n\r\n";
    char buf[1024];
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        ssize_t n, tot = 0;
        while ((n = read(fd, buf + tot, sizeof buf - 1 - (size_t)tot)) > 0)
            tot += n;
        buf[tot] = '\0';
        rc = strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
    }
    close(fd);
    return rc;
}

static void start_round(struct bench *b);

static void on_gap(uv_timer_t *t)
{
    struct bench *b = container_of(t, struct bench, gap_timer);
    start_round(b);
}

static void on_closed(struct cmh_scraper *s)
{
    struct bench *b = container_of(s, struct bench, scraper);
    uv_close((uv_handle_t *)&b->gap_timer, NULL);
}

static void on_done(struct cmh_scraper *s, const struct cmh_scrape_round_stats *st, void *arg)
{
    struct bench *b = arg;
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu =
        tv_s(ru1.ru_utime) - tv_s(b->ru0.ru_utime) + tv_s(ru1.ru_stime) - tv_s(b->ru0.ru_stime);
    double wall = (double)(uv_hrtime() - b->t0) / 1e9;
    b->done_rounds++;
    uint64_t samples = 0;
    for (size_t i = 0; i < b->n; i++)
        samples += b->samples[i];
    printf("ROUND r=%u wall_s=%.4f cpu_s=%.4f ok=%zu fail=%zu", b->done_rounds, wall, cpu,
           st->count[CMH_SCRAPE_OK], st->targets - st->count[CMH_SCRAPE_OK]);
    for (int r = 1; r < CMH_SCRAPE_NRESULTS; r++)
        if (st->count[r] != 0)
            printf(" %s=%zu", cmh_scrape_result_name((enum cmh_scrape_result)r), st->count[r]);
    printf(" bytes=%" PRIu64 " connects=%zu reused=%zu retried=%zu peak_open=%u gzip=%zu"
           " samples=%" PRIu64 " fds=%u rss_kb=%ld\n",
           st->bytes, st->connects, st->reused, st->retried, st->peak_open, st->gzip, samples,
           count_fds(), rss_now_kb());
    fflush(stdout);
    if (b->records != NULL) {
        size_t n;
        const struct cmh_scrape_record *rec = cmh_scraper_records(s, &n);
        for (size_t i = 0; i < n; i++)
            fprintf(b->records, "%u %s %s %u %u %u %u %" PRIu64 "\n", b->done_rounds, b->names[i],
                    cmh_scrape_result_name((enum cmh_scrape_result)rec[i].result),
                    rec[i].http_status, rec[i].bytes, rec[i].duration_us, rec[i].reused,
                    b->samples[i]);
        fflush(b->records);
    }
    if (b->done_rounds > b->warmup) {
        b->sum_wall += wall;
        b->sum_cpu += cpu;
        b->sum_bytes += (double)st->bytes;
        b->measured++;
    }
    if (b->done_rounds >= b->rounds) {
        cmh_scraper_close(&b->scraper, on_closed);
        return;
    }
    if (b->gap_ms > 0)
        uv_timer_start(&b->gap_timer, on_gap, b->gap_ms, 0);
    else
        start_round(b);
}

static void start_round(struct bench *b)
{
    if (b->advance && b->done_rounds > 0 && sim_advance(b->control) != 0) {
        fprintf(stderr, "bench_scrape: POST /advance to %s failed\n", b->control);
        b->failed = 1;
        cmh_scraper_close(&b->scraper, on_closed);
        return;
    }
    static const struct cmh_scrape_consumer consumer_proto = {NULL, c_begin, c_body, c_end};
    struct cmh_scrape_consumer c = consumer_proto;
    c.arg = b;
    getrusage(RUSAGE_SELF, &b->ru0);
    b->t0 = uv_hrtime();
    int rc = cmh_scraper_round(&b->scraper, b->targets, b->n, &c, on_done, b);
    if (rc != 0) {
        fprintf(stderr, "bench_scrape: round: %s\n", strerror(-rc));
        b->failed = 1;
        cmh_scraper_close(&b->scraper, on_closed);
    }
}

static int load_targets(struct bench *b, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t cap = 0;
    char name[128], ip[64];
    unsigned port;
    while (fscanf(f, "%127s %63s %u", name, ip, &port) == 3) {
        if (b->n == cap) {
            cap = cap ? cap * 2 : 1024;
            b->targets = cmh_reallocarray(b->targets, cap, sizeof *b->targets);
            b->names = cmh_reallocarray(b->names, cap, sizeof *b->names);
            if (b->targets == NULL || b->names == NULL)
                return -1;
        }
        b->names[b->n] = cmh_strdup(name);
        if (b->names[b->n] == NULL ||
            cmh_scrape_target_set(&b->targets[b->n], b->names[b->n], ip, (uint16_t)port) != 0)
            return -1;
        b->n++;
    }
    fclose(f);
    return 0;
}

static uint64_t num(const char *name, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        fprintf(stderr, "bench_scrape: bad %s '%s'\n", name, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    struct cmh_scrape_opts o;
    cmh_scrape_opts_default(&o);
    o.jitter_ms = 0;
    const char *targets = NULL, *records = NULL;
    b->rounds = 1;
    b->use_prom = 1;
    b->want_filter = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (strcmp(a, "--targets") == 0)
            targets = v;
        else if (strcmp(a, "--rounds") == 0)
            b->rounds = (unsigned)num(a, v);
        else if (strcmp(a, "--warmup") == 0)
            b->warmup = (unsigned)num(a, v);
        else if (strcmp(a, "--concurrency") == 0)
            o.concurrency = (unsigned)num(a, v);
        else if (strcmp(a, "--timeout-ms") == 0)
            o.timeout_ms = num(a, v);
        else if (strcmp(a, "--round-timeout-ms") == 0)
            o.round_timeout_ms = num(a, v);
        else if (strcmp(a, "--jitter-ms") == 0)
            o.jitter_ms = num(a, v);
        else if (strcmp(a, "--keepalive") == 0)
            o.keepalive = (int)num(a, v);
        else if (strcmp(a, "--gzip") == 0)
            o.gzip = (int)num(a, v);
        else if (strcmp(a, "--max-body") == 0)
            o.max_body = num(a, v);
        else if (strcmp(a, "--log-failures") == 0)
            o.log_failures = (unsigned)num(a, v);
        else if (strcmp(a, "--seed") == 0)
            o.seed = num(a, v);
        else if (strcmp(a, "--consumer") == 0) {
            b->use_prom = strcmp(v, "count") != 0;
            b->want_filter = strcmp(v, "prom-all") != 0;
        } else if (strcmp(a, "--control") == 0)
            snprintf(b->control, sizeof b->control, "%s", v);
        else if (strcmp(a, "--advance") == 0)
            b->advance = (int)num(a, v);
        else if (strcmp(a, "--gap-ms") == 0)
            b->gap_ms = num(a, v);
        else if (strcmp(a, "--records") == 0)
            records = v;
        else {
            fprintf(stderr, "bench_scrape: unknown option %s\n", a);
            return 2;
        }
    }
    if (targets == NULL || load_targets(b, targets) != 0 || b->n == 0) {
        fprintf(stderr, "bench_scrape: --targets FILE (\"name ip port\" lines) is required\n");
        return 2;
    }
    if (b->advance && b->control[0] == '\0') {
        fprintf(stderr, "bench_scrape: --advance needs --control\n");
        return 2;
    }
    if (records != NULL && (b->records = fopen(records, "w")) == NULL) {
        fprintf(stderr, "bench_scrape: cannot write %s\n", records);
        return 2;
    }
    b->samples = cmh_calloc(b->n, sizeof *b->samples);
    if (b->samples == NULL)
        return 3;
    cmh_log_init(&b->log, CMH_LOG_WARN, CMH_LOG_TEXT, 2);
    uv_loop_init(&b->loop);
    uv_timer_init(&b->loop, &b->gap_timer);
    if (cmh_scraper_init(&b->scraper, &b->loop, &o, &b->log) != 0)
        return 3;
    start_round(b);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&b->loop);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double avg_wall = b->measured ? b->sum_wall / b->measured : 0;
    double avg_cpu = b->measured ? b->sum_cpu / b->measured : 0;
    printf("SUMMARY rounds=%u measured=%u targets=%zu concurrency=%u keepalive=%d gzip=%d "
           "wall_s_avg=%.4f "
           "cpu_s_avg=%.4f cpu_us_per_target=%.2f bytes_avg=%.0f rss_mb=%.1f parsers=%zu "
           "loop_close=%d\n",
           b->done_rounds, b->measured, b->n, b->scraper.opts.concurrency, o.keepalive, o.gzip,
           avg_wall, avg_cpu, b->n ? avg_cpu * 1e6 / (double)b->n : 0,
           b->measured ? b->sum_bytes / b->measured : 0, (double)ru.ru_maxrss / 1024.0, b->nslots,
           lc);
    while (b->free_slots != NULL) {
        struct slot *sl = b->free_slots;
        b->free_slots = sl->next;
        if (b->use_prom)
            cmh_prom_close(&sl->parser);
        cmh_free(sl);
    }
    for (size_t i = 0; i < b->n; i++)
        cmh_free(b->names[i]);
    cmh_free(b->names);
    cmh_free(b->targets);
    cmh_free(b->samples);
    if (b->records != NULL)
        fclose(b->records);
    return b->failed || lc != 0 ? 1 : 0;
}
