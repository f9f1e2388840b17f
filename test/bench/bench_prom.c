/* Parser throughput, side by side on the same in-memory bytes: our parse (all families, and with
 * the daemon's own interest filter, cmh_agg_want), and a memchr-only line splitter (the
 * memory-speed limit). bench_prom --gen FILE [MB]         writes the large multi-family exposition
 *   bench_prom NAME FILE [NAME FILE]   measures each input; prints a table and BENCH lines */
#include "cmh/scrape/prom.h"
#include "cmh/round/aggregate_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sink {
    double sum;
    uint64_t n;
};

static int on_sample(void *arg, const struct cmh_prom_sample *s)
{
    struct sink *k = arg;
    k->sum += s->value == s->value ? s->value : 0;
    k->n += s->nlabels + 1;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "bench_prom: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while (buf != NULL && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Deterministic, Prometheus-client-like exposition: counters, gauges, histograms and summaries with
 * 1 to 4 labels, HELP and TYPE for each family. */
static int gen(const char *path, double mb)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "bench_prom: %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint64_t x = 88172645463325252ull;
    static const char *const types[] = {"counter", "gauge", "histogram", "summary"};
    static const char *const le[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                     "0.5",   "1",    "2.5",   "5",    "10",  "+Inf"};
    long target = (long)(mb * 1e6);
    for (int fam = 0; ftell(f) < target; fam++) {
        const char *t = types[fam % 4];
        char name[64];
        snprintf(name, sizeof name, "app_subsystem%d_operation%d_%s", fam % 17, fam,
                 fam % 4 == 0   ? "requests_total"
                 : fam % 4 == 1 ? "queue_depth"
                 : fam % 4 == 2 ? "latency_seconds"
                                : "payload_bytes");
        fprintf(f, "# HELP %s Synthetic family %d for the parser benchmark.\n# TYPE %s %s\n", name,
                fam, name, t);
        int series = 5 + (int)(rnd(&x) % 20);
        for (int s = 0; s < series; s++) {
            char labels[256];
            snprintf(labels, sizeof labels,
                     "method=\"%s\",code=\"%d\",instance=\"10.0.%d.%d:8080\",path=\"/api/v1/r%d\"",
                     s % 2 ? "GET" : "POST", 200 + (int)(rnd(&x) % 5) * 100, s % 250,
                     (int)(rnd(&x) % 250), s);
            if (fam % 4 < 2) {
                fprintf(f, "%s{%s} %llu\n", name, labels, (unsigned long long)(rnd(&x) % 1000000));
            } else if (fam % 4 == 2) {
                unsigned long long c = 0;
                for (int b = 0; b < 12; b++) {
                    c += rnd(&x) % 100;
                    fprintf(f, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, le[b], c);
                }
                fprintf(f, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels,
                        (double)(rnd(&x) % 100000) / 997.0, name, labels, c);
            } else {
                fprintf(f, "%s{%s,quantile=\"0.5\"} %.9g\n", name, labels,
                        (double)(rnd(&x) % 100000) / 1e4);
                fprintf(f, "%s{%s,quantile=\"0.99\"} %.9g\n", name, labels,
                        (double)(rnd(&x) % 100000) / 1e3);
                fprintf(f, "%s_sum{%s} %.3f\n%s_count{%s} %llu\n", name, labels,
                        (double)(rnd(&x) % 10000000) / 7.0, name, labels,
                        (unsigned long long)(rnd(&x) % 100000));
            }
        }
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_prom: %s: write failed\n", path);
        return 1;
    }
    return 0;
}

/* Modes: everything; the daemon's filter on a body the parser has seen (a node scraped again); on
 * other nodes' variants of it in turn (a scrape slot of the daemon, which parses node after node);
 * with a fresh parser every time (the first scrape); and the memchr line splitter, over the scrape
 * and over the variants in turn. */
enum mode { M_FULL, M_FILTER, M_FLEET, M_COLD, M_MEMCHR, M_MEMCHR_FLEET, M_NMODES };
static const char *const mode_names[M_NMODES] = {"full", "filter", "fleet",
                                                 "cold", "memchr", "memchr-fleet"};

#define NVARIANTS 16

/* Other nodes' scrapes, made from one: every value different (its digits rotated), and in each
 * variant another one in 32 sample lines left out (a series that node does not have). */
struct variants {
    char *buf[NVARIANTS];
    size_t len[NVARIANTS];
    size_t total;
    unsigned next;
};

