/* Fuzzes the Prometheus text parser. The first byte picks a line cap, whether the interest filter
 * is on, and the chunk sizes; the rest is the body. Every body is parsed three ways that must give
 * the same events and error: whole, in the picked chunks, and one byte at a time on a reused
 * (reset) parser, and whole again on that parser after it saw the body and a variant of it (its
 * line cache warm). A filtered parse must equal the unfiltered one filtered in the callbacks. */
#include "../unit/test_prom_transcript.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int want_some(void *arg, const char *family, size_t len, enum cmh_prom_type type)
{
    (void)arg;
    /* Depends only on the arguments, as the contract asks: even-length names, and summaries. */
    return len % 2 == 0 || type == CMH_PROM_SUMMARY || (len > 0 && family[0] == 'a');
}

static void same(const struct transcript *a, const struct transcript *b)
{
    if (a->oom || b->oom)
        return;
    if (a->len != b->len || memcmp(a->buf, b->buf, a->len) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const size_t caps[] = {0, 1, 7, 32, 100, 1000, 4096, 0};
    uint8_t ctl = data[0];
    size_t max_line = caps[ctl & 7];
    int filter = (ctl >> 3) & 1;
    size_t sizes[3] = {1 + (ctl >> 4), 3 + (ctl >> 5) * 7, 0};
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    cmh_prom_want_cb *want = filter ? want_some : NULL;

    struct transcript whole = {0}, chunked = {0}, bytes = {0}, oracle = {0};
    struct cmh_prom_parser p;
    struct cmh_prom_options o = tr_options(&whole, want, NULL, max_line);
    if (cmh_prom_init(&p, &o) != 0)
        abort();
    tr_end(&whole, tr_parse(&p, body, len, NULL, 0), &p);
    cmh_prom_close(&p);

    o = tr_options(&chunked, want, NULL, max_line);
    if (cmh_prom_init(&p, &o) != 0)
        abort();
    tr_end(&chunked, tr_parse(&p, body, len, sizes, 3), &p);
    same(&whole, &chunked);

    /* The same parser again after a reset (cached filter decisions kept), one byte at a time. */
    p.opt.arg = &bytes;
    cmh_prom_reset(&p);
    size_t one = 1;
    tr_end(&bytes, tr_parse(&p, body, len, &one, 1), &p);
    same(&whole, &bytes);

    /* The line cache: the parser has just seen this body, then a variant of it with every digit
     * changed (same lines, other values and some other keys); parsed whole after either, the body
     * must give what a fresh parser gives. */
    struct transcript warm = {0}, scratch = {0};
    char *variant = malloc(len + 1);
    if (variant != NULL) {
        for (size_t i = 0; i < len; i++)
            variant[i] =
                body[i] >= '0' && body[i] <= '9' ? (char)('0' + (body[i] - '0' + 3) % 10) : body[i];
        for (int round = 0; round < 2; round++) {
            if (round == 1) {
                p.opt.arg = &scratch;
                cmh_prom_reset(&p);
                tr_end(&scratch, tr_parse(&p, variant, len, NULL, 0), &p);
            }
            p.opt.arg = &warm;
            warm.len = 0;
            warm.oom = 0;
            cmh_prom_reset(&p);
            tr_end(&warm, tr_parse(&p, body, len, NULL, 0), &p);
            same(&whole, &warm);
        }
        free(variant);
    }
    cmh_prom_close(&p);
    tr_free(&warm);
    tr_free(&scratch);

    if (filter) {
        oracle.want = want_some;
        o = tr_options(&oracle, NULL, NULL, max_line);
        if (cmh_prom_init(&p, &o) != 0)
            abort();
        int rc = tr_parse(&p, body, len, NULL, 0);
        /* Skipped lines are not decoded, so only a body the full parse accepts must agree. */
        if (rc == 0) {
            tr_end(&oracle, rc, &p);
            same(&whole, &oracle);
        }
        cmh_prom_close(&p);
    }
    tr_free(&whole);
    tr_free(&chunked);
    tr_free(&bytes);
    tr_free(&oracle);
    return 0;
}
