/* The streaming Prometheus parser through its API: chunk-split invariance (random splits, 1-byte
 * feeds), the interest filter against a filter applied in the callbacks, family and suffix ties,
 * OpenMetrics tolerance, numbers, UTF-8, limits, errors and reuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_prom_transcript.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmh/scrape/prom_int.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Parses body whole with a fresh parser; the transcript is left in t. */
static int parse_whole(struct transcript *t, const char *body, size_t len, cmh_prom_want_cb *want,
                       void *want_arg, size_t max_line)
{
    struct cmh_prom_parser p;
    struct cmh_prom_options o = tr_options(t, want, want_arg, max_line);
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    int rc = tr_parse(&p, body, len, NULL, 0);
    tr_end(t, rc, &p);
    cmh_prom_close(&p);
    return rc;
}

static void assert_same(const struct transcript *a, const struct transcript *b, const char *what)
{
    if (a->len != b->len || memcmp(a->buf, b->buf, a->len) != 0) {
        print_error("transcripts differ for %s:\n--- whole\n%.*s\n--- split\n%.*s\n", what,
                    (int)a->len, a->buf, (int)b->len, b->buf);
        fail();
    }
}

/* A parser to reuse, recording into t, with the name filter set when filtered; its want callback.
 */
static cmh_prom_want_cb *reused_init(struct cmh_prom_parser *p, struct transcript *t, int filtered,
                                     struct cmh_prom_names *set)
{
    cmh_prom_want_cb *want = filtered ? cmh_prom_want_names : NULL;
    struct cmh_prom_options o = tr_options(t, want, set, 0);
    assert_int_equal(cmh_prom_init(p, &o), 0);
    return want;
}

/* Parses body on the reused parser p (into t, in chunks of sizes) and checks it gives exactly what
 * a fresh parser gives. */
static void check_reused(struct cmh_prom_parser *p, struct transcript *t, const char *body,
                         size_t len, cmh_prom_want_cb *want, void *want_arg, const size_t *sizes,
                         size_t nsizes, const char *what)
{
    struct transcript fresh = {0};
    parse_whole(&fresh, body, len, want, want_arg, 0);
    t->len = 0;
    cmh_prom_reset(p);
    tr_end(t, tr_parse(p, body, len, sizes, nsizes), p);
    assert_same(&fresh, t, what);
    tr_free(&fresh);
}

/* Whole, 1-byte, and `trials` random splits (on one reused parser) give the same transcript. */
static void check_invariance(const char *body, size_t len, const char *what, int trials,
                             uint64_t *seed, size_t max_line)
{
    struct transcript whole = {0};
    parse_whole(&whole, body, len, NULL, NULL, max_line);

    struct transcript t = {0};
    struct cmh_prom_parser p;
    struct cmh_prom_options o = tr_options(&t, NULL, NULL, max_line);
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    size_t one = 1;
    tr_end(&t, tr_parse(&p, body, len, &one, 1), &p);
    assert_same(&whole, &t, what);
    for (int k = 0; k < trials; k++) {
        size_t sizes[16];
        for (size_t i = 0; i < 16; i++) {
            uint64_t r = rng_next(seed);
            /* Mostly tiny pieces (splits inside tokens), sometimes large ones. */
            sizes[i] = (r & 3) == 0 ? 1 + (size_t)(r >> 8) % 4096 : 1 + (size_t)(r >> 8) % 17;
        }
        t.len = 0;
        cmh_prom_reset(&p);
        tr_end(&t, tr_parse(&p, body, len, sizes, 16), &p);
        assert_same(&whole, &t, what);
    }
    cmh_prom_close(&p);
    tr_free(&t);
    tr_free(&whole);
}

static void chunk_split_invariance_reference_cases_and_ipamd(void **state)
{
    (void)state;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/prom", CMH_DATA_DIR);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".txt") != 0)
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        char *body = read_file(path, &len);
        check_invariance(body, len, e->d_name, 60, &seed, 0);
        free(body);
        files++;
    }
    closedir(d);
    assert_int_equal(files, 66);
    const char *ipamd[] = {"cni_test1.data", "vpc-cni_docs-troubleshooting_metrics_excerpt.txt"};
    for (size_t i = 0; i < 2; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/ipamd/%s", CMH_DATA_DIR, ipamd[i]);
        size_t len;
        char *body = read_file(path, &len);
        check_invariance(body, len, ipamd[i], 200, &seed, 0);
        /* With a line cap that some lines exceed, the error is the same however the body is cut. */
        check_invariance(body, len, ipamd[i], 50, &seed, 90);
        free(body);
    }
}

/* Random expositions mixing every construct, valid and not: splitting must never matter. */
/* Lines random bodies are made of: every type, suffixes, families named like another's suffix,
 * escapes, UTF-8, blanks, comments, and malformed lines of many kinds. */
