/* Fuzzes the Kubernetes watch stream's own line framing (cmh_discovery_watch_feed: what libcurl's
 * chunks of a watch go through before cmh_discovery_parse_event), which fuzz_k8s_json skips by
 * cutting lines itself. The first byte seeds the chunk sizes (1..67 bytes each), the second picks
 * the line bound (32..4112 bytes, or with 255 CMH_DISCOVERY_LINE_MAX) and whether at most 3 pods
 * are kept; the rest is the stream. Each chunk is its own exact-size allocation, so ASan sees any
 * read past it (the bad-event log excerpt included: errors are logged, to /dev/null). The stream
 * is fed whole and in chunks, and both must end exactly as a reading made here: lines cut at LF,
 * trailing CR and spaces dropped, blank lines skipped, events applied in order until an ERROR
 * event, a bad event, a line over the bound or a kept pod leaving while pods beyond the bound
 * wait ends the watch; the same pods, resourceVersion, error text and count, the same unfinished
 * line kept, and no line kept beyond the bound. */
#include "cmh/core/alloc.h"
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"
#include "cmh/core/log.h"
#include "fuzz_splits.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What a watch of the stream must end with. */
struct outcome {
    struct cmh_discovery_pods pods;
    char rv[64];
    bool gone, bad, room, changed;
    uint64_t errors;
    char error[256];
    size_t kept; /* bytes of an unfinished last line */
};

static struct cmh_log *null_log(void)
{
    static struct cmh_log log;
    static int fd = -2;
    if (fd == -2) {
        fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        cmh_log_init(&log, CMH_LOG_DEBUG, CMH_LOG_JSON, fd);
    }
    return fd >= 0 ? &log : NULL;
}

/* The reading made here, independent of the seam: the whole stream at once. */
static void expect(const char *buf, size_t len, size_t max, size_t max_pods, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    o->pods.max = max_pods;
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i);
        size_t n = nl != NULL ? (size_t)(nl - (buf + i)) : len - i;
        if (n > max) {
            snprintf(o->error, sizeof o->error, "watch event longer than %zu bytes", max);
            o->errors++;
            o->bad = true;
            return;
        }
        if (nl == NULL) {
            o->kept = n;
            return;
        }
        const char *line = buf + i;
        i += n + 1;
        while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' '))
            n--;
        if (n == 0)
            continue;
        struct cmh_discovery_event ev;
        size_t before = o->pods.n;
        uint64_t refused = o->pods.refused;
        int rc = cmh_discovery_parse_event(&o->pods, line, n, &ev);
        if (rc != 0) {
            if (o->pods.n != before)
                abort();
            snprintf(o->error, sizeof o->error, "bad watch event (%s): %.*s",
                     cmh_discovery_event_error(rc), (int)(n < 80 ? n : 80), line);
            o->errors++;
            o->bad = true;
            return;
        }
        if (ev.type == CMH_K8S_EV_ERROR) {
            if (ev.code == 410) {
                o->gone = true;
            } else {
                snprintf(o->error, sizeof o->error, "watch ERROR event with code %ld", ev.code);
                o->errors++;
                o->bad = true;
            }
            return;
        }
        if (ev.rv[0] != '\0')
            memcpy(o->rv, ev.rv, sizeof o->rv);
        /* A change of the count of pods beyond max is news too. */
        o->changed |= ev.changed || o->pods.refused != refused;
        if (ev.relist) {
            o->room = true; /* a kept pod left while others wait: a list takes one in */
            return;
        }
    }
}

/* Feeds the stream through the seam in chunks of sz[0..n), each its own allocation, stopping
 * when the seam says the watch ends (libcurl then aborts the transfer). */
static void feed(const char *buf, const size_t *sz, size_t n, size_t line_max, size_t max_pods,
                 struct outcome *o)
{
    struct cmh_discovery d;
    memset(&d, 0, sizeof d);
    d.line_max = line_max;
    d.pods.max = max_pods;
    d.log = null_log();
    bool changed_any = false;
    int stop = 0;
    size_t off = 0;
    for (size_t i = 0; i < n && !stop; i++) {
        char *chunk = malloc(sz[i] ? sz[i] : 1);
        if (chunk == NULL)
            abort();
        memcpy(chunk, buf + off, sz[i]);
        off += sz[i];
        bool changed = true;
        stop = cmh_discovery_watch_feed(&d, chunk, sz[i], &changed);
        free(chunk);
        if (stop != 0 && stop != 1)
            abort();
        changed_any |= changed;
        if (stop != (d.abort_gone || d.abort_bad || d.abort_room))
            abort();
        /* The bound: a kept partial line never exceeds it, nor does its buffer grow past need. */
        if (d.line_len > (line_max ? line_max : CMH_DISCOVERY_LINE_MAX) || d.line_len > d.line_cap)
            abort();
    }
    memset(o, 0, sizeof *o);
    o->pods = d.pods;
    memcpy(o->rv, d.rv, sizeof o->rv);
    o->gone = d.abort_gone;
    o->bad = d.abort_bad;
    o->room = d.abort_room;
    o->changed = changed_any;
    o->errors = d.err.count;
    memcpy(o->error, d.err.text, sizeof o->error);
    o->kept = stop ? 0 : d.line_len;
    cmh_free(d.line);
}

static void same(const struct outcome *a, const struct outcome *b)
{
    if (a->pods.n != b->pods.n || a->pods.refused != b->pods.refused || strcmp(a->rv, b->rv) != 0 ||
        a->gone != b->gone || a->bad != b->bad || a->room != b->room || a->changed != b->changed ||
        a->errors != b->errors || strcmp(a->error, b->error) != 0 || a->kept != b->kept)
        abort();
    for (size_t i = 0; i < a->pods.n; i++) {
        const struct cmh_discovery_pod *p = &a->pods.v[i], *q = &b->pods.v[i];
        if (strcmp(p->name, q->name) != 0 || strcmp(p->node, q->node) != 0 ||
            strcmp(p->ip, q->ip) != 0 || p->running != q->running)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t line_max = data[1] == 255 ? 0 : 32 + (size_t)(data[1] & 0x7f) * 32;
    size_t max = line_max ? line_max : CMH_DISCOVERY_LINE_MAX;
    size_t max_pods = (data[1] & 0x80) && data[1] != 255 ? 3 : CMH_DISCOVERY_MAX_PODS;
    const char *buf = (const char *)data + 2;
    size_t len = size - 2;
    size_t n;
    size_t *sz = fuzz_splits(data[0], len, 67, &n);
    if (sz == NULL)
        return 0;
    struct outcome want, whole, split;
    expect(buf, len, max, max_pods, &want);
    feed(buf, &len, len > 0, line_max, max_pods, &whole);
    feed(buf, sz, n, line_max, max_pods, &split);
    same(&want, &whole);
    same(&want, &split);
    cmh_discovery_pods_free(&want.pods);
    cmh_discovery_pods_free(&whole.pods);
    cmh_discovery_pods_free(&split.pods);
    free(sz);
    return 0;
}
