/* The one pseudo-random generator (splitmix64) and the full-jitter backoff every retrying module
 * uses. Pure: the state is the caller's; thread: any, one state per thread. */
#ifndef CMH_RNG_H
#define CMH_RNG_H

#include <stdint.h>

/* A starting state: seed itself, or, for 0, one taken from the clock and the process id. */
uint64_t cmh_rng_seed(uint64_t seed);

/* The next 64 random bits from *state. */
uint64_t cmh_rng_next(uint64_t *state);

/* Full-jitter exponential backoff: random(0, min(cap_ms, base_ms * 2^n)) milliseconds. */
uint64_t cmh_backoff_full_jitter(uint64_t *state, unsigned n, uint64_t base_ms, uint64_t cap_ms);

#endif
