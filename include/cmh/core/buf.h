/* The one growable byte buffer (curl's dynbuf is the model) and the one percent-encoder. A
 * buffer has a size cap set at init; an append that would pass it, or that cannot allocate,
 * fails, frees the content and leaves the buffer failed: every later append fails the same way,
 * so a run of appends may be checked once, at its end (cmh_buf_err, or take returning NULL).
 * Ownership leaves only through cmh_buf_take. Thread: whichever owns the buffer. */
#ifndef CMH_BUF_H
#define CMH_BUF_H

#include <stdarg.h>
#include <stddef.h>

/* Embeds anywhere; zero-initialised it is an empty buffer with no cap (cmh_buf_init sets one). */
struct cmh_buf {
    /* private: through the functions below */
    char *data; /* NUL-terminated whenever len > 0 */
    size_t len; /* bytes held, not counting the NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* at most this many bytes held; 0: no cap */
    int err;    /* 0, or the sticky failure: -ENOMEM, -E2BIG (the cap) */
};

/* Starts empty, holding at most max bytes (0: no cap but memory). Allocates nothing. */
void cmh_buf_init(struct cmh_buf *b, size_t max);
/* Frees the content; the buffer is empty (and not failed) again, with the same cap. */
void cmh_buf_free(struct cmh_buf *b);
/* Empties the buffer keeping its memory for reuse; clears a failure. */
void cmh_buf_reset(struct cmh_buf *b);

/* Appends. 0, or the buffer's failure (-E2BIG past the cap, -ENOMEM) once it has failed. */
int cmh_buf_add(struct cmh_buf *b, const void *p, size_t n);
int cmh_buf_addstr(struct cmh_buf *b, const char *s);
int cmh_buf_addc(struct cmh_buf *b, char c);
int cmh_buf_printf(struct cmh_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cmh_buf_vprintf(struct cmh_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Appends s[0..n) percent-encoded (cmh_pct_encode). */
int cmh_buf_add_pct(struct cmh_buf *b, const char *s, size_t n, unsigned flags);

/* The content ("" when empty or failed), its length, and the failure (0 when none). */
const char *cmh_buf_str(const struct cmh_buf *b);
/* The content for writing in place or handing to uv_write; NULL when empty. Valid until the next
 * append, reset, take or free. */
char *cmh_buf_ptr(struct cmh_buf *b);
size_t cmh_buf_len(const struct cmh_buf *b);
int cmh_buf_err(const struct cmh_buf *b);

/* Hands the NUL-terminated content over (the caller cmh_frees it; "" is allocated when empty) and
 * leaves the buffer empty; *len gets its length when len is not NULL. NULL when the buffer has
 * failed or the terminator cannot be allocated (the buffer is then freed). */
char *cmh_buf_take(struct cmh_buf *b, size_t *len);

/* Percent-encoding of RFC 3986: every byte but the unreserved A-Z a-z 0-9 - _ . ~ becomes %XX
 * with upper-case hex digits, as SigV4 canonical requests, AWS query forms and Kubernetes
 * selectors want. CMH_PCT_KEEP_SLASH leaves '/' as it is (paths). */
#define CMH_PCT_KEEP_SLASH 1u
/* Writes the encoding of src[0..len) into dst (at most dst_len - 1 bytes and a NUL; nothing past
 * the last whole character that fits) and returns the length of the whole encoding, so
 * dst_len <= the return value means it did not fit. dst may be NULL when dst_len is 0. */
size_t cmh_pct_encode(char *dst, size_t dst_len, const char *src, size_t len, unsigned flags);

#endif
