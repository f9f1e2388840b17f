/* gzip through zlib, the one module that includes it: whole-buffer compression (CloudWatch request
 * bodies) and a streaming inflater with a bound on its output (scraped bodies). Thread: any; an
 * inflater is used by one caller at a time. */
#ifndef CMH_GZ_H
#define CMH_GZ_H

#include <stddef.h>
#include <stdint.h>

/* Compresses in[0..len) into one gzip member in a new buffer: *out (free with cmh_free) and
 * *out_len. Returns 0, -ENOMEM or -EIO. */
int cmh_gzip(const void *in, size_t len, unsigned char **out, size_t *out_len);

/* What a gunzip call says. */
enum cmh_gunzip_status {
    CMH_GUNZIP_MORE = 0,       /* all input used; the stream goes on */
    CMH_GUNZIP_ERR_DATA = -1,  /* not gzip, corrupt, or (at finish) cut short */
    CMH_GUNZIP_ERR_LIMIT = -2, /* the output passed the limit (a gzip bomb) */
    CMH_GUNZIP_ERR_SINK = -3,  /* the sink refused the output */
    CMH_GUNZIP_ERR_NOMEM = -4,
};

/* Where inflated bytes go: buf is valid during the call only. Returns 0, or <0 to stop. */
typedef int (*cmh_gunzip_sink_cb)(void *arg, const char *buf, size_t len);

/* A streaming inflater: zlib's state (about 7 KB, and a 32 KB window once output starts). Make
 * one, reuse it for stream after stream (cmh_gunzip_start), free it when done. */
struct cmh_gunzip;

/* Returns a new inflater, or NULL when out of memory. */
struct cmh_gunzip *cmh_gunzip_new(void);
void cmh_gunzip_free(struct cmh_gunzip *g);

/* Begins a new stream whose inflated size may be at most limit bytes. */
void cmh_gunzip_start(struct cmh_gunzip *g, uint64_t limit);

/* Inflates the next len compressed bytes into out (out_cap bytes, the caller's scratch), handing
 * each piece to sink. The sink sees every inflated byte up to the limit and none past it, however
 * the input is split. Several gzip members in a row are one stream (RFC 1952). Returns
 * CMH_GUNZIP_MORE or a negative status; after an error the stream is over. */
int cmh_gunzip_feed(struct cmh_gunzip *g, const void *in, size_t len, char *out, size_t out_cap,
                    cmh_gunzip_sink_cb sink, void *arg);

/* The compressed stream ended: 0 when it ended at the end of a member (or held no byte at all),
 * CMH_GUNZIP_ERR_DATA when it was cut short. */
int cmh_gunzip_finish(struct cmh_gunzip *g);

/* Inflated bytes of the current stream so far (past the limit included). */
uint64_t cmh_gunzip_total_out(const struct cmh_gunzip *g);

/* Inflaters kept for reuse by one owner on one thread, and one output buffer its streams share
 * (each feed is done before the next starts). A body holds an inflater only while it is read, so
 * the pool grows to the most bodies read at once, not to the number of targets. Zero it to
 * initialise. */
#define CMH_GUNZIP_OUT_LEN (32 * 1024)
struct cmh_gunzip_pool {
    /* private */
    struct cmh_gunzip **spare;
    unsigned nspare, made;
    char *out; /* CMH_GUNZIP_OUT_LEN bytes, once an inflater was taken */
};

/* An inflater started with limit, from the spares or new; NULL when out of memory. */
struct cmh_gunzip *cmh_gunzip_take(struct cmh_gunzip_pool *p, uint64_t limit);
/* Gives g (from this pool; NULL is ignored) back. Cannot fail. */
void cmh_gunzip_give(struct cmh_gunzip_pool *p, struct cmh_gunzip *g);
/* Frees the spares and the buffer (every inflater must have been given back). */
void cmh_gunzip_pool_free(struct cmh_gunzip_pool *p);

/* A Content-Encoding value (n bytes, surrounding blanks allowed): 1 for gzip (or its old name
 * x-gzip), 0 for identity, -1 for anything else (another coding, or a list). */
int cmh_gzip_coding(const char *v, size_t n);

#endif
