/* Read or chunk sizes for the fuzz targets that cut their input as a socket or libcurl would:
 * a pseudo-random sequence of 1..most bytes seeded by one input byte, covering len. */
#ifndef CMH_FUZZ_SPLITS_H
#define CMH_FUZZ_SPLITS_H

#include <stdint.h>
#include <stdlib.h>

/* Returns a calloc'd array of *n sizes adding up to len (free it), or NULL. */
static inline size_t *fuzz_splits(unsigned seed, size_t len, size_t most, size_t *n)
{
    size_t *sz = calloc(len ? len : 1, sizeof *sz);
    if (sz == NULL)
        return NULL;
    uint32_t st = seed * 2654435761u + 1;
    *n = 0;
    for (size_t off = 0; off < len; (*n)++) {
        st = st * 1103515245u + 12345u;
        size_t k = 1 + (st >> 16) % most;
        sz[*n] = k < len - off ? k : len - off;
        off += sz[*n];
    }
    return sz;
}

#endif
