/* Fuzzes the scrape engine's HTTP response handling (llhttp settings, header and body caps, status
 * and Content-Type checks, consumer calls) through cmh_scrape_parse_response, without sockets. The
 * first byte picks the read size (1..32, or one read); the rest is what the peer sent. Checks:
 * begin at most once and only with a 200, end exactly once after begin, body bytes within the cap,
 * OK only with a complete 200 body, and the same result, status and body whichever way the reads
 * split the bytes. */
#include "cmh/scrape/scrape_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BODY   2048
#define MAX_HEADER 512

struct seen {
    unsigned begins, ends;
    int end_result;
    uint64_t body_len;
    uint64_t hash;
    char last;
};

static int on_begin(void *arg, size_t target, void **ctx)
{
    struct seen *s = arg;
    if (target != 0)
        abort();
    s->begins++;
    *ctx = s;
    return 0;
}

/* A NUL byte in the body stands for text the Prometheus parser refuses. */
static int on_body(void *ctx, const char *buf, size_t len)
{
    struct seen *s = ctx;
    if (s->begins != 1 || s->ends != 0)
        abort();
    for (size_t i = 0; i < len; i++)
        s->hash = (s->hash ^ (uint8_t)buf[i]) * 0x100000001b3ULL;
    s->body_len += len;
    if (len > 0)
        s->last = buf[len - 1];
    return memchr(buf, '\0', len) != NULL ? -1 : 0;
}

/* A body whose last byte is '!' stands for text that ends mid-line. */
static int on_end(void *ctx, enum cmh_scrape_result result)
{
    struct seen *s = ctx;
    s->ends++;
    s->end_result = (int)result;
    return result == CMH_SCRAPE_OK && s->last == '!' ? -1 : 0;
}

static enum cmh_scrape_result run(const char *buf, size_t len, size_t chunk, struct seen *s,
                                  struct cmh_scrape_record *rec)
{
    struct cmh_scrape_opts o;
    cmh_scrape_opts_default(&o);
    o.max_body = MAX_BODY;
    o.max_header = MAX_HEADER;
    memset(s, 0, sizeof *s);
    s->hash = 0xcbf29ce484222325ULL;
    struct cmh_scrape_consumer consumer = {s, on_begin, on_body, on_end};
    int keep = -1;
    enum cmh_scrape_result r =
        cmh_scrape_parse_response(&o, &consumer, buf, len, chunk, rec, &keep);
    if ((unsigned)r >= CMH_SCRAPE_NRESULTS || rec->result != r || (keep != 0 && keep != 1))
        abort();
    if (s->begins > 1 || s->ends != s->begins || s->body_len > MAX_BODY)
        abort();
    if (s->begins == 1 && rec->http_status != 200)
        abort();
    if (r == CMH_SCRAPE_OK && (s->begins != 1 || s->end_result != CMH_SCRAPE_OK))
        abort();
    if (keep && r != CMH_SCRAPE_OK)
        abort();
    if (chunk == 0 && rec->bytes != len)
        abort();
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t chunk = data[0] % 33; /* 0: the whole input in one read */
    size_t len = size - 1;
    /* A private copy without a terminator, so reading past the end is caught by ASan. */
    char *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data + 1, len);
    struct seen whole, split;
    struct cmh_scrape_record rw, rs;
    enum cmh_scrape_result a = run(buf, len, 0, &whole, &rw);
    enum cmh_scrape_result b = run(buf, len, chunk, &split, &rs);
    if (a != b || rw.http_status != rs.http_status)
        abort();
    if (a == CMH_SCRAPE_OK && (whole.body_len != split.body_len || whole.hash != split.hash))
        abort();
    free(buf);
    return 0;
}