static const char *const pieces[] = {
    "# HELP f help \\\\ \\n text\n",
    "# TYPE f summary\n",
    "# TYPE f histogram\n",
    "# TYPE f counter\n",
    "# TYPE f_count gauge\n",
    "f{quantile=\"0.5\"} 1\n",
    "f_sum 2.5e3 1700000000000\n",
    "f_count 7\n",
    "f_bucket{le=\"+Inf\"} 3\n",
    "f_total 1\n",
    "f_created 12\n",
    "g{a=\"\\\"x\\\\\",b=\"\xc3\xa9\"} NaN\n",
    "g -Inf\n",
    "h{a=\"1\",a=\"2\"} 1\n",
    "{\"u.t.f\",\"l.n\"=\"v\"} 1\n",
    "   \t\n",
    "# EOF\n",
    "x 0x1p3\n",
    "y 1_000\n",
    "z{l=\"\xbd\"} 1\n",
    "w 1 2 3\n",
    "v{le=\"a\"} 1\n",
    "f{quantile=\"x\"} 1\n",
    "# UNIT f seconds\n",
    "q 123456789012345678901234567890.5e-3\n",
    "# HELP f F help.\n",
    "# HELP f F \\\\help\\n.\n",
    "# TYPE f gauge\n",
    "# HELP f_count Its own.\n",
    "f{quantile=\"0.9\",a=\"x\"} 2\n",
    "f{quantile=\"x\"} 2\n",
    "f_sum{a=\"x\"} 2.5e3 1700000000000\n",
    "f_count -7\n",
    "f_count {a=\"b\"} 7\n",
    "f_bucket{le=\"1\"} -3\n",
    "f 1\n",
    "f  1\n",
    "f {a=\"b\"} 1\n",
    "f{a=\"b\"}  1\n",
    "f{a=\"b\"} x\n",
    "f{a=\"b\",a=\"c\"} 1\n",
    "f{a=\"\\\"q\\\"\"} 1\n",
    "# HELP g G.\n",
    "# TYPE g gauge\n",
    "g{a=\"1\",b=\"2\"} 3\n",
    "g{a=\"1\",b=\"2\"} 4 5\n",
    "g{a=\"1\",b=\"2\"}\n",
    "g 1\n",
    "g_total 2\n",
    "# HELP g_total Own family.\n",
    "# TYPE g_total counter\n",
    "# TYPE g counter\n",
    "g\n",
    "g_sum 2\n",
    "\n",
    "# other comment\n",
    "h 1\n",
};
#define NPIECES (sizeof pieces / sizeof pieces[0])

static void chunk_split_invariance_random_bodies(void **state)
{
    (void)state;
    const size_t np = NPIECES;
    uint64_t seed = 12345;
    char body[4096];
    for (int n = 0; n < 400; n++) {
        size_t len = 0;
        int lines = 1 + (int)(rng_next(&seed) % 12);
        for (int l = 0; l < lines; l++) {
            const char *pc = pieces[rng_next(&seed) % np];
            size_t pl = strlen(pc);
            if (len + pl >= sizeof body)
                break;
            memcpy(body + len, pc, pl);
            len += pl;
        }
        if (rng_next(&seed) % 4 == 0 && len > 0)
            len--; /* sometimes no final newline */
        check_invariance(body, len, "random body", 10, &seed, 0);
    }
}

static const char *const wanted_list[] = {"awscni_aws_api_latency_ms", "awscni_eni_*",
                                          "process_start_time_seconds", "go_gc_duration_seconds"};

struct counting_filter {
    struct cmh_prom_names set;
    int calls;
};

static int counting_want(void *arg, const char *family, size_t len, enum cmh_prom_type type)
{
    struct counting_filter *c = arg;
    c->calls++;
    return cmh_prom_want_names(&c->set, family, len, type);
}

