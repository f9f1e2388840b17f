/* Allocation wrappers used by all of our code, so a test build can make the Nth allocation fail.
 * Thread: any; the fault-injection counter is only meaningful on the loop thread. */
#ifndef CMH_ALLOC_H
#define CMH_ALLOC_H

#include <stddef.h>

/* Same contracts as malloc/calloc/realloc/free/strdup; cmh_reallocarray checks n*size overflow. */
void *cmh_malloc(size_t n);
void *cmh_calloc(size_t n, size_t size);
void *cmh_realloc(void *p, size_t n);
void *cmh_reallocarray(void *p, size_t n, size_t size);
char *cmh_strdup(const char *s);
char *cmh_strndup(const char *s, size_t n);
void cmh_free(void *p);

/* A copy of s, or NULL for NULL; when the copy cannot be made, NULL with *rc = -ENOMEM (so a run
 * of copies needs one check at its end). */
char *cmh_strdup_opt(const char *s, int *rc);

#ifdef CMH_FAULT_INJECT
/* Test hook: the nth allocation from now (1-based) fails and every later one succeeds; 0 turns the
 * hook off. Returns nothing; cmh_alloc_count() says how many allocations were made since. */
void cmh_alloc_fail_at(unsigned long n);
unsigned long cmh_alloc_count(void);
#endif

#endif
