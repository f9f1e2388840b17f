#include "cmh/core/buf.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void cmh_buf_init(struct cmh_buf *b, size_t max)
{
    *b = (struct cmh_buf){.max = max};
}

void cmh_buf_free(struct cmh_buf *b)
{
    cmh_free(b->data);
    *b = (struct cmh_buf){.max = b->max};
}

void cmh_buf_reset(struct cmh_buf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

/* Fails the buffer: its content goes, the failure stays. */
static int fail(struct cmh_buf *b, int err)
{
    cmh_free(b->data);
    *b = (struct cmh_buf){.max = b->max, .err = err};
    return err;
}

/* Room for n more bytes and the NUL. Grows by doubling (from 256), never past the cap + 1. */
static int reserve(struct cmh_buf *b, size_t n)
{
    if (b->err)
        return b->err;
    size_t limit = b->max ? b->max : SIZE_MAX / 2;
    if (n > limit - b->len)
        return fail(b, -E2BIG);
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > limit + 1)
        cap = limit + 1;
    char *p = cmh_realloc(b->data, cap);
    if (p == NULL)
        return fail(b, -ENOMEM);
    b->data = p;
    b->cap = cap;
    return 0;
}

int cmh_buf_add(struct cmh_buf *b, const void *p, size_t n)
{
    int rc = reserve(b, n);
    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int cmh_buf_addstr(struct cmh_buf *b, const char *s)
{
    return cmh_buf_add(b, s, strlen(s));
}

int cmh_buf_addc(struct cmh_buf *b, char c)
{
    return cmh_buf_add(b, &c, 1);
}

int cmh_buf_vprintf(struct cmh_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return b->err ? b->err : fail(b, -EINVAL);
    int rc = reserve(b, (size_t)n);
    if (rc != 0)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int cmh_buf_printf(struct cmh_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cmh_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int cmh_buf_add_pct(struct cmh_buf *b, const char *s, size_t n, unsigned flags)
{
    size_t need = cmh_pct_encode(NULL, 0, s, n, flags);
    int rc = reserve(b, need);
    if (rc != 0)
        return rc;
    cmh_pct_encode(b->data + b->len, b->cap - b->len, s, n, flags);
    b->len += need;
    return 0;
}

const char *cmh_buf_str(const struct cmh_buf *b)
{
    return b->len > 0 ? b->data : "";
}

char *cmh_buf_ptr(struct cmh_buf *b)
{
    return b->len > 0 ? b->data : NULL;
}

size_t cmh_buf_len(const struct cmh_buf *b)
{
    return b->len;
}

int cmh_buf_err(const struct cmh_buf *b)
{
    return b->err;
}

char *cmh_buf_take(struct cmh_buf *b, size_t *len)
{
    if (reserve(b, 0) != 0)
        return NULL;
    char *p = b->data;
    p[b->len] = '\0';
    if (len != NULL)
        *len = b->len;
    *b = (struct cmh_buf){.max = b->max};
    return p;
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

size_t cmh_pct_encode(char *dst, size_t dst_len, const char *src, size_t len, unsigned flags)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t o = 0, w = 0; /* w: bytes written; stops growing once something does not fit */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        size_t n = (unreserved(c) || ((flags & CMH_PCT_KEEP_SLASH) && c == '/')) ? 1 : 3;
        if (w == o && o + n < dst_len) {
            if (n == 1) {
                dst[o] = (char)c;
            } else {
                dst[o] = '%';
                dst[o + 1] = digits[c >> 4];
                dst[o + 2] = digits[c & 15];
            }
            w += n;
        }
        o += n;
    }
    if (dst_len > 0)
        dst[w] = '\0';
    return o;
}