static int make_variants(struct variants *v, const char *buf, size_t len)
{
    memset(v, 0, sizeof *v);
    for (unsigned k = 0; k < NVARIANTS; k++) {
        char *o = malloc(len + 1);
        if (o == NULL)
            return -1;
        size_t n = 0, sample = 0;
        for (const char *q = buf, *e; q < buf + len; q = e + 1) {
            e = memchr(q, '\n', (size_t)(buf + len - q));
            if (e == NULL)
                e = buf + len - 1;
            size_t ll = (size_t)(e - q) + 1;
            if (q[0] != '#' && sample++ % 32 == k % 32)
                continue;
            const char *value = q[0] == '#' ? e : q + ll - 1;
            while (q[0] != '#' && value > q && value[-1] != ' ')
                value--;
            for (size_t i = 0; i < ll; i++) {
                char c = q[i];
                if (q + i >= value && c >= '0' && c <= '9')
                    c = (char)('0' + (c - '0' + k + 1) % 10);
                o[n++] = c;
            }
        }
        v->buf[k] = o;
        v->len[k] = n;
        v->total += n;
    }
    return 0;
}

static void free_variants(struct variants *v)
{
    for (unsigned k = 0; k < NVARIANTS; k++)
        free(v->buf[k]);
}

static struct variants fleet;

static void parse_one(struct cmh_prom_parser *p, const char *buf, size_t len)
{
    if (cmh_prom_feed(p, buf, len) != 0 || cmh_prom_finish(p) != 0) {
        fprintf(stderr, "bench_prom: parse error: line %lu: %s\n", cmh_prom_error(p)->line,
                cmh_prom_error(p)->reason);
        exit(1);
    }
}

/* One pass over buf (for M_FLEET the next variant); returns lines seen (memchr) or samples
 * delivered. */
static uint64_t pass(enum mode m, struct cmh_prom_parser *p, const char *buf, size_t len)
{
    if (m == M_COLD) {
        struct cmh_prom_parser fresh;
        if (cmh_prom_init(&fresh, &p->opt) != 0)
            exit(1);
        parse_one(&fresh, buf, len);
        uint64_t n = fresh.stats.samples;
        cmh_prom_close(&fresh);
        return n;
    }
    if (m == M_FLEET || m == M_MEMCHR_FLEET) {
        unsigned k = fleet.next++ % NVARIANTS;
        buf = fleet.buf[k];
        len = fleet.len[k];
    }
    if (m == M_MEMCHR || m == M_MEMCHR_FLEET) {
        uint64_t lines = 0;
        const char *s = buf, *e = buf + len, *nl;
        while (s < e && (nl = memchr(s, '\n', (size_t)(e - s))) != NULL) {
            lines++;
            s = nl + 1;
        }
        return lines;
    }
    cmh_prom_reset(p);
    parse_one(p, buf, len);
    return p->stats.samples;
}

/* Bytes one pass of mode m reads (the fleet's variants are a little shorter). */
static double pass_bytes(enum mode m, size_t len)
{
    return m == M_FLEET || m == M_MEMCHR_FLEET ? (double)fleet.total / NVARIANTS : (double)len;
}

/* Seconds per pass of each mode, best of 15 rounds. The modes run back to back inside every round
 * (~20 ms each), so a noisy neighbour on this shared machine slows all of them alike and the ratios
 * compare like with like; the best only drops noise. */
static void measure(double best[M_NMODES], struct cmh_prom_parser *ps[M_NMODES], const char *buf,
                    size_t len)
{
    uint64_t iters[M_NMODES];
    for (int m = 0; m < M_NMODES; m++) {
        double t0 = now_s();
        iters[m] = 0;
        while (now_s() - t0 < 0.02) {
            pass((enum mode)m, ps[m], buf, len);
            iters[m]++;
        }
        best[m] = 1e30;
    }
    for (int r = 0; r < 15; r++) {
        for (int m = 0; m < M_NMODES; m++) {
            double a = now_s();
            for (uint64_t i = 0; i < iters[m]; i++)
                pass((enum mode)m, ps[m], buf, len);
            double per = (now_s() - a) / (double)iters[m];
            if (per < best[m])
                best[m] = per;
        }
    }
}

/* One full parse of a file streamed in 64 KiB reads, as the scraper feeds socket reads; no output.
 * For wall-time comparison with `promtool check metrics`, process against process. */
static int parse_file(const char *path)
{
    struct sink sink = {0, 0};
    struct cmh_prom_options opt = {.on_sample = on_sample, .arg = &sink};
    struct cmh_prom_parser p;
    FILE *f = fopen(path, "rb");
    static char buf[65536];
    if (f == NULL || cmh_prom_init(&p, &opt) != 0)
        return 1;
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, f)) > 0)
        rc = cmh_prom_feed(&p, buf, n);
    if (rc == 0)
        rc = cmh_prom_finish(&p);
    fclose(f);
    printf("samples=%llu rc=%d\n", (unsigned long long)p.stats.samples, rc);
    cmh_prom_close(&p);
    return rc != 0;
}

