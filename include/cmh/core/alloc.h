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

/* The array v (of elements of size bytes, *cap of them allocated) with room for at least need:
 * v itself when it has it, else a larger copy, its capacity doubled from first (at least need)
 * and written to *cap. NULL when out of memory: v and *cap are then unchanged. The growth of
 * every array of ours: `T *nv = cmh_grow(l->v, &l->cap, l->n + 1, sizeof *nv, 64)`. */
void *cmh_grow(void *v, size_t *cap, size_t need, size_t size, size_t first);

/* Overwrites n bytes at p with zeros in a way the compiler cannot drop (explicit_bzero). */
void cmh_wipe(void *p, size_t n);
/* cmh_free for a block that held a secret (a key, a token, a header or a document carrying
 * one): the whole block is wiped first. NULL is fine. */
void cmh_free_secret(void *p);
/* cmh_realloc for such a block: the old block is wiped before it is released, also when the
 * data moves. */
void *cmh_realloc_secret(void *p, size_t n);

/* A small file read whole (a kubeconfig, the AWS shared files): *out (cmh_malloc'ed, NUL-
 * terminated, *len bytes before the NUL; release it with cmh_free_secret, it may hold keys).
 * Returns 0; -errno of fopen (-ENOENT when absent); -EIO; -EFBIG when longer than max; -ENOMEM. */
int cmh_read_small_file(const char *path, size_t max, char **out, size_t *len);

#endif
