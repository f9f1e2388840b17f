#include "cmh/core/gz.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

/* zlib allocates through ours, so the allocation-failure sweeps reach its paths too. */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    return cmh_reallocarray(NULL, items, size);
}

static void z_free(voidpf opaque, voidpf p)
{
    (void)opaque;
    cmh_free(p);
}

/* windowBits 15 with 16 added: a gzip wrapper, not zlib's. */
#define GZIP_WBITS (15 + 16)

int cmh_gzip(const void *in, size_t len, unsigned char **out, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    zs.zalloc = z_alloc;
    zs.zfree = z_free;
    *out = NULL;
    *out_len = 0;
    if (len > UINT32_MAX)
        return -EIO;
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, GZIP_WBITS, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        return -ENOMEM;
    int rc = 0;
    size_t cap = deflateBound(&zs, (uLong)len) + 32;
    unsigned char *buf = cmh_malloc(cap);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    zs.next_out = buf;
    zs.avail_out = (uInt)cap;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        rc = -EIO;
        goto out;
    }
    *out = buf;
    *out_len = zs.total_out;
    buf = NULL;
out:
    cmh_free(buf);
    deflateEnd(&zs);
    return rc;
}

struct cmh_gunzip {
    z_stream zs;
    uint64_t limit, total_out, total_in;
    int member_done; /* the last member ended; more input starts another */
    int err;         /* the stream's error, once it has one */
};

struct cmh_gunzip *cmh_gunzip_new(void)
{
    struct cmh_gunzip *g = cmh_calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->zs.zalloc = z_alloc;
    g->zs.zfree = z_free;
    if (inflateInit2(&g->zs, GZIP_WBITS) != Z_OK) {
        cmh_free(g);
        return NULL;
    }
    return g;
}

void cmh_gunzip_free(struct cmh_gunzip *g)
{
    if (g == NULL)
        return;
    inflateEnd(&g->zs);
    cmh_free(g);
}

void cmh_gunzip_start(struct cmh_gunzip *g, uint64_t limit)
{
    inflateReset(&g->zs);
    g->limit = limit;
    g->total_out = g->total_in = 0;
    g->member_done = 0;
    g->err = 0;
}

uint64_t cmh_gunzip_total_out(const struct cmh_gunzip *g)
{
    return g->total_out;
}

/* Hands got inflated bytes to the sink, up to the limit; past it the stream fails. */
static int emit(struct cmh_gunzip *g, const char *out, size_t got, cmh_gunzip_sink_cb sink,
                void *arg)
{
    uint64_t room = g->total_out < g->limit ? g->limit - g->total_out : 0;
    size_t n = got < room ? got : (size_t)room;
    g->total_out += got;
    if (n > 0 && sink(arg, out, n) < 0)
        return CMH_GUNZIP_ERR_SINK;
    return g->total_out > g->limit ? CMH_GUNZIP_ERR_LIMIT : 0;
}

int cmh_gunzip_feed(struct cmh_gunzip *g, const void *in, size_t len, char *out, size_t out_cap,
                    cmh_gunzip_sink_cb sink, void *arg)
{
    if (g->err != 0)
        return g->err;
    if (out_cap > UINT32_MAX)
        out_cap = UINT32_MAX;
    z_stream *zs = &g->zs;
    g->total_in += len;
    while (len > 0) {
        /* zlib counts in uInt: feed a huge buffer in slices. */
        uInt slice = len > UINT32_MAX ? UINT32_MAX : (uInt)len;
        zs->next_in = (Bytef *)(uintptr_t)in;
        zs->avail_in = slice;
        /* Go on while input is left, and while a full output buffer may hide more output. */
        do {
            if (g->member_done) {
                if (zs->avail_in == 0)
                    break;
                /* Another member follows (RFC 1952 2.2); anything else fails its header check. */
                inflateReset(zs);
                g->member_done = 0;
            }
            zs->next_out = (Bytef *)out;
            zs->avail_out = (uInt)out_cap;
            int zr = inflate(zs, Z_NO_FLUSH);
            size_t got = out_cap - zs->avail_out;
            int rc = got > 0 ? emit(g, out, got, sink, arg) : 0;
            if (rc == 0) {
                if (zr == Z_STREAM_END)
                    g->member_done = 1;
                else if (zr == Z_MEM_ERROR)
                    rc = CMH_GUNZIP_ERR_NOMEM;
                else if (zr == Z_BUF_ERROR && zs->avail_in == 0)
                    break; /* no more output without more input */
                else if (zr != Z_OK)
                    rc = CMH_GUNZIP_ERR_DATA;
            }
            if (rc != 0) {
                g->err = rc;
                return rc;
            }
        } while (zs->avail_in > 0 || zs->avail_out == 0);
        in = (const char *)in + slice;
        len -= slice;
    }
    return CMH_GUNZIP_MORE;
}

int cmh_gunzip_finish(struct cmh_gunzip *g)
{
    if (g->err != 0)
        return g->err;
    if (g->total_in == 0 || g->member_done)
        return 0;
    g->err = CMH_GUNZIP_ERR_DATA;
    return g->err;
}

struct cmh_gunzip *cmh_gunzip_take(struct cmh_gunzip_pool *p, uint64_t limit)
{
    struct cmh_gunzip *g = NULL;
    if (p->out == NULL && (p->out = cmh_malloc(CMH_GUNZIP_OUT_LEN)) == NULL)
        return NULL;
    if (p->nspare > 0) {
        g = p->spare[--p->nspare];
    } else {
        /* The spares array always has room for every inflater made, so give cannot fail: it
         * grows when made reaches a power of two. */
        if ((p->made & (p->made - 1)) == 0) {
            size_t cap = p->made ? 2 * (size_t)p->made : 4;
            struct cmh_gunzip **a = cmh_reallocarray(p->spare, cap, sizeof *a);
            if (a == NULL)
                return NULL;
            p->spare = a;
        }
        g = cmh_gunzip_new();
        if (g == NULL)
            return NULL;
        p->made++;
    }
    cmh_gunzip_start(g, limit);
    return g;
}

void cmh_gunzip_give(struct cmh_gunzip_pool *p, struct cmh_gunzip *g)
{
    if (g != NULL)
        p->spare[p->nspare++] = g;
}

void cmh_gunzip_pool_free(struct cmh_gunzip_pool *p)
{
    while (p->nspare > 0)
        cmh_gunzip_free(p->spare[--p->nspare]);
    cmh_free(p->spare);
    cmh_free(p->out);
    memset(p, 0, sizeof *p);
}

int cmh_gzip_coding(const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if ((n == 4 && strncasecmp(v, "gzip", 4) == 0) || (n == 6 && strncasecmp(v, "x-gzip", 6) == 0))
        return 1;
    return n == 8 && strncasecmp(v, "identity", 8) == 0 ? 0 : -1;
}
