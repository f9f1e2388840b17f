/* Test helper shared by the parser's unit tests and fuzz target: records every event of a parse
 * (families, samples, the final error) as one unambiguous byte string, so two parses can be
 * compared byte for byte. Header-only; thread: the caller's. */
#ifndef CMH_TEST_PROM_TRANSCRIPT_H
#define CMH_TEST_PROM_TRANSCRIPT_H

#include "cmh/scrape/prom.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct transcript {
    char *buf;
    size_t len, cap;
    int oom;
    /* Optional filter applied inside the callbacks (the oracle for the parser's own filter). */
    cmh_prom_want_cb *want;
    void *want_arg;
    unsigned long families, samples;
};

static void tr_put(struct transcript *t, const void *p, size_t n)
{
    if (t->oom)
        return;
    if (t->len + n > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n)
            cap *= 2;
        char *nb = realloc(t->buf, cap);
        if (nb == NULL) {
            t->oom = 1;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
}

/* Length-prefixed, so names and values may hold any byte. */
static void tr_str(struct transcript *t, const char *s, size_t n)
{
    char h[24];
    int k = snprintf(h, sizeof h, "%zu:", n);
    tr_put(t, h, (size_t)k);
    if (n > 0)
        tr_put(t, s, n);
}

static void tr_fmt(struct transcript *t, const char *prefix, long long v)
{
    char h[48];
    int k = snprintf(h, sizeof h, "%s%lld", prefix, v);
    tr_put(t, h, (size_t)k);
}

static int tr_on_family(void *arg, const struct cmh_prom_family *f)
{
    struct transcript *t = arg;
    if (t->want != NULL && !t->want(t->want_arg, f->name, f->name_len, f->type))
        return 0;
    t->families++;
    tr_put(t, "F", 1);
    tr_str(t, f->name, f->name_len);
    tr_fmt(t, " t", (long long)f->type);
    tr_put(t, " ", 1);
    if (f->help != NULL)
        tr_str(t, f->help, f->help_len);
    else
        tr_put(t, "-", 1);
    tr_put(t, "\n", 1);
    return 0;
}

static int tr_on_sample(void *arg, const struct cmh_prom_sample *s)
{
    struct transcript *t = arg;
    if (t->want != NULL && !t->want(t->want_arg, s->family, s->family_len, s->type))
        return 0;
    t->samples++;
    tr_put(t, "S", 1);
    tr_str(t, s->family, s->family_len);
    tr_str(t, s->name, s->name_len);
    tr_fmt(t, " t", (long long)s->type);
    tr_fmt(t, " x", (long long)s->suffix);
    tr_fmt(t, " l", (long long)s->line);
    for (size_t i = 0; i < s->nlabels; i++) {
        tr_put(t, " ", 1);
        tr_str(t, s->labels[i].name, s->labels[i].name_len);
        tr_put(t, "=", 1);
        tr_str(t, s->labels[i].value, s->labels[i].value_len);
    }
    uint64_t bits;
    double v = isnan(s->value) ? NAN : s->value;
    memcpy(&bits, &v, sizeof bits);
    tr_fmt(t, " v", (long long)bits);
    if (s->has_timestamp)
        tr_fmt(t, " ts", (long long)s->timestamp_ms);
    tr_put(t, "\n", 1);
    return 0;
}

static void tr_end(struct transcript *t, int rc, const struct cmh_prom_parser *p)
{
    const struct cmh_prom_error *e = cmh_prom_error(p);
    tr_fmt(t, "E", (long long)rc);
    tr_fmt(t, " line ", (long long)e->line);
    tr_put(t, " ", 1);
    tr_str(t, e->reason, strlen(e->reason));
    tr_put(t, "\n", 1);
}

static void tr_free(struct transcript *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}

/* Options that record into t (with the parser's own filter want/want_arg, may be NULL). */
static struct cmh_prom_options tr_options(struct transcript *t, cmh_prom_want_cb *want,
                                          void *want_arg, size_t max_line)
{
    struct cmh_prom_options o = {.max_line = max_line,
                                 .want = want,
                                 .want_arg = want_arg,
                                 .on_family = tr_on_family,
                                 .on_sample = tr_on_sample,
                                 .arg = t};
    return o;
}

/* Feeds body in chunks whose sizes come from sizes[] (cycled; 0 = the rest), then finishes. */
static int tr_parse(struct cmh_prom_parser *p, const char *body, size_t len, const size_t *sizes,
                    size_t nsizes)
{
    size_t off = 0, k = 0;
    int rc = 0;
    while (off < len && rc == 0) {
        size_t n = len - off;
        if (nsizes > 0 && sizes[k % nsizes] != 0 && sizes[k % nsizes] < n)
            n = sizes[k % nsizes];
        k++;
        rc = cmh_prom_feed(p, body + off, n);
        off += n;
    }
    if (rc == 0)
        rc = cmh_prom_finish(p);
    return rc;
}

#endif
