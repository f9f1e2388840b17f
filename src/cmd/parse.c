/* The `parse` command: one exposition in, every sample out in canonical form, one a line:
 * name{l1="v1",l2="v2"} value [timestamp], labels sorted by name, values as %.17g. */
#include "cmh/cmd/parse.h"

#include "cmh/core/alloc.h"
#include "cmh/scrape/prom.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct printer {
    FILE *out;
    const struct cmh_prom_label **sorted;
    size_t cap;
    int oom;
};

static int legacy_name(const char *s, size_t n, int metric)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (metric && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Writes s between quotes with the exposition format's escapes (\\, \" and \n). */
static void put_quoted(FILE *out, const char *s, size_t n)
{
    putc('"', out);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' || c == '"') {
            putc('\\', out);
            putc(c, out);
        } else if (c == '\n') {
            putc('\\', out);
            putc('n', out);
        } else {
            putc(c, out);
        }
    }
    putc('"', out);
}

static int print_sample(void *arg, const struct cmh_prom_sample *s)
{
    struct printer *pr = arg;
    FILE *out = pr->out;
    if (s->nlabels > pr->cap) {
        size_t cap = s->nlabels * 2;
        const struct cmh_prom_label **v = cmh_reallocarray(pr->sorted, cap, sizeof *v);
        if (v == NULL) {
            pr->oom = 1;
            return -1;
        }
        pr->sorted = v;
        pr->cap = cap;
    }
    for (size_t i = 0; i < s->nlabels; i++)
        pr->sorted[i] = &s->labels[i];
    if (s->nlabels > 1)
        qsort(pr->sorted, s->nlabels, sizeof *pr->sorted, cmh_prom_label_ptr_cmp);

    int quoted = !legacy_name(s->name, s->name_len, 1);
    if (quoted) {
        putc('{', out);
        put_quoted(out, s->name, s->name_len);
    } else {
        fwrite(s->name, 1, s->name_len, out);
        if (s->nlabels > 0)
            putc('{', out);
    }
    for (size_t i = 0; i < s->nlabels; i++) {
        const struct cmh_prom_label *l = pr->sorted[i];
        if (i > 0 || quoted)
            putc(',', out);
        if (legacy_name(l->name, l->name_len, 0))
            fwrite(l->name, 1, l->name_len, out);
        else
            put_quoted(out, l->name, l->name_len);
        putc('=', out);
        put_quoted(out, l->value, l->value_len);
    }
    if (quoted || s->nlabels > 0)
        putc('}', out);
    if (isnan(s->value))
        fputs(" NaN", out);
    else if (isinf(s->value))
        fputs(s->value > 0 ? " +Inf" : " -Inf", out);
    else
        fprintf(out, " %.17g", s->value);
    if (s->has_timestamp)
        fprintf(out, " %lld", (long long)s->timestamp_ms);
    putc('\n', out);
    return 0;
}

int cmh_parse_cmd(int argc, char **argv)
{
    const char *path = argc >= 2 ? argv[1] : "-";
    static const char usage[] =
        "Usage: cni-metrics-helper parse [FILE|-]\n"
        "Reads a Prometheus text exposition (a file, or standard input with - or no argument)\n"
        "with the daemon's own parser and prints every sample, one per line, labels sorted.\n"
        "Exit status: 0 parsed, 1 malformed input (the line and the reason on stderr),\n"
        "2 bad usage or unreadable file.\n";
    if (argc == 2 && (strcmp(path, "--help") == 0 || strcmp(path, "-h") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc > 2 || (path[0] == '-' && path[1] != '\0')) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    int fd = STDIN_FILENO;
    if (strcmp(path, "-") != 0) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "cni-metrics-helper parse: %s: %s\n", path, strerror(errno));
            return 2;
        }
    }
    struct printer pr = {stdout, NULL, 0, 0};
    struct cmh_prom_options opt = {.on_sample = print_sample, .arg = &pr};
    struct cmh_prom_parser p;
    char *buf = NULL;
    int status = 1;
    int rc = cmh_prom_init(&p, &opt);
    if (rc != 0) {
        fprintf(stderr, "cni-metrics-helper parse: %s\n", strerror(-rc));
        goto out;
    }
    buf = cmh_malloc(65536);
    if (buf == NULL) {
        fprintf(stderr, "cni-metrics-helper parse: out of memory\n");
        goto out;
    }
    /* Streams the input through the parser, as the scraper does with a socket. */
    for (;;) {
        ssize_t n = read(fd, buf, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "cni-metrics-helper parse: %s: %s\n", path, strerror(errno));
            status = 2;
            goto out;
        }
        rc = n == 0 ? cmh_prom_finish(&p) : cmh_prom_feed(&p, buf, (size_t)n);
        if (rc != 0 || n == 0)
            break;
    }
    if (rc != 0) {
        const struct cmh_prom_error *err = cmh_prom_error(&p);
        if (pr.oom)
            fprintf(stderr, "cni-metrics-helper parse: out of memory\n");
        else if (err->line > 0)
            fprintf(stderr, "line %lu: %s\n", err->line, err->reason);
        else
            fprintf(stderr, "%s\n", err->reason);
        goto out;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "cni-metrics-helper parse: cannot write the output\n");
        goto out;
    }
    status = 0;
out:
    cmh_free(buf);
    cmh_free(pr.sorted);
    cmh_prom_close(&p);
    if (fd != STDIN_FILENO)
        close(fd);
    return status;
}