static void interest_filter_equals_filtering_in_callbacks(void **state)
{
    (void)state;
    char path[2048];
    snprintf(path, sizeof path, "%s/ipamd/cni_test1.data", CMH_DATA_DIR);
    size_t len;
    char *body = read_file(path, &len);
    struct counting_filter cf = {{wanted_list, 4}, 0};

    struct transcript oracle = {0};
    oracle.want = cmh_prom_want_names;
    oracle.want_arg = &cf.set;
    assert_int_equal(parse_whole(&oracle, body, len, NULL, NULL, 0), 0);

    struct transcript t = {0};
    struct cmh_prom_parser p;
    struct cmh_prom_options o = tr_options(&t, counting_want, &cf, 0);
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    assert_int_equal(tr_parse(&p, body, len, NULL, 0), 0);
    tr_end(&t, 0, &p);
    assert_same(&oracle, &t, "filtered ipamd");
    /* 55 latency lines, 3 eni lines, 7 gc lines, 1 start time; the rest skipped. */
    assert_int_equal(p.stats.samples, 55 + 2 + 7 + 1);
    assert_int_equal(p.stats.samples + p.stats.skipped, 114);
    assert_int_equal(t.families, 5);
    /* At most once per family with samples; the next body asks nothing (decisions cached). */
    int first = cf.calls;
    assert_true(first > 0 && first <= 42);
    cmh_prom_reset(&p);
    t.len = 0;
    assert_int_equal(tr_parse(&p, body, len, NULL, 0), 0);
    tr_end(&t, 0, &p);
    assert_same(&oracle, &t, "filtered ipamd, second body");
    assert_int_equal(cf.calls, first);
    cmh_prom_close(&p);
    tr_free(&t);
    tr_free(&oracle);
    free(body);
}

struct rec {
    char text[8192];
    size_t len;
    int families;
};

/* Appends to r->text, keeping len within the buffer. */
static void rec_add(struct rec *r, int n)
{
    if (n > 0)
        r->len += (size_t)n;
    if (r->len >= sizeof r->text)
        r->len = sizeof r->text - 1;
}

static int rec_family(void *arg, const struct cmh_prom_family *f)
{
    struct rec *r = arg;
    r->families++;
    rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, "F %.*s %s %.*s\n",
                        (int)f->name_len, f->name, cmh_prom_type_name(f->type),
                        f->help ? (int)f->help_len : 6, f->help ? f->help : "(none)"));
    return 0;
}

static int rec_sample(void *arg, const struct cmh_prom_sample *s)
{
    struct rec *r = arg;
    rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, "S %.*s %.*s %s %d",
                        (int)s->family_len, s->family, (int)s->name_len, s->name,
                        cmh_prom_type_name(s->type), (int)s->suffix));
    for (size_t i = 0; i < s->nlabels; i++)
        rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, " %.*s=%.*s",
                            (int)s->labels[i].name_len, s->labels[i].name,
                            (int)s->labels[i].value_len, s->labels[i].value));
    rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, " %.17g", s->value));
    if (s->has_timestamp)
        rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, " @%lld",
                            (long long)s->timestamp_ms));
    rec_add(r, snprintf(r->text + r->len, sizeof r->text - r->len, "\n"));
    return 0;
}

/* Parses body and returns the recorded events (or "error: line N: reason"). */
static const char *events(struct rec *r, const char *body)
{
    struct cmh_prom_parser p;
    struct cmh_prom_options o = {.on_family = rec_family, .on_sample = rec_sample, .arg = r};
    memset(r, 0, sizeof *r);
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    int rc = cmh_prom_feed(&p, body, strlen(body));
    if (rc == 0)
        rc = cmh_prom_finish(&p);
    if (rc != 0)
        snprintf(r->text, sizeof r->text, "error %d: line %lu: %s", rc, cmh_prom_error(&p)->line,
                 cmh_prom_error(&p)->reason);
    cmh_prom_close(&p);
    return r->text;
}

