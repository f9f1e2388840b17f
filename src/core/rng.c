#include "cmh/core/rng.h"

#include <time.h>
#include <unistd.h>

uint64_t cmh_rng_seed(uint64_t seed)
{
    if (seed != 0)
        return seed;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
}

uint64_t cmh_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t cmh_backoff_full_jitter(uint64_t *state, unsigned n, uint64_t base_ms, uint64_t cap_ms)
{
    uint64_t ceiling = base_ms;
    for (unsigned i = 0; i < n && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    return cmh_rng_next(state) % (ceiling + 1);
}
