/* Fuzzes our own HTTP server's request handling (byte bound, llhttp, the handler call, the answer)
 * through cmh_http_server_feed, without sockets: what anyone in the cluster can send. The first
 * byte seeds the read sizes (1..37 bytes each), picks the request bound (8192, the daemon's, or
 * 1100, just over the 1 KiB target limit) and whether /readyz is ready; the rest is what the client
 * sent. Each read is its own exact-size allocation, so ASan sees any read past it. Checks against a
 * reading of the request line made here: the answer is well formed (status line, the four headers,
 * Content-Length equal to the body, none after HEAD); 200 only for GET or HEAD on /metrics,
 * /healthz or /readyz; the handler sees exactly the request target up to '?', under 1 KiB; another
 * method gets 405 with Allow; 431 exactly when the reads taken exceed the bound; the counters move
 * as documented; and within the bound the answer is the same byte for byte however reads split. */
#include "cmh/core/alloc.h"
#include "cmh/http/http_server_int.h"

#include "fuzz_splits.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TARGET_MAX 1024 /* the server's request-target limit (414 from here on) */

struct fake {
    unsigned calls;
    int ready;
    char path[TARGET_MAX];
};

/* The daemon's contract (src/daemon.c http_handler): three paths, 404 for any other. */
static int handler(void *arg, const char *path, struct cmh_buf *body, const char **ctype)
{
    struct fake *f = arg;
    size_t n = strlen(path);
    if (n >= sizeof f->path)
        abort();
    memcpy(f->path, path, n + 1);
    f->calls++;
    if (strcmp(path, "/healthz") == 0) {
        cmh_buf_printf(body, "ok\n");
        return 200;
    }
    if (strcmp(path, "/readyz") == 0) {
        cmh_buf_printf(body, f->ready ? "ready\n" : "not ready: no scrape targets\n");
        return f->ready ? 200 : 503;
    }
    if (strcmp(path, "/metrics") == 0) {
        *ctype = "text/plain; version=0.0.4; charset=utf-8";
        cmh_buf_printf(body, "cni_metrics_helper_up 1\n");
        return 200;
    }
    return 404;
}

/* The request line as a reader of RFC 9112 sees it: optional empty lines, the method up to a
 * space, spaces, the target up to a space or line end. */
struct line {
    const char *method, *target;
    size_t method_len, target_len;
};

static void read_line(const char *p, size_t len, struct line *l)
{
    size_t i = 0;
    while (i < len && (p[i] == '\r' || p[i] == '\n'))
        i++;
    l->method = p + i;
    while (i < len && p[i] != ' ')
        i++;
    l->method_len = (size_t)(p + i - l->method);
    while (i < len && p[i] == ' ')
        i++;
    l->target = p + i;
    while (i < len && p[i] != ' ' && p[i] != '\r' && p[i] != '\n')
        i++;
    l->target_len = (size_t)(p + i - l->target);
}

static int is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* Checks the answer's form; returns its status and sets *body_len. */
static int check_answer(const struct cmh_buf *b, int head, size_t *body_len)
{
    struct {
        const char *data;
        size_t len;
    } a = {cmh_buf_str(b), cmh_buf_len(b)}, *out = &a;
    char status_line[64];
    int status = 0, off = 0;
    if (out->len < 12 || memcmp(out->data, "HTTP/1.1 ", 9) != 0)
        abort();
    const char *eol = memchr(out->data, '\r', out->len);
    if (eol == NULL || (size_t)(eol - out->data) >= sizeof status_line)
        abort();
    memcpy(status_line, out->data, (size_t)(eol - out->data));
    status_line[eol - out->data] = '\0';
    if (sscanf(status_line, "HTTP/1.1 %3d %n", &status, &off) != 1 || off == 0)
        abort();
    static const int allowed[] = {200, 400, 404, 405, 414, 431, 503};
    int known = 0;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        known |= status == allowed[i];
    if (!known || strcmp(status_line + off, "Unknown") == 0)
        abort();
    /* The headers, in the server's order, then the blank line. */
    const char *h = eol + 2;
    const char *end = out->data + out->len;
    const char *ct_end = h + 14 <= end && memcmp(h, "Content-Type: ", 14) == 0
                             ? memchr(h, '\r', (size_t)(end - h))
                             : NULL;
    if (ct_end == NULL)
        abort();
    h = ct_end + 2;
    unsigned long long clen = 0;
    int used = 0;
    char tmp[40];
    size_t tl = (size_t)(end - h) < sizeof tmp - 1 ? (size_t)(end - h) : sizeof tmp - 1;
    memcpy(tmp, h, tl);
    tmp[tl] = '\0';
    if (sscanf(tmp, "Content-Length: %llu\r\n%n", &clen, &used) != 1 || used == 0)
        abort();
    h += used;
    const char *allow = "Allow: GET, HEAD\r\n";
    int has_allow = (size_t)(end - h) >= strlen(allow) && memcmp(h, allow, strlen(allow)) == 0;
    if (has_allow != (status == 405))
        abort();
    if (has_allow)
        h += strlen(allow);
    const char *tail = "Connection: close\r\n\r\n";
    if ((size_t)(end - h) < strlen(tail) || memcmp(h, tail, strlen(tail)) != 0)
        abort();
    h += strlen(tail);
    *body_len = (size_t)(end - h);
    if (*body_len != (head ? 0 : clen))
        abort();
    return status;
}