static void families_suffixes_and_types_tie_samples(void **state)
{
    (void)state;
    struct rec r;
    assert_string_equal(events(&r, "# HELP rq Requests.\n"
                                   "# TYPE rq histogram\n"
                                   "rq_bucket{le=\"1\"} 2\n"
                                   "rq_sum 3\n"
                                   "rq_count 2\n"
                                   "rq_created 100\n"
                                   "rq_total 5\n"),
                        "F rq histogram Requests.\n"
                        "S rq rq_bucket histogram 3 le=1 2\n"
                        "S rq rq_sum histogram 1 3\n"
                        "S rq rq_count histogram 2 2\n"
                        "S rq rq_created histogram 5 100\n"
                        "F rq_total untyped (none)\n"
                        "S rq_total rq_total untyped 0 5\n");
    /* OpenMetrics: _total and _created of a counter, info, # UNIT and # EOF are comments. */
    assert_string_equal(events(&r, "# TYPE c counter\n# UNIT c seconds\nc_total 1\nc_created 9\n"
                                   "# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n"),
                        "F c counter (none)\n"
                        "S c c_total counter 4 1\n"
                        "S c c_created counter 5 9\n"
                        "F i info (none)\n"
                        "S i i_info info 8 v=1 1\n");
    /* An exact family name wins over a suffix (as in the reference parser): x_count existed before
     * x became a summary, so x_count samples stay its own, even right after x's lines. */
    assert_string_equal(events(&r, "x_count 1\n# TYPE x summary\nx{quantile=\"0.5\"} 2\n"
                                   "x_count 3\nx_sum 4\n"),
                        "F x_count untyped (none)\n"
                        "S x_count x_count untyped 0 1\n"
                        "F x summary (none)\n"
                        "S x x summary 0 quantile=0.5 2\n"
                        "S x_count x_count untyped 0 3\n"
                        "S x x_sum summary 1 4\n");
    /* ... and TYPE x_count once x is a summary is a second TYPE line of x (Go does so). */
    assert_string_equal(events(&r, "# TYPE x summary\nx_count 1\n# TYPE x_count gauge\n"),
                        "error -22: line 3: second TYPE line for metric name \"x\", or TYPE "
                        "reported after samples");
    /* Samples before any TYPE are untyped; HELP after the first sample is not announced. */
    assert_string_equal(events(&r, "a 1\n# HELP a late\na 2\n"),
                        "F a untyped (none)\nS a a untyped 0 1\nS a a untyped 0 2\n");
    /* A gauge histogram (both spellings) and its OpenMetrics _gsum/_gcount. */
    assert_string_equal(events(&r, "# TYPE g gauge_histogram\ng_bucket{le=\"+Inf\"} 1\ng_gsum 2\n"
                                   "g_gcount 1\n"),
                        "F g gaugehistogram (none)\n"
                        "S g g_bucket gaugehistogram 3 le=+Inf 1\n"
                        "S g g_gsum gaugehistogram 6 2\n"
                        "S g g_gcount gaugehistogram 7 1\n");
    /* TYPE keywords in any case; HELP escapes decoded. */
    assert_string_equal(events(&r, "# HELP k a\\\\b\\nc \\\"q\\\"\n# TYPE k COUNTER\nk 1\n"),
                        "F k counter a\\b\nc \"q\"\nS k k counter 0 1\n");
    /* Summary counts may be any float; histogram counts may not be negative. */
    assert_string_equal(events(&r, "# TYPE h histogram\nh_count -1\n"),
                        "error -22: line 2: negative count for histogram \"h\"");
    /* Families not contiguous: the later samples still belong to the summary. */
    assert_string_equal(events(&r, "# TYPE s summary\ns_sum 1\n# TYPE t gauge\nt 1\ns_count 2\n"),
                        "F s summary (none)\nS s s_sum summary 1 1\nF t gauge (none)\n"
                        "S t t gauge 0 1\nS s s_count summary 2 2\n");
}

static void numbers_exact_and_go_only_forms_rejected(void **state)
{
    (void)state;
    static const char *const good[] = {"0",
                                       "-0",
                                       "+1",
                                       "08",
                                       ".5",
                                       "5.",
                                       "1e3",
                                       "1E-3",
                                       "1.5e+300",
                                       "4.9e-324",
                                       "1e-400",
                                       "2.2250738585072011e-308",
                                       "0.1",
                                       "9007199254740993",
                                       "123456789012345678901234567890",
                                       "1.7976931348623157e308",
                                       "0.000000000000000000000000000000000000000000001"};
    static const char *const special[] = {"NaN",      "nan",       "+Inf", "-inf",
                                          "Infinity", "-INFINITY", "inf"};
    static const char *const bad[] = {"1_000", "0x1p3", "0x10", "0b1",    "0o7", "1e400", "+nan",
                                      "inff",  "1e",    "e1",   ".",      "--1", "1.2.3", " ",
                                      "1,5",   "Info",  "1e+",  "0X1P-3", "1p3", "½"};
    struct rec r;
    char line[256];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(line, sizeof line, "m %s\n", good[i]);
        events(&r, line);
        char want[256];
        snprintf(want, sizeof want, "F m untyped (none)\nS m m untyped 0 %.17g\n",
                 strtod(good[i], NULL));
        assert_string_equal(r.text, want);
    }
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        snprintf(line, sizeof line, "m %s\n", special[i]);
        assert_memory_equal(events(&r, line), "F m", 3);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(line, sizeof line, "m %s\n", bad[i]);
        const char *got = events(&r, line);
        if (strstr(got, "expected float as value") == NULL) {
            print_error("value %s: %s\n", bad[i], got);
            fail();
        }
    }
    /* Timestamps: int64 exactly; anything else rejected. */
    assert_string_equal(events(&r, "m 1 -9223372036854775808\n"),
                        "F m untyped (none)\nS m m untyped 0 1 @-9223372036854775808\n");
    assert_string_equal(events(&r, "m 1 +9223372036854775807\n"),
                        "F m untyped (none)\nS m m untyped 0 1 @9223372036854775807\n");
    assert_non_null(strstr(events(&r, "m 1 9223372036854775808\n"), "expected integer"));
    assert_non_null(strstr(events(&r, "m 1 1e3\n"), "expected integer"));
    assert_non_null(strstr(events(&r, "m 1 2 \t\n"), "F m")); /* trailing blanks tolerated */
}