/* A fixed number of passes of one mode, for instruction counts under callgrind. */
static int passes(const char *mode, unsigned long n, const char *path)
{
    struct sink sink = {0, 0};
    struct cmh_prom_options opt = {.on_sample = on_sample, .arg = &sink};
    enum mode m = M_NMODES;
    for (int i = 0; i < M_NMODES; i++)
        if (strcmp(mode, mode_names[i]) == 0)
            m = (enum mode)i;
    if (m == M_NMODES)
        return 2;
    if (m != M_FULL)
        opt.want = cmh_agg_want; /* the daemon's own interest filter */
    size_t len;
    char *buf = read_all(path, &len);
    struct cmh_prom_parser p;
    if (buf == NULL || make_variants(&fleet, buf, len) != 0 || cmh_prom_init(&p, &opt) != 0)
        return 1;
    uint64_t lines = pass(M_MEMCHR, NULL, buf, len);
    for (unsigned long i = 0; i < n; i++)
        pass(m, &p, buf, len);
    printf("passes=%lu lines_per_pass=%llu bytes_per_pass=%.0f\n", n, (unsigned long long)lines,
           pass_bytes(m, len));
    cmh_prom_close(&p);
    free_variants(&fleet);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--gen") == 0)
        return gen(argv[2], argc >= 4 ? strtod(argv[3], NULL) : 8.0);
    if (argc == 3 && strcmp(argv[1], "--parse-file") == 0)
        return parse_file(argv[2]);
    if (argc == 5 && strcmp(argv[1], "--passes") == 0)
        return passes(argv[2], strtoul(argv[3], NULL, 10), argv[4]);
    if (argc < 3 || (argc - 1) % 2 != 0) {
        fprintf(stderr,
                "usage: bench_prom --gen FILE [MB] | bench_prom NAME FILE [NAME FILE...]\n");
        return 2;
    }
    struct sink sink = {0, 0};
    struct cmh_prom_options full = {.on_sample = on_sample, .arg = &sink};
    struct cmh_prom_options filt = full;
    filt.want = cmh_agg_want; /* the daemon's own interest filter (src/round/aggregate.c) */
    struct cmh_prom_parser pp[M_MEMCHR];
    struct cmh_prom_parser *ps[M_NMODES] = {&pp[M_FULL], &pp[M_FILTER], &pp[M_FLEET],
                                            &pp[M_COLD], NULL,          NULL};
    for (int m = 0; m < M_MEMCHR; m++)
        if (cmh_prom_init(&pp[m], m == M_FULL ? &full : &filt) != 0)
            return 1;
    printf("%-8s %-12s %9s %10s %10s %12s %9s\n", "input", "mode", "bytes", "lines", "MB/s",
           "ns/line", "vs memchr");
    for (int i = 1; i + 1 < argc; i += 2) {
        size_t len;
        char *buf = read_all(argv[i + 1], &len);
        if (buf == NULL || make_variants(&fleet, buf, len) != 0)
            return 1;
        uint64_t lines = pass(M_MEMCHR, NULL, buf, len);
        uint64_t wanted = pass(M_FILTER, ps[M_FILTER], buf, len);
        uint64_t all = pass(M_FULL, ps[M_FULL], buf, len);
        double ts[M_NMODES];
        measure(ts, ps, buf, len);
        /* Compared per byte with the splitter over the same bytes: the fleet's 16 variants are a
         * little shorter, and do not all fit the first-level cache as one scrape does. */
        for (int m = 0; m < M_NMODES; m++) {
            double bytes = pass_bytes((enum mode)m, len);
            int base = m == M_FLEET || m == M_MEMCHR_FLEET ? M_MEMCHR_FLEET : M_MEMCHR;
            double ratio = ts[m] / bytes / (ts[base] / pass_bytes((enum mode)base, len));
            printf("%-8s %-12s %9.0f %10llu %10.0f %12.1f %8.2fx\n", argv[i], mode_names[m], bytes,
                   (unsigned long long)lines, bytes / ts[m] / 1e6, ts[m] * 1e9 / (double)lines,
                   ratio);
            printf("BENCH prom input=%s mode=%s bytes=%.0f lines=%llu mb_s=%.1f ns_per_line=%.2f "
                   "ratio_vs_memchr=%.3f\n",
                   argv[i], mode_names[m], bytes, (unsigned long long)lines, bytes / ts[m] / 1e6,
                   ts[m] * 1e9 / (double)lines, ratio);
        }
        printf("  (samples: %llu of %llu delivered with the filter)\n", (unsigned long long)wanted,
               (unsigned long long)all);
        free_variants(&fleet);
        free(buf);
    }
    for (int m = 0; m < M_MEMCHR; m++)
        cmh_prom_close(&pp[m]);
    return sink.n == 0;
}