struct run {
    int rc, status;
    size_t used, taken;
    unsigned calls;
    unsigned long long requests, rejected;
    struct cmh_buf out;
    char path[TARGET_MAX];
};

/* Feeds buf cut into reads of the sizes sz[0..n) (each its own allocation). */
static void run(const char *buf, const size_t *sz, size_t n, unsigned max_request, int ready,
                struct run *r)
{
    uv_buf_t *reads = malloc((n ? n : 1) * sizeof *reads);
    if (reads == NULL)
        abort();
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        reads[i].base = malloc(sz[i] ? sz[i] : 1);
        if (reads[i].base == NULL)
            abort();
        memcpy(reads[i].base, buf + off, sz[i]);
        reads[i].len = sz[i];
        off += sz[i];
    }
    struct cmh_http_server s;
    struct fake f;
    memset(&s, 0, sizeof s);
    memset(&f, 0, sizeof f);
    f.ready = ready;
    s.opt.max_request = max_request;
    s.handler = handler;
    s.handler_arg = &f;
    r->rc = cmh_http_server_feed(&s, reads, n, &r->used, &r->out);
    if (r->rc != 0 && r->rc != 1)
        abort(); /* no allocation fails here */
    if (r->used > n || (r->rc == 0 && r->used != n) || (r->rc == 1 && r->used == 0))
        abort();
    r->taken = 0;
    for (size_t i = 0; i < r->used; i++)
        r->taken += sz[i];
    r->calls = f.calls;
    memcpy(r->path, f.path, sizeof r->path);
    r->requests = s.requests;
    r->rejected = s.rejected;
    if (f.calls > 1 || s.requests > 1 || s.rejected > 1)
        abort();
    for (size_t i = 0; i < n; i++)
        free(reads[i].base);
    free(reads);
}

static void check(const char *buf, size_t len, unsigned max_request, struct run *r)
{
    struct line l;
    read_line(buf, len, &l);
    int get = is(l.method, l.method_len, "GET"), head = is(l.method, l.method_len, "HEAD");
    if (r->rc == 0) {
        /* Still waiting: nothing answered, nothing counted, within the bound. */
        if (cmh_buf_len(&r->out) != 0 || r->calls != 0 || r->requests != 0 || r->rejected != 0 ||
            r->taken > max_request)
            abort();
        r->status = 0;
        return;
    }
    size_t body_len;
    r->status = check_answer(&r->out, r->calls == 1 && head, &body_len);
    if ((r->status == 431) != (r->taken > max_request))
        abort();
    if (r->calls == 1) {
        /* The handler saw exactly the target up to '?', and only for GET or HEAD. */
        const char *q = memchr(l.target, '?', l.target_len);
        size_t want = q != NULL ? (size_t)(q - l.target) : l.target_len;
        if (!(get || head) || l.target_len >= TARGET_MAX || strlen(r->path) != want ||
            memcmp(r->path, l.target, want) != 0)
            abort();
        if (r->status != 200 && r->status != 404 && r->status != 503)
            abort();
    } else if (r->status == 200 || r->status == 404 || r->status == 503) {
        abort();
    }
    if (r->status == 200 && strcmp(r->path, "/healthz") != 0 && strcmp(r->path, "/readyz") != 0 &&
        strcmp(r->path, "/metrics") != 0)
        abort();
    if (r->status == 405 && (get || head))
        abort();
    if (r->status == 414 && l.target_len < TARGET_MAX)
        abort();
    int complete = r->status != 400 && r->status != 431;
    if (r->requests != (unsigned long long)complete || r->rejected != (unsigned long long)!complete)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned seed = data[0];
    unsigned max_request = (seed & 0x40) ? 1100 : 8192;
    int ready = (seed & 0x80) != 0;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    size_t n;
    size_t *sz = fuzz_splits(seed, len, 37, &n);
    if (sz == NULL)
        return 0;
    size_t whole = len;
    struct run one, split;
    memset(&one, 0, sizeof one);
    memset(&split, 0, sizeof split);
    run(buf, &whole, len > 0, max_request, ready, &one);
    run(buf, sz, n, max_request, ready, &split);
    check(buf, len, max_request, &one);
    check(buf, len, max_request, &split);
    if (len > max_request && one.status != 431)
        abort();
    if (len <= max_request &&
        (one.rc != split.rc || cmh_buf_len(&one.out) != cmh_buf_len(&split.out) ||
         memcmp(cmh_buf_str(&one.out), cmh_buf_str(&split.out), cmh_buf_len(&one.out)) != 0))
        abort();
    cmh_buf_free(&one.out);
    cmh_buf_free(&split.out);
    free(sz);
    return 0;
}