/* The inline decimal path (d.ddd, up to 15 characters) gives strtod's value bit for bit, also in
 * label values checked as numbers (quantile); 20000 random decimals, leading zeros included. */
static void short_decimals_match_strtod(void **state)
{
    (void)state;
    uint64_t seed = 0x2545f4914f6cdd1dull;
    struct rec r;
    char num[32], line[160], want[256];
    for (int k = 0; k < 20000; k++) {
        uint64_t x = rng_next(&seed);
        int ilen = 1 + (int)(x % 8), flen = 1 + (int)((x >> 8) % (14 - ilen));
        int o = 0;
        for (int i = 0; i < ilen + flen; i++) {
            if (i == ilen)
                num[o++] = '.';
            num[o++] = (char)('0' + rng_next(&seed) % 10);
        }
        num[o] = '\0';
        double oracle = strtod(num, NULL);
        snprintf(line, sizeof line, "# TYPE s summary\ns{quantile=\"%s\"} %s\n", num, num);
        snprintf(want, sizeof want, "F s summary (none)\nS s s summary 0 quantile=%s %.17g\n", num,
                 oracle);
        events(&r, line);
        if (strcmp(r.text, want) != 0) {
            print_error("decimal %s:\n%s\nwanted\n%s\n", num, r.text, want);
            fail();
        }
    }
}

/* Family lookups predict the family after the previous one from earlier bodies; a parser reused
 * over bodies whose family order changes (names that extend or shorten the predicted one, suffixes,
 * a family appearing twice) gives what a fresh parser gives, with and without a filter. */
static void family_prediction_across_reused_bodies(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "# HELP a_total A.\n# TYPE a counter\na_total 1\n# TYPE foo gauge\nfoo 1\n"
        "# TYPE foo_bar gauge\nfoo_bar{l=\"v\"} 2\n# TYPE x summary\nx_sum 1\nx_count 2\n"
        "x{quantile=\"0.5\"} 3\n",
        "a_total 1\nfoo_bar 2\nfoo 3\nfoo_bar_baz 4\nx_count 1\nx 2\n",
        "# TYPE a counter\na_total 7\nfo 1\nfoo 2\nfoo_ 3\n# TYPE x histogram\n"
        "x_bucket{le=\"1\"} 1\nx_count 1\nx_sum 2\nfoo_bar 9\n",
        "# HELP foo F\\\\oo.\n# TYPE foo summary\nfoo_count 1\nfoo_sum 2\n# TYPE foo_count gauge\n"
        "foo_count 3\na 1\nfoo_bar 1\nfoo 5\n",
        "x 1\nfoo_bar 2\nfoo 3\na_total 4\n",
        "foo 1\nfoo 2\nfoo_bar 3\nfoo_bar 4\nfoo 5\n",
    };
    static const char *const names[] = {"foo*", "x"};
    struct cmh_prom_names set = {names, 2};
    const size_t nb = sizeof bodies / sizeof bodies[0];
    for (int filtered = 0; filtered < 2; filtered++) {
        struct transcript t = {0};
        struct cmh_prom_parser p;
        cmh_prom_want_cb *want = reused_init(&p, &t, filtered, &set);
        /* Forward, backward and forward again: every body after every other. */
        for (size_t k = 0; k < 3 * nb; k++) {
            size_t i = k / nb == 1 ? nb - 1 - k % nb : k % nb;
            check_reused(&p, &t, bodies[i], strlen(bodies[i]), want, &set, NULL, 0, bodies[i]);
        }
        cmh_prom_close(&p);
        tr_free(&t);
    }
}

/* The line cache: a parser that has seen other bodies (so its kept lines hit, miss, or hit and then
 * must not apply) gives for every body exactly what a fresh parser gives, with and without the
 * filter, in random chunks. Bodies: random families of every type, their HELP/TYPE lines, series
 * with labels, suffixes, families named like another's suffix, escapes, blanks and errors; and the
 * ipamD scrape with values changed, lines dropped and lines repeated. */
