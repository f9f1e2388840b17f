#include "cmh/core/alloc.h"
#include "cmh/core/alloc_int.h"

#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CMH_FAULT_INJECT
/* Test-only state: the one deliberate global, compiled only into fault-injection builds. */
static unsigned long alloc_count;
static unsigned long alloc_fail_at;
static void (*on_free)(void *p);

void cmh_alloc_on_free(void (*fn)(void *p))
{
    on_free = fn;
}

static void before_free(void *p)
{
    if (on_free != NULL && p != NULL)
        on_free(p);
}

void cmh_alloc_fail_at(unsigned long n)
{
    alloc_count = 0;
    alloc_fail_at = n;
}

unsigned long cmh_alloc_count(void)
{
    return alloc_count;
}

static int should_fail(void)
{
    alloc_count++;
    return alloc_fail_at != 0 && alloc_count == alloc_fail_at;
}
#else
static int should_fail(void)
{
    return 0;
}

static void before_free(void *p)
{
    (void)p;
}
#endif

void *cmh_malloc(size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return malloc(n ? n : 1);
}

void *cmh_calloc(size_t n, size_t size)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return calloc(n ? n : 1, size ? size : 1);
}

void *cmh_realloc(void *p, size_t n)
{
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n ? n : 1);
}

void *cmh_reallocarray(void *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    return cmh_realloc(p, n * size);
}

char *cmh_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = cmh_malloc(len + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *cmh_strdup(const char *s)
{
    return cmh_strndup(s, SIZE_MAX);
}

void *cmh_grow(void *v, size_t *cap, size_t need, size_t size, size_t first)
{
    if (need <= *cap)
        return v;
    size_t n = *cap ? *cap : first;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return NULL;
        n *= 2;
    }
    void *nv = cmh_reallocarray(v, n, size);
    if (nv != NULL)
        *cap = n;
    return nv;
}

char *cmh_strdup_opt(const char *s, int *rc)
{
    if (s == NULL)
        return NULL;
    char *c = cmh_strdup(s);
    if (c == NULL)
        *rc = -ENOMEM;
    return c;
}

void cmh_free(void *p)
{
    before_free(p);
    free(p);
}

void cmh_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0)
        explicit_bzero(p, n);
}

void cmh_free_secret(void *p)
{
    if (p == NULL)
        return;
    cmh_wipe(p, malloc_usable_size(p));
    cmh_free(p);
}

void *cmh_realloc_secret(void *p, size_t n)
{
    if (p == NULL)
        return cmh_malloc(n);
    size_t old = malloc_usable_size(p);
    void *q = cmh_malloc(n ? n : 1);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    cmh_free_secret(p);
    return q;
}

int cmh_read_small_file(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return errno > 0 ? -errno : -EIO;
    int rc = 0;
    char *buf = cmh_malloc(max + 2);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    /* One byte more than the bound tells a file that is too long. */
    *len = fread(buf, 1, max + 1, f);
    rc = ferror(f) ? -EIO : *len > max ? -EFBIG : 0;
    buf[*len] = '\0';
out:
    fclose(f);
    if (rc != 0)
        cmh_free_secret(buf);
    else
        *out = buf;
    return rc;
}