static void line_cache_warm_parser_equals_fresh(void **state)
{
    (void)state;
    const size_t nl = NPIECES;
    static const char *const names[] = {"f", "g*"};
    struct cmh_prom_names set = {names, 2};
    uint64_t seed = 777;
    char body[2048];
    size_t len;
    /* Filter off and on; the default cache, and one so small that most lines find it full. */
    for (int run = 0; run < 4; run++) {
        int filtered = run & 1;
        struct transcript t = {0};
        struct cmh_prom_parser p;
        cmh_prom_want_cb *want = reused_init(&p, &t, filtered, &set);
        size_t max_cache = run < 2 ? CMH_PROM_MAX_CACHE_DEFAULT : 700;
        p.opt.max_cache = max_cache;
        /* A few templates, each parsed many times with small edits: kept lines mostly hit. */
        for (int tpl = 0; tpl < 60; tpl++) {
            size_t pick[24], n = 1 + (size_t)(rng_next(&seed) % 24);
            for (size_t i = 0; i < n; i++)
                pick[i] = (size_t)(rng_next(&seed) % nl);
            for (int round = 0; round < 12; round++) {
                len = 0;
                for (size_t i = 0; i < n; i++) {
                    size_t li = pick[i];
                    if (rng_next(&seed) % 8 == 0)
                        li = (size_t)(rng_next(&seed) % nl); /* an edit */
                    size_t pl = strlen(pieces[li]);
                    memcpy(body + len, pieces[li], pl);
                    len += pl;
                }
                size_t sizes[4];
                for (size_t i = 0; i < 4; i++)
                    sizes[i] = 1 + (size_t)(rng_next(&seed) % (round % 3 == 0 ? 7 : 400));
                check_reused(&p, &t, body, len, want, &set, sizes, 4, "body after other bodies");
            }
        }

        /* The ipamD scrape as nodes differ: values changed, lines dropped or repeated. */
        size_t ilen;
        char path[1024];
        snprintf(path, sizeof path, "%s/ipamd/cni_test1.data", CMH_DATA_DIR);
        char *ipamd = read_file(path, &ilen);
        char *var = malloc(2 * ilen + 1);
        assert_non_null(var);
        for (int round = 0; round < 200; round++) {
            size_t vl = 0;
            for (const char *q = ipamd; q < ipamd + ilen;) {
                const char *e = memchr(q, '\n', (size_t)(ipamd + ilen - q));
                size_t ll = (size_t)(e - q) + 1;
                uint64_t r = rng_next(&seed) % 64;
                int copies = round % 4 == 0 ? 1 : r == 0 ? 0 : r == 1 ? 2 : 1;
                for (int c = 0; c < copies; c++) {
                    for (size_t i = 0; i < ll; i++) {
                        char ch = q[i];
                        /* Values change (the digits after the last blank). */
                        if (round % 2 && ch >= '0' && ch <= '9' &&
                            memchr(q + i, ' ', ll - i) == NULL)
                            ch = (char)('0' + (ch - '0' + round) % 10);
                        var[vl++] = ch;
                    }
                }
                q = e + 1;
            }
            check_reused(&p, &t, var, vl, want, &set, NULL, 0, "ipamD variant after others");
            /* The cache keeps to its bound (its byte arena is the largest of its parts). */
            assert_true(p.cache_cap <= max_cache);
        }
        free(var);
        free(ipamd);
        cmh_prom_close(&p);
        tr_free(&t);
    }
}

static void label_values_unescaped_and_utf8_checked(void **state)
{
    (void)state;
    struct rec r;
    assert_string_equal(
        events(&r, "m{a=\"x\\\"y\\\\z\\nw\",b=\"\xf0\x9f\x98\x80\",c=\"\"} 1\n"),
        "F m untyped (none)\nS m m untyped 0 a=x\"y\\z\nw b=\xf0\x9f\x98\x80 c= 1\n");
    static const char *const bad_utf8[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                           "\xe2\x82", "\x80",         "\xf8\x88\x80\x80\x80",
                                           "ok\xff",   "\xc3"};
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        char line[64];
        snprintf(line, sizeof line, "m{a=\"%s\"} 1\n", bad_utf8[i]);
        assert_non_null(strstr(events(&r, line), "invalid label value"));
    }
    assert_non_null(strstr(events(&r, "m{a=\"\\t\"} 1\n"), "invalid escape sequence '\\t'"));
    assert_non_null(strstr(events(&r, "m{a=\"x\\"), "line 1: "));
    /* Long values cross the eight-byte fast scan at every offset. */
    char line[256];
    for (int n = 0; n < 40; n++) {
        int k = snprintf(line, sizeof line, "m{a=\"");
        for (int i = 0; i < n; i++)
            line[k++] = (char)('a' + i % 26);
        k += snprintf(line + k, sizeof line - (size_t)k, "\\\\\xc3\xa9\"} 1\n");
        const char *got = events(&r, line);
        assert_non_null(strstr(got, "\\\xc3\xa9 1\n"));
        line[k - 6] = '\xff'; /* break the UTF-8 */
        assert_non_null(strstr(events(&r, line), "invalid label value"));
    }
}

static void malformed_lines_name_line_and_reason(void **state)
{
    (void)state;
    struct rec r;
    static const struct {
        const char *body, *want;
    } cases[] = {
        {"a 1\nb 2", "line 2: unexpected end of input stream"},
        {"a 1\n# TYPE a gauge\n", "line 2: second TYPE line for metric name \"a\""},
        {"a{x=\"1\",x=\"2\"} 1\n", "line 1: duplicate label names for metric \"a\""},
        {"a{__name__=\"b\"} 1\n", "line 1: label name \"__name__\" is reserved"},
        {"a-1 1\n", "line 1: invalid metric name"},
        {"\"q\" 1\n", "line 1: invalid metric name"},
        {"a\n", "line 1: expected float as value, got \"\""},
        {"# TYPE a b c\n", "line 1: unknown metric type \"b c\""},
        {"# HELP a x\\y\n", "line 1: invalid escape sequence '\\y'"},
        {"# HELP a x\\\n", "line 1: invalid escape sequence '\\' at end of line"},
        {"{} 1\n", "line 1: invalid metric name"},
        {"{a=\"1\",} 1\n", "line 1: invalid metric name"},
        {"m{a=\"1\"} 1 2 3\n", "line 1: spurious string after timestamp: \"3\""},
        {"\n\n\nm{a=\"1\" b=\"2\"} 1\n", "line 4: unexpected end of label value \"1\""},
        {"m{", "line 1: invalid label name for metric \"m\""},
        {"m 1\r\n", "line 1: expected float as value, got \"1\\x0d\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = events(&r, cases[i].body);
        if (strstr(got, cases[i].want) == NULL) {
            print_error("%s: got %s, want %s\n", cases[i].body, got, cases[i].want);
            fail();
        }
    }
    /* Trailing blanks without a newline are accepted; so are blank lines and an empty body. */
    assert_string_equal(events(&r, "a 1\n  \t"), "F a untyped (none)\nS a a untyped 0 1\n");
    assert_string_equal(events(&r, ""), "");
    assert_string_equal(events(&r, "\n\n  \n# just a comment\n#\n"), "");
    /* The unterminated last line is checked, never delivered. */
    assert_string_equal(events(&r, "a 1\nb 2"),
                        "error -22: line 2: unexpected end of input stream (no newline after the "
                        "last line)");
}

static int abort_second(void *arg, const struct cmh_prom_sample *s)
{
    int *n = arg;
    (void)s;
    return ++*n == 2;
}

static void errors_are_sticky_and_callbacks_can_abort(void **state)
{
    (void)state;
    int n = 0;
    struct cmh_prom_options o = {.on_sample = abort_second, .arg = &n};
    struct cmh_prom_parser p;
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    assert_int_equal(cmh_prom_feed(&p, "a 1\nb 2\nc 3\n", 12), -ECANCELED);
    assert_int_equal(cmh_prom_error(&p)->line, 2);
    assert_int_equal(n, 2);
    assert_int_equal(cmh_prom_feed(&p, "d 4\n", 4), -ECANCELED);
    assert_int_equal(cmh_prom_finish(&p), -ECANCELED);
    assert_int_equal(n, 2);
    /* reset clears the error; finish ends the body, and data after it is refused. */
    cmh_prom_reset(&p);
    n = -100;
    assert_int_equal(cmh_prom_feed(&p, "a 1\n", 4), 0);
    assert_int_equal(cmh_prom_finish(&p), 0);
    assert_int_equal(cmh_prom_feed(&p, "b 1\n", 4), -EINVAL);
    assert_int_equal(p.stats.samples, 1);
    cmh_prom_close(&p);
    cmh_prom_close(&p); /* twice is harmless */
}

static void line_cap_is_an_error_not_an_allocation(void **state)
{
    (void)state;
    const size_t cap = 100000;
    struct cmh_prom_options o = {.max_line = cap};
    struct cmh_prom_parser p;
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    char *big = malloc(4 * cap);
    assert_non_null(big);
    /* A line of exactly cap bytes is fine, fed in pieces. */
    memset(big, 'a', cap - 2);
    memcpy(big + cap - 2, " 1\n", 3);
    for (size_t off = 0; off < cap + 1; off += 999)
        assert_int_equal(cmh_prom_feed(&p, big + off, off + 999 > cap + 1 ? cap + 1 - off : 999),
                         0);
    assert_int_equal(cmh_prom_finish(&p), 0);
    assert_int_equal(p.stats.samples, 1);
    /* One byte more is -E2BIG naming the line, fed whole or in pieces, and no buffer grew past
     * its bound (line: max_line, scratch: 2 * max_line + slack). */
    for (int split = 0; split < 2; split++) {
        cmh_prom_reset(&p);
        memcpy(big, "ok 1\n", 5);
        memset(big + 5, 'b', 4 * cap - 5);
        int rc = 0;
        if (split)
            for (size_t off = 0; off < 4 * cap && rc == 0; off += 4096)
                rc = cmh_prom_feed(&p, big + off, 4096);
        else
            rc = cmh_prom_feed(&p, big, 4 * cap);
        assert_int_equal(rc, -E2BIG);
        assert_int_equal(cmh_prom_error(&p)->line, 2);
        assert_non_null(strstr(cmh_prom_error(&p)->reason, "line longer than 100000 bytes"));
        assert_true(p.line_cap <= 2 * cap);
        assert_true(p.scratch_cap <= 4 * cap + 128);
        assert_true(p.help_cap <= 2 * cap);
    }
    free(big);
    cmh_prom_close(&p);
    /* A cap beyond 1 GiB is refused at init. */
    o.max_line = (size_t)2 << 30;
    assert_int_equal(cmh_prom_init(&p, &o), -EINVAL);
    cmh_prom_close(&p);
}

static void family_table_bounded_and_reusable(void **state)
{
    (void)state;
    struct cmh_prom_options o = {.max_state = 16384};
    struct cmh_prom_parser p;
    assert_int_equal(cmh_prom_init(&p, &o), 0);
    char line[64];
    int rc = 0, i;
    for (i = 0; i < 100000 && rc == 0; i++) {
        int n = snprintf(line, sizeof line, "family_number_%d 1\n", i);
        rc = cmh_prom_feed(&p, line, (size_t)n);
    }
    assert_int_equal(rc, -E2BIG);
    assert_non_null(strstr(cmh_prom_error(&p)->reason, "too many metric families"));
    assert_true(i > 50 && i < 1000);
    /* The next body starts with a cleared table and parses normally. */
    cmh_prom_reset(&p);
    assert_int_equal(cmh_prom_feed(&p, "a 1\nb 2\n", 8), 0);
    assert_int_equal(cmh_prom_finish(&p), 0);
    assert_int_equal(p.stats.samples, 2);
    cmh_prom_close(&p);
}

static void many_labels_and_duplicates_found_fast(void **state)
{
    (void)state;
    size_t n = 6000;
    size_t cap = n * 24 + 64;
    char *line = malloc(cap);
    assert_non_null(line);
    struct rec r;
    for (int dup = 0; dup < 2; dup++) {
        size_t k = 0;
        k += (size_t)snprintf(line + k, cap - k, "m{");
        for (size_t i = 0; i < n; i++)
            k += (size_t)snprintf(line + k, cap - k, "l%zu=\"v\",",
                                  dup && i == n - 1 ? (size_t)17 : i);
        k += (size_t)snprintf(line + k, cap - k, "} 1\n");
        struct cmh_prom_parser p;
        struct cmh_prom_options o = {.on_sample = rec_sample, .arg = &r};
        memset(&r, 0, sizeof r);
        assert_int_equal(cmh_prom_init(&p, &o), 0);
        int rc = cmh_prom_feed(&p, line, k);
        assert_int_equal(rc, dup ? -EINVAL : 0);
        if (dup)
            assert_non_null(strstr(cmh_prom_error(&p)->reason, "duplicate label names"));
        else
            assert_int_equal(p.stats.samples, 1);
        cmh_prom_close(&p);
    }
    free(line);
}

static void utf8_quoted_names_accepted(void **state)
{
    (void)state;
    struct rec r;
    assert_string_equal(events(&r, "# HELP \"a.b\" dotted\n# TYPE \"a.b\" gauge\n"
                                   "{l=\"1\",\"a.b\",\"x.y\"=\"2\"} 3\n"),
                        "F a.b gauge dotted\nS a.b a.b gauge 0 l=1 x.y=2 3\n");
    assert_non_null(strstr(events(&r, "{\"a\",\"b\"} 1\n"), "multiple metric names"));
    assert_non_null(strstr(events(&r, "{\"\xff\"} 1\n"), "invalid metric name"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chunk_split_invariance_reference_cases_and_ipamd),
        cmocka_unit_test(chunk_split_invariance_random_bodies),
        cmocka_unit_test(interest_filter_equals_filtering_in_callbacks),
        cmocka_unit_test(families_suffixes_and_types_tie_samples),
        cmocka_unit_test(numbers_exact_and_go_only_forms_rejected),
        cmocka_unit_test(short_decimals_match_strtod),
        cmocka_unit_test(family_prediction_across_reused_bodies),
        cmocka_unit_test(line_cache_warm_parser_equals_fresh),
        cmocka_unit_test(label_values_unescaped_and_utf8_checked),
        cmocka_unit_test(malformed_lines_name_line_and_reason),
        cmocka_unit_test(errors_are_sticky_and_callbacks_can_abort),
        cmocka_unit_test(line_cap_is_an_error_not_an_allocation),
        cmocka_unit_test(family_table_bounded_and_reusable),
        cmocka_unit_test(many_labels_and_duplicates_found_fast),
        cmocka_unit_test(utf8_quoted_names_accepted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
